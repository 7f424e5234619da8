"""FAISS range search + exact re-scoring against brute-force NumPy."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from imgdup.index.search import brute_force_pairs, gpu_available, pairs_against, pairs_within


def _clustered(n, dim=128, seed=0):
    """Vectors drawn like alpha-scaled embeddings: clusters of near-duplicates plus spread."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.08, (n // 4, dim)).astype(np.float32)
    pts = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.004, (n, dim)).astype(np.float32)
    return pts.astype(np.float32)


@pytest.mark.parametrize("metric", [faiss.METRIC_L1, faiss.METRIC_L2])
def test_range_search_matches_brute_force_random(metric):
    """The store's exact L1 index, and the L2 prefilter (radius t^2), both lose nothing."""
    base, q = _clustered(2000, seed=1), _clustered(200, seed=1)[:200] + 0.001
    idx = faiss.IndexIDMap2(faiss.IndexFlat(128, metric))
    ids = np.arange(10, 10 + len(base), dtype=np.int64)
    idx.add_with_ids(base, ids)
    for t in (0.5, 1.0, 2.0):
        qi, got_ids, f = pairs_against(idx, q, t)
        got = {(int(a), int(b) - 10) for a, b in zip(qi, got_ids)}
        assert got == brute_force_pairs(q, base, t)
        assert np.all(f <= t)


def test_pairs_within_matches_brute_force():
    v = _clustered(500, seed=3)
    for t in (0.3, 1.0):
        i, j, f = pairs_within(v, t)
        ref = {(a, b) for a, b in brute_force_pairs(v, v, t) if a < b}
        assert set(zip(i.tolist(), j.tolist())) == ref
        assert np.allclose(f, np.abs(v[i] - v[j]).sum(1))


def test_real_embeddings_lossless(tmp_path):
    from conftest import micrograph
    from imgdup import load_model

    m = load_model()
    imgs = [micrograph(i, 128) for i in range(40)]
    imgs += [np.rot90(im).copy() for im in imgs[:10]] + [im[8:-8, 8:-8].copy() for im in imgs[10:20]]
    v = m.embed(imgs)
    i, j, f = pairs_within(v, 1.0)
    ref = {(a, b) for a, b in brute_force_pairs(v, v, 1.0) if a < b}
    assert set(zip(i.tolist(), j.tolist())) == ref


@pytest.mark.parametrize("k,max_k", [(1, 4), (4, 64), (64, 2048)])
def test_knn_range_is_lossless(k, max_k):
    """The GPU path's range search by doubling k finds exactly the brute-force pairs; queries
    with more than max_k neighbours within the threshold are handed back, not cut."""
    from imgdup.index.search import knn_range

    rng = np.random.default_rng(7)
    base = rng.normal(0, 0.02, (400, 16)).astype(np.float32)
    base[:50] = base[0] + rng.normal(0, 0.001, (50, 16))      # a dense clump: many neighbours
    q = np.concatenate([base[:5], rng.normal(0, 0.02, (30, 16)).astype(np.float32)])
    t = 0.25
    idx = faiss.IndexFlat(16, faiss.METRIC_L1)
    idx.add(base)
    qi, lab, left = knn_range(idx.search, q, t, k=k, max_k=max_k)
    truth = brute_force_pairs(q, base, t)
    got = set(zip(qi.tolist(), lab.tolist()))
    unresolved = {(i, j) for i, j in truth if i in set(left.tolist())}
    assert got == truth - unresolved
    assert got.isdisjoint(unresolved)
    counts = np.bincount([i for i, _ in truth], minlength=len(q))
    assert set(left.tolist()) == set(np.flatnonzero(counts >= max_k).tolist())
    if max_k < 50:
        assert {0, 1, 2, 3, 4} <= set(left.tolist())      # the clump's members need a range search


@pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a GPU")
def test_gpu_index_matches_cpu():
    from imgdup.index.search import GpuIndex, whole_index_of

    base = _clustered(5000)
    ids = np.arange(5000, dtype=np.int64) * 3 + 11
    cpu = whole_index_of(base, ids)
    q = base[:200] + np.random.default_rng(1).normal(0, 0.002, (200, base.shape[1])).astype(np.float32)
    a = pairs_against(cpu, q, 1.0)
    b = pairs_against(GpuIndex(cpu), q, 1.0)
    assert set(zip(a[0].tolist(), a[1].tolist())) == set(zip(b[0].tolist(), b[1].tolist()))


