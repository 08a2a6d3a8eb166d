import hashlib
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT, make_npz
from transferlab.features import UserInputError, engine, extract
from transferlab.features import cache as fcache
from transferlab.features import extraction as extract_mod
from transferlab.features.cache import read_status, verify
from transferlab.features.memo import MEMO_DIR

LAYERS = ["bn1", "blocks.1", "blocks.4", "bn2"]


def _hook_features(model, images: np.ndarray, size: int, layers, pool) -> dict:
    """Independent computation: plain forward hooks on the timm model, preprocessing done here."""
    x = torch.from_numpy(images)
    x = (x[..., None].repeat(1, 1, 1, 3) if x.ndim == 3 else x).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    x = (x - 0.5) / 0.5
    got = {}
    mods = dict(model.named_modules())
    hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o)) for n in layers]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    if pool == "gap":
        return {n: got[n].mean((2, 3)).numpy() for n in layers}
    return {n: F.adaptive_avg_pool2d(got[n], 2).flatten(1).numpy() for n in layers}


def _read(path, split, layer):
    with h5py.File(path, "r") as f:
        return f[f"{split}/features/{layer}"][()]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("pool", ["gap", "grid:2"])
def test_cached_features_equal_a_forward_hook(tmp_path, tiny_npz, lite0, pool):
    path = extract(f"npz:{tiny_npz}", lite0, layers=",".join(LAYERS), pool=pool, image_size=32, dtype="float32",
                   cache_dir=tmp_path / "c", batch_size=16, progress=False)
    data = np.load(tiny_npz)
    for split in ("train", "test"):
        ref = _hook_features(lite0.model, data[f"x_{split}"], 32, LAYERS, pool)
        for layer in LAYERS:
            got = _read(path, split, layer)
            rel = np.abs(got - ref[layer]).max() / np.abs(ref[layer]).max()
            assert rel < 1e-3, (split, layer, rel)
    with h5py.File(path, "r") as f:
        assert list(f["test/labels"][()]) == list(data["y_test"])
        assert f["train/features/blocks.4"].attrs["depth"] == 5
        assert f["train/features/bn2"].fletcher32 and f.attrs["pooling"] == pool


def test_second_run_is_a_cache_hit_that_touches_nothing(tmp_path, tiny_npz, lite0, monkeypatch):
    kw = dict(layers="bn1,blocks.2", image_size=32, cache_dir=tmp_path, progress=False)
    path = extract(f"npz:{tiny_npz}", lite0, **kw)
    before = (_digest(path), path.stat().st_mtime_ns)
    monkeypatch.setattr(engine.FeatureTap, "__call__", lambda *a: pytest.fail("backbone ran on a cache hit"))
    assert extract(f"npz:{tiny_npz}", lite0, **kw) == path
    assert (_digest(path), path.stat().st_mtime_ns) == before


def test_more_layers_later_compute_only_the_missing_ones(tmp_path, tiny_npz, lite0, monkeypatch):
    kw = dict(image_size=32, cache_dir=tmp_path, progress=False, batch_size=16)
    path = extract(f"npz:{tiny_npz}", lite0, layers="bn1", **kw)
    first = _read(path, "train", "bn1")
    asked = []
    real_init = engine.FeatureTap.__init__
    monkeypatch.setattr(engine.FeatureTap, "__init__",
                        lambda self, m, layers, *a, **k: (asked.append(list(layers)),
                                                          real_init(self, m, layers, *a, **k))[1])
    assert extract(f"npz:{tiny_npz}", lite0, layers="bn1,blocks.3", **kw) == path
    assert asked == [["blocks.3"], ["blocks.3"]]  # one pass per split, only the new layer
    assert np.array_equal(_read(path, "train", "bn1"), first)
    assert read_status(path)["splits"]["test"]["complete"]


def test_changed_inputs_give_a_different_key(tmp_path, tiny_npz, lite0):
    base = dict(layers="bn1", image_size=32, cache_dir=tmp_path, progress=False)
    paths = {extract(f"npz:{tiny_npz}", lite0, **base)}
    paths.add(extract(f"npz:{tiny_npz}", lite0, **{**base, "pool": "gmp"}))
    paths.add(extract(f"npz:{tiny_npz}", lite0, **{**base, "image_size": 24}))
    paths.add(extract(f"npz:{tiny_npz}", lite0, **{**base, "dtype": "float32"}))
    paths.add(extract(f"npz:{tiny_npz}", "lite0", weights="random", **base))
    other = make_npz(tmp_path / "other.npz", seed=5)
    paths.add(extract(f"npz:{other}", lite0, **base))
    assert len(paths) == 6


