from pathlib import Path

import numpy as np
import pytest

from helpers import write_brats_case, write_image
from semiseg.data.cases import discover
from semiseg.errors import SemisegInputError
from semiseg.preprocess.cache import Cache, build_cache
from semiseg.preprocess.splits import choose_subset, patient_split, slice_pool


def test_build_cache_layout_and_split(brats_dataset: Path, tmp_path: Path):
    cache = build_cache(discover(brats_dataset), tmp_path / "cache", slice_size=32, test_fraction=0.34)
    assert len(cache.ids("test")) == 2 and len(cache.ids("train")) == 4 and cache.ids("unlabelled") == ["BraTS2021_00099"]
    assert not set(cache.ids("test")) & set(cache.ids("train"))
    cid = cache.ids("train")[0]
    s = cache.slices(cid)
    assert isinstance(s, np.memmap) and s.dtype == np.float16 and s.shape[1:] == (4, 32, 32)
    assert cache.slice_labels(cid).shape == (s.shape[0], 32, 32)
    assert set(np.unique(cache.slice_labels(cid))) <= {0, 1, 2, 3}
    vol = cache.volume(cid)
    assert vol.shape[0] == 4 and vol.shape[-1] == s.shape[0]
    # foreground z-scored per channel, background exactly zero
    v = np.asarray(vol, np.float32)
    fg = np.any(v != 0, axis=0)
    assert abs(v[0][fg].mean()) < 0.05 and abs(v[0][fg].std() - 1) < 0.05
    reopened = Cache(tmp_path / "cache")
    assert reopened.scheme.name == "brats2021" and reopened.cases[cid].geometry == cache.cases[cid].geometry


def test_bad_case_leaves_no_cache(brats_dataset: Path, tmp_path: Path):
    seg = brats_dataset / "BraTS2021_00003" / "BraTS2021_00003_seg.nii.gz"
    write_image(seg, np.full((24, 24, 16), 3, np.int16))
    with pytest.raises(SemisegInputError, match=r"BraTS2021_00003_seg\.nii\.gz: label values \[3\]"):
        build_cache(discover(brats_dataset), tmp_path / "cache", slice_size=32)
    assert not (tmp_path / "cache").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["brats"]


def test_mismatched_modality_shape_fails_before_work(tmp_path: Path):
    root = tmp_path / "d"
    folder = write_brats_case(root, "c0")
    write_image(folder / "c0_t2.nii.gz", np.zeros((24, 24, 15), np.float32))
    with pytest.raises(SemisegInputError, match=r"c0_t2\.nii\.gz: shape \(24, 24, 15\) differs"):
        build_cache(discover(root), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_existing_cache_is_not_overwritten(brats_dataset: Path, tmp_path: Path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SemisegInputError, match="already exists"):
        build_cache(discover(brats_dataset), out)
    assert (out / "keep.txt").exists()


def test_split_and_subsets_are_deterministic_and_nested():
    ids = [f"p{i}" for i in range(10)]
    train, test = patient_split(ids, 0.2, seed=3)
    assert len(test) == 2 and sorted(train + test) == ids
    assert patient_split(ids, 0.2, seed=3) == (train, test)
    small, large = choose_subset(ids, 3, seed=1), choose_subset(ids, 6, seed=1)
    assert set(small) <= set(large)
    with pytest.raises(SemisegInputError, match="only 10 are available"):
        choose_subset(ids, 11, seed=0)
    assert slice_pool(155) == sorted(set(slice_pool(155))) and len(slice_pool(155)) == 7


def test_data_info_from_its_json_form_or_a_hand_written_mapping():
    """Methods take the record or its JSON form; a mapping without a cache (a benchmark's) gets
    MRI channels, their normalisation and the nnunet format."""
    from helpers import data_info
    from semiseg.data.labels import BRATS2021
    from semiseg.methods.supervised import Supervised
    from semiseg.preprocess.cache import DataInfo

    info = data_info(("t1", "flair"), BRATS2021, 64)
    assert DataInfo.of(info) is info
    assert DataInfo.of(info.to_json()) == info
    assert DataInfo.of({"slice_size": 64, "modalities": ["t1", "flair"], "scheme": BRATS2021.to_json()}) == info
    from semiseg.config import load_config

    method = Supervised(load_config(Supervised.config_files, "small"), {"slice_size": 64, "modalities": ["t1", "flair"], "scheme": BRATS2021.to_json()})
    assert method.data == info and method.channels == 2 and method.num_classes == BRATS2021.num_classes
    from semiseg.methods.ddpm import DDPM

    assert DDPM(load_config(DDPM.config_files, "small"), {"slice_size": 64, "modalities": ["t1", "flair"], "scheme": BRATS2021.to_json()}).data == info
