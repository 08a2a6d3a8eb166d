"""Hostile cases for `cache rm` and `cache ls`: files in (or passed to) the cache that the cache did not write.

Each case states the attack, the expected refusal, and checks that nothing but the cache's own files
changed: every other file under the folder is still there, byte for byte, and nothing new appeared
(not even a lock file beside a foreign file).
"""
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.cache_fixtures import digits_splits, write_cache
from tests.conftest import refusal_lines, run_cli

CACHE_NAME = "digits_lite0_imagenet_224px_gap_float16_0123456789ab.h5"  # named as extract names its files


def _snapshot(root: Path) -> dict:
    """Every entry under ``root``: a file's sha256, a folder as "dir"."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def _keras_model(path: Path) -> Path:
    """An HDF5 file as Keras saves a model: its own root attributes and weights, none of the cache's."""
    with h5py.File(path, "w") as f:
        f.attrs.update(keras_version="2.15.0", backend="tensorflow",
                       model_config=json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
        f.create_dataset("model_weights/dense/kernel", data=np.arange(12, dtype=np.float32).reshape(3, 4))
    return path


def _cache_file(path: Path) -> Path:
    labels, features = digits_splits(with_val=False, n_train=40, n_test=20)
    return write_cache(path, labels, features)


def _one_line_refusal(out, *needles):
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = refusal_lines(out)  # the command's plan line, then the one error line
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(n in lines[0] for n in needles), out.stderr


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "cache"
    d.mkdir()
    return d


def test_rm_of_a_keras_model_in_the_cache_folder_is_refused_and_leaves_it_byte_equal(folder):
    """Attack: a user's own Keras model sits in the cache folder and is named to `cache rm`."""
    _keras_model(folder / "model.h5")
    before = _snapshot(folder)
    out = run_cli("cache", "rm", "model.h5", "--cache-dir", folder)  # a bare name is looked up in the folder
    _one_line_refusal(out, str(folder / "model.h5"), "not a cache file", "without the cache's root attributes")
    assert _snapshot(folder) == before


def test_a_foreign_file_named_like_a_cache_file_is_still_refused(folder):
    """Attack: the foreign file carries a cache file's name pattern; the name alone decides nothing."""
    _keras_model(folder / CACHE_NAME)
    before = _snapshot(folder)
    _one_line_refusal(run_cli("cache", "rm", folder / CACHE_NAME), CACHE_NAME, "not a cache file")
    assert _snapshot(folder) == before


def test_rm_of_a_foreign_file_passed_by_mistake_elsewhere_is_refused(tmp_path):
    """Attack: a path outside the cache folder, a Keras model and a text file named .h5."""
    home = tmp_path / "home"
    home.mkdir()
    _keras_model(home / "weights.h5")
    (home / "notes.h5").write_text("not HDF5 at all\n")
    before = _snapshot(home)
    _one_line_refusal(run_cli("cache", "rm", home / "weights.h5"), str(home / "weights.h5"))
    _one_line_refusal(run_cli("cache", "rm", home / "notes.h5"), str(home / "notes.h5"), "not an HDF5 file")
    assert _snapshot(home) == before


def test_one_foreign_file_among_several_refuses_them_all_before_removing_any(folder):
    """Attack: a real cache file and a foreign one in one command; nothing is removed half-way."""
    real = _cache_file(folder / CACHE_NAME)
    _keras_model(folder / "model.h5")
    before = _snapshot(folder)
    _one_line_refusal(run_cli("cache", "rm", real, folder / "model.h5"), "model.h5")
    assert _snapshot(folder) == before


def test_a_folder_named_like_a_cache_file_is_refused_by_rm(folder):
    """Attack: a directory called x.h5 (with a file of the user's inside) given to `cache rm`."""
    (folder / "x.h5").mkdir()
    (folder / "x.h5" / "mine.txt").write_text("keep me\n")
    before = _snapshot(folder)
    _one_line_refusal(run_cli("cache", "rm", folder / "x.h5"), "x.h5", "not a regular file")
    assert _snapshot(folder) == before


def test_rm_all_removes_the_cache_files_only_and_says_what_it_left_and_why(folder):
    """Attack: a Keras model, a text file named .h5 and a folder named x.h5 beside a real cache file;
    `rm --all` used to delete the first two and traceback half-way on the folder."""
    real = _cache_file(folder / CACHE_NAME)
    _keras_model(folder / "model.h5")
    (folder / "notes.h5").write_text("not HDF5 at all\n")
    (folder / "x.h5").mkdir()
    (folder / "x.h5" / "mine.txt").write_text("keep me\n")
    before = _snapshot(folder)
    out = run_cli("cache", "rm", "--all", "--cache-dir", folder)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout.splitlines() == [f"removed {real}"]
    (note,) = out.stderr.strip().splitlines()
    assert note.startswith("note: left 3 file(s)") and "not cache files" in note
    assert "model.h5 (an HDF5 file without the cache's root attributes)" in note
    assert "notes.h5 (not an HDF5 file)" in note and "x.h5 (not a regular file)" in note
    assert _snapshot(folder) == {k: v for k, v in before.items() if k != CACHE_NAME}


def test_cache_ls_marks_a_foreign_file_and_writes_nothing_beside_it(folder):
    """Attack: a foreign .h5 in the cache folder read by `cache ls` (it used to pass as a partial cache
    file and got a lock file created beside it)."""
    _keras_model(folder / "model.h5")
    before = _snapshot(folder)
    ls = run_cli("cache", "ls", "--cache-dir", folder)
    assert ls.returncode == 0 and f"FOREIGN   {folder / 'model.h5'}" in ls.stdout, ls.stdout
    rows = json.loads(run_cli("cache", "ls", "--json", "--cache-dir", folder).stdout)["files"]
    assert [r["status"] for r in rows] == ["foreign"]
    assert _snapshot(folder) == before
