"""docs/RESULTS.md sections for the model benchmarks (towers, ranker, serving); used by render_results.py.
Every figure comes from a results file; a key a run did not write shows as "-"."""

from __future__ import annotations

from typing import Any

from _tables import fmt as _f
from _tables import row, table


def _head(title: str, r: dict[str, Any], name: str = "") -> list[str]:
    m = r.get("machine", {})
    return [
        f"## {title}",
        "",
        f"Command: `{r.get('command') or f'python benchmarks/{name}.py'}`. Machine: {m.get('cpu_count')} CPUs, torch {m.get('torch', '-')}, "
        f"{m.get('torch_threads')} torch threads; git {str(r.get('git_sha') or '-')[:10]}.",
        "",
    ]


def towers_throughput_section(r: dict[str, Any]) -> list[str]:
    c = r.get("cpu", {})
    measures = {
        "training samples, DHEN backbone": "train_samples_per_second",
        "training samples, MLP backbone": "train_samples_per_second_mlp_backbone",
        "inference, user tower (users)": "inference_users_per_second",
        "inference, Pin tower (ads)": "inference_ads_per_second",
        "Parquet-to-tensor loader alone (samples)": "loader_samples_per_second",
    }
    return _head("Upstream towers: throughput (CPU)", r) + [
        *table(("measure", "per second"), [(m, _f(c.get(k), 1)) for m, k in measures.items()]),
        "",
        f"Loader / DHEN training step: {_f(c.get('loader_over_train_step'), 1)}x (bar 5x). "
        f"CUDA: {r.get('cuda') or r.get('cuda_reason', '-')}.",
        "",
    ]


def towers_ablation_section(r: dict[str, Any]) -> list[str]:
    lines = _head("Upstream towers: ablations", r)
    for name in ("synthetic", "movielens_100k"):
        d = r.get(name, {})
        if "arms" not in d:
            lines += [f"{name}: {d.get('skipped', 'not run')}", ""]
            continue
        b = d.get("baselines", {})
        lines += [
            f"**{name}** (train {d['train_days'][0]}..{d['train_days'][-1]}, test {d['test_days']}, "
            f"{d['n_test_users']} test users, seeds {r.get('seeds')}). Popularity recall@100 "
            f"{_f(b.get('popularity_recall_at_100'))}, oracle {_f(b.get('oracle_recall_at_100'))}, oracle CTR "
            f"ROC-AUC {_f(b.get('oracle_ctr_roc_auc'))}.",
            "",
        ]
        rows = []
        for arm, a in d["arms"].items():
            vs = a.get("vs_full", {}).get("per_seed", [])
            dr = "; ".join(
                f"{_f(x['recall_at_100']['diff'])} [{_f(x['recall_at_100']['lo'])}, {_f(x['recall_at_100']['hi'])}]"
                for x in vs
            )
            da = "; ".join(
                f"{_f(x['ctr_roc_auc']['diff'])} [{_f(x['ctr_roc_auc']['lo'])}, {_f(x['ctr_roc_auc']['hi'])}]"
                for x in vs
            )
            rows.append(
                (
                    arm,
                    f"{_f(a['recall_at_100_mean'])} ± {_f(a['recall_at_100_std'])}",
                    f"{_f(a['ctr_roc_auc_mean'])} ± {_f(a['ctr_roc_auc_std'])}",
                    dr or "-",
                    da or "-",
                )
            )
        header = (
            "arm",
            "recall@100 (mean ± sd)",
            "CTR ROC-AUC (mean ± sd)",
            "Δ recall vs full, per seed [95 % CI]",
        )
        lines += table((*header, "Δ ROC-AUC vs full, per seed [95 % CI]"), rows)
        lines.append("")
    return lines


def _logistic_rows(b: dict[str, Any] | None) -> list[str]:
    """Table rows: the one-hot logistic regression on the ranker's rows, and ranker - regression with its
    interval (`eval.baselines.logistic_vs_ranker`); none when the run had no baseline."""
    if not b:
        return []
    lo, hi = b["ranker_minus_logistic_ci"]
    return [
        row(("one-hot logistic regression ROC-AUC (same rows)", _f(b["logistic_roc_auc"]), "-", "-")),
        row(
            (
                "ranker - regression [95 % paired CI over users]",
                f"{_f(b['ranker_minus_logistic'])} [{_f(lo)}, {_f(hi)}]",
                "-",
                "-",
            )
        ),
    ]


