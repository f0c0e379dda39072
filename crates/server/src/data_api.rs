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
use axum::extract::{FromRequestParts, Path as UrlPath, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use capstan_core::job::JobState;
use capstan_data::arrow::csv::WriterBuilder as CsvWriterBuilder;
use capstan_data::arrow::ipc::reader::StreamReader;
use capstan_data::arrow::ipc::writer::StreamWriter;
use capstan_data::{DataError, DatasetStore, ParquetStore};
use capstan_engine::backend::{ActivitySpec, DataAccess};
use capstan_engine::{Caller, DataPlane, IoSummary};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{ApiError, AppState, Auth};

pub const TOKEN_PREFIX: &str = "capa_";

/// One attempt of one activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActivityId {
    pub job: i64,
    pub idx: i64,
    pub attempt: i64,
}

impl ActivityId {
    fn stage(&self) -> String {
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

    fn has_data(&self, project: &str, dataset: &str) -> bool {
        matches!(self.store.info(project, dataset), Ok(Some(_)))
    }

    fn end(&self, spec: &ActivitySpec, succeeded: bool) -> Result<IoSummary, String> {
        let id = ActivityId {
            job: spec.job_id,
            idx: spec.idx,
            attempt: spec.attempt,
        };
        for output in &spec.outputs {
            if succeeded {
                self.store
                    .commit(&spec.project, output, &id.stage())
                    .map_err(|e| format!("dataset `{output}`: {e}"))?;
            } else {
                self.store.discard(&spec.project, output, &id.stage());
            }
        }
        Ok(self
            .io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .unwrap_or_default())
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

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer TOKEN` header"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer TOKEN`"))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Principal, ApiError> {
        let token = bearer(parts)?;
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
        let attempt = engine.activity_attempt(id.job, id.idx);
        let live = matches!(job.state, JobState::Starting | JobState::Running)
            && attempt == Some(id.attempt);
        if !live {
            return Err(expired(format!(
                "token expired: activity {}-{} of job {} has ended ({})",
                id.job, id.idx, id.job, job.state
            )));
        }
        let home = engine.home();
        let (inputs, outputs) = home
            .recipe(&job.project, &job.recipe)
            .map(|(_, r)| {
                (
                    r.inputs.iter().map(|i| i.value.clone()).collect(),
                    r.outputs.iter().map(|o| o.value.clone()).collect(),
                )
            })
            .unwrap_or_default();
        Ok(Principal::Activity {
            id,
            project: job.project,
            recipe: job.recipe,
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
    /// May this caller read (or write) `project/dataset`? Returns the activity to count for.
    fn allow(
        &self,
        project: &str,
        dataset: &str,
        write: bool,
    ) -> Result<Option<ActivityId>, ApiError> {
        match self {
            Principal::User(_) => Ok(None),
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
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "recipe `{p}/{recipe}` may not {verb} dataset `{project}/{dataset}`: it declares {kind} {}",
                            list_or_none(declared)
                        ),
                    ));
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
            DataError::UnknownColumn { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m)
            }
            DataError::Schema { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m)
            }
            DataError::Arrow(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the data is not a valid Arrow stream: {m}"),
            ),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
        }
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
    UrlPath(project): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    if let Principal::Activity { .. } = principal {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "activity tokens reach only their recipe's datasets",
        ));
    }
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
    UrlPath((project, dataset)): UrlPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    known_dataset(&s, &project, &dataset)?;
    principal.allow(&project, &dataset, false)?;
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
pub struct ReadQuery {
    format: Option<String>,
    columns: Option<String>,
    limit: Option<usize>,
}

/// Bytes into an HTTP body from a blocking writer.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
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

pub async fn read_data(
    State(s): State<AppState>,
    principal: Principal,
    UrlPath((project, dataset)): UrlPath<(String, String)>,
    q: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    known_dataset(&s, &project, &dataset)?;
    let counted = principal.allow(&project, &dataset, false)?;
    let csv = match q.format.as_deref() {
        None | Some("arrow") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown format `{other}` (expected arrow or csv)"
            )));
        }
    };
    let columns: Option<Vec<String>> = q.columns.map(|c| {
        c.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
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

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A blocking reader over an HTTP body's chunks.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
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

pub async fn write_data(
    State(s): State<AppState>,
    principal: Principal,
    UrlPath((project, dataset)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let declared = known_dataset(&s, &project, &dataset)?;
    let activity = principal.allow(&project, &dataset, true)?;
    let csv = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"));
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
            // CSV goes through the same checked import as `capstan dataset import`.
            let tmp = std::env::temp_dir().join(format!("capstan-upload-{st}.csv"));
            let mut f = std::fs::File::create(&tmp).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            std::io::copy(&mut reader, &mut f)
                .map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
            let result = (|| {
                let schema = capstan_data::csv_import::infer(&tmp, &[]).map_err(|e| match e {
                    capstan_data::csv_import::ImportError::BadLines { lines, total, .. } => {
                        ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "invalid",
                            format!(
                                "{total} bad line(s) in the CSV: {}",
                                lines
                                    .iter()
                                    .map(|l| format!("line {}: {}", l.line, l.message))
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            ),
                        )
                    }
                    other => ApiError::bad_request(other.to_string()),
                })?;
                check(&schema)?;
                let mut w = store
                    .stage(&p, &d, &st, schema.clone())
                    .map_err(ApiError::from)?;
                capstan_data::csv_import::read(&tmp, &schema, |b| w.write(&b))
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                w.finish().map_err(ApiError::from)
            })();
            let _ = std::fs::remove_file(&tmp);
            return result;
        }
        let stream = StreamReader::try_new(&mut reader, None).map_err(|e| {
            ApiError::bad_request(format!("the body is not an Arrow IPC stream: {e}"))
        })?;
        let schema = stream.schema();
        check(&schema)?;
        let mut w = store.stage(&p, &d, &st, schema).map_err(ApiError::from)?;
        for b in stream {
            let b = b.map_err(|e| {
                store.discard(&p, &d, &st);
                ApiError::bad_request(format!("the Arrow stream broke off: {e}"))
            })?;
            w.write(&b).map_err(ApiError::from)?;
        }
        w.finish().map_err(ApiError::from)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
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
            .commit(&project, &dataset, &stage)
            .map_err(ApiError::from)?,
    };
    Ok(Json(
        json!({"project": project, "dataset": dataset, "rows": rows, "committed": committed}),
    ))
}
