"""Independent fits through joblib: one helper, so every caller honours n_jobs and the backend the same way.

Backends are joblib's: ``loky`` (the default: local processes), ``threading``, ``sequential``, and,
with their optional extras, ``dask`` (``pip install 'transferlab[dask]'``: the fits run on the
workers of a ``dask.distributed`` cluster) and ``ray`` (``pip install 'transferlab[ray]'``).
Callers pass only small arguments (a cache file's path, a layer name): each worker reads the
features from the file itself, so the cache must sit on storage the workers share.

Which dask cluster: the current client; else the scheduler at ``$DASK_SCHEDULER_ADDRESS`` (dask's
``scheduler-address`` setting; one that does not answer within ``DASK_CONNECT_TIMEOUT_S`` is a
one-line error); else a local cluster of single-threaded worker processes, one per core (or per
``n_jobs`` when given), started for the call, announced through ``log`` and closed after it.
Ray: ``ray.init()``'s own rule (``$RAY_ADDRESS``, else a Ray instance on this machine); an
address that does not answer is a one-line error. While a local (loky) pool runs, SIGTERM and
Ctrl-C shut its worker processes down before the process ends.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import ExitStack, contextmanager, suppress

import joblib
from joblib import Parallel, delayed

from transferlab.util import UserInputError

DASK_CONNECT_TIMEOUT_S = 5


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
            raise UserInputError("joblib backend 'dask' needs dask.distributed: "
                                 "pip install 'transferlab[dask]'") from None
    if backend not in known:
        raise UserInputError(f"unknown joblib backend {backend!r}: choose one of {', '.join(sorted(known | {'ray'}))}")


@contextmanager
def _dask_client(n_jobs, log):
    """The current dask client, else one for this call: ``$DASK_SCHEDULER_ADDRESS``, else a local cluster."""
    import dask
    from distributed import Client, LocalCluster

    try:
        Client.current()
        current = True
    except ValueError:  # no client yet
        current = False
    address = None if current else dask.config.get("scheduler-address", None)
    if current:
        yield
    elif address:
        try:
            client = Client(address, timeout=DASK_CONNECT_TIMEOUT_S)
        except Exception as exc:  # OSError (no answer), ValueError (no port), ...: the address is the user's
            raise UserInputError(f"cannot connect to the dask scheduler at {address} ($DASK_SCHEDULER_ADDRESS): "
                                 f"{exc}; start it (dask scheduler), correct the address, or unset "
                                 f"DASK_SCHEDULER_ADDRESS to run on a local cluster") from None
        with client:
            yield
    else:
        n = joblib.effective_n_jobs(n_jobs)
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster):  # not its shutdown chatter
            log(f"note: dask: no client and no $DASK_SCHEDULER_ADDRESS: started a local cluster of {n} worker "
                f"processes (set DASK_SCHEDULER_ADDRESS=tcp://HOST:8786 to use a running one)")
            yield


@contextmanager
def _ray_runtime():
    """Ray started or connected before joblib's ray backend needs it, so an address that does not answer is one line."""
    import ray

    if ray.is_initialized():
        yield
        return
    try:
        ray.init()  # $RAY_ADDRESS, else a running instance on this machine, else a new local one
    except (ConnectionError, TimeoutError) as exc:
        raise UserInputError(f"cannot connect to the Ray cluster ($RAY_ADDRESS): {exc}; start it (ray start), "
                             f"correct RAY_ADDRESS, or unset it to run on this machine") from None
    try:
        yield
    finally:
        ray.shutdown()


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread while a local pool runs, so the pool is shut down on the way out."""


def _end_loky_workers():
    """Kill the workers of the pool joblib's loky backend reuses, then shut it down.

    The workers are found as this process's children: the pool's own shutdown reaches them only once
    all have started and its manager thread runs, and a signal may come in before.
    """
    import multiprocessing

    from joblib.externals.loky import get_reusable_executor
    from joblib.externals.loky.backend.process import LokyProcess

    for proc in multiprocessing.active_children():
        if isinstance(proc, LokyProcess):
            proc.terminate()
    with suppress(RuntimeError):  # "cannot join thread before it is started": stopped while starting its manager
        get_reusable_executor(kill_workers=True).shutdown(kill_workers=True)


@contextmanager
def _pool_ends_with_the_process():
    """SIGTERM and Ctrl-C (SIGINT) shut the loky pool's worker processes down, which would outlive the process.

    SIGTERM then ends the process as it would have ended (killed by the signal); Ctrl-C goes on as
    KeyboardInterrupt, also where the interrupted pool code turned it into another error. A signal
    whose handler is not Python's default is left alone, and so is everything off the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []

    def stop(signum, frame):
        caught.append(signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else _Terminated

    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    mine = [s for s, default in defaults.items() if signal.getsignal(s) is default]
    for s in mine:
        signal.signal(s, stop)
    try:
        yield
    except BaseException:
        if not caught:
            raise
        try:
            _end_loky_workers()
        finally:
            for s in mine:
                signal.signal(s, defaults[s])
            if signal.SIGTERM in caught:
                signal.raise_signal(signal.SIGTERM)
        raise KeyboardInterrupt from None
    finally:
        for s in mine:
            signal.signal(s, defaults[s])


@contextmanager
def parallel(n_jobs: int | None = 1, backend: str | None = None, lazy: bool = False, log=lambda message: None):
    """Yield ``run(fn, list_of_arg_tuples)`` running the calls through joblib.

    ``run`` returns a list, or with ``lazy=True`` a generator that gives the results in order as
    they finish (so a caller can keep each one before the next arrives).
    ``backend=None`` keeps joblib's current default, so an enclosing
    ``joblib.parallel_config(backend=...)`` applies (loky otherwise). ``log`` gets the one line
    that says a local dask cluster was started.
    """
    check_backend(backend)
    with ExitStack() as stack:
        if backend == "dask":  # joblib's dask backend wants its client before its config
            stack.enter_context(_dask_client(n_jobs, log))
        elif backend == "ray":
            stack.enter_context(_ray_runtime())
        elif backend in (None, "loky") and n_jobs != 1:
            stack.enter_context(_pool_ends_with_the_process())
        if backend is not None:
            stack.enter_context(joblib.parallel_config(backend=backend))
        pool = Parallel(n_jobs=n_jobs, return_as="generator" if lazy else "list")

        def run(fn, arglist):
            results = pool(delayed(fn)(*args) for args in arglist)
            return results if lazy else list(results)

        yield run
