//! `capstan quickstart`: the README's main-job command, the product in five minutes.
//!
//! Creates a demo home when there is none, imports the datasets its projects ship
//! (`projects/KEY/data/NAME.csv` for a declared dataset that no recipe builds), starts its
//! daemon in this process (or uses the one already running), runs the recipes that write no
//! dataset, then *builds* the datasets of each project in one job (`capstan build`: each
//! recipe after those it reads from, only what is out of date), and prints a few rows of every
//! dataset the build wrote. Run again, it builds nothing. Recipes that run in containers run
//! with `--containers`, after their images are built; without it, one line says what was left
//! out and how to run it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_core::flow;
use capstan_core::model::{ExecKind, Home, Project, Recipe};
use capstan_data::{DatasetStore, ParquetStore};

use crate::cli::{BuildBaseArgs, EnvBuildArgs, QuickstartArgs, RunArgs};
use crate::client::Client;
use crate::exit;
use crate::jobs::{submit, summary, wait_final};

/// Rows shown of each dataset a recipe wrote.
const RESULT_ROWS: usize = 5;

/// What the quickstart does with one recipe.
enum Plan {
    Run,
    Skip(String),
}

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
    import_shipped_data(&root, &home)?;

    let containers = container_recipes(&home);
    let engine = if containers.is_empty() {
        None
    } else {
        Some(local_engine().await)
    };
    let mut images_ok = false;
    match (&engine, args.containers) {
        (Some(Ok(_)), true) => {
            images_ok = build_images(&root, &home, &containers).await;
        }
        (Some(Ok(name)), false) => println!(
            "\n{} recipe(s) run in containers on the Docker engine at {name}: `capstan quickstart --containers` builds their images (minutes, the first time) and runs them too",
            containers.len()
        ),
        (Some(Err(why)), _) => println!(
            "\n{} recipe(s) run in containers and are left out: {why}",
            containers.len()
        ),
        (None, _) => {}
    }

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

    let store = ParquetStore::new(&root);
    let (mut ran, mut failed, mut skipped) = (0, 0, Vec::new());
    for p in home.projects.values() {
        // Datasets no run of this quickstart can give a reader: their producer was left out
        // or failed.
        let mut unavailable: BTreeSet<&str> = BTreeSet::new();
        // The datasets this quickstart can build, for one build of the project.
        let mut targets: Vec<String> = Vec::new();
        for r in flow::order(p) {
            let target = format!("{}/{}", p.key, r.name);
            let plan = plan(&home, p, r, images_ok, &store, &unavailable);
            if let Plan::Skip(why) = plan {
                skipped.push(format!("{target}: {why}"));
                unavailable.extend(r.outputs.iter().map(|o| o.value.as_str()));
                continue;
            }
            if !r.outputs.is_empty() {
                targets.extend(r.outputs.iter().map(|o| o.value.clone()));
                continue;
            }
            println!();
            println!("==> {target} ({} recipe)", r.kind.value.as_str());
            let job = run_one(&client, &target).await?;
            println!("  {}", summary(&job));
            ran += 1;
            if job["state"] != "succeeded" {
                failed += 1;
                unavailable.extend(r.outputs.iter().map(|o| o.value.as_str()));
                if let Some(d) = job["diagnosis"].as_str() {
                    println!("  error: {d}");
                }
                println!(
                    "  its full log: capstan --home {} logs {}",
                    root.display(),
                    job["id"]
                );
                continue;
            }
        }
        if !targets.is_empty() {
            let (built, build_failed) = build_project(&client, &root, p, &targets, &store).await?;
            ran += built;
            failed += build_failed;
        }
    }
    if let Some(d) = daemon {
        d.stop(true).await;
    }
    println!();
    if !skipped.is_empty() {
        println!("left out:");
        for s in &skipped {
            println!("  {s}");
        }
        println!();
    }
    let h = root.display();
    if failed == 0 {
        println!(
            "{ran} recipe(s) succeeded. Next: `capstan --home {h} serve`, then `capstan --home {h} flow sample`, `capstan --home {h} build sample`, `capstan --home {h} run sample/hello` or `capstan --home {h} jobs`"
        );
        Ok(exit::OK)
    } else {
        println!("{failed} of {ran} recipe(s) failed");
        Ok(exit::FAILURE)
    }
}

