"""Verification of candidate pairs: is (part of) one panel, turned, flipped, scaled or cropped,
the same pixels as (part of) the other?

The CNN distance finds candidates; many fields of one experiment look alike to it.  A copy,
though, lines up with its source once the geometry is undone.  Two independent checks:

* keypoints: SIFT on contrast-limited-equalised images (CLAHE, so gamma / contrast changes leave
  the keypoints in place), RootSIFT descriptors, Lowe's ratio test, and a RANSAC affine
  transform, refined to a homography for copies shown in perspective; the second panel is also
  matched mirrored, since SIFT is not flip-invariant.  When CLAHE keypoints give no transform, a
  second pass uses keypoints of the globally equalised panels (small overlaps, equalised copies).
  The transform gives rotation, scale, flip and translation and the overlap polygon in both
  panels; the overlap is then warped into register and compared by rank correlation
  (``aligned_ncc``) and by the correlation of its fine detail (``detail_ncc``), which separates a
  real copy from a look-alike; a registration whose overlap agrees but whose detail does not is
  first refined on the pixels (ECC), since a few clustered keypoints can leave it pixels off.
* whole-panel alignment: small rank-normalised thumbnails over the 8 flips / quarter turns and a
  few crop scales, by normalised cross-correlation (``thumb_ncc``), each panel first clipped
  where the other is saturated (a contrast stretch that flattened the background), and
  perceptual hashes of both panels as they are and globally equalised.  This covers panels with
  too few keypoints (blurred, flat, tiny, nearly black).

A sign-constrained logistic model over ``FEATURES``, fitted on held-out calibration pairs
(``benchmarks/calibrate.py`` writes ``confidence.json``), turns them into one calibrated
``confidence``; the pair is accepted at or above the threshold stored with it.  A pair of two
blot strips (``is_strip``) has its own model (``confidence_strips.json``, from
``benchmarks/calibrate_strips.py``) and two more checks: its registration's tilt
(``strip_tilt``) and its lane profiles (``_lane_diff``).  ``copy_move`` finds a region
duplicated inside one panel with the same machinery.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import cv2
import numpy as np

log = logging.getLogger(__name__)

THUMB = 256         # side of the thumbnail stored in the index (verification and evidence)
PREP = 256          # side at which keypoints are computed
ELONGATED = 2.0     # an elongated panel (a western-blot strip) gets sqrt(aspect / this) x these
MAX_STRETCH = 3.0   # sides, at most this many times: its short side keeps enough rows for keypoints


def long_side(h: int, w: int, side: int) -> int:
    """The longer side, in px, at which a panel of h x w is thumbnailed or described: ``side``,
    more for an elongated panel (a 10:1 strip: 2.2 x ``side``), so that it is not a sliver;
    a panel already within 1 % of that (a stored thumbnail, whose rounded sides move its
    aspect a little) keeps its own."""
    aspect = max(h, w) / max(min(h, w), 1)
    target = side * min(MAX_STRETCH, max(1.0, (aspect / ELONGATED) ** 0.5))
    if target > side and abs(max(h, w) - target) <= 0.01 * target:
        return max(h, w)
    return int(round(target))


SCALES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6)
CONFIDENCE_FILE = Path(__file__).with_name("confidence.json")
STRIP_CONFIDENCE_FILE = Path(__file__).with_name("confidence_strips.json")   # pairs of blot strips


# ---------------------------------------------------------------- whole-panel alignment

_ORIENT = {
    "identity": lambda x: x, "rot90": lambda x: np.rot90(x, 1), "rot180": lambda x: np.rot90(x, 2),
    "rot270": lambda x: np.rot90(x, 3), "flip-lr": lambda x: x[:, ::-1], "flip-ud": lambda x: x[::-1],
    "transpose": lambda x: x.T, "anti-transpose": lambda x: np.rot90(x, 2).T,
}


@dataclass(frozen=True)
class Alignment:
    ncc: float          # best normalised cross-correlation, -1..1
    orientation: str    # how the second panel was turned to match the first
    scale: float        # size of the inner panel relative to the outer one (1 = whole)
    inner: str          # "a", "b" or "" (no crop)
    phash: float = 0.0  # perceptual-hash similarity, best orientation, as is or equalised (``phash_similarity``)


def _reduced(img: np.ndarray) -> np.ndarray:
    """The image averaged down to 32 x 32 (float32): what the perceptual hash sees."""
    return cv2.resize(np.asarray(img, np.float32), (32, 32), interpolation=cv2.INTER_AREA)


def _dct_bits(small: np.ndarray) -> np.ndarray:
    """The signs of the 8 x 8 lowest DCT frequencies of a 32 x 32 image against their median."""
    low = cv2.dct(np.ascontiguousarray(small))[:8, :8]
    return (low > np.median(low)).ravel()


def _phash(img: np.ndarray) -> np.ndarray:
    """64-bit perceptual hash: ``_dct_bits`` of the image reduced to 32 x 32 (robust to tone
    curves, noise, blur and re-compression)."""
    return _dct_bits(_reduced(img))


PHASH_SCALE = 12    # Hamming distance at which the similarity reaches 0 (unrelated images: ~32; docs/VERIFICATION.md)


def orientation_hashes(img: np.ndarray) -> np.ndarray:
    """(8, 64) perceptual hashes of the image in the 8 quarter turns / flips (``_ORIENT`` order,
    identity first), computed once per panel and shared by its pairs.  The image is reduced to
    32 x 32 once and the small image turned (area averaging commutes with quarter turns and
    flips; the same bits as ``_phash`` of each turned image, tested), not each turn resized."""
    small = _reduced(img)
    low = np.stack([cv2.dct(np.ascontiguousarray(turn(small)))[:8, :8].ravel() for turn in _ORIENT.values()])
    return low > np.median(low, axis=1, keepdims=True)      # ``_dct_bits`` of each turn, one median call


def panel_hashes(img: np.ndarray) -> np.ndarray:
    """(16, 64): ``orientation_hashes`` of the panel as it is, then of the panel globally
    histogram-equalised.  A nearly black micrograph and its equalised copy share no hash as they
    are (the source's few bright spots against the copy's revealed cells) and nearly the same
    one once both are equalised; different panels stay ~32 bits apart either way (1 of 3,173
    calibration negatives came within 12 bits equalised; docs/VERIFICATION.md)."""
    g = _as_uint8(img)
    return np.concatenate([orientation_hashes(g), orientation_hashes(cv2.equalizeHist(g))])


def phash_similarity(a: np.ndarray | None, b: np.ndarray | None, hashes_a: np.ndarray | None = None,
                     hashes_b: np.ndarray | None = None) -> float:
    """1 - (smallest Hamming distance between a's hash and b's over the 8 quarter turns / flips,
    the panels as they are or both equalised) / PHASH_SCALE, floored at 0: evidence that b is a
    whole-image copy of a.  ``hashes_*``: ``panel_hashes`` of a and b when already known (the
    pixels are then not needed; 8-row ``orientation_hashes`` compare the panels as they are)."""
    ha = panel_hashes(a) if hashes_a is None else hashes_a
    hb = panel_hashes(b) if hashes_b is None else hashes_b
    d = int((hb[:8] != ha[0][None]).sum(axis=1).min())
    if len(ha) >= 16 and len(hb) >= 16:
        d = min(d, int((hb[8:16] != ha[8][None]).sum(axis=1).min()))
    return max(0.0, 1.0 - d / PHASH_SCALE)


def thumbnail(grey: np.ndarray, side: int = THUMB) -> np.ndarray:
    """Aspect-kept thumbnail, longer side = ``long_side`` (never enlarged), uint8."""
    h, w = grey.shape
    s = min(1.0, long_side(h, w, side) / max(h, w))
    if s == 1.0 and grey.dtype == np.uint8:
        return np.ascontiguousarray(grey)
    if grey.dtype != np.uint8:
        grey = np.clip(np.asarray(grey, np.float32) * (255.0 if grey.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    size = (max(8, int(round(w * s))), max(8, int(round(h * s))))
    return cv2.resize(np.ascontiguousarray(grey), size, interpolation=cv2.INTER_AREA)


def _rank(img: np.ndarray, side: int) -> np.ndarray:
    """Square, lightly blurred, rank-normalised float32 image; equal values share their mean
    rank (a clipped or flat background is one level, not a ramp in raster order)."""
    sq = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    sq = cv2.GaussianBlur(sq, (0, 0), 1.0)
    _, inverse, counts = np.unique(sq.ravel(), return_inverse=True, return_counts=True)
    mean_rank = (np.cumsum(counts) - (counts + 1) / 2.0).astype(np.float32)
    return (mean_rank[inverse.ravel()] / sq.size).reshape(side, side)


CLIP_FRAC = 0.02    # a grey level holding this share of a panel's pixels at its end is clipping


def _co_clip(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip each panel where the other is clipped: when b's darkest (brightest) level holds a
    share p of its pixels, a's darkest (brightest) share p becomes one level too.  A copy whose
    contrast was stretched until its background saturated then ranks like its source, instead
    of the source's background texture facing a flat white."""

    def ends(x: np.ndarray) -> tuple[float, float]:
        return float((x <= x.min()).mean()), float((x >= x.max()).mean())

    def clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
        if lo < CLIP_FRAC and hi < CLIP_FRAC:
            return x
        lo_v, hi_v = np.quantile(x, [lo if lo >= CLIP_FRAC else 0.0, 1.0 - hi if hi >= CLIP_FRAC else 1.0])
        return np.clip(x, lo_v, hi_v).astype(x.dtype)

    (alo, ahi), (blo, bhi) = ends(a), ends(b)
    return clip(a, blo, bhi), clip(b, alo, ahi)


def align_pair(a: np.ndarray, b: np.ndarray, side: int = 64, phash: float | None = None) -> Alignment:
    """Best whole-panel alignment of b onto a over 8 orientations and crop scales, each panel
    clipped where the other is (``_co_clip``; ``phash``: their ``phash_similarity`` when
    already known)."""
    ph = phash_similarity(a, b) if phash is None else phash
    a, b = _co_clip(a, b)
    ra = _rank(a, side)
    best = Alignment(-1.0, "identity", 1.0, "", ph)
    for name, turn in _ORIENT.items():
        rb = np.ascontiguousarray(_rank(np.ascontiguousarray(turn(b)), side))
        ncc = float(cv2.matchTemplate(ra, rb, cv2.TM_CCOEFF_NORMED)[0, 0])
        if ncc > best.ncc:
            best = Alignment(ncc, name, 1.0, "", ph)
        for s in SCALES[1:]:
            k = int(round(side * s))
            for inner, outer, tag in ((rb, ra, "b"), (ra, rb, "a")):
                small = cv2.resize(inner, (k, k), interpolation=cv2.INTER_AREA)
                val = float(cv2.matchTemplate(outer, small, cv2.TM_CCOEFF_NORMED).max())
                if val > best.ncc:
                    best = Alignment(val, name, s, tag, ph)
    return best


