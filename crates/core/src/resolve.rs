//! Resolution: the effective settings of one run, each with the layer and file that set it.
//!
//! Lowest to highest: built-in defaults → instance (`capstan.toml` `[defaults]`, and the chosen
//! execution configuration and cluster themselves) → project → recipe → run request. A layer
//! that does not set a value never erases a lower one. *How* (the execution configuration) and
//! *where* (the cluster) are chosen independently, then checked for compatibility.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::diag::{FileId, Loc};
use crate::model::*;
use crate::quantity::{Cpu, Duration, Memory};
use crate::toml_read::unknown_help;

/// The layers of resolution, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    Builtin,
    Instance,
    Project,
    Recipe,
    Request,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Builtin => "builtin",
            Layer::Instance => "instance",
            Layer::Project => "project",
            Layer::Recipe => "recipe",
            Layer::Request => "request",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an effective value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub layer: Layer,
    /// File relative to the home, and line; `None` for built-in defaults and run requests.
    pub file: Option<PathBuf>,
    pub line: u32,
    /// The object that carried the value, e.g. `exec_config 'small'`, when not a layer setting.
    pub via: Option<String>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.layer.as_str())?;
        if let Some(via) = &self.via {
            write!(f, ", {via}")?;
        }
        if let Some(file) = &self.file {
            write!(f, " ({}:{})", file.display(), self.line)?;
        }
        Ok(())
    }
}

/// An effective value and its origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

/// What a run request may override (`capstan run --exec-config X --cluster Y`, the API).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunRequest {
    pub user: Option<String>,
    pub exec_config: Option<String>,
    pub cluster: Option<String>,
    pub spark_config: Option<String>,
    pub code_env: Option<String>,
    pub timeout: Option<Duration>,
    pub env: BTreeMap<String, String>,
}

/// The effective settings of one recipe run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub project: String,
    pub recipe: String,
    pub recipe_kind: RecipeKind,
    pub user: Option<String>,
    /// `None` means the built-in local execution (no container, no limits).
    pub exec_config: Setting<Option<String>>,
    pub kind: Setting<ExecKind>,
    /// `None` for local execution, or where the engine's own default is used.
    pub cluster: Setting<Option<String>>,
    pub spark_config: Setting<Option<String>>,
    pub code_env: Setting<Option<String>>,
    pub image: Setting<Option<String>>,
    pub registry: Setting<Option<String>>,
    pub docker_host: Setting<Option<String>>,
    pub context: Setting<Option<String>>,
    pub namespace: Setting<Option<String>>,
    pub cpu_request: Setting<Option<Cpu>>,
    pub cpu_limit: Setting<Option<Cpu>>,
    pub memory_request: Setting<Option<Memory>>,
    pub memory_limit: Setting<Option<Memory>>,
    pub gpus: Setting<u32>,
    pub timeout: Setting<Option<Duration>>,
    pub env: BTreeMap<String, Setting<String>>,
}

impl Resolution {
    /// Whether the recipe runs on Spark: a Spark recipe always, a visual recipe where a Spark
    /// configuration was chosen for it.
    pub fn on_spark(&self) -> bool {
        self.recipe_kind.is_spark()
            || (self.recipe_kind.is_visual() && self.spark_config.value.is_some())
    }
}

/// Why a run cannot be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown project `{name}`")]
    UnknownProject { name: String, help: String },
    #[error("unknown recipe `{name}` in project `{project}`")]
    UnknownRecipe {
        project: String,
        name: String,
        help: String,
    },
    #[error("unknown user `{name}`")]
    UnknownUser { name: String, help: String },
    /// A setting that cannot work: an unknown name, an incompatible pair, a value above a limit.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
        help: Option<String>,
        /// Where the offending value was written (absent for run-request values).
        loc: Option<Loc>,
    },
    #[error(
        "user `{user}` may not use {what} `{name}`: allowed groups are {} (and admins); {user} is in {}",
        list_or(allowed_groups, "none"),
        list_or(user_groups, "no group")
    )]
    PermissionDenied {
        user: String,
        what: &'static str,
        name: String,
        allowed_groups: Vec<String>,
        user_groups: Vec<String>,
    },
}

impl ResolveError {
    pub fn help(&self) -> Option<&str> {
        match self {
            ResolveError::UnknownProject { help, .. }
            | ResolveError::UnknownRecipe { help, .. }
            | ResolveError::UnknownUser { help, .. } => Some(help),
            ResolveError::Invalid { help, .. } => help.as_deref(),
            ResolveError::PermissionDenied { .. } => None,
        }
    }
}

fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        return empty.to_string();
    }
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        [] => unreachable!(),
    }
}

/// A synthetic location for values that come from a run request, not from a file.
const REQUEST_FILE: FileId = FileId(u32::MAX);

fn request_loc() -> Loc {
    Loc {
        file: REQUEST_FILE,
        line: 0,
        col: 0,
    }
}

