//! Rendered objects for a matrix of configurations (`tests/matrix/*.toml`): snapshots, and every
//! one validated against the official schema of a recent Kubernetes with `kubernetes-validate`.

use std::path::{Path, PathBuf};

use capstan_backend_k8s::render::{render, to_yaml};
use capstan_core::load::{HomeFiles, load};
use capstan_core::model::{ExecKind, RecipeKind};
use capstan_engine::backend::{ActivitySpec, DataAccess, Workload};

/// The Kubernetes version the objects are validated against.
const K8S_VERSION: &str = "1.33.0";

/// The spec of a case: an execution configuration `c`, or a Spark configuration `s` (whose
/// driver runs as the pod, with the limits the engine gives it).
fn spec_for(config_toml: &str, dir: &Path) -> ActivitySpec {
    let mut files = HomeFiles::default();
    files.toml.insert("capstan.toml".into(), b"".to_vec());
    let file = if config_toml.contains("[spark_config.") {
        "spark-configs.toml"
    } else {
        "exec-configs.toml"
    };
    files
        .toml
        .insert(file.into(), config_toml.as_bytes().to_vec());
    let (home, diags) = load(Path::new("/h"), &files);
    assert!(!diags.has_errors(), "{:?}", diags.list);
    // The code is where the home keeps it, in the project's folder (code is read only from there).
    let home_root = dir.to_path_buf();
    let dir = &dir.join("projects/sales");
    std::fs::create_dir_all(dir.join("lib/helpers")).unwrap();
    std::fs::write(dir.join("totals.py"), "import capstan\nprint('hello')\n").unwrap();
    std::fs::write(dir.join("lib/helpers/__init__.py"), "X = 1\n").unwrap();
    if let Some(spark) = home.spark_configs.get("s") {
        let (cpu, memory) = capstan_core::resolve::spark_driver_limits(spark);
        let base = spec_for(
            "[exec_config.c]\nkind = \"kubernetes\"\nimage = \"x\"\nnamespace = \"x\"\n",
            &home_root,
        );
        return ActivitySpec {
            recipe_kind: RecipeKind::PySpark,
            exec_config: None,
            exec: None,
            image: spark.image.as_ref().map(|i| i.value.clone()),
            namespace: spark.namespace.as_ref().map(|n| n.value.clone()),
            cpu_limit: Some(cpu),
            memory_limit: Some(memory),
            timeout: None,
            spark: Some(spark.clone()),
            ..base
        };
    }
    let exec = home.exec_configs["c"].clone();
    let visual = config_toml.starts_with("# visual recipe");
    let spec = ActivitySpec {
        project: "sales".into(),
        recipe: "totals".into(),
        recipe_kind: RecipeKind::Python,
        user: "alice".into(),
        code_file: Some(dir.join("totals.py")),
        lib_dir: Some(dir.join("lib")),
        inputs: vec!["orders".into()],
        outputs: vec!["order_totals".into()],
        exec_config: Some("c".into()),
        cluster: Some("prod".into()),
        image: exec.image.as_ref().map(|i| i.value.clone()),
        env: [("OMP_NUM_THREADS".to_string(), "2".to_string())].into(),
        timeout: exec.timeout.as_ref().map(|t| t.value),
        cpu_limit: exec.cpu_limit.as_ref().map(|c| c.value),
        memory_limit: exec.memory_limit.as_ref().map(|m| m.value),
        gpus: exec.gpus.as_ref().map_or(0, |g| g.value),
        data: Some(DataAccess {
            api_url: "https://capstan.example.com".into(),
            token: "capa_42_0_1_secretsecretsecret".into(),
        }),
        exec: Some(exec),
        home_root,
        ..ActivitySpec::bare(
            42,
            1,
            "/h/state/jobs/42/a0-1".into(),
            "/h".into(),
            ExecKind::Kubernetes,
        )
    };
    if config_toml.starts_with("# notebook kernel") {
        return ActivitySpec {
            recipe: capstan_core::job::KERNEL_RECIPE.into(),
            code_file: Some("capstan_kernel.py".into()),
            lib_dir: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            timeout: None,
            env: [(
                "CAPSTAN_KERNEL_ID".to_string(),
                "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f".to_string(),
            )]
            .into(),
            workload: Workload::Generated {
                name: "capstan_kernel.py".into(),
                source: "main(__import__(\"os\").environ[\"CAPSTAN_KERNEL_ID\"])\n".into(),
            },
            ..spec
        };
    }
    if !visual {
        return spec;
    }
    // A visual recipe: no code, its spec, and the engine image its pod copies capstan from.
    ActivitySpec {
        recipe_kind: RecipeKind::Prepare,
        code_file: None,
        lib_dir: None,
        workload: Workload::Transform {
            spec: r#"{"prepare":{"steps":[{"type":"rename","renames":{"amount":"total"}}]}}"#
                .into(),
        },
        engine_image: Some("registry.example.com/capstan/capstan-engine:0.1.0-0123456789ab".into()),
        ..spec
    }
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/matrix"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
    v.sort();
    v
}

