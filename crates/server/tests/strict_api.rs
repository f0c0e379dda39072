//! The API refuses what it cannot take at the door, precisely, and tells nothing it should not:
//! each test is named after the finding it keeps fixed, and sends its requests through the real
//! router (`tower::ServiceExt::oneshot`), as a client would.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use capstan_engine::backend::{
    ActivityControl, ActivityEvent, ActivityOutcome, ActivitySpec, Backend, Resumed, Usage,
};
use capstan_engine::{Caller, Engine};
use capstan_server::data_api::DataPlaneImpl;
use capstan_server::{AppState, router};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const ADMIN: &str = "cap_admin_token_for_tests";
const USER: &str = "cap_user_token_for_tests";
const LOCAL: &str = "cap_local_token_for_tests";

/// A fresh folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "capstan-server-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(root: &Path, file: &str, text: &str) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A home with an admin and a user, project `p` (datasets `out` and `secret`, recipe `writer`,
/// which writes `out`) and project `other` (dataset `theirs`).
fn write_home(root: &Path) {
    let sha = capstan_core::token::hash_token;
    write(
        root,
        "capstan.toml",
        "[instance]\nname = \"t\"\n\n[defaults]\nexec_config = \"local\"\n",
    );
    write(
        root,
        "exec-configs.toml",
        "[exec_config.local]\nkind = \"local\"\n",
    );
    write(
        root,
        "users.toml",
        &format!(
            "[user.ada]\nadmin = true\n\n[[user.ada.tokens]]\nname = \"t\"\nsha256 = \"{}\"\n\n\
             [group.analysts]\n\n[user.bob]\ngroups = [\"analysts\"]\n\n[[user.bob.tokens]]\nname = \"t\"\nsha256 = \"{}\"\n",
            sha(ADMIN),
            sha(USER)
        ),
    );
    write(
        root,
        "projects/p/project.toml",
        "[project]\nname = \"p\"\n\n[project.permissions]\nanalysts = [\"read\", \"run\", \"write\"]\n\n[dataset.out]\n\n[dataset.secret]\n",
    );
    write(
        root,
        "projects/p/recipes/writer.toml",
        "kind = \"shell\"\noutputs = [\"out\"]\n",
    );
    write(root, "projects/p/recipes/writer.sh", "true\n");
    write(
        root,
        "projects/other/project.toml",
        "[project]\nname = \"other\"\n\n[dataset.theirs]\n",
    );
}

/// A local backend that runs nothing: it says the activity runs, hands its data token to the
/// test, and waits to be cancelled.
struct Parked {
    tokens: Arc<Mutex<Vec<String>>>,
}

impl Backend for Parked {
    fn kind(&self) -> capstan_core::model::ExecKind {
        capstan_core::model::ExecKind::Local
    }

    fn run<'a>(
        &'a self,
        spec: &'a ActivitySpec,
        ctl: ActivityControl,
    ) -> BoxFuture<'a, ActivityOutcome> {
        Box::pin(async move {
            ctl.report(ActivityEvent::Starting);
            ctl.report(ActivityEvent::Running);
            if let Some(access) = &spec.data {
                self.tokens.lock().unwrap().push(access.token.clone());
            }
            ctl.cancel.cancelled().await;
            ActivityOutcome::cancelled()
        })
    }

    fn resume<'a>(
        &'a self,
        _spec: &'a ActivitySpec,
        _backend_ref: Option<&'a str>,
        _ctl: ActivityControl,
    ) -> BoxFuture<'a, Resumed> {
        Box::pin(async { Resumed::NeverStarted })
    }

    fn usage<'a>(&'a self, _spec: &'a ActivitySpec) -> BoxFuture<'a, Option<Usage>> {
        Box::pin(async { None })
    }
}

/// A daemon without its listener: the engine (with [`Parked`] as its local backend), the data
/// plane and the router, on the home of [`write_home`].
struct Api {
    dir: TempDir,
    app: Router,
    engine: Engine,
    tokens: Arc<Mutex<Vec<String>>>,
}

