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
    fn recipes_on_a_cycle_come_last_and_none_is_lost() {
        let p = project(&[
            ("x", "\"b\"", "\"a\""),
            ("y", "\"a\"", "\"b\""),
            ("z", "", "\"c\""),
        ]);
        assert_eq!(names(&p), ["z", "x", "y"]);
    }
}
