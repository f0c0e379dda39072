//! What capstan asks of the Docker engine, as pure functions: the container's create body, its
//! labels, and the archive that delivers the recipe's code. Snapshot-tested.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
use capstan_engine::backend::{ActivitySpec, TRANSFORM_SPEC, Workload};

/// Where the recipe's code is unpacked inside the container.
pub const WORK_DIR: &str = "/capstan/work";
/// Where a notebook kernel's container keeps its user's files: a named volume per instance,
/// project and user, so what one session writes is there in the next.
pub const NOTEBOOK_DIR: &str = "/capstan/notebooks";

/// The volume of `spec`'s user's notebook files in its project.
pub fn notebook_volume(spec: &ActivitySpec, instance: &str) -> String {
    format!(
        "capstan-notebooks-{instance}-{}-{}",
        spec.project, spec.user
    )
}
/// The activity's data token inside the container.
pub const TOKEN_PATH: &str = "/capstan/token";
/// Where the built-in engine of visual recipes (the capstan binary) is in a container.
pub const ENGINE_PATH: &str = "/capstan/bin/capstan";

/// Whether the activity runs capstan's built-in engine.
pub fn runs_engine(spec: &ActivitySpec) -> bool {
    matches!(spec.workload, Workload::Transform { .. })
}

/// Whether the engine shares this machine's filesystem (a local socket), so that the capstan
/// binary can be mounted rather than copied in.
pub fn engine_is_local(spec: &ActivitySpec) -> bool {
    crate::usage::is_local(spec.docker_host.as_deref())
}

pub const LABEL_INSTANCE: &str = "capstan.instance";
pub const LABEL_JOB: &str = "capstan.job";
pub const LABEL_ACTIVITY: &str = "capstan.activity";
pub const LABEL_ATTEMPT: &str = "capstan.attempt";

/// The labels that identify a container: whose it is, and what for (cost attribution, and
/// finding it again after a restart).
pub fn labels(spec: &ActivitySpec, instance: &str) -> HashMap<String, String> {
    let mut l = HashMap::new();
    l.insert(LABEL_INSTANCE.into(), instance.into());
    l.insert(LABEL_JOB.into(), spec.job_id.to_string());
    l.insert(LABEL_ACTIVITY.into(), spec.activity_id());
    l.insert(LABEL_ATTEMPT.into(), spec.attempt.to_string());
    l.insert("capstan.project".into(), spec.project.clone());
    l.insert("capstan.recipe".into(), spec.recipe.clone());
    l.insert("capstan.user".into(), spec.user.clone());
    if let Some(c) = &spec.exec_config {
        l.insert("capstan.exec-config".into(), c.clone());
    }
    l
}

/// `capstan-<instance>-<job>-<idx>-<attempt>`: unique per attempt, readable in `docker ps`.
pub fn container_name(spec: &ActivitySpec, instance: &str) -> String {
    format!(
        "capstan-{instance}-{}-{}-{}",
        spec.job_id, spec.idx, spec.attempt
    )
}

/// The command that runs the recipe's code inside the container, and the files it needs
/// beside the code (Spark's SQL runner).
pub fn command(spec: &ActivitySpec) -> Result<capstan_spark::Submission, String> {
    if runs_engine(spec) {
        return Ok(capstan_spark::Submission {
            args: std::iter::once(ENGINE_PATH.to_string())
                .chain(spec.transform_args(&format!("{WORK_DIR}/{TRANSFORM_SPEC}")))
                .collect(),
            files: Vec::new(),
        });
    }
    let file = spec
        .code_file
        .as_ref()
        .and_then(|f| f.file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| {
            format!(
                "{} recipes have no code to run in a container",
                spec.recipe_kind.as_str()
            )
        })?;
    if spec.recipe_kind.is_spark() {
        // Spark in local mode (or on a standalone cluster), from inside the container.
        return capstan_spark::container_command(spec, WORK_DIR, &file);
    }
    let program = capstan_engine::backend::container_program(spec.recipe_kind, "Docker")?;
    Ok(capstan_spark::Submission {
        args: vec![program.to_string(), format!("{WORK_DIR}/{file}")],
        files: Vec::new(),
    })
}

