//! The domain model of an instance home, as loaded and validated.
//!
//! Every value an admin or user wrote keeps its [`Loc`], so resolution can say which layer and
//! which file each effective setting came from (`capstan config explain`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::diag::{Loc, SourceMap};
use crate::flow::BuildMode;
use crate::quantity::{Cpu, Duration, Memory, Quantity};
use crate::schedule::{CatchUp, Cron, Tz};

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub loc: Loc,
}

impl<T> Sourced<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Sourced<U> {
        Sourced {
            value: f(self.value),
            loc: self.loc,
        }
    }
}

/// The engine an execution configuration runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExecKind {
    /// No container: a child process of the daemon.
    Local,
    Docker,
    Kubernetes,
}

impl ExecKind {
    pub const NAMES: [&'static str; 3] = ["local", "docker", "kubernetes"];

    pub fn parse(s: &str) -> Option<ExecKind> {
        match s {
            "local" => Some(ExecKind::Local),
            "docker" => Some(ExecKind::Docker),
            "kubernetes" => Some(ExecKind::Kubernetes),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecKind::Local => "local",
            ExecKind::Docker => "docker",
            ExecKind::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for ExecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a group may do in a project (`[project.permissions]`). `admin` implies the other
/// three, and `run` and `write` imply `read`: nobody runs or writes what they cannot see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// See the project's datasets, jobs and logs.
    Read,
    /// Run its recipes (and build what they need).
    Run,
    /// Write and import its datasets.
    Write,
    /// All of the above, and cancel anyone's jobs in it.
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 4] = [
        Permission::Read,
        Permission::Run,
        Permission::Write,
        Permission::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Run => "run",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether holding `self` gives `wanted`.
    pub fn gives(self, wanted: Permission) -> bool {
        self == wanted
            || self == Permission::Admin
            || (wanted == Permission::Read && matches!(self, Permission::Run | Permission::Write))
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `[project.permissions]`: a group and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub group: Sourced<String>,
    pub permissions: Vec<Permission>,
}

/// Who may use a configuration or cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// `allowed_groups` absent: every user.
    Everyone,
    /// Only members of these groups (and admins).
    Groups(Vec<Sourced<String>>),
}

impl Allowed {
    pub fn group_names(&self) -> Vec<&str> {
        match self {
            Allowed::Everyone => Vec::new(),
            Allowed::Groups(g) => g.iter().map(|g| g.value.as_str()).collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    pub key: Option<String>,
    pub operator: Option<String>,
    pub value: Option<String>,
    pub effect: Option<String>,
    pub toleration_seconds: Option<u32>,
}

/// Docker-only run options of an execution configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerOptions {
    pub network: Option<Sourced<String>>,
    pub runtime: Option<Sourced<String>>,
    pub cap_add: Vec<Sourced<String>>,
    pub extra_hosts: Vec<Sourced<String>>,
    /// `host_path:container_path[:ro]`.
    pub volumes: Vec<Sourced<String>>,
}

/// A containerized execution configuration: *how* something runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecConfig {
    pub name: String,
    pub loc: Loc,
    pub description: Option<String>,
    pub kind: Sourced<ExecKind>,
    pub base_image: Option<Sourced<String>>,
    pub image: Option<Sourced<String>>,
    pub registry: Option<Sourced<String>>,
    pub context: Option<Sourced<String>>,
    pub namespace: Option<Sourced<String>>,
    pub create_namespace: bool,
    pub cpu_request: Option<Sourced<Cpu>>,
    pub cpu_limit: Option<Sourced<Cpu>>,
    pub memory_request: Option<Sourced<Memory>>,
    pub memory_limit: Option<Sourced<Memory>>,
    pub gpus: Option<Sourced<u32>>,
    pub shm_size: Option<Sourced<Memory>>,
    pub resources: BTreeMap<String, Sourced<Quantity>>,
    pub env: BTreeMap<String, Sourced<String>>,
    pub node_selector: BTreeMap<String, Sourced<String>>,
    pub tolerations: Vec<Sourced<Toleration>>,
    pub docker: DockerOptions,
    /// Free Kubernetes pod-spec patch, applied last (checked against the schema by the
    /// Kubernetes backend).
    pub pod_patch: Option<Sourced<toml::Value>>,
    pub image_pull_secrets: Vec<Sourced<String>>,
    /// A script run before each push to `registry`, with the registry, image and tag as its
    /// arguments (to log in, create the repository…). Relative paths are from the home.
    pub pre_push_hook: Option<Sourced<String>>,
    pub service_account: Option<Sourced<String>>,
    pub timeout: Option<Sourced<Duration>>,
    pub pending_timeout: Option<Sourced<Duration>>,
    /// How long a notebook kernel on this configuration may sit idle (no execution, no client
    /// connected) before it is culled; `None`: [`DEFAULT_KERNEL_IDLE_TIMEOUT`].
    pub idle_timeout: Option<Sourced<Duration>>,
    /// Kubernetes: the storage class of each user's notebook volume for a project (a PVC, kept
    /// between kernels); `None`: a kernel's files go with its pod.
    pub notebook_storage_class: Option<Sourced<String>>,
    /// Its size (default [`DEFAULT_NOTEBOOK_STORAGE`]).
    pub notebook_storage: Option<Sourced<Memory>>,
    pub max_concurrent: Option<Sourced<u32>>,
    pub allowed: Allowed,
}

/// A notebook volume's size where its configuration says nothing: 10 GiB.
pub const DEFAULT_NOTEBOOK_STORAGE: &str = "10Gi";

/// An idle kernel's life where its configuration says nothing: 12 hours, as Jupyter
/// Enterprise Gateway recommends.
pub const DEFAULT_KERNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparkMaster {
    Local,
    Kubernetes,
    Standalone,
}

impl SparkMaster {
    pub const NAMES: [&'static str; 3] = ["local", "kubernetes", "standalone"];

    pub fn parse(s: &str) -> Option<SparkMaster> {
        match s {
            "local" => Some(SparkMaster::Local),
            "kubernetes" => Some(SparkMaster::Kubernetes),
            "standalone" => Some(SparkMaster::Standalone),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SparkMaster::Local => "local",
            SparkMaster::Kubernetes => "kubernetes",
            SparkMaster::Standalone => "standalone",
        }
    }
}

/// A log4j level, for the Spark driver's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SparkLogLevel {
    Error,
    #[default]
    Warn,
    Info,
    Debug,
}

impl SparkLogLevel {
    pub const NAMES: [&'static str; 4] = ["error", "warn", "info", "debug"];

    pub fn parse(s: &str) -> Option<SparkLogLevel> {
        Some(match s.to_ascii_lowercase().as_str() {
            "error" => SparkLogLevel::Error,
            "warn" => SparkLogLevel::Warn,
            "info" => SparkLogLevel::Info,
            "debug" => SparkLogLevel::Debug,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SparkLogLevel::Error => "error",
            SparkLogLevel::Warn => "warn",
            SparkLogLevel::Info => "info",
            SparkLogLevel::Debug => "debug",
        }
    }
}

/// A Spark configuration: the execution configuration of Spark activities.
#[derive(Clone, Debug, PartialEq)]
pub struct SparkConfig {
    pub name: String,
    pub loc: Loc,
    pub description: Option<String>,
    pub master: Sourced<SparkMaster>,
    /// `spark://host:7077` for standalone; the API server for Kubernetes (else the cluster's).
    pub master_url: Option<Sourced<String>>,
    /// Threads for local mode (`local[N]`); `None` means all cores.
    pub local_threads: Option<Sourced<u32>>,
    pub base_image: Option<Sourced<String>>,
    pub image: Option<Sourced<String>>,
    pub registry: Option<Sourced<String>>,
    pub namespace: Option<Sourced<String>>,
    pub service_account: Option<Sourced<String>>,
    pub driver_cores: Option<Sourced<u32>>,
    pub driver_memory: Option<Sourced<Memory>>,
    pub executor_cores: Option<Sourced<u32>>,
    pub executor_memory: Option<Sourced<Memory>>,
    pub executor_memory_overhead: Option<Sourced<Memory>>,
    pub executor_instances: Option<Sourced<u32>>,
    pub dynamic_allocation: Option<Sourced<bool>>,
    /// The level of the driver's log in the job's log (`warn` by default; Spark's INFO
    /// chatter goes to the full driver log beside it).
    pub log_level: Option<Sourced<SparkLogLevel>>,
    pub conf: BTreeMap<String, Sourced<String>>,
    pub node_selector: BTreeMap<String, Sourced<String>>,
    pub tolerations: Vec<Sourced<Toleration>>,
    /// Secrets the driver pod and the executors pull the image with.
    pub image_pull_secrets: Vec<Sourced<String>>,
    /// The admin's bounds, as on an execution configuration: how long a run may take, how
    /// long a driver pod may wait to be scheduled (Kubernetes), how many runs at once.
    pub timeout: Option<Sourced<Duration>>,
    pub pending_timeout: Option<Sourced<Duration>>,
    pub max_concurrent: Option<Sourced<u32>>,
    pub allowed: Allowed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterTarget {
    /// A Docker engine: `unix:///var/run/docker.sock` or `tcp://host:2376`.
    Docker { host: Sourced<String> },
    /// A Kubernetes cluster: a kubeconfig (default search order when absent) and a context.
    Kubernetes {
        kubeconfig: Option<Sourced<String>>,
        context: Option<Sourced<String>>,
        namespace: Option<Sourced<String>>,
    },
}

/// A cluster: *where* something runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub loc: Loc,
    pub description: Option<String>,
    pub target: ClusterTarget,
    pub max_concurrent: Option<Sourced<u32>>,
    pub allowed: Allowed,
}

impl Cluster {
    pub fn kind(&self) -> ExecKind {
        match self.target {
            ClusterTarget::Docker { .. } => ExecKind::Docker,
            ClusterTarget::Kubernetes { .. } => ExecKind::Kubernetes,
        }
    }
}

/// The spec of a base image (building it is the images crate's job).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseImage {
    pub name: String,
    pub loc: Loc,
    pub description: Option<String>,
    /// An image to start from, where a registry is reachable; else a Debian root is bootstrapped.
    pub from: Option<Sourced<String>>,
    pub debian_suite: Option<Sourced<String>>,
    pub with_r: bool,
    pub with_cuda: bool,
    /// Java and Spark (pyspark), for Spark configurations on Kubernetes.
    pub with_spark: bool,
    /// ipykernel in the image's Python (pinned): its configurations run notebook kernels on
    /// the image itself, without a code environment.
    pub with_jupyter: bool,
    pub system_packages: Vec<Sourced<String>>,
    pub python_packages: Vec<Sourced<String>>,
    pub dockerfile_prepend: Option<Sourced<String>>,
    pub dockerfile_append: Option<Sourced<String>>,
    /// Files copied into the build context, relative to the home.
    pub files: Vec<Sourced<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvLanguage {
    Python,
    R,
}

/// Which execution configurations a code environment is built for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildFor {
    All,
    None,
    List(Vec<Sourced<String>>),
}

/// The spec of a code environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeEnv {
    pub name: String,
    pub loc: Loc,
    pub description: Option<String>,
    pub language: Sourced<EnvLanguage>,
    pub packages: Vec<Sourced<String>>,
    pub requirements_file: Option<Sourced<String>>,
    pub constraints_file: Option<Sourced<String>>,
    pub system_packages: Vec<Sourced<String>>,
    pub build_for: Sourced<BuildFor>,
    /// Spark configurations on Kubernetes whose driver and executors get this environment: an
    /// image built on the configuration's base image.
    pub build_for_spark: Vec<Sourced<String>>,
    /// Whether the environment runs notebook kernels (`with_jupyter`): its packages then
    /// include ipykernel, pinned, and each configuration it may run on is a kernelspec.
    pub with_jupyter: bool,
}

impl CodeEnv {
    /// An environment capstan itself defines (no file declares it): Python, these packages.
    pub fn managed(
        name: &str,
        description: &str,
        packages: impl IntoIterator<Item = String>,
    ) -> CodeEnv {
        CodeEnv {
            name: name.into(),
            loc: Loc::NOWHERE,
            description: Some(description.into()),
            language: Sourced {
                value: EnvLanguage::Python,
                loc: Loc::NOWHERE,
            },
            packages: packages
                .into_iter()
                .map(|value| Sourced {
                    value,
                    loc: Loc::NOWHERE,
                })
                .collect(),
            requirements_file: None,
            constraints_file: None,
            system_packages: Vec::new(),
            build_for: Sourced {
                value: BuildFor::None,
                loc: Loc::NOWHERE,
            },
            build_for_spark: Vec::new(),
            with_jupyter: false,
        }
    }
}

/// The key of a code environment's image for Spark configuration `spark` (in image records,
/// where an execution configuration's name is the key).
pub fn spark_env_key(spark: &str) -> String {
    format!("spark:{spark}")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub loc: Loc,
    pub description: Option<String>,
}

/// An API token, of which only a SHA-256 hash is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenHash {
    pub name: String,
    pub sha256: String,
    pub loc: Loc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub loc: Loc,
    pub display_name: Option<String>,
    pub groups: Vec<Sourced<String>>,
    pub admin: bool,
    pub tokens: Vec<TokenHash>,
    /// The Unix user this user's local recipes run as (default: the instance's `run_as`).
    pub run_as: Option<Sourced<String>>,
}

/// The settings any layer (instance defaults, project, recipe, run request) may set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerSettings {
    pub exec_config: Option<Sourced<String>>,
    pub cluster: Option<Sourced<String>>,
    pub spark_config: Option<Sourced<String>>,
    pub code_env: Option<Sourced<String>>,
    pub namespace: Option<Sourced<String>>,
    pub timeout: Option<Sourced<Duration>>,
    pub cpu_request: Option<Sourced<Cpu>>,
    pub cpu_limit: Option<Sourced<Cpu>>,
    pub memory_request: Option<Sourced<Memory>>,
    pub memory_limit: Option<Sourced<Memory>>,
    pub gpus: Option<Sourced<u32>>,
    pub env: BTreeMap<String, Sourced<String>>,
}

/// `capstan.toml`: the instance itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Instance {
    pub name: Option<String>,
    /// The Unix user local recipes run as, unless their user has a `run_as` of their own
    /// (default: `nobody`).
    pub run_as: Option<Sourced<String>>,
    /// `isolation = "none"`: local recipes run as the daemon's own user (an explicit choice).
    pub isolation: Option<Sourced<Isolation>>,
    /// Where local recipes get their private working folders (default: under the system's
    /// temporary folder), outside the home's `state/`.
    pub work_dir: Option<Sourced<String>>,
    pub defaults: LayerSettings,
    pub server_bind: Option<Sourced<String>>,
    pub server_public_url: Option<Sourced<String>>,
    pub build: BuildSettings,
    /// `[import]`: the limits of CSV imports (default: 1 MiB lines, 4096 columns, 10 GiB files).
    pub import: ImportSettings,
}

