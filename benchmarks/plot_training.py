"""Plot training curves (loss, batch accuracy, validation accuracy / AUC) of one or more runs.

    python benchmarks/plot_training.py runs/cpu runs/cpu-reuse --out docs/training_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default="docs/training_curve.png")
    args = ap.parse_args()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    offset_steps, offset_s = 0, 0.0
    for run in args.runs:
        rows = [json.loads(x) for x in (Path(run) / "log.jsonl").read_text().splitlines() if x.strip()]
        name = Path(run).name
        steps = [r["step"] + offset_steps for r in rows]
        k = 25
        smooth = lambda xs: [sum(xs[max(0, i - k):i + 1]) / len(xs[max(0, i - k):i + 1]) for i in range(len(xs))]  # noqa: E731
        axes[0].plot(steps, smooth([r["loss"] for r in rows]), label=name)
        axes[1].plot(steps, smooth([r["acc"] for r in rows]), label=name)
        ev = [r for r in rows if "val_accuracy" in r]
        axes[2].plot([r["step"] + offset_steps for r in ev], [r["val_accuracy"] for r in ev], "o-", label=f"{name} val acc")
        axes[2].plot([r["step"] + offset_steps for r in ev], [r["val_auc"] for r in ev], "s--", label=f"{name} val AUC")
        offset_steps = steps[-1]
        offset_s += rows[-1]["seconds"]
    for ax, title in zip(axes, ["loss (eq. 4 + hard negatives, smoothed)", "batch accuracy at f<=1 (smoothed)",
                                "validation (hard negatives)"]):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out} ({offset_s / 60:.1f} min of training)")


if __name__ == "__main__":
    main()
