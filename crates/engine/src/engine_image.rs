//! capstan's built-in engine as it travels into Kubernetes pods: the engine image.
//!
//! A pod cannot mount a file of the daemon's machine, as a local Docker engine can. So capstan
//! builds an image holding its own binary with the dynamic loader and the libraries it was
//! linked against (`capstan image build-engine`), pushed to the registries of the Kubernetes
//! configurations. A visual recipe's pod copies those files from an init container on that
//! image into an `emptyDir`, and its main container, on the recipe's own image, runs the binary
//! through the copied loader. The binary thus never depends on the image's C library: any image
//! runs it, a musl or a ten-year-old glibc one alike.
//!
//! The image's tag is the binary's version and the hash of its bytes, so a pod never runs an
//! engine other than the daemon's.

use std::sync::OnceLock;

/// The repository of the engine image, in each registry it is pushed to.
pub const REPOSITORY: &str = "capstan-engine";
/// Where the engine's files are in the engine image, and where the pod's main container sees
/// their copy.
pub const DIR: &str = "/capstan/engine";
/// Where the init container writes its copy (the same `emptyDir`).
pub const COPY_DIR: &str = "/capstan/engine-copy";
/// The binary, the libraries' folder and the loader, relative to [`DIR`].
pub const BINARY: &str = "capstan";
pub const LIB_DIR: &str = "lib";
pub const LOADER: &str = "lib/ld.so";

/// This binary's architecture as Kubernetes names it (the `kubernetes.io/arch` node label): a
/// visual recipe's pod goes to a node that can run the engine it copies.
pub const KUBE_ARCH: &str = if cfg!(target_arch = "x86_64") {
    "amd64"
} else if cfg!(target_arch = "aarch64") {
    "arm64"
} else {
    std::env::consts::ARCH
};

/// The command that runs capstan with `args` from the engine's files in `dir`: through the
/// loader copied with it, on the libraries copied with it, whatever the image holds.
pub fn command(dir: &str, args: impl IntoIterator<Item = String>) -> Vec<String> {
    [
        format!("{dir}/{LOADER}"),
        "--library-path".into(),
        format!("{dir}/{LIB_DIR}"),
        format!("{dir}/{BINARY}"),
    ]
    .into_iter()
    .chain(args)
    .collect()
}

/// The init container's command: copy the engine's files into the pod's `emptyDir`.
pub fn install_command() -> Vec<String> {
    command(
        DIR,
        ["transform", "install", DIR, COPY_DIR].map(String::from),
    )
}

/// This binary, readable: not one replaced since the process started (an upgrade).
pub fn binary() -> Result<std::path::PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find capstan's own binary: {e}"))?;
    if exe.to_string_lossy().ends_with(" (deleted)") {
        return Err(format!(
            "capstan's binary {} was replaced since this process started: restart it (the daemon) so that it ships the new one",
            exe.display()
        ));
    }
    Ok(exe)
}

/// The engine image's tag for this binary: `VERSION-HASH`, the hash of the binary's bytes
/// (computed once per process).
pub fn tag() -> Result<String, String> {
    static TAG: OnceLock<Result<String, String>> = OnceLock::new();
    TAG.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let exe = binary()?;
        let mut file = std::fs::File::open(&exe)
            .map_err(|e| format!("cannot read capstan's binary {}: {e}", exe.display()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)
                .map_err(|e| format!("cannot read capstan's binary {}: {e}", exe.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let digest = h.finalize();
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("{}-{hex}", env!("CARGO_PKG_VERSION")))
    })
    .clone()
}

/// The engine image's reference for a configuration pushing to `registry`, given the tag of
/// the last build.
pub fn reference(registry: Option<&str>, tag: &str) -> String {
    match registry {
        Some(r) => format!("{}/{REPOSITORY}:{tag}", r.trim_end_matches('/')),
        None => format!("{REPOSITORY}:{tag}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_and_main_containers_run_capstan_through_the_copied_loader() {
        assert_eq!(
            install_command(),
            [
                "/capstan/engine/lib/ld.so",
                "--library-path",
                "/capstan/engine/lib",
                "/capstan/engine/capstan",
                "transform",
                "install",
                "/capstan/engine",
                "/capstan/engine-copy"
            ]
        );
        assert_eq!(
            reference(Some("registry.example.com/team/"), "0.1.0-abcdef"),
            "registry.example.com/team/capstan-engine:0.1.0-abcdef"
        );
    }

    #[test]
    fn the_tag_is_the_version_and_the_binarys_hash() {
        let t = tag().unwrap();
        let (version, hash) = t.rsplit_once('-').unwrap();
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        assert_eq!(hash.len(), 12);
        assert_eq!(tag().unwrap(), t, "computed once");
    }
}
