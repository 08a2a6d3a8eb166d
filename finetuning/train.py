"""The fine-tuning loop: batches, augmentation, one epoch of training, evaluation, checkpoints.

Batches are pixel values 0..255 (B,3,H,W), in memory (indexed, uint8) or decoded from image files by a
DataLoader; augmentation and normalisation run on the whole batch on the compute device.
Shuffling and augmentation draw from a generator seeded by ``(seed, epoch)``, so an epoch is the
same whether or not the run was interrupted before it; the global RNGs (dropout and the like) are
saved in the checkpoint.

Checkpoint (``checkpoint.pt``, written to a temporary file and then ``os.replace``\\ d, so an
interruption leaves the previous one intact): model, optimizer, scheduler and grad-scaler states,
RNG states of torch (CPU and CUDA), numpy and python, the number of finished epochs, the best
validation accuracy with its epoch and weights, the early-stopping counter, the per-epoch history
and the key of the configuration it belongs to. It loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from transferlab.features.preprocess import (
    ImageFiles,
    interpolation_mode,
    normalize_batch,
    to_rgb_uint8,
    worker_batches,
)
from transferlab.util import UserInputError, atomic_write

CHECKPOINT_FORMAT = 1
CHECKPOINT_KEYS = ("format", "config_key", "epoch", "model", "optimizer", "scheduler", "scaler", "rng",
                   "best_val", "best_epoch", "best_state", "bad_epochs", "stopped", "history")
CROP_SCALE = (0.25, 1.0)  # random resized crop: area fraction (wider floor than ImageNet's 0.08: small images)
CROP_RATIO = (3 / 4, 4 / 3)


# --- data -----------------------------------------------------------------------------------------

@dataclass
class SplitData:
    """Labels with either in-memory uint8 (N,3,H,W) images or image file paths."""

    labels: np.ndarray
    images: torch.Tensor | None = None
    paths: list | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_split(cls, split, idx=None) -> "SplitData":
        idx = np.arange(len(split)) if idx is None else np.asarray(idx)
        if split.in_memory:
            imgs = torch.from_numpy(np.ascontiguousarray(to_rgb_uint8(split.images[idx]))).permute(0, 3, 1, 2)
            return cls(split.labels[idx], images=imgs.contiguous())
        return cls(split.labels[idx], paths=[split.paths[i] for i in idx])

    def batches(self, order, batch_size: int, image_size: int, interpolation: str, num_workers: int = 0):
        """Yield ``(images (B,3,H,W), int64 labels (B,))`` in ``order``.

        Images hold pixel values 0..255: uint8 at their own size when in memory, float resized to
        ``image_size`` (by :class:`features.preprocess.ImageFiles`, mean 0, std 1/255) from files.
        """
        order = np.asarray(order)
        labels = torch.from_numpy(self.labels)
        if self.images is not None:
            for s in range(0, len(order), batch_size):
                idx = torch.from_numpy(order[s:s + batch_size])
                yield self.images[idx], labels[idx]
            return
        files = ImageFiles(self.paths, image_size, (0.0, 0.0, 0.0), (1 / 255,) * 3, interpolation)
        ds = torch.utils.data.Subset(files, order.tolist())
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for s, x in zip(range(0, len(order), batch_size), worker_batches(loader)):
            yield x, labels[torch.from_numpy(order[s:s + batch_size])]


def random_resized_crop_flip(x: torch.Tensor, size: int, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Pixels 0..255 (B,3,H,W) -> float (B,3,size,size) in [0,1]: a random crop per image, resized, maybe mirrored.

    One ``affine_grid``/``grid_sample`` call does every crop of the batch; crop parameters come
    from ``gen`` (CPU), so they do not depend on the device.
    """
    b = x.shape[0]
    x = x.float().div_(255.0)
    if x.shape[-1] > size or x.shape[-2] > size:  # shrink first (antialiased) so the crop does not alias
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    area = torch.empty(b).uniform_(*CROP_SCALE, generator=gen)
    ratio = torch.exp(torch.empty(b).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=gen))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * (1 - w) + w / 2) * 2 - 1
    cy = (torch.rand(b, generator=gen) * (1 - h) + h / 2) * 2 - 1
    sign = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    grid = F.affine_grid(theta.to(x.device), [b, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


# --- RNG state --------------------------------------------------------------------------------------

def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                                                        "pos": int(pos), "has_gauss": int(has_gauss),
                                                        "cached": float(cached)},
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- checkpoints ------------------------------------------------------------------------------------

def save_checkpoint(path: Path, payload: dict) -> None:
    """Write the checkpoint atomically (temporary file, fsync, ``os.replace``)."""
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: Path) -> dict:
    """Read a whole checkpoint or raise a one-line UserInputError; nothing is applied here."""
    fix = f"delete {path} or pass --overwrite to start the run again"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserInputError(f"checkpoint {path} is corrupt or unreadable ({exc.__class__.__name__}); {fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserInputError(f"checkpoint {path} is not a TransferLab fine-tuning checkpoint (format "
                             f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__}); {fix}")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise UserInputError(f"checkpoint {path} lacks {', '.join(missing)}; {fix}")
    return ckpt


