//! Data plane benchmark: 10 million rows (int, float, string, timestamp) read into pandas through
//! the data API from inside a Docker container, against reading the same Parquet file directly
//! in the same container; then written back through the API, against writing Parquet directly.
//!
//! Run: `CAPSTAN_TEST_IMAGE=… cargo bench -p capstan --bench data` (env `BENCH_ROWS`, default
//! 10,000,000). It builds (or finds) a base image and a code environment with pandas and pyarrow.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_data::DatasetStore;
use capstan_data::arrow::array::{
    ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use capstan_data::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use capstan_data::arrow::record_batch::RecordBatch;

fn capstan(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_capstan"));
    c.arg("--home").arg(home);
    c
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes the benchmark dataset straight into the store.
fn generate(home: &Path, rows: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("price", DataType::Float64, false),
        Field::new("customer", DataType::Utf8, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
    ]));
    let store = capstan_data::ParquetStore::new(home);
    let mut w = store
        .stage("bench", "big", "generate", schema.clone())
        .unwrap();
    let names: Vec<String> = (0..1000).map(|i| format!("customer-{i:04}")).collect();
    let chunk = 1 << 20;
    let mut start = 0;
    while start < rows {
        let n = chunk.min(rows - start);
        let ids: Vec<i64> = (start as i64..(start + n) as i64).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| (*i % 10_000) as f64 * 0.01),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| names[(*i % 1000) as usize].as_str()),
            )),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                ids.iter().map(|i| 1_700_000_000_000_000 + i * 1_000_000),
            )),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), columns).unwrap())
            .unwrap();
        start += n;
    }
    w.finish().unwrap();
    let generated = capstan_data::Provenance {
        written_by: capstan_data::WrittenBy::Import {
            user: "bench".into(),
            file: None,
        },
        inputs: Default::default(),
        definition: Default::default(),
    };
    store
        .commit("bench", "big", "generate", &generated)
        .unwrap();
}

const RECIPE: &str = r#"
import os, subprocess, sys, time, statistics, capstan, pandas

