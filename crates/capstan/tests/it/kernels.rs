//! Notebook kernels through the daemon's Jupyter gateway, driven by a real Jupyter Server from
//! PyPI (`CAPSTAN_TEST_JUPYTER`, the venv `scripts/test` makes) started with `--gateway-url`:
//! the test talks to Jupyter Server's own API only, as JupyterLab does.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{TestDaemon, TestHome, curl, skip};

/// What a user's Jupyter Server session runs (`jupyter_client.py`).
const CLIENT: &str = include_str!("jupyter_client.py");

/// The pinned Jupyter Server venv's interpreter, if there is one.
pub(crate) fn jupyter() -> Option<String> {
    let python = std::env::var("CAPSTAN_TEST_JUPYTER")
        .ok()
        .filter(|p| Path::new(p).exists());
    if python.is_none() {
        skip("the Jupyter Server venv scripts/test makes (CAPSTAN_TEST_JUPYTER)");
    }
    python
}

/// A code environment with Jupyter (and what reading a dataset needs).
pub(crate) const NB_ENV: &str = "\n[code_env.nb]\nlanguage = \"python\"\nwith_jupyter = true\npackages = [\"pandas>=2\", \"pyarrow>=15\"]\n";

/// Runs a user's session against `d` on `spec`: each step's JSON, by its name.
pub(crate) fn session(
    python: &str,
    h: &TestHome,
    d: &TestDaemon,
    spec: &str,
) -> std::collections::BTreeMap<String, Value> {
    let work = h.dir.path().join("jupyter");
    std::fs::create_dir_all(&work).unwrap();
    let script = work.join("jupyter_client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let out = Command::new(python)
        .arg(&script)
        .args([&d.url, &h.token("alice"), spec])
        .arg(&work)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let server_log = std::fs::read_to_string(work.join("jupyter-server.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the session failed:\n{stdout}\n{}\n--- Jupyter Server ---\n{server_log}\n--- daemon ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"));
            (v["step"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// Runs `code` on kernel `id` through the gateway's own WebSocket (no Jupyter Server): its
/// reply's status and what it printed.
pub(crate) fn direct(python: &str, h: &TestHome, url: &str, id: &str, code: &str) -> Value {
    let script = h.dir.path().join("jupyter/jupyter_client.py");
    let out = Command::new(python)
        .arg(&script)
        .args(["--direct", url, &h.token("alice"), id, code])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts a kernel of `spec` on the gateway as alice, runs `code` on it and deletes it: what
/// the code's run gave.
pub(crate) fn run_once(python: &str, h: &TestHome, url: &str, spec: &str, code: &str) -> Value {
    let alice = h.token("alice");
    let started = gateway(
        &alice,
        "POST",
        &format!("{url}/api/kernels"),
        Some(&format!("{{\"name\": \"{spec}\"}}")),
    );
    assert!(started.ends_with("\n201"), "{started}");
    let kernel: Value = serde_json::from_str(started.rsplit_once('\n').unwrap().0).unwrap();
    let id = kernel["id"].as_str().unwrap();
    let ran = direct(python, h, url, id, code);
    let deleted = gateway(&alice, "DELETE", &format!("{url}/api/kernels/{id}"), None);
    assert!(deleted.ends_with("\n204"), "{deleted}");
    ran
}

/// Asserts what every kernel session must show, wherever the kernel ran.
pub(crate) fn assert_session(steps: &std::collections::BTreeMap<String, Value>, spec: &str) {
    let specs = &steps["kernelspecs"];
    assert_eq!(specs["status"], 200, "{specs}");
    assert!(
        specs["names"].as_array().unwrap().iter().any(|n| n == spec),
        "{specs}"
    );
    let start = &steps["start"];
    assert_eq!(start["status"], 201, "{start}");
    assert_eq!(start["kernel"]["name"], spec, "{start}");
    let execute = &steps["execute"];
    assert_eq!(execute["status"], "ok", "{execute}");
    assert_eq!(execute["out"], "42\n", "{execute}");
    assert_eq!(steps["file"]["out"], "4\n", "{}", steps["file"]);
    let dataset = &steps["dataset"];
    assert_eq!(dataset["out"], "178 sample\n", "{dataset}");
    // How each language's kernel answers an interrupted loop (IRkernel aborts the request),
    // and the error of a name it lost.
    let (interrupted, unbound) = match steps["kernelspecs"]["language"].as_str() {
        Some("R") => (("abort", Value::Null), ("ERROR", "object 'x' not found")),
        _ => (
            ("error", Value::from("KeyboardInterrupt")),
            ("NameError", "name 'x' is not defined"),
        ),
    };
    let interrupt = &steps["interrupt"];
    assert_eq!(interrupt["status"], 204, "{interrupt}");
    assert_eq!(interrupt["reply"], interrupted.0, "{interrupt}");
    assert_eq!(interrupt["ename"], interrupted.1, "{interrupt}");
    let restart = &steps["restart"];
    assert_eq!(restart["status"], 200, "{restart}");
    assert_eq!(
        restart["reply"], "error",
        "a restart keeps no state: {restart}"
    );
    assert_eq!(
        restart["ename"], unbound.0,
        "a restart keeps no state: {restart}"
    );
    assert!(
        restart["evalue"].as_str().unwrap_or("").contains(unbound.1),
        "a restart keeps no state: {restart}"
    );
    let id = start["kernel"]["id"].as_str().unwrap();
    assert!(
        steps["list"]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == id),
        "{}",
        steps["list"]
    );
    assert_eq!(steps["delete"]["status"], 204, "{}", steps["delete"]);
}

/// The processes whose environment names kernel `id` (the agent and its ipykernel).
fn processes_of(id: &str) -> Vec<String> {
    let needle = format!("CAPSTAN_KERNEL_ID={id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_stock_jupyter_server_runs_a_local_kernel_through_the_gateway() {
    let Some(python) = jupyter() else { return };
    let h = TestHome::new("kernels");
    h.append(
        "images.toml",
        &format!(
            "{NB_ENV}build_for = \"none\"\n\n[code_env.rnb]\nlanguage = \"r\"\nwith_jupyter = true\nbuild_for = \"none\"\n"
        ),
    );
    h.append(
        "exec-configs.toml",
        "\n[exec_config.local-brief]\nkind = \"local\"\nidle_timeout = \"2s\"\n\n\
         [exec_config.local-tiny]\nkind = \"local\"\nmemory_limit = \"24Mi\"\n",
    );
    let csv = h.root().join("projects/sample/data/wine.csv");
    let out = h
        .capstan()
        .args(["dataset", "import", "sample/wine"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The venv first, as an admin would: a kernel's start then takes seconds.
    let out = h.capstan().args(["env", "build", "nb"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = h.start();

    let steps = session(&python, &h, &d, "sample.nb.local");
    assert_session(&steps, "sample.nb.local");
    let specs = &steps["kernelspecs"];
    assert!(
        specs["display"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "sample · nb · local"),
        "{specs}"
    );
    // alice's groups may not use Kubernetes: not hers to list.
    assert!(
        !specs["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "sample.nb.k8s-medium"),
        "{specs}"
    );

    // The kernel was a job of the project, now ended, with nothing of it left running.
    let id = steps["start"]["kernel"]["id"].as_str().unwrap();
    let job_id = steps["start"]["kernel"]["job_id"].as_i64().unwrap();
    let job = d.job(job_id);
    assert_eq!(job["recipe"], "@kernel", "{job}");
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["user"], "alice", "{job}");
    assert_eq!(processes_of(id), Vec::<String>::new());

    // Refusals, straight from the gateway, with Jupyter's `message`.
    let alice = h.token("alice");
    let url = d.url.clone();
    let post = |name: &str| {
        gateway(
            &alice,
            "POST",
            &format!("{url}/api/kernels"),
            Some(&format!("{{\"name\": \"{name}\"}}")),
        )
    };
    let forbidden = post("sample.nb.k8s-medium");
    assert!(forbidden.ends_with("\n403"), "{forbidden}");
    assert!(
        forbidden.contains("kernelspec `sample.nb.k8s-medium` is not yours to use"),
        "{forbidden}"
    );
    // A kernel that cannot start says why, as a recipe's job would.
    let oom = post("sample.nb.local-tiny");
    assert!(oom.ends_with("\n503"), "{oom}");
    assert!(
        oom.contains("did not start: job ") && oom.contains("24 MiB memory limit"),
        "{oom}"
    );
    // IRkernel comes with an R environment's image: not a local process's to start, nor listed.
    assert!(
        !specs["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "sample.rnb.local"),
        "{specs}"
    );
    let r_local = post("sample.rnb.local");
    assert!(r_local.ends_with("\n409"), "{r_local}");
    assert!(
        r_local.contains(
            "R kernels run in containers, where code environment `rnb`'s image has IRkernel"
        ),
        "{r_local}"
    );
    let unknown = post("sample.nb.nowhere");
    assert!(unknown.ends_with("\n404"), "{unknown}");
    assert!(
        unknown.contains("no kernelspec `sample.nb.nowhere`; yours are: ")
            && unknown.contains("sample.nb.local"),
        "{unknown}"
    );
    let other = gateway(&alice, "GET", &format!("{url}/api/kernels/{id}"), None);
    assert!(
        other.ends_with("\n404"),
        "a deleted kernel is gone: {other}"
    );

    // Left alone (no client, nothing executing) past its configuration's idle_timeout, a
    // kernel is culled: its job says by whom, and nothing of it runs on.
    let started = post("sample.nb.local-brief");
    assert!(started.ends_with("\n201"), "{started}");
    let kernel: Value = serde_json::from_str(started.rsplit_once('\n').unwrap().0).unwrap();
    let job_id = kernel["job_id"].as_i64().unwrap();
    let job = d.wait_state(job_id, 60, &["cancelled"]);
    assert!(
        job["diagnosis"]
            .as_str()
            .unwrap()
            .contains("cancelled by the idle culler (no execution and no client for 2s)"),
        "{job}"
    );
    assert_eq!(
        processes_of(kernel["id"].as_str().unwrap()),
        Vec::<String>::new()
    );

    // A daemon killed and started again (on its address, as a service restarts) keeps a
    // running kernel and its state: the agent dials the new daemon, which adopts the kernel.
    let started = post("sample.nb.local");
    assert!(started.ends_with("\n201"), "{started}");
    let kernel: Value = serde_json::from_str(started.rsplit_once('\n').unwrap().0).unwrap();
    let id = kernel["id"].as_str().unwrap().to_string();
    let x = direct(&python, &h, &url, &id, "x = 41");
    assert_eq!(x["status"], "ok", "{x}");
    // The session's file is in the user's notebook folder of the project, kept for them.
    let kept = direct(&python, &h, &url, &id, "print(open('notes.txt').read())");
    assert_eq!(kept["out"], "kept\n", "{kept}");
    d.kill9();
    let d = h.start_on(url.trim_start_matches("http://"));
    let show = || gateway(&alice, "GET", &format!("{url}/api/kernels/{id}"), None);
    crate::support::wait_for("the kernel's agent to dial the new daemon", 60, || {
        show().ends_with("\n200")
    });
    let after = direct(&python, &h, &url, &id, "print(x + 1)");
    assert_eq!(after["out"], "42\n", "the kernel lost its state: {after}");
    let deleted = gateway(&alice, "DELETE", &format!("{url}/api/kernels/{id}"), None);
    assert!(deleted.ends_with("\n204"), "{deleted}");
    assert_eq!(processes_of(&id), Vec::<String>::new());
    drop(d);
}

/// A request to the gateway itself, with the token as Jupyter sends it: the body, a newline and
/// the status.
pub(crate) fn gateway(token: &str, method: &str, url: &str, body: Option<&str>) -> String {
    let auth = format!("Authorization: token {token}");
    let mut args = vec!["-sS", "-w", "\n%{http_code}", "-X", method, "-H", &auth];
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data", b]);
    }
    args.push(url);
    curl(&args)
}
