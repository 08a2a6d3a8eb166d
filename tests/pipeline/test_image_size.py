"""Input size is part of the question: ``auto`` (the default of sweep, extract, advise and finetune) is the
data's median shorter side within 64 px..the backbone's own, resolved once, printed in one line and recorded;
an explicit size and 0 behave as before; a long extraction says how long before it goes on."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, make_npz, run_cli
from transferlab.features.data import load_dataset, median_side
from transferlab.features.spec import AUTO_CAP, LITE_INPUT_SIZES, ExtractionSpec, parse_image_size, resolve_image_size
from transferlab.util import UserInputError


def photo_folder(root, sizes, per_class=4, classes=("a", "b", "c"), ext=".jpg"):
    """A flat ``root/<class>/`` folder whose images have the (width, height) ``sizes``, cycled; class c is brighter."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[(c * per_class + i) % len(sizes)]
            px = np.full((h, w, 3), 40 + 80 * c, np.uint8)
            px[: h // 3] = 255 - 60 * c
            Image.fromarray(px).save(root / name / f"{i}{ext}")
    return root


# --- the rule ---------------------------------------------------------------------------------------

def test_auto_is_the_median_shorter_side_clamped_to_64_and_the_backbones_own(tmp_path):
    npz96 = load_dataset(f"npz:{make_npz(tmp_path / 'p.npz', n_train=6, n_test=3, size=96)}")
    assert resolve_image_size("auto", npz96, "lite0").size == 96
    digits = resolve_image_size("auto", load_dataset("digits"), "lite0")
    assert (digits.size, digits.auto) == (64, True)
    assert digits.how == "auto: median shorter side 8 px of 1797 images, within 64..224, lite0's own size"
    assert resolve_image_size(None, load_dataset("digits"), "lite0") == digits  # None is the default, auto

    # 300x200 JPEGs: the shorter side, as the squeeze to S x S would enlarge neither side of them
    wide = load_dataset(f"folder:{photo_folder(tmp_path / 'wide', [(300, 200)])}")
    assert resolve_image_size("auto", wide, "lite0").size == 200
    big = load_dataset(f"folder:{photo_folder(tmp_path / 'big', [(500, 400)])}")
    assert resolve_image_size("auto", big, "lite0").size == 224  # lite0's own
    assert resolve_image_size("auto", big, "lite2").size == 260  # lite2's own
    timm = resolve_image_size("auto", big, "timm:resnet50")
    assert timm.size == AUTO_CAP == 224 and "the cap for timm:resnet50" in timm.how
    assert resolve_image_size("auto", big, ["lite2", "lite1"]).size == 240  # a sweep: one size, the smallest cap
    assert resolve_image_size("auto", big, ["lite2", "torchvision:resnet18"]).size == 224


def test_the_median_is_over_shorter_sides_read_from_headers_of_a_fixed_sample(tmp_path, monkeypatch):
    # shorter sides 100, 120, 200 (the longer ones 300, 400, 200): median 120; the median longer side would be 300
    root = photo_folder(tmp_path / "mixed", [(300, 100), (120, 400), (200, 200)], per_class=3, ext=".png")
    (root / "a" / "broken.png").write_bytes(b"not a png")  # unreadable: left out, extraction names it
    ds = load_dataset(f"folder:{root}")
    assert median_side(ds) == (120, 9, 10)
    assert "of 9 of 10 images" in resolve_image_size("auto", ds, "lite0").how
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("a header read decoded pixels"))
    other_split = load_dataset(f"folder:{root}", seed=1)  # another test split of the same files
    side, measured, total = median_side(other_split, limit=4)
    assert measured == 4 and total == 10
    assert median_side(ds, limit=4) == (side, 4, 10)  # the sample depends on the files, not on --seed


def test_lite_sizes_are_the_weights_own_and_auto_is_parsed_but_never_reaches_a_spec():
    import timm

    for name, size in LITE_INPUT_SIZES.items():
        assert timm.models.get_pretrained_cfg(f"tf_efficientnet_{name}").input_size == (3, size, size)
    parsed = [parse_image_size(v) for v in ("auto", " Auto ", None, "0", "native", 96)]
    assert parsed == ["auto", "auto", None, 0, 0, 96]
    with pytest.raises(UserInputError, match="image size auto is read from the data"):
        ExtractionSpec("lite0", image_size="auto")
    out = run_cli("layers", "--image-size", "auto")
    assert out.returncode == 2 and out.stderr.startswith("error: image size auto is read from the data, which "
                                                         "`layers` (or a bare spec) does not have; give --image-size N")
    assert ExtractionSpec("lite0").image_size == 64  # the spec alone (no data): 64 px, what `layers` shows


