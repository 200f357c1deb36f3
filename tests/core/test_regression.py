"""Regression as a task of its own: numeric labels, the quantile-stratified split,
standardised targets, RMSE/MAE/R², early stopping on validation RMSE, answers in the
target's units, and the gate's one-sided paired t-test on squared errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from lepton_core.checkpoint import load_checkpoint
from lepton_core.data.formats import load_raw
from lepton_core.data.prepare import prepare_dataset, read_prepared, target_strata, write_prepared
from lepton_core.errors import DataError, InputError
from lepton_core.evaluate import evaluate_predictor, regression_metrics, squared_errors
from lepton_core.gate import decide_regression, paired_t_worse, t_sf
from lepton_core.models import ModelConfig
from lepton_core.params import PromoteParams, TrainParams
from lepton_core.predictor import Predictor, Preprocessing
from lepton_core.train import save_trained_model, train_model, train_on_prepared


def linear_table(tmp_path, n: int = 600, seed: int = 0, offset: float = 1000.0, scale: float = 50.0):
    """A CSV whose target is a noisy linear function of 5 features, far from 0 and 1
    (so answers in standardised units could not pass for the target's own)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    y = offset + scale * (x @ np.array([1.0, -2.0, 0.5, 0.0, 1.5])) + rng.normal(scale=scale * 0.1, size=n)
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)])
    df["price"] = y
    path = tmp_path / "table.csv"
    df.to_csv(path, index=False)
    return path, df


def test_a_numeric_label_loads_as_float_targets_and_bad_rows_are_quarantined(tmp_path):
    path, df = linear_table(tmp_path, n=50)
    df.loc[3, "price"] = np.nan
    df.loc[7, "price"] = "n/a"
    df.to_csv(path, index=False)
    raw = load_raw("csv", path, "price", task="regression")
    assert raw.task == "regression" and raw.classes == []
    assert raw.y.dtype == np.float64 and len(raw.y) == 48
    assert {q["item"] for q in raw.quarantined} == {"row 3", "row 7"}


def test_a_text_label_is_no_regression_target(tmp_path):
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "kind": ["x", "y", "z"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="not numeric; data.task=regression needs a number"):
        load_raw("csv", tmp_path / "t.csv", "kind", task="regression")


def test_a_float_label_under_classification_is_refused_with_the_fix(tmp_path):
    path, _ = linear_table(tmp_path, n=80)
    with pytest.raises(DataError, match=r"a number to predict, not classes; set data.task=regression"):
        load_raw("csv", path, "price")


def test_whole_number_float_labels_stay_classes(tmp_path):
    df = pd.DataFrame({"a": np.arange(40.0), "label": np.arange(40) % 3 * 1.0})
    df.to_csv(tmp_path / "t.csv", index=False)
    raw = load_raw("csv", tmp_path / "t.csv", "label")
    assert raw.classes == ["0.0", "1.0", "2.0"] and raw.y.dtype == np.int64


def test_regression_needs_a_table_or_a_loader(tmp_path):
    with pytest.raises(DataError, match="needs a table"):
        load_raw("digits", None, task="regression")


def test_the_split_is_stratified_on_target_quantiles(tmp_path):
    path, _ = linear_table(tmp_path, n=1000)
    prep = prepare_dataset(
        load_raw("csv", path, "price", task="regression"), val_fraction=0.15, test_fraction=0.2, seed=0
    )
    y_all = np.concatenate(list(prep.y.values()))
    deciles = np.quantile(y_all, np.linspace(0, 1, 11))
    for split in ("train", "val", "test"):
        counts = np.histogram(prep.y[split], deciles)[0]
        share = counts / counts.sum()
        # every decile of the target holds about a tenth of each split
        assert np.all(np.abs(share - 0.1) < 0.03), (split, share)
    assert prep.meta["task"] == "regression" and prep.meta["n_outputs"] == 1 and prep.meta["classes"] == []
    assert prep.meta["target"]["mean"] == pytest.approx(prep.y["train"].mean())
    assert prep.meta["target"]["std"] == pytest.approx(prep.y["train"].std())
    assert "class_counts" not in prep.report and prep.report["target_summary"]["test"]["n"] == len(prep.y["test"])


