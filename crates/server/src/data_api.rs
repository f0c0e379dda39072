//! The data API: datasets read as Arrow IPC streams (or CSV) and written as Arrow IPC streams
//! (or CSV), with least-privilege activity tokens.
//!
//! An activity's token is `capa_JOB_IDX_ATTEMPT_MAC`, the MAC an HMAC-SHA256 of the activity
//! under a secret kept in the home (`state/data-secret`). Nothing is stored per token, so tokens
//! survive a daemon restart, and a token is valid only while its activity is: once the job is
//! final (or another attempt runs) it gets 401. It reads exactly the recipe's declared inputs
//! and writes exactly its outputs; anything else is 403.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Mutex, RwLock};

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use capstan_core::job::JobState;
use capstan_core::model::Permission;
use capstan_data::arrow::csv::WriterBuilder as CsvWriterBuilder;
use capstan_data::arrow::ipc::reader::StreamReader;
use capstan_data::arrow::ipc::writer::StreamWriter;
use capstan_data::models::ModelStore;
use capstan_data::{DataError, DatasetStore, ParquetStore};
use capstan_engine::backend::{ActivitySpec, DataAccess};
use capstan_engine::{Caller, DataPlane, IoSummary};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{ApiError, ApiPath, ApiQuery, AppState, Auth};

pub const TOKEN_PREFIX: &str = "capa_";

/// One attempt of one activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActivityId {
    pub job: i64,
    pub idx: i64,
    pub attempt: i64,
}

