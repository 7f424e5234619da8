"""Does the CNN retrieval find the re-used panel in a large store, and within how many candidates?

    python benchmarks/retrieval.py [--store 100000] [--real-distractors 20000] [--per-family 60] [--smoke]

``benchmarks/quality.py`` scores given pairs; a query must first *retrieve* the partner among
everything stored.  Here the store holds the held-out test images (and, for the overlap
families, the other half of each pair), ``--real-distractors`` random crops (96-400 px) of
training-split images, embedded with their sub-regions, and synthetic panels drawn like real
embeddings up to ``--store``.  Each manipulated copy (the quality benchmark's families, same
seed) is then searched as ``imgdup query`` searches: whole-panel search within f <= 1
(``pairs_against``, or ``nearest_within`` with a cap) plus the sub-region search (``tile_pairs``,
its cap the same).  A query is found when a stored panel cut from the same test image is among
its candidates.  Per family: the share found with no cap (the sub-region search keeping its
default 20) and with caps of 5, 10, 20, 50 nearest panels per query panel, and the candidates a
query panel brings.  Writes docs/retrieval.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import FAMILIES, PAIR_FAMILIES, load_images  # noqa: E402
from speed import like_real, machine, real_crops  # noqa: E402

CAPS = (5, 10, 20, 50)


def positives(imgs: list[np.ndarray], per: int, rng) -> list[tuple[str, int, np.ndarray | None, np.ndarray]]:
    """(family, source image, extra stored image or None, query image) for every positive."""
    out = []
    for fam, fn in FAMILIES.items():
        for i in rng.choice(len(imgs), size=min(per, len(imgs)), replace=False):
            out.append((fam, int(i), None, fn(imgs[i], rng)))
    for fam, fn in PAIR_FAMILIES.items():
        for i in rng.choice(len(imgs), size=min(per, len(imgs)), replace=False):
            a, b = fn(imgs[i], rng)
            out.append((fam, int(i), a, b))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=int, default=100_000)
    ap.add_argument("--real-distractors", type=int, default=20_000)
    ap.add_argument("--per-family", type=int, default=60)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--caps", type=int, nargs="*", default=[0, *CAPS], help="0: no cap")
    ap.add_argument("--view-radii", type=float, nargs="*", default=[1.0],
                    help="radius (f) of the sub-region searches; the whole-panel search keeps f <= 1")
    ap.add_argument("--out", default=str(ROOT / "docs" / "retrieval.json"))
    args = ap.parse_args()
    from imgdup import load_model
    from imgdup.model.api import N_TILES, QUERY_VIEWS
    from imgdup.index.search import nearest_within, pairs_against, tile_index_of, tile_pairs, whole_index_of
    from imgdup.index.store import TILE_ID_BASE

    store_n, n_real, per = (3000, 300, 4) if args.smoke else (args.store, args.real_distractors, args.per_family)
    model = load_model()
    rng = np.random.default_rng(0)
    imgs, _ = load_images(args.smoke)
    pos = positives(imgs, per, rng)
    t0 = time.perf_counter()
    # stored panels: every test image, the stored half of each overlap pair, real crops, synthetic ones
    stored = list(imgs) + [a for _, _, a, _ in pos if a is not None] + real_crops(n_real, seed=1)
    source = np.array(list(range(len(imgs))) + [i for _, i, a, _ in pos if a is not None] + [-1] * n_real)
    vec, tiles = model.embed(stored), model.embed_tiles(stored)
    embed_s = time.perf_counter() - t0
    pad = max(0, store_n - len(stored))
    if pad:
        vec = np.concatenate([vec, like_real(vec[len(imgs):], pad, seed=1)])
        syn_t = np.stack([like_real(tiles[len(imgs):, k], pad, seed=2 + k) for k in range(tiles.shape[1])], axis=1)
        tiles = np.concatenate([tiles, syn_t])       # each view drawn like its own real embeddings
        source = np.concatenate([source, np.full(pad, -1)])
    ids = np.arange(len(vec), dtype=np.int64)
    whole, tile_idx = whole_index_of(vec, ids), tile_index_of(tiles, ids, TILE_ID_BASE)
    queries = [q for *_, q in pos]
    qv, qt = model.embed(queries), model.embed_tiles(queries)
    fam = np.array([f for f, *_ in pos])
    src = np.array([i for _, i, _, _ in pos])

    def found(qi: np.ndarray, mid: np.ndarray) -> tuple[np.ndarray, float]:
        hit = np.zeros(len(pos), bool)
        ok = source[mid] == src[qi]
        hit[qi[ok]] = True
        return hit, len(qi) / len(pos)

    runs: dict[str, dict] = {}
    for cap, radius in [(c or None, r) for r in args.view_radii for c in args.caps]:
        t = time.perf_counter()
        wq, wid, _ = pairs_against(whole, qv, 1.0) if cap is None else nearest_within(whole, qv, 1.0, cap)
        tq, tid, _ = tile_pairs(qv, qt[:, :QUERY_VIEWS], whole, tile_idx, radius, TILE_ID_BASE, cap=cap or 20,
                                stored_views=N_TILES)
        secs = time.perf_counter() - t
        hit_w, cand_w = found(wq, wid)
        hit_t, _ = found(tq, tid)
        pairs = {(int(a), int(b)) for a, b in zip(np.concatenate([wq, tq]), np.concatenate([wid, tid]))}
        name = ("no cap" if cap is None else f"cap {cap}") + ("" if radius == 1.0 else f", views f <= {radius:g}")
        runs[name] = {"found": float((hit_w | hit_t).mean()), "found_whole_only": float(hit_w.mean()),
                      "candidates_per_query_panel": len(pairs) / len(pos), "whole_candidates_per_query_panel": cand_w,
                      "search_seconds": secs,
                      "per_family": {f: float((hit_w | hit_t)[fam == f].mean()) for f in dict.fromkeys(fam)}}
        print(name, json.dumps({k: v for k, v in runs[name].items() if k != "per_family"}), flush=True)
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/retrieval.py " + ("--smoke" if args.smoke else
                                                           f"--store {store_n} --real-distractors {n_real} --per-family {per}")
           + ("" if args.caps == [0, *CAPS] else " --caps " + " ".join(map(str, args.caps)))
           + ("" if args.view_radii == [1.0] else " --view-radii " + " ".join(map(str, args.view_radii))),
           "store": {"panels": int(len(vec)), "test_images": len(imgs), "real_distractors": n_real,
                     "synthetic": int(pad), "embed_seconds": embed_s},
           "queries": len(pos), "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
