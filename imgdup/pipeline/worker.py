"""Run extraction of each document in its own worker process, with time and memory limits.

A hostile PDF can hang MuPDF, exhaust memory or crash the interpreter; none of that may stop a
batch.  Each document gets a fresh process (from a fork server, so start-up is cheap) with an
address-space limit; the parent waits with a deadline, kills on timeout, and turns every failure
into a ``DocResult`` with ``error`` set to a readable reason.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import resource
import sys
import time
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Iterable, Iterator

from .extract import DocResult, DocumentError, ExtractOptions, Limits, extract_document

log = logging.getLogger(__name__)


def _child(conn: Connection, path: str, limits: Limits, opts: ExtractOptions) -> None:
    if limits.memory_mb > 0:
        cap = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        res = extract_document(path, limits, opts)
        if opts.evidence:
            from .verify import attach_evidence

            attach_evidence(res)
    except DocumentError as exc:
        res = DocResult(path=path, error=str(exc))
    except MemoryError:
        res = DocResult(path=path, error=f"memory limit exceeded ({limits.memory_mb} MB)")
    except Exception as exc:  # any other library failure is a skip with its reason
        res = DocResult(path=path, error=f"extraction failed ({type(exc).__name__}: {exc})")
    try:
        conn.send(res)
    except MemoryError:
        conn.send(DocResult(path=path, error=f"memory limit exceeded ({limits.memory_mb} MB)"))
    conn.close()


def _context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["imgdup.pipeline.extract", "imgdup.pipeline.verify"])
        return ctx
    return mp.get_context("spawn")


@contextmanager
def _main_not_reimported():
    """Start workers without the running script's path: multiprocessing otherwise re-runs the
    main script in every worker (``spawn.prepare``; the fork server's "__main__" preload, meant to
    avoid that, is not applied in CPython 3.11), importing all it imports: for a script that
    imports torch and faiss about 1 s a document (for the `imgdup` console script, whose top
    level imports only the CLI module, ~40 ms).  The workers need nothing from it (their target
    lives in this module)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(getattr(main, "__spec__", None), "name", None):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def extract_many(paths: Iterable[str | Path], limits: Limits | None = None,
                 opts: ExtractOptions | None = None, workers: int = 1) -> Iterator[DocResult]:
    """Extract documents in isolated workers; yields one DocResult per path, in input order."""
    limits, opts = limits or Limits(), opts or ExtractOptions()
    ctx = _context()
    todo = [str(p) for p in paths]
    results: dict[int, DocResult] = {}
    running: dict[Connection, tuple[int, mp.Process, float]] = {}
    next_i, emit = 0, 0
    workers = max(1, workers)
    while emit < len(todo):
        while next_i < len(todo) and len(running) < workers:
            path = todo[next_i]
            if not os.path.isfile(path):  # cheap checks without a process
                reason = ("is a directory" if os.path.isdir(path) else
                          "not a regular file" if os.path.exists(path) else
                          "broken symbolic link" if os.path.islink(path) else "file not found")
                results[next_i] = DocResult(path=path, error=reason)
            else:
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(send, path, limits, opts), daemon=True)
                with _main_not_reimported():
                    proc.start()
                send.close()
                running[recv] = (next_i, proc, time.monotonic())
            next_i += 1
        if running:
            deadline = min(t0 + limits.timeout_s for _, _, t0 in running.values())
            ready = wait(list(running), timeout=max(0.0, deadline - time.monotonic()) + 0.01)
            for conn in ready:
                i, proc, _ = running.pop(conn)
                try:
                    res = conn.recv()
                except (EOFError, OSError):
                    proc.join(5)
                    code = proc.exitcode
                    why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    res = DocResult(path=todo[i], error=f"worker crashed ({why})")
                conn.close()
                proc.join(5)
                results[i] = res
            now = time.monotonic()
            for conn, (i, proc, t0) in list(running.items()):
                if now - t0 > limits.timeout_s:
                    proc.kill()
                    proc.join(5)
                    conn.close()
                    running.pop(conn)
                    results[i] = DocResult(path=todo[i], error=f"timeout after {limits.timeout_s:g}s")
        while emit in results:
            yield results.pop(emit)
            emit += 1
