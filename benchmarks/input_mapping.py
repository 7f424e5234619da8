"""How should a panel of any size and aspect become the network's S x S input?

Compares three mappings on held-out micrographs: squash the whole panel to S x S (shipped),
centre-crop the largest square then resize, and letterbox (pad to square with the mean).
For each manipulation: the share of copies with f <= 1 (TPR at the threshold) and TPR at the
FPR of 1e-2 among pairs of different held-out images.

    python benchmarks/input_mapping.py --out docs/input_mapping.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from imgdup import load_model
from imgdup.demo.generate import _crop, shared_test_images


def squash(im, s):
    return cv2.resize(im, (s, s), interpolation=cv2.INTER_AREA)


def centre_crop(im, s):
    h, w = im.shape
    m = min(h, w)
    y, x = (h - m) // 2, (w - m) // 2
    return cv2.resize(im[y:y + m, x:x + m], (s, s), interpolation=cv2.INTER_AREA)


def letterbox(im, s):
    h, w = im.shape
    m = max(h, w)
    canvas = np.full((m, m), int(im.mean()), np.uint8)
    y, x = (m - h) // 2, (m - w) // 2
    canvas[y:y + h, x:x + w] = im
    return cv2.resize(canvas, (s, s), interpolation=cv2.INTER_AREA)


MANIPS = {
    "crop 90%": lambda im, r: _crop(im, 0.9, r),
    "crop 70%": lambda im, r: _crop(im, 0.7, r),
    "crop 50%": lambda im, r: _crop(im, 0.5, r),
    "rescale 0.5": lambda im, r: cv2.resize(im, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
    "aspect 1.3 wide": lambda im, r: cv2.resize(im, (int(im.shape[1] * 1.3), im.shape[0])),
    "aspect 1.3 tall": lambda im, r: cv2.resize(im, (im.shape[1], int(im.shape[0] * 1.3))),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/input_mapping.json")
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    model = load_model()
    s = model.size
    imgs = shared_test_images()[: args.n]
    out = {"images": len(imgs), "input_size": s, "mappings": {}}
    for name, fn in (("squash (shipped)", squash), ("centre crop", centre_crop), ("letterbox", letterbox)):
        emb = lambda ims: model.embed_prepared(np.stack([fn(im, s).astype(np.float32) / 255 for im in ims]))  # noqa: E731
        base = emb(imgs)
        neg = np.abs(base[:, None] - base[None]).sum(-1)[np.triu_indices(len(imgs), 1)]
        cut = np.quantile(neg, 0.01)
        rows = {"fpr_at_threshold": float((neg <= 1).mean())}
        for m, mf in MANIPS.items():
            r = np.random.default_rng(1)
            copies = emb([mf(im, r) for im in imgs])
            f = np.abs(base - copies).sum(1)
            rows[m] = {"tpr_at_threshold": float((f <= 1).mean()), "tpr_at_fpr_1e-2": float((f < cut).mean()),
                       "median_f": float(np.median(f))}
        out["mappings"][name] = rows
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
