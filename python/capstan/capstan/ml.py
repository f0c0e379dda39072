"""capstan's ML runner: the program an ML recipe's activity runs.

capstan stages this file followed by `run(spec)`, with the activity's spec as JSON (see the
engine's `ml.rs`): `ml_train` / `ml_retrain` train one new version of a saved model, `ml_score`
applies a version to a dataset, `ml_evaluate` measures a version on labelled data.

- The input is read once, as Arrow, through the data API, and converted once, to pandas.
- A version is written in MLflow's layout (`MLmodel` with the `python_function` and `sklearn`
  flavors and a signature, pinned requirements, `model.pkl`), with capstan's `metrics.json`,
  `features.json` and `train_info.json`, and uploaded as a tar; the daemon commits it when the
  activity succeeds, so a failed training leaves nothing.
- A classifier is trained on class indices (XGBoost needs them) and wrapped so that it predicts
  the classes themselves; the wrapper's module ships in the version's `code/`, which MLflow puts
  on `sys.path`, so `mlflow.pyfunc.load_model` needs nothing of capstan.
"""

import io
import json
import os
import pickle
import platform
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from capstan import CapstanError, Dataset, Output, _endpoint, _raise_for

# The module that travels with every version in `code/`: what a pickled classifier refers to.
MODEL_MODULE = '''"""Written by capstan into each saved model version (code/); MLflow puts it on sys.path."""

import numpy as np


class EncodedLabels:
    """A classifier trained on class indices that predicts the classes themselves."""

    def __init__(self, model, classes):
        self.model = model
        self.classes_ = np.asarray(classes)

    def predict(self, X):
        return self.classes_[np.asarray(self.model.predict(X)).astype(int)]

    def predict_proba(self, X):
        return self.model.predict_proba(X)
'''

MODULE_NAME = "capstan_ml_model"

# Metrics where lower is better; every other one is better higher.
LOWER_IS_BETTER = {"log_loss", "rmse", "mae"}

METRICS = {
    "binary": ["roc_auc", "accuracy", "f1", "log_loss", "precision", "recall"],
    "multiclass": ["accuracy", "f1_macro", "log_loss", "roc_auc_ovr"],
    "regression": ["r2", "rmse", "mae"],
}

# The distributions an algorithm needs beyond scikit-learn's, as PyPI names them (those installed
# are recorded).
LIBRARIES = {
    "xgboost": ["xgboost", "xgboost-cpu"],
    "lightgbm": ["lightgbm"],
}
ALWAYS = ["scikit-learn", "numpy", "scipy", "pandas", "pyarrow", "joblib"]


class TrainingError(CapstanError):
    """The training could not make a model; the message says which part failed and why."""


def say(line):
    print(line, flush=True)


def run(spec):
    kind = spec["kind"]
    if kind in ("ml_train", "ml_retrain"):
        return train(spec)
    if kind == "ml_score":
        return score(spec)
    if kind == "ml_evaluate":
        return evaluate(spec)
    raise CapstanError(f"the ML runner does not know recipes of kind {kind}")


# ---- the data API (seams: tests replace these) --------------------------------------------


def _read_input(spec):
    return Dataset(spec["input"], spec["project"]).to_arrow()


def _write_output(spec, frame):
    return Output(spec["output"], spec["project"]).write(frame)


def _model_path(spec, rest):
    return (
        f"/api/v1/projects/{urllib.parse.quote(spec['project'])}/models/"
        f"{urllib.parse.quote(spec['model'])}/{rest}"
    )


def _request(method, path, body=None, content_type=None):
    base, token = _endpoint()
    headers = {"Authorization": f"Bearer {token}"}
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        _raise_for(e.code, e.read(), base + path)
    except urllib.error.URLError as e:
        raise CapstanError(f"cannot reach the capstan data API at {base}: {e.reason}") from e


def _upload(spec, tar_bytes):
    return json.loads(_request("PUT", _model_path(spec, "staged"), tar_bytes, "application/x-tar"))


def _download(spec, version):
    return _request("GET", _model_path(spec, f"versions/{version}"))


def _post_evaluation(spec, row):
    body = json.dumps(row).encode()
    return _request("POST", _model_path(spec, "evaluations"), body, "application/json")


# ---- training -------------------------------------------------------------------------------


