"""Batched, seeded image deformations: the paper's recipe plus JPEG, blur, noise and tone curves.

Every operation works on a whole batch (N, 1, H, W) of float images on the training device, with
its random parameters drawn first (so that a test can replay them on one image at a time with a
plain NumPy / OpenCV implementation).  The geometric part (flips, 90-degree rotations,
perspective, similarity, centre crop) is folded into one homography per image and applied with a
single ``grid_sample`` call.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------- geometry

_D4 = torch.tensor([
    [[1, 0], [0, 1]], [[-1, 0], [0, 1]], [[1, 0], [0, -1]], [[-1, 0], [0, -1]],
    [[0, 1], [1, 0]], [[0, -1], [1, 0]], [[0, 1], [-1, 0]], [[0, -1], [-1, 0]],
], dtype=torch.float32)  # the 8 flips / quarter turns of the square, as 2x2 maps


@dataclass
class DeformConfig:
    """Probabilities and ranges; defaults follow the reference recipe (REFERENCE.md section 2).

    Pixel amounts of the reference (a 256-px window) are stored as fractions of the window side.
    """

    p_any: float = 0.9
    p_reflect: float = 0.5
    p_rot90: float = 0.5            # our addition: quarter turns are common in real re-use
    p_perspective: float = 0.5
    perspective: float = 20 / 256
    p_similarity: float = 0.5
    rotation_deg: float = 45.0
    scale: tuple[float, float] = (0.5, 1.5)
    translation: float = 20 / 256
    p_jpeg: float = 0.5
    jpeg_quality: tuple[int, int] = (10, 50)
    p_gamma: float = 0.5
    gamma: tuple[float, float] = (0.5, 2.0)
    p_tone: float = 0.2             # our addition: random monotone curve (equalisation, levels)
    p_erase: float = 0.5
    p_brighten: float = 0.5
    disc_radius: tuple[float, float] = (0.05, 0.2)
    disc_edge: float = 10 / 128
    brighten: tuple[float, float] = (1.5, 2.0)
    p_blur: float = 0.2             # our addition
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    p_noise: float = 0.2            # our addition
    noise_sigma: tuple[float, float] = (0.01, 0.05)
    p_box: float = 0.25
    p_text: float = 0.25


# Milder geometry and a wider photometric range: what re-used panels in papers look like
# (quarter turns, flips, crops to half the area, small tilts), used by the second CPU phase.
REUSE = dict(p_perspective=0.3, perspective=8 / 256, p_similarity=0.6, rotation_deg=10.0,
             scale=(0.7, 1.45), translation=12 / 256, jpeg_quality=(20, 90), p_tone=0.3,
             p_erase=0.3, p_brighten=0.2, p_blur=0.3, blur_sigma=(0.5, 1.5), p_noise=0.3)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def _coin(g: torch.Generator, n: int, p: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def homography_from_corners(dst: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) homographies mapping the square's corners (-1,-1),(1,-1),(1,1),(-1,1) to dst (N, 4, 2)."""
    n = dst.shape[0]
    src = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=dst.device)
    src = src.expand(n, 4, 2)
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)                      # (N, 8, 8)
    b = torch.cat([u, v], dim=1).unsqueeze(-1)                  # (N, 8, 1)
    h = torch.linalg.solve(a, b).squeeze(-1)
    return torch.cat([h, torch.ones(n, 1, device=dst.device)], dim=1).view(n, 3, 3)


