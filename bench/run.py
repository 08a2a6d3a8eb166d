"""Every performance figure of TransferLab in one command; never part of CI.

    python bench/run.py                       # all sections (about 20-25 min on a quiet 2-core CPU)
    python bench/run.py --quick               # small sizes, a few minutes: checks that it all runs
    python bench/run.py --sections heads,warm # some sections; results merge into bench/results.json

Sections: ``extract`` (P1 throughput / pure forward at 64, 96, 224 px; P2 all layers / last),
``memory`` (P5 peak memory in N up to 60,000 images; it also writes the 50,000-row features the
heads use), ``folder`` (PNG/JPEG decode in DataLoader workers against arrays), ``thingsvision``
(the peer extractor, in its own interpreter), ``heads`` (each head's selection against one default
scikit-learn fit, 5,000 and 50,000 rows), ``warm`` (P3), ``firstline`` (each command's first line against the
interpreter's start; ``predict`` on 20 images against its floor), ``advise`` (against its floor: the
forward passes over the images it extracts, and the training steps of its price), ``finetune`` (the
Trainer's images/s against a plain PyTorch loop), ``outofcore`` (the logreg selection from a 1,000,000-row
file against a slice in memory, time per row, peak RSS). Every figure is a ratio against its limit
or peer measured in this run, with the absolute numbers beside it. Writes ``bench/results.json``
(whole, atomically, after every section) and the table between the markers of ``bench/README.md``.
``bench/gpu.sh`` holds the GPU figures (P7).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from common import WORK, Skip, load_average, machine  # noqa: E402

SECTIONS = ("extract", "memory", "folder", "thingsvision", "heads", "threads", "warm", "firstline", "advise",
            "finetune", "outofcore")
RESULTS = BENCH / "results.json"
README = BENCH / "README.md"
BEGIN, END = "<!-- bench:table:begin -->", "<!-- bench:table:end -->"


def _run_sections(names, quick, threads, save=lambda out, state: None, outofcore_rows=1_000_000) -> dict:
    import extraction_figures as ex
    from peers.thingsvision import peer as tv

    out, state = {}, {}
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in names:
        t0, load0 = time.perf_counter(), load_average()
        print(f"[{time.strftime('%H:%M:%S')}] {name} (load {load0})", flush=True)
        try:
            if name == "extract":
                rows = ex.p1_p2(quick)
                state["forward_rates"] = _forward_rates(rows)
            elif name == "memory":
                rows, state["memory"] = ex.p5_memory(quick)
            elif name == "folder":
                rows = ex.folder_input(quick, state.get("forward_rates") or _forward_rates(
                    previous.get("sections", {}).get("extract", {}).get("figures", [])) or {64: float("nan")})
            elif name == "thingsvision":
                rows = tv.thingsvision(quick)
            elif name == "heads":
                rows = _heads(quick, state, previous)
            elif name == "threads":
                rows = _threads(quick, state, previous)
            elif name == "warm":
                rows = ex.p3_warm(quick)
            elif name == "firstline":
                rows = _first_lines(quick) + _predict_floor(quick)
            elif name == "advise":
                rows = _advise_floor(quick)
            elif name == "finetune":
                rows = _finetune(quick)
            elif name == "outofcore":
                rows = _out_of_core(quick, outofcore_rows)
            out[name] = {"figures": rows, "seconds": round(time.perf_counter() - t0, 1), "load_average_before": load0,
                         "load_average_after": load_average(), "threads": threads,
                         "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        except Skip as exc:
            out[name] = {"skipped": str(exc)}
        except Exception as exc:  # one broken section must not lose the others' figures
            traceback.print_exc()
            out[name] = {"failed": f"{exc.__class__.__name__}: {exc}"}
        for row in out[name].get("figures", []):
            print(f"    {row['figure']}: {row.get('transferlab', row.get('skipped'))} | {row.get('peer_or_limit')} | "
                  f"ratio {row.get('ratio')}", flush=True)
        save(out, state)  # after every section: a run cut short keeps what it measured
    return out, state


def _forward_rates(rows) -> dict:
    import re

    rates = {}
    for r in rows:
        m = re.search(r"at (\d+) px, marginal", r["figure"])
        f = re.match(r"pure forward (\d+) img/s", r["peer_or_limit"])
        if m and f:
            rates[int(m.group(1))] = float(f.group(1))
    return rates


def _feature_sets(quick, state, previous) -> tuple[str, str | None]:
    """The heads' features: lite0 bn2 of CIFAR-10 small (extracted here when missing) and the memory
    section's 50,000-row cache (None with --quick or when no run has written it)."""
    from common import cifar_small

    from transferlab.features import extract

    cifar_small()  # skips when absent
    small = extract(f"npz:{BENCH.parents[1] / 'shared' / 'data' / 'cifar10_small.npz'}", "lite0", layers="bn2",
                    image_size=64, cache_dir=WORK / "cache", progress=False, log=lambda m: None)
    big = (state.get("memory") or previous.get("state", {}).get("memory") or {}).get("largest_cache")
    return str(small), (big if not quick and big and Path(big).is_file() else None)


