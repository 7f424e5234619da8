"""The public Python API behind the CLI: one function per user-facing job."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from .index.report import SIDE_COLUMNS, copy_move_report, empty_report, make_report, unverified, write_report
from .index.search import (TILE_CAP, nearest_within, on_device, pairs_against, pairs_within, probes,
                           tile_index_of, tile_pairs, whole_index_of)
from .index.store import TILE_ID_BASE, PanelRow, Store, StoreError, available_gb
from .model.api import N_TILES, QUERY_VIEWS, Embedder, load_model
from .pipeline import DocResult, ExtractOptions, Limits, extract_many, write_panels
from . import __version__
from .hashing import sha256_file
from .pipeline.verify import attach_evidence, find_copy_moves, thumbnail, verify_report


def extract_panels(pdfs: Sequence[str | Path], out_dir: str | Path, workers: int = 2,
                   progress: bool = False, echo: Callable[[str], None] | None = None,
                   **limits_kw) -> list[DocResult]:
    """PDFs -> panels as PNGs plus panels.parquet under out_dir; bad documents are skipped with
    their reason (see each DocResult.error)."""
    results = []
    stream = extract_many(pdfs, Limits(**limits_kw), ExtractOptions(evidence=False), workers=workers)
    for res in tqdm(stream, total=len(pdfs), desc="extract", unit="doc", disable=not progress):
        results.append(res)
        if echo:
            echo(res.summary())
    write_panels(results, out_dir)
    return results


# ---------------------------------------------------------------------------------------- store

@dataclass
class IngestSummary:
    """What one ``ingest`` did.  ``panels`` counts every stored entry (panels and whole figures,
    both embedded and searched), ``figures`` the whole figures among them."""
    documents: int = 0
    ingested: int = 0
    already: int = 0
    panels: int = 0
    figures: int = 0
    skipped: dict[str, str] = field(default_factory=dict)   # path -> reason
    seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.documents} documents: {self.ingested} ingested "
                f"({self.panels - self.figures} panels, {self.figures} whole figures), "
                f"{self.already} already in the store, {len(self.skipped)} skipped; {self.seconds:.1f}s")


def default_index() -> Path:
    return Path(os.environ.get("IMGDUP_INDEX") or "imgdup-index")


def _panel_rows(res: DocResult) -> list[PanelRow]:
    return [PanelRow(p.doc_sha256, p.page, p.figure_id, p.panel_id, p.kind, tuple(map(float, p.bbox)),
                     p.width, p.height, p.content_hash, ",".join(map(str, p.xrefs)), p.source,
                     p.rotation, p.flipped) for p in res.panels]


class _PendingBatch:
    """Documents, panel rows, vectors and thumbnails waiting for one ``Store.add_batch``."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._clear()

    def _clear(self) -> None:
        self.docs: list[dict] = []
        self.rows: list[PanelRow] = []
        self.vecs: list[np.ndarray] = []
        self.tiles: list[np.ndarray] = []
        self.thumbs: list[bytes] = []
        self.keypoints: list[bytes] = []

    def add(self, res: DocResult, key: str, vectors: np.ndarray | None = None,
            tiles: np.ndarray | None = None) -> None:
        self.docs.append(_doc_row(res, key))
        if not res.error and res.panels:
            self.rows.extend(_panel_rows(res))
            self.vecs.append(vectors)
            self.tiles.append(tiles)
            attach_evidence(res)        # done by the extraction workers; here only what they did not
            self.thumbs.extend(p.thumb for p in res.panels)
            self.keypoints.extend(p.keypoints for p in res.panels)

    def flush(self, store: Store) -> None:
        if self.docs:
            vec = np.concatenate(self.vecs) if self.vecs else np.zeros((0, self.dim), np.float32)
            tiles = np.concatenate(self.tiles) if self.tiles and all(t is not None for t in self.tiles) else None
            store.add_batch(self.docs, self.rows, vec, self.thumbs, tiles=tiles, keypoints=self.keypoints)
        self._clear()


def _doc_row(res: DocResult, sha: str) -> dict:
    return {"sha256": sha, "path": res.path, "status": "skipped" if res.error else "ok",
            "reason": res.error, "pages": res.pages, "images": res.images, "figures": res.figures,
            "panels": len(res.panels), "dropped": res.dropped, "seconds": res.seconds}


def _file_key(path: str | Path) -> str:
    """The store key of an input: its sha256, or a path key for what cannot be read."""
    p = Path(path)
    try:
        return sha256_file(p) if p.is_file() else f"path:{os.path.abspath(p)}"
    except OSError:
        return f"path:{os.path.abspath(p)}"


def expand_inputs(paths: Sequence[str | Path]) -> list[str]:
    """Paths as given, each folder replaced by the PDFs under it (recursive, sorted); a folder
    without PDFs stays, to be skipped with its reason."""
    out: list[str] = []
    for p in map(Path, paths):
        found = sorted(q for q in p.rglob("*") if q.suffix.lower() == ".pdf" and q.is_file()) if p.is_dir() else []
        out += [str(q) for q in found] or [str(p)]
    return out


