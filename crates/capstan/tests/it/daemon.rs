//! The daemon, its queue and the local backend, end to end through the CLI and the API.

use std::collections::BTreeMap;

use crate::support::{TestHome, curl, fails, pid_alive, stderr, stdout, submit, wait_for};

#[test]
fn run_streams_logs_and_succeeds() {
    let home = TestHome::new("run-ok");
    let _d = home.start();
    let out = home
        .capstan()
        .args(["run", "sample/hello"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("sum of squares below one million: 333332833333500000"));
    assert!(stderr(&out).contains("succeeded"), "{}", stderr(&out));
    let jobs = home.capstan().args(["jobs", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(v[0]["state"], "succeeded");
    assert_eq!(v[0]["exec_config"], "local");
}

#[test]
fn failing_recipe_exits_nonzero_with_its_error_and_a_diagnosis() {
    let home = TestHome::new("run-fail");
    home.recipe(
        "fail",
        "python",
        "py",
        "print('about to fail')\nx = 1\nx / 0\n",
        "",
    );
    let _d = home.start();
    let out = home
        .capstan()
        .args(["run", "sample/fail"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    // The recipe's own error, as it printed it…
    assert!(err.contains("ZeroDivisionError: division by zero"), "{err}");
    // …and the diagnosis, with where it happened.
    assert!(
        err.contains("error: the recipe failed with exit code 1: ZeroDivisionError: division by zero (at fail.py line 3)"),
        "{err}"
    );
    assert!(stdout(&out).contains("about to fail"));
}

#[test]
fn cancel_leaves_no_process_behind() {
    let home = TestHome::new("cancel");
    // A recipe whose real work is in child processes, one of which leaves the process group.
    home.recipe(
        "sleepy",
        "python",
        "py",
        "import os, subprocess, time\n\
         a = subprocess.Popen(['sleep', '300'])\n\
         b = subprocess.Popen(['setsid', 'sleep', '301'])\n\
         with open(os.environ['PIDS'], 'w') as f:\n    f.write(f'{os.getpid()} {a.pid} {b.pid}')\n\
         time.sleep(300)\n",
        "",
    );
    let d = home.start();
    let pids_file = home.shared().join("pids");
    let id = submit(
        &home,
        "sample/sleepy",
        &["--env", &format!("PIDS={}", pids_file.display())],
    );
    wait_for("the recipe's processes to start", 20, || {
        std::fs::read_to_string(&pids_file).is_ok_and(|s| s.split_whitespace().count() == 3)
    });
    let pids: Vec<i32> = std::fs::read_to_string(&pids_file)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.iter().all(|p| pid_alive(*p)));
    let started = std::time::Instant::now();
    let out = home
        .capstan()
        .args(["cancel", &id.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("cancelled"), "{}", stdout(&out));
    wait_for("every process of the job to be gone", 5, || {
        pids.iter().all(|p| !pid_alive(*p))
    });
    assert!(started.elapsed().as_secs() < 5);
    let job = d.job(id);
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["diagnosis"], "cancelled by local");
}

#[test]
fn timeout_stops_the_recipe_and_records_timed_out() {
    let home = TestHome::new("timeout");
    home.recipe(
        "slow",
        "shell",
        "sh",
        "echo started\nsleep 60\n",
        "timeout = \"1s\"",
    );
    let d = home.start();
    fails(
        &home,
        &["run", "sample/slow"],
        1,
        "timed out: still running after the 1s timeout",
    );
    let jobs = d.get("/api/v1/jobs?state=timed_out");
    assert_eq!(jobs.as_array().unwrap().len(), 1);
}

#[test]
fn out_of_memory_names_the_limit_and_the_configuration() {
    let home = TestHome::new("oom");
    home.append(
        "exec-configs.toml",
        "\n[exec_config.tiny]\nkind = \"local\"\nmemory_limit = \"64Mi\"\n",
    );
    home.recipe(
        "hog",
        "python",
        "py",
        "blocks = []\nfor i in range(64):\n    blocks.append(bytearray(16 * 1024 * 1024))\nprint('survived')\n",
        "exec_config = \"tiny\"",
    );
    let d = home.start();
    let out = home.capstan().args(["run", "sample/hog"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(
            "out of memory: exceeded the 64 MiB memory limit of execution configuration 'tiny'"
        ),
        "{err}\n{}",
        d.log()
    );
    assert!(!stdout(&out).contains("survived"));
}

#[test]
fn missing_interpreter_fails_with_that_diagnosis() {
    let home = TestHome::new("no-interp");
    home.recipe("stats", "r", "R", "print(1)\n", "");
    let _d = home.start();
    // Only meaningful where R is absent, as on the CI machines; elsewhere R runs it.
    let has_r = std::process::Command::new("sh")
        .args(["-c", "command -v Rscript"])
        .output()
        .unwrap()
        .status
        .success();
    let out = home
        .capstan()
        .args(["run", "sample/stats"])
        .output()
        .unwrap();
    if has_r {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("interpreter `Rscript` not found on the daemon's machine"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn kill_9_with_running_and_queued_jobs_loses_nothing_and_runs_nothing_twice() {
    let home = TestHome::new("kill9");
    home.append(
        "exec-configs.toml",
        "\n[exec_config.three]\nkind = \"local\"\nmax_concurrent = 3\n",
    );
    let marker = home.shared().join("ran");
    // The jobs hold until the test creates the release file: however slowly the 8 submissions
    // go, the first 3 are still running (and the other 5 queued) when the daemon is killed.
    let release = home.shared().join("release");
    home.recipe(
        "work",
        "shell",
        "sh",
        "echo \"$CAPSTAN_JOB_ID\" >> \"$MARKER\"\n\
         while [ ! -e \"$RELEASE\" ]; do sleep 0.05; done\n\
         echo done\n",
        "exec_config = \"three\"",
    );
    let d = home.start();
    let env = [
        "--env".to_string(),
        format!("MARKER={}", marker.display()),
        "--env".to_string(),
        format!("RELEASE={}", release.display()),
    ];
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    let ids: Vec<i64> = (0..8).map(|_| submit(&home, "sample/work", &env)).collect();
    wait_for("3 running and 5 queued", 20, || {
        let jobs = d.get("/api/v1/jobs");
        let count = |s: &str| {
            jobs.as_array()
                .unwrap()
                .iter()
                .filter(|j| j["state"] == s)
                .count()
        };
        count("running") == 3 && count("queued") == 5
    });
    d.kill9();
    let d = home.start();
    std::fs::write(&release, "").unwrap();
    let mut states = BTreeMap::new();
    for id in &ids {
        let job = d.wait_state(*id, 60, &["succeeded", "failed", "cancelled", "timed_out"]);
        states.insert(*id, job["state"].as_str().unwrap().to_string());
    }
    assert!(
        states.values().all(|s| s == "succeeded"),
        "{states:?}\n{}",
        d.log()
    );
    let ran = std::fs::read_to_string(&marker).unwrap();
    let mut lines: Vec<i64> = ran.lines().map(|l| l.parse().unwrap()).collect();
    lines.sort();
    assert_eq!(lines, ids, "each job ran exactly once");
}

#[test]
fn a_dead_supervisor_fails_the_job_and_leaves_nothing_running() {
    let home = TestHome::new("shim-dies");
    home.recipe(
        "sleepy",
        "shell",
        "sh",
        "echo $$ > \"$PIDS\"\nsleep 300\n",
        "",
    );
    let d = home.start();
    let pids_file = home.shared().join("pids");
    let id = submit(
        &home,
        "sample/sleepy",
        &["--env", &format!("PIDS={}", pids_file.display())],
    );
    wait_for("the recipe to start", 20, || {
        std::fs::read_to_string(&pids_file).is_ok_and(|s| !s.trim().is_empty())
    });
    let recipe_pid: i32 = std::fs::read_to_string(&pids_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dir = d.job(id)["activities"][0]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    let claim = std::fs::read_to_string(format!("{dir}/claim")).unwrap();
    let shim_pid: i32 = claim.split_whitespace().nth(1).unwrap().parse().unwrap();
    // The daemon is down while its supervisor is killed: a restart must notice.
    d.kill9();
    std::process::Command::new("kill")
        .args(["-9", &shim_pid.to_string()])
        .status()
        .unwrap();
    let d = home.start();
    let job = d.wait_state(id, 20, &["failed"]);
    let diagnosis = job["diagnosis"].as_str().unwrap();
    assert!(
        diagnosis.contains("supervisor process for this activity ended without recording"),
        "{diagnosis}"
    );
    wait_for("the orphaned recipe to be killed", 5, || {
        !pid_alive(recipe_pid)
    });
}

#[test]
fn api_refuses_bad_requests_precisely() {
    let home = TestHome::new("api");
    let d = home.start();
    let url = format!("{}/api/v1/jobs", d.url);
    let auth = format!("Authorization: Bearer {}", d.token);
    let post = |body: &str, auth: &str| {
        curl(&[
            "-sS",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            &url,
        ])
    };
    let status_of = |out: &str| out.lines().last().unwrap().to_string();

    let out = post(
        "{\"project\":\"sample\",\"recipe\":\"hello\"}",
        "X-No: auth",
    );
    assert_eq!(status_of(&out), "401", "{out}");
    let out = post(
        "{\"project\":\"sample\",\"recipe\":\"hello\"}",
        "Authorization: Bearer cap_wrong",
    );
    assert_eq!(status_of(&out), "401", "{out}");
    let out = post("{\"project\": \"sample\",", &auth);
    assert_eq!(status_of(&out), "400", "{out}");
    let out = post("{\"project\":\"sample\",\"recipee\":\"hello\"}", &auth);
    assert_eq!(status_of(&out), "400");
    assert!(
        out.contains("unknown field `recipee` (did you mean `recipe`?)"),
        "{out}"
    );
    let out = post("{\"project\":\"sample\",\"recipe\":3}", &auth);
    assert!(out.contains("field `recipe` must be a string"), "{out}");
    let big = format!("{{\"project\":\"{}\"}}", "x".repeat(100_000));
    let out = post(&big, &auth);
    assert_eq!(status_of(&out), "413", "{out}");
    let out = post("{\"project\":\"sample\",\"recipe\":\"nope\"}", &auth);
    assert_eq!(status_of(&out), "404");
    assert!(
        out.contains("unknown recipe `nope` in project `sample`"),
        "{out}"
    );
    let out = post(
        "{\"project\":\"sample\",\"recipe\":\"hello\",\"exec_config\":\"hugee\"}",
        &auth,
    );
    assert_eq!(status_of(&out), "422");
    assert!(
        out.contains("unknown execution configuration `hugee`"),
        "{out}"
    );
    // Alice may not use the Kubernetes configuration: 403, naming the allowed groups.
    let alice = format!("Authorization: Bearer {}", home.token("alice"));
    let out = post(
        "{\"project\":\"sample\",\"recipe\":\"hello\",\"exec_config\":\"k8s-medium\"}",
        &alice,
    );
    assert_eq!(status_of(&out), "403", "{out}");
    assert!(out.contains("allowed groups are `data-engineers`"), "{out}");
    // The CLI says the same, with exit code 3.
    let cli = home
        .capstan()
        .args(["run", "sample/hello", "--exec-config", "k8s-medium"])
        .env("CAPSTAN_TOKEN", home.token("alice"))
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(3), "{}", stderr(&cli));
    assert!(stderr(&cli).contains("may not use execution configuration `k8s-medium`"));
    // Who sees whose jobs: `isolation::project_permissions_decide_what_alice_may_run_see_and_cancel`.
    let out = curl(&[
        "-sS",
        "-w",
        "\n%{http_code}",
        "-H",
        &auth,
        &format!("{}/api/v1/jobs/abc", d.url),
    ]);
    assert_eq!(status_of(&out), "400", "{out}");
    // And the daemon is still up.
    assert_eq!(d.get("/api/v1/health")["status"], "ok");
    let doc = d.get("/api/v1/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
}

#[test]
fn a_missing_daemon_gets_one_line_saying_how_to_start_it() {
    let home = TestHome::new("no-daemon");
    let out = home.capstan().args(["jobs"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no capstan daemon is running for") && err.contains("serve`"),
        "{err}"
    );
}

#[test]
fn code_environment_venv_is_built_once_and_reused() {
    let home = TestHome::new("venv");
    home.append(
        "images.toml",
        "\n[code_env.plain]\nlanguage = \"python\"\npackages = [\"six\"]\nbuild_for = \"none\"\n",
    );
    home.recipe(
        "where",
        "python",
        "py",
        "import sys, six\nprint(sys.prefix)\n",
        "code_env = \"plain\"",
    );
    let _d = home.start();
    let first = home
        .capstan()
        .args(["run", "sample/where"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let prefix = stdout(&first).trim().to_string();
    assert!(prefix.contains("/state/envs/plain-"), "{prefix}");
    let marker = std::path::Path::new(&prefix).join(".capstan-ready");
    let built = std::fs::metadata(&marker).unwrap().modified().unwrap();
    let second = home
        .capstan()
        .args(["run", "sample/where"])
        .output()
        .unwrap();
    assert_eq!(stdout(&second).trim(), prefix);
    assert_eq!(
        std::fs::metadata(&marker).unwrap().modified().unwrap(),
        built,
        "rebuilt an unchanged env"
    );
}

#[test]
fn logs_are_timestamped_and_job_show_tells_the_story() {
    let home = TestHome::new("show");
    home.recipe(
        "both",
        "shell",
        "sh",
        "echo to-out\necho to-err >&2\nsleep 0.3\necho after-sleep\n",
        "",
    );
    let d = home.start();
    let out = home
        .capstan()
        .args(["run", "sample/both", "--json"])
        .output()
        .unwrap();
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = job["id"].as_i64().unwrap().to_string();

    // The job's log as the daemon keeps and serves it: `RFC3339-UTC-TIME o|e TEXT` per line.
    let raw = curl(&[
        "-sSf",
        "-H",
        &format!("Authorization: Bearer {}", d.token),
        &format!("{}/api/v1/jobs/{id}/logs", d.url),
    ]);
    let raw_lines: Vec<&str> = raw.lines().collect();
    assert_eq!(raw_lines.len(), 3, "{raw}");
    let mut parsed = Vec::new();
    for line in &raw_lines {
        let mut parts = line.splitn(3, ' ');
        let (stamp, stream, text) = (
            parts.next().unwrap(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        // RFC 3339, in UTC (`Z`), with sub-second precision.
        assert!(
            stamp.len() > 20 && stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
            "not an RFC 3339 UTC timestamp with fractions of a second: {line:?}"
        );
        let time = humantime::parse_rfc3339(stamp)
            .unwrap_or_else(|e| panic!("not an RFC 3339 UTC timestamp ({e}): {line:?}"));
        assert!(
            stream == "o" || stream == "e",
            "no stream after the time: {line:?}"
        );
        parsed.push((stamp, time, stream, text));
    }
    let texts: Vec<(&str, &str)> = parsed.iter().map(|(_, _, s, t)| (*s, *t)).collect();
    assert!(texts.contains(&("o", "to-out")), "{raw}");
    assert!(texts.contains(&("e", "to-err")), "{raw}");
    assert_eq!(texts.last(), Some(&("o", "after-sleep")), "{raw}");
    for pair in parsed.windows(2) {
        assert!(pair[0].1 <= pair[1].1, "timestamps go backwards:\n{raw}");
    }
    // Stamped when printed, not when collected: the line after the sleep is later by it.
    let slept = parsed[2].1.duration_since(parsed[0].1).unwrap();
    assert!(
        slept >= std::time::Duration::from_millis(250),
        "{slept:?}\n{raw}"
    );
    // Not in the future either (the clock of this machine stamped them).
    assert!(parsed[2].1 <= std::time::SystemTime::now(), "{raw}");

    // `capstan logs` shows each line with its time of day and stream, in the same order.
    let logs = home.capstan().args(["logs", &id]).output().unwrap();
    let text = stdout(&logs);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.iter().any(|l| l.ends_with("out | to-out")), "{text}");
    assert!(lines.iter().any(|l| l.ends_with("err | to-err")), "{text}");
    for (line, (stamp, _, stream, body)) in lines.iter().zip(&parsed) {
        let stream = if *stream == "e" { "err" } else { "out" };
        // `2026-12-01T19:41:20.584877Z` → `19:41:20.584`.
        assert_eq!(
            *line,
            format!("{} {stream} | {body}", &stamp[11..23]),
            "{text}"
        );
    }
    let show = home.capstan().args(["job", "show", &id]).output().unwrap();
    let text = stdout(&show);
    for needle in [
        "state        succeeded",
        "exit code    0",
        "queued",
        "preparing",
        "starting",
        "running",
        "exec_config   local",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn logs_that_cannot_be_written_fail_the_job_and_the_daemon_stays_up() {
    let home = TestHome::new("disk-full");
    let jobs_dir = home.root().join("state/jobs");
    std::fs::create_dir_all(&jobs_dir).unwrap();
    // A tiny filesystem for the job folders: the disk fills while the recipe prints.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&jobs_dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let _mount = Mount(jobs_dir.clone());
    home.recipe(
        "chatty",
        "python",
        "py",
        "import time\nfor i in range(200_000):\n    print('x' * 100)\ntime.sleep(60)\n",
        "",
    );
    let d = home.start();
    let out = home
        .capstan()
        .args(["run", "sample/chatty", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let diagnosis = job["diagnosis"].as_str().unwrap();
    assert!(
        diagnosis.contains("logs could not be kept") && diagnosis.contains("disk may be full"),
        "{diagnosis}"
    );
    assert_eq!(d.get("/api/v1/health")["status"], "ok");
    // The next job still runs (its log fits once the space is back).
    drop(_mount);
    let again = home
        .capstan()
        .args(["run", "sample/hello"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
}

#[test]
fn shutdown_with_stop_jobs_cancels_running_work() {
    let home = TestHome::new("stop-jobs");
    home.recipe(
        "sleepy",
        "shell",
        "sh",
        "echo $$ > \"$PIDS\"\nsleep 300\n",
        "",
    );
    let root = home.root();
    let log = std::fs::File::create(root.join("daemon.log")).unwrap();
    let mut child = crate::support::capstan()
        .arg("--home")
        .arg(&root)
        .args(["serve", "--bind", "127.0.0.1:0", "--stop-jobs"])
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("the daemon", 20, || {
        crate::daemon_info_ready(&root, child.id())
    });
    let pids_file = home.shared().join("pids");
    let id = submit(
        &home,
        "sample/sleepy",
        &["--env", &format!("PIDS={}", pids_file.display())],
    );
    wait_for("the recipe to start", 20, || {
        std::fs::read_to_string(&pids_file).is_ok_and(|s| !s.trim().is_empty())
    });
    let pid: i32 = std::fs::read_to_string(&pids_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(
        !pid_alive(pid),
        "the recipe outlived a --stop-jobs shutdown"
    );
    let d = home.start();
    let job = d.job(id);
    assert_eq!(job["state"], "cancelled");
    assert!(
        job["diagnosis"].as_str().unwrap().contains("--stop-jobs"),
        "{job}"
    );
}

#[test]
fn a_recipe_saved_a_moment_ago_is_known() {
    let home = TestHome::new("fresh-recipe");
    let _d = home.start();
    // Each submission looks at the home; the next look is normally at most every 500 ms, so
    // the second recipe, saved right after the first run's submission, is within that window.
    home.recipe("first", "shell", "sh", "echo first", "");
    let id = submit(&home, "sample/first", &[]);
    home.recipe("second", "shell", "sh", "echo second", "");
    let out = home
        .capstan()
        .args(["run", "sample/second", "--detach", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(id > 0);
}

/// Issue 13, finding 3: cancels that land while a job is being prepared or started were lost
/// (the job ran on, or failed with "the supervisor ended without recording…").
#[test]
fn cancel_races_in_preparing_and_starting_always_end_cancelled() {
    let home = TestHome::new("cancel-race");
    let marks = home.shared().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    home.recipe(
        "napper",
        "shell",
        "sh",
        &format!("touch {}/$CAPSTAN_JOB_ID\nsleep 20\n", marks.display()),
        "",
    );
    let d = home.start();
    let auth = format!("Authorization: Bearer {}", d.token);
    let mut seen = BTreeMap::<String, usize>::new();
    let mut ids = Vec::new();
    for i in 0..40u64 {
        let out = curl(&[
            "-sS",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"project":"sample","recipe":"napper"}"#,
            &format!("{}/api/v1/jobs", d.url),
        ]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let id = v["id"].as_i64().unwrap();
        // Land the cancel at a different moment of the job's start each time.
        std::thread::sleep(std::time::Duration::from_millis(i % 10 * 3));
        let out = curl(&[
            "-sS",
            "-X",
            "POST",
            "-H",
            &auth,
            &format!("{}/api/v1/jobs/{id}/cancel", d.url),
        ]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        *seen
            .entry(v["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        ids.push(id);
    }
    eprintln!("states the cancels were accepted in: {seen:?}");
    for id in &ids {
        let job = d.wait_state(*id, 30, &["succeeded", "failed", "cancelled", "timed_out"]);
        assert_eq!(job["state"], "cancelled", "job {id}: {job:#}");
        assert_eq!(job["diagnosis"], "cancelled by local", "job {id}: {job:#}");
        let events = job["events"].as_array().unwrap();
        assert!(
            events.iter().any(|e| e["state"] == "cancelled"),
            "job {id}: its history has no cancel: {job:#}"
        );
    }
    // No recipe is left running (each would sleep 20 s).
    let left = std::process::Command::new("pgrep")
        .args(["-f", &format!("{}", home.dir.path().display())])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    let daemon = d.child.id().to_string();
    assert!(
        left.lines().all(|p| p.trim() == daemon),
        "processes left: {left}"
    );
}

/// Issue 14, finding 7: `capstan logs 10 | head -1` panicked on the closed pipe (exit 101).
#[test]
fn listing_commands_end_quietly_on_a_closed_pipe() {
    let home = TestHome::new("pipe");
    home.recipe("chatty", "shell", "sh", "seq 1 200000\n", "");
    let _d = home.start();
    let run = home
        .capstan()
        .args(["run", "sample/chatty"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    for command in ["logs 1", "job show 1", "jobs"] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "'{}' --home '{}' {command} | head -c 1 >/dev/null",
                env!("CARGO_BIN_EXE_capstan"),
                home.root().display()
            ))
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{command}: {err}"
        );
    }
    // The status of the writer itself, as `set -o pipefail` sees it.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' --home '{}' logs 1 | head -1 >/dev/null",
            env!("CARGO_BIN_EXE_capstan"),
            home.root().display()
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
