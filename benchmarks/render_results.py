"""Regenerate docs/RESULTS.md and the README's figures block (between its `results:begin` / `results:end`
markers) from benchmarks/results/*.json. No figure in either is typed by hand; tests/test_results_render.py
fails when a committed file differs from what the JSON renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _render_models import SECTIONS as MODEL_SECTIONS
from _render_models import _logistic_rows, recall_rows
from _render_readme import readme_block, replace_block
from _render_systems import SECTIONS as SYSTEM_SECTIONS
from _render_systems import _machine
from _tables import fmt as _f
from _tables import table
from common import RESULTS, ROOT

OUT = ROOT / "docs" / "RESULTS.md"
README = ROOT / "README.md"


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
    ]
    rows = recall_rows(ret)
    if "relevance_recall_at_k" in ret:
        rows += [
            (f"overlap with the oracle's top {k}", _f(ret["relevance_recall_at_k"][k]), "-", 1) for k in ks
        ]
    rows += [
        (
            f"ranker ROC-AUC (CTR head, all {rank.get('n_impressions')} impressions)",
            _f(rank.get("roc_auc")),
            "-",
            _f(rank.get("oracle_roc_auc")),
        ),
        ("ranker PR-AUC", _f(rank.get("pr_auc")), "-", "-"),
        (
            "mean predicted / observed CTR",
            f"{_f(rank.get('predicted_ctr'))} / {_f(rank.get('observed_ctr'))}",
            "-",
            "-",
        ),
    ]
    lines += table(("metric", "ours", "popularity", "oracle"), rows)
    lines += [
        *_logistic_rows(r.get("baselines")),
        "",
        *table(
            ("stage", "seconds"),
            [(k, f"{v:.1f}") for k, v in r["stage_seconds"].items()]
            + [("**total**", f"**{r['total_seconds']:.1f}**")],
        ),
        "",
    ]
    st = r.get("dataset_stats", {})
    if st:
        lines += ["Dataset: " + ", ".join(f"{k} {_f(v, 4)}" for k, v in st.items()), ""]
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
        ]
        rows = []
        for arm, e in d["arms"].items():
            auc = f"{e['roc_auc_mean']:.4f} ± {e['roc_auc_std']:.4f}"
            if arm == "none":
                rows.append(("none", auc, "-", "-", "-", "-"))
            else:
                lo, hi = e["lift_ci95"]
                rows.append(
                    (
                        arm,
                        auc,
                        f"{e['lift_mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]",
                        f"{e['lift_pct']:+.2f} %",
                        f"{e['seeds_with_positive_lift']}/{len(e['per_seed'])}",
                        f"{e['paper_lift_pct']:+.2f} %",
                    )
                )
        header = ("arm", "CVR ROC-AUC (mean ± sd)", "lift (mean, 95 % CI over seeds)", "lift %")
        lines += table((*header, "seeds with lift > 0", "paper lift %"), rows)
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
    ]
    rows = []
    for name, a in ret["arms"].items():
        vs = a.get("vs_popularity")
        ci = f"{vs['diff']:+.4f} [{vs['diff_ci'][0]:+.4f}, {vs['diff_ci'][1]:+.4f}]" if vs else "-"
        rows.append((name, f"{a['recall_at_100']:.4f}", ci))
    lines += table(("retrieval arm", "recall@100", "minus popularity [95 % CI]"), rows)
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
    ]
    rows = []
    for k in ("k10", "k50"):
        for name, sec in (("clicks", r[k]), ("revenue", r[k]["revenue"])):
            cells = [f"{sec[s]:.3f} ({sec['fraction_of_oracle'][s]:.2f})" for s in systems]
            lo, hi = sec["two_stage_minus_retrieval_ci"]
            rows.append((k[1:], name, *cells, f"[{lo:+.3f}, {hi:+.3f}]"))
    lines += table(("k", "measure", *systems, "two_stage - retrieval [95 % CI]"), rows)
    lines.append("")
    return lines


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
        ]
        rows = []
        for m in ("transe", "transr", "transra", "popularity"):
            x = d.get(m)
            if not x:
                continue
            ci = (x.get("mrr_interval") or {}).get("ci95")
            ci_s = f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else ""
            rows.append(
                (m, f"{_f(x.get('mrr'))}{ci_s}", _f(x.get("hits_at_10")), _f(x.get("edges_per_s"), 0))
            )
        lines += table(("model", "MRR [95 % CI]", "Hits@10", "edges/s"), rows)
        lines.append("")
    return lines


def kge_tuning_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## KGE learning-rate / epochs choice (validation day)",
        "",
        f"Trained on day {r.get('train_day')}, validated on day {r.get('validation_day')}; degree popularity MRR "
        f"{_f((r.get('popularity') or {}).get('mrr'))}. {_machine(r)}.",
        "",
        *table(
            ("model", "lr", "epochs", "MRR", "Hits@10", "clicked-ad MRR"),
            [
                (
                    x["model"],
                    x["lr"],
                    x["epochs"],
                    _f(x["mrr"]),
                    _f(x["hits_at_10"]),
                    _f(x.get("clicked_mrr")),
                )
                for x in r.get("runs", [])
            ],
        ),
    ]
    return lines + [""]


def offsite_signal_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Does the synthetic log's offsite data carry conversion signal? (oracle-weighted CVR ROC-AUC)",
        "",
        f"Eval days {r.get('eval_days')}, seeds {r.get('seeds')}; mean [min, max] over seeds. {_machine(r)}.",
        "",
    ]

    def span(v: dict[str, Any]) -> str:
        return f"{_f(v['mean'])} [{_f(v['min'])}, {_f(v['max'])}]"

    rows = []
    for arm, a in r.get("arms", {}).items():
        summ = a.get("summary", {})
        rows += [(arm, sig, span(v)) for sig, v in (summ.get("oracle_roc_auc") or {}).items()]
        v = summ.get("offsite_within_click_strata_oracle_roc_auc")
        if v:
            rows.append((arm, "offsite, within equal onsite-click strata", span(v)))
    return lines + table(("world", "signal", "ROC-AUC"), rows) + [""]


def movielens_run_section(r: dict[str, Any]) -> list[str]:
    ref = r.get("reference", {})
    lines = [
        "## MovieLens-100K through `derm run` (weekly periods)",
        "",
        f"`{r.get('command')}`; reference: {ref.get('source')}. {_machine(r)}.",
        "",
    ]
    rows = []
    for name, a in r.get("arms", {}).items():
        p = a.get("pooled", {})
        d = a.get("masked_minus_popularity") or {}
        ci = d.get("ci") or [None, None]
        diff = f"{_f(d.get('diff'))} [{_f(ci[0])}, {_f(ci[1])}]" if d else "-"
        rows.append(
            (name, p.get("n_user_weeks"), _f(p.get("masked_recall_at_100")))
            + (_f(p.get("masked_popularity_recall_at_100")), diff, _f(p.get("recall_at_100")))
            + (_f(p.get("popularity_recall_at_100")), _f(a.get("seconds"), 0))
        )
    header = ("backbone", "user-weeks", "recall@100 (seen masked)", "popularity (masked)")
    header += ("ours - popularity [95 % CI]", "recall@100 (derm eval)", "popularity (derm eval)", "seconds")
    return lines + table(header, rows) + [""]


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
        ]
        rows = []
        for arm, a in d["arms"].items():
            vs = (a.get("vs_none") or {}).get("cvr_roc_auc") or {}
            ci = vs.get("diff_ci95_over_seeds")
            diff = (
                "" if not vs else f"{vs['diff_mean']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
            )
            rows.append(
                (
                    arm,
                    f"{_f(a['ctr_roc_auc_mean'])} +- {_f(a['ctr_roc_auc_std'])}",
                    _f(a["ctr_pr_auc_mean"]),
                    f"{_f(a['cvr_roc_auc_mean'])} +- {_f(a['cvr_roc_auc_std'])}",
                    _f(a["cvr_pr_auc_mean"]),
                    diff,
                )
            )
        header = (
            "arm",
            "CTR ROC-AUC",
            "CTR PR-AUC",
            "CVR ROC-AUC",
            "CVR PR-AUC",
            "CVR ROC-AUC vs none [95 % CI]",
        )
        lines += table(header, rows)
        vd = ((d["arms"].get("derm_finetune_attention") or {}).get("vs_derm") or {}).get("cvr_roc_auc")
        if vd:
            ci = vd.get("diff_ci95_over_seeds")
            lines += [
                "",
                f"derm_finetune_attention - derm (the KGE path on top of the DERM inputs), CVR ROC-AUC "
                f"{vd['diff_mean']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "") + ".",
            ]
        wp = d.get("wide_parts") or {}
        if wp:
            lines += [
                "",
                "Fitted wide parts (shared by every seed; L2 per task, CVR weights of the KGE score columns, "
                "score then found flag per relation): "
                + "; ".join(
                    f"{k}: l2 {x.get('l2')}"
                    + (
                        f", CVR weights {[round(w, 3) for w in x['cvr_dense_weights']]}"
                        if x.get("cvr_dense_weights")
                        else ""
                    )
                    for k, x in wp.items()
                    if x
                )
                + ".",
            ]
        b = d.get("bar_finetune_attention_cvr") or {}
        if b:
            lines += [
                "",
                f"Bar (finetune_attention beats none on CVR ROC-AUC by more than the seed spread, and >= frozen): "
                f"{'met' if b.get('met') else 'not met'} (lift {b.get('cvr_lift_vs_none'):+.4f} vs spread "
                f"{_f(b.get('spread_max_std'))}; vs frozen {b.get('cvr_diff_vs_frozen'):+.4f}"
                + (
                    f", paired 95 % interval over test impressions [{b['vs_frozen_ci'][0]:+.4f}, "
                    f"{b['vs_frozen_ci'][1]:+.4f}]: "
                    f"{'not worse than frozen' if b.get('not_worse_than_frozen') else 'worse than frozen'}"
                    if b.get("vs_frozen_ci")
                    else ""
                )
                + ").",
            ]
        h = d.get("cvr_headroom")
        if h:
            scores = ", ".join(
                f"{k.removeprefix('kge_score_').removesuffix('_alone')} {_f(v)}"
                for k, v in h.items()
                if k.startswith("kge_score_")
            )
            lines += [
                "",
                f"CVR headroom on the same {h['rows']:,} clicked test impressions ({h['conversions']} conversions), "
                f"ROC-AUC: the true P(conversion | click) {_f(h['true_p_conversion'])}; its logit without the "
                f"conversion-specific term {_f(h['logit_without_conversion_term'])}; plus the best any offsite "
                f"signal could know {_f(h['offsite_ceiling'])}; the true user x advertiser conversion affinity alone "
                f"{_f(h['affinity_alone'])}; each TransRA relation score alone: {scores}.",
            ]
        lines.append("")
    return lines


def kge_signal_section(r: dict[str, Any]) -> list[str]:
    """Why the KGE path gains little, measured (kge_signal.py)."""

    def ab(v: dict[str, Any] | None) -> str:
        return "-" if not v else f"{_f(v.get('oracle'))} / {_f(v.get('realised'))}"

    lines = [
        "## Why the KGE path gains little: offsite information, KGE config, where the ranker reads it",
        "",
        f"`{r.get('command')}`; the clicked test impressions of kge_ranker.json's synthetic split "
        f"({r.get('n_test_clicks')} clicks, {r.get('n_test_conversions')} conversions); CVR ROC-AUC as oracle "
        f"(rows weighted by their true P(conversion | click)) / realised. {_machine(r)}.",
        "",
    ]
    c = r.get("ceiling") or {}
    rows = [(k, ab(v)) for k, v in c.items() if isinstance(v, dict)]
    lines += table(("oracle signal", "CVR ROC-AUC oracle / realised"), rows)
    lines += [
        "",
        f"Clicks whose user converted offsite with the advertiser before: {_f(c.get('share_with_offsite_history'))}.",
        "",
    ]
    cf = r.get("kge_configs") or {}
    rows = [
        (
            k,
            _f(v.get("offsite_score_r_with_a")),
            _f(v.get("advertiser_cosine_r_with_conversion_factor_cosine")),
            _f(v.get("next_day_mrr")),
            _f(v.get("train_seconds"), 0),
        )
        for k, v in cf.items()
        if isinstance(v, dict)
    ]
    lines += [
        "KGE configs (scratch on the last KGE day's graph): what each learns of the user x advertiser conversion "
        f"affinity a, and next-day link prediction (popularity MRR {_f(cf.get('popularity_next_day_mrr'))}).",
        "",
        *table(("config", "r(offsite score, a)", "r(advertiser cosines)", "next-day MRR", "train s"), rows),
        "",
    ]
    rows = []
    for name, e in (r.get("lineage_scores") or {}).items():
        for model in ("transra", "transr"):
            for k, v in (e.get(model) or {}).items():
                rows.append((name, model, k, ab(v), _f(v.get("r_with_a")) if "r_with_a" in v else "-"))
        rows.append((name, "true factors", "attention_proxy", ab(e.get("attention_proxy_true_factors")), "-"))
    lines += [
        "The daily KGE lineages kge_ranker's rows read: each score alone.",
        "",
        *table(("lineage", "model", "score", "CVR ROC-AUC oracle / realised", "r with a"), rows),
        "",
    ]
    rows = [
        (name, k, _f(v.get("ctr_roc_auc")), _f(v.get("cvr_roc_auc")))
        for name, e in (r.get("wide_part") or {}).items()
        for k, v in e.items()
    ]
    lines += [
        "The ranker's fitted wide part alone (before the deep part trains), without and with the KGE scores.",
        "",
        *table(("lineage", "wide part", "CTR ROC-AUC", "CVR ROC-AUC"), rows),
        "",
    ]
    rows = [
        (k, _f(v.get("ctr_roc_auc")), _f(v.get("cvr_roc_auc")), _f(v.get("seconds"), 0))
        for k, v in (r.get("ranker_variants") or {}).items()
    ]
    lines += [
        "Ranker variants on kge_ranker's rows, seed 0 (new-default lineage).",
        "",
        *table(("arm", "CTR ROC-AUC", "CVR ROC-AUC", "train s"), rows),
        "",
    ]
    return lines


def _curves(title: str, r: dict[str, Any]) -> list[str]:
    """A title and one row per arm: validation recall@20 after each epoch and the training seconds."""
    arms = r.get("arms", {})
    n = max((len(a.get("curve", [])) for a in arms.values()), default=0)
    lines = [
        title,
        "",
        f"`{r.get('command')}`; validation recall@20 after each epoch ({r.get('split')}); load average at the end "
        f"{[round(x, 1) for x in r.get('load_average', [])]}. {_machine(r)}.",
        "",
    ]
    rows = []
    for name, a in arms.items():
        pts = [_f(p.get("recall_at_20")) for p in a.get("curve", [])]
        rows.append((name, *pts, *["-"] * (n - len(pts)), _f(a.get("train_seconds"), 0)))
    return lines + table(("arm", *(f"epoch {i + 1}" for i in range(n)), "train s"), rows)


def gowalla_ablation_section(r: dict[str, Any]) -> list[str]:
    """The Gowalla towers' settings, one changed at a time, beside plain MF (gowalla_ablation.py)."""
    lines = _curves("## Gowalla: the towers' settings one at a time, beside plain MF (validation split)", r)
    lines += ["", f"Base (`gowalla.BASE`): `{r.get('base')}`. Each arm differs from it in:", ""]
    lines += [f"- {k}: {a.get('differs')}" for k, a in r.get("arms", {}).items()]
    return [*lines, ""]