impl RunRequest {
    /// The request as a layer, so it goes through the same precedence code as the others.
    fn as_layer(&self) -> LayerSettings {
        let s = |v: &Option<String>| {
            v.clone().map(|value| Sourced {
                value,
                loc: request_loc(),
            })
        };
        LayerSettings {
            exec_config: s(&self.exec_config),
            cluster: s(&self.cluster),
            spark_config: s(&self.spark_config),
            code_env: s(&self.code_env),
            timeout: self.timeout.map(|value| Sourced {
                value,
                loc: request_loc(),
            }),
            env: self
                .env
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Sourced {
                            value: v.clone(),
                            loc: request_loc(),
                        },
                    )
                })
                .collect(),
            ..LayerSettings::default()
        }
    }
}

/// Resolves one run of `project/recipe`.
pub fn resolve(
    home: &Home,
    project: &str,
    recipe: &str,
    request: &RunRequest,
) -> Result<Resolution, Vec<ResolveError>> {
    let p = project_of(home, project)?;
    let Some(r) = p.recipes.get(recipe) else {
        let names: Vec<&str> = p.recipes.keys().map(String::as_str).collect();
        return Err(vec![ResolveError::UnknownRecipe {
            project: project.to_string(),
            name: recipe.to_string(),
            help: unknown_help(recipe, &names, "recipe"),
        }]);
    };
    resolve_recipe(home, p, r, request)
}

/// Resolves a run of `recipe` of `project`: the request over the recipe, the project and the
/// instance.
fn resolve_recipe(
    home: &Home,
    project: &Project,
    recipe: &Recipe,
    request: &RunRequest,
) -> Result<Resolution, Vec<ResolveError>> {
    let request_layer = request.as_layer();
    let r = Resolver {
        home,
        project,
        recipe,
        layers: [
            (Layer::Request, &request_layer),
            (Layer::Recipe, &recipe.settings),
            (Layer::Project, &project.settings),
            (Layer::Instance, &home.instance.defaults),
        ],
        errors: Vec::new(),
    };
    r.run(request)
}

/// Resolves a notebook kernel of `project` (its code environment and execution configuration in
/// `request`, from the kernelspec): an activity with no recipe of its own, so its settings
/// come from the request, the project's defaults and the instance's, as a recipe's would. An R
/// environment's kernel (IRkernel) runs only in a container, where the environment's image has
/// it.
pub fn resolve_kernel(
    home: &Home,
    project: &str,
    request: &RunRequest,
) -> Result<Resolution, Vec<ResolveError>> {
    let p = project_of(home, project)?;
    let env = request
        .code_env
        .as_ref()
        .and_then(|e| home.code_envs.get(e));
    let kind = match env.map(|e| e.language.value) {
        Some(EnvLanguage::R) => RecipeKind::R,
        _ => RecipeKind::Python,
    };
    let r = resolve_recipe(home, p, &kernel_recipe(kind), request)?;
    if let Some(env) = env
        && kind == RecipeKind::R
        && r.kind.value == ExecKind::Local
    {
        return Err(vec![ResolveError::Invalid {
            field: "exec_config",
            message: format!(
                "R kernels run in containers, where code environment `{}`'s image has IRkernel; execution configuration `{}` runs local processes",
                env.name,
                r.exec_config.value.as_deref().unwrap_or("local")
            ),
            help: Some("choose a Docker or Kubernetes configuration".into()),
            loc: None,
        }]);
    }
    Ok(r)
}

fn project_of<'h>(home: &'h Home, project: &str) -> Result<&'h Project, Vec<ResolveError>> {
    home.projects.get(project).ok_or_else(|| {
        let keys: Vec<&str> = home.projects.keys().map(String::as_str).collect();
        vec![ResolveError::UnknownProject {
            name: project.to_string(),
            help: unknown_help(project, &keys, "project"),
        }]
    })
}

/// What a notebook kernel's activity is, as a recipe of `kind` (its kernel's language), with no
/// code file, inputs or settings of its own.
pub fn kernel_recipe(kind: RecipeKind) -> Recipe {
    Recipe {
        name: crate::job::KERNEL_RECIPE.to_string(),
        loc: Loc::NOWHERE,
        description: None,
        kind: Sourced {
            value: kind,
            loc: Loc::NOWHERE,
        },
        code: None,
        inputs: Vec::new(),
        outputs: Vec::new(),
        settings: LayerSettings::default(),
        visual: None,
        ml: None,
    }
}

