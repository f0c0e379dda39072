//! `capstan tensorboard JOB`: a job's TensorBoard event files, served by TensorBoard on this
//! machine's CPU, wherever the job ran (a local process, a container, a pod: its recipes
//! uploaded what they wrote to `capstan.tensorboard_dir()`).
//!
//! The files come from the daemon (`GET /api/v1/jobs/{id}/tensorboard`, which checks the caller
//! may see the job) into a folder of this command's own, fetched again every 30 seconds while
//! the job runs, so a training under way shows its progress. TensorBoard is a venv capstan
//! makes once in its cache, at the version capstan was tested with (`capstan_core::pins`), or
//! the Python `--python` names.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::TensorboardArgs;
use crate::client::Client;
use crate::exit;

/// How often the files of a job that still runs are fetched again.
const REFRESH: Duration = Duration::from_secs(30);

/// Where capstan keeps what it makes for commands (shared across homes): `CAPSTAN_CACHE`,
/// else `$XDG_CACHE_HOME/capstan`, else `~/.cache/capstan`.
fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("CAPSTAN_CACHE") {
        return PathBuf::from(c);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("capstan")
}

/// The managed environment: TensorBoard alone, pinned.
fn tensorboard_env() -> capstan_core::model::CodeEnv {
    capstan_core::model::CodeEnv::managed(
        "tensorboard",
        "TensorBoard, for `capstan tensorboard`",
        capstan_core::pins::tensorboard_packages(),
    )
}

/// Unpacks the job's files over `dir` (the previous fetch's go first: a file a recipe removed
/// is gone). Returns the activities (TensorBoard's runs) that kept some.
fn unpack(dir: &Path, tar_bytes: &[u8]) -> anyhow::Result<Vec<String>> {
    let fresh = dir.with_extension("new");
    let _ = std::fs::remove_dir_all(&fresh);
    std::fs::create_dir_all(&fresh)
        .with_context(|| format!("cannot create {}", fresh.display()))?;
    capstan_data::models::unpack_tar(&fresh, tar_bytes)
        .context("the daemon's event files are not a tar")?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&fresh, dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut runs: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    runs.sort();
    Ok(runs)
}

/// Removes the command's folder however it ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn serve(client: &Client, args: &TensorboardArgs) -> anyhow::Result<u8> {
    let path = format!("/api/v1/jobs/{}/tensorboard", args.id);
    let work =
        cache_dir()
            .join("tensorboard")
            .join(format!("job-{}-{}", args.id, std::process::id()));
    let _cleanup = Cleanup(work.clone());
    let logdir = work.join("logs");
    let runs = unpack(&logdir, &client.get_bytes(&path).await?)?;
    let python = match &args.python {
        Some(p) => p.clone(),
        None => {
            let envs = cache_dir().join("envs");
            eprintln!(
                "preparing TensorBoard {} (once, in {})",
                capstan_core::pins::TENSORBOARD,
                envs.display()
            );
            tokio::task::spawn_blocking(move || {
                capstan_backend_local::venv::ensure(&envs, Path::new("/"), &tensorboard_env())
            })
            .await?
            .map_err(anyhow::Error::msg)?
        }
    };
    // TensorBoard's own chatter goes to a file, shown only if it fails to start.
    let log_path = work.join("tensorboard.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = tokio::process::Command::new(&python)
        .args(["-m", "tensorboard.main", "--logdir"])
        .arg(&logdir)
        .args(["--host", &args.host, "--port", &args.port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start TensorBoard with {}", python.display()))?;
    let address = format!("{}:{}", args.host, args.port);
    let started = tokio::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!(
                "TensorBoard stopped at its start ({status}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            );
        }
        if tokio::net::TcpStream::connect(&address).await.is_ok() {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "TensorBoard did not listen on {address} within 2 minutes (its log: {})",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say!(
        "TensorBoard for job {} at http://{address}/ ({} run{}: {}); Ctrl-C stops it",
        args.id,
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        runs.join(", ")
    );
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.tick().await;
    let mut live = true;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            status = child.wait() => bail!("TensorBoard stopped: {}", status?),
            _ = refresh.tick(), if live => {
                let job = client.get(&format!("/api/v1/jobs/{}", args.id)).await?;
                let over = matches!(job["state"].as_str(), Some("succeeded" | "failed" | "cancelled" | "timed_out"));
                if let Ok(bytes) = client.get_bytes(&path).await {
                    unpack(&logdir, &bytes)?;
                }
                // Once the job is over, its last upload is in: nothing more to fetch.
                live = !over;
            }
        }
    }
    let _ = child.kill().await;
    Ok(exit::OK)
}
