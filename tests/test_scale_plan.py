"""benchmarks/scale.py's budget guard (`over_budget`): which optional run is started within the 45 minutes, and
the projection recorded for one that is not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:  # the scripts import each other by bare name (`from common import ...`)
    sys.path.append(str(BENCH))

from scale import BUDGET_S, UNMEASURED_ENGINE_FACTOR, over_budget  # noqa: E402


def test_nothing_measured_yet_is_never_skipped() -> None:
    assert over_budget(10_000_000, "local", BUDGET_S - 1, {}, None, False) is None
    assert over_budget(10_000_000, "ray", BUDGET_S - 1, {"local": 100.0}, None, False) is None


def test_an_unmeasured_engine_is_projected_at_the_local_rate_times_the_margin() -> None:
    rate = 100.0  # seconds per million, the local day
    # 1M on ray, booted: the local rate alone would fit, the margin does not
    elapsed = BUDGET_S - rate * 1.5
    skip = over_budget(1_000_000, "ray", elapsed, {"local": rate}, 50.0, True)
    assert skip is not None
    assert skip["projected_seconds"] == pytest.approx(rate * UNMEASURED_ENGINE_FACTOR)
    assert f"local day x {UNMEASURED_ENGINE_FACTOR:g}" in skip["reason"]
    assert "bootstrap" not in skip["reason"]  # this size is booted already
    # the same on the local engine fits
    assert over_budget(1_000_000, "local", elapsed, {"local": rate}, 50.0, True) is None


def test_a_measured_engine_uses_its_own_rate_and_an_unbooted_size_adds_the_bootstrap() -> None:
    rates = {"local": 100.0, "ray": 300.0}
    assert over_budget(1_000_000, "ray", BUDGET_S - 301, rates, 50.0, True) is None
    skip = over_budget(1_000_000, "ray", BUDGET_S - 299, rates, 50.0, True)
    assert skip is not None and skip["projected_seconds"] == pytest.approx(300.0)
    assert "the ray day (300 s/M)" in skip["reason"]
    # 3M, not booted: (100 + 50) x 3 = 450 s
    assert over_budget(3_000_000, "local", BUDGET_S - 451, rates, 50.0, False) is None
    skip = over_budget(3_000_000, "local", BUDGET_S - 449, rates, 50.0, False)
    assert skip is not None and skip["projected_seconds"] == pytest.approx(450.0)
    assert "bootstrap (50 s/M)" in skip["reason"] and "3M impressions" in skip["reason"]
