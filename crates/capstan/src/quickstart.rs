//! `capstan quickstart`: the README's main-job command.
//!
//! Creates a demo home when there is none, starts its daemon in this process (or uses the one
//! already running), runs every recipe of the sample project on the instance default, and
//! prints what ran, where, for how long, and the result.

use std::path::{Path, PathBuf};

use crate::cli::{QuickstartArgs, RunArgs};
use crate::client::Client;
use crate::exit;
use crate::jobs::{follow, submit, summary};

pub async fn run(home_arg: Option<&Path>, args: &QuickstartArgs) -> anyhow::Result<u8> {
    let root: PathBuf = match home_arg {
        Some(h) => h.to_path_buf(),
        None => args
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("demo-home")),
    };
    let root = std::path::absolute(&root)?;
    if !root.join("capstan.toml").exists() {
        let created = crate::init::create(&root)?;
        println!("created demo home {}", root.display());
        println!(
            "  API tokens, shown this once: admin {}  alice {}",
            created.admin_token, created.user_token
        );
    } else {
        println!("using home {}", root.display());
    }
    let home = crate::home::load_valid(&root)?;

    let (client, daemon) = match crate::daemon::read_info(&root) {
        Some(info) => {
            println!("using the running daemon at {}", info.url);
            (Client::from_parts(info.url, info.token), None)
        }
        None => {
            let d = crate::daemon::start(&root, "127.0.0.1:0").await?;
            println!("started the daemon in this process at {}", d.url());
            (Client::from_parts(d.url(), d.token.clone()), Some(d))
        }
    };

    let mut failed = 0;
    // Recipes that run as local processes run now; container recipes need their images built
    // first, which takes minutes the first time, so they are listed with what to run.
    let mut in_containers = Vec::new();
    for p in home.projects.values() {
        for r in p.recipes.values() {
            let target = format!("{}/{}", p.key, r.name);
            let resolved =
                capstan_core::resolve::resolve(&home, &p.key, &r.name, &Default::default());
            if let Ok(res) = &resolved
                && res.kind.value != capstan_core::model::ExecKind::Local
            {
                in_containers.push((target, res.exec_config.value.clone().unwrap_or_default()));
                continue;
            }
            let args = RunArgs {
                target: target.clone(),
                select: Default::default(),
                timeout: None,
                env: Vec::new(),
                detach: false,
                json: false,
            };
            println!();
            println!("==> {target} ({} recipe)", r.kind.value.as_str());
            let job = submit(&client, &args).await?;
            let id = job["id"].as_i64().unwrap_or(0);
            let job = follow(&client, id, "  | ").await?;
            println!("{}", summary(&job));
            if job["state"] != "succeeded" {
                failed += 1;
                if let Some(d) = job["diagnosis"].as_str() {
                    println!("error: {d}");
                }
            }
        }
    }
    if let Some(d) = daemon {
        d.stop(true).await;
    }
    println!();
    if !in_containers.is_empty() {
        let h = root.display();
        println!("recipes that run in containers (not run now):");
        for (target, config) in &in_containers {
            println!("  {target} on {config}");
        }
        println!("to run them, with a Docker engine on this machine:");
        println!(
            "  capstan --home {h} dataset import sample/wine {h}/projects/sample/data/wine.csv"
        );
        println!(
            "  capstan --home {h} image build-base default --no-push && capstan --home {h} image build-base r --no-push"
        );
        println!("  capstan --home {h} env build pandas --no-push");
        println!("  capstan --home {h} serve &   then   capstan --home {h} run sample/wine_stats");
        println!();
    }
    if failed == 0 {
        println!(
            "all local sample recipes succeeded; next: `capstan --home {} serve`, then `capstan run sample/hello`",
            root.display()
        );
        Ok(exit::OK)
    } else {
        println!("{failed} recipe(s) failed");
        Ok(exit::FAILURE)
    }
}
