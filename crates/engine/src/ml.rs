//! ML recipes as activities: which version of a saved model a score or an evaluation applies,
//! in which image, and the program that runs: capstan's ML runner (`capstan.ml`, embedded in
//! the binary) called with the activity's spec as JSON.
//!
//! The runner reads its input dataset once through the data API, and hands what it made back
//! the same way (a training's version as a tar, an evaluation as JSON), staged until the
//! activity succeeds like any output.

use std::path::PathBuf;

use capstan_core::flow::DatasetState;
use capstan_core::ml::{Activation, MlSpec};
use capstan_core::model::{ExecKind, Project, Recipe, RecipeKind};
use serde_json::{Value, json};

use crate::DataPlane;
use crate::backend::{ActivitySpec, Workload};

/// When a training's new version becomes the active one: the recipe's `activation`, else
/// its saved model's.
pub(crate) fn activation(project: &Project, recipe: &Recipe) -> Activation {
    let from_spec = match recipe.ml.as_ref().map(|m| &m.spec) {
        Some(MlSpec::Train(t)) => t.activation,
        _ => None,
    };
    from_spec
        .or_else(|| {
            recipe
                .outputs
                .iter()
                .find_map(|o| project.models.get(&o.value))
                .map(|m| m.activation.value)
        })
        .unwrap_or(Activation::Always)
}

/// The saved model a score or an evaluation applies, as resolved when its activity starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Applied {
    pub model: String,
    pub version: u64,
    /// The version's `train_info.json`: where and in which image it was trained.
    pub train_info: Value,
}

/// Makes an ML recipe's activity run capstan's ML runner: resolves the version it applies
/// (`pinned`, or the active one), scores in the image that version was trained in where the
/// placement is the same, and stages the runner with its spec. Returns a line for the job's
/// log saying what it resolved, or why the activity cannot start.
pub(crate) fn prepare(spec: &mut ActivitySpec, dp: &dyn DataPlane) -> Result<String, String> {
    let Some(ml) = spec.ml.clone() else {
        return Err(format!(
            "{} recipe `{}` has no spec",
            spec.recipe_kind.as_str(),
            spec.recipe
        ));
    };
    let applied = match &ml {
        MlSpec::Train(_) => None,
        MlSpec::Score(a) | MlSpec::Evaluate(a) => {
            let (version, train_info) =
                dp.model_version(&spec.project, &a.model, a.model_version.map(u64::from))?;
            Some(Applied {
                model: a.model.clone(),
                version,
                train_info,
            })
        }
    };
    let input = dataset_input(spec);
    let input_version = input
        .as_ref()
        .and_then(|i| match dp.state(&spec.project, i) {
            DatasetState::Version { version, .. } => Some(version),
            _ => None,
        });
    let mut said = match &applied {
        Some(a) => format!("applying saved model `{}` version {}", a.model, a.version),
        None => format!(
            "training a new version of saved model `{}`",
            spec.outputs.first().map_or("", String::as_str)
        ),
    };
    if let Some(image) = applied.as_ref().and_then(|a| trained_image(spec.kind, a)) {
        if spec.image.as_deref() != Some(image.as_str()) {
            said.push_str(&format!(", in image {image} it was trained in"));
        }
        spec.image = Some(image);
    }
    let program = runner_spec(spec, &ml, input.as_deref(), input_version, applied.as_ref());
    stage_runner(spec, &program);
    Ok(said)
}

/// The dataset an ML activity reads (its other input, if any, is the saved model).
fn dataset_input(spec: &ActivitySpec) -> Option<String> {
    spec.inputs
        .iter()
        .find(|i| !spec.models.contains(i))
        .cloned()
}

/// The image a version was trained in, where scoring can use it: the same kind of placement
/// (an image named for a Docker engine may not be in a cluster's registry).
fn trained_image(kind: ExecKind, applied: &Applied) -> Option<String> {
    if kind == ExecKind::Local || applied.train_info["kind"].as_str() != Some(kind.as_str()) {
        return None;
    }
    applied.train_info["image"].as_str().map(str::to_string)
}

