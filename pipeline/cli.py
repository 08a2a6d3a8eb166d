"""``transferlab`` command line: each subcommand parses, calls one function of the Python API, prints.

Errors the user can fix (:class:`features.errors.UserInputError`) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from features.errors import UserInputError


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be > 0")
    return v


def _add_backbone_args(p, default_backbone="lite0"):
    p.add_argument("--backbone", default=default_backbone,
                   help="lite0 (offline ImageNet EfficientNet-Lite0), lite1, lite2, timm:NAME or torchvision:NAME")
    p.add_argument("--weights", default="imagenet", help="imagenet (default), random, or a path to a weights file")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and data splits")


def _add_extract_args(p):
    p.add_argument("--layers", default="all", help="comma-separated module paths, or all (the default catalog)")
    p.add_argument("--pool", default="gap", help="gap, gmp, gap+gmp or grid:K")
    p.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the backbone's own)")
    p.add_argument("--dtype", default="float16", help="storage dtype: float16 or float32")
    p.add_argument("--cache-dir", default=None, help="cache directory (default: data/cache)")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for image folders")


def cmd_layers(a):
    from features import build_backbone, catalog

    bb = build_backbone(a.backbone, weights=a.weights, seed=a.seed)
    size = a.image_size or bb.input_size
    infos = catalog(bb.model, a.layers, a.pool, size, a.dtype)
    if a.json:
        print(json.dumps([i.as_row() for i in infos], indent=2))
        return
    print(f"# {bb.spec} ({bb.arch}), {size} px, pooling {a.pool}, {a.dtype}: generic (top) to specialised (bottom)")
    print(f"{'depth':>5}  {'layer':<16} {'channels':>8} {'stride':>6} {'raw (CxHxW)':>14} {'dim':>7} {'bytes/img':>9}")
    for i in infos:
        r = i.as_row()
        print(f"{i.depth:>5}  {i.name:<16} {i.channels:>8} {i.stride:>6} {r['raw_shape']:>14} {i.dim:>7} {i.bytes_per_image:>9}")


def cmd_extract(a):
    from features import extract

    path = extract(a.data, a.backbone, layers=a.layers, pool=a.pool, image_size=a.image_size, dtype=a.dtype,
                   weights=a.weights, seed=a.seed, cache_dir=a.cache_dir, batch_size=a.batch_size,
                   device=a.device, num_workers=a.workers, progress=not a.quiet)
    print(path)


def cmd_cache(a):
    from features import cache as fc
    from features import default_cache_dir

    cdir = Path(a.cache_dir) if a.cache_dir else default_cache_dir()
    if a.action == "ls":
        rows = fc.list_cache(cdir)
        if a.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"no cache files in {cdir}")
        for r in rows if not a.json else []:
            if r["status"] == "unreadable":
                print(f"UNREADABLE  {r['file']}")
                continue
            print(f"{r['status']:<9} {r['bytes'] / 1e6:8.1f} MB  {r['data']}  {r['backbone']}/{r['weights']}  "
                  f"{r['image_size']}px {r['pooling']} {r['dtype']}  splits={r['splits']}  layers={len(r['layers'])}  {r['file']}")
    elif a.action == "info":
        if not a.files:
            raise UserInputError("cache info needs a FILE; `transferlab cache ls` lists them")
        for p in a.files:
            st = fc.read_status(p)
            if st is None:
                raise UserInputError(f"{p} cannot be read as a cache file; `transferlab cache verify {p}` says why")
            print(json.dumps(st, indent=2, default=str))
    elif a.action == "verify":
        files = [Path(p) for p in a.files] or fc.cache_files(cdir)
        bad = 0
        for p in files:
            problems = fc.verify(p)
            bad += bool(problems)
            print(f"ok        {p}" if not problems else "\n".join(f"DAMAGED   {m}" for m in problems))
        if bad:
            raise SystemExit(1)
    elif a.action == "rm":
        files = [Path(p) for p in a.files]
        if a.all:
            files = fc.cache_files(cdir)
        if not files:
            raise UserInputError("cache rm needs FILE... or --all")
        for p in fc.remove(files):
            print(f"removed {p}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="transferlab", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("layers", help="list the extractable layers of a backbone, generic to specialised")
    _add_backbone_args(p)
    p.add_argument("--layers", default="all")
    p.add_argument("--pool", default="gap")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("extract", help="run a backbone over every split and cache pooled features of many layers")
    p.add_argument("--data", required=True, help="digits, npz:PATH, folder:PATH or torchvision:NAME")
    _add_backbone_args(p)
    _add_extract_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("cache", help="manage the feature cache: ls, info FILE, verify [FILE], rm FILE|--all")
    p.add_argument("action", choices=["ls", "info", "verify", "rm"])
    p.add_argument("files", nargs="*")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--all", action="store_true", help="with rm: remove every cache file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cache)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return ap


_EXTRA_COMMANDS: list = []


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "image_size", None) is not None and args.image_size <= 0:
        print(f"error: --image-size {args.image_size} must be a positive number of pixels, e.g. --image-size 64",
              file=sys.stderr)
        return 2
    try:
        args.func(args)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
