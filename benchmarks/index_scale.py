"""Flat vs IVF index as the store grows: build time, the nprobe chosen for 0.99 pair recall,
query and screen latency, recall against exact search, memory.

    python benchmarks/index_scale.py [--sizes 100000 1000000] [--smoke]

Vectors: synthetic, drawn from a Gaussian with the mean and covariance of real panel embeddings
(the panels of ../shared/data/pdfs and the held-out test/validation images, embedded by the
shipped model), as in benchmarks/speed.py; the sub-region (tile) index likewise, ``N_TILES`` view
vectors a panel (5 until session 10) drawn like real view embeddings.  Writes docs/index_scale.json.
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

from speed import PDFS, like_real, machine, proc_memory_mb  # noqa: E402


DEFAULT_OUT = str(ROOT / "docs" / "index_scale.json")


def pair_set(qi: np.ndarray, ids: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(qi.tolist(), ids.tolist()))


def timed_ivf(vectors: np.ndarray, ids: np.ndarray, sample_queries: int, out: dict) -> tuple:
    """The store's IVF of these vectors and its nprobe choice (``choose_nprobe``), their seconds
    recorded in ``out`` as ivf_build_seconds / ivf_nprobe_choice_seconds."""
    from imgdup.index.search import array_chunks, choose_nprobe, new_ivf_index
    from imgdup.index.store import PAIR_RADIUS, PAIR_RECALL

    t = time.perf_counter()
    idx = new_ivf_index(vectors, ids)
    out["ivf_build_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    choice = choose_nprobe(idx, array_chunks(vectors, ids), len(ids), PAIR_RADIUS, PAIR_RECALL, queries=sample_queries)
    out["ivf_nprobe_choice_seconds"] = time.perf_counter() - t
    return idx, choice


def bench(base: np.ndarray, size: int, n_query: int = 50, screen_new: int = 1000, sample_queries: int = 300,
          tile_base: np.ndarray | None = None, exact_screen_max: int = 1000, tiles_exact: bool = True,
          screen_tiles: int = 0) -> dict:
    """Flat vs IVF at ``size`` panels; the flat (exact) screen runs on at most ``exact_screen_max``
    of the new panels (its seconds are for those; the IVF's screen recall is measured on them)."""
    from imgdup.index.search import array_chunks, choose_knn_nprobe, ivf_of, pairs_against
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
            if tile_base is None:       # not needed any more: free its memory before the IVF build
                idx = flat = None
            idx, choice = timed_ivf(xb, ids, sample_queries, out)
            out["ivf"] = {"nlist": int(ivf_of(idx).nlist), **choice}
            # the nprobe the store measures for capped searches of the panel IVF (Store.capped_nprobe)
            knn = choose_knn_nprobe(idx, array_chunks(xb, ids), size, PAIR_RADIUS, CAP, PAIR_RECALL,
                                    queries=sample_queries, max_nprobe=choice["nprobe"])
            out["ivf_capped"] = {k: knn[k] for k in ("nprobe", "recall", "k", "truth_pairs", "curve")}
        pairs_against(idx, q[:5], 1.0)       # warm up
        t = time.perf_counter()
        qi, mid, _ = pairs_against(idx, q, 1.0)
        q_s = time.perf_counter() - t
        screened = new if name == "ivf" else new[:exact_screen_max]
        t = time.perf_counter()
        si, sid, _ = pairs_against(idx, screened, 1.0)
        s_s = time.perf_counter() - t
        out[f"{name}_screen_panels"] = int(len(screened))
        runs[name] = (pair_set(qi, mid), pair_set(si, sid))
        out[f"{name}_query_seconds"] = q_s
        out[f"{name}_screen_seconds"] = s_s
    out["query_pairs_exact"] = len(runs["flat"][0])
    out["ivf_query_recall"] = len(runs["ivf"][0] & runs["flat"][0]) / max(1, len(runs["flat"][0]))
    ivf_on_exact = {p for p in runs["ivf"][1] if p[0] < exact_screen_max}
    out["ivf_screen_recall"] = len(ivf_on_exact & runs["flat"][1]) / max(1, len(runs["flat"][1]))
    if tile_base is not None:
        out["tiles"] = bench_tiles(tile_base, size, q, {"flat": flat, "ivf": idx}, sample_queries, exact=tiles_exact,
                                   whole_capped_nprobe=out["ivf_capped"]["nprobe"],
                                   screen=like_real(base, screen_tiles, seed=6) if screen_tiles else None)
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


CAP = 20    # tile_pairs' default: stored panels kept per query panel


def bench_tiles(tile_base: np.ndarray, size: int, q: np.ndarray, whole: dict, sample_queries: int,
                exact: bool = True, whole_capped_nprobe: int | None = None, screen: np.ndarray | None = None) -> dict:
    """The sub-region (tile) index of the same store, flat vs IVF: a query's three tile searches
    (``tile_pairs``: its tiles against whole panels, it against stored tiles, tiles against
    tiles; at most CAP stored panels per query panel), their seconds and the IVF's recall of the
    exact search's (query, panel) pairs.  Each stored panel has ``N_TILES`` views, a query
    searches with ``QUERY_VIEWS``, as shipped.  ``exact=False``: the IVF alone (a flat copy of
    10^7 and more tile vectors does not fit in this machine's memory beside it); the IVF's
    recall of tile pairs is then only the nprobe choice's."""
    from imgdup.index.search import (array_chunks, cap_per_query, choose_knn_nprobe, ivf_of, pairs_against, probes,
                                     tile_ids, tile_index_of, tile_pairs)
    from imgdup.index.store import PAIR_RADIUS, PAIR_RECALL, TILE_ID_BASE, TILE_RECALL_QUERIES
    from imgdup.model.api import N_TILES, QUERY_VIEWS

    n_t = N_TILES
    tv = like_real(tile_base, size * n_t, seed=4)
    tid = tile_ids(np.arange(size), n_t, TILE_ID_BASE)
    q_tiles = like_real(tile_base, len(q) * QUERY_VIEWS, seed=5).reshape(len(q), QUERY_VIEWS, -1)
    out: dict = {"tile_vectors": int(len(tv)), "views_stored": n_t, "views_searched": QUERY_VIEWS}
    flat = tile_index_of(tv.reshape(size, n_t, -1), np.arange(size), TILE_ID_BASE) if exact else None
    ivf, choice = timed_ivf(tv, tid, sample_queries, out)
    out["ivf"] = {"nlist": int(ivf_of(ivf).nlist), **{k: choice[k] for k in ("nprobe", "recall", "truth_pairs")}}
    # the nprobe the store measures for its capped searches (Store.capped_nprobe), as it does
    t = time.perf_counter()
    knn = choose_knn_nprobe(ivf, array_chunks(tv, tid), len(tid), PAIR_RADIUS, CAP * n_t, PAIR_RECALL,
                            queries=TILE_RECALL_QUERIES, max_nprobe=choice["nprobe"], group=TILE_ID_BASE, cap=CAP)
    out["ivf_knn_nprobe_choice_seconds"] = time.perf_counter() - t
    out["ivf_capped"] = {k: knn[k] for k in ("nprobe", "recall", "k", "truth_pairs", "queries", "curve")}
    del tv
    pairs = {}
    # "range": every pair within f <= 1, then the per-panel cap (the pre-k-NN way); "flat" / "ivf":
    # tile_pairs as shipped (k-NN per vector, same capped result); "ivf_capped": both IVFs searched
    # with the nprobes measured for capped searches, as query and screen search the store's
    runs = ((("range", flat, None), ("flat", flat, CAP)) if exact else ()) + \
        (("ivf", ivf, CAP), ("ivf_capped", ivf, CAP))
    for name, tidx, cap in runs:
        t = time.perf_counter()
        capped = name == "ivf_capped"
        with probes(tidx, knn["nprobe"] if capped else None), probes(whole["ivf"], whole_capped_nprobe if capped else None):
            qi, mid, f = tile_pairs(q, q_tiles, whole["ivf" if name == "ivf_capped" else "flat" if name == "range" else name],
                                    tidx, 1.0, TILE_ID_BASE, cap=cap, stored_views=n_t)
        if cap is None:
            out["range_pairs_before_cap"] = int(len(qi))
            qi, mid, f = cap_per_query(qi, mid, f, CAP)
        out[f"{name}_query_seconds"] = time.perf_counter() - t
        pairs[name] = pair_set(qi, mid)
    out["cap_per_panel"] = CAP
    if exact:
        out["query_pairs_exact"] = len(pairs["range"])
        out["knn_equals_range"] = pairs["flat"] == pairs["range"]
        out["ivf_query_recall"] = len(pairs["ivf"] & pairs["range"]) / max(1, len(pairs["range"]))
        out["ivf_capped_query_recall"] = len(pairs["ivf_capped"] & pairs["range"]) / max(1, len(pairs["range"]))
    out["ivf_capped_vs_ivf_pairs"] = len(pairs["ivf_capped"] & pairs["ivf"]) / max(1, len(pairs["ivf"]))
    if screen is not None:      # a nightly screen's searches for len(screen) new panels, as the store runs them
        s_tiles = like_real(tile_base, len(screen) * QUERY_VIEWS, seed=7).reshape(len(screen), QUERY_VIEWS, -1)
        t = time.perf_counter()
        with probes(ivf, knn["nprobe"]), probes(whole["ivf"], whole_capped_nprobe):
            qi, mid, _ = tile_pairs(screen, s_tiles, whole["ivf"], ivf, 1.0, TILE_ID_BASE, cap=CAP, stored_views=n_t)
        tile_s = time.perf_counter() - t
        t = time.perf_counter()
        wi, wid, _ = pairs_against(whole["ivf"], screen, 1.0)       # the whole-panel range search, as screen runs it
        out["screen_new"] = {"panels": int(len(screen)), "subregion_seconds": tile_s,
                             "whole_range_seconds": time.perf_counter() - t, "subregion_pairs": int(len(qi)),
                             "whole_range_pairs": int(len(wi))}
    return out


def real_embeddings(smoke: bool) -> tuple[list, np.ndarray, np.ndarray]:
    """(real panels, their embeddings, their tile embeddings): the panels of ../shared/data/pdfs
    and the held-out test / validation images, embedded by the shipped model."""
    from imgdup import load_model
    from imgdup.demo.generate import shared_test_images
    from imgdup.pipeline import extract_many

    model = load_model()
    pdfs = sorted(glob.glob(str(PDFS / "*.pdf")))[: 2 if smoke else None]
    real = [p.pixels for r in extract_many(pdfs) if not r.error for p in r.panels]
    real += shared_test_images(splits=("test", "val"))
    base = model.embed(real)
    return real, base, model.embed_tiles(real).reshape(-1, base.shape[1])


def bench_out_of_core(base: np.ndarray, size: int, n_query: int = 50, screen_new: int = 1000,
                      sample_queries: int = 300, slice_size: int = 1_000_000) -> dict:
    """The IVF with on-disk inverted lists (``build_ivf(lists_file=...)``, what ``imgdup reindex
    --on-disk`` builds) over ``size`` vectors that are never all in memory: generated slice by
    slice from fixed seeds, so each pass (training sample, adds, nprobe choice, exact ground
    truth) regenerates the same vectors.  The exact (flat) search is timed slice by slice (the
    same scan as one flat index).  Records seconds, peak memory of the build, the lists file's
    size, query / screen seconds and recall against the exact search."""
    import tempfile

    import faiss

    from imgdup.index.search import build_ivf, choose_nprobe, ivf_of, nearest_within, pairs_against, range_candidates
    from imgdup.index.store import PAIR_RADIUS, PAIR_RECALL

    dim = base.shape[1]

    def chunks():
        for s in range(0, size, slice_size):
            k = min(slice_size, size - s)
            yield np.arange(s, s + k, dtype=np.int64), like_real(base, k, seed=7_000 + s // slice_size)

    def keys(qi: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(query, stored id) pairs as sorted int64 keys (tens of millions of pairs at 10^7:
        a Python set of them would not fit)."""
        return np.unique(qi.astype(np.int64) * size + ids)

    def exact(queries: np.ndarray) -> tuple[np.ndarray, float]:
        flat, found, secs = faiss.IndexFlat(dim, faiss.METRIC_L1), [], 0.0
        for ids, v in chunks():
            flat.reset()
            flat.add(v)
            t = time.perf_counter()
            qi, j = range_candidates(flat, queries, PAIR_RADIUS)
            secs += time.perf_counter() - t
            found.append(qi.astype(np.int64) * size + ids[j])
        return np.unique(np.concatenate(found)), secs

    q, new = like_real(base, n_query, seed=2), like_real(base, screen_new, seed=3)
    out: dict = {"store_panels": size, "query_panels": n_query, "screen_new_panels": screen_new,
                 "slice": slice_size}
    with tempfile.TemporaryDirectory(prefix="imgdup-ooc-") as tmp:
        Path("/proc/self/clear_refs").write_text("5")       # peak memory of the build alone
        before = proc_memory_mb()
        t = time.perf_counter()
        idx = build_ivf(chunks, size, dim, lists_file=Path(tmp) / "index.ivfdata")
        out["ivf_build_seconds"] = time.perf_counter() - t
        out["build_memory_mb"] = {"rss_before": before["VmRSS"], "peak_rss": proc_memory_mb()["VmHWM"],
                                  "anon_after": proc_memory_mb()["RssAnon"]}
        out["lists_file_gb"] = (Path(tmp) / "index.ivfdata").stat().st_size / 2**30
        out["vectors_gb"] = size * dim * 4 / 2**30
        t = time.perf_counter()
        choice = choose_nprobe(idx, chunks, size, PAIR_RADIUS, PAIR_RECALL, queries=sample_queries)
        out["ivf_nprobe_choice_seconds"] = time.perf_counter() - t
        out["ivf"] = {"nlist": int(ivf_of(idx).nlist), **choice}
        faiss.write_index(idx, str(Path(tmp) / "index.faiss"))
        del idx
        t = time.perf_counter()
        idx = faiss.read_index(str(Path(tmp) / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
        out["open_seconds"] = time.perf_counter() - t
        ivf_of(idx).nprobe = choice["nprobe"]
        pairs_against(idx, q[:5], PAIR_RADIUS)       # warm up
        for name, queries in (("query", q), ("screen", new)):
            t = time.perf_counter()
            qi, mid, _ = pairs_against(idx, queries, PAIR_RADIUS)
            out[f"ivf_{name}_seconds"] = time.perf_counter() - t
            got = keys(qi, mid)
            del qi, mid
            truth, flat_s = exact(queries)
            out[f"flat_{name}_seconds"] = flat_s
            out[f"{name}_pairs_exact"] = int(len(truth))
            out[f"ivf_{name}_recall"] = float(len(np.intersect1d(got, truth, assume_unique=True)) / max(1, len(truth)))
            del got, truth
            t = time.perf_counter()         # what `--max-candidates 20` asks of the index instead
            nearest_within(idx, queries, PAIR_RADIUS, 20)
            out[f"ivf_{name}_seconds_cap20"] = time.perf_counter() - t
        out["memory_mb"] = proc_memory_mb()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--tiles-max", type=int, default=1_000_000,
                    help="measure the tile index only up to this store size (10^7 panels: 5 x 10^7 tile vectors)")
    ap.add_argument("--tiles-exact-max", type=int, default=1_000_000,
                    help="compare the tile IVF with flat / range search only up to this store size")
    ap.add_argument("--exact-screen-max", type=int, default=1000,
                    help="new panels screened by the exact flat search (the rest only by the IVF)")
    ap.add_argument("--out-of-core", type=int, nargs="*", default=[],
                    help="also these sizes with the on-disk IVF built out of core (e.g. 10000000)")
    ap.add_argument("--screen-tiles", type=int, default=0,
                    help="also time a nightly screen's searches (panels and sub-regions, capped) for this many new panels")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    real, base, tile_base = real_embeddings(args.smoke)
    sizes = [5000] if args.smoke else args.sizes
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/index_scale.py " + ("--smoke" if args.smoke else
                                                              "--sizes " + " ".join(map(str, sizes))
                                                              + f" --tiles-max {args.tiles_max}"
                                                              f" --tiles-exact-max {args.tiles_exact_max}"
                                                              f" --exact-screen-max {args.exact_screen_max}"
                                                              + (f" --screen-tiles {args.screen_tiles}" if args.screen_tiles else "")
                                                              + (" --out-of-core " + " ".join(map(str, args.out_of_core))
                                                                 if args.out_of_core else "")
                                                              + (f" --out {args.out}" if args.out != DEFAULT_OUT else "")),
           "synthetic_from_real_panels": len(real), "runs": []}
    for n in sizes:
        out["runs"].append(bench(base, n, screen_new=100 if args.smoke else 1000,
                                 sample_queries=50 if args.smoke else 300,
                                 tile_base=tile_base if n <= args.tiles_max else None,
                                 exact_screen_max=args.exact_screen_max,
                                 tiles_exact=n <= args.tiles_exact_max, screen_tiles=args.screen_tiles))
        print(json.dumps(out["runs"][-1]), flush=True)
    ooc = [(20_000, 6_000)] if args.smoke else [(n, 1_000_000) for n in args.out_of_core]
    if ooc:
        out["out_of_core"] = []
    for n, piece in ooc:
        out["out_of_core"].append(bench_out_of_core(base, n, screen_new=100 if args.smoke else 1000,
                                                    sample_queries=50 if args.smoke else 300, slice_size=piece))
        print(json.dumps(out["out_of_core"][-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
