"""Distributed extraction: sharding by rank, per-rank parts, the merge, and a real 2-process torchrun run."""
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.conftest import ROOT, make_npz, run_cli
from transferlab.features import UserInputError, build_backbone, engine, extract, load_dataset
from transferlab.features import cache as fcache
from transferlab.features import distributed as fdist
from transferlab.features.engine import ExtractionJob
from transferlab.features.layers import catalog, default_layers, resolve_names
from transferlab.features.spec import ExtractionSpec

LAYERS = "bn1,blocks.2,bn2"
B = 8


@pytest.mark.parametrize("n,world", [(50, 2), (50, 3), (48, 2), (7, 4), (0, 2), (17, 8)])
def test_shards_cover_every_row_exactly_once_in_whole_batches(n, world):
    shards = [fdist.shard_rows(n, B, r, world) for r in range(world)]
    allrows = np.concatenate(shards)
    assert np.array_equal(np.sort(allrows), np.arange(n))  # no row missing, none twice (padding dropped)
    batches = [(0 if n == 0 else (lo, min(n, lo + B))) for lo in range(0, n, B)]
    for r, rows in enumerate(shards):
        assert np.all(np.diff(rows) > 0)
        # rank r holds the single-process batches r, r+world, ... whole
        mine = [b for k, b in enumerate(batches) if k % world == r]
        assert rows.tolist() == [i for lo, hi in mine for i in range(lo, hi)]


def _reference(tmp_path, npz, threads=1):
    """A single-process run; ranks under torchrun run one intra-op thread each, so the reference does too."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return extract(f"npz:{npz}", "lite0", layers=LAYERS, image_size=32, batch_size=B,
                       cache_dir=tmp_path / "single", progress=False, log=lambda m: None)
    finally:
        torch.set_num_threads(old)


def _tree(path):
    with h5py.File(path, "r") as f:
        items = {}
        f.visititems(lambda name, obj: items.__setitem__(name, (
            obj[()] if isinstance(obj, h5py.Dataset) else None,
            {k: str(v) for k, v in obj.attrs.items()},
            getattr(obj, "chunks", None), getattr(obj, "fletcher32", None))))
        root = {k: str(v) for k, v in f.attrs.items() if k != "versions"}
    return root, items


def assert_same_cache(a, b):
    root_a, items_a = _tree(a)
    root_b, items_b = _tree(b)
    assert root_a == root_b
    assert items_a.keys() == items_b.keys()
    for name, (data, attrs, chunks, fletcher) in items_a.items():
        other = items_b[name]
        assert attrs == other[1], name
        assert (chunks, fletcher) == other[2:], name
        if data is not None:
            assert data.dtype == other[0].dtype and np.array_equal(data, other[0]), name  # bit for bit


def _resolved(npz, cache_dir):
    """The job extract() resolves before it hands over to the distributed path."""
    spec = ExtractionSpec("lite0", image_size=32)
    dataset = load_dataset(f"npz:{npz}")
    bb = build_backbone("lite0")
    spec = spec.resolve(bb)
    requested = resolve_names(bb.model, LAYERS)
    axis = default_layers(bb.model)
    infos = catalog(bb.model, list(dict.fromkeys(axis + requested)), spec.pool, spec.image_size, spec.dtype)
    wanted = [i for i in infos if i.name in set(requested)]
    path, key = fcache.cache_path(cache_dir, spec, dataset)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    todo = {s: [i.name for i in wanted] for s in dataset.splits}
    job = ExtractionJob(path, key, spec, dataset, bb, wanted, [i.name for i in infos if i.name in set(axis)], B,
                        torch.device("cpu"), workers=0, progress=False, log=lambda m: None)
    return job, todo


def test_parts_written_rank_by_rank_merge_into_the_single_process_file(tmp_path):
    npz = make_npz(tmp_path / "tiny.npz", n_train=50, n_test=21)
    ref = _reference(tmp_path, npz)
    job, todo = _resolved(npz, tmp_path / "dist")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for rank in range(3):  # three ranks, run one after another in this process
            fdist.extract_part(job, todo, rank, 3)
    finally:
        torch.set_num_threads(old)
    parts = sorted(p.name for p in (tmp_path / "dist").glob("*.part"))
    assert parts == [fdist.part_path(job.path, k, 3).name for k in range(3)]
    with h5py.File(fdist.part_path(job.path, 1, 3), "r") as f:  # each part carries its rows' positions
        assert f["train/ids"][()].tolist() == fdist.shard_rows(50, B, 1, 3).tolist()
    fdist.merge_parts(job, todo, 3, block_bytes=1000)  # small blocks: many block boundaries
    assert_same_cache(ref, job.path)
    assert not list((tmp_path / "dist").glob("*.part"))
    assert fcache.verify(job.path) == []


def test_merge_refuses_missing_or_foreign_parts_and_leaves_no_finished_file(tmp_path):
    npz = make_npz(tmp_path / "tiny.npz", n_train=20, n_test=9)
    job, todo = _resolved(npz, tmp_path / "dist")
    fdist.extract_part(job, todo, 0, 2)
    with pytest.raises(UserInputError, match=r"part file .*rank1of2.part is missing"):
        fdist.merge_parts(job, todo, 2)
    # a part of another batch size holds other rows: refused, never merged
    fdist.extract_part(replace(job, batch_size=4), todo, 1, 2)
    with pytest.raises(UserInputError, match="rank1of2.part belongs to another run"):
        fdist.merge_parts(job, todo, 2)
    assert not fcache.is_complete(fcache.read_status(job.path), ["train", "test"], LAYERS.split(","))


CRASH_RANK1 = """
    import os, sys
    import transferlab
    import transferlab.features.cache as fc

    fc.COMMIT_SECONDS = 0  # a commit per batch

    def on_batch(split, n_done):  # rank 1 dies hard after its first batch: a kill, not an exception
        if os.environ["RANK"] == "1":
            os._exit(7)

    transferlab.extract("npz:{npz}", "lite0", layers="{layers}", image_size=32, batch_size={b},
                        cache_dir="{cache}", progress=False, on_batch=on_batch)
