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

/// When an event last happened: `lastTimestamp` (core/v1 events), else `eventTime`
/// (events.k8s.io), else when it was first seen or created.
fn when(e: &Event) -> Option<k8s_openapi::jiff::Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The events about this very pod, oldest first. Events outlive their pod (an hour, by
/// default): those of an earlier pod of the same name carry another uid and are left out.
fn about<'e>(pod: &Pod, events: &'e [Event]) -> Vec<&'e Event> {
    let uid = pod.metadata.uid.as_deref();
    let mut about: Vec<&Event> = events
        .iter()
        .filter(|e| match (uid, e.involved_object.uid.as_deref()) {
            (Some(pod), Some(event)) => pod == event,
            _ => true,
        })
        .collect();
    // Stable: events of the same second keep the API's order.
    about.sort_by_key(|e| when(e));
    about
}

/// Whether an event is about the recipe's container (or names no container).
fn about_recipe(e: &Event) -> bool {
    e.involved_object
        .field_path
        .as_deref()
        .is_none_or(|f| f == "spec.containers{recipe}")
}

/// The last warning events about the pod, newest last.
fn warnings(pod: &Pod, events: &[Event]) -> Vec<String> {
    about(pod, events)
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| Some(format!("{}: {}", e.reason.clone()?, e.message.clone()?)))
        .collect()
}

/// Why the kubelet cannot pull the recipe's image, in its own words: the message of its most
/// recent `Failed to pull image "…": …` event. The kubelet follows each with a bare
/// `Error: ErrImagePull` (reason Failed), then `Back-off pulling image` (BackOff) and
/// `Error: ImagePullBackOff` (Failed), which say nothing new: those come only when nothing
/// better is there, after the container status's own message.
fn pull_failure(pod: &Pod, events: &[Event], reason: &str, message: &str) -> String {
    let pulls: Vec<(&str, &str)> = about(pod, events)
        .into_iter()
        .filter(|e| about_recipe(e))
        .filter_map(|e| Some((e.reason.as_deref()?, e.message.as_deref()?.trim())))
        .filter(|(r, _)| {
            matches!(
                *r,
                "Failed" | "ErrImagePull" | "BackOff" | "InspectFailed" | "ErrImageNeverPull"
            )
        })
        .collect();
    let vague = |m: &str| m.starts_with("Error: ") || m.starts_with("Back-off pulling image");
    pulls
        .iter()
        .rev()
        .find(|(_, m)| m.starts_with("Failed to pull image"))
        .or_else(|| pulls.iter().rev().find(|(_, m)| !vague(m)))
        .map(|(_, m)| m.to_string())
        .or_else(|| {
            let m = message.trim();
            (!m.is_empty() && !vague(m)).then(|| format!("{reason}: {m}"))
        })
        .or_else(|| pulls.last().map(|(_, m)| m.to_string()))
        .unwrap_or_else(|| format!("{reason}: {}", message.trim()))
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
                    let detail = pull_failure(pod, events, reason, &message);
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
    // Scheduled: the kubelet pulls the image and creates the container. Its latest event says
    // which (a warning there, such as a volume it cannot mount yet, is what holds the pod).
    let scheduled = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "PodScheduled" && c.status == "True");
    let creating = container(pod)
        .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
        .is_some_and(|r| matches!(r, "ContainerCreating" | "PodInitializing"));
    if scheduled || creating {
        let latest = about(pod, events)
            .into_iter()
            .rfind(|e| about_recipe(e) && e.reason.as_deref() != Some("FailedScheduling"));
        return Assessment::Waiting(match latest {
            Some(e) if e.type_.as_deref() == Some("Warning") => format!(
                "pending: {}: {}",
                e.reason.as_deref().unwrap_or_default(),
                e.message.as_deref().unwrap_or_default().trim()
            ),
            Some(e) if e.reason.as_deref() == Some("Pulling") => match image_of(pod) {
                Some(image) => format!("pending: pulling image `{image}`"),
                None => "pending: pulling the image".into(),
            },
            _ => "pending: creating the container".into(),
        });
    }
    match warnings(pod, events).pop() {
        Some(w) => Assessment::Waiting(format!("pending: {w}")),
        None => Assessment::Waiting("pending: waiting to be scheduled".into()),
    }
}

/// The recipe container's image: as the kubelet reports it, else as the pod asks for it.
fn image_of(pod: &Pod) -> Option<String> {
    container(pod)
        .map(|c| c.image.clone())
        .filter(|i| !i.is_empty())
        .or_else(|| {
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .find(|c| c.name == "recipe")?
                .image
                .clone()
        })
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
