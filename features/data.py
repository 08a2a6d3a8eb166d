"""Data specs: turn ``--data`` strings into labelled image splits with a content fingerprint.

Specs (the interface contract's ``--data``):

``digits``
    scikit-learn's handwritten digits (8x8 grey, 1,797 images), split into ``train`` and ``test``
    by a seeded stratified split.
``npz:PATH``
    a NumPy archive with uint8 ``x_train`` (N,H,W,C or N,H,W), int ``y_train``, ``x_test``,
    ``y_test``, optional ``x_val``/``y_val`` and ``class_names`` (distinct: a repeated name is refused).
``folder:PATH``
    a folder of images, the class being the folder an image sits in; the accepted layouts, the split
    of what is missing and the refusals are in :mod:`transferlab.features.folders`.
``torchvision:NAME``
    a torchvision data set (``torchvision:CIFAR10``), downloaded into ``<data root>/torchvision``.

Every split keeps the data's own order; row ``i`` of a split has the stable sample id ``ids[i]``.
The fingerprint hashes the content (arrays), or for folders the file list (see
:mod:`transferlab.features.folders`), so a changed data set never reuses stale cached features.

A bare path (``--data ~/photos``) is read as ``folder:`` when it is a directory and ``npz:`` when it
is a ``.npz`` file.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np

from transferlab.util import UserInputError

from .dataset import IMAGE_EXTENSIONS, SPLITS, Dataset, Split  # noqa: F401 (the types data specs hand out)

DIGITS_TEST_FRACTION = 0.25
SIDE_SAMPLE = 300  # image files whose headers median_side reads at most (a fixed-seed sample of more)


def _hash_arrays(*named: tuple[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, arr in named:
        arr = np.ascontiguousarray(arr)
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _as_uint8_images(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3, 4)):
        raise UserInputError(
            f"{what} has shape {arr.shape}; expected (N,H,W) grey or (N,H,W,C) with C in 1, 3, 4")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.min() >= 0 and arr.max() <= 255:
            arr = arr.astype(np.uint8)
        else:
            raise UserInputError(f"{what} has dtype {arr.dtype}; store images as uint8 in 0..255")
    return arr


def load_digits_data(seed: int = 0) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=seed)
    tr.sort()
    te.sort()
    splits = {
        "train": Split("train", y[tr], images=images[tr], ids=tr.astype(np.int64)),
        "test": Split("test", y[te], images=images[te], ids=te.astype(np.int64)),
    }
    fp = _hash_arrays(("images", images), ("y", y), ("train", tr), ("test", te))
    return Dataset("digits", splits, [str(c) for c in bunch.target_names], fp)


def _npz_array(archive, path: Path, key: str) -> np.ndarray:
    """One array of an npz archive; object (pickled) arrays are refused, never unpickled."""
    try:
        return np.asarray(archive[key])
    except ValueError as exc:  # "Object arrays cannot be loaded when allow_pickle=False"
        raise UserInputError(f"{path}: {key} is stored as Python objects ({exc}); save it as a plain numeric "
                             f"array (uint8 images, integer labels, str class names)") from None
    except Exception as exc:  # a damaged member of the zip
        raise UserInputError(f"{path}: {key} cannot be read ({exc.__class__.__name__}: {exc}); "
                             f"write the archive again") from None


def load_npz_data(path: str | Path) -> Dataset:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserInputError(f"npz file {path} does not exist; give an existing path as --data npz:PATH")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # not a zip, truncated, pickled objects
        raise UserInputError(f"cannot read {path} as a NumPy .npz archive ({exc.__class__.__name__}: {exc})") from None
    with archive:
        keys = set(archive.files)
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in keys]
        if missing:
            raise UserInputError(
                f"{path} lacks the keys {', '.join(missing)}; an npz data set needs x_train, y_train, "
                f"x_test, y_test (optional x_val, y_val, class_names); it has {', '.join(sorted(keys)) or 'none'}")
        if ("x_val" in keys) != ("y_val" in keys):
            raise UserInputError(f"{path} has only one of x_val / y_val; store both or neither")
        splits, named = {}, []
        for split in SPLITS:
            if f"x_{split}" not in keys:
                continue
            x = _as_uint8_images(_npz_array(archive, path, f"x_{split}"), f"{path}:x_{split}")
            y = _npz_array(archive, path, f"y_{split}").reshape(-1)
            if len(x) == 0:
                raise UserInputError(f"{path}: x_{split} holds no images; every split needs at least one "
                                     f"(drop x_val/y_val instead of storing them empty)")
            if len(x) != len(y):
                raise UserInputError(
                    f"{path}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels; they must match")
            if not np.issubdtype(y.dtype, np.integer):
                raise UserInputError(f"{path}: y_{split} has dtype {y.dtype}; labels must be integers")
            if len(y) and y.min() < 0:
                raise UserInputError(f"{path}: y_{split} has negative labels; use class indices 0..K-1")
            splits[split] = Split(split, y.astype(np.int64), images=x)
            named += [(f"x_{split}", x), (f"y_{split}", y)]
        n_classes = int(max(int(s.labels.max()) for s in splits.values() if len(s)) + 1)
        if "class_names" in keys:
            names = [str(c) for c in _npz_array(archive, path, "class_names").reshape(-1)]
            if len(names) < n_classes:
                raise UserInputError(
                    f"{path}: class_names has {len(names)} entries but labels go up to {n_classes - 1}")
            repeated = sorted(n for n, k in Counter(names).items() if k > 1)
            if repeated:
                more = f" (and {len(repeated) - 5} more)" if len(repeated) > 5 else ""
                raise UserInputError(f"{path}: class_names repeats {', '.join(map(repr, repeated[:5]))}{more}; "
                                     f"every class needs a name of its own: rename or merge those classes")
        else:
            used = np.unique(np.concatenate([s.labels for s in splits.values()]))
            if used.size != n_classes:  # labels 0..K-1 each used: anything else needs names
                missing = sorted(set(range(min(n_classes, 1 << 20))) - set(used.tolist()))
                raise UserInputError(
                    f"{path}: labels are not the contiguous class indices 0..K-1 ({used.size} distinct labels, "
                    f"largest {n_classes - 1}, e.g. {missing[0]} unused), which would make {n_classes} classes; "
                    f"remap them to 0..{used.size - 1} or store class_names with {n_classes} entries")
            names = [str(i) for i in range(n_classes)]
        named.append(("class_names", np.asarray(names, dtype=np.str_)))
    return Dataset(f"npz:{path}", splits, names, _hash_arrays(*named))


def load_torchvision_data(name: str, root: Path) -> Dataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if cls is None or not isinstance(cls, type):
        raise UserInputError(f"torchvision has no data set '{name}'; try torchvision:CIFAR10, torchvision:MNIST, ...")
    target = Path(root) / "torchvision"
    splits, named = {}, []
    for split, train in (("train", True), ("test", False)):
        try:
            ds = cls(root=str(target), train=train, download=True)
        except Exception as exc:
            raise UserInputError(
                f"could not load or download torchvision:{name} into {target} ({exc.__class__.__name__}: {exc}); "
                f"without network, pass the data as npz:PATH or folder:PATH") from None
        data = getattr(ds, "data", None)
        if data is not None:
            x = np.asarray(data.numpy() if hasattr(data, "numpy") else data)
        else:
            x = np.stack([np.asarray(ds[i][0].convert("RGB")) for i in range(len(ds))])
        y = np.asarray(getattr(ds, "targets", [ds[i][1] for i in range(len(ds))]))
        x = _as_uint8_images(x, f"torchvision:{name} {split}")
        splits[split] = Split(split, y, images=x)
        named += [(f"x_{split}", x), (f"y_{split}", y)]
    names = [str(c) for c in getattr(ds, "classes", range(int(splits["train"].labels.max()) + 1))]
    return Dataset(f"torchvision:{name}", splits, names, _hash_arrays(*named))


def _header_side(path) -> int | None:
    """The shorter side of an image file from its header (PIL opens lazily: nothing is decoded); None
    when PIL cannot read it (extraction refuses such a file by name)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return int(min(im.size))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def median_side(dataset: Dataset, limit: int = SIDE_SAMPLE) -> tuple[int, int, int]:
    """``(median shorter side, images measured, images in the data)`` over every split.

    In-memory images are measured from their arrays' shape (all of them). Image files are measured
    from their headers, at most ``limit`` of them: a larger folder is sampled with a fixed seed from the
    sorted file list, so the side depends on the files alone (not on ``--seed`` or the split); files PIL
    cannot read are left out.
    """
    sides, total, paths = [], 0, []
    for split in dataset.splits.values():
        total += len(split)
        if split.in_memory:
            sides += [int(min(split.images.shape[1:3]))] * len(split)
        else:
            paths += list(split.paths)
    paths = sorted(paths)
    if len(paths) > limit:
        paths = [paths[i] for i in sorted(np.random.default_rng(0).choice(len(paths), limit, replace=False))]
    read = [s for s in map(_header_side, paths) if s is not None]
    if paths and not read:
        raise UserInputError(f"{dataset.spec}: none of {len(paths)} image files could be read (e.g. {paths[0]}); "
                             f"remove or replace them, or give --image-size N")
    sides += read
    return int(round(float(np.median(sides)))), len(sides), total


