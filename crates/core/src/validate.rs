//! Cross-reference checks: everything that needs more than one file to be wrong.

use std::path::Path;

use crate::diag::{Diagnostics, Loc};
use crate::load::HomeFiles;
use crate::model::*;
use crate::quantity::Memory;
use crate::resolve::{ResolveError, RunRequest, resolve};
use crate::toml_read::unknown_help;

/// The smallest memory limit the Docker engine accepts.
pub const DOCKER_MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// Spark refuses drivers and executors with less than 1.5 × its 300 MiB reserved memory.
pub const SPARK_MIN_MEMORY: u64 = 471_859_200;

/// Spark settings capstan sets itself (from the configuration's fields, or for the driver pod
/// and its executors); setting them in `conf` would silently fight it, so they are refused with
/// what to do instead. A key ending in `/` is a prefix.
pub const SPARK_OWNED_CONF: [(&str, &str); 23] = [
    ("spark.master", "set master / master_url instead"),
    (
        "spark.kubernetes.executor.useDriverPodIP",
        "capstan sets it so that executors reach their driver",
    ),
    ("spark.submit.deployMode", "set master instead"),
    (
        "spark.kubernetes.container.image",
        "set image / base_image instead",
    ),
    ("spark.kubernetes.namespace", "set namespace instead"),
    (
        "spark.kubernetes.context",
        "set the cluster's context instead",
    ),
    (
        "spark.kubernetes.authenticate.driver.serviceAccountName",
        "set service_account instead",
    ),
    ("spark.driver.cores", "set driver_cores instead"),
    ("spark.driver.memory", "set driver_memory instead"),
    ("spark.executor.cores", "set executor_cores instead"),
    ("spark.executor.memory", "set executor_memory instead"),
    (
        "spark.executor.memoryOverhead",
        "set executor_memory_overhead instead",
    ),
    ("spark.executor.instances", "set executor_instances instead"),
    (
        "spark.dynamicAllocation.enabled",
        "set dynamic_allocation instead",
    ),
    ("spark.pyspark.python", "set the recipe's code_env instead"),
    (
        "spark.kubernetes.container.image.pullSecrets",
        "set image_pull_secrets instead",
    ),
    (
        "spark.submit.pyFiles",
        "put the modules in the project's lib/ folder: capstan ships it to the executors",
    ),
    (
        "spark.kubernetes.executor.podTemplateFile",
        "set node_selector and tolerations instead",
    ),
    (
        "spark.kubernetes.driver.pod.name",
        "remove it: capstan names the driver pod, which owns the executors",
    ),
    (
        "spark.driver.host",
        "remove it: the executors reach the driver pod at its own address",
    ),
    (
        "spark.driver.bindAddress",
        "remove it: the driver pod listens on all its addresses",
    ),
    (
        "spark.kubernetes.executor.deleteOnTermination",
        "remove it: executors never outlive their job",
    ),
    (
        "spark.kubernetes.executor.label.capstan.io/",
        "remove it: capstan's labels attribute the executors to their job",
    ),
];

struct V<'a> {
    home: &'a Home,
    diags: &'a mut Diagnostics,
}

impl V<'_> {
    fn error(&mut self, loc: Loc, field: &str, message: impl Into<String>, help: Option<String>) {
        self.diags
            .error_at(&self.home.sources, loc, field, message, help);
    }

    fn reference<T>(
        &mut self,
        name: &Sourced<String>,
        field: &str,
        map: &std::collections::BTreeMap<String, T>,
        what: &str,
    ) {
        if !map.contains_key(&name.value) {
            let names: Vec<&str> = map.keys().map(String::as_str).collect();
            self.error(
                name.loc,
                field,
                format!("unknown {what} `{}`", name.value),
                Some(unknown_help(&name.value, &names, what)),
            );
        }
    }

    fn groups(&mut self, allowed: &Allowed, field: &str) {
        if let Allowed::Groups(groups) = allowed {
            for g in groups {
                self.reference(g, field, &self.home.groups, "group");
            }
        }
    }

    fn file_exists(&mut self, files: &HomeFiles, path: &Sourced<String>, field: &str) {
        let rel = Path::new(&path.value);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            self.error(
                path.loc,
                field,
                format!("`{}` must be a path inside the home", path.value),
                None,
            );
        } else if !files.exists(rel) {
            self.error(
                path.loc,
                field,
                format!("file `{}` does not exist in the home", path.value),
                None,
            );
        }
    }
}

