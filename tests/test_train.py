"""Training loop: window producers, checkpoints and resume, the time budget (tiny CPU runs on the
real training images of ../shared/data)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imgdup.cli.main import train as train_command
from imgdup.model.train import RECIPES, TripletSource, load_splits, train

pytestmark = pytest.mark.skipif(not all(Path(f).is_dir() for f, _ in RECIPES["cpu"].folders),
                                reason="needs ../shared/data")


def test_cli_offers_every_recipe():
    """The CLI spells the recipe names out (importing RECIPES would import torch at start-up)."""
    recipe = next(p for p in train_command.params if p.name == "recipe")
    assert sorted(recipe.type.choices) == sorted(RECIPES)


@pytest.fixture(scope="module")
def train_images():
    return load_splits(RECIPES["cpu"])["train"]


def tiny(name: str, **kw) -> object:
    return dataclasses.replace(RECIPES["cpu"], name=name, **{"batch": 8, "eval_every": 3, **kw})


def test_threads_and_processes_give_the_same_batches(train_images):
    """Producer threads and DataLoader processes draw the same windows in the same order."""
    cpu = torch.device("cpu")
    # processes first: forking while producer threads run can deadlock the children
    b = TripletSource(train_images, 32, 0, cpu, workers=2, batch=8, processes=True)
    a = TripletSource(train_images, 32, 0, cpu, workers=2, batch=8)
    try:
        for _ in range(5):
            wa, wp, ai, pi = a.windows(8)
            xa, xp, bi, qi = b.windows(8)
            assert wa.shape == (8, 1, 64, 64)
            assert torch.equal(wa, xa) and torch.equal(wp, xp)
            assert np.array_equal(ai, bi) and np.array_equal(pi, qi)
        assert not torch.equal(a.windows(8)[0], a.windows(8)[0])   # successive batches differ
    finally:
        a.close(), b.close()


def test_checkpoint_resume_continues_the_run(tmp_path):
    """Stopped after 3 steps and resumed, a run ends at its planned step with one log row per step."""
    recipe = tiny("t-resume", steps=6)
    first = train(recipe, tmp_path / "run", device="cpu", steps=3, progress=False)
    assert first["steps"] == 3 and (tmp_path / "run" / "checkpoint.pt").exists()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3
    second = train(recipe, tmp_path / "run", device="cpu", steps=6, progress=False, workers=1)
    assert second["steps"] == 6
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert sum("val_auc" in r for r in rows) == 2 and (tmp_path / "run" / "best.safetensors").exists()


def test_time_budget_cuts_the_schedule(tmp_path):
    """A budget too short for the recipe cuts its length after the speed probe (recorded in
    recipe.json) and the run ends there or earlier, with a final evaluation."""
    recipe = tiny("t-budget", steps=500, eval_every=10_000)
    out = train(recipe, tmp_path / "run", device="cpu", progress=False, budget_s=3.0, probe=12)
    rec = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert 12 <= out["steps"] <= rec["steps"] < 500
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == out["steps"] and "val_auc" in rows[-1]
    if out["steps"] == rec["steps"]:   # not stopped early: the cosine schedule reached its end
        assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_overrun_stops_with_a_final_evaluation(tmp_path):
    recipe = tiny("t-overrun", steps=500, eval_every=10_000)
    out = train(recipe, tmp_path / "run", device="cpu", progress=False, budget_s=1e-3)
    assert out["steps"] == 1
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["stopped_at"] == 1
    assert (tmp_path / "run" / "best.safetensors").exists()
