//! The `kubernetes` backend: each activity as a pod in the resolved namespace of the resolved
//! cluster (kubeconfig and context), through kube-rs.
//!
//! The pod's code comes in a ConfigMap and its data token in a Secret, both created right after
//! the pod and owned by it, so Kubernetes deletes them with it. capstan follows the pod to its
//! end (status and events, diagnosed in the user's words), streams its log into the activity's
//! log file, then deletes the pod, its ConfigMap and its Secret (without waiting for the garbage
//! collector) and waits until they are gone. A ResourceQuota refusal is retried
//! with backoff, and the job says it waits for quota. Transient API errors are retried too.

pub mod diagnose;
pub mod render;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use capstan_core::model::{ClusterTarget, ExecKind, Home};
use capstan_engine::backend::{
    ActivityControl, ActivityEvent, ActivityKey, ActivityOutcome, ActivitySpec, Backend,
    EngineListing, EngineWorkload, Resumed, Usage,
};
use futures_util::future::BoxFuture;
use futures_util::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::diagnose::{Assessment, assess, quota_wait};
use crate::render::{LABEL_ACTIVITY, LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_JOB};

/// How often a pod is looked at while it runs.
const POLL: Duration = Duration::from_millis(1000);
/// How long a deletion may take before capstan says the object is still there.
const DELETE_WAIT: Duration = Duration::from_secs(60);
/// Seconds Kubernetes gives a cancelled pod before killing it.
const GRACE_SECS: u32 = 2;

/// A cluster as a client sees it: (kubeconfig, context).
type ClusterKey = (Option<String>, Option<String>);

pub struct K8sBackend {
    instance: String,
    clients: tokio::sync::Mutex<HashMap<ClusterKey, Client>>,
    /// A client to use for every cluster (tests give a mock service).
    fixed: Option<Client>,
    /// How long to wait for a deleted object to be gone.
    delete_wait: Duration,
}

/// How the removal of an activity's objects went: how long it took until they were gone (or
/// capstan gave up waiting), and what is left, in words.
#[derive(Clone, Debug)]
pub struct Cleanup {
    pub took: Duration,
    pub result: Result<(), String>,
}

/// Reports why an activity waits, once per change: a quota refusal retried with backoff, or
/// a pod that stays pending, says so again only when the words change.
#[derive(Default)]
struct WaitReport {
    last: Option<String>,
}

impl WaitReport {
    fn report(&mut self, ctl: &ActivityControl, why: &str) {
        if self.last.as_deref() != Some(why) {
            ctl.report(ActivityEvent::Waiting(why.to_string()));
            self.last = Some(why.to_string());
        }
    }
}

/// The API's own words for an error.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Errors worth retrying: the API server or the network hiccuped, not the request was wrong.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

impl K8sBackend {
    pub fn new(home_root: &Path) -> K8sBackend {
        K8sBackend {
            instance: capstan_core::instance_id(home_root),
            clients: tokio::sync::Mutex::new(HashMap::new()),
            fixed: None,
            delete_wait: DELETE_WAIT,
        }
    }

    /// How long a deletion is waited for before it counts as failed (a minute unless told;
    /// tests make it short).
    pub fn with_delete_wait(self, wait: Duration) -> K8sBackend {
        K8sBackend {
            delete_wait: wait,
            ..self
        }
    }

    /// A backend that talks to `client` whatever the cluster (for testing the request logic
    /// against kube's test service).
    pub fn with_client(home_root: &Path, client: Client) -> K8sBackend {
        K8sBackend {
            fixed: Some(client),
            ..K8sBackend::new(home_root)
        }
    }

