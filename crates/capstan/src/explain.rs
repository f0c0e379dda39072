//! `capstan config explain` and `capstan config list`.

use std::path::Path;

use anyhow::bail;
use capstan_core::model::{ClusterTarget, Home};
use capstan_core::resolve::{Origin, Resolution, ResolveError, RunRequest, Setting, resolve};
use serde_json::{Value, json};

use crate::cli::{ExplainArgs, ListArgs};
use crate::home::load_valid;
use crate::{Exit, exit};

/// Splits `PROJECT/RECIPE`.
pub fn parse_target(target: &str) -> anyhow::Result<(&str, &str)> {
    match target.split_once('/') {
        Some((p, r)) if !p.is_empty() && !r.is_empty() && !r.contains('/') => Ok((p, r)),
        _ => bail!("`{target}` is not PROJECT/RECIPE"),
    }
}

fn origin_json(o: &Origin) -> Value {
    json!({
        "layer": o.layer.as_str(),
        "file": o.file.as_ref().map(|f| f.display().to_string()),
        "line": o.file.as_ref().map(|_| o.line),
        "via": o.via,
    })
}

fn setting_json<T>(s: &Setting<T>, show: impl Fn(&T) -> Value) -> Value {
    let mut v = origin_json(&s.origin);
    v["value"] = show(&s.value);
    v
}

fn opt<T: ToString>(v: &Option<T>) -> Value {
    v.as_ref()
        .map_or(Value::Null, |x| Value::String(x.to_string()))
}

/// Every effective setting, in a stable order, as (name, JSON value with origin).
pub fn resolution_rows(r: &Resolution) -> Vec<(&'static str, Value, &Origin)> {
    vec![
        (
            "exec_config",
            opt(&r.exec_config.value),
            &r.exec_config.origin,
        ),
        ("kind", json!(r.kind.value.as_str()), &r.kind.origin),
        ("cluster", opt(&r.cluster.value), &r.cluster.origin),
        (
            "docker_host",
            opt(&r.docker_host.value),
            &r.docker_host.origin,
        ),
        ("context", opt(&r.context.value), &r.context.origin),
        ("namespace", opt(&r.namespace.value), &r.namespace.origin),
        ("image", opt(&r.image.value), &r.image.origin),
        ("registry", opt(&r.registry.value), &r.registry.origin),
        (
            "spark_config",
            opt(&r.spark_config.value),
            &r.spark_config.origin,
        ),
        ("code_env", opt(&r.code_env.value), &r.code_env.origin),
        (
            "cpu_request",
            opt(&r.cpu_request.value),
            &r.cpu_request.origin,
        ),
        ("cpu_limit", opt(&r.cpu_limit.value), &r.cpu_limit.origin),
        (
            "memory_request",
            opt(&r.memory_request.value),
            &r.memory_request.origin,
        ),
        (
            "memory_limit",
            opt(&r.memory_limit.value),
            &r.memory_limit.origin,
        ),
        ("gpu", json!(r.gpus.value), &r.gpus.origin),
        ("timeout", opt(&r.timeout.value), &r.timeout.origin),
    ]
}

pub fn resolution_json(r: &Resolution) -> Value {
    let mut settings = serde_json::Map::new();
    for (name, value, origin) in resolution_rows(r) {
        let mut v = origin_json(origin);
        v["value"] = value;
        settings.insert(name.to_string(), v);
    }
    // Aliases scripts look for: `cpu` and `memory` are the limits, which is what is enforced.
    for (alias, of) in [("cpu", "cpu_limit"), ("memory", "memory_limit")] {
        let v = settings[of].clone();
        settings.insert(alias.to_string(), v);
    }
    let env: serde_json::Map<String, Value> = r
        .env
        .iter()
        .map(|(k, s)| (k.clone(), setting_json(s, |v| json!(v))))
        .collect();
    json!({
        "project": r.project,
        "recipe": r.recipe,
        "recipe_kind": r.recipe_kind.as_str(),
        "user": r.user,
        "settings": settings,
        "env": env,
    })
}

pub fn error_json(e: &ResolveError) -> Value {
    match e {
        ResolveError::PermissionDenied {
            user,
            what,
            name,
            allowed_groups,
            user_groups,
        } => json!({
            "kind": "permission_denied",
            "message": e.to_string(),
            "user": user,
            "object": what,
            "name": name,
            "allowed_groups": allowed_groups,
            "user_groups": user_groups,
        }),
        ResolveError::Invalid { field, .. } => json!({
            "kind": "invalid",
            "field": field,
            "message": e.to_string(),
            "help": e.help(),
        }),
        _ => json!({ "kind": "not_found", "message": e.to_string(), "help": e.help() }),
    }
}

pub fn run(root: &Path, args: &ExplainArgs) -> anyhow::Result<u8> {
    let (project, recipe) = parse_target(&args.target)?;
    let home = load_valid(root)?;
    let request = RunRequest {
        user: args.user.clone(),
        exec_config: args.exec_config.clone(),
        cluster: args.cluster.clone(),
        spark_config: args.spark_config.clone(),
        code_env: args.code_env.clone(),
        ..RunRequest::default()
    };
    match resolve(&home, project, recipe, &request) {
        Ok(r) => {
            if args.json {
                let mut out = resolution_json(&r);
                out["allowed"] = json!(true);
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_human(&r);
            }
            Ok(exit::OK)
        }
        Err(errors) => {
            let denied = errors
                .iter()
                .any(|e| matches!(e, ResolveError::PermissionDenied { .. }));
            let only_denied = errors
                .iter()
                .all(|e| matches!(e, ResolveError::PermissionDenied { .. }));
            if args.json {
                let out = json!({
                    "project": project,
                    "recipe": recipe,
                    "user": args.user,
                    "allowed": !denied,
                    "errors": errors.iter().map(error_json).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for e in &errors {
                    match e.help() {
                        Some(h) => eprintln!("error: {e} ({h})"),
                        None => eprintln!("error: {e}"),
                    }
                }
            }
            Err(Exit(if only_denied {
                exit::DENIED
            } else {
                exit::FAILURE
            })
            .into())
        }
    }
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
