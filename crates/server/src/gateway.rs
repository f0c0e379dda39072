//! The daemon as a Jupyter gateway: the part of the Kernel Gateway API that Jupyter Server's
//! `GatewayClient` uses (`jupyter lab --gateway-url http://HOST:PORT
//! --GatewayClient.auth_token=TOKEN`, the token a user's capstan token).
//!
//! - `GET /api/kernelspecs[/{name}]`: what the caller may start: for each project they may run
//!   in, each code environment with `with_jupyter` × each execution configuration that resolves
//!   for them (`kernel_resolution`), named `PROJECT.ENV.CONFIG` and shown as "PROJECT · ENV ·
//!   CONFIG".
//! - `GET|POST /api/kernels`, `GET|DELETE /api/kernels/{id}`, `POST …/interrupt`, `…/restart`.
//! - `GET /api/kernels/{id}/channels`: the client's WebSocket, in Jupyter Server's JSON framing.
//! - `GET /api/v1/kernels/{id}/agent`: the WebSocket the kernel's agent dials, with its
//!   activity's token.
//!
//! A kernel is an activity (`capstan_engine::kernel`); the gateway only relays frames between
//! its clients and its agent, and keeps what the kernel model shows (execution state, last
//! activity, connections). These routes are Jupyter's API, not capstan's: they are not in
//! `openapi.json`, and their errors carry Jupyter's `reason` and `message`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use capstan_core::job::JobState;
use capstan_core::model::Home;
use capstan_core::resolve::ResolveError;
use capstan_engine::Caller;
use capstan_engine::kernel::{KernelRequest, kernel_resolution};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::data_api::Principal;
use crate::{ApiError, ApiPath, AppState, Auth};

/// How long a start may take, image pull and queueing included, before it is given up (and
/// its activity cancelled): one deadline, not three.
const START_DEADLINE: Duration = Duration::from_secs(600);
/// How long the agent may take to interrupt or restart its kernel.
const CONTROL_DEADLINE: Duration = Duration::from_secs(60);

/// The gateway's routes (merged into the daemon's router beside the REST API's).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/kernelspecs", get(list_specs))
        .route("/api/kernelspecs/{name}", get(show_spec))
        .route("/api/kernels", get(list_kernels).post(start_kernel))
        .route("/api/kernels/{id}", get(show_kernel).delete(delete_kernel))
        .route("/api/kernels/{id}/interrupt", post(interrupt_kernel))
        .route("/api/kernels/{id}/restart", post(restart_kernel))
        .route("/api/kernels/{id}/channels", get(client_channels))
        .route("/api/v1/kernels/{id}/agent", get(agent_channel))
}

/// How often idle kernels are looked for.
const CULL_EVERY: Duration = Duration::from_secs(1);

/// The kernels this daemon relays, by id.
#[derive(Default)]
pub struct Kernels {
    map: Mutex<HashMap<String, Arc<Kernel>>>,
    culling: std::sync::atomic::AtomicBool,
}

struct Kernel {
    id: String,
    spec: String,
    job: i64,
    user: String,
    /// Its configuration's `idle_timeout`.
    idle_timeout: Duration,
    state: Mutex<Live>,
    /// The agent's Jupyter messages, to every connected client.
    to_clients: broadcast::Sender<Arc<str>>,
    /// The agent's own answers (`ready`, `interrupted`, `restarted`).
    control: broadcast::Sender<String>,
    /// Whether an agent is connected now.
    connected: watch::Sender<bool>,
}

struct Live {
    execution_state: String,
    last_activity: SystemTime,
    connections: u32,
    to_agent: Option<mpsc::UnboundedSender<String>>,
}

impl Kernels {
    fn get(&self, id: &str) -> Option<Arc<Kernel>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Registers `kernel`, and starts the culler with the first.
    fn insert(&self, s: &AppState, kernel: Arc<Kernel>) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kernel.id.clone(), kernel);
        if !self.culling.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tokio::spawn(cull(s.clone()));
        }
    }

    fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

