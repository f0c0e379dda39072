//! Loading a home: reading its files and decoding each kind of TOML file.
//!
//! Layout of a home (every file but `capstan.toml` is optional):
//!
//! ```text
//! capstan.toml            [instance], [defaults], [server]
//! exec-configs.toml       [exec_config.NAME]
//! spark-configs.toml      [spark_config.NAME]
//! clusters.toml           [cluster.NAME]
//! images.toml             [base_image.NAME], [code_env.NAME]
//! users.toml              [group.NAME], [user.NAME]
//! projects/KEY/project.toml         [project], [defaults], [dataset.NAME], [schedule.NAME]
//! projects/KEY/recipes/NAME.toml    one recipe; its code next to it (NAME.py, NAME.R, NAME.sh)
//! projects/KEY/lib/                 the project's shared code, shipped with every recipe
//! state/                            the daemon's database and logs (not configuration)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostics, Loc, SourceFile, SourceMap};
use crate::flow::BuildMode;
use crate::limits;
use crate::model::*;
use crate::schedule::{CRON_HELP, CatchUp, Cron, Tz};
use crate::toml_read::{Cx, Table, Value, check_name, type_name, unknown_help};

/// Folders of a home that hold state or data, not configuration; never scanned.
pub const NON_CONFIG_DIRS: [&str; 5] = ["state", "data", "models", ".git", "target"];

/// The files of a home, read into memory: TOML files with their bytes, others by path only.
///
/// Loading works on this rather than on the disk so tests (and fuzzing) can feed any bytes.
#[derive(Debug, Default, Clone)]
pub struct HomeFiles {
    pub toml: BTreeMap<PathBuf, Vec<u8>>,
    pub others: BTreeSet<PathBuf>,
}

impl HomeFiles {
    /// Reads a home folder. Only I/O errors on the folder itself are returned; unreadable files
    /// become diagnostics at load.
    pub fn read(root: &Path) -> std::io::Result<HomeFiles> {
        let mut files = HomeFiles::default();
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not a directory", root.display()),
            ));
        }
        walk(root, Path::new(""), 0, &mut files)?;
        Ok(files)
    }

    pub fn exists(&self, rel: &Path) -> bool {
        self.toml.contains_key(rel) || self.others.contains(rel)
    }
}

fn walk(root: &Path, rel: &Path, depth: usize, files: &mut HomeFiles) -> std::io::Result<()> {
    // Deep trees are not configuration; stop before a symlink loop or a huge data folder costs us.
    if depth > 8 {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let rel_path = rel.join(&name);
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            if depth == 0 && NON_CONFIG_DIRS.iter().any(|d| name == *d) {
                continue;
            }
            walk(root, &rel_path, depth + 1, files)?;
        } else if rel_path.extension().is_some_and(|e| e == "toml") {
            match std::fs::read(root.join(&rel_path)) {
                Ok(bytes) => {
                    files.toml.insert(rel_path, bytes);
                }
                Err(_) => {
                    // Recorded with no content; load reports it.
                    files.others.insert(rel_path);
                }
            }
        } else {
            files.others.insert(rel_path);
        }
    }
    Ok(())
}

/// Loads and validates a home from its files. Returns the home (as much of it as could be read)
/// and every problem found.
pub fn load(root: &Path, files: &HomeFiles) -> (Home, Diagnostics) {
    let mut loader = Loader {
        sources: SourceMap::default(),
        diags: Diagnostics::default(),
        files,
    };
    let mut home = Home {
        root: root.to_path_buf(),
        sources: SourceMap::default(),
        instance: Instance::default(),
        exec_configs: BTreeMap::new(),
        spark_configs: BTreeMap::new(),
        clusters: BTreeMap::new(),
        base_images: BTreeMap::new(),
        code_envs: BTreeMap::new(),
        groups: BTreeMap::new(),
        users: BTreeMap::new(),
        projects: BTreeMap::new(),
        images: BTreeMap::new(),
    };

    let instance_path = Path::new("capstan.toml");
    if files.toml.contains_key(instance_path) {
        loader.file(instance_path, |cx, t| {
            home.instance = decode_instance(cx, t)
        });
    } else {
        loader.diags.file_error(
            instance_path,
            "not a capstan home: capstan.toml is missing (create one with `capstan init DIR`)",
        );
    }
    loader.file(Path::new("exec-configs.toml"), |cx, t| {
        named_tables(
            cx,
            t,
            "exec_config",
            &mut home.exec_configs,
            decode_exec_config,
        )
    });
    loader.file(Path::new("spark-configs.toml"), |cx, t| {
        named_tables(
            cx,
            t,
            "spark_config",
            &mut home.spark_configs,
            decode_spark_config,
        )
    });
    loader.file(Path::new("clusters.toml"), |cx, t| {
        named_tables(cx, t, "cluster", &mut home.clusters, decode_cluster)
    });
    loader.file(Path::new("images.toml"), |cx, t| {
        named_tables(
            cx,
            t,
            "base_image",
            &mut home.base_images,
            decode_base_image,
        );
        named_tables(cx, t, "code_env", &mut home.code_envs, decode_code_env);
    });
    loader.file(Path::new("users.toml"), |cx, t| {
        named_tables(cx, t, "group", &mut home.groups, decode_group);
        named_tables(cx, t, "user", &mut home.users, decode_user);
    });

    // Projects: every folder under projects/ with a project.toml.
    let project_files: Vec<PathBuf> = files
        .toml
        .keys()
        .filter(|p| {
            let c: Vec<_> = p.components().collect();
            c.len() == 3 && c[0].as_os_str() == "projects" && c[2].as_os_str() == "project.toml"
        })
        .cloned()
        .collect();
    for path in project_files {
        let key = path
            .components()
            .nth(1)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut project = None;
        loader.file(&path, |cx, t| {
            if let Err(e) = check_name(&key) {
                cx.error(&(0..0), "", format!("project folder name: {e}"), None);
            }
            project = Some(decode_project(cx, t, &key, files));
        });
        let Some(mut project) = project else { continue };
        let recipe_dir = Path::new("projects").join(&key).join("recipes");
        let recipe_files: Vec<PathBuf> = files
            .toml
            .keys()
            .filter(|p| p.parent() == Some(recipe_dir.as_path()))
            .cloned()
            .collect();
        for rpath in recipe_files {
            let name = rpath
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            loader.file(&rpath, |cx, t| {
                if let Err(e) = check_name(&name) {
                    cx.error(&(0..0), "", format!("recipe file name: {e}"), None);
                }
                let recipe = decode_recipe(cx, t, &name, &recipe_dir, files);
                project.recipes.insert(name.clone(), recipe);
            });
        }
        home.projects.insert(key, project);
    }
    // A recipes folder without project.toml is almost certainly a mistake worth reporting.
    for p in files.toml.keys() {
        let c: Vec<_> = p.components().collect();
        if c.len() == 4 && c[0].as_os_str() == "projects" && c[2].as_os_str() == "recipes" {
            let key = c[1].as_os_str().to_string_lossy();
            if !home.projects.contains_key(key.as_ref()) {
                loader.diags.file_error(
                    p,
                    format!("recipe of project `{key}`, which has no projects/{key}/project.toml"),
                );
            }
        }
    }

    home.sources = loader.sources;
    let mut diags = loader.diags;
    crate::validate::validate(&home, files, &mut diags);
    (home, diags)
}

