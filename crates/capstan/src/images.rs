//! `capstan image build-base|list` and `capstan env build|list`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use capstan_backend_docker::image_ops::Engine;
use capstan_core::model::{ClusterTarget, Home};
use capstan_images::{Builder, Built, ImageRow, Progress};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::cli::{BuildBaseArgs, BuildEngineArgs, EnvBuildArgs, ImageListArgs};
use crate::exit;
use crate::home::load_valid;
use crate::jobs::human_bytes;

/// A spinner with the current step on a terminal; plain lines otherwise.
struct Display {
    bar: Option<ProgressBar>,
    phase: String,
}

impl Display {
    fn new() -> Display {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Display {
            bar,
            phase: String::new(),
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for Display {
    fn phase(&mut self, what: &str) {
        self.phase = what.to_string();
        match &self.bar {
            Some(b) => {
                b.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.set_prefix(what.to_string());
                b.set_message("");
            }
            None => eprintln!("==> {what}"),
        }
    }

    fn line(&mut self, line: &str) {
        match &self.bar {
            Some(b) => b.set_message(line.trim().to_string()),
            // Only the steps: the whole output is in the build log.
            None if line.starts_with("Step ") => eprintln!("    {line}"),
            None => {}
        }
    }

    fn bytes(&mut self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_length(total);
            b.set_position(done);
        } else if done == total {
            eprintln!("    {} sent", human_bytes(total));
        }
    }
}

/// The engine to build on: a Docker cluster's, or the local one.
async fn engine(home: &Home, cluster: Option<&str>) -> anyhow::Result<Engine> {
    let host = match cluster {
        None => None,
        Some(name) => match home.clusters.get(name).map(|c| &c.target) {
            Some(ClusterTarget::Docker { host }) => Some(host.value.clone()),
            Some(_) => bail!(
                "cluster `{name}` is not a Docker cluster: images are built on a Docker engine"
            ),
            None => bail!("unknown cluster `{name}`"),
        },
    };
    Engine::connect(host.as_deref())
        .await
        .map_err(anyhow::Error::msg)
}

fn cache_dir(root: &Path) -> PathBuf {
    std::env::var_os("CAPSTAN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("state").join("cache"))
}

fn describe(b: &Built) -> String {
    match b {
        Built::Built(r) => format!("built {} ({})", r.reference(), human_bytes(r.size_bytes)),
        Built::UpToDate(r) => format!("up to date: {} (nothing to build)", r.reference()),
    }
}

/// The image builder on the engine of `cluster` (default: the local one).
async fn builder<'h>(
    root: &Path,
    home: &'h Home,
    cluster: Option<&str>,
    no_push: bool,
) -> anyhow::Result<Builder<'h>> {
    Ok(Builder {
        root: root.to_path_buf(),
        home,
        engine: engine(home, cluster).await?,
        cache: cache_dir(root),
        no_push,
    })
}

pub async fn build_base(root: &Path, args: &BuildBaseArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let home = load_valid(root)?;
    let builder = builder(root, &home, args.cluster.as_deref(), args.no_push).await?;
    let mut display = Display::new();
    let result = builder.build_base(&args.name, &mut display).await;
    display.done();
    print_built(&format!("base image {}", args.name), &result?, started);
    Ok(exit::OK)
}

/// `base image NAME: built REF (SIZE), pushed in 1.23s`.
fn print_built(what: &str, built: &Built, started: Instant) {
    let pushed = if built.record().pushed {
        ", pushed"
    } else {
        ""
    };
    println!(
        "{what}: {}{pushed} in {:.2}s",
        describe(built),
        started.elapsed().as_secs_f64()
    );
}

pub async fn build_engine(root: &Path, args: &BuildEngineArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let home = load_valid(root)?;
    let builder = builder(root, &home, args.cluster.as_deref(), args.no_push).await?;
    let mut display = Display::new();
    let result = builder.build_engine(&mut display).await;
    display.done();
    print_built("engine image", &result?, started);
    Ok(exit::OK)
}

pub async fn build_env(root: &Path, args: &EnvBuildArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let home = load_valid(root)?;
    let names: Vec<String> = match (&args.name, args.rebuild_stale) {
        (Some(n), _) => vec![n.clone()],
        (None, true) => {
            let rows = capstan_images::list_envs(&home, None).await;
            let mut stale: Vec<String> = rows
                .iter()
                .filter(|r| r.state == capstan_images::ImageState::Stale)
                .map(|r| r.name.clone())
                .collect();
            stale.dedup();
            if stale.is_empty() {
                println!("no stale code environment images");
                return Ok(exit::OK);
            }
            stale
        }
        (None, false) => bail!("name the code environment to build, or pass --rebuild-stale"),
    };
    let builder = builder(root, &home, args.cluster.as_deref(), args.no_push).await?;
    for name in &names {
        let env = home
            .code_envs
            .get(name)
            .with_context(|| format!("no code environment `{name}` in images.toml"))?;
        let mut display = Display::new();
        let images_started = Instant::now();
        let result = builder.build_env(name, &mut display).await;
        display.done();
        let images_took = images_started.elapsed().as_secs_f64();
        for built in result? {
            let r = built.record();
            println!(
                "{name} for {}: {}{}",
                r.exec_config.as_deref().unwrap_or("?"),
                describe(&built),
                if r.pushed { ", pushed" } else { "" }
            );
        }
        println!("{name}: images in {images_took:.2}s");
        // The local backend's venv, for recipes on local execution.
        if env.language.value == capstan_core::model::EnvLanguage::Python {
            let (envs, home_root, spec) = (
                root.join("state").join("envs"),
                root.to_path_buf(),
                env.clone(),
            );
            let venv_started = Instant::now();
            let python = tokio::task::spawn_blocking(move || {
                capstan_backend_local::venv::ensure(&envs, &home_root, &spec)
            })
            .await?
            .map_err(anyhow::Error::msg)?;
            println!(
                "{name}: local venv {} in {:.2}s",
                python
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(&python)
                    .display(),
                venv_started.elapsed().as_secs_f64()
            );
        }
    }
    println!("done in {:.2}s", started.elapsed().as_secs_f64());
    Ok(exit::OK)
}

fn age(built_at: &str) -> String {
    match humantime::parse_rfc3339_weak(built_at.trim_end_matches('Z')) {
        Ok(t) => {
            let secs = t.elapsed().map_or(0, |d| d.as_secs());
            match secs {
                s if s < 120 => format!("{s}s"),
                s if s < 7200 => format!("{}m", s / 60),
                s if s < 172_800 => format!("{}h", s / 3600),
                s => format!("{}d", s / 86_400),
            }
        }
        Err(_) => "-".into(),
    }
}

fn row_json(r: &ImageRow) -> serde_json::Value {
    json!({
        "kind": r.kind,
        "name": r.name,
        "exec_config": r.exec_config,
        "image": r.record.as_ref().filter(|x| !x.image_id.is_empty()).map(|x| x.reference()),
        "image_id": r.record.as_ref().map(|x| x.image_id.clone()).filter(|i| !i.is_empty()),
        "size_bytes": r.record.as_ref().map(|x| x.size_bytes),
        "built_at": r.record.as_ref().map(|x| x.built_at.clone()),
        "pushed": r.record.as_ref().is_some_and(|x| x.pushed),
        "state": r.state.as_str(),
        "last_error": r.record.as_ref().and_then(|x| x.last_error.clone()),
        "used_by": r.used_by,
        "pins": r.pins,
    })
}

pub async fn list(root: &Path, args: &ImageListArgs, envs: bool) -> anyhow::Result<u8> {
    let home = load_valid(root)?;
    // An engine that cannot be reached still leaves the records to show.
    let engine = engine(&home, args.cluster.as_deref()).await.ok();
    let rows = if envs {
        capstan_images::list_envs(&home, engine.as_ref()).await
    } else {
        capstan_images::list_bases(&home, engine.as_ref()).await
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows.iter().map(row_json).collect::<Vec<_>>())?
        );
        return Ok(exit::OK);
    }
    println!(
        "{:<14} {:<14} {:<48} {:>10} {:>5} {:<8} USED BY",
        "NAME", "FOR", "IMAGE", "SIZE", "AGE", "STATE"
    );
    for r in &rows {
        let rec = r.record.as_ref().filter(|x| !x.image_id.is_empty());
        println!(
            "{:<14} {:<14} {:<48} {:>10} {:>5} {:<8} {}",
            r.name,
            r.exec_config.as_deref().unwrap_or("-"),
            rec.map_or("-".into(), |x| x.reference()),
            rec.map_or("-".into(), |x| human_bytes(x.size_bytes)),
            rec.map_or("-".into(), |x| age(&x.built_at)),
            r.state.as_str(),
            r.used_by.join(", ")
        );
        if let Some(p) = &r.pins {
            println!("  pins {p}");
        }
        if let Some(e) = r.record.as_ref().and_then(|x| x.last_error.as_ref()) {
            println!("  last build failed: {}", e.lines().next().unwrap_or(""));
        }
    }
    Ok(exit::OK)
}
