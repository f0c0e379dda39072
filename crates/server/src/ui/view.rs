//! What the pages show, as template contexts made from the engine's records: pure functions,
//! so the tests render each template with real-shaped data (insta snapshots).

use capstan_core::diag::Loc;
use capstan_core::job::JobState;
use capstan_core::model::{Allowed, Home};
use capstan_engine::JobDetail;
use capstan_store::JobRow;
use serde_json::{Value, json};

use super::ansi;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `s` for a query string.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The filters the templates use: `ago(now)`, `iso`, `bytes`, `dur`, `logline`.
pub fn register_filters(env: &mut minijinja::Environment<'static>) {
    env.add_filter("ago", |ms: Option<i64>, now: i64| ms.map(|t| ago(t, now)));
    env.add_filter("iso", |ms: Option<i64>| ms.map(iso));
    env.add_filter("bytes", |n: Option<i64>| n.map(bytes));
    env.add_filter("dur", |ms: Option<i64>| ms.map(duration));
    env.add_filter("truncate", |s: String, n: usize| {
        if s.chars().count() <= n {
            s
        } else {
            format!(
                "{}…",
                s.chars().take(n.saturating_sub(1)).collect::<String>()
            )
        }
    });
    env.add_filter("logline", |line: String| {
        minijinja::Value::from_safe_string(log_line_html(&line))
    });
}

/// "12 s ago", "3 min ago", "in 2 h": the exact time goes in the element's title.
pub fn ago(t: i64, now: i64) -> String {
    let d = (now - t).abs() / 1000;
    let amount = match d {
        0..=59 => format!("{d} s"),
        60..=3599 => format!("{} min", d / 60),
        3600..=86_399 => format!("{} h", d / 3600),
        _ => format!("{} days", d / 86_400),
    };
    if now >= t {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

pub fn iso(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn bytes(n: i64) -> String {
    capstan_core::quantity::human_bytes(n.max(0) as u64)
}

pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{:.2} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} min {} s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{} h {} min", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// One stored log line (`TIMESTAMP STREAM TEXT`, STREAM `o` or `e`) as HTML: the time faint,
/// standard error marked, the text with its colours.
pub fn log_line_html(line: &str) -> String {
    let mut parts = line.splitn(3, ' ');
    let (ts, stream, text) = match (parts.next(), parts.next(), parts.next()) {
        (Some(ts), Some(s @ ("o" | "e")), text) if ts.contains('T') => (ts, s, text.unwrap_or("")),
        _ => ("", "o", line),
    };
    let class = if stream == "e" { "l e" } else { "l" };
    let time = ts
        .split_once('T')
        .map_or("", |(_, t)| t.trim_end_matches('Z'));
    let time = time.split('.').next().unwrap_or(time);
    format!(
        "<div class=\"{class}\"><time datetime=\"{}\">{}</time>{}</div>",
        attr(ts),
        attr(time),
        ansi::to_html(text)
    )
}

fn attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// How a recipe's name reads in a list: a notebook kernel's activity is "kernel".
fn recipe_label(recipe: &str) -> &str {
    if recipe == capstan_core::job::KERNEL_RECIPE {
        "notebook kernel"
    } else {
        recipe
    }
}

/// A job as a row of a list.
pub fn job_row(j: &JobRow) -> Value {
    json!({
        "id": j.id,
        "project": j.project,
        "recipe": j.recipe,
        "label": if j.is_build() { format!("build of {}", build_targets(j)) } else { recipe_label(&j.recipe).to_string() },
        "user": j.user,
        "state": j.state.as_str(),
        "final": j.state.is_final(),
        "exec_config": j.exec_config,
        "cluster": j.cluster,
        "kind": j.kind,
        "created_at": j.created_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
        "duration_ms": match (j.started_at, j.finished_at) { (Some(s), Some(f)) => Some(f - s), _ => None },
        "diagnosis": j.diagnosis,
        "exit_code": j.exit_code,
        "peak_memory_bytes": j.peak_memory_bytes,
        "cpu_time_ms": j.cpu_time_ms,
    })
}

fn build_targets(j: &JobRow) -> String {
    let targets: Vec<String> = j
        .build_json
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .and_then(|v| v["targets"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    if targets.is_empty() {
        "everything".into()
    } else {
        targets.join(", ")
    }
}

/// Rows read and written (`{"read": {dataset: rows}, "written": …}`) as lists.
fn io_lists(io: Option<&str>) -> Value {
    let v: Value = io
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null);
    let list = |side: &str| -> Vec<Value> {
        v[side]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(d, n)| json!({"dataset": d, "rows": n}))
                    .collect()
            })
            .unwrap_or_default()
    };
    json!({"read": list("read"), "written": list("written")})
}

