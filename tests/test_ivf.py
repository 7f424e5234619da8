"""The growing index: IVF rebuild with a measured nprobe, incremental adds, reopen, fallback."""

from __future__ import annotations

import numpy as np

from imgdup.index.search import brute_force_pairs, ivf_of, pairs_against
from imgdup.index.store import PanelRow, Store


def _clustered(n: int, seed: int, centres: np.ndarray) -> np.ndarray:
    """Vectors in tight clusters (pairs inside a cluster have f well under 1, across far over)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(len(centres), size=n)
    return (centres[k] + rng.normal(0, 0.004, (n, centres.shape[1]))).astype(np.float32)


def _add(store: Store, vec: np.ndarray, doc: str, tiles: np.ndarray | None = None) -> list[int]:
    """Register one synthetic document whose panels have these vectors (and tile vectors)."""
    rows = [PanelRow(doc, 1, "f1", f"p{i}", "panel", (0.0, 0.0, 10.0, 10.0), 64, 64, "", "", "xref", 0, False)
            for i in range(len(vec))]
    docs = [{"sha256": doc, "path": f"/synthetic/{doc}.pdf", "status": "ok", "panels": len(vec)}]
    return store.add_batch(docs, rows, vec, tiles=tiles)


def _ivf_store(path, centres: np.ndarray, docs: list[tuple[str, int, int]], views: int = 0,
               nlist: int = 32) -> tuple[Store, dict]:
    """A closed synthetic store of ``docs`` (name, panels, seed; ``views`` tile vectors a panel,
    seeded seed + 10) rebuilt as an IVF with ``nlist`` lists; (the store, the rebuild's info)."""
    store = Store(path)
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        for doc, n, seed in docs:
            tiles = _clustered(n * views, seed + 10, centres).reshape(n, views, 128) if views else None
            _add(store, _clustered(n, seed, centres), doc, tiles=tiles)
        info = store.rebuild_index("ivf", nlist=nlist)
    store.close()
    return store, info


def test_ivf_rebuild_recall_incremental_adds_and_reopen(tmp_path, caplog):
    import imgdup.index.store as st

    centres = np.random.default_rng(0).normal(0, 0.05, (300, 128)).astype(np.float32)
    store = Store(tmp_path / "s")
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        _add(store, _clustered(12_000, 1, centres), "a")
        _add(store, _clustered(8_000, 2, centres), "b")
        info = store.rebuild_index("ivf", nlist=64)
        assert info["kind"] == "ivf" and info["nlist"] == 64
        assert info["recall"] >= 0.99 and info["truth_pairs"] > 1000
        assert info["curve"][info["nprobe"]] >= 0.99 and info["nprobe"] <= 64
        # capped searches (k <= 21: a query's 20, a screen's 20 + itself) have their own, measured
        # nprobe; larger k or range: the range one
        assert info["capped"]["recall"] >= 0.99 and info["capped"]["nprobe"] <= info["nprobe"]
        assert info["capped"]["k"] == st.KNN_MEASURED_CAP == st.TILE_CAP + 1
        assert store.capped_nprobe("ivf", st.TILE_CAP + 1) == info["capped"]["nprobe"]
        with caplog.at_level("WARNING", logger="imgdup.index.store"):
            assert store.capped_nprobe("ivf", st.TILE_CAP + 2) is None
        assert "searches with the range nprobe" in caplog.text and "imgdup reindex" in caplog.text
        # queries near stored vectors: the IVF finds >= 99 % of the exact pairs, and only true ones
        ids, vec = store.vectors()
        q = _clustered(200, 3, centres)
        qi, mid, f = pairs_against(store.index(), q, 1.0)
        truth = {(i, int(ids[j])) for i, j in brute_force_pairs(q, vec, 1.0)}
        got = set(zip(qi.tolist(), mid.tolist()))
        assert got <= truth and len(got) >= 0.99 * len(truth)
        # incremental add: no retraining, found at once
        new_ids = _add(store, _clustered(100, 4, centres), "c")
        assert store.index().ntotal == 20_100 and ivf_of(store.index()) is not None
        _, newvec = store.vectors(np.array(new_ids))
        qi, mid, _ = pairs_against(store.index(), newvec, 1.0)
        assert set(new_ids) <= set(mid.tolist())
        store.save_index()
    store.close()
    # reopened: IVF with the recorded nprobe, sound
    s2 = Store(tmp_path / "s", create=False)
    assert s2.index_kind() == "ivf" and ivf_of(s2.index()).nprobe == info["nprobe"]
    assert s2.check()["problems"] == [] and s2.index().ntotal == 20_100
    s2.close()
    # the index file lost (e.g. a kill before the first save): rebuilt as IVF from the shards
    (tmp_path / "s" / "index.faiss").unlink()
    s3 = Store(tmp_path / "s", create=False)
    assert ivf_of(s3.index()) is not None and s3.index().ntotal == 20_100
    with s3.writer():
        assert s3.rebuild_index("flat")["kind"] == "flat"
        s3.save_index()            # an explicit choice is kept: no switch back
    assert s3.index_kind() == "flat" and ivf_of(s3.index()) is None
    s3.close()


def test_store_switches_to_ivf_when_it_grows(tmp_path, monkeypatch):
    import imgdup.index.store as st

    monkeypatch.setattr(st, "IVF_MIN_PANELS", 3000)
    centres = np.random.default_rng(5).normal(0, 0.05, (50, 128)).astype(np.float32)
    store = Store(tmp_path / "s")
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        _add(store, _clustered(2000, 6, centres), "a")
        store.save_index()
        assert store.index_kind() == "flat"
        _add(store, _clustered(1500, 7, centres), "b")
        store.save_index()
        assert store.index_kind() == "ivf" and float(store.meta("ivf_recall")) >= 0.99
        assert store.index().ntotal == 3500
    store.close()


def test_tile_index_persisted_and_caught_up(tmp_path):
    """tiles.faiss is saved with the index, reloaded, caught up with later adds from the shards."""
    rng = np.random.default_rng(8)

    def add(store, n, doc):
        return _add(store, rng.normal(0, 0.05, (n, 128)).astype(np.float32), doc,
                    tiles=rng.normal(0, 0.05, (n, 5, 128)).astype(np.float32))

    store = Store(tmp_path / "s")
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        add(store, 300, "a")
        store.save_index()
    store.close()
    assert (tmp_path / "s" / "tiles.faiss").exists()
    s2 = Store(tmp_path / "s", create=False)
    assert s2.tile_index().ntotal == 1500
    with s2.writer():
        new = add(s2, 40, "b")                        # not saved: caught up from the shard
        t = s2.tile_index()
        assert t.ntotal == 1700
        _, got = t.search(s2.tile_vectors(np.array(new[:1]))[1][0], 1)
        assert (got[:, 0] // 16 == new[0]).all()      # each tile of the new panel finds itself
    s2.close()
    assert Store(tmp_path / "s", create=False).check()["problems"] == []


def test_tile_index_follows_the_store_to_ivf(tmp_path):
    """An IVF store gets an IVF tile index too (own lists, measured nprobe kept in the meta),
    found again after a reopen, caught up by new panels without retraining, as sound as flat."""
    from imgdup.index.search import brute_force_pairs, tile_ids
    from imgdup.index.store import TILE_ID_BASE

    centres = np.random.default_rng(8).normal(0, 0.05, (200, 128)).astype(np.float32)
    store = Store(tmp_path / "s")
    n = 3000
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        _add(store, _clustered(n, 10, centres), "a", tiles=_clustered(n * 5, 9, centres).reshape(n, 5, 128))
        info = store.rebuild_index("ivf", nlist=32)
        assert info["tiles"]["recall"] >= 0.99 and info["tiles"]["truth_pairs"] > 1000
        tidx = store.tile_index()
        assert ivf_of(tidx) is not None and ivf_of(tidx).nprobe == info["tiles"]["nprobe"]
        pid, tv = store.tile_vectors()
        q = _clustered(100, 11, centres)
        qi, got_ids, _ = pairs_against(tidx, q, 1.0)
        all_ids = tile_ids(pid, 5, TILE_ID_BASE)
        truth = {(i, int(all_ids[j])) for i, j in brute_force_pairs(q, tv.reshape(-1, 128), 1.0)}
        got = set(zip(qi.tolist(), got_ids.tolist()))
        assert got <= truth and len(got) >= 0.97 * len(truth)
        tiles_b = _clustered(50, 12, centres).reshape(10, 5, 128)
        new = _add(store, _clustered(10, 13, centres), "b", tiles=tiles_b)
        assert store.tile_index() is tidx and tidx.ntotal == (n + 10) * 5     # added, not retrained
        _, found, _ = pairs_against(tidx, tiles_b.reshape(-1, 128), 1.0)
        assert set(tile_ids(np.array(new), 5, TILE_ID_BASE).tolist()) <= set(found.tolist())
        store.save_index()
    store.close()
    s2 = Store(tmp_path / "s", create=False)
    t2 = s2.tile_index()
    assert ivf_of(t2) is not None and ivf_of(t2).nprobe == info["tiles"]["nprobe"] and t2.ntotal == (n + 10) * 5
    assert s2.check()["problems"] == []
    s2.close()


def test_tile_index_switches_to_ivf_on_its_own_threshold(tmp_path, monkeypatch):
    """The sub-region index (5 vectors a panel) becomes an IVF before the panel index does."""
    import imgdup.index.store as st

    monkeypatch.setattr(st, "TILE_IVF_MIN_PANELS", 1000)
    centres = np.random.default_rng(14).normal(0, 0.05, (100, 128)).astype(np.float32)
    store = Store(tmp_path / "s")
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        for doc, n, seed in (("a", 600, 15), ("b", 600, 16)):
            _add(store, _clustered(n, seed, centres), doc, tiles=_clustered(n * 5, seed + 10, centres).reshape(n, 5, 128))
            store.save_index()
            assert store.meta("tiles_kind") == (None if doc == "a" else "ivf")
        assert store.index_kind() == "flat" and ivf_of(store.index()) is None
        assert ivf_of(store.tile_index()) is not None and float(store.meta("tiles_recall")) >= 0.99
        assert store.tile_index().ntotal == 1200 * 5
        # the capped searches' nprobe, measured for k = (TILE_CAP + 1) x 5 views, no more than the range one
        k = int(store.meta("tiles_knn_k"))
        assert k == st.KNN_MEASURED_CAP * 5 and float(store.meta("tiles_knn_recall")) >= 0.99
        assert store.capped_nprobe("tiles", k) == int(store.meta("tiles_knn_nprobe")) <= int(store.meta("tiles_nprobe"))
        assert store.capped_nprobe("tiles", k + 1) is None and store.capped_nprobe("ivf", 1) is None   # panels: flat
    store.close()


def test_on_disk_ivf_is_mapped_with_an_in_memory_delta(tmp_path):
    """--on-disk: readers memory-map the IVF files (lists stay on disk), new panels go to an
    in-memory delta searched with them, the mapped files are never rewritten, a reopen rebuilds
    the delta from the shards, and results equal those of the loaded index."""
    import faiss

    from imgdup.index.search import DeltaIndex, nearest_within, tile_pairs
    from imgdup.index.store import TILE_ID_BASE

    centres = np.random.default_rng(20).normal(0, 0.05, (150, 128)).astype(np.float32)
    path = tmp_path / "s"
    store = Store(path)

    def add(doc: str, n: int, seed: int) -> list[int]:
        return _add(store, _clustered(n, seed, centres), doc, tiles=_clustered(n * 5, seed + 50, centres).reshape(n, 5, 128))

    q = _clustered(80, 30, centres)
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        add("a", 4000, 21)
        info = store.rebuild_index("ivf", nlist=32, on_disk=True)
        assert info["on_disk"] and store.on_disk()
        idx = store.index()
        assert isinstance(idx, DeltaIndex) and isinstance(store.tile_index(), DeltaIndex)
        loaded = faiss.read_index(str(path / "index.faiss"))          # the same file, loaded
        ivf_of(loaded).nprobe = ivf_of(idx).nprobe
        a, b = pairs_against(loaded, q, 1.0), pairs_against(idx, q, 1.0)
        assert len(a[0]) > 100 and all(np.array_equal(x, y) for x, y in zip(a, b))
        mtime = (path / "index.faiss").stat().st_mtime_ns
        new = add("b", 50, 22)                                          # -> the delta
        assert idx.delta.ntotal == 50 and store.tile_index().delta.ntotal == 250
        _, newvec = store.vectors(np.array(new))
        assert set(new) <= set(pairs_against(idx, newvec, 1.0)[1].tolist())
        assert set(new) <= set(nearest_within(idx, newvec, 1.0, 5)[1].tolist())
        store.save_index()
        assert (path / "index.faiss").stat().st_mtime_ns == mtime
    store.close()
    s2 = Store(path, create=False)
    idx2 = s2.index()
    assert isinstance(idx2, DeltaIndex) and idx2.ntotal == 4050 and idx2.delta.ntotal == 50
    assert ivf_of(idx2).nprobe == info["nprobe"]
    got = tile_pairs(q[:10], _clustered(50, 31, centres).reshape(10, 5, 128), idx2, s2.tile_index(), 1.0, TILE_ID_BASE)
    assert len(got[0]) > 0
    c = s2.check()
    assert c["problems"] == [] and c["index_lag"] == 50
    s2.close()
    s3 = Store(path, create=False)      # reindex folds the delta in (in memory this time)
    with s3.writer():
        assert not s3.rebuild_index("ivf", nlist=32, on_disk=False)["on_disk"]
        assert not isinstance(s3.index(), DeltaIndex) and s3.index().ntotal == 4050
    s3.close()


def test_nprobe_ground_truth_in_slices_is_the_same(monkeypatch):
    """choose_nprobe's exact ground truth, computed slice by slice (bounded memory for 10^7
    vectors), is the one computed in one go."""
    import imgdup.index.search as se

    centres = np.random.default_rng(40).normal(0, 0.05, (80, 128)).astype(np.float32)
    vec = _clustered(6000, 41, centres)
    ids = np.arange(6000, dtype=np.int64) * 3 + 5
    one = se.choose_nprobe(se.new_ivf_index(vec, ids, nlist=24), se.array_chunks(vec, ids), len(ids), 1.0, queries=200)
    monkeypatch.setattr(se, "EXACT_SLICE", 997)
    sliced = se.choose_nprobe(se.new_ivf_index(vec, ids, nlist=24), se.array_chunks(vec, ids), len(ids), 1.0,
                              queries=200)
    assert one["truth_pairs"] > 1000 and one == sliced


def test_capped_search_nprobe_measured_against_exact_capped_search(monkeypatch):
    """choose_knn_nprobe: at the nprobe it picks, the IVF's k nearest within the threshold are
    >= 99 % of the exact ones (checked here by brute force); its slice-by-slice ground truth is
    the one-go one; the index keeps its own nprobe; a range search needs at least as many lists."""
    import imgdup.index.search as se

    centres = np.random.default_rng(42).normal(0, 0.05, (60, 128)).astype(np.float32)
    vec = _clustered(6000, 43, centres)
    ids = np.arange(6000, dtype=np.int64) * 7 + 1
    idx = se.new_ivf_index(vec, ids, nlist=32)
    ivf_of(idx).nprobe = 5
    one = se.choose_knn_nprobe(idx, se.array_chunks(vec, ids), len(ids), 1.0, k=20, queries=200)
    assert ivf_of(idx).nprobe == 5 and one["truth_pairs"] == 200 * 20
    monkeypatch.setattr(se, "EXACT_SLICE", 997)
    assert se.choose_knn_nprobe(idx, se.array_chunks(vec, ids), len(ids), 1.0, k=20, queries=200) == one
    q = se.sample_vectors(se.array_chunks(vec, ids), len(ids), 200, 0)
    d = np.abs(q[:, None, :] - vec[None]).sum(2)
    truth = {(i, int(ids[j])) for i in range(len(q)) for j in np.argsort(d[i], kind="stable")[:20] if d[i, j] <= 1.0}
    with se.probes(idx, one["nprobe"]):
        qi, mid, _ = se.nearest_within(idx, q, 1.0, 20)
    assert ivf_of(idx).nprobe == 5
    assert len(truth & set(zip(qi.tolist(), mid.tolist()))) >= 0.99 * len(truth)
    assert one["nprobe"] <= se.choose_nprobe(idx, se.array_chunks(vec, ids), len(ids), 1.0, queries=200)["nprobe"]


def test_out_of_core_ivf_build_equals_the_in_memory_one(tmp_path, monkeypatch):
    """build_ivf with a lists file: slices of EXACT_SLICE vectors merged into faiss on-disk lists
    give the index the in-memory build gives (same ids, vectors, search results), and it reads
    back from its file wherever the folder is moved."""
    import shutil

    import faiss

    import imgdup.index.search as se

    monkeypatch.setattr(se, "EXACT_SLICE", 1500)        # 5 slices: 5 parts merged
    centres = np.random.default_rng(50).normal(0, 0.05, (60, 128)).astype(np.float32)
    vec = _clustered(7000, 51, centres)
    ids = np.arange(7000, dtype=np.int64) * 5 + 3
    chunks = se.array_chunks(vec, ids)
    mem = se.build_ivf(chunks, len(ids), 128, nlist=32)
    disk = se.build_ivf(chunks, len(ids), 128, nlist=32, lists_file=tmp_path / "a" / "x.ivfdata") \
        if (tmp_path / "a").mkdir() is None else None
    assert isinstance(faiss.downcast_InvertedLists(se.ivf_of(disk).invlists), faiss.OnDiskInvertedLists)
    assert not list((tmp_path / "a").glob(".ivf-build-*"))         # the slices' files are gone
    q = _clustered(100, 52, centres)
    for idx in (mem, disk):
        se.ivf_of(idx).nprobe = 4
    a, b = pairs_against(mem, q, 1.0), pairs_against(disk, q, 1.0)
    assert len(a[0]) > 100 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(se.ids_of(disk), ids)
    assert np.array_equal(disk.reconstruct_batch(ids[::97]), vec[::97])
    faiss.write_index(disk, str(tmp_path / "a" / "index.faiss"))
    shutil.move(tmp_path / "a", tmp_path / "b")                       # the store's folder moved
    back = faiss.read_index(str(tmp_path / "b" / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    se.ivf_of(back).nprobe = 4
    c = pairs_against(back, q, 1.0)
    assert all(np.array_equal(x, y) for x, y in zip(a, c))


def test_on_disk_rebuild_keeps_one_lists_file_per_index(tmp_path, capfd):
    """The store's on-disk rebuild: one .ivfdata per index, replaced (the old one removed) by the
    next rebuild, leftovers of an interrupted build removed by the next writer, and a store
    copied elsewhere opens with its lists (faiss's notice about it on stderr, not on stdout,
    where `imgdup query` prints its table)."""
    import shutil

    from imgdup.index.search import DeltaIndex

    centres = np.random.default_rng(60).normal(0, 0.05, (100, 128)).astype(np.float32)
    path = tmp_path / "s"
    store = Store(path)
    q = _clustered(50, 62, centres)
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        _add(store, _clustered(3000, 61, centres), "a", tiles=_clustered(15000, 63, centres).reshape(3000, 5, 128))
        store.rebuild_index("ivf", nlist=24, on_disk=True)
        first = sorted(f.name for f in path.glob("*.ivfdata"))
        assert [f.split("-")[0] for f in first] == ["index", "tiles"]
        assert (path / "index.faiss").stat().st_size < 3000 * 128 * 4 / 4     # the vectors are not in it
        before = pairs_against(store.index(), q, 1.0)
        store.rebuild_index("ivf", nlist=24, on_disk=True)
        second = sorted(f.name for f in path.glob("*.ivfdata"))
        assert len(second) == 2 and not set(first) & set(second)
    store.close()
    (path / "index-killed.ivfdata").write_bytes(b"x" * 100)              # a build killed midway
    (path / ".ivf-build-killed").mkdir()
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    s2 = Store(copy, create=False)
    capfd.readouterr()
    assert isinstance(s2.index(), DeltaIndex)
    assert capfd.readouterr().out == ""
    after = pairs_against(s2.index(), q, 1.0)
    assert set(zip(*before[:2])) == set(zip(*after[:2])) and s2.check()["problems"] == []
    with s2.writer():
        pass
    assert sorted(f.name for f in copy.glob("*.ivfdata")) == second and not list(copy.glob(".ivf-build-*"))
    s2.close()


def test_shards_with_five_and_six_views_read_together(tmp_path):
    """Shards written before the equalised view hold 5 tile vectors a panel, newer ones 6: the
    tile index holds every stored one, and tile_vectors pads the older rows with their first."""
    rng = np.random.default_rng(80)
    store = Store(tmp_path / "s")
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        old = _add(store, rng.normal(0, 0.05, (30, 128)).astype(np.float32), "old",
                   tiles=rng.normal(0, 0.05, (30, 5, 128)).astype(np.float32))
        new = _add(store, rng.normal(0, 0.05, (20, 128)).astype(np.float32), "new",
                   tiles=rng.normal(0, 0.05, (20, 6, 128)).astype(np.float32))
        assert store.tile_index().ntotal == 30 * 5 + 20 * 6
        pid, tv = store.tile_vectors()
        assert tv.shape == (50, 6, 128)
        first = tv[np.isin(pid, old)]
        assert np.array_equal(first[:, 5], first[:, 0]) and not np.array_equal(tv[np.isin(pid, new)][:, 5],
                                                                                tv[np.isin(pid, new)][:, 0])
        store.save_index()
    store.close()


def test_auto_reindex_of_a_small_store_still_switches_to_ivf_later(tmp_path, monkeypatch):
    """``imgdup reindex`` (kind auto) of a store below the IVF sizes must not pin it flat: the
    switch to IVF still happens when it grows past them; only an explicit kind is kept."""
    import imgdup.index.store as st

    monkeypatch.setattr(st, "IVF_MIN_PANELS", 3000)
    monkeypatch.setattr(st, "TILE_IVF_MIN_PANELS", 2500)
    rng = np.random.default_rng(9)
    centres = rng.normal(0, 0.05, (50, 128)).astype(np.float32)

    def add(store, n, seed, doc):
        return _add(store, _clustered(n, seed, centres), doc,
                    tiles=rng.normal(0, 0.05, (n, 5, 128)).astype(np.float32))

    store = Store(tmp_path / "s")
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        add(store, 2000, 6, "a")
        info = store.rebuild_index("auto")
        assert info["kind"] == "flat" and store.index_kind() == "flat"
        add(store, 1500, 7, "b")
        store.save_index()
        assert store.index_kind() == "ivf" and store.meta("tiles_kind") == "ivf"
    store.close()


def test_screen_capped_searches_use_the_measured_nprobe(tmp_path, monkeypatch):
    """A screen with ``--max-candidates N`` asks each search for N + 1 neighbours (a new panel is
    in the store and finds itself first).  Its k-NN searches of both IVFs must still get the
    nprobe measured for capped searches: measured for N = TILE_CAP only, the store answered
    None for N + 1 and the 10^6-panel screen searched with the range nprobes (4x more lists)."""
    import imgdup.index.store as st
    from imgdup import screen
    from imgdup.model.api import N_TILES

    centres = np.random.default_rng(20).normal(0, 0.05, (150, 128)).astype(np.float32)
    _, info = _ivf_store(tmp_path / "s", centres, [("a", 800, 21), ("b", 800, 22)], views=N_TILES)
    assert info["capped"]["k"] == st.TILE_CAP + 1 and info["tiles"]["capped"]["k"] == (st.TILE_CAP + 1) * N_TILES
    asked = []
    measured = Store.capped_nprobe

    def spy(self, which, k):
        asked.append((which, k, measured(self, which, k)))
        return asked[-1][2]

    monkeypatch.setattr(Store, "capped_nprobe", spy)
    res = screen(tmp_path / "s", tmp_path / "out", verify=False, max_candidates=st.TILE_CAP)
    assert res.panels == 1600 and len(res.report) > 0
    assert {which for which, _, _ in asked} == {"ivf", "tiles"}
    assert all(got is not None for _, _, got in asked), asked


def test_vectors_read_back_from_the_indexes_equal_the_shards(tmp_path):
    """A screen reads its new panels' vectors and views from the loaded indexes, not from the
    shards: the same arrays as ``vectors`` / ``tile_vectors`` (ascending ids; panels of older
    shards with 5 views padded with their first view), flat and IVF, a panel without views
    left out."""
    from imgdup.model.api import N_TILES

    centres = np.random.default_rng(30).normal(0, 0.05, (50, 128)).astype(np.float32)
    store = Store(tmp_path / "s")
    with store.writer():
        store.check_model("0" * 64, "synthetic", 128)
        _add(store, _clustered(300, 31, centres), "old", tiles=_clustered(300 * 5, 32, centres).reshape(300, 5, 128))
        _add(store, _clustered(200, 33, centres), "none")          # a shard without views
        _add(store, _clustered(300, 34, centres), "new",
             tiles=_clustered(300 * N_TILES, 35, centres).reshape(300, N_TILES, 128))
        store.save_index()
        ids_all = store._panel_ids()
        pick = np.random.default_rng(36).choice(ids_all, 250, replace=False)
        for kind in ("flat", "ivf"):
            if kind == "ivf":
                store.rebuild_index("ivf", nlist=16)
                assert ivf_of(store.index()) is not None and ivf_of(store.tile_index()) is not None
            for ids in (pick, ids_all):
                a_ids, a = store.vectors(ids)
                b_ids, b = store.indexed_vectors(ids[::-1])
                assert np.array_equal(a_ids, b_ids) and np.array_equal(a, b)
                t_ids, t = store.tile_vectors(ids)
                u_ids, u = store.indexed_tile_vectors(ids)
                assert np.array_equal(t_ids, u_ids) and np.array_equal(t, u) and t.shape[1] == N_TILES
                assert len(t_ids) < len(a_ids)                      # the panels of "none" have no views
    store.close()


def test_mapped_store_searches_like_a_loaded_one_and_catches_up_in_a_delta(tmp_path):
    """``Store(mapped=True)`` (query and screen) maps the IVF files instead of loading them:
    the same range and k-NN results and vectors as a loaded store; panels the file lacks (a
    writer killed before its save) are caught up in an in-memory delta and found, and the file
    is left as it was."""
    from imgdup.index.search import DeltaIndex, nearest_within, probes

    centres = np.random.default_rng(40).normal(0, 0.05, (80, 128)).astype(np.float32)
    _ivf_store(tmp_path / "s", centres, [("a", 4000, 41)], views=5)
    q = _clustered(100, 45, centres)
    loaded, mapped = Store(tmp_path / "s", create=False), Store(tmp_path / "s", create=False, mapped=True)
    assert not isinstance(loaded.index(), DeltaIndex)
    assert isinstance(mapped.index(), DeltaIndex) and isinstance(mapped.tile_index(), DeltaIndex)
    for a, b in ((loaded.index(), mapped.index()), (loaded.tile_index(), mapped.tile_index())):
        assert all(np.array_equal(x, y) for x, y in zip(pairs_against(a, q, 1.0), pairs_against(b, q, 1.0)))
        with probes(a, 4), probes(b, 4):
            assert all(np.array_equal(x, y) for x, y in zip(nearest_within(a, q, 1.0, 20), nearest_within(b, q, 1.0, 20)))
    some = np.arange(1, 4001, 7)
    assert np.array_equal(loaded.indexed_vectors(some)[1], mapped.indexed_vectors(some)[1])
    assert np.array_equal(loaded.indexed_tile_vectors(some)[1], mapped.indexed_tile_vectors(some)[1])
    loaded.close(), mapped.close()
    store = Store(tmp_path / "s", create=False)
    with store.writer():
        late = np.array(_add(store, q[:50], "late", tiles=np.repeat(q[:50, None], 5, axis=1)))
    store.close()                                   # "late" is in the catalogue, not in the saved files
    saved = (tmp_path / "s" / "index.faiss").read_bytes()
    mapped = Store(tmp_path / "s", create=False, mapped=True)
    assert mapped.index().ntotal == 4050 and mapped.index().delta.ntotal == 50
    qi, ids, f = pairs_against(mapped.index(), q[:50], 1.0)
    assert set(zip(range(50), late.tolist())) <= set(zip(qi.tolist(), ids.tolist()))
    ti, tid, _ = pairs_against(mapped.tile_index(), q[:50], 1.0)
    assert set(zip(range(50), late.tolist())) <= set(zip(ti.tolist(), (tid // 16).tolist()))
    mapped.close()
    assert (tmp_path / "s" / "index.faiss").read_bytes() == saved


def test_mapped_store_loads_a_file_faiss_cannot_map(tmp_path, monkeypatch):
    """A mapped open that faiss refuses falls back to loading the file, not to a rebuild."""
    import faiss

    import imgdup.index.store as st

    centres = np.random.default_rng(50).normal(0, 0.05, (40, 128)).astype(np.float32)
    _ivf_store(tmp_path / "s", centres, [("a", 2000, 51)], nlist=16)
    read = faiss.read_index

    def no_mapping(path, flags=0):
        if flags == faiss.IO_FLAG_MMAP_IFC:
            raise RuntimeError("Error: mapping refused (test)")
        return read(path, flags)

    monkeypatch.setattr(st.faiss, "read_index", no_mapping)
    rebuilt = []
    monkeypatch.setattr(Store, "_fresh_index", lambda self: rebuilt.append(1))
    mapped = Store(tmp_path / "s", create=False, mapped=True)
    assert mapped.index().ntotal == 2000 and not rebuilt
    mapped.close()