    /// A client for a kubeconfig (default: the usual search order) and context.
    pub async fn client(
        &self,
        kubeconfig: Option<&str>,
        context: Option<&str>,
    ) -> Result<Client, String> {
        if let Some(c) = &self.fixed {
            return Ok(c.clone());
        }
        let key = (kubeconfig.map(String::from), context.map(String::from));
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let options = KubeConfigOptions {
            context: context.map(String::from),
            cluster: None,
            user: None,
        };
        let where_ = format!(
            "kubeconfig {}{}",
            kubeconfig.unwrap_or("(default search order)"),
            context
                .map(|c| format!(", context {c}"))
                .unwrap_or_default()
        );
        let config = match (kubeconfig, context) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| format!("cannot read {where_}: {e}"))?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| format!("{where_}: {e}"))?
            }
            (None, Some(_)) => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| format!("{where_}: {e}"))?,
            (None, None) => Config::infer()
                .await
                .map_err(|e| format!("{where_}: {e}"))?,
        };
        let client = Client::try_from(config).map_err(|e| format!("{where_}: {e}"))?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The API server's version, as `Kubernetes MAJOR.MINOR (GIT_VERSION)`: whether the cluster
    /// answers, for `capstan cluster test`.
    pub async fn server_version(
        &self,
        kubeconfig: Option<&str>,
        context: Option<&str>,
    ) -> Result<String, String> {
        let client = self.client(kubeconfig, context).await?;
        let v = client
            .apiserver_version()
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "Kubernetes {}.{} ({})",
            v.major, v.minor, v.git_version
        ))
    }

    /// Whether namespace `ns` exists; an error where the API will not say (reading namespaces
    /// may be forbidden to a user who may use one).
    pub async fn namespace_exists(
        &self,
        kubeconfig: Option<&str>,
        context: Option<&str>,
        ns: &str,
    ) -> Result<bool, String> {
        let client = self.client(kubeconfig, context).await?;
        Api::<Namespace>::all(client)
            .get_opt(ns)
            .await
            .map(|n| n.is_some())
            .map_err(|e| api_message(&e))
    }

    async fn ensure_namespace(
        &self,
        client: &Client,
        spec: &ActivitySpec,
        ns: &str,
    ) -> Result<(), String> {
        let create = spec.exec.as_ref().is_some_and(|e| e.create_namespace);
        if !create {
            return Ok(());
        }
        let api: Api<Namespace> = Api::all(client.clone());
        if api
            .get_opt(ns)
            .await
            .map_err(|e| api_message(&e))?
            .is_some()
        {
            return Ok(());
        }
        let namespace = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(ns.to_string()),
                ..Default::default()
            },
            ..Namespace::default()
        };
        match api.create(&PostParams::default(), &namespace).await {
            Ok(_) => Ok(()),
            Err(e) if api_code(&e) == Some(409) => Ok(()),
            Err(e) => Err(format!("cannot create namespace {ns}: {}", api_message(&e))),
        }
    }

    async fn run_impl(&self, spec: &ActivitySpec, ctl: ActivityControl) -> ActivityOutcome {
        let (outcome, cleanup) = self.run_with_cleanup(spec, ctl).await;
        if let Some(Cleanup { result: Err(e), .. }) = cleanup {
            tracing::warn!(activity = spec.activity_id(), error = %e, "cleanup incomplete");
        }
        outcome
    }

    /// Runs an activity as [`Backend::run`] does, and says how the removal of its objects went
    /// (`None`: no object was created). The outcome is decided from the pod as it ended, before
    /// the removal: waiting for the pod to be gone never changes it.
    pub async fn run_with_cleanup(
        &self,
        spec: &ActivitySpec,
        ctl: ActivityControl,
    ) -> (ActivityOutcome, Option<Cleanup>) {
        let Some(ns) = spec.namespace.clone() else {
            return (
                ActivityOutcome::failed(format!(
                    "{} resolves to no namespace",
                    spec.config_phrase()
                )),
                None,
            );
        };
        let client = match self
            .client(spec.kubeconfig.as_deref(), spec.kube_context.as_deref())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                return (
                    ActivityOutcome::failed(format!("cannot reach the Kubernetes cluster: {e}")),
                    None,
                );
            }
        };
        if let Err(e) = self.ensure_namespace(&client, spec, &ns).await {
            return (ActivityOutcome::failed(e), None);
        }
        if let Err(e) = engine_is_current(spec) {
            return (ActivityOutcome::failed(e), None);
        }
        let rendered = match render::render(spec, &self.instance, &ns) {
            Ok(r) => r,
            Err(e) => return (ActivityOutcome::failed(e), None),
        };
        ctl.report(ActivityEvent::Starting);
        if let Some(claim) = &rendered.claim {
            // A kernel's notebook volume: made once, then found again by every later kernel of
            // its user in the project (it is never deleted with a pod).
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            match claims.create(&PostParams::default(), claim).await {
                Ok(_) => {}
                Err(e) if api_code(&e) == Some(409) => {}
                Err(e) => {
                    return (
                        ActivityOutcome::failed(format!(
                            "cannot create the notebook volume {} in namespace {ns}: {}",
                            claim.metadata.name.as_deref().unwrap_or_default(),
                            api_message(&e)
                        )),
                        None,
                    );
                }
            }
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pending_limit = pending_limit(spec);
        let started = Instant::now();
        let mut backoff = Duration::from_secs(1);
        let mut waits = WaitReport::default();
        let pod = loop {
            // A cancel during preparation: no pod is created after it.
            if ctl.cancel.is_cancelled() {
                return (ActivityOutcome::cancelled(), None);
            }
            match pods.create(&PostParams::default(), &rendered.pod).await {
                Ok(p) => break p,
                Err(e) => {
                    let message = api_message(&e);
                    let waiting = if api_code(&e) == Some(403) {
                        quota_wait(&ns, &message)
                    } else {
                        None
                    };
                    if waiting.is_none() && !transient(&e) {
                        return (
                            ActivityOutcome::failed(format!(
                                "the cluster refused the pod in namespace {ns}: {message}"
                            )),
                            None,
                        );
                    }
                    if let Some(w) = waiting {
                        waits.report(&ctl, &w);
                    }
                    if pending_limit.is_some_and(|l| started.elapsed() > l) {
                        return (
                            ActivityOutcome::failed(format!(
                                "never started: still refused after the pending timeout ({message})"
                            )),
                            None,
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = ctl.cancel.cancelled() => return (ActivityOutcome::cancelled(), None),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        ctl.report(ActivityEvent::Started {
            backend_ref: format!("{ns}|{name}"),
        });
        // The code and the token, owned by the pod so that they go with it.
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: name.clone(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ..OwnerReference::default()
        };
        let mut code = rendered.code.clone();
        code.metadata.owner_references = Some(vec![owner.clone()]);
        let mut secret = rendered.secret.clone();
        secret.metadata.owner_references = Some(vec![owner]);
        let made = async {
            Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &code)
                .await?;
            Api::<Secret>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &secret)
                .await?;
            Ok::<(), kube::Error>(())
        }
        .await;
        if let Err(e) = made {
            let cleanup = self.cleanup(&client, spec, &ns, &name).await;
            return (
                ActivityOutcome::failed(format!(
                    "cannot create the pod's code and token in {ns}: {}",
                    api_message(&e)
                )),
                Some(cleanup),
            );
        }
        let (outcome, cleanup) = self
            .follow(&client, spec, &ns, &name, &ctl, false, waits)
            .await;
        (outcome, Some(cleanup))
    }

    /// Follows a pod to its end, keeps its log and events, deletes it. The outcome is decided
    /// before the deletion, from the pod as it ended.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        client: &Client,
        spec: &ActivitySpec,
        ns: &str,
        name: &str,
        ctl: &ActivityControl,
        rewrite_log: bool,
        mut waits: WaitReport,
    ) -> (ActivityOutcome, Cleanup) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let events: Api<Event> = Api::namespaced(client.clone(), ns);
        let pending_limit = pending_limit(spec);
        let started = Instant::now();
        let mut logs: Option<tokio::task::JoinHandle<Vec<String>>> = None;
        let mut api_errors = 0;
        let outcome = loop {
            let pod = match pods.get_opt(name).await {
                Ok(Some(p)) => p,
                Ok(None) => {
                    break ActivityOutcome::failed(format!(
                        "pod {ns}/{name} disappeared (deleted outside capstan?)"
                    ));
                }
                Err(e) if transient(&e) && api_errors < 30 => {
                    api_errors += 1;
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Err(e) => {
                    break ActivityOutcome::failed(format!(
                        "cannot follow pod {ns}/{name}: {}",
                        api_message(&e)
                    ));
                }
            };
            api_errors = 0;
            // Only this pod's events: an earlier pod of the same name left its own (another uid).
            let about = match pod.metadata.uid.as_deref() {
                Some(uid) => format!("involvedObject.name={name},involvedObject.uid={uid}"),
                None => format!("involvedObject.name={name}"),
            };
            let evs = events
                .list(&ListParams::default().fields(&about))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            let stderr_tail: Vec<String> = Vec::new();
            match assess(spec, &pod, &evs, &stderr_tail) {
                Assessment::Waiting(why) => {
                    waits.report(ctl, &why);
                    if pending_limit.is_some_and(|l| started.elapsed() > l) {
                        break ActivityOutcome::failed(format!(
                            "never started within the pending timeout: {why}"
                        ));
                    }
                }
                Assessment::Running => {
                    if logs.is_none() {
                        ctl.report(ActivityEvent::Running);
                        logs = Some(tokio::spawn(stream_logs(
                            pods.clone(),
                            name.to_string(),
                            spec.log_path(),
                            rewrite_log,
                        )));
                    }
                }
                Assessment::Done(mut o) => {
                    if logs.is_none() {
                        logs = Some(tokio::spawn(stream_logs(
                            pods.clone(),
                            name.to_string(),
                            spec.log_path(),
                            rewrite_log,
                        )));
                    }
                    let tail = match logs.take() {
                        Some(h) => tokio::time::timeout(Duration::from_secs(30), h)
                            .await
                            .ok()
                            .and_then(|r| r.ok())
                            .unwrap_or_default(),
                        None => Vec::new(),
                    };
                    // With the log read, a failure can quote the recipe's own error.
                    if o.state == capstan_core::job::JobState::Failed
                        && let Assessment::Done(better) = assess(spec, &pod, &evs, &tail)
                    {
                        o = better;
                    }
                    capstan_spark::refine(spec, &mut o);
                    if spec.recipe_kind.is_spark() {
                        // Before the driver pod goes, and its executors with it.
                        let killed = self.save_executor_logs(&pods, spec).await;
                        // Executors that never reached their driver explain a failure whose
                        // driver log says only that it lost them.
                        if o.state == capstan_core::job::JobState::Failed
                            && killed.is_empty()
                            && let Some(cause) =
                                capstan_spark::executor_trouble(&executor_logs(spec))
                        {
                            o.diagnosis = Some(match o.diagnosis.take() {
                                Some(d) if !d.starts_with("Spark executors could not") => {
                                    format!("{cause} ({d})")
                                }
                                _ => cause,
                            });
                        }
                        if o.state == capstan_core::job::JobState::Failed && !killed.is_empty() {
                            let oom = format!(
                                "Spark executor pods were killed for exceeding their memory limit (OOMKilled: {}): raise \
                                 executor_memory_overhead (memory outside the JVM heap, where Python workers run) or \
                                 executor_memory of {}",
                                killed.join(", "),
                                spec.spark.as_ref().map_or(
                                    "the Spark configuration".into(),
                                    |s| format!("Spark configuration '{}'", s.name)
                                )
                            );
                            // It replaces a vaguer account of lost executors, and comes before
                            // the recipe's last words (usually Spark giving up on the tasks the
                            // executors lost); the driver's own lack of memory is another cause.
                            o.diagnosis = Some(match o.diagnosis.take() {
                                None => oom,
                                Some(d)
                                    if d.starts_with("Spark executors were killed")
                                        || d.starts_with("Spark lost executors") =>
                                {
                                    oom
                                }
                                Some(d) if d.starts_with("Spark ran out of memory") => {
                                    format!("{d}; also, s{}", &oom[1..])
                                }
                                Some(d) => format!("{oom} ({d})"),
                            });
                        }
                    }
                    save_events(spec, &pod, &evs);
                    break o;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                // Deleted at once, before the log is waited for (its stream ends with the
                // pod); the cleanup below then finds it gone, and removes the rest.
                _ = ctl.cancel.cancelled() => {
                    let _ = self.delete(&pods, name).await;
                    break ActivityOutcome::cancelled();
                }
            }
        };
        if let Some(h) = logs {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
        // Logs and state are saved: nothing of the activity stays in the cluster.
        let cleanup = self.cleanup(client, spec, ns, name).await;
        (outcome, cleanup)
    }

    /// Removes everything of an activity's attempt from the cluster and waits until it is
    /// gone: its pod, a Spark driver's executors, and the ConfigMap and Secret (owned by the
    /// pod, but the garbage collector takes its time; the token should not outlive the pod).
    async fn cleanup(&self, client: &Client, spec: &ActivitySpec, ns: &str, name: &str) -> Cleanup {
        let t = Instant::now();
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let mut left = Vec::new();
        left.extend(self.delete(&pods, name).await.err());
        if spec.recipe_kind.is_spark() {
            left.extend(self.delete_executors(&pods, spec).await.err());
        }
        let plain = DeleteParams::background();
        let code: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        left.extend(
            delete_and_wait(&code, "configmap", ns, name, &plain, self.delete_wait)
                .await
                .err(),
        );
        let token: Api<Secret> = Api::namespaced(client.clone(), ns);
        left.extend(
            delete_and_wait(&token, "secret", ns, name, &plain, self.delete_wait)
                .await
                .err(),
        );
        Cleanup {
            took: t.elapsed(),
            result: if left.is_empty() {
                Ok(())
            } else {
                Err(left.join("; "))
            },
        }
    }

    /// The pods of an activity's attempt: its own, and a Spark driver's executors.
    fn attempt_pods(&self, spec: &ActivitySpec) -> ListParams {
        ListParams::default().labels(&format!(
            "{LABEL_INSTANCE}={},{LABEL_ACTIVITY}={},{LABEL_ATTEMPT}={}",
            self.instance,
            spec.activity_id(),
            spec.attempt
        ))
    }

    /// Keeps the logs of a Spark application's executors next to the driver's, as
    /// `executors/POD.log` (Spark leaves their pods to capstan, which deletes them after), and
    /// says which of them the kernel killed for their memory.
    async fn save_executor_logs(&self, pods: &Api<Pod>, spec: &ActivitySpec) -> Vec<String> {
        let Ok(list) = pods.list(&self.attempt_pods(spec)).await else {
            return Vec::new();
        };
        let dir = spec.dir.join("executors");
        let mut killed = Vec::new();
        // Bounded, so that a node that does not answer cannot hold the job's end: the logs are
        // worth a minute, 15 s each, and each at most 10 MiB.
        let deadline = Instant::now() + Duration::from_secs(60);
        for p in list.items.iter().filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("spark-role"))
                .is_some_and(|r| r == "executor")
        }) {
            let name = p.metadata.name.clone().unwrap_or_default();
            let params = LogParams {
                timestamps: true,
                limit_bytes: Some(10 << 20),
                ..LogParams::default()
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let path = dir.join(format!("{name}.log"));
            // Streamed to its file line by line: what came before a timeout is kept.
            let copy = async {
                let stream = pods
                    .log_stream(&name, &params)
                    .await
                    .map_err(|e| e.to_string())?;
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let mut file = std::io::BufWriter::new(
                    std::fs::File::create(&path).map_err(|e| e.to_string())?,
                );
                let mut lines = stream.lines();
                while let Some(line) = lines.next().await {
                    let line = line.map_err(|e| e.to_string())?;
                    writeln!(file, "{line}").map_err(|e| e.to_string())?;
                }
                file.flush().map_err(|e| e.to_string())
            };
            match tokio::time::timeout(left.min(Duration::from_secs(15)), copy).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(pod = name, error = %e, "cannot read an executor's log")
                }
                Err(_) => tracing::warn!(pod = name, "an executor's log did not come in time"),
            }
            let oom = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .flat_map(|c| [c.state.as_ref(), c.last_state.as_ref()])
                .flatten()
                .filter_map(|s| s.terminated.as_ref())
                .any(|t| t.reason.as_deref() == Some("OOMKilled"));
            if oom {
                killed.push(name);
            }
        }
        killed
    }

    /// Deletes what is left of a Spark application's executors (they are owned by the driver
    /// pod, but the garbage collector takes its time) and waits until they are gone.
    async fn delete_executors(&self, pods: &Api<Pod>, spec: &ActivitySpec) -> Result<(), String> {
        let selector = self.attempt_pods(spec);
        let params = DeleteParams {
            grace_period_seconds: Some(GRACE_SECS),
            ..DeleteParams::background()
        };
        let refused = pods
            .delete_collection(&params, &selector)
            .await
            .err()
            .map(|e| api_message(&e));
        let deadline = Instant::now() + self.delete_wait;
        loop {
            match pods.list(&selector).await {
                Ok(l) if l.items.is_empty() => return Ok(()),
                _ if Instant::now() >= deadline => break,
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        let e = format!(
            "Spark executors of activity {} are still there {} after their deletion{}",
            spec.activity_id(),
            in_words(self.delete_wait),
            refused.map(|r| format!(" ({r})")).unwrap_or_default()
        );
        tracing::warn!("{e}");
        Err(e)
    }

    /// Deletes a pod and waits until it is gone.
    async fn delete(&self, pods: &Api<Pod>, name: &str) -> Result<(), String> {
        let params = DeleteParams {
            grace_period_seconds: Some(GRACE_SECS),
            ..DeleteParams::background()
        };
        let ns = pods.namespace().unwrap_or_default().to_string();
        let r = delete_and_wait(pods, "pod", &ns, name, &params, self.delete_wait).await;
        if let Err(e) = &r {
            tracing::warn!("{e}");
        }
        r
    }

    async fn resume_impl(
        &self,
        spec: &ActivitySpec,
        backend_ref: Option<&str>,
        ctl: ActivityControl,
    ) -> Resumed {
        let client = match self
            .client(spec.kubeconfig.as_deref(), spec.kube_context.as_deref())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                return Resumed::Finished(ActivityOutcome::failed(format!(
                    "cannot re-attach after a restart: {e}"
                )));
            }
        };
        let (ns, name) = match backend_ref.and_then(|r| r.split_once('|')) {
            Some((ns, name)) => (ns.to_string(), Some(name.to_string())),
            None => match &spec.namespace {
                Some(ns) => (ns.clone(), None),
                None => return Resumed::NeverStarted,
            },
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // The activity's own pod, not the executors a Spark driver started (they carry its
        // labels too).
        let own = render::object_name(spec, &self.instance);
        let found = match pods.list(&self.attempt_pods(spec)).await {
            Ok(l) => l
                .items
                .into_iter()
                .find(|p| p.metadata.name.as_deref() == Some(own.as_str())),
            Err(e) => {
                return Resumed::Finished(ActivityOutcome::failed(format!(
                    "cannot look for the job's pod after a restart: {}",
                    api_message(&e)
                )));
            }
        };
        match (found, name) {
            (Some(pod), _) => {
                let name = pod.metadata.name.unwrap_or_default();
                // The engine kept the whole log while the daemon was down: read it again.
                let waits = WaitReport::default();
                let (outcome, cleanup) = self
                    .follow(&client, spec, &ns, &name, &ctl, true, waits)
                    .await;
                if let Err(e) = cleanup.result {
                    tracing::warn!(activity = spec.activity_id(), error = %e, "cleanup incomplete");
                }
                Resumed::Finished(outcome)
            }
            (None, Some(name)) => Resumed::Finished(ActivityOutcome::failed(format!(
                "its pod {ns}/{name} disappeared while the daemon was down (deleted outside capstan?)"
            ))),
            (None, None) => Resumed::NeverStarted,
        }
    }

    /// The namespaces this instance can have pods in, `(kubeconfig, context, namespace)`.
    fn namespaces(home: &Home) -> Vec<(Option<String>, Option<String>, String)> {
        // The namespaces this instance can name without a user (variables need one).
        let mut targets: Vec<(Option<String>, Option<String>, String)> = Vec::new();
        for c in home
            .exec_configs
            .values()
            .filter(|c| c.kind.value == ExecKind::Kubernetes)
        {
            if let Some(ns) = c.namespace.as_ref().filter(|n| !n.value.contains("${")) {
                targets.push((
                    None,
                    c.context.as_ref().map(|x| x.value.clone()),
                    ns.value.clone(),
                ));
            }
        }
        // Spark configurations name their namespace, in the resolved cluster's context.
        for s in home
            .spark_configs
            .values()
            .filter(|s| s.master.value == capstan_core::model::SparkMaster::Kubernetes)
        {
            if let Some(ns) = s.namespace.as_ref().filter(|n| !n.value.contains("${")) {
                // The kubeconfig's current context, and every cluster's.
                targets.push((None, None, ns.value.clone()));
                for c in home.clusters.values() {
                    if let ClusterTarget::Kubernetes {
                        kubeconfig,
                        context,
                        ..
                    } = &c.target
                    {
                        targets.push((
                            kubeconfig.as_ref().map(|k| k.value.clone()),
                            context.as_ref().map(|x| x.value.clone()),
                            ns.value.clone(),
                        ));
                    }
                }
            }
        }
        for c in home.clusters.values() {
            if let ClusterTarget::Kubernetes {
                kubeconfig,
                context,
                namespace: Some(ns),
            } = &c.target
            {
                targets.push((
                    kubeconfig.as_ref().map(|k| k.value.clone()),
                    context.as_ref().map(|x| x.value.clone()),
                    ns.value.clone(),
                ));
            }
        }
        targets.sort();
        targets.dedup();
        targets
    }

    async fn sweep_impl(&self, home: &Home, active: &[ActivityKey]) -> Vec<String> {
        let mut removed = Vec::new();
        for (kubeconfig, context, ns) in Self::namespaces(home) {
            // A cluster that cannot be reached now is swept at the next start.
            let Ok(client) = self.client(kubeconfig.as_deref(), context.as_deref()).await else {
                continue;
            };
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            let Ok(list) = pods.list(&self.instance_pods()).await else {
                continue;
            };
            for p in list.items {
                let key = key_of(p.metadata.labels.as_ref());
                if key.is_some_and(|k| active.contains(&k)) {
                    continue;
                }
                let name = p.metadata.name.unwrap_or_default();
                // A pod still there is swept again at the next start.
                if self.delete(&pods, &name).await.is_ok() {
                    removed.push(format!("pod {ns}/{name}"));
                }
            }
        }
        removed
    }

    fn instance_pods(&self) -> ListParams {
        ListParams::default().labels(&format!("{LABEL_INSTANCE}={}", self.instance))
    }

    async fn workloads_impl(&self, home: &Home) -> Vec<EngineListing> {
        let mut out = Vec::new();
        for (kubeconfig, context, ns) in Self::namespaces(home) {
            let engine = match (&context, &kubeconfig) {
                (Some(c), None) => format!("namespace {ns} of context {c}"),
                (None, None) => format!("namespace {ns} (the kubeconfig's current context)"),
                (Some(c), Some(k)) => format!("namespace {ns} of context {c} in {k}"),
                (None, Some(k)) => format!("namespace {ns} (the current context of {k})"),
            };
            let listed = match self.client(kubeconfig.as_deref(), context.as_deref()).await {
                Ok(client) => match Api::<Pod>::namespaced(client.clone(), &ns)
                    .list(&self.instance_pods())
                    .await
                {
                    Ok(list) => Ok((list, self.pod_usage(client, &ns).await)),
                    Err(e) => Err(api_message(&e)),
                },
                Err(e) => Err(e),
            };
            match listed {
                Ok((list, usage)) => out.push(EngineListing {
                    engine,
                    error: None,
                    workloads: list
                        .items
                        .iter()
                        .map(|p| {
                            let handle = [
                                kubeconfig.as_deref().unwrap_or(""),
                                context.as_deref().unwrap_or(""),
                                &ns,
                            ]
                            .join("\n");
                            let mut w = pod_workload(handle, p);
                            w.usage = usage.get(&w.name).copied();
                            w
                        })
                        .collect(),
                }),
                Err(error) => out.push(EngineListing {
                    engine,
                    error: Some(error),
                    workloads: Vec::new(),
                }),
            }
        }
        out
    }

    /// Live usage of this instance's pods in `ns`, by pod name, from the cluster's metrics API
    /// (metrics-server): nothing where the cluster serves none.
    async fn pod_usage(&self, client: Client, ns: &str) -> HashMap<String, Usage> {
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client, ns, &pod_metrics());
        match api.list(&self.instance_pods()).await {
            Ok(list) => list
                .items
                .iter()
                .filter_map(|m| Some((m.metadata.name.clone()?, pod_metrics_usage(&m.data))))
                .collect(),
            Err(e) => {
                tracing::debug!(namespace = ns, error = %api_message(&e), "no pod metrics");
                HashMap::new()
            }
        }
    }

    async fn remove_workload_impl(&self, w: &EngineWorkload) -> Result<(), String> {
        let mut parts = w.handle.split('\n');
        let (Some(kubeconfig), Some(context), Some(ns)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("`{}` is not a Kubernetes workload", w.handle));
        };
        let some = |x: &str| (!x.is_empty()).then(|| x.to_string());
        let client = self
            .client(some(kubeconfig).as_deref(), some(context).as_deref())
            .await?;
        let pods: Api<Pod> = Api::namespaced(client, ns);
        self.delete(&pods, &w.name).await
    }
}