struct Loader<'f> {
    sources: SourceMap,
    diags: Diagnostics,
    files: &'f HomeFiles,
}

impl Loader<'_> {
    /// Parses one file (if present) and hands its top-level table to `decode`.
    fn file(&mut self, rel: &Path, decode: impl FnOnce(&mut Cx<'_>, &mut Table<'_, '_>)) {
        let Some(bytes) = self.files.toml.get(rel) else {
            if self.files.others.contains(rel) {
                self.diags.file_error(rel, "cannot read this file");
            }
            return;
        };
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t.to_string(),
            Err(e) => {
                let file = SourceFile::new(
                    rel.to_path_buf(),
                    String::from_utf8_lossy(bytes).into_owned(),
                );
                let id = self.sources.add(file);
                let loc = self.sources.loc(id, &(e.valid_up_to()..e.valid_up_to()));
                self.diags
                    .error_at(&self.sources, loc, "", "file is not valid UTF-8", None);
                return;
            }
        };
        let id = self.sources.add(SourceFile::new(rel.to_path_buf(), text));
        let text = &self.sources.get(id).text;
        let (doc, errors) = DeTable::parse_recoverable(text);
        let mut cx = Cx {
            sources: &self.sources,
            file: id,
            diags: &mut self.diags,
        };
        let had_syntax_errors = !errors.is_empty();
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            cx.error(
                &span,
                "",
                format!("invalid TOML: {}", e.message().trim()),
                None,
            );
        }
        // After a syntax error the recovered tree may be partial; decoding it would add noise
        // about "missing" fields that are only missing because of the syntax error.
        if had_syntax_errors {
            return;
        }
        let span = doc.span();
        let mut table = Table::new(doc.get_ref(), span, "");
        decode(&mut cx, &mut table);
        table.finish(&mut cx);
    }
}

/// Decodes `[PREFIX.NAME]` tables into `out`, keyed by name.
fn named_tables<T>(
    cx: &mut Cx<'_>,
    top: &mut Table<'_, '_>,
    prefix: &'static str,
    out: &mut BTreeMap<String, T>,
    decode: impl Fn(&mut Cx<'_>, &mut Table<'_, '_>, &str, Loc) -> T,
) {
    let Some(mut all) = top.sub_table(cx, prefix) else {
        return;
    };
    for (key, value) in all.entries() {
        let name = key.get_ref().to_string();
        let field = all.field(&name);
        if let Err(e) = check_name(&name) {
            cx.error(&key.span(), &field, e, None);
            continue;
        }
        let Some(table) = value.get_ref().as_table() else {
            cx.error(
                &value.span(),
                &field,
                format!("expected a table, found {}", type_name(value.get_ref())),
                Some(format!("write it as [{prefix}.{name}]")),
            );
            continue;
        };
        let mut t = Table::new(table, value.span(), field);
        let loc = cx.loc(&key.span());
        let item = decode(cx, &mut t, &name, loc);
        t.finish(cx);
        out.insert(name, item);
    }
    all.accept_all();
}

/// `[project.permissions]`: `GROUP = ["read", "run", …]`.
fn permissions(cx: &mut Cx<'_>, t: &mut Table<'_, '_>) -> Vec<Grant> {
    let Some(mut sub) = t.sub_table(cx, "permissions") else {
        return Vec::new();
    };
    let names: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
    let mut out = Vec::new();
    for (group, value) in sub.entries() {
        let field = sub.field(group.get_ref());
        let Some(items) = value.get_ref().as_array() else {
            cx.error(
                &value.span(),
                &field,
                format!(
                    "expected a list of permissions, found {}",
                    type_name(value.get_ref())
                ),
                Some(format!(
                    "for example `{} = [\"read\", \"run\"]`",
                    group.get_ref()
                )),
            );
            continue;
        };
        let mut permissions = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref().as_str().map(|s| (s, Permission::parse(s))) {
                Some((_, Some(p))) => permissions.push(p),
                Some((s, None)) => cx.error(
                    &item.span(),
                    &format!("{field}[{i}]"),
                    format!("unknown permission `{s}`"),
                    Some(unknown_help(s, &names, "permission")),
                ),
                None => cx.error(
                    &item.span(),
                    &format!("{field}[{i}]"),
                    format!("expected a permission, found {}", type_name(item.get_ref())),
                    Some(format!("one of: {}", names.join(", "))),
                ),
            }
        }
        out.push(Grant {
            group: Sourced {
                value: group.get_ref().to_string(),
                loc: cx.loc(&group.span()),
            },
            permissions,
        });
    }
    sub.accept_all();
    out
}

fn description(cx: &mut Cx<'_>, t: &mut Table<'_, '_>) -> Option<String> {
    t.str(cx, "description").map(|s| s.value)
}

fn allowed(cx: &mut Cx<'_>, t: &mut Table<'_, '_>) -> Allowed {
    match t.string_list(cx, "allowed_groups") {
        Some(list) => Allowed::Groups(list.value),
        None => Allowed::Everyone,
    }
}

/// Reads an enumerated string field; reports the valid choices (and the nearest) when wrong.
fn choice<T>(
    cx: &mut Cx<'_>,
    t: &mut Table<'_, '_>,
    key: &'static str,
    names: &[&str],
    parse: impl Fn(&str) -> Option<T>,
) -> Option<Sourced<T>> {
    let v = t.get(key)?;
    let field = t.field(key);
    let Some(s) = v.get_ref().as_str() else {
        cx.error(
            &v.span(),
            &field,
            format!("expected a string, found {}", type_name(v.get_ref())),
            Some(format!("one of: {}", names.join(", "))),
        );
        return None;
    };
    match parse(s) {
        Some(value) => Some(Sourced {
            value,
            loc: cx.loc(&v.span()),
        }),
        None => {
            cx.error(
                &v.span(),
                &field,
                format!("unknown value `{s}`"),
                Some(unknown_help(s, names, "value")),
            );
            None
        }
    }
}

fn required<T>(
    cx: &mut Cx<'_>,
    t: &Table<'_, '_>,
    key: &str,
    v: Option<T>,
    what: &str,
) -> Option<T> {
    if v.is_none() && t.get_quiet(key).is_none() {
        cx.error(
            &t.span,
            &t.field(key),
            format!("missing field `{key}`"),
            Some(format!("expected {what}")),
        );
    }
    v
}

impl<'t, 'i> Table<'t, 'i> {
    /// Looks a key up without marking it read (to tell "missing" from "present but bad").
    fn get_quiet(&self, key: &str) -> Option<&'t Value<'i>> {
        self.entries()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }
}

