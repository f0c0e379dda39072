//! capstan's core: the domain model of an instance home, loading and validating its
//! configuration, and resolving the effective settings of a run with their provenance.
//!
//! This crate does no I/O beyond reading a home's files ([`HomeFiles::read`]). Everything that
//! talks to a database, an engine or the network lives in other crates.
//!
//! Start at [`load_home`], then [`resolve::resolve`].

pub mod access;
pub mod diag;
pub mod flow;
pub mod formula;
pub mod job;
pub mod limits;
pub mod load;
pub mod ml;
pub mod model;
pub mod pins;
pub mod quantity;
pub mod resolve;
pub mod sample;
pub mod schedule;
pub mod token;
mod toml_read;
mod validate;
pub mod visual;

use std::path::Path;

pub use diag::{Diagnostic, Severity};
pub use load::HomeFiles;
pub use model::Home;
pub use toml_read::{check_name, suggest, unknown_help};
pub use validate::{DOCKER_MIN_MEMORY, SPARK_MIN_MEMORY, SPARK_OWNED_CONF, host_checks};

/// Why a home could not be read at all (as opposed to being read with problems).
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("cannot read home {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads and validates the home at `root`. The diagnostics are sorted by file and position.
pub fn load_home(root: &Path) -> Result<(Home, Vec<Diagnostic>), HomeError> {
    let files = HomeFiles::read(root).map_err(|source| HomeError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    let (mut home, diags) = load::load(root, &files);
    home.images = load::read_image_records(root);
    Ok((home, diags.into_sorted()))
}

/// capstan's Python runtime (`python/capstan` in the repo), embedded so that images and local
/// runs get it from the binary alone.
pub const PYTHON_RUNTIME: &str = include_str!("../../../python/capstan/capstan/__init__.py");

/// capstan's Spark helpers (`capstan.spark`), next to the runtime.
pub const PYTHON_RUNTIME_SPARK: &str = include_str!("../../../python/capstan/capstan/spark.py");

/// The runner of ML recipes (`capstan.ml`): trains, scores and evaluates saved models. An ML
/// activity runs this source followed by a call with its spec, so it needs nothing staged
/// beyond the runtime.
pub const PYTHON_ML_RUNNER: &str = include_str!("../../../python/capstan/capstan/ml.py");

/// The agent of notebook kernels (`capstan.kernel`): starts ipykernel next to itself and
/// relays its channels to the daemon over one WebSocket it dials.
pub const PYTHON_KERNEL_AGENT: &str = include_str!("../../../python/capstan/capstan/kernel.py");

/// capstan's R client (`r/capstan.R`), loaded into R recipes through `R_PROFILE_USER`.
pub const R_RUNTIME: &str = include_str!("../../../r/capstan.R");

/// A short, stable id for the instance at `root`: it labels the instance's containers and names
/// its cgroups, so two homes on one machine or engine never touch each other's work.
pub fn instance_id(root: &Path) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(root.display().to_string().as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}
