//! Kubernetes. `capstan k8s render` is checked against the official schema everywhere; the
//! end-to-end suite runs against a real cluster when `CAPSTAN_TEST_KUBECONFIG` names one (see
//! the README, "Kubernetes end-to-end tests"), and says it was skipped otherwise.

use std::path::PathBuf;

use capstan_backend_k8s::k8s_openapi::api::core::v1::Pod;
use capstan_backend_k8s::kube::api::{Api, ListParams};

use crate::support::{
    TestHome, fails, head_json, import_orders, run_ok, stderr, stdout, submit, wait_for,
};

#[test]
fn k8s_render_of_the_sample_passes_the_official_schema_and_holds_no_token() {
    let h = TestHome::new("k8s-render");
    let out = h
        .capstan()
        .args([
            "k8s",
            "render",
            "sample/hello",
            "--exec-config",
            "k8s-medium",
            "--cluster",
            "prod-k8s",
            "--user",
            "admin",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let yaml = stdout(&out);
    assert!(
        yaml.contains("kind: Pod")
            && yaml.contains("kind: ConfigMap")
            && yaml.contains("kind: Secret")
    );
    assert!(
        yaml.contains("token: generated when the activity starts"),
        "{yaml}"
    );
    assert!(!yaml.contains("capa_"), "a token in the rendered objects");
    let file = h.dir.path().join("objects.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let check = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.33.0"])
        .arg(&file)
        .output();
    match check {
        Ok(o) => assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o)),
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "kubernetes-validate is not installed"
            );
            eprintln!("skipped the schema check: pip install kubernetes-validate");
        }
    }
    // An ML recipe's pod runs capstan's ML runner, staged in the ConfigMap as its code.
    let out = h
        .capstan()
        .args([
            "k8s",
            "render",
            "sample/wine_model",
            "--exec-config",
            "k8s-medium",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ml = stdout(&out);
    assert!(ml.contains("- /capstan/work/wine_model.py"), "{ml}");
    assert!(ml.contains("key: wine_model.py"), "{ml}");
    let file = h.dir.path().join("ml-objects.yaml");
    std::fs::write(&file, &ml).unwrap();
    if let Ok(o) = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.33.0"])
        .arg(&file)
        .output()
    {
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    }
    // A recipe on another kind of configuration is not rendered as if it were.
    fails(
        &h,
        &["k8s", "render", "sample/hello"],
        1,
        "not on Kubernetes",
    );
    // Permissions hold here too.
    let out = h
        .capstan()
        .args([
            "k8s",
            "render",
            "sample/hello",
            "--exec-config",
            "k8s-medium",
            "--user",
            "alice",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// The cluster the end-to-end suite runs against, from the environment.
struct Cluster {
    kubeconfig: String,
    context: Option<String>,
    registry: String,
    public_url: Option<String>,
}

fn cluster() -> Option<Cluster> {
    let Ok(kubeconfig) = std::env::var("CAPSTAN_TEST_KUBECONFIG") else {
        eprintln!(
            "skipped: set CAPSTAN_TEST_KUBECONFIG (and CAPSTAN_TEST_K8S_IMAGE_REGISTRY) to run the Kubernetes end-to-end suite"
        );
        return None;
    };
    let registry = std::env::var("CAPSTAN_TEST_K8S_IMAGE_REGISTRY")
        .expect("CAPSTAN_TEST_K8S_IMAGE_REGISTRY: a registry capstan can push to and the cluster can pull from");
    Some(Cluster {
        kubeconfig,
        context: std::env::var("CAPSTAN_TEST_K8S_CONTEXT").ok(),
        registry,
        public_url: std::env::var("CAPSTAN_TEST_K8S_PUBLIC_URL").ok(),
    })
}

/// A home whose `e2e` configuration runs on the test cluster, with its base image built and
/// pushed to the test registry.
fn e2e_home(label: &str, c: &Cluster) -> TestHome {
    let h = TestHome::new(label);
    let context = c
        .context
        .as_ref()
        .map(|x| format!("context = \"{x}\"\n"))
        .unwrap_or_default();
    h.append(
        "clusters.toml",
        &format!(
            "\n[cluster.e2e]\nkind = \"kubernetes\"\nkubeconfig = \"{}\"\n{context}",
            c.kubeconfig
        ),
    );
    h.append(
        "exec-configs.toml",
        &format!(
            "\n[exec_config.e2e]\nkind = \"kubernetes\"\nbase_image = \"default\"\nregistry = \"{}\"\nnamespace = \"capstan-e2e\"\ncreate_namespace = true\n\
             cpu_limit = 1\nmemory_limit = \"256Mi\"\npending_timeout = \"5m\"\n",
            c.registry
        ),
    );
    // The sample's own Kubernetes configuration pushes to a registry that does not exist.
    let exec = std::fs::read_to_string(h.root().join("exec-configs.toml")).unwrap();
    std::fs::write(
        h.root().join("exec-configs.toml"),
        exec.replace("registry = \"registry.example.com/capstan\"\n", ""),
    )
    .unwrap();
    let capstan_toml = std::fs::read_to_string(h.root().join("capstan.toml")).unwrap();
    let mut server = String::from("[server]\n");
    if let Some(url) = &c.public_url {
        server += &format!("public_url = \"{url}\"\n");
    }
    std::fs::write(
        h.root().join("capstan.toml"),
        capstan_toml.replace("[server]\n", &server),
    )
    .unwrap();
    let build = h
        .capstan()
        .args(["image", "build-base", "default"])
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}{}",
        stdout(&build),
        stderr(&build)
    );
    h
}

/// Where the test daemon listens: pods reach it at the public URL, so on all addresses, on its
/// port.
fn daemon_bind(c: &Cluster) -> String {
    match &c.public_url {
        Some(u) => format!(
            "0.0.0.0:{}",
            u.rsplit(':').next().unwrap().trim_end_matches('/')
        ),
        None => "127.0.0.1:0".to_string(),
    }
}

/// The pods of job `job` of the test home `h` (its driver pod, and a Spark job's executors), or
/// only its Spark executors.
fn pods_of(c: &Cluster, h: &TestHome, job: i64) -> usize {
    pods_where(c, h, job, "")
}

fn executors_of(c: &Cluster, h: &TestHome, job: i64) -> usize {
    pods_where(c, h, job, ",spark-role=executor")
}

/// Runs `f` with a client of the test cluster.
fn with_client<T, F: std::future::Future<Output = T>>(
    c: &Cluster,
    f: impl FnOnce(capstan_backend_k8s::kube::Client) -> F,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = capstan_backend_k8s::K8sBackend::new(std::path::Path::new("/"));
        let client = backend
            .client(Some(&c.kubeconfig), c.context.as_deref())
            .await
            .unwrap();
        f(client).await
    })
}