"""


def _torchrun(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def test_torchrun_two_ranks_resume_per_rank_and_equal_a_single_process_run(tmp_path):
    npz = make_npz(tmp_path / "tiny.npz", n_train=50, n_test=21)
    cache = tmp_path / "dist"
    script = tmp_path / "crash_rank1.py"
    script.write_text(textwrap.dedent(CRASH_RANK1.format(npz=npz, layers=LAYERS, b=B, cache=cache)))
    crashed = _torchrun(script, cwd=tmp_path)
    assert crashed.returncode != 0, crashed.stderr[-2000:]
    part1 = next(cache.glob("*.rank1of2.part"))
    st = fcache.read_status(part1)["splits"]["train"]
    assert st["layers"]["bn2"]["n_done"] == B and not st["complete"]  # rank 1 kept its first batch
    final = part1.with_name(part1.name.split(".rank")[0])
    assert not fcache.is_complete(fcache.read_status(final), ["train", "test"], LAYERS.split(","))

    run = _torchrun("-m", "transferlab", "extract", "--data", f"npz:{npz}", "--layers", LAYERS, "--image-size", 32,
                    "--batch-size", B, "--cache-dir", cache, cwd=tmp_path)  # not --quiet: the log is checked
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"rank 1/2: resuming part at rows {{'train': {B}, 'test': 0}}" in run.stderr
    assert run.stdout.strip().splitlines() == [str(final)]  # one path, printed by rank 0
    assert "merged 2 parts" in run.stderr
    assert not list(cache.glob("*.part"))
    assert_same_cache(_reference(tmp_path, npz), final)
    res = run_cli("cache", "verify", final)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stdout


def test_rank0_plan_removes_parts_of_another_world_size_and_refuses_a_full_disk(tmp_path, monkeypatch):
    from collections import namedtuple

    npz = make_npz(tmp_path / "tiny.npz", n_train=20, n_test=9)
    job, todo = _resolved(npz, tmp_path / "dist")
    notes = []
    job = replace(job, log=notes.append)
    old_part = fdist.part_path(job.path, 2, 4)
    old_part.write_bytes(b"a part of a 4-rank run")
    assert fdist.plan_work(job, 2) == todo
    assert not old_part.exists() and any("another number of ranks" in n for n in notes)
    _, total = engine.plan(job.dataset, job.wanted, todo)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(engine.shutil, "disk_usage", lambda p: usage(1 << 40, 0, int(1.5 * total)))
    with pytest.raises(UserInputError, match=r"part files, then the merged file"):
        fdist.plan_work(job, 2)
    assert not job.path.exists()


class _Killed(Exception):
    pass


def test_a_single_process_run_completing_the_file_removes_the_parts_a_killed_torchrun_left(tmp_path, monkeypatch):
    """A killed 2-rank run leaves rank 0's part finished and rank 1's at its first batch (and, after a
    kill -9, its ``.writing`` marker); ``extract`` in one process then completes the cache file."""
    npz = make_npz(tmp_path / "tiny.npz", n_train=20, n_test=9)
    job, todo = _resolved(npz, tmp_path / "dist")
    fdist.extract_part(job, todo, 0, 2)
    monkeypatch.setattr(fcache, "COMMIT_SECONDS", 0)

    def killed(split, n_done):
        raise _Killed

    with pytest.raises(_Killed):
        fdist.extract_part(replace(job, on_batch=killed), todo, 1, 2)
    parts = [fdist.part_path(job.path, r, 2) for r in range(2)]
    Path(str(parts[1]) + ".writing").touch()
    assert fcache.read_status(parts[1])["splits"]["train"]["n_done"] == B
    kw = dict(image_size=32, batch_size=B, cache_dir=tmp_path / "dist", progress=False)
    notes = []
    # fewer layers than the parts hold: bn2 is not in the cache file yet, so the parts stay for a torchrun resume
    extract(f"npz:{npz}", job.backbone, layers="bn1,blocks.2", log=notes.append, **kw)
    assert all(p.exists() for p in parts) and not any("part file" in n for n in notes)
    extract(f"npz:{npz}", job.backbone, layers=LAYERS, log=notes.append, **kw)
    assert "note: removed 2 part file(s) a torchrun run left" in notes[-1]
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == sorted([job.path.name, job.path.name + ".lock"])
    assert fcache.is_complete(fcache.read_status(job.path), ["train", "test"], LAYERS.split(","))


def test_cache_ls_lists_part_files_as_parts_and_rm_all_removes_them(tmp_path):
    npz = make_npz(tmp_path / "tiny.npz", n_train=20, n_test=9)
    job, todo = _resolved(npz, tmp_path / "dist")
    fdist.extract_part(job, todo, 1, 2)  # what a killed 2-rank run can leave: rank 1's part, no cache file yet
    part = fdist.part_path(job.path, 1, 2)
    Path(str(part) + ".writing").touch()  # a kill -9 leaves the writer's marker too
    ls = run_cli("cache", "ls", "--cache-dir", tmp_path / "dist")
    (line,) = [l for l in ls.stdout.splitlines() if part.name in l]
    assert line.startswith("part ") and f"rank 1 of 2 of {job.path.name}" in line
    rows = json.loads(run_cli("cache", "ls", "--json", "--cache-dir", tmp_path / "dist").stdout)["files"]
    assert [(r["status"], r["part_of"], r["rank"], r["world"], r["splits"]) for r in rows] == [
        ("part", job.path.name, 1, 2, {"train": len(fdist.shard_rows(20, B, 1, 2)), "test": 1})]
    rm = run_cli("cache", "rm", "--all", "--cache-dir", tmp_path / "dist")
    assert rm.returncode == 0 and rm.stdout.splitlines() == [f"removed {part}"], (rm.stdout, rm.stderr)
    assert list((tmp_path / "dist").iterdir()) == []  # no part, marker or lock left