def default_data_root() -> Path:
    """Where downloads and the feature cache live: ``$TRANSFERLAB_DATA``, else the platform's user cache
    folder (``~/.cache/transferlab`` on Linux, ``~/Library/Caches/transferlab`` on macOS,
    ``%LOCALAPPDATA%\\transferlab\\Cache`` on Windows; :mod:`platformdirs`), never the install location."""
    env = os.environ.get("TRANSFERLAB_DATA")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("transferlab", appauthor=False))


def default_cache_dir() -> Path:
    """Where extracted features are cached unless ``cache_dir`` says otherwise."""
    return default_data_root() / "cache"


def _guess_spec(spec: str) -> str | None:
    """``folder:PATH`` / ``npz:PATH`` for a bare existing path, else None."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return f"folder:{spec}"
    if p.is_file() and p.suffix.lower() == ".npz":
        return f"npz:{spec}"
    return None


def load_dataset(spec: "str | Dataset", root: str | Path | None = None, seed: int = 0,
                 test_fraction: float | None = None, fingerprint: str = "stat") -> Dataset:
    """Resolve a ``--data`` spec into a :class:`Dataset`.

    Parameters
    ----------
    spec : str or Dataset
        ``digits``, ``npz:PATH``, ``folder:PATH`` or ``torchvision:NAME``; a Dataset passes through.
    root : path, optional
        Where ``torchvision:`` data sets are downloaded (default :func:`default_data_root`).
    seed : int
        Seed of the ``digits`` train/test split and of a folder's test split.
    test_fraction, fingerprint
        For ``folder:`` data, see :func:`transferlab.features.folders.load_folder_data`.
    """
    if isinstance(spec, Dataset):
        return spec
    from .folders import FINGERPRINTS, load_folder_data

    if fingerprint not in FINGERPRINTS:
        raise UserInputError(f"unknown --fingerprint '{fingerprint}'; use stat (path, size, mtime) or content (sha256)")
    kind, sep, rest = str(spec).partition(":")
    if kind not in ("digits", "npz", "folder", "torchvision") or (not sep and kind != "digits"):
        guess = _guess_spec(str(spec))
        if guess is not None:
            spec = guess
            kind, sep, rest = spec.partition(":")
    if kind == "digits" and not sep:
        return load_digits_data(seed)
    if sep and rest:
        if kind == "npz":
            return load_npz_data(rest)
        if kind == "folder":
            return load_folder_data(rest, test_fraction=test_fraction, seed=seed, fingerprint=fingerprint)
        if kind == "torchvision":
            return load_torchvision_data(rest, Path(root) if root else default_data_root())
    if Path(str(spec)).expanduser().is_file() and Path(str(spec)).suffix.lower() in IMAGE_EXTENSIONS:
        raise UserInputError(
            f"--data {spec} is one image; --data wants a folder of class folders (PATH/<class>/*) or an .npz "
            f"file; to classify single images, use `transferlab predict --model DIR IMAGE...`")
    raise UserInputError(
        f"unknown data spec '{spec}' (and no such folder or .npz file); use digits, npz:PATH, folder:PATH "
        f"or torchvision:NAME")
