"""Heads: each head's full selection (grid on validation + refit on train+val) against one default fit
of the scikit-learn estimator it replaces, on lite0 bn2 features of CIFAR-10 (64 px, GAP).

Both sides get the same rows and the same preprocessing (the head's own: standardise for logreg,
ridge and the MLP, L2 for the SVM and kNN); the selection holds out a stratified 20% of train, the
peer trains on all of train with its defaults. Test accuracy is measured once per model, and both
times include that one test evaluation (a k-NN fit only stores the rows; its work is in predict).
Before its timed run each side runs once, untimed, on 500 of the rows, so neither pays the process's
one-time costs (imports, thread pools) for the other; a pair shorter than two minutes is timed again
in the other order (a pair under ten seconds, twice more), and each side's best counts (on this
shared machine the load moves between runs, and the first of a pair touches fresh memory the second
reuses).
"""
from __future__ import annotations

import warnings

import numpy as np
from common import Skip, figure, timed


def _features(path, layer="bn2"):
    from transferlab.features.cache import load_split

    X, y, _ = load_split(path, "train", layer)
    Xt, yt, _ = load_split(path, "test", layer)
    return X, y, Xt, yt


def _peer(name):
    from sklearn.linear_model import LogisticRegression, RidgeClassifierCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import LinearSVC

    from transferlab.classifiers import default_grid

    return {
        "logreg": ("LogisticRegression()", lambda: make_pipeline(StandardScaler(), LogisticRegression())),
        "svm": ("LinearSVC()", lambda: make_pipeline(Normalizer(), LinearSVC())),
        "ridge": ("RidgeClassifierCV(45 alphas, LOO)", lambda: make_pipeline(
            StandardScaler(), RidgeClassifierCV(alphas=default_grid("ridge", full=True)["alpha"]))),
        "knn": ("KNeighborsClassifier()", lambda: make_pipeline(Normalizer(), KNeighborsClassifier())),
        "mlp": ("MLPClassifier()", lambda: make_pipeline(StandardScaler(), MLPClassifier(random_state=0))),
    }[name]


HEADS = {  # head -> (grid, target ratio; None = report only)
    "logreg": ("full 45-value C grid", True, 1.0),
    "svm": ("5-value C grid", False, 1.0),
    "ridge": ("full 45-value alpha grid", True, None),
    "knn": ("5-value k grid", False, 1.0),
    "mlp": ("5-value alpha grid", False, 1.0),
}


REPEAT_BELOW = 120.0  # seconds: a pair of timed runs shorter than this is timed twice, in both orders


