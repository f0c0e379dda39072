//! The objects an activity becomes on Kubernetes, as pure functions: a Pod, the ConfigMap that
//! carries its code, and the Secret that carries its data token. Snapshot-tested, and validated
//! against the official schema with `kubernetes-validate` in the test suite.
//!
//! A bare Pod rather than a Job: capstan is the controller (queue, deadlines, retries), a Job
//! would add a second one whose only effect with `backoffLimit: 0` is an extra object to watch
//! and delete. The ConfigMap and the Secret are owned by the Pod, so they go with it.

use std::collections::BTreeMap;

use capstan_engine::backend::{ActivitySpec, TRANSFORM_SPEC, Workload};
use capstan_engine::engine_image;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    KeyToPath, LocalObjectReference, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSpec,
    ResourceRequirements, Secret, SecretKeySelector, Toleration, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use serde_json::Value;

/// Where the recipe's code is mounted.
pub const WORK_DIR: &str = "/capstan/work";
/// A ConfigMap holds at most 1 MiB.
pub const MAX_CODE_BYTES: usize = 1024 * 1024;

pub const LABEL_INSTANCE: &str = "capstan.io/instance";
pub const LABEL_JOB: &str = "capstan.io/job";
pub const LABEL_ACTIVITY: &str = "capstan.io/activity";
pub const LABEL_ATTEMPT: &str = "capstan.io/attempt";

/// What `capstan k8s render` shows in place of the token (the real one exists only in the
/// cluster, for the activity's lifetime).
pub const TOKEN_NOT_RENDERED: &str = "generated when the activity starts";

/// The objects of one activity.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub pod: Pod,
    pub code: ConfigMap,
    pub secret: Secret,
    /// A notebook kernel's volume of its user's files for the project, where the configuration
    /// names a storage class: created if absent, and kept (never deleted with the pod).
    pub claim: Option<PersistentVolumeClaim>,
}

/// Where a notebook kernel keeps its user's files.
pub const NOTEBOOK_DIR: &str = "/capstan/notebooks";

/// The claim of `spec`'s user's notebook files in its project: `capstan-notebooks-INSTANCE-`
/// and a DNS-1123 form of the project and user (lower-case, `-` for anything else, with a
/// hash of the exact names so two that map alike do not share one).
pub fn notebook_claim_name(spec: &ActivitySpec, instance: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect()
    };
    let digest = capstan_core::token::hash_token(&format!("{}/{}", spec.project, spec.user));
    let mut name = format!(
        "capstan-notebooks-{instance}-{}-{}",
        clean(&spec.project),
        clean(&spec.user)
    );
    name.truncate(240);
    format!("{}-{}", name.trim_end_matches('-'), &digest[..8])
}

fn notebook_claim(spec: &ActivitySpec, instance: &str) -> Option<PersistentVolumeClaim> {
    if !spec.is_kernel() {
        return None;
    }
    let exec = spec.exec.as_ref()?;
    let class = exec.notebook_storage_class.as_ref()?;
    let size = exec.notebook_storage.as_ref().map_or_else(
        || capstan_core::model::DEFAULT_NOTEBOOK_STORAGE.to_string(),
        |m| m.value.to_string(),
    );
    let labels: BTreeMap<String, String> = [
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        ("capstan.io/project".to_string(), spec.project.clone()),
        ("capstan.io/user".to_string(), spec.user.clone()),
    ]
    .into();
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(notebook_claim_name(spec, instance)),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(class.value.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity(size))].into()),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    })
}

pub fn object_name(spec: &ActivitySpec, instance: &str) -> String {
    format!(
        "capstan-{instance}-{}-{}-{}",
        spec.job_id, spec.idx, spec.attempt
    )
}

pub fn labels(spec: &ActivitySpec, instance: &str) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert(LABEL_INSTANCE.into(), instance.into());
    l.insert(LABEL_JOB.into(), spec.job_id.to_string());
    l.insert(LABEL_ACTIVITY.into(), spec.activity_id());
    l.insert(LABEL_ATTEMPT.into(), spec.attempt.to_string());
    l.insert("capstan.io/project".into(), spec.project.clone());
    // A label value starts with a letter or digit: a kernel (`@kernel`) is `kernel`.
    l.insert(
        "capstan.io/recipe".into(),
        spec.recipe.trim_start_matches('@').to_string(),
    );
    l.insert("capstan.io/user".into(), spec.user.clone());
    l
}