/// What the runner is told: the task, its datasets and model, and what to record of where it
/// trained.
pub(crate) fn runner_spec(
    spec: &ActivitySpec,
    ml: &MlSpec,
    input: Option<&str>,
    input_version: Option<u64>,
    applied: Option<&Applied>,
) -> Value {
    let (train, model, probabilities) = match ml {
        MlSpec::Train(t) => (
            serde_json::to_value(t).unwrap_or(Value::Null),
            spec.outputs
                .iter()
                .find(|o| spec.models.contains(o))
                .cloned(),
            false,
        ),
        MlSpec::Score(a) | MlSpec::Evaluate(a) => (
            Value::Null,
            Some(a.model.clone()),
            a.probabilities == Some(true),
        ),
    };
    let output = match ml {
        MlSpec::Train(_) => model.clone(),
        _ => spec
            .outputs
            .iter()
            .find(|o| !spec.models.contains(o))
            .cloned(),
    };
    json!({
        "kind": spec.recipe_kind.as_str(),
        "project": spec.project,
        "recipe": spec.recipe,
        "input": input,
        "output": output,
        "model": model,
        "model_version": applied.map(|a| a.version),
        "train": train,
        "probabilities": probabilities,
        "gpus": spec.gpus,
        // A distributed search's part tries every `count`th point from `index`.
        "part": spec.part.map(|p| json!({"index": p.index, "count": p.count})),
        "train_info": {
            "job": spec.job_id,
            "recipe": spec.recipe,
            "user": spec.user,
            "kind": spec.kind.as_str(),
            "exec_config": spec.exec_config,
            "image": (spec.kind != ExecKind::Local).then_some(spec.image.as_deref()).flatten(),
            "code_env": spec.code_env.as_ref().map(|e| e.name.clone()),
            "gpus": spec.gpus,
            "cpu_limit": spec.cpu_limit.map(|c| c.to_string()),
            "memory_limit": spec.memory_limit.map(|m| m.to_string()),
            "inputs": input.map(|i| json!({ i: input_version })),
        },
    })
}

/// The runner's source followed by its call with `program`, as the recipe's code: a Python
/// recipe from here on.
fn stage_runner(spec: &mut ActivitySpec, program: &Value) {
    let name = format!("{}.py", spec.recipe);
    // A JSON string is a valid Python string literal: the spec goes in as data, never as code.
    let literal = serde_json::to_string(&program.to_string()).unwrap_or_default();
    let source = format!(
        "{}\n\nrun(__import__(\"json\").loads({literal}))\n",
        capstan_core::PYTHON_ML_RUNNER
    );
    spec.workload = Workload::Generated {
        name: name.clone(),
        source,
    };
    spec.code_file = Some(PathBuf::from(name));
    spec.recipe_kind = RecipeKind::Python;
}

/// What a render (`capstan k8s render`) shows of an ML activity: the runner with its spec as it
/// would start, without a data plane: a score's pinned version is named, an active one is
/// resolved only when the activity starts (`model_version` null here).
pub fn stage_for_render(spec: &mut ActivitySpec) {
    let Some(ml) = spec.ml.clone() else {
        return;
    };
    let input = dataset_input(spec);
    let pinned = match &ml {
        MlSpec::Train(_) => None,
        MlSpec::Score(a) | MlSpec::Evaluate(a) => a.model_version.map(|v| Applied {
            model: a.model.clone(),
            version: u64::from(v),
            train_info: Value::Null,
        }),
    };
    let program = runner_spec(spec, &ml, input.as_deref(), None, pinned.as_ref());
    stage_runner(spec, &program);
}

