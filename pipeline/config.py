"""``--config FILE``: every flag of a subcommand from a TOML or YAML file (flags on the command line win).

Keys are the flags' long names, with ``-`` or ``_`` (``image_size = 64`` or ``image-size: 64``); lists
may be written as lists or comma-separated strings.
"""
from __future__ import annotations

from pathlib import Path

from transferlab.util import UserInputError


def load_config(path: "str | Path") -> dict:
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
    return {k.replace("-", "_"): (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in data.items()}


def config_fields(command: str) -> set:
    """The keys a ``--config`` file may hold for ``sweep`` or ``finetune``: the fields of its config class."""
    from dataclasses import fields

    if command == "sweep":
        from .sweep import SweepConfig as cls
    else:
        from transferlab.finetuning.config import FinetuneConfig as cls
    return {f.name for f in fields(cls)}


def apply_config(args, path):
    """Fill ``args`` (an argparse namespace) from the config file wherever the command line left a flag out."""
    values = load_config(path)
    known = config_fields(args.command)
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserInputError(f"config file {path} has unknown keys {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(known))}")
    for k, v in values.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args