def train(spec):
    import numpy as np

    t = spec["train"]
    started = time.monotonic()
    table = _read_input(spec)
    target = t["target"]
    if target not in table.column_names:
        raise TrainingError(
            f"the target `{target}` is not a column of `{spec['input']}` "
            f"(its columns: {', '.join(table.column_names)})"
        )
    frame = table.to_pandas()
    missing = int(frame[target].isna().sum())
    if missing:
        frame = frame[frame[target].notna()].reset_index(drop=True)
        say(f"left out {missing} rows whose target `{target}` is missing")
    if len(frame) < 10:
        raise TrainingError(f"`{spec['input']}` has {len(frame)} labelled rows: too few to train on")

    ptype, why = _prediction_type(frame[target], t.get("prediction_type"))
    say(f"prediction type: {ptype} ({why})")
    metric = t.get("metric") or METRICS[ptype][0]
    numeric, categorical, dropped = _features(frame, target, t.get("features") or {})
    features = numeric + categorical
    if not features:
        raise TrainingError(f"no features left to train on (dropped: {', '.join(dropped) or 'none'})")
    X = frame[features]
    for c in numeric:
        if X[c].dtype == object or str(X[c].dtype) == "boolean":
            X = X.assign(**{c: X[c].astype("float64")})

    classes = None
    if ptype == "regression":
        y = frame[target].astype("float64").to_numpy()
    else:
        classes = sorted(frame[target].unique().tolist())
        if ptype == "binary" and len(classes) != 2:
            raise TrainingError(
                f"a binary prediction needs 2 classes; `{target}` has {len(classes)}: "
                f"{_show(classes)}"
            )
        index = {c: i for i, c in enumerate(classes)}
        y = frame[target].map(index).to_numpy().astype(int)

    split = t.get("split") or {}
    seed = int(split.get("seed", 1337))
    folds = split.get("folds")
    ratio = split.get("test_ratio")
    if folds is None and ratio is None:
        ratio = 0.2
    if folds:
        train_rows, test_rows = np.arange(len(X)), None
        cv = int(folds)
        evaluation = f"{cv}-fold cross-validation"
    else:
        from sklearn.model_selection import train_test_split

        stratify = y if classes is not None else None
        train_rows, test_rows = train_test_split(
            np.arange(len(X)), test_size=ratio, random_state=seed, stratify=stratify
        )
        cv = 3
        evaluation = f"{len(test_rows)} test rows"

    points = list(enumerate(_points(t, seed)))
    part = spec.get("part")
    plural = "s" if len(points) != 1 else ""
    what = f"searching {len(points)} point{plural}"
    if part:
        # A distributed search: this part tries every count-th point from its index, on the
        # same split and folds as every other part (the seed fixes them).
        mine = [p for p in points if p[0] % part["count"] == part["index"]]
        what = f"part {part['index'] + 1}/{part['count']} of the search: {len(mine)} of {len(points)} points"
        points = mine
    if not points:
        raise TrainingError("this part of the search has no point to try")
    say(f"{what} on {metric} ({cv}-fold cross-validation on {len(train_rows)} rows)")
    gpus = int(spec.get("gpus") or 0)
    cpus = _cpus()
    preprocess = (numeric, categorical, t.get("features", {}).get("handling", {}))
    results = []
    for point, (name, params) in points:
        scores = []
        for fit_rows, check_rows in _folds(y[train_rows], cv, seed, classes is not None):
            rows_fit, rows_check = train_rows[fit_rows], train_rows[check_rows]
            model = _fit(name, params, ptype, preprocess, X.iloc[rows_fit], y[rows_fit], seed, gpus, cpus)
            scores.append(
                _metrics(ptype, model, X.iloc[rows_check], y[rows_check], classes, only=metric)[metric]
            )
        cv_score = float(np.mean(scores))
        results.append({"point": point, "algorithm": name, "params": params, "cv_score": cv_score})
        say(f"  {name} {_show_params(params)}: {metric} {cv_score:.4f}")
    greater = metric not in LOWER_IS_BETTER
    # The first of equals wins, here and where capstan merges a distributed search's parts.
    best = (max if greater else min)(results, key=lambda r: r["cv_score"])

    name, params = best["algorithm"], best["params"]
    fitted = _fit(name, params, ptype, preprocess, X.iloc[train_rows], y[train_rows], seed, gpus, cpus)
    if test_rows is not None:
        metrics = _metrics(ptype, fitted, X.iloc[test_rows], y[test_rows], classes)
        chosen = metrics[metric]
    else:
        # Every row was used for the search's folds: its mean is the estimate, then refit on all.
        metrics = {}
        for fit_rows, check_rows in _folds(y, cv, seed, classes is not None):
            m = _fit(name, params, ptype, preprocess, X.iloc[fit_rows], y[fit_rows], seed, gpus, cpus)
            for k, v in _metrics(ptype, m, X.iloc[check_rows], y[check_rows], classes).items():
                metrics.setdefault(k, []).append(v)
        metrics = {k: float(np.mean(v)) for k, v in metrics.items()}
        chosen = metrics[metric]

    seconds = round(time.monotonic() - started, 3)
    version = {
        "metrics": {
            "metric": metric,
            "score": chosen,
            "greater_is_better": greater,
            "prediction_type": ptype,
            "evaluation": evaluation,
            "train_rows": int(len(train_rows)),
            "test_rows": int(len(test_rows)) if test_rows is not None else 0,
            "metrics": metrics,
            "search": results,
        },
        "features": {
            "target": target,
            "prediction_type": ptype,
            "classes": _plain(classes),
            "features": [
                {"name": c, "type": _column_type(X[c]), "handling": _handling(c, preprocess)}
                for c in features
            ],
            "dropped": dropped,
        },
    }
    libraries = _libraries(name)
    info = dict(spec.get("train_info") or {})
    info.update(
        {
            "algorithm": name,
            "params": params,
            "point": best["point"],
            "seed": seed,
            "split": {"test_ratio": ratio, "folds": folds},
            "target": target,
            "prediction_type": ptype,
            "rows": int(len(X)),
            "seconds": seconds,
            "python": platform.python_version(),
            "libraries": libraries,
        }
    )
    version["train_info"] = info
    tar = _pack_version(fitted, classes, X, frame[target], version, libraries)
    _upload(spec, tar)
    on = f"on {evaluation}" if test_rows is not None else f"by {evaluation}"
    who = f"the best of part {part['index'] + 1}/{part['count']}" if part else f"trained {spec['model']}"
    say(f"{who}: {name} {_show_params(params)}, {metric} {chosen:.4f} {on} ({seconds:.1f} s)")


