"""Parquet -> tensors. One code path builds the inputs for training, daily inference and the ranker.

`Inputs` holds what every batch needs (entity feature tables, the activity log) and turns id arrays into
tensors: `impression_batch` for training/scoring impressions, `user_batch` / `ad_batch` for embedding entities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from dermfeatures.onehot import ColumnJoin, field_columns, fields_keys
from dermfeatures.spec import EntityTable, FeatureSpec, _cat_index, context_rows, hash_ids

SEQ_AD_SALT, SEQ_ADV_SALT, LOGQ_SALT = 101, 102, 103


@dataclass
class ImpressionArrays:
    """Columns of a set of impressions as numpy arrays (n rows). `conversion` is the label as known at the
    cutoff: a conversion whose `conversion_ts` is after the cutoff counts as 0 (it has not happened yet)."""

    user_id: np.ndarray  # int64[n]
    ad_id: np.ndarray  # int64[n]
    ts: np.ndarray  # int64[n]
    day: np.ndarray  # int32[n]
    click: np.ndarray  # float32[n]
    conversion: np.ndarray  # float32[n]
    ctx: np.ndarray  # int64[n, F_ctx]
    ctx_ref: np.ndarray  # int64[n, F_ctx], position fixed to the reference slot
    #: float32[n]: each row's weight in the training losses (1 everywhere, except the negatives kept by
    #: negative downsampling, which stand for 1 / rate rows each: `Inputs.impressions(negative_rate=...)`)
    weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.weight is None:
            self.weight = np.ones(len(self.user_id), np.float32)

    def __len__(self) -> int:
        return len(self.user_id)

    def take(self, idx: np.ndarray) -> ImpressionArrays:
        return ImpressionArrays(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


class Inputs:
    def __init__(self, ds: Dataset, spec: FeatureSpec, activity: ActivityLog, seq_len: int) -> None:
        self.ds = ds
        self.spec = spec
        self.users = EntityTable(ds, spec, "user")
        self.ads = EntityTable(ds, spec, "ad")
        self.activity = activity
        self.seq_len = seq_len
        n_cat = next((f.size for f in spec.ad if f.name == spec.ad_category), 1)
        self._n_cat = n_cat
        # Per ad row, what a sequence event of that ad carries (category index, dense content vectors), plus a
        # last all-zero row for unknown ads and padded slots: one searchsorted and two row gathers per batch
        # instead of building every ad feature for batch_size * seq_len events (the loader's hot spot).
        n_ads = len(self.ads.ids)
        cats = _cat_index(self.ads.attribute(spec.ad_category or "", self.ads.ids).astype(np.int64), n_cat)
        self._seq_cat = np.concatenate([cats, np.zeros(1, np.int64)])
        self._seq_dense = np.concatenate([self.ads.dense, np.zeros((1, self.ads.dense.shape[1]), np.float32)])
        self._pad_row = n_ads
        # the one-hot fields' columns beyond the impression's ids and context, from the users / ads tables
        self._onehot_join: ColumnJoin | None = None
        if spec.onehot:
            own = {"user_id", "ad_id"} | {f.name for f in spec.context}
            self._onehot_join = ColumnJoin(ds, [c for c in field_columns(spec.onehot) if c not in own])

    def impressions(
        self,
        days: list[int],
        label_cutoff_ts: int | None = None,
        rows: Callable[[int], np.ndarray] | None = None,
        negative_rate: float = 1.0,
        seed: int = 0,
    ) -> ImpressionArrays:
        """The impressions of `days` (dataset order: by day, then as written). `rows(n)`: the indices of the n
        rows to keep (a data-parallel worker's shard, `dermtrain.parallel.DataParallel.rows`), taken before
        any feature is built.

        `negative_rate` < 1: negative downsampling for training (He et al. 2014, "Practical lessons from
        predicting clicks on ads at Facebook", section 6.2): every impression with a click or a conversion is
        kept, each other one with probability `negative_rate` (one draw per row from a generator seeded with
        `seed`, before `rows` shards them, so every data-parallel worker draws the same rows), and the kept
        negatives get weight 1 / `negative_rate` (`ImpressionArrays.weight`), so weighted losses and rates
        estimate the full day's."""
        if not 0.0 < negative_rate <= 1.0:
            raise ValueError(f"negative_rate must be in (0, 1], got {negative_rate}")
        cols = ["user_id", "ad_id", "ts", "day", "click"]
        imp_cols = self.ds.columns["impressions"]
        has_conv = "conversion" in imp_cols
        if has_conv:
            cols.append("conversion")
            if "conversion_ts" in imp_cols:
                cols.append("conversion_ts")
        cols += [f.name for f in self.spec.context if f.name in imp_cols]
        t = self.ds.impressions(days, cols)

        def positive() -> np.ndarray:
            pos = t.column("click").to_numpy() > 0
            return pos | (t.column("conversion").to_numpy() > 0) if has_conv else pos

        if negative_rate < 1.0:
            draw = np.random.default_rng((seed, 0x6E6473)).random(t.num_rows) < negative_rate
            t = t.filter(pa.array(positive() | draw))
        if rows is not None:
            t = t.take(pa.array(rows(t.num_rows), pa.int64()))
        a = self.arrays(t, label_cutoff_ts)
        if negative_rate < 1.0:
            a.weight = np.where(positive(), 1.0, 1.0 / negative_rate).astype(np.float32)
        return a

    def arrays(self, t: pa.Table, label_cutoff_ts: int | None = None) -> ImpressionArrays:
        n = t.num_rows
        if "conversion" in t.column_names:
            conv = t.column("conversion").to_numpy().astype(np.float32)
            if label_cutoff_ts is not None and "conversion_ts" in t.column_names:
                conv = conv * (t.column("conversion_ts").to_numpy() < label_cutoff_ts)
        else:
            conv = np.zeros(n, np.float32)
        return ImpressionArrays(
            user_id=t.column("user_id").to_numpy().astype(np.int64),
            ad_id=t.column("ad_id").to_numpy().astype(np.int64),
            ts=t.column("ts").to_numpy().astype(np.int64),
            day=t.column("day").to_numpy().astype(np.int32),
            click=t.column("click").to_numpy().astype(np.float32),
            conversion=conv.astype(np.float32),
            ctx=context_rows(self.spec, t),
            ctx_ref=context_rows(self.spec, t, reference=True),
        )

    def onehot_keys(self, a: ImpressionArrays, reference_context: bool = False) -> np.ndarray:
        """int64[n, len(spec.onehot)]: the key of each one-hot field (`dermfeatures.onehot.field_keys`) of
        impressions `a`, from the raw values as logged: the ids, the context (the reference context with
        `reference_context`; a value outside the spec's cardinality reads -1) and the users' / ads' columns
        (-1 for an id missing from its table)."""
        if self._onehot_join is None:
            return np.zeros((len(a), 0), np.int64)
        ctx = a.ctx_ref if reference_context else a.ctx
        rows = {"user_id": a.user_id, "ad_id": a.ad_id}
        rows.update({f.name: ctx[:, j] - 1 for j, f in enumerate(self.spec.context)})
        return fields_keys(self._onehot_join.join(rows, strict=False), self.spec.onehot)

    def user_batch(self, user_ids: np.ndarray, ts: np.ndarray) -> dict[str, torch.Tensor]:
        """User-tower inputs: features + the activity sequence strictly before `ts` (int64[n])."""
        cat, num, dense = self.users.rows(user_ids)
        s = self.activity.sequences(user_ids, ts, self.seq_len)
        pos, found = self.ads.lookup(s.ad_id)
        row = np.where(found & (s.ad_id >= 0), pos, self._pad_row)  # (m, L); unknown / padded -> zero row
        seq_cat = self._seq_cat[row]
        seq_dense = self._seq_dense[row]  # (m, L, D)
        return {
            "user_cat": torch.from_numpy(cat),
            "user_num": torch.from_numpy(num),
            "user_dense": torch.from_numpy(dense),
            "seq_ad": torch.from_numpy(hash_ids(s.ad_id, self.spec.seq_ad_buckets, SEQ_AD_SALT)),
            "seq_adv": torch.from_numpy(hash_ids(s.advertiser_id, self.spec.seq_adv_buckets, SEQ_ADV_SALT)),
            "seq_cat": torch.from_numpy(seq_cat),
            "seq_kind": torch.from_numpy(s.kind.astype(np.int64)),
            "seq_dense": torch.from_numpy(seq_dense),
        }

    def ad_batch(self, ad_ids: np.ndarray) -> dict[str, torch.Tensor]:
        cat, num, dense = self.ads.rows(ad_ids)
        return {
            "ad_cat": torch.from_numpy(cat),
            "ad_num": torch.from_numpy(num),
            "ad_dense": torch.from_numpy(dense),
        }

    def impression_batch(
        self, a: ImpressionArrays, reference_context: bool = False
    ) -> dict[str, torch.Tensor]:
        b = self.user_batch(a.user_id, a.ts)
        b.update(self.ad_batch(a.ad_id))
        b["ctx"] = torch.from_numpy(a.ctx_ref if reference_context else a.ctx)
        if self.spec.onehot:
            b["onehot"] = torch.from_numpy(self.onehot_keys(a, reference_context))
        b["click"] = torch.from_numpy(a.click)
        b["conversion"] = torch.from_numpy(a.conversion)
        assert a.weight is not None
        b["weight"] = torch.from_numpy(a.weight)
        b["ad_id"] = torch.from_numpy(a.ad_id)
        b["ad_bucket"] = torch.from_numpy(hash_ids(a.ad_id, self.spec.id_buckets, LOGQ_SALT))
        return b


def training_batches(
    inputs: Inputs, arrays: ImpressionArrays, extra_negatives: int, seed: int
) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
    """`make_batch(row_indices)` for the towers' training loop: the rows' `impression_batch`, plus (with
    `extra_negatives` > 0) that many ads drawn uniformly with replacement from the distinct ads of `arrays`,
    under `neg_ad_*` (the Pin tower's inputs), `neg_ad_id`, `neg_ad_bucket` (the logQ bucket) and `neg_rate`
    (float64 scalar: extra_negatives / number of distinct ads, each ad's expected count among them). Draws
    come from one generator seeded with (`seed`, a constant), so a run is reproducible and the draws are not the
    stream of the loop's shuffle, which is seeded with `seed` alone."""
    if extra_negatives < 0:
        raise ValueError("extra_negatives must be >= 0")
    pool = np.unique(arrays.ad_id) if extra_negatives else np.zeros(0, np.int64)
    rng = np.random.default_rng((seed, 0x6E6567))

    def make(idx: np.ndarray) -> dict[str, torch.Tensor]:
        b = inputs.impression_batch(arrays.take(idx))
        if extra_negatives and len(pool):
            ids = pool[rng.integers(0, len(pool), extra_negatives)]
            b.update({f"neg_{k}": v for k, v in inputs.ad_batch(ids).items()})
            b["neg_ad_id"] = torch.from_numpy(ids)
            b["neg_ad_bucket"] = torch.from_numpy(hash_ids(ids, inputs.spec.id_buckets, LOGQ_SALT))
            b["neg_rate"] = torch.tensor(extra_negatives / len(pool), dtype=torch.float64)
        return b

    return make


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