impl Kernel {
    fn new(
        id: String,
        spec: String,
        job: i64,
        user: String,
        idle_timeout: Duration,
        execution_state: &str,
    ) -> Arc<Kernel> {
        Arc::new(Kernel {
            id,
            spec,
            job,
            user,
            idle_timeout,
            state: Mutex::new(Live {
                execution_state: execution_state.into(),
                last_activity: SystemTime::now(),
                connections: 0,
                to_agent: None,
            }),
            to_clients: broadcast::channel(1024).0,
            control: broadcast::channel(16).0,
            connected: watch::channel(false).0,
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kernel model of Jupyter's API (`last_activity` in the exact form Jupyter Server
    /// parses), with the job it is; while no agent is connected, its `reason` says what the
    /// job is doing (queued, pulling its image, starting…).
    fn model(&self, s: &AppState) -> Value {
        let mut model = {
            let live = self.live();
            json!({
                "id": self.id,
                "name": self.spec,
                "last_activity": jupyter_time(live.last_activity),
                "execution_state": live.execution_state,
                "connections": live.connections,
                "job_id": self.job,
            })
        };
        if !*self.connected.borrow()
            && let Ok(job) = s.engine.job(&system(), self.job)
        {
            model["reason"] = json!(format!(
                "job {} is {}{}",
                job.id,
                job.state,
                job.diagnosis.map(|d| format!(": {d}")).unwrap_or_default()
            ));
        }
        model
    }

    fn send_to_agent(&self, text: String) -> bool {
        self.live()
            .to_agent
            .as_ref()
            .is_some_and(|tx| tx.send(text).is_ok())
    }

    /// Asks the agent for `what` and waits for its `answer`.
    async fn ask(&self, what: &str, answer: &str) -> Result<(), Gateway> {
        let mut answers = self.control.subscribe();
        if !self.send_to_agent(json!({ "capstan": what }).to_string()) {
            return Err(Gateway::unavailable(format!(
                "kernel {} has no agent connected right now (it is starting, or reconnecting)",
                self.id
            )));
        }
        let wait = async {
            loop {
                match answers.recv().await {
                    Ok(a) if a == answer => return true,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return false,
                }
            }
        };
        match tokio::time::timeout(CONTROL_DEADLINE, wait).await {
            Ok(true) => Ok(()),
            _ => Err(Gateway::unavailable(format!(
                "kernel {} did not {what} within {} s",
                self.id,
                CONTROL_DEADLINE.as_secs()
            ))),
        }
    }
}

/// The `idle_timeout` of execution configuration `config`.
fn idle_timeout(home: &Home, config: &str) -> Duration {
    let d = home
        .exec_configs
        .get(config)
        .and_then(|c| c.idle_timeout.as_ref())
        .map_or(capstan_core::model::DEFAULT_KERNEL_IDLE_TIMEOUT, |t| {
            t.value
        });
    Duration::from_secs(d.secs())
}

/// Culls kernels idle for longer than their configuration's `idle_timeout`: connected to their
/// agent, not busy, no client connected, and no message either way for that long. Their
/// activity is cancelled (so the job says who ended it and why), which stops the kernel and
/// removes its container or pod.
async fn cull(s: AppState) {
    let mut tick = tokio::time::interval(CULL_EVERY);
    loop {
        tick.tick().await;
        let idle: Vec<Arc<Kernel>> = {
            let map = s.kernels.map.lock().unwrap_or_else(|e| e.into_inner());
            map.values()
                .filter(|k| {
                    let live = k.live();
                    *k.connected.borrow()
                        && live.connections == 0
                        && live.execution_state != "busy"
                        && live.last_activity.elapsed().unwrap_or_default() > k.idle_timeout
                })
                .cloned()
                .collect()
        };
        for k in idle {
            let culler = Caller {
                name: format!(
                    "the idle culler (no execution and no client for {})",
                    capstan_core::quantity::Duration::from_secs(k.idle_timeout.as_secs())
                ),
                admin: true,
                in_home: false,
            };
            match s.engine.cancel(&culler, k.job) {
                Ok(_) | Err(capstan_engine::EngineError::Conflict(_)) => {}
                Err(error) => {
                    tracing::error!(kernel = %k.id, job_id = k.job, %error, "cannot cull a kernel");
                    continue;
                }
            }
            tracing::info!(kernel = %k.id, job_id = k.job, "idle kernel culled");
            s.kernels.remove(&k.id);
        }
    }
}

/// `2026-12-04T01:02:03.456789Z`: the form Jupyter Server parses (`%Y-%m-%dT%H:%M:%S.%fZ`).
fn jupyter_time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// An error as Jupyter Server reads a gateway's (`reason`, `message`), and as capstan's API
/// writes its own (`error`).
struct Gateway(ApiError);

impl Gateway {
    fn not_found(message: impl Into<String>) -> Gateway {
        Gateway(ApiError::new(StatusCode::NOT_FOUND, "not_found", message))
    }

    fn unavailable(message: impl Into<String>) -> Gateway {
        Gateway(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            message,
        ))
    }
}

impl From<ApiError> for Gateway {
    fn from(e: ApiError) -> Gateway {
        Gateway(e)
    }
}

impl From<capstan_engine::EngineError> for Gateway {
    fn from(e: capstan_engine::EngineError) -> Gateway {
        Gateway(e.into())
    }
}

impl IntoResponse for Gateway {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = json!({
            "reason": e.status.canonical_reason().unwrap_or("error"),
            "message": e.message,
            "error": {"code": e.code, "message": e.message},
        });
        (e.status, Json(body)).into_response()
    }
}

/// One kernelspec: a project, a code environment with Jupyter, an execution configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub name: String,
    pub project: String,
    /// `None`: the configuration's base image's own Python.
    pub code_env: Option<String>,
    pub exec_config: String,
    /// Why the caller may not use it (`None`: they may).
    pub refused: Option<Refusal>,
}

