"""Benchmark: fine-tuning throughput of the Trainer against a plain PyTorch loop, its limit (issue 21).

    .venv/bin/python bench/finetune_throughput.py [--size 64] [--batch 64] [--batches 4] [--repeats 3] [--threads 1,2]

For ``full`` and ``last:2`` on lite0: images/s of one training epoch of
:class:`transferlab.finetuning.train.Trainer` (as ``finetune`` builds it: model, AdamW with its parameter
groups, warm-up/cosine schedule, augmentation on, AMP off on CPU) against a hand-written loop over a model
built the same way, the same optimizer groups, batches, augmentation (``random_resized_crop_flip`` drawn
from the same seeded generator) and loss. The limit of ``last:2`` runs the frozen part (stem to
``blocks.5``) in ``torch.inference_mode`` and trains the rest. Synthetic uint8 images in memory (nothing is
written but the table); one warm-up epoch each, then Trainer and loop alternated, best of ``--repeats``, at
each thread count of ``--threads``.
Writes ``bench/finetune_throughput.md`` whole at the end (``transferlab.util.atomic_write``: a killed run or a
full disk leaves the previous table).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from common import load_average, machine  # noqa: E402

OUT = BENCH / "finetune_throughput.md"
MODES = ("full", "last:2")
NUM_CLASSES = 10
TARGET = 0.9


def build(mode: str, size: int, epochs: int, steps_per_epoch: int, seed: int = 0):
    """``(fm, optimizer, scheduler, cfg)`` as :func:`transferlab.finetuning.finetune` makes them on the CPU."""
    import torch

    from transferlab.finetuning.model import (
        DEFAULT_LR,
        DEFAULT_LR_SPREAD,
        DEFAULT_WEIGHT_DECAY,
        WarmupCosine,
        build_finetune_model,
        make_optimizer,
        optimizer_param_groups,
        parse_mode,
    )

    kind = parse_mode(mode).kind
    fm = build_finetune_model("lite0", mode, NUM_CLASSES, "imagenet", size, seed)
    lr = DEFAULT_LR[kind]
    opt = make_optimizer("adamw", optimizer_param_groups(fm, lr, DEFAULT_LR_SPREAD[kind],
                                                         DEFAULT_WEIGHT_DECAY["adamw"]), lr)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(round(0.1 * total), total))
    return fm, opt, sched


def plain_epoch(fm, opt, sched, images, labels, batch: int, size: int, seed: int, epoch: int, frozen_prefix: int):
    """One epoch of the hand-written loop. ``frozen_prefix`` > 0: ``blocks[:frozen_prefix]``
    and the stem run in inference mode (the limit of ``last:N``), else the whole model trains."""
    import torch

    from transferlab.finetuning.train import epoch_generator, random_resized_crop_flip

    model = fm.model
    mean = torch.tensor(fm.backbone.mean).view(1, -1, 1, 1)
    std = torch.tensor(fm.backbone.std).view(1, -1, 1, 1)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = epoch_generator(seed, epoch)
    order = torch.randperm(len(labels), generator=gen)
    model.train()
    for m in model.modules():  # bn_stats "frozen": every BatchNorm keeps its running statistics
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        x = (random_resized_crop_flip(images[idx], size, gen) - mean) / std
        if frozen_prefix:
            with torch.inference_mode():
                h = model.blocks[:frozen_prefix](model.bn1(model.conv_stem(x)))
            h = h.clone()  # an ordinary tensor again, for the trained part's autograd
            logits = model.forward_head(model.bn2(model.conv_head(model.blocks[frozen_prefix:](h))))
        else:
            logits = model(x)
        loss = loss_fn(logits, labels[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()


def measure(mode: str, size: int, batch: int, batches: int, repeats: int, seed: int = 0, profile: bool = False) -> dict:
    """Images/s of the Trainer and of the plain loop (best epoch of ``repeats`` by wall and by CPU time, and the
    median over epoch pairs of the CPU-time ratio); ``profile``: also the aten operators of one more epoch each."""
    import numpy as np
    import torch

    from transferlab.finetuning.train import SplitData, Trainer

    n = batch * batches
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    labels = np.arange(n) % NUM_CLASSES
    data = SplitData(labels, images=images)
    epochs = repeats + 1 + profile  # the schedule's length: a warm-up epoch, the timed ones, the profiled one
    fm, opt, sched = build(mode, size, epochs, batches)
    cfg = {"image_size": size, "batch_size": batch, "accumulate": 1, "seed": seed, "augment": True,
           "epochs": epochs, "amp": "off", "channels_last": False, "label_smoothing": 0.0}
    trainer = Trainer(fm, opt, sched, cfg, torch.device("cpu"), data, None, data, progress=False)
    plain = build(mode, size, epochs, batches)
    frozen_prefix = 0
    if mode != "full":  # the catalog groups blocks.0 .. blocks.6 are the stages of model.blocks
        frozen_prefix = sum(1 for g in fm.catalog_groups if g.startswith("blocks.") and g not in fm.trainable_groups)
    y = torch.from_numpy(labels)
    sides = {"trainer": lambda epoch: trainer.train_epoch(epoch),
             "plain": lambda epoch: plain_epoch(*plain, images, y, batch, size, seed, epoch, frozen_prefix)}
    times = {k: [] for k in sides}  # (wall, CPU) seconds of each epoch after the first
    for epoch in range(1, repeats + 2):  # epoch 1 pays for starting up on both sides
        for side in sorted(sides, reverse=epoch % 2 == 0):  # who goes first alternates too
            wall, cpu = time.perf_counter(), time.process_time()
            sides[side](epoch)
            if epoch > 1:
                times[side].append((time.perf_counter() - wall, time.process_time() - cpu))
    wall = {k: n / min(w for w, _ in v) for k, v in times.items()}
    cpu = {k: n / min(c for _, c in v) for k, v in times.items()}
    paired = float(np.median([p[1] / t[1] for t, p in zip(times["trainer"], times["plain"])]))
    out = {"mode": mode, "trainer": wall["trainer"], "plain": wall["plain"], "ratio": wall["trainer"] / wall["plain"],
           "cpu_ratio": cpu["trainer"] / cpu["plain"], "paired_cpu_ratio": paired, "frozen_prefix": frozen_prefix,
           "times": times, "n": n}
    if profile:
        out["profile"] = {side: aten_ops(lambda: run(repeats + 2)) for side, run in sides.items()}
    return out


def aten_ops(fn) -> dict:
    """``{op: (calls, self seconds)}`` of the aten operators ``fn()`` runs (torch.profiler; self time is the
    time inside the operator less its children, on the wall clock)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: (e.count, e.self_cpu_time_total / 1e6) for e in prof.key_averages() if e.key.startswith("aten::")}


