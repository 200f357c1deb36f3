"""The team's own data loader: `data.format: custom`.

`data.loader: {class_path, init_args, code}` names a function (or a class) in the
team's own code folders (`data.loader.code`), found and imported the way the team's
model is (lepton_core.usermodel): a class path from anywhere else (`os.system`,
`subprocess.Popen`, an installed package) is refused before anything is imported.
`init_args` are plain JSON values passed as keywords; when `data.path` is set, its
resolved path is passed too, as `path`.

A function is called; a class is instantiated and its `load()` called (or the
instance itself, when it is callable). What it returns:

    (x, y)  or  (x, y, info)  or  {"x": ..., "y": ..., **info}
        info: optional "classes" (y are then int indices into them), "feature_names",
        "test_rows" ((N,) bool: the loader's own test split)
    a pandas DataFrame holding `data.label_column` (the other columns are features)

x: a numeric (N, F) table, or images (N, H, W) / (N, C, H, W) (integers 0..255 are
taken as uint8 pixels); y: class values (ints or strings) for classification, numbers
for `data.task: regression`. Everything then goes through Lepton's own validation,
quarantine, de-duplication, split and packing, as for any other format. A loader
that raises, or returns something else, is one line naming it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

from lepton_core.data.fingerprint import loader_bundle, resolve_path
from lepton_core.data.formats import RawDataset, labels_of
from lepton_core.errors import DataError
from lepton_core.params import DataParams, LoaderSpec

INFO_KEYS = ("classes", "feature_names", "test_rows")
RETURNS = "(x, y), (x, y, info), a dict {x, y, ...} or a pandas DataFrame"


def load_custom(params: DataParams, base_dir: Path | None) -> RawDataset:
    """Run the team's loader and read what it returns into a RawDataset; relative
    paths (`data.loader.code`, `data.path`) are taken from `base_dir` (the project)."""
    spec = _spec(params)
    factory = _resolve(spec, base_dir)
    kwargs: dict[str, Any] = dict(spec.init_args)
    if params.path is not None:
        if "path" in kwargs:
            raise DataError("data.path and data.loader.init_args.path are both set; set one")
        path = resolve_path(params.path, base_dir)
        if path is None or not path.exists():
            raise DataError(f"{params.path}: no such file or folder")
        kwargs["path"] = str(path)
    return to_raw(_call(factory, kwargs, spec.class_path), params, spec.class_path)


def _spec(params: DataParams) -> LoaderSpec:
    if params.loader is None:  # DataParams asks for it with format custom
        raise DataError("data.format=custom needs data.loader {class_path, init_args, code}")
    return params.loader


def _resolve(spec: LoaderSpec, base_dir: Path | None) -> Any:
    from lepton_core.usermodel import LOADER_SOURCE, ModelError, resolve

    bundle = loader_bundle(spec, base_dir)
    try:
        return resolve(spec.class_path, bundle, [], LOADER_SOURCE)
    except ModelError as e:  # the same refusal, as the data stage's kind of error
        raise DataError(str(e)) from None


def _call(factory: Any, kwargs: dict[str, Any], name: str) -> Any:
    """A function's result; a class's instance's `load()` (or the instance called)."""
    try:
        if not inspect.isclass(factory):
            return factory(**kwargs)
        obj: Any = factory(**kwargs)
        if callable(getattr(obj, "load", None)):
            return obj.load()
        if callable(obj):
            return obj()
    except Exception as e:
        raise DataError(f"data.loader {name} raised {_first_line(e)}") from None
    raise DataError(f"data.loader {name}: a class needs a load() method (or __call__) that returns the data")


def to_raw(out: Any, params: DataParams, name: str) -> RawDataset:
    """What a loader returned -> RawDataset (one-line DataError naming the loader)."""
    import pandas as pd

    if isinstance(out, pd.DataFrame):
        return _from_frame(out, params, name)
    if isinstance(out, dict):
        unknown = sorted(set(map(str, out)) - {"x", "y", *INFO_KEYS})
        if unknown or "x" not in out or "y" not in out:
            what = f"unknown keys {', '.join(unknown)}" if unknown else "no 'x' and 'y'"
            raise DataError(f"data.loader {name} returned a dict with {what}; expected x, y and optionally {INFO_KEYS}")
        return _from_arrays(out["x"], out["y"], {k: out[k] for k in INFO_KEYS if k in out}, params, name)
    if isinstance(out, (tuple, list)) and len(out) in (2, 3):
        info = out[2] if len(out) == 3 else {}
        if not isinstance(info, dict) or set(map(str, info)) - set(INFO_KEYS):
            raise DataError(f"data.loader {name}: the third value must be a dict of {', '.join(INFO_KEYS)}")
        return _from_arrays(out[0], out[1], info, params, name)
    raise DataError(f"data.loader {name} returned {_what(out)}; expected {RETURNS}")


