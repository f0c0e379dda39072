//! The shim: a small supervisor process between the daemon and each local recipe.
//!
//! The daemon may be killed at any time; the recipe must not notice. So the daemon does not
//! hold the recipe's pipes: it starts `capstan shim SPEC` in its own process group, and the
//! shim runs the recipe, timestamps each output line into the log file, enforces the timeout,
//! kills the whole process tree on cancel, and writes `exit.json` atomically when it is over.
//! A restarted daemon finds the shim by its pid (checked against its start time) and reads the
//! same files.
//!
//! Exactly-once start: the shim's first act is to create `claim` (O_EXCL). A recovering daemon
//! that finds no claim creates it itself ("abandoned") before queueing the activity again; a
//! shim that comes second exits without running anything.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use crate::cgroup::{ActivityGroup, Cgroups};

/// What the daemon asks of a shim (`spec.json` in the activity folder).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimSpec {
    pub activity: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub timeout_secs: Option<u64>,
    pub memory_limit: Option<u64>,
    pub cpu_millis: Option<u64>,
    /// Where to create the activity's cgroup; `None` where limits cannot be enforced.
    pub cgroups: Option<Cgroups>,
    /// The Unix user and group the recipe runs as; `None`: the shim's own (the daemon's).
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

/// What the shim leaves behind (`exit.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShimExit {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub timed_out: bool,
    pub cancelled: bool,
    pub spawn_error: Option<String>,
    pub log_error: Option<String>,
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time_ms: Option<u64>,
    /// How limits were enforced, or why they were not.
    pub limits: String,
    /// The recipe's last lines on stderr, for the diagnosis.
    pub last_stderr: Vec<String>,
}

impl ShimExit {
    pub fn ending(&self) -> capstan_engine::diagnose::Ending {
        capstan_engine::diagnose::Ending {
            exit_code: self.exit_code,
            signal: self.signal,
            oom_killed: self.oom_killed,
            timed_out: self.timed_out,
            cancelled: self.cancelled,
            start_error: self.spawn_error.clone(),
            log_error: self.log_error.clone(),
            peak_memory_bytes: self.peak_memory_bytes,
            cpu_time_ms: self.cpu_time_ms,
            last_stderr: self.last_stderr.clone(),
        }
    }
}

pub const SPEC: &str = "spec.json";
pub const CLAIM: &str = "claim";
pub const EXIT: &str = "exit.json";
pub const LOG: &str = "log";
pub const GROUP: &str = "cgroup.json";
pub const CHILD: &str = "child.pid";

/// Grace between SIGTERM and SIGKILL when stopping a recipe.
const GRACE: Duration = Duration::from_secs(2);
/// Lines longer than this are split, so one huge line cannot exhaust memory.
const MAX_LINE: usize = 64 * 1024;

/// Writes a file atomically: a reader sees the old content or the new, never half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// `(pid, start time in clock ticks since boot)`, to recognise a process after pid reuse.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); start time is field 22.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn now_stamp() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Entry point of `capstan shim DIR`. Returns the process exit code.
pub fn main(dir: &Path) -> i32 {
    // Exactly once: whoever creates the claim first decides.
    let claim = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(CLAIM));
    match claim {
        Ok(mut f) => {
            let pid = std::process::id();
            let start = process_start(pid).unwrap_or(0);
            if f.write_all(format!("shim {pid} {start}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .is_err()
            {
                return 3;
            }
        }
        // Abandoned by a recovering daemon, or a second shim: nothing to do.
        Err(_) => return 0,
    }
    let spec: ShimSpec = match std::fs::read(dir.join(SPEC))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            let exit = ShimExit {
                spawn_error: Some(format!("cannot read the activity's spec: {e}")),
                ..ShimExit::default()
            };
            let _ = write_atomic(
                &dir.join(EXIT),
                &serde_json::to_vec(&exit).unwrap_or_default(),
            );
            return 0;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return 4,
    };
    let exit = rt.block_on(supervise(dir, &spec));
    let record = serde_json::to_vec(&exit).unwrap_or_default();
    // Also on stdout: if the disk is full and the file cannot be written, a daemon that is
    // still listening learns how the recipe ended all the same.
    // `println!` would panic once the daemon is gone (EPIPE); a failed write is fine.
    let _ = writeln!(
        std::io::stdout(),
        "exit {}",
        String::from_utf8_lossy(&record)
    );
    let _ = std::io::stdout().flush();
    if let Err(e) = write_atomic(&dir.join(EXIT), &record) {
        eprintln!(
            "capstan shim: cannot write {}: {e}",
            dir.join(EXIT).display()
        );
        return 5;
    }
    0
}