def _embedded(stream, model: Embedder, batch_panels: int = 256):
    """(document, vectors, tile vectors) for each document of an extraction stream, in order.
    Documents are embedded together once ``batch_panels`` panels wait (a GPU wants large
    batches; the extraction workers go on meanwhile), each document's share handed on."""
    buf: list[DocResult] = []

    def flush():
        px = [p.pixels for r in buf if not r.error for p in r.panels]
        vec, tiles = (model.embed(px), model.embed_tiles(px)) if px else (None, None)
        k = 0
        for r in buf:
            n = 0 if r.error else len(r.panels)
            yield r, (vec[k:k + n] if n else None), (tiles[k:k + n] if n else None)
            k += n
        buf.clear()

    waiting = 0
    for res in stream:
        buf.append(res)
        waiting += 0 if res.error else len(res.panels)
        if waiting >= batch_panels:
            yield from flush()
            waiting = 0
    yield from flush()


def ingest(pdfs: Sequence[str | Path], index: str | Path | None = None, model: Embedder | None = None,
           workers: int = 2, commit_every: int = 8, progress: bool = False,
           echo: Callable[[str], None] | None = None, engine: str = "local", address: str | None = None,
           actors: int | None = None, device: str = "auto", **limits_kw) -> IngestSummary:
    """Extract -> embed -> add.  Idempotent (by document sha256) and resumable after a kill.

    ``engine="ray"`` extracts and embeds on a Ray cluster (``address``, as ``ray.init`` takes it;
    ``actors`` embedding actors on ``device``: auto = GPUs when the cluster has them); the store is
    written here, exactly as with the local engine."""
    t0 = time.time()
    model = model or load_model()
    store = Store(index or default_index())
    summary = IngestSummary(documents=len(pdfs))
    with store.writer():
        store.check_model(model.sha256, model.card.name, model.net.fc2.out_features)
        known = store.documents()
        todo, keys = [], {}
        for p in pdfs:
            key = _file_key(p)
            if known.get(key) == "ok" or key in keys.values():
                summary.already += 1
                continue
            todo.append(str(p))
            keys[str(p)] = key
        pending = _PendingBatch(model.net.fc2.out_features)
        if engine == "ray":
            from .model.api import DEFAULT_WEIGHTS
            from .pipeline.distributed import ray_stream

            stream = ray_stream(todo, Limits(**limits_kw), ExtractOptions(), model.source or DEFAULT_WEIGHTS,
                                model.sha256, address=address, actors=actors, device=device,
                                precision=model.precision)
        elif engine == "local":
            stream = _embedded(extract_many(todo, Limits(**limits_kw), ExtractOptions(), workers=workers), model,
                               batch_panels=model.batch_size)
        else:
            raise ValueError(f"unknown engine {engine!r} (local or ray)")
        for res, vectors, tiles in tqdm(stream, total=len(todo), desc="ingest", unit="doc", disable=not progress):
            key = res.sha256 or keys[res.path]
            if res.error:
                summary.skipped[res.path] = res.error
            else:
                summary.ingested += 1
                summary.panels += len(res.panels)
                summary.figures += sum(p.kind == "figure" for p in res.panels)
            pending.add(res, key, vectors, tiles)
            if echo:
                echo(res.summary())
            if len(pending.docs) >= commit_every or len(pending.rows) >= 4096:
                pending.flush(store)
        pending.flush(store)
        store.save_index()
    store.close()
    summary.seconds = time.time() - t0
    return summary


@dataclass
class QueryResult:
    report: pd.DataFrame
    documents: list[DocResult]
    path: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)    # per stage


class _Clock:
    """Seconds per pipeline stage."""

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self.t, 3)
        self.t = now