def _heads(quick, state, previous) -> list:
    import head_figures as hf

    small, big = _feature_sets(quick, state, previous)
    linear = ("logreg", "svm", "ridge", "knn")
    rows = hf.heads(small, "5,000 x 1,280 (CIFAR-10 small)", names=linear)
    if big is None:
        rows.append({"figure": "heads at 50,000 rows", "skipped": "needs the memory section's 60,000-image cache"
                     + (" (--quick)" if quick else "")})
    else:
        rows += hf.heads(big, "50,000 x 1,280 (CIFAR-10 full)", names=linear)
    try:
        rows += hf.logreg_many_classes(quick)
    except Skip as exc:
        rows.append({"figure": "logreg at 100 classes", "skipped": str(exc)})
    # the slow references last, so a run cut short keeps the main figures
    rows += hf.heads(small, "5,000 x 1,280 (CIFAR-10 small)", names=("mlp",))
    if big is not None:
        rows += hf.heads(big, "50,000 x 1,280 (CIFAR-10 full)", names=("mlp",))
    rows += hf.logreg_grid_in_sklearn(small, "5,000 x 1,280")
    return rows


def _threads(quick, state, previous) -> list:
    """The logreg, kNN and MLP heads against scikit-learn at 1 thread and at every core, same rows: the
    ratio moves with the thread count (scikit-learn's OpenBLAS fit gains little from a second core, or
    loses when another job holds it; the torch solves gain more). The MLP at 5,000 rows only."""
    import os

    import head_figures as hf
    import torch
    from threadpoolctl import threadpool_limits

    small, big = _feature_sets(quick, state, previous)
    sets = [(small, "5,000 x 1,280 (CIFAR-10 small)")] + ([(big, "50,000 x 1,280 (CIFAR-10 full)")] if big else [])
    rows, before = [], torch.get_num_threads()
    try:
        for n in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(n)
            with threadpool_limits(n):
                for path, label in sets:
                    names = ("logreg", "knn") + (("mlp",) if path == small else ())
                    rows += hf.heads(path, f"{label}, {n} thread(s)", names=names)
    finally:
        torch.set_num_threads(before)
    return rows


FIRST_LINE_TARGET = 0.5  # seconds from the command to its first line (issue 21)


def _first_line_inputs() -> dict:
    """A head on lite0 ``bn2`` of digits at 32 px (its cache, its folder) and 20 digit images as PNG files,
    written once into the scratch folder."""
    from PIL import Image

    from transferlab.classifiers import train_head
    from transferlab.features import extract, load_dataset

    base = WORK / "firstline"
    cache = extract("digits", "lite0", layers="bn2", image_size=32, cache_dir=base / "cache", progress=False,
                    log=lambda m: None)
    head = base / "head"
    if not (head / "head.json").is_file():  # written last by train_head
        train_head(cache, "bn2", "logreg", out=head)
    images = base / "images"
    if not (images / ".complete").is_file():  # common.py's rule: a folder is finished by its marker
        images.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(load_dataset("digits").splits["test"].images[:20]):
            Image.fromarray(img).save(images / f"{i:02d}.png")
        (images / ".complete").write_text("")
    return {"base": base, "cache": cache, "head": head, "images": images}


