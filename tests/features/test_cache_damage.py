"""Corruption harness and the cache's reader/writer rules: damage is seen by ``cache verify``, refused or
rebuilt by ``extract``, ``train`` and ``sweep`` (never a traceback); completeness is per layer; readers
and writers of one file wait for each other instead of failing or calling good work unreadable."""
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from tests.conftest import ROOT, make_npz, run_cli
from transferlab.classifiers import train_head
from transferlab.features import extract
from transferlab.features.cache import load_split, read_status, verify
from transferlab.util import UserInputError

KW = dict(layers="bn1,bn2", image_size=32, dtype="float32", progress=False)


class Boom(Exception):
    pass


@pytest.fixture
def built(tmp_path, lite0):
    npz = make_npz(tmp_path / "d.npz", n_train=30, n_test=12)
    path = extract(f"npz:{npz}", lite0, cache_dir=tmp_path / "c", **KW)
    clean = {(s, l): load_split(path, s, l)[0] for s in ("train", "test") for l in ("bn1", "bn2")}
    return npz, path, clean


def _flip_chunk_byte(path, dataset="train/features/bn2"):
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 40] ^= 0xFF
    path.write_bytes(bytes(raw))


def _damage(path, kind):
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "flipped byte in a chunk":
        _flip_chunk_byte(path)
    elif kind == "missing layer":
        with h5py.File(path, "a") as f:
            del f["test/features/bn2"]
    elif kind == "counts disagree":
        with h5py.File(path, "a") as f:
            f["train/features/bn2"].attrs["n_done"] = 7  # still marked complete


def _one_line_error(out, *needles):
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), out.stderr


@pytest.mark.parametrize("kind", ["truncated", "flipped byte in a chunk", "missing layer", "counts disagree"])
def test_damage_is_seen_by_verify_and_extract_train_refuse_or_rebuild(built, kind, tmp_path):
    npz, path, clean = built
    _damage(path, kind)
    assert verify(path), kind
    out = run_cli("cache", "verify", path)
    assert out.returncode == 1 and "DAMAGED" in out.stdout and "Traceback" not in out.stderr

    train = run_cli("train", "--features", path, "--layer", "bn2", "--head", "logreg")
    if kind == "truncated":
        _one_line_error(train, str(path))
    elif kind == "flipped byte in a chunk":
        _one_line_error(train, str(path), "'bn2'", "'train'", "cache verify", "cache rm")
    else:  # missing layer / counts: the layer is not finished work
        _one_line_error(train, "bn2", "transferlab extract")

    ext = run_cli("extract", "--data", f"npz:{npz}", "--layers", "bn1,bn2", "--image-size", "32", "--dtype",
                  "float32", "--cache-dir", path.parent, "--quiet")
    assert "Traceback" not in ext.stderr and ext.returncode == 0, ext.stderr
    if kind != "flipped byte in a chunk":  # a cache hit does not read rows; the other kinds are rebuilt
        assert verify(path) == []
        for (s, l), X in clean.items():
            np.testing.assert_allclose(load_split(path, s, l)[0], X, rtol=1e-5, atol=1e-5)
    if kind == "truncated":
        assert list(path.parent.glob(path.name + ".damaged-*")), "the damaged file is kept aside, not deleted"


@pytest.mark.parametrize("kind", ["truncated", "flipped byte in a chunk"])
def test_cache_rm_removes_a_damaged_cache_file_as_verify_advises(built, kind):
    """`cache rm` refuses files that lack the cache's attributes; a cache file damaged so far that they
    cannot be read is still its own (named as extract names its files), so verify's advice holds."""
    _, path, _ = built
    _damage(path, kind)
    advice = f"`transferlab cache rm {path}`"
    assert any(advice in m for m in verify(path))
    rm = run_cli("cache", "rm", path)
    assert rm.returncode == 0 and rm.stdout.strip() == f"removed {path}", (rm.stdout, rm.stderr)
    assert list(path.parent.iterdir()) == []  # its lock and marker gone too


def test_a_flipped_byte_stops_the_sweep_with_one_line_naming_file_and_layer(built, tmp_path):
    npz, path, _ = built
    _flip_chunk_byte(path)
    assert read_status(path)["splits"]["train"]["complete"]  # attributes still say complete
    out = run_cli("sweep", "--data", f"npz:{npz}", "--layers", "bn1,bn2", "--image-size", "32", "--dtype", "float32",
                  "--heads", "logreg", "--cache-dir", path.parent, "--out", tmp_path / "sweep", "--n-jobs", "1",
                  "--quiet")
    _one_line_error(out, str(path), "'bn2'", "damaged")
    rows = (tmp_path / "sweep" / "results.csv").read_text().splitlines()
    assert all(",bn2," not in r for r in rows) and len(rows) <= 2  # header and at most the bn1 row
    assert not (tmp_path / "sweep" / "results.json").exists()


