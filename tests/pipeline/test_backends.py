"""The sweep's parallel backends as a command-line user meets them: a real process, with no dask client in it.

The dask command lines are the ones ``docs/scaling.md`` shows (checked here), run as typed.
"""
import csv
import os
import re
import shlex
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

SWEEP = "transferlab sweep --data digits --layers blocks.3,bn2 --heads logreg --image-size 32 --backend dask --out d"
DOC_ADDRESS = "tcp://scheduler:8786"


def _doc_commands() -> str:
    """docs/scaling.md with its shell continuation lines joined."""
    return re.sub(r"\\\n\s*", "", (ROOT / "docs" / "scaling.md").read_text())


def _transferlab(command: str, cwd, **env):
    """``command`` (starting ``transferlab``) in a fresh interpreter, without any dask setting of ours."""
    argv = shlex.split(command)
    assert argv[0] == "transferlab"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    return subprocess.run([sys.executable, "-m", "transferlab", *argv[1:]], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=900)


def _accuracies(folder):
    with open(folder / "results.csv", newline="") as fh:
        return {(r["layer"], r["head"]): (r["val_accuracy"], r["test_accuracy"]) for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The same command on the default local backend (loky), in this process; it also fills the feature cache."""
    pytest.importorskip("distributed", reason="dask.distributed is not installed: pip install 'transferlab[dask]'")
    cwd = tmp_path_factory.mktemp("loky")
    res = run_cli(*shlex.split(SWEEP.replace(" --backend dask", ""))[1:], "--quiet", cwd=cwd)
    assert res.returncode == 0, res.stderr
    rows = _accuracies(cwd / "d")
    assert set(rows) == {("blocks.3", "logreg"), ("bn2", "logreg")}
    return rows


def test_the_docs_show_the_dask_commands_these_tests_run():
    doc = _doc_commands()
    assert f"\n{SWEEP}\n" in doc
    assert f"\nDASK_SCHEDULER_ADDRESS={DOC_ADDRESS} {SWEEP}\n" in doc


def test_dask_without_a_client_or_address_starts_a_local_cluster_with_the_local_rows(local_sweep, tmp_path):
    res = _transferlab(SWEEP, tmp_path)
    assert res.returncode == 0, res.stderr
    note = [line for line in res.stderr.splitlines() if "dask" in line]
    assert len(note) == 1 and "started a local cluster of" in note[0], res.stderr
    assert "Traceback" not in res.stderr
    assert _accuracies(tmp_path / "d") == local_sweep


def test_dask_scheduler_address_runs_the_fits_on_that_cluster_with_the_local_rows(local_sweep, tmp_path):
    from distributed import Client, LocalCluster, get_task_stream

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      scheduler_port=0) as cluster, Client(cluster) as client:
        with get_task_stream(client) as stream:
            res = _transferlab(SWEEP, tmp_path, DASK_SCHEDULER_ADDRESS=cluster.scheduler_address)
        ran_on = {t["worker"] for t in stream.data}
        workers = set(cluster.scheduler_info["workers"])
    assert res.returncode == 0, res.stderr
    assert "local cluster" not in res.stderr and "Traceback" not in res.stderr
    assert ran_on and ran_on <= workers  # the fits ran on the test's cluster, which the subprocess found by address
    assert _accuracies(tmp_path / "d") == local_sweep


def test_an_unreachable_dask_scheduler_is_one_line_exit_2(local_sweep, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    res = _transferlab(SWEEP, tmp_path, DASK_SCHEDULER_ADDRESS=address)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: cannot connect to the dask scheduler at {address}")
    assert len(res.stderr.strip().splitlines()) == 1 and "DASK_SCHEDULER_ADDRESS" in res.stderr
    assert not (tmp_path / "d" / "results.csv").exists() and not (tmp_path / "d" / "report.md").exists()
