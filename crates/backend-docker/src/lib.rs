//! The `docker` backend: each activity in a fresh container on the Docker engine its cluster
//! names (or the local engine), through the Engine API with the version negotiated.
//!
//! The recipe's code is uploaded into the created container before it starts, so it works the
//! same whether or not the engine shares a filesystem with the daemon. The container's logs are
//! streamed into the activity's log file as they come (and rewritten in full from the engine if
//! the daemon restarts meanwhile). An OOM kill is read from the engine's `OOMKilled` state. When
//! the activity ends — succeeded, failed, cancelled or timed out — its container is removed once
//! its logs and state are saved. At start, containers of this instance that belong to no active
//! job are removed.

pub mod host_address;
pub mod image_ops;
pub mod render;
pub mod usage;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerStateStatusEnum, ContainerSummary};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use capstan_core::model::{ClusterTarget, ExecKind, Home};
use capstan_engine::backend::{
    ActivityControl, ActivityEvent, ActivityKey, ActivityOutcome, ActivitySpec, Backend,
    EngineListing, EngineWorkload, Resumed, Usage,
};
use capstan_engine::diagnose::{Ending, outcome};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::render::{LABEL_ACTIVITY, LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_JOB};

/// Seconds between SIGTERM and SIGKILL when a container is stopped (cancel, timeout).
const STOP_GRACE_SECS: i32 = 2;

pub struct DockerBackend {
    instance: String,
    /// Per engine: its client, and how to read its containers' exact usage, if it can be.
    engines: tokio::sync::Mutex<HashMap<String, (Docker, Option<usage::Layout>)>>,
}

/// How to name an engine in messages.
fn engine_name(host: Option<&str>) -> String {
    match host {
        Some(h) => h.to_string(),
        None => {
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
        }
    }
}

/// The engine's own words, without bollard's wrapping.
fn engine_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => other.to_string(),
    }
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The command that builds the image an activity needs, for the "image missing" diagnosis.
fn how_to_build(spec: &ActivitySpec, image: &str) -> String {
    if let Some(env) = &spec.code_env {
        return format!("build it with `capstan env build {}`", env.name);
    }
    let explicit = spec.exec.as_ref().is_some_and(|e| e.image.is_some());
    let name = image.rsplit('/').next().unwrap_or(image);
    let name = name.split(':').next().unwrap_or(name);
    match name.strip_prefix("capstan-base-") {
        Some(base) if !explicit => format!("build it with `capstan image build-base {base}`"),
        _ => format!(
            "load or build it on that engine (`docker pull {image}` where a registry is reachable)"
        ),
    }
}

