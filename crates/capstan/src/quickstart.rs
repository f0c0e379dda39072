//! `capstan quickstart`: the README's main-job command.
//!
//! Creates a demo home when none is given, checks it, and shows how each sample recipe's
//! settings resolve. (Running the recipes arrives with the daemon.)

use std::path::{Path, PathBuf};

use capstan_core::resolve::{RunRequest, resolve};

use crate::cli::QuickstartArgs;
use crate::exit;
use crate::home::load_valid;

pub fn run(home_arg: Option<&Path>, args: &QuickstartArgs) -> anyhow::Result<u8> {
    let root: PathBuf = match home_arg {
        Some(h) => h.to_path_buf(),
        None => args
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("demo-home")),
    };
    if !root.join("capstan.toml").exists() {
        let created = crate::init::create(&root)?;
        println!("created demo home {}", root.display());
        println!("  admin token: {}", created.admin_token);
        println!("  alice token: {}", created.user_token);
    } else {
        println!("using home {}", root.display());
    }
    let home = load_valid(&root)?;
    for p in home.projects.values() {
        for r in p.recipes.values() {
            let res = resolve(&home, &p.key, &r.name, &RunRequest::default())
                .map_err(|e| anyhow::anyhow!("{}/{}: {}", p.key, r.name, e[0]))?;
            println!(
                "{}/{} ({}): exec config {} [{}], cpu {}, memory {}, timeout {}",
                p.key,
                r.name,
                r.kind.value.as_str(),
                res.exec_config.value.as_deref().unwrap_or("(none)"),
                res.kind.value,
                res.cpu_limit.value.map_or("-".into(), |v| v.to_string()),
                res.memory_limit.value.map_or("-".into(), |v| v.to_string()),
                res.timeout.value.map_or("-".into(), |v| v.to_string()),
            );
        }
    }
    Ok(exit::OK)
}