# --- the loop ---------------------------------------------------------------------------------------

class Trainer:
    """Trains a :class:`~pipeline.finetune_model.FinetuneModel` epoch by epoch; owns its optimizer state."""

    def __init__(self, fm, optimizer, scheduler, cfg: dict, device: torch.device, train: SplitData,
                 val: SplitData | None, test: SplitData, num_workers: int = 0, progress: bool = True):
        self.fm, self.model, self.optimizer, self.scheduler = fm, fm.model, optimizer, scheduler
        self.cfg, self.device, self.progress, self.num_workers = cfg, device, progress, num_workers
        self.train, self.val, self.test = train, val, test
        self.mean, self.std = fm.backbone.mean, fm.backbone.std
        self.interpolation = interpolation_mode(fm.backbone.interpolation)
        amp = cfg["amp"]
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
        self.channels_last = bool(cfg["channels_last"])
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def _inputs(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        size = self.cfg["image_size"]
        x = x.to(self.device, non_blocking=True)
        if gen is not None:
            x = random_resized_crop_flip(x, size, gen)
            m = torch.as_tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            s = torch.as_tensor(self.std, device=x.device).view(1, -1, 1, 1)
            x = (x - m) / s
        else:
            x = normalize_batch(x, size, self.mean, self.std, self.interpolation)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def steps_per_epoch(self) -> int:
        return math.ceil(math.ceil(len(self.train) / self.cfg["batch_size"]) / self.cfg["accumulate"])

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training split; ``epoch`` is 1-based. Returns loss, accuracy, seconds."""
        cfg, t0 = self.cfg, time.perf_counter()
        gen = epoch_generator(cfg["seed"], epoch)
        order = torch.randperm(len(self.train), generator=gen).numpy()
        n_batches = math.ceil(len(order) / cfg["batch_size"])
        k = cfg["accumulate"]
        self.fm.train_mode()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(self.train.batches(order, cfg["batch_size"], cfg["image_size"], self.interpolation,
                                      self.num_workers), total=n_batches, desc=f"epoch {epoch}/{cfg['epochs']}",
                   leave=False, disable=not self.progress, unit="batch")
        for i, (x, y) in enumerate(bar):
            x = self._inputs(x, gen if cfg["augment"] else None)
            y = y.to(self.device)
            group_start = (i // k) * k
            group_size = min(k, n_batches - group_start)  # the last group may be short
            with self._autocast():
                logits = self.model(x)
                loss = self.loss_fn(logits.float(), y)
            self.scaler.scale(loss / group_size).backward()
            if i - group_start == group_size - 1:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        return {"train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
                "train_seconds": time.perf_counter() - t0}

    @torch.inference_mode()
    def evaluate(self, data: SplitData, desc: str) -> float:
        self.model.eval()
        order = np.arange(len(data))
        correct = 0
        bar = tqdm(data.batches(order, self.cfg["batch_size"], self.cfg["image_size"], self.interpolation,
                                self.num_workers), total=math.ceil(len(order) / self.cfg["batch_size"]),
                   desc=desc, leave=False, disable=not self.progress, unit="batch")
        for x, y in bar:
            with self._autocast():
                logits = self.model(self._inputs(x, None))
            correct += int((logits.argmax(1).cpu() == y).sum())
        bar.close()
        return correct / max(1, len(data))

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state(self, ckpt: dict) -> None:
        """Apply a checkpoint read by :func:`load_checkpoint`; a mismatch is a UserInputError."""
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt["scaler"]:
                self.scaler.load_state_dict(ckpt["scaler"])
        except Exception as exc:
            raise UserInputError(f"checkpoint does not fit this model ({exc.__class__.__name__}); delete it or "
                                 f"pass --overwrite") from None
