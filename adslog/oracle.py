"""The hidden truth of the synthetic ads log, and the `Oracle` that reads it back for evaluation.

The click model (all float32)::

    u(user, day)   = w_s * static + w_d * (cos(omega * t) * drift_a + sin(omega * t) * drift_b)
                     with t = day - start_day: a user's interests rotate slowly, so recent behaviour matters
    logit p_click  = click_intercept + user_bias + ad_bias
                     + region_category[region, category] + age_category[age_bucket, category]
                     + surface_bias[surface] + position_bias[position]
                     + surface_affinity[surface] * <u(user, day), ad_factor> / sqrt(dim)

and P(conversion | click)::

    logit p_conv   = conv_intercept + ad_conv_bias + surface_conv_bias[surface]
                     + conv_strength * <user_conv, ad_conv> / sqrt(conv_dim)
                     + conv_affinity * <u(user, day), ad_factor> / sqrt(dim)

The latent arrays (static, drift_a/b, omega, biases, conversion factors, advertiser parameters) appear in no
Parquet table: they live as `.npy` files under `DATA/oracle/`, with the scalars in `oracle/params.json`.
Rows of the user arrays follow `oracle/user_ids.npy`, rows of the ad arrays `oracle/ad_ids.npy`; the Oracle
maps explicit int64 ids to rows itself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from adslog.schema import DATASET_KIND, DATASET_SCHEMA_VERSION
from dermcore.artifact import read_json, read_manifest
from dermcore.errors import DataError, DermError
from dermcore.safepath import resolve_under

log = logging.getLogger(__name__)

ORACLE_DIR = "oracle"
ORACLE_KIND = "oracle"
ORACLE_FORMAT_VERSION = 1
#: The fixed context (home feed, top slot) evaluation scores retrieval against.
REFERENCE_SURFACE = 0
REFERENCE_POSITION = 0
# Elements per internal block: bounds temporaries to ~100 MB on a users x ads matrix.
_CHUNK = 1 << 21


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32, copy=False)


def _dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """<u, v> over the last axis of broadcastable `u` (..., D) and `v` (..., D); float32.

    An outer (n, 1, D) x (1, m, D) pair goes through one matmul; equal shapes through einsum (the path the
    generator takes on logged rows, so the Oracle reproduces logged values bit for bit on 1-D input).
    """
    su, sv = u.shape[:-1], v.shape[:-1]
    if len(su) == 2 and len(sv) == 2 and su[1] == 1 and sv[0] == 1:
        return u[:, 0, :] @ v[0].T
    if su == sv:
        return np.einsum("...d,...d->...", u, v)
    return (u * v).sum(-1, dtype=np.float32)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Tie-aware ROC-AUC (Mann-Whitney): P(score_pos > score_neg) + 0.5 P(equal). NaN without both classes."""
    s = np.asarray(scores).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_g = np.add.reduceat(y.astype(np.int64), starts)
    neg_g = np.diff(np.r_[starts, len(s)]) - pos_g
    neg_before = np.cumsum(neg_g) - neg_g
    u = float(np.sum(pos_g * (neg_before + 0.5 * neg_g)))
    return u / (n_pos * n_neg)