def _prediction_type(y, given):
    import pandas as pd

    values = y.dropna()
    distinct = int(values.nunique())
    if given:
        return given, "as the spec says"
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        kind = "binary" if distinct == 2 else "multiclass"
        return kind, f"inferred: a non-numeric target with {distinct} distinct values"
    whole = bool((values == values.round()).all())
    if whole and distinct == 2:
        return "binary", "inferred: a numeric target with 2 distinct values"
    if whole and distinct <= 20:
        return "multiclass", f"inferred: a whole-number target with {distinct} distinct values"
    return "regression", f"inferred: a numeric target with {distinct} distinct values"


def _features(frame, target, spec):
    import pandas as pd

    handling = spec.get("handling") or {}
    include = spec.get("include")
    exclude = set(spec.get("exclude") or [])
    columns = include if include is not None else [c for c in frame.columns if c != target]
    for c in columns:
        if c not in frame.columns:
            raise TrainingError(f"feature `{c}` is not a column of the input")
    numeric, categorical, dropped = [], [], []
    for c in columns:
        h = handling.get(c)
        if c in exclude or h == "drop":
            dropped.append(c)
            continue
        col = frame[c]
        is_number = pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)
        if h in ("rescale", "impute") and not is_number:
            raise TrainingError(f"feature `{c}` is handled by `{h}`, which needs numbers; it holds {col.dtype}")
        if h == "dummy_encode" or (h is None and (col.dtype == object or str(col.dtype) in ("string", "category"))):
            categorical.append(c)
        elif is_number:
            numeric.append(c)
        else:
            # Timestamps, lists…: no handling applies by default.
            dropped.append(c)
            say(f"left out feature `{c}`: its type {col.dtype} has no default handling")
    return numeric, categorical, dropped


def _handling(c, preprocess):
    numeric, categorical, handling = preprocess
    if c in handling:
        return handling[c]
    return "rescale" if c in numeric else "dummy_encode"


def _points(t, seed):
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    budget = (t.get("search") or {}).get("max_points")
    points = []
    for a in t["algorithms"]:
        grid = {k: v if isinstance(v, list) else [v] for k, v in (a.get("grid") or {}).items()}
        every = list(ParameterGrid(grid))
        if budget and len(every) > budget:
            chosen = list(ParameterSampler(grid, n_iter=int(budget), random_state=seed))
        else:
            chosen = every
        points.extend((a["name"], dict(sorted(p.items()))) for p in chosen)
    return points