fn quantity(q: impl ToString) -> Quantity {
    Quantity(q.to_string())
}

/// The code files: the recipe's file, and the project's library under `lib/`.
fn code_files(spec: &ActivitySpec) -> Result<Vec<(String, Vec<u8>)>, String> {
    let files = spec.code_files()?;
    fits(&files)?;
    Ok(files)
}

/// A ConfigMap holds what capstan puts in it (the code, the library, Spark's files) only up to
/// 1 MiB; beyond, the API server would refuse it in its own words.
fn fits(files: &[(String, Vec<u8>)]) -> Result<(), String> {
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    if total > MAX_CODE_BYTES {
        return Err(format!(
            "the files the pod needs (the recipe's code, the project's library, and for Spark that library zipped for \
             the executors) are {total} bytes, more than the 1 MiB a ConfigMap holds: move data out of the code folder \
             into datasets"
        ));
    }
    Ok(())
}

/// A ConfigMap key for a path (keys allow `[-._a-zA-Z0-9]`).
fn key_of(path: &str) -> String {
    path.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// RFC 7386 JSON merge patch: objects merge, everything else replaces, null deletes.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// The objects of an activity in `namespace`.
pub fn render(spec: &ActivitySpec, instance: &str, namespace: &str) -> Result<Rendered, String> {
    let name = object_name(spec, instance);
    let image = spec.image.clone().ok_or_else(|| {
        format!(
            "{} names no image: set `image` or `base_image` on it",
            spec.config_phrase()
        )
    })?;
    // A visual recipe runs capstan's built-in engine, copied into the pod from the engine
    // image by an init container (see `capstan_engine::engine_image`).
    let engine_image = match &spec.workload {
        Workload::Transform { .. } => Some(spec.engine_image.clone().ok_or_else(|| {
            format!(
                "{} recipes on Kubernetes copy capstan's built-in engine from its engine image, which is not built: run `capstan image build-engine`",
                spec.recipe_kind.as_str()
            )
        })?),
        _ => None,
    };
    let runs_engine = engine_image.is_some();
    let mut files = code_files(spec)?;
    let code_file = files
        .first()
        .map(|(n, _)| n.clone())
        .filter(|_| spec.code_file.is_some() || engine_image.is_some())
        .ok_or_else(|| format!("{} recipes have no code to run", spec.recipe_kind.as_str()))?;
    // A Spark recipe runs spark-submit: as the driver of a Spark configuration on Kubernetes
    // (placed, and allowed to start executors, as that configuration says), or in local mode
    // inside the pod of an execution configuration.
    let is_spark = spec.recipe_kind.is_spark();
    let spark = spec
        .spark
        .as_ref()
        .filter(|s| is_spark && s.master.value == capstan_core::model::SparkMaster::Kubernetes);
    let command = if engine_image.is_some() {
        engine_image::command(
            engine_image::DIR,
            spec.transform_args(&format!("{WORK_DIR}/{TRANSFORM_SPEC}")),
        )
    } else if is_spark {
        let submission = capstan_spark::container_command(spec, WORK_DIR, &code_file)?;
        files.extend(submission.files);
        fits(&files)?;
        submission.args
    } else {
        vec![
            capstan_engine::backend::container_program(spec.recipe_kind, "Kubernetes")?.into(),
            format!("{WORK_DIR}/{code_file}"),
        ]
    };
    let labels = labels(spec, instance);
    let meta = |n: String| ObjectMeta {
        name: Some(n),
        namespace: Some(namespace.to_string()),
        labels: Some(labels.clone()),
        ..ObjectMeta::default()
    };

    let mut env = spec
        .capstan_env()
        .into_iter()
        .map(|(k, v)| EnvVar {
            name: k.into(),
            value: Some(v),
            value_from: None,
        })
        .collect::<Vec<_>>();
    if spec.lib_dir.is_some() {
        env.push(EnvVar {
            name: "PYTHONPATH".into(),
            value: Some(format!("{WORK_DIR}/lib")),
            value_from: None,
        });
    }
    if is_spark {
        // The driver's Python, the one the executors run too; the pod's name and address,
        // which the submission names as `$(VAR)`.
        for k in ["PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"] {
            env.push(EnvVar {
                name: k.into(),
                value: Some("python3".into()),
                value_from: None,
            });
        }
        for (k, field) in [
            (capstan_spark::POD_NAME_VAR, "metadata.name"),
            (capstan_spark::POD_IP_VAR, "status.podIP"),
        ] {
            env.push(EnvVar {
                name: k.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: field.into(),
                        api_version: None,
                    }),
                    ..EnvVarSource::default()
                }),
            });
        }
    }
    if engine_image.is_some() {
        // Names, not paths: the engine reads and writes them through the data API.
        for (k, names) in [
            ("CAPSTAN_TRANSFORM_INPUTS", &spec.inputs),
            ("CAPSTAN_TRANSFORM_OUTPUTS", &spec.outputs),
        ] {
            env.push(EnvVar {
                name: k.into(),
                value: Some(serde_json::to_string(names).unwrap_or_default()),
                value_from: None,
            });
        }
    }
    env.extend(spec.env.iter().map(|(k, v)| EnvVar {
        name: k.clone(),
        value: Some(v.clone()),
        value_from: None,
    }));
    let claim = notebook_claim(spec, instance);
    if claim.is_some() {
        env.push(EnvVar {
            name: capstan_engine::kernel::KERNEL_WORKDIR_VAR.into(),
            value: Some(NOTEBOOK_DIR.into()),
            value_from: None,
        });
    }
    if let Some(access) = &spec.data {
        env.push(EnvVar {
            name: "CAPSTAN_API_URL".into(),
            value: Some(access.api_url.clone()),
            value_from: None,
        });
    }
    // The token: from the activity's Secret, never a literal value in the pod.
    env.push(EnvVar {
        name: "CAPSTAN_TOKEN".into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: name.clone(),
                key: "token".into(),
                optional: Some(true),
            }),
            ..EnvVarSource::default()
        }),
    });

    let exec = spec.exec.as_ref();
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(c) = exec.and_then(|e| e.cpu_request.as_ref()) {
        requests.insert("cpu".to_string(), quantity(c.value));
    }
    if let Some(m) = exec.and_then(|e| e.memory_request.as_ref()) {
        requests.insert("memory".to_string(), quantity(m.value));
    }
    if let Some(c) = spec.cpu_limit {
        limits.insert("cpu".to_string(), quantity(c));
    }
    if let Some(m) = spec.memory_limit {
        limits.insert("memory".to_string(), quantity(m));
    }
    if spec.gpus > 0 {
        // Extended resources: request and limit must be equal.
        limits.insert("nvidia.com/gpu".to_string(), quantity(spec.gpus));
        requests.insert("nvidia.com/gpu".to_string(), quantity(spec.gpus));
    }
    for (k, q) in exec.map(|e| &e.resources).into_iter().flatten() {
        limits.insert(k.clone(), quantity(q.value));
        requests.insert(k.clone(), quantity(q.value));
    }

    let mut mounts = vec![VolumeMount {
        name: "code".into(),
        mount_path: WORK_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "code".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: name.clone(),
            items: Some(
                files
                    .iter()
                    .map(|(p, _)| KeyToPath {
                        key: key_of(p),
                        path: p.clone(),
                        mode: None,
                    })
                    .collect(),
            ),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if let Some(c) = &claim {
        mounts.push(VolumeMount {
            name: "notebooks".into(),
            mount_path: NOTEBOOK_DIR.into(),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "notebooks".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: c.metadata.name.clone().unwrap_or_default(),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    if let Some(shm) = exec.and_then(|e| e.shm_size.as_ref()) {
        mounts.push(VolumeMount {
            name: "shm".into(),
            mount_path: "/dev/shm".into(),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "shm".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(quantity(shm.value)),
            }),
            ..Volume::default()
        });
    }

    let resources = ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    };
    let init_containers = engine_image.map(|image| {
        mounts.push(VolumeMount {
            name: "engine".into(),
            mount_path: engine_image::DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "engine".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        vec![Container {
            name: "engine".into(),
            image: Some(image),
            command: Some(engine_image::install_command()),
            // The recipe's own: a namespace whose LimitRange wants limits on every container
            // admits it, and the pod asks for no more than its recipe.
            resources: Some(resources.clone()),
            volume_mounts: Some(vec![VolumeMount {
                name: "engine".into(),
                mount_path: engine_image::COPY_DIR.into(),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        }]
    });

    let container = Container {
        name: "recipe".into(),
        image: Some(image),
        command: Some(command),
        // Spark writes next to where it starts (its warehouse, its metastore): not the
        // read-only code folder.
        working_dir: Some(if is_spark { "/tmp" } else { WORK_DIR }.into()),
        env: Some(env),
        resources: Some(resources),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    // The driver of a Spark application goes where its executors go.
    let (tolerations, node_selector) = match (spark, exec) {
        (Some(s), _) => (&s.tolerations[..], Some(&s.node_selector)),
        (None, Some(e)) => (&e.tolerations[..], Some(&e.node_selector)),
        (None, None) => (&[][..], None),
    };
    let tolerations: Vec<Toleration> = tolerations
        .iter()
        .map(|t| Toleration {
            key: t.value.key.clone(),
            operator: t.value.operator.clone(),
            value: t.value.value.clone(),
            effect: t.value.effect.clone(),
            toleration_seconds: t.value.toleration_seconds.map(i64::from),
        })
        .collect();
    let mut node_selector: BTreeMap<String, String> = node_selector
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    if runs_engine {
        node_selector
            .entry("kubernetes.io/arch".into())
            .or_insert_with(|| engine_image::KUBE_ARCH.into());
    }
    let pull_secrets: Vec<LocalObjectReference> = match (spark, exec) {
        (Some(s), _) => &s.image_pull_secrets[..],
        (None, Some(e)) => &e.image_pull_secrets[..],
        (None, None) => &[][..],
    }
    .iter()
    .map(|s| LocalObjectReference {
        name: s.value.clone(),
    })
    .collect();
    let mut pod_spec = PodSpec {
        init_containers,
        containers: vec![container],
        restart_policy: Some("Never".into()),
        active_deadline_seconds: spec.timeout.map(|t| t.secs() as i64),
        service_account_name: match spark {
            Some(s) => s.service_account.as_ref(),
            None => exec.and_then(|e| e.service_account.as_ref()),
        }
        .map(|s| s.value.clone()),
        // The recipe talks to capstan's API with its own token, not to the cluster's; a Spark
        // driver creates its executors' pods, with its service account's rights.
        automount_service_account_token: Some(spark.is_some()),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    if let Some(patch) = exec.and_then(|e| e.pod_patch.as_ref()) {
        let mut v = serde_json::to_value(&pod_spec).map_err(|e| e.to_string())?;
        merge_patch(
            &mut v,
            &serde_json::to_value(&patch.value).unwrap_or(Value::Null),
        );
        pod_spec = serde_json::from_value(v).map_err(|e| {
            format!(
                "the pod_patch of {} does not give a valid pod spec: {e}",
                spec.config_phrase()
            )
        })?;
    }
    let mut annotations = BTreeMap::new();
    if let Some(s) = spark {
        annotations.insert("capstan.io/spark-config".to_string(), s.name.clone());
    }
    if let Some(c) = &spec.exec_config {
        annotations.insert("capstan.io/exec-config".to_string(), c.clone());
    }
    if let Some(c) = &spec.cluster {
        annotations.insert("capstan.io/cluster".to_string(), c.clone());
    }
    let pod = Pod {
        metadata: ObjectMeta {
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..meta(name.clone())
        },
        spec: Some(pod_spec),
        status: None,
    };
    let code = ConfigMap {
        metadata: meta(name.clone()),
        binary_data: Some(
            files
                .into_iter()
                .map(|(p, b)| (key_of(&p), ByteString(b)))
                .collect(),
        ),
        ..ConfigMap::default()
    };
    let token = spec
        .data
        .as_ref()
        .map_or(TOKEN_NOT_RENDERED.to_string(), |d| d.token.clone());
    let secret = Secret {
        metadata: meta(name),
        type_: Some("Opaque".into()),
        string_data: Some([("token".to_string(), token)].into()),
        ..Secret::default()
    };
    Ok(Rendered {
        pod,
        code,
        secret,
        claim,
    })
}

/// The objects as YAML documents, the token never included.
pub fn to_yaml(r: &Rendered) -> Result<String, String> {
    let mut secret = r.secret.clone();
    secret.string_data = Some([("token".to_string(), TOKEN_NOT_RENDERED.to_string())].into());
    let docs: Vec<String> = [
        serde_yaml::to_string(&r.pod),
        serde_yaml::to_string(&r.code),
        serde_yaml::to_string(&secret),
    ]
    .into_iter()
    .chain(r.claim.as_ref().map(serde_yaml::to_string))
    .collect::<Result<_, _>>()
    .map_err(|e| e.to_string())?;
    Ok(docs.join("---\n"))
}
