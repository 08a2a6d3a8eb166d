"""The MLP head trained in torch, and its alpha grid screened with early stopping on the holdout.

:class:`TorchMLPClassifier` is scikit-learn's ``MLPClassifier`` (same parameters, fitted attributes,
``predict`` and ``predict_proba``) whose ``adam`` training runs in torch: scikit-learn's
initialisation (Glorot uniform), minibatches (``min(200, n)``, reshuffled every epoch), penalty
(``alpha / 2 * ||W||^2`` per minibatch mean, intercepts unpenalised), Adam and early-stopping rule
(best validation accuracy kept; stop once more than ``n_iter_no_change`` epochs in a row gained under ``tol``).
Matrix products run in bfloat16 where the CPU has bfloat16 arithmetic (float32 weights and
optimiser state), else in float32. Other solvers are scikit-learn's own ``fit``.

``score_grid`` screens the alpha grid on the selection's own validation rows: every alpha from the
same initial weights and minibatch order (paired), scored after every epoch and stopped by the rule
above, its score the best epoch's. ``refit_init`` then refits the chosen alpha on train+val for that
alpha's best number of epochs, without a second early-stopping split.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.validation import validate_data

from .holdout import stratified_holdout

STEP_WORK = 2.5e8  # multiply-adds per minibatch step below which training runs on one thread
_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": None}


class TorchMLPClassifier(MLPClassifier):
    """``MLPClassifier`` whose adam training runs in torch (bfloat16 products where the CPU has them).

    ``fit(X, y, epochs=None)``: with ``epochs``, exactly that many epochs on all rows, no early
    stopping. ``score_grid(values, X_train, y_train, X_val, y_val)`` scores an alpha grid
    (:mod:`classifiers.protocol`); ``refit_init(alpha)`` gives the refit's ``epochs``.
    """

    def _torch_fit(self) -> bool:
        return (self.solver == "adam" and self.activation in _ACTIVATIONS and self.learning_rate_init > 0
                and not getattr(self, "warm_start", False))

    def fit(self, X, y, epochs: int | None = None):
        if not self._torch_fit() or np.ndim(y) != 1:
            return super().fit(X, y)
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32, reset=True)
        classes, codes = np.unique(y, return_inverse=True)
        X_val = y_val = None
        if self.early_stopping and epochs is None:
            tr, va, reason = stratified_holdout(codes, self.validation_fraction, _seed(self.random_state))
            if reason is not None:
                raise ValueError(f"early stopping: {reason}")
            X, codes, X_val, y_val = X[tr], codes[tr], X[va], codes[va]
        run = _train(self, [self.alpha], X, codes, len(classes), X_val, y_val, epochs)[0]
        self._set_fitted(run, classes, X.shape[1])
        return self

    def score_grid(self, values, X_train, y_train, X_val, y_val) -> list[float]:
        """Best validation accuracy of every alpha in ``values`` (early stopping on ``X_val``), fitted on
        the training rows; remembers each alpha's best epoch for :meth:`refit_init`."""
        X_train = np.ascontiguousarray(X_train, dtype=np.float32)
        classes, codes = np.unique(y_train, return_inverse=True)
        val_codes = np.searchsorted(classes, y_val)
        known = (val_codes < len(classes)) & (classes[np.minimum(val_codes, len(classes) - 1)] == y_val)
        val_codes = np.where(known, val_codes, -1)  # a label unseen in training is never predicted
        runs = _train(self, [float(a) for a in values], X_train, codes, len(classes),
                      np.ascontiguousarray(X_val, dtype=np.float32), val_codes, None)
        self._grid_epochs = {float(a): r["best_epoch"] for a, r in zip(values, runs)}
        return [r["best_score"] for r in runs]

    def refit_init(self, alpha) -> dict:
        """``fit`` keywords of the refit at ``alpha``: the best epoch count of the last ``score_grid``."""
        epochs = getattr(self, "_grid_epochs", {}).get(float(alpha))
        return {} if epochs is None or not self._torch_fit() else {"epochs": epochs}

    def _set_fitted(self, run, classes, n_features):
        coefs, intercepts = run["coefs"], run["intercepts"]
        if len(classes) == 2:  # scikit-learn's binary form: one logistic output, z1 - z0 of the softmax pair
            coefs[-1] = coefs[-1][:, 1:] - coefs[-1][:, :1]
            intercepts[-1] = intercepts[-1][1:] - intercepts[-1][:1]
        self.classes_ = classes
        self._label_binarizer = LabelBinarizer().fit(classes)
        self.coefs_, self.intercepts_ = coefs, intercepts
        self.n_features_in_ = n_features
        self.n_layers_ = len(coefs) + 1
        self.n_outputs_ = coefs[-1].shape[1]
        self.out_activation_ = "logistic" if len(classes) == 2 else "softmax"
        self.n_iter_ = run["epochs"]
        self.t_ = run["steps"]
        self.loss_curve_ = run["losses"]
        self.loss_ = run["losses"][-1]
        self.best_loss_ = None if run["val_scores"] else min(run["losses"])
        self.validation_scores_ = run["val_scores"] or None
        self.best_validation_score_ = run["best_score"] if run["val_scores"] else None


