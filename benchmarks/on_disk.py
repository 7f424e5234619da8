"""An IVF store opened with its index files loaded vs memory-mapped (``imgdup reindex --on-disk``).

    python benchmarks/on_disk.py [--panels 1000000] [--smoke]

Builds a real store of N synthetic panels (vectors and 5 tile vectors a panel drawn like real
embeddings, as in benchmarks/index_scale.py; Parquet shards, catalogue), rebuilds it as an IVF
with on-disk inverted lists (out of core: the rebuild's peak memory is recorded), then the same
IVF with its lists in memory; in a fresh process for each, opens it and runs a 50-panel query's searches (panels and
sub-regions, as ``imgdup query`` does): the process's own (anonymous) memory and its resident
file-backed pages (mapped index pages, which the kernel can drop and re-read) after opening and
after the query, seconds, and whether both modes found the same pairs.  The files were just written, so they are
in the page cache: this measures memory held by the process, not cold-disk latency.  Writes
docs/on_disk.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from index_scale import real_embeddings  # noqa: E402
from speed import like_real, machine, proc_memory_mb  # noqa: E402

PROBE = r"""
import json, sys, time
import numpy as np
from imgdup.index.search import pairs_against, tile_pairs
from imgdup.index.store import TILE_ID_BASE, Store

def mem():
    # anonymous memory (the process's own) and file-backed resident pages (mapped index pages,
    # which the kernel can drop and re-read), MB; VmHWM: peak resident
    got = {}
    for ln in open("/proc/self/status"):
        key = ln.split(":")[0]
        if key in ("RssAnon", "RssFile", "VmHWM"):
            got[key] = int(ln.split()[1]) / 1024
    return got

path, qfile, out = sys.argv[1:4]
q = np.load(qfile)
qv, qt = q["whole"], q["tiles"]
base = mem()
t = time.perf_counter()
store = Store(path, create=False)
whole, tiles = store.index(), store.tile_index()
opened = time.perf_counter() - t
at_open = mem()
t = time.perf_counter()
qi, ids, _ = pairs_against(whole, qv, 1.0)
ti, tids, _ = tile_pairs(qv, qt, whole, tiles, 1.0, TILE_ID_BASE)
query = time.perf_counter() - t
np.savez(out, qi=qi, ids=ids, ti=ti, tids=tids)
print(json.dumps({"open_seconds": opened, "query_seconds": query, "mb_before_open": base,
                  "mb_after_open": at_open, "mb_after_query": mem(),
                  "whole_pairs": int(len(qi)), "tile_pairs": int(len(ti))}))
"""


def build(path: Path, base: np.ndarray, tile_base: np.ndarray, n: int, batch: int = 50_000) -> dict:
    from imgdup.index.store import PanelRow, Store

    store = Store(path)
    t0 = time.perf_counter()
    with store.writer():
        store.check_model("0" * 64, "synthetic", base.shape[1])
        for b, s in enumerate(range(0, n, batch)):
            k = min(batch, n - s)
            rows = [PanelRow(f"d{b}", 1, "f1", f"p{i}", "panel", (0.0, 0.0, 100.0, 100.0), 64, 64, "", "", "x", 0, False)
                    for i in range(k)]
            store.add_batch([{"sha256": f"d{b}", "path": f"/synthetic/d{b}.pdf", "status": "ok", "panels": k}], rows,
                            like_real(base, k, seed=100 + b),
                            tiles=like_real(tile_base, 5 * k, seed=10_000 + b).reshape(k, 5, -1))
        written = time.perf_counter() - t0
        Path("/proc/self/clear_refs").write_text("5")       # reset the peak (VmHWM) to the current RSS
        before = proc_memory_mb()
        info = store.rebuild_index("ivf", on_disk=True)
        peak = proc_memory_mb()
    store.close()
    return {"panels": n, "write_seconds": written, "rebuild_seconds": info["seconds"],
            "rebuild_memory_mb": {"rss_before": before["VmRSS"], "peak_rss": peak["VmHWM"],
                                  "anon_before": before["RssAnon"], "anon_after": peak["RssAnon"]},
            "ivf": {k: info[k] for k in ("nlist", "nprobe", "recall")}, "tiles_ivf": info.get("tiles"),
            "files_mb": {f.name: f.stat().st_size / 2**20 for f in path.iterdir() if f.suffix in (".faiss", ".ivfdata")}}


def main() -> None:
    from imgdup.index.store import Store

    ap = argparse.ArgumentParser()
    ap.add_argument("--panels", type=int, default=1_000_000)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "on_disk.json"))
    args = ap.parse_args()
    n = 20_000 if args.smoke else args.panels
    _, base, tile_base = real_embeddings(args.smoke)
    work = Path(tempfile.mkdtemp(prefix="imgdup-ondisk-"))
    try:
        out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "command": "python benchmarks/on_disk.py " + ("--smoke" if args.smoke else f"--panels {n}"),
               "store": build(work / "s", base, tile_base, n)}
        np.savez(work / "q.npz", whole=like_real(base, 50, seed=2),
                 tiles=like_real(tile_base, 250, seed=5).reshape(50, 5, -1))
        found = {}
        for mode in ("mapped", "loaded"):
            if mode == "loaded":    # the same IVF (same sample, seed and nlist) rebuilt with its lists in memory
                store = Store(work / "s", create=False)
                with store.writer():
                    t = time.perf_counter()
                    store.rebuild_index("ivf", nlist=out["store"]["ivf"]["nlist"], on_disk=False)
                    out["in_memory_rebuild_seconds"] = time.perf_counter() - t
                store.close()
            res = subprocess.run([sys.executable, "-c", PROBE, str(work / "s"), str(work / "q.npz"),
                                  str(work / f"{mode}.npz")], capture_output=True, text=True, check=True)
            out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
            found[mode] = np.load(work / f"{mode}.npz")
        out["same_pairs"] = all(np.array_equal(found["mapped"][k], found["loaded"][k]) for k in ("qi", "ids", "ti", "tids"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
