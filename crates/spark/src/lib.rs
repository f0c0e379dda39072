//! Spark recipes: the `spark-submit` command built from a Spark configuration, the executor pod
//! template for Kubernetes, and what Spark's own failures mean for the user.
//!
//! capstan owns the settings it derives from the configuration (master, memory, cores, image,
//! namespace…); `capstan check` refuses them in a configuration's free `conf`.

pub mod pyfiles;

use capstan_core::model::{ExecKind, SparkConfig, SparkLogLevel, SparkMaster};
use capstan_engine::backend::ActivitySpec;
use serde_json::{Value, json};

/// The runner of Spark SQL recipes: registers each input as a view named after it, runs the
/// recipe's query, writes the result to its one output. Its arguments: the query's file, then
/// the inputs' and the outputs' names as JSON lists.
pub const SQL_RUNNER: &str = r#"import json, sys
from pyspark.sql import SparkSession
import capstan.spark as cs

query_file, inputs, outputs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
if len(outputs) != 1:
    sys.exit(f"a Spark SQL recipe writes exactly one output; this one declares {len(outputs)}")
spark = SparkSession.builder.getOrCreate()
for name in inputs:
    cs.read(spark, name).createOrReplaceTempView(name)
query = open(query_file).read().strip().rstrip(";")
cs.write(spark.sql(query), outputs[0])
spark.stop()
"#;

/// The driver's log configuration, beside the code.
pub const LOG4J2_FILE: &str = "capstan-log4j2.properties";
/// The driver's full log (every INFO line), in the activity's folder, where the driver may
/// write there (not in a Kubernetes pod, whose code is a read-only ConfigMap).
pub const DRIVER_LOG: &str = "spark-driver.log";

/// Spark's log4j2 configuration for the driver: its console (the job's log) at `level`, every
/// INFO line in `full_log` when given. The lines that say where the Spark UI listens stay on the
/// console whatever the level: `capstan job show` reads them from the job's log.
pub fn log4j2_properties(level: SparkLogLevel, full_log: Option<&str>) -> String {
    let mut p = String::from(
        "# Written by capstan for this run: Spark's INFO chatter stays out of the job's log.\n\
         status = error\n\
         rootLogger.level = info\n\
         rootLogger.appenderRef.console.ref = console\n",
    );
    p += &format!(
        "rootLogger.appenderRef.console.level = {}\n",
        level.as_str()
    );
    p += "appender.console.type = Console\n\
          appender.console.name = console\n\
          appender.console.target = SYSTEM_ERR\n\
          appender.console.layout.type = PatternLayout\n\
          appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex\n\
          logger.ui.name = org.apache.spark.util.Utils\n\
          logger.ui.level = info\n\
          logger.ui.additivity = false\n\
          logger.ui.appenderRef.console.ref = console\n";
    if let Some(path) = full_log {
        p += &format!(
            "rootLogger.appenderRef.file.ref = file\n\
             logger.ui.appenderRef.file.ref = file\n\
             appender.file.type = File\n\
             appender.file.name = file\n\
             appender.file.fileName = {path}\n\
             appender.file.layout.type = PatternLayout\n\
             appender.file.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex\n"
        );
    }
    // Spark's own defaults quiet these even at INFO.
    for (name, level) in [
        ("org.sparkproject.jetty", "warn"),
        ("org.apache.parquet", "error"),
        ("org.apache.hadoop.util.NativeCodeLoader", "error"),
    ] {
        let key = name.replace('.', "_");
        p += &format!("logger.{key}.name = {name}\nlogger.{key}.level = {level}\n");
    }
    p
}

/// The executors' pod template, beside the code (Kubernetes).
pub const EXECUTOR_TEMPLATE: &str = "executor-pod.yaml";
/// The Spark SQL runner, beside the code.
pub const SQL_RUNNER_FILE: &str = "capstan_sql_runner.py";
/// The project's library, zipped for the executors, beside the code.
pub const LIB_ZIP: &str = "capstan_lib.zip";
/// Spark's own launcher, where pyspark's images and capstan's `with_spark` images have it.
pub const CONTAINER_SPARK_SUBMIT: &str = "/opt/spark/bin/spark-submit";

/// A `spark-submit` invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    /// Arguments after `spark-submit`.
    pub args: Vec<String>,
    /// Files to stage beside the recipe's code, by name: the SQL runner, the executors' pod
    /// template.
    pub files: Vec<(String, Vec<u8>)>,
}

/// The Kubernetes API as a pod in the cluster reaches it.
pub const IN_CLUSTER_API: &str = "https://kubernetes.default.svc";

/// The variables the driver pod gets from the downward API: Kubernetes expands `$(NAME)` in a
/// container's command, so the submission names the pod and its address without knowing them.
pub const POD_NAME_VAR: &str = "CAPSTAN_POD_NAME";
pub const POD_IP_VAR: &str = "CAPSTAN_POD_IP";

