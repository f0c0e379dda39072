//! From a pod's status and events to what a data scientist needs to read.
//!
//! Works on the API's own objects (`Pod`, `Event`), so the tests feed it real-shaped data.

use capstan_engine::backend::{ActivityOutcome, ActivitySpec};
use capstan_engine::diagnose::{Ending, outcome};
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};

/// Where a pod stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assessment {
    /// Not started yet, for a reason that may pass (scheduling, pulling, quota): in the user's
    /// words. It becomes a failure when the configuration's pending timeout runs out.
    Waiting(String),
    Running,
    /// Over: succeeded, failed, timed out — with the diagnosis.
    Done(ActivityOutcome),
}

fn container(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "recipe")
}

/// The last warning events about the pod, newest last.
fn warnings(events: &[Event]) -> Vec<String> {
    let mut w: Vec<&Event> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    w.sort_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0));
    w.into_iter()
        .filter_map(|e| Some(format!("{}: {}", e.reason.clone()?, e.message.clone()?)))
        .collect()
}

/// The registry of an image reference (`docker.io` when it names none).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

pub fn assess(
    spec: &ActivitySpec,
    pod: &Pod,
    events: &[Event],
    last_stderr: &[String],
) -> Assessment {
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let pod_reason = status.reason.as_deref().unwrap_or("");
    let pod_message = status.message.clone().unwrap_or_default();
    let failed = |diagnosis: String| Assessment::Done(ActivityOutcome::failed(diagnosis));

    match pod_reason {
        "DeadlineExceeded" => {
            return Assessment::Done(outcome(
                spec,
                &Ending {
                    timed_out: true,
                    ..Ending::default()
                },
            ));
        }
        "Evicted" => {
            return failed(format!(
                "evicted: the node ran short of resources and removed the pod ({}); run it again, or ask for a configuration with a larger request",
                pod_message.trim()
            ));
        }
        "NodeLost" | "NodeShutdown" | "Terminated" => {
            return failed(format!(
                "the node running the pod was lost ({pod_reason}: {}); run it again",
                pod_message.trim()
            ));
        }
        _ => {}
    }
    if phase == "Unknown" {
        return failed(format!(
            "the node running the pod stopped answering (phase Unknown: {})",
            pod_message.trim()
        ));
    }

    if let Some(c) = container(pod) {
        if let Some(t) = c.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            let ending = Ending {
                exit_code: Some(t.exit_code),
                signal: t.signal,
                oom_killed: t.reason.as_deref() == Some("OOMKilled"),
                last_stderr: last_stderr.to_vec(),
                ..Ending::default()
            };
            return Assessment::Done(outcome(spec, &ending));
        }
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("");
            let message = w.message.clone().unwrap_or_default();
            match reason {
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                    let image = c.image.clone();
                    let detail = warnings(events)
                        .into_iter()
                        .rev()
                        .find(|w| w.starts_with("Failed"))
                        .unwrap_or(format!("{reason}: {message}"));
                    return failed(format!(
                        "the cluster cannot pull image `{image}` from registry `{}` ({detail}); check that the image was pushed there (`capstan image build-base` and `capstan env build` push to a configuration's registry) and the image pull secret",
                        registry_of(&image)
                    ));
                }
                "CrashLoopBackOff" => {
                    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
                    return failed(format!(
                        "the recipe keeps crashing (restarted {} times{}); its pod restarts it because a pod_patch changed restartPolicy",
                        c.restart_count,
                        last.map_or(String::new(), |t| format!(
                            ", last exit code {}",
                            t.exit_code
                        ))
                    ));
                }
                "CreateContainerConfigError" | "CreateContainerError" => {
                    return failed(format!(
                        "the cluster cannot create the recipe's container ({reason}: {})",
                        message.trim()
                    ));
                }
                _ => {}
            }
        }
        if c.state.as_ref().and_then(|s| s.running.as_ref()).is_some() {
            return Assessment::Running;
        }
    }
    if phase == "Succeeded" {
        return Assessment::Done(outcome(
            spec,
            &Ending {
                exit_code: Some(0),
                ..Ending::default()
            },
        ));
    }
    if phase == "Failed" {
        return failed(format!(
            "the pod failed ({pod_reason}: {})",
            pod_message.trim()
        ));
    }
    // Pending: say why, in the scheduler's words when it has some.
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return Assessment::Waiting(format!(
            "pending: the scheduler cannot place the pod: {}",
            c.message.clone().unwrap_or_default().trim()
        ));
    }
    match warnings(events).pop() {
        Some(w) => Assessment::Waiting(format!("pending: {w}")),
        None => Assessment::Waiting("pending: waiting to be scheduled".into()),
    }
}

/// A ResourceQuota refusal at creation, as the API words it (`403 … exceeded quota: …`): the
/// pod is retried with backoff, and the job says what it waits for.
pub fn quota_wait(namespace: &str, api_message: &str) -> Option<String> {
    let at = api_message.find("exceeded quota")?;
    Some(format!(
        "waiting for quota in namespace {namespace}: {}",
        api_message[at..].trim()
    ))
}
