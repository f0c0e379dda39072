//! capstan's REST API under `/api/v1`. The only crate that knows HTTP.
//!
//! Every endpoint but `health` and `openapi.json` takes a bearer token (`Authorization: Bearer
//! TOKEN`, the scheme in any case): one of a user's tokens from `users.toml`, or the daemon's
//! local token (written to `state/daemon.json` for the CLI on the same machine). Errors are JSON
//! `{"error": {"code", "message"}}`, mapped from engine errors in exactly one place
//! ([`ApiError`]), and never name a file of the server.
//!
//! Input is strict, and `openapi.json` says exactly what is taken (`scripts/schemathesis` checks
//! the two agree): a JSON body must say `Content-Type: application/json` and may not repeat a key
//! ([`StrictJson`]); unknown fields and query parameters, NUL bytes in strings a process would
//! get, and malformed values are 400 naming the field; a well-formed value the home refuses is
//! 422; a wrong content type is 415.

pub mod data_api;
pub mod gateway;
mod models_api;
mod tensorboard_api;
pub mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use bytes::Bytes;
use capstan_core::flow::BuildMode;
use capstan_core::job::JobState;
use capstan_core::quantity::Duration as CDuration;
use capstan_core::resolve::RunRequest;
use capstan_engine::build::BuildRequest;
use capstan_engine::record;
use capstan_engine::{Caller, Engine, EngineError, JobDetail};
use capstan_store::{JobFilter, JobRow};
use serde::Deserialize;
use serde_json::{Value, json};

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub data: Arc<data_api::DataPlaneImpl>,
    /// SHA-256 of the daemon's local token.
    pub local_token_sha256: Arc<String>,
    /// The notebook kernels the Jupyter gateway relays.
    pub kernels: Arc<gateway::Kernels>,
    /// The web UI's signed-in sessions.
    pub ui_sessions: Arc<ui::Sessions>,
    /// Cluster tests run by the daemon (the binary's tester; none in tests of this crate).
    pub cluster_tests: Arc<capstan_engine::cluster_test::ClusterTests>,
}

