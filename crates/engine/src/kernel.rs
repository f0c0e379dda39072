//! Notebook kernels as activities.
//!
//! A kernel is a job of its project like a recipe's run, with [`capstan_core::job::KERNEL_RECIPE`] in place of a
//! recipe: it is resolved from its kernelspec's code environment and execution configuration
//! (and the project's and instance's defaults), queued within the configuration's
//! `max_concurrent`, run by the configuration's backend with its limits and image, shown by
//! `capstan jobs`, and ended by a cancel. What runs is capstan's kernel agent
//! (`python/capstan/capstan/kernel.py`, embedded in the binary), which starts ipykernel next to
//! itself and dials out to the daemon; the kernel's id reaches it as `CAPSTAN_KERNEL_ID`.

use std::path::PathBuf;

use capstan_core::access::check;
use capstan_core::model::{CodeEnv, EnvLanguage, Home, Permission, RecipeKind};
use capstan_core::resolve::{Resolution, ResolveError, RunRequest, resolve_kernel};
use capstan_store::JobRow;

use crate::backend::{ActivitySpec, Workload};
use crate::{Caller, Engine, EngineError, resolve_error};

/// The environment variable that names the kernel to its agent.
pub const KERNEL_ID_VAR: &str = "CAPSTAN_KERNEL_ID";
/// The environment variable that tells the agent where its user's notebook files are kept
/// (set by each backend that keeps them: a folder, a Docker volume, a PVC).
pub const KERNEL_WORKDIR_VAR: &str = "CAPSTAN_KERNEL_WORKDIR";

/// A kernel to start: where, on what, and the id the gateway gave it.
#[derive(Clone, Debug)]
pub struct KernelRequest {
    pub project: String,
    /// `None`: the configuration's base image's own Python (`with_jupyter` on the base image).
    pub code_env: Option<String>,
    pub exec_config: String,
    pub kernel_id: String,
}

/// Whether `caller` may start kernels of `code_env` on `exec_config` in `project`: the
/// resolution such a kernel would have, or why not.
pub fn kernel_resolution(
    home: &Home,
    caller: &Caller,
    project: &str,
    code_env: Option<&str>,
    exec_config: &str,
) -> Result<Resolution, Vec<ResolveError>> {
    let request = RunRequest {
        user: caller.in_home.then(|| caller.name.clone()),
        exec_config: Some(exec_config.to_string()),
        code_env: code_env.map(str::to_string),
        ..RunRequest::default()
    };
    resolve_kernel(home, project, &request)
}

/// Whether execution configuration `config` runs on a base image with `with_jupyter`.
pub fn base_has_jupyter(home: &Home, config: &str) -> bool {
    home.exec_configs
        .get(config)
        .and_then(|c| c.base_image.as_ref())
        .and_then(|b| home.base_images.get(&b.value))
        .is_some_and(|b| b.with_jupyter)
}

impl Engine {
    /// Resolves, checks and queues a kernel: a job whose one activity runs the kernel's agent.
    pub fn start_kernel(&self, caller: &Caller, k: &KernelRequest) -> Result<JobRow, EngineError> {
        let home = self.inner.home.fresh_now();
        if !caller.admin {
            check(&home, &k.project, &caller.name, false, Permission::Run)
                .map_err(|d| EngineError::Denied(d.message))?;
        }
        match &k.code_env {
            Some(env) if !home.code_envs.get(env).is_some_and(|e| e.with_jupyter) => {
                return Err(EngineError::NotFound(format!(
                    "code environment `{env}` has no Jupyter kernel: set `with_jupyter = true` on it in images.toml"
                )));
            }
            None if !base_has_jupyter(&home, &k.exec_config) => {
                return Err(EngineError::NotFound(format!(
                    "execution configuration `{}` has no base image with a Jupyter kernel: set `with_jupyter = true` on its base image in images.toml, or name a code environment",
                    k.exec_config
                )));
            }
            _ => {}
        }
        let mut request = RunRequest {
            user: caller.in_home.then(|| caller.name.clone()),
            exec_config: Some(k.exec_config.clone()),
            code_env: k.code_env.clone(),
            ..RunRequest::default()
        };
        request
            .env
            .insert(KERNEL_ID_VAR.to_string(), k.kernel_id.clone());
        let resolution = resolve_kernel(&home, &k.project, &request).map_err(resolve_error)?;
        let job = self.queue(&home, caller, &request, &resolution)?;
        tracing::info!(job_id = job.id, project = %k.project, kernel = %k.kernel_id, user = %caller.name, "kernel queued");
        Ok(job)
    }
}

/// The Jupyter kernelspec the agent starts for an environment: IRkernel's (`ir`, which Debian's
/// r-cran-irkernel installs) for an R environment, the interpreter's own ipykernel otherwise.
pub fn kernel_name(code_env: Option<&CodeEnv>) -> &'static str {
    match code_env.map(|e| e.language.value) {
        Some(EnvLanguage::R) => "ir",
        _ => "python3",
    }
}

/// Makes a kernel's spec run the agent: generated code in place of a recipe's, and no timeout
/// (an idle kernel is culled by the gateway instead; a busy one is the user's work). The agent
/// is Python in every image (an R environment's image has ipykernel's Python side for it).
pub(crate) fn stage_agent(spec: &mut ActivitySpec) {
    let name = "capstan_kernel.py".to_string();
    spec.workload = Workload::Generated {
        name: name.clone(),
        source: format!(
            "{}\n\nmain(__import__(\"os\").environ[\"{KERNEL_ID_VAR}\"], {:?})\n",
            capstan_core::PYTHON_KERNEL_AGENT,
            kernel_name(spec.code_env.as_ref()),
        ),
    };
    spec.code_file = Some(PathBuf::from(name));
    spec.recipe_kind = RecipeKind::Python;
    spec.timeout = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_is_called_with_the_kernel_id_from_its_environment() {
        let mut spec = ActivitySpec::bare(
            1,
            0,
            PathBuf::from("/x"),
            PathBuf::from("/h"),
            capstan_core::model::ExecKind::Local,
        );
        spec.timeout = Some(capstan_core::quantity::Duration::from_secs(60));
        stage_agent(&mut spec);
        let Workload::Generated { name, source } = &spec.workload else {
            panic!("not generated: {:?}", spec.workload);
        };
        assert_eq!(name, "capstan_kernel.py");
        assert!(source.contains("class Agent"), "{source}");
        assert!(
            source.ends_with(
                "main(__import__(\"os\").environ[\"CAPSTAN_KERNEL_ID\"], \"python3\")\n"
            ),
            "{source}"
        );
        assert_eq!(spec.timeout, None);
        assert_eq!(spec.recipe_kind, RecipeKind::Python);

        // An R environment's kernel is IRkernel, still started by the (Python) agent.
        let mut env = CodeEnv::managed("r-nb", "R", []);
        env.language.value = EnvLanguage::R;
        env.with_jupyter = true;
        spec.code_env = Some(env);
        spec.recipe_kind = RecipeKind::R;
        stage_agent(&mut spec);
        let Workload::Generated { source, .. } = &spec.workload else {
            panic!("not generated: {:?}", spec.workload);
        };
        assert!(source.ends_with(", \"ir\")\n"), "{source}");
        assert_eq!(spec.recipe_kind, RecipeKind::Python);
    }
}
