"""One command line: every subcommand's --help has an example and its defaults, one name per flag."""
import argparse
import re

import pytest

from tests.conftest import make_npz, run_cli
from transferlab import __version__
from transferlab.pipeline.cli import build_parser

OLD_NAMES = {"--n-jobs", "--num-workers"}  # hidden aliases of --workers


def _subparsers():
    ap = build_parser()
    (sub,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def _shown_default(parser, action):
    """The X of ``(default: X)`` in the flag's help as the page prints it, or None."""
    text = parser._get_formatter()._expand_help(action)
    m = re.search(r"\(default: ([^)]*)\)$", text)
    return m.group(1) if m else None


def _api_sources():
    """Where each subcommand's defaults live: the config dataclass or the function it calls."""
    from transferlab.classifiers.train import train_head
    from transferlab.features.data import load_dataset
    from transferlab.features.extraction import extract
    from transferlab.features.layers import catalog
    from transferlab.features.spec import ExtractionSpec
    from transferlab.finetuning.config import FinetuneConfig
    from transferlab.pipeline.advise import advise
    from transferlab.pipeline.predict import predict
    from transferlab.pipeline.sweep import SweepConfig

    return {"layers": [ExtractionSpec(), catalog], "extract": [extract, ExtractionSpec(), load_dataset],
            "train": [train_head], "predict": [predict], "advise": [advise],
            "sweep": [SweepConfig(), load_dataset], "finetune": [FinetuneConfig(), load_dataset], "cache": []}


# a flag's destination -> the API's name for it
API_NAMES = {"pool": ["pooling", "pool"], "workers": ["num_workers", "n_jobs"], "random": ["compare_random"]}
# defaults with no API counterpart: train_head takes the head as given; the cache folder is described in words
CLI_ONLY = {("train", "head"), ("cache", "cache_dir")}


def _api_default(sources, dest, meaning=True):
    """The default an instance of the config dataclass holds, or the keyword's; with ``meaning`` a None
    that stands for a value (the default image size, test fraction) is that value."""
    import dataclasses
    import inspect

    from transferlab.features.folders import DEFAULT_TEST_FRACTION
    from transferlab.features.spec import DEFAULT_IMAGE_SIZE

    means = {"image_size": DEFAULT_IMAGE_SIZE, "test_fraction": DEFAULT_TEST_FRACTION}  # what None stands for
    for src in sources:
        for name in API_NAMES.get(dest, [dest]):
            if dataclasses.is_dataclass(src) and name in {f.name for f in dataclasses.fields(src)}:
                value = getattr(src, name)
            elif callable(src) and name in inspect.signature(src).parameters:
                value = inspect.signature(src).parameters[name].default
                if value is inspect.Parameter.empty:
                    continue
            else:
                continue
            return means.get(dest) if value is None and meaning else value
    raise LookupError(dest)


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_default_in_the_help_is_the_apis_own(name):
    """Each ``(default: X)`` is the value of the config dataclass or function the subcommand calls, and
    every flag whose API default is a value shows it (a literal restated in the CLI drifts: this fails)."""
    p, sources = _subparsers()[name], _api_sources()[name]
    checked = 0
    for action in p._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest in ("help", "config"):
            continue
        shown = _shown_default(p, action)
        try:
            api = _api_default(sources, action.dest)
        except LookupError:
            assert shown is None or (name, action.dest) in CLI_ONLY, (name, action.dest, shown)
            continue
        checked += 1
        if api is None and shown is not None and " " in shown:  # what None means, in words ("per head")
            continue
        if api is None or isinstance(api, bool) and not isinstance(action, argparse.BooleanOptionalAction) \
                or api in ([], ()):
            assert shown is None, (name, action.dest, shown, api)
        else:
            expected = ",".join(map(str, api)) if isinstance(api, (list, tuple)) else str(api)
            assert shown == expected, (name, action.dest, shown, api)
    assert checked >= {"cache": 0, "predict": 3}.get(name, 5), name


@pytest.mark.parametrize("name", ["layers", "extract", "train", "predict", "advise"])
def test_a_flag_left_out_takes_the_apis_default(name):
    """Parsing fills in the same value the help shows (sweep and finetune leave it to their config)."""
    required = {"extract": ["--data", "digits"], "train": ["--features", "f.h5", "--layer", "bn2"],
                "predict": ["--model", "m", "x.png"], "advise": ["--data", "digits"]}
    args = build_parser().parse_args([name, *required.get(name, [])])
    sources = _api_sources()[name]
    p = _subparsers()[name]
    for action in p._actions:  # the folder data options stay unset: the command passes on only what was given
        if action.option_strings and action.dest not in ("help", "quiet", "json", "cache_dir", "out", "strict",
                                                         "test_fraction", "fingerprint"):
            try:
                api = _api_default(sources, action.dest, meaning=False)
            except LookupError:
                continue
            assert getattr(args, action.dest) == api, (name, action.dest, getattr(args, action.dest), api)


def test_sweep_and_finetune_flags_left_out_stay_unset():
    a = build_parser().parse_args(["sweep"])
    b = build_parser().parse_args(["finetune"])
    assert a.repeats is None and a.n_jobs is None and a.full_grid is None
    assert not {"epochs", "image_size", "resume", "num_workers"} & set(vars(b))


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
        shown = _shown_default(p, action)
        if shown is not None:
            assert f"(default: {shown})" in " ".join(out.stdout.split()), (name, action.option_strings)
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
    d = ap.parse_args(["sweep", "--n-jobs", "3"])
    assert a.workers == 3 and b.num_workers == c.num_workers == 2 and d.n_jobs == 3


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


def test_help_pages_import_no_torch():
    """Defaults are read from the API's source or light modules: no ``--help`` pays for importing torch."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import contextlib, io, sys\nfrom transferlab.pipeline.cli import main\n"
            f"for name in {sorted(_subparsers())!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as page, contextlib.suppress(SystemExit):\n"
            "        main([name, '--help'])\n"
            "    assert '(default: ' in page.getvalue() or name == 'cache', name\n"
            "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr + out.stdout
