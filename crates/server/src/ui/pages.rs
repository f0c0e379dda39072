//! The UI's handlers: each reads through the engine as the caller, makes a view (`view.rs`)
//! and renders its template.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use capstan_core::flow::BuildMode;
use capstan_core::job::JobState;
use capstan_core::resolve::{RunRequest, resolve};
use capstan_engine::build::BuildRequest;
use capstan_store::JobFilter;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{UiError, Viewer, flowgraph, no_cache, page, render, session_cookie, view};
use crate::{AppState, LogTail};

/// Jobs per page of the list.
pub const PAGE: u32 = 50;

type Page = Result<Response, UiError>;

fn html(body: Html<String>) -> Response {
    (no_cache(), body).into_response()
}

fn parse_id(id: &str) -> Result<i64, UiError> {
    crate::parse_id(id).map_err(|_| {
        UiError::new(
            StatusCode::NOT_FOUND,
            format!("`{}` is not a job id", id.escape_debug()),
        )
    })
}

/// Where to go after signing in: a page of the UI, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => "/ui/".to_string(),
    }
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn login_form(Query(q): Query<NextQuery>) -> Page {
    Ok(html(render(
        "login.html",
        json!({"title": "Sign in", "next": safe_next(q.next.as_deref()), "error": null}),
    )?))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

pub async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Page {
    super::same_origin(&headers)?;
    let next = safe_next(f.next.as_deref());
    let token = f.token.trim();
    let hash = capstan_core::token::hash_token(token);
    let known = !token.is_empty()
        && !token.starts_with(crate::data_api::TOKEN_PREFIX)
        && crate::caller_for_hash(&hash, &s).is_some();
    if !known {
        // Where the person acted: on the form, with what to do.
        let body = render(
            "login.html",
            json!({"title": "Sign in", "next": next, "error": "unknown token: use a token of yours from users.toml (`capstan token create`), or the daemon's local token"}),
        )?;
        return Ok((StatusCode::UNAUTHORIZED, no_cache(), body).into_response());
    }
    let (id, _) = s.ui_sessions.open(hash)?;
    let mut r = Redirect::to(&next).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&id, super::SESSION_TTL));
    Ok(r)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

