"""Which backbone: the pick rule on hand-made correctness vectors (paired statistic against numpy), the sweep's
candidates, the plot on relative depth, and ``sweep``/``advise`` with several backbones end to end."""
import json
import math
import re

import numpy as np
import pytest

from tests.conftest import make_npz, run_cli
from transferlab.classifiers.compare import repeated_folds
from transferlab.pipeline.backbone_choice import Candidate, choose_backbone, sweep_candidates
from transferlab.pipeline.decision import LayerPoint, stderr
from transferlab.pipeline.evidence import CurveMeasurement

N = 500


def correct(n_right: int, n: int = N, seed: int = 0) -> np.ndarray:
    """A per-row correctness vector with ``n_right`` rows right, in a seeded order."""
    v = np.zeros(n, dtype=bool)
    v[np.random.default_rng(seed).permutation(n)[:n_right]] = True
    return v


def flipped(v: np.ndarray, to_wrong: int, to_right: int) -> np.ndarray:
    """``v`` with its first ``to_wrong`` right rows made wrong and its first ``to_right`` wrong rows made right."""
    w = v.copy()
    w[np.flatnonzero(v)[:to_wrong]] = False
    w[np.flatnonzero(~v)[:to_right]] = True
    return w


def split_candidate(backbone: str, chosen: np.ndarray, rate=None, nbytes=None, weights="imagenet") -> Candidate:
    """A candidate measured on one split: a worse first layer, then ``chosen`` (its peak) as the last layer."""
    first = chosen & correct(N - 100, seed=9)
    points = [LayerPoint("early", 0.0, float(first.mean()), N), LayerPoint("late", 1.0, float(chosen.mean()), N)]
    m = CurveMeasurement(points, "split", None, "late", "late", {}, {"early": first, "late": chosen})
    return Candidate(backbone, weights, points, m, rate, nbytes)


def test_a_tie_goes_to_the_cheaper_candidate():
    a = correct(425)
    b = flipped(a, to_wrong=4, to_right=2)  # two rows fewer right: well within the paired noise
    choice = choose_backbone([split_candidate("big", a, rate=100.0, nbytes=2560),
                              split_candidate("small", b, rate=300.0, nbytes=2560)])
    assert choice["best"] == "big/imagenet" and choice["pick"] == "small/imagenet"
    big, small = choice["candidates"]
    assert big["verdict"].startswith("the most accurate") and small["verdict"].startswith("pick: ties")
    assert small["gap"]["difference"] == pytest.approx(-2 / N) and -small["gap"]["in_se"] < 2
    assert "3.0x as many images per second (300 against 100)" in choice["reason"]
    assert choice["statistic"] == "paired, split"


@pytest.mark.parametrize("rates, small_bytes, pick", [
    ((100.0, 110.0), 224, "small/imagenet"),  # rates within the margin: fewer bytes per image wins the tie
    ((100.0, 110.0), 4096, "big/imagenet"),  # ... and more bytes keeps the most accurate
    ((100.0, None), 224, "small/imagenet"),  # a rate not measured: bytes decide
    ((300.0, 100.0), 224, "big/imagenet"),  # faster beyond the margin beats fewer bytes
])
def test_costs_decide_a_tie_by_rate_beyond_the_margin_then_bytes(rates, small_bytes, pick):
    a = correct(425)
    b = flipped(a, to_wrong=3, to_right=2)
    choice = choose_backbone([split_candidate("big", a, rate=rates[0], nbytes=2560),
                              split_candidate("small", b, rate=rates[1], nbytes=small_bytes)])
    assert choice["pick"] == pick


def test_a_clear_win_goes_to_the_more_accurate_however_cheap_the_other():
    a = correct(425)
    b = flipped(a, to_wrong=40, to_right=0)  # 8 points worse
    choice = choose_backbone([split_candidate("fast", b, rate=1000.0, nbytes=8),
                              split_candidate("slow", a, rate=10.0, nbytes=4096)])
    assert choice["pick"] == choice["best"] == "slow/imagenet"
    fast = choice["candidates"][0]
    assert fast["verdict"].startswith("worse") and fast["gap"]["in_se"] < -2


