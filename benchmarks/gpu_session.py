"""One GPU session, prepared here and run there in one call (the lent machine has no network and a
64 MiB limit on what travels):

    python benchmarks/gpu_session.py pack            # here: train+val images -> .gpudata (ignored)
    python benchmarks/gpu_session.py run --minutes 7 # there: train both networks, benchmark, pack

``pack`` re-encodes the training and validation images losslessly (a grey image stored as RGBA
becomes an 8-bit grey PNG; colour images and the 16-bit blot scans are kept as they are) and checks that
``load_splits`` reads the same groups and pixels from the copy.  ``run`` trains the ``gpu`` and
``gpu-paper`` recipes side by side, then their ``-reuse`` phases, within the time given, measures
GPU embedding speed (network alone and the whole ``embed`` call, fp32 and AMP) for the shipped
and the new weights, and writes runs/ + gpu_bench.json as a tar split into 15 MB pieces under
$OUT (join them with ``cat imgdup-gpu.tar.* | tar x``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKED = ROOT / ".gpudata"


def pack(dst: Path = PACKED) -> None:
    from PIL import Image

    from imgdup.model.train import RECIPES, SHARED_DATA, load_splits

    splits = load_splits(RECIPES["gpu"])
    keep = {im.name for part in ("train", "val") for im in splits[part]}
    for sub in ("micrographs/dsb2018", "blots/athenaz2"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for path in sorted((SHARED_DATA / sub).iterdir()):
            if path.name not in keep:
                continue
            img = Image.open(path)
            if img.mode == "RGBA":
                a = np.asarray(img)
                if (a[..., 3] == 255).all():
                    rgb = a[..., :3]
                    grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
                    if grey:   # (a colour image stays RGBA: PIL's own RGB -> L rounds otherwise)
                        img = Image.fromarray(rgb[..., 0], "L")
            out = dst / sub / (path.stem + ".png")
            if path.suffix.lower() == ".png" and img.mode in ("I;16", "I;16B", "I;16L"):
                shutil.copyfile(path, out)
            else:
                img.save(out, "PNG", optimize=True)
    # the copy must train on exactly what the originals give
    os.environ["IMGDUP_SHARED_DATA"] = str(dst)
    import imgdup.model.train as tr

    folders = [(str(dst / "micrographs" / "dsb2018"), "size"), (str(dst / "blots" / "athenaz2"), "prefix")]
    copy = tr.load_splits(tr.Recipe("check", "paper64", 1, 1, "adam", 1e-3, folders=folders))
    for part in ("train", "val"):
        a = {im.name: im for im in splits[part]}
        b = {im.name.replace(".png", ""): im for im in copy[part]}
        assert len(a) == len(b), (part, len(a), len(b))
        for name, im in a.items():
            other = b[Path(name).stem]
            assert other.group == im.group, (name, im.group, other.group)
            assert np.abs(other.pixels - im.pixels).max() < 1e-5, name
    size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
    print(f"packed {len(keep)} images, {size / 2**20:.1f} MiB, in {dst}; groups and pixels identical")


def _train_chain(arch_recipes: list[str], runs: Path, minutes: list[float], workers: int,
                 processes: bool, log: Path, device: str, steps: int | None) -> subprocess.Popen:
    cmds = []
    for recipe, m in zip(arch_recipes, minutes):
        cmds.append(f"{sys.executable} -m imgdup.cli train --recipe {recipe} --out {runs} --no-resume "
                    f"--device {device} --workers {workers} {'--processes' if processes else ''} "
                    f"--budget-minutes {m}" + (f" --steps {steps}" if steps else ""))
    return subprocess.Popen(" && ".join(cmds), shell=True, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def bench_embed(weights: list[tuple[str, str]], n: int = 16384, device: str = "cuda") -> list[dict]:
    import torch

    from imgdup.model.api import load_model, prepare

    rng = np.random.default_rng(0)
    imgs = [(rng.random((128, 128)) * 255).astype(np.uint8) for _ in range(n)]
    out = []
    for label, w in weights:
        for precision in ("fp32", "amp"):
            for batch in (1024, 4096):
                try:
                    m = load_model(w, device=device, batch_size=batch, precision=precision)
                    prep = np.stack([prepare(im, m.size) for im in imgs[:batch]])
                    m.embed_prepared(prep)   # warm-up: cuDNN picks its kernels
                    if device == "cuda":
                        torch.cuda.synchronize()
                    big = np.concatenate([prep] * (n // batch))
                    t = time.perf_counter()
                    m.embed_prepared(big)
                    net = time.perf_counter() - t
                    t = time.perf_counter()
                    m.embed(imgs)
                    full = time.perf_counter() - t
                    row = {"weights": label, "arch": m.card.architecture, "input": m.size, "precision": precision,
                           "batch": batch, "panels": n, "network_panels_per_s": n / net,
                           "embed_panels_per_s": n / full}
                except Exception as e:  # one failure must not lose the other numbers
                    row = {"weights": label, "precision": precision, "batch": batch, "error": repr(e)}
                print(json.dumps(row), flush=True)
                out.append(row)
    return out


def run(minutes: float, out: Path, workers: int | None, device: str = "cuda", steps: int | None = None,
        embed_panels: int = 16384) -> None:
    import torch

    t0 = time.time()
    runs = ROOT / "runs-gpu"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    os.environ["IMGDUP_SHARED_DATA"] = str(PACKED)
    shm = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
    processes = shm > 8 * 2**30
    cores = os.cpu_count() or 2
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "cores": cores,
            "python": platform.python_version(), "dev_shm_free_gib": shm / 2**30,
            "window_workers": "processes" if processes else "threads"}
    print(json.dumps(info), flush=True)
    small = workers or max(2, cores // 3)
    large = workers or max(2, cores - small - 2)
    split = [round(minutes * 0.6, 2), round(minutes * 0.4, 2)]
    jobs = {"paper64": _train_chain(["gpu", "gpu-reuse"], runs, split, small, processes, runs / "paper64.log",
                                        device, steps),
            "paper": _train_chain(["gpu-paper", "gpu-paper-reuse"], runs, split, large, processes,
                                      runs / "paper.log", device, steps)}
    info["workers"] = {"paper64": small, "paper": large}
    for name, p in jobs.items():
        try:
            p.wait(timeout=max(1.0, minutes * 60 * 1.15 + 60 - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
        info[f"{name}_returncode"] = p.returncode
    info["train_seconds"] = time.time() - t0
    weights = [("shipped imgdup-default", "imgdup-default")]
    for run_name in ("gpu-reuse", "gpu-paper-reuse", "gpu", "gpu-paper"):
        best = runs / run_name / "best.safetensors"
        if best.exists():
            weights.append((run_name, _card_for(runs / run_name)))
    info["embed"] = bench_embed(weights[:3], embed_panels, device)
    info["total_seconds"] = time.time() - t0
    (runs / "gpu_bench.json").write_text(json.dumps(info, indent=2))
    _ship(runs, out)


def _card_for(run: Path) -> str:
    """A weights file + card beside the run's best weights, so that load_model can time it."""
    from imgdup.hashing import sha256_file
    from imgdup.model.api import WeightsCard
    from imgdup.model.net import build

    recipe = json.loads((run / "recipe.json").read_text())
    net = build(recipe["arch"])
    path = run / "bench.safetensors"
    shutil.copyfile(run / "best.safetensors", path)
    card = WeightsCard(name=run.name, architecture=recipe["arch"], input_size=net.input_size,
                       normalisation="", embedding_dim=128, threshold=1.0, recipe=recipe, data="",
                       steps=0, seed=0, metrics={}, sha256=sha256_file(path), file=path.name)
    path.with_suffix(".json").write_text(card.to_json())
    return str(path)