/// Why a kernelspec cannot be used.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// Not the caller's to use: their groups may not run there (403).
    Forbidden(String),
    /// Not usable now by anyone: its environment is not built for the configuration, say
    /// (409). Not listed either, so a launcher shows only what starts.
    Unavailable(String),
}

impl Spec {
    fn json(&self, home: &Home) -> Value {
        let kind = home
            .exec_configs
            .get(&self.exec_config)
            .map(|c| c.kind.value.as_str());
        // The kernel's language as Jupyter names it (a launcher's icon, a notebook's metadata).
        let language = match self
            .code_env
            .as_ref()
            .and_then(|e| home.code_envs.get(e))
            .map(|e| e.language.value)
        {
            Some(capstan_core::model::EnvLanguage::R) => "R",
            _ => "python",
        };
        json!({
            "name": self.name,
            "spec": {
                "argv": [],
                "display_name": display_name(&self.project, self.code_env.as_deref(), &self.exec_config),
                "language": language,
                "interrupt_mode": "message",
                "env": {},
                "metadata": {"capstan": {
                    "project": self.project,
                    "code_env": self.code_env,
                    "exec_config": self.exec_config,
                    "kind": kind,
                }},
            },
            "resources": {},
        })
    }
}

/// `PROJECT.ENV.CONFIG`, or `PROJECT.CONFIG` on a base image's own Python.
fn spec_name(project: &str, env: Option<&str>, config: &str) -> String {
    match env {
        Some(env) => format!("{project}.{env}.{config}"),
        None => format!("{project}.{config}"),
    }
}

/// "PROJECT · ENV · CONFIG", as a launcher shows it.
fn display_name(project: &str, env: Option<&str>, config: &str) -> String {
    match env {
        Some(env) => format!("{project} · {env} · {config}"),
        None => format!("{project} · {config}"),
    }
}

