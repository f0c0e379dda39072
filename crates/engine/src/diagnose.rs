//! From how a process ended to what a data scientist needs to read.

use capstan_core::job::JobState;
use capstan_core::quantity::Memory;

use capstan_core::model::Home;

use crate::backend::{ActivityOutcome, ActivitySpec};

/// Why an activity cannot start: its input `dataset` has no data. Names what would produce it:
/// the project's recipe that writes it, or an import.
pub fn missing_input(home: &Home, project: &str, dataset: &str) -> String {
    let producer = home
        .projects
        .get(project)
        .and_then(|p| capstan_core::flow::producer(p, dataset));
    let is_model = home
        .projects
        .get(project)
        .is_some_and(|p| p.models.contains_key(dataset));
    match producer {
        Some(r) if is_model => format!(
            "saved model `{dataset}` has no version yet: recipe `{project}/{}` trains it (`capstan run {project}/{}`)",
            r.name, r.name
        ),
        None if is_model => format!(
            "saved model `{dataset}` has no version yet, and no recipe of project `{project}` trains it: add an ml_train recipe with `outputs = [\"{dataset}\"]`"
        ),
        Some(r) => format!(
            "input dataset `{dataset}` has no data yet: recipe `{project}/{}` builds it (`capstan run {project}/{}`)",
            r.name, r.name
        ),
        None => format!(
            "input dataset `{dataset}` has no data yet, and no recipe of project `{project}` builds it: import it with `capstan dataset import {project}/{dataset} FILE.csv`"
        ),
    }
}

/// How a recipe's process or container ended, as a backend observed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ending {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it (from the cgroup or the engine, never guessed from 137).
    pub oom_killed: bool,
    pub timed_out: bool,
    pub cancelled: bool,
    /// It could not be started at all: the engine's or the OS's message.
    pub start_error: Option<String>,
    /// Its output could not be kept.
    pub log_error: Option<String>,
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time_ms: Option<u64>,
    /// Its last lines on stderr.
    pub last_stderr: Vec<String>,
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// The last Python traceback in some lines of stderr: which line names the error, and where
/// it was raised (`fail.py line 3`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traceback {
    pub error_line: usize,
    pub place: Option<String>,
}

pub fn traceback(stderr: &[String]) -> Option<Traceback> {
    let start = stderr
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last)"))?;
    // The error is the first line after the frames (indented), not the last line: a framework
    // may log on after the traceback (Spark's shutdown hooks do).
    let end = stderr[start + 1..]
        .iter()
        .position(|l| !l.starts_with(' ') && !l.trim().is_empty())?
        + start
        + 1;
    // The last frame: `  File "/…/work/hello.py", line 3, in <module>`.
    let place = stderr[start..end]
        .iter()
        .rev()
        .find(|l| l.trim_start().starts_with("File \""))
        .and_then(|f| {
            let f = f.trim_start().strip_prefix("File \"")?;
            let (path, rest) = f.split_once('"')?;
            let line = rest.trim_start_matches(", line ").split(',').next()?;
            let file = path.rsplit('/').next()?;
            Some(format!("{file} line {line}"))
        });
    Some(Traceback {
        error_line: end,
        place,
    })
}

/// The line of a Python traceback that names the error, and where it was raised in the
/// recipe's own code.
pub fn python_error(stderr: &[String]) -> Option<String> {
    let tb = traceback(stderr)?;
    let error = stderr[tb.error_line].trim();
    Some(match tb.place {
        Some(p) => format!("{error} (at {p})"),
        None => error.to_string(),
    })
}

