"""A head over several cached layers: per-layer scaling, batched logistic regression, layers chosen on validation.

:class:`MultiLayerLogisticRegression` takes the concatenation of several layers' pooled features
(``layer_dims`` says where each layer's block lies). Each dimension is standardised (the project's
:class:`~transferlab.classifiers.preprocessing.ShrunkStandardScaler` rule), then each block is
scaled so that every layer has the same total variance, the mean block width: a layer of 1,280
dimensions does not drown one of 40 by size alone. The layers are chosen by greedy forward
selection on validation rows only (the best single layer first, then the layer whose addition
raises validation accuracy most, while that rise beats its paired noise: :func:`paired_gain_test`),
each candidate scored over the C grid in one batched solve
(:class:`~transferlab.classifiers.fast_logreg.BatchedLogisticRegressionCV`);
the chosen layers and C are refitted on train+val. :func:`transferlab.classifiers.train.train_multilayer`
does this off the HDF5 cache and saves the head like any other (:mod:`.persistence`: arrays and JSON,
no pickle).
Head2Toe (Evci et al., ICML 2022) selects features across layers in the same spirit.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._linear import LogisticProbaMixin, validation_rows
from ._path import DEFAULT_MEMORY_BUDGET, fit_logreg_path
from .fast_logreg import BatchedLogisticRegressionCV
from .holdout import stratified_holdout
from .names import MULTI_HEAD
from .preprocessing import ShrunkStandardScaler

__all__ = ["MULTI_HEAD", "MultiLayerLogisticRegression", "block_scaling", "paired_gain_test"]

DEFAULT_CS = tuple(float(c) for c in np.logspace(-6, 5, 12))  # the logreg head's grid
WINDOW_DECADES = 2.0  # after the first greedy step, C is searched this far (log10) around the previous step's
STOPS = ("mcnemar", "rise")


def c_window(Cs, C: float, decades: float = WINDOW_DECADES) -> np.ndarray:
    """The values of the grid ``Cs`` within ``decades`` of ``C`` (a later greedy step searches C near the
    previous step's: adding a layer moves the best C little)."""
    Cs = np.asarray(Cs, dtype=np.float64)
    return Cs[np.abs(np.log10(Cs) - np.log10(C)) <= decades + 1e-9]


def paired_gain_test(before, after) -> dict:
    """The greedy step's stop statistic: does ``after`` (per validation row, True where the larger head is
    right) beat ``before`` (the previous step's head) by more than paired noise?

    The exact one-sided McNemar test: of the rows where the two disagree, ``gained`` are right only
    after and ``lost`` only before; if the added layer changed nothing but noise, each such row is
    a fair coin, so ``p_value`` = P(Binomial(gained + lost, 1/2) >= gained) (1 when none disagree).
    Returns ``{"gained", "lost", "p_value"}``.
    """
    before, after = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    if before.shape != after.shape:
        raise ValueError(f"paired rows differ: {before.shape} and {after.shape}")
    gained, lost = int(np.sum(after & ~before)), int(np.sum(before & ~after))
    p = 1.0 if gained + lost == 0 else float(binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue)
    return {"gained": gained, "lost": lost, "p_value": p}


def block_scaling(X, dims, prior_rows: float = 10.0):
    """Per-dimension ``mean`` and ``scale`` and per-block ``weight`` of the multi-layer standardisation.

    ``(X - mean) / scale`` is :class:`ShrunkStandardScaler`'s standardisation; multiplying block
    ``l`` by ``weight[l]`` then gives it total variance (the sum of its columns' variances on
    ``X``) equal to the mean block width. A block without variance keeps weight 1.
    """
    scaler = ShrunkStandardScaler(prior_rows=prior_rows).fit(X)
    mean, scale = scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64)
    var = np.asarray(scaler.var_, dtype=np.float64) / scale ** 2
    bounds = np.cumsum([0, *dims])
    total = np.array([var[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])])
    target = float(np.mean(dims))
    weight = np.where(total > 1e-12, np.sqrt(target / np.maximum(total, 1e-300)), 1.0)
    return mean, scale, weight