impl Api {
    fn start(label: &str) -> Api {
        let dir = TempDir::new(label);
        let root = dir.0.join("home");
        write_home(&root);
        let (home, diags) = capstan_core::load_home(&root).unwrap();
        assert!(
            diags
                .iter()
                .all(|d| d.severity != capstan_core::diag::Severity::Error),
            "the test home has problems: {diags:?}"
        );
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let data = Arc::new(DataPlaneImpl::open(&root, || [7; 32]).unwrap());
        let (engine, starter) = Engine::open(
            &root,
            home,
            vec![Arc::new(Parked {
                tokens: tokens.clone(),
            })],
            Some(data.clone()),
        )
        .unwrap();
        starter.start().unwrap();
        let app = router(AppState {
            engine: engine.clone(),
            data,
            local_token_sha256: Arc::new(capstan_core::token::hash_token(LOCAL)),
            kernels: Default::default(),
            ui_sessions: Default::default(),
            cluster_tests: Default::default(),
        });
        Api {
            dir,
            app,
            engine,
            tokens,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.0.join("home")
    }

    /// Sends a request; its status, and its body as JSON (`Value::String` if it is not JSON).
    async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    /// `POST /api/v1/jobs` with a JSON body, as the admin.
    async fn submit(&self, body: &str) -> (StatusCode, Value) {
        self.send(
            "POST",
            "/api/v1/jobs",
            &[
                ("authorization", &format!("Bearer {ADMIN}")),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await
    }

    /// A job of `p/writer`, running (on [`Parked`]), and its activity's data token.
    async fn running_writer(&self) -> (i64, String) {
        let (status, job) = self.submit(r#"{"project":"p","recipe":"writer"}"#).await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        let id = job["id"].as_i64().unwrap();
        let admin = Caller {
            name: "test".into(),
            admin: true,
            in_home: false,
        };
        for _ in 0..500 {
            let running = self.engine.job(&admin, id).unwrap().state.as_str() == "running";
            if running && let Some(token) = self.tokens.lock().unwrap().first() {
                return (id, token.clone());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "job {id} did not run: {:?}",
            self.engine.job(&admin, id).unwrap().state
        );
    }
}

/// The error message of an error body.
fn message(body: &Value) -> &str {
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

#[tokio::test]
async fn duplicate_json_keys_are_refused_naming_the_key() {
    let api = Api::start("dup");
    let (status, body) = api
        .submit(r#"{"project":"p","recipe":"writer","recipe":"other"}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("duplicate key `recipe`"), "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    // At any depth, named by its path.
    let (status, body) = api
        .submit(r#"{"project":"p","recipe":"writer","env":{"A":"1","B":"2","A":"3"}}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("duplicate key `env.A`"), "{body}");
    // Keys equal only after escapes are resolved are the same key.
    let (status, body) = api
        .submit(r#"{"project":"p","recipe":"writer","\u0070roject":"q"}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("duplicate key `project`"), "{body}");
    // Trailing data after the value is not ignored either.
    let (status, body) = api
        .submit(r#"{"project":"p","recipe":"writer"} {"project":"q"}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Deep nesting is refused, not a stack overflow.
    let deep = "[".repeat(60_000);
    let (status, body) = api
        .send(
            "POST",
            "/api/v1/jobs",
            &[
                ("authorization", &format!("Bearer {ADMIN}")),
                ("content-type", "application/json"),
            ],
            deep,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("recursion limit"), "{body}");
    // The same keys in sibling objects are fine, and a clean body goes through.
    let (status, body) = api
        .submit(r#"{"project":"p","recipe":"nope","env":{"A":"1"}}"#)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(message(&body).contains("unknown recipe `nope`"), "{body}");
}

#[tokio::test]
async fn nul_bytes_in_submitted_strings_are_refused_naming_the_field() {
    let api = Api::start("nul");
    let cases = [
        (
            r#"{"project":"p\u0000","recipe":"writer"}"#,
            "field `project`",
        ),
        (
            r#"{"project":"p","recipe":"wr\u0000iter"}"#,
            "field `recipe`",
        ),
        (
            r#"{"project":"p","recipe":"writer","exec_config":"lo\u0000cal"}"#,
            "field `exec_config`",
        ),
        (
            r#"{"project":"p","recipe":"writer","cluster":"\u0000"}"#,
            "field `cluster`",
        ),
        (
            r#"{"project":"p","recipe":"writer","spark_config":"\u0000"}"#,
            "field `spark_config`",
        ),
        (
            r#"{"project":"p","recipe":"writer","code_env":"\u0000"}"#,
            "field `code_env`",
        ),
        (
            r#"{"project":"p","recipe":"writer","env":{"GREETING":"hi\u0000there"}}"#,
            "field `env.GREETING` contains a NUL byte",
        ),
        (
            r#"{"project":"p","recipe":"writer","env":{"GREE\u0000TING":"hi"}}"#,
            "field `env`: `GREE\\0TING` is not a variable name",
        ),
        // What else a process environment cannot carry: an empty name, and `=` in one.
        (
            r#"{"project":"p","recipe":"writer","env":{"":"x"}}"#,
            "field `env`: `` is not a variable name",
        ),
        (
            r#"{"project":"p","recipe":"writer","env":{"A=B":"x"}}"#,
            "field `env`: `A=B` is not a variable name",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = api.submit(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            message(&answer).contains(expected),
            "{body}: expected {expected:?} in {answer}"
        );
    }
    let admin = Caller {
        name: "test".into(),
        admin: true,
        in_home: false,
    };
    assert!(
        api.engine
            .jobs(&admin, capstan_store::JobFilter::default())
            .unwrap()
            .is_empty(),
        "a refused submission was queued"
    );
}

#[tokio::test]
async fn auth_scheme_is_case_insensitive() {
    let api = Api::start("scheme");
    for value in [
        format!("Bearer {USER}"),
        format!("bearer {USER}"),
        format!("BEARER {USER}"),
        format!("bEaReR   {USER}  "),
        format!("Bearer\t{USER}"),
    ] {
        let (status, body) = api
            .send("GET", "/api/v1/whoami", &[("authorization", &value)], "")
            .await;
        assert_eq!(status, StatusCode::OK, "{value:?}: {body}");
        assert_eq!(body["user"], "bob", "{value:?}");
        // The data API reads the header the same way.
        let (status, body) = api
            .send(
                "GET",
                "/api/v1/projects/p/datasets",
                &[("authorization", &value)],
                "",
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{value:?}: {body}");
    }
    // Other schemes, and a scheme without a token, are still refused.
    for value in [
        format!("Basic {USER}"),
        format!("Bearer{USER}"),
        "Bearer".to_string(),
        "Bearer   ".to_string(),
        format!("Bearer {USER} extra"),
    ] {
        let (status, body) = api
            .send("GET", "/api/v1/whoami", &[("authorization", &value)], "")
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value:?}: {body}");
        assert!(message(&body).contains("Bearer TOKEN"), "{value:?}: {body}");
    }
}

#[tokio::test]
async fn wrong_content_types_get_415_naming_the_accepted_types() {
    let api = Api::start("media");
    let admin = format!("Bearer {ADMIN}");
    let put = |content_type: Option<&'static str>| {
        let mut headers = vec![("authorization", admin.as_str())];
        if let Some(t) = content_type {
            headers.push(("content-type", t));
        }
        let api = &api;
        async move {
            api.send(
                "PUT",
                "/api/v1/projects/p/datasets/out/data",
                &headers,
                "a,b\n1,2\n",
            )
            .await
        }
    };
    for content_type in [Some("application/json"), Some("text/plain"), None] {
        let (status, body) = put(content_type).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {body}"
        );
        assert_eq!(body["error"]["code"], "unsupported_media_type");
        let m = message(&body);
        assert!(
            m.contains("application/vnd.apache.arrow.stream") && m.contains("text/csv"),
            "{content_type:?}: {m}"
        );
    }
    // The accepted ones, with parameters and in any case.
    let (status, body) = put(Some("Text/CSV; charset=utf-8")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"], 1);
    let (status, body) = put(Some("application/vnd.apache.arrow.stream")).await;
    // Not an Arrow stream: the type was taken, the bytes refused.
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("Arrow"), "{body}");

    // A submission is JSON, and says so.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut headers = vec![("authorization", admin.as_str())];
        if let Some(t) = content_type {
            headers.push(("content-type", t));
        }
        let (status, body) = api
            .send(
                "POST",
                "/api/v1/jobs",
                &headers,
                r#"{"project":"p","recipe":"nope"}"#,
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {body}"
        );
        assert!(message(&body).contains("application/json"), "{body}");
    }
    let (status, body) = api
        .send(
            "POST",
            "/api/v1/jobs",
            &[
                ("authorization", admin.as_str()),
                ("content-type", "application/json; charset=utf-8"),
            ],
            r#"{"project":"p","recipe":"nope"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn unknown_fields_are_refused_naming_the_field() {
    let api = Api::start("unknown");
    let (status, body) = api
        .submit(r#"{"project":"p","recipe":"writer","exec_confg":"local"}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        message(&body).contains("unknown field `exec_confg` (did you mean `exec_config`?)"),
        "{body}"
    );
    // Query parameters too.
    let admin = format!("Bearer {ADMIN}");
    for uri in [
        "/api/v1/jobs?stat=running",
        "/api/v1/jobs/1/logs?folow=true",
        "/api/v1/projects/p/datasets/out/data?colums=a",
    ] {
        let (status, body) = api.send("GET", uri, &[("authorization", &admin)], "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(message(&body).contains("unknown field"), "{uri}: {body}");
    }
}

#[tokio::test]
async fn malformed_values_are_400_and_values_beyond_their_limit_422() {
    let api = Api::start("values");
    for body in [
        r#"{"project":"p","recipe":"writer","timeout":"5 m"}"#,
        r#"{"project":"p","recipe":"writer","timeout":" 5m"}"#,
        r#"{"project":"p","recipe":"writer","timeout":"m"}"#,
        r#"{"project":"p","recipe":"writer","timeout":-1}"#,
        r#"{"project":"p","recipe":"writer","timeout":1.5}"#,
    ] {
        let (status, answer) = api.submit(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(message(&answer).contains("field `timeout`"), "{answer}");
    }
    for body in [
        r#"{"project":"p","recipe":"writer","timeout":"366d"}"#,
        r#"{"project":"p","recipe":"writer","timeout":31536001}"#,
    ] {
        let (status, answer) = api.submit(body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(message(&answer).contains("maximum of 365d"), "{answer}");
    }
    let admin = format!("Bearer {ADMIN}");
    for uri in ["/api/v1/jobs/0", "/api/v1/jobs/-1", "/api/v1/jobs/+1"] {
        let (status, body) = api.send("GET", uri, &[("authorization", &admin)], "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(message(&body).contains("is not a job id"), "{uri}: {body}");
    }
    let (status, body) = api
        .send("GET", "/api/v1/jobs/1", &[("authorization", &admin)], "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn health_without_a_token_says_only_that_it_is_up() {
    let api = Api::start("health");
    let root = api.root().display().to_string();
    for headers in [
        vec![],
        vec![("authorization", "Bearer cap_not_a_token")],
        vec![("authorization", "Basic YTpi")],
    ] {
        let (status, body) = api.send("GET", "/api/v1/health", &headers, "").await;
        assert_eq!(status, StatusCode::OK, "{headers:?}");
        assert_eq!(body, json!({"status": "ok"}), "{headers:?}");
    }
    // A user learns the version, not where the home is.
    let user = format!("Bearer {USER}");
    let (_, body) = api
        .send("GET", "/api/v1/health", &[("authorization", &user)], "")
        .await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(!body.to_string().contains(&root), "{body}");
    // An admin may.
    let admin = format!("Bearer {ADMIN}");
    let (_, body) = api
        .send("GET", "/api/v1/health", &[("authorization", &admin)], "")
        .await;
    assert_eq!(body["home"], root.as_str());
}

#[tokio::test]
async fn upload_errors_name_no_server_paths() {
    let api = Api::start("paths");
    let admin = format!("Bearer {ADMIN}");
    let root = api.root();
    let tmp = std::env::temp_dir().display().to_string();
    let no_path = |what: &str, body: &Value| {
        let text = body.to_string();
        assert!(
            !text.contains(&tmp)
                && !text.contains(&root.display().to_string())
                && !text.contains("capstan-upload")
                && !text.contains(".parquet"),
            "{what}: the error names a server path: {text}"
        );
    };
    let put = |content_type: &'static str, data: &'static str| {
        let api = &api;
        let admin = admin.clone();
        async move {
            api.send(
                "PUT",
                "/api/v1/projects/p/datasets/out/data",
                &[
                    ("authorization", admin.as_str()),
                    ("content-type", content_type),
                ],
                data,
            )
            .await
        }
    };
    // A CSV without a header line.
    let (status, body) = put("text/csv", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        message(&body).contains("the CSV has no header line"),
        "{body}"
    );
    no_path("empty CSV", &body);
    // A CSV with bad lines.
    let (status, body) = put("text/csv", "a,b\n1,2\n3\n").await;
    assert!(status.is_client_error(), "{status}: {body}");
    no_path("bad CSV", &body);
    // Not an Arrow stream.
    let (status, body) = put("application/vnd.apache.arrow.stream", "nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    no_path("bad Arrow", &body);
    // The store itself failing: the project's data folder is a file.
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/p"), "in the way").unwrap();
    let (status, body) = put("text/csv", "a,b\n1,2\n").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "internal");
    assert!(
        message(&body).contains("the dataset store failed"),
        "{body}"
    );
    no_path("store failure", &body);
    // Reading it.
    let (status, body) = api
        .send(
            "GET",
            "/api/v1/projects/p/datasets/out",
            &[("authorization", admin.as_str())],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    no_path("store failure on read", &body);
}

#[tokio::test]
async fn activity_tokens_get_403_for_every_name_outside_their_grant() {
    let api = Api::start("grant");
    let (id, token) = api.running_writer().await;
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    // Within its grant: it writes `p/out`.
    let (status, body) = api
        .send(
            "PUT",
            "/api/v1/projects/p/datasets/out/data",
            &[
                ("authorization", auth.as_str()),
                ("content-type", "text/csv"),
            ],
            "a\n1\n",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["committed"], false);
    // Outside it, a name that exists and one that does not get the same answer.
    let outside = [
        ("GET", "/api/v1/projects/p/datasets/secret"),
        ("GET", "/api/v1/projects/p/datasets/nope"),
        ("GET", "/api/v1/projects/p/datasets/secret/data"),
        ("GET", "/api/v1/projects/p/datasets/nope/data"),
        // It writes `out`, it does not read it.
        ("GET", "/api/v1/projects/p/datasets/out/data"),
        ("PUT", "/api/v1/projects/p/datasets/secret/data"),
        ("PUT", "/api/v1/projects/p/datasets/nope/data"),
        ("GET", "/api/v1/projects/other/datasets/theirs"),
        ("GET", "/api/v1/projects/nope/datasets/theirs"),
        ("GET", "/api/v1/projects/other/datasets/theirs/data"),
        ("GET", "/api/v1/projects/nope/datasets/x/data"),
        ("PUT", "/api/v1/projects/other/datasets/theirs/data"),
        ("PUT", "/api/v1/projects/nope/datasets/x/data"),
        ("GET", "/api/v1/projects/p/datasets"),
        ("GET", "/api/v1/projects/other/datasets"),
        ("GET", "/api/v1/projects/nope/datasets"),
    ];
    for (method, uri) in outside {
        let (status, body) = api.send(method, uri, &headers, "a\n1\n").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    // A user still learns which names exist (its permissions are the project's).
    let user = format!("Bearer {ADMIN}");
    let (status, _) = api
        .send(
            "GET",
            "/api/v1/projects/p/datasets/nope",
            &[("authorization", user.as_str())],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api
        .send(
            "POST",
            &format!("/api/v1/jobs/{id}/cancel"),
            &[("authorization", user.as_str())],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

/// An Arrow IPC stream of `batches` batches of the column `n` (int64).
fn arrow_stream(batches: &[&[i64]]) -> Vec<u8> {
    use capstan_data::arrow::array::Int64Array;
    use capstan_data::arrow::datatypes::{DataType, Field, Schema};
    use capstan_data::arrow::record_batch::RecordBatch;
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let mut out = Vec::new();
    let mut w = capstan_data::arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
    for b in batches {
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(b.to_vec()))])
                .unwrap();
        w.write(&batch).unwrap();
    }
    w.finish().unwrap();
    drop(w);
    out
}

#[tokio::test]
async fn arrow_uploads_declaring_huge_messages_are_refused_before_allocating() {
    let api = Api::start("ipc");
    let admin = format!("Bearer {ADMIN}");
    let put = |body: Vec<u8>| {
        let api = &api;
        let admin = admin.clone();
        async move {
            api.send(
                "PUT",
                "/api/v1/projects/p/datasets/out/data",
                &[
                    ("authorization", admin.as_str()),
                    ("content-type", "application/vnd.apache.arrow.stream"),
                ],
                body,
            )
            .await
        }
    };
    // Four bytes that, read as a message's length, say 1.7 GB: refused at once, without
    // allocating that (which took seconds, and the memory, before).
    let started = std::time::Instant::now();
    for garbage in [&b"nope"[..], b"\xff\xff\xff\xff\xff\xff\xff\x7f"] {
        let (status, body) = put(garbage.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            message(&body).contains("more than the limit of 16 MiB"),
            "{body}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A real stream passes through the guard unchanged, whatever its batches.
    let (status, body) = put(arrow_stream(&[&[1, 2, 3], &[], &[4, 5]])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"], 5);
    let (status, body) = put(arrow_stream(&[])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"], 0);
    // Truncated: the reader's own refusal.
    let mut cut = arrow_stream(&[&[1, 2, 3]]);
    cut.truncate(cut.len() - 20);
    let (status, body) = put(cut).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
