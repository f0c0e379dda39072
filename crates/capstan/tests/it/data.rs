//! Datasets and the data plane: import, recipes reading and writing through the data API with
//! least-privilege tokens, atomic outputs.

use crate::support::{
    TestHome, curl, fails, head_json, import_csv, stderr, stdout, submit, wait_for,
};

const ORDERS: &str = "id,customer,amount,day\n1,alice,10.5,2026-01-01\n2,bob,3,2026-01-02\n3,alice,7.25,2026-01-03\n";

fn recipe_toml(inputs: &[&str], outputs: &[&str]) -> String {
    let list = |l: &[&str]| {
        l.iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "code_env = \"tables\"\ninputs = [{}]\noutputs = [{}]",
        list(inputs),
        list(outputs)
    )
}

/// Makes `recipe` (name, code, TOML) the one recipe of `sample` that writes `order_totals` in
/// place of `previous`: a dataset has one recipe that builds it.
fn writer(h: &TestHome, previous: &str, recipe: &(&str, String, String)) {
    let dir = h.root().join("projects/sample/recipes");
    for ext in ["toml", "py"] {
        let _ = std::fs::remove_file(dir.join(format!("{previous}.{ext}")));
    }
    h.recipe(recipe.0, "python", "py", &recipe.1, &recipe.2);
}