/// Every kernelspec of the home, each with whether `caller` may use it.
pub fn specs(home: &Home, caller: &Caller) -> Vec<Spec> {
    let mut out = Vec::new();
    for project in home.projects.keys() {
        let may_run = caller.admin
            || capstan_core::access::check(
                home,
                project,
                &caller.name,
                false,
                capstan_core::model::Permission::Run,
            )
            .is_ok();
        // Each code environment with Jupyter on every configuration, and each configuration
        // whose base image has Jupyter on its own.
        let envs = home
            .code_envs
            .values()
            .filter(|e| e.with_jupyter)
            .map(|e| Some(e.name.as_str()));
        for env in envs.chain(std::iter::once(None)) {
            for config in home.exec_configs.keys() {
                if env.is_none() && !capstan_engine::kernel::base_has_jupyter(home, config) {
                    continue;
                }
                let refused = if !may_run {
                    Some(Refusal::Forbidden(format!(
                        "user `{}` may not run in project `{project}`",
                        caller.name
                    )))
                } else {
                    kernel_resolution(home, caller, project, env, config)
                        .err()
                        .map(|errors| {
                            let text = errors
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; ");
                            if errors
                                .iter()
                                .any(|e| matches!(e, ResolveError::PermissionDenied { .. }))
                            {
                                Refusal::Forbidden(text)
                            } else {
                                Refusal::Unavailable(text)
                            }
                        })
                };
                out.push(Spec {
                    name: spec_name(project, env, config),
                    project: project.clone(),
                    code_env: env.map(str::to_string),
                    exec_config: config.clone(),
                    refused,
                });
            }
        }
    }
    out
}

async fn list_specs(State(s): State<AppState>, Auth(caller): Auth) -> Json<Value> {
    let home = s.engine.home();
    let usable: Vec<Spec> = specs(&home, &caller)
        .into_iter()
        .filter(|k| k.refused.is_none())
        .collect();
    let kernelspecs: serde_json::Map<String, Value> = usable
        .iter()
        .map(|k| (k.name.clone(), k.json(&home)))
        .collect();
    Json(json!({
        "default": usable.first().map(|k| k.name.clone()),
        "kernelspecs": kernelspecs,
    }))
}

/// The kernelspec `name` if the caller may use it: 404 for one that does not exist, 403 with
/// the reason for one they may not use.
fn usable_spec(home: &Home, caller: &Caller, name: &str) -> Result<Spec, Gateway> {
    let all = specs(home, caller);
    let Some(spec) = all.iter().find(|k| k.name == name) else {
        let yours: Vec<&str> = all
            .iter()
            .filter(|k| k.refused.is_none())
            .map(|k| k.name.as_str())
            .collect();
        return Err(Gateway::not_found(format!(
            "no kernelspec `{name}`; yours are: {}",
            if yours.is_empty() {
                "none (no code environment has `with_jupyter = true`, or none resolves for you)"
                    .into()
            } else {
                yours.join(", ")
            }
        )));
    };
    match &spec.refused {
        None => Ok(spec.clone()),
        Some(Refusal::Forbidden(why)) => Err(Gateway(ApiError::forbidden(format!(
            "kernelspec `{name}` is not yours to use: {why}"
        )))),
        Some(Refusal::Unavailable(why)) => Err(Gateway(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("kernelspec `{name}` cannot start now: {why}"),
        ))),
    }
}

