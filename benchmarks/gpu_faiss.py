"""FAISS on a GPU against FAISS on the CPU, for the searches query and screen run; prepared here,
run on a lent GPU machine in one call (it has no network and takes at most 64 MiB along).

    python benchmarks/gpu_faiss.py pack                 # here: .gpufaiss/ (ignored by git)
    python benchmarks/gpu_faiss.py run --minutes 6      # there: writes $OUT/gpu_faiss.json

PyPI's faiss-gpu 1.15.1 wheel (135 MB; CUDA 12) does not fit in what a call may carry and the
lent machine's CUDA libraries are version 13, so ``pack`` makes a copy that does:
- libfaiss.so keeps only its sm_90 (Hopper) GPU code: the other architectures' cubins and the PTX
  in its fatbin section are overwritten with zeros, which xz then packs to nothing (the CUDA
  runtime loads the cubin of the device's architecture only);
- libcudart.so.12 from nvidia-cuda-runtime-cu12 (the 580 driver there runs CUDA 12 programs);
- libcublas.so.12: benchmarks/cublas12_shim.c, forwarding faiss's eight cuBLAS calls to the
  machine's cuBLAS 13; empty libcublasLt.so.12 / libcurand.so.10 (faiss calls neither).
plus the mean / covariance source of the synthetic vectors (real panel and view embeddings from
the shipped model, as benchmarks/index_scale.py draws them).

``run`` measures, at 10^5 and 10^6 stored panels (and 10^7 for the whole-panel index): the store's
flat L1 index searched on the GPU (``imgdup.index.search.GpuIndex``: exact k-NN, k doubling, as
``imgdup query|screen --device cuda`` search a flat store) against the same flat index and the
store's IVF searched on the machine's CPU cores - a nightly screen of 10^4 new panels (whole-panel
range search, and the capped sub-region search of 20 stored panels a new panel) and a 50-panel
query - and checks that the GPU finds exactly the CPU's pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKED = ROOT / ".gpufaiss"
FAISS_GPU = "faiss-gpu==1.15.1"
CUDART = "nvidia-cuda-runtime-cu12==12.9.79"
KEEP_ARCH = 90                       # sm_90: H100 / H200
FATBIN_MAGIC = 0xBA55ED50
CUBLAS_NAMES = ["cublasCreate_v2", "cublasDestroy_v2", "cublasSetStream_v2", "cublasSetMathMode",
                "cublasGetMathMode", "cublasSgemmEx", "cublasGemmEx", "cublasGemmStridedBatchedEx"]


# ----------------------------------------------------------------------------------- pack (here)

def fatbin_entries(so: bytes) -> tuple[int, list[tuple[int, int, int, int]]]:
    """(offset of .nv_fatbin in the file, [(payload offset in the file, payload size, kind, arch)]):
    kind 1 = PTX, 2 = cubin; arch e.g. 90 for sm_90.  Reads the ELF section table and the fatbin
    containers' headers (magic, version, header size, size; then per entry: kind, version,
    header size, payload size, ..., arch at byte 28)."""
    import struct

    shoff, = struct.unpack_from("<Q", so, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", so, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", so, shoff + i * shentsize) for i in range(shnum)]
    strtab = sections[shstrndx][4]
    name = {i: so[strtab + s[0]:so.index(b"\0", strtab + s[0])].decode() for i, s in enumerate(sections)}
    sec = next(s for i, s in enumerate(sections) if name[i] == ".nv_fatbin")
    start, size = sec[4], sec[5]
    out, p = [], start
    while p + 16 <= start + size:
        magic, _, hsz, fsz = struct.unpack_from("<IHHQ", so, p)
        if magic != FATBIN_MAGIC:            # alignment padding between containers
            p += 8
            continue
        q, end = p + hsz, p + hsz + fsz
        while q < end:
            kind, _, ehsz, psz = struct.unpack_from("<HHIQ", so, q)
            arch, = struct.unpack_from("<I", so, q + 28)
            out.append((q + ehsz, psz, kind, arch))
            q += ehsz + psz
        p = end
    return start, out


def slim_libfaiss(src: Path, dst: Path, keep_arch: int = KEEP_ARCH) -> dict:
    """Copy libfaiss.so with every fatbin payload but the ``keep_arch`` cubins zeroed."""
    data = bytearray(src.read_bytes())
    _, entries = fatbin_entries(bytes(data))
    kept = zeroed = 0
    for off, size, kind, arch in entries:
        if kind == 2 and arch == keep_arch:
            kept += size
        else:
            data[off:off + size] = bytes(size)
            zeroed += size
    if not kept:
        raise SystemExit(f"{src} has no sm_{keep_arch} cubin")
    dst.write_bytes(data)
    return {"entries": len(entries), "kept_mib": kept / 2**20, "zeroed_mib": zeroed / 2**20}


def _pip_download(spec: str, dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(dest), spec],
                   check=True)
    stem = spec.split("==")[0].replace("-", "_")
    return next(dest.glob(f"{stem}-*.whl"))


def pack(dst: Path = PACKED) -> None:
    import zipfile

    work = dst / "build"
    site = work / "site"
    shutil.rmtree(work, ignore_errors=True)
    (site / "lib").mkdir(parents=True)
    faiss_whl, cudart_whl = _pip_download(FAISS_GPU, work), _pip_download(CUDART, work)
    with zipfile.ZipFile(faiss_whl) as z:
        z.extractall(site, [n for n in z.namelist() if n.startswith(("faiss/", "faiss_gpu.libs/"))])
    info = slim_libfaiss(site / "faiss" / "libfaiss.so", site / "faiss" / "libfaiss.so")
    with zipfile.ZipFile(cudart_whl) as z:
        (site / "lib" / "libcudart.so.12").write_bytes(z.read("nvidia/cuda_runtime/lib/libcudart.so.12"))
    vmap = work / "cublas12.map"
    vmap.write_text("libcublas.so.12 {\n  global: " + "; ".join(CUBLAS_NAMES) + ";\n  local: *;\n};\n")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(site / "lib" / "libcublas.so.12"),
                    str(ROOT / "benchmarks" / "cublas12_shim.c"), "-ldl", "-Wl,-soname,libcublas.so.12",
                    f"-Wl,--version-script={vmap}"], check=True)
    empty = work / "empty.c"
    empty.write_text("void imgdup_gpu_faiss_placeholder(void) {}\n")
    for soname in ("libcublasLt.so.12", "libcurand.so.10"):
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(site / "lib" / soname), str(empty),
                        f"-Wl,-soname,{soname}"], check=True)
    with tarfile.open(dst / "site.tar.xz", "w:xz") as tar:
        tar.add(site, arcname="site")
    _pack_vectors(dst / "base.npz")
    shutil.rmtree(work)
    size = sum(p.stat().st_size for p in dst.iterdir() if p.is_file())
    print(f"libfaiss.so: {info}; packed {size / 2**20:.1f} MiB in {dst}")


def _pack_vectors(path: Path) -> None:
    if path.exists():
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from index_scale import real_embeddings

    _, base, tiles = real_embeddings(smoke=False)
    np.savez(path, base=base.astype(np.float32), tile_base=tiles.astype(np.float32))


# ------------------------------------------------------------------------------------ run (there)

BOOT = '''"""Loads the packed faiss-gpu (benchmarks/gpu_faiss.py): its CUDA 12 libraries from {lib}."""
import ctypes, glob, os, sys, types
try:
    import torch  # loads the machine's CUDA 13 cuBLAS, which the libcublas.so.12 shim forwards to
except ImportError:
    pass
try:
    ctypes.CDLL("libcublas.so.13", mode=ctypes.RTLD_GLOBAL)
except OSError:
    for name in ("libnvJitLink.so.13", "libcublasLt.so.13", "libcublas.so.13"):
        hits = sorted(glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "nvidia", "**", name),
                                recursive=True))
        if hits:
            ctypes.CDLL(hits[0], mode=ctypes.RTLD_GLOBAL)
for _name in ("cuda_runtime", "cublas", "curand"):   # where faiss/__init__ looks for its CUDA 12 libraries
    _m = types.ModuleType("nvidia." + _name)
    _m.__path__ = [{site!r}]
    sys.modules["nvidia." + _name] = _m
'''


def unpack(dst: Path) -> dict:
    """Unpack the site, write its sitecustomize; env for processes that import faiss-gpu."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    with tarfile.open(PACKED / "site.tar.xz") as tar:
        tar.extractall(dst)
    site = dst / "site"
    boot = dst / "boot"
    boot.mkdir()
    (boot / "sitecustomize.py").write_text(BOOT.format(lib=site / "lib", site=str(site)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(boot), str(site), str(ROOT), env.get("PYTHONPATH", "")])
    return env


