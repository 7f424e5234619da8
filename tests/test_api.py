"""The query / screen assembly in imgdup.api: which candidates go on to verification."""

from __future__ import annotations

import numpy as np
import pandas as pd

from imgdup.api import UNBACKED_FIGURE, _back_split_figure_rows, _drop_split_figure_tiles, _split_figures


def _side(sha: str, fig: str, kind: str) -> dict:
    return {"sha256": sha, "figure": fig, "kind": kind}


def test_sub_region_candidates_of_split_figures_are_dropped():
    info = pd.DataFrame({"doc_sha256": ["a", "a", "a", "b", "c"], "figure_id": ["f1", "f1", "f2", "f1", "f1"],
                         "kind": ["figure", "panel", "figure", "figure", "figure"]})
    split = _split_figures(info)
    assert split == {("a", "f1")}                 # a/f2, b/f1 and c/f1 were not divided
    rows = [  # (query side, match side, via, kept?)
        (_side("a", "f1", "figure"), _side("b", "f1", "figure"), "tiles", False),   # split figure's tile
        (_side("b", "f1", "figure"), _side("a", "f1", "figure"), "tiles", False),   # ... on the match side
        (_side("a", "f1", "figure"), _side("b", "f1", "figure"), "whole", True),    # whole figure re-used
        (_side("a", "f1", "panel"), _side("b", "f1", "figure"), "tiles", True),     # a panel, unsplit figure
        (_side("a", "f2", "figure"), _side("c", "f1", "figure"), "tiles", True),    # two unsplit figures
    ]
    rep = pd.DataFrame([{**{f"query_{k}": v for k, v in q.items()}, **{f"match_{k}": v for k, v in m.items()},
                         "via": via, "row": i} for i, (q, m, via, _) in enumerate(rows)])
    kept = _drop_split_figure_tiles(rep, split)
    assert kept.row.tolist() == [i for i, r in enumerate(rows) if r[3]]
    assert _drop_split_figure_tiles(rep.iloc[:0], split).empty


def test_split_figure_rows_stand_only_with_a_verified_pair_of_their_panels():
    """Two whole figures divided into panels (one plotting template, benchmarks/figure_tools.py)
    can agree as wholes while none of their images does: such a verified row is dropped unless a
    pair of their panels (or of a panel and the other, unsplit side) is verified too."""
    split = {("a", "f1"), ("b", "f1"), ("c", "f1")}
    rows = [  # (query side, match side, verified, kept?)
        (_side("a", "f1", "figure"), _side("b", "f1", "figure"), True, True),    # backed by the next row
        (_side("a", "f1", "panel"), _side("b", "f1", "panel"), True, True),
        (_side("a", "f1", "figure"), _side("c", "f1", "figure"), True, False),   # layout only
        (_side("a", "f1", "panel"), _side("c", "f1", "panel"), False, True),     # rejected: no backing
        (_side("d", "f1", "figure"), _side("c", "f1", "figure"), True, True),    # backed by the next row
        (_side("d", "f1", "figure"), _side("c", "f1", "panel"), True, True),     # d/f1 is not split
        (_side("d", "f1", "figure"), _side("e", "f1", "figure"), True, True),    # neither side split
    ]
    rep = pd.DataFrame([{**{f"query_{k}": v for k, v in q.items()}, **{f"match_{k}": v for k, v in m.items()},
                         "verified": ok, "reject_reason": "", "row": i} for i, (q, m, ok, _) in enumerate(rows)])
    kept = _back_split_figure_rows(rep, split, keep_rejected=False)
    assert kept.row.tolist() == [i for i, r in enumerate(rows) if r[3]]
    marked = _back_split_figure_rows(rep, split, keep_rejected=True)
    assert len(marked) == len(rows) and marked.verified.tolist() == [r[2] and r[3] for r in rows]
    assert marked.reject_reason[2] == UNBACKED_FIGURE


