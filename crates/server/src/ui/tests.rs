//! Every template rendered with real-shaped data (a home loaded from TOML, jobs as the store
//! records them), as snapshots: minijinja checks templates when they render, so this is where
//! a broken one would show.

use std::path::Path;

use capstan_core::flow::{DatasetState, DatasetView, FlowView, RecipeStatus, RecipeView};
use capstan_core::job::JobState;
use capstan_core::load::{HomeFiles, load};
use capstan_core::model::Home;
use capstan_engine::{Caller, JobDetail};
use capstan_store::{ActivityRow, EventRow, JobRow};
use serde_json::json;

use super::*;

/// The assets' path in snapshots (the real one changes with their content).
const ASSETS_IN_SNAPSHOTS: &str = "/ui/assets/VERSION";

/// 2026-12-04T04:30:00Z: what "now" is in every snapshot.
const NOW: i64 = 1_796_358_600_000;

fn home() -> Home {
    let mut files = HomeFiles::default();
    let mut add = |path: &str, text: &str| {
        files.toml.insert(path.into(), text.as_bytes().to_vec());
    };
    add("capstan.toml", "[instance]\nname = \"ui\"\n");
    add("images.toml", "[base_image.default]\n");
    add(
        "clusters.toml",
        "[cluster.local-docker]\nkind = \"docker\"\nhost = \"unix:///var/run/docker.sock\"\nmax_concurrent = 8\n",
    );
    add(
        "exec-configs.toml",
        "[exec_config.docker-small]\nkind = \"docker\"\ndescription = \"2 CPUs, 4 GiB\"\ncpu_limit = 2\nmemory_limit = \"4Gi\"\nmax_concurrent = 4\n\n\
         [exec_config.docker-small.env]\nAWS_SECRET_ACCESS_KEY = \"hunter2\"\n\n\
         [exec_config.k8s-medium]\nkind = \"kubernetes\"\nnamespace = \"capstan\"\nallowed_groups = [\"platform\"]\n",
    );
    add(
        "users.toml",
        "[group.analysts]\n[group.platform]\n\n[user.alice]\ngroups = [\"analysts\"]\n\n[user.root]\nadmin = true\n",
    );
    add(
        "projects/sample/project.toml",
        "[project]\nname = \"Sample\"\ndescription = \"Wine, cleaned and summed.\"\n\n[project.permissions]\nanalysts = [\"run\"]\n\n[dataset.wine]\n[dataset.wine_clean]\ndescription = \"Wine without its empty rows.\"\nschema = { cultivar = \"int64\", alcohol = \"float64\" }\n\n[model.quality]\nactivation = \"if_better\"\n",
    );
    add(
        "projects/sample/recipes/wine_clean.toml",
        "kind = \"python\"\ninputs = [\"wine\"]\noutputs = [\"wine_clean\"]\nexec_config = \"docker-small\"\n",
    );
    files
        .others
        .insert("projects/sample/recipes/wine_clean.py".into());
    let (h, d) = load(Path::new("/h"), &files);
    assert!(!d.has_errors(), "{:?}", d.list);
    h
}

fn viewer(name: &str, admin: bool) -> Viewer {
    Viewer {
        caller: Caller {
            name: name.into(),
            admin,
            in_home: true,
        },
        csrf: "CSRF".into(),
        session: "S".into(),
    }
}

