"""The main job: layer depth against accuracy, for every backbone, weights, pooling and head asked for.

For each (backbone, weights, pooling, image size) the sweep extracts every requested layer once
(cache-aware: a warm rerun does no extraction pass), then trains each head on each layer with the
heads stage's selection protocol (:func:`transferlab.classifiers.train_head`, the same call
``transferlab train`` makes, so a sweep row equals a ``train`` run of that layer and head). Depth
and relative depth come from the cache, where extraction stored them. Head fits run in parallel
through joblib (:mod:`transferlab.classifiers.parallel`; ``backend="dask"`` or ``"ray"`` runs them
on a cluster, each worker reading the features from the cache file's path). Rows are appended to
``results.csv`` as they finish, so Ctrl-C keeps the finished rows, and a rerun skips the rows whose
key (:mod:`transferlab.pipeline.results`) it would compute again. Rows still valid stay current
whatever heads or layers are asked for now; rows of other data or another setting are moved to
``results.stale.csv`` first (a note names what changed), and rows there whose key is valid again
are taken back instead of refitted.

Integrity rule of ``results.json``, ``report.md`` and the plot: they are derived from
``results.csv`` and rewritten whole (atomically) at the end of every run; a kill before that
leaves the previous ones, which the next run replaces. The whole run holds the ``--out`` folder's
lock (:func:`transferlab.pipeline.results.locked_out`), so two sweeps into one folder never append
the same rows twice. A full disk stops the run with a one-line error; the rows appended before it
are whole and kept (appends are all-or-nothing), and the same command finishes the rest. A run
that computed no row and moved none aside keeps ``report.md`` and the plot when both are newer than
``results.csv`` and the previous ``results.json`` holds the same configuration and rows (the warm
rerun then only reads; the decision's stored measurement is reused when its key is unchanged:
:func:`measure_for_decision`).
"""
from __future__ import annotations

import errno
import itertools
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from transferlab.classifiers.names import MULTI_HEAD
from transferlab.classifiers.parallel import check_backend, parallel
from transferlab.classifiers.similarity import layer_similarity
from transferlab.features import ExtractionSpec, load_dataset, parse_pooling
from transferlab.features.cache import layer_info, read_cache_meta
from transferlab.features.memo import cached_extraction
from transferlab.features.spec import AUTO_IMAGE_SIZE, parse_image_size, parse_layers, resolve_image_size
from transferlab.util import UserInputError, jsonable, library_versions, sha256_json, write_json

from .backbone_choice import sweep_backbone_choice
from .curves import FINETUNE_PREFIX, decision_of
from .report import refresh_report, write_report
from .results import (
    STALE_FILE,
    CurrentRun,
    ProbeSettings,
    SweepResult,
    append_row,
    locked_out,
    moved_note,
    multi_key_layer,
    read_rows,
    reconcile,
    row_key,
    why_not_current,
)
from .tracking import open_tracker

WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS)


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
    image_size: list = field(default_factory=lambda: [AUTO_IMAGE_SIZE])
    dtype: str = "float16"
    shots: list = field(default_factory=list)
    repeats: int = 1
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float | None = None
    fingerprint: str = "stat"
    preprocessing: str | None = None
    full_grid: bool = False
    out: str = "runs/sweep"
    cache_dir: str | None = None
    device: str = "auto"
    batch_size: int = 64
    n_jobs: int = -1
    backend: str | None = None

    def __post_init__(self):
        for name in ("backbone", "weights", "heads", "pool"):
            setattr(self, name, _split_list(getattr(self, name)))
        self.image_size = [parse_image_size(s) for s in _split_list(self.image_size)] or [AUTO_IMAGE_SIZE]
        self.pool = [parse_pooling(p).name for p in self.pool]
        try:
            self.shots = [int(s) for s in _split_list(self.shots)]
        except ValueError:
            raise UserInputError("--shots takes whole numbers of examples per class, e.g. --shots 1,5,10") from None
        if any(k <= 0 for k in self.shots):
            raise UserInputError("--shots must be positive")
        ExtractionSpec(dtype=self.dtype)  # checks the dtype
        check_backend(self.backend)
        if int(self.repeats) < 1:
            raise UserInputError(f"--repeats {self.repeats} must be at least 1")
        if int(self.batch_size) <= 0:  # checked here too: a warm rerun never reaches extract's check
            raise UserInputError(f"batch size {self.batch_size} must be positive")
        for name in ("backbone", "weights", "heads", "pool"):
            if not getattr(self, name):
                raise UserInputError(f"--{name.replace('_', '-')} needs at least one value")