class Report:
    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1, default=float))
        print(f"[{time.strftime('%H:%M:%S')}] {key}: {json.dumps(value, default=float)[:600]}", flush=True)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def bench_whole(base: np.ndarray, size: int, screen_new: int, n_query: int, cpu_exact_max: int,
                range_search: bool = True) -> tuple[dict, object, object]:
    """Whole-panel index: GPU vs CPU flat (exact), the range search of screen and query and the
    capped k-NN (``--max-candidates 20``)."""
    import faiss

    from imgdup.index.search import GpuIndex, nearest_within, pairs_against, whole_index_of
    from index_scale import pair_set
    from speed import like_real

    xb = like_real(base, size, seed=1)
    cpu = whole_index_of(xb, np.arange(size, dtype=np.int64))
    del xb
    q = like_real(base, n_query, seed=2)
    new = like_real(base, screen_new, seed=3)
    gpu, copy_s = timed(GpuIndex, cpu)
    out: dict = {"store_panels": size, "gpu_copy_seconds": copy_s, "cpu_threads": faiss.omp_get_max_threads()}
    m = min(cpu_exact_max, screen_new)
    searches = [("capped_knn21", lambda idx, x: nearest_within(idx, x, 1.0, 21))]
    if range_search:
        searches.insert(0, ("range", lambda idx, x: pairs_against(idx, x, 1.0)))
    for name, fn in searches:
        fn(gpu, q[:5])                                      # warm-up (kernels loaded)
        (gq, gid, _), gq_s = timed(fn, gpu, q)
        (cq, cid, _), cq_s = timed(fn, cpu, q)
        (gs, gsid, _), gs_s = timed(fn, gpu, new)
        (cs, csid, _), cs_s = timed(fn, cpu, new[:m])
        g_on = {p for p in pair_set(gs, gsid) if p[0] < m}
        c_set = pair_set(cs, csid)
        out[name] = {
            "query_panels": n_query, "gpu_query_seconds": gq_s, "cpu_query_seconds": cq_s,
            "query_same_pairs": pair_set(gq, gid) == pair_set(cq, cid), "query_pairs": int(len(cq)),
            "screen_panels": screen_new, "gpu_screen_seconds": gs_s, "screen_pairs": int(len(gs)),
            "cpu_screen_panels": m, "cpu_screen_seconds": cs_s,
            "cpu_screen_seconds_per_panel": cs_s / m, "gpu_screen_seconds_per_panel": gs_s / screen_new,
            "screen_same_pairs_on_cpu_panels": g_on == c_set, "cpu_pairs_on_those": len(c_set),
            "gpu_missing": len(c_set - g_on), "gpu_extra": len(g_on - c_set)}
    return out, cpu, gpu


