"""The MLP head trained in torch, and its alpha grid screened with early stopping on the holdout.

:class:`TorchMLPClassifier` is scikit-learn's ``MLPClassifier`` (same parameters, fitted attributes,
``predict`` and ``predict_proba``) whose ``adam`` training runs in torch: scikit-learn's
initialisation (Glorot uniform), minibatches (``min(200, n)``, reshuffled every epoch), penalty
(``alpha / 2 * ||W||^2`` per minibatch mean, intercepts unpenalised), Adam and early-stopping rule
(best validation accuracy kept; stop once more than ``n_iter_no_change`` epochs in a row gained under ``tol``).
Matrix products run in bfloat16 where the CPU has bfloat16 arithmetic (float32 weights and
optimiser state), else in float32. Other solvers are scikit-learn's own ``fit``.

``score_grid`` screens the alpha grid on the selection's own validation rows: every alpha from the
same initial weights and minibatch order (paired), the networks trained side by side as one stack
(each minibatch's first-layer products of every alpha one matrix product, the same numbers as each
network's own), scored after every epoch and stopped by the rule above (a stopped network leaves
the stack), its score the best epoch's. ``refit_init`` then refits the chosen alpha on train+val for that
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
    """Train one network per alpha from the same initial weights and minibatch order, all at once.

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
    half = bfloat16_products()
    dtype = torch.bfloat16 if half else torch.float32  # the rows cast once, not at every step
    data = {"X": torch.from_numpy(X).to(dtype), "y": torch.from_numpy(codes.astype(np.int64)),
            "X_val": None if X_val is None else torch.from_numpy(X_val), "val_codes": val_codes,
            "batch": batch, "epochs": est.max_iter if epochs is None else int(epochs), "fixed": epochs is not None,
            "cast": torch.autocast("cpu", dtype=torch.bfloat16, enabled=half)}
    # a minibatch step is many short operations: on a shared machine, threads handing them off cost more than
    # the products gain. A step trains every alpha of the stack.
    step_work = batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) * len(alphas)
    previous_threads = torch.get_num_threads()
    if step_work < STEP_WORK:
        torch.set_num_threads(1)
    try:
        return _train_networks(est, alphas, init, seed, data)
    finally:
        torch.set_num_threads(previous_threads)


class _Networks:
    """The networks of :func:`_train` stacked along a leading axis, one per alpha still training: the
    first layer's weights as one (inputs, networks, units) tensor, so every network's first product is one
    matrix product (the same numbers as the networks' own products), the later layers batched products."""

    def __init__(self, layers, lr, betas, eps):
        import torch

        self.layers = [(W.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()) for W, b in layers]
        self.opt = torch.optim.Adam([p for layer in self.layers for p in layer], lr=lr, betas=betas, eps=eps,
                                    fused=True)
        self.act = None

    @classmethod
    def start(cls, init, count, act, lr, betas, eps):
        W0, b0 = init[0]
        layers = [(W0.unsqueeze(1).repeat(1, count, 1), b0.repeat(count, 1))]
        layers += [(W.expand(count, *W.shape).clone(), b.expand(count, 1, -1).clone()) for W, b in init[1:]]
        nets = cls(layers, lr, betas, eps)
        nets.act = act
        return nets

    def keep(self, which):
        """Only the networks at positions ``which``, with their optimiser state."""
        import torch

        index = torch.as_tensor(which)
        picked = [(W[:, index] if i == 0 else W[index], b[index]) for i, (W, b) in enumerate(self.layers)]
        nets = _Networks(picked, **{k: self.opt.defaults[k] for k in ("lr", "betas", "eps")})
        nets.act = self.act
        old = [p for layer in self.layers for p in layer]
        for i, (p_old, p_new) in enumerate(zip(old, (p for layer in nets.layers for p in layer))):
            state = self.opt.state.get(p_old)
            if state:
                axis = 1 if i == 0 else 0
                nets.opt.state[p_new] = {k: (v.index_select(axis, index).clone() if v.dim() else v.clone())
                                         for k, v in state.items()}
        return nets

    def forward(self, A, cast):
        """Outputs (networks, rows, classes) in float32."""
        import torch

        (W0, b0), rest = self.layers[0], self.layers[1:]
        count, units = b0.shape
        with cast:
            H = torch.addmm(b0.reshape(-1), A, W0.reshape(W0.shape[0], -1)).view(A.shape[0], count, units)
            H = H.transpose(0, 1)
            for W, b in rest:
                H = torch.baddbmm(b, self.act(H), W)
        return H.float()

    def weights(self, a):
        """Network ``a``'s weights and intercepts, detached copies."""
        return [((W[:, a] if i == 0 else W[a]).detach().clone(), b[a].reshape(-1).detach().clone())
                for i, (W, b) in enumerate(self.layers)]


