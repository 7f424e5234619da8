"""Candidate pairs: FAISS L2 range search as a lossless prefilter, then exact weighted L1.

On alpha-scaled vectors f(I, J) = ||a - b||_1 and ||x||_2 <= ||x||_1, so every pair with
f <= t has a squared L2 distance <= t^2: a range search with radius t^2 (FAISS takes squared L2
radii) loses nothing, and re-scoring its hits with the exact L1 keeps exactly the pairs f <= t.
"""

from __future__ import annotations

import faiss
import numpy as np


def range_candidates(index: faiss.Index, queries: np.ndarray, threshold: float,
                     chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(query row, index id) of every stored vector within L2 <= threshold of each query."""
    qi, ids = [], []
    q = np.ascontiguousarray(queries, dtype=np.float32)
    for s in range(0, len(q), chunk):
        lims, _, labels = index.range_search(q[s:s + chunk], float(threshold) ** 2)
        counts = np.diff(lims).astype(np.int64)
        qi.append(np.repeat(np.arange(s, s + len(counts)), counts))
        ids.append(labels.astype(np.int64))
    if not qi:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(qi), np.concatenate(ids)


def l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise weighted L1 (the vectors are already alpha-scaled)."""
    return np.abs(a - b).sum(axis=1, dtype=np.float64)


def pairs_within(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j of one set with f <= threshold: (i, j, f)."""
    if len(vectors) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    idx = faiss.IndexFlatL2(vectors.shape[1])
    idx.add(np.ascontiguousarray(vectors, np.float32))
    i, j = range_candidates(idx, vectors, threshold)
    keep = i < j
    i, j = i[keep], j[keep]
    f = l1(vectors[i], vectors[j])
    ok = f <= threshold
    return i[ok], j[ok], f[ok]


def pairs_against(index: faiss.Index, queries: np.ndarray, threshold: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries against a stored index: (query row, stored id, f) for f <= threshold."""
    qi, ids = range_candidates(index, queries, threshold)
    if len(ids) == 0:
        return qi, ids, np.zeros(0)
    stored = index.reconstruct_batch(ids) if hasattr(index, "reconstruct_batch") else \
        np.stack([index.reconstruct(int(k)) for k in ids])
    f = l1(queries[qi], stored)
    ok = f <= threshold
    return qi[ok], ids[ok], f[ok]


def brute_force_pairs(a: np.ndarray, b: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Reference for tests: every (row of a, row of b) with L1 <= threshold, by NumPy."""
    out = set()
    for i in range(len(a)):
        d = np.abs(b - a[i]).sum(axis=1, dtype=np.float64)
        out.update((i, int(j)) for j in np.flatnonzero(d <= threshold))
    return out