#[test]
fn rendered_objects_match_their_snapshots_and_hold_no_token() {
    // Not per process: the home's path is the instance id in the snapshots' labels.
    let tmp = std::env::temp_dir().join("capstan-k8s-render-snapshots");
    for case in cases() {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let spec = spec_for(&std::fs::read_to_string(&case).unwrap(), &tmp.join(&name));
        let namespace = match &spec.exec {
            Some(exec) => capstan_core::resolve::expand_namespace(
                &exec.namespace.as_ref().unwrap().value,
                &spec.user,
                &spec.project,
            ),
            None => spec.namespace.clone().unwrap(),
        };
        let yaml = to_yaml(&render(&spec, "abcd1234", &namespace).unwrap()).unwrap();
        assert!(
            !yaml.contains("secretsecret"),
            "{name}: the token is in the rendered objects"
        );
        insta::assert_snapshot!(name, yaml);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn rendered_objects_pass_the_official_schema() {
    let validator = std::process::Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    if !validator.is_ok_and(|o| o.status.success()) {
        // scripts/test installs it; a developer without it is told, CI never skips.
        assert!(
            std::env::var("CI").is_err(),
            "kubernetes-validate is not installed (pip install kubernetes-validate)"
        );
        eprintln!("skipped: pip install kubernetes-validate to run this test");
        return;
    }
    let tmp = std::env::temp_dir().join(format!("capstan-k8s-validate-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut files = Vec::new();
    for case in cases() {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let spec = spec_for(&std::fs::read_to_string(&case).unwrap(), &tmp.join(&name));
        let r = render(&spec, "abcd1234", "capstan-alice").unwrap();
        for (kind, doc) in [
            ("pod", serde_yaml::to_string(&r.pod).unwrap()),
            ("configmap", serde_yaml::to_string(&r.code).unwrap()),
            ("secret", serde_yaml::to_string(&r.secret).unwrap()),
        ] {
            let path = tmp.join(format!("{name}-{kind}.yaml"));
            std::fs::write(&path, doc).unwrap();
            files.push(path);
        }
    }
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "-k", K8S_VERSION])
        .args(&files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        files.len(),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_spark_driver_whose_library_and_its_zip_outgrow_a_config_map_is_refused_before_the_api() {
    let tmp = std::env::temp_dir().join(format!("capstan-k8s-big-lib-{}", std::process::id()));
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/matrix/spark-driver.toml");
    let spec = spec_for(&std::fs::read_to_string(case).unwrap(), &tmp);
    // 600 KiB fits alone; with its copy in the executors' zip it does not.
    std::fs::write(
        tmp.join("projects/sales/lib/helpers/table.py"),
        "#".repeat(600 << 10),
    )
    .unwrap();
    let err = render(&spec, "abcd1234", "capstan-spark").unwrap_err();
    assert!(
        err.contains("more than the 1 MiB a ConfigMap holds"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
