"""Importers: public logs and a user's own log turned into derm datasets (see `adslog.schema`).

Every source row becomes exactly one impressions row; nothing is sampled or deduplicated. Rows are sorted by
`ts` (stable, so ties keep file order) and written one partition per UTC day; days without rows get no
partition (the reader returns 0 rows for them). The datasets carry no advertising semantics of their own, so
each importer fills the ads-shaped columns with *stand-ins*, documented here and recorded in the manifest
under `source.stand_ins`:

MovieLens-100K (RecBole atomic files `ml-100k.inter/.user/.item`)
    impression = one rating; `click` = rating >= 4; `conversion` = rating == 5 and `conversion_ts` = ts
    (else -1); `surface` = `position` = 0 (cardinality 1: the log has no placement); `advertiser_id` =
    `campaign_id` = `ad_id` (no advertiser exists); `category` = index of the movie's first genre; `content` =
    multi-hot genre vector (stands for a pretrained content vector); every ad is live from the first to the
    last day of the log. `release_year` that is not a number is read from the title's "(YYYY)" suffix, else
    set to the median year. Users: `age` (numeric), `gender`, `occupation`, `zip_prefix` (first character of
    the zip code when it is a digit, else "other").

Gowalla (LightGCN split, `train.txt` / `test.txt`, lines `user item item ...`)
    impression = one (user, item) pair with `click` = 1; no timestamps exist, so train pairs are day 0 and
    test pairs day 1 (`ts` = day * 86400) and the `split` meta column says which (0 train, 1 test);
    `advertiser_id` = `ad_id`.

Generic (`GenericImportConfig`: a CSV or Parquet log, chosen by file extension)
    The named columns become `user_id`, `ad_id`, `ts`, `click` (and `conversion`). Ids that are all
    integers >= 0 (integer columns, or text columns of plain decimal digits) are kept as they are; any other
    ids get int64 ids in order of first appearance (impressions first, then the users/items file), stored as
    `vocab/<column>.parquet` (`raw` string, `id` int64) and declared in the manifest under `vocabularies`.
    `ts` is unix seconds: integers, floats (the fraction is dropped) or Arrow timestamps. `click` and
    `conversion` must be 0/1. Stand-ins: `surface` = `position` = 0, `advertiser_id` = `ad_id`,
    `conversion_ts` = ts of a conversion (else -1), every item live from the first to the last day.
    Features of the optional users/items files: integers in 0..MAX_INT_CARDINALITY-1 become categorical
    (cardinality max + 1), other numbers numeric float32, booleans categorical, text categorical through a
    vocabulary (`vocab/<table>.<column>.parquet`; a column name that is not a plain file name is encoded by
    `dermcore.safepath.safe_component`, so no header can place a file outside the dataset). Every user/item of
    the log must be in those files, unless `missing_features="unknown"`: then each missing id gets a row
    whose categorical features hold an explicit unknown code (the column's last code, its cardinality grown by
    one) and whose numeric features hold the median of the known rows, and the table gains
    `features_missing` (categorical, 1 for those rows); the summary counts them (`users_missing_features`,
    `ads_missing_features`). Timestamps must lie in a plausible range (`GenericImportConfig.ts_min` ..
    `ts_max`, default 1970 .. 2100); ids must be integers or non-empty text.
    Context (`context_cols`): impression columns kept as categorical context (they feed the interaction tower
    and the ranker, never the entity embeddings). Integers in 0..MAX_INT_CARDINALITY-1 and booleans keep
    their values; anything else goes through a vocabulary ordered by frequency (`vocab/context.<col>.parquet`,
    so code 0, the serving-time reference context, is the most common value). A context column named
    `surface` or `position` replaces that stand-in.
    Entity features from the log (`user_feature_cols`, `item_feature_cols`): impression columns that describe
    the user or the item become columns of the users / ads table, typed like side-file features; each id keeps
    the value of its first row in time (known from its first impression on); ids only in a side file get the
    unknown values above.
    Period (`period`, `adslog.periods`): with N > 1 days per period, days and timestamps are rescaled together
    at import, one partition per period, and the manifest records `period`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from adslog.dataset import DatasetWriter
from adslog.periods import Period
from adslog.schema import ColumnKind, ColumnSpec, day_of
from dermcore.errors import ConfigError, DataError
from dermcore.progress import Progress, no_progress
from dermcore.safepath import resolve_under, safe_component

log = logging.getLogger(__name__)

#: Integer feature columns with values in 0..MAX_INT_CARDINALITY-1 are categorical, others numeric.
MAX_INT_CARDINALITY = 1024

_K = ColumnKind
_SURFACE_POSITION = (
    ColumnSpec("surface", "int8", _K.CATEGORICAL, cardinality=1, doc="stand-in: the source has no surface"),
    ColumnSpec("position", "int8", _K.CATEGORICAL, cardinality=1, doc="stand-in: the source has no position"),
)
_BASE_IMPRESSIONS = (
    ColumnSpec("ts", "int64", _K.TIME, doc="impression time, unix seconds UTC"),
    ColumnSpec("day", "int32", _K.TIME, doc="days since 1970-01-01 UTC"),
    ColumnSpec("user_id", "int64", _K.ID),
    ColumnSpec("ad_id", "int64", _K.ID),
    ColumnSpec("click", "int8", _K.LABEL, doc="1 if the impression was clicked"),
)
_CONVERSION = (
    ColumnSpec("conversion", "int8", _K.LABEL, doc="1 if the impression converted"),
    ColumnSpec("conversion_ts", "int64", _K.TIME, doc="conversion time, unix seconds; -1 without one"),
)
_LIVE = (
    ColumnSpec("first_day", "int32", _K.TIME, doc="stand-in: first day of the log"),
    ColumnSpec("last_day", "int32", _K.TIME, doc="stand-in: last day of the log"),
)


# -- shared helpers ----------------------------------------------------------------------------------------
def _file_info(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(path, "file not found")
    return path


def _cat_dtype(cardinality: int) -> str:
    return "int8" if cardinality <= 127 else "int16" if cardinality <= 32767 else "int32"


def _write_days(w: DatasetWriter, imp: pa.Table, progress: Progress) -> tuple[int, int, int]:
    """Sort `imp` by ts (stable) and write one partition per day; returns (first_day, last_day, days with rows)."""
    order = np.argsort(imp.column("ts").to_numpy(), kind="stable")
    imp = imp.take(pa.array(order))
    days = imp.column("day").to_numpy()
    starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
    ends = np.r_[starts[1:], len(days)]
    for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
        w.write_day(int(days[a]), imp.slice(int(a), int(b - a)))
        progress("write days", i + 1, len(starts))
    return int(days[0]), int(days[-1]), len(starts)


def _summary(
    name: str, out: Path, imp: pa.Table, n_users: int, n_ads: int, span: tuple[int, int, int]
) -> dict:
    s: dict[str, Any] = {
        "name": name,
        "path": str(out),
        "rows": imp.num_rows,
        "users": n_users,
        "ads": n_ads,
        "first_day": span[0],
        "last_day": span[1],
        "days": span[1] - span[0] + 1,
        "days_with_rows": span[2],
        "click_rate": round(float(pc.mean(imp.column("click")).as_py()), 6),
    }
    if "conversion" in imp.column_names:
        s["conversion_rate"] = round(float(pc.mean(imp.column("conversion")).as_py()), 6)
    return s


def _done(summary: dict, t0: float) -> dict:
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    log.info(
        "imported %s: %d rows, %d users, %d ads", *(summary[k] for k in ("name", "rows", "users", "ads"))
    )
    return summary


# -- MovieLens-100K ----------------------------------------------------------------------------------------
def _read_atomic(path: Path, types: dict[str, pa.DataType]) -> pa.Table:
    """A RecBole atomic file: tab separated, header `name:type`; columns not in `types` are read as text."""
    _need(path)
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
    names = [h.split(":", 1)[0] for h in header]
    missing = [n for n in types if n not in names]
    if missing:
        raise DataError(path, f"missing column {missing[0]!r}")
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: types.get(n, pa.string()) for n in names}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(path, f"cannot parse ({str(e).splitlines()[0]})") from None


def _vocab_codes(values: pa.ChunkedArray | pa.Array) -> tuple[list[str], np.ndarray]:
    """Sorted vocabulary of a text column and each row's index into it."""
    vocab = sorted(pc.unique(values).to_pylist())
    return vocab, pc.index_in(values, value_set=pa.array(vocab)).to_numpy()