/// Re-attaching to a running ML activity: only its kind changes, the program is running.
pub(crate) fn resumed(spec: &mut ActivitySpec) {
    let name = format!("{}.py", spec.recipe);
    spec.workload = Workload::Generated {
        name: name.clone(),
        source: String::new(),
    };
    spec.code_file = Some(PathBuf::from(name));
    spec.recipe_kind = RecipeKind::Python;
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_core::ml::{ApplySpec, TrainSpec};

    fn spec(kind: ExecKind, inputs: &[&str], outputs: &[&str], models: &[&str]) -> ActivitySpec {
        let mut s = ActivitySpec::bare(12, 0, "/tmp/a".into(), "/tmp/home".into(), kind);
        s.project = "sample".into();
        s.recipe = "r".into();
        s.recipe_kind = RecipeKind::MlScore;
        s.inputs = inputs.iter().map(|s| s.to_string()).collect();
        s.outputs = outputs.iter().map(|s| s.to_string()).collect();
        s.models = models.iter().map(|s| s.to_string()).collect();
        s
    }

    fn apply(model: &str, probabilities: Option<bool>) -> ApplySpec {
        ApplySpec {
            version: 1,
            model: model.into(),
            model_version: None,
            probabilities,
        }
    }

    #[test]
    fn a_score_names_its_dataset_model_and_version_apart() {
        let s = spec(
            ExecKind::Docker,
            &["wine_model", "wine"],
            &["wine_scored"],
            &["wine_model"],
        );
        let applied = Applied {
            model: "wine_model".into(),
            version: 3,
            train_info: Value::Null,
        };
        let ml = MlSpec::Score(apply("wine_model", Some(true)));
        let v = runner_spec(&s, &ml, Some("wine"), Some(7), Some(&applied));
        assert_eq!(v["input"], "wine");
        assert_eq!(v["output"], "wine_scored");
        assert_eq!(v["model"], "wine_model");
        assert_eq!(v["model_version"], 3);
        assert_eq!(v["probabilities"], true);
        assert_eq!(v["train"], Value::Null);
        assert_eq!(v["train_info"]["inputs"]["wine"], 7);
    }

    #[test]
    fn a_training_writes_its_model_and_says_its_spec() {
        let mut s = spec(ExecKind::Local, &["wine"], &["wine_model"], &["wine_model"]);
        s.recipe_kind = RecipeKind::MlTrain;
        s.image = Some("capstan-env-ml-docker:abc".into());
        let t: TrainSpec = serde_json::from_value(json!({
            "target": "cultivar",
            "algorithms": [{"name": "ridge", "grid": {"alpha": [0.1, 1.0]}}],
        }))
        .unwrap();
        let v = runner_spec(&s, &MlSpec::Train(t), Some("wine"), None, None);
        assert_eq!(v["kind"], "ml_train");
        assert_eq!(v["output"], "wine_model");
        assert_eq!(v["model"], "wine_model");
        assert_eq!(v["train"]["target"], "cultivar");
        assert_eq!(v["train"]["algorithms"][0]["grid"]["alpha"][1], 1.0);
        assert_eq!(v["train"]["split"]["seed"], 1337);
        // A local training ran in no image, whatever the configuration names.
        assert_eq!(v["train_info"]["image"], Value::Null);
        assert_eq!(v["train_info"]["kind"], "local");
    }

    #[test]
    fn scoring_uses_the_training_image_only_on_the_same_placement() {
        let applied = |kind: &str| Applied {
            model: "m".into(),
            version: 1,
            train_info: json!({"kind": kind, "image": "capstan-env-ml-docker:abc"}),
        };
        assert_eq!(
            trained_image(ExecKind::Docker, &applied("docker")).as_deref(),
            Some("capstan-env-ml-docker:abc")
        );
        assert_eq!(
            trained_image(ExecKind::Kubernetes, &applied("docker")),
            None
        );
        assert_eq!(trained_image(ExecKind::Local, &applied("local")), None);
    }

    #[test]
    fn the_runner_gets_its_spec_as_a_string_literal() {
        let mut s = spec(ExecKind::Local, &["wine"], &["out"], &["m"]);
        let program = json!({"recipe": "a\"b'''\n\\", "x": "\u{2028}"});
        stage_runner(&mut s, &program);
        let Workload::Generated { name, source } = &s.workload else {
            panic!("not generated: {:?}", s.workload);
        };
        assert_eq!(name, "r.py");
        assert_eq!(s.recipe_kind, RecipeKind::Python);
        let last = source.lines().last().unwrap();
        let literal = last
            .strip_prefix("run(__import__(\"json\").loads(")
            .and_then(|l| l.strip_suffix("))"))
            .unwrap();
        let text: String = serde_json::from_str(literal).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), program);
    }
}
