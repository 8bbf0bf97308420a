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
    r = scheme_from_dataset_json({"background": 0, "edema": 1, "core": 2, "whole": [1, 2]})
    assert r.values == (0, 1, 2) and r.regions == {"whole": (1, 2)}
    with pytest.raises(SemisegInputError, match="background"):
        scheme_from_dataset_json({"tumour": 1})
