"""Regenerate docs/RESULTS.md from benchmarks/results/*.json. No figure in that page is typed by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _render_models import SECTIONS as MODEL_SECTIONS
from _render_models import _f, _logistic_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "RESULTS.md"


def _machine(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    return (
        f"{m.get('cpu_count')} CPUs ({m.get('affinity_cpus')} usable), {m.get('platform')}, Python {m.get('python')}, "
        f"torch {m.get('torch', '-')}; git {str(r.get('git_sha') or '-')[:10]}"
    )


def demo_section(r: dict[str, Any]) -> list[str]:
    doc = r["report"]
    ret, rank = doc["retrieval"], doc["ranking"]
    ks = sorted(ret["recall_at_k"], key=int)
    lines = [
        "## Demo: the whole system on the synthetic ads log",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}.",
        "",
        f"Trained from scratch on days {r['train_days'][0]}..{r['train_days'][-1]}, then {len(r['daily_days'])} daily "
        f"cycles; evaluated day {doc['day']} with the versions of day {doc['embedding_day']}. "
        f"{ret['n_users']} users clicked that day ({ret['n_cold']} cold start), {ret.get('n_live_ads')} ads were live.",
        "",
        "| metric | ours | popularity | oracle |",
        "|---|---|---|---|",
    ]
    for k in ks:
        lines.append(
            f"| recall@{k} | {_f(ret['recall_at_k'][k])} | {_f(ret['popularity_recall_at_k'][k])} | "
            f"{_f(ret.get('oracle_recall_at_k', {}).get(k))} |"
        )
    for k in ks:
        if "relevance_recall_at_k" in ret:
            lines.append(
                f"| overlap with the oracle's top {k} | {_f(ret['relevance_recall_at_k'][k])} | - | 1 |"
            )
    lines += [
        f"| ranker ROC-AUC (CTR head, all {rank.get('n_impressions')} impressions) | {_f(rank.get('roc_auc'))} | - | "
        f"{_f(rank.get('oracle_roc_auc'))} |",
        f"| ranker PR-AUC | {_f(rank.get('pr_auc'))} | - | - |",
        f"| mean predicted / observed CTR | {_f(rank.get('predicted_ctr'))} / {_f(rank.get('observed_ctr'))} | - | - |",
        *_logistic_rows(r.get("baselines")),
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in r["stage_seconds"].items()],
        f"| **total** | **{r['total_seconds']:.1f}** |",
        "",
    ]
    st = r.get("dataset_stats", {})
    if st:
        lines += ["Dataset: " + ", ".join(f"{k} {_f(v, 4)}" for k, v in st.items()), ""]
    return lines


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
        "| script | seconds | exit |",
        "|---|---|---|",
        *[f"| {name} | {v['seconds']:.0f} | {v['exit']} |" for name, v in r["scripts"].items()],
        f"| **total** (all scripts) | **{r['total_seconds']:.0f}** | |",
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
        "| operation | ours | reference | target |",
        "|---|---|---|---|",
        f"| aggregate {p['n']:,} x {p['dim']} pool + {p['updates']:,} daily updates ({p['heuristic']}) | "
        f"{r['aggregate_seconds']:.3f} s | {r['aggregate_reference_seconds']:.3f} s (numpy copy of state + prev) | "
        f"< {r['aggregate_target_seconds']} s |",
        f"| publish (write + fsync + rename) | {r['publish_seconds']:.3f} s | {r['publish_reference_seconds']:.3f} s "
        "(np.save of the same arrays + fsync) | - |",
        f"| lookup 10,000 ids (memory-mapped, warm) | {r['lookup_10k_ms']:.2f} ms | {r['lookup_10k_reference_ms']:.2f} ms "
        f"(numpy fancy indexing in memory) | < {r['lookup_target_ms']} ms |",
        f"| lookup 10,000 ids, first after opening (cold map) | {r.get('lookup_10k_cold_ms', float('nan')):.2f} ms | - | - |",
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


def aggregation_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Aggregation heuristics (the paper's Table 1 on our data)",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. {r['metric']}; seeds {r['seeds']}; lift = arm - none, "
        "per-seed paired bootstrap 95 % intervals over test impressions, and a t interval of the mean over seeds. "
        f"Wall time {r.get('wall_seconds', '-')} s.",
        "",
    ]
    for name in ("synthetic", "movielens_100k"):
        d = r.get(name, {})
        if "arms" not in d:
            lines += [f"{name}: {d.get('skipped', 'not run')}", ""]
            continue
        lines += [
            f"**{name}** (test days {d['test_days'][0]}..{d['test_days'][-1]} pooled; "
            f"{d['arms']['none']['per_seed'][0]['n_test_clicks']} clicked test impressions per seed)",
            "",
            "| arm | CVR ROC-AUC (mean ± sd) | lift (mean, 95 % CI over seeds) | lift % | seeds with lift > 0 | paper lift % |",
            "|---|---|---|---|---|---|",
        ]
        for arm, e in d["arms"].items():
            auc = f"{e['roc_auc_mean']:.4f} ± {e['roc_auc_std']:.4f}"
            if arm == "none":
                lines.append(f"| none | {auc} | - | - | - | - |")
            else:
                lo, hi = e["lift_ci95"]
                lines.append(
                    f"| {arm} | {auc} | {e['lift_mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {e['lift_pct']:+.2f} % | "
                    f"{e['seeds_with_positive_lift']}/{len(e['per_seed'])} | {e['paper_lift_pct']:+.2f} % |"
                )
        lines.append("")
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
        "| index | QPS direct (1,000) | QPS ours (1,000) | ratio [95 % CI] | QPS direct (1) | QPS ours (1) | "
        "ratio [95 % CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, b in r["per_backend"].items():
        lines.append(
            f"| {name} | {b['qps_direct_batch_1000']:,.0f} | {b['qps_ours_batch_1000']:,.0f} | "
            f"{ratio(b, 'batch_1000')} | {b['qps_direct_batch_1']:,.0f} | {b['qps_ours_batch_1']:,.0f} | "
            f"{ratio(b, 'batch_1')} |"
        )
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
        "| index | build s | RSS growth MB | file MB | knob | recall@100 | QPS |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, b in r["per_backend"].items():
        c = b["chosen"]
        knob = f"{c['knob']} {c['value']}" if c["knob"] else "exact"
        mark = "" if b["reached_target"] else " (best reached)"
        lines.append(
            f"| {name} | {b['build_seconds']:.1f} | {b['rss_delta_bytes'] / 2**20:,.0f} | "
            f"{b['index_file_bytes'] / 2**20:,.0f} | {knob} | {c['recall_at_k']:.4f}{mark} | {c['qps']:,.0f} |"
        )
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
        "| index | auto mode | in place s (stored as) | rebuild s | speedup | in place written in full s | "
        "reader load s (in place / rebuilt) | recall in place | recall rebuilt |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, b in r["per_backend"].items():
        if b.get("rebuild_only"):
            lines.append(f"| {name} | rebuild only ({b['auto_reason']}) | - | - | - | - | - | - | - |")
            continue
        full = b.get("in_place_full_write_seconds")
        loads = (b.get("reader_load_seconds_in_place"), b.get("reader_load_seconds_rebuild"))
        lines.append(
            f"| {name} | {b['auto_mode']} | {b['in_place_seconds']:.2f} ({b.get('in_place_storage', 'full')}) | "
            f"{b['rebuild_seconds']:.2f} | {b['speedup']:.1f}x | {'-' if full is None else f'{full:.2f}'} | "
            f"{'-' if loads[0] is None else f'{loads[0]:.2f} / {loads[1]:.2f}'} | "
            f"{b['recall_in_place']:.4f} | {b['recall_rebuild']:.4f} |"
        )
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
        "| index / device | build s | QPS | recall@100 |",
        "|---|---|---|---|",
    ]
    for name, b in r["results"].items():
        lines.append(
            f"| {name} | {_f(b.get('build_seconds'), 2)} | {b['qps']:,.0f} | {_f(b.get('recall_at_100'))} |"
        )
    lines.append("")
    return lines


def robustness_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Robustness: the fault matrix",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. A tiny demo workspace; the cycle killed and corrupted "
        f"is `derm daily --day {r['day']}`.",
        "",
        "| category | tried | outcomes |",
        "|---|---|---|",
    ]
    for cat in ("bad_inputs", "corruption", "writes_outside", "kills"):
        c = r[cat]
        outs = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("tried", "cases", "seconds") and not
                         isinstance(v, float))  # fmt: skip
        lines.append(f"| {cat} | {c['tried']} | {outs} |")
    bad = [c for c in r["corruption"]["cases"] if c["outcome"] != "refused"]
    lines += [
        "",
        "Corruptions not refused: "
        + ("; ".join(f"{c['kind']} x {c['command']}: {c['outcome']}" for c in bad) or "none")
        + ".",
    ]
    lines.append("")
    return lines


def movielens_quality_section(r: dict[str, Any]) -> list[str]:
    ret, rank = r["retrieval"], r["ranking"]
    lines = [
        "## MovieLens-100K: derm beside its baselines (weekly, last 4 weeks pooled)",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. Seeds {r['seeds']}; {r['n_test_rows']} test "
        f"(user, week) rows; paired bootstrap over users ({r['bootstrap_replicates']} replicates). Headline: "
        f"{ret['headline']}.",
        "",
        "| retrieval arm | recall@100 | minus popularity [95 % CI] |",
        "|---|---|---|",
    ]
    for name, a in ret["arms"].items():
        vs = a.get("vs_popularity")
        ci = f"{vs['diff']:+.4f} [{vs['diff_ci'][0]:+.4f}, {vs['diff_ci'][1]:+.4f}]" if vs else "-"
        lines.append(f"| {name} | {a['recall_at_100']:.4f} | {ci} |")
    lo, hi = rank["diff_ci"]
    lines += [
        "",
        f"Ranking on the same {rank['rows']['test']:,} test rows ({rank['rows']['train']:,} training rows): derm ranker "
        f"ROC-AUC {rank['roc_auc']:.4f}, one-hot logistic regression {rank['logistic_roc_auc']:.4f} (ranker minus it "
        f"[{lo:+.4f}, {hi:+.4f}]), item CTR {rank['item_ctr']['roc_auc']:.4f}.",
        "",
    ]
    return lines


def slate_value_section(r: dict[str, Any]) -> list[str]:
    systems = ("retrieval", "two_stage", "served", "oracle_candidates", "oracle")
    lines = [
        "## The served slate's true value (synthetic test day)",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. Day {r['test_day']}, {r['n_users']:,} users shown ads "
        f"({', '.join(f'{k} {v}' for k, v in r['paths'].items())}), {r['candidates']} candidates, advertiser cap "
        f"{r['cap']} in the served order. True expected clicks / revenue per user at the reference context, and "
        "the fraction of the oracle's.",
        "",
        "| k | measure | " + " | ".join(systems) + " | two_stage - retrieval [95 % CI] |",
        "|---|---|" + "---|" * (len(systems) + 1),
    ]
    for k in ("k10", "k50"):
        for name, sec in (("clicks", r[k]), ("revenue", r[k]["revenue"])):
            cells = " | ".join(f"{sec[s]:.3f} ({sec['fraction_of_oracle'][s]:.2f})" for s in systems)
            lo, hi = sec["two_stage_minus_retrieval_ci"]
            lines.append(f"| {k[1:]} | {name} | {cells} | [{lo:+.3f}, {hi:+.3f}] |")
    lines.append("")
    return lines


SECTIONS = {
    "aggregation": aggregation_section,
    "movielens_quality": movielens_quality_section,
    "slate_value": slate_value_section,
    "robustness": robustness_section,
    "bench_times": bench_times_section,
    "demo": demo_section,
    "index_gpu": index_gpu_section,
    "index_overhead": index_overhead_section,
    "index_refresh": index_refresh_section,
    "index_scale": index_scale_section,
    "store_speed": store_speed_section,
    "synth_speed": synth_section,
    **MODEL_SECTIONS,
}


def serve_load_section(r: dict[str, Any]) -> list[str]:
    """`derm serve` under HTTP load (benchmarks/serve_load.py)."""
    lines = [
        "## Serving over HTTP: load, hot swaps, Redis publish"
        + (" (quick smoke run)" if "--quick" in r["command"] else ""),
        "",
        f"`{r['command']}`: {r['what']}. {r['seconds_per_level']} s per level. {_machine(r)}.",
        "",
        "| store | batching | concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        lines.append(
            f"| {x['store']} | {'on' if x['batching'] else 'off'} | {x['concurrency']} | {x['qps']} | "
            f"{x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} | {x['errors']} |"
        )
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


SECTIONS["serve_load"] = serve_load_section
SECTIONS["serve_load_quick"] = serve_load_section


def kge_link_prediction_section(r: dict[str, Any]) -> list[str]:
    """Next-day link prediction of the KGE models beside degree popularity (benchmarks/kge_link_prediction.py)."""
    lines = [
        "## KGE link prediction (TransE / TransR / TransRA)" + (" (quick size)" if r.get("quick") else ""),
        "",
        f"Filtered MRR and Hits@10 of the next day's new edges, seeds {r.get('seeds')}, 95 % t-intervals over "
        f"seeds. {_machine(r)}.",
        "",
    ]
    for name in ("synthetic", "movielens_100k"):
        d = r.get(name)
        if not d:
            continue
        lines += [
            f"{name}: trained on graph day {d.get('train_day')} ({d.get('n_train_edges')} edges), tested on "
            f"{d.get('n_test_edges')} edges new on day {d.get('test_day')}.",
            "",
            "| model | MRR [95 % CI] | Hits@10 | edges/s |",
            "|---|---|---|---|",
        ]
        for m in ("transe", "transr", "transra", "popularity"):
            x = d.get(m)
            if not x:
                continue
            ci = (x.get("mrr_interval") or {}).get("ci95")
            ci_s = f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else ""
            lines.append(
                f"| {m} | {_f(x.get('mrr'))}{ci_s} | {_f(x.get('hits_at_10'))} | {_f(x.get('edges_per_s'), 0)} |"
            )
        lines.append("")
    return lines


def kge_tuning_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## KGE learning-rate / epochs choice (validation day)",
        "",
        f"Trained on day {r.get('train_day')}, validated on day {r.get('validation_day')}; degree popularity MRR "
        f"{_f((r.get('popularity') or {}).get('mrr'))}. {_machine(r)}.",
        "",
        "| model | lr | epochs | MRR | Hits@10 | clicked-ad MRR |",
        "|---|---|---|---|---|---|",
    ]
    for x in r.get("runs", []):
        lines.append(
            f"| {x['model']} | {x['lr']} | {x['epochs']} | {_f(x['mrr'])} | {_f(x['hits_at_10'])} | "
            f"{_f(x.get('clicked_mrr'))} |"
        )
    return lines + [""]


def offsite_signal_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Does the synthetic log's offsite data carry conversion signal? (oracle-weighted CVR ROC-AUC)",
        "",
        f"Eval days {r.get('eval_days')}, seeds {r.get('seeds')}; mean [min, max] over seeds. {_machine(r)}.",
        "",
        "| world | signal | ROC-AUC |",
        "|---|---|---|",
    ]
    for arm, a in r.get("arms", {}).items():
        summ = a.get("summary", {})
        for sig, v in (summ.get("oracle_roc_auc") or {}).items():
            lines.append(f"| {arm} | {sig} | {_f(v['mean'])} [{_f(v['min'])}, {_f(v['max'])}] |")
        v = summ.get("offsite_within_click_strata_oracle_roc_auc")
        if v:
            lines.append(
                f"| {arm} | offsite, within equal onsite-click strata | {_f(v['mean'])} [{_f(v['min'])}, {_f(v['max'])}] |"
            )
    return lines + [""]


def movielens_run_section(r: dict[str, Any]) -> list[str]:
    ref = r.get("reference", {})
    lines = [
        "## MovieLens-100K through `derm run` (weekly periods)",
        "",
        f"`{r.get('command')}`; reference: {ref.get('source')}. {_machine(r)}.",
        "",
        "| backbone | user-weeks | recall@100 (seen masked) | popularity (masked) | ours - popularity [95 % CI] "
        "| recall@100 (derm eval) | popularity (derm eval) | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, a in r.get("arms", {}).items():
        p = a.get("pooled", {})
        d = a.get("masked_minus_popularity") or {}
        ci = d.get("ci") or [None, None]
        diff = f"{_f(d.get('diff'))} [{_f(ci[0])}, {_f(ci[1])}]" if d else "-"
        lines.append(
            f"| {name} | {p.get('n_user_weeks')} | {_f(p.get('masked_recall_at_100'))} | "
            f"{_f(p.get('masked_popularity_recall_at_100'))} | {diff} | {_f(p.get('recall_at_100'))} | "
            f"{_f(p.get('popularity_recall_at_100'))} | {_f(a.get('seconds'), 0)} |"
        )
    return lines + [""]


def kge_ranker_section(r: dict[str, Any]) -> list[str]:
    """The ranker with KGE vectors: none / frozen / finetune / finetune + attention / TransR (kge_ranker.py)."""
    lines = [
        "## The ranker with KGE vectors (TransRA paper's downstream claim)"
        + (" (quick size)" if "--quick" in str(r.get("command")) else "")
        + ("" if r.get("complete", True) else " (incomplete run)"),
        "",
        f"`{r.get('command')}`; seeds {r.get('seeds')} (ranker init and order; data and KGE fixed); CTR head on "
        f"all test impressions, CVR head on clicked ones; mean +- std over seeds; the CVR difference vs none is "
        f"the mean paired difference with its 95 % t-interval over seeds. {_machine(r)}.",
        "",
    ]
    if r.get("synthetic_note"):
        lines += [f"Synthetic part {r['synthetic_note']}.", ""]
    for name in ("synthetic", "movielens_100k"):
        d = r.get(name)
        if not d:
            continue
        if "skipped" in d:
            lines += [f"{name}: skipped ({d['skipped']}).", ""]
            continue
        if "arms" not in d:
            continue
        lines += [
            f"{name}: train days {d['days']['train']}, test days {d['days']['test']} ({d.get('n_test_impressions')} "
            f"impressions, {d.get('n_test_clicks')} clicks, {d.get('n_test_conversions')} conversions); KGE inputs "
            f"{d.get('kge_inputs')}; {_f(d.get('seconds'), 0)} s.",
            "",
            "| arm | CTR ROC-AUC | CTR PR-AUC | CVR ROC-AUC | CVR PR-AUC | CVR ROC-AUC vs none [95 % CI] |",
            "|---|---|---|---|---|---|",
        ]
        for arm, a in d["arms"].items():
            vs = (a.get("vs_none") or {}).get("cvr_roc_auc") or {}
            ci = vs.get("diff_ci95_over_seeds")
            diff = (
                "" if not vs else f"{vs['diff_mean']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
            )
            lines.append(
                f"| {arm} | {_f(a['ctr_roc_auc_mean'])} +- {_f(a['ctr_roc_auc_std'])} | {_f(a['ctr_pr_auc_mean'])} | "
                f"{_f(a['cvr_roc_auc_mean'])} +- {_f(a['cvr_roc_auc_std'])} | {_f(a['cvr_pr_auc_mean'])} | {diff} |"
            )
        b = d.get("bar_finetune_attention_cvr") or {}
        if b:
            lines += [
                "",
                f"Bar (finetune_attention beats none on CVR ROC-AUC by more than the seed spread, and >= frozen): "
                f"{'met' if b.get('met') else 'not met'} (lift {b.get('cvr_lift_vs_none'):+.4f} vs spread "
                f"{_f(b.get('spread_max_std'))}; vs frozen {b.get('cvr_diff_vs_frozen'):+.4f}).",
            ]
        lines.append("")
    return lines


SECTIONS["kge_ranker"] = kge_ranker_section
SECTIONS["kge_ranker_quick"] = kge_ranker_section
SECTIONS["kge_link_prediction"] = kge_link_prediction_section
SECTIONS["kge_link_prediction_quick"] = kge_link_prediction_section
SECTIONS["kge_tuning"] = kge_tuning_section
SECTIONS["offsite_signal"] = offsite_signal_section
SECTIONS["movielens_run"] = movielens_run_section


def scale_section(r: dict[str, Any]) -> list[str]:
    """The cost model: one daily cycle per size and engine (benchmarks/scale.py)."""
    stages = r["stages"]
    la = r["load_average_start"]
    lines = [
        "## Scale: one daily cycle from 100k to 10M impressions (cost model)",
        "",
        f"Command: `{r['command']}`. Machine: {_machine(r)}. {r['shared_machine']}; load average "
        f"{la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} at the start, {r['load_average_end'][0]:.1f} at the end. "
        f"Memory: {r['memory']}. Budget {r['budget_seconds'] / 60:.0f} min, used {r['wall_seconds'] / 60:.0f}.",
        "",
        "| impressions | engine | workers | "
        + " | ".join(f"{s} s" for s in stages)
        + " | total s | s per M | peak MB | load before |",
        "|---|---|---|" + "---|" * len(stages) + "---|---|---|---|",
    ]
    for x in r["runs"]:
        secs = " | ".join(f"{x['stage_seconds'].get(s, 0.0):.1f}" for s in stages)
        lines.append(
            f"| {x['impressions']:,} | {x['engine']} | {x['workers']} | {secs} | {x['total_seconds']:.0f} | "
            f"{x['seconds_per_million']:.0f} | {x['peak_rss_mb']:,.0f} | {x['load_average_before'][0]:.1f} |"
        )
    lines += ["", "Peak memory per stage (MB):", ""]
    lines += ["| impressions | engine | " + " | ".join(stages) + " |", "|---|---|" + "---|" * len(stages)]
    for x in r["runs"]:
        peaks = " | ".join(f"{x['stage_peak_mb'].get(s, 0.0):,.0f}" for s in stages)
        lines.append(f"| {x['impressions']:,} | {x['engine']} | {peaks} |")
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
    for x in r.get("not_run", []):
        lines.append(f"- Not run: {x['impressions']:,} {x['engine']}: {x['reason']}.")
    lines.append("")
    return lines


SECTIONS["scale"] = scale_section


def sparse_optimizer_section(r: dict[str, Any]) -> list[str]:
    """SparseAdam vs the catch-up sparse Adam on Gowalla's validation split, beside plain MF (sparse_optimizer.py)."""
    arms = r.get("arms", {})
    n = max((len(a.get("curve", [])) for a in arms.values()), default=0)
    lines = [
        "## Sparse Adam: lazy (SparseAdam) vs catch-up, beside plain MF (Gowalla validation split)",
        "",
        f"`{r.get('command')}`; validation recall@20 after each epoch ({r.get('split')}); load average at the end "
        f"{[round(x, 1) for x in r.get('load_average', [])]}. {_machine(r)}.",
        "",
        "| arm | " + " | ".join(f"epoch {i + 1}" for i in range(n)) + " | train s |",
        "|---|" + "---|" * (n + 1),
    ]
    for name, a in arms.items():
        pts = [_f(p.get("recall_at_20")) for p in a.get("curve", [])]
        lines.append(
            f"| {name} | "
            + " | ".join(pts + ["-"] * (n - len(pts)))
            + f" | {_f(a.get('train_seconds'), 0)} |"
        )
    st = r.get("step", {})
    lines += [
        "",
        f"Optimiser step alone ({st.get('table')}): lazy {st.get('lazy_early_ms')} ms early / {st.get('lazy_late_ms')} "
        f"ms late; catch-up {st.get('catch_up_early_ms')} ms early / {st.get('catch_up_late_ms')} ms past step "
        f"{st.get('settled_step')}.",
        "",
    ]
    return lines


