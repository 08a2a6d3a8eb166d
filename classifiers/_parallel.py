"""Independent fits through joblib: one helper, so every caller honours n_jobs and the backend the same way.

Backends are joblib's: ``loky`` (the default: local processes), ``threading``, ``sequential``, and,
with their optional extras, ``dask`` (``pip install 'transferlab[dask]'``: the fits run on the
workers of a ``dask.distributed`` cluster) and ``ray`` (``pip install 'transferlab[ray]'``).
Callers pass only small arguments (a cache file's path, a layer name): each worker reads the
features from the file itself, so the cache must sit on storage the workers share.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import joblib
from joblib import Parallel, delayed

from transferlab.util import UserInputError

def check_backend(backend: str | None) -> None:
    """Raise UserInputError unless joblib knows ``backend`` and its package is installed (ray registered on demand)."""
    if backend is None:
        return
    from joblib import parallel as jp

    known = set(jp.BACKENDS) | set(getattr(jp, "EXTERNAL_BACKENDS", {}))
    if backend == "ray" and backend not in known:
        try:
            from ray.util.joblib import register_ray
        except ImportError:
            raise UserInputError("joblib backend 'ray' needs the ray package: pip install 'transferlab[ray]'") from None
        register_ray()
        return
    if backend == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise UserInputError("joblib backend 'dask' needs dask.distributed: pip install 'transferlab[dask]'") from None
    if backend not in known:
        raise UserInputError(f"unknown joblib backend {backend!r}: choose one of {', '.join(sorted(known | {'ray'}))}")


@contextmanager
def _dask_client():
    """The current dask client, or one made for this call (``$DASK_SCHEDULER_ADDRESS``, else a local cluster)."""
    from distributed import Client

    try:
        Client.current()
        yield
        return
    except ValueError:  # no client yet
        pass
    with Client():
        yield


@contextmanager
def parallel(n_jobs: int | None = 1, backend: str | None = None, lazy: bool = False):
    """Yield ``run(fn, list_of_arg_tuples)`` running the calls through joblib.

    ``run`` returns a list, or with ``lazy=True`` a generator that gives the results in order as
    they finish (so a caller can keep each one before the next arrives).
    ``backend=None`` keeps joblib's current default, so an enclosing
    ``joblib.parallel_config(backend=...)`` applies (loky otherwise).
    """
    check_backend(backend)
    config = joblib.parallel_config(backend=backend) if backend is not None else nullcontext()
    with _dask_client() if backend == "dask" else nullcontext(), config:
        pool = Parallel(n_jobs=n_jobs, return_as="generator" if lazy else "list")

        def run(fn, arglist):
            results = pool(delayed(fn)(*args) for args in arglist)
            return results if lazy else list(results)

        yield run
