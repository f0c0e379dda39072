//! How long a smart build plan of a large flow takes: 1,000 recipes in a layered flow, read
//! from a home on disk, each recipe's definition hashed from its real files.
//!
//! `cargo bench -p capstan-core --bench plan`. The goal: a plan of 1,000 recipes, definitions
//! included, well under 200 ms.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capstan_core::Home;
use capstan_core::flow::{self, BuildMode, DatasetState, Definition, Plan, Provenance, WrittenBy};
use capstan_core::model::Recipe;
use capstan_core::resolve::{RunRequest, resolve};

const RECIPES: usize = 1000;
/// Recipes per layer: each reads one to three outputs of earlier layers.
const WIDTH: usize = 50;
/// Imported datasets the first layer reads.
const IMPORTS: usize = 10;
const RUNS: usize = 5;

/// A fixed pseudo-random sequence, so every run benches the same flow.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Writes the home and returns its root.
fn make_home() -> PathBuf {
    let root = std::env::temp_dir().join(format!("capstan-bench-plan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    write(&root, "capstan.toml", "[instance]\nname = \"bench\"\n");
    // Every dataset is declared, as `capstan check` wants.
    let mut project = String::from("[project]\nname = \"Bench\"\n\n[defaults]\ntimeout = \"1h\"\n");
    for k in 0..IMPORTS {
        project.push_str(&format!("\n[dataset.raw{k}]\n"));
    }
    for i in 0..RECIPES {
        project.push_str(&format!("\n[dataset.d{i:04}]\n"));
    }
    write(&root, "projects/b/project.toml", &project);
    write(
        &root,
        "projects/b/lib/helpers.sh",
        "helper() { echo \"$1\"; }\n",
    );
    write(&root, "projects/b/lib/sub/more.sh", "more() { :; }\n");
    let mut rng = Lcg(42);
    for i in 0..RECIPES {
        let layer = i / WIDTH;
        let inputs: Vec<String> = if layer == 0 {
            vec![format!("\"raw{}\"", i % IMPORTS)]
        } else {
            let mut picked: Vec<usize> = (0..1 + rng.below(3))
                .map(|_| rng.below(layer * WIDTH))
                .collect();
            picked.sort_unstable();
            picked.dedup();
            picked.iter().map(|p| format!("\"d{p:04}\"")).collect()
        };
        write(
            &root,
            &format!("projects/b/recipes/r{i:04}.toml"),
            &format!(
                "kind = \"shell\"\ndescription = \"step {i}\"\ninputs = [{}]\noutputs = [\"d{i:04}\"]\n\n[env]\nSTEP = \"{i}\"\n",
                inputs.join(", ")
            ),
        );
        write(
            &root,
            &format!("projects/b/recipes/r{i:04}.sh"),
            &format!("#!/bin/sh\n. lib/helpers.sh\nhelper step-{i}\n"),
        );
    }
    root
}

fn definition_of(home: &Home, root: &Path, r: &Recipe) -> Result<Definition, String> {
    let resolution = resolve(home, "b", &r.name, &RunRequest::default()).map_err(|e| {
        e.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    flow::definition(home, root, &resolution)
}

/// Every dataset at version 1, each written by its producer from version 1 of its inputs with
/// its current definition: a flow that is all up to date.
fn up_to_date(home: &Home, root: &Path) -> BTreeMap<String, DatasetState> {
    let project = &home.projects["b"];
    let mut states = BTreeMap::new();
    for k in 0..IMPORTS {
        states.insert(
            format!("raw{k}"),
            DatasetState::Version {
                version: 1,
                at_ms: 0,
                provenance: Provenance {
                    written_by: WrittenBy::Import {
                        user: "bench".into(),
                        file: None,
                    },
                    inputs: BTreeMap::new(),
                    definition: Definition::new(),
                },
            },
        );
    }
    for r in project.recipes.values() {
        let definition = definition_of(home, root, r).unwrap();
        for o in &r.outputs {
            states.insert(
                o.value.clone(),
                DatasetState::Version {
                    version: 1,
                    at_ms: 0,
                    provenance: Provenance {
                        written_by: WrittenBy::Activity {
                            job: 1,
                            idx: 0,
                            recipe: r.name.clone(),
                        },
                        inputs: r.inputs.iter().map(|i| (i.value.clone(), 1)).collect(),
                        definition: definition.clone(),
                    },
                },
            );
        }
    }
    states
}

/// The fastest and the median of `RUNS` runs of `f`, and its last result.
fn time<T>(mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed());
    }
    times.sort();
    (times[0], times[RUNS / 2], last.unwrap())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn report(what: &str, (min, median, _): &(Duration, Duration, impl Sized)) {
    println!("{what}: {} (median {})", ms(*min), ms(*median));
}

fn main() {
    let root = make_home();

    let load = time(|| capstan_core::load_home(&root).unwrap());
    report(&format!("read + load a home of {RECIPES} recipes"), &load);
    let (home, diags) = load.2;
    let errors: Vec<_> = diags
        .iter()
        .filter(|d| d.severity == capstan_core::Severity::Error)
        .collect();
    assert!(
        errors.is_empty(),
        "the bench home has {} errors, the first: {:?}",
        errors.len(),
        errors.first()
    );

    let defs = time(|| {
        home.projects["b"]
            .recipes
            .values()
            .map(|r| definition_of(&home, &root, r).unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(defs.2.len(), RECIPES);
    report(&format!("resolve + hash {RECIPES} definitions"), &defs);

    let states = up_to_date(&home, &root);
    let smart = |states: &BTreeMap<String, DatasetState>| -> Plan {
        flow::plan(
            &home,
            "b",
            &[],
            BuildMode::Smart,
            |d| states.get(d).cloned().unwrap_or(DatasetState::Missing),
            |r| definition_of(&home, &root, r),
        )
        .unwrap()
    };

    let fresh = time(|| smart(&states));
    assert_eq!(fresh.2.steps.len(), RECIPES);
    assert_eq!(fresh.2.runs().count(), 0, "everything is up to date");
    report(
        &format!("plan {RECIPES} recipes (smart, all up to date, definitions hashed)"),
        &fresh,
    );

    // A new version of one import: everything downstream of it reruns.
    let mut changed = states.clone();
    if let Some(DatasetState::Version { version, .. }) = changed.get_mut("raw0") {
        *version = 2;
    }
    let rerun = time(|| smart(&changed));
    report(
        &format!(
            "plan {RECIPES} recipes (smart, raw0 changed: {} rerun, definitions hashed)",
            rerun.2.runs().count()
        ),
        &rerun,
    );

    // Every import changed: everything reruns.
    for k in 0..IMPORTS {
        if let Some(DatasetState::Version { version, .. }) = changed.get_mut(&format!("raw{k}")) {
            *version = 2;
        }
    }
    let all = time(|| smart(&changed));
    assert_eq!(all.2.runs().count(), RECIPES, "everything reruns");
    report(
        &format!(
            "plan {RECIPES} recipes (smart, every root changed: all rerun, definitions hashed)"
        ),
        &all,
    );

    // The planning alone, with definitions known.
    let known: BTreeMap<String, Definition> = home.projects["b"]
        .recipes
        .values()
        .map(|r| (r.name.clone(), definition_of(&home, &root, r).unwrap()))
        .collect();
    let pure = time(|| {
        flow::plan(
            &home,
            "b",
            &[],
            BuildMode::Smart,
            |d| states.get(d).cloned().unwrap_or(DatasetState::Missing),
            |r| Ok(known[&r.name].clone()),
        )
        .unwrap()
    });
    report(
        &format!("plan {RECIPES} recipes (smart, all up to date, definitions known)"),
        &pure,
    );
    let view = time(|| {
        flow::view(
            &home,
            "b",
            |d| states.get(d).cloned().unwrap_or(DatasetState::Missing),
            |r| Ok(known[&r.name].clone()),
        )
        .unwrap()
    });
    report(
        &format!("view of {RECIPES} recipes (definitions known)"),
        &view,
    );

    let _ = std::fs::remove_dir_all(&root);
}
