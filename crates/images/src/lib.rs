//! capstan's image builder: base images and code environment images, built through a Docker
//! engine and recorded in the home (`state/images/`), pushed to registries where configurations
//! name one.
//!
//! No registry is needed: the OS root of a base image is bootstrapped from Debian packages
//! (`debootstrap`) and imported into the engine, cached by its package list. Builds trust the
//! host's CA bundle and use its proxy settings, so package installs work behind a
//! TLS-intercepting proxy. Every image is tagged by a content hash of what went into it: an
//! unchanged spec is found built and nothing runs again.

pub mod dockerfile;
pub mod engine;
pub mod rootfs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use capstan_backend_docker::image_ops::{BuildEvent, Engine};
use capstan_core::model::{BaseImage, BuildFor, CodeEnv, ExecConfig, ExecKind, Home, ImageRecord};
use sha2::{Digest, Sha256};

/// The version of the runtime baked into images; part of every env image's hash.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The capstan Python runtime, embedded so builds need nothing but the binary.
const RUNTIME_INIT: &str = capstan_core::PYTHON_RUNTIME;

/// Where builds report progress (a progress bar on a terminal, plain lines otherwise).
pub trait Progress: Send {
    /// A new phase: "bootstrapping the OS root", "building", "pushing to …".
    fn phase(&mut self, what: &str);
    /// A line of tool output (the build log gets every one; a display may show the last).
    fn line(&mut self, line: &str);
    /// Bytes done of a total, for uploads.
    fn bytes(&mut self, done: u64, total: u64);
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no base image `{0}` in images.toml")]
    UnknownBase(String),
    #[error("no code environment `{0}` in images.toml")]
    UnknownEnv(String),
    #[error("{0}")]
    Engine(String),
    #[error("{0}")]
    Bootstrap(String),
    #[error("building `{image}`: {error} (full log: {log})")]
    Build {
        image: String,
        error: String,
        log: String,
    },
    #[error("{0}")]
    Push(String),
    #[error("{0}")]
    NotBuilt(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a build did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Built {
    /// Built (or rebuilt) now.
    Built(ImageRecord),
    /// Already built from the same inputs: nothing ran.
    UpToDate(ImageRecord),
}

impl Built {
    pub fn record(&self) -> &ImageRecord {
        match self {
            Built::Built(r) | Built::UpToDate(r) => r,
        }
    }
}

pub struct Builder<'a> {
    pub root: PathBuf,
    pub home: &'a Home,
    pub engine: Engine,
    /// Where bootstrapped OS roots are cached (shared across homes: `CAPSTAN_CACHE`, else
    /// `state/cache` of the home).
    pub cache: PathBuf,
    /// Build only: leave registries alone.
    pub no_push: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn records_dir(root: &Path) -> PathBuf {
    root.join("state").join("images")
}

fn record_path(root: &Path, kind: &str, name: &str, config: Option<&str>) -> PathBuf {
    let file = match config {
        Some(c) => format!("{kind}-{name}--{c}.toml"),
        None => format!("{kind}-{name}.toml"),
    };
    records_dir(root).join(file)
}

/// Writes a record atomically (TOML, read back by `capstan_core::load::read_image_records`).
pub fn write_record(root: &Path, r: &ImageRecord) -> Result<(), ImageError> {
    let mut t = toml::Table::new();
    let mut put = |k: &str, v: toml::Value| {
        t.insert(k.to_string(), v);
    };
    put("kind", r.kind.clone().into());
    put("name", r.name.clone().into());
    if let Some(c) = &r.exec_config {
        put("exec_config", c.clone().into());
    }
    put("repository", r.repository.clone().into());
    put("tag", r.tag.clone().into());
    put("image_id", r.image_id.clone().into());
    if let Some(b) = &r.base_image_id {
        put("base_image_id", b.clone().into());
    }
    put("built_at", r.built_at.clone().into());
    put("size_bytes", toml::Value::Integer(r.size_bytes as i64));
    put("pushed", r.pushed.into());
    if let Some(e) = &r.last_error {
        put("last_error", e.clone().into());
    }
    let path = record_path(root, &r.kind, &r.name, r.exec_config.as_deref());
    let io = |source| ImageError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(records_dir(root)).map_err(io)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, toml::to_string(&t).unwrap_or_default()).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// A build's log, kept in the home.
struct Log {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Log {
    fn open(root: &Path, name: &str) -> Log {
        let dir = records_dir(root).join("logs");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&path).ok();
        Log { path, file }
    }

    fn line(&mut self, l: &str) {
        use std::io::Write;
        if let Some(f) = self.file.as_mut() {
            let _ = writeln!(f, "{l}");
        }
    }
}

/// A configuration a code environment's image is built for: an execution configuration of a
/// container kind, or a Spark configuration on Kubernetes (its driver and executors).
pub struct EnvTarget<'h> {
    /// The configuration's key in image records: its name, or `spark:NAME`.
    pub key: String,
    /// The image repository's suffix: the name, or `spark-NAME`.
    pub suffix: String,
    /// In messages: "execution configuration `x`", "Spark configuration `x`".
    pub what: String,
    /// The image to build on: an explicit one, else a base image by name.
    pub image: Option<&'h str>,
    pub base: Option<String>,
    /// Where the built image is pushed, with the pre-push hook.
    pub registries: Vec<(&'h str, Option<&'h str>)>,
}

/// The configurations a code environment is built for.
pub fn env_targets<'h>(home: &'h Home, env: &CodeEnv) -> Vec<EnvTarget<'h>> {
    let mut targets: Vec<EnvTarget<'h>> = home
        .exec_configs
        .values()
        .filter(|c| c.kind.value != ExecKind::Local)
        .filter(|c| match &env.build_for.value {
            BuildFor::All => true,
            BuildFor::None => false,
            BuildFor::List(l) => l.iter().any(|n| n.value == c.name),
        })
        .map(|c| EnvTarget {
            key: c.name.clone(),
            suffix: c.name.clone(),
            what: format!("execution configuration `{}`", c.name),
            image: c.image.as_ref().map(|i| i.value.as_str()),
            base: base_of(home, c),
            registries: registry_of(c).into_iter().collect(),
        })
        .collect();
    targets.extend(
        env.build_for_spark
            .iter()
            .filter_map(|n| home.spark_configs.get(&n.value))
            .map(|s| EnvTarget {
                key: capstan_core::model::spark_env_key(&s.name),
                suffix: format!("spark-{}", s.name),
                what: format!("Spark configuration `{}`", s.name),
                image: s.image.as_ref().map(|i| i.value.as_str()),
                base: s
                    .image
                    .is_none()
                    .then(|| s.base_image.as_ref().map(|b| b.value.clone()))
                    .flatten(),
                registries: s
                    .registry
                    .as_ref()
                    .map(|r| (r.value.as_str(), None))
                    .into_iter()
                    .collect(),
            }),
    );
    targets
}

