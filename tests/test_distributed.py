"""The Ray engine gives the same store and the same screen report as the local engine.

Runs on a local Ray cluster (``ray.init(num_cpus=2)``); skipped when ray is not installed
(``pip install 'imgdup[ray]'``; the ``test`` extra includes it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imgdup import ingest, load_model, screen
from imgdup.api import expand_inputs
from imgdup.index.store import Store

ray = pytest.importorskip("ray")

DEMO = Path(__file__).resolve().parents[1] / "imgdup" / "demo"
PAIR_KEY = ["query_sha256", "query_panel", "match_sha256", "match_panel"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _inputs(tmp: Path) -> list[str]:
    folder = tmp / "corpus"
    shutil.copytree(DEMO / "corpus", folder)
    shutil.copy(DEMO / "manuscript" / "manuscript.pdf", folder / "manuscript.pdf")
    (folder / "not-a-pdf.pdf").write_text("this is text, not a PDF")
    (tmp / "empty-folder").mkdir()
    return expand_inputs([folder, tmp / "empty-folder"])


def _store_state(path: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    s = Store(path, create=False)
    assert s.check()["problems"] == []
    docs = pd.DataFrame(s.db.execute("SELECT sha256, status, reason, pages, panels FROM documents ORDER BY sha256")
                        .fetchall(), columns=["sha256", "status", "reason", "pages", "panels"])
    panels = s.panel_table()
    ids, vec = s.vectors()
    _, tiles = s.tile_vectors()
    order = np.argsort(ids)
    s.close()
    cols = ["panel_id", "doc_sha256", "page", "figure_id", "panel_key", "kind", "width", "height", "content_hash"]
    return docs, panels[cols].reset_index(drop=True).sort_values("panel_id", ignore_index=True), vec[order], tiles[order]


def test_ray_engine_matches_local(tmp_path, cluster):
    paths = _inputs(tmp_path)
    assert sum(p.endswith(".pdf") for p in paths) == 6 and paths[-1].endswith("empty-folder")
    model = load_model()
    local = ingest(paths, tmp_path / "local", model=model)
    dist = ingest(paths, tmp_path / "ray", model=model, engine="ray", actors=1)
    assert (local.ingested, local.panels, local.skipped.keys()) == (dist.ingested, dist.panels, dist.skipped.keys())
    assert local.ingested == 5 and len(local.skipped) == 2
    assert {Path(p).name: r for p, r in dist.skipped.items()} == {Path(p).name: r for p, r in local.skipped.items()}

    (d1, p1, v1, t1), (d2, p2, v2, t2) = _store_state(tmp_path / "local"), _store_state(tmp_path / "ray")
    pd.testing.assert_frame_equal(d1, d2)
    pd.testing.assert_frame_equal(p1, p2)
    # same weights, same per-document batches; only the CPU thread count may differ
    np.testing.assert_allclose(v1, v2, atol=1e-4)
    np.testing.assert_allclose(t1, t2, atol=1e-4)

    r1 = screen(tmp_path / "local", tmp_path / "out-local", all_pairs=True).report
    r2 = screen(tmp_path / "ray", tmp_path / "out-ray", all_pairs=True).report
    assert len(r1) > 0
    a, b = r1.sort_values(PAIR_KEY).reset_index(drop=True), r2.sort_values(PAIR_KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[PAIR_KEY], b[PAIR_KEY])
    np.testing.assert_allclose(a.distance, b.distance, atol=1e-3)
    assert (a.verified == b.verified).all()

    # idempotent through Ray too: nothing new the second time
    again = ingest(paths, tmp_path / "ray", model=model, engine="ray", actors=1)
    assert again.ingested == 0 and again.already == 5


def test_ray_screen_verification_matches_local(tmp_path, cluster):
    """``screen --engine ray`` verifies the candidate pairs in Ray tasks: the same report,
    row for row and verdict for verdict, as the local thread pool (rejected pairs included)."""
    from imgdup.index.report import VERIFY_FIELDS

    paths = _inputs(tmp_path)
    ingest(paths, tmp_path / "s", model=load_model())
    local = screen(tmp_path / "s", tmp_path / "out-local", all_pairs=True, keep_rejected=True).report
    dist = screen(tmp_path / "s", tmp_path / "out-ray", all_pairs=True, keep_rejected=True, engine="ray").report
    assert len(local) > 20 and local.verified.any() and (~local.verified).any()
    cols = PAIR_KEY + ["distance", "via"] + [c for c in VERIFY_FIELDS if c not in ("overlap_query", "overlap_match",
                                                                                     "points_query", "points_match")]
    pd.testing.assert_frame_equal(local[cols], dist[cols])
    assert [list(map(list, x)) for x in local.overlap_query] == [list(map(list, x)) for x in dist.overlap_query]
    kept = screen(tmp_path / "s", tmp_path / "out-ray2", all_pairs=True, engine="ray").report
    assert len(kept) == int(local.verified.sum()) and kept.verified.all()
