//! `cluster test` run by the daemon, for the web UI's button and the REST API: each run's
//! report kept in memory as its lines arrive, so a page can show the steps as they happen.
//!
//! The test itself is the binary's ([`ClusterTester`]): it knows every backend, and the CLI's
//! `capstan cluster test` prints the very same lines.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use crate::{Caller, EngineError};

/// One line of a cluster test's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestLine {
    /// A step that was tried: whether it worked, what it found, how long it took.
    Step {
        ok: bool,
        what: String,
        detail: String,
        took_ms: u64,
    },
    /// A step not tried, and why.
    Skip { what: String, why: String },
    /// Which configuration the test runs with, and why that one.
    Note(String),
    /// Why the test failed.
    Error(String),
}

impl std::fmt::Display for TestLine {
    /// As `capstan cluster test` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TestLine::Step {
                ok,
                what,
                detail,
                took_ms,
            } => write!(
                f,
                "{} {what:<26} {detail} ({took_ms} ms)",
                if *ok { "ok  " } else { "FAIL" }
            ),
            TestLine::Skip { what, why } => write!(f, "skip {what:<26} {why}"),
            TestLine::Note(text) => f.write_str(text),
            TestLine::Error(text) => write!(f, "error: {text}"),
        }
    }
}

/// Where a test reports its lines as they happen.
pub type Report<'a> = &'a (dyn Fn(TestLine) + Send + Sync);

/// Runs a cluster's test: the binary's, which knows every backend.
pub trait ClusterTester: Send + Sync {
    /// Tests `cluster` with `exec_config` (absent: the tester chooses, and says which and
    /// why), reporting each line as it happens: `Ok(true)` when every step passed, an error
    /// when the test could not start (an unknown configuration, say).
    fn test<'a>(
        &'a self,
        cluster: &'a str,
        exec_config: Option<&'a str>,
        report: Report<'a>,
    ) -> BoxFuture<'a, Result<bool, String>>;
}

/// One test run: who started it, its lines so far, and how it ended.
#[derive(Debug)]
pub struct TestRun {
    pub id: u64,
    pub cluster: String,
    pub exec_config: Option<String>,
    pub user: String,
    pub started_ms: i64,
    state: Mutex<(Vec<TestLine>, Option<bool>)>,
}

impl TestRun {
    pub fn lines(&self) -> Vec<TestLine> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// `None` while it runs; whether it passed once over.
    pub fn passed(&self) -> Option<bool> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    fn push(&self, line: TestLine) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .push(line);
    }

    fn end(&self, passed: bool) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(passed);
    }
}

/// The daemon's cluster test runs, newest last; the oldest are forgotten past [`KEPT`].
#[derive(Default)]
pub struct ClusterTests {
    tester: Option<Arc<dyn ClusterTester>>,
    runs: Mutex<VecDeque<Arc<TestRun>>>,
    next: AtomicU64,
}

/// Test runs kept in memory.
pub const KEPT: usize = 20;

impl ClusterTests {
    pub fn new(tester: Arc<dyn ClusterTester>) -> ClusterTests {
        ClusterTests {
            tester: Some(tester),
            ..ClusterTests::default()
        }
    }

    /// Starts a test of `cluster` of `home` (instance admins only: it runs a container or pod
    /// of a configuration's image on the cluster). The run goes on after the caller leaves.
    pub fn start(
        &self,
        caller: &Caller,
        home: &capstan_core::model::Home,
        cluster: &str,
        exec_config: Option<String>,
    ) -> Result<Arc<TestRun>, EngineError> {
        admin_only(caller)?;
        if !home.clusters.contains_key(cluster) {
            return Err(EngineError::NotFound(format!(
                "unknown cluster `{cluster}`"
            )));
        }
        if let Some(c) = &exec_config
            && !home.exec_configs.contains_key(c)
        {
            return Err(EngineError::NotFound(format!(
                "unknown execution configuration `{c}`"
            )));
        }
        let Some(tester) = self.tester.clone() else {
            return Err(EngineError::Conflict(
                "this daemon cannot run cluster tests".into(),
            ));
        };
        let run = Arc::new(TestRun {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            cluster: cluster.to_string(),
            exec_config,
            user: caller.name.clone(),
            started_ms: now_ms(),
            state: Mutex::new((Vec::new(), None)),
        });
        {
            let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
            runs.push_back(run.clone());
            while runs.len() > KEPT {
                runs.pop_front();
            }
        }
        let r = run.clone();
        tokio::spawn(async move {
            let report = |line: TestLine| r.push(line);
            let passed = match tester
                .test(&r.cluster, r.exec_config.as_deref(), &report)
                .await
            {
                Ok(passed) => passed,
                Err(e) => {
                    r.push(TestLine::Error(e));
                    false
                }
            };
            tracing::info!(cluster = %r.cluster, passed, "cluster test over");
            r.end(passed);
        });
        Ok(run)
    }