# ---------------------------------------------------------------- keypoints

_LOCAL = threading.local()


def _per_thread(name: str, make):
    """One OpenCV object per thread: CLAHE keeps its lookup tables in the object, so a shared one
    gives wrong, run-to-run different results when verification threads use it at once."""
    obj = getattr(_LOCAL, name, None)
    if obj is None:
        obj = make()
        setattr(_LOCAL, name, obj)
    return obj


def _sift() -> cv2.SIFT:
    return _per_thread("sift", lambda: cv2.SIFT_create(nfeatures=500, contrastThreshold=0.02))


EQ_KEYPOINTS = 250  # second pass: 150 lost small overlaps, 500 cost 2x the time (docs/VERIFICATION.md)


def _eq_sift() -> cv2.SIFT:
    return _per_thread("eq_sift", lambda: cv2.SIFT_create(nfeatures=EQ_KEYPOINTS, contrastThreshold=0.02))


def _clahe() -> cv2.CLAHE:
    return _per_thread("clahe", lambda: cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)))


def _dense_sift() -> cv2.SIFT:
    """Copy-move's keypoints: low contrast threshold, a finer first blur (sigma 1.0, not SIFT's
    1.6) and 2,000 points.  Chosen on 200 validation + training images (57 blot tiles), a
    sixteenth cloned: 187 -> 197 found, no false alarm either way, 99 -> 63 ms an image
    (docs/VERIFICATION.md, copy-move)."""
    return _per_thread("dense_sift", lambda: cv2.SIFT_create(nfeatures=2000, contrastThreshold=0.005, sigma=1.0))


def _describe(img: np.ndarray, dense: bool = False, equalised: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """RootSIFT keypoints of the CLAHE-equalised image, or (``equalised``) of the lightly blurred,
    globally equalised one."""
    prep = cv2.equalizeHist(cv2.GaussianBlur(img, (0, 0), 1.0)) if equalised else _clahe().apply(img)
    kp, d = (_dense_sift() if dense else _eq_sift() if equalised else _sift()).detectAndCompute(prep, None)
    if d is None or len(kp) == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    d = d / (d.sum(1, keepdims=True) + 1e-7)            # RootSIFT
    return np.float32([k.pt for k in kp]), _dequantise(_quantise(np.sqrt(d)))


def _quantise(desc: np.ndarray) -> np.ndarray:
    """RootSIFT components (0..1) as uint8 levels: the form stored at ingest, so that keypoints
    computed now and keypoints read from the store give the same matches, bit for bit."""
    return np.round(np.clip(desc, 0.0, 1.0) * 255.0).astype(np.uint8)


def _dequantise(q: np.ndarray) -> np.ndarray:
    """uint8 levels back to unit-length float32 descriptors (``_ratio_matches`` relies on unit length)."""
    x = q.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-6))


KEYPOINTS_MAGIC = b"KP3"   # bump when keypoint detection changes: stored keypoints of another version are recomputed
_KP2_MAGIC = b"KP2"        # sessions 14-15: the same layout with 8 hashes, the panel as is only (still read)
_KP1_MAGIC = b"KP1"        # sessions 9-13: the same keypoints, zlib-compressed, without ``PanelFacts`` (still read)
_HASH_BYTES = {KEYPOINTS_MAGIC: 128, _KP2_MAGIC: 64}     # packed ``PanelFacts.hashes`` after the head


# The SIFT descriptor of the left-right mirrored patch, as a permutation of the original's 128
# bins.  OpenCV lays the 4 x 4 x 8 histogram out as (row, column, orientation bin) in the
# keypoint's frame, whose column axis follows the keypoint's orientation; mirroring the image
# reverses the row axis and the sense of rotation: row r -> 3 - r, orientation bin o -> -o mod 8.
# Checked on DSB2018 panels: at the points SIFT finds in both, median cosine 0.998 with the
# descriptors SIFT computes on the mirrored image (tests/test_verify.py), at no SIFT cost.
MIRROR = np.array([((3 - r) * 4 + c) * 8 + (8 - o) % 8 for r in range(4) for c in range(4) for o in range(8)])

# The SIFT descriptor of the same patch in the panel's negative (255 - grey), as a permutation.
# Inverting the grey levels negates every gradient: SIFT finds the same points (extrema of the
# difference of Gaussians of either sign, the same edge test), each oriented 180 degrees round,
# so in its frame every sample falls in the opposite spatial bin (row r -> 3 - r, column c ->
# 3 - c) with the same gradient direction relative to the keypoint (orientation bin unchanged).
# A row found through a panel's negative is verified with these instead of SIFT run on the
# negative (twice: the CLAHE and the equalised pass); checked against SIFT on the negative in
# tests/test_verify.py and end to end by benchmarks/inverted.py (docs/VERIFICATION.md).
INVERT = np.array([((3 - r) * 4 + (3 - c)) * 8 + o for r in range(4) for c in range(4) for o in range(8)])


