"""Heavy JPEG: how copies re-compressed at quality 10-30 fare, at the size a PDF stores them.

The stranger corpus (``other_corpus.py``) lost three of four copies JPEG'd at q15.  This script
asks whether heavy compression on its own is a weakness: an image ``as_stored`` (shrunk to a
longer side of 150-250 px, JPEG q70-90) against a copy shrunk the same way on its own and then
compressed at quality q, so that the 8 x 8 blocks land on the stored pixels as in a PDF.
Negatives (``quality.negatives``) are compressed the same way on both sides: blocking alike on
both panels must not make two different fields look like one.  A positive counts as found
when it is a candidate (f <= 1, or <= 1.25 where the sub-region searches' radius applies) and
its calibrated confidence reaches the shipped threshold.

    python benchmarks/heavy_jpeg.py [--images held-out|other] [--per-quality 60] [--negatives 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402  (the benchmarks' shared pair builders)

QUALITIES = (10, 15, 20, 30)


def rates(x: np.ndarray, conf: np.ndarray, thr: float) -> dict[str, float]:
    f = x[:, 0]
    return {"pairs": int(len(f)), "candidate_f<=1": float(np.mean(f <= 1.0)),
            "candidate_f<=1.25": float(np.mean(f <= 1.25)),
            "confidence>=thr": float(np.mean(conf >= thr)),
            "found_f<=1": float(np.mean((f <= 1.0) & (conf >= thr))),
            "found_f<=1.25": float(np.mean((f <= 1.25) & (conf >= thr)))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", choices=["held-out", "other"], default="held-out")
    ap.add_argument("--per-quality", type=int, default=60)
    ap.add_argument("--negatives", type=int, default=600)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    per, n_neg = (4, 20) if args.smoke else (args.per_quality, args.negatives)
    imgs, groups = (quality.load_images(args.smoke) if args.images == "held-out"
                    else quality.other_images(smoke=args.smoke))
    rng = np.random.default_rng(0)
    t0 = time.time()
    sc = quality.Scorers()
    thr = float(sc.v.confidence_model()["threshold"])
    out: dict = {"command": "python benchmarks/heavy_jpeg.py --images " + args.images
                 + (" --smoke" if args.smoke else f" --per-quality {per} --negatives {n_neg}"),
                 "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "images": len(imgs), "threshold": thr, "positives": {}, "negatives": {}}
    for q in QUALITIES:
        idx = rng.choice(len(imgs), min(per, len(imgs)), replace=False)
        pairs = [(quality.as_stored(imgs[i], rng), quality._jpeg(quality.shrunk(imgs[i], rng), q)) for i in idx]
        x = quality.parallel_features(pairs)
        out["positives"][f"q{q}"] = rates(x, sc.v.confidence(x), thr)
        print(f"q{q}", out["positives"][f"q{q}"], flush=True)
    for q in (15, None):
        neg = quality.negatives(imgs, groups, n_neg, rng)
        if q is None:
            pairs = quality.stored_pairs(neg, rng)
        else:
            pairs = [(quality._jpeg(quality.shrunk(a, rng), q), quality._jpeg(quality.shrunk(b, rng), q)) for a, b in neg]
        x = quality.parallel_features(pairs)
        conf = sc.v.confidence(x)
        key = f"both q{q}" if q else "both as_stored (q70-90)"
        out["negatives"][key] = {**rates(x, conf, thr), "top_confidences": sorted(np.round(conf, 3).tolist())[-5:][::-1]}
        print(key, out["negatives"][key], flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    path = Path(args.out or ROOT / "docs" / f"heavy_jpeg_{args.images}.json")
    path.write_text(json.dumps(out, indent=2))
    print("wrote", path)


if __name__ == "__main__":
    main()
