//! The daemon's view of the home, reloaded when its files change.
//!
//! Admins edit the home with their editor or `git pull`; the daemon picks the change up at the
//! next submission. A home that no longer loads cleanly is not taken: the daemon keeps the last
//! good one and says why in its log.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_core::Severity;
use capstan_core::load::NON_CONFIG_DIRS;
use capstan_core::model::Home;

/// How often at most the home's files are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(500);

pub(crate) struct HomeCache {
    root: PathBuf,
    state: Mutex<(Arc<Home>, u64, Instant)>,
}

impl HomeCache {
    pub(crate) fn new(root: &Path, home: Home) -> HomeCache {
        HomeCache {
            root: root.to_path_buf(),
            state: Mutex::new((Arc::new(home), fingerprint(root), Instant::now())),
        }
    }

    pub(crate) fn current(&self) -> Arc<Home> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The home, reloaded first if its files changed since the last look (looked at most
    /// every [`CHECK_EVERY`]).
    pub(crate) fn fresh(&self) -> Arc<Home> {
        self.look(false)
    }

    /// The home, looked at now whatever the time since the last look: for a name the cached
    /// home does not know, which may be a recipe saved a moment ago.
    pub(crate) fn fresh_now(&self) -> Arc<Home> {
        self.look(true)
    }

    fn look(&self, now: bool) -> Arc<Home> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !now && state.2.elapsed() < CHECK_EVERY {
            return state.0.clone();
        }
        state.2 = Instant::now();
        let print = fingerprint(&self.root);
        if print == state.1 {
            return state.0.clone();
        }
        state.1 = print;
        match capstan_core::load_home(&self.root) {
            Ok((home, diags)) if !diags.iter().any(|d| d.severity == Severity::Error) => {
                tracing::info!(home = %self.root.display(), "configuration reloaded");
                state.0 = Arc::new(home);
            }
            Ok((_, diags)) => {
                let first = diags
                    .iter()
                    .find(|d| d.severity == Severity::Error)
                    .map(|d| d.to_string());
                tracing::warn!(
                    home = %self.root.display(),
                    error = first.unwrap_or_default(),
                    "the changed configuration has errors; keeping the previous one (run `capstan check`)"
                );
            }
            Err(error) => tracing::warn!(%error, "cannot reload the configuration"),
        }
        state.0.clone()
    }
}

/// A hash of the home's file names, and of its TOML files' sizes and modification times: the
/// loader reads TOML files and knows other files by path only (a recipe's code is read when it
/// runs), so a log growing in the home (`nohup.out`) is no change to reload for.
fn fingerprint(root: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    walk(root, root, 0, &mut h);
    // Image records are state, but they decide which image a run uses: a build done while the
    // daemon runs must be seen by its next submission.
    let images = root.join("state").join("images");
    walk(&images, &images, 1, &mut h);
    h.finish()
}

fn walk(root: &Path, dir: &Path, depth: usize, h: &mut DefaultHasher) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if depth == 0 && NON_CONFIG_DIRS.iter().any(|d| name == *d) {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        let path = e.path();
        path.strip_prefix(root).ok().hash(h);
        if meta.is_file() && path.extension().is_some_and(|x| x == "toml") {
            meta.len().hash(h);
            meta.modified().ok().hash(h);
        }
        if meta.is_dir() && depth < 8 {
            walk(root, &e.path(), depth + 1, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn a_toml_edit_changes_the_fingerprint_and_a_growing_log_does_not() {
        let root = std::env::temp_dir().join(format!("capstan-home-print-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("projects/p/recipes")).unwrap();
        std::fs::write(root.join("capstan.toml"), "[instance]\n").unwrap();
        std::fs::write(root.join("projects/p/recipes/r.py"), "print(1)\n").unwrap();
        let first = fingerprint(&root);
        std::fs::write(root.join("nohup.out"), "a line of the daemon's log\n").unwrap();
        let with_log = fingerprint(&root);
        assert_ne!(first, with_log, "a new file is a new path");
        std::fs::write(root.join("nohup.out"), "a line\nand another, longer one\n").unwrap();
        std::fs::write(root.join("projects/p/recipes/r.py"), "print(2, 3)\n").unwrap();
        assert_eq!(
            fingerprint(&root),
            with_log,
            "contents of non-TOML files are not configuration"
        );
        std::fs::write(root.join("capstan.toml"), "[instance]\nname = \"x\"\n").unwrap();
        assert_ne!(fingerprint(&root), with_log);
        std::fs::create_dir_all(root.join("state/images")).unwrap();
        let before = fingerprint(&root);
        std::fs::write(root.join("state/images/default.toml"), "tag = \"a\"\n").unwrap();
        assert_ne!(fingerprint(&root), before, "image records are seen");
        let _ = std::fs::remove_dir_all(&root);
    }
}