pub async fn logout(
    State(s): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Page {
    viewer.check(&headers, f.csrf.as_deref())?;
    s.ui_sessions.close(&viewer.session);
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", Duration::ZERO));
    Ok(r)
}

/// The jobs that are not over (as many as a screen can use), each with why it waits.
pub async fn overview(State(s): State<AppState>, viewer: Viewer) -> Page {
    let active = s.engine.jobs(
        &viewer.caller,
        JobFilter {
            states: vec![
                JobState::Queued,
                JobState::Preparing,
                JobState::Starting,
                JobState::Running,
            ],
            limit: Some(200),
            ..JobFilter::default()
        },
    )?;
    let mut with_reason = Vec::with_capacity(active.len());
    for j in active {
        // The last thing the job's history says: "waiting for a slot of …", the pod's pending
        // reason, "waiting for quota …".
        let why = s
            .engine
            .job_detail(&viewer.caller, j.id, false)
            .await
            .ok()
            .and_then(|d| d.events.last().and_then(|e| e.message.clone()));
        with_reason.push((j, why));
    }
    let home = s.engine.home();
    let recent = s.engine.jobs(
        &viewer.caller,
        JobFilter {
            limit: Some(10),
            ..JobFilter::default()
        },
    )?;
    let mut ctx = view::overview(&home, &with_reason);
    ctx["recent"] = recent.iter().map(view::job_row).collect();
    Ok(html(render(
        "overview.html",
        page(&viewer, "overview", "Overview", ctx),
    )?))
}

#[derive(Deserialize, Default)]
pub struct JobsQuery {
    user: Option<String>,
    project: Option<String>,
    state: Option<String>,
    config: Option<String>,
    /// `1h`, `24h`, `7d`: jobs created in that long.
    since: Option<String>,
    /// The id the previous page ended at.
    before: Option<String>,
}

/// The jobs list: filtered and paged in SQL (newest first, keyset on the id), so page 1 of
/// 100,000 jobs costs what page 1 of 10 does.
pub async fn jobs(State(s): State<AppState>, viewer: Viewer, Query(q): Query<JobsQuery>) -> Page {
    let some = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let mut errors = Vec::new();
    let states = match some(&q.state) {
        None => Vec::new(),
        Some(name) => match JobState::parse(&name) {
            Some(st) => vec![st],
            None => {
                errors.push(format!(
                    "unknown state `{name}` (one of: {})",
                    JobState::ALL.map(|s| s.as_str()).join(", ")
                ));
                Vec::new()
            }
        },
    };
    let since = match some(&q.since).as_deref() {
        None => None,
        Some(v) => match capstan_core::quantity::Duration::parse(v) {
            Ok(d) => Some(view::now_ms() - d.secs() as i64 * 1000),
            Err(e) => {
                errors.push(format!("since: {e}"));
                None
            }
        },
    };
    let before_id = match some(&q.before) {
        None => None,
        Some(b) => match b.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                errors.push(format!("`{}` is not a job id", b.escape_debug()));
                None
            }
        },
    };
    let mut rows = s.engine.jobs(
        &viewer.caller,
        JobFilter {
            user: some(&q.user),
            project: some(&q.project),
            exec_config: some(&q.config),
            states,
            since,
            before_id,
            limit: Some(PAGE + 1),
            ..JobFilter::default()
        },
    )?;
    let more = rows.len() > PAGE as usize;
    rows.truncate(PAGE as usize);
    let filters = json!({
        "user": some(&q.user), "project": some(&q.project), "state": some(&q.state),
        "config": some(&q.config), "since": some(&q.since),
    });
    // The same filters, for the next page's link.
    let mut query: Vec<String> = ["user", "project", "state", "config", "since"]
        .iter()
        .filter_map(|k| {
            filters[*k]
                .as_str()
                .map(|v| format!("{k}={}", view::url_encode(v)))
        })
        .collect();
    let next = more.then(|| {
        query.push(format!("before={}", rows.last().map_or(0, |j| j.id)));
        format!("/ui/jobs?{}", query.join("&"))
    });
    let home = s.engine.home();
    let ctx = json!({
        "jobs": rows.iter().map(view::job_row).collect::<Vec<_>>(),
        "filters": filters,
        "errors": errors,
        "next": next,
        "paged": before_id.is_some(),
        "states": JobState::ALL.iter().filter(|s| **s != JobState::Skipped).map(|s| s.as_str()).collect::<Vec<_>>(),
        "configs": home.exec_configs.keys().collect::<Vec<_>>(),
        "projects": home.projects.keys().collect::<Vec<_>>(),
    });
    let mut r = html(render("jobs.html", page(&viewer, "jobs", "Jobs", ctx))?);
    // htmx asks for the same URL as a whole page would: caches must tell the two apart.
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("HX-Request"));
    Ok(r)
}

#[derive(Deserialize, Default)]
pub struct ActivityQuery {
    activity: Option<String>,
}

async fn job_context(
    s: &AppState,
    viewer: &Viewer,
    id: &str,
    activity: Option<&str>,
) -> Result<Value, UiError> {
    let id = parse_id(id)?;
    let d = s.engine.job_detail(&viewer.caller, id, false).await?;
    let mut ctx = view::job_detail(&d, activity, view::now_ms());
    // Cancelling is for its user, an admin, or an admin of its project: the engine decides,
    // the page offers the button to those it would let.
    let project_admin = s
        .engine
        .authorize(
            &viewer.caller,
            &d.job.project,
            capstan_core::model::Permission::Admin,
        )
        .is_ok();
    ctx["may_cancel"] = json!(d.job.user == viewer.caller.name || project_admin);
    Ok(ctx)
}

pub async fn job(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<ActivityQuery>,
) -> Page {
    job_page(&s, &viewer, &id, q.activity.as_deref(), "job.html").await
}

/// `template` of job `id` (the whole page, or its summary alone).
async fn job_page(
    s: &AppState,
    viewer: &Viewer,
    id: &str,
    activity: Option<&str>,
    template: &str,
) -> Page {
    let ctx = job_context(s, viewer, id, activity).await?;
    let title = format!("Job {}", ctx["job"]["id"]);
    Ok(html(render(template, page(viewer, "jobs", &title, ctx))?))
}

