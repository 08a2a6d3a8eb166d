"""bench/multilayer.py's own arithmetic: case names, the paired difference and its error, the record's merge."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.multilayer import mean_row, paired, parse_case, record_name, save  # noqa: E402


def test_cases_name_data_size_and_shots():
    assert parse_case("digits") == ("digits", 64, None)
    assert parse_case("cifar10_small@128") == ("cifar10_small", 128, None)
    assert parse_case("mnist_small/10") == ("mnist_small", 64, 10)
    assert [record_name(c) for c in ("mnist_100", "digits@128", "cifar10_small/50")] == [
        "mnist_100", "digits_128px", "cifar10_small_50shot"]
    with pytest.raises(SystemExit, match="NAME\\[@PX\\]"):
        parse_case("digits@big")


def test_paired_difference_and_its_error_by_hand():
    a = np.array([1, 1, 0, 0, 1], np.int8)  # single layer right
    b = np.array([1, 0, 1, 1, 1], np.int8)  # multi right: d = 0, -1, 1, 1, 0
    diff, se = paired(a, b)
    assert diff == pytest.approx(100 * 1 / 5)
    # sample variance of d: ((0-.2)^2 * 2 + (-1.2)^2 + (.8)^2 * 2) / 4 = 0.7
    assert se == pytest.approx(100 * np.sqrt(0.7 / 5))
    seeds = [{"multi": {"diff_points": 1.0, "paired_se_points": 0.6}},
             {"multi": {"diff_points": 3.0, "paired_se_points": 0.8}}]
    m, se, spread = mean_row(seeds, "multi")
    assert (m, spread) == (2.0, 1.0) and se == pytest.approx(np.sqrt((0.36 + 0.64) / 2 / 2))


def test_a_case_measured_again_replaces_its_entry_and_keeps_the_others(tmp_path, monkeypatch):
    out = tmp_path / "rec.json"
    save({"machine": 1, "results": [{"case": "a", "v": 1}, {"case": "b", "v": 1}]}, out)
    save({"machine": 2, "results": [{"case": "b", "v": 2}]}, out)
    rec = json.loads(out.read_text())
    assert rec["machine"] == 2 and rec["results"] == [{"case": "a", "v": 1}, {"case": "b", "v": 2}]
    # a kill before the rename keeps the previous record whole, and no half-written file behind
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save({"machine": 3, "results": [{"case": "a", "v": 3}]}, out)
    assert json.loads(out.read_text()) == rec and [p.name for p in tmp_path.iterdir()] == ["rec.json"]
