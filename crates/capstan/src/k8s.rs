//! `capstan k8s render`: the objects a run would create, without a cluster; and `capstan
//! cluster test` of a Kubernetes cluster or a Docker host.

use std::path::Path;

use crate::cli::{ClusterTestArgs, K8sRenderArgs};
use crate::exit;
use crate::explain::resolve_target;
use crate::home::load_valid;
use anyhow::bail;
use capstan_core::model::ExecKind;
use capstan_engine::cluster_test::{ClusterTester, Report, TestLine};

pub fn render(root: &Path, args: &K8sRenderArgs) -> anyhow::Result<u8> {
    let (home, r) = resolve_target(root, &args.target, &args.user, &args.select)?;
    let (project, recipe) = (&r.project, &r.recipe);
    if r.kind.value != ExecKind::Kubernetes {
        bail!(
            "{project}/{recipe} runs with {} execution (exec config {}), not on Kubernetes: pass --exec-config with a kubernetes configuration",
            r.kind.value,
            r.exec_config.value.as_deref().unwrap_or("none")
        );
    }
    // Job 0: what a run would look like, before it has a number.
    let mut spec = capstan_engine::spec_from(&home, root, &r, 0, 0, root.join("state/jobs/0/a0-0"));
    // An ML recipe runs capstan's ML runner, staged as its code when it starts.
    capstan_engine::stage_ml_for_render(&mut spec);
    let namespace = spec.namespace.clone().unwrap_or_default();
    let objects =
        capstan_backend_k8s::render::render(&spec, &capstan_core::instance_id(root), &namespace)
            .map_err(anyhow::Error::msg)?;
    print!(
        "{}",
        capstan_backend_k8s::render::to_yaml(&objects).map_err(anyhow::Error::msg)?
    );
    Ok(exit::OK)
}

/// The code of the test pod: it says it started, then calls the daemon back if it can.
const TEST_POD: &str = r#"
import os, sys, urllib.request
print("capstan cluster test: the pod started", flush=True)
url = os.environ.get("CAPSTAN_API_URL")
if url:
    try:
        urllib.request.urlopen(url + "/api/v1/health", timeout=15).read()
        print("callback ok:", url, flush=True)
    except Exception as e:
        print("callback failed:", url, e, file=sys.stderr, flush=True)
        sys.exit(3)
"#;

pub async fn cluster_test(root: &Path, args: &ClusterTestArgs) -> anyhow::Result<u8> {
    let print = |line: TestLine| match &line {
        TestLine::Error(_) => eprintln!("{line}"),
        _ => println!("{line}"),
    };
    let passed = test_cluster(root, &args.name, args.exec_config.as_deref(), &print).await?;
    Ok(if passed { exit::OK } else { exit::FAILURE })
}

/// The daemon's cluster tests (the web UI's button, `POST /api/v1/clusters/NAME/tests`): the
/// same test as `capstan cluster test`, reporting to the daemon instead of the terminal.
pub struct Tester {
    pub root: std::path::PathBuf,
}

impl ClusterTester for Tester {
    fn test<'a>(
        &'a self,
        cluster: &'a str,
        exec_config: Option<&'a str>,
        report: Report<'a>,
    ) -> futures_util::future::BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            test_cluster(&self.root, cluster, exec_config, report)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    }
}