fn tolerations(cx: &mut Cx<'_>, t: &mut Table<'_, '_>) -> Vec<Sourced<Toleration>> {
    let mut out = Vec::new();
    let Some(v) = t.get("tolerations") else {
        return out;
    };
    let field = t.field("tolerations");
    let Some(items) = v.get_ref().as_array() else {
        cx.error(
            &v.span(),
            &field,
            format!(
                "expected an array of tables, found {}",
                type_name(v.get_ref())
            ),
            None,
        );
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let Some(table) = item.get_ref().as_table() else {
            cx.error(
                &item.span(),
                &format!("{field}[{i}]"),
                format!("expected a table, found {}", type_name(item.get_ref())),
                None,
            );
            continue;
        };
        let mut tt = Table::new(table, item.span(), format!("{field}[{i}]"));
        let operator = choice(cx, &mut tt, "operator", &["Equal", "Exists"], |s| {
            ["Equal", "Exists"].contains(&s).then(|| s.to_string())
        });
        let effect = choice(
            cx,
            &mut tt,
            "effect",
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            |s| {
                ["NoSchedule", "PreferNoSchedule", "NoExecute"]
                    .contains(&s)
                    .then(|| s.to_string())
            },
        );
        let tol = Toleration {
            key: tt.str(cx, "key").map(|s| s.value),
            operator: operator.map(|s| s.value),
            value: tt.str(cx, "value").map(|s| s.value),
            effect: effect.map(|s| s.value),
            toleration_seconds: tt
                .count(cx, "toleration_seconds", limits::TOLERATION_SECONDS)
                .map(|s| s.value),
        };
        tt.finish(cx);
        out.push(Sourced {
            value: tol,
            loc: cx.loc(&item.span()),
        });
    }
    out
}

/// The settings shared by every layer (instance `[defaults]`, project `[defaults]`, a recipe).
pub(crate) fn decode_layer(cx: &mut Cx<'_>, t: &mut Table<'_, '_>) -> LayerSettings {
    let s = LayerSettings {
        exec_config: t.name(cx, "exec_config"),
        cluster: t.name(cx, "cluster"),
        spark_config: t.name(cx, "spark_config"),
        code_env: t.name(cx, "code_env"),
        namespace: t.str(cx, "namespace"),
        timeout: t.duration(cx, "timeout"),
        cpu_request: t.cpu(cx, "cpu_request"),
        cpu_limit: t.cpu(cx, "cpu_limit"),
        memory_request: t.memory(cx, "memory_request"),
        memory_limit: t.memory(cx, "memory_limit"),
        gpus: t.count(cx, "gpus", limits::GPUS),
        env: t.string_map(cx, "env"),
    };
    request_within_limit(cx, &s.cpu_request, &s.cpu_limit, t, "cpu");
    request_within_limit(cx, &s.memory_request, &s.memory_limit, t, "memory");
    s
}

fn request_within_limit<T: PartialOrd + std::fmt::Display>(
    cx: &mut Cx<'_>,
    request: &Option<Sourced<T>>,
    limit: &Option<Sourced<T>>,
    t: &Table<'_, '_>,
    what: &str,
) {
    if let (Some(r), Some(l)) = (request, limit)
        && r.value > l.value
    {
        let loc = r.loc;
        cx.diags.error_at(
            cx.sources,
            loc,
            &t.field(&format!("{what}_request")),
            format!("request {} is above the limit {}", r.value, l.value),
            Some(format!("lower {what}_request or raise {what}_limit")),
        );
    }
}

fn decode_instance(cx: &mut Cx<'_>, t: &mut Table<'_, '_>) -> Instance {
    let mut instance = Instance::default();
    if let Some(mut i) = t.sub_table(cx, "instance") {
        instance.name = i.str(cx, "name").map(|s| s.value);
        instance.run_as = i.name(cx, "run_as");
        instance.isolation = choice(cx, &mut i, "isolation", &["user", "none"], |s| match s {
            "user" => Some(Isolation::User),
            "none" => Some(Isolation::None),
            _ => None,
        });
        instance.work_dir = i.str(cx, "work_dir");
        i.finish(cx);
    }
    if let Some(mut d) = t.sub_table(cx, "defaults") {
        instance.defaults = decode_layer(cx, &mut d);
        d.finish(cx);
    }
    if let Some(mut s) = t.sub_table(cx, "server") {
        instance.server_bind = s.str(cx, "bind");
        instance.server_public_url = s.str(cx, "public_url");
        s.finish(cx);
    }
    if let Some(mut i) = t.sub_table(cx, "import") {
        instance.import = ImportSettings {
            max_line: i.memory(cx, "max_line"),
            max_columns: i.count(cx, "max_columns", limits::CSV_COLUMNS),
            max_file: i.memory(cx, "max_file"),
        };
        i.finish(cx);
    }
    if let Some(mut b) = t.sub_table(cx, "build") {
        instance.build = BuildSettings {
            ca_bundle: b.str(cx, "ca_bundle"),
            debian_mirror: b.str(cx, "debian_mirror"),
            pip_index_url: b.str(cx, "pip_index_url"),
            pip_extra_index_url: b.str(cx, "pip_extra_index_url"),
            http_proxy: b.str(cx, "http_proxy"),
            https_proxy: b.str(cx, "https_proxy"),
            no_proxy: b.str(cx, "no_proxy"),
        };
        b.finish(cx);
    }
    instance
}