/// A job's page: its summary, its activities on a timeline, its history, the activity whose
/// log is shown.
pub fn job_detail(d: &JobDetail, activity: Option<&str>, now: i64) -> Value {
    let j = &d.job;
    let t0 = j.started_at.unwrap_or(j.created_at);
    let t1 = j.finished_at.unwrap_or(now).max(t0 + 1);
    let span = (t1 - t0) as f64;
    let activities: Vec<Value> = d
        .activities
        .iter()
        .map(|a| {
            let start = a.started_at.unwrap_or(t1);
            let end = a.finished_at.unwrap_or(if a.state.is_final() { start } else { now });
            // A bar at least half a percent wide, inside the track.
            let left = ((start - t0).max(0) as f64 / span * 100.0).clamp(0.0, 99.5);
            let width = ((end - start).max(0) as f64 / span * 100.0)
                .max(0.5)
                .min(100.0 - left);
            json!({
                "name": a.name(),
                "recipe": a.recipe,
                "state": a.state.as_str(),
                "started_at": a.started_at,
                "finished_at": a.finished_at,
                "duration_ms": match (a.started_at, a.finished_at) { (Some(s), Some(f)) => Some(f - s), _ => None },
                "diagnosis": a.diagnosis,
                "exit_code": a.exit_code,
                "peak_memory_bytes": a.peak_memory_bytes,
                "exec_config": a.exec_config.clone().or_else(|| j.exec_config.clone()),
                "kind": a.kind.clone().unwrap_or_else(|| j.kind.clone()),
                "io": io_lists(if j.is_build() { a.io_json.as_deref() } else { j.io_json.as_deref() }),
                "left": format!("{left:.1}"),
                "width": format!("{width:.1}"),
            })
        })
        .collect();
    let names: Vec<String> = d.activities.iter().map(|a| a.name()).collect();
    let shown = activity
        .filter(|a| names.iter().any(|n| n == a))
        .map(str::to_string)
        .or_else(|| names.first().cloned());
    let events: Vec<Value> = d
        .events
        .iter()
        .map(|e| {
            json!({
                "at": e.at,
                "state": e.state.as_str(),
                "message": e.message,
                "activity": e.activity.and_then(|i| d.activities.iter().find(|a| a.idx == i)).map(|a| a.name()),
            })
        })
        .collect();
    let waiting = (!j.state.is_final())
        .then(|| d.events.last().and_then(|e| e.message.clone()))
        .flatten();
    json!({
        "job": job_row(j),
        "build": j.is_build(),
        "io": io_lists(j.io_json.as_deref()),
        "activities": activities,
        "events": events,
        "activity": shown,
        "waiting": waiting,
        "cancellable": !j.state.is_final(),
    })
}

/// The overview: work that is not over, per configuration and per cluster, with why each job
/// waits.
pub fn overview(home: &Home, active: &[(JobRow, Option<String>)]) -> Value {
    let mut configs: Vec<Value> = home
        .exec_configs
        .values()
        .map(|c| {
            slot_row(
                &c.name,
                c.kind.value.as_str(),
                c.max_concurrent.as_ref().map(|m| m.value),
                active,
                |j| j.exec_config.as_deref() == Some(c.name.as_str()),
            )
        })
        .collect();
    if active.iter().any(|(j, _)| j.exec_config.is_none()) {
        configs.push(slot_row("local (built in)", "local", None, active, |j| {
            j.exec_config.is_none()
        }));
    }
    // A cluster's slots are shared by every configuration sent there.
    let clusters: Vec<Value> = home
        .clusters
        .values()
        .map(|c| {
            slot_row(
                &c.name,
                c.kind().as_str(),
                c.max_concurrent.as_ref().map(|m| m.value),
                active,
                |j| j.cluster.as_deref() == Some(c.name.as_str()),
            )
        })
        .collect();
    let jobs: Vec<Value> = active
        .iter()
        .map(|(j, why)| {
            let mut row = job_row(j);
            row["why"] = json!(why);
            row
        })
        .collect();
    json!({"configs": configs, "clusters": clusters, "jobs": jobs})
}

