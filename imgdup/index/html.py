"""A pair report (Parquet) -> a static, offline HTML page a reviewer can read.

Pairs are grouped by the query document and sorted by confidence.  For each pair: the query
panel with the verified overlap outlined and the matched keypoints, the match panel turned to
the query's orientation (the flip / quarter turn the verification found) with the same marks,
and a difference map of the two once registered.  Page numbers, figure ids, scores and links to
the PDF pages go beside them.  Jinja2 escapes every string (file names and anything taken from
a PDF); the page allows no script (Content-Security-Policy); every file is written under the
output directory with a name imgdup makes up.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pyarrow.parquet as pq

from .. import __version__
from ..pipeline.verify import negative_grey

RED, BLUE, GREEN = (30, 48, 224), (224, 155, 30), (60, 180, 60)     # BGR
SHOW = 300          # displayed panel width (px)

_TURN = {
    "identity": lambda x: x, "rot90": lambda x: np.rot90(x, 1), "rot180": lambda x: np.rot90(x, 2),
    "rot270": lambda x: np.rot90(x, 3), "flip-lr": lambda x: x[:, ::-1], "flip-ud": lambda x: x[::-1],
    "transpose": lambda x: np.swapaxes(x, 0, 1), "anti-transpose": lambda x: np.swapaxes(np.rot90(x, 2), 0, 1),
}


def _bgr(grey: np.ndarray, side: int = 2 * SHOW) -> np.ndarray:
    h, w = grey.shape
    s = side / max(h, w)
    img = cv2.resize(grey, (max(1, round(w * s)), max(1, round(h * s))),
                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)


def _marks(img: np.ndarray, poly, points, colour=RED) -> np.ndarray:
    h, w = img.shape[:2]
    scale = np.array([w, h], np.float64)
    if len(poly) >= 3:
        cv2.polylines(img, [np.round(np.asarray(poly, float) * scale).astype(np.int32)], True, colour,
                      max(2, w // 200), cv2.LINE_AA)
    for p in np.asarray(points, float).reshape(-1, 2):
        cv2.circle(img, tuple(int(v) for v in np.round(p * scale)), max(2, w // 150), BLUE, -1, cv2.LINE_AA)
    return img


def _difference(a: np.ndarray, b: np.ndarray, pa, pb) -> np.ndarray | None:
    """Heat map of |a - b registered onto a| (rank-normalised) inside the overlap."""
    pa, pb = np.asarray(pa, float).reshape(-1, 2), np.asarray(pb, float).reshape(-1, 2)
    if len(pa) < 3:
        return None
    ha, wa = a.shape
    hb, wb = b.shape
    A, _ = cv2.estimateAffine2D((pb * [wb, hb]).astype(np.float32), (pa * [wa, ha]).astype(np.float32))
    if A is None:
        return None
    warped = cv2.warpAffine(b, A, (wa, ha), flags=cv2.INTER_LINEAR)
    valid = cv2.warpAffine(np.full_like(b, 255), A, (wa, ha), flags=cv2.INTER_NEAREST) > 0

    def rank(x: np.ndarray) -> np.ndarray:
        v = cv2.GaussianBlur(x, (0, 0), 1.0)[valid].astype(np.float64)
        r = np.zeros(x.shape, np.float64)
        r[valid] = v.argsort(kind="stable").argsort() / max(1, valid.sum() - 1)
        return r

    if valid.sum() < 50:
        return None
    diff = np.abs(rank(a) - rank(warped))
    heat = cv2.applyColorMap(np.clip(diff * 2 * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    heat[~valid] = (235, 235, 235)
    return cv2.resize(heat, (2 * SHOW, max(1, round(2 * SHOW * ha / wa))), interpolation=cv2.INTER_NEAREST)


def _fmt(v, spec: str = ".3f") -> str:
    try:
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)
    except (TypeError, ValueError):
        return str(v)


class PixelSource:
    """Panel pixels for the report: the store's thumbnails, else the PDF page region rendered."""

    def __init__(self, index: str | Path | None = None) -> None:
        self.thumbs: dict[int, np.ndarray] = {}
        self.index = Path(index) if index else None

    def preload(self, ids: np.ndarray) -> None:
        if self.index is not None and self.index.exists() and len(ids):
            from .store import Store

            store = Store(self.index, create=False)
            try:
                self.thumbs = store.thumbs(np.unique(ids[ids >= 0]))
            finally:
                store.close()

    def get(self, panel_id: int, doc: str, page: int, bbox) -> np.ndarray | None:
        if panel_id >= 0 and panel_id in self.thumbs:
            return self.thumbs[panel_id]
        return _render(doc, page, bbox)


def _render(doc: str, page: int, bbox) -> np.ndarray | None:
    """The panel's page region, rendered (None when the PDF is gone or unreadable)."""
    import pymupdf

    from ..pipeline.extract import render_clip

    try:
        with pymupdf.open(doc) as d:
            if d.needs_pass or not (1 <= page <= d.page_count):
                return None
            return render_clip(d[page - 1], pymupdf.Rect(*bbox), 512, 300.0)
    except Exception:       # a moved, broken or hostile file: the report says "unavailable"
        return None


def _page_link(doc: str, page: int) -> str:
    p = Path(doc)
    return f"{p.resolve().as_uri()}#page={int(page)}" if p.is_absolute() or p.exists() else ""


def _write_png(img: np.ndarray, out: Path, name: str) -> str:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        return ""
    tmp = out / f".{name}.tmp"
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, out / name)
    return f"img/{name}"