/// The activity a pod of this instance runs, from its labels.
fn key_of(labels: Option<&std::collections::BTreeMap<String, String>>) -> Option<ActivityKey> {
    let labels = labels?;
    ActivityKey::from_labels(
        |k| labels.get(k).map(String::as_str),
        [LABEL_JOB, LABEL_ACTIVITY, LABEL_ATTEMPT],
    )
}

#[derive(Clone, Copy)]
enum Side {
    Requests,
    Limits,
}

/// A resource (`cpu` in cores, `memory` in bytes) requested or limited by a pod's containers,
/// added up; `None` when none of them says.
fn sum_resources(p: &Pod, side: Side, resource: &str) -> Option<f64> {
    let mut sum = None;
    for c in p.spec.iter().flat_map(|s| &s.containers) {
        let Some(r) = c.resources.as_ref() else {
            continue;
        };
        let map = match side {
            Side::Requests => r.requests.as_ref(),
            Side::Limits => r.limits.as_ref(),
        };
        let Some(q) = map.and_then(|m| m.get(resource)) else {
            continue;
        };
        // Cores, or bytes: whatever the unit, a quantity is a number of nano-units.
        let value = capstan_core::quantity::Quantity::parse(&q.0)
            .ok()
            .map(|q| q.nanos() as f64 / 1e9);
        if let Some(v) = value {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// The metrics API's pods (metrics-server's `PodMetrics`).
fn pod_metrics() -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    }
}

/// A pod's usage from its `PodMetrics` (`containers[].usage.cpu` in cores, usually
/// nanocores as `12345678n`, and `.memory`), added up over its containers.
fn pod_metrics_usage(data: &serde_json::Value) -> Usage {
    let quantity = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| capstan_core::quantity::Quantity::parse(t).ok())
            .map(|q| q.nanos() as f64 / 1e9)
    };
    let (mut cpu, mut memory) = (None::<f64>, None::<f64>);
    for c in data["containers"].as_array().into_iter().flatten() {
        if let Some(x) = quantity(&c["usage"]["cpu"]) {
            *cpu.get_or_insert(0.0) += x;
        }
        if let Some(x) = quantity(&c["usage"]["memory"]) {
            *memory.get_or_insert(0.0) += x;
        }
    }
    Usage {
        cpu_percent: cpu.map(|c| c * 100.0),
        memory_bytes: memory.map(|m| m as u64),
    }
}

