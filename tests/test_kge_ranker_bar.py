"""benchmarks/kge_ranker.py's bar: finetune_attention vs none by the seed spread, and vs frozen both by the strict
mean comparison and by the paired interval over test impressions (`vs_frozen`)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:  # the scripts import each other by bare name (`from common import ...`)
    sys.path.append(str(BENCH))

from harness import seed_scores  # noqa: E402
from kge_ranker import BOOT, METRICS, bar, summarise  # noqa: E402


def _per_seed(shift: float, n_seeds: int = 2, n: int = 4000) -> list[dict]:
    """Test rows with a planted CVR signal: none sees little of it, frozen more, finetune_attention frozen's
    scores plus `shift` times the signal (>0: better, <0: worse) and a little seed noise."""
    rng = np.random.default_rng(0)
    click = (rng.random(n) < 0.5).astype(np.float32)
    sig = rng.normal(size=n)
    conv = (click > 0) & (rng.random(n) < 1 / (1 + np.exp(2 - 1.5 * sig)))
    out = []
    for s in range(n_seeds):
        r = np.random.default_rng(100 + s)
        p = {
            "none": 0.2 * sig + r.normal(size=n),
            "frozen": sig + r.normal(size=n),
        }
        p["finetune_attention"] = p["frozen"] + shift * sig + 0.01 * r.normal(size=n)
        res = {a: {"p": np.stack([1 / (1 + np.exp(-v))] * 2, 1), "seconds": 1.0} for a, v in p.items()}
        res["_labels"] = {"click": click, "conversion": conv.astype(np.float32)}
        out.append(res)
    return out


@pytest.mark.parametrize("shift", [-0.002, -0.5])
def test_bar_vs_frozen_interval(shift: float) -> None:
    names = ["none", "frozen", "finetune_attention"]
    per_seed = _per_seed(shift)
    a = summarise(per_seed, names)
    b = bar(a)
    # the existing keys keep their meaning: the strict comparison of means
    assert b["cvr_diff_vs_frozen"] == pytest.approx(
        a["finetune_attention"]["cvr_roc_auc_mean"] - a["frozen"]["cvr_roc_auc_mean"]
    )
    assert b["cvr_diff_vs_frozen"] < 0 and b["at_least_frozen"] is False and b["met"] is False
    assert b["beats_none"] is True
    # the interval: the paired bootstrap of finetune_attention - frozen per seed, bounds averaged over seeds
    _, boots = seed_scores(per_seed, [0, 1], names, METRICS, BOOT, reference="frozen")
    rows = boots["finetune_attention"]["cvr_roc_auc"]
    assert b["vs_frozen_ci"] == pytest.approx(
        [statistics.fmean(r["lo"] for r in rows), statistics.fmean(r["hi"] for r in rows)]
    )
    assert b["vs_frozen_diff_mean"] == pytest.approx(b["cvr_diff_vs_frozen"], abs=1e-12)
    assert len(b["vs_frozen_ci_over_seeds"]) == 2
    lo, hi = b["vs_frozen_ci"]
    assert lo < b["vs_frozen_diff_mean"] < hi
    if shift == -0.002:  # a hair below frozen on the means, well inside the test rows' noise
        assert hi > 0 and b["not_worse_than_frozen"] is True and b["met_not_worse"] is True
    else:  # clearly worse: the whole interval is below 0
        assert hi < 0 and b["not_worse_than_frozen"] is False and b["met_not_worse"] is False


def test_bar_without_vs_frozen_keeps_the_old_keys() -> None:
    """A summary without `vs_frozen` (results written before it) still gets the old bar, no new keys."""
    a = summarise(_per_seed(0.1), ["none", "frozen", "finetune_attention"])
    del a["finetune_attention"]["vs_frozen"]
    b = bar(a)
    assert set(b) == {
        "cvr_lift_vs_none", "spread_max_std", "cvr_diff_vs_frozen", "beats_none", "at_least_frozen", "met"
    }  # fmt: skip
    assert b["at_least_frozen"] is True and b["met"] is True
