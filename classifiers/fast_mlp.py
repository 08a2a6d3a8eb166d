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

import numpy as np
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.validation import validate_data

from ._threads import torch_threads
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
    dtype = torch.bfloat16 if bfloat16_products() else None  # the products' type; None: float32
    # the rows cast once, not at every step
    data = {"X": torch.from_numpy(X).to(dtype or torch.float32), "y": torch.from_numpy(codes.astype(np.int64)),
            "X_val": None if X_val is None else torch.from_numpy(X_val), "val_codes": val_codes,
            "batch": batch, "epochs": est.max_iter if epochs is None else int(epochs), "fixed": epochs is not None,
            "dtype": dtype}
    # a minibatch step is many short operations: on a shared machine, threads handing them off cost more than
    # the products gain. A step trains every alpha of the stack.
    step_work = batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) * len(alphas)
    with torch_threads(1 if step_work < STEP_WORK else None):
        return _train_networks(est, alphas, init, seed, data)


class _Networks:
    """The networks of :func:`_train` stacked along a leading axis, one per alpha still training: the
    first layer's weights as one (inputs, networks, units) tensor, so every network's first product is one
    matrix product (the same numbers as the networks' own products), the later layers batched products.

    A minibatch step is written out (forward, backpropagation as scikit-learn's ``_backprop``, and torch's
    fused Adam through its functional form) rather than taped by autograd: a step is a few large products
    and some thirty small operations, and the tape and the optimiser object cost more than those.
    ``tests/classifiers/test_fast_mlp.py`` checks the gradients against autograd's."""

    def __init__(self, layers, activation, lr, betas, eps, state=None):
        import torch

        self.layers = layers  # [(W, b)] float32; the first W (inputs, networks, units), b (networks, units)
        self.activation = activation
        self.hyper = {"lr": lr, "beta1": betas[0], "beta2": betas[1], "eps": eps}
        flat = self.params()
        self.state = state or {"m": [torch.zeros_like(p) for p in flat], "v": [torch.zeros_like(p) for p in flat],
                               "steps": [torch.zeros((), dtype=torch.float32) for _ in flat]}

    @classmethod
    def start(cls, init, count, activation, lr, betas, eps):
        W0, b0 = init[0]
        layers = [(W0.unsqueeze(1).repeat(1, count, 1).contiguous(), b0.repeat(count, 1))]
        layers += [(W.expand(count, *W.shape).clone(), b.expand(count, 1, -1).clone()) for W, b in init[1:]]
        return cls(layers, activation, lr, betas, eps)

    def params(self):
        return [p for layer in self.layers for p in layer]

    def keep(self, which):
        """Only the networks at positions ``which``, with their optimiser state."""
        import torch

        index = torch.as_tensor(which)

        def pick(i, t):  # parameter i of the flat list: the first layer's weight stacks along axis 1
            return (t.index_select(1, index) if i == 0 else t.index_select(0, index)).contiguous()

        flat = [pick(i, p) for i, p in enumerate(self.params())]
        layers = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(self.layers))]
        state = {"m": [pick(i, t) for i, t in enumerate(self.state["m"])],
                 "v": [pick(i, t) for i, t in enumerate(self.state["v"])],
                 "steps": [s.clone() for s in self.state["steps"]]}
        h = self.hyper
        return _Networks(layers, self.activation, h["lr"], (h["beta1"], h["beta2"]), h["eps"], state)

    def _activate(self, Z):
        import torch

        name = _ACTIVATIONS[self.activation]  # identity: None
        return getattr(torch, name)(Z) if name else Z

    def _derivative(self, H, D):
        """``D`` times the activation's derivative, from the activation's output ``H`` (in place on ``D``)."""
        if self.activation == "relu":
            return D.mul_(H > 0)
        if self.activation == "tanh":
            return D.mul_(1 - H * H)
        if self.activation == "logistic":
            return D.mul_(H * (1 - H))
        return D

    def forward(self, A, dtype=None):
        """Outputs (networks, rows, classes) in float32, and the hidden layers' activations; the products in
        ``dtype`` (the rows ``A`` already in it), else in float32."""
        (W0, b0), rest = self.layers[0], self.layers[1:]
        cast = (lambda t: t) if dtype is None or dtype == W0.dtype else (lambda t: t.to(dtype))
        count, units = b0.shape
        Z = cast(b0.reshape(-1)).addmm(A, cast(W0.view(W0.shape[0], -1)))
        hidden = [self._activate(Z.view(A.shape[0], count, units).transpose(0, 1))]
        for W, b in rest[:-1]:
            hidden.append(self._activate(cast(b).baddbmm(hidden[-1], cast(W))))
        W, b = rest[-1]
        return cast(b).baddbmm(hidden[-1], cast(W)).float(), hidden

    def step(self, A, y, decay, dtype=None):
        """One Adam step of every network on the minibatch ``A`` (labels ``y``); each network's mean data loss."""
        from torch.optim.adam import adam

        losses, grads = self.gradients(A, y, decay, dtype)
        adam(self.params(), grads, self.state["m"], self.state["v"], [], self.state["steps"], fused=True,
             amsgrad=False, weight_decay=0.0, maximize=False, **self.hyper)  # the tensors carry no tape
        return losses

    def gradients(self, A, y, decay, dtype=None):
        """Each network's mean cross-entropy on the minibatch ``A`` (labels ``y``), and the gradients (in
        :meth:`params` order) of that plus ``decay / rows * ||W||^2 / 2`` (decay per network, weights only:
        scikit-learn's penalty per minibatch)."""
        import torch

        out, hidden = self.forward(A, dtype)
        m = A.shape[0]
        logp = out.log_softmax(-1)
        losses = -logp.gather(2, y.view(1, -1, 1).expand(out.shape[0], -1, 1)).mean((1, 2))
        D = logp.exp_()  # softmax minus one-hot, over rows: the output's gradient
        D.scatter_add_(2, y.view(1, -1, 1).expand(out.shape[0], -1, 1),
                       torch.full((1, 1, 1), -1.0).expand(out.shape[0], m, 1)).div_(m)
        cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
        grads = [None] * (2 * len(self.layers))
        for i in range(len(self.layers) - 1, 0, -1):  # the batched layers, last first
            W, _ = self.layers[i]
            H = hidden[i - 1]
            grads[2 * i] = torch.bmm(H.transpose(1, 2), cast(D)).float().addcmul_(W, decay.view(-1, 1, 1), value=1 / m)
            grads[2 * i + 1] = D.sum(1, keepdim=True, dtype=torch.float32)
            D = self._derivative(H, torch.bmm(cast(D), cast(W).transpose(1, 2)))
        W0 = self.layers[0][0]
        count, units = self.layers[0][1].shape
        D0 = D.transpose(0, 1).reshape(m, count * units)  # (rows, networks x units), the first product's layout
        grads[0] = torch.mm(A.t(), D0).float().view_as(W0).addcmul_(W0, decay.view(1, -1, 1), value=1 / m)
        grads[1] = D.sum(1, dtype=torch.float32)
        return losses, grads

    def weights(self, a):
        """Network ``a``'s weights and intercepts, detached copies."""
        return [((W[:, a] if i == 0 else W[a]).clone(), b[a].reshape(-1).clone())
                for i, (W, b) in enumerate(self.layers)]


