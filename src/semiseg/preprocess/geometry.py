"""Geometry of a case: canonical orientation, foreground crop, square in-plane box for 2D slices,
and the inverse that puts a prediction back into the input's exact voxel grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel.orientations as nio
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms.utils import generate_spatial_bounding_box

CANONICAL = nio.axcodes2ornt(("R", "A", "S"))


def _ornt_to_canonical(affine: np.ndarray) -> np.ndarray:
    return nio.ornt_transform(nio.io_orientation(affine), CANONICAL)


def to_canonical(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient ``volume`` (spatial axes last three) from ``affine``'s frame to RAS voxel order."""
    ornt = _ornt_to_canonical(affine)
    lead = volume.ndim - 3
    full = np.concatenate([np.array([[i, 1] for i in range(lead)]).reshape(-1, 2), ornt + [lead, 0]]) if lead else ornt
    return np.ascontiguousarray(nio.apply_orientation(volume, full))


def from_canonical(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_canonical` for an image whose original affine is ``affine``."""
    ornt = nio.ornt_transform(CANONICAL, nio.io_orientation(affine))
    lead = volume.ndim - 3
    full = np.concatenate([np.array([[i, 1] for i in range(lead)]).reshape(-1, 2), ornt + [lead, 0]]) if lead else ornt
    return np.ascontiguousarray(nio.apply_orientation(volume, full))


def canonical_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along the canonical R, A, S voxel axes."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    axes = nio.io_orientation(affine)[:, 0].astype(int)  # input axis i -> output axis axes[i]
    out = np.zeros(3)
    out[axes] = spacing
    return tuple(float(s) for s in out)


@dataclass
class CaseGeometry:
    """Everything needed to map between an input image and its cached, cropped, canonical form.

    Boxes are half-open ``[start, stop)`` voxel ranges in canonical space. ``square`` is the in-plane
    (x, y) box, centred on the crop and widened to a square, that 2D slices are resized from; it
    may reach outside the image, where slices are padded.
    """

    shape: tuple[int, int, int]
    affine: list[list[float]]
    canonical_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    bbox: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    square: tuple[tuple[int, int], tuple[int, int]]

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in self.bbox)  # type: ignore[return-value]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "CaseGeometry":
        return cls(
            shape=tuple(obj["shape"]),
            affine=obj["affine"],
            canonical_shape=tuple(obj["canonical_shape"]),
            spacing=tuple(obj["spacing"]),
            bbox=tuple(tuple(b) for b in obj["bbox"]),  # type: ignore[arg-type]
            square=tuple(tuple(b) for b in obj["square"]),  # type: ignore[arg-type]
        )

    def crop(self, volume: np.ndarray) -> np.ndarray:
        """Crop a canonical volume (spatial axes last) to the foreground box."""
        (x0, x1), (y0, y1), (z0, z1) = self.bbox
        return volume[..., x0:x1, y0:y1, z0:z1]

    def uncrop(self, crop: np.ndarray, fill: np.ndarray | float) -> np.ndarray:
        """Paste a cropped array (channels first, spatial last) back into the original image grid.

        ``fill`` is the value outside the crop: a scalar, or one value per channel.
        """
        lead = crop.shape[:-3]
        full = np.empty(lead + tuple(self.canonical_shape), dtype=crop.dtype)
        full[...] = np.asarray(fill, dtype=crop.dtype).reshape(lead + (1, 1, 1)) if np.ndim(fill) else fill
        (x0, x1), (y0, y1), (z0, z1) = self.bbox
        full[..., x0:x1, y0:y1, z0:z1] = crop
        return from_canonical(full, np.asarray(self.affine))

    def _axial_axis(self) -> tuple[int, bool]:
        """(input axis that becomes the canonical S axis, whether it is flipped)."""
        ornt = nio.io_orientation(np.asarray(self.affine))
        axis = int(np.nonzero(ornt[:, 0] == 2)[0][0])
        return axis, bool(ornt[axis, 1] < 0)

    def cache_slice(self, index: int) -> int | None:
        """Cached slice number of the input's axial slice ``index`` (None if outside the crop)."""
        axis, flipped = self._axial_axis()
        z = (self.shape[axis] - 1 - index if flipped else index) - self.bbox[2][0]
        return z if 0 <= z < self.crop_shape[2] else None

    def input_slice(self, z: int) -> int:
        """The input's axial slice index of cached slice ``z`` (inverse of :meth:`cache_slice`)."""
        axis, flipped = self._axial_axis()
        canonical = z + self.bbox[2][0]
        return self.shape[axis] - 1 - canonical if flipped else canonical

    def slice_spacing(self, size: int) -> tuple[float, float]:
        """In-plane pixel spacing (mm) of a cached slice, once the square box is resized to ``size``."""
        (sx0, sx1), (sy0, sy1) = self.square
        return (self.spacing[0] * (sx1 - sx0) / size, self.spacing[1] * (sy1 - sy0) / size)


def make_geometry(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, shape: tuple[int, int, int]) -> CaseGeometry:
    """Compute the geometry of a canonical ``image`` (C, X, Y, Z): crop to the non-zero box of all
    channels (and the label, so no annotation is ever cut away)."""
    mask = np.any(image != 0, axis=0, keepdims=True)
    if label is not None:
        mask |= label[None] > 0
    if not mask.any():
        start, end = [0, 0, 0], list(image.shape[1:])
    else:
        start, end = generate_spatial_bounding_box(mask)
    bbox = tuple((int(a), int(b)) for a, b in zip(start, end))
    side = max(bbox[0][1] - bbox[0][0], bbox[1][1] - bbox[1][0])
    square = []
    for a, b in bbox[:2]:
        lo = a - (side - (b - a)) // 2
        square.append((lo, lo + side))
    return CaseGeometry(
        shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        affine=np.asarray(affine).tolist(),
        canonical_shape=tuple(int(s) for s in image.shape[1:]),  # type: ignore[arg-type]
        spacing=canonical_spacing(affine),
        bbox=bbox,  # type: ignore[arg-type]
        square=tuple(square),  # type: ignore[arg-type]
    )


def square_slices(crop: np.ndarray, geom: CaseGeometry, pad_value: np.ndarray | float = 0.0) -> np.ndarray:
    """Pad a cropped volume (C, X', Y', Z') to the square in-plane box; returns (Z', C, side, side)."""
    (x0, x1), (y0, y1), _ = geom.bbox
    (sx0, sx1), (sy0, sy1) = geom.square
    c, _, _, nz = crop.shape
    out = np.empty((nz, c, sx1 - sx0, sy1 - sy0), dtype=crop.dtype)
    out[...] = np.asarray(pad_value, dtype=crop.dtype).reshape(1, -1, 1, 1) if np.ndim(pad_value) else pad_value
    out[:, :, x0 - sx0 : x1 - sx0, y0 - sy0 : y1 - sy0] = np.moveaxis(crop, -1, 0)
    return out


def unsquare_slices(slices: np.ndarray, geom: CaseGeometry) -> np.ndarray:
    """Inverse of :func:`square_slices`: (Z', C, side, side) -> (C, X', Y', Z')."""
    (x0, x1), (y0, y1), _ = geom.bbox
    (sx0, _), (sy0, _) = geom.square
    inner = slices[:, :, x0 - sx0 : x1 - sx0, y0 - sy0 : y1 - sy0]
    return np.ascontiguousarray(np.moveaxis(inner, 0, -1))


def resize_stack(stack: torch.Tensor, size: int | tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a stack of 2D images (N, C, H, W) to ``size``.

    ``mode`` is ``"bilinear"`` (anti-aliased when shrinking, as torchvision/MONAI do for images) or
    ``"nearest"`` (label maps). Done on the whole stack at once: one call instead of one per slice.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(stack.shape[-2:]) == size:
        return stack
    if mode == "nearest":
        return F.interpolate(stack, size=size, mode="nearest-exact")
    shrink = stack.shape[-1] > size[-1] or stack.shape[-2] > size[-2]
    return F.interpolate(stack, size=size, mode="bilinear", align_corners=False, antialias=shrink)
