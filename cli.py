"""`derm`: the command-line interface. Thin: each command builds a config, calls one library function and
prints its result (a summary, or one JSON document with --json). Library errors become `Error: ...` on stderr
and exit code 1; nothing else is printed then."""

from __future__ import annotations

import json
import logging
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dermcore.artifact import json_default
from dermcore.errors import DermError

log = logging.getLogger("derm")

DEVICE = click.Choice(["auto", "cpu", "cuda"])
# Every integer option is range-checked by click (`Error: Invalid value for '--day'...`, exit 2), so no value
# reaches the library as an overflow or a nonsense size: days fit the int32 day column, ids int64.
DAY = click.IntRange(-(2**31), 2**31 - 1)
ID64 = click.IntRange(-(2**63), 2**63 - 1)
POSITIVE = click.IntRange(1, 2**31 - 1)
NONNEG = click.IntRange(0, 2**31 - 1)
SEED = click.IntRange(0, 2**32 - 1)
TS = click.IntRange(-(2**31) * 86400, (2**31 - 1) * 86400)


# -- output helpers -----------------------------------------------------------------------------------------
class Bars:
    """Progress callback: one `click.progressbar` per stage on stderr, only on a terminal and never with --json
    (click draws the bar, the rate and the ETA)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._stage = ""
        self._bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self._stage or self._bar is None or total != self._bar.length:
            self._close()
            self._stage = stage
            self._bar = click.progressbar(length=max(total, 1), label=f"{stage:<14}", file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done - self._bar.pos)
        if done >= total:
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        self._bar, self._stage = None, ""


def _setup(as_json: bool, verbose: int = 0, epochs: dict[str, int] | None = None) -> Any:
    """Logging and the progress callback: bars on a terminal; with -v, INFO lines instead (one per epoch for
    the stages in `epochs`, else per quarter of a stage); third-party loader noise (faiss) only with -vv."""
    logging.basicConfig(
        level=logging.ERROR if as_json else (logging.INFO if verbose else logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("faiss").setLevel(logging.NOTSET if int(verbose) >= 2 else logging.WARNING)
    if as_json:
        warnings.simplefilter("ignore")
    if verbose and not as_json:
        from dermcore.progress import ProgressLog

        return ProgressLog(logging.getLogger("derm.progress"), marks=epochs)
    return Bars(not as_json)


def _emit(obj: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, default=json_default))
    else:
        click.echo(human(obj))


def _kv(d: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in d.items() if not isinstance(v, dict | list))


class DermGroup(click.Group):
    """Turns domain errors (`DermError`, config validation included: `ConfigError`), option range errors and
    OS errors into one `Error: ...` line, exit code 1. Anything else is a bug: one `Internal error` line (the
    traceback too with -v), exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DermError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)
        except click.BadParameter as e:  # an option out of its range: bad input like any other, one line
            click.echo(f"Error: {e.format_message()}", err=True)
            ctx.exit(1)
        except OSError as e:  # disk full, permission denied, read-only file system: the path and the reason
            where = e.filename if e.filename is not None else "I/O"
            click.echo(f"Error: {where}: {e.strerror or e}", err=True)
            ctx.exit(1)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as e:  # a bug, not bad input: say so, exit 2; the traceback with -v
            if (ctx.find_root().obj or {}).get("verbose"):
                traceback.print_exc()
            click.echo(
                f"Internal error (a bug in derm): {type(e).__name__}: {e}; rerun with -v for the traceback",
                err=True,
            )
            ctx.exit(2)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
work_option = click.option(
    "--work", required=True, type=click.Path(file_okay=False), help="Workspace directory."
)
data_option = click.option(
    "--data",
    type=click.Path(),
    default=None,
    help="Dataset directory (default: the one the workspace is bound to).",
)
device_option = click.option(
    "--device", type=DEVICE, default="auto", show_default=True, help="Where compute runs."
)


def _workspace(work: str, data: str | None) -> Any:
    from adslog.workspace import Workspace

    return Workspace.open(work, data)


