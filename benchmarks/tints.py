"""Pseudo-coloured copies: a grey panel and the same panel shown in a colour (as a figure shows a
fluorescence channel: DAPI blue, GFP green...), or in two colours, read as imgdup reads colour
from a PDF (``rgb_to_grey``) and, for comparison, as plain BT.601 luma (imgdup before session 21).

Held-out test images; the coloured side is JPEG-compressed in colour (q75-95, 4:2:0 chroma, as a
PDF usually stores it) before it is read; then both sides are stored as a PDF stores a panel
(``quality.as_stored``) and judged by the CNN and the verification.  A pair is a candidate when
f <= 1 and reported when it is a candidate whose confidence reaches the bar (``inverted.rates``).
Negatives: two different images shown in one tint, read both ways.

    python benchmarks/tints.py [--per-tint 60] [--smoke]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402
from inverted import rates  # noqa: E402
from speed import machine  # noqa: E402

from imgdup.pipeline.extract import LUMA, rgb_to_grey  # noqa: E402
from imgdup.pipeline.verify import confidence  # noqa: E402

TINTS = {"blue": (0, 0, 1), "green": (0, 1, 0), "red": (1, 0, 0), "magenta": (1, 0, 1), "cyan": (0, 1, 1),
         "yellow": (1, 1, 0), "sky blue": (0.3, 0.6, 1.0)}
PAIRS = [("grey", t) for t in TINTS] + [("red", "green"), ("blue", "green"), ("blue", "magenta")]


def shown(grey: np.ndarray, tint: str, rng: np.random.Generator) -> np.ndarray:
    """``grey`` shown in ``tint`` and stored as a colour JPEG; RGB uint8 (grey: as it is)."""
    if tint == "grey":
        return grey
    rgb = np.clip(np.stack([grey.astype(np.float32) * c for c in TINTS[tint]], 2) + 0.5, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
    return np.asarray(Image.open(buf).convert("RGB"))


def luma(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 2 else np.clip(img.astype(np.float32) @ LUMA + 0.5, 0, 255).astype(np.uint8)


def imgdup_reads(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 2 else rgb_to_grey(img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-tint", type=int, default=60)
    ap.add_argument("--negatives", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--smoke", action="store_true", help="8 images a pair kind")
    ap.add_argument("--out", default=str(ROOT / "docs" / "tints.json"))
    args = ap.parse_args()
    per = 8 if args.smoke else args.per_tint
    rng = np.random.default_rng(args.seed)
    imgs, groups = quality.load_images(args.smoke, "test")
    t0 = time.time()
    res: dict = {"command": "python benchmarks/tints.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
                 "machine": machine(), "images": len(imgs), "pairs": {}}
    for a, b in PAIRS:
        pick = rng.choice(len(imgs), size=min(per, len(imgs)), replace=False)
        shown_pairs = [(shown(imgs[i], a, rng), shown(imgs[i], b, rng)) for i in pick]
        row = {}
        for name, read in (("luma", luma), ("imgdup", imgdup_reads)):
            # the same stored sizes and qualities for both readings
            r = np.random.default_rng(args.seed + len(res["pairs"]))
            pairs = [(quality.as_stored(read(x), r), quality.as_stored(read(y), r)) for x, y in shown_pairs]
            x = quality.parallel_features(pairs)
            row[name] = {k: round(v, 3) for k, v in rates(x, confidence(x)).items()}
        res["pairs"][f"{a} / {b}"] = {"pairs": len(pick), **row}
        print(f"{a} / {b}", row, flush=True)
    # negatives: two different images (``quality.negatives``: other fields of one experiment,
    # neighbouring crops, other blots, random images) shown in one tint, as two DAPI panels
    neg = quality.negatives(imgs, groups, 50 if args.smoke else args.negatives, rng)
    tints = [list(TINTS)[int(rng.integers(len(TINTS)))] for _ in neg]
    shown_neg = [(shown(a, t, rng), shown(b, t, rng)) for (a, b), t in zip(neg, tints)]
    row = {}
    for name, read in (("luma", luma), ("imgdup", imgdup_reads)):
        r = np.random.default_rng(args.seed + 99)
        x = quality.parallel_features([(quality.as_stored(read(a), r), quality.as_stored(read(b), r)) for a, b in shown_neg])
        row[name] = {k: round(v, 4) for k, v in rates(x, confidence(x)).items()}
    res["negatives, both in one tint"] = {"pairs": len(neg), **row}
    print("negatives", row, flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
