//! Memory and CPU limits for local processes, through cgroups (v1 or v2).
//!
//! The daemon finds where it may create groups ([`Cgroups::detect`]); the shim creates one
//! group per activity under it, sets the limits, and moves itself in just long enough to spawn
//! the recipe (which inherits the group), then back out — so the group holds the recipe's
//! process tree and nothing else. Killing the group kills every process of the activity,
//! including ones that left the process group.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const ROOT: &str = "/sys/fs/cgroup";

/// Where activity groups are created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cgroups {
    /// One parent folder per controller (memory, cpu, cpuacct, pids).
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        pids: PathBuf,
    },
    /// The unified hierarchy: one parent folder with memory and cpu enabled for its children.
    V2 { parent: PathBuf },
}

/// The groups of one activity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityGroup {
    pub version: u8,
    /// Every folder of this activity's group (one per controller in v1).
    pub dirs: Vec<PathBuf>,
    /// Where the shim goes back to after spawning the recipe.
    pub home_dirs: Vec<PathBuf>,
}

fn own_cgroup_lines() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_string();
            let path = parts.next()?.to_string();
            Some((controllers, path))
        })
        .collect()
}

fn writable_dir(p: &Path) -> io::Result<()> {
    std::fs::create_dir_all(p)?;
    // A probe group proves we may create groups here, not only folders.
    let probe = p.join(format!("probe-{}", std::process::id()));
    std::fs::create_dir(&probe)?;
    std::fs::remove_dir(&probe)
}

impl Cgroups {
    /// Finds where this process may create groups, under its own group and `name`.
    /// Returns why not, when it may not.
    pub fn detect(name: &str) -> Result<Cgroups, String> {
        let lines = own_cgroup_lines();
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            let own = lines
                .iter()
                .find(|(c, _)| c.is_empty())
                .map(|(_, p)| p.clone())
                .unwrap_or_default();
            let own_dir = Path::new(ROOT).join(own.trim_start_matches('/'));
            let parent = own_dir.join(name);
            writable_dir(&parent)
                .map_err(|e| format!("cannot create cgroups under {}: {e}", own_dir.display()))?;
            // Children of `parent` need the controllers enabled in `parent` and above; the
            // daemon's own group can only delegate if it holds no processes itself, which is
            // the case under a service manager that gave it a delegated subtree.
            let enable =
                |dir: &Path| std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu");
            enable(&own_dir)
                .and_then(|()| enable(&parent))
                .map_err(|e| {
                    format!(
                        "cannot enable the memory and cpu controllers under {}: {e}",
                        own_dir.display()
                    )
                })?;
            return Ok(Cgroups::V2 { parent });
        }
        let dir_for = |controller: &str| -> Result<PathBuf, String> {
            let mount = Path::new(ROOT).join(controller);
            if !mount.is_dir() {
                return Err(format!(
                    "the {controller} cgroup controller is not mounted at {}",
                    mount.display()
                ));
            }
            let own = lines
                .iter()
                .find(|(c, _)| c.split(',').any(|c| c == controller))
                .map(|(_, p)| p.clone())
                .unwrap_or_default();
            let mut base = mount.join(own.trim_start_matches('/'));
            // In a container the group path may not exist in this mount namespace's view.
            if !base.is_dir() {
                base = mount;
            }
            let parent = base.join(name);
            writable_dir(&parent).map_err(|e| {
                format!(
                    "cannot create {controller} cgroups under {}: {e}",
                    base.display()
                )
            })?;
            Ok(parent)
        };
        Ok(Cgroups::V1 {
            memory: dir_for("memory")?,
            cpu: dir_for("cpu")?,
            cpuacct: dir_for("cpuacct")?,
            pids: dir_for("pids")?,
        })
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Cgroups::V1 { .. } => "cgroup v1",
            Cgroups::V2 { .. } => "cgroup v2",
        }
    }

    /// Creates the group of one activity with its limits.
    pub fn create(
        &self,
        name: &str,
        memory: Option<u64>,
        cpu_millis: Option<u64>,
    ) -> io::Result<ActivityGroup> {
        match self {
            Cgroups::V2 { parent } => {
                let dir = parent.join(name);
                std::fs::create_dir_all(&dir)?;
                if let Some(m) = memory {
                    std::fs::write(dir.join("memory.max"), m.to_string())?;
                    // No swap: the limit is what the recipe gets, as in a container.
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                }
                if let Some(c) = cpu_millis {
                    std::fs::write(dir.join("cpu.max"), format!("{} 100000", c * 100))?;
                }
                let home = own_cgroup_lines()
                    .into_iter()
                    .find(|(c, _)| c.is_empty())
                    .map(|(_, p)| Path::new(ROOT).join(p.trim_start_matches('/')))
                    .into_iter()
                    .collect();
                Ok(ActivityGroup {
                    version: 2,
                    dirs: vec![dir],
                    home_dirs: home,
                })
            }
            Cgroups::V1 {
                memory: mem,
                cpu,
                cpuacct,
                pids,
            } => {
                let dirs: Vec<PathBuf> = [mem, cpu, cpuacct, pids]
                    .iter()
                    .map(|p| p.join(name))
                    .collect();
                for d in &dirs {
                    std::fs::create_dir_all(d)?;
                }
                if let Some(m) = memory {
                    std::fs::write(dirs[0].join("memory.limit_in_bytes"), m.to_string())?;
                    // Memory+swap equal to memory: no swap, so the limit is real. Absent when
                    // the kernel does no swap accounting, where there is nothing to cap.
                    let memsw = dirs[0].join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        std::fs::write(memsw, m.to_string())?;
                    }
                }
                if let Some(c) = cpu_millis {
                    std::fs::write(dirs[1].join("cpu.cfs_period_us"), "100000")?;
                    std::fs::write(dirs[1].join("cpu.cfs_quota_us"), (c * 100).to_string())?;
                }
                let lines = own_cgroup_lines();
                let home_dirs = ["memory", "cpu", "cpuacct", "pids"]
                    .iter()
                    .map(|controller| {
                        let own = lines
                            .iter()
                            .find(|(c, _)| c.split(',').any(|c| c == *controller))
                            .map(|(_, p)| p.clone())
                            .unwrap_or_default();
                        let mount = Path::new(ROOT).join(controller);
                        let dir = mount.join(own.trim_start_matches('/'));
                        if dir.is_dir() { dir } else { mount }
                    })
                    .collect();
                Ok(ActivityGroup {
                    version: 1,
                    dirs,
                    home_dirs,
                })
            }
        }
    }
}

