"""What a model can learn about each user from the synthetic log: the oracle with the users' interests estimated.

Issue 3's ranking bar asks for the downstream ranker's ROC-AUC >= the oracle's - 0.02, and its retrieval bar for
recall@100 >= 2x popularity's. The oracle knows each user's latent interest vector u(user, day); a model only
sees the log. This script measures how far *any* model could get if it knew everything about the ads and the
click model exactly (true ad factors, biases, region / age x category, surface and position effects, each
user's bias and drift frequency, the prior the users are drawn from) and had to estimate only each user's
interests from the log. That is generous to the model, so the figures are an estimate of the ceiling from above
(an estimate, not a proof: the plug-in estimate below is not the Bayes-optimal predictor, which would be a bit
higher for ROC-AUC across users).

Per user, u(day) = ws * static + wd * (cos(w t) a + sin(w t) b) (`adslog.oracle.Truth.user_factor`) is linear in
z = [static, a, b] (48 numbers at latent_dim 16). Estimates of z, each the maximum a posteriori of a Gaussian
prior and the logistic click likelihood of the user's impressions on every day before the test day (the days
synthetic_quality's models are trained on):
- `prior`: no feedback: z at the prior mean (static's mean is the user's region's mean, known exactly);
- `feedback`: the posterior from the user's own impressions and clicks (the only user-specific signal a model
  trained on clicks has);
- `policy+feedback`: as `feedback`, with the prior first conditioned on the logging policy's private estimate of
  the user (`policy_user` in `adslog.synth`: 0.8 x the first day's interests + noise), i.e. the most that the
  choice of which ads were shown could reveal.
Each estimate replaces u in the true click logit. Beside them, a learned reference that knows nothing of the
world: `logistic_regression`, an L2-regularised logistic regression over one-hot observable features (ad,
user, advertiser, category, surface, position, region x category, age x category, surface x category), fitted
by L-BFGS on the same days, its L2 weight chosen on the last of them (fit on the others), then refitted on all.
Reported on the test day with `derm eval`'s definitions:
ROC-AUC over the day's impressions and recall@100 over the live ads for the users who clicked, beside the oracle,
the non-personal oracle and popularity; and synthetic_quality.json's model figures for the same log.
Writes benchmarks/results/synthetic_ceiling.json. Usage: python benchmarks/synthetic_ceiling.py
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow.compute as pc
from common import ROOT, write_result
from synthetic_quality import OTHER_WORLDS, SYNTH

from adslog.dataset import Dataset
from adslog.oracle import REFERENCE_POSITION, REFERENCE_SURFACE, Oracle, Truth
from adslog.synth import SynthConfig, World, build_world, generate
from eval.baselines import ADS_FIELDS, LR_L2, logistic_regression, read_rows
from eval.evaluate import group_by_user
from eval.metrics import recall_at_k, roc_auc
from retrieval.retrieve import popularity

K = 100
NEWTON_STEPS = 30
#: rows per block when summing per-user Hessians (rows x (3D)^2 float64 temporaries: ~150 MB)
ROW_BLOCK = 8_192


def rebuild_world(cfg: SynthConfig) -> World:
    """The world `adslog.synth.generate` built for `cfg` (same seed path), for the policy's private estimate."""
    root = np.random.SeedSequence([cfg.seed, 0x5EED])
    return build_world(cfg, np.random.default_rng(root.spawn(1)[0]))


def basis(t: Truth, urow: np.ndarray, day: int | np.ndarray) -> np.ndarray:
    """float64[n, 3]: u(day) = sum_j basis_j * z_j (z_j the static, drift a, drift b blocks) per row."""
    d = np.asarray(day, np.float64) - float(t.params["start_day"])
    theta = t.user_omega[urow].astype(np.float64) * d
    ws, wd = float(t.params["static_weight"]), float(t.params["drift_weight"])
    return np.stack([np.full_like(theta, ws), wd * np.cos(theta), wd * np.sin(theta)], axis=1)


