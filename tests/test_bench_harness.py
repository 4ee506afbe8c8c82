"""benchmarks/harness.py: the seed summary the ablation scripts share (their JSON keys and figures depend on it)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:  # the scripts import each other by bare name (`from common import ...`)
    sys.path.append(str(BENCH))

from harness import T975, mean_std, seed_scores, std, t_half  # noqa: E402

from eval.bootstrap import paired_bootstrap  # noqa: E402
from eval.metrics import roc_auc  # noqa: E402


def test_t_half_and_std() -> None:
    v = [0.61, 0.64, 0.62]
    assert t_half(v) == pytest.approx(4.303 * statistics.stdev(v) / np.sqrt(3), rel=0, abs=0)
    assert (
        t_half([0.5]) is None and t_half([0.1] * 11) is None
    )  # past the table: no interval, not a wrong one
    assert t_half(v, {3: 4.302652729911275}) == pytest.approx(
        4.302652729911275 * statistics.stdev(v) / np.sqrt(3)
    )
    assert T975[6] == 2.571
    assert std([1.0]) is None and std([1.0, 3.0]) == pytest.approx(np.sqrt(2))
    e: dict = {}
    mean_std(e, "roc_auc", [0.5, 0.7])
    assert e == {
        "roc_auc_mean": 0.6,
        "roc_auc_std": pytest.approx(0.1414213562),
        "roc_auc_per_seed": [0.5, 0.7],
    }


def test_seed_scores_is_the_paired_bootstrap_per_seed() -> None:
    rng = np.random.default_rng(0)
    per_seed = []
    for _ in range(2):
        click = (rng.random(300) < 0.3).astype(np.int64)
        conv = (rng.random(300) < 0.5).astype(np.int64)
        signal = np.stack([click, conv], 1) * 0.3
        per_seed.append(
            {
                "_labels": {"click": click, "conversion": conv},
                "none": {"p": rng.random((300, 2))},
                "all": {"p": rng.random((300, 2)) + signal},  # informative: beats none
            }
        )
    scores, boots = seed_scores(
        per_seed, (4, 5), ["none", "all"], {"roc_auc": roc_auc}, 50, heads=("", "cvr_")
    )
    assert set(scores["all"]) == {"roc_auc", "cvr_roc_auc"} and "none" in scores and boots["none"] == {}
    res, clicked = per_seed[1], per_seed[1]["_labels"]["click"] > 0
    y = res["_labels"]["conversion"][clicked]
    want = paired_bootstrap(
        roc_auc, res["all"]["p"][clicked, 1], res["none"]["p"][clicked, 1], y, n=50, seed=5
    )
    assert boots["all"]["cvr_roc_auc"][1] == {
        "seed": 5,
        "diff": want["diff"],
        "lo": want["lo"],
        "hi": want["hi"],
    }
    assert scores["all"]["roc_auc"][0] == roc_auc(
        per_seed[0]["all"]["p"][:, 0], per_seed[0]["_labels"]["click"]
    )
    assert all(r["diff"] > 0 for r in boots["all"]["roc_auc"])
    with pytest.raises(ValueError):  # one seed per result
        seed_scores(per_seed, (4,), ["none", "all"], {"roc_auc": roc_auc}, 10)