def _fit_one(job: dict) -> dict:
    """One head on one layer; the warnings it raised travel back in ``row["_warnings"]`` (not printed)."""
    from transferlab.classifiers import MULTI_HEAD, default_grid, train_head, train_multilayer

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if job["head"] == MULTI_HEAD:  # one head over the candidate layers: the row's layer is the chosen ones
            res = train_multilayer(job["cache_file"], job["candidates"], val_fraction=job["val_fraction"],
                                   seed=job["seed"], shots=job["shots"] or None,
                                   grid=default_grid("logreg", full=job["full_grid"])["C"])
            job = {**job, **{k: res[k] for k in ("layer", "depth", "rel_depth", "dim")}}
            res = {**res, "params": {**res["params"], "candidates": job["candidates"]}}  # what its key is made of
        else:
            res = train_head(job["cache_file"], job["layer"], job["head"], preprocessing=job["preprocessing"],
                             val_fraction=job["val_fraction"], seed=job["seed"], n_jobs=1,
                             full_grid=job["full_grid"], shots=job["shots"] or None)
    row = {k: job[k] for k in ("backbone", "weights", "layer", "depth", "rel_depth", "dim", "head", "repeat",
                               "seed", "cache_file", "cache_key", "pool", "image_size", "data", "data_fingerprint",
                               "val_fraction", "grid", "row_key")}
    row.update(shots=job["shots"] or "", preprocessing=res.get("preprocessing", ""),
               params=json.dumps(res.get("params", {}), sort_keys=True, default=str),
               val_accuracy="" if res.get("val_accuracy") is None else round(float(res["val_accuracy"]), 6),
               test_accuracy=round(float(res["test_accuracy"]), 6),
               fit_seconds=round(float(res.get("fit_seconds", time.perf_counter() - t0)), 3),
               n_train=res.get("n_train", ""), n_val=res.get("n_val", ""), selection=res.get("selection", ""),
               notes="; ".join(res.get("notes") or []))
    row["_warnings"] = [(w.category.__name__, str(w.message).splitlines()[0][:160]) for w in caught]
    return row


def summarise_warnings(rows: list[dict]) -> list[str]:
    """One line per warning kind raised during the fits, with how many fits raised it."""
    kinds: dict = {}
    for r in rows:
        for cat, msg in dict.fromkeys(map(tuple, r.get("_warnings", []))):
            k = kinds.setdefault(cat, {"fits": 0, "example": msg, "where": r.get("layer", "")})
            k["fits"] += 1
    return [f"note: {v['fits']} fit(s) raised {cat}, e.g. at {v['where']}: {v['example']}"
            + (" (the chosen C may be under-converged; results stay valid, rerun with --full-grid or "
               "--preprocessing standardize to compare)" if cat == "ConvergenceWarning" else "")
            for cat, v in kinds.items()]


def class_counts(dataset) -> dict:
    """Labelled images per class outside the test split (what a head or a fine-tune can learn from)."""
    counts = {name: 0 for name in dataset.class_names}
    for name, split in dataset.splits.items():
        if name != "test":
            for c, n in zip(*np.unique(split.labels, return_counts=True)):
                counts[dataset.class_names[int(c)]] += int(n)
    return counts


