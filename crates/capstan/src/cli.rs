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
    /// Run-request override of the execution configuration.
    #[arg(long, value_name = "NAME")]
    pub exec_config: Option<String>,
    /// Run-request override of the cluster.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Run-request override of the Spark configuration.
    #[arg(long, value_name = "NAME")]
    pub spark_config: Option<String>,
    /// Run-request override of the code environment.
    #[arg(long, value_name = "NAME")]
    pub code_env: Option<String>,
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