def render_html(report_path: str | Path, out_dir: str | Path, index: str | Path | None = None,
                include_rejected: bool = False, limit: int = 500,
                progress: Callable[[int], None] | None = None) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/img/*.png`` for a Parquet pair report."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    report_path, out = Path(report_path), Path(out_dir)
    table = pq.read_table(report_path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"imgdup.")}
    df = table.to_pandas()
    if not include_rejected and "verified" in df:
        df = df[df.verified]
    sort_col = "confidence" if "confidence" in df else "score"
    df = df.sort_values(sort_col, ascending=False, kind="stable", na_position="last").head(limit)
    imgdir = out / "img"
    imgdir.mkdir(parents=True, exist_ok=True)
    src = PixelSource(index)
    src.preload(np.concatenate([df.query_panel_id.to_numpy(), df.match_panel_id.to_numpy()]).astype(np.int64))
    groups: dict[str, list[dict]] = {}
    for n, r in enumerate(df.itertuples(index=False)):
        groups.setdefault(str(r.query_doc), []).append(_pair_view(n, r, src, imgdir))
        if progress:
            progress(1)
    env = Environment(loader=PackageLoader("imgdup.index", "templates"), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("report.html.j2").render(
        title=report_path.name, source=str(report_path), n_pairs=len(df),
        n_verified=int(df.verified.sum()) if "verified" in df else len(df),
        groups=[{"doc": d, "pairs": ps} for d, ps in groups.items()],
        model_sha=meta.get("imgdup.model_sha256", "?")[:12], version=__version__,
        written=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    tmp = out / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out / "index.html")
    return out / "index.html"


def _pair_view(n: int, r, src: PixelSource, imgdir: Path) -> dict:
    g = lambda c, d=None: getattr(r, c, d)  # noqa: E731
    kind = g("finding", "pair") or "pair"
    orient = g("verify_orientation", "") or "identity"
    inverted = g("via") == "inverted"       # the match is the query panel's negative
    pq_, pm_ = g("points_query", []), g("points_match", [])
    oq, om = g("overlap_query", []), g("overlap_match", [])
    pq_ = [] if pq_ is None else [list(p) for p in pq_]
    pm_ = [] if pm_ is None else [list(p) for p in pm_]
    oq = [] if oq is None else [list(p) for p in oq]
    om = [] if om is None else [list(p) for p in om]
    a = src.get(int(r.query_panel_id), r.query_doc, int(r.query_page), list(r.query_bbox))
    images = []
    cap_q = f"query: {Path(r.query_doc).name}, page {r.query_page}, figure {r.query_figure}, panel {r.query_panel}"
    cap_m = f"match: {Path(r.match_doc).name}, page {r.match_page}, figure {r.match_figure}, panel {r.match_panel}"
    if kind == "copy-move":
        im = None
        if a is not None:
            im = _marks(_marks(_bgr(a), oq, [], GREEN), om, [], RED)
        images.append({"src": _write_png(im, imgdir, f"pair-{n}-panel.png") if im is not None else "",
                       "caption": cap_q + " (green: source region, red: its copy)",
                       "link": _page_link(r.query_doc, r.query_page)})
    else:
        b = src.get(int(r.match_panel_id), r.match_doc, int(r.match_page), list(r.match_bbox))
        if inverted and b is not None:      # shown as its negative, like the query panel
            b = negative_grey(b)
        qa = _marks(_bgr(a), oq, pq_) if a is not None else None
        mb = np.ascontiguousarray(_TURN.get(orient, _TURN["identity"])(_marks(_bgr(b), om, pm_))) if b is not None else None
        diff = _difference(a, b, pq_, pm_) if a is not None and b is not None else None
        images.append({"src": _write_png(qa, imgdir, f"pair-{n}-query.png") if qa is not None else "",
                       "caption": cap_q, "link": _page_link(r.query_doc, r.query_page)})
        images.append({"src": _write_png(mb, imgdir, f"pair-{n}-match.png") if mb is not None else "",
                       "caption": cap_m + (f" (shown turned: {orient})" if orient != "identity" else "")
                       + (" (shown as its negative: the copy is inverted)" if inverted else ""),
                       "link": _page_link(r.match_doc, r.match_page)})
        if diff is not None:
            images.append({"src": _write_png(diff, imgdir, f"pair-{n}-diff.png"),
                           "caption": "difference once registered (dark: same pixels)", "link": ""})
    scores = [("confidence", _fmt(g("confidence"))), ("CNN distance f", _fmt(g("distance"))),
              ("keypoint inliers", _fmt(g("verify_inliers"), "d")),
              ("overlap correlation", _fmt(g("verify_aligned_ncc"))), ("fine-detail correlation", _fmt(g("verify_detail_ncc"))),
              ("whole-panel correlation", _fmt(g("verify_ncc"))),
              ("orientation", orient), ("rotation (deg)", _fmt(g("verify_rotation"), ".1f")),
              ("scale", _fmt(g("verify_scale"), ".2f")), ("shared area", _fmt(g("overlap_frac"), ".0%")),
              ("grey levels", "inverted" if inverted else "as is"),
              ("same document", "yes" if g("same_doc") else "no")]
    return {"n": n, "kind": "copy-move inside one panel" if kind == "copy-move" else "re-used panel",
            "confidence": _fmt(g("confidence"), ".2f"), "verified": bool(g("verified", True)),
            "reason": g("reject_reason", "") or "", "images": images, "scores": scores}

