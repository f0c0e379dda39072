//! Isolation (issue 13): what a recipe and a user may reach, tried the way an attacker would.

use crate::support::{TestHome, curl, stderr, stdout, submit};

/// Imports `csv` as `project/dataset` with the daemon's local (admin) token.
fn import(h: &TestHome, target: &str, csv: &str) {
    let file = h
        .dir
        .path()
        .join(format!("{}.csv", target.replace('/', "-")));
    std::fs::write(&file, csv).unwrap();
    let out = h
        .capstan()
        .args(["dataset", "import", target])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A second project, `other`, that grants nobody anything, with a dataset of its own.
fn other_project(h: &TestHome) {
    let dir = h.root().join("projects/other/recipes");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        h.root().join("projects/other/project.toml"),
        "[project]\nname = \"Other\"\n\n[dataset.secret]\n",
    )
    .unwrap();
    std::fs::write(dir.join("r.toml"), "kind = \"shell\"\n").unwrap();
    std::fs::write(dir.join("r.sh"), "echo other\n").unwrap();
}

/// Issue 13, finding 1: a shell recipe submitted by alice read `state/daemon.json`, took the
/// daemon's local admin token, read the admin's job log, and could read `state/data-secret` and
/// another project's Parquet files.
#[test]
fn the_escalation_recipe_of_alice_reads_nothing_of_the_state_or_of_another_project() {
    let h = TestHome::new("escalate");
    other_project(&h);
    let root = h.root();
    h.recipe(
        "escalate",
        "shell",
        "sh",
        &format!(
            "H={root}\n\
             echo \"uid $(id -u)\"\n\
             for f in state/daemon.json state/data-secret state/capstan.db state/jobs/1/a0-0/log \
                      data/other/secret/data.parquet data/sample/wine/data.parquet; do\n\
               if cat \"$H/$f\" >/dev/null 2>&1; then echo \"READ $f\"; else echo \"DENIED $f\"; fi\n\
             done\n\
             for d in state state/jobs data; do\n\
               if ls \"$H/$d\" >/dev/null 2>&1; then echo \"LISTED $d\"; else echo \"DENIED $d\"; fi\n\
             done\n",
            root = root.display()
        ),
        "",
    );
    let d = h.start();
    import(&h, "other/secret", "who,what\nadmin,the crown jewels\n");
    import(&h, "sample/wine", "a,b\n1,2\n");
    // The admin's job, whose log alice's recipe goes for.
    let first = submit(&h, "sample/hello", &[]);
    d.wait_state(first, 60, &["succeeded"]);

    let run = h
        .capstan()
        .args(["run", "sample/escalate"])
        .env("CAPSTAN_TOKEN", h.token("alice"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let out = stdout(&run);
    assert!(!out.contains("uid 0\n"), "the recipe ran as root:\n{out}");
    assert!(!out.contains("READ ") && !out.contains("LISTED "), "{out}");
    for what in [
        "state/daemon.json",
        "state/data-secret",
        "state/capstan.db",
        "state/jobs/1/a0-0/log",
        "data/other/secret/data.parquet",
        "data/sample/wine/data.parquet",
        "state",
        "state/jobs",
        "data",
    ] {
        assert!(out.contains(&format!("DENIED {what}\n")), "{what}:\n{out}");
    }
}

/// Issue 13, finding 1: a recipe code file that is a symbolic link was followed (it printed the
/// daemon token into the job's diagnosis).
#[test]
fn a_code_file_linking_outside_the_project_is_refused_and_shown_nowhere() {
    let h = TestHome::new("symlink");
    let dir = h.root().join("projects/sample/recipes");
    std::fs::write(dir.join("linked.toml"), "kind = \"shell\"\n").unwrap();
    std::os::unix::fs::symlink(h.root().join("state/daemon.json"), dir.join("linked.sh")).unwrap();
    std::fs::create_dir_all(h.root().join("projects/sample/lib")).unwrap();
    std::fs::write(h.root().join("projects/sample/lib/util.py"), "X = 1\n").unwrap();
    let d = h.start();
    let run = h
        .capstan()
        .args(["run", "sample/linked"])
        .env("CAPSTAN_TOKEN", h.token("alice"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    let err = stderr(&run);
    assert!(
        err.contains("is a link to") && err.contains("outside the project's folder"),
        "{err}"
    );
    assert!(
        !err.contains(&d.token) && !stdout(&run).contains(&d.token),
        "{err}"
    );

    // The same through a link in the project's library.
    std::fs::remove_file(dir.join("linked.sh")).unwrap();
    std::fs::write(dir.join("linked.sh"), "echo fine\n").unwrap();
    std::os::unix::fs::symlink(
        h.root().join("state/data-secret"),
        h.root().join("projects/sample/lib/key.txt"),
    )
    .unwrap();
    let run = h
        .capstan()
        .args(["run", "sample/linked"])
        .env("CAPSTAN_TOKEN", h.token("alice"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("lib/key.txt is a link to"),
        "{}",
        stderr(&run)
    );
}

/// Issue 13, finding 2, and the test the issue found vacuous: alice sees and touches only what
/// her project permissions grant.
#[test]
fn project_permissions_decide_what_alice_may_run_see_and_cancel() {
    let h = TestHome::new("perms");
    other_project(&h);
    h.recipe("nap", "shell", "sh", "sleep 60\n", "");
    let d = h.start();
    let alice = format!("Authorization: Bearer {}", h.token("alice"));
    let get = |path: &str| {
        curl(&[
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            &alice,
            &format!("{}{path}", d.url),
        ])
    };
    let status = |out: &str| out.lines().last().unwrap_or("").to_string();

    // The admin's job in a project alice has no permission on: invisible to her, by id and in
    // the list, and she cannot cancel it.
    let hidden = submit(&h, "other/r", &[]);
    d.wait_state(hidden, 60, &["succeeded"]);
    let out = get(&format!("/api/v1/jobs/{hidden}"));
    assert_eq!(status(&out), "404", "{out}");
    assert!(!get("/api/v1/jobs").contains(&format!("\"id\":{hidden},")));
    // Her own job exists and is hers to see — so the 404 above is not one for anyone.
    let cli = |args: &[&str]| {
        h.capstan()
            .args(args)
            .env("CAPSTAN_TOKEN", h.token("alice"))
            .output()
            .unwrap()
    };
    let mine = cli(&["run", "sample/hello", "--detach", "--json"]);
    assert!(mine.status.success(), "{}", stderr(&mine));
    let mine: serde_json::Value = serde_json::from_slice(&mine.stdout).unwrap();
    let mine = mine["id"].as_i64().unwrap();
    let out = get(&format!("/api/v1/jobs/{mine}"));
    assert_eq!(status(&out), "200", "{out}");
    d.wait_state(mine, 60, &["succeeded"]);

    // Someone else's job in a project she may read: she sees it, but only a project admin may
    // cancel it.
    let theirs = submit(&h, "sample/nap", &[]);
    let cancel = cli(&["cancel", &theirs.to_string()]);
    assert_eq!(cancel.status.code(), Some(3), "{}", stderr(&cancel));
    assert!(
        stderr(&cancel).contains("lacks the `admin` permission on project `sample`"),
        "{}",
        stderr(&cancel)
    );
    let hidden_cancel = cli(&["cancel", &hidden.to_string()]);
    assert_eq!(
        hidden_cancel.status.code(),
        Some(1),
        "{}",
        stderr(&hidden_cancel)
    );
    assert!(
        stderr(&hidden_cancel).contains(&format!("no job {hidden}")),
        "{}",
        stderr(&hidden_cancel)
    );
    let out = h
        .capstan()
        .args(["cancel", &theirs.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Running in the other project: 403 naming the permission, exit code 3 from the CLI.
    let run = cli(&["run", "other/r"]);
    assert_eq!(run.status.code(), Some(3), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("user `alice` lacks the `run` permission on project `other`"),
        "{}",
        stderr(&run)
    );
    // Its datasets: neither read nor written, nor listed.
    import(&h, "other/secret", "who\nadmin\n");
    for path in [
        "/api/v1/projects/other/datasets",
        "/api/v1/projects/other/datasets/secret",
        "/api/v1/projects/other/datasets/secret/data",
    ] {
        let out = get(path);
        assert_eq!(status(&out), "403", "{path}: {out}");
        assert!(
            out.contains("lacks the `read` permission on project `other`"),
            "{out}"
        );
    }
    let csv = h.shared().join("mine.csv");
    std::fs::write(&csv, "who\nalice\n").unwrap();
    let import = cli(&[
        "dataset",
        "import",
        "other/secret",
        &csv.display().to_string(),
    ]);
    assert_eq!(import.status.code(), Some(3), "{}", stderr(&import));
    assert!(
        stderr(&import).contains("lacks the `write` permission on project `other`"),
        "{}",
        stderr(&import)
    );
    // Her list of datasets holds the sample's, not the other project's.
    let listed = cli(&["datasets", "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let projects: std::collections::BTreeSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["project"].as_str())
        .collect();
    assert_eq!(projects, ["sample"].into(), "{listed:#}");
    // What the sample grants her (read, run, write) she has.
    let out = get("/api/v1/projects/sample/datasets");
    assert_eq!(status(&out), "200", "{out}");
    // `config explain --user` says what she holds.
    let explain = h
        .capstan()
        .args(["config", "explain", "other/r", "--user", "alice"])
        .output()
        .unwrap();
    assert_eq!(explain.status.code(), Some(3), "{}", stderr(&explain));
    assert!(
        stdout(&explain).contains("permissions of alice on project other: none"),
        "{}",
        stdout(&explain)
    );
    let explain = h
        .capstan()
        .args([
            "config",
            "explain",
            "sample/hello",
            "--user",
            "alice",
            "--json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&explain.stdout).unwrap();
    assert_eq!(
        v["permissions"],
        serde_json::json!(["read", "run", "write"])
    );
}

/// Where the daemon cannot switch users (it is not root), local recipes are refused for all but
/// admins — unless the admin wrote `isolation = "none"`, and then they run as the daemon.
#[test]
fn a_daemon_that_is_not_root_runs_local_recipes_only_for_admins_unless_isolation_is_none() {
    if !rustix::process::geteuid().is_root() {
        crate::support::skip("root (to start a daemon as another user)");
        return;
    }
    let h = TestHome::new("not-root");
    let chown = std::process::Command::new("chown")
        .args(["-R", "nobody:"])
        .arg(h.root())
        .status()
        .unwrap();
    assert!(chown.success());
    let start = || {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_capstan"))
            .arg("--home")
            .arg(h.root())
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env_remove("CAPSTAN_HOME");
        crate::support::TestDaemon::start_command(&h.root(), cmd)
    };
    let d = start();
    let run_as = |token: Option<String>| {
        let mut cmd = h.capstan();
        cmd.args(["run", "sample/hello"]);
        if let Some(t) = token {
            cmd.env("CAPSTAN_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let alice = run_as(Some(h.token("alice")));
    assert_eq!(alice.status.code(), Some(3), "{}", stderr(&alice));
    assert!(
        stderr(&alice).contains("this daemon cannot switch users because it does not run as root"),
        "{}",
        stderr(&alice)
    );
    // The daemon's local token is an admin's: theirs runs, as the daemon's own user.
    let admin = run_as(None);
    assert_eq!(admin.status.code(), Some(0), "{}", stderr(&admin));
    drop(d);

    let config = h.root().join("capstan.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "name = \"demo\"\n",
            "name = \"demo\"\nisolation = \"none\"\n",
        ),
    )
    .unwrap();
    let _d = start();
    let alice = run_as(Some(h.token("alice")));
    assert_eq!(alice.status.code(), Some(0), "{}", stderr(&alice));
}
