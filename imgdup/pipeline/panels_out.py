"""Write extracted panels to a folder: one PNG per panel plus panels.parquet with the metadata."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from PIL import Image

from ..index.files import atomic_write
from .extract import DocResult


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name-safe stem (no path separators, no leading dots)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "doc"
    return s[:limit]


def write_panels(results: list[DocResult], out_dir: str | Path) -> pd.DataFrame:
    """Write PNGs under out_dir/<doc>-<sha8>/ and out_dir/panels.parquet (written atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for res in results:
        if res.error:
            continue
        folder = out / f"{safe_name(Path(res.path).stem)}-{res.sha256[:8]}"
        folder.mkdir(exist_ok=True)
        for p in res.panels:
            png = folder / f"{p.panel_id}.png"
            Image.fromarray(p.pixels).save(png)
            rows.append({**p.meta(), "png": str(png.relative_to(out))})
    df = pd.DataFrame(rows)
    atomic_write(out / "panels.parquet", lambda tmp: df.to_parquet(tmp, index=False))
    return df
