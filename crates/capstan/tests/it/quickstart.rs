//! `capstan quickstart`, the README's main job, on a fresh home, as a newcomer runs it.

use crate::support::{TempDir, capstan, stdout};

#[test]
fn quickstart_on_a_fresh_home_imports_the_data_runs_the_flow_in_order_and_shows_results() {
    let dir = TempDir::new("quickstart");
    let out = capstan()
        .current_dir(dir.path())
        .arg("quickstart")
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    // The sample's data, imported before any recipe reads it.
    assert!(
        text.contains("imported sample/wine: 178 rows from projects/sample/data/wine.csv"),
        "{text}"
    );
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("`{needle}` not in:\n{text}"))
    };
    assert!(at("imported sample/wine") < at("==> capstan build sample/"));
    // Every local recipe ran and succeeded: those that write no dataset on their own, the
    // others in one build; and the Spark recipe's result is shown.
    for recipe in ["hello", "inventory"] {
        assert!(text.contains(&format!("==> sample/{recipe} (")), "{text}");
    }
    assert!(at("sample/wine_sql: running") < at("sample/wine_sql: succeeded"));
    // The visual flow, on the built-in engine: prepare, then group, then the join of both.
    assert!(at("sample/wine_prepare: succeeded") < at("sample/wine_cultivar_stats: running"));
    assert!(at("sample/wine_cultivar_stats: succeeded") < at("sample/wine_enriched: running"));
    assert!(text.contains("sample/wine_enriched:"), "{text}");
    assert!(!text.contains("error:"), "{text}");
    assert!(text.contains("sample/wine_by_cultivar_sql:"), "{text}");
    for cultivar in ["class_0", "class_1", "class_2"] {
        assert!(text.contains(&format!("| {cultivar}")), "{text}");
    }
    // The container recipes are named as left out, with the command that runs them.
    assert!(
        text.contains("sample/wine_stats: runs in a container (exec config docker-small)"),
        "{text}"
    );
    // No framework chatter on the terminal: Spark's log stays in the job's log.
    assert!(
        !text
            .lines()
            .any(|l| l.contains(" INFO ") || l.contains(" WARN ")),
        "{text}"
    );
    // The ML flow: the training, then the score and the evaluation of the version it saved.
    assert!(at("sample/wine_model: succeeded") < at("sample/wine_scored: running"));
    assert!(at("sample/wine_model: succeeded") < at("sample/wine_eval: running"));
    assert!(
        text.contains("sample/wine_model: saved model v1 (active)"),
        "{text}"
    );
    assert!(text.contains("9 recipe(s) succeeded"), "{text}");
    // A second run uses the home it made, and the data it imported.
    let again = capstan()
        .current_dir(dir.path())
        .arg("quickstart")
        .output()
        .unwrap();
    let text = stdout(&again);
    assert_eq!(again.status.code(), Some(0), "{text}");
    assert!(
        text.contains("using home") && !text.contains("imported sample/wine"),
        "{text}"
    );
    // Built already: the build runs nothing.
    assert!(
        text.contains("7 up to date") && text.contains("everything is up to date"),
        "{text}"
    );
}