/// A pod as the monitoring page shows it: its phase (or why it waits), and its containers'
/// requests and limits added up; its live usage comes from the metrics API, where there is one.
pub fn pod_workload(handle: String, p: &Pod) -> EngineWorkload {
    let labels = p.metadata.labels.as_ref();
    let cpu_request = sum_resources(p, Side::Requests, "cpu");
    let cpu_limit = sum_resources(p, Side::Limits, "cpu");
    let memory_request = sum_resources(p, Side::Requests, "memory").map(|b| b as u64);
    let memory_limit = sum_resources(p, Side::Limits, "memory").map(|b| b as u64);
    let status = p.status.as_ref();
    // A waiting container's reason says more than the pod's phase (ImagePullBackOff).
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let state = waiting
        .or_else(|| status.and_then(|s| s.phase.clone()))
        .unwrap_or_else(|| "Unknown".into());
    EngineWorkload {
        handle,
        name: p.metadata.name.clone().unwrap_or_default(),
        key: key_of(labels),
        job_id: labels
            .and_then(|l| l.get(LABEL_JOB))
            .and_then(|v| v.parse().ok()),
        state,
        cpu_request,
        cpu_limit,
        memory_request,
        memory_limit,
        usage: None,
    }
}

/// Deletes object `name` (a `kind` in `ns`) and waits until the API no longer has it; an error
/// names what is left, and why when the API refused the deletion.
async fn delete_and_wait<K>(
    api: &Api<K>,
    kind: &str,
    ns: &str,
    name: &str,
    params: &DeleteParams,
    wait: Duration,
) -> Result<(), String>
where
    K: Clone + std::fmt::Debug + k8s_openapi::serde::de::DeserializeOwned,
{
    let refused = match api.delete(name, params).await {
        Ok(_) => None,
        Err(e) if api_code(&e) == Some(404) => return Ok(()),
        Err(e) => Some(api_message(&e)),
    };
    let deadline = Instant::now() + wait;
    let mut last_error = None;
    loop {
        match api.get_opt(name).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => {}
            Err(e) => last_error = Some(api_message(&e)),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let why = refused
        .map(|r| format!(": the API refused its deletion ({r})"))
        .or_else(|| last_error.map(|e| format!(" (cannot look it up: {e})")))
        .unwrap_or_default();
    Err(format!(
        "{kind} {ns}/{name} is still there {} after its deletion{why}",
        in_words(wait)
    ))
}

/// A wait in words: whole seconds, or milliseconds under one.
fn in_words(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs())
    }
}

