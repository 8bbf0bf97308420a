"""External methods: predictions made outside semiseg, on the export grid or the images' own grid,
become class maps on the cache's grid exactly as the ground truth did."""

from pathlib import Path

import numpy as np
import pytest

from semiseg.data.io import write_nifti
from semiseg.errors import SemisegInputError
from semiseg.preprocess.cache import Cache
from semiseg.studies.external import ExternalMethod, class_maps
from semiseg.studies.sweep import load_study


def cache_labels(cache: Cache, cid: str, dims: int) -> np.ndarray:
    """The ground truth stacked as the scores take it: (Z, S, S) in 2D, (Z, X, Y) in 3D."""
    return np.asarray(cache.slice_labels(cid)) if dims == 2 else np.moveaxis(np.asarray(cache.volume_label(cid)), -1, 0)


@pytest.mark.parametrize("dims", [2, 3])
def test_original_space_predictions_land_on_the_cache_grid(dims: int, tiny_cache: Path, tmp_path: Path):
    """The test patients' own label files, as a tool predicting on the original images would
    write them, give back exactly the cached ground truth."""
    import shutil

    cache = Cache(tiny_cache)
    test = cache.ids("test")
    folder = tmp_path / "preds"
    folder.mkdir()
    for cid in test:
        shutil.copy(cache.cases[cid].sources["label"], folder / f"{cid}.nii.gz")
    maps = class_maps(ExternalMethod("tool", str(folder), "original"), cache, 2, 0, test, dims)
    for cid in test:
        assert np.array_equal(maps[cid], cache_labels(cache, cid, dims))


def test_export_space_predictions_and_their_errors(tiny_cache: Path, tmp_path: Path):
    cache = Cache(tiny_cache)
    test = cache.ids("test")
    method = ExternalMethod("nnunet", str(tmp_path / "n{budget}-s{seed}"), "export")
    with pytest.raises(SemisegInputError, match=r"n2-s0: external method 'nnunet': prediction folder for budget 2, seed 0 not found"):
        class_maps(method, cache, 2, 0, test, 2)
    folder = tmp_path / "n2-s0"
    folder.mkdir()
    for cid in test:  # 2D export grid: the stack of cached slices, (S, S, Z)
        write_nifti(folder / f"{cid}.nii.gz", np.moveaxis(np.asarray(cache.slice_labels(cid)), 0, -1), np.eye(4))
    maps = class_maps(method, cache, 2, 0, test, 2)
    assert all(np.array_equal(maps[c], cache_labels(cache, c, 2)) for c in test)
    grid = np.moveaxis(np.asarray(cache.slice_labels(test[0])), 0, -1)
    write_nifti(folder / f"{test[0]}.nii.gz", np.concatenate([grid, grid[..., :1]], axis=-1), np.eye(4))  # one slice too many
    with pytest.raises(SemisegInputError, match=r"shape .* is not the exported grid's .*; is its space 'original'\?"):
        class_maps(method, cache, 2, 0, test, 2)
    (folder / f"{test[-1]}.nii.gz").unlink()
    with pytest.raises(SemisegInputError, match=f"no prediction for test case '{test[-1]}'"):
        class_maps(method, cache, 2, 0, test, 2)


def test_study_external_entries(tmp_path: Path, tiny_cache: Path):
    base = f"out: s\ncache: {tiny_cache}\nmethods: [supervised]\nbudgets: [2]\n"
    path = tmp_path / "study.yaml"
    path.write_text(base + "external:\n  nnunet: preds/n{budget}-s{seed}\n  tool: {predictions: /abs/x, space: original}\n")
    study = load_study(path)
    assert study.method_names() == ["supervised", "nnunet", "tool"]
    assert study.external["nnunet"] == {"predictions": str(tmp_path / "preds/n{budget}-s{seed}"), "space": "export"}
    assert study.external_methods()[1].folder(5, 1) == Path("/abs/x")
    for bad, message in (
        ("external:\n  supervised: x\n", "external method 'supervised' has the name of one of the study's methods"),
        ("external:\n  t: {predictions: x, space: raw}\n", "space must be export or original"),
        ("external:\n  t: p/{fold}\n", "may use {budget} and {seed} only"),
        ("external: [x]\n", "study setting 'external' must be a mapping or null"),
    ):
        path.write_text(base + bad)
        with pytest.raises(SemisegInputError, match=message.replace("{", r"\{").replace("}", r"\}")):
            load_study(path)