fn decode_exec_config(cx: &mut Cx<'_>, t: &mut Table<'_, '_>, name: &str, loc: Loc) -> ExecConfig {
    let kind = choice(cx, t, "kind", &ExecKind::NAMES, ExecKind::parse);
    let kind = required(cx, t, "kind", kind, "one of: local, docker, kubernetes");
    let mut docker = DockerOptions::default();
    if let Some(mut d) = t.sub_table(cx, "docker") {
        docker.network = d.str(cx, "network");
        docker.runtime = d.str(cx, "runtime");
        docker.cap_add = d
            .string_list(cx, "cap_add")
            .map(|l| l.value)
            .unwrap_or_default();
        docker.extra_hosts = d
            .string_list(cx, "extra_hosts")
            .map(|l| l.value)
            .unwrap_or_default();
        docker.volumes = d
            .string_list(cx, "volumes")
            .map(|l| l.value)
            .unwrap_or_default();
        d.finish(cx);
    }
    let pod_patch = t.raw("pod_patch").and_then(|v| {
        if v.get_ref().as_table().is_none() {
            cx.error(
                &v.span(),
                &t.field("pod_patch"),
                format!(
                    "expected a table (a partial pod spec), found {}",
                    type_name(v.get_ref())
                ),
                None,
            );
            return None;
        }
        Some(Sourced {
            value: to_toml_value(v),
            loc: cx.loc(&v.span()),
        })
    });
    let c = ExecConfig {
        name: name.to_string(),
        loc,
        description: description(cx, t),
        kind: kind.unwrap_or(Sourced {
            value: ExecKind::Local,
            loc,
        }),
        base_image: t.name(cx, "base_image"),
        image: t.str(cx, "image"),
        registry: t.str(cx, "registry"),
        context: t.str(cx, "context"),
        namespace: t.str(cx, "namespace"),
        create_namespace: t.bool(cx, "create_namespace").is_some_and(|b| b.value),
        cpu_request: t.cpu(cx, "cpu_request"),
        cpu_limit: t.cpu(cx, "cpu_limit"),
        memory_request: t.memory(cx, "memory_request"),
        memory_limit: t.memory(cx, "memory_limit"),
        gpus: t.count(cx, "gpus", limits::GPUS),
        shm_size: t.memory(cx, "shm_size"),
        resources: t.quantity_map(cx, "resources"),
        env: t.string_map(cx, "env"),
        node_selector: t.string_map(cx, "node_selector"),
        tolerations: tolerations(cx, t),
        docker,
        pod_patch,
        image_pull_secrets: t
            .string_list(cx, "image_pull_secrets")
            .map(|l| l.value)
            .unwrap_or_default(),
        pre_push_hook: t.str(cx, "pre_push_hook"),
        service_account: t.str(cx, "service_account"),
        timeout: t.duration(cx, "timeout"),
        pending_timeout: t.duration(cx, "pending_timeout"),
        idle_timeout: t.duration(cx, "idle_timeout"),
        notebook_storage_class: t.str(cx, "notebook_storage_class"),
        notebook_storage: t.memory(cx, "notebook_storage"),
        max_concurrent: t.count(cx, "max_concurrent", limits::MAX_CONCURRENT),
        allowed: allowed(cx, t),
    };
    request_within_limit(cx, &c.cpu_request, &c.cpu_limit, t, "cpu");
    request_within_limit(cx, &c.memory_request, &c.memory_limit, t, "memory");
    c
}

fn decode_spark_config(
    cx: &mut Cx<'_>,
    t: &mut Table<'_, '_>,
    name: &str,
    loc: Loc,
) -> SparkConfig {
    let master = choice(cx, t, "master", &SparkMaster::NAMES, SparkMaster::parse);
    let master = required(
        cx,
        t,
        "master",
        master,
        "one of: local, kubernetes, standalone",
    );
    SparkConfig {
        name: name.to_string(),
        loc,
        description: description(cx, t),
        master: master.unwrap_or(Sourced {
            value: SparkMaster::Local,
            loc,
        }),
        master_url: t.str(cx, "master_url"),
        local_threads: t.count(cx, "local_threads", limits::CORES),
        base_image: t.name(cx, "base_image"),
        image: t.str(cx, "image"),
        registry: t.str(cx, "registry"),
        namespace: t.str(cx, "namespace"),
        service_account: t.str(cx, "service_account"),
        driver_cores: t.count(cx, "driver_cores", limits::CORES),
        driver_memory: t.memory(cx, "driver_memory"),
        executor_cores: t.count(cx, "executor_cores", limits::CORES),
        executor_memory: t.memory(cx, "executor_memory"),
        executor_memory_overhead: t.memory(cx, "executor_memory_overhead"),
        executor_instances: t.count(cx, "executor_instances", limits::EXECUTORS),
        dynamic_allocation: t.bool(cx, "dynamic_allocation"),
        log_level: choice(
            cx,
            t,
            "log_level",
            &SparkLogLevel::NAMES,
            SparkLogLevel::parse,
        ),
        conf: t.string_map(cx, "conf"),
        node_selector: t.string_map(cx, "node_selector"),
        tolerations: tolerations(cx, t),
        image_pull_secrets: t
            .string_list(cx, "image_pull_secrets")
            .map(|l| l.value)
            .unwrap_or_default(),
        timeout: t.duration(cx, "timeout"),
        pending_timeout: t.duration(cx, "pending_timeout"),
        max_concurrent: t.count(cx, "max_concurrent", limits::MAX_CONCURRENT),
        allowed: allowed(cx, t),
    }
}

fn decode_cluster(cx: &mut Cx<'_>, t: &mut Table<'_, '_>, name: &str, loc: Loc) -> Cluster {
    let kind = choice(cx, t, "kind", &["docker", "kubernetes"], |s| match s {
        "docker" => Some(ExecKind::Docker),
        "kubernetes" => Some(ExecKind::Kubernetes),
        _ => None,
    });
    let kind = required(cx, t, "kind", kind, "one of: docker, kubernetes");
    let host = t.str(cx, "host");
    let kubeconfig = t.str(cx, "kubeconfig");
    let context = t.str(cx, "context");
    let namespace = t.str(cx, "namespace");
    let target = match kind.as_ref().map(|k| k.value) {
        Some(ExecKind::Kubernetes) => {
            if let Some(h) = &host {
                cx.diags.error_at(
                    cx.sources,
                    h.loc,
                    &t.field("host"),
                    "`host` is for Docker clusters",
                    Some("a Kubernetes cluster takes `kubeconfig` and `context`".into()),
                );
            }
            ClusterTarget::Kubernetes {
                kubeconfig,
                context,
                namespace,
            }
        }
        _ => {
            for (key, v) in [
                ("kubeconfig", &kubeconfig),
                ("context", &context),
                ("namespace", &namespace),
            ] {
                if let Some(v) = v {
                    cx.diags.error_at(
                        cx.sources,
                        v.loc,
                        &t.field(key),
                        format!("`{key}` is for Kubernetes clusters"),
                        Some("a Docker cluster takes `host`".into()),
                    );
                }
            }
            let host = match host {
                Some(h) => {
                    if let Err(e) = check_docker_host(&h.value) {
                        cx.diags.error_at(
                            cx.sources,
                            h.loc,
                            &t.field("host"),
                            e,
                            Some(
                                "expected `unix:///path/to/docker.sock` or `tcp://HOST:PORT`"
                                    .into(),
                            ),
                        );
                    }
                    h
                }
                None => {
                    if kind.is_some() {
                        cx.error(
                            &t.span,
                            &t.field("host"),
                            "missing field `host`",
                            Some(
                                "expected `unix:///path/to/docker.sock` or `tcp://HOST:PORT`"
                                    .into(),
                            ),
                        );
                    }
                    Sourced {
                        value: String::new(),
                        loc,
                    }
                }
            };
            ClusterTarget::Docker { host }
        }
    };
    Cluster {
        name: name.to_string(),
        loc,
        description: description(cx, t),
        target,
        max_concurrent: t.count(cx, "max_concurrent", limits::MAX_CONCURRENT),
        allowed: allowed(cx, t),
    }
}