/// How long the pod may wait to be scheduled: its execution configuration's `pending_timeout`,
/// or a Spark driver's Spark configuration's.
fn pending_limit(spec: &ActivitySpec) -> Option<Duration> {
    spec.exec
        .as_ref()
        .and_then(|e| e.pending_timeout.as_ref())
        .or_else(|| spec.spark.as_ref().and_then(|s| s.pending_timeout.as_ref()))
        .map(|t| Duration::from_secs(t.value.secs()))
}

/// Streams the pod's log into the activity's log file; returns its last lines.
async fn stream_logs(
    pods: Api<Pod>,
    name: String,
    path: std::path::PathBuf,
    rewrite: bool,
) -> Vec<String> {
    let params = LogParams {
        container: Some("recipe".into()),
        follow: true,
        timestamps: true,
        ..LogParams::default()
    };
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!rewrite)
        .truncate(rewrite)
        .open(&path)
    else {
        return Vec::new();
    };
    let mut file = std::io::BufWriter::new(file);
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let Ok(reader) = pods.log_stream(&name, &params).await else {
        return Vec::new();
    };
    let mut lines = reader.lines();
    while let Some(Ok(line)) = lines.next().await {
        // Kubernetes merges stdout and stderr; the timestamp comes first.
        let (stamp, text) = line.split_once(' ').unwrap_or(("", line.as_str()));
        let _ = writeln!(file, "{stamp} o {text}");
        let _ = file.flush();
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(text.to_string());
    }
    tail.into_iter().collect()
}