def recall_rows(ret: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows (recall@k, ours, popularity, oracle) of an eval document's retrieval part, k ascending."""
    return [
        (
            f"recall@{k}",
            _f(ret["recall_at_k"][k]),
            _f(ret["popularity_recall_at_k"][k]),
            _f(ret.get("oracle_recall_at_k", {}).get(k)),
        )
        for k in sorted(ret.get("recall_at_k", {}), key=int)
    ]


def synthetic_quality_section(r: dict[str, Any]) -> list[str]:
    ev = r.get("eval", {})
    ret, rank = ev.get("retrieval", {}), ev.get("ranking", {})
    lines = _head("Upstream model: quality on a larger synthetic log (full daily path)", r)
    lines += [
        f"Log: {r.get('synth')}; trained from scratch on {len(r.get('train_days', []))} days, then "
        f"{len(r.get('daily_days', []))} daily cycles; evaluated day {r.get('eval_day')}.",
        "",
    ]
    rows = recall_rows(ret)
    rows += [
        ("downstream ranker ROC-AUC", _f(rank.get("roc_auc")), "-", _f(rank.get("oracle_roc_auc"))),
        ("upstream CTR head ROC-AUC", _f(r.get("upstream_ctr_roc_auc")), "-", "-"),
    ]
    lines += [
        *table(("metric", "ours", "popularity", "oracle"), rows),
        *_logistic_rows(r.get("baselines")),
        "",
        *table(
            ("bar", "value", "met"),
            [
                (f"{name} (bar {b.get('bar')})", _f(b.get("ratio", b.get("diff"))), b.get("met"))
                for name, b in r.get("bars", {}).items()
            ],
        ),
    ]
    reach = r.get("reachable", {})
    lines += [
        "",
        f"The oracle's own recall@100 is {_f(reach.get('oracle_recall_at_100_over_popularity'), 2)}x popularity's "
        "on this log: no model can pass a higher multiple.",
    ]
    if reach.get("nonpersonal_oracle_roc_auc") is not None:
        lines.append(
            f"The true p_click without the users' latent interests reaches ROC-AUC "
            f"{_f(reach['nonpersonal_oracle_roc_auc'])} on the same impressions."
        )
    others = r.get("other_worlds", {})
    if others:
        lines += [
            "",
            "The same path on the same-size log in other worlds (recall@100; ROC-AUC of the downstream ranker):",
            "",
        ]
        rows = []
        for name, w in others.items():
            ret_w, rank_w = w["eval"]["retrieval"], w["eval"]["ranking"]
            b = w.get("bars", {})
            rows.append(
                (
                    name,
                    _f(ret_w["recall_at_k"]["100"]),
                    _f(ret_w["popularity_recall_at_k"]["100"]),
                    _f(ret_w.get("oracle_recall_at_k", {}).get("100")),
                    _f(b.get("recall_at_100_vs_popularity", {}).get("ratio"), 2),
                    _f(b.get("recall_at_100_vs_oracle", {}).get("ratio"), 2),
                    _f(rank_w.get("roc_auc")),
                    _f(rank_w.get("oracle_roc_auc")),
                    _f(rank_w.get("nonpersonal_oracle_roc_auc")),
                )
            )
        header = ("world", "ours", "popularity", "oracle", "ours / popularity", "ours / oracle", "ranker AUC")
        lines += table((*header, "oracle AUC", "non-personal AUC"), rows)
    return [*lines, ""]


def synthetic_reachability_section(r: dict[str, Any]) -> list[str]:
    lines = _head("Synthetic log: what any retrieval model can reach, by world", r)
    lines += [
        f"Base world {r.get('base')}; last day of each log, recall@{r.get('k')} of the ads clicked that day. "
        "No model trained: ranking by the true p_click (oracle) bounds every model.",
        "",
    ]
    rows = [
        (
            name,
            _f(w.get("top1pct_ad_impression_share"), 3),
            _f(w.get("popularity_recall_at_100")),
            _f(w.get("oracle_recall_at_100")),
            _f(w.get("oracle_over_popularity"), 2),
            _f(w.get("oracle_roc_auc")),
            _f(w.get("nonpersonal_oracle_roc_auc")),
        )
        for name, w in r.get("worlds", {}).items()
    ]
    header = ("world", "top 1 % ads' impression share", "popularity", "oracle", "oracle / popularity")
    return [*lines, *table((*header, "oracle ROC-AUC", "non-personal ROC-AUC"), rows), ""]


def _size(s: dict[str, Any]) -> str:
    keys = ("n_users", "n_ads", "n_days", "impressions_per_day", "seed")
    return ", ".join(f"{k} {s[k]}" for k in keys if k in s)


def synthetic_ceiling_section(r: dict[str, Any]) -> list[str]:
    lines = _head("Synthetic log: what a model could learn of each user (ceilings)", r)
    lines += [
        f"synthetic_quality's logs ({_size(r.get('synth', {}))}); the last day. Each row replaces the users' true interests in "
        "the true click model by an estimate (everything else known exactly, which is generous to a model): "
        "`prior` = the region's mean, `feedback` = the posterior mode from the user's own impressions and "
        "clicks before the test day, `policy` / `policy+feedback` = the same with the logging policy's private "
        "estimate of the user known. Logistic regression: a learned reference that knows nothing of the world "
        "(one-hot ad, user, advertiser, category, surface, position, region x category, age x category, surface "
        "x category; L2 chosen on the last history day). `models` = synthetic_quality.json's figures on the same "
        "log.",
        "",
    ]
    for name, w in r.get("worlds", {}).items():
        auc, rec, m = w.get("roc_auc", {}), w.get("recall_at_100", {}), w.get("models") or {}
        b = w.get("bars", {})
        lines += [
            f"**{name}**: {w.get('history_users')} users with history, "
            f"{_f(w.get('history_clicks_per_user'), 2)} clicks and {_f(w.get('history_impressions_per_user'), 1)} "
            f"impressions per user before day {w.get('day')}. Ranking bar (oracle - 0.02) "
            f"{_f(b.get('ranking_roc_auc_bar'))}, within the best ceiling: {b.get('ranking_bar_within_ceiling')}; "
            f"recall bar (2x popularity) {_f(b.get('recall_bar'))}, within the best ceiling: "
            f"{b.get('recall_bar_within_ceiling')}.",
            "",
        ]
        estimates = (
            "oracle",
            "policy+feedback",
            "policy",
            "feedback",
            "prior",
            "nonpersonal_oracle",
            "popularity",
        )
        lr = w.get("logistic_regression") or {}
        rows = [(k, _f(auc.get(k)), _f(rec.get(k))) for k in estimates]
        rows += [
            (
                f"logistic regression (learned from the log: one-hot features, L2 {lr.get('l2', '-')})",
                _f(lr.get("roc_auc")),
                "-",
            ),
            (
                "models: ranker / upstream CTR head; retrieval",
                f"{_f(m.get('ranker_roc_auc'))} / {_f(m.get('upstream_ctr_roc_auc'))}",
                _f(m.get("retrieval_recall_at_100")),
            ),
        ]
        lines += table(("estimate of the user", "ROC-AUC (test-day impressions)", "recall@100"), rows)
        lines.append("")
    return lines


def ranker_init_section(r: dict[str, Any]) -> list[str]:
    lines = _head("Ranker: embedding start N(0, 1) vs N(0, 0.01)", r)
    lines += [
        f"synthetic_quality's log ({_size(r.get('synth', {}))}); CTR towers trained on days "
        f"{(r.get('upstream_window') or ['-'])[0]}-{(r.get('upstream_window') or ['-'])[-1]}; test day "
        f"{r.get('test_day')} ({r.get('n_test')} impressions); seeds {r.get('seeds')} (ranker init and row order). "
        "`one_pass`: one epoch over the 11 days before the test day; `daily`: the daily cycle's schedule (2 epochs "
        "on the first 8 days, then one epoch per later day).",
        "",
    ]
    rows = []
    for g, e in r.get("regimes", {}).items():
        a, b = e["arms"].get("normal_1", {}), e["arms"].get("std_0.01", {})
        d = e.get("difference", {}).get("roc_auc", {})
        ci = d.get("t_ci95_over_seeds") or [None, None]
        rows.append(
            (
                g,
                _f(a.get("roc_auc_mean")),
                _f(b.get("roc_auc_mean")),
                f"{_f(d.get('mean'))} [{_f(ci[0])}, {_f(ci[1])}]",
                f"{d.get('seeds_better')}/{len(r.get('seeds', []))}",
                _f(a.get("log_loss_mean"), 5),
                _f(b.get("log_loss_mean"), 5),
            )
        )
    header = (
        "regime",
        "ROC-AUC N(0, 1)",
        "ROC-AUC std 0.01",
        "difference (t 95 % over seeds)",
        "seeds better",
    )
    return [*lines, *table((*header, "log loss N(0, 1)", "log loss std 0.01"), rows), ""]


def gowalla_section(r: dict[str, Any]) -> list[str]:
    lines = _head("Gowalla (LightGCN split) against the published table", r, "gowalla")
    lines += [
        f"Model: {r.get('model', '-')}. Wall time {_f(r.get('wall_seconds'), 0)} s.",
        "",
    ]
    mine: list[tuple[float, tuple[str, ...]]] = [
        (
            r.get("recall_at_20") or 0,
            ("**derm (ours)**", f"**{_f(r.get('recall_at_20'))}**", f"**{_f(r.get('ndcg_at_20'))}**"),
        )
    ]
    graph = (r.get("graph") or {}).get("test")
    if isinstance(graph, dict):  # the blend's two sources alone, same run, same users
        for name, d in (
            ("derm towers alone", graph.get("towers")),
            ("co-click graph alone", graph.get("graph_alone")),
        ):
            if isinstance(d, dict):
                rec, nd = _f(d.get("recall_at_20")), _f(d.get("ndcg_at_20"))
                mine.append((d.get("recall_at_20") or 0, (f"*{name} (this run)*", f"*{rec}*", f"*{nd}*")))
    ref = r.get("reference_mf")
    if isinstance(ref, dict):  # measured in the same run, same protocol
        mine.append(
            (
                ref.get("recall_at_20") or 0,
                (
                    f"*plain MF reference (this run, {_f(ref.get('wall_seconds'), 0)} s)*",
                    f"*{_f(ref.get('recall_at_20'))}*",
                    f"*{_f(ref.get('ndcg_at_20'))}*",
                ),
            )
        )
    mine.sort(key=lambda x: -x[0])
    bars = r.get("bars")
    pub = bars.get("rows", []) if isinstance(bars, dict) else []
    rows: list[tuple[str, ...]] = []
    for p in pub:  # published rows best first; ours where its recall puts it
        while mine and mine[0][0] >= (p.get("recall_at_20") or 0):
            rows.append(mine.pop(0)[1])
        rows.append((p.get("model"), _f(p.get("recall_at_20")), _f(p.get("ndcg_at_20"))))
    rows += [m[1] for m in mine]
    lines += table(("system", "Recall@20", "NDCG@20"), rows)
    chosen = r.get("chosen", {})
    lines += [
        "",
        f"Chosen on the validation split: {chosen.get('params')}, {chosen.get('epochs')} epochs (validation "
        f"recall@20 {_f(chosen.get('val_recall_at_20'))}); bar 0.1754 (YoutubeDNN) met: {r.get('bar_met')}.",
        "",
    ]
    if isinstance(graph, dict):
        val = (r.get("graph") or {}).get("validation", {})
        by = ", ".join(f"{g}: {_f(x)}" for g, x in (val.get("recall_at_k_by_gamma") or {}).items())
        ci = graph.get("diff_ci") or {}
        lines += [
            f"Towers + co-click graph: gamma {graph.get('gamma')} chosen on the validation split (recall@20 by "
            f"gamma: {by}; the graph alone {_f((val.get('graph_alone') or {}).get('recall_at_20'))}). On test, "
            f"blend minus towers alone {ci.get('blend_minus_towers')}, blend minus graph alone "
            f"{ci.get('blend_minus_graph_alone')} (95 % paired bootstrap over users). Graph fit "
            f"{graph.get('graph_fit_seconds')} s (rank {graph.get('graph_rank')}), the graph path "
            f"{graph.get('seconds')} s for all users.",
            "",
        ]
    lines += [
        "Validation curves (recall@20 on the held-out 10 % after each epoch):",
        "",
    ]
    for run in r.get("validation", {}).get("runs", []):
        curve = ", ".join(f"{p['epoch']}: {_f(p['recall_at_20'], 3)}" for p in run.get("curve", []))
        lines.append(f"- {run.get('params')}: {curve}")
    one = r.get("ablation", {}).get("one_at_a_time") if isinstance(r.get("ablation"), dict) else None
    if one:
        lines += [
            "",
            f"Each setting changed alone ({one.get('source')}; validation recall@20 after {one.get('epochs')} "
            "epochs):",
            "",
            *table(
                ("arm", "differs from the chosen config", "val recall@20"),
                [(a["arm"], a["differs"], _f(a["val_recall_at_20"])) for a in one.get("rows", [])],
            ),
        ]
    lines += [
        "",
        "Protocol note: hyperparameters and the epoch count are chosen on a validation split carved from "
        "train.txt and test.txt is scored once; the published logs stop early on test.txt itself, which is laxer.",
    ]
    return [*lines, ""]


def ranker_ablation_section(r: dict[str, Any]) -> list[str]:
    lines = _head("Downstream ranker: DERM-input ablation (paper Tables 2 and 4)", r)
    for name in ("synthetic", "movielens_100k"):
        d = r.get(name, {})
        if "arms" not in d:
            continue
        lines += [
            f"**{name}** ({d.get('n_test_impressions', '-')} test impressions). Lifts vs `none`, mean over seeds.",
            "",
        ]
        rows = [
            (
                arm,
                f"{_f(a.get('roc_auc_mean'))} ± {_f(a.get('roc_auc_std'))}",
                _f(a.get("lift_vs_none", {}).get("roc_auc", {}).get("lift_pct"), 2),
                _f(a.get("pr_auc_mean")),
                _f(a.get("cvr_roc_auc_mean")),
                _f(a.get("cvr_pr_auc_mean")),
            )
            for arm, a in d["arms"].items()
        ]
        lines += table(("arm", "CTR ROC-AUC", "lift %", "CTR PR-AUC", "CVR ROC-AUC", "CVR PR-AUC"), rows)
        bar = d.get("bar_all_beats_none_ctr_roc_auc")
        if bar is not None:
            paired = ", ".join(_f(x) for x in bar.get("paired_lifts", []))
            lines += [
                "",
                "Bar (`all` beats `none` in CTR ROC-AUC by more than the seed spread, in every seed): "
                f"**{'met' if bar.get('met') else 'not met'}**; lift {_f(bar.get('lift'))} vs largest seed sd "
                f"{_f(bar.get('spread_max_std'))}; paired lifts per seed {paired}.",
            ]
        lines.append("")
    return lines


def projection_section(r: dict[str, Any]) -> list[str]:
    t = r.get("throughput_interleaved", {})
    lines = _head("Downstream ranker: the DERM projection layer", r)
    lines += [
        f"DERM inputs {r.get('derm_inputs')} of width {r.get('upstream_dim')} ({r.get('derm_width')} in all), "
        f"projected to {r.get('projection_width')}.",
        "",
    ]
    sps = t.get("samples_per_second_median", {})
    rows = [
        (
            arm,
            f"{_f(a.get('roc_auc_mean'))} ± {_f(a.get('roc_auc_std'))}",
            _f(a.get("roc_auc_lift_pct"), 2),
            _f(sps.get(arm), 0),
        )
        for arm, a in r.get("arms", {}).items()
    ]
    lines += table(("arm", "ROC-AUC (mean ± sd)", "lift % vs none", "samples/s (interleaved median)"), rows)
    lines += ["", f"Throughput gain of the projection: {_f(t.get('throughput_gain_pct'), 1)} %.", ""]
    return lines


def two_stage_section(r: dict[str, Any]) -> list[str]:
    lines = _head("Two-stage retrieval then ranking vs one stage", r, "two_stage")
    rec = r.get("recall_at_50") or {k: v for k, v in r.items() if isinstance(v, float) and "recall" in k}
    lines += table(
        ("system", "recall@50"),
        [(k, _f(v if not isinstance(v, dict) else v.get("recall"))) for k, v in rec.items()],
    )
    lines += [
        "",
        f"Test day {r.get('test_day')}: {r.get('n_users')} users who clicked, {r.get('n_live_ads')} live ads; "
        f"recall@{r.get('candidates')} of the first stage's candidates {_f(r.get('candidates_recall_at_500'))}.",
    ]
    for key in ("two_stage_minus_retrieval", "ranker_all_live_minus_two_stage"):
        d = r.get(key)
        if d:
            lines.append(
                f"- {key}: {_f(d.get('diff'))} (paired bootstrap 95 % CI {_f(d.get('lo'))} to {_f(d.get('hi'))})"
            )
    return [*lines, ""]


def query_latency_section(r: dict[str, Any]) -> list[str]:
    lines = _head("Query latency (500 candidates -> ranker -> top 50, one thread)", r)
    ws = r.get("workspace", {})
    lines += [
        f"{r.get('n_queries')} queries over {ws.get('n_live_ads')} live ads: p50 {_f(r.get('p50_ms'), 1)} ms, "
        f"p99 {_f(r.get('p99_ms'), 1)} ms (target p99 < {_f(r.get('target_p99_ms'), 0)} ms: "
        f"{r.get('meets_target')}).",
        "",
        *table(
            ("stage", "p50 ms", "p99 ms"),
            [
                (st, _f(s.get("p50_ms"), 2), _f(s.get("p99_ms"), 2))
                for st, s in r.get("breakdown_ms", {}).items()
            ],
        ),
    ]
    return [*lines, ""]


def downsampling_section(r: dict[str, Any]) -> list[str]:
    """Negative downsampling's quality and cost against every row (benchmarks/downsampling.py)."""
    lo, hi = r["rates"]
    syn = r["synthetic"]
    lines = _head(f"Negative downsampling: rate {hi} against every row", r, "downsampling")
    lines += [
        f"Synthetic log of {syn['impressions_per_day']:,} impressions a day ({syn['n_users']:,} users, "
        f"{syn['n_ads']:,} ads), bootstrap on day 0, daily cycles on days 1 and 2; seeds {r['seeds']} (towers, "
        "ranker and draws). Day 2 is scored by the versions after one daily increment, day 1 by the bootstrap's. "
        f"Difference = rate {hi} - rate {lo} paired by seed, 95 % t interval over seeds.",
        "",
    ]
    for day in ("day2", "day1"):
        d = r[day]
        diff = d[f"rate_{hi}_minus_rate_{lo}"]
        rows = []
        for m, e in diff.items():
            a, b = d["by_rate"][repr(lo)][m], d["by_rate"][repr(hi)][m]
            ci = e["ci"]
            rows.append(
                (
                    m,
                    f"{_f(a['mean'])} ± {_f(a['std'])}",
                    f"{_f(b['mean'])} ± {_f(b['std'])}",
                    f"{e['mean']:+.4f}",
                    f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "-",
                )
            )
        lines += [f"{day} (mean ± sd over seeds):", ""]
        lines += table(("metric", f"rate {lo}", f"rate {hi}", "difference", "95 % interval"), rows)
        cyc = d["by_rate"]
        lines += [
            "",
            f"Daily cycle seconds: rate {lo} {cyc[repr(lo)]['cycle_seconds']['mean']:.0f}, rate {hi} "
            f"{cyc[repr(hi)]['cycle_seconds']['mean']:.0f}.",
            "",
        ]
    sp = r["day2_stage_speedup"]
    lines += [
        "Day 2 stage seconds, every row over downsampled: " + ", ".join(f"{k} {v}x" for k, v in sp.items()),
        "",
    ]
    return lines


SECTIONS = {
    "downsampling": downsampling_section,
    "gowalla": gowalla_section,
    "projection": projection_section,
    "query_latency": query_latency_section,
    "ranker_ablation": ranker_ablation_section,
    "ranker_init": ranker_init_section,
    "synthetic_ceiling": synthetic_ceiling_section,
    "synthetic_quality": synthetic_quality_section,
    "synthetic_reachability": synthetic_reachability_section,
    "towers_ablation": towers_ablation_section,
    "towers_throughput": towers_throughput_section,
    "two_stage": two_stage_section,
}