@dataclass
class Features:
    """A panel prepared for verification: its keypoints, and ``img``, the panel at ``PREP`` px
    (uint8) - held from the start, or (a stored panel, ``stored_features``) decoded from its
    thumbnail only when a pair first needs its pixels."""

    shape: tuple[int, int]          # (h, w) of ``img``
    orig_shape: tuple[int, int]
    pts: np.ndarray
    desc: np.ndarray
    dense: bool = False
    _img: np.ndarray | None = field(default=None, repr=False)
    _thumb: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    _more: dict[tuple[bool, bool], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _text: np.ndarray | None = field(default=None, repr=False)

    @staticmethod
    def of(img: np.ndarray, orig_shape: tuple[int, int], pts: np.ndarray, desc: np.ndarray,
           dense: bool = False) -> "Features":
        return Features(img.shape[:2], orig_shape, pts, desc, dense, _img=img)

    @property
    def img(self) -> np.ndarray:
        if self._img is None:
            img = _prep_image(self._thumb(), PREP)
            if img.shape != self.shape:     # keep the keypoints' frame
                (h, w), (kh, kw) = img.shape, self.shape
                if abs(np.log((h / w) / (kh / kw))) > 0.05:     # a damaged store (not an older size)
                    log.warning("stored thumbnail %s does not match its keypoints' %s", img.shape, self.shape)
                img = cv2.resize(img, (kw, kh), interpolation=cv2.INTER_AREA)
            self._img = img
        return self._img

    def text_blocks(self) -> np.ndarray:
        """``_text_blocks`` of ``img``, computed on first use (a query panel meets many stored ones)."""
        if self._text is None:
            self._text = _text_blocks(self.img)
        return self._text

    def keypoints(self, mirrored: bool = False, equalised: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(points, descriptors) of the image as is or left-right mirrored (in the mirrored
        frame), CLAHE- or (``equalised``, the second keypoint pass) globally equalised; the
        variants other than the plain one are computed on first use, the mirrored ones from the
        unmirrored keypoints (``MIRROR``), not by describing the mirrored image again."""
        if not (mirrored or equalised):
            return self.pts, self.desc
        if (mirrored, equalised) not in self._more:
            if mirrored:
                pts, desc = self.keypoints(False, equalised)
                x = (self.shape[1] - 1.0) - pts[:, 0]
                self._more[True, equalised] = (np.column_stack([x, pts[:, 1]]).astype(np.float32),
                                               np.ascontiguousarray(desc[:, MIRROR]))
            else:
                self._more[False, True] = _describe(self.img, self.dense, True)
        return self._more[mirrored, equalised]


def negated(f: Features, thumb: Callable[[], np.ndarray]) -> Features:
    """The features of a panel's negative from the panel's own keypoints (``INVERT``; both
    keypoint passes), its pixels read through ``thumb()`` (the negative's) when first needed."""
    g = Features(f.shape, f.orig_shape, f.pts, np.ascontiguousarray(f.desc[:, INVERT]), f.dense, _thumb=thumb)
    if (False, True) in f._more:
        pe, de = f._more[False, True]
        g._more[False, True] = (pe, np.ascontiguousarray(de[:, INVERT]))
    return g


@dataclass(frozen=True)
class PanelFacts:
    """What verification asks of a panel besides its keypoints, from its thumbnail: computed once
    at ingest and stored with the keypoints, so that a stored panel's thumbnail is decoded only
    for the pairs that get as far as comparing pixels."""

    hashes: np.ndarray      # ``panel_hashes`` (16, 64) bool; (8, 64) from a KP2 blob (the panel as is only)
    low: bool               # ``low_information``
    line_art: bool          # ``line_art``


def panel_facts(thumb: np.ndarray) -> PanelFacts:
    g = _as_uint8(thumb)
    return PanelFacts(panel_hashes(g), low_information(g), line_art(g))


@lru_cache(maxsize=1)
def _zstd():
    """Zstandard through pyarrow (a dependency already): 3.5x faster to decompress than zlib
    at the same size on packed keypoints (0.07 vs 0.24 ms a panel)."""
    import pyarrow as pa

    return pa.Codec("zstd", compression_level=1)


_KP2_HEAD = 8       # <u4: thumb h, w; keypoint image h, w; n plain, n equalised; facts flags; body bytes


def pack_keypoints(thumb: np.ndarray) -> bytes:
    """What verification needs of a stored panel, packed for the store: the keypoints (CLAHE and
    equalised passes of ``features(thumb)``; 136 bytes a keypoint: 2 float32 + 128 uint8,
    zstd-compressed to ~68 %) and its ``PanelFacts``, all computed once at ingest instead of at
    every query or screen that meets the panel.  Layout: ``KEYPOINTS_MAGIC``, a 32-byte head,
    the 16 ``panel_hashes`` (128 bytes), the compressed keypoints."""
    f = features(thumb)
    pe, de = f.keypoints(equalised=True)
    facts = panel_facts(thumb)
    body = b"".join([f.pts.astype("<f4").tobytes(), _quantise(f.desc).tobytes(),
                     pe.astype("<f4").tobytes(), _quantise(de).tobytes()])
    head = np.array([*f.orig_shape, *f.shape, len(f.pts), len(pe), int(facts.low) | int(facts.line_art) << 1,
                     len(body)], "<u4").tobytes()
    return KEYPOINTS_MAGIC + head + np.packbits(facts.hashes).tobytes() + _zstd().compress(body, asbytes=True)


@dataclass(frozen=True)
class _Packed:
    thumb_shape: tuple[int, int] | None     # None: a KP1 blob (no facts)
    shape: tuple[int, int]                  # the keypoint image's (h, w)
    sets: list[tuple[np.ndarray, np.ndarray]]


def _kp_sets(body: bytes, off: int, counts: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    sets = []
    for n in counts:
        pts = np.frombuffer(body, "<f4", 2 * n, off).reshape(n, 2).astype(np.float32)
        desc = _dequantise(np.frombuffer(body, np.uint8, 128 * n, off + 8 * n).reshape(n, 128))
        sets.append((pts, desc))
        off += 136 * n
    return sets


def packed_facts(blob: bytes | None) -> PanelFacts | None:
    """The ``PanelFacts`` stored in a ``pack_keypoints`` blob (read from its head, nothing
    decompressed; a KP2 blob's hashes are 8 rows, the panel as is), or None (missing, of an
    older version, damaged)."""
    m = len(KEYPOINTS_MAGIC)
    nh = _HASH_BYTES.get(bytes(blob[:m])) if blob else None
    if nh is None or len(blob) < m + 4 * _KP2_HEAD + nh:
        return None
    flags = int(np.frombuffer(blob, "<u4", 1, m + 24)[0])
    hashes = np.unpackbits(np.frombuffer(blob, np.uint8, nh, m + 4 * _KP2_HEAD)).reshape(-1, 64).astype(bool)
    return PanelFacts(hashes, bool(flags & 1), bool(flags & 2))


def _unpacked(blob: bytes | None) -> _Packed | None:
    """A ``pack_keypoints`` blob (or a session 9-13 "KP1" one: zlib, no facts) unpacked, or None
    when it is missing, of another version or damaged."""
    if not blob:
        return None
    m = len(KEYPOINTS_MAGIC)
    try:
        nh = _HASH_BYTES.get(bytes(blob[:m]))
        if nh is not None:
            if len(blob) < m + 4 * _KP2_HEAD + nh:
                return None
            th, tw, h, w, n1, n2, _, size = (int(v) for v in np.frombuffer(blob, "<u4", _KP2_HEAD, m))
            if size != 136 * (n1 + n2):
                return None
            body = _zstd().decompress(blob[m + 4 * _KP2_HEAD + nh:], decompressed_size=size, asbytes=True)
            if len(body) != size:
                return None
            return _Packed((th, tw), (h, w), _kp_sets(body, 0, (n1, n2)))
        if blob[:m] == _KP1_MAGIC:
            body = zlib.decompress(blob[m:])
            if len(body) < 16:
                return None
            h, w, n1, n2 = (int(v) for v in np.frombuffer(body, "<u4", 4))
            if len(body) != 16 + 136 * (n1 + n2):
                return None
            return _Packed(None, (h, w), _kp_sets(body, 16, (n1, n2)))
    except (zlib.error, OSError, ValueError):     # pyarrow raises OSError / ValueError on damaged input
        return None
    return None


def unpack_keypoints(thumb: np.ndarray, blob: bytes | None) -> Features:
    """``features(thumb)`` with the plain and equalised keypoints taken from ``pack_keypoints``'s
    ``blob`` (computed afresh when the blob is missing, of another version or another size)."""
    g = _as_uint8(thumb)
    img = _prep_image(g, PREP)
    p = _unpacked(blob)
    if p is None or p.shape != img.shape or p.thumb_shape not in (None, g.shape):    # computed afresh
        return Features.of(img, g.shape, *_describe(img))
    f = Features.of(img, g.shape, *p.sets[0])
    f._more[False, True] = p.sets[1]
    return f


def stored_features(blob: bytes | None, thumb: Callable[[], np.ndarray]) -> Features | None:
    """The features of a stored panel from its ``pack_keypoints`` blob alone, its pixels read
    through ``thumb()`` only when first needed; None when the blob cannot say (then
    ``unpack_keypoints``)."""
    p = _unpacked(blob)
    if p is None or p.thumb_shape is None:
        return None
    f = Features(p.shape, p.thumb_shape, *p.sets[0], _thumb=thumb)
    f._more[False, True] = p.sets[1]
    return f


def attach_evidence(res) -> None:
    """Give each panel of an extracted document (``DocResult``) that lacks them its store
    thumbnail (PNG, ``thumbnail``) and its packed keypoints (``pack_keypoints``).  Run by the
    extraction workers, in parallel, so that ingest stores them at no cost to the main process.
    A panel whose evidence cannot be made keeps what could be (a document is never lost to it):
    without keypoints, verification computes them; without a thumbnail, its pairs are reported
    "not verified"."""
    for p in res.panels:
        if p.thumb and p.keypoints:
            continue
        try:
            th = thumbnail(p.pixels)
            p.thumb = p.thumb or cv2.imencode(".png", th)[1].tobytes()
            p.keypoints = p.keypoints or pack_keypoints(th)
        except Exception as exc:      # an OpenCV error or memory limit on one odd panel
            log.warning("no stored evidence for panel %s of %s (%s: %s)", p.panel_id, res.path,
                        type(exc).__name__, exc)


def _as_uint8(grey: np.ndarray) -> np.ndarray:
    g = np.asarray(grey)
    if g.dtype != np.uint8:
        g = np.clip(g.astype(np.float32) * (255.0 if g.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(g)


def features(grey: np.ndarray, side: int = PREP, dense: bool = False) -> Features:
    """Resize to ``side`` px on the longer side (small panels enlarged up to 3x) and describe.

    ``dense`` (for copy-move, 2 x ``PREP``): a much lower contrast threshold, up to 3000 points.
    """
    g = _as_uint8(grey)
    img = _prep_image(g, side)
    pts, desc = _describe(img, dense)
    return Features.of(img, g.shape, pts, desc, dense)


def _prep_image(grey: np.ndarray, side: int) -> np.ndarray:
    """The panel at ``long_side`` px on the longer side (small panels enlarged up to 3x), uint8."""
    g = _as_uint8(grey)
    h, w = g.shape
    s = min(3.0, long_side(h, w, side) / max(h, w))
    size = (max(8, int(round(w * s))), max(8, int(round(h * s))))
    return cv2.resize(g, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)


def copy_move_features(grey: np.ndarray) -> Features:
    """Dense keypoints at twice the verification size, as ``copy_move`` needs."""
    return features(grey, 2 * PREP, dense=True)


def _ratio_matches(da: np.ndarray, db: np.ndarray, ratio: float = 0.85, skip_self: bool = False):
    """Lowe's ratio test: (i, j) where b's descriptor j is a's descriptor i's nearest neighbour
    (L2) and nearer than ``ratio`` times the second nearest.  ``skip_self`` (a panel matched
    against itself): a descriptor is never its own neighbour.

    Brute force as one matrix product: RootSIFT descriptors have unit length, so the squared L2
    distance is 2 - 2 a.b and the nearest neighbours are the largest dot products.  The same
    matches as OpenCV's BFMatcher.knnMatch (tested), 5x faster here, and numpy releases the GIL
    for the threads."""
    k = 3 if skip_self else 2
    if len(da) < k or len(db) < k:
        return np.zeros((0, 2), np.int64)
    s = da @ db.T
    if skip_self:
        np.fill_diagonal(s, -np.inf)
    rows = np.arange(len(da))
    j1 = s.argmax(1)
    first = s[rows, j1].copy()
    s[rows, j1] = -np.inf
    second = s.max(1)
    ok = np.maximum(2.0 - 2.0 * first, 0.0) < ratio * ratio * np.maximum(2.0 - 2.0 * second, 0.0)
    return np.column_stack([rows[ok], j1[ok]]).astype(np.int64)


def _singular_values(M: np.ndarray) -> tuple[float, float]:
    """The two singular values of a 2 x 2 matrix, larger first (closed form: this runs for
    every RANSAC hypothesis kept, where numpy's general SVD costs more than the answer)."""
    (p, q), (r, t) = M[0, :2], M[1, :2]
    e, f, g, h = (p + t) / 2, (p - t) / 2, (r + q) / 2, (r - q) / 2
    big, small = math.hypot(e, h), math.hypot(f, g)
    return big + small, abs(big - small)


def _plausible(A: np.ndarray) -> bool:
    s0, s1 = _singular_values(A)
    return bool(s1 > 0.15 and s0 < 6.0 and s0 / max(s1, 1e-9) < 2.5)


def _ransac(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    if len(src) < 4:
        return None, np.zeros(len(src), bool)
    A, inl = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0,
                                  maxIters=2000, confidence=0.995, refineIters=10)
    if A is None or not _plausible(A):
        return None, np.zeros(len(src), bool)
    return A, inl.ravel().astype(bool)


def _h(A: np.ndarray) -> np.ndarray:
    return np.vstack([A, [0.0, 0.0, 1.0]])


def _rank_ncc(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation of two equally long uint8 samples (ties share their mean rank),
    robust to any monotone tone curve.  Ranks come from the 256-bin histogram: no sort."""
    if len(x) < 50:
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        h = np.bincount(v, minlength=256).astype(np.float64)
        mid = np.cumsum(h) - (h + 1) / 2           # mean 0-based rank of each grey level
        r = mid[v]
        return r - r.mean()

    rx, ry = ranks(np.asarray(x, np.uint8)), ranks(np.asarray(y, np.uint8))
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def _band(img: np.ndarray) -> np.ndarray:
    """Fine detail (difference of Gaussians, sigma 0.8 - 2.5 px): the grain of the image, which a
    copy shares and a look-alike (another lane, another field of the same sample) does not."""
    f = img.astype(np.float32)
    return cv2.GaussianBlur(f, (0, 0), 0.8) - cv2.GaussianBlur(f, (0, 0), 2.5)


def _equalise(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Map grey levels through their cumulative histogram inside ``mask`` (so any monotone tone
    change, e.g. gamma or histogram equalisation, gives the same result)."""
    h = np.bincount(img[mask > 0].ravel(), minlength=256).astype(np.float64)
    lut = (np.cumsum(h) - h / 2) / max(h.sum(), 1.0) * 255.0
    return lut.astype(np.float32)[img]


BLOCK = 16


def _blocks(a: np.ndarray) -> np.ndarray:
    """The whole BLOCK x BLOCK blocks of ``a`` (rows, then columns), one row of BLOCK^2 values each;
    reshape to (a.shape[0] // BLOCK, a.shape[1] // BLOCK, -1) for the grid."""
    gh, gw = a.shape[0] // BLOCK, a.shape[1] // BLOCK
    return a[:gh * BLOCK, :gw * BLOCK].reshape(gh, BLOCK, gw, BLOCK).swapaxes(1, 2).reshape(-1, BLOCK * BLOCK)


DETAIL_FLOOR = 0.1   # fine-detail energy (mean square of the band in a block, grey levels^2) a block
#                      needs in both panels to be compared: JPEG flattens a dark, smooth background to
#                      less, and there the correlation is of compression noise (docs/VERIFICATION.md)


def _detailed(bx: np.ndarray, by: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per BLOCK x BLOCK block of two band-passed panels (``bx``, ``by``: their ``_blocks``):
    wholly inside ``mask`` and carrying fine detail (``DETAIL_FLOOR``) in both."""
    inside = _blocks(mask.astype(np.float32)).mean(1) >= 0.99
    return inside & (bx.var(1) >= DETAIL_FLOOR) & (by.var(1) >= DETAIL_FLOOR)


def _block_corr(bx: np.ndarray, by: np.ndarray) -> float:
    """Median over the given blocks (rows of ``_blocks``, those ``_detailed`` selects) of the
    correlation of x and y.

    A median over blocks, not one correlation over the overlap: a copy agrees everywhere, while
    two different blots that carry the same printed lane labels agree only where the text is
    (a global correlation is dominated by the text's strong edges).  Blocks without fine detail
    are left out: a copy stored twice as JPEG shares no grain there, and a look-alike shares none
    anywhere, so they would only pull a copy's median towards a look-alike's."""
    if len(bx) < 2:
        return float("nan")
    bx, by = bx.astype(np.float64), by.astype(np.float64)
    bx -= bx.mean(1, keepdims=True)
    by -= by.mean(1, keepdims=True)
    den = np.sqrt((bx * bx).sum(1) * (by * by).sum(1))
    ok = den > 1e-6
    if ok.sum() < 2:
        return float("nan")
    return float(np.median((bx * by).sum(1)[ok] / den[ok]))


TEXT_CONTRAST = 80      # a printed-text block: grey-level spread (5th-95th percentile) at least this,
TEXT_TWO_TONE = 0.8     # ... this share of its pixels near its darkest or its lightest tone,
TEXT_CROSSINGS = 0.5    # ... and ink / paper changes along its rows and along its columns (per line)


def _text_blocks(img: np.ndarray) -> np.ndarray:
    """Per BLOCK x BLOCK block (as ``_blocks`` tiles), whether it looks like printed text or
    line art: high contrast, two-tone (ink and paper, few tones between), and strokes crossed
    both along rows and along columns - unlike the grain and gradients of a photograph or a
    micrograph, and unlike a blot's band, which a row inside it never crosses."""
    gh, gw = img.shape[0] // BLOCK, img.shape[1] // BLOCK
    u = _blocks(np.asarray(img, np.uint8)).reshape(gh, gw, BLOCK * BLOCK)     # (reshape copies: contiguous)
    ranked = np.sort(u, axis=2, kind="stable").astype(np.float32)     # a radix sort for 8-bit values

    def percentile(q: float) -> np.ndarray:        # as np.percentile's default (linear) method
        pos = q / 100 * (BLOCK * BLOCK - 1)
        i, frac = int(pos), pos - int(pos)
        return (ranked[..., i] + frac * (ranked[..., i + 1] - ranked[..., i]))[..., None]

    lo, hi = percentile(5), percentile(95)
    b = u.astype(np.float32)
    near = 0.2 * (hi - lo)
    two_tone = ((b - lo <= near) | (hi - b <= near)).mean(2)
    ink = (b > (lo + hi) / 2).reshape(gh, gw, BLOCK, BLOCK)
    rows = (ink[..., :, 1:] != ink[..., :, :-1]).sum(3).mean(2)       # changes along each row
    cols = (ink[..., 1:, :] != ink[..., :-1, :]).sum(2).mean(2)       # ... along each column
    return ((hi - lo)[..., 0] >= TEXT_CONTRAST) & (two_tone >= TEXT_TWO_TONE) & \
        (rows >= TEXT_CROSSINGS) & (cols >= TEXT_CROSSINGS)


def _shared_text(text_a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel mask of the blocks where both registered panels show text-like content (``text_a``:
    ``_text_blocks`` of the first; ``b``: the second, registered onto it), grown by one block
    (the band-pass filter spreads strong edges into the next block).  Two different blots of one
    study printed with the same lane labels agree there and nowhere else, so the detail
    correlations leave these blocks out."""
    shared = (text_a & _text_blocks(b)).astype(np.uint8)
    shared = cv2.dilate(shared, np.ones((3, 3), np.uint8)) > 0
    out = np.zeros(b.shape, bool)
    out[:shared.shape[0] * BLOCK, :shared.shape[1] * BLOCK] = np.kron(shared, np.ones((BLOCK, BLOCK), bool))
    return out


def _poly_area(p: np.ndarray) -> float:
    return float(cv2.contourArea(p.astype(np.float32))) if len(p) >= 3 else 0.0


def _rect(h: int, w: int) -> np.ndarray:
    return np.float32([[0, 0], [w, 0], [w, h], [0, h]])


@dataclass(frozen=True)
class Match:
    """Keypoint verification of panel b against panel a (coordinates normalised to 0..1)."""

    inliers: int
    aligned_ncc: float          # rank correlation of the registered overlap (nan: none)
    detail_ncc: float           # correlation of the fine detail (band-pass) of that overlap, tone-equalised
    detail_raw: float           # ... without equalisation (robust to noise in dark backgrounds)
    flip: bool                  # b is mirrored relative to a
    rotation: float             # degrees, counter-clockwise, of b onto a (after the flip)
    scale: float                # linear scale of b onto a, in original pixels
    tx: float                   # translation of b's origin in a, fraction of a's width
    ty: float                   # ... and of a's height
    overlap_a: list[tuple[float, float]]    # overlap polygon in a (x, y in 0..1)
    overlap_b: list[tuple[float, float]]    # the same region in b
    overlap_frac: float         # overlap area / area of the smaller panel's share (max of both)
    pts_a: np.ndarray           # inlier keypoints in a (normalised), for the evidence picture
    pts_b: np.ndarray           # ... and in b
    pearson: float = float("nan")   # linear correlation of the registered overlap (line art: ``line_art``)
    lane_diff: float | None = None      # two strips' lane profiles apart (``_lane_diff``; None: not both strips)

    @staticmethod
    def none() -> "Match":
        e = np.zeros((0, 2), np.float32)
        return Match(0, float("nan"), float("nan"), float("nan"), False, 0.0, 1.0, 0.0, 0.0, [], [], 0.0, e, e)

    @property
    def orientation(self) -> str:
        """Nearest of the 8 quarter-turn / flip names (as ``Alignment``)."""
        q = int(round(self.rotation / 90.0)) % 4
        if not self.flip:
            return ["identity", "rot90", "rot180", "rot270"][q]
        return ["flip-lr", "transpose", "flip-ud", "anti-transpose"][q]


MIN_INLIERS = 5     # an affine needs 3 points; fewer than 5 inliers say nothing
NEAR_PX = 10.0      # matches this close to the affine are re-fitted by a homography


def _near_affine(H: np.ndarray, h: int, w: int) -> bool:
    """A homography that is a plausible re-photographed / re-projected panel: its affine part is
    plausible and the perspective scale varies by less than 40 % over the panel."""
    if abs(H[2, 2]) < 1e-9:
        return False
    H = H / H[2, 2]
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64)
    d = corners @ H[2]
    return bool(d.min() > 0 and d.max() / d.min() < 1.4 and _plausible(H[:2]))


def _register(src: np.ndarray, dst: np.ndarray, hb: int, wb: int) -> tuple[np.ndarray, np.ndarray] | None:
    """RANSAC affine b -> a, then, when enough matches lie near it, a homography fitted on those
    (perspective-distorted copies register to the pixel); returns (3x3 transform, inlier mask)."""
    A, inl = _ransac(src, dst)
    if A is None:
        return None
    T = _h(A)
    near = np.linalg.norm(cv2.transform(src[None], A)[0] - dst, axis=1) < NEAR_PX
    if near.sum() >= 8:
        H, hin = cv2.findHomography(src[near], dst[near], cv2.RANSAC, 3.0, maxIters=500, confidence=0.995)
        if H is not None and _near_affine(H, hb, wb) and int(hin.sum()) > int(inl.sum()):
            T = H / H[2, 2]
            inl = np.zeros(len(src), bool)
            inl[np.flatnonzero(near)[hin.ravel().astype(bool)]] = True
    return T, inl


def _best_transform(a_sets, b_set, wa: int, hb: int, wb: int):
    """The best RANSAC transform b -> a over a's keypoints as is and mirrored (``a_sets(mirrored)``
    gives them), or None: (inliers, 3x3 transform, mirrored, inlier points in a, in b)."""
    best: tuple[int, np.ndarray, bool, np.ndarray, np.ndarray] | None = None
    pts_b, desc_b = b_set
    for mirrored in (False, True):
        pa, da = a_sets(mirrored)
        m = _ratio_matches(da, desc_b)
        if len(m) < MIN_INLIERS:
            continue
        src, dst = pts_b[m[:, 1]], pa[m[:, 0]]
        if mirrored:        # back to a's own frame: the transform b -> a then includes the flip
            dst = np.column_stack([wa - 1.0 - dst[:, 0], dst[:, 1]]).astype(np.float32)
        reg = _register(src, dst, hb, wb)
        if reg is None:
            continue
        T, inl = reg
        n = int(inl.sum())
        if best is None or n > best[0]:
            best = (n, T, mirrored, dst[inl], src[inl])
    return best if best is not None and best[0] >= MIN_INLIERS else None


REFINE_MIN_NCC = 0.3    # registrations whose overlap correlates at least this well are refined (ECC) ...
REFINE_MAX_DETAIL = 0.8  # ... unless their fine detail already agrees this well
REFINE_ANCHOR_PX = 4.0   # a refinement is kept only if RANSAC's inliers stay this close (median) to it
_ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-3)


def _refine(T: np.ndarray, a: np.ndarray, b: np.ndarray, mask: np.ndarray, pa: np.ndarray,
            pb: np.ndarray) -> np.ndarray | None:
    """The transform b -> a (3x3) refined on the pixels of the overlap (``mask``, in a) by OpenCV's
    ECC (``findTransformECC``: the warp that maximises the correlation of the lightly blurred
    panels), or None when ECC fails or drifts off RANSAC's inliers (``pa`` in a, ``pb`` in b).
    A transform fitted to a few keypoints clustered in one part of the overlap can be a few
    pixels off elsewhere: enough to lose the fine-detail agreement of a true copy."""
    perspective = bool(abs(T[2, 0]) > 1e-12 or abs(T[2, 1]) > 1e-12)
    blur = lambda x: cv2.GaussianBlur(x, (0, 0), 1.0).astype(np.float32)  # noqa: E731
    try:    # the warp maps the template's (b's) pixels to the input's (a's); the mask is a's overlap
        _, W = cv2.findTransformECC(blur(b), blur(a), (T if perspective else T[:2]).astype(np.float32),
                                    cv2.MOTION_HOMOGRAPHY if perspective else cv2.MOTION_AFFINE,
                                    _ECC_CRITERIA, mask, 1)
    except cv2.error:       # no convergence, or a degenerate overlap
        return None
    T2 = W.astype(np.float64) if perspective else _h(W.astype(np.float64))
    if not np.isfinite(T2).all() or abs(T2[2, 2]) < 1e-9:
        return None
    T2 /= T2[2, 2]
    moved = cv2.perspectiveTransform(pb[None].astype(np.float64), T2)[0]
    if float(np.median(np.linalg.norm(moved - pa, axis=1))) > REFINE_ANCHOR_PX:
        return None
    if not (_near_affine(T2, b.shape[0], b.shape[1]) if perspective else _plausible(T2[:2])):
        return None
    return T2


@dataclass(frozen=True)
class _Overlap:
    poly_a: np.ndarray
    poly_b: np.ndarray
    frac: float
    mask: np.ndarray | None     # the eroded overlap in a (uint8), None when too small to measure
    ncc: float = float("nan")
    detail: float = float("nan")
    detail_raw: float = float("nan")
    pearson: float = float("nan")
    lane_diff: float | None = None


def _lane_diff(ea: np.ndarray, eb: np.ndarray, mask: np.ndarray) -> float:
    """Two registered strips' lane profiles apart: at each position along the long axis, the mean
    across the strip's thickness of each tone-equalised panel (``ea``, ``eb``: ``_equalise``d in
    ``mask``); the median over positions of their difference, in grey levels (nan: too few).
    Equalised, a copy's lanes keep their darkness relative to each other whatever its tone curve
    (JPEG, shrinking and gamma: 0-4.2); a different strip of the same lane layout has its bands
    at the same places but of other strengths (1.9-14, 18 of 21 over ``STRIP_LANE_DIFF``).  The
    median, not the mean: a copy with one band edited (the misconduct to find) differs in that
    band only (docs/VERIFICATION.md, "Western-blot strip pairs")."""
    m = mask > 0
    axis = 0 if m.shape[1] >= m.shape[0] else 1     # average across the thickness
    n = m.sum(axis)
    ok = n >= max(1.0, 0.5 * float(n.max()))
    if ok.sum() < 16:
        return float("nan")
    pa = (ea * m).sum(axis)[ok] / n[ok]
    pb = (eb * m).sum(axis)[ok] / n[ok]
    return float(np.median(np.abs(pa - pb)))


def _overlap(fa: Features, fb: Features, T: np.ndarray) -> _Overlap:
    """b's frame mapped into a by T (b -> a), clipped to a, and the registered overlap's
    correlations: rank, fine detail (tone-equalised and raw, shared printed text left out) and
    linear."""
    (ha, wa), (hb, wb) = fa.shape, fb.shape
    rb_in_a = cv2.perspectiveTransform(_rect(hb, wb)[None].astype(np.float64), T)[0]
    area, poly_a = cv2.intersectConvexConvex(_rect(ha, wa), rb_in_a.astype(np.float32))
    poly_a = poly_a.reshape(-1, 2) if poly_a is not None and area > 0 else np.zeros((0, 2), np.float32)
    poly_b = cv2.perspectiveTransform(poly_a[None].astype(np.float64), np.linalg.inv(T))[0] if len(poly_a) else poly_a
    frac = max(_poly_area(poly_a) / (ha * wa), _poly_area(poly_b) / (hb * wb)) if len(poly_a) else 0.0
    if len(poly_a) < 3:
        return _Overlap(poly_a, poly_b, frac, None)
    warped = cv2.warpPerspective(fb.img, T, (wa, ha), flags=cv2.INTER_LINEAR, borderValue=0)
    mask = np.zeros((ha, wa), np.uint8)
    cv2.fillConvexPoly(mask, np.round(poly_a).astype(np.int32), 1)
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8))
    if mask.sum() < 400:
        return _Overlap(poly_a, poly_b, frac, None)
    sa = cv2.GaussianBlur(fa.img, (0, 0), 1.0)[mask > 0]
    sb = cv2.GaussianBlur(warped, (0, 0), 1.0)[mask > 0]
    ncc = _rank_ncc(sa, sb)
    pearson = float(np.corrcoef(sa.astype(np.float64), sb.astype(np.float64))[0, 1]) \
        if sa.std() > 0 and sb.std() > 0 else float("nan")
    detail = detail_raw = float("nan")
    lanes = None
    inner = (cv2.erode(mask, np.ones((9, 9), np.uint8)) > 0) & ~_shared_text(fa.text_blocks(), warped)
    detailed, strips = inner.sum() >= 400, is_strip(fa.shape) and is_strip(fb.shape)
    if detailed or strips:      # both panels tone-equalised, only for the checks that use them
        ea, eb = _equalise(fa.img, mask), _equalise(warped, mask)
    if detailed:
        band_a, band_b = _blocks(_band(fa.img)), _blocks(_band(warped))
        sel = _detailed(band_a, band_b, inner)
        detail_raw = _block_corr(band_a[sel], band_b[sel])
        detail = _block_corr(_blocks(_band(ea))[sel], _blocks(_band(eb))[sel])
    if strips:
        lanes = _lane_diff(ea, eb, mask)
    return _Overlap(poly_a, poly_b, frac, mask, ncc, detail, detail_raw, pearson, lanes)


def match(fa: Features, fb: Features) -> Match:
    """Keypoint + RANSAC verification of b against a (b matched with a as is and mirrored: SIFT
    is not flip-invariant).  The mirrored keypoints are those of the first panel (derived from
    its own, ``MIRROR``), so that a query panel, compared with many stored ones, is mirrored
    once.  When the CLAHE keypoints give no transform, a second pass tries keypoints of the
    globally equalised panels: CLAHE maps the tones of a shifted crop differently (its tiles
    follow the panel), and small overlaps and equalised copies are then found only this way.
    A registration whose overlap correlates (``REFINE_MIN_NCC``) but whose fine detail does not
    (``REFINE_MAX_DETAIL``) is refined on the pixels (``_refine``) and measured again."""
    hb, wb = fb.shape
    ha, wa = fa.shape
    best = _best_transform(fa.keypoints, fb.keypoints(), wa, hb, wb)
    if best is None and not (fa.dense or fb.dense):
        best = _best_transform(lambda m: fa.keypoints(m, equalised=True), fb.keypoints(equalised=True), wa, hb, wb)
    if best is None:
        return Match.none()
    n, A3, mirrored, pa, pb = best
    ov = _overlap(fa, fb, A3)
    if ov.mask is not None and ov.ncc >= REFINE_MIN_NCC and not (max(ov.detail, ov.detail_raw) >= REFINE_MAX_DETAIL):
        T2 = _refine(A3, fa.img, fb.img, ov.mask, pa, pb)
        if T2 is not None:
            ov2 = _overlap(fa, fb, T2)
            if ov2.mask is not None:
                A3, ov = T2, ov2
    poly_a, poly_b, frac = ov.poly_a, ov.poly_b, ov.frac
    ncc, detail, detail_raw, pearson = ov.ncc, ov.detail, ov.detail_raw, ov.pearson
    # transform in original pixels: a_orig <- a_prep <- b_prep <- b_orig (linear part at b's centre)
    sa_ = np.diag([fa.orig_shape[1] / wa, fa.orig_shape[0] / ha, 1.0])
    sb_ = np.diag([wb / fb.orig_shape[1], hb / fb.orig_shape[0], 1.0])
    T = sa_ @ A3 @ sb_
    L = _jacobian(T, fb.orig_shape[1] / 2, fb.orig_shape[0] / 2)
    if mirrored:
        L = L @ np.diag([-1.0, 1.0])
    det = float(np.linalg.det(L))
    rot = math.degrees(math.atan2(-(L[1, 0] - L[0, 1]) / 2, (L[0, 0] + L[1, 1]) / 2)) % 360.0
    norm_a = np.array([wa, ha], np.float64)
    norm_b = np.array([wb, hb], np.float64)
    return Match(
        n, ncc, detail, detail_raw, mirrored, rot, math.sqrt(abs(det)), float(A3[0, 2] / wa), float(A3[1, 2] / ha),
        [tuple(map(float, p)) for p in np.round(poly_a / norm_a, 4)],
        [tuple(map(float, p)) for p in np.round(poly_b / norm_b, 4)],
        float(frac), (pa / norm_a).astype(np.float32), (pb / norm_b).astype(np.float32), pearson, ov.lane_diff)


def _jacobian(T: np.ndarray, x: float, y: float) -> np.ndarray:
    """The 2x2 linear part of the projective map T at (x, y) (T's own for an affine T)."""
    d = T[2, 0] * x + T[2, 1] * y + T[2, 2]
    u = (T[0, 0] * x + T[0, 1] * y + T[0, 2]) / d
    v = (T[1, 0] * x + T[1, 1] * y + T[1, 2]) / d
    return np.array([[T[0, 0] - u * T[2, 0], T[0, 1] - u * T[2, 1]],
                     [T[1, 0] - v * T[2, 0], T[1, 1] - v * T[2, 1]]]) / d


# ---------------------------------------------------------------- copy-move inside one panel

@dataclass(frozen=True)
class CopyMove:
    inliers: int
    aligned_ncc: float
    region_src: list[tuple[float, float]]   # convex hull of the source region (0..1)
    region_dst: list[tuple[float, float]]   # ... and of its copy
    flip: bool


def copy_move(f: Features, min_inliers: int = 10, min_ncc: float = 0.8) -> CopyMove | None:
    """A region of the panel repeated elsewhere in it (cloned cells, repeated bands), or None."""
    h, w = f.shape
    side = max(h, w)
    best: CopyMove | None = None
    for mirrored in (False, True):
        pb, db = f.keypoints(mirrored)
        m = _ratio_matches(f.desc, db, ratio=0.7, skip_self=not mirrored)
        if len(m) < min_inliers:
            continue
        src = pb[m[:, 1]]
        if mirrored:
            src = np.column_stack([w - 1.0 - src[:, 0], src[:, 1]])
        dst = f.pts[m[:, 0]]
        far = np.linalg.norm(src - dst, axis=1) > 0.08 * side
        src, dst = src[far], dst[far]
        # each correspondence appears in both directions: keep one
        keep = (src[:, 0] + 1e-3 * src[:, 1]) < (dst[:, 0] + 1e-3 * dst[:, 1])
        src, dst = src[keep].astype(np.float32), dst[keep].astype(np.float32)
        A, inl = _ransac(src, dst)
        if A is None or inl.sum() < min_inliers:
            continue
        s_in, d_in = src[inl], dst[inl]
        hs, hd = cv2.convexHull(s_in).reshape(-1, 2), cv2.convexHull(d_in).reshape(-1, 2)
        if _poly_area(hs) < 0.005 * h * w:
            continue
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, np.round(hd).astype(np.int32), 1)
        warped = cv2.warpAffine(f.img, A, (w, h), flags=cv2.INTER_LINEAR)
        src_mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(src_mask, np.round(hs).astype(np.int32), 1)
        if (mask & src_mask).sum() > 0.5 * mask.sum():
            continue        # the "copy" overlaps its source: a texture, not a clone
        sel = mask > 0
        ncc = _rank_ncc(cv2.GaussianBlur(f.img, (0, 0), 1.0)[sel], cv2.GaussianBlur(warped, (0, 0), 1.0)[sel])
        if not (ncc >= min_ncc):
            continue
        norm = np.array([w, h], np.float64)
        cm = CopyMove(int(inl.sum()), ncc, [tuple(map(float, p)) for p in np.round(hs / norm, 4)],
                      [tuple(map(float, p)) for p in np.round(hd / norm, 4)], mirrored)
        if best is None or cm.inliers > best.inliers:
            best = cm
    return best


# ---------------------------------------------------------------- calibrated confidence

@lru_cache(maxsize=2)
def confidence_model(kind: str = "panels") -> dict:
    """Coefficients and threshold fitted by ``benchmarks/calibrate.py`` (see docs/VERIFICATION.md);
    ``kind`` "strips": those for a pair of blot strips (``is_strip`` both), fitted by
    ``benchmarks/calibrate_strips.py`` on strip pairs."""
    return json.loads((STRIP_CONFIDENCE_FILE if kind == "strips" else CONFIDENCE_FILE).read_text())


STRIP_ASPECT = 3.0      # a panel at least this many times as long as it is thick is a strip (a blot's band row)


def is_strip(shape: tuple[int, ...]) -> bool:
    """A panel of this (h, w) is a strip: one band row of a western blot, as journals print them."""
    return max(shape[:2]) >= STRIP_ASPECT * min(shape[:2])


def pair_model(fa: "Features", fb: "Features") -> dict:
    """The confidence model of a pair: the strips' when both panels are strips, else the main one."""
    return confidence_model("strips" if is_strip(fa.shape) and is_strip(fb.shape) else "panels")


FEATURES = ["cnn_distance", "log1p_inliers", "aligned_ncc", "thumb_ncc", "aligned_ncc*log1p_inliers",
            "detail_ncc", "detail_raw", "max_detail*log1p_inliers", "phash_similarity"]


def feature_vector(f: float, m: Match, al: Alignment) -> np.ndarray:
    """The confidence model's inputs (``FEATURES``); ``f`` may be nan (CNN distance unknown).
    The detail correlations count only as far as the overlap as a whole agrees (capped at its
    correlation): with blocks without detail left out (``DETAIL_FLOOR``), a small dark panel whose
    only detail is a burned-in letter or scale bar can match another's at 0.98 while the rest of
    the overlap does not agree at all."""
    fcl = min(float(f), 4.0) if np.isfinite(f) else 2.0

    def z(v: float) -> float:
        return float(v) if np.isfinite(v) else 0.0

    ancc = z(m.aligned_ncc)
    d1, d2 = min(z(m.detail_ncc), max(ancc, 0.0)), min(z(m.detail_raw), max(ancc, 0.0))
    li = math.log1p(m.inliers)
    return np.array([fcl, li, ancc, al.ncc, ancc * li, d1, d2, max(d1, d2) * li, al.phash], np.float64)


def confidence(x: np.ndarray, model: dict | None = None) -> np.ndarray:
    """Calibrated probability that a pair is a re-use, from ``feature_vector`` rows."""
    p = model or confidence_model()
    z = np.atleast_2d(x) @ np.asarray(p["coef"]) + p["intercept"]
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class Verdict:
    match: Match
    alignment: Alignment
    confidence: float


def verify(fa: Features, fb: Features, f: float = float("nan"), a_thumb: np.ndarray | None = None,
           b_thumb: np.ndarray | None = None) -> Verdict:
    """Both checks and the calibrated confidence for one pair."""
    m = match(fa, fb)
    al = align_pair(a_thumb if a_thumb is not None else fa.img, b_thumb if b_thumb is not None else fb.img)
    return Verdict(m, al, float(confidence(feature_vector(f, m, al), pair_model(fa, fb))[0]))


# ---------------------------------------------------------------- pair reports

FURNITURE_PT = 3.0      # same image within this many points of the same page place: furniture
MARGIN_PT = (40.0, 60.0)  # furniture starts this close to the page's left / top edge (header, margin)
ICON_PT = 40.0          # placements smaller than this on both sides are icons, not figures
BADGE_PT = 72.0         # placements smaller than this on the first page of both documents are badges


def in_margin(bbox) -> bool:
    """A placement that starts in the page's left margin or its header band, where publishers put
    logos, cover thumbnails and badges and the article's own figures do not go."""
    return bool(bbox[0] < MARGIN_PT[0] or bbox[1] < MARGIN_PT[1])


def entropy_bits(grey: np.ndarray) -> float:
    """Shannon entropy of the grey-level histogram (bits); logos and frames have little."""
    h = np.bincount(_as_uint8(grey).ravel(), minlength=256).astype(np.float64)
    p = h[h > 0] / h.sum()
    return float(-(p * np.log2(p)).sum())


def low_information(grey: np.ndarray) -> bool:
    """A blank (no structure above the noise: under 1.5 grey levels of spread once blurred) or a
    graphic of a few flat, contrasting tones (logo, icon, frame: grey-level entropy under 1.5
    bits with a spread of 12 levels or more).  A dim micrograph (a black background and faint
    cells: low entropy *and* low spread) is neither: the older rule, entropy under 1.5 bits or
    spread under 3 levels, called 9 of the 663 DSB2018 micrographs low-information and so never
    reported their copies."""
    g = _as_uint8(grey)
    if float(cv2.GaussianBlur(g.astype(np.float32), (0, 0), 2.0).std()) < 1.5:
        return True
    return entropy_bits(g) < 1.5 and float(g.std()) >= 12.0


LINE_ART_SHARE = 0.4     # share of a panel that is flat paper-white for it to count as line art
LINE_ART_MIN_CORR = 0.99  # a line-art pair is a finding only when its registered overlap correlates this well


def line_art(grey: np.ndarray) -> bool:
    """A chart, diagram or drawing rendered on white: at least ``LINE_ART_SHARE`` of the panel is
    light (>= 200) and exactly flat (constant over 3 x 3).  Between two such panels keypoints
    match shared axes, tick labels, templates and text, so they are not evidence of re-use: such
    a pair is a finding only when the registered overlap is the same drawing (linear correlation
    >= ``LINE_ART_MIN_CORR``: rescaled, JPEG-compressed or gamma-changed copies of a real chart
    0.995-1.00; different charts on the same axes up to 0.98).
    Measured on the thumbnails: micrographs and blot scans of every split (909) at most 0.23,
    exactly black backgrounds of fluorescence images not counted; the bar charts and chemical
    structures of clinsci-2014-126-305.pdf 0.45-0.74 (docs/VERIFICATION.md)."""
    g = _as_uint8(grey)
    k = np.ones((3, 3), np.uint8)
    flat = cv2.erode(g, k) == cv2.dilate(g, k)
    return float((flat & (g >= 200)).mean()) >= LINE_ART_SHARE


STRIP_MAX_TILT = 5.0    # degrees off a quarter turn beyond which two strips' keypoints are not evidence ...
STRIP_TILT_DETAIL = 0.8  # ... and their fine detail must agree this well for a finding
STRIP_LANE_DIFF = 6.0   # grey levels: two strips whose lane profiles are further apart are different blots


def strip_tilt(m: Match, shape_a: tuple[int, int], shape_b: tuple[int, int]) -> float | None:
    """Degrees by which the keypoint registration of two strips (panels both at least
    ``STRIP_ASPECT`` long: western-blot band rows) turns one against the other, off the nearest
    quarter turn; None when either panel is not a strip or no keypoints registered them.
    A strip's keypoints lie along one row of look-alike bands, which pins a rotation poorly:
    different strips of one lane layout registered at 5-60 degrees (lanes matched to other
    lanes).  Such a pair is a finding only when its fine detail agrees (``STRIP_TILT_DETAIL``):
    those siblings 0.46-0.74, a strip re-cut from its scan turned 8-12 degrees 0.94-0.99
    (docs/VERIFICATION.md)."""
    if m.inliers < MIN_INLIERS or not (is_strip(shape_a) and is_strip(shape_b)):
        return None
    r = m.rotation % 90.0
    return min(r, 90.0 - r)


def trivial_reason(row, a: np.ndarray | None, b: np.ndarray | None,
                   low: tuple[bool, bool] | None = None) -> str:
    """Why a candidate pair is not a finding (publisher furniture, icon, blank), or "".
    ``low``: ``low_information`` of a and b when already known."""
    if row.same_xref:
        return "same stored image placed twice in the document"
    qb, mb = np.asarray(row.query_bbox, float), np.asarray(row.match_bbox, float)
    q_side, m_side = max(qb[2] - qb[0], qb[3] - qb[1]), max(mb[2] - mb[0], mb[3] - mb[1])   # longer sides, pt
    if row.same_content and not row.same_doc and np.abs(qb - mb).max() <= FURNITURE_PT and in_margin(qb):
        return "publisher furniture: identical image at the same place in the header or margin of both documents"
    if q_side < ICON_PT and m_side < ICON_PT:
        return f"icon-sized placements (< {ICON_PT:.0f} pt on both sides)"
    if getattr(row, "query_page", None) == 1 and getattr(row, "match_page", None) == 1 \
            and q_side < BADGE_PT and m_side < BADGE_PT:
        return (f"front-matter badge or logo (under {BADGE_PT:.0f} pt on the first page of both documents: "
                f"CrossMark, open-access and publisher marks are drawn there at each publisher's size)")
    if low is None:
        low = tuple(px is not None and low_information(px) for px in (a, b))
    if any(low):
        return "low-information graphic (logo, icon or frame)"
    return ""


def _poly_list(p) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in p]


_ROW_FIELDS = ("distance", "same_xref", "same_content", "same_doc", "query_bbox", "match_bbox", "query_page",
               "match_page")


def _key(side: str, row) -> tuple:
    return (getattr(row, f"{side}_sha256"), getattr(row, f"{side}_panel"), getattr(row, f"{side}_panel_id"))


# The confidence a row found through a panel's negative (via "inverted") must reach.  Inverting
# a panel also turns its burned-in letters from light to dark, like those of the panels it is
# compared with, and on a regular texture (a brick wall's other field) such letters plus the
# pattern carried one false row to 0.85 (benchmarks/other_corpus.py, seed 31).  On the validation
# split's inverted copies stored as in PDFs, 0.9 instead of 0.5 keeps 0.83 of them instead of 0.86
# (benchmarks/inverted.py, docs/VERIFICATION.md).
NEGATIVE_MIN_CONFIDENCE = 0.9
# NEGATIVE_RECHECK: a row found through a stored panel's negative is first matched with the
# negative's keypoints derived from the panel's stored ones (``INVERT``: no SIFT run).  Those miss
# a transform that SIFT run on the negative finds in a few copies (CLAHE is not symmetric in
# black and white: 6 of 360 inverted copies of the test split, benchmarks/inverted.py; the 4
# that fell under the bar had a perceptual-hash similarity of 0.83-1.00, which each of 2,000
# negatives judged through a negative had at 0).  So a pair left under the bar with any hash
# similarity (> 0) is matched again with SIFT run on the negative, and kept if that does better.
NEGATIVE_RECHECK_PHASH = 0.0    # hash similarity above which a derived negative's pair is rechecked


def recheck_negative(m: Match, conf: float, thr: float, al: Alignment, f: float,
                     fresh: Callable[[], Features], fb: Features, model: dict | None = None) -> tuple[Match, float]:
    """``NEGATIVE_RECHECK`` for a pair matched with a derived negative's keypoints: when it is
    under ``thr`` and the panels share some hash similarity, the better of ``m`` and a match
    of ``fresh()`` (SIFT run on the negative) against ``fb``, with its confidence."""
    if conf >= thr or not al.phash > NEGATIVE_RECHECK_PHASH:
        return m, conf
    m2 = match(fresh(), fb)
    conf2 = float(confidence(feature_vector(f, m2, al), model)[0])
    return (m2, conf2) if conf2 > conf else (m, conf)


def _side_key(side: str, row, negative: bool) -> tuple:
    """``_key``; the query side of a row found through its negative (via "inverted") is its own
    panel: the negative's pixels, keypoints and facts."""
    k = _key(side, row)
    return k + ("negative",) if negative and side == "query" else k


def negative_grey(grey: np.ndarray) -> np.ndarray:
    """The negative of a panel's greyscale pixels, as uint8 (what a row found through a panel's
    negative compares, and what the HTML report shows for it)."""
    return 255 - _as_uint8(grey)


def _negative_source(px):
    """``negative_grey`` of a panel's pixels, or a function reading them then."""
    if px is None:
        return None
    if callable(px):
        return lambda: _negative_source(px())
    return negative_grey(px)


class _PanelCache:
    """What verification computes once per panel, shared by its pairs and by the threads of one
    ``verify_report`` (two threads computing the same entry at once store equal values).
    ``sources`` maps a panel to its pixels, to a function that reads them, or to None
    (unavailable); a stored panel's ``PanelFacts`` come from its packed keypoints, so its
    thumbnail is decoded only for a pair that compares pixels."""

    def __init__(self, sources: dict[tuple, object], packed: dict[tuple, bytes | None] | None = None,
                 uses: dict[tuple, int] | None = None, negatives: set[tuple] | None = None) -> None:
        self.sources = sources
        self.packed = packed or {}
        self.negatives = negatives or set()     # keys whose packed keypoints are the positive panel's
        self._uses = dict(uses or {})       # pairs left per panel (``done``); absent: kept to the end
        self._lock = threading.Lock()
        self._thumbs: dict[tuple, np.ndarray | None] = {}
        self._features: dict[tuple, Features] = {}
        self._facts: dict[tuple, PanelFacts | None] = {}
        self._low: dict[tuple, bool] = {}
        self._line_art: dict[tuple, bool] = {}
        self._hashes: dict[tuple, np.ndarray] = {}
        self._derived: set[tuple] = set()
        self._fresh: dict[tuple, Features] = {}      # a derived negative's own SIFT (``fresh_features``)
        # negatives with no packed keypoints, derived from their panel's SIFT (a query's panels);
        # a counted one holds on to its panel until it is let go (``done``)
        self._from_panel: set[tuple] = {k for k in self.negatives
                                        if self.packed.get(k) is None and sources.get(k[:-1]) is not None}
        for k in self._from_panel & self._uses.keys():
            self._uses[k[:-1]] = self._uses.get(k[:-1], 0) + 1

    def has_pixels(self, key: tuple) -> bool:
        return self.sources.get(key) is not None

    def done(self, key: tuple) -> None:
        """One of the panel's pairs is verified: after its last one, its pixels and features
        (unpacked descriptors: ~0.4 MB a panel) are let go.  A screen's batch of 8,192 pairs meets
        ~8,000 stored panels once each: kept to the batch's end, they took 3-4 GB a batch."""
        with self._lock:
            if key not in self._uses:
                return
            self._uses[key] -= 1
            if self._uses[key] > 0:
                return
            del self._uses[key]
        for d in (self._features, self._thumbs, self.packed, self.sources):
            d.pop(key, None)
        self._fresh.pop(key, None)
        self._derived.discard(key)
        if key in self._from_panel:     # the negative let go of the panel it was derived from
            self._from_panel.discard(key)
            self.done(key[:-1])

    def thumb(self, key: tuple) -> np.ndarray | None:
        if key not in self._thumbs:
            src = self.sources.get(key)
            px = src() if callable(src) else src
            self._thumbs[key] = None if px is None else thumbnail(_as_uint8(px))
        return self._thumbs[key]

    def features(self, key: tuple) -> Features:
        if key not in self._features:
            blob = self.packed.get(key)
            f = stored_features(blob, lambda: self.thumb(key))
            if key in self.negatives:       # the positive's keypoints, turned into the negative's
                if f is None and key in self._from_panel:
                    # the panel's own SIFT pass only (its equalised pass, when computed, is the
                    # negative's own, so the result never depends on which thread came first)
                    p = self.features(key[:-1])
                    f = Features(p.shape, p.orig_shape, p.pts, p.desc, p.dense)
                if f is not None:
                    f = negated(f, lambda: self.thumb(key))
                    self._derived.add(key)
                blob = None
            self._features[key] = f if f is not None else unpack_keypoints(self.thumb(key), blob)
        return self._features[key]

    def derived(self, key: tuple) -> bool:
        """Whether ``features(key)`` are a negative's derived from the panel's packed keypoints."""
        return key in self._derived

    def fresh_features(self, key: tuple) -> Features:
        """The features of ``key``'s pixels, SIFT run on them (a negative's, not derived)."""
        if key not in self._fresh:
            self._fresh[key] = unpack_keypoints(self.thumb(key), None)
        return self._fresh[key]

    def facts(self, key: tuple) -> PanelFacts | None:
        if key not in self._facts:      # a negative's hashes and facts come from its pixels
            self._facts[key] = None if key in self.negatives else packed_facts(self.packed.get(key))
        return self._facts[key]

    def low(self, key: tuple) -> bool:
        if key not in self._low:
            stored = self.facts(key)
            self._low[key] = stored.low if stored else (self.has_pixels(key) and low_information(self.thumb(key)))
        return self._low[key]

    def line_art(self, key: tuple) -> bool:
        if key not in self._line_art:
            stored = self.facts(key)
            self._line_art[key] = stored.line_art if stored else (self.has_pixels(key) and line_art(self.thumb(key)))
        return self._line_art[key]

    def hashes(self, key: tuple) -> np.ndarray:
        if key not in self._hashes:
            stored = self.facts(key)
            # a KP2 blob lacks the equalised hashes: they come from the pixels
            self._hashes[key] = stored.hashes if stored and len(stored.hashes) >= 16 else panel_hashes(self.thumb(key))
        return self._hashes[key]


def _verify_rows(rows: list[tuple[tuple, tuple, SimpleNamespace]], cache: _PanelCache,
                 threshold: float | None) -> list[dict]:
    """The verification columns of each (query key, match key, row fields) triple; the panels'
    pixels and per-panel work are in ``cache``, which lets a panel go after its last pair."""
    out: list[dict] = []
    for ka, kb, row in rows:
        out.append(_verify_pair(ka, kb, row, cache, threshold))
        cache.done(ka)
        cache.done(kb)
    return out


def _verify_pair(ka: tuple, kb: tuple, row: SimpleNamespace, cache: _PanelCache, threshold: float | None) -> dict:
    """One pair's verification columns; ``threshold`` None: the pair's model's own (``pair_model``)."""
    has = cache.has_pixels(ka), cache.has_pixels(kb)
    reason = trivial_reason(row, None, None, (has[0] and cache.low(ka), has[1] and cache.low(kb)))
    if reason or not all(has):
        return _columns(None, None, float("nan"), not reason, reason or "not verified: pixels unavailable")
    fa, fb = cache.features(ka), cache.features(kb)
    m = match(fa, fb)
    model = pair_model(fa, fb)
    thr = float(threshold if threshold is not None else model["threshold"])
    if ka[-1] == "negative":
        thr = max(thr, NEGATIVE_MIN_CONFIDENCE)
    # the whole-panel correlation (half the cost of a pair) enters the model linearly: when
    # even its best or worst value cannot lift the pair over the threshold, skip it
    ph = phash_similarity(None, None, cache.hashes(ka), cache.hashes(kb))
    bound = max(float(confidence(feature_vector(float(row.distance), m, Alignment(c, "", 1.0, "", ph)), model)[0])
                for c in (-1.0, 1.0))
    derived = cache.derived(ka)         # a negative's keypoints derived: may be rechecked (NEGATIVE_RECHECK)
    if bound < thr and not (derived and ph > NEGATIVE_RECHECK_PHASH):
        return _columns(m, None, bound, False,
                        f"confidence at most {bound:.2f} < {thr:.2f} ({m.inliers} keypoint inliers, overlap "
                        f"correlation {m.aligned_ncc:.2f}, fine-detail correlation {_detail(m):.2f})")
    al = align_pair(cache.thumb(ka), cache.thumb(kb), phash=ph)
    conf = float(confidence(feature_vector(float(row.distance), m, al), model)[0])
    if derived:
        m, conf = recheck_negative(m, conf, thr, al, float(row.distance), lambda: cache.fresh_features(ka), fb, model)
    ok = conf >= thr
    why = "" if ok else (f"confidence {conf:.2f} < {thr:.2f} ({m.inliers} keypoint inliers, "
                         f"overlap correlation {m.aligned_ncc:.2f}, fine-detail correlation {_detail(m):.2f}, "
                         f"whole-panel correlation {al.ncc:.2f})")
    if ok and cache.line_art(ka) and cache.line_art(kb) and not (m.pearson >= LINE_ART_MIN_CORR):
        ok, why = False, (f"line art on both sides (chart, diagram or drawing on white: shared axes, labels and "
                          f"templates match keypoints); registered overlap correlation {m.pearson:.3f} < "
                          f"{LINE_ART_MIN_CORR:.2f}, so not the same drawing")
    tilt = strip_tilt(m, fa.shape, fb.shape) if ok else None
    if tilt is not None and tilt > STRIP_MAX_TILT and not (_detail(m) >= STRIP_TILT_DETAIL):
        ok, why = False, (f"blot strips on both sides registered {tilt:.1f} degrees off level with fine-detail "
                          f"correlation {_detail(m):.2f} < {STRIP_TILT_DETAIL:.1f}: keypoints along one row of "
                          f"look-alike bands matched other lanes, not the same strip")
    if ok and m.lane_diff is not None and m.lane_diff > STRIP_LANE_DIFF:
        ok, why = False, (f"blot strips on both sides whose lanes differ: registered and tone-equalised, their lane "
                          f"profiles are {m.lane_diff:.1f} grey levels apart (median, > {STRIP_LANE_DIFF:.0f}): bands "
                          f"at the same places but of other strengths, another blot of the same lane layout")
    return _columns(m, al, conf, ok, why)


@contextmanager
def single_threaded():
    """OpenCV and BLAS one thread each inside the block (restored after): verification runs
    parallel over pairs, not inside each call (measured 1.2x faster for OpenCV; BLAS's own
    threads on top of ours made the matching 1.8x slower)."""
    from threadpoolctl import threadpool_limits

    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        cv2.setNumThreads(cv_threads)


def _one_thread_each(n: int):
    """``single_threaded`` when ``n`` > 1 worker threads share the pairs; as is otherwise."""
    return single_threaded() if n > 1 else nullcontext()


def verify_report(report, lookup, keep_rejected: bool = False, threshold: float | None = None,
                  progress: bool = False, threads: int | None = None, keypoints=None):
    """Verify every candidate pair of a report; add the verification columns; drop (or keep,
    with ``reject_reason``) what is rejected.

    A row with via "inverted" (the query panel's negative matched the other panel) compares the
    query panel's negative.  ``lookup(side, row)`` returns the pixels (uint8 greyscale, any size) of side "query" or
    "match" of a report row, or None when they are unavailable: such a pair is kept, marked
    "not verified"; or a function returning them, called only if a pair needs the pixels (a
    stored panel whose packed keypoints carry its ``PanelFacts``).  ``keypoints(side, row)``, when given, returns the panel's keypoints stored
    at ingest (``pack_keypoints``) or None.  Features are computed (or unpacked) once per panel;
    pairs are verified by ``threads`` threads (default: one per core; OpenCV and numpy release the GIL).  (Two worker processes
    were tried before threads: slower at 1,200 pairs, since start-up and the features of the
    query panels, needed by both, cost more than the split saves.)
    """
    import pandas as pd
    from tqdm import tqdm

    from ..index.report import VERIFY_FIELDS

    if report.empty:
        return report.assign(**{c: pd.Series(dtype=k) for c, (k, _) in VERIFY_FIELDS.items()})
    sources: dict[tuple, object] = {}
    packed: dict[tuple, bytes | None] = {}
    negatives: set[tuple] = set()
    rows = []
    for row in report.itertuples(index=False):
        neg = getattr(row, "via", None) == "inverted"
        for side in ("query", "match"):
            k = _side_key(side, row, neg)
            if k not in sources:
                px = lookup(side, row)
                packed[k] = keypoints(side, row) if keypoints is not None and px is not None else None
                if neg and side == "query":     # compared as its negative: keypoints of the negative
                    sources[k] = _negative_source(px)
                    negatives.add(k)
                    if packed[k] is None and px is not None and k[:-1] not in sources:
                        sources[k[:-1]], packed[k[:-1]] = px, None    # its keypoints give the negative's
                else:
                    sources[k] = px
        rows.append((_side_key("query", row, neg), _key("match", row),
                     SimpleNamespace(**{f: getattr(row, f, None) for f in _ROW_FIELDS})))
    results: list[dict] = []
    uses: dict[tuple, int] = {}
    for ka, kb, _ in rows:
        uses[ka] = uses.get(ka, 0) + 1
        uses[kb] = uses.get(kb, 0) + 1
    cache = _PanelCache(sources, packed, uses, negatives)
    chunks = [rows[k0:k0 + 64] for k0 in range(0, len(rows), 64)]
    # OpenCV and numpy release the GIL in the heavy calls: threads share the per-panel cache
    n = max(1, threads or os.cpu_count() or 1)
    with tqdm(total=len(rows), desc="verify", unit="pair", disable=not progress) as bar, \
            _one_thread_each(n), ThreadPoolExecutor(n) as pool:
        run = pool.map if n > 1 else map
        for chunk, res in zip(chunks, run(lambda c: _verify_rows(c, cache, threshold), chunks)):
            results += res
            bar.update(len(chunk))
    out = report.copy()
    for c, (kind, _) in VERIFY_FIELDS.items():
        out[c] = pd.Series([r[c] for r in results], index=out.index, dtype=kind)
    if not keep_rejected:
        out = out[out.verified]
    return out.sort_values(["verified", "confidence"], ascending=False, kind="stable").reset_index(drop=True)


def _detail(m: Match) -> float:
    """The larger of the two fine-detail correlations (nan when there was no overlap)."""
    v = [x for x in (m.detail_ncc, m.detail_raw) if np.isfinite(x)]
    return max(v) if v else float("nan")


def _columns(m: Match | None, al: Alignment | None, conf: float, ok: bool, why: str,
             finding: str = "pair") -> dict:
    use_kp = m is not None and m.inliers >= MIN_INLIERS
    vals = {
        "finding": finding, "confidence": conf, "verified": ok, "reject_reason": why,
        "verify_inliers": m.inliers if m else 0,
        "verify_aligned_ncc": m.aligned_ncc if m else float("nan"),
        "verify_detail_ncc": _detail(m) if m else float("nan"),
        "verify_ncc": al.ncc if al else float("nan"),
        "verify_orientation": m.orientation if use_kp else (al.orientation if al else ""),
        "verify_rotation": m.rotation if use_kp else float("nan"),
        "verify_scale": m.scale if use_kp else (al.scale if al else float("nan")),
        "verify_flip": bool(m.flip) if use_kp else False,
        "verify_tx": m.tx if use_kp else float("nan"), "verify_ty": m.ty if use_kp else float("nan"),
        "overlap_frac": m.overlap_frac if use_kp else float("nan"),
        "overlap_query": _poly_list(m.overlap_a) if use_kp else [],
        "overlap_match": _poly_list(m.overlap_b) if use_kp else [],
        "points_query": np.round(m.pts_a, 4).tolist() if use_kp else [],
        "points_match": np.round(m.pts_b, 4).tolist() if use_kp else [],
    }
    return vals


_BATCH_READER: list = []     # a batch worker process's evidence reader (``init_batch_worker``)


def init_batch_worker(reader) -> None:
    """Start a process that verifies batches of screen pairs (``verify_batch``): ``reader`` reads
    their panels' evidence; OpenCV and BLAS run one thread each (the processes share the cores)."""
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    _BATCH_READER[:] = [reader, threadpool_limits(1, user_api="blas")]


def verify_stored(pairs, thumbs: dict, packed: dict, threshold: float | None = None, threads: int | None = None):
    """``verify_report`` of candidate pairs between stored panels, every verdict kept: their
    thumbnails (or decoders) and packed keypoints by panel id (a screen's batches, Ray tasks)."""
    return verify_report(pairs, lambda side, row: thumbs.get(int(getattr(row, f"{side}_panel_id"))),
                         keep_rejected=True, threshold=threshold, threads=threads,
                         keypoints=lambda side, row: packed.get(int(getattr(row, f"{side}_panel_id"))))


def verify_batch(pairs, reader=None, threads: int | None = None):
    """``verify_stored`` of a batch of a screen's candidate pairs: ``reader(panel ids, lazy=True)``
    gives their (thumbnail decoders, packed keypoints) by panel id (``Store.evidence_reader``;
    this worker's own when None)."""
    read = reader if reader is not None else _BATCH_READER[0]
    thumbs, packed = read(np.union1d(pairs.query_panel_id, pairs.match_panel_id), lazy=True)
    return verify_stored(pairs, thumbs, packed, threads=threads)


def find_copy_moves(pixels: dict, progress: bool = False, threads: int | None = None) -> list[tuple[object, CopyMove]]:
    """Copy-move inside single panels: ``pixels`` maps a key to a panel's pixels; returns
    (key, CopyMove) for each panel with a duplicated region, in ``pixels`` order (panels are
    searched by ``threads`` threads, default one per core).  Low-information panels and line art
    (``line_art``) are not searched."""
    from tqdm import tqdm

    def one(item):
        key, px = item
        if px is None or low_information(px):
            return None
        thumb = thumbnail(_as_uint8(px))
        if line_art(thumb):     # repeated glyphs, ticks, bars and legend marks are drawn, not cloned
            return None
        return copy_move(copy_move_features(thumb))

    items = list(pixels.items())
    n = max(1, threads or os.cpu_count() or 1)
    found = []
    with tqdm(total=len(items), desc="copy-move", unit="panel", disable=not progress) as bar, \
            _one_thread_each(n), ThreadPoolExecutor(n) as pool:
        for (key, _), cm in zip(items, (pool.map if n > 1 else map)(one, items)):
            if cm is not None:
                found.append((key, cm))
            bar.update(1)
    return found
