import numpy as np
import pytest

from semiseg.data.labels import BRATS2021, BRATS2023, scheme_from_dataset_json
from semiseg.errors import SemisegInputError


def test_brats2021_classes_round_trip():
    values = np.array([0, 1, 2, 4, 4, 0])
    classes = BRATS2021.to_classes(values)
    assert classes.tolist() == [0, 1, 2, 3, 3, 0]
    assert BRATS2021.to_values(classes).tolist() == values.tolist()


def test_brats_regions_2021_and_2023_mean_the_same():
    v21 = np.array([0, 1, 2, 4])
    v23 = np.array([0, 1, 2, 3])
    for region, expected in {"WT": [0, 1, 1, 1], "TC": [0, 1, 0, 1], "ET": [0, 0, 0, 1]}.items():
        assert BRATS2021.region_mask(v21, region).astype(int).tolist() == expected
        assert BRATS2023.region_mask(v23, region).astype(int).tolist() == expected


def test_value_outside_scheme_is_rejected():
    with pytest.raises(ValueError):
        BRATS2021.to_classes(np.array([0, 3]))


def test_dataset_json_classes_and_regions():
    s = scheme_from_dataset_json({"background": 0, "spleen": 1})
    assert s.name == "binary" and s.regions == {"spleen": (1,)}
    # as in nnU-Net, one entry listing several values makes every entry a region
    r = scheme_from_dataset_json({"background": 0, "edema": 1, "core": 2, "whole": [1, 2]})
    assert r.values == (0, 1, 2) and r.regions == {"edema": (1,), "core": (2,), "whole": (1, 2)}
    with pytest.raises(SemisegInputError, match="background"):
        scheme_from_dataset_json({"tumour": 1})
    with pytest.raises(SemisegInputError, match="'a' and 'b' both have value 1"):
        scheme_from_dataset_json({"background": 0, "a": 1, "b": 1})
    with pytest.raises(SemisegInputError, match=r"label 'wt' has value \[\]"):
        scheme_from_dataset_json({"background": 0, "wt": []})


#: exactly what nnU-Net v2's Dataset137_BraTS21.py conversion writes (generate_dataset_json)
NNUNET_BRATS_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


def test_nnunet_brats_regions_mean_the_brats_regions():
    """nnU-Net's conversion maps BraTS 2 (oedema) -> 1, 1 (necrosis) -> 2, 4 (enhancing) -> 3 and
    declares regions; they must select exactly the voxels BraTS's WT, TC and ET select."""
    s = scheme_from_dataset_json(NNUNET_BRATS_LABELS, regions_class_order=[1, 2, 3])
    assert s.values == (0, 1, 2, 3) and list(s.regions) == ["WT", "TC", "ET"]
    assert s.class_names == ("background", "whole tumor", "tumor core", "enhancing tumor")
    brats = np.array([0, 1, 2, 4, 2, 1, 4, 0])
    converted = np.select([brats == 4, brats == 2, brats == 1], [3, 1, 2], 0)  # the script's remapping
    for region in ("WT", "TC", "ET"):
        assert (s.region_mask(converted, region) == BRATS2021.region_mask(brats, region)).all(), region
    # the class each region paints (nnU-Net overwrites in regions_class_order) does not change the regions
    other = scheme_from_dataset_json(NNUNET_BRATS_LABELS)
    assert other.regions == s.regions and other.class_names == s.class_names
    with pytest.raises(SemisegInputError, match="regions_class_order"):
        scheme_from_dataset_json(NNUNET_BRATS_LABELS, regions_class_order=[1, 2])
