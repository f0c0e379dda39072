//! `capstan spark render`: the spark-submit a Spark recipe would run.

use std::path::Path;

use crate::cli::SparkRenderArgs;
use crate::exit;
use crate::explain::resolve_target;
use anyhow::bail;

pub fn render(root: &Path, args: &SparkRenderArgs) -> anyhow::Result<u8> {
    let (home, r) = resolve_target(root, &args.target, &args.user, &args.select)?;
    let (project, recipe) = (&r.project, &r.recipe);
    if !r.recipe_kind.is_spark() {
        bail!(
            "{project}/{recipe} is a {} recipe, not a Spark one",
            r.recipe_kind.as_str()
        );
    }
    let spec = capstan_engine::spec_from(&home, root, &r, 0, 0, root.join("state/jobs/0/a0-0"));
    if spec.kind == capstan_core::model::ExecKind::Kubernetes {
        // The driver runs in a pod: its command is the one `k8s render` shows, with its objects.
        let ns = spec.namespace.clone().unwrap_or_default();
        let objects =
            capstan_backend_k8s::render::render(&spec, &capstan_core::instance_id(root), &ns)
                .map_err(anyhow::Error::msg)?;
        let pod_spec = objects.pod.spec.as_ref();
        let driver = pod_spec.and_then(|p| p.containers.first());
        let command = driver.and_then(|c| c.command.clone()).unwrap_or_default();
        println!(
            "{}",
            capstan_spark::command_line(command.get(1..).unwrap_or_default())
        );
        let limits = driver
            .and_then(|c| c.resources.as_ref())
            .and_then(|r| r.limits.as_ref());
        let limit = |k: &str| {
            limits
                .and_then(|l| l.get(k))
                .map_or("-".to_string(), |q| q.0.clone())
        };
        println!();
        println!(
            "# The driver runs it in pod {} in namespace {ns} (kubeconfig context {}), image {}, cpu {}, memory {}, service account {}.",
            objects.pod.metadata.name.as_deref().unwrap_or(""),
            spec.kube_context.as_deref().unwrap_or("current"),
            driver.and_then(|c| c.image.as_deref()).unwrap_or(""),
            limit("cpu"),
            limit("memory"),
            pod_spec
                .and_then(|p| p.service_account_name.as_deref())
                .unwrap_or("default"),
        );
        println!("# `capstan k8s render {project}/{recipe}` shows the pod and its objects.");
        let template = objects
            .code
            .binary_data
            .as_ref()
            .and_then(|d| d.get(capstan_spark::EXECUTOR_TEMPLATE));
        if let Some(t) = template {
            println!();
            println!(
                "# {}/{}",
                capstan_backend_k8s::render::WORK_DIR,
                capstan_spark::EXECUTOR_TEMPLATE
            );
            print!("{}", String::from_utf8_lossy(&t.0));
        }
        return Ok(exit::OK);
    }
    let code = spec.code_file.clone().unwrap_or_default();
    let code_file = code.file_name().unwrap_or_default().to_string_lossy();
    if spec.kind == capstan_core::model::ExecKind::Docker {
        // Inside the recipe's container, where the code is unpacked.
        let submission = capstan_spark::container_command(
            &spec,
            capstan_backend_docker::render::WORK_DIR,
            &code_file,
        )
        .map_err(anyhow::Error::msg)?;
        println!(
            "{}",
            capstan_spark::command_line(submission.args.get(1..).unwrap_or_default())
        );
        println!();
        println!(
            "# Runs in a container of execution configuration {}, image {}.",
            spec.exec_config.as_deref().unwrap_or(""),
            spec.image.as_deref().unwrap_or("(none)")
        );
        return Ok(exit::OK);
    }
    // As the local backend stages it: the work folder of job 0.
    let work = spec.dir.join("work");
    let submission = capstan_spark::submission(&spec, &work.display().to_string(), &code_file)
        .map_err(anyhow::Error::msg)?;
    println!("{}", capstan_spark::command_line(&submission.args));
    Ok(exit::OK)
}