def design(t: Truth, urow: np.ndarray, arow: np.ndarray, day: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """float64[n, 3D]: the click logit's personal term is design @ z (z = [static, a, b] of the row's user)."""
    scale = t.surface_affinity[surface].astype(np.float64) / np.sqrt(t.user_static.shape[1])
    f = t.ad_factor[arow].astype(np.float64) * scale[:, None]
    b = basis(t, urow, day)
    return (b[:, :, None] * f[:, None, :]).reshape(len(urow), -1)


def priors(t: Truth, world: World) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (mean float64[U, 3D], precision float64[3D, 3D])} for the `prior` and `policy+...` estimates."""
    U, D = t.user_static.shape
    static = t.user_static.astype(np.float64)
    region = t.user_region.astype(np.int64)
    centre = np.zeros((int(region.max()) + 1, D))
    np.add.at(centre, region, static)
    centre /= np.maximum(np.bincount(region), 1)[:, None]
    var_s = float(((static - centre[region]) ** 2).mean())
    mean = np.zeros((U, 3 * D))
    mean[:, :D] = centre[region]
    prec = np.diag(np.r_[np.full(D, 1 / var_s), np.ones(2 * D)])
    # policy_user = 0.8 * (ws * static + wd * a) + 0.6 * noise (adslog.synth.build_world): condition z on it
    ws, wd = float(t.params["static_weight"]), float(t.params["drift_weight"])
    h = np.zeros((D, 3 * D))
    h[:, :D] = 0.8 * ws * np.eye(D)
    h[:, D : 2 * D] = 0.8 * wd * np.eye(D)
    noise = 0.36
    prec_p = prec + h.T @ h / noise
    resid = world.policy_user.astype(np.float64) - mean @ h.T
    mean_p = mean + np.linalg.solve(prec_p, (h.T @ resid.T) / noise).T
    return {"region": (mean, prec), "policy": (mean_p, prec_p)}


def map_estimate(
    x: np.ndarray,
    offset: np.ndarray,
    y: np.ndarray,
    group: np.ndarray,
    mean: np.ndarray,
    prec: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Per-user MAP of z under N(mean, prec^-1) and y ~ Bernoulli(sigmoid(offset + x @ z_group)), by Newton's
    method (strictly convex) with the step halved, per user, until that user's objective does not rise. Rows
    must be sorted by `group`. Returns z float64[U, P] and the last max |step|."""
    users, starts = np.unique(group, return_index=True)
    ends = np.r_[starts[1:], len(group)]

    def objective(z: np.ndarray) -> np.ndarray:
        """float64[U]: negative log posterior per user (up to a constant)."""
        eta = offset + np.einsum("np,np->n", x, z[group])
        nll = np.logaddexp(0.0, eta) - y * eta
        d = z - mean
        out = 0.5 * np.einsum("up,pq,uq->u", d, prec, d)
        out[users] += np.add.reduceat(nll, starts)
        return out

    z = mean.copy()
    f = objective(z)
    step_max = np.inf
    for _ in range(NEWTON_STEPS):
        eta = offset + np.einsum("np,np->n", x, z[group])
        p = 1 / (1 + np.exp(-eta))
        grad = (z - mean) @ prec
        hess = np.broadcast_to(prec, (len(z), *prec.shape)).copy()
        w = p * (1 - p)
        grad[users] += np.add.reduceat(x * (p - y)[:, None], starts, axis=0)
        # Hessian blocks: rows in blocks of ROW_BLOCK, cut at user boundaries
        cut = np.searchsorted(starts, np.arange(0, len(group), ROW_BLOCK), side="left")
        bounds = list(dict.fromkeys([*cut.tolist(), len(starts)]))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            lo, hi = starts[a], ends[b - 1]
            xs = x[lo:hi]
            outer = (xs * w[lo:hi, None])[:, :, None] * xs[:, None, :]
            hess[users[a:b]] += np.add.reduceat(outer, starts[a:b] - lo, axis=0)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        scale = np.ones(len(z))
        for _ in range(30):  # halve the step of every user whose objective rose
            f_new = objective(z - scale[:, None] * step)
            worse = f_new > f + 1e-12
            if not worse.any():
                break
            scale[worse] *= 0.5
        step *= scale[:, None]
        z -= step
        f = objective(z)
        step_max = float(np.abs(step).max())
        if step_max < 1e-6:
            break
    return z, step_max


def logistic_reference(ds: Dataset, history: list[int], day: int) -> dict[str, Any]:
    """ROC-AUC on `day` of the logistic regression (`eval.baselines.logistic_regression`, the synthetic log's
    one-hot fields and crosses `ADS_FIELDS`) fitted on `history`, L2 chosen on its last day, then refitted on
    all of it."""
    fit = logistic_regression(
        read_rows(ds, history[:-1], ADS_FIELDS), read_rows(ds, [history[-1]], ADS_FIELDS), ADS_FIELDS, LR_L2
    )
    te = read_rows(ds, [day], ADS_FIELDS)
    return {
        "roc_auc": roc_auc(fit.model.logits(te), te["click"]),
        "l2": fit.model.l2,
        "validation_roc_auc_by_l2": {str(k): v for k, v in fit.validation_roc_auc_by_l2.items()},
        "n_features": fit.model.n_features,
    }


