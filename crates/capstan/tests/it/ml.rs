//! ML recipes for real: scikit-learn, XGBoost and LightGBM in the sample's `ml` code environment
//! (a local venv) train, score and evaluate saved models; MLflow, from PyPI in the test
//! environment only, opens the versions they saved and predicts what capstan scored.

use std::process::Command;

use serde_json::Value;

use crate::support::{TestHome, stderr, stdout};

/// The ML libraries' versions, shared with `scripts/test`'s MLflow venv: a model pickled in the
/// recipe's environment loads unchanged in the test's.
pub(crate) const PINS: &str = include_str!("../../../../scripts/ml-pins.txt");

fn mlflow() -> Option<String> {
    let python = std::env::var("CAPSTAN_TEST_MLFLOW")
        .ok()
        .filter(|p| std::path::Path::new(p).exists());
    if python.is_none() {
        crate::support::skip("the MLflow venv scripts/test makes (CAPSTAN_TEST_MLFLOW)");
    }
    python
}

/// `capstan ARGS`, which must succeed: its standard output, and its standard error (where
/// builds and runs show their progress).
fn succeeds(h: &TestHome, args: &[&str]) -> (String, String) {
    let out = h.capstan().args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "capstan {args:?}\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    (stdout(&out), stderr(&out))
}

/// Both outputs of a command that must succeed, as one text.
fn ok(h: &TestHome, args: &[&str]) -> String {
    let (out, err) = succeeds(h, args);
    out + &err
}

