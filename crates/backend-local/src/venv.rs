//! Python code environments for the local backend: one venv per spec, built on first use and
//! reused while the spec is unchanged.

use std::path::{Path, PathBuf};

use capstan_core::model::{CodeEnv, EnvLanguage};
use sha2::{Digest, Sha256};

/// Marker written last: a venv without it is half-built and is rebuilt.
const READY: &str = ".capstan-ready";

/// The content hash of an environment's spec (what makes two builds the same).
pub fn spec_hash(env: &CodeEnv, home_root: &Path, python: &str) -> String {
    let mut h = Sha256::new();
    h.update(python.as_bytes());
    for p in &env.packages {
        h.update(b"\0pkg ");
        h.update(p.value.as_bytes());
    }
    for (tag, file) in [
        ("req", &env.requirements_file),
        ("con", &env.constraints_file),
    ] {
        if let Some(f) = file {
            h.update(tag.as_bytes());
            h.update(std::fs::read(home_root.join(&f.value)).unwrap_or_default());
        }
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `python3` venvs are made from: the first on PATH that every user can run, since a venv
/// runs its base interpreter and local recipes run as unprivileged users (a pyenv under
/// `/root` is the daemon's alone); else the first on PATH.
pub fn interpreter() -> PathBuf {
    let found: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("python3"))
                .collect()
        })
        .unwrap_or_default();
    found
        .iter()
        .find(|p| runnable_by_anyone(p))
        .or_else(|| found.iter().find(|p| p.is_file()))
        .cloned()
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Whether `path` (links resolved) is a file every user may execute, in folders every user may
/// cross.
fn runnable_by_anyone(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(real) = std::fs::canonicalize(path) else {
        return false;
    };
    let others_x =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    real.is_file() && others_x(&real) && real.ancestors().skip(1).all(others_x)
}

/// Makes sure the venv of `env` exists and returns its interpreter. Blocking: run it off the
/// async threads. Concurrent builds of the same env are serialised by a file lock.
pub fn ensure(envs_dir: &Path, home_root: &Path, env: &CodeEnv) -> Result<PathBuf, String> {
    if env.language.value != EnvLanguage::Python {
        return Err(format!(
            "code environment '{}' is an R environment: on local execution R recipes use the machine's R library; R environments are built into container images",
            env.name
        ));
    }
    let python3 = interpreter();
    let version = std::process::Command::new(&python3)
        .arg("--version")
        .output()
        .map_err(|e| {
            format!(
                "cannot run python3 to build code environment '{}': {e}",
                env.name
            )
        })?;
    // The interpreter's path as well as its version: a venv links to it.
    let python = format!(
        "{} {}",
        String::from_utf8_lossy(&version.stdout).trim(),
        python3.display()
    );
    let dir = envs_dir.join(format!(
        "{}-{}",
        env.name,
        spec_hash(env, home_root, &python)
    ));
    let interpreter = dir.join("bin").join("python");
    if dir.join(READY).exists() {
        return Ok(interpreter);
    }
    std::fs::create_dir_all(envs_dir)
        .map_err(|e| format!("cannot create {}: {e}", envs_dir.display()))?;
    let lock_path = envs_dir.join(format!("{}.lock", env.name));
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    // Someone else may have finished it while we waited for the lock.
    if dir.join(READY).exists() {
        return Ok(interpreter);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let run = |cmd: &mut std::process::Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect();
        Err(format!(
            "{what} failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ))
    };
    run(
        std::process::Command::new(&python3)
            .arg("-m")
            .arg("venv")
            .arg(&dir),
        &format!("creating the venv of code environment '{}'", env.name),
    )?;
    let mut pip = std::process::Command::new(&interpreter);
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "-q",
    ]);
    for p in &env.packages {
        pip.arg(&p.value);
    }
    if let Some(r) = &env.requirements_file {
        pip.arg("-r").arg(home_root.join(&r.value));
    }
    if let Some(c) = &env.constraints_file {
        pip.arg("-c").arg(home_root.join(&c.value));
    }
    if (!env.packages.is_empty() || env.requirements_file.is_some())
        && let Err(e) = run(
            &mut pip,
            &format!("installing the packages of code environment '{}'", env.name),
        )
    {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    std::fs::write(dir.join(READY), python)
        .map_err(|e| format!("cannot finish {}: {e}", dir.display()))?;
    tracing::info!(code_env = %env.name, dir = %dir.display(), "code environment built");
    Ok(interpreter)
}
