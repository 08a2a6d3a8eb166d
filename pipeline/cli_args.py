"""Argument building blocks of the ``transferlab`` command line: the error form, the help formatter,
value types, and the flags several subcommands share (one name and one help text per flag).

Defaults rule: a flag's default is read from the API that the subcommand calls (a config dataclass
field, the keyword default of its function, or a named constant: :class:`ApiDefault`), never written
here, and the help shows that same value. ``sweep`` and ``finetune`` flags that are left out stay
unset (the config file, then the dataclass, decide); the others get the API's value when parsed.
"""
from __future__ import annotations

import argparse
import functools

from transferlab.util import UserInputError

# where the defaults live
SPEC = "transferlab.features.spec:ExtractionSpec"
IMAGE_SIZE = "transferlab.features.spec:DEFAULT_IMAGE_SIZE"
DATA = "transferlab.features.data:load_dataset"
TEST_FRACTION = "transferlab.features.folders:DEFAULT_TEST_FRACTION"
CATALOG = "transferlab.features.layers:catalog"
EXTRACT = "transferlab.features.extraction:extract"
TRAIN = "transferlab.classifiers.train:train_head"
PREDICT = "transferlab.pipeline.predict:predict"
ADVISE = "transferlab.pipeline.advise:advise"
SWEEP = "transferlab.pipeline.sweep:SweepConfig"
FINETUNE = "transferlab.finetuning.config:FinetuneConfig"


def show(value) -> str:
    """A default as the help prints it: lists comma-separated, like the flag takes them."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@functools.lru_cache(maxsize=None)
def _module_source_tree(module: str):
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(module)
    return ast.parse(Path(spec.origin).read_text()) if spec and spec.origin else ast.Module(body=[])


def _literal_field_default(node, name: str):
    """A dataclass field's default in its class body: ``name: T = LITERAL``, ``field(default=LITERAL)`` or
    ``field(default_factory=lambda: LITERAL)``; LookupError when it is anything else."""
    import ast

    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
            value = stmt.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
                kw = {k.arg: k.value for k in value.keywords}
                value = kw.get("default") or getattr(kw.get("default_factory"), "body", None)
            try:
                return ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError):
                break
    raise LookupError(name)


def literal_default(module: str, func: str, name: "str | None"):
    """A function's keyword default, a dataclass field's, or with no ``name`` a module constant, read from
    its module's source when it is a literal, without importing the module (a stage that imports torch),
    so ``--help``, a parse and the first line stay light; LookupError when it is not."""
    import ast

    for node in _module_source_tree(module).body:
        if name is None:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and getattr(node.targets[0], "id", None) == func):
                try:
                    return ast.literal_eval(node.value)
                except ValueError:
                    break
            continue
        if isinstance(node, ast.ClassDef) and node.name == func:
            return _literal_field_default(node, name)
        if isinstance(node, ast.FunctionDef) and node.name == func:
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = [*zip(positional[len(positional) - len(a.defaults):], a.defaults),
                     *zip(a.kwonlyargs, a.kw_defaults)]
            for arg, default in pairs:
                if arg.arg == name and default is not None:
                    try:
                        return ast.literal_eval(default)
                    except ValueError:
                        break
    raise LookupError(f"{module}:{func}({name}=...)")


class ApiDefault:
    """The default of ``name`` in ``source`` (``"module:attr"``: a dataclass field, a function's keyword,
    or with no ``name`` the attribute itself), read on first use: building the parser imports no stage,
    and ``--help`` or a parse reads the value from where the API keeps it (a literal from its source,
    anything else by importing it)."""

    def __init__(self, source: str, name: str | None = None):
        self.source, self.name = source, name

    @functools.cached_property
    def value(self):
        import dataclasses
        import importlib
        import inspect

        module, _, attr = self.source.partition(":")
        try:
            return literal_default(module, attr, self.name)
        except LookupError:
            pass
        obj = getattr(importlib.import_module(module), attr)
        if self.name is None:
            return obj
        if dataclasses.is_dataclass(obj):
            f = {f.name: f for f in dataclasses.fields(obj)}[self.name]
            return f.default_factory() if f.default is dataclasses.MISSING else f.default
        return inspect.signature(obj).parameters[self.name].default

    def __str__(self):
        return show(self.value)

    def __repr__(self):
        return f"ApiDefault({self.source!r}, {self.name!r})"


class Parser(argparse.ArgumentParser):
    """argparse with the project's error form (one line, ``error: ...``, exit 2, no usage block), and
    the :class:`ApiDefault` of every flag left out replaced by its value."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}{did_you_mean(message)} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        for k, v in vars(namespace).items():
            if isinstance(v, ApiDefault):
                setattr(namespace, k, v.value)
        return namespace, rest