def import_movielens_100k(
    src: str | Path,
    out: str | Path,
    progress: Progress = no_progress,
    overwrite: bool = False,
    period: Period | None = None,
) -> dict:
    """Import MovieLens-100K (RecBole atomic files in `src`) into a dataset at `out`; returns a summary.
    `period` (default a day) buckets time at import as `adslog.rebucket` would afterwards."""
    period = period or Period()
    t0 = time.perf_counter()
    src = Path(src)
    f_inter, f_user, f_item = (src / f"ml-100k.{x}" for x in ("inter", "user", "item"))
    progress("read", 0, 3)
    inter = _read_atomic(
        f_inter,
        {"user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float64(), "timestamp": pa.float64()},
    )
    users = _read_atomic(
        f_user,
        {
            "user_id": pa.int64(),
            "age": pa.float32(),
            "gender": pa.string(),
            "occupation": pa.string(),
            "zip_code": pa.string(),
        },
    )
    items = _read_atomic(f_item, {"item_id": pa.int64(), "release_year": pa.string(), "class": pa.string()})
    progress("read", 3, 3)
    for t, f in ((inter, f_inter), (users, f_user), (items, f_item)):
        if any(c.null_count for c in t.columns):
            raise DataError(f, "empty values in a numeric column")

    ts = inter.column("timestamp").to_numpy().astype(np.int64)
    ts = period.rescale(ts)[0] if len(ts) else ts
    rating = inter.column("rating").to_numpy()
    conv = rating == 5
    n = len(ts)
    imp = pa.table(
        {
            "ts": ts,
            "day": day_of(ts).astype(np.int32),
            "user_id": inter.column("user_id"),
            "ad_id": inter.column("item_id"),
            "click": (rating >= 4).astype(np.int8),
            "conversion": conv.astype(np.int8),
            "conversion_ts": np.where(conv, ts, -1),
            "surface": np.zeros(n, np.int8),
            "position": np.zeros(n, np.int8),
        }
    )
    for col, table, f in (("user_id", users, f_user), ("ad_id", items, f_item)):
        key = "user_id" if col == "user_id" else "item_id"
        unknown = ~np.isin(imp.column(col).to_numpy(), table.column(key).to_numpy())
        if unknown.any():
            raise DataError(f_inter, f"{int(unknown.sum())} rows name a {key} missing from {f.name}")
    first, last = int(imp.column("day").to_numpy().min()), int(imp.column("day").to_numpy().max())

    # users
    genders, gender = _vocab_codes(users.column("gender"))
    occupations, occupation = _vocab_codes(users.column("occupation"))
    zips = users.column("zip_code").to_pylist()
    zip_prefix = np.array([int(z[0]) if z[:1].isdigit() else 10 for z in zips], np.int8)
    user_cols = [
        ColumnSpec("user_id", "int64", _K.ID),
        ColumnSpec("age", "float32", _K.NUMERIC, doc="age in years"),
        ColumnSpec("gender", "int8", _K.CATEGORICAL, cardinality=len(genders), doc=f"index into {genders}"),
        ColumnSpec(
            "occupation",
            "int8",
            _K.CATEGORICAL,
            cardinality=len(occupations),
            doc="index into source.vocabularies.occupation",
        ),
        ColumnSpec(
            "zip_prefix", "int8", _K.CATEGORICAL, cardinality=11, doc="first zip digit 0-9; 10 = other"
        ),
    ]
    user_t = pa.table(
        {
            "user_id": users.column("user_id"),
            "age": users.column("age"),
            "gender": gender,
            "occupation": occupation,
            "zip_prefix": zip_prefix,
        }
    )

    # ads
    genre_lists = [g.split() for g in items.column("class").to_pylist()]
    genres = sorted({g for gs in genre_lists for g in gs})
    gidx = {g: i for i, g in enumerate(genres)}
    multi_hot = np.zeros((items.num_rows, len(genres)), np.float32)
    category = np.zeros(items.num_rows, np.int8)
    for r, gs in enumerate(genre_lists):
        if not gs:
            raise DataError(f_item, f"item {items.column('item_id')[r].as_py()} has no genre")
        multi_hot[r, [gidx[g] for g in gs]] = 1.0
        category[r] = gidx[gs[0]]
    year = _release_years(items)
    ad_ids = items.column("item_id")
    ad_t = pa.table(
        {
            "ad_id": ad_ids,
            "advertiser_id": ad_ids,
            "campaign_id": ad_ids,
            "category": category,
            "content": pa.FixedSizeListArray.from_arrays(pa.array(multi_hot.ravel()), len(genres)),
            "release_year": year,
            "first_day": np.full(items.num_rows, first, np.int32),
            "last_day": np.full(items.num_rows, last, np.int32),
        }
    )
    ad_cols = [
        ColumnSpec("ad_id", "int64", _K.ID),
        ColumnSpec("advertiser_id", "int64", _K.ID, doc="stand-in: = ad_id"),
        ColumnSpec("campaign_id", "int64", _K.ID, doc="stand-in: = ad_id"),
        ColumnSpec(
            "category", "int8", _K.CATEGORICAL, cardinality=len(genres), doc="index of the first genre"
        ),
        ColumnSpec("content", "float32", _K.DENSE_VECTOR, dim=len(genres), doc="stand-in: multi-hot genres"),
        ColumnSpec("release_year", "float32", _K.NUMERIC, doc="missing years: from the title, else median"),
        *_LIVE,
    ]
    stand_ins = {
        "impression": "one rating event",
        "click": "rating >= 4",
        "conversion": "rating == 5; conversion_ts = ts of the rating",
        "surface": "0 for every row (cardinality 1)",
        "position": "0 for every row (cardinality 1)",
        "advertiser_id": "= ad_id (no advertiser in the source)",
        "campaign_id": "= ad_id (no campaign in the source)",
        "category": "index of the movie's first genre",
        "content": "multi-hot genre vector (stands for a pretrained content vector)",
        "first_day/last_day": "every ad live from the first to the last day of the log",
        "release_year": "non-numeric values read from the title's (YYYY), else the median year",
    }
    source = {
        "name": "movielens_100k",
        "files": [_file_info(f) for f in (f_inter, f_user, f_item)],
        "stand_ins": stand_ins,
        "vocabularies": {"gender": genders, "occupation": occupations, "genre": genres},
    }
    with DatasetWriter(
        out, "movielens_100k", [*_BASE_IMPRESSIONS, *_CONVERSION, *_SURFACE_POSITION], overwrite
    ) as w:
        span = _write_days(w, imp, progress)
        w.write_table("users", user_t, user_cols)
        w.write_table("ads", ad_t, ad_cols)
        summary = _summary("movielens_100k", w.out, imp, user_t.num_rows, ad_t.num_rows, span)
        summary["period"] = period.name
        w.finish(span[0], span[1], source=source, stats=dict(summary), period=period.to_json(span[0]))
    return _done(summary, t0)


def _release_years(items: pa.Table) -> np.ndarray:
    raw = items.column("release_year").to_pylist()
    titles = (
        items.column("movie_title").to_pylist() if "movie_title" in items.column_names else [""] * len(raw)
    )
    years = np.full(len(raw), np.nan, np.float32)
    for i, (y, title) in enumerate(zip(raw, titles, strict=True)):
        m = re.fullmatch(r"\d{4}", y.strip()) or re.search(r"\((\d{4})\)\s*$", title)
        if m:
            years[i] = float(m.group(m.lastindex or 0))
    known = years[~np.isnan(years)]
    years[np.isnan(years)] = np.median(known) if len(known) else 0.0
    return years


# -- Gowalla (LightGCN split) ------------------------------------------------------------------------------
def _read_adjacency(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(user_id, ad_id) int64 pairs of a `user item item ...` file, in file order."""
    text = _need(path).read_text(encoding="ascii", errors="replace")
    lines = [ln.split() for ln in text.splitlines()]
    lines = [xs for xs in lines if xs]
    lens = np.fromiter((len(xs) for xs in lines), np.int64, len(lines))
    try:
        tokens = np.array([t for xs in lines for t in xs]).astype(np.int64)
    except ValueError:
        for i, xs in enumerate(lines):
            bad = [t for t in xs if not t.isdigit()]
            if bad:
                raise DataError(path, f"non-integer token {bad[0]!r} on non-empty line {i + 1}") from None
        raise DataError(path, "ids out of the int64 range") from None
    if (tokens < 0).any():
        raise DataError(path, "negative id")
    heads = np.cumsum(lens) - lens
    is_item = np.ones(len(tokens), bool)
    is_item[heads] = False
    return np.repeat(tokens[heads], lens - 1), tokens[is_item]


def within_day_order(users: np.ndarray, seed: int) -> np.ndarray:
    """int64 seconds for rows of `users` (int64[n]): each user's rows get 0, 1, ..., count - 1 in a seeded random
    order (a random permutation of all rows, then each row's rank among its user's rows)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(users))
    order = perm[np.argsort(users[perm], kind="stable")]  # rows grouped by user, random order within
    sorted_users = users[order]
    first = np.searchsorted(sorted_users, sorted_users, side="left")
    out = np.empty(len(users), np.int64)
    out[order] = np.arange(len(users)) - first
    return out


def import_gowalla(
    src: str | Path,
    out: str | Path,
    progress: Progress = no_progress,
    overwrite: bool = False,
    order_seed: int | None = None,
) -> dict:
    """Import the LightGCN Gowalla split (`train.txt`, `test.txt` in `src`): train = day 0, test = day 1.

    The source has no timestamps. By default every train pair has ts = 0, so no train pair has an earlier event
    (the user tower's activity sequence is empty in training). With `order_seed`, each user's train pairs get
    the distinct times 0, 1, 2, ... seconds of day 0 in a seeded random order (`within_day_order`): a train
    pair then sees the user's pairs drawn before it as its activity, and a user queried at the end of day 0 sees
    all of them, so the towers can aggregate the user's history (YoutubeDNN's and SimpleX's user side) without
    a train pair ever seeing itself. Test pairs stay at the start of day 1."""
    t0 = time.perf_counter()
    src = Path(src)
    files = [src / "train.txt", src / "test.txt"]
    parts = []
    for split, f in enumerate(files):
        users, ads = _read_adjacency(f)
        n = len(users)
        day = np.full(n, split, np.int32)
        ts = day.astype(np.int64) * 86400
        if split == 0 and order_seed is not None:
            within = within_day_order(users, order_seed)
            if len(within) and within.max() >= 86400:
                raise DataError(
                    f, "a user has more than 86,400 train pairs: they do not fit in day 0's seconds"
                )
            ts = ts + within
        parts.append(
            pa.table(
                {
                    "ts": ts,
                    "day": day,
                    "user_id": users,
                    "ad_id": ads,
                    "click": np.ones(n, np.int8),
                    "split": np.full(n, split, np.int8),
                }
            )
        )
        progress("read", split + 1, len(files))
    imp = pa.concat_tables(parts)
    user_ids = np.unique(imp.column("user_id").to_numpy())
    ad_ids = np.unique(imp.column("ad_id").to_numpy())
    imp_cols = [
        *_BASE_IMPRESSIONS,
        ColumnSpec("split", "int8", _K.META, doc="0 train, 1 test (LightGCN split)"),
    ]
    source = {
        "name": "gowalla_lightgcn",
        "files": [_file_info(f) for f in files],
        "stand_ins": {
            "impression": "one (user, item) check-in pair; every pair is a click",
            "ts/day": "no timestamps: train pairs are day 0, test pairs day 1 (ts = day * 86400)"
            + (
                ""
                if order_seed is None
                else f"; each user's train pairs at seconds 0, 1, ... of day 0 in a random order (seed {order_seed})"
            ),
            "advertiser_id": "= ad_id (no advertiser in the source)",
        },
    }
    with DatasetWriter(out, "gowalla_lightgcn", imp_cols, overwrite) as w:
        span = _write_days(w, imp, progress)
        w.write_table("users", pa.table({"user_id": user_ids}), [ColumnSpec("user_id", "int64", _K.ID)])
        w.write_table(
            "ads",
            pa.table({"ad_id": ad_ids, "advertiser_id": ad_ids}),
            [
                ColumnSpec("ad_id", "int64", _K.ID),
                ColumnSpec("advertiser_id", "int64", _K.ID, doc="stand-in: = ad_id"),
            ],
        )
        summary = _summary("gowalla_lightgcn", w.out, imp, len(user_ids), len(ad_ids), span)
        summary["train_rows"], summary["test_rows"] = parts[0].num_rows, parts[1].num_rows
        w.finish(span[0], span[1], source=source, stats=dict(summary))
    return _done(summary, t0)


# -- Generic: a user's own log -----------------------------------------------------------------------------
# Default plausible range of a generic log's unix seconds: 1970-01-01 .. 2100-01-01 (logical times that start
# at 0 pass; negative values, milliseconds and sentinels do not). The hard limit keeps every day in int32.
TS_MIN, TS_MAX = 0, 4_102_444_800
TS_LIMIT = (-(2**31) * 86400, (2**31 - 1) * 86400)


@dataclass(frozen=True)
class GenericImportConfig:
    """Where a user's own log lies and which of its columns mean what (CSV or Parquet, by extension)."""

    impressions: Path
    user_col: str
    item_col: str
    ts_col: str
    click_col: str
    conversion_col: str | None = None
    users: Path | None = None
    items: Path | None = None
    # Timestamps outside [ts_min, ts_max] are refused (a mistyped column, milliseconds for seconds, a sentinel
    # such as 9e18). `ts_range_check=False` accepts any value whose day still fits the int32 day column.
    ts_min: int = TS_MIN
    ts_max: int = TS_MAX
    ts_range_check: bool = True
    # impression columns kept as categorical context (see the module docstring)
    context_cols: tuple[str, ...] = ()
    # "error": every user / item of the log must be in its side file; "unknown": fill the missing ones
    missing_features: str = "error"
    period: Period = field(default_factory=Period)
    # impression columns that describe the user / the item: each id keeps the value of its first row in time
    # (known from its first impression on, so no later value leaks into earlier rows)
    user_feature_cols: tuple[str, ...] = ()
    item_feature_cols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in ("impressions", "users", "items"):
            v = getattr(self, f)
            if v is not None and not isinstance(v, Path):
                object.__setattr__(self, f, Path(v))
        for f in ("user_col", "item_col", "ts_col", "click_col"):
            if not getattr(self, f):
                raise ConfigError(f"GenericImportConfig.{f} must name a column")
        object.__setattr__(self, "context_cols", tuple(self.context_cols))
        if isinstance(self.period, str):
            object.__setattr__(self, "period", Period.parse(self.period))
        if self.missing_features not in MISSING_FEATURES:
            raise ConfigError(
                f"--missing-features: expected one of {', '.join(MISSING_FEATURES)}, got {self.missing_features!r}"
            )
        if any(not col for col in self.context_cols):
            raise ConfigError("--context-col must name a column")
        object.__setattr__(self, "user_feature_cols", tuple(self.user_feature_cols))
        object.__setattr__(self, "item_feature_cols", tuple(self.item_feature_cols))
        used = {self.user_col, self.item_col, self.ts_col, self.click_col, self.conversion_col}
        seen: set[str] = set()
        for flag, cols in (
            ("--user-feature-col", self.user_feature_cols),
            ("--item-feature-col", self.item_feature_cols),
        ):
            for col in cols:
                if not col or col in used or col in seen or col == _KEY:
                    raise ConfigError(f"{flag} {col!r}: empty, given twice, or already another column")
                seen.add(col)
        if not TS_LIMIT[0] <= self.ts_min <= self.ts_max <= TS_LIMIT[1]:
            raise ConfigError(
                f"GenericImportConfig: need {TS_LIMIT[0]} <= ts_min <= ts_max <= {TS_LIMIT[1]}, "
                f"got {self.ts_min}..{self.ts_max}"
            )

    def context_map(self, have: list[str]) -> list[tuple[str, str]]:
        """(column in the file, column in the dataset) of each context column. `NAME` keeps a column under its
        own name; `SRC=NAME` (when no column is literally called that) stores column SRC as NAME, e.g.
        `pos=position` so that serving fixes it to the top slot. Clashes are ConfigErrors naming the flag."""
        used = {self.user_col, self.item_col, self.ts_col, self.click_col, self.conversion_col}
        out: list[tuple[str, str]] = []
        for entry in self.context_cols:
            src, dest = entry, entry
            if entry not in have and "=" in entry:
                src, dest = (x.strip() for x in entry.split("=", 1))
            if not src or not dest:
                raise ConfigError(f"--context-col {entry!r}: expected NAME or SRC=NAME")
            if src in used:
                raise ConfigError(
                    f"--context-col {entry!r}: {src!r} is already the user, item, ts or label column"
                )
            if dest in _WRITTEN:
                raise ConfigError(
                    f"--context-col {entry!r}: {dest!r} clashes with a column the importer writes"
                )
            if dest in {d for _, d in out}:
                raise ConfigError(f"--context-col {entry!r}: {dest!r} is given twice")
            out.append((src, dest))
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if isinstance(v, Path):
                v = str(v)
            elif isinstance(v, Period):
                v = {"name": v.name, "days": v.days}
            elif isinstance(v, tuple):
                v = list(v)
            out[k] = v
        return out


MISSING_FEATURES = ("error", "unknown")
_KEY = "__id__"  # the key column of the per-entity table built from impression columns
# impression columns the generic importer writes itself (a context column may replace surface / position)
_WRITTEN = {"ts", "day", "user_id", "ad_id", "click", "conversion", "conversion_ts"}


_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".tsv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _read_any(path: Path, columns: list[str], text_cols: list[str]) -> pa.Table:
    """Read a CSV/Parquet file; `columns` must exist; `text_cols` are read as text from CSV (ids keep zeros)."""
    _need(path)
    name = path.name.lower()
    try:
        if name.endswith(_PARQUET_SUFFIXES):
            have = pq.read_schema(path).names
            _check_have(path, have, columns)
            return pq.read_table(path)
        if name.endswith(_CSV_SUFFIXES):
            delim = "\t" if ".tsv" in name else ","
            t = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delim),
                convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(text_cols, pa.string())),
            )
            _check_have(path, t.column_names, columns)
            return t
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(path, f"cannot read ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError as e:  # a header that is not UTF-8 (pyarrow decodes column names lazily)
        raise DataError(path, f"column names are not UTF-8 text ({e.reason} at byte {e.start})") from None
    raise DataError(
        path, f"unsupported file type (expected one of {', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)})"
    )


def _column_names(path: Path) -> list[str]:
    """The header of a CSV / Parquet file (empty when it cannot be read: `_read_any` then says why)."""
    name = path.name.lower()
    try:
        if name.endswith(_PARQUET_SUFFIXES):
            return list(pq.read_schema(path).names)
        if name.endswith(_CSV_SUFFIXES):
            delim = "\t" if ".tsv" in name else ","
            opts = pacsv.ParseOptions(delimiter=delim)
            with pacsv.open_csv(path, parse_options=opts) as r:
                return list(r.schema.names)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError):
        pass
    return []


