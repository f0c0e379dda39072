//! The Dockerfiles of base images and code environment images, as pure functions of their specs.
//! Snapshot-tested.

use capstan_core::model::{BaseImage, CodeEnv, EnvLanguage};

/// Where the trusted CA bundle lives inside images.
pub const CA_PATH: &str = "/usr/local/share/capstan/ca-bundle.crt";
/// The Python environment of every base image (Debian's own Python refuses `pip install`).
pub const PYTHON_ENV: &str = "/opt/capstan/python";

/// The entrypoint of base images with Spark (see the script for why).
pub const SPARK_ENTRYPOINT: &str = include_str!("spark-entrypoint.sh");

/// What a base image starts from and what the build may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseInputs {
    /// The image to start from: a bootstrapped OS root, or the spec's `from`.
    pub from: String,
    /// Whether `from` is a bootstrapped root that already holds the OS packages.
    pub bootstrapped: bool,
    /// Whether a CA bundle is in the context (`capstan/ca-bundle.crt`).
    pub ca_bundle: bool,
    pub pip_index_url: Option<String>,
    pub pip_extra_index_url: Option<String>,
}

/// The Debian packages an OS root needs for a base image spec.
pub fn os_packages(spec: &BaseImage) -> Vec<String> {
    let mut p: Vec<String> = ["python3", "python3-venv", "ca-certificates"]
        .map(String::from)
        .to_vec();
    if spec.with_spark {
        // Spark's JVM; Spark itself comes with pyspark.
        p.push("openjdk-17-jre-headless".into());
    }
    if spec.with_r {
        // R and what capstan's R client needs to reach the data API.
        p.push("r-base-core".into());
        p.push("r-cran-curl".into());
    }
    p.extend(spec.system_packages.iter().map(|s| s.value.clone()));
    p.sort();
    p.dedup();
    p
}

fn env_lines(inputs: &BaseInputs) -> String {
    let mut s = String::new();
    if inputs.ca_bundle {
        s += &format!("COPY capstan/ca-bundle.crt {CA_PATH}\n");
        // Every common client reads one of these: OpenSSL, requests, pip, curl, R's curl.
        s += &format!(
            "ENV SSL_CERT_FILE={CA_PATH} REQUESTS_CA_BUNDLE={CA_PATH} PIP_CERT={CA_PATH} CURL_CA_BUNDLE={CA_PATH}\n"
        );
    }
    if let Some(u) = &inputs.pip_index_url {
        s += &format!("ENV PIP_INDEX_URL={u}\n");
    }
    if let Some(u) = &inputs.pip_extra_index_url {
        s += &format!("ENV PIP_EXTRA_INDEX_URL={u}\n");
    }
    s
}

/// The Dockerfile of a base image.
pub fn base(spec: &BaseImage, inputs: &BaseInputs, spec_hash: &str) -> String {
    let mut d = format!(
        "# capstan base image `{}`, generated: do not edit\nFROM {}\n",
        spec.name, inputs.from
    );
    if let Some(p) = &spec.dockerfile_prepend {
        d += p.value.trim_end();
        d.push('\n');
    }
    d += "ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive\n";
    d += &env_lines(inputs);
    if !inputs.bootstrapped {
        // Started from someone else's image: bring what a base image needs with its own apt.
        d += &format!(
            "RUN apt-get update && apt-get install -y --no-install-recommends {} && rm -rf /var/lib/apt/lists/*\n",
            os_packages(spec).join(" ")
        );
    }
    d += &format!("RUN python3 -m venv {PYTHON_ENV}\n");
    d += &format!("ENV PATH={PYTHON_ENV}/bin:$PATH VIRTUAL_ENV={PYTHON_ENV}\n");
    // The capstan runtime, on the path without a build step (works without any index).
    d += "COPY capstan/runtime /opt/capstan/runtime\n";
    d += "RUN echo /opt/capstan/runtime > \"$(python -c 'import site; print(site.getsitepackages()[0])')/capstan-runtime.pth\"\n";
    let mut pip: Vec<String> = spec
        .python_packages
        .iter()
        .map(|p| shell_quote(&p.value))
        .collect();
    if spec.with_spark {
        // `sql`: pandas and pyarrow, with which a driver pod reads and writes datasets through
        // the data API; all three at the versions capstan's tests ran with.
        pip.extend(
            capstan_core::pins::spark_packages()
                .iter()
                .map(|p| shell_quote(p)),
        );
    }
    if spec.with_cuda {
        // The CUDA runtime from NVIDIA's wheels: no CUDA image needed, any base works.
        pip.push("nvidia-cuda-runtime-cu12".into());
    }
    if spec.with_jupyter {
        // Notebook kernels on the image itself (the kernel agent needs only ipykernel's own
        // dependencies), at the version capstan's tests ran with.
        pip.extend(
            capstan_core::pins::jupyter_packages()
                .iter()
                .map(|p| shell_quote(p)),
        );
    }
    if !pip.is_empty() {
        d += &format!("RUN pip install {}\n", pip.join(" "));
    }
    if spec.with_spark {
        // Spark on Kubernetes: Spark's home is pyspark's, Java's is the JRE's, and the entrypoint
        // answers Spark's `driver` / `executor` pod commands.
        d += "RUN ln -s \"$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')\" /opt/spark \
              && ln -s \"$(dirname \"$(dirname \"$(readlink -f \"$(command -v java)\")\")\")\" /opt/capstan/java\n";
        d += "ENV SPARK_HOME=/opt/spark JAVA_HOME=/opt/capstan/java\n";
        d += "ENTRYPOINT [\"/bin/bash\", \"/opt/capstan/runtime/spark-entrypoint.sh\"]\n";
    }
    if spec.with_r {
        // Every R session starts with capstan's client loaded.
        d += "ENV R_PROFILE_USER=/opt/capstan/runtime/capstan.R\n";
    }
    if spec.with_cuda {
        // `nvidia.cuda_runtime` is a namespace package: its folder is in `__path__`.
        d += "RUN python -c \"import os, nvidia.cuda_runtime as c; print(os.path.join(list(c.__path__)[0], 'lib'))\" > /etc/ld.so.conf.d/capstan-cuda.conf && ldconfig\n";
        d += "ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility\n";
    }
    if let Some(a) = &spec.dockerfile_append {
        d += a.value.trim_end();
        d.push('\n');
    }
    if spec.with_spark {
        d += &format!(
            "LABEL capstan.pins=\"{}\"\n",
            capstan_core::pins::spark_pins()
        );
    }
    d += &format!(
        "LABEL capstan.base-image=\"{}\" capstan.spec-hash=\"{spec_hash}\"\nWORKDIR /capstan/work\n",
        spec.name
    );
    d
}