enum Line {
    Out(Vec<u8>, String),
    Err(Vec<u8>, String),
}

async fn supervise(dir: &Path, spec: &ShimSpec) -> ShimExit {
    let mut exit = ShimExit::default();
    let group: Option<ActivityGroup> = match &spec.cgroups {
        None => {
            exit.limits = "not enforced: no usable cgroups on this machine".into();
            None
        }
        Some(cg) => match cg.create(&spec.activity, spec.memory_limit, spec.cpu_millis) {
            Ok(g) => {
                exit.limits = format!("enforced by {}", cg.describe());
                let _ = write_atomic(
                    &dir.join(GROUP),
                    &serde_json::to_vec(&g).unwrap_or_default(),
                );
                Some(g)
            }
            Err(e) => {
                exit.limits = format!("not enforced: cannot create a cgroup: {e}");
                None
            }
        },
    };

    // Catch SIGTERM (a cancel) before the recipe exists: one arriving while it starts must
    // stop it, not kill the shim and orphan the recipe.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // The recipe's own identity. Setting the uid from root also drops every supplementary
    // group (std calls setgroups(0) first), so nothing of the daemon's rights remains.
    if let (Some(uid), Some(gid)) = (spec.uid, spec.gid) {
        cmd.gid(gid).uid(uid);
    }
    // Enter the group only to spawn: the recipe inherits it, the shim does not stay.
    if let Some(g) = &group
        && let Err(e) = g.enter()
    {
        exit.limits = format!("not enforced: cannot join the cgroup: {e}");
    }
    let spawned = cmd.spawn();
    if let Some(g) = &group {
        let _ = g.leave();
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            exit.spawn_error = Some(format!("cannot start `{}`: {e}", spec.program.display()));
            if let Some(g) = &group {
                g.remove();
            }
            return exit;
        }
    };
    let child_pid = child.id().unwrap_or(0);
    let _ = write_atomic(&dir.join(CHILD), child_pid.to_string().as_bytes());
    // Tell the daemon (if it is still there to hear) that user code is running.
    let _ = writeln!(std::io::stdout(), "running {child_pid}");
    let _ = std::io::stdout().flush();

    let (tx, mut rx) = mpsc::unbounded_channel::<Line>();
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(pump(s, tx.clone(), true)));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(pump(s, tx.clone(), false)));
    drop(tx);

    let mut log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG))
    {
        Ok(f) => Some(std::io::BufWriter::new(f)),
        Err(e) => {
            exit.log_error = Some(format!("cannot open the log file: {e}"));
            None
        }
    };
    let mut last_err: VecDeque<String> = VecDeque::new();
    // Checked: a deadline past what the clock can hold is no deadline (values are bounded when
    // read, but a spec file outlives the version of capstan that wrote it).
    let deadline = spec
        .timeout_secs
        .and_then(|s| tokio::time::Instant::now().checked_add(Duration::from_secs(s)));
    let mut status = None;
    let mut stopping: Option<tokio::time::Instant> = None;
    // Once the recipe has exited, how long its output may take to drain: a process that escaped
    // both the process group and the cgroup must not keep the shim alive through its pipes.
    let mut drain_until: Option<tokio::time::Instant> = None;

    loop {
        let timeout = async {
            match (drain_until, stopping, deadline) {
                (Some(t), _, _) | (None, Some(t), _) | (None, None, Some(t)) => {
                    tokio::time::sleep_until(t).await
                }
                (None, None, None) => std::future::pending().await,
            }
        };
        let sigterm = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = rx.recv() => match line {
                Some(line) => {
                    let (stream, bytes, stamp) = match line {
                        Line::Out(b, s) => ("o", b, s),
                        Line::Err(b, s) => ("e", b, s),
                    };
                    let text = String::from_utf8_lossy(&bytes);
                    if stream == "e" && !text.trim().is_empty() {
                        if last_err.len() == 20 {
                            last_err.pop_front();
                        }
                        last_err.push_back(text.trim_end().to_string());
                    }
                    if let Some(w) = log.as_mut() {
                        let r = writeln!(w, "{stamp} {stream} {}", text.trim_end_matches(['\n', '\r']))
                            .and_then(|()| if rx.is_empty() { w.flush() } else { Ok(()) });
                        if let Err(e) = r {
                            // A recipe whose logs cannot be kept is stopped: running on blind
                            // would lose the very output needed to understand it.
                            exit.log_error = Some(format!("cannot write the log file: {e}"));
                            log = None;
                            kill_tree(child_pid, group.as_ref(), rustix::process::Signal::KILL);
                        }
                    }
                }
                None => {
                    if status.is_some() {
                        break;
                    }
                    // Both pipes closed but the child lives on: wait for it.
                    match child.wait().await {
                        Ok(s) => status = Some(s),
                        Err(_) => break,
                    }
                    break;
                }
            },
            s = child.wait(), if status.is_none() => {
                status = s.ok();
                drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                // The recipe is done: nothing it started may outlive it (and hold its pipes).
                kill_tree(child_pid, group.as_ref(), rustix::process::Signal::KILL);
            }
            _ = timeout => {
                if drain_until.is_some() {
                    break;
                } else if stopping.is_some() {
                    // The grace period is over.
                    kill_tree(child_pid, group.as_ref(), rustix::process::Signal::KILL);
                    stopping = None;
                } else {
                    exit.timed_out = true;
                    kill_tree(child_pid, group.as_ref(), rustix::process::Signal::TERM);
                    stopping = Some(tokio::time::Instant::now() + GRACE);
                }
            }
            _ = sigterm => {
                exit.cancelled = true;
                kill_tree(child_pid, group.as_ref(), rustix::process::Signal::TERM);
                stopping = Some(tokio::time::Instant::now() + GRACE);
            }
        }
    }
    for h in [out, err].into_iter().flatten() {
        let _ = h.await;
    }
    if let Some(mut w) = log
        && let Err(e) = w.flush()
    {
        exit.log_error
            .get_or_insert(format!("cannot write the log file: {e}"));
    }
    if let Some(s) = status {
        use std::os::unix::process::ExitStatusExt;
        exit.exit_code = s.code();
        exit.signal = s.signal();
    }
    if let Some(g) = &group {
        g.kill_all(Duration::from_secs(5));
        exit.oom_killed = g.oom_killed();
        exit.peak_memory_bytes = g.peak_memory();
        exit.cpu_time_ms = g.cpu_nanos().map(|n| n / 1_000_000);
        g.remove();
    }
    exit.last_stderr = last_err.into_iter().collect();
    exit
}

/// Signals the recipe's process group, and with a cgroup, every process in it.
pub fn kill_tree(child_pid: u32, group: Option<&ActivityGroup>, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child_pid as i32) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
    if let Some(g) = group {
        if sig == rustix::process::Signal::KILL {
            g.kill_all(Duration::from_secs(5));
        } else {
            for p in g.pids() {
                if let Some(pid) = rustix::process::Pid::from_raw(p) {
                    let _ = rustix::process::kill_process(pid, sig);
                }
            }
        }
    }
}

async fn pump(
    stream: impl tokio::io::AsyncRead + Unpin,
    tx: mpsc::UnboundedSender<Line>,
    out: bool,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let mut buf = Vec::new();
        // Read a line, but never more than MAX_LINE bytes of it at once.
        let n = {
            let mut limited = (&mut reader).take(MAX_LINE as u64);
            limited
                .read_until(b'\n', &mut buf)
                .await
                .unwrap_or_default()
        };
        if n == 0 {
            return;
        }
        let stamp = now_stamp();
        let line = if out {
            Line::Out(buf, stamp)
        } else {
            Line::Err(buf, stamp)
        };
        if tx.send(line).is_err() {
            return;
        }
    }
}
