//! `capstan config explain` and `capstan config list`.

use std::path::Path;

use anyhow::bail;
use capstan_core::model::{ClusterTarget, Home, Permission};
use capstan_core::resolve::{Resolution, ResolveError, RunRequest, resolve};
use capstan_engine::record::{error_json, resolution_json, resolution_rows};
use serde_json::{Value, json};

use crate::cli::{ExplainArgs, ListArgs, Selection};
use crate::home::load_valid;
use crate::{Exit, exit};

/// Splits `PROJECT/RECIPE`.
pub fn parse_target(target: &str) -> anyhow::Result<(&str, &str)> {
    match target.split_once('/') {
        Some((p, r)) if !p.is_empty() && !r.is_empty() && !r.contains('/') => Ok((p, r)),
        _ => bail!("`{target}` is not PROJECT/RECIPE"),
    }
}

/// The run request of `--user` and the selection flags.
pub fn request(user: &Option<String>, select: &Selection) -> RunRequest {
    RunRequest {
        user: user.clone(),
        exec_config: select.exec_config.clone(),
        cluster: select.cluster.clone(),
        spark_config: select.spark_config.clone(),
        code_env: select.code_env.clone(),
        ..RunRequest::default()
    }
}

/// Prints why a resolution failed, with each error's help; the exit scripts get: 3 when only
/// permissions refused it, 1 otherwise.
fn report(errors: &[ResolveError]) -> anyhow::Error {
    for e in errors {
        match e.help() {
            Some(h) => eprintln!("error: {e} ({h})"),
            None => eprintln!("error: {e}"),
        }
    }
    let only_denied = errors
        .iter()
        .all(|e| matches!(e, ResolveError::PermissionDenied { .. }));
    Exit(if only_denied {
        exit::DENIED
    } else {
        exit::FAILURE
    })
    .into()
}

/// Resolves `PROJECT/RECIPE` as `--user` with the selection flags, for the commands that show
/// what a run would do (`k8s render`, `spark render`); says why it cannot.
pub fn resolve_target(
    root: &Path,
    target: &str,
    user: &Option<String>,
    select: &Selection,
) -> anyhow::Result<(Home, Resolution)> {
    let (project, recipe) = parse_target(target)?;
    let home = load_valid(root)?;
    let r = resolve(&home, project, recipe, &request(user, select)).map_err(|e| report(&e))?;
    Ok((home, r))
}

pub fn run(root: &Path, args: &ExplainArgs) -> anyhow::Result<u8> {
    let (project, recipe) = parse_target(&args.target)?;
    let home = load_valid(root)?;
    let permissions = args.user.as_ref().map(|u| held(&home, project, u));
    match resolve(&home, project, recipe, &request(&args.user, &args.select)) {
        Ok(r) => {
            let may_run = permissions
                .as_ref()
                .is_none_or(|p| p.contains(&Permission::Run));
            if args.json {
                let mut out = resolution_json(&r);
                out["allowed"] = json!(may_run);
                if let Some(p) = &permissions {
                    out["permissions"] = json!(p.iter().map(|p| p.as_str()).collect::<Vec<_>>());
                }
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_human(&r);
                if let (Some(p), Some(u)) = (&permissions, &args.user) {
                    let list: Vec<&str> = p.iter().map(|p| p.as_str()).collect();
                    println!(
                        "\npermissions of {u} on project {project}: {}",
                        if list.is_empty() {
                            "none".to_string()
                        } else {
                            list.join(", ")
                        }
                    );
                    if !may_run {
                        println!(
                            "{}",
                            capstan_core::access::check(&home, project, u, false, Permission::Run)
                                .err()
                                .map(|d| d.message)
                                .unwrap_or_default()
                        );
                    }
                }
            }
            Ok(if may_run { exit::OK } else { exit::DENIED })
        }
        Err(errors) if args.json => {
            let denied = errors
                .iter()
                .any(|e| matches!(e, ResolveError::PermissionDenied { .. }));
            let only_denied = errors
                .iter()
                .all(|e| matches!(e, ResolveError::PermissionDenied { .. }));
            let out = json!({
                "project": project,
                "recipe": recipe,
                "user": args.user,
                "allowed": !denied,
                "errors": errors.iter().map(error_json).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Err(Exit(if only_denied {
                exit::DENIED
            } else {
                exit::FAILURE
            })
            .into())
        }
        Err(errors) => Err(report(&errors)),
    }
}

/// The permissions `user` has on `project`, implications included (an instance admin: all).
fn held(home: &Home, project: &str, user: &str) -> Vec<Permission> {
    Permission::ALL
        .into_iter()
        .filter(|p| capstan_core::access::check(home, project, user, false, *p).is_ok())
        .collect()
}

fn print_human(r: &Resolution) {
    println!(
        "{}/{} ({} recipe){}",
        r.project,
        r.recipe,
        r.recipe_kind.as_str(),
        r.user
            .as_ref()
            .map_or(String::new(), |u| format!(", as user {u}: allowed"))
    );
    let rows = resolution_rows(r);
    let width = rows.iter().map(|(n, ..)| n.len()).max().unwrap_or(0);
    let shown: Vec<(String, String, String)> = rows
        .iter()
        .map(|(n, v, o)| {
            let value = match v {
                Value::Null => "-".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (n.to_string(), value, o.to_string())
        })
        .chain(
            r.env
                .iter()
                .map(|(k, s)| (format!("env.{k}"), s.value.clone(), s.origin.to_string())),
        )
        .collect();
    let width = shown.iter().map(|(n, ..)| n.len()).max().unwrap_or(width);
    let vwidth = shown
        .iter()
        .map(|(_, v, _)| v.len())
        .max()
        .unwrap_or(0)
        .min(40);
    for (name, value, origin) in shown {
        println!("  {name:width$}  {value:vwidth$}  {origin}");
    }
}

pub fn list(root: &Path, args: &ListArgs) -> anyhow::Result<u8> {
    let home = load_valid(root)?;
    let rows = list_rows(&home);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&Value::Array(rows))?);
        return Ok(exit::OK);
    }
    println!("{:<14} {:<22} {:<11} DETAILS", "TYPE", "NAME", "KIND");
    for row in rows {
        println!(
            "{:<14} {:<22} {:<11} {}",
            row["type"].as_str().unwrap_or(""),
            row["name"].as_str().unwrap_or(""),
            row["kind"].as_str().unwrap_or("-"),
            row["details"].as_str().unwrap_or(""),
        );
    }
    Ok(exit::OK)
}