impl DockerBackend {
    pub fn new(home_root: &Path) -> DockerBackend {
        DockerBackend {
            instance: capstan_core::instance_id(home_root),
            engines: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A client for an engine, with the API version negotiated (the engine may be older than
    /// the client library, as Debian's 20.10 is).
    async fn engine(&self, host: Option<&str>) -> Result<Docker, String> {
        Ok(self.engine_and_layout(host).await?.0)
    }

    async fn engine_and_layout(
        &self,
        host: Option<&str>,
    ) -> Result<(Docker, Option<usage::Layout>), String> {
        let key = host.unwrap_or("").to_string();
        let mut engines = self.engines.lock().await;
        if let Some(d) = engines.get(&key) {
            return Ok(d.clone());
        }
        let name = engine_name(host);
        let fail = |e: DockerError| format!("cannot reach the Docker engine at {name}: {e}");
        let docker = match host {
            None => Docker::connect_with_defaults(),
            Some(h) if h.starts_with("unix://") => {
                Docker::connect_with_unix(h, 120, bollard::API_DEFAULT_VERSION)
            }
            Some(h) => {
                let http = h.replacen("tcp://", "http://", 1);
                Docker::connect_with_http(&http, 120, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(fail)?;
        let docker = docker.negotiate_version().await.map_err(fail)?;
        let driver = docker.info().await.ok().and_then(|i| i.cgroup_driver);
        let layout = usage::Layout::for_engine(
            usage::is_local(host),
            driver.as_ref().map(|d| d.to_string()).as_deref(),
        );
        engines.insert(key, (docker.clone(), layout));
        Ok((docker, layout))
    }

    async fn run_impl(&self, spec: &ActivitySpec, ctl: ActivityControl) -> ActivityOutcome {
        let host = spec.docker_host.as_deref();
        let where_ = engine_name(host);
        let (docker, layout) = match self.engine_and_layout(host).await {
            Ok(d) => d,
            Err(e) => return ActivityOutcome::failed(e),
        };
        let mut body = match render::container_body(spec, &self.instance) {
            Ok(b) => b,
            Err(e) => return ActivityOutcome::failed(e),
        };
        if layout.is_some() {
            body.host_config.get_or_insert_default().cgroup_parent = Some(self.parent(spec));
        }
        let image = body.image.clone().unwrap_or_default();
        match docker.inspect_image(&image).await {
            Ok(_) => {}
            // An image in a registry is pulled on first use, as `docker run` would.
            Err(e) if is_not_found(&e) && image_ops::has_registry(&image) => {
                if let Err(why) = image_ops::pull(&docker, &image).await {
                    return ActivityOutcome::failed(format!(
                        "image `{image}` is not on the Docker engine at {where_}, and pulling it failed ({why}): {}",
                        how_to_build(spec, &image)
                    ));
                }
            }
            Err(e) if is_not_found(&e) => {
                return ActivityOutcome::failed(format!(
                    "image `{image}` is not on the Docker engine at {where_}: {}",
                    how_to_build(spec, &image)
                ));
            }
            Err(e) => {
                return ActivityOutcome::failed(format!(
                    "cannot inspect image `{image}` on {where_}: {}",
                    engine_message(&e)
                ));
            }
        }
        let archive = match render::code_archive(spec) {
            Ok(a) => a,
            Err(e) => {
                return ActivityOutcome::failed(format!("cannot pack the recipe's code: {e}"));
            }
        };
        // A cancel during preparation (a pull): no container is created after it.
        if ctl.cancel.is_cancelled() {
            return ActivityOutcome::cancelled();
        }
        ctl.report(ActivityEvent::Starting);
        let name = render::container_name(spec, &self.instance);
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await;
        let id = match created {
            Ok(c) => c.id,
            Err(e) => {
                // Nothing was created; nothing to clean.
                return ActivityOutcome::failed(format!(
                    "the Docker engine at {where_} refused to create the container: {}",
                    engine_message(&e)
                ));
            }
        };
        ctl.report(ActivityEvent::Started {
            backend_ref: format!("{}|{id}", host.unwrap_or("")),
        });
        if render::runs_engine(spec)
            && let Err(why) = engine_can_run(&docker, &id, &image).await
        {
            remove(&docker, &id).await;
            return ActivityOutcome::failed(why);
        }
        let upload = docker
            .upload_to_container(
                &id,
                Some(UploadToContainerOptionsBuilder::new().path("/").build()),
                bollard::body_full(archive.into()),
            )
            .await;
        if let Err(e) = upload {
            remove(&docker, &id).await;
            return ActivityOutcome::failed(format!(
                "cannot upload the recipe's code into the container: {}",
                engine_message(&e)
            ));
        }
        if ctl.cancel.is_cancelled() {
            remove(&docker, &id).await;
            return ActivityOutcome::cancelled();
        }
        if let Err(e) = docker.start_container(&id, None).await {
            remove(&docker, &id).await;
            return ActivityOutcome::failed(format!(
                "the Docker engine at {where_} could not start the container: {}",
                engine_message(&e)
            ));
        }
        ctl.report(ActivityEvent::Running);
        self.supervise(&docker, layout, spec, &id, &ctl, false, SystemTime::now())
            .await
    }

    /// The cgroup parent of an activity's container (see [`usage`]).
    fn parent(&self, spec: &ActivitySpec) -> String {
        usage::parent(&self.instance, spec.job_id, spec.idx, spec.attempt)
    }

    /// Follows a started container to its end, then saves its outcome and removes it.
    #[allow(clippy::too_many_arguments)]
    async fn supervise(
        &self,
        docker: &Docker,
        layout: Option<usage::Layout>,
        spec: &ActivitySpec,
        id: &str,
        ctl: &ActivityControl,
        rewrite_log: bool,
        started: SystemTime,
    ) -> ActivityOutcome {
        let logs = tokio::spawn(follow_logs(
            docker.clone(),
            id.to_string(),
            spec.log_path(),
            rewrite_log,
        ));
        let stats = Arc::new(Mutex::new(Sample::default()));
        let tracker = tokio::spawn(track_stats(docker.clone(), id.to_string(), stats.clone()));
        // The timeout counts from the container's start, also when re-attached after a restart.
        let deadline = spec.timeout.and_then(|t| {
            let elapsed = started.elapsed().unwrap_or_default();
            tokio::time::Instant::now()
                .checked_add(Duration::from_secs(t.secs()).saturating_sub(elapsed))
        });
        let (mut timed_out, mut cancelled) = (false, false);
        loop {
            let mut wait = Box::pin(docker.wait_container(id, None));
            tokio::select! {
                _ = wait.next() => {}
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                    if deadline.is_some() && !timed_out && !cancelled => {
                    timed_out = true;
                    stop(docker, id).await;
                    continue;
                }
                _ = ctl.cancel.cancelled(), if !cancelled && !timed_out => {
                    cancelled = true;
                    stop(docker, id).await;
                    continue;
                }
            }
            // The wait may end on a broken connection rather than the container's end.
            match docker.inspect_container(id, None).await {
                Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => break,
            }
        }
        let (last_stderr, log_error) =
            match tokio::time::timeout(Duration::from_secs(30), logs).await {
                Ok(Ok(r)) => r,
                _ => (Vec::new(), Some("the log stream did not end".to_string())),
            };
        tracker.abort();
        let sample = *stats.lock().unwrap_or_else(|e| e.into_inner());
        // The engine samples once a second, the first time at start: a container that ended
        // before a second sample was never measured, and a number would mislead. The cgroup's
        // counters are exact, where they can be read.
        let measured = sample.samples >= 2;
        let (exact_memory, exact_cpu) =
            layout.map_or((None, None), |l| usage::read(l, &self.parent(spec)));
        let mut ending = Ending {
            timed_out,
            cancelled,
            log_error,
            last_stderr,
            peak_memory_bytes: exact_memory.or(sample.peak_memory.filter(|_| measured)),
            cpu_time_ms: exact_cpu
                .or(sample.cpu_nanos.filter(|_| measured))
                .map(|n| n / 1_000_000),
            ..Ending::default()
        };
        match docker.inspect_container(id, None).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                ending.oom_killed = state.oom_killed.unwrap_or(false);
                ending.exit_code = state.exit_code.map(|c| c as i32);
                if let Some(err) = state.error.filter(|e| !e.is_empty()) {
                    ending.start_error = Some(format!("the container failed: {err}"));
                }
            }
            Err(e) => {
                ending.start_error = Some(format!(
                    "the container vanished before its end could be read: {}",
                    engine_message(&e)
                ))
            }
        }
        if spec.recipe_kind.is_spark() {
            keep_driver_log(docker, id, spec).await;
        }
        remove(docker, id).await;
        if let Some(l) = layout {
            usage::remove(l, &self.parent(spec));
        }
        let mut o = outcome(spec, &ending);
        capstan_spark::refine(spec, &mut o);
        o
    }

    async fn find(
        &self,
        docker: &Docker,
        spec: &ActivitySpec,
    ) -> Result<Option<ContainerSummary>, DockerError> {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_INSTANCE}={}", self.instance),
                format!("{LABEL_ACTIVITY}={}", spec.activity_id()),
                format!("{LABEL_ATTEMPT}={}", spec.attempt),
            ],
        )]);
        let list = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        Ok(list.into_iter().next())
    }

    async fn resume_impl(
        &self,
        spec: &ActivitySpec,
        backend_ref: Option<&str>,
        ctl: ActivityControl,
    ) -> Resumed {
        // The engine is the one recorded at start; the spec may have changed since.
        let recorded = backend_ref.and_then(|r| r.split_once('|')).map(|(h, _)| h);
        let host = match recorded {
            Some("") => None,
            Some(h) => Some(h),
            None => spec.docker_host.as_deref(),
        };
        let (docker, layout) = match self.engine_and_layout(host).await {
            Ok(d) => d,
            Err(e) => {
                return Resumed::Finished(ActivityOutcome::failed(format!(
                    "cannot re-attach after a restart: {e}"
                )));
            }
        };
        let found = match self.find(&docker, spec).await {
            Ok(f) => f,
            Err(e) => {
                return Resumed::Finished(ActivityOutcome::failed(format!(
                    "cannot look for the job's container after a restart: {}",
                    engine_message(&e)
                )));
            }
        };
        let Some(container) = found else {
            return match backend_ref {
                // It was created, and now it is gone: removed from outside capstan.
                Some(r) => Resumed::Finished(ActivityOutcome::failed(format!(
                    "its container {} disappeared while the daemon was down (removed outside capstan?)",
                    r.split('|').nth(1).unwrap_or("")
                ))),
                None => Resumed::NeverStarted,
            };
        };
        let id = container.id.unwrap_or_default();
        let inspect = docker.inspect_container(&id, None).await.ok();
        let state = inspect
            .as_ref()
            .and_then(|c| c.state.clone())
            .unwrap_or_default();
        if state.status == Some(ContainerStateStatusEnum::CREATED) {
            // Created but never started: safe to remove and run again.
            remove(&docker, &id).await;
            return Resumed::NeverStarted;
        }
        let started = state
            .started_at
            .as_deref()
            .and_then(|s| humantime::parse_rfc3339_weak(s.split('.').next().unwrap_or(s)).ok())
            .unwrap_or_else(SystemTime::now);
        ctl.report(ActivityEvent::Running);
        // The daemon missed part of the output: the engine kept all of it.
        Resumed::Finished(
            self.supervise(&docker, layout, spec, &id, &ctl, true, started)
                .await,
        )
    }

    async fn usage_impl(&self, spec: &ActivitySpec) -> Option<Usage> {
        let docker = self.engine(spec.docker_host.as_deref()).await.ok()?;
        let id = self.find(&docker, spec).await.ok()??.id?;
        sample_usage(&docker, &id).await
    }

    /// The engines this instance may have containers on: the local one, and each Docker
    /// cluster's (one naming the local engine's own address is the local engine, listed once).
    fn hosts(home: &Home) -> Vec<Option<String>> {
        let mut hosts: Vec<Option<String>> = vec![None];
        for c in home.clusters.values() {
            if let ClusterTarget::Docker { host } = &c.target
                && !hosts
                    .iter()
                    .any(|h| engine_name(h.as_deref()) == engine_name(Some(&host.value)))
            {
                hosts.push(Some(host.value.clone()));
            }
        }
        hosts
    }

    /// This instance's containers on `docker`, running or not.
    async fn instance_containers(&self, docker: &Docker) -> Result<Vec<ContainerSummary>, String> {
        let filters: HashMap<&str, Vec<String>> =
            HashMap::from([("label", vec![format!("{LABEL_INSTANCE}={}", self.instance)])]);
        docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| engine_message(&e))
    }

    async fn sweep_impl(&self, home: &Home, active: &[ActivityKey]) -> Vec<String> {
        let mut removed = Vec::new();
        let mut swept = false;
        for host in Self::hosts(home) {
            // An engine that is down now has nothing we can remove; it is swept next time.
            let Ok((docker, layout)) = self.engine_and_layout(host.as_deref()).await else {
                continue;
            };
            // Every local engine shares this machine's cgroup tree: one sweep does.
            if let Some(l) = layout.filter(|_| !swept) {
                swept = true;
                let n = usage::sweep(l, &self.instance);
                if n > 0 {
                    removed.push(format!("{n} empty cgroup parent(s) of ended containers"));
                }
            }
            let Ok(list) = self.instance_containers(&docker).await else {
                continue;
            };
            for c in list {
                let key = key_of(c.labels.as_ref());
                if key.is_some_and(|k| active.contains(&k)) {
                    continue;
                }
                let id = c.id.clone().unwrap_or_default();
                remove(&docker, &id).await;
                removed.push(format!(
                    "container {} ({}) on {}",
                    c.names.and_then(|n| n.into_iter().next()).unwrap_or(id),
                    key.map_or("no job".to_string(), |k| format!(
                        "job {}, not active in this instance",
                        k.job_id
                    )),
                    engine_name(host.as_deref())
                ));
            }
        }
        removed
    }

    async fn workloads_impl(&self, home: &Home) -> Vec<EngineListing> {
        let mut out = Vec::new();
        for host in Self::hosts(home) {
            let address = engine_name(host.as_deref());
            let clusters: Vec<&str> = home
                .clusters
                .values()
                .filter(|c| match &c.target {
                    ClusterTarget::Docker { host } => engine_name(Some(&host.value)) == address,
                    _ => false,
                })
                .map(|c| c.name.as_str())
                .collect();
            let engine = match (&host, clusters.as_slice()) {
                (None, []) => format!("the local Docker engine ({address})"),
                (None, names) => format!(
                    "the local Docker engine ({address}), cluster {}",
                    names.join(", ")
                ),
                (Some(_), names) => format!("cluster {} ({address})", names.join(", ")),
            };
            let listed = match self.engine(host.as_deref()).await {
                Ok(docker) => self
                    .instance_containers(&docker)
                    .await
                    .map(|list| (docker, list)),
                Err(e) => Err(e),
            };
            let (docker, list) = match listed {
                Ok(x) => x,
                Err(error) => {
                    out.push(EngineListing {
                        engine,
                        error: Some(error),
                        workloads: Vec::new(),
                    });
                    continue;
                }
            };
            // Limits come from each container's inspection, usage from one stats sample
            // each (about a second, so sampled all at once).
            let workloads = futures_util::future::join_all(
                list.into_iter()
                    .map(|c| workload_of(&docker, host.as_deref(), c)),
            )
            .await;
            out.push(EngineListing {
                engine,
                error: None,
                workloads,
            });
        }
        out
    }

    async fn remove_workload_impl(&self, w: &EngineWorkload) -> Result<(), String> {
        let (host, id) = w
            .handle
            .split_once('\n')
            .ok_or_else(|| format!("`{}` is not a Docker workload", w.handle))?;
        let docker = self.engine((!host.is_empty()).then_some(host)).await?;
        try_remove(&docker, id).await
    }
}

