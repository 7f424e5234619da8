"""Fit imgdup's calibrated confidence (imgdup/pipeline/confidence.json) on validation images.

The pairs are built exactly as in ``benchmarks/quality.py`` (every family, overlap families and
the shared hard negatives, each distinct pair once), but from up to 600 images of the validation
and training splits (the validation split alone has 42 images, too few to sample thousands of
distinct negatives), so that the quality benchmark, on the test split, stays held out.  The
negatives also include ``--label-negatives`` pairs of two different images carrying the same
printed labels (``quality.shared_label_negatives``): text matches keypoints, and figures of one
study share their lane and condition names.  Features: ``imgdup.pipeline.verify.FEATURES`` (CNN
distance, log inliers, overlap and fine-detail correlations, whole-panel correlation, products
with log inliers, perceptual-hash similarity).  Model: L2-penalised
logistic regression (Newton / IRLS, a few lines of numpy), with negatives weighted up so the
probability reflects a 1 : 10 prior; threshold: the smallest confidence that keeps the false
positive rate on the calibration negatives at or below 1e-3.

``--stored-per-family`` / ``--stored-negatives`` (default 0): both kinds of pairs also a second
time as a PDF figure stores a panel (``quality.as_stored``: each side shrunk to 150-250 px and
JPEG'd at q70-90).  Tried in session 19 (20 / 1500) and not shipped: the refit was better on
these calibration pairs but worse on the test split's pairs stored that way (docs/VERIFICATION.md).

    python benchmarks/calibrate.py [--per-family 30] [--negatives 3000] [--label-negatives 200]
        [--stored-per-family 20] [--stored-negatives 1500]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import (family_pairs, load_images, negatives, parallel_features, shared_label_negatives,  # noqa: E402
                     stored_pairs)

from imgdup.pipeline.verify import FEATURES  # noqa: E402


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 1e-2, iters: int = 50):
    """Weighted, L2-penalised logistic regression by Newton's method; returns (coef, intercept)."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.column_stack([(x - mu) / sd, np.ones(len(x))])
    beta = np.zeros(z.shape[1])
    pen = np.full(z.shape[1], l2)
    pen[-1] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-z @ beta))
        g = z.T @ (w * (p - y)) + pen * beta
        h = (z * (w * p * (1 - p))[:, None]).T @ z + np.diag(pen)
        step = np.linalg.solve(h, g)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    coef = beta[:-1] / sd
    return coef, float(beta[-1] - (coef * mu).sum())


# the sign each feature's effect must have: more distance lowers the confidence, more evidence
# never does (so that a reviewer can read the model, and collinear features cannot flip)
SIGNS = {"cnn_distance": -1}


def fit_monotone(x: np.ndarray, y: np.ndarray, w: np.ndarray, names: list[str], left_out: tuple[str, ...] = ()):
    """``fit_logistic`` with sign constraints (``SIGNS``; +1 for the rest): a feature whose fitted
    coefficient has the wrong sign is dropped (coefficient 0) and the rest refitted.  Features
    named in ``left_out`` are never fitted (coefficient 0)."""
    active = [k for k, name in enumerate(names) if name not in left_out]
    while True:
        c, b = fit_logistic(x[:, active], y, w)
        wrong = [k for k, ci in zip(active, c) if ci * SIGNS.get(names[k], 1) < 0]
        if not wrong:
            coef = np.zeros(x.shape[1])
            coef[active] = c
            return coef, b
        # drop the most wrongly signed (relative to its spread) and refit
        worst = max(wrong, key=lambda k: abs(c[active.index(k)]) * x[:, k].std())
        active.remove(worst)


