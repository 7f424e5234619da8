"""How often two *different* blots carrying the same printed lane labels are reported as a re-use.

Western blot figures of one study print the same lane and condition names on every blot, and
the keypoint check matches the text.  The calibration holds 200 label-sharing negatives
(``quality.shared_label_negatives``: small labels on any image); this set is harder and kept
apart from it: band-sized tiles of the validation and training blot scans (never the test
split), two different tiles carrying the same large label block (2-4 words, 2-3x the
calibration's size, bold, at the same place on both).  Each pair is scored as the quality
benchmark scores imgdup (``quality.Scorers.features`` + the shipped confidence); reported: how
many reach the shipped threshold, and the CNN distance (a pair is a candidate at f <= 1).

    python benchmarks/label_negatives.py [--pairs 300]

Writes docs/label_negatives.json.
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

from quality import _label_block, _print_labels, load_images, parallel_features  # noqa: E402
from speed import machine  # noqa: E402


def blot_label_pairs(n: int, seed: int = 21) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` pairs of two different blot tiles (validation + training splits) with the same large
    printed label block at the same place."""
    tiles = []
    for split in ("val", "train"):
        imgs, groups = load_images(False, split=split)
        tiles += [a for a, g in zip(imgs, groups) if g.startswith("athenaz2/")]
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < n:
        i, j = (int(v) for v in rng.choice(len(tiles), 2, replace=False))
        if tiles[i].shape == tiles[j].shape and np.abs(tiles[i].astype(int) - tiles[j]).mean() < 2:
            continue            # the same region scanned twice in the data set: not a negative
        words, font, _, _, vertical = _label_block(rng)
        block = (words, font, float(rng.uniform(2.0, 3.0)), int(rng.integers(2, 4)), vertical)
        where = (float(rng.uniform(0.05, 0.4)), float(rng.uniform(0.15, 0.5)))
        pairs.append((_print_labels(tiles[i], block, where), _print_labels(tiles[j], block, where)))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "docs" / "label_negatives.json"))
    args = ap.parse_args()
    from imgdup.pipeline.verify import FEATURES, confidence, confidence_model

    n = args.pairs
    t0 = time.time()
    x = parallel_features(blot_label_pairs(n))
    conf = confidence(x)
    thr = float(confidence_model()["threshold"])
    f = x[:, FEATURES.index("cnn_distance")]
    reported = conf >= thr
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - t0, 1),
           "command": f"python benchmarks/label_negatives.py --pairs {n}",
           "pairs": n, "threshold": thr, "reported": int(reported.sum()), "reported_rate": float(reported.mean()),
           "cnn_candidates_f<=1": int((f <= 1.0).sum()), "reported_and_candidate": int((reported & (f <= 1.0)).sum()),
           "confidence_quantiles": {q: float(np.quantile(conf, q)) for q in (0.5, 0.9, 0.99)},
           "median_inliers": float(np.median(np.expm1(x[:, FEATURES.index("log1p_inliers")])))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
