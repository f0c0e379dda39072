//! Finding and loading the home for a command.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use capstan_core::{Diagnostic, Home, Severity};

/// The home to use: `--home` / `CAPSTAN_HOME`, else the current folder if it holds capstan.toml.
pub fn locate(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        // Absolute, so paths handed to recipes and supervisors work from any folder.
        return std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()));
    }
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    if cwd.join("capstan.toml").is_file() {
        return Ok(cwd);
    }
    bail!(
        "no capstan home: pass --home DIR or set CAPSTAN_HOME (create one with `capstan init DIR`)"
    )
}

/// Loads a home and fails, printing every error, if it has any. Warnings are printed and kept.
pub fn load_valid(root: &Path) -> anyhow::Result<Home> {
    let (home, diags) = capstan_core::load_home(root)?;
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    for d in &diags {
        eprintln!("{d}");
    }
    if errors > 0 {
        bail!(
            "{} has {errors} configuration error{}; fix {} (`capstan check` lists {})",
            root.display(),
            plural(errors),
            if errors == 1 { "it" } else { "them" },
            if errors == 1 { "it" } else { "them" },
        );
    }
    Ok(home)
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub fn diagnostic_json(d: &Diagnostic) -> serde_json::Value {
    serde_json::json!({
        "severity": d.severity.to_string(),
        "file": d.file.display().to_string(),
        "line": d.line,
        "column": d.col,
        "field": d.field,
        "message": d.message,
        "help": d.help,
    })
}

/// Commands that work on the home's files directly (`dataset import`, `head`, `schema`) are the
/// machine admin's, gated by who may read the home. Given a token (`--token`, `CAPSTAN_TOKEN`),
/// they act as its user instead, who must hold `wanted` on the target's project.
pub fn acting_user_may(
    root: &Path,
    token: Option<&str>,
    target: &str,
    wanted: capstan_core::model::Permission,
) -> anyhow::Result<()> {
    let Some(token) = token else {
        return Ok(());
    };
    let home = load_valid(root)?;
    let project = target.split_once('/').map_or(target, |(p, _)| p);
    let Some((user, admin)) = token_user(&home, Some(token))? else {
        return Ok(());
    };
    if let Err(denied) = capstan_core::access::check(&home, project, &user, admin, wanted) {
        eprintln!("error: {denied}");
        return Err(crate::Exit(crate::exit::DENIED).into());
    }
    Ok(())
}

/// The user (and whether an admin) a token given to a command that works on the home's files
/// names; none without a token.
pub fn token_user(home: &Home, token: Option<&str>) -> anyhow::Result<Option<(String, bool)>> {
    let Some(token) = token else {
        return Ok(None);
    };
    let Some(user) = home.user_for_token(token) else {
        bail!("unknown token: it is the token of no user of users.toml");
    };
    Ok(Some((user.name.clone(), user.admin)))
}