def _check_have(path: Path, have: list[str], need: list[str]) -> None:
    for c in need:
        if c not in have:
            raise DataError(path, f"missing column {c!r}")


def _no_nulls(path: Path, col: str, a: pa.ChunkedArray) -> None:
    if a.null_count:
        raise DataError(path, f"column {col!r} has {a.null_count} empty values")


def _check_ids(path: Path, col: str, a: pa.ChunkedArray) -> None:
    """An id column holds integers or non-empty text (no nulls, no lists or structs)."""
    _no_nulls(path, col, a)
    if pa.types.is_string(a.type) or pa.types.is_large_string(a.type):
        empty = pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(a)), 0)).as_py() or 0
        if empty:
            raise DataError(path, f"column {col!r} has {empty} empty ids")
    elif not pa.types.is_integer(a.type):
        raise DataError(path, f"column {col!r} must hold ids (integers or text), found type {a.type}")


def _as_nonneg_ints(a: pa.ChunkedArray) -> np.ndarray | None:
    """int64 ids when every value is an integer >= 0 (integer type or plain decimal text), else None."""
    if pa.types.is_integer(a.type):
        v = a.to_numpy().astype(np.int64)
        return v if (len(v) == 0 or v.min() >= 0) else None
    if pa.types.is_string(a.type) or pa.types.is_large_string(a.type):
        if not pc.all(pc.match_substring_regex(a, r"^(0|[1-9][0-9]{0,17})$")).as_py():
            return None  # 18 digits at most, so every accepted id fits in int64
        return pc.cast(a, pa.int64()).to_numpy()
    return None


