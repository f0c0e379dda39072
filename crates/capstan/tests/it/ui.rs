//! The web UI in a real browser: Debian's Chromium, headless, driven over WebDriver by Debian's
//! chromedriver (both installed by `scripts/test`), against a daemon of a fresh home. What a
//! person does: sign in with a token, run a recipe from its project's page and watch its log
//! arrive while it runs, read a failed job's diagnosis, cancel a job, and not see another
//! user's job, by list or by URL. Screenshots are kept as the test's artefacts
//! (`target/tmp/ui-screenshots/`; also in `CAPSTAN_UI_SCREENSHOTS` when set, which is how the
//! README's pictures are made).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::support::{TestHome, skip};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_driver() -> Driver {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let driver = Driver { child, url };
    crate::support::wait_for("chromedriver to listen", 30, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    driver
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let args = [
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--no-first-run".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1280,900".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), "chrome".into());
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"binary": CHROMIUM, "args": args}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// What the page says, for a failure's message.
async fn page_text(c: &Client) -> String {
    match c.find(Locator::Css("body")).await {
        Ok(b) => b.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits, polling the page, until `css` matches an element whose text contains `needle`: its
/// text. Fails with the page's text after `secs`.
async fn wait_text(c: &Client, css: &str, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && t.contains(needle)
        {
            return t;
        }
        if Instant::now() > deadline {
            let page = page_text(c).await;
            panic!("no `{needle}` in `{css}` after {secs}s; the page says:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn screenshots() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots")];
    if let Ok(d) = std::env::var("CAPSTAN_UI_SCREENSHOTS") {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

async fn shoot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    for dir in screenshots() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    }
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/")).await.unwrap();
    // Not signed in: the sign-in page, which comes back to where the person was going.
    let form = c.find(Locator::Css("#token")).await.unwrap();
    form.send_keys(token).await.unwrap();
    c.find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#me"))
        .await
        .unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// The id of the job whose page the browser goes to (a form's POST answers with a redirect
/// there): waits for the page.
async fn job_id(c: &Client) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = c.current_url().await.unwrap();
        if let Some(id) = url
            .path()
            .strip_prefix("/ui/jobs/")
            .and_then(|id| id.parse().ok())
            && c.find(Locator::Css("#log")).await.is_ok()
        {
            return id;
        }
        if Instant::now() > deadline {
            let page = page_text(c).await;
            panic!("not a job page: {url}; it says:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_person_runs_watches_diagnoses_and_cancels_jobs_in_the_web_ui() {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        skip("Debian's chromium and chromium-driver (scripts/test installs them)");
        return;
    }
    let h = TestHome::new("ui");
    let shared = h.shared();
    let release = shared.join("release");
    // A recipe that prints, then waits for the test to have seen its first lines in the
    // browser: proof that the log arrives while the job runs, without timing anything.
    h.recipe(
        "clean_wine",
        "python",
        "py",
        &format!(
            "import os, time\n\
             print('\\x1b[1;32mloading\\x1b[0m wine: 178 rows', flush=True)\n\
             print('step 1: dropping rows without alcohol', flush=True)\n\
             deadline = time.time() + 120\n\
             while not os.path.exists({release:?}) and time.time() < deadline:\n    time.sleep(0.05)\n\
             print('step 2: done', flush=True)\n",
            release = release.display().to_string()
        ),
        "",
    );
    h.recipe(
        "broken",
        "python",
        "py",
        "row = {'Alcohol': 14.2}\nprint('reading the first row', flush=True)\nprint(row['alcohol'])\n",
        "",
    );
    h.recipe(
        "forever",
        "python",
        "py",
        "import time\nprint('working', flush=True)\nwhile True:\n    time.sleep(0.2)\n",
        "",
    );
    // bob: a user of the instance with no rights on the project.
    let bob = "cap_bob_ui_test_token_0123456789";
    h.append(
        "users.toml",
        &format!(
            "\n[user.bob]\n\n[[user.bob.tokens]]\nname = \"ui\"\nsha256 = \"{}\"\n",
            capstan_core::token::hash_token(bob)
        ),
    );
    crate::support::import_orders(&h);
    // A Docker configuration on the test image, for the cluster test's button.
    let image = crate::docker::image();
    if let Some(image) = &image {
        h.append(
            "exec-configs.toml",
            &format!("\n[exec_config.small]\nkind = \"docker\"\nimage = \"{image}\"\n"),
        );
    }
    let d = h.start();
    let base = d.url.clone();
    let alice = h.token("alice");
    let driver = start_driver();
    let profile = h.dir.path().join("chromium-profile");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = browser(&driver, &profile).await;
        sign_in(&c, &base, &alice).await;

        // The project's flow, and its recipes' buttons.
        c.goto(&format!("{base}/ui/projects/sample")).await.unwrap();
        c.wait()
            .for_element(Locator::Css("svg.flow"))
            .await
            .unwrap();
        shoot(&c, "project-flow").await;

        // Run from the page: the job's page, its log arriving line by line while it runs.
        click(&c, "#run-clean_wine").await;
        let clean = job_id(&c).await;
        let log = wait_text(&c, "#log", "step 1: dropping rows", 120).await;
        assert!(log.contains("loading wine: 178 rows"), "{log}");
        assert!(!log.contains("step 2"), "{log}");
        wait_text(&c, "#job-state", "running", 60).await;
        // The colours the recipe printed are colours on the page.
        let green = c
            .find(Locator::Css("#log .af2.ab"))
            .await
            .expect("the recipe's green, bold `loading`");
        assert_eq!(green.text().await.unwrap(), "loading");
        shoot(&c, "job-live-log").await;
        std::fs::write(&release, "").unwrap();
        wait_text(&c, "#log", "step 2: done", 60).await;
        wait_text(&c, "#job-state", "succeeded", 60).await;
        let facts = wait_text(&c, ".facts", "Took", 10).await;
        assert!(facts.contains("alice"), "{facts}");

        // A failing recipe: its job page leads with the diagnosis.
        c.goto(&format!("{base}/ui/projects/sample")).await.unwrap();
        click(&c, "#run-broken").await;
        let broken = job_id(&c).await;
        wait_text(&c, "#job-state", "failed", 120).await;
        let why = wait_text(&c, "#diagnosis", "KeyError", 30).await;
        assert!(why.contains("'alcohol'"), "{why}");
        // Its whole log, standard error (the traceback) included, once the stream has ended.
        let log = wait_text(&c, "#log", "Traceback", 30).await;
        assert!(log.contains("reading the first row"), "{log}");
        c.wait()
            .for_element(Locator::Css("#log[data-ended]"))
            .await
            .unwrap();
        shoot(&c, "job-failed").await;

        // Cancel from the page: the job ends cancelled, its process gone.
        c.goto(&format!("{base}/ui/projects/sample")).await.unwrap();
        click(&c, "#run-forever").await;
        let forever = job_id(&c).await;
        wait_text(&c, "#log", "working", 120).await;
        wait_text(&c, "#job-state", "running", 60).await;
        c.goto(&format!("{base}/ui/")).await.unwrap();
        let active = wait_text(&c, "#active", "forever", 30).await;
        assert!(active.contains("running"), "{active}");
        shoot(&c, "overview").await;
        c.goto(&format!("{base}/ui/jobs/{forever}")).await.unwrap();
        click(&c, "#cancel").await;
        c.accept_alert().await.unwrap();
        wait_text(&c, "#job-state", "cancelled", 60).await;
        let job = d.job(forever);
        assert_eq!(job["state"], "cancelled", "{job}");

        // The list, filtered in its URL.
        c.goto(&format!("{base}/ui/jobs?state=failed"))
            .await
            .unwrap();
        let list = wait_text(&c, "#jobs", "broken", 30).await;
        assert!(!list.contains("clean_wine"), "{list}");

        // A dataset's page: its rows, schema and first rows; reached from the project's page.
        c.goto(&format!("{base}/ui/projects/sample")).await.unwrap();
        click(&c, "#dataset-orders a").await;
        let rows = wait_text(&c, "#rows", "3", 30).await;
        assert_eq!(rows, "3");
        let schema = wait_text(&c, "#schema", "amount", 10).await;
        assert!(schema.contains("customer"), "{schema}");
        let preview = wait_text(&c, "#preview", "alice", 10).await;
        assert!(preview.contains("7.25"), "{preview}");
        shoot(&c, "dataset").await;

        // bob may not see alice's jobs: not in the list, and not by their URL.
        click(&c, "form[action='/ui/logout'] button").await;
        c.wait().for_element(Locator::Css("#token")).await.unwrap();
        sign_in(&c, &base, bob).await;
        c.goto(&format!("{base}/ui/jobs")).await.unwrap();
        wait_text(&c, "#results", "No job matches", 30).await;
        for id in [clean, broken, forever] {
            c.goto(&format!("{base}/ui/jobs/{id}")).await.unwrap();
            let page = wait_text(&c, "main", "404", 30).await;
            assert!(page.contains(&format!("no job {id}")), "{page}");
        }
        // Nor reach its project.
        c.goto(&format!("{base}/ui/projects/sample")).await.unwrap();
        wait_text(&c, "main", "403", 30).await;
        // No cluster test button for him, nor the test's page.
        c.goto(&format!("{base}/ui/configs")).await.unwrap();
        wait_text(&c, "main", "Clusters", 30).await;
        assert!(c.find(Locator::Css("#test-local-docker")).await.is_err());

        // An admin tests the Docker cluster from its button: the steps appear as they run.
        if image.is_some() {
            click(&c, "form[action='/ui/logout'] button").await;
            c.wait().for_element(Locator::Css("#token")).await.unwrap();
            sign_in(&c, &base, &d.token).await;
            c.goto(&format!("{base}/ui/configs#cluster-local-docker"))
                .await
                .unwrap();
            click(&c, "#test-with-local-docker option[value='small']").await;
            click(&c, "#test-local-docker").await;
            wait_text(&c, "#steps", "engine reachable", 30).await;
            let state = wait_text(&c, "#test-state", "passed", 120).await;
            assert_eq!(state, "passed");
            let steps = wait_text(&c, "#steps", "cleanup", 10).await;
            assert!(steps.contains("callback to this machine"), "{steps}");
            shoot(&c, "cluster-test").await;
            assert!(
                crate::docker::containers(None, &h, "").is_empty(),
                "the test container was left behind"
            );
        }
        c.close().await.unwrap();
    });
    drop(d);
}
