//! `capstan build`, `capstan flow` and `capstan schedules`: a project's flow as a whole.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use capstan_core::flow::{self, BuildMode, DatasetState, RecipeStatus, WrittenBy};
use capstan_core::resolve::{RunRequest, resolve};
use capstan_data::{DatasetStore, ParquetStore};
use serde_json::{Value, json};

use crate::cli::{BuildArgs, FlowArgs, SchedulesArgs};
use crate::client::Client;
use crate::exit;
use crate::home::load_valid;
use crate::jobs::{human_bytes, human_ms, ran_for, rows};

/// The project and datasets of `capstan build`'s targets: `PROJECT` (its final outputs) or
/// `PROJECT/DATASET`, all of one project.
fn parse_targets(targets: &[String]) -> anyhow::Result<(String, Vec<String>)> {
    let mut project: Option<&str> = None;
    let mut datasets = Vec::new();
    for t in targets {
        let (p, d) = match t.split_once('/') {
            Some((p, d)) if !p.is_empty() && !d.is_empty() && !d.contains('/') => (p, Some(d)),
            None if !t.is_empty() => (t.as_str(), None),
            _ => bail!("`{t}` is not PROJECT or PROJECT/DATASET"),
        };
        match project {
            Some(first) if first != p => {
                bail!("one build builds datasets of one project: `{first}` and `{p}` differ")
            }
            _ => project = Some(p),
        }
        datasets.extend(d.map(String::from));
    }
    let Some(project) = project else {
        bail!("name what to build: PROJECT or PROJECT/DATASET");
    };
    Ok((project.to_string(), datasets))
}

fn placement(step: &Value) -> String {
    let kind = step["kind"].as_str().unwrap_or("?");
    let mut s = kind.to_string();
    if let Some(c) = step["exec_config"].as_str() {
        s += &format!(" (exec config {c}");
        if let Some(cl) = step["cluster"].as_str() {
            s += &format!(", cluster {cl}");
        }
        s += ")";
    }
    s
}

/// Prints a build's plan: each recipe, whether it runs and why, and where.
pub(crate) fn print_plan(answer: &Value) -> anyhow::Result<()> {
    let project = answer["project"].as_str().unwrap_or("");
    let steps = answer["steps"].as_array().cloned().unwrap_or_default();
    let runs = steps.iter().filter(|s| s["runs"] == true).count();
    say!(
        "build of {project} ({} mode): {runs} to run, {} up to date",
        answer["mode"].as_str().unwrap_or(""),
        steps.len() - runs
    );
    let width = steps
        .iter()
        .map(|s| s["recipe"].as_str().unwrap_or("").len())
        .max()
        .unwrap_or(0)
        + project.len()
        + 1;
    for s in &steps {
        let name = format!("{project}/{}", s["recipe"].as_str().unwrap_or(""));
        let why: Vec<&str> = s["why"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if s["runs"] == true {
            say!(
                "  run   {name:<width$}  on {}: {}",
                placement(s),
                why.join("; ")
            );
        } else {
            say!("  skip  {name:<width$}  {}", why.join("; "));
        }
    }
    Ok(())
}

pub async fn build(client: &Client, args: &BuildArgs) -> anyhow::Result<u8> {
    let (project, targets) = parse_targets(&args.targets)?;
    let mode = BuildMode::parse(&args.mode).ok_or_else(|| {
        anyhow::anyhow!(
            "--mode `{}` is not a build mode (expected one of: {})",
            args.mode,
            BuildMode::NAMES.join(", ")
        )
    })?;
    let body = json!({
        "targets": targets,
        "mode": mode.as_str(),
        "dry_run": args.dry_run,
        "exec_config": args.select.exec_config,
        "cluster": args.select.cluster,
        "spark_config": args.select.spark_config,
        "code_env": args.select.code_env,
    });
    let answer = client
        .post(&format!("/api/v1/projects/{project}/builds"), &body)
        .await?;
    let job = answer["job"].clone();
    if args.json && (args.dry_run || args.detach || job.is_null()) {
        say!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(exit::OK);
    }
    if !args.json {
        print_plan(&answer)?;
    }
    let Some(id) = job["id"].as_i64() else {
        if !args.json && !args.dry_run {
            say!("everything is up to date: nothing to run");
        }
        return Ok(exit::OK);
    };
    if args.detach {
        say!("job {id} queued");
        return Ok(exit::OK);
    }
    if !args.json {
        eprintln!("job {id} queued");
    }
    let quiet = args.json;
    let last = watch(client, id, |line| {
        if !quiet {
            eprintln!("{line}")
        }
    })
    .await?;
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({"plan": answer, "job": last}))?
        );
    } else {
        eprintln!("{}", build_summary(&last));
    }
    Ok(if last["state"] == "succeeded" {
        exit::OK
    } else {
        exit::FAILURE
    })
}