def _folds(y, k, seed, classify):
    from sklearn.model_selection import KFold, StratifiedKFold

    if classify:
        import numpy as np

        smallest = int(np.bincount(y).min()) if len(y) else 0
        if smallest >= k:
            return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(y, y))
    return list(KFold(k, shuffle=True, random_state=seed).split(y))


def _cpus():
    """The CPUs this activity may use: its cgroup's quota where one is set (a container's
    limit), else the CPUs it may run on."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period) + 0.5)))
    except (OSError, ValueError):
        pass
    return n


def _estimator(name, params, ptype, seed, gpus, cpus):
    classify = ptype != "regression"
    if name == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(**{"max_iter": 1000, **params})
    if name == "linear_regression":
        from sklearn.linear_model import LinearRegression

        return LinearRegression(**params)
    if name == "ridge":
        from sklearn.linear_model import Ridge

        return Ridge(**params)
    if name == "random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestClassifier if classify else RandomForestRegressor
        return cls(**{"random_state": seed, "n_jobs": cpus, **params})
    if name == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
        return cls(**{"random_state": seed, **params})
    if name == "xgboost":
        xgb = _library("xgboost", "xgboost")
        cls = xgb.XGBClassifier if classify else xgb.XGBRegressor
        extra = {"device": "cuda", "tree_method": "hist"} if gpus else {}
        return cls(**{"random_state": seed, "n_jobs": cpus, **extra, **params})
    if name == "lightgbm":
        lgb = _library("lightgbm", "lightgbm")
        cls = lgb.LGBMClassifier if classify else lgb.LGBMRegressor
        extra = {"device": "gpu"} if gpus else {}
        return cls(**{"random_state": seed, "n_jobs": cpus, "verbose": -1, **extra, **params})
    raise TrainingError(f"unknown algorithm `{name}`")


def _library(module, algorithm):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TrainingError(
            f"algorithm {algorithm} needs the `{module}` package: add it to the recipe's code "
            f"environment ({e})"
        ) from e


def _pipeline(name, params, ptype, preprocess, seed, gpus, cpus):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric, categorical, handling = preprocess
    rescaled = [c for c in numeric if handling.get(c, "rescale") == "rescale"]
    imputed = [c for c in numeric if handling.get(c) == "impute"]
    parts = []
    if rescaled:
        parts.append(
            ("rescale", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), rescaled)
        )
    if imputed:
        parts.append(("impute", SimpleImputer(strategy="median"), imputed))
    if categorical:
        # Missing values (None, NaN) are a category of their own; unseen values encode as zeros.
        parts.append(
            ("dummy_encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)
        )
    return Pipeline(
        [
            ("features", ColumnTransformer(parts, sparse_threshold=0)),
            ("model", _estimator(name, params, ptype, seed, gpus, cpus)),
        ]
    )


def _fit(name, params, ptype, preprocess, X, y, seed, gpus, cpus):
    import warnings

    model = _pipeline(name, params, ptype, preprocess, seed, gpus, cpus)
    try:
        with warnings.catch_warnings():
            # Convergence chatter per fold says nothing the metric does not.
            warnings.simplefilter("ignore")
            model.fit(X, y)
    except TrainingError:
        raise
    except Exception as e:
        raise TrainingError(
            f"algorithm {name} with {_show_params(params)} failed: {type(e).__name__}: {e}"
        ) from e
    return model


def _metrics(ptype, model, X, y, classes, only=None):
    """Every metric of the prediction type (or `only` one) of `model` on rows `X`, `y`; classes
    are indices into `classes`."""
    import numpy as np
    from sklearn import metrics as m

    wanted = [only] if only else METRICS[ptype]
    pred = np.asarray(model.predict(X))
    out = {}
    if ptype == "regression":
        for k in wanted:
            if k == "r2":
                out[k] = m.r2_score(y, pred)
            elif k == "rmse":
                out[k] = float(np.sqrt(m.mean_squared_error(y, pred)))
            elif k == "mae":
                out[k] = m.mean_absolute_error(y, pred)
        return {k: float(v) for k, v in out.items()}
    pred = pred.astype(int)
    labels = list(range(len(classes)))
    proba = None
    if any(k in ("roc_auc", "log_loss", "roc_auc_ovr") for k in wanted):
        proba = np.asarray(model.predict_proba(X))
    for k in wanted:
        if k == "accuracy":
            out[k] = m.accuracy_score(y, pred)
        elif k in ("f1", "precision", "recall"):
            f = {"f1": m.f1_score, "precision": m.precision_score, "recall": m.recall_score}[k]
            out[k] = f(y, pred, pos_label=1, zero_division=0)
        elif k == "f1_macro":
            out[k] = m.f1_score(y, pred, average="macro", labels=labels, zero_division=0)
        elif k == "log_loss":
            out[k] = m.log_loss(y, proba, labels=labels)
        elif k == "roc_auc":
            out[k] = m.roc_auc_score(y, proba[:, 1]) if len(set(y.tolist())) == 2 else float("nan")
        elif k == "roc_auc_ovr":
            present = sorted(set(y.tolist()))
            if len(present) == len(labels):
                out[k] = m.roc_auc_score(y, proba, multi_class="ovr", labels=labels)
            else:
                out[k] = float("nan")
    return {k: float(v) for k, v in out.items()}


# ---- a version in MLflow's layout ------------------------------------------------------------


def _column_type(col):
    """A column's type as an MLflow signature names it."""
    kind = str(col.dtype)
    return {
        "int64": "long",
        "int32": "integer",
        "int16": "integer",
        "int8": "integer",
        "float64": "double",
        "float32": "float",
        "bool": "boolean",
        "boolean": "boolean",
    }.get(kind, "string")