/// Tests cluster `name` with a configuration's image, reporting each step as it happens:
/// whether every step passed.
pub async fn test_cluster(
    root: &Path,
    name: &str,
    exec_config: Option<&str>,
    report: Report<'_>,
) -> anyhow::Result<bool> {
    use capstan_core::model::ClusterTarget;
    use capstan_engine::backend::{ActivitySpec, DataAccess};
    use std::time::Instant;

    let home = load_valid(root)?;
    let cluster = home
        .clusters
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("unknown cluster `{}`", name))?;
    let (kubeconfig, context, cluster_ns) = match &cluster.target {
        ClusterTarget::Kubernetes {
            kubeconfig,
            context,
            namespace,
        } => (kubeconfig, context, namespace),
        ClusterTarget::Docker { host } => {
            return docker(root, &home, name, &host.value, exec_config, report).await;
        }
    };
    let (config, why) = test_config(&home, exec_config, ExecKind::Kubernetes)?;
    let backend = capstan_backend_k8s::K8sBackend::new(root);
    let kc = kubeconfig.as_ref().map(|k| k.value.clone());
    let ctx = context.as_ref().map(|c| c.value.clone());

    let t = Instant::now();
    let reachable = backend.server_version(kc.as_deref(), ctx.as_deref()).await;
    match &reachable {
        Ok(v) => step(report, true, "API reachable", v, t),
        Err(e) => step(report, false, "API reachable", e, t),
    }
    report(TestLine::Note(format!(
        "using execution configuration {} ({why})",
        config.name
    )));
    if reachable.is_err() {
        return Ok(false);
    }

    let t = Instant::now();
    let ns_template = config
        .namespace
        .as_ref()
        .or(cluster_ns.as_ref())
        .map(|n| n.value.clone())
        .unwrap_or_else(|| "default".into());
    let ns = capstan_core::resolve::expand_namespace(&ns_template, "capstan-test", "capstan-test");
    match backend
        .namespace_exists(kc.as_deref(), ctx.as_deref(), &ns)
        .await
    {
        Ok(true) => step(report, true, "namespace", &format!("{ns} exists"), t),
        Ok(false) if config.create_namespace => step(
            report,
            true,
            "namespace",
            &format!("{ns} will be created"),
            t,
        ),
        Ok(false) => {
            step(
                report,
                false,
                "namespace",
                &format!("{ns} does not exist (set create_namespace = true, or create it)"),
                t,
            );
            return Ok(false);
        }
        // Reading namespaces may be forbidden to a user who may use one: go on and see.
        Err(e) => step(
            report,
            true,
            "namespace",
            &format!("{ns} (cannot check: {e})"),
            t,
        ),
    }

    let t = Instant::now();
    let dir = test_dir()?;
    let mut spec = capstan_engine::spec_from_config(
        &home,
        root,
        config,
        name,
        &ns,
        test_code(&dir),
        dir.clone(),
    );
    spec.home_root = dir.clone();
    // Objects of their own, whatever the runs before (whose pods' events outlive them).
    spec.attempt = unique_attempt();
    let Some(image) = spec.image.clone() else {
        bail!("execution configuration `{}` names no image", config.name);
    };
    let public = home
        .instance
        .server_public_url
        .as_ref()
        .map(|u| u.value.clone());
    let spec = ActivitySpec {
        data: public.clone().map(|api_url| DataAccess {
            api_url,
            token: String::new(),
        }),
        ..spec
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ctl = capstan_engine::backend::ActivityControl {
        cancel: Default::default(),
        events: tx,
    };
    let (outcome, cleanup) = backend.run_with_cleanup(&spec, ctl).await;
    let TestRun {
        outcome,
        started,
        waited,
        log,
    } = finish_test(outcome, rx, &dir);
    let ok = outcome.state == capstan_core::job::JobState::Succeeded;
    let detail = |d: &str| {
        waited
            .last()
            .map_or(d.to_string(), |w| format!("{d} (last: {w})"))
    };
    // The run's time less its cleanup's, which has its own line.
    let run_took = t
        .elapsed()
        .saturating_sub(cleanup.as_ref().map_or(Default::default(), |c| c.took));
    step_took(
        report,
        started || ok,
        "image pull and start",
        &detail(&image),
        run_took,
    );
    let diagnosis = outcome.diagnosis.clone().unwrap_or_default();
    match callback(public.as_deref(), started || ok, &log, &diagnosis) {
        Check::Ok(d) => step_took(
            report,
            true,
            "callback to the daemon",
            &d,
            Default::default(),
        ),
        Check::Fail(d) => step_took(
            report,
            false,
            "callback to the daemon",
            &d,
            Default::default(),
        ),
        Check::Skip(why) => skip(report, "callback to the daemon", &why),
    }
    // The backend deletes the pod, its code and its token, and waits until they are gone.
    let cleaned = match cleanup {
        Some(c) => {
            let gone = c.result.is_ok();
            let detail = match c.result {
                Ok(()) => format!("pod, code and token deleted from {ns}"),
                Err(e) => e,
            };
            step_took(report, gone, "cleanup", &detail, c.took);
            gone
        }
        None => {
            skip(report, "cleanup", "nothing was created in the cluster");
            true
        }
    };
    if !cleaned && ok {
        report(TestLine::Error(format!(
            "the test's objects are still in namespace {ns}"
        )));
        return Ok(false);
    }
    if !ok {
        report(TestLine::Error(
            outcome
                .diagnosis
                .unwrap_or_else(|| "the test pod did not succeed".into()),
        ));
        return Ok(false);
    }
    Ok(true)
}

