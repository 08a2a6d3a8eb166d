"""Crash-consistency harness: ``extract``, ``sweep`` and ``finetune`` run as real processes and are
SIGKILLed at seeded random moments while they write; the same command then runs again. Every trial
must end complete and equal to an uninterrupted run (features bit-equal, the same rows with the same
accuracies, fine-tuned weights bit-identical). One trial per writer by default; many with ``-m slow``."""
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, make_npz, run_cli
from transferlab.features.cache import load_split, verify
from transferlab.pipeline.results import read_rows

TRIALS = [pytest.param(1, id="quick"), pytest.param(6, id="many", marks=pytest.mark.slow)]


OUTCOMES: list[str] = []


def kill_at_random(argv, started, window: float, rng: random.Random) -> str:
    """Run ``transferlab ARGV``; once ``started()`` is true, SIGKILL it after U(0, window) s. Returns what happened."""
    what = _kill_at_random(argv, started, window, rng)
    OUTCOMES.append(what)
    return what


def assert_some_were_killed(trials: int, before: int) -> None:
    """With many trials, a harness whose kills all land after the run finished would test nothing."""
    if trials > 1:
        assert "killed" in OUTCOMES[before:], OUTCOMES[before:]


def _kill_at_random(argv, started, window: float, rng: random.Random) -> str:
    proc = subprocess.Popen([sys.executable, "-m", "transferlab", *map(str, argv)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not started() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0, window))
    if proc.poll() is not None:
        return f"finished before the kill (rc {proc.returncode})"
    proc.kill()
    proc.wait()
    return "killed"


@pytest.mark.parametrize("trials", TRIALS)
def test_extract_killed_at_random_moments_resumes_to_the_clean_features(tmp_path, trials):
    npz = make_npz(tmp_path / "d.npz", n_train=160, n_test=16)
    argv = ["extract", "--data", f"npz:{npz}", "--layers", "bn1,blocks.3,bn2", "--image-size", "32", "--batch-size",
            "8", "--quiet"]
    t0 = time.perf_counter()
    # the clean run is a process like the killed ones: same thread count, so the same float rounding
    # (an in-process run inherits whatever thread count earlier tests left behind)
    out = subprocess.run([sys.executable, "-m", "transferlab", *argv, "--cache-dir", str(tmp_path / "clean")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    window = time.perf_counter() - t0
    clean = Path(out.stdout.strip().splitlines()[-1])
    before = len(OUTCOMES)
    for trial in range(trials):
        rng = random.Random(trial)
        cdir = tmp_path / f"t{trial}"
        what = kill_at_random([*argv, "--cache-dir", cdir], lambda: any(cdir.glob("*.writing")), window, rng)
        again = subprocess.run([sys.executable, "-m", "transferlab", *argv, "--cache-dir", str(cdir)], cwd=ROOT,
                               capture_output=True, text=True)
        assert again.returncode == 0, (what, again.stderr)
        path = Path(again.stdout.strip().splitlines()[-1])
        assert verify(path) == [], what
        for split in ("train", "test"):
            for layer in ("bn1", "blocks.3", "bn2"):
                assert np.array_equal(load_split(path, split, layer)[0], load_split(clean, split, layer)[0]), what
    assert_some_were_killed(trials, before)


@pytest.mark.parametrize("trials", TRIALS)
def test_sweep_killed_at_random_moments_finishes_with_the_clean_rows(tmp_path, trials):
    npz = make_npz(tmp_path / "d.npz", n_train=60, n_test=24, size=8)
    argv = ["sweep", "--data", f"npz:{npz}", "--heads", "logreg", "--layers", "bn1,blocks.2,blocks.4,bn2",
            "--image-size", "32", "--n-jobs", "1", "--quiet"]
    t0 = time.perf_counter()
    assert run_cli(*argv, "--out", tmp_path / "clean", "--cache-dir", tmp_path / "cclean").returncode == 0
    window = time.perf_counter() - t0
    clean = {(r["layer"], r["head"]): r["test_accuracy"] for r in read_rows(tmp_path / "clean" / "results.csv")}
    before = len(OUTCOMES)
    for trial in range(trials):
        rng = random.Random(100 + trial)
        out, cdir = tmp_path / f"t{trial}", tmp_path / f"c{trial}"  # the cache is killed too
        what = kill_at_random([*argv, "--out", out, "--cache-dir", cdir],
                              lambda: (out / ".transferlab.lock").exists(), window, rng)
        again = run_cli(*argv, "--out", out, "--cache-dir", cdir)
        assert again.returncode == 0, (what, again.stderr)
        rows = read_rows(out / "results.csv")
        assert len(rows) == len(clean) == 4, what  # complete, no duplicates
        assert {(r["layer"], r["head"]): r["test_accuracy"] for r in rows} == clean, what
        assert len(json.loads((out / "results.json").read_text())["rows"]) == 4
    assert_some_were_killed(trials, before)


@pytest.mark.parametrize("trials", TRIALS)
def test_finetune_killed_at_random_moments_resumes_to_bit_identical_weights(tmp_path, trials):
    npz = make_npz(tmp_path / "d.npz", n_train=48, n_test=8, val=8, size=8)
    argv = ["finetune", "--data", f"npz:{npz}", "--mode", "last:1", "--epochs", "2", "--image-size", "32",
            "--batch-size", "16", "--quiet"]
    t0 = time.perf_counter()
    assert run_cli(*argv, "--out", tmp_path / "clean").returncode == 0
    window = time.perf_counter() - t0
    clean = torch.load(tmp_path / "clean" / "model.pt", weights_only=True)
    clean_metrics = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    before = len(OUTCOMES)
    for trial in range(trials):
        rng = random.Random(200 + trial)
        out = tmp_path / f"t{trial}"
        what = kill_at_random([*argv, "--out", out], lambda: out.is_dir(), window, rng)
        again = run_cli(*argv, "--out", out)
        assert again.returncode == 0, (what, again.stderr)
        weights = torch.load(out / "model.pt", weights_only=True)
        assert all(torch.equal(weights[k], clean[k]) for k in clean), what
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["complete"] and metrics["test_accuracy"] == clean_metrics["test_accuracy"], what
        assert not list(out.glob(".*.tmp"))
    assert_some_were_killed(trials, before)
