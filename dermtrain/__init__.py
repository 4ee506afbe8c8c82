"""dermtrain: what the towers and the ranker train with. `dermtrain.loop` is the one training loop (`run_epochs`:
shuffled epochs, linear learning-rate decay, progress, an optional per-epoch hook such as `EarlyStopping`),
`dermtrain.optim` the optimiser (Adam for dense parameters, SparseAdam or the catch-up sparse Adam for the id
tables) and `dermtrain.parallel` what one data-parallel worker changes in that loop."""

from dermtrain.loop import EarlyStopping, EpochEnd, resolve_device, run_epochs
from dermtrain.optim import SPARSE_OPTIMIZERS, CatchUpAdam, TowerOptimizer
from dermtrain.parallel import DataParallel, training_plan

__all__ = [
    "SPARSE_OPTIMIZERS",
    "CatchUpAdam",
    "DataParallel",
    "EarlyStopping",
    "EpochEnd",
    "TowerOptimizer",
    "resolve_device",
    "run_epochs",
    "training_plan",
]
