"""Typed params: defaults, YAML file, `section.key=value` overrides, one-line errors."""

from __future__ import annotations

import pydantic
import pytest

from lepton_core.errors import LeptonError, ParamsError
from lepton_core.params import (
    SECTIONS,
    Params,
    apply_overrides,
    flatten_params,
    load_params,
)


def test_defaults():
    p = load_params()
    assert p == Params()
    assert p.data.format == "digits" and p.data.path is None and p.data.label_column == "label"
    assert p.data.val_fraction == 0.15 and p.data.test_fraction == 0.2 and p.data.seed == 0
    assert p.train.model == "auto" and p.train.epochs == 30 and p.train.batch_size == 64
    assert p.train.lr == 3e-3 and p.train.schedule == "cosine" and p.train.patience == 6
    assert p.train.max_train_samples is None and p.train.device == "auto"
    assert p.promote.min_accuracy == 0.9 and p.promote.tolerance == 0.005 and p.promote.alpha == 0.05
    assert p.registry.model_name == "lepton-digits"
    assert p.deploy.retrain_cron == "0 3 * * 1" and p.deploy.timezone == "UTC"
    assert p.evaluate.report is True and p.evaluate.explain_per_class == 2
    assert p.serve.max_explain_instances == 16 and p.serve.explain_timeout_s == 10.0
    assert SECTIONS == (
        "data",
        "train",
        "evaluate",
        "promote",
        "registry",
        "deploy",
        "monitor",
        "serve",
        "optimize",
        "cost",
        "sweep",
    )
    assert p.cost.currency == "USD" and p.cost.cpu_core_hour == 0.04 and p.cost.gpu_hour == 2.5
    assert p.monitor.keep_snapshots == 500


