"""Flat vs IVF index as the store grows: build time, the nprobe chosen for 0.99 pair recall,
query and screen latency, recall against exact search, memory.

    python benchmarks/index_scale.py [--sizes 100000 1000000] [--smoke]

Vectors: synthetic, drawn from a Gaussian with the mean and covariance of real panel embeddings
(the panels of ../shared/data/pdfs and the held-out test/validation images, embedded by the
shipped model), as in benchmarks/speed.py.  Writes docs/index_scale.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from speed import PDFS, like_real, machine  # noqa: E402


def pair_set(qi: np.ndarray, ids: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(qi.tolist(), ids.tolist()))


def bench(base: np.ndarray, size: int, n_query: int = 50, screen_new: int = 1000, sample_queries: int = 300) -> dict:
    from imgdup.index.search import choose_nprobe, ivf_of, new_ivf_index, pairs_against
    from imgdup.index.store import PAIR_RADIUS, PAIR_RECALL, new_index

    xb = like_real(base, size, seed=1)
    ids = np.arange(size, dtype=np.int64)
    q = like_real(base, n_query, seed=2)
    new = like_real(base, screen_new, seed=3)
    out: dict = {"store_panels": size, "query_panels": n_query, "screen_new_panels": screen_new}
    flat = new_index(xb.shape[1])
    flat.add_with_ids(xb, ids)
    runs = {}
    for name in ("flat", "ivf"):
        if name == "flat":
            idx = flat
        else:
            t = time.perf_counter()
            idx = new_ivf_index(xb, ids)
            out["ivf_build_seconds"] = time.perf_counter() - t
            t = time.perf_counter()
            choice = choose_nprobe(idx, xb, ids, PAIR_RADIUS, PAIR_RECALL, queries=sample_queries)
            out["ivf_nprobe_choice_seconds"] = time.perf_counter() - t
            out["ivf"] = {"nlist": int(ivf_of(idx).nlist), **choice}
        pairs_against(idx, q[:5], 1.0)       # warm up
        t = time.perf_counter()
        qi, mid, _ = pairs_against(idx, q, 1.0)
        q_s = time.perf_counter() - t
        t = time.perf_counter()
        si, sid, _ = pairs_against(idx, new, 1.0)
        s_s = time.perf_counter() - t
        runs[name] = (pair_set(qi, mid), pair_set(si, sid))
        out[f"{name}_query_seconds"] = q_s
        out[f"{name}_screen_seconds"] = s_s
    out["query_pairs_exact"] = len(runs["flat"][0])
    out["ivf_query_recall"] = len(runs["ivf"][0] & runs["flat"][0]) / max(1, len(runs["flat"][0]))
    out["ivf_screen_recall"] = len(runs["ivf"][1] & runs["flat"][1]) / max(1, len(runs["flat"][1]))
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "index_scale.json"))
    args = ap.parse_args()
    from imgdup import load_model
    from imgdup.demo.generate import shared_test_images
    from imgdup.pipeline import extract_many

    model = load_model()
    pdfs = sorted(glob.glob(str(PDFS / "*.pdf")))[: 2 if args.smoke else None]
    real = [p.pixels for r in extract_many(pdfs) if not r.error for p in r.panels]
    real += shared_test_images(splits=("test", "val"))
    base = model.embed(real)
    sizes = [5000] if args.smoke else args.sizes
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/index_scale.py " + ("--smoke" if args.smoke else
                                                              "--sizes " + " ".join(map(str, sizes))),
           "synthetic_from_real_panels": len(real), "runs": []}
    for n in sizes:
        out["runs"].append(bench(base, n, screen_new=100 if args.smoke else 1000,
                                 sample_queries=50 if args.smoke else 300))
        print(json.dumps(out["runs"][-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
