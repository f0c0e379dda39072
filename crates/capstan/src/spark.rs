//! `capstan spark render`: the spark-submit a Spark recipe would run.

use std::path::Path;

use anyhow::bail;
use capstan_core::model::RecipeKind;
use capstan_core::resolve::{RunRequest, resolve};

use crate::cli::SparkRenderArgs;
use crate::explain::parse_target;
use crate::home::load_valid;
use crate::{Exit, exit};

pub fn render(root: &Path, args: &SparkRenderArgs) -> anyhow::Result<u8> {
    let (project, recipe) = parse_target(&args.target)?;
    let home = load_valid(root)?;
    let request = RunRequest {
        user: args.user.clone(),
        exec_config: args.select.exec_config.clone(),
        cluster: args.select.cluster.clone(),
        spark_config: args.select.spark_config.clone(),
        code_env: args.select.code_env.clone(),
        ..RunRequest::default()
    };
    let r = match resolve(&home, project, recipe, &request) {
        Ok(r) => r,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return Err(Exit(exit::FAILURE).into());
        }
    };
    if !r.recipe_kind.is_spark() {
        bail!(
            "{project}/{recipe} is a {} recipe, not a Spark one",
            r.recipe_kind.as_str()
        );
    }
    // As the local backend stages it: the work folder of job 0.
    let work = root.join("state/jobs/0/a0-0/work");
    let spec = capstan_engine::spec_from(
        &home,
        root,
        &r,
        0,
        0,
        work.parent().unwrap_or(root).to_path_buf(),
    );
    let code = spec.code_file.clone().unwrap_or_default();
    let staged = work.join(code.file_name().unwrap_or_default());
    let (app, app_args) = match r.recipe_kind {
        RecipeKind::SparkSql => (
            work.join("capstan_sql_runner.py"),
            vec![staged.display().to_string()],
        ),
        _ => (staged, Vec::new()),
    };
    let template = work.join("executor-pod.yaml");
    let submission =
        capstan_spark::submission(&spec, &app, &app_args, &template).map_err(anyhow::Error::msg)?;
    println!("{}", capstan_spark::command_line(&submission.args));
    if let Some(gap) = spec.spark.as_ref().and_then(capstan_spark::kubernetes_gap) {
        eprintln!("warning: a run would fail now: {gap}");
    }
    if let Some(t) = submission.pod_template {
        println!();
        println!("# {}", template.display());
        print!("{t}");
    }
    Ok(exit::OK)
}
