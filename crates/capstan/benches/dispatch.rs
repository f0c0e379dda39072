//! Dispatch benchmark: how much capstan adds on top of starting the interpreter yourself, and
//! how many jobs per second its queue drains, and what it adds to a small Spark job. Every number is printed next to the raw engine
//! measured in the same run.
//!
//! Run: `cargo bench -p capstan --bench dispatch` (env `BENCH_JOBS`, default 1000).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

mod common;
use common::{Daemon, capstan, median, start, wait_final};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn setup(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    let out = capstan().arg("init").arg(&home).output().unwrap();
    assert!(out.status.success());
    let recipes = home.join("projects/sample/recipes");
    std::fs::write(recipes.join("first.toml"), "kind = \"python\"\n").unwrap();
    std::fs::write(
        recipes.join("first.py"),
        "import time; print(time.time_ns())\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("noop.toml"),
        "kind = \"shell\"\nexec_config = \"two\"\n",
    )
    .unwrap();
    std::fs::write(recipes.join("noop.sh"), ":\n").unwrap();
    std::fs::write(
        recipes.join("dfirst.toml"),
        "kind = \"python\"\nexec_config = \"box\"\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("dfirst.py"),
        "import time; print(time.time_ns())\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("dnoop.toml"),
        "kind = \"shell\"\nexec_config = \"box\"\n",
    )
    .unwrap();
    std::fs::write(recipes.join("dnoop.sh"), ":\n").unwrap();
    std::fs::write(recipes.join("spark.toml"), "kind = \"pyspark\"\n").unwrap();
    std::fs::write(recipes.join("spark.py"), SPARK_APP).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(home.join("exec-configs.toml"))
        .unwrap();
    use std::io::Write;
    writeln!(
        f,
        "\n[exec_config.two]\nkind = \"local\"\nmax_concurrent = 2\n"
    )
    .unwrap();
    // The Docker section runs where `CAPSTAN_TEST_IMAGE` names a local image (scripts/test-image).
    let image = std::env::var("CAPSTAN_TEST_IMAGE")
        .unwrap_or_else(|_| "capstan-test-python:bookworm-1".into());
    writeln!(
        f,
        "\n[exec_config.box]\nkind = \"docker\"\nimage = \"{image}\"\nmax_concurrent = 4\n"
    )
    .unwrap();
    // The Spark-in-a-container section runs where `CAPSTAN_BENCH_SPARK_IMAGE` names an image
    // with Spark (`capstan image build-base spark` builds one).
    if let Ok(image) = std::env::var("CAPSTAN_BENCH_SPARK_IMAGE") {
        writeln!(
            f,
            "\n[exec_config.sparkbox]\nkind = \"docker\"\nimage = \"{image}\"\n"
        )
        .unwrap();
        std::fs::write(
            recipes.join("dspark.toml"),
            "kind = \"pyspark\"\nexec_config = \"sparkbox\"\n",
        )
        .unwrap();
        std::fs::write(recipes.join("dspark.py"), SPARK_APP).unwrap();
    }
    home
}

const SPARK_APP: &str = "from pyspark.sql import SparkSession\n\
spark = SparkSession.builder.getOrCreate()\n\
print(spark.range(1000000).selectExpr('sum(id)').collect()[0][0])\n\
spark.stop()\n";