fn job(id: i64, state: JobState) -> JobRow {
    let over = state.is_final();
    JobRow {
        id,
        project: "sample".into(),
        recipe: "wine_clean".into(),
        user: "alice".into(),
        request_json: "{}".into(),
        resolution_json: "{}".into(),
        exec_config: Some("docker-small".into()),
        cluster: None,
        kind: "docker".into(),
        state,
        created_at: NOW - 95_000,
        started_at: (state != JobState::Queued).then_some(NOW - 90_000),
        finished_at: over.then_some(NOW - 30_000),
        exit_code: over.then_some(if state == JobState::Failed { 1 } else { 0 }),
        diagnosis: (state == JobState::Failed).then(|| {
            "the recipe raised KeyError: 'alcohol' (wine_clean.py, line 4): the input has no column `alcohol`; its columns are: Alcohol, Malic_acid".into()
        }),
        peak_memory_bytes: over.then_some(182_452_224),
        cpu_time_ms: over.then_some(41_200),
        io_json: over.then(|| r#"{"read":{"wine":178},"written":{"wine_clean":178}}"#.into()),
        build_json: None,
    }
}

fn detail(state: JobState) -> JobDetail {
    let j = job(12, state);
    let activity = ActivityRow {
        job_id: 12,
        idx: 0,
        recipe: "wine_clean".into(),
        state,
        attempt: 1,
        dir: Some("/h/state/jobs/12/0".into()),
        backend_ref: Some("local|abc".into()),
        exit_code: j.exit_code,
        signal: None,
        diagnosis: j.diagnosis.clone(),
        peak_memory_bytes: j.peak_memory_bytes,
        cpu_time_ms: j.cpu_time_ms,
        started_at: j.started_at,
        finished_at: j.finished_at,
        resolution_json: None,
        exec_config: None,
        cluster: None,
        kind: None,
        needs: Vec::new(),
        why_json: None,
        io_json: None,
        provenance_json: None,
        part: None,
    };
    let mut events = vec![
        EventRow {
            at: NOW - 95_000,
            activity: None,
            state: JobState::Queued,
            message: Some("waiting for a slot of docker-small (4 of 4 in use)".into()),
        },
        EventRow {
            at: NOW - 90_000,
            activity: Some(0),
            state: JobState::Running,
            message: None,
        },
    ];
    if state.is_final() {
        events.push(EventRow {
            at: NOW - 30_000,
            activity: None,
            state,
            message: j.diagnosis.clone(),
        });
    }
    JobDetail {
        job: j,
        events,
        activities: vec![activity],
        usage: None,
    }
}

fn flow() -> FlowView {
    FlowView {
        project: "sample".into(),
        datasets: vec![
            DatasetView {
                name: "wine".into(),
                producer: None,
                readers: vec!["wine_clean".into()],
                state: DatasetState::Untracked,
            },
            DatasetView {
                name: "wine_clean".into(),
                producer: Some("wine_clean".into()),
                readers: Vec::new(),
                state: DatasetState::Missing,
            },
        ],
        recipes: vec![RecipeView {
            name: "wine_clean".into(),
            kind: "python".into(),
            inputs: vec!["wine".into()],
            outputs: vec!["wine_clean".into()],
            status: RecipeStatus::Stale(vec!["input wine changed".into()]),
        }],
    }
}

fn show(template: &str, v: &Viewer, tab: &str, title: &str, mut ctx: serde_json::Value) -> String {
    ctx["now_ms"] = json!(NOW);
    ctx["assets"] = json!(ASSETS_IN_SNAPSHOTS);
    render(template, page(v, tab, title, ctx)).unwrap().0
}

#[test]
fn sign_in_and_error_pages() {
    insta::assert_snapshot!(
        "login",
        render(
            "login.html",
            json!({"title": "Sign in", "next": "/ui/jobs", "error": "unknown token: use a token of yours", "assets": ASSETS_IN_SNAPSHOTS})
        )
        .unwrap()
        .0
    );
    insta::assert_snapshot!(
        "error",
        render(
            "error.html",
            json!({"title": "Not Found", "status": 404, "message": "no job 9", "assets": ASSETS_IN_SNAPSHOTS})
        )
        .unwrap()
        .0
    );
}

#[test]
fn the_overview_shows_each_configuration_and_why_jobs_wait() {
    let h = home();
    let active = vec![
        (
            job(13, JobState::Queued),
            Some("waiting for a slot of docker-small (4 of 4 in use)".to_string()),
        ),
        (
            JobRow {
                cluster: Some("local-docker".into()),
                ..job(12, JobState::Running)
            },
            None,
        ),
    ];
    let mut ctx = view::overview(&h, &active);
    assert_eq!(ctx["clusters"][0]["running"], 1, "{ctx:#}");
    ctx["recent"] = json!([view::job_row(&job(11, JobState::Failed))]);
    insta::assert_snapshot!(show(
        "overview.html",
        &viewer("alice", false),
        "overview",
        "Overview",
        ctx
    ));
}

#[test]
fn the_jobs_list_keeps_its_filters_and_pages() {
    let ctx = json!({
        "jobs": [view::job_row(&job(12, JobState::Succeeded)), view::job_row(&job(11, JobState::Failed))],
        "filters": {"user": "alice", "project": "sample", "state": null, "config": null, "since": "24h"},
        "errors": ["unknown state `runing` (one of: queued, …)"],
        "next": "/ui/jobs?user=alice&project=sample&since=24h&before=11",
        "paged": true,
        "states": ["queued", "running", "succeeded"],
        "configs": ["docker-small", "k8s-medium"],
        "projects": ["sample"],
    });
    insta::assert_snapshot!(show(
        "jobs.html",
        &viewer("alice", false),
        "jobs",
        "Jobs",
        ctx
    ));
}

#[test]
fn a_failed_job_page_leads_with_its_diagnosis() {
    let mut ctx = view::job_detail(&detail(JobState::Failed), None, NOW);
    ctx["may_cancel"] = json!(true);
    insta::assert_snapshot!(show(
        "job.html",
        &viewer("alice", false),
        "jobs",
        "Job 12",
        ctx
    ));
}

#[test]
fn a_running_job_offers_cancel_and_says_what_it_waited_for() {
    let mut ctx = view::job_detail(&detail(JobState::Running), None, NOW);
    ctx["may_cancel"] = json!(true);
    let html = show(
        "job_summary.html",
        &viewer("alice", false),
        "jobs",
        "",
        ctx.clone(),
    );
    assert!(html.contains("id=\"cancel\""), "{html}");
    // Someone who may read the job but not cancel it gets no button.
    ctx["may_cancel"] = json!(false);
    let html = show("job_summary.html", &viewer("bob", false), "jobs", "", ctx);
    assert!(!html.contains("id=\"cancel\""), "{html}");
    insta::assert_snapshot!(html);
}

#[test]
fn a_queued_job_has_its_bars_inside_the_track() {
    // Not started: its bar sits at the end of the track (a bar must never fall outside it).
    let ctx = view::job_detail(&detail(JobState::Queued), None, NOW);
    let bar = &ctx["activities"][0];
    assert_eq!(
        (bar["left"].as_str(), bar["width"].as_str()),
        (Some("99.5"), Some("0.5"))
    );
}

#[test]
fn a_project_page_draws_its_flow_and_explains_each_recipe() {
    let h = home();
    let r = capstan_core::resolve::resolve(
        &h,
        "sample",
        "wine_clean",
        &capstan_core::resolve::RunRequest {
            user: Some("alice".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let settings: Vec<serde_json::Value> = capstan_engine::record::resolution_rows(&r)
        .into_iter()
        .filter(|(_, v, _)| !v.is_null())
        .map(|(k, v, o)| json!({"name": k, "value": v.as_str().map_or_else(|| v.to_string(), str::to_string), "origin": o.to_string()}))
        .collect();
    let ctx = json!({
        "project": {"key": "sample", "name": "Sample", "description": "Wine, cleaned and summed."},
        "graph": flowgraph::svg(&flow()),
        "recipes": [{"name": "wine_clean", "kind": "python", "inputs": ["wine"], "outputs": ["wine_clean"],
            "status": "stale", "why": ["input wine changed"], "settings": settings, "refused": null, "runs_on": "docker-small"}],
        "datasets": [{"name": "wine", "producer": null, "readers": ["wine_clean"], "state": "untracked", "version": null},
                     {"name": "wine_clean", "producer": "wine_clean", "readers": [], "state": "no data", "version": null}],
        "jobs": [view::job_row(&job(12, JobState::Succeeded))],
        "may_run": true,
        "said": "everything is up to date: nothing to build",
    });
    insta::assert_snapshot!(show(
        "project.html",
        &viewer("alice", false),
        "projects",
        "sample",
        ctx
    ));
}

#[test]
fn configurations_show_their_declaration_line_by_line_and_who_may_use_them() {
    let h = home();
    let exec: Vec<serde_json::Value> = h
        .exec_configs
        .values()
        .map(|c| {
            json!({
                "name": c.name, "kind": c.kind.value.as_str(), "description": c.description,
                "declared": view::declared_lines(&h, c.loc, false),
                "allowed": view::allowed(&h, &c.allowed, "alice", false),
                "running": 1, "max_concurrent": c.max_concurrent.as_ref().map(|m| m.value),
            })
        })
        .collect();
    let html = show(
        "configs.html",
        &viewer("alice", false),
        "configs",
        "Configurations",
        json!({"exec_configs": exec, "spark_configs": [], "clusters": [], "base_images": [], "code_envs": []}),
    );
    // Credentials in a configuration's env are not shown to users.
    assert!(!html.contains("hunter2"), "{html}");
    assert!(
        html.contains("AWS_SECRET_ACCESS_KEY = &quot;…&quot;"),
        "{html}"
    );
    insta::assert_snapshot!(html);
    let admin = view::declared_lines(&h, h.exec_configs["docker-small"].loc, true);
    assert!(admin.to_string().contains("hunter2"), "{admin}");
    assert_eq!(admin["file"], "exec-configs.toml");
    assert_eq!(admin["lines"][0]["n"], 1);
}

#[test]
fn projects_list() {
    insta::assert_snapshot!(show(
        "projects.html",
        &viewer("alice", false),
        "projects",
        "Projects",
        json!({"projects": [{"key": "sample", "name": "Sample", "description": "Wine.", "recipes": 3, "datasets": 4}]}),
    ));
}

#[test]
fn log_lines_keep_their_time_stream_and_colours() {
    assert_eq!(
        view::log_line_html("2026-12-04T04:30:01.250Z e \u{1b}[31mTraceback\u{1b}[0m <stdin>"),
        "<div class=\"l e\"><time datetime=\"2026-12-04T04:30:01.250Z\">04:30:01</time><span class=\"af1\">Traceback</span> &lt;stdin&gt;</div>"
    );
    // A line that is not in the stored form is shown whole.
    assert_eq!(
        view::log_line_html("plain"),
        "<div class=\"l\"><time datetime=\"\"></time>plain</div>"
    );
}

#[test]
fn times_sizes_and_durations_read_as_people_say_them() {
    assert_eq!(view::ago(NOW - 12_000, NOW), "12 s ago");
    assert_eq!(view::ago(NOW - 3 * 60_000, NOW), "3 min ago");
    assert_eq!(view::ago(NOW + 2 * 3_600_000, NOW), "in 2 h");
    assert_eq!(view::iso(NOW), "2026-12-04T04:30:00Z");
    assert_eq!(view::bytes(182_452_224), "174.0 MiB");
    assert_eq!(view::bytes(512), "512 B");
    assert_eq!(view::duration(41_200), "41.20 s");
    assert_eq!(view::duration(125_000), "2 min 5 s");
    assert_eq!(view::url_encode("a b/é&"), "a%20b/%C3%A9%26");
}

#[test]
fn the_flow_graph_places_each_node_right_of_what_it_reads() {
    insta::assert_snapshot!(flowgraph::svg(&flow()));
}

#[test]
fn actions_need_this_sessions_token_from_this_site() {
    let v = viewer("alice", false);
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, "127.0.0.1:7878".parse().unwrap());
    headers.insert(header::ORIGIN, "http://127.0.0.1:7878".parse().unwrap());
    assert!(v.check(&headers, Some("CSRF")).is_ok());
    assert!(v.check(&headers, Some("other")).is_err());
    assert!(v.check(&headers, None).is_err());
    let mut hx = headers.clone();
    hx.insert("x-csrf-token", "CSRF".parse().unwrap());
    assert!(v.check(&hx, None).is_ok());
    headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
    let Err(UiError::Page { status, message }) = v.check(&headers, Some("CSRF")) else {
        panic!("a cross-site POST was accepted");
    };
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        message,
        "refused: this request comes from evil.example, not from 127.0.0.1:7878"
    );
}

#[test]
fn the_session_cookie_is_for_this_site_only_and_expires() {
    assert_eq!(
        session_cookie("ab12", SESSION_TTL),
        "capstan_session=ab12; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=43200"
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::COOKIE,
        "theme=dark; capstan_session=ab12".parse().unwrap(),
    );
    assert_eq!(session_id(&headers).as_deref(), Some("ab12"));
    let sessions = Sessions::default();
    let (id, csrf) = sessions.open("HASH".into()).unwrap();
    assert_eq!((id.len(), csrf.len()), (64, 64));
    assert_eq!(sessions.get(&id).unwrap().token_sha256, "HASH");
    sessions.close(&id);
    assert!(sessions.get(&id).is_none());
}

#[test]
fn a_dataset_page_shows_its_schema_history_and_first_rows() {
    use capstan_data::arrow::datatypes::{DataType, Field, Schema};
    let h = home();
    let declared = &h.projects["sample"].datasets["wine_clean"];
    let info = capstan_data::DatasetInfo {
        rows: 178,
        size_bytes: 6_912,
        schema: std::sync::Arc::new(Schema::new(vec![
            Field::new("cultivar", DataType::Int64, false),
            Field::new("alcohol", DataType::Float64, true),
            Field::new("color", DataType::Utf8, true),
        ])),
        modified: None,
    };
    let state = DatasetState::Version {
        version: 3,
        at_ms: NOW - 30_000,
        provenance: capstan_core::flow::Provenance {
            written_by: capstan_core::flow::WrittenBy::Activity {
                job: 12,
                idx: 0,
                recipe: "wine_clean".into(),
            },
            inputs: [("wine".to_string(), 1)].into(),
            definition: Default::default(),
        },
    };
    let preview = vec![
        json!({"cultivar": 1, "alcohol": 14.23, "color": "red"}),
        json!({"cultivar": 2, "alcohol": null, "color": "<b>white</b>"}),
    ];
    // Job 11 read only: it is not in the history.
    let mut reader = job(11, JobState::Succeeded);
    reader.io_json = Some(r#"{"read":{"wine_clean":178},"written":{}}"#.into());
    let jobs = [job(12, JobState::Succeeded), reader];
    let ctx = view::dataset("sample", declared, Some(&info), &state, preview, &jobs);
    assert_eq!(ctx["writes"].as_array().unwrap().len(), 1);
    let html = show(
        "dataset.html",
        &viewer("alice", false),
        "projects",
        "wine_clean",
        ctx,
    );
    assert!(
        html.contains("&lt;b&gt;white") && !html.contains("<b>white"),
        "cells are escaped"
    );
    insta::assert_snapshot!(html);

    // No data yet: the declared columns, and nothing to preview.
    let ctx = view::dataset(
        "sample",
        declared,
        None,
        &DatasetState::Missing,
        vec![],
        &[],
    );
    insta::assert_snapshot!(
        "dataset_without_data",
        show(
            "dataset.html",
            &viewer("alice", false),
            "projects",
            "wine_clean",
            ctx
        )
    );
}

#[test]
fn a_model_page_lists_versions_newest_first_with_the_active_one() {
    use capstan_data::models::ModelVersion;
    let h = home();
    let declared = &h.projects["sample"].models["quality"];
    let version = |n: u64, score: f64| ModelVersion {
        version: n,
        at_ms: NOW - 3_600_000 * (3 - n as i64),
        provenance: Some(capstan_core::flow::Provenance {
            written_by: capstan_core::flow::WrittenBy::Activity {
                job: 20 + n as i64,
                idx: 0,
                recipe: "train_quality".into(),
            },
            inputs: [("wine_clean".to_string(), n)].into(),
            definition: Default::default(),
        }),
        metrics: json!({"metric": "accuracy", "score": score, "greater_is_better": true}),
        train_info: json!({"algorithm": "random_forest", "params": {"n_estimators": 100}}),
    };
    let evaluations = [json!({
        "at_ms": NOW - 60_000, "model_version": 2, "job": 31, "input": "wine_holdout", "rows": 40,
        "metrics": {"accuracy": 0.925, "f1": 0.91}
    })];
    let ctx = view::model(
        "sample",
        declared,
        &[version(1, 0.88), version(2, 0.94)],
        Some(2),
        &evaluations,
    );
    assert_eq!(ctx["versions"][0]["version"], 2, "newest first");
    assert_eq!(ctx["versions"][0]["active"], true);
    insta::assert_snapshot!(show(
        "model.html",
        &viewer("alice", false),
        "projects",
        "quality",
        ctx
    ));
}

#[test]
fn the_kernels_page_says_how_to_connect_jupyterlab() {
    let ctx = json!({
        "kernels": [{
            "id": "5f0c8a52-6d1e-4c1b-9a3e-0b8f3c2d1e4f", "name": "capstan-sample-pandas-docker-small",
            "last_activity": "2026-12-04T04:29:10.000000Z", "execution_state": "starting",
            "connections": 0, "job_id": 14, "user": "alice",
            "reason": "job 14 is starting: pulling image capstan/sample-pandas"
        }],
        "specs": [{"name": "capstan-sample-pandas-docker-small", "display": "sample · pandas · docker-small"}],
        "gateway": "http://capstan.example:7878",
    });
    let html = show(
        "kernels.html",
        &viewer("root", true),
        "kernels",
        "Kernels",
        ctx,
    );
    assert!(
        html.contains("<td>alice</td>"),
        "an admin sees whose kernel it is"
    );
    insta::assert_snapshot!(html);
    let none = show(
        "kernels.html",
        &viewer("alice", false),
        "kernels",
        "Kernels",
        json!({"kernels": [], "specs": [], "gateway": "http://h:7878"}),
    );
    assert!(none.contains("No kernel of yours is running"), "{none}");
}

#[test]
fn images_show_their_state_and_the_command_that_builds_them() {
    let mut h = home();
    h.images.insert(
        ("base".into(), "default".into(), None),
        capstan_core::model::ImageRecord {
            kind: "base".into(),
            name: "default".into(),
            exec_config: None,
            repository: "capstan-base-default".into(),
            tag: "3f9a1c2b".into(),
            image_id: "sha256:5d1e".into(),
            base_image_id: None,
            built_at: "2026-12-04T03:30:00Z".into(),
            size_bytes: 312_000_000,
            pushed: false,
            last_error: Some(
                "pip install failed: no matching distribution for pandas==9\nmore".into(),
            ),
        },
    );
    let rows = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(capstan_images::list_bases(&h, None));
    let base = view::image_rows(rows.iter().filter(|r| r.kind == "base"));
    let engine = view::image_rows(rows.iter().filter(|r| r.kind == "engine"));
    // The Kubernetes configuration needs the engine image, never built here.
    assert_eq!(engine[0]["state"], "missing");
    assert_eq!(engine[0]["command"], "capstan image build-engine");
    let html = show(
        "configs.html",
        &viewer("alice", false),
        "configs",
        "Configurations",
        json!({
            "exec_configs": [], "spark_configs": [], "clusters": [], "code_envs": [],
            "base_images": [{"name": "default", "declared": view::declared_lines(&h, h.base_images["default"].loc, false), "builds": base}],
            "engine_image": engine, "engine_reached": false,
        }),
    );
    assert!(
        html.contains("last build failed: pip install failed"),
        "{html}"
    );
    insta::assert_snapshot!(html);
}

#[test]
fn the_cluster_page_shows_each_engines_workloads_and_marks_leftovers() {
    use capstan_engine::backend::{ActivityKey, EngineWorkload, Usage};
    use capstan_engine::monitor::{EngineView, WorkloadView};
    let container = |name: &str, job_id: i64, state: &str| EngineWorkload {
        handle: format!("\n{name}"),
        name: name.into(),
        key: Some(ActivityKey {
            job_id,
            idx: 0,
            attempt: 1,
        }),
        job_id: Some(job_id),
        state: state.into(),
        cpu_request: None,
        cpu_limit: Some(2.0),
        memory_request: None,
        memory_limit: Some(4 << 30),
        usage: (state == "running").then_some(Usage {
            cpu_percent: Some(87.4),
            memory_bytes: Some(182_452_224),
        }),
    };
    let engines = vec![
        EngineView {
            kind: "docker",
            engine: "the local Docker engine (unix:///var/run/docker.sock)".into(),
            error: None,
            workloads: vec![
                WorkloadView {
                    workload: container("capstan-ab12-12-0-1", 12, "running"),
                    job: Some(job(12, JobState::Running)),
                    leftover: false,
                },
                WorkloadView {
                    workload: container("capstan-ab12-9-0-1", 9, "exited"),
                    job: Some(job(9, JobState::Succeeded)),
                    leftover: true,
                },
            ],
        },
        EngineView {
            kind: "kubernetes",
            engine: "namespace capstan of context prod".into(),
            error: Some("cannot reach the cluster: connection refused".into()),
            workloads: vec![],
        },
    ];
    let ctx = json!({"engines": crate::workloads_json(&engines), "leftovers": 1, "said": null});
    let html = show(
        "cluster.html",
        &viewer("root", true),
        "cluster",
        "Cluster",
        ctx.clone(),
    );
    assert!(html.contains("id=\"remove-leftovers\""), "{html}");
    assert!(html.contains("job 9 is succeeded"), "{html}");
    insta::assert_snapshot!(html);
    // The button is an admin's only.
    let html = show(
        "cluster.html",
        &viewer("alice", false),
        "cluster",
        "Cluster",
        ctx,
    );
    assert!(!html.contains("remove-leftovers"), "{html}");
}

#[test]
fn a_cluster_test_page_shows_its_steps_and_polls_until_the_end() {
    let line = |kind: &str, what: &str, detail: &str, took: Option<u64>| {
        let mut l = json!({"kind": kind, "what": what, "detail": detail, "text": ""});
        if let Some(t) = took {
            l["took_ms"] = json!(t);
        }
        l
    };
    let mut test = json!({
        "id": 3, "cluster": "local-docker", "exec_config": "docker-small", "user": "root",
        "started_at": "2026-12-04T04:29:58Z", "done": false, "passed": null,
        "lines": [
            line("ok", "engine reachable", "unix:///var/run/docker.sock, Docker 20.10.24", Some(4)),
            line("note", "", "using execution configuration docker-small (chosen with --exec-config)", None),
        ],
    });
    let running = show(
        "cluster_test.html",
        &viewer("root", true),
        "configs",
        "Test of local-docker",
        json!({"test": test}),
    );
    assert!(
        running.contains("hx-trigger=\"load delay:500ms\""),
        "{running}"
    );
    insta::assert_snapshot!(running);
    test["done"] = json!(true);
    test["passed"] = json!(false);
    test["lines"].as_array_mut().unwrap().extend([
        line(
            "fail",
            "container start",
            "capstan-test-python:bookworm-1: the image is not on the engine",
            Some(120),
        ),
        line(
            "skip",
            "callback to this machine",
            "the container never ran",
            None,
        ),
        json!({"kind": "error", "detail": "the test container did not succeed", "text": ""}),
    ]);
    let over = show(
        "cluster_test_steps.html",
        &viewer("root", true),
        "configs",
        "",
        json!({"test": test}),
    );
    assert!(
        !over.contains("hx-trigger"),
        "a finished test stops polling: {over}"
    );
    insta::assert_snapshot!("cluster_test_failed", over);
}