/// One route of the API: a method and a path, and the handler that serves them.
struct Endpoint {
    method: Method,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

/// An endpoint whose handler is routed for exactly `method`, so the two cannot disagree.
fn at<H, T>(method: Method, path: &'static str, handler: H) -> Endpoint
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
    Endpoint {
        method,
        path,
        handler: on(filter, handler),
    }
}

/// Every endpoint of the API, the one list that both [`router`] and [`routes`] are made from.
fn endpoints() -> Vec<Endpoint> {
    vec![
        at(Method::GET, "/api/v1/health", health),
        at(Method::GET, "/api/v1/openapi.json", openapi),
        at(Method::GET, "/api/v1/whoami", whoami),
        at(Method::GET, "/api/v1/jobs", list_jobs),
        at(Method::POST, "/api/v1/jobs", submit),
        at(Method::GET, "/api/v1/jobs/{id}", show_job),
        at(Method::POST, "/api/v1/jobs/{id}/cancel", cancel),
        at(Method::GET, "/api/v1/jobs/{id}/logs", logs),
        at(Method::POST, "/api/v1/projects/{project}/builds", build),
        at(Method::GET, "/api/v1/schedules", list_schedules),
        at(Method::GET, "/api/v1/workloads", list_workloads),
        at(
            Method::POST,
            "/api/v1/clusters/{cluster}/tests",
            start_cluster_test,
        ),
        at(Method::GET, "/api/v1/cluster-tests/{id}", show_cluster_test),
        at(
            Method::POST,
            "/api/v1/workloads/leftovers/remove",
            remove_leftovers,
        ),
        at(
            Method::GET,
            "/api/v1/projects/{project}/datasets",
            data_api::list_datasets,
        ),
        at(
            Method::GET,
            "/api/v1/projects/{project}/datasets/{dataset}",
            data_api::dataset_info,
        ),
        at(
            Method::GET,
            "/api/v1/projects/{project}/datasets/{dataset}/data",
            data_api::read_data,
        ),
        at(
            Method::PUT,
            "/api/v1/projects/{project}/datasets/{dataset}/data",
            data_api::write_data,
        ),
        at(
            Method::PUT,
            "/api/v1/projects/{project}/models/{model}/staged",
            models_api::stage_version,
        ),
        at(
            Method::GET,
            "/api/v1/projects/{project}/models/{model}/versions/{version}",
            models_api::download_version,
        ),
        at(
            Method::POST,
            "/api/v1/projects/{project}/models/{model}/evaluations",
            models_api::stage_evaluation,
        ),
        at(
            Method::PUT,
            "/api/v1/jobs/{id}/activities/{index}/tensorboard",
            tensorboard_api::upload,
        ),
        at(
            Method::GET,
            "/api/v1/jobs/{id}/tensorboard",
            tensorboard_api::download,
        ),
    ]
}

/// The `(method, path)` of every route [`router`] serves (paths as in openapi.json, `{param}`).
pub fn routes() -> Vec<(Method, &'static str)> {
    endpoints()
        .into_iter()
        .map(|e| (e.method, e.path))
        .collect()
}

/// A router that answers only `GET /api/v1/health`: what `capstan cluster test` listens with
/// on the address a Docker engine's containers reach this machine at, to see that they do.
pub fn probe_router() -> Router {
    Router::new().route(
        "/api/v1/health",
        axum::routing::get(|| async { Json(json!({"status": "ok"})) }),
    )
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    endpoints()
        .into_iter()
        .fold(Router::new(), |r, e| r.route(e.path, e.handler))
        .merge(gateway::routes())
        .merge(ui::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// An API error: status, a stable code, a message in the user's terms.
///
/// Messages never carry a path of the server's filesystem: an error that would ([`ApiError::internal`])
/// is logged whole and answered with what went wrong only.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A well-formed request that asks for what cannot be (a value above its maximum, say).
    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// A failure of the server itself: `message` says what failed, in words a client may see;
    /// `detail` (which may name files of the server) goes to the daemon's log only.
    fn internal(message: impl Into<String>, detail: &dyn std::fmt::Display) -> ApiError {
        let message = message.into();
        tracing::error!(error = %detail, "internal error: {message}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{message} (the daemon's log has the details)"),
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let message = e.to_string();
        match e {
            EngineError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            EngineError::Invalid { details, .. } => ApiError {
                details: Some(Value::Array(
                    details.iter().map(record::error_json).collect(),
                )),
                ..ApiError::invalid(message)
            },
            EngineError::Denied(_) => ApiError::forbidden(message),
            EngineError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            EngineError::NoBackend(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_backend", message)
            }
            EngineError::Store(_) => ApiError::internal("the state database failed", &message),
            EngineError::Io { ref source, .. } => ApiError::internal(
                format!("cannot prepare the job's folder: {}", io_kind(source)),
                &message,
            ),
        }
    }
}

/// An I/O error in words that name no file (`std::io::Error`'s own message names none either,
/// but the OS's text for some kinds is vague, so the kind comes first).
pub(crate) fn io_kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "a file is missing".into(),
        K::PermissionDenied => "permission denied".into(),
        K::StorageFull => "no space left on the device".into(),
        K::AlreadyExists => "a file already exists".into(),
        _ => {
            // The OS's message (`os error N` and its text), never a path: io::Error carries none.
            e.to_string()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(d) = self.details {
            body["error"]["details"] = d;
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body is larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {}", r.body_text()))
        }
    }
}

/// A path parameter, or a JSON 400 saying why it is not one.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(ApiPath(t)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// The query string, or a JSON 400 naming the parameter that is wrong (an unknown one too:
/// the query structs deny unknown fields).
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(t)) => Ok(ApiQuery(t)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// The media type of a request's `Content-Type`, lowercased, without its parameters; `None`
/// when there is none.
pub(crate) fn media_type(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        ApiError::unsupported_media_type("the Content-Type header is not readable text")
    })?;
    let essence = text.split(';').next().unwrap_or("").trim();
    Ok(Some(essence.to_ascii_lowercase()))
}

/// A JSON request body, read strictly: `Content-Type: application/json` (else 415), at most
/// [`MAX_BODY`] bytes (else 413), and exactly one JSON value in which no object has a key twice
/// (else 400 naming it: serde_json would keep the last one silently).
pub struct StrictJson(pub Value);

impl<S: Send + Sync> FromRequest<S> for StrictJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<StrictJson, ApiError> {
        match media_type(req.headers())?.as_deref() {
            Some(t)
                if t == "application/json"
                    || (t.starts_with("application/") && t.ends_with("+json")) => {}
            Some(other) => {
                return Err(ApiError::unsupported_media_type(format!(
                    "unsupported Content-Type `{other}`: the body must be `application/json`"
                )));
            }
            None => {
                return Err(ApiError::unsupported_media_type(
                    "missing Content-Type: the body must be `application/json`",
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await?;
        parse_json_strictly(&bytes).map(StrictJson)
    }
}

/// One JSON value, refusing duplicate keys at any depth (naming the key by its path).
pub fn parse_json_strictly(bytes: &[u8]) -> Result<Value, ApiError> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue {
        path: String::new(),
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v))
    .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// A JSON value at `path` (`env.KEY`, `list[2]`; empty at the top).
struct StrictValue {
    path: String,
}

impl StrictValue {
    fn child(&self, key: &str) -> StrictValue {
        StrictValue {
            path: if self.path.is_empty() {
                key.to_string()
            } else {
                format!("{}.{key}", self.path)
            },
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(n.into())
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(n.into())
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue {
            path: format!("{}[{}]", self.path, items.len()),
        })? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = self.child(&key);
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate key `{}`",
                    child.path
                )));
            }
            let value = map.next_value_seed(child)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// The token of the request's `Authorization` header. The scheme is `Bearer`, in any case
