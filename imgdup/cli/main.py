"""The ``imgdup`` command: a thin layer over the Python API (every command calls one function)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .. import __version__

INDEX_HELP = "Store directory (default: $IMGDUP_INDEX or ./imgdup-index)."


def _progress() -> bool:
    return sys.stderr.isatty()


def _limits(timeout: float, memory_mb: int, max_pages: int) -> dict:
    return dict(timeout_s=timeout, memory_mb=memory_mb, max_pages=max_pages)


def _device_option(f):
    f = click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "amp"]),
                     help="amp: mixed precision (float16 on CUDA, bfloat16 on CPU); f within 0.013 of fp32 "
                          "(docs/MODEL.md).")(f)
    return click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                        help="Where the CNN embeds panels (auto: CUDA when present).")(f)


def _max_candidates_option(f):
    return click.option("--max-candidates", type=click.IntRange(min=1), default=None,
                        help="Keep only the N nearest stored panels within the threshold per panel, in the "
                             "whole-panel and in the sub-region search (default: all, and 20 through "
                             "sub-regions; bounds verification on very large stores: docs/BENCHMARKS.md).")(f)


def _extract_options(f):
    f = click.option("--workers", default=2, show_default=True, help="Extraction worker processes.")(f)
    f = click.option("--timeout", default=300.0, show_default=True, help="Seconds per document.")(f)
    f = click.option("--memory-mb", default=4096, show_default=True, help="Memory cap per worker.")(f)
    f = click.option("--max-pages", default=2000, show_default=True, help="Skip longer documents.")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imgdup")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Find duplicated and manipulated images in scientific PDFs."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("pdfs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for the PNG panels and panels.parquet.")
@_extract_options
def panels(pdfs: tuple[Path, ...], out_dir: Path, workers: int, timeout: float, memory_mb: int,
           max_pages: int) -> None:
    """Split PDFs into figure panels: PNGs plus panels.parquet in --out."""
    from ..api import extract_panels

    results = extract_panels(list(pdfs), out_dir, workers=workers, progress=_progress(),
                             echo=click.echo, **_limits(timeout, memory_mb, max_pages))
    skipped = sum(r.error is not None for r in results)
    n = sum(len(r.panels) for r in results)
    click.echo(f"{len(results)} documents, {n} panels and figures written to {out_dir}; "
               f"{skipped} skipped")


@cli.command()
@click.option("--recipe", default="cpu", show_default=True,
              type=click.Choice(["cpu", "cpu-reuse", "cpu-paper", "paper", "gpu", "gpu-reuse", "gpu-paper",
                                 "gpu-paper-reuse"]),
              help="Training recipe (X-reuse fine-tunes the result of X; see docs/MODEL.md).")
@click.option("--out", "out_dir", default="runs", show_default=True, type=click.Path(path_type=Path),
              help="Runs go to OUT/<recipe>: checkpoints, log.jsonl, best.safetensors.")
@click.option("--steps", type=int, default=None, help="Override the recipe's number of steps.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--no-resume", is_flag=True, help="Start afresh even if a checkpoint exists.")
@click.option("--export", "export_name", default=None,
              help="After training, export the best weights into the package under this name.")
@click.option("--workers", default=0, show_default=True,
              help="Threads (or --processes) that cut training windows ahead of the GPU (0: none).")
@click.option("--processes", is_flag=True, help="Cut windows in worker processes instead of threads.")
@click.option("--budget-minutes", type=float, default=None,
              help="Fit the number of steps to this many minutes at the speed of the first steps.")
def train(recipe: str, out_dir: Path, steps: int | None, device: str, no_resume: bool,
          export_name: str | None, workers: int, processes: bool, budget_minutes: float | None) -> None:
    """Train the siamese CNN (images from ../shared/data by default); resumable."""
    from ..model.train import RECIPES, export_weights, train as run

    r = RECIPES[recipe]
    run_dir = out_dir / r.name
    result = run(r, run_dir, device=device, resume=not no_resume, steps=steps, progress=_progress(),
                 workers=workers, processes=processes, budget_s=budget_minutes * 60 if budget_minutes else None)
    click.echo(f"best validation: {result['best']}")
    if export_name:
        path = export_weights(run_dir, export_name)
        click.echo(f"exported {path}")


@cli.command("eval-model")
@click.option("--weights", default="imgdup-default", show_default=True, help="Shipped name or .safetensors path.")
@click.option("--pairs", default=1000, show_default=True, help="Pairs per manipulation family.")
@click.option("--negatives", type=click.Choice(["hard", "random"]), default="hard", show_default=True,
              help="hard: neighbouring crops / other fields of one experiment; random: the paper's.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--out", "out_json", default=None, type=click.Path(path_type=Path),
              help="Write the metrics as JSON here.")
def eval_model(weights: str, pairs: int, negatives: str, split: str, out_json: Path | None) -> None:
    """Held-out accuracy (paper protocol), ROC AUC and TPR at FPR 1e-3 per manipulation family."""
    from ..model.evaluate import evaluate_families

    table = evaluate_families(weights, pairs=pairs, split=split, out_json=out_json,
                              hard=negatives == "hard")
    click.echo(table)


@cli.command()
@click.argument("pdfs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--index", "index", default=None, help=INDEX_HELP)
@click.option("--commit-every", default=8, show_default=True, help="Documents per store transaction.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: worker processes here; ray: extraction tasks and embedding actors on a Ray cluster.")
@click.option("--address", default=None, help="Ray cluster address (auto: the running cluster; default: start a local one).")
@click.option("--actors", type=int, default=None, help="Ray embedding actors (default: one per GPU, else one per 4 CPUs).")
@click.option("--screen", "screen_out", default=None, type=click.Path(path_type=Path),
              help="Then screen the new panels against the store, reports under this folder.")
@_extract_options
@_device_option
def ingest(pdfs: tuple[Path, ...], index: str | None, commit_every: int, engine: str, address: str | None,
           actors: int | None, screen_out: Path | None, workers: int, timeout: float, memory_mb: int,
           max_pages: int, device: str, precision: str) -> None:
    """Add PDFs (or folders of PDFs) to the store: extract -> embed -> index.  Idempotent and resumable."""
    from ..api import expand_inputs, ingest as run, screen
    from ..index.report import format_table
    from ..model.api import load_model

    # with Ray the actors embed; the driver's model only checks the weights
    model = load_model(device="cpu" if engine == "ray" else device, precision=precision)
    s = run(expand_inputs(pdfs), index, model=model, workers=workers, commit_every=commit_every,
            progress=_progress(), echo=click.echo, engine=engine, address=address, actors=actors, device=device,
            **_limits(timeout, memory_mb, max_pages))
    for path, reason in s.skipped.items():
        click.echo(f"skipped {path}: {reason}", err=True)
    click.echo(s.line())
    if screen_out is not None:
        res = screen(index, screen_out, progress=_progress(), device=device, engine=engine, address=address)
        click.echo(format_table(res.report, 20))
        click.echo(f"screen {res.run_id}: {res.panels} panels screened, {len(res.report)} pairs, "
                   f"{res.seconds:.1f}s; report: {res.path}")


@cli.command()
@click.argument("pdfs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--index", "index", default=None, help=INDEX_HELP)
@click.option("--out", "out", default=None, type=click.Path(path_type=Path), help="Write the Parquet report here.")
@click.option("--threshold", default=None, type=float, help="Report pairs with f <= this (default: the model's, 1.0).")
@click.option("--add", is_flag=True, help="Also add the manuscript to the store.")
@click.option("--no-verify", is_flag=True, help="Report CNN candidates without keypoint verification.")
@click.option("--keep-rejected", is_flag=True, help="Keep pairs the verification rejects (verified=False, with the reason).")
@click.option("--no-copy-move", is_flag=True, help="Do not search panels for regions duplicated inside them.")
@click.option("--no-partial", is_flag=True, help="Whole panels only: no candidates through sub-regions (faster).")
@click.option("--no-inverted", is_flag=True, help="Do not search with each panel's negative (copies shown inverted).")
@click.option("--top", default=20, show_default=True, help="Pairs shown in the table.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when pairs are flagged.")
@_max_candidates_option
@_extract_options
@_device_option
def query(pdfs: tuple[Path, ...], index: str | None, out: Path | None, threshold: float | None, add: bool,
          no_verify: bool, keep_rejected: bool, no_copy_move: bool, no_partial: bool, no_inverted: bool, top: int,
          exit_zero: bool, workers: int,
          timeout: float, memory_mb: int, max_pages: int, device: str, precision: str,
          max_candidates: int | None) -> None:
    """Compare a manuscript's panels with each other and with the store.

    Exit code 0: nothing flagged; 1: pairs flagged; 2: error.
    """
    from ..api import query as run
    from ..index.report import format_table
    from ..model.api import load_model

    res = run(list(pdfs), index, model=load_model(device=device, precision=precision), threshold=threshold, out=out, add=add, workers=workers,
              progress=_progress(), verify=not no_verify, keep_rejected=keep_rejected,
              copy_move=not no_copy_move, partial=not no_partial, device=device, max_candidates=max_candidates,
              inverted=not no_inverted, **_limits(timeout, memory_mb, max_pages))
    for d in res.documents:
        click.echo(d.summary(), err=True)
    click.echo(format_table(res.report, top))
    if res.path:
        click.echo(f"report: {res.path} ({len(res.report)} pairs)")
    click.echo("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in res.seconds.items()), err=True)
    if all(d.error for d in res.documents):
        raise SystemExit(2)
    flagged = res.report[res.report.verified] if not no_verify else res.report
    raise SystemExit(0 if exit_zero or flagged.empty else 1)


@cli.command()
@click.option("--index", "index", default=None, help=INDEX_HELP)
@click.option("--out", "out_dir", default="imgdup-reports", show_default=True, type=click.Path(path_type=Path),
              help="Reports go to OUT/date=YYYY-MM-DD/screen-<run>.parquet.")
@click.option("--all", "all_pairs", is_flag=True, help="Screen every panel, not only the new ones.")
@click.option("--threshold", default=None, type=float, help="Report pairs with f <= this (default 1.0).")
@click.option("--no-verify", is_flag=True, help="Report CNN candidates without keypoint verification.")
@click.option("--keep-rejected", is_flag=True, help="Keep pairs the verification rejects (verified=False, with the reason).")
@click.option("--copy-move", is_flag=True, help="Also search each new panel for regions duplicated inside it (~0.4 s a panel).")
@click.option("--no-partial", is_flag=True, help="Whole panels only: no candidates through sub-regions (faster).")
@click.option("--no-inverted", is_flag=True, help="Do not search with each panel's negative (copies shown inverted).")
@click.option("--top", default=20, show_default=True, help="Pairs shown in the table.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where FAISS searches (cuda needs faiss-gpu; auto: GPU when present).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: verify here; ray: verify the candidate pairs on a Ray cluster (same report).")
@click.option("--address", default=None, help="Ray cluster address (auto: the running cluster; default: start a local one).")
@_max_candidates_option
def screen(index: str | None, out_dir: Path, all_pairs: bool, threshold: float | None, no_verify: bool,
           keep_rejected: bool, copy_move: bool, no_partial: bool, no_inverted: bool, top: int, device: str, engine: str,
           address: str | None, max_candidates: int | None) -> None:
    """Nightly job: panels added since the last screen against the whole store."""
    from ..api import screen as run
    from ..index.report import format_table

    res = run(index, out_dir, all_pairs=all_pairs, threshold=threshold,
              verify=not no_verify, keep_rejected=keep_rejected, copy_move=copy_move, progress=_progress(),
              partial=not no_partial, device=device, engine=engine, address=address, max_candidates=max_candidates,
              inverted=not no_inverted)
    click.echo(format_table(res.report, top))
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in res.stages.items())
    click.echo(f"screen {res.run_id}: {res.panels} panels screened, {len(res.report)} pairs, "
               f"{res.seconds:.1f}s{f' ({stages})' if stages else ''}; report: {res.path}")


@cli.command()
@click.option("--index", "index", default=None, help=INDEX_HELP)
@click.option("--workers", default=2, show_default=True, help="Extraction worker processes.")
@click.option("--index-kind", "kind", type=click.Choice(["auto", "flat", "ivf"]), default="auto", show_default=True,
              help="flat: exact; ivf: inverted lists, nprobe chosen for 0.99 pair recall; auto: IVF from 500,000 panels.")
@click.option("--nlist", type=int, default=None, help="IVF lists (default: sqrt of the panel count).")
@click.option("--on-disk/--in-memory", "on_disk", default=None,
              help="IVF only: memory-map the inverted lists from disk instead of loading them "
                   "(default: when the vectors exceed a quarter of this machine's memory).")
@click.option("--re-extract", is_flag=True,
              help="Re-extract and re-embed every document from its recorded path (stores written by an "
                   "older imgdup: e.g. the 75 % views of session 10); done anyway when the weights differ.")
def reindex(index: str | None, workers: int, kind: str, nlist: int | None, on_disk: bool | None,
            re_extract: bool) -> None:
    """Rebuild the FAISS index; re-embed every document if the store used other weights."""
    from ..api import reindex as run

    click.echo(run(index, workers=workers, progress=_progress(), kind=kind, nlist=nlist, on_disk=on_disk,
                   re_extract=re_extract))


@cli.command()
@click.option("--index", "index", default=None, help=INDEX_HELP)
def check(index: str | None) -> None:
    """Verify a store's invariants (read-only); exit 1 if anything is wrong."""
    from ..api import default_index
    from ..index.store import Store

    store = Store(index or default_index(), create=False)
    try:
        c = store.check()
    finally:
        store.close()
    click.echo(f"{c['store']}: {c['documents']} documents, {c['skipped']} skipped, {c['panels']} panels "
               f"in {c['shards']} shards; index.faiss holds {c['index_on_disk']} "
               f"({c['index_lag']} to catch up on next open)")
    if c["unregistered_files"]:
        click.echo(f"{len(c['unregistered_files'])} files of an interrupted write (removed by the next writer)")
    for p in c["problems"]:
        click.echo(f"PROBLEM: {p}", err=True)
    click.echo("store is sound" if not c["problems"] else f"{len(c['problems'])} problems")
    if c["problems"]:
        raise SystemExit(1)


