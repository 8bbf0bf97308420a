"""One predict path for every method.

2D methods run slice by slice over the whole volume (batched), 3D methods with MONAI's
sliding-window inference; both go through the same preprocessing as training
(:func:`~semiseg.preprocess.pipeline.prepare_case`) and back through the inverse geometry, so a
prediction has exactly the input's shape, affine and label values, in the input's file format
(NIfTI, ``.mha`` or ``.nrrd``; an ITK input's origin, spacing and direction are copied exactly).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from semiseg.data.cases import Case, canonical_modality, discover
from semiseg.data.io import IMAGE_ENDINGS, image_ending, strip_ending, write_like
from semiseg.data.labels import LabelScheme
from semiseg.data.loading import check_case_headers
from semiseg.errors import SemisegInputError
from semiseg.files import check_output, removed_on_failure, staging_dir
from semiseg.methods.base import Method
from semiseg.preprocess.geometry import resize_stack, unsquare_slices
from semiseg.preprocess.pipeline import PreparedCase, case_slices, prepare_case
from semiseg.progress import progress_bar
from semiseg.runs.train import describe_channels, load_trained
from semiseg.training.distributed import pick_device

NNUNET_IMAGE = re.compile(r"^(.*)_(\d{4})(" + "|".join(re.escape(e) for e in IMAGE_ENDINGS) + ")$", re.IGNORECASE)


#: what a predict path computes per batch: images -> (per-voxel maps (B, K, *S), uncertainty (B, *S) or None)
Head = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@torch.no_grad()
def predict_slices(
    method: Method, slices: np.ndarray, on_batch: Callable[[int], None] | None = None, head: Head | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run a 2D method over slices (N, C, S, S); returns probabilities (N, K, S, S) and
    uncertainty (N, S, S), float32 (or what ``head`` computes instead of ``method.predict``)."""
    device = next(method.parameters()).device
    bs = method.predict_batch_size()
    probs, unc = [], []
    for s in range(0, len(slices), bs):
        x = torch.as_tensor(np.asarray(slices[s : s + bs], dtype=np.float32), device=device)
        p, u = (head or method.predict)(x)
        probs.append(p.float().cpu().numpy())
        unc.append((u if u is not None else torch.zeros_like(p[:, 0])).float().cpu().numpy())
        if on_batch:
            on_batch(len(x))
    return np.concatenate(probs), np.concatenate(unc)