/// `[import]` in capstan.toml: how big a CSV file, its lines and its header may be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSettings {
    pub max_line: Option<Sourced<Memory>>,
    pub max_columns: Option<Sourced<u32>>,
    pub max_file: Option<Sourced<Memory>>,
}

/// How local recipes are kept from the daemon's rights (`[instance] isolation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// Each runs as an unprivileged Unix user: its capstan user's `run_as`, else the
    /// instance's, else `nobody`.
    #[default]
    User,
    /// They run as the daemon's own user and can read what it can: for a single-user machine.
    None,
}

/// The Unix user a local recipe runs as when no `run_as` names one.
pub const DEFAULT_RUN_AS: &str = "nobody";

/// `[build]` in capstan.toml: what image builds need to get through a corporate network.
/// Unset fields fall back to the host's own settings (its CA bundle, its proxy variables).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildSettings {
    /// A PEM bundle of the CAs to trust inside builds (default: the host's system bundle).
    pub ca_bundle: Option<Sourced<String>>,
    /// The Debian mirror for bootstrapped OS roots (default: http://deb.debian.org/debian).
    pub debian_mirror: Option<Sourced<String>>,
    pub pip_index_url: Option<Sourced<String>>,
    pub pip_extra_index_url: Option<Sourced<String>>,
    pub http_proxy: Option<Sourced<String>>,
    pub https_proxy: Option<Sourced<String>>,
    pub no_proxy: Option<Sourced<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipeKind {
    Python,
    R,
    Shell,
    PySpark,
    SparkSql,
    // Visual recipes (`crate::visual`): a spec, run by capstan's own engine or on Spark.
    Prepare,
    Group,
    Window,
    Join,
    Stack,
    Split,
    Sort,
    TopN,
    Distinct,
    Pivot,
    Filter,
    Sync,
    MlTrain,
    MlRetrain,
    MlScore,
    MlEvaluate,
}

