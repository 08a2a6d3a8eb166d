"""One import name: the installed project is `transferlab`, with the API at the top and `python -m transferlab`."""
import shutil
import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def test_import_transferlab_gives_the_api_without_importing_torch():
    code = ("import sys, transferlab; assert 'torch' not in sys.modules; "
            "names = ['extract', 'sweep', 'train_head', 'finetune', 'predict', 'load_dataset', 'build_backbone', "
            "'ExtractionSpec', 'SweepConfig', 'FinetuneConfig', 'UserInputError']; "
            "assert all(callable(getattr(transferlab, n)) for n in names); "
            "from transferlab.features.extraction import extract; assert transferlab.extract is extract; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_users_own_features_module_does_not_shadow_ours(tmp_path):
    (tmp_path / "features.py").write_text("raise ImportError('the user module was imported')\n")
    (tmp_path / "pipeline.py").write_text("raise ImportError('the user module was imported')\n")
    code = ("import transferlab.features, transferlab.finetuning.run, transferlab.pipeline.cli; "
            "assert callable(transferlab.finetune); print(transferlab.features.extract.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "transferlab.features.extraction"


def test_python_dash_m_transferlab_is_the_command_line():
    out = subprocess.run([sys.executable, "-m", "transferlab", "layers", "--backbone", "lite0", "--layers",
                          "blocks.2,bn2", "--json"], cwd=ROOT.parent, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert '"layer": "blocks.2"' in out.stdout


def test_a_wheel_installs_exactly_one_top_level_package(tmp_path):
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools reuses build/lib: no stale files in the wheel
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("transferlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"transferlab"}
    for sub in ("features", "classifiers", "finetuning", "pipeline"):
        assert f"transferlab/{sub}/__init__.py" in names
    assert "transferlab/features/cache.py" in names and not any(n.startswith("tests/") for n in names)