pub(crate) fn validate(home: &Home, files: &HomeFiles, diags: &mut Diagnostics) {
    let mut v = V { home, diags };

    for c in home.exec_configs.values() {
        let f = |k: &str| format!("exec_config.{}.{k}", c.name);
        v.groups(&c.allowed, &f("allowed_groups"));
        if let Some(b) = &c.base_image {
            v.reference(b, &f("base_image"), &home.base_images, "base image");
        }
        if let (Some(_), Some(b)) = (&c.image, &c.base_image) {
            v.error(
                b.loc,
                &f("base_image"),
                "set either `image` or `base_image`, not both",
                None,
            );
        }
        let kind = c.kind.value;
        let only_for = |k: ExecKind| format!("only used by kind = \"{k}\"");
        if kind != ExecKind::Kubernetes {
            let k8s_fields = [
                ("namespace", c.namespace.as_ref().map(|x| x.loc)),
                ("context", c.context.as_ref().map(|x| x.loc)),
                ("service_account", c.service_account.as_ref().map(|x| x.loc)),
                ("pod_patch", c.pod_patch.as_ref().map(|x| x.loc)),
                ("pending_timeout", c.pending_timeout.as_ref().map(|x| x.loc)),
                (
                    "node_selector",
                    c.node_selector.values().next().map(|x| x.loc),
                ),
                ("tolerations", c.tolerations.first().map(|x| x.loc)),
                (
                    "image_pull_secrets",
                    c.image_pull_secrets.first().map(|x| x.loc),
                ),
            ];
            for (key, loc) in k8s_fields {
                if let Some(loc) = loc {
                    v.error(
                        loc,
                        &f(key),
                        format!("`{key}` is for Kubernetes configurations"),
                        Some(only_for(ExecKind::Kubernetes)),
                    );
                }
            }
        }
        if kind != ExecKind::Docker {
            let d = &c.docker;
            let loc = d
                .network
                .as_ref()
                .map(|x| x.loc)
                .or(d.runtime.as_ref().map(|x| x.loc))
                .or(d.cap_add.first().map(|x| x.loc))
                .or(d.extra_hosts.first().map(|x| x.loc))
                .or(d.volumes.first().map(|x| x.loc));
            if let Some(loc) = loc {
                v.error(
                    loc,
                    &f("docker"),
                    "`docker` options are for Docker configurations",
                    Some(only_for(ExecKind::Docker)),
                );
            }
        }
        if kind == ExecKind::Local {
            for (key, loc) in [
                ("image", c.image.as_ref().map(|x| x.loc)),
                ("base_image", c.base_image.as_ref().map(|x| x.loc)),
                ("registry", c.registry.as_ref().map(|x| x.loc)),
                ("shm_size", c.shm_size.as_ref().map(|x| x.loc)),
            ] {
                if let Some(loc) = loc {
                    v.error(
                        loc,
                        &f(key),
                        format!("`{key}` has no effect: local execution runs no container"),
                        Some("use kind = \"docker\" or \"kubernetes\"".into()),
                    );
                }
            }
            if let Some(g) = &c.gpus
                && g.value > 0
            {
                v.error(
                    g.loc,
                    &f("gpus"),
                    "local execution cannot reserve GPUs",
                    Some("use kind = \"docker\" or \"kubernetes\"".into()),
                );
            }
        } else if c.image.is_none()
            && c.base_image.is_none()
            && !home.base_images.contains_key("default")
        {
            v.error(
                c.loc,
                &f("base_image"),
                "no image: set `base_image` (a base image defined in images.toml) or `image`",
                Some("or define [base_image.default] in images.toml".into()),
            );
        }
        if kind == ExecKind::Docker
            && let Some(m) = &c.memory_limit
            && m.value.bytes() < DOCKER_MIN_MEMORY
        {
            v.error(
                m.loc,
                &f("memory_limit"),
                format!(
                    "{} is below the Docker engine's minimum of {}",
                    m.value,
                    Memory::from_bytes(DOCKER_MIN_MEMORY)
                ),
                None,
            );
        }
        if let Some(h) = &c.pre_push_hook {
            if c.registry.is_none() {
                v.error(
                    h.loc,
                    &f("pre_push_hook"),
                    "a pre-push hook needs a `registry` to push to",
                    None,
                );
            } else if !Path::new(&h.value).is_absolute() {
                v.file_exists(files, h, &f("pre_push_hook"));
            }
        }
        if let Some(m) = &c.max_concurrent
            && m.value == 0
        {
            v.error(
                m.loc,
                &f("max_concurrent"),
                "0 would never run anything",
                Some("expected at least 1".into()),
            );
        }
    }

    for s in home.spark_configs.values() {
        let f = |k: &str| format!("spark_config.{}.{k}", s.name);
        v.groups(&s.allowed, &f("allowed_groups"));
        if let Some(b) = &s.base_image {
            v.reference(b, &f("base_image"), &home.base_images, "base image");
            if let Some(base) = home.base_images.get(&b.value)
                && !base.with_spark
            {
                v.error(
                    b.loc,
                    &f("base_image"),
                    format!("base image `{}` has no Spark: Spark's pods need its Java, pyspark and entrypoint", b.value),
                    Some(format!("set `with_spark = true` in [base_image.{}], or name a base image that has it", b.value)),
                );
            }
        }
        for (key, value) in &s.conf {
            if let Some((_, instead)) = SPARK_OWNED_CONF
                .iter()
                .find(|(k, _)| k == key || k.ends_with('/') && key.starts_with(k))
            {
                v.error(
                    value.loc,
                    &f(&format!("conf.\"{key}\"")),
                    format!("`{key}` is set by capstan"),
                    Some(instead.to_string()),
                );
            }
        }
        for (key, m) in [
            ("driver_memory", &s.driver_memory),
            ("executor_memory", &s.executor_memory),
        ] {
            if let Some(m) = m
                && m.value.bytes() < SPARK_MIN_MEMORY
            {
                v.error(
                    m.loc,
                    &f(key),
                    format!("{} is below Spark's minimum of 450Mi", m.value),
                    None,
                );
            }
        }
        if let (Some(o), Some(m)) = (&s.executor_memory_overhead, &s.executor_memory)
            && o.value >= m.value
        {
            v.error(
                o.loc,
                &f("executor_memory_overhead"),
                format!("an overhead of {} is not less than the executor memory of {}", o.value, m.value),
                Some("the overhead is memory outside the JVM heap, usually a tenth of executor_memory".into()),
            );
        }
        if s.dynamic_allocation.as_ref().is_some_and(|d| d.value)
            && let Some(i) = &s.executor_instances
        {
            v.error(
                i.loc,
                &f("executor_instances"),
                "fixed executor_instances contradicts dynamic_allocation = true",
                Some("remove one of them".into()),
            );
        }
        match s.master.value {
            SparkMaster::Standalone => match &s.master_url {
                Some(u) if !u.value.starts_with("spark://") => {
                    v.error(
                        u.loc,
                        &f("master_url"),
                        format!("`{}` is not a standalone master URL", u.value),
                        Some("expected spark://HOST:PORT".into()),
                    );
                }
                None => v.error(
                    s.master.loc,
                    &f("master_url"),
                    "a standalone Spark configuration needs `master_url`",
                    Some("expected spark://HOST:PORT".into()),
                ),
                _ => {}
            },
            SparkMaster::Local => {
                for (key, loc) in [
                    ("namespace", s.namespace.as_ref().map(|x| x.loc)),
                    ("image", s.image.as_ref().map(|x| x.loc)),
                    ("master_url", s.master_url.as_ref().map(|x| x.loc)),
                ] {
                    if let Some(loc) = loc {
                        v.error(
                            loc,
                            &f(key),
                            format!("`{key}` has no effect with master = \"local\""),
                            None,
                        );
                    }
                }
            }
            SparkMaster::Kubernetes => {
                if s.image.is_none() && s.base_image.is_none() {
                    v.error(
                        s.master.loc,
                        &f("image"),
                        "a Spark configuration on Kubernetes needs the image of its driver and executors",
                        Some("set `base_image` (a base image with `with_spark = true`) or `image`".into()),
                    );
                }
            }
        }
    }

    for c in home.clusters.values() {
        v.groups(&c.allowed, &format!("cluster.{}.allowed_groups", c.name));
    }

    for b in home.base_images.values() {
        for file in &b.files {
            v.file_exists(files, file, &format!("base_image.{}.files", b.name));
        }
    }

    for e in home.code_envs.values() {
        let f = |k: &str| format!("code_env.{}.{k}", e.name);
        if let BuildFor::List(list) = &e.build_for.value {
            for n in list {
                v.reference(
                    n,
                    &f("build_for"),
                    &home.exec_configs,
                    "execution configuration",
                );
            }
        }
        for n in &e.build_for_spark {
            match home.spark_configs.get(&n.value) {
                None => v.reference(n, &f("build_for_spark"), &home.spark_configs, "Spark configuration"),
                Some(s) if s.master.value != SparkMaster::Kubernetes => v.error(
                    n.loc,
                    &f("build_for_spark"),
                    format!(
                        "Spark configuration `{}` does not run on Kubernetes, so no image is built for it: a Spark recipe on it gets \
                         its code environment as a venv, or in the image built for its execution configuration",
                        s.name
                    ),
                    Some(format!("remove \"{}\" from build_for_spark; execution configurations go in build_for", s.name)),
                ),
                Some(_) => {}
            }
        }
        for (key, file) in [
            ("requirements_file", &e.requirements_file),
            ("constraints_file", &e.constraints_file),
        ] {
            if let Some(file) = file {
                v.file_exists(files, file, &f(key));
            }
        }
    }

    for u in home.users.values() {
        for g in &u.groups {
            v.reference(g, &format!("user.{}.groups", u.name), &home.groups, "group");
        }
    }
    // Two users sharing a token would be indistinguishable to the daemon.
    let mut seen = std::collections::BTreeMap::new();
    for u in home.users.values() {
        for t in &u.tokens {
            if let Some(other) = seen.insert(t.sha256.clone(), u.name.clone()) {
                v.error(
                    t.loc,
                    &format!("user.{}.tokens", u.name),
                    format!("this token hash is also a token of user `{other}`"),
                    None,
                );
            }
        }
    }

    for p in home.projects.values() {
        for m in p.models.values() {
            if let Some(d) = p.datasets.get(&m.name) {
                v.error(
                    m.loc,
                    "model",
                    format!(
                        "`{}` is both a dataset (line {}) and a saved model of project `{}`",
                        m.name, d.loc.line, p.key
                    ),
                    Some("give the saved model a name of its own".into()),
                );
            }
        }
        for g in &p.permissions {
            v.reference(&g.group, "project.permissions", &home.groups, "group");
        }
        for r in p.recipes.values() {
            for d in r.inputs.iter().chain(&r.outputs) {
                // ML recipes read and write saved models too.
                let model = r.kind.value.is_ml() && p.models.contains_key(&d.value);
                if !p.datasets.contains_key(&d.value) && !model {
                    let names: Vec<&str> = p.datasets.keys().map(String::as_str).collect();
                    v.error(
                        d.loc,
                        "inputs/outputs",
                        format!("unknown dataset `{}` in project `{}`", d.value, p.key),
                        Some(unknown_help(&d.value, &names, "dataset")),
                    );
                }
            }
            for o in &r.outputs {
                if r.inputs.iter().any(|i| i.value == o.value) {
                    v.error(
                        o.loc,
                        "outputs",
                        format!("dataset `{}` is both an input and an output", o.value),
                        None,
                    );
                }
            }
            // Resolve every recipe as the home stands: this finds unknown names, incompatible
            // configuration/cluster pairs, missing namespaces and overrides above limits.
            let resolved = resolve(home, &p.key, &r.name, &RunRequest::default());
            if let Ok(res) = &resolved
                && res.on_spark()
            {
                spark_placement(&mut v, home, r, res);
            }
            if let Err(errors) = resolved {
                for e in errors {
                    if let ResolveError::Invalid {
                        field,
                        message,
                        help,
                        loc,
                    } = e
                    {
                        let loc = loc.unwrap_or(r.loc);
                        v.error(loc, field, message, help);
                    }
                }
            }
        }
    }

    for p in home.projects.values() {
        for s in p.schedules.values() {
            schedule_checks(&mut v, home, p, s);
        }
    }

    // The flow of each project must be a graph: one writer per dataset, no cycles.
    v.diags.list.extend(crate::flow::graph_checks(home));

    // The server's addresses: a typo here would otherwise surface only when the daemon starts
    // (a bind) or when the first container calls back (a public URL).
    if let Some(b) = &home.instance.server_bind
        && let Err(why) = check_bind(&b.value)
    {
        v.error(
            b.loc,
            "server.bind",
            why,
            Some("an address and port like `127.0.0.1:8420` or `0.0.0.0:8420`".into()),
        );
    }
    if let Some(u) = &home.instance.server_public_url
        && let Err(why) = check_url(&u.value)
    {
        v.error(
            u.loc,
            "server.public_url",
            why,
            Some("a URL like `http://capstan.example.com:8420`".into()),
        );
    }

    // The instance defaults on their own (a home with no project still gets them checked).
    let d = &home.instance.defaults;
    for (name, field, what) in [
        (
            &d.exec_config,
            "defaults.exec_config",
            "execution configuration",
        ),
        (&d.cluster, "defaults.cluster", "cluster"),
        (
            &d.spark_config,
            "defaults.spark_config",
            "Spark configuration",
        ),
        (&d.code_env, "defaults.code_env", "code environment"),
    ] {
        if let Some(name) = name {
            match what {
                "execution configuration" => v.reference(name, field, &home.exec_configs, what),
                "cluster" => v.reference(name, field, &home.clusters, what),
                "Spark configuration" => v.reference(name, field, &home.spark_configs, what),
                _ => v.reference(name, field, &home.code_envs, what),
            }
        }
    }
}