# -- the CLI ------------------------------------------------------------------------------------------------
@click.group(cls=DermGroup)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log progress to stderr (a line per epoch or stage); -vv adds third-party loader messages.",
)
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """derm: ads candidate generation and ranking with decoupled entity representations (DERM)."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


@main.group(cls=DermGroup)
def data() -> None:
    """Create datasets: the synthetic ads log, or imports of real logs."""


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--users", type=POSITIVE, default=None, help="Number of users (default 10,000).")
@click.option(
    "--ads", type=POSITIVE, default=None, help="Number of ads over the whole period (default 6,000)."
)
@click.option("--days", type=POSITIVE, default=None, help="Number of days (default 14).")
@click.option(
    "--impressions-per-day", type=POSITIVE, default=None, help="Impressions per day (default 100,000)."
)
@click.option("--seed", type=SEED, default=None, help="Random seed (default 0).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at OUT.")
@json_option
@click.pass_context
def data_synth(
    ctx: click.Context,
    out: str,
    users: int | None,
    ads: int | None,
    days: int | None,
    impressions_per_day: int | None,
    seed: int | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Generate the built-in synthetic ads log into OUT."""
    from adslog.synth import SynthConfig, generate

    bars = _setup(as_json, ctx.obj["verbose"])
    given = {
        "n_users": users,
        "n_ads": ads,
        "n_days": days,
        "impressions_per_day": impressions_per_day,
        "seed": seed,
    }
    if ads is not None:  # keep the default 15 ads per advertiser when the ad count is scaled
        given["n_advertisers"] = max(1, min(SynthConfig.n_advertisers, ads // 15))
    cfg = SynthConfig(**{k: v for k, v in given.items() if v is not None})
    stats = generate(cfg, out, bars, overwrite=overwrite)
    _emit(
        {"out": str(Path(out).resolve()), "stats": stats},
        as_json,
        lambda o: f"wrote {o['out']}\n" + _kv(o["stats"]),
    )


@data.command("inspect")
@click.argument("data_dir", metavar="DATA", type=click.Path(file_okay=False))
@click.option(
    "--min-clicks", type=NONNEG, default=20, show_default=True, help="Periods with fewer clicks are sparse."
)
@json_option
@click.pass_context
def data_inspect(ctx: click.Context, data_dir: str, min_clicks: int, as_json: bool) -> None:
    """Rows, users, items, clicks and live items per period; empty and sparse periods; a suggested split."""
    from adslog.dataset import Dataset
    from adslog.inspect import InspectConfig, inspect_dataset, inspect_text

    bars = _setup(as_json, ctx.obj["verbose"])
    doc = inspect_dataset(Dataset.open(data_dir), InspectConfig(min_clicks=min_clicks), bars)
    _emit(doc, as_json, inspect_text)


@data.group("import", cls=DermGroup)
def data_import() -> None:
    """Import a real log (MovieLens-100K, Gowalla, or your own CSV/Parquet)."""


@data_import.command("movielens-100k")
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--period", default="day", show_default=True, help="Time bucket: day, week or <N>d (timestamps rescaled)."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at OUT.")
@json_option
@click.pass_context
def import_movielens(
    ctx: click.Context, src: str, out: str, period: str, overwrite: bool, as_json: bool
) -> None:
    """Import RecBole's ml-100k files (click = rating >= 4, conversion = rating == 5: stand-ins)."""
    from adslog.importers import import_movielens_100k
    from adslog.periods import Period

    bars = _setup(as_json, ctx.obj["verbose"])
    _emit(import_movielens_100k(src, out, bars, overwrite, Period.parse(period)), as_json, _kv)


@data_import.command("gowalla")
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at OUT.")
@json_option
@click.pass_context
def import_gowalla_cmd(ctx: click.Context, src: str, out: str, overwrite: bool, as_json: bool) -> None:
    """Import the LightGCN Gowalla split (train = day 0, test = day 1, every pair a click)."""
    from adslog.importers import import_gowalla

    bars = _setup(as_json, ctx.obj["verbose"])
    _emit(import_gowalla(src, out, bars, overwrite), as_json, _kv)


@data_import.command("generic")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--impressions", required=True, type=click.Path(), help="CSV or Parquet log, one row per impression."
)
@click.option("--user-col", required=True, help="Column holding the user id.")
@click.option("--item-col", required=True, help="Column holding the ad / item id.")
@click.option("--ts-col", required=True, help="Column holding unix seconds.")
@click.option("--click-col", required=True, help="Column holding the 0/1 click label.")
@click.option("--conversion-col", default=None, help="Column holding a 0/1 conversion label.")
@click.option("--users", type=click.Path(), default=None, help="Optional users file (features).")
@click.option("--items", type=click.Path(), default=None, help="Optional items file (features).")
@click.option(
    "--ts-min", type=TS, default=None, help="Earliest plausible unix second (default 0, 1970-01-01)."
)
@click.option(
    "--ts-max", type=TS, default=None, help="Latest plausible unix second (default 4102444800, 2100-01-01)."
)
@click.option("--any-ts", is_flag=True, help="Accept timestamps outside the plausible range.")
@click.option(
    "--context-col",
    "context_cols",
    multiple=True,
    help="Keep this impressions column as context (repeatable); SRC=NAME stores it as NAME, e.g. "
    "pos=position, so serving fixes it to the top slot.",
)
@click.option(
    "--user-feature-col",
    "user_feature_cols",
    multiple=True,
    help="An impressions column describing the user (repeatable): each user keeps its first row's value.",
)
@click.option(
    "--item-feature-col",
    "item_feature_cols",
    multiple=True,
    help="An impressions column describing the item (repeatable): each item keeps its first row's value.",
)
@click.option(
    "--missing-features",
    type=click.Choice(["error", "unknown"]),
    default="error",
    show_default=True,
    help="Users / items missing from --users / --items: refuse, or fill with explicit unknown values.",
)
@click.option(
    "--period",
    default="day",
    show_default=True,
    help="Time bucket of the dataset's days: day, week or <N>d; timestamps are rescaled with it.",
)
@click.option(
    "--cuts",
    default=None,
    help="Explicit period starts instead of --period: comma-separated ISO dates or unix seconds "
    "(e.g. short periods while the log is dense, long ones later).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at OUT.")
