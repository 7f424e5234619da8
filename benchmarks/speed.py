"""Speed benchmark: extraction pages/s, embedding panels/s, query latency and screen time vs
store size.  Writes docs/speed.json and a markdown table to stdout.

    python benchmarks/speed.py [--sizes 10000 100000] [--smoke]

Synthetic vectors for the large stores are drawn like real embeddings: from a Gaussian with the
mean and covariance of the alpha-scaled embeddings of real panels (held-out micrographs and the
panels of ../shared/data/pdfs), so that each synthetic vector is a new, unrelated panel.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

try:
    import faiss
except ImportError:   # machine() also serves scripts run where faiss is absent (a GPU machine)
    faiss = None

ROOT = Path(__file__).resolve().parents[1]
PDFS = ROOT.parent / "shared" / "data" / "pdfs"


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                 platform.machine()) if os.path.exists("/proc/cpuinfo") else platform.machine()
    return {"cpu": model, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "faiss": getattr(faiss, "__version__", None),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def bench_extract(pdfs: list[str]) -> dict:
    from imgdup.pipeline import extract_many

    t = time.perf_counter()
    res = list(extract_many(pdfs, workers=2))
    dt = time.perf_counter() - t
    pages = sum(r.pages for r in res if not r.error)
    panels = sum(len(r.panels) for r in res if not r.error)
    return {"documents": len(res), "pages": pages, "panels": panels, "seconds": dt,
            "pages_per_s": pages / dt, "panels_per_s": panels / dt, "workers": 2}


def bench_embed(model, n: int) -> dict:
    rng = np.random.default_rng(0)
    imgs = [(rng.random((128, 128)) * 255).astype(np.uint8) for _ in range(n)]
    model.embed(imgs[:64])
    t = time.perf_counter()
    model.embed(imgs)
    full = time.perf_counter() - t
    from imgdup.model.api import prepare

    batch = np.stack([prepare(im, model.size) for im in imgs])
    t = time.perf_counter()
    model.embed_prepared(batch)
    net = time.perf_counter() - t
    return {"panels": n, "input": "128x128 uint8", "panels_per_s": n / full,
            "network_only_panels_per_s": n / net, "device": str(model.device)}


def like_real(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = base.mean(0)
    cov = np.cov(base, rowvar=False) + 1e-6 * np.eye(base.shape[1])
    chol = np.linalg.cholesky(cov)
    out = np.empty((n, base.shape[1]), np.float32)
    for s in range(0, n, 100_000):
        k = min(100_000, n - s)
        out[s:s + k] = mean + rng.standard_normal((k, base.shape[1])) @ chol.T
    return out


def proc_memory_mb() -> dict[str, float]:
    """This process's resident size (VmRSS), its peak (VmHWM), own (RssAnon) and file-backed
    (RssFile) pages, MB."""
    return {ln.split(":")[0]: int(ln.split()[1]) / 1024 for ln in open("/proc/self/status")
            if ln.split(":")[0] in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def real_crops(n: int, seed: int) -> list[np.ndarray]:
    """Random crops (96-400 px a side) of training-split images: real panels that no held-out
    query shares."""
    from imgdup.model.train import RECIPES, load_splits

    rng = np.random.default_rng(seed)
    train = [(im.pixels * 255).round().astype(np.uint8) for im in load_splits(RECIPES["cpu"])["train"]]
    out = []
    for _ in range(n):
        im = train[rng.integers(len(train))]
        h, w = im.shape
        ch, cw = (int(rng.integers(min(96, s), min(400, s) + 1)) for s in (h, w))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append(np.ascontiguousarray(im[y:y + ch, x:x + cw]))
    return out


def bench_query(base: np.ndarray, size: int, n_query: int = 50, screen_new: int = 1000) -> dict:
    from imgdup.index.search import pairs_against

    from imgdup.index.store import new_index

    xb = like_real(base, size, seed=1)
    idx = new_index(xb.shape[1])
    t = time.perf_counter()
    idx.add_with_ids(xb, np.arange(size, dtype=np.int64))
    add_s = time.perf_counter() - t
    q = like_real(base, n_query, seed=2)
    pairs_against(idx, q[:5], 1.0)
    t = time.perf_counter()
    _, ids, _ = pairs_against(idx, q, 1.0)
    query_s = time.perf_counter() - t
    new = like_real(base, screen_new, seed=3)
    t = time.perf_counter()
    _, sids, _ = pairs_against(idx, new, 1.0)
    screen_s = time.perf_counter() - t
    l2 = faiss.IndexFlatL2(xb.shape[1])
    l2.add(xb)
    lims, _, _ = l2.range_search(q[:5], 1.0)
    l2_share = float(np.diff(lims).mean() / size)   # how much an L2 radius-1 prefilter lets through
    return {"store_panels": size, "query_panels": n_query, "query_seconds": query_s,
            "l2_prefilter_candidate_share": l2_share,
            "query_pairs": int(len(ids)), "add_seconds": add_s, "screen_new_panels": screen_new,
            "screen_seconds": screen_s, "screen_pairs": int(len(sids)),
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_store_query(base: np.ndarray, size: int, model) -> dict:
    """The whole `imgdup query` path (extract, embed, search, verify, report) for the demo
    manuscript against a real on-disk store of ``size`` synthetic panels."""
    import tempfile

    from imgdup import query
    from imgdup.demo import DEMO_DIR
    from imgdup.index.store import PanelRow, Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "ix")
        t = time.perf_counter()
        with store.writer():
            store.check_model(model.sha256, model.card.name, base.shape[1])
            per_doc = 100
            for d0 in range(0, size, 10_000):
                n = min(10_000, size - d0)
                docs = [{"sha256": f"synthetic-{d0 + k:09d}", "path": f"synthetic/{d0 + k}.pdf", "status": "ok"}
                        for k in range(0, n, per_doc)]
                rows = [PanelRow(f"synthetic-{d0 + k - k % per_doc:09d}", 1, "p1-f1", f"p1-f1-{k % per_doc}",
                                 "panel", (0.0, 0.0, 100.0, 100.0), 128, 128, "", "1", "xref", 0, False)
                        for k in range(n)]
                store.add_batch(docs, rows, like_real(base, n, seed=d0))
            store.save_index()
        build_s = time.perf_counter() - t
        store.close()
        ms = sorted((DEMO_DIR / "manuscript").glob("*.pdf"))
        query(ms, Path(tmp) / "ix", model=model)  # warm caches (index load from disk is counted below)
        t = time.perf_counter()
        res = query(ms, Path(tmp) / "ix", model=model)
        q_s = time.perf_counter() - t
        panels = sum(len(r.panels) for r in res.documents)
    return {"store_panels": size, "build_seconds": build_s, "manuscript_panels": panels,
            "query_seconds_end_to_end": q_s, "pairs": int(len(res.report))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--embed", type=int, default=2048)
    ap.add_argument("--screen-new", type=int, default=2000, help="new panels screened against each store")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    ap.add_argument("--out", default=str(ROOT / "docs" / "speed.json"))
    args = ap.parse_args()
    from imgdup import load_model

    model = load_model()
    pdfs = sorted(glob.glob(str(PDFS / "*.pdf")))
    sizes = [2000] if args.smoke else args.sizes
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/speed.py " + ("--smoke" if args.smoke else " ".join(
               ["--sizes", *map(str, args.sizes), "--screen-new", str(args.screen_new)]))}
    out["extract"] = bench_extract(pdfs[:2] if args.smoke else pdfs) if pdfs else None
    out["embed"] = bench_embed(model, 128 if args.smoke else args.embed)
    from imgdup.demo.generate import shared_test_images
    from imgdup.pipeline import extract_many

    real = [p.pixels for r in extract_many(pdfs) if not r.error for p in r.panels]
    real += shared_test_images(splits=("test", "val"))
    base = model.embed(real)
    out["synthetic_from_real_panels"] = len(real)
    out["query"] = []
    for n in sizes:
        out["query"].append(bench_query(base, n, screen_new=100 if args.smoke else args.screen_new))
        print(json.dumps(out["query"][-1]), flush=True)
    out["store_query"] = bench_store_query(base, 2000 if args.smoke else 100_000, model)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
