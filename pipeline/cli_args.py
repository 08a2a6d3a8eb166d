"""Argument building blocks of the ``transferlab`` command line: the error form, the help formatter,
value types, and the flags several subcommands share (one name and one help text per flag)."""
from __future__ import annotations

import argparse

from transferlab.util import UserInputError


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error form: one line, ``error: ...``, exit 2 (no usage block)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and ``(default: X)`` after every flag that has a default worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "(default" in text or default in (None, False, argparse.SUPPRESS)
                or not action.option_strings or isinstance(default, bool) and action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)"


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be > 0")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be between 0 and 1")
    return v


def _image_size(text: str) -> int:
    from transferlab.features.spec import parse_image_size

    try:
        return parse_image_size(text)
    except UserInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


DATA_HELP = ("digits, npz:PATH, folder:PATH (PATH/<class>/*, or PATH/train|val|test/<class>/*) or "
             "torchvision:NAME; a bare folder or .npz path is guessed")
IMAGE_SIZE_HELP = "input side in pixels (0 = the backbone's own)"
QUIET_HELP = "no progress bars (results, warnings and errors still print)"


def _add_quiet(p):
    p.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)


def _add_workers(p, what: str, default=None, dest: str = "workers", old: str | None = None):
    p.add_argument("--workers", dest=dest, type=int, default=default, help=what)
    if old:  # the name this flag had before; hidden, same destination
        p.add_argument(old, dest=dest, type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_data_options(p, suppress: bool = False):
    d = argparse.SUPPRESS if suppress else None
    p.add_argument("--test-fraction", type=_fraction, default=d,
                   help="folder data without a test/ split: share of images held out as test "
                        "(stratified, seeded by --seed; default 0.2)")
    p.add_argument("--fingerprint", choices=["stat", "content"], default=d,
                   help="folder data: detect changed files by path+size+mtime (stat, fast; default) "
                        "or by the sha256 of every file (content, exact)")


def _add_backbone_args(p, default_backbone="lite0"):
    p.add_argument("--backbone", default=default_backbone,
                   help="lite0 (offline ImageNet EfficientNet-Lite0), lite1, lite2, timm:NAME or torchvision:NAME")
    p.add_argument("--weights", default="imagenet", help="imagenet, random, or a path to a weights file")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and data splits")


def _add_extract_args(p):
    p.add_argument("--layers", default="all", help="comma-separated module paths, or all (the default catalog)")
    p.add_argument("--pool", default="gap", help="gap, gmp, gap+gmp or grid:K")
    p.add_argument("--image-size", type=_image_size, default=64, help=IMAGE_SIZE_HELP)
    p.add_argument("--dtype", default="float16", help="storage dtype, float16 or float32")
    p.add_argument("--cache-dir", default=None, help="cache directory (default: $TRANSFERLAB_DATA/cache, else the "
                                                     "user cache folder; `transferlab cache ls` prints it)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    _add_workers(p, "DataLoader workers decoding image files (default: up to 4)")
    p.add_argument("--decode", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where image files are decoded (auto: on the GPU for folder data on CUDA)")


# finetune flags: help text here, defaults only in FinetuneConfig (absent flags leave its defaults)
FINETUNE_FLAGS = [
    ("--data", {"help": DATA_HELP}),
    ("--backbone", {"help": "lite0, timm:NAME or torchvision:NAME"}),
    ("--mode", {"help": "head, last:N, full or scratch"}),
    ("--out", {"help": "run directory (checkpoint, metrics.json, model.pt; default runs/finetune_<data>_<backbone>_<mode>)"}),
    ("--epochs", {"type": int, "help": "training epochs (the cosine schedule spans them)"}),
    ("--lr", {"type": float, "help": "peak learning rate (default per mode)"}),
    ("--weights", {"help": "imagenet, random or a weights file"}),
    ("--image-size", {"type": _image_size, "help": IMAGE_SIZE_HELP + "; with --append-to: the sweep's"}),
    ("--batch-size", {"type": int, "help": "images per step"}),
    ("--optimizer", {"choices": ["adamw", "sgd"], "help": "optimizer"}),
    ("--weight-decay", {"type": float, "help": "default 0.01 (adamw) or 5e-4 (sgd)"}),
    ("--warmup-epochs", {"type": float, "help": "default 10%% of the epochs"}),
    ("--label-smoothing", {"type": float, "help": "cross-entropy label smoothing"}),
    ("--no-augment", {"dest": "augment", "action": "store_false", "help": "no random resized crop / flip"}),
    ("--patience", {"type": int, "help": "early stopping after N epochs without val gain"}),
    ("--val-fraction", {"type": float, "help": "validation share of train when the data has no val split; "
                                               "with --append-to: the sweep's"}),
    ("--accumulate", {"type": int, "help": "gradient accumulation steps"}),
    ("--device", {"help": "auto, cpu, cuda, cuda:N or mps"}),
    ("--seed", {"type": int, "help": "seed of initialisation, splits and batch order"}),
    ("--resume", {"action": argparse.BooleanOptionalAction, "help": "continue a matching run in --out"}),
    ("--overwrite", {"action": "store_true", "help": "discard a run in --out with another config"}),
    ("--init-head-from", {"help": "a train --out directory: linear probe, then fine-tune"}),
    ("--max-train", {"type": int, "help": "use at most N training images"}),
    ("--lr-spread", {"type": float, "help": "full mode: classifier lr / stem lr"}),
    ("--amp", {"choices": ["auto", "off", "bf16", "fp16"], "help": "mixed precision (CUDA only)"}),
    ("--workers", {"dest": "num_workers", "type": int, "help": "DataLoader workers decoding image files"}),
    ("--bn-stats", {"choices": ["frozen", "update"], "help": "default frozen (scratch: update)"}),
]


def _add_finetune_args(p):
    from dataclasses import fields

    from transferlab.finetuning.config import FinetuneConfig

    defaults = {f.name: f.default for f in fields(FinetuneConfig)}
    p.add_argument("--config", default=None, help="TOML or YAML file with any of these flags")
    for flag, kw in FINETUNE_FLAGS:
        dest = kw.get("dest", flag[2:].replace("-", "_"))
        default = defaults[dest]
        if kw.get("action") not in ("store_true", "store_false") and default is not None:
            kw = {**kw, "help": f"{kw.get('help', '')} (default: {default})".lstrip()}
        p.add_argument(flag, default=argparse.SUPPRESS, **kw)
    p.add_argument("--num-workers", dest="num_workers", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    _add_data_options(p, suppress=True)
    p.add_argument("--append-to", default=None, help="a sweep directory or results.csv to add the result to "
                                                     "(its image size and validation fraction become the defaults)")
    _add_quiet(p)