def _until_first_line(cmd: list) -> tuple[float, str]:
    """Seconds from starting ``cmd`` to its first line on stderr (the process is then stopped), and the line."""
    import subprocess

    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=BENCH.parent)
    try:
        line = proc.stderr.readline()
        return time.perf_counter() - t, line.decode(errors="replace").strip()
    finally:
        proc.kill()
        proc.wait()


def _first_lines(quick: bool) -> list:
    """The first line of each command, against the interpreter's start plus the CLI's import (nothing can
    print before those), best of three; the target is the issue's 0.5 s."""
    from common import figure

    inp = _first_line_inputs()
    out = inp["base"] / "runs"
    commands = {
        "sweep": ["--data", "digits", "--out", out / "sweep", "--cache-dir", out / "cache"],
        "advise": ["--data", "digits", "--cache-dir", out / "cache"],
        "predict": ["--model", inp["head"], inp["images"]],
        "finetune": ["--data", "digits", "--epochs", "1", "--out", out / "ft"],
        "train": ["--features", inp["cache"], "--layer", "bn2", "--out", out / "head"],
        "extract": ["--data", "digits", "--cache-dir", out / "cache"],
        "layers": [],
    }
    tries = 2 if quick else 3
    start = min(_wall_of([sys.executable, "-c", "import transferlab.pipeline.cli"]) for _ in range(tries))
    rows = []
    for name, args in commands.items():
        firsts = [_until_first_line([sys.executable, "-m", "transferlab", name, *map(str, args)])
                  for _ in range(tries)]
        first, line = min(firsts)
        if not line.startswith(f"{name}: "):
            raise RuntimeError(f"{name}'s first line is not its plan: {line!r}")
        rows.append(figure(f"first line of `transferlab {name}` (seconds to its first stderr line, best of {tries})",
                           f"{first:.2f} s", f"python start + the CLI's import {start:.2f} s", first / start,
                           f"first line <= {FIRST_LINE_TARGET} s", first <= FIRST_LINE_TARGET))
    return rows


def _wall_of(cmd) -> float:
    import subprocess

    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=BENCH.parent)
    return time.perf_counter() - t


FLOOR = """
import sys
import torch
from transferlab.features import ExtractionSpec, build_backbone
from transferlab.features.preprocess import preprocess_image, read_image
spec = ExtractionSpec.from_dict(__import__("json").load(open(sys.argv[1]))["extraction"])
model = build_backbone(spec.backbone, weights=spec.weights, seed=spec.seed).model.eval()
x = torch.stack([preprocess_image(read_image(p, spec.exif_transpose), spec.image_size, spec.mean, spec.std,
                                  spec.interpolation) for p in sorted(__import__("glob").glob(sys.argv[2] + "/*.png"))])
with torch.inference_mode():
    model(x)
"""


def _timed_child(cmd) -> tuple[float, float]:
    """(wall, CPU) seconds of one child process."""
    return _timed_child_out(cmd)[:2]


