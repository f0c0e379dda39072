"""Spark recipes and capstan's managed datasets.

    from pyspark.sql import SparkSession
    import capstan.spark
    spark = SparkSession.builder.getOrCreate()
    orders = capstan.spark.read(spark, "orders")
    capstan.spark.write(orders.groupBy("customer").sum("amount"), "order_totals")

Managed datasets are Parquet, so Spark reads them where they are. An output is written next to
its dataset as a staged file, which capstan makes the dataset only when the activity succeeds:
a failed or cancelled Spark job leaves the previous version in place.
"""

import glob
import json
import os
import shutil


def _paths(var):
    raw = os.environ.get(var)
    if raw is None:
        raise RuntimeError("not a capstan Spark activity: run the recipe with `capstan run`")
    return json.loads(raw)


def read(spark, name):
    """A declared input dataset as a Spark DataFrame."""
    inputs = _paths("CAPSTAN_SPARK_INPUTS")
    if name not in inputs:
        raise PermissionError(
            f"recipe {os.environ.get('CAPSTAN_PROJECT')}/{os.environ.get('CAPSTAN_RECIPE')} may not read "
            f"dataset {name}: it declares inputs {', '.join(sorted(inputs)) or 'none'}"
        )
    return spark.read.parquet(inputs[name])


def write(df, name):
    """Writes a DataFrame to a declared output (visible once the activity succeeds)."""
    outputs = _paths("CAPSTAN_SPARK_OUTPUTS")
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