def sweep(config: SweepConfig | None = None, progress: bool = True, log=print, track: str | None = None,
          **overrides) -> SweepResult:
    """Run a sweep and write ``results.csv``, ``results.json``, ``depth_vs_accuracy.png``, ``report.md``.

    Parameters
    ----------
    config : SweepConfig, optional
        The whole configuration; or give its fields as keyword arguments.
    progress : bool
        Progress bars.
    log : callable
        Receives notes (rows set aside as stale).
    track : str, optional
        ``"mlflow"``: also log the run to MLflow once its results are written (:mod:`.tracking`).

    Returns
    -------
    SweepResult
        ``.rows`` (a pandas DataFrame), ``.recommendation``, ``.config``, ``.timing``; indexing it
        (``result["rows"]``) reads the ``results.json`` content as before.

    Examples
    --------
    >>> res = sweep(data="digits", heads="logreg", out="runs/sweep")       # doctest: +SKIP
    >>> res.rows.sort_values("val_accuracy").tail(1)[["layer", "test_accuracy"]]  # doctest: +SKIP
    """
    cfg = config or SweepConfig(**overrides)
    tracker = open_tracker(track, log)  # a missing tracker package is an error before any work
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserInputError(f"cannot write to --out {out} ({exc.strerror}); choose a writable directory") from None
    from transferlab.classifiers import make_head  # validates head names before any work

    for h in cfg.heads:
        if h != MULTI_HEAD:
            make_head(h, preprocessing=cfg.preprocessing)
    with locked_out(out, log):  # a second sweep into this folder waits, then finds the rows done
        try:
            result = _sweep_locked(cfg, out, progress, log)
        except OSError as exc:  # a full disk while appending a row or writing the report
            if getattr(exc, "errno", None) not in WRITE_ERRNOS:
                raise
            raise UserInputError(f"cannot write the results in {out} ({exc.strerror or exc}); the finished rows "
                                 f"of results.csv are kept: free space and rerun the same command to finish") from None
    tracker.log_sweep(result)  # after the results are written: a failure is one warning, the results stand
    return result