fn pods_where(c: &Cluster, h: &TestHome, job: i64, more: &str) -> usize {
    with_client(c, |client| async move {
        let pods: Api<Pod> = Api::namespaced(client, "capstan-e2e");
        // Test homes number their jobs from 1 alike: the instance label tells them apart.
        let selector = format!(
            "capstan.io/instance={},capstan.io/job={job}{more}",
            capstan_core::instance_id(&h.root())
        );
        pods.list(&ListParams::default().labels(&selector))
            .await
            .expect("the test cluster lists pods")
            .items
            .len()
    })
}

#[test]
fn e2e_run_oom_cancel_reattach_and_data_on_a_real_cluster() {
    let Some(c) = cluster() else { return };
    let h = e2e_home("k8s-e2e", &c);
    h.recipe(
        "hi",
        "python",
        "py",
        "import platform\nprint('hello from', platform.node())\n",
        "exec_config = \"e2e\"\ncluster = \"e2e\"",
    );
    h.recipe(
        "hog",
        "python",
        "py",
        "b = bytearray(1024 * 1024 * 1024)\nprint('survived')\n",
        "exec_config = \"e2e\"\ncluster = \"e2e\"",
    );
    h.recipe(
        "nap",
        "shell",
        "sh",
        "echo sleeping\nsleep 300\n",
        "exec_config = \"e2e\"\ncluster = \"e2e\"",
    );
    h.recipe(
        "steps",
        "shell",
        "sh",
        "echo first\nsleep 20\necho second\n",
        "exec_config = \"e2e\"\ncluster = \"e2e\"",
    );
    let bind = daemon_bind(&c);
    let d = h.start_on(&bind);

    // A run, with its log.
    let out = h.capstan().args(["run", "sample/hi"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("hello from capstan-"),
        "{}",
        stdout(&out)
    );

    // Out of memory, from the container's OOMKilled state.
    let out = h.capstan().args(["run", "sample/hog"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "out of memory: exceeded the 256 MiB memory limit of execution configuration 'e2e'"
        ),
        "{}",
        stderr(&out)
    );

    // Cancel: the pod is gone afterwards.
    let id = submit(&h, "sample/nap", &[]);
    d.wait_state(id, 300, &["running"]);
    assert_eq!(pods_of(&c, &h, id), 1);
    let out = h
        .capstan()
        .args(["cancel", &id.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_for("the cancelled pod to be gone", 90, || {
        pods_of(&c, &h, id) == 0
    });

    // A daemon killed while its pod runs re-attaches and ends the job with its whole log.
    let id = submit(&h, "sample/steps", &[]);
    let job = d.wait_state(id, 300, &["running"]);
    let log = PathBuf::from(job["activities"][0]["log"].as_str().unwrap());
    wait_for("the first line", 120, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(" o first"))
    });
    d.kill9();
    let d = h.start_on(&bind);
    let job = d.wait_state(id, 300, &["succeeded", "failed", "cancelled", "timed_out"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.ends_with(" o first")).count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.ends_with(" o second")).count(),
        1,
        "{text}"
    );
    wait_for("the finished pod to be gone", 90, || {
        pods_of(&c, &h, id) == 0
    });

    // The data plane, when the cluster can reach this daemon.
    if c.public_url.is_none() {
        eprintln!(
            "data-plane round trip skipped: set CAPSTAN_TEST_K8S_PUBLIC_URL to where pods reach this machine's daemon"
        );
        return;
    }
    import_orders(&h);
    h.append("images.toml", "\n[code_env.tables]\nlanguage = \"python\"\npackages = [\"pandas\", \"pyarrow\"]\nbuild_for = [\"e2e\"]\n");
    let out = h
        .capstan()
        .args(["env", "build", "tables"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    h.recipe(
        "totals",
        "python",
        "py",
        "import capstan\nd = capstan.Dataset('orders').to_pandas()\ncapstan.Output('order_totals').write(d.groupby('customer', as_index=False)['amount'].sum())\n",
        "exec_config = \"e2e\"\ncluster = \"e2e\"\ncode_env = \"tables\"\ninputs = [\"orders\"]\noutputs = [\"order_totals\"]",
    );
    run_ok(&h, "totals");
    assert_eq!(
        head_json(&h, "order_totals"),
        serde_json::json!([{"customer": "alice", "amount": 17.75}, {"customer": "bob", "amount": 3.0}])
    );
}

/// A namespace for the Spark case, with a service account its drivers may start executors
/// with (what a platform admin gives a Spark configuration's `service_account`).
fn spark_service_account(c: &Cluster, ns: &str, name: &str) {
    use capstan_backend_k8s::k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use capstan_backend_k8s::k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use capstan_backend_k8s::kube::api::PostParams;
    with_client(c, |client| async move {
        let objects = serde_json::json!([
            {"kind": "Namespace", "metadata": {"name": ns}},
            {"kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}},
            {"kind": "Role", "metadata": {"name": name, "namespace": ns}, "rules": [{
                "apiGroups": [""],
                // The README's Role for Spark drivers, exactly.
                "resources": ["pods", "configmaps", "services", "persistentvolumeclaims"],
                "verbs": ["create", "get", "list", "watch", "delete", "deletecollection", "patch", "update"],
            }]},
            {"kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]},
        ]);
        let pp = PostParams::default();
        // Already there from an earlier run: fine.
        let made = |r: Result<(), capstan_backend_k8s::kube::Error>| match r {
            Err(capstan_backend_k8s::kube::Error::Api(e)) if e.code == 409 => {}
            other => other.unwrap(),
        };
        let o = |i: usize| objects[i].clone();
        made(
            Api::<Namespace>::all(client.clone())
                .create(&pp, &serde_json::from_value(o(0)).unwrap())
                .await
                .map(|_| ()),
        );
        made(
            Api::<ServiceAccount>::namespaced(client.clone(), ns)
                .create(&pp, &serde_json::from_value(o(1)).unwrap())
                .await
                .map(|_| ()),
        );
        made(
            Api::<Role>::namespaced(client.clone(), ns)
                .create(&pp, &serde_json::from_value(o(2)).unwrap())
                .await
                .map(|_| ()),
        );
        made(
            Api::<RoleBinding>::namespaced(client.clone(), ns)
                .create(&pp, &serde_json::from_value(o(3)).unwrap())
                .await
                .map(|_| ()),
        );
    });
}

#[test]
fn e2e_spark_on_a_real_cluster_runs_executors_and_leaves_no_pod() {
    let Some(c) = cluster() else { return };
    let h = e2e_home("k8s-e2e-spark", &c);
    spark_service_account(&c, "capstan-e2e", "capstan-spark-e2e");
    h.append(
        "spark-configs.toml",
        &format!(
            "\n[spark_config.e2e]\nmaster = \"kubernetes\"\nbase_image = \"spark\"\nregistry = \"{}\"\n\
             namespace = \"capstan-e2e\"\nservice_account = \"capstan-spark-e2e\"\ndriver_memory = \"512Mi\"\n\
             executor_memory = \"512Mi\"\nexecutor_cores = 1\nexecutor_instances = 2\n\
             [spark_config.e2e.conf]\n\"spark.scheduler.minRegisteredResourcesRatio\" = \"1.0\"\n\
             \"spark.scheduler.maxRegisteredResourcesWaitingTime\" = \"600s\"\n",
            c.registry
        ),
    );
    // The Spark base image, pushed where the cluster pulls the driver's and executors' image.
    let build = h
        .capstan()
        .args(["image", "build-base", "spark"])
        .output()
        .unwrap();
    assert!(
        build.status.success() && stdout(&build).contains(", pushed"),
        "{}{}",
        stdout(&build),
        stderr(&build)
    );
    h.recipe(
        "ssum",
        "pyspark",
        "py",
        "from pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\n\
         total = spark.range(0, 100000, numPartitions=8).groupBy().sum('id').collect()[0][0]\n\
         executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1\n\
         print('sum', total, 'with', executors, 'executors', flush=True)\nspark.stop()\n",
        "spark_config = \"e2e\"\ncluster = \"e2e\"",
    );
    h.recipe(
        "slinger",
        "pyspark",
        "py",
        "import time\nfrom pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\n\
         spark.range(0, 10).count()\nprint('executors up', flush=True)\ntime.sleep(600)\n",
        "spark_config = \"e2e\"\ncluster = \"e2e\"",
    );
    let d = h.start_on(&daemon_bind(&c));

    // The driver pod runs the recipe; its executors are pods too, gone with the job.
    let id = submit(&h, "sample/ssum", &[]);
    let job = d.wait_state(id, 600, &["succeeded", "failed", "cancelled", "timed_out"]);
    let log = std::fs::read_to_string(job["activities"][0]["log"].as_str().unwrap()).unwrap();
    assert_eq!(job["state"], "succeeded", "{job}\n{log}");
    assert!(log.contains(" o sum 4999950000 with 2 executors"), "{log}");
    // The executors' logs stay beside the driver's.
    let executors = PathBuf::from(job["activities"][0]["dir"].as_str().unwrap()).join("executors");
    let kept = std::fs::read_dir(&executors)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(kept, 2, "executor logs in {}", executors.display());
    wait_for("the driver and executor pods to be gone", 120, || {
        pods_of(&c, &h, id) == 0
    });

    // Cancel stops the application: driver and executors go.
    let id = submit(&h, "sample/slinger", &[]);
    let job = d.wait_state(id, 600, &["running"]);
    let log = PathBuf::from(job["activities"][0]["log"].as_str().unwrap());
    wait_for("the executors", 300, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(" o executors up"))
    });
    assert_eq!(executors_of(&c, &h, id), 2, "executor pods of job {id}");
    let out = h
        .capstan()
        .args(["cancel", &id.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    d.wait_state(id, 120, &["cancelled"]);
    wait_for("the cancelled application's pods to be gone", 120, || {
        pods_of(&c, &h, id) == 0
    });

    // Datasets, through the data API, when the cluster can reach this daemon.
    if c.public_url.is_none() {
        eprintln!("Spark data round trip skipped: set CAPSTAN_TEST_K8S_PUBLIC_URL");
        return;
    }
    import_orders(&h);
    h.recipe(
        "stotals",
        "spark_sql",
        "sql",
        "SELECT customer, SUM(amount) AS total FROM orders GROUP BY customer ORDER BY customer\n",
        "spark_config = \"e2e\"\ncluster = \"e2e\"\ninputs = [\"orders\"]\noutputs = [\"order_totals\"]",
    );
    run_ok(&h, "stotals");
    assert_eq!(
        head_json(&h, "order_totals"),
        serde_json::json!([{"customer": "alice", "total": 17.75}, {"customer": "bob", "total": 3.0}])
    );
}

#[test]
fn cluster_test_reports_an_unreachable_api_as_its_first_step() {
    let h = TestHome::new("cluster-test");
    let kubeconfig = h.dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: nowhere\n  cluster:\n    server: https://127.0.0.1:1\n\
         contexts:\n- name: nowhere\n  context:\n    cluster: nowhere\n    user: nobody\ncurrent-context: nowhere\n\
         users:\n- name: nobody\n  user:\n    token: not-a-real-token\n",
    )
    .unwrap();
    h.append(
        "clusters.toml",
        &format!("\n[cluster.nowhere]\nkind = \"kubernetes\"\nkubeconfig = \"{}\"\ncontext = \"nowhere\"\n", kubeconfig.display()),
    );
    let out = h
        .capstan()
        .args(["cluster", "test", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.starts_with("FAIL API reachable"), "{text}");
    // A Docker host is tested as one (docker.rs runs the whole test on a real engine): here
    // the first Docker configuration's base image was never built, and the step says so.
    let out = h
        .capstan()
        .args(["cluster", "test", "local-docker"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.contains("FAIL engine reachable")
            || text.contains("base image `r`, which is not built: `capstan image build-base r`"),
        "{text}"
    );
}