impl RecipeKind {
    pub const ALL: [RecipeKind; 21] = [
        RecipeKind::Python,
        RecipeKind::R,
        RecipeKind::Shell,
        RecipeKind::PySpark,
        RecipeKind::SparkSql,
        RecipeKind::Prepare,
        RecipeKind::Group,
        RecipeKind::Window,
        RecipeKind::Join,
        RecipeKind::Stack,
        RecipeKind::Split,
        RecipeKind::Sort,
        RecipeKind::TopN,
        RecipeKind::Distinct,
        RecipeKind::Pivot,
        RecipeKind::Filter,
        RecipeKind::Sync,
        RecipeKind::MlTrain,
        RecipeKind::MlRetrain,
        RecipeKind::MlScore,
        RecipeKind::MlEvaluate,
    ];

    pub const NAMES: [&'static str; 21] = [
        "python",
        "r",
        "shell",
        "pyspark",
        "spark_sql",
        "prepare",
        "group",
        "window",
        "join",
        "stack",
        "split",
        "sort",
        "top_n",
        "distinct",
        "pivot",
        "filter",
        "sync",
        "ml_train",
        "ml_retrain",
        "ml_score",
        "ml_evaluate",
    ];

    pub fn parse(s: &str) -> Option<RecipeKind> {
        let i = Self::NAMES.iter().position(|n| *n == s)?;
        Some(Self::ALL[i])
    }