/// The activity a container of this instance runs, from its labels.
fn key_of(labels: Option<&HashMap<String, String>>) -> Option<ActivityKey> {
    let labels = labels?;
    ActivityKey::from_labels(
        |k| labels.get(k).map(String::as_str),
        [LABEL_JOB, LABEL_ACTIVITY, LABEL_ATTEMPT],
    )
}

/// A container as the monitoring page shows it: limits from its inspection, usage from one
/// stats sample when it runs.
async fn workload_of(docker: &Docker, host: Option<&str>, c: ContainerSummary) -> EngineWorkload {
    let id = c.id.clone().unwrap_or_default();
    let name = c
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map_or(id.clone(), |n| n.trim_start_matches('/').to_string());
    let key = key_of(c.labels.as_ref());
    let job_id = c
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_JOB))
        .and_then(|v| v.parse().ok());
    let state = c
        .state
        .map_or_else(|| "unknown".to_string(), |s| s.to_string());
    let host_config = docker
        .inspect_container(&id, None)
        .await
        .ok()
        .and_then(|i| i.host_config);
    let cpu_limit = host_config.as_ref().and_then(|h| {
        h.nano_cpus
            .filter(|n| *n > 0)
            .map(|n| n as f64 / 1e9)
            .or_else(|| match (h.cpu_quota, h.cpu_period) {
                (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
                _ => None,
            })
    });
    let memory_limit = host_config
        .as_ref()
        .and_then(|h| h.memory)
        .filter(|m| *m > 0)
        .map(|m| m as u64);
    let memory_request = host_config
        .as_ref()
        .and_then(|h| h.memory_reservation)
        .filter(|m| *m > 0)
        .map(|m| m as u64);
    let usage = if state == "running" {
        sample_usage(docker, &id).await
    } else {
        None
    };
    EngineWorkload {
        handle: format!("{}\n{id}", host.unwrap_or("")),
        name,
        key,
        job_id,
        state,
        cpu_request: None,
        cpu_limit,
        memory_request,
        memory_limit,
        usage,
    }
}

