"""The main job: layer depth against accuracy, for every backbone, weights, pooling and head asked for.

For each (backbone, weights, pooling, image size) the sweep extracts every requested layer once
(cache-aware: a warm rerun does no forward pass), then trains each head on each layer with the
heads stage's selection protocol (:func:`classifiers.train_head`, the same call ``transferlab
train`` makes, so a sweep row equals a ``train`` run of that layer and head). Head fits run in
parallel through joblib. Rows are appended to ``results.csv`` as they finish, so Ctrl-C keeps the
finished rows, and a rerun skips them.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from joblib import Parallel, delayed
from tqdm.auto import tqdm

from features import UserInputError, build_backbone, catalog, extract, load_dataset
from features.extraction import versions

from .report import write_report
from .results import append_row, read_rows, row_key


def _split_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _split_list(item)]
    return [s.strip() for s in str(value).split(",") if s.strip()]


@dataclass
class SweepConfig:
    """Everything that decides a sweep's results; ``results.json`` records it resolved."""

    data: str = "digits"
    backbone: list = field(default_factory=lambda: ["lite0"])
    weights: list = field(default_factory=lambda: ["imagenet"])
    heads: list = field(default_factory=lambda: ["logreg", "svm"])
    layers: str = "all"
    pool: list = field(default_factory=lambda: ["gap"])
    image_size: list = field(default_factory=lambda: [64])
    dtype: str = "float16"
    shots: list = field(default_factory=list)
    repeats: int = 1
    seed: int = 0
    val_fraction: float = 0.2
    preprocessing: str | None = None
    full_grid: bool = False
    out: str = "runs/sweep"
    cache_dir: str | None = None
    device: str = "auto"
    batch_size: int = 64
    n_jobs: int = -1

    def __post_init__(self):
        for name in ("backbone", "weights", "heads", "pool"):
            setattr(self, name, _split_list(getattr(self, name)))
        try:
            self.image_size = [int(s) for s in _split_list(self.image_size)] or [0]
            self.shots = [int(s) for s in _split_list(self.shots)]
        except ValueError:
            raise UserInputError("--image-size and --shots take whole numbers, e.g. --shots 1,5,10") from None
        if any(s < 0 for s in self.image_size) or any(k <= 0 for k in self.shots):
            raise UserInputError("--image-size and --shots must be positive")
        if int(self.repeats) < 1:
            raise UserInputError(f"--repeats {self.repeats} must be at least 1")
        for name in ("backbone", "weights", "heads", "pool"):
            if not getattr(self, name):
                raise UserInputError(f"--{name.replace('_', '-')} needs at least one value")


def _rel_depth(depth: int, n: int) -> float:
    return round(depth / (n - 1), 4) if n > 1 else 1.0


def _fit_one(job: dict) -> dict:
    from classifiers import train_head

    t0 = time.perf_counter()
    res = train_head(job["cache_file"], job["layer"], job["head"], preprocessing=job["preprocessing"],
                     val_fraction=job["val_fraction"], seed=job["seed"], n_jobs=1, full_grid=job["full_grid"],
                     shots=job["shots"] or None)
    row = {k: job[k] for k in ("backbone", "weights", "layer", "depth", "rel_depth", "dim", "head", "repeat",
                               "seed", "cache_file", "pool", "image_size")}
    row.update(shots=job["shots"] or "", preprocessing=res.get("preprocessing", ""),
               params=json.dumps(res.get("params", {}), sort_keys=True, default=str),
               val_accuracy="" if res.get("val_accuracy") is None else round(float(res["val_accuracy"]), 6),
               test_accuracy=round(float(res["test_accuracy"]), 6),
               fit_seconds=round(float(res.get("fit_seconds", time.perf_counter() - t0)), 3),
               n_train=res.get("n_train", ""))
    return row


def sweep(config: SweepConfig | None = None, progress: bool = True, log=print, **overrides) -> dict:
    """Run a sweep and write ``results.csv``, ``results.json``, ``depth_vs_accuracy.png``, ``report.md``.

    Returns the ``results.json`` content (configuration, versions, rows, timings, cache files).
    """
    cfg = config or SweepConfig(**overrides)
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserInputError(f"cannot write to --out {out} ({exc.strerror}); choose a writable directory") from None
    from classifiers import make_head  # validates head names before any work

    for h in cfg.heads:
        make_head(h)
    dataset = load_dataset(cfg.data, seed=cfg.seed)
    csv_path = out / "results.csv"
    done = {row_key(r) for r in read_rows(csv_path)}
    t_extract, t_train, cache_files = 0.0, 0.0, []
    jobs = []
    for bspec, wspec, pool, size in itertools.product(cfg.backbone, cfg.weights, cfg.pool, cfg.image_size):
        bb = build_backbone(bspec, weights=wspec, seed=cfg.seed)
        side = size or bb.input_size
        infos = catalog(bb.model, cfg.layers, pool, side, cfg.dtype)
        t0 = time.perf_counter()
        path = extract(dataset, bb, layers=[i.name for i in infos], pool=pool, image_size=side, dtype=cfg.dtype,
                       weights=wspec, seed=cfg.seed, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size,
                       device=cfg.device, progress=progress, log=lambda m: None)
        t_extract += time.perf_counter() - t0
        cache_files.append(str(path))
        n_layers = len(infos)
        for rank, info in enumerate(infos):
            for head, shots, rep in itertools.product(cfg.heads, cfg.shots or [0], range(cfg.repeats)):
                job = {"backbone": bspec, "weights": wspec, "layer": info.name, "depth": rank,
                       "rel_depth": _rel_depth(rank, n_layers), "dim": info.dim, "head": head,
                       "repeat": rep, "seed": cfg.seed + rep, "cache_file": str(path), "pool": pool,
                       "image_size": side, "shots": shots, "preprocessing": cfg.preprocessing,
                       "val_fraction": cfg.val_fraction, "full_grid": cfg.full_grid}
                key_row = {**job, "shots": shots or ""}
                if row_key(key_row) not in done:
                    jobs.append(job)
    bar = tqdm(total=len(jobs), desc="heads x layers", unit="fit", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        if jobs:
            results = Parallel(n_jobs=cfg.n_jobs, return_as="generator")(delayed(_fit_one)(j) for j in jobs)
            for row in results:
                append_row(csv_path, row)
                bar.update(1)
    finally:
        bar.close()
        t_train += time.perf_counter() - t0
    rows = read_rows(csv_path)
    summary = {"config": asdict(cfg), "versions": versions(), "rows": rows, "cache_files": cache_files,
               "class_names": dataset.class_names,
               "timing": {"extract_seconds": round(t_extract, 2), "train_seconds": round(t_train, 2),
                          "fits_run": len(jobs), "fits_reused": len(rows) - len(jobs)}}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(out / "results.json")
    write_report(out, summary)
    return summary
