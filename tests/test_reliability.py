"""Reliability: hostile inputs, kill -9 loops, a full disk, two writers, a store checker that
notices damage, and no code path that evaluates data.  The functions are those of
benchmarks/reliability.py (whose full run writes docs/reliability.json), on fewer inputs."""

from __future__ import annotations

import ast
import importlib.util
import sqlite3
from pathlib import Path

import pytest

from conftest import need_shared
from imgdup.demo import DEMO_DIR
from imgdup.index.store import Store

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reliability", ROOT / "benchmarks" / "reliability.py")
rel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rel)

CORPUS = sorted((DEMO_DIR / "corpus").glob("*.pdf"))


def test_hostile_inputs_skipped_with_reason_and_recorded(tmp_path):
    need_shared()
    out = rel.hostile_ingest(tmp_path, fuzz_per_pdf=1, seed=1)
    assert out["failures"] == []
    assert out["exit_code"] == 0
    reasons = out["skip_reasons"]
    for why in ("encrypted PDF", "too many pages", "not a PDF", "empty file", "file too large",
                "not a regular file", "broken symbolic link", "is a directory"):
        assert why in reasons, (why, reasons)
    # the owner-password-only PDF, the good one, and the image declaring 10^10 pixels are ingested
    assert out["ok_documents"] >= 3
    assert out["fuzzed"] >= 9


def test_kill_9_loop_leaves_sound_store_and_resumes(tmp_path):
    out = rel.kill_loop(CORPUS, tmp_path, kills=2, seed=3)
    assert out["problems"] == []
    assert out["panels_lost"] == 0 and out["panels_duplicated"] == 0 and out["panels"] > 50
    assert out["ingest_kills"] + out["screen_kills"] >= 2


def test_disk_full_gives_clear_error_and_intact_store(tmp_path):
    out = rel.disk_full(CORPUS, tmp_path)
    assert out["capped"]["exit_code"] == 2
    assert "could not write to the store" in out["capped"]["error"]
    assert out["capped"]["problems"] == []
    assert not list((tmp_path / "full" / "embeddings").glob(".*.tmp"))   # no temp file left behind
    assert out["rerun_exit_code"] == 0 and out["rerun_problems"] == []
    assert out["panels_after_rerun"] > 50


def test_second_writer_refused_with_clear_message(tmp_path):
    out = rel.two_writers(CORPUS, tmp_path)
    assert out["seed_exit"] == 0 and out["lock_held"] and out["holder_exit"] == 0
    assert out["first_exit"] == 0 and out["problems"] == []
    assert out["second_ingest_exit"] == 2 and out["screen_exit"] == 2
    assert "in use by pid" in out["second_ingest_error"][0] and "in use by pid" in out["screen_error"][0]


def test_check_notices_damage(tmp_path):
    """The checker is not vacuous: a deleted shard, a deleted evidence file, a panel row without
    a vector and a panel of a skipped document are each reported, and `imgdup check` exits 1;
    an evidence file no transaction registered (a kill before its shard was written) is listed,
    and removed by the next writer."""
    from imgdup import ingest

    ingest(CORPUS[:2], tmp_path / "s", commit_every=1)
    s = Store(tmp_path / "s", create=False)
    assert s.check()["problems"] == []
    stray = tmp_path / "s" / "embeddings" / "part-99999999.evidence"
    stray.write_bytes(b"half-written")
    assert s.check()["unregistered_files"] == [stray.name]
    with s.writer():        # the next writer removes it
        pass
    assert not stray.exists()
    s.close()
    assert rel.run_cli(["check", "--index", str(tmp_path / "s")]).returncode == 0
    db = sqlite3.connect(tmp_path / "s" / "catalog.sqlite")
    first, second = (r[0] for r in db.execute("SELECT file FROM shards ORDER BY shard LIMIT 2"))
    db.execute("INSERT INTO panels (panel_id, doc_sha256, page, figure_id, panel_key, kind, shard) "
               "SELECT 999999, doc_sha256, 1, 'f', 'x', 'panel', shard FROM panels LIMIT 1")
    db.execute("UPDATE documents SET status = 'skipped' WHERE rowid = (SELECT MIN(rowid) FROM documents)")
    db.commit()
    db.close()
    (tmp_path / "s" / "embeddings" / first).unlink()
    (tmp_path / "s" / "embeddings" / second).with_suffix(".evidence").unlink()
    s = Store(tmp_path / "s", create=False)
    problems = " | ".join(s.check()["problems"])
    s.close()
    assert "unreadable" in problems and "without a vector" in problems and "skipped" in problems
    assert "evidence file" in problems
    r = rel.run_cli(["check", "--index", str(tmp_path / "s")])
    assert r.returncode == 1 and "PROBLEM" in r.stderr


FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {"pickle", "marshal", "shelve", "dill", "cloudpickle", "yaml"}


@pytest.mark.parametrize("path", sorted((ROOT / "imgdup").rglob("*.py")), ids=lambda p: p.name)
def test_no_code_path_evaluates_data(path):
    """No eval/exec, no unpickling, no shell: torch.load only with weights_only=True."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not {n.split(".")[0] for n in names} & FORBIDDEN_MODULES, ast.dump(node)
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name):
            assert f.id not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno} calls {f.id}"
        kw = {k.arg: k.value for k in node.keywords}
        if "shell" in kw:
            assert isinstance(kw["shell"], ast.Constant) and kw["shell"].value is False, f"{path.name}:{node.lineno}"
        if isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "torch":
            w = kw.get("weights_only")
            assert isinstance(w, ast.Constant) and w.value is True, f"{path.name}:{node.lineno}: torch.load needs weights_only=True"
        if isinstance(f, ast.Attribute) and f.attr == "system" and isinstance(f.value, ast.Name) and f.value.id == "os":
            raise AssertionError(f"{path.name}:{node.lineno} calls os.system")


def test_atomic_write_keeps_the_old_file_on_failure_and_fsyncs(tmp_path, monkeypatch):
    """A write that fails half-way leaves the previous file whole and no temp file; a write that
    succeeds is flushed (file and directory fsynced) before and after its rename."""
    import os

    from imgdup.index import files

    dst = tmp_path / "report.parquet"
    files.atomic_write(dst, lambda tmp: tmp.write_bytes(b"old report"))

    def half(tmp: Path) -> None:
        tmp.write_bytes(b"half a rep")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.atomic_write(dst, half)
    assert dst.read_bytes() == b"old report" and [p.name for p in tmp_path.iterdir()] == ["report.parquet"]
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    files.atomic_write(dst, lambda tmp: tmp.write_bytes(b"new report"))
    assert dst.read_bytes() == b"new report" and len(synced) == 2