/// One stats sample of a running container (the engine takes two readings a second apart).
async fn sample_usage(docker: &Docker, id: &str) -> Option<Usage> {
    let mut stream = docker.stats(id, Some(StatsOptionsBuilder::new().stream(false).build()));
    let s = stream.next().await?.ok()?;
    let cpu = s.cpu_stats.as_ref()?;
    let pre = s.precpu_stats.as_ref()?;
    let delta =
        |a: Option<u64>, b: Option<u64>| a.unwrap_or(0).saturating_sub(b.unwrap_or(0)) as f64;
    let cpu_delta = delta(
        cpu.cpu_usage.as_ref().and_then(|u| u.total_usage),
        pre.cpu_usage.as_ref().and_then(|u| u.total_usage),
    );
    let system_delta = delta(cpu.system_cpu_usage, pre.system_cpu_usage);
    let cpus = f64::from(cpu.online_cpus.unwrap_or(1));
    Some(Usage {
        cpu_percent: (system_delta > 0.0).then(|| cpu_delta / system_delta * cpus * 100.0),
        memory_bytes: s.memory_stats.and_then(|m| m.usage),
    })
}

/// Copies a Spark driver's full log out of its ended container, beside the job's log (the
/// console had only warnings).
async fn keep_driver_log(docker: &Docker, id: &str, spec: &ActivitySpec) {
    let dir = render::WORK_DIR.rsplit_once('/').map_or("/", |(d, _)| d);
    let path = format!("{dir}/{}", capstan_spark::DRIVER_LOG);
    let mut stream = docker.download_from_container(
        id,
        Some(
            bollard::query_parameters::DownloadFromContainerOptionsBuilder::new()
                .path(&path)
                .build(),
        ),
    );
    let mut tar_bytes = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        tar_bytes.extend_from_slice(&chunk);
        // A runaway log is not worth the daemon's memory.
        if tar_bytes.len() > 256 << 20 {
            return;
        }
    }
    let dest = &spec.dir;
    let mut archive = tar::Archive::new(std::io::Cursor::new(tar_bytes));
    if let Ok(entries) = archive.entries() {
        for mut e in entries.flatten() {
            if e.path()
                .is_ok_and(|p| p.ends_with(capstan_spark::DRIVER_LOG))
                && let Ok(mut f) = std::fs::File::create(dest.join(capstan_spark::DRIVER_LOG))
            {
                let _ = std::io::copy(&mut e, &mut f);
            }
        }
    }
}

