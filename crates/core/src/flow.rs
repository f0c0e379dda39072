//! A project's flow: its datasets and the recipes between them, from the recipes' declared
//! inputs and outputs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{Home, Project, Recipe};
use crate::resolve::Resolution;
use crate::toml_read::unknown_help;

/// The recipe of `project` that writes `dataset`, if one does.
pub fn producer<'p>(project: &'p Project, dataset: &str) -> Option<&'p Recipe> {
    project
        .recipes
        .values()
        .find(|r| r.outputs.iter().any(|o| o.value == dataset))
}

/// A project's flow, indexed once: its recipes by position (name order), the producer of each
/// dataset (the first writer by name, as [`producer`]), and the recipes each one reads from.
struct Graph<'p> {
    recipes: Vec<&'p Recipe>,
    producer: HashMap<&'p str, usize>,
    /// For each recipe, the positions of the recipes whose outputs it reads (itself excluded),
    /// sorted.
    upstream: Vec<Vec<usize>>,
}

impl<'p> Graph<'p> {
    fn new(project: &'p Project) -> Graph<'p> {
        let recipes: Vec<&Recipe> = project.recipes.values().collect();
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, r) in recipes.iter().enumerate() {
            for o in &r.outputs {
                producer.entry(o.value.as_str()).or_insert(i);
            }
        }
        let upstream = recipes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut up: Vec<usize> = r
                    .inputs
                    .iter()
                    .filter_map(|d| producer.get(d.value.as_str()).copied())
                    .filter(|&p| p != i)
                    .collect();
                up.sort_unstable();
                up.dedup();
                up
            })
            .collect();
        Graph {
            recipes,
            producer,
            upstream,
        }
    }

    fn producer(&self, dataset: &str) -> Option<usize> {
        self.producer.get(dataset).copied()
    }

    /// Positions in dependency order, and how many of them are ordered: the rest (on a cycle,
    /// or downstream of one) follow in name order.
    fn order(&self) -> (Vec<usize>, usize) {
        let n = self.recipes.len();
        let mut waiting: Vec<usize> = self.upstream.iter().map(Vec::len).collect();
        let mut downstream = vec![Vec::new(); n];
        for (i, ups) in self.upstream.iter().enumerate() {
            for &u in ups {
                downstream[u].push(i);
            }
        }
        // The first ready recipe by name goes next.
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
        let mut out = Vec::with_capacity(n);
        let mut done = vec![false; n];
        while let Some(next) = ready.pop_first() {
            out.push(next);
            done[next] = true;
            for &d in &downstream[next] {
                waiting[d] -= 1;
                if waiting[d] == 0 {
                    ready.insert(d);
                }
            }
        }
        let placed = out.len();
        out.extend((0..n).filter(|&i| !done[i]));
        (out, placed)
    }

    /// The positions `from` reaches through the recipes it reads from (itself only through a
    /// cycle).
    fn reach(&self, from: usize) -> Vec<bool> {
        let mut seen = vec![false; self.recipes.len()];
        let mut stack = self.upstream[from].clone();
        while let Some(r) = stack.pop() {
            if !seen[r] {
                seen[r] = true;
                stack.extend(&self.upstream[r]);
            }
        }
        seen
    }

    /// The cycles among the recipes at `candidates` (positions; those that are not ordered),
    /// each once, as [`cycles`] describes them.
    fn cycles(&self, candidates: &[usize]) -> Vec<Vec<usize>> {
        let mut candidates = candidates.to_vec();
        candidates.sort_unstable();
        let reached: HashMap<usize, Vec<bool>> =
            candidates.iter().map(|&c| (c, self.reach(c))).collect();
        let mut placed = vec![false; self.recipes.len()];
        let mut out = Vec::new();
        for &r in &candidates {
            if placed[r] || !reached[&r][r] {
                continue;
            }
            // Its cycle-mates: those it reaches that reach it back (all are candidates: a
            // recipe on a cycle is never ordered).
            let mates: BTreeSet<usize> = candidates
                .iter()
                .copied()
                .filter(|&m| reached[&r][m] && reached[&m][r])
                .collect();
            // In reading order: from `r`, each next one a mate it reads from.
            let mut cycle = vec![r];
            let mut at = r;
            while let Some(&next) = self.upstream[at]
                .iter()
                .find(|u| mates.contains(u) && !cycle.contains(u))
            {
                cycle.push(next);
                at = next;
            }
            for &m in &mates {
                placed[m] = true;
            }
            placed[r] = true;
            out.push(cycle);
        }
        out
    }
}

/// The project's recipes in an order where each dataset's producer comes before its readers;
/// recipes that do not depend on each other keep their name order. Recipes on a cycle (which
/// `capstan check` refuses) come last, in name order.
pub fn order(project: &Project) -> Vec<&Recipe> {
    let g = Graph::new(project);
    g.order().0.into_iter().map(|i| g.recipes[i]).collect()
}

/// What makes a project's flow no graph: a dataset written by two recipes (which version would
/// be the dataset?), and recipes on a cycle (which would run first?). Both are errors of
/// `capstan check`, at the recipe that closes them, naming the others with file:line.
pub fn graph_checks(home: &Home) -> Vec<Diagnostic> {
    let mut diags = Diagnostics::default();
    let at = |r: &Recipe| home.sources.path(r.loc.file).display().to_string();
    for p in home.projects.values() {
        let mut writer: BTreeMap<&str, &Recipe> = BTreeMap::new();
        for r in p.recipes.values() {
            for o in &r.outputs {
                match writer.get(o.value.as_str()) {
                    Some(first) if first.name != r.name => diags.error_at(
                        &home.sources,
                        o.loc,
                        &format!("outputs[{}]", o.value),
                        format!(
                            "dataset `{}` is also written by recipe `{}` ({}:{}): a dataset has one recipe that builds it",
                            o.value,
                            first.name,
                            at(first),
                            first.outputs.iter().find(|f| f.value == o.value).map_or(first.loc.line, |f| f.loc.line)
                        ),
                        Some("write a dataset of its own, and combine the two downstream".into()),
                    ),
                    Some(_) => {}
                    None => {
                        writer.insert(&o.value, r);
                    }
                }
            }
        }
        for cycle in cycles(p) {
            let Some(last) = cycle.last() else { continue };
            // Each step: a recipe, and the input through which it reads the next one's output.
            let steps: Vec<String> = cycle
                .iter()
                .map(|r| {
                    let via = r.inputs.iter().find(|i| {
                        producer(p, &i.value)
                            .is_some_and(|w| cycle.iter().any(|c| c.name == w.name))
                    });
                    match via {
                        Some(i) => format!(
                            "`{}` reads `{}` ({}:{})",
                            r.name,
                            i.value,
                            at(r),
                            i.loc.line
                        ),
                        None => format!("`{}` ({})", r.name, at(r)),
                    }
                })
                .collect();
            let input = last
                .inputs
                .iter()
                .find(|i| producer(p, &i.value).is_some_and(|w| w.name == cycle[0].name))
                .map_or(last.loc, |i| i.loc);
            diags.error_at(
                &home.sources,
                input,
                "inputs",
                format!(
                    "recipes {} form a cycle: each reads what another of them writes, so none can run first",
                    steps.join(", ")
                ),
                Some("break it: one of them must not read the others' outputs".into()),
            );
        }
    }
    diags.into_sorted()
}

/// The cycles of a project's flow (recipes that read, through other recipes, their own
/// output), each once: its recipes in the order each reads the next's output, from the first by
/// name. A recipe that reads its own output alone is not one.
pub fn cycles(project: &Project) -> Vec<Vec<&Recipe>> {
    let g = Graph::new(project);
    let (order, placed) = g.order();
    // Ordered recipes are on no cycle; only the rest need a search.
    g.cycles(&order[placed..])
        .into_iter()
        .map(|c| c.into_iter().map(|i| g.recipes[i]).collect())
        .collect()
}

/// Recipes whose inputs have no data (`has_data(project, dataset)` says, from the dataset
/// store): an error where nothing in the project builds the input (it must be imported), a
/// warning where a recipe builds it but has not yet. A run of either would be refused before it
/// starts; `capstan check --deep` says so for the whole home at once.
pub fn input_checks(home: &Home, has_data: impl Fn(&str, &str) -> bool) -> Vec<Diagnostic> {
    let mut diags = Diagnostics::default();
    for p in home.projects.values() {
        let g = Graph::new(p);
        for r in p.recipes.values() {
            for i in r.inputs.iter().filter(|i| !has_data(&p.key, &i.value)) {
                let field = format!("inputs[{}]", i.value);
                match g.producer(&i.value).map(|at| g.recipes[at]) {
                    Some(up) => diags.warning_at(
                        &home.sources,
                        i.loc,
                        &field,
                        format!(
                            "input `{}` has no data yet: recipe `{}` builds it",
                            i.value, up.name
                        ),
                        Some(format!("run `capstan run {}/{}` first", p.key, up.name)),
                    ),
                    None => diags.error_at(
                        &home.sources,
                        i.loc,
                        &field,
                        format!(
                            "input `{}` has no data, and no recipe of project `{}` builds it",
                            i.value, p.key
                        ),
                        Some(format!(
                            "import it: `capstan dataset import {}/{} FILE.csv`",
                            p.key, i.value
                        )),
                    ),
                }
            }
        }
    }
    diags.into_sorted()
}