/// A schedule builds datasets of its project that recipes write, as a user who may run them.
fn schedule_checks(v: &mut V<'_>, home: &Home, p: &Project, s: &Schedule) {
    let f = |k: &str| format!("schedule.{}.{k}", s.name);
    for d in &s.build {
        if !p.datasets.contains_key(&d.value) {
            let names: Vec<&str> = p.datasets.keys().map(String::as_str).collect();
            v.error(
                d.loc,
                &f("build"),
                format!("unknown dataset `{}` in project `{}`", d.value, p.key),
                Some(unknown_help(&d.value, &names, "dataset")),
            );
        } else if crate::flow::producer(p, &d.value).is_none() {
            let written: Vec<&str> = p
                .datasets
                .keys()
                .map(String::as_str)
                .filter(|n| crate::flow::producer(p, n).is_some())
                .collect();
            v.error(
                d.loc,
                &f("build"),
                format!(
                    "no recipe of project `{}` writes dataset `{}`, so a build has nothing to run for it",
                    p.key, d.value
                ),
                Some(unknown_help(&d.value, &written, "dataset written by a recipe")),
            );
        }
    }
    if let Some(u) = &s.user {
        match home.users.get(&u.value) {
            None => v.reference(u, &f("user"), &home.users, "user"),
            Some(user) => {
                if let Err(denied) =
                    crate::access::check(home, &p.key, &user.name, user.admin, Permission::Run)
                {
                    v.error(
                        u.loc,
                        &f("user"),
                        format!("{}: the schedule's builds would be refused", denied.message),
                        Some("grant one of the user's groups `run` in [project.permissions], or name another user".into()),
                    );
                }
            }
        }
    }
}