async fn stop(docker: &Docker, id: &str) {
    let _ = docker
        .stop_container(
            id,
            Some(
                StopContainerOptionsBuilder::new()
                    .t(STOP_GRACE_SECS)
                    .build(),
            ),
        )
        .await;
}

async fn remove(docker: &Docker, id: &str) {
    if let Err(error) = try_remove(docker, id).await {
        tracing::warn!(container = id, error = %error, "cannot remove a container");
    }
}

/// Removes container `id` with its anonymous volumes, running or not; one already gone is
/// removed.
async fn try_remove(docker: &Docker, id: &str) -> Result<(), String> {
    let opts = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(opts)).await {
        Err(e) if !is_not_found(&e) => Err(engine_message(&e)),
        _ => Ok(()),
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    peak_memory: Option<u64>,
    cpu_nanos: Option<u64>,
    samples: u32,
}

/// Keeps the peak memory and the CPU time the engine reports while the container runs.
async fn track_stats(docker: Docker, id: String, sink: Arc<Mutex<Sample>>) {
    let mut stream = docker.stats(&id, Some(StatsOptionsBuilder::new().stream(true).build()));
    while let Some(Ok(s)) = stream.next().await {
        let mut out = sink.lock().unwrap_or_else(|e| e.into_inner());
        out.samples += 1;
        if let Some(m) = &s.memory_stats {
            let seen = m.max_usage.or(m.usage);
            if let Some(v) = seen.filter(|v| *v > 0) {
                out.peak_memory = Some(out.peak_memory.map_or(v, |p| p.max(v)));
            }
        }
        if let Some(total) = s
            .cpu_stats
            .as_ref()
            .and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            && total > 0
        {
            out.cpu_nanos = Some(total);
        }
    }
}

