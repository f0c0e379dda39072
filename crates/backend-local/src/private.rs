//! Who a local recipe runs as, and its private folder.
//!
//! A local recipe never runs with the daemon's rights (unless the admin wrote
//! `isolation = "none"`): the shim starts it as an unprivileged Unix user (see
//! [`capstan_core::access::local_identity`]), in a folder of its own outside the home, owned by
//! that user and closed to others. Everything it needs is put there by the daemon — its code,
//! its token, for local Spark exactly its declared inputs — and everything it makes comes back
//! from there, read by the daemon without following links the recipe may have planted.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use capstan_core::access::LocalIdentity;

/// The Unix identity a recipe is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Who this daemon can run a recipe as: `Ok(None)` for its own user (by `isolation = "none"`,
/// or for an admin where it cannot switch users), `Err` with the reason it may not run it.
pub fn run_as(
    identity: &LocalIdentity,
    is_root: bool,
    admin: bool,
) -> Result<Option<RunAs>, String> {
    let (name, chosen_by) = match identity {
        LocalIdentity::Daemon => return Ok(None),
        LocalIdentity::Unix { name, chosen_by } => (name, chosen_by),
    };
    if !is_root {
        // It cannot switch users: only an admin's recipe, which may do what the daemon does
        // anyway, runs with the daemon's identity.
        return if admin {
            Ok(None)
        } else {
            Err(format!(
                "local recipes run as an unprivileged Unix user (`{name}`, from {chosen_by}), and this daemon cannot switch \
                 users because it does not run as root: run the daemon as root, or, on a single-user machine, set \
                 `isolation = \"none\"` in capstan.toml's [instance] to run local recipes as the daemon's own user"
            ))
        };
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) if u.uid.is_root() => Err(format!(
            "the Unix user `{name}` ({chosen_by}) is root: local recipes never run as root"
        )),
        Ok(Some(u)) => Ok(Some(RunAs {
            name: name.clone(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })),
        Ok(None) => Err(format!(
            "the Unix user `{name}` ({chosen_by}) does not exist on the daemon's machine: create it (`useradd --system {name}`) or name another"
        )),
        Err(e) => Err(format!("cannot look up the Unix user `{name}`: {e}")),
    }
}

/// An activity's private folder: `ROOT/JOB-IDX-ATTEMPT`, with `work/` (the recipe's working
/// folder), its token, and for local Spark `inputs/` and `outputs/`.
#[derive(Clone, Debug)]
pub struct Private {
    pub root: PathBuf,
}

impl Private {
    pub fn new(work_root: &Path, job_id: i64, idx: i64, attempt: i64) -> Private {
        Private {
            root: work_root.join(format!("{job_id}-{idx}-{attempt}")),
        }
    }

    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    pub fn token(&self) -> PathBuf {
        self.root.join("token")
    }

    pub fn input(&self, dataset: &str) -> PathBuf {
        self.root.join("inputs").join(format!("{dataset}.parquet"))
    }

    pub fn output(&self, dataset: &str) -> PathBuf {
        self.root.join("outputs").join(format!("{dataset}.parquet"))
    }

    /// Creates the folder afresh, and its `work/`, `inputs/` and `outputs/`, owned by `who`
    /// and closed to everyone else. The folder above (shared by an instance's activities) is
    /// the daemon's, and can be crossed but not listed.
    pub fn create(&self, who: Option<&RunAs>) -> std::io::Result<()> {
        if let Some(parent) = self.root.parent() {
            std::fs::create_dir_all(parent)?;
            // In a shared temporary folder, someone else may have made it first, to reach
            // into every activity's folder: it must be the daemon's own, and not a link.
            let meta = std::fs::symlink_metadata(parent)?;
            if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
                return Err(std::io::Error::other(format!(
                    "{} is not a folder of the daemon's own user: remove it, or set another `work_dir` in [instance]",
                    parent.display()
                )));
            }
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))?;
        }
        let _ = std::fs::remove_dir_all(&self.root);
        for dir in [
            self.root.clone(),
            self.work(),
            self.root.join("inputs"),
            self.root.join("outputs"),
        ] {
            std::fs::create_dir(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            give(&dir, who)?;
        }
        Ok(())
    }

    /// A folder in the private folder, the recipe's user's.
    pub fn make_dir(&self, path: &Path, who: Option<&RunAs>) -> std::io::Result<()> {
        std::fs::create_dir_all(path)?;
        give(path, who)
    }

    /// Writes a file the recipe's user may read (and, with `writable`, change), and no one else.
    pub fn write(&self, path: &Path, bytes: &[u8], who: Option<&RunAs>) -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
            give(parent, who)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)?;
        f.write_all(bytes)?;
        give(path, who)
    }

    /// Puts one of the recipe's declared inputs where it can read it, and nothing else of the
    /// dataset store: a hard link (a copy across file systems) of the dataset's current file.
    pub fn link_input(&self, source: &Path, dataset: &str) -> std::io::Result<()> {
        let to = self.input(dataset);
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(source, &to).is_err() {
            std::fs::copy(source, &to)?;
        }
        // Versions are never changed in place (a commit renames a new file over them), so
        // opening this inode for reading gives nothing but this version.
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o444))
    }

    /// Removes the folder and everything in it.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Where a user's local notebook kernels work in a project: `ROOT/notebooks/PROJECT/USER`,
