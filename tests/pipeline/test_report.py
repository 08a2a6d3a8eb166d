"""The report's headline: the layer chosen on validation, with its noise, whatever the test split says."""
import numpy as np
import pytest

from transferlab.pipeline.curves import best_per_curve, curves, decision_of
from transferlab.pipeline.report import decision_section


def _row(layer, depth, val, test, head="logreg", weights="imagenet", shots="", repeat=0, n_val=500, notes=""):
    return {"backbone": "lite0", "weights": weights, "pool": "gap", "image_size": "64", "layer": layer,
            "depth": str(depth), "rel_depth": str(depth / 3), "dim": "8", "head": head, "shots": shots,
            "repeat": str(repeat), "val_accuracy": "" if val is None else str(val), "test_accuracy": str(test),
            "fit_seconds": "0.1", "n_val": str(n_val), "notes": notes, "row_key": f"{head}-{layer}-{shots}-{repeat}",
            "cache_file": "c.h5", "seed": "0"}


def _section(rows, counts):
    summary = {"rows": rows, "class_counts": counts}
    summary["decision"] = decision_of(summary)
    return decision_section(summary)


def test_a_planted_test_split_does_not_move_the_headline():
    # blocks.2 is best on validation; the test split would pick blocks.1 (0.97) instead
    rows = [_row("bn1", 0, 0.60, 0.60), _row("blocks.1", 1, 0.80, 0.97), _row("blocks.2", 2, 0.90, 0.85),
            _row("bn2", 3, 0.70, 0.70)]
    (b,) = best_per_curve(rows)
    assert b["val_choice"] == "blocks.2" and b["val_choice_test"] == 0.85
    assert b["val_choice_se"] == pytest.approx(np.sqrt(0.9 * 0.1 / 500))
    lines, decision = _section(rows, {str(c): 100 for c in range(10)})
    text = "\n".join(lines)
    assert "Recommendation: generic-features, at `blocks.2` with the logreg head" in text
    assert "0.900 ± 0.013" in text and "test accuracy 0.850" in text
    assert decision["strategy"] == "generic-features" and decision["chosen_layer"] == "blocks.2"


def test_one_shot_curves_without_validation_rows_choose_nothing_rather_than_the_stem():
    rows = [_row("bn1", 0, None, 0.3, shots="1"), _row("bn2", 3, None, 0.5, shots="1")]
    (b,) = best_per_curve(rows)
    assert b["val_choice"] is None


def test_shots_sort_as_numbers_and_repeats_report_the_sample_std():
    rows = [_row("bn2", 3, 0.5, t, shots=s, repeat=r) for s in ("1", "10", "5") for r, t in ((0, 0.4), (1, 0.6))]
    keys = list(curves(rows))
    assert [k[5] for k in keys] == ["1", "5", "10"]
    (p,) = curves(rows)[keys[0]]
    assert p["test_std"] == np.std([0.4, 0.6], ddof=1)


def test_grid_edge_choices_are_warned_about():
    rows = [_row("bn1", 0, 0.6, 0.6, notes="C=10000 at the grid edge (largest of 7): widen the grid"),
            _row("bn2", 3, 0.7, 0.7)]
    lines, _ = _section(rows, {"a": 10, "b": 10})
    assert any("edge of its grid" in l and "bn1/logreg" in l for l in lines)


def test_the_headline_and_the_chosen_head_break_a_tie_across_curves_alike_the_deeper_layer():
    from transferlab.pipeline.chosen import chosen_row
    from transferlab.pipeline.curves import best_on_validation

    # knn's best (blocks.1) ties logreg's best (blocks.2) on validation: the deeper one is the choice everywhere
    rows = [dict(_row(layer, d, v, t, head=h), row_key=f"{h}{layer}", cache_file="c.h5")
            for h, pts in (("knn", (("blocks.1", 1, 0.9, 0.95), ("blocks.2", 2, 0.8, 0.8))),
                           ("logreg", (("blocks.1", 1, 0.7, 0.7), ("blocks.2", 2, 0.9, 0.85))))
            for layer, d, v, t in pts]
    assert [(b["head"], b["val_choice"]) for b in best_per_curve(rows)] == [("logreg", "blocks.2"), ("knn", "blocks.1")]
    assert (best_on_validation(rows)["head"], best_on_validation(rows)["layer"]) == ("logreg", "blocks.2")
    assert (chosen_row(rows)["head"], chosen_row(rows)["layer"]) == ("logreg", "blocks.2")
    lines, _ = _section(rows, {"a": 10, "b": 10})
    assert "at `blocks.2` with the logreg head** (lite0, imagenet weights" in "\n".join(lines)


def test_fine_tuning_rows_have_no_curve_choice_and_are_never_the_chosen_head():
    from transferlab.pipeline.chosen import chosen_row

    rows = [dict(_row("bn2", 3, 0.99, 0.99, head="finetune:full"), row_key="ft", cache_file="c.h5"),
            dict(_row("bn2", 3, 0.7, 0.7), row_key="p", cache_file="c.h5")]
    assert [b["head"] for b in best_per_curve(rows)] == ["logreg"]
    assert chosen_row(rows)["row_key"] == "p"
