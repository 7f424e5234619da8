"""The nightly job at scale: `imgdup screen --max-candidates N` of 10,000 new panels against a
store of 100,000, every candidate pair verified on real pixels; seconds per stage, candidate
pairs, verified pairs and peak memory (the screen's process, and the largest of its verification
processes).

    python benchmarks/nightly_screen.py [--store-dir DIR] [--store 100000] [--link-evidence]
                                        [--new 10000] [--caps 20 5] [--processes 0 1] [--smoke]

The store is the one of ``benchmarks/query_scale.py`` (the end-to-end corpus, ingested, padded
to 100,000 panels with synthetic vectors and real thumbnails and keypoints: 5.6 GB): reused from
``--store-dir`` when that folder holds one (``query_scale.py --keep DIR`` builds it), otherwise
built there (or in a temporary folder).  For each cap, ``--new`` panels drawn at random (seed 0,
the same for every cap) are marked unscreened and the rest screened, and ``imgdup.screen`` runs
in a fresh process (its peak memory is its own), once per ``--processes`` value.  ``--store N``
and ``--link-evidence`` build a bigger store (``query_scale.pad``: 10^6 panels fit this disk with
the padding's repeated evidence files hard-linked).  Writes docs/nightly_screen.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from query_scale import kept_or_built_store  # noqa: E402
from speed import machine  # noqa: E402


def mark_new(index: Path, n: int, seed: int = 0) -> int:
    """Mark ``n`` random panels unscreened and every other panel screened; returns n."""
    db = sqlite3.connect(index / "catalog.sqlite")
    # ordered: without ORDER BY, SQLite may scan the (screened, panel_id) index, and the draw
    # would then depend on what the previous run left marked
    ids = np.array([r[0] for r in db.execute("SELECT panel_id FROM panels ORDER BY panel_id")], np.int64)
    new = np.random.default_rng(seed).choice(ids, min(n, len(ids)), replace=False)
    with db:
        db.execute("UPDATE panels SET screened = 1")
        db.executemany("UPDATE panels SET screened = 0 WHERE panel_id = ?", [(int(i),) for i in new])
    db.close()
    return len(new)


def _children_rss_gb() -> float:
    """Resident memory of this process's children now (the verification workers), the largest."""
    import glob

    best = 0
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if ppid != os.getpid():
                continue
            with open(stat[:-4] + "status") as fh:
                best = max([best] + [int(x.split()[1]) for x in fh if x.startswith("VmRSS")])
        except (OSError, ValueError, IndexError):
            pass
    return best / 2**20


def one_screen(index: str, out_dir: str, cap: int, processes: int | None = None) -> dict:
    """``imgdup.screen`` of the unscreened panels (run in its own process; ``processes``: its
    verification processes, ``api.SCREEN_PROCESSES``)."""
    import imgdup.api as api
    from imgdup import screen

    api.SCREEN_PROCESSES = processes
    # sampled: getrusage(RUSAGE_CHILDREN) would report the parent's size at fork
    worker_peak, running = [0.0], [True]

    def sample() -> None:
        while running[0]:
            worker_peak[0] = max(worker_peak[0], _children_rss_gb())
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    res = screen(index, out_dir, max_candidates=cap or None)
    total = time.perf_counter() - t
    running[0] = False
    sampler.join()
    return {"max_candidates": cap or None, "verify_processes": processes or os.cpu_count(),
            "new_panels": res.panels, "seconds": round(total, 1),
            "stages": res.stages, "candidate_pairs": res.candidates, "pairs_reported": int(len(res.report)),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            # the largest verification process's (they run side by side; sampled every 0.5 s)
            "peak_worker_rss_gb": round(worker_peak[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store-dir", default=None, help="a query_scale.py --keep folder (built here when empty)")
    ap.add_argument("--store", type=int, default=100_000, help="panels in the store when it is built here")
    ap.add_argument("--link-evidence", action="store_true",
                    help="hard-link the padding's repeated evidence files (a 10^6 store on a small disk)")
    ap.add_argument("--new", type=int, default=10_000)
    ap.add_argument("--caps", type=int, nargs="+", default=[20, 5], help="max_candidates; 0: no cap")
    ap.add_argument("--processes", type=int, nargs="+", default=[0],
                    help="verification processes per screen, each value a run (0: one per core; 1: threads "
                         "in the screen's own process)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "nightly_screen.json"))
    args = ap.parse_args()
    size, new, caps = (3000, 300, [5]) if args.smoke else (args.store, args.new, args.caps)
    out: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                 "command": "python benchmarks/nightly_screen.py " + ("--smoke" if args.smoke else
                                                                      f"--store {size} --new {new} --caps {' '.join(map(str, caps))}"
                                                                      + (" --link-evidence" if args.link_evidence else "")
                                                                      + (f" --processes {' '.join(map(str, args.processes))}"
                                                                         if args.processes != [0] else ""))}
    with (nullcontext(args.store_dir) if args.store_dir else tempfile.TemporaryDirectory(prefix="imgdup-ns-")) as tmp:
        work = Path(tmp)
        index = work / "index"
        t = time.perf_counter()
        out.update(kept_or_built_store(work, size, args.smoke, link_evidence=args.link_evidence)[0])
        out["store_seconds"] = round(time.perf_counter() - t, 1)
        out["runs"] = []
        for cap in caps:
            for procs in args.processes:
                mark_new(index, new)
                reports = work / f"screens-cap{cap}"
                with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                    run = pool.submit(one_screen, str(index), str(reports), cap, procs or None).result()
                out["runs"].append(run)
                print(json.dumps(run), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
