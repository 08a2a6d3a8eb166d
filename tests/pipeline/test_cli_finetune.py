import json

from tests.conftest import make_npz, run_cli, write_pngs


def run(*args):
    return run_cli("finetune", *args)


def test_finetune_cli_runs_and_writes_metrics(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n_train=30, n_test=12, size=16)
    out = run("--data", f"npz:{npz}", "--mode", "last:1", "--epochs", "1", "--image-size", "32", "--batch-size", "16",
              "--out", tmp_path / "ft", "--quiet")
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and f"test_accuracy={metrics['test_accuracy']:.4f}" in out.stdout


def test_finetune_cli_bad_input_is_one_line_exit_2(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n_train=30, n_test=12, size=16)
    for args, needle in ((["--mode", "last:99"], "last:99"), (["--lr", "0"], "lr"), (["--mode", "wild"], "wild")):
        out = run("--data", f"npz:{npz}", "--image-size", "32", "--out", tmp_path / "ft", *args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and needle in last


def test_predict_uses_a_finetuned_model_like_predict_finetuned(tmp_path):
    import numpy as np

    from transferlab.finetuning.saved import load_finetuned, predict_finetuned
    from transferlab.pipeline.predict import predict_rows

    npz = make_npz(tmp_path / "d.npz", n_train=30, n_test=12, size=16)
    assert run("--data", f"npz:{npz}", "--mode", "head", "--epochs", "1", "--image-size", "32", "--batch-size", "16",
               "--out", tmp_path / "ft", "--quiet").returncode == 0
    x = np.load(npz)["x_test"]
    files = write_pngs(x, tmp_path)
    model, meta = load_finetuned(tmp_path / "ft")
    probs = predict_finetuned(model, meta, x)
    rows = predict_rows(tmp_path / "ft", files, batch_size=5, progress=False)
    assert [r["label"] for r in rows] == list(probs.argmax(1))
    np.testing.assert_allclose([r["score"] for r in rows], probs.max(1), rtol=1e-4)


def test_epoch_line_gives_images_per_second_and_the_runs_eta():
    from transferlab.finetuning.run import epoch_line

    hist = [{"seconds": 10.0}, {"seconds": 20.0}]
    row = {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.9, "val_accuracy": None, "seconds": 20.0,
           "train_seconds": 16.0}
    line = epoch_line(row, 5, 800, hist, stopped=False)
    assert "(50 img/s)" in line and "ETA 00:00:45 for 3 more" in line  # 3 epochs x 15 s mean
    assert line.endswith("done") is False and epoch_line({**row, "epoch": 5}, 5, 800, hist, False).endswith("done")


def test_append_to_uses_the_sweeps_image_size_and_validation_fraction(tmp_path):
    from transferlab.pipeline.sweep import sweep

    npz = make_npz(tmp_path / "d.npz", n_train=30, n_test=12, size=16)
    sweep(data=f"npz:{npz}", heads="knn", layers="bn2", image_size="32", val_fraction=0.3, out=str(tmp_path / "sw"),
          cache_dir=str(tmp_path / "c"), n_jobs=1, progress=False, log=lambda m: None)
    out = run("--mode", "head", "--epochs", "2", "--batch-size", "16", "--out", tmp_path / "ft",
              "--append-to", tmp_path / "sw", "--no-augment")
    assert out.returncode == 0, out.stderr
    cfg = json.loads((tmp_path / "ft" / "metrics.json").read_text())["config"]
    # the sweep's, not 64/0.1/digits
    assert (cfg["image_size"], cfg["val_fraction"], cfg["data"]) == (32, 0.3, f"npz:{npz}")
    sw = tmp_path / "sw"
    assert f"refreshed the report: {sw / 'report.md'}, {sw / 'report.html'}" in out.stdout
    epochs = [l for l in out.stderr.splitlines() if l.startswith("epoch ") and "train loss" in l]
    assert len(epochs) == 2 and all("img/s" in l for l in epochs) and "ETA" in epochs[0]
    assert out.stdout.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'ft' / 'metrics.json'}; model file "
                                                          f"{tmp_path / 'ft' / 'model.pt'}")
    differ = run("--mode", "head", "--epochs", "1", "--batch-size", "16", "--out", tmp_path / "ft2",
                 "--image-size", "48",
                 "--append-to", tmp_path / "sw", "--no-augment", "--quiet")
    assert differ.returncode == 0 and "--image-size 48 differs from the sweep's 32" in differ.stderr
    rows = [l for l in (tmp_path / "sw" / "results.csv").read_text().splitlines() if "finetune:head" in l]
    assert len(rows) == 2 and (tmp_path / "sw" / "finetune.png").is_file()
