"""Reliability harness: hostile inputs, kill -9 loops, a full disk, concurrent writers.

    python benchmarks/reliability.py [--fuzz-per-pdf 12] [--kills 12] [--smoke]

1. hostile inputs: truncated / bit-flipped / block-zeroed copies of every real PDF in
   ../shared/data/pdfs and of a generated one, encrypted PDFs (user password; owner password
   only), 10^4 pages, an image declaring 10^5 x 10^5 pixels, a decompression bomb, deeply nested
   and self-referencing form XObjects, a non-PDF named .pdf, an empty file, a sparse 600 MB file,
   a FIFO, symlinks (good, dangling, to a folder) and a folder -- all in ONE `imgdup ingest`;
   every input must end as ingested or as a recorded skip with its path and reason.
2. kill -9 at random moments of `imgdup ingest` and of `imgdup screen`, repeatedly; after each
   kill `Store.check()` must find the store sound, and a final run must finish the work with the
   same panels as an uninterrupted run and every panel screened.
3. a full disk (simulated with RLIMIT_FSIZE: every write beyond the cap fails with EFBIG, the
   way ENOSPC does): a clear error, exit code 2, a sound store, and a later run completes.
4. two writers at once: the second gets a clear "in use" error; the store stays sound.

Writes docs/reliability.json (counts, seconds, machine).  The test suite runs the same functions
on fewer inputs (tests/test_reliability.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from imgdup.index.store import Store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# ----------------------------------------------------------------------------- hostile inputs

def _raw_pdf(objects: list[bytes]) -> bytes:
    """A PDF from numbered object bodies (1-based; object 1 is the catalogue), with a correct
    cross-reference table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _stream(d: bytes, data: bytes) -> bytes:
    return b"<< " + d + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def nested_forms_pdf(depth: int, cycle: bool) -> bytes:
    """A page drawing form F1, which draws F2, ... F<depth>; with ``cycle`` the last form draws
    F1 again (an infinite recursion for a naive renderer)."""
    first = 4
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /XObject << /F %d 0 R >> >> "
            b"/Contents %d 0 R >>" % (first, first + depth)]
    for k in range(depth):
        nxt = first + k + 1 if k + 1 < depth else (first if cycle else None)
        res = b"/Resources << /XObject << /F %d 0 R >> >>" % nxt if nxt else b""
        body = b"q 0.99 0 0 0.99 1 1 cm /F Do Q" if nxt else b"0 0 0 rg 10 10 100 100 re f"
        objs.append(_stream(b"/Type /XObject /Subtype /Form /BBox [0 0 595 842] " + res, body))
    objs.append(_stream(b"", b"q /F Do Q"))
    return _raw_pdf(objs)


def bomb_pdf(width: int, height: int, declared: tuple[int, int] | None = None) -> bytes:
    """One image XObject whose Flate stream inflates to width x height RGB zeros (a
    decompression bomb); ``declared`` overrides the size the dictionary claims."""
    comp = zlib.compressobj(9)
    row = bytes(width * 3 * 64)
    chunks = [comp.compress(row) for _ in range(height // 64)] + [comp.compress(bytes(width * 3 * (height % 64))),
                                                                  comp.flush()]
    data = b"".join(chunks)
    w, h = declared or (width, height)
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /XObject << /Im 4 0 R >> >> "
            b"/Contents 5 0 R >>",
            _stream(b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
                    b"/BitsPerComponent 8 /Filter /FlateDecode" % (w, h), data),
            _stream(b"", b"q 400 0 0 400 100 300 cm /Im Do Q")]
    return _raw_pdf(objs)