/// Imports `projects/KEY/data/NAME.csv` for each declared dataset that no recipe builds and
/// that has no data yet.
fn import_shipped_data(root: &Path, home: &Home) -> anyhow::Result<()> {
    let store = ParquetStore::new(root);
    for p in home.projects.values() {
        for d in p.datasets.values() {
            let file = root
                .join("projects")
                .join(&p.key)
                .join("data")
                .join(format!("{}.csv", d.name));
            if flow::producer(p, &d.name).is_some()
                || !file.is_file()
                || matches!(store.info(&p.key, &d.name), Ok(Some(_)))
            {
                continue;
            }
            let (_, rows, _) = crate::datasets::import_file(root, &p.key, &d.name, &file, None)?;
            println!(
                "imported {}/{}: {rows} rows from {}",
                p.key,
                d.name,
                file.strip_prefix(root).unwrap_or(&file).display()
            );
        }
    }
    Ok(())
}

fn kind_of(home: &Home, p: &Project, r: &Recipe) -> Option<(ExecKind, Option<String>)> {
    capstan_core::resolve::resolve(home, &p.key, &r.name, &Default::default())
        .ok()
        .map(|res| (res.kind.value, res.exec_config.value))
}

/// The recipes that run in Docker containers: `(project, recipe)`.
fn container_recipes(home: &Home) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in home.projects.values() {
        for r in p.recipes.values() {
            if matches!(kind_of(home, p, r), Some((ExecKind::Docker, _))) {
                out.push((p.key.clone(), r.name.clone()));
            }
        }
    }
    out
}

/// The local Docker engine's name, or why there is none to use.
async fn local_engine() -> Result<String, String> {
    match tokio::time::timeout(
        Duration::from_secs(3),
        capstan_backend_docker::image_ops::Engine::connect(None),
    )
    .await
    {
        Ok(Ok(e)) => Ok(e.name),
        Ok(Err(e)) => Err(format!("no Docker engine answers ({e})")),
        Err(_) => Err("the Docker engine did not answer within 3s".into()),
    }
}

/// Builds the base and code environment images the container recipes need, with the image
/// commands' own progress. Returns whether every one was built.
async fn build_images(root: &Path, home: &Home, recipes: &[(String, String)]) -> bool {
    let mut bases = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for (p, r) in recipes {
        let Ok(res) = capstan_core::resolve::resolve(home, p, r, &Default::default()) else {
            continue;
        };
        if let Some(env) = res.code_env.value {
            envs.insert(env);
        }
        let config = res
            .exec_config
            .value
            .and_then(|c| home.exec_configs.get(&c));
        if let Some(base) = config
            .filter(|c| c.image.is_none())
            .and_then(|c| c.base_image.as_ref())
        {
            bases.insert(base.value.clone());
        }
    }
    let mut ok = true;
    for name in bases {
        println!("\n==> base image {name}");
        let args = BuildBaseArgs {
            name: name.clone(),
            no_push: true,
            cluster: None,
        };
        if let Err(e) = crate::images::build_base(root, &args).await {
            println!("  error: {e:#}");
            ok = false;
        }
    }
    for name in envs {
        println!("\n==> code environment {name}");
        let args = EnvBuildArgs {
            name: Some(name.clone()),
            rebuild_stale: false,
            no_push: true,
            cluster: None,
        };
        if let Err(e) = crate::images::build_env(root, &args).await {
            println!("  error: {e:#}");
            ok = false;
        }
    }
    ok
}

fn plan(
    home: &Home,
    p: &Project,
    r: &Recipe,
    images_ok: bool,
    store: &ParquetStore,
    unavailable: &BTreeSet<&str>,
) -> Plan {
    match kind_of(home, p, r) {
        None => return Plan::Skip("it does not resolve (see `capstan check`)".into()),
        Some((ExecKind::Kubernetes, config)) => {
            return Plan::Skip(format!(
                "runs on Kubernetes (exec config {}), which needs a cluster",
                config.unwrap_or_default()
            ));
        }
        Some((ExecKind::Docker, config)) if !images_ok => {
            return Plan::Skip(format!(
                "runs in a container (exec config {}): `capstan quickstart --containers`",
                config.unwrap_or_default()
            ));
        }
        _ => {}
    }
    for i in &r.inputs {
        let input = i.value.as_str();
        if unavailable.contains(input) {
            return Plan::Skip(format!("its input {input} was not built in this run"));
        }
        if flow::producer(p, input).is_none() && !matches!(store.info(&p.key, input), Ok(Some(_))) {
            return Plan::Skip(format!(
                "its input {input} has no data: `capstan dataset import {}/{input} FILE.csv`",
                p.key
            ));
        }
    }
    Plan::Run
}