def _merge_pairs(i: np.ndarray, j: np.ndarray, f: np.ndarray, ti: np.ndarray, tj: np.ndarray,
                 tf: np.ndarray, via: np.ndarray | None = None, label: str = "tiles"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidates (``via``: how each was found; None: all "whole") plus the ``label`` candidates
    (ti, tj, tf), each pair once among them (a pair found twice keeps its smaller distance).
    "tiles" candidates already present are left out; "inverted" ones (a panel's negative matched
    the other panel) are kept beside a plain row of the same pair, which is verified both ways
    (``_one_row_per_pair`` then keeps the better row)."""
    order = np.argsort(tf, kind="stable")
    ti, tj, tf = ti[order], tj[order], tf[order]
    have = set(zip(i.tolist(), j.tolist())) if label != "inverted" else set()
    new = np.zeros(len(tf), bool)
    for k, pair in enumerate(zip(ti.tolist(), tj.tolist())):
        if pair not in have:
            have.add(pair)
            new[k] = True
    via = np.full(len(f), "whole", object) if via is None else np.asarray(via, object)
    via = np.concatenate([via, np.full(int(new.sum()), label, object)])
    return (np.concatenate([i, ti[new]]).astype(np.int64), np.concatenate([j, tj[new]]).astype(np.int64),
            np.concatenate([f, tf[new]]), via)


def _one_row_per_pair(report: pd.DataFrame) -> pd.DataFrame:
    """One row per pair of panels where a pair was found both as is and through a negative
    (``NEGATIVE_CAP``): the verified row with the higher confidence (unverified reports: the
    smaller distance)."""
    if report.empty or not (report.via == "inverted").any():
        return report
    if "verified" in report:
        ranked = report.sort_values(["verified", "confidence"], ascending=False, kind="stable")
    else:
        ranked = report.sort_values("distance", kind="stable")
    keep = ~ranked.duplicated(["query_sha256", "query_panel", "match_sha256", "match_panel"])
    return report.loc[ranked.index[keep.to_numpy()].sort_values()].reset_index(drop=True)


def _split_figures(info: pd.DataFrame) -> set[tuple[str, str]]:
    """(document sha256, figure id) of the figures that the splitter divided into panels."""
    panels = info[info.kind == "panel"]
    return set(zip(panels.doc_sha256, panels.figure_id))


def _is_split_figure(report: pd.DataFrame, side: str, split: set[tuple[str, str]]) -> np.ndarray:
    """Per report row: is its ``side`` ("query" or "match") a whole figure divided into panels?"""
    return np.array([k == "figure" and (sha, fig) in split for sha, fig, k in
                     zip(report[f"{side}_sha256"], report[f"{side}_figure"], report[f"{side}_kind"])], bool)


def _drop_split_figure_tiles(report: pd.DataFrame, split: set[tuple[str, str]]) -> pd.DataFrame:
    """Drop the sub-region candidates of a figure that was divided into panels: its panels are
    in the index themselves, with their own sub-regions, so such a pair (a tile of the figure
    matching a panel, or a panel matching a tile of it) repeats a panel-level one.  The figure's
    whole-figure candidates are kept (a whole figure shown twice)."""
    if report.empty:
        return report
    drop = (report.via == "tiles").to_numpy() & (_is_split_figure(report, "query", split) |
                                                   _is_split_figure(report, "match", split))
    return report[~drop].reset_index(drop=True)


UNBACKED_FIGURE = "split figure: no pair of its panels verified (frames, layout or labels alone)"


def _back_split_figure_rows(report: pd.DataFrame, split: set[tuple[str, str]], keep_rejected: bool) -> pd.DataFrame:
    """A verified pair with a side that is a whole figure divided into panels stands only when
    a pair of its panels (or of one of its panels and the other side) is verified too: such a
    figure's panels are compared one by one, and two figures drawn with one template (a grid
    of framed images, the same titles and tick labels) can agree as wholes while no image in
    them does.  Rows without backing are dropped (kept as rejected with ``keep_rejected``)."""
    if report.empty or "verified" not in report or not split:
        return report

    def key(r) -> frozenset:
        return frozenset([(r.query_sha256, r.query_figure), (r.match_sha256, r.match_figure)])

    figure_row = _is_split_figure(report, "query", split) | _is_split_figure(report, "match", split)
    verified = report["verified"].to_numpy(bool)
    backing = {key(r) for r in report[verified & ~figure_row].itertuples()}
    unbacked = np.array([f and v and key(r) not in backing for r, f, v in
                         zip(report.itertuples(), figure_row, verified)], bool)
    if not unbacked.any():
        return report
    if not keep_rejected:
        return report[~unbacked].reset_index(drop=True)
    out = report.copy()
    out.loc[unbacked, "verified"] = False
    out.loc[unbacked, "reject_reason"] = UNBACKED_FIGURE
    return out


def _info_from_results(results: list[DocResult]) -> pd.DataFrame:
    recs = []
    for res in results:
        for p in res.panels:
            recs.append({"doc_path": res.path, "doc_sha256": p.doc_sha256, "page": p.page,
                         "x0": p.bbox[0], "y0": p.bbox[1], "x1": p.bbox[2], "y1": p.bbox[3],
                         "panel_key": p.panel_id, "figure_id": p.figure_id, "kind": p.kind,
                         "content_hash": p.content_hash, "xrefs": ",".join(map(str, p.xrefs)),
                         "panel_id": -1})
    return pd.DataFrame(recs, columns=SIDE_COLUMNS)


def _copy_move_rows(info: pd.DataFrame) -> list[int]:
    """Row positions of ``info`` (doc_sha256, figure_id, kind) that copy-move searches: every
    panel, and every figure that was not split into panels (a single image is its own panel).
    A split figure is searched through its panels (its whole would find the re-use between its
    panels again, which the pair search reports)."""
    split = set(zip(info.doc_sha256[info.kind != "figure"], info.figure_id[info.kind != "figure"]))
    return [i for i, (doc, fig, kind) in enumerate(zip(info.doc_sha256, info.figure_id, info.kind))
            if kind != "figure" or (doc, fig) not in split]


# The sub-region searches' radius, as a multiple of the threshold, when verification judges the
# candidates: a crop keeping half a panel, placed in a PDF (resampled, re-compressed), can lie
# just over f = 1 (1.03-1.16 measured) from the nearest of its source's views (docs/BENCHMARKS.md,
# end to end, session 17).  The searches are capped k-NN searches, so a wider radius costs no
# search time; it only lets a sparse store's nearest views through.  Without verification the
# report keeps f <= t.  The search with each panel's negative (capped at NEGATIVE_CAP) uses the
# same radius: an inverted copy that was also cropped or flipped can lie just over f = 1 from the
# query panel's negative (1.017 measured: docs/BENCHMARKS.md, inverted copies, session 22).
VERIFIED_VIEW_RADIUS = 1.25


# Stored panels kept per panel by the search with its negative (inverted copies).  A copy shown
# inverted is its source's nearest neighbour once the query side is inverted back, as a plain copy
# is; a small cap keeps the extra verification work small in a dense store.
NEGATIVE_CAP = 5


def view_radius(threshold: float, verify: bool) -> float:
    """The radius of the sub-region and negative searches (``VERIFIED_VIEW_RADIUS`` x threshold
    when verifying)."""
    return threshold * (VERIFIED_VIEW_RADIUS if verify else 1.0)


def _view_pairs(q_whole: np.ndarray, q_views: np.ndarray, whole_index, tile_index, threshold: float,
                cap: int | None = TILE_CAP):
    """``tile_pairs`` with the shipped views: a query panel searches with its first
    ``QUERY_VIEWS`` views; stored panels hold up to ``N_TILES`` (k of the capped searches)."""
    return tile_pairs(q_whole, q_views[:, :QUERY_VIEWS], whole_index, tile_index, threshold, TILE_ID_BASE,
                      cap=cap, stored_views=N_TILES)


def _store_whole_pairs(store: Store, whole_index, vectors: np.ndarray, threshold: float, k: int | None):
    """Whole-panel candidates against a store: every pair within the threshold (``k`` None, the
    range nprobe of an IVF) or the ``k`` nearest (its IVF with the nprobe measured for capped
    searches, ``Store.capped_nprobe``)."""
    if k is None:
        return pairs_against(whole_index, vectors, threshold)
    with probes(whole_index, store.capped_nprobe("ivf", k)):
        return nearest_within(whole_index, vectors, threshold, k)


def _store_view_pairs(store: Store, q_whole: np.ndarray, q_views: np.ndarray, whole_index, threshold: float,
                      cap: int, device: str = "auto"):
    """``_view_pairs`` against a store, searched capped: its IVFs with the nprobe measured for
    capped searches (``Store.capped_nprobe``)."""
    tiles = on_device(store.tile_index(), device)
    with probes(whole_index, store.capped_nprobe("ivf", cap)), \
            probes(tiles, store.capped_nprobe("tiles", cap * N_TILES)):
        return _view_pairs(q_whole, q_views, whole_index, tiles, threshold, cap=cap)


def query(pdfs: Sequence[str | Path], index: str | Path | None = None, threshold: float | None = None,
          out: str | Path | None = None, add: bool = False, model: Embedder | None = None,
          workers: int = 2, progress: bool = False, verify: bool = True, keep_rejected: bool = False,
          copy_move: bool = True, partial: bool = True, device: str = "auto", max_candidates: int | None = None,
          inverted: bool = True, **limits_kw) -> QueryResult:
    """Compare manuscript panels with each other and with the store (read-only unless add).

    Candidates within the CNN threshold are verified (keypoints + RANSAC, whole-panel alignment,
    calibrated confidence; ``verify``); rejected pairs are dropped unless ``keep_rejected``.
    ``copy_move`` also looks for regions duplicated inside each manuscript panel; ``partial``
    also retrieves candidates through panel sub-regions (crops, shifted fields of view).
    ``device``: where FAISS searches a flat store index (cuda: faiss-gpu; auto: GPU when present).
    ``max_candidates``: keep only the N stored panels nearest to each manuscript panel among those
    within the threshold, in the whole-panel and in the sub-region search (None: all of them in
    the whole-panel search, TILE_CAP in the sub-region search).  ``inverted`` also searches with
    each manuscript panel's negative (its ``NEGATIVE_CAP`` nearest within the threshold, or
    within ``view_radius`` when verifying), for copies shown inverted; such rows have via
    "inverted" and are verified on the negative.
    """
    model = model or load_model()
    t = float(threshold if threshold is not None else model.threshold)
    tv = view_radius(t, verify)
    clock = _Clock()
    # the manuscript's keypoints are computed by the verification threads, for the panels that
    # have candidates (in the extraction worker, one per document, a one-PDF query ran them serially)
    stream = extract_many(list(pdfs), Limits(**limits_kw), ExtractOptions(evidence=False), workers=workers)
    results = list(tqdm(stream, total=len(pdfs), desc="extract", unit="doc", disable=not progress))
    clock.lap("extract")
    good = [r for r in results if not r.error]
    qinfo = _info_from_results(good)
    qpix = [p.pixels for r in good for p in r.panels]
    qvec = model.embed(qpix)
    # the views (11 a panel: most of the embedding time) serve the sub-region search and --add
    qtiles = model.embed_tiles(qpix) if partial or add else None
    qneg = model.embed_negatives(qpix) if inverted else None
    clock.lap("embed")
    parts = []
    i, j, f = pairs_within(qvec, t)
    via = np.full(len(f), "whole", object)
    rows = np.arange(len(qvec))
    if partial and len(qvec) > 1:
        ti, tj, tf = _view_pairs(qvec, qtiles, whole_index_of(qvec, rows),
                                 tile_index_of(qtiles, rows, TILE_ID_BASE), tv)
        lo, hi = np.minimum(ti, tj), np.maximum(ti, tj)
        i, j, f, via = _merge_pairs(i, j, f, lo[lo != hi], hi[lo != hi], tf[lo != hi], via)
    if qneg is not None and len(qvec) > 1:      # +1: a panel may be near its own negative
        ni, nj, nf = nearest_within(whole_index_of(qvec, rows), qneg, tv, NEGATIVE_CAP + 1)
        lo, hi = np.minimum(ni, nj), np.maximum(ni, nj)
        i, j, f, via = _merge_pairs(i, j, f, lo[lo != hi], hi[lo != hi], nf[lo != hi], via, "inverted")
    parts.append(make_report(qinfo, qinfo, i, j, f, via))
    split = _split_figures(qinfo)
    store_path = Path(index or default_index())
    stored_thumbs: dict[int, Callable[[], np.ndarray]] = {}
    stored_kp: dict[int, bytes] = {}
    if store_path.exists():
        store = Store(store_path, create=False, mapped=True)     # read only here (--add opens its own)
        if store.count():
            store.check_model(model.sha256, model.card.name, qvec.shape[1])
            whole = on_device(store.index(), device)
            qi, ids, f = _store_whole_pairs(store, whole, qvec, t, max_candidates)
            via = np.full(len(f), "whole", object)
            if partial:
                ti, tids, tf = _store_view_pairs(store, qvec, qtiles, whole, tv, max_candidates or TILE_CAP, device)
                qi, ids, f, via = _merge_pairs(qi, ids, f, ti, tids, tf, via)
            if qneg is not None:
                ni, nids, nf = _store_whole_pairs(store, whole, qneg, tv, NEGATIVE_CAP)
                qi, ids, f, via = _merge_pairs(qi, ids, f, ni, nids, nf, via, "inverted")
            minfo = store.panel_table(ids)
            split |= store.split_figures(minfo.doc_sha256.unique())
            mine = set(qinfo.doc_sha256)
            keep = ~minfo.loc[ids, "doc_sha256"].isin(mine).to_numpy() if len(ids) else np.zeros(0, bool)
            qi, ids, f, via = qi[keep], ids[keep], f[keep], via[keep]
            pos = minfo.index.get_indexer(ids)
            parts.append(make_report(qinfo, minfo.reset_index(drop=True), qi, pos, f, via))
            if verify and len(ids):
                stored_thumbs, stored_kp = store.evidence(np.unique(ids), lazy=True)
        store.close()
    report = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else parts[0]
    report = _drop_split_figure_tiles(report, split)
    report = report.sort_values("distance", kind="stable").reset_index(drop=True)
    clock.lap("search")
    if verify and len(report):
        manuscript = {(p.doc_sha256, p.panel_id): p for r in good for p in r.panels}

        def lookup(side: str, row) -> np.ndarray | None:
            pid = getattr(row, f"{side}_panel_id")
            if pid >= 0:
                return stored_thumbs.get(int(pid))
            p = manuscript.get((getattr(row, f"{side}_sha256"), getattr(row, f"{side}_panel")))
            return None if p is None else thumbnail(p.pixels)

        def keypoints(side: str, row) -> bytes | None:       # stored panels' (the manuscript's: computed)
            pid = getattr(row, f"{side}_panel_id")
            return stored_kp.get(int(pid)) if pid >= 0 else None

        report = verify_report(report, lookup, keep_rejected=keep_rejected, progress=progress, keypoints=keypoints)
        report = _back_split_figure_rows(report, split, keep_rejected)
    report = _one_row_per_pair(report)
    clock.lap("verify")
    if copy_move:
        px = {i: qpix[i] for i in _copy_move_rows(qinfo)}
        cm = copy_move_report(qinfo, find_copy_moves(px, progress=progress))
        if len(cm):
            report = pd.concat([cm, unverified(report)], ignore_index=True)
    clock.lap("copy_move")
    meta = {"command": "query", "max_candidates": max_candidates or "none",
            "view_radius": tv if partial else "none"}
    path = write_report(report, out, model.sha256, t, meta) if out else None
    if add:
        store = Store(store_path)
        with store.writer():
            store.check_model(model.sha256, model.card.name, qvec.shape[1])
            known = store.documents()
            pending, offset = _PendingBatch(qvec.shape[1]), 0
            for r in good:
                n = len(r.panels)
                if known.get(r.sha256) != "ok":
                    pending.add(r, r.sha256, qvec[offset:offset + n], qtiles[offset:offset + n])
                offset += n
            pending.flush(store)
            store.save_index()
        store.close()
    return QueryResult(report, results, path, clock.laps)


@dataclass
class ScreenResult:
    report: pd.DataFrame
    panels: int
    path: Path | None
    run_id: str
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)   # seconds: search, verify, copy_move
    candidates: int = 0     # candidate pairs found by the searches (before verification)


SCREEN_BATCH = 8192     # candidate pairs a screen verifies at a time (bounds its memory)
SCREEN_PROCESSES: int | None = None    # processes verifying a screen's batches (None: one per core...
SCREEN_WORKER_GB = 2.0     # ... and at most one per this much available memory: ~1 GB measured a worker


def _negative_vectors(store: Store, ids: np.ndarray, model: Embedder, chunk: int = 2048
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of stored panels' negatives, from their stored thumbnails (the CNN sees 64 px,
    the thumbnails hold 256): (the ids that have a thumbnail, their vectors), ``chunk`` at a time."""
    out_ids, out = [np.zeros(0, np.int64)], [np.zeros((0, model.net.fc2.out_features), np.float32)]
    for s in range(0, len(ids), chunk):
        thumbs = store.thumbs(ids[s:s + chunk])
        have = [int(i) for i in ids[s:s + chunk] if thumbs.get(int(i)) is not None]
        if have:
            out_ids.append(np.array(have, np.int64))
            out.append(model.embed_negatives([thumbs[i] for i in have]))
    return np.concatenate(out_ids), np.concatenate(out)


