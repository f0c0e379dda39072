//! Base images and code environments, built for real: Debian roots by debootstrap, builds on the
//! local engine, pushes to the registry `scripts/test` runs on 127.0.0.1:5000.

use std::process::Command;

use crate::support::{
    TestHome, head_json, import_orders, pyspark_totals, stderr, stdout, wait_for,
};

fn ready() -> bool {
    let ok = std::env::var("CAPSTAN_TEST_IMAGE").is_ok_and(|i| !i.is_empty())
        && Command::new("sh")
            .args(["-c", "command -v debootstrap"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        crate::support::skip("the Docker engine and debootstrap that scripts/test provides");
    }
    ok
}

/// A home whose configurations are all buildable here (the sample's Kubernetes one pushes to a
/// registry that does not exist), with extra TOML for exec configs and images.
fn home(label: &str, exec_configs: &str, images: &str) -> TestHome {
    home_with(label, exec_configs, images, |_| {})
}

fn home_with(
    label: &str,
    exec_configs: &str,
    images: &str,
    prepare: impl FnOnce(&TestHome),
) -> TestHome {
    let h = TestHome::new(label);
    // The sample's container recipes name configurations these tests replace.
    for f in ["wine_stats.toml", "wine_stats_r.toml"] {
        std::fs::remove_file(h.root().join("projects/sample/recipes").join(f)).unwrap();
    }
    // The sample's ML recipes need its `ml` code environment, which these images replace
    // unless they define one.
    if !images.contains("[code_env.ml]") {
        for f in ["wine_model.toml", "wine_scored.toml", "wine_eval.toml"] {
            std::fs::remove_file(h.root().join("projects/sample/recipes").join(f)).unwrap();
        }
    }
    prepare(&h);
    std::fs::write(
        h.root().join("exec-configs.toml"),
        format!("[exec_config.local]\nkind = \"local\"\n\n{exec_configs}"),
    )
    .unwrap();
    // A label of its own makes each test's base image distinct: tests run at once on one
    // engine, and one of them removes its images.
    std::fs::write(
        h.root().join("images.toml"),
        format!(
            "[base_image.default]\ndockerfile_append = \"LABEL capstan.test={label}\"\n\n{images}"
        ),
    )
    .unwrap();
    // The sample's Kubernetes Spark configuration names a base image these homes replace.
    let spark = std::fs::read_to_string(h.root().join("spark-configs.toml")).unwrap();
    std::fs::write(
        h.root().join("spark-configs.toml"),
        spark.replace("base_image = \"spark\"", "image = \"spark-on-k8s:test\""),
    )
    .unwrap();
    let check = h.capstan().arg("check").output().unwrap();
    assert!(check.status.success(), "{}", stdout(&check));
    h
}

fn ok(h: &TestHome, args: &[&str]) -> String {
    let out = h.capstan().args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "capstan {args:?}\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn a_code_env_with_pandas_and_scikit_learn_runs_in_its_image_and_rebuilds_only_what_changed() {
    if !ready() {
        return;
    }
    let h = home(
        "images-env",
        "[exec_config.small]\nkind = \"docker\"\nbase_image = \"default\"\nmemory_limit = \"1Gi\"\n",
        "[code_env.ml]\nlanguage = \"python\"\npackages = [\"pandas\", \"scikit-learn\"]\nbuild_for = [\"small\"]\n",
    );
    let out = ok(&h, &["image", "build-base", "default"]);
    assert!(out.contains("base image default:"), "{out}");
    let out = ok(&h, &["env", "build", "ml"]);
    assert!(
        out.contains("ml for small: built capstan-env-ml-small:"),
        "{out}"
    );
    h.recipe(
        "fit",
        "python",
        "py",
        "import pandas, sklearn, capstan\nfrom sklearn.linear_model import LinearRegression\n\
         df = pandas.DataFrame({'x': [1, 2, 3], 'y': [3, 5, 7]})\n\
         m = LinearRegression().fit(df[['x']], df['y'])\n\
         print('slope', round(float(m.coef_[0]), 2), 'recipe', capstan.context()['recipe'])\n",
        "exec_config = \"small\"\ncode_env = \"ml\"",
    );
    let explain = ok(&h, &["config", "explain", "sample/fit", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&explain).unwrap();
    let image = v["settings"]["image"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(image.starts_with("capstan-env-ml-small:"), "{image}");
    let _d = h.start();
    let run = ok(&h, &["run", "sample/fit"]);
    assert!(run.contains("slope 2.0 recipe fit"), "{run}");

    // Unchanged: nothing to build.
    let again = ok(&h, &["env", "build", "ml"]);
    assert!(
        again.contains("up to date: capstan-env-ml-small:"),
        "{again}"
    );
    // A one-line change rebuilds the env image only; the base stays as it is.
    let base_before = ok(&h, &["image", "list", "--json"]);
    let images = std::fs::read_to_string(h.root().join("images.toml")).unwrap();
    std::fs::write(
        h.root().join("images.toml"),
        images.replace("\"scikit-learn\"]", "\"scikit-learn\", \"six\"]"),
    )
    .unwrap();
    let rebuilt = ok(&h, &["env", "build", "ml"]);
    assert!(
        rebuilt.contains("ml for small: built capstan-env-ml-small:"),
        "{rebuilt}"
    );
    assert!(
        !rebuilt.contains(&image),
        "the tag did not change: {rebuilt}"
    );
    assert_eq!(ok(&h, &["image", "list", "--json"]), base_before);

    // A rebuilt base makes the env image stale until `--rebuild-stale`.
    let images = std::fs::read_to_string(h.root().join("images.toml")).unwrap();
    std::fs::write(
        h.root().join("images.toml"),
        images.replace(
            "[base_image.default]\n",
            "[base_image.default]\npython_packages = [\"six\"]\n",
        ),
    )
    .unwrap();
    ok(&h, &["image", "build-base", "default"]);
    let list: serde_json::Value =
        serde_json::from_str(&ok(&h, &["env", "list", "--json"])).unwrap();
    assert_eq!(list[0]["state"], "stale", "{list}");
    let out = ok(&h, &["env", "build", "--rebuild-stale"]);
    assert!(out.contains("ml for small: built"), "{out}");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&h, &["env", "list", "--json"])).unwrap();
    assert_eq!(list[0]["state"], "ok", "{list}");
    assert_eq!(list[0]["used_by"][0], "small");
}

#[test]
fn a_failing_build_reports_the_step_and_records_nothing_usable() {
    if !ready() {
        return;
    }
    let h = home(
        "images-fail",
        "[exec_config.small]\nkind = \"docker\"\nbase_image = \"default\"\n",
        "[code_env.broken]\nlanguage = \"python\"\npackages = [\"capstan-no-such-package-xyz\"]\nbuild_for = [\"small\"]\n",
    );
    ok(&h, &["image", "build-base", "default"]);
    let out = h
        .capstan()
        .args(["env", "build", "broken"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("capstan-no-such-package-xyz"), "{err}");
    assert!(
        err.contains("No matching distribution") || err.contains("Could not find a version"),
        "{err}"
    );
    // The failing step, in the build's own words.
    assert!(
        err.contains("RUN pip install capstan-no-such-package-xyz"),
        "{err}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&h, &["env", "list", "--json"])).unwrap();
    assert_eq!(list[0]["state"], "failed", "{list}");
    // Resolution does not pretend an image exists.
    let explain = ok(
        &h,
        &[
            "config",
            "explain",
            "sample/hello",
            "--exec-config",
            "small",
            "--code-env",
            "broken",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&explain).unwrap();
    assert_eq!(
        v["settings"]["image"]["value"], "capstan-env-broken-small",
        "{v}"
    );
}

#[test]
fn images_go_to_the_registry_and_a_run_pulls_them_back() {
    if !ready() {
        return;
    }
    let Ok(registry) = std::env::var("CAPSTAN_TEST_REGISTRY") else {
        crate::support::skip("CAPSTAN_TEST_REGISTRY (scripts/test runs one on 127.0.0.1:5000)");
        return;
    };
    let h = home_with(
        "images-registry",
        &format!(
            "[exec_config.pushed]\nkind = \"docker\"\nbase_image = \"default\"\nregistry = \"{registry}\"\npre_push_hook = \"hooks/pre-push.sh\"\n"
        ),
        "",
        |h| {
            // The hook records its arguments next to the home.
            std::fs::create_dir_all(h.root().join("hooks")).unwrap();
            let hook = h.root().join("hooks/pre-push.sh");
            let calls = h.dir.path().join("hook-calls");
            std::fs::write(
                &hook,
                format!("#!/bin/sh\necho \"$1 $2 $3\" >> {}\n", calls.display()),
            )
            .unwrap();
            Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
        },
    );
    let calls = h.dir.path().join("hook-calls");
    let out = ok(&h, &["image", "build-base", "default"]);
    assert!(out.contains(", pushed"), "{out}");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&h, &["image", "list", "--json"])).unwrap();
    let local = list[0]["image"].as_str().unwrap().to_string();
    let tag = local.rsplit(':').next().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap().trim(),
        format!("{registry} capstan-base-default {tag}")
    );
    // Gone from the engine: the run must pull it back from the registry.
    let remote = format!("{registry}/capstan-base-default:{tag}");
    let rmi = Command::new("docker")
        .args(["rmi", "-f", &remote, &local])
        .output()
        .unwrap();
    assert!(rmi.status.success(), "{}", stderr(&rmi));
    h.recipe(
        "where",
        "python",
        "py",
        "import sys\nprint('python', sys.version_info.major)\n",
        "exec_config = \"pushed\"",
    );
    let _d = h.start();
    let run = ok(&h, &["run", "sample/where"]);
    assert!(run.contains("python 3"), "{run}");
    let inspect = Command::new("docker")
        .args(["image", "inspect", &remote])
        .output()
        .unwrap();
    assert!(inspect.status.success(), "the run did not pull {remote}");
}

#[test]
fn a_base_image_with_r_runs_an_r_recipe() {
    if !ready() {
        return;
    }
    let h = home(
        "images-r",
        "[exec_config.rconf]\nkind = \"docker\"\nbase_image = \"r\"\n",
        "[base_image.r]\nwith_r = true\n",
    );
    ok(&h, &["image", "build-base", "r"]);
    h.recipe(
        "stats",
        "r",
        "R",
        "x <- c(1, 2, 3, 4)\ncat('mean', mean(x), 'R', R.version$major, '\\n')\n",
        "exec_config = \"rconf\"",
    );
    // The R client: a data.frame in, a data.frame out, in its own container.
    let csv = h.dir.path().join("orders.csv");
    std::fs::write(
        &csv,
        "id,customer,amount\n1,alice,10.5\n2,bob,3\n3,alice,7.25\n",
    )
    .unwrap();
    ok(
        &h,
        &["dataset", "import", "sample/orders", csv.to_str().unwrap()],
    );
    h.recipe(
        "rtotals",
        "r",
        "R",
        "orders <- capstan_dataset('orders')\n\
         totals <- aggregate(amount ~ customer, data = orders, FUN = sum)\n\
         capstan_write_output('order_totals', totals)\n\
         cat('wrote', nrow(totals), 'rows\\n')\n",
        "exec_config = \"rconf\"\ninputs = [\"orders\"]\noutputs = [\"order_totals\"]",
    );
    let _d = h.start();
    let run = ok(&h, &["run", "sample/stats"]);
    assert!(run.contains("mean 2.5 R 4"), "{run}");
    let run = ok(&h, &["run", "sample/rtotals"]);
    assert!(run.contains("wrote 2 rows"), "{run}");
    let head = ok(&h, &["dataset", "head", "sample/order_totals", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&head).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([{"customer": "alice", "amount": 17.75}, {"customer": "bob", "amount": 3.0}])
    );
}

#[test]
fn the_sample_pipeline_runs_in_python_and_r_containers() {
    if !ready() {
        return;
    }
    // The home exactly as `capstan init` writes it.
    let h = TestHome::new("sample-pipeline");
    let wine = h.root().join("projects/sample/data/wine.csv");
    let out = ok(
        &h,
        &["dataset", "import", "sample/wine", wine.to_str().unwrap()],
    );
    assert!(out.contains("imported 178 rows into sample/wine"), "{out}");
    ok(&h, &["image", "build-base", "default", "--no-push"]);
    ok(&h, &["image", "build-base", "r", "--no-push"]);
    ok(&h, &["env", "build", "pandas", "--no-push"]);
    let _d = h.start();

    let run = h
        .capstan()
        .args(["run", "sample/wine_stats"])
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&run),
        stderr(&run)
    );
    assert!(
        stderr(&run).contains("read wine (178 rows); wrote wine_by_cultivar (3 rows)"),
        "{}",
        stderr(&run)
    );
    let python: serde_json::Value = serde_json::from_str(&ok(
        &h,
        &["dataset", "head", "sample/wine_by_cultivar", "--json"],
    ))
    .unwrap();
    assert_eq!(python.as_array().unwrap().len(), 3);
    assert_eq!(python[0]["cultivar"], "class_0");
    assert_eq!(python[0]["wines"], 59);

    let run = h
        .capstan()
        .args(["run", "sample/wine_stats_r"])
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&run),
        stderr(&run)
    );
    let r: serde_json::Value = serde_json::from_str(&ok(
        &h,
        &["dataset", "head", "sample/wine_by_cultivar_r", "--json"],
    ))
    .unwrap();
    assert_eq!(r.as_array().unwrap().len(), 3);
    // Both languages agree.
    for (p, q) in python.as_array().unwrap().iter().zip(r.as_array().unwrap()) {
        assert_eq!(p["cultivar"], q["cultivar"]);
        assert_eq!(p["wines"], q["wines"]);
        let (a, b) = (
            p["alcohol"].as_f64().unwrap(),
            q["alcohol"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }
}

#[test]
fn a_spark_base_image_runs_pyspark_and_spark_sql_recipes_in_a_container() {
    if !ready() {
        return;
    }
    let h = home(
        "images-spark",
        "[exec_config.sparky]\nkind = \"docker\"\nbase_image = \"spark\"\nmemory_limit = \"2Gi\"\ncpu_limit = 2\n",
        "[base_image.spark]\nwith_spark = true\n",
    );
    ok(&h, &["image", "build-base", "spark"]);
    import_orders(&h);
    h.append("projects/sample/project.toml", "\n[dataset.sql_totals]\n");
    // Local mode inside the container: the image's Java and Spark, datasets through the API.
    h.recipe(
        "ptotals",
        "pyspark",
        "py",
        &pyspark_totals("order_totals", ""),
        "exec_config = \"sparky\"\ninputs = [\"orders\"]\noutputs = [\"order_totals\"]",
    );
    h.recipe(
        "stotals",
        "spark_sql",
        "sql",
        "SELECT customer, SUM(amount) AS total FROM orders GROUP BY customer ORDER BY customer\n",
        "exec_config = \"sparky\"\ninputs = [\"orders\"]\noutputs = [\"sql_totals\"]",
    );
    let render = ok(&h, &["spark", "render", "sample/stotals"]);
    assert!(
        render.contains("/capstan/work/capstan_sql_runner.py \\\n  /capstan/work/stotals.sql")
            && render.contains(
                "# Runs in a container of execution configuration sparky, image capstan-base-spark:"
            ),
        "{render}"
    );
    let _d = h.start();
    let want = serde_json::json!([{"customer": "alice", "total": 17.75}, {"customer": "bob", "total": 3.0}]);
    for (recipe, output) in [("ptotals", "order_totals"), ("stotals", "sql_totals")] {
        let run = ok(&h, &["run", &format!("sample/{recipe}")]);
        if recipe == "ptotals" {
            assert!(run.contains("master local[*]"), "{run}");
        }
        assert_eq!(head_json(&h, output), want, "{recipe}");
    }
    // The driver's full log (INFO and all) was copied out of each container before it went.
    let jobs = h.root().join("state/jobs");
    let kept = std::fs::read_dir(&jobs)
        .unwrap()
        .flatten()
        .flat_map(|j| std::fs::read_dir(j.path()).into_iter().flatten().flatten())
        .filter(|a| {
            std::fs::read_to_string(a.path().join("spark-driver.log"))
                .is_ok_and(|l| l.contains(" INFO SparkContext: Running Spark version"))
        })
        .count();
    assert_eq!(kept, 2, "no full driver log under {}", jobs.display());

    // A code environment built for a Spark configuration on Kubernetes: its image is the
    // Spark image plus the environment's packages, and the driver pod (and so the executors)
    // run it.
    h.append(
        "spark-configs.toml",
        "\n[spark_config.onk8s]\nmaster = \"kubernetes\"\nbase_image = \"spark\"\nnamespace = \"spark\"\n",
    );
    h.append(
        "images.toml",
        "\n[code_env.extra]\nlanguage = \"python\"\npackages = [\"tabulate\"]\nbuild_for = \"none\"\nbuild_for_spark = [\"onk8s\"]\n",
    );
    h.recipe(
        "kspark",
        "pyspark",
        "py",
        "import tabulate\nprint(tabulate.tabulate([[1, 2]]))\n",
        "spark_config = \"onk8s\"\ncode_env = \"extra\"",
    );
    let built = ok(&h, &["env", "build", "extra", "--no-push"]);
    assert!(built.contains("capstan-env-extra-spark-onk8s:"), "{built}");
    let objects = ok(&h, &["k8s", "render", "sample/kspark"]);
    let env_image = objects
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .expect("the driver pod's image")
        .to_string();
    assert!(
        env_image.starts_with("capstan-env-extra-spark-onk8s:"),
        "{objects}"
    );
    assert!(
        objects.contains(&format!("spark.kubernetes.container.image={env_image}")),
        "the executors run another image than the driver:\n{objects}"
    );
    let probe = Command::new("docker")
        .args(["run", "--rm", &env_image, "python3", "-c"])
        .arg("import tabulate, pyspark, pandas, pyarrow; print('ok', pyspark.__version__)")
        .output()
        .unwrap();
    assert!(
        probe.status.success() && stdout(&probe).starts_with("ok 4."),
        "{}{}",
        stdout(&probe),
        stderr(&probe)
    );

    // The image as a Kubernetes executor: the entrypoint's `executor` command, with the
    // variables Spark's Kubernetes scheduler sets on an executor pod, joins a real driver and
    // runs its tasks. (No cluster here: the driver schedules through a standalone master that
    // has no worker, so the one executor it gets is the entrypoint's.)
    let list: serde_json::Value =
        serde_json::from_str(&ok(&h, &["image", "list", "--json"])).unwrap();
    let image = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "spark")
        .and_then(|r| r["image"].as_str())
        .expect("the spark base image")
        .to_string();
    let net = Containers::new(&format!("capstan-it-spark-exec-{}", std::process::id()));
    let app = "from pyspark.sql import SparkSession\n\
               spark = SparkSession.builder.getOrCreate()\n\
               print('sum', spark.sparkContext.parallelize(range(1000), 4).sum(), flush=True)\n";
    net.run(
        "master",
        &[],
        &image,
        &[
            "/opt/spark/bin/spark-class",
            "org.apache.spark.deploy.master.Master",
            "--host",
            &net.name("master"),
            "--port",
            "7077",
        ],
    );
    let driver_script = format!(
        "printf '%s' \"$APP\" > /tmp/app.py && exec /opt/spark/bin/spark-submit --master spark://{}:7077 \
         --conf spark.driver.host={} --conf spark.driver.port=7078 --conf spark.cores.max=1 /tmp/app.py",
        net.name("master"),
        net.name("driver")
    );
    net.run(
        "driver",
        &[("APP", app)],
        &image,
        &["sh", "-c", &driver_script],
    );
    wait_for("the driver to wait for executors", 120, || {
        net.logs("driver").contains("Registering block manager")
    });
    let driver_url = format!("spark://CoarseGrainedScheduler@{}:7078", net.name("driver"));
    let exec_name = net.name("exec");
    net.run(
        "exec",
        &[
            ("SPARK_DRIVER_URL", driver_url.as_str()),
            ("SPARK_EXECUTOR_ID", "1"),
            ("SPARK_EXECUTOR_CORES", "1"),
            ("SPARK_EXECUTOR_MEMORY", "512m"),
            ("SPARK_APPLICATION_ID", "capstan-it"),
            ("SPARK_EXECUTOR_POD_IP", exec_name.as_str()),
            ("SPARK_EXECUTOR_POD_NAME", exec_name.as_str()),
            ("SPARK_RESOURCE_PROFILE_ID", "0"),
            ("SPARK_JAVA_OPT_0", "-Dspark.driver.port=7078"),
        ],
        &image,
        &["executor"],
    );
    wait_for("the driver's answer, computed on the executor", 180, || {
        net.logs("driver").contains("sum 499500")
    });
    assert!(
        net.logs("exec")
            .contains("Successfully registered with driver"),
        "{}",
        net.logs("exec")
    );
}