@json_option
@click.pass_context
def import_generic_cmd(
    ctx: click.Context,
    out: str,
    impressions: str,
    user_col: str,
    item_col: str,
    ts_col: str,
    click_col: str,
    conversion_col: str | None,
    users: str | None,
    items: str | None,
    ts_min: int | None,
    ts_max: int | None,
    any_ts: bool,
    context_cols: tuple[str, ...],
    user_feature_cols: tuple[str, ...],
    item_feature_cols: tuple[str, ...],
    missing_features: str,
    period: str,
    cuts: str | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Import your own log; string ids get a stored vocabulary."""
    from adslog.importers import TS_MAX, TS_MIN, GenericImportConfig, import_generic

    bars = _setup(as_json, ctx.obj["verbose"])
    cfg = GenericImportConfig(
        impressions=Path(impressions),
        user_col=user_col,
        item_col=item_col,
        ts_col=ts_col,
        click_col=click_col,
        conversion_col=conversion_col,
        users=Path(users) if users else None,
        items=Path(items) if items else None,
        ts_min=TS_MIN if ts_min is None else ts_min,
        ts_max=TS_MAX if ts_max is None else ts_max,
        ts_range_check=not any_ts,
        context_cols=context_cols,
        user_feature_cols=user_feature_cols,
        item_feature_cols=item_feature_cols,
        missing_features=missing_features,
        period=_period(period, cuts),
    )
    _emit(import_generic(cfg, out, bars, overwrite), as_json, _kv)


def _period(period: str, cuts: str | None) -> Any:
    from adslog.periods import Period

    if cuts is None:
        return Period.parse(period)
    if period != "day":
        raise DermError("--cuts and --period: give one of them")
    return Period.from_cuts(cuts)


@main.command()
@work_option
@data_option
@click.option(
    "--first-day", type=DAY, default=None, help="First training day (default: the data's first day)."
)
@click.option("--last-day", type=DAY, default=None, help="Last training day (default: first day + 6).")
@click.option(
    "--task", type=click.Choice(["ctr", "cvr"]), default="ctr", show_default=True, help="Upstream model."
)
@click.option("--epochs", type=POSITIVE, default=None, help="Epochs over the window (default 2).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")
@click.option(
    "--backbone",
    type=click.Choice(["dhen", "mlp", "sum"]),
    default=None,
    help="Tower backbone (default: the workspace's, else dhen); kept in cycle.json for the daily cycle.",
)
@click.option("--overwrite", is_flag=True, help="Retrain even if the snapshot exists (starts a new lineage).")
@device_option
@json_option
@click.pass_context
def train(
    ctx: click.Context,
    work: str,
    data: str | None,
    first_day: int | None,
    last_day: int | None,
    task: str,
    epochs: int | None,
    seed: int,
    backbone: str | None,
    overwrite: bool,
    device: str,
    as_json: bool,
) -> None:
    """Train the upstream user, Pin and interaction towers from scratch on a window of days."""
    from workflow.ops import TrainOptions, progress_marks, train_models

    _setup(as_json, ctx.obj["verbose"])
    ws = _workspace(work, data)
    opts = TrainOptions(first_day, last_day, task, epochs, seed, backbone, overwrite, device)
    bars = _setup(as_json, ctx.obj["verbose"], progress_marks(ws, opts))
    _emit(train_models(ws, opts, bars).to_json(), as_json, _kv)


@main.command()
@work_option
@click.option("--day", type=DAY, default=None, help="Day to embed (default: the latest snapshot's day).")
@click.option("--from", "day_from", type=DAY, default=None, help="First day of a range (back inference).")
@click.option("--to", "day_to", type=DAY, default=None, help="Last day of a range.")
@click.option(
    "--task", type=click.Choice(["ctr", "cvr"]), default="ctr", show_default=True, help="Upstream model."
)
@click.option("--overwrite", is_flag=True, help="Recompute a published version.")
@device_option
@json_option
@click.pass_context
def embed(
    ctx: click.Context,
    work: str,
    day: int | None,
    day_from: int | None,
    day_to: int | None,
    task: str,
    overwrite: bool,
    device: str,
    as_json: bool,
) -> None:
    """Embed a day's active users and ads and publish the aggregated store version.

    Days up to the snapshot's last training day are back inference (allowed only to train downstream models)."""
    from workflow.ops import EmbedOptions, embed_days

    bars = _setup(as_json, ctx.obj["verbose"])
    opts = EmbedOptions(day, day_from, day_to, task, overwrite, device)
    _emit(embed_days(_workspace(work, None), opts, bars).to_json(), as_json, _embed_text)


def _embed_text(o: dict[str, Any]) -> str:
    return "\n".join(
        f"day {v['day']}: {v['stats']['user']['n_pool']} users, {v['stats']['ad']['n_pool']} ads in the pool"
        for v in o["versions"]
    )


@main.group(cls=DermGroup)
def config() -> None:
    """Show or change the workspace's cycle config (WORK/cycle.json): what every later daily cycle uses."""


@config.command("show")
@work_option
@json_option
@click.pass_context
def config_show(ctx: click.Context, work: str, as_json: bool) -> None:
    """Print the cycle config, one `key = value` line per setting."""
    from workflow.cycle import load_cycle_config

    _setup(as_json, ctx.obj["verbose"])
    _emit(load_cycle_config(_workspace(work, None)).to_json(), as_json, _config_text)


@config.command("set")
@work_option
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
@json_option
@click.pass_context
def config_set(ctx: click.Context, work: str, assignments: tuple[str, ...], as_json: bool) -> None:
    """Set cycle config keys (e.g. index.spec=HNSW32,Flat ranker.lr=0.001): validated as a whole, then saved
    under the workspace lock; values are JSON (numbers, true, null, lists) or plain strings."""
    from workflow.cycle import set_cycle_config

    _setup(as_json, ctx.obj["verbose"])
    pairs = dict(a.split("=", 1) for a in assignments if "=" in a)
    if len(pairs) != len(assignments):
        raise click.BadParameter("each assignment is KEY=VALUE", param_hint="KEY=VALUE")
    _emit(set_cycle_config(_workspace(work, None), pairs).to_json(), as_json, _config_text)


def _config_text(d: dict[str, Any], prefix: str = "") -> str:
    lines = []
    for k, v in d.items():
        lines.append(
            _config_text(v, f"{prefix}{k}.") if isinstance(v, dict) else f"{prefix}{k} = {json.dumps(v)}"
        )
    return "\n".join(lines)


@main.group(cls=DermGroup)
def index() -> None:
    """Build and inspect ANN indices over the pooled ad embeddings."""


@index.command("build")
@work_option
@click.option("--day", type=DAY, default=None, help="Store version to index (default: the latest).")
@click.option(
    "--backend", type=click.Choice(["faiss", "hnswlib"]), default=None, help="Index library (default faiss)."
)
@click.option(
    "--spec",
    default=None,
    help='faiss factory string ("Flat", "IVF1024,Flat", "HNSW32,Flat") or hnswlib "HNSW32".',
)
@click.option(
    "--nprobe", type=POSITIVE, default=None, help="Default IVF lists visited per query (query-time)."
)
@click.option("--ef", type=POSITIVE, default=None, help="Default HNSW search beam width (query-time).")
@click.option("--overwrite", is_flag=True, help="Rebuild a published index version.")
@device_option
@json_option
@click.pass_context
def index_build(
    ctx: click.Context,
    work: str,
    day: int | None,
    backend: str | None,
    spec: str | None,
    nprobe: int | None,
    ef: int | None,
    overwrite: bool,
    device: str,
    as_json: bool,
) -> None:
    """Build the ad index over an embedding store version from scratch and publish it (with a recall self-check).
    --backend / --spec apply to this version only (`derm config set` changes the daily cycle's)."""
    from workflow.ops import IndexOptions, build_index

    _setup(as_json, ctx.obj["verbose"])
    opts = IndexOptions(
        day, backend=backend, spec=spec, nprobe=nprobe, ef=ef, overwrite=overwrite, device=device
    )
    _emit(build_index(_workspace(work, None), opts).to_json(), as_json, _index_text)


@index.command("refresh")
@work_option
@click.option("--day", type=DAY, default=None, help="Store version to index (default: the latest).")
@click.option(
    "--mode",
    type=click.Choice(["auto", "in_place", "rebuild"]),
    default="auto",
    show_default=True,
    help="auto: update the previous version in place when few ads changed and the index allows it.",
)
@click.option("--overwrite", is_flag=True, help="Recompute a published index version.")
@device_option
@json_option
@click.pass_context
def index_refresh(
    ctx: click.Context, work: str, day: int | None, mode: str, overwrite: bool, device: str, as_json: bool
) -> None:
    """Publish the index of a store version from the previous index version: in place or rebuilt."""
    from index.refresh import RefreshMode
    from workflow.ops import IndexOptions, build_index

    _setup(as_json, ctx.obj["verbose"])
    opts = IndexOptions(day, RefreshMode(mode), overwrite=overwrite, device=device)
    _emit(build_index(_workspace(work, None), opts).to_json(), as_json, _index_text)


@index.command("tune")
@work_option
@click.option("--day", type=DAY, default=None, help="Index version to tune (default: LATEST).")
@click.option("--k", type=POSITIVE, default=100, show_default=True, help="Recall@k against exact search.")
@click.option(
    "--queries", "n_queries", type=POSITIVE, default=1000, show_default=True, help="User embeddings used."
)
@click.option(
    "--values", default=None, help="Comma-separated nprobe / ef values (default: a ladder for the index)."
)
@json_option
@click.pass_context
def index_tune(
    ctx: click.Context, work: str, day: int | None, k: int, n_queries: int, values: str | None, as_json: bool
) -> None:
    """Sweep ef / nprobe of an index version: recall@k against exact search and queries per second."""
    from index.versions import tune_workspace_index

    _setup(as_json, ctx.obj["verbose"])
    vals = None if values is None else list(_ints("--values", values))
    _emit(tune_workspace_index(_workspace(work, None), day, k, n_queries, vals), as_json, _tune_text)


def _ints(option: str, text: str, what: str = "value") -> tuple[int, ...]:
    """A comma-separated list of integers >= 1 (DermError naming the option otherwise)."""
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DermError(f"{option}: not a comma-separated list of integers: {text!r}") from None
    if not vals or min(vals) < 1:
        raise DermError(f"{option}: give at least one {what} >= 1")
    return vals


def _tune_text(o: dict[str, Any]) -> str:
    knob = o["knob"] or "exact"
    head = f"{o['backend']} {o['spec']!r}, recall@{o['k']} over {o['n_queries']} queries"
    head += f" (default {knob} {o['default']})" if o["knob"] else ""
    rows = [f"{knob:>8}  recall@{o['k']:<5} QPS"]
    rows += [f"{str(p['value'] or '-'):>8}  {p['recall_at_k']:<12.4f} {p['qps']:,.0f}" for p in o["points"]]
    return head + "\n" + "\n".join(rows)


def _index_text(o: dict[str, Any]) -> str:
    sc, r = o["self_check"] or {}, o["refresh"] or {}
    sp = {k: v for k, v in (o["search_params"] or {}).items() if v is not None}
    out = _kv(o) + f"\nsearch params: {sp or 'none (exact)'}"
    out += f"\nself-check recall@{sc.get('k')}: {sc.get('recall')}"
    if r:
        out += (
            f"\nrefresh: {r.get('mode')} ({r.get('reason')}): +{r.get('added')} -{r.get('removed')} "
            f"~{r.get('replaced')} in {r.get('seconds')} s"
        )
    return out


@main.group(cls=DermGroup)
def ranker() -> None:
    """Train the downstream ranker."""


@ranker.command("train")
@work_option
@click.option(
    "--first-day", type=DAY, default=None, help="First training day (default: the data's first day)."
)
@click.option(
    "--last-day", type=DAY, default=None, help="Last training day (default: the latest store version's day)."
)
@click.option(
    "--epochs", type=POSITIVE, default=None, help="Epochs (default: the workspace's ranker config)."
)
@click.option("--seed", type=SEED, default=None, help="Random seed (default: the workspace's ranker config).")
@click.option("--overwrite", is_flag=True, help="Retrain a published ranker version.")
@device_option
@json_option
@click.pass_context
def ranker_train(
    ctx: click.Context,
    work: str,
    first_day: int | None,
    last_day: int | None,
    epochs: int | None,
    seed: int | None,
    overwrite: bool,
    device: str,
    as_json: bool,
) -> None:
    """Train the ranker from scratch; day d's rows use the embeddings published before d. --epochs and --seed
    apply to this training (recorded in the ranker's manifest), not to cycle.json."""
    from workflow.ops import RankerOptions, progress_marks, train_ranker_op

    _setup(as_json, ctx.obj["verbose"])
    ws = _workspace(work, None)
    opts = RankerOptions(first_day, last_day, epochs, seed, overwrite, device)
    bars = _setup(as_json, ctx.obj["verbose"], progress_marks(ws, opts))
    _emit(train_ranker_op(ws, opts, bars).to_json(), as_json, _kv)


@main.command()
@work_option
@data_option
@click.option("--day", type=DAY, default=None, help="Day to run.")
@click.option("--from", "day_from", type=DAY, default=None, help="First day of a range.")
@click.option("--to", "day_to", type=DAY, default=None, help="Last day of a range.")
@click.option("--overwrite", is_flag=True, help="Recompute days that are already published.")
@device_option
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Where the day's inference runs, for this run only (default: the cycle config's `engine`); "
    "ray needs pip install 'derm[dist]'.",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join (auto, ray://HEAD:10001); default: RAY_ADDRESS or a new local instance.",
)
@click.option(
    "--train-workers",
    type=int,
    default=None,
    help="With the ray engine: train the towers and the ranker on N data-parallel Ray workers (torch DDP), "
    "for this run only (default: the cycle config's `train_workers`).",
)
@json_option
@click.pass_context
def daily(
    ctx: click.Context,
    work: str,
    data: str | None,
    day: int | None,
    day_from: int | None,
    day_to: int | None,
    overwrite: bool,
    device: str,
    engine: str | None,
    address: str | None,
    train_workers: int | None,
    as_json: bool,
) -> None:
    """Run the daily cycle: evaluate the day, train one increment, embed, aggregate, index, refresh the ranker."""
    from workflow.ops import DailyOptions, run_daily

    bars = _setup(as_json, ctx.obj["verbose"])
    opts = DailyOptions(day, day_from, day_to, overwrite, device, engine, address, train_workers)
    _emit(run_daily(_workspace(work, data), opts, bars).to_json(), as_json, _daily_text)