def _map_ids(
    name: str, parts: list[tuple[Path, str, pa.ChunkedArray]], w: DatasetWriter, vocabs: dict[str, Any]
) -> list[np.ndarray]:
    """Map the id columns in `parts` (impressions first) to int64 together: kept as they are when all are
    integers >= 0, else through one vocabulary in order of first appearance, written to `vocab/<name>.parquet`."""
    for path, col, a in parts:
        _check_ids(path, col, a)
    ints = [_as_nonneg_ints(a) for _, _, a in parts]
    if all(v is not None for v in ints):
        return [v for v in ints if v is not None]
    texts = [pc.cast(a, pa.string()) for _, _, a in parts]
    raw = pc.unique(pa.chunked_array([c for t in texts for c in t.chunks], pa.string()))
    rel = f"vocab/{name}.parquet"
    _write_vocab(w, rel, raw)
    vocabs[name] = {"path": rel, "size": len(raw), "source_columns": [f"{p.name}:{c}" for p, c, _ in parts]}
    log.info("%s: %d raw ids mapped through %s", name, len(raw), rel)
    return [pc.index_in(t, value_set=raw).to_numpy().astype(np.int64) for t in texts]


def _write_vocab(w: DatasetWriter, rel: str, raw: pa.Array) -> None:
    f = resolve_under(w.extra_dir, rel)
    if f.exists():  # two columns whose names encode alike (never seen; refused rather than overwritten)
        raise DataError(f, "vocabulary file written twice (two columns with the same encoded name)")
    f.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"raw": raw, "id": np.arange(len(raw), dtype=np.int64)}), f)


