//! Flows through the daemon: builds of several activities in dependency order, smart rebuilds
//! from dataset versions, failures that skip downstream, a `kill -9` mid-build, schedules.

use std::path::{Path, PathBuf};

use crate::support::{TestHome, import_csv, stderr, stdout, wait_for};

/// A shell recipe of `sample` that counts its runs in `SHARED/NAME.runs`, does `body`, then
/// writes each of its outputs (one row) through the data API, as CSV.
fn shell_recipe(h: &TestHome, name: &str, inputs: &[&str], outputs: &[&str], body: &str) {
    let list = |l: &[&str]| {
        l.iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let shared = h.shared();
    let mut code = format!(
        "set -e\necho run >> {}/{name}.runs\n{body}\n",
        shared.display()
    );
    for o in outputs {
        code += &format!(
            "printf 'recipe,n\\n{name},1\\n' | curl -fsS -X PUT -H \"Authorization: Bearer $(cat \"$CAPSTAN_TOKEN_FILE\")\" \
             -H 'Content-Type: text/csv' --data-binary @- \"$CAPSTAN_API_URL/api/v1/projects/sample/datasets/{o}/data\" >/dev/null\n"
        );
    }
    h.recipe(
        name,
        "shell",
        "sh",
        &code,
        &format!(
            "exec_config = \"local\"\ninputs = [{}]\noutputs = [{}]",
            list(inputs),
            list(outputs)
        ),
    );
}

fn runs(h: &TestHome, name: &str) -> usize {
    std::fs::read_to_string(h.shared().join(format!("{name}.runs")))
        .map_or(0, |t| t.lines().count())
}

fn declare(h: &TestHome, datasets: &[&str]) {
    let text: String = datasets
        .iter()
        .map(|d| format!("\n[dataset.{d}]\n"))
        .collect();
    h.append("projects/sample/project.toml", &text);
}

/// `capstan build ARGS…` against the daemon; its output.
fn build(h: &TestHome, args: &[&str]) -> std::process::Output {
    h.capstan().arg("build").args(args).output().unwrap()
}

/// Waits (up to 60 s) in a recipe until `file` exists; fails the recipe if it never does.
fn wait_file(file: &Path) -> String {
    format!(
        "i=0; while [ ! -e {f} ]; do i=$((i+1)); [ $i -lt 1200 ] || {{ echo 'timed out waiting for {f}' >&2; exit 9; }}; sleep 0.05; done",
        f = file.display()
    )
}

/// The flow's recipes by status, from `capstan flow --json`.
fn statuses(h: &TestHome) -> Vec<(String, String)> {
    let out = h
        .capstan()
        .args(["flow", "sample", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v["recipes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| ["a", "b", "c", "d"].contains(&r["name"].as_str().unwrap()))
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The diamond raw → a → (b, c) → d, where b and c each wait for the other to have started:
/// the build succeeds only if they run at the same time.
fn diamond(h: &TestHome) -> PathBuf {
    import_csv(h, "raw", "x\n1\n");
    declare(h, &["a", "b", "c", "d"]);
    let shared = h.shared();
    shell_recipe(h, "a", &["raw"], &["a"], "");
    shell_recipe(
        h,
        "b",
        &["a"],
        &["b"],
        &format!(
            "touch {s}/b.started\n{}",
            wait_file(&shared.join("c.started")),
            s = shared.display()
        ),
    );
    shell_recipe(
        h,
        "c",
        &["a"],
        &["c"],
        &format!(
            "touch {s}/c.started\n{}",
            wait_file(&shared.join("b.started")),
            s = shared.display()
        ),
    );
    shell_recipe(h, "d", &["b", "c"], &["d"], "");
    shared
}

#[test]
fn a_diamond_builds_in_order_in_parallel_and_rebuilds_only_what_is_stale() {
    let h = TestHome::new("flow-diamond");
    diamond(&h);
    let d = h.start();
    let dry = build(&h, &["sample/d", "--dry-run"]);
    let plan = stdout(&dry);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        plan.contains("4 to run")
            && plan.contains("run   sample/a")
            && plan.contains("never built"),
        "{plan}"
    );
    assert_eq!(runs(&h, "a"), 0, "a dry run runs nothing");

    let first = build(&h, &["sample/d"]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}\n{}\n{}",
        stdout(&first),
        stderr(&first),
        d.log()
    );
    for r in ["a", "b", "c", "d"] {
        assert_eq!(runs(&h, r), 1, "{r}");
    }
    assert!(stderr(&first).contains("4 succeeded"), "{}", stderr(&first));
    // `job show` lists the activities, in dependency order, with what each waited for.
    let jobs = d.get("/api/v1/jobs?limit=1");
    let job = d.job(jobs[0]["id"].as_i64().unwrap());
    let acts: Vec<(String, String, Vec<String>)> = job["activities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["recipe"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
                a["needs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    let s = |v: &str| v.to_string();
    assert_eq!(
        acts,
        [
            (s("a"), s("succeeded"), vec![]),
            (s("b"), s("succeeded"), vec![s("a")]),
            (s("c"), s("succeeded"), vec![s("a")]),
            (s("d"), s("succeeded"), vec![s("b"), s("c")]),
        ]
    );
    assert_eq!(job["io"]["written"]["d"], 1, "{job}");
    let shown = h
        .capstan()
        .args(["job", "show", &job["id"].to_string()])
        .output()
        .unwrap();
    assert!(
        stdout(&shown).contains("activities") && stdout(&shown).contains("sample/d"),
        "{}",
        stdout(&shown)
    );

    // Nothing changed: nothing runs.
    let again = build(&h, &["sample/d"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("everything is up to date"),
        "{}",
        stdout(&again)
    );
    assert_eq!(runs(&h, "a"), 1);
    assert!(
        statuses(&h).iter().all(|(_, s)| s == "up to date"),
        "{:?}",
        statuses(&h)
    );

    // c's code changes: c and what reads it are stale, and only they rerun.
    h.append("projects/sample/recipes/c.sh", "# changed\n");
    let flow = h.capstan().args(["flow", "sample"]).output().unwrap();
    let text = stdout(&flow);
    assert!(text.contains("its code changed"), "{text}");
    assert_eq!(
        statuses(&h),
        [
            (s("a"), s("up to date")),
            (s("b"), s("up to date")),
            (s("c"), s("stale")),
            (s("d"), s("stale")),
        ]
    );
    let rebuilt = build(&h, &["sample/d"]);
    assert_eq!(rebuilt.status.code(), Some(0), "{}", stderr(&rebuilt));
    assert_eq!(
        [runs(&h, "a"), runs(&h, "b"), runs(&h, "c"), runs(&h, "d")],
        [1, 1, 2, 2]
    );
    // A new import of the root makes everything downstream stale.
    import_csv(&h, "raw", "x\n2\n");
    let plan = stdout(&build(&h, &["sample/d", "--dry-run"]));
    assert!(
        plan.contains("input `raw` changed (version 1 → 2)") && plan.contains("4 to run"),
        "{plan}"
    );
    let forced = stdout(&build(&h, &["sample/b", "--mode", "force", "--dry-run"]));
    assert!(
        forced.contains("1 to run") && forced.contains("forced"),
        "{forced}"
    );
    drop(d);
}

#[test]
fn a_failure_skips_downstream_and_independent_branches_finish() {
    let h = TestHome::new("flow-failure");
    import_csv(&h, "raw", "x\n1\n");
    declare(&h, &["a", "b", "c", "d", "e"]);
    shell_recipe(&h, "a", &["raw"], &["a"], "");
    shell_recipe(&h, "b", &["a"], &["b"], "echo 'b breaks' >&2; exit 3");
    shell_recipe(&h, "c", &["a"], &["c"], "");
    shell_recipe(&h, "d", &["b", "c"], &["d"], "");
    shell_recipe(&h, "e", &["d"], &["e"], "");
    let d = h.start();
    let out = build(&h, &["sample/e", "sample/c"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("sample/b failed"), "{err}");
    assert!(
        err.contains("sample/d: skipped (upstream sample/b failed)")
            && err.contains("sample/e: skipped (upstream sample/b failed)"),
        "{err}"
    );
    assert_eq!(
        [
            runs(&h, "a"),
            runs(&h, "b"),
            runs(&h, "c"),
            runs(&h, "d"),
            runs(&h, "e")
        ],
        [1, 1, 1, 0, 0]
    );
    let jobs = d.get("/api/v1/jobs?limit=1");
    let job = d.job(jobs[0]["id"].as_i64().unwrap());
    assert_eq!(job["state"], "failed");
    let diagnosis = job["diagnosis"].as_str().unwrap();
    assert!(
        diagnosis.starts_with("sample/b failed")
            && diagnosis.contains("skipped: sample/d, sample/e"),
        "{diagnosis}"
    );
    // Its log, by activity.
    let logs = h
        .capstan()
        .args(["logs", &job["id"].to_string(), "--activity", "b"])
        .output()
        .unwrap();
    assert!(stdout(&logs).contains("b breaks"), "{}", stdout(&logs));
    let unknown = h
        .capstan()
        .args(["logs", &job["id"].to_string(), "--activity", "zz"])
        .output()
        .unwrap();
    assert_ne!(unknown.status.code(), Some(0));
    assert!(
        stderr(&unknown).contains("has no activity `zz`"),
        "{}",
        stderr(&unknown)
    );
    // The next smart build runs what failed and what it skipped; not c.
    let plan = stdout(&build(&h, &["sample/e", "sample/c", "--dry-run"]));
    assert!(plan.contains("3 to run, 2 up to date"), "{plan}");
}

#[test]
fn kill_9_of_the_daemon_mid_build_runs_each_activity_once() {
    let h = TestHome::new("flow-kill9");
    import_csv(&h, "raw", "x\n1\n");
    declare(&h, &["a", "b", "c"]);
    let release = h.shared().join("release");
    shell_recipe(&h, "a", &["raw"], &["a"], "");
    shell_recipe(&h, "b", &["a"], &["b"], &wait_file(&release));
    shell_recipe(&h, "c", &["b"], &["c"], "");
    let d = h.start();
    let out = build(&h, &["sample/c", "--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs = d.get("/api/v1/jobs?limit=1");
    let id = jobs[0]["id"].as_i64().unwrap();
    wait_for("b to run", 60, || {
        d.job(id)["activities"][1]["state"] == "running"
    });
    // The same address again: the running recipe calls the API it was given.
    let bind = d.url.trim_start_matches("http://").to_string();
    d.kill9();
    let d = h.start_on(&bind);
    std::fs::write(&release, "").unwrap();
    let job = d.wait_state(id, 60, &["succeeded", "failed", "cancelled"]);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", d.log());
    assert_eq!(
        [runs(&h, "a"), runs(&h, "b"), runs(&h, "c")],
        [1, 1, 1],
        "each activity ran once"
    );
}

#[test]
fn cancel_stops_running_activities_and_skips_the_rest() {
    let h = TestHome::new("flow-cancel");
    import_csv(&h, "raw", "x\n1\n");
    declare(&h, &["a", "b"]);
    shell_recipe(&h, "a", &["raw"], &["a"], "sleep 300");
    shell_recipe(&h, "b", &["a"], &["b"], "");
    let d = h.start();
    let out = build(&h, &["sample/b", "--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = d.get("/api/v1/jobs?limit=1")[0]["id"].as_i64().unwrap();
    wait_for("a to run", 60, || {
        d.job(id)["activities"][0]["state"] == "running"
    });
    let cancel = h
        .capstan()
        .args(["cancel", &id.to_string()])
        .output()
        .unwrap();
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    let job = d.job(id);
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["activities"][0]["state"], "cancelled");
    assert_eq!(job["activities"][1]["state"], "skipped");
    assert_eq!(runs(&h, "b"), 0);
}

#[test]
fn a_schedule_runs_at_its_times_and_never_overlaps_itself() {
    let h = TestHome::new("flow-schedule");
    import_csv(&h, "raw", "x\n1\n");
    declare(&h, &["slow"]);
    // Every 2 seconds (6 fields: seconds first), a build that takes longer than that.
    shell_recipe(&h, "tick", &["raw"], &["slow"], "sleep 3");
    h.append(
        "projects/sample/project.toml",
        "\n[schedule.often]\ncron = \"*/2 * * * * *\"\nbuild = [\"slow\"]\nmode = \"force\"\n",
    );
    let d = h.start();
    let mut done = Vec::new();
    wait_for("two scheduled builds to succeed", 90, || {
        done = d
            .get("/api/v1/jobs?state=succeeded")
            .as_array()
            .unwrap()
            .clone();
        done.len() >= 2
    });
    // Each ran after the one before had ended, and the slot in between was not started.
    let mut spans: Vec<(String, String)> = done
        .iter()
        .map(|j| {
            (
                j["started_at"].as_str().unwrap().to_string(),
                j["finished_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    assert!(spans[0].1 <= spans[1].0, "{spans:?}");
    assert!(
        d.log().contains("not started: its previous build"),
        "{}",
        d.log()
    );
    let list = h.capstan().args(["schedules", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(v[0]["name"], "often", "{v}");
    assert_eq!(v[0]["mode"], "force");
    assert!(v[0]["next_run"].is_string(), "{v}");
    assert!(v[0]["last_job"].is_i64(), "{v}");
    let human = stdout(&h.capstan().args(["schedules"]).output().unwrap());
    assert!(human.contains("sample/often"), "{human}");
}

/// Doubles `a`'s column `n` into `b`, in a container, with Python's standard library only.
const DOUBLE: &str = r#"import os, urllib.request
base = os.environ["CAPSTAN_API_URL"].rstrip("/")
token = open(os.environ["CAPSTAN_TOKEN_FILE"]).read().strip()
auth = {"Authorization": "Bearer " + token}
url = base + "/api/v1/projects/sample/datasets/{}/data?format=csv"
lines = urllib.request.urlopen(urllib.request.Request(url.format("a"), headers=auth)).read().decode().splitlines()
header = lines[0].split(",")
n = header.index("n")
body = "n\n" + "".join(str(2 * int(l.split(",")[n])) + "\n" for l in lines[1:])
put = urllib.request.Request(url.format("b"), data=body.encode(), method="PUT",
                             headers={**auth, "Content-Type": "text/csv"})
urllib.request.urlopen(put).read()
print("doubled", len(lines) - 1, "rows", flush=True)
"#;

#[test]
fn one_build_runs_a_local_recipe_a_container_and_spark() {
    let Ok(image) = std::env::var("CAPSTAN_TEST_IMAGE") else {
        crate::support::skip(
            "CAPSTAN_TEST_IMAGE, the Docker tests' image (scripts/test builds it and sets it)",
        );
        return;
    };
    let h = TestHome::new("flow-mixed");
    h.append(
        "exec-configs.toml",
        &format!(
            "\n[exec_config.small]\nkind = \"docker\"\nimage = \"{image}\"\ncpu_limit = 1\nmemory_limit = \"256Mi\"\n"
        ),
    );
    import_csv(&h, "raw", "x\n1\n");
    declare(&h, &["a", "b", "c"]);
    shell_recipe(&h, "a", &["raw"], &["a"], "");
    h.recipe(
        "b",
        "python",
        "py",
        DOUBLE,
        "exec_config = \"small\"\ninputs = [\"a\"]\noutputs = [\"b\"]",
    );
    h.recipe(
        "c",
        "spark_sql",
        "sql",
        "SELECT SUM(n) AS total FROM b;\n",
        "spark_config = \"local\"\ninputs = [\"b\"]\noutputs = [\"c\"]",
    );
    let d = h.start();
    let out = build(&h, &["sample/c"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}\n{}",
        stdout(&out),
        stderr(&out),
        d.log()
    );
    let plan = stdout(&out);
    assert!(
        plan.contains("sample/a  on local")
            && plan.contains("sample/b  on docker (exec config small")
            && plan.contains("sample/c  on local"),
        "{plan}"
    );
    let id = d.get("/api/v1/jobs?limit=1")[0]["id"].as_i64().unwrap();
    let job = d.job(id);
    let kinds: Vec<&str> = job["activities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["local", "docker", "local"], "{job}");
    let total = crate::support::head_json(&h, "c");
    assert_eq!(total[0]["total"], 2, "{total}");
}
