"""ImageJ-style montages: thin drawn borders, panel letters and scale bars burned in.

    pip install ".[bench]"        # scikit-image (its sample fields are about a third of the cells)
    python benchmarks/montages.py [--seed 51] [--smoke]

ImageJ's Image > Stacks > Make Montage lays the images of a stack in a grid with a drawn border
of a chosen width (0 by default) and colour; Analyze > Tools > Scale Bar and the Label tool burn
a white scale bar and a letter into each image.  Three parts:

- **split**: 2 x 3 montages of 256-px cells (held-out DSB2018 micrographs and scikit-image
  sample fields), border 0, 1, 2, 3 or 5 px, white or black, saved as PNG or JPEG q88, each cell
  with its letter and a scale bar: the cells ``split_panels`` cuts out (IoU > 0.8), and the
  boxes it returns.
- **resampled** (not with --smoke): borderless grids of 1-4 x 1-2 cells of random size,
  resampled and half of them JPEG-compressed, split right or not; and what must stay whole:
  the pool's images resampled, compressed or inverted, and crops of a periodic texture.
- **end to end**: for borders 0 (white and black), 1 (black), 2 (white and black) and 5
  (white), a corpus paper of such montages and a manuscript that re-uses one cell of each
  montage on its own, manipulated (other_corpus.py's manipulations), beside unrelated panels:
  ``ingest`` the paper (and the publisher-icon decoys), ``query`` the manuscript, and score the
  report against the planted truth: recall with both boxes at IoU >= 0.5 (the cell located),
  "found" when the match box at least covers half the cell (a whole unsplit montage counts),
  and false rows; copy-move rows (a region cloned inside one panel) are counted apart, as true
  on a panel planted "patch cloned over" (figure_tools.py's rule).  The manuscript then shows
  3 montages of its own (1 with --smoke) in which one cell is a manipulated copy of another,
  the re-use inside one paper: located when a pair row's boxes are the two cells (IoU >= 0.5),
  or caught by a copy-move row on the whole montage.  The same seed draws the same images and
  manipulations for every border.

Writes docs/montages.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pymupdf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from end_to_end import SHARED, run  # noqa: E402
from figure_tools import copy_moves  # noqa: E402
from other_corpus import MANIPULATIONS, _encode  # noqa: E402
from quality import other_images  # noqa: E402
from speed import machine  # noqa: E402

from imgdup.demo.generate import _cover, brick_wall, iou, score_report, shared_test_images  # noqa: E402
import imgdup.pipeline.split as split_module  # noqa: E402
from imgdup.pipeline.split import split_panels  # noqa: E402

SIDE = 256
BORDERS = (0, 1, 2, 3, 5)


def montage(cells: list[np.ndarray], border: int, colour: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The cells in a 2 x 3 grid with a ``border``-px line of ``colour`` around and between them,
    a letter and a scale bar burned into each (white); and each cell's box (x0, y0, x1, y1)."""
    s = cells[0].shape[0]
    fig = np.full((2 * s + 3 * border, 3 * s + 4 * border), colour, np.uint8)
    boxes = []
    for k, c in enumerate(cells):
        r, q = divmod(k, 3)
        p = c.copy()
        cv2.putText(p, "ABCDEF"[k], (8, 30), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 2, cv2.LINE_AA)
        cv2.rectangle(p, (s - 72, s - 14), (s - 14, s - 10), 255, -1)
        cv2.putText(p, "50 um", (s - 70, s - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)
        y0, x0 = border + r * (s + border), border + q * (s + border)
        fig[y0:y0 + s, x0:x0 + s] = p
        boxes.append((x0, y0, x0 + s, y0 + s))
    return fig, boxes


def _decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)


def split_part(images: list[np.ndarray], n: int) -> dict:
    """Cells cut out of ``n`` montages per border, colour and format."""
    res = {}
    for border in BORDERS:
        for colour, cname in ((255, "white"), (0, "black")):
            for fmt in ("PNG", "JPEG"):
                hit = boxes = 0
                for t in range(n):
                    fig, truth = montage(images[6 * t:6 * t + 6], border, colour)
                    got = split_panels(_decode(_encode(fig, fmt)))
                    boxes += len(got)
                    hit += sum(max(iou(b, (x0, y0, x1, y1)) for (y0, y1, x0, x1) in got) > 0.8 for b in truth)
                res[f"border {border} {cname} {fmt}"] = {"cells": 6 * n, "cut_out": int(hit), "boxes": int(boxes)}
    return res


