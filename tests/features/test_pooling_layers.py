import pytest
import torch

from transferlab.features import UserInputError, catalog, parameter_groups, parse_pooling


def test_pooling_matches_direct_reductions():
    x = torch.randn(2, 5, 6, 6)
    assert torch.allclose(parse_pooling("gap")(x), x.mean((2, 3)))
    assert torch.equal(parse_pooling("gmp")(x), x.flatten(2).max(-1).values)
    assert torch.allclose(parse_pooling("gap+gmp")(x), torch.cat([x.mean((2, 3)), x.flatten(2).max(-1).values], 1))
    g = parse_pooling("grid:2")(x)
    manual = torch.stack([x[:, :, :3, :3].mean((2, 3)), x[:, :, :3, 3:].mean((2, 3)),
                          x[:, :, 3:, :3].mean((2, 3)), x[:, :, 3:, 3:].mean((2, 3))], -1).flatten(1)
    assert g.shape == (2, 20) and torch.allclose(g, manual, atol=1e-6)
    assert parse_pooling("grid:3").dim(7) == 63


@pytest.mark.parametrize("bad", ["avg", "grid:0", "grid:x", ""])
def test_unknown_pooling_is_refused(bad):
    with pytest.raises(UserInputError, match="gap, gmp"):
        parse_pooling(bad)


def test_lite0_catalog_is_stem_blocks_head_in_forward_order(lite0):
    infos = catalog(lite0.model, "all", "gap", 64)
    assert [i.name for i in infos] == ["bn1"] + [f"blocks.{i}" for i in range(7)] + ["bn2"]
    assert [i.depth for i in infos] == list(range(9))
    assert [i.stride for i in infos][:3] == [2, 2, 4] and infos[-1].stride == 32
    assert infos[-1].channels == 1280 and infos[-1].bytes_per_image == 1280 * 2
    grid = catalog(lite0.model, "blocks.2,bn1", "grid:2", 64, "float32")
    assert [i.name for i in grid] == ["bn1", "blocks.2"] and grid[1].dim == 160 and grid[1].bytes_per_image == 640


def test_unknown_layer_lists_valid_ones(lite0):
    with pytest.raises(UserInputError, match="blocks.6, bn2"):
        catalog(lite0.model, "blocks.9", "gap", 32)


def test_parameter_groups_partition_every_parameter_once(lite0):
    groups = parameter_groups(lite0.model)
    names = [p for ps in groups.values() for p in ps]
    assert sorted(names) == sorted(n for n, _ in lite0.model.named_parameters())
    assert list(groups)[-1] == "classifier" and groups["classifier"] == ["classifier.weight", "classifier.bias"]
    assert groups["bn1"] == ["conv_stem.weight", "bn1.weight", "bn1.bias"]
