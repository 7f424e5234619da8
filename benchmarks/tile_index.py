"""The sub-region (tile) index: built from the Parquet shards vs loaded from tiles.faiss.

    python benchmarks/tile_index.py [--panels 100000]

A synthetic store (random vectors; only sizes matter here) of N panels with 5 tile vectors each;
times Store.tile_index() when tiles.faiss is absent (read every shard, build) and when it is
present (load, catch up nothing).  Writes docs/tile_index.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from speed import machine  # noqa: E402


def main() -> None:
    from imgdup.index.store import PanelRow, Store

    ap = argparse.ArgumentParser()
    ap.add_argument("--panels", type=int, default=100_000)
    ap.add_argument("--out", default=str(ROOT / "docs" / "tile_index.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgdup-tiles-"))
    rng = np.random.default_rng(0)
    store = Store(work / "s")
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        for b in range(0, args.panels, 10_000):
            n = min(10_000, args.panels - b)
            rows = [PanelRow(f"d{b}", 1, "f", f"p{i}", "panel", (0.0, 0.0, 1.0, 1.0), 64, 64, "", "", "xref", 0, False)
                    for i in range(n)]
            store.add_batch([{"sha256": f"d{b}", "path": f"/x/{b}.pdf", "status": "ok", "panels": n}], rows,
                            rng.normal(0, 0.05, (n, 128)).astype(np.float32),
                            tiles=rng.normal(0, 0.05, (n, 5, 128)).astype(np.float32))
        store.save_index()
    store.close()
    tiles_file = work / "s" / "tiles.faiss"
    size_mb = tiles_file.stat().st_size / 2**20
    tiles_file.unlink()
    s = Store(work / "s", create=False)
    t = time.perf_counter()
    n = s.tile_index().ntotal
    from_shards = time.perf_counter() - t
    s.close()
    with Store(work / "s", create=False).writer() as w:
        w.save_index()
        w.close()
    s = Store(work / "s", create=False)
    t = time.perf_counter()
    s.tile_index()
    loaded = time.perf_counter() - t
    s.close()
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
           "command": f"python benchmarks/tile_index.py --panels {args.panels}", "panels": args.panels,
           "tile_vectors": int(n), "tiles_faiss_mb": round(size_mb, 1),
           "seconds_from_shards": round(from_shards, 3), "seconds_from_tiles_faiss": round(loaded, 3)}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
