"""Shared fixtures: paths to ../shared/data and PDFs built with PyMuPDF from real micrographs."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from imgdup.demo.generate import iou  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MICRO = SHARED / "micrographs" / "dsb2018"
PDFS = SHARED / "pdfs"


def need_shared(path: Path = SHARED) -> None:
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (clone with ../shared beside it)")


def micrograph(index: int, size: int | None = None) -> np.ndarray:
    """A real DSB2018 micrograph (CC0) as uint8 greyscale."""
    need_shared(MICRO)
    files = sorted(MICRO.glob("*.png"))
    img = Image.open(files[index % len(files)]).convert("L")
    if size:
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def plotted_figure(cells: list[np.ndarray], ticks: bool) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A 2 x 3 figure as a plotting tool rasterises one (matplotlib's ``imshow`` grid): white
    paper, each image in a 2-px black axes frame with a title above it and, with ``ticks``, tick
    marks and tick labels below and to its left, in the white space between the panels.
    Returns the figure and each framed image's box (y0, y1, x0, x1)."""
    side, pad_l, pad_t, pad_b, gap = cells[0].shape[0], 48, 30, 34, 26
    cw, chh = pad_l + side + 4 + gap, pad_t + side + 4 + pad_b
    fig = np.full((2 * chh + 10, 3 * cw + 10), 255, np.uint8)
    boxes = []
    for k, c in enumerate(cells):
        r, q = divmod(k, 3)
        y0, x0 = 10 + r * chh + pad_t, 10 + q * cw + pad_l
        fig[y0:y0 + side + 4, x0:x0 + side + 4] = 0
        fig[y0 + 2:y0 + 2 + side, x0 + 2:x0 + 2 + side] = c
        boxes.append((y0, y0 + side + 4, x0, x0 + side + 4))
        cv2.putText(fig, f"({'abcdef'[k]}) condition {k + 1}", (x0 + 10, y0 - 10),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, 0, 1, cv2.LINE_AA)
        if ticks:
            for t in range(0, side + 1, side // 4):
                fig[y0 + side + 4:y0 + side + 9, x0 + 2 + min(t, side - 1)] = 0     # x ticks
                fig[y0 + 2 + min(t, side - 1), x0 - 5:x0] = 0                       # y ticks
                cv2.putText(fig, str(t), (x0 + t - 6, y0 + side + 24), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 0, 1, cv2.LINE_AA)
                cv2.putText(fig, str(t), (x0 - 34, y0 + t + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 0, 1, cv2.LINE_AA)
    return fig, boxes
