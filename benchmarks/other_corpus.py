"""End to end on a corpus unlike the one imgdup was tuned on: other image kinds, other figure
layouts, other manipulations; run through the CLI (ingest, screen, query) and scored at the
panel level against the planted truth, as benchmarks/end_to_end.py does for the demo generator.

    pip install scikit-image        # its bundled sample images are read at run time
    python benchmarks/other_corpus.py [--papers 4] [--seed 31] [--keep DIR]

- Images: fields of scikit-image's sample images (phase contrast, IHC, fundus, astronomy, the
  moon, textures, photographs: kinds the CNN never saw in training; ``quality.other_images``)
  mixed with held-out DSB2018 micrographs.  Different fields of one sample image are different
  images here (hard negatives: two fields of one gravel texture or one fundus).
- Layouts the demo generator never makes: compound figures stored as one JPEG, 2 x 3 panels of
  unequal widths, 4-8 px gutters on a black or a white background, panel letters and scale bars
  burned into the pixels; pseudo-coloured panels (green, magenta, red) placed one by one as RGB.
- Manipulations the demo generator never plants (``MANIPULATIONS`` below), re-used across papers,
  within a paper and within one compound figure; re-used panels also carry their new figure's
  letter and, between a colour slot and a grey one, another colour.

Writes docs/other_corpus.json (recall and precision per run, per manipulation; the losses).
"""

from __future__ import annotations

import argparse
import io
import json
import string
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pymupdf
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from end_to_end import ingest_and_score, work_dir  # noqa: E402
from quality import _crop, _jpeg, other_images  # noqa: E402