fn groups_text(allowed: &capstan_core::model::Allowed) -> String {
    match allowed {
        capstan_core::model::Allowed::Everyone => "everyone".into(),
        a => format!("groups {}", a.group_names().join(",")),
    }
}

fn list_rows(home: &Home) -> Vec<Value> {
    let mut rows = Vec::new();
    for c in home.exec_configs.values() {
        let mut d = Vec::new();
        if let Some(v) = &c.cpu_limit {
            d.push(format!("cpu {}", v.value));
        }
        if let Some(v) = &c.memory_limit {
            d.push(format!("memory {}", v.value));
        }
        if let Some(v) = &c.gpus {
            d.push(format!("gpus {}", v.value));
        }
        d.push(groups_text(&c.allowed));
        rows.push(json!({"type": "exec_config", "name": c.name, "kind": c.kind.value.as_str(), "details": d.join(", "),
            "cpu_limit": c.cpu_limit.as_ref().map(|v| v.value.to_string()),
            "memory_limit": c.memory_limit.as_ref().map(|v| v.value.to_string()),
            "allowed_groups": c.allowed.group_names()}));
    }
    for s in home.spark_configs.values() {
        rows.push(json!({"type": "spark_config", "name": s.name, "kind": s.master.value.as_str(), "details": groups_text(&s.allowed), "allowed_groups": s.allowed.group_names()}));
    }
    for c in home.clusters.values() {
        let details = match &c.target {
            ClusterTarget::Docker { host } => host.value.clone(),
            ClusterTarget::Kubernetes { context, .. } => {
                format!(
                    "context {}",
                    context.as_ref().map_or("(current)", |c| c.value.as_str())
                )
            }
        };
        rows.push(json!({"type": "cluster", "name": c.name, "kind": c.kind().as_str(), "details": format!("{details}, {}", groups_text(&c.allowed)), "allowed_groups": c.allowed.group_names()}));
    }
    for b in home.base_images.values() {
        rows.push(json!({"type": "base_image", "name": b.name, "kind": null, "details": format!("R {}, CUDA {}", b.with_r, b.with_cuda)}));
    }
    for e in home.code_envs.values() {
        rows.push(json!({"type": "code_env", "name": e.name, "kind": match e.language.value { capstan_core::model::EnvLanguage::Python => "python", capstan_core::model::EnvLanguage::R => "r" }, "details": format!("{} packages", e.packages.len())}));
    }
    for p in home.projects.values() {
        for r in p.recipes.values() {
            rows.push(json!({"type": "recipe", "name": format!("{}/{}", p.key, r.name), "kind": r.kind.value.as_str(), "details": r.description.clone().unwrap_or_default()}));
        }
    }
    rows
}
