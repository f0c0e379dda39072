//! The peak memory and CPU time of a container, exact, from the kernel's cgroup counters.
//!
//! The engine's stats stream samples once a second, so a container that ran 1.15 s was never
//! measured, and a longer one's peak falls between samples. The counters are exact, but a
//! container's own cgroup is deleted the moment it exits. So each container runs under a parent
//! group of its own (`--cgroup-parent`): the parent's counters span the container (memory and
//! CPU accounting are hierarchical) and outlive it, until capstan reads and removes it.
//!
//! This works where the engine shares this machine's cgroup tree and names groups by path (the
//! `cgroupfs` driver); elsewhere (a remote engine, the `systemd` driver) the engine's samples
//! are what there is.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// How this machine's cgroups are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    V1,
    V2,
}

impl Layout {
    /// The layout, for an engine that runs on this machine with the given cgroup driver.
    pub fn for_engine(local: bool, driver: Option<&str>) -> Option<Layout> {
        if !local || driver != Some("cgroupfs") {
            return None;
        }
        let root = Path::new(ROOT);
        if root.join("cgroup.controllers").is_file() {
            Some(Layout::V2)
        } else if root.join("memory").is_dir() && root.join("cpuacct").is_dir() {
            Some(Layout::V1)
        } else {
            None
        }
    }
}

/// Whether an engine address (`None`: `DOCKER_HOST`, else the default socket) is on this
/// machine.
pub fn is_local(host: Option<&str>) -> bool {
    let h = match host {
        Some(h) => h.to_string(),
        None => std::env::var("DOCKER_HOST").unwrap_or_default(),
    };
    h.is_empty() || h.starts_with("unix://")
}

/// The parent group of one attempt of an activity: `/capstan-INSTANCE-JOB-IDX-ATTEMPT`.
pub fn parent(instance: &str, job: i64, idx: i64, attempt: i64) -> String {
    format!("/{}{job}-{idx}-{attempt}", prefix(instance))
}

fn prefix(instance: &str) -> String {
    format!("capstan-{instance}-")
}

fn read_u64(path: PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Peak memory in bytes and CPU time in nanoseconds of everything that ran under `parent`.
/// `None` for a counter the kernel does not keep (`memory.peak` is Linux 5.19+) or a group
/// that is not on this machine.
pub fn read(layout: Layout, parent: &str) -> (Option<u64>, Option<u64>) {
    let rel = parent.trim_start_matches('/');
    let root = Path::new(ROOT);
    match layout {
        Layout::V1 => (
            read_u64(
                root.join("memory")
                    .join(rel)
                    .join("memory.max_usage_in_bytes"),
            ),
            read_u64(root.join("cpuacct").join(rel).join("cpuacct.usage")),
        ),
        Layout::V2 => {
            let dir = root.join(rel);
            let cpu = std::fs::read_to_string(dir.join("cpu.stat"))
                .ok()
                .and_then(|stat| {
                    stat.lines()
                        .filter_map(|l| l.split_once(' '))
                        .find(|(k, _)| *k == "usage_usec")
                        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                })
                .map(|us| us * 1000);
            (read_u64(dir.join("memory.peak")), cpu)
        }
    }
}

/// The folders of a parent group: one per controller hierarchy in v1.
fn dirs(layout: Layout, rel: &str) -> Vec<PathBuf> {
    match layout {
        Layout::V2 => vec![Path::new(ROOT).join(rel)],
        Layout::V1 => std::fs::read_dir(ROOT)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path().join(rel))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Removes a parent group once its container is gone (a group with processes stays).
pub fn remove(layout: Layout, parent: &str) {
    for d in dirs(layout, parent.trim_start_matches('/')) {
        let _ = std::fs::remove_dir(&d);
    }
}

/// Removes the empty parent groups this instance left behind (a daemon that died between a
/// container's end and its cleanup). Groups of running containers are not empty and stay.
pub fn sweep(layout: Layout, instance: &str) -> usize {
    let prefix = prefix(instance);
    let roots: Vec<PathBuf> = match layout {
        Layout::V2 => vec![PathBuf::from(ROOT)],
        Layout::V1 => std::fs::read_dir(ROOT)
            .map(|e| e.flatten().map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    let mut removed = 0;
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix)
                && std::fs::remove_dir(e.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_named_per_instance_and_attempt() {
        assert_eq!(parent("ab12", 7, 0, 1), "/capstan-ab12-7-0-1");
    }

    #[test]
    fn only_local_cgroupfs_engines_get_a_parent() {
        assert_eq!(Layout::for_engine(false, Some("cgroupfs")), None);
        assert_eq!(Layout::for_engine(true, Some("systemd")), None);
        assert_eq!(Layout::for_engine(true, None), None);
        assert!(is_local(Some("unix:///run/docker.sock")));
        assert!(!is_local(Some("tcp://10.0.0.5:2375")));
    }
}