def _ship(runs: Path, out: Path) -> None:
    """runs/ (weights as float16, no optimiser checkpoints) -> a tar in 15 MB pieces under out."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    tar_path = out / "imgdup-gpu.tar"
    with tarfile.open(tar_path, "w") as tar:
        for p in sorted(runs.rglob("*")):
            if not p.is_file() or p.name in ("checkpoint.pt", "bench.safetensors"):
                continue
            if p.suffix == ".safetensors":
                half = p.with_suffix(".fp16")
                save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(str(p)).items()},
                          str(half))
                tar.add(half, arcname=str(p.relative_to(runs.parent)))
            else:
                tar.add(p, arcname=str(p.relative_to(runs.parent)))
    data = tar_path.read_bytes()
    tar_path.unlink()
    piece = 15 * 10**6
    for i in range(0, len(data), piece):
        (out / f"imgdup-gpu.tar.{i // piece:02d}").write_bytes(data[i:i + piece])
    print(f"shipped {len(data) / 1e6:.1f} MB in {(len(data) + piece - 1) // piece} pieces", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pack")
    r = sub.add_parser("run")
    r.add_argument("--minutes", type=float, default=7.0, help="training time for both phases of each network")
    r.add_argument("--workers", type=int, default=None, help="window workers per network (default: from cores)")
    r.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    r.add_argument("--device", default="cuda", help="cpu: a dry run of the whole script here")
    r.add_argument("--steps", type=int, default=None, help="cap on each phase's steps (dry runs)")
    r.add_argument("--embed-panels", type=int, default=16384)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack()
    else:
        run(args.minutes, Path(args.out), args.workers, args.device, args.steps, args.embed_panels)


if __name__ == "__main__":
    main()
