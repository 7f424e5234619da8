"""Mixed precision (``load_model(precision="amp")``, ``--precision amp``) against fp32: the
distance f on real pairs, the decisions at f <= 1 that change, and panels/s.

    python benchmarks/precision.py [--images 300] [--smoke]     # -> docs/precision.json

AMP is float16 on CUDA and bfloat16 on a CPU; this script measures the device it runs on
(both when a GPU is present).  Pairs: every pair of N held-out test images, plus each image
with a re-used copy of itself (rotated, JPEG, gamma: small f), so both ends of the f range count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from speed import machine  # noqa: E402


def copies(images: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for im in images:
        c = np.rot90(im, int(rng.integers(1, 4)))
        c = (255 * (c / 255.0) ** rng.uniform(0.7, 1.4)).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(c), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 90))])
        out.append(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))
    return out


def measure(device: str, images: list[np.ndarray], dup: list[np.ndarray], reps: int,
            weights: str = "imgdup-default") -> dict:
    from imgdup import load_model

    emb, speed = {}, {}
    for precision in ("fp32", "amp"):
        m = load_model(weights, device=device, precision=precision)
        m.embed(images[:8])                                          # warm up
        t = time.perf_counter()
        for _ in range(reps):
            e = m.embed(images)
        speed[precision] = reps * len(images) / (time.perf_counter() - t)
        emb[precision] = (e, m.embed(dup))
    n = len(images)
    i, j = np.triu_indices(n, 1)
    out = {"device": device, "weights": weights, "panels_per_s": {k: round(v, 1) for k, v in speed.items()}}
    for name, (a, b) in (("unrelated pairs", (i, j)), ("image and its copy", (np.arange(n), None))):
        fs = {}
        for p, (e, d) in emb.items():
            other = e[b] if b is not None else d
            fs[p] = np.abs(e[a] - other).sum(1)
        diff = np.abs(fs["fp32"] - fs["amp"])
        out[name] = {"pairs": int(len(diff)), "max_abs_f_difference": float(diff.max()),
                     "mean_abs_f_difference": float(diff.mean()),
                     "decisions_changed_at_f<=1": int(((fs["fp32"] <= 1) != (fs["amp"] <= 1)).sum()),
                     "within_f<=1_fp32": int((fs["fp32"] <= 1).sum())}
    out["max_vector_difference"] = float(max(np.abs(emb["fp32"][0] - emb["amp"][0]).max(),
                                             np.abs(emb["fp32"][1] - emb["amp"][1]).max()))
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "precision.json"))
    ap.add_argument("--weights", nargs="+", default=["imgdup-default"], help="shipped names or paths")
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    ap.add_argument("--pack", default=None, help="only write the held-out images to this .npz (for a GPU machine)")
    ap.add_argument("--images-from", default=None, help="read the held-out images from a --pack file")
    args = ap.parse_args()
    n = 40 if args.smoke else args.images
    if args.images_from:
        with np.load(args.images_from) as z:
            images = [z[k] for k in sorted(z.files, key=int)][:n]
    else:
        from imgdup.demo.generate import shared_test_images

        images = shared_test_images(splits=("test",))[:n]
    if args.pack:
        np.savez_compressed(args.pack, **{str(i): im for i, im in enumerate(images)})
        return
    dup = copies(images, np.random.default_rng(0))
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
           "command": "python " + " ".join(sys.argv),
           "runs": [measure(d, images, dup, reps=1 if args.smoke else 3, weights=w)
                    for w in args.weights for d in devices]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
