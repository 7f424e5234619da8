"""Training images: loading, grouping by experiment, group-level splits and window sampling.

Splits are made by image *group* (a proxy for "the same experiment": image size + modality for
the micrographs, the file-name prefix for blots), never by patch, so that held-out numbers are
measured on experiments the model has never seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass
class TrainImage:
    name: str
    group: str
    pixels: np.ndarray  # float32 greyscale in [0, 1]


@dataclass
class ImageSet:
    images: list[TrainImage] = field(default_factory=list)

    def by_group(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, im in enumerate(self.images):
            out.setdefault(im.group, []).append(i)
        return out


def to_grey(img: Image.Image | np.ndarray) -> np.ndarray:
    """Any PIL image or array -> float32 greyscale in [0, 1] (alpha flattened on white;
    16-bit scans stretched between their 0.5 and 99.5 percentiles to tame hot pixels)."""
    if isinstance(img, np.ndarray):
        a = img
        if a.ndim == 3:
            if a.shape[2] == 4:
                alpha = a[..., 3:4].astype(np.float32) / 255.0
                a = a[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)
            a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            return np.clip(a / 255.0, 0, 1).astype(np.float32)
        if a.dtype == np.uint8:
            return a.astype(np.float32) / 255.0
        if a.dtype == np.uint16 or a.max() > 1.0:
            lo, hi = np.percentile(a, [0.5, 99.5])
            return np.clip((a.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
        return a.astype(np.float32)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_grey(np.asarray(img).astype(np.float32))
    if img.mode in ("RGBA", "LA", "P", "PA"):
        rgba = img.convert("RGBA")
        return to_grey(np.asarray(rgba))
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def group_key(path: Path, pixels_shape: tuple[int, int], rgb: np.ndarray | None, rule: str) -> str:
    """The experiment proxy used for splitting."""
    if rule == "prefix":
        return "_".join(path.stem.split("_")[:2])
    h, w = pixels_shape
    modality = "grey"
    if rgb is not None and rgb.ndim == 3:
        c = rgb[..., :3].astype(np.int16)
        if np.abs(c[..., 0] - c[..., 1]).mean() > 5:
            modality = "colour"
    return f"{w}x{h}-{modality}"


def load_folder(folder: str | Path, rule: str = "size", max_side: int = 1400) -> ImageSet:
    """Load every image of a folder as greyscale, with its group key."""
    out = ImageSet()
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        img = Image.open(path)
        rgb = np.asarray(img) if img.mode in ("RGB", "RGBA") else None
        grey = to_grey(img)
        group = f"{Path(folder).name}/{group_key(path, grey.shape, rgb, rule)}"
        scale = max_side / max(grey.shape)
        if scale < 1:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        out.images.append(TrainImage(path.name, group, grey))
    log.info("loaded %d images from %s", len(out.images), folder)
    return out


def split_groups(groups: list[str], fixed: dict[str, list[str]] | None = None,
                 fractions: tuple[float, float] = (0.1, 0.1)) -> dict[str, str]:
    """Assign each group to train / val / test: from ``fixed`` lists where given, else by a hash."""
    fixed = fixed or {}
    out = {}
    for g in groups:
        for split, members in fixed.items():
            if g in members:
                out[g] = split
                break
        else:
            h = int(hashlib.sha256(g.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            out[g] = "test" if h < fractions[1] else "val" if h < sum(fractions) else "train"
    return out


def load_split_file(path: str | Path) -> dict[str, list[str]]:
    return json.loads(Path(path).read_text())["splits"]


class WindowSampler:
    """Random 2S x 2S windows and hard-negative partners from a set of images."""

    def __init__(self, images: list[TrainImage], window: int, seed: int = 0,
                 min_std: float = 0.02, hard: bool = True) -> None:
        self.images = images
        self.hard = hard
        self.window = window
        self.rng = np.random.default_rng(seed)
        self.min_std = min_std
        self.groups: dict[str, list[int]] = {}
        for i, im in enumerate(images):
            self.groups.setdefault(im.group, []).append(i)

    def _cut(self, i: int, side: int, y: int, x: int) -> np.ndarray:
        a = self.images[i].pixels[y:y + side, x:x + side]
        interp = cv2.INTER_AREA if side > self.window else cv2.INTER_LINEAR
        return cv2.resize(a, (self.window, self.window), interpolation=interp)

    def _place(self, i: int) -> tuple[int, int, int]:
        h, w = self.images[i].pixels.shape
        m = min(h, w)
        lo = min(self.window, m)
        side = int(self.rng.integers(lo, max(lo, min(m, 3 * self.window)) + 1))
        return side, int(self.rng.integers(0, h - side + 1)), int(self.rng.integers(0, w - side + 1))

    def window_at(self, i: int) -> tuple[np.ndarray, tuple[int, int, int]]:
        """A random window of image i that is not blank (a few tries)."""
        for _ in range(6):
            place = self._place(i)
            win = self._cut(i, *place)
            if win.std() >= self.min_std:
                break
        return win, place

    def neighbour(self, i: int, place: tuple[int, int, int]) -> np.ndarray | None:
        """A window of the same size in image i that does not overlap ``place``."""
        side, y, x = place
        h, w = self.images[i].pixels.shape
        options = []
        for yy in range(0, h - side + 1, max(1, side // 4)):
            for xx in range(0, w - side + 1, max(1, side // 4)):
                if abs(yy - y) >= side or abs(xx - x) >= side:
                    options.append((yy, xx))
        if not options:
            return None
        yy, xx = options[int(self.rng.integers(len(options)))]
        return self._cut(i, side, yy, xx)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Anchors, hard-negative partners, anchor image ids, partners' source image ids.

        Partners: a third neighbouring crops of the same image, a third other images of the
        same group (other fields of view of one experiment), a third random images.
        """
        anchors, partners, a_ids, p_ids = [], [], [], []
        for _ in range(n):
            i = int(self.rng.integers(len(self.images)))
            win, place = self.window_at(i)
            kind = self.rng.integers(3) if self.hard else 2
            other = None
            j = -1
            if kind == 0:
                other = self.neighbour(i, place)
                j = i  # same image, disjoint region
            if other is None and kind <= 1:
                mates = [k for k in self.groups[self.images[i].group] if k != i]
                if mates:
                    j = mates[int(self.rng.integers(len(mates)))]
                    other, _ = self.window_at(j)
            if other is None:
                j = i
                while j == i:
                    j = int(self.rng.integers(len(self.images)))
                other, _ = self.window_at(j)
            anchors.append(win)
            partners.append(other)
            a_ids.append(i)
            p_ids.append(j)
        return (np.stack(anchors)[:, None].astype(np.float32, copy=False),
                np.stack(partners)[:, None].astype(np.float32, copy=False),
                np.array(a_ids), np.array(p_ids))