/// (auth schemes are case-insensitive, RFC 7235), then whitespace and the token.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer TOKEN` header"))?;
    if values.next().is_some() {
        return Err(ApiError::unauthorized(
            "more than one Authorization header: send one, `Authorization: Bearer TOKEN`",
        ));
    }
    let malformed = || ApiError::unauthorized("the Authorization header must be `Bearer TOKEN`");
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = text
        .trim_start_matches([' ', '\t'])
        .split_once([' ', '\t'])
        .ok_or_else(malformed)?;
    let token = token.trim_matches([' ', '\t']);
    // `token` is the scheme Jupyter Server's gateway client sends (`GatewayClient.auth_token`).
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
    if !known || token.is_empty() || token.contains([' ', '\t']) {
        return Err(malformed());
    }
    Ok(token)
}

/// The user (or the daemon's local caller) a request's bearer token names.
fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Caller, ApiError> {
    let token = bearer_token(headers)?;
    if token.starts_with(data_api::TOKEN_PREFIX) {
        return Err(ApiError::forbidden(
            "activity tokens reach only their recipe's datasets",
        ));
    }
    caller_for_hash(&capstan_core::token::hash_token(token), state)
        .ok_or_else(|| ApiError::unauthorized("unknown token"))
}

/// The caller whose token has this SHA-256: the daemon's local caller, or a user of the home
/// now (the web UI's sessions keep only the hash, and ask again on each request).
pub(crate) fn caller_for_hash(hash: &str, state: &AppState) -> Option<Caller> {
    if hash == state.local_token_sha256.as_str() {
        return Some(Caller {
            name: "local".into(),
            admin: true,
            in_home: false,
        });
    }
    let home = state.engine.home();
    let user = home
        .users
        .values()
        .find(|u| u.tokens.iter().any(|t| t.sha256 == hash))?;
    Some(Caller {
        name: user.name.clone(),
        admin: user.admin,
        in_home: true,
    })
}

/// The authenticated caller.
pub struct Auth(pub Caller);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Auth, ApiError> {
        authenticate(&parts.headers, state).map(Auth)
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint (see /api/v1/openapi.json)",
    )
}

/// Says the daemon is up, to anyone. Only an authenticated caller learns its version, and only
/// an admin where its home is.
async fn health(State(s): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let mut body = json!({"status": "ok"});
    if let Ok(caller) = authenticate(&headers, &s) {
        body["version"] = json!(env!("CARGO_PKG_VERSION"));
        if caller.admin {
            body["home"] = json!(s.engine.root().display().to_string());
        }
    }
    Json(body)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn whoami(Auth(c): Auth) -> Json<Value> {
    Json(json!({"user": c.name, "admin": c.admin}))
}

/// Refuses a string that a recipe's process would get as an argument, an environment variable
/// or a path with a NUL byte in it: the OS cannot carry one, so the run would fail later.
fn no_nul(field: &str, s: &str) -> Result<(), ApiError> {
    if s.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "field `{field}` contains a NUL byte"
        )));
    }
    Ok(())
}

/// A JSON number that is a whole number at least 0, written as one (`90`) or not (`90.0`, which
/// JSON Schema's `integer` admits too).
fn whole_number(n: &serde_json::Number) -> Option<u64> {
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    let f = n.as_f64()?;
    // Up to 2^53, where every whole f64 is exact: far above any limit the API has.
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= 9_007_199_254_740_992.0)
        .then_some(f as u64)
}

/// Whether `s` is a duration as the API takes one: whole seconds (`90`), or numbers with units
/// (`90s`, `15m`, `2h`, `1d`, `1h30m`), nothing around them. The pattern of `timeout` in
/// openapi.json, `^([0-9]+|([0-9]+[smhd])+)$`, says the same.
fn is_duration_syntax(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let mut digits = 0;
    for b in s.bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b's' | b'm' | b'h' | b'd' if digits > 0 => digits = 0,
            _ => return false,
        }
    }
    digits == 0
}

