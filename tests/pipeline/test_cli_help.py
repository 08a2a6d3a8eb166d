"""One command line: every subcommand's --help has an example and its defaults, one name per flag."""
import argparse

import pytest

from transferlab import __version__
from transferlab.pipeline.cli import build_parser
from tests.conftest import make_npz, run_cli

OLD_NAMES = {"--n-jobs", "--num-workers"}  # hidden aliases of --workers


def _subparsers():
    ap = build_parser()
    (sub,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"transferlab {__version__}"


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_subcommand_help_has_an_example_defaults_and_help_for_every_flag(name):
    p = _subparsers()[name]
    out = run_cli(name, "--help")
    assert out.returncode == 0 and f"example:\n  transferlab {name}" in out.stdout
    for action in p._actions:
        if not action.option_strings or action.option_strings == ["-h", "--help"]:
            continue
        if action.help == argparse.SUPPRESS:
            assert set(action.option_strings) <= OLD_NAMES, action.option_strings
            continue
        assert action.help, f"{name} {action.option_strings} has no help"
        if action.default not in (None, False, argparse.SUPPRESS) and not isinstance(action.default, bool):
            assert f"(default: {action.default})" in " ".join(out.stdout.split()), (name, action.option_strings)
    flags = {s for a in p._actions for s in a.option_strings}
    assert "--quiet" in flags
    assert not flags & {"--n-jobs", "--num-workers"} - OLD_NAMES
    if name in ("extract", "train", "sweep", "finetune"):
        assert "--workers" in flags


def test_old_worker_flag_names_still_work():
    ap = build_parser()
    a = ap.parse_args(["train", "--features", "f.h5", "--layer", "bn2", "--n-jobs", "3"])
    b = ap.parse_args(["finetune", "--num-workers", "2"])
    c = ap.parse_args(["finetune", "--workers", "2"])
    assert a.workers == 3 and b.num_workers == c.num_workers == 2


def test_cache_ls_prints_its_directory_and_info_takes_cache_dir(tmp_path, monkeypatch):
    npz = make_npz(tmp_path / "d.npz", n_train=12, n_test=6)
    monkeypatch.setenv("TRANSFERLAB_DATA", str(tmp_path / "tl"))
    out = run_cli("extract", "--data", str(npz), "--image-size", "32", "--layers", "bn1", "--quiet")  # bare path
    assert out.returncode == 0, out.stderr
    cache_file = out.stdout.strip().splitlines()[-1]
    assert cache_file.startswith(str(tmp_path / "tl" / "cache"))
    ls = run_cli("cache", "ls")
    assert ls.stdout.splitlines()[0].startswith(f"cache directory: {tmp_path / 'tl' / 'cache'}")
    info = run_cli("cache", "info", "--cache-dir", tmp_path / "tl" / "cache")
    assert info.returncode == 0 and '"complete": true' in info.stdout
    by_name = run_cli("cache", "info", cache_file.rsplit("/", 1)[-1])  # a bare name, looked up in the cache dir
    assert by_name.returncode == 0 and by_name.stdout == info.stdout
    empty = run_cli("cache", "info", "--cache-dir", tmp_path / "nothing")
    assert empty.returncode == 2 and "no cache files in" in empty.stderr
