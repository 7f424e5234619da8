"""Verification of candidate pairs by alignment: is one panel, turned or flipped, possibly
cropped, the other one?

The CNN distance finds candidates; many fields of one experiment look alike to it.  A copy,
though, lines up with its source pixel for pixel once the orientation (one of the 8 flips and
quarter turns) and the crop are undone.  Both panels are reduced to small thumbnails,
rank-normalised (which removes gamma, contrast stretch and equalisation) and compared by
normalised cross-correlation, over the 8 orientations and a few crop scales in both directions
(``cv2.matchTemplate``).  The best correlation is the verification score.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

THUMB = 96          # thumbnail side used for verification (and stored in the index)
SCALES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6)


@dataclass(frozen=True)
class Verification:
    ncc: float          # best normalised cross-correlation, -1..1
    orientation: str    # how the second panel was turned to match the first
    scale: float        # size of the inner panel relative to the outer one (1 = whole)
    inner: str          # "a", "b" or "" (no crop)


_ORIENT = {
    "identity": lambda x: x, "rot90": lambda x: np.rot90(x, 1), "rot180": lambda x: np.rot90(x, 2),
    "rot270": lambda x: np.rot90(x, 3), "flip-lr": lambda x: x[:, ::-1], "flip-ud": lambda x: x[::-1],
    "transpose": lambda x: x.T, "anti-transpose": lambda x: np.rot90(x, 2).T,
}


def thumbnail(grey: np.ndarray, side: int = THUMB) -> np.ndarray:
    """Aspect-kept thumbnail, longer side = ``side`` (uint8); used for storage and verification."""
    h, w = grey.shape
    s = side / max(h, w)
    size = (max(8, int(round(w * s))), max(8, int(round(h * s))))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(grey), size, interpolation=interp)


def _rank(img: np.ndarray, side: int) -> np.ndarray:
    """Square, lightly blurred, rank-normalised float32 image."""
    sq = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    sq = cv2.GaussianBlur(sq, (0, 0), 1.0)
    order = sq.ravel().argsort(kind="stable")
    ranks = np.empty(order.size, np.float32)
    ranks[order] = np.arange(order.size, dtype=np.float32)
    return (ranks / order.size).reshape(side, side)


def verify_pair(a: np.ndarray, b: np.ndarray, side: int = 64) -> Verification:
    """Best alignment of panel b onto panel a (any size / aspect; uint8 or float greyscale)."""
    ra = _rank(a, side)
    best = Verification(-1.0, "identity", 1.0, "")
    for name, turn in _ORIENT.items():
        rb = np.ascontiguousarray(_rank(np.ascontiguousarray(turn(b)), side))
        ncc = float(cv2.matchTemplate(ra, rb, cv2.TM_CCOEFF_NORMED)[0, 0])
        if ncc > best.ncc:
            best = Verification(ncc, name, 1.0, "")
        for s in SCALES[1:]:
            k = int(round(side * s))
            for inner, outer, tag in ((rb, ra, "b"), (ra, rb, "a")):
                small = cv2.resize(inner, (k, k), interpolation=cv2.INTER_AREA)
                # the crop is the inner panel: find it inside the outer one
                val = float(cv2.matchTemplate(outer, small, cv2.TM_CCOEFF_NORMED).max())
                if val > best.ncc:
                    best = Verification(val, name, s, tag)
    return best


VERIFY_NCC = 0.87   # accept at or above; measured on held-out pairs (docs/MODEL.md)


def verify_report(report, lookup, threshold: float = VERIFY_NCC, keep_rejected: bool = False):
    """Add verification columns to a pair report and drop (or keep, marked) the rejected pairs.

    ``lookup(side, row)`` returns the panel pixels of side "query" / "match" of a report row,
    or None when they are not available (the pair is then kept, unverified).
    """
    import pandas as pd

    ncc, orient, scale, ok, reason = [], [], [], [], []
    for row in report.itertuples(index=False):
        if row.same_xref:
            ncc.append(np.nan), orient.append(""), scale.append(np.nan), ok.append(False)
            reason.append("same stored image placed twice in the document")
            continue
        a, b = lookup("query", row), lookup("match", row)
        if a is None or b is None:
            ncc.append(np.nan), orient.append(""), scale.append(np.nan), ok.append(True)
            reason.append("not verified: pixels unavailable")
            continue
        v = verify_pair(a, b)
        ncc.append(v.ncc), orient.append(v.orientation), scale.append(v.scale)
        ok.append(v.ncc >= threshold)
        reason.append("" if v.ncc >= threshold else f"no alignment (best correlation {v.ncc:.2f} < {threshold})")
    out = report.copy()
    out["verify_ncc"] = pd.Series(ncc, index=out.index, dtype="float64")
    out["verify_orientation"] = pd.Series(orient, index=out.index, dtype="object")
    out["verify_scale"] = pd.Series(scale, index=out.index, dtype="float64")
    out["verified"] = pd.Series(ok, index=out.index, dtype="bool")
    out["reject_reason"] = pd.Series(reason, index=out.index, dtype="object")
    if not keep_rejected:
        out = out[out.verified]
    return out.reset_index(drop=True)