/// The create body of the activity's container.
pub fn container_body(spec: &ActivitySpec, instance: &str) -> Result<ContainerCreateBody, String> {
    let image = spec.image.clone().ok_or_else(|| {
        format!(
            "{} names no image: set `image` or `base_image` on it",
            spec.config_phrase()
        )
    })?;
    let mut env: Vec<String> = spec
        .capstan_env()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if spec.lib_dir.is_some() {
        env.push(format!("PYTHONPATH={WORK_DIR}/lib"));
    }
    if spec.recipe_kind.is_spark() {
        // The image's Python, for the driver and its workers alike.
        env.push("PYSPARK_PYTHON=python3".to_string());
        env.push("PYSPARK_DRIVER_PYTHON=python3".to_string());
    }
    if runs_engine(spec) {
        // Names, not paths: the engine reads and writes them through the data API.
        env.push(format!(
            "CAPSTAN_TRANSFORM_INPUTS={}",
            serde_json::to_string(&spec.inputs).unwrap_or_default()
        ));
        env.push(format!(
            "CAPSTAN_TRANSFORM_OUTPUTS={}",
            serde_json::to_string(&spec.outputs).unwrap_or_default()
        ));
    }
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    if spec.is_kernel() {
        env.push(format!(
            "{}={NOTEBOOK_DIR}",
            capstan_engine::kernel::KERNEL_WORKDIR_VAR
        ));
    }
    if let Some(access) = &spec.data {
        // The token itself travels in the code archive (`/capstan/token`): an environment
        // variable would show in `docker inspect`.
        env.push(format!("CAPSTAN_API_URL={}", access.api_url));
        env.push(format!("CAPSTAN_TOKEN_FILE={TOKEN_PATH}"));
    }

    let exec = spec.exec.as_ref();
    let docker = exec.map(|e| &e.docker);
    let memory = spec.memory_limit.map(|m| m.bytes() as i64);
    let host_config = HostConfig {
        memory,
        // Memory + swap equal to memory: no swap, so the limit is what the recipe really gets.
        memory_swap: memory,
        memory_reservation: exec
            .and_then(|e| e.memory_request.as_ref())
            .map(|m| m.value.bytes() as i64),
        nano_cpus: spec.cpu_limit.map(|c| c.millis() as i64 * 1_000_000),
        // Relative weight under contention, from the CPU request (1 core = 1024 shares).
        cpu_shares: exec
            .and_then(|e| e.cpu_request.as_ref())
            .map(|c| (c.value.millis() as i64 * 1024 / 1000).max(2)),
        shm_size: exec
            .and_then(|e| e.shm_size.as_ref())
            .map(|m| m.value.bytes() as i64),
        device_requests: (spec.gpus > 0).then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                count: Some(i64::from(spec.gpus)),
                device_ids: None,
                capabilities: Some(vec![vec!["gpu".into()]]),
                options: None,
            }]
        }),
        network_mode: docker
            .and_then(|d| d.network.as_ref())
            .map(|n| n.value.clone()),
        runtime: docker
            .and_then(|d| d.runtime.as_ref())
            .map(|r| r.value.clone()),
        cap_add: docker
            .filter(|d| !d.cap_add.is_empty())
            .map(|d| d.cap_add.iter().map(|c| c.value.clone()).collect()),
        extra_hosts: {
            let mut hosts: Vec<String> = docker
                .map(|d| d.extra_hosts.iter().map(|h| h.value.clone()).collect())
                .unwrap_or_default();
            // The data API on the engine's host, by a name that works on every engine.
            if spec
                .data
                .as_ref()
                .is_some_and(|a| a.api_url.contains("://host.docker.internal"))
            {
                hosts.push("host.docker.internal:host-gateway".into());
            }
            (!hosts.is_empty()).then_some(hosts)
        },
        binds: {
            let mut binds: Vec<String> = docker
                .map(|d| d.volumes.iter().map(|v| v.value.clone()).collect())
                .unwrap_or_default();
            // The built-in engine is this very binary; on an engine on this machine it is
            // mounted, read-only, rather than copied into every container.
            if runs_engine(spec) && engine_is_local(spec) {
                let exe = capstan_engine::engine_image::binary()?;
                binds.push(format!("{}:{ENGINE_PATH}:ro", exe.display()));
            }
            if spec.is_kernel() {
                binds.push(format!(
                    "{}:{NOTEBOOK_DIR}",
                    notebook_volume(spec, instance)
                ));
            }
            (!binds.is_empty()).then_some(binds)
        },
        // A tiny init as PID 1: signals reach the recipe, and its zombies are reaped.
        init: Some(true),
        ..HostConfig::default()
    };
    Ok(ContainerCreateBody {
        image: Some(image),
        cmd: Some(command(spec)?.args),
        env: Some(env),
        working_dir: Some(WORK_DIR.into()),
        labels: Some(labels(spec, instance)),
        tty: Some(false),
        open_stdin: Some(false),
        attach_stdin: Some(false),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    })
}