    pub fn as_str(self) -> &'static str {
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::NAMES[i]
    }

    /// ML recipes: a spec in the recipe's TOML (`[ml_train]`…), no code file.
    pub fn is_ml(self) -> bool {
        matches!(
            self,
            RecipeKind::MlTrain
                | RecipeKind::MlRetrain
                | RecipeKind::MlScore
                | RecipeKind::MlEvaluate
        )
    }

    /// Visual recipes: a spec in the recipe's TOML, no code file.
    pub fn is_visual(self) -> bool {
        matches!(
            self,
            RecipeKind::Prepare
                | RecipeKind::Group
                | RecipeKind::Window
                | RecipeKind::Join
                | RecipeKind::Stack
                | RecipeKind::Split
                | RecipeKind::Sort
                | RecipeKind::TopN
                | RecipeKind::Distinct
                | RecipeKind::Pivot
                | RecipeKind::Filter
                | RecipeKind::Sync
        )
    }

    /// The file a recipe of this kind reads its code from when `code` is not given.
    pub fn default_code_extension(self) -> Option<&'static str> {
        match self {
            RecipeKind::Python | RecipeKind::PySpark => Some("py"),
            RecipeKind::R => Some("R"),
            RecipeKind::Shell => Some("sh"),
            RecipeKind::SparkSql => Some("sql"),
            _ => None,
        }
    }

    /// Spark activities take a Spark configuration rather than an execution configuration.
    pub fn is_spark(self) -> bool {
        matches!(self, RecipeKind::PySpark | RecipeKind::SparkSql)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub name: String,
    pub loc: Loc,
    pub description: Option<String>,
    pub kind: Sourced<RecipeKind>,
    /// Path of the code file, relative to the home.
    pub code: Option<Sourced<PathBuf>>,
    pub inputs: Vec<Sourced<String>>,
    pub outputs: Vec<Sourced<String>>,
    pub settings: LayerSettings,
    /// Visual recipes: the spec, and where each part of it was written.
    pub visual: Option<crate::visual::VisualRecipe>,
    /// ML recipes: the model task (or what is applied), and where each part was written.
    pub ml: Option<crate::ml::MlRecipe>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    pub name: String,
    pub loc: Loc,
    pub description: Option<String>,
    pub format: String,
    /// Declared columns and their types (`string`, `int64`, `float64`, `bool`, `timestamp`,
    /// `date`): a write that contradicts them is refused.
    pub schema: Vec<(String, Sourced<String>)>,
}