def heads(path: str, label: str, names=tuple(HEADS)) -> list:
    from transferlab.classifiers import select_and_fit

    if not path:
        raise Skip("no feature cache for this size")
    X, y, Xt, yt = _features(path)
    rows, accuracy = [], {}
    for name in names:
        grid, full, target = HEADS[name]
        peer_name, make = _peer(name)

        def peer(X, y, Xt, yt):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the default fits' ConvergenceWarnings are part of the defaults
                # fit and the one test evaluation, as select_and_fit's time includes its test evaluation
                # (a k-NN "fit" only stores the rows: its work is in predict)
                return float(make().fit(X, y).score(Xt, yt))

        # both sides once on 500 rows first: imports and first-call set-up (thread pools, kernels) are
        # paid by whichever side runs first in the process, which measured 0.2 s of a 1.2 s selection
        few = np.arange(0, len(y), max(1, len(y) // 500))
        select_and_fit(X[few], y[few], None, None, Xt[:100], yt[:100], name, full_grid=full)
        peer(X[few], y[few], Xt[:100], yt[:100])
        t_ours, res = timed(select_and_fit, X, y, None, None, Xt, yt, name, full_grid=full)
        t_peer, peer_acc = timed(peer, X, y, Xt, yt)
        # again in the other order, the best of each: the first of a pair pays the process's fresh pages, and
        # the load moves between runs (a pair under ten seconds: twice more)
        for _ in range(0 if t_ours + t_peer >= REPEAT_BELOW else 1 if t_ours + t_peer >= 10 else 2):
            t_peer = min(t_peer, timed(peer, X, y, Xt, yt)[0])
            t_ours = min(t_ours, timed(select_and_fit, X, y, None, None, Xt, yt, name, full_grid=full)[0])
        accuracy[name] = res.test_accuracy
        ratio = t_ours / t_peer
        met = None if target is None else bool(ratio <= target and res.test_accuracy >= peer_acc - 0.005)
        rows.append(figure(
            f"{name}: selection ({grid} + refit) / one default scikit-learn fit, {label}",
            f"{t_ours:.1f} s, test {res.test_accuracy:.3f} ({res.params})",
            f"{peer_name} {t_peer:.1f} s, test {peer_acc:.3f}", ratio,
            f"<= {target} at equal or better accuracy" if target else "report", met,
            test_accuracy=res.test_accuracy, peer_test_accuracy=peer_acc, seconds=t_ours, peer_seconds=t_peer))
    return rows


def logreg_grid_in_sklearn(path: str, label: str) -> list:
    """The logreg head's 45-value grid run the scikit-learn way (LogisticRegressionCV-free: a warm loop)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from transferlab.classifiers import default_grid, select_and_fit

    X, y, Xt, yt = _features(path)
    tr, va = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    sc = StandardScaler().fit(X[tr])

    def loop():
        model = LogisticRegression(warm_start=True)
        scores = []
        for C in default_grid("logreg", full=True)["C"]:
            scores.append(model.set_params(C=C).fit(sc.transform(X[tr]), y[tr]).score(sc.transform(X[va]), y[va]))
        best = default_grid("logreg", full=True)["C"][int(np.argmax(scores))]
        sc_all = StandardScaler().fit(X)
        return LogisticRegression(C=best).fit(sc_all.transform(X), y).score(sc_all.transform(Xt), yt)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_sk, acc_sk = timed(loop)
    t_ours, res = timed(select_and_fit, X, y, None, None, Xt, yt, "logreg", full_grid=True)
    return [figure(f"logreg 45-value grid + refit: TransferLab / scikit-learn warm-started loop, {label}",
                   f"{t_ours:.1f} s, test {res.test_accuracy:.3f}", f"{t_sk:.1f} s, test {acc_sk:.3f}",
                   t_ours / t_sk, "report")]


def _digit_pairs(n_train: int, n_test: int):
    """A real 100-class image set: two MNIST digits side by side (28 x 56), labelled 00-99, drawn
    seeded from MNIST's own train and test splits; written once into the bench scratch folder."""
    from common import SHARED, WORK, Skip, save_npz

    src = SHARED / "mnist_full.npz"
    out = WORK / f"mnist_pairs_{n_train}_{n_test}.npz"
    if out.is_file():
        return out
    if not src.is_file():
        raise Skip(f"{src} not found")
    d = np.load(src)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = d[f"x_{split}"], d[f"y_{split}"]
        a, b = rng.integers(0, len(y), n), rng.integers(0, len(y), n)
        arrays[f"x_{split}"] = np.concatenate([x[a], x[b]], axis=2)
        arrays[f"y_{split}"] = (10 * y[a] + y[b]).astype(np.int64)
    WORK.mkdir(parents=True, exist_ok=True)
    save_npz(out, **arrays, class_names=np.array([f"{i:02d}" for i in range(100)]))
    return out


def logreg_many_classes(quick: bool) -> list:
    """The logreg head at 100 classes (MNIST digit pairs 00-99, lite0 bn2 at 64 px): its full selection
    against one default ``LogisticRegression`` fit, at equal or better test accuracy."""
    from common import WORK, quiet

    from transferlab.features import extract

    n_train, n_test = (2000, 500) if quick else (10000, 2500)
    path = extract(f"npz:{_digit_pairs(n_train, n_test)}", "lite0", layers="bn2", image_size=64,
                   cache_dir=WORK / "cache", progress=False, log=quiet)
    return heads(str(path), f"{n_train:,} x 1,280, 100 classes (MNIST digit pairs)", names=("logreg",))