impl ActivityGroup {
    /// Moves the calling process into the group (so that what it spawns starts inside).
    pub fn enter(&self) -> io::Result<()> {
        let pid = std::process::id().to_string();
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    /// Moves the calling process back to where it came from.
    pub fn leave(&self) -> io::Result<()> {
        let pid = std::process::id().to_string();
        for d in &self.home_dirs {
            std::fs::write(d.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dirs[0].join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills every process in the group and waits (up to `within`) until none is left.
    pub fn kill_all(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        if self.version == 2 {
            let _ = std::fs::write(self.dirs[0].join("cgroup.kill"), "1");
        }
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return true;
            }
            for pid in pids {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The kernel's OOM killer killed something in this group.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = if self.version == 2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        std::fs::read_to_string(self.dirs[0].join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .any(|(k, v)| k == key && v.trim().parse::<u64>().is_ok_and(|n| n > 0))
    }

    pub fn peak_memory(&self) -> Option<u64> {
        let file = if self.version == 2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dirs[0].join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn memory_now(&self) -> Option<u64> {
        let file = if self.version == 2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        std::fs::read_to_string(self.dirs[0].join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// CPU time used, in nanoseconds.
    pub fn cpu_nanos(&self) -> Option<u64> {
        if self.version == 2 {
            let stat = std::fs::read_to_string(self.dirs[0].join("cpu.stat")).ok()?;
            stat.lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(k, _)| *k == "usage_usec")
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .map(|us| us * 1000)
        } else {
            std::fs::read_to_string(self.dirs[2].join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok()
        }
    }

    /// Removes the group's folders (they must be empty of processes).
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}
