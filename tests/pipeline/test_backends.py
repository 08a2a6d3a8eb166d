"""The sweep's parallel backends as a command-line user meets them: a real process, with no dask client in it.

The dask command lines are the ones ``docs/scaling.md`` shows (checked here), run as typed.
"""
import csv
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, make_npz, run_cli

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
    # the sweep's first line and its image-size line, then the one error line, no traceback
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot connect to the dask scheduler at {address}")
    assert [l for l in lines if not l.startswith(("sweep: ", "image size: "))] == lines[-1:]
    assert "DASK_SCHEDULER_ADDRESS" in lines[-1]
    assert not (tmp_path / "d" / "results.csv").exists() and not (tmp_path / "d" / "report.md").exists()


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(proc) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_shuts_the_sweeps_worker_processes_down(tmp_path, signum, status):
    """A sweep stopped during its fits takes its loky workers with it (after SIGTERM they outlived it by minutes).

    It ends as it would have otherwise: killed by SIGTERM; after Ctrl-C, the CLI's "interrupted" and 130.
    """
    psutil = pytest.importorskip("psutil", reason="psutil is not installed (it comes with the test extra's dask)")
    npz = make_npz(tmp_path / "d.npz", n_train=60, n_test=30, size=16)
    args = ["sweep", "--data", f"npz:{npz}", "--backbone", "lite0", "--weights", "random", "--layers", "all",
            "--heads", "logreg,knn", "--image-size", "32", "--workers", "2", "--out", tmp_path / "out", "--quiet"]
    err = open(tmp_path / "stderr", "w+")  # a file: a leaked worker would hold a pipe open
    sweep = subprocess.Popen([sys.executable, "-m", "transferlab", *map(str, args)], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=err,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    main, children = psutil.Process(sweep.pid), []
    try:
        while not any("LokyProcess" in _cmdline(p) for p in children):  # the fits start once loky's workers exist
            assert sweep.poll() is None, "the sweep ended before its worker processes started"
            time.sleep(0.05)
            children = main.children(recursive=True)  # the workers and loky's resource tracker
        sweep.send_signal(signum)
        assert sweep.wait(timeout=120) == status, (tmp_path / "stderr").read_text()
        deadline = time.monotonic() + 60
        while any(map(_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [_cmdline(p)[:120] for p in children if _alive(p)]
        assert not left, f"still running after the sweep was terminated: {left}"
    finally:
        err.close()
        for p in [main, *children]:
            if _alive(p):
                p.kill()