@torch.no_grad()
def predict_volume(method: Method, volume: np.ndarray, head: Head | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run a 3D method over a cropped volume (C, X, Y, Z) with Gaussian-weighted sliding windows;
    returns probabilities (K, X, Y, Z) and uncertainty (X, Y, Z), float32 (or what ``head``
    computes instead of ``method.predict``)."""
    device = next(method.parameters()).device
    x = torch.as_tensor(np.asarray(volume, dtype=np.float32), device=device)[None]

    def both(patch: torch.Tensor) -> torch.Tensor:
        p, u = (head or method.predict)(patch)
        u = u if u is not None else torch.zeros_like(p[:, 0])
        return torch.cat([p, u[:, None]], dim=1)

    out = sliding_window_inference(
        x,
        roi_size=method.patch_size(),
        sw_batch_size=method.predict_windows(),
        predictor=both,
        overlap=float(method.config.get("predict", {}).get("overlap", 0.5)),
        mode="gaussian",
    )[0]
    out = out.float().cpu().numpy()
    return out[:-1], out[-1]


def predict_prepared(
    method: Method, prepared: PreparedCase, slice_size: int, pad: np.ndarray, on_batch: Callable[[int], None] | None = None,
    uncertainty: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (K, X', Y', Z') and uncertainty (X', Y', Z') over a prepared case's crop
    (2D without ``uncertainty``: None, not resampled to the crop)."""
    if method.dims == 3:
        return predict_volume(method, prepared.image)
    slices, _ = case_slices(prepared, slice_size, pad)
    probs, unc = predict_slices(method, slices, on_batch)
    (sx0, sx1), (sy0, sy1) = prepared.geometry.square
    side = (sx1 - sx0, sy1 - sy0)
    probs = unsquare_slices(resize_stack(torch.from_numpy(probs), side, "bilinear").numpy(), prepared.geometry)
    if not uncertainty:
        return probs, None
    unc = resize_stack(torch.from_numpy(unc[:, None]), side, "bilinear").numpy()
    return probs, unsquare_slices(unc, prepared.geometry)[0]


def output_scheme(model: LabelScheme, data: LabelScheme | None) -> LabelScheme:
    """Label values to write: the input dataset's when its classes mean the model's (BraTS 2021
    vs 2023: same classes, different values), else the model's own."""
    if data is not None and data.class_names == model.class_names:
        return data
    return model


def resolve_inputs(path: Path, modalities: list[str]) -> tuple[list[Case], LabelScheme | None]:
    """Cases to predict from a dataset folder, a case folder, a flat folder of nnU-Net-named images
    (``<case>_0000.nii.gz``, channels in the model's order) or a single image (one-channel models)."""
    if path.is_file():
        if len(modalities) != 1:
            raise SemisegInputError(path, f"is one image but the model needs {describe_channels(modalities)}; give a case folder")
        name = strip_ending(path.name)
        if name is None:
            raise SemisegInputError(path, f"is not an image semiseg reads ({', '.join(IMAGE_ENDINGS)})")
        return [Case(name, {modalities[0]: path})], None
    if path.is_dir():
        flat: dict[str, dict[int, Path]] = {}
        for f in path.iterdir():
            m = NNUNET_IMAGE.match(f.name)
            if m and f.is_file():
                flat.setdefault(m.group(1), {})[int(m.group(2))] = f
        if flat and not (path / "dataset.json").exists():
            cases = []
            for cid, chans in sorted(flat.items()):
                missing = [f"{cid}_{i:04d}" for i in range(len(modalities)) if i not in chans]
                if missing:
                    raise SemisegInputError(path / missing[0], f"not found; the model needs {describe_channels(modalities)}")
                cases.append(Case(cid, {m: chans[i] for i, m in enumerate(modalities)}))
            return cases, None
    dataset = discover(path, [canonical_modality(m) for m in modalities])
    return dataset.cases, dataset.scheme


def predict(
    run_dir: str | PathLike,
    input_path: str | PathLike,
    out_dir: str | PathLike,
    probabilities: bool = False,
    uncertainty: bool = False,
    device: str | None = None,
    images: dict[str, str] | None = None,
) -> list[Path]:
    """Segment every case of ``input_path`` (or the explicit ``images``, modality -> file) with a
    trained run and write ``<case>.nii.gz`` (+ ``_prob``, ``_uncertainty``) into ``out_dir``, in the
    format of the case's first image (``<case>.mha`` for ``.mha`` input, and so on).

    All inputs are checked before anything is written, and outputs are written to a temporary
    folder first, so a failure leaves ``out_dir`` as it was. Returns the segmentation paths.
    """
    out_dir = Path(out_dir)
    check_output(out_dir, "folder")
    method, record = load_trained(run_dir, pick_device(0, device))
    if not method.segments:
        raise SemisegInputError(run_dir, "is a DDPM pretraining run, not a segmentation run; train one with --ddpm")
    data = record.data
    modalities = list(data.modalities)
    if images:
        given = {canonical_modality(k): Path(v) for k, v in images.items()}
        missing = [m for m in modalities if m not in given]
        if missing:
            raise SemisegInputError(None, f"--image for {', '.join(missing)} missing; the model needs {describe_channels(modalities)}")
        first = next(iter(given.values()))
        cases, data_scheme = [Case(strip_ending(first.name) or first.name, {m: given[m] for m in modalities})], None
    else:
        cases, data_scheme = resolve_inputs(Path(input_path), modalities)
    for case in cases:
        check_case_headers(case)
    model_scheme = method.scheme
    write_scheme = output_scheme(model_scheme, data_scheme)
    normaliser = data.normaliser
    pad = normaliser.background_value()
    size = data.slice_size
    background = np.zeros(model_scheme.num_classes, dtype=np.float32)
    background[0] = 1.0

    written: list[tuple[Path, Path]] = []
    segmentations: list[Path] = []
    with removed_on_failure(out_dir), staging_dir(out_dir) as tmp:
        with progress_bar() as bar:
            task = bar.add_task("predict", total=len(cases), info="", unit="case", every=1)
            for case in cases:
                prepared = prepare_case(case, model_scheme, normaliser, with_label=False)
                n_slices = prepared.image.shape[-1]
                sub = bar.add_task(f"  {case.case_id}", total=n_slices if method.dims == 2 else 1, info="", every=0)
                probs, unc = predict_prepared(method, prepared, size, pad, lambda n, sub=sub: bar.advance(sub, n), uncertainty)
                bar.update(sub, completed=n_slices if method.dims == 2 else 1)
                geom = prepared.geometry
                # the argmax of the crop, then pasted (outside the crop is background either way):
                # the full-size probabilities are only made when they are written
                seg = write_scheme.to_values(geom.uncrop(probs.argmax(0).astype(np.uint8)[None], fill=0)[0])
                reference = next(iter(case.images.values()))
                ending = image_ending(reference.name)
                affine = np.asarray(geom.affine)
                names = [(f"{case.case_id}{ending}", seg, True)]
                if probabilities:
                    full = geom.uncrop(probs, fill=background)
                    names.append((f"{case.case_id}_prob{ending}", np.moveaxis(full, 0, -1).astype(np.float32), False))
                if uncertainty:
                    names.append((f"{case.case_id}_uncertainty{ending}", geom.uncrop(unc[None], fill=0.0)[0].astype(np.float32), False))
                for name, arr, is_segmentation in names:
                    write_like(tmp / name, arr, reference, affine, prediction=is_segmentation)
                    written.append((tmp / name, out_dir / name))
                    segmentations += [out_dir / name] if is_segmentation else []
                bar.advance(task)
        for src, dst in written:
            src.replace(dst)
    return segmentations
