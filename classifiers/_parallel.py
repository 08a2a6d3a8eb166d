"""Independent fits through joblib: one helper, so every caller honours n_jobs and the backend the same way."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import joblib
from joblib import Parallel, delayed

from transferlab.util import UserInputError


def check_backend(backend: str | None) -> None:
    """Raise UserInputError unless joblib knows ``backend`` (registering ray on demand)."""
    if backend is None:
        return
    from joblib import parallel as jp

    known = set(jp.BACKENDS) | set(getattr(jp, "EXTERNAL_BACKENDS", {}))
    if backend == "ray" and backend not in known:
        try:
            from ray.util.joblib import register_ray
        except ImportError:
            raise UserInputError("joblib backend 'ray' needs the ray package: pip install ray") from None
        register_ray()
        return
    if backend not in known:
        raise UserInputError(f"unknown joblib backend {backend!r}: choose one of {', '.join(sorted(known | {'ray'}))}")


@contextmanager
def parallel(n_jobs: int | None = 1, backend: str | None = None):
    """Yield ``run(fn, list_of_arg_tuples) -> list`` running the calls through joblib.

    ``backend=None`` keeps joblib's current default, so an enclosing
    ``joblib.parallel_config(backend=...)`` applies (loky otherwise).
    """
    check_backend(backend)
    config = joblib.parallel_config(backend=backend) if backend is not None else nullcontext()
    with config:
        pool = Parallel(n_jobs=n_jobs)

        def run(fn, arglist):
            return list(pool(delayed(fn)(*args) for args in arglist))

        yield run
