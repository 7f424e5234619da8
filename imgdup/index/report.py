"""Candidate pairs -> the Parquet report (one row per pair) and a readable table."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from .files import atomic_write

SIDE_COLUMNS = ["doc_path", "doc_sha256", "page", "x0", "y0", "x1", "y1", "panel_key", "figure_id",
                "kind", "content_hash", "xrefs", "panel_id"]

REPORT_COLUMNS = [
    "query_doc", "query_sha256", "query_page", "query_bbox", "query_panel", "match_doc",
    "match_sha256", "match_page", "match_bbox", "match_panel", "distance", "score", "same_doc",
    "query_figure", "match_figure", "query_kind", "match_kind", "query_panel_id", "match_panel_id",
    "same_content", "same_xref", "via"]
_POLY = pa.list_(pa.list_(pa.float64()))
# verification columns: pandas dtype and Parquet type (filled by imgdup.pipeline.verify)
VERIFY_FIELDS = {
    "finding": ("object", pa.string()),             # "pair", or "copy-move" inside one panel
    "confidence": ("float64", pa.float64()),        # calibrated probability of re-use
    "verified": ("bool", pa.bool_()),               # confidence >= the calibrated threshold
    "reject_reason": ("object", pa.string()),       # why not (kept with --keep-rejected)
    "verify_inliers": ("int64", pa.int64()),        # RANSAC keypoint inliers
    "verify_aligned_ncc": ("float64", pa.float64()),  # rank correlation of the registered overlap
    "verify_detail_ncc": ("float64", pa.float64()),   # correlation of its fine detail (grain): copies share it
    "verify_ncc": ("float64", pa.float64()),        # whole-panel correlation over 8 orientations
    "verify_orientation": ("object", pa.string()),  # nearest flip / quarter turn of match onto query
    "verify_rotation": ("float64", pa.float64()),   # degrees, counter-clockwise
    "verify_scale": ("float64", pa.float64()),      # linear scale of match onto query (pixels)
    "verify_flip": ("bool", pa.bool_()),
    "verify_tx": ("float64", pa.float64()),         # match origin in query, fraction of width
    "verify_ty": ("float64", pa.float64()),         # ... and of height
    "overlap_frac": ("float64", pa.float64()),      # shared area / panel area (larger of the two)
    "overlap_query": ("object", _POLY),             # overlap polygon in the query panel (0..1)
    "overlap_match": ("object", _POLY),             # the same region in the match panel
    "points_query": ("object", _POLY),              # matched keypoints (inliers), query side
    "points_match": ("object", _POLY),              # ... and match side
}
VERIFY_COLUMNS = list(VERIFY_FIELDS)


def _side(info: pd.DataFrame, rows: np.ndarray, prefix: str) -> dict[str, object]:
    s = info.iloc[rows]
    return {
        f"{prefix}_doc": s.doc_path.to_numpy(), f"{prefix}_sha256": s.doc_sha256.to_numpy(),
        f"{prefix}_page": s.page.to_numpy().astype(np.int64),
        f"{prefix}_bbox": [list(map(float, b)) for b in s[["x0", "y0", "x1", "y1"]].to_numpy()],
        f"{prefix}_panel": s.panel_key.to_numpy(), f"{prefix}_figure": s.figure_id.to_numpy(),
        f"{prefix}_kind": s.kind.to_numpy(), f"{prefix}_panel_id": s.panel_id.to_numpy().astype(np.int64),
        "_hash_" + prefix: s.content_hash.to_numpy(), "_xrefs_" + prefix: s.xrefs.to_numpy(),
    }


def make_report(qinfo: pd.DataFrame, minfo: pd.DataFrame, qrows: np.ndarray, mrows: np.ndarray,
                f: np.ndarray, via: np.ndarray | None = None) -> pd.DataFrame:
    """Build report rows for candidate pairs (row positions into qinfo / minfo); ``via`` says
    how each was retrieved ("whole" panels, or "tiles": sub-regions).

    Dropped: a panel against itself, and a whole figure against its own panels.
    """
    if len(f) == 0:
        return empty_report()
    d = {**_side(qinfo, qrows, "query"), **_side(minfo, mrows, "match")}
    df = pd.DataFrame(d)
    df["distance"] = f.astype(np.float64)
    df["via"] = via if via is not None else "whole"
    df["score"] = 1.0 / (1.0 + np.exp(df["distance"] - 1.0))
    df["same_doc"] = df.query_sha256 == df.match_sha256
    same_panel = df.same_doc & (df.query_panel == df.match_panel)
    own_figure = df.same_doc & (df.query_figure == df.match_figure) & \
        ((df.query_kind == "figure") | (df.match_kind == "figure"))
    df = df[~same_panel & ~own_figure].copy()
    df["same_content"] = df["_hash_query"] == df["_hash_match"]
    # the same stored image placed twice, and the same region of it on both sides: a whole figure,
    # or the same panel of the figure's split (two different panels cut from one compound image
    # share its xref but not their pixels: those are compared like any others)
    same_region = (df.query_kind == "figure") | (df.match_kind == "figure") | \
        (df.query_panel.str.rsplit("-", n=1).str[-1] == df.match_panel.str.rsplit("-", n=1).str[-1])
    df["same_xref"] = [bool(a and b and set(a.split(",")) & set(b.split(",")) - {"0"}) and s and r
                       for a, b, s, r in zip(df["_xrefs_query"], df["_xrefs_match"], df.same_doc, same_region)]
    df = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    return df.sort_values(["distance", "query_doc", "query_panel"]).reset_index(drop=True)[REPORT_COLUMNS]


def empty_report() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in REPORT_COLUMNS + VERIFY_COLUMNS})
    for c in ("query_page", "match_page", "query_panel_id", "match_panel_id"):
        df[c] = df[c].astype(np.int64)
    for c in ("distance", "score"):
        df[c] = df[c].astype(np.float64)
    for c in ("same_doc", "same_content", "same_xref"):
        df[c] = df[c].astype(bool)
    for c, (kind, _) in VERIFY_FIELDS.items():
        df[c] = df[c].astype(kind)
    return df


def unverified(df: pd.DataFrame) -> pd.DataFrame:
    """Fill absent verification columns (CNN-only runs): not verified, with the reason."""
    fill = {"finding": "pair", "confidence": np.nan, "verified": False,
            "reject_reason": "not verified (--no-verify)", "verify_inliers": 0, "verify_aligned_ncc": np.nan,
            "verify_detail_ncc": np.nan, "verify_ncc": np.nan, "verify_orientation": "", "verify_rotation": np.nan, "verify_scale": np.nan,
            "verify_flip": False, "verify_tx": np.nan, "verify_ty": np.nan, "overlap_frac": np.nan}
    out = df.copy()
    for c, (kind, _) in VERIFY_FIELDS.items():
        if c not in out:
            out[c] = pd.Series([fill[c] if c in fill else [] for _ in range(len(out))], index=out.index, dtype=kind)
    return out


def copy_move_report(info: pd.DataFrame, found: list) -> pd.DataFrame:
    """Report rows for copy-move findings: both sides are the same panel (row position into
    ``info``); the source region is ``overlap_query``, its copy ``overlap_match``."""
    if not found:
        return empty_report()
    rows = np.array([pos for pos, _ in found], np.int64)
    d = {**_side(info, rows, "query"), **_side(info, rows, "match")}
    df = pd.DataFrame(d).drop(columns=[c for c in d if c.startswith("_")])
    df["distance"] = 0.0
    df["score"] = 1.0
    df["same_doc"] = True
    df["same_content"] = True
    df["same_xref"] = False
    df["via"] = "copy-move"
    cms = [cm for _, cm in found]
    df["finding"] = "copy-move"
    df["confidence"] = [cm.aligned_ncc for cm in cms]
    df["verified"] = True
    df["reject_reason"] = ""
    df["verify_inliers"] = [cm.inliers for cm in cms]
    df["verify_aligned_ncc"] = [cm.aligned_ncc for cm in cms]
    df["verify_detail_ncc"] = np.nan
    df["verify_ncc"] = np.nan
    df["verify_orientation"] = ["flip-lr" if cm.flip else "identity" for cm in cms]
    df["verify_rotation"] = np.nan
    df["verify_scale"] = np.nan
    df["verify_flip"] = [cm.flip for cm in cms]
    df["verify_tx"] = np.nan
    df["verify_ty"] = np.nan
    df["overlap_frac"] = np.nan
    df["overlap_query"] = [[list(p) for p in cm.region_src] for cm in cms]
    df["overlap_match"] = [[list(p) for p in cm.region_dst] for cm in cms]
    df["points_query"] = [[] for _ in cms]
    df["points_match"] = [[] for _ in cms]
    return df[REPORT_COLUMNS + VERIFY_COLUMNS].reset_index(drop=True)


def write_report(df: pd.DataFrame, path: str | Path, model_sha256: str, threshold: float,
                 extra: dict[str, str] | None = None) -> Path:
    """Parquet with key-value metadata (model sha256, imgdup version, threshold, run time);
    written to a temp file, fsynced and renamed, so a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([
        ("query_doc", pa.string()), ("query_sha256", pa.string()), ("query_page", pa.int64()),
        ("query_bbox", pa.list_(pa.float64(), 4)), ("query_panel", pa.string()),
        ("match_doc", pa.string()), ("match_sha256", pa.string()), ("match_page", pa.int64()),
        ("match_bbox", pa.list_(pa.float64(), 4)), ("match_panel", pa.string()),
        ("distance", pa.float64()), ("score", pa.float64()), ("same_doc", pa.bool_()),
        ("query_figure", pa.string()), ("match_figure", pa.string()), ("query_kind", pa.string()),
        ("match_kind", pa.string()), ("query_panel_id", pa.int64()), ("match_panel_id", pa.int64()),
        ("same_content", pa.bool_()), ("same_xref", pa.bool_()), ("via", pa.string())]
        + [(c, t) for c, (_, t) in VERIFY_FIELDS.items()])
    meta = {"imgdup.model_sha256": model_sha256, "imgdup.version": __version__,
            "imgdup.threshold": repr(float(threshold)),
            "imgdup.run_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    meta.update({f"imgdup.{k}": str(v) for k, v in (extra or {}).items()})
    df = unverified(df)
    table = pa.Table.from_pandas(df[REPORT_COLUMNS + VERIFY_COLUMNS], schema=schema, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in meta.items()}})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def format_table(df: pd.DataFrame, top: int = 20) -> str:
    """The top pairs as a fixed-width text table."""
    if df.empty:
        return "no pairs within the threshold"
    rows = [f"{'f':>6} {'conf':>5} {'inl':>4}  {'query (doc p.page panel)':<40} {'match (doc p.page panel)':<40} how"]
    for r in df.head(top).itertuples():
        q = f"{Path(r.query_doc).name[:24]} p{r.query_page} {r.query_panel}"
        m = f"{Path(r.match_doc).name[:24]} p{r.match_page} {r.match_panel}"
        conf = getattr(r, "confidence", float("nan"))
        inl = int(getattr(r, "verify_inliers", 0) or 0)
        how = getattr(r, "verify_orientation", "") or ""
        if getattr(r, "via", "") == "inverted":
            how = "inverted" + (f", {how}" if how else "")
        if getattr(r, "finding", "pair") == "copy-move":
            how = "copy-move inside the panel"
        else:
            ov = getattr(r, "overlap_frac", float("nan"))
            if ov == ov and ov < 0.9:
                how += f", overlap {ov:.0%}"
            if not getattr(r, "verified", True):
                how += f"  [rejected: {r.reject_reason}]"
        rows.append(f"{r.distance:6.3f} {conf:5.2f} {inl:4d}  {q:<40} {m:<40} {how}")
    if len(df) > top:
        rows.append(f"... and {len(df) - top} more pairs in the report")
    return "\n".join(rows)
