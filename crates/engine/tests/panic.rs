//! Issue 13, finding 4: a backend task that panicked (an overflow on a user's value) left its job
//! `starting` forever, holding its slot, with its container never removed. A panic must end the
//! job `failed` with "internal error", free the slot, and have the backend stop the work.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_core::job::JobState;
use capstan_core::model::ExecKind;
use capstan_core::resolve::RunRequest;
use capstan_engine::backend::{
    ActivityControl, ActivityEvent, ActivityOutcome, ActivitySpec, Backend, Resumed, Usage,
};
use capstan_engine::{Caller, Engine};
use futures_util::future::BoxFuture;

/// What a resume was asked to stop: the job, its backend reference, whether cancelled.
type Stop = (i64, Option<String>, bool);

/// Starts "a container", then panics; asked to resume with a cancelled token, says what it
/// would stop.
struct Panicky {
    stopped: Arc<Mutex<Vec<Stop>>>,
}

impl Backend for Panicky {
    fn kind(&self) -> ExecKind {
        ExecKind::Local
    }

    fn run<'a>(
        &'a self,
        spec: &'a ActivitySpec,
        ctl: ActivityControl,
    ) -> BoxFuture<'a, ActivityOutcome> {
        Box::pin(async move {
            ctl.report(ActivityEvent::Starting);
            ctl.report(ActivityEvent::Started {
                backend_ref: format!("container-{}", spec.job_id),
            });
            // Let the engine record where the work is before the panic.
            tokio::time::sleep(Duration::from_millis(50)).await;
            panic!("overflow when adding duration to instant");
        })
    }

    fn resume<'a>(
        &'a self,
        spec: &'a ActivitySpec,
        backend_ref: Option<&'a str>,
        ctl: ActivityControl,
    ) -> BoxFuture<'a, Resumed> {
        Box::pin(async move {
            self.stopped.lock().unwrap().push((
                spec.job_id,
                backend_ref.map(String::from),
                ctl.cancel.is_cancelled(),
            ));
            Resumed::Finished(ActivityOutcome::cancelled())
        })
    }

    fn usage<'a>(&'a self, _spec: &'a ActivitySpec) -> BoxFuture<'a, Option<Usage>> {
        Box::pin(async { None })
    }
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_backend_fails_the_job_frees_its_slot_and_stops_its_work() {
    let root = std::env::temp_dir().join(format!("capstan-engine-panic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    write(&root, "capstan.toml", "[defaults]\nexec_config = \"one\"\n");
    // One slot: the second job runs only if the first one's slot was freed.
    write(
        &root,
        "exec-configs.toml",
        "[exec_config.one]\nkind = \"local\"\nmax_concurrent = 1\n",
    );
    write(
        &root,
        "projects/p/project.toml",
        "[project]\nname = \"p\"\n",
    );
    write(&root, "projects/p/recipes/r.toml", "kind = \"shell\"\n");
    write(&root, "projects/p/recipes/r.sh", "true\n");
    let (home, diags) = capstan_core::load_home(&root).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    let stopped = Arc::new(Mutex::new(Vec::new()));
    let backend = Arc::new(Panicky {
        stopped: stopped.clone(),
    });
    let (engine, starter) = Engine::open(&root, home, vec![backend], None).unwrap();
    starter.start().unwrap();
    let admin = Caller {
        name: "local".into(),
        admin: true,
        in_home: false,
    };
    let ids: Vec<i64> = (0..2)
        .map(|_| {
            engine
                .submit(&admin, "p", "r", RunRequest::default())
                .unwrap()
                .id
        })
        .collect();
    let wait = |engine: &Engine, id: i64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = engine.state_of(id).unwrap().unwrap();
            if state.is_final() {
                return state;
            }
            assert!(Instant::now() < deadline, "job {id} is still {state}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for id in &ids {
        let e = engine.clone();
        let id = *id;
        let state = tokio::task::spawn_blocking(move || wait(&e, id))
            .await
            .unwrap();
        assert_eq!(state, JobState::Failed);
        let job = engine.job(&admin, id).unwrap();
        let diagnosis = job.diagnosis.unwrap_or_default();
        assert!(
            diagnosis.contains("internal error")
                && diagnosis.contains("overflow when adding duration to instant")
                && diagnosis.contains("the job's work was stopped"),
            "{diagnosis}"
        );
    }
    let stopped = stopped.lock().unwrap().clone();
    assert_eq!(
        stopped,
        ids.iter()
            .map(|id| (*id, Some(format!("container-{id}")), true))
            .collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&root);
}