class Boom(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_values_as_a_clean_run(tmp_path, lite0, monkeypatch):
    monkeypatch.setattr(fcache, "COMMIT_SECONDS", 0)  # a commit (and an on_batch call) per batch
    npz = make_npz(tmp_path / "d.npz", n_train=70, n_test=20)
    kw = dict(layers="bn1,blocks.2,bn2", image_size=32, batch_size=16, progress=False, dtype="float16")
    clean = extract(f"npz:{npz}", lite0, cache_dir=tmp_path / "clean", **kw)

    def stop_after_two(split, n_done):
        if split == "train" and n_done == 32:
            raise Boom

    with pytest.raises(Boom):
        extract(f"npz:{npz}", lite0, cache_dir=tmp_path / "resumed", on_batch=stop_after_two, **kw)
    partial = next((tmp_path / "resumed").glob("*.h5"))
    st = read_status(partial)
    assert st["splits"]["train"]["n_done"] == 32 and not st["splits"]["train"]["complete"]
    seen = []
    extract(f"npz:{npz}", lite0, cache_dir=tmp_path / "resumed", on_batch=lambda s, n: seen.append((s, n)), **kw)
    assert seen[0] == ("train", 48)  # resumed from n_done, not from zero
    for split in ("train", "test"):
        for layer in ("bn1", "blocks.2", "bn2"):
            assert np.array_equal(_read(partial, split, layer), _read(clean, split, layer))
    assert verify(partial) == []


def test_kill_9_mid_extraction_resumes_to_the_same_values(tmp_path, lite0):
    npz = make_npz(tmp_path / "d.npz", n_train=400, n_test=16)
    kw = dict(layers="bn1,blocks.3", image_size=32, batch_size=8, progress=False)
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from transferlab.features import extract
        import transferlab.features.cache as fc
        fc.COMMIT_SECONDS = 0  # a commit per batch: the kill lands between commits
        def on_batch(split, n):
            if n == 24:
                print("ready", flush=True)
            if n >= 24:
                time.sleep(0.02)
        extract("npz:{npz}", "lite0", cache_dir={str(tmp_path / "killed")!r}, on_batch=on_batch, **{kw!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()  # SIGKILL while batches are being written
    proc.wait()
    path = next((tmp_path / "killed").glob("*.h5"))
    st = read_status(path)
    assert st is None or not st["splits"]["train"]["complete"]
    extract(f"npz:{npz}", lite0, cache_dir=tmp_path / "killed", **kw)
    clean = extract(f"npz:{npz}", lite0, cache_dir=tmp_path / "clean", **kw)
    path = next((tmp_path / "killed").glob("*.h5"))
    for layer in ("bn1", "blocks.3"):
        assert np.array_equal(_read(path, "train", layer), _read(clean, "train", layer))
    assert verify(path) == []


def test_verify_catches_a_truncated_file(tmp_path, tiny_npz, lite0):
    path = extract(f"npz:{tiny_npz}", lite0, layers="bn1,bn2", image_size=32, cache_dir=tmp_path, progress=False)
    assert verify(path) == []
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert verify(path)
    out = subprocess.run([sys.executable, "-m", "transferlab", "cache", "verify", str(path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "DAMAGED" in out.stdout


def test_flipped_bytes_in_a_feature_chunk_are_detected(tmp_path, tiny_npz, lite0):
    path = extract(f"npz:{tiny_npz}", lite0, layers="bn2", image_size=32, dtype="float32", cache_dir=tmp_path,
                   progress=False)
    with h5py.File(path, "r") as f:
        offset = f["train/features/bn2"].id.get_chunk_info(0).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert any("damaged" in p for p in verify(path))


def test_a_plan_that_does_not_fit_the_disk_is_refused_with_the_numbers(tmp_path, tiny_npz, lite0, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10_000, 9_000, 1_000))
    with pytest.raises(UserInputError, match=r"needs 0\.\d MB but .* has 0\.0 MB free"):
        extract(f"npz:{tiny_npz}", lite0, layers="bn2", image_size=32, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.glob("*.h5")) == []


def _count_builds(monkeypatch):
    builds = []
    real = extract_mod.build_backbone
    monkeypatch.setattr(extract_mod, "build_backbone", lambda *a, **k: (builds.append(a), real(*a, **k))[1])
    return builds


def test_warm_call_builds_no_backbone_and_runs_no_forward(tmp_path, tiny_npz, monkeypatch):
    args = dict(image_size=32, cache_dir=tmp_path / "c", batch_size=16, progress=False)
    builds = _count_builds(monkeypatch)
    forwards = []
    real_probe = extract_mod.catalog
    monkeypatch.setattr(extract_mod, "catalog", lambda *a, **k: (forwards.append(1), real_probe(*a, **k))[1])
    first = extract(f"npz:{tiny_npz}", "lite0", layers="all", **args)
    second_all = extract(f"npz:{tiny_npz}", "lite0", layers="all", **args)
    subset = extract(f"npz:{tiny_npz}", "lite0", layers="blocks.1,bn2", **args)
    assert first == second_all == subset
    assert len(builds) == 1 and len(forwards) == 1
    # a layer the cache does not hold yet: the memo cannot answer, the backbone is built
    extract(f"npz:{tiny_npz}", "lite0", layers="blocks.2.0", **args)
    assert len(builds) == 2


def test_memo_is_ignored_when_stale_or_damaged(tmp_path, tiny_npz, lite0, monkeypatch):
    weights = tmp_path / "w.pt"
    torch.save(lite0.model.state_dict(), weights)
    args = dict(layers="bn1,bn2", weights=str(weights), image_size=32, cache_dir=tmp_path / "c", batch_size=16,
                progress=False)
    builds = _count_builds(monkeypatch)
    path = extract(f"npz:{tiny_npz}", "lite0", **args)
    assert extract(f"npz:{tiny_npz}", "lite0", **args) == path and len(builds) == 1
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # weights touched
    assert extract(f"npz:{tiny_npz}", "lite0", **args) == path and len(builds) == 2
    memos = sorted((tmp_path / "c" / MEMO_DIR).glob("*.json"))
    assert len(memos) == 2  # one per weights identity; the old one is never read again
    newest = max(memos, key=lambda p: p.stat().st_mtime_ns)
    newest.write_text(newest.read_text().replace('"dtype": "float16"', '"dtype": "float32"'))  # edited
    assert extract(f"npz:{tiny_npz}", "lite0", **args) == path and len(builds) == 3
    newest.write_text("{not json")
    assert extract(f"npz:{tiny_npz}", "lite0", **args) == path and len(builds) == 4
    path.unlink()  # the memo points to a cache file that is gone: rebuilt, not trusted
    assert extract(f"npz:{tiny_npz}", "lite0", **args) == path and len(builds) == 5 and path.is_file()


def test_rows_are_committed_about_once_a_second_and_on_the_way_out_of_an_interrupted_run(tmp_path, lite0,
                                                                                          monkeypatch):
    """The writer queues batches and commits when COMMIT_SECONDS have passed (a fake clock here: 0.4 s a
    batch, so every third batch); Ctrl-C commits the queue, so the rows computed before it are kept."""
    npz = make_npz(tmp_path / "d.npz", n_train=120, n_test=8)
    kw = dict(layers="bn1,bn2", image_size=32, batch_size=8, progress=False)
    clean = extract(f"npz:{npz}", lite0, cache_dir=tmp_path / "clean", **kw)
    clock = [0.0]
    monkeypatch.setattr(fcache.time, "monotonic", lambda: clock[0])
    real_write = fcache.CacheWriter.write

    def write_a_batch_in_0_4_s(self, split, start, rows):
        clock[0] += 0.4
        return real_write(self, split, start, rows)

    monkeypatch.setattr(fcache.CacheWriter, "write", write_a_batch_in_0_4_s)
    seen = []
    extract(f"npz:{npz}", lite0, cache_dir=tmp_path / "paced", on_batch=lambda s, n: seen.append((s, n)), **kw)
    assert [n for s, n in seen if s == "train"] == [24, 48, 72, 96, 120]  # every third batch, then the rest
    assert [n for s, n in seen if s == "test"] == [8]

    real_batches = engine.batches

    def interrupted_after_five(*args, **kwargs):
        for i, x in enumerate(real_batches(*args, **kwargs)):
            if i == 5:
                raise KeyboardInterrupt
            yield x

    monkeypatch.setattr(engine, "batches", interrupted_after_five)
    with pytest.raises(KeyboardInterrupt):
        extract(f"npz:{npz}", lite0, cache_dir=tmp_path / "stopped", **kw)
    path = next((tmp_path / "stopped").glob("*.h5"))
    st = read_status(path)["splits"]["train"]
    assert st["n_done"] == 40 and not st["complete"]  # five batches: three committed when due, two on the way out
    assert verify(path) == [] and not list((tmp_path / "stopped").glob("*.writing"))
    monkeypatch.setattr(engine, "batches", real_batches)
    extract(f"npz:{npz}", lite0, cache_dir=tmp_path / "stopped", **kw)
    for split in ("train", "test"):
        for layer in ("bn1", "bn2"):
            assert np.array_equal(_read(path, split, layer), _read(clean, split, layer))


def test_the_queue_is_committed_once_it_holds_commit_bytes(tmp_path, lite0, monkeypatch):
    monkeypatch.setattr(fcache, "COMMIT_SECONDS", 3600.0)
    monkeypatch.setattr(fcache, "COMMIT_BYTES", 3 * 8 * 1280 * 2)  # three batches of bn2 in float16
    npz = make_npz(tmp_path / "d.npz", n_train=64, n_test=8)
    seen = []
    extract(f"npz:{npz}", lite0, cache_dir=tmp_path, layers="bn2", image_size=32, batch_size=8, progress=False,
            on_batch=lambda s, n: seen.append((s, n)))
    assert seen == [("train", 24), ("train", 48), ("train", 64), ("test", 8)]