/// The job's summary alone, which the page swaps in when the job's state changes.
pub async fn job_summary(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<ActivityQuery>,
) -> Page {
    job_page(&s, &viewer, &id, q.activity.as_deref(), "job_summary.html").await
}

/// The job's log as a file (what `capstan logs` prints, whole).
pub async fn job_log(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<ActivityQuery>,
) -> Page {
    let id = parse_id(&id)?;
    let (path, _) = s
        .engine
        .log_file(&viewer.caller, id, q.activity.as_deref())?;
    let text = match path {
        Some(p) => tokio::fs::read(&p).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let name = match &q.activity {
        Some(a) => format!(
            "job-{id}-{}.log",
            a.replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
                "_"
            )
        ),
        None => format!("job-{id}.log"),
    };
    let mut r = ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// The job as it happens, as server-sent events: `log` (new lines, as HTML), `state` (the
/// job's new state), `usage` (CPU and memory of its running work, every 2 s) and `end`.
pub async fn job_stream(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<ActivityQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, UiError> {
    let id = parse_id(&id)?;
    // Refused now, as a page would be, rather than as an empty stream.
    s.engine
        .log_file(&viewer.caller, id, q.activity.as_deref())?;
    struct Live {
        s: AppState,
        caller: capstan_engine::Caller,
        id: i64,
        tail: LogTail,
        partial: Vec<u8>,
        state: Option<JobState>,
        usage_at: Option<tokio::time::Instant>,
        done: bool,
    }
    let live = Live {
        tail: LogTail::new(&s.engine, &viewer.caller, id, q.activity.clone()),
        s,
        caller: viewer.caller,
        id,
        partial: Vec::new(),
        state: None,
        usage_at: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(live, |mut l| async move {
        if l.done {
            return None;
        }
        loop {
            let Some((chunk, over)) = l.tail.read().await else {
                l.done = true;
                return Some((Ok(Event::default().event("end").data("gone")), l));
            };
            if let Some(bytes) = chunk {
                l.partial.extend_from_slice(&bytes);
                // Whole lines only; the rest waits for its end (or for the log's).
                if let Some(cut) = l.partial.iter().rposition(|b| *b == b'\n') {
                    let lines: Vec<u8> = l.partial.drain(..=cut).collect();
                    let text = String::from_utf8_lossy(&lines);
                    let html: String = text.lines().map(view::log_line_html).collect();
                    return Some((Ok(Event::default().event("log").data(html)), l));
                }
                continue;
            }
            let job = l.s.engine.job(&l.caller, l.id).ok();
            let state = job.as_ref().map(|j| j.state);
            if state != l.state {
                l.state = state;
                if let Some(st) = state {
                    return Some((Ok(Event::default().event("state").data(st.as_str())), l));
                }
            }
            if over {
                if !l.partial.is_empty() {
                    let text = String::from_utf8_lossy(&std::mem::take(&mut l.partial)).to_string();
                    return Some((
                        Ok(Event::default()
                            .event("log")
                            .data(view::log_line_html(&text))),
                        l,
                    ));
                }
                l.done = true;
                return Some((
                    Ok(Event::default()
                        .event("end")
                        .data(state.map_or("gone", |s| s.as_str()))),
                    l,
                ));
            }
            if state == Some(JobState::Running)
                && l.usage_at
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
            {
                l.usage_at = Some(tokio::time::Instant::now());
                if let Ok(d) = l.s.engine.job_detail(&l.caller, l.id, true).await
                    && let Some(u) = d.usage
                {
                    let data = json!({"t": view::now_ms(), "cpu_percent": u.cpu_percent, "memory_bytes": u.memory_bytes});
                    return Some((
                        Ok(Event::default().event("usage").data(data.to_string())),
                        l,
                    ));
                }
            }
            l.tail.wait().await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub async fn cancel(
    State(s): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Page {
    viewer.check(&headers, f.csrf.as_deref())?;
    let id = parse_id(&id)?;
    s.engine.cancel(&viewer.caller, id)?;
    Ok(Redirect::to(&format!("/ui/jobs/{id}")).into_response())
}

/// The projects the viewer may read.
pub async fn projects(State(s): State<AppState>, viewer: Viewer) -> Page {
    let home = s.engine.home();
    let list: Vec<Value> = home
        .projects
        .values()
        .filter(|p| {
            s.engine
                .authorize(
                    &viewer.caller,
                    &p.key,
                    capstan_core::model::Permission::Read,
                )
                .is_ok()
        })
        .map(|p| {
            json!({
                "key": p.key, "name": p.name, "description": p.description,
                "recipes": p.recipes.len(), "datasets": p.datasets.len(),
            })
        })
        .collect();
    Ok(html(render(
        "projects.html",
        page(&viewer, "projects", "Projects", json!({"projects": list})),
    )?))
}

#[derive(Deserialize, Default)]
pub struct FlashQuery {
    /// What the last action said (a build with nothing to do).
    said: Option<String>,
}

/// A project: its flow as a graph, each recipe's status and effective settings with where
/// they come from, and the buttons that run them.
pub async fn project(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(project): Path<String>,
    Query(q): Query<FlashQuery>,
) -> Page {
    let flow = s.engine.flow(&viewer.caller, &project)?;
    let home = s.engine.home();
    let may_run = s
        .engine
        .authorize(
            &viewer.caller,
            &project,
            capstan_core::model::Permission::Run,
        )
        .is_ok();
    let request = RunRequest {
        user: viewer.caller.in_home.then(|| viewer.caller.name.clone()),
        ..RunRequest::default()
    };
    let recipes: Vec<Value> = flow
        .recipes
        .iter()
        .map(|r| {
            let (settings, refused) = match resolve(&home, &project, &r.name, &request) {
                Ok(res) => (
                    capstan_engine::record::resolution_rows(&res)
                        .into_iter()
                        .filter(|(_, v, _)| !v.is_null())
                        .map(|(k, v, o)| {
                            json!({"name": k, "value": v.as_str().map_or_else(|| v.to_string(), str::to_string), "origin": o.to_string()})
                        })
                        .collect::<Vec<_>>(),
                    None,
                ),
                Err(errors) => (
                    Vec::new(),
                    Some(
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                ),
            };
            let why = match &r.status {
                capstan_core::flow::RecipeStatus::Stale(w) => w.clone(),
                _ => Vec::new(),
            };
            let runs_on = settings
                .iter()
                .find(|s| s["name"] == "exec_config")
                .and_then(|s| s["value"].as_str())
                .unwrap_or("local (built in)")
                .to_string();
            json!({
                "name": r.name, "kind": r.kind, "inputs": r.inputs, "outputs": r.outputs,
                "status": r.status.as_str(), "why": why, "settings": settings, "refused": refused,
                "runs_on": runs_on,
            })
        })
        .collect();
    let datasets: Vec<Value> = flow
        .datasets
        .iter()
        .map(|d| {
            let (state, version) = match &d.state {
                capstan_core::flow::DatasetState::Missing => ("no data", None),
                capstan_core::flow::DatasetState::Untracked => ("untracked", None),
                capstan_core::flow::DatasetState::Version { version, .. } => {
                    ("has data", Some(*version))
                }
            };
            json!({"name": d.name, "producer": d.producer, "readers": d.readers, "state": state, "version": version,
                "model": home.projects[&project].models.contains_key(&d.name)})
        })
        .collect();
    let models: Vec<Value> = home.projects[&project]
        .models
        .keys()
        .map(|m| {
            json!({
                "name": m,
                "versions": s.data.models.numbers(&project, m).len(),
                "active": s.data.models.active(&project, m),
            })
        })
        .collect();
    let jobs = s.engine.jobs(
        &viewer.caller,
        JobFilter {
            project: Some(project.clone()),
            limit: Some(10),
            ..JobFilter::default()
        },
    )?;
    let p = &home.projects[&project];
    let ctx = json!({
        "project": {"key": p.key, "name": p.name, "description": p.description},
        "graph": flowgraph::svg(&flow),
        "recipes": recipes,
        "datasets": datasets,
        "models": models,
        "jobs": jobs.iter().map(view::job_row).collect::<Vec<_>>(),
        "may_run": may_run,
        "said": q.said,
    });
    Ok(html(render(
        "project.html",
        page(&viewer, "projects", &project, ctx),
    )?))
}

#[derive(Deserialize)]
pub struct BuildForm {
    csrf: Option<String>,
    mode: Option<String>,
}

pub async fn build(
    State(s): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(project): Path<String>,
    Form(f): Form<BuildForm>,
) -> Page {
    viewer.check(&headers, f.csrf.as_deref())?;
    let mode = match f.mode.as_deref() {
        None | Some("") => BuildMode::Smart,
        Some(m) => BuildMode::parse(m).ok_or_else(|| {
            UiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "`{}` is not a build mode ({})",
                    m.escape_debug(),
                    BuildMode::NAMES.join(", ")
                ),
            )
        })?,
    };
    let answer = s.engine.build(
        &viewer.caller,
        &project,
        BuildRequest {
            targets: Vec::new(),
            mode,
            dry_run: false,
            request: RunRequest::default(),
        },
    )?;
    Ok(match answer.job {
        Some(j) => Redirect::to(&format!("/ui/jobs/{}", j.id)).into_response(),
        None => Redirect::to(&format!(
            "/ui/projects/{}?said={}",
            view::url_encode(&project),
            view::url_encode("everything is up to date: nothing to build")
        ))
        .into_response(),
    })
}

pub async fn run_recipe(
    State(s): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((project, recipe)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Page {
    viewer.check(&headers, f.csrf.as_deref())?;
    let job = s
        .engine
        .submit(&viewer.caller, &project, &recipe, RunRequest::default())?;
    Ok(Redirect::to(&format!("/ui/jobs/{}", job.id)).into_response())
}

/// Execution and Spark configurations, clusters, base images and code environments: each as
/// its file declares it (every field with its line), who may use it, and how busy it is.
pub async fn configs(State(s): State<AppState>, viewer: Viewer) -> Page {
    let home = s.engine.home();
    let admin = viewer.caller.admin;
    let me = viewer.caller.name.as_str();
    let active = s.engine.jobs(
        &viewer.caller,
        JobFilter {
            states: vec![JobState::Preparing, JobState::Starting, JobState::Running],
            limit: Some(10_000),
            ..JobFilter::default()
        },
    )?;
    let mut running: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &active {
        if let Some(c) = j.exec_config.as_deref() {
            *running.entry(c).or_default() += 1;
        }
    }
    let exec: Vec<Value> = home
        .exec_configs
        .values()
        .map(|c| {
            json!({
                "name": c.name, "kind": c.kind.value.as_str(), "description": c.description,
                "declared": view::declared_lines(&home, c.loc, admin),
                "allowed": view::allowed(&home, &c.allowed, me, admin),
                "running": running.get(c.name.as_str()).copied().unwrap_or(0),
                "max_concurrent": c.max_concurrent.as_ref().map(|m| m.value),
            })
        })
        .collect();
    let spark: Vec<Value> = home
        .spark_configs
        .values()
        .map(|c| {
            json!({
                "name": c.name, "kind": c.master.value.as_str(),
                "declared": view::declared_lines(&home, c.loc, admin),
                "allowed": view::allowed(&home, &c.allowed, me, admin),
            })
        })
        .collect();
    let clusters: Vec<Value> = home
        .clusters
        .values()
        .map(|c| {
            // What `cluster test` may run with: the configurations of the cluster's kind.
            let testable: Vec<&str> = home
                .exec_configs
                .values()
                .filter(|x| x.kind.value.as_str() == c.kind().as_str())
                .map(|x| x.name.as_str())
                .collect();
            json!({
                "name": c.name, "kind": c.kind().as_str(), "testable": testable,
                "declared": view::declared_lines(&home, c.loc, admin),
                "allowed": view::allowed(&home, &c.allowed, me, admin),
            })
        })
        .collect();
    // The images' states as `image list` and `env list` show them, checked on the Docker
    // engine when it answers in time (from the build records alone when not).
    let engine = tokio::time::timeout(
        Duration::from_secs(2),
        capstan_backend_docker::image_ops::Engine::connect(None),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let base_rows = capstan_images::list_bases(&home, engine.as_ref()).await;
    let env_rows = capstan_images::list_envs(&home, engine.as_ref()).await;
    let images: Vec<Value> = home
        .base_images
        .values()
        .map(|b| {
            json!({
                "name": b.name, "declared": view::declared_lines(&home, b.loc, admin),
                "builds": view::image_rows(base_rows.iter().filter(|r| r.kind == "base" && r.name == b.name)),
            })
        })
        .collect();
    let envs: Vec<Value> = home
        .code_envs
        .values()
        .filter(|e| e.loc != capstan_core::diag::Loc::NOWHERE)
        .map(|e| {
            json!({
                "name": e.name, "declared": view::declared_lines(&home, e.loc, admin),
                "builds": view::image_rows(env_rows.iter().filter(|r| r.name == e.name)),
            })
        })
        .collect();
    let engine_image = view::image_rows(base_rows.iter().filter(|r| r.kind == "engine"));
    let ctx = json!({
        "exec_configs": exec, "spark_configs": spark, "clusters": clusters,
        "base_images": images, "code_envs": envs, "engine_image": engine_image,
        "engine_reached": engine.is_some(),
    });
    Ok(html(render(
        "configs.html",
        page(&viewer, "configs", "Configurations", ctx),
    )?))
}

/// Project `key` of `home`, when the viewer may read it: 404 for one that does not exist,
/// 403 for one they may not read.
fn readable<'h>(
    s: &AppState,
    viewer: &Viewer,
    home: &'h capstan_core::model::Home,
    key: &str,
) -> Result<&'h capstan_core::model::Project, UiError> {
    let p = home
        .projects
        .get(key)
        .ok_or_else(|| UiError::new(StatusCode::NOT_FOUND, format!("unknown project `{key}`")))?;
    s.engine
        .authorize(&viewer.caller, key, capstan_core::model::Permission::Read)?;
    Ok(p)
}

/// What project `project` declares as `name` among `items` (its datasets, its models), or a
/// 404 naming it.
fn declared<'h, T>(
    items: &'h BTreeMap<String, T>,
    what: &str,
    name: &str,
    project: &str,
) -> Result<&'h T, UiError> {
    items.get(name).ok_or_else(|| {
        UiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown {what} `{name}` in project `{project}`"),
        )
    })
}

/// A dataset: its schema (declared and stored), rows and size, its current version and who
/// wrote it from what, the jobs that wrote it, and its first rows.
pub async fn dataset(
    State(s): State<AppState>,
    viewer: Viewer,
    Path((project, dataset)): Path<(String, String)>,
) -> Page {
    use capstan_data::DatasetStore;
    let home = s.engine.home();
    let p = readable(&s, &viewer, &home, &project)?;
    let declared = declared(&p.datasets, "dataset", &dataset, &project)?;
    let (info, preview) = {
        let data = s.data.clone();
        let (project, dataset) = (project.clone(), dataset.clone());
        // Parquet is read on a blocking thread, and only its first rows.
        tokio::task::spawn_blocking(move || {
            let info = data.store.info(&project, &dataset)?;
            let preview = match &info {
                Some(_) => {
                    let batches = data
                        .store
                        .read(&project, &dataset, None, Some(PREVIEW_ROWS))?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(capstan_data::DataError::from)?;
                    capstan_data::display::json_rows(&batches)
                }
                None => Vec::new(),
            };
            Ok::<_, capstan_data::DataError>((info, preview))
        })
        .await
        .map_err(|e| UiError::internal("reading the dataset failed", &e))?
        .map_err(|e| UiError::internal("the dataset cannot be read", &e))?
    };
    let state = s.data.store.state(&project, &dataset);
    // Its history: the project's jobs that wrote it, among the newest 500.
    let jobs = s.engine.jobs(
        &viewer.caller,
        JobFilter {
            project: Some(project.clone()),
            limit: Some(500),
            ..JobFilter::default()
        },
    )?;
    let ctx = view::dataset(&project, declared, info.as_ref(), &state, preview, &jobs);
    Ok(html(render(
        "dataset.html",
        page(&viewer, "projects", &dataset, ctx),
    )?))
}

/// Rows a dataset's page shows.
pub const PREVIEW_ROWS: usize = 20;

/// A saved model: each version with its score, algorithm and the job that trained it, which
/// one is active, and its evaluations.
pub async fn model(
    State(s): State<AppState>,
    viewer: Viewer,
    Path((project, model)): Path<(String, String)>,
) -> Page {
    let home = s.engine.home();
    let p = readable(&s, &viewer, &home, &project)?;
    let declared = declared(&p.models, "model", &model, &project)?;
    let store = &s.data.models;
    let versions = store
        .versions(&project, &model)
        .map_err(|e| UiError::internal("the model's versions cannot be read", &e))?;
    let ctx = view::model(
        &project,
        declared,
        &versions,
        store.active(&project, &model),
        &store.evaluations(&project, &model),
    );
    Ok(html(render(
        "model.html",
        page(&viewer, "projects", &model, ctx),
    )?))
}

/// The viewer's notebook kernels (an admin's: everyone's), what they may start, and how to
/// connect JupyterLab.
pub async fn kernels(State(s): State<AppState>, viewer: Viewer, headers: HeaderMap) -> Page {
    let list: Vec<Value> = crate::gateway::kernels_of(&s, &viewer.caller)
        .into_iter()
        .map(|(user, mut model)| {
            model["user"] = json!(user);
            model
        })
        .collect();
    let specs: Vec<Value> = crate::gateway::usable_specs(&s, &viewer.caller)
        .into_iter()
        .map(|(name, shown)| json!({"name": name, "display": shown}))
        .collect();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("HOST:7878");
    let ctx = json!({
        "kernels": list,
        "specs": specs,
        "gateway": format!("http://{host}"),
    });
    Ok(html(render(
        "kernels.html",
        page(&viewer, "kernels", "Kernels", ctx),
    )?))
}

#[derive(Deserialize)]
pub struct SaidQuery {
    said: Option<String>,
}

/// What this instance has on each Docker engine and Kubernetes namespace, with the job each
/// container or pod belongs to, its requests, limits and live usage; admins see leftovers and
/// may remove them.
pub async fn cluster(
    State(s): State<AppState>,
    viewer: Viewer,
    Query(q): Query<SaidQuery>,
) -> Page {
    let engines = s.engine.workloads(&viewer.caller).await?;
    let ctx = json!({
        "engines": crate::workloads_json(&engines),
        "leftovers": engines.iter().flat_map(|e| &e.workloads).filter(|w| w.leftover).count(),
        "said": q.said,
    });
    Ok(html(render(
        "cluster.html",
        page(&viewer, "cluster", "Cluster", ctx),
    )?))
}

/// "Remove leftovers" (admins).
pub async fn remove_leftovers(
    State(s): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Page {
    viewer.check(&headers, f.csrf.as_deref())?;
    let said = s.engine.remove_leftovers(&viewer.caller).await?;
    let text = if said.is_empty() {
        "There was no leftover to remove.".to_string()
    } else {
        said.join("; ")
    };
    Ok(Redirect::to(&format!("/ui/cluster?said={}", view::url_encode(&text))).into_response())
}

#[derive(Deserialize)]
pub struct ClusterTestForm {
    csrf: Option<String>,
    exec_config: Option<String>,
}

/// The "Test" button of a cluster: starts `cluster test` in the daemon, and shows it.
pub async fn start_cluster_test(
    State(s): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(cluster): Path<String>,
    Form(f): Form<ClusterTestForm>,
) -> Page {
    viewer.check(&headers, f.csrf.as_deref())?;
    let exec_config = f.exec_config.filter(|c| !c.is_empty());
    let run = s
        .cluster_tests
        .start(&viewer.caller, &s.engine.home(), &cluster, exec_config)?;
    Ok(Redirect::to(&format!("/ui/cluster-tests/{}", run.id)).into_response())
}

fn cluster_test_ctx(s: &AppState, viewer: &Viewer, id: &str) -> Result<Value, UiError> {
    let id = parse_id(id)? as u64;
    let run = s.cluster_tests.get(&viewer.caller, id)?;
    Ok(json!({"test": crate::cluster_test_json(&run)}))
}

/// A cluster test's page: its steps as they happen.
pub async fn cluster_test(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Page {
    let ctx = cluster_test_ctx(&s, &viewer, &id)?;
    let title = format!("Test of {}", ctx["test"]["cluster"].as_str().unwrap_or(""));
    Ok(html(render(
        "cluster_test.html",
        page(&viewer, "configs", &title, ctx),
    )?))
}

/// The steps so far (the page polls this fragment until the test is over).
pub async fn cluster_test_steps(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Page {
    let ctx = cluster_test_ctx(&s, &viewer, &id)?;
    Ok(html(render(
        "cluster_test_steps.html",
        page(&viewer, "configs", "", ctx),
    )?))
}
