//! Saved models: immutable versions in MLflow's layout under `models/PROJECT/NAME/` of the home.
//!
//! ```text
//! models/PROJECT/NAME/
//!   v1/ v2/ …           one folder per version: MLmodel, model.pkl, requirements.txt,
//!                       metrics.json, features.json, train_info.json, and capstan.json (ours:
//!                       the version's number, time and provenance)
//!   active              the active version's number
//!   evaluations.jsonl   one line per evaluation, appended
//!   .staging/STAGE/     a training's upload, until its activity ends
//!   .staging/STAGE.evaluation.json
//! ```
//!
//! As with datasets, a training's version is staged while its activity runs and committed by
//! one rename when it succeeds: a version folder is whole or absent, and a failed or cancelled
//! training leaves nothing behind. Models live apart from datasets (`data/`), so a model's files
//! can never be read as a dataset's.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use capstan_core::flow::{DatasetState, Provenance};
use capstan_core::ml::Activation;
use serde_json::{Value, json};

use crate::{DataError, Result, io, parse_version, write_synced};

/// The most files and bytes one uploaded version may hold: a model is a handful of files.
const MAX_FILES: usize = 10_000;
const MAX_BYTES: u64 = 16 << 30;

/// The file of a version that records what capstan knows of it.
const RECORD: &str = "capstan.json";

pub struct ModelStore {
    root: PathBuf,
}

/// One version of a saved model, as its files describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelVersion {
    pub version: u64,
    pub at_ms: i64,
    pub provenance: Option<Provenance>,
    /// `metrics.json`: the metric searched on, its score, and every metric on the test rows.
    pub metrics: Value,
    /// `train_info.json`: the algorithm, hyperparameters, seed, image and data it came from.
    pub train_info: Value,
}

impl ModelVersion {
    /// The searched metric's name and score on the test rows, if the training wrote them.
    pub fn score(&self) -> Option<(&str, f64)> {
        Some((
            self.metrics["metric"].as_str()?,
            self.metrics["score"].as_f64()?,
        ))
    }

    fn greater_is_better(&self) -> bool {
        self.metrics["greater_is_better"].as_bool().unwrap_or(true)
    }

    /// Whether this version scores better than `other` on the metric they were both searched
    /// on. Versions scored on different metrics (or without one) are not comparable: `None`.
    pub fn better_than(&self, other: &ModelVersion) -> Option<bool> {
        let (metric, score) = self.score()?;
        let (other_metric, other_score) = other.score()?;
        if metric != other_metric {
            return None;
        }
        Some(if self.greater_is_better() {
            score > other_score
        } else {
            score < other_score
        })
    }
}

/// What the merge of a distributed search did.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    pub committed: Committed,
    /// Which point won, from which part, in words for the job's log.
    pub said: String,
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    pub version: u64,
    /// Whether the new version became the active one.
    pub activated: bool,
    /// Why it did or did not, in words for the job's log.
    pub why: String,
}

impl ModelStore {
    pub fn new(home_root: &Path) -> ModelStore {
        ModelStore {
            root: home_root.join("models"),
        }
    }

    fn dir(&self, project: &str, name: &str) -> PathBuf {
        self.root.join(project).join(name)
    }

    /// The folder of one version (what `mlflow.pyfunc.load_model` opens).
    pub fn version_dir(&self, project: &str, name: &str, version: u64) -> PathBuf {
        self.dir(project, name).join(format!("v{version}"))
    }

    fn staged(&self, project: &str, name: &str, stage: &str) -> PathBuf {
        self.dir(project, name).join(".staging").join(stage)
    }

    fn staged_evaluation(&self, project: &str, name: &str, stage: &str) -> PathBuf {
        self.dir(project, name)
            .join(".staging")
            .join(format!("{stage}.evaluation.json"))
    }

    /// The saved models of `project` that have a folder (at least one upload).
    pub fn names(&self, project: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join(project))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Unpacks an uploaded version (a tar of its folder) as the stage's, replacing an earlier
    /// upload of the same stage. Only plain files and folders with relative, downward paths are
    /// taken: a link or `..` in the archive is refused, so an upload cannot write outside its
    /// folder. Returns the number of files.
    pub fn stage_tar(
        &self,
        project: &str,
        name: &str,
        stage: &str,
        upload: impl Read,
    ) -> Result<usize> {
        let dir = self.staged(project, name, stage);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let unpacked = unpack_tar(&dir, upload);
        if unpacked.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        unpacked
    }