class MultiLayerLogisticRegression(LogisticProbaMixin, ClassifierMixin, BaseEstimator):
    """L2 logistic regression over several layers' features, the layers and C chosen on validation.

    Parameters
    ----------
    layer_dims : sequence of int, optional
        Width of each layer's block, in column order; None: all columns are one block.
    layer_names : sequence of str, optional
        Name of each block (default ``"0"``, ``"1"``, ...): ``layers_`` lists the chosen ones.
    Cs : sequence of float, optional
        The C grid (default: the logreg head's, ``logspace(-6, 5, 12)``).
    selection : {"greedy", "all"}
        ``greedy``: forward selection of layers on validation accuracy; ``all``: every layer,
        only C chosen.
    max_layers : int, optional
        Stop the greedy selection at this many layers.
    stop : {"mcnemar", "rise"}
        When a greedy step adds its best layer. ``mcnemar`` (default): only when the step's gain on
        the validation rows beats their paired noise, the exact one-sided McNemar test of
        :func:`paired_gain_test` at level ``alpha`` (the step's head against the previous step's, row by
        row). Why this test: both heads are scored on the same rows, so only the rows where they disagree
        carry the gain, and the exact binomial holds on small holdouts (20% of 100 rows is 20) where a
        normal ``mean > k * SE`` rule does not; a rise of one row (1 gained, 0 lost: p = 0.5) is noise.
        ``rise``: on any rise of validation accuracy (the earlier rule: one row more is enough).
        Either way the rise must also exceed ``min_gain``. The test is not corrected for the step
        choosing the best of the remaining layers, so it is still optimistic; a smaller ``alpha`` is stricter.
        It errs towards fewer layers: a gain that comes as several small steps is refused step by step
        (``bench/multilayer.md`` measures both rules).
    alpha : float
        The level of the ``mcnemar`` stop (default 0.05: with no row lost, 5 rows gained is a gain, 4 is not).
    min_gain : float
        A layer is added only when validation accuracy rises by more than this.
    val_fraction, random_state : float, int
        The stratified holdout of ``X`` that selects when no ``X_val`` is given.
    refit : bool
        Refit the chosen layers and C on all rows (``X`` and ``X_val``); False keeps the fit on the
        training rows (``X``, less any holdout) that was scored.
    prior_rows : float
        Variance shrinkage of the standardisation (see :class:`ShrunkStandardScaler`).
    tol, max_iter, device, memory_budget : see :func:`~transferlab.classifiers.fast_logreg.fit_logreg_path`.

    Attributes
    ----------
    selected_ : ndarray of int
        Indices of the chosen blocks, in the order the selection added them.
    layers_ : list of str
        Their names.
    C_ : float
        The chosen C.
    val_accuracy_ : float or None
        Validation accuracy of the choice (None when there were no validation rows).
    n_val_ : int
        Validation rows it was chosen on.
    selection_path_ : list of dict
        Each greedy step taken: ``layers``, ``C``, ``val_accuracy``; after the first also ``gained``,
        ``lost``, ``p_value`` (:func:`paired_gain_test` against the step before).
    refused_step_ : dict or None
        The best next step the stop refused (the same fields), None when the selection ran out of layers
        or ``max_layers`` ended it.
    selection_ : str
        Where the choice was made.
    mean_, scale_, block_weight_ : ndarray
        The standardisation of the final fit (see :func:`block_scaling`), over all columns.
    coef_, intercept_, classes_ : ndarray
        The model on the scaled features; columns of blocks not chosen are zero.
    """

    def __init__(self, layer_dims=None, layer_names=None, *, Cs=None, selection="greedy", max_layers=None,
                 stop="mcnemar", alpha=0.05, min_gain=0.0, val_fraction=0.2, random_state=0, refit=True,
                 prior_rows=10.0, tol=1e-4, max_iter=200, device="cpu", memory_budget=DEFAULT_MEMORY_BUDGET):
        self.layer_dims = layer_dims
        self.layer_names = layer_names
        self.Cs = Cs
        self.selection = selection
        self.max_layers = max_layers
        self.stop = stop
        self.alpha = alpha
        self.min_gain = min_gain
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.refit = refit
        self.prior_rows = prior_rows
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.memory_budget = memory_budget

    # --- the blocks -------------------------------------------------------------------------------

    def _blocks(self, n_features: int):
        dims = [n_features] if self.layer_dims is None else [int(d) for d in self.layer_dims]
        if any(d < 1 for d in dims) or sum(dims) != n_features:
            raise ValueError(f"layer_dims {self.layer_dims} do not add up to the {n_features} columns of X")
        names = [str(i) for i in range(len(dims))] if self.layer_names is None else [str(n) for n in self.layer_names]
        if len(names) != len(dims):
            raise ValueError(f"{len(names)} layer_names for {len(dims)} blocks")
        return dims, names

    def _columns(self, dims, blocks) -> np.ndarray:
        bounds = np.cumsum([0, *dims])
        return np.concatenate([np.arange(bounds[b], bounds[b + 1]) for b in sorted(blocks)])

    def scale_blocks(self, X) -> np.ndarray:
        """``X`` standardised and scaled per block as the fitted model sees it (float64, all columns)."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self._scaled(X, self.mean_, self.scale_, self.block_weight_, self._blocks(X.shape[1])[0])

    @staticmethod
    def _scaled(X, mean, scale, weight, dims):
        return (np.asarray(X, dtype=np.float64) - mean) / scale * np.repeat(weight, dims)

    # --- fitting ----------------------------------------------------------------------------------

    def fit(self, X, y, X_val=None, y_val=None):
        """Choose layers and C on validation rows (given, or held out of ``X``), then refit (see ``refit``)."""
        X, classes, y_idx = self._validate_fit(X, y)
        dims, names = self._blocks(X.shape[1])
        if self.selection not in ("greedy", "all"):
            raise ValueError(f"selection must be 'greedy' or 'all', got {self.selection!r}")
        if self.stop not in STOPS:
            raise ValueError(f"stop must be one of {STOPS}, got {self.stop!r}")
        if not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        Cs = np.asarray(DEFAULT_CS if self.Cs is None else self.Cs, dtype=np.float64).ravel()
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        if X_val is not None:
            X_val, val_idx = validation_rows(self, classes, X_val, y_val)
            X_sel, y_sel, self.selection_ = X, y_idx, "given validation rows"
            X_all, y_all = np.concatenate([X, X_val]), np.concatenate([y_idx, val_idx])
            X_all, y_all = X_all[y_all >= 0], y_all[y_all >= 0]
        else:
            tr, va, reason = stratified_holdout(y_idx, self.val_fraction, self.random_state)
            X_all, y_all = X, y_idx
            if reason is None:
                X_sel, y_sel, X_val, val_idx = X[tr], y_idx[tr], X[va], y_idx[va]
                self.selection_ = f"held-out fraction {self.val_fraction:g} (seed {self.random_state})"
            else:
                X_sel, y_sel = X, y_idx
                self.selection_ = f"none: {reason}; every layer, C closest to 1"
        if X_val is not None:
            chosen, C, self.val_accuracy_, self.selection_path_, self.refused_step_ = self._select(
                X_sel, y_sel, X_val, val_idx, dims, names, Cs)
        else:
            chosen, C = list(range(len(dims))), float(Cs[int(np.argmin(np.abs(np.log(Cs))))])
            self.val_accuracy_, self.selection_path_, self.refused_step_ = None, [], None
        self.n_val_ = 0 if X_val is None else int(X_val.shape[0])
        if self.refit or X_val is None:
            X_fit, y_fit = X_all, y_all
        else:
            X_fit, y_fit = X_sel, y_sel
        if np.unique(y_fit).size < 2:  # scikit-learn's wording for a one-class fit
            raise ValueError("the refit rows contain only one class")
        self.mean_, self.scale_, self.block_weight_ = block_scaling(X_fit, dims, self.prior_rows)
        cols = self._columns(dims, chosen)
        Z = self._scaled(X_fit, self.mean_, self.scale_, self.block_weight_, dims)[:, cols]
        path = fit_logreg_path(np.ascontiguousarray(Z, dtype=np.float32), y_fit, [C], device=self.device,
                               tol=self.tol, max_iter=self.max_iter, memory_budget=self.memory_budget)
        coef = np.zeros((path.coefs[0].shape[0], X.shape[1]))
        coef[:, cols] = path.coefs[0]
        self.classes_ = classes
        self.coef_, self.intercept_ = coef, np.asarray(path.intercepts[0], dtype=np.float64)
        self.n_iter_ = path.n_iter.copy()
        self.C_ = C
        self.selected_ = np.asarray(chosen, dtype=np.int64)
        self.layers_ = [names[b] for b in chosen]
        return self

    def _score(self, Z_tr, y_tr, Z_val, val_idx, cols, Cs):
        """Best validation accuracy over the C grid of the columns ``cols``, its C, and per validation row
        whether that solution is right."""
        cv = BatchedLogisticRegressionCV(Cs=Cs, refit=False, tol=self.tol, max_iter=self.max_iter,
                                         device=self.device, memory_budget=self.memory_budget)
        cv.fit(Z_tr[:, cols], y_tr, Z_val[:, cols], val_idx)
        correct = cv.predict(Z_val[:, cols]) == val_idx  # refit=False: the grid's solution at C_
        return float(np.nanmax(cv.scores_)), float(cv.C_), correct

    def _score_near(self, Z_tr, y_tr, Z_val, val_idx, cols, Cs, near):
        """:meth:`_score` over ``near`` (a window of the grid ``Cs``), widened by another window on the side
        where the best C lies at the window's edge, until it lies inside or at the grid's end."""
        acc, C, correct = self._score(Z_tr, y_tr, Z_val, val_idx, cols, near)
        lo, hi = float(near[0]), float(near[-1])
        while (C == lo and lo > Cs[0]) or (C == hi and hi < Cs[-1]):
            more = [c for c in c_window(Cs, C) if c < lo or c > hi]
            acc2, C2, correct2 = self._score(Z_tr, y_tr, Z_val, val_idx, cols, np.asarray(more))
            lo, hi = min(lo, *more), max(hi, *more)
            if acc2 > acc:
                acc, C, correct = acc2, C2, correct2
            else:
                break
        return acc, C, correct

    def _select(self, X_tr, y_tr, X_val, val_idx, dims, names, Cs):
        """Greedy forward selection of blocks on the validation rows; returns (blocks, C, accuracy, path,
        refused step)."""
        mean, scale, weight = block_scaling(X_tr, dims, self.prior_rows)  # training rows only
        Z_tr = self._scaled(X_tr, mean, scale, weight, dims).astype(np.float32)
        Z_val = self._scaled(X_val, mean, scale, weight, dims).astype(np.float32)
        everything = list(range(len(dims)))
        if self.selection == "all":
            acc, C, _ = self._score(Z_tr, y_tr, Z_val, val_idx, self._columns(dims, everything), Cs)
            return everything, C, acc, [{"layers": list(names), "C": C, "val_accuracy": acc}], None
        limit = len(dims) if self.max_layers is None else max(1, min(int(self.max_layers), len(dims)))
        chosen, best, path, refused = [], (-np.inf, None, None), [], None
        while len(chosen) < limit:
            near = Cs if not chosen else c_window(Cs, best[1])
            trials = [(*self._score_near(Z_tr, y_tr, Z_val, val_idx, self._columns(dims, chosen + [b]), Cs, near), b)
                      for b in everything if b not in chosen]
            acc, C, correct, b = max(trials, key=lambda t: t[0])  # the first best in block order
            step = {"layers": [names[i] for i in chosen + [b]], "C": C, "val_accuracy": acc}
            if chosen:
                step.update(paired_gain_test(best[2], correct))
                rises = acc > best[0] + float(self.min_gain)
                if not rises or (self.stop == "mcnemar" and not step["p_value"] < float(self.alpha)):
                    refused = step
                    break
            chosen.append(b)
            best = (acc, C, correct)
            path.append(step)
        return chosen, best[1], best[0], path, refused

    def decision_function(self, X):
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        Z = self._scaled(X, self.mean_, self.scale_, self.block_weight_, self._blocks(X.shape[1])[0])
        scores = Z @ self.coef_.T + self.intercept_
        return scores[:, 0] if self.classes_.size == 2 else scores

    def restricted(self) -> "MultiLayerLogisticRegression":
        """The fitted head as an estimator over the chosen blocks alone (in their column order): same
        predictions from only the layers it needs."""
        check_is_fitted(self, "coef_")
        dims, names = self._blocks(self.n_features_in_)
        keep = sorted(int(b) for b in self.selected_)
        cols = self._columns(dims, keep)
        out = MultiLayerLogisticRegression(**{**self.get_params(), "layer_dims": [dims[b] for b in keep],
                                              "layer_names": [names[b] for b in keep]})
        for attr, value in vars(self).items():
            if attr.endswith("_") and not attr.startswith("_"):
                setattr(out, attr, value)
        out.n_features_in_ = int(cols.size)
        out.mean_, out.scale_, out.coef_ = self.mean_[cols], self.scale_[cols], self.coef_[:, cols]
        out.block_weight_ = self.block_weight_[keep]
        out.selected_ = np.array([keep.index(int(b)) for b in self.selected_], dtype=np.int64)
        return out
