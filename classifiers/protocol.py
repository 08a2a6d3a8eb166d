"""The selection protocol: choose hyperparameters on validation rows, refit on train+val, test once.

1. Validation rows are the data's own ``val`` split when there is one, else a seeded stratified
   fraction of train (:func:`stratified_holdout`: the rows fine-tuning and ``advise`` hold out
   too). When neither is possible (say one example per class), there is no selection: the head's
   default hyperparameters are used and ``selection`` says why.
2. Every grid point is fitted on the training rows (preprocessing included, so scalers and PCA
   see training rows only) and scored on the validation rows; the first best in grid order wins.
   Grid points are independent fits run through joblib, unless the head's estimator offers
   ``score_grid(values, X_train, y_train, X_val, y_val)`` for its grid parameter (the torch logreg
   solves the whole C grid in one batched solve that way); preprocessing is then fitted once.
   ``score_grid`` may leave values it judged not worth fitting as NaN (past the validation peak):
   they are never chosen, are recorded as ``None`` and named in a note, and the refit may start
   from the grid's work (``refit_init``; not across PCA).
3. The chosen head is refitted on train+val and evaluated once on test.

The test rows are not passed to any code that runs before step 3.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn import config_context
from sklearn.base import clone
from sklearn.metrics import classification_report
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline

from transferlab.util import UserInputError, jsonable

from ._validation import check_features, check_labels, check_two_classes
from .heads import adapt_to_data, default_grid, get_head_spec, make_head, solver_of
from .holdout import stratified_holdout
from .parallel import parallel
from .preprocessing import describe_preprocessing


@dataclass
class HeadResult:
    """Outcome of :func:`select_and_fit`; ``to_dict()`` gives everything but the estimator."""

    estimator: Pipeline
    head: str
    params: dict
    val_accuracy: float | None
    test_accuracy: float | None
    fit_seconds: float
    val_scores: list = field(default_factory=list)
    report: dict | None = None
    seed: int = 0
    preprocessing: str = "none"
    pca: int | None = None
    selection: str = ""
    solver: str | None = None
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        row = asdict(self)
        row.pop("estimator")
        return row


def sample_shots(y, k: int, seed: int = 0) -> np.ndarray:
    """Indices of ``k`` examples of every class, drawn with a seed.

    For one seed the draws are nested: the ``k=1`` examples are among the ``k=5`` ones.

    Parameters
    ----------
    y : array-like of shape (N,)
        Labels.
    k : int
        Examples per class (``--shots``).
    seed : int
        Seed of the draw.

    Returns
    -------
    ndarray of int64
        Sorted row indices, ``k`` per class.

    Examples
    --------
    >>> sample_shots([0, 0, 1, 1, 1], 1, seed=0).size
    2
    """
    y = np.asarray(y)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserInputError(f"shots must be a positive number of examples per class, got {k!r}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if rows.size < k:
            raise UserInputError(f"class {c} has only {rows.size} training examples, fewer than shots={k}: lower shots")
        picked.append(rows[rng.permutation(rows.size)[:k]])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _fit_score(template, params, X_tr, y_tr, X_val, y_val, n_classes):
    est = clone(template).set_params(**{f"head__{k}": v for k, v in params.items()})
    est, _ = adapt_to_data(est, X_tr.shape[0], X_tr.shape[1], n_classes)
    est.fit(X_tr, y_tr)
    return float(np.mean(est.predict(X_val) == y_val))


def _resolved_grid(spec, grid, full: bool = False) -> dict:
    """``grid`` as ``{parameter: values}``: given so, the values of the head's own parameter, or None (the
    registry's grid, its full one with ``full``)."""
    if grid is None:
        return default_grid(spec.name, full=full)
    return grid if isinstance(grid, dict) else {spec.param: list(grid)}


def _one_parameter(spec, grid_points) -> bool:
    """Whether every point sets only the head's own parameter (what ``score_grid``/``score_folds`` take)."""
    return all(list(p) == [spec.param] for p in grid_points)


def _preprocessor(template, n_rows: int, dims: int, n_classes: int):
    """The template's preprocessing steps alone (the head passed through), adapted to the data's shape."""
    return adapt_to_data(Pipeline(template.steps[:-1] + [("head", "passthrough")]), n_rows, dims, n_classes)[0]


