"""Which backbone: candidates at their validation-chosen layer, compared by a paired statistic, weighed against cost.

A *candidate* is one (backbone, weights) of a sweep at the decision's pooling and image size
(:func:`sweep_candidates`), or one backbone of ``advise --backbone a,b``. Each is measured the way the
decision's curve is (:func:`transferlab.pipeline.evidence.measure_curve`: the logistic-regression probe,
repeated k-fold on small validation sets, one split otherwise, the same rows for every candidate); its
chosen layer is its peak there.

Rule (:func:`choose_backbone`, pure): the candidate with the best validation accuracy is the *best*; a
candidate whose paired gap to it (:func:`~transferlab.pipeline.evidence.peak_gap_between`, on the same
rows) is not beyond :data:`~transferlab.pipeline.decision.Z` standard errors *ties* it; among the ties
the cheapest is the pick ("a cheaper backbone that ties wins"). Cheaper: extraction faster by more than
:data:`RATE_MARGIN` (timings on a shared machine move: a smaller difference is not read as a cost), else,
rates within that margin or unknown, fewer feature bytes per image at the chosen layer.

Costs: images/s of the backbone's forward pass through the cached layers' taps on synthetic images at
the cache's size and pooling (:func:`extraction_rates`: the sweep's own extraction timing is one total over
every backbone and cache read, so it cannot price one); bytes per image: the chosen layer's stored
dimension times its dtype's size (the cache's).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from transferlab.util import sha256_json

from .curves import decision_curve, is_finetune, is_multilayer, number
from .decision import LayerPoint, Z, curve_facts, stderr

RATE_MARGIN = 0.25  # a candidate extracts faster only when its images/s exceed the other's by this share
RATE_BATCH = 16  # images per timed forward pass
RATE_REPEATS = 3  # timed passes after one that pays for starting up; the fastest counts


@dataclass
class Candidate:
    """One backbone (and weights) measured for the comparison.

    ``points``: its depth curve (LayerPoint, depth order), every candidate measured the same way;
    ``pairs``: a :class:`~transferlab.pipeline.evidence.CurveMeasurement` whose ``peak`` is the chosen
    layer, holding that layer's paired scores (per-row correctness, or per-fold accuracies and the folds).
    """

    backbone: str
    weights: str
    points: list
    pairs: object = field(repr=False)
    images_per_s: float | None = None
    bytes_per_image: int | None = None
    cache_file: str = ""
    dim: int | None = None
    rate_how: str = ""

    @property
    def name(self) -> str:
        return f"{self.backbone}/{self.weights}"

    @property
    def chosen(self) -> LayerPoint:
        return next(p for p in self.points if p.layer == self.pairs.peak)


def cheaper(a: Candidate, b: Candidate) -> str | None:
    """Why ``a`` costs less than ``b`` (see the module docstring), or None when it does not."""
    ra, rb = a.images_per_s, b.images_per_s
    if ra and rb:
        if ra > rb * (1 + RATE_MARGIN):
            return f"extracts {ra / rb:.1f}x as many images per second ({ra:.0f} against {rb:.0f})"
        if rb > ra * (1 + RATE_MARGIN):
            return None
    if a.bytes_per_image is not None and b.bytes_per_image is not None and a.bytes_per_image < b.bytes_per_image:
        rates = "extraction rates within the margin" if ra and rb else "extraction rates not both measured"
        return f"stores {a.bytes_per_image} bytes per image against {b.bytes_per_image} ({rates})"
    return None


def _gap(a: Candidate, b: Candidate) -> dict:
    """``a``'s chosen layer minus ``b``'s, paired on the same rows; unpaired binomial errors only when the two
    were not measured on the same rows (then ``method`` says so)."""
    from .evidence import peak_gap_between

    try:
        return peak_gap_between(a.pairs, b.pairs).to_dict()
    except ValueError as exc:
        pa, pb = a.chosen, b.chosen
        diff = pa.val_accuracy - pb.val_accuracy
        se = math.hypot(stderr(pa.val_accuracy, pa.n_val), stderr(pb.val_accuracy, pb.n_val))
        return {"difference": diff, "se": se, "method": f"unpaired ({exc})", "n": min(pa.n_val, pb.n_val),
                "in_se": diff / se if se > 0 else 0.0}


def gap_text(gap: dict | None) -> str:
    """A candidate's gap to the most accurate in words: ``the best``, or ``-8.0 ± 2.1 points``."""
    return "the best" if gap is None else f"{100 * gap['difference']:+.1f} ± {100 * gap['se']:.1f} points"