/// The execution configuration a cluster test runs with, and why that one: the one named,
/// else the instance default when it is of `kind`, else the first of `kind` by name.
fn test_config<'h>(
    home: &'h capstan_core::Home,
    name: Option<&str>,
    kind: ExecKind,
) -> anyhow::Result<(&'h capstan_core::model::ExecConfig, String)> {
    let default = home
        .instance
        .defaults
        .exec_config
        .as_ref()
        .and_then(|d| home.exec_configs.get(&d.value))
        .filter(|c| c.kind.value == kind);
    let (config, why) = match (name, default) {
        (Some(n), _) => (
            home.exec_configs
                .get(n)
                .ok_or_else(|| anyhow::anyhow!("unknown execution configuration `{n}`"))?,
            "chosen with --exec-config".to_string(),
        ),
        (None, Some(c)) => (
            c,
            "the instance default, [defaults] exec_config; choose with --exec-config".into(),
        ),
        (None, None) => (
            home.exec_configs
                .values()
                .find(|c| c.kind.value == kind)
                .ok_or_else(|| anyhow::anyhow!("no {kind} execution configuration to test with"))?,
            format!("the first {kind} configuration; choose with --exec-config"),
        ),
    };
    if config.kind.value != kind {
        bail!(
            "execution configuration `{}` is {}, not {kind}: pass --exec-config with a {kind} configuration",
            config.name,
            config.kind.value
        );
    }
    Ok((config, why))
}

/// The attempt number of a test run: the microseconds since the epoch, so that two runs in a
/// row never share the names of their objects (a quick rerun would meet the ConfigMap of the
/// last one, and its pod's events). It fits the names and labels the backends render.
fn unique_attempt() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as i64)
}

/// How a step went, with what it found or why it was not tried.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    Ok(String),
    Fail(String),
    Skip(String),
}

/// The callback step: tried only where pods have an address to call and the pod ran.
fn callback(public: Option<&str>, ran: bool, log: &str, diagnosis: &str) -> Check {
    match public {
        None => Check::Skip(
            "no [server] public_url: pods have no address to reach the daemon at".into(),
        ),
        Some(_) if !ran => Check::Skip("the pod never ran".into()),
        Some(u) if log.contains("callback ok") => Check::Ok(u.to_string()),
        Some(u) => Check::Fail(format!("{u}: {diagnosis}")),
    }
}

/// A temporary folder holding the test's code.
/// A folder laid out as a home holding the test's code (in the folder of its project, where
/// backends read code from).
fn test_dir() -> anyhow::Result<std::path::PathBuf> {
    // The daemon may run several tests at once: a folder each.
    let dir = std::env::temp_dir().join(format!(
        "capstan-cluster-test-{}-{}",
        std::process::id(),
        unique_attempt()
    ));
    std::fs::create_dir_all(test_code(&dir).parent().unwrap_or(&dir))?;
    std::fs::write(test_code(&dir), TEST_POD)?;
    Ok(dir)
}

fn test_code(dir: &Path) -> std::path::PathBuf {
    dir.join("projects/capstan-test/cluster_test.py")
}

/// What the test activity did.
struct TestRun {
    outcome: capstan_engine::backend::ActivityOutcome,
    started: bool,
    waited: Vec<String>,
    log: String,
}

/// Runs the test activity to its end (the backend removes its container or pod before it
/// returns) and removes the test's folder.
async fn run_test(
    backend: &dyn capstan_engine::backend::Backend,
    spec: &capstan_engine::backend::ActivitySpec,
    dir: &Path,
) -> TestRun {
    use capstan_engine::backend::ActivityControl;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let outcome = backend
        .run(
            spec,
            ActivityControl {
                cancel: Default::default(),
                events: tx,
            },
        )
        .await;
    finish_test(outcome, rx, dir)
}

/// What the test activity did, from its outcome and events; removes the test's folder.
fn finish_test(
    outcome: capstan_engine::backend::ActivityOutcome,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<capstan_engine::backend::ActivityEvent>,
    dir: &Path,
) -> TestRun {
    use capstan_engine::backend::ActivityEvent;
    let mut waited = Vec::new();
    let mut started = false;
    while let Ok(e) = rx.try_recv() {
        match e {
            ActivityEvent::Waiting(w) => waited.push(w),
            ActivityEvent::Running => started = true,
            _ => {}
        }
    }
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    TestRun {
        outcome,
        started,
        waited,
        log,
    }
}