def sample_geometry(g: torch.Generator, n: int, cfg: DeformConfig, device: torch.device,
                    active: torch.Tensor | None = None) -> torch.Tensor:
    """Backward maps (N, 3, 3) in normalised window coordinates: output point -> source point."""
    eye = torch.eye(3, device=device).expand(n, 3, 3).clone()
    if active is None:
        active = torch.ones(n, dtype=torch.bool, device=device)
    # reflections (left-right, up-down, each p=.5) and quarter turns
    reflect = _coin(g, n, cfg.p_reflect, device) & active
    flip_lr = _coin(g, n, 0.5, device) & reflect
    flip_ud = _coin(g, n, 0.5, device) & reflect
    rot = _coin(g, n, cfg.p_rot90, device) & active
    k = torch.randint(1, 4, (n,), generator=g, device=device) * rot
    d4 = eye.clone()
    flips = torch.stack([torch.where(flip_lr, -1.0, 1.0), torch.where(flip_ud, -1.0, 1.0)], 1)
    d4[:, 0, 0], d4[:, 1, 1] = flips[:, 0], flips[:, 1]
    quarter = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, -1.0], [1.0, 0.0]],
                            [[-1.0, 0.0], [0.0, -1.0]], [[0.0, 1.0], [-1.0, 0.0]]], device=device)
    r90 = eye.clone()
    r90[:, :2, :2] = quarter[k]
    # perspective: each corner moved by up to +/- perspective (fraction of side) -> x2 in [-1,1]
    persp = _coin(g, n, cfg.p_perspective, device) & active
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=device)
    jitter = (torch.rand(n, 4, 2, generator=g, device=device) * 2 - 1) * 2 * cfg.perspective
    hp = homography_from_corners(corners + jitter * persp.view(n, 1, 1))
    # similarity: rotation, scale, translation
    sim_on = _coin(g, n, cfg.p_similarity, device) & active
    theta = torch.deg2rad(_uniform(g, n, -cfg.rotation_deg, cfg.rotation_deg, device)) * sim_on
    scale = torch.where(sim_on, _uniform(g, n, *cfg.scale, device), torch.ones(n, device=device))
    shift = (torch.rand(n, 2, generator=g, device=device) * 2 - 1) * 2 * cfg.translation
    shift = shift * sim_on.view(n, 1)
    sim = eye.clone()
    inv_s = 1.0 / scale
    sim[:, 0, 0], sim[:, 0, 1] = inv_s * torch.cos(theta), -inv_s * torch.sin(theta)
    sim[:, 1, 0], sim[:, 1, 1] = inv_s * torch.sin(theta), inv_s * torch.cos(theta)
    sim[:, 0, 2], sim[:, 1, 2] = shift[:, 0], shift[:, 1]
    return d4 @ r90 @ hp @ sim