/// Labels of the executor pods: the driver pod's own, so that the orphan sweep and attribution
/// see them as the activity's.
fn labels(spec: &ActivitySpec) -> Vec<(&'static str, String)> {
    vec![
        (
            "capstan.io/instance",
            capstan_core::instance_id(&spec.home_root),
        ),
        ("capstan.io/job", spec.job_id.to_string()),
        ("capstan.io/attempt", spec.attempt.to_string()),
        ("capstan.io/activity", spec.activity_id()),
        ("capstan.io/project", spec.project.clone()),
        ("capstan.io/recipe", spec.recipe.clone()),
        ("capstan.io/user", spec.user.clone()),
    ]
}

/// The executor pod template: the configuration's placement, and capstan's labels.
pub fn pod_template(spec: &ActivitySpec, spark: &SparkConfig) -> String {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        // Spark names executor pods itself; a name here keeps the template a valid Pod.
        "metadata": {"name": format!("capstan-{}-executor", spec.activity_id()), "labels": labels(spec).into_iter().map(|(k, v)| (k.to_string(), Value::String(v))).collect::<serde_json::Map<_, _>>()},
        "spec": {"containers": [{"name": "spark-kubernetes-executor"}]},
    });
    if !spark.node_selector.is_empty() {
        pod["spec"]["nodeSelector"] = spark
            .node_selector
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.value.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if !spark.tolerations.is_empty() {
        pod["spec"]["tolerations"] = spark
            .tolerations
            .iter()
            .map(|t| {
                let mut o = serde_json::Map::new();
                for (k, v) in [
                    ("key", &t.value.key),
                    ("operator", &t.value.operator),
                    ("value", &t.value.value),
                    ("effect", &t.value.effect),
                ] {
                    if let Some(v) = v {
                        o.insert(k.into(), Value::String(v.clone()));
                    }
                }
                if let Some(s) = t.value.toleration_seconds {
                    o.insert("tolerationSeconds".into(), s.into());
                }
                Value::Object(o)
            })
            .collect::<Vec<_>>()
            .into();
    }
    serde_yaml::to_string(&pod).unwrap_or_default()
}