/// A Docker engine address must be something the Docker client libraries understand.
pub fn check_docker_host(host: &str) -> Result<(), String> {
    if let Some(path) = host.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(());
        }
        return Err(format!(
            "`{host}` is not a unix socket URL with an absolute path"
        ));
    }
    let rest = ["tcp://", "http://", "https://"]
        .iter()
        .find_map(|p| host.strip_prefix(p))
        .ok_or_else(|| format!("`{host}` is not a Docker engine address"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let (h, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("`{host}` has no port"))?;
    if h.is_empty() || h.contains(char::is_whitespace) {
        return Err(format!("`{host}` has no host name"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("`{host}` has an invalid port `{port}`"))?;
    Ok(())
}

fn decode_base_image(cx: &mut Cx<'_>, t: &mut Table<'_, '_>, name: &str, loc: Loc) -> BaseImage {
    let list = |cx: &mut Cx<'_>, t: &mut Table<'_, '_>, key| {
        t.string_list(cx, key).map(|l| l.value).unwrap_or_default()
    };
    BaseImage {
        name: name.to_string(),
        loc,
        description: description(cx, t),
        from: t.str(cx, "from"),
        debian_suite: t.str(cx, "debian_suite"),
        with_r: t.bool(cx, "with_r").is_some_and(|b| b.value),
        with_cuda: t.bool(cx, "with_cuda").is_some_and(|b| b.value),
        with_spark: t.bool(cx, "with_spark").is_some_and(|b| b.value),
        with_jupyter: t.bool(cx, "with_jupyter").is_some_and(|b| b.value),
        system_packages: list(cx, t, "system_packages"),
        python_packages: list(cx, t, "python_packages"),
        dockerfile_prepend: t.str(cx, "dockerfile_prepend"),
        dockerfile_append: t.str(cx, "dockerfile_append"),
        files: list(cx, t, "files"),
    }
}

fn decode_code_env(cx: &mut Cx<'_>, t: &mut Table<'_, '_>, name: &str, loc: Loc) -> CodeEnv {
    let language = choice(cx, t, "language", &["python", "r"], |s| match s {
        "python" => Some(EnvLanguage::Python),
        "r" => Some(EnvLanguage::R),
        _ => None,
    });
    let language = required(cx, t, "language", language, "`python` or `r`");
    let build_for = match t.get("build_for") {
        None => Sourced {
            value: BuildFor::All,
            loc,
        },
        Some(v) => {
            let vloc = cx.loc(&v.span());
            match v.get_ref() {
                DeValue::String(s) if s == "all" => Sourced {
                    value: BuildFor::All,
                    loc: vloc,
                },
                DeValue::String(s) if s == "none" => Sourced {
                    value: BuildFor::None,
                    loc: vloc,
                },
                DeValue::Array(_) => {
                    let list = t
                        .string_list(cx, "build_for")
                        .map(|l| l.value)
                        .unwrap_or_default();
                    Sourced {
                        value: BuildFor::List(list),
                        loc: vloc,
                    }
                }
                other => {
                    cx.error(
                        &v.span(),
                        &t.field("build_for"),
                        format!("expected \"all\", \"none\" or a list of execution configurations, found {}", match other {
                            DeValue::String(s) => format!("`{s}`"),
                            o => type_name(o).to_string(),
                        }),
                        None,
                    );
                    Sourced {
                        value: BuildFor::All,
                        loc: vloc,
                    }
                }
            }
        }
    };
    let language = language.unwrap_or(Sourced {
        value: EnvLanguage::Python,
        loc,
    });
    let mut packages = t
        .string_list(cx, "packages")
        .map(|l| l.value)
        .unwrap_or_default();
    // The kernel's packages join the environment's own, so its venv, its images and their
    // hashes have them like any other (pinned: a kernel's agent is tested with these).
    let with_jupyter = t.bool(cx, "with_jupyter");
    if let Some(w) = &with_jupyter
        && w.value
    {
        // An R environment's kernel is IRkernel from Debian (no CRAN needed); the agent that
        // starts it is Python, which gets ipykernel's side in the image (see the Dockerfile).
        let kernel = match language.value {
            EnvLanguage::R => crate::pins::jupyter_r_packages().to_vec(),
            EnvLanguage::Python => crate::pins::jupyter_packages().to_vec(),
        };
        packages.extend(kernel.into_iter().map(|p| Sourced {
            value: p,
            loc: w.loc,
        }));
    }
    CodeEnv {
        name: name.to_string(),
        loc,
        description: description(cx, t),
        language,
        packages,
        with_jupyter: with_jupyter.is_some_and(|w| w.value),
        requirements_file: t.str(cx, "requirements_file"),
        constraints_file: t.str(cx, "constraints_file"),
        system_packages: t
            .string_list(cx, "system_packages")
            .map(|l| l.value)
            .unwrap_or_default(),
        build_for,
        build_for_spark: t
            .string_list(cx, "build_for_spark")
            .map(|l| l.value)
            .unwrap_or_default(),
    }
}

fn decode_group(cx: &mut Cx<'_>, t: &mut Table<'_, '_>, name: &str, loc: Loc) -> Group {
    Group {
        name: name.to_string(),
        loc,
        description: description(cx, t),
    }
}

fn decode_user(cx: &mut Cx<'_>, t: &mut Table<'_, '_>, name: &str, loc: Loc) -> User {
    let mut tokens = Vec::new();
    if let Some(v) = t.get("tokens") {
        let field = t.field("tokens");
        match v.get_ref().as_array() {
            None => cx.error(
                &v.span(),
                &field,
                format!(
                    "expected an array of tables, found {}",
                    type_name(v.get_ref())
                ),
                Some("write each token as [[user.NAME.tokens]]".into()),
            ),
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let f = format!("{field}[{i}]");
                    let Some(table) = item.get_ref().as_table() else {
                        cx.error(
                            &item.span(),
                            &f,
                            format!("expected a table, found {}", type_name(item.get_ref())),
                            None,
                        );
                        continue;
                    };
                    let mut tt = Table::new(table, item.span(), f);
                    let tname = tt.str(cx, "name");
                    let hash = tt.str(cx, "sha256");
                    let plain = ["token", "secret"]
                        .iter()
                        .any(|k| tt.get_quiet(k).is_some());
                    if plain {
                        // Marked read: one clear error is worth more than three.
                        tt.get("token");
                        tt.get("secret");
                        cx.error(
                            &item.span(),
                            &tt.path,
                            "tokens are never stored in plain text",
                            Some("store `sha256 = \"<hex digest>\"`; `capstan init` and `capstan token create` print the token once and store its hash".into()),
                        );
                    }
                    if let Some(h) = &hash
                        && !(h.value.len() == 64 && h.value.bytes().all(|b| b.is_ascii_hexdigit()))
                    {
                        cx.diags.error_at(
                            cx.sources,
                            h.loc,
                            &tt.field("sha256"),
                            "not a SHA-256 digest",
                            Some("expected 64 hexadecimal characters".into()),
                        );
                    }
                    let hash = if plain {
                        hash
                    } else {
                        required(
                            cx,
                            &tt,
                            "sha256",
                            hash,
                            "the token's SHA-256 digest, in hex",
                        )
                    };
                    tt.finish(cx);
                    if let Some(h) = hash {
                        tokens.push(TokenHash {
                            name: tname
                                .map(|n| n.value)
                                .unwrap_or_else(|| format!("token-{i}")),
                            sha256: h.value.to_ascii_lowercase(),
                            loc: h.loc,
                        });
                    }
                }
            }
        }
    }
    User {
        name: name.to_string(),
        loc,
        display_name: t.str(cx, "display_name").map(|s| s.value),
        groups: t
            .string_list(cx, "groups")
            .map(|l| l.value)
            .unwrap_or_default(),
        admin: t.bool(cx, "admin").is_some_and(|b| b.value),
        tokens,
        run_as: t.name(cx, "run_as"),
    }
}