/// The column types a dataset schema may declare.
pub const COLUMN_TYPES: [&str; 6] = ["string", "int64", "float64", "bool", "timestamp", "date"];

#[derive(Clone, Debug, PartialEq)]
pub struct Project {
    /// The project key: its folder name under `projects/`.
    pub key: String,
    pub loc: Loc,
    pub name: Option<String>,
    pub description: Option<String>,
    pub settings: LayerSettings,
    pub datasets: BTreeMap<String, Dataset>,
    pub recipes: BTreeMap<String, Recipe>,
    /// The project's shared code folder (`lib/`), if present.
    pub lib_dir: Option<PathBuf>,
    /// Which groups may do what (`[project.permissions]`); none: only instance admins.
    pub permissions: Vec<Grant>,
    /// Build schedules (`[schedule.NAME]`), by name.
    pub schedules: BTreeMap<String, Schedule>,
    /// Saved models (`[model.NAME]`), by name: what ML recipes train, score and evaluate.
    pub models: BTreeMap<String, SavedModel>,
}

/// `[model.NAME]` in a project.toml: a saved model, whose versions its training recipe writes.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedModel {
    pub name: String,
    pub loc: Loc,
    pub description: Option<String>,
    /// When a new version becomes the active one (default `always`).
    pub activation: Sourced<crate::ml::Activation>,
}