def _libraries(algorithm):
    from importlib import metadata

    found = {}
    names = ALWAYS + LIBRARIES.get(algorithm, [])
    for dist in names:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def _yaml(value, indent=0):
    """A small YAML writer (JSON scalars are YAML's): no PyYAML needed in the environment."""
    pad = "  " * indent
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines.append(_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(v)}")
        return "\n".join(lines)
    lines = []
    for v in value:
        if isinstance(v, (dict, list)) and v:
            inner = _yaml(v, indent + 1).lstrip()
            lines.append(f"{pad}- {inner}")
        else:
            lines.append(f"{pad}- {_yaml_scalar(v)}")
    return "\n".join(lines)


def _yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, (dict, list)):
        return "{}" if isinstance(v, dict) else "[]"
    return json.dumps(v)


def _pack_version(fitted, classes, X, y, version, libraries):
    python = platform.python_version()
    requirements = [f"{dist}=={v}" for dist, v in libraries.items()]
    with tempfile.TemporaryDirectory(prefix="capstan-model-") as d:
        code = os.path.join(d, "code")
        os.makedirs(code)
        with open(os.path.join(code, f"{MODULE_NAME}.py"), "w") as f:
            f.write(MODEL_MODULE)
        model = fitted
        if classes is not None:
            sys.path.insert(0, code)
            try:
                sys.modules.pop(MODULE_NAME, None)
                module = __import__(MODULE_NAME)
            finally:
                sys.path.remove(code)
            model = module.EncodedLabels(fitted, _plain(classes))
        with open(os.path.join(d, "model.pkl"), "wb") as f:
            pickle.dump(model, f)
        inputs = [{"type": _column_type(X[c]), "name": c, "required": True} for c in X.columns]
        outputs = [{"type": _column_type(y), "required": True}]
        import sklearn

        mlmodel = {
            "artifact_path": "model",
            "flavors": {
                "python_function": {
                    "code": "code",
                    "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
                    "loader_module": "mlflow.sklearn",
                    "model_path": "model.pkl",
                    "predict_fn": "predict",
                    "python_version": python,
                },
                "sklearn": {
                    "code": "code",
                    "pickled_model": "model.pkl",
                    "serialization_format": "pickle",
                    "sklearn_version": sklearn.__version__,
                },
            },
            "model_uuid": uuid.uuid4().hex,
            "utc_time_created": time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime()),
            "signature": {
                "inputs": json.dumps(inputs),
                "outputs": json.dumps(outputs),
                "params": None,
            },
        }
        files = {
            "MLmodel": _yaml(mlmodel) + "\n",
            "requirements.txt": "\n".join(requirements) + "\n",
            "python_env.yaml": _yaml(
                {"python": python, "build_dependencies": ["pip"], "dependencies": ["-r requirements.txt"]}
            )
            + "\n",
            "conda.yaml": _yaml(
                {
                    "channels": ["conda-forge"],
                    "dependencies": [f"python={python}", "pip", {"pip": requirements}],
                    "name": "mlflow-env",
                }
            )
            + "\n",
            "metrics.json": json.dumps(version["metrics"], indent=2) + "\n",
            "features.json": json.dumps(version["features"], indent=2) + "\n",
            "train_info.json": json.dumps(version["train_info"], indent=2, default=str) + "\n",
        }
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name in sorted(os.listdir(d)):
                tar.add(os.path.join(d, name), arcname=name)
        return buf.getvalue()


