//! Notebook kernel benchmark: from asking the gateway for a kernel to the reply of its first
//! execute request (`print(6 * 7)`), through capstan (POST /api/kernels, the agent's start and
//! dial-out, the client's WebSocket), against starting ipykernel directly with jupyter_client in
//! the same environment and executing the same code: locally (the same venv), and where
//! `CAPSTAN_TEST_IMAGE` names a local image, in a Docker container (`docker run --rm` of the
//! same env image, with the same limits). Both sides measured in the same run, in turns.
//!
//! Run: `cargo bench -p capstan --bench kernels` (env `BENCH_RUNS`, default 5). Needs
//! `CAPSTAN_TEST_JUPYTER`, an interpreter with tornado (the venv `scripts/test` makes), for the
//! client side. The first run builds the `nb` environment (a venv, and its image).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

mod common;
use common::{capstan, median, ok, start};

/// The client's side (the tests' own): `--first-reply` starts a kernel on the gateway, runs one
/// cell, and deletes the kernel.
const CLIENT: &str = include_str!("../tests/it/jupyter_client.py");

/// ipykernel started directly, as Jupyter Server's own kernel manager starts it: one line when
/// the first execute's reply is in.
const RAW: &str = r#"
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="python3")
kc.execute_interactive("print(6 * 7)", timeout=120, output_hook=lambda m: None)
print("replied", flush=True)
kc.stop_channels()
km.shutdown_kernel(now=True)
"#;

const BOX_CPUS: &str = "1";

/// Seconds from spawning `cmd` to its first line on stdout; the process is then waited for.
fn until_first_line(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(line.trim(), "replied", "the raw kernel did not reply");
    assert!(child.wait().unwrap().success());
    secs
}

/// One kernel through capstan: seconds from the start request to the first reply.
fn through_capstan(client: &str, script: &Path, d: &common::Daemon, spec: &str) -> f64 {
    let out = Command::new(client)
        .arg(script)
        .args(["--first-reply", &d.url, &d.token, spec, "print(6 * 7)"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["out"], "42\n", "{v}");
    v["first_reply"].as_f64().unwrap()
}

fn report(what: &str, runs: usize, raw_what: &str, raw: f64, our: f64) {
    println!("{what}, median of {runs}");
    println!("  raw: {raw_what:<52} {:8.0} ms", raw * 1e3);
    println!(
        "  capstan: {:<47} {:8.0} ms   (ratio {:.2}x)",
        "POST /api/kernels → first execute reply",
        our * 1e3,
        our / raw
    );
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let Some(client) = std::env::var("CAPSTAN_TEST_JUPYTER")
        .ok()
        .filter(|p| Path::new(p).exists())
    else {
        println!(
            "skipped: set CAPSTAN_TEST_JUPYTER to an interpreter with tornado (scripts/test's Jupyter venv)"
        );
        return;
    };
    let image = std::env::var("CAPSTAN_TEST_IMAGE").unwrap_or_default();
    let docker = !image.is_empty()
        && Command::new("docker")
            .args(["image", "inspect", &image])
            .output()
            .is_ok_and(|o| o.status.success());
    let dir = std::env::temp_dir().join(format!("capstan-bench-kernels-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let home = dir.join("home");
    assert!(
        capstan()
            .arg("init")
            .arg(&home)
            .output()
            .unwrap()
            .status
            .success()
    );
    let build_for = if docker { "[\"nbbox\"]" } else { "\"none\"" };
    let append = |file: &str, text: &str| {
        let path = home.join(file);
        let mut s = std::fs::read_to_string(&path).unwrap();
        s += text;
        std::fs::write(&path, s).unwrap();
    };
    append(
        "images.toml",
        &format!(
            "\n[code_env.nb]\nlanguage = \"python\"\nwith_jupyter = true\nbuild_for = {build_for}\n"
        ),
    );
    append(
        "exec-configs.toml",
        &format!(
            "\n[exec_config.nbbox]\nkind = \"docker\"\nbase_image = \"default\"\ncpu_limit = {BOX_CPUS}\nmemory_limit = \"1Gi\"\n"
        ),
    );
    if docker {
        ok(&home, &["image", "build-base", "default", "--no-push"]);
    }
    let built = ok(&home, &["env", "build", "nb", "--no-push"]);
    let script = dir.join("jupyter_client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let d = start(&home);

    // Untimed: the first of each warms the page cache (and, in Docker, the image's layers).
    let python = common::env_python(&home, "nb");
    let mut raw_local = Command::new(&python);
    raw_local.args(["-c", RAW]);
    until_first_line(&mut raw_local);
    through_capstan(&client, &script, &d, "sample.nb.local");
    let (mut raws, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        raws.push(until_first_line(&mut raw_local));
        ours.push(through_capstan(&client, &script, &d, "sample.nb.local"));
    }
    report(
        "kernel start → first execute reply, locally (the same venv)",
        runs,
        "jupyter_client.start_new_kernel + execute, same venv",
        median(raws),
        median(ours),
    );

    if docker {
        let env_image = built
            .split_whitespace()
            .find(|w| w.starts_with("capstan-env-nb-nbbox:"))
            .unwrap_or_else(|| panic!("no env image in: {built}"))
            .to_string();
        let mut raw_box = Command::new("docker");
        raw_box
            .args(["run", "--rm", "--cpus", BOX_CPUS, "--memory", "1g"])
            .args([&env_image, "python", "-c", RAW]);
        until_first_line(&mut raw_box);
        through_capstan(&client, &script, &d, "sample.nb.nbbox");
        let (mut raws, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            raws.push(until_first_line(&mut raw_box));
            ours.push(through_capstan(&client, &script, &d, "sample.nb.nbbox"));
        }
        println!();
        report(
            &format!("the same in a container ({env_image}, {BOX_CPUS} CPU, 1Gi)"),
            runs,
            "`docker run --rm` of the same, same image",
            median(raws),
            median(ours),
        );
    } else {
        println!(
            "Docker section skipped: set CAPSTAN_TEST_IMAGE to an image on the local engine (scripts/test-image)"
        );
    }
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
