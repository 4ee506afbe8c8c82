"""The onsite-offsite graph and its knowledge-graph embeddings (TransE, TransR, TransRA): issue 14.

Data flow: the ads log -> `graph` (a daily Parquet edge table, point-in-time) -> `train` / `snapshot` (KGE
models, from scratch then one increment per day) -> `evaluate` (filtered link prediction); `offsite` measures
what the synthetic log's offsite conversions say about conversion propensity.
"""

from adgraph.evaluate import held_out_edges, link_prediction, popularity_scorer
from adgraph.graph import (
    GraphConfig,
    GraphVersion,
    NodeType,
    Relation,
    build_edges,
    open_graph,
    publish_graph,
)
from adgraph.models import KGEModel, ModelKind, transe_score, transr_score
from adgraph.offsite import offsite_signal
from adgraph.snapshot import KGEVersion, open_kge, train_kge
from adgraph.train import KGEConfig, Loss, Sampling

__all__ = [
    "GraphConfig",
    "GraphVersion",
    "KGEConfig",
    "KGEModel",
    "KGEVersion",
    "Loss",
    "ModelKind",
    "NodeType",
    "Relation",
    "Sampling",
    "build_edges",
    "held_out_edges",
    "link_prediction",
    "offsite_signal",
    "open_graph",
    "open_kge",
    "popularity_scorer",
    "publish_graph",
    "train_kge",
    "transe_score",
    "transr_score",
]
