//! Web UI benchmark: how long the daemon takes to serve the jobs list page (`/ui/jobs`, 50 jobs
//! a page, rendered HTML) with 100,000 jobs in its state database, for the list's usual asks —
//! the newest page, a page deep in the history, a state filter, a user's view filtered by
//! project — against the raw engine: the same page's SQL run directly on the same SQLite file
//! (rusqlite, no HTTP, no template), measured in the same run.
//!
//! Run: `cargo bench -p capstan --bench ui` (env `BENCH_RUNS`, requests per case, default 300).
//! Times are taken by the client over loopback, so they include HTTP: an upper bound of the
//! server's own time.

use std::time::Instant;

mod common;
use common::{capstan, start};

const JOBS: i64 = 100_000;

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// 100,000 finished jobs of two users over two projects and three configurations, in one
/// transaction (as years of an instance's history would leave them).
fn seed(db: &std::path::Path) {
    // The schema first, as the daemon makes it.
    drop(capstan_store::Store::open(db).unwrap());
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO jobs (project, recipe, user, request, resolution, exec_config, kind, state, created_at, started_at, finished_at, exit_code, diagnosis, io)
                 VALUES (?1, ?2, ?3, '{}', '{}', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .unwrap();
        let t0: i64 = 1_790_000_000_000;
        for i in 0..JOBS {
            let failed = i % 10 == 0;
            let (config, kind) = match i % 3 {
                0 => ("local", "local"),
                1 => ("docker-small", "docker"),
                _ => ("k8s-medium", "kubernetes"),
            };
            let created = t0 + i * 30_000;
            insert
                .execute(rusqlite::params![
                    if i % 4 == 0 { "other" } else { "sample" },
                    ["wine_stats", "wine_sql", "hello", "wine_model"][(i % 4) as usize],
                    if i % 2 == 0 { "alice" } else { "admin" },
                    config,
                    kind,
                    if failed { "failed" } else { "succeeded" },
                    created,
                    created + 1_000,
                    created + 4_500 + (i % 7) * 1_000,
                    if failed { 1 } else { 0 },
                    failed
                        .then_some("the recipe raised KeyError: 'alcohol' (wine_stats.py, line 4)"),
                    r#"{"read":{"wine":178},"written":{"wine_by_cultivar":3}}"#,
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// The raw side: the SQL the page needs, run directly (the same columns, filters and order).
fn raw_page(conn: &rusqlite::Connection, filter: &str) -> f64 {
    let t = Instant::now();
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT id, project, recipe, user, request, resolution, exec_config, cluster, kind, state, created_at, started_at, finished_at, exit_code, diagnosis, peak_memory_bytes, cpu_time_ms, io, build
             FROM jobs WHERE 1 = 1 {filter} ORDER BY id DESC LIMIT 51"
        ))
        .unwrap();
    let n = stmt.query_map([], |r| r.get::<_, i64>(0)).unwrap().count();
    assert!(n > 0, "no rows for {filter}");
    t.elapsed().as_secs_f64()
}

async fn session(http: &reqwest::Client, url: &str, token: &str) -> String {
    let r = http
        .post(format!("{url}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&next=/ui/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "sign-in refused");
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = std::env::temp_dir().join(format!("capstan-bench-ui-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let home = dir.join("h");
    let init = capstan().arg("init").arg(&home).output().unwrap();
    assert!(init.status.success());
    let alice = String::from_utf8_lossy(&init.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("alice ")
                .map(|t| t.trim().to_string())
        })
        .expect("init prints alice's token");
    std::fs::create_dir_all(home.join("state")).unwrap();
    let db = home.join("state/capstan.db");
    let t = Instant::now();
    seed(&db);
    println!("seeded {JOBS} jobs in {:.1} s", t.elapsed().as_secs_f64());
    let d = start(&home);
    let raw = rusqlite::Connection::open(&db).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cases: [(&str, &str, bool, &str); 4] = [
        ("newest page", "/ui/jobs", true, ""),
        (
            "page 1,000 (before=50000)",
            "/ui/jobs?before=50000",
            true,
            "AND id < 50000",
        ),
        (
            "failed jobs",
            "/ui/jobs?state=failed",
            true,
            "AND state = 'failed'",
        ),
        (
            "alice, project sample",
            "/ui/jobs?project=sample",
            false,
            "AND (user = 'alice' OR project = 'sample') AND project = 'sample'",
        ),
    ];
    println!("GET /ui/jobs with {JOBS} jobs (50 a page), {runs} requests each");
    rt.block_on(async {
        let admin_cookie = session(&http, &d.url, &d.token).await;
        let alice_cookie = session(&http, &d.url, &alice).await;
        for (what, path, admin, filter) in cases {
            let cookie = if admin { &admin_cookie } else { &alice_cookie };
            let mut ours = Vec::with_capacity(runs);
            let mut bare = Vec::with_capacity(runs);
            for i in 0..runs + 20 {
                let t = Instant::now();
                let r = http
                    .get(format!("{}{path}", d.url))
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{path}");
                let body = r.text().await.unwrap();
                let took = t.elapsed().as_secs_f64();
                assert!(body.contains("id=\"jobs\""), "{path}: no list");
                let sql = raw_page(&raw, filter);
                // The first 20 warm both sides' caches.
                if i >= 20 {
                    ours.push(took);
                    bare.push(sql);
                }
            }
            let (p50, p99) = (percentile(ours.clone(), 0.5), percentile(ours, 0.99));
            let (r50, r99) = (percentile(bare.clone(), 0.5), percentile(bare, 0.99));
            println!("  {what}");
            println!(
                "    raw: the page's SQL on the same database         p50 {:7.2} ms  p99 {:7.2} ms",
                r50 * 1e3,
                r99 * 1e3
            );
            println!(
                "    capstan: GET {path:<38} p50 {:7.2} ms  p99 {:7.2} ms   (p99 ratio {:.1}x; goal p99 < 50 ms)",
                p50 * 1e3,
                p99 * 1e3,
                p99 / r99
            );
        }
    });
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
