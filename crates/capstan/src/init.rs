//! `capstan init DIR`: a working sample home.

use std::path::Path;

use anyhow::{Context, bail};
use capstan_core::token::{hash_token, token_from_bytes};

use crate::cli::InitArgs;
use crate::exit;

/// A fresh random token.
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("cannot get random bytes: {e}"))?;
    Ok(token_from_bytes(&bytes))
}

pub struct Created {
    pub admin_token: String,
    pub user_token: String,
}

/// Writes the sample home into `dir`, which must not exist or be empty.
pub fn create(dir: &Path) -> anyhow::Result<Created> {
    if dir.exists() {
        let empty = dir
            .read_dir()
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            bail!("{} already exists and is not empty", dir.display());
        }
    }
    let admin_token = new_token()?;
    let user_token = new_token()?;
    let files =
        capstan_core::sample::sample_home(&hash_token(&admin_token), &hash_token(&user_token));
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(Created {
        admin_token,
        user_token,
    })
}

pub fn run(args: &InitArgs) -> anyhow::Result<u8> {
    let created = create(&args.dir)?;
    println!("created capstan home {}", args.dir.display());
    println!();
    println!("API tokens, shown this once (only their SHA-256 digests are stored in users.toml):");
    println!("  admin  {}", created.admin_token);
    println!("  alice  {}", created.user_token);
    println!();
    println!("next: capstan --home {} check", args.dir.display());
    Ok(exit::OK)
}
