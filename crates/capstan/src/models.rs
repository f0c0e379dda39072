//! `capstan model list|show|activate|evaluations`: saved models' versions, read from the home
//! on this machine (as `capstan datasets` reads datasets).

use std::path::Path;

use anyhow::bail;
use capstan_core::model::{Home, Permission};
use capstan_data::models::{ModelStore, ModelVersion};
use serde_json::{Value, json};

use crate::cli::{ModelActivateArgs, ModelEvaluationsArgs, ModelListArgs, ModelShowArgs};
use crate::home::{acting_user_may, load_valid, token_user};
use crate::{Exit, exit};

/// `PROJECT/NAME`, or `NAME` when exactly one project declares a saved model of that name.
fn resolve(home: &Home, target: &str) -> anyhow::Result<(String, String)> {
    if let Some((p, m)) = target.split_once('/') {
        let Some(project) = home.projects.get(p) else {
            bail!("unknown project `{p}` (in `{target}`)");
        };
        if !project.models.contains_key(m) {
            let known: Vec<&str> = project.models.keys().map(String::as_str).collect();
            bail!(
                "project `{p}` declares no saved model `{m}` ({})",
                if known.is_empty() {
                    "it declares none: add `[model.NAME]` to its project.toml".to_string()
                } else {
                    format!("its saved models: {}", known.join(", "))
                }
            );
        }
        return Ok((p.to_string(), m.to_string()));
    }
    let owners: Vec<&str> = home
        .projects
        .values()
        .filter(|p| p.models.contains_key(target))
        .map(|p| p.key.as_str())
        .collect();
    match owners.as_slice() {
        [one] => Ok((one.to_string(), target.to_string())),
        [] => {
            bail!("no project declares a saved model `{target}` (`capstan model list` lists them)")
        }
        many => bail!(
            "saved model `{target}` is in projects {}: name it as PROJECT/{target}",
            many.join(", ")
        ),
    }
}

fn version_json(
    store: &ModelStore,
    project: &str,
    model: &str,
    v: &ModelVersion,
    active: Option<u64>,
) -> Value {
    let written_by = match v.provenance.as_ref().map(|p| &p.written_by) {
        Some(capstan_core::flow::WrittenBy::Activity { job, recipe, .. }) => {
            json!({"job": job, "recipe": recipe})
        }
        Some(capstan_core::flow::WrittenBy::Import { user, .. }) => json!({"user": user}),
        None => Value::Null,
    };
    json!({
        "version": v.version,
        "active": active == Some(v.version),
        "at": rfc3339(v.at_ms),
        "metric": v.metrics["metric"],
        "score": v.metrics["score"],
        "evaluation": v.metrics["evaluation"],
        "metrics": v.metrics["metrics"],
        // Every point the search tried, with its cross-validated score.
        "search": v.metrics["search"],
        "algorithm": v.train_info["algorithm"],
        "params": v.train_info["params"],
        "written_by": written_by,
        "inputs": v.provenance.as_ref().map(|p| json!(p.inputs)),
        "train_info": v.train_info,
        "path": store.version_dir(project, model, v.version),
    })
}

fn rfc3339(at_ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms.max(0) as u64),
    )
    .to_string()
}

fn score(v: &Value) -> String {
    match (v["metric"].as_str(), v["score"].as_f64()) {
        (Some(m), Some(s)) => format!("{m} {s:.4}"),
        _ => "-".into(),
    }
}

