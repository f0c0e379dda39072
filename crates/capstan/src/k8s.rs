//! `capstan k8s render`: the objects a run would create, without a cluster.

use std::path::Path;

use anyhow::bail;
use capstan_core::model::ExecKind;
use capstan_core::resolve::{ResolveError, RunRequest, resolve};

use crate::cli::K8sRenderArgs;
use crate::explain::parse_target;
use crate::home::load_valid;
use crate::{Exit, exit};

pub fn render(root: &Path, args: &K8sRenderArgs) -> anyhow::Result<u8> {
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
                match e.help() {
                    Some(h) => eprintln!("error: {e} ({h})"),
                    None => eprintln!("error: {e}"),
                }
            }
            let denied = errors
                .iter()
                .all(|e| matches!(e, ResolveError::PermissionDenied { .. }));
            return Err(Exit(if denied { exit::DENIED } else { exit::FAILURE }).into());
        }
    };
    if r.kind.value != ExecKind::Kubernetes {
        bail!(
            "{project}/{recipe} runs with {} execution (exec config {}), not on Kubernetes: pass --exec-config with a kubernetes configuration",
            r.kind.value,
            r.exec_config.value.as_deref().unwrap_or("none")
        );
    }
    // Job 0: what a run would look like, before it has a number.
    let spec = capstan_engine::spec_from(&home, root, &r, 0, 0, root.join("state/jobs/0/a0-0"));
    let namespace = spec.namespace.clone().unwrap_or_default();
    let objects =
        capstan_backend_k8s::render::render(&spec, &capstan_core::instance_id(root), &namespace)
            .map_err(anyhow::Error::msg)?;
    print!(
        "{}",
        capstan_backend_k8s::render::to_yaml(&objects).map_err(anyhow::Error::msg)?
    );
    Ok(exit::OK)
}