/// How a build chooses what to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BuildMode {
    /// Each recipe needed for the targets whose outputs are missing or stale, and everything
    /// downstream of one that runs.
    #[default]
    Smart,
    /// The recipes that write the named datasets, whatever their state; nothing upstream.
    Force,
    /// Every recipe upstream of the named datasets, and theirs, whatever their state.
    Recursive,
}

impl BuildMode {
    pub const NAMES: [&'static str; 3] = ["smart", "force", "recursive"];

    pub fn parse(s: &str) -> Option<BuildMode> {
        Some(match s {
            "smart" => BuildMode::Smart,
            "force" => BuildMode::Force,
            "recursive" => BuildMode::Recursive,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BuildMode::Smart => "smart",
            BuildMode::Force => "force",
            BuildMode::Recursive => "recursive",
        }
    }
}

impl std::fmt::Display for BuildMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What defined a dataset version: a SHA-256 (hex) per component — `recipe` (its TOML),
/// `code` (its code file), `lib` (the project's `lib/` folder), `settings` (the resolved
/// settings that change results). Kept per component so that staleness can say which changed.
pub type Definition = BTreeMap<String, String>;

/// Who wrote a dataset version, and from what: recorded with each committed version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    pub written_by: WrittenBy,
    /// The version of each input the activity read.
    pub inputs: BTreeMap<String, u64>,
    /// Empty for imports and writes through the API.
    pub definition: Definition,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WrittenBy {
    /// An activity of a job.
    Activity { job: i64, idx: i64, recipe: String },
    /// `capstan dataset import` or an upload through the API, by this user.
    Import { user: String, file: Option<String> },
}

/// A dataset's current version, as the dataset store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetState {
    /// No data.
    Missing,
    /// Data with no trustworthy record of who wrote it (written before versions were kept, or
    /// by hand): a recipe that builds it must run.
    Untracked,
    Version {
        version: u64,
        /// When it was committed, in milliseconds since the Unix epoch.
        at_ms: i64,
        provenance: Provenance,
    },
}

/// What a build will do, in dependency order: every recipe it considered, with why it runs or
/// is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub project: String,
    pub mode: BuildMode,
    pub targets: Vec<String>,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub recipe: String,
    /// The steps (indices into `Plan::steps`, all before this one) whose outputs it reads.
    pub needs: Vec<usize>,
    pub runs: bool,
    /// Why it runs ("never built", "its code changed", "input `raw` changed (version 2 → 3)",
    /// "upstream `clean` runs", "forced") or is skipped ("up to date").
    pub why: Vec<String>,
}

impl Plan {
    /// The steps that run.
    pub fn runs(&self) -> impl Iterator<Item = (usize, &Step)> {
        self.steps.iter().enumerate().filter(|(_, s)| s.runs)
    }
}

/// The SHA-256 (hex) of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// What defines the outputs of a run of `r` (see [`Definition`]), from the home's files under
/// `root`: `recipe` (its TOML file), `code` (its code file, when it has one), `lib` (the
/// project's `lib/` folder, when it has one: each file's path and content, in name order; a link
/// counts by where it points, and is not followed; `__pycache__` folders are left out) and
/// `settings` (the resolved settings that change results: recipe and execution kinds, image,
/// code environment and its spec, Spark configuration and its conf, environment variables — not
/// limits, timeouts, cluster, namespace or user).
pub fn definition(home: &Home, root: &Path, r: &Resolution) -> Result<Definition, String> {
    let Some((project, recipe)) = home.recipe(&r.project, &r.recipe) else {
        return Err(format!(
            "project `{}` has no recipe `{}`",
            r.project, r.recipe
        ));
    };
    let mut def = Definition::new();
    let file = root.join(home.sources.path(recipe.loc.file));
    def.insert("recipe".into(), sha256_hex(&read(&file)?));
    if let Some(code) = &recipe.code {
        def.insert("code".into(), sha256_hex(&read(&root.join(&code.value))?));
    }
    if let Some(lib) = &project.lib_dir {
        let mut h = Sha256::new();
        hash_tree(&root.join(lib), "", &mut h)?;
        def.insert("lib".into(), hex(&h.finalize()));
    }
    def.insert(
        "settings".into(),
        sha256_hex(settings_text(home, root, r)?.as_bytes()),
    );
    Ok(def)
}

/// Feeds a folder's files to `h`: for each, in name order, its kind, path (from the folder)
/// and content, each with its length first so that no two trees feed the same bytes.
fn hash_tree(dir: &Path, rel: &str, h: &mut Sha256) -> Result<(), String> {
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", dir.display());
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(cannot)?
        .collect::<Result<_, _>>()
        .map_err(cannot)?;
    entries.sort_by_key(|e| e.file_name());
    fn feed(h: &mut Sha256, tag: &[u8], rel: &str, content: &[u8]) {
        h.update(tag);
        h.update((rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update((content.len() as u64).to_le_bytes());
        h.update(content);
    }
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        // `file_type` does not follow links.
        let kind = e
            .file_type()
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        if kind.is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            feed(h, b"link", &rel, target.to_string_lossy().as_bytes());
        } else if kind.is_dir() {
            if name != "__pycache__" {
                hash_tree(&path, &rel, h)?;
            }
        } else if kind.is_file() {
            let bytes = read(&path)?;
            feed(h, b"file", &rel, &bytes);
        }
    }
    Ok(())
}

/// The resolved settings that change a run's results, one `key=value` line each, in a fixed
/// order (values in Rust's string escapes, so each is one line).
fn settings_text(home: &Home, root: &Path, r: &Resolution) -> Result<String, String> {
    use std::fmt::Write;
    let mut s = String::new();
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(s, "{key}={value:?}");
    };
    line("recipe_kind", r.recipe_kind.as_str());
    line("exec_kind", r.kind.value.as_str());
    line("image", r.image.value.as_deref().unwrap_or(""));
    match &r.code_env.value {
        None => line("code_env", ""),
        Some(name) => {
            line("code_env", name);
            if let Some(env) = home.code_envs.get(name) {
                let language = match env.language.value {
                    crate::model::EnvLanguage::Python => "python",
                    crate::model::EnvLanguage::R => "r",
                };
                line("code_env.language", language);
                for p in &env.packages {
                    line("code_env.package", &p.value);
                }
                for p in &env.system_packages {
                    line("code_env.system_package", &p.value);
                }
                for (key, file) in [
                    ("code_env.requirements_file", &env.requirements_file),
                    ("code_env.constraints_file", &env.constraints_file),
                ] {
                    if let Some(f) = file {
                        let digest = sha256_hex(&read(&root.join(&f.value))?);
                        line(key, &format!("{} {digest}", f.value));
                    }
                }
            }
        }
    }
    match &r.spark_config.value {
        None => line("spark_config", ""),
        Some(name) => {
            line("spark_config", name);
            if let Some(spark) = home.spark_configs.get(name) {
                for (k, v) in &spark.conf {
                    line(&format!("spark_config.conf.{k}"), &v.value);
                }
            }
        }
    }
    for (k, v) in &r.env {
        line(&format!("env.{k}"), &v.value);
    }
    Ok(s)
}

/// The project named `key`, or the sentence that says there is none.
fn find_project<'h>(home: &'h Home, key: &str) -> Result<&'h Project, String> {
    home.projects.get(key).ok_or_else(|| {
        let keys: Vec<&str> = home.projects.keys().map(String::as_str).collect();
        format!(
            "there is no project `{key}`: {}",
            unknown_help(key, &keys, "project")
        )
    })
}

/// Every dataset of a project: declared (`[dataset.X]`) or named by a recipe.
fn datasets(project: &Project) -> BTreeSet<&str> {
    let mut all: BTreeSet<&str> = project.datasets.keys().map(String::as_str).collect();
    for r in project.recipes.values() {
        all.extend(r.inputs.iter().chain(&r.outputs).map(|d| d.value.as_str()));
    }
    all
}

/// What a plan starts from.
enum Roots<'a> {
    /// Datasets; none means the flow's final outputs.
    Targets(&'a [String]),
    /// Every recipe (the view of the whole flow).
    Everything,
}

/// A plan and what it was made from (the view needs both).
struct Planned<'p> {
    plan: Plan,
    states: HashMap<&'p str, DatasetState>,
}

/// The computation behind [`plan`] and [`view`]. A lenient planner (the view) reports no
/// missing data and no cycle as errors: it says so in the recipes' reasons instead.
struct Planner<'p, 'g> {
    project: &'p Project,
    graph: &'g Graph<'p>,
    mode: BuildMode,
    lenient: bool,
}