/// One row of the overview's slot tables: the active jobs `of` it, by state.
fn slot_row(
    name: &str,
    kind: &str,
    max_concurrent: Option<u32>,
    active: &[(JobRow, Option<String>)],
    of: impl Fn(&JobRow) -> bool,
) -> Value {
    let count = |states: &[JobState]| {
        active
            .iter()
            .filter(|(j, _)| of(j) && states.contains(&j.state))
            .count()
    };
    json!({
        "name": name,
        "kind": kind,
        "max_concurrent": max_concurrent,
        "running": count(&[JobState::Running]),
        "starting": count(&[JobState::Preparing, JobState::Starting]),
        "queued": count(&[JobState::Queued]),
    })
}

/// The lines of the TOML table an object was declared by (its header and each of its fields,
/// with their line numbers): where a value comes from, exactly as it is written. Values of
/// `env` tables are hidden from non-admins (configurations carry credentials there).
pub fn declared_lines(home: &Home, loc: Loc, admin: bool) -> Value {
    if loc == Loc::NOWHERE {
        return json!({"file": null, "lines": []});
    }
    let file = home.sources.get(loc.file);
    let text = &file.text;
    let lines: Vec<&str> = text.lines().collect();
    let first = (loc.line.max(1) - 1) as usize;
    // The header names the table; its subtables (`[exec_config.x.docker]`) belong to it.
    let header = lines.get(first).map(|l| l.trim()).unwrap_or("");
    let prefix = header
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let mut out = Vec::new();
    let mut in_env = false;
    for (i, line) in lines.iter().enumerate().skip(first) {
        let t = line.trim();
        if i > first && t.starts_with('[') {
            let name = t.trim_start_matches('[').trim_end_matches(']');
            if !name.starts_with(&format!("{prefix}.")) {
                break;
            }
            in_env = name.ends_with(".env");
        }
        let shown = if !admin && in_env && !t.starts_with('[') && t.contains('=') {
            format!("{} = \"…\"", t.split('=').next().unwrap_or("").trim())
        } else {
            line.to_string()
        };
        out.push(json!({"n": i + 1, "text": shown}));
    }
    while out
        .last()
        .is_some_and(|l| l["text"].as_str().is_some_and(|t| t.trim().is_empty()))
    {
        out.pop();
    }
    json!({"file": file.rel_path.display().to_string(), "line": loc.line, "lines": out})
}

/// Who may use an object, and whether `user` may.
pub fn allowed(home: &Home, allowed: &Allowed, user: &str, admin: bool) -> Value {
    let groups = allowed.group_names();
    let mine = admin
        || matches!(allowed, Allowed::Everyone)
        || home
            .users
            .get(user)
            .is_some_and(|u| u.groups.iter().any(|g| groups.contains(&g.value.as_str())));
    json!({
        "everyone": matches!(allowed, Allowed::Everyone),
        "groups": groups,
        "mine": mine,
    })
}

/// A dataset's page: its schema (stored types beside the declared ones), rows and size, the
/// version it is at and what wrote it from what, the jobs that wrote it with their row counts,
/// and its first rows (`preview`, as `capstan_data::display::json_rows` makes them).
pub fn dataset(
    project: &str,
    declared: &capstan_core::model::Dataset,
    info: Option<&capstan_data::DatasetInfo>,
    state: &capstan_core::flow::DatasetState,
    preview: Vec<Value>,
    jobs: &[JobRow],
) -> Value {
    use capstan_core::flow::{DatasetState, WrittenBy};
    let declared_type = |c: &str| {
        declared
            .schema
            .iter()
            .find(|(name, _)| name == c)
            .map(|(_, t)| t.value.clone())
    };
    let columns: Vec<Value> = match info {
        Some(i) => i
            .schema
            .fields()
            .iter()
            .map(|f| {
                json!({
                    "name": f.name(),
                    "type": capstan_data::type_name(f.data_type()),
                    "declared": declared_type(f.name()),
                })
            })
            .collect(),
        None => declared
            .schema
            .iter()
            .map(|(c, t)| json!({"name": c, "type": null, "declared": t.value}))
            .collect(),
    };
    let version = match state {
        DatasetState::Version {
            version,
            at_ms,
            provenance,
        } => {
            let by = match &provenance.written_by {
                WrittenBy::Activity { job, recipe, .. } => json!({"job": job, "recipe": recipe}),
                WrittenBy::Import { user, file } => json!({"user": user, "file": file}),
            };
            json!({"version": version, "at": at_ms, "by": by, "inputs": provenance.inputs})
        }
        _ => Value::Null,
    };
    // Its history as jobs record it: each job that wrote it, with the rows it wrote.
    let writes: Vec<Value> = jobs
        .iter()
        .filter_map(|j| {
            let io: Value = serde_json::from_str(j.io_json.as_deref()?).ok()?;
            let rows = io["written"].get(&declared.name)?.clone();
            let mut row = job_row(j);
            row["rows"] = rows;
            Some(row)
        })
        .take(20)
        .collect();
    let preview_columns: Vec<&str> = info
        .map(|i| {
            i.schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "project": project,
        "dataset": {"name": declared.name, "description": declared.description},
        "rows": info.map(|i| i.rows),
        "size_bytes": info.map(|i| i.size_bytes as i64),
        "columns": columns,
        "version": version,
        "untracked": matches!(state, DatasetState::Untracked),
        "writes": writes,
        "preview": preview,
        "preview_columns": preview_columns,
    })
}