    /// Test run `id` (admins only).
    pub fn get(&self, caller: &Caller, id: u64) -> Result<Arc<TestRun>, EngineError> {
        admin_only(caller)?;
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("no cluster test {id}")))
    }
}

fn admin_only(caller: &Caller) -> Result<(), EngineError> {
    if caller.admin {
        Ok(())
    } else {
        Err(EngineError::Denied(
            "testing a cluster is for instance admins".into(),
        ))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_the_cli_prints_them() {
        let step = TestLine::Step {
            ok: false,
            what: "API reachable".into(),
            detail: "connection refused".into(),
            took_ms: 12,
        };
        assert_eq!(
            step.to_string(),
            "FAIL API reachable              connection refused (12 ms)"
        );
        let skip = TestLine::Skip {
            what: "cleanup".into(),
            why: "nothing was created in the cluster".into(),
        };
        assert_eq!(
            skip.to_string(),
            "skip cleanup                    nothing was created in the cluster"
        );
    }

    struct Passes;

    impl ClusterTester for Passes {
        fn test<'a>(
            &'a self,
            cluster: &'a str,
            _: Option<&'a str>,
            report: Report<'a>,
        ) -> BoxFuture<'a, Result<bool, String>> {
            Box::pin(async move {
                report(TestLine::Note(format!("testing {cluster}")));
                Ok(true)
            })
        }
    }

    #[tokio::test]
    async fn a_run_keeps_its_lines_and_only_admins_start_or_read_one() {
        let mut files = capstan_core::load::HomeFiles::default();
        files.toml.insert(
            "capstan.toml".into(),
            b"[instance]\nname = \"t\"\n".to_vec(),
        );
        files.toml.insert(
            "clusters.toml".into(),
            b"[cluster.local-docker]\nkind = \"docker\"\nhost = \"unix:///var/run/docker.sock\"\n"
                .to_vec(),
        );
        let (home, d) = capstan_core::load::load(std::path::Path::new("/h"), &files);
        assert!(!d.has_errors(), "{:?}", d.list);
        let tests = ClusterTests::new(Arc::new(Passes));
        let admin = Caller {
            name: "root".into(),
            admin: true,
            in_home: true,
        };
        let alice = Caller {
            admin: false,
            name: "alice".into(),
            ..admin.clone()
        };
        assert!(matches!(
            tests.start(&alice, &home, "local-docker", None),
            Err(EngineError::Denied(_))
        ));
        assert!(matches!(
            tests.start(&admin, &home, "nowhere", None),
            Err(EngineError::NotFound(_))
        ));
        let run = tests.start(&admin, &home, "local-docker", None).unwrap();
        for _ in 0..1000 {
            if run.passed().is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(run.passed(), Some(true));
        assert_eq!(
            tests.get(&admin, run.id).unwrap().lines(),
            [TestLine::Note("testing local-docker".into())]
        );
        assert!(matches!(
            tests.get(&alice, run.id),
            Err(EngineError::Denied(_))
        ));
        // Without a tester (a daemon of tests), a start says so.
        assert!(matches!(
            ClusterTests::default().start(&admin, &home, "local-docker", None),
            Err(EngineError::Conflict(_))
        ));
    }
}
