//! ML benchmark: the sample's `wine_model` training (four algorithms' grids, 3-fold
//! cross-validation, refit, upload of the version) submitted through capstan, against the same
//! training run directly by the same interpreter of the same code environment, reading the
//! stored Parquet file and writing the version's tar to a file. Every number is printed next to
//! the raw run measured in the same run.
//!
//! Run: `cargo bench -p capstan --bench ml` (env `BENCH_RUNS`, default 5). The first, untimed
//! run builds the `ml` code environment (a venv: about a minute, once).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

mod common;
use common::{capstan, median, start, wait_final};

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

fn setup(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    let out = capstan().arg("init").arg(&home).output().unwrap();
    assert!(out.status.success());
    let out = capstan()
        .arg("--home")
        .arg(&home)
        .args(["dataset", "import", "sample/wine"])
        .arg(home.join("projects/sample/data/wine.csv"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    home
}

async fn train(http: &reqwest::Client, d: &common::Daemon) -> (f64, Value) {
    let t = Instant::now();
    let job: Value = http
        .post(format!("{}/api/v1/jobs", d.url))
        .bearer_auth(&d.token)
        .json(&json!({"project": "sample", "recipe": "wine_model"}))
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

/// The interpreter of the home's `ml` code environment (built by the first run).
fn interpreter(home: &Path) -> PathBuf {
    let envs = home.join("state/envs");
    std::fs::read_dir(&envs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ml-"))
                && p.is_dir()
        })
        .map(|p| p.join("bin/python"))
        .expect("the ml code environment was built")
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
    let home = setup(&dir);
    let d = start(&home);
    let http = reqwest::Client::new();
    // Untimed: builds the venv, and warms the page cache for both sides.
    train(&http, &d).await;

    let python = interpreter(&home);
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/capstan");
    let parquet = home.join("data/sample/wine/data.parquet");
    let recipe = home.join("projects/sample/recipes/wine_model.toml");
    let tar = dir.join("version.tar");
    let (mut raws, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let out = Command::new(&python)
            .arg("-c")
            .arg(RAW)
            .arg(&runtime)
            .arg(&parquet)
            .arg(&recipe)
            .arg(&tar)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        raws.push(t.elapsed().as_secs_f64());
        ours.push(train(&http, &d).await.0);
    }
    let (raw, our) = (median(raws), median(ours));
    println!(
        "training sample/wine_model (6 grid points of 4 algorithms, 3-fold CV, refit, a version saved), locally, median of {runs}"
    );
    println!("  raw: the same training, same venv, direct files   {raw:7.2} s");
    println!(
        "  capstan: submit → finished, version committed      {our:7.2} s   (ratio {:.2}x; goal ≤ 1.10x)",
        our / raw
    );
    let _ = std::fs::remove_dir_all(&dir);
}