/// kept between kernels (unlike an activity's private folder), owned by the kernel's Unix user
/// and closed to others.
pub fn notebook_dir(
    work_root: &Path,
    project: &str,
    user: &str,
    who: Option<&RunAs>,
) -> std::io::Result<PathBuf> {
    let dir = work_root.join("notebooks").join(project).join(user);
    std::fs::create_dir_all(&dir)?;
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a folder",
            dir.display()
        )));
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    give(&dir, who)?;
    Ok(dir)
}

/// Hands `path` to `who` (no-op for the daemon's own user).
fn give(path: &Path, who: Option<&RunAs>) -> std::io::Result<()> {
    match who {
        Some(w) => std::os::unix::fs::lchown(path, Some(w.uid), Some(w.gid)),
        None => Ok(()),
    }
}

/// Moves a file the recipe made (an output, the Spark driver's log) to `to`, a place of the
/// daemon's. The recipe owns the folder it is in and may have put a link there instead, to a
/// file only the daemon can read: only a regular file, opened without following links, is
/// taken. Returns false if there is none.
pub fn take_file(from: &Path, to: &Path) -> std::io::Result<bool> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(from)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(refused(from, e)),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            from.display()
        )));
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // A rename keeps big outputs from being copied, but only a file with no other name can be
    // renamed safely (another name could be a link to it the recipe keeps writing through).
    if meta.nlink() == 1 && std::fs::rename(from, to).is_ok() {
        let _ = std::os::unix::fs::chown(to, Some(rustix::process::geteuid().as_raw()), None);
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))?;
        return Ok(true);
    }
    copy_from(file, to)?;
    Ok(true)
}

fn copy_from(mut file: File, to: &Path) -> std::io::Result<()> {
    let tmp = to.with_extension("taking");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    std::io::copy(&mut file, &mut out)?;
    out.sync_all()?;
    std::fs::rename(&tmp, to)
}

fn refused(path: &Path, e: std::io::Error) -> std::io::Error {
    // ELOOP: it is a symbolic link.
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        return std::io::Error::other(format!(
            "{} is a symbolic link: a recipe's files are taken only as regular files",
            path.display()
        ));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(label: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("capstan-private-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_planted_link_is_not_taken() {
        let d = tmp("link");
        std::fs::write(d.join("secret"), "the daemon's secret").unwrap();
        std::os::unix::fs::symlink(d.join("secret"), d.join("out.parquet")).unwrap();
        let err = take_file(&d.join("out.parquet"), &d.join("taken")).unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert!(!d.join("taken").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_regular_file_is_taken_and_a_missing_one_is_none() {
        let d = tmp("file");
        std::fs::write(d.join("out.parquet"), "rows").unwrap();
        assert!(take_file(&d.join("out.parquet"), &d.join("store/taken")).unwrap());
        assert_eq!(
            std::fs::read_to_string(d.join("store/taken")).unwrap(),
            "rows"
        );
        assert!(!take_file(&d.join("nothing"), &d.join("store/other")).unwrap());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_with_two_names_is_copied_not_moved() {
        let d = tmp("nlink");
        std::fs::write(d.join("out.parquet"), "rows").unwrap();
        std::fs::hard_link(d.join("out.parquet"), d.join("kept")).unwrap();
        assert!(take_file(&d.join("out.parquet"), &d.join("taken")).unwrap());
        std::fs::write(d.join("kept"), "changed later").unwrap();
        assert_eq!(std::fs::read_to_string(d.join("taken")).unwrap(), "rows");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn without_root_only_admins_run_and_then_as_the_daemon() {
        let id = LocalIdentity::Unix {
            name: "nobody".into(),
            chosen_by: "the default (no `run_as` is set)".into(),
        };
        assert_eq!(run_as(&id, false, true), Ok(None));
        let err = run_as(&id, false, false).unwrap_err();
        assert!(
            err.contains("cannot switch users because it does not run as root"),
            "{err}"
        );
        assert!(err.contains("isolation = \"none\""), "{err}");
        assert_eq!(run_as(&LocalIdentity::Daemon, false, false), Ok(None));
    }

    #[test]
    fn root_is_never_a_recipe_identity_and_unknown_users_are_named() {
        let root = LocalIdentity::Unix {
            name: "root".into(),
            chosen_by: "`[instance] run_as`".into(),
        };
        assert!(run_as(&root, true, false).unwrap_err().contains("is root"));
        let ghost = LocalIdentity::Unix {
            name: "no-such-user-here".into(),
            chosen_by: "`run_as` of user `alice`".into(),
        };
        let err = run_as(&ghost, true, false).unwrap_err();
        assert!(
            err.contains("does not exist on the daemon's machine"),
            "{err}"
        );
    }
}