def _rotate_crop(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotated by 6-12 degrees either way, cropped to the central 70 % (no empty corners)."""
    h, w = im.shape
    deg = float(rng.uniform(6, 12)) * float(rng.choice([-1, 1]))
    r = cv2.warpAffine(im, cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0), (w, h), flags=cv2.INTER_LINEAR)
    dy, dx = int(h * 0.15), int(w * 0.15)
    return r[dy:h - dy, dx:w - dx].copy()


def _zoom(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A region of 60 % of the side (36 % of the area) shown enlarged to the original size."""
    h, w = im.shape
    ch, cw = int(h * 0.6), int(w * 0.6)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return cv2.resize(im[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_CUBIC)


def _linear(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a, b = float(rng.uniform(0.55, 0.8)), float(rng.uniform(25, 60))
    return np.clip(im * a + b, 0, 255).astype(np.uint8)


def _sharpen(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    blur = cv2.GaussianBlur(im, (0, 0), 2.0)
    return cv2.addWeighted(im, 1.8, blur, -0.8, 0)


def _erase_patch(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rectangle of about 12 % of the area filled with a patch cloned from elsewhere in the
    image (how a feature is hidden), not with a flat colour."""
    out = im.copy()
    h, w = im.shape
    ph, pw = int(h * 0.3), int(w * 0.4)
    y, x = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
    sy, sx = (y + h // 2) % (h - ph), (x + w // 2) % (w - pw)
    out[y:y + ph, x:x + pw] = im[sy:sy + ph, sx:sx + pw]
    return out


MANIPULATIONS = {
    "as is": lambda im, r: im,
    "up-down flip": lambda im, r: im[::-1].copy(),
    "rot270": lambda im, r: np.rot90(im, 3).copy(),
    "rotate 6-12 + crop": _rotate_crop,
    "zoom (crop 36 % enlarged)": _zoom,
    "linear brightness/contrast": _linear,
    "inverted": lambda im, r: (255 - im).astype(np.uint8),
    "jpeg q15": lambda im, r: _jpeg(im, 15),
    "median 5": lambda im, r: cv2.medianBlur(im, 5),
    "sharpen": _sharpen,
    "patch cloned over": _erase_patch,
    "flip + crop 75 %": lambda im, r: _crop(im, 0.75, r)[:, ::-1].copy(),
}

COLOURS = {"green": (0.0, 1.0, 0.0), "magenta": (1.0, 0.0, 1.0), "red": (1.0, 0.0, 0.0)}


def _cover(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resized to cover w x h, centre-cropped to it (how a figure tool fills a grid cell)."""
    s = max(w / im.shape[1], h / im.shape[0])
    r = cv2.resize(im, (max(w, int(round(im.shape[1] * s))), max(h, int(round(im.shape[0] * s)))),
                   interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    y, x = (r.shape[0] - h) // 2, (r.shape[1] - w) // 2
    return r[y:y + h, x:x + w]


def _burn_label(cell: np.ndarray, letter: str, bar: bool) -> None:
    ink = 255 if np.median(cell[:40, :40]) < 128 else 0
    cv2.putText(cell, letter, (8, 30), cv2.FONT_HERSHEY_DUPLEX, 0.95, ink, 2, cv2.LINE_AA)
    if bar:
        h, w = cell.shape
        ink = 255 if np.median(cell[h - 20:, w - 60:]) < 128 else 0
        cv2.rectangle(cell, (w - 55, h - 14), (w - 12, h - 10), ink, -1)


def _encode(img: np.ndarray, fmt: str, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


class Planter:
    """Draws a generated corpus's images from one seeded generator: fresh originals in a shuffled
    order, manipulated re-uses of what was placed before; keeps the truth (one row per placed
    panel).  other_corpus.py and figure_tools.py share it, so a seed draws the same sequence."""

    def __init__(self, images: list[np.ndarray], rng: np.random.Generator) -> None:
        self.images, self.rng = images, rng
        self.order = iter(rng.permutation(len(images)))
        self.names = list(MANIPULATIONS)
        self.placed: list[dict] = []          # originals: doc, image_id
        self.truth: list[dict] = []

    def fresh(self) -> tuple[str, np.ndarray, str]:
        k = next(self.order, None)
        if k is None:
            raise ValueError(f"not enough source images ({len(self.images)})")
        return f"img{k}", self.images[k], "original"

    def manipulated(self, image_id: str, name: str) -> tuple[str, np.ndarray, str]:
        return image_id, MANIPULATIONS[name](self.images[int(image_id[3:])], self.rng), name

    def reuse(self, pool: list[dict]) -> tuple[str, np.ndarray, str]:
        src = pool[int(self.rng.integers(len(pool)))]
        return self.manipulated(src["image_id"], self.names[int(self.rng.integers(len(self.names)))])

    def reuse_within(self, items: list[tuple[str, np.ndarray, str]]) -> tuple[str, np.ndarray, str]:
        """A manipulated copy (never "as is") of an original among ``items``, chosen at random."""
        origs = [it for it in items if it[2] == "original"]
        src = origs[int(self.rng.integers(len(origs)))]
        return self.manipulated(src[0], self.names[1 + int(self.rng.integers(len(self.names) - 1))])

    def record(self, doc: str, page: int, bbox, item, **extra) -> None:
        image_id, _, manip = item
        self.truth.append({"doc": doc, "page": page, "bbox": [float(v) for v in bbox], "image_id": image_id,
                           "manipulation": manip, **extra})
        if manip == "original":
            self.placed.append({"doc": doc, "image_id": image_id})

    def own(self, doc: str) -> list[dict]:
        return [p for p in self.placed if p["doc"] == doc]

    def prior(self, doc: str) -> list[dict]:
        return [p for p in self.placed if p["doc"] != doc]

    def save_truth(self, out: Path) -> pd.DataFrame:
        df = pd.DataFrame(self.truth)
        df.to_json(out / "truth.json", orient="records", indent=1)
        return df


def build_other_corpus(images: list[np.ndarray], out: Path, n_papers: int, seed: int) -> pd.DataFrame:
    """Write n_papers corpus PDFs and a manuscript; return the truth (one row per placed panel:
    doc, page, bbox, image_id, manipulation), as ``imgdup.demo.generate.build_corpus`` does."""
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
            y = 50.0
            if page_no == 1:
                page.insert_text((56, y + 10), title, fontsize=14, fontname="tibo")
                y += 28
            page.insert_textbox(pymupdf.Rect(56, y, 539, y + 70), "Methods. " * 40, fontsize=8, fontname="tiro")
            y += 78
            # compound figure: 2 x 3 panels of unequal widths, one JPEG, dark or light gutters
            dark = bool(rng.random() < 0.5)
            gut = int(rng.integers(4, 9))
            ch = 200
            widths = [[int(rng.choice([170, 200, 250])) for _ in range(3)] for _ in range(2)]
            W = max(sum(r) + 2 * gut for r in widths)
            H = 2 * ch + gut
            comp = np.full((H, W), 0 if dark else 255, np.uint8)
            items, cells = [], []
            for r in range(2):
                x = 0
                for c in range(3):
                    if queue and rng.random() < 0.5:
                        item = queue.pop()
                    elif any(it[2] == "original" for it in items) and rng.random() < 0.15:
                        item = pl.reuse_within(items)      # re-use inside this very figure
                    else:
                        item = pl.fresh()
                    w = widths[r][c]
                    cell = _cover(item[1], w, ch)
                    _burn_label(cell, string.ascii_lowercase[r * 3 + c], bool(rng.random() < 0.5))
                    comp[r * (ch + gut):r * (ch + gut) + ch, x:x + w] = cell
                    items.append(item)
                    cells.append((x, r * (ch + gut), x + w, r * (ch + gut) + ch))
                    x += w + gut
            fig_w = 440.0
            s = fig_w / W
            rect = pymupdf.Rect(78, y, 78 + fig_w, y + H * s)
            page.insert_image(rect, stream=_encode(comp, "JPEG"))
            for item, cell in zip(items, cells):
                pl.record(path.name, page_no, (rect.x0 + cell[0] * s, rect.y0 + cell[1] * s,
                                            rect.x0 + cell[2] * s, rect.y0 + cell[3] * s), item)
            y = rect.y1 + 6
            page.insert_text((56, y + 8), f"Figure {2 * page_no - 1}. (a-f) Representative images.", fontsize=8)
            y += 22
            # two pseudo-coloured panels, each its own RGB image
            x = 100.0
            for k in range(2):
                item = queue.pop() if queue and rng.random() < 0.6 else pl.fresh()
                grey = _cover(item[1], 300, 300).astype(np.float32)
                tint = COLOURS[list(COLOURS)[int(rng.integers(len(COLOURS)))]]
                rgb = np.clip(np.stack([grey * t for t in tint], 2), 0, 255).astype(np.uint8)
                r2 = pymupdf.Rect(x, y, x + 170, y + 170)
                page.insert_image(r2, stream=_encode(rgb, "PNG"))
                page.insert_text((x, y - 2), "AB"[k], fontsize=9, fontname="tibo")
                pl.record(path.name, page_no, tuple(r2), item)
                x += 200
            y += 180
            page.insert_text((56, y + 8), f"Figure {2 * page_no}. (A, B) Merged channels.", fontsize=8)
        doc.save(path, garbage=3, deflate=True)

    for i in range(n_papers):
        write(out / "corpus" / f"paper-{i + 1:02d}.pdf", f"Report {i + 1}", 3 if i else 0)
    write(out / "manuscript" / "manuscript.pdf", "Submitted manuscript", 5)
    return pl.save_truth(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--papers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--out", default=str(ROOT / "docs" / "other_corpus.json"))
    ap.add_argument("--keep", default=None, help="keep the work folder here (emptied first)")
    args = ap.parse_args()
    from imgdup.demo.generate import shared_test_images

    work = work_dir(args.keep, "imgdup-other-")
    fields, _ = other_images()
    images = fields + shared_test_images(splits=("test",))
    truth = build_other_corpus(images, work, args.papers, args.seed)
    res = {"command": f"python benchmarks/other_corpus.py --papers {args.papers} --seed {args.seed}",
           "date": time.strftime("%Y-%m-%d"), "images": {"other_fields": len(fields), "dsb2018_test": len(images) - len(fields)},
           "placements": int(len(truth)), "seconds": {}}
    ingest_and_score(work, truth, res, args.out)
    print(json.dumps(res, indent=1)[:6000])


if __name__ == "__main__":
    main()