def _train_networks(est, alphas, init, seed, data):
    """The loop of :func:`_train`: every network steps on the same minibatch; one that stops (early
    stopping) leaves the stack."""
    import torch

    act = _ACTIVATIONS[est.activation]
    act = getattr(torch, act) if act else (lambda h: h)
    Xt, yt, Xv, val_codes, batch = data["X"], data["y"], data["X_val"], data["val_codes"], data["batch"]
    n, count = Xt.shape[0], len(alphas)
    nets = _Networks.start(init, count, act, est.learning_rate_init, (est.beta_1, est.beta_2), est.epsilon)
    active = list(range(count))  # the networks in the stack, in stack order
    runs = [{"losses": [], "val_scores": [], "best": -np.inf, "best_epoch": 0, "stall": 0, "steps": 0,
             "best_loss": np.inf, "kept": None} for _ in alphas]
    order = torch.Generator().manual_seed(seed + 1)  # the same minibatches for every alpha
    n_steps = -(-n // batch)
    for epoch in range(data["epochs"]):
        decay = torch.tensor([alphas[a] for a in active], dtype=torch.float32)
        total = torch.zeros(len(active), dtype=torch.float64)
        perm = torch.randperm(n, generator=order) if est.shuffle else torch.arange(n)
        for start in range(0, n, batch):
            rows = perm[start:start + batch]
            out = nets.forward(Xt[rows], data["cast"])
            m = len(rows)
            losses = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), yt[rows].repeat(len(active)),
                                                       reduction="none").view(len(active), m).mean(1)
            nets.opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            with torch.no_grad():  # the penalty's gradient, alpha W / rows: Adam's L2 term, weights only
                wd = decay / m
                for i, (W, _) in enumerate(nets.layers):
                    W.grad.addcmul_(W, wd.view(1, -1, 1) if i == 0 else wd.view(-1, 1, 1))
            nets.opt.step()
            total += losses.detach().double() * m
        with torch.no_grad():  # the epoch's loss as scikit-learn reports it: data term plus the penalty
            penalty = sum((W * W).sum(dim=(0, 2) if i == 0 else (1, 2)).double() for i, (W, _) in
                          enumerate(nets.layers))
            total += 0.5 * decay.double() * penalty * n_steps
            scores = None
            if Xv is not None and not data["fixed"]:  # scored in float32, as predict scores
                scores = (nets.forward(Xv, nullcontext()).argmax(2).numpy() == val_codes).mean(1)
        stopped = []
        for j, a in enumerate(active):
            run = runs[a]
            run["losses"].append(float(total[j]) / n)
            run["steps"] += n_steps
            if data["fixed"]:
                continue
            if scores is not None:
                score = float(scores[j])
                run["val_scores"].append(score)
                run["stall"] = run["stall"] + 1 if score < run["best"] + est.tol else 0
                if score > run["best"]:
                    run["best"], run["best_epoch"], run["kept"] = score, epoch + 1, nets.weights(j)
            else:
                run["stall"] = run["stall"] + 1 if run["losses"][-1] > run["best_loss"] - est.tol else 0
                run["best_loss"] = min(run["best_loss"], run["losses"][-1])
            if run["stall"] > est.n_iter_no_change:
                stopped.append(j)
        for j in stopped:
            runs[active[j]]["kept"] = runs[active[j]]["kept"] or nets.weights(j)
        if stopped:
            left = [j for j in range(len(active)) if j not in stopped]
            if not left:
                break
            nets, active = nets.keep(left), [active[j] for j in left]
    for j, a in enumerate(active):
        runs[a]["kept"] = runs[a]["kept"] or nets.weights(j)
    return [{"coefs": [W.numpy().copy() for W, _ in r["kept"]], "intercepts": [b.numpy().copy() for _, b in r["kept"]],
             "losses": r["losses"], "val_scores": r["val_scores"], "best_score": r["best"] if r["val_scores"] else None,
             "best_epoch": r["best_epoch"] if r["val_scores"] else len(r["losses"]), "epochs": len(r["losses"]),
             "steps": r["steps"]} for r in runs]
