//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Runs the processing of data projects on elastic compute: local processes, Docker hosts and
/// Kubernetes clusters, with named execution configurations.
#[derive(Debug, Parser)]
#[command(name = "capstan", version, max_term_width = 100)]
pub struct Cli {
    /// The instance home (default: $CAPSTAN_HOME, else the current folder if it is a home).
    #[arg(long, global = true, env = "CAPSTAN_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// The daemon's URL (default: the daemon of the home, from its state/daemon.json).
    #[arg(long, global = true, env = "CAPSTAN_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// API token (default: the local daemon's token, readable by whoever can read the home).
    #[arg(
        long,
        global = true,
        env = "CAPSTAN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a working sample home into DIR (which must not exist or be empty).
    Init(InitArgs),
    /// Check every file of the home and report every problem at once.
    Check(CheckArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create a demo home if needed and run its sample project.
    Quickstart(QuickstartArgs),
    /// Datasets: import, head, schema.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// List every declared dataset with its rows and size.
    Datasets(DatasetsArgs),
    /// Saved models: their versions, metrics and evaluations; which version is active.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Kubernetes: the objects a run would create.
    #[command(subcommand)]
    K8s(K8sCommand),
    /// Spark recipes: the exact spark-submit command.
    #[command(subcommand)]
    Spark(SparkCommand),
    /// Clusters: check that one works end to end, and see what this instance runs on them.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Base images: build and list.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Code environments: build (a local venv and one image per configuration) and list.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Run the daemon of the home: the engine and the REST API.
    Serve(ServeArgs),
    /// Run a recipe: waits, streams its logs, exits 0 on success and 1 otherwise.
    Run(RunArgs),
    /// Build datasets with the recipes upstream of them that are out of date, in one job:
    /// waits, exits 0 when every activity succeeded and 1 otherwise.
    Build(BuildArgs),
    /// Show a project's flow: every recipe and dataset, and what is stale and why.
    Flow(FlowArgs),
    /// List the schedules of the projects you may read, with their next and last runs.
    Schedules(SchedulesArgs),
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Inspect one job.
    #[command(subcommand)]
    Job(JobCommand),
    /// Print a job's logs.
    Logs(LogsArgs),
    /// Cancel a job: its processes are stopped.
    Cancel(CancelArgs),
    /// Serve a job's TensorBoard event files (what its recipes wrote to
    /// `capstan.tensorboard_dir()`) with TensorBoard on this machine, until Ctrl-C.
    Tensorboard(TensorboardArgs),
    /// Visual recipes: the engine each runs on, its plans, its output schema.
    #[command(subcommand)]
    Recipe(RecipeCommand),
    /// Internal: the built-in engine of visual recipes (started for their activities).
    #[command(subcommand, hide = true)]
    Transform(TransformCommand),
    /// Internal: supervise one local activity (started by the daemon).
    #[command(hide = true)]
    Shim(ShimArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default: [server] bind in capstan.toml, else 127.0.0.1:7878).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// On shutdown, stop running jobs instead of leaving them to the next daemon.
    #[arg(long)]
    pub stop_jobs: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The recipe, as PROJECT/RECIPE.
    pub target: String,
    #[command(flatten)]
    pub select: Selection,
    /// Timeout for this run, e.g. 90s, 30m, 2h.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Extra environment variable for the recipe (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Queue the job and return at once.
    #[arg(long)]
    pub detach: bool,
    /// Print the job as JSON (after it ends, or at once with --detach) instead of its logs.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// What to build: PROJECT/DATASET (repeatable, one project), or PROJECT for its final
    /// outputs.
    #[arg(required = true, value_name = "TARGET")]
    pub targets: Vec<String>,
    /// smart: what is missing or stale, and what is downstream of it; force: the named
    /// datasets' recipes only; recursive: everything upstream too.
    #[arg(long, default_value = "smart", value_name = "MODE")]
    pub mode: String,
    /// Print what would run and why, and where; start nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Queue the build and return at once.
    #[arg(long)]
    pub detach: bool,
    /// Print the plan (and, after it ends, the job) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub select: Selection,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("format").multiple(false))]
pub struct FlowArgs {
    pub project: String,
    #[arg(long, group = "format")]
    pub json: bool,
    /// A Graphviz picture (`capstan flow p --dot | dot -Tsvg > flow.svg`).
    #[arg(long, group = "format")]
    pub dot: bool,
    /// A Mermaid flowchart (renders in GitHub and GitLab Markdown).
    #[arg(long, group = "format")]
    pub mermaid: bool,
}

#[derive(Debug, Args)]
pub struct SchedulesArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in these states (comma-separated).
    #[arg(long, value_name = "STATES")]
    pub state: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Everything about a job: states with times, diagnosis, settings, usage, logs.
    Show(JobShowArgs),
}

#[derive(Debug, Args)]
pub struct JobShowArgs {
    pub id: i64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub id: i64,
    /// Keep printing new lines until the job ends.
    #[arg(long, short)]
    pub follow: bool,
    /// In a build: only this activity, by name: its recipe, or RECIPE:N for part N of a
    /// distributed search (default: every activity, in order).
    #[arg(long, value_name = "NAME")]
    pub activity: Option<String>,
}

#[derive(Debug, Args)]
pub struct TensorboardArgs {
    /// The job whose TensorBoard event files to serve.
    pub id: i64,
    /// The address TensorBoard listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 6006)]
    pub port: u16,
    /// A Python that has TensorBoard installed (default: a venv capstan makes with the
    /// TensorBoard version it was tested with, in its cache).
    #[arg(long, value_name = "PATH")]
    pub python: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    pub id: i64,
}

#[derive(Debug, Args)]
pub struct ShimArgs {
    pub dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum RecipeCommand {
    /// Show how a visual recipe runs: the engine chosen and why, the DataFusion plan of each
    /// output, the PySpark a Spark configuration runs, and the output schema.
    Explain(RecipeExplainArgs),
}

#[derive(Debug, Args)]
pub struct RecipeExplainArgs {
    /// The recipe, as PROJECT/RECIPE.
    pub target: String,
    #[command(flatten)]
    pub select: Selection,
    /// Resolve as this user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Print it as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TransformCommand {
    /// Run a visual recipe's spec (inputs and outputs from the activity's environment).
    Run(TransformRunArgs),
    /// Copy the engine's files (this binary, its loader and libraries) from FROM to TO: what
    /// the init container of a visual recipe's pod runs, in an image with no `cp`.
    Install(TransformInstallArgs),
}

#[derive(Debug, Args)]
pub struct TransformInstallArgs {
    pub from: PathBuf,
    pub to: PathBuf,
}

#[derive(Debug, Args)]
pub struct TransformRunArgs {
    /// The spec, as JSON.
    pub spec: PathBuf,
    /// The activity's memory limit in bytes (default: none).
    #[arg(long, value_name = "BYTES")]
    pub memory_limit: Option<u64>,
    /// Threads to use (default: the activity's CPU limit, else the machine's cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder to create.
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the diagnostics as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also check the data: every recipe input that has no data yet (one to import, or one a
    /// recipe has not built).
    #[arg(long)]
    pub deep: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show every effective setting of a run of PROJECT/RECIPE and where it came from.
    Explain(ExplainArgs),
    /// List execution configurations, Spark configurations, clusters, base images, code
    /// environments and projects.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The recipe, as PROJECT/RECIPE.
    pub target: String,
    #[command(flatten)]
    pub select: Selection,
    /// Check permissions as this user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Where to create the demo home when no home is given (default: ./demo-home).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Also build the images of the recipes that run in containers (minutes, the first time)
    /// and run them, on the local Docker engine.
    #[arg(long)]
    pub containers: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token for USER: printed once, its SHA-256 digest stored in users.toml.
    Create(TokenCreateArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    pub user: String,
    /// A name to tell the token apart (default: token-N).
    #[arg(long)]
    pub name: Option<String>,
}

/// The run-request layer: choices that override the instance, project and recipe.
#[derive(Debug, Args, Default)]
pub struct Selection {
    /// The execution configuration (how).
    #[arg(long, value_name = "NAME")]
    pub exec_config: Option<String>,
    /// The cluster (where).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// The Spark configuration.
    #[arg(long, value_name = "NAME")]
    pub spark_config: Option<String>,
    /// The code environment.
    #[arg(long, value_name = "NAME")]
    pub code_env: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a base image from its spec in images.toml (and push it where configurations on
    /// it name a registry).
    BuildBase(BuildBaseArgs),
    /// Build capstan's engine image (this binary, its loader and libraries), from which visual
    /// recipes' pods on Kubernetes copy the built-in engine, and push it to the Kubernetes
    /// configurations' registries.
    BuildEngine(BuildEngineArgs),
    /// Base images: tag, size, age, state, and the configurations that use each.
    List(ImageListArgs),
}

#[derive(Debug, Args)]
pub struct BuildBaseArgs {
    pub name: String,
    /// Build only; do not push to the configurations' registries.
    #[arg(long)]
    pub no_push: bool,
    /// Build on the engine of this Docker cluster (default: the local engine).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
}

#[derive(Debug, Args)]
pub struct BuildEngineArgs {
    /// Build only; do not push to the configurations' registries.
    #[arg(long)]
    pub no_push: bool,
    /// Build on the engine of this Docker cluster (default: the local engine).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImageListArgs {
    #[arg(long)]
    pub json: bool,
    /// Check images on the engine of this Docker cluster (default: the local engine).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Build a code environment: its local venv, and its image for each configuration in its
    /// `build_for`. Nothing is rebuilt when nothing changed.
    Build(EnvBuildArgs),
    /// Code environment images per configuration, with their state (ok, stale, failed, missing).
    List(ImageListArgs),
}

#[derive(Debug, Args)]
pub struct EnvBuildArgs {
    /// The environment (default with --rebuild-stale: every stale one).
    pub name: Option<String>,
    /// Rebuild the env images whose base image was rebuilt since.
    #[arg(long)]
    pub rebuild_stale: bool,
    /// Build only; do not push to the configurations' registries.
    #[arg(long)]
    pub no_push: bool,
    /// Build on the engine of this Docker cluster (default: the local engine).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Import a CSV or Parquet file as PROJECT/NAME (declared in the project if it is not yet).
    /// Nothing is imported unless every line is.
    Import(DatasetImportArgs),
    /// The first rows of a dataset.
    Head(DatasetHeadArgs),
    /// A dataset's columns and types.
    Schema(DatasetSchemaArgs),
}

#[derive(Debug, Args)]
pub struct DatasetImportArgs {
    /// The dataset, as PROJECT/NAME.
    pub target: String,
    pub file: PathBuf,
    /// Column types, overriding inference: `--schema amount=string,day=date`.
    #[arg(long, value_name = "COL=TYPE,…")]
    pub schema: Option<String>,
}

#[derive(Debug, Args)]
pub struct DatasetHeadArgs {
    pub target: String,
    #[arg(short = 'n', long, default_value_t = 10)]
    pub rows: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DatasetSchemaArgs {
    pub target: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DatasetsArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Every saved model with its versions, the active one and its score.
    List(ModelListArgs),
    /// A saved model's versions with their metrics; with --version, one version in full.
    Show(ModelShowArgs),
    /// Make version N the active one (what scoring and evaluation apply by default).
    Activate(ModelActivateArgs),
    /// The model's evaluation store: one row per evaluation, oldest first.
    Evaluations(ModelEvaluationsArgs),
}

#[derive(Debug, Args)]
pub struct ModelListArgs {
    /// Only this project's saved models.
    pub project: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelShowArgs {
    /// The saved model, as PROJECT/NAME (or NAME when one project declares it).
    pub target: String,
    /// One version in full: metrics, hyperparameters, data, image, libraries, files.
    #[arg(long, value_name = "N")]
    pub version: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelActivateArgs {
    /// The saved model, as PROJECT/NAME (or NAME when one project declares it).
    pub target: String,
    pub version: u64,
}

#[derive(Debug, Args)]
pub struct ModelEvaluationsArgs {
    /// The saved model, as PROJECT/NAME (or NAME when one project declares it).
    pub target: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum K8sCommand {
    /// Print, as YAML, the exact objects a run of PROJECT/RECIPE would create (pod, code
    /// ConfigMap, token Secret), without a cluster. The token is never printed.
    Render(K8sRenderArgs),
}

#[derive(Debug, Args)]
pub struct K8sRenderArgs {
    /// The recipe, as PROJECT/RECIPE.
    pub target: String,
    #[command(flatten)]
    pub select: Selection,
    /// Render as this user (for `${user}` in namespaces, and permissions).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Run a tiny pod on a Kubernetes cluster (a container on a Docker host) and report each
    /// step: API reachable, namespace, image pull and start, callback to the daemon, cleanup.
    Test(ClusterTestArgs),
    /// List this instance's containers and pods on every Docker engine and Kubernetes
    /// namespace, with their job, requests, limits and live usage, and leftovers marked.
    Workloads(WorkloadsArgs),
    /// Remove the containers and pods that no active job accounts for (admins).
    RemoveLeftovers,
}

#[derive(Debug, Args)]
pub struct WorkloadsArgs {
    /// Print the engines and their workloads as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ClusterTestArgs {
    /// The cluster (a `[cluster.NAME]` of kind kubernetes).
    pub name: String,
    /// The execution configuration whose image, namespace and limits to test with (default: the
    /// first kubernetes configuration).
    #[arg(long, value_name = "NAME")]
    pub exec_config: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SparkCommand {
    /// Print the exact spark-submit command and configuration of a Spark recipe (and, on
    /// Kubernetes, the executor pod template).
    Render(SparkRenderArgs),
}

#[derive(Debug, Args)]
pub struct SparkRenderArgs {
    /// The recipe, as PROJECT/RECIPE.
    pub target: String,
    #[command(flatten)]
    pub select: Selection,
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
}
