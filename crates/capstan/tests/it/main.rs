//! capstan's integration tests: one binary, one module per area (ripgrep's layout).

mod support;

mod daemon;
mod data;
mod docker;
mod flows;
mod homes;
mod images;
mod isolation;
mod k8s;
mod kernels;
mod ml;
mod quickstart;
mod spark;
mod ui;
mod visual;

/// Whether the daemon with `pid` has published its address for `root`.
pub fn daemon_info_ready(root: &std::path::Path, pid: u32) -> bool {
    std::fs::read_to_string(root.join("state/daemon.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(pid)))
}
