//! `capstan token create USER`: a new API token, printed once, its digest appended to users.toml.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use capstan_core::token::hash_token;

use crate::cli::TokenCreateArgs;
use crate::exit;
use crate::home::load_valid;

pub fn create(root: &Path, args: &TokenCreateArgs) -> anyhow::Result<u8> {
    let home = load_valid(root)?;
    let Some(user) = home.users.get(&args.user) else {
        let names: Vec<&str> = home.users.keys().map(String::as_str).collect();
        bail!(
            "unknown user `{}` (users: {})",
            args.user,
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
    };
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("token-{}", user.tokens.len() + 1));
    if user.tokens.iter().any(|t| t.name == name) {
        bail!("user `{}` already has a token named `{name}`", user.name);
    }
    let token = crate::init::new_token()?;
    // Appending an array-of-tables entry is valid TOML wherever the file ends, and keeps the
    // admin's comments and layout untouched.
    let path = root.join("users.toml");
    let entry = format!(
        "\n[[user.{}.tokens]]\nname = {}\nsha256 = \"{}\"\n",
        user.name,
        toml_string(&name),
        hash_token(&token)
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(entry.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("{token}");
    eprintln!(
        "token `{name}` of user `{}` created; it is shown this once (users.toml keeps its SHA-256 digest)",
        user.name
    );
    Ok(exit::OK)
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
