//! `capstan k8s render`: the objects a run would create, without a cluster.

use std::path::Path;

use crate::cli::{ClusterTestArgs, K8sRenderArgs};
use crate::exit;
use crate::explain::resolve_target;
use crate::home::load_valid;
use anyhow::bail;
use capstan_core::model::ExecKind;

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
    let spec = capstan_engine::spec_from(&home, root, &r, 0, 0, root.join("state/jobs/0/a0-0"));
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
    use capstan_core::model::ClusterTarget;
    use capstan_engine::backend::{
        ActivityControl, ActivityEvent, ActivitySpec, Backend, DataAccess,
    };
    use std::time::Instant;

    let home = load_valid(root)?;
    let cluster = home
        .clusters
        .get(&args.name)
        .ok_or_else(|| anyhow::anyhow!("unknown cluster `{}`", args.name))?;
    let ClusterTarget::Kubernetes {
        kubeconfig,
        context,
        namespace: cluster_ns,
    } = &cluster.target
    else {
        bail!(
            "cluster `{}` is a Docker host: `cluster test` checks Kubernetes clusters",
            args.name
        );
    };
    let config = match &args.exec_config {
        Some(n) => home
            .exec_configs
            .get(n)
            .ok_or_else(|| anyhow::anyhow!("unknown execution configuration `{n}`"))?,
        None => home
            .exec_configs
            .values()
            .find(|c| c.kind.value == ExecKind::Kubernetes)
            .ok_or_else(|| anyhow::anyhow!("no kubernetes execution configuration to test with"))?,
    };
    let step = |ok: bool, what: &str, detail: &str, t: Instant| {
        println!(
            "{} {what:<22} {detail} ({} ms)",
            if ok { "ok  " } else { "FAIL" },
            t.elapsed().as_millis()
        );
    };
    let backend = capstan_backend_k8s::K8sBackend::new(root);
    let kc = kubeconfig.as_ref().map(|k| k.value.clone());
    let ctx = context.as_ref().map(|c| c.value.clone());

    let t = Instant::now();
    match backend.server_version(kc.as_deref(), ctx.as_deref()).await {
        Ok(v) => step(true, "API reachable", &v, t),
        Err(e) => {
            step(false, "API reachable", &e, t);
            return Ok(exit::FAILURE);
        }
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
        Ok(true) => step(true, "namespace", &format!("{ns} exists"), t),
        Ok(false) if config.create_namespace => {
            step(true, "namespace", &format!("{ns} will be created"), t)
        }
        Ok(false) => {
            step(
                false,
                "namespace",
                &format!("{ns} does not exist (set create_namespace = true, or create it)"),
                t,
            );
            return Ok(exit::FAILURE);
        }
        // Reading namespaces may be forbidden to a user who may use one: go on and see.
        Err(e) => step(true, "namespace", &format!("{ns} (cannot check: {e})"), t),
    }

    let t = Instant::now();
    let dir = std::env::temp_dir().join(format!("capstan-cluster-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cluster_test.py"), TEST_POD)?;
    let spec = capstan_engine::spec_from_config(
        &home,
        root,
        config,
        &args.name,
        &ns,
        dir.join("cluster_test.py"),
        dir.clone(),
    );
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
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let outcome = backend
        .run(
            &spec,
            ActivityControl {
                cancel: Default::default(),
                events: tx,
            },
        )
        .await;
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
    let _ = std::fs::remove_dir_all(&dir);
    let ok = outcome.state == capstan_core::job::JobState::Succeeded;
    let detail = |d: &str| {
        waited
            .last()
            .map_or(d.to_string(), |w| format!("{d} (last: {w})"))
    };
    step(started || ok, "image pull and start", &detail(&image), t);
    let t = Instant::now();
    match (&public, ok, log.contains("callback ok")) {
        (None, _, _) => println!(
            "skip {:<22} no [server] public_url: pods have no address to reach the daemon at",
            "callback to the daemon"
        ),
        (Some(u), _, true) => step(true, "callback to the daemon", u, t),
        (Some(u), _, false) => step(
            false,
            "callback to the daemon",
            &format!("{u}: {}", outcome.diagnosis.clone().unwrap_or_default()),
            t,
        ),
    }
    // The backend deletes the pod and waits until it is gone before it returns.
    step(
        true,
        "cleanup",
        &format!("pod deleted from {ns}"),
        Instant::now(),
    );
    if !ok {
        eprintln!(
            "error: {}",
            outcome
                .diagnosis
                .unwrap_or_else(|| "the test pod did not succeed".into())
        );
        return Ok(exit::FAILURE);
    }
    Ok(exit::OK)
}
