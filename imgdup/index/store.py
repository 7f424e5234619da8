"""The embedded store: one directory, no server.

    catalog.sqlite        documents (also the skipped ones, with their reason), panels, shards,
                          screen runs and store metadata (model sha256) - SQLite transactions
    embeddings/part-*.parquet   panel_id + alpha-scaled vector (the source of truth) + the
                          vectors of the panel's views ("tiles": 10 sub-regions at two sizes, for
                          partial re-use, and the panel histogram-equalised, for tone changes;
                          ``imgdup.model.api.TILE_VIEWS``; 5 or 6 in older shards) +
                          where the panel's evidence lies in the shard's evidence file
    embeddings/part-*.evidence  per panel, a PNG thumbnail (longer side 256 px, more for an elongated
                          panel: ``verify.long_side``; never enlarged) for
                          verification and reviewers, then its verification keypoints and
                          ``verify.PanelFacts`` (``verify.pack_keypoints``), read by offset: a
                          query reads the bytes of its candidates only.  (Shards written before
                          session 9 hold the thumbnail in a "thumb" column and no keypoints, and
                          before session 14 the keypoints carry no facts: what is missing is
                          computed when needed.)
    index.faiss           FAISS IndexIDMap2(IndexFlat, METRIC_L1) - or IVF from IVF_MIN_PANELS on -
                          rebuildable from the shards
    tiles.faiss           the sub-region vectors (L1; flat, or IVF with its own lists from
                          TILE_IVF_MIN_PANELS on), rebuildable from the shards
    .lock                 one writer at a time (fcntl lock), with a clear message

Crash safety: a batch writes its evidence file and then its shard (each temp file + fsync +
rename) *before* the one SQLite transaction that registers the shard, its documents and panels.
On open, shard and evidence files that no transaction registered are deleted (a kill between the
steps), and the FAISS index is caught up from the shards when it lags the catalogue (it is saved
only at the end of a run).  So a kill -9 anywhere leaves a store that opens, with no orphan or
duplicate panel, and a re-run redoes exactly the uncommitted documents.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from .errors import StoreError
from .files import atomic_write
from .search import (TILE_CAP, Chunks, DeltaIndex, add_tiles, build_ivf, choose_knn_nprobe, choose_nprobe,
                     faiss_notices_to_stderr, ids_of, ivf_of, tile_ids)

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    pages INTEGER, images INTEGER, figures INTEGER, panels INTEGER, dropped TEXT,
    seconds REAL, ingested_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS shards (shard INTEGER PRIMARY KEY, file TEXT NOT NULL, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS panels (
    panel_id INTEGER PRIMARY KEY, doc_sha256 TEXT NOT NULL, page INTEGER NOT NULL,
    figure_id TEXT NOT NULL, panel_key TEXT NOT NULL, kind TEXT NOT NULL,
    x0 REAL, y0 REAL, x1 REAL, y1 REAL, width INTEGER, height INTEGER, content_hash TEXT,
    xrefs TEXT, source TEXT, rotation INTEGER, flipped INTEGER, shard INTEGER NOT NULL,
    screened INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS panels_doc ON panels(doc_sha256);
CREATE INDEX IF NOT EXISTS panels_screened ON panels(screened);
CREATE TABLE IF NOT EXISTS screens (
    run_id TEXT PRIMARY KEY, started REAL, finished REAL, panels INTEGER, pairs INTEGER, report TEXT);
"""

PANEL_COLUMNS = ["panel_id", "doc_sha256", "page", "figure_id", "panel_key", "kind", "x0", "y0",
                 "x1", "y1", "width", "height", "content_hash", "xrefs", "source", "rotation",
                 "flipped", "shard"]


TILE_ID_BASE = 16      # tile index ids: panel_id * TILE_ID_BASE + tile number
IVF_MIN_PANELS = 500_000   # from this size on, save_index switches the store to an IVF index
TILE_IVF_MIN_PANELS = 50_000   # ... and its sub-region index (5 vectors a panel; benchmarks/index_scale.py)
ON_DISK_RAM_SHARE = 0.25   # an IVF whose vectors exceed this share of the machine's memory is memory-mapped
PAIR_RADIUS = 1.0          # the f threshold at which the IVF's pair recall is measured
PAIR_RECALL = 0.99         # ... and the recall its nprobe must reach
TILE_RECALL_QUERIES = 500  # stored tile vectors used as queries to measure the tile index's recall
# The neighbours per query vector for which the capped (k-NN) searches' nprobe is measured: a
# query keeps TILE_CAP stored panels; a screen's new panels are in the store and find themselves
# first, so it asks for one more (below this k a search falls back to the larger range nprobe).
KNN_MEASURED_CAP = TILE_CAP + 1


def new_index(dim: int) -> faiss.Index:
    """Exact weighted-L1 index with our panel ids (faiss >= 1.15 for L1 range search)."""
    return faiss.IndexIDMap2(faiss.IndexFlat(dim, faiss.METRIC_L1))


def _id_chunks(ids, size: int = 900):
    """Sorted distinct ids in chunks small enough for one SQLite ``IN (...)`` list."""
    want = sorted({int(i) for i in np.asarray(ids).ravel()})
    for k in range(0, len(want), size):
        yield want[k:k + size]


def available_gb() -> float:
    """Memory available to new processes and the page cache (Linux: MemAvailable; else free), GB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError):
        return float("inf")


def _read_ahead(path: Path, chunk: int = 16 << 20) -> None:
    """Read a whole file once, sequentially, so that its pages are in the page cache before a
    mapped index faults them in one at a time (a cold 5.5-GB sub-region IVF: 64 s of random
    faults against ~8 s read in order; from the cache the pass takes ~0.5 s).  Skipped when the
    file would take more than half of the memory available (the pages would not stay)."""
    try:
        if path.stat().st_size > available_gb() * 2**30 / 2:
            return
        with open(path, "rb", buffering=0) as fh:
            buf = bytearray(chunk)
            while fh.readinto(buf):
                pass
    except OSError:
        return


def _lists_file_name(index: faiss.Index) -> str:
    """The name of the file holding an IVF's on-disk inverted lists ("" when in memory)."""
    ivf = ivf_of(index)
    if ivf is None:
        return ""
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return Path(lists.filename).name if isinstance(lists, faiss.OnDiskInvertedLists) else ""