/// The fields of a submission, checked one by one for precise messages: 400 for a body that is
/// not what openapi.json describes (unknown or mistyped fields, NUL bytes, a malformed duration),
/// 422 for a well-formed value beyond its limit.
fn parse_submit(v: &Value) -> Result<(String, String, RunRequest), ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let (project, recipe, request) = parse_request(obj, &["project", "recipe"])?;
    let missing = |k: &str| ApiError::bad_request(format!("missing field `{k}`"));
    Ok((
        project.ok_or_else(|| missing("project"))?,
        recipe.ok_or_else(|| missing("recipe"))?,
        request,
    ))
}

/// The run settings of a submission or a build (and `project` and `recipe` where `leading`
/// allows them), refusing fields not in `leading` or the settings.
fn parse_request(
    obj: &serde_json::Map<String, Value>,
    leading: &[&'static str],
) -> Result<(Option<String>, Option<String>, RunRequest), ApiError> {
    let fields: Vec<&str> = leading
        .iter()
        .copied()
        .chain([
            "exec_config",
            "cluster",
            "spark_config",
            "code_env",
            "timeout",
            "env",
        ])
        .collect();
    if let Some(k) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        let hint = capstan_core::suggest(k, fields.iter().copied())
            .map_or(String::new(), |s| format!(" (did you mean `{s}`?)"));
        return Err(ApiError::bad_request(format!(
            "unknown field `{}`{hint}",
            k.escape_debug()
        )));
    }
    let string = |k: &str| -> Result<Option<String>, ApiError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                no_nul(k, s)?;
                Ok(Some(s.clone()))
            }
            Some(other) => Err(ApiError::bad_request(format!(
                "field `{k}` must be a string, not {other}"
            ))),
        }
    };
    let project = string("project")?;
    let recipe = string("recipe")?;
    let exec_config = string("exec_config")?;
    let cluster = string("cluster")?;
    let spark_config = string("spark_config")?;
    let code_env = string("code_env")?;
    let timeout = match obj.get("timeout") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            CDuration::checked_from_secs(whole_number(n).ok_or_else(|| {
                ApiError::bad_request(
                    "field `timeout` must be a whole number of seconds or a duration like \"30m\"",
                )
            })?)
            .map_err(|e| ApiError::invalid(format!("field `timeout`: {e}")))?,
        ),
        Some(Value::String(s)) => {
            if !is_duration_syntax(s) {
                return Err(ApiError::bad_request(format!(
                    "field `timeout`: `{}` is not a duration like `90s`, `15m`, `2h` or `1h30m`",
                    s.escape_debug()
                )));
            }
            // Well-formed: what is left to refuse is a duration above the maximum.
            Some(
                CDuration::parse(s)
                    .map_err(|e| ApiError::invalid(format!("field `timeout`: {e}")))?,
            )
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "field `timeout` must be a number of seconds or a duration like \"30m\"",
            ));
        }
    };
    let env = match obj.get("env") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                if k.is_empty() || k.contains(['=', '\0']) {
                    return Err(ApiError::bad_request(format!(
                        "field `env`: `{}` is not a variable name (it must be non-empty, without `=` or NUL bytes)",
                        k.escape_debug()
                    )));
                }
                match v {
                    Value::String(s) => {
                        no_nul(&format!("env.{k}"), s)?;
                        Ok((k.clone(), s.clone()))
                    }
                    other => Err(ApiError::bad_request(format!(
                        "field `env.{k}` must be a string, not {other}"
                    ))),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "field `env` must be an object of strings",
            ));
        }
    };
    let request = RunRequest {
        user: None,
        exec_config,
        cluster,
        spark_config,
        code_env,
        timeout,
        env,
    };
    Ok((project, recipe, request))
}

/// A build's body: the datasets, the mode and `dry_run`, then the settings of a submission,
/// which apply to every activity.
fn parse_build(v: &Value) -> Result<BuildRequest, ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let mut rest = obj.clone();
    let targets = match rest.remove("targets") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| match t {
                Value::String(s) => {
                    no_nul("targets", s)?;
                    Ok(s.clone())
                }
                other => Err(ApiError::bad_request(format!(
                    "field `targets` must be a list of dataset names, not {other}"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "field `targets` must be a list of dataset names, not {other}"
            )));
        }
    };
    let mode = match rest.remove("mode") {
        None | Some(Value::Null) => BuildMode::Smart,
        Some(Value::String(m)) => BuildMode::parse(&m).ok_or_else(|| {
            ApiError::bad_request(format!(
                "field `mode`: `{}` is not a build mode (expected one of: {})",
                m.escape_debug(),
                BuildMode::NAMES.join(", ")
            ))
        })?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "field `mode` must be a string, not {other}"
            )));
        }
    };
    let dry_run = match rest.remove("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "field `dry_run` must be true or false, not {other}"
            )));
        }
    };
    let (_, _, request) = parse_request(&rest, &[])?;
    Ok(BuildRequest {
        targets,
        mode,
        dry_run,
        request,
    })
}