/// Where base image `name` is pushed: the registry of every configuration on it, with its
/// pre-push hook. Execution configurations, and Spark configurations (whose driver and
/// executors pull it).
fn base_registries<'h>(home: &'h Home, name: &str) -> Vec<(&'h str, Option<&'h str>)> {
    let mut registries: Vec<(&str, Option<&str>)> = home
        .exec_configs
        .values()
        .filter(|c| base_of(home, c).as_deref() == Some(name))
        .filter_map(registry_of)
        .collect();
    registries.extend(
        home.spark_configs
            .values()
            .filter(|s| s.image.is_none() && s.base_image.as_ref().is_some_and(|b| b.value == name))
            .filter_map(|s| s.registry.as_ref().map(|r| (r.value.as_str(), None))),
    );
    dedup_registries(&mut registries);
    registries
}

/// One push per registry; where two configurations share one, its pre-push hook runs.
fn dedup_registries(registries: &mut Vec<(&str, Option<&str>)>) {
    registries.sort_by_key(|(r, hook)| (*r, hook.is_none()));
    registries.dedup_by_key(|(r, _)| *r);
}

/// The registry an execution configuration pushes to, with its pre-push hook.
fn registry_of(c: &ExecConfig) -> Option<(&str, Option<&str>)> {
    c.registry.as_ref().map(|r| {
        (
            r.value.as_str(),
            c.pre_push_hook.as_ref().map(|h| h.value.as_str()),
        )
    })
}