/// Runs one recipe and waits for its end, showing what it prints on stdout (frameworks log on
/// stderr: that stays in the job's log).
async fn run_one(client: &Client, target: &str) -> anyhow::Result<serde_json::Value> {
    let args = RunArgs {
        target: target.to_string(),
        select: Default::default(),
        timeout: None,
        env: Vec::new(),
        detach: false,
        json: false,
    };
    let job = submit(client, &args).await?;
    let id = job["id"].as_i64().unwrap_or(0);
    client
        .logs(id, true, None, |l| {
            if !l.stderr {
                say!("  | {}", l.text);
            }
            Ok(())
        })
        .await?;
    wait_final(client, id).await
}

/// Builds `targets` of project `p` in one job, following its activities; returns how many
/// activities ran and how many of them failed.
async fn build_project(
    client: &Client,
    root: &Path,
    p: &Project,
    targets: &[String],
    store: &ParquetStore,
) -> anyhow::Result<(usize, usize)> {
    println!();
    println!("==> capstan build {}", {
        let t: Vec<String> = targets.iter().map(|t| format!("{}/{t}", p.key)).collect();
        t.join(" ")
    });
    let answer = client
        .post(
            &format!("/api/v1/projects/{}/builds", p.key),
            &serde_json::json!({"targets": targets}),
        )
        .await?;
    crate::flows::print_plan(&answer)?;
    let Some(id) = answer["job"]["id"].as_i64() else {
        println!("  everything is up to date: nothing to run");
        return Ok((0, 0));
    };
    let job = crate::flows::watch(client, id, |line| println!("{line}")).await?;
    println!("{}", crate::flows::build_summary(&job));
    let mut failed = 0;
    let acts = job["activities"].as_array().cloned().unwrap_or_default();
    for a in &acts {
        if a["state"] != "succeeded" {
            failed += 1;
            continue;
        }
        // A distributed search's parts made one version: shown once.
        if a["part"].as_u64().is_some_and(|n| n > 1) {
            continue;
        }
        let recipe = a["recipe"].as_str().unwrap_or("");
        if let Some(r) = p.recipes.get(recipe) {
            for o in &r.outputs {
                if p.models.contains_key(&o.value) {
                    show_model(root, &p.key, &o.value);
                } else {
                    show_result(store, &p.key, &o.value);
                }
            }
        }
    }
    if failed > 0 {
        println!(
            "  the logs: capstan --home {} logs {id} --activity RECIPE",
            root.display()
        );
    }
    Ok((acts.len(), failed))
}

/// The version of a saved model a training wrote, and whether it became the active one.
fn show_model(root: &Path, project: &str, model: &str) {
    let models = capstan_data::models::ModelStore::new(root);
    let active = models.active(project, model);
    match models
        .latest(project, model)
        .map(|n| models.version(project, model, n))
    {
        Some(Ok(Some(v))) => println!(
            "  {project}/{model}: saved model v{}{}, {} {}, {} {:.4} on {} (`capstan --home {} model show {project}/{model}`)",
            v.version,
            if active == Some(v.version) {
                " (active)"
            } else {
                ""
            },
            v.train_info["algorithm"].as_str().unwrap_or("?"),
            v.train_info["params"],
            v.metrics["metric"].as_str().unwrap_or("?"),
            v.metrics["score"].as_f64().unwrap_or(f64::NAN),
            v.metrics["evaluation"].as_str().unwrap_or("?"),
            root.display(),
        ),
        Some(Err(e)) => println!("  {project}/{model}: cannot read its versions: {e}"),
        _ => println!("  {project}/{model}: no version saved"),
    }
}

/// A few rows of a dataset a recipe wrote.
fn show_result(store: &ParquetStore, project: &str, dataset: &str) {
    let rows = store
        .read(project, dataset, None, Some(RESULT_ROWS))
        .and_then(|reader| reader.collect::<Result<Vec<_>, _>>().map_err(Into::into));
    match rows {
        Ok(batches) => {
            println!("  {project}/{dataset}:");
            for line in capstan_data::display::table(&batches).lines() {
                println!("    {line}");
            }
        }
        Err(e) => println!("  {project}/{dataset}: cannot read it back: {e}"),
    }
}