def resampled_part(images: list[np.ndarray], n: int, seed: int) -> dict:
    """Borderless grids that are not ImageJ's clean output: ``n`` grids of each shape, cells of
    a random side (120-260 px) resampled as a whole by a random 0.5-1.0 (INTER_AREA), half of
    them then JPEG q85; a grid counts when exactly its cells come out (IoU > 0.8 each).  Then
    what must stay whole: every pool image at 5 scales, as is, JPEG and inverted, and 100 random
    crops of brick walls (a periodic texture) as is, inverted and at 0.7."""
    rng = np.random.default_rng(seed)
    grids = {}
    for cols, rows in ((2, 1), (1, 2), (3, 1), (2, 2), (3, 2), (4, 2)):
        right = 0
        for _ in range(n):
            s = int(rng.integers(120, 261))
            ids = rng.choice(len(images), cols * rows, replace=False)
            cells = [cv2.resize(images[i], (s, s), interpolation=cv2.INTER_AREA) for i in ids]
            fig = np.vstack([np.hstack(cells[r * cols:(r + 1) * cols]) for r in range(rows)])
            f = rng.uniform(0.5, 1.0)
            fig = cv2.resize(fig, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            if rng.random() < 0.5:
                fig = _decode(_encode(fig, "JPEG", 85))
            h, w = fig.shape
            truth = [(c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows) for r in range(rows) for c in range(cols)]
            got = split_panels(fig)
            right += len(got) == len(truth) and all(max(iou(t, (x0, y0, x1, y1)) for (y0, y1, x0, x1) in got) > 0.8 for t in truth)
        grids[f"{cols} x {rows}"] = f"{right} / {n}"
    singles = cut = 0
    for g in images:
        for f in (0.4, 0.5, 0.6, 0.75, 1.0):
            r = cv2.resize(g, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            for v in (r, _decode(_encode(r, "JPEG", 85)), 255 - r):
                singles += 1
                cut += len(split_panels(v)) > 1
    walls = walls_cut = gutters_cut = 0
    for k in range(100):
        wr = np.random.default_rng(k)
        bh = int(wr.integers(16, 48))
        wall = brick_wall(900, 900, bh, int(wr.integers(2, 4)) * bh, k)
        h, w = int(wr.integers(150, 500)), int(wr.integers(150, 600))
        y, x = int(wr.integers(0, 900 - h)), int(wr.integers(0, 900 - w))
        c = wall[y:y + h, x:x + w]
        for v in (c, 255 - c, cv2.resize(c, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)):
            walls += 1
            walls_cut += len(split_panels(v)) > 1
            with _no_seams():
                gutters_cut += len(split_panels(v)) > 1
    return {"grids_split_right": grids, "single_images_cut": f"{cut} / {singles}",
            "brick_wall_crops_cut": f"{walls_cut} / {walls}", "brick_wall_crops_cut_without_seams": f"{gutters_cut} / {walls}"}


@contextlib.contextmanager
def _no_seams():
    """The splitter as before session 28: no piece divided at seams (the mortar lines of a
    brick wall are light gutters to the older rules already)."""
    keep = split_module._grid_cells
    split_module._grid_cells = lambda grey, box, *rest: [box]
    try:
        yield
    finally:
        split_module._grid_cells = keep


def _place(doc: pymupdf.Document, m: int, fig: np.ndarray, boxes: list, fmt: str) -> tuple[pymupdf.Rect, list[list[float]]]:
    """Put montage ``fig`` on ``doc`` as the ``m``-th of two a page (a new page for even ``m``),
    480 pt wide: its rectangle, and its cells' ``boxes`` (pixels) in page points."""
    page = doc.new_page(width=595, height=842) if m % 2 == 0 else doc[-1]
    top = 80 + (m % 2) * 370
    scale = 480 / fig.shape[1]
    rect = pymupdf.Rect(56, top, 56 + 480, top + fig.shape[0] * scale)
    page.insert_image(rect, stream=_encode(fig, fmt))
    return rect, [[rect.x0 + x0 * scale, rect.y0 + y0 * scale, rect.x0 + x1 * scale, rect.y0 + y1 * scale] for x0, y0, x1, y1 in boxes]


def build(images: list[np.ndarray], out: Path, border: int, colour: int, n_montages: int,
          seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A corpus paper of ``n_montages`` montages (two a page) and a manuscript that re-uses one
    cell of each, manipulated, beside as many unrelated panels, and then shows ``n_montages / 4``
    montages of its own in which one cell is another's manipulated copy.  Returns the planted
    truth: the re-used cells (both papers), and the copies inside the manuscript's montages."""
    rng = np.random.default_rng(seed)
    order = iter(rng.permutation(len(images)))
    names = list(MANIPULATIONS)
    truth: list[dict] = []
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    (out / "manuscript").mkdir(exist_ok=True)
    paper, reused = pymupdf.open(), []
    for m in range(n_montages):
        ids = [int(next(order)) for _ in range(6)]
        fig, boxes = montage([images[i] for i in ids], border, colour)
        rect, placed = _place(paper, m, fig, boxes, "JPEG" if m % 3 == 2 else "PNG")
        page = paper[-1]
        if m % 2 == 0:
            page.insert_text((56, 60), "Results", fontsize=12, fontname="tibo")
        page.insert_text((56, rect.y1 + 14), f"Figure {m + 1}. (A-F) Montage of the fields.", fontsize=8)
        for i, bbox in zip(ids, placed):
            truth.append({"doc": "paper.pdf", "page": m // 2 + 1, "image_id": f"img{i}", "manipulation": "original", "bbox": bbox})
        reused.append(ids[int(rng.integers(6))])
    paper.save(out / "corpus" / "paper.pdf", garbage=3, deflate=True)
    ms = pymupdf.open()
    for k, i in enumerate(reused):
        if k % 4 == 0:
            page = ms.new_page(width=595, height=842)
        name = names[int(rng.integers(len(names)))]
        pair = [(MANIPULATIONS[name](images[i], rng), f"img{i}", name), (images[int(next(order))], None, None)]
        for j in rng.permutation(2):
            im, image_id, manip = pair[j]
            slot = (k % 4) * 2 + int(j)
            x, y = 56 + (slot % 2) * 250, 60 + (slot // 2) * 190
            rect = pymupdf.Rect(x, y, x + 170, y + 170)
            page.insert_image(rect, stream=_encode(im, "PNG"))
            if image_id:
                truth.append({"doc": "manuscript.pdf", "page": k // 4 + 1, "image_id": image_id,
                              "manipulation": manip, "bbox": list(rect)})
    within: list[dict] = []
    for m in range(max(1, n_montages // 4)):
        ids = [int(next(order)) for _ in range(6)]
        src, dst = (int(v) for v in rng.choice(6, 2, replace=False))
        name = names[int(rng.integers(len(names)))]
        cells = [images[i] for i in ids]
        cells[dst] = cv2.resize(MANIPULATIONS[name](images[ids[src]], rng), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        fig, boxes = montage(cells, border, colour)
        _, placed = _place(ms, m, fig, boxes, "JPEG" if m % 2 else "PNG")
        for k, manip in ((src, "original"), (dst, name)):
            within.append({"doc": "manuscript.pdf", "page": ms.page_count, "image_id": f"img{ids[src]}", "manipulation": manip,
                           "bbox": placed[k]})
    ms.save(out / "manuscript" / "manuscript.pdf", garbage=3, deflate=True)
    return pd.DataFrame(truth), pd.DataFrame(within)


def end_to_end(images: list[np.ndarray], work: Path, border: int, colour: int, n_montages: int, seed: int) -> dict:
    out = work / f"border{border}-{colour}"
    truth, within = build(images, out, border, colour, n_montages, seed)
    index = out / "index"
    decoys = sorted(SHARED.glob("pdfs/tandf-decoy-*.pdf"))
    t_ingest, _ = run(["ingest", str(out / "corpus" / "paper.pdf"), *map(str, decoys), "--index", str(index)])
    t_query, _ = run(["query", str(out / "manuscript" / "manuscript.pdf"), "--index", str(index),
                      "--out", str(out / "query.parquet")])
    full = pd.read_parquet(out / "query.parquet")
    planted = pd.concat([truth, within], ignore_index=True)
    rep, cm = copy_moves(full, planted)
    sc = score_report(rep, planted, involving="manuscript.pdf")
    ms = truth[truth.doc == "manuscript.pdf"]
    cell = truth[truth.doc == "paper.pdf"].set_index("image_id")
    found = 0
    for r in ms.itertuples():
        c = cell.loc[r.image_id]
        for q in rep.itertuples():
            sides = [(q.query_doc, q.query_bbox, q.match_doc, q.match_bbox), (q.match_doc, q.match_bbox, q.query_doc, q.query_bbox)]
            if any(Path(a).name == "manuscript.pdf" and Path(b).name == "paper.pdf" and iou(ab, r.bbox) >= 0.5
                   and _cover(bb, c.bbox) >= 0.5 for a, ab, b, bb in sides):
                found += 1
                break
    # the copies inside the manuscript's own montages are score_report's within-paper pairs
    # (every other planted pair spans the two papers)
    copies = within.image_id.nunique()
    within_missed = sum(m["within_paper"] for m in sc["missed"])
    cms = full[full.finding == "copy-move"] if "finding" in full else full.iloc[:0]
    cloned = sum(any(_cover(q.query_bbox, g.bbox.iloc[0]) >= 0.5 and _cover(q.query_bbox, g.bbox.iloc[1]) >= 0.5
                     for q in cms.itertuples()) for _, g in within.groupby("image_id"))
    cross_missed = len(sc["missed"]) - within_missed
    return {"reused_cells": int(len(ms)), "recall_located": (len(ms) - cross_missed) / len(ms), "found": int(found),
            "copies_within_montages": {"planted": int(copies), "located": int(copies - within_missed),
                                       "by_copy_move_on_the_montage": int(cloned)},
            "tp_rows": sc["tp_rows"], "fp_rows": sc["fp_rows"], "covering_rows": sc["ignored_rows"],
            **cm, "missed": sc["missed"], "seconds": {"ingest": round(t_ingest, 1), "query": round(t_query, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=51)
    ap.add_argument("--smoke", action="store_true", help="4 montages a split case, two end-to-end runs")
    ap.add_argument("--out", default=str(ROOT / "docs" / "montages.json"))
    args = ap.parse_args()
    t0 = time.time()
    fields, _ = other_images(SIDE)
    dsb = [cv2.resize(i, (SIDE, SIDE), interpolation=cv2.INTER_AREA) for i in shared_test_images(splits=("test",))]
    images = dsb + fields
    np.random.default_rng(args.seed).shuffle(images)
    res = {"command": "python benchmarks/montages.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
           "machine": machine(), "images": {"dsb2018_test": len(dsb), "other_fields": len(fields)},
           "split": split_part(images, 4 if args.smoke else 20)}
    if not args.smoke:
        res["resampled"] = resampled_part(images, 60, args.seed)
    runs = ((0, 0), (2, 255)) if args.smoke else ((0, 255), (0, 0), (1, 0), (2, 255), (2, 0), (5, 255))
    with tempfile.TemporaryDirectory(prefix="imgdup-montage-") as tmp:
        res["end_to_end"] = {f"border {b} {'white' if c else 'black'}": end_to_end(images, Path(tmp), b, c, 4 if args.smoke else 12, args.seed)
                             for b, c in runs}
    res["seconds"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    for k, v in res["split"].items():
        print(f"{k:24s} cut out {v['cut_out']:3d} / {v['cells']}  boxes {v['boxes']}")
    if "resampled" in res:
        print(json.dumps(res["resampled"]))
    for k, v in res["end_to_end"].items():
        w = v["copies_within_montages"]
        print(f"{k:16s} reused {v['reused_cells']}  located {v['recall_located']:.2f}  found {v['found']}  false rows {v['fp_rows']}"
              f"  copies in own montages {w['located']} / {w['planted']} (+{w['by_copy_move_on_the_montage']} by copy-move)")


if __name__ == "__main__":
    main()