/// Follows a build until it ends, printing each activity's start and end as they happen (when
/// `print`); returns the finished job's detail.
pub(crate) async fn watch(
    client: &Client,
    id: i64,
    print: impl Fn(String),
) -> anyhow::Result<Value> {
    let mut seen: BTreeMap<i64, String> = BTreeMap::new();
    let mut j = crate::jobs::next_change(client, id, &Value::Null).await?;
    loop {
        let project = j["project"].as_str().unwrap_or("");
        for a in j["activities"].as_array().into_iter().flatten() {
            let idx = a["index"].as_i64().unwrap_or(-1);
            let state = a["state"].as_str().unwrap_or("").to_string();
            if seen.get(&idx) == Some(&state) {
                continue;
            }
            seen.insert(idx, state.clone());
            let name = format!("{project}/{}", crate::jobs::activity_name(a));
            match state.as_str() {
                "running" => print(format!("  {name}: running on {}", placement(a))),
                "succeeded" | "failed" | "cancelled" | "timed_out" | "skipped" => {
                    print(format!("  {name}: {}", activity_end(a)))
                }
                _ => {}
            }
        }
        if matches!(
            j["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled" | "timed_out")
        ) {
            return Ok(j);
        }
        j = crate::jobs::next_change(client, id, &j).await?;
    }
}

/// `succeeded in 1.20s; wrote clean (3 rows)`, `failed: …`, `skipped (upstream sample/b failed)`.
fn activity_end(a: &Value) -> String {
    let state = a["state"].as_str().unwrap_or("");
    if state == "skipped" {
        return a["diagnosis"].as_str().unwrap_or("skipped").to_string();
    }
    let mut s = state.replace('_', " ");
    if let Some(took) = ran_for(a) {
        s += &format!(" in {took}");
    }
    if let Some(b) = a["peak_memory_bytes"].as_u64() {
        s += &format!(", peak memory {}", human_bytes(b));
    }
    if let Some(w) = rows(&a["io"], "written") {
        s += &format!("; wrote {w}");
    }
    if state != "succeeded"
        && let Some(d) = a["diagnosis"].as_str()
    {
        s += &format!(": {d}");
    }
    s
}

/// `build job 12 failed in 3.40s: 2 succeeded, 1 failed, 1 skipped`.
pub(crate) fn build_summary(j: &Value) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in j["activities"].as_array().into_iter().flatten() {
        *counts
            .entry(a["state"].as_str().unwrap_or("?"))
            .or_default() += 1;
    }
    let mut s = format!(
        "build job {} {}",
        j["id"],
        j["state"].as_str().unwrap_or("?")
    );
    if let Some(ms) = j["duration_ms"].as_i64() {
        s += &format!(" in {}", human_ms(ms));
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(state, n)| format!("{n} {}", state.replace('_', " ")))
        .collect();
    s += &format!(": {}", parts.join(", "));
    if j["state"] != "succeeded"
        && let Some(d) = j["diagnosis"].as_str()
    {
        s += &format!("\nerror: {d}");
    }
    s
}

/// `capstan flow PROJECT`: from the home's files and datasets directly, like `capstan datasets`.
pub fn flow(root: &Path, args: &FlowArgs, token: Option<&str>) -> anyhow::Result<u8> {
    crate::home::acting_user_may(
        root,
        token,
        &args.project,
        capstan_core::model::Permission::Read,
    )?;
    let home = load_valid(root)?;
    let store = ParquetStore::new(root);
    let project = &args.project;
    let request = RunRequest::default();
    let view = flow::view(
        &home,
        project,
        |d| store.state(project, d),
        |r| {
            let res = resolve(&home, project, &r.name, &request).map_err(|errors| {
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            flow::definition(&home, root, &res)
        },
    )
    .map_err(|errors| anyhow::anyhow!("{}", errors.join("\n")))?;
    if args.dot {
        print!("{}", flow::to_dot(&view));
        return Ok(exit::OK);
    }
    if args.mermaid {
        print!("{}", flow::to_mermaid(&view));
        return Ok(exit::OK);
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&view_json(&view))?);
        return Ok(exit::OK);
    }
    say!("flow of {project}");
    say!("  recipes");
    let width = view.recipes.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let kinds = view.recipes.iter().map(|r| r.kind.len()).max().unwrap_or(0);
    for r in &view.recipes {
        let status = match &r.status {
            RecipeStatus::Stale(why) => format!("stale: {}", why.join("; ")),
            other => other.as_str().to_string(),
        };
        say!(
            "    {:<width$}  {:<kinds$}  {} → {}  {status}",
            r.name,
            r.kind,
            list_or_dash(&r.inputs),
            list_or_dash(&r.outputs)
        );
    }
    say!("  datasets");
    let width = view
        .datasets
        .iter()
        .map(|d| d.name.len())
        .max()
        .unwrap_or(0);
    for d in &view.datasets {
        let state = match (&d.state, &d.producer) {
            (DatasetState::Missing, None) => format!(
                "no data: import it with `capstan dataset import {project}/{} FILE.csv`",
                d.name
            ),
            (state, _) => dataset_state(state),
        };
        say!("    {:<width$}  {state}", d.name);
    }
    Ok(exit::OK)
}

