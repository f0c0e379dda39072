//! Diagnosis on real-shaped pod statuses and events (`tests/diagnosis/*.json`): each file holds a
//! pod (or the API's refusal to create it), its events, and what the user must be told.

use std::path::Path;

use capstan_backend_k8s::diagnose::{Assessment, assess, quota_wait};
use capstan_core::job::JobState;
use capstan_core::model::ExecKind;
use capstan_core::quantity::{Duration, Memory};
use capstan_engine::backend::ActivitySpec;
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::Value;

#[test]
fn every_failure_kind_is_told_in_the_users_terms() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/diagnosis");
    let spec = ActivitySpec {
        exec_config: Some("small".into()),
        memory_limit: Some(Memory::from_bytes(1 << 30)),
        timeout: Some(Duration::from_secs(1800)),
        ..ActivitySpec::bare(1, 0, "/d".into(), "/h".into(), ExecKind::Kubernetes)
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut seen = Vec::new();
    for file in files {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let expect = &case["expect"];
        let want = expect["contains"].as_str().unwrap();
        let (state, text) = if let Some(err) = case.get("create_error") {
            let message = quota_wait("capstan-sales", err["message"].as_str().unwrap())
                .expect("a quota refusal");
            ("waiting".to_string(), message)
        } else {
            let pod: Pod = serde_json::from_value(case["pod"].clone()).unwrap();
            let events: Vec<Event> = serde_json::from_value(case["events"].clone()).unwrap();
            let stderr: Vec<String> =
                serde_json::from_value(case.get("stderr").cloned().unwrap_or(Value::Array(vec![])))
                    .unwrap();
            match assess(&spec, &pod, &events, &stderr) {
                Assessment::Waiting(w) => ("waiting".to_string(), w),
                Assessment::Running => ("running".to_string(), String::new()),
                Assessment::Done(o) => (
                    match o.state {
                        JobState::Succeeded => "succeeded",
                        JobState::TimedOut => "timed_out",
                        _ => "failed",
                    }
                    .to_string(),
                    o.diagnosis.unwrap_or_default(),
                ),
            }
        };
        assert_eq!(state, expect["state"].as_str().unwrap(), "{name}: {text}");
        assert!(
            text.contains(want),
            "{name}:\n  got:  {text}\n  want: {want}"
        );
        seen.push(name);
    }
    for kind in [
        "oom-killed",
        "unschedulable",
        "image-pull-backoff",
        "evicted",
        "deadline-exceeded",
        "quota",
        "crash-loop",
        "node-lost",
        "image-pull-not-found-1-20",
        "pulling-image",
        "creating-container",
        "stale-events",
    ] {
        assert!(seen.iter().any(|s| s == kind), "no test data for {kind}");
    }
}