def _seed(random_state) -> int:
    """The torch seed of a scikit-learn ``random_state`` (an int gives the same seed every time)."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def bfloat16_products() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (then faster than float32)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _train(est, alphas, X, codes, n_classes, X_val, val_codes, epochs):
    """Train one network per alpha from the same initial weights and minibatch order.

    With ``epochs``: exactly that many epochs. Else up to ``max_iter`` epochs, early-stopped on the
    validation rows when given (best epoch kept), else on the training loss (scikit-learn's rule).
    Returns, per alpha, the kept weights as float32 arrays and the curves.
    """
    import torch

    seed = _seed(est.random_state)
    gen = torch.Generator().manual_seed(seed)
    sizes = [X.shape[1], *np.atleast_1d(est.hidden_layer_sizes).tolist(), n_classes]
    init = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):  # scikit-learn's Glorot uniform, factor 2 for logistic
        bound = np.sqrt((2.0 if est.activation == "logistic" else 6.0) / (fan_in + fan_out))
        init.append((torch.empty(fan_in, fan_out).uniform_(-bound, bound, generator=gen),
                     torch.empty(fan_out).uniform_(-bound, bound, generator=gen)))
    n = X.shape[0]
    batch = min(200, n) if est.batch_size == "auto" else int(np.clip(est.batch_size, 1, n))
    n_epochs = est.max_iter if epochs is None else int(epochs)
    half = bfloat16_products()
    cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=half)
    dtype = torch.bfloat16 if half else torch.float32  # the rows cast once, not at every step
    Xt, yt = torch.from_numpy(X).to(dtype), torch.from_numpy(codes.astype(np.int64))
    Xv = None if X_val is None else torch.from_numpy(X_val)  # scored in float32, as predict scores
    act = _ACTIVATIONS[est.activation]
    act = getattr(torch, act) if act else (lambda h: h)

    def forward(A, params, cast=cast):
        with cast:
            for i, (W, b) in enumerate(params):
                A = torch.addmm(b, A, W)
                if i < len(params) - 1:
                    A = act(A)
        return A.float()

    # a minibatch step is many short operations: on a shared machine, threads handing them off cost more than
    # the products gain
    step_work = batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    previous_threads = torch.get_num_threads()
    if step_work < STEP_WORK:
        torch.set_num_threads(1)
    try:
        return [_train_one(est, alpha, init, seed, X, Xt, yt, Xv, val_codes, batch, n_epochs, epochs, forward)
                for alpha in alphas]
    finally:
        torch.set_num_threads(previous_threads)


def _train_one(est, alpha, init, seed, X, Xt, yt, Xv, val_codes, batch, n_epochs, epochs, forward):
    """One network of :func:`_train`: its kept weights and curves."""
    import torch

    n = X.shape[0]
    params = [(W.clone().requires_grad_(), b.clone().requires_grad_()) for W, b in init]
    # the penalty's gradient, alpha W / rows, is Adam's L2 term on the weights (not the intercepts)
    opt = torch.optim.Adam([{"params": [W for W, _ in params]}, {"params": [b for _, b in params]}],
                           lr=est.learning_rate_init, betas=(est.beta_1, est.beta_2), eps=est.epsilon, fused=True)
    order = torch.Generator().manual_seed(seed + 1)  # the same minibatches for every alpha
    losses, val_scores, best, best_epoch, stall, steps = [], [], -np.inf, 0, 0, 0
    best_loss, kept = np.inf, None
    for epoch in range(n_epochs):
        total, perm = 0.0, torch.randperm(n, generator=order) if est.shuffle else torch.arange(n)
        for start in range(0, n, batch):
            rows = perm[start:start + batch]
            loss = torch.nn.functional.cross_entropy(forward(Xt[rows], params), yt[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.param_groups[0]["weight_decay"] = alpha / len(rows)
            opt.step()
            total += loss.item() * len(rows)
            steps += 1
        with torch.no_grad():  # the epoch's loss as scikit-learn reports it: data term plus the penalty
            total += 0.5 * alpha * sum(float((W * W).sum()) for W, _ in params) * -(-n // batch)
        losses.append(total / n)
        if epochs is not None:
            continue
        if Xv is not None:
            with torch.no_grad():
                score = float((forward(Xv, params, nullcontext()).argmax(1).numpy() == val_codes).mean())
            val_scores.append(score)
            stall = stall + 1 if score < best + est.tol else 0
            if score > best:
                best, best_epoch = score, epoch + 1
                kept = [(W.detach().clone(), b.detach().clone()) for W, b in params]
        else:
            stall = stall + 1 if losses[-1] > best_loss - est.tol else 0
            best_loss = min(best_loss, losses[-1])
        if stall > est.n_iter_no_change:
            break
    kept = kept or [(W.detach(), b.detach()) for W, b in params]
    return {"coefs": [W.numpy().copy() for W, _ in kept], "intercepts": [b.numpy().copy() for _, b in kept],
            "losses": losses, "val_scores": val_scores, "best_score": best if val_scores else None,
            "best_epoch": best_epoch if val_scores else len(losses), "epochs": len(losses), "steps": steps}