def warp(images: torch.Tensor, maps: torch.Tensor, out_size: int, crop: float = 0.5) -> torch.Tensor:
    """Sample the centre ``crop`` fraction of each window through its backward map (N, 3, 3)."""
    n = images.shape[0]
    lin = (torch.arange(out_size, device=images.device, dtype=images.dtype) * 2 + 1) / out_size - 1
    yy, xx = torch.meshgrid(lin * crop, lin * crop, indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1).view(1, -1, 3).expand(n, -1, 3)
    src = pts @ maps.transpose(1, 2)
    grid = (src[..., :2] / src[..., 2:].clamp(min=1e-6)).view(n, out_size, out_size, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ------------------------------------------------------------------------------------ photometric

_JPEG_LUMA = torch.tensor([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=torch.float32).view(8, 8)


def jpeg_table(quality: torch.Tensor) -> torch.Tensor:
    """IJG luminance quantisation tables (N, 8, 8) for qualities 1..100."""
    q = quality.float().clamp(1, 100)
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    t = torch.floor((_JPEG_LUMA.to(q.device) * scale.view(-1, 1, 1) + 50) / 100)
    return t.clamp(1, 255)


def dct_matrix(n: int = 8, device: torch.device | None = None) -> torch.Tensor:
    """Orthonormal DCT-II matrix."""
    k = torch.arange(n, dtype=torch.float32, device=device).view(-1, 1)
    i = torch.arange(n, dtype=torch.float32, device=device).view(1, -1)
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def jpeg(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Greyscale JPEG round trip (8x8 DCT, IJG table, rounding) on images in [0, 1]."""
    n, c, h, w = images.shape
    x = images.clamp(0, 1) * 255.0 - 128.0
    ph, pw = (-h) % 8, (-w) % 8
    x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    hh, ww = x.shape[-2:]
    blocks = x.view(n, c, hh // 8, 8, ww // 8, 8).permute(0, 1, 2, 4, 3, 5)
    d = dct_matrix(8, images.device)
    coef = d @ blocks @ d.T
    table = jpeg_table(quality).view(n, 1, 1, 1, 8, 8)
    coef = torch.round(coef / table) * table
    out = (d.T @ coef @ d).permute(0, 1, 2, 4, 3, 5).reshape(n, c, hh, ww)
    return ((out + 128.0).clamp(0, 255) / 255.0)[..., :h, :w]


def normalise01(images: torch.Tensor) -> torch.Tensor:
    """Subtract each image's minimum and divide by its range."""
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - lo) / (hi - lo).clamp(min=1e-6)


def tone_curve(images: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Apply per-image monotone piecewise-linear curves; knots (N, K) increasing from 0 to 1."""
    n, k = knots.shape
    x = images.clamp(0, 1) * (k - 1)
    i0 = x.floor().clamp(max=k - 2).long()
    t = x - i0
    flat = knots.view(n, 1, 1, 1, k).expand(*images.shape, k)
    y0 = flat.gather(-1, i0.unsqueeze(-1)).squeeze(-1)
    y1 = flat.gather(-1, (i0 + 1).unsqueeze(-1)).squeeze(-1)
    return y0 + (y1 - y0) * t


def disc_mask(size: int, centre: torch.Tensor, radius: torch.Tensor, edge: float) -> torch.Tensor:
    """Soft discs (N, 1, S, S): 1 inside, linear ramp of width ``edge`` (pixels) at the rim."""
    coords = torch.arange(size, device=centre.device, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    d = torch.sqrt((xx - centre[:, 0].view(-1, 1, 1)) ** 2 + (yy - centre[:, 1].view(-1, 1, 1)) ** 2)
    m = ((radius.view(-1, 1, 1) + edge / 2 - d) / edge).clamp(0, 1)
    return m.unsqueeze(1)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (sigma in pixels, 0 = none) as one grouped convolution."""
    n, c, h, w = images.shape
    radius = int(math.ceil(3 * float(sigma.max()))) if len(sigma) else 0
    if radius == 0:
        return images
    xs = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    s = sigma.clamp(min=1e-3).view(-1, 1)
    k1 = torch.exp(-0.5 * (xs.view(1, -1) / s) ** 2)
    k1 = k1 / k1.sum(1, keepdim=True)
    k1 = torch.where(sigma.view(-1, 1) > 0, k1, (xs == 0).float().view(1, -1))
    x = F.pad(images.reshape(1, n * c, h, w), (radius,) * 4, mode="reflect")
    x = F.conv2d(x, k1.repeat_interleave(c, 0).view(n * c, 1, 1, -1), groups=n * c)
    x = F.conv2d(x, k1.repeat_interleave(c, 0).view(n * c, 1, -1, 1), groups=n * c)
    return x.view(n, c, h, w)


# ---------------------------------------------------------------------------------------- clutter

class TextBank:
    """A fixed bank of rendered random strings (5-15 letters) used as overlay masks."""

    def __init__(self, size: int, count: int = 256, seed: int = 0) -> None:
        import cv2

        rng = np.random.default_rng(seed)
        letters = np.array(list(string.ascii_letters + string.digits))
        masks = np.zeros((count, size, size), np.uint8)
        for i in range(count):
            text = "".join(rng.choice(letters, rng.integers(5, 16)))
            scale = size / 128 * rng.uniform(0.3, 0.8)
            thick = max(1, int(round(size / 128 * rng.integers(1, 3))))
            x, y = int(rng.integers(0, size // 2)), int(rng.integers(size // 8, size))
            cv2.putText(masks[i], text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick,
                        cv2.LINE_AA)
        self.masks = torch.from_numpy(masks.astype(np.float32) / 255.0).unsqueeze(1)


def box_mask(size: int, boxes: torch.Tensor, thickness: torch.Tensor) -> torch.Tensor:
    """Rectangle outlines (N, 1, S, S) from boxes (N, 4: x0, y0, x1, y1 in pixels)."""
    c = torch.arange(size, device=boxes.device, dtype=torch.float32).view(1, 1, -1) + 0.5
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    t = thickness.view(-1, 1, 1)
    xs, ys = c, c.transpose(1, 2)
    inside_x = (xs >= x0) & (xs <= x1)
    inside_y = (ys >= y0) & (ys <= y1)
    near_v = ((xs - x0).abs() < t) | ((xs - x1).abs() < t)
    near_h = ((ys - y0).abs() < t) | ((ys - y1).abs() < t)
    return ((near_v & inside_y) | (near_h & inside_x)).float().unsqueeze(1)


# ------------------------------------------------------------------------------------ the pipeline

class Deformer:
    """The seeded, batched deformation pipeline used for training and evaluation."""

    def __init__(self, out_size: int, cfg: DeformConfig | None = None, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.size = out_size
        self.cfg = cfg or DeformConfig()
        self.device = torch.device(device)
        self.g = torch.Generator(device=self.device)
        self.g.manual_seed(seed)
        self.text = TextBank(out_size, seed=seed).masks.to(self.device)

    def crop(self, windows: torch.Tensor) -> torch.Tensor:
        """Plain centre crop (no deformation): the anchor's view of its window."""
        n = windows.shape[0]
        eye = torch.eye(3, device=windows.device).expand(n, 3, 3)
        return normalise01(warp(windows, eye, self.size))

    def deform(self, windows: torch.Tensor, families: tuple[str, ...] | None = None) -> torch.Tensor:
        """Deform a batch of 2S x 2S windows into S x S images.

        ``families`` restricts the deformations to a subset of
        {"geometry", "jpeg", "tone", "local", "blur", "noise"} (evaluation per family).
        """
        cfg, g, dev = self.cfg, self.g, self.device
        fam = set(families) if families else {"geometry", "jpeg", "tone", "local", "blur", "noise"}
        n = windows.shape[0]
        active = _coin(g, n, cfg.p_any, dev) if families is None else torch.ones(n, dtype=torch.bool, device=dev)
        geo_active = active if "geometry" in fam else torch.zeros_like(active)
        maps = sample_geometry(g, n, cfg, dev, geo_active)
        x = normalise01(warp(windows, maps, self.size))
        if "jpeg" in fam:
            on = _coin(g, n, cfg.p_jpeg, dev) & active
            q = torch.randint(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, (n,), generator=g, device=dev)
            x = torch.where(on.view(-1, 1, 1, 1), jpeg(x, q), x)
        if "tone" in fam:
            on = _coin(g, n, cfg.p_gamma, dev) & active
            gam = torch.exp(_uniform(g, n, math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), dev))
            x = torch.where(on.view(-1, 1, 1, 1), x.clamp(min=0) ** gam.view(-1, 1, 1, 1), x)
            on = _coin(g, n, cfg.p_tone, dev) & active
            steps = torch.rand(n, 8, generator=g, device=dev) + 0.05
            knots = torch.cat([torch.zeros(n, 1, device=dev), steps.cumsum(1)], 1)
            knots = knots / knots[:, -1:]
            x = torch.where(on.view(-1, 1, 1, 1), tone_curve(x, knots), x)
        if "local" in fam:
            s = self.size
            for p, kind in ((cfg.p_erase, "erase"), (cfg.p_brighten, "brighten")):
                on = _coin(g, n, p, dev) & active
                centre = torch.rand(n, 2, generator=g, device=dev) * s
                radius = _uniform(g, n, *cfg.disc_radius, dev) * s
                m = disc_mask(s, centre, radius, cfg.disc_edge * s) * on.view(-1, 1, 1, 1)
                if kind == "erase":
                    x = x * (1 - m)
                else:
                    x = x * (1 + (_uniform(g, n, *cfg.brighten, dev).view(-1, 1, 1, 1) - 1) * m)
        if "blur" in fam:
            on = _coin(g, n, cfg.p_blur, dev) & active
            x = gaussian_blur(x, _uniform(g, n, *cfg.blur_sigma, dev) * on)
        if "noise" in fam:
            on = _coin(g, n, cfg.p_noise, dev) & active
            sig = _uniform(g, n, *cfg.noise_sigma, dev) * on
            x = x + sig.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=g, device=dev)
        return x

    def clutter(self, images: torch.Tensor) -> torch.Tensor:
        """Random rectangle outline (p=.25) or text string (p=.25), bright or dark."""
        cfg, g, dev, s = self.cfg, self.g, self.device, self.size
        n = images.shape[0]
        u = torch.rand(n, generator=g, device=dev)
        box_on = u < cfg.p_box
        text_on = (u >= cfg.p_box) & (u < cfg.p_box + cfg.p_text)
        corners = torch.sort(torch.rand(n, 2, 2, generator=g, device=dev) * s, dim=1).values
        boxes = torch.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], 1)
        thick = _uniform(g, n, 0.5, 1.5, dev) * max(1.0, s / 128)
        idx = torch.randint(0, len(self.text), (n,), generator=g, device=dev)
        m = box_mask(s, boxes, thick) * box_on.view(-1, 1, 1, 1) + self.text[idx] * text_on.view(-1, 1, 1, 1)
        lo = images.amin(dim=(1, 2, 3), keepdim=True)
        hi = images.amax(dim=(1, 2, 3), keepdim=True)
        ink = torch.where(_coin(g, n, 0.5, dev).view(-1, 1, 1, 1), hi, lo)
        return images * (1 - m) + ink * m