/// Containers on a network of their own, removed (with it) when dropped.
struct Containers {
    prefix: String,
}

impl Containers {
    fn new(prefix: &str) -> Containers {
        let out = Command::new("docker")
            .args(["network", "create", prefix])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        Containers {
            prefix: prefix.to_string(),
        }
    }

    fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    fn run(&self, short: &str, env: &[(&str, &str)], image: &str, cmd: &[&str]) {
        let mut c = Command::new("docker");
        c.args([
            "run",
            "-d",
            "--name",
            &self.name(short),
            "--network",
            &self.prefix,
        ]);
        for (k, v) in env {
            c.arg("-e").arg(format!("{k}={v}"));
        }
        let out = c.arg(image).args(cmd).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }

    fn logs(&self, short: &str) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.name(short)])
            .output()
            .unwrap();
        format!("{}{}", stdout(&out), stderr(&out))
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for short in ["exec", "driver", "master"] {
            let _ = Command::new("docker")
                .args(["rm", "-f", &self.name(short)])
                .output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.prefix])
            .output();
    }
}

#[test]
fn the_ml_flow_trains_in_a_container_and_scores_in_the_image_it_trained_in() {
    if !ready() {
        return;
    }
    let pins: Vec<String> = crate::ml::PINS
        .lines()
        .map(|l| format!("{:?}", l.trim()))
        .collect();
    // LightGBM links the system's OpenMP runtime: the base image installs it.
    let h = home(
        "images-ml",
        "[exec_config.mlbox]\nkind = \"docker\"\nbase_image = \"mlbase\"\nmemory_limit = \"1Gi\"\ncpu_limit = 1.5\n",
        &format!(
            "[base_image.mlbase]\nsystem_packages = [\"libgomp1\"]\ndockerfile_append = \"LABEL capstan.test=images-ml\"\n\n\
             [code_env.ml]\nlanguage = \"python\"\npackages = [{}]\nbuild_for = [\"mlbox\"]\n",
            pins.join(", ")
        ),
    );
    for recipe in ["wine_model", "wine_scored", "wine_eval"] {
        let path = h
            .root()
            .join(format!("projects/sample/recipes/{recipe}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace(
                "code_env = \"ml\"",
                "code_env = \"ml\"\nexec_config = \"mlbox\"",
            ),
        )
        .unwrap();
    }
    ok(&h, &["image", "build-base", "mlbase"]);
    let out = ok(&h, &["env", "build", "ml"]);
    assert!(
        out.contains("ml for mlbox: built capstan-env-ml-mlbox:"),
        "{out}"
    );
    let csv = h.root().join("projects/sample/data/wine.csv");
    ok(
        &h,
        &["dataset", "import", "sample/wine", csv.to_str().unwrap()],
    );
    let _d = h.start();
    let out = h
        .capstan()
        .args(["build", "sample/wine_scored", "sample/wine_eval"])
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    for recipe in ["wine_model", "wine_scored", "wine_eval"] {
        assert!(
            text.contains(&format!("sample/{recipe}: succeeded")),
            "{text}"
        );
    }
    let show: serde_json::Value = serde_json::from_str(&ok(
        &h,
        &[
            "model",
            "show",
            "sample/wine_model",
            "--version",
            "1",
            "--json",
        ],
    ))
    .unwrap();
    let info = &show["train_info"];
    assert_eq!(info["kind"], "docker", "{info}");
    assert_eq!(info["exec_config"], "mlbox", "{info}");
    assert_eq!(info["cpu_limit"], "1500m", "{info}");
    let image = info["image"].as_str().unwrap().to_string();
    assert!(image.starts_with("capstan-env-ml-mlbox:"), "{info}");
    assert!(
        (0.85..=1.0).contains(&show["score"].as_f64().unwrap()),
        "{show}"
    );
    // The same search as on the local venv: the same best point.
    let log = ok(&h, &["logs", "1", "--activity", "wine_model"]);
    assert!(
        log.contains("  lightgbm {n_estimators=100, num_leaves=15}: accuracy"),
        "{log}"
    );
    let scored = ok(
        &h,
        &[
            "dataset",
            "head",
            "sample/wine_scored",
            "-n",
            "500",
            "--json",
        ],
    );
    let rows: serde_json::Value = serde_json::from_str(&scored).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 178);
    let right = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["prediction"] == r["cultivar"])
        .count();
    assert!(right >= 160, "{right} of 178 right");
    let eval = head_json(&h, "wine_eval");
    assert_eq!(eval[0]["model_version"], 1, "{eval}");
    assert!(eval[0]["accuracy"].as_f64().unwrap() > 0.9, "{eval}");

    // The same search split over 3 containers saves the model the one container saved.
    crate::ml::split_search(&h, 3);
    let run = h
        .capstan()
        .args(["run", "sample/wine_model"])
        .output()
        .unwrap();
    let out = format!("{}{}", stdout(&run), stderr(&run));
    assert_eq!(run.status.code(), Some(0), "{out}");
    for part in 1..=3 {
        assert!(
            out.contains(&format!("sample/wine_model:{part}: succeeded")),
            "{out}"
        );
    }
    let show: serde_json::Value =
        serde_json::from_str(&ok(&h, &["model", "show", "sample/wine_model", "--json"])).unwrap();
    let (one, split) = (&show["versions"][0], &show["versions"][1]);
    for key in ["algorithm", "params", "score", "metrics", "search"] {
        assert_eq!(one[key], split[key], "{key}: {one} against {split}");
    }
    assert_eq!(split["train_info"]["kind"], "docker", "{split}");
    assert_eq!(split["train_info"]["search"]["parts"], 3, "{split}");
    assert!(
        crate::docker::containers(None, &h, "").is_empty(),
        "no part's container outlives the search"
    );
}

