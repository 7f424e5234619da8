"""The command line: panels output, query exit codes, demo, and the benchmarks' smoke runs (marked
``bench``: run by ``python -m pytest -q -m bench``, not by the default run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pymupdf
import pytest
from click.testing import CliRunner

from conftest import ROOT, micrograph, need_shared, png_bytes
from imgdup.cli.main import cli


def _pdf(path: Path, images) -> Path:
    doc = pymupdf.open()
    page = doc.new_page()
    for k, im in enumerate(images):
        page.insert_image(pymupdf.Rect(50 + 260 * (k % 2), 50 + 260 * (k // 2), 290 + 260 * (k % 2),
                                       290 + 260 * (k // 2)), stream=png_bytes(im))
    doc.save(path)
    return path


def test_panels_command(tmp_path):
    pdf = _pdf(tmp_path / "a.pdf", [micrograph(1, 200), micrograph(2, 200)])
    bad = tmp_path / "bad.pdf"
    bad.write_text("not a pdf")
    r = CliRunner().invoke(cli, ["panels", str(pdf), str(bad), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "a.pdf: 1 pages, 2 images, 2 figures" in r.output
    assert "bad.pdf: SKIPPED (not a PDF" in r.output
    df = pd.read_parquet(tmp_path / "out" / "panels.parquet")
    assert len(df) == 2 and set(df.page) == {1}
    assert all((tmp_path / "out" / p).exists() for p in df.png)
    assert {"doc_sha256", "doc_path", "figure_id", "panel_id", "bbox", "width", "height",
            "content_hash"} <= set(df.columns)


def test_device_cuda_without_cuda_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present here: nothing to refuse")
    r = subprocess.run([sys.executable, "-m", "imgdup.cli", "ingest", str(tmp_path / "x.pdf"), "--device", "cuda",
                        "--index", str(tmp_path / "s")], capture_output=True, text=True)
    assert r.returncode == 2 and "no usable CUDA device" in r.stderr and "--device cpu" in r.stderr


def test_query_exit_codes(tmp_path):
    a, b = micrograph(3, 200), micrograph(4, 200)
    dup = _pdf(tmp_path / "dup.pdf", [a, b, a[:, ::-1].copy()])   # a flipped copy inside one paper
    env = {"IMGDUP_INDEX": str(tmp_path / "none")}
    runner = CliRunner(env=env)
    r = runner.invoke(cli, ["query", str(dup), "--out", str(tmp_path / "r.parquet")])
    assert r.exit_code == 1, r.output
    rep = pd.read_parquet(tmp_path / "r.parquet")
    assert len(rep) >= 1 and rep.same_doc.all()
    r = runner.invoke(cli, ["query", str(dup), "--exit-zero"])
    assert r.exit_code == 0
    r = runner.invoke(cli, ["query", str(tmp_path / "missing.pdf")])
    assert r.exit_code == 2


def test_demo_command_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "imgdup.cli", "demo", "--index", str(tmp_path / "ix"),
                        "--out", str(tmp_path / "demo.parquet")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = pd.read_parquet(tmp_path / "demo.parquet")
    truth = json.loads((ROOT / "imgdup" / "demo" / "truth.json").read_text())
    assert len(rep) > 0 and "manuscript.pdf" in r.stdout
    assert any(t["doc"] == "manuscript.pdf" and t["manipulation"] != "original" for t in truth)


def _smoke(script: str, tmp_path: Path) -> dict:
    """Run ``benchmarks/<script> --smoke`` and return the JSON it wrote."""
    need_shared()
    out = tmp_path / f"{script}.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.bench
def test_speed_benchmark_smoke(tmp_path):
    data = _smoke("speed.py", tmp_path)
    assert data["embed"]["panels_per_s"] > 0 and data["query"][0]["store_panels"] == 2000
    assert data["extract"]["pages"] > 0


@pytest.mark.bench
def test_index_scale_benchmark_smoke(tmp_path):
    data = _smoke("index_scale.py", tmp_path)
    run = data["runs"][0]
    ooc = data["out_of_core"][0]            # 20,000 vectors in 4 slices, lists on disk
    assert ooc["ivf"]["recall"] >= 0.99 and ooc["ivf_query_recall"] >= 0.95 and ooc["query_pairs_exact"] > 0
    assert ooc["lists_file_gb"] > 0.9 * ooc["vectors_gb"]
    assert run["ivf"]["recall"] >= 0.99 and run["ivf_query_recall"] >= 0.95 and run["query_pairs_exact"] > 0
    tiles = run["tiles"]
    from imgdup.model.api import N_TILES
    assert tiles["tile_vectors"] == N_TILES * run["store_panels"] and tiles["ivf"]["recall"] >= 0.99
    assert tiles["query_pairs_exact"] > 0 and tiles["ivf_query_recall"] >= 0.9 and tiles["knn_equals_range"]


@pytest.mark.bench
def test_quality_and_end_to_end_benchmarks_smoke(tmp_path):
    for script in ("quality.py", "end_to_end.py"):
        data = _smoke(script, tmp_path)
        if script == "quality.py":
            assert set(data["mean_tpr@0.001"]) >= {"cnn", "imgdup", "phash", "sift"}
            assert "colour to grey (PDF images)" in data["families"]
        else:
            assert data["screen_verified"]["pairs"] > 0 and 0 <= data["screen_verified"]["recall"] <= 1


def test_scaling_plot_reads_the_benchmark_results():
    """benchmarks/plot_scaling.py draws only what docs/*.json hold: every series has its points
    in store-size order, queries and screens alike."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from plot_scaling import series

    data = series()
    assert set(data) == {"query", "screen"}
    for lines in data.values():
        assert len(lines) >= 5
        for pts in lines.values():
            sizes = [n for n, _ in pts]
            assert sizes == sorted(sizes) and all(sec > 0 for _, sec in pts)


@pytest.mark.bench
def test_on_disk_benchmark_smoke(tmp_path):
    data = _smoke("on_disk.py", tmp_path)
    assert data["same_pairs"] and data["mapped"]["whole_pairs"] > 0
    assert data["mapped"]["mb_after_open"]["RssAnon"] < data["loaded"]["mb_after_open"]["RssAnon"]


@pytest.mark.bench
def test_precision_benchmark_smoke(tmp_path):
    run = _smoke("precision.py", tmp_path)["runs"][0]
    assert run["device"] == "cpu" and run["image and its copy"]["max_abs_f_difference"] < 0.05


def test_on_disk_reindex_through_the_cli(tmp_path):
    """`imgdup reindex --index-kind ivf --on-disk` on a real store: the demo manuscript's query
    finds the same pairs as with the flat index, a later ingest goes to the in-memory delta
    (index.faiss untouched) and is found, `imgdup check` stays clean."""
    demo = ROOT / "imgdup" / "demo"
    env = {"IMGDUP_INDEX": str(tmp_path / "ix")}
    runner = CliRunner(env=env)
    papers = sorted(str(p) for p in (demo / "corpus").glob("*.pdf"))
    assert runner.invoke(cli, ["ingest", *papers[:3]]).exit_code == 0
    ms = str(demo / "manuscript" / "manuscript.pdf")
    key = ["query_panel", "match_doc", "match_panel"]

    def pairs(name: str) -> set:
        r = runner.invoke(cli, ["query", ms, "--out", str(tmp_path / name), "--exit-zero", "--no-copy-move"])
        assert r.exit_code == 0, r.output
        rep = pd.read_parquet(tmp_path / name)
        return set(map(tuple, rep[rep.match_doc != "manuscript.pdf"][key].astype(str).values))

    flat = pairs("flat.parquet")
    r = runner.invoke(cli, ["reindex", "--index-kind", "ivf", "--nlist", "8", "--on-disk"])
    assert r.exit_code == 0 and "memory-mapped from disk" in r.output and "for capped searches" in r.output, r.output
    assert pairs("ivf.parquet") == flat and flat
    mtime = (tmp_path / "ix" / "index.faiss").stat().st_mtime_ns
    assert runner.invoke(cli, ["ingest", papers[3]]).exit_code == 0
    assert (tmp_path / "ix" / "index.faiss").stat().st_mtime_ns == mtime
    after = pairs("after.parquet")
    assert flat < after and any(Path(papers[3]).name in str(p) for p in after)
    r = runner.invoke(cli, ["check"])
    assert r.exit_code == 0 and "to catch up on next open" in r.output, r.output


@pytest.mark.bench
def test_query_scale_and_retrieval_benchmarks_smoke(tmp_path):
    data = _smoke("query_scale.py", tmp_path)
    runs = {(r["query"], r["max_candidates"]): r for r in data["runs"]}
    assert data["store"]["panels"] == 3000 and runs[("manuscript", None)]["recall"] >= 0.8
    assert runs[("manuscript", 10)]["candidate_rows"] <= runs[("manuscript", None)]["candidate_rows"]
    assert runs[("submission", 10)]["panels"] > 0
    ret = _smoke("retrieval.py", tmp_path)
    assert ret["store"]["panels"] == 3000 and ret["runs"]["no cap"]["found"] >= 0.7
    assert ret["runs"]["cap 5"]["candidates_per_query_panel"] <= ret["runs"]["cap 50"]["candidates_per_query_panel"]


@pytest.mark.bench
def test_nightly_screen_benchmark_smoke(tmp_path):
    data = _smoke("nightly_screen.py", tmp_path)
    run = data["runs"][0]
    assert data["store"]["panels"] == 3000 and run["new_panels"] == 300 and run["max_candidates"] == 5
    assert 0 < run["candidate_pairs"] <= 300 * 2 * (5 + 1) and set(run["stages"]) == {"search", "verify"}
    assert run["peak_rss_gb"] > 0


@pytest.mark.bench
def test_split_layouts_benchmark_smoke(tmp_path):
    pytest.importorskip("skimage", reason="split_layouts.py reads scikit-image's sample images: "
                        "pip install '.[bench]' (CI does)")
    data = _smoke("split_layouts.py", tmp_path)
    cells, photos = data["compound_cells"], data["single_photos"]
    assert cells["cells"] > 50 and cells["cut_out"] >= 0.95 * cells["cells"]
    assert photos["variants"] == 4 * photos["photos"] and photos["cut_into_pieces"] == 0


@pytest.mark.bench
def test_tints_benchmark_smoke(tmp_path):
    data = _smoke("tints.py", tmp_path)
    blue = data["pairs"]["grey / blue"]
    assert blue["pairs"] == 8 and blue["imgdup"]["candidates"] >= blue["luma"]["candidates"]
    assert data["negatives, both in one tint"]["imgdup"]["reported_at_0.5"] <= 0.05


@pytest.mark.bench
def test_heavy_jpeg_benchmark_smoke(tmp_path):
    data = _smoke("heavy_jpeg.py", tmp_path)
    assert set(data["positives"]) == {"q10", "q15", "q20", "q30"}
    assert data["positives"]["q30"]["pairs"] == 4 and data["positives"]["q30"]["found_f<=1.25"] >= 0.5
    assert all(n["pairs"] == 20 and n["found_f<=1.25"] <= 0.1 for n in data["negatives"].values())


@pytest.mark.bench
def test_figure_tools_benchmark_smoke(tmp_path):
    data = _smoke("figure_tools.py", tmp_path)
    assert data["placements"] == 54 and set(data["modes"]) == {"vector", "raster"}
    for run in ("screen_verified", "query_verified"):
        assert data[run]["recall"] >= 0.8 and data[run]["fp_rows"] == 0, data[run]
        assert data[run]["copy_move"]["rows"] == data[run]["copy_move"]["on_cloned_patches"]


@pytest.mark.bench
def test_montages_benchmark_smoke(tmp_path):
    pytest.importorskip("skimage", reason="montages.py mixes in scikit-image's sample fields: "
                        "pip install '.[bench]' (CI does)")
    data = _smoke("montages.py", tmp_path)
    assert data["split"]["border 2 white PNG"] == {"cells": 24, "cut_out": 24, "boxes": 24}
    assert data["split"]["border 5 black JPEG"]["cut_out"] >= 22
    assert data["split"]["border 0 black PNG"]["cut_out"] >= 20         # no border: cut at the seams
    for name in ("border 2 white", "border 0 black"):
        run = data["end_to_end"][name]
        assert run["reused_cells"] == 4 and run["found"] == 4 and run["fp_rows"] == 0, (name, run)
        assert run["copies_within_montages"]["located"] == 1, (name, run)     # a copy within a montage


@pytest.mark.bench
def test_blot_strips_benchmark_smoke(tmp_path):
    data = _smoke("blot_strips.py", tmp_path)
    assert data["strips_cut_out"]["images"] == "15 / 15"      # strips 14-30 pt tall, each its own image
    for run in ("screen_verified", "query_verified"):
        assert data[run]["pairs"] >= 4 and data[run]["found"] == data[run]["pairs"], (run, data[run])
        assert data[run]["fp_rows"] <= 2, (run, data[run])


@pytest.mark.bench
def test_calibrate_strips_benchmark_smoke(tmp_path):
    need_shared()
    out, ev = tmp_path / "model.json", tmp_path / "eval.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "calibrate_strips.py"), "--smoke", "--out", str(out),
                        "--eval-out", str(ev)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    model, res = json.loads(out.read_text()), json.loads(ev.read_text())
    assert model["left_out"] == ["thumb_ncc"] and model["coef"][model["features"].index("thumb_ncc")] == 0
    assert model["fitted_on"]["strips"] == 12 and model["threshold"] >= 0.5
    assert res["held_out"]["strips"] == 8 and 0 < res["strip model"]["tpr"] <= 1
