//! The `local` backend: each activity is a child process of the daemon's machine, supervised by
//! a shim (see [`shim`]) so that it survives a daemon crash, limited through cgroups where the
//! machine allows (see [`cgroup`]).
//!
//! Which limits are enforced where: with writable cgroups (v1, or v2 with delegation), memory
//! (no swap), CPU (a CFS quota) and the process tree are enforced and measured, and an OOM
//! kill is reported as such. Without them, the timeout and the process tree (by process group)
//! still are, and each job records that its memory and CPU limits were not enforced.

pub mod cgroup;
pub mod private;
pub mod shim;
pub mod venv;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use capstan_core::access::LocalIdentity;
use capstan_core::job::JobState;
use capstan_core::model::ExecKind;
use capstan_core::model::RecipeKind;
use capstan_engine::backend::{
    ActivityControl, ActivityEvent, ActivityOutcome, ActivitySpec, Backend, Resumed,
    TRANSFORM_SPEC, Usage, Workload,
};
use futures_util::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cgroup::{ActivityGroup, Cgroups};
use crate::private::Private;
use crate::shim::{
    CHILD, CLAIM, EXIT, GROUP, SPEC, ShimExit, ShimSpec, process_start, write_atomic,
};

pub struct LocalBackend {
    /// The executable that runs `shim` (the capstan binary itself).
    shim_exe: PathBuf,
    /// Where capstan's Python runtime is unpacked for local recipes (`state/runtime`).
    runtime_dir: PathBuf,
    envs_dir: PathBuf,
    cgroups: Result<Cgroups, String>,
    /// Where activities' private folders are (see [`private`]).
    work_root: PathBuf,
    /// Whether the daemon can start recipes as other users.
    is_root: bool,
}

impl LocalBackend {
    /// `shim_exe` is the program that implements `shim DIR` (normally `capstan`); `work_root`
    /// is where activities get their private folders (outside the home's `state/`).
    pub fn new(home_root: &Path, shim_exe: PathBuf, work_root: PathBuf) -> LocalBackend {
        // One parent group per instance, so two homes on one machine never collide.
        let name = format!("capstan-{}", capstan_core::instance_id(home_root));
        let cgroups = Cgroups::detect(&name);
        match &cgroups {
            Ok(c) => tracing::info!(cgroups = c.describe(), "local limits are enforced"),
            Err(why) => {
                tracing::warn!(why = %why, "local memory and CPU limits cannot be enforced")
            }
        }
        // The runtime ships in the binary: unpack it where local recipes import it from.
        let runtime_dir = home_root.join("state").join("runtime");
        let package = runtime_dir.join("capstan");
        if let Err(error) = std::fs::create_dir_all(&package).and_then(|()| {
            std::fs::write(package.join("__init__.py"), capstan_core::PYTHON_RUNTIME)?;
            std::fs::write(package.join("spark.py"), capstan_core::PYTHON_RUNTIME_SPARK)?;
            std::fs::write(runtime_dir.join("capstan.R"), capstan_core::R_RUNTIME)
        }) {
            tracing::warn!(%error, "cannot unpack capstan's Python runtime; recipes cannot `import capstan`");
        }
        LocalBackend {
            shim_exe,
            runtime_dir,
            envs_dir: home_root.join("state").join("envs"),
            cgroups,
            work_root,
            is_root: rustix::process::geteuid().is_root(),
        }
    }

    /// The default `work_root` of a home: a folder of the instance's under the system's
    /// temporary folder.
    pub fn default_work_root(home_root: &Path) -> PathBuf {
        std::env::temp_dir().join(format!(
            "capstan-work-{}",
            capstan_core::instance_id(home_root)
        ))
    }

    /// Who local recipes run as, for `capstan serve`'s banner.
    pub fn identity_description(&self, identity: &LocalIdentity) -> String {
        match (identity, self.is_root) {
            (LocalIdentity::Daemon, _) => {
                "local recipes run as the daemon's own user (isolation = \"none\")".into()
            }
            (LocalIdentity::Unix { name, chosen_by }, true) => {
                format!("local recipes run as unprivileged Unix users (`{name}` by {chosen_by}, or their user's `run_as`)")
            }
            (LocalIdentity::Unix { .. }, false) => {
                "local recipes are refused for everyone but admins: the daemon is not root, so it cannot run them as \
                 another Unix user (set `isolation = \"none\"` in [instance] to run them as the daemon's user)"
                    .into()
            }
        }
    }