async fn show_spec(
    State(s): State<AppState>,
    Auth(caller): Auth,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, Gateway> {
    let home = s.engine.home();
    Ok(Json(usable_spec(&home, &caller, &name)?.json(&home)))
}

/// The kernel `id` if the caller may see it (their own; an admin's, any): otherwise 404, so ids
/// do not tell what exists.
fn visible(s: &AppState, caller: &Caller, id: &str) -> Result<Arc<Kernel>, Gateway> {
    s.kernels
        .get(id)
        .filter(|k| caller.admin || k.user == caller.name)
        .ok_or_else(|| Gateway::not_found(format!("no kernel `{id}`")))
}

/// Forgets kernels whose activity has ended (deleted, culled, failed, or lost with a restart).
fn prune(s: &AppState) {
    let ended: Vec<String> = {
        let map = s.kernels.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|k| {
                s.engine
                    .state_of(k.job)
                    .ok()
                    .flatten()
                    .is_none_or(|st| st.is_final())
            })
            .map(|k| k.id.clone())
            .collect()
    };
    for id in ended {
        s.kernels.remove(&id);
    }
}

async fn list_kernels(State(s): State<AppState>, Auth(caller): Auth) -> Json<Value> {
    Json(Value::Array(
        kernels_of(&s, &caller)
            .into_iter()
            .map(|(_, m)| m)
            .collect(),
    ))
}

/// The kernels `caller` may see (theirs; an admin all), as Jupyter's kernel models with the
/// user who started each: what `GET /api/kernels` answers, and the web UI's kernels page.
pub(crate) fn kernels_of(s: &AppState, caller: &Caller) -> Vec<(String, Value)> {
    prune(s);
    let map = s.kernels.map.lock().unwrap_or_else(|e| e.into_inner());
    let mut list: Vec<&Arc<Kernel>> = map
        .values()
        .filter(|k| caller.admin || k.user == caller.name)
        .collect();
    list.sort_by_key(|k| k.job);
    list.iter().map(|k| (k.user.clone(), k.model(s))).collect()
}

/// The kernelspecs `caller` may start, by name with their display names.
pub(crate) fn usable_specs(s: &AppState, caller: &Caller) -> Vec<(String, String)> {
    let home = s.engine.home();
    specs(&home, caller)
        .into_iter()
        .filter(|k| k.refused.is_none())
        .map(|k| {
            let shown = display_name(&k.project, k.code_env.as_deref(), &k.exec_config);
            (k.name, shown)
        })
        .collect()
}

async fn show_kernel(
    State(s): State<AppState>,
    Auth(caller): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, Gateway> {
    prune(&s);
    Ok(Json(visible(&s, &caller, &id)?.model(&s)))
}

/// A random version-4 UUID, as Jupyter names kernels.
fn new_kernel_id() -> Result<String, Gateway> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| Gateway(ApiError::internal("no randomness", &e)))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

async fn start_kernel(
    State(s): State<AppState>,
    Auth(caller): Auth,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), Gateway> {
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let home = s.engine.home();
    let name = match request.get("name") {
        Some(Value::String(n)) => n.clone(),
        // Jupyter's default kernel: the first the caller may use.
        None | Some(Value::Null) => specs(&home, &caller)
            .into_iter()
            .find(|k| k.refused.is_none())
            .map(|k| k.name)
            .ok_or_else(|| {
                Gateway::not_found("you may start no kernel here: no kernelspec is yours")
            })?,
        Some(_) => return Err(ApiError::bad_request("`name` must be a kernelspec's name").into()),
    };
    let spec = usable_spec(&home, &caller, &name)?;
    let id = new_kernel_id()?;
    let job = s.engine.start_kernel(
        &caller,
        &KernelRequest {
            project: spec.project.clone(),
            code_env: spec.code_env.clone(),
            exec_config: spec.exec_config.clone(),
            kernel_id: id.clone(),
        },
    )?;
    // The agent dials only once its queued activity is claimed and started, well after this;
    // one that came sooner would dial again.
    let kernel = Kernel::new(
        id.clone(),
        name,
        job.id,
        caller.name.clone(),
        idle_timeout(&home, &spec.exec_config),
        "starting",
    );
    s.kernels.insert(&s, kernel.clone());
    tracing::info!(kernel = %id, job_id = job.id, spec = %kernel.spec, user = %caller.name, "kernel starting");
    match wait_started(&s, &kernel).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(kernel.model(&s)))),
        Err(e) => {
            s.kernels.remove(&id);
            Err(e)
        }
    }
}