fn json(h: &TestHome, args: &[&str]) -> Value {
    let (out, _) = succeeds(h, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The sample home, its `ml` environment pinned, with its wine data imported.
fn ml_home(label: &str) -> TestHome {
    let h = TestHome::new(label);
    let images = std::fs::read_to_string(h.root().join("images.toml")).unwrap();
    let pins: Vec<String> = PINS.lines().map(|l| format!("{:?}", l.trim())).collect();
    let start = images
        .find("[code_env.ml]")
        .expect("the sample has an ml environment");
    let line = start + images[start..].find("packages = ").unwrap();
    let end = line + images[line..].find('\n').unwrap();
    let pinned = format!(
        "{}packages = [{}]{}",
        &images[..line],
        pins.join(", "),
        &images[end..]
    );
    std::fs::write(h.root().join("images.toml"), pinned).unwrap();
    import_wine(&h);
    h
}

/// Imports the wine data the sample ships as `sample/wine`.
fn import_wine(h: &TestHome) {
    let csv = h.root().join("projects/sample/data/wine.csv");
    ok(
        h,
        &["dataset", "import", "sample/wine", csv.to_str().unwrap()],
    );
}

/// Runs `script` with the test's MLflow Python; its standard output.
fn python(interpreter: &str, script: &str, args: &[&str]) -> String {
    let out = Command::new(interpreter)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    stdout(&out)
}

#[test]
fn the_sample_trains_scores_and_evaluates_wine_model_and_mlflow_opens_its_versions() {
    let Some(mlflow) = mlflow() else {
        return;
    };
    let h = ml_home("ml-wine");
    let _d = h.start();

    // One build: the training, then the score and the evaluation that read its version.
    let out = ok(&h, &["build", "sample/wine_scored", "sample/wine_eval"]);
    for recipe in ["wine_model", "wine_scored", "wine_eval"] {
        assert!(
            out.contains(&format!("sample/{recipe}: succeeded")),
            "{out}"
        );
    }
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("`{needle}`: {out}"))
    };
    assert!(at("sample/wine_model: succeeded") < at("sample/wine_scored: running"));

    let show = json(&h, &["model", "show", "sample/wine_model", "--json"]);
    assert_eq!(show["active"], 1, "{show}");
    let v1 = &show["versions"][0];
    assert_eq!(v1["metric"], "accuracy", "{v1}");
    let accuracy = v1["score"].as_f64().unwrap();
    assert!((0.85..=1.0).contains(&accuracy), "{v1}");
    assert_eq!(v1["evaluation"], "36 test rows", "{v1}");
    // What trained it: the data version, the seed, the environment, the libraries.
    assert_eq!(v1["inputs"]["wine"], 1, "{v1}");
    let info = &v1["train_info"];
    assert_eq!(info["seed"], 42, "{info}");
    assert_eq!(info["code_env"], "ml", "{info}");
    assert_eq!(info["prediction_type"], "multiclass", "{info}");
    assert_eq!(info["libraries"]["scikit-learn"], "1.9.1", "{info}");
    // Every algorithm of the grid was tried, XGBoost's and LightGBM's included.
    let search = v1["train_info"]["algorithm"].as_str().unwrap();
    assert!(!search.is_empty());
    let log = ok(&h, &["logs", "1", "--activity", "wine_model"]);
    for algorithm in [
        "logistic_regression",
        "random_forest",
        "xgboost",
        "lightgbm",
    ] {
        assert!(log.contains(&format!("  {algorithm} {{")), "{log}");
    }
    assert!(
        log.contains(
            "prediction type: multiclass (inferred: a non-numeric target with 3 distinct values)"
        ),
        "{log}"
    );

    // The version is MLflow's: pyfunc opens it and predicts what capstan's scoring wrote.
    let dir = v1["path"].as_str().unwrap().to_string();
    let csv = h.root().join("projects/sample/data/wine.csv");
    let predicted = python(
        &mlflow,
        "import json, sys, mlflow.pyfunc, pandas as pd\n\
         m = mlflow.pyfunc.load_model(sys.argv[1])\n\
         print(m.metadata.flavors['python_function']['loader_module'])\n\
         print(json.dumps([str(p) for p in m.predict(pd.read_csv(sys.argv[2]).drop(columns=['cultivar']))]))\n",
        &[&dir, csv.to_str().unwrap()],
    );
    let mut lines = predicted.lines();
    assert_eq!(lines.next(), Some("mlflow.sklearn"));
    let by_mlflow: Vec<String> = serde_json::from_str(lines.next().unwrap()).unwrap();
    let scored = json(
        &h,
        &[
            "dataset",
            "head",
            "sample/wine_scored",
            "-n",
            "500",
            "--json",
        ],
    );
    let rows = scored.as_array().unwrap();
    assert_eq!(rows.len(), 178);
    let by_capstan: Vec<String> = rows
        .iter()
        .map(|r| r["prediction"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(by_mlflow, by_capstan);
    // With a probability per cultivar, summing to 1.
    let p: f64 = ["class_0", "class_1", "class_2"]
        .iter()
        .map(|c| rows[0][format!("proba_{c}")].as_f64().unwrap())
        .sum();
    assert!((p - 1.0).abs() < 1e-6, "{}", rows[0]);

    // The evaluation: a metrics dataset, and a row in the model's evaluation store.
    let eval = json(&h, &["dataset", "head", "sample/wine_eval", "--json"]);
    assert_eq!(eval[0]["model_version"], 1, "{eval}");
    assert_eq!(eval[0]["rows"], 178, "{eval}");
    assert!(eval[0]["accuracy"].as_f64().unwrap() > 0.9, "{eval}");
    let store = json(&h, &["model", "evaluations", "sample/wine_model", "--json"]);
    assert_eq!(store.as_array().unwrap().len(), 1, "{store}");
    assert_eq!(store[0]["job"], 1, "{store}");
    assert_eq!(
        store[0]["metrics"]["accuracy"], eval[0]["accuracy"],
        "{store}"
    );

    // A retraining on the same data and seed scores the same: `if_better` keeps v1 active.
    let out = ok(&h, &["run", "sample/wine_model"]);
    assert!(
        out.contains("version 1 stays active: version 2 is not better"),
        "{out}"
    );
    let show = json(&h, &["model", "show", "wine_model", "--json"]);
    assert_eq!(show["versions"].as_array().unwrap().len(), 2, "{show}");
    assert_eq!(show["active"], 1, "{show}");
    assert_eq!(show["versions"][1]["score"], show["versions"][0]["score"]);
    let out = ok(&h, &["model", "activate", "sample/wine_model", "2"]);
    assert!(out.contains("v2 is the active version (was v1)"), "{out}");
    // A score pinned to v1 applies v1 whatever is active.
    let scored =
        std::fs::read_to_string(h.root().join("projects/sample/recipes/wine_scored.toml")).unwrap();
    std::fs::write(
        h.root().join("projects/sample/recipes/wine_scored.toml"),
        scored.replace(
            "model = \"wine_model\"",
            "model = \"wine_model\"\nmodel_version = 1",
        ),
    )
    .unwrap();
    let out = ok(&h, &["run", "sample/wine_scored"]);
    assert!(out.contains("scored 178 rows with wine_model v1"), "{out}");
    let out = ok(&h, &["run", "sample/wine_eval"]);
    assert!(out.contains("evaluated wine_model v2 on 178 rows"), "{out}");

    // The table a person reads lists both versions with their scores.
    let table = ok(&h, &["model", "show", "sample/wine_model"]);
    assert!(table.contains("v1"), "{table}");
    assert!(table.contains("v2       *"), "{table}");
    assert!(
        table.contains(&format!("accuracy {accuracy:.4}")),
        "{table}"
    );
    let list = json(&h, &["model", "list", "--json"]);
    assert_eq!(list[0]["versions"], 2, "{list}");
    assert_eq!(list[0]["active"], 2, "{list}");
    // A version that is not there is named with those that are, and exits 1.
    crate::support::fails(
        &h,
        &["model", "activate", "sample/wine_model", "9"],
        1,
        "saved model sample/wine_model has no version 9 (its versions: 1, 2)",
    );
    crate::support::fails(
        &h,
        &["model", "show", "wine_modle"],
        1,
        "no project declares a saved model `wine_modle`",
    );
}

/// The search's TOML line for `containers` parts in the sample's wine_model recipe.
pub(crate) fn split_search(h: &TestHome, containers: u32) {
    let path = h.root().join("projects/sample/recipes/wine_model.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = match text.find("\nsearch = ") {
        Some(at) => {
            let end = at + 1 + text[at + 1..].find('\n').unwrap();
            format!("{}{}", &text[..at], &text[end..])
        }
        None => text,
    };
    let text = text.replace(
        "metric = \"accuracy\"",
        &format!("metric = \"accuracy\"\nsearch = {{ containers = {containers} }}"),
    );
    std::fs::write(path, text).unwrap();
}

/// A version's file as JSON.
fn version_file(show: &Value, file: &str) -> Value {
    let dir = std::path::Path::new(show["path"].as_str().unwrap());
    serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap()
}

#[test]
fn a_search_split_over_three_activities_saves_the_model_one_search_saves_and_a_cancel_saves_nothing()
 {
    let Some(mlflow) = mlflow() else {
        return;
    };
    let h = ml_home("ml-split");
    // One local slot: the parts run one after another, so the cancel below finds one done.
    let configs = std::fs::read_to_string(h.root().join("exec-configs.toml")).unwrap();
    std::fs::write(
        h.root().join("exec-configs.toml"),
        configs.replacen("max_concurrent = 2", "max_concurrent = 1", 1),
    )
    .unwrap();
    let _d = h.start();
    ok(&h, &["run", "sample/wine_model"]);
    split_search(&h, 3);
    let out = ok(&h, &["run", "sample/wine_model"]);
    for part in 1..=3 {
        assert!(
            out.contains(&format!("sample/wine_model:{part}: succeeded")),
            "{out}"
        );
    }
    assert!(out.contains("build job 2 succeeded"), "{out}");
    let log = ok(&h, &["logs", "2", "--activity", "wine_model:2"]);
    assert!(
        log.contains("part 2/3 of the search: 2 of 6 points on accuracy"),
        "{log}"
    );
    let log = ok(&h, &["logs", "2", "--activity", "wine_model:3"]);
    assert!(log.contains("best of 6 points over 3 parts: "), "{log}");

    let show = json(&h, &["model", "show", "sample/wine_model", "--json"]);
    let (one, split) = (&show["versions"][0], &show["versions"][1]);
    assert_eq!(split["written_by"]["job"], 2, "{split}");
    // The same point wins, with the same scores, and every point is there with its own.
    for key in ["algorithm", "params", "score", "metrics", "search"] {
        assert_eq!(one[key], split[key], "{key}: {one} against {split}");
    }
    assert_eq!(split["search"].as_array().unwrap().len(), 6, "{split}");
    assert_eq!(one["train_info"]["point"], split["train_info"]["point"]);
    assert_eq!(
        split["train_info"]["search"]["parts"], 3,
        "{}",
        split["train_info"]
    );
    assert_eq!(
        version_file(one, "features.json"),
        version_file(split, "features.json")
    );
    // And the two models predict alike, row for row, as MLflow opens them.
    let csv = h.root().join("projects/sample/data/wine.csv");
    let predicted = python(
        &mlflow,
        "import json, sys, mlflow.pyfunc, pandas as pd\n\
         rows = pd.read_csv(sys.argv[3]).drop(columns=['cultivar'])\n\
         for d in sys.argv[1:3]: print(json.dumps([str(p) for p in mlflow.pyfunc.load_model(d).predict(rows)]))\n",
        &[
            one["path"].as_str().unwrap(),
            split["path"].as_str().unwrap(),
            csv.to_str().unwrap(),
        ],
    );
    let lines: Vec<&str> = predicted.lines().collect();
    assert_eq!(lines.len(), 2, "{predicted}");
    assert_eq!(lines[0], lines[1]);
    let staging = h.root().join("models/sample/wine_model/.staging");
    let left = || std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left(), 0, "the parts' candidates are gone");

    // Cancelled after its first part: no version, and no part's candidate stays.
    let (out, _) = succeeds(&h, &["run", "--detach", "--json", "sample/wine_model"]);
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_i64()
        .unwrap()
        .to_string();
    crate::support::wait_for("the search's first part to succeed", 300, || {
        let j = json(&h, &["job", "show", &id, "--json"]);
        j["activities"][0]["state"] == "succeeded"
    });
    ok(&h, &["cancel", &id]);
    let j = json(&h, &["job", "show", &id, "--json"]);
    assert_eq!(j["state"], "cancelled", "{j}");
    let show = json(&h, &["model", "show", "sample/wine_model", "--json"]);
    assert_eq!(show["versions"].as_array().unwrap().len(), 2, "{show}");
    assert_eq!(left(), 0, "a cancelled search leaves no candidate");
}

#[test]
fn a_regression_trains_with_folds_and_a_failing_hyperparameter_is_named_and_saves_nothing() {
    let Some(mlflow) = mlflow() else {
        return;
    };
    let h = ml_home("ml-diabetes");
    // scikit-learn's diabetes data: 442 patients, a disease progression to predict.
    let csv = h.dir.path().join("diabetes.csv");
    python(
        &mlflow,
        "import sys; from sklearn.datasets import load_diabetes\n\
         load_diabetes(as_frame=True, scaled=False).frame.rename(columns={'target': 'progression'}).to_csv(sys.argv[1], index=False)\n",
        &[csv.to_str().unwrap()],
    );
    ok(
        &h,
        &[
            "dataset",
            "import",
            "sample/diabetes",
            csv.to_str().unwrap(),
        ],
    );
    h.append(
        "projects/sample/project.toml",
        "\n[model.diabetes_model]\n[dataset.diabetes_eval]\n[model.broken_model]\n",
    );
    let recipes = h.root().join("projects/sample/recipes");
    std::fs::write(
        recipes.join("diabetes_model.toml"),
        "kind = \"ml_train\"\ncode_env = \"ml\"\ninputs = [\"diabetes\"]\noutputs = [\"diabetes_model\"]\n\n\
         [ml_train]\ntarget = \"progression\"\nsplit = { folds = 5, seed = 7 }\nfeatures = { handling = { sex = \"dummy_encode\" } }\n\n\
         [[ml_train.algorithms]]\nname = \"ridge\"\ngrid = { alpha = [0.1, 10.0] }\n\n\
         [[ml_train.algorithms]]\nname = \"hist_gradient_boosting\"\ngrid = { max_iter = 50, learning_rate = 0.05 }\n\n\
         [[ml_train.algorithms]]\nname = \"xgboost\"\ngrid = { n_estimators = 50, max_depth = 2 }\n\n\
         [[ml_train.algorithms]]\nname = \"lightgbm\"\ngrid = { n_estimators = 50, num_leaves = 7 }\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("diabetes_eval.toml"),
        "kind = \"ml_evaluate\"\ncode_env = \"ml\"\ninputs = [\"diabetes\", \"diabetes_model\"]\noutputs = [\"diabetes_eval\"]\n\n\
         [ml_evaluate]\nmodel = \"diabetes_model\"\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("broken_model.toml"),
        "kind = \"ml_train\"\ncode_env = \"ml\"\ninputs = [\"diabetes\"]\noutputs = [\"broken_model\"]\n\n\
         [ml_train]\ntarget = \"progression\"\n\n\
         [[ml_train.algorithms]]\nname = \"random_forest\"\ngrid = { n_estimators = 10, max_features = \"most\" }\n",
    )
    .unwrap();
    let _d = h.start();
    let out = ok(&h, &["build", "sample/diabetes_eval"]);
    assert!(out.contains("sample/diabetes_eval: succeeded"), "{out}");
    let log = ok(&h, &["logs", "1", "--activity", "diabetes_model"]);
    assert!(
        log.contains("prediction type: regression (inferred: a numeric target with"),
        "{log}"
    );
    assert!(
        log.contains("(5-fold cross-validation on 442 rows)"),
        "{log}"
    );
    let show = json(
        &h,
        &[
            "model",
            "show",
            "sample/diabetes_model",
            "--version",
            "1",
            "--json",
        ],
    );
    assert_eq!(show["metric"], "r2", "{show}");
    // The diabetes data is noisy: every published baseline scores an R² near 0.4–0.5.
    let r2 = show["score"].as_f64().unwrap();
    assert!((0.3..0.65).contains(&r2), "{show}");
    assert_eq!(show["evaluation"], "5-fold cross-validation", "{show}");
    let eval = json(&h, &["dataset", "head", "sample/diabetes_eval", "--json"]);
    assert!(eval[0]["r2"].as_f64().unwrap() > 0.3, "{eval}");
    let rmse = eval[0]["rmse"].as_f64().unwrap();
    assert!((20.0..70.0).contains(&rmse), "{eval}");

    // scikit-learn refuses the hyperparameter's value: the job says which algorithm with which
    // values, and the model gets no version.
    let out = h
        .capstan()
        .args(["run", "sample/broken_model"])
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("algorithm random_forest with {max_features='most', n_estimators=10} failed"),
        "{text}"
    );
    let show = json(&h, &["model", "show", "sample/broken_model", "--json"]);
    assert_eq!(show["versions"].as_array().unwrap().len(), 0, "{show}");
    assert!(!h.root().join("models/sample/broken_model/v1").exists());
}

