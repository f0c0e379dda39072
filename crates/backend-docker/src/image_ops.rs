//! Image operations on a Docker engine, for the image builder: import a root filesystem, build
//! from a context, tag, push, pull, inspect, remove. Kept here so that only this crate knows
//! bollard.

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, PushImageOptionsBuilder,
    RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::StreamExt;

use crate::host_address::{self, HostAddress};
use crate::{engine_message, engine_name, is_not_found};

/// A connected engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// How to name it in messages.
    pub name: String,
}

/// What a build reports as it goes.
pub enum BuildEvent<'a> {
    /// A line of the build's output (`Step 3/9 : RUN …`, the tools' own output).
    Line(&'a str),
    /// Bytes sent so far, while uploading a large body (a root filesystem).
    Bytes(u64, u64),
}

/// A failed build: the step that failed and the tool's own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    pub step: Option<String>,
    pub message: String,
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.step {
            Some(s) => write!(f, "{s} failed: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl Engine {
    /// Connects to an engine (`None`: the local one) and negotiates the API version.
    pub async fn connect(host: Option<&str>) -> Result<Engine, String> {
        let name = engine_name(host);
        let fail =
            |e: bollard::errors::Error| format!("cannot reach the Docker engine at {name}: {e}");
        let docker = match host {
            None => Docker::connect_with_defaults(),
            Some(h) if h.starts_with("unix://") => {
                Docker::connect_with_unix(h, 600, bollard::API_DEFAULT_VERSION)
            }
            Some(h) => Docker::connect_with_http(
                &h.replacen("tcp://", "http://", 1),
                600,
                bollard::API_DEFAULT_VERSION,
            ),
        }
        .map_err(fail)?;
        let docker = docker.negotiate_version().await.map_err(fail)?;
        Ok(Engine { docker, name })
    }

    /// The engine's version (`20.10.24+dfsg1`).
    pub async fn version(&self) -> Result<String, String> {
        self.docker
            .version()
            .await
            .map(|v| v.version.unwrap_or_else(|| "?".into()))
            .map_err(|e| {
                format!(
                    "the Docker engine at {} does not answer: {}",
                    self.name,
                    engine_message(&e)
                )
            })
    }

    /// An address of this machine that the engine's containers can reach, and why it is that
    /// one: for a remote engine (`tcp://`), this machine's address toward it; for one on this
    /// machine, the host's address on its default bridge network.
    pub async fn host_address(&self) -> Result<HostAddress, String> {
        if let Some((host, port)) = host_address::tcp_endpoint(&self.name) {
            let found = tokio::task::spawn_blocking(move || host_address::toward(&host, port))
                .await
                .ok()
                .flatten();
            if let Some(a) = found {
                return Ok(a);
            }
        }
        let net = self
            .docker
            .inspect_network(
                "bridge",
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot inspect the bridge network of the Docker engine at {}: {}",
                    self.name,
                    engine_message(&e)
                )
            })?;
        host_address::on_bridge(&net, host_address::interface_ipv4).ok_or_else(|| {
            format!(
                "the bridge network of the Docker engine at {} names no gateway, interface or subnet",
                self.name
            )
        })
    }

    /// The id and size of an image, or `None` if the engine does not have it.
    pub async fn image(&self, reference: &str) -> Result<Option<(String, u64)>, String> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(Some((
                i.id.unwrap_or_default(),
                i.size.unwrap_or(0).max(0) as u64,
            ))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(format!(
                "cannot inspect `{reference}` on {}: {}",
                self.name,
                engine_message(&e)
            )),
        }
    }

    /// `docker import`: a root filesystem tarball becomes the image `repo:tag`.
    pub async fn import_rootfs(
        &self,
        tarball: Vec<u8>,
        repo: &str,
        tag: &str,
        mut progress: impl FnMut(BuildEvent<'_>),
    ) -> Result<(), String> {
        let total = tarball.len() as u64;
        progress(BuildEvent::Bytes(0, total));
        let opts = CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .build();
        let mut stream =
            self.docker
                .create_image(Some(opts), Some(bollard::body_full(tarball.into())), None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Err(format!(
                            "importing the OS root into {} failed: {e}",
                            self.name
                        ));
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "importing the OS root into {} failed: {}",
                        self.name,
                        engine_message(&e)
                    ));
                }
            }
        }
        progress(BuildEvent::Bytes(total, total));
        Ok(())
    }

    /// Builds `tag` from a tar context (with its `Dockerfile`), and returns the image id.
    pub async fn build(
        &self,
        context: Vec<u8>,
        tag: &str,
        build_args: &HashMap<String, String>,
        mut progress: impl FnMut(BuildEvent<'_>),
    ) -> Result<String, BuildError> {
        let opts = BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .buildargs(build_args)
            .build();
        let mut stream =
            self.docker
                .build_image(opts, None, Some(bollard::body_full(context.into())));
        let mut step: Option<String> = None;
        let mut tail: Vec<String> = Vec::new();
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(i) => i,
                Err(e) => {
                    return Err(BuildError {
                        step,
                        message: with_tail(engine_message(&e), &tail),
                    });
                }
            };
            if let Some(text) = &info.stream {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    if line.starts_with("Step ") {
                        step = Some(line.to_string());
                        tail.clear();
                    } else {
                        tail.push(line.to_string());
                        if tail.len() > 8 {
                            tail.remove(0);
                        }
                    }
                    progress(BuildEvent::Line(line));
                }
            }
            if let Some(message) = info.error_detail.and_then(|d| d.message) {
                return Err(BuildError {
                    step,
                    message: with_tail(message, &tail),
                });
            }
        }
        match self.image(tag).await {
            Ok(Some((id, _))) => Ok(id),
            Ok(None) => Err(BuildError {
                step,
                message: format!("the engine reported no error, but `{tag}` does not exist"),
            }),
            Err(message) => Err(BuildError { step, message }),
        }
    }

    pub async fn tag(&self, source: &str, repo: &str, tag: &str) -> Result<(), String> {
        self.docker
            .tag_image(
                source,
                Some(TagImageOptionsBuilder::new().repo(repo).tag(tag).build()),
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot tag `{source}` as `{repo}:{tag}`: {}",
                    engine_message(&e)
                )
            })
    }

    pub async fn push(
        &self,
        repo: &str,
        tag: &str,
        mut progress: impl FnMut(BuildEvent<'_>),
    ) -> Result<(), String> {
        let mut stream = self.docker.push_image(
            repo,
            Some(PushImageOptionsBuilder::new().tag(tag).build()),
            None,
        );
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Err(format!("pushing `{repo}:{tag}` failed: {e}"));
                    }
                    if let Some(s) = &info.status {
                        progress(BuildEvent::Line(s));
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "pushing `{repo}:{tag}` failed: {}",
                        engine_message(&e)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Pulls `reference` (`repo:tag`) from its registry.
    pub async fn pull(&self, reference: &str) -> Result<(), String> {
        pull(&self.docker, reference).await
    }

    pub async fn remove(&self, reference: &str) -> Result<(), String> {
        match self
            .docker
            .remove_image(
                reference,
                Some(RemoveImageOptionsBuilder::new().force(true).build()),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(format!(
                "cannot remove `{reference}`: {}",
                engine_message(&e)
            )),
        }
    }
}

pub(crate) async fn pull(docker: &Docker, reference: &str) -> Result<(), String> {
    let (repo, tag) = split_reference(reference);
    let opts = CreateImageOptionsBuilder::new()
        .from_image(repo)
        .tag(tag)
        .build();
    let mut stream = docker.create_image(Some(opts), None, None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(e);
                }
            }
            Err(e) => return Err(engine_message(&e)),
        }
    }
    Ok(())
}

/// `host:5000/a/b:tag` → (`host:5000/a/b`, `tag`); no tag means `latest`.
pub fn split_reference(reference: &str) -> (&str, &str) {
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(i) => (
            &reference[..last_slash + i],
            &reference[last_slash + i + 1..],
        ),
        None => (reference, "latest"),
    }
}

/// Whether an image reference names a registry (`host.domain/…` or `host:port/…`), so that
/// pulling it can work.
pub fn has_registry(reference: &str) -> bool {
    match reference.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

fn with_tail(message: String, tail: &[String]) -> String {
    if tail.is_empty() {
        message
    } else {
        format!("{message}\n{}", tail.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            split_reference("127.0.0.1:5000/capstan-base-x:abc"),
            ("127.0.0.1:5000/capstan-base-x", "abc")
        );
        assert_eq!(
            split_reference("capstan-base-x"),
            ("capstan-base-x", "latest")
        );
        assert_eq!(
            split_reference("localhost:5000/x"),
            ("localhost:5000/x", "latest")
        );
        assert!(has_registry("127.0.0.1:5000/x:1"));
        assert!(has_registry("reg.example.com/team/x"));
        assert!(!has_registry("capstan-base-x:1"));
        assert!(!has_registry("library/debian"));
    }
}
