"""End to end on figures made the way most scientific figures are made: with matplotlib.

    pip install ".[bench]"        # matplotlib, scikit-image
    python benchmarks/figure_tools.py [--papers 4] [--seed 41] [--keep DIR] [--smoke] [--style ggplot]

Each paper's figures are 2 x 3 grids of ``imshow`` panels with axes, tick labels, titles and a
colour bar, drawn in a grey or a perceptual colour map (gray, viridis, magma, cividis; a re-used
image often comes back in another map), and placed on an article page in one of two ways:
- **vector**: the figure saved as a PDF by matplotlib and placed on the page as a form XObject
  (``show_pdf_page``), as LaTeX's ``\\includegraphics`` of a PDF figure does: each panel is its
  own image, resampled by matplotlib to the figure's dpi, inside a nested transform;
- **raster**: the figure saved as one PNG or JPEG at 150-200 dpi, axes and tick labels burned in,
  and inserted as one image (a word processor's figure): the splitter has to cut panels whose
  gutters hold tick labels and titles.

The images and manipulations are other_corpus.py's (scikit-image's sample fields mixed with
held-out DSB2018 micrographs; flips, rotations, zoom, JPEG q15, inversion, a cloned patch, ...).
The command runs ingest, ``screen --all`` and a query of the manuscript, verified and
``--no-verify``, each scored against the planted truth at the panel level (a row is a hit when
both its boxes overlap the planted placements with IoU >= 0.5); copy-move rows (a region cloned
inside one panel) are counted apart, as true when the panel was planted "patch cloned over".
``--style ggplot`` draws the same corpus (the same random draws) as R's ggplot2 draws faceted
rasters, in matplotlib's "ggplot" style: grey panel background with white grid lines under the
image, which is inset by 5 % of each axis, no frame, the title on a grey box; write it with
``--out docs/figure_tools_ggplot.json``.
Writes docs/figure_tools.json.
"""

from __future__ import annotations

import argparse
import io
import json
import string
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pymupdf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from end_to_end import ingest_and_score, work_dir  # noqa: E402
from other_corpus import Planter, _cover  # noqa: E402
from quality import other_images  # noqa: E402

CMAPS = ("gray", "gray", "viridis", "magma", "cividis")


