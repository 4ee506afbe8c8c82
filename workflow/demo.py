"""`derm demo`: the whole system on the built-in synthetic ads log, end to end, inside one directory.

    WORK/data/              the generated dataset (skipped when already there)
    bootstrap               towers, back-inferred embeddings, index and ranker on the first `train_days` days
    daily cycles            for each following day but the last: evaluate, train one increment, embed,
                            aggregate, index, fine-tune the ranker
    evaluation              the last day, with the versions published before it -> WORK/report.json
                            (exactly the `derm eval --json` document) and WORK/report.md

Rerun on the same workspace after an interruption, every published stage is skipped and the demo completes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adslog.dataset import Dataset
from adslog.synth import SynthConfig, generate
from adslog.workspace import Workspace
from dermcore.artifact import read_json, write_json_atomic
from dermcore.errors import ConfigError
from dermcore.progress import Progress, no_progress
from eval.evaluate import eval_path, evaluate_day
from index import IndexConfig
from ranking.model import RankerConfig
from towers.config import TowerConfig
from workflow.cycle import CycleConfig, Timer, bootstrap, run_day
from workflow.report import write_report_md

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    synth: SynthConfig = field(default_factory=SynthConfig)
    train_days: int = 7
    cycle: CycleConfig = field(default_factory=CycleConfig)
    ks: tuple[int, ...] = (20, 100)

    @classmethod
    def tiny(cls, seed: int = 0) -> DemoConfig:
        """A demo small enough for unit tests (~20 s on 2 cores), large enough that trained models beat chance."""
        return cls(
            synth=SynthConfig(n_users=1500, n_ads=900, n_days=7, impressions_per_day=15_000, seed=seed),
            train_days=4,
            cycle=CycleConfig(
                towers=TowerConfig(
                    dim=16, token_dim=8, hidden=(64,), batch_size=512, epochs_initial=2, seed=seed
                ),
                ranker=RankerConfig(
                    token_dim=8, hidden=(64,), batch_size=512, lr=5e-3, epochs_initial=3, seed=seed
                ),
                index=IndexConfig(dim=16),
                self_check_queries=200,
                device="cpu",
            ),
        )

    def with_kge(self) -> DemoConfig:
        """The same demo with the KGE stage on (`derm demo --kge`): each day's onsite-offsite graph, TransRA
        model and `kge-transra` store family, and a ranker that fine-tunes ID tables started from those vectors
        with target attention over the user's graph neighbours (the `finetune_attention` arm of
        `benchmarks/kge_ranker.py`). The KGE model is sized down with the demo (dim 16, 10 epochs)."""
        from dataclasses import replace

        from adgraph.family import KGECycleConfig, kge_family
        from adgraph.train import KGEConfig

        kcfg = KGEConfig(dim=16, epochs=10)
        ranker = replace(
            self.cycle.ranker, kge_family=kge_family(kcfg.model), kge_finetune=True, kge_attention=True
        )
        return replace(self, cycle=replace(self.cycle, ranker=ranker, kge=KGECycleConfig(True, kcfg)))

    def __post_init__(self) -> None:
        if not 1 <= self.train_days <= self.synth.n_days - 2:
            raise ConfigError("train_days must leave at least one daily cycle and one evaluation day")


def run_demo(
    work: str | Path, cfg: DemoConfig | None = None, progress: Progress = no_progress
) -> dict[str, Any]:
    """Run (or resume) the demo in `work`; returns {"report": eval doc, "stage_seconds", "total_seconds", ...}."""
    cfg = cfg or DemoConfig()
    t0 = time.perf_counter()
    timer = Timer()
    root = Path(work).resolve()
    data = root / "data"
    root.mkdir(parents=True, exist_ok=True)
    if not (data / "manifest.json").exists():
        done = timer.stage("synth")
        generate(cfg.synth, data, progress, overwrite=data.exists())
        done()
    ws = Workspace.open(root, data)
    with ws.lock():
        ds = Dataset.open(data)
        days = ds.days()
        train, daily, last = days[: cfg.train_days], days[cfg.train_days : -1], days[-1]
        bootstrap(ws, train, cfg.cycle, progress, timer)
        for i, d in enumerate(daily):
            run_day(ws, d, cfg.cycle, progress, timer)
            progress("daily", i + 1, len(daily))
        if eval_path(ws, last).exists():
            doc = read_json(eval_path(ws, last))
        else:
            done = timer.stage("eval")
            doc = evaluate_day(ws, last, cfg.ks, device=cfg.cycle.device, slate_users=cfg.cycle.slate_users)
            write_json_atomic(eval_path(ws, last), doc)
            done()
        write_json_atomic(ws.inside("report.json"), doc)
        total = round(time.perf_counter() - t0, 3)
        summary = {
            "report": doc,
            "stage_seconds": timer.seconds,
            "total_seconds": total,
            "data": str(data),
            "dataset_stats": ds.manifest.get("stats", {}),
            "train_days": train,
            "daily_days": daily,
            "eval_day": last,
        }
        write_report_md(ws.inside("report.md"), summary)
    return summary
