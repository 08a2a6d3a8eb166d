"""The extraction spec: one default image size and one rule, validated once, carried whole."""
import h5py
import pytest

from tests.conftest import make_npz
from transferlab.features import DEFAULT_IMAGE_SIZE, ExtractionSpec, extract
from transferlab.features.cache import read_spec
from transferlab.pipeline.sweep import SweepConfig, sweep
from transferlab.util import UserInputError


def test_image_size_rule_default_native_and_range():
    assert ExtractionSpec().image_size == DEFAULT_IMAGE_SIZE == 64
    assert ExtractionSpec(image_size=0).image_size == 0  # the backbone's own, filled by resolve()
    assert ExtractionSpec(image_size="native").image_size == 0
    for bad in (-1, 3, 100000, "big"):
        with pytest.raises(UserInputError, match="image size"):
            ExtractionSpec(image_size=bad)
    with pytest.raises(UserInputError, match="unknown pooling"):
        ExtractionSpec(pooling="median")
    with pytest.raises(UserInputError, match="unknown dtype"):
        ExtractionSpec(dtype="int8")


def test_resolve_takes_preprocessing_from_the_weights_and_round_trips(lite0):
    spec = ExtractionSpec("lite0", image_size=0, pooling="GRID:2").resolve(lite0)
    assert (spec.image_size, spec.mean, spec.interpolation, spec.pooling) == (224, (0.5, 0.5, 0.5), "bicubic", "grid:2")
    assert spec.weights_sha256 == lite0.weights_sha256 and spec.arch == "timm:tf_efficientnet_lite0"
    assert ExtractionSpec.from_dict(spec.to_dict()) == spec
    assert spec.fingerprint() != ExtractionSpec("lite0", image_size=96).resolve(lite0).fingerprint()


def test_extract_and_sweep_share_the_default_so_a_notebook_extract_hits_the_sweeps_cache(tmp_path, lite0):
    npz = make_npz(tmp_path / "d.npz", n_train=24, n_test=12)
    summary = sweep(SweepConfig(data=f"npz:{npz}", heads="knn", layers="bn1,bn2", out=str(tmp_path / "run"),
                                cache_dir=str(tmp_path / "cache"), n_jobs=1), progress=False)
    messages = []
    path = extract(f"npz:{npz}", lite0, layers="bn1,bn2", cache_dir=tmp_path / "cache", progress=False,
                   log=messages.append)
    assert [str(path)] == summary["cache_files"] and messages == [
        "image size: 64 px (auto: median shorter side 16 px of 36 images, within 64..224, lite0's own size; "
        "--image-size N to choose)", f"cache hit: {path}"]
    spec = read_spec(path)
    assert spec.image_size == 64 and spec.resolved
    with h5py.File(path, "r") as f:  # the spec is written whole into the root attributes
        assert {k: f.attrs[k] for k in ("interpolation", "resize", "arch")} == {
            "interpolation": "bicubic", "resize": "antialias-bicubic", "arch": "timm:tf_efficientnet_lite0"}


@pytest.mark.parametrize("spec, names", [
    ("all", ["stem", "blocks.0", "bn2"]), ("", ["stem", "blocks.0", "bn2"]), ("  all ", ["stem", "blocks.0", "bn2"]),
    ("bn2", ["bn2"]), (" blocks.0 , bn2,", ["blocks.0", "bn2"]), (["bn2", " stem", ""], ["bn2", "stem"]),
])
def test_one_reading_of_a_layer_spec(spec, names):
    """The extractor, its memo and the sweep all read a layer spec through ``parse_layers``."""
    from transferlab.features.spec import parse_layers

    catalog = ["stem", "blocks.0", "bn2"]
    assert parse_layers(spec, catalog) == names
    assert parse_layers(spec, lambda: catalog) == names


def test_one_interpolation_rule_for_the_spec_and_the_resize():
    from transferlab.features import preprocess, spec

    assert preprocess.interpolation_mode is spec.interpolation_mode  # one function, not two copies
    assert [spec.interpolation_mode(n) for n in ("BICUBIC", "bicubic", "bilinear", "nearest", None)] == [
        "bicubic", "bicubic", "bilinear", "bilinear", "bilinear"]
    assert ExtractionSpec(interpolation="BiCubic").interpolation == "bicubic"
    assert ExtractionSpec(interpolation="lanczos").interpolation == "bilinear"


def test_exif_transpose_is_recorded_keyed_and_read_false_from_files_written_before_it(lite0):
    """New work always applies EXIF orientation; a spec without the field (an older cache, head.json or
    model.json) reads false, and its key differs, so old and new caches are never mixed."""
    from transferlab.features.cache import compute_key

    spec = ExtractionSpec("lite0", image_size=32).resolve(lite0)
    assert spec.exif_transpose is True and spec.to_dict()["exif_transpose"] is True
    assert ExtractionSpec("lite0", image_size=32, exif_transpose=False).resolve(lite0) == spec
    assert ExtractionSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "exif_transpose"}
    legacy = ExtractionSpec.from_dict(old)
    assert legacy.exif_transpose is False and legacy.key_fields()["exif_transpose"] is False
    assert legacy.fingerprint() != spec.fingerprint() and compute_key(legacy, "d") != compute_key(spec, "d")
    with pytest.raises(UserInputError, match="exif_transpose 'yes' must be true or false"):
        ExtractionSpec.from_dict({**old, "exif_transpose": "yes"})
