"""PDF -> figures -> panels, with PyMuPDF.

For one document: every raster image placement of every page is found with
``page.get_image_info(xrefs=True)``; each xref is decoded once (alpha flattened on white, every
non-Device colour space converted through an RGB Pixmap, which fixes Separation images that come
out inverted from their raw bytes); placements are turned the way the reader sees them using
their transform; placements that tile or stack into one figure are merged by rendering their
union; where decoding fails, or for inline images and image masks, the placement's clip is
rendered instead.  Each figure is then split into panels (``imgdup.pipeline.split``).

This module runs inside a worker process (``imgdup.pipeline.worker``); it must not import torch.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pymupdf

from ..hashing import sha256_file
from .split import split_panels

log = logging.getLogger(__name__)


@dataclass
class Limits:
    """Caps that protect a batch against hostile or huge documents."""

    max_pages: int = 2000
    max_file_mb: float = 500.0
    max_image_pixels: int = 100_000_000     # declared width x height of one image (bombs)
    max_total_pixels: int = 2_000_000_000   # decoded pixels per document
    timeout_s: float = 300.0                # per document (enforced by the worker)
    memory_mb: int = 4096                   # address-space limit of the worker
    render_dpi_max: float = 300.0


@dataclass
class ExtractOptions:
    min_side_px: int = 32           # smaller images are "tiny"
    min_side_pt: float = 20.0       # placements narrower than this on the page are "tiny" (icons) ...
    strip_aspect: float = 4.0       # ... unless at least this elongated (a western-blot strip) ...
    min_short_pt: float = 8.0       # ... and no narrower than this (rules, spacers)
    max_aspect: float = 20.0        # longer/shorter above this is a rule or a line: "thin"
    blank_std: float = 2.0          # grey-level std below this is "blank" / single colour
    split: bool = True
    min_panel_px: int = 48
    min_panel_frac: float = 0.08
    evidence: bool = True           # also each panel's store thumbnail and keypoints (pipeline.verify)


@dataclass
class Panel:
    """One panel (or whole figure) and where it sits in its document."""

    doc_sha256: str
    doc_path: str
    page: int                       # 1-based
    figure_id: str
    panel_id: str
    bbox: tuple[float, float, float, float]   # PDF points, top-left origin
    width: int
    height: int
    content_hash: str
    pixels: np.ndarray              # uint8 greyscale, as the reader sees it
    kind: str                       # "figure" (the whole figure) or "panel"
    xrefs: tuple[int, ...]
    source: str                     # "xref" (decoded) or "render" (clip rendered)
    rotation: int                   # raw orientation of the stored image: 0/90/180/270
    flipped: bool                   # raw image mirrored by its placement
    transform: tuple[float, ...]
    thumb: bytes = b""              # PNG thumbnail kept in the store (``verify.attach_evidence``)
    keypoints: bytes = b""          # verification keypoints kept in the store (``verify.pack_keypoints``)

    def meta(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("pixels", "thumb", "keypoints")}
        d["bbox"] = list(self.bbox)
        d["xrefs"] = list(self.xrefs)
        d["transform"] = list(self.transform)
        return d


@dataclass
class DocResult:
    """Everything extraction learned about one document; ``error`` set means it was skipped."""

    path: str
    sha256: str = ""
    pages: int = 0
    images: int = 0
    figures: int = 0
    panels: list[Panel] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        if self.error:
            return f"{self.path}: SKIPPED ({self.error})"
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        n_fig = sum(p.kind == "figure" for p in self.panels)
        return (f"{self.path}: {self.pages} pages, {self.images} images, {n_fig} figures, "
                f"{len(self.panels) - n_fig} panels; dropped: {drops}; {self.seconds:.1f}s")


class DocumentError(Exception):
    """A document that cannot be processed, with a reason for the report."""


def content_hash(grey: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(grey).tobytes())
    h.update(str(grey.shape).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------- decoding

LUMA = np.array([0.299, 0.587, 0.114], np.float32)     # BT.601
HUE_RESIDUAL = 10.0     # grey levels (95th percentile) off one hue's line: a pseudo-coloured panel (JPEG q75: <= 8)
GREY_HUE = 0.9          # a hue whose weakest channel is at least this share of its strongest is grey


def single_hue(colour: np.ndarray) -> np.ndarray | None:
    """The tint (3 weights, the largest 1) of a pseudo-coloured panel: every pixel a multiple of
    one colour (a fluorescence channel shown blue, green, red, magenta...), within
    ``HUE_RESIDUAL`` levels (JPEG's chroma); None for other colour images and for grey ones."""
    c = np.asarray(colour, np.float32).reshape(-1, 3)
    if len(c) > 65536:
        c = c[:: len(c) // 65536]
    _, vecs = np.linalg.eigh(c.T @ c)
    u = np.abs(vecs[:, -1])                               # the dominant colour direction
    if u.max() <= 0 or u.min() >= GREY_HUE * u.max():
        return None
    resid = np.linalg.norm(c - np.outer(c @ u, u), axis=1)
    if float(np.percentile(resid, 95)) > HUE_RESIDUAL:
        return None
    return (u / u.max()).astype(np.float32)


def rgb_to_grey(colour: np.ndarray) -> np.ndarray:
    """H x W x 3 RGB values (0-255) -> uint8 grey, rounded: how imgdup reads colour.  BT.601 luma,
    except for a pseudo-coloured panel (``single_hue``), read as its intensity along its tint:
    a field shown blue, green or grey then reads the same (luma keeps 11 % of a blue channel's
    contrast, and blue copies were found least often: docs/BENCHMARKS.md, tints)."""
    c = np.asarray(colour, np.float32)
    tint = single_hue(c)
    grey = c @ LUMA if tint is None else (c @ tint) / float(tint @ tint)
    return np.clip(grey + 0.5, 0, 255).astype(np.uint8)


def pixmap_to_grey(pix: pymupdf.Pixmap) -> np.ndarray:
    """Any Pixmap -> uint8 greyscale: colour spaces other than DeviceGray/RGB go through RGB,
    alpha is flattened on white."""
    cs = pix.colorspace
    if cs is None:
        raise ValueError("image mask without colour space")
    if cs.name not in ("DeviceGray", "DeviceRGB") or pix.n - pix.alpha not in (1, 3):
        pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
    arr = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, pix.n)
    colour = arr[..., : pix.n - pix.alpha].astype(np.float32)
    if pix.alpha:
        a = arr[..., -1:].astype(np.float32) / 255.0
        colour = colour * a + 255.0 * (1.0 - a)
    if colour.shape[2] == 3:
        return rgb_to_grey(colour)
    return np.clip(colour[..., 0] + 0.5, 0, 255).astype(np.uint8)


def decode_xref(doc: pymupdf.Document, xref: int, smask: int) -> np.ndarray:
    """Decode one stored image to greyscale in its raw (stored) orientation."""
    pix = pymupdf.Pixmap(doc, xref)
    if smask:
        try:
            pix = pymupdf.Pixmap(pix, pymupdf.Pixmap(doc, smask))
        except Exception as exc:  # a damaged or mis-sized mask: use the image without it
            log.debug("smask %d of xref %d not applied: %s", smask, xref, exc)
    return pixmap_to_grey(pix)


def orientation(transform: tuple[float, ...]) -> tuple[int, bool, bool]:
    """(rotation in degrees, mirrored, axis-aligned) of a placement transform.

    PyMuPDF maps unit-square point (u, v) (u along the image's columns, v down its rows) to
    (a u + c v + e, b u + d v + f) in top-left-origin page coordinates.
    """
    a, b, c, d = transform[:4]
    scale = max(abs(a), abs(b), abs(c), abs(d), 1e-9)
    aligned = (abs(b) + abs(c)) / scale < 1e-3 or (abs(a) + abs(d)) / scale < 1e-3
    mirrored = (a * d - b * c) < 0
    # rotation of the unmirrored part: angle of the image's x axis on the page
    ang = float(np.degrees(np.arctan2(b, a))) if not mirrored else float(np.degrees(np.arctan2(-b, -a)))
    rot = int(round(ang / 90.0)) % 4 * 90
    return rot, mirrored, aligned


def as_seen(raw: np.ndarray, transform: tuple[float, ...]) -> np.ndarray:
    """Turn/flip a raw image so that it looks as on the page (axis-aligned placements)."""
    a, b, c, d = transform[:4]
    if abs(a) + abs(d) >= abs(b) + abs(c):
        img = raw
        if a < 0:
            img = img[:, ::-1]
        if d < 0:
            img = img[::-1, :]
    else:
        img = raw.T
        if c < 0:
            img = img[:, ::-1]
        if b < 0:
            img = img[::-1, :]
    return np.ascontiguousarray(img)


def render_clip(page: pymupdf.Page, bbox: pymupdf.Rect, target_px: int, dpi_max: float) -> np.ndarray:
    """Render a page region as the reader sees it, at about ``target_px`` on its longer side."""
    side_pt = max(bbox.width, bbox.height, 1.0)
    dpi = int(round(float(np.clip(target_px / side_pt * 72.0, 36.0, dpi_max))))
    pix = page.get_pixmap(clip=bbox, dpi=dpi, colorspace=pymupdf.csRGB, alpha=False)
    return pixmap_to_grey(pix)


# ------------------------------------------------------------------------------- figure grouping

def panels_only(grey: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """A split figure as it is compared whole: its panels' pixels, and everything between them
    (gutters, titles, tick labels, panel letters) set to the background's level (the median
    outside the panels).  Two figures drawn with one plotting template share their frames'
    surroundings, tick labels and titles, which are no evidence of re-used images."""
    keep = np.zeros(grey.shape, bool)
    for y0, y1, x0, x1 in boxes:
        keep[y0:y1, x0:x1] = True
    if keep.all() or not keep.any():
        return grey
    out = np.full_like(grey, int(np.median(grey[~keep])))
    out[keep] = grey[keep]
    return out


def _touch(r1: pymupdf.Rect, r2: pymupdf.Rect, tol: float = 1.5) -> bool:
    return not (r1.x1 + tol < r2.x0 or r2.x1 + tol < r1.x0 or r1.y1 + tol < r2.y0 or r2.y1 + tol < r1.y0)


def group_placements(rects: list[pymupdf.Rect]) -> list[list[int]]:
    """Connected groups of placements whose boxes overlap or abut (tiles, strips, layers)."""
    n = len(rects)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if _touch(rects[i], rects[j]):
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: min(g))


# ---------------------------------------------------------------------------------- the document

def _drop_reason(grey: np.ndarray, opts: ExtractOptions) -> str | None:
    h, w = grey.shape
    if min(h, w) < opts.min_side_px:
        return "tiny"
    if max(h, w) / max(min(h, w), 1) > opts.max_aspect:
        return "thin"
    if float(grey.std()) < opts.blank_std:
        return "blank"
    return None


def extract_document(path: str | Path, limits: Limits | None = None,
                     opts: ExtractOptions | None = None) -> DocResult:
    """Extract the figures and panels of one PDF (in-process; see worker.extract_many for the
    isolated batch version).  Raises DocumentError for a document that must be skipped."""
    limits, opts = limits or Limits(), opts or ExtractOptions()
    t0 = time.time()
    path = Path(path)
    res = DocResult(path=str(path))
    if not path.is_file():
        raise DocumentError("not a regular file" if path.exists() else "file not found")
    size_mb = path.stat().st_size / 2**20
    if size_mb == 0:
        raise DocumentError("empty file")
    if size_mb > limits.max_file_mb:
        raise DocumentError(f"file too large ({size_mb:.0f} MB > {limits.max_file_mb:.0f} MB cap)")
    with path.open("rb") as fh:
        head = fh.read(1024)
    if b"%PDF-" not in head:
        raise DocumentError("not a PDF (no %PDF- header in the first 1024 bytes)")
    res.sha256 = sha256_file(path)
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as exc:
        raise DocumentError(f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    with doc:
        if doc.needs_pass:
            raise DocumentError("encrypted PDF (password required)")
        if not doc.is_pdf:
            raise DocumentError(f"not a PDF (opened as {doc.metadata.get('format', '?')})")
        res.pages = doc.page_count
        if res.pages == 0:
            raise DocumentError("PDF has no pages")
        if res.pages > limits.max_pages:
            raise DocumentError(f"too many pages ({res.pages} > {limits.max_pages} cap)")
        dropped: Counter[str] = Counter()
        cache: dict[int, np.ndarray | None] = {}
        decoded_pixels = 0
        fig_no = 0
        for page in doc:
            try:
                infos = page.get_image_info(xrefs=True)
                smasks = {im[0]: im[1] for im in page.get_images(full=True)}
            except Exception as exc:
                dropped["page unreadable"] += 1
                log.warning("%s page %d unreadable: %s", path, page.number + 1, exc)
                continue
            res.images += len(infos)
            kept = []
            for info in infos:
                r = pymupdf.Rect(info["bbox"]) & page.rect
                short, long_ = min(r.width, r.height), max(r.width, r.height)
                if r.is_empty or short < opts.min_short_pt or (
                        short < opts.min_side_pt and long_ < opts.strip_aspect * short):
                    dropped["tiny"] += 1
                    continue
                if long_ / max(short, 1e-6) > opts.max_aspect:
                    dropped["thin"] += 1
                    continue
                if info["width"] * info["height"] > limits.max_image_pixels:
                    dropped["pixel cap"] += 1
                    continue
                kept.append((info, r))
            for group in group_placements([r for _, r in kept]):
                members = [kept[i] for i in group]
                union = pymupdf.Rect(members[0][1])
                for _, r in members[1:]:
                    union |= r
                xrefs = tuple(int(info["xref"]) for info, _ in members)
                transform = tuple(float(x) for x in members[0][0]["transform"])
                rot, mirrored, aligned = orientation(transform)
                grey, source = None, "xref"
                if len(members) == 1 and xrefs[0] > 0 and aligned:
                    xref = xrefs[0]
                    if xref not in cache:
                        try:
                            cache[xref] = decode_xref(doc, xref, smasks.get(xref, 0))
                        except Exception as exc:
                            log.debug("xref %d: decode failed (%s), rendering", xref, exc)
                            cache[xref] = None
                    if cache[xref] is not None:
                        grey = as_seen(cache[xref], transform)
                if grey is None:
                    # tiles / layers / inline images / masks / free rotation / decode failure
                    source = "render"
                    px = max(max(info["width"], info["height"]) for info, _ in members)
                    scale = max(max(r.width, r.height) for _, r in members) / max(union.width, union.height)
                    target = int(min(px / max(scale, 1e-6), 4000))
                    try:
                        grey = render_clip(page, union, target, limits.render_dpi_max)
                    except Exception as exc:
                        dropped["render failed"] += 1
                        log.warning("%s p%d: render failed: %s", path, page.number + 1, exc)
                        continue
                decoded_pixels += grey.size
                if decoded_pixels > limits.max_total_pixels:
                    raise DocumentError(f"decoded pixels exceed the {limits.max_total_pixels:,} cap")
                reason = _drop_reason(grey, opts)
                if reason:
                    dropped[reason] += 1
                    continue
                fig_no += 1
                res.figures += 1
                fig_id = f"p{page.number + 1}-f{fig_no}"
                base = dict(doc_sha256=res.sha256, doc_path=str(path), page=page.number + 1,
                            figure_id=fig_id, xrefs=xrefs, source=source, rotation=rot,
                            flipped=mirrored, transform=transform)
                boxes = split_panels(grey, min_px=opts.min_panel_px, min_frac=opts.min_panel_frac) if opts.split else []
                # a split figure is compared by its panels' pixels only (``panels_only``)
                res.panels.append(Panel(panel_id=f"{fig_id}-0", bbox=tuple(union), width=grey.shape[1],
                                        height=grey.shape[0], content_hash=content_hash(grey),
                                        pixels=grey if len(boxes) <= 1 else panels_only(grey, boxes),
                                        kind="figure", **base))
                if len(boxes) <= 1:
                    continue
                sx, sy = union.width / grey.shape[1], union.height / grey.shape[0]
                for k, (y0, y1, x0, x1) in enumerate(boxes, start=1):
                    sub = np.ascontiguousarray(grey[y0:y1, x0:x1])
                    reason = _drop_reason(sub, opts)
                    if reason:
                        dropped[f"panel {reason}"] += 1
                        continue
                    bb = (union.x0 + x0 * sx, union.y0 + y0 * sy, union.x0 + x1 * sx, union.y0 + y1 * sy)
                    res.panels.append(Panel(panel_id=f"{fig_id}-{k}", bbox=bb, width=sub.shape[1],
                                            height=sub.shape[0], content_hash=content_hash(sub),
                                            pixels=sub, kind="panel", **base))
        res.dropped = dict(dropped)
    res.seconds = time.time() - t0
    return res