def _grid_scores(template, values, X_tr, y_tr, X_val, y_val, n_classes):
    """One call of the head's ``score_grid`` over the whole grid, on once-preprocessed rows."""
    pre = _preprocessor(template, X_tr.shape[0], X_tr.shape[1], n_classes)
    Z_tr = pre.fit_transform(X_tr, y_tr)
    return template.named_steps["head"].score_grid(values, Z_tr, y_tr, pre.transform(X_val), y_val)


def _select(template, spec, grid_points, X_tr, y_tr, X_val, y_val, n_classes, n_jobs, backend):
    """Validation accuracy per grid point. Sees training and validation rows only."""
    if hasattr(template.named_steps["head"], "score_grid") and _one_parameter(spec, grid_points):
        return _grid_scores(template, [p[spec.param] for p in grid_points], X_tr, y_tr, X_val, y_val, n_classes)
    with parallel(n_jobs, backend) as run:
        return run(_fit_score, [(template, p, X_tr, y_tr, X_val, y_val, n_classes) for p in grid_points])


def grid_scores(X_train, y_train, X_val, y_val, head: str, *, grid=None, preprocessing: str | None = None,
                seed: int = 0, n_jobs: int = 1, backend: str | None = None) -> tuple[list, np.ndarray]:
    """Validation accuracy of every grid point of ``head`` fitted on the training rows: step 2 alone.

    Returns ``(grid_points, scores)``; a score is NaN where the head's ``score_grid`` judged the
    point not worth fitting (past the validation peak). No refit, no test rows: repeated k-fold
    comparisons call it once per fold for heads that cannot stack their folds (:func:`fold_grid_scores`).
    """
    spec = get_head_spec(head)
    X_train = check_features(X_train, "training features")
    y_train = check_labels(y_train, X_train.shape[0], "training labels")
    X_val = check_features(X_val, "validation features")
    y_val = check_labels(y_val, X_val.shape[0], "validation labels")
    template = make_head(head, preprocessing=preprocessing, seed=seed)
    points = list(ParameterGrid(_resolved_grid(spec, grid)))
    scores = _select(template, spec, points, X_train, y_train, X_val, y_val, np.unique(y_train).size, n_jobs, backend)
    return points, np.asarray(scores, dtype=float)


def fold_grid_scores(X, y, splits: list, head: str, *, grid=None, preprocessing: str | None = None,
                     seed: int = 0) -> tuple[list, np.ndarray]:
    """Held-out accuracy of every grid point of ``head`` on every fold of ``splits``: :func:`grid_scores`
    per fold, ``(grid_points, table)`` with ``table`` (folds, points).

    A head whose estimator has ``score_folds`` (the torch logistic regression) fits every fold in one
    stack; its preprocessing (the scaler's centre and scale) is then fitted once on all of ``X``'s
    rows, the held-out folds' features included (never their labels), so that every fold's problem
    is on the same rows. Other heads: one :func:`grid_scores` per fold.
    """
    spec = get_head_spec(head)
    X = check_features(X, "features")
    y = check_labels(y, X.shape[0], "labels")
    template = make_head(head, preprocessing=preprocessing, seed=seed)
    points = list(ParameterGrid(_resolved_grid(spec, grid)))
    estimator = template.named_steps["head"]
    if not hasattr(estimator, "score_folds") or not _one_parameter(spec, points):
        table = [grid_scores(X[tr], y[tr], X[te], y[te], head, grid=grid, preprocessing=preprocessing, seed=seed)[1]
                 for tr, te in splits]
        return points, np.asarray(table, dtype=float)
    pre = _preprocessor(template, X.shape[0], X.shape[1], np.unique(y).size)
    table = estimator.score_folds([p[spec.param] for p in points], pre.fit_transform(X, y), y, splits)
    return points, np.asarray(table, dtype=float)


