"""The head registry: each head's estimator, hyperparameter grid and default preprocessing.

A head is a scikit-learn ``Pipeline`` of the preprocessing steps (see
:mod:`classifiers.preprocessing`) followed by a step named ``head``:

========  ==========================================================  ==============  ============
name      estimator                                                   grid parameter  preprocessing
========  ==========================================================  ==============  ============
svm       linear SVM, squared hinge, one-vs-rest (torch or sklearn)   ``C``           l2
svm-rbf   ``SVC(kernel="rbf", gamma="scale")``, for small data        ``C``           standardize
logreg    multinomial L2 logistic regression (torch or scikit-learn)  ``C``           standardize
ridge     least-squares probe (:mod:`.ridge`), one eigh for the grid   ``alpha``       standardize
mlp       MLP, 256 hidden units, early stopping; torch (.fast_mlp)    ``alpha``       standardize
knn       k-NN, cosine, distance-weighted; torch search (.fast_knn)   ``n_neighbors`` l2
========  ==========================================================  ==============  ============

The logreg grid follows Kornblith et al. 2019 (C log-spaced over [1e-6, 1e5]: 12 values by default,
their 45 with ``full=True``); the SVM grid extends VISSL's ([0.01, 0.1, 1, 10, 100]) to 10^4: on
L2-normalised features of early layers the best C often lies above 100. A choice on the edge of its
grid is noted in the results row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC, LinearSVC

from transferlab.util import UserInputError

from .fast_knn import TorchKNeighborsClassifier
from .fast_logreg import TorchLogisticRegression
from .fast_mlp import TorchMLPClassifier
from .fast_svm import TorchLinearSVC
from .preprocessing import check_preprocessing, make_preprocessing
from .ridge import RidgeProbe

SOLVERS = ("torch", "sklearn")


@dataclass(frozen=True)
class HeadSpec:
    """What the registry knows about one head."""

    name: str
    description: str
    build: Callable[..., object]  # build(seed, **params) -> unfitted estimator
    param: str  # the hyperparameter the grid searches
    grid: tuple
    full_grid: tuple
    default: object  # value of ``param`` when there is no validation data to select on
    preprocessing: str
    solvers: tuple = field(default=())


_REGISTRY: dict[str, HeadSpec] = {}


def register_head(spec: HeadSpec) -> HeadSpec:
    """Add a head to the registry (a later registration of the same name replaces it)."""
    _REGISTRY[spec.name] = spec
    return spec


def available_heads() -> tuple[str, ...]:
    """Names of the registered heads."""
    return tuple(_REGISTRY)


def get_head_spec(name: str) -> HeadSpec:
    """The :class:`HeadSpec` of ``name``; UserInputError listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UserInputError(f"unknown head {name!r}: choose one of {', '.join(available_heads())}") from None


def default_grid(name: str, full: bool = False) -> dict[str, list]:
    """The hyperparameter grid of a head, as ``{parameter: values}``.

    Examples
    --------
    >>> len(default_grid("logreg")["C"]), len(default_grid("logreg", full=True)["C"])
    (12, 45)
    """
    spec = get_head_spec(name)
    return {spec.param: list(spec.full_grid if full else spec.grid)}


def default_preprocessing(name: str) -> str:
    """The preprocessing a head uses unless told otherwise."""
    return get_head_spec(name).preprocessing


def make_head(name: str, *, preprocessing: str | None = None, pca: int | None = None, seed: int = 0,
              solver: str | None = None, **params) -> Pipeline:
    """Build an unfitted head: preprocessing steps, then the estimator as step ``head``.

    Parameters
    ----------
    name : str
        A registered head: ``svm``, ``svm-rbf``, ``logreg``, ``mlp``, ``knn``.
    preprocessing : str, optional
        ``none``, ``l2``, ``standardize`` or ``l2+standardize``; default: the head's own.
    pca : int, optional
        Reduce to this many principal components after preprocessing.
    seed : int
        Random state of every seeded step.
    solver : {"torch", "sklearn"}, optional
        logreg and svm: ``torch`` (default: :class:`TorchLogisticRegression`, :class:`TorchLinearSVC`,
        whose ``score_grid`` solves the whole grid at once) or scikit-learn's estimator.
    **params
        Parameters of the estimator (e.g. ``C=0.1``, ``n_neighbors=3``, ``device="cuda"``).

    Returns
    -------
    sklearn.pipeline.Pipeline

    Examples
    --------
    >>> make_head("knn", n_neighbors=3).named_steps["head"].n_neighbors
    3
    """
    spec = get_head_spec(name)
    preprocessing = spec.preprocessing if preprocessing is None else preprocessing
    check_preprocessing(preprocessing, pca)
    if solver is not None and solver not in spec.solvers:
        choices = ", ".join(spec.solvers) if spec.solvers else "none (leave it unset)"
        raise UserInputError(f"head {name!r} has no solver {solver!r}; solvers: {choices}")
    if spec.solvers:
        params["solver"] = solver or spec.solvers[0]
    try:
        estimator = spec.build(seed, **params)
    except TypeError as exc:
        raise UserInputError(f"bad parameter for head {name!r}: {exc}") from None
    return Pipeline(make_preprocessing(preprocessing, pca, seed) + [("head", estimator)])