@cli.command()
@click.argument("report", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--html", "html_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Write DIR/index.html and DIR/img/ (a static, offline page).")
@click.option("--index", "index", default=None,
              help="Store whose thumbnails to show (default: render the panels from the PDFs).")
@click.option("--include-rejected", is_flag=True, help="Also show the pairs the verification rejected (when the report kept them).")
@click.option("--limit", default=500, show_default=True, help="Most pairs shown (highest confidence first).")
def report(report: Path, html_dir: Path, index: str | None, include_rejected: bool, limit: int) -> None:
    """Turn a Parquet pair report into an HTML page for reviewers."""
    from ..index.html import render_html

    page = render_html(report, html_dir, index=index, include_rejected=include_rejected, limit=limit)
    click.echo(f"html report: {page}")


@cli.command()
@click.option("--index", "index", default="imgdup-demo-index", show_default=True, help="Store for the demo corpus.")
@click.option("--out", "out", default="imgdup-demo-report.parquet", show_default=True,
              type=click.Path(path_type=Path), help="Where the query report goes.")
@click.option("--top", default=20, show_default=True, help="Pairs shown in the table.")
def demo(index: str, out: Path, top: int) -> None:
    """Ingest the shipped demo corpus and query the demo manuscript (which re-uses its panels)."""
    from ..api import demo as run
    from ..index.report import format_table

    res = run(index, out, progress=_progress(), echo=click.echo)
    click.echo(format_table(res.report, top))
    click.echo(f"report: {res.path} ({len(res.report)} pairs)")


def main() -> None:
    from ..index.errors import StoreError   # not store: it imports faiss
    from ..model.api import WeightsError

    try:
        cli(prog_name="imgdup", standalone_mode=False)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        raise SystemExit(2)
    except (StoreError, WeightsError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2)
    except Exception as exc:  # an unexpected failure still exits 2 (scripts rely on it)
        logging.getLogger("imgdup").debug("unexpected error", exc_info=True)
        click.echo(f"error: {type(exc).__name__}: {exc} (run with -vv for the traceback)", err=True)
        raise SystemExit(2)
