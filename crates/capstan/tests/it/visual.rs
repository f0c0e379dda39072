//! Visual recipes through the daemon: the sample's prepare → group → join flow built on the
//! built-in engine locally, then each recipe again in a container and on local Spark, with
//! identical outputs; failures of formulas and of images as the user reads them.

use crate::support::{TestHome, stderr, stdout};

const FLOW: [(&str, &str); 3] = [
    ("wine_prepare", "wine_prepared"),
    ("wine_cultivar_stats", "wine_cultivar_stats"),
    ("wine_enriched", "wine_enriched"),
];

/// Every row of `sample/NAME`, each as its JSON text, sorted (the recipes do not sort).
fn rows(h: &TestHome, name: &str) -> Vec<String> {
    let out = h
        .capstan()
        .args([
            "dataset",
            "head",
            &format!("sample/{name}"),
            "--json",
            "-n",
            "1000",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut rows: Vec<String> = v["rows"]
        .as_array()
        .or_else(|| v.as_array())
        .unwrap_or_else(|| panic!("no rows in {v}"))
        .iter()
        .map(|r| {
            // Floats to 9 significant digits: engines may sum in different orders.
            let mut r = r.clone();
            if let Some(o) = r.as_object_mut() {
                for (_, x) in o.iter_mut() {
                    if let Some(f) = x.as_f64()
                        && !x.is_i64()
                        && !x.is_u64()
                    {
                        *x = serde_json::json!(format!("{f:.9e}"));
                    }
                }
            }
            r.to_string()
        })
        .collect();
    rows.sort();
    rows
}

fn import_wine(h: &TestHome) {
    let out = h
        .capstan()
        .args(["dataset", "import", "sample/wine"])
        .arg(h.root().join("projects/sample/data/wine.csv"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Builds the sample's visual flow locally; the rows of each of its datasets.
fn build_locally(h: &TestHome) -> Vec<Vec<String>> {
    let out = h
        .capstan()
        .args(["build", "sample/wine_enriched"])
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 succeeded"), "{text}");
    let built: Vec<Vec<String>> = FLOW.iter().map(|(_, d)| rows(h, d)).collect();
    assert_eq!(
        built[0].len(),
        178,
        "every wine has magnesium within 70..170"
    );
    assert_eq!(built[1].len(), 3, "three cultivars");
    assert_eq!(built[2].len(), 178);
    built
}

/// Runs each recipe of the flow with `args` and checks it writes what the local build wrote.
fn rerun_and_compare(h: &TestHome, args: &[&str], local: &[Vec<String>], on: &str) {
    for ((recipe, dataset), want) in FLOW.iter().zip(local) {
        let out = h
            .capstan()
            .args(["run", &format!("sample/{recipe}")])
            .args(args)
            .output()
            .unwrap();
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(out.status.success(), "{recipe} {args:?}\n{text}");
        assert!(
            text.contains(on),
            "{recipe} ran elsewhere than {on}:\n{text}"
        );
        assert_eq!(
            &rows(h, dataset),
            want,
            "{recipe} on {on} differs from the built-in engine"
        );
    }
}

#[test]
fn the_sample_visual_flow_builds_locally_and_runs_the_same_in_a_container() {
    let Some(image) = crate::docker::image() else {
        return;
    };
    let h = crate::docker::docker_home("visual-docker", &image);
    import_wine(&h);
    let _d = h.start();
    let local = build_locally(&h);
    // The build is up to date now.
    let again = h
        .capstan()
        .args(["build", "sample/wine_enriched"])
        .output()
        .unwrap();
    assert!(
        stdout(&again).contains("nothing to run"),
        "{}",
        stdout(&again)
    );
    rerun_and_compare(&h, &["--exec-config", "small"], &local, "on docker");
}

#[test]
fn the_sample_visual_flow_runs_the_same_on_local_spark() {
    if !crate::spark::java() {
        return;
    }
    let h = TestHome::new("visual-spark");
    import_wine(&h);
    let _d = h.start();
    let local = build_locally(&h);
    rerun_and_compare(&h, &["--spark-config", "local"], &local, "Spark");
    // What ran is the PySpark that `recipe explain` shows.
    let explain = h
        .capstan()
        .args([
            "recipe",
            "explain",
            "sample/wine_prepare",
            "--spark-config",
            "local",
        ])
        .output()
        .unwrap();
    let text = stdout(&explain);
    assert!(
        text.contains("engine: Spark") && text.contains("capstan.spark.read(spark, \"wine\")"),
        "{text}"
    );
}

#[test]
fn a_formula_that_fails_by_its_setting_is_the_jobs_diagnosis_and_writes_nothing() {
    let h = TestHome::new("visual-fail");
    import_wine(&h);
    h.append("projects/sample/project.toml", "\n[dataset.ratios]\n");
    std::fs::write(
        h.root().join("projects/sample/recipes/ratios.toml"),
        "kind = \"prepare\"\nexec_config = \"local\"\ninputs = [\"wine\"]\noutputs = [\"ratios\"]\n\n[prepare]\n\
         [[prepare.steps]]\ntype = \"formula\"\ncolumn = \"r\"\nexpression = \"alcohol / (magnesium - 100)\"\n\n\
         [[prepare.steps]]\ntype = \"formula\"\ncolumn = \"strict\"\nexpression = \"alcohol / (magnesium - 100)\"\non_error = \"fail\"\n",
    )
    .unwrap();
    let _d = h.start();
    let out = h.capstan().args(["run", "sample/ratios"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("the prepare recipe failed: steps[1] (formula): division by zero"),
        "{text}"
    );
    let head = h
        .capstan()
        .args(["dataset", "head", "sample/ratios"])
        .output()
        .unwrap();
    assert!(
        !head.status.success(),
        "a failed run leaves no data: {}",
        stdout(&head)
    );
    // Without the strict step, rows with magnesium 100 get null (a recipe of its own: the
    // daemon sees a new recipe at once).
    h.append("projects/sample/project.toml", "\n[dataset.lenient]\n");
    std::fs::write(
        h.root().join("projects/sample/recipes/lenient.toml"),
        "kind = \"prepare\"\nexec_config = \"local\"\ninputs = [\"wine\"]\noutputs = [\"lenient\"]\n\n[prepare]\n\
         [[prepare.steps]]\ntype = \"formula\"\ncolumn = \"r\"\nexpression = \"alcohol / (magnesium - 100)\"\n",
    )
    .unwrap();
    let out = h
        .capstan()
        .args(["run", "sample/lenient"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let nulls = rows(&h, "lenient")
        .iter()
        .filter(|r| r.contains("\"magnesium\":100,") && r.contains("\"r\":null"))
        .count();
    assert!(nulls > 0, "rows with magnesium 100 have r null");
}

/// `docker`, on the engine the tests use.
fn docker() -> std::process::Command {
    let mut docker = std::process::Command::new("docker");
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        docker.args(["-H", &host]);
    }
    docker
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker().args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// An image of one file: it can be created (not run), and has no C library at all.
fn image_without_a_c_library() -> &'static str {
    const IMAGE: &str = "capstan-test-nolibc:1";
    let dir = crate::support::TempDir::new("nolibc");
    std::fs::write(dir.path().join("hello"), "no libc here\n").unwrap();
    let tar = dir.path().join("root.tar");
    let ok = std::process::Command::new("tar")
        .args(["-C"])
        .arg(dir.path())
        .args(["-cf"])
        .arg(&tar)
        .arg("hello")
        .status()
        .unwrap();
    assert!(ok.success());
    docker_ok(&["import", &tar.to_string_lossy(), IMAGE]);
    IMAGE
}

#[test]
fn an_image_without_the_gnu_c_library_is_refused_before_the_run() {
    if crate::docker::image().is_none() {
        return;
    }
    let h = crate::docker::docker_home("visual-nolibc", image_without_a_c_library());
    import_wine(&h);
    let _d = h.start();
    let out = h
        .capstan()
        .args(["run", "sample/wine_prepare", "--exec-config", "small"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("image `capstan-test-nolibc:1` has no GNU C library"),
        "{text}"
    );
    assert!(
        crate::docker::containers(None, &h, "").is_empty(),
        "no container outlives the refusal"
    );
}

/// What a kubelet does with a visual recipe's pod, done with Docker on the objects `capstan k8s
/// render` prints: the engine image pulled from the registry `capstan image build-engine`
/// pushed it to, its init container filling an `emptyDir`, then the main container, on an image
/// with no C library at all, running the copied engine on the spec from the ConfigMap. (Its
/// data comes as files here; through the data API it is the Docker backend's path, tested
/// there.)
#[test]
fn a_visual_recipes_pod_copies_the_engine_and_runs_it_on_an_image_without_a_c_library() {
    if crate::docker::image().is_none() {
        return;
    }
    let Ok(registry) = std::env::var("CAPSTAN_TEST_REGISTRY") else {
        crate::support::skip("CAPSTAN_TEST_REGISTRY (scripts/test runs one on 127.0.0.1:5000)");
        return;
    };
    let image = image_without_a_c_library();
    let h = crate::support::TestHome::new("visual-k8s");
    // The sample's Kubernetes configuration pushes to a registry that does not exist.
    let exec = std::fs::read_to_string(h.root().join("exec-configs.toml")).unwrap();
    std::fs::write(
        h.root().join("exec-configs.toml"),
        exec.replace("registry = \"registry.example.com/capstan\"\n", ""),
    )
    .unwrap();
    h.append(
        "exec-configs.toml",
        &format!(
            "\n[exec_config.kube]\nkind = \"kubernetes\"\nimage = \"{image}\"\nregistry = \"{registry}/capstan-it\"\n\
             namespace = \"capstan-it\"\ncpu_limit = 1\nmemory_limit = \"512Mi\"\n"
        ),
    );
    import_wine(&h);
    let render = [
        "k8s",
        "render",
        "sample/wine_prepare",
        "--exec-config",
        "kube",
        "--cluster",
        "prod-k8s",
        "--user",
        "admin",
    ];
    crate::support::fails(&h, &render, 1, "run `capstan image build-engine`");

    let build = h
        .capstan()
        .args(["image", "build-engine"])
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&build), stderr(&build));
    assert!(build.status.success(), "{text}");
    assert!(
        text.contains("engine image: ") && text.contains(", pushed"),
        "{text}"
    );
    let again = h
        .capstan()
        .args(["image", "build-engine"])
        .output()
        .unwrap();
    assert!(
        stdout(&again).contains("up to date"),
        "{}{}",
        stdout(&again),
        stderr(&again)
    );

    let out = h.capstan().args(render).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&stdout(&out))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let pod = &docs[0]["spec"];
    let init = &pod["initContainers"][0];
    let main = &pod["containers"][0];
    let engine = init["image"].as_str().unwrap().to_string();
    assert!(
        engine.starts_with(&format!("{registry}/capstan-it/capstan-engine:")),
        "{engine}"
    );
    assert_eq!(main["image"], image);
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    let mount = |c: &serde_json::Value, volume: &str| -> String {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("no {volume} mount in {c}"))["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // As a node would: the image from the registry.
    docker_ok(&["rmi", &engine]);
    docker_ok(&["pull", &engine]);
    let volume = format!("capstan-it-engine-{}", std::process::id());
    docker_ok(&["volume", "create", &volume]);
    let work = crate::support::TempDir::new("visual-k8s-work");
    for (key, value) in docs[1]["binaryData"].as_object().unwrap() {
        let mut decode = std::process::Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        decode
            .stdin
            .take()
            .unwrap()
            .write_all(value.as_str().unwrap().as_bytes())
            .unwrap();
        let bytes = decode.wait_with_output().unwrap().stdout;
        std::fs::write(work.path().join(key), bytes).unwrap();
    }
    let out_dir = crate::support::TempDir::new("visual-k8s-out");
    let run = |args: Vec<String>| {
        let out = docker().args(&args).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", stdout(&out), stderr(&out)),
        )
    };
    let (ok, text) = run([
        vec![
            "run".into(),
            "--rm".into(),
            "-v".into(),
            format!("{volume}:{}", mount(init, "engine")),
            "--entrypoint".into(),
            strings(&init["command"])[0].clone(),
            engine.clone(),
        ],
        strings(&init["command"])[1..].to_vec(),
    ]
    .concat());
    assert!(ok, "the init container failed: {text}");
    assert!(text.contains("capstan's engine copied to"), "{text}");
    let data = h.root().join("data/sample/wine");
    let mut args: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "-v".into(),
        format!("{volume}:{}:ro", mount(main, "engine")),
        "-v".into(),
        format!("{}:{}:ro", work.path().display(), mount(main, "code")),
        "-v".into(),
        format!("{}:/in:ro", data.display()),
        "-v".into(),
        format!("{}:/out", out_dir.path().display()),
        "-e".into(),
        "CAPSTAN_TRANSFORM_INPUTS={\"wine\":\"/in/data.parquet\"}".into(),
        "-e".into(),
        "CAPSTAN_TRANSFORM_OUTPUTS={\"wine_prepared\":\"/out/wine_prepared.parquet\"}".into(),
        "-e".into(),
        "CAPSTAN_TRANSFORM_SPILL=/out/spill".into(),
        "--workdir".into(),
        main["workingDir"].as_str().unwrap().into(),
        "--entrypoint".into(),
        strings(&main["command"])[0].clone(),
        image.into(),
    ];
    args.extend(strings(&main["command"])[1..].iter().cloned());
    let (ok, text) = run(args);
    let _ = docker().args(["volume", "rm", "-f", &volume]).output();
    // Each build of capstan has an engine image of its own: not kept by the tests.
    let local = format!(
        "capstan-engine:{}",
        engine.rsplit_once(':').map_or("", |(_, t)| t)
    );
    let _ = docker().args(["rmi", &engine, &local]).output();
    assert!(ok, "the engine failed in the pod's image: {text}");
    let file = std::fs::File::open(out_dir.path().join("wine_prepared.parquet")).unwrap();
    let rows =
        capstan_data::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .metadata()
            .file_metadata()
            .num_rows();
    assert_eq!(rows, 178, "every wine has magnesium within 70..170: {text}");
}