def _daily_text(o: dict[str, Any]) -> str:
    return "\n".join(
        f"day {d['day']}: {'skipped (already published)' if d['skipped'] else 'done'}; recall@k {d['recall_at_k']}, "
        f"ROC-AUC {d['roc_auc']}" + "".join(f"\n  WARNING {w['code']}: {w['message']}" for w in d["warnings"])
        for d in o["days"]
    )


@main.command()
@work_option
@click.option("--user", "user_id", required=True, type=ID64, help="User id.")
@click.option("--k", type=POSITIVE, default=50, show_default=True, help="Number of results.")
@click.option(
    "--candidates", type=POSITIVE, default=500, show_default=True, help="ANN candidates to rank (>= k)."
)
@click.option(
    "--order",
    type=click.Choice(["ecpm", "rank_score"]),
    default="ecpm",
    show_default=True,
    help="Final order: expected value (1000 x bid x p_ctr [x p_cvr for conversion campaigns]) or p_ctr alone.",
)
@click.option(
    "--max-per-advertiser",
    type=NONNEG,
    default=3,
    show_default=True,
    help="At most N ads of one advertiser in the top k (0: no cap).",
)
@click.option("--day", type=DAY, default=None, help="Query day (default: the day after the latest version).")
@device_option
@json_option
@click.pass_context
def query(
    ctx: click.Context,
    work: str,
    user_id: int,
    k: int,
    candidates: int,
    order: str,
    max_per_advertiser: int,
    day: int | None,
    device: str,
    as_json: bool,
) -> None:
    """Retrieve live ads for a user by ANN, score them with the ranker and print the top k by eCPM."""
    from adserving.auction import Order
    from adserving.two_stage import ServeConfig
    from adserving.two_stage import query as run_query

    _setup(as_json, ctx.obj["verbose"])
    cap = max_per_advertiser or None
    cfg = ServeConfig(k=k, candidates=candidates, order=Order(order), max_per_advertiser=cap)
    res = run_query(_workspace(work, None), user_id, cfg, day, device)
    _emit(res, as_json, _query_table)