/// Streams the container's output into the activity's log (`TIMESTAMP o|e TEXT`), and returns
/// the last lines of stderr and whether the log could be written.
async fn follow_logs(
    docker: Docker,
    id: String,
    path: PathBuf,
    rewrite: bool,
) -> (Vec<String>, Option<String>) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!rewrite)
        .truncate(rewrite)
        .open(&path);
    let mut file = match file {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => return (Vec::new(), Some(format!("cannot open the log file: {e}"))),
    };
    let opts = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .build();
    let mut stream = docker.logs(&id, Some(opts));
    let mut last_err: std::collections::VecDeque<String> = Default::default();
    let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut error = None;
    while let Some(item) = stream.next().await {
        let (which, bytes) = match item {
            Ok(LogOutput::StdErr { message }) => (1, message),
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => (0, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(_) => break,
        };
        partial[which].extend_from_slice(&bytes);
        while let Some(nl) = partial[which].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial[which].drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            // With timestamps, the engine starts each line with its RFC 3339 time.
            let (stamp, text) = text.split_once(' ').unwrap_or(("", text.as_str()));
            if which == 1 && !text.trim().is_empty() {
                if last_err.len() == 20 {
                    last_err.pop_front();
                }
                last_err.push_back(text.trim_end().to_string());
            }
            if error.is_none()
                && let Err(e) = writeln!(
                    file,
                    "{stamp} {} {}",
                    if which == 1 { "e" } else { "o" },
                    text.trim_end_matches('\r')
                )
            {
                error = Some(format!("cannot write the log file: {e}"));
            }
        }
        if error.is_none()
            && let Err(e) = file.flush()
        {
            error = Some(format!("cannot write the log file: {e}"));
        }
    }
    (last_err.into_iter().collect(), error)
}