@dataclass
class Truth:
    """Every latent array of a synthetic world. Shapes: U users, A ads, V advertisers, D / C latent dims.

    user_ids int64[U], ad_ids int64[A], advertiser_ids int64[V]: the explicit ids rows stand for.
    user_static, user_drift_a, user_drift_b float32[U, D]; user_omega float32[U] (radians/day);
    user_bias float32[U]; user_conv float32[U, C]; user_region int16[U]; user_age int16[U].
    ad_factor float32[A, D]; ad_bias float32[A]; ad_conv float32[A, C]; ad_conv_bias float32[A];
    ad_category int16[A]; ad_advertiser int32[A] (row into the advertiser arrays).
    advertiser_factor float32[V, D]; advertiser_conv float32[V, C]; advertiser_conv_bias float32[V];
    advertiser_category int16[V].
    region_category float32[regions, categories]; age_category float32[ages, categories];
    surface_bias, surface_affinity, surface_conv_bias float32[surfaces]; position_bias float32[positions].
    params: the scalars (start_day, static_weight, drift_weight, click_intercept, conv_intercept,
    conv_strength, conv_affinity).
    """

    user_ids: np.ndarray
    user_static: np.ndarray
    user_drift_a: np.ndarray
    user_drift_b: np.ndarray
    user_omega: np.ndarray
    user_bias: np.ndarray
    user_conv: np.ndarray
    user_region: np.ndarray
    user_age: np.ndarray
    ad_ids: np.ndarray
    ad_factor: np.ndarray
    ad_bias: np.ndarray
    ad_conv: np.ndarray
    ad_conv_bias: np.ndarray
    ad_category: np.ndarray
    ad_advertiser: np.ndarray
    advertiser_ids: np.ndarray
    advertiser_factor: np.ndarray
    advertiser_conv: np.ndarray
    advertiser_conv_bias: np.ndarray
    advertiser_category: np.ndarray
    region_category: np.ndarray
    age_category: np.ndarray
    surface_bias: np.ndarray
    surface_affinity: np.ndarray
    surface_conv_bias: np.ndarray
    position_bias: np.ndarray
    params: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.user_static.shape[1])

    def _p(self, name: str) -> np.float32:
        return np.float32(self.params[name])

    # -- the model ----------------------------------------------------------------------------------------
    def user_factor(self, urow: np.ndarray, day: int) -> np.ndarray:
        """float32[*urow.shape, D]: the user's interest vector on `day` (rows, not ids)."""
        t = np.float32(int(day) - int(self.params["start_day"]))
        theta = (self.user_omega[urow] * t).astype(np.float32)
        drift = (
            np.cos(theta)[..., None] * self.user_drift_a[urow]
            + np.sin(theta)[..., None] * self.user_drift_b[urow]
        )
        return self._p("static_weight") * self.user_static[urow] + self._p("drift_weight") * drift

    def mean_user_factor(self, day: int) -> np.ndarray:
        """float32[D]: the population mean of u(., day), the 'non-personal' stand-in for a user."""
        return (
            self.user_factor(np.arange(len(self.user_ids)), day).mean(0, dtype=np.float64).astype(np.float32)
        )

    def affinity(self, urow: np.ndarray, arow: np.ndarray, day: int, personal: bool = True) -> np.ndarray:
        """float32[broadcast]: <u(user, day), ad_factor> / sqrt(D)."""
        u = self.user_factor(urow, day) if personal else self.mean_user_factor(day)
        return _dot(u, self.ad_factor[arow]) * np.float32(1.0 / np.sqrt(self.dim))

    def click_logit(
        self,
        urow: np.ndarray,
        arow: np.ndarray,
        day: int,
        surface: np.ndarray,
        position: np.ndarray,
        personal: bool = True,
    ) -> np.ndarray:
        """float32[broadcast of urow, arow, surface, position]: the click logit (rows, not ids)."""
        cat = self.ad_category[arow]
        logit = (
            self._p("click_intercept")
            + self.user_bias[urow]
            + self.ad_bias[arow]
            + self.region_category[self.user_region[urow], cat]
            + self.age_category[self.user_age[urow], cat]
            + self.surface_bias[surface]
            + self.position_bias[position]
        )
        return logit + self.surface_affinity[surface] * self.affinity(urow, arow, day, personal)

    def conversion_logit(
        self, urow: np.ndarray, arow: np.ndarray, day: int, surface: np.ndarray
    ) -> np.ndarray:
        """float32[broadcast]: the logit of P(conversion | click). Position does not matter once clicked."""
        c = self.user_conv.shape[1]
        conv = _dot(self.user_conv[urow], self.ad_conv[arow]) * np.float32(1.0 / np.sqrt(c))
        return (
            self._p("conv_intercept")
            + self.ad_conv_bias[arow]
            + self.surface_conv_bias[surface]
            + self._p("conv_strength") * conv
            + self._p("conv_affinity") * self.affinity(urow, arow, day)
        )

    # -- storage ------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        """Write one `.npy` per array (byte-deterministic, unlike `.npz`) and `params.json`; return the
        manifest entry describing them."""
        directory.mkdir(parents=True, exist_ok=True)
        files = {}
        for f in fields(self):
            if f.name == "params":
                continue
            arr = np.ascontiguousarray(getattr(self, f.name))
            np.save(directory / f"{f.name}.npy", arr, allow_pickle=False)
            files[f.name] = {"dtype": str(arr.dtype), "shape": list(arr.shape)}
        with open(directory / "params.json", "w") as fh:
            json.dump(self.params, fh, indent=2, sort_keys=True)
            fh.write("\n")
        return {
            "path": ORACLE_DIR,
            "kind": ORACLE_KIND,
            "format_version": ORACLE_FORMAT_VERSION,
            "arrays": files,
            "params": dict(self.params),
            "reference_context": {"surface": REFERENCE_SURFACE, "position": REFERENCE_POSITION},
        }

    @classmethod
    def load(cls, directory: Path) -> Truth:
        params = read_json(directory / "params.json")
        if not isinstance(params, dict):
            raise DataError(directory / "params.json", "not a JSON object")
        arrays: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "params":
                continue
            p = directory / f"{f.name}.npy"
            try:
                arrays[f.name] = np.load(p, allow_pickle=False)
            except FileNotFoundError:
                raise DataError(p, "oracle array missing") from None
            except (ValueError, OSError) as e:
                raise DataError(p, f"unreadable oracle array ({e})") from None
        return cls(params=params, **arrays)


class IdMap:
    """Explicit int64 ids -> row positions (sorted search; unknown ids are an error)."""

    def __init__(self, ids: np.ndarray, what: str) -> None:
        self.what = what
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def rows(self, ids: Any) -> np.ndarray:
        q = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.sorted, q).clip(0, len(self.sorted) - 1)
        found = self.sorted[pos] == q
        if not np.all(found):
            bad = q[~found].ravel()[:5].tolist()
            raise DermError(f"unknown {self.what} ids (first: {bad})")
        return self.order[pos]


class NoOracleError(DataError):
    """The dataset records no true probabilities (every real log): callers that report oracle figures only
    when there is one catch this, and nothing else (a corrupt oracle is an error like any other)."""


class Oracle:
    """True click / conversion probabilities of a synthetic dataset, for evaluation only (never a feature).

    Every method takes explicit int64 ids and broadcasts them numpy-style with `surface` and `position`:
    `p_click(users[:, None], ads[None, :], day)` scores a users x ads matrix in blocks of ~2M elements.
    """

    def __init__(self, truth: Truth, root: Path | None = None) -> None:
        self.truth = truth
        self.root = root
        self._users = IdMap(truth.user_ids, "user")
        self._ads = IdMap(truth.ad_ids, "ad")

    @classmethod
    def load(cls, dataset_root: str | Path) -> Oracle:
        """Load the oracle of a dataset; `DataError` when the dataset carries none (e.g. an imported log)."""
        root = Path(dataset_root).resolve()
        m = read_manifest(root, DATASET_KIND, DATASET_SCHEMA_VERSION, verify="size")
        desc = m.get("oracle")
        if not isinstance(desc, dict) or desc.get("kind") != ORACLE_KIND:
            raise NoOracleError(root / "manifest.json", "dataset has no oracle (only synthetic data has one)")
        if desc.get("format_version") != ORACLE_FORMAT_VERSION:
            raise DataError(
                root / "manifest.json", f"unsupported oracle format {desc.get('format_version')!r}"
            )
        directory = resolve_under(root, str(desc.get("path", ORACLE_DIR)), root / "manifest.json")
        if not directory.is_dir():
            raise DataError(directory, "oracle directory missing")
        log.debug("loading oracle from %s", directory)
        return cls(Truth.load(directory), root)

    def user_rows(self, user_ids: Any) -> np.ndarray:
        """int64 rows of `user_ids` in the truth arrays (unknown ids are an error)."""
        return self._users.rows(user_ids)

    def ad_rows(self, ad_ids: Any) -> np.ndarray:
        """int64 rows of `ad_ids` in the truth arrays (unknown ids are an error)."""
        return self._ads.rows(ad_ids)

    @property
    def user_ids(self) -> np.ndarray:
        """int64[U]: every user id the oracle knows."""
        return self.truth.user_ids

    @property
    def ad_ids(self) -> np.ndarray:
        """int64[A]: every ad id the oracle knows."""
        return self.truth.ad_ids

    def _blocks(self, fn: Any, user_ids: Any, ad_ids: Any, surface: Any, position: Any) -> np.ndarray:
        """Apply fn(urow, arow, surface, position) over the broadcast shape, in blocks along axis 0."""
        urow = self._users.rows(user_ids)
        arow = self._ads.rows(ad_ids)
        s = np.asarray(surface, dtype=np.int64)
        p = np.asarray(position, dtype=np.int64)
        self._check_context(s, p)
        shape = np.broadcast_shapes(urow.shape, arow.shape, s.shape, p.shape)
        parts = [a.reshape((1,) * (len(shape) - a.ndim) + a.shape) for a in (urow, arow, s, p)]
        size = int(np.prod(shape))
        if len(shape) == 0 or size <= _CHUNK:
            return np.broadcast_to(fn(*parts), shape).astype(np.float32)
        out = np.empty(shape, dtype=np.float32)
        step = max(1, _CHUNK // max(1, size // shape[0]))
        for lo in range(0, shape[0], step):
            sl = [a if a.shape[0] == 1 else a[lo : lo + step] for a in parts]
            out[lo : lo + step] = fn(*sl)
        return out

    def _check_context(self, s: np.ndarray, p: np.ndarray) -> None:
        ns, npos = len(self.truth.surface_bias), len(self.truth.position_bias)
        if s.size and (s.min() < 0 or s.max() >= ns):
            raise DermError(f"surface must be in 0..{ns - 1}")
        if p.size and (p.min() < 0 or p.max() >= npos):
            raise DermError(f"position must be in 0..{npos - 1}")

    def p_click(
        self,
        user_ids: Any,
        ad_ids: Any,
        day: int,
        surface: np.ndarray | int = REFERENCE_SURFACE,
        position: np.ndarray | int = REFERENCE_POSITION,
    ) -> np.ndarray:
        """float32[broadcast shape]: true P(click) of each (user, ad) pair on `day` in (surface, position)."""
        t = self.truth

        def fn(u: np.ndarray, a: np.ndarray, s: np.ndarray, p: np.ndarray) -> np.ndarray:
            return _sigmoid(t.click_logit(u, a, day, s, p))

        return self._blocks(fn, user_ids, ad_ids, surface, position)

    def p_click_nonpersonal(
        self,
        user_ids: Any,
        ad_ids: Any,
        day: int,
        surface: np.ndarray | int = REFERENCE_SURFACE,
        position: np.ndarray | int = REFERENCE_POSITION,
    ) -> np.ndarray:
        """float32[broadcast]: P(click) with the user's latent interest vector replaced by the day's mean."""
        t = self.truth

        def fn(u: np.ndarray, a: np.ndarray, s: np.ndarray, p: np.ndarray) -> np.ndarray:
            return _sigmoid(t.click_logit(u, a, day, s, p, personal=False))

        return self._blocks(fn, user_ids, ad_ids, surface, position)

    def p_conversion(
        self,
        user_ids: Any,
        ad_ids: Any,
        day: int,
        surface: np.ndarray | int = REFERENCE_SURFACE,
        position: np.ndarray | int = REFERENCE_POSITION,
    ) -> np.ndarray:
        """float32[broadcast]: true P(conversion | click). `position` is accepted for symmetry, unused."""
        t = self.truth

        def fn(u: np.ndarray, a: np.ndarray, s: np.ndarray, p: np.ndarray) -> np.ndarray:
            return np.broadcast_to(
                _sigmoid(t.conversion_logit(u, a, day, s)),
                np.broadcast_shapes(u.shape, a.shape, s.shape, p.shape),
            )

        return self._blocks(fn, user_ids, ad_ids, surface, position)

    def user_factor(self, user_ids: Any, day: int) -> np.ndarray:
        """float32[*user_ids.shape, D]: true interest vectors on `day` (for diagnostics, never features)."""
        return self.truth.user_factor(self.user_rows(user_ids), day)

    def ad_factor(self, ad_ids: Any) -> np.ndarray:
        """float32[*ad_ids.shape, D]: true ad latent factors (for diagnostics, never features)."""
        return self.truth.ad_factor[self.ad_rows(ad_ids)]
