//! The persisted and wire form of a resolution: every effective setting with its origin.
//!
//! Core types are not serializable; this is the one explicit conversion, shared by
//! `capstan config explain --json`, the job record and the API.

use capstan_core::resolve::{Origin, Resolution, ResolveError, Setting};
use serde_json::{Value, json};

pub fn origin_json(o: &Origin) -> Value {
    json!({
        "layer": o.layer.as_str(),
        "file": o.file.as_ref().map(|f| f.display().to_string()),
        "line": o.file.as_ref().map(|_| o.line),
        "via": o.via,
    })
}

fn setting_json<T>(s: &Setting<T>, show: impl Fn(&T) -> Value) -> Value {
    let mut v = origin_json(&s.origin);
    v["value"] = show(&s.value);
    v
}

fn opt<T: ToString>(v: &Option<T>) -> Value {
    v.as_ref()
        .map_or(Value::Null, |x| Value::String(x.to_string()))
}

/// Every effective setting, in a stable order, as (name, JSON value with origin).
pub fn resolution_rows(r: &Resolution) -> Vec<(&'static str, Value, &Origin)> {
    vec![
        (
            "exec_config",
            opt(&r.exec_config.value),
            &r.exec_config.origin,
        ),
        ("kind", json!(r.kind.value.as_str()), &r.kind.origin),
        ("cluster", opt(&r.cluster.value), &r.cluster.origin),
        (
            "docker_host",
            opt(&r.docker_host.value),
            &r.docker_host.origin,
        ),
        ("context", opt(&r.context.value), &r.context.origin),
        ("namespace", opt(&r.namespace.value), &r.namespace.origin),
        ("image", opt(&r.image.value), &r.image.origin),
        ("registry", opt(&r.registry.value), &r.registry.origin),
        (
            "spark_config",
            opt(&r.spark_config.value),
            &r.spark_config.origin,
        ),
        ("code_env", opt(&r.code_env.value), &r.code_env.origin),
        (
            "cpu_request",
            opt(&r.cpu_request.value),
            &r.cpu_request.origin,
        ),
        ("cpu_limit", opt(&r.cpu_limit.value), &r.cpu_limit.origin),
        (
            "memory_request",
            opt(&r.memory_request.value),
            &r.memory_request.origin,
        ),
        (
            "memory_limit",
            opt(&r.memory_limit.value),
            &r.memory_limit.origin,
        ),
        ("gpu", json!(r.gpus.value), &r.gpus.origin),
        ("timeout", opt(&r.timeout.value), &r.timeout.origin),
    ]
}

pub fn resolution_json(r: &Resolution) -> Value {
    let mut settings = serde_json::Map::new();
    for (name, value, origin) in resolution_rows(r) {
        let mut v = origin_json(origin);
        v["value"] = value;
        settings.insert(name.to_string(), v);
    }
    // Aliases scripts look for: `cpu` and `memory` are the limits, which is what is enforced.
    for (alias, of) in [("cpu", "cpu_limit"), ("memory", "memory_limit")] {
        let v = settings[of].clone();
        settings.insert(alias.to_string(), v);
    }
    let env: serde_json::Map<String, Value> = r
        .env
        .iter()
        .map(|(k, s)| (k.clone(), setting_json(s, |v| json!(v))))
        .collect();
    json!({
        "project": r.project,
        "recipe": r.recipe,
        "recipe_kind": r.recipe_kind.as_str(),
        "user": r.user,
        "settings": settings,
        "env": env,
    })
}

pub fn error_json(e: &ResolveError) -> Value {
    match e {
        ResolveError::PermissionDenied {
            user,
            what,
            name,
            allowed_groups,
            user_groups,
        } => json!({
            "kind": "permission_denied",
            "message": e.to_string(),
            "user": user,
            "object": what,
            "name": name,
            "allowed_groups": allowed_groups,
            "user_groups": user_groups,
        }),
        ResolveError::Invalid { field, .. } => json!({
            "kind": "invalid",
            "field": field,
            "message": e.to_string(),
            "help": e.help(),
        }),
        _ => json!({ "kind": "not_found", "message": e.to_string(), "help": e.help() }),
    }
}

/// Rows read and written, as stored with a job and shown by the API.
pub fn io_json(io: &crate::IoSummary) -> Value {
    json!({"read": io.read, "written": io.written})
}

/// A run request as stored with its job.
pub fn request_json(r: &capstan_core::resolve::RunRequest) -> Value {
    json!({
        "user": r.user,
        "exec_config": r.exec_config,
        "cluster": r.cluster,
        "spark_config": r.spark_config,
        "code_env": r.code_env,
        "timeout_secs": r.timeout.map(|t| t.secs()),
        "env": r.env,
    })
}

/// The inverse of [`request_json`]; missing or malformed fields are left unset.
pub fn request_from_json(text: &str) -> capstan_core::resolve::RunRequest {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    capstan_core::resolve::RunRequest {
        user: s("user"),
        exec_config: s("exec_config"),
        cluster: s("cluster"),
        spark_config: s("spark_config"),
        code_env: s("code_env"),
        timeout: v
            .get("timeout_secs")
            .and_then(Value::as_u64)
            .map(capstan_core::quantity::Duration::from_secs),
        env: v
            .get("env")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// What an activity's outputs record as read and as defining them, fixed at its start.
pub fn provenance_json(
    inputs: &std::collections::BTreeMap<String, u64>,
    definition: &capstan_core::flow::Definition,
) -> Value {
    json!({"inputs": inputs, "definition": definition})
}

/// The inverse of [`provenance_json`]; what does not read is left out (and so reads as stale).
pub fn provenance_from_json(
    text: &str,
) -> (
    std::collections::BTreeMap<String, u64>,
    capstan_core::flow::Definition,
) {
    let v: Value = serde_json::from_str(text).unwrap_or_default();
    let inputs = v["inputs"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, n)| n.as_u64().map(|n| (k.clone(), n)))
        .collect();
    let definition = v["definition"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, h)| h.as_str().map(|h| (k.clone(), h.to_string())))
        .collect();
    (inputs, definition)
}

/// A build's targets and mode, as stored with its job.
pub fn build_json(targets: &[String], mode: capstan_core::flow::BuildMode) -> Value {
    json!({"targets": targets, "mode": mode.as_str()})
}
