"""Spark recipes and capstan's managed datasets.

    from pyspark.sql import SparkSession
    import capstan.spark
    spark = SparkSession.builder.getOrCreate()
    orders = capstan.spark.read(spark, "orders")
    capstan.spark.write(orders.groupBy("customer").sum("amount"), "order_totals")

Managed datasets are Parquet. Where Spark sees the daemon's disk (local mode), it reads them
where they are, and an output is written next to its dataset as a staged file. Elsewhere (a
driver pod on Kubernetes), datasets travel through capstan's data API as Arrow, by way of the
driver. Either way capstan makes an output the dataset only when the activity succeeds: a failed
or cancelled Spark job leaves the previous version in place.
"""

import glob
import json
import os
import shutil


def _paths(var):
    """The datasets' files, or None where Spark does not see them (then: the data API)."""
    raw = os.environ.get(var)
    if raw is None:
        if "CAPSTAN_API_URL" in os.environ:
            return None
        raise RuntimeError("not a capstan Spark activity: run the recipe with `capstan run`")
    return json.loads(raw)


def _arrow(spark):
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "this Spark driver reads capstan datasets through the data API, which needs pyarrow and "
            "pandas in the image (capstan's `with_spark` base images have them)"
        ) from e
    # Between pandas and Spark, columns move as Arrow rather than row by row (Spark falls back
    # by itself for types Arrow cannot carry).
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")


def read(spark, name):
    """A declared input dataset as a Spark DataFrame."""
    inputs = _paths("CAPSTAN_SPARK_INPUTS")
    if inputs is None:
        # The API checks what the activity may read.
        import capstan

        _arrow(spark)
        return spark.createDataFrame(capstan.Dataset(name).to_pandas())
    if name not in inputs:
        raise PermissionError(
            f"recipe {os.environ.get('CAPSTAN_PROJECT')}/{os.environ.get('CAPSTAN_RECIPE')} may not read "
            f"dataset {name}: it declares inputs {', '.join(sorted(inputs)) or 'none'}"
        )
    return spark.read.parquet(inputs[name])


def write(df, name):
    """Writes a DataFrame to a declared output (visible once the activity succeeds)."""
    outputs = _paths("CAPSTAN_SPARK_OUTPUTS")
    if outputs is None:
        import capstan

        _arrow(df.sparkSession)
        return capstan.Output(name).write(df.toPandas())
    if name not in outputs:
        raise PermissionError(
            f"recipe {os.environ.get('CAPSTAN_PROJECT')}/{os.environ.get('CAPSTAN_RECIPE')} may not write "
            f"dataset {name}: it declares outputs {', '.join(sorted(outputs)) or 'none'}"
        )
    staged = outputs[name]
    tmp = staged + ".spark"
    shutil.rmtree(tmp, ignore_errors=True)
    # One file: a managed dataset is one Parquet file, replaced whole by a rename.
    df.coalesce(1).write.mode("overwrite").parquet(tmp)
    parts = glob.glob(os.path.join(tmp, "part-*.parquet"))
    if len(parts) != 1:
        raise RuntimeError(f"Spark wrote {len(parts)} files for {name}, expected one")
    os.makedirs(os.path.dirname(staged), exist_ok=True)
    os.replace(parts[0], staged)
    shutil.rmtree(tmp, ignore_errors=True)
