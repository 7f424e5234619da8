"""Copies shown inverted: how the search with each panel's negative (``imgdup.api.NEGATIVE_CAP``)
and its verification do on real held-out images, with both sides as a PDF stores them.

A row found through a negative is verified on the query panel's negative (``verify_report``),
so a positive here is an image ``a`` and an inverted, manipulated copy ``b``, judged as the
pipeline judges them: the negative of ``a`` as stored against ``b`` as stored.  Negatives are
``quality.negatives`` (other fields of one experiment, neighbouring crops of one image, other
blots, random images), judged the same way (the negative of one against the other) and, for
comparison, as they are.  A pair counts as a candidate when the CNN puts it within the
threshold (f <= 1), and as reported when it is a candidate and its confidence reaches the bar.

A's negative is judged as a screen judges a stored panel's: the panel's keypoints packed as at
ingest, turned into the negative's (``verify.INVERT``), with SIFT run on the negative for a pair
left under the bar with some hash similarity (``--sift-on-negative``: SIFT on the negative
always, as before session 23).

    python benchmarks/inverted.py [--split test] [--per-family 40] [--negatives 2000] [--sift-on-negative]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402  (the benchmarks' shared pair builders)
from imgdup.api import VERIFIED_VIEW_RADIUS  # noqa: E402  (the negative search's radius when verifying)
from imgdup.pipeline.verify import negative_grey as negative  # noqa: E402  (what verification compares)

FAMILIES = ["rot90/180/270", "flip", "free rotation 5-30", "crop 70%", "rescale 0.5-0.8", "gamma 0.5-2",
            "jpeg q30-90", "blur", "text/arrow/scale bar"]
BARS = (0.5, 0.8, 0.9, 0.95)


def rates(x: np.ndarray, conf: np.ndarray) -> dict[str, float]:
    """Shares of pairs that are candidates (f <= 1) and reported at each bar; and the same with
    candidates within ``VERIFIED_VIEW_RADIUS`` (the negative search's radius when verifying)."""
    out: dict[str, float] = {}
    for radius, tag in ((1.0, ""), (VERIFIED_VIEW_RADIUS, f"_within_{VERIFIED_VIEW_RADIUS}")):
        cand = x[:, 0] <= radius
        out[f"candidates{tag}"] = float(cand.mean())
        for bar in BARS:
            out[f"reported_at_{bar}{tag}"] = float((cand & (conf >= bar)).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--per-family", type=int, default=40)
    ap.add_argument("--negatives", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--sift-on-negative", action="store_true",
                    help="describe the negative afresh with SIFT (before session 23), not from the panel's keypoints")
    ap.add_argument("--out", default=None, help="JSON output (default docs/inverted_<split>.json)")
    args = ap.parse_args()
    from imgdup.pipeline.verify import confidence

    rng = np.random.default_rng(args.seed)
    imgs, groups = quality.load_images(False, args.split)

    def features(pairs):
        """The verification features of each (a, b) judged through a's negative: a's keypoints
        turned into the negative's, as the pipeline verifies such a row, or (``--sift-on-negative``,
        the pipeline before session 23) SIFT run on the negative."""
        if args.sift_on_negative:
            return quality.parallel_features([(negative(a), b) for a, b in pairs])
        return quality.parallel_features(pairs, negative_a=True)

    t0 = time.time()
    res: dict = {"command": "python benchmarks/inverted.py " + " ".join(sys.argv[1:]),
                 "date": time.strftime("%Y-%m-%d"), "split": args.split, "images": len(imgs),
                 "positives": {}, "negatives": {}}
    pos_all = []
    for fam in FAMILIES:
        fn = quality.FAMILIES[fam]
        pick = rng.choice(len(imgs), size=min(args.per_family, len(imgs)), replace=False)
        pairs = [(quality.as_stored(imgs[i], rng), quality.as_stored(negative(fn(imgs[i], rng)), rng)) for i in pick]
        x = features(pairs)
        conf = confidence(x)
        res["positives"][fam] = {"pairs": len(pairs), **rates(x, conf)}
        pos_all.append((x, conf))
        print(fam, res["positives"][fam], flush=True)
    x = np.concatenate([p[0] for p in pos_all])
    conf = np.concatenate([p[1] for p in pos_all])
    res["positives"]["all"] = {"pairs": len(x), **rates(x, conf)}
    neg = quality.stored_pairs(quality.negatives(imgs, groups, args.negatives, rng), rng)
    for name, pairs, through in (("through a negative", neg, True), ("as they are", neg, False)):
        x = features(pairs) if through else quality.parallel_features(pairs)
        conf = confidence(x)
        r = rates(x, conf)
        res["negatives"][name] = {"pairs": len(pairs), **r,
                                  "reported": {str(b): int(((x[:, 0] <= 1.0) & (conf >= b)).sum()) for b in BARS},
                                  "top_confidences": np.round(np.sort(conf[x[:, 0] <= 1.0])[-8:][::-1], 3).tolist(),
                                  f"reported_within_{VERIFIED_VIEW_RADIUS}": {
                                      str(b): int(((x[:, 0] <= VERIFIED_VIEW_RADIUS) & (conf >= b)).sum()) for b in BARS},
                                  f"top_confidences_within_{VERIFIED_VIEW_RADIUS}": np.round(
                                      np.sort(conf[x[:, 0] <= VERIFIED_VIEW_RADIUS])[-8:][::-1], 3).tolist()}
        print(name, res["negatives"][name], flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out or ROOT / "docs" / f"inverted_{args.split}.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
