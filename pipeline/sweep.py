"""The main job: layer depth against accuracy, for every backbone, weights, pooling and head asked for.

For each (backbone, weights, pooling, image size) the sweep extracts every requested layer once
(cache-aware: a warm rerun does no extraction pass), then trains each head on each layer with the
heads stage's selection protocol (:func:`transferlab.classifiers.train_head`, the same call
``transferlab train`` makes, so a sweep row equals a ``train`` run of that layer and head). Depth
and relative depth come from the cache, where extraction stored them. Head fits run in parallel
through joblib. Rows are appended to ``results.csv`` as they finish, so Ctrl-C keeps the finished
rows, and a rerun skips the rows whose key (:mod:`transferlab.pipeline.results`) it would compute
again; rows of another configuration or data set are moved to ``results.stale.csv`` first.

Integrity rule of ``results.json``, ``report.md`` and the plot: they are derived from
``results.csv`` and rewritten whole (atomically) at the end of every run; a kill before that
leaves the previous ones, which the next run replaces. A run that computed no row and moved none
aside keeps ``report.md`` and the plot when both are newer than ``results.csv`` and the previous
``results.json`` holds the same configuration and rows (the warm rerun then only reads).
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from joblib import Parallel, delayed
from tqdm.auto import tqdm

from transferlab.features import ExtractionSpec, extract, load_dataset, parse_pooling
from transferlab.features.spec import DEFAULT_IMAGE_SIZE, parse_image_size
from transferlab.features.cache import layer_info, read_cache_meta
from transferlab.util import UserInputError, jsonable, library_versions, write_json

from .report import refresh_report, write_report
from .results import append_row, read_rows, row_key, set_aside


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
    image_size: list = field(default_factory=lambda: [DEFAULT_IMAGE_SIZE])
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
        self.image_size = [parse_image_size(s) for s in _split_list(self.image_size)] or [DEFAULT_IMAGE_SIZE]
        self.pool = [parse_pooling(p).name for p in self.pool]
        try:
            self.shots = [int(s) for s in _split_list(self.shots)]
        except ValueError:
            raise UserInputError("--shots takes whole numbers of examples per class, e.g. --shots 1,5,10") from None
        if any(k <= 0 for k in self.shots):
            raise UserInputError("--shots must be positive")
        ExtractionSpec(dtype=self.dtype)  # checks the dtype
        if int(self.repeats) < 1:
            raise UserInputError(f"--repeats {self.repeats} must be at least 1")
        for name in ("backbone", "weights", "heads", "pool"):
            if not getattr(self, name):
                raise UserInputError(f"--{name.replace('_', '-')} needs at least one value")


def _fit_one(job: dict) -> dict:
    from transferlab.classifiers import train_head

    t0 = time.perf_counter()
    res = train_head(job["cache_file"], job["layer"], job["head"], preprocessing=job["preprocessing"],
                     val_fraction=job["val_fraction"], seed=job["seed"], n_jobs=1, full_grid=job["full_grid"],
                     shots=job["shots"] or None)
    row = {k: job[k] for k in ("backbone", "weights", "layer", "depth", "rel_depth", "dim", "head", "repeat",
                               "seed", "cache_file", "cache_key", "pool", "image_size", "data", "data_fingerprint",
                               "val_fraction", "grid", "row_key")}
    row.update(shots=job["shots"] or "", preprocessing=res.get("preprocessing", ""),
               params=json.dumps(res.get("params", {}), sort_keys=True, default=str),
               val_accuracy="" if res.get("val_accuracy") is None else round(float(res["val_accuracy"]), 6),
               test_accuracy=round(float(res["test_accuracy"]), 6),
               fit_seconds=round(float(res.get("fit_seconds", time.perf_counter() - t0)), 3),
               n_train=res.get("n_train", ""), n_val=res.get("n_val", ""), selection=res.get("selection", ""))
    return row


def _layer_names(layers, meta: dict) -> list[str]:
    if isinstance(layers, str) and layers.strip() in ("all", ""):
        return list(meta["catalog"])
    names = layers if isinstance(layers, (list, tuple)) else [s.strip() for s in str(layers).split(",")]
    return [n for n in names if n]


def sweep(config: SweepConfig | None = None, progress: bool = True, log=print, **overrides) -> dict:
    """Run a sweep and write ``results.csv``, ``results.json``, ``depth_vs_accuracy.png``, ``report.md``.

    Parameters
    ----------
    config : SweepConfig, optional
        The whole configuration; or give its fields as keyword arguments.
    progress : bool
        Progress bars.
    log : callable
        Receives notes (rows set aside as stale).

    Returns
    -------
    dict
        The ``results.json`` content (configuration, versions, rows, timings, cache files).

    Examples
    --------
    >>> summary = sweep(data="digits", heads="logreg", out="runs/sweep")   # doctest: +SKIP
    >>> summary["rows"][0]["test_accuracy"]                                # doctest: +SKIP
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
    from transferlab.classifiers import make_head  # validates head names before any work

    for h in cfg.heads:
        make_head(h, preprocessing=cfg.preprocessing)
    dataset = load_dataset(cfg.data, seed=cfg.seed)
    csv_path = out / "results.csv"
    t_extract, t_train, cache_files = 0.0, 0.0, []
    jobs = []
    for bspec, wspec, pool, size in itertools.product(cfg.backbone, cfg.weights, cfg.pool, cfg.image_size):
        spec = ExtractionSpec(bspec, wspec, cfg.seed, size, pool, cfg.dtype)
        t0 = time.perf_counter()
        path = extract(dataset, layers=cfg.layers, spec=spec, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size,
                       device=cfg.device, progress=progress, log=lambda m: None)
        t_extract += time.perf_counter() - t0
        cache_files.append(str(path))
        meta = read_cache_meta(path)
        for name in _layer_names(cfg.layers, meta):
            info = layer_info(path, name)
            for head, shots, rep in itertools.product(cfg.heads, cfg.shots or [0], range(cfg.repeats)):
                job = {"backbone": bspec, "weights": wspec, "layer": name, "depth": info["depth"],
                       "rel_depth": info["rel_depth"], "dim": info["dim"], "head": head, "repeat": rep,
                       "seed": cfg.seed + rep, "cache_file": str(path), "cache_key": meta["key"], "pool": meta["pooling"],
                       "image_size": meta["image_size"], "shots": shots, "preprocessing": cfg.preprocessing,
                       "val_fraction": cfg.val_fraction, "full_grid": cfg.full_grid,
                       "grid": "full" if cfg.full_grid else "default", "data": dataset.spec,
                       "data_fingerprint": dataset.fingerprint}
                job["row_key"] = row_key(cache_key=meta["key"], layer=name, head=head, preprocessing=cfg.preprocessing,
                                         grid=job["grid"], val_fraction=cfg.val_fraction, shots=shots, repeat=rep,
                                         seed=job["seed"])
                jobs.append(job)
    keys = {j["row_key"] for j in jobs}
    stale = set_aside(csv_path, lambda r: r.get("row_key") in keys or (
        str(r.get("head", "")).startswith("finetune:") and r.get("data_fingerprint") == dataset.fingerprint))
    if stale:
        log(f"note: {len(stale)} row(s) in {csv_path} came from another configuration or data set "
            f"(or were torn); moved them to {csv_path.with_name('results.stale.csv')}")
    done = {r["row_key"] for r in read_rows(csv_path)}
    jobs = [j for j in jobs if j["row_key"] not in done]
    bar = tqdm(total=len(jobs), desc="heads x layers", unit="fit", disable=not progress or not jobs,
               dynamic_ncols=True)
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
    summary = {"config": asdict(cfg), "versions": library_versions(), "rows": rows, "cache_files": cache_files,
               "class_names": dataset.class_names, "data_fingerprint": dataset.fingerprint,
               "timing": {"extract_seconds": round(t_extract, 2), "train_seconds": round(t_train, 2),
                          "fits_run": len(jobs), "fits_reused": len(rows) - len(jobs)},
               "stale_rows_moved": len(stale)}
    current = not jobs and not stale and _report_is_current(out, summary)
    write_json(out / "results.json", summary)
    if not current:
        write_report(out, summary)
    return summary