pub fn list(root: &Path, args: &ModelListArgs, token: Option<&str>) -> anyhow::Result<u8> {
    let home = load_valid(root)?;
    let user = token_user(&home, token)?;
    let store = ModelStore::new(root);
    let readable = |project: &str| {
        user.as_ref().is_none_or(|(name, admin)| {
            capstan_core::access::check(&home, project, name, *admin, Permission::Read).is_ok()
        })
    };
    let mut rows = Vec::new();
    for p in home.projects.values().filter(|p| readable(&p.key)) {
        if args.project.as_deref().is_some_and(|want| want != p.key) {
            continue;
        }
        for m in p.models.values() {
            // Only the active version's files are read: the others are counted.
            let numbers = store.numbers(&p.key, &m.name);
            let active = store.active(&p.key, &m.name);
            let shown = match active {
                Some(a) => store.version(&p.key, &m.name, a)?,
                None => None,
            };
            let shown = shown.as_ref();
            rows.push(json!({
                "project": p.key,
                "name": m.name,
                "versions": numbers.len(),
                "latest": numbers.last(),
                "active": active,
                "metric": shown.map(|v| v.metrics["metric"].clone()),
                "score": shown.map(|v| v.metrics["score"].clone()),
                "activation": m.activation.value.as_str(),
                "description": m.description,
            }));
        }
    }
    if let Some(p) = &args.project
        && !home.projects.contains_key(p)
    {
        bail!("unknown project `{p}`");
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(exit::OK);
    }
    say!(
        "{:<32} {:>8} {:>6} {:<18} {:<10}",
        "MODEL",
        "VERSIONS",
        "ACTIVE",
        "SCORE",
        "ACTIVATION"
    );
    for r in &rows {
        say!(
            "{:<32} {:>8} {:>6} {:<18} {:<10}",
            format!(
                "{}/{}",
                r["project"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or("")
            ),
            r["versions"],
            r["active"].as_u64().map_or("-".into(), |a| format!("v{a}")),
            score(r),
            r["activation"].as_str().unwrap_or(""),
        );
    }
    Ok(exit::OK)
}

/// Says that `project/model` has no version `n`, with the versions it has; exits 1.
fn no_such_version(store: &ModelStore, project: &str, model: &str, n: u64) -> anyhow::Result<u8> {
    let have: Vec<String> = store
        .numbers(project, model)
        .iter()
        .map(u64::to_string)
        .collect();
    eprintln!(
        "error: saved model {project}/{model} has no version {n} ({})",
        if have.is_empty() {
            "it has none yet".to_string()
        } else {
            format!("its versions: {}", have.join(", "))
        }
    );
    Err(Exit(exit::FAILURE).into())
}

pub fn show(root: &Path, args: &ModelShowArgs, token: Option<&str>) -> anyhow::Result<u8> {
    let home = load_valid(root)?;
    let (project, model) = resolve(&home, &args.target)?;
    acting_user_may(root, token, &project, Permission::Read)?;
    let store = ModelStore::new(root);
    let active = store.active(&project, &model);
    let declared = &home.projects[&project].models[&model];
    if let Some(n) = args.version {
        let Some(v) = store.version(&project, &model, n)? else {
            return no_such_version(&store, &project, &model, n);
        };
        let j = version_json(&store, &project, &model, &v, active);
        if args.json {
            say!("{}", serde_json::to_string_pretty(&j)?);
            return Ok(exit::OK);
        }
        say!(
            "{project}/{model} v{n}{}",
            if j["active"] == true { " (active)" } else { "" }
        );
        say!("  created        {}", j["at"].as_str().unwrap_or(""));
        if let Some(job) = j["written_by"]["job"].as_i64() {
            say!(
                "  trained by     job {job} (recipe {})",
                j["written_by"]["recipe"].as_str().unwrap_or("")
            );
        }
        say!(
            "  algorithm      {} {}",
            j["algorithm"].as_str().unwrap_or("-"),
            j["params"]
        );
        say!(
            "  score          {} ({})",
            score(&j),
            j["evaluation"].as_str().unwrap_or("")
        );
        if let Some(metrics) = j["metrics"].as_object() {
            for (k, m) in metrics {
                say!(
                    "    {k:<12} {}",
                    m.as_f64().map_or("-".into(), |f| format!("{f:.4}"))
                );
            }
        }
        let info = &j["train_info"];
        for (label, key) in [
            ("placement", "kind"),
            ("exec config", "exec_config"),
            ("image", "image"),
            ("code env", "code_env"),
            ("seed", "seed"),
            ("python", "python"),
        ] {
            if !info[key].is_null() {
                let shown = info[key]
                    .as_str()
                    .map_or(info[key].to_string(), str::to_string);
                say!("  {label:<14} {shown}");
            }
        }
        if let Some(inputs) = j["inputs"].as_object() {
            let shown: Vec<String> = inputs.iter().map(|(k, v)| format!("{k} v{v}")).collect();
            say!("  data           {}", shown.join(", "));
        }
        if let Some(libs) = info["libraries"].as_object() {
            let shown: Vec<String> = libs
                .iter()
                .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("")))
                .collect();
            say!("  libraries      {}", shown.join(", "));
        }
        say!("  files          {}", j["path"].as_str().unwrap_or(""));
        return Ok(exit::OK);
    }
    let versions: Vec<Value> = store
        .versions(&project, &model)?
        .iter()
        .map(|v| version_json(&store, &project, &model, v, active))
        .collect();
    if args.json {
        let j = json!({
            "project": project,
            "name": model,
            "description": declared.description,
            "activation": declared.activation.value.as_str(),
            "active": active,
            "versions": versions,
        });
        say!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(exit::OK);
    }
    say!(
        "{project}/{model}: {} (activation {})",
        declared.description.as_deref().unwrap_or("a saved model"),
        declared.activation.value.as_str()
    );
    if versions.is_empty() {
        say!("no version yet: run its training recipe (`capstan flow {project}` shows which)");
        return Ok(exit::OK);
    }
    say!(
        "{:<8} {:<6} {:<20} {:<24} {:<18} {:<8}",
        "VERSION",
        "ACTIVE",
        "CREATED",
        "ALGORITHM",
        "SCORE",
        "JOB"
    );
    for v in &versions {
        say!(
            "{:<8} {:<6} {:<20} {:<24} {:<18} {:<8}",
            format!("v{}", v["version"]),
            if v["active"] == true { "*" } else { "" },
            v["at"].as_str().unwrap_or(""),
            v["algorithm"].as_str().unwrap_or("-"),
            score(v),
            v["written_by"]["job"]
                .as_i64()
                .map_or("-".into(), |j| j.to_string()),
        );
    }
    Ok(exit::OK)
}