def did_you_mean(message: str) -> str:
    """``; did you mean `sweep`?`` for argparse's "invalid choice: 'swep' (choose from ...)" when a choice
    is close to what was typed, else ''."""
    import difflib
    import re

    m = re.search(r"invalid choice: '?(.*?)'? \(choose from (.*)\)$", message)
    if not m:
        return ""
    choices = [c.strip(" '\"") for c in m.group(2).split(",")]
    close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and ``(default: X)`` after every flag that has a default worth showing:
    the flag's own, or for a flag that stays unset when left out, the ``shown_default`` it carries."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = getattr(action, "shown_default", action.default)
        if isinstance(default, ApiDefault):
            default = default.value
        hidden = (default is None or default == argparse.SUPPRESS or default == [] or default == ()
                  or isinstance(default, bool) and not isinstance(action, argparse.BooleanOptionalAction))
        if "(default" in text or hidden or not action.option_strings:
            return text
        return f"{text} (default: {show(default).replace('%', '%%')})"


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be > 0")
    return v


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be between 0 and 1")
    return v


def image_size_arg(text: str) -> "int | str":
    from transferlab.features.spec import parse_image_size

    try:
        return parse_image_size(text)
    except UserInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


DATA_HELP = ("digits, npz:PATH, folder:PATH (PATH/<class>/*, or PATH/train|val|test/<class>/*) or "
             "torchvision:NAME; a bare folder or .npz path is guessed")
IMAGE_SIZE_HELP = "input side in pixels (0 = the backbone's own)"
AUTO_SIZE_HELP = ("input side: auto (the data's median shorter side, within 64 px..the backbone's own), "
                  "N pixels, or 0 (the backbone's own)")
QUIET_HELP = "no progress bars (results, warnings and errors still print)"
CACHE_DIR_HELP = "cache directory (default: $TRANSFERLAB_DATA/cache, else the user cache folder)"
CONFIG_HELP = "TOML or YAML file with any of these flags (flags given here win)"


def add_quiet(p):
    p.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)


def add_track(p):
    from .tracking import INSTALL, TRACKERS

    p.add_argument("--track", choices=TRACKERS, default=None,
                   help=f"also log the run to MLflow (MLFLOW_TRACKING_URI, else ./mlruns; {INSTALL})")


