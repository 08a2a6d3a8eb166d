import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from transferlab.classifiers import fast_mlp
from transferlab.classifiers.fast_mlp import TorchMLPClassifier
from transferlab.classifiers.heads import make_head
from transferlab.classifiers.holdout import stratified_holdout
from transferlab.classifiers.protocol import grid_scores, select_and_fit


@pytest.fixture
def rows(digits_arrays):
    """Standardised noisy digits: train, val (the protocol's holdout of train), test."""
    X, y, Xt, yt = digits_arrays
    rng = np.random.default_rng(0)
    X = (X + rng.normal(0, 1.0, X.shape)).astype(np.float32)
    Xt = (Xt + rng.normal(0, 1.0, Xt.shape)).astype(np.float32)
    sc = StandardScaler().fit(X)
    X, Xt = sc.transform(X).astype(np.float32), sc.transform(Xt).astype(np.float32)
    tr, va, _ = stratified_holdout(y, 0.2, seed=0)
    return X[tr], y[tr], X[va], y[va], Xt, yt


def _as_sklearn(est):
    """A plain scikit-learn MLPClassifier holding the fitted weights of ``est``."""
    ref = MLPClassifier(est.hidden_layer_sizes, activation=est.activation)
    for attr in ("coefs_", "intercepts_", "classes_", "n_layers_", "n_outputs_", "out_activation_", "n_features_in_",
                 "_label_binarizer"):
        setattr(ref, attr, getattr(est, attr))
    return ref


def test_it_learns_as_well_as_scikit_learns_mlp_on_the_same_rows(rows):
    X, y, _, _, Xt, yt = rows
    ours, sk = [np.mean([cls((32,), alpha=1e-3, early_stopping=True, random_state=seed).fit(X, y).score(Xt, yt)
                         for seed in range(3)]) for cls in (TorchMLPClassifier, MLPClassifier)]
    assert ours >= sk - 0.03 and sk > 0.4  # chance: 0.1


@pytest.mark.parametrize("n_classes", [2, 10])
def test_a_fitted_head_is_a_scikit_learn_mlp(rows, n_classes):
    """Its weights, in scikit-learn's layout, predict through scikit-learn's own forward pass."""
    X, y, Xv, yv, Xt, yt = rows
    keep, keep_t = y < n_classes, yt < n_classes
    X, y, Xt, yt = X[keep], y[keep], Xt[keep_t], yt[keep_t]
    ours = TorchMLPClassifier((32,), alpha=1e-3, early_stopping=True, random_state=0).fit(X, y)
    assert [c.shape for c in ours.coefs_] == [(64, 32), (32, 1 if n_classes == 2 else n_classes)]
    assert all(c.dtype == np.float32 for c in ours.coefs_ + ours.intercepts_)
    ref = _as_sklearn(ours)
    np.testing.assert_array_equal(ours.predict(Xt), ref.predict(Xt))
    np.testing.assert_allclose(ours.predict_proba(Xt), ref.predict_proba(Xt), rtol=1e-6)
    assert ours.n_iter_ == len(ours.validation_scores_) and ours.best_validation_score_ == max(ours.validation_scores_)


def test_every_alpha_scores_as_its_network_fitted_alone(rows):
    """The screen's score of an alpha is the validation accuracy of that alpha's network fitted alone
    (same initial weights and minibatches) for the screen's best number of epochs."""
    X, y, Xv, yv, _, _ = rows
    head = TorchMLPClassifier((32,), early_stopping=True, n_iter_no_change=2, random_state=0)
    grid = [1e-5, 1e-1, 3.0]
    scores = head.score_grid(grid, X, y, Xv, yv)
    for alpha, score in zip(grid, scores):
        epochs = head.refit_init(alpha)["epochs"]
        alone = TorchMLPClassifier((32,), alpha=alpha, random_state=0).fit(X, y, epochs=epochs)
        assert alone.n_iter_ == epochs
        assert _as_sklearn(alone).score(Xv, yv) == score
    assert len(set(scores)) > 1