/// Why `s` is not an address to listen on (`HOST:PORT`, the host an IP address).
fn check_bind(s: &str) -> Result<(), String> {
    s.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("`{s}` is not an IP address and port"))
}

/// Why `s` is not an http(s) URL with a host (and, if any, a port from 1 to 65535).
fn check_url(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{s}` is not a URL: {why}"));
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return bad("it must start with http:// or https://");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, Some(p)),
        _ => (authority, None),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '[' | ']' | ':'))
    {
        return bad("it has no valid host name");
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return bad("its port must be a number from 1 to 65535");
    }
    Ok(())
}

/// Checks that need facts about the machine `capstan check` runs on (the daemon's machine):
/// a Docker configuration asking for more CPUs than the local engine's host has can never run.
pub fn host_checks(home: &Home, host_cpus: u32) -> Vec<crate::Diagnostic> {
    let mut diags = Diagnostics::default();
    for c in home.exec_configs.values() {
        if c.kind.value != ExecKind::Docker {
            continue;
        }
        if let Some(cpu) = &c.cpu_limit
            && cpu.value.millis() > u64::from(host_cpus) * 1000
        {
            diags.error_at(
                &home.sources,
                cpu.loc,
                &format!("exec_config.{}.cpu_limit", c.name),
                format!("{} CPUs is more than this host's {host_cpus}", cpu.value),
                Some(
                    "the Docker engine refuses a container with more CPUs than its host has".into(),
                ),
            );
        }
    }
    diags.into_sorted()
}

/// Where a Spark recipe's driver runs, when it is not a Spark configuration on Kubernetes (whose
/// driver pod resolution checks): on the daemon's machine, or in the container of its execution
/// configuration, whose image must then carry Spark.
fn spark_placement(
    v: &mut V<'_>,
    home: &Home,
    r: &crate::model::Recipe,
    res: &crate::resolve::Resolution,
) {
    let Some(exec) = res
        .exec_config
        .value
        .as_ref()
        .and_then(|n| home.exec_configs.get(n))
    else {
        return;
    };
    if exec.kind.value == ExecKind::Local {
        return;
    }
    let base = exec.base_image.as_ref().map(|b| b.value.as_str());
    let base = base.or((exec.image.is_none()).then_some("default"));
    if let Some(b) = base.and_then(|b| home.base_images.get(b))
        && !b.with_spark
    {
        // At the recipe's own exec_config when it has one, else at the recipe (the message
        // names the configuration it inherited).
        let loc = r.settings.exec_config.as_ref().map_or(r.loc, |e| e.loc);
        v.error(
            loc,
            "exec_config",
            format!(
                "Spark recipe `{}` runs in the {} of execution configuration `{}`, whose base image `{}` has no Spark",
                r.name,
                if exec.kind.value == ExecKind::Docker { "container" } else { "pod" },
                exec.name,
                b.name
            ),
            Some(format!("set `with_spark = true` in [base_image.{}], or use a configuration whose base image has it", b.name)),
        );
    }
}