def _query_table(res: dict[str, Any]) -> str:
    head = (
        f"user {res['user_id']}, day {res['day']}, path {res['path']}, order {res['config']['order']}; "
        + ", ".join(f"{k} {v}" for k, v in res["versions"].items())
    )
    rows = [
        f"{'rank':>4} {'ad_id':>14} {'advertiser_id':>14} {'score':>7} {'p_ctr':>7} {'p_cvr':>7} {'ecpm':>9}"
    ]
    for r in res["results"]:
        score = "-" if r["score"] is None else f"{r['score']:.3f}"
        rows.append(
            f"{r['rank']:>4} {r['ad_id']:>14} {r['advertiser_id']:>14} {score:>7} {r['p_ctr']:>7.4f} "
            f"{r['p_cvr']:>7.4f} {r['ecpm']:>9.3f}"
        )
    return "\n".join([head, *rows])


@main.command("eval")
@work_option
@data_option
@click.option("--day", type=DAY, default=None, help="Day to evaluate (default: the data's last day).")
@click.option("--k", "ks", default="20,100", show_default=True, help="Comma-separated K values.")
@click.option(
    "--report",
    "report_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Also write DIR/report.md and its figures (recall@K, AUC and embeddings by day, ANN recall vs QPS); "
    "with --json the document gains a `report` key listing them.",
)
@device_option
@json_option
@click.pass_context
def eval_cmd(
    ctx: click.Context,
    work: str,
    data: str | None,
    day: int | None,
    ks: str,
    report_dir: str | None,
    device: str,
    as_json: bool,
) -> None:
    """Evaluate a day with the versions published before it: recall@K, AUCs, embedding stats."""
    from workflow.ops import EvalOptions, evaluate

    bars = _setup(as_json, ctx.obj["verbose"])
    opts = EvalOptions(day, _ints("--k", ks, "K"), report_dir, device)
    _emit(evaluate(_workspace(work, data), opts, bars), as_json, _eval_text)


