"""End-to-end benchmark: realistic PDFs from held-out real images with planted re-use, run
through the CLI (ingest, screen, query), scored at the panel level against the truth.

    python benchmarks/end_to_end.py [--papers 6] [--seed 11] [--smoke]

The corpus also holds the two Taylor & Francis decoys of ../shared/data/pdfs (same publisher
icons, no scientific duplicate).  Writes docs/end_to_end.json and prints a summary.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def run(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "imgdup.cli", *cmd], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return time.perf_counter() - t, r


def strip(score: dict) -> dict:
    return {k: v for k, v in score.items() if k != "fp_row_index"}


def stages(stderr: str) -> dict[str, float]:
    """The per-stage seconds that `imgdup query` prints on stderr (its last "seconds: " line)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("seconds: ")]
    if not lines:
        return {}
    return {k: float(v) for k, v in (x.rsplit(" ", 1) for x in lines[-1][len("seconds: "):].split(", "))}


def score_runs(work: Path, index: Path, truth: pd.DataFrame, docs: set[str], manuscript: Path,
               modes: tuple[str, ...] = ("verified", "cnn_only"),
               set_apart: Callable[[pd.DataFrame], tuple[pd.DataFrame, dict]] | None = None,
               ) -> tuple[dict, dict]:
    """Run ``screen --all`` on the store and query ``manuscript`` against it, verified and with
    ``--no-verify``, and score each report against the planted truth (a query sees the pairs that
    involve the manuscript).  ``set_apart(report)`` may take rows out of the scoring: it returns
    the rest and a dict of counts stored beside the score.  Returns (scores, seconds)."""
    from imgdup.demo.generate import score_report

    res: dict = {}
    secs: dict = {}
    for mode in modes:
        extra = ["--no-verify"] if mode == "cnn_only" else []
        t, _ = run(["screen", "--all", "--index", str(index), "--out", str(work / f"screen-{mode}"), *extra])
        rep = pd.concat([pd.read_parquet(f) for f in (work / f"screen-{mode}").rglob("*.parquet")]).reset_index(drop=True)
        rep, apart = set_apart(rep) if set_apart else (rep, None)
        res[f"screen_{mode}"] = {**strip(score_report(rep, truth, docs=docs)), **(apart or {})}
        secs[f"screen_{mode}"] = t
        t, r = run(["query", str(manuscript), "--index", str(index), "--out", str(work / f"query-{mode}.parquet"), *extra])
        rep = pd.read_parquet(work / f"query-{mode}.parquet")
        n = len(rep)
        rep, apart = set_apart(rep) if set_apart else (rep, None)
        res[f"query_{mode}"] = {**strip(score_report(rep, truth, involving=manuscript.name)),
                                **(apart or {}), "reported_pairs": int(n)}
        secs[f"query_{mode}"] = t
        if st := stages(r.stderr):
            secs[f"query_{mode}_stages"] = st
    return res, secs


def work_dir(keep: str | None, prefix: str) -> Path:
    """The benchmark's work folder: ``keep`` emptied first (a store or reports left there by an
    earlier run would be scored again), else a new temporary folder, removed when the process
    exits (a corpus, its store and reports: 10-20 MB a run, more at scale)."""
    if keep:
        work = Path(keep)
        if work.exists():
            shutil.rmtree(work)
        return work
    work = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


def ingest_and_score(work: Path, truth: pd.DataFrame, res: dict, out: str,
                     modes: tuple[str, ...] = ("verified", "cnn_only"),
                     set_apart: Callable[[pd.DataFrame], tuple[pd.DataFrame, dict]] | None = None) -> dict:
    """A generated corpus end to end: ingest ``work``/corpus's PDFs with the publisher-icon decoys
    into ``work``/index, screen it and query ``work``/manuscript/manuscript.pdf (``score_runs``),
    add the scores and the seconds to ``res`` and write it to ``out`` as JSON; returns the scores."""
    corpus = sorted((work / "corpus").glob("*.pdf"))
    decoys = sorted(SHARED.glob("pdfs/tandf-decoy-*.pdf"))
    index = work / "index"
    res.setdefault("seconds", {})["ingest"], _ = run(["ingest", *map(str, corpus + decoys), "--index", str(index)])
    scores, secs = score_runs(work, index, truth, {p.name for p in corpus}, work / "manuscript" / "manuscript.pdf",
                              modes=modes, set_apart=set_apart)
    res.update(scores)
    res["seconds"].update(secs)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2))
    return scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--papers", type=int, default=6)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "end_to_end.json"))
    ap.add_argument("--keep", default=None, help="keep the work folder here (emptied first)")
    args = ap.parse_args()
    from imgdup.demo.generate import build_corpus, shared_test_images

    papers = 2 if args.smoke else args.papers
    work = work_dir(args.keep, "imgdup-e2e-")
    images = shared_test_images(splits=("test", "val"))
    truth = build_corpus(images, work, n_papers=papers, seed=args.seed)
    corpus = sorted((work / "corpus").glob("*.pdf"))
    decoys = sorted(SHARED.glob("pdfs/tandf-decoy-*.pdf"))
    index = work / "index"
    out = {"papers": papers, "seed": args.seed, "placements": int(len(truth)),
           "command": "python benchmarks/end_to_end.py " + ("--smoke" if args.smoke else
                                                            f"--papers {papers} --seed {args.seed}"),
           "date": time.strftime("%Y-%m-%d")}
    t_ingest, _ = run(["ingest", *map(str, corpus + decoys), "--index", str(index)])
    ms = work / "manuscript" / "manuscript.pdf"
    scores, secs = score_runs(work, index, truth, {p.name for p in corpus}, ms)
    out.update(scores)
    out["seconds"] = {"ingest": t_ingest, **secs}
    from imgdup.pipeline.extract import extract_document

    out["manuscript_panels"] = sum(p.kind != "figure" for p in extract_document(ms).panels)
    if not args.smoke:
        # a bigger submission: 4 more generated papers (other seed, same image pool, so with real
        # re-use of stored panels), queried together as one manuscript of about 50 panels
        big = build_corpus(images, work / "big", n_papers=4, seed=args.seed + 1, manuscript=False)
        docs = sorted((work / "big" / "corpus").glob("*.pdf"))
        t, r = run(["query", *map(str, docs), "--index", str(index), "--out", str(work / "query-big.parquet")])
        cands = run(["query", *map(str, docs), "--index", str(index), "--out", str(work / "query-big-all.parquet"),
                     "--no-verify"])[1]
        out["query_50_panels"] = {
            "panels": int(sum(p.kind != "figure" for d in docs for p in extract_document(d).panels)),
            "figures_and_panels": int(sum(1 for d in docs for _ in extract_document(d).panels)),
            "placements": int(len(big)), "seconds": t,
            "stages": stages(r.stderr),
            "candidate_pairs": int(len(pd.read_parquet(work / "query-big-all.parquet"))),
            "reported_verified": int(len(pd.read_parquet(work / "query-big.parquet"))),
            "cnn_only_exit_code": cands.returncode}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
