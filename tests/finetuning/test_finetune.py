import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_npz
from transferlab.features.preprocess import normalize_batch
from transferlab.finetuning import finetune, load_finetuned, parse_mode, predict_finetuned
from transferlab.finetuning import run as ft_module
from transferlab.finetuning.model import (
    Mode,
    WarmupCosine,
    build_finetune_model,
    init_classifier_from_head,
    linear_from_head,
)
from transferlab.finetuning.train import random_resized_crop_flip, rng_state, set_rng_state
from transferlab.pipeline.results import read_rows
from transferlab.pipeline.sweep import append_finetune
from transferlab.util import UserInputError

SIZE = 32  # network input; the images themselves are 16x16
# lite0's catalog groups are bn1 (stem), blocks.0..6, bn2 (conv_head + bn2); last:2 = blocks.6 and bn2
LAST2_PREFIXES = ("blocks.6.", "conv_head.", "bn2.", "classifier.")


@pytest.fixture(autouse=True)
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def one_step_npz(tmp_path_factory):
    """16 train images (one batch of 16: one optimizer step per epoch), own val split, 8 test images."""
    return make_npz(tmp_path_factory.mktemp("data") / "one_step.npz", n_train=16, n_test=8, val=8)


@pytest.fixture(scope="module")
def head_run(tmp_path_factory, one_step_npz):
    """A finished 1-epoch head run, appended to a sweep directory."""
    root = tmp_path_factory.mktemp("head_run")
    metrics = finetune(f"npz:{one_step_npz}", mode="head", out=root / "run", epochs=1, image_size=SIZE,
                       batch_size=16, progress=False)
    append_finetune(root / "sweep", metrics)
    return root, metrics


def _run(npz, out, mode, **kw):
    args = dict(epochs=1, image_size=SIZE, batch_size=16, progress=False)
    args.update(kw)
    return finetune(f"npz:{npz}", mode=mode, out=out, **args)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _initial_state(mode, num_classes=3):
    fm = build_finetune_model("lite0", mode, num_classes, image_size=SIZE, seed=0)
    return {k: v.detach().clone() for k, v in fm.model.state_dict().items()}


@pytest.fixture(scope="module")
def one_step(tmp_path_factory, one_step_npz):
    """``one_step(mode, bn_stats)`` -> (initial state, metrics, final state) of a 1-step run, cached."""
    runs = {}

    def get(mode, bn_stats=None):
        if (mode, bn_stats) not in runs:
            out = tmp_path_factory.mktemp("one_step") / "run"
            before = _initial_state(mode)
            metrics = _run(one_step_npz, out, mode, bn_stats=bn_stats)
            runs[mode, bn_stats] = before, metrics, _state(out / "model.pt")
        return runs[mode, bn_stats]

    return get


# --- modes --------------------------------------------------------------------------------------

def test_parse_mode_accepts_the_four_modes_and_rejects_others():
    assert parse_mode("head") == Mode("head")
    assert parse_mode(" LAST:3 ") == Mode("last", 3) and parse_mode("last:3").name == "last:3"
    assert parse_mode("full").pretrained and not parse_mode("scratch").pretrained
    for bad in ("tail", "last", "last:0", "last:x", "last:-1", ""):
        with pytest.raises(UserInputError, match="mode"):
            parse_mode(bad)