struct Resolver<'h> {
    home: &'h Home,
    project: &'h Project,
    recipe: &'h Recipe,
    /// Highest first.
    layers: [(Layer, &'h LayerSettings); 4],
    errors: Vec<ResolveError>,
}

impl<'h> Resolver<'h> {
    fn origin(&self, layer: Layer, loc: Loc, via: Option<String>) -> Origin {
        if loc.file == REQUEST_FILE {
            return Origin {
                layer,
                file: None,
                line: 0,
                via,
            };
        }
        Origin {
            layer,
            file: Some(self.home.sources.path(loc.file).to_path_buf()),
            line: loc.line,
            via,
        }
    }

    fn builtin<T>(&self, value: T, via: Option<String>) -> Setting<T> {
        Setting {
            value,
            origin: Origin {
                layer: Layer::Builtin,
                file: None,
                line: 0,
                via,
            },
        }
    }

    /// The value of the highest layer that sets `get`.
    fn pick<T: Clone + 'h>(
        &self,
        get: impl Fn(&'h LayerSettings) -> Option<&'h Sourced<T>>,
    ) -> Option<Setting<T>> {
        self.layers.iter().find_map(|(layer, settings)| {
            get(settings).map(|s| Setting {
                value: s.value.clone(),
                origin: self.origin(*layer, s.loc, None),
            })
        })
    }

    /// A value from a configuration object (an execution configuration, a cluster), which
    /// admins define at the instance layer.
    fn object_value<T: Clone>(&self, s: &Sourced<T>, via: String) -> Setting<T> {
        Setting {
            value: s.value.clone(),
            origin: self.origin(Layer::Instance, s.loc, Some(via)),
        }
    }

    fn invalid(&mut self, field: &'static str, at: &Origin, message: String, help: Option<String>) {
        // Point at the file and line that made the choice, so `check` can report it there.
        let loc = at.file.as_ref().and_then(|f| self.home_loc(f, at.line));
        self.errors.push(ResolveError::Invalid {
            field,
            message,
            help,
            loc,
        });
    }

    fn home_loc(&self, file: &std::path::Path, line: u32) -> Option<Loc> {
        self.home.sources.find(file).map(|id| Loc {
            file: id,
            line,
            col: 1,
        })
    }

    fn run(mut self, request: &RunRequest) -> Result<Resolution, Vec<ResolveError>> {
        let home = self.home;
        let user = match &request.user {
            None => None,
            Some(name) => match home.users.get(name) {
                Some(u) => Some(u),
                None => {
                    let names: Vec<&str> = home.users.keys().map(String::as_str).collect();
                    return Err(vec![ResolveError::UnknownUser {
                        name: name.clone(),
                        help: unknown_help(name, &names, "user"),
                    }]);
                }
            },
        };

        // The Spark configuration: a plain selection. One on Kubernetes decides where a Spark
        // recipe runs: its driver is a pod, so no execution configuration applies.
        let spark_choice = self.pick(|l| l.spark_config.as_ref());
        let spark = spark_choice
            .as_ref()
            .and_then(|choice| home.spark_configs.get(&choice.value));
        if let (Some(choice), None) = (&spark_choice, spark) {
            let names: Vec<&str> = home.spark_configs.keys().map(String::as_str).collect();
            let o = choice.origin.clone();
            self.invalid(
                "spark_config",
                &o,
                format!("unknown Spark configuration `{}`", choice.value),
                Some(unknown_help(&choice.value, &names, "Spark configuration")),
            );
        }
        // Spark recipes run on Spark; a visual recipe does where a Spark configuration is
        // chosen for it (at any layer), else on capstan's built-in engine.
        let kind_value = self.recipe.kind.value;
        let on_spark = kind_value.is_spark() || (kind_value.is_visual() && spark.is_some());
        let spark_config = match spark_choice {
            Some(s) if spark.is_some() => Setting {
                value: Some(s.value),
                origin: s.origin,
            },
            _ => self.builtin(
                None,
                Some(if kind_value.is_spark() {
                    "local Spark".into()
                } else if kind_value.is_visual() {
                    "no Spark configuration: the built-in engine".into()
                } else {
                    "not a Spark recipe".into()
                }),
            ),
        };

        let spark_k8s = spark.filter(|s| on_spark && s.master.value == SparkMaster::Kubernetes);

        // How: the execution configuration.
        let mut exec_choice = self.pick(|l| l.exec_config.as_ref());
        if let (Some(s), Some(choice)) = (spark_k8s, &exec_choice) {
            // Inherited from the project or the instance, it simply does not apply; chosen for
            // this recipe or this run, it is a mistake.
            if matches!(choice.origin.layer, Layer::Recipe | Layer::Request) {
                let o = choice.origin.clone();
                self.invalid(
                    "exec_config",
                    &o,
                    format!(
                        "Spark configuration `{}` runs the driver of Spark recipe `{}` as a pod on Kubernetes: execution configuration `{}` would not be used",
                        s.name, self.recipe.name, choice.value
                    ),
                    Some("give the recipe no exec_config: its Spark configuration says where Spark runs".into()),
                );
            }
            exec_choice = None;
        }
        let exec = match &exec_choice {
            Some(choice) => match home.exec_configs.get(&choice.value) {
                Some(c) => Some(c),
                None => {
                    let names: Vec<&str> = home.exec_configs.keys().map(String::as_str).collect();
                    let o = choice.origin.clone();
                    self.invalid(
                        "exec_config",
                        &o,
                        format!("unknown execution configuration `{}`", choice.value),
                        Some(unknown_help(
                            &choice.value,
                            &names,
                            "execution configuration",
                        )),
                    );
                    None
                }
            },
            None => None,
        };
        let exec_config = match (&exec_choice, exec) {
            (Some(choice), Some(_)) => Setting {
                value: Some(choice.value.clone()),
                origin: choice.origin.clone(),
            },
            _ => self.builtin(
                None,
                Some(match spark_k8s {
                    Some(s) => format!("spark_config '{}' runs the driver as a pod", s.name),
                    None => "no execution configuration: local processes".into(),
                }),
            ),
        };
        let via_exec = |c: &ExecConfig| format!("exec_config '{}'", c.name);
        let kind = match (exec, spark_k8s) {
            (_, Some(s)) => Setting {
                value: ExecKind::Kubernetes,
                origin: Origin {
                    via: Some(format!("spark_config '{}', master = kubernetes", s.name)),
                    ..spark_config.origin.clone()
                },
            },
            (Some(c), None) => self.object_value(&c.kind, via_exec(c)),
            (None, None) => self.builtin(ExecKind::Local, None),
        };

        // Where: the cluster, chosen independently, then checked against the kind (and against
        // what chose the kind: the execution configuration, or a Spark configuration).
        let cluster_choice = self.pick(|l| l.cluster.as_ref());
        let (chooser, chooser_origin) = match spark_k8s {
            Some(s) => (
                format!("Spark configuration `{}`", s.name),
                spark_config.origin.clone(),
            ),
            None => (
                format!(
                    "{} execution configuration `{}`",
                    kind.value,
                    exec_config.value.as_deref().unwrap_or("")
                ),
                exec_config.origin.clone(),
            ),
        };
        let mut cluster: Option<&Cluster> = None;
        let mut ignored: Option<String> = None;
        if let Some(choice) = &cluster_choice {
            match home.clusters.get(&choice.value) {
                None => {
                    let names: Vec<&str> = home.clusters.keys().map(String::as_str).collect();
                    let o = choice.origin.clone();
                    self.invalid(
                        "cluster",
                        &o,
                        format!("unknown cluster `{}`", choice.value),
                        Some(unknown_help(&choice.value, &names, "cluster")),
                    );
                }
                // A Spark configuration on Kubernetes decides where its recipes run: a Docker
                // cluster inherited from the project or the instance (for their other recipes)
                // does not apply; one chosen for this recipe or this run is a mistake.
                Some(c)
                    if spark_k8s.is_some()
                        && c.kind() != ExecKind::Kubernetes
                        && !matches!(choice.origin.layer, Layer::Recipe | Layer::Request) =>
                {
                    ignored = Some(format!(
                        "{} cluster '{}' ({}) does not apply to {chooser}",
                        c.kind(),
                        c.name,
                        choice.origin,
                    ));
                }
                Some(c) if spark_k8s.is_some() && c.kind() != ExecKind::Kubernetes => {
                    let o = choice.origin.clone();
                    self.invalid(
                        "cluster",
                        &o,
                        format!("{chooser} runs on Kubernetes, not on {} cluster `{}`", c.kind(), c.name),
                        Some("choose a kubernetes cluster, or none for the kubeconfig's current context".into()),
                    );
                }
                Some(c) if kind.value == ExecKind::Local => {
                    // Local execution runs no container, so a cluster simply does not apply.
                    ignored = Some(format!(
                        "cluster '{}' ({}) is not used by local execution",
                        c.name, choice.origin
                    ));
                }
                // A cluster inherited from a lower layer than the configuration gives way to
                // it: a recipe that picks a docker configuration in a project whose default
                // cluster is Kubernetes runs on Docker. Chosen at the same or a higher layer,
                // the pair is a mistake.
                Some(c) if c.kind() != kind.value && choice.origin.layer < chooser_origin.layer => {
                    ignored = Some(format!(
                        "{} cluster '{}' ({}) does not apply to {chooser}",
                        c.kind(),
                        c.name,
                        choice.origin,
                    ));
                }
                Some(c) if c.kind() != kind.value => {
                    let o = choice.origin.clone();
                    self.invalid(
                        "cluster",
                        &o,
                        format!("{chooser} cannot run on {} cluster `{}`", c.kind(), c.name),
                        Some(format!(
                            "choose a {} cluster, or a {} execution configuration (exec config set by {}, cluster set by {})",
                            kind.value,
                            c.kind(),
                            chooser_origin,
                            choice.origin
                        )),
                    );
                }
                Some(c) => cluster = Some(c),
            }
        }
        let cluster_setting = match (&cluster_choice, cluster) {
            (Some(choice), Some(_)) => Setting {
                value: Some(choice.value.clone()),
                origin: choice.origin.clone(),
            },
            _ => {
                let default = match kind.value {
                    ExecKind::Local => "local execution uses no cluster",
                    ExecKind::Docker => "the local Docker engine",
                    ExecKind::Kubernetes => "the kubeconfig's current context",
                };
                let note = match ignored {
                    Some(why) => format!("{default}; {why}"),
                    None => default.to_string(),
                };
                self.builtin(None, Some(note))
            }
        };

        // Code environment: a plain selection.
        let env_choice = self.pick(|l| l.code_env.as_ref());
        let code_env = env_choice
            .as_ref()
            .and_then(|c| home.code_envs.get(&c.value));
        if let Some(choice) = &env_choice {
            let o = choice.origin.clone();
            match code_env {
                None => {
                    let names: Vec<&str> = home.code_envs.keys().map(String::as_str).collect();
                    self.invalid(
                        "code_env",
                        &o,
                        format!("unknown code environment `{}`", choice.value),
                        Some(unknown_help(&choice.value, &names, "code environment")),
                    );
                }
                Some(env) => {
                    let wanted = match self.recipe.kind.value {
                        RecipeKind::R => Some(EnvLanguage::R),
                        RecipeKind::Shell => None,
                        k if k.is_visual() => None,
                        _ => Some(EnvLanguage::Python),
                    };
                    if let Some(lang) = wanted
                        && lang != env.language.value
                    {
                        self.invalid(
                            "code_env",
                            &o,
                            format!(
                                "code environment `{}` is for {}, but recipe `{}` is a {} recipe",
                                env.name,
                                lang_name(env.language.value),
                                self.recipe.name,
                                self.recipe.kind.value.as_str()
                            ),
                            None,
                        );
                    }
                    if let Some(s) = spark_k8s
                        && !env.build_for_spark.iter().any(|n| n.value == s.name)
                    {
                        self.invalid(
                            "code_env",
                            &o,
                            format!(
                                "code environment `{}` is not built for Spark configuration `{}`, where Spark recipe `{}` runs",
                                env.name, s.name, self.recipe.name
                            ),
                            Some(format!("add \"{}\" to code_env.{}.build_for_spark in images.toml", s.name, env.name)),
                        );
                    }
                    if let Some(c) = exec
                        && c.kind.value != ExecKind::Local
                        && !builds_for(env, &c.name)
                    {
                        self.invalid(
                            "code_env",
                            &o,
                            format!(
                                "code environment `{}` is not built for execution configuration `{}`",
                                env.name, c.name
                            ),
                            Some(format!("add \"{}\" to code_env.{}.build_for in images.toml", c.name, env.name)),
                        );
                    }
                }
            }
        }
        let code_env_setting = match env_choice {
            Some(s) if code_env.is_some() => Setting {
                value: Some(s.value),
                origin: s.origin,
            },
            _ => self.builtin(None, Some("the base image's Python".into())),
        };

        // Image and registry: from the configuration, or the code env's derived image.
        let via_spark = |s: &SparkConfig| format!("spark_config '{}'", s.name);
        let registry = match (
            exec.and_then(|c| c.registry.as_ref().map(|r| (c, r))),
            spark_k8s.and_then(|s| s.registry.as_ref().map(|r| (s, r))),
        ) {
            (_, Some((s, r))) => self.object_value(r, via_spark(s)).map(Some),
            (Some((c, r)), None) => self.object_value(r, via_exec(c)).map(Some),
            (None, None) => self.builtin(None, None),
        };
        let prefix = registry
            .value
            .as_deref()
            .map(|r| format!("{}/", r.trim_end_matches('/')))
            .unwrap_or_default();
        // A built image is named with its content-hash tag from `state/images/`; one not built
        // yet is named without, and running it fails with the command that builds it.
        let tagged = |repo: String, record: Option<&ImageRecord>| -> (String, String) {
            match record.filter(|r| !r.image_id.is_empty()) {
                Some(r) => (
                    format!("{prefix}{repo}:{}", r.tag),
                    format!("built {}", r.built_at),
                ),
                None => (format!("{prefix}{repo}"), "not built yet".to_string()),
            }
        };
        let image = match (exec, spark_k8s) {
            // A Spark configuration on Kubernetes: the driver's and executors' image is the
            // code env's built for it, else the configuration's own.
            (_, Some(s)) => {
                let env = code_env.filter(|e| e.build_for_spark.iter().any(|n| n.value == s.name));
                if let Some(env) = env {
                    let (name, state) = tagged(
                        format!("capstan-env-{}-spark-{}", env.name, s.name),
                        home.env_image_record(&env.name, &spark_env_key(&s.name)),
                    );
                    Setting {
                        value: Some(name),
                        origin: Origin {
                            via: Some(format!(
                                "code_env '{}' built for spark_config '{}', {state}",
                                env.name, s.name
                            )),
                            ..code_env_setting.origin.clone()
                        },
                    }
                } else if let Some(img) = &s.image {
                    self.object_value(img, via_spark(s)).map(Some)
                } else if let Some(b) = &s.base_image {
                    let (name, state) = tagged(
                        format!("capstan-base-{}", b.value),
                        home.base_image_record(&b.value),
                    );
                    Setting {
                        value: Some(name),
                        origin: self.origin(
                            Layer::Instance,
                            b.loc,
                            Some(format!(
                                "{}, base_image '{}' {state}",
                                via_spark(s),
                                b.value
                            )),
                        ),
                    }
                } else {
                    self.builtin(None, None)
                }
            }
            (Some(c), None) if c.kind.value != ExecKind::Local => {
                if let (Some(env), Some(choice)) = (code_env, &code_env_setting.value) {
                    let (name, state) = tagged(
                        format!("capstan-env-{choice}-{}", c.name),
                        home.env_image_record(choice, &c.name),
                    );
                    Setting {
                        value: Some(name),
                        origin: Origin {
                            via: Some(format!(
                                "code_env '{}' built for exec_config '{}', {state}",
                                env.name, c.name
                            )),
                            ..code_env_setting.origin.clone()
                        },
                    }
                } else if let Some(img) = &c.image {
                    self.object_value(img, via_exec(c)).map(Some)
                } else {
                    let base = c
                        .base_image
                        .as_ref()
                        .map(|b| b.value.as_str())
                        .unwrap_or("default");
                    let (name, state) =
                        tagged(format!("capstan-base-{base}"), home.base_image_record(base));
                    match &c.base_image {
                        Some(b) => Setting {
                            value: Some(name),
                            origin: self.origin(
                                Layer::Instance,
                                b.loc,
                                Some(format!("{}, base_image '{base}' {state}", via_exec(c))),
                            ),
                        },
                        None if home.base_images.contains_key("default") => {
                            self.builtin(Some(name), Some(format!("base_image 'default' {state}")))
                        }
                        None => self.builtin(None, None),
                    }
                }
            }
            _ => self.builtin(None, Some("local execution uses no image".into())),
        };

        let docker_host = match (kind.value, cluster) {
            (ExecKind::Docker, Some(c)) => match &c.target {
                ClusterTarget::Docker { host } => self
                    .object_value(host, format!("cluster '{}'", c.name))
                    .map(Some),
                ClusterTarget::Kubernetes { .. } => self.builtin(None, None),
            },
            (ExecKind::Docker, None) => self.builtin(
                None,
                Some("DOCKER_HOST, else unix:///var/run/docker.sock".into()),
            ),
            _ => self.builtin(None, None),
        };

        // Kubernetes context and namespace.
        let (cluster_context, cluster_namespace) = match cluster.map(|c| (c, &c.target)) {
            Some((
                c,
                ClusterTarget::Kubernetes {
                    context, namespace, ..
                },
            )) => (
                context
                    .as_ref()
                    .map(|x| self.object_value(x, format!("cluster '{}'", c.name))),
                namespace
                    .as_ref()
                    .map(|x| self.object_value(x, format!("cluster '{}'", c.name))),
            ),
            _ => (None, None),
        };
        let is_k8s = kind.value == ExecKind::Kubernetes;
        let context = if !is_k8s {
            self.builtin(None, None)
        } else if let Some(c) = cluster_context {
            c.map(Some)
        } else if let Some((c, ctx)) = exec.and_then(|c| c.context.as_ref().map(|x| (c, x))) {
            self.object_value(ctx, via_exec(c)).map(Some)
        } else {
            self.builtin(None, Some("the kubeconfig's current context".into()))
        };
        let namespace = if !is_k8s {
            self.builtin(None, None)
        } else {
            // A Spark configuration's own namespace comes first: its service account lives there.
            let raw = spark_k8s
                .and_then(|s| {
                    s.namespace
                        .as_ref()
                        .map(|n| self.object_value(n, via_spark(s)))
                })
                .or_else(|| self.pick(|l| l.namespace.as_ref()))
                .or_else(|| {
                    exec.and_then(|c| {
                        c.namespace
                            .as_ref()
                            .map(|n| self.object_value(n, via_exec(c)))
                    })
                })
                .or(cluster_namespace);
            match raw {
                Some(ns) => {
                    let user = request.user.as_deref().unwrap_or("anonymous");
                    let expanded = expand_namespace(&ns.value, user, &self.project.key);
                    Setting {
                        value: Some(expanded),
                        origin: ns.origin,
                    }
                }
                None => {
                    let o = chooser_origin.clone();
                    self.invalid(
                        "namespace",
                        &o,
                        format!(
                            "{chooser} has no namespace, and {}",
                            cluster.map_or(
                                "no cluster that gives one is chosen".into(),
                                |c| format!("cluster `{}` gives none", c.name)
                            )
                        ),
                        Some(format!(
                            "set `namespace` on the {} or on the cluster",
                            if spark_k8s.is_some() {
                                "Spark configuration"
                            } else {
                                "execution configuration"
                            }
                        )),
                    );
                    self.builtin(None, None)
                }
            }
        };

        // Resources: a layer may override the configuration's values, never above its limits.
        let cpu_limit = self.resource(
            exec,
            |l| l.cpu_limit.as_ref(),
            |c| c.cpu_limit.as_ref(),
            "cpu_limit",
        );
        let memory_limit = self.resource(
            exec,
            |l| l.memory_limit.as_ref(),
            |c| c.memory_limit.as_ref(),
            "memory_limit",
        );
        let cpu_request = self.resource(
            exec,
            |l| l.cpu_request.as_ref(),
            |c| c.cpu_request.as_ref(),
            "cpu_request",
        );
        let memory_request = self.resource(
            exec,
            |l| l.memory_request.as_ref(),
            |c| c.memory_request.as_ref(),
            "memory_request",
        );
        self.request_below_limit("cpu_request", &cpu_request, &cpu_limit);
        self.request_below_limit("memory_request", &memory_request, &memory_limit);
        let gpus = self
            .resource(exec, |l| l.gpus.as_ref(), |c| c.gpus.as_ref(), "gpus")
            .map(|g| g.unwrap_or(0));
        // A Spark driver pod: the driver's cores and memory, whatever the layers say.
        let (cpu_request, cpu_limit, memory_request, memory_limit, gpus) = match spark_k8s {
            Some(s) => {
                let (cpu, memory) = spark_driver_limits(s);
                let python = "plus the 40% (at least 384Mi) Spark adds for a Python driver";
                let origin = |x: Option<Loc>, via: String| match x {
                    Some(loc) => self.origin(Layer::Instance, loc, Some(via)),
                    None => self.builtin((), Some(via)).origin,
                };
                (
                    self.builtin(None, Some("not set".into())),
                    Setting {
                        value: Some(cpu),
                        origin: origin(
                            s.driver_cores.as_ref().map(|c| c.loc),
                            match &s.driver_cores {
                                Some(_) => format!("{}, driver_cores", via_spark(s)),
                                None => {
                                    format!("{}: Spark's default of 1 driver core", via_spark(s))
                                }
                            },
                        ),
                    },
                    self.builtin(None, Some("not set".into())),
                    Setting {
                        value: Some(memory),
                        origin: origin(
                            s.driver_memory.as_ref().map(|m| m.loc),
                            match &s.driver_memory {
                                Some(m) => {
                                    format!("{}, driver_memory {} {python}", via_spark(s), m.value)
                                }
                                None => format!(
                                    "{}: Spark's default driver memory of 1Gi, {python}",
                                    via_spark(s)
                                ),
                            },
                        ),
                    },
                    self.builtin(0, None),
                )
            }
            None => (cpu_request, cpu_limit, memory_request, memory_limit, gpus),
        };
        if gpus.value > 0 && kind.value == ExecKind::Local {
            let o = gpus.origin.clone();
            self.invalid(
                "gpus",
                &o,
                "local execution cannot reserve GPUs".into(),
                Some("use a docker or kubernetes execution configuration with `gpus`".into()),
            );
        }

        let timeout = self
            .pick(|l| l.timeout.as_ref())
            .map(|t| t.map(Some))
            .or_else(|| {
                exec.and_then(|c| {
                    c.timeout
                        .as_ref()
                        .map(|t| self.object_value(t, via_exec(c)).map(Some))
                })
            })
            .or_else(|| {
                spark_k8s.and_then(|s| {
                    s.timeout
                        .as_ref()
                        .map(|t| self.object_value(t, via_spark(s)).map(Some))
                })
            })
            .unwrap_or_else(|| self.builtin(None, Some("no timeout".into())));

        // Environment: merged key by key, the configuration first, then each layer upwards.
        let mut env = BTreeMap::new();
        if let Some(c) = exec {
            for (k, v) in &c.env {
                env.insert(k.clone(), self.object_value(v, via_exec(c)));
            }
        }
        for (layer, settings) in self.layers.iter().rev() {
            for (k, v) in &settings.env {
                env.insert(
                    k.clone(),
                    Setting {
                        value: v.value.clone(),
                        origin: self.origin(*layer, v.loc, None),
                    },
                );
            }
        }

        // Permissions, last, so a refusal comes with a fully resolved picture.
        if let Some(u) = user
            && !u.admin
        {
            if let Some(c) = exec {
                self.permit(u, "execution configuration", &c.name, &c.allowed);
            }
            if let Some(c) = cluster {
                self.permit(u, "cluster", &c.name, &c.allowed);
            }
            if let Some(s) = spark
                && on_spark
            {
                self.permit(u, "Spark configuration", &s.name, &s.allowed);
            }
        }

        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        Ok(Resolution {
            project: self.project.key.clone(),
            recipe: self.recipe.name.clone(),
            recipe_kind: self.recipe.kind.value,
            user: request.user.clone(),
            exec_config,
            kind,
            cluster: cluster_setting,
            spark_config,
            code_env: code_env_setting,
            image,
            registry,
            docker_host,
            context,
            namespace,
            cpu_request,
            cpu_limit,
            memory_request,
            memory_limit,
            gpus,
            timeout,
            env,
        })
    }

    /// A resource value: the highest layer's override, else the configuration's own value. An
    /// override may not exceed what the configuration allows (its limit, or its GPU count).
    fn resource<T: Clone + PartialOrd + fmt::Display + 'h>(
        &mut self,
        exec: Option<&'h ExecConfig>,
        layer: impl Fn(&'h LayerSettings) -> Option<&'h Sourced<T>>,
        config: impl Fn(&'h ExecConfig) -> Option<&'h Sourced<T>>,
        field: &'static str,
    ) -> Setting<Option<T>> {
        let from_config = exec.and_then(|c| {
            config(c).map(|v| self.object_value(v, format!("exec_config '{}'", c.name)))
        });
        let Some(over) = self.pick(layer) else {
            return from_config
                .map(|s| s.map(Some))
                .unwrap_or_else(|| self.builtin(None, Some("not set".into())));
        };
        // A limit (or GPU count) override is capped by the configuration's own value, so users
        // can shrink a t-shirt size but never grow it; requests are checked against the
        // effective limit afterwards.
        let cap = exec
            .filter(|_| !field.ends_with("_request"))
            .and_then(|c| config(c).map(|v| (c, v.value.clone())));
        if let Some((c, cap)) = cap
            && over.value > cap
        {
            let o = over.origin.clone();
            self.invalid(
                field,
                &o,
                format!(
                    "{field} {} is above the {cap} of execution configuration `{}`",
                    over.value, c.name
                ),
                Some("choose a larger execution configuration instead".into()),
            );
        }
        over.map(Some)
    }

    fn request_below_limit<T: PartialOrd + fmt::Display>(
        &mut self,
        field: &'static str,
        request: &Setting<Option<T>>,
        limit: &Setting<Option<T>>,
    ) {
        // Both from the same execution configuration: loading reported it already.
        let same_object = request.origin.via.is_some() && request.origin.via == limit.origin.via;
        if let (Some(r), Some(l)) = (&request.value, &limit.value)
            && r > l
            && !same_object
        {
            let o = request.origin.clone();
            self.invalid(
                field,
                &o,
                format!(
                    "{field} {r} is above the effective limit {l} (set by {})",
                    limit.origin
                ),
                None,
            );
        }
    }

    fn permit(&mut self, user: &User, what: &'static str, name: &str, allowed: &Allowed) {
        let Allowed::Groups(groups) = allowed else {
            return;
        };
        let ok = user
            .groups
            .iter()
            .any(|g| groups.iter().any(|a| a.value == g.value));
        if !ok {
            self.errors.push(ResolveError::PermissionDenied {
                user: user.name.clone(),
                what,
                name: name.to_string(),
                allowed_groups: groups.iter().map(|g| g.value.clone()).collect(),
                user_groups: user.groups.iter().map(|g| g.value.clone()).collect(),
            });
        }
    }
}

impl<T> Setting<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Setting<U> {
        Setting {
            value: f(self.value),
            origin: self.origin,
        }
    }
}

fn lang_name(l: EnvLanguage) -> &'static str {
    match l {
        EnvLanguage::Python => "Python",
        EnvLanguage::R => "R",
    }
}