def test_the_paired_gap_and_its_se_match_numpy_and_decide_where_unpaired_would_tie():
    a = correct(425)
    b = flipped(a, to_wrong=15, to_right=0)  # the same rows but 15: 3 points worse
    choice = choose_backbone([split_candidate("a", a, rate=10.0), split_candidate("b", b, rate=1000.0)])
    gap = choice["candidates"][1]["gap"]
    d = b.astype(float) - a.astype(float)  # the independent computation
    assert gap["difference"] == pytest.approx(d.mean(), abs=1e-12)
    assert gap["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(N), rel=1e-12)
    assert gap["method"] == "split" and gap["n"] == N
    unpaired = math.hypot(stderr(a.mean(), N), stderr(b.mean(), N))
    assert abs(d.mean()) / unpaired < 2 < abs(d.mean()) / gap["se"]  # unpaired would call it a tie
    assert choice["pick"] == "a/imagenet"  # paired: b is worse beyond the noise, however fast
    assert choice["candidates"][0]["se"] == pytest.approx(math.sqrt(a.mean() * (1 - a.mean()) / N))


def test_kfold_candidates_are_compared_with_the_corrected_kfold_se():
    y = np.arange(100) % 4
    splits = repeated_folds(y, 5, 2, seed=0)
    rng = np.random.default_rng(1)
    acc_a = rng.uniform(0.80, 0.90, len(splits))
    acc_b = acc_a - rng.uniform(0.0, 0.15, len(splits))  # noise above the one-row floor

    def kfold(backbone, acc):
        points = [LayerPoint("x", 1.0, float(acc.mean()), 100, method="kfold 2x5")]
        return Candidate(backbone, "imagenet", points,
                         CurveMeasurement(points, "kfold 2x5", None, "x", "x", {}, {"x": acc}, splits))

    choice = choose_backbone([kfold("a", acc_a), kfold("b", acc_b)])
    d = acc_b - acc_a
    n_test = np.mean([te.size for _, te in splits])
    n_train = np.mean([tr.size for tr, _ in splits])
    gap = choice["candidates"][1]["gap"]
    assert gap["difference"] == pytest.approx(d.mean())
    assert gap["se"] == pytest.approx(math.sqrt((1 / d.size + n_test / n_train) * d.var(ddof=1)))
    assert choice["statistic"] == "paired, kfold 2x5"


def test_candidates_measured_differently_are_compared_unpaired_and_say_so():
    a = split_candidate("a", correct(425))
    points = [LayerPoint("x", 1.0, 0.5, 100, method="kfold 2x5")]
    acc = np.full(10, 0.5)
    b = Candidate("b", "imagenet", points, CurveMeasurement(points, "kfold 2x5", None, "x", "x", {}, {"x": acc},
                                                            repeated_folds(np.arange(100) % 4, 5, 2, 0)))
    choice = choose_backbone([a, b])
    assert choice["statistic"].startswith("unpaired") and choice["pick"] == "a/imagenet"
    assert choice["candidates"][1]["gap"]["se"] == pytest.approx(math.hypot(stderr(0.85, N), stderr(0.5, 100)))


def _row(backbone, weights, layer, depth, head="logreg", pool="gap", size="32", val="0.8", **kw):
    cache = f"/c/{backbone}_{weights}_{pool}_{size}.h5"
    return {"backbone": backbone, "weights": weights, "layer": layer, "depth": str(depth), "rel_depth": str(depth / 2),
            "head": head, "pool": pool, "image_size": size, "shots": "", "val_accuracy": val, "test_accuracy": "0.8",
            "n_val": "100", "cache_file": cache, "cache_key": cache + "#key", "repeat": "0", **kw}


def test_sweep_candidates_are_the_backbones_and_weights_at_the_decisions_pool_and_size():
    rows = []
    for w, best in (("imagenet", "0.9"), ("random", "0.6")):
        for layer, depth in (("late", 2), ("early", 0), ("mid", 1)):  # written out of depth order
            rows.append(_row("lite0", w, layer, depth, val=best if layer == "mid" else "0.5"))
            rows.append(_row("lite0", w, layer, depth, head="svm"))
    rows += [_row("lite0", "imagenet", "mid", 1, pool="gmp", val="0.7"),  # another pooling: not a candidate
             _row("timm:x", "imagenet", "mid", 1, pool="gmp"),
             _row("lite0", "imagenet", "mid", 1, head="finetune:last:2", cache_file=""),
             _row("lite0", "imagenet", "early+mid", 1, head="multi"),
             _row("lite0", "imagenet", "early", 0, shots="5")]
    cands = sweep_candidates(rows)
    assert [(c["backbone"], c["weights"]) for c in cands] == [("lite0", "imagenet"), ("lite0", "random")]
    assert all(c["layers"] == ["early", "mid", "late"] and c["pool"] == "gap" and c["image_size"] == "32"
               for c in cands)
    assert cands[1]["cache_file"] == "/c/lite0_random_gap_32.h5"
    assert sweep_candidates([r for r in rows if r["weights"] == "imagenet" and r["pool"] == "gap"])[0]["layers"]


def test_the_plot_puts_every_curve_on_relative_depth_with_its_chosen_layer_starred(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from transferlab.pipeline.plots import backbone_curves

    a, b = correct(425), correct(300, seed=1)
    shallow = split_candidate("shallow", b)
    shallow.points = [LayerPoint("s0", 0.0, 0.5, N), LayerPoint("late", 1.0, float(b.mean()), N)]
    choice = choose_backbone([split_candidate("deep", a), shallow])
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), real_close(fig)))
    assert backbone_curves(choice, tmp_path / "backbones.png").read_bytes().startswith(b"\x89PNG")
    ax = figures[-1].axes[0]
    lines = [(list(line.get_xdata()), list(line.get_ydata()), line.get_marker()) for line in ax.get_lines()]
    for c in choice["candidates"]:
        xs = [p["rel_depth"] for p in c["points"]]
        assert (xs, [p["val_accuracy"] for p in c["points"]], "o") in lines  # the curve, at relative depth
        assert ([c["rel_depth"]], [c["val"]], "*") in lines  # its chosen layer
    assert "relative depth" in ax.get_xlabel() and ax.get_xlim() == (-0.03, 1.03)
    assert len(ax.containers) == 2  # one errorbar container per candidate