#[test]
fn a_stock_jupyter_server_runs_a_kernel_in_a_container_and_deleting_it_removes_the_container() {
    if !ready() {
        return;
    }
    let Some(python) = crate::kernels::jupyter() else {
        return;
    };
    let h = home(
        "images-nb",
        "[exec_config.nbbox]\nkind = \"docker\"\nbase_image = \"nbbase\"\nmemory_limit = \"1Gi\"\ncpu_limit = 1\n",
        &format!(
            "[base_image.nbbase]\nwith_jupyter = true\ndockerfile_append = \"LABEL capstan.test=images-nb\"\n{}build_for = [\"nbbox\"]\n",
            crate::kernels::NB_ENV
        ),
    );
    ok(&h, &["image", "build-base", "nbbase"]);
    let out = ok(&h, &["env", "build", "nb"]);
    assert!(
        out.contains("nb for nbbox: built capstan-env-nb-nbbox:"),
        "{out}"
    );
    let csv = h.root().join("projects/sample/data/wine.csv");
    ok(
        &h,
        &["dataset", "import", "sample/wine", csv.to_str().unwrap()],
    );
    let d = h.start();
    let steps = crate::kernels::session(&python, &h, &d, "sample.nb.nbbox");
    crate::kernels::assert_session(&steps, "sample.nb.nbbox");
    let job_id = steps["start"]["kernel"]["job_id"].as_i64().unwrap();
    let job = d.job(job_id);
    assert_eq!(job["kind"], "docker", "{job}");
    assert_eq!(job["state"], "cancelled", "{job}");
    // Deleted: its container is gone from the engine, not just stopped (this instance's: other
    // tests' homes number their jobs from 1 too).
    let instance = capstan_core::instance_id(&h.root());
    let left = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=capstan.job={job_id}"))
        .arg("--filter")
        .arg(format!("label=capstan.instance={instance}"))
        .output()
        .unwrap();
    assert_eq!(
        stdout(&left).trim(),
        "",
        "a kernel container outlived its kernel"
    );

    // The user's files are in a volume of theirs for the project: a new kernel finds them.
    let read = crate::kernels::run_once(
        &python,
        &h,
        &d.url,
        "sample.nb.nbbox",
        "print(open('notes.txt').read())",
    );
    assert_eq!(read["out"], "kept\n", "{read}");
    let volume = format!("capstan-notebooks-{instance}-sample-alice");
    let listed = Command::new("docker")
        .args(["volume", "ls", "-q", "--filter"])
        .arg(format!("name={volume}"))
        .output()
        .unwrap();
    assert_eq!(stdout(&listed).trim(), volume);

    // A base image with Jupyter runs kernels on its own Python, without a code environment.
    let prefix = crate::kernels::run_once(
        &python,
        &h,
        &d.url,
        "sample.nbbox",
        "import sys; print(sys.prefix)",
    );
    assert_eq!(prefix["out"], "/opt/capstan/python\n", "{prefix}");
    // The test's own volume goes with its home (instances never share one).
    let _ = Command::new("docker")
        .args(["volume", "rm", &volume])
        .output();
}