impl ActivityId {
    pub(crate) fn stage(&self) -> String {
        format!("{}-{}-{}", self.job, self.idx, self.attempt)
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.map(|x| x ^ b);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Where containers and pods reach the data API. The daemon answers: it knows where it listens,
/// and can listen on one more address for an engine's containers.
pub trait ContainerRoutes: Send + Sync {
    /// The API's URL for an activity of `kind` (Docker: on the engine at `docker_host`, `None`
    /// for the local one), or why there is none, saying what to set.
    fn url<'a>(
        &'a self,
        kind: capstan_core::model::ExecKind,
        docker_host: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// The data plane of one daemon: the store, the token secret, and what activities read and wrote.
pub struct DataPlaneImpl {
    pub store: ParquetStore,
    pub models: ModelStore,
    secret: Vec<u8>,
    api_url: RwLock<String>,
    /// Where containers and pods reach the API, which only the daemon knows (it listens).
    routes: RwLock<Option<std::sync::Arc<dyn ContainerRoutes>>>,
    io: Mutex<HashMap<ActivityId, IoSummary>>,
}

impl DataPlaneImpl {
    /// Opens the data plane of the home, creating its token secret on first use.
    pub fn open(root: &Path, random: impl FnOnce() -> [u8; 32]) -> std::io::Result<DataPlaneImpl> {
        let path = root.join("state").join("data-secret");
        let secret = match std::fs::read(&path) {
            Ok(s) if s.len() >= 32 => s,
            _ => {
                use std::os::unix::fs::OpenOptionsExt;
                let s = random().to_vec();
                std::fs::create_dir_all(path.parent().unwrap_or(root))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)?;
                f.write_all(&s)?;
                s
            }
        };
        Ok(DataPlaneImpl {
            store: ParquetStore::new(root),
            models: ModelStore::new(root),
            secret,
            api_url: RwLock::new(String::new()),
            routes: RwLock::new(None),
            io: Mutex::new(HashMap::new()),
        })
    }

    /// Where recipes reach the API (known once the daemon listens).
    pub fn set_api_url(&self, url: &str) {
        *self.api_url.write().unwrap_or_else(|e| e.into_inner()) = url.to_string();
    }

    /// Where containers and pods reach the API.
    pub fn set_routes(&self, routes: std::sync::Arc<dyn ContainerRoutes>) {
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = Some(routes);
    }

    fn mac(&self, id: ActivityId) -> String {
        let m = hmac_sha256(
            &self.secret,
            format!("{}:{}:{}", id.job, id.idx, id.attempt).as_bytes(),
        );
        m.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn token(&self, id: ActivityId) -> String {
        format!(
            "{TOKEN_PREFIX}{}_{}_{}_{}",
            id.job,
            id.idx,
            id.attempt,
            self.mac(id)
        )
    }

    /// The activity a token names, if its MAC is right (whether it is still valid is the
    /// engine's to say).
    pub fn verify(&self, token: &str) -> Option<ActivityId> {
        let rest = token.strip_prefix(TOKEN_PREFIX)?;
        let mut parts = rest.split('_');
        let id = ActivityId {
            job: parts.next()?.parse().ok()?,
            idx: parts.next()?.parse().ok()?,
            attempt: parts.next()?.parse().ok()?,
        };
        let mac = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        // Constant-time comparison: the MAC is the secret part.
        let expected = self.mac(id);
        let same = mac.len() == expected.len()
            && mac
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same.then_some(id)
    }

    fn count(&self, id: ActivityId, dataset: &str, rows: u64, read: bool) {
        let mut io = self.io.lock().unwrap_or_else(|e| e.into_inner());
        let entry = io.entry(id).or_default();
        let map = if read {
            &mut entry.read
        } else {
            &mut entry.written
        };
        *map.entry(dataset.to_string()).or_default() += rows;
    }
}

impl DataPlane for DataPlaneImpl {
    fn grant<'a>(
        &'a self,
        spec: &'a ActivitySpec,
    ) -> BoxFuture<'a, Result<Option<DataAccess>, String>> {
        Box::pin(async move {
            let url = match spec.kind {
                capstan_core::model::ExecKind::Local => self
                    .api_url
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                kind => {
                    let routes = self
                        .routes
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    let found = match routes {
                        Some(r) => r.url(kind, spec.docker_host.as_deref()).await,
                        None => Err(
                            "this daemon has no address for containers to reach its data API at"
                                .into(),
                        ),
                    };
                    match found {
                        Ok(url) => url,
                        // A recipe without datasets does not need the API: let it run.
                        Err(_) if spec.inputs.is_empty() && spec.outputs.is_empty() => {
                            return Ok(None);
                        }
                        Err(why) => return Err(why),
                    }
                }
            };
            let id = ActivityId {
                job: spec.job_id,
                idx: spec.idx,
                attempt: spec.attempt,
            };
            Ok(Some(DataAccess {
                api_url: url,
                token: self.token(id),
            }))
        })
    }

    fn state(&self, project: &str, dataset: &str) -> capstan_data::DatasetState {
        // A project's saved models and datasets never share a name (`capstan check`).
        match self.store.state(project, dataset) {
            capstan_data::DatasetState::Missing => self.models.state(project, dataset),
            state => state,
        }
    }

    fn model_version(
        &self,
        project: &str,
        model: &str,
        pinned: Option<u64>,
    ) -> Result<(u64, Value), String> {
        let numbers = || {
            let v: Vec<String> = self
                .models
                .numbers(project, model)
                .iter()
                .map(u64::to_string)
                .collect();
            v.join(", ")
        };
        let version = match pinned {
            Some(v) => v,
            None => match (
                self.models.active(project, model),
                self.models.latest(project, model),
            ) {
                (Some(v), _) => v,
                (None, None) => {
                    return Err(format!(
                        "saved model `{model}` has no version yet: build its training recipe first"
                    ));
                }
                (None, Some(_)) => {
                    return Err(format!(
                        "saved model `{model}` has no active version (its versions: {}): activate one with `capstan model activate {project}/{model} N`, or pin `model_version` in the recipe",
                        numbers()
                    ));
                }
            },
        };
        match self.models.version(project, model, version) {
            Ok(Some(v)) => Ok((version, v.train_info)),
            Ok(None) => Err(match self.models.latest(project, model) {
                None => format!(
                    "saved model `{model}` has no version yet, so not version {version}: build its training recipe first"
                ),
                Some(_) => format!(
                    "saved model `{model}` has no version {version} (its versions: {})",
                    numbers()
                ),
            }),
            Err(e) => Err(format!("saved model `{model}`: {e}")),
        }
    }

    fn end(
        &self,
        spec: &ActivitySpec,
        succeeded: bool,
        provenance: &capstan_data::Provenance,
    ) -> Result<IoSummary, String> {
        let id = ActivityId {
            job: spec.job_id,
            idx: spec.idx,
            attempt: spec.attempt,
        };
        let stage = id.stage();
        let mut notes = Vec::new();
        for model in &spec.models {
            if !succeeded {
                self.models.discard(&spec.project, model, &stage);
            } else if spec.part.is_some() && spec.outputs.contains(model) {
                // A part of a distributed search: its candidate waits for the others
                // (`end_search`).
                if !self.models.is_staged(&spec.project, model, &stage) {
                    return Err(format!(
                        "saved model `{model}`: the search's {} uploaded no candidate",
                        spec.part.map(|p| p.to_string()).unwrap_or_default()
                    ));
                }
            } else if spec.outputs.contains(model) {
                let committed = self
                    .models
                    .commit(&spec.project, model, &stage, provenance, spec.activation)
                    .map_err(|e| format!("saved model `{model}`: {e}"))?;
                match committed {
                    Some(c) => notes.push(format!("saved model `{model}`: {}", c.why)),
                    None => {
                        return Err(format!(
                            "saved model `{model}`: the training uploaded no version"
                        ));
                    }
                }
            } else if self
                .models
                .commit_evaluation(&spec.project, model, &stage)
                .map_err(|e| format!("saved model `{model}`: {e}"))?
            {
                notes.push(format!("saved model `{model}`: evaluation recorded"));
            }
        }
        for output in spec.outputs.iter().filter(|o| !spec.models.contains(o)) {
            if succeeded {
                self.store
                    .commit(&spec.project, output, &id.stage(), provenance)
                    .map_err(|e| format!("dataset `{output}`: {e}"))?;
            } else {
                self.store.discard(&spec.project, output, &id.stage());
            }
        }
        let mut io = self
            .io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .unwrap_or_default();
        io.notes = notes;
        Ok(io)
    }

    fn end_search(&self, search: &capstan_engine::SearchEnd<'_>) -> Result<Vec<String>, String> {
        let stages: Vec<String> = search
            .parts
            .iter()
            .map(|&(idx, attempt)| {
                ActivityId {
                    job: search.job_id,
                    idx,
                    attempt,
                }
                .stage()
            })
            .collect();
        let model = search.model;
        if !search.succeeded {
            for stage in &stages {
                self.models.discard(search.project, model, stage);
            }
            return Ok(Vec::new());
        }
        let merged = self
            .models
            .merge(
                search.project,
                model,
                &stages,
                search.provenance,
                search.activation,
            )
            .map_err(|e| format!("saved model `{model}`: {e}"))?;
        Ok(vec![
            format!("saved model `{model}`: {}", merged.said),
            format!("saved model `{model}`: {}", merged.committed.why),
        ])
    }
}

/// Who is calling the data API.
pub enum Principal {
    User(Caller),
    Activity {
        id: ActivityId,
        project: String,
        recipe: String,
        inputs: Vec<String>,
        outputs: Vec<String>,
    },
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Principal, ApiError> {
        let token = crate::bearer_token(&parts.headers)?;
        if !token.starts_with(TOKEN_PREFIX) {
            return Auth::from_request_parts(parts, state)
                .await
                .map(|Auth(c)| Principal::User(c));
        }
        let expired = |m: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let id = state
            .data
            .verify(token)
            .ok_or_else(|| expired("unknown token".into()))?;
        let engine = &state.engine;
        let system = Caller {
            name: "capstan".into(),
            admin: true,
            in_home: false,
        };
        let job = engine
            .job(&system, id.job)
            .map_err(|_| expired(format!("token of job {}, which does not exist", id.job)))?;
        let act = engine.activity(id.job, id.idx);
        // A build's activities have states of their own; a run's activity is its job's.
        let state = match &act {
            Some(a) if job.is_build() => a.state,
            _ => job.state,
        };
        let live = matches!(state, JobState::Starting | JobState::Running)
            && act.as_ref().map(|a| a.attempt) == Some(id.attempt);
        if !live {
            return Err(expired(format!(
                "token expired: activity {}-{} of job {} has ended ({state})",
                id.job, id.idx, id.job
            )));
        }
        let recipe = act.map_or(job.recipe, |a| a.recipe);
        let home = engine.home();
        let (inputs, outputs) = if recipe == capstan_core::job::KERNEL_RECIPE {
            // A notebook kernel reads what its user may read in its project (looked at on each
            // request, so a permission taken away is taken from running kernels too), and
            // writes nothing: outputs are recipes' work.
            let user = Caller {
                name: job.user.clone(),
                admin: home.users.get(&job.user).is_some_and(|u| u.admin),
                in_home: home.users.contains_key(&job.user),
            };
            let readable = !user.in_home
                || engine
                    .authorize(&user, &job.project, Permission::Read)
                    .is_ok();
            let datasets = home
                .projects
                .get(&job.project)
                .filter(|_| readable)
                .map(|p| p.datasets.keys().cloned().collect())
                .unwrap_or_default();
            (datasets, Vec::new())
        } else {
            home.recipe(&job.project, &recipe)
                .map(|(_, r)| {
                    (
                        r.inputs.iter().map(|i| i.value.clone()).collect(),
                        r.outputs.iter().map(|o| o.value.clone()).collect(),
                    )
                })
                .unwrap_or_default()
        };
        Ok(Principal::Activity {
            id,
            project: job.project,
            recipe,
            inputs,
            outputs,
        })
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Principal {
    /// May this caller list the datasets of `project`? Activities may not: they reach only the
    /// datasets their recipe declares.
    fn allow_list(&self, state: &AppState, project: &str) -> Result<(), ApiError> {
        match self {
            Principal::User(c) => Ok(state.engine.authorize(c, project, Permission::Read)?),
            Principal::Activity { .. } => Err(ApiError::forbidden(
                "activity tokens reach only their recipe's datasets",
            )),
        }
    }

    /// May this caller read (or write) `project/dataset`? Returns the activity to count for.
    ///
    /// Called before anything looks the names up: an activity is refused every name outside its
    /// grant alike, whether a project or dataset of that name exists or not, so its token cannot
    /// tell which do.
    fn allow(
        &self,
        state: &AppState,
        project: &str,
        dataset: &str,
        write: bool,
    ) -> Result<Option<ActivityId>, ApiError> {
        self.allow_named(state, project, "dataset", dataset, write)
    }

    /// [`Principal::allow`] for a dataset or a saved model (`what`), which a recipe declares
    /// alike.
    pub(crate) fn allow_named(
        &self,
        state: &AppState,
        project: &str,
        what: &str,
        dataset: &str,
        write: bool,
    ) -> Result<Option<ActivityId>, ApiError> {
        match self {
            // The project's permissions, before any lookup: 403 whether the names exist or not.
            Principal::User(c) => {
                let wanted = if write {
                    Permission::Write
                } else {
                    Permission::Read
                };
                state.engine.authorize(c, project, wanted)?;
                Ok(None)
            }
            Principal::Activity {
                id,
                project: p,
                recipe,
                inputs,
                outputs,
            } => {
                let (verb, declared, kind) = if write {
                    ("write", outputs, "outputs")
                } else {
                    ("read", inputs, "inputs")
                };
                if p != project || !declared.iter().any(|d| d == dataset) {
                    return Err(ApiError::forbidden(format!(
                        "recipe `{p}/{recipe}` may not {verb} {what} `{}/{}`: it declares {kind} {}",
                        project.escape_debug(),
                        dataset.escape_debug(),
                        list_or_none(declared)
                    )));
                }
                Ok(Some(*id))
            }
        }
    }
}

impl From<DataError> for ApiError {
    fn from(e: DataError) -> ApiError {
        let m = e.to_string();
        match e {
            DataError::Empty { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            // A well-formed request naming a column the data does not have.
            DataError::UnknownColumn { .. } => ApiError::invalid(m),
            DataError::Schema { .. } | DataError::Model(_) => ApiError::invalid(m),
            DataError::Arrow(_) => {
                ApiError::bad_request(format!("the data is not a valid Arrow stream: {m}"))
            }
            // These name the dataset's files: the log gets them, the client what failed.
            DataError::Io { ref source, .. } => ApiError::internal(
                format!("the dataset store failed: {}", crate::io_kind(source)),
                &m,
            ),
            DataError::Parquet(_) => {
                ApiError::internal("the dataset store failed reading or writing Parquet", &m)
            }
        }
    }
}

/// A CSV upload's import error, in the client's terms: the file it was spooled to is the
/// server's business, so no message names it.
fn csv_error(e: capstan_data::csv_import::ImportError) -> ApiError {
    use capstan_data::csv_import::ImportError;
    match e {
        ImportError::BadLines { lines, total, .. } => ApiError::invalid(format!(
            "{total} bad line(s) in the CSV: {}",
            lines
                .iter()
                .map(|l| format!("line {}: {}", l.line, l.message))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        ImportError::NoHeader { .. } => ApiError::bad_request("the CSV has no header line"),
        ImportError::Read { message, .. } => {
            ApiError::bad_request(format!("the CSV cannot be read: {message}"))
        }
        // A line, a column count or a size beyond the import's limits: the message says which,
        // with the spooled file's name replaced.
        ImportError::Limit { path, message, .. } => {
            ApiError::invalid(message.replace(&path, "the CSV"))
        }
        ImportError::Data(e) => ApiError::from(e),
    }
}

/// The media types a dataset is written in (`PUT …/data`), as `Content-Type`.
const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";
const CSV: &str = "text/csv";

/// Whether an upload is CSV (else an Arrow IPC stream), from its `Content-Type`; 415 for any
/// other type, or none.
fn upload_is_csv(headers: &HeaderMap) -> Result<bool, ApiError> {
    let accepted = format!("send `Content-Type: {ARROW_STREAM}` (an Arrow IPC stream) or `{CSV}`");
    match crate::media_type(headers)?.as_deref() {
        Some(ARROW_STREAM) => Ok(false),
        Some(CSV) => Ok(true),
        Some(other) => Err(ApiError::unsupported_media_type(format!(
            "unsupported Content-Type `{other}`: {accepted}"
        ))),
        None => Err(ApiError::unsupported_media_type(format!(
            "missing Content-Type: {accepted}"
        ))),
    }
}

fn known_dataset(
    state: &AppState,
    project: &str,
    dataset: &str,
) -> Result<Vec<(String, String)>, ApiError> {
    let home = state.engine.home();
    let p = home.projects.get(project).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown project `{project}`"),
        )
    })?;
    let d = p.datasets.get(dataset).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown dataset `{dataset}` in project `{project}`"),
        )
    })?;
    Ok(d.schema
        .iter()
        .map(|(c, t)| (c.clone(), t.value.clone()))
        .collect())
}

