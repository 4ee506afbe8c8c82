"""eval.bootstrap: a real difference gives an interval excluding 0, identical systems give exactly 0, and the
paired design is tighter than the spread of either system alone."""

from __future__ import annotations

import numpy as np
import pytest

from eval.bootstrap import paired_bootstrap
from eval.metrics import roc_auc


def test_known_positive_difference_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(500)  # per-user recall of B
    a = np.clip(base + 0.05 + 0.02 * rng.standard_normal(500), 0, 1)
    out = paired_bootstrap(np.mean, a, base, n=1000, seed=0)
    assert out["diff"] == pytest.approx(float(a.mean() - base.mean()), abs=1e-12)
    assert 0 < out["lo"] < out["diff"] < out["hi"]
    assert out["p_value"] < 0.01 and out["n_boot"] == 1000 and out["unit"] == "row" and out["n_units"] == 500
    # paired: the per-user noise shared by both cancels, so the interval is far narrower than either mean's
    assert out["hi"] - out["lo"] < 0.01


def test_identical_systems_give_zero() -> None:
    x = np.random.default_rng(1).random(300)
    out = paired_bootstrap(np.mean, x, x.copy(), n=200, seed=0)
    assert out["diff"] == 0.0 and out["lo"] == 0.0 and out["hi"] == 0.0 and out["p_value"] == 1.0


def test_no_difference_interval_contains_zero_and_seed_reproduces() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.random(400), rng.random(400)  # same distribution
    out = paired_bootstrap(np.mean, a, b, n=500, seed=3)
    assert out["lo"] < 0 < out["hi"] and out["p_value"] > 0.05
    assert paired_bootstrap(np.mean, a, b, n=500, seed=3) == out


def test_auc_difference_over_impressions_and_over_users() -> None:
    rng = np.random.default_rng(4)
    n = 2000
    users = rng.integers(0, 100, n)
    y = (rng.random(n) < 0.3).astype(int)
    good = y + 0.8 * rng.standard_normal(n)  # informative
    bad = y + 3.0 * rng.standard_normal(n)  # barely informative
    rows = paired_bootstrap(roc_auc, good, bad, labels=y, n=200, seed=0)
    assert rows["diff"] == pytest.approx(roc_auc(good, y) - roc_auc(bad, y), abs=1e-12)
    assert rows["lo"] > 0
    grouped = paired_bootstrap(roc_auc, good, bad, labels=y, groups=users, n=200, seed=0)
    assert grouped["unit"] == "group" and grouped["n_units"] == len(np.unique(users))
    assert grouped["diff"] == rows["diff"] and grouped["lo"] > 0


def test_undefined_replicates_are_dropped() -> None:
    y = np.array([1] + [0] * 9)  # a resample often misses the only positive: AUC undefined
    s = np.linspace(0, 1, 10)
    out = paired_bootstrap(roc_auc, s, s[::-1], labels=y, n=200, seed=0)
    assert out["n_dropped"] > 0 and out["n_boot"] + out["n_dropped"] == 200


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(np.mean, np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="labels"):
        paired_bootstrap(roc_auc, np.zeros(3), np.zeros(3), labels=np.zeros(2))
