"""``--config FILE``: every flag of a subcommand from a TOML or YAML file (flags on the command line win).

Keys are the flags' long names, with ``-`` or ``_`` (``image_size = 64`` or ``image-size: 64``); lists
may be written as lists or comma-separated strings.
"""
from __future__ import annotations

from pathlib import Path

from features.errors import UserInputError


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


def apply_config(parser, sub_parser, argv, args):
    """Re-parse ``argv`` with the config file's values as defaults of ``sub_parser``."""
    if not getattr(args, "config", None):
        return args
    values = load_config(args.config)
    known = {a.dest for a in sub_parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserInputError(f"config file {args.config} has unknown keys {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(known - {'help', 'config', 'func'}))}")
    sub_parser.set_defaults(**values)
    return parser.parse_args(argv)