def test_documents_embedded_together_as_one_by_one(tmp_path):
    """Ingest embeds several documents in one batch (GPU-sized batches): each document gets the
    vectors it gets alone, in input order, and a broken document passes through as a skip."""
    from pathlib import Path

    import numpy as np

    from imgdup import load_model
    from imgdup.api import _embedded
    from imgdup.pipeline import extract_many

    demo = Path(__file__).resolve().parents[1] / "imgdup" / "demo"
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.4 not really")
    paths = [str(p) for p in sorted((demo / "corpus").glob("*.pdf"))[:2]] + [str(bad)]
    docs = list(extract_many(paths))
    model = load_model()
    one = list(_embedded(iter(docs), model, batch_panels=1))
    together = list(_embedded(iter(docs), model, batch_panels=10_000))
    assert [r.path for r, _, _ in together] == [r.path for r, _, _ in one] == [d.path for d in docs]
    assert together[-1][0].error and together[-1][1] is None
    for (_, v1, t1), (_, v2, t2) in zip(one[:-1], together[:-1]):
        assert v1.shape[0] > 0 and np.allclose(v1, v2, atol=1e-5) and np.allclose(t1, t2, atol=1e-5)


def test_merge_pairs_reports_each_pair_once():
    """A within-manuscript pair found from both panels' sub-regions (canonical order makes the
    two hits equal) is one candidate, with the smaller distance; whole-panel hits come first."""
    from imgdup.api import _merge_pairs

    i, j, f = np.array([0]), np.array([1]), np.array([0.3])
    ti, tj, tf = np.array([0, 2, 2, 4]), np.array([1, 3, 3, 5]), np.array([0.1, 0.6, 0.2, 0.9])
    mi, mj, mf, via = _merge_pairs(i, j, f, ti, tj, tf)
    got = sorted(zip(mi.tolist(), mj.tolist(), mf.tolist(), via.tolist()))
    assert got == [(0, 1, 0.3, "whole"), (2, 3, 0.2, "tiles"), (4, 5, 0.9, "tiles")]


def test_distinct_images_drops_overlapping_tiles_of_one_field():
    """The benchmark pool keeps one of two overlapping tiles of one real micrograph (a scan's
    neighbouring fields) and every unrelated image."""
    from conftest import micrograph
    from imgdup.demo.generate import distinct_images

    big = next(m for m in (micrograph(k) for k in range(60)) if min(m.shape) >= 420 and m.std() > 20)
    other = next(m for m in (micrograph(k) for k in range(60, 120)) if min(m.shape) >= 300 and m.std() > 20)
    a, b, c = big[:300, :300], big[:300, 120:420], other[:300, :300]
    kept = distinct_images([a, c, b])
    assert len(kept) == 2 and kept[0] is a and kept[1] is c


def test_inverted_candidates_kept_beside_plain_ones_then_one_row_per_pair():
    """A pair found both as is and through a panel's negative is verified both ways; the report
    then keeps its better row (the verified one with the higher confidence)."""
    from imgdup.api import _merge_pairs, _one_row_per_pair

    i, j, f = np.array([0, 2]), np.array([1, 3]), np.array([0.3, 0.5])
    ni, nj, nf = np.array([0, 4, 4]), np.array([1, 5, 5]), np.array([0.2, 0.7, 0.4])
    mi, mj, mf, via = _merge_pairs(i, j, f, ni, nj, nf, label="inverted")
    got = sorted(zip(mi.tolist(), mj.tolist(), mf.tolist(), via.tolist()))
    assert got == [(0, 1, 0.2, "inverted"), (0, 1, 0.3, "whole"), (2, 3, 0.5, "whole"), (4, 5, 0.4, "inverted")]
    rep = pd.DataFrame({"query_sha256": "d", "query_panel": [str(a) for a in mi], "match_sha256": "d",
                        "match_panel": [str(b) for b in mj], "distance": mf, "via": via,
                        "verified": [False, True, True, True], "confidence": [0.3, 0.97, 0.6, 0.99]})
    one = _one_row_per_pair(rep)
    assert sorted(zip(one.query_panel, one.via)) == [("0", "inverted"), ("2", "whole"), ("4", "inverted")]
    unverified = _one_row_per_pair(rep.drop(columns=["verified", "confidence"]))
    assert unverified[unverified.query_panel == "0"].via.tolist() == ["inverted"]   # the smaller distance
