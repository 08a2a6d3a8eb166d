"""The logreg head's selection on rows that may stay on disk: :func:`select_logreg`.

What :func:`~transferlab.classifiers.protocol.select_and_fit` runs without a validation split, for an
``h5py.Dataset`` larger than memory as for an array; how the rows are read: :class:`RowBlocks`
(:mod:`._batched_lbfgs`); measured in ``bench/out_of_core.md``, extrapolated in ``docs/scaling.md``.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import numpy as np

from transferlab.util import UserInputError

from ._batched_lbfgs import RowBlocks
from .heads import make_head
from .holdout import stratified_holdout

__all__ = ["LogRegSelection", "RowBlocks", "select_logreg"]


@dataclass
class LogRegSelection:
    """What :func:`select_logreg` chose and fitted: ``estimator`` is the head's ``Pipeline``
    (standardiser, ``TorchLogisticRegression``) fitted on all rows at ``C``, chosen on
    ``n_val`` held-out rows; ``scores`` holds the validation accuracy per value of ``Cs`` (NaN:
    not fitted)."""

    estimator: object
    C: float
    Cs: np.ndarray
    scores: np.ndarray
    n_train: int
    n_val: int


def select_logreg(X, y, Cs, *, val_fraction: float = 0.2, seed: int = 0, block_rows: int = 8192,
                  **head_params) -> LogRegSelection:
    """The logreg head's selection, as :func:`~transferlab.classifiers.protocol.select_and_fit` runs it
    without a validation split, on rows in memory or in an ``h5py.Dataset`` larger than memory.

    The steps: a stratified ``val_fraction`` of the rows held out (:func:`stratified_holdout`); the
    head's standardiser fitted on the training rows and, for the refit, on all rows; C chosen by
    the head's ``score_grid`` (:class:`~transferlab.classifiers.fast_logreg.TorchLogisticRegression`)
    on the standardised rows; the head refitted on all rows from the chosen solution (its
    ``refit_init``). Rows are never read all at once: one pass over ``X`` in blocks of
    ``block_rows`` fits the training rows' standardiser and copies the validation rows (in ``X``'s
    dtype: a float16 cache keeps them at half the size), which then update a copy of it into all
    rows' standardiser; every solve reads the rows it needs as
    :class:`RowBlocks`, standardised as they are read; a solve holds them in memory when they fit
    ``memory_budget`` (see :func:`~transferlab.classifiers.fast_logreg.fit_logreg_path`), else
    streams them at every pass. ``head_params`` go to the head (``memory_budget``, ``precision``,
    ``device``, ...).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> float(select_logreg(X, y, [1e-3, 1e-1]).C)
    0.1
    """
    from sklearn.base import clone

    y = np.asarray(y)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise UserInputError(f"features {tuple(X.shape)} and labels {y.shape} do not match: one label per row")
    train, val, reason = stratified_holdout(y, val_fraction, seed)
    if reason is not None:
        raise UserInputError(f"no validation rows to choose C on: {reason}")
    template = make_head("logreg", preprocessing="standardize", solver="torch", **head_params)
    scaler = clone(template.named_steps["standardize"])  # the training rows'
    is_train = np.zeros(y.size, dtype=bool)
    is_train[train] = True
    X_val = np.empty((val.size, X.shape[1]), dtype=X.dtype)
    step = (getattr(X, "chunks", None) or (1,))[0]
    block = max(step, block_rows // step * step)
    for lo in range(0, y.size, block):
        rows = np.asarray(X[lo:lo + block])
        mine = is_train[lo:lo + rows.shape[0]]
        if mine.any():
            scaler.partial_fit(rows[mine])
        first, last = np.searchsorted(val, [lo, lo + rows.shape[0]])
        X_val[first:last] = rows[val[first:last] - lo]
    # all rows': the training rows' statistics updated with the validation rows (instead of a second fit on all),
    # a block at a time (scikit-learn converts what it is given to float64, with temporaries)
    scalers = [scaler, deepcopy(scaler)]
    for lo in range(0, val.size, block):
        scalers[1].partial_fit(X_val[lo:lo + block])

    def view(data, index, scaler):  # standardised in place as read: the pipeline's transform, in float32
        import torch

        mean, scale = (torch.from_numpy(a.astype(np.float32)) for a in (scaler.mean_, scaler.scale_))
        return RowBlocks(data, index, lambda rows: torch.from_numpy(rows).sub_(mean).div_(scale).numpy(),
                         block_rows=block_rows)

    head = template.named_steps["head"]
    scores = np.asarray(head.score_grid(Cs, view(X, train, scalers[0]), y[train], view(X_val, None, scalers[0]),
                                        y[val]), dtype=float)
    C = float(np.asarray(Cs, dtype=float)[int(np.nanargmax(scores))])
    final = clone(template)
    final.steps[0] = ("standardize", scalers[1])
    final.named_steps["head"].set_params(C=C).fit(view(X, None, scalers[1]), y, **head.refit_init(C))
    return LogRegSelection(estimator=final, C=C, Cs=np.asarray(Cs, dtype=float), scores=scores,
                           n_train=int(train.size), n_val=int(val.size))