def test_gpu_index_is_never_an_ivf():
    """query / screen wrap every search in ``probes(index, nprobe)``: a flat index copied to the
    GPU must pass through it untouched (no faiss call on the Python wrapper)."""
    from imgdup.index.search import GpuIndex, ivf_of, probes

    gpu = object.__new__(GpuIndex)          # built without a GPU: only its type matters here
    assert ivf_of(gpu) is None
    with probes(gpu, 32) as idx:
        assert idx is gpu


def test_tile_pairs_knn_equals_range_then_cap():
    """The capped tile search (k-NN per vector) keeps exactly the pairs that a full range search
    capped afterwards keeps, on data where most queries have far more than ``cap`` panels within
    the threshold."""
    from imgdup.index.search import cap_per_query, tile_index_of, tile_pairs, whole_index_of

    rng = np.random.default_rng(3)
    n_store, n_q, n_t, d = 400, 30, 5, 16
    sv, st = rng.random((n_store, d), np.float32) * 0.12, rng.random((n_store, n_t, d), np.float32) * 0.12
    qv, qt = rng.random((n_q, d), np.float32) * 0.12, rng.random((n_q, n_t, d), np.float32) * 0.12
    ids = np.arange(100, 100 + n_store)
    whole, tiles = whole_index_of(sv, ids), tile_index_of(st, ids, 16)
    full = tile_pairs(qv, qt, whole, tiles, 1.0, 16, cap=None)
    assert np.bincount(full[0]).min() > 3 * 20          # the cap matters for every query
    for cap in (1, 7, 20):
        want = cap_per_query(*full, cap)
        got = tile_pairs(qv, qt, whole, tiles, 1.0, 16, cap=cap)
        assert all(np.array_equal(a, b) for a, b in zip(got[:2], want[:2]))
        assert np.allclose(got[2], want[2])
    # stored panels with more views than a query searches with (the 75 % views): k follows them
    st8 = rng.random((n_store, 8, d), np.float32) * 0.12
    tiles8 = tile_index_of(st8, ids, 16)
    full = tile_pairs(qv, qt, whole, tiles8, 1.0, 16, cap=None)
    for cap in (1, 7, 20):
        want = cap_per_query(*full, cap)
        got = tile_pairs(qv, qt, whole, tiles8, 1.0, 16, cap=cap, stored_views=8)
        assert all(np.array_equal(a, b) for a, b in zip(got[:2], want[:2]))


def test_nearest_within_is_the_k_nearest_of_the_range():
    """``--max-candidates``: each query keeps exactly its k nearest among the stored vectors
    within the threshold (all of them when fewer), exactly re-scored."""
    from imgdup.index.search import nearest_within, whole_index_of

    rng = np.random.default_rng(9)
    store, q = rng.random((3000, 16), np.float32) * 0.12, rng.random((40, 16), np.float32) * 0.12
    ids = np.arange(3000) * 7 + 1
    index = whole_index_of(store, ids)
    full = {(i, j) for i, j in brute_force_pairs(q, store, 1.0)}
    for k in (1, 5, 50, 5000):
        qi, got, f = nearest_within(index, q, 1.0, k)
        assert np.allclose(f, np.abs(q[qi] - store[(got - 1) // 7]).sum(1), atol=1e-5) and (f <= 1.0).all()
        for i in range(len(q)):
            within = sorted((float(np.abs(q[i] - store[j]).sum()), j) for ii, j in full if ii == i)
            want = {ids[j] for _, j in within[:k]}
            assert set(got[qi == i].tolist()) == want


def test_rescoring_in_batches_gives_the_same_pairs(monkeypatch):
    """pairs_against re-scores RESCORE_BATCH candidates at a time (bounded memory when each query
    has tens of thousands of stored vectors within the threshold): the same pairs as in one go."""
    import faiss

    import imgdup.index.search as se

    rng = np.random.default_rng(70)
    stored = (rng.normal(0, 0.02, (3000, 128))).astype(np.float32)
    q = (rng.normal(0, 0.02, (40, 128))).astype(np.float32)
    idx = faiss.IndexIDMap2(faiss.IndexFlat(128, faiss.METRIC_L1))
    idx.add_with_ids(stored, np.arange(3000, dtype=np.int64) * 2 + 1)
    whole = se.pairs_against(idx, q, 2.9)
    monkeypatch.setattr(se, "RESCORE_BATCH", 97)
    batched = se.pairs_against(idx, q, 2.9, chunk=16)
    assert len(whole[0]) > 1000 and all(np.array_equal(a, b) for a, b in zip(whole, batched))
