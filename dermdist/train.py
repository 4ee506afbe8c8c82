"""Data-parallel training of the towers and the ranker on Ray: Ray Train's `TorchTrainer` starts `workers`
processes, sets up their torch.distributed group (gloo on CPU, nccl on CUDA) and runs on each the library's own
`towers.train.train_towers` / `ranking.train.train_ranker` with `parallel=DataParallel.from_group()`: the one
training loop (`dermtrain.loop.run_epochs`, which `fit` drives for the ranker) under DDP on the worker's shard
of the rows (rules in `dermtrain.parallel`). Worker 0 publishes the snapshot through the one atomic publish; the
others publish nothing.

Why Ray Train and not torchrun: the cycle's `ray` engine already joins a Ray cluster for the day's inference,
so the same cluster (and `--address`) runs the training workers, places them, and reports a dead worker as a
failed run instead of a hang; torchrun would need its own rendezvous and a launcher per node. The price,
measured on the 2-core test machine under load with a toy loop: 26 s to start and finish a group of one
worker, 30 s for two; paid once per training stage (`benchmarks/scale.py` times the whole stages).

Crash safety: a killed worker fails the whole group (`FailureConfig(max_failures=0)`; a half-trained group is
never restarted mid-day with stale state), nothing is published because worker 0 publishes only after its last
step, and the driver raises EngineError. A rerun of the day finds the stage unpublished and trains it again.

On a cluster, the dataset and the workspace must be at the same paths on every node (shared storage).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adslog.workspace import Workspace, version_name
from dermcore.artifact import read_json
from dermdist.config import RayInferenceConfig, RayTrainConfig
from dermdist.infer import EngineError, connect
from dermtrain.loop import resolve_device
from ranking.model import RankerConfig
from ranking.train import ranker_dir
from towers.config import TowerConfig

log = logging.getLogger(__name__)


def _tower_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: `train_towers` on its shard (runs in the worker process)."""
    import torch

    from adslog.dataset import Dataset
    from dermtrain.parallel import DataParallel
    from towers.train import train_towers

    torch.set_num_threads(int(config["threads"]))
    parent = config["parent"]
    train_towers(
        Dataset.open(config["data_root"]),
        list(config["days"]),
        TowerConfig.from_json(config["cfg"]),
        Path(config["out_dir"]),
        parent=Path(parent) if parent is not None else None,
        device=config["device"],
        overwrite=bool(config["overwrite"]),
        parallel=DataParallel.from_group(),
    )


def _ranker_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: `train_ranker` on its shard (runs in the worker process)."""
    import torch

    from dermtrain.parallel import DataParallel
    from ranking.train import train_ranker

    torch.set_num_threads(int(config["threads"]))
    ws = Workspace(config["work"])
    parent = config["parent"]
    train_ranker(
        ws,
        ws.dataset(),
        list(config["days"]),
        RankerConfig.from_json(config["cfg"]),
        Path(parent) if parent is not None else None,
        device=config["device"],
        overwrite=bool(config["overwrite"]),
        parallel=DataParallel.from_group(),
    )


def run_group(loop: Callable[[dict[str, Any]], None], config: dict[str, Any], cfg: RayTrainConfig) -> None:
    """Run `loop(config)` on `cfg.workers` Ray Train workers in one torch.distributed group; EngineError when
    any worker fails (the first line of its error)."""
    connect(RayInferenceConfig(cfg.address))
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = resolve_device(config["device"]).type == "cuda"
    storage = tempfile.mkdtemp(prefix="derm-raytrain-")
    try:
        trainer = TorchTrainer(
            loop,
            train_loop_config={**config, "threads": max(1, int(cfg.cpus_per_worker))},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=cfg.timeout_s),
            scaling_config=ScalingConfig(
                num_workers=cfg.workers,
                use_gpu=use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker},
            ),
            run_config=RunConfig(
                storage_path=storage, name="derm-train", failure_config=FailureConfig(max_failures=0)
            ),
        )
        try:
            trainer.fit()
        except TrainingFailedError as e:
            first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise EngineError(
                f"data-parallel training on {cfg.workers} Ray workers failed; nothing was published ({first})"
            ) from None
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def train_towers_ray(
    data_root: Path,
    days: list[int],
    cfg: TowerConfig,
    out_dir: Path,
    parent: Path | None,
    device: str,
    rcfg: RayTrainConfig,
    overwrite: bool = False,
) -> dict[str, Any]:
    """`towers.train.train_towers` on `rcfg.workers` data-parallel Ray workers; returns the published
    snapshot's manifest (worker 0 publishes `out_dir/day=<max(days)>`)."""
    config = {
        "data_root": str(data_root),
        "days": [int(d) for d in days],
        "cfg": cfg.to_json(),
        "out_dir": str(out_dir),
        "parent": str(parent) if parent is not None else None,
        "device": resolve_device(device).type,
        "overwrite": overwrite,
    }
    log.info("training %s towers on %d Ray workers", cfg.task.value, rcfg.workers)
    run_group(_tower_worker, config, rcfg)
    return _published(Path(out_dir) / version_name(max(days)))


def train_ranker_ray(
    ws: Workspace,
    days: list[int],
    cfg: RankerConfig,
    parent: Path | None,
    device: str,
    rcfg: RayTrainConfig,
    overwrite: bool = False,
) -> dict[str, Any]:
    """`ranking.train.train_ranker` on `rcfg.workers` data-parallel Ray workers; returns the published
    ranker's manifest (worker 0 publishes `ranker/day=<max(days)>`)."""
    config = {
        "work": str(ws.root),
        "days": [int(d) for d in days],
        "cfg": cfg.to_json(),
        "parent": str(parent) if parent is not None else None,
        "device": resolve_device(device).type,
        "overwrite": overwrite,
    }
    log.info("training the ranker on %d Ray workers", rcfg.workers)
    run_group(_ranker_worker, config, rcfg)
    return _published(ranker_dir(ws) / version_name(max(days)))


def _published(directory: Path) -> dict[str, Any]:
    p = directory / "manifest.json"
    if not p.is_file():
        raise EngineError(f"{directory}: the Ray workers finished but worker 0 published nothing")
    m: dict[str, Any] = read_json(p)
    return m