/// The tar archive that delivers the recipe's code (and the project's library) into the
/// container before it starts, whether or not the engine shares a filesystem with the daemon.
pub fn code_archive(spec: &ActivitySpec) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let work = WORK_DIR.trim_start_matches('/');
    dir_entry(&mut tar, "capstan")?;
    dir_entry(&mut tar, work)?;
    let mut dirs = std::collections::BTreeSet::new();
    for (rel, bytes) in spec.code_files().map_err(std::io::Error::other)? {
        // Each folder before its files, as `tar` itself would write them.
        let folders: Vec<&Path> = Path::new(&rel)
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .collect();
        for folder in folders.into_iter().rev() {
            if dirs.insert(folder.to_path_buf()) {
                dir_entry(&mut tar, &format!("{work}/{}", folder.display()))?;
            }
        }
        file_entry(&mut tar, &format!("{work}/{rel}"), &bytes)?;
    }
    // What the command needs beside the code; a command that cannot be built fails the
    // container's creation, which comes first, with its own message.
    for (name, bytes) in command(spec).map(|c| c.files).unwrap_or_default() {
        file_entry(&mut tar, &format!("{work}/{name}"), &bytes)?;
    }
    if runs_engine(spec) && !engine_is_local(spec) {
        // An engine elsewhere gets the binary in the archive.
        let exe = capstan_engine::engine_image::binary().map_err(std::io::Error::other)?;
        let bytes = std::fs::read(&exe)?;
        dir_entry(&mut tar, "capstan/bin")?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o555);
        h.set_size(bytes.len() as u64);
        tar.append_data(
            &mut h,
            ENGINE_PATH.trim_start_matches('/'),
            bytes.as_slice(),
        )?;
    }
    if let Some(access) = &spec.data {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o400);
        h.set_size(access.token.len() as u64);
        tar.append_data(
            &mut h,
            TOKEN_PATH.trim_start_matches('/'),
            access.token.as_bytes(),
        )?;
    }
    tar.into_inner()
}

fn dir_entry(tar: &mut tar::Builder<Vec<u8>>, path: &str) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    tar.append_data(&mut h, path, std::io::empty())
}

