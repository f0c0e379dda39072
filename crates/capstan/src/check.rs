//! `capstan check`: every problem of the home at once.

use std::collections::BTreeSet;
use std::path::Path;

use capstan_core::Severity;

use crate::cli::CheckArgs;
use crate::home::{diagnostic_json, plural};
use crate::{Exit, exit};

/// Whether the identities local recipes run as can be had by a daemon started as this user:
/// each `run_as` must exist, and a daemon that is not root can switch to none of them.
fn isolation_checks(home: &capstan_core::model::Home) -> Vec<capstan_core::Diagnostic> {
    use capstan_core::access::{LocalIdentity, local_identity};
    let has_local = home
        .exec_configs
        .values()
        .any(|c| c.kind.value == capstan_core::model::ExecKind::Local);
    if !has_local {
        return Vec::new();
    }
    let is_root = rustix::process::geteuid().is_root();
    let mut out = Vec::new();
    let diagnostic = |severity, field: &str, message: String| capstan_core::Diagnostic {
        severity,
        file: "capstan.toml".into(),
        line: 0,
        col: 0,
        field: field.into(),
        message,
        help: None,
    };
    let identities = std::iter::once(local_identity(home, None))
        .chain(home.users.keys().map(|u| local_identity(home, Some(u))));
    let mut seen = BTreeSet::new();
    for identity in identities {
        let LocalIdentity::Unix { name, .. } = &identity else {
            continue;
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        if !is_root {
            out.push(diagnostic(
                Severity::Warning,
                "instance.isolation",
                format!(
                    "local recipes run as unprivileged Unix users (here `{name}`), which a daemon started as this user                      (uid {}) cannot switch to: it would refuse local recipes of everyone but admins. Run the daemon                      as root, or set `isolation = \"none\"` in [instance] to run local recipes as the daemon's own user",
                    rustix::process::geteuid().as_raw()
                ),
            ));
            break;
        }
        if let Err(why) = capstan_backend_local::private::run_as(&identity, true, false) {
            out.push(diagnostic(Severity::Error, "run_as", why));
        }
    }
    out
}

pub fn run(root: &Path, args: &CheckArgs) -> anyhow::Result<u8> {
    let (home, mut diags) = capstan_core::load_home(root)?;
    // The daemon runs on this machine, and so does its default Docker engine.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    diags.extend(capstan_core::host_checks(&home, cpus));
    diags.extend(isolation_checks(&home));
    // Visual recipes, checked against their inputs' schemas, in flow order: a broken
    // downstream recipe is found before anything runs.
    for d in crate::transform::check_flows(root, &home) {
        // A formula's syntax error is the loader's to report, once.
        if !diags
            .iter()
            .any(|x| (&x.file, x.line, x.col, &x.message) == (&d.file, d.line, d.col, &d.message))
        {
            diags.push(d);
        }
    }
    if args.deep {
        use capstan_data::DatasetStore;
        let store = capstan_data::ParquetStore::new(root);
        diags.extend(capstan_core::flow::input_checks(&home, |p, d| {
            matches!(store.info(p, d), Ok(Some(_)))
        }));
    }
    diags.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diags.len() - errors;
    if args.json {
        let out = serde_json::json!({
            "home": root.display().to_string(),
            "ok": errors == 0,
            "errors": errors,
            "warnings": warnings,
            "diagnostics": diags.iter().map(diagnostic_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for d in &diags {
            println!("{d}");
        }
        if errors > 0 {
            let files: BTreeSet<_> = diags.iter().map(|d| &d.file).collect();
            println!(
                "{errors} error{}{} in {} file{}",
                plural(errors),
                if warnings > 0 {
                    format!(", {warnings} warning{}", plural(warnings))
                } else {
                    String::new()
                },
                files.len(),
                plural(files.len())
            );
        } else {
            let recipes: usize = home.projects.values().map(|p| p.recipes.len()).sum();
            println!(
                "ok: {} execution configuration{}, {} Spark configuration{}, {} cluster{}, {} base image{}, {} code environment{}, {} user{}, {} project{} with {} recipe{}",
                home.exec_configs.len(),
                plural(home.exec_configs.len()),
                home.spark_configs.len(),
                plural(home.spark_configs.len()),
                home.clusters.len(),
                plural(home.clusters.len()),
                home.base_images.len(),
                plural(home.base_images.len()),
                home.code_envs.len(),
                plural(home.code_envs.len()),
                home.users.len(),
                plural(home.users.len()),
                home.projects.len(),
                plural(home.projects.len()),
                recipes,
                plural(recipes),
            );
        }
    }
    if errors > 0 {
        return Err(Exit(exit::FAILURE).into());
    }
    Ok(exit::OK)
}