impl Backend for DockerBackend {
    fn kind(&self) -> ExecKind {
        ExecKind::Docker
    }

    fn run<'a>(
        &'a self,
        spec: &'a ActivitySpec,
        ctl: ActivityControl,
    ) -> BoxFuture<'a, ActivityOutcome> {
        Box::pin(self.run_impl(spec, ctl))
    }

    fn resume<'a>(
        &'a self,
        spec: &'a ActivitySpec,
        backend_ref: Option<&'a str>,
        ctl: ActivityControl,
    ) -> BoxFuture<'a, Resumed> {
        Box::pin(self.resume_impl(spec, backend_ref, ctl))
    }

    fn usage<'a>(&'a self, spec: &'a ActivitySpec) -> BoxFuture<'a, Option<Usage>> {
        Box::pin(self.usage_impl(spec))
    }

    fn sweep<'a>(
        &'a self,
        home: &'a Home,
        active: &'a [ActivityKey],
    ) -> BoxFuture<'a, Vec<String>> {
        Box::pin(self.sweep_impl(home, active))
    }

    fn workloads<'a>(&'a self, home: &'a Home) -> BoxFuture<'a, Vec<EngineListing>> {
        Box::pin(self.workloads_impl(home))
    }

    fn remove_workload<'a>(
        &'a self,
        _home: &'a Home,
        workload: &'a EngineWorkload,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.remove_workload_impl(workload))
    }
}

/// The C library an image has, for the built-in engine (the capstan binary, linked against
/// the GNU C library it was built with): `Ok` when it can run there, else why not, before
/// anything starts.
async fn engine_can_run(docker: &Docker, id: &str, image: &str) -> Result<(), String> {
    // The binary is this machine's: an engine on a machine of another architecture (a remote
    // one) cannot run it, whatever the image.
    if let Ok(info) = docker.info().await
        && let Some(arch) = info.architecture.as_deref()
        && !same_arch(arch, std::env::consts::ARCH)
    {
        return Err(format!(
            "the Docker engine runs on {arch}, and capstan's built-in engine is this machine's {} binary: run visual recipes on an engine of the same architecture, or locally",
            std::env::consts::ARCH
        ));
    }
    let needed = needed_glibc();
    let mut found = None;
    for path in [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/usr/lib/aarch64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
        "/usr/lib64/libc.so.6",
        "/usr/lib/libc.so.6",
    ] {
        if let Some(v) = glibc_at(docker, id, path, 0).await {
            found = Some(v);
            break;
        }
    }
    match (found, needed) {
        (None, _) => Err(format!(
            "image `{image}` has no GNU C library (an Alpine or distroless image?), so capstan's built-in engine cannot run in it: run visual recipes on a Debian- or Ubuntu-based image (`capstan image build-base` makes one), or locally"
        )),
        (Some(have), Some(need)) if have < need => Err(format!(
            "image `{image}` has GNU C library 2.{}, older than the 2.{} capstan's built-in engine needs: run visual recipes on a newer image (Debian 12 or later; `capstan image build-base` makes one), or locally",
            have, need
        )),
        _ => Ok(()),
    }
}