def _from_frame(df: Any, params: DataParams, name: str) -> RawDataset:
    """A table with the label column: the other columns are the features."""
    label = params.label_column
    if len(df.columns) != len(set(map(str, df.columns))):
        raise DataError(f"data.loader {name}: the DataFrame has duplicate column names")
    if label not in df.columns:
        raise DataError(f"data.loader {name}: the DataFrame has no label column {label!r} (set data.label_column)")
    features = df.drop(columns=[label])
    if features.shape[1] == 0:
        raise DataError(f"data.loader {name}: the DataFrame has no feature columns besides {label!r}")
    return _from_arrays(features, df[label].to_numpy(), {}, params, name)


def _from_arrays(x_in: Any, y_in: Any, info: dict[str, Any], params: DataParams, name: str) -> RawDataset:
    x, names = _samples(x_in, name)
    y_raw = _labels(y_in, name)
    n = len(x)
    if len(y_raw) != n:
        raise DataError(f"data.loader {name} returned {n} samples but {len(y_raw)} labels")
    if n == 0:
        raise DataError(f"data.loader {name} returned no samples")
    classes = info.get("classes")
    y, class_names, quarantined, keep = _targets(y_raw, classes, params.task, name)
    test_rows = _test_rows(info.get("test_rows"), n, name)
    kind = "tabular" if x.ndim == 2 else "image"
    if kind == "tabular":
        names = _feature_names(info.get("feature_names"), names, x.shape[1], name)
    return RawDataset(
        x=x[keep],
        y=y[keep],
        classes=class_names,
        kind=kind,
        feature_names=names if kind == "tabular" else [],
        quarantined=quarantined,
        test_rows=None if test_rows is None else test_rows[keep],
        task=params.task,
    )


def _samples(x_in: Any, name: str) -> tuple[np.ndarray, list[str]]:
    """x as a float32 table (and its column names, for a DataFrame), or images
    (N, C, H, W): uint8 when integer pixels 0..255, float32 otherwise."""
    import pandas as pd

    names: list[str] = []
    if isinstance(x_in, pd.DataFrame):
        bad = [str(c) for c in x_in.columns if not pd.api.types.is_numeric_dtype(x_in[c])]
        if bad:
            raise DataError(f"data.loader {name}: non-numeric feature columns: {', '.join(bad[:5])}")
        names = [str(c) for c in x_in.columns]
    try:
        x = np.asarray(x_in)
    except Exception as e:
        raise DataError(f"data.loader {name}: x is not an array ({_first_line(e)})") from None
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"data.loader {name}: x of dtype {x.dtype} is not numeric")
    if x.ndim == 2:
        return x.astype(np.float32, copy=False), names
    if x.ndim not in (3, 4):
        raise DataError(
            f"data.loader {name}: x of shape {x.shape}; expected a table (N, F) or images (N, H, W) or (N, C, H, W)"
        )
    if x.ndim == 3:
        x = x[:, None]  # one channel
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"data.loader {name}: integer images must hold pixels 0..255 (or return floats)")
        return x.astype(np.uint8, copy=False), []
    return x.astype(np.float32, copy=False), []


def _labels(y_in: Any, name: str) -> np.ndarray:
    try:
        y = np.asarray(y_in)
    except Exception as e:
        raise DataError(f"data.loader {name}: y is not an array ({_first_line(e)})") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"data.loader {name}: y of shape {y.shape}; expected one label per sample (N,)")
    return y


def _targets(
    y: np.ndarray, classes: Any, task: str, name: str
) -> tuple[np.ndarray, list[str], list[dict[str, str]], np.ndarray]:
    """(y, class names, quarantined, keep): given classes take y as indices into them;
    else the labels' own values are the classes (or the targets, for regression)."""
    if classes is None:
        return labels_of(y, task, f"data.loader {name}: y")
    if task == "regression":
        raise DataError(f"data.loader {name} returned classes, but data.task=regression predicts a number")
    if not isinstance(classes, (list, tuple)) or not classes:
        raise DataError(f"data.loader {name}: classes must be a non-empty list of class names")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"data.loader {name}: with classes given, y must be int indices into them (got {y.dtype})")
    # an index outside the classes is quarantined by the prepare's validation
    return y.astype(np.int64), [str(c) for c in classes], [], np.ones(len(y), dtype=bool)


def _test_rows(rows: Any, n: int, name: str) -> np.ndarray | None:
    if rows is None:
        return None
    t = np.asarray(rows)
    if t.shape != (n,) or t.dtype != np.bool_:
        raise DataError(f"data.loader {name}: test_rows must be an (N,) bool array, one per sample")
    return t


def _feature_names(given: Any, from_frame: list[str], n_features: int, name: str) -> list[str]:
    names = [str(f) for f in given] if given is not None else from_frame or [str(i) for i in range(n_features)]
    if len(names) != n_features or len(set(names)) != len(names):
        raise DataError(f"data.loader {name}: feature_names must be {n_features} distinct names, one per column")
    return names


def _what(obj: Any) -> str:
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} values"
    return "None" if obj is None else f"a {type(obj).__name__}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