/// The base image a configuration runs on, when it uses one (not an explicit `image`).
pub fn base_of(home: &Home, config: &ExecConfig) -> Option<String> {
    if config.image.is_some() || config.kind.value == ExecKind::Local {
        return None;
    }
    match &config.base_image {
        Some(b) => Some(b.value.clone()),
        None => home
            .base_images
            .contains_key("default")
            .then(|| "default".to_string()),
    }
}

impl Builder<'_> {
    fn settings_str(
        &self,
        f: impl Fn(&capstan_core::model::BuildSettings) -> &Option<capstan_core::model::Sourced<String>>,
    ) -> Option<String> {
        f(&self.home.instance.build)
            .as_ref()
            .map(|s| s.value.clone())
    }

    /// Proxy settings for builds: `[build]` in capstan.toml, else the host's environment.
    fn build_args(&self) -> HashMap<String, String> {
        let mut args = HashMap::new();
        let b = &self.home.instance.build;
        for (key, set) in [
            ("http_proxy", &b.http_proxy),
            ("https_proxy", &b.https_proxy),
            ("no_proxy", &b.no_proxy),
        ] {
            let value = set
                .as_ref()
                .map(|s| s.value.clone())
                .or_else(|| std::env::var(key).ok())
                .or_else(|| std::env::var(key.to_uppercase()).ok());
            if let Some(v) = value {
                args.insert(key.to_string(), v.clone());
                args.insert(key.to_uppercase(), v);
            }
        }
        args
    }

    /// The CA bundle to trust in builds: `[build] ca_bundle`, else the host's system bundle.
    fn ca_bundle(&self) -> Result<Option<Vec<u8>>, ImageError> {
        match self.settings_str(|b| &b.ca_bundle) {
            Some(p) => std::fs::read(&p).map(Some).map_err(|e| {
                ImageError::Bootstrap(format!(
                    "cannot read the CA bundle {p} ([build] ca_bundle): {e}"
                ))
            }),
            None => Ok([
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
            ]
            .iter()
            .find_map(|p| std::fs::read(p).ok())),
        }
    }

    /// Builds base image `name` (or finds it built from the same inputs) and pushes it to the
    /// registries of the configurations that use it.
    pub async fn build_base(
        &self,
        name: &str,
        progress: &mut dyn Progress,
    ) -> Result<Built, ImageError> {
        let spec = self
            .home
            .base_images
            .get(name)
            .ok_or_else(|| ImageError::UnknownBase(name.to_string()))?;
        let (from, bootstrapped) = match &spec.from {
            Some(f) => (f.value.clone(), false),
            None => (self.os_root(spec, progress).await?, true),
        };
        let ca = self.ca_bundle()?;
        let inputs = dockerfile::BaseInputs {
            from,
            bootstrapped,
            ca_bundle: ca.is_some(),
            pip_index_url: self.settings_str(|b| &b.pip_index_url),
            pip_extra_index_url: self.settings_str(|b| &b.pip_extra_index_url),
        };
        // The hash covers the Dockerfile as rendered with a placeholder hash, and every file
        // of the context.
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(ca) = ca {
            files.push(("capstan/ca-bundle.crt".into(), ca));
        }
        files.push((
            "capstan/runtime/capstan/__init__.py".into(),
            RUNTIME_INIT.as_bytes().to_vec(),
        ));
        files.push((
            "capstan/runtime/capstan/spark.py".into(),
            capstan_core::PYTHON_RUNTIME_SPARK.as_bytes().to_vec(),
        ));
        files.push((
            "capstan/runtime/capstan.R".into(),
            capstan_core::R_RUNTIME.as_bytes().to_vec(),
        ));
        if spec.with_spark {
            files.push((
                "capstan/runtime/spark-entrypoint.sh".into(),
                dockerfile::SPARK_ENTRYPOINT.as_bytes().to_vec(),
            ));
        }
        for f in &spec.files {
            let bytes = std::fs::read(self.root.join(&f.value)).map_err(|e| {
                ImageError::Bootstrap(format!(
                    "cannot read {} (base_image.{name}.files): {e}",
                    f.value
                ))
            })?;
            files.push((format!("files/{}", f.value), bytes));
        }
        let mut h = Sha256::new();
        h.update(dockerfile::base(spec, &inputs, "").as_bytes());
        for (p, b) in &files {
            h.update(p.as_bytes());
            h.update(b);
        }
        let hash = hex(&h.finalize()[..6]);
        let dockerfile = dockerfile::base(spec, &inputs, &hash);
        files.push(("Dockerfile".into(), dockerfile.into_bytes()));
        let repo = format!("capstan-base-{name}");
        let previous = self.home.base_image_record(name).cloned();
        let built = self
            .build_tagged(
                "base", name, None, &repo, &hash, files, None, previous, progress,
            )
            .await?;
        self.push_for(built, base_registries(self.home, name), progress)
            .await
    }

    /// Builds capstan's engine image for this binary (or finds it built) and pushes it to the
    /// registries of the Kubernetes configurations, whose visual recipes' pods copy the
    /// built-in engine from it.
    pub async fn build_engine(&self, progress: &mut dyn Progress) -> Result<Built, ImageError> {
        use capstan_engine::engine_image;
        let tag = engine_image::tag().map_err(ImageError::Bootstrap)?;
        let previous = self.home.engine_image_record().cloned();
        let files = engine::context(
            &engine_image::binary().map_err(ImageError::Bootstrap)?,
            &tag,
        )?;
        let built = self
            .build_tagged(
                "engine",
                "capstan",
                None,
                engine_image::REPOSITORY,
                &tag,
                files,
                None,
                previous,
                progress,
            )
            .await?;
        let registries = self
            .home
            .exec_configs
            .values()
            .filter(|c| c.kind.value == ExecKind::Kubernetes)
            .filter_map(registry_of)
            .collect();
        self.push_for(built, registries, progress).await
    }

    /// Builds the images of code environment `env` for every configuration it is built for.
    pub async fn build_env(
        &self,
        env: &str,
        progress: &mut dyn Progress,
    ) -> Result<Vec<Built>, ImageError> {
        let spec = self
            .home
            .code_envs
            .get(env)
            .ok_or_else(|| ImageError::UnknownEnv(env.to_string()))?;
        let mut out = Vec::new();
        for target in env_targets(self.home, spec) {
            out.push(self.build_env_for(spec, target, progress).await?);
        }
        Ok(out)
    }

    async fn build_env_for(
        &self,
        spec: &CodeEnv,
        target: EnvTarget<'_>,
        progress: &mut dyn Progress,
    ) -> Result<Built, ImageError> {
        // FROM: the configuration's base image as built, or its explicit image.
        let (from, base_id) = match (target.image, &target.base) {
            (Some(img), _) => {
                let id = self
                    .engine
                    .image(img)
                    .await
                    .map_err(ImageError::Engine)?
                    .map(|(id, _)| id);
                (img.to_string(), id.unwrap_or_else(|| img.to_string()))
            }
            (None, Some(base)) => {
                let record = self.home.base_image_record(base).ok_or_else(|| {
                    ImageError::NotBuilt(format!(
                        "base image `{base}` of {} is not built: run `capstan image build-base {base}` first",
                        target.what
                    ))
                })?;
                (
                    format!("capstan-base-{base}:{}", record.tag),
                    record.image_id.clone(),
                )
            }
            (None, None) => {
                return Err(ImageError::NotBuilt(format!(
                    "{} names no image to build code environment `{}` on",
                    target.what, spec.name
                )));
            }
        };
        let read = |f: &Option<capstan_core::model::Sourced<String>>| -> Result<Option<Vec<u8>>, ImageError> {
            f.as_ref()
                .map(|p| {
                    std::fs::read(self.root.join(&p.value))
                        .map_err(|e| ImageError::Bootstrap(format!("cannot read {}: {e}", p.value)))
                })
                .transpose()
        };
        let requirements = read(&spec.requirements_file)?;
        let constraints = read(&spec.constraints_file)?;
        let mut h = Sha256::new();
        h.update(base_id.as_bytes());
        h.update(RUNTIME_VERSION.as_bytes());
        h.update(
            dockerfile::env(
                spec,
                &from,
                requirements.is_some(),
                constraints.is_some(),
                "",
            )
            .as_bytes(),
        );
        for b in requirements.iter().chain(constraints.iter()) {
            h.update(b);
        }
        let hash = hex(&h.finalize()[..6]);
        let mut files = vec![(
            "Dockerfile".to_string(),
            dockerfile::env(
                spec,
                &from,
                requirements.is_some(),
                constraints.is_some(),
                &hash,
            )
            .into_bytes(),
        )];
        if let Some(r) = requirements {
            files.push(("capstan/requirements.txt".into(), r));
        }
        if let Some(c) = constraints {
            files.push(("capstan/constraints.txt".into(), c));
        }
        let repo = format!("capstan-env-{}-{}", spec.name, target.suffix);
        let previous = self.home.env_image_record(&spec.name, &target.key).cloned();
        let built = self
            .build_tagged(
                "env",
                &spec.name,
                Some(&target.key),
                &repo,
                &hash,
                files,
                Some(base_id),
                previous,
                progress,
            )
            .await?;
        self.push_for(built, target.registries, progress).await
    }

    /// Builds `repo:tag` from `files` unless the engine already has it, and records it. A
    /// failed build keeps the previous record (its image stays in use) with the error noted.
    #[allow(clippy::too_many_arguments)]
    async fn build_tagged(
        &self,
        kind: &str,
        name: &str,
        config: Option<&str>,
        repo: &str,
        tag: &str,
        files: Vec<(String, Vec<u8>)>,
        base_image_id: Option<String>,
        previous: Option<ImageRecord>,
        progress: &mut dyn Progress,
    ) -> Result<Built, ImageError> {
        let reference = format!("{repo}:{tag}");
        if let Some(prev) = previous
            .as_ref()
            .filter(|p| p.tag == tag && p.last_error.is_none())
            && let Some((id, _)) = self
                .engine
                .image(&reference)
                .await
                .map_err(ImageError::Engine)?
            && id == prev.image_id
        {
            return Ok(Built::UpToDate(prev.clone()));
        }
        progress.phase(&format!("building {reference}"));
        let mut log = Log::open(
            &self.root,
            &format!(
                "{kind}-{name}{}-{tag}",
                config.map(|c| format!("--{c}")).unwrap_or_default()
            ),
        );
        let context = tar_context(&files)
            .map_err(|e| ImageError::Bootstrap(format!("cannot pack the build context: {e}")))?;
        let result = self
            .engine
            .build(context, &reference, &self.build_args(), |ev| match ev {
                BuildEvent::Line(l) => {
                    log.line(l);
                    progress.line(l);
                }
                BuildEvent::Bytes(d, t) => progress.bytes(d, t),
            })
            .await;
        let record = |image_id: String, size: u64, last_error: Option<String>| ImageRecord {
            kind: kind.to_string(),
            name: name.to_string(),
            exec_config: config.map(str::to_string),
            repository: repo.to_string(),
            tag: tag.to_string(),
            image_id,
            base_image_id: base_image_id.clone(),
            built_at: now_rfc3339(),
            size_bytes: size,
            pushed: false,
            last_error,
        };
        match result {
            Ok(id) => {
                let size = self
                    .engine
                    .image(&reference)
                    .await
                    .ok()
                    .flatten()
                    .map_or(0, |(_, s)| s);
                let r = record(id, size, None);
                write_record(&self.root, &r)?;
                Ok(Built::Built(r))
            }
            Err(e) => {
                log.line(&format!("FAILED: {e}"));
                let failed = match previous {
                    Some(mut p) => {
                        p.last_error = Some(e.to_string());
                        p
                    }
                    None => record(String::new(), 0, Some(e.to_string())),
                };
                // Recorded so `list` shows the failure. A first build that failed has no image
                // id, and resolution treats it as not built.
                write_record(&self.root, &failed)?;
                Err(ImageError::Build {
                    image: reference,
                    error: e.to_string(),
                    log: log.path.display().to_string(),
                })
            }
        }
    }

    /// Tags and pushes a built image to each of `registries`, running its pre-push hook (if
    /// any) first.
    async fn push_for(
        &self,
        built: Built,
        mut registries: Vec<(&str, Option<&str>)>,
        progress: &mut dyn Progress,
    ) -> Result<Built, ImageError> {
        let mut record = built.record().clone();
        if self.no_push {
            return Ok(built);
        }
        let mut pushed_any = false;
        dedup_registries(&mut registries);
        for (registry, hook) in registries {
            let remote = format!("{}/{}", registry.trim_end_matches('/'), record.repository);
            if let Some(hook) = hook {
                let path = if Path::new(hook).is_absolute() {
                    PathBuf::from(hook)
                } else {
                    self.root.join(hook)
                };
                progress.phase(&format!("pre-push hook {}", path.display()));
                let out = tokio::process::Command::new(&path)
                    .args([registry, record.repository.as_str(), record.tag.as_str()])
                    .output()
                    .await
                    .map_err(|e| {
                        ImageError::Push(format!(
                            "cannot run the pre-push hook {}: {e}",
                            path.display()
                        ))
                    })?;
                if !out.status.success() {
                    return Err(ImageError::Push(format!(
                        "the pre-push hook {} failed ({}): {}",
                        path.display(),
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
            }
            progress.phase(&format!("pushing {remote}:{}", record.tag));
            self.engine
                .tag(&record.reference(), &remote, &record.tag)
                .await
                .map_err(ImageError::Push)?;
            self.engine
                .push(&remote, &record.tag, |ev| {
                    if let BuildEvent::Line(l) = ev {
                        progress.line(l);
                    }
                })
                .await
                .map_err(|e| {
                    ImageError::Push(format!(
                        "{} is built and usable on {}, but {e} (is the registry {registry} reachable? `--no-push` builds without pushing)",
                        record.reference(),
                        self.engine.name
                    ))
                })?;
            pushed_any = true;
        }
        if pushed_any && !record.pushed {
            record.pushed = true;
            write_record(&self.root, &record)?;
        }
        Ok(match built {
            Built::Built(_) => Built::Built(record),
            Built::UpToDate(_) => Built::UpToDate(record),
        })
    }

    /// The bootstrapped OS root of a spec, imported into the engine; returns its reference.
    async fn os_root(
        &self,
        spec: &BaseImage,
        progress: &mut dyn Progress,
    ) -> Result<String, ImageError> {
        let suite = spec
            .debian_suite
            .as_ref()
            .map_or("bookworm", |s| s.value.as_str());
        let mirror = self
            .settings_str(|b| &b.debian_mirror)
            .unwrap_or_else(|| "http://deb.debian.org/debian".to_string());
        let packages = dockerfile::os_packages(spec);
        let hash = rootfs::hash(suite, &mirror, &packages);
        let reference = format!("capstan-os:{suite}-{hash}");
        if self
            .engine
            .image(&reference)
            .await
            .map_err(ImageError::Engine)?
            .is_some()
        {
            return Ok(reference);
        }
        let tarball = rootfs::bootstrap(&self.cache, suite, &mirror, &packages, progress).await?;
        progress.phase(&format!("importing the OS root into {}", self.engine.name));
        let bytes = tokio::fs::read(&tarball).await.map_err(|e| {
            ImageError::Bootstrap(format!("cannot read {}: {e}", tarball.display()))
        })?;
        self.engine
            .import_rootfs(bytes, "capstan-os", &format!("{suite}-{hash}"), |ev| {
                if let BuildEvent::Bytes(d, t) = ev {
                    progress.bytes(d, t);
                }
            })
            .await
            .map_err(ImageError::Engine)?;
        Ok(reference)
    }
}

/// A tar archive of the build context.
fn tar_context(files: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    for (path, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        // Executables and shared objects (the engine image's) keep their execute bit.
        h.set_mode(if bytes.starts_with(b"\x7fELF") {
            0o755
        } else {
            0o644
        });
        h.set_size(bytes.len() as u64);
        tar.append_data(&mut h, path, bytes.as_slice())?;
    }
    tar.into_inner()
}

/// The state of an image, as `image list` and `env list` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageState {
    Ok,
    /// Built on a base image that has been rebuilt since (the engine image: by another capstan
    /// binary than this one).
    Stale,
    /// The last build failed (the image shown, if any, is the previous one).
    Failed,
    /// Never built, or gone from the engine.
    Missing,
}

impl ImageState {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Ok => "ok",
            ImageState::Stale => "stale",
            ImageState::Failed => "failed",
            ImageState::Missing => "missing",
        }
    }
}