def _figure(cells: list[np.ndarray], cmaps: list[str], rng: np.random.Generator, mode: str,
            style: str = "matplotlib") -> tuple[bytes, tuple[float, float], list[tuple[float, float, float, float]]]:
    """A 2 x 3 matplotlib figure of ``cells``; returns its bytes (PDF for "vector", PNG or JPEG
    for "raster"), its size in points and each image's box as fractions of the figure (x0, y0,
    x1, y1; top-left origin).  ``style="ggplot"`` draws it as R's ggplot2 draws a faceted
    raster: grey panel background with white grid lines, no frame, the image inset by ggplot's
    default 5 % expansion of each axis, and each facet's label on a grey strip above it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.style.context("ggplot" if style == "ggplot" else "default"):
        return _draw(plt, cells, cmaps, rng, mode, style)


def _draw(plt, cells: list[np.ndarray], cmaps: list[str], rng: np.random.Generator, mode: str, style: str):
    """``_figure``'s drawing, inside its style's context."""
    fig, axes = plt.subplots(2, 3, figsize=(7.0, 4.6))
    bar = int(rng.integers(len(cells)))
    ticks = bool(rng.random() < 0.6)
    ims = []
    for k, (ax, cell, cmap) in enumerate(zip(axes.ravel(), cells, cmaps)):
        h, w = cell.shape[:2]
        im = ax.imshow(cell, cmap=cmap)
        ims.append(im)
        label = f"({string.ascii_lowercase[k]}) condition {k + 1}"
        if style == "ggplot":
            im.set_zorder(2)        # ggplot2 draws the panel grid behind the raster
            ax.set_xlim(-0.5 - 0.05 * w, w - 0.5 + 0.05 * w)
            ax.set_ylim(h - 0.5 + 0.05 * h, -0.5 - 0.05 * h)
            ax.set_title(label, fontsize=8, backgroundcolor="#D9D9D9", pad=3)
        else:
            ax.set_title(label, fontsize=8)
        if ticks:
            ax.tick_params(labelsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if k == bar:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    fig.subplots_adjust(left=0.06, right=0.97, bottom=0.06, top=0.93, wspace=0.35, hspace=0.3)
    fig.canvas.draw()
    W, H = fig.bbox.width, fig.bbox.height
    boxes = []
    for ax, im in zip(axes.ravel(), ims):            # the image's own box (inside the axes)
        left, right, bottom, top = im.get_extent()
        (x0, y1), (x1, y0) = ax.transData.transform([(left, top), (right, bottom)])
        boxes.append((x0 / W, 1 - y1 / H, x1 / W, 1 - y0 / H))
    buf = io.BytesIO()
    if mode == "vector":
        fig.savefig(buf, format="pdf", dpi=int(rng.choice([150, 200, 300])))
    else:
        fmt = "jpeg" if rng.random() < 0.5 else "png"
        fig.savefig(buf, format=fmt, dpi=int(rng.choice([150, 200])),
                    **({"pil_kwargs": {"quality": 90}} if fmt == "jpeg" else {}))
    plt.close(fig)
    return buf.getvalue(), (7.0 * 72, 4.6 * 72), boxes


def build_corpus(images: list[np.ndarray], out: Path, n_papers: int, seed: int, style: str = "matplotlib") -> pd.DataFrame:
    """Write n_papers corpus PDFs and a manuscript of matplotlib figures; return the truth (one
    row per placed panel: doc, page, bbox, image_id, manipulation)."""
    rng = np.random.default_rng(seed)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    (out / "manuscript").mkdir(exist_ok=True)
    pl = Planter(images, rng)

    def write(path: Path, title: str, n_reuse: int) -> None:
        prior = pl.prior(path.name)
        queue = [pl.reuse(prior) for _ in range(min(n_reuse, len(prior)))]
        doc = pymupdf.open()
        for page_no in range(1, 4):
            own = pl.own(path.name)
            if own and rng.random() < 0.5:
                queue.append(pl.reuse(own))
            page = doc.new_page(width=595, height=842)
            page.insert_text((56, 60), f"{title}, page {page_no}", fontsize=12, fontname="tibo")
            page.insert_textbox(pymupdf.Rect(56, 72, 539, 150), "Results. " * 50, fontsize=8, fontname="tiro")
            items = []
            for _ in range(6):
                if queue and rng.random() < 0.5:
                    items.append(queue.pop())
                elif any(it[2] == "original" for it in items) and rng.random() < 0.1:
                    src = [it for it in items if it[2] == "original"][0]
                    items.append(pl.manipulated(src[0], pl.names[1 + int(rng.integers(len(pl.names) - 1))]))
                else:
                    items.append(pl.fresh())
            side = int(rng.choice([200, 256, 320]))
            cells = [_cover(it[1], side, side) for it in items]
            cmaps = [str(rng.choice(CMAPS)) for _ in items]
            mode = "vector" if (page_no + len(pl.placed)) % 2 else "raster"
            data, (fw, fh), boxes = _figure(cells, cmaps, rng, mode, style)
            rect = pymupdf.Rect(56, 160, 56 + 483, 160 + 483 * fh / fw)
            if mode == "vector":
                src = pymupdf.open("pdf", data)
                page.show_pdf_page(rect, src, 0)
            else:
                page.insert_image(rect, stream=data)
            page.insert_text((56, rect.y1 + 14), f"Figure {page_no}. Panels (a-f).", fontsize=8)
            for item, (x0, y0, x1, y1), cmap in zip(items, boxes, cmaps):
                bbox = (rect.x0 + x0 * rect.width, rect.y0 + y0 * rect.height,
                        rect.x0 + x1 * rect.width, rect.y0 + y1 * rect.height)
                pl.record(path.name, page_no, bbox, item, mode=mode, cmap=cmap)
        doc.save(path, garbage=3, deflate=True)

    for i in range(n_papers):
        write(out / "corpus" / f"paper-{i + 1:02d}.pdf", f"Report {i + 1}", 3 if i else 0)
    write(out / "manuscript" / "manuscript.pdf", "Submitted manuscript", 5)
    return pl.save_truth(out)


def copy_moves(report: pd.DataFrame, truth: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The report's pair rows, and ``{"copy_move": counts}`` of its copy-move rows (a region
    cloned inside one panel): all of them, and those on a placement planted as "patch cloned
    over" (true cloning, which the pair truth does not list)."""
    from imgdup.demo.generate import iou

    cm = report.finding == "copy-move" if "finding" in report else np.zeros(len(report), bool)
    true = 0
    for r in report[cm].itertuples():
        t = truth[(truth.doc == Path(r.query_doc).name) & (truth.page == r.query_page)]
        true += any(iou(r.query_bbox, b) >= 0.5 and m == "patch cloned over" for b, m in zip(t.bbox, t.manipulation))
    return report[~cm].reset_index(drop=True), {"copy_move": {"rows": int(cm.sum()), "on_cloned_patches": true}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--papers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=41)
    ap.add_argument("--out", default=str(ROOT / "docs" / "figure_tools.json"))
    ap.add_argument("--keep", default=None, help="keep the work folder here (emptied first)")
    ap.add_argument("--smoke", action="store_true", help="2 papers, verified runs only")
    ap.add_argument("--style", choices=("matplotlib", "ggplot"), default="matplotlib",
                    help="ggplot: figures drawn as R's ggplot2 facets (grey panels, strips, no frames)")
    args = ap.parse_args()
    papers = 2 if args.smoke else args.papers
    from imgdup.demo.generate import shared_test_images

    work = work_dir(args.keep, "imgdup-mpl-")
    fields, _ = other_images()
    images = fields + shared_test_images(splits=("test",))
    truth = build_corpus(images, work, papers, args.seed, args.style)
    style = "" if args.style == "matplotlib" else f" --style {args.style}"
    res = {"command": "python benchmarks/figure_tools.py " + ("--smoke" if args.smoke else f"--papers {papers} --seed {args.seed}") + style,
           "date": time.strftime("%Y-%m-%d"), "placements": int(len(truth)),
           "modes": truth["mode"].value_counts().to_dict(), "seconds": {}}
    ingest_and_score(work, truth, res, args.out, modes=("verified",) if args.smoke else ("verified", "cnn_only"),
                     set_apart=lambda rep: copy_moves(rep, truth))
    print(json.dumps(res, indent=1)[:8000])


if __name__ == "__main__":
    main()
