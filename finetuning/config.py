"""The fine-tuning configuration: one dataclass, its defaults written once, checked once.

The CLI builds a :class:`FinetuneConfig` from its flags (whose defaults it reads from here), a
``--config`` file fills the same fields, and :func:`transferlab.finetuning.finetune` takes it whole.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from transferlab.features.spec import parse_image_size
from transferlab.util import UserInputError

MODES_HELP = "head, last:N (N >= 1), full or scratch"


@dataclass(frozen=True)
class Mode:
    """A parsed ``--mode``: ``kind`` is head, last, full or scratch; ``n`` the group count of last:N."""

    kind: str
    n: int = 0

    @property
    def name(self) -> str:
        return f"last:{self.n}" if self.kind == "last" else self.kind

    @property
    def pretrained(self) -> bool:
        return self.kind != "scratch"


def parse_mode(mode: "str | Mode") -> Mode:
    """Parse ``head``, ``last:N``, ``full`` or ``scratch``.

    Examples
    --------
    >>> parse_mode("last:2")
    Mode(kind='last', n=2)
    >>> parse_mode("last:2").name
    'last:2'
    """
    if isinstance(mode, Mode):
        return mode
    text = str(mode).strip().lower()
    if text in ("head", "full", "scratch"):
        return Mode(text)
    kind, sep, rest = text.partition(":")
    if kind == "last" and sep:
        try:
            n = int(rest)
        except ValueError:
            n = 0
        if n < 1:
            raise UserInputError(f"mode '{mode}' needs a whole number of groups N >= 1 after 'last:' (e.g. last:2)")
        return Mode("last", n)
    raise UserInputError(f"unknown fine-tuning mode '{mode}'; use {MODES_HELP}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserInputError(message)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class FinetuneConfig:
    """Everything that decides a fine-tuning run (see :func:`transferlab.finetuning.finetune`).

    Parameters
    ----------
    data : str or Dataset
        A data spec (``digits``, ``npz:PATH``, ``folder:PATH``, ``torchvision:NAME``).
    backbone, weights : str
        As for ``build_backbone``; ``scratch`` always uses the architecture's random initialisation.
    mode : str
        ``head``, ``last:N``, ``full`` or ``scratch``.
    out : path, optional
        Run directory (default ``runs/finetune_<data>_<backbone>_<mode>``).
    epochs : int
        Requested epochs; the cosine schedule spans exactly these.
    lr : float, optional
        Peak learning rate of the classifier; default per mode and optimizer.
    image_size : int or ``"auto"``
        Input side: ``auto`` (default, like the sweep: the data's median shorter side within 64 px..the
        backbone's own, :func:`transferlab.features.spec.resolve_image_size`), pixels, or 0 = the backbone's own.
    weight_decay, warmup_epochs : float, optional
        Defaults 0.01 (AdamW) / 5e-4 (SGD) and 10% of ``epochs``.
    augment : bool
        Random resized crop and horizontal flip, on the batch tensors (turn off for digits or text).
    patience : int, optional
        Stop after this many epochs without a better validation accuracy (default: never).
    val_fraction : float
        Share of train held out (stratified, seeded) when the data has no ``val`` split.
    accumulate : int
        Optimizer step every ``accumulate`` batches (effective batch ``batch_size * accumulate``).
    resume : bool
        Continue from ``out/checkpoint.pt`` when its configuration matches; False starts over.
    overwrite : bool
        Discard a run in ``out`` with another configuration (or a corrupt checkpoint).
    init_head_from : path, optional
        Directory of a trained logreg head (last layer, gap, no PCA) to start the classifier from.
    max_train : int, optional
        Use at most this many training images (stratified, seeded).
    lr_spread : float, optional
        Ratio of the classifier's learning rate to the first group's (default 100 for full, else 1).
    amp : str
        ``auto``, ``off``, ``bf16`` or ``fp16``; CUDA only.
    num_workers : int, optional
        DataLoader workers for image folders.
    bn_stats : str, optional
        ``frozen`` (default for pretrained modes) or ``update`` (always so for ``scratch``).
    """

    data: object = "digits"
    backbone: str = "lite0"
    mode: str = "head"
    out: str | None = None
    epochs: int = 5
    lr: float | None = None
    weights: str = "imagenet"
    image_size: int | str | None = "auto"
    batch_size: int = 64
    optimizer: str = "adamw"
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    label_smoothing: float = 0.0
    augment: bool = True
    patience: int | None = None
    val_fraction: float = 0.1
    accumulate: int = 1
    device: str = "auto"
    seed: int = 0
    resume: bool = True
    overwrite: bool = False
    init_head_from: str | None = None
    max_train: int | None = None
    lr_spread: float | None = None
    amp: str = "auto"
    num_workers: int | None = None
    bn_stats: str | None = None

    def __post_init__(self):
        self.mode = parse_mode(self.mode).name
        self.optimizer = str(self.optimizer).lower()
        self.image_size = parse_image_size(self.image_size)
        _check(self.lr is None or (_num(self.lr) and self.lr > 0), f"--lr must be a number > 0, got {self.lr}")
        _check(_whole(self.epochs) and self.epochs >= 1, f"--epochs must be a whole number >= 1, got {self.epochs}")
        _check(_whole(self.batch_size) and self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        _check(_whole(self.accumulate) and self.accumulate >= 1, f"--accumulate must be >= 1, got {self.accumulate}")
        _check(self.optimizer in ("adamw", "sgd"), f"unknown --optimizer '{self.optimizer}'; use adamw or sgd")
        _check(self.weight_decay is None or (_num(self.weight_decay) and self.weight_decay >= 0),
               f"--weight-decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_epochs is None or (_num(self.warmup_epochs) and self.warmup_epochs >= 0),
               f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        _check(_num(self.label_smoothing) and 0 <= self.label_smoothing < 1,
               f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(_num(self.val_fraction) and 0 <= self.val_fraction < 1,
               f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        _check(self.patience is None or (_whole(self.patience) and self.patience >= 1),
               f"--patience must be a whole number >= 1 (or left out for no early stopping), got {self.patience}")
        _check(self.max_train is None or (_whole(self.max_train) and self.max_train >= 1),
               f"--max-train must be >= 1, got {self.max_train}")
        _check(self.lr_spread is None or (_num(self.lr_spread) and self.lr_spread >= 1),
               f"--lr-spread must be >= 1 (1 = one learning rate for all groups), got {self.lr_spread}")
        _check(self.amp in ("auto", "off", "bf16", "fp16"), f"unknown --amp '{self.amp}'; use auto, off, bf16 or fp16")
        _check(self.bn_stats in (None, "frozen", "update"),
               f"unknown --bn-stats '{self.bn_stats}'; use frozen or update")
        _check(self.num_workers is None or (_whole(self.num_workers) and self.num_workers >= 0),
               f"--num-workers must be a whole number >= 0, got {self.num_workers}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data"] = getattr(self.data, "spec", self.data)
        return d

    @classmethod
    def field_names(cls) -> list:
        return [f.name for f in fields(cls)]
