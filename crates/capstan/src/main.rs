//! The `capstan` binary: glue between the command line and the capstan crates.
//!
//! Errors are `anyhow` with context here, printed once in `main`. Exit codes are part of the
//! interface (see [`exit`]).

mod check;
mod cli;
mod explain;
mod home;
mod init;
mod quickstart;
mod token;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes that scripts can rely on.
pub mod exit {
    /// The command did what was asked.
    pub const OK: u8 = 0;
    /// It failed: a problem in the home, a failed job, an engine error.
    pub const FAILURE: u8 = 1;
    /// The command line itself was wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// The user may not do this (permissions).
    pub const DENIED: u8 = 3;
}

/// An error that carries its own exit code, for failures that are not "generic".
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
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

fn run(args: cli::Cli) -> anyhow::Result<u8> {
    use cli::{Command, ConfigCommand, TokenCommand};
    match args.command {
        Command::Init(a) => init::run(&a),
        Command::Check(a) => check::run(&home::locate(args.home.as_deref())?, &a),
        Command::Config(ConfigCommand::Explain(a)) => {
            explain::run(&home::locate(args.home.as_deref())?, &a)
        }
        Command::Config(ConfigCommand::List(a)) => {
            explain::list(&home::locate(args.home.as_deref())?, &a)
        }
        Command::Token(TokenCommand::Create(a)) => {
            token::create(&home::locate(args.home.as_deref())?, &a)
        }
        Command::Quickstart(a) => quickstart::run(args.home.as_deref(), &a),
    }
}
