//! What the benchmarks share: the binary, a daemon on an ephemeral port, medians, waiting for
//! a job's end.

#![allow(dead_code)] // Each benchmark uses its own part of this.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn capstan() -> Command {
    Command::new(env!("CARGO_BIN_EXE_capstan"))
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A `capstan serve` of a home, killed when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub url: String,
    pub token: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the daemon of `home` and waits (on its `state/daemon.json`) until it listens.
pub fn start(home: &Path) -> Daemon {
    let child = capstan()
        .arg("--home")
        .arg(home)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("CAPSTAN_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Owned at once, so the daemon is killed even if it never comes up.
    let mut d = Daemon {
        child,
        url: String::new(),
        token: String::new(),
    };
    let info = home.join("state/daemon.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&info)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && v["pid"].as_u64() == Some(u64::from(d.child.id()))
        {
            d.url = v["url"].as_str().unwrap().to_string();
            d.token = v["token"].as_str().unwrap().to_string();
            return d;
        }
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub async fn get_json(http: &reqwest::Client, d: &Daemon, path: &str) -> Value {
    http.get(format!("{}{path}", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The job once it is over (asking every 2 ms: the benchmark measures the daemon, not the
/// CLI's way of waiting).
pub async fn wait_final(http: &reqwest::Client, d: &Daemon, id: i64) -> Value {
    loop {
        let j = get_json(http, d, &format!("/api/v1/jobs/{id}")).await;
        if ["succeeded", "failed", "cancelled", "timed_out"]
            .contains(&j["state"].as_str().unwrap_or(""))
        {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The interpreter of the venv capstan built for code environment `env` in `home`.
pub fn env_python(home: &Path, env: &str) -> std::path::PathBuf {
    std::fs::read_dir(home.join("state/envs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{env}-")))
                && p.is_dir()
        })
        .map(|p| p.join("bin/python"))
        .unwrap_or_else(|| panic!("the {env} code environment was built"))
}

/// `capstan --home HOME ARGS`, which must succeed: its standard output.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let out = capstan()
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "capstan {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
