"""Peer: thingsvision 2.7.3 (the extractor practitioners use) against TransferLab on the same PNG folder,
model (lite0, the same ImageNet weights), layers and input size; time, peak memory, file size.

thingsvision runs in its own interpreter (``TV_PYTHON``, default ``/tmp/tv-venv/bin/python``, made by
``bench/peers/thingsvision/env.sh``) with the ``tensorflow`` stub in ``tf_stub/`` beside this file; without it the
section is skipped with that reason.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from common import ROOT, WORK, Skip, child, figure, png_folder

HERE = Path(__file__).resolve().parent
LAYERS = "bn1,blocks.0,blocks.1,blocks.2,blocks.3,blocks.4,blocks.5,blocks.6,bn2"


def thingsvision(quick: bool) -> list:
    import torch

    from transferlab.features import build_backbone

    python = os.environ.get("TV_PYTHON", "/tmp/tv-venv/bin/python")
    if not Path(python).is_file():
        raise Skip(f"thingsvision's interpreter {python} not found: run bash bench/peers/thingsvision/env.sh")
    n_train, n_test = (400, 100) if quick else (1600, 400)
    png, _ = png_folder(n_train, n_test)
    weights = WORK / "lite0_timm_state_dict.pt"
    if not weights.is_file():
        torch.save(build_backbone("lite0").model.state_dict(), weights)
    env = {"PYTHONPATH": str(HERE / "tf_stub")}
    rows = []
    for label, layers in (("9 layers", LAYERS), ("last layer only", "bn2")):
        tv = {"seconds": 0.0, "bytes": 0, "maxrss_mb": 0.0}
        for split in ("train", "test"):  # thingsvision reads one folder of class folders per call
            scratch = WORK / f"tv-{uuid.uuid4().hex[:8]}"
            out = child([HERE / "child.py", png / split, weights, 64, layers, scratch],
                        python=python, env=env)
            shutil.rmtree(scratch, ignore_errors=True)
            tv = {"seconds": tv["seconds"] + out["seconds"], "bytes": tv["bytes"] + out["bytes"],
                  "maxrss_mb": max(tv["maxrss_mb"], out["maxrss_mb"])}
        scratch = WORK / f"cache-{uuid.uuid4().hex[:8]}"
        ours = child([ROOT / "bench" / "run.py", "--child-extract", f"folder:{png}", 64, scratch,
                      "all" if layers == LAYERS else layers, ""])
        shutil.rmtree(scratch, ignore_errors=True)
        rows.append(figure(
            f"thingsvision 2.7.3 peer, {n_train + n_test} PNG files at 64 px, lite0, {label} (time ratio)",
            f"{ours['seconds']:.1f} s, {ours['maxrss_mb']:.0f} MB, {ours['bytes'] / 1e6:.1f} MB file (float16)",
            f"{tv['seconds']:.1f} s, {tv['maxrss_mb']:.0f} MB, {tv['bytes'] / 1e6:.1f} MB files (float32, full "
            f"maps pooled after)", ours["seconds"] / tv["seconds"], "report",
            memory_ratio=round(ours["maxrss_mb"] / tv["maxrss_mb"], 3), seconds=ours["seconds"],
            peer_seconds=tv["seconds"]))
    return rows
