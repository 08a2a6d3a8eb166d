"""Stub: thingsvision imports tensorflow at import time; its PyTorch path never calls it.

Any ``tensorflow.*`` submodule imports as an empty module whose attributes are empty namespaces."""
import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0-stub"


class _Any:
    """Any attribute is another _Any; calling one returns an empty list (e.g. no GPUs)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Any()

    def __call__(self, *a, **k):
        return []


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Any()


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.startswith("tensorflow."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        m = _Stub(spec.name)
        m.__path__ = []
        return m

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Any()
