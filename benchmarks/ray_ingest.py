"""Local vs Ray ingest of the same generated corpus: seconds, and whether the stores are equal;
then the screen of the local store (every pair) verified locally vs in Ray tasks.

    python benchmarks/ray_ingest.py [--corpora 3] [--cpus 2]     # -> docs/ray_ingest.json

The Ray run uses a local cluster (``ray.init(num_cpus=CPUS)``) on this machine: it shows the
engine's overhead and that it gives the same store, not a cluster's speed-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpora", type=int, default=3, help="generated corpora of 6 papers + a manuscript")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "ray_ingest.json"))
    args = ap.parse_args()
    import ray

    from imgdup import ingest, load_model
    from imgdup.demo.generate import build_corpus, shared_test_images
    from imgdup.index.store import Store

    work = Path(tempfile.mkdtemp(prefix="imgdup-ray-"))
    images = shared_test_images(splits=("test", "val"))
    for k in range(args.corpora):       # one corpus holds at most 6 papers (distinct source images)
        build_corpus(images, work / f"c{k}", n_papers=6, seed=5 + k)
    pdfs = sorted(str(p) for p in work.rglob("*.pdf"))
    model = load_model()
    out: dict = {"documents": len(pdfs), "machine": f"{platform.processor() or platform.machine()}, "
                 f"{__import__('os').cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
                 "command": f"python benchmarks/ray_ingest.py --corpora {args.corpora} --cpus {args.cpus}"}
    t = time.time()
    s = ingest(pdfs, work / "local", model=model, workers=args.cpus)
    out["local_seconds"], out["panels"] = round(time.time() - t, 2), s.panels
    t = time.time()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    out["ray_init_seconds"] = round(time.time() - t, 2)
    t = time.time()
    s2 = ingest(pdfs, work / "ray", model=model, engine="ray")
    out["ray_seconds"] = round(time.time() - t, 2)
    from imgdup import screen

    t = time.time()
    r1 = screen(work / "local", work / "out-local", all_pairs=True, keep_rejected=True).report
    out["screen_local_seconds"] = round(time.time() - t, 2)
    t = time.time()
    r2 = screen(work / "local", work / "out-ray", all_pairs=True, keep_rejected=True, engine="ray").report
    out["screen_ray_seconds"] = round(time.time() - t, 2)
    out["screen_pairs"], out["screen_verified"] = int(len(r1)), int(r1.verified.sum())
    cols = ["query_panel_id", "match_panel_id", "verified", "confidence", "verify_inliers", "reject_reason"]
    out["same_screen_report"] = bool(r1[cols].equals(r2[cols]))
    ray.shutdown()
    a, b = Store(work / "local", create=False), Store(work / "ray", create=False)
    (ia, va), (ib, vb) = a.vectors(), b.vectors()
    out["same_panels"] = bool(s2.panels == s.panels and np.array_equal(np.sort(ia), np.sort(ib)))
    out["max_vector_difference"] = float(np.abs(va[np.argsort(ia)] - vb[np.argsort(ib)]).max())
    a.close(), b.close()
    shutil.rmtree(work)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