    fn private(&self, spec: &ActivitySpec) -> Private {
        Private::new(&self.work_root, spec.job_id, spec.idx, spec.attempt)
    }

    /// How limits are enforced, for `capstan serve`'s banner and the docs.
    pub fn limits_description(&self) -> String {
        match &self.cgroups {
            Ok(c) => format!(
                "memory, CPU and process-tree limits enforced by {}",
                c.describe()
            ),
            Err(why) => format!("memory and CPU limits not enforced ({why})"),
        }
    }

    async fn prepare(&self, spec: &ActivitySpec) -> Result<ShimSpec, String> {
        let who = private::run_as(&spec.identity, self.is_root, spec.admin)?;
        let private = self.private(spec);
        private.create(who.as_ref()).map_err(|e| {
            format!(
                "cannot create the activity's private folder {}: {e}",
                private.root.display()
            )
        })?;
        let work = private.work();
        // Read with the daemon's rights, so only what resolves inside the project.
        let files = spec.code_files()?;
        for (rel, bytes) in &files {
            private
                .write(&work.join(rel), bytes, who.as_ref())
                .map_err(|e| format!("cannot stage the recipe's code {rel}: {e}"))?;
        }
        let code = spec
            .code_file
            .as_ref()
            .and_then(|c| c.file_name())
            .map(|name| work.join(name));
        let mut env = recipe_env(who.as_ref(), &work);
        // The project's library, then capstan's runtime, then whatever the machine had.
        let mut python_path = Vec::new();
        if files.iter().any(|(rel, _)| rel.starts_with("lib/")) {
            python_path.push(work.join("lib").display().to_string());
        }
        python_path.push(self.runtime_dir.display().to_string());
        if let Ok(p) = std::env::var("PYTHONPATH")
            && !p.is_empty()
        {
            python_path.push(p);
        }
        env.push(("PYTHONPATH".into(), python_path.join(":")));
        env.push((
            "R_PROFILE_USER".into(),
            self.runtime_dir.join("capstan.R").display().to_string(),
        ));
        env.extend(spec.capstan_env().into_iter().map(|(k, v)| (k.into(), v)));
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(access) = &spec.data {
            // The token is a file only the recipe's user can read, not a variable that `ps e`
            // would show.
            private
                .write(&private.token(), access.token.as_bytes(), who.as_ref())
                .map_err(|e| format!("cannot write the activity's token file: {e}"))?;
            env.push((
                "CAPSTAN_TOKEN_FILE".into(),
                private.token().display().to_string(),
            ));
            env.push(("CAPSTAN_API_URL".into(), access.api_url.clone()));
        }
        if spec.is_kernel() {
            let dir =
                private::notebook_dir(&self.work_root, &spec.project, &spec.user, who.as_ref())
                    .map_err(|e| format!("cannot create the kernel's notebook folder: {e}"))?;
            env.push((
                capstan_engine::kernel::KERNEL_WORKDIR_VAR.into(),
                dir.display().to_string(),
            ));
        }

        if let Workload::Transform { .. } = &spec.workload {
            // The built-in engine is this binary: `capstan transform run`, reading the inputs
            // linked into the private folder and writing its outputs there, as Spark does.
            let (inputs, outputs) = link_files(spec, &private)?;
            env.push(("CAPSTAN_TRANSFORM_INPUTS".into(), inputs));
            env.push(("CAPSTAN_TRANSFORM_OUTPUTS".into(), outputs));
            env.push((
                "CAPSTAN_TRANSFORM_SPILL".into(),
                private.root.join("spill").display().to_string(),
            ));
            private
                .make_dir(&private.root.join("spill"), who.as_ref())
                .map_err(|e| format!("cannot create the engine's spill folder: {e}"))?;
            return Ok(ShimSpec {
                activity: format!("{}-{}", spec.activity_id(), spec.attempt),
                program: self.shim_exe.clone(),
                args: spec.transform_args(&work.join(TRANSFORM_SPEC).display().to_string()),
                cwd: work,
                env,
                timeout_secs: spec.timeout.map(|t| t.secs()),
                memory_limit: spec.memory_limit.map(|m| m.bytes()),
                cpu_millis: spec.cpu_limit.map(|c| c.millis()),
                cgroups: self.cgroups.as_ref().ok().cloned(),
                uid: who.as_ref().map(|w| w.uid),
                gid: who.as_ref().map(|w| w.gid),
            });
        }
        // Spark recipes need pyspark: their code environment's, else a managed one.
        let managed_spark =
            (spec.recipe_kind.is_spark() && spec.code_env.is_none()).then(spark_env);
        let python = match spec.code_env.as_ref().or(managed_spark.as_ref()) {
            Some(ce) => {
                let (envs, home, ce) = (self.envs_dir.clone(), spec.home_root.clone(), ce.clone());
                tokio::task::spawn_blocking(move || venv::ensure(&envs, &home, &ce))
                    .await
                    .map_err(|e| format!("building the code environment failed: {e}"))??
            }
            None => venv::interpreter(),
        };
        let Some(code) = code else {
            return Err(format!(
                "{} recipes do not run as local processes",
                spec.recipe_kind.as_str()
            ));
        };
        let (program, args) = match spec.recipe_kind {
            RecipeKind::PySpark | RecipeKind::SparkSql => {
                let bin = python.parent().map(Path::to_path_buf).unwrap_or_default();
                // Java as the recipe will look for it: its own JAVA_HOME if it sets one, its
                // code environment's programs first (a conda env may bring a JDK).
                let java_home = env
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "JAVA_HOME")
                    .map(|(_, v)| std::ffi::OsString::from(v))
                    .or_else(|| std::env::var_os("JAVA_HOME"));
                let path = std::env::join_paths(
                    std::iter::once(bin.clone()).chain(
                        std::env::var_os("PATH")
                            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                            .unwrap_or_default(),
                    ),
                )
                .ok();
                if let Some(why) = java_missing(path.as_deref(), java_home.as_deref()) {
                    return Err(why);
                }
                let code_file = code
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut submission =
                    capstan_spark::submission(spec, &work.display().to_string(), &code_file)?;
                if who.is_some() {
                    // Executors of a standalone cluster on this machine may run as another user
                    // than the driver, and write into the recipe's private folder (closed to
                    // others above): files and folders they make there must stay the driver's
                    // to commit and move.
                    submission.args.splice(
                        0..0,
                        [
                            "--conf".to_string(),
                            "spark.hadoop.fs.permissions.umask-mode=000".into(),
                        ],
                    );
                }
                for (name, bytes) in &submission.files {
                    private
                        .write(&work.join(name), bytes, who.as_ref())
                        .map_err(|e| format!("cannot stage {name} for Spark: {e}"))?;
                }
                // pyspark's scripts find Spark through the `python` on PATH.
                let path = std::env::var("PATH").unwrap_or_default();
                env.push(("PATH".into(), format!("{}:{path}", bin.display())));
                env.push(("PYSPARK_PYTHON".into(), python.display().to_string()));
                env.push(("PYSPARK_DRIVER_PYTHON".into(), python.display().to_string()));
                let (inputs, outputs) = link_files(spec, &private)?;
                env.push(("CAPSTAN_SPARK_INPUTS".into(), inputs));
                env.push(("CAPSTAN_SPARK_OUTPUTS".into(), outputs));
                (bin.join("spark-submit"), submission.args)
            }
            RecipeKind::Python => (python, vec![code.display().to_string()]),
            RecipeKind::R => (PathBuf::from("Rscript"), vec![code.display().to_string()]),
            RecipeKind::Shell => (PathBuf::from("sh"), vec![code.display().to_string()]),
            other => {
                return Err(format!(
                    "{} recipes do not run on the local backend yet",
                    other.as_str()
                ));
            }
        };
        if !program.is_absolute() && find_on_path(&program).is_none() {
            let hint = match spec.recipe_kind {
                RecipeKind::R => "install R (Debian: r-base-core) on the daemon's machine",
                RecipeKind::Python => "install Python 3 on the daemon's machine",
                _ => "install it on the daemon's machine",
            };
            return Err(format!(
                "interpreter `{}` not found on the daemon's machine (PATH={}): {hint}, or run the recipe in a container configuration",
                program.display(),
                std::env::var("PATH").unwrap_or_default()
            ));
        }
        Ok(ShimSpec {
            activity: format!("{}-{}", spec.activity_id(), spec.attempt),
            program,
            args,
            cwd: work,
            env,
            timeout_secs: spec.timeout.map(|t| t.secs()),
            memory_limit: spec.memory_limit.map(|m| m.bytes()),
            cpu_millis: spec.cpu_limit.map(|c| c.millis()),
            // Always a group, limits or not: it is how the whole process tree is found, killed
            // and measured.
            cgroups: self.cgroups.as_ref().ok().cloned(),
            uid: who.as_ref().map(|w| w.uid),
            gid: who.as_ref().map(|w| w.gid),
        })
    }

    async fn run_impl(&self, spec: &ActivitySpec, ctl: ActivityControl) -> ActivityOutcome {
        let shim_spec = match self.prepare(spec).await {
            Ok(s) => s,
            Err(diagnosis) => {
                self.private(spec).remove();
                return ActivityOutcome::failed(diagnosis);
            }
        };
        let bytes = serde_json::to_vec_pretty(&shim_spec).unwrap_or_default();
        if let Err(e) = write_atomic(&spec.dir.join(SPEC), &bytes) {
            return ActivityOutcome::failed(format!(
                "cannot write {}: {e}",
                spec.dir.join(SPEC).display()
            ));
        }
        // A cancel during preparation (a code environment's build): no recipe process starts
        // after it.
        if ctl.cancel.is_cancelled() {
            self.private(spec).remove();
            return ActivityOutcome::cancelled();
        }
        ctl.report(ActivityEvent::Starting);
        let shim_err = std::fs::File::create(spec.dir.join("shim.err")).ok();
        let mut cmd = tokio::process::Command::new(&self.shim_exe);
        cmd.arg("shim")
            .arg(&spec.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_err.map(Stdio::from).unwrap_or(Stdio::null()))
            // Its own process group: a Ctrl-C at the daemon's terminal is not the recipe's.
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.private(spec).remove();
                return ActivityOutcome::failed(format!(
                    "cannot start capstan's supervisor {}: {e}",
                    self.shim_exe.display()
                ));
            }
        };
        let pid = child.id().unwrap_or(0);
        ctl.report(ActivityEvent::Started {
            backend_ref: backend_ref(pid),
        });
        let mut lines = child.stdout.take().map(|s| BufReader::new(s).lines());
        let mut cancelled = false;
        let mut reported: Option<ShimExit> = None;
        loop {
            tokio::select! {
                line = async {
                    match lines.as_mut() {
                        Some(l) => l.next_line().await,
                        None => std::future::pending().await,
                    }
                } => match line {
                    Ok(Some(l)) if l.starts_with("running") => ctl.report(ActivityEvent::Running),
                    Ok(Some(l)) if l.starts_with("exit ") => reported = serde_json::from_str(&l[5..]).ok(),
                    Ok(Some(_)) => {}
                    _ => lines = None,
                },
                _ = ctl.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    signal(pid, rustix::process::Signal::TERM);
                }
                status = child.wait() => {
                    let _ = status;
                    break;
                }
            }
        }
        // The shim prints its record last: read what is left of its output.
        if let Some(l) = lines.as_mut() {
            while let Ok(Some(line)) = l.next_line().await {
                if let Some(rec) = line.strip_prefix("exit ") {
                    reported = serde_json::from_str(rec).ok();
                }
            }
        }
        self.finish(spec, reported)
    }

    /// Reads the shim's exit record into an outcome, and tidies the activity's folder.
    fn finish(&self, spec: &ActivitySpec, reported: Option<ShimExit>) -> ActivityOutcome {
        let private = self.private(spec);
        // The Spark driver's full log, kept with the job's records.
        if spec.recipe_kind.is_spark()
            && let Err(e) = private::take_file(
                &private.root.join(capstan_spark::DRIVER_LOG),
                &spec.dir.join(capstan_spark::DRIVER_LOG),
            )
        {
            tracing::warn!(job_id = spec.job_id, error = %e, "cannot keep the Spark driver's log");
        }
        let mut outcome = match read_exit(&spec.dir).or(reported) {
            Some(exit) => {
                let mut o = capstan_engine::diagnose::outcome(spec, &exit.ending());
                capstan_spark::refine(spec, &mut o);
                o
            }
            None => {
                let err = std::fs::read_to_string(spec.dir.join("shim.err")).unwrap_or_default();
                kill_leftovers(&spec.dir);
                ActivityOutcome::failed(format!(
                    "capstan's supervisor process for this activity ended without recording how the recipe ended{}",
                    if err.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", err.trim())
                    }
                ))
            }
        };
        // What a local Spark recipe wrote, taken into the store's staging, where the data plane
        // commits it if the job succeeds.
        // Taken whatever the spec says now: a daemon restarted after the recipe was edited
        // rebuilds the spec from the current home, and the files are what the run wrote.
        if outcome.state == JobState::Succeeded {
            for d in &spec.outputs {
                if let Err(e) = private::take_file(&private.output(d), &staged_file(spec, d)) {
                    outcome = ActivityOutcome::failed(format!(
                        "the recipe succeeded, but its output `{d}` cannot be taken: {e}"
                    ));
                    break;
                }
            }
        }
        private.remove();
        outcome
    }

    async fn resume_impl(&self, spec: &ActivitySpec, ctl: ActivityControl) -> Resumed {
        let dir = &spec.dir;
        if read_exit(dir).is_some() {
            return Resumed::Finished(self.finish(spec, None));
        }
        // Claim it for "never started" unless the shim got there first.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(CLAIM))
        {
            Ok(mut f) => {
                use std::io::Write;
                let _ = f.write_all(b"abandoned\n");
                self.private(spec).remove();
                return Resumed::NeverStarted;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Resumed::NeverStarted,
            Err(_) => {}
        }
        let claim = std::fs::read_to_string(dir.join(CLAIM)).unwrap_or_default();
        let mut parts = claim.split_whitespace();
        if parts.next() != Some("shim") {
            return Resumed::NeverStarted;
        }
        let pid: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let start: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        ctl.report(ActivityEvent::Running);
        let mut cancelled = false;
        // The shim is not our child any more: watch for its exit record, or its death.
        loop {
            if read_exit(dir).is_some() {
                break;
            }
            if pid == 0 || process_start(pid) != Some(start) {
                // Dead: give it a moment in case it was writing its record as it went.
                tokio::time::sleep(Duration::from_millis(50)).await;
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = ctl.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    signal(pid, rustix::process::Signal::TERM);
                }
            }
        }
        Resumed::Finished(self.finish(spec, None))
    }
}