/// Plans a build and, unless it is a dry run or everything is up to date, queues its job:
/// 201 with the job, else 200 with `job: null`.
async fn build(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiPath(project): ApiPath<String>,
    StrictJson(body): StrictJson,
) -> Result<Response, ApiError> {
    no_nul("project", &project)?;
    let req = parse_build(&body)?;
    let answer = s.engine.build(&c, &project, req)?;
    let status = if answer.job.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let steps: Vec<Value> = answer
        .steps
        .iter()
        .map(|st| {
            json!({
                "recipe": st.recipe,
                "runs": st.runs,
                "why": st.why,
                "needs": st.needs,
                "kind": st.kind.map(|k| k.as_str()),
                "exec_config": st.exec_config,
                "cluster": st.cluster,
            })
        })
        .collect();
    let body = json!({
        "project": answer.project,
        "mode": answer.mode.as_str(),
        "targets": answer.targets,
        "steps": steps,
        "job": answer.job.as_ref().map(job_json),
    });
    Ok((status, Json(body)).into_response())
}

/// Every schedule the caller may read, with its next and last runs.
async fn list_schedules(State(s): State<AppState>, Auth(c): Auth) -> Result<Json<Value>, ApiError> {
    let list = s.engine.schedules(&c)?;
    Ok(Json(Value::Array(
        list.iter()
            .map(|v| {
                json!({
                    "project": v.project,
                    "name": v.name,
                    "cron": v.cron,
                    "time_zone": v.time_zone,
                    "build": v.build,
                    "mode": v.mode.as_str(),
                    "user": v.user,
                    "catch_up": v.catch_up,
                    "enabled": v.enabled,
                    "next_run": ms_to_rfc3339(v.next_run),
                    "last_run": ms_to_rfc3339(v.last_slot),
                    "last_job": v.last_job,
                    "last_job_state": v.last_job_state.map(|s| s.as_str()),
                    "note": v.note,
                })
            })
            .collect(),
    )))
}

async fn list_workloads(State(s): State<AppState>, Auth(c): Auth) -> Result<Json<Value>, ApiError> {
    Ok(Json(workloads_json(&s.engine.workloads(&c).await?)))
}

