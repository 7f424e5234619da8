"""Which sub-region views should a panel store?  Compares view sets on held-out images.

    python benchmarks/view_sets.py [--split val] [--query-views same|shipped] [VARIANT ...]

For each source image: a crop keeping 50 % / 70 % of its area and two crops sharing 50 / 33 /
70 % (``quality.py``'s families), scored found when the copy comes within f <= 1 of its source
through any search ``imgdup query`` makes (whole <-> whole, copy whole <-> source views, copy
views <-> source whole, views <-> views); and, for false closeness, random pairs of different
images.  ``--query-views shipped``: the copy searches with the shipped query views (60 % x 5 +
equalised) whatever the variant stores; ``same``: with the variant's own.  Prints one line per
variant (session 10 chose the stored views on ``--split val``: docs/BENCHMARKS.md, retrieval).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _c5(s: float) -> list[tuple[float, float]]:
    return [(0.0, 0.0), (1 - s, 0.0), (0.0, 1 - s), (1 - s, 1 - s), ((1 - s) / 2, (1 - s) / 2)]


def _grid(s: float) -> list[tuple[float, float]]:
    return [(a, b) for a in (0.0, (1 - s) / 2, 1 - s) for b in (0.0, (1 - s) / 2, 1 - s)]


VARIANTS = {
    "60x5": [(0.6, _c5(0.6))],
    "60x5+75x5": [(0.6, _c5(0.6)), (0.75, _c5(0.75))],
    "75x5": [(0.75, _c5(0.75))],
    "70x9": [(0.7, _grid(0.7))],
    "70x5": [(0.7, _c5(0.7))],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="val")
    ap.add_argument("--query-views", choices=("same", "shipped"), default="same")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("variants", nargs="*", default=list(VARIANTS))
    args = ap.parse_args()
    from quality import _crop, _overlap, load_images

    from imgdup import load_model
    from imgdup.model.api import equalised, sub_views

    model = load_model()
    imgs, _ = load_images(False, args.split)
    rng = np.random.default_rng(0)
    src = [imgs[i] for i in rng.choice(len(imgs), size=min(args.images, len(imgs)), replace=False)]
    fams = {"crop 50%": [(s, _crop(s, 0.5, rng)) for s in src], "crop 70%": [(s, _crop(s, 0.7, rng)) for s in src],
            "overlap 50%": [_overlap(s, 0.5, rng) for s in src], "overlap 33%": [_overlap(s, 1 / 3, rng) for s in src],
            "overlap 70%": [_overlap(s, 0.7, rng) for s in src]}
    r2 = np.random.default_rng(1)
    randoms = [tuple(src[k] for k in r2.choice(len(src), 2, replace=False)) for _ in range(150)]

    def best_f(a, b, stored, query) -> float:
        va, vb = model.embed([a]), model.embed([b])
        sa = model.embed([v for side, o in stored for v in sub_views(a, side, o)] + [equalised(a)])
        qb = model.embed([v for side, o in query for v in sub_views(b, side, o)] + [equalised(b)])
        return float(min(np.abs(va - vb).sum(), np.abs(sa - vb).sum(1).min(), np.abs(qb - va).sum(1).min(),
                         np.abs(qb[:, None] - sa[None]).sum(2).min()))

    print(f"{args.split}: {len(src)} images, query views {args.query_views}")
    for name in args.variants:
        stored = VARIANTS[name]
        query = stored if args.query_views == "same" else VARIANTS["60x5"]
        cols = [f"{fam} {np.mean([best_f(a, b, stored, query) <= 1 for a, b in pairs]):.3f}" for fam, pairs in fams.items()]
        cols.append(f"random pairs within {np.mean([best_f(a, b, stored, query) <= 1 for a, b in randoms]):.3f}")
        print(name, "|", " | ".join(cols), flush=True)


if __name__ == "__main__":
    main()
