"""docs/RESULTS.md sections for the systems benchmarks (store, indices, robustness, serving, scale, `make bench`
wall time); used by render_results.py. Every figure comes from a results file."""

from __future__ import annotations

from typing import Any

from _tables import fmt as _f
from _tables import table


def _machine(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    return (
        f"{m.get('cpu_count')} CPUs ({m.get('affinity_cpus')} usable), {m.get('platform')}, Python {m.get('python')}, "
        f"torch {m.get('torch', '-')}; git {str(r.get('git_sha') or '-')[:10]}"
    )


def synth_section(r: dict[str, Any]) -> list[str]:
    return [
        "## Synthetic generator throughput",
        "",
        f"Command: `{r.get('command', 'python benchmarks/synth_speed.py')}`. Machine: {_machine(r)}.",
        "",
        f"{r['impressions']:,} impressions in {r['seconds']:.1f} s: **{r['impressions_per_minute']:,} impressions per "
        f"minute** (requirement: at least 1,000,000). CTR {_f(r['stats']['ctr'])}, oracle ROC-AUC "
        f"{_f(r['stats']['oracle_roc_auc'])}, non-personal oracle ROC-AUC {_f(r['stats']['nonpersonal_oracle_roc_auc'])}.",
        "",
    ]


def bench_times_section(r: dict[str, Any]) -> list[str]:
    return [
        "## `make bench` wall time",
        "",
        f"Machine: {_machine(r)}.",
        "",
        *table(
            ("script", "seconds", "exit"),
            [(name, f"{v['seconds']:.0f}", v["exit"]) for name, v in r["scripts"].items()]
            + [("**total** (all scripts)", f"**{r['total_seconds']:.0f}**", "")],
        ),
        "",
    ]


def store_speed_section(r: dict[str, Any]) -> list[str]:
    p = r["pool"]
    lines = [
        "## Embedding store speed",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. Median of {r['repeats']} interleaved runs, each beside "
        "a same-run reference on the same bytes.",
        "",
        *table(
            ("operation", "ours", "reference", "target"),
            [
                (
                    f"aggregate {p['n']:,} x {p['dim']} pool + {p['updates']:,} daily updates ({p['heuristic']})",
                    f"{r['aggregate_seconds']:.3f} s",
                    f"{r['aggregate_reference_seconds']:.3f} s (numpy copy of state + prev)",
                    f"< {r['aggregate_target_seconds']} s",
                ),
                (
                    "publish (write + fsync + rename)",
                    f"{r['publish_seconds']:.3f} s",
                    f"{r['publish_reference_seconds']:.3f} s (np.save of the same arrays + fsync)",
                    "-",
                ),
                (
                    "lookup 10,000 ids (memory-mapped, warm)",
                    f"{r['lookup_10k_ms']:.2f} ms",
                    f"{r['lookup_10k_reference_ms']:.2f} ms (numpy fancy indexing in memory)",
                    f"< {r['lookup_target_ms']} ms",
                ),
                (
                    "lookup 10,000 ids, first after opening (cold map)",
                    f"{r.get('lookup_10k_cold_ms', float('nan')):.2f} ms",
                    "-",
                    "-",
                ),
            ],
        ),
        "",
    ]
    d = r.get("daily")
    if d:
        lines += [
            f"One `derm daily` on the default synthetic day {d['day']}: {d['total_seconds']:.1f} s in all: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in d["stage_seconds"].items())
            + ".",
            "",
        ]
    return lines


def index_overhead_section(r: dict[str, Any]) -> list[str]:
    pairs = r.get("pairs") or {"batch_1000": r.get("repeats"), "batch_1": r.get("repeats")}

    def ratio(b: dict[str, Any], label: str) -> str:
        ci = b.get(f"qps_ratio_ci95_{label}")
        return f"{b[f'qps_ratio_{label}']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    lines = [
        "## ANN search: overhead of our `search()` over a direct library call",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. {r['n_vectors']:,} x {r['dim']} vectors, k = {r['k']}, "
        f"{r['queries']}; {pairs['batch_1000']} (batch 1,000) and {pairs['batch_1']} (batch 1) interleaved pairs "
        "of runs. Ratio = median over pairs of our QPS / direct QPS, with a bootstrap 95 % interval of that median "
        f"(bars: >= {r['bars']['batch_1000']} at batch 1,000, >= {r['bars']['batch_1']} at batch 1). "
        f"Load average at the end: {r.get('load_avg_at_end', 0):.1f} (shared machine).",
        "",
        *table(
            ("index", "QPS direct (1,000)", "QPS ours (1,000)", "ratio [95 % CI]")
            + ("QPS direct (1)", "QPS ours (1)", "ratio [95 % CI]"),
            [
                (
                    name,
                    f"{b['qps_direct_batch_1000']:,.0f}",
                    f"{b['qps_ours_batch_1000']:,.0f}",
                    ratio(b, "batch_1000"),
                    f"{b['qps_direct_batch_1']:,.0f}",
                    f"{b['qps_ours_batch_1']:,.0f}",
                    ratio(b, "batch_1"),
                )
                for name, b in r["per_backend"].items()
            ],
        ),
    ]
    lines += ["", f"Meets both bars: {r['meets_bars']}.", ""]
    return lines