@pytest.mark.parametrize("mode,expected", [
    ("head", lambda n: n.startswith("classifier.")),
    ("last:2", lambda n: n.startswith(LAST2_PREFIXES)),
    ("full", lambda n: True),
    ("scratch", lambda n: True),
])
def test_one_step_changes_exactly_the_parameters_the_mode_trains(one_step, mode, expected):
    before, metrics, after = one_step(mode)
    params = metrics["trainable"]["names"]
    assert params == [n for n, _ in build_finetune_model("lite0", mode, 3, image_size=SIZE).model.named_parameters()
                      if expected(n)]
    param_names = {n for n in before if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    changed = {n for n in param_names if not torch.equal(before[n], after[n])}
    assert changed == {n for n in param_names if expected(n)}
    assert metrics["epochs_run"] == 1 and metrics["n_train"] == 16 and metrics["n_val"] == 8


@pytest.mark.parametrize("mode,bn_stats", [("head", None), ("last:2", None), ("full", None), ("last:2", "update")])
def test_frozen_batchnorm_statistics_stay_fixed(one_step, mode, bn_stats):
    before, _, after = one_step(mode, bn_stats)
    stats = [n for n in before if n.endswith(("running_mean", "running_var"))]
    # by default no pretrained statistics move; with "update" those of the trained groups do
    trained = {n for n in stats if bn_stats == "update" and n.startswith(LAST2_PREFIXES)}
    for n in stats:
        assert torch.equal(before[n], after[n]) == (n not in trained), n
    if bn_stats == "update":
        assert trained and "bn2.running_mean" in trained


def test_last_n_runs_its_frozen_part_in_eval_mode_without_an_autograd_graph():
    """A Trainer epoch in last:2 records autograd only from the first trained group on: what the frozen groups
    compute needs no gradient (as under inference_mode, the limit of bench/finetune_throughput.py) and they run
    in eval mode; the trained groups do record a graph."""
    from transferlab.finetuning.train import SplitData, Trainer

    fm = build_finetune_model("lite0", "last:2", 3, image_size=SIZE, seed=0)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, (output.requires_grad, module.training))
        return hook

    frozen, trained = ("conv_stem", "bn1", "blocks.0", "blocks.5"), ("blocks.6", "conv_head", "bn2", "classifier")
    for name in frozen + trained:
        fm.model.get_submodule(name).register_forward_hook(record(name))
    data = SplitData(np.arange(8) % 3, images=torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8))
    opt = torch.optim.AdamW([p for p in fm.model.parameters() if p.requires_grad])
    cfg = {"image_size": SIZE, "batch_size": 8, "accumulate": 1, "seed": 0, "augment": True, "epochs": 1,
           "amp": "off", "channels_last": False, "label_smoothing": 0.0}
    Trainer(fm, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), cfg, torch.device("cpu"), data, None,
            data, progress=False).train_epoch(1)
    assert {n: seen[n] for n in frozen} == {n: (False, False) for n in frozen}
    assert all(seen[n][0] for n in trained), seen


def test_scratch_learns_batchnorm_statistics(one_step):
    before, metrics, after = one_step("scratch")  # random initial statistics are nothing to keep
    assert metrics["config"]["bn_stats"] == "update"
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])


def test_head_mode_sgd_step_equals_a_hand_computed_gradient_step(tmp_path, one_step_npz, lite0):
    lr = 0.5
    before = _initial_state("head")
    _run(one_step_npz, tmp_path / "run", "head", optimizer="sgd", lr=lr, weight_decay=0.0, warmup_epochs=0,
         augment=False)
    after = _state(tmp_path / "run" / "model.pt")
    arrays = np.load(one_step_npz)
    x = torch.from_numpy(arrays["x_train"]).permute(0, 3, 1, 2)
    y = torch.from_numpy(arrays["y_train"])
    x = normalize_batch(x, SIZE, lite0.mean, lite0.std, lite0.interpolation)
    with torch.no_grad():  # pretrained, eval-mode (frozen) BatchNorm features
        feats = lite0.model.forward_head(lite0.model.forward_features(x), pre_logits=True)
    w = before["classifier.weight"].clone().requires_grad_(True)
    b = before["classifier.bias"].clone().requires_grad_(True)
    F.cross_entropy(feats @ w.T + b, y).backward()
    # SGD with momentum: the first step moves by lr * grad (the momentum buffer starts at the gradient)
    torch.testing.assert_close(after["classifier.weight"], before["classifier.weight"] - lr * w.grad,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after["classifier.bias"], before["classifier.bias"] - lr * b.grad,
                               rtol=1e-4, atol=1e-5)
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])