def _sweep_locked(cfg: SweepConfig, out: Path, progress: bool, log) -> SweepResult:
    dataset = load_dataset(cfg.data, seed=cfg.seed, test_fraction=cfg.test_fraction, fingerprint=cfg.fingerprint)
    if dataset.layout:
        log(f"data: {dataset.spec}: {dataset.layout}")
    for note in dataset.notes:
        log(f"note: {note}")
    # `auto` resolved once, here, for every backbone at once; results.json records the sizes and how
    sizes = {}
    for request in cfg.image_size:
        size = resolve_image_size(request, dataset, cfg.backbone)
        sizes.setdefault(size.size, size)
    for size in sizes.values():
        log(size.line())
    cfg = replace(cfg, image_size=list(sizes))
    csv_path = out / "results.csv"
    t_extract, t_train, cache_files = 0.0, 0.0, []
    jobs, features = [], {}
    settings = ProbeSettings(cfg.preprocessing, "full" if cfg.full_grid else "default", cfg.val_fraction, cfg.seed)
    for bspec, wspec, pool, size in itertools.product(cfg.backbone, cfg.weights, cfg.pool, cfg.image_size):
        spec = ExtractionSpec(bspec, wspec, cfg.seed, size, pool, cfg.dtype)
        t0 = time.perf_counter()
        path = cached_extraction(dataset, spec, cfg.layers, cfg.cache_dir)  # a warm rerun: no torch import
        if path is None:
            from transferlab.features.extraction import extract

            path = extract(dataset, layers=cfg.layers, spec=spec, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size,
                           device=cfg.device, progress=progress, log=lambda m: log(m) if m.startswith("note") else None)
        t_extract += time.perf_counter() - t0
        cache_files.append(str(path))
        meta = read_cache_meta(path)
        features[(bspec, wspec, meta["pooling"], str(meta["image_size"]))] = meta["key"]
        names = parse_layers(cfg.layers, meta["catalog"])
        for name in names + ([MULTI_HEAD] if MULTI_HEAD in cfg.heads else []):
            info = layer_info(path, names[-1] if name == MULTI_HEAD else name)  # multi: its row says its layers
            heads = [MULTI_HEAD] if name == MULTI_HEAD else [h for h in cfg.heads if h != MULTI_HEAD]
            for head, shots, rep in itertools.product(heads, cfg.shots or [0], range(cfg.repeats)):
                job = {"backbone": bspec, "weights": wspec, "layer": name, "depth": info["depth"],
                       "rel_depth": info["rel_depth"], "dim": info["dim"], "head": head, "repeat": rep,
                       "seed": cfg.seed + rep, "cache_file": str(path), "cache_key": meta["key"],
                       "pool": meta["pooling"],
                       "image_size": meta["image_size"], "shots": shots, "preprocessing": cfg.preprocessing,
                       "val_fraction": cfg.val_fraction, "full_grid": cfg.full_grid,
                       "grid": settings.grid, "data": dataset.spec, "data_fingerprint": dataset.fingerprint,
                       "candidates": names,
                       "row_key": settings.key(meta["key"], multi_key_layer(names) if head == MULTI_HEAD else name,
                                               head, shots, rep)}
                jobs.append(job)
    now = CurrentRun(dataset.spec, dataset.fingerprint, features, settings)
    stale, taken = reconcile(csv_path, lambda r: why_not_current(r, now))
    if stale:
        log(moved_note(stale, csv_path))
    if taken:
        log(f"note: took back {len(taken)} row(s) from {csv_path.with_name(STALE_FILE)} into {csv_path}: "
            f"their key is valid again, so they are not refitted")
    done = {r["row_key"] for r in read_rows(csv_path)}
    asked = len(jobs)
    jobs = [j for j in jobs if j["row_key"] not in done]
    t0 = time.perf_counter()
    fitted, bar = [], None
    try:
        if jobs:
            with parallel(cfg.n_jobs, cfg.backend, lazy=True, log=log) as run:  # its cluster's note or error first
                bar = tqdm(total=len(jobs), desc="heads x layers", unit="fit", disable=not progress, dynamic_ncols=True)
                for row in run(_fit_one, [(j,) for j in jobs]):
                    if append_row(csv_path, row):
                        log(f"note: {csv_path} ended in a torn line (a run killed while appending); cut it off")
                    fitted.append(row)
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        t_train += time.perf_counter() - t0
        for line in summarise_warnings(fitted):
            log(line)
    rows = read_rows(csv_path)
    summary = {"config": asdict(cfg), "image_size_from": [s.how for s in sizes.values()],
               "versions": library_versions(), "rows": rows, "cache_files": cache_files,
               "class_names": dataset.class_names, "class_counts": class_counts(dataset),
               "data_fingerprint": dataset.fingerprint, "data_layout": dataset.layout, "data_notes": dataset.notes,
               "timing": {"extract_seconds": round(t_extract, 2), "train_seconds": round(t_train, 2),
                          "fits_run": len(jobs), "fits_reused": asked - len(jobs)},
               "stale_rows_moved": len(stale), "stale_rows_taken_back": len(taken)}
    summary["layer_similarity"] = layer_similarity(cache_files, _previous(out, "layer_similarity"))
    summary["measurement"] = measure_for_decision(rows, cfg, _previous(out, "measurement"), log)
    summary["backbone_choice"] = sweep_backbone_choice(rows, cfg, summary["measurement"],
                                                       _previous(out, "backbone_choice"), log)
    summary["decision"] = decision_of(summary)
    current = not jobs and not stale and not taken and _report_is_current(out, summary)
    write_json(out / "results.json", summary)
    if not current:
        write_report(out, summary, log=log)
    return SweepResult(summary, out)