def bench_tiles(tile_base: np.ndarray, base: np.ndarray, size: int, whole_cpu, whole_gpu, screen_new: int,
                n_query: int, cpu_exact_max: int, minutes_left=None) -> dict:
    """Sub-region index (11 views a stored panel, 6 a query panel; 20 stored panels kept a query
    panel): tile_pairs as query / screen run it, on the GPU and on the CPU (flat; and the store's
    IVF at the nprobe it measures for capped searches, if time is left)."""
    from imgdup.index.search import (GpuIndex, array_chunks, choose_knn_nprobe, choose_nprobe, new_ivf_index, probes,
                                     tile_ids, tile_index_of, tile_pairs)
    from imgdup.index.store import PAIR_RADIUS, PAIR_RECALL, TILE_ID_BASE, TILE_RECALL_QUERIES
    from imgdup.model.api import N_TILES, QUERY_VIEWS
    from index_scale import pair_set
    from speed import like_real

    cap = 20
    tv = like_real(tile_base, size * N_TILES, seed=4)
    cpu = tile_index_of(tv.reshape(size, N_TILES, -1), np.arange(size), TILE_ID_BASE)
    gpu, copy_s = timed(GpuIndex, cpu)
    q = like_real(base, n_query, seed=2)
    q_t = like_real(tile_base, n_query * QUERY_VIEWS, seed=5).reshape(n_query, QUERY_VIEWS, -1)
    new = like_real(base, screen_new, seed=6)
    new_t = like_real(tile_base, screen_new * QUERY_VIEWS, seed=7).reshape(screen_new, QUERY_VIEWS, -1)
    m = min(cpu_exact_max, screen_new)

    def run(w, t, a, a_t):
        return tile_pairs(a, a_t, w, t, 1.0, TILE_ID_BASE, cap=cap, stored_views=N_TILES)

    run(whole_gpu, gpu, q[:2], q_t[:2])
    out: dict = {"tile_vectors": int(size * N_TILES), "gpu_copy_seconds": copy_s, "cap": cap}
    (gq, gid, _), out["gpu_query_seconds"] = timed(run, whole_gpu, gpu, q, q_t)
    (cq, cid, _), out["cpu_flat_query_seconds"] = timed(run, whole_cpu, cpu, q, q_t)
    out["query_same_pairs"] = pair_set(gq, gid) == pair_set(cq, cid)
    (gs, gsid, _), out["gpu_screen_seconds"] = timed(run, whole_gpu, gpu, new, new_t)
    (cs, csid, _), out["cpu_flat_screen_seconds"] = timed(run, whole_cpu, cpu, new[:m], new_t[:m])
    g_on = {p for p in pair_set(gs, gsid) if p[0] < m}
    c_set = pair_set(cs, csid)
    out.update(screen_panels=screen_new, cpu_flat_screen_panels=m, screen_pairs=int(len(gs)),
               screen_same_pairs_on_cpu_panels=g_on == c_set, cpu_pairs_on_those=len(c_set),
               gpu_missing=len(c_set - g_on), gpu_extra=len(g_on - c_set))
    del gpu
    if minutes_left is not None and minutes_left() > 3:
        # the store's IVFs as a CPU-only store of this size holds them, searched as query / screen do
        tid = tile_ids(np.arange(size), N_TILES, TILE_ID_BASE)
        xb = like_real(base, size, seed=1)
        t0 = time.perf_counter()
        w_ivf = new_ivf_index(xb, np.arange(size, dtype=np.int64))
        w_knn = choose_knn_nprobe(w_ivf, array_chunks(xb, np.arange(size, dtype=np.int64)), size, PAIR_RADIUS,
                                  cap, PAIR_RECALL, queries=300)
        t_ivf = new_ivf_index(tv, tid)
        t_range = choose_nprobe(t_ivf, array_chunks(tv, tid), len(tid), PAIR_RADIUS, PAIR_RECALL, queries=300)
        t_knn = choose_knn_nprobe(t_ivf, array_chunks(tv, tid), len(tid), PAIR_RADIUS, cap * N_TILES, PAIR_RECALL,
                                  queries=TILE_RECALL_QUERIES, max_nprobe=t_range["nprobe"], group=TILE_ID_BASE,
                                  cap=cap)
        build_s = time.perf_counter() - t0
        with probes(w_ivf, w_knn["nprobe"]), probes(t_ivf, t_knn["nprobe"]):
            run(w_ivf, t_ivf, q[:2], q_t[:2])
            (iq, iid, _), iq_s = timed(run, w_ivf, t_ivf, q, q_t)
            (is_, isid, _), is_s = timed(run, w_ivf, t_ivf, new, new_t)
        g_all = pair_set(gs, gsid)
        out["cpu_ivf"] = {"build_and_nprobe_seconds": build_s, "whole_knn_nprobe": w_knn["nprobe"],
                          "tiles_knn_nprobe": t_knn["nprobe"], "query_seconds": iq_s, "screen_seconds": is_s,
                          "query_recall_of_exact": len(pair_set(iq, iid) & pair_set(gq, gid)) / max(1, len(gq)),
                          "screen_recall_of_exact": len(pair_set(is_, isid) & g_all) / max(1, len(g_all))}
    return out


