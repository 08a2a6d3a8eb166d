"""Every command says what it will do before it imports what takes seconds; predict imports only what its
model needs; a mistake gets a pointer. Subprocesses where a fresh interpreter is the point (this one
imported torch long ago), checked on ``sys.modules``, never on time."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, make_npz, run_cli, write_pngs

HEAVY = ("torch", "sklearn", "h5py", "scipy", "pandas", "matplotlib", "timm", "torchvision")

# at the first write to stderr: print that line and the heavy modules imported so far, and stop
FIRST_WRITE = """
import json, os, sys
class Stop:
    def write(self, text):
        heavy = sorted(m for m in {heavy!r} if m in sys.modules)
        sys.__stdout__.write(json.dumps({{"line": text, "heavy": heavy}}) + "\\n")
        sys.__stdout__.flush()
        os._exit(0)
    def flush(self):
        pass
sys.stderr = Stop()
from transferlab.pipeline.cli import main
main(sys.argv[1:])
sys.__stdout__.write(json.dumps({{"line": None}}) + "\\n")
""".format(heavy=HEAVY)


def _first_write(*argv) -> dict:
    out = subprocess.run([sys.executable, "-c", FIRST_WRITE, *map(str, argv)], cwd=ROOT.parent, capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout, out.stdout + out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first")
    npz = make_npz(tmp / "d.npz", n_train=12, n_test=6, size=16)
    import numpy as np

    (tmp / "imgs").mkdir()
    files = write_pngs(np.load(npz)["x_test"][:3], tmp / "imgs")
    (tmp / "model").mkdir()
    (tmp / "model" / "head.json").write_text("{}")  # the first line only finds the folder; loading comes after
    return tmp, npz, files


COMMANDS = {
    "sweep": lambda t, npz, f: ["--data", f"npz:{npz}", "--out", t / "run", "--cache-dir", t / "c", "--heads", "knn"],
    "advise": lambda t, npz, f: ["--data", f"npz:{npz}", "--cache-dir", t / "c"],
    "predict": lambda t, npz, f: ["--model", t / "model", *f],
    "finetune": lambda t, npz, f: ["--data", f"npz:{npz}", "--mode", "last:2", "--epochs", "2", "--out", t / "ft"],
    "train": lambda t, npz, f: ["--features", t / "c" / "x.h5", "--layer", "best"],
    "extract": lambda t, npz, f: ["--data", f"npz:{npz}", "--cache-dir", t / "c"],
    "layers": lambda t, npz, f: ["--backbone", "lite0"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_first_line_says_what_will_happen_before_any_heavy_import(command, inputs):
    tmp, npz, files = inputs
    got = _first_write(command, *COMMANDS[command](tmp, npz, files))
    assert got["line"] is not None and got["line"].startswith(f"{command}: "), got
    assert got["heavy"] == [], got
    expected = {"sweep": f"npz:{npz} -> {tmp / 'run'}: lite0 (imagenet) layers all, heads knn",
                "advise": f"advise: npz:{npz} with lite0", "predict": f"predict: 3 image(s) with the model in "
                f"{tmp / 'model'}", "finetune": "mode last:2, 2 epoch(s)", "train": "the layer the sweep recommends",
                "extract": "layers all, pooling gap, image size auto", "layers": "building lite0 (imagenet)"}
    assert expected[command] in got["line"], got["line"]


def test_quiet_leaves_the_first_line_out(inputs):
    tmp, npz, files = inputs
    loud = run_cli("train", "--features", tmp / "missing.h5", "--layer", "bn2")
    quiet = run_cli("train", "--features", tmp / "missing.h5", "--layer", "bn2", "--quiet")
    assert loud.returncode == quiet.returncode == 2
    assert loud.stderr.splitlines()[0].startswith("train: a logreg head on layer bn2 of ")
    assert quiet.stderr.splitlines()[0].startswith("error: ")


PREDICT_IMPORTS = """
import json, sys
from transferlab.pipeline.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m.split(".")[0] in
                  ("sklearn", "h5py", "matplotlib", "pandas", "scipy", "joblib", "transferlab"))}))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory, lite0):
    from transferlab.classifiers import train_head
    from transferlab.features import extract

    tmp = tmp_path_factory.mktemp("models")
    npz = make_npz(tmp / "d.npz", n_train=30, n_test=6, size=16)
    path = extract(f"npz:{npz}", lite0, layers="blocks.2", image_size=32, cache_dir=tmp / "c", progress=False)
    train_head(path, "blocks.2", "logreg", out=tmp / "head")
    res = run_cli("finetune", "--data", f"npz:{npz}", "--mode", "head", "--epochs", "1", "--image-size", "32",
                  "--batch-size", "16", "--out", tmp / "ft", "--quiet")
    assert res.returncode == 0, res.stderr
    import numpy as np

    (tmp / "imgs").mkdir()
    return tmp, write_pngs(np.load(npz)["x_test"], tmp / "imgs")


@pytest.mark.parametrize("model", ["head", "ft"])
def test_predict_imports_only_what_its_model_needs(model, models):
    """A fine-tuned network needs no scikit-learn, no HDF5 and no pandas; a head needs no fine-tuning code, and
    a logreg head (linear: applied with numpy) no scikit-learn either; neither reads an HDF5 cache (a head's
    layers are tapped by features.tap, not the extraction engine), draws a plot or touches a sweep's results."""
    tmp, files = models
    out = subprocess.run([sys.executable, "-c", PREDICT_IMPORTS, "predict", "--model", str(tmp / model),
                          *map(str, files), "--quiet"], cwd=ROOT.parent, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["code"] == 0 and len(out.stdout.splitlines()) == len(files) + 1
    tops = {m.split(".")[0] for m in got["modules"]}
    ours = {m for m in got["modules"] if m.startswith("transferlab.")}
    assert not tops & {"matplotlib", "h5py"}, tops
    assert not ours & {"transferlab.features.engine", "transferlab.features.cache", "transferlab.features.decode"}, ours
    assert not {m for m in ours if m.split(".")[1] == "pipeline" and m.split(".")[-1] in
                ("sweep", "results", "report", "advise", "plots", "html", "chosen")}, ours
    if model == "ft":
        assert not tops & {"sklearn", "pandas", "scipy"}, tops
        assert not any(m.startswith("transferlab.classifiers") for m in ours), ours
    else:
        assert not any(m.startswith("transferlab.finetuning") for m in ours), ours
        assert not tops & {"sklearn", "scipy", "joblib", "pandas"}, tops


def test_a_mistyped_subcommand_gets_the_one_it_is_close_to():
    res = run_cli("swep")
    assert res.returncode == 2 and "did you mean `sweep`?" in res.stderr and "Traceback" not in res.stderr
    assert "did you mean `ls`?" in run_cli("cache", "lss").stderr
    assert "did you mean" not in run_cli("xyz").stderr  # nothing close: the choices alone


def test_an_image_given_as_data_is_named_and_predict_pointed_to(inputs):
    tmp, npz, files = inputs
    for command in ("sweep", "advise", "extract"):
        res = run_cli(command, "--data", files[0], "--quiet", "--cache-dir", tmp / "c")
        assert res.returncode == 2, res.stderr
        line = res.stderr.strip()
        assert line.startswith(f"error: --data {files[0]} is one image; --data wants a folder"), line
        assert ".npz" in line and "`transferlab predict --model DIR IMAGE...`" in line and "\n" not in line
