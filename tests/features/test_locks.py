"""The results folder's lock: removed again by a run that wrote nothing, never by one that did or did not
create it, and never in a way that lets two processes hold it at once."""
import fcntl
import os
import threading

import pytest

from transferlab.features.locks import exclusive_folder
from transferlab.pipeline.cli import main

LOCK = ".transferlab.lock"


def test_a_refused_sweep_leaves_its_out_folder_without_a_lock_file(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", "--data", f"npz:{tmp_path / 'missing.npz'}", "--out", str(out), "--quiet"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # the refusal came after the lock was taken: no .transferlab.lock left


def test_a_lock_file_this_process_did_not_create_stays(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text("")
    code = main(["sweep", "--data", f"npz:{tmp_path / 'missing.npz'}", "--out", str(out), "--quiet"])
    assert code == 2 and [p.name for p in out.iterdir()] == [LOCK]


@pytest.mark.parametrize("write", ["new file", "appended", "replaced"])
def test_the_lock_file_stays_when_the_run_wrote_into_the_folder(tmp_path, write):
    (tmp_path / "results.csv").write_text("a\n")
    with exclusive_folder(tmp_path):
        assert (tmp_path / LOCK).is_file()
        if write == "new file":
            (tmp_path / "report.md").write_text("x")
        elif write == "appended":
            with open(tmp_path / "results.csv", "a") as fh:
                fh.write("b\n")
        else:
            (tmp_path / "tmp").write_text("a\n")
            os.replace(tmp_path / "tmp", tmp_path / "results.csv")
    assert (tmp_path / LOCK).is_file()


def test_a_run_that_wrote_nothing_removes_the_lock_it_created_even_on_an_error(tmp_path):
    (tmp_path / "results.csv").write_text("a\n")  # there before: not this run's
    with pytest.raises(RuntimeError), exclusive_folder(tmp_path):
        raise RuntimeError("refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_a_waiter_on_a_removed_lock_file_holds_the_file_the_path_names(tmp_path):
    """B opens the lock file and waits; A, which created it and wrote nothing, removes it and lets go. B
    must then hold the lock on the file at the path (so a third process waits), not on the removed one."""
    b_waiting, b_holds, b_may_leave = threading.Event(), threading.Event(), threading.Event()
    errors = []

    def b():
        try:
            with exclusive_folder(tmp_path, notify=lambda m: b_waiting.set(), waiting="waiting"):
                b_holds.set()
                assert b_may_leave.wait(120)
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)
            b_holds.set()

    with exclusive_folder(tmp_path):
        thread = threading.Thread(target=b, daemon=True)
        thread.start()
        assert b_waiting.wait(120), "B never reported waiting for A"
    assert b_holds.wait(120) and not errors, errors
    fd = os.open(tmp_path / LOCK, os.O_RDWR)  # a third taker, through the path
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
        b_may_leave.set()
        thread.join(120)
    assert not errors and not (tmp_path / LOCK).exists()  # B created the new file and wrote nothing
