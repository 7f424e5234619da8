"""The whole `imgdup query` path for a ~50-panel manuscript against a store of 100,000 panels,
with verification on real pixels, and how many planted duplicates it still finds.

    python benchmarks/query_scale.py [--store 100000] [--caps 0 50 20 10 5] [--smoke]

The store: a real corpus of 6 generated papers (held-out real images, planted re-use, the
end-to-end benchmark's corpus: ``--papers 6 --seed 11``) ingested with ``imgdup ingest``, padded
to ``--store`` panels with synthetic panels: a vector and 6 view ("tile") vectors each, drawn
like real embeddings (as in benchmarks/speed.py; each view like its own real ones), and a real
thumbnail each (random crops of training-split images, which the queries never use), so that
every candidate pair is verified on real pixels.
Padding documents hold 100 panels each, placed as figure panels (page 2, inside the text block,
each its own content hash); one Parquet shard per 1,000 panels.

Then the corpus's manuscript is queried with ``max_candidates`` = each of ``--caps`` (0: no
cap), after one warm-up query: per stage seconds (``QueryResult.seconds``), candidate pairs,
verified pairs, and panel-level recall / precision of the pairs that involve the manuscript
(``score_report``); and a bigger submission (4 more generated papers from the same image pool,
about 50 panels, queried together; not scored) with each non-zero cap, and searched only (no
verification or copy-move, with and without the sub-region search: the query as the store issue
defines it).  ``--keep DIR`` reuses a store built there before.  Writes docs/query_scale.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from index_scale import real_embeddings  # noqa: E402
from speed import like_real, machine, real_crops  # noqa: E402


def thumb_pool(n: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """(PNG thumbnail, packed keypoints) of ``real_crops``, as ingest stores them: real pixels
    that no query panel shares."""
    from imgdup.pipeline.verify import pack_keypoints, thumbnail

    return [(cv2.imencode(".png", th)[1].tobytes(), pack_keypoints(th))
            for th in (thumbnail(im) for im in real_crops(n, seed))]


def pad(index: Path, n: int, base: np.ndarray, tile_base: np.ndarray, thumbs: list[tuple[bytes, bytes]],
        model, link_evidence: bool = False) -> float:
    """Add ``n`` synthetic panels (100 per document, 1,000 per shard) to the store; seconds.
    ``link_evidence``: a shard whose evidence file is byte for byte that of an earlier one (the
    thumbnail pool repeats every ``len(thumbs)`` panels) gets a hard link to it instead of a
    copy, so that 10^6 panels fit on this machine's disk (46 KB of evidence a panel); its reads
    then come from the page cache (the cold-read cost is measured apart: docs/BENCHMARKS.md)."""
    import os

    from imgdup.index.store import PanelRow, Store, _evidence_file

    store = Store(index)
    t = time.perf_counter()
    linked: dict[int, Path] = {}
    with store.writer():
        store.check_model(model.sha256, model.card.name, base.shape[1])
        for s in range(0, n, 1000):
            k = min(1000, n - s)
            docs = [{"sha256": f"pad-{s + d:09d}", "path": f"padding/{s + d}.pdf", "status": "ok"}
                    for d in range(0, k, 100)]
            # placed like a figure panel (page 2, inside the text block) with its own content hash:
            # with an empty hash and a box at the page's corner, every pair of padding panels
            # looked like the same publisher logo in two documents and was set aside unverified
            rows = [PanelRow(f"pad-{s + i - i % 100:09d}", 2, "p2-f1", f"p2-f1-{i % 100}", "panel",
                             (100.0, 150.0, 300.0, 350.0), 256, 256, f"pad-{s + i:09d}", "1", "xref", 0, False)
                    for i in range(k)]
            tiles = np.stack([like_real(tile_base[:, v], k, seed=10_000_000 + 10 * s + v)
                              for v in range(tile_base.shape[1])], axis=1)   # each view like its real ones
            ev = [thumbs[(s + i) % len(thumbs)] for i in range(k)]
            store.add_batch(docs, rows, like_real(base, k, seed=s), [t for t, _ in ev], tiles=tiles,
                            keypoints=[kp for _, kp in ev])
            if link_evidence and k == 1000 and len(thumbs) % 1000 == 0:
                shard = store.db.execute("SELECT file FROM shards ORDER BY shard DESC LIMIT 1").fetchone()[0]
                ev_file = _evidence_file(index / "embeddings" / shard)
                first = linked.setdefault(s % len(thumbs), ev_file)
                if first != ev_file:
                    os.link(first, ev_file.with_suffix(".link"))
                    os.replace(ev_file.with_suffix(".link"), ev_file)
        store.save_index()
    store.close()
    return time.perf_counter() - t


def build_store(work: Path, size: int, smoke: bool, model, link_evidence: bool = False) -> tuple[dict, pd.DataFrame]:
    """The end-to-end corpus (``--papers 6 --seed 11``; 2 papers for a smoke run) ingested into
    ``work``/index and padded to ``size`` panels (``pad``); returns (facts for the JSON, the
    corpus's planted truth)."""
    from imgdup import ingest
    from imgdup.demo.generate import build_corpus, shared_test_images
    from imgdup.index.store import Store

    truth = build_corpus(shared_test_images(splits=("test", "val")), work, n_papers=2 if smoke else 6, seed=11)
    index = work / "index"
    out: dict = {}
    t = time.perf_counter()
    ingest(sorted((work / "corpus").glob("*.pdf")), index, model=model)
    out["ingest_corpus_seconds"] = time.perf_counter() - t
    real_panels = Store(index, create=False).count()
    _, base, tile_base = real_embeddings(smoke)
    tile_base = tile_base.reshape(len(base), -1, base.shape[1])
    pool = thumb_pool(200 if smoke else 2000)
    out["pad_seconds"] = pad(index, size - real_panels, base, tile_base, pool, model, link_evidence)
    out["store"] = {"panels": size, "real_panels": real_panels, "padding_thumbnails": len(pool),
                    "evidence_hard_linked": link_evidence,
                    "bytes_on_disk": sum(f.stat().st_size for f in index.rglob("*") if f.is_file())}
    return out, truth


def kept_or_built_store(work: Path, size: int, smoke: bool, model=None,
                        link_evidence: bool = False) -> tuple[dict, pd.DataFrame]:
    """The store of an earlier run in ``work`` (its facts: panels, and where it was reused from;
    the truth it wrote), or ``build_store`` there (``model``: loaded when None)."""
    index = work / "index"
    if (index / "catalog.sqlite").exists():
        from imgdup.index.store import Store

        facts = {"store": {"panels": Store(index, create=False).count(), "reused": str(work)}}
        return facts, pd.read_json(work / "truth.json", orient="records")
    from imgdup import load_model

    work.mkdir(parents=True, exist_ok=True)
    return build_store(work, size, smoke, model or load_model(), link_evidence)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=int, default=100_000, help="panels in the store, padding included")
    ap.add_argument("--caps", type=int, nargs="+", default=[0, 50, 20, 10, 5], help="max_candidates; 0: no cap")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "query_scale.json"))
    ap.add_argument("--keep", default=None, help="build the store and corpus in this (new) folder and keep them, "
                    "or reuse them when it holds a store built so (or by nightly_screen.py --store-dir)")
    args = ap.parse_args()
    from imgdup import load_model, query
    from imgdup.demo.generate import build_corpus, score_report, shared_test_images

    model = load_model()
    size, caps = (3000, [0, 10]) if args.smoke else (args.store, args.caps)
    out: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                 "command": "python benchmarks/query_scale.py " + ("--smoke" if args.smoke else
                                                                   f"--store {size} --caps {' '.join(map(str, caps))}")}
    with (nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="imgdup-qs-")) as tmp:
        work = Path(tmp)
        index = work / "index"
        built, truth = kept_or_built_store(work, size, args.smoke, model)
        out.update(built)
        # the scored manuscript, and a bigger submission: 4 more generated papers from the same
        # image pool (so with real re-use of stored panels; not scored), queried together
        if not (work / "big" / "corpus").exists():
            build_corpus(shared_test_images(splits=("test", "val")), work / "big", n_papers=1 if args.smoke else 4,
                         seed=12, manuscript=False)
        subs = {"manuscript": [work / "manuscript" / "manuscript.pdf"],
                "submission": sorted((work / "big" / "corpus").glob("*.pdf"))}
        query(subs["manuscript"], index, model=model)       # warm-up: page cache, OpenCV / torch start-up
        out["runs"] = []
        for name, docs in subs.items():
            for cap in caps if name == "manuscript" else [c for c in caps if c]:
                t = time.perf_counter()
                res = query(docs, index, model=model, keep_rejected=True, max_candidates=cap or None)
                total = time.perf_counter() - t
                rep = res.report
                kept = rep[rep.verified].reset_index(drop=True)
                run = {"query": name, "max_candidates": cap or None, "seconds": total, "stages": res.seconds,
                       "extract_seconds_in_workers": round(sum(r.seconds for r in res.documents), 3),
                       "panels": sum(p.kind != "figure" for r in res.documents for p in r.panels),
                       "figures_and_panels": sum(len(r.panels) for r in res.documents),
                       "candidate_rows": int((rep.via != "copy-move").sum()), "verified_rows": int(len(kept))}
                if name == "manuscript":
                    sc = score_report(kept, truth, involving="manuscript.pdf")
                    run.update({k: v for k, v in sc.items() if k != "fp_row_index"})
                out["runs"].append(run)
                print(json.dumps(run), flush=True)
        # the query as the store issue defines it: FAISS range search and exact re-scoring, no
        # verification or copy-move (its report is every candidate); with and without sub-regions
        for partial in (False, True):
            t = time.perf_counter()
            res = query(subs["submission"], index, model=model, verify=False, copy_move=False, partial=partial)
            run = {"query": "submission", "mode": "search only" + (" with sub-regions" if partial else ""),
                   "max_candidates": None, "seconds": time.perf_counter() - t, "stages": res.seconds,
                   "candidate_rows": int(len(res.report))}
            out["runs"].append(run)
            print(json.dumps(run), flush=True)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
