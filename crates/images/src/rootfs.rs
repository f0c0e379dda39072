//! OS roots for base images, bootstrapped from Debian packages with `debootstrap` — no image
//! registry needed, only a Debian mirror (which air-gapped sites mirror anyway). Cached as
//! tarballs by (suite, mirror, packages).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{ImageError, Progress};

/// The cache key of a root.
pub fn hash(suite: &str, mirror: &str, packages: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(suite.as_bytes());
    h.update(b"\0");
    h.update(mirror.as_bytes());
    for p in packages {
        h.update(b"\0");
        h.update(p.as_bytes());
    }
    h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tarball of a root with `packages`, bootstrapping it if the cache has none.
pub async fn bootstrap(
    cache: &Path,
    suite: &str,
    mirror: &str,
    packages: &[String],
    progress: &mut dyn Progress,
) -> Result<PathBuf, ImageError> {
    let key = hash(suite, mirror, packages);
    let tarball = cache.join(format!("os-{suite}-{key}.tar"));
    if tarball.is_file() {
        return Ok(tarball);
    }
    let fail = |m: String| ImageError::Bootstrap(m);
    std::fs::create_dir_all(cache)
        .map_err(|e| fail(format!("cannot create the cache {}: {e}", cache.display())))?;
    // Two builds of the same root (two homes, two tests) bootstrap it once: the second waits.
    let lock_path = cache.join(format!("os-{suite}-{key}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| fail(format!("cannot create {}: {e}", lock_path.display())))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("cannot lock the OS root cache: {e}")))?;
    if tarball.is_file() {
        return Ok(tarball);
    }
    let dir = cache.join(format!("os-{suite}-{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log_path = cache.join(format!("os-{suite}-{key}.log"));
    progress.phase(&format!(
        "bootstrapping a Debian {suite} root with {} (debootstrap, cached once)",
        packages.join(", ")
    ));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| fail(format!("cannot write {}: {e}", log_path.display())))?;
    let status = tokio::process::Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={}", packages.join(",")),
        ])
        .arg(suite)
        .arg(&dir)
        .arg(mirror)
        .stdout(log.try_clone().map_err(|e| fail(e.to_string()))?)
        .stderr(log)
        .status()
        .await;
    let ok = match status {
        Ok(s) => s.success(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(
                "debootstrap is not installed: `apt-get install debootstrap`, or set `from` on the base image to an image a registry can serve".into(),
            ));
        }
        Err(e) => return Err(fail(format!("cannot run debootstrap: {e}"))),
    };
    if !ok {
        let _ = std::fs::remove_dir_all(&dir);
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        return Err(fail(format!(
            "debootstrap of {suite} from {mirror} failed: {} (full log: {})",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
            log_path.display()
        )));
    }
    // Package caches are not part of an image.
    for junk in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(junk)) {
            for e in entries.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    progress.phase("packing the OS root");
    let tmp = tarball.with_extension("tar.tmp");
    let packed = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tmp)
        .arg(".")
        .status()
        .await
        .map_err(|e| fail(format!("cannot run tar: {e}")))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !packed.success() {
        return Err(fail(format!(
            "cannot pack the OS root into {}",
            tmp.display()
        )));
    }
    std::fs::rename(&tmp, &tarball)
        .map_err(|e| fail(format!("cannot write {}: {e}", tarball.display())))?;
    drop(lock);
    Ok(tarball)
}