def profile_lines(rows: list) -> list:
    """What the profiler saw in one more epoch of each side: the same operators, as often, as long?"""
    lines = []
    for r in (r for r in rows if "profile" in r):
        t, p = r["profile"]["trainer"], r["profile"]["plain"]
        differ = sorted(k for k in set(t) | set(p) if t.get(k, (0,))[0] != p.get(k, (0,))[0])
        calls = [sum(c for c, _ in ops.values()) for ops in (t, p)]
        secs = [sum(s for _, s in ops.values()) for ops in (t, p)]
        # the Trainer's calls beyond the loop's, at its own mean time per call
        extra = sum(max(0, t[k][0] - p.get(k, (0,))[0]) * t[k][1] / t[k][0] for k in differ if k in t)
        lines.append(f"- {r['mode']}, {r['threads']} thread(s): {calls[0]} / {calls[1]} aten calls, self time "
                     f"{secs[0]:.2f} / {secs[1]:.2f} s (Trainer / plain loop); the Trainer's extra calls about "
                     f"{extra * 1e3:.1f} ms, in: " + (", ".join(differ) or "none"))
    return lines


def write(rows: list, args, info: dict, load_before: float, load_after: float) -> None:
    lines = ["# Fine-tuning throughput: the Trainer against a plain PyTorch loop", "",
             f"Measured {info['date']} by `python bench/finetune_throughput.py --size {args.size} --batch {args.batch} "
             f"--batches {args.batches} --repeats {args.repeats} --threads {args.threads}` on "
             f"{info['cpu'] or 'an unnamed CPU'} ({info['cores']} cores, "
             f"{'GPU ' + info['gpu'] if info['gpu'] else 'no GPU'}, run on the CPU), "
             f"torch {info['versions'].get('torch')} (threads: the table's column, the same on both sides); "
             f"load average {load_before} before, {load_after} after (the machine is shared: 2.0 = both cores "
             f"busy with other work).", "",
             f"lite0 from ImageNet weights, {NUM_CLASSES} classes, {args.size} px, batch {args.batch}, "
             f"{args.batches} batches of synthetic images per epoch, augmentation on, AMP off, AdamW with "
             f"finetune's parameter groups and schedule. Images/s of the best of {args.repeats} epochs each after "
             f"one warm-up epoch, the Trainer and the loop alternated (who goes first, too).", "",
             "| mode | threads | Trainer (images/s, wall) | plain loop, the limit (images/s, wall) | "
             "the limit's frozen part | ratio (wall) | ratio (CPU time) | ratio (CPU time, median of epoch pairs) | "
             "load | target | met |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        frozen = f"stem to blocks.{r['frozen_prefix'] - 1} in inference_mode" if r["frozen_prefix"] else "none"
        lines.append(f"| {r['mode']} | {r['threads']} | {r['trainer']:.1f} | {r['plain']:.1f} | {frozen} | "
                     f"{r['ratio']:.3f} | {r['cpu_ratio']:.3f} | {r['paired_cpu_ratio']:.3f} | {r['load']} | "
                     f">= {TARGET} | {'yes' if r['ratio'] >= TARGET else 'no'} |")
    lines += ["", "The CPU-time ratio (best epoch by this process's CPU seconds on each side) moves less with other "
              "people's work on the machine than the wall-time one; load: the 1-minute load average before the "
              "row.", "",
              "Epoch seconds, wall / CPU (Trainer; plain loop), in the order run:", ""]
    for r in rows:
        pairs = zip(r["times"]["trainer"], r["times"]["plain"])
        lines.append(f"- {r['mode']}, {r['threads']} thread(s): " +
                     "; ".join(f"{a[0]:.2f} / {a[1]:.2f} s, {b[0]:.2f} / {b[1]:.2f} s" for a, b in pairs))
    profiled = profile_lines(rows)
    if profiled:
        lines += ["", "torch.profiler over one more epoch of each side: the operators each runs, and how often, do not "
                  "depend on the load (their times do):", "",
                  *profiled]
    from transferlab.util import atomic_write

    atomic_write(OUT, "\n".join(lines) + "\n")


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    p.add_argument("--modes", default=",".join(MODES))
    args = p.parse_args(argv)
    info, load_before = machine(), load_average()
    rows = []
    thread_counts = [int(t) for t in args.threads.split(",")]
    for threads, mode in ((t, m) for t in thread_counts for m in args.modes.split(",")):
        torch.set_num_threads(threads)
        load = load_average()
        r = {**measure(mode, args.size, args.batch, args.batches, args.repeats, profile=threads == thread_counts[0]),
             "threads": threads, "load": load}
        print(f"{mode}, {threads} thread(s): Trainer {r['trainer']:.1f} images/s, plain loop {r['plain']:.1f} "
              f"images/s, ratio {r['ratio']:.3f} (CPU time {r['cpu_ratio']:.3f})", flush=True)
        rows.append(r)
    write(rows, args, info, load_before, load_average())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