def solver_of(estimator) -> str:
    """``torch`` for the project's batched-solver estimators, ``sklearn`` otherwise."""
    return "torch" if isinstance(estimator, (TorchLogisticRegression, TorchLinearSVC)) else "sklearn"


def adapt_to_data(estimator: Pipeline, n_samples: int, n_features: int, n_classes: int) -> tuple[Pipeline, list[str]]:
    """Clip parameters that tiny training sets cannot support; returns a clone and what changed.

    k of k-NN is capped at the number of rows, PCA at min(rows, dims), and the MLP's early
    stopping is switched off when its internal 10% split cannot hold every class.
    """
    estimator = clone(estimator)
    notes: list[str] = []
    steps = dict(estimator.steps)
    head = steps["head"]
    if isinstance(head, KNeighborsClassifier) and head.n_neighbors > n_samples:
        notes.append(f"n_neighbors {head.n_neighbors} -> {n_samples} (training rows)")
        head.set_params(n_neighbors=n_samples)
    if isinstance(head, MLPClassifier) and head.early_stopping:
        n_val = math.ceil(head.validation_fraction * n_samples)
        if n_val < n_classes or n_samples - n_val < n_classes or n_samples < 2 * n_classes:
            notes.append("mlp early stopping off (too few rows for its validation split)")
            head.set_params(early_stopping=False)
    pca = steps.get("pca")
    if pca is not None and isinstance(pca.n_components, int) and pca.n_components > min(n_samples, n_features):
        notes.append(f"pca {pca.n_components} -> {min(n_samples, n_features)} (rank bound)")
        pca.set_params(n_components=min(n_samples, n_features))
    return estimator, notes


def _svm(seed, C=1.0, solver="torch", **params):
    if solver == "torch":
        return TorchLinearSVC(C=C, **params)
    params.setdefault("max_iter", 5000)
    return LinearSVC(C=C, random_state=seed, **params)


def _svm_rbf(seed, C=1.0, **params):
    return SVC(C=C, kernel="rbf", gamma=params.pop("gamma", "scale"), random_state=seed, **params)


def _logreg(seed, C=1.0, solver="torch", **params):
    if solver == "torch":
        params.setdefault("max_iter", 200)
        return TorchLogisticRegression(C=C, **params)
    params.setdefault("max_iter", 1000)
    return LogisticRegression(C=C, random_state=seed, **params)


def _ridge(seed, alpha=1.0, **params):
    return RidgeProbe(alpha=alpha, **params)


def _mlp(seed, alpha=1e-4, **params):
    params.setdefault("hidden_layer_sizes", (256,))
    params.setdefault("early_stopping", True)
    params.setdefault("n_iter_no_change", 1)
    params.setdefault("max_iter", 200)
    return TorchMLPClassifier(alpha=alpha, random_state=seed, **params)


def _knn(seed, n_neighbors=5, **params):
    params.setdefault("weights", "distance")
    params.setdefault("metric", "cosine")
    params.setdefault("algorithm", "brute")
    return TorchKNeighborsClassifier(n_neighbors=n_neighbors, **params)


def _logspace(lo, hi, n):
    return tuple(float(c) for c in np.logspace(lo, hi, n))


register_head(HeadSpec("svm", "linear SVM (squared hinge, one-vs-rest)", _svm, "C",
                       (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0), _logspace(-3, 5, 17), 1.0, "l2",
                       solvers=SOLVERS))
register_head(HeadSpec("svm-rbf", "kernel SVM, RBF (small data)", _svm_rbf, "C", (0.1, 1.0, 10.0, 100.0),
                       _logspace(-2, 3, 11), 1.0, "standardize"))
register_head(HeadSpec("logreg", "multinomial L2 logistic regression", _logreg, "C", _logspace(-6, 5, 12),
                       _logspace(-6, 5, 45), 1.0, "standardize", solvers=SOLVERS))
register_head(HeadSpec("ridge", "least-squares probe (RidgeClassifier, spectral grid)", _ridge, "alpha",
                       _logspace(-2, 6, 17), _logspace(-3, 7, 45), 1.0, "standardize"))
register_head(HeadSpec("mlp", "one-hidden-layer MLP, early stopping", _mlp, "alpha",
                       (1e-5, 1e-4, 1e-3, 1e-2, 1e-1), _logspace(-6, 1, 15), 1e-4, "standardize"))
register_head(HeadSpec("knn", "k nearest neighbours, cosine, distance-weighted", _knn, "n_neighbors",
                       (1, 3, 5, 10, 20), (1, 2, 3, 5, 7, 10, 15, 20, 30, 50), 5, "l2"))