def test_the_selection_refits_the_chosen_alpha_for_its_epochs_on_train_plus_val(rows):
    X, y, Xv, yv, Xt, yt = rows
    grid = [1e-4, 1e-2, 1.0]
    points, scores = grid_scores(X, y, Xv, yv, "mlp", grid=grid)
    result = select_and_fit(X, y, Xv, yv, Xt, yt, "mlp", grid=grid)
    assert [s["val_accuracy"] for s in result.val_scores] == list(scores)
    best = grid[int(np.argmax(scores))]
    assert result.params == {"alpha": best}
    head = result.estimator.named_steps["head"]
    assert isinstance(head, TorchMLPClassifier) and head.validation_scores_ is None  # no second split
    template = make_head("mlp", seed=0)
    pre = template[:-1].fit(X)
    template[-1].score_grid(grid, pre.transform(X), y, pre.transform(Xv), yv)
    assert head.n_iter_ == template[-1].refit_init(best)["epochs"]
    both = pre.fit(np.concatenate([X, Xv]))
    sk = MLPClassifier((256,), alpha=best, early_stopping=True, n_iter_no_change=1, random_state=0)
    sk.fit(both.transform(np.concatenate([X, Xv])), np.concatenate([y, yv]))
    assert result.test_accuracy >= sk.score(both.transform(Xt), yt) - 0.03


def test_small_minibatch_steps_train_on_one_thread_and_the_count_is_restored(rows, monkeypatch):
    import torch

    X, y, _, _, _, _ = rows
    seen, real = [], fast_mlp._train_networks
    monkeypatch.setattr(fast_mlp, "_train_networks", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        TorchMLPClassifier((32,), random_state=0, max_iter=2).fit(X, y)
        monkeypatch.setattr(fast_mlp, "STEP_WORK", 0)
        TorchMLPClassifier((32,), random_state=0, max_iter=2).fit(X, y)
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_stacked_alpha_screen_counts_every_network_of_its_step(rows, monkeypatch):
    """One minibatch step of the screen trains every alpha of the stack: five small networks are one step's
    work five times over, which threads pay for where one network's does not."""
    import torch

    X, y, Xv, yv, _, _ = rows
    seen, real = [], fast_mlp._train_networks
    monkeypatch.setattr(fast_mlp, "_train_networks", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    one = min(200, len(y)) * (X.shape[1] * 32 + 32 * len(np.unique(y)))  # one network's multiply-adds per step
    monkeypatch.setattr(fast_mlp, "STEP_WORK", 3 * one)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        TorchMLPClassifier((32,), random_state=0, max_iter=2).fit(X, y)
        TorchMLPClassifier((32,), random_state=0, max_iter=2).score_grid([1e-4, 1e-3, 1e-2, 1e-1, 1.0], X, y, Xv, yv)
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_without_bfloat16_products_it_trains_in_float32(rows, monkeypatch):
    X, y, _, _, Xt, yt = rows
    monkeypatch.setattr(fast_mlp, "bfloat16_products", lambda: False)
    ours = TorchMLPClassifier((32,), random_state=0, max_iter=30).fit(X, y)
    assert ours.n_iter_ <= 30 and ours.best_loss_ == min(ours.loss_curve_) and ours.score(Xt, yt) > 0.4  # chance: 0.1
    again = TorchMLPClassifier((32,), random_state=0, max_iter=30).fit(X, y)
    np.testing.assert_array_equal(ours.coefs_[0], again.coefs_[0])  # seeded: the same network


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_the_written_out_gradients_are_autograds(activation):
    """The stacked networks' hand-written backpropagation against autograd on each network alone: mean
    cross-entropy plus alpha / rows * ||W||^2 / 2 (scikit-learn's minibatch penalty, weights only)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    sizes, alphas, m = [6, 5, 4, 3], [1e-3, 0.5, 2.0], 9
    init = [(torch.randn(a, b, generator=gen), torch.randn(b, generator=gen)) for a, b in zip(sizes[:-1], sizes[1:])]
    nets = fast_mlp._Networks.start(init, len(alphas), activation, 1e-3, (0.9, 0.999), 1e-8)
    for p in nets.params():  # the networks differ, so a mix-up between them shows
        p.add_(torch.randn(p.shape, generator=gen))
    A, y = torch.randn(m, sizes[0], generator=gen), torch.randint(0, sizes[-1], (m,), generator=gen)
    losses, grads = nets.gradients(A, y, torch.tensor(alphas))
    act = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid, "identity": lambda h: h}[activation]
    for j, alpha in enumerate(alphas):
        own = [(W.clone().requires_grad_(), b.clone().requires_grad_()) for W, b in nets.weights(j)]
        H = A
        for i, (W, b) in enumerate(own):
            H = H @ W + b if i == len(own) - 1 else act(H @ W + b)
        data = torch.nn.functional.cross_entropy(H, y)
        (data + alpha / m * sum((W * W).sum() for W, _ in own) / 2).backward()
        assert abs(float(losses[j]) - data.item()) < 1e-5
        for i, (W, b) in enumerate(own):
            gW, gb = grads[2 * i], grads[2 * i + 1]
            torch.testing.assert_close(gW[:, j] if i == 0 else gW[j], W.grad, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(gb[j].reshape(-1), b.grad, rtol=1e-5, atol=1e-6)
