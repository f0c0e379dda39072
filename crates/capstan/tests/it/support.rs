//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The capstan binary under test.
pub fn capstan() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
    cmd.env_remove("CAPSTAN_HOME")
        .env_remove("CAPSTAN_SERVER")
        .env_remove("CAPSTAN_TOKEN");
    cmd
}

/// Says a test is skipped for want of `what` — except under `CI` (which `scripts/test` sets after
/// installing everything), where a missing tool is a failure, never a silent pass.
pub fn skip(what: &str) {
    assert!(
        std::env::var("CI").is_err(),
        "{what} is missing, and CI is set: scripts/test provides it, so this must not be skipped"
    );
    eprintln!("skipped: {what}");
}

/// A fresh folder under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "capstan-it-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Output as a transcript: stdout, stderr and the exit code.
pub fn transcript(args: &str, out: &Output) -> String {
    let mut s = format!("$ capstan {args}\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stdout.is_empty() {
        s += &stdout;
        if !stdout.ends_with('\n') {
            s.push('\n');
        }
    }
    if !stderr.is_empty() {
        s += "[stderr]\n";
        s += &stderr;
        if !stderr.ends_with('\n') {
            s.push('\n');
        }
    }
    s += &format!("[exit {}]\n", out.status.code().unwrap_or(-1));
    s
}

/// A home made by `capstan init`, with helpers to add recipes and configurations.
pub struct TestHome {
    pub dir: TempDir,
}

impl TestHome {
    pub fn new(label: &str) -> TestHome {
        let dir = TempDir::new(label);
        let out = capstan()
            .arg("init")
            .arg(dir.path().join("h"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let home = TestHome { dir };
        std::fs::write(home.root().join("init.out"), stdout).unwrap();
        home
    }

    /// A folder recipes may write to and the test may read (recipes run as an unprivileged
    /// user, who may not write in the test's own folders).
    pub fn shared(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.dir.path().join("shared");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        dir
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("h")
    }

    /// The token `capstan init` printed for `user`.
    pub fn token(&self, user: &str) -> String {
        let out = std::fs::read_to_string(self.root().join("init.out")).unwrap();
        out.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(user)).then(|| w.next().unwrap().to_string())
            })
            .unwrap()
    }

    /// Adds `projects/sample/recipes/NAME.toml` and its code file.
    pub fn recipe(&self, name: &str, kind: &str, ext: &str, code: &str, extra_toml: &str) {
        let dir = self.root().join("projects/sample/recipes");
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!("kind = \"{kind}\"\n{extra_toml}\n"),
        )
        .unwrap();
        std::fs::write(dir.join(format!("{name}.{ext}")), code).unwrap();
    }

    pub fn append(&self, file: &str, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.root().join(file))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    pub fn capstan(&self) -> Command {
        let mut c = capstan();
        c.arg("--home").arg(self.root());
        c
    }

    pub fn start(&self) -> TestDaemon {
        TestDaemon::start(&self.root())
    }

    /// A daemon listening on `bind` (to be reachable from elsewhere than loopback).
    pub fn start_on(&self, bind: &str) -> TestDaemon {
        TestDaemon::start_on(&self.root(), bind)
    }
}

/// Waits for `cond`, checking every 20 ms, failing the test after `secs`.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        // A failed Docker test must not leave its containers running on the shared engine.
        let label = format!(
            "label=capstan.instance={}",
            capstan_core::instance_id(&self.root())
        );
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-a", "-q", "--filter", &label])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
        // Likewise local jobs of a failed test: their shims outlive a killed daemon by design.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self.root().display().to_string()])
            .output();
    }
}

/// A `capstan serve` child process on an ephemeral port.
/// Where a test daemon of the home at `root` logs.
fn daemon_log(root: &Path) -> PathBuf {
    root.with_extension("daemon.log")
}

pub struct TestDaemon {
    pub child: std::process::Child,
    pub url: String,
    pub token: String,
    pub root: PathBuf,
}

impl TestDaemon {
    pub fn start(root: &Path) -> TestDaemon {
        TestDaemon::start_on(root, "127.0.0.1:0")
    }

    pub fn start_on(root: &Path, bind: &str) -> TestDaemon {
        let mut cmd = capstan();
        cmd.arg("--home").arg(root).args(["serve", "--bind", bind]);
        TestDaemon::start_command(root, cmd)
    }