def good_pdf(path: Path, seed: int = 0) -> Path:
    """A small valid PDF with two real-looking micrographs (generated texture)."""
    import pymupdf
    from PIL import Image
    import io

    rng = np.random.default_rng(seed)
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    for k in range(2):
        img = (rng.random((48, 48)) * 255).astype(np.uint8)
        img = np.kron(img, np.ones((5, 5), np.uint8))
        img = (0.6 * img + 0.4 * np.roll(img, 3, 1)).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        page.insert_image(pymupdf.Rect(60 + 250 * k, 100, 290 + 250 * k, 330), stream=buf.getvalue())
    page.insert_text((60, 360), "Figure 1. Two fields of view.", fontsize=9)
    doc.save(path)
    return path


def fuzzed(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random corruption of a PDF: truncation, bit flips anywhere or in the trailer, or a
    zeroed block."""
    kind = str(rng.choice(["truncate", "flip", "flip-tail", "zero-block"]))
    b = bytearray(data)
    n = len(b)
    if kind == "truncate":
        return kind, bytes(b[: int(n * rng.uniform(0.02, 0.98))])
    if kind == "zero-block":
        at = int(rng.integers(0, max(1, n - 4096)))
        b[at:at + 4096] = bytes(min(4096, n - at))
        return kind, bytes(b)
    lo = max(0, n - 2048) if kind == "flip-tail" else 0
    for pos in rng.integers(lo, n, int(rng.choice([1, 8, 64]))):
        b[int(pos)] ^= 1 << int(rng.integers(0, 8))
    return kind, bytes(b)


def build_hostile(work: Path, fuzz_per_pdf: int, seed: int = 0, sources: list[Path] | None = None) -> list[dict]:
    """Write the hostile inputs under ``work``; each entry: path, kind, and ``expect`` -- a
    substring of the skip reason, "ok" (must be ingested), or None (either, but never a crash)."""
    import pymupdf

    rng = np.random.default_rng(seed)
    work.mkdir(parents=True, exist_ok=True)
    good = good_pdf(work / "good.pdf", seed)
    items: list[dict] = [{"path": good, "kind": "good", "expect": "ok"}]

    def add(name: str, kind: str, expect: str | None, data: bytes | None = None) -> Path:
        p = work / name
        if data is not None:
            p.write_bytes(data)
        items.append({"path": p, "kind": kind, "expect": expect})
        return p

    doc = pymupdf.open(good)
    doc.save(work / "enc-user.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")
    add("enc-user.pdf", "encrypted (user password)", "encrypted")
    doc.save(work / "enc-owner.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner",
             permissions=pymupdf.PDF_PERM_PRINT)
    add("enc-owner.pdf", "encrypted (owner password only)", "ok")
    many = pymupdf.open()
    for _ in range(10_000):
        many.new_page(width=200, height=200)
    many.save(work / "pages-10k.pdf")
    add("pages-10k.pdf", "10^4 pages", "too many pages")
    add("declared-1e5.pdf", "image declaring 10^5 x 10^5 px", "ok", bomb_pdf(64, 64, declared=(100_000, 100_000)))
    add("bomb.pdf", "Flate bomb 9000 x 9000 RGB", None, bomb_pdf(9000, 9000))
    add("nested.pdf", "forms nested 5000 deep", None, nested_forms_pdf(5000, cycle=False))
    add("cycle.pdf", "self-referencing forms", None, nested_forms_pdf(50, cycle=True))
    add("text.pdf", "text file named .pdf", "not a PDF", b"Dear editor,\nplease find attached...\n" * 20)
    add("empty.pdf", "empty file", "empty file", b"")
    huge = add("sparse-600mb.pdf", "600 MB file (sparse)", "file too large")
    with open(huge, "wb") as fh:
        fh.write(good.read_bytes())
        fh.truncate(600 * 2**20)
    fifo = work / "fifo.pdf"
    os.mkfifo(fifo)
    add("fifo.pdf", "FIFO named .pdf", "not a regular file")
    (work / "link-good.pdf").symlink_to(good)
    add("link-good.pdf", "symlink to a good PDF", "ok")
    (work / "link-dangling.pdf").symlink_to(work / "nowhere.pdf")
    add("link-dangling.pdf", "dangling symlink", "broken symbolic link")
    (work / "folder.pdf").mkdir()
    (work / "link-folder.pdf").symlink_to(work / "folder.pdf")
    add("folder.pdf", "directory", "is a directory")
    add("link-folder.pdf", "symlink to a directory", "is a directory")
    sources = sources if sources is not None else sorted(SHARED.glob("pdfs/*.pdf"))
    for src in [good, *sources]:
        data = src.read_bytes()
        for k in range(fuzz_per_pdf):
            kind, bad = fuzzed(data, rng)
            add(f"fuzz-{src.stem}-{k:02d}-{kind}.pdf", f"fuzz {kind}", None, bad)
    return items


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgdup.cli", *args], capture_output=True, text=True, **kw)


def hostile_ingest(work: Path, fuzz_per_pdf: int, seed: int = 0, sources: list[Path] | None = None,
                   timeout: float = 60.0, memory_mb: int = 2048) -> dict:
    """All hostile inputs in one `imgdup ingest`; returns counts and every mismatch found."""
    items = build_hostile(work / "inputs", fuzz_per_pdf, seed, sources)
    store = work / "store"
    t0 = time.perf_counter()
    r = run_cli(["ingest", *[str(i["path"]) for i in items], "--index", str(store), "--workers", "2",
                 "--timeout", str(timeout), "--memory-mb", str(memory_mb)], timeout=1800)
    seconds = time.perf_counter() - t0
    skipped_lines = {}
    for line in r.stderr.splitlines():
        if line.startswith("skipped "):
            path, _, reason = line[len("skipped "):].partition(": ")
            skipped_lines[path] = reason
    s = Store(store, create=False)
    recorded = dict(s.db.execute("SELECT path, reason FROM documents WHERE status = 'skipped'").fetchall())
    ok_docs = {r[0] for r in s.db.execute("SELECT path FROM documents WHERE status = 'ok'")}
    check = s.check()
    s.close()
    failures = []
    outcomes: dict[str, int] = {}
    for it in items:
        p = str(it["path"])
        reason = skipped_lines.get(p)
        outcome = "skipped" if reason else "ingested"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if reason and recorded.get(p) != reason:
            failures.append(f"{p}: skip not recorded in the store ({recorded.get(p)!r} != {reason!r})")
        if it["expect"] == "ok" and reason:
            failures.append(f"{p} ({it['kind']}): should be ingested, skipped: {reason}")
        elif it["expect"] not in (None, "ok") and (not reason or it["expect"] not in reason):
            failures.append(f"{p} ({it['kind']}): expected skip '{it['expect']}', got {reason!r}")
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    n_skipped = len(skipped_lines)
    if f"{n_skipped} skipped" not in summary:
        failures.append(f"summary line does not count {n_skipped} skipped: {summary!r}")
    if r.returncode != 0:
        failures.append(f"ingest exit code {r.returncode}: {r.stderr[-500:]}")
    failures += [f"store: {p}" for p in check["problems"]]
    reasons: dict[str, int] = {}
    for reason in skipped_lines.values():
        key = reason.split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
    return {"inputs": len(items), "fuzzed": sum(i["kind"].startswith("fuzz") for i in items),
            "outcomes": outcomes, "skip_reasons": reasons, "ok_documents": len(ok_docs),
            "seconds": round(seconds, 1), "exit_code": r.returncode,
            "cli_max_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "failures": failures, "summary_line": summary,
            "kinds": sorted({i["kind"] for i in items if not i["kind"].startswith("fuzz")})}


# ----------------------------------------------------------------------------- kill -9 loops

def _panels(store: Path) -> set[tuple[str, str]]:
    if not (store / "catalog.sqlite").exists():
        return set()
    s = Store(store, create=False)
    keys = set(s.db.execute("SELECT doc_sha256, panel_key FROM panels").fetchall())
    s.close()
    return keys


def _sound(store: Path) -> list[str]:
    if not (store / "catalog.sqlite").exists():
        return []
    s = Store(store, create=False)
    try:
        return s.check()["problems"]
    finally:
        s.close()


def kill_loop(pdfs: list[Path], work: Path, kills: int, seed: int = 0) -> dict:
    """kill -9 `imgdup ingest`, then `imgdup screen`, at random moments, ``kills`` times each;
    check the store after every kill; finish; compare with an uninterrupted run.

    Kill times are drawn uniformly over the duration of the uninterrupted run of the same
    command; a run that finished before its kill is undone (store removed / screened flags reset)
    so that every kill lands in real work."""
    rng = np.random.default_rng(seed)
    ref, store = work / "ref", work / "killed"
    ingest_args = ["ingest", *map(str, pdfs), "--commit-every", "1", "--workers", "1"]
    screen_args = ["screen", "--out", str(work / "reports")]
    t0 = time.perf_counter()
    r = run_cli([*ingest_args, "--index", str(ref)])
    t_ingest = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    t0 = time.perf_counter()
    run_cli([*screen_args, "--index", str(ref)])
    t_screen = time.perf_counter() - t0
    want = _panels(ref)
    out: dict = {"pdfs": len(pdfs), "panels": len(want), "seconds_uninterrupted":
                 {"ingest": round(t_ingest, 1), "screen": round(t_screen, 1)}, "problems": []}
    for stage, args, span in (("ingest", ingest_args, t_ingest), ("screen", screen_args, t_screen)):
        killed = finished = 0
        for k in range(kills):
            proc = subprocess.Popen([sys.executable, "-m", "imgdup.cli", *args, "--index", str(store)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(float(rng.uniform(0.1, 1.0) * span))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
            proc.wait()
            out["problems"] += [f"{stage} kill {k}: {p}" for p in _sound(store)]
            if stage == "ingest" and want and _panels(store) == want:
                finished += 1
                shutil.rmtree(store)
            elif stage == "screen" and _unscreened(store) == 0:
                finished += 1
                _reset_screened(store)
        final = run_cli([*args, "--index", str(store)])
        if final.returncode not in (0, 1):
            out["problems"].append(f"final {stage} failed: {final.stderr[-500:]}")
        out["problems"] += [f"after final {stage}: {p}" for p in _sound(store)]
        out[f"{stage}_kills"] = killed
        out[f"{stage}_finished_before_kill"] = finished
    got = _panels(store)
    if got != want:
        out["problems"].append(f"panels differ from the uninterrupted run: {len(got - want)} extra, "
                               f"{len(want - got)} missing")
    out["unscreened_after_final"] = _unscreened(store)
    if out["unscreened_after_final"]:
        out["problems"].append(f"{out['unscreened_after_final']} panels not screened after the final run")
    out["panels_lost"] = len(want - got)
    out["panels_duplicated"] = len(got - want)
    return out


def _unscreened(store: Path) -> int:
    s = Store(store, create=False)
    n = s.db.execute("SELECT COUNT(*) FROM panels WHERE screened = 0").fetchone()[0]
    s.close()
    return n


def _reset_screened(store: Path) -> None:
    import sqlite3

    db = sqlite3.connect(store / "catalog.sqlite")
    db.execute("UPDATE panels SET screened = 0")
    db.commit()
    db.close()


# ----------------------------------------------------------------------------- disk full, two writers

def _fsize_cap(nbytes: int):
    def set_cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return set_cap


def disk_full(pdfs: list[Path], work: Path, cap_bytes: int = 150_000) -> dict:
    """Ingest with every file capped at ``cap_bytes`` (writes beyond fail as on a full disk)."""
    store = work / "full"
    r = subprocess.run([sys.executable, "-m", "imgdup.cli", "ingest", *map(str, pdfs), "--index", str(store)],
                       capture_output=True, text=True, preexec_fn=_fsize_cap(cap_bytes))
    first = {"exit_code": r.returncode, "error": (r.stderr.strip().splitlines() or [""])[-1],
             "problems": _sound(store), "panels_kept": len(_panels(store)) if (store / "catalog.sqlite").exists() else 0}
    again = run_cli(["ingest", *map(str, pdfs), "--index", str(store)])
    return {"capped": first, "rerun_exit_code": again.returncode, "rerun_problems": _sound(store),
            "panels_after_rerun": len(_panels(store))}


_HOLD = """import sys
from imgdup.index.store import Store
with Store(sys.argv[1], create=False).writer():
    print("held", flush=True)
    sys.stdin.readline()
"""


def two_writers(pdfs: list[Path], work: Path) -> dict:
    """While a writer holds the store (the lock ``imgdup ingest`` takes, held by a helper process
    until the check is done, so that no timing decides it), a second ingest and a screen start at
    once: both must stop with a clear "in use" message.  Then the writer lets go, and an ingest of
    every document must finish with the store sound."""
    store = work / "busy"
    cli = [sys.executable, "-m", "imgdup.cli"]
    seed = subprocess.run([*cli, "ingest", str(pdfs[0]), "--index", str(store), "--workers", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(store)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    held = holder.stdout.readline().strip() == "held"
    cmds = {"second_ingest": ["ingest", *map(str, pdfs)], "screen": ["screen", "--out", str(work / "busy-reports")]}
    procs = {k: subprocess.Popen([*cli, *c, "--index", str(store)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for k, c in cmds.items()}
    res = {k: (p.wait(), p.stderr.read().strip().splitlines()[-1:]) for k, p in procs.items()}
    holder.communicate("\n")
    first = subprocess.run([*cli, "ingest", *map(str, pdfs), "--index", str(store), "--workers", "1",
                            "--commit-every", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = {"seed_exit": seed.returncode, "lock_held": held, "holder_exit": holder.returncode,
           "first_exit": first.returncode, "problems": _sound(store)}
    for k, (code, err) in res.items():
        out[f"{k}_exit"], out[f"{k}_error"] = code, err
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fuzz-per-pdf", type=int, default=12)
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "reliability.json"))
    args = ap.parse_args()
    fuzz, kills = (1, 2) if args.smoke else (args.fuzz_per_pdf, args.kills)
    work = Path(tempfile.mkdtemp(prefix="imgdup-reliability-"))
    from imgdup.demo import DEMO_DIR

    corpus = sorted((DEMO_DIR / "corpus").glob("*.pdf")) + sorted((DEMO_DIR / "manuscript").glob("*.pdf"))
    t0 = time.time()
    out = {"command": "python benchmarks/reliability.py " + ("--smoke" if args.smoke else
                                                             f"--fuzz-per-pdf {fuzz} --kills {kills} --seed {args.seed}"),
           "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"}
    out["hostile"] = hostile_ingest(work / "hostile", fuzz, args.seed)
    print("hostile:", json.dumps({k: v for k, v in out["hostile"].items() if k != "kinds"}), flush=True)
    out["kill_loop"] = kill_loop(corpus, work / "kill", kills, args.seed)
    print("kill loop:", json.dumps(out["kill_loop"]), flush=True)
    out["disk_full"] = disk_full(corpus, work / "disk")
    print("disk full:", json.dumps(out["disk_full"]), flush=True)
    out["two_writers"] = two_writers(corpus, work / "writers")
    print("two writers:", json.dumps(out["two_writers"]), flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    shutil.rmtree(work, ignore_errors=True)
    bad = out["hostile"]["failures"] + out["kill_loop"]["problems"] + out["disk_full"]["rerun_problems"] \
        + out["disk_full"]["capped"]["problems"] + out["two_writers"]["problems"]
    print(f"{len(bad)} failures" + "".join(f"\n  {b}" for b in bad))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