def sparse_optimizer_section(r: dict[str, Any]) -> list[str]:
    """SparseAdam vs the catch-up sparse Adam on Gowalla's validation split, beside plain MF (sparse_optimizer.py)."""
    lines = _curves(
        "## Sparse Adam: lazy (SparseAdam) vs catch-up, beside plain MF (Gowalla validation split)", r
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


SECTIONS = {
    "aggregation": aggregation_section,
    "demo": demo_section,
    "kge_link_prediction": kge_link_prediction_section,
    "kge_link_prediction_quick": kge_link_prediction_section,
    "kge_ranker": kge_ranker_section,
    "kge_ranker_quick": kge_ranker_section,
    "kge_signal": kge_signal_section,
    "kge_tuning": kge_tuning_section,
    "movielens_quality": movielens_quality_section,
    "movielens_run": movielens_run_section,
    "offsite_signal": offsite_signal_section,
    "slate_value": slate_value_section,
    "sparse_optimizer": sparse_optimizer_section,
    "gowalla_ablation": gowalla_ablation_section,
    **MODEL_SECTIONS,
    **SYSTEM_SECTIONS,
}


def _ranker_wide_rows(arms: dict[str, Any]) -> list[str]:
    lines = [
        "| arm | ROC-AUC | arm - regression [95 % CI] | wide part alone | arm - wide part alone [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for name, a in arms.items():
        ci = a.get("ci") or [None, None]
        wci = a.get("ranker_minus_wide_part_ci") or [None, None]
        wide = (
            f"{_f(a.get('ranker_minus_wide_part'))} [{_f(wci[0])}, {_f(wci[1])}]"
            if a.get("ranker_minus_wide_part") is not None
            else "-"
        )
        lines.append(
            f"| {name} | {_f(a.get('ranker_auc'))} | {_f(a.get('diff'))} [{_f(ci[0])}, {_f(ci[1])}] | "
            f"{_f(a.get('wide_part_alone_auc'))} | {wide} |"
        )
    return lines


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
        *_ranker_wide_rows(arms),
    ]
    lines += ["", *[f"- {n}" for n in r.get("notes", [])]]
    if r.get("earlier_arms"):
        lines += [
            "",
            f"Earlier runs (the spec's features in the wide part; git {str(r.get('earlier_git_sha'))[:10]}):",
            "",
            *_ranker_wide_rows(r["earlier_arms"]),
            "",
            *[f"- {n}" for n in r.get("earlier_notes", [])],
        ]
    return [*lines, ""]


SECTIONS["ranker_wide"] = ranker_wide_section


def render_results(results: dict[str, dict[str, Any]]) -> str:
    """docs/RESULTS.md from `results` (file stem -> its JSON), sections in file-name order."""
    lines = [
        "# Results",
        "",
        "Generated by `benchmarks/render_results.py` from `benchmarks/results/*.json` "
        "(`make bench` reruns every benchmark, then this). Do not edit by hand.",
        "",
    ]
    for stem in sorted(results):
        r = results[stem]
        fn = SECTIONS.get(stem)
        if fn is not None:
            lines += fn(r)
        else:
            lines += [f"## {stem}", "", "```json", json.dumps(r, indent=2)[:4000], "```", ""]
    return "\n".join(lines)


def load_results(results_dir: Path = RESULTS) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))}


def render(results_dir: Path = RESULTS) -> dict[Path, str]:
    """What the committed JSON makes of each generated file: docs/RESULTS.md and the README's block."""
    results = load_results(results_dir)
    return {OUT: render_results(results), README: replace_block(README.read_text(), readme_block(results))}


def main() -> None:
    for path, text in render().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path}")
        else:
            print(f"unchanged {path}")


if __name__ == "__main__":
    main()