/// Waits until the kernel's agent has connected, or its activity ended (its diagnosis is the
/// answer), or the start deadline passed (its activity is cancelled).
async fn wait_started(s: &AppState, kernel: &Kernel) -> Result<(), Gateway> {
    let mut connected = kernel.connected.subscribe();
    let mut changes = s.engine.changes();
    let deadline = tokio::time::Instant::now() + START_DEADLINE;
    loop {
        if *connected.borrow_and_update() {
            return Ok(());
        }
        let job = s.engine.job(&system(), kernel.job)?;
        if job.state.is_final() {
            return Err(Gateway::unavailable(format!(
                "kernel {} did not start: job {} {}{}",
                kernel.id,
                job.id,
                job.state,
                job.diagnosis.map(|d| format!(": {d}")).unwrap_or_default()
            )));
        }
        tokio::select! {
            _ = connected.changed() => {}
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                let _ = s.engine.cancel(&system(), kernel.job);
                return Err(Gateway::unavailable(format!(
                    "kernel {} did not start within {} s (job {}, {}): it was cancelled",
                    kernel.id, START_DEADLINE.as_secs(), job.id, job.state
                )));
            }
        }
    }
}

/// The gateway's own view of jobs, whoever's they are.
fn system() -> Caller {
    Caller {
        name: "capstan".into(),
        admin: true,
        in_home: false,
    }
}

