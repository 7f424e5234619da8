"""The public embedding API: ``load_model()`` -> ``Embedder`` with ``embed`` and ``score``.

A panel of any size and aspect ratio becomes the network input by (1) conversion to greyscale
(alpha flattened on white, 16-bit stretched by percentiles), (2) an area-averaging resize of the
*whole* panel to S x S, ignoring its aspect ratio, and (3) per-image standardisation.  Squashing
rather than centre-cropping keeps every pixel of the panel in view, and makes a copy that was
re-scaled or stretched in one direction land on the same input; docs/MODEL.md measures it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from safetensors.torch import load_file

from ..hashing import sha256_file
from .data import to_grey
from .net import build, standardise

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).with_name("weights")
DEFAULT_WEIGHTS = "imgdup-default"


class WeightsError(RuntimeError):
    """Missing, altered or incompatible weights."""


@dataclass
class WeightsCard:
    """What a reviewer needs to know about a shipped model."""

    name: str
    architecture: str
    input_size: int
    normalisation: str
    embedding_dim: int
    threshold: float
    recipe: dict[str, Any]
    data: str
    steps: int
    seed: int
    metrics: dict[str, Any]
    sha256: str
    file: str
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, path: str | Path) -> "WeightsCard":
        return cls(**json.loads(Path(path).read_text()))


def prepare(image: Any, size: int) -> np.ndarray:
    """One panel (2-D array of any dtype, RGB/RGBA array or PIL image) -> (size, size) float32."""
    grey = to_grey(image)
    if grey.ndim != 2 or min(grey.shape) < 1:
        raise ValueError(f"expected a 2-D image, got shape {grey.shape}")
    h, w = grey.shape
    interp = cv2.INTER_AREA if (h >= size and w >= size) else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(grey, dtype=np.float32), (size, size), interpolation=interp)


# Views embedded beside each whole panel ("tiles"), searched by the sub-region index, in this
# order: for partial re-use (a crop, a shifted field of view) the four corners and the centre at
# 60 % of the panel's width and height; the whole panel histogram-equalised, for tone changes the
# CNN does not absorb (equalisation, pasted text, gamma with a flip: benchmarks/retrieval.py);
# then the four corners and the centre at 75 %, which a crop keeping half of a stored panel
# resembles (its side is 71 % of the panel's) more than any 60 % view (docs/BENCHMARKS.md,
# retrieval).  Stores written before keep their first 5 or 6 views and still work.
TILE_VIEWS = ((0.6, ((0.0, 0.0), (0.4, 0.0), (0.0, 0.4), (0.4, 0.4), (0.2, 0.2))),          # (side, origins x, y)
              (0.75, ((0.0, 0.0), (0.25, 0.0), (0.0, 0.25), (0.25, 0.25), (0.125, 0.125))))
N_TILES = sum(len(origins) for _, origins in TILE_VIEWS) + 1
# The views a query panel searches with (the first ones): the 75 % views are only searched for.
# A query's own 75 % views would find little more (a crop is found through the stored panel's
# views) but cost as much search again.
QUERY_VIEWS = len(TILE_VIEWS[0][1]) + 1


def equalised(image: Any) -> np.ndarray:
    """The panel in greyscale with its histogram equalised (uint8): any monotone change of its
    grey levels (gamma, contrast stretch, equalisation itself) gives nearly the same image."""
    grey = np.round(to_grey(image) * 255.0).astype(np.uint8)
    return cv2.equalizeHist(np.ascontiguousarray(grey))


def negative(image: Any) -> np.ndarray:
    """The panel's negative in greyscale, float32 in [0, 1]: a copy shown inverted (a blot's dark
    bands turned light, a fluorescence field shown as dark on light) looks like the negative of
    its source, which the CNN was never trained to match."""
    return 1.0 - to_grey(image)


def sub_views(image: np.ndarray, side: float, origins) -> list[np.ndarray]:
    """Sub-regions of ``side`` x the panel's width and height at ``origins`` ((x, y) fractions)."""
    h, w = image.shape[:2]
    th, tw = max(1, int(h * side)), max(1, int(w * side))
    return [image[int(y * h):int(y * h) + th, int(x * w):int(x * w) + tw] for x, y in origins]


