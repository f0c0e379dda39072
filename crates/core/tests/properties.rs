//! Property tests over whole homes: precedence of the resolution layers, and loading arbitrary
//! bytes without panicking.

use std::path::PathBuf;

use capstan_core::load::{HomeFiles, load};
use capstan_core::resolve::{Layer, RunRequest, resolve};
use proptest::prelude::*;

fn home(files: &[(&str, String)]) -> HomeFiles {
    let mut h = HomeFiles::default();
    for (path, text) in files {
        let p = PathBuf::from(path);
        if path.ends_with(".toml") {
            h.toml.insert(p, text.clone().into_bytes());
        } else {
            h.others.insert(p);
        }
    }
    h
}

const CONFIGS: [&str; 3] = ["a", "b", "c"];

/// What one layer sets, if anything.
#[derive(Clone, Debug)]
struct LayerChoice {
    exec_config: Option<usize>,
    timeout_mins: Option<u32>,
    env: Option<u32>,
    memory_mib: Option<u32>,
}

fn layer_choice() -> impl Strategy<Value = LayerChoice> {
    (
        proptest::option::of(0usize..3),
        proptest::option::of(1u32..500),
        proptest::option::of(0u32..1000),
        proptest::option::of(16u32..256),
    )
        .prop_map(|(exec_config, timeout_mins, env, memory_mib)| LayerChoice {
            exec_config,
            timeout_mins,
            env,
            memory_mib,
        })
}

fn toml_lines(c: &LayerChoice, table_prefix: &str) -> String {
    let mut s = String::new();
    if let Some(i) = c.exec_config {
        s += &format!("exec_config = \"{}\"\n", CONFIGS[i]);
    }
    if let Some(t) = c.timeout_mins {
        s += &format!("timeout = \"{t}m\"\n");
    }
    if let Some(m) = c.memory_mib {
        s += &format!("memory_limit = \"{m}Mi\"\n");
    }
    if let Some(e) = c.env {
        s += &format!("[{table_prefix}env]\nX = \"{e}\"\n");
    }
    s
}