fn list_or_dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

fn dataset_state(s: &DatasetState) -> String {
    match s {
        DatasetState::Missing => "no data".into(),
        DatasetState::Untracked => "data with no record of what wrote it".into(),
        DatasetState::Version {
            version,
            at_ms,
            provenance,
        } => {
            let at = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis((*at_ms).max(0) as u64),
            );
            let by = match &provenance.written_by {
                WrittenBy::Activity { job, recipe, .. } => format!("built by {recipe} (job {job})"),
                WrittenBy::Import { user, file } => match file {
                    Some(f) => format!("imported from {f} by {user}"),
                    None => format!("written through the API by {user}"),
                },
            };
            format!("version {version}, {by}, {at}")
        }
    }
}

fn state_json(s: &DatasetState) -> Value {
    match s {
        DatasetState::Missing => json!({"state": "missing"}),
        DatasetState::Untracked => json!({"state": "untracked"}),
        DatasetState::Version {
            version,
            at_ms,
            provenance,
        } => {
            let by = match &provenance.written_by {
                WrittenBy::Activity { job, idx, recipe } => {
                    json!({"activity": {"job": job, "index": idx, "recipe": recipe}})
                }
                WrittenBy::Import { user, file } => json!({"import": {"user": user, "file": file}}),
            };
            json!({
                "state": "version",
                "version": version,
                "at_ms": at_ms,
                "written_by": by,
                "inputs": provenance.inputs,
                "definition": provenance.definition,
            })
        }
    }
}

fn view_json(v: &flow::FlowView) -> Value {
    json!({
        "project": v.project,
        "recipes": v.recipes.iter().map(|r| json!({
            "name": r.name,
            "kind": r.kind,
            "inputs": r.inputs,
            "outputs": r.outputs,
            "status": r.status.as_str(),
            "why": match &r.status { RecipeStatus::Stale(w) => w.clone(), _ => Vec::new() },
        })).collect::<Vec<_>>(),
        "datasets": v.datasets.iter().map(|d| {
            let mut s = state_json(&d.state);
            s["name"] = json!(d.name);
            s["producer"] = json!(d.producer);
            s["readers"] = json!(d.readers);
            s
        }).collect::<Vec<_>>(),
    })
}

pub async fn schedules(client: &Client, args: &SchedulesArgs) -> anyhow::Result<u8> {
    let list = client.get("/api/v1/schedules").await?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(exit::OK);
    }
    let rows = list.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        say!("no schedules: add a [schedule.NAME] table to a project.toml");
        return Ok(exit::OK);
    }
    say!(
        "{:<24} {:<16} {:<16} {:<24} {:<24} {}",
        "SCHEDULE",
        "CRON",
        "TIME ZONE",
        "NEXT RUN",
        "LAST RUN",
        "LAST JOB"
    );
    for s in &rows {
        let name = format!(
            "{}/{}",
            s["project"].as_str().unwrap_or(""),
            s["name"].as_str().unwrap_or("")
        );
        let next = if s["enabled"] == false {
            "disabled".to_string()
        } else {
            s["next_run"].as_str().unwrap_or("-").to_string()
        };
        let last_job = match (s["last_job"].as_i64(), s["last_job_state"].as_str()) {
            (Some(id), Some(st)) => format!("{id} ({st})"),
            (Some(id), None) => id.to_string(),
            _ => "-".into(),
        };
        say!(
            "{:<24} {:<16} {:<16} {:<24} {:<24} {}",
            name,
            s["cron"].as_str().unwrap_or(""),
            s["time_zone"].as_str().unwrap_or(""),
            next,
            s["last_run"].as_str().unwrap_or("-"),
            last_job
        );
        if let Some(n) = s["note"].as_str() {
            say!("  {n}");
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::parse_targets;

    #[test]
    fn targets_are_datasets_of_one_project() {
        assert_eq!(
            parse_targets(&["sample/a".into(), "sample/b".into()]).unwrap(),
            ("sample".into(), vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse_targets(&["sample".into()]).unwrap(),
            ("sample".into(), vec![])
        );
        let err = |t: &[&str]| {
            parse_targets(&t.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&["a/x", "b/y"]),
            "one build builds datasets of one project: `a` and `b` differ"
        );
        assert_eq!(err(&["a/"]), "`a/` is not PROJECT or PROJECT/DATASET");
        assert_eq!(err(&[]), "name what to build: PROJECT or PROJECT/DATASET");
    }
}