def _report_is_current(out: Path, summary: dict) -> bool:
    """Whether report.md and the plot were written from this very results.csv and configuration."""
    try:
        previous = json.loads((out / "results.json").read_text())
        written_after = min((out / n).stat().st_mtime_ns for n in ("report.md", "depth_vs_accuracy.png"))
        return (written_after >= (out / "results.csv").stat().st_mtime_ns
                and previous.get("config") == jsonable(summary["config"]) and previous.get("rows") == summary["rows"])
    except (OSError, ValueError):
        return False


def append_finetune(target: "str | Path", metrics: dict) -> Path:
    """Add a fine-tuning run's row to a sweep (``target``: its folder or ``results.csv``) and refresh its report.

    The row's key is the run's configuration key, so appending the same run twice adds one row.
    Returns the results file.
    """
    target = Path(target).expanduser()
    path = target if target.suffix == ".csv" else target / "results.csv"
    cfg = metrics["config"]
    params = json.dumps({k: cfg[k] for k in ("epochs", "lr", "lr_spread", "optimizer", "weight_decay", "batch_size",
                                             "accumulate", "augment", "label_smoothing", "max_train")}, sort_keys=True)
    row = {"backbone": cfg["backbone"], "weights": cfg["weights"], "layer": metrics["last_layer"],
           "depth": metrics["depth"], "rel_depth": 1.0, "dim": metrics["feature_dim"],
           "head": f"finetune:{cfg['mode']}", "pool": "gap", "image_size": cfg["image_size"], "preprocessing": "none",
           "params": params, "shots": "", "repeat": 0, "seed": cfg["seed"], "val_accuracy": metrics["val_accuracy"],
           "test_accuracy": metrics["test_accuracy"], "fit_seconds": round(metrics["fit_seconds"], 3),
           "n_train": metrics["n_train"], "n_val": metrics["n_val"], "selection": cfg["val_source"],
           "data": cfg["data"], "data_fingerprint": cfg["data_fingerprint"], "cache_file": "",
           "val_fraction": cfg["val_fraction"], "row_key": row_key(finetune=metrics["config_key"])}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if row["row_key"] not in {r.get("row_key") for r in read_rows(path)}:
            append_row(path, row)
            refresh_report(path.parent)
    except OSError as exc:
        raise UserInputError(f"cannot append to {path} ({exc.strerror or exc.__class__.__name__}); "
                             f"give a writable sweep directory or .csv as --append-to") from None
    return path