def select_and_fit(X_train, y_train, X_val, y_val, X_test, y_test, head: str, *, preprocessing: str | None = None,
                   pca: int | None = None, grid=None, full_grid: bool = False, val_fraction: float = 0.2,
                   seed: int = 0, n_jobs: int = 1, backend: str | None = None, solver: str | None = None,
                   head_params: dict | None = None, class_names=None, refit_with_val: bool = True) -> HeadResult:
    """Choose a head's hyperparameters on validation rows, refit on train+val, evaluate once on test.

    Parameters
    ----------
    X_train, y_train : arrays (N, D) and (N,)
        Training features and integer labels.
    X_val, y_val : arrays or None
        The data's own validation split; None carves a stratified ``val_fraction`` of train.
    X_test, y_test : arrays or None
        Test rows, used once, after the refit (None: no test evaluation).
    head : str
        Registered head name (see :func:`classifiers.heads.available_heads`).
    preprocessing, pca : optional
        See :func:`classifiers.heads.make_head`; default: the head's own preprocessing, no PCA.
    grid : list or dict, optional
        Values of the head's grid parameter, or ``{parameter: values}``; default: the registry's.
    full_grid : bool
        Use the registry's full grid (Kornblith's 45 C values for logreg).
    val_fraction : float
        Fraction of train held out when there is no validation split.
    seed : int
        Seed of the held-out split and of every seeded estimator.
    n_jobs, backend : int, str or None
        joblib workers and backend for the grid's independent fits (None: joblib's current
        default, so ``joblib.parallel_config`` applies).
    solver : {"torch", "sklearn"}, optional
        logreg and svm; torch (default) fits the whole C grid in one batched solve.
    head_params : dict, optional
        Extra estimator parameters (e.g. ``{"device": "cuda"}``).
    class_names : sequence of str, optional
        Names of labels 0..K-1 for the per-class report.
    refit_with_val : bool
        Refit the chosen head on train+val (default). False keeps the given validation rows out of
        the final fit: low-shot protocols validate on rows that must not become training rows.

    Returns
    -------
    HeadResult
    """
    started = time.perf_counter()
    spec = get_head_spec(head)
    X_train = check_features(X_train, "training features")
    y_train = check_labels(y_train, X_train.shape[0], "training labels")
    check_two_classes(y_train)
    template = make_head(head, preprocessing=preprocessing, pca=pca, seed=seed, solver=solver, **(head_params or {}))
    grid = _resolved_grid(spec, grid, full=full_grid)
    grid_points = list(ParameterGrid(grid))
    if not grid_points:
        raise UserInputError("the hyperparameter grid is empty: give at least one value")

    if X_val is not None:
        X_val = check_features(X_val, "validation features")
        y_val = check_labels(y_val, X_val.shape[0], "validation labels")
        if X_val.shape[1] != X_train.shape[1]:
            raise UserInputError(f"validation features have {X_val.shape[1]} dims, training {X_train.shape[1]}")
        X_sel, y_sel, selection, reason = X_train, y_train, "val split", None
    else:
        tr, va, reason = stratified_holdout(y_train, val_fraction, seed)
        if reason is None:
            X_sel, y_sel, X_val, y_val = X_train[tr], y_train[tr], X_train[va], y_train[va]
            selection = f"train fraction {val_fraction:g} (seed {seed})"
    n_classes = np.unique(y_train).size
    if reason is not None:
        params = {} if spec.param in (head_params or {}) else {spec.param: spec.default}
        val_scores, val_accuracy = [], None
        selection = f"none: {reason}; default hyperparameters"
        X_fit, y_fit, n_val, n_train = X_train, y_train, 0, X_train.shape[0]
    else:
        with _checked():
            scores = _select(template, spec, grid_points, X_sel, y_sel, X_val, y_val, n_classes, n_jobs, backend)
        scores = np.asarray(scores, dtype=float)
        best = int(np.nanargmax(scores))  # NaN: a grid point the head's score_grid did not fit
        params, val_accuracy = dict(grid_points[best]), float(scores[best])
        edge = _grid_edge(grid, params)
        skipped = _not_fitted(grid_points, scores, spec.param)
        val_scores = [{"params": dict(p), "val_accuracy": float(s)} for p, s in zip(grid_points, scores)]
        n_val = X_val.shape[0]
        same_rows = X_sel is not X_train
        if same_rows or not refit_with_val:  # a holdout of train (refit on all of train), or val kept out
            X_fit, y_fit = X_train, y_train
        else:
            X_fit, y_fit = np.concatenate([X_train, X_val]), np.concatenate([y_train, y_val])
        n_train = X_train.shape[0] - (n_val if same_rows else 0)

    final = clone(template).set_params(**{f"head__{k}": v for k, v in params.items()})
    final, notes = adapt_to_data(final, X_fit.shape[0], X_fit.shape[1], np.unique(y_fit).size)
    if reason is None and edge:
        notes.append(edge)
    if reason is None and skipped:
        notes.append(skipped)
    with _checked():
        final.fit(X_fit, y_fit, **_warm_start(template, spec.param, params, reason is None and pca is None))
    fit_seconds = time.perf_counter() - started

    test_accuracy, report, n_test = None, None, 0
    if X_test is not None:  # the single look at the test rows
        X_test = check_features(X_test, "test features")
        y_test = check_labels(y_test, X_test.shape[0], "test labels")
        with _checked():
            pred = final.predict(X_test)
        test_accuracy = float(np.mean(pred == y_test))
        report = per_class_report(y_test, pred, np.unique(y_fit), class_names)
        n_test = X_test.shape[0]
    head_step = final.named_steps["head"]
    return HeadResult(
        estimator=final, head=head, params=jsonable(params), val_accuracy=val_accuracy, test_accuracy=test_accuracy,
        fit_seconds=fit_seconds, val_scores=jsonable(val_scores), report=jsonable(report), seed=seed,
        preprocessing=describe_preprocessing(preprocessing or spec.preprocessing, pca), pca=pca,
        selection=selection, solver=solver_of(head_step) if spec.solvers else None,
        n_train=int(n_train), n_val=int(n_val), n_test=int(n_test), notes=notes,
    )


