"""``transferlab`` command line: each subcommand parses, calls one function of the Python API, prints.

Errors the user can fix (:class:`transferlab.UserInputError`) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from transferlab.util import UserInputError


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error form: one line, ``error: ...``, exit 2 (no usage block)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


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


def _image_size(text: str) -> int:
    from transferlab.features.spec import parse_image_size

    try:
        return parse_image_size(text)
    except UserInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


IMAGE_SIZE_HELP = "input side in pixels (default 64; 0 = the backbone's own)"


def _add_extract_args(p):
    p.add_argument("--layers", default="all", help="comma-separated module paths, or all (the default catalog)")
    p.add_argument("--pool", default="gap", help="gap, gmp, gap+gmp or grid:K")
    p.add_argument("--image-size", type=_image_size, default=None, help=IMAGE_SIZE_HELP)
    p.add_argument("--dtype", default="float16", help="storage dtype: float16 or float32")
    p.add_argument("--cache-dir", default=None, help="cache directory (default: data/cache)")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for image folders")
    p.add_argument("--decode", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where image files are decoded (auto: on the GPU for folder data on CUDA)")


def cmd_layers(a):
    from transferlab.features import ExtractionSpec, build_backbone, catalog

    spec = ExtractionSpec(a.backbone, a.weights, a.seed, a.image_size, a.pool, a.dtype)
    bb = build_backbone(spec.backbone, weights=spec.weights, seed=spec.seed)
    spec = spec.resolve(bb)
    infos = catalog(bb.model, a.layers, spec.pool, spec.image_size, spec.dtype)
    if a.json:
        print(json.dumps([i.as_row() for i in infos], indent=2))
        return
    print(f"# {bb.spec} ({bb.arch}), {spec.image_size} px, pooling {spec.pooling}, {spec.dtype}: "
          f"generic (top) to specialised (bottom)")
    print(f"{'depth':>5}  {'layer':<16} {'channels':>8} {'stride':>6} {'raw (CxHxW)':>14} {'dim':>7} {'bytes/img':>9}")
    for i in infos:
        r = i.as_row()
        print(f"{i.depth:>5}  {i.name:<16} {i.channels:>8} {i.stride:>6} {r['raw_shape']:>14} {i.dim:>7} {i.bytes_per_image:>9}")


def cmd_extract(a):
    from transferlab.features import ExtractionSpec, extract

    spec = ExtractionSpec(a.backbone, a.weights, a.seed, a.image_size, a.pool, a.dtype)
    path = extract(a.data, layers=a.layers, spec=spec, cache_dir=a.cache_dir, batch_size=a.batch_size,
                   device=a.device, num_workers=a.workers, progress=not a.quiet, decode=a.decode)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, from rank 0
        print(path)


def cmd_cache(a):
    from transferlab.features import cache as fc
    from transferlab.features import default_cache_dir

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


def cmd_train(a):
    from transferlab.classifiers import train_head

    res = train_head(a.features, a.layer, a.head, out=a.out, preprocessing=a.preprocessing, pca=a.pca,
                     val_fraction=a.val_fraction, seed=a.seed, n_jobs=a.n_jobs, full_grid=a.full_grid)
    val = "n/a (no validation split possible)" if res.get("val_accuracy") is None else f"{res['val_accuracy']:.4f}"
    print(f"{a.layer}  {a.head}  params={json.dumps(res.get('params', {}), default=str)}  "
          f"val_accuracy={val}  test_accuracy={res['test_accuracy']:.4f}")
    if a.out:
        print(f"saved {Path(a.out) / 'head.joblib'}")


def cmd_predict(a):
    from transferlab.pipeline.predict import predict

    rows = predict(a.model, a.images, batch_size=a.batch_size, device=a.device, progress=not a.json)
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['path']}\t{r['class']}\t{r['score']:.4f}")


def cmd_sweep(a):
    from dataclasses import fields

    from transferlab.pipeline.report import best_per_curve
    from transferlab.pipeline.sweep import SweepConfig, sweep

    names = {f.name for f in fields(SweepConfig)}
    cfg = SweepConfig(**{k: v for k, v in vars(a).items() if k in names and v is not None})
    summary = sweep(cfg, progress=not a.quiet, log=lambda m: print(m, file=sys.stderr))
    out = Path(cfg.out)

    for b in best_per_curve(summary["rows"])[:6]:
        shots = f" {b['shots']}-shot" if b["shots"] else ""
        if b["val_choice"] is None:
            print(f"{b['backbone']}/{b['weights']} {b['head']}{shots}: no validation rows, no layer chosen")
            continue
        print(f"chosen on val: {b['backbone']}/{b['weights']} {b['head']}{shots}: {b['val_choice']} "
              f"val {b['val_choice_val']:.3f} ± {b['val_choice_se']:.3f}, its test {b['val_choice_test']:.3f} "
              f"(last layer test {b['last_test']:.3f})")
    if summary.get("decision"):
        d = summary["decision"]
        print(f"recommendation: {d['strategy']} (runner-up {d['runner_up']}{', close call' if d['close'] else ''}); "
              f"see report.md")
    t = summary["timing"]
    print(f"extract {t['extract_seconds']:.1f} s, heads {t['train_seconds']:.1f} s")
    print(f"wrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'depth_vs_accuracy.png'}, {out / 'report.md'}")


def cmd_finetune(a):
    from transferlab.finetuning import FinetuneConfig, finetune
    from transferlab.pipeline.sweep import append_finetune

    cfg = FinetuneConfig(**{k: v for k, v in vars(a).items() if k in FinetuneConfig.field_names()})
    m = finetune(cfg, progress=not a.quiet)
    val = m.get("val_accuracy")
    print(f"{m['mode']}: {m.get('epochs_run')} epoch(s), val_accuracy="
          f"{'n/a' if val is None else format(val, '.4f')}  test_accuracy={m['test_accuracy']:.4f}")
    if a.append_to:
        print(f"appended to {append_finetune(a.append_to, m)}")
    print(f"wrote {Path(m['out']) / 'metrics.json'} and {Path(m['out']) / 'model.pt'}")


# finetune flags: help text here, defaults only in FinetuneConfig (absent flags leave its defaults)
FINETUNE_FLAGS = [
    ("--data", {"help": "digits, npz:PATH, folder:PATH or torchvision:NAME"}),
    ("--backbone", {"help": "lite0, timm:NAME or torchvision:NAME"}),
    ("--mode", {"help": "head, last:N, full or scratch"}),
    ("--out", {"help": "run directory (checkpoint, metrics.json, model.pt; default runs/finetune_<data>_<backbone>_<mode>)"}),
    ("--epochs", {"type": int}),
    ("--lr", {"type": float, "help": "peak learning rate (default per mode)"}),
    ("--weights", {"help": "imagenet, random or a weights file"}),
    ("--image-size", {"type": _image_size, "help": IMAGE_SIZE_HELP}),
    ("--batch-size", {"type": int}),
    ("--optimizer", {"choices": ["adamw", "sgd"]}),
    ("--weight-decay", {"type": float, "help": "default 0.01 (adamw) or 5e-4 (sgd)"}),
    ("--warmup-epochs", {"type": float, "help": "default 10%% of the epochs"}),
    ("--label-smoothing", {"type": float}),
    ("--no-augment", {"dest": "augment", "action": "store_false", "help": "no random resized crop / flip"}),
    ("--patience", {"type": int, "help": "early stopping after N epochs without val gain"}),
    ("--val-fraction", {"type": float}),
    ("--accumulate", {"type": int, "help": "gradient accumulation steps"}),
    ("--device", {"help": "auto, cpu, cuda, cuda:N or mps"}),
    ("--seed", {"type": int}),
    ("--resume", {"action": argparse.BooleanOptionalAction, "help": "continue a matching run in --out"}),
    ("--overwrite", {"action": "store_true", "help": "discard a run in --out with another config"}),
    ("--init-head-from", {"help": "a train --out directory: linear probe, then fine-tune"}),
    ("--max-train", {"type": int, "help": "use at most N training images"}),
    ("--lr-spread", {"type": float, "help": "full mode: classifier lr / stem lr"}),
    ("--amp", {"choices": ["auto", "off", "bf16", "fp16"]}),
    ("--num-workers", {"type": int, "help": "DataLoader workers for image folders"}),
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
    p.add_argument("--append-to", default=None, help="a sweep directory or results.csv to add the result to")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def cmd_advise(a):
    from transferlab.pipeline.advise import advise

    adv = advise(a.data, a.backbone, image_size=a.image_size, pool=a.pool, seed=a.seed, max_train=a.max_train,
                 max_val=a.max_val, compare_random=a.random, scores=a.scores, finetune_probe=a.finetune_probe,
                 cache_dir=a.cache_dir, device=a.device, progress=not a.quiet,
                 log=(lambda m: None) if a.quiet or a.json else (lambda m: print(m, file=sys.stderr)))
    if a.json:
        from transferlab.util import jsonable

        print(json.dumps(jsonable(adv.to_dict()), indent=2))
        return
    print(f"strategy: {adv.strategy}" + ("  (close call)" if adv.close else ""))
    print(f"runner-up: {adv.runner_up}")
    if adv.chosen_layer:
        print(f"layer: {adv.chosen_layer}")
    print("evidence:")
    for r in adv.reasons:
        print(f"  - {r}")
    curve = adv.evidence.get("curve") or []
    if curve:
        print(f"  {'layer':<12} {'rel.depth':>9} {'val acc':>8} {'+-se':>6} {'knn':>6} {'logme':>7}")
        from transferlab.pipeline.decision import stderr

        for p in curve:
            knn = "" if p["knn"] is None else f"{p['knn']:.3f}"
            lm = "" if p["logme"] is None else f"{p['logme']:+.3f}"
            print(f"  {p['layer']:<12} {p['rel_depth']:>9.2f} {p['val_accuracy']:>8.3f} "
                  f"{stderr(p['val_accuracy'], p['n_val']):>6.3f} {knn:>6} {lm:>7}")
    print("thresholds: " + ", ".join(f"{k}={v}" for k, v in adv.thresholds.items()))
    print(f"next: {adv.next_command}")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="transferlab", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("layers", help="list the extractable layers of a backbone, generic to specialised")
    _add_backbone_args(p)
    p.add_argument("--layers", default="all", help="comma-separated module paths, or all (the default catalog)")
    p.add_argument("--pool", default="gap", help="gap, gmp, gap+gmp or grid:K")
    p.add_argument("--image-size", type=_image_size, default=None, help=IMAGE_SIZE_HELP)
    p.add_argument("--dtype", default="float16", help="float16 or float32 (for the bytes per image)")
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

    p = sub.add_parser("train", help="train a head on cached features of one layer")
    p.add_argument("--features", required=True, help="a cache file written by extract")
    p.add_argument("--layer", required=True, help="a layer stored in the file (module path)")
    p.add_argument("--head", default="logreg", help="svm, svm-rbf, logreg, mlp or knn")
    p.add_argument("--out", default=None, help="directory for head.joblib and head.json")
    p.add_argument("--preprocessing", default=None, help="none, l2, standardize or l2+standardize (default: per head)")
    p.add_argument("--pca", type=_positive_int, default=None, help="reduce features to this many dimensions first")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share of train when the data has no val split")
    p.add_argument("--full-grid", action="store_true", help="the full 45-value C grid of Kornblith et al. for logreg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-jobs", type=int, default=1)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="classify image files with a saved head")
    p.add_argument("--model", required=True, help="a directory written by train --out")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("sweep", help="the main job: extract every layer, train every head, write results and report")
    p.add_argument("--config", default=None, help="TOML or YAML file with any of these flags")
    p.add_argument("--data", default=None, help="digits (default), npz:PATH, folder:PATH or torchvision:NAME")
    p.add_argument("--backbone", default=None, help="comma-separated backbones (default lite0)")
    p.add_argument("--weights", default=None, help="comma-separated: imagenet (default), random, PATH")
    p.add_argument("--heads", default=None, help="comma-separated heads (default logreg,svm)")
    p.add_argument("--layers", default=None, help="all (default) or comma-separated module paths")
    p.add_argument("--pool", default=None, help="comma-separated poolings (default gap)")
    p.add_argument("--image-size", default=None, help="comma-separated input sides (default 64; 0 = the backbone's own)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--shots", default=None, help="low-shot: comma-separated examples per class, e.g. 1,5,10,50")
    p.add_argument("--repeats", type=_positive_int, default=None, help="redraw validation split and seeds N times")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--preprocessing", default=None)
    p.add_argument("--full-grid", action="store_const", const=True, default=None)
    p.add_argument("--out", default=None, help="output directory (default runs/sweep)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--n-jobs", type=int, default=None, help="parallel head fits (joblib; default all cores)")
    p.add_argument("--backend", default=None, help="joblib backend for head fits: loky (default), dask, ray")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("advise", help="measure the evidence and name the transfer regime for a data set")
    p.add_argument("--data", required=True, help="digits, npz:PATH, folder:PATH or torchvision:NAME")
    p.add_argument("--backbone", default="lite0", help="an ImageNet backbone: lite0, timm:NAME or torchvision:NAME")
    p.add_argument("--image-size", type=_image_size, default=None, help=IMAGE_SIZE_HELP)
    p.add_argument("--pool", default="gap", help="gap, gmp, gap+gmp or grid:K")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsample and the validation split")
    p.add_argument("--max-train", type=_positive_int, default=5000, help="training rows measured on (stratified cap)")
    p.add_argument("--max-val", type=_positive_int, default=2000, help="validation rows measured on (stratified cap)")
    p.add_argument("--no-random", dest="random", action="store_false",
                   help="skip the random-weights comparison (faster; no from-scratch evidence)")
    p.add_argument("--no-scores", dest="scores", action="store_false", help="skip kNN and LogME per layer")
    p.add_argument("--finetune-probe", action="store_true", help="also fine-tune last:2 briefly on the subset")
    p.add_argument("--cache-dir", default=None, help="feature cache directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help="print the advice as one JSON object (key 'strategy')")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(func=cmd_advise)

    p = sub.add_parser("finetune", help="end-to-end training: head, last:N, full (low lr) or scratch")
    _add_finetune_args(p)
    p.set_defaults(func=cmd_finetune)
    return ap


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):
            from transferlab.pipeline.config import apply_config

            args = apply_config(args, args.config)
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