def fit_calibrated(xp: np.ndarray, xn: np.ndarray, names: list[str], left_out: tuple[str, ...] = ()):
    """The confidence model of positive pairs ``xp`` and negative pairs ``xn`` (feature rows):
    ``fit_monotone`` with the negatives weighted so that the fitted probability reflects one re-use
    per ten candidate pairs, and its threshold: the smallest confidence that keeps the false
    positive rate on ``xn`` at or below 1e-3, at least 0.5.  Returns (coef, intercept, threshold)."""
    x = np.concatenate([xp, xn])
    y = np.concatenate([np.ones(len(xp)), np.zeros(len(xn))])
    w = np.where(y == 1, 1.0, 10.0 * len(xp) / len(xn))
    coef, b = fit_monotone(x, y, w, names, left_out)
    cn = np.sort(1 / (1 + np.exp(-(xn @ coef + b))))[::-1]
    return coef, b, float(max(0.5, cn[int(np.floor(1e-3 * len(cn)))] + 1e-6))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-family", type=int, default=30)
    ap.add_argument("--negatives", type=int, default=3000)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--label-negatives", type=int, default=200,
                    help="more negatives: two different images carrying the same printed labels")
    ap.add_argument("--stored-per-family", type=int, default=0,
                    help="more positives per family, both sides as a PDF figure stores them (as_stored)")
    ap.add_argument("--stored-negatives", type=int, default=0,
                    help="more negatives (and a fifteenth as many shared-label ones), both sides as stored")
    ap.add_argument("--out", default=str(ROOT / "imgdup" / "pipeline" / "confidence.json"))
    ap.add_argument("--cache", default=None, help="Keep / reuse the computed features in this .npz.")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    imgs, groups = [], []
    for split in ("val", "train"):
        i, g = load_images(False, split=split)
        imgs += i
        groups += g
    keep = rng.choice(len(imgs), size=min(args.images, len(imgs)), replace=False)
    imgs, groups = [imgs[k] for k in keep], [groups[k] for k in keep]
    t0 = time.time()
    if args.cache and Path(args.cache).exists():
        z = np.load(args.cache)
        xn, xp = z["xn"], z["xp"]
        xns = z["xns"] if "xns" in z else np.zeros((0, xn.shape[1]))
        xps = z["xps"] if "xps" in z else np.zeros((0, xp.shape[1]))
    else:
        neg, seen = [], set()
        for a, b in negatives(imgs, groups, args.negatives, rng):
            key = (a.__array_interface__["data"][0], b.__array_interface__["data"][0], a.shape, b.shape)
            if key not in seen:         # the same pair drawn twice would count twice
                seen.add(key)
                neg.append((a, b))
        # drawn from their own generator, so the other pairs are those of earlier calibrations
        neg += shared_label_negatives(imgs, args.label_negatives, np.random.default_rng(7))
        xn = parallel_features(neg)
        fam = family_pairs(imgs, args.per_family, rng)
        xp = parallel_features([p for pairs in fam.values() for p in pairs])
        # the same kinds of pairs as a PDF stores them (shrunk, JPEG'd), from their own generators
        r2 = np.random.default_rng(11)
        sneg = stored_pairs(negatives(imgs, groups, args.stored_negatives, r2), r2)
        sneg += stored_pairs(shared_label_negatives(imgs, args.stored_negatives // 15, np.random.default_rng(17)), r2)
        sfam = family_pairs(imgs, args.stored_per_family, r2)
        spos = stored_pairs([p for pairs in sfam.values() for p in pairs], r2)
        xns = parallel_features(sneg) if sneg else np.zeros((0, xn.shape[1]))
        xps = parallel_features(spos) if spos else np.zeros((0, xp.shape[1]))
        if args.cache:
            np.savez(args.cache, xn=xn, xp=xp, xns=xns, xps=xps)
    sets = {"full resolution": (xp, xn), "as stored": (xps, xns)}
    xp, xn = np.concatenate([xp, xps]), np.concatenate([xn, xns])
    coef, b, thr = fit_calibrated(xp, xn, FEATURES)
    conf = lambda m: 1 / (1 + np.exp(-(m @ coef + b)))  # noqa: E731
    cn, cp = conf(xn), conf(xp)
    out = {"features": FEATURES, "coef": coef.tolist(), "intercept": b, "threshold": thr,
           "fitted_on": {"split": "val+train (never test)", "images": len(imgs), "positives": int(len(xp)), "negatives": int(len(xn)),
                         "prior": "1 re-use : 10 candidates", "command": "python benchmarks/calibrate.py "
                         f"--per-family {args.per_family} --negatives {args.negatives} --images {args.images} "
                         f"--label-negatives {args.label_negatives} --stored-per-family {args.stored_per_family} "
                         f"--stored-negatives {args.stored_negatives}", "label_negatives": args.label_negatives,
                         "stored_positives": int(len(sets["as stored"][0])), "stored_negatives": int(len(sets["as stored"][1]))},
           "calibration_tpr": float((cp >= thr).mean()), "calibration_fpr": float((cn >= thr).mean()),
           "by_set": {k: {"tpr": float((conf(p) >= thr).mean()), "fpr": float((conf(n) >= thr).mean())}
                      for k, (p, n) in sets.items() if len(p) and len(n)},
           "feature_seconds": None if args.cache and Path(args.cache).exists() and time.time() - t0 < 5
           else round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
