"""workflow: what drives every stage. The bootstrap and the daily cycle (`workflow.cycle`), `derm run` over a
user's own dataset (`workflow.run`), the synthetic demo (`workflow.demo`), rollback and the lineage gates; the CLI,
the benchmarks and the service call these functions, so every gate applies on every path."""

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
from workflow.rollback import rollback
from workflow.run import run_dataset

__all__ = [
    "CycleConfig",
    "DemoConfig",
    "LineageError",
    "bootstrap",
    "check_cycle_lineage",
    "check_retrain",
    "load_cycle_config",
    "publish_index",
    "rollback",
    "run_dataset",
    "run_day",
    "run_days",
    "run_demo",
    "set_cycle_config",
]