def choose_backbone(candidates: list[Candidate], z: float = Z) -> dict:
    """The pick among ``candidates`` by the module's rule, with every candidate's record and the reason.

    Returns ``{"pick", "best", "statistic", "z", "rate_margin", "reason", "candidates": [...]}``; each
    candidate's record holds its chosen ``layer``, ``val`` and ``se`` (binomial, on its validation rows),
    ``gap`` (its chosen layer minus the best's, paired: :class:`~transferlab.classifiers.compare.Gap` as a
    dict; None for the best), ``images_per_s``, ``bytes_per_image``, ``verdict`` and its depth curve.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    best = max(candidates, key=lambda c: c.chosen.val_accuracy)  # exact ties: the first; the cost rule decides
    gaps = {c.name: _gap(c, best) for c in candidates if c is not best}
    ties = [best] + [c for c in candidates if c is not best and -gaps[c.name]["in_se"] <= z]
    pick, why = best, None
    for c in sorted(ties, key=lambda c: (-(c.images_per_s or 0.0), c.bytes_per_image or math.inf)):
        reason = cheaper(c, pick)
        if c is not pick and reason:
            pick, why = c, reason
    methods = sorted({g["method"] for g in gaps.values()})
    statistic = "; ".join(f"paired, {m}" if not m.startswith("unpaired") else m for m in methods)
    records = []
    for c in candidates:
        p = c.chosen
        gap = gaps.get(c.name)
        if c is pick:
            verdict = "pick: the most accurate" if c is best else "pick: ties the most accurate and costs less"
        elif c is best:
            verdict = "the most accurate; a candidate that costs less ties it"
        elif c in ties:
            verdict = f"ties the most accurate (within {z:g} paired standard errors); costs more than the pick"
        else:
            verdict = f"worse than the most accurate by more than {z:g} paired standard errors"
        records.append({"backbone": c.backbone, "weights": c.weights, "name": c.name, "cache_file": c.cache_file,
                        "layer": p.layer, "rel_depth": p.rel_depth, "dim": c.dim, "val": p.val_accuracy,
                        "se": stderr(p.val_accuracy, p.n_val), "n_val": p.n_val, "method": p.method, "gap": gap,
                        "images_per_s": c.images_per_s, "rate_how": c.rate_how,
                        "bytes_per_image": c.bytes_per_image, "verdict": verdict,
                        "points": [asdict(q) for q in c.points]})
    bp, pp = best.chosen, pick.chosen
    if pick is best:
        others = [c for c in ties if c is not best]
        reason = (f"{pick.name} at {pp.layer} is the most accurate (validation {bp.val_accuracy:.3f} ± "
                  f"{stderr(bp.val_accuracy, bp.n_val):.3f}); "
                  + ("no other candidate comes within" if not others else "the candidates within")
                  + f" {z:g} paired standard errors" + ("" if not others else " cost no less"))
    else:
        g = gaps[pick.name]
        reason = (f"{pick.name} at {pp.layer} ties the most accurate, {best.name} at {bp.layer} "
                  f"({gap_text(g)}, {g['method']}, within {z:g} standard errors), and {why}")
    return {"pick": pick.name, "best": best.name, "statistic": statistic, "z": z, "rate_margin": RATE_MARGIN,
            "reason": reason, "candidates": records}


# --- from a sweep's rows ---------------------------------------------------------------------------

def sweep_candidates(rows: list[dict]) -> list[dict]:
    """The (backbone, weights) candidates of a sweep's probe rows at the decision's pooling and image size
    (:func:`transferlab.pipeline.curves.decision_curve`), in the rows' order, each with its cache file and
    its layers in depth order: ``[{"backbone", "weights", "pool", "image_size", "cache_file", "cache_key",
    "layers"}]``. Pure: fine-tuning, multi-layer and low-shot rows take no part."""
    dc = decision_curve(rows)
    if dc is None:
        return []
    found: dict = {}
    for r in rows:
        if (is_finetune(r.get("head")) or is_multilayer(r.get("head")) or r.get("shots") not in ("", None, 0, "0")
                or not r.get("cache_file") or r.get("pool") != dc["pool"]
                or str(r.get("image_size")) != str(dc["image_size"])):
            continue
        c = found.setdefault((r["backbone"], r["weights"]), {
            "backbone": r["backbone"], "weights": r["weights"], "pool": dc["pool"], "image_size": dc["image_size"],
            "cache_file": r["cache_file"], "cache_key": r.get("cache_key", ""), "layers": {}})
        if r["cache_file"] == c["cache_file"]:
            c["layers"][r["layer"]] = (number(r.get("depth"), 0.0), number(r.get("rel_depth"), 0.0))
    for c in found.values():
        c["layers"] = sorted(c["layers"], key=lambda name: (c["layers"][name], name))
    return list(found.values())


def extraction_rates(jobs: list, device: str = "auto", batch_size: int = RATE_BATCH,
                     repeats: int = RATE_REPEATS) -> list[float]:
    """Images per second of the forward pass through the tapped layers of each ``(cache_file, layers)`` in ``jobs``:
    the backbone that wrote the file at its image size and pooling, on ``batch_size`` synthetic images.

    Weights do not change the work, so jobs of one architecture, size, pooling and layers are timed once.
    Each network has one pass that pays for starting up; then ``repeats`` rounds time every network in
    turn (a burst of load on a shared machine falls on all of them) and each keeps its fastest pass. On
    the CPU the passes run on one thread: threads that wait for each other on a loaded machine slow a
    pass by far more than its work, and not alike for every network."""
    import torch

    from transferlab.features import build_backbone
    from transferlab.features.backbones import resolve_device
    from transferlab.features.cache import read_spec
    from transferlab.features.engine import FeatureTap

    dev = resolve_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    specs = [read_spec(path) for path, _ in jobs]
    work = {}  # (arch, size, pooling, layers) -> (tap, input)
    times: dict = {}

    def timed(what) -> float:
        tap, x = work[what]
        sync()
        t0 = time.perf_counter()
        tap(x)
        sync()
        return time.perf_counter() - t0

    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for spec, (_, layers) in zip(specs, jobs):
                what = (spec.arch, spec.image_size, spec.pooling, tuple(layers))
                if what not in work:
                    model = build_backbone(spec.backbone, spec.weights, spec.seed).model.to(dev).eval()
                    x = torch.rand(batch_size, 3, spec.image_size, spec.image_size,
                                   generator=torch.Generator().manual_seed(0)).to(dev)
                    work[what] = (FeatureTap(model, list(layers), spec.pool, stop_after=layers[-1]), x)
                    timed(what)  # starting up
            for _ in range(repeats):
                for what in work:
                    times[what] = min(times.get(what, math.inf), timed(what))
    finally:
        torch.set_num_threads(threads)
        for tap, _ in work.values():
            tap.close()
            tap.model.to("cpu")
    return [batch_size / max(times[(s.arch, s.image_size, s.pooling, tuple(layers))], 1e-9)
            for s, (_, layers) in zip(specs, jobs)]


def bytes_per_image(cache_file: str, layer: str) -> tuple[int, int]:
    """``(dim, bytes)`` of one image's stored features of ``layer`` in ``cache_file`` (dimension x dtype size)."""
    from transferlab.features.cache import layer_info

    info = layer_info(cache_file, layer)
    return info["dim"], info["dim"] * np.dtype(info["dtype"]).itemsize


