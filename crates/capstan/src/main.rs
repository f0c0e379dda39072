//! The `capstan` binary: glue between the command line and the capstan crates.
//!
//! Errors are `anyhow` with context here, printed once in `main`. Exit codes are part of the
//! interface (see [`exit`]).

/// Prints a line on stdout. A closed pipe (`capstan logs 12 | head -1`) ends the command
/// quietly, with success, as it does for other command-line tools, where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::quiet_on_closed_pipe({
            use std::io::Write as _;
            writeln!(std::io::stdout().lock(), $($arg)*)
        })?
    };
}

/// A write to stdout, with a closed pipe turned into a quiet, successful end (see [`say`]).
pub fn quiet_on_closed_pipe(written: std::io::Result<()>) -> anyhow::Result<()> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Exit(exit::OK).into()),
        other => Ok(other?),
    }
}

mod check;
mod cli;
mod client;
mod daemon;
mod datasets;
mod explain;
mod flows;
mod home;
mod images;
mod init;
mod jobs;
mod k8s;
mod models;
mod quickstart;
mod spark;
mod tensorboard;
mod token;
mod transform;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes that scripts can rely on.
pub mod exit {
    /// The command did what was asked (for `run`: the job succeeded).
    pub const OK: u8 = 0;
    /// It failed: a problem in the home, a failed job, an unreachable daemon.
    pub const FAILURE: u8 = 1;
    /// The command line itself was wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// The user may not do this (permissions).
    pub const DENIED: u8 = 3;
}

/// An error that carries its own exit code, for failures already reported.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

fn main() -> ExitCode {
    // One TLS provider, installed before anything (kube) uses TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = cli::Cli::parse();
    // The shim is started by the daemon for every local activity: keep its start lean.
    if let cli::Command::Shim(a) = &args.command {
        return ExitCode::from(capstan_backend_local::shim::main(&a.dir).clamp(0, 255) as u8);
    }
    let _ = exit::USAGE;
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // Commands that already printed their own report return a bare `Exit`.
            if let Some(Exit(code)) = err.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            eprintln!("error: {err:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAPSTAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(args: cli::Cli) -> anyhow::Result<u8> {
    use capstan_core::model::Permission;
    use cli::{
        ClusterCommand, Command, ConfigCommand, DatasetCommand, EnvCommand, ImageCommand,
        JobCommand, K8sCommand, ModelCommand, RecipeCommand, SparkCommand, TokenCommand,
        TransformCommand,
    };
    let home = args.home.as_deref();
    let connect = || client::Client::connect(home, args.server.as_deref(), args.token.as_deref());
    match &args.command {
        Command::Init(a) => init::run(a),
        Command::Check(a) => check::run(&home::locate(home)?, a),
        Command::Config(ConfigCommand::Explain(a)) => explain::run(&home::locate(home)?, a),
        Command::Config(ConfigCommand::List(a)) => explain::list(&home::locate(home)?, a),
        Command::Token(TokenCommand::Create(a)) => token::create(&home::locate(home)?, a),
        Command::Quickstart(a) => {
            init_tracing_quiet();
            runtime()?.block_on(quickstart::run(home, a))
        }
        Command::Serve(a) => {
            init_tracing();
            let root = home::locate(home)?;
            runtime()?.block_on(daemon::serve(&root, a))
        }
        Command::Run(a) => runtime()?.block_on(async { jobs::run(&connect()?, a).await }),
        Command::Build(a) => runtime()?.block_on(async { flows::build(&connect()?, a).await }),
        Command::Flow(a) => flows::flow(&home::locate(home)?, a, args.token.as_deref()),
        Command::Schedules(a) => {
            runtime()?.block_on(async { flows::schedules(&connect()?, a).await })
        }
        Command::Jobs(a) => runtime()?.block_on(async { jobs::list(&connect()?, a).await }),
        Command::Job(JobCommand::Show(a)) => {
            runtime()?.block_on(async { jobs::show(&connect()?, a).await })
        }
        Command::Logs(a) => runtime()?.block_on(async { jobs::logs(&connect()?, a).await }),
        Command::Cancel(a) => runtime()?.block_on(async { jobs::cancel(&connect()?, a).await }),
        Command::Tensorboard(a) => {
            runtime()?.block_on(async { tensorboard::serve(&connect()?, a).await })
        }
        Command::Image(ImageCommand::BuildBase(a)) => {
            runtime()?.block_on(images::build_base(&home::locate(home)?, a))
        }
        Command::Image(ImageCommand::BuildEngine(a)) => {
            runtime()?.block_on(images::build_engine(&home::locate(home)?, a))
        }
        Command::Image(ImageCommand::List(a)) => {
            runtime()?.block_on(images::list(&home::locate(home)?, a, false))
        }
        Command::Env(EnvCommand::Build(a)) => {
            runtime()?.block_on(images::build_env(&home::locate(home)?, a))
        }
        Command::Env(EnvCommand::List(a)) => {
            runtime()?.block_on(images::list(&home::locate(home)?, a, true))
        }
        Command::Dataset(DatasetCommand::Import(a)) => {
            let root = home::locate(home)?;
            home::acting_user_may(&root, args.token.as_deref(), &a.target, Permission::Write)?;
            datasets::import(&root, a)
        }
        Command::Dataset(DatasetCommand::Head(a)) => {
            let root = home::locate(home)?;
            home::acting_user_may(&root, args.token.as_deref(), &a.target, Permission::Read)?;
            datasets::head(&root, a)
        }
        Command::Dataset(DatasetCommand::Schema(a)) => {
            let root = home::locate(home)?;
            home::acting_user_may(&root, args.token.as_deref(), &a.target, Permission::Read)?;
            datasets::schema(&root, a)
        }
        Command::Datasets(a) => datasets::list(&home::locate(home)?, a, args.token.as_deref()),
        Command::Model(ModelCommand::List(a)) => {
            models::list(&home::locate(home)?, a, args.token.as_deref())
        }
        Command::Model(ModelCommand::Show(a)) => {
            models::show(&home::locate(home)?, a, args.token.as_deref())
        }
        Command::Model(ModelCommand::Activate(a)) => {
            models::activate(&home::locate(home)?, a, args.token.as_deref())
        }
        Command::Model(ModelCommand::Evaluations(a)) => {
            models::evaluations(&home::locate(home)?, a, args.token.as_deref())
        }
        Command::K8s(K8sCommand::Render(a)) => k8s::render(&home::locate(home)?, a),
        Command::Spark(SparkCommand::Render(a)) => spark::render(&home::locate(home)?, a),
        Command::Cluster(ClusterCommand::Workloads(a)) => {
            runtime()?.block_on(async { jobs::workloads(&connect()?, a).await })
        }
        Command::Cluster(ClusterCommand::RemoveLeftovers) => {
            runtime()?.block_on(async { jobs::remove_leftovers(&connect()?).await })
        }
        Command::Cluster(ClusterCommand::Test(a)) => {
            runtime()?.block_on(k8s::cluster_test(&home::locate(home)?, a))
        }
        Command::Recipe(RecipeCommand::Explain(a)) => transform::explain(&home::locate(home)?, a),
        Command::Transform(TransformCommand::Run(a)) => transform::run(a),
        Command::Transform(TransformCommand::Install(a)) => transform::install(a),
        Command::Shim(_) => unreachable!("handled in main"),
    }
}

/// Quickstart prints its own story; only warnings from the engine are worth showing.
fn init_tracing_quiet() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .with_target(false)
        .compact()
        .try_init();
}
