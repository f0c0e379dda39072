//! Flow benchmark: what a build adds per activity, and how long planning a large project takes.
//! Every number is printed next to the raw engine measured in the same run.
//!
//! 1. A chain of 50 trivial shell recipes (each writes one row of its dataset through the data
//!    API, with curl) built through capstan, against the same 50 scripts run in a shell loop
//!    (writing through the same API with a user's token).
//! 2. `capstan build --dry-run` of a 1,000-recipe project through the API (reading the home,
//!    hashing every definition, planning), against reading the project's files alone.
//!
//! Run: `cargo bench -p capstan --bench flow` (env `BENCH_CHAIN`, default 50).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

mod common;
use common::{Daemon, capstan, median, start, wait_final};

/// What each recipe of the chain runs: one row of its dataset, written through the data API.
const STEP: &str = "printf 'n\\n1\\n' | curl -fsS -X PUT -H \"Authorization: Bearer $(cat \"$CAPSTAN_TOKEN_FILE\")\" \
-H 'Content-Type: text/csv' --data-binary @- \"$CAPSTAN_API_URL/api/v1/projects/$CAPSTAN_PROJECT/datasets/$OUT/data\" >/dev/null\n";

/// A home with project `chain` (`c0` reads the imported `raw`, each next one the previous
/// one's output) and project `big` (1,000 recipes in layers, each reading up to three earlier
/// outputs).
fn setup(dir: &Path, chain: usize) -> PathBuf {
    let home = dir.join("home");
    let out = capstan().arg("init").arg(&home).output().unwrap();
    assert!(out.status.success());
    for (project, n) in [("chain", chain), ("big", 1000)] {
        let p = home.join("projects").join(project);
        std::fs::create_dir_all(p.join("recipes")).unwrap();
        let mut toml = String::from("[project]\n\n[dataset.raw]\n");
        for i in 0..n {
            toml += &format!("\n[dataset.d{i}]\n");
        }
        std::fs::write(p.join("project.toml"), toml).unwrap();
        for i in 0..n {
            let inputs: Vec<String> = if project == "chain" {
                vec![if i == 0 {
                    "raw".into()
                } else {
                    format!("d{}", i - 1)
                }]
            } else if i < 10 {
                vec!["raw".into()]
            } else {
                // Deterministic fan-in from earlier recipes.
                let mut v: Vec<String> = (1..=3)
                    .map(|k| format!("d{}", (i * 7 + k * 13) % i))
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            let list: Vec<String> = inputs.iter().map(|d| format!("\"{d}\"")).collect();
            std::fs::write(
                p.join("recipes").join(format!("c{i}.toml")),
                format!(
                    "kind = \"shell\"\nexec_config = \"local\"\ninputs = [{}]\noutputs = [\"d{i}\"]\n\n[env]\nOUT = \"d{i}\"\n",
                    list.join(", ")
                ),
            )
            .unwrap();
            std::fs::write(p.join("recipes").join(format!("c{i}.sh")), STEP).unwrap();
        }
        let raw = dir.join("raw.csv");
        std::fs::write(&raw, "n\n1\n").unwrap();
        let out = capstan()
            .arg("--home")
            .arg(&home)
            .args(["dataset", "import", &format!("{project}/raw")])
            .arg(&raw)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    home
}

async fn post(http: &reqwest::Client, d: &Daemon, path: &str, body: &Value) -> Value {
    http.post(format!("{}{path}", d.url))
        .bearer_auth(&d.token)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::main]
async fn main() {
    let chain: usize = std::env::var("BENCH_CHAIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = std::env::temp_dir().join(format!("capstan-bench-flow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let home = setup(&dir, chain);
    let d = start(&home);
    let http = reqwest::Client::new();

    // 1. The chain, raw: the same scripts in a shell loop, writing with the daemon's token.
    let token_file = dir.join("token");
    std::fs::write(&token_file, &d.token).unwrap();
    let scripts = home.join("projects/chain/recipes");
    let mut raws = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..3 {
        let mut lp = String::new();
        for i in 0..chain {
            lp += &format!("OUT=d{i} sh {}/c{i}.sh || exit 1\n", scripts.display());
        }
        let t = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(&lp)
            .env("CAPSTAN_TOKEN_FILE", &token_file)
            .env("CAPSTAN_API_URL", &d.url)
            .env("CAPSTAN_PROJECT", "chain")
            .status()
            .unwrap();
        assert!(status.success());
        raws.push(t.elapsed().as_secs_f64() * 1000.0);

        // Through capstan: one build of the chain's end, every recipe forced to run.
        let t = Instant::now();
        let answer = post(
            &http,
            &d,
            "/api/v1/projects/chain/builds",
            &json!({"targets": [format!("d{}", chain - 1)], "mode": "recursive"}),
        )
        .await;
        let id = answer["job"]["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no job: {answer}"));
        let j = wait_final(&http, &d, id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (raw, our) = (median(raws), median(ours));
    println!(
        "a chain of {chain} trivial shell recipes (each writes one row through the data API), median of 3"
    );
    println!("  raw: the {chain} scripts in a shell loop   {raw:8.1} ms");
    println!("  capstan build (recursive)           {our:8.1} ms");
    println!(
        "  added per activity                  {:8.1} ms   (ratio {:.2}x; aim: at most 50 ms per activity)",
        (our - raw) / chain as f64,
        our / raw
    );

    // 2. Planning 1,000 recipes through the API, against reading their files.
    let mut raws = Vec::new();
    let mut ours = Vec::new();
    let files: Vec<PathBuf> = std::fs::read_dir(home.join("projects/big/recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for _ in 0..5 {
        let t = Instant::now();
        let mut bytes = 0;
        for f in &files {
            bytes += std::fs::read(f).unwrap().len();
        }
        std::hint::black_box(bytes);
        raws.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let answer = post(
            &http,
            &d,
            "/api/v1/projects/big/builds",
            &json!({"dry_run": true}),
        )
        .await;
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(
            answer["steps"].as_array().map(Vec::len),
            Some(1000),
            "{answer}"
        );
    }
    let (raw, our) = (median(raws), median(ours));
    println!();
    println!(
        "planning a 1,000-recipe project (capstan build --dry-run through the API), median of 5"
    );
    println!("  raw: reading its 2,000 recipe files     {raw:8.1} ms");
    println!(
        "  capstan plan                          {our:8.1} ms   (ratio {:.1}x; aim: under 200 ms)",
        our / raw
    );

    // 3. `capstan run` of a no-op Python recipe, end to end (the CLI process: submit, follow,
    //    learn of the end), against the interpreter the local backend runs recipes with.
    let python3 = capstan_backend_local::venv::interpreter();
    std::fs::write(
        home.join("projects/sample/recipes/noop.toml"),
        "kind = \"python\"\nexec_config = \"local\"\n",
    )
    .unwrap();
    std::fs::write(home.join("projects/sample/recipes/noop.py"), "pass\n").unwrap();
    let (mut raws, mut ours, mut inside) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let t = Instant::now();
        assert!(
            Command::new(&python3)
                .args(["-c", "pass"])
                .status()
                .unwrap()
                .success()
        );
        raws.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let out = capstan()
            .arg("--home")
            .arg(&home)
            .args(["run", "sample/noop", "--json"])
            .output()
            .unwrap();
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let job: Value = serde_json::from_slice(&out.stdout).unwrap();
        let (Some(c), Some(f)) = (job["created_at"].as_str(), job["finished_at"].as_str()) else {
            panic!("{job}")
        };
        let ms = |t: &str| {
            humantime::parse_rfc3339(t)
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
                * 1000.0
        };
        inside.push(ms(f) - ms(c));
    }
    let (raw, our, daemon) = (median(raws), median(ours), median(inside));
    println!();
    println!("`capstan run` of a no-op Python recipe, end to end, median of 10");
    println!("  raw: `{} -c pass`      {raw:8.1} ms", python3.display());
    println!(
        "  capstan run --json               {our:8.1} ms   (the daemon: queued → finished in {daemon:.1} ms)"
    );
    println!(
        "  added                            {:8.1} ms   (ratio {:.1}x)",
        our - raw,
        our / raw
    );
    let _ = std::io::stdout().flush();
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