def _eval_text(d: dict[str, Any]) -> str:
    from eval.warnings import warning_lines
    from workflow.report import summary_table

    lines = [f"day {d['day']} (embeddings of day {d['embedding_day']})", *summary_table(d), *warning_lines(d)]
    if "report" in d:
        rep = d["report"]
        lines.append(f"report: {Path(rep['dir']) / 'report.md'} ({', '.join(rep['files'][1:])})")
    return "\n".join(lines)


@main.command()
@click.option(
    "--work", default="demo", show_default=True, type=click.Path(file_okay=False), help="Workspace directory."
)
@click.option(
    "--kge",
    "with_kge",
    is_flag=True,
    help="Also build the onsite-offsite graph, train TransRA and publish its store family each day; the ranker "
    "fine-tunes KGE ID tables with target attention (issue 14).",
)
@device_option
@json_option
@click.pass_context
def demo(ctx: click.Context, work: str, with_kge: bool, device: str, as_json: bool) -> None:
    """Run the whole system on the built-in synthetic ads log and report (resumes after an interruption)."""
    from dataclasses import replace

    from workflow.demo import DemoConfig, run_demo

    bars = _setup(as_json, ctx.obj["verbose"])
    cfg = DemoConfig().with_kge() if with_kge else DemoConfig()
    s = run_demo(work, replace(cfg, cycle=replace(cfg.cycle, device=device)), progress=bars)
    _emit(s, as_json, lambda s: _demo_text(s, work))


def _demo_text(s: dict[str, Any], work: str) -> str:
    from eval.warnings import warning_lines
    from workflow.report import summary_table

    lines = [
        f"derm demo: evaluated day {s['eval_day']} (trained on {len(s['train_days'])} days, "
        f"{len(s['daily_days'])} daily cycles)",
        "",
        *summary_table(s["report"]),
        *warning_lines(s["report"]),
        "",
        "stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in s["stage_seconds"].items()),
        f"total: {s['total_seconds']:.1f} s",
        f"report: {Path(work).resolve() / 'report.md'}",
    ]
    return "\n".join(lines)


@main.command("run")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None, help="Dataset directory.")
@click.option("--work", type=click.Path(file_okay=False), default=None, help="Workspace directory.")
@click.option(
    "--train-periods",
    type=POSITIVE,
    default=None,
    help="Bootstrap on the first N periods (default: the config's, else `derm data inspect`'s suggestion).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML or JSON run config (towers, ranker, aggregation, index, warnings; see --show-config).",
)
@click.option(
    "--show-config", is_flag=True, help="Print the resolved config, every key documented, and exit."
)
@device_option
@json_option
@click.pass_context
def run_cmd(
    ctx: click.Context,
    data_dir: str | None,
    work: str | None,
    train_periods: int | None,
    config_file: str | None,
    show_config: bool,
    device: str,
    as_json: bool,
) -> None:
    """Run your own dataset end to end: bootstrap on the first periods, the daily cycle over the rest, evaluate
    every later period, report (resumes after an interruption). --json prints the last period's eval document."""
    from workflow.ops import RunOptions, resolve_run_config, run_own
    from workflow.run_config import config_text

    bars = _setup(as_json, ctx.obj["verbose"])
    opts = RunOptions(work, data_dir, train_periods, config_file, device)
    if show_config:
        cfg = resolve_run_config(opts)
        _emit(cfg.to_json(), as_json, lambda _: config_text(cfg))
        return
    s = run_own(opts, bars)
    _emit(s["report"] if as_json else s, as_json, lambda s: _run_text(s, str(work)))