# --- the commands -----------------------------------------------------------------------------------

AUTO_72 = ("image size: 72 px (auto: median shorter side 72 px of 24 images, within 64..224, lite0's own size; "
           "--image-size N to choose)")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A folder of 72x80 photos swept as typed, with the default image size."""
    tmp = tmp_path_factory.mktemp("autosize")
    root = photo_folder(tmp / "photos", [(72, 80)], per_class=8)
    mp = pytest.MonkeyPatch()
    from transferlab.features import engine

    mp.setattr(engine, "ESTIMATE_NOTE_SECONDS", 0)  # every extraction is "long": the note must reach the sweep's log
    try:
        out = run_cli("sweep", "--data", f"folder:{root}", "--layers", "bn2", "--heads", "logreg", "--out", tmp / "run",
                      "--cache-dir", tmp / "cache", "--workers", "1", "--batch-size", "8")
    finally:
        mp.undo()
    assert out.returncode == 0, out.stderr
    return root, tmp, out


def test_sweep_prints_records_and_reports_the_resolved_size(swept):
    root, tmp, out = swept
    assert AUTO_72 in out.stderr.splitlines()
    summary = json.loads((tmp / "run" / "results.json").read_text())
    assert summary["config"]["image_size"] == [72]
    assert summary["image_size_from"] == [AUTO_72[len("image size: 72 px ("):-len("; --image-size N to choose)")]]
    assert {r["image_size"] for r in summary["rows"]} == {"72"} and "_72px_" in summary["cache_files"][0]
    first = (tmp / "run" / "report.md").read_text().split("\n\n")[1]
    assert "image size 72 px (auto: median shorter side 72 px of 24 images, within 64..224" in first
    assert any(l.startswith("note: extracting 24 images at 72 px on cpu: about ") and
               l.endswith(" (measured on the first batches)") for l in out.stderr.splitlines())


def test_extract_and_finetune_append_to_take_the_same_size(swept):
    root, tmp, _ = swept
    summary = json.loads((tmp / "run" / "results.json").read_text())
    ext = run_cli("extract", "--data", f"folder:{root}", "--layers", "bn2", "--cache-dir", tmp / "cache")
    assert ext.returncode == 0, ext.stderr
    assert AUTO_72 in ext.stderr.splitlines() and "cache hit" in ext.stderr
    assert ext.stdout.strip().splitlines()[-1] == summary["cache_files"][0]
    ft = run_cli("finetune", "--data", f"folder:{root}", "--mode", "head", "--epochs", "1", "--no-augment",
                 "--out", tmp / "ft", "--append-to", tmp / "run", "--workers", "0")
    assert ft.returncode == 0, ft.stderr
    assert "image size: 72 px (--image-size 72)" in ft.stderr.splitlines()  # the sweep's, not re-resolved
    assert json.loads((tmp / "ft" / "metrics.json").read_text())["config"]["image_size"] == 72


def test_advise_prints_the_resolved_size_and_measures_at_it(swept):
    root, tmp, _ = swept
    out = run_cli("advise", "--data", f"folder:{root}", "--no-random", "--no-scores", "--cache-dir", tmp / "cache")
    assert out.returncode == 0, out.stderr
    assert AUTO_72 in out.stderr.splitlines()
    assert "--image-size 72" in out.stdout.strip().splitlines()[-1]  # the next command names it


def test_a_warm_default_sweep_resolves_auto_without_torch(swept):
    root, tmp, _ = swept
    args = ["sweep", "--data", f"folder:{root}", "--layers", "bn2", "--heads", "logreg", "--out", tmp / "run",
            "--cache-dir", tmp / "cache", "--batch-size", "8"]
    code = ("import sys\nfrom transferlab.pipeline.cli import main\ncode = main(sys.argv[1:])\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch', code)")
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT.parent, capture_output=True,
                         text=True)
    assert out.stdout.strip().splitlines()[-1] == "no torch 0", out.stdout + out.stderr
    assert AUTO_72 in out.stderr.splitlines()


def test_an_explicit_size_and_0_behave_as_before(swept):
    root, tmp, _ = swept
    given = run_cli("extract", "--data", f"folder:{root}", "--layers", "bn2", "--image-size", "64",
                    "--cache-dir", tmp / "cache")
    assert given.returncode == 0 and "image size: 64 px (--image-size 64)" in given.stderr.splitlines()
    assert "_64px_" in given.stdout.strip().splitlines()[-1]
    own = run_cli("extract", "--data", f"folder:{root}", "--layers", "bn2", "--image-size", "0",
                  "--cache-dir", tmp / "cache", "--quiet")
    assert own.returncode == 0 and own.stderr == ""  # --quiet: no size line, no plan
    own_path = own.stdout.strip().splitlines()[-1]
    assert "_224px_" in own_path  # 0 = lite0's own, resolved from the built backbone as before
    same = run_cli("extract", "--data", f"folder:{root}", "--layers", "bn2", "--image-size", "224",
                   "--cache-dir", tmp / "cache")
    assert same.stdout.strip().splitlines()[-1] == own_path and "cache hit" in same.stderr


def test_small_data_keeps_the_cache_key_of_an_explicit_64(tmp_path):
    """32 px data: the default resolves to 64 px and finds the very cache file an explicit 64 wrote."""
    npz = make_npz(tmp_path / "d.npz", n_train=12, n_test=6, size=32)
    explicit = run_cli("extract", "--data", f"npz:{npz}", "--layers", "bn1", "--image-size", "64",
                       "--cache-dir", tmp_path / "c")
    default = run_cli("extract", "--data", f"npz:{npz}", "--layers", "bn1", "--cache-dir", tmp_path / "c")
    assert explicit.returncode == default.returncode == 0, explicit.stderr + default.stderr
    assert default.stdout == explicit.stdout and "_64px_" in default.stdout
    assert default.stderr.splitlines()[1:3] == [  # after the command's first line
        "image size: 64 px (auto: median shorter side 32 px of 18 images, within 64..224, lite0's own size; "
        "--image-size N to choose)", f"cache hit: {default.stdout.strip()}"]  # the memo's hit: same request key


def test_the_estimate_note_is_printed_even_when_quiet_only_when_long(tmp_path, monkeypatch):
    from transferlab.features import engine

    npz = make_npz(tmp_path / "d.npz", n_train=12, n_test=6, size=16)
    args = ["extract", "--data", f"npz:{npz}", "--layers", "bn1", "--image-size", "32", "--batch-size", "4",
            "--cache-dir", tmp_path / "c", "--quiet"]
    short = run_cli(*args)
    assert short.returncode == 0 and short.stderr == ""  # a few seconds: nothing to say
    monkeypatch.setattr(engine, "ESTIMATE_NOTE_SECONDS", 0)
    long = run_cli(*args[:-3], "--cache-dir", tmp_path / "c2", "--quiet")
    notes = long.stderr.splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: extracting 18 images at 32 px on cpu: about ")


def test_append_to_a_sweep_at_the_backbones_own_size_keeps_0(tmp_path):
    """``--image-size 0`` in a sweep is the backbone's own for the fine-tune too (it used to become 64)."""
    from transferlab.pipeline.sweep import sweep_defaults_for_finetune

    (tmp_path / "results.json").write_text(json.dumps({"config": {"data": "digits", "image_size": [0],
                                                                  "val_fraction": 0.2}}))
    values, notes = sweep_defaults_for_finetune(tmp_path, {})
    assert values["image_size"] == 0 and notes == []
    assert sweep_defaults_for_finetune(tmp_path, {"image_size": 0})[1] == []


def test_a_folder_of_unreadable_files_is_one_line_naming_the_fix(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "bad" / c).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "bad" / c / f"{i}.jpg").write_bytes(b"not a jpeg")
    out = run_cli("extract", "--data", f"folder:{tmp_path / 'bad'}", "--cache-dir", tmp_path / "c", "--quiet")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"error: folder:{tmp_path / 'bad'}: none of 4 image files could be read (e.g. ")
    assert out.stderr.rstrip().endswith("remove or replace them, or give --image-size N")
    assert not (tmp_path / "c").exists()  # nothing written