def _label(path: Path, col: str, a: pa.ChunkedArray) -> np.ndarray:
    _no_nulls(path, col, a)
    if not (pa.types.is_integer(a.type) or pa.types.is_floating(a.type) or pa.types.is_boolean(a.type)):
        raise DataError(path, f"column {col!r} must hold 0/1 values, found type {a.type}")
    v = a.to_numpy().astype(np.float64)
    bad = v[(v != 0) & (v != 1)]
    if len(bad):
        raise DataError(path, f"column {col!r} must hold 0/1 values, found {bad[0]:g}")
    return v.astype(np.int8)


def _seconds(path: Path, col: str, a: pa.ChunkedArray, lo: int, hi: int) -> np.ndarray:
    """int64 unix seconds of a timestamp / integer / float column; every value must lie in [lo, hi]."""
    _no_nulls(path, col, a)
    if pa.types.is_timestamp(a.type):
        v = pc.cast(pc.cast(a, pa.timestamp("s"), safe=False), pa.int64()).to_numpy()
    elif pa.types.is_unsigned_integer(a.type):
        v = a.to_numpy().astype(np.float64)  # uint64 above int64's range must not wrap before the check
    elif pa.types.is_integer(a.type):
        v = a.to_numpy().astype(np.int64)
    elif pa.types.is_floating(a.type):
        v = a.to_numpy()
        if not np.isfinite(v).all():
            raise DataError(path, f"column {col!r} has non-finite values")
        v = np.floor(v)
    else:
        raise DataError(path, f"column {col!r} must hold unix seconds, found type {a.type}")
    bad = np.flatnonzero((v < lo) | (v > hi))
    if len(bad):
        raise DataError(
            path,
            f"column {col!r}: {len(bad)} timestamps outside {lo}..{hi} (e.g. {v[bad[0]]:.15g} on row "
            f"{int(bad[0]) + 1}); unix seconds expected (pass --ts-min/--ts-max or --any-ts to accept)",
        )
    return v.astype(np.int64)


