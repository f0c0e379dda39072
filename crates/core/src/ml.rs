//! ML recipes' specs: the model task of `ml_train` / `ml_retrain` (target, prediction type,
//! features, algorithms with their grids, split, metric, search budget) and what `ml_score` and
//! `ml_evaluate` apply, read strictly from the recipe's TOML like a visual recipe's spec, with
//! where each part was written (`SpecLocs`), so `check` points at the line of a mistake.
//!
//! ```toml
//! kind = "ml_train"
//! inputs = ["wine"]
//! outputs = ["wine_model"]            # a saved model, `[model.wine_model]` in project.toml
//!
//! [ml_train]
//! version = 1
//! target = "cultivar"
//! prediction_type = "multiclass"      # absent: inferred from the target's values, and said
//! metric = "accuracy"
//! split = { test_ratio = 0.2, seed = 42 }
//! features = { exclude = ["id"] }
//! search = { max_points = 12 }
//!
//! [[ml_train.algorithms]]
//! name = "random_forest"
//! grid = { n_estimators = [100, 200], max_depth = [4, 8] }
//! ```
//!
//! What depends on the input's schema (the target is a column, features exist) is checked
//! later, in flow order, by `capstan check`, with [`schema_problems`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::de::DeValue;

use crate::diag::{FileId, SourceMap};
use crate::model::RecipeKind;
use crate::visual::{SpecError, SpecLocs};

/// The spec version this capstan reads.
pub const SPEC_VERSION: u32 = 1;

/// An ML recipe as loaded: its spec and where each part was written.
#[derive(Clone, Debug, PartialEq)]
pub struct MlRecipe {
    pub spec: MlSpec,
    pub locs: SpecLocs,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MlSpec {
    /// `ml_train` and `ml_retrain`: one new version of the saved model the recipe writes.
    Train(TrainSpec),
    /// `ml_score`: a dataset and a saved model → predictions.
    Score(ApplySpec),
    /// `ml_evaluate`: a labelled dataset and a saved model → metrics.
    Evaluate(ApplySpec),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Binary,
    Multiclass,
    Regression,
}

impl PredictionType {
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionType::Binary => "binary",
            PredictionType::Multiclass => "multiclass",
            PredictionType::Regression => "regression",
        }
    }

    /// The metrics that can drive a search for this type, the default first.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            PredictionType::Binary => &[
                "roc_auc",
                "accuracy",
                "f1",
                "log_loss",
                "precision",
                "recall",
            ],
            PredictionType::Multiclass => &["accuracy", "f1_macro", "log_loss", "roc_auc_ovr"],
            PredictionType::Regression => &["r2", "rmse", "mae"],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    pub target: String,
    #[serde(default)]
    pub prediction_type: Option<PredictionType>,
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub features: Features,
    pub algorithms: Vec<Algorithm>,
    #[serde(default)]
    pub split: Split,
    #[serde(default)]
    pub search: Search,
    /// When a new version becomes the active one: `always`, `if_better` (on the metric) or
    /// `manual`; absent: the saved model's own `activation`.
    #[serde(default)]
    pub activation: Option<Activation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Always,
    IfBetter,
    Manual,
}

