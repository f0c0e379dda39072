//! `capstan run`, `jobs`, `job show`, `logs` and `cancel`: the commands that talk to the daemon.

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use crate::cli::{CancelArgs, JobShowArgs, JobsArgs, LogsArgs, RunArgs, WorkloadsArgs};
use crate::client::{Client, LogLine};
use crate::explain::parse_target;
use crate::{Exit, exit};

pub use capstan_core::quantity::human_bytes;

pub fn human_ms(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        let s = ms / 1000;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// `job 12 succeeded in 1.20s on local (exec config local), peak memory 9.1 MiB`.
pub fn summary(job: &Value) -> String {
    let state = job["state"].as_str().unwrap_or("?");
    let mut s = format!("job {} {state}", job["id"]);
    if let Some(ms) = job["duration_ms"].as_i64() {
        s += &format!(" in {}", human_ms(ms));
    }
    s += &format!(" on {}", job["kind"].as_str().unwrap_or("?"));
    match job["exec_config"].as_str() {
        Some(c) => s += &format!(" (exec config {c})"),
        None => s += " (no exec config)",
    }
    if let Some(c) = job["cluster"].as_str() {
        s += &format!(", cluster {c}");
    }
    if let Some(b) = job["peak_memory_bytes"].as_u64() {
        s += &format!(", peak memory {}", human_bytes(b));
    }
    if let Some(ms) = job["cpu_time_ms"].as_i64() {
        s += &format!(", CPU time {}", human_ms(ms));
    }
    s + &io_text(&job["io"])
}

/// `; read orders (3 rows); wrote order_totals (2 rows)` from a job's or activity's `io`.
pub fn io_text(io: &Value) -> String {
    let mut s = String::new();
    for (verb, key) in [("read", "read"), ("wrote", "written")] {
        if let Some(list) = rows(io, key) {
            s += &format!("; {verb} {list}");
        }
    }
    s
}

/// `clean (3 rows), left (1 row)`: the datasets of one side of an `io`, if any.
pub fn rows(io: &Value, key: &str) -> Option<String> {
    let map = io[key].as_object().filter(|m| !m.is_empty())?;
    let list: Vec<String> = map
        .iter()
        .map(|(d, n)| {
            let n = n.as_u64().unwrap_or(0);
            format!("{d} ({n} row{})", if n == 1 { "" } else { "s" })
        })
        .collect();
    Some(list.join(", "))
}

/// How long an activity ran, from its `started_at` and `finished_at`.
pub fn ran_for(a: &Value) -> Option<String> {
    let at = |k: &str| humantime::parse_rfc3339(a[k].as_str()?).ok();
    let d = at("finished_at")?.duration_since(at("started_at")?).ok()?;
    Some(human_ms(d.as_millis() as i64))
}

pub fn exit_for(job: &Value) -> u8 {
    if job["state"] == "succeeded" {
        exit::OK
    } else {
        exit::FAILURE
    }
}

fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled" | "timed_out")
}

/// Waits until a job is in a final state and returns it: each request waits in the daemon
/// until the job moves on, so its end is known as it happens.
pub async fn wait_final(client: &Client, id: i64) -> anyhow::Result<Value> {
    let mut job = next_change(client, id, &Value::Null).await?;
    loop {
        if is_final(job["state"].as_str().unwrap_or("")) {
            return Ok(job);
        }
        job = next_change(client, id, &job).await?;
    }
}

/// The job once it has moved on from `seen` (a new event), or as it is after 10 s.
pub async fn next_change(client: &Client, id: i64, seen: &Value) -> anyhow::Result<Value> {
    let events = seen["events"].as_array().map_or(0, Vec::len);
    client
        .get(&format!("/api/v1/jobs/{id}?after_events={events}&wait=10"))
        .await
}