def index_scale_section(r: dict[str, Any]) -> list[str]:
    lines = [
        f"## ANN indices at {r['n_vectors']:,} ads x {r['dim']} dims",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. {r['n_queries']:,} {r['queries']}; "
        f"{r['qps_note']}. Chosen point: the fastest with recall@{r['k']} >= {r['target_recall']} "
        f"(else the best recall reached). Total {r['total_seconds']:.0f} s.",
        "",
    ]
    rows = []
    for name, b in r["per_backend"].items():
        c = b["chosen"]
        knob = f"{c['knob']} {c['value']}" if c["knob"] else "exact"
        mark = "" if b["reached_target"] else " (best reached)"
        rows.append(
            (
                name,
                f"{b['build_seconds']:.1f}",
                f"{b['rss_delta_bytes'] / 2**20:,.0f}",
                f"{b['index_file_bytes'] / 2**20:,.0f}",
                knob,
                f"{c['recall_at_k']:.4f}{mark}",
                f"{c['qps']:,.0f}",
            )
        )
    lines += table(("index", "build s", "RSS growth MB", "file MB", "knob", "recall@100", "QPS"), rows)
    lines += ["", f"Not measured: {r.get('not_measured', '-')}.", ""]
    return lines


def index_refresh_section(r: dict[str, Any]) -> list[str]:
    pc = r["planted_changes"]
    lines = [
        f"## Daily index refresh: {r['changed_fraction']:.0%} of {r['n_vectors']:,} ads changed",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. Changes: {pc['added']:,} new, {pc['removed']:,} "
        f"removed, {pc['replaced']:,} replaced vectors. {r['timing_note']}.",
        "",
        f"**Speedup of in place over rebuild (worst in-place backend, {r['worst_backend']}): {r['speedup']:.1f}x** "
        f"(bar {r['bar']['speedup']}x); recall@{r['k']} after refresh {r['recall_in_place']:.4f} in place vs "
        f"{r['recall_rebuild']:.4f} rebuilt.",
        "",
    ]
    rows: list[tuple[Any, ...]] = []
    for name, b in r["per_backend"].items():
        if b.get("rebuild_only"):
            rows.append((name, f"rebuild only ({b['auto_reason']})", *["-"] * 7))
            continue
        full = b.get("in_place_full_write_seconds")
        loads = (b.get("reader_load_seconds_in_place"), b.get("reader_load_seconds_rebuild"))
        rows.append(
            (
                name,
                b["auto_mode"],
                f"{b['in_place_seconds']:.2f} ({b.get('in_place_storage', 'full')})",
                f"{b['rebuild_seconds']:.2f}",
                f"{b['speedup']:.1f}x",
                "-" if full is None else f"{full:.2f}",
                "-" if loads[0] is None else f"{loads[0]:.2f} / {loads[1]:.2f}",
                f"{b['recall_in_place']:.4f}",
                f"{b['recall_rebuild']:.4f}",
            )
        )
    header = (
        "index",
        "auto mode",
        "in place s (stored as)",
        "rebuild s",
        "speedup",
        "in place written in full s",
    )
    lines += table((*header, "reader load s (in place / rebuilt)", "recall in place", "recall rebuilt"), rows)
    lines += ["", "Excluded from the worst case:"]
    lines += [f"- {k}: {v}" for k, v in r["excluded_from_worst_case"].items()]
    lines.append("")
    return lines