def _screen_processes(batches: int) -> int:
    """How many processes verify a screen's ``batches``: ``SCREEN_PROCESSES``, or one per core
    as far as the available memory allows (``SCREEN_WORKER_GB`` each); never more than batches."""
    if SCREEN_PROCESSES:
        return max(1, min(SCREEN_PROCESSES, batches))
    return max(1, min(os.cpu_count() or 1, int(available_gb() // SCREEN_WORKER_GB), batches))


def _verify_in_batches(report: pd.DataFrame, reader, keep_rejected: bool, progress: bool, engine: str,
                       address: str | None, batch: int | None = None) -> pd.DataFrame:
    """``verify_report`` (or ``ray_verify``) of a screen's candidate pairs, ``batch`` pairs at a
    time grouped by their first panel, each batch reading only its own panels' evidence through
    ``reader`` (``Store.evidence_reader``).  All at once, a screen held every candidate panel's
    thumbnail, keypoints and unpacked descriptors to the end: 10,000 new panels against 100,000
    at ``--max-candidates 5`` were killed by the OOM killer at 24 GB (5.3 GB in batches;
    docs/BENCHMARKS.md).  With more than one batch, the batches go to worker processes
    (``_screen_processes``; threads share the GIL: 261 vs 228 s on 2 cores); one batch is
    verified by threads here.  The verdicts do not depend on the batches or the processes: the same report."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from .pipeline.verify import init_batch_worker, verify_batch

    batch = batch or SCREEN_BATCH
    order = report.reset_index(drop=True).assign(_screen_row=np.arange(len(report)))
    order = order.sort_values(["query_panel_id", "match_panel_id"], kind="stable")
    subs = [order.iloc[s:s + batch] for s in range(0, len(order), batch)]
    procs = _screen_processes(len(subs))
    parts = []
    with tqdm(total=len(order), desc="verify", unit="pair", disable=not progress) as bar:
        if engine == "ray":
            from .pipeline.distributed import ray_verify

            for sub in subs:
                th, kp = reader(np.union1d(sub.query_panel_id, sub.match_panel_id))
                parts.append(ray_verify(sub, th, keep_rejected=True, address=address, keypoints=kp))
                bar.update(len(sub))
        elif procs > 1:
            with ProcessPoolExecutor(procs, mp_context=get_context("spawn"), initializer=init_batch_worker,
                                     initargs=(reader,)) as pool:
                for sub, part in zip(subs, pool.map(partial(verify_batch, threads=1), subs)):
                    parts.append(part)
                    bar.update(len(sub))
        else:
            for sub in subs:
                parts.append(verify_batch(sub, reader))
                bar.update(len(sub))
    out = pd.concat(parts).sort_values("_screen_row").drop(columns="_screen_row")     # the report's order
    if not keep_rejected:
        out = out[out.verified]
    return out.sort_values(["verified", "confidence"], ascending=False, kind="stable").reset_index(drop=True)


def screen(index: str | Path | None = None, out_dir: str | Path = "imgdup-reports", all_pairs: bool = False,
           threshold: float | None = None, model_sha256: str | None = None, verify: bool = True,
           keep_rejected: bool = False, copy_move: bool = False, progress: bool = False,
           partial: bool = True, device: str = "auto", engine: str = "local",
           address: str | None = None, max_candidates: int | None = None, inverted: bool = True,
           model: Embedder | None = None) -> ScreenResult:
    """The nightly job: panels added since the last screen (or all) against the whole store.

    ``engine="ray"`` verifies the candidate pairs on a Ray cluster (``address`` as ``ray.init``
    takes it); the search and the report are made here, and the report equals the local one.
    ``max_candidates``: as for ``query``, per new panel (bounds the verification work per panel
    when a large store holds many panels within the threshold of each).

    ``copy_move`` also searches each new panel for regions duplicated inside it (about 0.4 s a
    panel on one CPU core, so it is opt-in for large runs).

    ``inverted`` also searches with each new panel's negative, embedded by ``model`` (default:
    the shipped weights) from its stored thumbnail, for copies shown inverted; skipped, with a
    warning, when the store's vectors come from other weights."""
    if engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {engine!r} (local or ray)")
    t0 = time.time()
    clock = _Clock()
    store = Store(index or default_index(), create=False, mapped=True)     # adds nothing to the indexes
    with store.writer():
        sha = store.meta("model_sha256") or ""
        if model_sha256 and sha and model_sha256 != sha:
            raise StoreError("the store was built with other weights; run `imgdup reindex`")
        t = float(threshold if threshold is not None else 1.0)
        tv = view_radius(t, verify)
        where = "" if all_pairs else "WHERE screened = 0"
        new = np.array([r[0] for r in store.db.execute(f"SELECT panel_id FROM panels {where}")], np.int64)
        run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        report = empty_report()
        candidates = 0
        if len(new):
            ids, vec = store.indexed_vectors(new)        # (no shard read: new panels may be anywhere)
            whole = on_device(store.index(), device)
            qi, mid, f = _store_whole_pairs(store, whole, vec, t,        # +1: the panel itself
                                            None if max_candidates is None else max_candidates + 1)
            via = np.full(len(f), "whole", object)
            if partial:
                tid, tvec = store.indexed_tile_vectors(new)
                if len(tid):
                    rows = pd.Index(ids).get_indexer(tid)
                    ti, tm, tf = _store_view_pairs(store, vec[rows], tvec, whole, tv,
                                                   max_candidates + 1 if max_candidates else TILE_CAP, device)
                    qi, mid, f, via = _merge_pairs(qi, mid, f, rows[ti], tm, tf, via)
            if inverted:
                model = model or load_model()
                if model.sha256 == sha:
                    nid, neg = _negative_vectors(store, ids, model)
                    ni, nm, nf = _store_whole_pairs(store, whole, neg, tv, NEGATIVE_CAP + 1)
                    rows = pd.Index(ids).get_indexer(nid)
                    qi, mid, f, via = _merge_pairs(qi, mid, f, rows[ni], nm, nf, via, "inverted")
                else:
                    warnings.warn("screen: the store's vectors come from other weights than the loaded "
                                  "model's; inverted copies are not searched for (run `imgdup reindex`)")
            a, b = ids[qi], mid
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            keep = lo != hi
            pairs = pd.DataFrame({"lo": lo[keep], "hi": hi[keep], "f": f[keep], "via": via[keep]})
            pairs["negative"] = pairs.via == "inverted"     # verified beside a plain row of the pair
            pairs = pairs.sort_values("f", kind="stable").drop_duplicates(["lo", "hi", "negative"])
            info = store.panel_table(np.union1d(pairs.lo, pairs.hi)).reset_index(drop=True)
            pos = pd.Index(info.panel_id)
            report = make_report(info, info, pos.get_indexer(pairs.lo), pos.get_indexer(pairs.hi),
                                 pairs.f.to_numpy(), pairs.via.to_numpy())
            split = store.split_figures(info.doc_sha256.unique())
            report = _drop_split_figure_tiles(report, split)
            clock.lap("search")
            candidates = len(report)
            if verify and len(report):
                reader = store.evidence_reader(np.union1d(report.query_panel_id, report.match_panel_id))
                report = _verify_in_batches(report, reader, keep_rejected, progress, engine, address)
                report = _back_split_figure_rows(report, split, keep_rejected)
                clock.lap("verify")
            report = _one_row_per_pair(report)
            if copy_move:
                th = store.thumbs(new)
                ninfo = store.panel_table(new).reset_index(drop=True)
                px = {i: th.get(int(ninfo.panel_id[i])) for i in _copy_move_rows(ninfo)}
                cm = copy_move_report(ninfo, find_copy_moves(px, progress=progress))
                if len(cm):
                    report = pd.concat([cm, unverified(report)], ignore_index=True)
                clock.lap("copy_move")
        day = run_id[:4] + "-" + run_id[4:6] + "-" + run_id[6:8]
        path = Path(out_dir) / f"date={day}" / f"screen-{run_id}.parquet"
        write_report(report, path, sha, t, {"command": "screen", "run_id": run_id,
                                            "mode": "all" if all_pairs else "new",
                                            "max_candidates": max_candidates or "none",
                                            "view_radius": tv if partial else "none"})
        store.db.execute("BEGIN IMMEDIATE")
        if len(new):
            store.db.executemany("UPDATE panels SET screened = 1 WHERE panel_id = ?", [(int(i),) for i in new])
        store.db.execute("INSERT INTO screens VALUES (?, ?, ?, ?, ?, ?)",
                         (run_id, t0, time.time(), int(len(new)), int(len(report)), str(path)))
        store.db.execute("COMMIT")
    store.close()
    result = ScreenResult(report, int(len(new)), path, run_id, time.time() - t0, clock.laps, candidates)
    _log_run(Path(out_dir) / "screen-runs.jsonl", {
        "run_id": run_id, "started": dt.datetime.fromtimestamp(t0, dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(result.seconds, 1), "stages": result.stages, "mode": "all" if all_pairs else "new",
        "store": str(store.path),
        "panels_screened": result.panels, "candidates": candidates, "pairs": int(len(report)),
        "verified": int(report["verified"].sum()) if "verified" in report and len(report) else 0,
        "report": str(path), "model_sha256": sha, "imgdup": __version__})
    return result


def _log_run(path: Path, record: dict) -> None:
    """Append one JSON line (the operator's run log) and fsync it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def reindex(index: str | Path | None = None, model: Embedder | None = None, workers: int = 2,
            progress: bool = False, kind: str = "auto", nlist: int | None = None, on_disk: bool | None = None,
            re_extract: bool = False) -> str:
    """Rebuild the FAISS index from the embeddings (``kind``: auto, flat or ivf; ``on_disk``: an
    IVF memory-mapped by readers; see ``Store.rebuild_index``); if the store was built with
    other weights, or ``re_extract`` is asked (a store written before the current views,
    keypoints or extraction), re-extract its documents from their recorded paths and re-embed
    them with the current model into a fresh store that replaces the old one (documents no
    longer at their path are then recorded as skipped, and screen history starts afresh)."""
    path = Path(index or default_index())
    model = model or load_model()
    store = Store(path, create=False)
    if not re_extract and store.meta("model_sha256") in (None, model.sha256):
        with store.writer():
            info = store.rebuild_index(kind, nlist, on_disk=on_disk)
        store.close()
        if info["kind"] == "ivf":
            return (f"IVF index rebuilt from embeddings: {info['panels']} vectors, {info['nlist']} lists, "
                    f"nprobe {info['nprobe']} (recall {info['recall']:.3f} of the pairs within f <= 1 "
                    f"against exact search, {info['queries']} sample queries), {info['capped']['nprobe']} for "
                    f"capped searches (recall {info['capped']['recall']:.3f})" + (
                        f"; tile index: {info['tiles']['nlist']} lists, nprobe {info['tiles']['nprobe']} "
                        f"(recall {info['tiles']['recall']:.3f}), {info['tiles']['capped']['nprobe']} for capped "
                        f"searches (recall {info['tiles']['capped']['recall']:.3f})" if "tiles" in info else "")
                    + ("; memory-mapped from disk" if info["on_disk"] else "") + f"; {info['seconds']}s")
        return f"flat index rebuilt from embeddings: {info['panels']} vectors; {info['seconds']}s"
    paths = [r[0] for r in store.db.execute("SELECT path FROM documents WHERE status = 'ok'")]
    store.close()
    fresh = path.with_name(path.name + ".reindex")
    if fresh.exists():
        shutil.rmtree(fresh)
    summary = ingest(paths, fresh, model=model, workers=workers, progress=progress)
    old = path.with_name(path.name + ".old")
    os.replace(path, old)
    os.replace(fresh, path)
    shutil.rmtree(old)
    return f"re-embedded with {model.card.name}: {summary.line()}"


def demo(index: str | Path = "imgdup-demo-index", out: str | Path = "imgdup-demo-report.parquet",
         progress: bool = False, echo: Callable[[str], None] | None = None) -> QueryResult:
    """Ingest the shipped demo corpus, then query the demo manuscript against it."""
    from .demo import DEMO_DIR

    corpus = sorted((DEMO_DIR / "corpus").glob("*.pdf"))
    summary = ingest(corpus, index, progress=progress, echo=echo)
    if echo:
        echo(summary.line())
    return query(sorted((DEMO_DIR / "manuscript").glob("*.pdf")), index, out=out, progress=progress)
