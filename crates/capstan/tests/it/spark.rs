//! Spark recipes on a real local Spark (the one `pyspark` from PyPI brings, with the machine's
//! Java), and the spark-submit capstan builds for Kubernetes.

use crate::support::{
    TestHome, head_json, import_csv, import_orders, pyspark_totals, run_ok, stderr, stdout, submit,
    wait_for,
};

pub(crate) fn java() -> bool {
    let ok = std::process::Command::new("java")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "Java is needed for the Spark tests"
        );
        eprintln!("skipped: no Java on this machine");
    }
    ok
}

#[test]
fn pyspark_and_spark_sql_recipes_read_a_dataset_and_write_outputs_and_oom_is_diagnosed() {
    if !java() {
        return;
    }
    let h = TestHome::new("spark-local");
    import_orders(&h);
    h.append(
        "projects/sample/project.toml",
        "\n[dataset.sql_totals]\n\n[dataset.api_totals]\n\n[dataset.cluster_totals]\n",
    );
    h.append(
        "spark-configs.toml",
        "\n[spark_config.tiny]\nmaster = \"local\"\nlocal_threads = 1\ndriver_memory = \"512Mi\"\n\
         \n[spark_config.one]\nmaster = \"local\"\nmax_concurrent = 1\n",
    );
    h.recipe(
        "ptotals",
        "pyspark",
        "py",
        &pyspark_totals("order_totals", ""),
        "inputs = [\"orders\"]\noutputs = [\"order_totals\"]\nspark_config = \"local\"",
    );
    // As a driver pod on Kubernetes does: Spark cannot see the daemon's disk, so datasets
    // travel through the data API.
    h.recipe(
        "atotals",
        "pyspark",
        "py",
        &pyspark_totals(
            "api_totals",
            "import os\ndel os.environ['CAPSTAN_SPARK_INPUTS'], os.environ['CAPSTAN_SPARK_OUTPUTS']\n",
        ),
        "inputs = [\"orders\"]\noutputs = [\"api_totals\"]",
    );
    h.recipe(
        "stotals",
        "spark_sql",
        "sql",
        "SELECT customer, SUM(amount) AS total FROM orders GROUP BY customer ORDER BY customer;\n",
        "inputs = [\"orders\"]\noutputs = [\"sql_totals\"]",
    );
    h.recipe(
        "hog",
        "pyspark",
        "py",
        "from pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\n\
         rows = spark.range(0, 60_000_000).selectExpr('repeat(cast(id as string), 8) as s').collect()\n\
         print(len(rows))\n",
        "spark_config = \"tiny\"",
    );
    h.recipe(
        "linger",
        "pyspark",
        "py",
        "import time\nfrom pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\n\
         print('session up', flush=True)\ntime.sleep(600)\n",
        "spark_config = \"one\"",
    );
    let d = h.start();
    let want = serde_json::json!([{"customer": "alice", "total": 17.75}, {"customer": "bob", "total": 3.0}]);
    for (recipe, output) in [
        ("ptotals", "order_totals"),
        ("atotals", "api_totals"),
        ("stotals", "sql_totals"),
    ] {
        run_ok(&h, recipe);
        assert_eq!(head_json(&h, output), want, "{recipe}");
    }
    // The sample's own Spark SQL recipe, as the README runs it.
    import_csv(
        &h,
        "wine",
        &std::fs::read_to_string(h.root().join("projects/sample/data/wine.csv")).unwrap(),
    );
    run_ok(&h, "wine_sql");
    let wine = head_json(&h, "wine_by_cultivar_sql");
    assert_eq!(
        (wine[0]["cultivar"].as_str(), wine[0]["wines"].as_i64()),
        (Some("class_0"), Some(59)),
        "{wine}"
    );

    // While it runs, `job show` says where its Spark UI is; cancel stops the driver's JVM.
    let id = submit(&h, "sample/linger", &[]);
    let mut shown = String::new();
    wait_for("the Spark UI in job show", 120, || {
        shown = stdout(
            &h.capstan()
                .args(["job", "show", &id.to_string()])
                .output()
                .unwrap(),
        );
        shown.contains("Spark UI     http://")
    });
    let jvm = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("capstan-{id}-sample-linger")])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    assert!(jvm(), "no Spark JVM for job {id}:\n{shown}");
    // Its Spark configuration runs one application at a time: a second run waits its turn.
    let second = submit(&h, "sample/linger", &[]);
    // A job queued after it runs (the scheduler passed the second one over) while it waits.
    let after = submit(&h, "sample/hello", &[]);
    d.wait_state(after, 60, &["succeeded"]);
    assert_eq!(d.job(second)["state"], "queued");
    let out = h
        .capstan()
        .args(["cancel", &id.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    d.wait_state(id, 60, &["cancelled"]);
    wait_for("the Spark JVM to be gone", 30, || !jvm());
    d.wait_state(second, 60, &["preparing", "starting", "running"]);
    let out = h
        .capstan()
        .args(["cancel", &second.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    d.wait_state(second, 60, &["cancelled"]);

    let run = h.capstan().args(["run", "sample/hog"]).output().unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = stderr(&run);
    assert!(
        err.contains("error: Spark ran out of memory (java.lang.OutOfMemoryError")
            && err.contains("raise driver_memory (in local mode the executors run inside the driver) of Spark configuration 'tiny'"),
        "{}",
        err.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );

    // The entrypoint of Spark base images answers a driver pod's `driver ARGS` with spark-submit in
    // client mode, and passes other commands through: run it here on the managed Spark.
    let env = std::fs::read_dir(h.root().join("state/envs"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("spark-"))
        })
        .expect("the managed spark environment");
    let spark_home = std::fs::read_dir(env.join("lib"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/pyspark"))
        .find(|p| p.is_dir())
        .expect("pyspark in the managed environment");
    let script = h.dir.path().join("spark-entrypoint.sh");
    std::fs::write(&script, capstan_images::dockerfile::SPARK_ENTRYPOINT).unwrap();
    let app = h.dir.path().join("sum.py");
    std::fs::write(
        &app,
        "from pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\n\
         print('sum', spark.range(1000000).selectExpr('sum(id)').collect()[0][0])\nspark.stop()\n",
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        env.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let entry = |args: &[&str]| {
        std::process::Command::new("bash")
            .arg(&script)
            .args(args)
            .env("SPARK_HOME", &spark_home)
            .env("SPARK_DRIVER_BIND_ADDRESS", "127.0.0.1")
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    let out = entry(&["driver", "--master", "local[1]", app.to_str().unwrap()]);
    assert!(
        out.status.success() && stdout(&out).contains("sum 499999500000"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = entry(&["sh", "-c", "echo passed through"]);
    assert_eq!(stdout(&out), "passed through\n");

    // A standalone cluster (`spark://`): a master and one worker of the managed Spark, on this
    // machine; the recipe's executor runs in the worker.
    let class = env.join("bin/spark-class");
    let daemon = |name: &str, args: &[&str]| {
        let log = std::fs::File::create(h.dir.path().join(format!("{name}.log"))).unwrap();
        Killed(
            std::process::Command::new(&class)
                .args(args)
                .env("PATH", &path)
                .env("SPARK_HOME", &spark_home)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    let _master = daemon(
        "master",
        &[
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--webui-port",
            "0",
        ],
    );
    let mut url = String::new();
    wait_for("the standalone master", 120, || {
        let log = std::fs::read_to_string(h.dir.path().join("master.log")).unwrap_or_default();
        url = log
            .lines()
            .find_map(|l| l.split("Starting Spark master at ").nth(1))
            .map(|u| u.trim().to_string())
            .unwrap_or_default();
        !url.is_empty()
    });
    let _worker = daemon(
        "worker",
        &[
            "org.apache.spark.deploy.worker.Worker",
            &url,
            "--host",
            "127.0.0.1",
            "--cores",
            "1",
            "--memory",
            "1g",
            "--webui-port",
            "0",
        ],
    );
    wait_for("the worker to register", 120, || {
        std::fs::read_to_string(h.dir.path().join("worker.log"))
            .unwrap_or_default()
            .contains("Successfully registered with master")
    });
    h.append(
        "spark-configs.toml",
        &format!(
            "\n[spark_config.cluster]\nmaster = \"standalone\"\nmaster_url = \"{url}\"\nexecutor_cores = 1\nexecutor_memory = \"512Mi\"\n"
        ),
    );
    let lib = h.root().join("projects/sample/lib/helpers");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(
        lib.join("__init__.py"),
        "def shout(s):\n    return s.upper() + '!'\n",
    )
    .unwrap();
    h.recipe(
        "ctotals",
        "pyspark",
        "py",
        "from pyspark.sql import SparkSession, functions as F\nimport capstan.spark\n\
         spark = SparkSession.builder.getOrCreate()\n\
         print('master', spark.sparkContext.master, flush=True)\n\
         orders = capstan.spark.read(spark, 'orders')\n\
         from helpers import shout\n\
         loud = F.udf(shout)\n\
         totals = orders.groupBy('customer').agg(F.sum('amount').alias('total')).orderBy('customer')\n\
         capstan.spark.write(totals.withColumn('customer', loud('customer')), 'cluster_totals')\n\
         spark.stop()\n",
        "spark_config = \"cluster\"\ninputs = [\"orders\"]\noutputs = [\"cluster_totals\"]",
    );
    let run = run_ok(&h, "ctotals");
    assert!(run.contains(&format!("master {url}")), "{run}");
    let worker = std::fs::read_to_string(h.dir.path().join("worker.log")).unwrap();
    assert!(worker.contains("Asked to launch executor"), "{worker}");
    // The UDF ran on the executor, with the project's library that capstan shipped to it.
    assert_eq!(
        head_json(&h, "cluster_totals"),
        serde_json::json!([{"customer": "ALICE!", "total": 17.75}, {"customer": "BOB!", "total": 3.0}])
    );
}

/// A child process stopped when dropped (a Spark master or worker of a test): SIGTERM, so that
/// a worker stops its executors too.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn spark_render_for_kubernetes_matches_the_configuration_and_its_pod_template_validates() {
    let h = TestHome::new("spark-render");
    let kubeconfig = h.dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://k8s.example.com:6443\n\
         contexts:\n- name: prod\n  context:\n    cluster: prod\n    user: u\ncurrent-context: prod\nusers:\n- name: u\n  user: {}\n",
    )
    .unwrap();
    let clusters = std::fs::read_to_string(h.root().join("clusters.toml")).unwrap();
    std::fs::write(
        h.root().join("clusters.toml"),
        clusters.replace(
            "context = \"prod\"\n",
            &format!(
                "context = \"prod\"\nkubeconfig = \"{}\"\n",
                kubeconfig.display()
            ),
        ),
    )
    .unwrap();
    let spark = std::fs::read_to_string(h.root().join("spark-configs.toml")).unwrap();
    std::fs::write(
        h.root().join("spark-configs.toml"),
        spark.replace(
            "allowed_groups = [\"data-engineers\"]\n",
            "allowed_groups = [\"data-engineers\"]\nservice_account = \"spark\"\nregistry = \"reg.example.com/team\"\n\
             tolerations = [{ key = \"spark\", operator = \"Exists\", effect = \"NoSchedule\" }]\n\
             [spark_config.k8s.node_selector]\n\"node.kubernetes.io/pool\" = \"spark\"\n",
        ),
    )
    .unwrap();
    h.append("projects/sample/project.toml", "\n[dataset.sql_totals]\n");
    h.recipe("stotals", "spark_sql", "sql", "SELECT 1\n", "inputs = [\"orders\"]\noutputs = [\"sql_totals\"]\nspark_config = \"k8s\"\ncluster = \"prod-k8s\"");
    let out = h
        .capstan()
        .args(["spark", "render", "sample/stotals", "--user", "admin"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let text = stdout(&out);
    // The driver runs in a pod of the configuration's namespace, in client mode.
    for needle in [
        "--master k8s://https://kubernetes.default.svc",
        "--deploy-mode client",
        "spark.kubernetes.container.image=reg.example.com/team/capstan-base-spark",
        "spark.kubernetes.namespace=capstan-spark",
        "'spark.kubernetes.driver.pod.name=$(CAPSTAN_POD_NAME)'",
        "spark.driver.memory=2048m",
        "spark.executor.memory=4096m",
        "spark.executor.cores=2",
        "spark.executor.instances=2",
        "spark.kubernetes.executor.deleteOnTermination=false",
        "spark.sql.shuffle.partitions=64",
        "/capstan/work/capstan_sql_runner.py \\\n  /capstan/work/stotals.sql",
        "in namespace capstan-spark (kubeconfig context prod), image reg.example.com/team/capstan-base-spark, \
         cpu 1, memory 2868Mi, service account spark.",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let template = text
        .split("executor-pod.yaml\n")
        .nth(1)
        .expect("a pod template");
    assert!(
        template.contains("node.kubernetes.io/pool: spark") && template.contains("key: spark"),
        "{template}"
    );
    // The driver pod and its objects, as `k8s render` shows them, pass the schema with the
    // executors' template.
    let objects = h
        .capstan()
        .args(["k8s", "render", "sample/stotals", "--user", "admin"])
        .output()
        .unwrap();
    assert_eq!(objects.status.code(), Some(0), "{}", stderr(&objects));
    let objects = stdout(&objects);
    assert!(
        objects.contains("serviceAccountName: spark")
            && objects.contains("capstan.io/spark-config: k8s")
            && objects.contains("executor-pod.yaml"),
        "{objects}"
    );
    let file = h.dir.path().join("objects.yaml");
    std::fs::write(&file, format!("{objects}---\n{template}")).unwrap();
    match std::process::Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.33.0"])
        .arg(&file)
        .output()
    {
        Ok(o) => {
            let said = format!("{}{}", stdout(&o), stderr(&o));
            assert!(o.status.success(), "{said}");
            assert_eq!(said.matches(" passed for resource ").count(), 4, "{said}");
        }
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "kubernetes-validate is not installed"
            );
            eprintln!("skipped the schema check: pip install kubernetes-validate");
        }
    }
}

#[test]
fn a_missing_input_fails_before_spark_starts_and_an_analysis_exception_names_itself() {
    let h = TestHome::new("spark-diagnoses");
    let _d = h.start();
    // The sample's `wine_sql` on a home where `wine` was never imported: refused before any
    // process starts, naming the dataset and how to get it.
    let out = h
        .capstan()
        .args(["run", "sample/wine_sql", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let diagnosis = job["diagnosis"].as_str().unwrap_or_default();
    assert!(
        diagnosis.contains("input dataset `wine` has no data yet")
            && diagnosis.contains("capstan dataset import sample/wine"),
        "{job}"
    );
    // Nothing ran: no state went past preparing, and the activity has no log.
    let states: Vec<&str> = job["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert!(
        !states.contains(&"running") && !states.contains(&"starting"),
        "{job}"
    );
    if !java() {
        return;
    }
    // A query Spark refuses: the diagnosis is Spark's exception, not its last log line.
    import_orders(&h);
    h.append("projects/sample/project.toml", "\n[dataset.nowhere]\n");
    h.recipe(
        "bad_sql",
        "spark_sql",
        "sql",
        "SELECT customer FROM no_such_table\n",
        "inputs = [\"orders\"]\noutputs = [\"nowhere\"]",
    );
    let out = h
        .capstan()
        .args(["run", "sample/bad_sql"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let diagnosis = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        diagnosis
            .contains("the Spark application failed: AnalysisException: [TABLE_OR_VIEW_NOT_FOUND]")
            && diagnosis.contains("no_such_table"),
        "{err}"
    );
    // Spark logs at WARN: its INFO chatter is in the full driver log, not the job's log.
    assert!(
        !err.lines()
            .any(|l| l.contains(" INFO ") && !l.contains(" INFO Utils:")),
        "{err}"
    );
    let show = h.capstan().args(["jobs", "--json"]).output().unwrap();
    let jobs: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let id = jobs[0]["id"].as_i64().unwrap();
    let dir = h.root().join(format!("state/jobs/{id}"));
    let driver_log = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|a| a.path().join("spark-driver.log"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no spark-driver.log under {}", dir.display()));
    let full = std::fs::read_to_string(driver_log).unwrap();
    assert!(
        full.contains(" INFO SparkContext: Running Spark version"),
        "{full}"
    );
}
