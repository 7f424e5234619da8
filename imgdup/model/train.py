"""Training of the siamese network: recipes, the training loop with checkpoints and resume,
held-out evaluation and the export of shipped weights."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..hashing import sha256_file
from .augment import REUSE, DeformConfig, Deformer
from .data import TrainImage, WindowSampler, load_folder, load_split_file, split_groups
from .net import build, distance, standardise, triplet_loss

log = logging.getLogger(__name__)

def shared_data_dir() -> Path:
    """../shared/data of the project: $IMGDUP_SHARED_DATA, else next to the working directory or
    to the source checkout (an installed package does not know where the checkout is)."""
    env = os.environ.get("IMGDUP_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data",
                   Path(__file__).resolve().parents[2].parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), candidates[-1])


SHARED_DATA = shared_data_dir()
DEFAULT_SPLIT = Path(__file__).with_name("splits") / "default.json"


@dataclass
class Recipe:
    """Everything that defines a training run."""

    name: str
    arch: str
    steps: int
    batch: int
    optimizer: str            # "sgd" (reference) or "adam"
    lr: float
    momentum: float = 0.9
    hard_negative_weight: float = 0.5   # share of the loss on the hardest in-batch negative
    eval_every: int = 100
    seed: int = 0
    folders: list[tuple[str, str]] = field(default_factory=lambda: [
        (str(SHARED_DATA / "micrographs" / "dsb2018"), "size"),
        (str(SHARED_DATA / "blots" / "athenaz2"), "prefix")])
    blot_weight: float = 0.3  # share of anchors drawn from blots
    deform: dict = field(default_factory=dict)   # DeformConfig overrides
    init_from: str | None = None                 # recipe whose best weights start this one


RECIPES: dict[str, Recipe] = {
    # the paper / reference code: momentum SGD lr 1e-5, batch 256, 20k steps; a GPU job
    "paper": Recipe("paper", "paper", steps=20000, batch=256, optimizer="sgd", lr=1e-5,
                    hard_negative_weight=0.0, eval_every=500),
    # this machine: Adam with cosine decay, hard negatives, the 4x cheaper 64-px input
    "cpu": Recipe("cpu", "paper64", steps=1500, batch=48, optimizer="adam", lr=1e-3, eval_every=150),
    # second CPU phase: fine-tune on re-use-like deformations (augment.REUSE) from "cpu"
    "cpu-reuse": Recipe("cpu-reuse", "paper64", steps=900, batch=48, optimizer="adam", lr=3e-4,
                        eval_every=150, deform=REUSE, init_from="cpu"),
    # the paper's architecture under the CPU budget, for the comparison in docs/MODEL.md
    "cpu-paper": Recipe("cpu-paper", "paper", steps=600, batch=48, optimizer="adam", lr=1e-3,
                        eval_every=100),
    # one GPU: the cpu / cpu-reuse schedule at the paper's batch of 256, for both networks;
    # ``--budget-minutes`` fits the number of steps to the time at hand (recorded in recipe.json)
    "gpu": Recipe("gpu", "paper64", steps=20000, batch=256, optimizer="adam", lr=1e-3, eval_every=250),
    "gpu-reuse": Recipe("gpu-reuse", "paper64", steps=20000, batch=256, optimizer="adam", lr=3e-4,
                        eval_every=250, deform=REUSE, init_from="gpu"),
    "gpu-paper": Recipe("gpu-paper", "paper", steps=20000, batch=256, optimizer="adam", lr=1e-3,
                        eval_every=250),
    "gpu-paper-reuse": Recipe("gpu-paper-reuse", "paper", steps=20000, batch=256, optimizer="adam",
                              lr=3e-4, eval_every=250, deform=REUSE, init_from="gpu-paper"),
}


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_splits(recipe: Recipe, split_file: Path = DEFAULT_SPLIT) -> dict[str, list[TrainImage]]:
    """Load the recipe's folders and split their images by group."""
    images: list[TrainImage] = []
    for folder, rule in recipe.folders:
        images += load_folder(folder, rule).images
    fixed = load_split_file(split_file) if split_file.exists() else None
    assign = split_groups(sorted({im.group for im in images}), fixed)
    out: dict[str, list[TrainImage]] = {"train": [], "val": [], "test": []}
    for im in images:
        out[assign[im.group]].append(im)
    return out