async fn remove_leftovers(
    State(s): State<AppState>,
    Auth(c): Auth,
) -> Result<Json<Value>, ApiError> {
    let said = s.engine.remove_leftovers(&c).await?;
    Ok(Json(json!({ "said": said })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterTestQuery {
    /// The execution configuration to test with (default: the tester's choice, said).
    exec_config: Option<String>,
}

async fn start_cluster_test(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiPath(cluster): ApiPath<String>,
    ApiQuery(q): ApiQuery<ClusterTestQuery>,
) -> Result<Response, ApiError> {
    let run = s
        .cluster_tests
        .start(&c, &s.engine.home(), &cluster, q.exec_config)?;
    Ok((StatusCode::ACCEPTED, Json(cluster_test_json(&run))).into_response())
}

async fn show_cluster_test(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)? as u64;
    let run = s.cluster_tests.get(&c, id)?;
    Ok(Json(cluster_test_json(&run)))
}

/// A cluster test run as the API answers it (and the web UI shows it).
pub(crate) fn cluster_test_json(run: &capstan_engine::cluster_test::TestRun) -> Value {
    use capstan_engine::cluster_test::TestLine;
    let lines: Vec<Value> = run
        .lines()
        .iter()
        .map(|l| {
            let text = l.to_string();
            match l {
                TestLine::Step {
                    ok,
                    what,
                    detail,
                    took_ms,
                } => json!({"kind": if *ok { "ok" } else { "fail" }, "what": what, "detail": detail, "took_ms": took_ms, "text": text}),
                TestLine::Skip { what, why } => {
                    json!({"kind": "skip", "what": what, "detail": why, "text": text})
                }
                TestLine::Note(n) => json!({"kind": "note", "detail": n, "text": text}),
                TestLine::Error(e) => json!({"kind": "error", "detail": e, "text": text}),
            }
        })
        .collect();
    let passed = run.passed();
    json!({
        "id": run.id,
        "cluster": run.cluster,
        "exec_config": run.exec_config,
        "user": run.user,
        "started_at": ms_to_rfc3339(Some(run.started_ms)),
        "done": passed.is_some(),
        "passed": passed,
        "lines": lines,
    })
}

/// The engines' workloads as `GET /api/v1/workloads` answers them (and the cluster page shows).
pub(crate) fn workloads_json(engines: &[capstan_engine::monitor::EngineView]) -> Value {
    Value::Array(
        engines
            .iter()
            .map(|e| {
                json!({
                    "kind": e.kind,
                    "engine": e.engine,
                    "error": e.error,
                    "workloads": e.workloads.iter().map(|v| {
                        let w = &v.workload;
                        json!({
                            "name": w.name,
                            "state": w.state,
                            "job_id": w.job(),
                            "activity": w.key.map(|k| k.idx),
                            "attempt": w.key.map(|k| k.attempt),
                            "user": v.job.as_ref().map(|j| j.user.clone()),
                            "project": v.job.as_ref().map(|j| j.project.clone()),
                            "recipe": v.job.as_ref().map(|j| j.recipe.clone()),
                            "job_state": v.job.as_ref().map(|j| j.state.as_str()),
                            "exec_config": v.job.as_ref().and_then(|j| j.exec_config.clone()),
                            "leftover": v.leftover,
                            "cpu_request": w.cpu_request,
                            "cpu_limit": w.cpu_limit,
                            "memory_request_bytes": w.memory_request,
                            "memory_limit_bytes": w.memory_limit,
                            "cpu_percent": w.usage.and_then(|u| u.cpu_percent),
                            "memory_bytes": w.usage.and_then(|u| u.memory_bytes),
                        })
                    }).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

async fn submit(
    State(s): State<AppState>,
    Auth(c): Auth,
    StrictJson(body): StrictJson,
) -> Result<Response, ApiError> {
    let (project, recipe, request) = parse_submit(&body)?;
    let job = s.engine.submit(&c, &project, &recipe, request)?;
    Ok((StatusCode::CREATED, Json(job_json(&job))).into_response())
}

fn ms_to_rfc3339(ms: Option<i64>) -> Value {
    match ms {
        Some(ms) if ms >= 0 => {
            let t = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
            Value::String(humantime_rfc3339(t))
        }
        _ => Value::Null,
    }
}

fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn job_json(j: &JobRow) -> Value {
    let duration_ms = match (j.started_at, j.finished_at) {
        (Some(s), Some(f)) => Some(f - s),
        _ => None,
    };
    json!({
        "id": j.id,
        "project": j.project,
        "recipe": j.recipe,
        "user": j.user,
        "state": j.state.as_str(),
        "exec_config": j.exec_config,
        "cluster": j.cluster,
        "kind": j.kind,
        "created_at": ms_to_rfc3339(Some(j.created_at)),
        "started_at": ms_to_rfc3339(j.started_at),
        "finished_at": ms_to_rfc3339(j.finished_at),
        "duration_ms": duration_ms,
        "exit_code": j.exit_code,
        "diagnosis": j.diagnosis,
        "peak_memory_bytes": j.peak_memory_bytes,
        "cpu_time_ms": j.cpu_time_ms,
        "io": j.io_json.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok()),
        "build": j.build_json.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok()),
    })
}

fn detail_json(d: &JobDetail) -> Value {
    let mut v = job_json(&d.job);
    v["request"] = serde_json::from_str(&d.job.request_json).unwrap_or(Value::Null);
    v["resolution"] = serde_json::from_str(&d.job.resolution_json).unwrap_or(Value::Null);
    v["events"] = d
        .events
        .iter()
        .map(|e| {
            json!({
                "at": ms_to_rfc3339(Some(e.at)),
                "state": e.state.as_str(),
                "message": e.message,
                "activity": e.activity.and_then(|i| d.activities.iter().find(|a| a.idx == i)).map(|a| a.name()),
            })
        })
        .collect();
    let name_of = |i: &i64| d.activities.iter().find(|a| a.idx == *i).map(|a| a.name());
    v["activities"] = d
        .activities
        .iter()
        .map(|a| {
            json!({
                "index": a.idx,
                "recipe": a.recipe,
                "name": a.name(),
                "part": a.part.map(|p| p.index + 1),
                "parts": a.part.map(|p| p.count),
                "state": a.state.as_str(),
                "attempt": a.attempt,
                "dir": a.dir,
                "log": a.dir.as_ref().map(|d| format!("{d}/log")),
                // Where it runs, in the backend's terms: `shim PID START`, `ENGINE|CONTAINER`,
                // `NAMESPACE|POD`.
                "backend_ref": a.backend_ref,
                "exit_code": a.exit_code,
                "signal": a.signal,
                "diagnosis": a.diagnosis,
                "peak_memory_bytes": a.peak_memory_bytes,
                "cpu_time_ms": a.cpu_time_ms,
                "started_at": ms_to_rfc3339(a.started_at),
                "finished_at": ms_to_rfc3339(a.finished_at),
                // A build's activity carries its own placement, plan and rows.
                "kind": a.kind.clone().unwrap_or_else(|| d.job.kind.clone()),
                "exec_config": if d.job.is_build() { a.exec_config.clone() } else { d.job.exec_config.clone() },
                "cluster": if d.job.is_build() { a.cluster.clone() } else { d.job.cluster.clone() },
                "needs": a.needs.iter().filter_map(name_of).collect::<Vec<_>>(),
                "why": a.why_json.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok()),
                "io": if d.job.is_build() { a.io_json.as_deref() } else { d.job.io_json.as_deref() }
                    .and_then(|t| serde_json::from_str::<Value>(t).ok()),
            })
        })
        .collect();
    v["usage"] = match &d.usage {
        Some(u) => json!({"cpu_percent": u.cpu_percent, "memory_bytes": u.memory_bytes}),
        None => Value::Null,
    };
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
}

async fn list_jobs(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut states = Vec::new();
    for name in q
        .state
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        states.push(JobState::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown state `{name}` (expected one of: {})",
                JobState::ALL.map(|s| s.as_str()).join(", ")
            ))
        })?);
    }
    let jobs = s.engine.jobs(
        &c,
        JobFilter {
            user: None,
            states,
            limit: Some(q.limit.unwrap_or(100).min(10_000)),
            ..JobFilter::default()
        },
    )?;
    Ok(Json(Value::Array(jobs.iter().map(job_json).collect())))
}