/// The highest layer that sets a value, and the value.
fn expected<T: Clone>(layers: &[(Layer, Option<T>)]) -> Option<(Layer, T)> {
    layers
        .iter()
        .rev()
        .find_map(|(l, v)| v.clone().map(|v| (*l, v)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The highest layer that sets a value wins; a layer that does not set it never erases a
    /// lower one; with no layer setting it, the execution configuration's own value shows.
    #[test]
    fn highest_layer_wins(instance in layer_choice(), project in layer_choice(), recipe in layer_choice(), request in layer_choice()) {
        let mut exec = String::new();
        for (i, name) in CONFIGS.iter().enumerate() {
            exec += &format!("[exec_config.{name}]\nkind = \"local\"\nmemory_limit = \"1Gi\"\ntimeout = \"{}h\"\n\n", i + 1);
        }
        let files = home(&[
            ("capstan.toml", format!("[defaults]\n{}", toml_lines(&instance, "defaults."))),
            ("exec-configs.toml", exec),
            ("projects/p/project.toml", format!("[defaults]\n{}", toml_lines(&project, "defaults."))),
            ("projects/p/recipes/r.toml", format!("kind = \"shell\"\n{}", toml_lines(&recipe, ""))),
            ("projects/p/recipes/r.sh", String::new()),
        ]);
        let (h, diags) = load(&PathBuf::from("/h"), &files);
        prop_assert!(!diags.has_errors(), "{:?}", diags.list);
        let req = RunRequest {
            exec_config: request.exec_config.map(|i| CONFIGS[i].to_string()),
            timeout: request.timeout_mins.map(|m| capstan_core::quantity::Duration::from_secs(u64::from(m) * 60)),
            env: request.env.map(|e| [("X".to_string(), e.to_string())].into()).unwrap_or_default(),
            ..RunRequest::default()
        };
        let r = resolve(&h, "p", "r", &req).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;

        let pick = |f: &dyn Fn(&LayerChoice) -> Option<u32>, with_request: bool| {
            let mut v = vec![
                (Layer::Instance, f(&instance)),
                (Layer::Project, f(&project)),
                (Layer::Recipe, f(&recipe)),
            ];
            if with_request {
                v.push((Layer::Request, f(&request)));
            }
            expected(&v)
        };

        // The execution configuration.
        let exec_choice = pick(&|c| c.exec_config.map(|i| i as u32), true);
        match exec_choice {
            Some((layer, i)) => {
                prop_assert_eq!(r.exec_config.value.as_deref(), Some(CONFIGS[i as usize]));
                prop_assert_eq!(r.exec_config.origin.layer, layer);
            }
            None => {
                prop_assert_eq!(r.exec_config.value, None);
                prop_assert_eq!(r.exec_config.origin.layer, Layer::Builtin);
            }
        }

        // The timeout: a layer's value, else the chosen configuration's.
        match pick(&|c| c.timeout_mins, true) {
            Some((layer, m)) => {
                prop_assert_eq!(r.timeout.value.map(|d| d.secs()), Some(u64::from(m) * 60));
                prop_assert_eq!(r.timeout.origin.layer, layer);
            }
            None => match exec_choice {
                Some((_, i)) => {
                    prop_assert_eq!(r.timeout.value.map(|d| d.secs()), Some((i as u64 + 1) * 3600));
                    prop_assert_eq!(r.timeout.origin.layer, Layer::Instance);
                    prop_assert!(r.timeout.origin.via.as_deref().unwrap_or("").contains(CONFIGS[i as usize]));
                }
                None => prop_assert_eq!(r.timeout.value, None),
            },
        }

        // Memory: a layer may lower the configuration's limit (every generated value is below).
        match pick(&|c| c.memory_mib, false) {
            Some((layer, m)) => {
                prop_assert_eq!(r.memory_limit.value.map(|v| v.bytes()), Some(u64::from(m) << 20));
                prop_assert_eq!(r.memory_limit.origin.layer, layer);
            }
            None if exec_choice.is_some() => {
                prop_assert_eq!(r.memory_limit.value.map(|v| v.bytes()), Some(1 << 30));
            }
            None => prop_assert_eq!(r.memory_limit.value, None),
        }

        // Environment variables merge key by key.
        match pick(&|c| c.env, true) {
            Some((layer, e)) => {
                let x = &r.env["X"];
                prop_assert_eq!(&x.value, &e.to_string());
                prop_assert_eq!(x.origin.layer, layer);
            }
            None => prop_assert!(!r.env.contains_key("X")),
        }
    }
}

/// Every kind of file in a home, with a valid example of each.
fn valid_files() -> Vec<(&'static str, String)> {
    capstan_core::sample::sample_home(&"a".repeat(64), &"b".repeat(64))
        .into_iter()
        .map(|(p, t)| {
            (
                Box::leak(p.to_string_lossy().into_owned().into_boxed_str()) as &str,
                t,
            )
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Mutation {
    Replace(Vec<u8>),
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400).prop_map(Mutation::Replace),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                Just("[".to_string()),
                Just("]]".to_string()),
                Just("=".to_string()),
                Just("\"".to_string()),
                Just("\n[exec_config.x]\n".to_string()),
                Just(" = {a = [1, {b = 2}]}\n".to_string()),
                Just("99999999999999999999999Ei".to_string()),
                Just("\u{fffd}é\u{0}".to_string()),
                Just("\nkind = 3\n".to_string()),
                Just("'''".to_string()),
            ]
        )
            .prop_map(|(i, s)| Mutation::Insert(i, s)),
    ]
}

/// What the fuzzer picks from: an index into [`valid_files`], over every file of the sample home.
fn file_index() -> std::ops::Range<usize> {
    0..valid_files().len()
}

fn mutate(mut bytes: Vec<u8>, m: Mutation) -> Vec<u8> {
    match m {
        Mutation::Replace(b) => bytes = b,
        Mutation::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
        Mutation::Flip(i, b) if !bytes.is_empty() => {
            let n = bytes.len();
            bytes[i % n] ^= b;
        }
        Mutation::Flip(..) => {}
        Mutation::Insert(i, s) => {
            let at = i % (bytes.len() + 1);
            bytes.splice(at..at, s.into_bytes());
        }
    }
    bytes
}

/// The sample home with file `which` mutated. The loader reads the bytes of TOML files and only
/// the presence of the others (recipe code, data), so a mutated TOML file gets the mutated
/// bytes and any other file goes missing, the one change of it the loader can see.
fn mutated_home(which: usize, mutations: Vec<Mutation>) -> HomeFiles {
    let files = valid_files();
    assert!(which < files.len(), "file {which} of {}", files.len());
    let mut h = HomeFiles::default();
    for (i, (path, text)) in files.into_iter().enumerate() {
        let path = PathBuf::from(path);
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        match (is_toml, i == which) {
            (true, false) => {
                h.toml.insert(path, text.into_bytes());
            }
            (true, true) => {
                let bytes = mutations.iter().cloned().fold(text.into_bytes(), mutate);
                h.toml.insert(path, bytes);
            }
            (false, false) => {
                h.others.insert(path);
            }
            (false, true) => {}
        }
    }
    h
}

/// Loads and resolves a home: whatever it holds, nothing may panic.
fn load_and_resolve(h: &HomeFiles) {
    let (home, diags) = load(&PathBuf::from("/h"), h);
    for d in &diags.list {
        // Every diagnostic renders, and points into a file of the home.
        let _ = d.to_string();
    }
    for p in home.projects.values() {
        for r in p.recipes.values() {
            for user in [None, Some("alice".to_string()), Some("nobody".to_string())] {
                let _ = resolve(
                    &home,
                    &p.key,
                    &r.name,
                    &RunRequest {
                        user,
                        exec_config: Some("k8s-medium".into()),
                        ..RunRequest::default()
                    },
                );
                let _ = resolve(&home, &p.key, &r.name, &RunRequest::default());
            }
        }
    }
}

/// The fuzzer's choice of file covers every file of the sample home, and the sample home holds
/// every file of `src/sample/`: a sample file added later is fuzzed too, or this fails.
#[test]
fn fuzzing_covers_every_sample_file() {
    let files = valid_files();
    let picked: std::collections::BTreeSet<&str> = file_index().map(|i| files[i].0).collect();
    let all: std::collections::BTreeSet<&str> = files.iter().map(|(p, _)| *p).collect();
    assert_eq!(all.len(), files.len(), "a sample file is listed twice");
    assert_eq!(picked, all, "files the fuzzer never mutates");

    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/sample");
    let mut on_disk = Vec::new();
    walk(&root, &root, &mut on_disk);
    assert!(on_disk.len() >= 10, "{on_disk:?}");
    for f in &on_disk {
        assert!(
            all.contains(f.as_str()),
            "src/sample/{f} is not in the sample home"
        );
    }
}

/// Each file of the sample home in turn, with fixed mutations: every file is changed for the
/// loader (the random cases below may, by chance, leave one out), and nothing panics.
#[test]
fn every_sample_file_mutated_never_panics() {
    let valid = home(&valid_files());
    for which in file_index() {
        for m in [
            vec![Mutation::Truncate(0)],
            vec![Mutation::Replace(b"[[[ = \xff".to_vec())],
            vec![Mutation::Insert(
                usize::MAX,
                "\n[exec_config.x]\nkind = 3\n".into(),
            )],
            vec![Mutation::Truncate(37), Mutation::Insert(12, "\"".into())],
        ] {
            let h = mutated_home(which, m.clone());
            assert!(
                h.toml != valid.toml || h.others != valid.others,
                "{m:?} did not change {} for the loader",
                valid_files()[which].0
            );
            load_and_resolve(&h);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever bytes any config file holds, loading and resolving never panic.
    #[test]
    fn arbitrary_bytes_never_panic(which in file_index(), m in mutation(), m2 in mutation()) {
        load_and_resolve(&mutated_home(which, vec![m, m2]));
    }
}

/// Numbers at the edges of what TOML and JSON can hold, and around the documented maxima.
fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        Just(u64::from(u32::MAX)),
        Just(capstan_core::quantity::Duration::MAX.secs()),
        Just(capstan_core::quantity::Duration::MAX.secs() + 1),
        any::<u64>(),
        0u64..10_000_000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Issue 13, finding 4: `timeout = 9223372036854775807` was accepted and then panicked
    /// (`overflow when adding duration to instant`). Every duration, quantity and count is
    /// either refused when read, naming the field and its maximum, or within that maximum —
    /// and resolving it never panics.
    #[test]
    fn extreme_values_are_refused_or_bounded_and_never_panic(n in extreme(), unit in prop::sample::select(vec!["", "s", "m", "h", "d", "Mi", "Ti", "Ei"])) {
        use capstan_core::limits;
        use capstan_core::quantity::{Cpu, Duration, Memory};
        if let Ok(d) = Duration::parse(&format!("{n}{unit}")) {
            prop_assert!(d <= Duration::MAX);
            let _ = std::time::Instant::now() + std::time::Duration::from_secs(d.secs());
        }
        if let Ok(m) = Memory::parse(&format!("{n}{unit}")) {
            prop_assert!(m <= Memory::MAX);
        }
        if let Ok(c) = Cpu::parse(&format!("{n}")) {
            prop_assert!(c <= Cpu::MAX);
        }
        let value = if unit.is_empty() { n.to_string() } else { format!("\"{n}{unit}\"") };
        let files = home(&[
            ("capstan.toml", String::new()),
            ("exec-configs.toml", format!(
                "[exec_config.x]\nkind = \"docker\"\nimage = \"i\"\ntimeout = {value}\nmemory_limit = {value}\ngpus = {n}\nmax_concurrent = {n}\n"
            )),
            ("projects/p/project.toml", String::new()),
            ("projects/p/recipes/r.toml", "kind = \"shell\"\nexec_config = \"x\"\n".into()),
            ("projects/p/recipes/r.sh", String::new()),
        ]);
        let (h, diags) = load(&PathBuf::from("/h"), &files);
        let over = |max: u64| n > max;
        if over(u64::from(limits::GPUS)) {
            prop_assert!(diags.list.iter().any(|d| d.field.ends_with("gpus") && d.message.contains(&format!("0 to {}", limits::GPUS))), "{:?}", diags.list);
        }
        if unit.is_empty() && over(Duration::MAX.secs()) {
            prop_assert!(diags.list.iter().any(|d| d.field.ends_with("timeout") && d.message.contains("maximum of 365d")), "{:?}", diags.list);
        }
        let _ = resolve(&h, "p", "r", &RunRequest::default());
        let request = RunRequest {
            timeout: Duration::checked_from_secs(n).ok(),
            ..RunRequest::default()
        };
        let _ = resolve(&h, "p", "r", &request);
    }
}