def test_an_interrupted_layer_add_leaves_the_finished_layers_trainable(built, lite0, monkeypatch):
    from transferlab.features import cache as fcache

    monkeypatch.setattr(fcache, "COMMIT_SECONDS", 0)  # a commit per batch
    npz, path, _ = built

    def stop(split, n_done):
        raise Boom

    with pytest.raises(Boom):  # adding blocks.4 dies after its first batch
        extract(f"npz:{npz}", lite0, cache_dir=path.parent, on_batch=stop, batch_size=8,
                **{**KW, "layers": "bn1,blocks.4,bn2"})
    st = read_status(path)["splits"]["train"]
    assert st["layers"]["blocks.4"]["n_done"] == 8 and not st["layers"]["blocks.4"]["complete"]
    row = train_head(path, "bn2", "logreg")  # a finished layer of the same split
    assert 0 <= row["test_accuracy"] <= 1 and row["dim"] == 1280
    with pytest.raises(UserInputError, match=r"'blocks.4' of split 'train' .* incomplete \(8/30 rows"):
        train_head(path, "blocks.4", "logreg")
    extract(f"npz:{npz}", lite0, cache_dir=path.parent, batch_size=8, **{**KW, "layers": "bn1,blocks.4,bn2"})
    assert verify(path) == [] and train_head(path, "blocks.4", "logreg")["dim"] == 112


def _hold(script, path):
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import h5py
        from pathlib import Path
        from transferlab.features import cache
        path = Path({str(path)!r})
    """) + textwrap.dedent(script)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_reader_waits_for_a_writer_and_says_being_written(built, monkeypatch):
    _, path, clean = built
    writer = _hold("""
        with cache.locked(path):
            print("held", flush=True)
            time.sleep(30)
    """, path)
    try:
        monkeypatch.setenv("TRANSFERLAB_LOCK_WAIT", "0.3")
        out = run_cli("train", "--features", path, "--layer", "bn2", "--head", "logreg")
        _one_line_error(out, str(path), "being written by another process")
        assert "rebuild" not in out.stderr
        assert "being written" in run_cli("cache", "ls", "--cache-dir", path.parent).stdout
    finally:
        writer.kill()
        writer.wait()
    monkeypatch.delenv("TRANSFERLAB_LOCK_WAIT")
    np.testing.assert_array_equal(load_split(path, "train", "bn2")[0], clean["train", "bn2"])  # lock died with it


def test_hdf5s_own_lock_is_reported_as_being_written_never_as_damage(built):
    _, path, _ = built
    foreign = _hold("""
        f = h5py.File(path, "a")   # a writer that does not use TransferLab's lock
        print("held", flush=True)
        time.sleep(30)
    """, path)
    try:
        with pytest.raises(UserInputError, match="being written by another process"):
            load_split(path, "train", "bn1")
        with pytest.raises(UserInputError, match="being written by another process"):
            read_status(path)
    finally:
        foreign.kill()
        foreign.wait()
    assert not list(path.parent.glob("*.damaged-*"))


def test_a_writer_adding_a_layer_waits_for_a_reader_instead_of_failing(built, lite0, tmp_path):
    """Ordered by events, not time: the reader holds its lock before the writer starts (``_hold`` reads
    its "held"), and keeps holding until the writer has said it waits (the writer's log creates ``go``)."""
    npz, path, _ = built
    go = tmp_path / "writer-is-waiting"
    reader = _hold(f"""
        with cache.reading(path):
            f = h5py.File(path, "r")
            print("held", flush=True)
            give_up = time.monotonic() + 600  # a writer that never waits fails the test instead of hanging it
            while not Path({str(go)!r}).exists() and time.monotonic() < give_up:
                time.sleep(0.05)
            f.close()
    """, path)
    messages, reader_held = [], []

    def log(message):
        messages.append(message)
        if "waiting for another process" in message:
            reader_held.append(reader.poll() is None)
            go.write_text("")  # now the reader lets go, and the writer goes on

    try:
        extract(f"npz:{npz}", lite0, cache_dir=path.parent, log=log, **{**KW, "layers": "bn1,blocks.2"})
    finally:
        reader.kill()
        reader.wait()
    assert reader_held == [True], messages  # the writer said it waits, once, while the reader held the file
    assert verify(path) == [] and read_status(path)["splits"]["test"]["layers"]["blocks.2"]["complete"]
