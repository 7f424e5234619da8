"""Western-blot figures as journals print them: thin strips, one band row each, stacked.

    python benchmarks/blot_strips.py [--papers 3] [--seed 61] [--keep DIR] [--smoke]

Blots and gels are the images most often re-used in real misconduct cases, and the classic case
is one strip (a loading control, say) shown again under another label.  A figure here is 3-4
strips stacked 3-8 pt apart, each 14-30 pt tall and 100-160 pt wide (aspect 4-11), labelled on
the right.  Papers 1, 3, ... place each strip as its own image (a figure assembled in
Illustrator or Inkscape); papers 2, 4, ... (and the manuscript, at random) store each figure as
one JPEG at 300 dpi, labels burned in, each strip resampled to its slot (a figure exported from
PowerPoint).  Two figures a paper, one page.

- Strips: the held-out (test and validation split) athenaz2 scans, contrast-stretched and
  inverted to dark bands on white; each of a scan's two band rows, cut into its left and right
  lanes, is one strip (36 in all).  Different strips of one lane layout are the hard negatives:
  bands at the same places, other blots.  The scans are read from ../shared at run time, never
  copied into the repository (research use only).
- Re-use, across papers and inside one: as is, flipped left-right, a subset of its lanes, gamma,
  shrunk to 60 % and JPEG q40, cropped tighter (the middle 60 % of its rows).

Run through the CLI (ingest, ``screen --all``, query of the manuscript, verified and
``--no-verify``) and scored at the panel level as end_to_end.py does.  Writes
docs/blot_strips.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pymupdf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from end_to_end import ingest_and_score, work_dir  # noqa: E402
from quality import _jpeg, _rescale  # noqa: E402

DPI = 300 / 72      # pixels a point in the raster figures


def blot_strips(splits: tuple[str, ...] = ("test", "val")) -> list[np.ndarray]:
    """The strips of the scans of ``splits`` (default: the held-out ones): per scan, each of its
    two brightest band rows (80 px around the row), its lanes split into a left and a right half,
    stretched and inverted."""
    from imgdup.demo.generate import shared_test_images

    out = []
    for im in shared_test_images("athenaz2", splits):
        if im.shape != (736, 1092):     # the Elias composites: lettered sheets, not single blots
            continue
        lo, hi = np.percentile(im, [0.5, 99.8])
        im = np.clip((im.astype(np.float32) - lo) / max(hi - lo, 1.0) * 255, 0, 255).astype(np.uint8)
        prof = cv2.GaussianBlur(im.astype(np.float32), (0, 0), 3).mean(1)
        for _ in range(2):
            y = int(np.argmax(prof))
            prof[max(0, y - 60):y + 60] = 0
            for x0, x1 in ((130, 540), (540, 950)):
                out.append(255 - im[max(0, y - 40):y + 40, x0:x1])
    return out


def _gamma(s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = rng.uniform(0.5, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.0)
    return (255 * (s / 255.0) ** g).astype(np.uint8)


def _lanes(s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w = s.shape[1]
    k = int(w * rng.uniform(0.55, 0.75))
    x = int(rng.integers(0, w - k))
    return s[:, x:x + k].copy()


def _shrunk_jpeg(s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _jpeg(_rescale(s, 0.6), 40)


MANIPULATIONS = {
    "as is": lambda s, rng: s.copy(),
    "flip": lambda s, rng: s[:, ::-1].copy(),
    "lanes subset": _lanes,
    "gamma": _gamma,
    "shrunk + jpeg q40": _shrunk_jpeg,
    "cropped tighter": lambda s, rng: s[int(s.shape[0] * 0.2):int(s.shape[0] * 0.8)].copy(),
}


def build_corpus(strips: list[np.ndarray], out: Path, n_papers: int, seed: int) -> pd.DataFrame:
    """Write n_papers corpus PDFs and a manuscript of strip figures; return the truth (one row
    per placed strip: doc, page, bbox, image_id, manipulation)."""
    rng = np.random.default_rng(seed)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    (out / "manuscript").mkdir(exist_ok=True)
    order = list(rng.permutation(len(strips)))
    names = list(MANIPULATIONS)
    truth: list[dict] = []
    placed: list[dict] = []

    def item(doc: str, queue: list[dict]) -> tuple[str, np.ndarray, str]:
        own = [p for p in placed if p["doc"] == doc]
        if queue and rng.random() < 0.5:
            src, m = queue.pop(), names[int(rng.integers(len(names)))]
        elif own and rng.random() < 0.12:
            src, m = own[int(rng.integers(len(own)))], names[1 + int(rng.integers(len(names) - 1))]
        else:
            if not order:
                raise ValueError(f"not enough strips ({len(strips)}) for {n_papers} papers")
            k = int(order.pop())
            return f"strip{k}", strips[k], "original"
        return src["image_id"], MANIPULATIONS[m](strips[int(src["image_id"][5:])], rng), m

    def record(doc: str, bbox, image_id: str, m: str, layout: str) -> None:
        truth.append({"doc": doc, "page": 1, "bbox": [float(v) for v in bbox], "image_id": image_id, "manipulation": m,
                      "layout": layout})
        if m == "original":
            placed.append({"doc": doc, "image_id": image_id})

    def write(path: Path, n_reuse: int, raster: bool) -> None:
        prior = [p for p in placed if p["doc"] != path.name]
        queue = [prior[int(rng.integers(len(prior)))] for _ in range(min(n_reuse, len(prior)))]
        doc = pymupdf.open()
        page = doc.new_page(width=595, height=842)
        page.insert_textbox(pymupdf.Rect(56, 50, 539, 150), "Methods. " * 60, fontsize=8)
        y = 170.0
        for fig in range(2):
            items = []
            for _ in range(int(rng.integers(3, 5))):
                items.append(item(path.name, queue))
            w_pt = float(rng.choice([100, 130, 160]))
            heights = [float(rng.uniform(14, 30)) for _ in items]
            gaps = [float(rng.uniform(3, 8)) for _ in items]
            if not raster:      # each strip its own image, labelled beside it
                for (image_id, px, m), h, g in zip(items, heights, gaps):
                    r = pymupdf.Rect(80, y, 80 + w_pt, y + h)
                    page.insert_image(r, stream=cv2.imencode(".png", px)[1].tobytes(), keep_proportion=False)
                    page.insert_text((r.x1 + 6, y + h / 2 + 3), f"protein {len(truth) + 1}", fontsize=7)
                    record(path.name, r, image_id, m, "images")
                    y = r.y1 + g
            else:               # one JPEG at 300 dpi, labels burned in
                wpx = int(w_pt * DPI)
                hs = [int(h * DPI) for h in heights]
                gap = int(gaps[0] * DPI)
                comp = np.full((sum(hs) + gap * (len(hs) - 1), wpx + 200), 255, np.uint8)
                boxes, yy = [], 0
                for (image_id, px, m), h in zip(items, hs):
                    comp[yy:yy + h, :wpx] = cv2.resize(px, (wpx, h), interpolation=cv2.INTER_AREA)
                    cv2.putText(comp, f"P{len(boxes) + 1}", (wpx + 20, yy + h // 2 + 12), cv2.FONT_HERSHEY_SIMPLEX,
                                1.2, 0, 3)
                    boxes.append((yy, yy + h))
                    yy += h + gap
                r = pymupdf.Rect(80, y, 80 + comp.shape[1] / DPI, y + comp.shape[0] / DPI)
                page.insert_image(r, stream=cv2.imencode(".jpg", comp, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
                for (image_id, _, m), (y0, y1) in zip(items, boxes):
                    record(path.name, (r.x0, r.y0 + y0 / DPI, r.x0 + wpx / DPI, r.y0 + y1 / DPI), image_id, m, "raster")
                y = r.y1
            page.insert_text((56, y + 14), f"Figure {fig + 1}. Western blots.", fontsize=8)
            y += 40
        doc.save(path, garbage=3, deflate=True)

    for i in range(n_papers):
        write(out / "corpus" / f"paper-{i + 1:02d}.pdf", 2 if i else 0, raster=bool(i % 2))
    write(out / "manuscript" / "manuscript.pdf", 3, raster=bool(rng.random() < 0.5))
    df = pd.DataFrame(truth)
    df.to_json(out / "truth.json", orient="records", indent=1)
    return df


def cut_out(work: Path, truth: pd.DataFrame) -> dict:
    """Strips extracted as their own panel (IoU >= 0.5 with the placed strip), per layout."""
    from imgdup.demo.generate import iou
    from imgdup.pipeline.extract import ExtractOptions, extract_document

    boxes = {pdf.name: [p.bbox for p in extract_document(pdf, opts=ExtractOptions(evidence=False)).panels]
             for pdf in work.rglob("*.pdf")}
    hit = [max((iou(t.bbox, b) for b in boxes[t.doc]), default=0.0) >= 0.5 for t in truth.itertuples()]
    g = truth.assign(hit=hit).groupby("layout").hit
    return {k: f"{int(v.sum())} / {len(v)}" for k, v in g}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--papers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=61)
    ap.add_argument("--out", default=str(ROOT / "docs" / "blot_strips.json"))
    ap.add_argument("--keep", default=None, help="keep the work folder here (emptied first)")
    ap.add_argument("--smoke", action="store_true", help="2 papers, verified runs only")
    args = ap.parse_args()
    papers = 2 if args.smoke else args.papers
    work = work_dir(args.keep, "imgdup-blots-")
    strips = blot_strips()
    truth = build_corpus(strips, work, papers, args.seed)
    res = {"command": "python benchmarks/blot_strips.py " + ("--smoke" if args.smoke else f"--papers {papers} --seed {args.seed}"),
           "date": time.strftime("%Y-%m-%d"), "strips": len(strips), "placements": int(len(truth)),
           "manipulations": truth["manipulation"].value_counts().to_dict(), "seconds": {}}
    res["strips_cut_out"] = cut_out(work, truth)
    scores = ingest_and_score(work, truth, res, args.out, modes=("verified",) if args.smoke else ("verified", "cnn_only"))
    print(json.dumps({k: v for k, v in res.items() if not k.startswith(("screen", "query"))}, indent=1))
    for k, v in scores.items():
        print(k, f"{v['found']} / {v['pairs']} found, {v['fp_rows']} false rows of {v['reported']}")


if __name__ == "__main__":
    main()