pub async fn list_datasets(
    State(s): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    principal.allow_list(&s, &project)?;
    let home = s.engine.home();
    let p = home.projects.get(&project).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown project `{project}`"),
        )
    })?;
    let mut out = Vec::new();
    for d in p.datasets.values() {
        let info = s
            .data
            .store
            .info(&project, &d.name)
            .map_err(ApiError::from)?;
        out.push(json!({
            "name": d.name,
            "rows": info.as_ref().map(|i| i.rows),
            "size_bytes": info.as_ref().map(|i| i.size_bytes),
        }));
    }
    Ok(Json(Value::Array(out)))
}

pub async fn dataset_info(
    State(s): State<AppState>,
    principal: Principal,
    ApiPath((project, dataset)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    principal.allow(&s, &project, &dataset, false)?;
    known_dataset(&s, &project, &dataset)?;
    let info = s
        .data
        .store
        .info(&project, &dataset)
        .map_err(ApiError::from)?;
    Ok(Json(match info {
        None => json!({"project": project, "name": dataset, "rows": null, "columns": []}),
        Some(i) => json!({
            "project": project,
            "name": dataset,
            "rows": i.rows,
            "size_bytes": i.size_bytes,
            "columns": i.schema.fields().iter().map(|f| json!({"name": f.name(), "type": capstan_data::type_name(f.data_type())})).collect::<Vec<_>>(),
        }),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    format: Option<String>,
    columns: Option<String>,
    limit: Option<usize>,
}

/// Bytes into an HTTP body from a blocking writer.
pub(crate) struct ChannelWriter {
    pub(crate) tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    pub(crate) buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

/// An HTTP body that `write` fills from a blocking thread (a tar being packed, say); a failure
/// midway ends the body with an error, so the client sees a broken transfer, not a short one.
pub(crate) fn blocking_body(
    write: impl FnOnce(&mut ChannelWriter) -> Result<(), String> + Send + 'static,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        };
        let written = write(&mut out).and_then(|()| out.flush().map_err(|e| e.to_string()));
        if let Err(e) = written {
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    Body::from_stream(tokio_stream(rx))
}

pub async fn read_data(
    State(s): State<AppState>,
    principal: Principal,
    ApiPath((project, dataset)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let counted = principal.allow(&s, &project, &dataset, false)?;
    known_dataset(&s, &project, &dataset)?;
    let csv = match q.format.as_deref() {
        None | Some("arrow") => false,
        Some("csv") => true,
        Some("parquet") => return stored_parquet(&s, counted, &project, &dataset, &q, false),
        Some("parquet-stream") => {
            return stored_parquet(&s, counted, &project, &dataset, &q, true);
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown format `{other}` (expected arrow, parquet, parquet-stream or csv)"
            )));
        }
    };
    let columns: Option<Vec<String>> = q.columns.as_deref().map(split_columns);
    // Opened before answering, so a missing dataset or column is an error status, not a
    // broken stream.
    let reader = s
        .data
        .store
        .read(&project, &dataset, columns.as_deref(), q.limit)
        .map_err(ApiError::from)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let data = s.clone();
    tokio::task::spawn_blocking(move || {
        let schema = reader.schema();
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        };
        let mut rows = 0u64;
        let result: Result<(), String> = (|| {
            if csv {
                let mut w = CsvWriterBuilder::new().with_header(true).build(&mut out);
                for b in reader {
                    let b = b.map_err(|e| e.to_string())?;
                    rows += b.num_rows() as u64;
                    w.write(&b).map_err(|e| e.to_string())?;
                }
            } else {
                let mut w = StreamWriter::try_new(&mut out, &schema).map_err(|e| e.to_string())?;
                for b in reader {
                    let b = b.map_err(|e| e.to_string())?;
                    rows += b.num_rows() as u64;
                    w.write(&b).map_err(|e| e.to_string())?;
                }
                w.finish().map_err(|e| e.to_string())?;
            }
            out.flush().map_err(|e| e.to_string())
        })();
        match result {
            Ok(()) => {
                if let Some(id) = counted {
                    data.data.count(id, &dataset, rows, true);
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e)));
            }
        }
    });
    let mut headers = HeaderMap::new();
    let ct = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/vnd.apache.arrow.stream"
    };
    headers.insert(header::CONTENT_TYPE, ct.parse().expect("static header"));
    let stream = tokio_stream(rx);
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// `columns=a,b` as names.
fn split_columns(columns: &str) -> Vec<String> {
    columns
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `format=parquet`: the stored Parquet file as it is, with no decoding and no copy in
/// memory. `format=parquet-stream`: the same column chunks as one small Parquet file per row
/// group (after one with the schema alone), each preceded by its length as 8 bytes little-endian,
/// and a length of 0 at the end; a client decodes each row group while the next one is on its
/// way, which is the fastest way to read a dataset. With `columns`, only those columns' chunks
/// (a projection costs nothing). A limit needs decoding: that is for `arrow`.
fn stored_parquet(
    s: &AppState,
    counted: Option<ActivityId>,
    project: &str,
    dataset: &str,
    q: &ReadQuery,
    stream: bool,
) -> Result<Response, ApiError> {
    if q.limit.is_some() || (q.columns.is_some() && !stream) {
        return Err(ApiError::bad_request(if stream {
            "format=parquet-stream serves whole row groups: for `limit`, read format=arrow"
        } else {
            "format=parquet serves the stored file whole: for `columns`, read format=parquet-stream or arrow; for `limit`, format=arrow"
        }));
    }
    let Some(file) = s
        .data
        .store
        .parquet_file(project, dataset)
        .map_err(ApiError::from)?
    else {
        return Err(ApiError::bad_request(
            "this dataset's store keeps no Parquet file to serve: read format=arrow",
        ));
    };
    // The footer, read once: the rows to count, and the row groups to stream.
    let mut files = capstan_data::row_groups::RowGroupFiles::new(file).map_err(ApiError::from)?;
    if let Some(columns) = q.columns.as_deref() {
        files = files
            .select(&split_columns(columns), project, dataset)
            .map_err(ApiError::from)?;
    }
    let data = s.clone();
    let dataset = dataset.to_string();
    let rows = files.rows();
    // The rows count as read once the whole file went out.
    let done = futures_util::stream::once(async move {
        if let Some(id) = counted {
            data.data.count(id, &dataset, rows, true);
        }
        Ok::<_, std::io::Error>(Bytes::new())
    });
    let mut headers = HeaderMap::new();
    if !stream {
        let (file, len) = files
            .into_file()
            .map_err(|e| ApiError::internal("cannot read the stored data", &e))?;
        let file = tokio::fs::File::from_std(file);
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).chain(done);
        headers.insert(
            header::CONTENT_TYPE,
            "application/vnd.apache.parquet"
                .parse()
                .expect("static header"),
        );
        headers.insert(header::CONTENT_LENGTH, len.into());
        return Ok((headers, Body::from_stream(body)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::task::spawn_blocking(move || {
        for file in files {
            let parts = match file {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
            let len = Bytes::copy_from_slice(&len.to_le_bytes());
            for part in std::iter::once(len).chain(parts) {
                if tx.blocking_send(Ok(part)).is_err() {
                    return; // the client went away
                }
            }
        }
        let _ = tx.blocking_send(Ok(Bytes::copy_from_slice(&0u64.to_le_bytes())));
    });
    headers.insert(
        header::CONTENT_TYPE,
        "application/vnd.capstan.parquet-stream"
            .parse()
            .expect("static header"),
    );
    Ok((headers, Body::from_stream(tokio_stream(rx).chain(done))).into_response())
}

pub(crate) fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A blocking reader over an HTTP body's chunks.
pub(crate) struct ChannelReader {
    pub(crate) rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    pub(crate) current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// The most bytes one message of an uploaded Arrow IPC stream may declare for its metadata (a
/// schema or a batch's header: kilobytes in practice).
pub const MAX_IPC_METADATA: u64 = 16 << 20;
/// The most bytes one record batch of an uploaded Arrow IPC stream may declare for its body.
/// Clients write batches of 64K rows (the Python library does), far below it.
pub const MAX_IPC_BATCH: u64 = 256 << 20;

/// Passes an Arrow IPC stream through unchanged, but refuses a message whose metadata or body
/// declares more than [`MAX_IPC_METADATA`] / [`MAX_IPC_BATCH`] bytes before the Arrow reader
/// allocates a buffer that size: four bytes of garbage would otherwise make it allocate and zero
/// gigabytes.
/// The refusal is an I/O error for the reader, and its reason is kept in `refused`.
struct IpcGuard<R> {
    inner: R,
    /// Bytes read ahead (a message's prefix and metadata), to hand on before reading further.
    pending: Vec<u8>,
    at: usize,
    state: IpcState,
    refused: std::sync::Arc<Mutex<Option<IpcRefusal>>>,
}

/// Why [`IpcGuard`] stopped a stream.
enum IpcRefusal {
    /// Metadata larger than any real message's: the bytes are not an Arrow stream.
    Metadata(String),
    /// A record batch above [`MAX_IPC_BATCH`].
    Batch(String),
}

enum IpcState {
    /// At the start of a message.
    Message,
    /// Within a message's body, with this many bytes of it left.
    Body(u64),
    /// Past the end-of-stream marker, or after something the reader will refuse on its own:
    /// bytes pass through unchecked.
    Through,
}

impl<R: Read> IpcGuard<R> {
    fn new(inner: R) -> IpcGuard<R> {
        IpcGuard {
            inner,
            pending: Vec::new(),
            at: 0,
            state: IpcState::Message,
            refused: Default::default(),
        }
    }

    /// Reads until `buf` is full or the stream ends; how many bytes it read.
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn refuse(&self, why: IpcRefusal) -> std::io::Error {
        let text = match &why {
            IpcRefusal::Metadata(t) | IpcRefusal::Batch(t) => t.clone(),
        };
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        std::io::Error::new(std::io::ErrorKind::InvalidData, text)
    }

    /// Reads the next message's prefix and metadata into `pending`, checking both lengths.
    fn next_message(&mut self) -> std::io::Result<()> {
        let mut prefix = [0u8; 8];
        let mut n = self.fill(&mut prefix[..4])?;
        let mut len = prefix[..4].try_into().map(i32::from_le_bytes).unwrap_or(0);
        if n == 4 && prefix[..4] == [0xff; 4] {
            n += self.fill(&mut prefix[4..])?;
            len = prefix[4..].try_into().map(i32::from_le_bytes).unwrap_or(0);
        }
        self.pending = prefix[..n].to_vec();
        self.at = 0;
        if n < 4 || (n == 4 && prefix[..4] == [0xff; 4]) || len <= 0 {
            // The end of the stream (or a truncated or negative prefix the reader refuses).
            self.state = IpcState::Through;
            return Ok(());
        }
        let len = len as u64;
        if len > MAX_IPC_METADATA {
            return Err(self.refuse(IpcRefusal::Metadata(format!(
                "a message declares {len} bytes of metadata, more than the limit of {} MiB",
                MAX_IPC_METADATA >> 20
            ))));
        }
        let mut meta = vec![0u8; len as usize];
        let got = self.fill(&mut meta)?;
        meta.truncate(got);
        let body = match capstan_data::arrow::ipc::root_as_message(&meta) {
            Ok(m) if got as u64 == len => m.bodyLength(),
            // Not a message: the reader says so.
            _ => {
                self.pending.extend_from_slice(&meta);
                self.state = IpcState::Through;
                return Ok(());
            }
        };
        if body < 0 {
            // The reader refuses it on its own.
            self.pending.extend_from_slice(&meta);
            self.state = IpcState::Through;
            return Ok(());
        }
        if body as u64 > MAX_IPC_BATCH {
            return Err(self.refuse(IpcRefusal::Batch(format!(
                "an Arrow IPC record batch declares {body} bytes, more than the limit of {} MiB: write smaller batches",
                MAX_IPC_BATCH >> 20
            ))));
        }
        self.pending.extend_from_slice(&meta);
        self.state = IpcState::Body(body as u64);
        Ok(())
    }
}

impl<R: Read> Read for IpcGuard<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.at < self.pending.len() {
                let n = out.len().min(self.pending.len() - self.at);
                out[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            match self.state {
                IpcState::Through => return self.inner.read(out),
                IpcState::Body(0) => self.state = IpcState::Message,
                IpcState::Body(left) => {
                    let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner.read(&mut out[..want])?;
                    self.state = IpcState::Body(left - n as u64);
                    return Ok(n);
                }
                IpcState::Message => {
                    self.next_message()?;
                    if self.pending.is_empty() {
                        return Ok(0);
                    }
                }
            }
        }
    }
}

/// Copies an upload into a new file at `path` (mode 0600). The client's side breaking off is a
/// 400; the server's side failing (a full disk) a 500 — neither names the file.
/// Copies a CSV upload to `path`, stopping with a 413 past `max_bytes` (the import's file-size
/// limit), so a huge upload cannot fill the disk before the import refuses it.
fn spool(upload: &mut impl Read, path: &Path, max_bytes: u64) -> Result<(), ApiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let stored = |e: &std::io::Error| {
        ApiError::internal(
            format!("cannot store the upload: {}", crate::io_kind(e)),
            &format_args!("{}: {e}", path.display()),
        )
    };
    // One left by a daemon that stopped mid-upload would be in the way (the name is the
    // activity's, which may write again).
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| stored(&e))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match upload.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ApiError::bad_request(format!("the upload broke off: {e}"))),
        };
        total = total.saturating_add(n as u64);
        if total > max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the CSV upload is larger than the maximum of {} (csv import limit `max_file_bytes`, `[import] max_file` in capstan.toml)",
                    capstan_core::quantity::Memory::from_bytes(max_bytes)
                ),
            ));
        }
        f.write_all(&buf[..n]).map_err(|e| stored(&e))?;
    }
    f.flush().map_err(|e| stored(&e))
}

