//! A project's flow: its datasets and the recipes between them, from the recipes' declared
//! inputs and outputs.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Project, Recipe};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{HomeFiles, load};

    fn project(recipes: &[(&str, &str, &str)]) -> Project {
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
        home.projects["p"].clone()
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
    fn recipes_on_a_cycle_come_last_and_none_is_lost() {
        let p = project(&[
            ("x", "\"b\"", "\"a\""),
            ("y", "\"a\"", "\"b\""),
            ("z", "", "\"c\""),
        ]);
        assert_eq!(names(&p), ["z", "x", "y"]);
    }
}
