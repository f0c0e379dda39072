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
    files.toml.insert(
        "capstan.toml".into(),
        b"[instance]\nname = \"k\"\n".to_vec(),
    );
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

/// A mock API server answering with `answer(method, path, query)`; it records each request
/// as `METHOD PATH?QUERY` (without `?` when there is no query). A `None` body answers a log.
type Answer = Box<dyn FnMut(&str, &str, &str) -> (StatusCode, Option<serde_json::Value>) + Send>;

fn mock_api(mut answer: Answer) -> (Client, Arc<Mutex<Vec<String>>>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut handle = pin!(handle);
        while let Some((req, send)) = handle.next_request().await {
            let (method, path) = (req.method().to_string(), req.uri().path().to_string());
            let query = req.uri().query().unwrap_or("").to_string();
            log.lock().unwrap().push(if query.is_empty() {
                format!("{method} {path}")
            } else {
                format!("{method} {path}?{query}")
            });
            let (status, body) = answer(&method, &path, &query);
            let mut resp = Response::new(Body::from(match body {
                Some(b) => serde_json::to_vec(&b).unwrap(),
                None => Vec::new(),
            }));
            *resp.status_mut() = status;
            send.send_response(resp);
        }
    });
    (Client::new(service, "default"), seen)
}

fn not_found(what: &str) -> (StatusCode, Option<serde_json::Value>) {
    (
        StatusCode::NOT_FOUND,
        Some(
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{what} not found")}),
        ),
    )
}