def _previous(out: Path, name: str):
    """Field ``name`` of the previous run's ``results.json`` (None when there is none)."""
    try:
        return json.loads((out / "results.json").read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None


def measure_for_decision(rows: list[dict], cfg: SweepConfig, previous: dict | None, log=print) -> dict | None:
    """The decision's measurement of its curve (:func:`transferlab.pipeline.evidence.measure_curve`), as stored
    in ``results.json``: every layer of the decision's configuration measured the same way, the peak-vs-last
    gap paired.

    Its key is everything that decides it (the cache key, the layers, seed, validation fraction, the
    measurement's own settings and the one-split accuracies it was given): a rerun with the same key
    reuses the stored measurement (a warm rerun fits nothing and imports no torch); any change measures
    again. The logreg rows of that configuration, fitted with the default grid and preprocessing,
    are the same probe on the same rows: their validation accuracies are passed on, not refitted.
    """
    from .curves import decision_curve
    from .evidence import FOLDS, PROBE, REPEATS, SMALL_VAL, known_probe_accuracies

    dc = decision_curve(rows)
    if dc is None or not dc["cache_file"]:
        return None
    known = known_probe_accuracies(rows, dc["cache_file"], cfg)
    key = sha256_json({"cache_key": dc["cache_key"], "cache_file": dc["cache_file"], "layers": dc["layers"],
                       "seed": cfg.seed, "val_fraction": cfg.val_fraction, "known": known,
                       "measure": [PROBE, SMALL_VAL, FOLDS, REPEATS]})
    if previous and previous.get("key") == key:
        return previous
    from .evidence import measure_curve

    log(f"decision: measuring the {PROBE} probe on {len(dc['layers'])} layers of {dc['backbone']} "
        f"({dc['weights']}, {dc['image_size']} px) the same way, for a paired peak-vs-last comparison")
    m = measure_curve(dc["cache_file"], dc["layers"], seed=cfg.seed, val_fraction=cfg.val_fraction, known=known,
                      n_jobs=cfg.n_jobs, backend=cfg.backend)
    return {"key": key, **{k: dc[k] for k in ("backbone", "weights", "pool", "image_size", "cache_file")},
            "method": m.method, "points": [asdict(p) for p in m.points], "gap": m.gap_record(),
            "params": m.params}


def _report_is_current(out: Path, summary: dict) -> bool:
    """Whether report.md and the plot were written from this very results.csv and configuration."""
    try:
        previous = json.loads((out / "results.json").read_text())
        written_after = min((out / n).stat().st_mtime_ns for n in ("report.md", "depth_vs_accuracy.png"))
        return (written_after >= (out / "results.csv").stat().st_mtime_ns
                and previous.get("config") == jsonable(summary["config"]) and previous.get("rows") == summary["rows"]
                and previous.get("layer_similarity") == jsonable(summary["layer_similarity"])
                and previous.get("backbone_choice") == jsonable(summary["backbone_choice"]))
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class Appended:
    """What :func:`append_finetune` did: the results file, whether the row is new there, and the report
    it rewrote (None when the folder holds no sweep yet, or the row was there already)."""

    path: Path
    added: bool
    report: Path | None

    def message(self) -> str:
        """What happened, in one line, naming the files."""
        if not self.added:
            return f"{self.path} already holds this run's row (same configuration key); its report is unchanged"
        if self.report is None:
            return (f"appended the fine-tuning row to {self.path}; no report refreshed: {self.path.parent} holds no "
                    f"sweep yet (results.json), run `transferlab sweep --out {self.path.parent}` to write one")
        return (f"appended the fine-tuning row to {self.path}; refreshed the report: {self.report}, "
                f"{self.report.with_suffix('.html')}")


def append_finetune(target: "str | Path", metrics: dict) -> Appended:
    """Add a fine-tuning run's row to a sweep (``target``: its folder or ``results.csv``) and refresh its report.

    The row's key is the run's configuration key, so appending the same run twice adds one row.
    Returns what it did (:class:`Appended`; ``.message()`` says it in words).
    """
    target = Path(target).expanduser()
    path = target if target.suffix == ".csv" else target / "results.csv"
    cfg = metrics["config"]
    params = json.dumps({k: cfg[k] for k in ("epochs", "lr", "lr_spread", "optimizer", "weight_decay", "batch_size",
                                             "accumulate", "augment", "label_smoothing", "max_train")}, sort_keys=True)
    row = {"backbone": cfg["backbone"], "weights": cfg["weights"], "layer": metrics["last_layer"],
           "depth": metrics["depth"], "rel_depth": metrics["rel_depth"], "dim": metrics["feature_dim"],
           "head": FINETUNE_PREFIX + cfg["mode"], "pool": "gap", "image_size": cfg["image_size"],
           "preprocessing": "none",
           "params": params, "shots": "", "repeat": 0, "seed": cfg["seed"], "val_accuracy": metrics["val_accuracy"],
           "test_accuracy": metrics["test_accuracy"], "fit_seconds": round(metrics["fit_seconds"], 3),
           "n_train": metrics["n_train"], "n_val": metrics["n_val"], "selection": cfg["val_source"],
           "data": cfg["data"], "data_fingerprint": cfg["data_fingerprint"], "cache_file": "",
           "val_fraction": cfg["val_fraction"], "row_key": row_key(finetune=metrics["config_key"])}
    added, report = False, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked_out(path.parent, log=lambda m: None):
            if row["row_key"] not in {r.get("row_key") for r in read_rows(path)}:
                append_row(path, row)
                added = True
                report = refresh_report(path.parent)
    except OSError as exc:
        raise UserInputError(f"cannot append to {path} ({exc.strerror or exc.__class__.__name__}); "
                             f"give a writable sweep directory or .csv as --append-to") from None
    return Appended(path, added, report)


def sweep_defaults_for_finetune(target: "str | Path", values: dict) -> tuple[dict, list[str]]:
    """Fine-tuning flags for a run appended to the sweep at ``target``, so its row compares like with like.

    Where ``values`` (the flags given) leave them out, the sweep's data, image size (when the sweep
    used one: the size it resolved, as ``results.json`` records it, never ``auto`` resolved again),
    validation fraction, seed (so the validation rows are the sweep's), test fraction and fingerprint
    mode are used; a given value that differs from the sweep's is kept and named in the returned
    notes. A target without ``results.json`` (no sweep yet) changes nothing.
    """
    target = Path(target).expanduser()
    summary_path = (target.parent if target.suffix == ".csv" else target) / "results.json"
    if not summary_path.is_file():
        return values, []
    try:
        cfg = json.loads(summary_path.read_text()).get("config", {})
    except ValueError:
        return values, [f"{summary_path} is unreadable; the sweep's settings are not applied"]
    values, notes = dict(values), []
    sizes = [s for s in map(parse_image_size, cfg.get("image_size") or []) if isinstance(s, int)]  # resolved
    wanted = {"data": cfg.get("data"), "val_fraction": cfg.get("val_fraction"), "seed": cfg.get("seed"),
              "test_fraction": cfg.get("test_fraction"), "fingerprint": cfg.get("fingerprint")}
    if len(sizes) == 1:
        wanted["image_size"] = sizes[0]
    elif sizes and "image_size" not in values:
        notes.append(f"the sweep used several image sizes ({', '.join(map(str, sizes))}); fine-tuning uses "
                     f"the default unless --image-size is given")
    for k, v in wanted.items():
        if v is None:
            continue
        if k not in values:
            values[k] = v
        elif values[k] != v and not (k == "image_size" and parse_image_size(values[k]) == v):
            notes.append(f"--{k.replace('_', '-')} {values[k]} differs from the sweep's {v}: the fine-tuning row "
                         f"and the probe rows are not like for like")
    return values, notes