def add_workers(p, what: str, default=None, dest: str = "workers", old: str | None = None):
    p.add_argument("--workers", dest=dest, type=int, default=default, help=what)
    if old:  # the name this flag had before; hidden, same destination
        p.add_argument(old, dest=dest, type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_flags(p, flags, source: str, absent=None):
    """Add ``flags`` ((flag, argparse keywords) pairs) whose defaults live in ``source``: a flag left out
    is ``absent`` (None, or SUPPRESS: not set at all), and its help shows the default ``source`` gives
    (keyword ``field`` when the field is not the flag's destination, ``shown`` for another source)."""
    for flag, kw in flags:
        kw = dict(kw)
        dest = kw.get("dest", flag[2:].replace("-", "_"))
        shown = kw.pop("shown", None) or ApiDefault(source, kw.pop("field", dest))
        p.add_argument(flag, default=absent, **kw).shown_default = shown


# folder data options: the defaults are load_dataset's (None: DEFAULT_TEST_FRACTION where a split is needed)
DATA_FLAGS = [
    ("--test-fraction", {"type": fraction, "shown": ApiDefault(TEST_FRACTION),
                         "help": "folder data without a test/ split: share of images held out as test "
                                 "(stratified, seeded by --seed)"}),
    ("--fingerprint", {"choices": ["stat", "content"],
                       "help": "folder data: detect changed files by path+size+mtime (stat, fast) or by the "
                               "sha256 of every file (content, exact)"}),
]


def add_data_options(p, suppress: bool = False):
    _add_flags(p, DATA_FLAGS, DATA, argparse.SUPPRESS if suppress else None)


def add_backbone_args(p):
    p.add_argument("--backbone", default=ApiDefault(SPEC, "backbone"),
                   help="lite0 (offline ImageNet EfficientNet-Lite0), lite1, lite2, timm:NAME or torchvision:NAME")
    p.add_argument("--weights", default=ApiDefault(SPEC, "weights"),
                   help="imagenet, random, or a path to a weights file")
    p.add_argument("--seed", type=int, default=ApiDefault(SPEC, "seed"),
                   help="seed for random weights and data splits")


def add_spec_args(p, layers_default: ApiDefault, dtype_help: str, size_default: ApiDefault = ApiDefault(IMAGE_SIZE),
                  size_help: str = IMAGE_SIZE_HELP):
    """The flags of ``layers`` and ``extract`` that make the extraction spec."""
    p.add_argument("--layers", default=layers_default,
                   help="comma-separated module paths, or all (the default catalog)")
    p.add_argument("--pool", default=ApiDefault(SPEC, "pooling"), help="gap, gmp, gap+gmp or grid:K")
    p.add_argument("--image-size", type=image_size_arg, default=size_default, help=size_help)
    p.add_argument("--dtype", default=ApiDefault(SPEC, "dtype"), help=dtype_help)


def add_extract_args(p):
    add_spec_args(p, ApiDefault(EXTRACT, "layers"), "storage dtype, float16 or float32",
                  ApiDefault(EXTRACT, "image_size"), AUTO_SIZE_HELP)
    p.add_argument("--cache-dir", default=None, help="cache directory (default: $TRANSFERLAB_DATA/cache, else the "
                                                     "user cache folder; `transferlab cache ls` prints it)")
    p.add_argument("--batch-size", type=positive_int, default=ApiDefault(EXTRACT, "batch_size"),
                   help="images per forward pass")
    p.add_argument("--device", default=ApiDefault(EXTRACT, "device"),
                   help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    add_workers(p, "DataLoader workers decoding image files (default: up to 4)",
                 default=ApiDefault(EXTRACT, "num_workers"))
    p.add_argument("--decode", choices=["auto", "cpu", "gpu"], default=ApiDefault(EXTRACT, "decode"),
                   help="where image files are decoded (auto: on the GPU for folder data on CUDA)")


# sweep flags: help text here, defaults only in SweepConfig (absent flags stay None: the config file, then
# SweepConfig, decide)
SWEEP_FLAGS = [
    ("--backbone", {"help": "comma-separated backbones"}),
    ("--weights", {"help": "comma-separated: imagenet, random, PATH"}),
    ("--heads", {"help": "comma-separated heads; multi: one head over the layers chosen on validation"}),
    ("--layers", {"help": "all or comma-separated module paths"}),
    ("--pool", {"help": "comma-separated poolings"}),
    ("--image-size", {"help": "comma-separated input sides: auto (the data's median shorter side, within 64 px.."
                              "the backbone's own), N pixels, or 0 (the backbone's own)"}),
    ("--dtype", {"help": "cache storage dtype, float16 or float32"}),
    ("--shots", {"help": "low-shot: comma-separated examples per class, e.g. 1,5,10,50"}),
    ("--repeats", {"type": positive_int, "help": "redraw validation split and seeds N times"}),
    ("--seed", {"type": int, "help": "seed of splits and heads"}),
    ("--val-fraction", {"type": float, "help": "validation share of train when the data has no val split"}),
    ("--preprocessing", {"help": "feature preprocessing for every head (default: per head)"}),
    ("--full-grid", {"action": "store_const", "const": True, "help": "the full 45-value C grid for logreg"}),
    ("--out", {"help": "output directory"}),
    ("--cache-dir", {"help": CACHE_DIR_HELP}),
    ("--device", {"help": "auto, cpu, cuda, cuda:N or mps"}),
    ("--batch-size", {"type": positive_int, "help": "images per forward pass"}),
    ("--workers", {"dest": "n_jobs", "metavar": "WORKERS", "type": int,
                   "help": "parallel head fits (joblib; -1 = every core)"}),
    ("--backend", {"help": "joblib backend for head fits: loky (when not given), dask, ray"}),
]


def add_sweep_args(p):
    p.add_argument("--config", default=None, help=CONFIG_HELP)
    _add_flags(p, [("--data", {"help": DATA_HELP})], SWEEP)
    add_data_options(p)
    _add_flags(p, SWEEP_FLAGS, SWEEP)
    p.add_argument("--n-jobs", dest="n_jobs", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add_track(p)
    add_quiet(p)


# finetune flags: help text here, defaults only in FinetuneConfig (absent flags leave its defaults)
FINETUNE_FLAGS = [
    ("--data", {"help": DATA_HELP}),
    ("--backbone", {"help": "lite0, timm:NAME or torchvision:NAME"}),
    ("--mode", {"help": "head, last:N, full or scratch"}),
    ("--out", {"help": "run directory (checkpoint, metrics.json, model.pt; "
                       "default runs/finetune_<data>_<backbone>_<mode>)"}),
    ("--epochs", {"type": int, "help": "training epochs (the cosine schedule spans them)"}),
    ("--lr", {"type": float, "help": "peak learning rate (default per mode)"}),
    ("--weights", {"help": "imagenet, random or a weights file"}),
    ("--image-size", {"type": image_size_arg, "help": AUTO_SIZE_HELP + "; with --append-to: the sweep's"}),
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


def add_finetune_args(p):
    p.add_argument("--config", default=None, help=CONFIG_HELP)
    _add_flags(p, FINETUNE_FLAGS, FINETUNE, argparse.SUPPRESS)
    p.add_argument("--num-workers", dest="num_workers", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add_data_options(p, suppress=True)
    p.add_argument("--append-to", default=None,
                   help="a sweep directory or results.csv to add the result to (its data, resolved image size, "
                        "validation fraction, seed, test fraction and fingerprint mode become the defaults, "
                        "so it validates on the sweep's rows)")
    add_track(p)
    add_quiet(p)


def config_flags(command: str) -> dict:
    """``{destination: argparse keywords}`` of the flags a ``--config`` file of ``sweep`` or ``finetune`` may set."""
    flags = {"sweep": [("--data", {}), *SWEEP_FLAGS], "finetune": FINETUNE_FLAGS}[command] + DATA_FLAGS
    return {kw.get("dest", flag[2:].replace("-", "_")): {"flag": flag, **kw} for flag, kw in flags}
