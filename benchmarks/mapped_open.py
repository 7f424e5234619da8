"""Opening an IVF store to search it: index files copied into memory vs mapped (``Store(mapped=True)``,
faiss ``IO_FLAG_MMAP_IFC``, as ``imgdup query`` and ``imgdup screen`` open it since session 15).

    python benchmarks/mapped_open.py --store-dir DIR [--panels 48] [--out docs/mapped_open.json]

DIR holds a store built by ``benchmarks/nightly_screen.py --store-dir DIR`` (its ``index``
folder; the point is a large one: ``--store 1000000``).  For each mode, in a fresh process, with
the index files' pages first dropped from the page cache (``posix_fadvise(DONTNEED)``: a cold
start, as the first query after a night's ingest or a reboot meets it) and then again warm:
seconds to open both indexes (panels and sub-regions, caught up with the catalogue), seconds of a
query's searches (``tile_pairs`` of ``--panels`` stored panels' vectors, slightly perturbed, at
the store's capped nprobes; the whole-panel range search), the process's own and file-backed
resident memory, and a digest of the pairs found (the modes must agree).  Writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from speed import machine  # noqa: E402

PROBE = r"""
import hashlib, json, sys, time
import numpy as np
from imgdup.index.search import TILE_CAP, pairs_against, probes, tile_pairs
from imgdup.index.store import TILE_ID_BASE, Store
from imgdup.model.api import N_TILES, QUERY_VIEWS

def mem():
    return {k: int(v.split()[0]) / 1024 for k, v in (ln.split(":", 1) for ln in open("/proc/self/status"))
            if k in ("VmRSS", "RssAnon", "RssFile")}

path, mapped, n = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
t = time.perf_counter()
store = Store(path, create=False, mapped=mapped)
whole, tiles = store.index(), store.tile_index()
opened = time.perf_counter() - t
ids = np.random.default_rng(0).choice(store._panel_ids(), n, replace=False)
_, vec = store.indexed_vectors(ids)
_, tvec = store.indexed_tile_vectors(ids)
noise = np.random.default_rng(1)
q = vec + noise.normal(0, 0.01, vec.shape).astype(np.float32)
qt = tvec[:, :QUERY_VIEWS] + noise.normal(0, 0.01, tvec[:, :QUERY_VIEWS].shape).astype(np.float32)
after_open = mem()
t = time.perf_counter()
wi, wid, _ = pairs_against(whole, q, 1.0)
with probes(whole, store.capped_nprobe("ivf", TILE_CAP)), probes(tiles, store.capped_nprobe("tiles", TILE_CAP * N_TILES)):
    ti, tm, _ = tile_pairs(q, qt, whole, tiles, 1.0, TILE_ID_BASE, cap=TILE_CAP, stored_views=N_TILES)
searched = time.perf_counter() - t
digest = hashlib.sha256(np.concatenate([wi, wid, ti, tm]).tobytes()).hexdigest()[:16]
print(json.dumps({"open_seconds": round(opened, 2), "search_seconds": round(searched, 2),
                  "index_type": type(whole).__name__, "tile_index_type": type(tiles).__name__,
                  "whole_pairs": int(len(wi)), "subregion_pairs": int(len(ti)), "pairs_digest": digest,
                  "memory_mb_after_open": after_open, "memory_mb_after_search": mem()}))
"""


def drop_cache(files: list[Path]) -> None:
    """Ask the kernel to drop these files' clean pages from the page cache."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store-dir", required=True, help="a nightly_screen.py --store-dir folder")
    ap.add_argument("--panels", type=int, default=48)
    ap.add_argument("--out", default=str(ROOT / "docs" / "mapped_open.json"))
    args = ap.parse_args()
    index = Path(args.store_dir) / "index"
    files = [index / "index.faiss", index / "tiles.faiss"]
    out: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                 "command": f"python benchmarks/mapped_open.py --store-dir DIR --panels {args.panels}",
                 "index_files_gb": {f.name: round(f.stat().st_size / 2**30, 2) for f in files}, "runs": []}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for cache in ("cold", "warm"):
        for mapped in (False, True):
            if cache == "cold":
                drop_cache(files)
            res = subprocess.run([sys.executable, "-c", PROBE, str(index), "1" if mapped else "0", str(args.panels)],
                                 capture_output=True, text=True, env=env, check=True)
            run = {"page_cache": cache, "mode": "mapped" if mapped else "loaded", **json.loads(res.stdout.splitlines()[-1])}
            out["runs"].append(run)
            print(json.dumps(run), flush=True)
    out["same_pairs"] = len({r["pairs_digest"] for r in out["runs"]}) == 1
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
