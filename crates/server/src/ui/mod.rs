//! The web UI under `/ui`: pages rendered on the server (minijinja templates), htmx for the
//! parts that change in place, and server-sent events for live logs, states and usage. Its
//! assets are vendored in `assets/` and embedded, so the daemon stays one binary that needs no
//! CDN, and nothing is built with Node.
//!
//! The UI calls the engine exactly as the REST API does (`Engine::jobs`, `job_detail`,
//! `submit`, `build`, `cancel`, `flow`), with the same caller, so a user sees in a page what
//! the API would show them, and no more. A person signs in with a capstan token; the UI keeps
//! only its hash, in a session named by an HttpOnly, SameSite=Strict cookie that expires, and
//! checks the token again on each request (a token removed from `users.toml` ends its
//! sessions). Every action is a POST carrying the session's CSRF token, from the UI's own
//! origin. Every page has a stable URL, its filters in the query string.

mod ansi;
mod flowgraph;
mod pages;
pub mod view;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use capstan_engine::{Caller, EngineError};
use serde_json::{Value, json};

use crate::AppState;

/// The vendored htmx (see `assets/README.md` to move it).
pub const HTMX: &str = "htmx-2.0.11.min.js";

/// The embedded assets: name, media type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        HTMX,
        "text/javascript; charset=utf-8",
        include_bytes!("assets/htmx-2.0.11.min.js"),
    ),
    (
        "capstan.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/capstan.css"),
    ),
    (
        "capstan.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/capstan.js"),
    ),
];

/// The templates, by name (`.html`, so minijinja escapes what they print).
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("jobs.html", include_str!("templates/jobs.html")),
    ("job.html", include_str!("templates/job.html")),
    (
        "job_summary.html",
        include_str!("templates/job_summary.html"),
    ),
    ("projects.html", include_str!("templates/projects.html")),
    ("project.html", include_str!("templates/project.html")),
    ("configs.html", include_str!("templates/configs.html")),
    ("dataset.html", include_str!("templates/dataset.html")),
    ("model.html", include_str!("templates/model.html")),
    ("kernels.html", include_str!("templates/kernels.html")),
    ("cluster.html", include_str!("templates/cluster.html")),
    (
        "cluster_test.html",
        include_str!("templates/cluster_test.html"),
    ),
    (
        "cluster_test_steps.html",
        include_str!("templates/cluster_test_steps.html"),
    ),
];

/// A session's life: a working day; signing in again starts a new one.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const COOKIE: &str = "capstan_session";

/// The assets' path: it changes with their content, so browsers may keep them for a year.
static ASSET_BASE: LazyLock<String> = LazyLock::new(|| {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, _, bytes) in ASSETS {
        h.update(name.as_bytes());
        h.update(bytes);
    }
    let hex: String = h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("/ui/assets/{hex}")
});

static TEMPLATE_ENV: LazyLock<minijinja::Environment<'static>> = LazyLock::new(|| {
    let mut env = minijinja::Environment::new();
    for (name, source) in TEMPLATES {
        // The templates are the crate's own and every one is rendered by its tests.
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("template {name}: {e}"));
    }
    view::register_filters(&mut env);
    env
});

/// The UI's routes (outside `/api/v1` and `openapi.json`: pages, not an API).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/jobs", get(pages::jobs))
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/jobs/{id}/summary", get(pages::job_summary))
        .route("/ui/jobs/{id}/stream", get(pages::job_stream))
        .route("/ui/jobs/{id}/log", get(pages::job_log))
        .route("/ui/jobs/{id}/cancel", post(pages::cancel))
        .route("/ui/projects", get(pages::projects))
        .route("/ui/projects/{project}", get(pages::project))
        .route("/ui/projects/{project}/build", post(pages::build))
        .route(
            "/ui/projects/{project}/recipes/{recipe}/run",
            post(pages::run_recipe),
        )
        .route(
            "/ui/projects/{project}/datasets/{dataset}",
            get(pages::dataset),
        )
        .route("/ui/projects/{project}/models/{model}", get(pages::model))
        .route("/ui/kernels", get(pages::kernels))
        .route("/ui/cluster", get(pages::cluster))
        .route("/ui/cluster/leftovers", post(pages::remove_leftovers))
        .route(
            "/ui/clusters/{cluster}/test",
            post(pages::start_cluster_test),
        )
        .route("/ui/cluster-tests/{id}", get(pages::cluster_test))
        .route(
            "/ui/cluster-tests/{id}/steps",
            get(pages::cluster_test_steps),
        )
        .route("/ui/configs", get(pages::configs))
        .route("/ui/assets/{version}/{name}", get(asset))
}

async fn asset(Path((version, name)): Path<(String, String)>) -> Response {
    let Some((_, media, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    // An old page asking for an earlier version gets today's, but not to keep.
    let cache = if ASSET_BASE.ends_with(&format!("/{version}")) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, *media),
            (header::CACHE_CONTROL, cache),
        ],
        *bytes,
    )
        .into_response()
}

/// The signed-in sessions of this daemon, in memory: a daemon restart signs everyone out
/// (their tokens still work), and no session outlives [`SESSION_TTL`].
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

#[derive(Clone)]
struct Session {
    token_sha256: String,
    csrf: String,
    expires: Instant,
}

