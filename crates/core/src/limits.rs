//! The maxima of every count a configuration or a run request may set. Quantities have theirs
//! on their types ([`crate::quantity::Duration::MAX`], [`crate::quantity::Memory::MAX`],
//! [`crate::quantity::Cpu::MAX`]). Values over them are refused where they are read, naming the
//! field and the maximum, so nothing computed from them later can overflow.

/// GPUs one activity may ask for.
pub const GPUS: u32 = 64;
/// A Kubernetes toleration's `toleration_seconds`: 365 days.
pub const TOLERATION_SECONDS: u32 = 365 * 86_400;
/// `max_concurrent` of an execution configuration, cluster or Spark configuration.
pub const MAX_CONCURRENT: u32 = 100_000;
/// Spark's `local_threads`, `driver_cores` and `executor_cores`.
pub const CORES: u32 = 1024;
/// `[import] max_columns`: the most columns a CSV header may name.
pub const CSV_COLUMNS: u32 = 1_000_000;
/// Spark's `executor_instances`.
pub const EXECUTORS: u32 = 10_000;