const IMPORT_HINT: &str = "import it with `capstan dataset import";

impl<'p> Planner<'p, '_> {
    fn run(
        &self,
        roots: Roots<'_>,
        state: &dyn Fn(&str) -> DatasetState,
        definition: &dyn Fn(&Recipe) -> Result<Definition, String>,
    ) -> Result<Planned<'p>, Vec<String>> {
        let p = self.project;
        let g = self.graph;
        let n = g.recipes.len();
        let mut errors: Vec<String> = Vec::new();
        let error = |errors: &mut Vec<String>, e: String| {
            if !errors.contains(&e) {
                errors.push(e);
            }
        };

        // What to build: target datasets, and the recipes to start from.
        let all = datasets(p);
        let mut targets: Vec<String> = Vec::new();
        let mut roots_at: Vec<usize> = Vec::new();
        match roots {
            Roots::Everything => roots_at.extend(0..n),
            Roots::Targets([]) => {
                // Datasets that a recipe writes and no other recipe that writes something
                // reads: the ends of the flow. A recipe that writes nothing (a report sent by
                // mail, a notebook export) is no build's: `capstan run` runs it.
                let mut read: BTreeSet<&str> = BTreeSet::new();
                for (i, r) in g
                    .recipes
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| !r.outputs.is_empty())
                {
                    read.extend(
                        r.inputs
                            .iter()
                            .map(|d| d.value.as_str())
                            .filter(|d| g.producer(d) != Some(i)),
                    );
                }
                let ends: BTreeSet<&str> = g
                    .producer
                    .keys()
                    .copied()
                    .filter(|d| !read.contains(d))
                    .collect();
                targets.extend(ends.iter().map(|d| d.to_string()));
                roots_at.extend(ends.iter().filter_map(|d| g.producer(d)));
            }
            Roots::Targets(named) => {
                for t in named {
                    if targets.contains(t) {
                        continue;
                    }
                    if !all.contains(t.as_str()) {
                        let names: Vec<&str> = all.iter().copied().collect();
                        error(
                            &mut errors,
                            format!(
                                "project `{}` has no dataset `{t}`: {}",
                                p.key,
                                unknown_help(t, &names, "dataset")
                            ),
                        );
                        continue;
                    }
                    targets.push(t.clone());
                    roots_at.extend(g.producer(t));
                }
            }
        }

        // The recipes considered: the roots, and (but when forced) all they read from.
        let mut considered = vec![false; n];
        let mut stack = roots_at;
        while let Some(r) = stack.pop() {
            if !considered[r] {
                considered[r] = true;
                if self.mode != BuildMode::Force {
                    stack.extend(&g.upstream[r]);
                }
            }
        }
        let (order, placed) = g.order();
        let at: Vec<usize> = order.iter().copied().filter(|&i| considered[i]).collect();
        let mut step_of: Vec<Option<usize>> = vec![None; n];
        for (s, &i) in at.iter().enumerate() {
            step_of[i] = Some(s);
        }

        // The current state of every dataset that matters, asked once each.
        let mut states: HashMap<&'p str, DatasetState> = HashMap::new();
        let mut ask = |d: &'p str| {
            states.entry(d).or_insert_with(|| state(d));
        };
        for t in &targets {
            if let Some(d) = all.get(t.as_str()) {
                ask(d);
            }
        }
        for &i in &at {
            let r = g.recipes[i];
            for d in r.inputs.iter().chain(&r.outputs) {
                ask(d.value.as_str());
            }
        }

        // Data that nothing can give.
        let import = |d: &str| {
            format!(
                "dataset `{d}` has no data and no recipe builds it: {IMPORT_HINT} {}/{d} FILE.csv`",
                p.key
            )
        };
        if !self.lenient {
            for t in &targets {
                if g.producer(t).is_none() && states[t.as_str()] == DatasetState::Missing {
                    error(&mut errors, import(t));
                }
            }
            for &i in &at {
                let r = g.recipes[i];
                for d in &r.inputs {
                    if states[d.value.as_str()] != DatasetState::Missing {
                        continue;
                    }
                    match g.producer(&d.value) {
                        None => error(&mut errors, import(&d.value)),
                        Some(up) if step_of[up].is_none() => error(
                            &mut errors,
                            format!(
                                "input `{}` of `{}` has no data: build it first, or use --mode smart",
                                d.value, r.name
                            ),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }

        // Cycles among the steps (only recipes that are not ordered can be on one).
        let mut on_cycle: HashMap<usize, String> = HashMap::new();
        if order[placed..].iter().any(|&i| considered[i]) {
            for cycle in g.cycles(&order[placed..]) {
                if !cycle.iter().any(|&i| considered[i]) {
                    continue;
                }
                let names: Vec<String> = cycle
                    .iter()
                    .map(|&i| format!("`{}`", g.recipes[i].name))
                    .collect();
                let names = names.join(", ");
                if self.lenient {
                    for &i in &cycle {
                        on_cycle.insert(
                            i,
                            format!("it is on a cycle: recipes {names} read each other's outputs"),
                        );
                    }
                } else {
                    error(
                        &mut errors,
                        format!(
                            "recipes {names} form a cycle: each reads what another of them writes, so none can run first (`capstan check` shows where)"
                        ),
                    );
                }
            }
        }

        // What defines each step now.
        let mut definitions: Vec<Definition> = Vec::with_capacity(at.len());
        for &i in &at {
            let r = g.recipes[i];
            match definition(r) {
                Ok(d) => definitions.push(d),
                Err(e) => {
                    error(
                        &mut errors,
                        format!("cannot tell what defines recipe `{}`: {e}", r.name),
                    );
                    definitions.push(Definition::new());
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut steps: Vec<Step> = Vec::with_capacity(at.len());
        for (s, &i) in at.iter().enumerate() {
            let r = g.recipes[i];
            // Only earlier steps: a cycle's closing edge is left out (and reported above).
            let needs: Vec<usize> = g.upstream[i]
                .iter()
                .filter_map(|&u| step_of[u])
                .filter(|&u| u < s)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let why = match self.mode {
                BuildMode::Force => vec!["forced".to_string()],
                BuildMode::Recursive => vec!["recursive build".to_string()],
                BuildMode::Smart => {
                    let mut why = smart_reasons(r, &definitions[s], &states);
                    why.extend(on_cycle.remove(&i));
                    for &u in &needs {
                        if steps[u].runs {
                            why.push(format!("upstream `{}` runs", steps[u].recipe));
                        }
                    }
                    why
                }
            };
            let runs = !why.is_empty();
            steps.push(Step {
                recipe: r.name.clone(),
                needs,
                runs,
                why: if runs {
                    why
                } else {
                    vec!["up to date".to_string()]
                },
            });
        }
        Ok(Planned {
            plan: Plan {
                project: p.key.clone(),
                mode: self.mode,
                targets,
                steps,
            },
            states,
        })
    }
}

/// Why `r` must run in a smart build, from its own outputs, definition and inputs (upstream
/// steps that run are the caller's): most direct first; none when it is up to date.
fn smart_reasons(
    r: &Recipe,
    now: &Definition,
    states: &HashMap<&str, DatasetState>,
) -> Vec<String> {
    let mut why = Vec::new();
    let outputs: BTreeSet<&str> = r.outputs.iter().map(|o| o.value.as_str()).collect();
    if outputs.is_empty() {
        why.push("it writes no dataset: no build runs it (`capstan run` does)".to_string());
        return why;
    }
    if outputs.iter().all(|o| states[o] == DatasetState::Missing) {
        why.push("never built".to_string());
        return why;
    }
    // The record to compare with: that of its first output (by name) it wrote last.
    let mut record: Option<&Provenance> = None;
    for o in &outputs {
        match &states[o] {
            DatasetState::Missing => why.push(format!("output `{o}` has no data")),
            DatasetState::Untracked => {
                why.push(format!("output `{o}` has no record of what wrote it"))
            }
            DatasetState::Version { provenance, .. } => match &provenance.written_by {
                WrittenBy::Activity { recipe, .. } if *recipe == r.name => {
                    record.get_or_insert(provenance);
                }
                WrittenBy::Activity { recipe, .. } => why.push(format!(
                    "output `{o}` was last written by recipe `{recipe}`"
                )),
                WrittenBy::Import { .. } => {
                    why.push(format!("output `{o}` was last written by an import"))
                }
            },
        }
    }
    let Some(record) = record else { return why };

    // Its definition, component by component (one present on one side only has changed).
    const KNOWN: [(&str, &str); 4] = [
        ("code", "its code changed"),
        ("recipe", "its recipe file changed"),
        ("lib", "the project's lib/ changed"),
        (
            "settings",
            "its settings changed (image, code env, Spark configuration or environment)",
        ),
    ];
    for (key, text) in KNOWN {
        if now.get(key) != record.definition.get(key) {
            why.push(text.to_string());
        }
    }
    let others: BTreeSet<&String> = now
        .keys()
        .chain(record.definition.keys())
        .filter(|k| !KNOWN.iter().any(|(known, _)| known == k))
        .collect();
    for key in others {
        if now.get(key) != record.definition.get(key) {
            why.push(format!("its {key} changed"));
        }
    }

    // Its inputs' versions (but its own outputs, which it reads back: each run changes them).
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for i in &r.inputs {
        let i = i.value.as_str();
        if outputs.contains(i) || !seen.insert(i) {
            continue;
        }
        match (&states[i], record.inputs.get(i)) {
            (DatasetState::Version { version, .. }, Some(then)) if then == version => {}
            (DatasetState::Version { version, .. }, Some(then)) => {
                why.push(format!("input `{i}` changed (version {then} → {version})"))
            }
            (DatasetState::Version { version, .. }, None) => why.push(format!(
                "input `{i}` was not read by its last run (now version {version})"
            )),
            (DatasetState::Untracked, _) => {
                why.push(format!("input `{i}` has no recorded version"))
            }
            (DatasetState::Missing, _) => why.push(format!("input `{i}` has no data")),
        }
    }
    why
}

/// What a build of `targets` (datasets of `project`; none: the flow's final outputs, and the
/// recipes that write nothing) would run, and why: see [`BuildMode`]. `state` gives a
/// dataset's current version (asked once per dataset), `definition` what defines a recipe now
/// (usually [`definition`] of its resolution; asked once per step).
///
/// Every problem is reported at once, each as a sentence: an unknown project or dataset, data
/// that nothing can give (an import that was never made; for a forced build, an input that
/// has not been built), a cycle, a definition that cannot be read.
pub fn plan(
    home: &Home,
    project: &str,
    targets: &[String],
    mode: BuildMode,
    state: impl Fn(&str) -> DatasetState,
    definition: impl Fn(&Recipe) -> Result<Definition, String>,
) -> Result<Plan, Vec<String>> {
    let p = find_project(home, project).map_err(|e| vec![e])?;
    let graph = Graph::new(p);
    let planner = Planner {
        project: p,
        graph: &graph,
        mode,
        lenient: false,
    };
    planner
        .run(Roots::Targets(targets), &state, &definition)
        .map(|planned| planned.plan)
}

/// The whole flow of a project (`capstan flow PROJECT`): every dataset and recipe, with their
/// states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowView {
    pub project: String,
    /// In name order.
    pub datasets: Vec<DatasetView>,
    /// In dependency order.
    pub recipes: Vec<RecipeView>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetView {
    pub name: String,
    /// The recipe that writes it; none for imported data.
    pub producer: Option<String>,
    /// The recipes that read it, in name order.
    pub readers: Vec<String>,
    pub state: DatasetState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipeView {
    pub name: String,
    /// The recipe kind (`python`, `shell`…).
    pub kind: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub status: RecipeStatus,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipeStatus {
    UpToDate,
    /// Why a smart build would run it.
    Stale(Vec<String>),
    /// None of its outputs has data.
    NeverBuilt,
    /// It writes no dataset, so no build runs it (`capstan run` does) and nothing records
    /// whether it is up to date.
    NoOutputs,
}

impl RecipeStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecipeStatus::UpToDate => "up to date",
            RecipeStatus::Stale(_) => "stale",
            RecipeStatus::NeverBuilt => "never built",
            RecipeStatus::NoOutputs => "writes no dataset",
        }
    }
}

/// The view of a project's whole flow, with each recipe's status as a smart build of
/// everything would see it (the reasons are [`plan`]'s). Data that is missing is shown, not
/// refused: a recipe whose import was never made is never built or stale, the import Missing.
pub fn view(
    home: &Home,
    project: &str,
    state: impl Fn(&str) -> DatasetState,
    definition: impl Fn(&Recipe) -> Result<Definition, String>,
) -> Result<FlowView, Vec<String>> {
    let p = find_project(home, project).map_err(|e| vec![e])?;
    let graph = Graph::new(p);
    let planner = Planner {
        project: p,
        graph: &graph,
        mode: BuildMode::Smart,
        lenient: true,
    };
    let Planned { plan, mut states } = planner.run(Roots::Everything, &state, &definition)?;
    let mut readers: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for r in p.recipes.values() {
        for i in &r.inputs {
            readers.entry(i.value.as_str()).or_default().insert(&r.name);
        }
    }
    let datasets = datasets(p)
        .into_iter()
        .map(|d| DatasetView {
            name: d.to_string(),
            producer: graph.producer(d).map(|i| graph.recipes[i].name.clone()),
            readers: readers
                .get(d)
                .map(|r| r.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default(),
            state: states.remove(d).unwrap_or_else(|| state(d)),
        })
        .collect::<Vec<_>>();
    let missing = |d: &str| {
        datasets
            .binary_search_by(|v| v.name.as_str().cmp(d))
            .is_ok_and(|at| datasets[at].state == DatasetState::Missing)
    };
    let recipes = plan
        .steps
        .into_iter()
        .map(|s| {
            let r = &p.recipes[&s.recipe];
            let status = if r.outputs.is_empty() {
                RecipeStatus::NoOutputs
            } else if !s.runs {
                RecipeStatus::UpToDate
            } else if !r.outputs.is_empty() && r.outputs.iter().all(|o| missing(&o.value)) {
                RecipeStatus::NeverBuilt
            } else {
                RecipeStatus::Stale(s.why)
            };
            RecipeView {
                name: s.recipe,
                kind: r.kind.value.as_str().to_string(),
                inputs: r.inputs.iter().map(|d| d.value.clone()).collect(),
                outputs: r.outputs.iter().map(|d| d.value.clone()).collect(),
                status,
            }
        })
        .collect();
    Ok(FlowView {
        project: p.key.clone(),
        datasets,
        recipes,
    })
}

/// A dataset's state in a few words, for the graph renderers.
fn state_label(state: &DatasetState) -> String {
    match state {
        DatasetState::Missing => "no data".to_string(),
        DatasetState::Untracked => "untracked".to_string(),
        DatasetState::Version { version, .. } => format!("v{version}"),
    }
}

/// A DOT string: quoted, with `"`, `\` and line ends escaped.
fn dot_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The flow as a Graphviz digraph: datasets are cylinders (dashed when they have no data),
/// recipes filled ellipses coloured by status (green up to date, orange stale, grey never
/// built), a stale recipe's reasons in its tooltip; edges go dataset → recipe → dataset.
pub fn to_dot(view: &FlowView) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "digraph {} {{", dot_quote(&view.project));
    s.push_str("  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=11];\n");
    for d in &view.datasets {
        let style = if d.state == DatasetState::Missing {
            ", style=dashed"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  {} [shape=cylinder{style}, label={}];",
            dot_quote(&format!("dataset:{}", d.name)),
            dot_quote(&format!("{}\n{}", d.name, state_label(&d.state)))
        );
    }
    for r in &view.recipes {
        let (colour, tooltip) = match &r.status {
            RecipeStatus::UpToDate => ("#d4edda", String::new()),
            RecipeStatus::Stale(why) => (
                "#ffe0b2",
                format!(", tooltip={}", dot_quote(&why.join("\n"))),
            ),
            RecipeStatus::NeverBuilt => ("#e0e0e0", String::new()),
            RecipeStatus::NoOutputs => ("#ffffff", String::new()),
        };
        let _ = writeln!(
            s,
            "  {} [shape=ellipse, style=filled, fillcolor=\"{colour}\", label={}{tooltip}];",
            dot_quote(&format!("recipe:{}", r.name)),
            dot_quote(&format!("{} ({})\n{}", r.name, r.kind, r.status.as_str()))
        );
    }
    for r in &view.recipes {
        let id = dot_quote(&format!("recipe:{}", r.name));
        for i in &r.inputs {
            let _ = writeln!(s, "  {} -> {id};", dot_quote(&format!("dataset:{i}")));
        }
        for o in &r.outputs {
            let _ = writeln!(s, "  {id} -> {};", dot_quote(&format!("dataset:{o}")));
        }
    }
    s.push_str("}\n");
    s
}

/// A Mermaid node id: `prefix` and the name, with letters and digits kept, `_` doubled and any
/// other character as `_HEX_`, so that two names never share an id.
fn mermaid_id(prefix: &str, name: &str) -> String {
    use std::fmt::Write;
    let mut id = String::from(prefix);
    for c in name.chars() {
        match c {
            c if c.is_ascii_alphanumeric() => id.push(c),
            '_' => id.push_str("__"),
            c => {
                let _ = write!(id, "_{:x}_", c as u32);
            }
        }
    }
    id
}

/// A Mermaid label, quoted, with the characters Mermaid would read as syntax written as its
/// entity codes.
fn mermaid_label(lines: &[&str]) -> String {
    let mut out = String::from("\"");
    for (n, line) in lines.iter().enumerate() {
        if n > 0 {
            out.push_str("<br/>");
        }
        for c in line.chars() {
            match c {
                '"' => out.push_str("#quot;"),
                '#' => out.push_str("#35;"),
                '<' => out.push_str("#lt;"),
                '>' => out.push_str("#gt;"),
                c => out.push(c),
            }
        }
    }
    out.push('"');
    out
}

/// The flow as a Mermaid flowchart (`flowchart LR`): datasets as cylinders, recipes as
/// stadiums, with a class per status (`uptodate`, `stale`, `neverbuilt`; `nodata` for
/// datasets without data).
pub fn to_mermaid(view: &FlowView) -> String {
    use std::fmt::Write;
    let mut s = String::from("flowchart LR\n");
    let mut classes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for d in &view.datasets {
        let id = mermaid_id("d_", &d.name);
        let label = mermaid_label(&[&d.name, &state_label(&d.state)]);
        let _ = writeln!(s, "  {id}[({label})]");
        if d.state == DatasetState::Missing {
            classes.entry("nodata").or_default().push(id);
        }
    }
    for r in &view.recipes {
        let id = mermaid_id("r_", &r.name);
        let title = format!("{} ({})", r.name, r.kind);
        let label = mermaid_label(&[&title, r.status.as_str()]);
        let _ = writeln!(s, "  {id}([{label}])");
        let class = match r.status {
            RecipeStatus::UpToDate => "uptodate",
            RecipeStatus::Stale(_) => "stale",
            RecipeStatus::NeverBuilt => "neverbuilt",
            RecipeStatus::NoOutputs => "nooutputs",
        };
        classes.entry(class).or_default().push(id);
    }
    for r in &view.recipes {
        let id = mermaid_id("r_", &r.name);
        for i in &r.inputs {
            let _ = writeln!(s, "  {} --> {id}", mermaid_id("d_", i));
        }
        for o in &r.outputs {
            let _ = writeln!(s, "  {id} --> {}", mermaid_id("d_", o));
        }
    }
    s.push_str("  classDef uptodate fill:#d4edda,stroke:#2e7d32\n");
    s.push_str("  classDef stale fill:#ffe0b2,stroke:#ef6c00\n");
    s.push_str("  classDef neverbuilt fill:#e0e0e0,stroke:#757575\n");
    s.push_str("  classDef nooutputs fill:#ffffff,stroke:#9e9e9e\n");
    s.push_str("  classDef nodata stroke-dasharray:4 4\n");
    for (class, ids) in classes {
        let _ = writeln!(s, "  class {} {class}", ids.join(","));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{HomeFiles, load};

    fn project(recipes: &[(&str, &str, &str)]) -> Project {
        home(recipes).projects["p"].clone()
    }

    fn home(recipes: &[(&str, &str, &str)]) -> Home {
        home_with("[project]\n", recipes)
    }

    /// A home whose project.toml is `project_toml`, with shell recipes (name, inputs, outputs).
    fn home_with(project_toml: &str, recipes: &[(&str, &str, &str)]) -> Home {
        let mut files = HomeFiles::default();
        let mut toml = |path: &str, text: String| {
            files.toml.insert(path.into(), text.into_bytes());
        };
        toml("capstan.toml", "[instance]\nname = \"t\"\n".into());
        toml("projects/p/project.toml", project_toml.into());
        for (name, inputs, outputs) in recipes {
            toml(
                &format!("projects/p/recipes/{name}.toml"),
                format!("kind = \"shell\"\ninputs = [{inputs}]\noutputs = [{outputs}]\n"),
            );
        }
        for (name, _, _) in recipes {
            files
                .others
                .insert(format!("projects/p/recipes/{name}.sh").into());
        }
        let (home, _) = load(std::path::Path::new("/h"), &files);
        home
    }

    fn names(p: &Project) -> Vec<&str> {
        order(p).iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn producers_run_before_their_readers() {
        // Name order alone would run `a_report` first.
        let p = project(&[
            ("a_report", "\"totals\"", ""),
            ("b_clean", "\"raw\"", "\"clean\""),
            ("c_totals", "\"clean\"", "\"totals\""),
            ("d_alone", "", ""),
        ]);
        assert_eq!(names(&p), ["b_clean", "c_totals", "a_report", "d_alone"]);
        assert_eq!(producer(&p, "clean").unwrap().name, "b_clean");
        assert!(producer(&p, "raw").is_none());
    }

    #[test]
    fn inputs_without_data_are_errors_unless_a_recipe_builds_them() {
        let home = home(&[
            ("clean", "\"raw\"", "\"clean\""),
            ("report", "\"clean\"", ""),
        ]);
        let none = input_checks(&home, |_, _| false);
        let text: Vec<String> = none
            .iter()
            .map(|d| {
                format!(
                    "{:?} {} {}",
                    d.severity,
                    d.message,
                    d.help.clone().unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            text,
            [
                "Error input `raw` has no data, and no recipe of project `p` builds it import it: `capstan dataset import p/raw FILE.csv`",
                "Warning input `clean` has no data yet: recipe `clean` builds it run `capstan run p/clean` first",
            ]
        );
        assert!(input_checks(&home, |_, _| true).is_empty());
    }

    #[test]
    fn cycles_and_second_writers_are_found_and_named() {
        let home = home(&[
            ("x", "\"b\"", "\"a\""),
            ("y", "\"a\"", "\"b\""),
            ("z", "", "\"a\""),
            ("self", "\"s\"", "\"s\""),
            ("ok", "\"a\"", "\"c\""),
        ]);
        let cycles: Vec<Vec<&str>> = cycles(&home.projects["p"])
            .iter()
            .map(|c| c.iter().map(|r| r.name.as_str()).collect())
            .collect();
        assert_eq!(cycles, [["x", "y"]]);
        let text: Vec<String> = graph_checks(&home)
            .iter()
            .map(|d| format!("{}:{} {} {}", d.file.display(), d.line, d.field, d.message))
            .collect();
        assert_eq!(
            text,
            [
                "projects/p/recipes/y.toml:2 inputs recipes `x` reads `b` (projects/p/recipes/x.toml:2), `y` reads `a` (projects/p/recipes/y.toml:2) form a cycle: each reads what another of them writes, so none can run first",
                "projects/p/recipes/z.toml:3 outputs[a] dataset `a` is also written by recipe `x` (projects/p/recipes/x.toml:3): a dataset has one recipe that builds it",
            ]
        );
    }

    #[test]
    fn recipes_on_a_cycle_come_last_and_none_is_lost() {
        let p = project(&[
            ("x", "\"b\"", "\"a\""),
            ("y", "\"a\"", "\"b\""),
            ("z", "", "\"c\""),
        ]);
        assert_eq!(names(&p), ["z", "x", "y"]);
    }

    // ---- plans ----

    /// A definition the tests tell apart by `tag`.
    fn def(tag: &str) -> Definition {
        [("code", tag), ("recipe", "r"), ("settings", "s")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A version written by `recipe` from `inputs`, defined by `def("1")`.
    fn built(recipe: &str, version: u64, inputs: &[(&str, u64)]) -> DatasetState {
        DatasetState::Version {
            version,
            at_ms: 0,
            provenance: Provenance {
                written_by: WrittenBy::Activity {
                    job: 1,
                    idx: 0,
                    recipe: recipe.into(),
                },
                inputs: inputs.iter().map(|(d, v)| (d.to_string(), *v)).collect(),
                definition: def("1"),
            },
        }
    }

    fn imported(version: u64) -> DatasetState {
        DatasetState::Version {
            version,
            at_ms: 0,
            provenance: Provenance {
                written_by: WrittenBy::Import {
                    user: "ann".into(),
                    file: None,
                },
                inputs: BTreeMap::new(),
                definition: Definition::new(),
            },
        }
    }

    type States = BTreeMap<String, DatasetState>;

    fn states(list: &[(&str, DatasetState)]) -> States {
        list.iter()
            .map(|(d, s)| (d.to_string(), s.clone()))
            .collect()
    }

    /// raw (imported) → clean → left, right → report.
    fn diamond() -> Home {
        home(&DIAMOND)
    }

    const DIAMOND: [(&str, &str, &str); 4] = [
        ("clean", "\"raw\"", "\"clean\""),
        ("left", "\"clean\"", "\"left\""),
        ("right", "\"clean\"", "\"right\""),
        ("report", "\"left\", \"right\"", "\"report\""),
    ];

    fn diamond_built() -> States {
        states(&[
            ("raw", imported(1)),
            ("clean", built("clean", 1, &[("raw", 1)])),
            ("left", built("left", 1, &[("clean", 1)])),
            ("right", built("right", 1, &[("clean", 1)])),
            ("report", built("report", 1, &[("left", 1), ("right", 1)])),
        ])
    }

    fn state_in(states: &States) -> impl Fn(&str) -> DatasetState + '_ {
        |d| states.get(d).cloned().unwrap_or(DatasetState::Missing)
    }

    fn run(
        home: &Home,
        targets: &[&str],
        mode: BuildMode,
        states: &States,
    ) -> Result<Plan, Vec<String>> {
        let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        plan(home, "p", &targets, mode, state_in(states), |_| {
            Ok(def("1"))
        })
    }

    /// One line per step: recipe, needs, whether it runs, why.
    fn summary(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|s| {
                format!(
                    "{} {:?} {} {}",
                    s.recipe,
                    s.needs,
                    if s.runs { "runs" } else { "skip" },
                    s.why.join("; ")
                )
            })
            .collect()
    }

    #[test]
    fn a_smart_build_of_an_up_to_date_flow_runs_nothing() {
        let plan = run(&diamond(), &[], BuildMode::Smart, &diamond_built()).unwrap();
        assert_eq!(plan.targets, ["report"]);
        assert_eq!(plan.project, "p");
        assert_eq!(plan.mode, BuildMode::Smart);
        assert_eq!(
            summary(&plan),
            [
                "clean [] skip up to date",
                "left [0] skip up to date",
                "right [0] skip up to date",
                "report [1, 2] skip up to date",
            ]
        );
        assert_eq!(plan.runs().count(), 0);
    }

    #[test]
    fn a_new_input_version_reruns_its_reader_and_everything_downstream() {
        let mut now = diamond_built();
        now.insert("raw".into(), imported(2));
        let plan = run(&diamond(), &[], BuildMode::Smart, &now).unwrap();
        assert_eq!(
            summary(&plan),
            [
                "clean [] runs input `raw` changed (version 1 → 2)",
                "left [0] runs upstream `clean` runs",
                "right [0] runs upstream `clean` runs",
                "report [1, 2] runs upstream `left` runs; upstream `right` runs",
            ]
        );
        // A target needs only what is upstream of it.
        let plan = run(&diamond(), &["left"], BuildMode::Smart, &now).unwrap();
        assert_eq!(plan.targets, ["left"]);
        assert_eq!(
            summary(&plan),
            [
                "clean [] runs input `raw` changed (version 1 → 2)",
                "left [0] runs upstream `clean` runs",
            ]
        );
    }

    #[test]
    fn a_changed_definition_names_the_component_that_changed() {
        let home = diamond();
        let now = diamond_built();
        let plan = plan(
            &home,
            "p",
            &[],
            BuildMode::Smart,
            state_in(&now),
            |r: &Recipe| {
                let mut d = def("1");
                match r.name.as_str() {
                    "clean" => {
                        d.insert("recipe".into(), "r2".into());
                        d.insert("extra".into(), "x".into());
                    }
                    "left" => {
                        d.insert("code".into(), "2".into());
                    }
                    "right" => {
                        d.insert("lib".into(), "l".into());
                    }
                    _ => {
                        d.remove("settings");
                    }
                }
                Ok(d)
            },
        )
        .unwrap();
        assert_eq!(
            summary(&plan),
            [
                "clean [] runs its recipe file changed; its extra changed",
                "left [0] runs its code changed; upstream `clean` runs",
                "right [0] runs the project's lib/ changed; upstream `clean` runs",
                "report [1, 2] runs its settings changed (image, code env, Spark configuration or environment); upstream `left` runs; upstream `right` runs",
            ]
        );
    }

    #[test]
    fn outputs_without_data_or_written_by_others_make_a_recipe_stale() {
        let home = home(&[
            ("other", "", "\"x\""),
            ("split", "\"raw\"", "\"e\", \"d\", \"c\", \"b\", \"a\""),
        ]);
        let mut now = states(&[
            ("raw", imported(1)),
            ("a", built("split", 1, &[("raw", 1)])),
            ("c", DatasetState::Untracked),
            ("d", imported(4)),
            ("e", built("other", 2, &[])),
        ]);
        let why = |now: &States| {
            run(&home, &["a"], BuildMode::Smart, now).unwrap().steps[0]
                .why
                .clone()
        };
        assert_eq!(
            why(&now),
            [
                "output `b` has no data",
                "output `c` has no record of what wrote it",
                "output `d` was last written by an import",
                "output `e` was last written by recipe `other`",
            ]
        );
        // With no record of its own, its inputs are not compared.
        now.insert("a".into(), imported(1));
        now.insert("raw".into(), imported(9));
        assert_eq!(why(&now)[0], "output `a` was last written by an import");
        assert_eq!(why(&now).len(), 5);
        let none = states(&[("raw", imported(1))]);
        assert_eq!(why(&none), ["never built"]);
    }

    #[test]
    fn inputs_without_a_recorded_version_make_a_recipe_stale() {
        let home = home(&[("clean", "\"raw\", \"more\"", "\"clean\"")]);
        let now = states(&[
            ("raw", DatasetState::Untracked),
            ("more", imported(3)),
            ("clean", built("clean", 1, &[("raw", 1)])),
        ]);
        let plan = run(&home, &["clean"], BuildMode::Smart, &now).unwrap();
        assert_eq!(
            summary(&plan),
            [
                "clean [] runs input `raw` has no recorded version; input `more` was not read by its last run (now version 3)"
            ]
        );
    }

    #[test]
    fn a_recipe_that_reads_its_own_output_is_not_stale_for_it() {
        let home = home(&[("acc", "\"acc\", \"raw\"", "\"acc\"")]);
        let now = states(&[
            ("raw", imported(1)),
            ("acc", built("acc", 3, &[("acc", 2), ("raw", 1)])),
        ]);
        let plan = run(&home, &[], BuildMode::Smart, &now).unwrap();
        assert_eq!(plan.targets, ["acc"]);
        assert_eq!(summary(&plan), ["acc [] skip up to date"]);
    }

    #[test]
    fn a_forced_build_runs_only_the_producers_of_its_targets() {
        let home = diamond();
        let now = diamond_built();
        let plan = run(&home, &["report"], BuildMode::Force, &now).unwrap();
        assert_eq!(summary(&plan), ["report [] runs forced"]);
        let plan = run(&home, &["report", "left", "report"], BuildMode::Force, &now).unwrap();
        assert_eq!(plan.targets, ["report", "left"]);
        assert_eq!(
            summary(&plan),
            ["left [] runs forced", "report [0] runs forced"]
        );

        // Its inputs must have data, even those a recipe builds.
        let mut now = diamond_built();
        now.remove("right");
        now.remove("raw");
        assert_eq!(
            run(&home, &["report"], BuildMode::Force, &now).unwrap_err(),
            ["input `right` of `report` has no data: build it first, or use --mode smart"]
        );
        assert_eq!(
            run(&home, &["clean"], BuildMode::Force, &now).unwrap_err(),
            [
                "dataset `raw` has no data and no recipe builds it: import it with `capstan dataset import p/raw FILE.csv`"
            ]
        );
    }

    #[test]
    fn a_recursive_build_runs_everything_upstream_of_its_targets() {
        let plan = run(
            &diamond(),
            &["left"],
            BuildMode::Recursive,
            &diamond_built(),
        )
        .unwrap();
        assert_eq!(
            summary(&plan),
            [
                "clean [] runs recursive build",
                "left [0] runs recursive build"
            ]
        );
        // What a recipe builds need not have data yet; an import must.
        let none = states(&[("raw", imported(1))]);
        let plan = run(&diamond(), &[], BuildMode::Recursive, &none).unwrap();
        assert_eq!(plan.runs().count(), 4);
        assert_eq!(
            run(&diamond(), &[], BuildMode::Recursive, &States::new()).unwrap_err(),
            [
                "dataset `raw` has no data and no recipe builds it: import it with `capstan dataset import p/raw FILE.csv`"
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let home = diamond();
        let mut now = diamond_built();
        now.remove("raw");
        let targets = vec!["reprot".to_string(), "left".to_string(), "zzz".to_string()];
        let errors = plan(
            &home,
            "p",
            &targets,
            BuildMode::Smart,
            state_in(&now),
            |r: &Recipe| {
                if r.name == "left" {
                    Err("cannot read /h/projects/p/recipes/left.sh: boom".into())
                } else {
                    Ok(def("1"))
                }
            },
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "project `p` has no dataset `reprot`: did you mean `report`?",
                "project `p` has no dataset `zzz`: expected one of: `clean`, `left`, `raw`, `report`, `right`",
                "dataset `raw` has no data and no recipe builds it: import it with `capstan dataset import p/raw FILE.csv`",
                "cannot tell what defines recipe `left`: cannot read /h/projects/p/recipes/left.sh: boom",
            ]
        );
        assert_eq!(
            run(&home, &[], BuildMode::Smart, &now).unwrap_err().len(),
            1,
            "the missing import is told once, however many read it"
        );
        let errors = plan(&home, "q", &[], BuildMode::Smart, state_in(&now), |_| {
            Ok(def("1"))
        });
        assert_eq!(
            errors.unwrap_err(),
            ["there is no project `q`: expected one of: `p`"]
        );
    }

    #[test]
    fn a_target_with_data_and_no_recipe_needs_no_step() {
        let home = diamond();
        let plan = run(&home, &["raw"], BuildMode::Smart, &diamond_built()).unwrap();
        assert!(plan.steps.is_empty());
        assert_eq!(
            run(&home, &["raw"], BuildMode::Force, &States::new()).unwrap_err(),
            [
                "dataset `raw` has no data and no recipe builds it: import it with `capstan dataset import p/raw FILE.csv`"
            ]
        );
    }

    #[test]
    fn the_default_targets_are_the_ends_of_the_flow() {
        let mut recipes = DIAMOND.to_vec();
        recipes.push(("notify", "\"report\"", ""));
        recipes.push(("orphan", "", "\"o\""));
        let home = home(&recipes);
        let plan = run(&home, &[], BuildMode::Smart, &diamond_built()).unwrap();
        // `report` is read by `notify` only, which writes nothing: no build runs `notify`,
        // and `report` is an end of the flow.
        assert_eq!(plan.targets, ["o", "report"]);
        assert_eq!(
            summary(&plan),
            [
                "clean [] skip up to date",
                "left [0] skip up to date",
                "orphan [] runs never built",
                "right [0] skip up to date",
                "report [1, 3] skip up to date",
            ]
        );
    }

    #[test]
    fn a_cycle_is_refused_by_a_plan_and_shown_by_the_view() {
        let home = home(&[
            ("x", "\"b\"", "\"a\""),
            ("y", "\"a\"", "\"b\""),
            ("z", "\"a\"", "\"c\""),
        ]);
        assert_eq!(
            run(&home, &["c"], BuildMode::Smart, &States::new()).unwrap_err(),
            [
                "recipes `x`, `y` form a cycle: each reads what another of them writes, so none can run first (`capstan check` shows where)"
            ]
        );
        let view = view(&home, "p", |_| DatasetState::Missing, |_| Ok(def("1"))).unwrap();
        let status: Vec<(&str, &RecipeStatus)> = view
            .recipes
            .iter()
            .map(|r| (r.name.as_str(), &r.status))
            .collect();
        assert_eq!(
            status,
            [
                ("x", &RecipeStatus::NeverBuilt),
                ("y", &RecipeStatus::NeverBuilt),
                ("z", &RecipeStatus::NeverBuilt)
            ]
        );
        let now = states(&[
            ("a", built("x", 1, &[("b", 1)])),
            ("b", built("y", 1, &[("a", 1)])),
        ]);
        let view = super::view(&home, "p", state_in(&now), |_| Ok(def("1"))).unwrap();
        assert_eq!(
            view.recipes[0].status,
            RecipeStatus::Stale(vec![
                "it is on a cycle: recipes `x`, `y` read each other's outputs".into()
            ])
        );
    }

    #[test]
    fn each_dataset_state_is_asked_once() {
        let asked = std::cell::RefCell::new(Vec::new());
        let now = diamond_built();
        let plan = plan(
            &diamond(),
            "p",
            &[],
            BuildMode::Smart,
            |d: &str| {
                asked.borrow_mut().push(d.to_string());
                now.get(d).cloned().unwrap_or(DatasetState::Missing)
            },
            |_| Ok(def("1")),
        )
        .unwrap();
        assert_eq!(plan.runs().count(), 0);
        let mut asked = asked.into_inner();
        asked.sort();
        assert_eq!(asked, ["clean", "left", "raw", "report", "right"]);
    }

    #[test]
    fn order_is_the_one_of_the_first_ready_recipe_by_name() {
        // A layered flow with a fixed pseudo-random shape, checked against the plain algorithm.
        let mut seed: u64 = 7;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let specs: Vec<(String, String, String)> = (0..60u64)
            .map(|i| {
                let inputs: Vec<String> = (0..next(3))
                    .filter(|_| i > 0)
                    .map(|_| format!("\"d{}\"", next(i.max(1))))
                    .collect();
                (
                    format!("r{}", next(1000)),
                    inputs.join(", "),
                    format!("\"d{i}\""),
                )
            })
            .collect();
        let recipes: Vec<(&str, &str, &str)> = specs
            .iter()
            .map(|(n, i, o)| (n.as_str(), i.as_str(), o.as_str()))
            .collect();
        let p = project(&recipes);
        // The plain algorithm: again and again, the first recipe by name whose producers are done.
        let mut done: Vec<&str> = Vec::new();
        while let Some(r) = p.recipes.values().find(|r| {
            !done.contains(&r.name.as_str())
                && r.inputs.iter().all(|i| {
                    producer(&p, &i.value)
                        .is_none_or(|w| w.name == r.name || done.contains(&w.name.as_str()))
                })
        }) {
            done.push(&r.name);
        }
        assert_eq!(names(&p), done);
    }

    // ---- the view ----

    fn view_home() -> Home {
        home_with("[project]\n\n[dataset.extra]\n", &DIAMOND)
    }

    fn view_states() -> States {
        let mut now = diamond_built();
        now.remove("right");
        now
    }

    #[test]
    fn the_view_shows_every_dataset_and_recipe_with_its_status() {
        let now = view_states();
        let view = view(&view_home(), "p", state_in(&now), |_| Ok(def("1"))).unwrap();
        assert_eq!(view.project, "p");
        let datasets: Vec<String> = view
            .datasets
            .iter()
            .map(|d| {
                format!(
                    "{} {:?} {:?} {}",
                    d.name,
                    d.producer,
                    d.readers,
                    state_label(&d.state)
                )
            })
            .collect();
        assert_eq!(
            datasets,
            [
                "clean Some(\"clean\") [\"left\", \"right\"] v1",
                "extra None [] no data",
                "left Some(\"left\") [\"report\"] v1",
                "raw None [\"clean\"] v1",
                "report Some(\"report\") [] v1",
                "right Some(\"right\") [\"report\"] no data",
            ]
        );
        assert_eq!(
            view.recipes[3],
            RecipeView {
                name: "report".into(),
                kind: "shell".into(),
                inputs: vec!["left".into(), "right".into()],
                outputs: vec!["report".into()],
                status: RecipeStatus::Stale(vec![
                    "input `right` has no data".into(),
                    "upstream `right` runs".into()
                ]),
            }
        );
        let status: Vec<(&str, &str)> = view
            .recipes
            .iter()
            .map(|r| (r.name.as_str(), r.status.as_str()))
            .collect();
        assert_eq!(
            status,
            [
                ("clean", "up to date"),
                ("left", "up to date"),
                ("right", "never built"),
                ("report", "stale"),
            ]
        );
    }

    #[test]
    fn the_view_shows_a_missing_import_rather_than_failing() {
        let view = view(
            &view_home(),
            "p",
            |_| DatasetState::Missing,
            |_| Ok(def("1")),
        )
        .unwrap();
        assert!(
            view.recipes
                .iter()
                .all(|r| r.status == RecipeStatus::NeverBuilt)
        );
        let mut now = diamond_built();
        now.remove("raw");
        let view = super::view(&view_home(), "p", state_in(&now), |_| Ok(def("1"))).unwrap();
        assert_eq!(
            view.recipes[0].status,
            RecipeStatus::Stale(vec!["input `raw` has no data".into()])
        );
        assert_eq!(view.datasets[3].state, DatasetState::Missing);
        // What is not about data still fails it.
        assert_eq!(
            super::view(&view_home(), "p", state_in(&now), |_| Err("boom".into())).unwrap_err()[0],
            "cannot tell what defines recipe `clean`: boom"
        );
    }

    #[test]
    fn the_view_renders_as_graphviz() {
        let now = view_states();
        let view = view(&view_home(), "p", state_in(&now), |_| Ok(def("1"))).unwrap();
        assert_eq!(
            to_dot(&view),
            r##"digraph "p" {
  rankdir=LR;
  node [fontname="Helvetica", fontsize=11];
  "dataset:clean" [shape=cylinder, label="clean\nv1"];
  "dataset:extra" [shape=cylinder, style=dashed, label="extra\nno data"];
  "dataset:left" [shape=cylinder, label="left\nv1"];
  "dataset:raw" [shape=cylinder, label="raw\nv1"];
  "dataset:report" [shape=cylinder, label="report\nv1"];
  "dataset:right" [shape=cylinder, style=dashed, label="right\nno data"];
  "recipe:clean" [shape=ellipse, style=filled, fillcolor="#d4edda", label="clean (shell)\nup to date"];
  "recipe:left" [shape=ellipse, style=filled, fillcolor="#d4edda", label="left (shell)\nup to date"];
  "recipe:right" [shape=ellipse, style=filled, fillcolor="#e0e0e0", label="right (shell)\nnever built"];
  "recipe:report" [shape=ellipse, style=filled, fillcolor="#ffe0b2", label="report (shell)\nstale", tooltip="input `right` has no data\nupstream `right` runs"];
  "dataset:raw" -> "recipe:clean";
  "recipe:clean" -> "dataset:clean";
  "dataset:clean" -> "recipe:left";
  "recipe:left" -> "dataset:left";
  "dataset:clean" -> "recipe:right";
  "recipe:right" -> "dataset:right";
  "dataset:left" -> "recipe:report";
  "dataset:right" -> "recipe:report";
  "recipe:report" -> "dataset:report";
}
"##
        );
        assert_eq!(dot_quote("a\"b\\c\nd"), r#""a\"b\\c\nd""#);
    }

    #[test]
    fn the_view_renders_as_mermaid() {
        let now = view_states();
        let view = view(&view_home(), "p", state_in(&now), |_| Ok(def("1"))).unwrap();
        assert_eq!(
            to_mermaid(&view),
            r##"flowchart LR
  d_clean[("clean<br/>v1")]
  d_extra[("extra<br/>no data")]
  d_left[("left<br/>v1")]
  d_raw[("raw<br/>v1")]
  d_report[("report<br/>v1")]
  d_right[("right<br/>no data")]
  r_clean(["clean (shell)<br/>up to date"])
  r_left(["left (shell)<br/>up to date"])
  r_right(["right (shell)<br/>never built"])
  r_report(["report (shell)<br/>stale"])
  d_raw --> r_clean
  r_clean --> d_clean
  d_clean --> r_left
  r_left --> d_left
  d_clean --> r_right
  r_right --> d_right
  d_left --> r_report
  d_right --> r_report
  r_report --> d_report
  classDef uptodate fill:#d4edda,stroke:#2e7d32
  classDef stale fill:#ffe0b2,stroke:#ef6c00
  classDef neverbuilt fill:#e0e0e0,stroke:#757575
  classDef nooutputs fill:#ffffff,stroke:#9e9e9e
  classDef nodata stroke-dasharray:4 4
  class r_right neverbuilt
  class d_extra,d_right nodata
  class r_report stale
  class r_clean,r_left uptodate
"##
        );
        // Ids are safe and distinct, labels quoted.
        assert_eq!(mermaid_id("d_", "a-b.c"), "d_a_2d_b_2e_c");
        assert_eq!(mermaid_id("d_", "a_b"), "d_a__b");
        assert_eq!(
            mermaid_label(&["say \"hi\" #1 <b>"]),
            "\"say #quot;hi#quot; #35;1 #lt;b#gt;\""
        );
    }

    // ---- definitions ----

    /// A home folder on disk, removed at the end.
    struct TempHome(std::path::PathBuf);

    impl TempHome {
        fn new(tag: &str) -> TempHome {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir()
                .join(format!("capstan-flow-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempHome(dir)
        }

        fn write(&self, rel: &str, text: &str) {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }

        fn definition(&self, project: &str, recipe: &str) -> Result<Definition, String> {
            let (home, _) = crate::load_home(&self.0).unwrap();
            let r = crate::resolve::resolve(
                &home,
                project,
                recipe,
                &crate::resolve::RunRequest::default(),
            )
            .unwrap();
            definition(&home, &self.0, &r)
        }
    }

    impl Drop for TempHome {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const PROJECT_TOML: &str =
        "[project]\n\n[defaults]\ntimeout = \"30m\"\n\n[defaults.env]\nMODE = \"full\"\n";

    fn definition_home() -> TempHome {
        let h = TempHome::new("definition");
        h.write("capstan.toml", "[instance]\nname = \"t\"\n");
        h.write(
            "images.toml",
            "[code_env.py]\nlanguage = \"python\"\npackages = [\"pandas==2.2\"]\nrequirements_file = \"envs/req.txt\"\n",
        );
        h.write("envs/req.txt", "numpy\n");
        h.write("projects/p/project.toml", PROJECT_TOML);
        h.write(
            "projects/p/recipes/clean.toml",
            "kind = \"python\"\ninputs = [\"raw\"]\noutputs = [\"clean\"]\ncode_env = \"py\"\n",
        );
        h.write("projects/p/recipes/clean.py", "print(1)\n");
        h.write("projects/p/lib/util.py", "X = 1\n");
        h.write("projects/p/lib/sub/more.py", "Y = 2\n");
        h.write("projects/p/lib/__pycache__/util.pyc", "bytecode");
        std::os::unix::fs::symlink("util.py", h.0.join("projects/p/lib/link.py")).unwrap();
        h.write("projects/q/project.toml", "[project]\n");
        h.write(
            "projects/q/recipes/viz.toml",
            "kind = \"visual\"\ninputs = [\"raw\"]\noutputs = [\"chart\"]\n",
        );
        h
    }

    /// The components that differ between two definitions.
    fn changed(a: &Definition, b: &Definition) -> Vec<String> {
        a.keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    #[test]
    fn a_definition_hashes_each_component_from_the_files() {
        let h = definition_home();
        let first = h.definition("p", "clean").unwrap();
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            ["code", "lib", "recipe", "settings"]
        );
        // printf 'print(1)\n' | sha256sum
        assert_eq!(first["code"], sha256_hex(b"print(1)\n"));
        let toml = std::fs::read(h.0.join("projects/p/recipes/clean.toml")).unwrap();
        assert_eq!(first["recipe"], sha256_hex(&toml));
        assert!(first.values().all(|v| v.len() == 64));
        assert_eq!(
            h.definition("p", "clean").unwrap(),
            first,
            "the same files, the same definition"
        );

        // No code file, no lib/: no such component.
        let viz = h.definition("q", "viz").unwrap();
        assert_eq!(viz.keys().collect::<Vec<_>>(), ["recipe", "settings"]);
    }

    #[test]
    fn a_definition_changes_with_what_changes_results_only() {
        let h = definition_home();
        let first = h.definition("p", "clean").unwrap();
        let mut now = first.clone();
        let mut step = |what: &str, change: &dyn Fn(&TempHome)| {
            change(&h);
            let next = h.definition("p", "clean").unwrap();
            let diff = changed(&now, &next);
            now = next;
            format!("{what}: {}", diff.join(" "))
        };
        let steps = [
            step("timeout", &|h| {
                h.write(
                    "projects/p/project.toml",
                    &PROJECT_TOML.replace("30m", "45m"),
                )
            }),
            step("pycache", &|h| {
                h.write("projects/p/lib/__pycache__/util.pyc", "other")
            }),
            step("env", &|h| {
                h.write(
                    "projects/p/project.toml",
                    &PROJECT_TOML.replace("full", "fast"),
                )
            }),
            step("requirements", &|h| h.write("envs/req.txt", "numpy==2\n")),
            step("packages", &|h| {
                h.write("images.toml", "[code_env.py]\nlanguage = \"python\"\npackages = [\"pandas==2.3\"]\nrequirements_file = \"envs/req.txt\"\n")
            }),
            step("code", &|h| {
                h.write("projects/p/recipes/clean.py", "print(2)\n")
            }),
            step("recipe", &|h| {
                h.write("projects/p/recipes/clean.toml", "kind = \"python\"\ninputs = [\"raw\"]\noutputs = [\"clean\"]\ncode_env = \"py\"\ndescription = \"x\"\n")
            }),
            step("lib file", &|h| {
                h.write("projects/p/lib/sub/more.py", "Y = 3\n")
            }),
            step("lib name", &|h| {
                std::fs::rename(
                    h.0.join("projects/p/lib/sub/more.py"),
                    h.0.join("projects/p/lib/sub/most.py"),
                )
                .unwrap()
            }),
            step("lib link", &|h| {
                let link = h.0.join("projects/p/lib/link.py");
                std::fs::remove_file(&link).unwrap();
                std::os::unix::fs::symlink("sub/most.py", &link).unwrap();
            }),
        ];
        assert_eq!(
            steps,
            [
                "timeout: ",
                "pycache: ",
                "env: settings",
                "requirements: settings",
                "packages: settings",
                "code: code",
                "recipe: recipe",
                "lib file: lib",
                "lib name: lib",
                "lib link: lib",
            ]
        );
    }

    #[test]
    fn an_unreadable_file_is_an_error_that_names_it() {
        let h = definition_home();
        let (home, _) = crate::load_home(&h.0).unwrap();
        let r = crate::resolve::resolve(&home, "p", "clean", &Default::default()).unwrap();
        std::fs::remove_file(h.0.join("projects/p/recipes/clean.py")).unwrap();
        let e = definition(&home, &h.0, &r).unwrap_err();
        let path = h.0.join("projects/p/recipes/clean.py");
        assert!(
            e.starts_with(&format!("cannot read {}: ", path.display())),
            "{e}"
        );
        std::fs::remove_file(h.0.join("envs/req.txt")).unwrap();
        h.write("projects/p/recipes/clean.py", "print(1)\n");
        let e = definition(&home, &h.0, &r).unwrap_err();
        assert!(e.contains("envs/req.txt"), "{e}");
    }
}
