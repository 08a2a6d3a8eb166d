"""Security catalogue: hostile or mistyped ``--config`` files. Each value of the wrong type is refused the
way the command line refuses it: one ``error:`` line naming the file, the key and the value, exit 2, no
traceback, and nothing written (the run never starts: no ``--out``, no ``runs/``, no cache)."""
import pytest

from transferlab.pipeline.cli import build_parser, main
from transferlab.pipeline.config import apply_config

# (subcommand, file name, text, key): each value is of a type its flag does not take
CASES = [
    ("sweep", "run.toml", 'repeats = "x"', "repeats"),
    ("sweep", "run.toml", 'seed = "abc"', "seed"),
    ("sweep", "run.toml", 'batch_size = "big"', "batch_size"),
    ("sweep", "run.toml", 'val_fraction = "high"', "val_fraction"),
    ("sweep", "run.toml", 'n_jobs = "many"', "n_jobs"),
    ("sweep", "run.toml", "test_fraction = true", "test_fraction"),
    ("sweep", "run.toml", 'full_grid = "false"', "full_grid"),  # a string: was read as true
    ("sweep", "run.toml", "full_grid = 1", "full_grid"),
    ("sweep", "run.toml", "repeats = 2.5", "repeats"),
    ("sweep", "run.toml", "repeats = [1, 2]", "repeats"),
    ("sweep", "run.toml", 'fingerprint = "md5"', "fingerprint"),
    ("sweep", "run.toml", "[heads]\nlogreg = 1", "heads"),
    ("sweep", "run.yaml", "seed: abc", "seed"),
    ("sweep", "run.yaml", 'full_grid: "false"', "full_grid"),
    ("finetune", "ft.toml", 'epochs = "x"', "epochs"),
    ("finetune", "ft.toml", 'seed = "abc"', "seed"),
    ("finetune", "ft.toml", 'batch_size = "big"', "batch_size"),
    ("finetune", "ft.toml", 'resume = "no"', "resume"),
    ("finetune", "ft.toml", 'augment = "false"', "augment"),
    ("finetune", "ft.toml", 'optimizer = "adam"', "optimizer"),
    ("finetune", "ft.yaml", "lr: fast", "lr"),
]


@pytest.mark.parametrize("command,name,text,key", CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES])
def test_a_config_value_of_the_wrong_type_is_one_line_exit_2_and_nothing_written(
        command, name, text, key, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default --out (runs/...) would land here
    cfg = tmp_path / name
    cfg.write_text(text + "\n")
    out = tmp_path / "out"
    code = main([command, "--config", str(cfg), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: config file {cfg}: {key} = "), err
    assert "Traceback" not in err and "expected" in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_values_the_command_line_would_take_are_read_as_it_reads_them(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('repeats = 2\nseed = "3"\nfull_grid = false\nbackbone = ["lite0", "timm:resnet18"]\n'
                   'image_size = 64\nfingerprint = "content"\nn_jobs = 1\n')
    args = apply_config(build_parser().parse_args(["sweep", "--seed", "7"]), cfg)
    assert (args.repeats, args.seed, args.full_grid, args.backbone, args.image_size, args.fingerprint,
            args.n_jobs) == (2, 7, False, "lite0,timm:resnet18", "64", "content", 1)  # --seed 7 wins


def test_every_key_a_config_file_may_hold_has_a_flag_to_check_it_against():
    from transferlab.pipeline.cli_args import config_flags
    from transferlab.pipeline.config import config_fields

    for command in ("sweep", "finetune"):
        assert config_fields(command) <= set(config_flags(command)), command