#[test]
fn only_a_training_uploads_versions_and_an_activity_reaches_only_its_declared_models() {
    let h = TestHome::new("ml-api");
    import_wine(&h);
    h.append("projects/sample/project.toml", "\n[dataset.wine_copy]\n");
    // A Python recipe that reads wine and writes wine_copy, and tries the models' endpoints.
    h.recipe(
        "peek",
        "python",
        "py",
        "import json, urllib.request, urllib.error\nfrom capstan import _endpoint\n\
         base, token = _endpoint()\n\
         def call(method, path, body=None, ctype=None):\n\
         \x20   headers = {'Authorization': 'Bearer ' + token}\n\
         \x20   if ctype: headers['Content-Type'] = ctype\n\
         \x20   req = urllib.request.Request(base + '/api/v1/projects/sample/models/wine_model/' + path, data=body, method=method, headers=headers)\n\
         \x20   try:\n\
         \x20       with urllib.request.urlopen(req) as r: return r.status, ''\n\
         \x20   except urllib.error.HTTPError as e: return e.code, json.loads(e.read())['error']['message']\n\
         for method, path, body, ctype in [('PUT', 'staged', b'x', 'application/x-tar'), ('GET', 'versions/active', None, None), ('POST', 'evaluations', b'{}', 'application/json')]:\n\
         \x20   print(method, path, *call(method, path, body, ctype), flush=True)\n",
        "inputs = [\"wine\"]\noutputs = [\"wine_copy\"]",
    );
    let d = h.start();
    let out = h.capstan().args(["run", "sample/peek"]).output().unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    for line in [
        "PUT staged 403 recipe `sample/peek` may not write saved model `sample/wine_model`: it declares outputs `wine_copy`",
        "GET versions/active 403 recipe `sample/peek` may not read saved model `sample/wine_model`: it declares inputs `wine`",
        "POST evaluations 403 recipe `sample/peek` may not read saved model `sample/wine_model`: it declares inputs `wine`",
    ] {
        assert!(text.contains(line), "`{line}` not in:\n{text}");
    }
    // A user never uploads a version, whatever the permissions; reading one needs `read`.
    let alice = h.token("alice");
    let put = put_tar(
        &alice,
        &format!("{}/api/v1/projects/sample/models/wine_model/staged", d.url),
    );
    assert!(
        put.contains("saved model versions come from ML recipes' activities, not from users"),
        "{put}"
    );
    let get = crate::support::curl(&[
        "-sS",
        "-H",
        &format!("Authorization: Bearer {alice}"),
        &format!(
            "{}/api/v1/projects/sample/models/wine_model/versions/active",
            d.url
        ),
    ]);
    assert!(
        get.contains("saved model `wine_model` has no active version"),
        "{get}"
    );
    let unknown = crate::support::curl(&[
        "-sS",
        "-H",
        &format!("Authorization: Bearer {alice}"),
        &format!("{}/api/v1/projects/sample/models/nope/versions/1", d.url),
    ]);
    assert!(
        unknown.contains("unknown saved model `nope` in project `sample`"),
        "{unknown}"
    );
}