@dataclass
class PanelRow:
    doc_sha256: str
    page: int
    figure_id: str
    panel_key: str
    kind: str
    bbox: tuple[float, float, float, float]
    width: int
    height: int
    content_hash: str
    xrefs: str
    source: str
    rotation: int
    flipped: bool


EVIDENCE_COLUMNS = ("evidence_offset", "thumb_bytes", "keypoint_bytes")   # where a panel's bytes lie


def _evidence_file(shard_file: str | Path) -> Path:
    """The evidence file that belongs to a shard file."""
    p = Path(shard_file)
    return p.with_name(p.stem + ".evidence")


class EvidenceReader:
    """Reads stored thumbnails and packed keypoints of panels located by ``Store.evidence_reader``."""

    def __init__(self, located: list[tuple[np.ndarray, Path, np.ndarray]], inline: dict[int, bytes]) -> None:
        self._located = located
        self._inline = inline

    def __call__(self, ids: np.ndarray, keypoints: bool = True, lazy: bool = False
                 ) -> tuple[dict[int, np.ndarray], dict[int, bytes]]:
        """(thumbnails, packed keypoints) of those of ``ids`` that were located (others: absent).
        ``lazy``: each thumbnail is a function that decodes it (the bytes are read now), for
        verification, which decodes a stored panel only for the pairs that compare its pixels."""
        want = np.unique(np.asarray(ids, np.int64).ravel())
        pngs: dict[int, bytes] = {}
        packed: dict[int, bytes] = {}
        for pid, path, where in self._located:
            rows = np.flatnonzero(np.isin(pid, want))
            if not len(rows):
                continue
            with open(path, "rb") as fh:
                fd = fh.fileno()
                for p, (o, a, b) in zip(pid[rows].tolist(), where[rows].tolist()):
                    blob = os.pread(fd, a + (b if keypoints else 0), o)
                    if a:
                        pngs[p] = blob[:a]
                    if keypoints and b:
                        packed[p] = blob[a:]
        pngs.update((p, self._inline[p]) for p in want.tolist() if p in self._inline)
        if lazy:
            return {p: partial(_decode_png, png) for p, png in pngs.items()}, packed
        # PNG decoding is most of the time here; OpenCV releases the GIL while it decodes
        n = min(len(pngs) // 64, os.cpu_count() or 1)
        with ThreadPoolExecutor(n) if n > 1 else nullcontext() as pool:
            pixels = (pool.map if pool else map)(_decode_png, pngs.values())
            thumbs = dict(zip(pngs, pixels))
        return thumbs, packed


def _decode_png(png: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)


def _write_parts(parts: list[bytes]):
    """An ``atomic_write`` writer of these byte strings, one after another."""
    def write(path: Path) -> None:
        with open(path, "wb") as fh:
            fh.writelines(parts)
    return write


class Store:
    """Open (or create) a store directory.  Use ``with Store(path).writer():`` to modify it."""

    def __init__(self, path: str | Path, create: bool = True, mapped: bool = False) -> None:
        """``mapped``: read the IVF index files memory-mapped (faiss ``IO_FLAG_MMAP_IFC``) instead of
        copying them into memory, for a store opened to search (query, screen): a 10^6-panel
        store's indexes (6 GB) took 16.5 s to load from a warm page cache (24.5 s cold) and 2.8 s
        to map (9.3 s cold: the files are read ahead once, ``_read_ahead``), with the same
        results.  Vectors added to such an index go to an in-memory delta (``DeltaIndex``) and
        are not saved into its file (the next writer that loads it saves)."""
        self.path = Path(path)
        self.mapped = mapped
        if not self.path.exists():
            if not create:
                raise StoreError(f"no store at {self.path} (run `imgdup ingest` first)")
            self.path.mkdir(parents=True)
        (self.path / "embeddings").mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.path / "catalog.sqlite", timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._index: faiss.Index | None = None
        self._tile_index: faiss.Index | None = None
        self._lock_fh = None

    # ------------------------------------------------------------------ metadata and locking
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def check_model(self, sha256: str, name: str, dim: int) -> None:
        """Bind an empty store to a model, or refuse a different one."""
        have = self.meta("model_sha256")
        if have is None:
            self.db.execute("BEGIN")
            self.set_meta("model_sha256", sha256)
            self.set_meta("model_name", name)
            self.set_meta("dim", str(dim))
            self.set_meta("created_by", f"imgdup {__version__}")
            self.db.execute("COMMIT")
        elif have != sha256:
            raise StoreError(
                f"the store at {self.path} holds vectors of model {self.meta('model_name')} "
                f"(sha256 {have[:12]}...), not of the loaded model {name} ({sha256[:12]}...); "
                f"vectors of different weights cannot be mixed: run `imgdup reindex --index {self.path}`")

    @contextmanager
    def writer(self) -> Iterator["Store"]:
        """Exclusive write access; a second writer gets a clear StoreError."""
        fh = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            fh.close()
            raise StoreError(f"the store at {self.path} is in use by {owner}; try again when it finishes") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        self._lock_fh = fh
        try:
            self.recover()
            yield self
        finally:
            fh.close()
            self._lock_fh = None

    # ------------------------------------------------------------------ consistency
    def recover(self) -> None:
        """Delete shard and evidence files no transaction registered; bring the FAISS index up to date."""
        known = self._registered_files()
        for f in (self.path / "embeddings").iterdir():
            if f.name not in known:
                log.warning("removing unregistered file %s (interrupted write)", f.name)
                f.unlink()
        self._remove_unused_lists()
        self.index()  # loads, verifies and catches up; saved by the next writer

    def _registered_files(self) -> set[str]:
        """Names of the registered shards and of their evidence files."""
        names = [r[0] for r in self.db.execute("SELECT file FROM shards")]
        return set(names) | {_evidence_file(n).name for n in names}

    def documents(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT sha256, status FROM documents"))

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM panels").fetchone()[0]

    # ------------------------------------------------------------------ writing
    def add_batch(self, docs: list[dict], panels: list[PanelRow], vectors: np.ndarray,
                  thumbs: list[bytes] | None = None, tiles: np.ndarray | None = None,
                  keypoints: list[bytes] | None = None) -> list[int]:
        """Register documents (ok or skipped) and their panels + vectors atomically (with each
        panel's PNG thumbnail and packed verification keypoints when given)."""
        assert self._lock_fh is not None, "add_batch needs Store.writer()"
        assert len(panels) == len(vectors)
        thumbs = thumbs if thumbs is not None else [b""] * len(panels)
        ids: list[int] = []
        shard = None
        if panels:
            start = (self.db.execute("SELECT MAX(panel_id) FROM panels").fetchone()[0] or 0) + 1
            ids = list(range(start, start + len(panels)))
            shard = (self.db.execute("SELECT MAX(shard) FROM shards").fetchone()[0] or 0) + 1
            fname = f"part-{shard:08d}.parquet"
            vec = np.ascontiguousarray(vectors, dtype=np.float32)
            keypoints = keypoints if keypoints is not None else [b""] * len(panels)
            assert len(thumbs) == len(keypoints) == len(panels)
            t_len = np.array([len(b) for b in thumbs], np.int64)
            k_len = np.array([len(b) for b in keypoints], np.int64)
            offset = np.concatenate([[0], np.cumsum(t_len + k_len)[:-1]]).astype(np.int64)
            cols = {"panel_id": pa.array(ids, pa.int64()),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), vec.shape[1]),
                    "evidence_offset": pa.array(offset), "thumb_bytes": pa.array(t_len),
                    "keypoint_bytes": pa.array(k_len)}
            if tiles is not None:
                tv = np.ascontiguousarray(tiles, dtype=np.float32)
                cols["tiles"] = pa.FixedSizeListArray.from_arrays(pa.array(tv.ravel()), tv.shape[1] * tv.shape[2])
            table = pa.table(cols)
            try:
                atomic_write(_evidence_file(self.path / "embeddings" / fname),
                             _write_parts([b for pair in zip(thumbs, keypoints) for b in pair]))
                atomic_write(self.path / "embeddings" / fname, lambda tmp: pq.write_table(table, tmp))
            except OSError as exc:
                _evidence_file(self.path / "embeddings" / fname).unlink(missing_ok=True)
                raise self._write_failed(exc) from exc
        try:
            self.db.execute("BEGIN IMMEDIATE")
            if shard is not None:
                self.db.execute("INSERT INTO shards VALUES (?, ?, ?)", (shard, fname, len(ids)))
            for d in docs:
                self.db.execute("INSERT OR REPLACE INTO documents VALUES (?,?,?,?,?,?,?,?,?,?,?)", (
                    d["sha256"], d["path"], d["status"], d.get("reason"), d.get("pages"),
                    d.get("images"), d.get("figures"), d.get("panels"), json.dumps(d.get("dropped", {})),
                    d.get("seconds"), time.time()))
            self.db.executemany(
                f"INSERT INTO panels ({','.join(PANEL_COLUMNS)}) VALUES ({','.join('?' * len(PANEL_COLUMNS))})",
                [(i, p.doc_sha256, p.page, p.figure_id, p.panel_key, p.kind, *p.bbox, p.width, p.height,
                  p.content_hash, p.xrefs, p.source, p.rotation, int(p.flipped), shard)
                 for i, p in zip(ids, panels)])
            self.db.execute("COMMIT")
        except BaseException as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            if shard is not None and not self.db.execute(
                    "SELECT 1 FROM shards WHERE shard = ?", (shard,)).fetchone():
                # not registered: remove it now rather than at the next writer's open
                (self.path / "embeddings" / fname).unlink(missing_ok=True)
                _evidence_file(self.path / "embeddings" / fname).unlink(missing_ok=True)
            if isinstance(exc, OSError) or (isinstance(exc, sqlite3.OperationalError)
                                            and ("full" in str(exc) or "disk" in str(exc))):
                raise self._write_failed(exc) from exc
            raise
        if ids:
            self.index().add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
            if self._tile_index is not None and tiles is not None and len(tiles):
                add_tiles(self._tile_index, np.asarray(tiles, np.float32), np.asarray(ids, np.int64), TILE_ID_BASE)
        return ids

    # ------------------------------------------------------------------ vectors and index
    def _shard_files(self, ids: np.ndarray | None = None) -> list[Path]:
        if ids is None:
            rows = self.db.execute("SELECT file FROM shards ORDER BY shard").fetchall()
        else:
            rows = []
            for chunk in _id_chunks(ids):
                rows += self.db.execute(
                    f"SELECT DISTINCT s.file FROM panels p JOIN shards s ON s.shard = p.shard "
                    f"WHERE p.panel_id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            rows = sorted(set(rows))
        return [self.path / "embeddings" / r[0] for r in rows]

    def thumbs(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        """Stored thumbnails (uint8 greyscale) of the given panels."""
        return self.evidence(ids, keypoints=False)[0]

    def evidence(self, ids: np.ndarray, keypoints: bool = True, lazy: bool = False
                 ) -> tuple[dict[int, np.ndarray], dict[int, bytes]]:
        """Stored thumbnails (uint8 greyscale; ``lazy``: functions that decode them) and packed
        verification keypoints of the given panels (a panel without stored keypoints has none:
        verification computes them).  Only the panels' own bytes are read from the evidence files."""
        return self.evidence_reader(ids)(ids, keypoints, lazy)

    def evidence_reader(self, ids: np.ndarray) -> "EvidenceReader":
        """Where the evidence of the given panels lies, found in one pass over their shards; the
        reader then reads the evidence of any subset of them (a large screen verifies its pairs
        in batches, each reading only its own panels' bytes)."""
        want = np.unique(np.asarray(ids, np.int64).ravel())
        wanted = set(want.tolist())
        located: list[tuple[np.ndarray, Path, np.ndarray]] = []   # (panel ids, evidence file, offsets)
        inline: dict[int, bytes] = {}
        for f in self._shard_files(want):
            pf = pq.ParquetFile(f)
            if "evidence_offset" not in pf.schema_arrow.names:     # an older shard: thumbnails inline, no keypoints
                t = pf.read(columns=["panel_id", "thumb"])
                inline.update((pid, png) for pid, png in zip(t.column("panel_id").to_pylist(),
                                                             t.column("thumb").to_pylist()) if png and pid in wanted)
                continue
            t = pf.read(columns=["panel_id", *EVIDENCE_COLUMNS])
            pid = t.column("panel_id").to_numpy()
            rows = np.flatnonzero(np.isin(pid, want))
            located.append((pid[rows], _evidence_file(f),
                            np.column_stack([t.column(c).to_numpy()[rows] for c in EVIDENCE_COLUMNS])))
        return EvidenceReader(located, inline)

    def vectors(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) from the Parquet shards (all, or those with the given ids)."""
        files = self._shard_files(ids)
        dim = int(self.meta("dim", "128"))
        if not files:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        cols = ["panel_id", "vector"]
        t = pa.concat_tables([pq.read_table(f, columns=cols) for f in files])
        all_ids = t.column("panel_id").to_numpy()
        vec = np.asarray(t.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                         np.float32).reshape(-1, dim)
        if ids is not None:
            keep = np.isin(all_ids, ids)
            all_ids, vec = all_ids[keep], vec[keep]
        return all_ids, vec

    def _tile_vector_parts(self, ids: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(panel ids, (n, tiles, dim) vectors) shard by shard, for the panels whose shards hold
        tile vectors (stores written before tiles existed have none: ``imgdup reindex`` adds them)."""
        dim = int(self.meta("dim", "128"))
        for f in self._shard_files(ids):
            if "tiles" not in pq.read_schema(f).names:
                continue
            t = pq.read_table(f, columns=["panel_id", "tiles"])
            pid = t.column("panel_id").to_numpy()
            v = np.asarray(t.column("tiles").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                           np.float32).reshape(len(pid), -1, dim)
            if ids is not None:
                keep = np.isin(pid, ids)
                pid, v = pid[keep], v[keep]
            yield pid, v

    def tile_vectors(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(panel ids, (n, tiles, dim) vectors) of the panels whose shards hold tile vectors."""
        dim = int(self.meta("dim", "128"))
        parts = list(self._tile_vector_parts(ids))
        got_ids, got = [p[0] for p in parts], [p[1] for p in parts]
        if not got:
            return np.zeros(0, np.int64), np.zeros((0, 0, dim), np.float32)
        most = max(v.shape[1] for v in got)     # shards written before the equalised view hold 5 views:
        got = [v if v.shape[1] == most else      # padded with their first (a repeated query changes nothing)
               np.concatenate([v, np.repeat(v[:, :1], most - v.shape[1], axis=1)], axis=1) for v in got]
        return np.concatenate(got_ids), np.concatenate(got)

    def indexed_vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``vectors(ids)`` of stored panels, in ascending id order, read back from the loaded
        panel index instead of the shards: its vectors are the shards' own float32 values (the
        index catches up with the catalogue when loaded), so a screen of new panels spread over
        a large store reads no shard (10^6 panels: 7 s of Parquet reads)."""
        ids = np.unique(np.asarray(ids, np.int64))
        if len(ids) == 0:
            return ids, np.zeros((0, int(self.meta("dim", "128"))), np.float32)
        return ids, self.index().reconstruct_batch(ids)

    def indexed_tile_vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``tile_vectors(ids)``, in ascending id order, read back from the loaded sub-region
        index (10^6 panels: 23 s of Parquet reads): the panels with views, each padded to the
        most views among them with its first view, as ``tile_vectors`` does."""
        dim = int(self.meta("dim", "128"))
        ids = np.unique(np.asarray(ids, np.int64))
        idx = self.tile_index()
        slots = tile_ids(ids, TILE_ID_BASE, TILE_ID_BASE).reshape(len(ids), TILE_ID_BASE)
        have = np.isin(slots, ids_of(idx))           # a panel's views are tiles 0 .. views - 1
        views = have.sum(axis=1)
        ids, slots, have, views = ids[views > 0], slots[views > 0], have[views > 0], views[views > 0]
        if len(ids) == 0:
            return ids, np.zeros((0, 0, dim), np.float32)
        vec = idx.reconstruct_batch(slots[have])     # row-major: each panel's views in order
        view = np.arange(views.max())[None, :]
        first = np.concatenate([[0], np.cumsum(views)[:-1]])[:, None]
        return ids, vec[first + np.where(view < views[:, None], view, 0)]

    def _chunks(self, column: str = "vector") -> tuple[Chunks, int]:
        """(``Chunks`` over the stored vectors, shard by shard, their number): ``vector`` (panel
        ids) or ``tiles`` (tile ids ``panel_id * TILE_ID_BASE + tile``; shards without tile vectors
        are left out).  One shard in memory at a time."""
        dim = int(self.meta("dim", "128"))
        schemas = {f: pq.read_schema(f) for f in self._shard_files()}
        per_row = {f: sc.field(column).type.list_size // dim for f, sc in schemas.items() if column in sc.names}
        files = list(per_row)
        n = sum(pq.read_metadata(f).num_rows * per_row[f] for f in files)

        def pieces():
            for f in files:
                t = pq.read_table(f, columns=["panel_id", column])
                pid = t.column("panel_id").to_numpy()
                v = np.asarray(t.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False),
                               np.float32).reshape(-1, dim)
                yield (pid if column == "vector" else tile_ids(pid, per_row[f], TILE_ID_BASE)), v
        return pieces, int(n)

    def tile_index(self) -> faiss.Index:
        """A FAISS index of every stored tile vector, id = panel_id * TILE_ID_BASE + tile: kept
        in tiles.faiss (saved with index.faiss) and caught up from the shards of the panels it
        lacks, so it never disagrees with them; rebuilt when it holds unknown panels.  When the
        store's meta says IVF (from TILE_IVF_MIN_PANELS panels on), it is rebuilt as one: its own
        lists, with the recorded nprobe."""
        if self._tile_index is not None:
            return self._tile_index
        idx = self._read_index_file("tiles.faiss")
        catalogue = self._panel_ids()
        covered = np.zeros(0, np.int64)
        if idx is not None:
            covered = np.unique(ids_of(idx) // TILE_ID_BASE)
            if not np.isin(covered, catalogue).all():
                log.warning("tiles.faiss holds panels the catalogue does not; rebuilding")
                idx, covered = None, np.zeros(0, np.int64)
        if idx is None and self.meta("tiles_kind") == "ivf":
            idx = self._tile_ivf(nlist=int(self.meta("tiles_nlist", "0")) or None)
            if idx is not None:
                covered = np.unique(ids_of(idx) // TILE_ID_BASE)
        if idx is None:
            idx = new_index(int(self.meta("dim", "128")))
        missing = catalogue[~np.isin(catalogue, covered)]
        if len(missing):        # panels of stores written before tiles existed stay missing
            for ids, v in self._tile_vector_parts(missing):
                add_tiles(idx, v, ids, TILE_ID_BASE)
        ivf = ivf_of(idx)
        if ivf is not None:
            ivf.nprobe = int(self.meta("tiles_nprobe", str(ivf.nprobe)))
        self._tile_index = idx
        return idx

    def capped_nprobe(self, which: str, k: int) -> int | None:
        """The nprobe measured for capped (k-NN) searches of the panel IVF (``which`` = "ivf") or
        the sub-region IVF ("tiles") by ``choose_knn_nprobe``, when that index is an IVF and it was
        measured for at least ``k`` neighbours; else None (the index's range nprobe applies)."""
        kind = self.meta("index_kind") if which == "ivf" else self.meta("tiles_kind")
        if kind != "ivf" or self.meta(f"{which}_knn_nprobe") is None:
            return None
        measured = int(self.meta(f"{which}_knn_k", "0"))
        if k <= measured:
            return int(self.meta(f"{which}_knn_nprobe"))
        log.warning("the %s IVF's nprobe for capped searches was measured for up to %d neighbours and this "
                    "search asks for %d: it searches with the range nprobe (more lists, slower); `imgdup reindex` "
                    "measures it for --max-candidates up to %d",
                    "panel" if which == "ivf" else "sub-region", measured, k, KNN_MEASURED_CAP - 1)
        return None

    def index(self) -> faiss.Index:
        """The FAISS index, loaded and caught up with the catalogue on first use."""
        if self._index is not None:
            return self._index
        idx = self._read_index_file("index.faiss")
        if idx is None or idx.ntotal != self.count():
            have = ids_of(idx) if idx is not None else np.zeros(0, np.int64)
            catalogue = self._panel_ids()
            if not np.isin(have, catalogue).all():
                log.warning("index holds panels the catalogue does not; rebuilding")
                idx = None
            if idx is None:
                idx = self._fresh_index()
            else:   # a lagging index (killed before its save): add what it misses, no retraining
                missing = catalogue[~np.isin(catalogue, have)]
                if len(missing):
                    ids, vec = self.vectors(missing)
                    idx.add_with_ids(vec, ids)
        ivf = ivf_of(idx)
        if ivf is not None:
            ivf.nprobe = int(self.meta("ivf_nprobe", str(ivf.nprobe)))
        self._index = idx
        return idx

    def _load_index_file(self, name: str) -> faiss.Index:
        """faiss.read_index of a store file with the flags its lists need (``_io_flags``), faiss's
        notices sent to standard error; raises what faiss raises."""
        flags = self._io_flags(name)
        with faiss_notices_to_stderr():
            if flags == faiss.IO_FLAG_MMAP_IFC:
                _read_ahead(self.path / name)
                try:
                    return faiss.read_index(str(self.path / name), flags)
                except RuntimeError as exc:     # a file faiss cannot map: loaded instead, not rebuilt
                    log.info("%s not mappable (%s); loading it", name, str(exc).strip().splitlines()[0])
                    flags = 0
            return faiss.read_index(str(self.path / name), flags)

    def _read_index_file(self, name: str) -> faiss.Index | None:
        """An index file of the store, or None when absent, unreadable or of another metric or
        dimension (the caller rebuilds it from the shards)."""
        path = self.path / name
        if not path.exists():
            return None
        try:
            idx = self._load_index_file(name)
        except Exception as exc:  # damaged file: rebuilt from the shards
            log.warning("%s unreadable (%s); rebuilding from embeddings", name, exc)
            return None
        if idx.metric_type != faiss.METRIC_L1 or idx.d != int(self.meta("dim", "128")):
            log.warning("%s has another metric or dimension; rebuilding from embeddings", name)
            return None
        if self._io_flags(name) and ivf_of(idx) is not None:
            return DeltaIndex(idx)      # lists stay on disk; new panels go to an in-memory delta
        return idx

    def on_disk(self) -> bool:
        """The store's IVF files are memory-mapped, not loaded (``rebuild_index(on_disk=...)``)."""
        return self.meta("ivf_on_disk") == "1"

    def _lists_meta(self, name: str) -> str:
        return "tiles_lists_file" if name == "tiles.faiss" else "ivf_lists_file"

    def _io_flags(self, name: str = "index.faiss") -> int:
        """How to read an index file: its inverted lists in their own file (``build_ivf``'s
        ``lists_file``, found next to it), memory-mapped whole (stores built before the
        out-of-core build; an in-memory IVF for a ``mapped`` store), or loaded.  (faiss 1.15
        crashes when both flags are given.)"""
        if not self.on_disk():
            kind = self.meta("index_kind" if name == "index.faiss" else "tiles_kind")
            return faiss.IO_FLAG_MMAP_IFC if self.mapped and kind == "ivf" else 0
        return faiss.IO_FLAG_ONDISK_SAME_DIR if self.meta(self._lists_meta(name)) else faiss.IO_FLAG_MMAP

    def _panel_ids(self) -> np.ndarray:
        return np.array([r[0] for r in self.db.execute("SELECT panel_id FROM panels")], np.int64)

    def _flat_index(self, chunks: Chunks) -> faiss.Index:
        idx = new_index(int(self.meta("dim", "128")))
        for ids, v in chunks():
            idx.add_with_ids(v, ids)
        return idx

    def _fresh_index(self) -> faiss.Index:
        """An index of every stored vector, of the kind the store records (flat, or IVF with the
        recorded number of lists, in memory: ``imgdup reindex`` puts it on disk again)."""
        chunks, n = self._chunks()
        if self.meta("index_kind", "flat") == "ivf" and n:
            return build_ivf(chunks, n, int(self.meta("dim", "128")), nlist=int(self.meta("ivf_nlist", "0")) or None)
        return self._flat_index(chunks)

    def index_kind(self) -> str:
        return self.meta("index_kind", "flat")

    def save_index(self) -> None:
        """Write index.faiss and tiles.faiss atomically (temp file + rename); a flat index that
        has grown past IVF_MIN_PANELS (the tile index: TILE_IVF_MIN_PANELS) is first rebuilt as
        an IVF, unless a rebuild chose the kind explicitly."""
        if self.meta("index_kind") is None and self.count() >= IVF_MIN_PANELS and self._lock_fh is not None:
            log.warning("the store has %d panels: switching to an IVF index", self.count())
            self.rebuild_index("ivf")
            return
        if self.meta("tiles_kind") is None and self.count() >= TILE_IVF_MIN_PANELS and self._lock_fh is not None:
            log.warning("the store has %d panels: switching the sub-region index to IVF", self.count())
            self._rebuild_tile_index("ivf")
        idx = self.index()
        for index, name in ((idx, "index.faiss"), (self.tile_index(), "tiles.faiss")):
            if isinstance(index, DeltaIndex):
                continue    # the mapped file is left as written; its delta is rebuilt from the shards
            def write(tmp: Path, index=index, name=name) -> None:
                faiss.write_index(index, str(tmp))
                # named before the rename: a reader never takes an on-disk index for a mapped one
                self._set_meta({self._lists_meta(name): _lists_file_name(index)})
            try:
                atomic_write(self.path / name, write)
            except (OSError, RuntimeError) as exc:   # faiss reports a failed write as RuntimeError
                raise self._write_failed(exc) from exc
        self._remove_unused_lists()

    def _remove_unused_lists(self) -> None:
        """Delete inverted-list files that no index file names (earlier builds, interrupted
        ones); a reader that still maps one keeps its pages until it closes.  Writers only."""
        if self._lock_fh is None:
            return
        used = {self.meta(self._lists_meta(n)) for n in ("index.faiss", "tiles.faiss")}
        for f in self.path.glob("*.ivfdata"):
            if f.name not in used:
                f.unlink(missing_ok=True)
        for d in self.path.glob(".ivf-build-*"):
            shutil.rmtree(d, ignore_errors=True)

    def _write_failed(self, exc: BaseException) -> "StoreError":
        why = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
        return StoreError(f"could not write to the store at {self.path} ({why}); what this batch "
                          f"wrote was rolled back and the store is intact: free some disk space and "
                          f"run the same command again")

    def rebuild_index(self, kind: str = "auto", nlist: int | None = None, on_disk: bool | None = None) -> dict:
        """Rebuild the index from the shards: ``flat`` (exact), ``ivf`` (lists trained on a
        sample, nprobe chosen so that at least PAIR_RECALL of the stored pairs within PAIR_RADIUS
        are found, measured against exact search and recorded; the tile index likewise), or
        ``auto`` (IVF from IVF_MIN_PANELS panels on, for the tile index from TILE_IVF_MIN_PANELS).
        ``on_disk``: the IVF's inverted lists are built out of core into their own files
        (``index-*.ivfdata``, ``tiles-*.ivfdata``; at most EXACT_SLICE vectors in memory at a
        time) and stay there: readers map them; panels added later go to an in-memory delta,
        folded in by the next rebuild.  None: when the vectors would take more than
        ON_DISK_RAM_SHARE of this machine's memory.  Returns what was built."""
        assert self._lock_fh is not None, "rebuild_index needs Store.writer()"
        chunks, n = self._chunks()
        dim = int(self.meta("dim", "128"))
        explicit = kind != "auto"
        kind = ("ivf" if n >= IVF_MIN_PANELS else "flat") if kind == "auto" else kind
        if on_disk is None:     # panel + up to 11 view vectors a panel, float32
            on_disk = n * dim * 4 * 12 > ON_DISK_RAM_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        on_disk = bool(on_disk and kind == "ivf" and n >= 2)
        t0 = time.time()
        info: dict = {"kind": kind, "panels": int(n), "on_disk": on_disk}
        if kind == "ivf" and n >= 2:
            idx = build_ivf(chunks, n, dim, nlist=nlist, lists_file=self._new_lists_file("index") if on_disk else None)
            info.update(choose_nprobe(idx, chunks, n, PAIR_RADIUS, PAIR_RECALL))
            info["nlist"] = int(ivf_of(idx).nlist)
            # capped searches (the sub-region search's, --max-candidates): up to KNN_MEASURED_CAP neighbours
            knn = choose_knn_nprobe(idx, chunks, n, PAIR_RADIUS, KNN_MEASURED_CAP, PAIR_RECALL, max_nprobe=info["nprobe"])
            info["capped"] = {key: knn[key] for key in ("nprobe", "recall", "k", "truth_pairs")}
            meta = {"index_kind": "ivf", "ivf_nlist": str(info["nlist"]), "ivf_nprobe": str(info["nprobe"]),
                    "ivf_recall": f"{info['recall']:.4f}", "ivf_built": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "ivf_knn_k": str(KNN_MEASURED_CAP), "ivf_knn_nprobe": str(knn["nprobe"]),
                    "ivf_knn_recall": f"{knn['recall']:.4f}"}
        else:
            info["kind"] = "flat"
            idx = self._flat_index(chunks)
            # an automatic flat is no choice: left unrecorded, the switch to IVF stays armed
            meta = {"index_kind": "flat" if explicit else None}
        meta["ivf_on_disk"] = "1" if on_disk else "0"
        self._set_meta(meta)
        self._index = idx
        tiles = self._rebuild_tile_index(kind if explicit else ("ivf" if n >= TILE_IVF_MIN_PANELS else "flat"),
                                         on_disk, chosen=explicit)
        if tiles:
            info["tiles"] = tiles
        self.save_index()
        if on_disk:     # from now on read through the files just written
            self._index = self._tile_index = None
        info["seconds"] = round(time.time() - t0, 1)
        return info

    def _new_lists_file(self, stem: str) -> Path:
        """A fresh name for the inverted lists of an on-disk IVF (never an existing file: a
        reader may still map the previous one)."""
        return self.path / f"{stem}-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}.ivfdata"

    def _set_meta(self, meta: dict[str, str | None]) -> None:
        """Set these keys in one transaction (None: remove the key)."""
        self.db.execute("BEGIN IMMEDIATE")
        for k, v in meta.items():
            if v is None:
                self.db.execute("DELETE FROM meta WHERE key=?", (k,))
            else:
                self.set_meta(k, v)
        self.db.execute("COMMIT")

    def _tile_ivf(self, nlist: int | None = None, lists_file: Path | None = None) -> faiss.Index | None:
        """An IVF of every stored tile vector (trained on a sample of them), or None when fewer
        than 2 tile vectors are stored."""
        chunks, n = self._chunks("tiles")
        if n < 2:
            return None
        return build_ivf(chunks, n, int(self.meta("dim", "128")), nlist=nlist, lists_file=lists_file)

    def _rebuild_tile_index(self, kind: str, on_disk: bool = False, chosen: bool = True) -> dict | None:
        """Rebuild the sub-region index from the shards as ``flat`` or ``ivf`` (its own lists, on
        disk when ``on_disk``, nprobe chosen for PAIR_RECALL of the tile pairs within PAIR_RADIUS,
        recorded); the caller saves it.  Flat is recorded when ``chosen`` (an explicit kind) or
        when an IVF was asked for but the store has no tile vectors; an automatic flat is not, so
        that ``save_index`` still switches to IVF when the store grows.  Returns the IVF's
        numbers, or None."""
        idx = self._tile_ivf(lists_file=self._new_lists_file("tiles") if on_disk else None) if kind == "ivf" else None
        info = None
        self._tile_index = None                      # flat: rebuilt from the shards when needed
        if idx is not None:
            chunks, n = self._chunks("tiles")
            info = choose_nprobe(idx, chunks, n, PAIR_RADIUS, PAIR_RECALL, queries=TILE_RECALL_QUERIES)
            info = {"nlist": int(ivf_of(idx).nlist), **{k: info[k] for k in ("nprobe", "recall", "truth_pairs", "queries")}}
            # the capped searches of query and screen: k = KNN_MEASURED_CAP x the most views a panel has
            k = KNN_MEASURED_CAP * int((ids_of(idx) % TILE_ID_BASE).max() + 1)
            knn = choose_knn_nprobe(idx, chunks, n, PAIR_RADIUS, k, PAIR_RECALL, queries=TILE_RECALL_QUERIES,
                                    max_nprobe=info["nprobe"], group=TILE_ID_BASE, cap=KNN_MEASURED_CAP)
            info["capped"] = {key: knn[key] for key in ("nprobe", "recall", "k", "truth_pairs")}
            self._set_meta({"tiles_kind": "ivf", "tiles_nlist": str(info["nlist"]), "tiles_nprobe": str(info["nprobe"]),
                            "tiles_recall": f"{info['recall']:.4f}", "tiles_knn_k": str(k),
                            "tiles_knn_nprobe": str(knn["nprobe"]), "tiles_knn_recall": f"{knn['recall']:.4f}"})
            self._tile_index = idx
        else:
            self._set_meta({"tiles_kind": "flat" if chosen or kind == "ivf" else None})
        (self.path / "tiles.faiss").unlink(missing_ok=True)
        return info

    # ------------------------------------------------------------------ reading
    def panel_table(self, ids: np.ndarray | None = None):
        """Catalogue rows (pandas) joined with their document path, optionally for some ids."""
        import pandas as pd

        q = "SELECT p.*, d.path AS doc_path FROM panels p JOIN documents d ON d.sha256 = p.doc_sha256"
        if ids is None:
            df = pd.read_sql_query(q, self.db)
        else:
            parts = [pd.read_sql_query(f"{q} WHERE p.panel_id IN ({','.join('?' * len(c))})", self.db, params=c)
                     for c in _id_chunks(ids)]
            df = pd.concat(parts, ignore_index=True) if parts else pd.read_sql_query(q + " WHERE 0", self.db)
        return df.set_index("panel_id", drop=False)

    def split_figures(self, doc_shas) -> set[tuple[str, str]]:
        """(document sha256, figure id) of the figures of these documents that were divided into
        panels."""
        out: set[tuple[str, str]] = set()
        shas = [str(x) for x in doc_shas]
        for c in range(0, len(shas), 900):
            chunk = shas[c:c + 900]
            out.update(self.db.execute(
                f"SELECT DISTINCT doc_sha256, figure_id FROM panels WHERE kind = 'panel' "
                f"AND doc_sha256 IN ({','.join('?' * len(chunk))})", chunk).fetchall())
        return out

    # ------------------------------------------------------------------ checking
    def check(self) -> dict:
        """Verify the store's invariants without changing it: SQLite integrity, every registered
        shard present and complete, the same panel ids in the catalogue and in the shards (no
        orphan, no duplicate), panels only of documents recorded as ok and as many as recorded,
        and an on-disk FAISS index that holds no panel the catalogue does not.  Returns counts
        and a list of ``problems`` (empty when the store is sound)."""
        problems: list[str] = []
        integrity = self.db.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"catalogue integrity: {integrity}")
        shard_ids: list[np.ndarray] = []
        registered = self.db.execute("SELECT file, rows FROM shards").fetchall()
        for fname, rows in registered:
            f = self.path / "embeddings" / fname
            try:
                pf = pq.ParquetFile(f)
                has_evidence = "evidence_offset" in pf.schema_arrow.names
                t = pf.read(columns=["panel_id", *(EVIDENCE_COLUMNS if has_evidence else ())])
            except Exception as exc:
                problems.append(f"shard {fname} unreadable ({type(exc).__name__}: {exc})")
                continue
            ids = t.column("panel_id").to_numpy()
            if len(ids) != rows:
                problems.append(f"shard {fname} has {len(ids)} rows, the catalogue says {rows}")
            shard_ids.append(ids)
            if has_evidence:
                off, tl, kl = (t.column(c).to_numpy() for c in EVIDENCE_COLUMNS)
                ev = _evidence_file(f)
                if not ev.exists() or ev.stat().st_size < int((off + tl + kl).max(initial=0)):
                    problems.append(f"evidence file {ev.name} missing or short: its panels' thumbnails and "
                                    "keypoints are lost (their pairs are reported 'not verified')")
        in_shards = np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int64)
        catalogue = self._panel_ids()
        if len(np.unique(in_shards)) != len(in_shards):
            problems.append(f"{len(in_shards) - len(np.unique(in_shards))} panel vectors stored twice")
        if n := int((~np.isin(catalogue, in_shards)).sum()):
            problems.append(f"{n} catalogued panels without a vector")
        if n := int((~np.isin(in_shards, catalogue)).sum()):
            problems.append(f"{n} stored vectors without a catalogued panel")
        dup = self.db.execute("SELECT COUNT(*) FROM (SELECT 1 FROM panels GROUP BY doc_sha256, panel_key "
                              "HAVING COUNT(*) > 1)").fetchone()[0]
        if dup:
            problems.append(f"{dup} panels registered twice for one document")
        bad_docs = self.db.execute(
            "SELECT d.path, d.status, d.panels, COUNT(p.panel_id) FROM documents d LEFT JOIN panels p "
            "ON p.doc_sha256 = d.sha256 GROUP BY d.sha256 "
            "HAVING (d.status = 'ok' AND COUNT(p.panel_id) != d.panels) "
            "OR (d.status != 'ok' AND COUNT(p.panel_id) > 0)").fetchall()
        problems += [f"document {p} ({st}) should have {n} panels, has {m}" for p, st, n, m in bad_docs]
        orphans = self.db.execute("SELECT COUNT(*) FROM panels p LEFT JOIN documents d "
                                  "ON d.sha256 = p.doc_sha256 WHERE d.sha256 IS NULL").fetchone()[0]
        if orphans:
            problems.append(f"{orphans} panels of no recorded document")
        on_disk = 0
        for name, per_panel in (("index.faiss", 1), ("tiles.faiss", TILE_ID_BASE)):
            if not (self.path / name).exists():
                continue
            try:
                idx = self._load_index_file(name)
            except Exception as exc:
                problems.append(f"{name} unreadable ({type(exc).__name__}); `imgdup reindex` rebuilds it")
                continue
            on_disk = idx.ntotal if name == "index.faiss" else on_disk
            if n := int((~np.isin(np.unique(ids_of(idx) // per_panel), catalogue)).sum()):
                problems.append(f"{name} holds {n} panels the catalogue does not")
        known = self._registered_files()
        leftovers = [f.name for f in (self.path / "embeddings").iterdir() if f.name not in known]
        docs = dict(self.db.execute("SELECT status, COUNT(*) FROM documents GROUP BY status").fetchall())
        return {"store": str(self.path), "documents": docs.get("ok", 0), "skipped": docs.get("skipped", 0),
                "panels": int(len(catalogue)), "shards": len(registered), "index_on_disk": int(on_disk),
                "index_lag": int(len(catalogue) - on_disk),
                "unregistered_files": leftovers, "problems": problems}

    def close(self) -> None:
        self.db.close()
