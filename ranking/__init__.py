"""The downstream ranker: a multi-task mixture of DCNv2 experts over user / ad features, context, the activity
sequence and DERM embeddings (`ranking.model`), its point-in-time training and scoring (`ranking.train`), and
the shared-sequence forward pass that scores one user's candidates (`ranking.scoring`). The two-stage query that
serves it is `adserving`. Its wide part reads the one-hot fields of the regression baseline
(`dermfeatures.onehot`) and is fitted like that regression (`ranking.wide`)."""

from ranking.model import (
    DERM_INPUTS,
    CrossLayer,
    CrossNetwork,
    MMoE,
    Ranker,
    RankerConfig,
    SequenceTransformer,
)
from ranking.scoring import forward_shared_sequence, user_runs
from ranking.train import (
    RANKER_SCHEMA_VERSION,
    DermLookup,
    RankerRows,
    RankerSnapshot,
    calibration,
    continue_ranker,
    feature_fn,
    fit,
    load_ranker,
    predict,
    ranker_dir,
    ranker_spec,
    score,
    start_ranker,
    train_ranker,
)
from ranking.wide import WIDE_L2, fit_column, fit_wide_part

__all__ = [
    "DERM_INPUTS",
    "RANKER_SCHEMA_VERSION",
    "CrossLayer",
    "CrossNetwork",
    "DermLookup",
    "MMoE",
    "Ranker",
    "RankerConfig",
    "RankerRows",
    "RankerSnapshot",
    "SequenceTransformer",
    "WIDE_L2",
    "calibration",
    "continue_ranker",
    "feature_fn",
    "fit",
    "forward_shared_sequence",
    "fit_column",
    "fit_wide_part",
    "load_ranker",
    "predict",
    "ranker_dir",
    "ranker_spec",
    "score",
    "start_ranker",
    "train_ranker",
    "user_runs",
]
