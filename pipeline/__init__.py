"""The sweep, its results folder and report, advice, prediction and the ``transferlab`` command line.

The names are loaded on first use (as in :mod:`transferlab`), so the CLI's light paths (``--help``, a
warm rerun) import no torch. The functions ``sweep``, ``advise`` and ``predict`` share their module's
name, so they are not package attributes here (``transferlab.pipeline.sweep`` stays the module):
take them from :mod:`transferlab` or from their modules.
"""
from __future__ import annotations

from transferlab.util import lazy_names

# public name -> submodule that defines it
_API = {name: f".{module}" for module, names in {
    "advise": ("Advice",),
    "decision": ("Decision", "Evidence", "decide"),
    "results": ("SweepResult", "load_results"),
    "sweep": ("SweepConfig",),
}.items() for name in names}

__all__ = list(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
