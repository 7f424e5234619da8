"""How search cost grows with the store: one plot from the benchmark results already in docs/.

    python benchmarks/plot_scaling.py        # reads docs/*.json, writes docs/scaling.png

Left: a 50-panel query's whole-panel search (every pair within f <= 1, and capped at 20 stored
panels a query panel); right: a nightly screen's whole-panel search, seconds per new panel.  Each
series names the run it comes from: speed.json (flat, 10^4-10^6) and index_scale.json /
index_out_of_core.json (IVF and flat, 10^5-10^7) on the 2-core CPU machine with the CNN of
sessions 5-7; gpu_faiss.json on a lent H200 (GPU flat and 16 CPU cores, the current CNN, which puts
~10x fewer stored panels within f <= 1 of a query, so fewer pairs to re-score).  Nothing is
re-measured here.
"""

from __future__ import annotations

import json
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _load(name: str) -> dict:
    return json.loads((DOCS / name).read_text())


def series() -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{"query" | "screen": {label: [(store panels, seconds), ...]}} from the docs' JSON files."""
    speed, scale, ooc, gpu = (_load(n) for n in ("speed.json", "index_scale.json", "index_out_of_core.json",
                                                  "gpu_faiss.json"))
    q: dict[str, list] = {}
    s: dict[str, list] = {}
    flat = "CPU 2 cores, flat (speed.json, index_out_of_core.json)"
    ivf = "CPU 2 cores, IVF (index_scale.json, index_out_of_core.json)"
    capped = "CPU 2 cores, IVF, capped at 20 (index_out_of_core.json)"
    for r in speed["query"]:
        q.setdefault(flat, []).append((r["store_panels"], r["query_seconds"]))
        s.setdefault(flat, []).append((r["store_panels"], r["screen_seconds"] / r["screen_new_panels"]))
    for r in scale["runs"]:
        q.setdefault(ivf, []).append((r["store_panels"], r["ivf_query_seconds"]))
        s.setdefault(ivf, []).append((r["store_panels"], r["ivf_screen_seconds"] / r["screen_new_panels"]))
    for r in ooc["out_of_core"]:
        n = r["store_panels"]
        q[flat].append((n, r["flat_query_seconds"]))
        s[flat].append((n, r["flat_screen_seconds"] / r["screen_new_panels"]))
        q[ivf].append((n, r["ivf_query_seconds"]))
        s[ivf].append((n, r["ivf_screen_seconds"] / r["screen_new_panels"]))
        q[capped] = [(n, r["ivf_query_seconds_cap20"])]
        s[capped] = [(n, r["ivf_screen_seconds_cap20"] / r["screen_new_panels"])]
    g_range = f"{gpu['run_1']['machine']['gpu']}, flat (gpu_faiss.json)"
    g_capped = f"{gpu['run_1']['machine']['gpu']}, flat, capped at 20 (gpu_faiss.json)"
    c16 = "CPU 16 cores, flat (gpu_faiss.json)"
    for key, r in gpu["run_1"].items():
        if not key.startswith("whole_"):
            continue
        n = r["store_panels"]
        if "range" in r:
            q.setdefault(g_range, []).append((n, r["range"]["gpu_query_seconds"]))
            s.setdefault(g_range, []).append((n, r["range"]["gpu_screen_seconds_per_panel"]))
            q.setdefault(c16, []).append((n, r["range"]["cpu_query_seconds"]))
            s.setdefault(c16, []).append((n, r["range"]["cpu_screen_seconds_per_panel"]))
        q.setdefault(g_capped, []).append((n, r["capped_knn21"]["gpu_query_seconds"]))
        s.setdefault(g_capped, []).append((n, r["capped_knn21"]["gpu_screen_seconds_per_panel"]))
    return {"query": {k: sorted(v) for k, v in q.items()}, "screen": {k: sorted(v) for k, v in s.items()}}


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    titles = {"query": "50-panel query: whole-panel search (s)",
              "screen": "nightly screen: whole-panel search per new panel (s)"}
    for ax, (what, lines) in zip(axes, data.items()):
        for label, pts in lines.items():
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=label, linestyle="--" if "capped" in label else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("stored panels")
        ax.set_title(titles[what])
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7.5, loc="upper left")
    fig.suptitle("imgdup: search cost against store size (synthetic vectors drawn like real embeddings)")
    fig.tight_layout()
    out = DOCS / "scaling.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