/// Submits a run and returns the queued job.
pub async fn submit(client: &Client, args: &RunArgs) -> anyhow::Result<Value> {
    let (project, recipe) = parse_target(&args.target)?;
    let mut env = serde_json::Map::new();
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env `{kv}` is not KEY=VALUE");
        };
        env.insert(k.to_string(), Value::String(v.to_string()));
    }
    let body = json!({
        "project": project,
        "recipe": recipe,
        "exec_config": args.select.exec_config,
        "cluster": args.select.cluster,
        "spark_config": args.select.spark_config,
        "code_env": args.select.code_env,
        "timeout": args.timeout,
        "env": env,
    });
    client.post("/api/v1/jobs", &body).await
}

/// Streams a job's output as the recipe printed it (stdout to stdout, stderr to stderr), then
/// returns the finished job.
pub async fn follow(client: &Client, id: i64, prefix: &str) -> anyhow::Result<Value> {
    client
        .logs(id, true, None, |l| {
            if l.stderr {
                eprintln!("{prefix}{}", l.text);
            } else {
                say!("{prefix}{}", l.text);
            }
            Ok(())
        })
        .await?;
    let _ = std::io::stdout().flush();
    wait_final(client, id).await
}

pub async fn run(client: &Client, args: &RunArgs) -> anyhow::Result<u8> {
    let job = submit(client, args).await?;
    let id = job["id"].as_i64().unwrap_or(0);
    if args.detach {
        if args.json {
            say!("{}", serde_json::to_string_pretty(&job)?);
        } else {
            say!("job {id} queued ({})", args.target);
        }
        return Ok(exit::OK);
    }
    let job = if args.json {
        let j = wait_final(client, id).await?;
        say!("{}", serde_json::to_string_pretty(&j)?);
        j
    } else {
        eprintln!("job {id} queued: {}", args.target);
        let j = if job["build"].is_null() {
            follow(client, id, "").await?
        } else {
            // A training whose search is split over several activities: each part's start
            // and end (their logs: `capstan logs ID`).
            crate::flows::watch(client, id, |line| eprintln!("{line}")).await?
        };
        if j["build"].is_null() {
            eprintln!("{}", summary(&j));
        } else {
            eprintln!("{}", crate::flows::build_summary(&j));
        }
        if let Some(d) = j["diagnosis"].as_str()
            && j["state"] != "succeeded"
        {
            eprintln!("error: {d}");
        }
        j
    };
    Ok(exit_for(&job))
}

