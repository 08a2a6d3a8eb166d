"""``--track mlflow``: a sweep's or a fine-tune's record in the user's MLflow tracking location.

MLflow is an optional extra (``pip install 'transferlab[track]'``), imported only when tracking is
asked for; without it ``--track mlflow`` is a one-line error before any work. The location is
``MLFLOW_TRACKING_URI``, else ``mlruns/`` in the working directory; the experiment is
``MLFLOW_EXPERIMENT_NAME``, else ``transferlab``. What is logged: a sweep run with the
configuration as params, the decision as tags and ``decision.json``, the chosen row's accuracies as
metrics, ``results.csv``/``results.json``, the report and its pictures and ``chosen_head/`` as
artifacts, and one child run per results row (its settings as params, its accuracies as metrics);
a fine-tune run with its resolved configuration as params, every epoch's numbers as metrics (step:
the epoch, logged as each epoch ends), the test accuracy and ``metrics.json``/``model.json``.
Params are strings and numbers, artifacts are copies of the files the run wrote; nothing is logged
as code or as a pickled model.

Rule: tracking never breaks a run. The results are written first; a tracking failure is one
``warning:`` line, the results stand and tracking stops for that run.
Integrity rule of the tracked run (written by MLflow into the tracking store): its status is
RUNNING while it is logged, FINISHED once everything is logged, FAILED when a log call failed
(the warning says so) or the fine-tune failed, KILLED when the fine-tune was interrupted; a kill -9
leaves it RUNNING. Only a FINISHED run is a complete record.
"""
from __future__ import annotations

import functools
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

TRACKERS = ("mlflow",)
INSTALL = "pip install 'transferlab[track]'"
DEFAULT_EXPERIMENT = "transferlab"
REPORT_FILES = ("results.csv", "results.json", "report.md", "report.html")
ROW_METRICS = ("val_accuracy", "test_accuracy", "fit_seconds", "depth", "rel_depth", "dim", "n_train", "n_val")
ROW_PARAMS = ("backbone", "weights", "pool", "image_size", "layer", "head", "preprocessing", "params", "shots",
              "repeat", "seed", "selection", "grid", "val_fraction", "data")


class Tracker:
    """No tracking: every method does nothing (what :func:`open_tracker` gives without ``--track``)."""

    def log_sweep(self, result) -> None:
        pass

    def epoch(self, row: dict) -> None:
        pass

    def log_finetune(self, metrics: dict) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return False


def open_tracker(kind: "str | None", log=print) -> Tracker:
    """The tracker ``--track`` names (None: no tracking). Raises UserInputError when its package is absent."""
    from transferlab.util import UserInputError

    if not kind:
        return Tracker()
    if kind not in TRACKERS:
        raise UserInputError(f"--track {kind} is not a tracker; choose from {', '.join(TRACKERS)}")
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserInputError(f"--track mlflow needs MLflow, which is not installed: {INSTALL}") from None
    return MlflowTracker(log)


@contextmanager
def file_store_allowed():
    """A local file store (``mlruns/``) usable: MLflow 3 refuses one unless ``MLFLOW_ALLOW_FILE_STORE`` is set,
    so it is set for the call when the user has not set it either way."""
    unset = "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    if unset:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if unset:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]