def index_gpu_section(r: dict[str, Any]) -> list[str]:
    if "skipped" in r:
        return ["## ANN on the GPU", "", f"Skipped: {r['skipped']} (`{r['command']}`).", ""]
    lines = [
        "## ANN on the GPU",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. Path: {r['path']}.",
        "",
        *table(
            ("index / device", "build s", "QPS", "recall@100"),
            [
                (name, _f(b.get("build_seconds"), 2), f"{b['qps']:,.0f}", _f(b.get("recall_at_100")))
                for name, b in r["results"].items()
            ],
        ),
    ]
    lines.append("")
    return lines


def robustness_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Robustness: the fault matrix",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. A tiny demo workspace; the cycle killed and corrupted "
        f"is `derm daily --day {r['day']}`.",
        "",
    ]
    rows = []
    for cat in ("bad_inputs", "corruption", "writes_outside", "kills"):
        c = r[cat]
        skip = ("tried", "cases", "seconds")
        outs = ", ".join(f"{k} {v}" for k, v in c.items() if k not in skip and not isinstance(v, float))
        rows.append((cat, c["tried"], outs))
    lines += table(("category", "tried", "outcomes"), rows)
    bad = [c for c in r["corruption"]["cases"] if c["outcome"] != "refused"]
    lines += [
        "",
        "Corruptions not refused: "
        + ("; ".join(f"{c['kind']} x {c['command']}: {c['outcome']}" for c in bad) or "none")
        + ".",
    ]
    lines.append("")
    return lines


def serve_load_section(r: dict[str, Any]) -> list[str]:
    """`derm serve` under HTTP load (benchmarks/serve_load.py)."""
    lines = [
        "## Serving over HTTP: load, hot swaps, Redis publish"
        + (" (quick smoke run)" if "--quick" in r["command"] else ""),
        "",
        f"`{r['command']}`: {r['what']}. {r['seconds_per_level']} s per level. {_machine(r)}.",
        "",
        *table(
            ("store", "batching", "concurrency", "requests/s", "p50 ms", "p95 ms", "p99 ms", "errors"),
            [
                (x["store"], "on" if x["batching"] else "off", x["concurrency"], x["qps"])
                + (x["p50_ms"], x["p95_ms"], x["p99_ms"], x["errors"])
                for x in r["runs"]
            ],
        ),
    ]
    s = r["swaps"]
    lines += [
        "",
        f"Under load (concurrency 8, batching on): {s['n_swaps']} hot swaps and {s['n_rollbacks']} rollback in "
        f"{s['seconds_of_swaps']} s, {s['requests']} requests, {s['errors']} errors, {s['mixed_versions']} answers "
        f"with mixed versions, p99 {s['p99_ms']} ms.",
    ]
    if "redis_publish" in r:
        p = r["redis_publish"]
        lines.append(f"Redis publish of {p['n_users']:,} {p['dim']}-d user embeddings: {p['seconds']} s.")
    return lines + [""]