class WindowMix:
    """Anchor and partner windows (NumPy, CPU) from micrograph and blot samplers in fixed shares."""

    def __init__(self, images: list[TrainImage], window: int, seed: int, blot_weight: float = 0.3,
                 hard: bool = True) -> None:
        blots = [im for im in images if im.group.startswith("athenaz2/")]
        micro = [im for im in images if not im.group.startswith("athenaz2/")]
        self.samplers = [(WindowSampler(micro, window, seed, hard=hard), 1 - blot_weight)] if micro else []
        if blots:
            self.samplers.append((WindowSampler(blots, window, seed + 1, hard=hard), blot_weight))
        total = sum(w for _, w in self.samplers)
        self.weights = [w / total for _, w in self.samplers]
        self.rng = np.random.default_rng(seed + 2)

    def windows(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        counts = self.rng.multinomial(n, self.weights)
        parts = [s.batch(int(c)) for (s, _), c in zip(self.samplers, counts) if c > 0]
        a, p, ai, pi = [], [], [], []
        for k, (wa, wp, ia, ip) in enumerate(parts):
            a.append(wa), p.append(wp)
            ai.append(ia + 1_000_000 * k)  # image ids unique across samplers
            pi.append(ip + 1_000_000 * k)
        return np.concatenate(a), np.concatenate(p), np.concatenate(ai), np.concatenate(pi)

    @classmethod
    def for_worker(cls, images: list[TrainImage], window: int, seed: int, blot_weight: float,
                   hard: bool, k: int) -> "WindowMix":
        """Producer k's own mix: one seed per worker, whether a thread or a process draws it."""
        return cls(images, window, seed + 7919 * (k + 1), blot_weight, hard)


class WindowThreads:
    """``threads`` producer threads, each with its own seeded ``WindowMix`` and queue, read in
    turn: the same batches in the same order on every run, while the GIL-free parts (OpenCV
    resizes, array copies) run in parallel to feed a GPU."""

    def __init__(self, images: list[TrainImage], window: int, seed: int, blot_weight: float,
                 hard: bool, n: int, threads: int, depth: int = 3) -> None:
        self.queues = [queue.Queue(maxsize=depth) for _ in range(threads)]
        self.stop = threading.Event()
        self.turn = 0
        self.workers = [threading.Thread(target=self._run, daemon=True, name=f"windows-{k}",
                                         args=(WindowMix.for_worker(images, window, seed, blot_weight, hard, k),
                                               self.queues[k], n))
                        for k in range(threads)]
        for t in self.workers:
            t.start()

    def _run(self, mix: WindowMix, q: queue.Queue, n: int) -> None:
        while not self.stop.is_set():
            try:
                item = mix.windows(n)
            except Exception as e:  # surfaced to the training loop, not lost in a thread
                item = e
            while not self.stop.is_set():
                try:
                    q.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        item = self.queues[self.turn].get()
        self.turn = (self.turn + 1) % len(self.queues)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        for q in self.queues:   # unblock producers waiting on a full queue
            while not q.empty():
                q.get_nowait()
        for t in self.workers:
            t.join()


class WindowStream(torch.utils.data.IterableDataset):
    """The producers of ``WindowThreads`` as DataLoader worker processes (batches travel through
    shared memory): the same seeds, so the same batches in the same order."""

    def __init__(self, images: list[TrainImage], window: int, seed: int, blot_weight: float,
                 hard: bool, n: int) -> None:
        self.args = (images, window, seed, blot_weight, hard)
        self.n = n

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k = info.id if info is not None else 0
        mix = WindowMix.for_worker(*self.args, k)
        while True:
            a, p, ai, pi = mix.windows(self.n)
            yield torch.from_numpy(a), torch.from_numpy(p), torch.from_numpy(ai), torch.from_numpy(pi)


class WindowProcesses:
    """``WindowStream`` read through a DataLoader with ``workers`` processes, in turn."""

    def __init__(self, images: list[TrainImage], window: int, seed: int, blot_weight: float,
                 hard: bool, n: int, workers: int, pin: bool = False) -> None:
        self.loader = torch.utils.data.DataLoader(
            WindowStream(images, window, seed, blot_weight, hard, n), batch_size=None,
            num_workers=workers, prefetch_factor=2, persistent_workers=False, pin_memory=pin)
        self.it = iter(self.loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
        if self.it is None:
            raise RuntimeError("window processes already closed")
        a, p, ai, pi = next(self.it)
        return a, p, ai.numpy(), pi.numpy()

    def close(self) -> None:
        self.it = None   # the iterator's end shuts the worker processes down


class TripletSource:
    """Draws triplet batches as tensors on the device: anchors, same, different.

    ``workers`` > 0 draws the windows of batches of ``batch`` in producer threads, or processes
    with ``processes`` (a GPU outruns one CPU core); 0 draws them in the caller's thread, for any
    batch size.  Threads and processes give the same batches."""

    def __init__(self, images: list[TrainImage], size: int, seed: int, device: torch.device,
                 blot_weight: float = 0.3, cfg: DeformConfig | None = None, hard: bool = True,
                 workers: int = 0, batch: int = 0, processes: bool = False) -> None:
        self.mix = WindowMix(images, 2 * size, seed, blot_weight, hard)
        self.producer: WindowThreads | WindowProcesses | None = None
        if workers > 0 and processes:   # pinned host memory: the copy to the GPU runs asynchronously
            self.producer = WindowProcesses(images, 2 * size, seed, blot_weight, hard, batch, workers,
                                            pin=device.type == "cuda")
        elif workers > 0:
            self.producer = WindowThreads(images, 2 * size, seed, blot_weight, hard, batch, workers)
        self.batch = batch
        self.deformer = Deformer(size, cfg=cfg, seed=seed, device=device)
        self.device = device

    def windows(self, n: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
        if self.producer is not None and n == self.batch:
            a, p, ai, pi = self.producer.next()
        else:
            a, p, ai, pi = self.mix.windows(n)
        a, p = (torch.as_tensor(x).to(self.device, non_blocking=True) for x in (a, p))
        return a, p, ai, pi

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()

    def triplets(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
        wa, wp, ai, pi = self.windows(n)
        d = self.deformer
        anchors = d.clutter(d.crop(wa))
        same = d.clutter(d.deform(wa))
        diff = d.clutter(torch.where(torch.rand(n, 1, 1, 1, generator=d.g, device=d.device) < 0.5,
                                     d.deform(wp), d.crop(wp)))
        return anchors, same, diff, ai, pi


def step_loss(model: torch.nn.Module, a: torch.Tensor, s: torch.Tensor, d: torch.Tensor,
              a_ids: np.ndarray, p_ids: np.ndarray, hard_weight: float) -> tuple[torch.Tensor, dict]:
    """Paper loss on assigned triplets, plus batch-hard negatives (FaceNet-style mining)."""
    n = a.shape[0]
    emb = model(standardise(torch.cat([a, s, d])))
    ea, es, ed = emb[:n], emb[n:2 * n], emb[2 * n:]
    f_as, f_ad = distance(ea, es), distance(ea, ed)
    loss = triplet_loss(f_as, f_ad)
    if hard_weight > 0:
        # batch-hard mining: for anchor i, the closest partner j taken from another image
        # (partner i is always allowed: it is a disjoint crop or another image by construction)
        all_f = torch.cdist(ea, ed, p=1)
        clash = torch.from_numpy(a_ids[:, None] == p_ids[None, :]).to(a.device)
        clash.fill_diagonal_(False)
        hardest = all_f.masked_fill(clash, float("inf")).min(dim=1).values
        diff_term = F.softplus(1 - f_ad).mean()
        hard_term = F.softplus(1 - hardest).mean()
        loss = F.softplus(f_as - 1).mean() + (1 - hard_weight) * diff_term + hard_weight * hard_term
    acc = ((f_as <= 1).float().mean() + (f_ad > 1).float().mean()).item() / 2
    return loss, {"f_same": f_as.mean().item(), "f_diff": f_ad.mean().item(), "acc": acc}


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: list[TrainImage], size: int, pairs: int = 512,
             seed: int = 1234, device: torch.device = torch.device("cpu"),
             cfg: DeformConfig | None = None, clutter: bool = True, batch: int = 128,
             hard: bool = True) -> dict[str, float]:
    """The paper's synthetic protocol: each anchor vs deform(itself) ("same") and vs
    deform(another image) ("different"; ``hard``: a third neighbouring crops of the same image and
    a third other fields of the same experiment, else random images as in the paper); correct
    when sigmoid(1 - f) > .5 exactly for "same".  Also ROC AUC and TPR at FPR 1e-3 / 1e-2."""
    was_training = model.training
    model.eval()
    src = TripletSource(images, size, seed, device, blot_weight=0.3, cfg=cfg, hard=hard)
    d = src.deformer
    keep = d.clutter if clutter else (lambda x: x)
    f_same, f_diff = [], []
    done = 0
    while done < pairs:
        n = min(batch, pairs - done)
        wa, wp, _, _ = src.windows(n)
        ea, es, eo = (model(standardise(x)) for x in (keep(d.crop(wa)), keep(d.deform(wa)), keep(d.deform(wp))))
        f_same.append(distance(ea, es).cpu())
        f_diff.append(distance(ea, eo).cpu())
        done += n
    model.train(was_training)
    return pair_metrics(torch.cat(f_same).numpy(), torch.cat(f_diff).numpy())


def pair_metrics(f_same: np.ndarray, f_diff: np.ndarray, threshold: float = 1.0) -> dict[str, float]:
    """Accuracy at the threshold (half same, half different), ROC AUC, TPR at FPR 1e-3 / 1e-2."""
    acc = ((f_same <= threshold).mean() + (f_diff > threshold).mean()) / 2
    # AUC = P(f_same < f_diff) with ties counted half
    both = np.concatenate([f_same, f_diff])
    ranks = both.argsort().argsort().astype(np.float64) + 1
    auc = 1 - (ranks[: len(f_same)].sum() - len(f_same) * (len(f_same) + 1) / 2) / (len(f_same) * len(f_diff))
    out = {"accuracy": float(acc), "auc": float(auc), "tpr_at_threshold": float((f_same <= threshold).mean()),
           "fpr_at_threshold": float((f_diff <= threshold).mean())}
    neg = np.sort(f_diff)
    for fpr in (1e-3, 1e-2):
        k = int(math.floor(fpr * len(neg)))
        cut = neg[k] if k < len(neg) else np.inf  # fewer than fpr*N negatives strictly below
        out[f"tpr_at_fpr_{fpr:g}"] = float((f_same < cut).mean())
    out["pairs"] = int(len(f_same) + len(f_diff))
    return out


def train(recipe: Recipe, out_dir: str | Path, device: str = "auto", resume: bool = True,
          steps: int | None = None, progress: bool = True, workers: int = 0, processes: bool = False,
          budget_s: float | None = None, probe: int = 40) -> dict:
    """Run (or resume) a recipe; writes checkpoints, a JSONL log and best.safetensors to out_dir.

    ``workers``: window producer threads, or processes with ``processes`` (0: none).
    ``budget_s``: after ``probe`` steps, the run's length is cut to what fits this many seconds at
    the speed measured after the first 10 (the learning-rate schedule follows the cut; the number
    of steps is recorded in recipe.json as ``steps``), and a run that still overruns by 15 % stops
    at its next step with a final evaluation."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    torch.manual_seed(recipe.seed)
    splits = load_splits(recipe)
    model = build(recipe.arch).to(dev)
    if recipe.init_from:
        init = out.parent / recipe.init_from / "best.safetensors"
        if not init.exists():
            raise FileNotFoundError(f"{recipe.name} starts from {init}: train recipe {recipe.init_from!r} first")
        model.load_state_dict(load_file(str(init)))
    size = model.input_size
    cfg = dataclasses.replace(DeformConfig(), **recipe.deform)
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    horizon = [steps or recipe.steps]   # a list: the schedule follows a budget cut
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if recipe.optimizer == "sgd" else
        0.5 * (1 + math.cos(math.pi * min(s, horizon[0]) / horizon[0])))
    source = TripletSource(splits["train"], size, recipe.seed, dev, recipe.blot_weight, cfg=cfg,
                           workers=workers, batch=recipe.batch, processes=processes)
    start, best = 0, {"auc": -1.0}
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=dev, weights_only=True)   # tensors and numbers only: no pickle code
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, best = state["step"], state["best"]
        if steps is None:   # a budget-cut run resumes with its cut schedule
            horizon[0] = int(state.get("horizon", horizon[0]))
        source.deformer.g.set_state(state["gen"])
        log.info("resumed %s at step %d", recipe.name, start)
    record = {**dataclasses.asdict(recipe), "steps": horizon[0], "device": str(dev), "workers": workers,
              "worker_processes": processes}
    (out / "recipe.json").write_text(json.dumps(record, indent=2))
    logf = (out / "log.jsonl").open("a")
    t0 = time.time()
    bar = tqdm(initial=start, total=horizon[0], disable=not progress, desc=recipe.name)
    model.train()
    step, t_warm = start, 0.0
    try:
        while step < horizon[0]:
            a, s, d, ai, pi = source.triplets(recipe.batch)
            loss, stats = step_loss(model, a, s, d, ai, pi, recipe.hard_negative_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            elapsed = time.time() - t0
            if step == start + min(10, probe - 1):
                t_warm = elapsed   # the first steps include cuDNN's kernel search
            if budget_s and step == start + probe:
                # steps that fit the budget at this speed, with 10 % kept for the evaluations
                fit = step + int((budget_s - elapsed) * (probe - min(10, probe - 1)) / (elapsed - t_warm) * 0.9)
                horizon[0] = max(step, min(horizon[0], fit))
                bar.total = horizon[0]
                record["steps"] = horizon[0]
                (out / "recipe.json").write_text(json.dumps(record, indent=2))
            over = bool(budget_s) and elapsed > 1.15 * budget_s
            rec = {"step": step, "loss": loss.item(), **stats, "lr": sched.get_last_lr()[0],
                   "seconds": round(elapsed, 1)}
            if step % recipe.eval_every == 0 or step == horizon[0] or over:
                val = evaluate(model, splits["val"], size, pairs=256, device=dev, cfg=cfg)
                rec.update({f"val_{k}": v for k, v in val.items()})
                if val["auc"] >= best.get("auc", -1.0):  # threshold-free, less noisy than accuracy
                    best = {**val, "step": step}
                    save_file(model.state_dict(), str(out / "best.safetensors"))
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "step": step, "best": best, "gen": source.deformer.g.get_state(),
                            "horizon": horizon[0]}, ckpt)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{stats['acc']:.2f}",
                            val_auc=f"{best.get('auc', 0):.3f}")
            if over:
                log.warning("%s: over its time budget at step %d of %d; stopped", recipe.name, step, horizon[0])
                record["stopped_at"] = step
                (out / "recipe.json").write_text(json.dumps(record, indent=2))
                break
    finally:
        source.close()
        bar.close()
        logf.close()
    return {"best": best, "steps": step, "seconds": time.time() - t0}


def _lineage(runs: Path, name: str | None) -> list[dict]:
    """The chain of runs a fine-tuned run started from, with their recipes and steps."""
    out = []
    while name:
        d = runs / name
        rec = json.loads((d / "recipe.json").read_text())
        rows = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines() if x.strip()]
        out.append({"recipe": rec["name"], "steps_run": rows[-1]["step"] if rows else 0,
                    "seconds_last_session": rows[-1]["seconds"] if rows else 0,
                    "optimizer": rec["optimizer"], "lr": rec["lr"], "batch": rec["batch"],
                    "deform": rec.get("deform", {})})
        name = rec.get("init_from")
    return out


def export_weights(run_dir: str | Path, name: str, metrics: dict | None = None,
                   notes: str = "") -> Path:
    """Copy a run's best weights into the package with a weights card (sha256 included)."""
    from .api import WEIGHTS_DIR, WeightsCard

    run = Path(run_dir)
    recipe = json.loads((run / "recipe.json").read_text())
    log_rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    evals = [r for r in log_rows if "val_accuracy" in r]
    best = max(evals, key=lambda r: r["val_auc"]) if evals else {}
    recipe["folders"] = [[str(f).replace(str(SHARED_DATA), "../shared/data"), r] for f, r in recipe["folders"]]
    dst = WEIGHTS_DIR / f"{name}.safetensors"
    dst.parent.mkdir(parents=True, exist_ok=True)
    # float16 storage halves the file; the loader computes in float32
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(run / "best.safetensors")).items()}
    save_file(state, str(dst))
    net = build(recipe["arch"])
    card = WeightsCard(
        name=name, architecture=recipe["arch"], input_size=net.input_size,
        normalisation="greyscale; whole panel area-resized to SxS ignoring aspect; per-image zero mean / unit variance",
        embedding_dim=net.fc2.out_features, threshold=1.0, recipe=recipe,
        data="../shared/data: dsb2018 micrographs (CC0) and athenaz2 blot scans, train split of "
             "imgdup/model/splits/default.json (split by image group)",
        steps=int(best.get("step", 0)), seed=int(recipe.get("seed", 0)),
        metrics={"validation": {k[4:]: v for k, v in best.items() if k.startswith("val_")}, **(metrics or {})},
        sha256=sha256_file(dst), file=dst.name, notes=notes,
        extra={"initialised_from": _lineage(run.parent, recipe.get("init_from"))})
    dst.with_suffix(".json").write_text(card.to_json())
    return dst
