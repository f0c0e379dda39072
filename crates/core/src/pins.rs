//! The versions of what capstan itself installs for Spark recipes — in base images with
//! `with_spark` and in the local `spark` environment — pinned to those its tests ran with.
//!
//! Unpinned, a rebuild takes whatever PyPI has that day: pyspark 4.3.0 arrived with a driver
//! that hands its executors an address they cannot reach on some clusters. To move them:
//! change these, run `./scripts/test` (the Spark tests run them locally and in a container),
//! and rebuild the images (`capstan image build-base`, which sees their spec changed).

/// pyspark, which brings Spark itself (its jars) and py4j.
pub const PYSPARK: &str = "4.3.0";
/// pandas, with which recipes and drivers read datasets (PySpark 4 does not support pandas 3).
pub const PANDAS: &str = "2.3.3";
/// pyarrow, the Arrow streams of the data API.
pub const PYARROW: &str = "26.0.1";

/// The pip requirements for Spark, pinned.
pub fn spark_packages() -> [String; 3] {
    [
        format!("pyspark[sql]=={PYSPARK}"),
        format!("pandas=={PANDAS}"),
        format!("pyarrow=={PYARROW}"),
    ]
}

/// How an image says what it was pinned to (its `capstan.pins` label, `image list`).
pub fn spark_pins() -> String {
    format!("pyspark=={PYSPARK} pandas=={PANDAS} pyarrow=={PYARROW}")
}

/// TensorBoard, which `capstan tensorboard` serves a job's event files with (a CPU venv on the
/// machine it runs on).
pub const TENSORBOARD: &str = "2.21.0";

/// The pip requirement of `capstan tensorboard`'s environment, pinned.
pub fn tensorboard_packages() -> [String; 1] {
    [format!("tensorboard=={TENSORBOARD}")]
}

/// ipykernel, the kernel of a code environment with `with_jupyter` (it brings jupyter_client,
/// pyzmq and tornado, which the kernel's agent uses).
pub const IPYKERNEL: &str = "7.4.0";

/// The pip requirements a code environment with `with_jupyter` gains, pinned.
pub fn jupyter_packages() -> [String; 1] {
    [format!("ipykernel=={IPYKERNEL}")]
}

/// The Debian package an R environment with `with_jupyter` gains: IRkernel as Debian ships it
/// (bookworm: 1.3.2, with its kernelspec `ir`), so no CRAN access is needed.
pub fn jupyter_r_packages() -> [String; 1] {
    ["r-cran-irkernel".to_string()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_spark_package_is_pinned_to_one_version() {
        for p in super::spark_packages() {
            let (_, version) = p.split_once("==").unwrap();
            assert!(
                !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.'),
                "{p}"
            );
        }
        assert_eq!(
            super::spark_pins(),
            "pyspark==4.3.0 pandas==2.3.3 pyarrow==26.0.1"
        );
    }
}
