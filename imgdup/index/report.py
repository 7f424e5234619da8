"""Candidate pairs -> the Parquet report (one row per pair) and a readable table."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__

SIDE_COLUMNS = ["doc_path", "doc_sha256", "page", "x0", "y0", "x1", "y1", "panel_key", "figure_id",
                "kind", "content_hash", "xrefs", "panel_id"]

REPORT_COLUMNS = [
    "query_doc", "query_sha256", "query_page", "query_bbox", "query_panel", "match_doc",
    "match_sha256", "match_page", "match_bbox", "match_panel", "distance", "score", "same_doc",
    "query_figure", "match_figure", "query_kind", "match_kind", "query_panel_id", "match_panel_id",
    "same_content", "same_xref"]
VERIFY_COLUMNS = ["verify_ncc", "verify_orientation", "verify_scale", "verified", "reject_reason"]


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
                f: np.ndarray) -> pd.DataFrame:
    """Build report rows for candidate pairs (row positions into qinfo / minfo).

    Dropped: a panel against itself, and a whole figure against its own panels.
    """
    if len(f) == 0:
        return empty_report()
    d = {**_side(qinfo, qrows, "query"), **_side(minfo, mrows, "match")}
    df = pd.DataFrame(d)
    df["distance"] = f.astype(np.float64)
    df["score"] = 1.0 / (1.0 + np.exp(df["distance"] - 1.0))
    df["same_doc"] = df.query_sha256 == df.match_sha256
    same_panel = df.same_doc & (df.query_panel == df.match_panel)
    own_figure = df.same_doc & (df.query_figure == df.match_figure) & \
        ((df.query_kind == "figure") | (df.match_kind == "figure"))
    df = df[~same_panel & ~own_figure].copy()
    df["same_content"] = df["_hash_query"] == df["_hash_match"]
    df["same_xref"] = [bool(a and b and set(a.split(",")) & set(b.split(",")) - {"0"}) and s
                       for a, b, s in zip(df["_xrefs_query"], df["_xrefs_match"], df.same_doc)]
    df = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    return df.sort_values(["distance", "query_doc", "query_panel"]).reset_index(drop=True)[REPORT_COLUMNS]


def empty_report() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in REPORT_COLUMNS + VERIFY_COLUMNS})
    for c in ("query_page", "match_page", "query_panel_id", "match_panel_id"):
        df[c] = df[c].astype(np.int64)
    for c in ("distance", "score", "verify_ncc", "verify_scale"):
        df[c] = df[c].astype(np.float64)
    for c in ("same_doc", "same_content", "same_xref", "verified"):
        df[c] = df[c].astype(bool)
    return df


def write_report(df: pd.DataFrame, path: str | Path, model_sha256: str, threshold: float,
                 extra: dict[str, str] | None = None) -> Path:
    """Parquet with key-value metadata (model sha256, imgdup version, threshold, run time);
    written to a temp file and renamed, so a reader never sees half a report."""
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
        ("same_content", pa.bool_()), ("same_xref", pa.bool_()), ("verify_ncc", pa.float64()),
        ("verify_orientation", pa.string()), ("verify_scale", pa.float64()), ("verified", pa.bool_()),
        ("reject_reason", pa.string())])
    meta = {"imgdup.model_sha256": model_sha256, "imgdup.version": __version__,
            "imgdup.threshold": repr(float(threshold)),
            "imgdup.run_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    meta.update({f"imgdup.{k}": str(v) for k, v in (extra or {}).items()})
    for c in VERIFY_COLUMNS:
        if c not in df:
            df = df.assign(**{c: empty_report()[c].reindex(df.index)})
    table = pa.Table.from_pandas(df[REPORT_COLUMNS + VERIFY_COLUMNS], schema=schema, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in meta.items()}})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def format_table(df: pd.DataFrame, top: int = 20) -> str:
    """The top pairs as a fixed-width text table."""
    if df.empty:
        return "no pairs within the threshold"
    rows = [f"{'f':>6} {'score':>5} {'ncc':>5}  {'query (doc p.page panel)':<40} {'match (doc p.page panel)':<40} how"]
    for r in df.head(top).itertuples():
        q = f"{Path(r.query_doc).name[:24]} p{r.query_page} {r.query_panel}"
        m = f"{Path(r.match_doc).name[:24]} p{r.match_page} {r.match_panel}"
        ncc = getattr(r, "verify_ncc", float("nan"))
        how = getattr(r, "verify_orientation", "") or ""
        sc = getattr(r, "verify_scale", float("nan"))
        if how and sc == sc and sc < 1:
            how += f" crop {sc:.2f}"
        rows.append(f"{r.distance:6.3f} {r.score:5.2f} {ncc:5.2f}  {q:<40} {m:<40} {how}")
    if len(df) > top:
        rows.append(f"... and {len(df) - top} more pairs in the report")
    return "\n".join(rows)