def _train_networks(est, alphas, init, seed, data):
    """The loop of :func:`_train`: every network steps on the same minibatch; one that stops (early
    stopping) leaves the stack."""
    import torch

    Xt, yt, Xv, val_codes, batch = data["X"], data["y"], data["X_val"], data["val_codes"], data["batch"]
    n, count = Xt.shape[0], len(alphas)
    nets = _Networks.start(init, count, est.activation, est.learning_rate_init, (est.beta_1, est.beta_2), est.epsilon)
    active = list(range(count))  # the networks in the stack, in stack order
    runs = [{"losses": [], "val_scores": [], "best": -np.inf, "best_epoch": 0, "stall": 0, "steps": 0,
             "best_loss": np.inf, "kept": None} for _ in alphas]
    order = torch.Generator().manual_seed(seed + 1)  # the same minibatches for every alpha
    n_steps = -(-n // batch)
    for epoch in range(data["epochs"]):
        decay = torch.tensor([alphas[a] for a in active], dtype=torch.float32)
        total = torch.zeros(len(active), dtype=torch.float64)
        if est.shuffle:  # the epoch's rows gathered once in its order: every minibatch a slice of them
            perm = torch.randperm(n, generator=order)
            X_epoch, y_epoch = Xt[perm], yt[perm]
        else:
            X_epoch, y_epoch = Xt, yt
        for start in range(0, n, batch):
            total += nets.step(X_epoch[start:start + batch], y_epoch[start:start + batch], decay,
                               data["dtype"]).double() * min(batch, n - start)
        with torch.no_grad():  # the epoch's loss as scikit-learn reports it: data term plus the penalty
            penalty = sum((W * W).sum(dim=(0, 2) if i == 0 else (1, 2)).double() for i, (W, _) in
                          enumerate(nets.layers))
            total += 0.5 * decay.double() * penalty * n_steps
            scores = None
            if Xv is not None and not data["fixed"]:  # scored in float32, as predict scores
                scores = (nets.forward(Xv)[0].argmax(2).numpy() == val_codes).mean(1)
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