/// One row of `image list` / `env list`.
#[derive(Clone, Debug)]
pub struct ImageRow {
    pub kind: &'static str,
    pub name: String,
    pub exec_config: Option<String>,
    pub record: Option<ImageRecord>,
    pub state: ImageState,
    /// Configurations that run on this image.
    pub used_by: Vec<String>,
    /// What capstan pins in it (`pyspark==… pandas==… pyarrow==…` where it brings Spark).
    pub pins: Option<String>,
}

/// The base images of the home and their state on `engine`.
pub async fn list_bases(home: &Home, engine: Option<&Engine>) -> Vec<ImageRow> {
    let mut rows = Vec::new();
    for b in home.base_images.values() {
        let record = home.base_image_record(&b.name).cloned();
        let state = state_of(record.as_ref(), None, engine).await;
        let used_by = home
            .exec_configs
            .values()
            .filter(|c| base_of(home, c).as_deref() == Some(b.name.as_str()))
            .map(|c| c.name.clone())
            .collect();
        rows.push(ImageRow {
            kind: "base",
            name: b.name.clone(),
            exec_config: None,
            record,
            state,
            used_by,
            pins: b.with_spark.then(capstan_core::pins::spark_pins),
        });
    }
    // The engine image, where visual recipes can run on Kubernetes: stale when built by
    // another binary than this one (the daemon refuses it then).
    let kubernetes: Vec<String> = home
        .exec_configs
        .values()
        .filter(|c| c.kind.value == ExecKind::Kubernetes)
        .map(|c| c.name.clone())
        .collect();
    let record = home.engine_image_record().cloned();
    if !kubernetes.is_empty() || record.is_some() {
        let mut state = state_of(record.as_ref(), None, engine).await;
        if state == ImageState::Ok
            && let (Some(r), Ok(now)) = (&record, capstan_engine::engine_image::tag())
            && r.tag != now
        {
            state = ImageState::Stale;
        }
        rows.push(ImageRow {
            kind: "engine",
            name: "engine".into(),
            exec_config: None,
            record,
            state,
            used_by: kubernetes,
            pins: None,
        });
    }
    rows
}