    /// Stages one evaluation of the model (a JSON object), appended to its store when the
    /// activity succeeds.
    pub fn stage_evaluation(
        &self,
        project: &str,
        name: &str,
        stage: &str,
        row: &Value,
    ) -> Result<()> {
        let path = self.staged_evaluation(project, name, stage);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        write_synced(&path, row.to_string().as_bytes())
    }

    /// Commits the stage's version, if it uploaded one, as the next version number, and
    /// activates it by `policy`. The rename of the whole folder is the commit.
    pub fn commit(
        &self,
        project: &str,
        name: &str,
        stage: &str,
        provenance: &Provenance,
        policy: Activation,
    ) -> Result<Option<Committed>> {
        let staged = self.staged(project, name, stage);
        if !staged.is_dir() {
            return Ok(None);
        }
        let record = crate::version_json(0, &Value::Null, provenance);
        let mut version = self.latest(project, name).unwrap_or(0) + 1;
        loop {
            let mut r = record.clone();
            r["version"] = json!(version);
            write_synced(&staged.join(RECORD), r.to_string().as_bytes())?;
            let target = self.version_dir(project, name, version);
            match std::fs::rename(&staged, &target) {
                Ok(()) => break,
                // Another training committed this number meanwhile: take the next.
                Err(_) if target.exists() => version += 1,
                Err(e) => return Err(io(&target)(e)),
            }
        }
        sync_dir(&self.dir(project, name));
        let new = self
            .version(project, name, version)?
            .ok_or_else(|| missing(project, name, version))?;
        let current = self
            .active(project, name)
            .and_then(|a| self.version(project, name, a).ok().flatten());
        let (activate, why) = decide(policy, &new, current.as_ref());
        if activate {
            self.write_active(project, name, version)?;
        }
        Ok(Some(Committed {
            version,
            activated: activate,
            why,
        }))
    }

    /// Whether the stage uploaded a version.
    pub fn is_staged(&self, project: &str, name: &str, stage: &str) -> bool {
        self.staged(project, name, stage).is_dir()
    }