pub async fn write_data(
    State(s): State<AppState>,
    principal: Principal,
    ApiPath((project, dataset)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let activity = principal.allow(&s, &project, &dataset, true)?;
    let uploader = match &principal {
        Principal::User(c) => c.name.clone(),
        Principal::Activity { .. } => String::new(),
    };
    let declared = known_dataset(&s, &project, &dataset)?;
    let csv = upload_is_csv(&headers)?;
    // An activity's output is staged until the activity succeeds; a user's write is
    // committed as soon as it is whole.
    let stage = match activity {
        Some(id) => id.stage(),
        None => format!(
            "api-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(8);
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut refused = false;
        let mut drained = 0usize;
        while let Some(chunk) = stream.next().await {
            let item = chunk.map_err(|e| e.to_string());
            if item.is_err() {
                let _ = tx.send(item).await;
                break;
            }
            if refused {
                // The write was refused (a schema mismatch, say): read the rest of the upload
                // anyway, up to a point, so the client gets the refusal rather than a reset.
                drained += item.as_ref().map_or(0, |b| b.len());
                if drained > 256 << 20 {
                    break;
                }
                continue;
            }
            refused = tx.send(item).await.is_err();
        }
    });
    let data = s.clone();
    let (p, d, st) = (project.clone(), dataset.clone(), stage.clone());
    let rows = tokio::task::spawn_blocking(move || -> Result<u64, ApiError> {
        let store = &data.data.store;
        let check = |schema: &capstan_data::arrow::datatypes::Schema| -> Result<(), ApiError> {
            let declared: Vec<_> = declared
                .iter()
                .filter_map(|(c, t)| capstan_data::parse_type(t).map(|t| (c.clone(), t)))
                .collect();
            if declared.is_empty() {
                return Ok(());
            }
            capstan_data::check_schema(&capstan_data::schema_of(&declared), schema).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    format!("dataset `{p}/{d}`: {e}"),
                )
            })
        };
        let mut reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        if csv {
            // CSV goes through the same checked import as `capstan dataset import`, from a
            // file only this daemon's user can read, in the instance's own state (the stage
            // names an activity of this instance: another instance's uploads never meet it).
            // No message names it.
            let uploads = data.engine.root().join("state").join("uploads");
            let made = {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&uploads)
            };
            if let Err(e) = made {
                return Err(ApiError::internal(
                    format!("cannot store the upload: {}", crate::io_kind(&e)),
                    &format_args!("{}: {e}", uploads.display()),
                ));
            }
            let tmp = uploads.join(format!("{st}.csv"));
            let limits = capstan_data::csv_import::ImportLimits::of(&data.engine.home());
            let result = (|| {
                spool(&mut reader, &tmp, limits.max_file_bytes)?;
                let schema =
                    capstan_data::csv_import::infer_with(&tmp, &[], &limits).map_err(csv_error)?;
                check(&schema)?;
                let mut w = store
                    .stage(&p, &d, &st, schema.clone())
                    .map_err(ApiError::from)?;
                capstan_data::csv_import::read_with(&tmp, &schema, &limits, |b| w.write(&b))
                    .map_err(csv_error)?;
                w.finish().map_err(ApiError::from)
            })();
            let _ = std::fs::remove_file(&tmp);
            return result;
        }
        let mut guarded = IpcGuard::new(&mut reader);
        let refused = guarded.refused.clone();
        // A batch too large for the guard is 413, saying so; anything else the reader cannot
        // take is not an Arrow stream.
        let too_large = |e: &dyn std::fmt::Display, what: &str| match refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(IpcRefusal::Batch(why)) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", why)
            }
            Some(IpcRefusal::Metadata(why)) => ApiError::bad_request(format!("{what}: {why}")),
            None => ApiError::bad_request(format!("{what}: {e}")),
        };
        let stream = StreamReader::try_new(&mut guarded, None)
            .map_err(|e| too_large(&e, "the body is not an Arrow IPC stream"))?;
        let schema = stream.schema();
        check(&schema)?;
        let mut w = store.stage(&p, &d, &st, schema).map_err(ApiError::from)?;
        for b in stream {
            let b = b.map_err(|e| {
                store.discard(&p, &d, &st);
                too_large(&e, "the Arrow stream broke off")
            })?;
            w.write(&b).map_err(ApiError::from)?;
        }
        w.finish().map_err(ApiError::from)
    })
    .await
    .map_err(|e| ApiError::internal("the write failed", &e))?;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            s.data.store.discard(&project, &dataset, &stage);
            return Err(e);
        }
    };
    let committed = match activity {
        Some(id) => {
            s.data.count(id, &dataset, rows, false);
            false
        }
        None => s
            .data
            .store
            .commit(
                &project,
                &dataset,
                &stage,
                &capstan_data::Provenance {
                    written_by: capstan_data::WrittenBy::Import {
                        user: uploader,
                        file: None,
                    },
                    inputs: Default::default(),
                    definition: Default::default(),
                },
            )
            .map_err(ApiError::from)?
            .is_some(),
    };
    Ok(Json(
        json!({"project": project, "dataset": dataset, "rows": rows, "committed": committed}),
    ))
}