def _predict_floor(quick: bool) -> list:
    """``predict`` on 20 images with a saved head, against its floor: a Python process that imports torch,
    builds the same backbone and runs those images (same preprocessing), alternated, best of three by wall
    time; the CPU times beside (less moved by other people's work on this machine). The third line,
    the floor plus importing scikit-learn's logistic regression, shows what loading the head through
    scikit-learn would cost (predict applies a linear head with numpy alone)."""
    from common import figure

    inp = _first_line_inputs()
    predict = [sys.executable, "-m", "transferlab", "predict", "--model", str(inp["head"]), str(inp["images"]),
               "--quiet"]
    floor = [sys.executable, "-c", FLOOR, str(inp["head"] / "head.json"), str(inp["images"])]
    # the floor plus scikit-learn's logistic regression: what predict paid before it applied linear heads in numpy
    with_head = [sys.executable, "-c", "import sklearn.linear_model\n" + FLOOR, *floor[3:]]
    runs = {"predict": [], "floor": [], "with_head": []}
    for _ in range(2 if quick else 3):
        for name, cmd in (("floor", floor), ("predict", predict), ("with_head", with_head)):
            runs[name].append(_timed_child(cmd))
    (pw, pc), (fw, fc), (hw, hc) = (min(runs[n]) for n in ("predict", "floor", "with_head"))
    ratio = pw / fw
    return [figure("predict, 20 digit PNG files, lite0 bn2 logreg head at 32 px / its floor (wall, best of "
                   f"{len(runs['predict'])})", f"{pw:.2f} s wall, {pc:.2f} s CPU",
                   f"import torch + build lite0 + forward of the 20 images {fw:.2f} s wall, {fc:.2f} s CPU (with "
                   f"scikit-learn's logistic regression imported too: {hw:.2f} s wall, {hc:.2f} s CPU)", ratio,
                   "<= 1.3", ratio <= 1.3, cpu_ratio=round(pc / fc, 3))]


# advise's floor (issue 21): a process that imports torch, builds the backbone with each weights advise extracted and
# runs the forward pass over the images of each cache file advise wrote; then pass_rates' training and evaluation
# steps (one warm-up epoch and REPEATS timed ones over two batches of synthetic images, finetuning.run.pass_rates) in
# a plain PyTorch loop, timed apart. argv: the plan (JSON). Prints the training steps' wall and CPU seconds.
ADVISE_FLOOR = """
import json, sys, time
import numpy as np
import torch
from transferlab.features import build_backbone, load_dataset
from transferlab.features.preprocess import normalize_batch, to_rgb_uint8
plan = json.loads(sys.argv[1])
ds = load_dataset(plan["data"], seed=plan["seed"])
with torch.inference_mode():
    for job in plan["forward"]:
        bb = build_backbone(job["backbone"], weights=job["weights"], seed=job["seed"])
        bb.model.eval()
        for split, n in job["rows"].items():
            x = ds.splits[split].images[:n]
            for s in range(0, n, 64):
                xb = torch.from_numpy(np.ascontiguousarray(to_rgb_uint8(x[s:s + 64]))).permute(0, 3, 1, 2)
                bb.model(normalize_batch(xb, job["size"], bb.mean, bb.std, bb.interpolation))
t, c = time.perf_counter(), time.process_time()
for job in plan["train"]:
    from transferlab.finetuning.model import build_finetune_model
    from transferlab.finetuning.run import REPEATS
    fm = build_finetune_model(job["backbone"], job["mode"], job["classes"], "imagenet", job["size"], job["seed"])
    opt = torch.optim.AdamW([p for p in fm.model.parameters() if p.requires_grad], lr=1e-3)
    b, size = job["batch"], job["size"]
    x = torch.randint(0, 256, (2 * b, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(2 * b) % job["classes"]
    for epoch in range(1 + REPEATS):
        fm.model.train()
        for s in range(0, 2 * b, b):
            loss = torch.nn.functional.cross_entropy(
                fm.model(normalize_batch(x[s:s + b], size, fm.backbone.mean, fm.backbone.std)), y[s:s + b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        fm.model.eval()
        with torch.inference_mode():
            for s in range(0, 2 * b, b):
                fm.model(normalize_batch(x[s:s + b], size, fm.backbone.mean, fm.backbone.std))
print(json.dumps({"train_wall": time.perf_counter() - t, "train_cpu": time.process_time() - c}))
"""
ADVISE_TARGET = 1.5  # advise's wall time against its floor (issue 21)


def _advise_cases(quick: bool) -> list:
    """``(label, data, extra arguments)``: digits, and CIFAR-10 small at 64 px where present (not with --quick)."""
    from common import CIFAR_SMALL

    cases = [("digits (1,797 images)", "digits", [])]
    if not quick and CIFAR_SMALL.is_file():
        cases.append(("CIFAR-10 small (6,000 images) at 64 px", f"npz:{CIFAR_SMALL}", ["--image-size", "64"]))
    return cases