def measure(cfg: SynthConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    work = ROOT / "benchmarks" / "work" / "synthetic_ceiling"
    shutil.rmtree(work, ignore_errors=True)
    generate(cfg, work)
    ds = Dataset.open(work)
    oracle = Oracle.load(work)
    t = oracle.truth
    world = rebuild_world(cfg)
    assert np.array_equal(world.truth.user_ids, t.user_ids), "rebuilt world differs from the generated one"
    day = ds.days()[-1]
    cols = ["user_id", "ad_id", "day", "surface", "position", "click"]
    hist = ds.impressions([d for d in ds.days() if d < day], cols)
    urow = oracle.user_rows(hist.column("user_id").to_numpy())
    order = np.argsort(urow, kind="stable")
    urow = urow[order]
    arow = oracle.ad_rows(hist.column("ad_id").to_numpy())[order]
    hday = hist.column("day").to_numpy()[order]
    surf = hist.column("surface").to_numpy().astype(np.int64)[order]
    pos = hist.column("position").to_numpy().astype(np.int64)[order]
    y = hist.column("click").to_numpy().astype(np.float64)[order]
    x = design(t, urow, arow, hday, surf)
    # the true logit minus its personal term: everything the generous model knows
    offset = np.empty(len(urow))
    for d in np.unique(hday):
        m = hday == d
        offset[m] = t.click_logit(urow[m], arow[m], int(d), surf[m], pos[m]) - t.surface_affinity[
            surf[m]
        ] * t.affinity(urow[m], arow[m], int(d))
    pri = priors(t, world)
    estimates: dict[str, np.ndarray] = {}
    steps: dict[str, float] = {}
    estimates["prior"] = pri["region"][0]
    estimates["feedback"], steps["feedback"] = map_estimate(x, offset, y, urow, *pri["region"])
    estimates["policy"] = pri["policy"][0]
    estimates["policy+feedback"], steps["policy+feedback"] = map_estimate(x, offset, y, urow, *pri["policy"])
    fit_s = time.perf_counter() - t0

    D = t.user_static.shape[1]

    def user_vec(z: np.ndarray, rows: np.ndarray) -> np.ndarray:
        b = basis(t, rows, day)
        return np.einsum("nj,njd->nd", b, z[rows].reshape(len(rows), 3, D))

    # ROC-AUC over the test day's impressions
    test = ds.impressions(day, ["user_id", "ad_id", "surface", "position", "click"])
    tu = oracle.user_rows(test.column("user_id").to_numpy())
    ta = oracle.ad_rows(test.column("ad_id").to_numpy())
    ts = test.column("surface").to_numpy().astype(np.int64)
    tp = test.column("position").to_numpy().astype(np.int64)
    ty = test.column("click").to_numpy()
    true_logit = t.click_logit(tu, ta, day, ts, tp)
    personal = t.surface_affinity[ts] * t.affinity(tu, ta, day)
    base = true_logit - personal
    scale = t.surface_affinity[ts].astype(np.float64) / np.sqrt(D)
    auc: dict[str, float | None] = {
        "oracle": roc_auc(true_logit, ty),
        "nonpersonal_oracle": roc_auc(t.click_logit(tu, ta, day, ts, tp, personal=False), ty),
    }
    for k, z in estimates.items():
        u = user_vec(z, tu)
        auc[k] = roc_auc(base + scale * np.einsum("nd,nd->n", u, t.ad_factor[ta]), ty)
    # recall@100 over the live ads for the users who clicked that day (derm eval's definitions)
    clicked = test.filter(pc.equal(test.column("click"), 1))
    users, relevant = group_by_user(clicked.column("user_id").to_numpy(), clicked.column("ad_id").to_numpy())
    live = np.sort(ds.live_ads(day))
    lrow = oracle.ad_rows(live)
    qrow = oracle.user_rows(users)
    ref_s = np.full(1, REFERENCE_SURFACE)
    ref_p = np.full(1, REFERENCE_POSITION)
    nonpers = t.click_logit(qrow[:, None], lrow[None, :], day, ref_s, ref_p, personal=False)
    mean_aff = t.surface_affinity[REFERENCE_SURFACE] * t.affinity(qrow[:, None], lrow[None, :], day, False)
    base_q = nonpers - mean_aff
    f_live = t.ad_factor[lrow].astype(np.float64) * (t.surface_affinity[REFERENCE_SURFACE] / np.sqrt(D))

    def topk(score: np.ndarray) -> np.ndarray:
        top = np.argpartition(-score, K - 1, axis=1)[:, :K]
        s = np.take_along_axis(score, top, axis=1)
        return np.asarray(live[np.take_along_axis(top, np.argsort(-s, axis=1, kind="stable"), axis=1)])

    true_u = t.user_factor(qrow, day).astype(np.float64)
    recall: dict[str, float] = {"oracle": recall_at_k(topk(base_q + true_u @ f_live.T), relevant, K)}
    pop, _ = popularity(ds, day, live)
    recall["popularity"] = recall_at_k(np.broadcast_to(pop[:K], (len(users), K)), relevant, K)
    recall["nonpersonal_oracle"] = recall_at_k(topk(np.asarray(nonpers, np.float64)), relevant, K)
    for k, z in estimates.items():
        recall[k] = recall_at_k(topk(base_q + user_vec(z, qrow) @ f_live.T), relevant, K)
    t_lr = time.perf_counter()
    lr = logistic_reference(ds, [int(d) for d in np.unique(hday)], day)
    lr["seconds"] = round(time.perf_counter() - t_lr, 1)
    auc["logistic_regression"] = lr["roc_auc"]
    clicks_per_user = float(y.sum() / len(np.unique(urow)))
    shutil.rmtree(work, ignore_errors=True)
    return {
        "day": day,
        "history_days": [int(d) for d in np.unique(hday)],
        "history_impressions": len(y),
        "history_users": int(len(np.unique(urow))),
        "history_clicks_per_user": round(clicks_per_user, 3),
        "history_impressions_per_user": round(len(y) / len(np.unique(urow)), 1),
        "test_impressions": len(ty),
        "test_users_with_clicks": len(users),
        "roc_auc": auc,
        "recall_at_100": recall,
        "logistic_regression": lr,
        "newton_last_step": steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "generate_and_fit_seconds": round(fit_s, 1),
    }


def model_figures(world: str) -> dict[str, Any] | None:
    """synthetic_quality.json's figures of our models on the same log, when that result exists."""
    path = ROOT / "benchmarks" / "results" / "synthetic_quality.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    if world != "default":
        doc = doc.get("other_worlds", {}).get(world)
        if doc is None:
            return None
    r = doc["eval"]
    return {
        "git_sha": doc.get("git_sha"),
        "ranker_roc_auc": r["ranking"]["roc_auc"],
        "upstream_ctr_roc_auc": doc.get("upstream_ctr_roc_auc"),
        "oracle_roc_auc": r["ranking"].get("oracle_roc_auc"),
        "retrieval_recall_at_100": r["retrieval"]["recall_at_k"]["100"],
        "oracle_recall_at_100": r["retrieval"].get("oracle_recall_at_k", {}).get("100"),
    }


def main() -> None:
    t0 = time.perf_counter()
    worlds: dict[str, Any] = {}
    for name, over in {"default": {}, **OTHER_WORLDS}.items():
        m = measure(replace(SYNTH, **over))
        models = model_figures(name)
        auc, rec = m["roc_auc"], m["recall_at_100"]
        best_auc = max(auc["feedback"], auc["policy+feedback"])
        best_rec = max(rec["feedback"], rec["policy+feedback"])
        worlds[name] = {
            "overrides": over,
            **m,
            "bars": {
                "ranking_roc_auc_bar": auc["oracle"] - 0.02,
                "ranking_bar_within_ceiling": bool(best_auc >= auc["oracle"] - 0.02),
                "recall_bar": 2 * rec["popularity"],
                "recall_bar_within_ceiling": bool(best_rec >= 2 * rec["popularity"]),
            },
            "models": models,
        }
        print(name, json.dumps({"roc_auc": auc, "recall_at_100": rec}), flush=True)
    path = write_result(
        "synthetic_ceiling",
        {
            "command": "python benchmarks/synthetic_ceiling.py",
            "synth": dict(SYNTH.__dict__),
            "k": K,
            "newton_steps": NEWTON_STEPS,
            "worlds": worlds,
            "wall_seconds": round(time.perf_counter() - t0, 1),
        },
    )
    print(path)


if __name__ == "__main__":
    main()