def test_target_strata_bins_by_quantile():
    y = np.arange(100.0)
    s = target_strata(y, bins=4)
    assert np.bincount(s).tolist() == [25, 25, 25, 25]


def test_prepared_targets_survive_the_round_trip(tmp_path):
    path, _ = linear_table(tmp_path, n=200)
    prep = prepare_dataset(
        load_raw("csv", path, "price", task="regression"), val_fraction=0.15, test_fraction=0.2, seed=0
    )
    back = read_prepared(write_prepared(prep, tmp_path / "prepared"))
    for s in ("train", "val", "test"):
        assert back.y[s].dtype == np.float64 and np.array_equal(back.y[s], prep.y[s])


def test_identical_targets_leave_nothing_to_learn(tmp_path):
    pd.DataFrame({"a": np.arange(30.0), "y": 5.0}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="same value"):
        prepare_dataset(
            load_raw("csv", tmp_path / "t.csv", "y", task="regression"), val_fraction=0.15, test_fraction=0.2, seed=0
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reg")
    path, _ = linear_table(tmp, n=600)
    prep = prepare_dataset(
        load_raw("csv", path, "price", task="regression"), val_fraction=0.15, test_fraction=0.2, seed=0
    )
    pre = Preprocessing.from_meta(prep.meta)
    params = TrainParams(epochs=40, patience=8, width=32, lr=3e-3, dropout=0.0)
    result = train_on_prepared(prep, params, pre, progress=False)
    return tmp, prep, pre, params, result


def test_regression_trains_on_standardised_targets_and_answers_in_their_units(trained):
    tmp, prep, pre, params, result = trained
    assert pre.regression and pre.target_mean > 900  # the target lives near 1000, not 0
    assert result.task == "regression" and result.best_val_rmse is not None
    assert all({"train_rmse", "val_rmse", "val_loss"} <= set(h) and "val_accuracy" not in h for h in result.history)
    # the kept epoch is the one with the lowest validation RMSE
    best = min(result.history, key=lambda h: h["val_rmse"])
    assert result.best_epoch == int(best["epoch"]) and result.best_val_rmse == pytest.approx(best["val_rmse"])
    predictor = Predictor(result.model, result.model_config, pre)
    m = evaluate_predictor(predictor, prep.x["test"], prep.y["test"])
    assert m["task"] == "regression" and m["r2"] > 0.9, m
    values = predictor.predict(prep.x["test"]).values
    assert values is not None and abs(values.mean() - prep.y["test"].mean()) < 0.2 * prep.y["test"].std()


def test_a_regression_checkpoint_rebuilds_the_same_answers(trained):
    tmp, prep, pre, params, result = trained
    path = save_trained_model(result, params, pre, prep.meta, tmp / "model.pt")
    assert load_checkpoint(path)["best_val_rmse"] == pytest.approx(result.best_val_rmse)
    again = Predictor.from_checkpoint(path)
    first = Predictor(result.model, result.model_config, pre)
    np.testing.assert_allclose(again.values(prep.x["test"]), first.values(prep.x["test"]), rtol=1e-6)


def test_early_stopping_watches_validation_rmse():
    x = torch.randn(200, 4)
    y = torch.randn(200)  # noise: validation RMSE stops improving at once
    cfg = ModelConfig(kind="mlp", input_shape=(4,), n_classes=1, width=8)
    res = train_model(
        cfg, TrainParams(epochs=50, patience=3, lr=0.05), x, y, x[:50], y[:50] + 3.0, progress=False, task="regression"
    )
    assert res.stopped_early and res.epochs_run < 50 and res.epochs_run == res.best_epoch + 3


def test_a_regression_predictor_has_one_output():
    pre = Preprocessing(kind="tabular", input_shape=(3,), dtype="float32", scale=1.0, classes=(), task="regression")
    cfg = ModelConfig(kind="mlp", input_shape=(3,), n_classes=2)
    with pytest.raises(InputError, match="one output"):
        Predictor(torch.nn.Linear(3, 2), cfg, pre)


def test_regression_metrics_match_scikit_learn():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(1)
    y, p = rng.normal(size=300) * 10 + 4, rng.normal(size=300) * 10 + 4
    m = regression_metrics(y, p)
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)))
    assert m["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert m["r2"] == pytest.approx(r2_score(y, p))


@pytest.mark.parametrize("t, dof", [(0.3, 2), (1.96, 30), (-2.5, 12), (6.0, 400), (0.0, 5)])
def test_the_t_tail_matches_scipy(t, dof):
    assert t_sf(t, dof) == pytest.approx(stats.t.sf(t, dof), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_the_paired_test_is_scipys_one_sided_ttest_rel(seed):
    rng = np.random.default_rng(seed)
    champ = rng.exponential(size=120)
    chal = champ + rng.normal(loc=0.05 * seed, scale=0.5, size=120)
    mean, t, p = paired_t_worse(champ, chal)
    ref = stats.ttest_rel(chal, champ, alternative="greater")
    assert mean == pytest.approx((chal - champ).mean())
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, rel=1e-8)


def errors(n=200, seed=0, scale=1.0):
    return np.random.default_rng(seed).exponential(size=n) * scale


def test_the_floors_come_first():
    y = np.random.default_rng(0).normal(size=200) * 2
    e = errors()
    d = decide_regression(e, None, y, PromoteParams(max_rmse=0.5))
    assert not d.promote and "above ceiling 0.5" in d.reason
    d = decide_regression(e, None, y, PromoteParams(min_r2=0.95))
    assert not d.promote and "below floor 0.95" in d.reason
    d = decide_regression(e, None, y, PromoteParams())
    assert d.promote and d.champion_rmse is None and d.challenger_rmse == pytest.approx(np.sqrt(e.mean()))


def test_a_challenger_as_good_as_the_champion_is_promoted():
    y = np.zeros(200)
    champ = errors(seed=0)
    chal = champ * np.random.default_rng(1).uniform(0.9, 1.1, size=200)
    d = decide_regression(chal, champ, y, PromoteParams(rmse_tolerance=0.1))
    assert d.promote and d.p_value is not None and d.p_value > 0.05 and "paired t-test" in d.reason


def test_a_much_worse_rmse_is_refused_even_when_the_typical_error_is_smaller():
    # the challenger wins on 90% of rows but makes a few large errors: a test of the
    # median (Wilcoxon, sign) would pass it; its RMSE, and the mean of d, do not
    champ = np.full(200, 1.0)
    chal = np.full(200, 0.8)
    chal[:20] = 30.0
    assert np.median(chal - champ) < 0
    d = decide_regression(chal, champ, np.zeros(200), PromoteParams(rmse_tolerance=10.0))
    assert not d.promote and "significantly worse" in d.reason and d.p_value < 0.05
    assert d.challenger_rmse > 1.5 * d.champion_rmse


def test_a_small_significant_loss_within_the_tolerance_is_still_refused():
    champ = errors(seed=3)
    chal = champ * 1.01 + 0.001  # consistently worse, by little
    d = decide_regression(chal, champ, np.zeros(200), PromoteParams(rmse_tolerance=0.05))
    assert not d.promote and d.p_value < 1e-6 and d.t_statistic > 0


def test_beyond_the_relative_tolerance_is_refused():
    champ = errors(seed=4)
    d = decide_regression(champ * 1.21, champ, np.zeros(200), PromoteParams(rmse_tolerance=0.05))
    assert not d.promote and "tolerance 0.05" in d.reason
    tags = d.as_tags()
    assert tags["lepton.gate.p_value"] and tags["lepton.gate.champion_rmse"]


def test_squared_errors_are_in_the_targets_units(trained):
    tmp, prep, pre, params, result = trained
    predictor = Predictor(result.model, result.model_config, pre)
    e = squared_errors(predictor, prep.x["test"], prep.y["test"])
    m = evaluate_predictor(predictor, prep.x["test"], prep.y["test"])
    assert np.sqrt(e.mean()) == pytest.approx(m["rmse"])


def test_a_tiny_table_is_too_few_rows_not_too_few_per_class(tmp_path):
    path, _ = linear_table(tmp_path, n=5)
    with pytest.raises(DataError, match=r"^too few samples to split into train/val/test$"):
        prepare_dataset(load_raw("csv", path, "price", task="regression"), val_fraction=0.15, test_fraction=0.2, seed=0)


def test_without_a_floor_the_first_version_says_so():
    d = decide_regression(errors(), None, np.zeros(200), PromoteParams())
    assert d.promote and d.reason == "no champion to beat (no RMSE or R² floor set)"
