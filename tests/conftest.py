import os
from pathlib import Path

import numpy as np
import pytest
import torch

# a fixed thread count, in this process and the commands the tests start, so no command adds its
# "note: N threads ..." line on a busy machine (tests/test_machine_threads.py clears it to test that): the
# user's OMP_NUM_THREADS where set, else two. The same in both, since a test may compare the bits of a
# forward pass run here with one run in a child (a convolution's sums differ with the thread count).
_threads = os.environ.get("OMP_NUM_THREADS", "")
torch.set_num_threads(int(_threads) if _threads.isdigit() and int(_threads) > 0 else min(2, os.cpu_count() or 1))
os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def make_npz(path: Path, n_train=48, n_test=24, size=16, n_classes=3, seed=0, grey=False, val=0) -> Path:
    """Class-dependent random images: class c has a brighter band in row block c."""
    rng = np.random.default_rng(seed)

    def draw(n):
        y = np.arange(n) % n_classes
        shape = (n, size, size) if grey else (n, size, size, 3)
        x = rng.integers(0, 120, size=shape, dtype=np.uint8)
        band = size // n_classes
        for i, c in enumerate(y):
            x[i, c * band:(c + 1) * band] += 120
        return x, y.astype(np.int64)

    arrays = {}
    for split, n in (("train", n_train), ("test", n_test), ("val", val)):
        if n:
            arrays[f"x_{split}"], arrays[f"y_{split}"] = draw(n)
    arrays["class_names"] = np.array([f"class{c}" for c in range(n_classes)])
    np.savez(path, **arrays)
    return path


@pytest.fixture(autouse=True, scope="session")
def _data_root_in_tmp(tmp_path_factory):
    """Tests never write into the user's cache folder: the default data root is a session temp dir."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRANSFERLAB_DATA", str(tmp_path_factory.mktemp("transferlab_data")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _one_voice_on_every_sweep(tmp_path_factory):
    """After the last test: every finished sweep the suite wrote names one layer and head in its decision,
    chosen_head/, report.md and report.html (tests/one_voice.py); a disagreement fails the run."""
    yield
    from tests.one_voice import every_problem

    found = every_problem(tmp_path_factory.getbasetemp())
    assert not found, "sweeps that do not speak with one voice:\n" + "\n".join(found)


@pytest.fixture
def tiny_npz(tmp_path):
    return make_npz(tmp_path / "tiny.npz")


@pytest.fixture(scope="session")
def lite0():
    from transferlab.features import build_backbone

    return build_backbone("lite0")


def write_pngs(images: np.ndarray, folder: Path, prefix: str = "img") -> list[Path]:
    """Save uint8 images as lossless PNG files, in order; returns their paths."""
    from PIL import Image

    paths = []
    for i, img in enumerate(images):
        paths.append(folder / f"{prefix}{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


from tests.cache_fixtures import cache_no_val, cache_with_val, cache_writer, digits_arrays, split_data  # noqa: E402,F401


class CliResult:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_cli(*args, cwd=None) -> CliResult:
    """Run ``transferlab ARGS`` in this process through ``main(argv)``; output captured, exit code returned.

    Tests use a subprocess only where a real process is the point (kill -9, locks, ``python -m``).
    """
    import contextlib
    import io

    from transferlab.pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(old)
    return CliResult(code, out.getvalue(), err.getvalue())


def refusal_lines(out) -> list[str]:
    """stderr's lines after the command's first line (its plan, :data:`transferlab.pipeline.cli.PLANS`, printed
    before the work starts): what a refusal must reduce to, one ``error:`` line."""
    from transferlab.pipeline.cli import PLANS

    lines = out.stderr.strip().splitlines()
    return lines[1:] if lines and lines[0].startswith(tuple(f"{c}: " for c in PLANS)) else lines


def headless_browser() -> "str | None":
    """The path of a headless-capable Chromium on this machine, or None (the report tests that render skip)."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None