# Each read in a fresh process, as a recipe reads its input, seven of each in rotating order:
# in one process, whichever read follows another pays for memory the other gave back, which
# is no property of either path. Both the fastest and the median are kept: on a virtual
# machine that hands memory back to its host, a process's first touch of fresh memory costs
# several times a decode, now and then, to whichever read runs; the fastest run of each is
# the one that paid least for it.
READ = """
import os, sys, time
import capstan, pandas, pyarrow.parquet
which = sys.argv[1]
t = time.perf_counter()
if which == "direct":
    df = pandas.read_parquet("/bench/data.parquet")
elif which == "api":
    df = capstan.Dataset("big").to_pandas()
else:
    # With a projection (of every column: the same work): only those columns' chunks.
    df = capstan.Dataset("big").to_pandas(columns=["id", "price", "customer", "at"])
print(time.perf_counter() - t, len(df))
"""
reads = {"api": [], "direct": [], "projected": []}
order = list(reads)
for i in range(7):
    for name in order[i % 3:] + order[:i % 3]:
        out = subprocess.run([sys.executable, "-c", READ, name], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        secs, rows = out.stdout.split()
        reads[name].append(float(secs))
df = capstan.Dataset("big").to_pandas()
assert len(df) == int(rows)
mb = df.memory_usage(deep=True).sum() / 1e6
t2 = time.perf_counter()
capstan.Output("copy").write(df)
t3 = time.perf_counter()
df.to_parquet("/tmp/direct.parquet")
t4 = time.perf_counter()
med = statistics.median
print(f"RESULT rows={len(df)} mb={mb:.1f} api_read={med(reads['api']):.3f} projected_read={med(reads['projected']):.3f} direct_read={med(reads['direct']):.3f} api_read_min={min(reads['api']):.3f} projected_read_min={min(reads['projected']):.3f} direct_read_min={min(reads['direct']):.3f} api_write={t3-t2:.3f} direct_write={t4-t3:.3f}")
"#;

fn main() {
    let image = std::env::var("CAPSTAN_TEST_IMAGE").unwrap_or_default();
    if image.is_empty() {
        println!(
            "skipped: set CAPSTAN_TEST_IMAGE (scripts/test-image) so a Docker engine and debootstrap are here"
        );
        return;
    }
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = std::env::temp_dir().join(format!("capstan-bench-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let home = dir.join("home");
    run(Command::new(env!("CARGO_BIN_EXE_capstan"))
        .arg("init")
        .arg(&home));
    // Only the benchmark's own project and configurations: not the sample's.
    std::fs::remove_dir_all(home.join("projects/sample")).unwrap();
    std::fs::write(home.join("spark-configs.toml"), "").unwrap();
    std::fs::create_dir_all(home.join("projects/bench/recipes")).unwrap();
    std::fs::write(
        home.join("projects/bench/project.toml"),
        "[dataset.big]\n\n[dataset.copy]\n",
    )
    .unwrap();
    std::fs::write(
        home.join("exec-configs.toml"),
        format!(
            "[exec_config.local]\nkind = \"local\"\n\n[exec_config.box]\nkind = \"docker\"\nbase_image = \"default\"\nmemory_limit = \"12Gi\"\n\
             [exec_config.box.docker]\nvolumes = [\"{}:/bench:ro\"]\n",
            home.join("data/bench/big").display()
        ),
    )
    .unwrap();
    std::fs::write(
        home.join("images.toml"),
        "[base_image.default]\n\n[code_env.tables]\nlanguage = \"python\"\npackages = [\"pandas\", \"pyarrow\"]\nbuild_for = [\"box\"]\n",
    )
    .unwrap();
    std::fs::write(
        home.join("projects/bench/recipes/roundtrip.toml"),
        "kind = \"python\"\nexec_config = \"box\"\ncode_env = \"tables\"\ninputs = [\"big\"]\noutputs = [\"copy\"]\n",
    )
    .unwrap();
    std::fs::write(home.join("projects/bench/recipes/roundtrip.py"), RECIPE).unwrap();
    let t = Instant::now();
    generate(&home, rows);
    let size = std::fs::metadata(home.join("data/bench/big/data.parquet"))
        .unwrap()
        .len();
    eprintln!(
        "generated {rows} rows ({:.1} MB of Parquet) in {:.1}s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    run(capstan(&home)
        .args(["image", "build-base", "default", "--no-push"])
        .env("CAPSTAN_CACHE", "/var/cache/capstan"));
    run(capstan(&home).args(["env", "build", "tables", "--no-push"]));

    let mut daemon = capstan(&home)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("CAPSTAN_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !home.join("state/daemon.json").exists() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = capstan(&home)
        .args(["run", "bench/roundtrip"])
        .output()
        .unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(line) = text.lines().find(|l| l.starts_with("RESULT")) else {
        panic!(
            "the benchmark recipe failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let get = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let mb = get("mb");
    println!(
        "{rows} rows (int, float, string, timestamp; {mb:.0} MB in pandas), in a Docker container; each read in a fresh process, 7 of each: the fastest (the median)"
    );
    for (what, api, direct) in [
        ("read", "api_read", "direct_read"),
        ("read*", "projected_read", "direct_read"),
    ] {
        let (api_min, direct_min) = (get(&format!("{api}_min")), get(&format!("{direct}_min")));
        let (api, direct) = (get(api), get(direct));
        println!(
            "  {what:<5}  data API {api_min:5.2} s ({api:5.2})   direct Parquet {direct_min:5.2} s ({direct:5.2})   ratio {:.2} ({:.2}) of direct throughput (aim ≥ 0.9)",
            direct_min / api_min,
            direct / api
        );
    }
    let (api, direct) = (get("api_write"), get("direct_write"));
    println!(
        "  write  data API {api:5.2} s ({:4.0} MB/s)   direct Parquet {direct:5.2} s ({:4.0} MB/s)   ratio {:.2} of direct throughput (one run)",
        mb / api,
        mb / direct,
        direct / api
    );
    println!(
        "  (read: the stored Parquet row groups streamed, each decoded while the next arrives; read*: the same with `columns`, only those columns' chunks)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
