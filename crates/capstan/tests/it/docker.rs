//! The Docker backend on real Docker engines, with an image built locally (never pulled).
//!
//! These run when `CAPSTAN_TEST_IMAGE` names an image on the local engine; `scripts/test`
//! starts `dockerd`, builds the image with `scripts/test-image` and sets it. Elsewhere each
//! test says it was skipped; under `CI` it fails instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::support::{TempDir, TestHome, fails, import_orders, stderr, stdout, submit, wait_for};

pub(crate) fn image() -> Option<String> {
    match std::env::var("CAPSTAN_TEST_IMAGE") {
        Ok(i) if !i.is_empty() => Some(i),
        _ => {
            crate::support::skip(
                "CAPSTAN_TEST_IMAGE, the Docker tests' image (scripts/test builds it and sets it)",
            );
            None
        }
    }
}

/// A home whose `small` configuration runs the test image with 1 CPU and 256 MiB, on the
/// engine `DOCKER_HOST` names if set (`scripts/test` points it at an engine started fresh for
/// a second run of the data API tests), else the local one.
pub(crate) fn docker_home(label: &str, image: &str) -> TestHome {
    let home = TestHome::new(label);
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        let path = home.root().join("clusters.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let local = "host = \"unix:///var/run/docker.sock\"";
        assert!(
            text.contains(local),
            "the sample's local-docker cluster moved:\n{text}"
        );
        std::fs::write(&path, text.replace(local, &format!("host = \"{host}\""))).unwrap();
    }
    home.append(
        "exec-configs.toml",
        &format!(
            "\n[exec_config.small]\nkind = \"docker\"\nimage = \"{image}\"\ncpu_limit = 1\nmemory_limit = \"256Mi\"\nmax_concurrent = 4\n"
        ),
    );
    home
}

