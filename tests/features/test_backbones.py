import hashlib

import numpy as np
import pytest
import torch

from transferlab.features import UserInputError, build_backbone
from transferlab.features.preprocess import normalize_batch

skimage_data = pytest.importorskip("skimage.data")

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx"}


def _top1(bb, image: np.ndarray) -> str:
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    x = normalize_batch(x, bb.input_size, bb.mean, bb.std, bb.interpolation)
    with torch.inference_mode():
        logits = bb.model(x)
    return bb.class_names[int(logits.argmax())]


def test_lite0_imagenet_weights_classify_chelsea_as_cat_and_coffee_as_espresso(lite0):
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)
    assert _top1(lite0, skimage_data.chelsea()) in CAT_CLASSES
    assert _top1(lite0, skimage_data.coffee()) == "espresso"


def test_random_weights_are_seeded_and_differ_from_pretrained(lite0):
    r0 = build_backbone("lite0", weights="random", seed=0)
    r0b = build_backbone("lite0", weights="random", seed=0)
    r1 = build_backbone("lite0", weights="random", seed=1)

    def w(bb):
        return bb.model.conv_stem.weight.detach()

    assert torch.equal(w(r0), w(r0b))
    assert not torch.equal(w(r0), w(r1))
    assert not torch.allclose(w(r0), w(lite0))
    assert len({r0.weights_sha256, r1.weights_sha256, lite0.weights_sha256}) == 3


def test_local_weights_file_loads_and_is_fingerprinted_by_its_bytes(tmp_path, lite0):
    path = tmp_path / "w.pth"
    torch.save(lite0.model.state_dict(), path)
    bb = build_backbone("lite0", weights=str(path))
    assert torch.equal(bb.model.blocks[3][0].conv_pw.weight, lite0.model.blocks[3][0].conv_pw.weight)
    assert bb.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_torchvision_resnet_builds_with_default_preprocessing_offline():
    bb = build_backbone("torchvision:resnet18", weights="random")
    assert bb.mean == pytest.approx((0.485, 0.456, 0.406)) and bb.input_size == 224
    assert bb.classifier == "fc"


@pytest.mark.parametrize("spec,weights,needle", [
    ("nope", "imagenet", "unknown backbone 'nope'"),
    ("torchvision:notamodel", "random", "torchvision has no model"),
    ("lite0", "/no/such/file.pth", "does not exist"),
])
def test_bad_backbone_inputs_name_the_input(spec, weights, needle):
    with pytest.raises(UserInputError, match=needle):
        build_backbone(spec, weights=weights)


def test_timm_backbone_loads_a_local_file_through_pretrained_cfg_overlay(tmp_path):
    src = build_backbone("timm:resnet18", weights="random", seed=3)
    path = tmp_path / "resnet18.pth"
    torch.save(src.model.state_dict(), path)
    bb = build_backbone("timm:resnet18", weights=str(path))
    assert torch.equal(bb.model.layer3[0].conv1.weight, src.model.layer3[0].conv1.weight)
    assert bb.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    from transferlab.features import catalog
    assert [i.name for i in catalog(bb.model, "all", "gap", 32)] == ["act1", "layer1", "layer2", "layer3", "layer4"]
