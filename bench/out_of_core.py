"""Heads past memory: the logreg selection read in chunks from a float16 cache on disk, against the same
selection on a slice of it held in memory (issue 21; ``docs/scaling.md`` quotes the figures).

    python bench/out_of_core.py [--rows 1000000] [--slice 200000] [--threads 1] [--budget-mb 256]

Data: a synthetic cache in the scratch folder (``$TRANSFERLAB_BENCH_DIR``, never the repository):
``rows`` x 1,280 float16 features of 100 classes, each row its class's mean (the means spread 0.7
per dimension of a random 64-dimensional subspace: the other dimensions carry noise only, so
regularisation matters) plus noise with a shared 64-dimensional factor, then shifted and scaled
per dimension like pooled activations, a tenth of the labels redrawn at random (label noise, which
weak regularisation fits), and 20,000 test rows drawn alike. The selection is
:func:`~transferlab.classifiers.out_of_core.select_logreg` over the full 45-value C grid: a 20%
stratified holdout, the head's standardiser, ``score_grid``, the refit on all rows.

Each selection runs in a child process of its own (``threads`` threads everywhere), which reports
its wall and CPU time, its peak RSS (VmHWM, from ``/proc``), the row-passes its solves made (rows x
problems per evaluation, screen included) and the test accuracy: on disk with ``budget-mb`` as the
solver's memory budget (every solve on more rows than that streams them from the file at every
pass); in memory on the first ``slice`` rows, read into an array first (not timed) with the
default budget. The record (``bench/out_of_core.md``) gives both, time per row and per row-pass,
their ratios, and the machine with its load.

Integrity: the cache is written under a temporary name and renamed when whole, so a file of the
final name is whole; its attributes record the generator's parameters, and a file whose
attributes differ is written again. ``out_of_core.md`` is written whole, at the end, or not at all.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import WORK, load_average, machine, peak_rss_mb  # noqa: E402

DIMS, CLASSES, SIGNAL, FACTOR, SPREAD, FLIP, TEST_ROWS, BLOCK = 1280, 100, 64, 64, 0.7, 0.1, 20_000, 16384
TARGET_PER_ROW, TARGET_RSS_MB = 1.3, 2048  # time per row on disk / in memory; peak RSS on disk (issue 21)


def cache_path(rows: int) -> Path:
    """The synthetic cache of ``rows`` training rows, written once into the scratch folder."""
    import h5py

    out = WORK / f"synthetic_{rows}x{DIMS}_{CLASSES}.h5"
    params = {"rows": rows, "dims": DIMS, "classes": CLASSES, "signal": SIGNAL, "factor": FACTOR, "spread": SPREAD,
              "flip": FLIP, "seed": 0}
    if out.is_file():
        with h5py.File(out, "r") as f:
            if {k: f.attrs.get(k) for k in params} == params:
                return out
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial.h5")
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(DIMS, SIGNAL)))[0].T  # (SIGNAL, DIMS), orthonormal rows
    means = (rng.normal(0, SPREAD, (CLASSES, SIGNAL)) @ basis).astype(np.float32)
    factor = rng.normal(0, 1 / np.sqrt(FACTOR), (FACTOR, DIMS)).astype(np.float32)
    offset = rng.uniform(0, 2, DIMS).astype(np.float32)
    scale = rng.uniform(0.5, 2, DIMS).astype(np.float32)

    def draw(n, seed):
        g = np.random.default_rng(seed)
        y = g.integers(0, CLASSES, n)
        x = means[y] + g.standard_normal((n, FACTOR), dtype=np.float32) @ factor
        x += g.standard_normal((n, DIMS), dtype=np.float32)
        flip = g.random(n) < FLIP  # label noise: what makes weak regularisation overfit
        y[flip] = g.integers(0, CLASSES, int(flip.sum()))
        return (offset + scale * x).astype(np.float16), y

    with h5py.File(tmp, "w") as f:
        X = f.create_dataset("X", (rows, DIMS), dtype="float16", chunks=(1024, DIMS))
        y = f.create_dataset("y", (rows,), dtype="int64")
        for lo in range(0, rows, BLOCK):
            X[lo:lo + BLOCK], y[lo:lo + BLOCK] = draw(min(BLOCK, rows - lo), 1 + lo // BLOCK)
        f["X_test"], f["y_test"] = draw(TEST_ROWS, 0)
        f.attrs.update(params)
    tmp.replace(out)
    return out


def run_child(mode: str, path: str, rows: int, budget_mb: int) -> dict:
    """One selection in this process: ``memory`` on the first ``rows`` rows read into an array, or
    ``disk`` on the file itself; returns its figures."""
    import h5py
    import torch

    from transferlab.classifiers import default_grid
    from transferlab.classifiers._batched_lbfgs import Problem
    from transferlab.classifiers.out_of_core import select_logreg

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    passes = [0]
    evaluate = Problem.evaluate

    def counted(self, x, C, ids=None):  # row-passes: rows x problems of every evaluation
        passes[0] += self.source.n * x.shape[0]
        return evaluate(self, x, C, ids)

    Problem.evaluate = counted
    Cs = default_grid("logreg", full=True)["C"]
    with h5py.File(path, "r") as f:
        y = f["y"][:rows]
        X = f["X"] if mode == "disk" else np.asarray(f["X"][:rows])
        kwargs = {"memory_budget": budget_mb << 20} if mode == "disk" else {}
        wall, cpu = time.perf_counter(), time.process_time()
        chosen = select_logreg(X, y, Cs, **kwargs)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        hits = sum(int(np.sum(chosen.estimator.predict(np.asarray(f["X_test"][i:i + 4096], dtype=np.float32))
                              == f["y_test"][i:i + 4096])) for i in range(0, TEST_ROWS, 4096))  # a little at a time
        test = hits / TEST_ROWS
    best = int(np.nanargmax(chosen.scores))
    return {"mode": mode, "rows": int(rows), "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "peak_rss_mb": round(peak_rss_mb()), "row_passes": int(passes[0]), "C": chosen.C,
            "val_accuracy": float(chosen.scores[best]), "test_accuracy": round(test, 4),
            "fitted_C": int(np.isfinite(chosen.scores).sum()), "load_average": load_average()}


def spawn(mode: str, path: Path, rows: int, budget_mb: int, threads: int) -> dict:
    import subprocess

    env = {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(rows), str(budget_mb)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} child failed: {(proc.stderr or proc.stdout).strip().splitlines()[-3:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def per_row_ratio(disk: dict, memory: dict) -> float:
    """Time per row of the selection on disk over that of the slice in memory (target 1.3)."""
    return (disk["seconds"] / disk["rows"]) / (memory["seconds"] / memory["rows"])


def record(rows, slice_rows, budget_mb, threads, disk, memory, started, load_start) -> str:
    info = machine()
    size = (rows * DIMS * 2) / 1e9
    per_row = per_row_ratio(disk, memory)
    per_pass = (disk["seconds"] / disk["row_passes"]) / (memory["seconds"] / memory["row_passes"])
    lines = [
        "# Heads past memory: the logreg selection from a cache on disk",
        "",
        f"`python bench/out_of_core.py --rows {rows} --slice {slice_rows} --threads {threads} --budget-mb {budget_mb}`"
        f", {info['date']}; see the script's docstring for the data and the protocol.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores shared with other jobs; load average {load_start} at the "
        f"start, {load_average()} at the end ({round((time.time() - started) / 60)} min). torch "
        f"{info['versions'].get('torch', '?')}, {threads} thread(s) in each child. The cache: {rows:,} x {DIMS:,} "
        f"float16 ({size:.2f} GB), {CLASSES} classes, 45-value C grid.",
        "",
        "| selection | rows | wall s | CPU s | s per 1,000 rows | row-passes | ns per row-pass | peak RSS MB | C | "
        "val acc | test acc | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, what in ((disk, f"on disk, read in chunks (budget {budget_mb} MB)"), (memory, "in memory (a slice)")):
        lines.append(f"| {what} | {r['rows']:,} | {r['seconds']} | {r['cpu_seconds']} | "
                     f"{1000 * r['seconds'] / r['rows']:.3f} | {r['row_passes'] / 1e6:.0f} M | "
                     f"{1e9 * r['seconds'] / r['row_passes']:.1f} | {r['peak_rss_mb']:,} | {r['C']:.3g} | "
                     f"{r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['load_average']} |")
    lines += [
        "",
        f"Time per row, on disk / in memory: **{per_row:.2f}** (target {TARGET_PER_ROW}); per row-pass (the solves' "
        f"own work, which grows with the rows: more iterations on more rows): **{per_pass:.2f}**. Peak RSS on disk: "
        f"**{disk['peak_rss_mb']:,} MB** (target under {TARGET_RSS_MB:,}).",
        "",
    ]
    return "\n".join(lines)


def measure(rows: int, slice_rows: int, budget_mb: int, threads: int, log=lambda msg: None) -> dict:
    """Both selections, each in its own child: ``disk`` and ``memory`` (their figures), ``per_row`` (time per row,
    on disk / in memory) and ``text`` (the record). ``bench/run.py``'s ``outofcore`` section calls this too."""
    started, load_start = time.time(), load_average()
    path = cache_path(rows)
    log(f"cache {path} ({path.stat().st_size / 1e9:.2f} GB)")
    disk = spawn("disk", path, rows, budget_mb, threads)
    log(json.dumps(disk))
    memory = spawn("memory", path, min(slice_rows, rows), budget_mb, threads)
    log(json.dumps(memory))
    per_row = per_row_ratio(disk, memory)
    return {"disk": disk, "memory": memory, "per_row": per_row,
            "text": record(rows, slice_rows, budget_mb, threads, disk, memory, started, load_start)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--slice", type=int, default=200_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget-mb", type=int, default=256)
    p.add_argument("--out", default=str(BENCH / "out_of_core.md"))
    args = p.parse_args(argv)
    result = measure(args.rows, args.slice, args.budget_mb, args.threads,
                     log=lambda msg: print(msg, file=sys.stderr, flush=True))
    from transferlab.util import atomic_write

    atomic_write(args.out, result["text"])
    print(result["text"])
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        print(json.dumps(run_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
    else:
        sys.exit(main())