impl Activation {
    pub const NAMES: [&'static str; 3] = ["always", "if_better", "manual"];

    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Always => "always",
            Activation::IfBetter => "if_better",
            Activation::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Activation> {
        match s {
            "always" => Some(Activation::Always),
            "if_better" => Some(Activation::IfBetter),
            "manual" => Some(Activation::Manual),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Features {
    /// Only these columns (absent: every column but the target).
    #[serde(default)]
    pub include: Option<Vec<String>>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Per-feature handling, by column; absent: by type (numbers imputed with the median and
    /// rescaled, strings dummy-encoded with missing as a category).
    #[serde(default)]
    pub handling: BTreeMap<String, Handling>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handling {
    /// Numbers: missing values replaced by the median, then standardised.
    Rescale,
    /// Numbers: missing values replaced by the median, no rescaling.
    Impute,
    /// Categories: one column per value, missing as a value of its own.
    DummyEncode,
    /// Left out of the features.
    Drop,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Algorithm {
    pub name: String,
    /// Hyperparameter values to search, by name: a list of values, or one value.
    #[serde(default)]
    pub grid: BTreeMap<String, toml::Value>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// The share of rows held out for the test (absent with `folds`: K-fold instead).
    #[serde(default)]
    pub test_ratio: Option<f64>,
    #[serde(default)]
    pub folds: Option<u32>,
    #[serde(default = "default_seed")]
    pub seed: u64,
}

impl Default for Split {
    fn default() -> Self {
        Split {
            test_ratio: None,
            folds: None,
            seed: default_seed(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// At most this many grid points per algorithm (absent: the whole grid).
    #[serde(default)]
    pub max_points: Option<u32>,
    /// Split the points over this many activities of the job, each in a container (or pod,
    /// or process) of its own on the recipe's configuration; absent or 1: one searches all.
    #[serde(default)]
    pub containers: Option<u32>,
}

/// The most activities one search may be split over.
pub const MAX_SEARCH_CONTAINERS: u32 = 64;

impl TrainSpec {
    /// How many activities the search is split over (1: not split).
    pub fn parts(&self) -> u32 {
        self.search.containers.unwrap_or(1).max(1)
    }

    /// How many points the search tries: per algorithm, its grid's size, or `max_points` where
    /// the grid is larger (the runner samples that many, without repeats).
    pub fn points(&self) -> u64 {
        self.algorithms
            .iter()
            .map(|a| {
                let every = a
                    .grid
                    .values()
                    .map(|v| match v {
                        toml::Value::Array(a) => a.len() as u64,
                        _ => 1,
                    })
                    .fold(1u64, u64::saturating_mul);
                match self.search.max_points {
                    Some(m) => every.min(u64::from(m)),
                    None => every,
                }
            })
            .sum()
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApplySpec {
    #[serde(default = "default_version")]
    pub version: u32,
    /// The saved model applied (one of the recipe's inputs).
    pub model: String,
    /// A version number; absent: the active version when the activity starts.
    #[serde(default)]
    pub model_version: Option<u32>,
    /// Scoring: add one probability column per class (classification only).
    #[serde(default)]
    pub probabilities: Option<bool>,
}

fn default_version() -> u32 {
    SPEC_VERSION
}

fn default_seed() -> u64 {
    1337
}

/// The algorithms a training may name, with the hyperparameters each takes (scikit-learn's,
/// XGBoost's and LightGBM's own names, so their documentation applies as written).
pub const ALGORITHMS: [(&str, &[&str]); 7] = [
    (
        "logistic_regression",
        &["C", "penalty", "max_iter", "class_weight"],
    ),
    ("linear_regression", &["fit_intercept"]),
    ("ridge", &["alpha", "fit_intercept"]),
    (
        "random_forest",
        &[
            "n_estimators",
            "max_depth",
            "min_samples_leaf",
            "max_features",
            "class_weight",
        ],
    ),
    (
        "hist_gradient_boosting",
        &[
            "learning_rate",
            "max_iter",
            "max_depth",
            "max_leaf_nodes",
            "l2_regularization",
        ],
    ),
    (
        "xgboost",
        &[
            "n_estimators",
            "max_depth",
            "learning_rate",
            "subsample",
            "colsample_bytree",
            "reg_lambda",
        ],
    ),
    (
        "lightgbm",
        &[
            "n_estimators",
            "num_leaves",
            "learning_rate",
            "max_depth",
            "min_child_samples",
            "reg_lambda",
        ],
    ),
];

/// Algorithms that predict classes only, or numbers only.
fn fits(algorithm: &str, ty: PredictionType) -> bool {
    match algorithm {
        "logistic_regression" => ty != PredictionType::Regression,
        "linear_regression" | "ridge" => ty == PredictionType::Regression,
        _ => true,
    }
}

/// Reads the spec of an ML recipe of `kind` from its file's text. `table` is the spec's table
/// (`[ml_train]`…) in the parsed document, if the file has one.
pub fn read_spec(
    kind: RecipeKind,
    text: &str,
    table: Option<&toml::Spanned<DeValue<'_>>>,
    sources: &SourceMap,
    file: FileId,
) -> Result<MlRecipe, SpecError> {
    let name = kind.as_str();
    let Some(table) = table else {
        return Err(SpecError {
            span: None,
            message: format!("an {name} recipe needs its spec in an [{name}] table"),
            help: Some("see the ML recipes reference (docs/ml.md)".into()),
        });
    };
    let spec = decode(kind, text).map_err(|e| SpecError::from_toml(&e))?;
    let mut locs = SpecLocs::named(name);
    locs.record(sources, file, text, String::new(), table);
    let version = match &spec {
        MlSpec::Train(t) => t.version,
        MlSpec::Score(a) | MlSpec::Evaluate(a) => a.version,
    };
    let at = |path: &str| {
        let span = span_of(table, path);
        move |message: String, help: Option<String>| SpecError {
            span: span.clone(),
            message,
            help,
        }
    };
    if version != SPEC_VERSION {
        return Err(at("version")(
            format!("spec version {version} is not one this capstan reads"),
            Some(format!("this capstan reads version {SPEC_VERSION}")),
        ));
    }
    if let MlSpec::Evaluate(a) = &spec
        && a.probabilities.is_some()
    {
        return Err(at("probabilities")(
            "an evaluation writes metrics, not probabilities".into(),
            Some("`probabilities` belongs to an ml_score recipe".into()),
        ));
    }
    if let MlSpec::Train(t) = &spec
        && let Some((path, message, help)) = train_problem(t)
    {
        return Err(at(&path)(message, help));
    }
    Ok(MlRecipe { spec, locs })
}

fn decode(kind: RecipeKind, text: &str) -> Result<MlSpec, toml::de::Error> {
    #[derive(Deserialize)]
    struct File<T> {
        #[serde(alias = "ml_train", alias = "ml_retrain", alias = "ml_score")]
        #[serde(alias = "ml_evaluate")]
        spec: T,
    }
    fn read<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, toml::de::Error> {
        toml::from_str::<File<T>>(text).map(|f| f.spec)
    }
    Ok(match kind {
        RecipeKind::MlScore => MlSpec::Score(read(text)?),
        RecipeKind::MlEvaluate => MlSpec::Evaluate(read(text)?),
        _ => MlSpec::Train(read(text)?),
    })
}

/// The span of the value at a spec path (`algorithms[1].grid.depth`), or of its nearest
/// enclosing part.
fn span_of(table: &toml::Spanned<DeValue<'_>>, path: &str) -> Option<std::ops::Range<usize>> {
    let mut at = table;
    let mut best = table.span();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(next) = at.get_ref().as_table().and_then(|t| t.get(key)) else {
            break;
        };
        at = next;
        best = at.span();
        if let Some(i) = index {
            let Some(next) = at.get_ref().as_array().and_then(|a| a.get(i)) else {
                break;
            };
            at = next;
            best = at.span();
        }
    }
    Some(best)
}

/// What is wrong with a training spec on its own (before any schema is known): the path of
/// the part, the message, a hint.
fn train_problem(t: &TrainSpec) -> Option<(String, String, Option<String>)> {
    if t.algorithms.is_empty() {
        return Some((
            "algorithms".into(),
            "a training needs at least one algorithm".into(),
            Some(format!("one of: {}", algorithm_names().join(", "))),
        ));
    }
    for (i, a) in t.algorithms.iter().enumerate() {
        let Some((_, params)) = ALGORITHMS.iter().find(|(n, _)| *n == a.name) else {
            return Some((
                format!("algorithms[{i}].name"),
                format!("unknown algorithm `{}`", a.name),
                Some(crate::toml_read::unknown_help(
                    &a.name,
                    &algorithm_names(),
                    "algorithm",
                )),
            ));
        };
        if let Some(ty) = t.prediction_type
            && !fits(&a.name, ty)
        {
            return Some((
                format!("algorithms[{i}].name"),
                format!("`{}` does not do {} prediction", a.name, ty.as_str()),
                None,
            ));
        }
        for (param, values) in &a.grid {
            if !params.contains(&param.as_str()) {
                return Some((
                    format!("algorithms[{i}].grid.{param}"),
                    format!("`{}` has no hyperparameter `{param}`", a.name),
                    Some(crate::toml_read::unknown_help(
                        param,
                        params,
                        "hyperparameter",
                    )),
                ));
            }
            if matches!(values, toml::Value::Array(v) if v.is_empty()) {
                return Some((
                    format!("algorithms[{i}].grid.{param}"),
                    format!("`{param}` has no value to try"),
                    Some("give one value, or a list of the values to try".into()),
                ));
            }
        }
    }
    match (t.split.test_ratio, t.split.folds) {
        (Some(_), Some(_)) => {
            return Some((
                "split".into(),
                "a split has either `test_ratio` or `folds`, not both".into(),
                None,
            ));
        }
        (Some(r), None) if !(r > 0.0 && r < 1.0) => {
            return Some((
                "split.test_ratio".into(),
                format!("test_ratio {r} is not between 0 and 1"),
                Some("0.2 holds out a fifth of the rows for the test".into()),
            ));
        }
        (None, Some(k)) if !(2..=100).contains(&k) => {
            return Some((
                "split.folds".into(),
                format!("{k} folds: expected 2 to 100"),
                None,
            ));
        }
        _ => {}
    }
    if t.search.max_points == Some(0) {
        return Some((
            "search.max_points".into(),
            "max_points 0 would try nothing".into(),
            None,
        ));
    }
    if let Some(n) = t.search.containers {
        if !(1..=MAX_SEARCH_CONTAINERS).contains(&n) {
            return Some((
                "search.containers".into(),
                format!("{n} containers: expected 1 to {MAX_SEARCH_CONTAINERS}"),
                None,
            ));
        }
        let points = t.points();
        if u64::from(n) > points {
            return Some((
                "search.containers".into(),
                format!(
                    "{n} containers for {points} point{}: some would have nothing to try",
                    if points == 1 { "" } else { "s" }
                ),
                Some(format!("at most {points}, one point each")),
            ));
        }
    }
    if let Some(m) = &t.metric {
        let known: Vec<&str> = match t.prediction_type {
            Some(ty) => ty.metrics().to_vec(),
            None => all_metrics(),
        };
        if !known.contains(&m.as_str()) {
            let what = t
                .prediction_type
                .map(|ty| format!("{} metric", ty.as_str()))
                .unwrap_or_else(|| "metric".into());
            return Some((
                "metric".into(),
                format!("unknown {what} `{m}`"),
                Some(crate::toml_read::unknown_help(m, &known, "metric")),
            ));
        }
    }
    let mentioned = t
        .features
        .include
        .iter()
        .flatten()
        .chain(&t.features.exclude);
    if let Some(c) = mentioned
        .chain(t.features.handling.keys())
        .find(|c| **c == t.target)
    {
        return Some((
            "features".into(),
            format!("the target `{c}` cannot also be a feature"),
            None,
        ));
    }
    None
}

fn algorithm_names() -> Vec<&'static str> {
    ALGORITHMS.iter().map(|(n, _)| *n).collect()
}

fn all_metrics() -> Vec<&'static str> {
    let mut all: Vec<&str> = [
        PredictionType::Binary,
        PredictionType::Multiclass,
        PredictionType::Regression,
    ]
    .iter()
    .flat_map(|t| t.metrics().iter().copied())
    .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// What a training spec says of columns the input does not have: `(spec path, message, help)`,
/// given the input's name and column names.
pub fn schema_problems(
    t: &TrainSpec,
    input: &str,
    columns: &[String],
) -> Vec<(String, String, Option<String>)> {
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let missing = |c: &str| !names.contains(&c);
    let help = |c: &str| Some(crate::toml_read::unknown_help(c, &names, "column"));
    let mut out = Vec::new();
    if missing(&t.target) {
        out.push((
            "target".into(),
            format!("the target `{}` is not a column of `{input}`", t.target),
            help(&t.target),
        ));
    }
    for (i, c) in t.features.include.iter().flatten().enumerate() {
        if missing(c) {
            out.push((
                format!("features.include[{i}]"),
                format!("unknown column `{c}` in `{input}`"),
                help(c),
            ));
        }
    }
    for (i, c) in t.features.exclude.iter().enumerate() {
        if missing(c) {
            out.push((
                format!("features.exclude[{i}]"),
                format!("unknown column `{c}` in `{input}`"),
                help(c),
            ));
        }
    }
    for c in t.features.handling.keys() {
        if missing(c) {
            out.push((
                format!("features.handling.{c}"),
                format!("unknown column `{c}` in `{input}`"),
                help(c),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(kind: RecipeKind, text: &str) -> Result<MlRecipe, SpecError> {
        let mut sources = SourceMap::default();
        let file = sources.add(crate::diag::SourceFile::new(
            "recipes/r.toml".into(),
            text.to_string(),
        ));
        let (doc, _) = toml::de::DeTable::parse_recoverable(text);
        let doc = doc.into_inner();
        let table = doc.get(kind.as_str()).cloned();
        read_spec(kind, text, table.as_ref(), &sources, file)
    }

    /// The message of a spec's refusal and the line it points at.
    fn refusal(text: &str) -> (String, usize) {
        let e = read(RecipeKind::MlTrain, text).unwrap_err();
        let line = e
            .span
            .map(|s| text[..s.start].matches('\n').count() + 1)
            .unwrap_or(0);
        (e.message, line)
    }

    const GOOD: &str = "kind = \"ml_train\"\n\
        [ml_train]\n\
        target = \"cultivar\"\n\
        metric = \"accuracy\"\n\
        split = { test_ratio = 0.2, seed = 7 }\n\
        [[ml_train.algorithms]]\n\
        name = \"random_forest\"\n\
        grid = { n_estimators = [50, 100], max_depth = 4 }\n";

    #[test]
    fn a_training_spec_reads_with_its_defaults() {
        let r = read(RecipeKind::MlTrain, GOOD).unwrap();
        let MlSpec::Train(t) = r.spec else { panic!() };
        assert_eq!(t.target, "cultivar");
        assert_eq!(t.prediction_type, None);
        assert_eq!(t.split.test_ratio, Some(0.2));
        assert_eq!(t.split.seed, 7);
        assert_eq!(t.algorithms[0].grid.len(), 2);
        assert_eq!(r.locs.loc("algorithms[0].name").line, 7);
    }

    #[test]
    fn each_mistake_in_a_training_spec_is_named_at_its_line() {
        let cases = [
            (
                "name = \"random_forest\"",
                "name = \"random_forrest\"",
                "unknown algorithm `random_forrest`",
                7,
            ),
            (
                "max_depth = 4",
                "depth = 4",
                "`random_forest` has no hyperparameter `depth`",
                8,
            ),
            (
                "max_depth = 4",
                "max_depth = []",
                "`max_depth` has no value to try",
                8,
            ),
            (
                "test_ratio = 0.2",
                "test_ratio = 1.5",
                "test_ratio 1.5 is not between 0 and 1",
                5,
            ),
            (
                "test_ratio = 0.2",
                "test_ratio = 0.2, folds = 5",
                "a split has either `test_ratio` or `folds`, not both",
                5,
            ),
            (
                "metric = \"accuracy\"",
                "metric = \"acuracy\"",
                "unknown metric `acuracy`",
                4,
            ),
            (
                "target = \"cultivar\"",
                "target = \"cultivar\"\nfeatures = { exclude = [\"cultivar\"] }",
                "the target `cultivar` cannot also be a feature",
                4,
            ),
            (
                "target = \"cultivar\"",
                "target = \"cultivar\"\nseed = 1",
                "unknown key `seed`",
                4,
            ),
            (
                "target = \"cultivar\"",
                "target = \"cultivar\"\nprediction_type = \"ordinal\"",
                "unknown value `ordinal`",
                4,
            ),
            (
                "target = \"cultivar\"",
                "target = \"cultivar\"\nsearch = { containers = 3 }",
                "3 containers for 2 points: some would have nothing to try",
                0,
            ),
            (
                "target = \"cultivar\"",
                "target = \"cultivar\"\nsearch = { containers = 0 }",
                "0 containers: expected 1 to 64",
                0,
            ),
        ];
        for (from, to, message, line) in cases {
            let text = GOOD.replace(from, to);
            let (got, at) = refusal(&text);
            assert!(got.starts_with(message), "{to}: {got}");
            if line > 0 {
                assert_eq!(at, line, "{to}: {got}");
            }
        }
        // A regression metric on a classification type is unknown for that type.
        let text = GOOD.replace(
            "metric = \"accuracy\"",
            "prediction_type = \"binary\"\nmetric = \"r2\"",
        );
        assert_eq!(refusal(&text).0, "unknown binary metric `r2`");
        let text = GOOD
            .replace("metric = \"accuracy\"", "prediction_type = \"regression\"")
            .replace("grid = { n_estimators = [50, 100], max_depth = 4 }\n", "")
            .replace("random_forest", "logistic_regression");
        assert_eq!(
            refusal(&text),
            (
                "`logistic_regression` does not do regression prediction".into(),
                7
            )
        );
        let (got, _) = refusal("kind = \"ml_train\"\n");
        assert_eq!(
            got,
            "an ml_train recipe needs its spec in an [ml_train] table"
        );
    }

    #[test]
    fn a_search_counts_its_points_as_the_runner_tries_them() {
        let text = GOOD
            .replace("max_depth = 4", "max_depth = [2, 4, 8]")
            .replace(
                "target = \"cultivar\"",
                "target = \"cultivar\"\nsearch = { containers = 2 }",
            );
        let MlSpec::Train(mut t) = read(RecipeKind::MlTrain, &text).unwrap().spec else {
            panic!()
        };
        assert_eq!((t.points(), t.parts()), (6, 2));
        t.search.max_points = Some(4);
        assert_eq!(t.points(), 4);
        t.search.containers = None;
        assert_eq!(t.parts(), 1);
    }

    #[test]
    fn score_and_evaluate_name_a_model_and_maybe_a_version() {
        let text = "[ml_score]\nmodel = \"wine_model\"\nmodel_version = 3\n";
        let r = read(RecipeKind::MlScore, text).unwrap();
        let MlSpec::Score(a) = r.spec else { panic!() };
        assert_eq!((a.model.as_str(), a.model_version), ("wine_model", Some(3)));
        let e = read(RecipeKind::MlEvaluate, "[ml_evaluate]\nmodle = \"m\"\n").unwrap_err();
        assert!(
            e.message.starts_with("unknown key `modle`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn columns_the_input_lacks_are_named_with_the_nearest() {
        let r = read(
            RecipeKind::MlTrain,
            &GOOD.replace(
                "target = \"cultivar\"",
                "target = \"cultivr\"\nfeatures = { exclude = [\"ash\"] }",
            ),
        )
        .unwrap();
        let MlSpec::Train(t) = r.spec else { panic!() };
        let columns = vec!["cultivar".to_string(), "alcohol".into()];
        let p = schema_problems(&t, "wine", &columns);
        assert_eq!(p[0].1, "the target `cultivr` is not a column of `wine`");
        assert!(
            p[0].2.as_deref().unwrap_or("").contains("cultivar"),
            "{p:?}"
        );
        assert_eq!(p[1].0, "features.exclude[0]");
    }
}