def test_pretrained_modes_start_from_the_pretrained_weights_and_scratch_does_not(lite0):
    pretrained = lite0.model.state_dict()
    for mode in ("head", "last:2", "full", "scratch"):
        start = _initial_state(mode)
        body = [n for n in start if not n.startswith("classifier.")]
        same = all(torch.equal(start[n], pretrained[n]) for n in body)
        assert same == (mode != "scratch"), mode
        if mode == "scratch":
            weights = [n for n in body if n.endswith("weight") and start[n].ndim > 1]
            assert all(not torch.equal(start[n], pretrained[n]) for n in weights)
        assert start["classifier.weight"].shape == (3, 1280)


# --- resume -----------------------------------------------------------------------------------------

def test_resume_after_interruption_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    npz = make_npz(tmp_path / "d.npz", n_train=40, n_test=8, val=8)
    kw = dict(epochs=2, warmup_epochs=1, augment=True, batch_size=16)  # 3 steps an epoch, warm-up crosses epochs
    whole = _run(npz, tmp_path / "whole", "last:2", **kw)

    real_save = ft_module.save_checkpoint

    def save_then_interrupt(path, payload):
        real_save(path, payload)
        raise KeyboardInterrupt

    monkeypatch.setattr(ft_module, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(npz, tmp_path / "cut", "last:2", **kw)
    monkeypatch.undo()
    assert not (tmp_path / "cut" / "model.pt").exists()
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1

    resumed = _run(npz, tmp_path / "cut", "last:2", **kw)
    a, b = _state(tmp_path / "whole" / "model.pt"), _state(tmp_path / "cut" / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda m: [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in m["history"]]  # noqa
    assert strip(resumed) == strip(whole) and resumed["epochs_run"] == 2
    assert resumed["test_accuracy"] == whole["test_accuracy"]

    # a finished run rerun with the same configuration trains no further
    again = _run(npz, tmp_path / "cut", "last:2", **kw)
    assert again["history"] == resumed["history"]
    # another epoch count is another cosine schedule: refused, not silently continued
    with pytest.raises(UserInputError, match="epochs 2 -> 3"):
        _run(npz, tmp_path / "cut", "last:2", **{**kw, "epochs": 3})


def test_checkpoint_holds_everything_needed_to_resume(head_run):
    root, _ = head_run
    ckpt = torch.load(root / "run" / "checkpoint.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "rng", "epoch", "best_val", "bad_epochs", "config_key"):
        assert key in ckpt
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"} and ckpt["epoch"] == 1
    assert not (root / "run" / "checkpoint.pt.tmp").exists()


def test_rng_states_survive_a_weights_only_checkpoint_round_trip(tmp_path):
    import random

    torch.save({"rng": rng_state()}, tmp_path / "rng.pt")
    draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_a_one_line_user_input_error(tmp_path, head_run, one_step_npz, damage):
    root, _ = head_run
    out = tmp_path / "run"
    out.mkdir()
    good = (root / "run" / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint" if damage == "garbage" else good[: len(good) // 2])
    with pytest.raises(UserInputError, match="corrupt") as err:
        _run(one_step_npz, out, "head")
    assert "\n" not in str(err.value) and "--overwrite" in str(err.value)
    assert not (out / "model.pt").exists()
    _run(one_step_npz, out, "head", overwrite=True)  # the way out the message names
    assert (out / "model.pt").is_file()


# --- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,message", [
    ({"mode": "last:10"}, "has 9"),
    ({"mode": "sideways"}, "unknown fine-tuning mode"),
    ({"lr": 0.0}, "--lr"),
    ({"lr": -1e-3}, "--lr"),
    ({"epochs": 0}, "--epochs"),
    ({"val_fraction": 1.5}, "--val-fraction"),
    ({"optimizer": "adam2"}, "--optimizer"),
    ({"bn_stats": "sometimes"}, "--bn-stats"),
])
def test_bad_arguments_are_user_input_errors(tmp_path, one_step_npz, kw, message):
    args = {"mode": "head", **kw}
    with pytest.raises(UserInputError, match=message) as err:
        _run(one_step_npz, tmp_path / "run", **args)
    assert "\n" not in str(err.value)


def test_unwritable_out_is_a_user_input_error(tmp_path, one_step_npz):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserInputError, match="cannot write to --out"):
        _run(one_step_npz, blocker / "run", "head")


# --- outputs ------------------------------------------------------------------------------------

def test_metrics_model_files_and_results_row(head_run):
    root, metrics = head_run
    on_disk = json.loads((root / "run" / "metrics.json").read_text())
    assert on_disk["complete"] and on_disk["test_accuracy"] == metrics["test_accuracy"]
    assert on_disk["epochs_run"] == 1 and len(on_disk["history"]) == 1
    assert set(on_disk["history"][0]) >= {"train_loss", "train_accuracy", "val_accuracy", "seconds"}
    assert on_disk["trainable"]["groups"] == ["classifier"] and on_disk["trainable"]["n_parameters"] == 1280 * 3 + 3
    assert on_disk["config"]["image_size"] == SIZE and "torch" in on_disk["versions"]
    meta = json.loads((root / "run" / "model.json").read_text())
    assert meta["num_classes"] == 3 and meta["class_names"] == ["class0", "class1", "class2"]
    assert meta["backbone"] == "lite0" and meta["extraction"]["image_size"] == SIZE
    (row,) = read_rows(root / "sweep" / "results.csv")
    assert row["head"] == "finetune:head" and row["layer"] == "bn2" and row["dim"] == "1280"
    assert float(row["rel_depth"]) == 1.0 and float(row["test_accuracy"]) == metrics["test_accuracy"]


def test_load_finetuned_predicts_with_the_reported_test_accuracy(head_run, one_step_npz):
    root, metrics = head_run
    model, meta = load_finetuned(root / "run")
    arrays = np.load(one_step_npz)
    probs = predict_finetuned(model, meta, arrays["x_test"])
    assert probs.shape == (8, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == arrays["y_test"]).mean() == pytest.approx(metrics["test_accuracy"])


def test_load_finetuned_refuses_a_changed_weights_file(tmp_path, head_run):
    root, _ = head_run
    shutil.copytree(root / "run", tmp_path / "run")
    with open(tmp_path / "run" / "model.pt", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(UserInputError, match="sha256"):
        load_finetuned(tmp_path / "run")


# --- pieces -------------------------------------------------------------------------------------

def test_warmup_cosine_rises_linearly_then_decays_to_zero():
    f = WarmupCosine(warmup_steps=3, total_steps=13)
    assert [f(s) for s in range(3)] == pytest.approx([0.25, 0.5, 0.75])
    assert f(3) == pytest.approx(1.0) and f(8) == pytest.approx(0.5) and f(13) == pytest.approx(0.0)


def test_augmentation_is_seeded_batched_and_keeps_the_range():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    a = random_resized_crop_flip(x, 24, torch.Generator().manual_seed(1))
    b = random_resized_crop_flip(x, 24, torch.Generator().manual_seed(1))
    c = random_resized_crop_flip(x, 24, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def _write_head(run_dir, steps, meta_extra=None):
    from sklearn.pipeline import Pipeline

    from transferlab.classifiers import save_head

    meta = {"layer": "bn2", "backbone": "lite0", "weights": "imagenet", "pooling": "gap", **(meta_extra or {})}
    save_head(run_dir, Pipeline(steps), meta)


def test_init_head_from_folds_the_standard_scaler_into_the_classifier(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    feats = rng.normal(2.0, 3.0, size=(60, 1280))
    labels = np.arange(60) % 3
    feats[np.arange(60), labels] += 5
    scaler, logreg = StandardScaler(), LogisticRegression(max_iter=200)
    logreg.fit(scaler.fit_transform(feats), labels)
    _write_head(tmp_path / "head", [("standardize", scaler), ("logreg", logreg)])
    fm = build_finetune_model("lite0", "head", 3, image_size=SIZE)
    init_classifier_from_head(fm, tmp_path / "head", "bn2")
    with torch.no_grad():
        logits = fm.head(torch.tensor(feats, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(logits, logreg.decision_function(scaler.transform(feats)), rtol=1e-4, atol=1e-3)


def test_init_head_from_refuses_pca_l2_and_other_layers(tmp_path):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import Normalizer

    feats, labels = np.random.default_rng(0).normal(size=(30, 1280)), np.arange(30) % 3
    pca = PCA(8).fit(feats)
    _write_head(tmp_path / "pca", [("pca", pca), ("logreg", LogisticRegression().fit(pca.transform(feats), labels))])
    _write_head(tmp_path / "l2", [("l2", Normalizer()), ("logreg", LogisticRegression().fit(feats, labels))])
    _write_head(tmp_path / "mid", [("logreg", LogisticRegression().fit(feats, labels))], {"layer": "blocks.3"})
    fm = build_finetune_model("lite0", "head", 3, image_size=SIZE)
    for name, message in (("pca", "PCA"), ("l2", "Normalizer"), ("mid", "blocks.3")):
        with pytest.raises(UserInputError, match=message):
            init_classifier_from_head(fm, tmp_path / name, "bn2")
    with pytest.raises(UserInputError, match="not linear"):
        linear_from_head(object(), 1280, 3, "here")


def test_fine_tuning_starts_from_a_linear_probe_head(tmp_path, one_step_npz):
    from sklearn.linear_model import LogisticRegression

    feats, labels = np.random.default_rng(1).normal(size=(30, 1280)), np.arange(30) % 3
    logreg = LogisticRegression().fit(feats, labels)
    _write_head(tmp_path / "head", [("logreg", logreg)])
    m = _run(one_step_npz, tmp_path / "run", "head", init_head_from=tmp_path / "head", lr=1e-12)
    after = _state(tmp_path / "run" / "model.pt")  # a vanishing step: the classifier is the probe's
    np.testing.assert_allclose(after["classifier.weight"].numpy(), logreg.coef_, rtol=1e-5, atol=1e-6)
    assert m["init_head"]["dir"] == str(tmp_path / "head") and m["config"]["init_head_sha256"]


def test_early_stopping_stops_when_validation_accuracy_stops_improving(tmp_path, one_step_npz):
    m = _run(one_step_npz, tmp_path / "run", "head", epochs=4, patience=1, lr=1e-12)  # accuracy cannot move
    assert m["epochs_run"] == 2 and m["stopped_early"] and m["best_epoch"] == 1


def test_gradient_accumulation_matches_one_larger_batch(tmp_path, one_step_npz):
    kw = dict(optimizer="sgd", lr=0.5, weight_decay=0.0, warmup_epochs=0, augment=False)
    _run(one_step_npz, tmp_path / "big", "head", batch_size=16, **kw)
    _run(one_step_npz, tmp_path / "acc", "head", batch_size=8, accumulate=2, **kw)
    a, b = _state(tmp_path / "big" / "model.pt"), _state(tmp_path / "acc" / "model.pt")
    torch.testing.assert_close(a["classifier.weight"], b["classifier.weight"], rtol=1e-4, atol=1e-6)


def test_validation_is_a_seeded_stratified_share_of_train_without_a_val_split(tmp_path):
    from transferlab.features.data import load_dataset
    from transferlab.finetuning.run import finetune_splits

    ds = load_dataset(f"npz:{make_npz(tmp_path / 'd.npz', n_train=48)}")
    train, val, test, source = finetune_splits(ds, 0.25, None, seed=3)
    again = finetune_splits(ds, 0.25, None, seed=3)[1]
    assert len(train) == 36 and len(val) == 12 and len(test) == 24 and "stratified" in source
    assert np.bincount(val.labels).tolist() == [4, 4, 4] and torch.equal(val.images, again.images)


def test_the_run_module_exports_only_what_it_defines():
    for name in ft_module.__all__:
        obj = getattr(ft_module, name)
        assert getattr(obj, "__module__", ft_module.__name__) == ft_module.__name__, name