pub async fn list(client: &Client, args: &JobsArgs) -> anyhow::Result<u8> {
    let mut path = format!("/api/v1/jobs?limit={}", args.limit);
    if let Some(s) = &args.state {
        path += &format!("&state={s}");
    }
    let jobs = client.get(&path).await?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(exit::OK);
    }
    say!(
        "{:>6}  {:<10} {:<28} {:<10} {:<14} {:<24} {:>9}",
        "ID",
        "STATE",
        "RECIPE",
        "USER",
        "EXEC CONFIG",
        "CREATED",
        "DURATION"
    );
    for j in jobs.as_array().into_iter().flatten() {
        say!(
            "{:>6}  {:<10} {:<28} {:<10} {:<14} {:<24} {:>9}",
            j["id"].as_i64().unwrap_or(0),
            j["state"].as_str().unwrap_or(""),
            if j["build"].is_null() {
                format!(
                    "{}/{}",
                    j["project"].as_str().unwrap_or(""),
                    j["recipe"].as_str().unwrap_or("")
                )
            } else {
                format!(
                    "build {}/{}",
                    j["project"].as_str().unwrap_or(""),
                    j["recipe"].as_str().unwrap_or("")
                )
            },
            j["user"].as_str().unwrap_or(""),
            j["exec_config"].as_str().unwrap_or("-"),
            j["created_at"].as_str().unwrap_or(""),
            j["duration_ms"]
                .as_i64()
                .map(human_ms)
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(exit::OK)
}

pub async fn show(client: &Client, args: &JobShowArgs) -> anyhow::Result<u8> {
    let j = client.get(&format!("/api/v1/jobs/{}", args.id)).await?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(exit::OK);
    }
    let s = |k: &str| j[k].as_str().unwrap_or("-").to_string();
    say!("job {}: {}/{}", j["id"], s("project"), s("recipe"));
    say!("  state        {}", s("state"));
    say!("  user         {}", s("user"));
    let build = !j["build"].is_null();
    if build {
        say!(
            "  builds       {} ({} mode)",
            j["build"]["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|t| format!("{}/{t}", s("project")))
                .collect::<Vec<_>>()
                .join(", "),
            j["build"]["mode"].as_str().unwrap_or("smart")
        );
    } else {
        say!(
            "  runs on      {} (exec config {}, cluster {})",
            s("kind"),
            s("exec_config"),
            s("cluster")
        );
    }
    if let Some(code) = j["exit_code"].as_i64() {
        say!("  exit code    {code}");
    }
    if let Some(d) = j["diagnosis"].as_str() {
        say!("  diagnosis    {d}");
    }
    if let Some(ms) = j["duration_ms"].as_i64() {
        say!("  duration     {}", human_ms(ms));
    }
    if let Some(b) = j["peak_memory_bytes"].as_u64() {
        say!("  peak memory  {}", human_bytes(b));
    }
    if let Some(ms) = j["cpu_time_ms"].as_i64() {
        say!("  CPU time     {}", human_ms(ms));
    }
    if let Some(u) = j["usage"].as_object() {
        let cpu = u
            .get("cpu_percent")
            .and_then(Value::as_f64)
            .map_or("-".into(), |c| format!("{c:.0}%"));
        let mem = u
            .get("memory_bytes")
            .and_then(Value::as_u64)
            .map_or("-".into(), human_bytes);
        say!("  usage now    CPU {cpu}, memory {mem}");
    }
    if let Some(log) = j["activities"][0]["log"].as_str().filter(|_| !build) {
        say!("  log          {log}");
        // A Spark application on Kubernetes: its executors' logs, kept beside the driver's.
        if let Some(dir) = j["activities"][0]["dir"].as_str()
            && let executors = std::path::Path::new(dir).join("executors")
            && executors.is_dir()
        {
            say!("  executor logs {}/", executors.display());
        }
        // While a Spark application runs, its driver serves a UI; its log says where.
        if s("state") == "running"
            && let Some(ui) = std::fs::read_to_string(log)
                .ok()
                .and_then(|t| spark_ui(&t, &s("kind"), j["activities"][0]["backend_ref"].as_str()))
        {
            say!("  Spark UI     {ui}");
        }
    }
    if build {
        build_activities(&j)?;
    }
    say!("  history");
    for e in j["events"].as_array().into_iter().flatten() {
        let message = e["message"].as_str();
        let what = match (e["activity"].as_str(), message) {
            (Some(a), Some(m)) => format!("{a}: {m}"),
            (Some(a), None) => a.to_string(),
            (None, m) => m.unwrap_or("").to_string(),
        };
        say!(
            "    {}  {:<10} {what}",
            e["at"].as_str().unwrap_or(""),
            e["state"].as_str().unwrap_or(""),
        );
    }
    if let Some(settings) = j["resolution"]["settings"].as_object() {
        say!("  settings");
        for key in [
            "exec_config",
            "cluster",
            "image",
            "registry",
            "cpu_request",
            "cpu_limit",
            "memory_request",
            "memory_limit",
            "gpu",
            "namespace",
            "code_env",
            "timeout",
        ] {
            let Some(v) = settings.get(key) else { continue };
            if v["value"].is_null() {
                continue;
            }
            let value = v["value"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v["value"].to_string());
            let origin = match (v["file"].as_str(), v["line"].as_u64()) {
                (Some(f), Some(l)) => format!("{} ({f}:{l})", v["layer"].as_str().unwrap_or("")),
                _ => v["layer"].as_str().unwrap_or("").to_string(),
            };
            say!("    {key:<13} {value:<20} {origin}");
        }
    }
    Ok(exit::OK)
}

/// How the job names an activity: its recipe, or `RECIPE:N` for part N of a distributed
/// search (what `logs --activity` takes).
pub(crate) fn activity_name(a: &Value) -> &str {
    a["name"]
        .as_str()
        .or_else(|| a["recipe"].as_str())
        .unwrap_or("")
}

/// A build's activities: state, where each ran, how long, rows and diagnosis.
fn build_activities(j: &Value) -> anyhow::Result<()> {
    let project = j["project"].as_str().unwrap_or("");
    say!("  activities");
    for a in j["activities"].as_array().into_iter().flatten() {
        let name = format!("{project}/{}", activity_name(a));
        let mut line = format!(
            "    {name:<28} {:<10} {}",
            a["state"].as_str().unwrap_or(""),
            a["kind"].as_str().unwrap_or("")
        );
        if let Some(c) = a["exec_config"].as_str() {
            line += &format!(" (exec config {c})");
        }
        if let Some(took) = ran_for(a) {
            line += &format!(", {took}");
        }
        line += &io_text(&a["io"]);
        say!("{line}");
        if let Some(d) = a["diagnosis"].as_str() {
            say!("      {d}");
        }
        if let Some(log) = a["log"].as_str() {
            say!("      log {log}");
        }
    }
    Ok(())
}

pub async fn logs(client: &Client, args: &LogsArgs) -> anyhow::Result<u8> {
    let print = |l: LogLine<'_>| {
        // `2026-11-28T00:00:01.234567Z` → `00:00:01.234`.
        let time = l.time.get(11..23).unwrap_or(l.time);
        let stream = if l.stderr { "err" } else { "out" };
        say!("{time} {stream} | {}", l.text);
        Ok(())
    };
    let job = client.get(&format!("/api/v1/jobs/{}", args.id)).await?;
    if args.activity.is_some() || job["build"].is_null() {
        client
            .logs(args.id, args.follow, args.activity.as_deref(), print)
            .await?;
        return Ok(exit::OK);
    }
    // A build: each activity's log in turn, under its name (with --follow, each until it ends).
    let project = job["project"].as_str().unwrap_or("");
    for a in job["activities"].as_array().into_iter().flatten() {
        let recipe = activity_name(a);
        say!(
            "==> {project}/{recipe} ({}) <==",
            a["state"].as_str().unwrap_or("")
        );
        client
            .logs(args.id, args.follow, Some(recipe), print)
            .await?;
    }
    Ok(exit::OK)
}

