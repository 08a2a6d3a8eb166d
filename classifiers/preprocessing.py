"""Feature preprocessing in front of a head: ``none``, ``l2``, ``standardize``, ``l2+standardize``, optional PCA.

The steps are scikit-learn transformers placed inside the head's ``Pipeline``, so whatever they
learn (means, scales, principal axes) is fitted on the training rows only and travels with the
saved head. ``l2`` scales each row to unit Euclidean norm (VISSL's linear SVM protocol, and cosine
similarity for k-NN); ``standardize`` centres and scales each dimension, with each dimension's
variance shrunk toward the mean variance by ``prior_rows`` pseudo-rows
(:class:`ShrunkStandardScaler`): on thousands of rows that is scikit-learn's ``StandardScaler``
to a fraction of a percent, while on ten rows (1-shot) a dimension that happens to be nearly
constant is no longer blown up to dominate the others; PCA keeps the leading ``pca`` components
after them.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import Normalizer, StandardScaler

from transferlab.util import UserInputError

PREPROCESSING = ("none", "l2", "standardize", "l2+standardize")


class ShrunkStandardScaler(StandardScaler):
    """``StandardScaler`` whose variances are shrunk toward their mean: ``(n var_j + k mean(var)) / (n + k)``.

    Parameters
    ----------
    prior_rows : float
        ``k``, the weight of the mean variance in rows; 0 gives ``StandardScaler`` exactly.

    Examples
    --------
    >>> X = np.array([[0.0, 1.0], [0.0, 3.0], [1e-3, 5.0]])
    >>> s = ShrunkStandardScaler(prior_rows=3).fit(X)
    >>> bool(s.scale_[0] > 100 * StandardScaler().fit(X).scale_[0])
    True
    """

    def __init__(self, *, prior_rows=10.0, copy=True, with_mean=True, with_std=True):
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)
        self.prior_rows = prior_rows

    def partial_fit(self, X, y=None, sample_weight=None):  # fit() calls it: chunk by chunk gives the same scales
        super().partial_fit(X, y, sample_weight)
        if self.with_std and self.var_ is not None:
            n = float(np.max(self.n_samples_seen_))
            var = (n * self.var_ + self.prior_rows * float(np.mean(self.var_))) / (n + self.prior_rows)
            self.scale_ = np.where(var > np.finfo(var.dtype).eps, np.sqrt(var), 1.0)
        return self


def check_preprocessing(name: str, pca: int | None = None) -> None:
    """Raise UserInputError unless ``name`` is a known preprocessing and ``pca`` a positive int or None."""
    if name not in PREPROCESSING:
        raise UserInputError(f"unknown preprocessing {name!r}: choose one of {', '.join(PREPROCESSING)}")
    if pca is not None and (isinstance(pca, bool) or not isinstance(pca, int) or pca < 1):
        raise UserInputError(f"pca must be a positive number of dimensions or None, got {pca!r}")


def make_preprocessing(name: str, pca: int | None = None, seed: int = 0) -> list[tuple[str, object]]:
    """Pipeline steps for a preprocessing name.

    Parameters
    ----------
    name : {"none", "l2", "standardize", "l2+standardize"}
        What to do to the features, in that order (L2 first, then standardisation).
    pca : int, optional
        Keep this many principal components after the steps above (capped at the data's
        rank when fitted, see :func:`classifiers.heads.adapt_to_data`).
    seed : int
        Random state of the PCA solver.

    Returns
    -------
    list of (str, transformer)
        Steps named ``l2``, ``standardize`` and ``pca``; empty for ``none``.

    Examples
    --------
    >>> [step for step, _ in make_preprocessing("l2+standardize", pca=32)]
    ['l2', 'standardize', 'pca']
    """
    check_preprocessing(name, pca)
    steps: list[tuple[str, object]] = []
    if name in ("l2", "l2+standardize"):
        steps.append(("l2", Normalizer(norm="l2")))
    if name in ("standardize", "l2+standardize"):
        steps.append(("standardize", ShrunkStandardScaler()))
    if pca is not None:
        steps.append(("pca", PCA(n_components=pca, random_state=seed)))
    return steps


def describe_preprocessing(name: str, pca: int | None = None) -> str:
    """One token for results tables, e.g. ``"l2"`` or ``"standardize+pca64"``."""
    check_preprocessing(name, pca)
    if pca is None:
        return name
    return f"pca{pca}" if name == "none" else f"{name}+pca{pca}"