fn decode_project(cx: &mut Cx<'_>, t: &mut Table<'_, '_>, key: &str, files: &HomeFiles) -> Project {
    let mut project = Project {
        key: key.to_string(),
        loc: cx.loc(&(0..0)),
        name: None,
        description: None,
        settings: LayerSettings::default(),
        datasets: BTreeMap::new(),
        recipes: BTreeMap::new(),
        lib_dir: None,
        permissions: Vec::new(),
        schedules: BTreeMap::new(),
        models: BTreeMap::new(),
    };
    if let Some(mut p) = t.sub_table(cx, "project") {
        project.name = p.str(cx, "name").map(|s| s.value);
        project.description = description(cx, &mut p);
        project.permissions = permissions(cx, &mut p);
        p.finish(cx);
    }
    if let Some(mut d) = t.sub_table(cx, "defaults") {
        project.settings = decode_layer(cx, &mut d);
        d.finish(cx);
    }
    named_tables(
        cx,
        t,
        "dataset",
        &mut project.datasets,
        |cx, t, name, loc| {
            let format = choice(cx, t, "format", &["parquet"], |s| {
                (s == "parquet").then(|| s.to_string())
            });
            let mut schema = Vec::new();
            for (col, ty) in t.string_map(cx, "schema") {
                if !COLUMN_TYPES.contains(&ty.value.as_str()) {
                    let help = crate::toml_read::unknown_help(&ty.value, &COLUMN_TYPES, "type");
                    let field = t.field(&format!("schema.{col}"));
                    cx.diags.error_at(
                        cx.sources,
                        ty.loc,
                        &field,
                        format!("unknown column type `{}`", ty.value),
                        Some(help),
                    );
                }
                schema.push((col, ty));
            }
            Dataset {
                name: name.to_string(),
                loc,
                description: description(cx, t),
                format: format.map(|f| f.value).unwrap_or_else(|| "parquet".into()),
                schema,
            }
        },
    );
    named_tables(cx, t, "model", &mut project.models, |cx, t, name, loc| {
        let activation = choice(cx, t, "activation", &crate::ml::Activation::NAMES, |s| {
            crate::ml::Activation::parse(s)
        });
        SavedModel {
            name: name.to_string(),
            loc,
            description: description(cx, t),
            activation: activation.unwrap_or(Sourced {
                value: crate::ml::Activation::Always,
                loc,
            }),
        }
    });
    let mut schedules = BTreeMap::new();
    named_tables(cx, t, "schedule", &mut schedules, decode_schedule);
    project.schedules = schedules
        .into_iter()
        .filter_map(|(name, s)| Some((name, s?)))
        .collect();
    let lib = Path::new("projects").join(key).join("lib");
    if files
        .others
        .iter()
        .chain(files.toml.keys())
        .any(|p| p.starts_with(&lib))
    {
        project.lib_dir = Some(lib);
    }
    project
}

/// `[schedule.NAME]`; `None` when its `cron` is missing or does not parse (reported).
fn decode_schedule(
    cx: &mut Cx<'_>,
    t: &mut Table<'_, '_>,
    name: &str,
    loc: Loc,
) -> Option<Schedule> {
    let what = format!("{CRON_HELP}, like `0 2 * * *` for 02:00 every day");
    let cron = t.str(cx, "cron");
    let cron = required(cx, t, "cron", cron, &what);
    let cron_parsed = cron.as_ref().and_then(|c| match Cron::parse(&c.value) {
        Ok(parsed) => Some(parsed),
        Err(e) => {
            cx.diags.error_at(
                cx.sources,
                c.loc,
                &t.field("cron"),
                e,
                Some(format!("expected {what}")),
            );
            None
        }
    });
    let time_zone = t.str(cx, "time_zone");
    let tz = match &time_zone {
        None => Tz::UTC,
        Some(z) => crate::schedule::time_zone(&z.value).unwrap_or_else(|e| {
            cx.diags.error_at(
                cx.sources,
                z.loc,
                &t.field("time_zone"),
                e.to_string(),
                Some(e.help()),
            );
            Tz::UTC
        }),
    };
    let build = t.string_list(cx, "build");
    let build = required(
        cx,
        t,
        "build",
        build,
        "the datasets to build, like `build = [\"report\"]`",
    );
    if let Some(list) = &build {
        if list.value.is_empty() {
            cx.diags.error_at(
                cx.sources,
                list.loc,
                &t.field("build"),
                "a schedule must build at least one dataset",
                Some("name the datasets to build, like `build = [\"report\"]`".into()),
            );
        }
        for d in &list.value {
            if let Err(e) = check_name(&d.value) {
                cx.diags
                    .error_at(cx.sources, d.loc, &t.field("build"), e, None);
            }
        }
    }
    let mode = choice(cx, t, "mode", &BuildMode::NAMES, BuildMode::parse);
    let catch_up = choice(cx, t, "catch_up", &CatchUp::NAMES, CatchUp::parse);
    let user = t.name(cx, "user");
    let enabled = t.bool(cx, "enabled").is_none_or(|b| b.value);
    // Every key is read above, so that a bad `cron` does not make the others unknown.
    Some(Schedule {
        name: name.to_string(),
        loc,
        cron: cron?,
        cron_parsed: cron_parsed?,
        time_zone,
        tz,
        build: build.map(|l| l.value).unwrap_or_default(),
        mode: mode.map(|m| m.value).unwrap_or_default(),
        user,
        catch_up: catch_up.map(|c| c.value).unwrap_or_default(),
        enabled,
    })
}