def _param(value) -> "str | None":
    """A configuration value as an MLflow param string (lists comma-separated, as the flags take them)."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _number(value) -> "float | None":
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class MlflowTracker(Tracker):
    """One MLflow run per command, logged through ``MlflowClient`` (no global active run)."""

    def __init__(self, log=print):
        from mlflow import MlflowClient

        from transferlab.util import UserInputError

        self.log, self.run_id, self.broken, self.steps = log, None, False, set()
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri()
        self.started = int(time.time() * 1000)
        try:
            with file_store_allowed():  # resolves the store: an unusable location is refused before any work
                self.client = MlflowClient(tracking_uri=self.uri)
        except Exception as exc:  # noqa: BLE001 - MLflow's own exception types vary by store
            raise UserInputError(f"--track mlflow cannot use the tracking location {self.uri} ({_first_line(exc)}); "
                                 f"set MLFLOW_TRACKING_URI to a usable one") from None

    @contextmanager
    def _guard(self):
        """Store access, where any failure is one warning and ends tracking for this run."""
        if self.broken:
            yield False
            return
        try:
            with file_store_allowed():
                yield True
        except Exception as exc:  # noqa: BLE001 - the run's results are written; tracking must not break it
            self.broken = True
            self.log(f"warning: tracking in MLflow ({self.uri}) failed ({exc.__class__.__name__}: {_first_line(exc)}); "
                     f"the results stand, the tracked run is incomplete")
            with file_store_allowed():
                self._terminate("FAILED")

    def _terminate(self, status: str) -> None:
        if self.run_id is not None:
            try:
                self.client.set_terminated(self.run_id, status)
            except Exception:  # noqa: BLE001 - already warned
                pass

    @functools.cached_property
    def experiment_id(self) -> str:
        if os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # created meanwhile by another run
            return self.client.get_experiment_by_name(name).experiment_id

    def _start(self, command: str, name: str, tags: dict, parent: "str | None" = None) -> str:
        tags = {"transferlab.command": command, **tags}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, start_time=None if parent else self.started,
                                     tags={k: str(v) for k, v in tags.items()}, run_name=name)
        return run.info.run_id

    def _batch(self, run_id: str, params: dict = (), metrics: dict = (), step: int = 0) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        params = [Param(k, p) for k, v in dict(params).items() if (p := _param(v)) is not None]
        metrics = [Metric(k, x, now, step) for k, v in dict(metrics).items() if (x := _number(v)) is not None]
        for i in range(0, max(len(params), len(metrics)), 100):  # MLflow's batch limits
            self.client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])

    def log_sweep(self, result) -> None:
        """The sweep in ``result.out``, after its results are written: config, rows, decision, report, chosen head."""
        from transferlab.util import jsonable

        from .chosen import CHOSEN_DIR, chosen_row

        with self._guard() as ok:
            if not ok:
                return
            out, summary = Path(result.out), result.summary
            rows, decision = summary["rows"], summary.get("decision") or {}
            self.run_id = self._start("sweep", f"sweep {out.name}", {"transferlab.out": out.resolve()})
            self._batch(self.run_id, params=summary["config"])
            chosen = chosen_row(rows, decision or None)
            facts = {"strategy": decision.get("strategy"), "runner_up": decision.get("runner_up"),
                     "chosen_layer": decision.get("chosen_layer"), "close": decision.get("close"),
                     "chosen_head": chosen and chosen["head"]}
            for k, v in facts.items():
                if v is not None:
                    self.client.set_tag(self.run_id, f"transferlab.{k}", str(v))
            if chosen:
                self._batch(self.run_id, metrics={f"chosen_{k}": chosen.get(k) for k in ROW_METRICS[:2]})
            self.client.log_dict(self.run_id, jsonable(decision), "decision.json")
            for r in rows:
                child = self._start("sweep", f"{r['layer']} {r['head']}", {"transferlab.row_key": r.get("row_key", "")},
                                    parent=self.run_id)
                self._batch(child, params={k: r.get(k) for k in ROW_PARAMS},
                            metrics={k: r.get(k) for k in ROW_METRICS})
                self.client.set_terminated(child, "FINISHED")
            for name in [*REPORT_FILES, *sorted(p.name for p in out.glob("*.png"))]:
                if (out / name).is_file():
                    self.client.log_artifact(self.run_id, str(out / name))
            if (out / CHOSEN_DIR).is_dir():
                self.client.log_artifacts(self.run_id, str(out / CHOSEN_DIR), CHOSEN_DIR)
            self.client.set_terminated(self.run_id, "FINISHED")
            self.log(f"tracked: MLflow run {self.run_id} with {len(rows)} row run(s) in {self.uri}")

    def epoch(self, row: dict) -> None:
        """One finished epoch of a fine-tune (its history row): its numbers as metrics at step ``epoch``."""
        with self._guard() as ok:
            if not ok:
                return
            if self.run_id is None:
                self.run_id = self._start("finetune", "finetune", {})
            self._log_epoch(row)

    def _log_epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        if step not in self.steps:
            self._batch(self.run_id, metrics={k: v for k, v in row.items() if k != "epoch"}, step=step)
            self.steps.add(step)

    def log_finetune(self, metrics: dict) -> None:
        """A finished fine-tune: its configuration, the epochs not logged yet (a resumed run), test accuracy, files."""
        with self._guard() as ok:
            if not ok:
                return
            out = Path(metrics["out"])
            if self.run_id is None:
                self.run_id = self._start("finetune", "finetune", {})
            self.client.set_tag(self.run_id, "mlflow.runName", f"finetune {metrics['mode']} {out.name}")
            self.client.set_tag(self.run_id, "transferlab.out", str(out.resolve()))
            self._batch(self.run_id, params=metrics["config"])
            for row in metrics["history"]:
                self._log_epoch(row)
            self._batch(self.run_id, metrics={"best_val_accuracy": metrics.get("val_accuracy"),
                                              "test_accuracy": metrics.get("test_accuracy"),
                                              "best_epoch": metrics.get("best_epoch"),
                                              "epochs_run": metrics.get("epochs_run")})
            for name in ("metrics.json", "model.json"):
                if (out / name).is_file():
                    self.client.log_artifact(self.run_id, str(out / name))
            self.client.set_terminated(self.run_id, "FINISHED")
            self.log(f"tracked: MLflow run {self.run_id} in {self.uri}")

    def __exit__(self, kind, exc, tb):
        """A command that failed or was interrupted leaves its run FAILED or KILLED, not RUNNING."""
        if kind is not None and not self.broken:
            with self._guard():
                self._terminate("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")
        return False