/// Whether a code environment is built into the images of an execution configuration.
/// The cpu and memory of a Spark driver pod: the driver's cores (Spark's default: 1), and its
/// JVM heap (default 1 GiB) plus what Spark adds for a non-JVM driver, since a PySpark driver
/// runs Python beside the JVM: 40%, at least 384 MiB (`spark.driver.memoryOverheadFactor`).
pub fn spark_driver_limits(spark: &SparkConfig) -> (Cpu, Memory) {
    let heap = spark
        .driver_memory
        .as_ref()
        .map_or(1 << 30, |m| m.value.bytes());
    // Saturating: a configuration may say 8Ei, which `check` accepts and the cluster refuses.
    let overhead = (heap / 5).saturating_mul(2).max(384 << 20);
    (
        Cpu::from_millis(
            u64::from(spark.driver_cores.as_ref().map_or(1, |c| c.value)).saturating_mul(1000),
        ),
        Memory::from_bytes(
            heap.saturating_add(overhead)
                .div_ceil(1 << 20)
                .saturating_mul(1 << 20),
        ),
    )
}

pub fn builds_for(env: &CodeEnv, exec_config: &str) -> bool {
    match &env.build_for.value {
        BuildFor::All => true,
        BuildFor::None => false,
        BuildFor::List(list) => list.iter().any(|n| n.value == exec_config),
    }
}

/// Expands `${user}` and `${project}` in a namespace and makes the result a valid RFC 1123
/// label: lower case, `[a-z0-9-]`, at most 63 characters, starting and ending alphanumeric.
pub fn expand_namespace(template: &str, user: &str, project: &str) -> String {
    let expanded = template
        .replace("${user}", user)
        .replace("${project}", project);
    let mut out: String = expanded
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(63);
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "default".into()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_rfc1123() {
        assert_eq!(
            expand_namespace("capstan-${user}", "Alice.Smith", "p"),
            "capstan-alice-smith"
        );
        assert_eq!(
            expand_namespace("${project}_ns", "u", "Sales_EU"),
            "sales-eu-ns"
        );
        assert_eq!(expand_namespace("--", "u", "p"), "default");
        assert!(expand_namespace(&"x".repeat(100), "u", "p").len() <= 63);
    }
}