/// The code environments of the home, one row per configuration each is built for.
pub async fn list_envs(home: &Home, engine: Option<&Engine>) -> Vec<ImageRow> {
    let mut rows = Vec::new();
    for e in home.code_envs.values() {
        for t in env_targets(home, e) {
            let record = home.env_image_record(&e.name, &t.key).cloned();
            let base_now = t
                .base
                .as_ref()
                .and_then(|b| home.base_image_record(b))
                .map(|r| r.image_id.clone());
            let state = state_of(record.as_ref(), base_now.as_deref(), engine).await;
            let pins = t
                .base
                .as_ref()
                .and_then(|b| home.base_images.get(b))
                .filter(|b| b.with_spark)
                .map(|_| capstan_core::pins::spark_pins());
            rows.push(ImageRow {
                kind: "env",
                name: e.name.clone(),
                exec_config: Some(t.key.clone()),
                record,
                state,
                used_by: vec![t.key],
                pins,
            });
        }
    }
    rows
}

async fn state_of(
    record: Option<&ImageRecord>,
    base_now: Option<&str>,
    engine: Option<&Engine>,
) -> ImageState {
    let Some(r) = record else {
        return ImageState::Missing;
    };
    if r.last_error.is_some() {
        return ImageState::Failed;
    }
    if let (Some(now), Some(built_on)) = (base_now, &r.base_image_id)
        && now != built_on
    {
        return ImageState::Stale;
    }
    if let Some(engine) = engine
        && matches!(engine.image(&r.reference()).await, Ok(None))
        && !r.pushed
    {
        return ImageState::Missing;
    }
    ImageState::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_core::load::{HomeFiles, load};

    #[test]
    fn a_base_image_is_pushed_to_the_registries_of_execution_and_spark_configurations_on_it() {
        let mut files = HomeFiles::default();
        for (name, text) in [
            ("capstan.toml", ""),
            (
                "images.toml",
                "[base_image.default]\n[base_image.spark]\nwith_spark = true\n",
            ),
            (
                "exec-configs.toml",
                "[exec_config.a]\nkind = \"docker\"\nbase_image = \"spark\"\nregistry = \"r1.example.com/t\"\npre_push_hook = \"hooks/p.sh\"\n\
                 [exec_config.b]\nkind = \"docker\"\nregistry = \"r2.example.com\"\n",
            ),
            (
                "spark-configs.toml",
                "[spark_config.k]\nmaster = \"kubernetes\"\nbase_image = \"spark\"\nregistry = \"r3.example.com\"\nnamespace = \"s\"\n\
                 [spark_config.shared]\nmaster = \"kubernetes\"\nbase_image = \"spark\"\nregistry = \"r1.example.com/t\"\nnamespace = \"s\"\n\
                 [spark_config.own]\nmaster = \"kubernetes\"\nimage = \"mine:1\"\nregistry = \"r4.example.com\"\nnamespace = \"s\"\n",
            ),
        ] {
            files.toml.insert(name.into(), text.as_bytes().to_vec());
        }
        files.others.insert("hooks/p.sh".into());
        let (home, diags) = load(Path::new("/h"), &files);
        assert!(!diags.has_errors(), "{:?}", diags.list);
        assert_eq!(
            base_registries(&home, "spark"),
            [
                ("r1.example.com/t", Some("hooks/p.sh")),
                ("r3.example.com", None)
            ]
        );
        assert_eq!(
            base_registries(&home, "default"),
            [("r2.example.com", None)]
        );
    }
}
