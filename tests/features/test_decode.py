"""Where image files are decoded: the device path (batched torchvision decode) against PIL in workers."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_cli, write_pngs
from tests.image_files import asymmetric, bomb_png, no_decode_of, save_tagged  # noqa: F401 (fixture)
from transferlab.features import UserInputError, extract
from transferlab.features.decode import EncodedFiles, decode_batch, device_batches, resolve_decode
from transferlab.features.preprocess import ImageFiles, read_image
from transferlab.features.spec import ExtractionSpec


def _images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    # smooth images with varied sizes: JPEG keeps them close to the original
    out = []
    for i in range(n):
        h, w = 20 + 3 * i, 28 - 2 * i
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 9 + c * 40 + rng.integers(0, 30)) % 256 for c in range(3)], -1)
        out.append((base * 0.5 + yy[..., None] * 2).clip(0, 255).astype(np.uint8))
    return out


def test_auto_decodes_on_cuda_only_and_gpu_off_cuda_is_refused():
    assert resolve_decode("auto", torch.device("cpu")) == "cpu"
    assert resolve_decode(None, torch.device("cuda", 0)) == "gpu"
    assert resolve_decode("cpu", torch.device("cuda", 0)) == "cpu"
    with pytest.raises(UserInputError, match="--decode gpu needs a CUDA device"):
        resolve_decode("gpu", torch.device("cpu"))


def test_batched_decode_of_mixed_jpeg_and_png_equals_pil(tmp_path):
    imgs = _images()
    paths = []
    for i, img in enumerate(imgs):
        p = tmp_path / (f"{i}.jpg" if i % 2 else f"{i}.png")
        Image.fromarray(img).save(p, quality=90) if i % 2 else Image.fromarray(img).save(p)
        paths.append(p)
    files = EncodedFiles(paths)
    items = [files[i] for i in range(len(paths))]
    assert [t.ndim for t in items] == [3 if p.suffix == ".png" else 1 for p in paths]  # only JPEG bytes travel
    decoded = decode_batch(items, torch.device("cpu"))
    for p, got in zip(paths, decoded):
        with Image.open(p) as im:
            ref = np.asarray(im.convert("RGB"))
        got = got.permute(1, 2, 0).numpy()
        assert got.shape == ref.shape
        # PNG is lossless: identical; JPEG: libjpeg builds may round a pixel differently
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= (0 if p.suffix == ".png" else 2), p


def test_device_batches_give_the_worker_path_tensors(tmp_path):
    paths = []
    for i, img in enumerate(_images()):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(img).save(paths[-1], quality=95)
    spec = ExtractionSpec("lite0", image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")
    got = torch.cat(list(device_batches(paths, 4, spec, torch.device("cpu"), 0)))
    ref = torch.stack([ImageFiles(paths, 32, spec.mean, spec.std, "bicubic")[i] for i in range(len(paths))])
    assert got.shape == ref.shape == (6, 3, 32, 32)
    assert (got - ref).abs().max().item() < 2 * 2 / 255 / 0.5  # within two grey levels after normalising


def test_decode_gpu_without_cuda_is_one_line_exit_2_and_writes_nothing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --decode gpu is valid here")
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            write_pngs(np.stack(_images(2)[:1] * 2), tmp_path / "imgs" / split / c)
    res = run_cli("extract", "--data", f"folder:{tmp_path / 'imgs'}", "--decode", "gpu", "--image-size", 32,
                  "--layers", "bn1", "--cache-dir", tmp_path / "c", "--device", "cpu", "--quiet")
    assert res.returncode == 2 and res.stderr.startswith("error: --decode gpu needs a CUDA device")
    assert len(res.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "c").glob("*.h5"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: nvJPEG decode not testable")
def test_gpu_decode_features_match_cpu_decode_features(tmp_path, lite0):
    for split in ("train", "test"):
        for c, imgs in (("a", _images(4, 1)), ("b", _images(4, 2))):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i, img in enumerate(imgs):
                Image.fromarray(img).save(d / f"{i}.jpg", quality=95)
    kw = dict(layers="blocks.2,bn2", image_size=32, dtype="float32", progress=False, device="cuda")
    from transferlab.features import load_split

    a = extract(f"folder:{tmp_path / 'imgs'}", lite0, cache_dir=tmp_path / "cpu", decode="cpu", **kw)
    b = extract(f"folder:{tmp_path / 'imgs'}", lite0, cache_dir=tmp_path / "gpu", decode="gpu", **kw)
    for layer in ("blocks.2", "bn2"):
        xa, ya, _ = load_split(a, "test", layer)
        xb, yb, _ = load_split(b, "test", layer)
        assert np.array_equal(ya, yb)
        assert np.abs(xa - xb).max() / np.abs(xa).max() < 0.05


def test_the_device_path_turns_a_tagged_jpeg_as_the_cpu_path_does(tmp_path):
    """nvJPEG ignores EXIF orientation: a JPEG that its tag turns is decoded in the worker by read_image,
    upright JPEGs still travel as bytes to the batched device decode."""
    save_tagged(tmp_path / "tagged.jpg", asymmetric(), 6)
    Image.fromarray(_images(1)[0]).save(tmp_path / "plain.jpg", quality=95)
    paths = [tmp_path / "tagged.jpg", tmp_path / "plain.jpg"]
    files = EncodedFiles(paths)
    tagged, plain = files[0], files[1]
    assert plain.ndim == 1 and tagged.shape == (3, 40, 24)  # stored 24 x 40, turned a quarter
    assert np.array_equal(tagged.permute(1, 2, 0).numpy(), read_image(paths[0]))
    spec = ExtractionSpec("lite0", image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")
    got = torch.cat(list(device_batches(paths, 2, spec, torch.device("cpu"), 0)))
    ref = torch.stack([ImageFiles(paths, 32, spec.mean, spec.std, "bicubic")[i] for i in range(2)])
    assert torch.equal(got[0], ref[0])
    assert (got[1] - ref[1]).abs().max().item() < 2 * 2 / 255 / 0.5


def test_the_device_path_refuses_a_bomb_from_its_header(tmp_path, no_decode_of):
    bomb = bomb_png(tmp_path / "bomb.png")
    attempts = no_decode_of(bomb)
    with pytest.raises(UserInputError, match=f"image {bomb} is 12000x12000 = 144000000 pixels, over the limit of"):
        EncodedFiles([bomb])[0]
    assert attempts == []