def _checked():
    """scikit-learn without its finiteness checks, for rows :func:`check_features` has checked: each step of a
    pipeline checks its input again (a whole pass over the rows each)."""
    return config_context(assume_finite=True)


def per_class_report(y_test, pred, trained_classes, class_names=None) -> dict:
    """scikit-learn's per-class report of test predictions, over the classes trained on or tested, each
    named by ``class_names`` (labels 0..K-1) where it has one."""
    labels = np.union1d(trained_classes, np.unique(y_test))
    names = [str(class_names[i]) if class_names is not None and 0 <= i < len(class_names) else str(i) for i in labels]
    return classification_report(y_test, pred, labels=labels, target_names=names, output_dict=True, zero_division=0)


def _warm_start(template, param, params, allowed) -> dict:
    """Fit parameters starting the refit from the grid's work (``refit_init`` of a head with
    ``score_grid``: the solution it chose, the preconditioner): same optimum, fewer iterations. Not
    across PCA, whose components (and their signs) change with the rows; a standardiser's change
    from train to train+val is small."""
    head = template.named_steps["head"]
    if not allowed or not hasattr(head, "refit_init") or param not in params:
        return {}
    return {f"head__{k}": v for k, v in head.refit_init(params[param]).items()}


def _not_fitted(grid_points, scores, param) -> str | None:
    """A note naming the grid values ``score_grid`` left unfitted (NaN): past the validation peak."""
    missing = [p.get(param) for p, s in zip(grid_points, scores) if not np.isfinite(s)]
    if not missing:
        return None
    values = [v for v in missing if isinstance(v, (int, float))]
    span = f" ({param} {min(values):g} to {max(values):g})" if values else ""
    return (f"{len(missing)} of {len(grid_points)} grid values not fitted{span}: validation accuracy had stayed "
            "clearly below the best for a decade past it")


def _grid_edge(grid: dict, params: dict) -> str | None:
    """A note when a chosen numeric value is the largest or smallest of a grid of 3 or more values."""
    for name, values in grid.items():
        values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(values) >= 3 and name in params:
            if params[name] == max(values) and max(values) != min(values):
                return f"{name}={params[name]:g} at the grid edge (largest of {len(values)}): widen the grid"
            if params[name] == min(values) and name in ("C", "alpha"):  # k=1 is a floor, not an edge
                return f"{name}={params[name]:g} at the grid edge (smallest of {len(values)}): widen the grid"
    return None
