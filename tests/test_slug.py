"""One slug (transferlab.util.slug) for every file-name part: cache file names stay as they were before it,
since they are part of existing caches (a renamed cache file would be extracted again)."""
from types import SimpleNamespace

import pytest

from transferlab.features.cache import file_name
from transferlab.features.data import Dataset
from transferlab.features.spec import ExtractionSpec
from transferlab.pipeline.results import default_head_dir
from transferlab.util import slug

SPEC = ExtractionSpec("timm:resnet50_gn.a1h_in1k", "random", 0, 96, "grid:2", "float32")
TAIL = "_resnet50-gn-a1h-in1k_random_96px_grid2_float32_0123456789ab.h5"


# the names these data sets' cache files had before the slug was one function (computed with that code)
@pytest.mark.parametrize("data, name", [
    ("npz:/d/My data_(v2) ä+ö #1.npz", "My-data--v2--ä-ö--1"),
    ("folder:/d/Fotos 2024_Sommer (Kopie)", "Fotos-2024-Sommer--Kopie"),
    ("npz:/d/_private_.npz", "private"),
    ("npz:/d/" + "x" * 50 + ".npz", "x" * 40),
    ("cifar10:/mnt/data", "mnt-data"),
    ("digits", "digits"),
])
def test_cache_file_names_of_odd_data_names_are_unchanged(data, name):
    short = Dataset.short_name.fget(SimpleNamespace(spec=data))
    assert file_name(SPEC, short, "0123456789abcdef") == name + TAIL


def test_a_slug_keeps_letters_digits_and_dashes_of_any_script_and_nothing_else():
    assert slug("a/b\\c d_e.f:g|h\ni") == "a-b-c-d-e-f-g-h-i"
    assert slug("--ä€é--") == "ä-é" and slug("../../etc/passwd") == "etc-passwd"
    assert slug("x" * 50) == "x" * 40 and slug("x" * 50, limit=None) == "x" * 50
    assert Dataset.short_name.fget(SimpleNamespace(spec="npz:/d/(((.npz")) == "data"


def test_the_default_head_folder_is_slugged_part_by_part():
    cache_file = "/c/digits_lite0_imagenet_64px_gap_float16_0123456789ab.h5"
    assert default_head_dir(cache_file, "blocks.3", "logreg").as_posix() \
        == "runs/heads/digits_lite0_imagenet_64px_gap_float16_blocks-3_logreg"
    assert default_head_dir("/c/odd name (1).h5", "../../x", "svm-rbf").as_posix() == "runs/heads/odd-name--1_x_svm-rbf"