def _plain(values):
    """numpy scalars as JSON's."""
    if values is None:
        return None
    return [v.item() if hasattr(v, "item") else v for v in values]


# ---- scoring and evaluation ------------------------------------------------------------------


def _load_version(spec, into):
    """Downloads the version the activity applies into `into`; returns (model, features)."""
    data = _download(spec, spec["model_version"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            name = os.path.normpath(member.name)
            if name.startswith(("/", "..")) or not (member.isfile() or member.isdir()):
                raise CapstanError(f"saved model version holds an unsafe entry `{member.name}`")
        tar.extractall(into)
    code = os.path.join(into, "code")
    if os.path.isdir(code):
        sys.path.insert(0, code)
        sys.modules.pop(MODULE_NAME, None)
    with open(os.path.join(into, "model.pkl"), "rb") as f:
        model = pickle.load(f)
    with open(os.path.join(into, "features.json")) as f:
        features = json.load(f)
    return model, features


def _applied(spec, frame, features, need_target):
    names = [f["name"] for f in features["features"]]
    wanted = names + ([features["target"]] if need_target else [])
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        raise CapstanError(
            f"`{spec['input']}` lacks column(s) {', '.join(absent)} that saved model "
            f"`{spec['model']}` version {spec['model_version']} "
            + ("is evaluated on" if need_target else "was trained on")
        )
    return frame[names]


def score(spec):
    import numpy as np

    frame = _read_input(spec).to_pandas()
    with tempfile.TemporaryDirectory(prefix="capstan-model-") as d:
        model, features = _load_version(spec, d)
        X = _applied(spec, frame, features, False)
        out = frame.assign(prediction=np.asarray(model.predict(X)))
        classes = features.get("classes")
        if spec.get("probabilities"):
            if not classes:
                raise CapstanError(
                    f"saved model `{spec['model']}` predicts numbers: it has no class probabilities"
                )
            proba = np.asarray(model.predict_proba(X))
            out = out.assign(**{f"proba_{c}": proba[:, i] for i, c in enumerate(classes)})
    rows = _write_output(spec, out)
    say(f"scored {rows} rows with {spec['model']} v{spec['model_version']}")


def evaluate(spec):
    import pandas as pd

    frame = _read_input(spec).to_pandas()
    with tempfile.TemporaryDirectory(prefix="capstan-model-") as d:
        model, features = _load_version(spec, d)
        target = features["target"]
        X = _applied(spec, frame, features, True)
        labelled = frame[target].notna().to_numpy()
        if not labelled.all():
            say(f"left out {int((~labelled).sum())} rows whose target `{target}` is missing")
        X, truth = X[labelled], frame[target][labelled]
        ptype = features["prediction_type"]
        classes = features.get("classes")
        if ptype == "regression":
            y = truth.astype("float64").to_numpy()
            metrics = _metrics(ptype, model, X, y, None)
        else:
            index = {c: i for i, c in enumerate(classes)}
            unseen = sorted({v for v in truth.tolist() if v not in index}, key=str)
            if unseen:
                raise CapstanError(
                    f"`{spec['input']}` has values of `{target}` that saved model "
                    f"`{spec['model']}` never saw in training: {_show(unseen)}"
                )
            y = truth.map(index).to_numpy().astype(int)
            # The metrics work on class indices, as in training: unwrap the encoded classifier.
            metrics = _metrics(ptype, getattr(model, "model", model), X, y, classes)
    rows = int(len(y))
    row = {
        "model": spec["model"],
        "model_version": spec["model_version"],
        "input": spec["input"],
        "rows": rows,
        "metrics": metrics,
    }
    _post_evaluation(spec, row)
    table = {"model": [spec["model"]], "model_version": [spec["model_version"]], "rows": [rows]}
    table.update({k: [v] for k, v in metrics.items()})
    table["evaluated_at"] = [pd.Timestamp.now(tz="UTC")]
    _write_output(spec, pd.DataFrame(table))
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    say(f"evaluated {spec['model']} v{spec['model_version']} on {rows} rows of {spec['input']}: {shown}")


def _show(values, most=10):
    shown = ", ".join(repr(v) for v in values[:most])
    return shown + (f" … ({len(values)} in all)" if len(values) > most else "")


def _show_params(params):
    return "{" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + "}" if params else "(defaults)"