def tiles(image: np.ndarray) -> list[np.ndarray]:
    """The ``N_TILES`` views of a panel (``TILE_VIEWS``): its 60 % sub-regions, the whole panel
    ``equalised``, then its 75 % sub-regions."""
    (s0, o0), (s1, o1) = TILE_VIEWS
    return sub_views(image, s0, o0) + [equalised(image)] + sub_views(image, s1, o1)


PRECISIONS = ("fp32", "amp")


class Embedder:
    """A loaded model: batched, deterministic embeddings already scaled by alpha."""

    def __init__(self, net: torch.nn.Module, card: WeightsCard, device: str | torch.device = "auto",
                 batch_size: int = 256, source: str = "", precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
        self.source = source        # the weights file, when known (Ray actors load the same one)
        self.precision = precision
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("CUDA was asked for, but this PyTorch has no usable CUDA device "
                             "(torch.cuda.is_available() is False): install a CUDA build of torch "
                             "(see README) or use --device cpu")
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)
        self.card = card
        self.size = card.input_size
        self.threshold = card.threshold
        self.batch_size = batch_size

    @property
    def sha256(self) -> str:
        return self.card.sha256

    @torch.inference_mode()
    def embed_prepared(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S) float32 inputs -> (N, 128) alpha-scaled embeddings."""
        out = []
        for i in range(0, len(batch), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(batch[i:i + self.batch_size])).to(self.device)
            x = standardise(x.unsqueeze(1)).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16,
                                enabled=self.precision == "amp"):
                y = self.net(x)
            out.append(y.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.net.fc2.out_features), np.float32)
        return np.concatenate(out).astype(np.float32)

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        """Embed a list of panels (2-D numpy arrays, uint8 or float, or PIL images).

        Returns an (N, 128) float32 array scaled by alpha: ``np.abs(a - b).sum()`` is f.
        """
        if len(images) == 0:
            return np.zeros((0, self.net.fc2.out_features), np.float32)
        prepared = np.stack([prepare(im, self.size) for im in images])
        return self.embed_prepared(prepared)

    def embed_tiles(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, N_TILES, 128) embeddings of each panel's views (``tiles``: sub-regions, equalised)."""
        dim = self.net.fc2.out_features
        if len(images) == 0:
            return np.zeros((0, N_TILES, dim), np.float32)
        flat = self.embed([t for im in images for t in tiles(np.asarray(im))])
        return flat.reshape(len(images), N_TILES, dim)

    def embed_negatives(self, images: Sequence[Any]) -> np.ndarray:
        """(N, 128) embeddings of the panels' negatives (``negative``): searched against the
        stored panels, they find copies shown inverted."""
        return self.embed([negative(im) for im in images])

    def score(self, img_a: Any, img_b: Any) -> tuple[float, float]:
        """(f, sigmoid(1 - f)) for two panels; f <= 1 means "same"."""
        e = self.embed([img_a, img_b])
        f = float(np.abs(e[0] - e[1]).sum())
        return f, 1.0 / (1.0 + math.exp(f - 1.0))


def load_model(name: str | Path = DEFAULT_WEIGHTS, device: str = "auto", batch_size: int = 256,
               precision: str = "fp32") -> Embedder:
    """Load shipped weights by name (or a path to a .safetensors file with its .json card).

    ``precision="amp"``: mixed precision (float16 on CUDA, bfloat16 on CPU) for the network's
    layers; f then differs from fp32 by a measured tolerance (docs/MODEL.md, benchmarks/precision.py).

    The file's sha256 is checked against its card; nothing is ever downloaded.
    """
    path = Path(name)
    if path.suffix != ".safetensors":
        path = WEIGHTS_DIR / f"{name}.safetensors"
    card_path = path.with_suffix(".json")
    if not path.exists() or not card_path.exists():
        raise WeightsError(f"weights not found: {path} (and its card {card_path.name}); "
                           "imgdup never downloads weights: reinstall the package or pass a path")
    card = WeightsCard.read(card_path)
    digest = sha256_file(path)
    if digest != card.sha256:
        raise WeightsError(f"checksum mismatch for {path}: file {digest[:12]}..., card "
                           f"{card.sha256[:12]}...; the weights were altered or truncated")
    net = build(card.architecture)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{path} does not fit architecture {card.architecture!r}: "
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return Embedder(net, card, device=device, batch_size=batch_size, source=str(path), precision=precision)
