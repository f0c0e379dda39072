//! ML benchmark: the sample's `wine_model` training (four algorithms' grids, 3-fold
//! cross-validation, refit, upload of the version) submitted through capstan, against the same
//! training run directly by the same interpreter of the same code environment, reading the
//! stored Parquet file and writing the version's tar to a file. Where `CAPSTAN_TEST_IMAGE`
//! names a local image (the sign that a Docker engine and the cached Debian root are there,
//! `scripts/test-image`), the same in a container: the training on a Docker configuration
//! against `docker run --rm` of the same env image with the same CPU and memory limits. Every
//! number is printed next to the raw run measured in the same run.
//!
//! Run: `cargo bench -p capstan --bench ml` (env `BENCH_RUNS`, default 5). The first, untimed
//! run builds the `ml` code environment (a venv: about a minute, once); the Docker section
//! builds a base image and the env image first (a few minutes, then cached by the engine).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

mod common;
use common::{capstan, median, ok, start, wait_final};

/// The runner as a plain script: the training of `capstan.ml`, with the data plane replaced by
/// direct file access (the stored Parquet in, the version's tar out).
const RAW: &str = r#"
import json, sys, tomllib
sys.path.insert(0, sys.argv[1])
import pyarrow.parquet as pq
from capstan import ml
parquet, recipe, out = sys.argv[2], sys.argv[3], sys.argv[4]
ml._read_input = lambda spec: pq.read_table(parquet)
ml._upload = lambda spec, tar: open(out, "wb").write(tar)
with open(recipe, "rb") as f:
    train = tomllib.load(f)["ml_train"]
ml.run({"kind": "ml_train", "project": "sample", "recipe": "wine_model", "input": "wine",
        "output": "wine_model", "model": "wine_model", "gpus": 0, "train_info": {},
        "train": train})
"#;

/// The container's limits, the same for capstan's configuration and the raw `docker run`.
const BOX_CPUS: &str = "2";
const BOX_MEMORY: &str = "2Gi";

fn setup(dir: &Path, docker: bool) -> PathBuf {
    let home = dir.join("home");
    let out = capstan().arg("init").arg(&home).output().unwrap();
    assert!(out.status.success());
    if docker {
        // A Docker configuration with the `ml` environment built for it, on a base with the
        // OpenMP runtime LightGBM links.
        let configs = home.join("exec-configs.toml");
        let mut text = std::fs::read_to_string(&configs).unwrap();
        text += &format!(
            "\n[exec_config.mlbox]\nkind = \"docker\"\nbase_image = \"mlbase\"\n\
             cpu_limit = {BOX_CPUS}\nmemory_limit = \"{BOX_MEMORY}\"\n"
        );
        std::fs::write(&configs, text).unwrap();
        let images = home.join("images.toml");
        let text = std::fs::read_to_string(&images).unwrap().replace(
            "[code_env.ml]\n",
            "[code_env.ml]\nbuild_for = [\"mlbox\"]\n",
        );
        let text = format!("{text}\n[base_image.mlbase]\nsystem_packages = [\"libgomp1\"]\n");
        std::fs::write(&images, text).unwrap();
    }
    let csv = home.join("projects/sample/data/wine.csv");
    ok(
        &home,
        &["dataset", "import", "sample/wine", csv.to_str().unwrap()],
    );
    home
}

async fn train(
    http: &reqwest::Client,
    d: &common::Daemon,
    exec_config: Option<&str>,
) -> (f64, Value) {
    let t = Instant::now();
    let job: Value = http
        .post(format!("{}/api/v1/jobs", d.url))
        .bearer_auth(&d.token)
        .json(&json!({"project": "sample", "recipe": "wine_model", "exec_config": exec_config}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job: {job}"));
    let j = wait_final(http, d, id).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    (t.elapsed().as_secs_f64(), j)
}

/// The medians of `runs` raw runs and as many trainings through capstan, taken in turns so
/// that both see the same machine.
async fn measure(
    runs: usize,
    raw: &mut Command,
    http: &reqwest::Client,
    d: &common::Daemon,
    exec_config: Option<&str>,
) -> (f64, f64) {
    let (mut raws, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let out = raw.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        raws.push(t.elapsed().as_secs_f64());
        ours.push(train(http, d, exec_config).await.0);
    }
    (median(raws), median(ours))
}

fn report(raw_what: &str, raw: f64, our: f64) {
    println!("  raw: {raw_what:<48} {raw:7.2} s");
    println!(
        "  capstan: {:<43} {our:7.2} s   (ratio {:.2}x; goal ≤ 1.10x)",
        "submit → finished, version committed",
        our / raw
    );
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("capstan-bench-ml-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = std::env::var("CAPSTAN_TEST_IMAGE").unwrap_or_default();
    let docker = !image.is_empty()
        && Command::new("docker")
            .args(["image", "inspect", &image])
            .output()
            .is_ok_and(|o| o.status.success());
    let home = setup(&dir, docker);
    let env_image = docker.then(|| {
        ok(&home, &["image", "build-base", "mlbase"]);
        let out = ok(&home, &["env", "build", "ml"]);
        // "ml for mlbox: built capstan-env-ml-mlbox:TAG (…)"
        out.split_whitespace()
            .find(|w| w.starts_with("capstan-env-ml-mlbox:"))
            .unwrap_or_else(|| panic!("no env image in: {out}"))
            .trim_end_matches([',', '.', ')'])
            .to_string()
    });
    let d = start(&home);
    let http = reqwest::Client::new();
    // Untimed: builds the venv, and warms the page cache for both sides.
    train(&http, &d, None).await;

    let python = common::env_python(&home, "ml");
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/capstan");
    let parquet = home.join("data/sample/wine/data.parquet");
    let recipe = home.join("projects/sample/recipes/wine_model.toml");
    let tar = dir.join("version.tar");
    let mut raw = Command::new(&python);
    raw.arg("-c")
        .arg(RAW)
        .arg(&runtime)
        .arg(&parquet)
        .arg(&recipe)
        .arg(&tar);
    let (raw, our) = measure(runs, &mut raw, &http, &d, None).await;
    println!(
        "training sample/wine_model (6 grid points of 4 algorithms, 3-fold CV, refit, a version saved), locally, median of {runs}"
    );
    report("the same training, same venv, direct files", raw, our);

    if let Some(env_image) = env_image {
        // Untimed: the first container of the image, on both sides.
        train(&http, &d, Some("mlbox")).await;
        let mut raw = Command::new("docker");
        raw.args(["run", "--rm", "--cpus", BOX_CPUS, "--memory", "2g", "-v"])
            .arg(format!("{}:/in/data.parquet:ro", parquet.display()))
            .arg("-v")
            .arg(format!("{}:/in/recipe.toml:ro", recipe.display()))
            // The runner itself (`capstan.ml`), which capstan stages as the activity's code.
            .arg("-v")
            .arg(format!("{}:/in/runtime:ro", runtime.display()))
            .args([&env_image, "python", "-c", RAW, "/in/runtime"])
            .args(["/in/data.parquet", "/in/recipe.toml", "/tmp/version.tar"]);
        let (raw, our) = measure(runs, &mut raw, &http, &d, Some("mlbox")).await;
        println!();
        println!(
            "the same in a container ({env_image}, {BOX_CPUS} CPUs, {BOX_MEMORY}), median of {runs}"
        );
        report("`docker run --rm` of the training, direct files", raw, our);
    } else {
        println!(
            "Docker section skipped: set CAPSTAN_TEST_IMAGE to an image on the local engine (scripts/test-image)"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