def _features(
    table_name: str, path: Path, t: pa.Table, key: str, w: DatasetWriter, vocabs: dict[str, Any]
) -> tuple[dict[str, Any], list[ColumnSpec]]:
    """Feature columns of a users/items file, chosen by type (see the module docstring)."""
    data: dict[str, Any] = {}
    specs: list[ColumnSpec] = []
    for col in t.column_names:
        if col == key:
            continue
        a = t.column(col)
        if pa.types.is_boolean(a.type):
            _no_nulls(path, col, a)
            data[col], spec = (
                a.to_numpy(zero_copy_only=False).astype(np.int8),
                ColumnSpec(col, "int8", _K.CATEGORICAL, cardinality=2),
            )
        elif (
            pa.types.is_integer(a.type)
            and not a.null_count
            and (len(a) == 0 or 0 <= pc.min(a).as_py() and pc.max(a).as_py() < MAX_INT_CARDINALITY)
        ):
            card = int(pc.max(a).as_py() or 0) + 1
            dt = _cat_dtype(card)
            data[col], spec = a.to_numpy().astype(dt), ColumnSpec(col, dt, _K.CATEGORICAL, cardinality=card)
        elif pa.types.is_integer(a.type) or pa.types.is_floating(a.type):
            data[col], spec = (
                pc.cast(a, pa.float32(), safe=False).to_numpy(zero_copy_only=False),
                ColumnSpec(col, "float32", _K.NUMERIC),
            )
        elif pa.types.is_string(a.type) or pa.types.is_large_string(a.type):
            a = pc.fill_null(pc.cast(a, pa.string()), "")
            raw = pc.unique(a)
            rel = f"vocab/{table_name}.{safe_component(col)}.parquet"  # col is data, not a path
            _write_vocab(w, rel, raw)
            vocabs[f"{table_name}.{col}"] = {
                "path": rel,
                "size": len(raw),
                "source_columns": [f"{path.name}:{col}"],
            }
            dt = _cat_dtype(len(raw))
            codes = pc.index_in(a, value_set=raw).to_numpy().astype(dt)
            data[col], spec = (
                codes,
                ColumnSpec(col, dt, _K.CATEGORICAL, cardinality=max(len(raw), 1), doc=f"index into {rel}"),
            )
        else:
            raise DataError(path, f"column {col!r} has unsupported type {a.type}")
        specs.append(spec)
    return data, specs


def _context(
    path: Path, col: str, a: pa.ChunkedArray, w: DatasetWriter, vocabs: dict[str, Any]
) -> tuple[np.ndarray, ColumnSpec]:
    """A context column as categorical codes (see the module docstring): small non-negative integers and
    booleans as they are, anything else through a frequency-ordered vocabulary (code 0 = most common)."""
    _no_nulls(path, col, a)
    doc = f"context column {col!r} of {path.name}"
    if pa.types.is_boolean(a.type):
        return a.to_numpy(zero_copy_only=False).astype(np.int8), ColumnSpec(
            col, "int8", _K.CATEGORICAL, cardinality=2, doc=doc
        )
    if pa.types.is_integer(a.type):
        lo, hi = int(pc.min(a).as_py()), int(pc.max(a).as_py())
        if hi - lo < MAX_INT_CARDINALITY:  # e.g. a 1-based slot: code 0 is the top slot, the reference
            card = hi - lo + 1
            dt = _cat_dtype(card)
            v = (a.to_numpy().astype(np.int64) - lo).astype(dt)
            return v, ColumnSpec(col, dt, _K.CATEGORICAL, cardinality=card, doc=f"{doc}; code = value - {lo}")
    if pa.types.is_nested(a.type):
        raise DataError(path, f"context column {col!r} has unsupported type {a.type}")
    text = pc.cast(a, pa.string())
    counts = pc.value_counts(text)  # in order of first appearance; a stable sort keeps it for ties
    values, n = counts.field("values"), counts.field("counts").to_numpy()
    raw = values.take(pa.array(np.argsort(-n, kind="stable")))
    rel = f"vocab/context.{safe_component(col)}.parquet"  # col is data, not a path
    _write_vocab(w, rel, raw)
    vocabs[f"context.{col}"] = {"path": rel, "size": len(raw), "source_columns": [f"{path.name}:{col}"]}
    dt = _cat_dtype(len(raw))
    codes = pc.index_in(text, value_set=raw).to_numpy().astype(dt)
    return codes, ColumnSpec(
        col, dt, _K.CATEGORICAL, cardinality=len(raw), doc=f"{doc}; index into {rel} (by frequency)"
    )