/// `[schedule.NAME]` in a project.toml: build some of the project's datasets on a cron
/// expression. When one is due is [`crate::schedule::due`].
///
/// A schedule whose `cron` is missing or does not parse is left out of the model (its error
/// is reported); one with other errors keeps their defaults, in a home with errors.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub loc: Loc,
    /// The expression as written.
    pub cron: Sourced<String>,
    pub cron_parsed: Cron,
    /// `time_zone`, an IANA name; absent: UTC.
    pub time_zone: Option<Sourced<String>>,
    /// The zone the expression is read in (`time_zone`, else UTC).
    pub tz: Tz,
    /// The datasets to build (never empty in a valid home): datasets of the project that
    /// recipes write.
    pub build: Vec<Sourced<String>>,
    /// How the build chooses what to run (default `smart`).
    pub mode: BuildMode,
    /// The user the builds run as (a user of users.toml); `None`: the instance itself, as an
    /// admin.
    pub user: Option<Sourced<String>>,
    /// What to make up after downtime (default `one`).
    pub catch_up: CatchUp,
    /// `enabled = false` keeps a schedule without running it.
    pub enabled: bool,
}

/// What was built from a base image or code environment spec (`state/images/*.toml`, written
/// by the image builder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    /// `base` or `env`.
    pub kind: String,
    pub name: String,
    /// For env images: the execution configuration it was built for.
    pub exec_config: Option<String>,
    /// The repository, with the registry prefix when pushed (`reg.example.com/capstan-base-x`).
    pub repository: String,
    pub tag: String,
    pub image_id: String,
    /// For env images: the base image id it was built on (a rebuilt base makes it stale).
    pub base_image_id: Option<String>,
    pub built_at: String,
    pub size_bytes: u64,
    pub pushed: bool,
    /// The last build's error, when it failed (the image above stays in use).
    pub last_error: Option<String>,
}

impl ImageRecord {
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

/// A whole loaded home.
#[derive(Debug)]
pub struct Home {
    pub root: PathBuf,
    pub sources: SourceMap,
    pub instance: Instance,
    pub exec_configs: BTreeMap<String, ExecConfig>,
    pub spark_configs: BTreeMap<String, SparkConfig>,
    pub clusters: BTreeMap<String, Cluster>,
    pub base_images: BTreeMap<String, BaseImage>,
    pub code_envs: BTreeMap<String, CodeEnv>,
    pub groups: BTreeMap<String, Group>,
    pub users: BTreeMap<String, User>,
    pub projects: BTreeMap<String, Project>,
    /// Built images, keyed by (kind, name, exec config); read from `state/images/`.
    pub images: BTreeMap<(String, String, Option<String>), ImageRecord>,
}

impl Home {
    pub fn base_image_record(&self, name: &str) -> Option<&ImageRecord> {
        self.images
            .get(&("base".to_string(), name.to_string(), None))
    }

    /// The last build of capstan's engine image (`capstan image build-engine`), which visual
    /// recipes' pods copy the built-in engine from.
    pub fn engine_image_record(&self) -> Option<&ImageRecord> {
        self.images
            .get(&("engine".to_string(), "capstan".to_string(), None))
            .filter(|r| !r.image_id.is_empty())
    }

    pub fn env_image_record(&self, env: &str, exec_config: &str) -> Option<&ImageRecord> {
        self.images.get(&(
            "env".to_string(),
            env.to_string(),
            Some(exec_config.to_string()),
        ))
    }

    pub fn recipe(&self, project: &str, recipe: &str) -> Option<(&Project, &Recipe)> {
        let p = self.projects.get(project)?;
        Some((p, p.recipes.get(recipe)?))
    }
}