def _run_text(s: dict[str, Any], work: str) -> str:
    from eval.warnings import warning_lines
    from workflow.report import summary_table
    from workflow.run import period_table

    doc = s["report"]
    lines = [
        f"derm run: bootstrap on periods {s['train_days'][0]}..{s['train_days'][-1]} ({s['train_periods']} "
        f"{s['dataset_period']['name']} periods, from {s['train_periods_from']}), {len(s['daily_days'])} daily "
        f"cycles, {len(s['skipped_empty'])} empty periods skipped; evaluated period {s['eval_day']}",
        "",
        *period_table(s["periods"]),
        "",
        f"period {doc['day']} (embeddings of {doc['embedding_day']}):",
        *summary_table(doc),
        *warning_lines(doc),
        "",
        f"total: {s['total_seconds']:.1f} s; report: {Path(work).resolve() / 'report.md'}",
        f"next: derm eval --work {work} --day {doc['day']}; derm query --work {work} --user ID",
    ]
    return "\n".join(lines)


@main.command()
@work_option
@click.option("--to", "to_day", required=True, type=DAY, help="Day whose versions become live again.")
@json_option
@click.pass_context
def rollback(ctx: click.Context, work: str, to_day: int, as_json: bool) -> None:
    """Point LATEST of models, embeddings, index and ranker back to day D together; later versions move to
    WORK/rejected/ and are recomputed by the next `derm daily`."""
    from workflow.rollback import rollback as run_rollback

    _setup(as_json, ctx.obj["verbose"])
    ws = _workspace(work, None)
    with ws.lock():
        out = run_rollback(ws, to_day)
    _emit(
        out,
        as_json,
        lambda o: f"live versions: day={o['to']}; moved {len(o['moved'])} later versions to rejected/",
    )


# -- online serving (dermserve, embstore.online) -------------------------------------------------------------
@main.command()
@work_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port.")
@click.option(
    "--feature-store",
    default=None,
    help="Read user embeddings from this online store (redis://HOST:PORT/DB[?prefix=NAME]) instead of the "
    "workspace's store; its live version must be the one the index was built from.",
)
@click.option(
    "--unknown-user",
    type=click.Choice(["error", "popular"]),
    default="error",
    show_default=True,
    help="A user id the dataset does not know: 404, or the popularity fallback.",
)
@click.option(
    "--batch-window-ms",
    type=click.FloatRange(0, 1000),
    default=2.0,
    show_default=True,
    help="How long an idle worker waits to batch concurrent queries (0: no wait).",
)
@click.option(
    "--max-batch-users",
    type=POSITIVE,
    default=16,
    show_default=True,
    help="Most users per ranker pass (1: no micro-batching).",
)
@click.option(
    "--watch-interval",
    type=click.FloatRange(0.05, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between checks for a newer version set.",
)
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the bearer token of POST /v1/admin/reload (default: $DERM_ADMIN_TOKEN; none: disabled).",
)
@device_option
@click.pass_context
def serve(
    ctx: click.Context,
    work: str,
    host: str,
    port: int,
    feature_store: str | None,
    unknown_user: str,
    batch_window_ms: float,
    max_batch_users: int,
    watch_interval: float,
    admin_token_file: str | None,
    device: str,
) -> None:
    """Serve two-stage queries over HTTP, swapping in each new day's versions as they are published."""
    from dermserve import ServiceConfig
    from dermserve import serve as run_service
    from dermserve.config import load_admin_token
    from dermtrain.loop import resolve_device
    from embstore.online import OnlineStoreConfig

    _setup(False, ctx.obj["verbose"])
    logging.getLogger("dermserve").setLevel(logging.INFO)  # swaps and refused versions: the service's log
    cfg = ServiceConfig(
        work=work,
        unknown_user=unknown_user,  # type: ignore[arg-type]
        batch_window_ms=batch_window_ms,
        max_batch_users=max_batch_users,
        watch_interval_s=watch_interval,
        admin_token=load_admin_token(admin_token_file),
        feature_store=OnlineStoreConfig(feature_store) if feature_store else None,
        device=resolve_device(device).type,
    )
    run_service(cfg, host, port)


@main.command()
@work_option
@click.option("--to", "to_url", required=True, help="Online store URL: redis://HOST:PORT/DB[?prefix=NAME].")
@click.option("--day", type=DAY, default=None, help="Store version to publish (default: the one served).")
@click.option(
    "--task", type=click.Choice(["ctr", "cvr"]), default="ctr", show_default=True, help="Store family."
)
@click.option("--overwrite", is_flag=True, help="Rewrite a version that is live already.")
@json_option
@click.pass_context
def publish(
    ctx: click.Context, work: str, to_url: str, day: int | None, task: str, overwrite: bool, as_json: bool
) -> None:
    """Publish a store version's user embeddings and ad table to the online feature store, then make it live."""
    from adserving.versions import publish_workspace
    from embstore.online import OnlineStoreConfig

    _setup(as_json, ctx.obj["verbose"])
    out = publish_workspace(_workspace(work, None), OnlineStoreConfig(to_url), day, task, overwrite)
    _emit(
        out,
        as_json,
        lambda o: (
            f"{o['version']} {'already live' if o['skipped'] else 'live'} at {o['url']}: "
            f"{o['n_users']} users, {o['n_ads']} ads, {o['seconds']:.2f} s"
        ),
    )