/// The Dockerfile of a code environment image on top of its configuration's base image.
/// `requirements` and `constraints` say whether those files are in the context.
pub fn env(
    spec: &CodeEnv,
    from: &str,
    requirements: bool,
    constraints: bool,
    spec_hash: &str,
) -> String {
    let mut d = format!(
        "# capstan code environment `{}`, generated: do not edit\nFROM {from}\n",
        spec.name
    );
    let mut apt: Vec<String> = spec
        .system_packages
        .iter()
        .map(|p| p.value.clone())
        .collect();
    match spec.language.value {
        EnvLanguage::Python => {
            if !apt.is_empty() {
                d += &apt_install(&apt);
            }
            let mut args: Vec<String> = spec
                .packages
                .iter()
                .map(|p| shell_quote(&p.value))
                .collect();
            if requirements {
                d += "COPY capstan/requirements.txt /opt/capstan/env/requirements.txt\n";
                args.push("-r /opt/capstan/env/requirements.txt".into());
            }
            if constraints {
                d += "COPY capstan/constraints.txt /opt/capstan/env/constraints.txt\n";
                args.push("-c /opt/capstan/env/constraints.txt".into());
            }
            if !args.is_empty() {
                d += &format!("RUN pip install {}\n", args.join(" "));
            }
        }
        EnvLanguage::R => {
            // Debian's r-cran-* packages need no CRAN access (air-gapped sites have a Debian
            // mirror); other names are installed from CRAN.
            let (debian, cran): (Vec<_>, Vec<_>) = spec
                .packages
                .iter()
                .map(|p| p.value.clone())
                .partition(|p| p.starts_with("r-cran-"));
            apt.extend(debian);
            if !apt.is_empty() {
                d += &apt_install(&apt);
            }
            if !cran.is_empty() {
                let list: Vec<String> = cran
                    .iter()
                    .map(|p| format!("'{}'", p.replace('\'', "")))
                    .collect();
                d += &format!(
                    "RUN Rscript -e \"install.packages(c({}), repos='https://cloud.r-project.org'); stopifnot(all(sapply(c({}), requireNamespace)))\"\n",
                    list.join(", "),
                    list.join(", ")
                );
            }
            if spec.with_jupyter {
                // The kernel's agent is Python (the base image's venv): it starts IRkernel
                // through jupyter_client, which comes with ipykernel at the pinned version.
                d += &format!(
                    "RUN pip install {}\n",
                    capstan_core::pins::jupyter_packages()
                        .iter()
                        .map(|p| shell_quote(p))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
    }
    d += &format!(
        "LABEL capstan.code-env=\"{}\" capstan.spec-hash=\"{spec_hash}\"\n",
        spec.name
    );
    d
}

fn apt_install(packages: &[String]) -> String {
    format!(
        "RUN apt-get update && apt-get install -y --no-install-recommends {} && rm -rf /var/lib/apt/lists/*\n",
        packages
            .iter()
            .map(|p| shell_quote(p))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Quotes a package spec for the shell (`pandas>=2` must not become a redirection).
fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.=/".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_core::load::{HomeFiles, load};
    use capstan_core::model::Home;
    use std::path::Path;

    fn home(images_toml: &str) -> Home {
        let mut files = HomeFiles::default();
        files.toml.insert("capstan.toml".into(), b"".to_vec());
        files
            .toml
            .insert("images.toml".into(), images_toml.as_bytes().to_vec());
        files.others.insert("ctx/extra.conf".into());
        files.others.insert("envs/req.txt".into());
        files.others.insert("envs/con.txt".into());
        let (h, d) = load(Path::new("/h"), &files);
        assert!(!d.has_errors(), "{:?}", d.list);
        h
    }

    fn inputs(from: &str, bootstrapped: bool) -> BaseInputs {
        BaseInputs {
            from: from.into(),
            bootstrapped,
            ca_bundle: true,
            pip_index_url: None,
            pip_extra_index_url: None,
        }
    }

    #[test]
    fn bootstrapped_base() {
        let h = home("[base_image.default]\npython_packages = [\"numpy>=2\"]\n");
        let b = &h.base_images["default"];
        assert_eq!(
            os_packages(b),
            ["ca-certificates", "python3", "python3-venv"]
        );
        insta::assert_snapshot!(base(b, &inputs("capstan-os:bookworm-abc", true), "HASH"));
    }

    #[test]
    fn base_with_r_cuda_fragments_from_a_registry_image() {
        let h = home(
            "[base_image.gpu]\nfrom = \"reg.example.com/debian:bookworm\"\nwith_r = true\nwith_cuda = true\n\
             system_packages = [\"libgomp1\"]\ndockerfile_prepend = \"ARG TEAM=ml\"\n\
             dockerfile_append = \"COPY files/ctx/extra.conf /etc/extra.conf\"\nfiles = [\"ctx/extra.conf\"]\n",
        );
        let b = &h.base_images["gpu"];
        assert_eq!(
            os_packages(b),
            [
                "ca-certificates",
                "libgomp1",
                "python3",
                "python3-venv",
                "r-base-core",
                "r-cran-curl"
            ]
        );
        let mut i = inputs("reg.example.com/debian:bookworm", false);
        i.pip_index_url = Some("https://pypi.internal/simple".into());
        insta::assert_snapshot!(base(b, &i, "HASH"));
    }

    #[test]
    fn spark_base_has_java_pyspark_and_the_kubernetes_entrypoint() {
        let h = home("[base_image.spark]\nwith_spark = true\n");
        let b = &h.base_images["spark"];
        assert!(os_packages(b).contains(&"openjdk-17-jre-headless".to_string()));
        insta::assert_snapshot!(base(b, &inputs("capstan-rootfs:bookworm", true), "HASH"));
    }

    #[test]
    fn jupyter_base_installs_the_pinned_ipykernel() {
        let h = home("[base_image.nb]\nwith_jupyter = true\n");
        let d = base(
            &h.base_images["nb"],
            &inputs("capstan-rootfs:bookworm", true),
            "HASH",
        );
        let pin = format!(
            "RUN pip install ipykernel=={}\n",
            capstan_core::pins::IPYKERNEL
        );
        assert!(d.contains(&pin), "{d}");
    }

    #[test]
    fn python_env_with_requirements_and_constraints() {
        let h = home(
            "[code_env.ml]\nlanguage = \"python\"\npackages = [\"pandas>=2\", \"scikit-learn==1.5.*\"]\n\
             requirements_file = \"envs/req.txt\"\nconstraints_file = \"envs/con.txt\"\nsystem_packages = [\"libgomp1\"]\n",
        );
        insta::assert_snapshot!(env(
            &h.code_envs["ml"],
            "capstan-base-default:abc",
            true,
            true,
            "HASH"
        ));
    }

    #[test]
    fn r_env_from_debian_and_cran() {
        let h = home(
            "[code_env.stats]\nlanguage = \"r\"\npackages = [\"r-cran-data.table\", \"forecast\"]\n",
        );
        insta::assert_snapshot!(env(
            &h.code_envs["stats"],
            "capstan-base-r:abc",
            false,
            false,
            "HASH"
        ));
    }

    #[test]
    fn r_env_with_jupyter_has_irkernel_from_debian_and_the_agents_python_side() {
        let h = home("[code_env.rnb]\nlanguage = \"r\"\nwith_jupyter = true\n");
        insta::assert_snapshot!(env(
            &h.code_envs["rnb"],
            "capstan-base-r:abc",
            false,
            false,
            "HASH"
        ));
    }
}
