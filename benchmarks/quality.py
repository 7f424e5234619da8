"""Detection quality per manipulation family: imgdup against the baselines a user would pick.

Pairs are built from held-out real images (test split of imgdup/model/splits/default.json; the
blots are read from ../shared at run time, never copied).  Positives: an image and a manipulated
copy, one family at a time.  Negatives (shared by all families): other fields of the same
experiment, neighbouring non-overlapping crops of one image, other blots, random images.
Pair families (overlap 70/50/33 %) are two crops of one image sharing that share of their area.
Copy-move (a region cloned inside one image) is scored separately: detection and false-alarm rate.
"Colour to grey": every colour micrograph of ../shared is in the training split, so this family
uses the colour images of the CC BY PDFs in ../shared/data/pdfs (figures, photographs, charts),
as imgdup reads them (BT.601 luma) against the same image desaturated by another tool's formula.

Scorers (higher = more likely the same), all on the same pairs:
  cnn          -f, the shipped CNN's weighted-L1 distance
  verify       best whole-panel rank-normalised NCC over orientations and crops (align_pair)
  keypoints    imgdup's keypoint check alone: log(1 + RANSAC inliers) + aligned-overlap NCC
  imgdup       what imgdup ships: the calibrated confidence over CNN distance and both checks
  phash/dhash/whash   -Hamming distance (imagehash)
  sift         RANSAC inliers of SIFT matches (OpenCV), also against the mirrored image

    python benchmarks/quality.py [--per-family 60] [--smoke]
    python benchmarks/quality.py --images other --negatives 1500 --out docs/quality_other_images.json

``--images other``: the same families and scorers on fields of scikit-image's sample images
(``other_images``: kinds the CNN never saw); the output also gives the shares accepted at the
shipped confidence threshold.

``--stored``: both sides of every pair (negatives too) as a PDF figure stores a panel
(``as_stored``: shrunk to a longer side of 150-250 px, JPEG q70-90, each side on its own), the
form in which ``imgdup query`` meets them.  Copy-move is scored on the images as they are.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _crop(im, keep, rng):
    h, w = im.shape
    s = np.sqrt(keep)
    ch, cw = int(h * s), int(w * s)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return im[y:y + ch, x:x + cw]


def _rotate(im, deg):
    h, w = im.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return cv2.warpAffine(im, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def _persp(im, rng, amount=0.08):
    h, w = im.shape
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = (src + rng.uniform(-amount, amount, (4, 2)) * [w, h]).astype(np.float32)
    return cv2.warpPerspective(im, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT)


def _rescale(im, s):
    return cv2.resize(im, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)


def _jpeg(im, q):
    return cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, int(q)])[1], cv2.IMREAD_GRAYSCALE)


STORED_SIDE = (150, 250)   # a panel as a PDF figure stores it: longer side in pixels ...
STORED_QUALITY = (70, 90)  # ... and its JPEG quality


def shrunk(im, rng):
    """``im`` area-shrunk so its longer side is ``STORED_SIDE`` px (never enlarged)."""
    s = min(1.0, float(rng.uniform(*STORED_SIDE)) / max(im.shape))
    return _rescale(im, s) if s < 1.0 else im


def as_stored(im, rng):
    """``im`` as a PDF figure typically stores a panel: ``shrunk``, then JPEG at
    ``STORED_QUALITY``.  Both sides of a pair get their own size and quality, as two figures
    placed and compressed apart."""
    return _jpeg(shrunk(im, rng), rng.integers(STORED_QUALITY[0], STORED_QUALITY[1] + 1))


def stored_pairs(pairs, rng):
    """Both sides of every pair ``as_stored``."""
    return [(as_stored(a, rng), as_stored(b, rng)) for a, b in pairs]


def _overlay(im, rng):
    out = im.copy()
    h, w = out.shape
    cv2.putText(out, "Fig 3B", (int(w * .05), int(h * .15)), cv2.FONT_HERSHEY_SIMPLEX, w / 300, 255, max(1, w // 120))
    cv2.arrowedLine(out, (int(w * .6), int(h * .3)), (int(w * .45), int(h * .45)), 255, max(1, w // 100))
    cv2.rectangle(out, (int(w * .7), int(h * .9)), (int(w * .93), int(h * .92)), 255, -1)
    return out


LABEL_WORDS = ["MOCK", "NT_siRNA", "FLG_siRNA", "WT", "KO", "Ctrl", "GAPDH", "Actin", "Tubulin", "DAPI",
               "+", "-", "kDa", "LPS", "DMSO", "shRNA", "p-ERK", "Merge", "24 h", "48 h"]


def _label_block(rng) -> tuple[list[str], int, float, int, bool]:
    """A random set of printed lane / panel labels: (words, font, relative size, thickness, vertical)."""
    words = list(rng.choice(LABEL_WORDS, size=int(rng.integers(2, 5)), replace=False))
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX]))
    return words, font, float(rng.uniform(0.8, 1.6)), int(rng.integers(1, 3)), bool(rng.random() < 0.5)


def _print_labels(im, block, where) -> np.ndarray:
    """``im`` with the label block printed at relative position ``where`` (dark text on a light
    image, light on a dark one), as figures print lane and condition names."""
    words, font, rel, thick, vertical = block
    out = np.rot90(im, -1).copy() if vertical else im.copy()
    h, w = out.shape
    scale = rel * w / 600
    ink = 0 if np.median(out) > 110 else 255
    x, y = int(where[0] * w), int(where[1] * h)
    for k, word in enumerate(words):
        cv2.putText(out, word, (x, y + int(k * 34 * scale)), font, scale, ink, thick, cv2.LINE_AA)
    return np.rot90(out, 1).copy() if vertical else out


def shared_label_negatives(imgs, n, rng):
    """Two different images carrying the same printed labels (lane or condition names, as on
    two blots of one study): identical text, different biology.  A hard negative for the
    keypoint check, which matches the text; used to calibrate the confidence."""
    out = []
    while len(out) < n:
        i, j = (int(v) for v in rng.choice(len(imgs), size=2, replace=False))
        block = _label_block(rng)
        wa = (rng.uniform(0.05, 0.5), rng.uniform(0.1, 0.6))
        wb = wa if rng.random() < 0.5 else (rng.uniform(0.05, 0.5), rng.uniform(0.1, 0.6))
        out.append((_print_labels(imgs[i], block, wa), _print_labels(imgs[j], block, wb)))
    return out


def _overlap(im, keep, rng):
    """Two equal crops of one image sharing ``keep`` of their area (shifted field of view)."""
    h, w = im.shape
    ax = 1 - np.sqrt(keep)
    cw, ch = int(w / (1 + ax)), int(h / (1 + ax))
    dx, dy = int(round(ax * cw)), int(round(ax * ch))
    first, second = im[:ch, :cw], im[dy:dy + ch, dx:dx + cw]
    if rng.random() < .5:
        first, second = second, first
    return first.copy(), second.copy()


def _erase(im, rng):
    out = im.copy()
    h, w = out.shape
    cv2.circle(out, (int(rng.uniform(.2, .8) * w), int(rng.uniform(.2, .8) * h)), int(.15 * min(h, w)),
               int(np.median(im)), -1)
    return out


FAMILIES = {
    "rot90/180/270": lambda im, r: np.rot90(im, int(r.integers(1, 4))).copy(),
    "free rotation 5-30": lambda im, r: _rotate(im, r.uniform(5, 30) * r.choice([-1, 1])),
    "flip": lambda im, r: (im[:, ::-1] if r.random() < .5 else im[::-1]).copy(),
    "crop 90%": lambda im, r: _crop(im, .9, r),
    "crop 70%": lambda im, r: _crop(im, .7, r),
    "crop 50%": lambda im, r: _crop(im, .5, r),
    "rescale 0.5-0.8": lambda im, r: _rescale(im, r.uniform(.5, .8)),
    "aspect 1.2-1.5": lambda im, r: cv2.resize(im, (int(im.shape[1] * r.uniform(1.2, 1.5)), im.shape[0])),
    "perspective": lambda im, r: _persp(im, r),
    "gamma 0.5-2": lambda im, r: (255 * (im / 255.0) ** r.uniform(.5, 2)).astype(np.uint8),
    "contrast stretch": lambda im, r: cv2.normalize(np.clip(im.astype(np.float32) * r.uniform(1.3, 2.0), 0, 255), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8),
    "hist. equalisation": lambda im, r: cv2.equalizeHist(im),
    "jpeg q30-90": lambda im, r: _jpeg(im, r.integers(30, 91)),
    "blur": lambda im, r: cv2.GaussianBlur(im, (0, 0), r.uniform(1, 2)),
    "noise": lambda im, r: np.clip(im + r.normal(0, r.uniform(4, 10), im.shape), 0, 255).astype(np.uint8),
    "text/arrow/scale bar": _overlay,
    "partial erase": _erase,
    "combo: rot90+crop70+jpeg": lambda im, r: _jpeg(_crop(np.rot90(im).copy(), .7, r), 60),
    "combo: flip+gamma+text": lambda im, r: _overlay((255 * (im[:, ::-1] / 255.0) ** 0.7).astype(np.uint8), r),
}


# families whose function returns both images of the pair (neither is the untouched original)
PAIR_FAMILIES = {
    "overlap 70%": lambda im, r: _overlap(im, .7, r),
    "overlap 50%": lambda im, r: _overlap(im, .5, r),
    "overlap 33%": lambda im, r: _overlap(im, 1 / 3, r),
}


def copy_move_image(im, rng):
    """A region (1/16 of the image) cloned elsewhere in the same image."""
    h, w = im.shape
    s = min(h, w) // 4
    out = im.copy()
    y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
    y2, x2 = (y + h // 2) % (h - s), (x + w // 2) % (w - s)
    out[y2:y2 + s, x2:x2 + s] = im[y:y + s, x:x + s]
    return out


def family_pairs(imgs, per: int, rng) -> dict[str, list]:
    """Positive pairs, one list per family (single-image and pair families)."""
    out = {}
    for fam, fn in FAMILIES.items():
        pick = rng.choice(len(imgs), size=min(per, len(imgs)), replace=False)
        out[fam] = [(imgs[i], fn(imgs[i], rng)) for i in pick]
    for fam, fn in PAIR_FAMILIES.items():
        pick = rng.choice(len(imgs), size=min(per, len(imgs)), replace=False)
        out[fam] = [fn(imgs[i], rng) for i in pick]
    return out


# how other tools turn colour into grey: channel mean, HSL lightness, BT.709 luma, the green channel
GREY_FORMULAS = {
    "mean": lambda c: c.mean(2),
    "lightness": lambda c: (c.max(2) + c.min(2)) / 2,
    "bt709": lambda c: c @ np.array([0.2126, 0.7152, 0.0722]),
    "green": lambda c: c[..., 1],
}


def colour_images(min_side: int = 100) -> list[np.ndarray]:
    """The distinct colour images (RGB, uint8, longer side at most 512 px) stored in the CC BY
    PDFs of ../shared/data/pdfs, read with PyMuPDF through an RGB pixmap."""
    import hashlib

    import pymupdf

    from imgdup.model.train import SHARED_DATA

    out, seen = [], set()
    for path in sorted((SHARED_DATA / "pdfs").glob("*.pdf")):
        try:
            doc = pymupdf.open(path)
        except Exception:           # the corrupt test file
            continue
        for page in doc:
            for info in page.get_images(full=True):
                try:
                    pix = pymupdf.Pixmap(doc, info[0])
                    if pix.colorspace is None:
                        continue
                    if pix.colorspace.n != 3 or pix.n - pix.alpha != 3:
                        pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
                except Exception:
                    continue
                a = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, pix.n)[..., :3]
                c = a.astype(np.int16)
                colourful = np.abs(c[..., 0] - c[..., 1]).mean() + np.abs(c[..., 1] - c[..., 2]).mean() > 6
                key = hashlib.sha1(a.tobytes()).hexdigest()
                if not colourful or min(a.shape[:2]) < min_side or key in seen:
                    continue
                seen.add(key)
                s = min(1.0, 512 / max(a.shape[:2]))
                out.append(np.ascontiguousarray(a) if s == 1 else
                           cv2.resize(a, None, fx=s, fy=s, interpolation=cv2.INTER_AREA))
    return out


def colour_to_grey_pairs(per: int, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """``per`` pairs: a colour image as imgdup reads it (``rgb_to_grey``, what the extraction does
    to PDF images) and the same image turned grey by one of ``GREY_FORMULAS`` (cycled)."""
    from imgdup.pipeline.extract import rgb_to_grey

    imgs = colour_images()
    order = rng.permutation(len(imgs))
    names = list(GREY_FORMULAS)
    out = []
    for k in range(min(per, len(imgs) * len(names))):
        c = imgs[order[k % len(imgs)]].astype(np.float64)
        ours = rgb_to_grey(c)
        other = np.clip(GREY_FORMULAS[names[(k // len(imgs)) % len(names)]](c) + 0.5, 0, 255).astype(np.uint8)
        out.append((ours, other))
    return out


def load_images(smoke: bool, split: str = "test") -> tuple[list[np.ndarray], list[str]]:
    from imgdup.model.train import RECIPES, load_splits

    test = load_splits(RECIPES["cpu"])[split]
    imgs, groups = [], []
    for im in test:
        a = (im.pixels * 255).round().astype(np.uint8)
        if im.group.startswith("athenaz2/"):
            # blot scans: cut into band-sized regions (the unit a reviewer compares)
            h, w = a.shape
            for y in range(0, h - 256, 256):
                for x in range(0, w - 256, 256):
                    tile = a[y:y + 256, x:x + 256]
                    if tile.std() > 8:
                        imgs.append(tile)
                        groups.append(im.group)
        else:
            imgs.append(a if max(a.shape) <= 512 else cv2.resize(a, None, fx=512 / max(a.shape), fy=512 / max(a.shape), interpolation=cv2.INTER_AREA))
            groups.append(im.group)
    if smoke:
        imgs, groups = imgs[:24], groups[:24]
    return imgs, groups


# scikit-image's bundled sample images (installed from PyPI, read at run time, never copied):
# images of kinds the CNN never saw in training (phase contrast, IHC, fundus, astronomy, lunar
# surface, textures, photographs).  Line art, text and tiny images are left out, and so is
# grass.png: it holds a cloned region (its top-left 128-px patch again at (346, 182), template
# correlation > 0.8), so two of its fields are true duplicates (imgdup flags them at 0.999).
OTHER_IMAGES = ["cell.png", "ihc.png", "retina.jpg", "hubble_deep_field.jpg", "moon.png", "coins.png",
                "brick.png", "gravel.png", "camera.png", "astronaut.png", "chelsea.png",
                "coffee.png", "rocket.jpg", "motorcycle_left.png", "clock_motion.png"]


def other_images(side: int = 256, smoke: bool = False) -> tuple[list[np.ndarray], list[str]]:
    """Non-overlapping ``side``-px fields of scikit-image's sample images, as uint8 grey (BT.601,
    as imgdup reads colour), grouped by source image (other fields of one image are the hard
    negatives).  Flat fields, and fields of the fundus photograph that are mostly the black
    outside it, are skipped."""
    try:
        import skimage
    except ImportError as e:  # pragma: no cover - a benchmark-only dependency
        raise SystemExit("--images other needs scikit-image: pip install scikit-image") from e
    from PIL import Image

    from imgdup.pipeline.extract import rgb_to_grey

    root = Path(skimage.__file__).parent / "data"
    imgs, groups = [], []
    for name in OTHER_IMAGES:
        a = np.asarray(Image.open(root / name).convert("RGB"))
        g = rgb_to_grey(a.astype(np.float32))
        h, w = g.shape
        for y in range(0, h - side + 1, side):
            for x in range(0, w - side + 1, side):
                f = g[y:y + side, x:x + side]
                if f.std() > 3 and not (name == "retina.jpg" and (f < 16).mean() >= 0.1):
                    imgs.append(np.ascontiguousarray(f))
                    groups.append(name)
    if smoke:
        imgs, groups = imgs[:24], groups[:24]
    return imgs, groups


def negatives(imgs, groups, n, rng):
    out = []
    idx_by_group = {}
    for i, g in enumerate(groups):
        idx_by_group.setdefault(g, []).append(i)
    while len(out) < n:
        kind = len(out) % 3
        i = int(rng.integers(len(imgs)))
        if kind == 0:       # another field / blot region of the same experiment
            mates = [j for j in idx_by_group[groups[i]] if j != i]
            if not mates:
                continue
            out.append((imgs[i], imgs[int(rng.choice(mates))]))
        elif kind == 1:     # neighbouring non-overlapping crops of one image
            im = imgs[i]
            h, w = im.shape
            if w >= 2 * 96:
                out.append((im[:, : w // 2].copy(), im[:, w // 2:].copy()))
            elif h >= 2 * 96:
                out.append((im[: h // 2].copy(), im[h // 2:].copy()))
        else:
            j = int(rng.integers(len(imgs)))
            if j != i:
                out.append((imgs[i], imgs[j]))
    return out


class Scorers:
    def __init__(self) -> None:
        import imagehash
        from PIL import Image

        from imgdup import load_model
        from imgdup.pipeline import verify

        self.model = load_model()
        self.sift = cv2.SIFT_create(nfeatures=500)
        self.ih, self.Image = imagehash, Image
        self.v = verify

    def _sift(self, a, b) -> float:
        def feats(x):
            x = cv2.resize(x, None, fx=384 / max(x.shape), fy=384 / max(x.shape)) if max(x.shape) > 384 else x
            return self.sift.detectAndCompute(cv2.equalizeHist(x), None)

        ka, da = feats(a)
        best = 0
        for bb in (b, b[:, ::-1].copy()):
            kb, db = feats(bb)
            if da is None or db is None or len(ka) < 4 or len(kb) < 4:
                continue
            m = cv2.BFMatcher().knnMatch(da, db, k=2)
            good = [p[0] for p in m if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
            if len(good) < 4:
                continue
            pa = np.float32([ka[g.queryIdx].pt for g in good])
            pb = np.float32([kb[g.trainIdx].pt for g in good])
            _, inl = cv2.estimateAffinePartial2D(pa, pb, method=cv2.RANSAC, ransacReprojThreshold=4.0)
            best = max(best, int(inl.sum()) if inl is not None else 0)
        return float(best)

    def features(self, pairs, negative_a: bool = False) -> np.ndarray:
        """imgdup's verification features (``verify.feature_vector``) for each pair.
        ``negative_a``: compare the negative of a, as a report row found through a's negative
        is verified: a's keypoints packed as at ingest, turned into the negative's (``negated``)."""
        v = self.v
        if negative_a:
            pairs = [(v.negative_grey(a), b, v.thumbnail(a)) for a, b in pairs]
        ea = self.model.embed([p[0] for p in pairs])
        eb = self.model.embed([p[1] for p in pairs])
        f = np.abs(ea - eb).sum(1)
        rows = []
        for (a, b, *pos), fi in zip(pairs, f):
            ta, tb = v.thumbnail(a), v.thumbnail(b)
            fa = v.negated(v.unpack_keypoints(pos[0], v.pack_keypoints(pos[0])), lambda: ta) if pos else v.features(ta)
            fb, al = v.features(tb), v.align_pair(ta, tb)
            m = v.match(fa, fb)
            if pos:     # as ``_verify_pair`` does for a row found through a stored panel's negative
                conf = float(v.confidence(v.feature_vector(float(fi), m, al))[0])
                m, _ = v.recheck_negative(m, conf, v.NEGATIVE_MIN_CONFIDENCE, al, float(fi), lambda: v.features(ta), fb)
            rows.append(v.feature_vector(float(fi), m, al))
        return np.array(rows)

    def score(self, pairs) -> dict[str, np.ndarray]:
        x = parallel_features(pairs)
        self.last_features = x
        f = x[:, 0]
        conf = self.v.confidence(x) if self.v.CONFIDENCE_FILE.exists() else np.zeros(len(x))
        out = {"cnn": -f, "verify": x[:, 3], "keypoints": x[:, 1] + x[:, 2], "imgdup": conf}
        for name, fn in (("phash", self.ih.phash), ("dhash", self.ih.dhash), ("whash", self.ih.whash)):
            out[name] = np.array([-(fn(self.Image.fromarray(a)) - fn(self.Image.fromarray(b))) for a, b in pairs], float)
        out["sift"] = np.array([self._sift(a, b) for a, b in pairs])
        return out


_WORKER: "Scorers | None" = None


def _init_worker() -> None:
    global _WORKER
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    _WORKER = Scorers()


def _worker_features(pairs, negative_a: bool = False) -> np.ndarray:
    return _WORKER.features(pairs, negative_a)


def parallel_features(pairs, workers: int = 2, chunk: int = 40, negative_a: bool = False) -> np.ndarray:
    """``Scorers.features`` over worker processes (one model each), in order."""
    from functools import partial
    from multiprocessing import get_context

    if len(pairs) <= chunk or workers <= 1:
        global _WORKER
        if _WORKER is None:
            _WORKER = Scorers()
        return _WORKER.features(pairs, negative_a)
    parts = [pairs[i:i + chunk] for i in range(0, len(pairs), chunk)]
    with get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        return np.concatenate(pool.map(partial(_worker_features, negative_a=negative_a), parts))


def copy_move_rates(imgs, n: int, rng) -> dict[str, float]:
    """Copy-move inside one image: detection rate on cloned images, false rate on the originals."""
    from imgdup.pipeline.verify import copy_move, copy_move_features, thumbnail

    pick = rng.choice(len(imgs), size=min(n, len(imgs)), replace=False)
    hit = fa = 0
    t0 = time.time()
    for i in pick:
        im = thumbnail(imgs[i])
        hit += copy_move(copy_move_features(copy_move_image(im, rng))) is not None
        fa += copy_move(copy_move_features(im)) is not None
    return {"images": int(len(pick)), "detected": hit / len(pick), "false_alarms": fa / len(pick),
            "ms_per_image": 1000 * (time.time() - t0) / (2 * len(pick))}


def at_shipped(scores: dict[str, np.ndarray], thr: float) -> dict[str, float]:
    """Shares of pairs accepted at the shipped confidence threshold: by verification alone, and
    also as a whole-panel CNN candidate (f <= 1; the query adds sub-region candidates)."""
    ok = scores["imgdup"] >= thr
    return {"verified": float(ok.mean()), "candidate_and_verified": float((ok & (scores["cnn"] >= -1.0)).mean())}


def metrics(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    both = np.concatenate([pos, neg])
    ranks = both.argsort(kind="stable").argsort().astype(float) + 1
    # ties: average ranks
    _, inv, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    auc = (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
    out = {"auc": float(auc)}
    srt = np.sort(neg)[::-1]
    for fpr in (1e-3, 1e-2):
        k = int(np.floor(fpr * len(neg)))
        cut = srt[k] if k < len(srt) else -np.inf
        out[f"tpr@{fpr:g}"] = float((pos > cut).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-family", type=int, default=60)
    ap.add_argument("--negatives", type=int, default=3000)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "quality.json"))
    ap.add_argument("--images", choices=["held-out", "other"], default="held-out",
                    help="held-out: the test split of ../shared (default); other: fields of "
                         "scikit-image's sample images, kinds the CNN never saw (pip install scikit-image)")
    ap.add_argument("--stored", action="store_true",
                    help="both sides of every pair (positives and negatives) as a PDF figure stores "
                         "them: shrunk to 150-250 px and JPEG q70-90 (as_stored)")
    ap.add_argument("--dump", default=None,
                    help="also write every pair's imgdup features and baseline scores to this .npz")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    imgs, groups = load_images(args.smoke) if args.images == "held-out" else other_images(smoke=args.smoke)
    per = 4 if args.smoke else args.per_family
    n_neg = 60 if args.smoke else args.negatives
    sc = Scorers()
    t0 = time.time()
    srng = np.random.default_rng(2)     # its own generator: the pairs are those of a run without --stored
    prep = (lambda ps: stored_pairs(ps, srng)) if args.stored else (lambda ps: ps)  # noqa: E731
    neg_scores = sc.score(prep(negatives(imgs, groups, n_neg, rng)))
    dump = {"neg_features": sc.last_features, **{f"neg_{k}": v for k, v in neg_scores.items()}}
    table, retrieval, shipped = {}, {}, {}
    thr = float(sc.v.confidence_model()["threshold"])
    for fam, pairs in family_pairs(imgs, per, rng).items():
        pos = sc.score(prep(pairs))
        dump.update({f"pos_features/{fam}": sc.last_features, **{f"pos_{k}/{fam}": v for k, v in pos.items()}})
        table[fam] = {name: metrics(pos[name], neg_scores[name]) for name in pos}
        retrieval[fam] = float(np.mean(pos["cnn"] >= -1.0))     # a whole-panel candidate at f <= 1
        shipped[fam] = at_shipped(pos, thr)
    # after the others, from its own generator: every other family's pairs stay as they were
    fam = "colour to grey (PDF images)"
    pos = sc.score(prep(colour_to_grey_pairs(per, np.random.default_rng(5))))
    dump.update({f"pos_features/{fam}": sc.last_features, **{f"pos_{k}/{fam}": v for k, v in pos.items()}})
    table[fam] = {name: metrics(pos[name], neg_scores[name]) for name in pos}
    retrieval[fam] = float(np.mean(pos["cnn"] >= -1.0))
    shipped[fam] = at_shipped(pos, thr)
    copy_move = copy_move_rates(imgs, per, rng)
    names = list(neg_scores)
    mean = {n: float(np.mean([table[f][n]["tpr@0.001"] for f in table])) for n in names}
    out = {"images": len(imgs), "negatives": n_neg, "positives_per_family": per, "seconds": time.time() - t0,
           "command": "python benchmarks/quality.py" + (" --smoke" if args.smoke else f" --per-family {per} --negatives {n_neg}")
           + ("" if args.images == "held-out" else f" --images {args.images}") + (" --stored" if args.stored else ""),
           "mean_tpr@0.001": mean, "families": table, "copy_move": copy_move,
           "cnn_candidate_rate_f<=1": retrieval,
           "negatives_cnn_candidate_rate_f<=1": float(np.mean(neg_scores["cnn"] >= -1.0)),
           "images_source": args.images, "pairs_as_stored": bool(args.stored), "shipped_threshold": thr,
           "at_shipped_threshold": shipped, "negatives_at_shipped_threshold": at_shipped(neg_scores, thr)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    if args.dump:
        np.savez(args.dump, **dump)
    lines = ["| family | " + " | ".join(names) + " | CNN candidate (f <= 1) |", "|---" * (len(names) + 2) + "|"]
    for fam in table:
        lines.append(f"| {fam} | " + " | ".join(f"{table[fam][n]['tpr@0.001']:.2f}" for n in names)
                     + f" | {retrieval[fam]:.2f} |")
    lines.append("| **mean TPR@FPR1e-3** | " + " | ".join(f"**{mean[n]:.3f}**" for n in names) + " | |")
    print("\n".join(lines))
    print("copy-move:", json.dumps(copy_move))


if __name__ == "__main__":
    main()
