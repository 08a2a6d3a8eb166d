"""A saved linear head applied with numpy alone, so ``predict`` never imports scikit-learn for it.

A head whose saved form is linear (an L2 row normalisation and a standardisation in front of
coefficients and intercepts: logreg, the linear SVM, the ridge probe, the multi-layer head) comes back
from :func:`transferlab.classifiers.load_head` with ``as_numpy=True`` as a :class:`LinearHead`.
Its rule: every step repeats, operation by operation and in the same dtypes, the arithmetic of the
estimator it stands for, so labels, margins and probabilities are bit for bit the estimator's
(``tests/classifiers/test_linear_apply.py`` compares them on the installed scikit-learn). A step it
does not know leaves the head to scikit-learn (:func:`linear_head` returns None).
"""
from __future__ import annotations

import numpy as np

# the project's linear heads (transferlab.classifiers._linear) score rows in float64
CAST = {"TorchLogisticRegression", "TorchLinearSVC", "RidgeProbe"}
# scikit-learn's LinearClassifierMixin: X in its own float dtype times coef_.T
PLAIN = {"LinearSVC"}
LOGISTIC = {"TorchLogisticRegression", "MultiLayerLogisticRegression"}  # heads with predict_proba


class L2Rows:
    """``Normalizer(norm="l2")``: each row divided by its Euclidean norm (a near-zero norm by 1)."""

    def __call__(self, X):
        norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        norms[norms < 10 * np.finfo(norms.dtype).eps] = 1.0
        X /= norms[:, None]
        return X


class Standardize:
    """``StandardScaler`` (and ``ShrunkStandardScaler``): ``mean`` subtracted and ``scale`` divided, each
    first cast to the rows' dtype; either may be None (``with_mean`` / ``with_std`` off)."""

    def __init__(self, mean, scale):
        self.mean, self.scale = mean, scale

    def __call__(self, X):
        if self.mean is not None:
            X -= self.mean.astype(X.dtype)
        if self.scale is not None:
            X /= self.scale.astype(X.dtype)
        return X


class BlockScale:
    """The multi-layer head's standardisation: ``(X - mean) / scale`` in float64, each layer's block of
    columns times its weight."""

    def __init__(self, mean, scale, weight, dims):
        self.mean, self.scale, self.weight, self.dims = mean, scale, weight, [int(d) for d in dims]

    def __call__(self, X):
        return (np.asarray(X, dtype=np.float64) - self.mean) / self.scale * np.repeat(self.weight, self.dims)


class LinearHead:
    """Rows through ``steps``, then ``scores = X coef_.T + intercept_``; one row of ``coef_`` for two classes
    (the sign picks ``classes_[1]``). The scikit-learn classifier interface that ``predict`` uses:
    ``decision_function``, ``predict``, ``classes_``, ``n_features_in_``."""

    def __init__(self, steps, coef, intercept, classes, n_features_in: int, cast: bool):
        self.steps, self.coef_, self.intercept_, self.classes_ = list(steps), coef, intercept, classes
        self.n_features_in_, self.cast = int(n_features_in), cast

    def _checked(self, X) -> np.ndarray:
        X = np.array(X, copy=True)  # the steps work in place
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}, but this head takes {self.n_features_in_} features per row")
        if not np.isfinite(X).all():
            raise ValueError("Input X contains NaN or infinity.")
        return X

    def decision_function(self, X) -> np.ndarray:
        X = self._checked(X)
        for step in self.steps:
            X = step(X)
        if self.cast:
            scores = X.astype(np.float64) @ self.coef_.T.astype(np.float64) + self.intercept_
        else:
            scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).astype(int)] if scores.ndim == 1 else self.classes_[scores.argmax(1)]


class LogisticHead(LinearHead):
    """A :class:`LinearHead` of a logistic model: ``predict_proba`` is the softmax of the scores (two
    classes: the logistic function of the one score, as two columns)."""

    def predict_proba(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-scores))
            return np.column_stack([1 - p, p])
        scores = scores - scores.max(1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(1, keepdims=True)


def linear_head(steps: list) -> LinearHead | None:
    """The head of ``steps`` (``(class name, params, fitted attributes)`` of each pipeline step, the
    classifier last) as a :class:`LinearHead`, or None when a step is not one it repeats exactly."""
    *pre, (name, params, state) = steps
    transforms = []
    for step_name, step_params, step_state in pre:
        if step_name == "Normalizer" and step_params.get("norm") == "l2":
            transforms.append(L2Rows())
        elif step_name in ("StandardScaler", "ShrunkStandardScaler"):
            transforms.append(Standardize(step_state["mean_"] if step_params.get("with_mean", True) else None,
                                          step_state["scale_"] if step_params.get("with_std", True) else None))
        else:
            return None
    if name == "MultiLayerLogisticRegression":
        dims = params.get("layer_dims") or [state["n_features_in_"]]
        transforms.append(BlockScale(state["mean_"], state["scale_"], state["block_weight_"], dims))
    elif name not in CAST | PLAIN:
        return None
    n_features = (pre[0][2] if pre else state)["n_features_in_"]
    cls = LogisticHead if name in LOGISTIC else LinearHead
    return cls(transforms, state["coef_"], state["intercept_"], state["classes_"], n_features, cast=name in CAST)
