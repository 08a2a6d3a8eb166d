"""``--track mlflow``: the sweep and the fine-tune read back from a local MLflow file store, offline."""
import csv
import json
import os
import sys

import pytest

from tests.conftest import make_npz, run_cli
from transferlab.pipeline.tracking import INSTALL


def _client(uri: str, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the reader's own opt-in (MLflow 3 refuses a file store)
    return MlflowClient(tracking_uri=uri)


def _runs(client, command: str):
    exp = client.get_experiment_by_name("transferlab")
    return client.search_runs([exp.experiment_id], f"tags.`transferlab.command` = '{command}'")


def _csv_rows(out):
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def store(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI at a file store in tmp; the file-store opt-in left unset, as a user has it."""
    pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    return uri


@pytest.fixture(scope="module")
def digits_sweep(tmp_path_factory):
    """The command as a user types it, run once for the module."""
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("tracked")
    uri = (tmp / "mlruns").as_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for name in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            mp.delenv(name, raising=False)
        res = run_cli("sweep", "--data", "digits", "--layers", "bn2", "--heads", "logreg", "--out", tmp / "out",
                      "--track", "mlflow")
        leftover = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    return res, tmp / "out", uri, leftover


def test_tracked_sweep_reads_back_rows_decision_report_and_chosen_head(digits_sweep, monkeypatch):
    res, out, uri, leftover = digits_sweep
    assert res.returncode == 0, res.stderr
    assert leftover is None  # the file-store opt-in was set for the calls only
    client = _client(uri, monkeypatch)
    (parent,) = [r for r in _runs(client, "sweep") if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in _runs(client, "sweep") if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    summary = json.loads((out / "results.json").read_text())
    rows = _csv_rows(out)
    assert parent.info.status == "FINISHED" and f"tracked: MLflow run {parent.info.run_id}" in res.stderr
    assert parent.data.params["heads"] == "logreg" and parent.data.params["layers"] == "bn2"
    assert parent.data.params["data"] == summary["config"]["data"] == "digits"
    assert parent.data.tags["transferlab.strategy"] == summary["decision"]["strategy"]
    assert parent.data.tags["transferlab.chosen_layer"] == summary["decision"]["chosen_layer"] == "bn2"
    assert parent.data.tags["transferlab.chosen_head"] == "logreg"
    # one child run per results.csv row, its metrics those of the row
    assert sorted(c.data.tags["transferlab.row_key"] for c in children) == sorted(r["row_key"] for r in rows)
    for c in children:
        (row,) = [r for r in rows if r["row_key"] == c.data.tags["transferlab.row_key"]]
        assert c.info.status == "FINISHED"
        for k in ("val_accuracy", "test_accuracy", "depth", "rel_depth", "n_train", "n_val"):
            assert c.data.metrics[k] == float(row[k]), k
        assert {k: c.data.params[k] for k in ("layer", "head", "backbone")} == \
            {k: row[k] for k in ("layer", "head", "backbone")}
    assert parent.data.metrics["chosen_test_accuracy"] == float(rows[0]["test_accuracy"])
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.json", "report.md", "report.html", "depth_vs_accuracy.png",
            "decision.json", "chosen_head"} <= top
    head = {a.path for a in client.list_artifacts(parent.info.run_id, "chosen_head")}
    assert head == {f"chosen_head/{p.name}" for p in (out / "chosen_head").iterdir()}
    local = client.download_artifacts(parent.info.run_id, "report.md", str(out.parent / "back"))
    assert open(local).read() == (out / "report.md").read_text()
    decision = json.loads(open(client.download_artifacts(parent.info.run_id, "decision.json",
                                                         str(out.parent / "back"))).read())
    assert decision["strategy"] == summary["decision"]["strategy"]


def test_tracked_finetune_logs_every_epoch_as_metrics_json_has_it(tmp_path, store, monkeypatch):
    npz = make_npz(tmp_path / "d.npz", n_train=30, n_test=12, size=16)
    res = run_cli("finetune", "--data", f"npz:{npz}", "--mode", "head", "--epochs", "2", "--image-size", "32",
                  "--batch-size", "16", "--out", tmp_path / "ft", "--track", "mlflow")
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    client = _client(store, monkeypatch)
    (run,) = _runs(client, "finetune")
    assert run.info.status == "FINISHED"
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("train_loss", "train_accuracy", "val_accuracy", "lr_end", "seconds"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert logged == [(h["epoch"], h[key]) for h in history], key
    assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert run.data.metrics["best_val_accuracy"] == metrics["val_accuracy"]
    assert run.data.params["mode"] == "head" and run.data.params["epochs"] == "2"
    assert run.data.params["lr"] == str(metrics["config"]["lr"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.json", "model.json"}


def test_default_location_is_mlruns_in_the_working_directory(tmp_path, store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    npz = make_npz(tmp_path / "d.npz", n_train=30, n_test=12, size=16)
    res = run_cli("finetune", "--data", f"npz:{npz}", "--mode", "head", "--epochs", "1", "--image-size", "32",
                  "--batch-size", "16", "--out", tmp_path / "ft", "--track", "mlflow", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    client = _client((tmp_path / "mlruns").as_uri(), monkeypatch)
    assert len(_runs(client, "finetune")) == 1


def test_a_tracking_failure_is_one_warning_and_the_results_stand(tmp_path, store, monkeypatch):
    from mlflow import MlflowClient

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MlflowClient, "log_artifact", refuse)
    npz = make_npz(tmp_path / "d.npz", n_train=60, n_test=30, size=16)
    out = tmp_path / "run"
    res = run_cli("sweep", "--data", f"npz:{npz}", "--layers", "bn2", "--heads", "logreg", "--image-size", "32",
                  "--out", out, "--workers", "1", "--track", "mlflow", "--quiet")
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: tracking in MLflow") and "No space" in warnings[0]
    assert "Traceback" not in res.stderr and "wrote" in res.stdout
    assert len(_csv_rows(out)) == 1 and (out / "report.html").is_file()
    client = _client(store, monkeypatch)
    (parent,) = [r for r in _runs(client, "sweep") if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"  # an incomplete record says so


def test_an_unusable_tracking_location_is_refused_before_any_work(tmp_path, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://x")
    res = run_cli("sweep", "--data", "digits", "--out", tmp_path / "out", "--track", "mlflow")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --track mlflow cannot use the tracking location nosuchscheme://x")
    assert not (tmp_path / "out").exists()


def test_track_without_mlflow_is_one_line_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    npz = make_npz(tmp_path / "d.npz", n_train=30, n_test=12, size=16)
    for argv in (["sweep", "--data", "digits", "--layers", "bn2", "--heads", "logreg", "--out", tmp_path / "out"],
                 ["finetune", "--data", f"npz:{npz}", "--mode", "head", "--epochs", "1", "--out", tmp_path / "out"]):
        res = run_cli(*argv, "--track", "mlflow")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
        assert errors == [res.stderr.strip().splitlines()[-1]]
        assert errors[0] == f"error: --track mlflow needs MLflow, which is not installed: {INSTALL}"
        assert INSTALL == "pip install 'transferlab[track]'"
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stop, code, status", [(OSError(28, "No space left on device"), 2, "FAILED"),
                                                (KeyboardInterrupt(), 130, "KILLED")])
def test_a_finetune_stopped_after_tracked_epochs_ends_its_run_failed_or_killed(tmp_path, store, monkeypatch, stop,
                                                                               code, status):
    import transferlab.finetuning.run as run

    def stopped(*args, **kwargs):
        raise stop

    monkeypatch.setattr(run, "save_finetuned", stopped)  # the final write, after the epochs
    npz = make_npz(tmp_path / "d.npz", n_train=30, n_test=12, size=16)
    res = run_cli("finetune", "--data", f"npz:{npz}", "--mode", "head", "--epochs", "1", "--image-size", "32",
                  "--batch-size", "16", "--out", tmp_path / "ft", "--track", "mlflow", "--quiet")
    assert res.returncode == code, res.stderr
    client = _client(store, monkeypatch)
    (tracked,) = _runs(client, "finetune")
    assert tracked.info.status == status  # not left RUNNING, not FINISHED
    assert [m.step for m in client.get_metric_history(tracked.info.run_id, "train_loss")] == [1]  # logged live