/// Whether Docker's name of an architecture (the kernel's `uname -m`, or Go's on some
/// engines) is Rust's `std::env::consts::ARCH`.
fn same_arch(docker: &str, rust: &str) -> bool {
    let canonical = |a: &str| {
        match a {
            "amd64" | "x86_64" => "x86_64",
            "arm64" | "aarch64" => "aarch64",
            other => other,
        }
        .to_string()
    };
    canonical(docker) == canonical(rust)
}

/// The GNU C library version (its minor: 36 for 2.36) of the file at `path` in the
/// container, following a symbolic link or two.
fn glibc_at<'a>(
    docker: &'a Docker,
    id: &'a str,
    path: &'a str,
    depth: u8,
) -> BoxFuture<'a, Option<u32>> {
    Box::pin(async move {
        let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        let mut stream = docker.download_from_container(id, Some(options));
        let mut tar = Vec::new();
        while let Some(chunk) = stream.next().await {
            tar.extend_from_slice(&chunk.ok()?);
        }
        // Read in one go: nothing of the archive is held across the next request.
        let read = || -> Option<Result<u32, String>> {
            let mut archive = tar::Archive::new(tar.as_slice());
            let mut entry = archive.entries().ok()?.next()?.ok()?;
            if entry.header().entry_type() == tar::EntryType::Symlink {
                let target = entry.link_name().ok()??.to_string_lossy().into_owned();
                return Some(Err(target));
            }
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).ok()?;
            glibc_version(&bytes).map(Ok)
        };
        match read()? {
            Ok(v) => Some(v),
            Err(_) if depth >= 3 => None,
            Err(target) => {
                let full = if target.starts_with('/') {
                    target
                } else {
                    format!("{}/{target}", Path::new(path).parent()?.display())
                };
                glibc_at(docker, id, &full, depth + 1).await
            }
        }
    })
}

/// "… stable release version 2.36." in the library's own banner.
fn glibc_version(bytes: &[u8]) -> Option<u32> {
    let marker = b"release version 2.";
    let at = bytes.windows(marker.len()).position(|w| w == marker)? + marker.len();
    number_at(bytes, at)
}

/// The decimal number at `at`.
fn number_at(bytes: &[u8], at: usize) -> Option<u32> {
    let digits: String = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .map(|b| *b as char)
        .collect();
    digits.parse().ok()
}

/// The newest `GLIBC_2.N` symbol version this binary asks for (read once from itself: the
/// names are in its dynamic string table, which the linker puts before the code, in the first
/// few megabytes).
fn needed_glibc() -> Option<u32> {
    static NEEDED: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *NEEDED.get_or_init(|| {
        let mut bytes = Vec::new();
        let file = std::fs::File::open(std::env::current_exe().ok()?).ok()?;
        std::io::Read::read_to_end(&mut std::io::Read::take(file, 8 << 20), &mut bytes).ok()?;
        let marker = b"GLIBC_2.";
        let mut best = None;
        let mut i = 0;
        while let Some(p) = bytes[i..].windows(marker.len()).position(|w| w == marker) {
            let at = i + p + marker.len();
            best = best.max(number_at(&bytes, at));
            i = at;
        }
        best
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_and_rust_names_of_an_architecture_compare_equal() {
        assert!(same_arch("x86_64", "x86_64"));
        assert!(same_arch("amd64", "x86_64"));
        assert!(same_arch("arm64", "aarch64"));
        assert!(!same_arch("aarch64", "x86_64"));
        assert!(same_arch("riscv64", "riscv64"));
    }

    /// bollard's default API version (1.53) is newer than Debian's engine (1.41): the client
    /// must negotiate down, or every call fails with "client version is too new".
    #[tokio::test]
    async fn the_api_version_is_negotiated_down_to_the_engines() {
        if std::env::var("CAPSTAN_TEST_IMAGE").is_err() {
            eprintln!("skipped: needs the Docker engine that scripts/test starts");
            return;
        }
        let backend = DockerBackend::new(Path::new("/tmp/capstan-version-test"));
        let docker = backend.engine(None).await.unwrap();
        let server = docker.version().await.unwrap();
        let server_api = server.api_version.unwrap();
        let parse = |v: &str| -> (u32, u32) {
            let (a, b) = v.split_once('.').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        };
        let client = docker.client_version();
        let client = (client.major_version as u32, client.minor_version as u32);
        assert!(
            client <= parse(&server_api),
            "client API {client:?} is newer than the engine's {server_api}"
        );
    }
}