def scale_section(r: dict[str, Any]) -> list[str]:
    """The cost model: one daily cycle per size and engine (benchmarks/scale.py)."""
    stages = r["stages"]
    la = r["load_average_start"]
    lines = [
        "## Scale: one daily cycle from 1M to 10M impressions (cost model)"
        if "scale_ray" not in r["command"]
        else "## Scale: one daily cycle at 1M and 3M impressions, one process and Ray (cost model)",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. {r['shared_machine']}; load average "
        f"{la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} at the start, {r['load_average_end'][0]:.1f} at the end. "
        f"Memory: {r['memory']}. Budget {r['budget_seconds'] / 60:.0f} min, used {r['wall_seconds'] / 60:.0f}.",
        "",
    ]
    if "negative_rate" in r:
        smp = r["samples"]
        lines += [
            f"Config: the cycle's defaults with negative downsampling at rate {r['negative_rate']} (towers and "
            f"the ranker's deep part; benchmarks/downsampling.py). Samples: eval's retrieval on at most "
            f"{smp['eval_retrieval_users']:,} clicked users, its ranking on at most "
            f"{smp['eval_ranking_impressions']:,} impressions; the daily prior / graph fits on at most "
            f"{smp['rerank_fit_users']:,} users; the ranker's calibration report on at most "
            f"{smp['ranker_calibration_rows']:,} rows. Bootstrap (not measured as part of the day): "
            + "; ".join(
                f"{int(n) / 1e6:g}M {v['bootstrap_seconds']:.0f} s"
                + (f", peak {v['bootstrap_peak_rss_mb']:,.0f} MB" if "bootstrap_peak_rss_mb" in v else "")
                for n, v in r["synthetic"]["sizes"].items()
            )
            + "."
            + (f" How this run was made: {r['assembled']}." if "assembled" in r else ""),
            "",
        ]
    rows = [
        (f"{x['impressions']:,}", x["engine"], x["workers"])
        + tuple(f"{x['stage_seconds'].get(s, 0.0):.1f}" for s in stages)
        + (f"{x['total_seconds']:.0f}", f"{x['seconds_per_million']:.0f}", f"{x['peak_rss_mb']:,.0f}")
        + (f"{x['load_average_before'][0]:.1f}",)
        for x in r["runs"]
    ]
    header = ("impressions", "engine", "workers", *(f"{s} s" for s in stages))
    lines += table((*header, "total s", "s per M", "peak MB", "load before"), rows)
    lines += ["", "Peak memory per stage (MB):", ""]
    lines += table(
        ("impressions", "engine", *stages),
        [
            (
                f"{x['impressions']:,}",
                x["engine"],
                *(f"{x['stage_peak_mb'].get(s, 0.0):,.0f}" for s in stages),
            )
            for x in r["runs"]
        ],
    )
    g = r["growth_exponent"]["local"]
    g10, g3 = r["growth_1m_to_10m"], r.get("growth_1m_to_3m")
    over = g.get("cost_per_impression_over_smallest")
    lines += [
        "",
        f"Cost per impression, 1M -> 10M (single process): {g10 if g10 is not None else 'not measured'}; "
        f"1M -> 3M: {g3 if g3 is not None else 'not measured'}. Local growth exponent of total seconds on "
        f"impressions: {g['exponent']} over sizes {g['sizes']} (cost per impression over the smallest: {over}). "
        "Projections to 100M and 1B: docs/SCALING.md.",
    ]
    by_stage = r.get("growth_1m_to_10m_by_stage")
    if by_stage:
        lines += [
            "",
            "Cost per impression at 10M over 1M, by stage: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in by_stage.items())
            + ".",
        ]
    for x in r.get("not_run", []):
        lines.append(f"- Not run: {x['impressions']:,} {x['engine']}: {x['reason']}.")
    lines.append("")
    return lines


SECTIONS = {
    "bench_times": bench_times_section,
    "index_gpu": index_gpu_section,
    "index_overhead": index_overhead_section,
    "index_refresh": index_refresh_section,
    "index_scale": index_scale_section,
    "robustness": robustness_section,
    "scale": scale_section,
    "scale_ray": scale_section,
    "serve_load": serve_load_section,
    "serve_load_quick": serve_load_section,
    "store_speed": store_speed_section,
    "synth_speed": synth_section,
}
