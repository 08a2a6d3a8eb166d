"""``--config FILE``: every flag of ``sweep`` or ``finetune`` from a TOML or YAML file (flags on the command
line win).

Keys are the flags' destinations, with ``-`` or ``_`` (``image_size = 64`` or ``image-size: 64``): the
fields of :class:`~transferlab.pipeline.sweep.SweepConfig` or :class:`~transferlab.finetuning.FinetuneConfig`.
Rule: a value is read as strictly as the command line reads its flag (one rule for both, the flag's own
type and choices from :mod:`transferlab.pipeline.cli_args`): a number where the flag takes a number
(``repeats = "x"`` or ``repeats = 2.5`` is refused), a TOML/YAML boolean for an on/off flag
(``full_grid = "false"`` is refused, never read as true), a list only where the flag takes a
comma-separated list; an empty YAML value is a key left out. A refusal is one line naming the file, the
key, the value and what is expected, before anything runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from transferlab.util import UserInputError

from .cli_args import config_flags, fraction, image_size_arg, positive_int

SWITCHES = ("store_true", "store_false", "store_const", argparse.BooleanOptionalAction)
EXPECTED = {int: "a whole number", float: "a number", positive_int: "a whole number > 0",
            fraction: "a number between 0 and 1",
            image_size_arg: "auto, 0 (the backbone's own) or an image side in pixels"}


def load_config(path: "str | Path") -> dict:
    """The file's table as ``{key with _: value}``, values as the file wrote them."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserInputError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise UserInputError(f"config file {path} must end in .toml, .yaml or .yml")
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"config file {path} must hold a table of flag = value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def config_fields(command: str) -> set:
    """The keys a ``--config`` file may hold for ``sweep`` or ``finetune``: the fields of its config class."""
    from dataclasses import fields

    if command == "sweep":
        from .sweep import SweepConfig as cls
    else:
        from transferlab.finetuning.config import FinetuneConfig as cls
    return {f.name for f in fields(cls)}


def _is_scalar(v) -> bool:
    return isinstance(v, (str, int, float)) and not isinstance(v, bool)


def check_value(key: str, value, flag: dict, path) -> object:
    """``value`` of ``key`` as the command line would read flag ``flag`` (its argparse keywords), else a
    UserInputError naming the file, the key, the value and what is expected."""
    def refuse(expected: str):
        raise UserInputError(f"config file {path}: {key} = {json.dumps(value, default=str)}: expected {expected} "
                             f"(as {flag['flag']} takes)")

    if flag.get("action") in SWITCHES:
        if not isinstance(value, bool):
            refuse("true or false (a boolean, not text)")
        return value
    typ, choices = flag.get("type"), flag.get("choices")
    if isinstance(value, list) and not typ and not choices and all(map(_is_scalar, value)):
        return ",".join(map(str, value))  # the flag takes a comma-separated list
    if not _is_scalar(value):
        refuse(EXPECTED.get(typ, "one of " + ", ".join(choices) if choices else "text"))
    text = str(value)
    if typ:
        try:
            return typ(text)
        except argparse.ArgumentTypeError as exc:
            refuse(f"{EXPECTED[typ]}: {exc}")
        except (TypeError, ValueError):
            refuse(EXPECTED[typ])
    if choices and text not in choices:
        refuse("one of " + ", ".join(choices))
    return text


def apply_config(args, path):
    """Fill ``args`` (an argparse namespace) from the config file wherever the command line left a flag out,
    each value checked first (:func:`check_value`)."""
    values = load_config(path)
    known = config_fields(args.command)
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserInputError(f"config file {path} has unknown keys {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(known))}")
    flags = config_flags(args.command)
    checked = {k: check_value(k, v, flags[k], path) for k, v in values.items() if v is not None}
    for k, v in checked.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args