/// One line of `cluster test`: whether a step worked, what it found, how long it took.
fn step(report: Report<'_>, ok: bool, what: &str, detail: &str, t: std::time::Instant) {
    step_took(report, ok, what, detail, t.elapsed());
}

fn step_took(report: Report<'_>, ok: bool, what: &str, detail: &str, took: std::time::Duration) {
    report(TestLine::Step {
        ok,
        what: what.to_string(),
        detail: detail.to_string(),
        took_ms: took.as_millis() as u64,
    });
}

/// A step not tried, and why.
fn skip(report: Report<'_>, what: &str, why: &str) {
    report(TestLine::Skip {
        what: what.to_string(),
        why: why.to_string(),
    });
}

/// `capstan cluster test NAME` for a Docker cluster: the engine answers, the address its
/// containers reach this machine at (and why), a real container from a Docker configuration's
/// image that starts and calls back to that address, and its removal.
pub async fn docker(
    root: &Path,
    home: &capstan_core::Home,
    name: &str,
    host: &str,
    exec_config: Option<&str>,
    report: Report<'_>,
) -> anyhow::Result<bool> {
    use capstan_engine::backend::DataAccess;
    use std::time::Instant;

    let (config, why) = test_config(home, exec_config, ExecKind::Docker)?;
    let t = Instant::now();
    let engine = match capstan_backend_docker::image_ops::Engine::connect(Some(host)).await {
        Ok(e) => e,
        Err(e) => {
            step(report, false, "engine reachable", &e, t);
            report(TestLine::Note(format!(
                "using execution configuration {} ({why})",
                config.name
            )));
            return Ok(false);
        }
    };
    let version = engine.version().await;
    match &version {
        Ok(v) => step(
            report,
            true,
            "engine reachable",
            &format!("{host}, Docker {v}"),
            t,
        ),
        Err(e) => step(report, false, "engine reachable", e, t),
    }
    report(TestLine::Note(format!(
        "using execution configuration {} ({why})",
        config.name
    )));
    if version.is_err() {
        return Ok(false);
    }

    // Where the containers call back: the daemon's public URL when set, else an address of this
    // machine found as the daemon finds it, on which this command listens for the test.
    let t = Instant::now();
    let public = home
        .instance
        .server_public_url
        .as_ref()
        .map(|u| u.value.clone());
    let (url, _probe) = match public {
        Some(u) => {
            step(
                report,
                true,
                "address for containers",
                &format!("{u} ([server] public_url)"),
                t,
            );
            (u, None)
        }
        None => match engine.host_address().await {
            Ok(a) => {
                let listener = tokio::net::TcpListener::bind((a.ip, 0)).await?;
                let addr = listener.local_addr()?;
                let probe = tokio::spawn(async move {
                    axum::serve(listener, capstan_server::probe_router()).await
                });
                step(
                    report,
                    true,
                    "address for containers",
                    &format!("{} ({})", a.ip, a.why),
                    t,
                );
                (format!("http://{addr}"), Some(probe))
            }
            Err(e) => {
                step(
                    report,
                    false,
                    "address for containers",
                    &format!("{e}: set [server] public_url"),
                    t,
                );
                return Ok(false);
            }
        },
    };

    let t = Instant::now();
    let dir = test_dir()?;
    let mut spec = capstan_engine::spec_from_config(
        home,
        root,
        config,
        name,
        "",
        test_code(&dir),
        dir.clone(),
    );
    spec.home_root = dir.clone();
    spec.attempt = unique_attempt();
    spec.kind = ExecKind::Docker;
    spec.namespace = None;
    spec.docker_host = Some(host.to_string());
    spec.data = Some(DataAccess {
        api_url: url.clone(),
        token: String::new(),
    });
    let Some(image) = spec.image.clone() else {
        let base = config
            .base_image
            .as_ref()
            .map_or("default", |b| b.value.as_str());
        step(
            report,
            false,
            "container start",
            &format!(
                "execution configuration `{}` runs base image `{base}`, which is not built: `capstan image build-base {base}`",
                config.name
            ),
            t,
        );
        return Ok(false);
    };
    let backend = capstan_backend_docker::DockerBackend::new(root);
    let TestRun {
        outcome,
        started,
        log,
        ..
    } = run_test(&backend, &spec, &dir).await;
    let ok = outcome.state == capstan_core::job::JobState::Succeeded;
    let why = outcome.diagnosis.clone().unwrap_or_default();
    let detail = if started {
        image
    } else {
        format!("{image}: {why}")
    };
    step(report, started, "container start", &detail, t);
    if started {
        let t = Instant::now();
        match log.contains("callback ok") {
            true => step(report, true, "callback to this machine", &url, t),
            false => step(
                report,
                false,
                "callback to this machine",
                &format!("{url}: {why}"),
                t,
            ),
        }
    } else {
        skip(
            report,
            "callback to this machine",
            "the container never ran",
        );
    }
    // The backend removes the container before it returns, whatever happened.
    step(report, true, "cleanup", "container removed", Instant::now());
    if !ok {
        report(TestLine::Error(if why.is_empty() {
            "the test container did not succeed".into()
        } else {
            why
        }));
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(toml: &str) -> capstan_core::Home {
        let mut files = capstan_core::load::HomeFiles::default();
        files
            .toml
            .insert("capstan.toml".into(), toml.as_bytes().to_vec());
        files.toml.insert(
            "exec-configs.toml".into(),
            b"[exec_config.a-docker]\nkind = \"docker\"\nimage = \"i\"\n\
              [exec_config.k8s-large]\nkind = \"kubernetes\"\nimage = \"i\"\n\
              [exec_config.k8s-medium]\nkind = \"kubernetes\"\nimage = \"i\"\n"
                .to_vec(),
        );
        let (home, diags) = capstan_core::load::load(Path::new("/h"), &files);
        assert!(!diags.has_errors(), "{:?}", diags.list);
        home
    }

    #[test]
    fn the_cluster_test_says_which_configuration_it_uses_and_why() {
        let plain = home("");
        let (c, why) = test_config(&plain, None, ExecKind::Kubernetes).unwrap();
        assert_eq!(
            (c.name.as_str(), why.as_str()),
            (
                "k8s-large",
                "the first kubernetes configuration; choose with --exec-config"
            )
        );
        let (c, why) = test_config(&plain, Some("k8s-medium"), ExecKind::Kubernetes).unwrap();
        assert_eq!(
            (c.name.as_str(), why.as_str()),
            ("k8s-medium", "chosen with --exec-config")
        );
        let defaulted = home("[defaults]\nexec_config = \"k8s-medium\"\n");
        let (c, why) = test_config(&defaulted, None, ExecKind::Kubernetes).unwrap();
        assert_eq!(
            (c.name.as_str(), why.as_str()),
            (
                "k8s-medium",
                "the instance default, [defaults] exec_config; choose with --exec-config"
            )
        );
        // A default of the other kind does not apply.
        let (c, _) = test_config(&defaulted, None, ExecKind::Docker).unwrap();
        assert_eq!(c.name, "a-docker");
    }

    #[test]
    fn two_cluster_tests_in_a_row_never_share_object_names() {
        let spec = |attempt| capstan_engine::backend::ActivitySpec {
            attempt,
            ..capstan_engine::backend::ActivitySpec::bare(
                0,
                0,
                "/d".into(),
                "/h".into(),
                ExecKind::Kubernetes,
            )
        };
        let (a, b) = (unique_attempt(), unique_attempt());
        let first = capstan_backend_k8s::render::object_name(&spec(a), "f8f51469");
        std::thread::sleep(std::time::Duration::from_millis(1));
        let second = capstan_backend_k8s::render::object_name(&spec(unique_attempt()), "f8f51469");
        assert!(b >= a);
        assert_ne!(first, second);
        // A pod's name is its hostname, and the attempt is a label value: 63 characters.
        assert!(first.len() <= 63, "{first}");
        assert!(a.to_string().len() <= 63);
    }

    #[test]
    fn the_callback_is_skipped_where_the_pod_never_ran() {
        let url = Some("http://capstan.example.com:7878");
        assert_eq!(
            callback(url, false, "", "the cluster cannot pull image `x`"),
            Check::Skip("the pod never ran".into())
        );
        assert_eq!(
            callback(
                url,
                true,
                "callback ok: http://capstan.example.com:7878\n",
                ""
            ),
            Check::Ok("http://capstan.example.com:7878".into())
        );
        assert_eq!(
            callback(
                url,
                true,
                "callback failed",
                "the recipe failed with exit code 3"
            ),
            Check::Fail(
                "http://capstan.example.com:7878: the recipe failed with exit code 3".into()
            )
        );
        assert!(matches!(callback(None, true, "", ""), Check::Skip(_)));
    }
}