def test_repository_params_yaml_matches_the_defaults():
    """params.yaml spells out every default, so the file and the models agree."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert load_params(root / "params.yaml") == Params()


def test_missing_file_means_defaults(tmp_path):
    assert load_params(tmp_path / "nope.yaml") == Params()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_params(empty) == Params()


def test_yaml_file_and_overrides(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(
        "data:\n  format: csv\n  path: data/raw/t.csv\n  label_column: species\n"
        "train:\n  epochs: 5\n  lr: 0.01\n"
        "promote:\n  min_accuracy: 0.5\n"
        "registry: {}\n"
    )
    p = load_params(f)
    assert p.data.format == "csv" and p.data.path == "data/raw/t.csv" and p.data.label_column == "species"
    assert p.train.epochs == 5 and p.train.lr == 0.01 and p.train.batch_size == 64
    assert p.promote.min_accuracy == 0.5
    p2 = load_params(f, ["train.epochs=3", "train.model=mlp"])
    assert p2.train.epochs == 3 and p2.train.model == "mlp" and p2.train.lr == 0.01
    assert p2.data.label_column == "species"  # untouched by the overrides


def test_override_types_parsed():
    p = load_params(
        None,
        [
            "train.epochs=3",
            "train.lr=0.05",
            "train.weight_decay=1e-4",
            "train.dropout=0",
            "train.max_train_samples=100",
            "train.schedule=onecycle",
            "data.seed=-7",
            "promote.alpha=0.1",
            "registry.model_name=my-model",
        ],
    )
    assert p.train.epochs == 3 and isinstance(p.train.epochs, int)
    assert p.train.lr == 0.05 and isinstance(p.train.lr, float)
    assert p.train.weight_decay == pytest.approx(1e-4)
    assert p.train.dropout == 0.0 and p.train.max_train_samples == 100
    assert p.train.schedule == "onecycle" and p.data.seed == -7
    assert p.promote.alpha == 0.1 and p.registry.model_name == "my-model"
    # null and the empty value both mean None; later overrides win
    assert (
        load_params(None, ["train.max_train_samples=100", "train.max_train_samples=null"]).train.max_train_samples
        is None
    )
    assert load_params(None, ["data.path="]).data.path is None
    assert load_params(None, [" train.epochs = 4"]).train.epochs == 4


def test_apply_overrides_does_not_mutate_input():
    raw = {"train": {"epochs": 5}, "data": None}
    out = apply_overrides(raw, ["train.epochs=7", "promote.tolerance=0.01"])
    assert raw == {"train": {"epochs": 5}, "data": None}
    assert out == {"train": {"epochs": 7}, "data": {}, "promote": {"tolerance": 0.01}}


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochs=abc", "train.epochs"),
        ("train.epochs=0", "train.epochs"),
        ("train.lr=-1", "train.lr"),
        ("train.model=resnet", "train.model"),
        ("data.format=tiff", "data.format"),
        ("data.val_fraction=0.7", "data.val_fraction"),
        ("train.epochz=3", "train.epochz"),
        ("promote.min_accuracy=1.5", "promote.min_accuracy"),
    ],
)
def test_bad_values_raise_params_error(override, fragment):
    with pytest.raises(ParamsError) as err:
        load_params(None, [override])
    msg = assert_one_line(err)
    assert msg.startswith("invalid params: ") and fragment in msg


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("nosection.epochs=3", "unknown section 'nosection'"),
        ("train.epochs", "expected section.key=value"),
        ("epochs=3", "expected section.key=value"),
        ("train.=3", "expected section.key=value"),
        ("=3", "expected section.key=value"),
    ],
)
def test_malformed_overrides(override, fragment):
    with pytest.raises(ParamsError) as err:
        apply_overrides({}, [override])
    assert fragment in assert_one_line(err)
    with pytest.raises(ParamsError):
        load_params(None, [override])


def test_several_errors_in_one_line():
    with pytest.raises(ParamsError) as err:
        load_params(None, ["train.epochs=abc", "train.batch_size=0", "promote.alpha=2"])
    msg = assert_one_line(err)
    assert "train.epochs" in msg and "train.batch_size" in msg and "promote.alpha" in msg


def test_format_without_path_raises():
    for fmt in ("mnist", "cifar10", "imagefolder", "csv"):
        with pytest.raises(ParamsError) as err:
            load_params(None, [f"data.format={fmt}"])
        msg = assert_one_line(err)
        assert "data.path is required" in msg and fmt in msg
    ok = load_params(None, ["data.format=mnist", "data.path=/data/mnist"])
    assert ok.data.format == "mnist" and ok.data.path == "/data/mnist"


def test_unknown_key_in_yaml_and_bad_yaml(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  epochs: 3\n  colour: blue\n")
    with pytest.raises(ParamsError) as err:
        load_params(f)
    assert "train.colour" in assert_one_line(err)
    f.write_text("bogus:\n  a: 1\n")
    with pytest.raises(ParamsError) as err:
        load_params(f)
    assert "bogus" in assert_one_line(err)
    f.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError) as err:
        load_params(f)
    assert "not valid YAML" in assert_one_line(err)
    f.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(f)


def test_params_error_is_caught_as_a_user_error():
    with pytest.raises(LeptonError, match="unknown section"):  # what the CLI shows in one line
        load_params(None, ["nosuch.key=1"])


def test_params_are_frozen():
    p = load_params()
    with pytest.raises(pydantic.ValidationError):
        p.train.epochs = 3  # type: ignore[misc]


def test_flatten_params():
    flat = flatten_params(load_params(None, ["train.epochs=3"]))
    assert flat["train.epochs"] == "3"
    assert flat["data.path"] == ""
    assert flat["promote.tolerance"] == "0.005"
    assert flat["registry.model_name"] == "lepton-digits"
    assert all(isinstance(v, str) for v in flat.values())
    # every section but sweep (how a search runs is its parent run's record, not a model's param)
    assert len(flat) == sum(len(type(getattr(Params(), s)).model_fields) for s in SECTIONS if s != "sweep")
    assert not any(k.startswith("sweep.") for k in flat)
