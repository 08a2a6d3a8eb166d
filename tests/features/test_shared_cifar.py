"""Integration check on real data: CIFAR-10 (small) features from the CLI equal a forward hook."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.conftest import ROOT, SHARED_DATA
from tests.features.test_extract import LAYERS, _hook_features

CIFAR = SHARED_DATA / "cifar10_small.npz"


@pytest.mark.skipif(not CIFAR.is_file(), reason=f"{CIFAR} absent (shared data not laid out here)")
def test_cli_extract_on_cifar10_small_matches_hooks_on_timm_lite0(tmp_path, lite0):
    out = subprocess.run([sys.executable, "-m", "transferlab", "extract", "--data", f"npz:{CIFAR}",
                          "--image-size", "32",
                          "--dtype", "float32", "--cache-dir", str(tmp_path), "--quiet", "--batch-size", "250"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip().splitlines()[-1]
    data = np.load(CIFAR)
    rng = np.random.default_rng(0)
    with h5py.File(path, "r") as f:
        assert len(f["train/features/bn2"]) == 5000 and len(f["test/features/bn2"]) == 1000
        for split in ("train", "test"):
            rows = np.sort(rng.choice(len(data[f"y_{split}"]), 64, replace=False))
            ref = _hook_features(lite0.model, data[f"x_{split}"][rows], 32, LAYERS, "gap")
            for layer in LAYERS:
                got = f[f"{split}/features/{layer}"][rows]
                assert np.abs(got - ref[layer]).max() / np.abs(ref[layer]).max() < 1e-3, (split, layer)
