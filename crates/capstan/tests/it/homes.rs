//! Data-driven tests: each folder under `tests/homes/` holds a home (valid or broken) and a
//! `commands` file; the transcript of running them is compared with a snapshot.
//!
//! To add a case, add a folder; to accept new output, run with `INSTA_UPDATE=always` and
//! review the `.snap` files in git.

use std::path::Path;

use crate::support::{TempDir, capstan, copy_dir, transcript};

#[test]
fn homes() {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.add_filter(r"cap_[0-9a-f]{40}", "[TOKEN]");
    settings.add_filter(r"/\S*/capstan-it-[a-z0-9-]+", "[HOME]");
    settings.add_filter(r"this host's \d+", "this host's [N]");
    settings.add_filter(r"(?m)^Python \S+ on \S+$", "Python [VERSION] on [HOST]");
    settings.bind(|| {
        insta::glob!("../homes", "*/commands", run_case);
    });
}

fn run_case(commands: &Path) {
    let case = commands.parent().unwrap();
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let tmp = TempDir::new(&name);
    let home = case.join("home");
    if home.is_dir() {
        copy_dir(&home, tmp.path());
    }
    let text = std::fs::read_to_string(commands).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let args: Vec<&str> = line.split_whitespace().collect();
        let output = capstan()
            .args(&args)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        out += &transcript(line, &output);
        out.push('\n');
    }
    insta::assert_snapshot!(name, out);
}
