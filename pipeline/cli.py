"""``transferlab`` command line: each subcommand parses, calls one function of the Python API, prints.

Errors the user can fix (:class:`transferlab.UserInputError`) print one line and exit 2.
First line rule: every command that loads a model or data says on stderr what it will do (:func:`plan`)
before it imports torch, scikit-learn or h5py (``--quiet`` leaves it out); this module and
:mod:`.cli_args` import none of them at the top (``tests/pipeline/test_first_line.py``).
Conventions shared by every subcommand: ``--quiet`` (no progress bars), ``--workers N``
(parallel workers of what the subcommand parallelises; the old ``--n-jobs`` and ``--num-workers``
still work), ``--help`` shows an example and every default, ``transferlab --version``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transferlab.util import UserInputError, machine_threads

from .cli_args import (
    ADVISE,
    AUTO_SIZE_HELP,
    CACHE_DIR_HELP,
    CATALOG,
    DATA_HELP,
    FINETUNE,
    PREDICT,
    SWEEP,
    TRAIN,
    ApiDefault,
    HelpFormatter,
    Parser,
    add_backbone_args,
    add_data_options,
    add_extract_args,
    add_finetune_args,
    add_quiet,
    add_spec_args,
    add_sweep_args,
    add_workers,
    image_size_arg,
    positive_int,
    show,
)


def _load_data(a, spec: str | None = None):
    """The --data spec with the folder options, loaded once (the Dataset object goes to the API)."""
    from transferlab.features import load_dataset

    given = {k: getattr(a, k) for k in ("seed", "test_fraction", "fingerprint") if getattr(a, k, None) is not None}
    return load_dataset(spec if spec is not None else a.data, **given)


def _note_layout(ds, quiet: bool) -> None:
    if quiet:
        return
    if ds.layout:
        print(f"data: {ds.spec}: {ds.layout}; " + ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items()),
              file=sys.stderr)
    for n in ds.notes:
        print(f"note: {n}", file=sys.stderr)


def cmd_layers(a):
    from transferlab.features import ExtractionSpec, build_backbone, catalog

    spec = ExtractionSpec(a.backbone, a.weights, a.seed, a.image_size, a.pool, a.dtype)
    bb = build_backbone(spec.backbone, weights=spec.weights, seed=spec.seed)
    spec = spec.resolve(bb)
    infos = catalog(bb.model, a.layers, spec.pool, spec.image_size, spec.dtype)
    if a.json:
        print(json.dumps([i.as_row() for i in infos], indent=2))
        return
    if not a.quiet:
        print(f"# {bb.spec} ({bb.arch}), {spec.image_size} px, pooling {spec.pooling}, {spec.dtype}: "
              f"generic (top) to specialised (bottom)")
    print(f"{'depth':>5}  {'layer':<16} {'channels':>8} {'stride':>6} {'raw (CxHxW)':>14} {'dim':>7} {'bytes/img':>9}")
    for i in infos:
        r = i.as_row()
        print(f"{i.depth:>5}  {i.name:<16} {i.channels:>8} {i.stride:>6} {r['raw_shape']:>14} {i.dim:>7} "
              f"{i.bytes_per_image:>9}")


def _logger(quiet: bool):
    """stderr lines for the stages' log; with ``--quiet`` only its warnings and notes (QUIET_HELP's promise)."""
    def log(msg):
        if not quiet or str(msg).startswith(("warning", "note", "error")):
            print(msg, file=sys.stderr)
    return log


def cmd_extract(a):
    from transferlab.features import extract

    ds = _load_data(a)
    _note_layout(ds, a.quiet)
    path = extract(ds, a.backbone, layers=a.layers, pool=a.pool, image_size=a.image_size, dtype=a.dtype,
                   weights=a.weights, seed=a.seed, cache_dir=a.cache_dir, batch_size=a.batch_size,
                   device=a.device, num_workers=a.workers, progress=not a.quiet, decode=a.decode,
                   log=_logger(a.quiet))
    from transferlab.features.distributed import world

    if world()[0] == 0:  # under torchrun: one line, from rank 0
        print(path)


def _cache_file(name: str, cdir: Path) -> Path:
    """A cache file as given, else by its name inside the cache directory."""
    p = Path(name).expanduser()
    return p if p.exists() or p.is_absolute() or not (cdir / p.name).exists() else cdir / p.name


def cmd_cache(a):
    from transferlab.features import cache as fc
    from transferlab.features import default_cache_dir

    cdir = Path(a.cache_dir).expanduser() if a.cache_dir else default_cache_dir()
    if a.action == "ls":
        rows = fc.list_cache(cdir)
        if a.json:
            print(json.dumps({"cache_dir": str(cdir), "files": rows}, indent=2))
            return
        print(f"cache directory: {cdir}" + ("" if a.cache_dir else "  (--cache-dir or $TRANSFERLAB_DATA to change)"))
        if not rows:
            print("no cache files")
        for r in rows:
            if r["status"] == "unreadable":
                print(f"UNREADABLE  {r['file']}")
                continue
            if r["status"] == "foreign":
                print(f"FOREIGN   {r['file']}  (not a cache file: {r['why']}; cache rm leaves it)")
                continue
            if r["status"] == "part":
                print(f"part      {r['bytes'] / 1e6:8.1f} MB  rank {r['rank']} of {r['world']} of {r['part_of']}, "
                      f"rows done {r.get('splits', '?')}  {r['file']}")
                continue
            print(f"{r['status']:<9} {r['bytes'] / 1e6:8.1f} MB  {r['data']}  {r['backbone']}/{r['weights']}  "
                  f"{r['image_size']}px {r['pooling']} {r['dtype']}  splits={r['splits']}  "
                  f"layers={len(r['layers'])}  {r['file']}")
    elif a.action == "info":
        files = [_cache_file(p, cdir) for p in a.files] or fc.cache_files(cdir)
        if not files:
            raise UserInputError(f"no cache files in {cdir}; give FILE or --cache-dir DIR")
        for p in files:
            st = fc.read_status(p)
            if st is None:
                raise UserInputError(f"{p} cannot be read as a cache file; `transferlab cache verify {p}` says why")
            print(json.dumps(st, indent=2, default=str))
    elif a.action == "verify":
        files = [_cache_file(p, cdir) for p in a.files] or fc.cache_files(cdir)
        bad = 0
        for p in files:
            problems = fc.verify(p)
            bad += bool(problems)
            if problems or not a.quiet:
                print(f"ok        {p}" if not problems else "\n".join(f"DAMAGED   {m}" for m in problems))
        if bad:
            raise SystemExit(1)
    elif a.action == "rm":
        if not a.files and not a.all:
            raise UserInputError("cache rm needs FILE... or --all")
        removed, left = fc.remove_all(cdir) if a.all else (fc.remove([_cache_file(p, cdir) for p in a.files]), [])
        for p in removed:
            if not a.quiet:
                print(f"removed {p}")
        if not removed and not left and not a.quiet:
            print(f"no cache files in {cdir}")
        if left:
            print(f"note: left {len(left)} file(s) in {cdir} that are not cache files: "
                  + "; ".join(f"{p.name} ({why})" for p, why in left), file=sys.stderr)


def cmd_train(a):
    from transferlab.classifiers import MULTI_HEAD, read_head_meta, train_head

    from .chosen import reuse_chosen
    from .results import default_head_dir, resolve_train_target

    if a.head == MULTI_HEAD or a.layer.strip() == "all" or "," in a.layer:
        return cmd_train_multi(a)
    features, layer, note = resolve_train_target(a.features, a.layer, a.head)
    if note and not a.quiet:
        print(note, file=sys.stderr)
    out = Path(a.out) if a.out else default_head_dir(features, layer, a.head)
    res, why = reuse_chosen(a.features, features, layer, a.head, out, a.preprocessing, a.full_grid, a.val_fraction,
                            a.seed, a.pca)  # a sweep folder's chosen_head/, when it is this very head
    if why and (res is not None or a.layer == "best") and not a.quiet:
        print(why, file=sys.stderr)
    if res is None:
        res = train_head(features, layer, a.head, out=out, preprocessing=a.preprocessing, pca=a.pca,
                         val_fraction=a.val_fraction, seed=a.seed, n_jobs=a.workers, full_grid=a.full_grid)
    val = "n/a (no validation split possible)" if res.get("val_accuracy") is None else f"{res['val_accuracy']:.4f}"
    print(f"{layer}  {a.head}  params={json.dumps(res.get('params', {}), default=str)}  "
          f"val_accuracy={val}  test_accuracy={res['test_accuracy']:.4f}")
    saved = out / read_head_meta(out)["head_file"]
    print(f"saved {saved}" + ("" if a.quiet else f"  (use: transferlab predict --model {out} IMAGE...)"))


def cmd_train_multi(a):
    """``train --head multi`` (implied by ``--layer all`` or a comma list): one head over several layers."""
    from transferlab.classifiers import MULTI_HEAD, default_grid, read_head_meta, train_multilayer
    from transferlab.features.spec import parse_layers

    from .results import default_head_dir

    if a.head not in ("logreg", MULTI_HEAD):
        raise UserInputError(f"--layer {a.layer} trains the multi-layer head (logistic regression over several "
                             f"layers): pass --head multi, or one layer for --head {a.head}")
    if a.preprocessing is not None or a.pca is not None:
        raise UserInputError("--head multi standardises and scales each layer itself: drop --preprocessing and --pca")
    features = Path(a.features).expanduser()
    if features.is_dir():
        raise UserInputError(f"--head multi needs a cache file as --features, not the folder {features}: "
                             "`transferlab cache ls` lists them")
    layers = None if a.layer.strip() == "all" else parse_layers(a.layer, [])
    out = Path(a.out) if a.out else default_head_dir(features, a.layer, MULTI_HEAD)
    res = train_multilayer(features, layers, out=out, val_fraction=a.val_fraction, seed=a.seed,
                           grid=default_grid("logreg", full=a.full_grid)["C"])
    val = "n/a (no validation split possible)" if res.get("val_accuracy") is None else f"{res['val_accuracy']:.4f}"
    print(f"{res['layer']}  {MULTI_HEAD}  params={json.dumps(res['params'])}  val_accuracy={val}  "
          f"test_accuracy={res['test_accuracy']:.4f}")
    saved = out / read_head_meta(out)["head_file"]
    print(f"saved {saved}" + ("" if a.quiet else f"  (use: transferlab predict --model {out} IMAGE...)"))


def cmd_predict(a):
    from .predict import format_line, predict_rows

    rows = predict_rows(a.model, a.images, batch_size=a.batch_size, device=a.device,
                        progress=not (a.json or a.quiet), top_k=a.top_k, strict=a.strict, out=a.out,
                        allow_pickle=a.allow_pickle)
    failed = [r for r in rows if "error" in r]
    if failed and len(failed) == len(rows):
        raise UserInputError(f"no image could be read: {failed[0]['error']}")
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            if "error" not in r:
                print(format_line(r))
    if a.out and not a.quiet:
        print(f"wrote {a.out}", file=sys.stderr)
    if failed:
        print(f"skipped {len(failed)} unreadable file(s) (--strict stops at the first):", file=sys.stderr)
        for r in failed:
            print(f"  {r['error']}", file=sys.stderr)
        raise SystemExit(1)


def cmd_sweep(a):
    from dataclasses import fields

    from .curves import best_per_curve
    from .sweep import SweepConfig, sweep

    names = {f.name for f in fields(SweepConfig)}
    values = {k: v for k, v in vars(a).items() if k in names and v is not None}
    cfg = SweepConfig(**values)
    summary = sweep(cfg, progress=not a.quiet, log=_logger(a.quiet), track=a.track)
    out = Path(cfg.out)

    from .chosen import chosen_row
    from .decision import stderr

    rows = summary.summary["rows"]  # as results.csv holds them (summary["rows"] gives them typed)
    d, row = summary.get("decision") or {}, chosen_row(rows, summary.get("decision"))
    if row is not None:
        val, n_val = row["mean_val_accuracy"], int(float(row.get("n_val") or 0))
        what = (f"recommendation: {d['strategy']}" if d.get("strategy") else "no transfer regime can be named; best")
        print(f"{what} at {row['layer']} with {row['head']} ({row['backbone']}/{row['weights']}): val {val:.3f} ± "
              f"{stderr(val, n_val):.3f}, test {float(row['test_accuracy']):.3f}"
              + (f"; runner-up {d['runner_up']}{', a close call' if d['close'] else ''}" if d.get("strategy") else "")
              + "; saved in chosen_head/, see report.md")
    for b in best_per_curve(rows)[:6]:
        shots = f" {b['shots']}-shot" if b["shots"] else ""
        if b["val_choice"] is None:
            print(f"  {b['backbone']}/{b['weights']} {b['head']}{shots}: no validation rows, no layer chosen")
            continue
        print(f"  peak on val of {b['backbone']}/{b['weights']} {b['head']}{shots}: {b['val_choice']} "
              f"val {b['val_choice_val']:.3f}, test {b['val_choice_test']:.3f} (last layer test {b['last_test']:.3f})")
    if summary.get("backbone_choice"):
        print(f"backbone pick: {summary['backbone_choice']['reason']} (see report.md, Which backbone)")
    t = summary["timing"]
    print(f"extract {t['extract_seconds']:.1f} s, heads {t['train_seconds']:.1f} s")
    print(f"wrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'report.md'}, {out / 'report.html'}")


def cmd_finetune(a):
    from transferlab.finetuning import FinetuneConfig, finetune

    from .sweep import append_finetune, sweep_defaults_for_finetune
    from .tracking import open_tracker

    tracker = open_tracker(a.track, _logger(a.quiet))  # a missing tracker package is an error before any work

    data_keys = ("test_fraction", "fingerprint")
    values = {k: v for k, v in vars(a).items() if k in (*FinetuneConfig.field_names(), *data_keys)}
    if getattr(a, "append_to", None):
        values, notes = sweep_defaults_for_finetune(a.append_to, values)
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
    from transferlab.features import load_dataset

    ds = load_dataset(values.get("data", "digits"), seed=values.get("seed", 0),
                      test_fraction=values.pop("test_fraction", None), fingerprint=values.pop("fingerprint", "stat"))
    _note_layout(ds, a.quiet)
    cfg = FinetuneConfig(**{**values, "data": ds})
    with tracker:  # a failed or interrupted run's tracked run ends FAILED or KILLED
        m = finetune(cfg, progress=not a.quiet, on_epoch=tracker.epoch)
        tracker.log_finetune(m)
    val = m.get("val_accuracy")
    print(f"{m['mode']}: {m.get('epochs_run')} epoch(s), val_accuracy="
          f"{'n/a' if val is None else format(val, '.4f')}  test_accuracy={m['test_accuracy']:.4f}")
    if a.append_to:
        print(append_finetune(a.append_to, m).message())
    print(f"wrote {Path(m['out']) / 'metrics.json'}; model file {Path(m['out']) / 'model.pt'} "
          f"(use: transferlab predict --model {m['out']} IMAGE...)")


EXAMPLES = {
    "layers": "transferlab layers --backbone lite0 --image-size 64",
    "extract": "transferlab extract --data ~/photos --backbone lite0 --layers all --image-size 64",
    "cache": "transferlab cache ls\n  transferlab cache info --cache-dir /scratch/tl/cache\n"
             "  transferlab cache rm --all",
    "train": "transferlab train --features runs/sweep --layer best --head logreg   # the recommended layer\n"
             "  transferlab train --features FILE.h5 --layer blocks.5 --head svm --out runs/svm_b5\n"
             "  transferlab train --features FILE.h5 --layer all --head multi   # layers chosen on validation",
    "predict": "transferlab predict --model runs/svm_b5 ~/photos/new --out predictions.csv --top-k 3",
    "sweep": "transferlab sweep                                   # digits, lite0, offline\n"
             "  transferlab sweep --data ~/photos --heads logreg --out runs/photos",
    "finetune": "transferlab finetune --data ~/photos --mode last:2 --epochs 5 --append-to runs/photos",
    "advise": "transferlab advise --data ~/photos\n"
              "  transferlab advise --data npz:x.npz --backbone timm:resnet50 --json\n"
              "  transferlab advise --data ~/photos --backbone lite0,lite2   # the regime of each, and the pick",
}


def _sub(sub, name: str, help_text: str):
    return sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter,
                          epilog=f"example:\n  {EXAMPLES[name]}")


def cmd_advise(a):
    from .advise import advise

    adv = advise(_load_data(a), a.backbone, image_size=a.image_size, pool=a.pool, seed=a.seed, max_train=a.max_train,
                 max_val=a.max_val, compare_random=a.random, scores=a.scores, finetune_probe=a.finetune_probe,
                 compare_size=a.compare_size, cache_dir=a.cache_dir, device=a.device, progress=not a.quiet,
                 log=_logger(a.quiet or a.json), budget=a.budget)
    if a.json:
        from transferlab.util import jsonable

        print(json.dumps(jsonable(adv.to_dict()), indent=2))
        return
    from .backbone_choice import gap_text

    for b in adv.backbones:  # --backbone a,b: each one's regime, its place in the comparison, then the pick
        print(f"backbone {b['backbone']}: {b['strategy']} at {b['chosen_layer']}; peak {b['layer']} val "
              f"{b['val']:.3f} ± {b['se']:.3f}, {gap_text(b['gap'])}; {b['images_per_s']:.0f} images/s, "
              f"{b['bytes_per_image']} bytes/image: {b['verdict']}")
    if adv.backbone_pick:
        pick = adv.backbone_pick
        print(f"backbone pick: {pick['backbone']} ({pick['reason']}; {pick['statistic']}); its advice follows")
    print(f"strategy: {adv.strategy}" + (f"  (close call: {adv.runner_up} is as likely)" if adv.close else ""))
    print(f"runner-up: {adv.runner_up}")
    print("\n".join(adv.price_lines()))
    if adv.chosen_layer:
        print(f"layer: {adv.chosen_layer}")
    print("evidence:")
    for r in adv.reasons:
        print(f"  - {r}")
    curve = adv.evidence.get("curve") or []
    if curve:
        print(f"  {'layer':<12} {'rel.depth':>9} {'val acc':>8} {'+-se':>6} {'knn':>6} {'logme':>7}  measured on")
        from .decision import stderr

        for p in curve:
            knn = "" if p["knn"] is None else f"{p['knn']:.3f}"
            lm = "" if p["logme"] is None else f"{p['logme']:+.3f}"
            how = "one split" if p.get("method", "split") == "split" else p["method"] + " of train+val"
            print(f"  {p['layer']:<12} {p['rel_depth']:>9.2f} {p['val_accuracy']:>8.3f} "
                  f"{stderr(p['val_accuracy'], p['n_val']):>6.3f} {knn:>6} {lm:>7}  {how}, {p['n_val']} rows")
        if any(p["knn"] is not None for p in curve):
            print("  (val acc: as 'measured on' says; knn: one validation split; logme: the training rows; "
                  "both shown, not decided on)")
    print("thresholds: " + ", ".join(f"{k}={v}" for k, v in adv.thresholds.items()))
    print(f"next: {adv.next_command}")


def _value(a, name: str, source: str):
    """A flag's value, or for a flag left out (sweep, finetune) the API's default (a literal read from source)."""
    value = getattr(a, name, None)
    return show(ApiDefault(source, name).value if value is None else value)


def _plan_predict(a) -> str:
    from .predict import expand_images, find_model

    a.images, a.model = expand_images(a.images), find_model(a.model)  # found once: the command uses these
    return (f"predict: {len(a.images)} image(s) with the model in {a.model}: loading it (torch and the backbone), "
            f"then classifying in batches of {a.batch_size}")


def _plan_sweep(a) -> str:
    v = {k: _value(a, k, SWEEP) for k in ("data", "backbone", "weights", "layers", "heads", "out")}
    shots = f", {a.shots}-shot" if a.shots else ""
    return (f"sweep: {v['data']} -> {v['out']}: {v['backbone']} ({v['weights']}) layers {v['layers']}, heads "
            f"{v['heads']}{shots}; extracts the features the cache lacks, fits the rows results.csv lacks, then "
            f"decides and writes the report")


def _plan_finetune(a) -> str:
    v = {k: _value(a, k, FINETUNE) for k in ("data", "backbone", "weights", "mode", "epochs")}
    data = f"{v['data']} (the sweep's, from {a.append_to})" if a.append_to and not getattr(a, "data", None) \
        else v["data"]
    return (f"finetune: {data} with {v['backbone']} ({v['weights']}), mode {v['mode']}, {v['epochs']} epoch(s)"
            + (f" -> {a.out}" if getattr(a, "out", None) else "") + "; loading the data and the network first")


def _plan_layers(a) -> str:
    from transferlab.features.spec import ExtractionSpec

    ExtractionSpec(a.backbone, a.weights, a.seed, a.image_size, a.pool, a.dtype)  # refused before the line
    return f"layers: building {a.backbone} ({a.weights}) to list its layers at {a.image_size} px"


PLANS = {
    "layers": _plan_layers,
    "extract": lambda a: (f"extract: {a.data} through {a.backbone} ({a.weights}), layers {a.layers}, pooling "
                          f"{a.pool}, image size {a.image_size} -> the feature cache (what it holds is reused)"),
    "train": lambda a: (f"train: a {a.head} head on "
                        + ("the layer the sweep recommends" if a.layer == "best" else f"layer {a.layer}")
                        + f" of {a.features}: a validation grid, then a refit on train"),
    "predict": _plan_predict,
    "sweep": _plan_sweep,
    "advise": lambda a: (f"advise: {a.data} with {a.backbone}: features of up to {a.max_train} training and "
                         f"{a.max_val} validation images, imagenet{' and random' if a.random else ''} weights, then "
                         + ("kNN, LogME, " if a.scores else "") + "a learning curve and the decision"),
    "finetune": _plan_finetune,
}
"""Each command's first line, from its parsed flags (predict: the files and folder they name); writing it
imports no torch, scikit-learn or h5py."""


def plan(a) -> "str | None":
    """The first line of a command (None for the light ones: ``cache``), from its flags."""
    make = PLANS.get(a.command)
    return make(a) if make else None


def build_parser() -> argparse.ArgumentParser:
    from transferlab import __version__

    ap = Parser(prog="transferlab", description=__doc__.splitlines()[0], formatter_class=HelpFormatter,
                epilog="example:\n  transferlab sweep --data ~/photos --out runs/photos\n"
                       "  transferlab SUBCOMMAND --help   (each has an example)")
    ap.add_argument("--version", action="version", version=f"transferlab {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = _sub(sub, "layers", "list the extractable layers of a backbone, generic to specialised")
    add_backbone_args(p)
    add_spec_args(p, ApiDefault(CATALOG, "layers"), "float16 or float32 (for the bytes per image)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_quiet(p)
    p.set_defaults(func=cmd_layers)

    p = _sub(sub, "extract", "run a backbone over every split and cache pooled features of many layers")
    p.add_argument("--data", required=True, help=DATA_HELP)
    add_data_options(p)
    add_backbone_args(p)
    add_extract_args(p)
    add_quiet(p)
    p.set_defaults(func=cmd_extract)

    p = _sub(sub, "cache", "manage the feature cache: ls, info [FILE], verify [FILE], rm FILE|--all")
    p.add_argument("action", choices=["ls", "info", "verify", "rm"], help="what to do")
    p.add_argument("files", nargs="*", help="cache files (a bare name is looked up in the cache directory); "
                                            "info and verify default to every file")
    p.add_argument("--cache-dir", default=None, help=CACHE_DIR_HELP)
    p.add_argument("--all", action="store_true",
                   help="with rm: remove every cache and part file (other files are left)")
    p.add_argument("--json", action="store_true", help="machine-readable output (ls)")
    add_quiet(p)
    p.set_defaults(func=cmd_cache)

    p = _sub(sub, "train", "train a head on cached features of one layer (or several: --head multi)")
    p.add_argument("--features", required=True, help="a cache file written by extract, or a sweep folder")
    p.add_argument("--layer", required=True, help="a layer stored in the file (module path), or best: the "
                                                  "layer the sweep recommends (its chosen_head/); all or a comma "
                                                  "list: the multi-layer head's candidates")
    p.add_argument("--head", default="logreg", help="svm, svm-rbf, logreg, ridge, mlp or knn; multi: logistic "
                                                    "regression over the layers chosen on validation")
    p.add_argument("--out", default=None, help="directory for head.safetensors and head.json "
                                               "(default runs/heads/<data>_<layer>_<head>)")
    p.add_argument("--preprocessing", default=None, help="none, l2, standardize or l2+standardize (default: per head)")
    p.add_argument("--pca", type=positive_int, default=None, help="reduce features to this many dimensions first")
    p.add_argument("--val-fraction", type=float, default=ApiDefault(TRAIN, "val_fraction"),
                   help="validation share of train when the data has no val split")
    p.add_argument("--full-grid", action="store_true", default=ApiDefault(TRAIN, "full_grid"),
                   help="the full 45-value C grid of Kornblith et al. for logreg")
    p.add_argument("--seed", type=int, default=ApiDefault(TRAIN, "seed"),
                   help="seed of the validation split and the head")
    add_workers(p, "parallel fits of the hyperparameter grid", default=ApiDefault(TRAIN, "n_jobs"), old="--n-jobs")
    add_quiet(p)
    p.set_defaults(func=cmd_train)

    p = _sub(sub, "predict", "classify image files and folders with a saved head or fine-tuned model")
    p.add_argument("--model", required=True, help="a directory written by train or finetune --out, or a sweep "
                                                  "folder (its chosen_head/)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders searched recursively")
    p.add_argument("--out", default=None, help="also write a CSV: path, class, probability or margin, top classes")
    p.add_argument("--top-k", type=positive_int, default=ApiDefault(PREDICT, "top_k"),
                   help="classes listed per image, best first")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file (exit 2) instead of "
                                                         "skipping it and listing it at the end (exit 1)")
    p.add_argument("--batch-size", type=positive_int, default=ApiDefault(PREDICT, "batch_size"),
                   help="images per forward pass")
    p.add_argument("--device", default=ApiDefault(PREDICT, "device"), help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--allow-pickle", action="store_true", help="also load a head saved as a pickle (head.joblib: "
                   "your own estimator, or saved by an older version); unpickling runs its author's code")
    add_quiet(p)
    p.set_defaults(func=cmd_predict)

    p = _sub(sub, "sweep", "the main job: extract every layer, train every head, write results and report")
    add_sweep_args(p)
    p.set_defaults(func=cmd_sweep)

    p = _sub(sub, "advise", "measure the evidence and name the transfer regime for a data set")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--backbone", default=ApiDefault(ADVISE, "backbone"),
                   help="an ImageNet backbone: lite0, timm:NAME or torchvision:NAME; several, comma-separated: "
                        "the regime of each and the pick (a cheaper backbone that ties wins)")
    p.add_argument("--image-size", type=image_size_arg, default=ApiDefault(ADVISE, "image_size"), help=AUTO_SIZE_HELP)
    p.add_argument("--pool", default=ApiDefault(ADVISE, "pool"), help="gap, gmp, gap+gmp or grid:K")
    p.add_argument("--seed", type=int, default=ApiDefault(ADVISE, "seed"),
                   help="seed of the subsample and the validation split")
    p.add_argument("--max-train", type=positive_int, default=ApiDefault(ADVISE, "max_train"),
                   help="training rows measured on (stratified cap)")
    p.add_argument("--max-val", type=positive_int, default=ApiDefault(ADVISE, "max_val"),
                   help="validation rows measured on (stratified cap)")
    p.add_argument("--no-random", dest="random", action="store_false", default=ApiDefault(ADVISE, "compare_random"),
                   help="skip the random-weights comparison (faster; no from-scratch evidence)")
    p.add_argument("--no-scores", dest="scores", action="store_false", default=ApiDefault(ADVISE, "scores"),
                   help="skip kNN and LogME per layer")
    p.add_argument("--finetune-probe", action="store_true", default=ApiDefault(ADVISE, "finetune_probe"),
                   help="run the short last:2 fine-tunes that measure fine-tuning's expected gain; auto: on large data "
                        "when the budget allows")
    p.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                   help="minutes of this machine for the recommended regime; a regime whose expected gain does not "
                        "arrive within it is not recommended").shown_default = ApiDefault(
        "transferlab.pipeline.price:ASSUMED_BUDGET")
    p.add_argument("--compare-size", default=ApiDefault(ADVISE, "compare_size"),
                   help="a second input size measured on the same rows: auto (64 px when the automatic size is "
                        "larger), PIXELS, or off; the advice is read at the better one")
    p.add_argument("--cache-dir", default=None, help="feature cache directory")
    p.add_argument("--device", default=ApiDefault(ADVISE, "device"), help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help="print the advice as one JSON object (key 'strategy')")
    add_quiet(p)
    p.set_defaults(func=cmd_advise)

    p = _sub(sub, "finetune", "end-to-end training: head, last:N, full (low lr) or scratch")
    add_finetune_args(p)
    p.set_defaults(func=cmd_finetune)
    return ap


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):
            from .config import apply_config

            args = apply_config(args, args.config)
        line = plan(args)
        quiet = getattr(args, "quiet", False)
        if line and not quiet:
            print(line, file=sys.stderr, flush=True)
        with machine_threads(None if quiet or not line else lambda why: print(f"note: {why}", file=sys.stderr)):
            args.func(args)
    except SystemExit as exc:  # a command's own status (cache verify: damage found; predict: files skipped)
        return exc.code if isinstance(exc.code, int) else 1
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