fn decode_recipe(
    cx: &mut Cx<'_>,
    t: &mut Table<'_, '_>,
    name: &str,
    dir: &Path,
    files: &HomeFiles,
) -> Recipe {
    let loc = cx.loc(&(0..0));
    let kind = choice(cx, t, "kind", &RecipeKind::NAMES, RecipeKind::parse);
    let kind = required(
        cx,
        t,
        "kind",
        kind,
        &format!("one of: {}", RecipeKind::NAMES.join(", ")),
    );
    let code = match t.str(cx, "code") {
        Some(c) => {
            let rel = Path::new(&c.value);
            let safe = rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !safe {
                cx.diags.error_at(
                    cx.sources,
                    c.loc,
                    "code",
                    format!(
                        "`{}` must be a relative path inside the recipes folder",
                        c.value
                    ),
                    None,
                );
                None
            } else {
                let path = dir.join(rel);
                if !files.exists(&path) {
                    cx.diags.error_at(
                        cx.sources,
                        c.loc,
                        "code",
                        format!("code file {} does not exist", path.display()),
                        None,
                    );
                }
                Some(Sourced {
                    value: path,
                    loc: c.loc,
                })
            }
        }
        None => kind
            .as_ref()
            .and_then(|k| k.value.default_code_extension())
            .and_then(|ext| {
                let path = dir.join(format!("{name}.{ext}"));
                if files.exists(&path) {
                    Some(Sourced { value: path, loc })
                } else {
                    cx.error(
                        &(0..0),
                        "code",
                        format!("code file {} does not exist", path.display()),
                        Some("create it, or name another file with `code = \"FILE\"`".into()),
                    );
                    None
                }
            }),
    };
    let datasets = |cx: &mut Cx<'_>, t: &mut Table<'_, '_>, key| {
        let list = t.string_list(cx, key).map(|l| l.value).unwrap_or_default();
        for d in &list {
            if let Err(e) = check_name(&d.value) {
                cx.diags.error_at(cx.sources, d.loc, key, e, None);
            }
        }
        list
    };
    let visual = kind
        .as_ref()
        .filter(|k| k.value.is_visual())
        .and_then(|k| decode_visual(cx, t, k));
    let ml = kind
        .as_ref()
        .filter(|k| k.value.is_ml())
        .and_then(|k| decode_ml(cx, t, k));
    Recipe {
        ml,
        name: name.to_string(),
        loc,
        visual,
        description: description(cx, t),
        kind: kind.unwrap_or(Sourced {
            value: RecipeKind::Python,
            loc,
        }),
        code,
        inputs: datasets(cx, t, "inputs"),
        outputs: datasets(cx, t, "outputs"),
        settings: decode_layer(cx, t),
    }
}

/// An ML recipe's spec, from the table named after its kind (`[ml_train]`…).
fn decode_ml(
    cx: &mut Cx<'_>,
    t: &mut Table<'_, '_>,
    kind: &Sourced<RecipeKind>,
) -> Option<crate::ml::MlRecipe> {
    let name = kind.value.as_str();
    let table = t.raw(name);
    let text = &cx.sources.get(cx.file).text;
    crate::ml::read_spec(kind.value, text, table, cx.sources, cx.file)
        .map_err(|e| spec_error(cx, kind, e))
        .ok()
}

/// Reports a spec's refusal at the part it concerns, else at the recipe's `kind`.
fn spec_error(cx: &mut Cx<'_>, kind: &Sourced<RecipeKind>, e: crate::visual::SpecError) {
    let loc = match &e.span {
        Some(span) => cx.loc(span),
        None => kind.loc,
    };
    cx.diags
        .error_at(cx.sources, loc, kind.value.as_str(), e.message, e.help);
}

/// A visual recipe's spec, from the table named after its kind. Its errors point into the spec;
/// a visual recipe has no code file.
fn decode_visual(
    cx: &mut Cx<'_>,
    t: &mut Table<'_, '_>,
    kind: &Sourced<RecipeKind>,
) -> Option<crate::visual::VisualRecipe> {
    let name = kind.value.as_str();
    let table = t.raw(name);
    let sources = cx.sources;
    let text = &sources.get(cx.file).text;
    match crate::visual::read_spec(kind.value, text, table, sources, cx.file) {
        Ok(v) => {
            // Every formula's syntax, whatever the data: schema checks come later, in flow
            // order, in `capstan check`.
            for (path, formula) in v.spec.formulas() {
                if let Err(e) = crate::formula::parse(formula) {
                    let loc = v.locs.loc_in(&path, formula, e.span.start);
                    cx.diags
                        .error_at(sources, loc, &v.locs.field(&path), e.message, e.help);
                }
            }
            Some(v)
        }
        Err(e) => {
            spec_error(cx, kind, e);
            None
        }
    }
}

/// Converts a spanned value into an owned `toml::Value` (for free-form fields such as a pod
/// patch, which are checked by the backend that applies them).
fn to_toml_value(v: &Value<'_>) -> toml::Value {
    match v.get_ref() {
        DeValue::String(s) => toml::Value::String(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => toml::Value::String(i.to_string()),
        },
        DeValue::Float(f) => f
            .as_str()
            .parse()
            .map(toml::Value::Float)
            .unwrap_or_else(|_| toml::Value::String(f.as_str().to_string())),
        DeValue::Boolean(b) => toml::Value::Boolean(*b),
        DeValue::Datetime(d) => toml::Value::Datetime(*d),
        DeValue::Array(a) => toml::Value::Array(a.iter().map(to_toml_value).collect()),
        DeValue::Table(t) => toml::Value::Table(
            t.iter()
                .map(|(k, v)| (k.get_ref().to_string(), to_toml_value(v)))
                .collect(),
        ),
    }
}

