"""Candidate pairs: a FAISS range search, then exact weighted-L1 re-scoring.

On alpha-scaled vectors f(I, J) = ||a - b||_1.  The store's index uses METRIC_L1 (exact range
search on CPU since faiss 1.15).  An index with METRIC_L2 (e.g. a GPU index) also works: since
||x||_2 <= ||x||_1, a range search with squared radius t^2 loses no pair with f <= t - but for our
embeddings it is not selective (their L2 distances are mostly below 1 while their L1 distances
are not; measured in docs/BENCHMARKS.md), so it is only a fallback.  Hits are always re-scored
with the exact L1, keeping exactly the pairs with f <= t.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np


def range_candidates(index: faiss.Index, queries: np.ndarray, threshold: float,
                     chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(query row, index id) of every stored vector within the threshold of each query."""
    if isinstance(index, (GpuIndex, DeltaIndex)):
        return index.range_candidates(queries, threshold)
    qi, ids = [], []
    q = np.ascontiguousarray(queries, dtype=np.float32)
    radius = float(threshold) if index.metric_type == faiss.METRIC_L1 else float(threshold) ** 2
    for s in range(0, len(q), chunk):
        # FAISS keeps results strictly below the radius: widen by a hair, re-scoring is exact
        lims, _, labels = index.range_search(q[s:s + chunk], radius * (1 + 1e-5) + 1e-7)
        counts = np.diff(lims).astype(np.int64)
        qi.append(np.repeat(np.arange(s, s + len(counts)), counts))
        ids.append(labels.astype(np.int64))
    if not qi:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(qi), np.concatenate(ids)