# -- graph embeddings (TransRA, issue 14) ---------------------------------------------------------------------
@main.group(cls=DermGroup)
def graph() -> None:
    """The onsite-offsite graph (users, ads, advertisers, categories), one version per day."""


@graph.command("build")
@work_option
@data_option
@click.option("--day", required=True, type=DAY, help="Last day of events (the version serves day + 1).")
@click.option(
    "--window-days", type=POSITIVE, default=None, help="Days of events (default: all since the first)."
)
@click.option("--overwrite", is_flag=True, help="Rebuild a published version.")
@json_option
@click.pass_context
def graph_build(
    ctx: click.Context,
    work: str,
    data: str | None,
    day: int,
    window_days: int | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Build graph version DAY: edges from events strictly before day DAY + 1 (WORK/graph/day=DAY)."""
    from adgraph.graph import GraphConfig, graph_dir, publish_graph

    _setup(as_json, ctx.obj["verbose"])
    ws = _workspace(work, data)
    with ws.lock():
        m = publish_graph(ws, day, GraphConfig(window_days=window_days), overwrite=overwrite)
    out = {
        "graph": str(graph_dir(ws) / f"day={m['day']}"),
        "day": m["day"],
        "serves_day": m["serves_day"],
        "n_edges": m["n_edges"],
        "counts": m["counts"],
        "absent": m["absent"],
        "nodes": m["nodes"],
    }
    _emit(out, as_json, _kv)


@main.group(cls=DermGroup)
def kge() -> None:
    """Knowledge-graph embeddings of the onsite-offsite graph (TransE, TransR, TransRA)."""


@kge.command("train")
@work_option
@click.option("--day", required=True, type=DAY, help="Graph version to train on (must be built).")
@click.option(
    "--model", type=click.Choice(["transe", "transr", "transra"]), default="transra", show_default=True,
    help="KGE model.",
)  # fmt: skip
@click.option("--dim", type=POSITIVE, default=32, show_default=True, help="Entity dimension.")
@click.option("--epochs", type=POSITIVE, default=30, show_default=True, help="Epochs from scratch.")
@click.option("--incremental-epochs", type=NONNEG, default=3, show_default=True, help="Epochs per increment.")
@click.option(
    "--loss", type=click.Choice(["margin", "softmax"]), default="margin", show_default=True, help="Loss."
)
@click.option(
    "--sampling", type=click.Choice(["uniform", "degree"]), default=None,
    help="How typed negatives are drawn (default: KGEConfig's, degree).",
)  # fmt: skip
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=None,
    help="Adagrad learning rate (default: KGEConfig's, 0.1).",
)  # fmt: skip
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")
@click.option("--scratch", is_flag=True, help="Train from scratch (a new lineage) even if a parent exists.")
@click.option("--overwrite", is_flag=True, help="Retrain a published version.")
@json_option
@click.pass_context
def kge_train(
    ctx: click.Context, work: str, day: int, model: str, dim: int, epochs: int, incremental_epochs: int,
    loss: str, sampling: str | None, lr: float | None, seed: int, scratch: bool, overwrite: bool, as_json: bool,
) -> None:  # fmt: skip
    """Train KGE version DAY on graph version DAY: an increment from the newest version before DAY, or from
    scratch when there is none (WORK/kge/<model>/day=DAY)."""
    from dataclasses import replace

    from adgraph.models import ModelKind
    from adgraph.snapshot import train_kge
    from adgraph.train import KGEConfig, Loss, Sampling

    bars = _setup(as_json, ctx.obj["verbose"])
    ws = _workspace(work, None)
    cfg = KGEConfig(
        model=ModelKind(model), dim=dim, epochs=epochs, incremental_epochs=incremental_epochs, loss=Loss(loss),
        seed=seed,
    )  # fmt: skip
    if sampling is not None:
        cfg = replace(cfg, sampling=Sampling(sampling))
    if lr is not None:
        cfg = replace(cfg, lr=lr)
    with ws.lock():
        m = train_kge(ws, day, cfg, scratch=scratch, overwrite=overwrite, progress=bars)
    _emit(_kge_summary(ws, model, m), as_json, _kv)


def _kge_summary(ws: Any, model: str, m: dict[str, Any]) -> dict[str, Any]:
    from adgraph.snapshot import kge_dir

    t = m["train"]
    return {
        "kge": str(kge_dir(ws, model) / f"day={m['day']}"),
        "model": m["model"],
        "day": m["day"],
        "lineage": m["lineage"],
        "mode": t["mode"],
        "entities": {e["type"]: e["n"] for e in m["entities"]},
        "n_triples": t["n_triples"],
        "n_new_nodes": t.get("n_new_nodes", 0),
        "final_loss": t["losses"][-1] if t["losses"] else None,
        "seconds": t["seconds"],
        "edges_per_s": t["edges_per_s"],
    }


if __name__ == "__main__":
    main()