async fn submit(http: &reqwest::Client, d: &Daemon, recipe: &str) -> i64 {
    let r: Value = http
        .post(format!("{}/api/v1/jobs", d.url))
        .bearer_auth(&d.token)
        .json(&json!({"project": "sample", "recipe": recipe}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("submit failed: {r}"))
}

/// Milliseconds from submitting `recipe` to the first line its code printed (the time it
/// printed, in ns since the epoch), for `runs` runs.
/// Runs of each Spark comparison: a run takes seconds.
const SPARK_RUNS: usize = 3;

/// The medians, in seconds, of `raw` (Spark started directly) and of recipe `recipe` through
/// capstan, submit → finished, run alternately.
async fn spark_job(
    http: &reqwest::Client,
    d: &Daemon,
    recipe: &str,
    raw: impl Fn() -> std::process::Output,
) -> (f64, f64) {
    let (mut raws, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..SPARK_RUNS {
        let t = Instant::now();
        let out = raw();
        assert!(
            out.status.success(),
            "raw Spark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        raws.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let id = submit(http, d, recipe).await;
        let j = wait_final(http, d, id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        ours.push(t.elapsed().as_secs_f64());
    }
    (median(raws), median(ours))
}

async fn first_lines(http: &reqwest::Client, d: &Daemon, recipe: &str, runs: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..runs {
        let t0 = now_ns();
        let id = submit(http, d, recipe).await;
        let j = wait_final(http, d, id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        let log = std::fs::read_to_string(format!(
            "{}/log",
            j["activities"][0]["dir"].as_str().unwrap()
        ))
        .unwrap();
        let first = log.lines().next().unwrap().splitn(3, ' ').nth(2).unwrap();
        let t1: u128 = first.trim().parse().unwrap();
        out.push((t1 - t0) as f64 / 1e6);
    }
    out
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let jobs: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = std::env::temp_dir().join(format!("capstan-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let home = setup(&dir);
    let d = start(&home);
    let http = reqwest::Client::new();

    // 1. Submit → first line of user code, against the bare interpreter.
    let runs = 20;
    let mut bare = Vec::new();
    // The interpreter the local backend runs recipes with (the first `python3` on PATH that
    // any user may run: recipes run as an unprivileged user).
    let python3 = capstan_backend_local::venv::interpreter();
    for _ in 0..runs {
        let t0 = now_ns();
        let out = Command::new(&python3)
            .args(["-c", "import time; print(time.time_ns())"])
            .output()
            .unwrap();
        let t1: u128 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        bare.push((t1 - t0) as f64 / 1e6);
    }
    let ours = first_lines(&http, &d, "first", runs).await;
    let (b, o) = (median(bare), median(ours));
    println!(
        "submit → first line of user code (median of {runs}, trivial Python recipe, local backend)"
    );
    println!("  bare `{} -c` {b:8.1} ms", python3.display());
    println!("  capstan run           {o:8.1} ms");
    println!(
        "  overhead              {:8.1} ms   (ratio {:.2}x; aim: under 50 ms above bare)",
        o - b,
        o / b
    );

    // 2. Raw engine for no-op work: `sh noop` 2 at a time.
    let noop = home.join("projects/sample/recipes/noop.sh");
    let t = Instant::now();
    let mut handles = Vec::new();
    for lane in 0..2 {
        let noop = noop.clone();
        handles.push(std::thread::spawn(move || {
            for _ in (lane..jobs).step_by(2) {
                Command::new("sh").arg(&noop).status().unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let raw = t.elapsed().as_secs_f64();

    // 3. The same work as capstan jobs, all queued at once, max_concurrent = 2.
    let t = Instant::now();
    let mut ids = Vec::with_capacity(jobs);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..jobs {
        let http = http.clone();
        let (url, token) = (d.url.clone(), d.token.clone());
        set.spawn(async move {
            let r: Value = http
                .post(format!("{url}/api/v1/jobs"))
                .bearer_auth(&token)
                .json(&json!({"project": "sample", "recipe": "noop"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (i, r["id"].as_i64())
        });
        // At most 16 submissions in flight, like a busy team's scripts.
        if set.len() >= 16 {
            let (_, id) = set.join_next().await.unwrap().unwrap();
            ids.push(id.expect("submission refused"));
        }
    }
    while let Some(r) = set.join_next().await {
        ids.push(r.unwrap().1.expect("submission refused"));
    }
    let submitted = t.elapsed().as_secs_f64();
    loop {
        let active: Value = http
            .get(format!(
                "{}/api/v1/jobs?state=queued,preparing,starting,running&limit=1",
                d.url
            ))
            .bearer_auth(&d.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if active.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = t.elapsed().as_secs_f64();
    let failed: Value = http
        .get(format!(
            "{}/api/v1/jobs?state=failed,cancelled,timed_out&limit=10000",
            d.url
        ))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!();
    println!("{jobs} no-op shell jobs queued at once, max_concurrent = 2");
    println!(
        "  raw `sh noop.sh`, 2 at a time   {raw:7.2} s   {:7.0} runs/s",
        jobs as f64 / raw
    );
    println!(
        "  capstan (all queued in {submitted:.2} s)  {total:7.2} s   {:7.0} jobs/s   (ratio {:.2}x; aim: ≥ 100 jobs/s)",
        jobs as f64 / total,
        total / raw
    );
    println!("  jobs not succeeded: {}", failed.as_array().unwrap().len());

    // 4. Docker: submit → first line in the container, against `docker run --rm` of the image.
    let image = std::env::var("CAPSTAN_TEST_IMAGE").unwrap_or_default();
    let have_docker = !image.is_empty()
        && Command::new("docker")
            .args(["image", "inspect", &image])
            .output()
            .is_ok_and(|o| o.status.success());
    if have_docker {
        let runs = 10;
        let mut raw = Vec::new();
        for _ in 0..runs {
            let t0 = now_ns();
            let out = Command::new("docker")
                .args([
                    "run",
                    "--rm",
                    &image,
                    "python3",
                    "-c",
                    "import time; print(time.time_ns())",
                ])
                .output()
                .unwrap();
            let t1: u128 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            raw.push((t1 - t0) as f64 / 1e6);
        }
        let ours = first_lines(&http, &d, "dfirst", runs).await;
        let (r, o) = (median(raw), median(ours));
        println!();
        println!(
            "submit → first line of user code in a container (median of {runs}, image {image})"
        );
        println!("  raw `docker run --rm`  {r:8.1} ms");
        println!(
            "  capstan run            {o:8.1} ms   (ratio {:.2}x; aim: ≤ 1.2x)",
            o / r
        );

        let n = 100;
        let t = Instant::now();
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(submit(&http, &d, "dnoop").await);
        }
        for id in ids {
            let j = wait_final(&http, &d, id).await;
            assert_eq!(j["state"], "succeeded", "{j}");
        }
        let total = t.elapsed().as_secs_f64();
        println!(
            "{n} trivial container jobs, max_concurrent = 4: {total:.2} s, {:.1} containers/s",
            n as f64 / total
        );
    } else {
        println!();
        println!(
            "Docker section skipped: set CAPSTAN_TEST_IMAGE to an image on the local engine (scripts/test-image)"
        );
    }

    // 5. Spark: a small PySpark job through capstan, against spark-submit in the same
    // environment (the managed `spark` one, built by the first, unmeasured run).
    if Command::new("java")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let warm = submit(&http, &d, "spark").await;
        let j = wait_final(&http, &d, warm).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        let env = std::fs::read_dir(home.join("state/envs"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("spark-"))
            })
            .expect("the managed spark environment");
        let app = home.join("projects/sample/recipes/spark.py");
        let path = format!(
            "{}:{}",
            env.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let raw = || {
            Command::new(env.join("bin/spark-submit"))
                .args(["--master", "local[*]"])
                .arg(&app)
                .env("PATH", &path)
                .env("PYSPARK_PYTHON", env.join("bin/python"))
                .output()
                .unwrap()
        };
        let (r, o) = spark_job(&http, &d, "spark", raw).await;
        println!();
        println!("a small PySpark job in local mode, submit → finished (median of {SPARK_RUNS})");
        println!("  raw `spark-submit`     {r:8.2} s");
        println!(
            "  capstan run            {o:8.2} s   (ratio {:.2}x; aim: ≤ 1.1x)",
            o / r
        );
    } else {
        println!();
        println!("Spark section skipped: no Java on this machine");
    }

    // 6. Spark in a container: the same job in local mode inside a `with_spark` image, against
    // `docker run --rm` of spark-submit on that image.
    if let Ok(image) = std::env::var("CAPSTAN_BENCH_SPARK_IMAGE") {
        let raw = || {
            Command::new("docker")
                .args(["run", "--rm", "-e", "PYSPARK_PYTHON=python3", &image, "sh", "-c"])
                .arg(
                    "printf '%s' \"$0\" > /tmp/app.py && exec /opt/spark/bin/spark-submit --master 'local[*]' /tmp/app.py",
                )
                .arg(SPARK_APP)
                .output()
                .unwrap()
        };
        let (r, o) = spark_job(&http, &d, "dspark", raw).await;
        println!();
        println!(
            "the same PySpark job in a container, submit → finished (median of {SPARK_RUNS}, image {image})"
        );
        println!("  raw `docker run --rm`  {r:8.2} s");
        println!(
            "  capstan run            {o:8.2} s   (ratio {:.2}x; aim: ≤ 1.1x)",
            o / r
        );
    } else {
        println!();
        println!(
            "Spark-in-a-container section skipped: set CAPSTAN_BENCH_SPARK_IMAGE to a with_spark image (capstan image build-base spark)"
        );
    }
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
