"""One ``__init__`` style: every package of ``transferlab`` loads its public names on first use."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGES = ["transferlab", "transferlab.features", "transferlab.classifiers", "transferlab.finetuning",
            "transferlab.pipeline"]


def test_importing_every_package_imports_no_torch_and_defines_no_name_eagerly():
    code = ("import sys, importlib\n"
            f"for name in {PACKAGES!r}:\n"
            "    pkg = importlib.import_module(name)\n"
            "    eager = [n for n in pkg.__all__ if n in vars(pkg) and n not in ('UserInputError', '__version__')]\n"
            "    assert not eager, (name, eager)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_to_the_module_the_package_names(package):
    import importlib

    pkg = importlib.import_module(package)
    assert set(pkg.__all__) <= set(dir(pkg))
    for name in pkg.__all__:
        value = getattr(pkg, name)
        module = getattr(value, "__module__", None)
        if module is not None and not isinstance(value, (int, str, tuple, dict)):
            assert module.startswith("transferlab."), (package, name, module)


def test_a_submodule_named_like_a_function_stays_a_module():
    import types

    from transferlab.pipeline import advise, predict, sweep

    assert all(isinstance(m, types.ModuleType) for m in (advise, predict, sweep))