#[test]
fn a_stock_jupyter_server_runs_an_r_kernel_in_a_container() {
    if !ready() {
        return;
    }
    let Some(python) = crate::kernels::jupyter() else {
        return;
    };
    let h = home(
        "images-rnb",
        "[exec_config.rbox]\nkind = \"docker\"\nbase_image = \"r\"\nmemory_limit = \"1Gi\"\ncpu_limit = 1\n",
        "[base_image.r]\nwith_r = true\n\n[code_env.rnb]\nlanguage = \"r\"\nwith_jupyter = true\nbuild_for = [\"rbox\"]\n",
    );
    ok(&h, &["image", "build-base", "r"]);
    let out = ok(&h, &["env", "build", "rnb"]);
    assert!(
        out.contains("rnb for rbox: built capstan-env-rnb-rbox:"),
        "{out}"
    );
    let csv = h.root().join("projects/sample/data/wine.csv");
    ok(
        &h,
        &["dataset", "import", "sample/wine", csv.to_str().unwrap()],
    );
    let d = h.start();
    // IRkernel through the same agent and gateway: the same session as Python's, in R.
    let steps = crate::kernels::session(&python, &h, &d, "sample.rnb.rbox");
    assert_eq!(steps["kernelspecs"]["language"], "R", "{:?}", steps);
    crate::kernels::assert_session(&steps, "sample.rnb.rbox");
    let job_id = steps["start"]["kernel"]["job_id"].as_i64().unwrap();
    assert_eq!(d.job(job_id)["state"], "cancelled");
    let instance = capstan_core::instance_id(&h.root());
    let left = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=capstan.job={job_id}"))
        .arg("--filter")
        .arg(format!("label=capstan.instance={instance}"))
        .output()
        .unwrap();
    assert_eq!(
        stdout(&left).trim(),
        "",
        "a kernel container outlived its kernel"
    );
    let _ = Command::new("docker")
        .args(["volume", "rm"])
        .arg(format!("capstan-notebooks-{instance}-sample-alice"))
        .output();
}