fn backend_ref(pid: u32) -> String {
    format!("shim {pid} {}", process_start(pid).unwrap_or(0))
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

fn read_exit(dir: &Path) -> Option<ShimExit> {
    let bytes = std::fs::read(dir.join(EXIT)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// After a shim died without a record: nothing of the activity may keep running.
fn kill_leftovers(dir: &Path) {
    let child: Option<u32> = std::fs::read_to_string(dir.join(CHILD))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let group: Option<ActivityGroup> = std::fs::read(dir.join(GROUP))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(c) = child {
        shim::kill_tree(c, group.as_ref(), rustix::process::Signal::KILL);
    }
    if let Some(g) = group {
        g.kill_all(Duration::from_secs(5));
        g.remove();
    }
}

/// The code environment Spark recipes get when they name none: pyspark, with pandas and pyarrow.
fn spark_env() -> capstan_core::model::CodeEnv {
    // `sql`: pandas and pyarrow, for datasets that travel through the data API; all three at
    // the versions capstan's tests ran with, as in base images.
    capstan_core::model::CodeEnv::managed(
        "spark",
        "pyspark, for Spark recipes without a code environment",
        capstan_core::pins::spark_packages(),
    )
}

/// Spark and the built-in engine read their inputs as files: exactly the declared ones are
/// linked into the private folder; outputs are written there and taken into the dataset store's
/// staging when the recipe has ended (see `finish`). Both maps, name → path, as JSON.
fn link_files(spec: &ActivitySpec, private: &Private) -> Result<(String, String), String> {
    let mut inputs = serde_json::Map::new();
    for d in &spec.inputs {
        private
            .link_input(&dataset_file(spec, d), d)
            .map_err(|e| format!("cannot give the recipe its input `{d}`: {e}"))?;
        inputs.insert(d.clone(), private.input(d).display().to_string().into());
    }
    let outputs: serde_json::Map<String, serde_json::Value> = spec
        .outputs
        .iter()
        .map(|d| (d.clone(), private.output(d).display().to_string().into()))
        .collect();
    Ok((
        serde_json::Value::Object(inputs).to_string(),
        serde_json::Value::Object(outputs).to_string(),
    ))
}

/// The file of a dataset's current version in the home's dataset store.
fn dataset_file(spec: &ActivitySpec, dataset: &str) -> PathBuf {
    spec.home_root
        .join("data")
        .join(&spec.project)
        .join(dataset)
        .join("data.parquet")
}

/// Where the dataset store takes a staged output of this activity from (see
/// `capstan_data::ParquetStore`).
fn staged_file(spec: &ActivitySpec, dataset: &str) -> PathBuf {
    spec.home_root
        .join("data")
        .join(&spec.project)
        .join(dataset)
        .join(".staging")
        .join(format!(
            "{}-{}-{}.parquet",
            spec.job_id, spec.idx, spec.attempt
        ))
}

/// Variables a recipe starts with. A recipe running as its own user gets only what describes
/// the machine (paths, locale, time zone, proxies and CA bundles), never the rest of the
/// daemon's environment, which may hold its secrets; and a home of its own.
fn recipe_env(who: Option<&private::RunAs>, work: &Path) -> Vec<(String, String)> {
    let Some(who) = who else {
        return std::env::vars()
            // The daemon's own secrets and settings are not the recipe's business.
            .filter(|(k, _)| !k.starts_with("CAPSTAN_"))
            .collect();
    };
    const KEPT: [&str; 12] = [
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "JAVA_HOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "TERM",
    ];
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            KEPT.contains(&k.as_str())
                || k.starts_with("LC_")
                || matches!(k.as_str(), "http_proxy" | "https_proxy" | "no_proxy")
        })
        .collect();
    let home = work.display().to_string();
    env.extend([
        ("HOME".to_string(), home),
        ("USER".to_string(), who.name.clone()),
        ("LOGNAME".to_string(), who.name.clone()),
    ]);
    env
}

/// Why Spark cannot start on this machine for want of Java (pyspark brings Spark, not its JVM),
/// given the daemon's PATH and JAVA_HOME.
fn java_missing(
    path: Option<&std::ffi::OsStr>,
    java_home: Option<&std::ffi::OsStr>,
) -> Option<String> {
    let in_home = java_home.is_some_and(|h| Path::new(h).join("bin/java").is_file());
    let on_path = path.is_some_and(|p| std::env::split_paths(p).any(|d| d.join("java").is_file()));
    (!in_home && !on_path).then(|| {
        "Spark needs Java 17 or later on the daemon's machine, and there is none (no java on PATH or in JAVA_HOME): \
         install it (Debian: openjdk-17-jre-headless), or run the recipe in a container, with an execution \
         configuration whose base image has with_spark = true"
            .to_string()
    })
}

fn find_on_path(program: &Path) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

impl Backend for LocalBackend {
    fn kind(&self) -> ExecKind {
        ExecKind::Local
    }

    fn run<'a>(
        &'a self,
        spec: &'a ActivitySpec,
        ctl: ActivityControl,
    ) -> BoxFuture<'a, ActivityOutcome> {
        Box::pin(self.run_impl(spec, ctl))
    }

    fn resume<'a>(
        &'a self,
        spec: &'a ActivitySpec,
        _backend_ref: Option<&'a str>,
        ctl: ActivityControl,
    ) -> BoxFuture<'a, Resumed> {
        Box::pin(self.resume_impl(spec, ctl))
    }

    fn admit(&self, identity: &LocalIdentity, admin: bool) -> Result<(), String> {
        private::run_as(identity, self.is_root, admin).map(|_| ())
    }

    fn usage<'a>(&'a self, spec: &'a ActivitySpec) -> BoxFuture<'a, Option<Usage>> {
        Box::pin(async move {
            let group: ActivityGroup =
                serde_json::from_slice(&std::fs::read(spec.dir.join(GROUP)).ok()?).ok()?;
            let before = group.cpu_nanos();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let after = group.cpu_nanos();
            let cpu_percent = match (before, after) {
                (Some(b), Some(a)) => Some((a.saturating_sub(b)) as f64 / 200_000_000.0 * 100.0),
                _ => None,
            };
            Some(Usage {
                cpu_percent,
                memory_bytes: group.memory_now(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> ActivityControl {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        ActivityControl {
            cancel: Default::default(),
            events: tx,
        }
    }

    fn spec(dir: &Path) -> ActivitySpec {
        ActivitySpec::bare(1, 0, dir.to_path_buf(), dir.to_path_buf(), ExecKind::Local)
    }

    #[test]
    fn spark_without_java_says_what_to_install_or_where_else_to_run() {
        let dir = std::env::temp_dir().join(format!("capstan-java-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("jdk/bin")).unwrap();
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let why = java_missing(Some(empty.as_os_str()), None).unwrap();
        assert!(
            why.contains("openjdk-17-jre-headless") && why.contains("with_spark = true"),
            "{why}"
        );
        std::fs::write(dir.join("jdk/bin/java"), "").unwrap();
        assert_eq!(
            java_missing(Some(empty.as_os_str()), Some(dir.join("jdk").as_os_str())),
            None
        );
        let path = std::env::join_paths([empty, dir.join("jdk/bin")]).unwrap();
        assert_eq!(java_missing(Some(&path), None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn activity_dir(label: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("capstan-claim-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let spec = ShimSpec {
            activity: format!("test-{label}"),
            program: "sh".into(),
            args: vec!["-c".into(), "touch ../ran".into()],
            cwd: dir.join("work"),
            env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            timeout_secs: None,
            memory_limit: None,
            cpu_millis: None,
            cgroups: None,
            uid: None,
            gid: None,
        };
        std::fs::write(dir.join(SPEC), serde_json::to_vec(&spec).unwrap()).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_recovered_activity_that_never_started_never_starts() {
        let dir = activity_dir("never");
        let backend = LocalBackend::new(&dir, PathBuf::from("/nonexistent"), dir.join("private"));
        // The daemon died after writing the spec, before the shim claimed it.
        let resumed = backend.resume_impl(&spec(&dir), control()).await;
        assert_eq!(resumed, Resumed::NeverStarted);
        // A shim that was on its way loses the race and runs nothing.
        let d = dir.clone();
        assert_eq!(
            tokio::task::spawn_blocking(move || shim::main(&d))
                .await
                .unwrap(),
            0
        );
        assert!(
            !dir.join("ran").exists(),
            "the recipe ran although it was requeued"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_recovered_activity_that_finished_is_read_back() {
        let dir = activity_dir("done");
        let d = dir.clone();
        // The shim is its own process with its own runtime; run it off this one.
        assert_eq!(
            tokio::task::spawn_blocking(move || shim::main(&d))
                .await
                .unwrap(),
            0
        );
        assert!(dir.join("ran").exists());
        let backend = LocalBackend::new(&dir, PathBuf::from("/nonexistent"), dir.join("private"));
        match backend.resume_impl(&spec(&dir), control()).await {
            Resumed::Finished(o) => assert_eq!(o.state, capstan_core::job::JobState::Succeeded),
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
