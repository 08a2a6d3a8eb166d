"""Image folders as people have them: layouts, the split of what is missing, and the fingerprint.

``folder:PATH`` is a folder of images, the class of an image being the name of its folder.
Accepted layouts:

- ``PATH/train/<class>/*`` + ``PATH/test/<class>/*`` (+ ``PATH/val/`` or ``PATH/validation/``);
- ``PATH/train/`` + ``PATH/val/`` (ImageNet style): ``val`` becomes the test split (with
  ``test_fraction`` given, it stays the validation split and test is split off train);
- ``PATH/train/`` alone, or a flat ``PATH/<class>/*``: the test split is split off by a seeded,
  stratified split of ``test_fraction`` (default 0.2).

A missing validation split is left to the heads and fine-tuning, which hold out their
``--val-fraction`` of train (stratified, seeded). Split and class are read from folder names
only: a folder inside a class folder, a top-level folder that is not a split next to ones that
are, an image outside a class folder, and an empty class folder (a class with no examples) are
refused with the fix; hidden files are ignored and other non-image files counted in the notes.
The layout read (and any split made) is ``Dataset.layout``, written to ``results.json`` and the report;
the split is part of the fingerprint, so of the cache key.

The fingerprint hashes the file list with each file's size and modification time
(``fingerprint="stat"``, the default: fast, but an edit that keeps both, e.g. ``cp -p`` of another
file of equal size, goes unnoticed) or each file's sha256
(``fingerprint="content"``, exact, reads every byte once); any split made and its seed are hashed
too, so a changed data set or split never reuses stale cached features.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from transferlab.util import UserInputError

from .dataset import IMAGE_EXTENSIONS, SPLITS, Dataset, Split

FOLDER_SPLIT_NAMES = {"train": "train", "test": "test", "val": "val", "validation": "val"}
FINGERPRINTS = ("stat", "content")
DEFAULT_TEST_FRACTION = 0.2


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _class_images(cdir: Path, root: Path) -> tuple[list[Path], list[Path]]:
    """Image files of one class folder, and the other (non-image) files; a sub-folder is refused."""
    images, other = [], []
    for f in sorted(cdir.iterdir()):
        if _is_hidden(f):
            continue
        if f.is_dir():
            raise UserInputError(
                f"{f} is a folder inside class '{cdir.name}'; put that class's images directly in {cdir} "
                f"(nested folders are not read, so they would be lost silently)")
        (images if f.suffix.lower() in IMAGE_EXTENSIONS else other).append(f)
    return images, other


def _file_record(f: Path, root: Path, mode: str) -> str:
    st = f.stat()
    if mode == "content":
        from transferlab.util import sha256_file

        return f"{f.relative_to(root).as_posix()}|{sha256_file(f)}\n"
    return f"{f.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n"


def _read_class_tree(folder: Path, root: Path, class_names: list[str] | None, notes: list[str],
                     empty_ok: bool) -> tuple[list[Path], list[str]]:
    """``(paths, class name per path)`` of ``folder/<class>/<image>``; loose files and empty classes checked."""
    paths, names, skipped = [], [], 0
    loose = [f for f in folder.iterdir() if f.is_file() and not _is_hidden(f) and f.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        raise UserInputError(
            f"{folder} holds {len(loose)} image(s) outside class folders (e.g. {loose[0].name}); every image "
            f"must be in {folder}/<class>/, the folder name being its class")
    for cdir in sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p)):
        if class_names is not None and cdir.name not in class_names:
            raise UserInputError(
                f"{cdir} is a class that the training folder does not have; every class needs training images")
        images, other = _class_images(cdir, root)
        skipped += len(other)
        if not images:
            if not empty_ok:
                raise UserInputError(
                    f"class folder {cdir} holds no images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                    f"remove it or add images, or it would become a class with no examples")
            notes.append(f"{cdir} is empty")
        paths += images
        names += [cdir.name] * len(images)
    if skipped:
        notes.append(f"{skipped} non-image file(s) under {folder} skipped")
    return paths, names


def load_folder_data(root: str | Path, test_fraction: float | None = None, seed: int = 0,
                     fingerprint: str = "stat") -> Dataset:
    """Read an image folder in any of the accepted layouts (see the module docstring).

    Parameters
    ----------
    root : path
        The folder.
    test_fraction : float, optional
        Share of the images held out as ``test`` (stratified, seeded) when the folder has no test
        split (default :data:`DEFAULT_TEST_FRACTION`); recorded in the fingerprint.
    seed : int
        Seed of that split.
    fingerprint : ``stat`` or ``content``
        ``stat`` (default) hashes each file's path, size and modification time: fast, but an edit that
        keeps size and mtime (``cp -p``, some sync tools) goes unnoticed. ``content`` hashes every
        file's bytes (sha256): exact, and reads the whole data set once.
    """
    root = Path(root).expanduser()
    if fingerprint not in FINGERPRINTS:
        raise UserInputError(f"unknown --fingerprint '{fingerprint}'; use stat (path, size, mtime) or content (sha256)")
    if test_fraction is not None and not 0 < float(test_fraction) < 1:
        raise UserInputError(f"--test-fraction {test_fraction} must be between 0 and 1 (e.g. 0.2)")
    if not root.is_dir():
        raise UserInputError(f"image folder {root} does not exist; give --data folder:PATH with PATH/<class>/<image> "
                             f"or PATH/train/<class>/<image>")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
    split_dirs = [p for p in subdirs if p.name.lower() in FOLDER_SPLIT_NAMES]
    notes: list[str] = []
    if split_dirs:
        unknown = [p.name for p in subdirs if p.name.lower() not in FOLDER_SPLIT_NAMES]
        if unknown:
            raise UserInputError(
                f"{root} mixes split folders ({', '.join(p.name for p in split_dirs)}) with other folders "
                f"({', '.join(unknown)}); splits are named train, val (or validation) and test; "
                f"move or rename the others")
        by_split: dict[str, Path] = {}
        for p in split_dirs:
            name = FOLDER_SPLIT_NAMES[p.name.lower()]
            if name in by_split:
                raise UserInputError(f"{root} has both {by_split[name].name}/ and {p.name}/; keep one of them")
            by_split[name] = p
        if "train" not in by_split:
            raise UserInputError(f"{root} has {', '.join(p.name for p in split_dirs)} but no train/ folder; "
                                 f"lay images out as {root}/train/<class>/<image>")
        tr_paths, tr_names = _read_class_tree(by_split["train"], root, None, notes, empty_ok=False)
        class_names = sorted(set(tr_names))
        files = {"train": (tr_paths, tr_names)}
        for split in ("val", "test"):
            if split in by_split:
                files[split] = _read_class_tree(by_split[split], root, class_names, notes, empty_ok=True)
                if not files[split][0]:
                    raise UserInputError(f"{by_split[split]} holds no images; remove it or add images")
        if "test" not in files and "val" in files and test_fraction is None:
            files["test"] = files.pop("val")
            layout = f"train/ + {by_split['val'].name}/ (ImageNet style): {by_split['val'].name}/ is the test split"
        elif "test" in files:
            layout = "train/ + " + (f"{by_split['val'].name}/ + " if "val" in files else "") + "test/"
        else:
            layout = "train/" + (f" + {by_split['val'].name}/" if "val" in files else "") + " (no test/)"
    else:
        if not subdirs:
            raise UserInputError(f"{root} has no class folders; lay images out as {root}/<class>/<image> "
                                 f"or {root}/train/<class>/<image>")
        paths, names = _read_class_tree(root, root, None, notes, empty_ok=False)
        class_names = sorted(set(names))
        files = {"train": (paths, names)}
        layout = "flat <class>/ folders"
    if len(class_names) < 2:
        raise UserInputError(f"{root} has {len(class_names)} class folder(s) with images; "
                             f"a classifier needs at least 2")
    h = hashlib.sha256(f"fingerprint={fingerprint}\n".encode())
    ids: dict[str, np.ndarray] = {}
    if "test" not in files:
        frac = DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction)
        paths, names = files["train"]
        counts = {c: names.count(c) for c in class_names}
        if min(counts.values()) < 2:
            few = [c for c, n in counts.items() if n < 2]
            raise UserInputError(f"class(es) {', '.join(few)} in {root} have fewer than 2 images; a test split "
                                 f"needs at least one image per class on each side; add images")
        idx = np.arange(len(paths))
        n_test = max(int(round(frac * len(paths))), len(class_names))
        if len(paths) - n_test < len(class_names):
            raise UserInputError(f"{root} has too few images ({len(paths)}) for a {frac:g} test split of "
                                 f"{len(class_names)} classes; add images or lower --test-fraction")
        from sklearn.model_selection import train_test_split  # here: 1 s of imports a folder with splits never needs

        tr, te = train_test_split(idx, test_size=n_test, stratify=names, random_state=seed)
        tr.sort()
        te.sort()
        ids = {"train": tr, "test": te}
        files = {"train": ([paths[i] for i in tr], [names[i] for i in tr]),
                 "test": ([paths[i] for i in te], [names[i] for i in te]), **{k: v for k, v in files.items()
                                                                           if k not in ("train", "test")}}
        layout += f"; test split off train: {frac:g} of the images, stratified, seed {seed}"
        h.update(f"split test={frac!r} seed={seed}\n".encode())
    index = {c: i for i, c in enumerate(class_names)}
    splits = {}
    for split in SPLITS:
        if split not in files:
            continue
        paths, names = files[split]
        for f in paths:
            h.update(f"{split}|".encode() + _file_record(f, root, fingerprint).encode())
        splits[split] = Split(split, np.asarray([index[n] for n in names], dtype=np.int64), paths=list(paths),
                              ids=ids.get(split))
    return Dataset(f"folder:{root}", splits, class_names, h.hexdigest(), layout=layout, notes=notes)