    /// Commits the best of a distributed search's candidates (one stage per part, each the
    /// best of its share of the points, refit) as the next version, with every part's points
    /// in its `metrics.json`, and drops the others. The best point is chosen as one search over
    /// all the points chooses: the best cross-validation score, the first point among equals.
    pub fn merge(
        &self,
        project: &str,
        name: &str,
        stages: &[String],
        provenance: &Provenance,
        policy: Activation,
    ) -> Result<Merged> {
        let bad = |m: String| DataError::Model(m);
        let read = |stage: &str, file: &str| -> Result<Value> {
            let path = self.staged(project, name, stage).join(file);
            let bytes = std::fs::read(&path).map_err(|e| {
                bad(format!(
                    "the candidate of part {stage} has no {file} ({e}): did its training upload one?"
                ))
            })?;
            serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("the candidate of part {stage}: {file}: {e}")))
        };
        let mut candidates = Vec::new();
        for stage in stages {
            candidates.push((
                read(stage, "metrics.json")?,
                read(stage, "train_info.json")?,
            ));
        }
        let Some((first, _)) = candidates.first() else {
            return Err(bad("a search with no parts".into()));
        };
        let greater = first["greater_is_better"].as_bool().unwrap_or(true);
        let mut points: Vec<Value> = candidates
            .iter()
            .flat_map(|(m, _)| m["search"].as_array().cloned().unwrap_or_default())
            .collect();
        points.sort_by_key(|p| p["point"].as_u64().unwrap_or(u64::MAX));
        let score = |p: &Value| p["cv_score"].as_f64().filter(|s| !s.is_nan());
        let mut best: Option<&Value> = None;
        for p in &points {
            let Some(s) = score(p) else { continue };
            let better = match best.and_then(score) {
                None => true,
                Some(b) if greater => s > b,
                Some(b) => s < b,
            };
            if better {
                best = Some(p);
            }
        }
        let Some(best) = best.cloned() else {
            return Err(bad("no point of the search has a score".into()));
        };
        let Some(winner) = candidates
            .iter()
            .position(|(_, info)| info["point"] == best["point"])
        else {
            return Err(bad(format!(
                "no part's candidate is the best point ({})",
                best["point"]
            )));
        };
        let n = stages.len();
        let (mut metrics, mut info) = candidates.swap_remove(winner);
        metrics["search"] = Value::Array(points.clone());
        info["search"] = json!({"parts": n, "points": points.len(), "part": winner + 1});
        let dir = self.staged(project, name, &stages[winner]);
        let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
        write_synced(&dir.join("metrics.json"), pretty(&metrics).as_bytes())?;
        write_synced(&dir.join("train_info.json"), pretty(&info).as_bytes())?;
        let committed = self
            .commit(project, name, &stages[winner], provenance, policy)?
            .ok_or_else(|| bad("the best candidate vanished before its commit".into()))?;
        for (i, stage) in stages.iter().enumerate() {
            if i != winner {
                self.discard(project, name, stage);
            }
        }
        let said = format!(
            "best of {} points over {n} parts: {} {} from part {}/{n}, cross-validated {} {:.4}",
            points.len(),
            best["algorithm"].as_str().unwrap_or("?"),
            best["params"],
            winner + 1,
            metrics["metric"].as_str().unwrap_or("score"),
            score(&best).unwrap_or(f64::NAN),
        );
        Ok(Merged { committed, said })
    }

    /// Appends the stage's evaluation, if it staged one, to the model's evaluation store.
    pub fn commit_evaluation(&self, project: &str, name: &str, stage: &str) -> Result<bool> {
        let staged = self.staged_evaluation(project, name, stage);
        let row = match std::fs::read(&staged) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(&staged)(e)),
        };
        let path = self.dir(project, name).join("evaluations.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        // One write of a whole line: a reader skips a last line a crash cut short.
        let mut line = row;
        line.push(b'\n');
        f.write_all(&line).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        let _ = std::fs::remove_file(&staged);
        Ok(true)
    }

    /// Forgets what the stage uploaded (its activity did not succeed).
    pub fn discard(&self, project: &str, name: &str, stage: &str) {
        let _ = std::fs::remove_dir_all(self.staged(project, name, stage));
        let _ = std::fs::remove_file(self.staged_evaluation(project, name, stage));
    }

    /// The highest version number, if any version exists.
    pub fn latest(&self, project: &str, name: &str) -> Option<u64> {
        self.numbers(project, name).into_iter().max()
    }

    /// The version numbers, lowest first (no version's files are read).
    pub fn numbers(&self, project: &str, name: &str) -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(self.dir(project, name))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix('v')?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    /// Every version, oldest first.
    pub fn versions(&self, project: &str, name: &str) -> Result<Vec<ModelVersion>> {
        let mut out = Vec::new();
        for n in self.numbers(project, name) {
            out.extend(self.version(project, name, n)?);
        }
        Ok(out)
    }

    /// One version, if it exists.
    pub fn version(&self, project: &str, name: &str, version: u64) -> Result<Option<ModelVersion>> {
        let dir = self.version_dir(project, name, version);
        if !dir.is_dir() {
            return Ok(None);
        }
        let read = |file: &str| -> Value {
            std::fs::read(dir.join(file))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null)
        };
        let record = read(RECORD);
        let provenance = match parse_version(&record) {
            DatasetState::Version { provenance, .. } => Some(provenance),
            _ => None,
        };
        Ok(Some(ModelVersion {
            version,
            at_ms: record["at_ms"].as_i64().unwrap_or(0),
            provenance,
            metrics: read("metrics.json"),
            train_info: read("train_info.json"),
        }))
    }

    /// The active version's number, if one is.
    pub fn active(&self, project: &str, name: &str) -> Option<u64> {
        std::fs::read_to_string(self.dir(project, name).join("active"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Makes `version` the active one.
    pub fn activate(&self, project: &str, name: &str, version: u64) -> Result<()> {
        if !self.version_dir(project, name, version).is_dir() {
            return Err(missing(project, name, version));
        }
        self.write_active(project, name, version)
    }

    fn write_active(&self, project: &str, name: &str, version: u64) -> Result<()> {
        let dir = self.dir(project, name);
        let tmp = dir.join(".active.tmp");
        write_synced(&tmp, format!("{version}\n").as_bytes())?;
        let path = dir.join("active");
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir);
        Ok(())
    }

    /// Writes a version's folder as a tar (what scoring and evaluation download).
    pub fn pack(&self, project: &str, name: &str, version: u64, out: impl Write) -> Result<()> {
        let dir = self.version_dir(project, name, version);
        if !dir.is_dir() {
            return Err(missing(project, name, version));
        }
        let mut tar = tar::Builder::new(out);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", &dir).map_err(io(&dir))?;
        tar.into_inner()
            .map_err(io(&dir))?
            .flush()
            .map_err(io(&dir))
    }

    /// The model's evaluations, oldest first (a line a crash cut short is skipped).
    pub fn evaluations(&self, project: &str, name: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir(project, name).join("evaluations.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The model's latest version as a build sees an input or output: its number and what
    /// trained it.
    pub fn state(&self, project: &str, name: &str) -> DatasetState {
        let Some(latest) = self.latest(project, name) else {
            return DatasetState::Missing;
        };
        let record = std::fs::read(self.version_dir(project, name, latest).join(RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        match record {
            Some(r) => parse_version(&r),
            None => DatasetState::Untracked,
        }
    }
}

/// Whether a new version becomes the active one, and why, by the policy.
fn decide(
    policy: Activation,
    new: &ModelVersion,
    current: Option<&ModelVersion>,
) -> (bool, String) {
    let v = new.version;
    let Some(current) = current else {
        return match policy {
            Activation::Manual => (
                false,
                format!(
                    "version {v} is not active (activation = \"manual\": `capstan model activate`)"
                ),
            ),
            _ => (
                true,
                format!("version {v} is active (the model had no active version)"),
            ),
        };
    };
    let a = current.version;
    match policy {
        Activation::Always => (
            true,
            format!("version {v} is active (activation = \"always\")"),
        ),
        Activation::Manual => (
            false,
            format!("version {a} stays active (activation = \"manual\": `capstan model activate`)"),
        ),
        Activation::IfBetter => {
            let scores = match (new.score(), current.score()) {
                (Some((m, s)), Some((_, o))) => format!("{m} {s:.4} against {o:.4}"),
                _ => "no comparable scores".into(),
            };
            match new.better_than(current) {
                Some(true) => (
                    true,
                    format!("version {v} is active: better than version {a} ({scores})"),
                ),
                Some(false) => (
                    false,
                    format!("version {a} stays active: version {v} is not better ({scores})"),
                ),
                None => (
                    false,
                    format!(
                        "version {a} stays active: version {v} was scored on another metric ({scores})"
                    ),
                ),
            }
        }
    }
}

fn missing(project: &str, name: &str, version: u64) -> DataError {
    DataError::Io {
        path: PathBuf::from(format!("models/{project}/{name}/v{version}")),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("model `{project}/{name}` has no version {version}"),
        ),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Unpacks an uploaded tar into `dir`: only plain files and folders with relative, downward
/// paths, at most `MAX_FILES` files and `MAX_BYTES` bytes; a link, a device or a `..` is
/// refused. Returns the number of files.
pub fn unpack_tar(dir: &Path, upload: impl Read) -> Result<usize> {
    let refuse = |why: String| DataError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    };
    let mut archive = tar::Archive::new(upload);
    let (mut files, mut bytes) = (0usize, 0u64);
    for entry in archive.entries().map_err(io(dir))? {
        let mut entry = entry.map_err(io(dir))?;
        let path = entry.path().map_err(io(dir))?.into_owned();
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::CurDir => {}
                _ => {
                    return Err(refuse(format!(
                        "the upload names `{}`, outside its folder",
                        path.display()
                    )));
                }
            }
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(dir.join(&rel)).map_err(io(dir))?;
            continue;
        }
        if !kind.is_file() {
            return Err(refuse(format!(
                "the upload's `{}` is not a plain file (links and devices are refused)",
                path.display()
            )));
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        files += 1;
        bytes += entry.size();
        if files > MAX_FILES || bytes > MAX_BYTES {
            return Err(refuse(format!(
                "the upload holds more than {MAX_FILES} files or {} GiB",
                MAX_BYTES >> 30
            )));
        }
        let target = dir.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut f = File::create(&target).map_err(io(&target))?;
        std::io::copy(&mut entry, &mut f).map_err(io(&target))?;
        f.sync_all().map_err(io(&target))?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_core::flow::WrittenBy;

    /// A fresh folder of its own under the system's temporary folder, removed when dropped.
    struct Home(PathBuf);

    impl Home {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Home {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn home() -> Home {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "capstan-models-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Home(dir)
    }

    fn provenance(job: i64) -> Provenance {
        Provenance {
            written_by: WrittenBy::Activity {
                job,
                idx: 0,
                recipe: "train".into(),
            },
            inputs: [("wine".to_string(), 3)].into(),
            definition: Default::default(),
        }
    }

    fn upload(files: &[(&str, &str)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, body.as_bytes()).unwrap();
        }
        tar.into_inner().unwrap()
    }

    fn train(store: &ModelStore, stage: &str, score: f64, policy: Activation) -> Committed {
        let metrics = json!({"metric": "rmse", "score": score, "greater_is_better": false});
        let files = upload(&[
            ("MLmodel", "flavors: {}\n"),
            ("metrics.json", &metrics.to_string()),
        ]);
        assert_eq!(store.stage_tar("p", "m", stage, &files[..]).unwrap(), 2);
        store
            .commit("p", "m", stage, &provenance(1), policy)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn versions_count_up_and_activation_follows_the_policy() {
        let home = home();
        let store = ModelStore::new(home.path());
        assert_eq!(store.state("p", "m"), DatasetState::Missing);
        let c = train(&store, "1-0-0", 2.0, Activation::IfBetter);
        assert_eq!((c.version, c.activated), (1, true));
        // rmse: lower is better.
        let c = train(&store, "2-0-0", 3.0, Activation::IfBetter);
        assert_eq!((c.version, c.activated), (2, false));
        assert!(c.why.contains("version 1 stays active"), "{}", c.why);
        let c = train(&store, "3-0-0", 1.5, Activation::IfBetter);
        assert_eq!((c.version, c.activated), (3, true));
        let c = train(&store, "4-0-0", 9.0, Activation::Manual);
        assert_eq!((c.version, c.activated), (4, false));
        let c = train(&store, "5-0-0", 9.0, Activation::Always);
        assert_eq!((c.version, c.activated), (5, true));
        assert_eq!(store.active("p", "m"), Some(5));
        store.activate("p", "m", 3).unwrap();
        assert_eq!(store.active("p", "m"), Some(3));
        assert!(store.activate("p", "m", 9).is_err());
        let all = store.versions("p", "m").unwrap();
        assert_eq!(
            all.iter().map(|v| v.version).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(all[2].score(), Some(("rmse", 1.5)));
        assert_eq!(all[0].provenance, Some(provenance(1)));
        match store.state("p", "m") {
            DatasetState::Version { version, .. } => assert_eq!(version, 5),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.names("p"), ["m"]);
    }

    #[test]
    fn a_failed_training_leaves_nothing_and_a_packed_version_unpacks_whole() {
        let home = home();
        let store = ModelStore::new(home.path());
        store
            .stage_tar("p", "m", "1-0-0", &upload(&[("a", "x")])[..])
            .unwrap();
        store.discard("p", "m", "1-0-0");
        assert_eq!(
            store
                .commit("p", "m", "1-0-0", &provenance(1), Activation::Always)
                .unwrap(),
            None
        );
        assert_eq!(store.latest("p", "m"), None);
        let c = train(&store, "2-0-0", 1.0, Activation::Manual);
        assert!(!c.activated && store.active("p", "m").is_none());
        let mut packed = Vec::new();
        store.pack("p", "m", 1, &mut packed).unwrap();
        store.stage_tar("p", "copy", "x", &packed[..]).unwrap();
        let copied = home.path().join("models/p/copy/.staging/x");
        assert_eq!(
            std::fs::read_to_string(copied.join("MLmodel")).unwrap(),
            "flavors: {}\n"
        );
        assert!(copied.join(RECORD).is_file());
    }

    #[test]
    fn an_upload_cannot_write_outside_its_folder() {
        let home = home();
        let store = ModelStore::new(home.path());
        // tar::Builder refuses `..` itself: write the header by hand.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend([b'x']);
        bytes.resize(512 * 2, 0);
        bytes.extend([0u8; 1024]);
        let err = store.stage_tar("p", "m", "s", &bytes[..]).unwrap_err();
        assert!(err.to_string().contains("outside its folder"), "{err}");
        assert!(!home.path().join("models/p/m/.staging/escape").exists());
        assert!(!home.path().join("models/p/m/.staging/s").exists());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        let mut tar = tar::Builder::new(Vec::new());
        tar.append_link(&mut h, "link", "/etc/passwd").unwrap();
        let err = store
            .stage_tar("p", "m", "s", &tar.into_inner().unwrap()[..])
            .unwrap_err();
        assert!(err.to_string().contains("not a plain file"), "{err}");
    }

    #[test]
    fn evaluations_are_appended_only_when_their_activity_succeeds() {
        let home = home();
        let store = ModelStore::new(home.path());
        train(&store, "1-0-0", 1.0, Activation::Always);
        store
            .stage_evaluation("p", "m", "2-0-0", &json!({"accuracy": 0.9}))
            .unwrap();
        store.discard("p", "m", "2-0-0");
        assert!(!store.commit_evaluation("p", "m", "2-0-0").unwrap());
        store
            .stage_evaluation("p", "m", "3-0-0", &json!({"accuracy": 0.95}))
            .unwrap();
        assert!(store.commit_evaluation("p", "m", "3-0-0").unwrap());
        assert_eq!(store.evaluations("p", "m"), [json!({"accuracy": 0.95})]);
    }

    /// Stages a part's candidate: its best point, refit, with its share of the points.
    fn candidate(store: &ModelStore, stage: &str, points: &[(u64, f64)], best: u64) {
        let search: Vec<Value> = points
            .iter()
            .map(|(p, s)| json!({"point": p, "algorithm": "ridge", "params": {"alpha": p}, "cv_score": s}))
            .collect();
        let metrics =
            json!({"metric": "r2", "score": 0.5, "greater_is_better": true, "search": search});
        let info = json!({"algorithm": "ridge", "point": best});
        let files = upload(&[
            ("MLmodel", stage),
            ("metrics.json", &metrics.to_string()),
            ("train_info.json", &info.to_string()),
        ]);
        store.stage_tar("p", "m", stage, &files[..]).unwrap();
    }

    #[test]
    fn a_search_merges_into_its_best_candidate_and_drops_the_others() {
        let home = home();
        let store = ModelStore::new(home.path());
        // Points 1 and 4 tie for the best score: the first wins, as in one search.
        candidate(&store, "7-0-0", &[(0, 0.2), (3, 0.1)], 0);
        candidate(&store, "7-1-0", &[(1, 0.4), (4, 0.4)], 1);
        candidate(&store, "7-2-0", &[(2, 0.3), (5, 0.35)], 5);
        let stages: Vec<String> = ["7-0-0", "7-1-0", "7-2-0"].map(String::from).to_vec();
        let m = store
            .merge("p", "m", &stages, &provenance(7), Activation::Always)
            .unwrap();
        assert_eq!((m.committed.version, m.committed.activated), (1, true));
        assert!(
            m.said
                .starts_with("best of 6 points over 3 parts: ridge {\"alpha\":1} from part 2/3"),
            "{}",
            m.said
        );
        let dir = store.version_dir("p", "m", 1);
        assert_eq!(
            std::fs::read_to_string(dir.join("MLmodel")).unwrap(),
            "7-1-0"
        );
        let v = store.version("p", "m", 1).unwrap().unwrap();
        let order: Vec<u64> = v.metrics["search"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["point"].as_u64().unwrap())
            .collect();
        assert_eq!(order, [0, 1, 2, 3, 4, 5]);
        assert_eq!(
            v.train_info["search"],
            json!({"parts": 3, "points": 6, "part": 2})
        );
        assert!(!home.path().join("models/p/m/.staging/7-0-0").exists());
        assert!(!home.path().join("models/p/m/.staging/7-2-0").exists());

        // A part without its candidate: nothing is committed, and the error says why.
        candidate(&store, "8-0-0", &[(0, 0.2)], 0);
        let err = store
            .merge(
                "p",
                "m",
                &["8-0-0".into(), "8-1-0".into()],
                &provenance(8),
                Activation::Always,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("8-1-0 has no metrics.json"),
            "{err}"
        );
        assert_eq!(store.latest("p", "m"), Some(1));
    }
}