SECTIONS["sparse_optimizer"] = sparse_optimizer_section


def ranker_wide_section(r: dict[str, Any]) -> list[str]:
    arms = r.get("arms", {})
    lr = next((a.get("lr_auc") for a in arms.values()), None)
    lines = [
        "## The ranker's wide part fitted like the regression (demo day)",
        "",
        f"`{r.get('command')}`; {r.get('workspace')}. CTR ROC-AUC on the eval day's impressions beside the one-hot "
        f"logistic regression on the same rows ({_f(lr)}); interval: paired bootstrap of arm - regression over "
        f"users. {_machine(r)}.",
        "",
        "| arm | ROC-AUC | arm - regression [95 % CI] | wide part alone |",
        "|---|---|---|---|",
    ]
    for name, a in arms.items():
        ci = a.get("ci") or [None, None]
        lines.append(
            f"| {name} | {_f(a.get('ranker_auc'))} | {_f(a.get('diff'))} [{_f(ci[0])}, {_f(ci[1])}] | "
            f"{_f(a.get('wide_part_alone_auc'))} |"
        )
    return [*lines, "", *[f"- {n}" for n in r.get("notes", [])], ""]


SECTIONS["ranker_wide"] = ranker_wide_section


def main() -> None:
    lines = [
        "# Results",
        "",
        "Generated by `benchmarks/render_results.py` from `benchmarks/results/*.json` "
        "(`make bench` reruns every benchmark, then this). Do not edit by hand.",
        "",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        fn = SECTIONS.get(path.stem)
        if fn is not None:
            lines += fn(r)
        else:
            lines += [f"## {path.stem}", "", "```json", json.dumps(r, indent=2)[:4000], "```", ""]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
