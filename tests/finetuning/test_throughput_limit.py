"""bench/finetune_throughput.py's limit is the Trainer's own computation: one epoch of its plain PyTorch loop
and one epoch of :class:`transferlab.finetuning.train.Trainer`, from the same model, optimizer, batches and
augmentation, end with the same weights, bit for bit (so the images/s ratio compares overhead, not work)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bench.finetune_throughput as ft  # noqa: E402
from transferlab.finetuning.train import SplitData, Trainer  # noqa: E402

SIZE, BATCH, BATCHES = 32, 8, 2


@pytest.mark.parametrize("mode", ft.MODES)
def test_the_plain_loop_and_the_trainer_train_to_the_same_weights(mode):
    n = BATCH * BATCHES
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = np.arange(n) % ft.NUM_CLASSES
    fm, opt, sched = ft.build(mode, SIZE, 1, BATCHES)
    plain = ft.build(mode, SIZE, 1, BATCHES)
    start = {k: v.clone() for k, v in fm.model.state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in plain[0].model.state_dict().items())
    cfg = {"image_size": SIZE, "batch_size": BATCH, "accumulate": 1, "seed": 0, "augment": True, "epochs": 1,
           "amp": "off", "channels_last": False, "label_smoothing": 0.0}
    data = SplitData(labels, images=images)
    torch.manual_seed(0)  # dropout draws from the global generator: the same draws on both sides
    Trainer(fm, opt, sched, cfg, torch.device("cpu"), data, None, data, progress=False).train_epoch(1)
    frozen = 0 if mode == "full" else sum(1 for g in fm.catalog_groups
                                          if g.startswith("blocks.") and g not in fm.trainable_groups)
    torch.manual_seed(0)
    ft.plain_epoch(*plain, images, torch.from_numpy(labels), BATCH, SIZE, 0, 1, frozen)
    trained, other = fm.model.state_dict(), plain[0].model.state_dict()
    assert any(not torch.equal(start[k], v) for k, v in trained.items())  # the epoch did train
    differ = [k for k, v in trained.items() if not torch.equal(v, other[k])]
    assert differ == []