/// Reads the image records under `state/images/`. Unreadable or malformed records are skipped:
/// they describe builds, not configuration, and a missing record only means "not built".
pub fn read_image_records(root: &Path) -> BTreeMap<(String, String, Option<String>), ImageRecord> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root.join("state").join("images")) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(t) = text.parse::<toml::Table>() else {
            continue;
        };
        let s = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let (Some(kind), Some(name), Some(repository), Some(tag), Some(image_id)) = (
            s("kind"),
            s("name"),
            s("repository"),
            s("tag"),
            s("image_id"),
        ) else {
            continue;
        };
        let record = ImageRecord {
            kind,
            name,
            exec_config: s("exec_config"),
            repository,
            tag,
            image_id,
            base_image_id: s("base_image_id"),
            built_at: s("built_at").unwrap_or_default(),
            size_bytes: t
                .get("size_bytes")
                .and_then(|v| v.as_integer())
                .unwrap_or(0)
                .max(0) as u64,
            pushed: t.get("pushed").and_then(|v| v.as_bool()).unwrap_or(false),
            last_error: s("last_error"),
        };
        out.insert(
            (
                record.kind.clone(),
                record.name.clone(),
                record.exec_config.clone(),
            ),
            record,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Diagnostic;

    /// A home with project `p` (datasets `raw`, written by no recipe, and `report`, written by
    /// recipe `r`), users `alice` (may run in `p`) and `bob` (may not), and `project` appended
    /// to p's project.toml.
    fn load_with(project: &str) -> (Home, Vec<Diagnostic>) {
        let mut files = HomeFiles::default();
        let toml = [
            ("capstan.toml", "[defaults]\nexec_config = \"local\"\n".to_string()),
            ("exec-configs.toml", "[exec_config.local]\nkind = \"local\"\n".into()),
            (
                "users.toml",
                "[group.g]\n[user.alice]\ngroups = [\"g\"]\n[user.bob]\n[user.root]\nadmin = true\n"
                    .into(),
            ),
            (
                "projects/p/project.toml",
                format!(
                    "[project.permissions]\ng = [\"run\"]\n[dataset.raw]\n[dataset.report]\n{project}"
                ),
            ),
            (
                "projects/p/recipes/r.toml",
                "kind = \"shell\"\ninputs = [\"raw\"]\noutputs = [\"report\"]\n".into(),
            ),
        ];
        for (path, text) in toml {
            files.toml.insert(PathBuf::from(path), text.into_bytes());
        }
        files
            .others
            .insert(PathBuf::from("projects/p/recipes/r.sh"));
        let (home, diags) = load(Path::new("/h"), &files);
        (home, diags.into_sorted())
    }

    /// The diagnostics as `check` prints them, without the file (all in p's project.toml).
    fn errors(project: &str) -> Vec<String> {
        let (_, diags) = load_with(project);
        diags
            .iter()
            .map(|d| {
                let s = d.to_string();
                s.strip_prefix("projects/p/project.toml:")
                    .map(str::to_string)
                    .unwrap_or(s)
            })
            .collect()
    }

    #[test]
    fn a_full_schedule_decodes() {
        let (home, diags) = load_with(
            r#"
[schedule.nightly]
cron = "0 2 * * *"
time_zone = "Europe/Paris"
build = ["report"]
mode = "force"
user = "alice"
catch_up = "none"
enabled = false
"#,
        );
        assert!(diags.is_empty(), "{diags:?}");
        let s = &home.projects["p"].schedules["nightly"];
        assert_eq!(s.cron.value, "0 2 * * *");
        assert_eq!(s.cron_parsed, Cron::parse("0 2 * * *").unwrap());
        assert_eq!(s.tz.iana_name(), Some("Europe/Paris"));
        assert_eq!(s.time_zone.as_ref().unwrap().value, "Europe/Paris");
        assert_eq!(s.build.len(), 1);
        assert_eq!(s.build[0].value, "report");
        assert_eq!(s.mode, BuildMode::Force);
        assert_eq!(s.user.as_ref().unwrap().value, "alice");
        assert_eq!(s.catch_up, CatchUp::None);
        assert!(!s.enabled);
        assert_eq!((s.loc.line, s.cron.loc.line, s.cron.loc.col), (6, 7, 8));
    }

    #[test]
    fn schedule_defaults() {
        let (home, diags) =
            load_with("[schedule.hourly]\ncron = \"0 * * * *\"\nbuild = [\"report\"]\n");
        assert!(diags.is_empty(), "{diags:?}");
        let s = &home.projects["p"].schedules["hourly"];
        assert_eq!(s.tz, Tz::UTC);
        assert_eq!(s.time_zone, None);
        assert_eq!(s.mode, BuildMode::Smart);
        assert_eq!(s.user, None);
        assert_eq!(s.catch_up, CatchUp::One);
        assert!(s.enabled);
    }

    #[test]
    fn schedule_decode_errors_point_at_their_values() {
        let e = errors(
            r#"
[schedule.a]
cron = "0 2 * *"
build = ["report"]
[schedule.b]
cron = "0 2 * * *"
time_zone = "Europe/Pariss"
build = []
mode = "smrt"
catch_up = "all"
enabld = false
[schedule.c]
build = ["report"]
"#,
        );
        assert_eq!(
            e,
            [
                "7:8: error: schedule.a.cron: `0 2 * *` is not a cron expression: it has 4 fields \
                 (expected 5 fields: minute hour day-of-month month day-of-week, or 6 with seconds \
                 first, like `0 2 * * *` for 02:00 every day)",
                "11:13: error: schedule.b.time_zone: unknown time zone `Europe/Pariss` (did you \
                 mean `Europe/Paris`?)",
                "12:9: error: schedule.b.build: a schedule must build at least one dataset (name \
                 the datasets to build, like `build = [\"report\"]`)",
                "13:8: error: schedule.b.mode: unknown value `smrt` (did you mean `smart`?)",
                "14:12: error: schedule.b.catch_up: unknown value `all` (expected one of: `one`, \
                 `none`)",
                "15:1: error: schedule.b.enabld: unknown field `enabld` (did you mean `enabled`?)",
                "16:1: error: schedule.c.cron: missing field `cron` (expected 5 fields: minute \
                 hour day-of-month month day-of-week, or 6 with seconds first, like `0 2 * * *` \
                 for 02:00 every day)",
            ]
        );
    }

    #[test]
    fn a_schedule_with_a_bad_cron_is_left_out_and_others_kept() {
        let (home, _) = load_with(
            "[schedule.a]\ncron = \"nope\"\nbuild = [\"report\"]\n\
             [schedule.b]\ncron = \"0 2 * * *\"\nbuild = [\"report\"]\nmode = \"bad\"\n",
        );
        let names: Vec<&String> = home.projects["p"].schedules.keys().collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn schedules_build_written_datasets_as_users_who_may_run() {
        let e = errors(
            r#"
[schedule.a]
cron = "0 2 * * *"
build = ["reprt", "raw", "report"]
user = "alise"
[schedule.b]
cron = "0 3 * * *"
build = ["report"]
user = "bob"
[schedule.c]
cron = "0 4 * * *"
build = ["report"]
user = "root"
"#,
        );
        assert_eq!(
            e,
            [
                "8:10: error: schedule.a.build: unknown dataset `reprt` in project `p` (did you \
                 mean `report`?)",
                "8:19: error: schedule.a.build: no recipe of project `p` writes dataset `raw`, so \
                 a build has nothing to run for it (expected one of: `report`)",
                "9:8: error: schedule.a.user: unknown user `alise` (did you mean `alice`?)",
                "13:8: error: schedule.b.user: user `bob` lacks the `run` permission on project \
                 `p` (it is granted to groups `g`): the schedule's builds would be refused (grant \
                 one of the user's groups `run` in [project.permissions], or name another user)",
            ]
        );
    }

    /// The schedule the sample project shows, commented out, is valid once uncommented.
    #[test]
    fn the_sample_schedule_is_valid_uncommented() {
        let mut files = HomeFiles::default();
        for (path, text) in crate::sample::sample_home(&"a".repeat(64), &"b".repeat(64)) {
            if path.extension().is_some_and(|e| e == "toml") {
                let text = if path.ends_with("projects/sample/project.toml") {
                    let start = text.find("# [schedule.nightly]").unwrap();
                    let (head, tail) = text.split_at(start);
                    let tail: String = tail
                        .lines()
                        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
                        .collect();
                    head.to_string() + &tail
                } else {
                    text
                };
                files.toml.insert(path, text.into_bytes());
            } else {
                files.others.insert(path);
            }
        }
        let (home, diags) = load(Path::new("/h"), &files);
        assert!(diags.list.is_empty(), "{:?}", diags.list);
        let s = &home.projects["sample"].schedules["nightly"];
        assert_eq!(s.build[0].value, "wine_by_cultivar");
        assert_eq!(s.user.as_ref().unwrap().value, "alice");
    }
}
