"""Feature preprocessing in front of a head: ``none``, ``l2``, ``standardize``, ``l2+standardize``, optional PCA.

The steps are scikit-learn transformers placed inside the head's ``Pipeline``, so whatever they
learn (means, scales, principal axes) is fitted on the training rows only and travels with the
saved head. ``l2`` scales each row to unit Euclidean norm (VISSL's linear SVM protocol, and cosine
similarity for k-NN); ``standardize`` centres and scales each dimension; PCA keeps the leading
``pca`` components after them.
"""

from __future__ import annotations

from sklearn.decomposition import PCA
from sklearn.preprocessing import Normalizer, StandardScaler

from transferlab.util import UserInputError

PREPROCESSING = ("none", "l2", "standardize", "l2+standardize")


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
        steps.append(("standardize", StandardScaler()))
    if pca is not None:
        steps.append(("pca", PCA(n_components=pca, random_state=seed)))
    return steps


def describe_preprocessing(name: str, pca: int | None = None) -> str:
    """One token for results tables, e.g. ``"l2"`` or ``"standardize+pca64"``."""
    check_preprocessing(name, pca)
    if pca is None:
        return name
    return f"pca{pca}" if name == "none" else f"{name}+pca{pca}"
