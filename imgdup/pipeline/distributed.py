"""Distributed extraction and embedding on Ray (``imgdup ingest --engine ray``; extra ``imgdup[ray]``).

PDFs -> panels on CPU tasks -> embeddings on a pool of actors (one model load per actor, one GPU
each when the cluster has GPUs) -> back to the driver, which writes the store exactly as the
sequential path does (one writer, the same transactions, the same order).  Ray does the
scheduling; this module only keeps a bounded number of documents in flight, so the object store
never holds a whole archive's pixels.

Each extraction task runs the same isolated worker as the local path
(:func:`imgdup.pipeline.worker.extract_many`: a fresh process with time and memory limits), so a
hostile PDF is skipped with the same reason; a task that Ray itself loses (a node or worker
dying) becomes a skipped document with Ray's error as its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .extract import DocResult, ExtractOptions, Limits
from .worker import extract_many


def _extract_one(path: str, limits: Limits, opts: ExtractOptions) -> DocResult:
    return next(extract_many([path], limits, opts, workers=1))


class _EmbedActor:
    """Holds one model; embeds the panels (whole and sub-regions) of one document per call."""

    def __init__(self, weights: str, device: str, precision: str = "fp32") -> None:
        from ..model.api import load_model

        self.model = load_model(weights, device=device, precision=precision)

    def embed(self, res: DocResult) -> tuple[DocResult, np.ndarray | None, np.ndarray | None]:
        if res.error or not res.panels:
            return res, None, None
        px = [p.pixels for p in res.panels]
        return res, self.model.embed(px), self.model.embed_tiles(px)

    def sha256(self) -> str:
        return self.model.sha256


def ray_stream(paths: list[str], limits: Limits, opts: ExtractOptions, weights: str | Path, expected_sha256: str,
               address: str | None = None, actors: int | None = None, device: str = "auto",
               in_flight: int | None = None, precision: str = "fp32") -> Iterator[tuple[DocResult, np.ndarray | None, np.ndarray | None]]:
    """(document, vectors, tile vectors) for each path, in input order, computed on a Ray cluster.

    ``address``: as ``ray.init`` takes it (``"auto"``: a running cluster; None: start a local
    one).  ``actors``: embedding actors (default: one per GPU, else one per 4 CPUs, at least 1).
    Every actor must load the weights the driver checked (``expected_sha256``)."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as exc:      # pragma: no cover - depends on the install
        raise RuntimeError("the Ray engine needs the ray package: pip install 'imgdup[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0)) if device != "cpu" else 0
    cpus = int(res.get("CPU", 1))
    n_actors = actors or (gpus if gpus else max(1, cpus // 4))
    actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(_EmbedActor)
    pool_actors = [actor_cls.remote(str(weights), "cuda" if gpus else "cpu", precision) for _ in range(n_actors)]
    shas = set(ray.get([a.sha256.remote() for a in pool_actors]))
    if shas != {expected_sha256}:
        raise RuntimeError(f"Ray actors loaded weights {sorted(shas)}, the driver {expected_sha256}: "
                           "install the same imgdup on every node")
    extract = ray.remote(num_cpus=1, max_retries=1)(_extract_one)
    pool = ActorPool(pool_actors)
    window = in_flight or max(4, 2 * cpus)
    submitted, taken = 0, [0]       # results come back in submission order

    def take() -> tuple[DocResult, np.ndarray | None, np.ndarray | None]:
        path = paths[taken[0]]
        taken[0] += 1
        try:
            return pool.get_next()
        except Exception as exc:  # noqa: BLE001 - a lost task is a skipped document, never a lost batch
            return DocResult(path=path, error=f"distributed task failed ({type(exc).__name__}: {exc})"), None, None

    try:
        for path in paths:
            pool.submit(lambda a, ref: a.embed.remote(ref), extract.remote(path, limits, opts))
            submitted += 1
            if submitted - taken[0] >= window:
                yield take()
        while taken[0] < submitted:
            yield take()
    finally:
        for a in pool_actors:
            ray.kill(a)


def _verify_chunk(report, thumbs: dict, threshold: float | None, packed: dict | None = None):
    """One Ray task: ``verify_report`` on a chunk of candidate pairs (every verdict, rejected
    ones included), single-threaded inside the task as the local thread pool runs each pair."""
    from .verify import single_threaded, verify_stored

    with single_threaded():
        return verify_stored(report, thumbs, packed or {}, threshold, threads=1)


def ray_verify(report, thumbs: dict, keep_rejected: bool = False, threshold: float | None = None,
               address: str | None = None, chunks: int | None = None, keypoints: dict | None = None):
    """``verify_report`` of a screen's candidate pairs on a Ray cluster: the pairs are split by
    their first panel (so each panel's keypoints are computed in as few tasks as possible) into
    about 4 chunks per CPU, each chunk verified by one task with the thumbnails it needs.  The
    verdicts do not depend on how pairs are grouped, so the report equals the local one.
    ``keypoints``: the panels' stored keypoints (``Store.evidence``), sent with their thumbnails."""
    import pandas as pd

    from .verify import verify_report

    try:
        import ray
    except ImportError as exc:      # pragma: no cover - depends on the install
        raise RuntimeError("the Ray engine needs the ray package: pip install 'imgdup[ray]'") from exc
    if report.empty:
        return verify_report(report, lambda side, row: None, keep_rejected=keep_rejected, threshold=threshold)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    n = chunks or max(1, 4 * int(ray.cluster_resources().get("CPU", 1)))
    order = report.reset_index(drop=True).assign(_row=np.arange(len(report)))
    order = order.sort_values(["query_panel_id", "match_panel_id"], kind="stable")
    first = order.query_panel_id.to_numpy()
    bounds = np.searchsorted(first, first[np.linspace(0, len(first), n + 1, dtype=int)[1:-1]])
    task = ray.remote(num_cpus=1, max_retries=1)(_verify_chunk)
    refs = []
    for part in np.split(np.arange(len(order)), np.unique(bounds)):
        if not len(part):
            continue
        sub = order.iloc[part]
        need = np.union1d(sub.query_panel_id, sub.match_panel_id)
        refs.append(task.remote(sub, {int(k): thumbs.get(int(k)) for k in need}, threshold,
                                {int(k): keypoints[int(k)] for k in need if keypoints and int(k) in keypoints}))
    out = pd.concat(ray.get(refs)).sort_values("_row").drop(columns="_row")   # the report's order
    if not keep_rejected:
        out = out[out.verified]
    return out.sort_values(["verified", "confidence"], ascending=False, kind="stable").reset_index(drop=True)