/// A saved model's page: its versions, newest first, with score, algorithm and the job that
/// trained each, which one is active, and its evaluations (newest first, 20 at most).
pub fn model(
    project: &str,
    declared: &capstan_core::model::SavedModel,
    versions: &[capstan_data::models::ModelVersion],
    active: Option<u64>,
    evaluations: &[Value],
) -> Value {
    let rows: Vec<Value> = versions
        .iter()
        .rev()
        .map(|v| {
            let job = v.provenance.as_ref().and_then(|p| match &p.written_by {
                capstan_core::flow::WrittenBy::Activity { job, .. } => Some(*job),
                _ => None,
            });
            let params = v.train_info.get("params").filter(|p| !p.is_null());
            json!({
                "version": v.version,
                "at": v.at_ms,
                "active": active == Some(v.version),
                "metric": v.score().map(|(m, _)| m),
                "score": v.score().map(|(_, x)| format!("{x:.4}")),
                "algorithm": v.train_info["algorithm"].as_str(),
                "params": params.map(Value::to_string),
                "job": job,
            })
        })
        .collect();
    let evaluations: Vec<Value> = evaluations
        .iter()
        .rev()
        .take(20)
        .map(|e| {
            let metrics: Vec<String> = e["metrics"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| match v.as_f64() {
                            Some(f) => format!("{k} {f:.4}"),
                            None => format!("{k} {v}"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "at": e["at_ms"].as_i64(),
                "version": e["model_version"].as_u64(),
                "job": e["job"].as_i64(),
                "input": e["input"].as_str(),
                "rows": e["rows"].as_u64(),
                "metrics": metrics.join(", "),
            })
        })
        .collect();
    json!({
        "project": project,
        "model": {
            "name": declared.name,
            "description": declared.description,
            "activation": declared.activation.value.as_str(),
        },
        "versions": rows,
        "evaluations": evaluations,
    })
}

/// Image builds as rows: state, image, size, age, what uses it, pins, the last build's error,
/// and the command that (re)builds it.
pub fn image_rows<'a>(rows: impl Iterator<Item = &'a capstan_images::ImageRow>) -> Value {
    rows.map(|r| {
        let record = r.record.as_ref().filter(|x| !x.image_id.is_empty());
        let command = match r.kind {
            "base" => format!("capstan image build-base {}", r.name),
            "engine" => "capstan image build-engine".to_string(),
            _ => format!("capstan env build {}", r.name),
        };
        json!({
            "kind": r.kind,
            "name": r.name,
            "for": r.exec_config,
            "state": r.state.as_str(),
            "image": record.map(|x| x.reference()),
            "size_bytes": record.map(|x| x.size_bytes as i64),
            "built_ms": record.and_then(|x| rfc3339_ms(&x.built_at)),
            "pushed": record.is_some_and(|x| x.pushed),
            "used_by": r.used_by,
            "pins": r.pins,
            "last_error": r.record.as_ref().and_then(|x| x.last_error.as_deref()).map(|e| e.lines().next().unwrap_or("").to_string()),
            "command": command,
        })
    })
    .collect()
}

fn rfc3339_ms(t: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339_weak(t).ok()?;
    Some(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}