/// The pod's final status and last events, next to its log.
fn save_events(spec: &ActivitySpec, pod: &Pod, events: &[Event]) {
    let record = serde_json::json!({"status": pod.status, "events": events});
    let _ = std::fs::write(
        spec.dir.join("pod.json"),
        serde_json::to_vec_pretty(&record).unwrap_or_default(),
    );
}

impl Backend for K8sBackend {
    fn kind(&self) -> ExecKind {
        ExecKind::Kubernetes
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
        // From the metrics API, which not every cluster serves (then: none).
        Box::pin(async move {
            let ns = spec.namespace.as_deref()?;
            let client = self
                .client(spec.kubeconfig.as_deref(), spec.kube_context.as_deref())
                .await
                .ok()?;
            let api: Api<kube::api::DynamicObject> =
                Api::namespaced_with(client, ns, &pod_metrics());
            let m = api
                .get_opt(&render::object_name(spec, &self.instance))
                .await
                .ok()??;
            Some(pod_metrics_usage(&m.data))
        })
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

// The versions of the Kubernetes crates in this crate's API, so callers never mismatch them.
pub use k8s_openapi;
pub use kube;

/// The executors' logs `save_executor_logs` kept, `(pod, text)`, in name order.
fn executor_logs(spec: &ActivitySpec) -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(spec.dir.join("executors")) else {
        return Vec::new();
    };
    let mut logs: Vec<(String, String)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e
                .file_name()
                .to_string_lossy()
                .strip_suffix(".log")?
                .to_string();
            Some((name, std::fs::read_to_string(e.path()).ok()?))
        })
        .collect();
    logs.sort();
    logs
}

/// A visual recipe's pod must copy the daemon's own engine: an engine image built by an
/// earlier binary would run other code than `capstan check` and `recipe explain` planned.
fn engine_is_current(spec: &ActivitySpec) -> Result<(), String> {
    let Some(image) = &spec.engine_image else {
        return Ok(());
    };
    let tag = capstan_engine::engine_image::tag()?;
    if image.ends_with(&format!(":{tag}")) {
        return Ok(());
    }
    Err(format!(
        "the engine image {image} was built by another capstan binary than this daemon's ({tag}): run `capstan image build-engine`"
    ))
}