def _advise_plan(data: str, cache_dir: Path, advice: dict) -> dict:
    """What advise ran, read back from the cache files it wrote and its JSON: each file's backbone, weights, size and
    rows per split (the forward passes), and each pass_rates call (the training steps of its price)."""
    import re

    import h5py

    from transferlab.features.cache import read_cache_meta

    jobs = []
    for path in sorted(cache_dir.glob("*.h5")):
        meta = read_cache_meta(path)
        with h5py.File(path, "r") as f:
            rows = {split: int(f[split]["labels"].shape[0]) for split in meta["splits"]}
        jobs.append({"backbone": meta["backbone"], "weights": meta["weights"], "seed": int(meta["seed"]),
                     "size": int(meta["image_size"]), "rows": rows})
    price = advice["price"]
    if price.get("finetune_curve"):
        raise RuntimeError("advise ran its short fine-tunes: the floor does not count them yet")
    m = re.match(r"(\d+) synthetic images at (\d+) px, (\S+),", price["rates_from"])
    n_classes = advice["evidence"]["n_classes"]
    train = [{"backbone": jobs[0]["backbone"], "mode": m.group(3), "classes": n_classes, "size": int(m.group(2)),
              "batch": int(m.group(1)) // 2, "seed": jobs[0]["seed"]}]
    if "from-scratch" in price.get("offers", {}):  # advise measured the scratch rates too
        train.append({**train[0], "mode": "scratch"})
    return {"data": data, "seed": jobs[0]["seed"], "forward": jobs, "train": train}


def _advise_floor(quick: bool) -> list:
    """``transferlab advise`` as a user types it (fresh cache: it extracts), wall and CPU time, against its floor:
    the forward passes over the images it extracted (pretrained and random weights) and, timed apart, the training
    steps pass_rates runs for the price, in a plain loop. One run each (advise takes minutes), advise first."""
    import json
    import shutil
    import uuid

    from common import figure

    from transferlab.finetuning.run import REPEATS

    rows = []
    for label, data, extra in _advise_cases(quick):
        cache = WORK / "advise" / uuid.uuid4().hex[:8]
        cmd = [sys.executable, "-m", "transferlab", "advise", "--data", data, *extra, "--cache-dir", str(cache),
               "--json", "--quiet"]
        try:
            aw, ac, out = _timed_child_out(cmd)
            advice = json.loads(out)
            plan = _advise_plan(data, cache, advice)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        floor = [sys.executable, "-c", ADVISE_FLOOR, json.dumps(plan)]
        fw, fc, out = _timed_child_out(floor)
        steps = json.loads(out.strip().splitlines()[-1])
        images = " + ".join(f"{sum(j['rows'].values())} ({j['weights']}, {j['size']} px)" for j in plan["forward"])
        trains = ", ".join(f"{j['mode']} {1 + REPEATS} x 2 batches of {j['batch']} at {j['size']} px + their evaluation"
                           for j in plan["train"])
        forward_w, forward_c = fw - steps["train_wall"], fc - steps["train_cpu"]
        ratio = aw / fw
        rows.append(figure(
            f"advise, {label}, fresh cache / its floor (wall; CPU ratio beside)",
            f"{aw:.1f} s wall, {ac:.1f} s CPU (CPU ratio {ac / fc:.2f})",
            f"{fw:.1f} s wall, {fc:.1f} s CPU: import torch, build lite0 with each weights, forward over {images} "
            f"images ({forward_w:.1f} s wall, {forward_c:.1f} s CPU; advise / forward alone "
            f"{aw / forward_w:.2f} wall, {ac / forward_c:.2f} CPU), then pass_rates' training steps in a plain "
            f"loop: {trains} ({steps['train_wall']:.1f} s wall, {steps['train_cpu']:.1f} s CPU)",
            ratio, f"<= {ADVISE_TARGET}", ratio <= ADVISE_TARGET, cpu_ratio=round(ac / fc, 3),
            strategy=advice["strategy"], advise_seconds_reported=advice["seconds"]))
    return rows


def _timed_child_out(cmd) -> tuple[float, float, str]:
    """(wall, CPU, stdout) of one child process."""
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH.parent)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} failed: {proc.stderr.strip().splitlines()[-3:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.stdout
def _finetune(quick: bool) -> list:
    """``bench/finetune_throughput.py`` at this run's thread count: the Trainer's images/s in ``full`` and
    ``last:2`` against the plain loop (the frozen part in ``inference_mode`` for ``last:2``)."""
    import finetune_throughput as ft
    from common import figure

    size, batch, batches, repeats = (32, 16, 2, 1) if quick else (64, 64, 4, 3)
    rows = []
    for mode in ft.MODES:
        r = ft.measure(mode, size, batch, batches, repeats)
        limit = "plain loop" + (f", stem to blocks.{r['frozen_prefix'] - 1} in inference_mode"
                                if r["frozen_prefix"] else "")
        rows.append(figure(f"fine-tuning `--mode {mode}`, lite0 at {size} px, batch {batch}, {r['n']} synthetic "
                           f"images per epoch (images/s, best of {repeats} epochs)",
                           f"Trainer {r['trainer']:.1f} img/s", f"{limit} {r['plain']:.1f} img/s", r["ratio"],
                           f">= {ft.TARGET}", r["ratio"] >= ft.TARGET, cpu_ratio=round(r["cpu_ratio"], 3)))
    return rows


def _out_of_core(quick: bool, n_rows: int = 1_000_000) -> list:
    """``bench/out_of_core.py``: the logreg selection read in chunks from an ``n_rows`` x 1,280 float16 file (peak
    RSS under 2 GB) against the same selection on a slice of a fifth of the rows in memory, time per row, with a
    solver budget of 256 MB per million rows (the rows streamed); 1,000,000 rows also rewrite
    ``bench/out_of_core.md``. ``--quick``: 40,000 rows against 10,000, a 16 MB budget (still streamed)."""
    import out_of_core as oc
    import torch
    from common import figure

    rows, slice_rows, budget = (40_000, 10_000, 16) if quick else (n_rows, n_rows // 5, max(16, 256 * n_rows // 10**6))
    res = oc.measure(rows, slice_rows, budget, torch.get_num_threads())
    disk, mem = res["disk"], res["memory"]
    if not quick and rows == 1_000_000:
        from transferlab.util import atomic_write

        atomic_write(BENCH / "out_of_core.md", res["text"])
    met = res["per_row"] <= oc.TARGET_PER_ROW and disk["peak_rss_mb"] < oc.TARGET_RSS_MB
    cpu_per_row = (disk["cpu_seconds"] / disk["rows"]) / (mem["cpu_seconds"] / mem["rows"])
    per_pass = (disk["seconds"] / disk["row_passes"]) / (mem["seconds"] / mem["row_passes"])
    return [figure(f"logreg selection (45-value C grid + refit) from a {rows:,} x 1,280 float16 file, read in chunks "
                   f"({budget} MB budget), 100 classes: time per row / in memory",
                   f"{disk['seconds']:.1f} s ({disk['cpu_seconds']:.1f} s CPU, {disk['row_passes'] / 1e6:.1f} M "
                   f"row-passes), peak RSS {disk['peak_rss_mb']:,} MB, test {disk['test_accuracy']:.3f}",
                   f"a {mem['rows']:,}-row slice in memory {mem['seconds']:.1f} s ({mem['cpu_seconds']:.1f} s CPU, "
                   f"{mem['row_passes'] / 1e6:.1f} M row-passes), peak RSS {mem['peak_rss_mb']:,} MB, "
                   f"test {mem['test_accuracy']:.3f}; per row by CPU time {cpu_per_row:.2f}, per row-pass "
                   f"{per_pass:.2f}", res["per_row"],
                   f"<= {oc.TARGET_PER_ROW} and peak RSS < {oc.TARGET_RSS_MB:,} MB", met,
                   peak_rss_mb=disk["peak_rss_mb"], seconds=disk["seconds"], peer_seconds=mem["seconds"],
                   cpu_ratio=round(cpu_per_row, 3), per_row_pass_ratio=round(per_pass, 3))]


def write_readme(results: dict) -> None:
    m = results["machine"]
    lines = [BEGIN, "",
             f"Measured {m['date']} by `python bench/run.py` on {m['cpu'] or 'an unnamed CPU'} ({m['cores']} cores"
             f"{', GPU ' + m['gpu'] if m['gpu'] else ', no GPU'}), torch {m['versions'].get('torch')} and "
             f"BLAS {', '.join(m['blas'])} limited to the thread count in the last column (the same on both sides), "
             f"scikit-learn {m['versions'].get('scikit-learn')}; load average {m['load_average_at_start']} at the "
             f"start, wall time {results['wall_seconds'] / 60:.1f} min. The machine is shared: the load column is the "
             f"1-minute load average when the figure was taken (2.0 = both cores busy with other work). "
             f"Sections not run by the latest command keep the figures of their own run: "
             + ", ".join(f"{n} {results['sections'][n].get('measured', 'earlier')}" for n in SECTIONS
                         if n in results["sections"]) + ".", "",
             "| figure | TransferLab | limit or peer | ratio | target | met | load | threads |",
             "| --- | --- | --- | ---: | --- | --- | ---: | ---: |"]
    for name in SECTIONS:
        sec = results["sections"].get(name)
        if sec is None:
            continue
        if "figures" not in sec:
            why = sec.get("skipped") and "skipped: " + sec["skipped"] or "failed: " + sec.get("failed", "")
            lines.append(f"| {name} | {why}"
                         f" | | | | | | |")
            continue
        for r in sec["figures"]:
            if "skipped" in r:
                lines.append(f"| {r['figure']} | skipped: {r['skipped']} | | | | | | |")
                continue
            met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
            lines.append(f"| {r['figure']} | {r['transferlab']} | {r['peer_or_limit']} | {r['ratio']} | "
                         f"{r['target']} | {met} | {r['load_average']} | "
                         f"{r.get('threads', sec.get('threads', results['threads']))} |")
    lines += ["", END]
    text = README.read_text() if README.is_file() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    from transferlab.util import atomic_write

    atomic_write(README, head + "\n".join(lines) + tail)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--child-extract":
        import extraction_figures

        extraction_figures.child_extract(*argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true",
                   help="small sizes: check that everything runs (prints only, writes nothing)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch and BLAS threads for every figure (0: all cores when the load average is below 1, "
                        "else 1: spinning threads lose 10x under contention)")
    p.add_argument("--no-write", action="store_true", help="print only; leave results.json and README.md alone")
    p.add_argument("--outofcore-rows", type=int, default=1_000_000,
                   help="rows of the outofcore section's file (its slice in memory: a fifth); 1,000,000 also rewrites "
                        "bench/out_of_core.md")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    import os

    import torch
    from threadpoolctl import threadpool_limits

    threads = args.threads or ((os.cpu_count() or 1) if os.getloadavg()[0] < 1.0 else 1)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    info = machine()
    base = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    write = not (args.no_write or args.quick)  # quick figures never replace a section's full ones

    def save(sections, state):
        from transferlab.util import write_json

        results = json.loads(json.dumps(base))
        results.setdefault("sections", {}).update(sections)
        results.update(machine=info, threads=threads, quick=args.quick,
                       wall_seconds=round(time.perf_counter() - started, 1))
        if "memory" in state:
            results.setdefault("state", {})["memory"] = state["memory"]
        if write:
            write_json(RESULTS, results)
            write_readme(results)

    with threadpool_limits(threads):
        _run_sections(names, args.quick, threads, save, args.outofcore_rows)
    print(f"wrote {RESULTS} and the table in {README}" if write else "printed only: results.json, README.md unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
