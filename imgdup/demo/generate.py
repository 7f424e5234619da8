"""Synthetic-but-realistic papers built from real images, with planted re-used panels.

Each paper has a title, body text, and figures: compound figures stored as one image with white
gutters (panel labels drawn as PDF text), and rows of separately placed panels.  Some panels are
re-used, manipulated, within the same paper or in another one; the ground truth lists every
planted pair with both bboxes.  Used for the shipped demo corpus, the tests and the end-to-end
benchmark.
"""

from __future__ import annotations

import io
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd
import pymupdf
from PIL import Image

Manip = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _jpeg(img: np.ndarray, q: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def _crop(img: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    s = np.sqrt(keep)
    ch, cw = int(h * s), int(w * s)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return img[y:y + ch, x:x + cw]


def _text(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = img.copy()
    h, w = out.shape
    word = "".join(rng.choice(list(string.ascii_uppercase), 6))
    cv2.putText(out, word, (int(w * 0.05), int(h * 0.9)), cv2.FONT_HERSHEY_SIMPLEX, w / 400, 255,
                max(1, w // 150), cv2.LINE_AA)
    cv2.rectangle(out, (int(w * 0.7), int(h * 0.92)), (int(w * 0.95), int(h * 0.94)), 255, -1)  # scale bar
    return out


MANIPULATIONS: dict[str, Manip] = {
    "exact": lambda im, r: im,
    "rot90": lambda im, r: np.rot90(im, 1).copy(),
    "rot180": lambda im, r: np.rot90(im, 2).copy(),
    "flip": lambda im, r: im[:, ::-1].copy(),
    "crop90": lambda im, r: _crop(im, 0.9, r),
    "crop70": lambda im, r: _crop(im, 0.7, r),
    "crop50": lambda im, r: _crop(im, 0.5, r),
    "rescale": lambda im, r: cv2.resize(im, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA),
    "aspect": lambda im, r: cv2.resize(im, (int(im.shape[1] * 1.3), im.shape[0]), interpolation=cv2.INTER_LINEAR),
    "gamma": lambda im, r: (255 * (im / 255.0) ** 0.6).astype(np.uint8),
    "contrast": lambda im, r: cv2.equalizeHist(im),
    "jpeg40": lambda im, r: _jpeg(im, 40),
    "blur": lambda im, r: cv2.GaussianBlur(im, (0, 0), 1.2),
    "noise": lambda im, r: np.clip(im + r.normal(0, 6, im.shape), 0, 255).astype(np.uint8),
    "text": _text,
}


@dataclass
class PlacedPanel:
    doc: str
    page: int
    bbox: tuple[float, float, float, float]
    image_id: str


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


LOREM = ("Cells were fixed, stained and imaged under identical settings. Quantification was performed "
         "blind to condition on randomly chosen fields of view. ") * 6


def _page_text(page: pymupdf.Page, y: float, text: str, size: float = 9) -> float:
    rect = pymupdf.Rect(56, y, 539, y + 120)
    page.insert_textbox(rect, text, fontsize=size, fontname="helv")
    return y + 125


def build_corpus(images: list[np.ndarray], out_dir: str | Path, n_papers: int = 4, seed: int = 0,
                 manipulations: list[str] | None = None, panel_px: int = 300,
                 reuse_per_paper: int = 3, manuscript: bool = True, within_rate: float = 0.5) -> pd.DataFrame:
    """Write n_papers corpus PDFs (+ a manuscript re-using their panels) and return the truth:
    one row per placed panel (doc, page, bbox, image id, manipulation).  Two placements with the
    same image id are a true duplicate pair (see ``truth_pairs``)."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    manips = manipulations or list(MANIPULATIONS)
    pool = list(range(len(images)))
    rng.shuffle(pool)
    next_img = iter(pool)
    placed: list[PlacedPanel] = []
    allp: list[dict] = []

    def fresh() -> tuple[str, np.ndarray]:
        k = next(next_img, None)
        if k is None:
            raise ValueError(f"not enough source images ({len(images)}) for {n_papers} papers")
        im = images[k]
        im = cv2.resize(im, (panel_px, int(panel_px * im.shape[0] / im.shape[1])), interpolation=cv2.INTER_AREA)
        return f"img{k}", im

    def write_paper(path: Path, title: str, reuse: list[tuple[PlacedPanel, np.ndarray, str]]) -> None:
        doc = pymupdf.open()
        queue = list(reuse)
        for page_no in range(1, 4):
            own = [p for p in placed if p.doc == path.name]
            if own and rng.random() < within_rate:
                queue.extend(reuse_from(own, 1))  # re-use inside the same paper
            page = doc.new_page(width=595, height=842)
            y = 50.0
            if page_no == 1:
                page.insert_text((56, y + 10), title, fontsize=14, fontname="hebo")
                y += 30
            y = _page_text(page, y, LOREM[:700])
            # figure A: compound 2x2 image with white gutters, one raster
            cells = []
            for _ in range(4):
                if queue and rng.random() < 0.5:
                    src, img, manip = queue.pop()
                    cells.append((img, src, manip))
                else:
                    cid, img = fresh()
                    cells.append((img, None, cid))
            side, gut = 240, 16
            comp = np.full((2 * side + gut, 2 * side + gut), 255, np.uint8)
            fig_rect = pymupdf.Rect(90, y, 90 + 300, y + 300)
            scale = 300 / comp.shape[0]
            labels = []
            for k, (img, src, tag) in enumerate(cells):
                r, c = divmod(k, 2)
                comp[r * (side + gut):r * (side + gut) + side, c * (side + gut):c * (side + gut) + side] = \
                    cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
                bb = (fig_rect.x0 + c * (side + gut) * scale, fig_rect.y0 + r * (side + gut) * scale,
                      fig_rect.x0 + (c * (side + gut) + side) * scale, fig_rect.y0 + (r * (side + gut) + side) * scale)
                labels.append((bb[0] - 10, bb[1] + 8))
                _record(path.name, page_no, bb, src, tag)
            page.insert_image(fig_rect, stream=_png(comp))
            for k, pos in enumerate(labels):
                page.insert_text(pos, "ABCD"[k], fontsize=9, fontname="hebo")
            y = fig_rect.y1 + 8
            page.insert_text((56, y + 10), f"Figure {2 * page_no - 1}. Representative fields (A-D).", fontsize=8)
            y += 24
            # figure B: a row of three separately placed panels (aspect kept)
            x = 56.0
            for k in range(3):
                if queue and rng.random() < 0.6:
                    src, img, manip = queue.pop()
                else:
                    src, (manip, img) = None, fresh()
                w = 150.0
                h = min(150.0, w * img.shape[0] / img.shape[1])
                rect = pymupdf.Rect(x, y, x + w, y + h)
                page.insert_image(rect, stream=_jpg(img))
                page.insert_text((x, y - 2), "EFG"[k], fontsize=9, fontname="hebo")
                _record(path.name, page_no, tuple(rect), src, manip)
                x += w + 14
            y += 160
            page.insert_text((56, y + 10), f"Figure {2 * page_no}. Quantified conditions (E-G).", fontsize=8)
            _page_text(page, y + 24, LOREM[:500])
        doc.set_metadata({"title": title, "author": "imgdup demo generator"})
        doc.save(path, garbage=3, deflate=True)

    def _record(doc: str, page: int, bbox: tuple, src: PlacedPanel | None, tag: str) -> None:
        me = PlacedPanel(doc, page, tuple(map(float, bbox)), tag if src is None else src.image_id)
        if src is None:
            placed.append(me)
        allp.append({"doc": doc, "page": page, "bbox": list(me.bbox), "image_id": me.image_id,
                     "manipulation": "original" if src is None else tag})

    def reuse_from(candidates: list[PlacedPanel], n: int) -> list[tuple[PlacedPanel, np.ndarray, str]]:
        picks = []
        for j in rng.choice(len(candidates), size=min(n, len(candidates)), replace=False):
            src = candidates[int(j)]
            k = int(src.image_id[3:])
            base = cv2.resize(images[k], (panel_px, int(panel_px * images[k].shape[0] / images[k].shape[1])),
                              interpolation=cv2.INTER_AREA)
            name = manips[int(rng.integers(len(manips)))]
            picks.append((src, MANIPULATIONS[name](base, rng), name))
        return picks

    for i in range(n_papers):
        prior = [p for p in placed]
        reuse = reuse_from(prior, reuse_per_paper) if prior else []
        write_paper(out / "corpus" / f"paper-{i + 1:02d}.pdf", f"Study {i + 1}: imaging of nuclei", reuse)
    if manuscript:
        (out / "manuscript").mkdir(exist_ok=True)
        write_paper(out / "manuscript" / "manuscript.pdf", "Submitted manuscript",
                    reuse_from(list(placed), reuse_per_paper + 2))
    df = pd.DataFrame(allp)
    df.to_json(out / "truth.json", orient="records", indent=1)
    return df


def truth_pairs(placements: pd.DataFrame) -> pd.DataFrame:
    """Every pair of placements that show the same source image (any manipulation)."""
    rows = []
    for _, g in placements.groupby("image_id"):
        recs = g.to_dict("records")
        for i in range(len(recs)):
            for j in range(i + 1, len(recs)):
                a, b = recs[i], recs[j]
                manip = b["manipulation"] if a["manipulation"] == "original" else a["manipulation"]
                rows.append({"a_doc": a["doc"], "a_page": a["page"], "a_bbox": a["bbox"],
                             "b_doc": b["doc"], "b_page": b["page"], "b_bbox": b["bbox"],
                             "manipulation": manip, "within_paper": a["doc"] == b["doc"]})
    return pd.DataFrame(rows)


def brick_wall(h: int, w: int, bh: int, bw: int, seed: int) -> np.ndarray:
    """A running-bond brick wall (``bh`` x ``bw`` bricks of random grey, 3-px light mortar, sensor
    noise): a periodic texture that a montage splitter must leave whole."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for r in range(0, h, bh):
        off = (r // bh) % 2 * bw // 2
        for c in range(-bw, w, bw):
            img[r:r + bh, max(c + off, 0):max(c + off + bw, 0)] = rng.uniform(110, 170)
    img += rng.normal(0, 8, (h, w))
    yy, xx = np.mgrid[:h, :w]
    img[(yy % bh) < 3] = 215
    img[((xx + (yy // bh) % 2 * bw // 2) % bw) < 3] = 215
    return np.clip(img, 0, 255).astype(np.uint8)


def shared_test_images(kind: str = "dsb2018", splits: tuple[str, ...] = ("test",)) -> list[np.ndarray]:
    """Held-out real images (never the training split) from ../shared/data, as uint8 greyscale."""
    from ..model.train import RECIPES, load_splits

    sp = load_splits(RECIPES["cpu"])
    return distinct_images([(im.pixels * 255).round().astype(np.uint8) for s in splits for im in sp[s]
                            if im.group.startswith(kind + "/")])


SAME_FIELD_CORR = 0.9


def _small(img: np.ndarray) -> np.ndarray:
    s = min(1.0, 512 / max(img.shape))
    return cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img


def _shared_field(a: np.ndarray, fa, b: np.ndarray, fb) -> bool:
    """Do two equally sized images (at most 512 px, with their OpenCV SIFT keypoints and
    descriptors ``fa``, ``fb``) show the same field: a pure shift between them (ratio 0.75,
    RANSAC similarity with scale 1 and no rotation, 20 inliers or more) under which at least
    10 % of the area overlaps with pixel correlation above ``SAME_FIELD_CORR``?  (Tiles of one
    scan, or frames of one field.)"""
    (ka, da), (kb, db) = fa, fb
    if da is None or db is None or len(ka) < 20 or len(kb) < 20:
        return False
    good = [m[0] for m in cv2.BFMatcher().knnMatch(da, db, k=2) if len(m) == 2 and m[0].distance < 0.75 * m[1].distance]
    if len(good) < 20:
        return False
    pa = np.float32([ka[m.queryIdx].pt for m in good])
    pb = np.float32([kb[m.trainIdx].pt for m in good])
    M, inl = cv2.estimateAffinePartial2D(pb, pa, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    if M is None or int(inl.sum()) < 20 or abs(M[0, 0] - 1) > 0.02 or abs(M[1, 0]) > 0.02:
        return False
    dx, dy = int(round(M[0, 2])), int(round(M[1, 2]))
    h, w = a.shape
    hh, ww = h - abs(dy), w - abs(dx)
    if hh <= 0 or ww <= 0 or hh * ww < 0.1 * h * w:
        return False
    oa = a[max(0, dy):max(0, dy) + hh, max(0, dx):max(0, dx) + ww].astype(np.float32).ravel()
    ob = b[max(0, -dy):max(0, -dy) + hh, max(0, -dx):max(0, -dx) + ww].astype(np.float32).ravel()
    return oa.std() > 0 and ob.std() > 0 and float(np.corrcoef(oa, ob)[0, 1]) > SAME_FIELD_CORR


def distinct_images(images: list[np.ndarray]) -> list[np.ndarray]:
    """Drop an image that shows the same field as an earlier one of the same size: correlated
    pixels above ``SAME_FIELD_CORR`` as they are, or on a shifted overlap (``_shared_field``).
    DSB2018 holds frames of one field (a validation pair at 0.94) and overlapping tiles of one
    scan (two 1024 px test images sharing 44 % of their area at 0.97), and a benchmark with
    planted duplicates must not also hold unplanted ones."""
    sift = cv2.SIFT_create(nfeatures=500)
    described: dict[int, tuple[np.ndarray, tuple]] = {}

    def described_as(k: int) -> tuple[np.ndarray, tuple]:
        """(image k at most 512 px, its SIFT keypoints): only images with a same-size partner
        ever need them."""
        if k not in described:
            small = _small(images[k])
            described[k] = small, sift.detectAndCompute(small, None)
        return described[k]

    kept: list[int] = []
    seen: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
    for k, im in enumerate(images):
        v = im.astype(np.float32).ravel()
        v -= v.mean()
        v /= float(np.linalg.norm(v)) + 1e-9
        if any(float(v @ u) > SAME_FIELD_CORR or _shared_field(*described_as(j), *described_as(k))
               for j, u in seen.get(im.shape, [])):
            continue
        seen.setdefault(im.shape, []).append((k, v))
        kept.append(k)
    return [images[k] for k in kept]


def main() -> None:
    """python -m imgdup.demo.generate OUT [N_PAPERS] [SEED]: build a corpus from held-out images."""
    import sys

    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    df = build_corpus(shared_test_images(), out, n_papers=n, seed=seed)
    print(f"{len(df)} placements, {len(truth_pairs(df))} planted pairs -> {out}")


if __name__ == "__main__":
    main()


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _cover(outer, inner) -> float:
    x0, y0, x1, y1 = max(outer[0], inner[0]), max(outer[1], inner[1]), min(outer[2], inner[2]), min(outer[3], inner[3])
    return max(0.0, x1 - x0) * max(0.0, y1 - y0) / max((inner[2] - inner[0]) * (inner[3] - inner[1]), 1e-9)


def score_report(report: pd.DataFrame, placements: pd.DataFrame, docs: set[str] | None = None,
                 involving: str | None = None) -> dict:
    """Panel-level precision / recall of a report against the planted truth, and the planted
    pairs it missed (``missed``).

    A row is a true positive when both sides match (IoU >= 0.5) the two placements of a planted
    pair; a row whose sides only *contain* such a pair (a whole compound figure) is neither; any
    other row is a false positive.  ``docs`` restricts the truth to pairs among those files,
    ``involving`` to pairs with one side in that file (what a query of it can see).
    """
    pairs = truth_pairs(placements)
    if docs is not None:
        pairs = pairs[pairs.a_doc.isin(docs) & pairs.b_doc.isin(docs)]
    if involving is not None:
        pairs = pairs[(pairs.a_doc == involving) | (pairs.b_doc == involving)]
    found = np.zeros(len(pairs), bool)
    tp = fp = ignored = 0
    fp_rows = []
    for r in report.itertuples():
        qd, md = Path(r.query_doc).name, Path(r.match_doc).name
        hit = cover = False
        for k, g in enumerate(pairs.itertuples()):
            for (d1, b1, p1, d2, b2, p2) in ((qd, r.query_bbox, r.query_page, md, r.match_bbox, r.match_page),
                                             (md, r.match_bbox, r.match_page, qd, r.query_bbox, r.query_page)):
                if d1 == g.a_doc and d2 == g.b_doc and p1 == g.a_page and p2 == g.b_page:
                    if iou(b1, g.a_bbox) >= 0.5 and iou(b2, g.b_bbox) >= 0.5:
                        hit = True
                        found[k] = True
                    elif _cover(b1, g.a_bbox) >= 0.5 and _cover(b2, g.b_bbox) >= 0.5:
                        cover = True
        if hit:
            tp += 1
        elif cover:
            ignored += 1
        else:
            fp += 1
            fp_rows.append(r.Index)
    per = {}
    for m, g in pairs.assign(found=found).groupby("manipulation"):
        per[m] = {"pairs": int(len(g)), "recall": float(g.found.mean())}
    missed = [{"a": f"{g.a_doc} p{g.a_page}", "b": f"{g.b_doc} p{g.b_page}", "manipulation": g.manipulation,
               "within_paper": bool(g.within_paper)} for g in pairs[~found].itertuples()]
    return {"pairs": int(len(pairs)), "found": int(found.sum()), "missed": missed,
            "recall": float(found.mean()) if len(pairs) else float("nan"),
            "reported": int(len(report)), "tp_rows": tp, "fp_rows": fp, "ignored_rows": ignored,
            "precision": tp / (tp + fp) if tp + fp else float("nan"), "per_manipulation": per,
            "fp_row_index": fp_rows}