impl Sessions {
    fn open(&self, token_sha256: String) -> Result<(String, String), UiError> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        map.insert(
            id.clone(),
            Session {
                token_sha256,
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        Ok((id, csrf))
    }

    fn get(&self, id: &str) -> Option<Session> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn close(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

fn random_hex() -> Result<String, UiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| UiError::internal("no randomness for a session", &e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The session id in the request's cookies.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The session cookie: only this site's requests carry it, scripts cannot read it.
fn session_cookie(id: &str, max_age: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    ))
    .expect("a cookie of hex digits")
}

/// Who is looking: the signed-in caller and their session's CSRF token.
pub struct Viewer {
    pub caller: Caller,
    pub csrf: String,
    session: String,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Viewer, UiError> {
        let sign_in = || UiError::SignIn {
            next: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/ui/".into()),
        };
        let id = session_id(&parts.headers).ok_or_else(sign_in)?;
        let session = state.ui_sessions.get(&id).ok_or_else(sign_in)?;
        // The token again, each time: one taken out of users.toml signs its sessions out.
        let caller = crate::caller_for_hash(&session.token_sha256, state).ok_or_else(sign_in)?;
        Ok(Viewer {
            caller,
            csrf: session.csrf,
            session: id,
        })
    }
}

impl Viewer {
    /// Refuses an action that does not carry this session's CSRF token, or that comes from
    /// another site (a browser always says where a POST comes from).
    fn check(&self, headers: &HeaderMap, csrf: Option<&str>) -> Result<(), UiError> {
        same_origin(headers)?;
        let sent = csrf
            .map(str::to_string)
            .or_else(|| {
                headers
                    .get("x-csrf-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        if !constant_time_eq(sent.as_bytes(), self.csrf.as_bytes()) {
            return Err(UiError::new(
                StatusCode::FORBIDDEN,
                "this form is from an earlier session: reload the page and try again",
            ));
        }
        Ok(())
    }
}

/// An `Origin` (or, without one, a `Referer`) that names another host than the request's.
fn same_origin(headers: &HeaderMap) -> Result<(), UiError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    match (host, from) {
        (Some(host), Some(from)) => {
            let authority = from
                .split_once("://")
                .map_or(from, |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or("");
            if authority.eq_ignore_ascii_case(host) {
                Ok(())
            } else {
                Err(UiError::new(
                    StatusCode::FORBIDDEN,
                    format!("refused: this request comes from {authority}, not from {host}"),
                ))
            }
        }
        _ => Ok(()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a page could not do, shown as a page (or, to htmx, as the fragment it swaps in).
#[derive(Debug)]
pub enum UiError {
    /// Not signed in (or no longer): to the sign-in page, then back to `next`.
    SignIn {
        next: String,
    },
    Page {
        status: StatusCode,
        message: String,
    },
}

impl UiError {
    fn new(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError::Page {
            status,
            message: message.into(),
        }
    }

    fn internal(message: &str, detail: &dyn std::fmt::Display) -> UiError {
        tracing::error!(error = %detail, "web UI: {message}");
        UiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{message} (the daemon's log has the details)"),
        )
    }
}

impl From<EngineError> for UiError {
    fn from(e: EngineError) -> UiError {
        let status = match &e {
            EngineError::NotFound(_) => StatusCode::NOT_FOUND,
            EngineError::Invalid { .. } | EngineError::NoBackend(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            EngineError::Denied(_) => StatusCode::FORBIDDEN,
            EngineError::Conflict(_) => StatusCode::CONFLICT,
            EngineError::Store(_) | EngineError::Io { .. } => {
                return UiError::internal("the engine failed", &e);
            }
        };
        UiError::new(status, e.to_string())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::SignIn { next } => {
                let to = format!("/ui/login?next={}", view::url_encode(&next));
                let mut r = Redirect::to(&to).into_response();
                // htmx follows redirects itself and would swap the sign-in page into a
                // fragment: have it load the page instead.
                if let Ok(v) = HeaderValue::from_str(&to) {
                    r.headers_mut().insert("hx-redirect", v);
                }
                r
            }
            UiError::Page { status, message } => {
                let body = render(
                    "error.html",
                    json!({"title": status.canonical_reason().unwrap_or("Error"), "status": status.as_u16(), "message": message}),
                )
                .map(|h| h.0)
                .unwrap_or(message);
                (status, no_cache(), Html(body)).into_response()
            }
        }
    }
}

fn no_cache() -> [(header::HeaderName, &'static str); 1] {
    [(header::CACHE_CONTROL, "no-cache")]
}

/// Renders template `name` with `ctx` (and what every page has: the asset path, htmx's name).
pub fn render(name: &str, mut ctx: Value) -> Result<Html<String>, UiError> {
    if let Value::Object(m) = &mut ctx {
        m.entry("assets").or_insert_with(|| json!(*ASSET_BASE));
        m.entry("htmx").or_insert_with(|| json!(HTMX));
    }
    let template = TEMPLATE_ENV
        .get_template(name)
        .map_err(|e| UiError::internal("a page's template is missing", &e))?;
    template
        .render(minijinja::value::Serde(&ctx))
        .map(Html)
        .map_err(|e| UiError::internal("a page could not be rendered", &e))
}

/// A page of `viewer`'s: `ctx` with who is signed in, their CSRF token and the current tab.
fn page(viewer: &Viewer, tab: &str, title: &str, mut ctx: Value) -> Value {
    if let Value::Object(m) = &mut ctx {
        m.insert(
            "me".into(),
            json!({"name": viewer.caller.name, "admin": viewer.caller.admin}),
        );
        m.insert("csrf".into(), json!(viewer.csrf));
        m.insert("tab".into(), json!(tab));
        m.insert("title".into(), json!(title));
        m.entry("now_ms").or_insert_with(|| json!(view::now_ms()));
    }
    ctx
}

#[cfg(test)]
mod tests;