def rate_how(n_layers: int, image_size, device: str) -> str:
    """What an :func:`extraction_rates` figure measured, in words (the report and advise state it)."""
    return (f"forward pass through the {n_layers} tapped layers, {RATE_BATCH} synthetic images at {image_size} px, "
            f"device {device} (on the CPU one thread), the fastest of {RATE_REPEATS} rounds")


def rate_key(cache_meta: dict, layers: list, device: str) -> str:
    """What decides a candidate's measured rate: the architecture, image size and pooling of its features (from
    the cache's attributes), the layers tapped, the device and the timing's own settings (not the weights)."""
    return sha256_json({"arch": cache_meta.get("arch"), "image_size": cache_meta.get("image_size"),
                        "pooling": cache_meta.get("pooling"), "layers": layers, "device": device,
                        "batch": RATE_BATCH, "repeats": RATE_REPEATS})


def sweep_backbone_choice(rows: list[dict], cfg, measurement: dict | None, previous: dict | None,
                          log=print) -> dict | None:
    """``results.json``'s ``backbone_choice``: :func:`choose_backbone` over :func:`sweep_candidates`, or None
    with fewer than two candidates.

    Every candidate's curve is measured like the decision's (the same ``known`` one-split accuracies of
    its logreg rows, :func:`transferlab.pipeline.evidence.known_probe_accuracies`); the decision's own
    candidate reuses ``measurement``'s points, and a candidate whose peak's paired scores the measurement
    did not keep has that one layer measured again. Its ``key`` is everything that decides it: a rerun
    with the same key reuses ``previous`` (no fit, no torch); a measured rate is reused by :func:`rate_key`.
    """
    from transferlab.features.cache import read_cache_meta

    from .evidence import FOLDS, PROBE, REPEATS, SMALL_VAL, known_probe_accuracies, measure_curve

    cands = sweep_candidates(rows)
    if len(cands) < 2:
        return None
    known = {c["cache_file"]: known_probe_accuracies(rows, c["cache_file"], cfg) for c in cands}
    key = sha256_json({"candidates": [[c["cache_key"], c["cache_file"], c["layers"]] for c in cands],
                       "seed": cfg.seed, "val_fraction": cfg.val_fraction, "known": known, "device": cfg.device,
                       "measure": [PROBE, SMALL_VAL, FOLDS, REPEATS], "z": Z, "rate": [RATE_MARGIN, RATE_BATCH]})
    if previous and previous.get("key") == key:
        return previous
    log(f"backbones: measuring the {PROBE} probe of {len(cands)} candidates the same way, for a paired comparison")
    how = dict(seed=cfg.seed, val_fraction=cfg.val_fraction, n_jobs=cfg.n_jobs, backend=cfg.backend)
    curves_ = []
    for c in cands:
        m = None
        stored = (measurement or {}).get("points") or []
        if (measurement or {}).get("cache_file") == c["cache_file"] and [p["layer"] for p in stored] == c["layers"]:
            points = [LayerPoint(**p) for p in stored]
        else:
            m = measure_curve(c["cache_file"], c["layers"], known=known[c["cache_file"]], **how)
            points = m.points
        peak = curve_facts(points)["peak_layer"]
        if m is None or m.peak != peak or peak not in m.paired:  # its paired scores: that one layer again
            m = measure_curve(c["cache_file"], [peak], **how)
        curves_.append((points, m))
    # rates after every fit, all in one timing: reused from the previous run where their key is unchanged
    keys = [rate_key(read_cache_meta(c["cache_file"]), c["layers"], cfg.device) for c in cands]
    before = {r.get("rate_key"): r["images_per_s"] for r in (previous or {}).get("candidates", [])
              if r.get("images_per_s")}
    todo = [(c["cache_file"], c["layers"]) for c, k in zip(cands, keys) if k not in before]
    if todo:
        log(f"backbones: timing the forward pass of {len(todo)} candidate(s) for the extraction rate")
        before.update(zip([k for k in keys if k not in before], extraction_rates(todo, cfg.device)))
    measured = []
    for c, (points, m), k in zip(cands, curves_, keys):
        dim, size = bytes_per_image(c["cache_file"], m.peak)
        measured.append(Candidate(c["backbone"], c["weights"], points, m, before[k], size, c["cache_file"], dim,
                                  rate_how(len(c["layers"]), c["image_size"], cfg.device)))
    choice = choose_backbone(measured)
    for rec, k in zip(choice["candidates"], keys):
        rec["rate_key"] = k
    return {"key": key, "pool": cands[0]["pool"], "image_size": cands[0]["image_size"], "probe": PROBE, **choice}