def knn_range(search, queries: np.ndarray, threshold: float, k: int = 64, max_k: int = 2048
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A range search made of exact k-NN searches (for indexes without range search: GPU).

    ``search(q, k)`` returns (distances, labels) like ``faiss.Index.search``; ``threshold`` is in
    its units (L1 here).  k doubles, up to ``max_k``, for the queries whose k-th
    neighbour is still within the threshold, so nothing within it is lost; returns (query row,
    label, unresolved query rows): the unresolved ones have more than ``max_k`` neighbours within
    the threshold and must go to a real range search."""
    q = np.ascontiguousarray(queries, np.float32)
    out_q, out_l = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    todo = np.arange(len(q))
    while len(todo):
        d, lab = search(q[todo], k)
        within = (d <= threshold * (1 + 1e-5) + 1e-7) & (lab >= 0)
        full = within[:, -1]                        # the k-th is within: there may be more
        rows, cols = np.nonzero(within & ~full[:, None])
        out_q.append(todo[rows]), out_l.append(lab[rows, cols].astype(np.int64))
        todo = todo[full]
        if k >= max_k:
            break
        k = min(2 * k, max_k)
    return np.concatenate(out_q), np.concatenate(out_l), todo


class GpuIndex:
    """A store's flat index copied to the GPU (faiss-gpu): exact L1 k-NN there, range queries by
    ``knn_range``; the few queries with more than the GPU's largest k (2048) neighbours within
    the threshold, and the re-scoring reads, use the CPU index, so results are those of the CPU."""

    MAX_K = 2048

    def __init__(self, cpu_index: faiss.Index, device: int = 0) -> None:
        n, d = cpu_index.ntotal, cpu_index.d
        if isinstance(cpu_index, faiss.IndexIDMap2):
            self.ids = ids_of(cpu_index)
            vecs = cpu_index.index.reconstruct_n(0, n) if n else np.zeros((0, d), np.float32)
        else:
            self.ids = np.arange(n, dtype=np.int64)
            vecs = cpu_index.reconstruct_n(0, n) if n else np.zeros((0, d), np.float32)
        self.cpu, self.ntotal, self.d = cpu_index, n, d
        self.res = faiss.StandardGpuResources()
        flat = faiss.IndexFlat(d, faiss.METRIC_L1)
        flat.add(np.ascontiguousarray(vecs, np.float32))
        self.gpu = faiss.index_cpu_to_gpu(self.res, device, flat)

    def range_candidates(self, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        if self.ntotal == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        qi, rows, left = knn_range(self.gpu.search, queries, threshold, k=min(64, self.ntotal),
                                   max_k=min(self.MAX_K, self.ntotal))
        ids = self.ids[rows]
        if len(left):
            lq, lid = range_candidates(self.cpu, np.asarray(queries, np.float32)[left], threshold)
            qi, ids = np.concatenate([qi, left[lq]]), np.concatenate([ids, lid])
        return qi, ids

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k-NN on the GPU: (distances, stored ids; -1 where fewer than k)."""
        d, rows = self.gpu.search(np.ascontiguousarray(queries, np.float32), k)
        return d, np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        return self.cpu.reconstruct_batch(ids)


class DeltaIndex:
    """A read-only index memory-mapped from disk (an IVF whose inverted lists stay in the file:
    ``faiss.IO_FLAG_MMAP``) plus an in-memory flat index of the vectors added since it was
    written.  Searched as one; adds go to the delta; ``imgdup reindex`` folds the delta in."""

    def __init__(self, main: faiss.Index) -> None:
        self.main, self.d, self.metric_type = main, main.d, main.metric_type
        self.delta = faiss.IndexIDMap2(faiss.IndexFlat(main.d, main.metric_type))

    @property
    def ntotal(self) -> int:
        return self.main.ntotal + self.delta.ntotal

    def add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.delta.add_with_ids(np.ascontiguousarray(x, np.float32), np.asarray(ids, np.int64))

    def range_candidates(self, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        qi, ids = range_candidates(self.main, queries, threshold)
        if self.delta.ntotal:
            dq, did = range_candidates(self.delta, queries, threshold)
            qi, ids = np.concatenate([qi, dq]), np.concatenate([ids, did])
        return qi, ids

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d, lab = self.main.search(queries, k)
        if self.delta.ntotal:
            d2, lab2 = self.delta.search(queries, min(k, self.delta.ntotal))
            d, lab = np.concatenate([d, d2], 1), np.concatenate([lab, lab2], 1)
            d = np.where(lab >= 0, d, np.inf)
            order = np.argsort(d, axis=1, kind="stable")[:, :k]
            d, lab = np.take_along_axis(d, order, 1), np.take_along_axis(lab, order, 1)
        return d, lab

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        out = np.empty((len(ids), self.d), np.float32)
        in_delta = np.isin(ids, ids_of(self.delta))
        if (~in_delta).any():
            out[~in_delta] = self.main.reconstruct_batch(ids[~in_delta])
        if in_delta.any():
            out[in_delta] = self.delta.reconstruct_batch(ids[in_delta])
        return out


def gpu_available() -> bool:
    """faiss was built with GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def on_device(index: faiss.Index, device: str = "auto") -> "faiss.Index | GpuIndex":
    """The index to search with: a flat index goes to the GPU for device "cuda" (or "auto" with
    a GPU and faiss-gpu); IVF indexes stay on the CPU (their range search is exact there)."""
    if device == "cpu" or ivf_of(index) is not None:       # (a DeltaIndex always wraps an IVF)
        return index
    if not gpu_available():
        if device == "cuda":
            raise RuntimeError("--device cuda: faiss has no GPU support here (pip install faiss-gpu, see README)")
        return index
    return GpuIndex(index)


def l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise weighted L1 (the vectors are already alpha-scaled)."""
    return np.abs(a - b).sum(axis=1, dtype=np.float64)


def pairs_within(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j of one set with f <= threshold: (i, j, f)."""
    if len(vectors) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    idx = faiss.IndexFlat(vectors.shape[1], faiss.METRIC_L1)
    idx.add(np.ascontiguousarray(vectors, np.float32))
    i, j = range_candidates(idx, vectors, threshold)
    keep = i < j
    i, j = i[keep], j[keep]
    f = l1(vectors[i], vectors[j])
    ok = f <= threshold
    return i[ok], j[ok], f[ok]


RESCORE_BATCH = 1_000_000   # candidates re-scored at once (their vectors: 0.5 GB)


def pairs_against(index: faiss.Index, queries: np.ndarray, threshold: float, chunk: int = 256
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries against a stored index: (query row, stored id, f) for f <= threshold.

    Searched ``chunk`` queries at a time and re-scored RESCORE_BATCH candidates at a time, so
    that memory stays bounded when every query has tens of thousands of stored vectors within
    the threshold (10^7 panels: 256 queries would otherwise read back 5 GB of vectors at once).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out_q, out_id, out_f = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for s in range(0, len(q), chunk):
        qi, ids = range_candidates(index, q[s:s + chunk], threshold)
        for b in range(0, len(ids), RESCORE_BATCH):
            bq, bid = qi[b:b + RESCORE_BATCH], ids[b:b + RESCORE_BATCH]
            f = l1(q[s:s + chunk][bq], index.reconstruct_batch(bid))
            ok = f <= threshold
            out_q.append(bq[ok] + s), out_id.append(bid[ok]), out_f.append(f[ok])
    return np.concatenate(out_q), np.concatenate(out_id), np.concatenate(out_f)


def brute_force_pairs(a: np.ndarray, b: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Reference for tests: every (row of a, row of b) with L1 <= threshold, by NumPy."""
    out = set()
    for i in range(len(a)):
        d = np.abs(b - a[i]).sum(axis=1, dtype=np.float64)
        out.update((i, int(j)) for j in np.flatnonzero(d <= threshold))
    return out


def nearest_within(index: "faiss.Index | GpuIndex", queries: np.ndarray, threshold: float, k: int,
                   chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k nearest stored vectors of each query (L1 index, flat or IVF, CPU or ``GpuIndex``),
    those within the threshold, exactly re-scored: (query row, stored id, f).  Unlike a range
    search, its cost does not grow with the number of stored vectors within the threshold."""
    q = np.ascontiguousarray(queries, np.float32)
    out_q, out_id, out_f = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    k = min(int(k), index.ntotal)
    if k <= 0 or len(q) == 0:
        return out_q[0], out_id[0], out_f[0]
    for s in range(0, len(q), chunk):
        d, lab = index.search(q[s:s + chunk], k)
        rows, cols = np.nonzero((lab >= 0) & (d <= threshold * (1 + 1e-5) + 1e-7))
        if len(rows) == 0:
            continue
        ids = lab[rows, cols].astype(np.int64)
        f = l1(q[s:s + chunk][rows], index.reconstruct_batch(ids))
        ok = f <= threshold
        out_q.append(rows[ok] + s), out_id.append(ids[ok]), out_f.append(f[ok])
    return np.concatenate(out_q), np.concatenate(out_id), np.concatenate(out_f)


def cap_per_query(qi: np.ndarray, ids: np.ndarray, f: np.ndarray, cap: int | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per (query, stored id), with its smallest f; at most ``cap`` ids per query,
    lowest f first (None: no cap)."""
    order = np.lexsort((f, ids, qi))                 # by query, stored id, then f
    qi, ids, f = qi[order], ids[order], f[order]
    first = np.ones(len(qi), bool)
    first[1:] = (qi[1:] != qi[:-1]) | (ids[1:] != ids[:-1])
    qi, ids, f = qi[first], ids[first], f[first]      # the smallest f of each pair
    order = np.lexsort((f, qi))
    qi, ids, f = qi[order], ids[order], f[order]
    if cap is None:
        return qi, ids, f
    rank = np.arange(len(qi)) - np.searchsorted(qi, qi, side="left")
    keep = rank < cap
    return qi[keep], ids[keep], f[keep]


TILE_CAP = 20       # stored panels kept per query panel by the sub-region search unless told otherwise


def tile_pairs(q_whole: np.ndarray, q_tiles: np.ndarray, whole_index: faiss.Index, tile_index: faiss.Index,
               threshold: float, tile_base: int, cap: int | None = TILE_CAP, stored_views: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates through sub-regions, for partial re-use: (query row, stored panel id, f).

    Three searches: the query's tiles against whole panels (the stored panel is a crop of the
    query), the query against stored tiles (the query is a crop), and tiles against tiles (a
    shifted field of view).  ``tile_index`` ids are ``panel_id * tile_base + tile``.  f is the
    smallest over the three; at most ``cap`` stored panels per query row, lowest f first, so
    the number of candidates to verify stays bounded.  With a cap, each search is a k-NN search
    (k = cap for whole panels, cap x views per stored panel for tiles): the same result as a range
    search capped afterwards (a panel outside a vector's k nearest has ``cap`` panels nearer),
    at a cost that does not grow with the number of vectors within the threshold.  ``cap=None``:
    range searches, every pair.  ``q_tiles``: the views each query panel searches with;
    ``stored_views``: the most views a panel has in ``tile_index`` (default: as many as a query
    panel searches with), which sets k for the tile searches (cap x stored_views).
    """
    n, n_t, dim = q_tiles.shape
    flat = np.ascontiguousarray(q_tiles.reshape(-1, dim))

    def search(index, queries, k):
        return pairs_against(index, queries, threshold) if cap is None else \
            nearest_within(index, queries, threshold, k)

    parts = []
    if whole_index.ntotal and len(flat):
        qi, ids, f = search(whole_index, flat, cap)
        parts.append((qi // n_t, ids, f))
    if tile_index.ntotal and n:
        k = None if cap is None else cap * max(n_t, stored_views or 0)
        qi, ids, f = search(tile_index, q_whole, k)
        parts.append((qi, ids // tile_base, f))
        qi, ids, f = search(tile_index, flat, k)
        parts.append((qi // n_t, ids // tile_base, f))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return cap_per_query(*(np.concatenate([p[i] for p in parts]) for i in range(3)), cap)


def tile_ids(ids: np.ndarray, tiles: int, tile_base: int) -> np.ndarray:
    """Index ids of the ``tiles`` sub-regions of each panel in ``ids``: ``id * tile_base + tile``."""
    return (np.asarray(ids, np.int64)[:, None] * tile_base + np.arange(tiles)[None]).ravel()


def add_tiles(index: faiss.Index, tiles: np.ndarray, ids: np.ndarray, tile_base: int) -> faiss.Index:
    """Add (n, tiles, dim) sub-region vectors of panels ``ids`` to an IndexIDMap2 (flat or IVF),
    with ids ``tile_ids``; returns the index."""
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(tiles.reshape(-1, tiles.shape[2]), np.float32),
                           tile_ids(ids, tiles.shape[1], tile_base))
    return index


def tile_index_of(tiles: np.ndarray, ids: np.ndarray, tile_base: int) -> faiss.Index:
    """An in-memory L1 index of (n, tiles, dim) vectors with ids ``id * tile_base + tile``."""
    return add_tiles(faiss.IndexIDMap2(faiss.IndexFlat(tiles.shape[2], faiss.METRIC_L1)), tiles, ids, tile_base)


def ids_of(index: "faiss.Index | DeltaIndex") -> np.ndarray:
    """The ids held by an IndexIDMap2 or a ``DeltaIndex`` (empty when it holds nothing)."""
    if isinstance(index, DeltaIndex):
        return np.concatenate([ids_of(index.main), ids_of(index.delta)])
    return faiss.vector_to_array(index.id_map).astype(np.int64) if index.ntotal else np.zeros(0, np.int64)


def whole_index_of(vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    idx = faiss.IndexIDMap2(faiss.IndexFlat(vectors.shape[1], faiss.METRIC_L1))
    if len(ids):
        idx.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
    return idx


# ------------------------------------------------------------------------------------ IVF

def ivf_of(index: "faiss.Index | DeltaIndex | GpuIndex"):
    """The IndexIVF inside ``index`` (through an IndexIDMap2 or a ``DeltaIndex``), or None for a
    flat index (a ``GpuIndex`` is always one)."""
    if isinstance(index, GpuIndex):
        return None
    return faiss.try_extract_index_ivf(index.main if isinstance(index, DeltaIndex) else index)


Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
"""A re-readable source of (ids, vectors) pieces, the same pieces in the same order on every
call: an array (``array_chunks``) or a store's Parquet shards, read one at a time."""

EXACT_SLICE = 1_000_000      # vectors held at once by the exact ground truth and the on-disk build


@contextmanager
def faiss_notices_to_stderr():
    """faiss prints some notices (on-disk lists resized or found in another folder) with C's
    printf on standard output, where ``imgdup query`` writes its table: inside this block they
    go to standard error."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        ctypes.CDLL(None).fflush(None)     # what C buffered goes out before stdout is restored
        os.dup2(saved, 1)
        os.close(saved)


def array_chunks(vectors: np.ndarray, ids: np.ndarray) -> Chunks:
    """``Chunks`` over arrays held in memory (slices of EXACT_SLICE vectors)."""
    def pieces() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, len(vectors), EXACT_SLICE):
            yield np.asarray(ids[s:s + EXACT_SLICE], np.int64), vectors[s:s + EXACT_SLICE]
    return pieces


def rechunked(chunks: Chunks, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The pieces of ``chunks`` regrouped into pieces of about ``size`` vectors (many small
    shards become few large slices; one large piece is split)."""
    got_ids: list[np.ndarray] = []
    got: list[np.ndarray] = []
    held = 0
    for ids, v in chunks():
        for s in range(0, len(v), size):
            got_ids.append(np.asarray(ids[s:s + size], np.int64))
            got.append(np.asarray(v[s:s + size], np.float32))
            held += len(got[-1])
            if held >= size:
                yield np.concatenate(got_ids), np.ascontiguousarray(np.concatenate(got))
                got_ids, got, held = [], [], 0
    if held:
        yield np.concatenate(got_ids), np.ascontiguousarray(np.concatenate(got))


def sample_vectors(chunks: Chunks, n: int, k: int, seed: int = 0) -> np.ndarray:
    """``k`` of the ``n`` vectors (all when k >= n), at random distinct positions, in one pass."""
    pos = np.sort(np.random.default_rng(seed).choice(n, size=min(k, n), replace=False))
    out, s = [], 0
    for _, v in chunks():
        lo, hi = np.searchsorted(pos, [s, s + len(v)])
        out.append(np.asarray(v, np.float32)[pos[lo:hi] - s])
        s += len(v)
    return np.ascontiguousarray(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)


def build_ivf(chunks: Chunks, n: int, dim: int, nlist: int | None = None, seed: int = 0,
              sample_per_list: int = 40, lists_file: str | Path | None = None) -> faiss.Index:
    """IndexIDMap2(IndexIVFFlat, METRIC_L1) over the ``n`` vectors of ``chunks``: coarse
    centroids trained on a sample (about ``sample_per_list`` vectors a list; nlist defaults to
    sqrt(n)), a direct map so that stored vectors can be read back for exact re-scoring.

    ``lists_file``: the inverted lists are built out of core into this file (faiss
    ``OnDiskInvertedLists``): each slice of EXACT_SLICE vectors is added to an in-memory IVF
    that is written next to it and memory-mapped, then all are merged into the file at their
    exact sizes; at most one slice of vectors is in memory at a time.  ``write_index`` then
    records the file's name; read the index with ``faiss.IO_FLAG_ONDISK_SAME_DIR``.  Without
    it the lists are in memory.  Either way later adds go to the same lists, no retraining."""
    nlist = int(nlist or np.clip(int(np.sqrt(n)), 16, 8192))
    trained = faiss.IndexIVFFlat(faiss.IndexFlat(dim, faiss.METRIC_L1), dim, nlist, faiss.METRIC_L1)
    trained.cp.seed = seed
    trained.train(sample_vectors(chunks, n, sample_per_list * nlist, seed))
    ivf = faiss.clone_index(trained)
    if lists_file is None:
        ivf.make_direct_map()
        idx = faiss.IndexIDMap2(ivf)
        for ids, v in rechunked(chunks, EXACT_SLICE):
            idx.add_with_ids(v, ids)
        return idx
    lists_file = Path(lists_file)
    all_ids = []
    with tempfile.TemporaryDirectory(prefix=".ivf-build-", dir=lists_file.parent) as tmp:
        parts, offset = [], 0
        for k, (ids, v) in enumerate(rechunked(chunks, EXACT_SLICE)):
            part = faiss.clone_index(trained)       # internal ids run on across the slices
            part.add_with_ids(v, np.arange(offset, offset + len(v), dtype=np.int64))
            offset += len(v)
            faiss.write_index(part, f"{tmp}/{k}.faiss")
            del part
            parts.append(faiss.read_index(f"{tmp}/{k}.faiss", faiss.IO_FLAG_MMAP))
            all_ids.append(ids)
        lists = faiss.OnDiskInvertedLists(nlist, trained.code_size, str(lists_file))
        ptrs = faiss.InvertedListsPtrVector()
        for part in parts:
            ptrs.push_back(part.invlists)
        with faiss_notices_to_stderr():     # (no shift_ids: faiss 1.15.1 mis-shifts a last, smaller slice)
            total = lists.merge_from_multiple(ptrs.data(), ptrs.size(), False, False)
        del ptrs, parts
    with open(lists_file, "rb+") as fh:        # the merged lists reach the disk before any index names them
        os.fsync(fh.fileno())
    ivf.replace_invlists(lists, True)
    lists.this.disown()                         # owned by the index now
    idx = faiss.IndexIDMap2(ivf)                # (wraps an empty index: the counts are set after)
    ivf.ntotal = int(total)
    ivf.make_direct_map()
    faiss.copy_array_to_vector(np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64), idx.id_map)
    idx.ntotal = int(total)
    idx.construct_rev_map()
    return idx


def new_ivf_index(vectors: np.ndarray, ids: np.ndarray, nlist: int | None = None, seed: int = 0,
                  sample_per_list: int = 40) -> faiss.Index:
    """``build_ivf`` of vectors held in memory, with its lists in memory."""
    return build_ivf(array_chunks(vectors, ids), len(vectors), vectors.shape[1], nlist, seed, sample_per_list)


def choose_nprobe(index: faiss.Index, chunks: Chunks, n: int, threshold: float,
                  target: float = 0.99, queries: int = 1000, seed: int = 0) -> dict:
    """The smallest nprobe (powers of two, then bisection to within 1/8) at which an IVF range
    search finds at least ``target`` of the stored pairs within ``threshold`` that an exact
    search finds, measured with ``queries`` of the ``n`` stored vectors of ``chunks`` as queries
    (the exact search runs slice by slice: at most EXACT_SLICE vectors in memory); sets it on
    the index and returns it with the recall curve."""
    ivf = ivf_of(index)
    q = sample_vectors(chunks, n, queries, seed)
    truth: set[tuple[int, int]] = set()         # (query row, stored id), by exact search in slices
    exact = faiss.IndexFlat(index.d, faiss.METRIC_L1)
    for ids, v in rechunked(chunks, EXACT_SLICE):
        exact.reset()
        exact.add(v)
        ti, tj = range_candidates(exact, q, threshold)
        truth.update(zip(ti.tolist(), ids[tj].tolist()))
    curve: dict[int, float] = {}

    def recall_at(nprobe: int) -> float:
        if nprobe not in curve:
            ivf.nprobe = nprobe
            fi, fj = range_candidates(index, q, threshold)
            found = len(truth & set(zip(fi.tolist(), fj.tolist()))) if truth else 0
            curve[nprobe] = found / len(truth) if truth else 1.0
        return curve[nprobe]

    hi = _smallest_nprobe(recall_at, target, ivf.nlist)
    ivf.nprobe = hi
    return {"nprobe": hi, "recall": curve[hi], "truth_pairs": len(truth), "queries": len(q),
            "curve": dict(sorted(curve.items()))}


def _smallest_nprobe(recall_at: Callable[[int], float], target: float, top: int) -> int:
    """The nprobe ``choose_nprobe`` and ``choose_knn_nprobe`` pick: powers of two up to the first
    whose recall reaches ``target`` (at most ``top``), then bisection between it and the one
    before, to within 1/8."""
    lo, hi = 0, 1
    while recall_at(hi) < target and hi < top:
        lo, hi = hi, min(2 * hi, top)
    while hi - lo > max(1, hi // 8):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if recall_at(mid) >= target else (mid, hi)
    return hi


def choose_knn_nprobe(index: faiss.Index, chunks: Chunks, n: int, threshold: float, k: int,
                      target: float = 0.99, queries: int = 1000, seed: int = 0, max_nprobe: int | None = None,
                      group: int = 1, cap: int | None = None) -> dict:
    """The smallest nprobe at which the IVF's capped search (``nearest_within`` with ``k``, as
    query and screen search the sub-region index) returns at least ``target`` of the pairs that
    the exact search returns, measured like ``choose_nprobe`` (stored vectors as queries, exact
    search slice by slice).  A pair is (query, stored id // ``group``), at most ``cap`` of them a
    query, nearest first (``group`` = TILE_ID_BASE, ``cap`` = TILE_CAP: the panels a sub-region
    search keeps; default: the k nearest ids).  The nearest neighbours sit in the lists nearest
    to the query, so this needs fewer lists than a range search when the cap binds.  Searched up
    to ``max_nprobe`` (default: all lists); the index's own nprobe is left as it was.  Returns the
    nprobe, its recall and the curve."""
    ivf = ivf_of(index)
    cap = int(cap or k)
    q = sample_vectors(chunks, n, queries, seed)

    def capped(qi: np.ndarray, ids: np.ndarray, f: np.ndarray) -> set[tuple[int, int]]:
        qi, g, _ = cap_per_query(qi, ids // group, f, cap)
        return set(zip(qi.tolist(), g.tolist()))

    parts = []
    for ids, v in rechunked(chunks, EXACT_SLICE):
        exact = faiss.IndexIDMap2(faiss.IndexFlat(index.d, faiss.METRIC_L1))
        exact.add_with_ids(v, ids)
        parts.append(nearest_within(exact, q, threshold, k))
    truth = capped(*(np.concatenate([p[i] for p in parts]) for i in range(3)))
    top = min(int(max_nprobe or ivf.nlist), ivf.nlist)
    curve: dict[int, float] = {}

    def recall_at(nprobe: int) -> float:
        if nprobe not in curve:
            ivf.nprobe = nprobe
            curve[nprobe] = len(truth & capped(*nearest_within(index, q, threshold, k))) / len(truth) if truth else 1.0
        return curve[nprobe]

    with probes(index, ivf.nprobe):          # (restores the index's own nprobe after the search)
        hi = _smallest_nprobe(recall_at, target, top)
    return {"nprobe": hi, "recall": curve[hi], "k": int(k), "cap": cap, "group": int(group), "truth_pairs": len(truth),
            "queries": len(q), "curve": dict(sorted(curve.items()))}


@contextmanager
def probes(index, nprobe: int | None):
    """Search ``index`` with ``nprobe`` inside the block when it is an IVF and nprobe is given
    (restored after); as is otherwise."""
    ivf = ivf_of(index) if nprobe else None
    if ivf is None:
        yield index
        return
    own = ivf.nprobe
    ivf.nprobe = int(nprobe)
    try:
        yield index
    finally:
        ivf.nprobe = own