async fn delete_kernel(
    State(s): State<AppState>,
    Auth(caller): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, Gateway> {
    let kernel = visible(&s, &caller, &id)?;
    match s.engine.cancel(&caller, kernel.job) {
        Ok(_) | Err(capstan_engine::EngineError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // Answered once its process, container or pod is gone, so a client that deletes and
    // looks finds nothing left.
    let mut changes = s.engine.changes();
    let ended = async {
        loop {
            let state = s.engine.state_of(kernel.job).ok().flatten();
            if state.is_none_or(JobState::is_final) {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CONTROL_DEADLINE, ended).await;
    s.kernels.remove(&id);
    tracing::info!(kernel = %id, job_id = kernel.job, "kernel deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn interrupt_kernel(
    State(s): State<AppState>,
    Auth(caller): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, Gateway> {
    visible(&s, &caller, &id)?
        .ask("interrupt", "interrupted")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restart_kernel(
    State(s): State<AppState>,
    Auth(caller): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, Gateway> {
    let kernel = visible(&s, &caller, &id)?;
    kernel.ask("restart", "restarted").await?;
    Ok(Json(kernel.model(&s)))
}

/// A client's WebSocket: its frames to the agent, the agent's to it.
async fn client_channels(
    State(s): State<AppState>,
    Auth(caller): Auth,
    ApiPath(id): ApiPath<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, Gateway> {
    let kernel = visible(&s, &caller, &id)?;
    Ok(ws.on_upgrade(move |socket| relay_client(kernel, socket)))
}

async fn relay_client(kernel: Arc<Kernel>, socket: WebSocket) {
    let mut from_agent = kernel.to_clients.subscribe();
    kernel.live().connections += 1;
    let (mut tx, mut rx) = socket.split();
    loop {
        tokio::select! {
            m = rx.next() => match m {
                Some(Ok(Message::Text(text))) => {
                    kernel.live().last_activity = SystemTime::now();
                    // While the agent reconnects a frame has nowhere to go, as on a dropped
                    // ZeroMQ socket; the client sees no reply and may resend.
                    kernel.send_to_agent(text.to_string());
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            m = from_agent.recv() => match m {
                Ok(text) => {
                    if tx.send(Message::Text(text.as_ref().into())).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(kernel = %kernel.id, dropped = n, "a slow client missed kernel messages");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    let mut live = kernel.live();
    live.connections = live.connections.saturating_sub(1);
    live.last_activity = SystemTime::now();
}

/// The agent's WebSocket, with its activity's token: only the kernel's own activity may be its
/// agent.
async fn agent_channel(
    State(s): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, Gateway> {
    let Principal::Activity { id: activity, .. } = principal else {
        return Err(Gateway(ApiError::forbidden(
            "only the kernel's own activity connects as its agent",
        )));
    };
    let kernel = match s.kernels.get(&id) {
        Some(k) => k,
        None => adopt(&s, activity.job, &id)?,
    };
    if activity.job != kernel.job {
        return Err(Gateway(ApiError::forbidden(
            "only the kernel's own activity connects as its agent",
        )));
    }
    Ok(ws.on_upgrade(move |socket| relay_agent(kernel, socket)))
}

/// A kernel this daemon does not know, dialled by a live activity of `job`: one the previous
/// daemon started, whose agent reconnects after a restart. It is registered again from its
/// job, so its clients can reconnect to it, state and all.
fn adopt(s: &AppState, job: i64, id: &str) -> Result<Arc<Kernel>, Gateway> {
    let row = s.engine.job(&system(), job)?;
    let request = capstan_engine::record::request_from_json(&row.request_json);
    let theirs = row.recipe == capstan_core::job::KERNEL_RECIPE
        && request
            .env
            .get(capstan_engine::kernel::KERNEL_ID_VAR)
            .map(String::as_str)
            == Some(id);
    if !theirs {
        return Err(Gateway::not_found(format!("no kernel `{id}`")));
    }
    let config = request.exec_config.unwrap_or_default();
    let spec = spec_name(&row.project, request.code_env.as_deref(), &config);
    let home = s.engine.home();
    let kernel = Kernel::new(
        id.to_string(),
        spec,
        job,
        row.user,
        idle_timeout(&home, &config),
        "idle",
    );
    s.kernels.insert(s, kernel.clone());
    tracing::info!(kernel = %id, job_id = job, "kernel adopted after a restart");
    Ok(kernel)
}

async fn relay_agent(kernel: Arc<Kernel>, socket: WebSocket) {
    let (to_agent, mut outbox) = mpsc::unbounded_channel::<String>();
    kernel.live().to_agent = Some(to_agent);
    tracing::info!(kernel = %kernel.id, job_id = kernel.job, "kernel agent connected");
    let (mut tx, mut rx) = socket.split();
    loop {
        tokio::select! {
            m = rx.next() => match m {
                Some(Ok(Message::Text(text))) => on_agent_frame(&kernel, text.as_str()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            Some(text) = outbox.recv() => {
                if tx.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        }
    }
    kernel.live().to_agent = None;
    kernel.connected.send_replace(false);
    tracing::info!(kernel = %kernel.id, job_id = kernel.job, "kernel agent disconnected");
}

fn on_agent_frame(kernel: &Kernel, text: &str) {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        return;
    };
    if let Some(own) = msg.get("capstan").and_then(Value::as_str) {
        if own == "ready" {
            kernel.connected.send_replace(true);
        }
        let _ = kernel.control.send(own.to_string());
        return;
    }
    {
        let mut live = kernel.live();
        live.last_activity = SystemTime::now();
        if msg["channel"] == "iopub"
            && msg["header"]["msg_type"] == "status"
            && let Some(state) = msg["content"]["execution_state"].as_str()
        {
            live.execution_state = state.to_string();
        }
    }
    let _ = kernel.to_clients.send(Arc::from(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_in_the_form_jupyter_server_parses() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_348_523_456_789);
        assert_eq!(jupyter_time(t), "2026-12-04T01:42:03.456789Z");
        assert_eq!(
            jupyter_time(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(jupyter_time(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn kernel_ids_are_version_4_uuids() {
        let a = new_kernel_id().ok().unwrap();
        let b = new_kernel_id().ok().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]), "{a}");
    }
}