MISSING_FLAG = "features_missing"


def _fill_missing(
    data: dict[str, Any], specs: list[ColumnSpec], n_missing: int
) -> tuple[dict[str, Any], list[ColumnSpec]]:
    """Append `n_missing` rows of explicit unknown values to a side table's feature columns: categorical ->
    a new last code (cardinality + 1), numeric -> the median of the known rows; plus `features_missing`."""
    out: dict[str, Any] = {}
    new_specs: list[ColumnSpec] = []
    n_known = 0
    for spec in specs:
        v = np.asarray(data[spec.name])
        n_known = len(v)
        if spec.kind is _K.CATEGORICAL:
            card = int(spec.cardinality or 1)
            dt = _cat_dtype(card + 1)
            out[spec.name] = np.r_[v.astype(dt), np.full(n_missing, card, dt)]
            doc = f"{spec.doc}; {card} = unknown (id missing from the file)".lstrip("; ")
            new_specs.append(ColumnSpec(spec.name, dt, _K.CATEGORICAL, cardinality=card + 1, doc=doc))
        else:  # numeric
            known = v[np.isfinite(v)]
            fill = np.float32(np.median(known)) if len(known) else np.float32(0.0)
            out[spec.name] = np.r_[v.astype(np.float32), np.full(n_missing, fill, np.float32)]
            doc = f"{spec.doc}; ids missing from the file hold the median {float(fill):g}".lstrip("; ")
            new_specs.append(ColumnSpec(spec.name, "float32", _K.NUMERIC, doc=doc))
    if not specs:
        n_known = -1
    out[MISSING_FLAG] = np.r_[np.zeros(max(n_known, 0), np.int8), np.ones(n_missing, np.int8)]
    flag_doc = "1: the id is missing from the side file, its features are unknown values"
    new_specs.append(ColumnSpec(MISSING_FLAG, "int8", _K.CATEGORICAL, cardinality=2, doc=flag_doc))
    return out, new_specs


def _log_features(
    name: str,
    path: Path,
    raw: pa.Table,
    fcols: tuple[str, ...],
    row_ids: np.ndarray,
    order: np.ndarray,
    ids: np.ndarray,
    w: DatasetWriter,
    vocabs: dict[str, Any],
) -> tuple[dict[str, Any], list[ColumnSpec]]:
    """Entity features from impression columns `fcols`, aligned to the table's `ids`: each id keeps the value
    of its first row in time (`order` sorts rows by ts, stably); ids without a row (only in the side file) get
    the explicit unknown values of `_fill_missing`."""
    first_ids, first = np.unique(row_ids[order], return_index=True)
    rows = pa.array(order[first])
    t = pa.table({_KEY: first_ids, **{fc: raw.column(fc).take(rows) for fc in fcols}})
    fdata, fspecs = _features(name, path, t, _KEY, w, vocabs)
    pos = np.minimum(np.searchsorted(first_ids, ids), len(first_ids) - 1)
    found = first_ids[pos] == ids
    if found.all():
        return {k: np.asarray(v)[pos] for k, v in fdata.items()}, fspecs
    filled, specs = _fill_missing(fdata, fspecs, 1)  # one unknown row appended at index len(first_ids)
    filled.pop(MISSING_FLAG)
    specs = [sp for sp in specs if sp.name != MISSING_FLAG]
    idx = np.where(found, pos, len(first_ids))
    return {k: np.asarray(v)[idx] for k, v in filled.items()}, specs