/// A job id: a positive whole number, in digits only (as openapi.json's `minimum: 1` says).
pub(crate) fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| id.parse::<i64>().ok())
        .flatten()
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{}` is not a job id (a positive number)",
                id.escape_debug()
            ))
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowQuery {
    /// Long poll: answer once the job has more events than this (or is over)…
    after_events: Option<u64>,
    /// …or after this many seconds (default 10, at most 20: under usual client timeouts).
    wait: Option<u64>,
}

/// The job. With `after_events`, the answer waits until the job has moved on (an event more
/// than the caller has seen, or a final state), so a client learns of a change as it happens
/// without polling.
async fn show_job(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ShowQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let Some(seen) = q.after_events else {
        let d = s.engine.job_detail(&c, id, true).await?;
        return Ok(Json(detail_json(&d)));
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.unwrap_or(10).min(20));
    // Subscribed before looking: a change between the look and the wait still wakes it.
    let mut changes = s.engine.changes();
    loop {
        changes.borrow_and_update();
        // Waiting clients want the change, not a 200 ms sample of CPU and memory.
        let d = s.engine.job_detail(&c, id, false).await?;
        if d.events.len() as u64 > seen || d.job.state.is_final() {
            return Ok(Json(detail_json(&d)));
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(Json(detail_json(&d))),
        }
    }
}

async fn cancel(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let state = s.engine.cancel(&c, id)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "state": state.as_str()})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    follow: Option<bool>,
    /// In a build: the activity whose log to read, by name (its recipe, or `RECIPE:N` for part
    /// N of a distributed search; default: the first activity).
    activity: Option<String>,
}

/// The job's log as text, one line per output line (`TIMESTAMP STREAM TEXT`, STREAM being `o`
/// or `e`). With `follow=true`, the response stays open and streams new lines until the job
/// ends.
async fn logs(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let follow = q.follow.unwrap_or(false);
    if let Some(a) = &q.activity {
        no_nul("activity", a)?;
    }
    s.engine.log_file(&c, id, q.activity.as_deref())?;
    let tail = LogTail::new(&s.engine, &c, id, q.activity.clone());
    let stream = futures_util::stream::unfold(tail, move |mut t| async move {
        loop {
            let (chunk, over) = t.read().await?;
            if let Some(bytes) = chunk {
                return Some((Ok::<_, std::io::Error>(bytes), t));
            }
            if over || !follow {
                return None;
            }
            t.wait().await;
        }
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static header"),
    );
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// A job's log read as it grows: what the API's `logs?follow=true` streams, and the web UI's
/// live log.
pub(crate) struct LogTail {
    engine: Engine,
    caller: Caller,
    id: i64,
    activity: Option<String>,
    file: Option<tokio::fs::File>,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl LogTail {
    pub(crate) fn new(engine: &Engine, caller: &Caller, id: i64, activity: Option<String>) -> Self {
        LogTail {
            changes: engine.changes(),
            engine: engine.clone(),
            caller: caller.clone(),
            id,
            activity,
            file: None,
        }
    }

    /// The next bytes written, if any now, and whether the activity is over (then, once this
    /// gives no more bytes, the log is whole). `None` when the job can no longer be read.
    pub(crate) async fn read(&mut self) -> Option<(Option<Bytes>, bool)> {
        use tokio::io::AsyncReadExt;
        // The job's state is read before the file: if it was final then, everything it wrote
        // is in the file, so reading to the end afterwards loses nothing.
        let (path, was_final) = self
            .engine
            .log_file(&self.caller, self.id, self.activity.as_deref())
            .ok()?;
        if self.file.is_none()
            && let Some(p) = &path
        {
            self.file = tokio::fs::File::open(p).await.ok();
        }
        let mut buf = vec![0u8; 64 * 1024];
        let n = match self.file.as_mut() {
            Some(f) => f.read(&mut buf).await.unwrap_or(0),
            None => 0,
        };
        if n > 0 {
            buf.truncate(n);
            return Some((Some(Bytes::from(buf)), was_final));
        }
        Some((None, was_final))
    }

    /// Until the job may have moved: a change of state as it happens, new lines within 100 ms.
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            _ = self.changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_795_828_000_123);
        assert_eq!(humantime_rfc3339(t), "2026-11-28T01:06:40.123Z");
        assert_eq!(
            humantime_rfc3339(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }

    /// openapi.json's `(METHOD, path)` pairs.
    fn documented() -> std::collections::BTreeSet<(String, String)> {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let mut out = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                // Path-item fields that are not operations.
                if ["summary", "description", "parameters", "servers"].contains(&method.as_str()) {
                    continue;
                }
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
        out
    }

    #[test]
    fn openapi_documents_exactly_the_routes_of_the_router() {
        let served: std::collections::BTreeSet<(String, String)> = routes()
            .into_iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(served.len(), routes().len(), "a route is listed twice");
        let documented = documented();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.json: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "openapi.json documents routes the router does not have: {unserved:?}"
        );
    }

    /// A daemon-less state on an empty home, enough for requests to reach the handlers.
    fn test_state(root: &std::path::Path) -> AppState {
        std::fs::create_dir_all(root).unwrap();
        std::fs::write(root.join("capstan.toml"), "").unwrap();
        let (home, _) = capstan_core::load_home(root).unwrap();
        let (engine, _starter) = Engine::open(root, home, Vec::new(), None).unwrap();
        AppState {
            engine,
            data: Arc::new(data_api::DataPlaneImpl::open(root, || [7; 32]).unwrap()),
            local_token_sha256: Arc::new(String::new()),
            kernels: Default::default(),
            ui_sessions: Default::default(),
            cluster_tests: Default::default(),
        }
    }

    /// Sends one request through the real router: its status, and whether the router's fallback
    /// (no route for the path) answered it.
    async fn send(app: &Router, method: &str, path: &str) -> (StatusCode, bool) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        // A value for each `{param}`, as a client would send.
        let uri = path
            .replace("{id}", "1")
            .replace("{project}", "p")
            .replace("{dataset}", "d");
        let request = axum::http::Request::builder()
            .method(method)
            .uri(&uri)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let fallback = status == StatusCode::NOT_FOUND
            && String::from_utf8_lossy(&body).contains("no such endpoint");
        (status, fallback)
    }

    #[tokio::test]
    async fn the_router_serves_what_openapi_documents_and_nothing_else() {
        let root =
            std::env::temp_dir().join(format!("capstan-server-routes-{}", std::process::id()));
        let app = router(test_state(&root));
        let documented = documented();
        assert!(!documented.is_empty());
        for (method, path) in &documented {
            let (status, fallback) = send(&app, method, path).await;
            assert!(
                !fallback && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented, but the router answers {status}{}",
                if fallback { " (no such route)" } else { "" }
            );
        }
        // The other methods on documented paths are not served (HEAD goes with GET, as in axum).
        let paths: std::collections::BTreeSet<&String> =
            documented.iter().map(|(_, p)| p).collect();
        for path in paths {
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                if documented.contains(&(method.to_string(), path.clone())) {
                    continue;
                }
                let (status, _) = send(&app, method, path).await;
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not in openapi.json"
                );
            }
        }
        // And a path nobody documented reaches the fallback, so the checks above can fail.
        assert_eq!(
            send(&app, "GET", "/api/v1/no-such-route").await,
            (StatusCode::NOT_FOUND, true)
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