def bench(args) -> None:
    import faiss

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from imgdup.index.search import gpu_available
    from speed import machine

    t_start = time.time()
    rep = Report(Path(args.out))
    rep.put("machine", {"date": time.strftime("%Y-%m-%d %H:%M:%S"), **machine(), "faiss_file": faiss.__file__,
                        "faiss_gpus": faiss.get_num_gpus()})
    if not gpu_available():
        import ctypes

        count = ctypes.c_int(-1)
        err = ctypes.CDLL("libcudart.so.12").cudaGetDeviceCount(ctypes.byref(count))
        rep.put("error", f"faiss sees no GPU (cudart 12: cudaGetDeviceCount -> error {err}, count {count.value})")
        raise SystemExit(1)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider",
                            "tests/test_search.py", "-k", "not real_embeddings"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    rep.put("pytest_test_search", {"returncode": tests.returncode, "tail": tests.stdout[-600:]})
    vec = np.load(PACKED / "base.npz")
    base, tile_base = vec["base"], vec["tile_base"]

    def left() -> float:
        return args.minutes - (time.time() - t_start) / 60

    for size in args.sizes:
        if left() < 0.5:
            break
        range_search = size <= 1_000_000
        exact = args.screen_new if size < 1_000_000 else args.cpu_exact_max if range_search else args.cpu_exact_max // 5
        whole, cpu, gpu = bench_whole(base, size, args.screen_new, 50, exact, range_search=range_search)
        rep.put(f"whole_{size}", whole)
        if size <= args.tiles_max and left() > 1:
            rep.put(f"tiles_{size}", bench_tiles(tile_base, base, size, cpu, gpu, args.screen_new, 50,
                                                 args.tiles_cpu_max, left if size == args.tiles_max else None))
        del cpu, gpu
    rep.put("total_seconds", time.time() - t_start)
    rep.put("maxrss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pack")
    r = sub.add_parser("run")
    b = sub.add_parser("bench")          # run's second half, in the process that loads faiss-gpu
    for p in (r, b):
        p.add_argument("--minutes", type=float, default=6.0)
        p.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000, 10_000_000])
        p.add_argument("--tiles-max", type=int, default=1_000_000)
        p.add_argument("--screen-new", type=int, default=10_000)
        p.add_argument("--cpu-exact-max", type=int, default=2_000, help="new panels the CPU flat screen searches")
        p.add_argument("--tiles-cpu-max", type=int, default=100, help="... and its flat sub-region screen")
        p.add_argument("--out", default=os.path.join(os.environ.get("OUT", str(ROOT / "gpu-out")), "gpu_faiss.json"))
    args = ap.parse_args()
    if args.cmd == "pack":
        pack()
    elif args.cmd == "run":
        env = unpack(Path("/tmp/imgdup-gpufaiss"))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "bench"] + sys.argv[2:]
        raise SystemExit(subprocess.run(cmd, env=env).returncode)
    else:
        bench(args)


if __name__ == "__main__":
    main()
