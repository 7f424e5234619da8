"""The reviewers' HTML report: real query report -> page, escaping, and a headless Chromium look."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pymupdf
import pytest
from PIL import Image

from imgdup import ingest, query
from imgdup.demo import DEMO_DIR
from imgdup.index.html import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL = '<script>document.title="PWNED"</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """The demo corpus ingested, a manuscript with a hostile file name and hostile metadata
    (title, author, subject, keywords) queried against it."""
    tmp = tmp_path_factory.mktemp("html")
    index = tmp / "index"
    ingest(sorted((DEMO_DIR / "corpus").glob("*.pdf")), index)
    evil_dir = tmp / "in"
    evil_dir.mkdir()
    manuscript = evil_dir / f"{EVIL.replace('/', '_')}.pdf"
    with pymupdf.open(next((DEMO_DIR / "manuscript").glob("*.pdf"))) as doc:
        doc.set_metadata({"title": EVIL, "author": EVIL, "subject": EVIL, "keywords": EVIL})
        doc.save(manuscript)
    res = query([manuscript], index, out=tmp / "report.parquet", keep_rejected=True)
    return tmp, index, res


def test_html_report_content_and_escaping(demo_report):
    tmp, index, res = demo_report
    assert res.report.verified.sum() >= 5
    page = render_html(res.path, tmp / "site", index=index, include_rejected=True, limit=60)
    text = page.read_text()
    assert "<script" not in text.lower()        # the hostile file name is shown escaped, never run
    assert "&lt;script&gt;" in text
    assert "Content-Security-Policy" in text
    n = len(pq.read_table(res.path))
    assert text.count('class="pair') == min(n, 60) and n > res.report.verified.sum()
    imgs = sorted((tmp / "site" / "img").glob("*.png"))
    assert len(imgs) >= 2 * res.report.verified.sum()
    verified_only = render_html(res.path, tmp / "site3", index=index).read_text()
    assert verified_only.count('class="pair') == res.report.verified.sum()
    assert all(p.resolve().is_relative_to((tmp / "site").resolve()) for p in (tmp / "site").rglob("*"))
    # sorted by confidence inside each document group
    confs = [float(x.split("confidence ")[1].split("<")[0].split(" ")[0])
             for x in text.split('class="conf">')[1:] if "confidence -" not in x[:60]]
    assert confs == sorted(confs, reverse=True)
    # each query panel picture shows the overlap outline (red) drawn on the grey panel
    im = np.asarray(Image.open(imgs[0]).convert("RGB")).astype(int)
    assert ((im[..., 0] > 180) & (im[..., 1] < 90) & (im[..., 2] < 90)).sum() > 50


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_report_renders_in_headless_chromium(demo_report, tmp_path):
    tmp, index, res = demo_report
    page = render_html(res.path, tmp / "site2", index=index)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert "PWNED" not in dom.split("</title>")[0]          # no injected script ran
    assert "imgdup report" in dom and dom.count("<img") >= 4
    im = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert im.shape[:2] == (2000, 1280)
    grey_panels = (np.abs(im[..., 0] - im[..., 1]) < 8) & (im.std(axis=2) < 8) & (im[..., 0] < 200)
    red_outline = (im[..., 0] > 180) & (im[..., 1] < 90) & (im[..., 2] < 90)
    assert grey_panels.mean() > 0.05          # the panels are drawn, not broken-image icons
    assert red_outline.sum() > 200            # with their overlap outlines
    shutil.copy(shot, tmp / "screenshot.png")
