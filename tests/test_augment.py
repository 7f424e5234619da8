"""Batched deformations against plain per-image NumPy / OpenCV implementations."""

from __future__ import annotations

import cv2
import numpy as np
import scipy.fft
import torch

from imgdup.model.augment import (DeformConfig, Deformer, disc_mask, gaussian_blur, jpeg, jpeg_table,
                                  sample_geometry, tone_curve, warp)


def _images(n=6, side=64, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((n, 1, side // 8, side // 8)).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(base), size=(side, side), mode="bilinear")
    return big


def _warp_one(img: np.ndarray, m: np.ndarray, out: int, crop: float = 0.5) -> np.ndarray:
    """Per-image reference: the same backward homography through cv2.remap."""
    h, w = img.shape
    lin = (np.arange(out) * 2 + 1) / out - 1
    yy, xx = np.meshgrid(lin * crop, lin * crop, indexing="ij")
    pts = np.stack([xx, yy, np.ones_like(xx)], -1) @ m.T
    sx, sy = pts[..., 0] / pts[..., 2], pts[..., 1] / pts[..., 2]
    mapx = ((sx + 1) * w - 1) / 2
    mapy = ((sy + 1) * h - 1) / 2
    return cv2.remap(img, mapx.astype(np.float32), mapy.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def test_geometry_matches_per_image_remap():
    x = _images()
    g = torch.Generator().manual_seed(3)
    maps = sample_geometry(g, len(x), DeformConfig(p_reflect=1, p_rot90=1, p_perspective=1, p_similarity=1), x.device)
    out = warp(x, maps, 32)
    for i in range(len(x)):
        ref = _warp_one(x[i, 0].numpy(), maps[i].numpy(), 32)
        inner = (slice(2, -2), slice(2, -2))
        assert np.abs(out[i, 0].numpy()[inner] - ref[inner]).mean() < 2e-3


def test_quarter_turn_and_flip_are_exact():
    x = _images(4, 64)
    cfg = DeformConfig(p_reflect=0, p_rot90=1, p_perspective=0, p_similarity=0)
    g = torch.Generator().manual_seed(0)
    maps = sample_geometry(g, 4, cfg, x.device)
    out = warp(x, maps, 64, crop=1.0)
    for i in range(4):
        cands = [np.rot90(x[i, 0].numpy(), k) for k in range(4)]
        assert min(np.abs(out[i, 0].numpy() - c).max() for c in cands) < 1e-5


def test_jpeg_matches_per_block_dct():
    x = _images(3, 32, seed=1)
    q = torch.tensor([10, 50, 90])
    out = jpeg(x, q).numpy()
    tables = jpeg_table(q).numpy()
    for i in range(3):
        img = x[i, 0].numpy().clip(0, 1) * 255 - 128
        ref = np.zeros_like(img)
        for by in range(0, 32, 8):
            for bx in range(0, 32, 8):
                c = scipy.fft.dctn(img[by:by + 8, bx:bx + 8], norm="ortho")
                c = np.round(c / tables[i]) * tables[i]
                ref[by:by + 8, bx:bx + 8] = scipy.fft.idctn(c, norm="ortho")
        ref = np.clip(ref + 128, 0, 255) / 255
        assert np.abs(out[i, 0] - ref).max() < 1e-3


def test_jpeg_close_to_real_encoder():
    x = _images(2, 64, seed=2)
    out = jpeg(x, torch.tensor([30, 30])).numpy()
    for i in range(2):
        u8 = (x[i, 0].numpy() * 255).round().astype(np.uint8)
        _, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, 30])
        real = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) / 255.0
        assert np.abs(out[i, 0] - real).mean() < 0.01


def test_blur_matches_opencv():
    x = _images(3, 48, seed=4)
    sig = torch.tensor([0.0, 1.0, 2.0])
    out = gaussian_blur(x, sig).numpy()
    for i, s in enumerate(sig.tolist()):
        img = x[i, 0].numpy()
        ref = img if s == 0 else cv2.GaussianBlur(img, (0, 0), s, borderType=cv2.BORDER_REFLECT_101)
        assert np.abs(out[i, 0] - ref)[8:-8, 8:-8].max() < 2e-3


def test_tone_curve_and_disc_against_numpy():
    x = _images(2, 32, seed=5)
    knots = torch.tensor([[0, 0.1, 0.5, 1.0], [0, 0.6, 0.8, 1.0]])
    out = tone_curve(x.clamp(0, 1), knots).numpy()
    for i in range(2):
        ref = np.interp(x[i, 0].numpy().clip(0, 1), np.linspace(0, 1, 4), knots[i].numpy())
        assert np.abs(out[i, 0] - ref).max() < 1e-5
    m = disc_mask(32, torch.tensor([[16.0, 16.0]]), torch.tensor([8.0]), 2.0)[0, 0].numpy()
    assert m[16, 16] == 1 and m[0, 0] == 0 and 0 < m[16, 16 + 8] < 1


def test_deformer_is_seeded_and_reproducible():
    x = _images(8, 64)
    a = Deformer(32, seed=11).deform(x)
    b = Deformer(32, seed=11).deform(x)
    c = Deformer(32, seed=12).deform(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 1, 32, 32) and torch.isfinite(a).all()