/// The outcome of an activity, with its diagnosis.
pub fn outcome(spec: &ActivitySpec, exit: &Ending) -> ActivityOutcome {
    let mut o = ActivityOutcome {
        state: JobState::Failed,
        exit_code: exit.exit_code.map(i64::from),
        signal: exit.signal.map(i64::from),
        diagnosis: None,
        peak_memory_bytes: exit.peak_memory_bytes,
        cpu_time_ms: exit.cpu_time_ms,
    };
    let last_line = || {
        exit.last_stderr
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
    };
    o.diagnosis = if let Some(e) = &exit.start_error {
        Some(e.clone())
    } else if let Some(e) = &exit.log_error {
        Some(format!(
            "stopped because its logs could not be kept under {} ({e}): the disk may be full",
            spec.dir.display()
        ))
    } else if exit.oom_killed {
        let limit = spec
            .memory_limit
            .map_or("memory".to_string(), |m| format!("{} memory", human(m)));
        Some(format!(
            "out of memory: exceeded the {limit} limit of {} (ask for a larger execution configuration, or use less memory)",
            spec.config_phrase()
        ))
    } else if exit.timed_out {
        o.state = JobState::TimedOut;
        Some(format!(
            "timed out: still running after the {} timeout",
            spec.timeout
                .map_or("configured".to_string(), |t| t.to_string())
        ))
    } else if exit.cancelled {
        o.state = JobState::Cancelled;
        None
    } else {
        match (exit.exit_code, exit.signal) {
            (Some(0), _) => {
                o.state = JobState::Succeeded;
                None
            }
            (Some(code), _) => {
                let detail = python_error(&exit.last_stderr).or_else(last_line);
                // Containers report a process killed by a signal as 128 + the signal.
                let signal = if (129..=159).contains(&code) {
                    format!(" ({code} = killed by {})", signal_name(code - 128))
                } else {
                    String::new()
                };
                Some(match detail {
                    Some(d) => format!("the recipe failed with exit code {code}{signal}: {d}"),
                    None => format!(
                        "the recipe failed with exit code {code}{signal} (it printed nothing on stderr)"
                    ),
                })
            }
            (None, Some(sig)) => Some(format!(
                "the recipe was killed by {} (signal {sig}) from outside capstan{}",
                signal_name(sig),
                if sig == 9 {
                    ", not by its memory limit"
                } else {
                    ""
                }
            )),
            (None, None) => Some("the recipe ended without an exit status".to_string()),
        }
    };
    o
}

/// Memory as people say it: `256 MiB`, `2 GiB`.
pub fn human(m: Memory) -> String {
    let b = m.bytes();
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_exit_codes_name_the_signal() {
        let spec = crate::backend::ActivitySpec {
            exec_config: Some("small".into()),
            memory_limit: Some(Memory::from_bytes(256 << 20)),
            ..crate::backend::ActivitySpec::bare(
                1,
                0,
                "/d".into(),
                "/h".into(),
                capstan_core::model::ExecKind::Docker,
            )
        };
        let killed = Ending {
            exit_code: Some(137),
            ..Ending::default()
        };
        assert_eq!(
            outcome(&spec, &killed).diagnosis.unwrap(),
            "the recipe failed with exit code 137 (137 = killed by SIGKILL) (it printed nothing on stderr)"
        );
        let oom = Ending {
            exit_code: Some(137),
            oom_killed: true,
            ..Ending::default()
        };
        assert_eq!(
            outcome(&spec, &oom).diagnosis.unwrap(),
            "out of memory: exceeded the 256 MiB memory limit of execution configuration 'small' (ask for a larger execution configuration, or use less memory)"
        );
    }

    #[test]
    fn python_tracebacks() {
        let err: Vec<String> = [
            "Traceback (most recent call last):",
            "  File \"/h/state/jobs/1/a0-0/work/fail.py\", line 3, in <module>",
            "    1 / 0",
            "ZeroDivisionError: division by zero",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            python_error(&err).unwrap(),
            "ZeroDivisionError: division by zero (at fail.py line 3)"
        );
        assert_eq!(python_error(&["plain error".to_string()]), None);
        // A framework that logs after the traceback (Spark's shutdown hooks) does not hide it.
        let mut spark = err.clone();
        spark.push("26/12/01 10:00:00 INFO SparkContext: Successfully stopped SparkContext".into());
        spark.push("26/12/01 10:00:00 INFO ShutdownHookManager: Shutdown hook called".into());
        assert_eq!(
            python_error(&spark).unwrap(),
            "ZeroDivisionError: division by zero (at fail.py line 3)"
        );
    }
}
