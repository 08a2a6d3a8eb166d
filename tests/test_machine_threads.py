"""The thread count a command takes on a busy machine (transferlab.util.threads_for_machine / machine_threads)."""
import os
import subprocess
import sys

import pytest
import torch

import transferlab.util as util
from transferlab.pipeline import cli


@pytest.mark.parametrize("others, cores, want", [
    (0, 2, None), (0.4, 2, None),  # every core free: torch's default
    (0.6, 2, 1), (1, 2, 1), (5, 2, 1),  # one core or less free: one thread, never zero
    (1, 8, 7), (2.5, 8, 6), (7, 8, 1), (3, 1, None),
])
def test_one_thread_per_core_the_others_leave_free(others, cores, want):
    got, why = util.threads_for_machine(others, cores, environ={})
    assert got == want
    assert (why == "") == (want is None)
    if want:
        assert why.startswith(f"{want} thread") and f"{cores} cores" in why and "OMP_NUM_THREADS" in why


@pytest.mark.parametrize("var", util.THREAD_VARS)
def test_a_thread_count_the_user_set_is_theirs(var):
    assert util.threads_for_machine(5, 2, environ={var: "2"}) == (None, "")


def test_other_runnable_reads_the_kernels_count_less_this_process(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nprocs_running 4\nprocs_blocked 0\n")
    assert util.other_runnable(samples=3, gap=0, stat=str(stat)) == 3
    stat.write_text("procs_running 1\n")
    assert util.other_runnable(samples=1, stat=str(stat)) == 0
    assert util.other_runnable(stat=str(tmp_path / "absent")) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the runnable count is Linux's /proc/stat")
def test_a_spinning_process_is_seen():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        while not (util.other_runnable() or 0) >= 1:  # wait for the event: the spinner scheduled
            assert spin.poll() is None
    finally:
        spin.kill()
        spin.wait()


def _record(seen):
    def cmd(a):
        seen.update(torch=torch.get_num_threads(), env={v: os.environ.get(v) for v in util.THREAD_VARS})
    return cmd


def test_a_command_on_a_busy_machine_runs_on_the_free_core_and_says_so(monkeypatch, capsys):
    for v in util.THREAD_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(util, "other_runnable", lambda: 3.0)
    monkeypatch.setattr(util, "_cores", lambda: 2)
    seen = {}
    monkeypatch.setattr(cli, "cmd_train", _record(seen))
    before = torch.get_num_threads()
    assert cli.main(["train", "--features", "f.h5", "--layer", "bn2"]) == 0
    assert seen == {"torch": 1, "env": {v: "1" for v in util.THREAD_VARS}}
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("train: ") and err[1].startswith("note: 1 thread for torch and BLAS: 3 thread(s)")
    assert torch.get_num_threads() == before and not any(os.environ.get(v) for v in util.THREAD_VARS)

    seen.clear()  # --quiet: the same count, no line
    assert cli.main(["train", "--features", "f.h5", "--layer", "bn2", "--quiet"]) == 0
    assert seen["torch"] == 1 and capsys.readouterr().err == ""


def test_a_command_leaves_the_users_thread_count_alone(monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(util, "other_runnable", lambda: 3.0)
    seen = {}
    monkeypatch.setattr(cli, "cmd_train", _record(seen))
    before = torch.get_num_threads()
    assert cli.main(["train", "--features", "f.h5", "--layer", "bn2"]) == 0
    assert seen["torch"] == before and "note:" not in capsys.readouterr().err