pub async fn cancel(client: &Client, args: &CancelArgs) -> anyhow::Result<u8> {
    client
        .post(&format!("/api/v1/jobs/{}/cancel", args.id), &json!({}))
        .await?;
    // Wait until its processes are really gone (the job's final state says so).
    let job = tokio::time::timeout(Duration::from_secs(30), wait_final(client, args.id)).await;
    match job {
        Ok(Ok(j)) => {
            say!("job {} {}", args.id, j["state"].as_str().unwrap_or("?"));
            Ok(exit::OK)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            eprintln!("error: job {} did not stop within 30s", args.id);
            Err(Exit(exit::FAILURE).into())
        }
    }
}

/// Where a running Spark driver's UI is: an address on this machine, or the port of its pod or
/// container and how to reach it.
fn spark_ui(log: &str, kind: &str, backend_ref: Option<&str>) -> Option<String> {
    match (kind, backend_ref) {
        ("kubernetes", Some(r)) => {
            let (ns, pod) = r.split_once('|')?;
            let port = capstan_spark::ui_port(log)?;
            Some(format!(
                "port {port} of pod {ns}/{pod}: kubectl -n {ns} port-forward pod/{pod} {port}, then http://localhost:{port}"
            ))
        }
        ("docker", Some(r)) => {
            // `ENGINE|CONTAINER`.
            let id = r.rsplit('|').next()?;
            let port = capstan_spark::ui_port(log)?;
            Some(format!(
                "port {port} of container {}",
                id.chars().take(12).collect::<String>()
            ))
        }
        _ => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_else(|_| "localhost".into());
            capstan_spark::ui_address(log, host.trim())
        }
    }
}

