"""towers: the upstream model. Feature encoders over the inputs of `dermfeatures` feed the user tower and the
Pin (ad) tower (DHEN or MLP backbones), an interaction tower gives CTR / CVR logits, and the training task adds
the in-batch sampled softmax with logQ correction; snapshots are trained (through `dermtrain`'s loop) from scratch
on a window, then incrementally; the export (`towers.export.load_towers`) reads only the towers an inference
needs, and exported embeddings come from `towers.infer`."""

from towers.config import Backbone, DhenModule, Task, TowerConfig
from towers.export import Towers, load_towers
from towers.infer import DailyEmbeddings, embed_ads, embed_day, embed_users
from towers.model import DermModel
from towers.train import Snapshot, load_snapshot, models_dir, train_towers

__all__ = [
    "Backbone",
    "DailyEmbeddings",
    "DermModel",
    "DhenModule",
    "Snapshot",
    "Task",
    "TowerConfig",
    "Towers",
    "embed_ads",
    "embed_day",
    "embed_users",
    "load_snapshot",
    "load_towers",
    "models_dir",
    "train_towers",
]