#[test]
fn csv_import_reports_bad_lines_and_imports_nothing() {
    let h = TestHome::new("import-bad");
    let file = h.dir.path().join("bad.csv");
    std::fs::write(&file, "id,amount\n1,2\n2,x\n3,3\n4,4\n5,5\n6,6,7\n").unwrap();
    let out = h
        .capstan()
        .args(["dataset", "import", "sample/orders"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("bad.csv:3: column `amount` holds `x`"),
        "{err}"
    );
    assert!(
        err.contains("bad.csv:7: 3 fields, where the header has 2"),
        "{err}"
    );
    assert!(
        err.contains("2 problems") && err.contains("nothing was imported"),
        "{err}"
    );
    fails(
        &h,
        &["dataset", "head", "sample/orders"],
        1,
        "has no data yet",
    );
    // With the column imported as text, the ragged line is still refused.
    let out = h
        .capstan()
        .args([
            "dataset",
            "import",
            "sample/orders",
            "--schema",
            "amount=string",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(stderr(&out).contains("1 problem in"), "{}", stderr(&out));
}

#[test]
fn recipes_read_inputs_and_write_outputs_with_least_privilege_and_atomic_commits() {
    let h = TestHome::new("data-plane");
    let imported = import_csv(&h, "orders", ORDERS);
    assert!(
        imported.contains("imported 3 rows into sample/orders"),
        "{imported}"
    );
    h.append("images.toml", "\n[code_env.tables]\nlanguage = \"python\"\npackages = [\"pandas\", \"pyarrow\"]\nbuild_for = \"none\"\n");
    h.append(
        "projects/sample/project.toml",
        "\n[dataset.secret]\n\n[dataset.typed]\n[dataset.typed.schema]\namount = \"int64\"\n",
    );
    let tokens = h.shared().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    std::fs::set_permissions(
        &tokens,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o1777),
    )
    .unwrap();
    h.recipe(
        "totals",
        "python",
        "py",
        "import capstan\n\
         orders = capstan.Dataset('orders').to_pandas(columns=['customer', 'amount'])\n\
         assert list(orders.columns) == ['customer', 'amount'], orders.columns\n\
         totals = orders.groupby('customer', as_index=False)['amount'].sum()\n\
         print('wrote', capstan.Output('order_totals').write(totals))\n",
        &recipe_toml(&["orders"], &["order_totals"]),
    );
    // Reads a dataset it did not declare.
    h.recipe(
        "snoop",
        "python",
        "py",
        "import capstan\ncapstan.Dataset('secret').to_pandas()\n",
        &recipe_toml(&["orders"], &[]),
    );
    // Writes its output, then dies before the activity can succeed. (A dataset has one writer:
    // each of these replaces the previous writer of `order_totals` when its turn comes.)
    let halfway = (
        "halfway",
        "import os, shutil, time, capstan, pandas\n\
         shutil.copy(os.environ['CAPSTAN_TOKEN_FILE'], os.environ['KEEP'])\n\
         capstan.Output('order_totals').write(pandas.DataFrame({'customer': ['mallory'], 'amount': [1.0]}))\n\
         print('written', flush=True)\n\
         time.sleep(300)\n"
            .to_string(),
        recipe_toml(&[], &["order_totals"]),
    );
    // Writes a dataset it did not declare.
    h.recipe(
        "scribble",
        "python",
        "py",
        "import capstan, pandas\ncapstan.Output('secret').write(pandas.DataFrame({'x': [1]}))\n",
        &recipe_toml(&[], &[]),
    );
    // Writes its output, then fails; and writes it, then runs past its timeout.
    let mallory = "capstan.Output('order_totals').write(pandas.DataFrame({'customer': ['mallory'], 'amount': [1.0]}))";
    let crash = (
        "crash",
        format!("import capstan, pandas\n{mallory}\nraise SystemExit(3)\n"),
        recipe_toml(&[], &["order_totals"]),
    );
    let overtime = (
        "overtime",
        format!("import time, capstan, pandas\n{mallory}\ntime.sleep(300)\n"),
        format!("{}\ntimeout = \"3s\"", recipe_toml(&[], &["order_totals"])),
    );
    // Waits for the test (through a daemon restart), then writes its output with its token.
    let patient = (
        "patient",
        "import os, time, capstan, pandas\n\
         print('waiting', flush=True)\n\
         while not os.path.exists(os.environ['RELEASE']): time.sleep(0.05)\n\
         capstan.Output('order_totals').write(pandas.DataFrame({'customer': ['carol'], 'amount': [2.0]}))\n"
            .to_string(),
        recipe_toml(&[], &["order_totals"]),
    );
    // Writes a float where the dataset declares integers.
    h.recipe(
        "mistyped",
        "python",
        "py",
        "import capstan, pandas\ncapstan.Output('typed').write(pandas.DataFrame({'amount': [1.5]}))\n",
        &recipe_toml(&[], &["typed"]),
    );
    let env = h
        .capstan()
        .args(["env", "build", "tables"])
        .output()
        .unwrap();
    assert_eq!(env.status.code(), Some(0), "{}", stderr(&env));
    let d = h.start();

    // The pipeline, and the rows it read and wrote.
    let run = h.capstan().args(["run", "sample/totals"]).output().unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&run),
        stderr(&run)
    );
    assert!(
        stderr(&run).contains("read orders (3 rows); wrote order_totals (2 rows)"),
        "{}",
        stderr(&run)
    );
    let head = h
        .capstan()
        .args(["dataset", "head", "sample/order_totals", "--json"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&head.stdout).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([{"customer": "alice", "amount": 17.75}, {"customer": "bob", "amount": 3.0}])
    );

    // Least privilege: an undeclared read is 403, and the job says so.
    let run = h.capstan().args(["run", "sample/snoop"]).output().unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = stderr(&run);
    assert!(
        err.contains("PermissionError: recipe `sample/snoop` may not read dataset `sample/secret`: it declares inputs `orders`"),
        "{err}"
    );

    // Killed after writing: the previous output stays, whole.
    let keep = h.shared().join("kept-token");
    writer(&h, "totals", &halfway);
    let id = submit(
        &h,
        "sample/halfway",
        &["--env", &format!("KEEP={}", keep.display())],
    );
    let log = d.wait_state(id, 60, &["running"])["activities"][0]["log"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the output to be written", 60, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("written"))
    });
    let token = std::fs::read_to_string(&keep).unwrap();
    // While it runs, its token reaches its outputs only.
    let jobs = curl(&[
        "-sS",
        "-w",
        "\n%{http_code}",
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{}/api/v1/jobs", d.url),
    ]);
    assert!(jobs.ends_with("403"), "{jobs}");
    let out = h
        .capstan()
        .args(["cancel", &id.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = head_json(&h, "order_totals");
    assert_eq!(
        after, rows,
        "a cancelled activity's output replaced the previous one"
    );
    // Its token died with it.
    let read = curl(&[
        "-sS",
        "-w",
        "\n%{http_code}",
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!(
            "{}/api/v1/projects/sample/datasets/order_totals/data?format=csv",
            d.url
        ),
    ]);
    assert!(
        read.ends_with("401") && read.contains("token expired"),
        "{read}"
    );
    // And it never shows in the job's record or its log.
    let show = h
        .capstan()
        .args(["job", "show", &id.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(!stdout(&show).contains(token.trim()));
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains(token.trim())
    );

    // An undeclared write is 403 too.
    let run = h
        .capstan()
        .args(["run", "sample/scribble"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains("may not write dataset `sample/secret`: it declares outputs none"),
        "{}",
        stderr(&run)
    );
    // Failed or timed out after writing: the previous output stays, whole.
    for (previous, recipe, state) in [
        ("halfway", &crash, "failed"),
        ("crash", &overtime, "timed_out"),
    ] {
        writer(&h, previous, recipe);
        let id = submit(&h, &format!("sample/{}", recipe.0), &[]);
        let job = d.wait_state(id, 120, &["succeeded", "failed", "cancelled", "timed_out"]);
        assert_eq!(job["state"], state, "{job:#}");
        let after = head_json(&h, "order_totals");
        assert_eq!(
            after, rows,
            "a {state} activity's output replaced the previous one"
        );
    }

    // A write that contradicts the declared schema is refused with the column.
    fails(
        &h,
        &["run", "sample/mistyped"],
        1,
        "column `amount`: declared as int64, written as float64",
    );

    // Users read datasets through the API too, as CSV for tools without Arrow.
    let csv = curl(&[
        "-sS",
        "-H",
        &format!("Authorization: Bearer {}", d.token),
        &format!(
            "{}/api/v1/projects/sample/datasets/orders/data?format=csv&columns=customer,amount&limit=2",
            d.url
        ),
    ]);
    assert_eq!(csv, "customer,amount\nalice,10.5\nbob,3.0\n");
    // A projection of the stored row groups names an unknown column as any read does.
    let refused = curl(&[
        "-sS",
        "-H",
        &format!("Authorization: Bearer {}", d.token),
        &format!(
            "{}/api/v1/projects/sample/datasets/orders/data?format=parquet-stream&columns=customer,amont",
            d.url
        ),
    ]);
    assert!(
        refused.contains(
            "unknown column `amont` in `sample/orders` (columns: id, customer, amount, day)"
        ),
        "{refused}"
    );

    // An activity's token outlives a daemon restart: the recipe writes with it afterwards.
    let release = h.shared().join("release");
    writer(&h, "overtime", &patient);
    let id = submit(
        &h,
        "sample/patient",
        &["--env", &format!("RELEASE={}", release.display())],
    );
    let log = d.wait_state(id, 60, &["running"])["activities"][0]["log"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the recipe to wait", 60, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("waiting"))
    });
    let bind = d.url.trim_start_matches("http://").to_string();
    d.kill9();
    let d = h.start_on(&bind);
    std::fs::write(&release, "").unwrap();
    let job = d.wait_state(id, 60, &["succeeded", "failed", "cancelled", "timed_out"]);
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let now = head_json(&h, "order_totals");
    assert_eq!(
        now,
        serde_json::json!([{"customer": "carol", "amount": 2.0}])
    );
}

/// The CSV import's limits come from `[import]` in capstan.toml, and the refusal names the one
/// that was reached; the previous version stays.
#[test]
fn csv_import_limits_come_from_the_home_and_are_named() {
    let h = TestHome::new("import-limits");
    import_csv(&h, "orders", "a,b\n1,2\n");
    h.append(
        "capstan.toml",
        "\n[import]\nmax_columns = 2\nmax_line = \"16\"\n",
    );
    let wide = h.dir.path().join("wide.csv");
    std::fs::write(&wide, "a,b,c\n1,2,3\n").unwrap();
    fails(
        &h,
        &[
            "dataset",
            "import",
            "sample/orders",
            &wide.display().to_string(),
        ],
        1,
        "has 3 columns, more than the maximum of 2 (csv import limit `max_columns`)",
    );
    let long = h.dir.path().join("long.csv");
    std::fs::write(&long, "a,b\n1,22222222222222222222\n").unwrap();
    fails(
        &h,
        &[
            "dataset",
            "import",
            "sample/orders",
            &long.display().to_string(),
        ],
        1,
        "csv import limit `max_line_bytes`",
    );
    assert_eq!(
        head_json(&h, "orders"),
        serde_json::json!([{"a": 1, "b": 2}])
    );
}
