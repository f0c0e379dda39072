//! A project's flow: its datasets and the recipes between them, from the recipes' declared
//! inputs and outputs.

use std::collections::{BTreeMap, BTreeSet};

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{Home, Project, Recipe};

/// The recipe of `project` that writes `dataset`, if one does.
pub fn producer<'p>(project: &'p Project, dataset: &str) -> Option<&'p Recipe> {
    project
        .recipes
        .values()
        .find(|r| r.outputs.iter().any(|o| o.value == dataset))
}

/// The project's recipes in an order where each dataset's producer comes before its readers;
/// recipes that do not depend on each other keep their name order. Recipes on a cycle (which
/// `capstan check` refuses) come last, in name order.
pub fn order(project: &Project) -> Vec<&Recipe> {
    // For each recipe, the recipes it reads from.
    let mut needs: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in project.recipes.values() {
        let upstream = r
            .inputs
            .iter()
            .filter_map(|i| producer(project, &i.value))
            .map(|p| p.name.as_str())
            .filter(|p| *p != r.name)
            .collect();
        needs.insert(r.name.as_str(), upstream);
    }
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    loop {
        let ready: Vec<&str> = needs
            .iter()
            .filter(|(name, up)| !done.contains(*name) && up.iter().all(|u| done.contains(u)))
            .map(|(name, _)| *name)
            .collect();
        let Some(next) = ready.first() else { break };
        done.insert(next);
        out.push(&project.recipes[*next]);
    }
    out.extend(
        project
            .recipes
            .values()
            .filter(|r| !done.contains(r.name.as_str())),
    );
    out
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
    // Edges: recipe -> the recipes it reads from.
    let upstream = |r: &Recipe| -> Vec<&Recipe> {
        let mut ups: Vec<&Recipe> = r
            .inputs
            .iter()
            .filter_map(|i| producer(project, &i.value))
            .filter(|p| p.name != r.name)
            .collect();
        ups.sort_by(|a, b| a.name.cmp(&b.name));
        ups.dedup_by(|a, b| a.name == b.name);
        ups
    };
    // Which recipes each reaches (depth-first from each; flows are small, and 1,000 recipes
    // cost a million steps at most).
    let reach = |from: &Recipe| -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut stack = upstream(from);
        while let Some(r) = stack.pop() {
            if seen.insert(r.name.as_str()) {
                stack.extend(upstream(r));
            }
        }
        seen
    };
    let reached: BTreeMap<&str, BTreeSet<&str>> = project
        .recipes
        .values()
        .map(|r| (r.name.as_str(), reach(r)))
        .collect();
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for r in project.recipes.values() {
        let name = r.name.as_str();
        if placed.contains(name) || !reached[name].contains(name) {
            continue;
        }
        // Its cycle-mates: those it reaches that reach it back.
        let mates: BTreeSet<&str> = reached[name]
            .iter()
            .copied()
            .filter(|m| reached[m].contains(name))
            .collect();
        // In reading order: from `r`, each next one a mate it reads from.
        let mut cycle = vec![r];
        let mut at = r;
        while let Some(next) = upstream(at)
            .into_iter()
            .find(|u| mates.contains(u.name.as_str()) && !cycle.iter().any(|c| c.name == u.name))
        {
            cycle.push(next);
            at = next;
        }
        placed.extend(mates.iter().copied());
        placed.insert(name);
        out.push(cycle);
    }
    out
}

/// Recipes whose inputs have no data (`has_data(project, dataset)` says, from the dataset
/// store): an error where nothing in the project builds the input (it must be imported), a
/// warning where a recipe builds it but has not yet. A run of either would be refused before it
/// starts; `capstan check --deep` says so for the whole home at once.
pub fn input_checks(home: &Home, has_data: impl Fn(&str, &str) -> bool) -> Vec<Diagnostic> {
    let mut diags = Diagnostics::default();
    for p in home.projects.values() {
        for r in p.recipes.values() {
            for i in r.inputs.iter().filter(|i| !has_data(&p.key, &i.value)) {
                let field = format!("inputs[{}]", i.value);
                match producer(p, &i.value) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{HomeFiles, load};

    fn project(recipes: &[(&str, &str, &str)]) -> Project {
        home(recipes).projects["p"].clone()
    }

    fn home(recipes: &[(&str, &str, &str)]) -> Home {
        let mut files = HomeFiles::default();
        let mut toml = |path: &str, text: String| {
            files.toml.insert(path.into(), text.into_bytes());
        };
        toml("capstan.toml", "[instance]\nname = \"t\"\n".into());
        toml("projects/p/project.toml", "[project]\n".into());
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
}
