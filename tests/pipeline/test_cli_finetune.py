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
    from transferlab.pipeline.predict import predict

    npz = make_npz(tmp_path / "d.npz", n_train=30, n_test=12, size=16)
    assert run("--data", f"npz:{npz}", "--mode", "head", "--epochs", "1", "--image-size", "32", "--batch-size", "16",
               "--out", tmp_path / "ft", "--quiet").returncode == 0
    x = np.load(npz)["x_test"]
    files = write_pngs(x, tmp_path)
    model, meta = load_finetuned(tmp_path / "ft")
    probs = predict_finetuned(model, meta, x)
    rows = predict(tmp_path / "ft", files, batch_size=5, progress=False)
    assert [r["label"] for r in rows] == list(probs.argmax(1))
    np.testing.assert_allclose([r["score"] for r in rows], probs.max(1), rtol=1e-4)