def test_fewer_than_two_candidates_draw_no_section_and_remove_a_stale_picture(tmp_path):
    from transferlab.pipeline.report import backbone_section

    (tmp_path / "backbones.png").write_bytes(b"\x89PNG old")
    assert backbone_section(tmp_path, {"backbone_choice": None}) == []
    assert not (tmp_path / "backbones.png").exists()


@pytest.fixture
def digits_npz(tmp_path):
    """Digits at 32 px: 100 training, 500 validation (one split decides) and 30 test images; random weights lose."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    img = (X.reshape(-1, 8, 8) * 15.9).astype(np.uint8)
    path = tmp_path / "digits.npz"
    np.savez(path, x_train=img[:100], y_train=y[:100], x_val=img[100:600], y_val=y[100:600], x_test=img[600:630],
             y_test=y[600:630], class_names=np.array([f"d{i}" for i in range(10)]))
    return path


def test_sweep_of_imagenet_against_random_weights_picks_imagenet_with_section_plot_and_json(digits_npz, tmp_path,
                                                                                            monkeypatch):
    from transferlab.classifiers.compare import split_correctness
    from transferlab.features.cache import load_split
    from transferlab.pipeline import evidence

    monkeypatch.setattr(evidence, "SMALL_VAL", 500)  # the 500 validation rows on one split: the paired split gap

    out = tmp_path / "run"
    args = ["sweep", "--data", f"npz:{digits_npz}", "--backbone", "lite0", "--weights", "imagenet,random",
            "--heads", "logreg", "--layers", "bn1,blocks.2,blocks.4,bn2", "--image-size", "32", "--out", out,
            "--cache-dir", tmp_path / "cache", "--workers", "1", "--quiet"]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert "backbone pick: lite0/imagenet at " in res.stdout
    choice = json.loads((out / "results.json").read_text())["backbone_choice"]
    assert choice["pick"] == choice["best"] == "lite0/imagenet" and choice["statistic"] == "paired, split"
    imagenet, random = choice["candidates"]
    assert random["weights"] == "random" and random["verdict"].startswith("worse")
    for c in (imagenet, random):  # the chosen layer is the peak of the curve measured for the comparison
        assert c["layer"] == max(c["points"], key=lambda p: (p["val_accuracy"], p["rel_depth"]))["layer"]
        assert c["bytes_per_image"] == 2 * c["dim"] and c["images_per_s"] > 0  # float16 cache
    # the paired gap against an independent computation: each chosen layer's probe on the same 500 rows
    per_row = []
    for c in (random, imagenet):
        X, y, _ = load_split(c["cache_file"], "train", c["layer"])
        Xv, yv, _ = load_split(c["cache_file"], "val", c["layer"])
        per_row.append(split_correctness(X, y, Xv, yv, "logreg")[0].astype(float))
    d = per_row[0] - per_row[1]
    assert random["gap"]["difference"] == pytest.approx(d.mean())
    assert random["gap"]["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(d.size))
    assert d.size == 500 and d.mean() / random["gap"]["se"] < -2  # random weights lose beyond the noise
    report = (out / "report.md").read_text()
    assert "## Which backbone" in report and "**Pick: lite0/imagenet**" in report
    row = r"\| lite0/random \| \S+ \| 0\.\d{3} ± 0\.\d{3} \| -\d+\.\d ± \d\.\d points \| \d+ \| \d+ \| worse"
    assert re.search(row, report)
    assert (out / "backbones.png").read_bytes().startswith(b"\x89PNG")
    assert re.search(r'alt="depth curves of the backbones" src="data:image/png;base64,',
                     (out / "report.html").read_text())
    # a warm rerun reuses the stored comparison: nothing measured, nothing timed
    from transferlab.pipeline import backbone_choice, evidence

    def refuse(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(evidence, "measure_curve", refuse)
    monkeypatch.setattr(backbone_choice, "extraction_rates", refuse)
    assert run_cli(*args).returncode == 0
    assert json.loads((out / "results.json").read_text())["backbone_choice"] == choice


@pytest.fixture(scope="module")
def two_backbones(tmp_path_factory):
    """``advise --backbone lite0,torchvision:resnet18 --json`` on tiny data, as typed. Offline, resnet18's
    "ImageNet" weights are a seeded random state dict placed where torchvision looks for its download."""
    import torch
    import torchvision.models as tvm

    tmp = tmp_path_factory.mktemp("advise_backbones")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp / "torch"))
        hub = tmp / "torch" / "hub" / "checkpoints"
        hub.mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(tvm.resnet18(weights=None).state_dict(),
                   hub / tvm.get_model_weights("resnet18").DEFAULT.url.rsplit("/", 1)[-1])
        npz = make_npz(tmp / "d.npz", n_train=45, n_test=15, size=16)
        args = ["advise", "--data", f"npz:{npz}", "--backbone", "lite0,torchvision:resnet18", "--image-size", "32",
                "--no-random", "--no-scores", "--compare-size", "off", "--cache-dir", tmp / "cache", "--quiet"]
        out = run_cli(*args, "--json")
    assert out.returncode == 0, out.stderr
    return args, json.loads(out.stdout)


def _expected_pick(records, z=2.0, margin=0.25):
    """The rule, written again from the records' numbers: the most accurate, unless one within z paired
    standard errors costs less (rate beyond the margin, else bytes)."""
    best = max(records, key=lambda r: r["val"])
    ties = [r for r in records if r is best or -r["gap"]["in_se"] <= z]
    pick = best
    for r in sorted(ties, key=lambda r: (-r["images_per_s"], r["bytes_per_image"])):
        faster = r["images_per_s"] > pick["images_per_s"] * (1 + margin)
        slower = pick["images_per_s"] > r["images_per_s"] * (1 + margin)
        if r is not pick and (faster or (not slower and r["bytes_per_image"] < pick["bytes_per_image"])):
            pick = r
    return pick["backbone"]


def test_advise_with_two_backbones_gives_each_regime_and_the_pick(two_backbones):
    from transferlab.pipeline.decision import REGIMES

    _, adv = two_backbones
    records, pick = adv["backbones"], adv["backbone_pick"]
    assert [r["backbone"] for r in records] == ["lite0", "torchvision:resnet18"]
    assert all(r["strategy"] in REGIMES and r["next_command"].startswith("transferlab ") and r["image_size"] == 32
               for r in records)
    assert pick["backbone"] == _expected_pick(records) and pick["statistic"] == "paired, kfold 2x5"
    mine = next(r for r in records if r["backbone"] == pick["backbone"])
    assert adv["strategy"] == mine["strategy"] and adv["chosen_layer"] == mine["chosen_layer"]  # the pick's advice
    assert [p["layer"] for p in adv["evidence"]["curve"]] == [p["layer"] for p in mine["points"]]
    assert all(r["layer"] == max(r["points"], key=lambda p: (p["val_accuracy"], p["rel_depth"]))["layer"]
               for r in records)


def test_advise_with_two_backbones_prints_one_line_each_then_the_pick(two_backbones, monkeypatch):
    """The text form of the advice the fixture measured (the same command without --json; the measuring is
    not repeated: ``advise`` hands back that advice)."""
    from transferlab.pipeline import advise as advise_mod

    args, adv = two_backbones
    monkeypatch.setattr(advise_mod, "advise", lambda *a, **k: advise_mod.Advice(**adv))
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    for r in adv["backbones"]:
        assert re.search(rf"^backbone {re.escape(r['backbone'])}: {r['strategy']} at {r['chosen_layer']}; peak "
                         rf"{r['layer']} val {r['val']:.3f} ± {r['se']:.3f}, .*: {re.escape(r['verdict'])}$",
                         out.stdout, re.M)
    assert f"backbone pick: {adv['backbone_pick']['backbone']} (" in out.stdout
    assert out.stdout.index("backbone pick:") < out.stdout.index("strategy: ")