pub fn activate(root: &Path, args: &ModelActivateArgs, token: Option<&str>) -> anyhow::Result<u8> {
    let home = load_valid(root)?;
    let (project, model) = resolve(&home, &args.target)?;
    acting_user_may(root, token, &project, Permission::Write)?;
    let store = ModelStore::new(root);
    if store.version(&project, &model, args.version)?.is_none() {
        return no_such_version(&store, &project, &model, args.version);
    }
    let before = store.active(&project, &model);
    store.activate(&project, &model, args.version)?;
    match before {
        Some(b) if b == args.version => {
            say!("{project}/{model} v{b} is already the active version")
        }
        Some(b) => say!(
            "{project}/{model}: v{} is the active version (was v{b})",
            args.version
        ),
        None => say!("{project}/{model}: v{} is the active version", args.version),
    }
    Ok(exit::OK)
}

pub fn evaluations(
    root: &Path,
    args: &ModelEvaluationsArgs,
    token: Option<&str>,
) -> anyhow::Result<u8> {
    let home = load_valid(root)?;
    let (project, model) = resolve(&home, &args.target)?;
    acting_user_may(root, token, &project, Permission::Read)?;
    let rows = ModelStore::new(root).evaluations(&project, &model);
    if args.json {
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        say!("{project}/{model} has no evaluation yet: run an ml_evaluate recipe on it");
        return Ok(exit::OK);
    }
    say!(
        "{:<20} {:<8} {:<6} {:<20} {:>8}  METRICS",
        "AT",
        "VERSION",
        "JOB",
        "INPUT",
        "ROWS"
    );
    for r in &rows {
        let metrics: Vec<String> = r["metrics"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k} {}",
                            v.as_f64().map_or("-".into(), |f| format!("{f:.4}"))
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        say!(
            "{:<20} {:<8} {:<6} {:<20} {:>8}  {}",
            r["at_ms"].as_i64().map_or("-".into(), rfc3339),
            r["model_version"]
                .as_u64()
                .map_or("-".into(), |v| format!("v{v}")),
            r["job"].as_i64().map_or("-".into(), |j| j.to_string()),
            r["input"].as_str().unwrap_or("-"),
            r["rows"],
            metrics.join(", "),
        );
    }
    Ok(exit::OK)
}