/// Containers on an engine of this home's instance (and `label`, if given), running or not.
pub(crate) fn containers(host: Option<&str>, home: &TestHome, label: &str) -> Vec<String> {
    let mut cmd = Command::new("docker");
    if let Some(h) = host {
        cmd.args(["-H", h]);
    }
    cmd.args(["ps", "-a", "-q", "--filter"]).arg(format!(
        "label=capstan.instance={}",
        capstan_core::instance_id(&home.root())
    ));
    if !label.is_empty() {
        cmd.args(["--filter", &format!("label={label}")]);
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_container_gets_the_configurations_limits() {
    let Some(image) = image() else { return };
    let home = docker_home("docker-limits", &image);
    home.recipe(
        "limits",
        "python",
        "py",
        "import os\n\
         def read(*paths):\n    for p in paths:\n        try:\n            return open(p).read().strip()\n        except OSError:\n            pass\n\
         print('cpus', os.cpu_count())\n\
         print('memory', read('/sys/fs/cgroup/memory/memory.limit_in_bytes', '/sys/fs/cgroup/memory.max'))\n\
         print('quota', read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us', '/sys/fs/cgroup/cpu.max'))\n",
        "exec_config = \"small\"",
    );
    let _d = home.start();
    let out = home
        .capstan()
        .args(["run", "sample/limits"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("memory 268435456"), "{text}");
    // 1 CPU: a quota of one period (v1: 100000 µs; v2: "100000 100000").
    assert!(text.contains("quota 100000"), "{text}");
    assert!(
        stderr(&out).contains("on docker (exec config small)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn out_of_memory_in_a_container_names_the_limit_and_the_configuration() {
    let Some(image) = image() else { return };
    let home = docker_home("docker-oom", &image);
    home.recipe(
        "hog",
        "python",
        "py",
        "data = bytearray(1024 * 1024 * 1024)\nprint('survived')\n",
        "exec_config = \"small\"",
    );
    let d = home.start();
    let out = home
        .capstan()
        .args(["run", "sample/hog", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["state"], "failed");
    let diagnosis = job["diagnosis"].as_str().unwrap();
    assert!(
        diagnosis.contains(
            "out of memory: exceeded the 256 MiB memory limit of execution configuration 'small'"
        ),
        "{diagnosis}\n{}",
        d.log()
    );
    assert!(
        containers(None, &home, &format!("capstan.job={}", job["id"])).is_empty(),
        "container left behind"
    );
}

#[test]
fn cancel_removes_the_container_and_show_has_live_usage() {
    let Some(image) = image() else { return };
    let home = docker_home("docker-cancel", &image);
    home.recipe(
        "busy",
        "python",
        "py",
        "import time\nprint('busy', flush=True)\nx = 0\nend = time.time() + 300\nwhile time.time() < end:\n    x += 1\n",
        "exec_config = \"small\"",
    );
    let d = home.start();
    let id = submit(&home, "sample/busy", &[]);
    d.wait_state(id, 60, &["running"]);
    let label = format!("capstan.job={id}");
    assert_eq!(containers(None, &home, &label).len(), 1);
    // Live usage of the running container.
    let mut usage = serde_json::Value::Null;
    wait_for("live usage of the container", 20, || {
        usage = d.job(id)["usage"].clone();
        usage["memory_bytes"].as_u64().is_some_and(|m| m > 0)
    });
    let show = home
        .capstan()
        .args(["job", "show", &id.to_string()])
        .output()
        .unwrap();
    assert!(
        stdout(&show).contains("usage now    CPU"),
        "{}",
        stdout(&show)
    );
    let out = home
        .capstan()
        .args(["cancel", &id.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_for("no container with the job's label", 10, || {
        containers(None, &home, &label).is_empty()
    });
    assert_eq!(d.job(id)["state"], "cancelled");
}

#[test]
fn a_daemon_killed_during_a_container_job_still_ends_it_with_its_full_log() {
    let Some(image) = image() else { return };
    let home = docker_home("docker-kill9", &image);
    home.recipe(
        "steps",
        "shell",
        "sh",
        "echo first\nsleep 3\necho second\necho to-stderr >&2\n",
        "exec_config = \"small\"",
    );
    let d = home.start();
    let id = submit(&home, "sample/steps", &[]);
    let job = d.wait_state(id, 60, &["running"]);
    let log = PathBuf::from(job["activities"][0]["log"].as_str().unwrap());
    wait_for("the first line in the log", 30, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(" o first"))
    });
    d.kill9();
    let d = home.start();
    let job = d.wait_state(id, 60, &["succeeded", "failed", "cancelled", "timed_out"]);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", d.log());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
    // Every line once; stdout in its order (the engine does not order stdout against stderr).
    let out: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("o "))
        .collect();
    assert_eq!(out, ["o first", "o second"], "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.contains(&"e to-stderr"), "{text}");
    assert!(containers(None, &home, &format!("capstan.job={id}")).is_empty());
}

/// A second Docker engine on its own socket and data root, in its own network namespace (so its
/// bridge cannot disturb the first engine's), stopped on drop.
struct SecondEngine {
    child: Child,
    host: String,
    netns: String,
    _dir: TempDir,
}

impl SecondEngine {
    fn start() -> SecondEngine {
        let dir = TempDir::new("dockerd2");
        let sock = dir.path().join("docker.sock");
        let host = format!("unix://{}", sock.display());
        let netns = format!("capstan-it-{}", std::process::id());
        let made = Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .unwrap();
        assert!(
            made.success(),
            "cannot create a network namespace for the second engine"
        );
        let _ = Command::new("ip")
            .args(["netns", "exec", &netns, "ip", "link", "set", "lo", "up"])
            .status();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        // `nsenter --net` enters the network namespace only; `ip netns exec` would also remount
        // /sys, hiding the cgroups dockerd needs.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{netns}"))
            .arg("dockerd")
            .arg("--host")
            .arg(&host)
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let engine = SecondEngine {
            child,
            host,
            netns,
            _dir: dir,
        };
        wait_for("the second dockerd", 60, || {
            Command::new("docker")
                .args(["-H", &engine.host, "version"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        engine
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        // nsenter execs dockerd, so the child is dockerd itself.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn cluster_second_host_runs_on_the_second_engine() {
    let Some(image) = image() else { return };
    let second = SecondEngine::start();
    let load = Command::new(repo_root().join("scripts/test-image"))
        .arg(&second.host)
        .output()
        .unwrap();
    assert!(load.status.success(), "{}", stderr(&load));
    let home = docker_home("docker-second", &image);
    home.append(
        "clusters.toml",
        &format!(
            "\n[cluster.second-host]\nkind = \"docker\"\nhost = \"{}\"\nmax_concurrent = 1\n",
            second.host
        ),
    );
    home.recipe(
        "where",
        "shell",
        "sh",
        "echo on $(hostname)\nsleep 2\n",
        "exec_config = \"small\"",
    );
    let d = home.start();
    let id = submit(&home, "sample/where", &["--cluster", "second-host"]);
    let label = format!("capstan.job={id}");
    wait_for("the job's container on the second engine", 60, || {
        !containers(Some(&second.host), &home, &label).is_empty()
    });
    assert!(
        containers(None, &home, &label).is_empty(),
        "it also ran on the first engine"
    );
    let job = d.wait_state(id, 60, &["succeeded", "failed"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["cluster"], "second-host");
    assert!(
        containers(Some(&second.host), &home, &label).is_empty(),
        "container left on the second engine"
    );
}

#[test]
fn engine_refusals_missing_images_and_unreachable_engines_are_diagnosed() {
    let Some(image) = image() else { return };
    let home = docker_home("docker-bad", &image);
    home.append(
        "exec-configs.toml",
        &format!(
            "\n[exec_config.bad-runtime]\nkind = \"docker\"\nimage = \"{image}\"\n[exec_config.bad-runtime.docker]\nruntime = \"no-such-runtime\"\n\
             \n[exec_config.no-image]\nkind = \"docker\"\nimage = \"capstan-nowhere:1\"\n\
             \n[exec_config.unbuilt]\nkind = \"docker\"\nbase_image = \"default\"\n"
        ),
    );
    home.append(
        "clusters.toml",
        "\n[cluster.gone]\nkind = \"docker\"\nhost = \"unix:///nonexistent/docker.sock\"\n",
    );
    home.recipe("hi", "shell", "sh", "echo hi\n", "");
    let _d = home.start();
    let run = |args: &[&str]| {
        let out = home
            .capstan()
            .args(["run", "sample/hi"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        stderr(&out)
    };
    let err = run(&["--exec-config", "bad-runtime"]);
    assert!(
        err.contains("refused to create the container") && err.contains("no-such-runtime"),
        "{err}"
    );
    let err = run(&["--exec-config", "no-image"]);
    assert!(
        err.contains("image `capstan-nowhere:1` is not on the Docker engine"),
        "{err}"
    );
    let err = run(&["--exec-config", "unbuilt"]);
    assert!(
        err.contains("build it with `capstan image build-base default`"),
        "{err}"
    );
    let err = run(&["--exec-config", "small", "--cluster", "gone"]);
    assert!(
        err.contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
        "{err}"
    );
    assert!(
        containers(None, &home, "").is_empty(),
        "container left behind"
    );
}

#[test]
fn containers_the_state_does_not_know_are_removed_at_start() {
    let Some(image) = image() else { return };
    let home = docker_home("docker-orphans", &image);
    let instance = capstan_core::instance_id(&home.root());
    let made = Command::new("docker")
        .args(["create", "--label", &format!("capstan.instance={instance}")])
        .args([
            "--label",
            "capstan.job=999",
            "--label",
            "capstan.activity=999-0",
            "--label",
            "capstan.attempt=0",
        ])
        .args([&image, "sleep", "1"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let d = home.start();
    wait_for("the orphan to be removed", 30, || {
        containers(None, &home, "").is_empty()
    });
    // Reported, not only removed.
    wait_for("the removal to be logged", 10, || {
        d.log().contains("removed a leftover")
    });
}

#[test]
fn containers_get_their_token_as_a_file_and_an_unreachable_api_is_named() {
    let Some(image) = image() else { return };
    let home = docker_home("docker-data", &image);
    // The test image has Python but not pyarrow: these recipes only touch the token and the
    // API's address, which is all they need to show.
    home.recipe(
        "peek",
        "python",
        "py",
        "import os, time\nprint('token file', os.environ['CAPSTAN_TOKEN_FILE'], oct(os.stat(os.environ['CAPSTAN_TOKEN_FILE']).st_mode & 0o777))\nprint('ready', flush=True)\ntime.sleep(300)\n",
        "exec_config = \"small\"",
    );
    let d = home.start();
    let id = submit(&home, "sample/peek", &[]);
    let job = d.wait_state(id, 60, &["running"]);
    let log = PathBuf::from(job["activities"][0]["log"].as_str().unwrap());
    wait_for("the recipe to start", 30, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready"))
    });
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("token file /capstan/token 0o400")
    );
    let ids = containers(None, &home, &format!("capstan.job={id}"));
    let inspect = Command::new("docker")
        .args(["inspect"])
        .args(&ids)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("CAPSTAN_TOKEN_FILE=/capstan/token"), "{text}");
    assert!(
        !text.contains("capa_"),
        "the token is visible in `docker inspect`"
    );
    home.capstan()
        .args(["cancel", &id.to_string()])
        .output()
        .unwrap();
    drop(d);

    // An address containers cannot reach: the recipe fails naming it.
    let toml = std::fs::read_to_string(home.root().join("capstan.toml")).unwrap();
    std::fs::write(
        home.root().join("capstan.toml"),
        toml.replace(
            "[server]\n",
            "[server]\npublic_url = \"http://host.docker.internal:1\"\n",
        ),
    )
    .unwrap();
    // The client, as the project's library (the test image has no capstan runtime).
    let lib = home.root().join("projects/sample/lib/capstan");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("__init__.py"), capstan_core::PYTHON_RUNTIME).unwrap();
    home.recipe(
        "reach",
        "python",
        "py",
        "import capstan\ncapstan.Dataset('orders').to_pandas()\n",
        "exec_config = \"small\"\ninputs = [\"orders\"]",
    );
    import_orders(&home);
    let _d = home.start();
    fails(
        &home,
        &["run", "sample/reach"],
        1,
        "cannot reach the capstan data API at http://host.docker.internal:1",
    );
}

#[test]
fn a_short_container_reports_its_exact_peak_memory_and_cpu_time_and_leaves_no_cgroup() {
    let Some(image) = image() else { return };
    let home = docker_home("docker-usage", &image);
    // Ends well within the engine's first second of stats: only the cgroup's counters see it.
    home.recipe(
        "burst",
        "python",
        "py",
        "b = bytearray(64 * 1024 * 1024)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\nprint(sum(range(2_000_000)))\n",
        "exec_config = \"small\"",
    );
    let _d = home.start();
    let out = home
        .capstan()
        .args(["run", "sample/burst", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let peak = job["peak_memory_bytes"].as_u64().unwrap_or(0);
    assert!(
        (64 << 20..256 << 20).contains(&peak),
        "peak memory {peak} for a recipe that touched 64 MiB: {job}"
    );
    assert!(job["cpu_time_ms"].as_u64().is_some_and(|c| c > 0), "{job}");
    // The per-container parent group that kept the counters is gone with the container.
    let instance = capstan_core::instance_id(&home.root());
    let left: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|c| std::fs::read_dir(c.path()).into_iter().flatten().flatten())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("capstan-{instance}-"))
        })
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

/// A recipe that reads `orders` and writes `order_totals` through the data API as CSV, with
/// nothing but Python's standard library (the test image has no pyarrow).
const CSV_TOTALS: &str = r#"import os, urllib.request
base = os.environ["CAPSTAN_API_URL"].rstrip("/")
token = open(os.environ["CAPSTAN_TOKEN_FILE"]).read().strip()
auth = {"Authorization": "Bearer " + token}
url = base + "/api/v1/projects/sample/datasets/{}/data?format=csv"
print("data API at", base, flush=True)
lines = urllib.request.urlopen(urllib.request.Request(url.format("orders"), headers=auth)).read().decode().splitlines()
totals = {}
for line in lines[1:]:
    customer, amount = line.split(",")
    totals[customer] = totals.get(customer, 0.0) + float(amount)
body = "customer,total\n" + "".join(f"{c},{t}\n" for c, t in sorted(totals.items()))
put = urllib.request.Request(url.format("order_totals"), data=body.encode(), method="PUT",
                             headers={**auth, "Content-Type": "text/csv"})
urllib.request.urlopen(put).read()
print("read", len(lines) - 1, "rows; wrote", len(totals), flush=True)
"#;

/// Run by `scripts/test` a second time against an engine it starts fresh (its own socket,
/// data root and bridge, whose IPAM names no gateway, as a new Debian dockerd's does), with
/// `DOCKER_HOST` pointing at it: warm engine state cannot hide where containers call back.
#[test]
fn a_container_reads_and_writes_datasets_through_the_data_api() {
    let Some(image) = image() else { return };
    let home = docker_home("docker-data", &image);
    import_orders(&home);
    home.recipe(
        "csv_totals",
        "python",
        "py",
        CSV_TOTALS,
        "exec_config = \"small\"\ninputs = [\"orders\"]\noutputs = [\"order_totals\"]",
    );
    let d = home.start();
    let out = home
        .capstan()
        .args(["run", "sample/csv_totals"])
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\ndaemon log:\n{}",
        d.log()
    );
    eprintln!("{text}");
    assert!(text.contains("read 3 rows; wrote 2"), "{text}");
    // Never a loopback address: from a container that is the container itself.
    assert!(!text.contains("data API at http://127."), "{text}");
    assert!(
        text.contains("read orders (3 rows); wrote order_totals (2 rows)"),
        "{text}"
    );
    // The daemon said which address containers get, and why.
    assert!(
        d.log()
            .contains("containers on this engine reach the data API here"),
        "{}",
        d.log()
    );
    let totals = crate::support::head_json(&home, "order_totals");
    assert_eq!(totals[0]["customer"], "alice", "{totals}");
}

#[test]
fn cluster_test_of_a_docker_host_checks_the_callback_from_a_real_container() {
    let Some(image) = image() else { return };
    let home = docker_home("docker-cluster-test", &image);
    let out = home
        .capstan()
        .args(["cluster", "test", "local-docker", "--exec-config", "small"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for step in [
        "ok   engine reachable",
        "ok   address for containers",
        "ok   container start",
        "ok   callback to this machine   http://",
        "ok   cleanup",
    ] {
        assert!(text.contains(step), "`{step}` missing:\n{text}");
    }
    assert!(!text.contains("http://127."), "{text}");
    assert!(
        containers(None, &home, "").is_empty(),
        "the test container was left behind"
    );

    // The same test run by the daemon (the web UI's button): its steps as they come, then
    // its end; for admins only.
    let d = home.start();
    let api = |method: &str, path: &str, token: &str| {
        crate::support::curl(&[
            "-sS",
            "-X",
            method,
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}{path}", d.url),
        ])
    };
    let refused = api(
        "POST",
        "/api/v1/clusters/local-docker/tests",
        &home.token("alice"),
    );
    assert!(refused.contains("for instance admins"), "{refused}");
    let started: serde_json::Value = serde_json::from_str(&api(
        "POST",
        "/api/v1/clusters/local-docker/tests?exec_config=small",
        &d.token,
    ))
    .unwrap();
    let id = started["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{started}"));
    let mut run = serde_json::Value::Null;
    wait_for("the daemon's cluster test to end", 120, || {
        run = serde_json::from_str(&api(
            "GET",
            &format!("/api/v1/cluster-tests/{id}"),
            &d.token,
        ))
        .unwrap();
        run["done"] == true
    });
    let lines: Vec<&str> = run["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    assert_eq!(run["passed"], true, "{run:#}");
    for step in [
        "ok   engine reachable",
        "ok   container start",
        "ok   callback to this machine   http://",
        "ok   cleanup",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(step)),
            "`{step}` missing: {lines:#?}"
        );
    }
    assert!(
        containers(None, &home, "").is_empty(),
        "the daemon's test container was left behind"
    );
}

/// The cluster view (`GET /api/v1/workloads`, the web UI's cluster page) on a real engine: a
/// running job's container with its limits, live usage, user and project; a container no job
/// accounts for, made while the daemon runs (so the start sweep never saw it), marked a
/// leftover; "remove leftovers" removes it and leaves the job's container alone.
#[test]
fn the_cluster_view_shows_a_jobs_container_and_removes_only_leftovers() {
    let Some(image) = image() else { return };
    let home = docker_home("docker-workloads", &image);
    home.recipe(
        "nap",
        "python",
        "py",
        "import time\nprint('ready', flush=True)\ntime.sleep(300)\n",
        "exec_config = \"small\"",
    );
    let d = home.start();
    let id = submit(&home, "sample/nap", &[]);
    d.wait_state(id, 60, &["running"]);
    let job_label = format!("capstan.job={id}");
    wait_for("the job's container", 30, || {
        !containers(None, &home, &job_label).is_empty()
    });
    let instance = capstan_core::instance_id(&home.root());
    let made = Command::new("docker")
        .args(["create", "--label", &format!("capstan.instance={instance}")])
        .args([
            "--label",
            "capstan.job=999",
            "--label",
            "capstan.activity=999-0",
        ])
        .args(["--label", "capstan.attempt=1", &image, "sleep", "1"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));

    let engines = d.get("/api/v1/workloads");
    let docker: Vec<&serde_json::Value> = engines
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "docker" && e["error"].is_null())
        .collect();
    let all: Vec<&serde_json::Value> = docker
        .iter()
        .flat_map(|e| e["workloads"].as_array().unwrap())
        .collect();
    let ours = all
        .iter()
        .find(|w| w["job_id"] == id)
        .unwrap_or_else(|| panic!("job {id} not in {engines:#}"));
    assert_eq!(ours["leftover"], false, "{ours:#}");
    assert_eq!(ours["state"], "running");
    assert_eq!(ours["project"], "sample");
    assert_eq!(ours["recipe"], "nap");
    assert_eq!(ours["cpu_limit"], 1.0);
    assert_eq!(ours["memory_limit_bytes"], 268_435_456);
    assert!(
        ours["memory_bytes"].as_u64().is_some_and(|m| m > 0),
        "{ours:#}"
    );
    let stray = all
        .iter()
        .find(|w| w["job_id"] == 999)
        .unwrap_or_else(|| panic!("the stray container is not in {engines:#}"));
    assert_eq!(stray["leftover"], true);
    assert_eq!(stray["state"], "created");

    // A user sees the containers of jobs they may see, and no leftover; removal is admins'.
    let alice = format!("Authorization: Bearer {}", home.token("alice"));
    let seen = crate::support::curl(&["-sS", "-H", &alice, &format!("{}/api/v1/workloads", d.url)]);
    assert!(!seen.contains("\"job_id\":999"), "{seen}");
    let refused = crate::support::curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        &alice,
        &format!("{}/api/v1/workloads/leftovers/remove", d.url),
    ]);
    assert_eq!(refused, "403");

    let admin = format!("Authorization: Bearer {}", d.token);
    let said = crate::support::curl(&[
        "-sS",
        "-X",
        "POST",
        "-H",
        &admin,
        &format!("{}/api/v1/workloads/leftovers/remove", d.url),
    ]);
    assert!(said.contains("removed "), "{said}");
    assert!(
        containers(None, &home, "capstan.job=999").is_empty(),
        "{said}"
    );
    assert_eq!(
        containers(None, &home, &job_label).len(),
        1,
        "the job's container stays: {said}"
    );
    assert_eq!(d.job(id)["state"], "running");

    let out = home
        .capstan()
        .args(["cancel", &id.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    d.wait_state(id, 60, &["cancelled"]);
    assert!(containers(None, &home, "").is_empty());
}