/// A recipe that writes TensorBoard scalars to `capstan.tensorboard_dir()` in TensorBoard's own
/// file format (TFRecords of `Event` protos, written here byte by byte, so the recipe needs no
/// ML library): `loss` at steps 0 to 4.
const WRITES_EVENTS: &str = r#"import os, struct, time
import capstan

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF

def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out

def field(number, kind, payload):
    return varint(number << 3 | kind) + (varint(len(payload)) + payload if kind == 2 else payload)

def event(step, extra):
    return field(1, 1, struct.pack("<d", time.time())) + field(2, 0, varint(step)) + extra

def record(data):
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", masked(n)) + data + struct.pack("<I", masked(data))

path = os.path.join(capstan.tensorboard_dir(), f"events.out.tfevents.{int(time.time())}.capstan")
with open(path, "wb") as f:
    f.write(record(event(0, field(3, 2, b"brain.Event:2"))))
    for step in range(5):
        value = field(1, 2, b"loss") + field(2, 5, struct.pack("<f", 1.0 / (step + 1)))
        f.write(record(event(step, field(5, 2, field(1, 2, value)))))
print("wrote 5 steps of loss", flush=True)
"#;

#[test]
fn tensorboard_serves_the_event_files_a_recipe_wrote_after_it_ended() {
    let h = TestHome::new("tensorboard");
    h.recipe("tb_train", "python", "py", WRITES_EVENTS, "");
    let _d = h.start();
    let out = ok(&h, &["run", "sample/tb_train"]);
    assert!(out.contains("wrote 5 steps of loss"), "{out}");
    // Kept with the job, in its activity's folder: the recipe's own temporary folder is gone.
    let j = json(&h, &["job", "show", "1", "--json"]);
    let kept =
        std::path::Path::new(j["activities"][0]["dir"].as_str().unwrap()).join("tensorboard");
    assert_eq!(
        std::fs::read_dir(&kept).unwrap().count(),
        1,
        "{}",
        kept.display()
    );

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut serve = h
        .capstan()
        .args(["tensorboard", "1", "--port", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(serve.stdout.take().unwrap()));
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let url = format!("http://127.0.0.1:{port}/");
    assert!(
        first.starts_with(&format!("TensorBoard for job 1 at {url} (1 run: tb_train)")),
        "{first}"
    );
    // TensorBoard reads the files a moment after it starts listening.
    let scalars = format!("{url}data/plugin/scalars/scalars?run=tb_train&tag=loss");
    let mut points = Value::Null;
    crate::support::wait_for("TensorBoard to have read the run", 60, || {
        points =
            serde_json::from_str(&crate::support::curl(&["-sS", &scalars])).unwrap_or(Value::Null);
        points.as_array().is_some_and(|p| p.len() == 5)
    });
    let steps: Vec<(u64, f64)> = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[1].as_u64().unwrap(), p[2].as_f64().unwrap()))
        .collect();
    assert_eq!(steps[0], (0, 1.0));
    assert_eq!(steps[4].0, 4);
    assert!((steps[4].1 - 0.2).abs() < 1e-6, "{steps:?}");

    // Ctrl-C stops it, and it leaves nothing behind.
    Command::new("kill")
        .args(["-INT", &serve.id().to_string()])
        .status()
        .unwrap();
    let status = serve.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "TensorBoard still listens"
    );

    // Only the job's own activity uploads, and a job without event files says so.
    let alice = h.token("alice");
    let put = put_tar(
        &alice,
        &format!("{}/api/v1/jobs/1/activities/0/tensorboard", _d.url),
    );
    assert!(
        put.contains("come from the job's activities, not from users"),
        "{put}"
    );
    h.recipe("quiet", "python", "py", "print('no events')\n", "");
    ok(&h, &["run", "sample/quiet"]);
    crate::support::fails(
        &h,
        &["tensorboard", "2"],
        1,
        "job 2 kept no TensorBoard event files",
    );
}

/// A user's upload of a (broken) tar, as a script would send it: the response's body.
fn put_tar(token: &str, url: &str) -> String {
    crate::support::curl(&[
        "-sS",
        "-X",
        "PUT",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/x-tar",
        "--data-binary",
        "x",
        url,
    ])
}