/// `capstan cluster workloads`: what this instance has on each engine, as the web UI's
/// cluster page shows it.
pub async fn workloads(client: &Client, args: &WorkloadsArgs) -> anyhow::Result<u8> {
    let engines = client.get("/api/v1/workloads").await?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&engines)?);
        return Ok(exit::OK);
    }
    let list = engines.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        say!("no Docker engine or Kubernetes namespace is configured");
    }
    for e in &list {
        say!(
            "{} ({})",
            e["engine"].as_str().unwrap_or("?"),
            e["kind"].as_str().unwrap_or("?")
        );
        if let Some(err) = e["error"].as_str() {
            say!("  not reachable: {err}");
            continue;
        }
        let ws = e["workloads"].as_array().cloned().unwrap_or_default();
        if ws.is_empty() {
            say!("  nothing of this instance");
            continue;
        }
        say!(
            "  {:<36} {:>6} {:<10} {:<24} {:<16} {:>14} {:>26}",
            "NAME",
            "JOB",
            "USER",
            "RECIPE",
            "STATE",
            "CPU",
            "MEMORY"
        );
        for w in &ws {
            let cpu = match (w["cpu_percent"].as_f64(), w["cpu_limit"].as_f64()) {
                (Some(p), Some(l)) => format!("{p:.0}%, limit {l}"),
                (Some(p), None) => format!("{p:.0}%"),
                (None, Some(l)) => format!("limit {l}"),
                (None, None) => "-".into(),
            };
            let memory = match (w["memory_bytes"].as_u64(), w["memory_limit_bytes"].as_u64()) {
                (Some(m), Some(l)) => format!("{}, limit {}", human_bytes(m), human_bytes(l)),
                (Some(m), None) => human_bytes(m),
                (None, Some(l)) => format!("limit {}", human_bytes(l)),
                (None, None) => "-".into(),
            };
            let recipe = match (w["project"].as_str(), w["recipe"].as_str()) {
                (Some(p), Some(r)) => format!("{p}/{r}"),
                _ => "-".into(),
            };
            let state = if w["leftover"] == true {
                format!("{} (leftover)", w["state"].as_str().unwrap_or("?"))
            } else {
                w["state"].as_str().unwrap_or("?").to_string()
            };
            say!(
                "  {:<36} {:>6} {:<10} {:<24} {:<16} {:>14} {:>26}",
                w["name"].as_str().unwrap_or("?"),
                w["job_id"].as_i64().map_or("-".into(), |j| j.to_string()),
                w["user"].as_str().unwrap_or("-"),
                recipe,
                state,
                cpu,
                memory
            );
        }
    }
    Ok(exit::OK)
}

/// `capstan cluster remove-leftovers`.
pub async fn remove_leftovers(client: &Client) -> anyhow::Result<u8> {
    let answer = client
        .post("/api/v1/workloads/leftovers/remove", &json!({}))
        .await?;
    let said: Vec<&str> = answer["said"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if said.is_empty() {
        say!("there was no leftover to remove");
    }
    let mut failed = false;
    for line in said {
        failed |= line.starts_with("could not");
        say!("{line}");
    }
    Ok(if failed { exit::FAILURE } else { exit::OK })
}

#[cfg(test)]
mod tests {
    use super::spark_ui;

    #[test]
    fn the_spark_ui_of_a_pod_or_a_container_says_how_to_reach_it() {
        let log = "2026-11-28T03:00:00Z o 26/11/28 03:00:00 INFO Utils: Successfully started service 'SparkUI' on port 4040.\n";
        assert_eq!(
            spark_ui(
                log,
                "kubernetes",
                Some("capstan-spark|capstan-ab12cd34-7-0-0")
            )
            .as_deref(),
            Some(
                "port 4040 of pod capstan-spark/capstan-ab12cd34-7-0-0: kubectl -n capstan-spark port-forward \
                 pod/capstan-ab12cd34-7-0-0 4040, then http://localhost:4040"
            )
        );
        assert_eq!(
            spark_ui(
                log,
                "docker",
                Some("unix:///var/run/docker.sock|0123456789abcdef0123")
            )
            .as_deref(),
            Some("port 4040 of container 0123456789ab")
        );
        assert_eq!(spark_ui("no UI yet", "kubernetes", Some("ns|pod")), None);
    }
}
