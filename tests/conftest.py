"""Shared fixtures: paths to ../shared/data and PDFs built with PyMuPDF from real micrographs."""

from __future__ import annotations

import io
from pathlib import Path

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