def import_generic(
    config: GenericImportConfig, out: str | Path, progress: Progress = no_progress, overwrite: bool = False
) -> dict:
    """Import a user's own impressions log (and optional users/items files) described by `config`."""
    t0 = time.perf_counter()
    c = config
    need = [c.user_col, c.item_col, c.ts_col, c.click_col] + ([c.conversion_col] if c.conversion_col else [])
    progress("read", 0, 1)
    have = _column_names(c.impressions) if c.context_cols else []
    need += [src for src, _ in c.context_map(have)]
    need += [*c.user_feature_cols, *c.item_feature_cols]
    raw = _read_any(c.impressions, need, [c.user_col, c.item_col])
    if raw.num_rows == 0:
        raise DataError(c.impressions, "no rows")
    lo, hi = (c.ts_min, c.ts_max) if c.ts_range_check else TS_LIMIT
    ts = _seconds(c.impressions, c.ts_col, raw.column(c.ts_col), lo, hi)
    ts, origin = c.period.rescale(ts)  # days and seconds rescaled together (adslog.periods)
    click = _label(c.impressions, c.click_col, raw.column(c.click_col))
    conv = _label(c.impressions, c.conversion_col, raw.column(c.conversion_col)) if c.conversion_col else None
    side: dict[str, tuple[Path, pa.Table]] = {}
    for name, f, col, reserved in (
        ("users", c.users, c.user_col, {"user_id"}),
        ("ads", c.items, c.item_col, {"ad_id", "advertiser_id", "first_day", "last_day"}),
    ):
        if f is not None:
            side[name] = (f, _read_any(f, [col], [col]))
            if c.missing_features == "unknown":
                reserved = reserved | {MISSING_FLAG}
            clash = sorted((set(side[name][1].column_names) - {col}) & reserved)
            if clash:
                raise DataError(f, f"column {clash[0]!r} clashes with a column the importer writes")
    progress("read", 1, 1)
    dropped = [n for n in raw.column_names if n not in need]
    if dropped:  # said by default: a dropped position or surface column changes what the models can learn
        log.warning(
            "%s: columns not imported: %s (--context-col NAME keeps one as context)", c.impressions, dropped
        )

    imp_cols = [*_BASE_IMPRESSIONS, *(_CONVERSION if conv is not None else ())]
    vocabs: dict[str, Any] = {}
    missing_filled: dict[str, int] = {}
    with DatasetWriter(out, c.impressions.stem, imp_cols, overwrite) as w:
        cols: dict[str, Any] = {"ts": ts, "day": day_of(ts).astype(np.int32)}
        context: dict[str, tuple[np.ndarray, ColumnSpec]] = {}
        for src, dest in c.context_map(raw.column_names):
            codes, spec = _context(c.impressions, src, raw.column(src), w, vocabs)
            context[dest] = (codes, ColumnSpec(dest, spec.dtype, spec.kind, spec.cardinality, doc=spec.doc))
        for stand_in in _SURFACE_POSITION:  # the model's context: declared columns, stand-ins where absent
            if stand_in.name not in context:
                context[stand_in.name] = (np.zeros(len(ts), np.int8), stand_in)
        w.columns["impressions"].update({spec.name: spec for _, spec in context.values()})
        tables: dict[str, tuple[dict[str, Any], list[ColumnSpec]]] = {}
        order = np.argsort(ts, kind="stable")  # rows in time: the first row of an id gives its log features
        for name, key, col in (("users", "user_id", c.user_col), ("ads", "ad_id", c.item_col)):
            parts = [(c.impressions, col, raw.column(col))] + (
                [(side[name][0], col, side[name][1].column(col))] if name in side else []
            )
            mapped = _map_ids(key, parts, w, vocabs)
            cols[key] = mapped[0]
            fcols = c.user_feature_cols if name == "users" else c.item_feature_cols
            if name not in side:
                ids = np.unique(mapped[0])
                data, specs = (
                    _log_features(name, c.impressions, raw, fcols, mapped[0], order, ids, w, vocabs)
                    if fcols
                    else ({}, [])
                )
                tables[name] = ({key: ids, **data}, [ColumnSpec(key, "int64", _K.ID), *specs])
                continue
            f, t = side[name]
            both = sorted(set(fcols) & set(t.column_names))
            if both:
                raise DataError(
                    f, f"column {both[0]!r} is also named as a feature column of {c.impressions.name}"
                )
            if len(np.unique(mapped[1])) != len(mapped[1]):
                raise DataError(f, f"duplicate {col} values")
            unknown = np.flatnonzero(~np.isin(mapped[0], mapped[1]))
            if len(unknown) and c.missing_features == "error":
                eg = raw.column(col)[int(unknown[0])].as_py()
                raise DataError(
                    c.impressions,
                    f"{len(unknown)} rows name a {col} missing from {f.name} (e.g. {eg!r}); "
                    "--missing-features unknown fills them with unknown values",
                )
            data, specs = _features(name, f, t, col, w, vocabs)
            ids = mapped[1]
            if c.missing_features == "unknown":
                missing = np.unique(mapped[0][unknown])
                data, specs = _fill_missing(data, specs, len(missing))
                ids = np.r_[ids, missing].astype(np.int64)
                missing_filled[name] = int(len(missing))
                if len(missing):
                    log.warning(
                        "%s: %d %s ids (%d rows) are missing from %s: their features are unknown values",
                        c.impressions,
                        len(missing),
                        col,
                        len(unknown),
                        f.name,
                    )
            if fcols:
                fdata, fspecs = _log_features(
                    name, c.impressions, raw, fcols, mapped[0], order, ids, w, vocabs
                )
                data, specs = {**data, **fdata}, [*specs, *fspecs]
            tables[name] = ({key: ids, **data}, [ColumnSpec(key, "int64", _K.ID), *specs])
        cols["click"] = click
        if conv is not None:
            cols["conversion"], cols["conversion_ts"] = conv, np.where(conv == 1, ts, -1)
        for name_, (codes, _) in context.items():
            cols[name_] = codes
        imp = pa.table(cols)
        span = _write_days(w, imp, progress)

        w.write_table("users", pa.table(tables["users"][0]), tables["users"][1])
        ad_data, ad_specs = tables["ads"]
        n_ads = len(ad_data["ad_id"])
        ad_data["advertiser_id"] = ad_data["ad_id"]
        ad_data["first_day"], ad_data["last_day"] = (np.full(n_ads, d, np.int32) for d in span[:2])
        adv = ColumnSpec("advertiser_id", "int64", _K.ID, doc="stand-in: = ad_id")
        w.write_table("ads", pa.table(ad_data), [ad_specs[0], adv, *ad_specs[1:], *_LIVE])

        stand_ins = {
            **{
                x: "0 for every row (cardinality 1)"
                for x in ("surface", "position")
                if x not in {dest for _, dest in c.context_map(raw.column_names)}
            },
            "advertiser_id": "= ad_id",
            "first_day/last_day": "every item live from the first to the last day of the log",
        }
        for name_, n_filled in missing_filled.items():
            if n_filled:
                stand_ins[f"{name_} features"] = (
                    f"{n_filled} ids missing from the side file: unknown values, {MISSING_FLAG} = 1"
                )
        if conv is not None:
            stand_ins["conversion_ts"] = "= ts of the impression when it converted, else -1"
        source = {
            "name": "generic",
            "config": c.to_json(),
            "files": [_file_info(f) for f in (c.impressions, *(p for p, _ in side.values()))],
            "stand_ins": stand_ins,
            "ts": "unix seconds; float seconds are floored"
            + (
                f"; rescaled to {c.period.days}-day periods (adslog.periods)"
                if c.period.days > 1
                else "; rescaled to periods between cut points (adslog.periods)"
                if c.period.cuts
                else ""
            ),
        }
        summary = _summary(w.name, w.out, imp, len(tables["users"][0]["user_id"]), n_ads, span)
        summary["vocabularies"] = sorted(vocabs)
        summary["context_columns"] = {dest: src for src, dest in c.context_map(raw.column_names)}
        for name_, n_filled in missing_filled.items():
            summary[f"{name_}_missing_features"] = n_filled
        period = c.period.to_json(origin)
        summary["period"] = period["name"]
        w.finish(span[0], span[1], source=source, stats=dict(summary), vocabularies=vocabs, period=period)
    return _done(summary, t0)
