"""workflow: what drives every stage. The bootstrap and the daily cycle (`workflow.cycle`), `derm run` over a
user's own dataset (`workflow.run`), the synthetic demo (`workflow.demo`), rollback and the lineage gates; the CLI,
the benchmarks and the service call these functions, so every gate applies on every path. `workflow.ops` holds
one function per manual command (an options object in, a result object out)."""

from workflow.cycle import (
    CycleConfig,
    bootstrap,
    load_cycle_config,
    publish_index,
    run_day,
    run_days,
    set_cycle_config,
)
from workflow.demo import DemoConfig, run_demo
from workflow.lineage import LineageError, check_cycle_lineage, check_retrain
from workflow.ops import (
    DailyOptions,
    EmbedOptions,
    EvalOptions,
    IndexOptions,
    RankerOptions,
    RunOptions,
    TrainOptions,
    build_index,
    embed_days,
    evaluate,
    run_daily,
    run_own,
    train_models,
    train_ranker_op,
)
from workflow.rollback import rollback
from workflow.run import run_dataset

__all__ = [
    "CycleConfig",
    "DailyOptions",
    "DemoConfig",
    "EmbedOptions",
    "EvalOptions",
    "IndexOptions",
    "LineageError",
    "RankerOptions",
    "RunOptions",
    "TrainOptions",
    "bootstrap",
    "build_index",
    "check_cycle_lineage",
    "check_retrain",
    "embed_days",
    "evaluate",
    "load_cycle_config",
    "publish_index",
    "rollback",
    "run_daily",
    "run_dataset",
    "run_day",
    "run_days",
    "run_demo",
    "run_own",
    "set_cycle_config",
    "train_models",
    "train_ranker_op",
]
