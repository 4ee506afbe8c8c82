"""What the benchmark scripts share beyond `common.py`'s results writer: one way to build an upstream workspace
(towers trained, daily embeddings published) and one way to summarise arms over seeds (mean, sd, the paired
bootstrap of arm - reference per seed, a t interval of the mean difference over seeds).

The upstream helper calls the daily cycle's own stages (`workflow.cycle.train_task_towers`,
`publish_embeddings`), so a gate or lineage check added there holds in the benchmarks too (CONVENTIONS 23).
It stops short of `workflow.cycle.bootstrap`, which also builds an index and trains a ranker: the ablations
train their own ranker per arm, and the scripts that want the whole cycle call `bootstrap` / `run_demo`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import common  # noqa: F401  (puts the repository root on sys.path for the imports below)
import numpy as np

from eval.bootstrap import paired_bootstrap
from towers.train import models_dir

if TYPE_CHECKING:
    from adslog.dataset import Dataset
    from adslog.workspace import Workspace
    from towers.config import TowerConfig
    from workflow.cycle import CycleConfig

# Student t, 97.5 % quantile, by number of values (df = n - 1); the three-decimal figures the committed runs used
T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}

MetricFn = Callable[..., Any]


def upstream(
    ws: Workspace,
    ds: Dataset,
    window: list[int],
    towers: TowerConfig,
    later: Sequence[int] = (),
    tasks: tuple[str, ...] = ("ctr", "cvr"),
    daily_increments: bool = False,
) -> CycleConfig:
    """The upstream models of `tasks`, trained once from scratch on `window` with back inference over it
    (each window day's store version embedded by the window's last snapshot, sequences from `ActivityLog`);
    then for each of `later` one store version, embedded by the window's snapshot, or with
    `daily_increments` by that day's own one-day increment from the previous snapshot (the daily cycle).

    Tower seeds follow the cycle (`workflow.cycle.task_config`: cvr = towers.seed + 1). The coverage gate is
    off (MovieLens weeks bring waves of new users: a property of the data, not what these benchmarks
    measure); device cpu. Models and versions already published are kept (a rerun resumes). Returns the
    cycle config used."""
    from adslog.sequences import ActivityLog
    from adslog.workspace import version_name
    from embstore.store import StoreGates
    from workflow.cycle import CycleConfig, publish_embeddings, train_task_towers

    # the cycle config always names ctr (it feeds the index); only `tasks` are trained and published here
    cycle_tasks = ("ctr", *(t for t in tasks if t != "ctr"))
    cfg = CycleConfig(tasks=cycle_tasks, towers=towers, gates=StoreGates(1.0), device="cpu")
    for task in tasks:
        mdir = models_dir(ws, task)
        if not (mdir / version_name(window[-1]) / "manifest.json").exists():
            train_task_towers(ws, ds, task, window, cfg, None)
        for d in window:
            act = ActivityLog.from_dataset(ds, d)
            publish_embeddings(ws, ds, task, d, cfg, window[-1], back_inferred=True, activity=act)
        for d in later:
            model_day = window[-1]
            if daily_increments:
                if not (mdir / version_name(d) / "manifest.json").exists():
                    train_task_towers(ws, ds, task, [d], cfg, ws.version_before(mdir, d))
                model_day = d
            publish_embeddings(ws, ds, task, d, cfg, model_day, back_inferred=False)
    return cfg


def std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof 1); None for fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else None


def t_half(values: Sequence[float], t975: Mapping[int, float] = T975) -> float | None:
    """Half-width of the 95 % t interval of the mean of `values` (t from `t975` by count); None when there
    are fewer than two values or the count is not in the table."""
    n = len(values)
    if n < 2 or n not in t975:
        return None
    return float(t975[n] * statistics.stdev(values) / np.sqrt(n))


def mean_std(
    e: dict[str, Any], key: str, values: list[float], mean: Callable[[list[float]], float] = statistics.mean
) -> None:
    """Write `key_mean`, `key_std` (None for one value) and `key_per_seed` into the arm entry `e`. `mean`:
    kge_ranker's committed runs used `statistics.fmean` (it can differ from `mean` in the last bit)."""
    e[f"{key}_mean"] = mean(values)
    e[f"{key}_std"] = std(values)
    e[f"{key}_per_seed"] = values


def seed_scores(
    per_seed: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    arms: Sequence[str],
    metrics: Mapping[str, MetricFn],
    n_boot: int,
    heads: tuple[str, str] = ("ctr_", "cvr_"),
    reference: str = "none",
    diff_key: str = "diff",
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[dict[str, Any]]]]]:
    """Every arm's ranker metrics per seed, and arm - `reference` per seed by the paired bootstrap over test
    impressions (`eval.bootstrap.paired_bootstrap`, `n_boot` replicates, the seed's own generator seed).

    Args:
        per_seed: one entry per seed: arm -> {"p": float[n_test, 2] (CTR, CVR probabilities)} and
            "_labels" -> {"click": int[n_test], "conversion": int[n_test]}.
        seeds: the seeds of `per_seed`, in order (one each).
        heads: the key prefixes of the CTR head (all test impressions) and the CVR head (the clicked ones).
        diff_key: the name of the difference in each bootstrap row.

    Returns (scores, boots): scores[arm][head + metric] = the metric per seed; boots[arm][head + metric] =
    [{"seed", diff_key, "lo", "hi"}] per seed, for every arm but `reference`.
    """
    scores: dict[str, dict[str, list[float]]] = {a: {} for a in arms}
    boots: dict[str, dict[str, list[dict[str, Any]]]] = {a: {} for a in arms}
    for s, res in zip(seeds, per_seed, strict=True):
        click, conv = res["_labels"]["click"], res["_labels"]["conversion"]
        clicked = click > 0
        p0 = res[reference]["p"]
        for arm in arms:
            p = res[arm]["p"]
            for head, (pp, y, q0) in {
                heads[0]: (p[:, 0], click, p0[:, 0]),
                heads[1]: (p[clicked, 1], conv[clicked], p0[clicked, 1]),
            }.items():
                for mname, fn in metrics.items():
                    key = head + mname
                    scores[arm].setdefault(key, []).append(float(fn(pp, y)))
                    if arm != reference:
                        bs = paired_bootstrap(fn, pp, q0, y, n=n_boot, seed=s)
                        boots[arm].setdefault(key, []).append(
                            {"seed": s, diff_key: bs["diff"], "lo": bs["lo"], "hi": bs["hi"]}
                        )
    return scores, boots
