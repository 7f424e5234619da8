"""Held-out evaluation per manipulation family (``imgdup eval-model``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .api import load_model
from .augment import REUSE, DeformConfig
from .train import RECIPES, evaluate, load_splits

_OFF = dict(p_reflect=0.0, p_rot90=0.0, p_perspective=0.0, p_similarity=0.0, p_jpeg=0.0,
            p_gamma=0.0, p_tone=0.0, p_erase=0.0, p_brighten=0.0, p_blur=0.0, p_noise=0.0,
            p_box=0.0, p_text=0.0)

# family -> (config overrides on top of "everything off", clutter on?)
FAMILIES: dict[str, tuple[dict, bool]] = {
    "paper protocol (all, paper ranges)": ({}, True),
    "re-use protocol (all, REUSE ranges)": (dict(REUSE), True),
    "reflection": ({**_OFF, "p_any": 1.0, "p_reflect": 1.0}, False),
    "rotation 90/180/270": ({**_OFF, "p_any": 1.0, "p_rot90": 1.0}, False),
    "perspective": ({**_OFF, "p_any": 1.0, "p_perspective": 1.0}, False),
    "similarity (rot/scale/shift)": ({**_OFF, "p_any": 1.0, "p_similarity": 1.0}, False),
    "jpeg q10-50": ({**_OFF, "p_any": 1.0, "p_jpeg": 1.0}, False),
    "gamma": ({**_OFF, "p_any": 1.0, "p_gamma": 1.0}, False),
    "tone curve": ({**_OFF, "p_any": 1.0, "p_tone": 1.0}, False),
    "local erase": ({**_OFF, "p_any": 1.0, "p_erase": 1.0}, False),
    "local brighten": ({**_OFF, "p_any": 1.0, "p_brighten": 1.0}, False),
    "blur": ({**_OFF, "p_any": 1.0, "p_blur": 1.0}, False),
    "noise": ({**_OFF, "p_any": 1.0, "p_noise": 1.0}, False),
    "clutter (text / box)": ({**_OFF, "p_any": 1.0, "p_box": 0.5, "p_text": 0.5}, True),
}


def evaluate_families(weights: str = "imgdup-default", pairs: int = 1000, split: str = "test",
                      out_json: str | Path | None = None, seed: int = 4321, hard: bool = True) -> str:
    """Evaluate weights on the held-out split, one manipulation family at a time.

    ``hard``: negatives include neighbouring crops and other fields of the same experiment;
    otherwise random other images, as in the paper.
    """
    model = load_model(weights, device="cpu")
    images = load_splits(RECIPES["cpu"])[split]
    rows = {}
    for fam, (over, clutter) in FAMILIES.items():
        cfg = dataclasses.replace(DeformConfig(), **over)
        rows[fam] = evaluate(model.net, images, model.size, pairs=pairs, seed=seed,
                             device=torch.device("cpu"), cfg=cfg, clutter=clutter, hard=hard)
    if out_json:
        Path(out_json).write_text(json.dumps({"weights": model.card.name, "sha256": model.sha256,
                                              "split": split, "pairs_per_family": pairs,
                                              "negatives": "hard" if hard else "random",
                                              "families": rows}, indent=2))
    lines = ["| family | accuracy | ROC AUC | TPR@FPR1e-3 | TPR@FPR1e-2 | TPR@f<=1 | FPR@f<=1 |",
             "|---|---|---|---|---|---|---|"]
    for fam, m in rows.items():
        lines.append(f"| {fam} | {m['accuracy']:.3f} | {m['auc']:.4f} | {m['tpr_at_fpr_0.001']:.3f} | "
                     f"{m['tpr_at_fpr_0.01']:.3f} | {m['tpr_at_threshold']:.3f} | {m['fpr_at_threshold']:.4f} |")
    return "\n".join(lines)