fn file_entry(tar: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(bytes.len() as u64);
    tar.append_data(&mut h, path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_core::load::{HomeFiles, load};
    use capstan_engine::backend::ActivitySpec;
    use std::path::Path;

    /// The spec of `sample/r` in a home whose exec config `c` is given as TOML.
    fn spec(config: &str, gpus: u32) -> ActivitySpec {
        let mut files = HomeFiles::default();
        files.toml.insert("capstan.toml".into(), b"".to_vec());
        files
            .toml
            .insert("exec-configs.toml".into(), config.as_bytes().to_vec());
        let (home, diags) = load(Path::new("/h"), &files);
        assert!(!diags.has_errors(), "{:?}", diags.list);
        let exec = home.exec_configs.get("c").cloned();
        ActivitySpec {
            job_id: 42,
            idx: 0,
            attempt: 1,
            dir: "/h/state/jobs/42/a0-1".into(),
            home_root: "/h".into(),
            project: "sales".into(),
            recipe: "totals".into(),
            recipe_kind: capstan_core::model::RecipeKind::Python,
            user: "alice".into(),
            identity: capstan_core::access::LocalIdentity::Daemon,
            admin: false,
            code_file: Some("/h/projects/sales/recipes/totals.py".into()),
            lib_dir: Some("/h/projects/sales/lib".into()),
            inputs: vec!["orders".into()],
            outputs: vec!["totals".into()],
            kind: capstan_core::model::ExecKind::Docker,
            exec_config: Some("c".into()),
            cluster: None,
            image: Some("registry.example.com/capstan-base-default".into()),
            docker_host: None,
            namespace: None,
            kube_context: None,
            kubeconfig: None,
            env: [("OMP_NUM_THREADS".to_string(), "2".to_string())].into(),
            code_env: None,
            timeout: None,
            cpu_limit: exec
                .as_ref()
                .and_then(|e| e.cpu_limit.as_ref())
                .map(|c| c.value),
            memory_limit: exec
                .as_ref()
                .and_then(|e| e.memory_limit.as_ref())
                .map(|m| m.value),
            gpus,
            exec,
            data: None,
            spark: None,
            workload: Default::default(),
            engine_image: None,
            models: Vec::new(),
            ml: None,
            activation: capstan_core::ml::Activation::Always,
            part: None,
        }
    }

    /// The create body as the engine receives it, with labels sorted for a stable snapshot.
    fn rendered(config: &str, gpus: u32) -> String {
        let body = container_body(&spec(config, gpus), "abcd1234").unwrap();
        let mut v = serde_json::to_value(&body).unwrap();
        if let Some(labels) = v.get_mut("Labels") {
            let sorted: std::collections::BTreeMap<String, serde_json::Value> =
                serde_json::from_value(labels.take()).unwrap();
            *labels = serde_json::to_value(sorted).unwrap();
        }
        serde_json::to_string_pretty(&v).unwrap()
    }

    #[test]
    fn small_configuration() {
        insta::assert_snapshot!(rendered(
            "[exec_config.c]\nkind = \"docker\"\nimage = \"x\"\ncpu_request = \"500m\"\ncpu_limit = 1\nmemory_request = \"128Mi\"\nmemory_limit = \"256Mi\"\nshm_size = \"64Mi\"\n",
            0
        ));
    }

    #[test]
    fn gpu_configuration_with_run_options() {
        insta::assert_snapshot!(rendered(
            "[exec_config.c]\nkind = \"docker\"\nimage = \"x\"\ngpus = 2\nmemory_limit = \"16Gi\"\n\
             [exec_config.c.docker]\nnetwork = \"host\"\nruntime = \"nvidia\"\ncap_add = [\"SYS_PTRACE\"]\n\
             extra_hosts = [\"db:10.0.0.5\"]\nvolumes = [\"/data:/data:ro\"]\n",
            2
        ));
    }

    #[test]
    fn a_kernel_works_in_its_users_notebook_volume() {
        let mut s = spec("[exec_config.c]\nkind = \"docker\"\nimage = \"x\"\n", 0);
        s.recipe = capstan_core::job::KERNEL_RECIPE.into();
        s.project = "sample".into();
        s.user = "alice".into();
        let body = container_body(&s, "i1").unwrap();
        let binds = body.host_config.unwrap().binds.unwrap();
        assert_eq!(
            binds,
            ["capstan-notebooks-i1-sample-alice:/capstan/notebooks"]
        );
        assert!(
            body.env
                .unwrap()
                .contains(&"CAPSTAN_KERNEL_WORKDIR=/capstan/notebooks".to_string())
        );
        // A recipe has no such volume.
        let recipe = container_body(
            &spec("[exec_config.c]\nkind = \"docker\"\nimage = \"x\"\n", 0),
            "i1",
        )
        .unwrap();
        assert_eq!(recipe.host_config.unwrap().binds, None);
    }

    #[test]
    fn archive_holds_the_code_under_the_work_dir() {
        let home = std::env::temp_dir().join(format!("capstan-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let dir = home.join("projects/sales");
        std::fs::create_dir_all(dir.join("lib/pkg")).unwrap();
        std::fs::write(dir.join("totals.py"), "print(1)\n").unwrap();
        std::fs::write(dir.join("lib/pkg/util.py"), "X = 1\n").unwrap();
        let mut s = spec("[exec_config.c]\nkind = \"docker\"\nimage = \"x\"\n", 0);
        s.home_root = home.clone();
        s.code_file = Some(dir.join("totals.py"));
        s.lib_dir = Some(dir.join("lib"));
        let bytes = code_archive(&s).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "capstan",
                "capstan/work",
                "capstan/work/totals.py",
                "capstan/work/lib",
                "capstan/work/lib/pkg",
                "capstan/work/lib/pkg/util.py"
            ]
        );
        let _ = std::fs::remove_dir_all(&home);
    }
}