    /// A daemon started by `cmd` (`capstan serve` for `root`, perhaps under another user).
    pub fn start_command(root: &Path, mut cmd: Command) -> TestDaemon {
        let info = root.join("state/daemon.json");
        let _ = std::fs::remove_file(&info);
        // Beside the home, not in it: a log in the home would change its files on every line,
        // and the daemon reloads a home whose files change.
        let daemon_log = daemon_log(root);
        let log = std::fs::File::create(&daemon_log).unwrap();
        let child = cmd.stderr(log).spawn().unwrap();
        let pid = child.id();
        let mut parsed = None;
        let what = format!(
            "the daemon to publish state/daemon.json (its log: {})",
            daemon_log.display()
        );
        let mut child = child;
        wait_for(&what, 20, || {
            // A daemon that exited will never publish it: say why it did.
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "capstan serve exited ({status}):\n{}",
                    std::fs::read_to_string(&daemon_log).unwrap_or_default()
                );
            }
            let Ok(text) = std::fs::read_to_string(&info) else {
                return false;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                return false;
            };
            if v["pid"].as_u64() != Some(u64::from(pid)) {
                return false;
            }
            parsed = Some((
                v["url"].as_str().unwrap().to_string(),
                v["token"].as_str().unwrap().to_string(),
            ));
            true
        });
        let (url, token) = parsed.unwrap();
        TestDaemon {
            child,
            url,
            token,
            root: root.to_path_buf(),
        }
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    pub fn get(&self, path: &str) -> serde_json::Value {
        let out = curl(&[
            "-sS",
            "-H",
            &format!("Authorization: Bearer {}", self.token),
            &format!("{}{path}", self.url),
        ]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{path}: {e}: {out}"))
    }

    pub fn job(&self, id: i64) -> serde_json::Value {
        self.get(&format!("/api/v1/jobs/{id}"))
    }

    pub fn wait_state(&self, id: i64, secs: u64, ok: &[&str]) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        wait_for(&format!("job {id} to be {ok:?}"), secs, || {
            last = self.job(id);
            ok.contains(&last["state"].as_str().unwrap_or(""))
        });
        last
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(daemon_log(&self.root)).unwrap_or_default()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // Stop it as an admin would (SIGTERM with --stop-jobs is not what ran), so no test
        // leaves a daemon behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl (the tests talk HTTP the way a script would).
pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(args)
        .output()
        .expect("curl is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Submits a detached run through the CLI and returns the job id.
pub fn submit(home: &TestHome, target: &str, extra: &[&str]) -> i64 {
    let out = home
        .capstan()
        .args(["run", target, "--detach", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_i64().unwrap()
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie is dead for our purposes: it runs nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Orders by customer, imported as `sample/orders` by [`import_orders`].
pub const ORDERS_CSV: &str = "customer,amount\nalice,10.5\nbob,3\nalice,7.25\n";

/// Imports [`ORDERS_CSV`] as the dataset `sample/orders` of `h`.
pub fn import_orders(h: &TestHome) {
    import_csv(h, "orders", ORDERS_CSV);
}

/// Imports `csv` as the dataset `sample/NAME` of `h`; returns what the import printed.
pub fn import_csv(h: &TestHome, name: &str, csv: &str) -> String {
    let file = h.dir.path().join(format!("{name}.csv"));
    std::fs::write(&file, csv).unwrap();
    let out = h
        .capstan()
        .args(["dataset", "import", &format!("sample/{name}")])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out)
}

/// The rows of dataset `sample/NAME` of `h`, as `capstan dataset head --json` prints them.
pub fn head_json(h: &TestHome, name: &str) -> serde_json::Value {
    let out = h
        .capstan()
        .args(["dataset", "head", &format!("sample/{name}"), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `capstan run sample/RECIPE`, which must succeed; its standard output.
pub fn run_ok(h: &TestHome, recipe: &str) -> String {
    let out = h
        .capstan()
        .args(["run", &format!("sample/{recipe}")])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{recipe}\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// A PySpark recipe that sums `sample/orders` by customer into `output`, after `first` (code
/// of its own, one line per statement).
pub fn pyspark_totals(output: &str, first: &str) -> String {
    format!(
        "from pyspark.sql import SparkSession, functions as F\nimport capstan.spark\n{first}\
         spark = SparkSession.builder.getOrCreate()\n\
         print('spark', spark.version, 'master', spark.sparkContext.master, flush=True)\n\
         orders = capstan.spark.read(spark, 'orders')\n\
         capstan.spark.write(orders.groupBy('customer').agg(F.sum('amount').alias('total')).orderBy('customer'), '{output}')\n\
         spark.stop()\n"
    )
}

/// `capstan ARGS` in `h`, which must exit with `code` and say `needle` on its standard error.
pub fn fails(h: &TestHome, args: &[&str], code: i32, needle: &str) -> Output {
    let out = h.capstan().args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "capstan {args:?}\n{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    out
}