/// The `spark-submit` of an activity whose code is staged as `work_dir/code_file`: the recipe's
/// own file (PySpark), or capstan's SQL runner given the query and the datasets' names.
pub fn submission(
    spec: &ActivitySpec,
    work_dir: &str,
    code_file: &str,
) -> Result<Submission, String> {
    let mut files = Vec::new();
    let code = format!("{work_dir}/{code_file}");
    let app = if spec.recipe_kind == capstan_core::model::RecipeKind::SparkSql {
        files.push((SQL_RUNNER_FILE.into(), SQL_RUNNER.as_bytes().to_vec()));
        vec![
            format!("{work_dir}/{SQL_RUNNER_FILE}"),
            code,
            Value::from(spec.inputs.clone()).to_string(),
            Value::from(spec.outputs.clone()).to_string(),
        ]
    } else {
        vec![code]
    };
    // The project's library travels to executors on other machines (the driver has it on its
    // path already, and so do local mode's, which run inside the driver).
    let mut app = app;
    let remote_executors = spec
        .spark
        .as_ref()
        .is_some_and(|s| s.master.value != SparkMaster::Local);
    if let Some(lib) = spec
        .lib_dir
        .as_ref()
        .filter(|l| remote_executors && l.is_dir())
    {
        let zip = pyfiles::zip_dir(lib)
            .map_err(|e| format!("cannot zip the project library {}: {e}", lib.display()))?;
        files.push((LIB_ZIP.into(), zip));
        app.splice(
            0..0,
            ["--py-files".to_string(), format!("{work_dir}/{LIB_ZIP}")],
        );
    }
    // The driver logs at the configuration's level (warn by default), and in full beside the
    // code where it can write there (a pod's code is a read-only ConfigMap).
    let level = spec
        .spark
        .as_ref()
        .and_then(|s| s.log_level.as_ref())
        .map_or(SparkLogLevel::default(), |l| l.value);
    // Beside the work folder, which is the activity's folder locally (the work folder itself
    // is cleaned up) and /capstan in a container (copied out before it is removed).
    let log_dir = work_dir.rsplit_once('/').map_or(work_dir, |(d, _)| d);
    let full_log = (spec.kind != ExecKind::Kubernetes).then(|| format!("{log_dir}/{DRIVER_LOG}"));
    files.push((
        LOG4J2_FILE.into(),
        log4j2_properties(level, full_log.as_deref()).into_bytes(),
    ));
    // The recipe's own driver options come after capstan's, so its own log configuration wins.
    let mut java_options = format!("-Dlog4j.configurationFile=file:{work_dir}/{LOG4J2_FILE}");
    if let Some(theirs) = spec
        .spark
        .as_ref()
        .and_then(|s| s.conf.get("spark.driver.extraJavaOptions"))
    {
        java_options = format!("{java_options} {}", theirs.value);
    }
    let java = ["--driver-java-options".to_string(), java_options];
    let Some(spark) = spec.spark.as_ref() else {
        // No Spark configuration: local mode on every core, Spark's defaults.
        let mut args = vec![
            "--master".to_string(),
            "local[*]".to_string(),
            "--name".to_string(),
            format!("capstan-{}-{}-{}", spec.job_id, spec.project, spec.recipe),
        ];
        args.extend(java);
        args.extend(app);
        return Ok(Submission { args, files });
    };
    let pod_template_path = format!("{work_dir}/{EXECUTOR_TEMPLATE}");
    let mut conf: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| conf.push((k.to_string(), v));
    // Spark takes memory as a JVM size: `512m`, `4g`.
    let jvm = |m: capstan_core::quantity::Memory| format!("{}m", m.bytes().div_ceil(1 << 20));
    if let Some(v) = &spark.driver_memory {
        put("spark.driver.memory", jvm(v.value));
    }
    if let Some(v) = &spark.driver_cores {
        put("spark.driver.cores", v.value.to_string());
    }
    if let Some(v) = &spark.executor_memory {
        put("spark.executor.memory", jvm(v.value));
    }
    if let Some(v) = &spark.executor_memory_overhead {
        put("spark.executor.memoryOverhead", jvm(v.value));
    }
    if let Some(v) = &spark.executor_cores {
        put("spark.executor.cores", v.value.to_string());
    }
    if let Some(v) = &spark.executor_instances {
        put("spark.executor.instances", v.value.to_string());
    }
    if let Some(v) = &spark.dynamic_allocation {
        put("spark.dynamicAllocation.enabled", v.value.to_string());
    }
    let mut args = Vec::new();
    let master = match spark.master.value {
        SparkMaster::Local => format!(
            "local[{}]",
            spark
                .local_threads
                .as_ref()
                .map_or("*".to_string(), |t| t.value.to_string())
        ),
        SparkMaster::Standalone => spark
            .master_url
            .as_ref()
            .map(|u| u.value.clone())
            .ok_or_else(|| format!("Spark configuration `{}` has no master_url", spark.name))?,
        SparkMaster::Kubernetes => {
            // The driver runs in a pod of its own (capstan's, like any activity's), in client
            // mode: nothing needs to reach back to the daemon's machine, and the executors are
            // owned by the driver pod, so they go with it.
            let server = spark
                .master_url
                .as_ref()
                .map_or(IN_CLUSTER_API.to_string(), |u| u.value.clone());
            args.extend(["--deploy-mode".to_string(), "client".to_string()]);
            let image = spec
                .image
                .clone()
                .ok_or_else(|| format!("Spark configuration `{}` names no image: set `image` or `base_image` (a base image with `with_spark = true`)", spark.name))?;
            put("spark.kubernetes.container.image", image);
            if let Some(ns) = &spec.namespace {
                put("spark.kubernetes.namespace", ns.clone());
            }
            put(
                "spark.kubernetes.driver.pod.name",
                format!("$({POD_NAME_VAR})"),
            );
            // Executors call the driver back at its pod's IP. The driver listens on every
            // address of its pod; Spark 4 would hand executors that bind address (0.0.0.0)
            // unless told to use `spark.driver.host` (issue 14: "Failed to connect to
            // /0.0.0.0:35995" on a real cluster).
            put("spark.driver.host", format!("$({POD_IP_VAR})"));
            put("spark.driver.bindAddress", "0.0.0.0".into());
            put("spark.kubernetes.executor.useDriverPodIP", "false".into());
            put(
                "spark.kubernetes.executor.podTemplateFile",
                pod_template_path,
            );
            for (k, v) in labels(spec) {
                put(&format!("spark.kubernetes.executor.label.{k}"), v);
            }
            // Spark leaves its executors' pods when they end, so that capstan keeps their logs
            // before it deletes them (with the driver pod, which owns them).
            put(
                "spark.kubernetes.executor.deleteOnTermination",
                "false".into(),
            );
            // Executors run Python workers beside their JVM. Spark reserves 40% more memory for
            // them only for a driver it starts itself (cluster mode): without it, PySpark
            // executors are the first pods the kernel kills.
            if spark.executor_memory_overhead.is_none()
                && !spark
                    .conf
                    .contains_key("spark.executor.memoryOverheadFactor")
            {
                put("spark.executor.memoryOverheadFactor", "0.4".into());
            }
            // Kubernetes has no external shuffle service: dynamic allocation works only with
            // shuffle tracking, and Spark refuses to start without one of the two.
            if spark.dynamic_allocation.as_ref().is_some_and(|d| d.value)
                && !spark
                    .conf
                    .contains_key("spark.dynamicAllocation.shuffleTracking.enabled")
                && !spark.conf.contains_key("spark.shuffle.service.enabled")
            {
                put(
                    "spark.dynamicAllocation.shuffleTracking.enabled",
                    "true".into(),
                );
            }
            if !spark.image_pull_secrets.is_empty() {
                put(
                    "spark.kubernetes.container.image.pullSecrets",
                    spark
                        .image_pull_secrets
                        .iter()
                        .map(|s| s.value.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
            format!("k8s://{}", server.trim_start_matches("k8s://"))
        }
    };
    for (k, v) in &spark.conf {
        // Passed as --driver-java-options, after capstan's.
        if k != "spark.driver.extraJavaOptions" {
            put(k, v.value.clone());
        }
    }
    args.splice(
        0..0,
        [
            "--master".to_string(),
            master,
            "--name".to_string(),
            format!("capstan-{}-{}-{}", spec.job_id, spec.project, spec.recipe),
        ],
    );
    for (k, v) in conf {
        args.push("--conf".into());
        args.push(format!("{k}={v}"));
    }
    args.extend(java);
    args.extend(app);
    if spark.master.value == SparkMaster::Kubernetes {
        files.push((
            EXECUTOR_TEMPLATE.into(),
            pod_template(spec, spark).into_bytes(),
        ));
    }
    Ok(Submission { args, files })
}

/// What a container runs for a Spark recipe whose code is `work_dir/code_file`: Spark's
/// launcher with its arguments, and the files to stage beside the code.
pub fn container_command(
    spec: &ActivitySpec,
    work_dir: &str,
    code_file: &str,
) -> Result<Submission, String> {
    let mut s = submission(spec, work_dir, code_file)?;
    s.args.insert(0, CONTAINER_SPARK_SUBMIT.to_string());
    Ok(s)
}

/// `spark-submit ARGS`, quoted for a shell.
pub fn command_line(args: &[String]) -> String {
    let quote = |a: &String| {
        if a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=[]*@,".contains(c))
        {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    };
    // One option per line, with its value: `--conf k=v` reads as one setting.
    let mut lines = vec!["spark-submit".to_string()];
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let mut line = quote(a);
        if a.starts_with("--") && it.peek().is_some_and(|v| !v.starts_with("--")) {
            line = format!("{line} {}", quote(it.next().unwrap()));
        }
        lines.push(line);
    }
    lines.join(" \\\n  ")
}

/// The Spark UI's address, from the driver's log: Spark 3 says `Bound SparkUI to …, and started
/// at URL`; Spark 4 only names the port, on `host` (or the address Spark says it uses instead of
/// a loopback hostname).
pub fn ui_address(log: &str, host: &str) -> Option<String> {
    if let Some(url) = log
        .lines()
        .find(|l| l.contains("SparkUI") && l.contains("started at "))
        .and_then(|l| l.split("started at ").nth(1))
    {
        return Some(url.trim().to_string());
    }
    let port = ui_port(log)?;
    let host = log
        .lines()
        .find_map(|l| l.split("resolves to a loopback address: ").nth(1))
        .and_then(|r| r.split("; using ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or(host);
    Some(format!("http://{host}:{port}"))
}

/// A failed Spark activity's diagnosis, from what Spark says in its log (far above its last
/// lines, which are all a backend quotes), where Spark says something capstan understands.
pub fn refine(spec: &ActivitySpec, outcome: &mut capstan_engine::backend::ActivityOutcome) {
    if spec.recipe_kind.is_spark()
        && outcome.state == capstan_core::job::JobState::Failed
        && let Some(d) = std::fs::read_to_string(spec.log_path())
            .ok()
            .and_then(|log| diagnose(&log, spec))
    {
        outcome.diagnosis = Some(d);
    }
}

/// The port the Spark UI listens on, from the driver's log (Spark 4 names only the port).
pub fn ui_port(log: &str) -> Option<u16> {
    log.lines()
        .find_map(|l| {
            l.split("Successfully started service 'SparkUI' on port ")
                .nth(1)
        })?
        .trim()
        .trim_end_matches('.')
        .parse::<u16>()
        .ok()
}

/// What a failed Spark application's log says, in the user's words: which memory to raise.
pub fn diagnose(log: &str, spec: &ActivitySpec) -> Option<String> {
    let name = spec
        .spark
        .as_ref()
        .map_or("the default local Spark".to_string(), |s| {
            format!("Spark configuration '{}'", s.name)
        });
    let local = spec
        .spark
        .as_ref()
        .is_none_or(|s| s.master.value == SparkMaster::Local);
    if log.contains("java.lang.OutOfMemoryError") {
        let which = if local {
            "driver_memory (in local mode the executors run inside the driver)"
        } else {
            "executor_memory"
        };
        let detail = log
            .lines()
            .find(|l| l.contains("java.lang.OutOfMemoryError"))
            .map(|l| l.trim())
            .unwrap_or("");
        let detail = detail
            .find("java.lang.OutOfMemoryError")
            .map_or(detail, |i| &detail[i..]);
        return Some(format!(
            "Spark ran out of memory ({detail}): raise {which} of {name}, or process less data per task"
        ));
    }
    if log.contains("exceeding memory limits")
        || log.contains("OOMKilled")
        || log.contains("Container killed")
    {
        return Some(format!(
            "Spark executors were killed for exceeding their memory: raise executor_memory_overhead (or executor_memory) of {name}"
        ));
    }
    // What made the application fail, before any message logged on the way down: a 403 at
    // shutdown is no reason for a failure that an exception explains.
    if let Some(e) = exception(log, spec) {
        return Some(format!("the Spark application failed: {e}"));
    }
    // A refusal counts when it stopped the driver from managing its executors, not when it
    // is logged on the way down: Spark's shutdown deletes its services and executors with
    // `deletecollection`, which a Role may rightly not grant, and whatever it logs after it
    // began to stop explains nothing.
    let running = log
        .lines()
        .take_while(|l| !SHUTDOWN_MARKERS.iter().any(|m| l.contains(m)));
    if let Some(line) = running
        .filter(|l| l.contains("is forbidden: User") && l.contains("cannot "))
        .find(|l| !l.contains("cannot deletecollection ") && !l.contains("cannot delete "))
    {
        // The driver pod's service account lacks rights: quote who, and what it may not do.
        let who = line
            .split("is forbidden: ")
            .nth(1)
            .map(|w| {
                w.split(". ")
                    .next()
                    .unwrap_or(w)
                    .trim()
                    .trim_end_matches('.')
            })
            .unwrap_or("");
        return Some(format!(
            "the Spark driver may not manage its executors ({who}): give {name} a service_account \
             that may create, get, list, watch, patch and delete pods and configmaps in its namespace"
        ));
    }
    if log.contains("ExecutorLostFailure") {
        return Some(format!(
            "Spark lost executors while running (ExecutorLostFailure): see the log; if they ran out of memory, raise executor_memory_overhead of {name}"
        ));
    }
    None
}

/// Why a Spark application's executors could not work, from their logs (`(pod, log)`): the
/// first that could not reach its driver, quoted. On Kubernetes a driver that hands out an
/// address its executors cannot reach (`0.0.0.0`, a pod IP across a network policy) fails
/// with nothing but "lost executors" in its own log: the cause is in theirs.
pub fn executor_trouble(logs: &[(String, String)]) -> Option<String> {
    const UNREACHABLE: [&str; 3] = [
        "Failed to connect to",
        "Cannot receive any reply from",
        "Connection refused",
    ];
    logs.iter().find_map(|(pod, log)| {
        let line = log
            .lines()
            .find(|l| UNREACHABLE.iter().any(|u| l.contains(u)))?;
        let at = UNREACHABLE
            .iter()
            .filter_map(|u| line.find(u))
            .min()
            .unwrap_or(0);
        let what = line[at..].trim();
        Some(format!(
            "Spark executors could not reach their driver ({pod}: {what}): the executors' pods must reach the driver's pod and resolve its service (cluster DNS, network policies); their logs are in the job's executors/ folder"
        ))
    })
}

/// Lines a Spark driver logs once it has begun to stop (its shutdown hook, `SparkContext.stop`).
const SHUTDOWN_MARKERS: [&str; 4] = [
    "Invoking stop() from shutdown hook",
    "Shutdown hook called",
    "SparkContext: Stopping",
    "SparkContext is stopping",
];

/// The exception that ended a Spark application, from its driver's log, with the package
/// names dropped (`AnalysisException: [PATH_NOT_FOUND] Path does not exist: …`): a Python
/// traceback's error (for a `Py4JJavaError`, the Java exception it carries, on the next line
/// after `: `), else the JVM's `Exception in thread "main"`.
pub fn exception(log: &str, spec: &ActivitySpec) -> Option<String> {
    // The job's log prefixes each line with its time and stream (`2026-…Z o `); PySpark's
    // driver sends the recipe's traceback to stdout.
    let lines: Vec<String> = log
        .lines()
        .map(|l| {
            l.split_once(' ')
                .filter(|(time, _)| time.ends_with('Z') && time.contains('T'))
                .and_then(|(_, rest)| rest.strip_prefix("o ").or(rest.strip_prefix("e ")))
                .unwrap_or(l)
                .to_string()
        })
        .collect();
    if let Some(tb) = capstan_engine::diagnose::traceback(&lines) {
        let mut error = lines[tb.error_line].trim();
        if error.contains("Py4JJavaError")
            && let Some(java) = lines
                .get(tb.error_line + 1)
                .and_then(|l| l.trim().strip_prefix(": "))
        {
            error = java;
        }
        // The SQL runner is capstan's; a Spark SQL recipe's place is its query, which Spark's
        // message points into.
        let place = tb.place.filter(|p| !p.starts_with(SQL_RUNNER_FILE));
        let error = short_name(error);
        return Some(match place {
            Some(p) if spec.recipe_kind != capstan_core::model::RecipeKind::SparkSql => {
                format!("{error} (at {p})")
            }
            _ => error,
        });
    }
    let main = lines.iter().rev().find_map(|l| {
        l.split_once("Exception in thread \"main\" ")
            .map(|(_, e)| e)
    })?;
    Some(short_name(main.trim()))
}

/// `org.apache.spark.sql.AnalysisException: msg` → `AnalysisException: msg`.
fn short_name(error: &str) -> String {
    match error.split_once(':') {
        Some((name, rest))
            if name.contains('.')
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '.' || c == '_' || c == '$') =>
        {
            format!("{}:{rest}", name.rsplit('.').next().unwrap_or(name))
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_core::model::ExecKind;

    fn spec() -> ActivitySpec {
        let mut s = ActivitySpec::bare(7, 1, "/tmp/a".into(), "/tmp/h".into(), ExecKind::Local);
        s.project = "sales".into();
        s.recipe = "totals".into();
        s
    }

    #[test]
    fn without_a_spark_configuration_spark_runs_locally_on_every_core() {
        let mut spec = spec();
        spec.recipe_kind = capstan_core::model::RecipeKind::SparkSql;
        spec.inputs = vec!["orders".into(), "customers".into()];
        spec.outputs = vec!["totals".into()];
        let s = submission(&spec, "/w", "q.sql").unwrap();
        assert_eq!(
            s.args,
            [
                "--master",
                "local[*]",
                "--name",
                "capstan-7-sales-totals",
                "--driver-java-options",
                "-Dlog4j.configurationFile=file:/w/capstan-log4j2.properties",
                "/w/capstan_sql_runner.py",
                "/w/q.sql",
                r#"["orders","customers"]"#,
                r#"["totals"]"#,
            ]
        );
        let names: Vec<&str> = s.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [SQL_RUNNER_FILE, LOG4J2_FILE]);
        assert_eq!(s.files[0].1, SQL_RUNNER.as_bytes());
        // Locally, the driver's console is at WARN and its full log is in the activity's
        // folder, beside the work folder (which is cleaned up).
        let log4j = String::from_utf8(s.files[1].1.clone()).unwrap();
        assert!(
            log4j.contains("rootLogger.appenderRef.console.level = warn\n"),
            "{log4j}"
        );
        assert!(
            log4j.contains("appender.file.fileName = /spark-driver.log\n"),
            "{log4j}"
        );
    }

    #[test]
    fn a_configurations_log_level_and_driver_options_reach_the_driver() {
        let mut files = capstan_core::load::HomeFiles::default();
        files.toml.insert("capstan.toml".into(), b"".to_vec());
        files.toml.insert(
            "spark-configs.toml".into(),
            b"[spark_config.chatty]\nmaster = \"local\"\nlog_level = \"info\"\nconf = { \"spark.driver.extraJavaOptions\" = \"-Dmine=1\" }\n"
                .to_vec(),
        );
        let (home, diags) = capstan_core::load::load(std::path::Path::new("/h"), &files);
        assert!(!diags.has_errors(), "{:?}", diags.list);
        let mut spec = spec();
        spec.spark = Some(home.spark_configs["chatty"].clone());
        let s = submission(&spec, "/a/work", "t.py").unwrap();
        let line = command_line(&s.args);
        assert!(
            line.contains("--driver-java-options '-Dlog4j.configurationFile=file:/a/work/capstan-log4j2.properties -Dmine=1'"),
            "{line}"
        );
        assert!(!line.contains("spark.driver.extraJavaOptions"), "{line}");
        let log4j = &s.files.iter().find(|(n, _)| n == LOG4J2_FILE).unwrap().1;
        let log4j = String::from_utf8_lossy(log4j);
        assert!(log4j.contains("console.level = info\n"), "{log4j}");
        assert!(
            log4j.contains("fileName = /a/spark-driver.log\n"),
            "{log4j}"
        );
    }

    #[test]
    fn on_kubernetes_the_driver_pod_runs_in_client_mode_and_dynamic_allocation_tracks_shuffles() {
        let mut files = capstan_core::load::HomeFiles::default();
        files.toml.insert("capstan.toml".into(), b"".to_vec());
        files.toml.insert(
            "spark-configs.toml".into(),
            b"[spark_config.k]\nmaster = \"kubernetes\"\nimage = \"spark:4\"\nnamespace = \"ns\"\ndynamic_allocation = true\n"
                .to_vec(),
        );
        let (home, diags) = capstan_core::load::load(std::path::Path::new("/h"), &files);
        assert!(!diags.has_errors(), "{:?}", diags.list);
        let mut spec = spec();
        spec.recipe_kind = capstan_core::model::RecipeKind::PySpark;
        spec.image = Some("spark:4".into());
        spec.namespace = Some("ns".into());
        spec.spark = Some(home.spark_configs["k"].clone());
        // As resolution has it: a Kubernetes Spark configuration runs in a pod.
        spec.kind = ExecKind::Kubernetes;
        let s = submission(&spec, "/capstan/work", "totals.py").unwrap();
        let line = command_line(&s.args);
        for setting in [
            "--master k8s://https://kubernetes.default.svc",
            "--deploy-mode client",
            "--conf spark.dynamicAllocation.enabled=true",
            "--conf spark.dynamicAllocation.shuffleTracking.enabled=true",
            "--conf spark.executor.memoryOverheadFactor=0.4",
            "--conf 'spark.kubernetes.driver.pod.name=$(CAPSTAN_POD_NAME)'",
            "--conf spark.kubernetes.executor.podTemplateFile=/capstan/work/executor-pod.yaml",
            // Executors get a driver address they can reach: its pod's IP, not its bind address.
            "--conf 'spark.driver.host=$(CAPSTAN_POD_IP)'",
            "--conf spark.kubernetes.executor.useDriverPodIP=false",
        ] {
            assert!(line.contains(setting), "{setting} missing from\n{line}");
        }
        assert_eq!(
            s.args.last().map(String::as_str),
            Some("/capstan/work/totals.py")
        );
        assert!(s.files.iter().any(|(n, _)| n == EXECUTOR_TEMPLATE));
        // A pod's code is a read-only ConfigMap: no full log file there.
        let log4j = &s.files.iter().find(|(n, _)| n == LOG4J2_FILE).unwrap().1;
        assert!(!String::from_utf8_lossy(log4j).contains("appender.file"));
    }

    #[test]
    fn the_command_line_keeps_each_option_with_its_value_and_quotes_what_a_shell_would_split() {
        let args: Vec<String> = [
            "--master",
            "local[2]",
            "--conf",
            "spark.app.name=my job",
            "app.py",
            "--flag-for-app",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            command_line(&args),
            "spark-submit \\\n  --master local[2] \\\n  --conf 'spark.app.name=my job' \\\n  app.py \\\n  --flag-for-app"
        );
    }

    #[test]
    fn the_spark_ui_address_is_read_from_the_driver_log() {
        let spark3 = "25/11/27 10:00:00 INFO SparkUI: Bound SparkUI to 0.0.0.0, and started at http://worker-3:4041\n";
        assert_eq!(
            ui_address(spark3, "h").as_deref(),
            Some("http://worker-3:4041")
        );
        let spark4 = "26/11/28 01:39:38 WARN Utils: Your hostname, vm, resolves to a loopback address: 127.0.0.1; using 192.0.2.2 instead (on interface eth0)\n\
                      26/11/28 01:39:40 WARN Utils: Service 'SparkUI' could not bind on port 4040. Attempting port 4041.\n\
                      26/11/28 01:39:40 INFO Utils: Successfully started service 'SparkUI' on port 4041.\n";
        assert_eq!(
            ui_address(spark4, "vm").as_deref(),
            Some("http://192.0.2.2:4041")
        );
        assert_eq!(
            ui_address(&spark4[spark4.find('\n').unwrap() + 1..], "vm").as_deref(),
            Some("http://vm:4041")
        );
        assert_eq!(
            ui_address("INFO SparkContext: Running Spark version 4.3.0", "vm"),
            None
        );
    }

    #[test]
    fn spark_failures_are_diagnosed_in_terms_of_the_setting_to_raise() {
        // Lines as Spark 4 prints them.
        let oom = "25/11/27 10:00:01 ERROR Executor: Exception in task 0.0 in stage 1.0 (TID 1)\n\
                   java.lang.OutOfMemoryError: Java heap space\n\tat java.base/java.util.Arrays.copyOf(Arrays.java:3537)\n";
        let d = diagnose(oom, &spec()).unwrap();
        assert_eq!(
            d,
            "Spark ran out of memory (java.lang.OutOfMemoryError: Java heap space): raise driver_memory (in local mode the executors run \
             inside the driver) of the default local Spark, or process less data per task"
        );
        let killed = "ERROR TaskSchedulerImpl: Lost executor 2 on 10.0.0.5: The executor with id 2 exited with exit code 137(SIGKILL, possible container OOM).\n\
                      Container killed by the kernel: OOMKilled\n";
        assert!(
            diagnose(killed, &spec())
                .unwrap()
                .starts_with("Spark executors were killed for exceeding their memory")
        );
        let lost = "org.apache.spark.SparkException: Job aborted due to stage failure: ExecutorLostFailure (executor 1 exited)";
        assert!(
            diagnose(lost, &spec())
                .unwrap()
                .contains("ExecutorLostFailure")
        );
        let forbidden = "26/11/28 03:10:01 ERROR SparkContext: Error initializing SparkContext.\n\
             io.fabric8.kubernetes.client.KubernetesClientException: Failure executing: POST at: \
             https://kubernetes.default.svc/api/v1/namespaces/capstan-spark/configmaps. Message: Forbidden!Configured service \
             account doesn't have access. Service account may have been revoked. configmaps is forbidden: User \
             \"system:serviceaccount:capstan-spark:default\" cannot create resource \"configmaps\" in API group \"\" in the \
             namespace \"capstan-spark\".\n";
        assert_eq!(
            diagnose(forbidden, &spec()).unwrap(),
            "the Spark driver may not manage its executors (User \"system:serviceaccount:capstan-spark:default\" cannot \
             create resource \"configmaps\" in API group \"\" in the namespace \"capstan-spark\"): give the default local \
             Spark a service_account that may create, get, list, watch, patch and delete pods and configmaps in its namespace"
        );
        assert_eq!(
            diagnose("INFO SparkContext: Running Spark version 4.3.0", &spec()),
            None
        );
        let executors = vec![
            ("exec-1".to_string(), "2026-12-01T10:00:01Z 26/12/01 10:00:01 INFO CoarseGrainedExecutorBackend: Started daemon\n".to_string()),
            (
                "exec-2".to_string(),
                "2026-12-01T10:00:02Z 26/12/01 10:00:02 ERROR TransportClientFactory: Exception: java.io.IOException: \
                 Failed to connect to /0.0.0.0:35995\n"
                    .to_string(),
            ),
        ];
        assert_eq!(
            executor_trouble(&executors).unwrap(),
            "Spark executors could not reach their driver (exec-2: Failed to connect to /0.0.0.0:35995): the executors' \
             pods must reach the driver's pod and resolve its service (cluster DNS, network policies); their logs are in \
             the job's executors/ folder"
        );
        assert_eq!(executor_trouble(&executors[..1]), None);
        // What a real cluster logged when executors could not reach their driver: the 403 of
        // the shutdown's `deletecollection` is no diagnosis, and asks for no rights.
        let shutdown = "26/12/01 10:00:05 INFO SparkContext: Invoking stop() from shutdown hook
             26/12/01 10:00:05 WARN ExecutorPodsSnapshotsStoreImpl: services is forbidden: User              \"system:serviceaccount:capstan-spark:capstan-spark\" cannot deletecollection resource \"services\" in API group \"\"              in the namespace \"capstan-spark\".\n";
        assert_eq!(diagnose(shutdown, &spec()), None);
        let delete_anytime = "26/12/01 10:00:01 WARN Utils: services is forbidden: User \"system:serviceaccount:s:d\" cannot deletecollection resource \"services\"\n";
        assert_eq!(diagnose(delete_anytime, &spec()), None);
        // A refusal to create what the executors need still is one, before the shutdown.
        let before = format!(
            "{forbidden}26/12/01 10:00:05 INFO SparkContext: Invoking stop() from shutdown hook\n"
        );
        assert!(
            diagnose(&before, &spec())
                .unwrap()
                .starts_with("the Spark driver may not manage its executors")
        );
    }

    #[test]
    fn a_failed_application_is_diagnosed_by_its_exception_not_its_last_log_line() {
        let analysis = "Traceback (most recent call last):\n\
             \x20 File \"/h/state/jobs/3/a0-0/work/totals.py\", line 4, in <module>\n\
             \x20   df = spark.read.parquet(path)\n\
             pyspark.errors.exceptions.captured.AnalysisException: [PATH_NOT_FOUND] Path does not exist: file:/h/data/sample/wine/data.parquet. SQLSTATE: 42K03\n\
             26/12/01 10:00:00 INFO SparkContext: Successfully stopped SparkContext\n";
        assert_eq!(
            diagnose(analysis, &spec()).unwrap(),
            "the Spark application failed: AnalysisException: [PATH_NOT_FOUND] Path does not exist: \
             file:/h/data/sample/wine/data.parquet. SQLSTATE: 42K03 (at totals.py line 4)"
        );
        let py4j = "Traceback (most recent call last):\n\
             \x20 File \"/w/totals.py\", line 9, in <module>\n\
             py4j.protocol.Py4JJavaError: An error occurred while calling o45.parquet.\n\
             : org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 failed\n\
             \tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages(DAGScheduler.scala:2856)\n";
        assert_eq!(
            diagnose(py4j, &spec()).unwrap(),
            "the Spark application failed: SparkException: Job aborted due to stage failure: Task 0 failed (at totals.py line 9)"
        );
        let jvm = "Exception in thread \"main\" org.apache.spark.sql.AnalysisException: [TABLE_OR_VIEW_NOT_FOUND] The table or view `wines` cannot be found.\n";
        assert_eq!(
            diagnose(jvm, &spec()).unwrap(),
            "the Spark application failed: AnalysisException: [TABLE_OR_VIEW_NOT_FOUND] The table or view `wines` cannot be found."
        );
        // As the job's log has it: each line with its time and stream.
        let logged: String = analysis
            .lines()
            .map(|l| format!("2026-12-01T10:00:00.000001Z o {l}\n"))
            .collect();
        assert_eq!(diagnose(&logged, &spec()), diagnose(analysis, &spec()));
        // The harmless 403 of Spark's shutdown is no diagnosis when an exception explains the end.
        let both = format!(
            "{analysis}26/12/01 ERROR Utils: services is forbidden: User \"system:serviceaccount:s:d\" cannot deletecollection resource \"services\"\n"
        );
        assert!(
            diagnose(&both, &spec())
                .unwrap()
                .contains("AnalysisException")
        );
        // A Spark SQL recipe's place is in its query, not in capstan's runner.
        let mut sql = spec();
        sql.recipe_kind = capstan_core::model::RecipeKind::SparkSql;
        let runner = analysis.replace("totals.py", SQL_RUNNER_FILE);
        assert!(
            diagnose(&runner, &sql)
                .unwrap()
                .ends_with("SQLSTATE: 42K03")
        );
    }
}
