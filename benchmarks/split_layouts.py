"""The splitter on compound figures it was not written for, and on single photos it must not cut.

    pip install scikit-image        # other_corpus.py's sample images
    python benchmarks/split_layouts.py [--seeds 31 32 ...] [--smoke]

- Cells: ``other_corpus.py``'s corpus for each seed (2 x 3 panels of unequal widths, one JPEG
  q88, 4-8 px black or white gutters, burned-in letters, inverted and other manipulated copies),
  extracted by ``extract_document``.  A cell counts as cut out when an extracted panel (or the
  whole figure) covers it with IoU > 0.8.  Per manipulation, and every lost cell listed.
- Single photos: every shared DSB2018 micrograph and blot scan and the 63 sample-image fields,
  as they are, inverted, and each JPEG-compressed (q88): how many come out as more than one
  panel (each would be a false split).

Writes docs/split_layouts.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from end_to_end import SHARED  # noqa: E402
from other_corpus import build_other_corpus  # noqa: E402
from quality import other_images  # noqa: E402
from speed import machine  # noqa: E402

from imgdup.demo.generate import shared_test_images  # noqa: E402
from imgdup.pipeline.extract import ExtractOptions, extract_document  # noqa: E402
from imgdup.pipeline.split import split_panels  # noqa: E402

COLOUR_SLOT_PT = 170.0      # other_corpus places its pseudo-coloured panels one by one, 170 pt square


def iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def cells(seeds: list[int], papers: int, images: list[np.ndarray], work: Path) -> dict:
    """Compound-figure cells of ``other_corpus`` layouts cut out as their own panel."""
    per: dict[str, list[int]] = {}
    lost = []
    for seed in seeds:
        out = work / f"seed{seed}"
        truth = build_other_corpus(images, out, papers, seed)
        for pdf in sorted(out.rglob("*.pdf")):
            res = extract_document(pdf, opts=ExtractOptions(evidence=False))
            boxes = [(p.page, p.bbox) for p in res.panels]
            for r in truth[truth.doc == pdf.name].itertuples():
                w, h = r.bbox[2] - r.bbox[0], r.bbox[3] - r.bbox[1]
                if abs(w - COLOUR_SLOT_PT) < 1e-6 and abs(h - COLOUR_SLOT_PT) < 1e-6:
                    continue            # a single pseudo-coloured panel, not a cell
                best = max((iou(r.bbox, bb) for page, bb in boxes if page == r.page), default=0.0)
                hit = per.setdefault(r.manipulation, [0, 0])
                hit[0] += int(best > 0.8)
                hit[1] += 1
                if best <= 0.8:
                    lost.append({"seed": seed, "doc": pdf.name, "page": int(r.page), "manipulation": r.manipulation,
                                 "image_id": r.image_id, "best_iou": round(float(best), 2)})
    found, total = sum(v[0] for v in per.values()), sum(v[1] for v in per.values())
    return {"seeds": seeds, "cells": total, "cut_out": found, "share": round(found / max(total, 1), 4),
            "per_manipulation": {k: f"{v[0]} / {v[1]}" for k, v in sorted(per.items())}, "lost": lost}


def singles(limit: int | None) -> dict:
    """Single photos (and their inverted / JPEG variants) that the splitter cuts into pieces."""
    def jpeg(g: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(g).save(buf, format="JPEG", quality=88)
        return np.asarray(Image.open(buf).convert("L"))

    files = sorted((SHARED / "micrographs").rglob("*.png")) + sorted((SHARED / "blots").rglob("*.png"))
    photos = [(p.name, np.asarray(Image.open(p).convert("L"))) for p in files[:limit]]
    photos += [(f"field {i}", f) for i, f in enumerate(other_images()[0][:limit])]
    cut, n = [], 0
    for name, g in photos:
        for tag, v in (("as is", g), ("JPEG", jpeg(g)), ("inverted", 255 - g), ("inverted, JPEG", jpeg(255 - g))):
            n += 1
            pieces = len(split_panels(v))
            if pieces > 1:
                cut.append({"image": name, "variant": tag, "panels": pieces})
    return {"photos": len(photos), "variants": n, "cut_into_pieces": len(cut), "cut": cut}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46])
    ap.add_argument("--papers", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="one seed, 20 photos of each source")
    ap.add_argument("--out", default=str(ROOT / "docs" / "split_layouts.json"))
    args = ap.parse_args()
    seeds = args.seeds[:1] if args.smoke else args.seeds
    t0 = time.time()
    fields, _ = other_images()
    images = fields + shared_test_images(splits=("test",))
    with tempfile.TemporaryDirectory(prefix="imgdup-split-") as tmp:
        res = {"command": "python benchmarks/split_layouts.py " + " ".join(sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d"), "machine": machine(),
               "compound_cells": cells(seeds, args.papers, images, Path(tmp)),
               "single_photos": singles(20 if args.smoke else None)}
    res["seconds"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    c, s = res["compound_cells"], res["single_photos"]
    print(f"cells cut out: {c['cut_out']} / {c['cells']}; single-photo variants cut: {s['cut_into_pieces']} / {s['variants']}")


if __name__ == "__main__":
    main()