fn created(kind: &str) -> (StatusCode, Option<serde_json::Value>) {
    (
        StatusCode::CREATED,
        Some(json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": "capstan-x-7-0-0"}})),
    )
}

/// A home-like folder with one Python recipe, and its spec in namespace `ns`.
fn python_spec(name: &str) -> (std::path::PathBuf, ActivitySpec) {
    let dir = std::env::temp_dir().join(format!("capstan-k8s-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("projects/p")).unwrap();
    std::fs::write(dir.join("projects/p/hi.py"), "print('hello')\n").unwrap();
    let spec = ActivitySpec {
        recipe_kind: RecipeKind::Python,
        project: "p".into(),
        code_file: Some(dir.join("projects/p/hi.py")),
        image: Some("img".into()),
        namespace: Some("ns".into()),
        ..ActivitySpec::bare(7, 0, dir.clone(), dir.clone(), ExecKind::Kubernetes)
    };
    (dir, spec)
}

/// A quota refusal retried with backoff says once what the job waits for, not at each retry.
#[tokio::test]
async fn a_quota_wait_is_reported_once_however_many_retries() {
    let refusal = "pods \"capstan-x-7-0-0\" is forbidden: exceeded quota: compute, requested: limits.cpu=2, used: limits.cpu=8, limited: limits.cpu=8";
    let mut posts = 0;
    let (client, _seen) = mock_api(Box::new(move |method, path, _| {
        match (method, path) {
            ("POST", "/api/v1/namespaces/ns/pods") => {
                posts += 1;
                if posts <= 2 {
                    return (
                        StatusCode::FORBIDDEN,
                        Some(
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": refusal}),
                        ),
                    );
                }
                (
                    StatusCode::CREATED,
                    Some(pod(
                        "Succeeded",
                        json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                    )),
                )
            }
            ("POST", "/api/v1/namespaces/ns/configmaps") => created("ConfigMap"),
            ("POST", "/api/v1/namespaces/ns/secrets") => created("Secret"),
            ("GET", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0") => (
                StatusCode::OK,
                Some(pod(
                    "Succeeded",
                    json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                )),
            ),
            ("GET", "/api/v1/namespaces/ns/events") => (
                StatusCode::OK,
                Some(json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []})),
            ),
            ("GET", p) if p.ends_with("/log") => (StatusCode::OK, None),
            // Deleted at once.
            _ => not_found(path),
        }
    }));
    let (dir, spec) = python_spec("quota");
    let backend = K8sBackend::with_client(&dir, client);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ctl = ActivityControl {
        cancel: Default::default(),
        events: tx,
    };
    let outcome = backend.run(&spec, ctl).await;
    assert_eq!(outcome.state, JobState::Succeeded, "{outcome:?}");
    let mut waits = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let ActivityEvent::Waiting(w) = e {
            waits.push(w);
        }
    }
    assert_eq!(
        waits,
        vec![format!(
            "waiting for quota in namespace ns: exceeded quota: compute, requested: limits.cpu=2, used: limits.cpu=8, limited: limits.cpu=8"
        )]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pod that cannot pull its image: the diagnosis quotes the kubelet's pull error from the
/// events of this pod (its uid in the query), and is decided before the deletion, whatever
/// the pod looks like while it goes (the kubelet marks its container terminated, 137). The
/// removal (pod, ConfigMap, Secret) is timed to when they are gone.
#[tokio::test]
async fn an_image_pull_failure_is_diagnosed_before_the_pod_is_deleted() {
    let image = "reg.example.com/capstan/nope:1";
    let waiting = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "capstan-x-7-0-0", "namespace": "ns", "uid": "1234-abcd"},
        "status": {"phase": "Pending", "containerStatuses": [{"name": "recipe", "image": image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image}\"")}}}]}});
    let going = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "capstan-x-7-0-0", "namespace": "ns", "uid": "1234-abcd", "deletionTimestamp": "2026-11-28T00:01:00Z"},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "recipe", "image": image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}});
    let ev = |name: &str, reason: &str, message: String, at: &str| {
        json!({"metadata": {"name": name}, "involvedObject": {"kind": "Pod", "name": "capstan-x-7-0-0", "uid": "1234-abcd", "fieldPath": "spec.containers{recipe}"},
            "type": "Warning", "reason": reason, "message": message, "lastTimestamp": at})
    };
    let events = json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [
        ev("e1", "Failed", format!("Failed to pull image \"{image}\": rpc error: code = NotFound desc = {image}: not found"), "2026-11-28T00:00:02Z"),
        ev("e2", "Failed", "Error: ErrImagePull".into(), "2026-11-28T00:00:02Z"),
        ev("e3", "Failed", "Error: ImagePullBackOff".into(), "2026-11-28T00:00:05Z"),
    ]});
    let mut deleted_gets = 0;
    let mut deleted = false;
    let (client, seen) = mock_api(Box::new(move |method, path, _| match (method, path) {
        ("POST", "/api/v1/namespaces/ns/pods") => (StatusCode::CREATED, Some(waiting.clone())),
        ("POST", "/api/v1/namespaces/ns/configmaps") => created("ConfigMap"),
        ("POST", "/api/v1/namespaces/ns/secrets") => created("Secret"),
        ("GET", "/api/v1/namespaces/ns/events") => (StatusCode::OK, Some(events.clone())),
        ("GET", p) if p.ends_with("/log") => (
            StatusCode::BAD_REQUEST,
            Some(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest", "code": 400,
                "message": "container \"recipe\" in pod \"capstan-x-7-0-0\" is waiting to start: trying and failing to pull image"}),
            ),
        ),
        ("DELETE", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0") => {
            deleted = true;
            (StatusCode::OK, Some(going.clone()))
        }
        ("GET", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0") if deleted => {
            deleted_gets += 1;
            if deleted_gets <= 2 {
                (StatusCode::OK, Some(going.clone()))
            } else {
                not_found(path)
            }
        }
        ("GET", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0") => {
            (StatusCode::OK, Some(waiting.clone()))
        }
        ("DELETE", p)
            if p.ends_with("/configmaps/capstan-x-7-0-0")
                || p.ends_with("/secrets/capstan-x-7-0-0") =>
        {
            (
                StatusCode::OK,
                Some(
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
                ),
            )
        }
        _ => not_found(path),
    }));
    let (dir, spec) = python_spec("pull");
    let backend = K8sBackend::with_client(&dir, client);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let ctl = ActivityControl {
        cancel: Default::default(),
        events: tx,
    };
    let (outcome, cleanup) = backend.run_with_cleanup(&spec, ctl).await;
    assert_eq!(outcome.state, JobState::Failed, "{outcome:?}");
    assert_eq!(
        outcome.diagnosis.as_deref(),
        Some(format!(
            "the cluster cannot pull image `{image}` from registry `reg.example.com` (Failed to pull image \"{image}\": rpc error: \
             code = NotFound desc = {image}: not found); check that the image was pushed there (`capstan image build-base` and \
             `capstan env build` push to a configuration's registry) and the image pull secret"
        ).as_str())
    );
    let cleanup = cleanup.expect("the pod was created");
    assert_eq!(cleanup.result, Ok(()));
    // Two looks at a pod still terminating, half a second apart.
    assert!(
        cleanup.took >= std::time::Duration::from_millis(900),
        "{cleanup:?}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|s| s.starts_with("GET /api/v1/namespaces/ns/events?")
                && s.contains("involvedObject.uid%3D1234-abcd")),
        "{seen:?}"
    );
    let order = |what: &str| position(&seen, what);
    let pod_deleted = order("DELETE /api/v1/namespaces/ns/pods/capstan-x-7-0-0");
    assert!(pod_deleted < order("DELETE /api/v1/namespaces/ns/configmaps/capstan-x-7-0-0"));
    assert!(pod_deleted < order("DELETE /api/v1/namespaces/ns/secrets/capstan-x-7-0-0"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pod that stays after its deletion: the cleanup says so (the outcome stays the recipe's).
#[tokio::test]
async fn a_pod_that_outstays_its_deletion_is_a_failed_cleanup() {
    let (client, _seen) = mock_api(Box::new(move |method, path, _| match (method, path) {
        ("POST", "/api/v1/namespaces/ns/pods") => (
            StatusCode::CREATED,
            Some(pod(
                "Pending",
                json!({"waiting": {"reason": "ContainerCreating"}}),
            )),
        ),
        ("POST", "/api/v1/namespaces/ns/configmaps") => created("ConfigMap"),
        ("POST", "/api/v1/namespaces/ns/secrets") => created("Secret"),
        ("GET", "/api/v1/namespaces/ns/events") => (
            StatusCode::OK,
            Some(json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []})),
        ),
        ("GET", p) if p.ends_with("/log") => (StatusCode::OK, None),
        // Succeeded, and never goes (a finalizer nobody removes).
        ("GET" | "DELETE", "/api/v1/namespaces/ns/pods/capstan-x-7-0-0") => (
            StatusCode::OK,
            Some(pod(
                "Succeeded",
                json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
            )),
        ),
        _ => not_found(path),
    }));
    let (dir, spec) = python_spec("stays");
    let backend = K8sBackend::with_client(&dir, client)
        .with_delete_wait(std::time::Duration::from_millis(600));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let ctl = ActivityControl {
        cancel: Default::default(),
        events: tx,
    };
    let (outcome, cleanup) = backend.run_with_cleanup(&spec, ctl).await;
    assert_eq!(outcome.state, JobState::Succeeded, "{outcome:?}");
    let cleanup = cleanup.expect("the pod was created");
    assert_eq!(
        cleanup.result,
        Err("pod ns/capstan-x-7-0-0 is still there 600 ms after its deletion".to_string())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cluster page's listing: this instance's pods in each configured namespace, with their
/// requests and limits added up over containers and the waiting reason as their state; and a
/// leftover's removal, waited for until the API no longer has it.
#[tokio::test]
async fn workloads_are_listed_with_their_resources_and_a_leftover_is_removed() {
    let pod = |name: &str, labels: serde_json::Value, state: serde_json::Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": {"containers": [
                {"name": "recipe", "image": "img", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}},
                {"name": "sidecar", "image": "img", "resources": {"requests": {"cpu": "100m"}}}
            ]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "recipe", "image": "img", "imageID": "", "ready": false, "restartCount": 0, "state": state}]}
        })
    };
    let running = pod(
        "capstan-x-7-0-1",
        json!({"capstan.io/instance": "x", "capstan.io/job": "7", "capstan.io/activity": "7-0", "capstan.io/attempt": "1"}),
        json!({"waiting": {"reason": "ImagePullBackOff"}}),
    );
    let mut stray = pod(
        "capstan-old",
        json!({"capstan.io/instance": "x"}),
        json!({"running": {"startedAt": "2026-11-28T00:00:01Z"}}),
    );
    stray["status"]["phase"] = json!("Running");
    let deleted = Arc::new(Mutex::new(false));
    let gone = deleted.clone();
    let (client, seen) = mock_api(Box::new(move |method, path, _| match (method, path) {
        ("GET", "/api/v1/namespaces/ns/pods") => (
            StatusCode::OK,
            Some(
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [running, stray]}),
            ),
        ),
        // metrics-server's view: the running one's two containers.
        ("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods") => (
            StatusCode::OK,
            Some(
                json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetricsList", "metadata": {}, "items": [{
                    "apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
                    "metadata": {"name": "capstan-x-7-0-1", "namespace": "ns"},
                    "timestamp": "2026-11-28T00:00:10Z", "window": "15s",
                    "containers": [
                        {"name": "recipe", "usage": {"cpu": "250000000n", "memory": "102400Ki"}},
                        {"name": "sidecar", "usage": {"cpu": "50m", "memory": "1Mi"}}
                    ]
                }]}),
            ),
        ),
        ("DELETE", "/api/v1/namespaces/ns/pods/capstan-old") => {
            *gone.lock().unwrap() = true;
            (
                StatusCode::OK,
                Some(
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "capstan-old"}}),
                ),
            )
        }
        ("GET", "/api/v1/namespaces/ns/pods/capstan-old") if *gone.lock().unwrap() => {
            not_found("pods \"capstan-old\"")
        }
        _ => not_found(path),
    }));
    let mut files = capstan_core::load::HomeFiles::default();
    files.toml.insert(
        "capstan.toml".into(),
        b"[instance]\nname = \"k\"\n".to_vec(),
    );
    files.toml.insert(
        "exec-configs.toml".into(),
        b"[exec_config.k8s]\nkind = \"kubernetes\"\nnamespace = \"ns\"\nimage = \"img\"\n".to_vec(),
    );
    let (home, d) = capstan_core::load::load(std::path::Path::new("/h"), &files);
    assert!(!d.has_errors(), "{:?}", d.list);
    let backend = K8sBackend::with_client(std::path::Path::new("/h"), client)
        .with_delete_wait(std::time::Duration::from_secs(5));

    let engines = backend.workloads(&home).await;
    assert_eq!(engines.len(), 1, "{engines:?}");
    let e = &engines[0];
    assert_eq!(e.engine, "namespace ns (the kubeconfig's current context)");
    assert_eq!(e.error, None);
    let w = &e.workloads[0];
    assert_eq!(w.name, "capstan-x-7-0-1");
    assert_eq!(
        w.state, "ImagePullBackOff",
        "a waiting reason says more than Pending"
    );
    assert_eq!(
        w.key,
        Some(capstan_engine::backend::ActivityKey {
            job_id: 7,
            idx: 0,
            attempt: 1
        })
    );
    assert_eq!(w.cpu_request, Some(0.6), "added up over containers");
    assert_eq!(w.cpu_limit, Some(2.0));
    assert_eq!(w.memory_request, Some(1 << 30));
    assert_eq!(w.memory_limit, Some(2 << 30));
    let usage = w.usage.expect("usage from the metrics API");
    assert_eq!(usage.cpu_percent.map(|c| c.round()), Some(30.0));
    assert_eq!(usage.memory_bytes, Some(102_400 * 1024 + (1 << 20)));
    let stray = &e.workloads[1];
    assert_eq!(stray.usage, None, "a pod the metrics API does not list");
    assert_eq!((stray.key, stray.job_id), (None, None));
    assert_eq!(stray.state, "Running");
    assert!(capstan_engine::monitor::is_leftover(stray, None));

    backend.remove_workload(&home, stray).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let delete = position(&seen, "DELETE /api/v1/namespaces/ns/pods/capstan-old");
    assert!(
        seen[delete..]
            .iter()
            .any(|s| s == "GET /api/v1/namespaces/ns/pods/capstan-old"),
        "the removal waits until the pod is gone: {seen:?}"
    );
}
