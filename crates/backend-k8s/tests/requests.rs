//! The backend's request sequence against kube's test service: create the pod, its code and
//! token, follow it, read its log, delete it and wait until it is gone. Logic only; the
//! end-to-end suite (crates/capstan/tests/it/k8s.rs) runs the same on a real cluster.

use std::pin::pin;
use std::sync::{Arc, Mutex};

use capstan_backend_k8s::K8sBackend;
use capstan_core::job::JobState;
use capstan_core::model::{ExecKind, RecipeKind};
use capstan_engine::backend::{ActivityControl, ActivityEvent, ActivitySpec, Backend, DataAccess};
use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::json;

/// Where request `what` ("METHOD PATH") came in the sequence the mock saw.
fn position(seen: &[String], what: &str) -> usize {
    seen.iter()
        .position(|s| s == what)
        .unwrap_or_else(|| panic!("no {what} in {seen:?}"))
}

fn pod(phase: &str, state: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "capstan-x-7-0-0", "namespace": "ns", "uid": "1234-abcd"},
        "status": {"phase": phase, "containerStatuses": [{"name": "recipe", "image": "img", "imageID": "", "ready": true, "restartCount": 0, "state": state}]}
    })
}

#[tokio::test]
async fn create_follow_log_delete() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let mut gets = 0;
        let mut deleted = false;
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let line = format!("{} {}", req.method(), path);
            log.lock().unwrap().push(line.clone());
            let (status, body) = match (req.method().as_str(), path.as_str()) {
                ("POST", "/api/v1/namespaces/ns/pods") => (
                    StatusCode::CREATED,
                    pod(
                        "Pending",
                        json!({"waiting": {"reason": "ContainerCreating"}}),
                    ),
                ),
                ("POST", "/api/v1/namespaces/ns/configmaps") => (
                    StatusCode::CREATED,
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "capstan-x-7-0-0"}}),
                ),
                ("POST", "/api/v1/namespaces/ns/secrets") => (
                    StatusCode::CREATED,
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "capstan-x-7-0-0"}}),
                ),
                ("GET", "/api/v1/namespaces/ns/events") => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []}),
                ),
                ("GET", p) if p.ends_with("/log") => {
                    send.send_response(Response::new(Body::from(b"2026-11-28T00:00:01.000000000Z hello\n2026-11-28T00:00:02.000000000Z done\n".to_vec())));
                    continue;
                }
                ("GET", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0") if deleted => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "pods \"capstan-x-7-0-0\" not found"}),
                ),
                ("GET", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0") => {
                    gets += 1;
                    if gets == 1 {
                        (
                            StatusCode::OK,
                            pod(
                                "Running",
                                json!({"running": {"startedAt": "2026-11-28T00:00:01Z"}}),
                            ),
                        )
                    } else {
                        (
                            StatusCode::OK,
                            pod(
                                "Succeeded",
                                json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                            ),
                        )
                    }
                }
                ("DELETE", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0") => {
                    deleted = true;
                    (
                        StatusCode::OK,
                        pod("Succeeded", json!({"terminated": {"exitCode": 0}})),
                    )
                }
                _ => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "code": 404, "message": format!("unexpected {line}")}),
                ),
            };
            let mut resp = Response::new(Body::from(serde_json::to_vec(&body).unwrap()));
            *resp.status_mut() = status;
            send.send_response(resp);
        }
    });

    let dir = std::env::temp_dir().join(format!("capstan-k8s-requests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The code is in its project's folder, where it is read from.
    std::fs::create_dir_all(dir.join("projects/p")).unwrap();
    std::fs::write(dir.join("projects/p/hi.py"), "print('hello')\n").unwrap();
    let backend = K8sBackend::with_client(&dir, Client::new(service, "default"));
    let spec = ActivitySpec {
        recipe_kind: RecipeKind::Python,
        project: "p".into(),
        code_file: Some(dir.join("projects/p/hi.py")),
        image: Some("img".into()),
        namespace: Some("ns".into()),
        data: Some(DataAccess {
            api_url: "http://capstan:7878".into(),
            token: "capa_7_0_0_x".into(),
        }),
        ..ActivitySpec::bare(7, 0, dir.clone(), dir.clone(), ExecKind::Kubernetes)
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ctl = ActivityControl {
        cancel: Default::default(),
        events: tx,
    };
    let outcome = backend.run(&spec, ctl).await;
    assert_eq!(outcome.state, JobState::Succeeded, "{outcome:?}");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert!(events.contains(&ActivityEvent::Running), "{events:?}");
    let text = std::fs::read_to_string(dir.join("log")).unwrap();
    assert_eq!(
        text,
        "2026-11-28T00:00:01.000000000Z o hello\n2026-11-28T00:00:02.000000000Z o done\n"
    );
    drop(backend);
    server.abort();
    let seen = seen.lock().unwrap().clone();
    let order = |what: &str| position(&seen, what);
    assert!(
        order("POST /api/v1/namespaces/ns/pods") < order("POST /api/v1/namespaces/ns/configmaps")
    );
    assert!(
        order("POST /api/v1/namespaces/ns/configmaps")
            < order("POST /api/v1/namespaces/ns/secrets")
    );
    assert!(
        order("POST /api/v1/namespaces/ns/secrets")
            < order("GET /api/v1/namespaces/ns/pods/capstan-x-7-0-0/log")
    );
    let delete = order("DELETE /api/v1/namespaces/ns/pods/capstan-x-7-0-0");
    assert!(order("GET /api/v1/namespaces/ns/pods/capstan-x-7-0-0/log") < delete);
    // It waits until the pod is gone.
    assert!(
        seen[delete + 1..]
            .iter()
            .any(|s| s == "GET /api/v1/namespaces/ns/pods/capstan-x-7-0-0"),
        "{seen:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Spark driver pod whose application failed after the kernel killed an executor: the
/// executor's log is kept beside the driver's, the diagnosis names the pod and the setting to
/// raise, and the executors are deleted (after their logs were read) and waited for.
#[tokio::test]
async fn spark_driver_keeps_executor_logs_and_names_oom_killed_executors() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let executor = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "capstan-sum-exec-1", "namespace": "ns", "labels": {"spark-role": "executor"}},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "spark-kubernetes-executor", "image": "img", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}
    });
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (mut gets, mut deleted, mut swept) = (0, false, false);
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let line = format!("{} {}", req.method(), path);
            log.lock().unwrap().push(line.clone());
            let list = |items: Vec<serde_json::Value>| json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items});
            let (status, body) = match (req.method().as_str(), path.as_str()) {
                ("POST", "/api/v1/namespaces/ns/pods") => (
                    StatusCode::CREATED,
                    pod(
                        "Pending",
                        json!({"waiting": {"reason": "ContainerCreating"}}),
                    ),
                ),
                (
                    "POST",
                    p @ ("/api/v1/namespaces/ns/configmaps" | "/api/v1/namespaces/ns/secrets"),
                ) => (
                    StatusCode::CREATED,
                    json!({"apiVersion": "v1", "kind": if p.ends_with("maps") { "ConfigMap" } else { "Secret" },
                           "metadata": {"name": "capstan-x-7-0-0"}}),
                ),
                ("GET", "/api/v1/namespaces/ns/events") => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []}),
                ),
                ("GET", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0/log") => {
                    send.send_response(Response::new(Body::from(
                        b"2026-11-28T00:00:01.000000000Z ERROR TaskSetManager: Task 0 in stage 0.0 failed 4 times; aborting job\n".to_vec(),
                    )));
                    continue;
                }
                ("GET", "/api/v1/namespaces/ns/pods/capstan-sum-exec-1/log") => {
                    send.send_response(Response::new(Body::from(
                        b"2026-11-28T00:00:01.500000000Z INFO Executor: Running task 0.0 in stage 0.0\n".to_vec(),
                    )));
                    continue;
                }
                ("GET", "/api/v1/namespaces/ns/pods") if swept => (StatusCode::OK, list(vec![])),
                ("GET", "/api/v1/namespaces/ns/pods") => (
                    StatusCode::OK,
                    list(vec![pod("Failed", json!({})), executor.clone()]),
                ),
                ("DELETE", "/api/v1/namespaces/ns/pods") => {
                    swept = true;
                    (StatusCode::OK, list(vec![executor.clone()]))
                }
                ("GET", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0") if deleted => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
                ("GET", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0") => {
                    gets += 1;
                    let state = if gets == 1 {
                        (
                            "Running",
                            json!({"running": {"startedAt": "2026-11-28T00:00:01Z"}}),
                        )
                    } else {
                        (
                            "Failed",
                            json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
                        )
                    };
                    (StatusCode::OK, pod(state.0, state.1))
                }
                ("DELETE", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0") => {
                    deleted = true;
                    (StatusCode::OK, pod("Failed", json!({})))
                }
                _ => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "code": 404, "message": format!("unexpected {line}")}),
                ),
            };
            let mut resp = Response::new(Body::from(serde_json::to_vec(&body).unwrap()));
            *resp.status_mut() = status;
            send.send_response(resp);
        }
    });

    let dir =
        std::env::temp_dir().join(format!("capstan-k8s-spark-requests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(dir.join("projects/p")).unwrap();
    std::fs::write(dir.join("projects/p/sum.py"), "print('sum')\n").unwrap();
    let mut files = capstan_core::load::HomeFiles::default();
    files.toml.insert("capstan.toml".into(), b"".to_vec());
    files.toml.insert(
        "spark-configs.toml".into(),
        b"[spark_config.k8s]\nmaster = \"kubernetes\"\nimage = \"img\"\nnamespace = \"ns\"\n"
            .to_vec(),
    );
    let (home, diags) = capstan_core::load::load(std::path::Path::new("/h"), &files);
    assert!(!diags.has_errors(), "{:?}", diags.list);
    let backend = K8sBackend::with_client(&dir, Client::new(service, "default"));
    let spec = ActivitySpec {
        recipe_kind: RecipeKind::PySpark,
        project: "p".into(),
        code_file: Some(dir.join("projects/p/sum.py")),
        image: Some("img".into()),
        namespace: Some("ns".into()),
        spark: Some(home.spark_configs["k8s"].clone()),
        ..ActivitySpec::bare(7, 0, dir.clone(), dir.clone(), ExecKind::Kubernetes)
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let ctl = ActivityControl {
        cancel: Default::default(),
        events: tx,
    };
    let outcome = backend.run(&spec, ctl).await;
    assert_eq!(outcome.state, JobState::Failed, "{outcome:?}");
    assert_eq!(
        outcome.diagnosis.as_deref(),
        Some(
            "Spark executor pods were killed for exceeding their memory limit (OOMKilled: capstan-sum-exec-1): raise \
             executor_memory_overhead (memory outside the JVM heap, where Python workers run) or executor_memory of \
             Spark configuration 'k8s' (the recipe failed with exit code 1: ERROR TaskSetManager: Task 0 in stage 0.0 \
             failed 4 times; aborting job)"
        )
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("executors/capstan-sum-exec-1.log")).unwrap(),
        "2026-11-28T00:00:01.500000000Z INFO Executor: Running task 0.0 in stage 0.0\n"
    );
    drop(backend);
    server.abort();
    let seen = seen.lock().unwrap().clone();
    let order = |what: &str| position(&seen, what);
    // The executor's log is read while its pod exists: before the driver pod (its owner) goes.
    let executor_log = order("GET /api/v1/namespaces/ns/pods/capstan-sum-exec-1/log");
    let driver_deleted = order("DELETE /api/v1/namespaces/ns/pods/capstan-x-7-0-0");
    let swept = order("DELETE /api/v1/namespaces/ns/pods");
    assert!(
        executor_log < driver_deleted && driver_deleted < swept,
        "{seen:?}"
    );
    // And it waits until no executor is left.
    assert!(
        seen[swept + 1..]
            .iter()
            .any(|s| s == "GET /api/v1/namespaces/ns/pods"),
        "{seen:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
