"""Label schemes: which label values a dataset uses, how they map to the network's classes, and
which regions are evaluated.

Networks predict contiguous class indices ``0..C-1``; files hold the dataset's own values
(BraTS 2021 uses 0/1/2/4, BraTS 2023 0/1/2/3). A scheme converts both ways and defines regions
(sets of values) that metrics are computed on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semiseg.errors import SemisegInputError


@dataclass(frozen=True)
class LabelScheme:
    """A label scheme.

    Args:
        name: short identifier (``brats2021``, ``brats2023``, ``binary`` or a dataset's name).
        values: label values as stored in files; position ``i`` is network class ``i``.
        class_names: one name per value.
        regions: evaluated regions, name -> label values that make it up.
    """

    name: str
    values: tuple[int, ...]
    class_names: tuple[str, ...]
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.values) != len(self.class_names):
            raise ValueError(f"{len(self.values)} values but {len(self.class_names)} class names")
        if self.values[0] != 0:
            raise ValueError(f"the first label value must be background 0, got {self.values[0]}")

    @property
    def num_classes(self) -> int:
        return len(self.values)

    def to_classes(self, labels: np.ndarray) -> np.ndarray:
        """Map label values to class indices (uint8); values must belong to the scheme."""
        lut = np.full(int(max(self.values)) + 1, 255, dtype=np.uint8)
        lut[list(self.values)] = np.arange(len(self.values), dtype=np.uint8)
        if labels.size and (labels.min() < 0 or labels.max() >= lut.size):
            raise ValueError(f"label values outside {self.values}")
        classes = lut[labels]
        if (classes == 255).any():
            raise ValueError(f"label values outside {self.values}")
        return classes

    def to_values(self, classes: np.ndarray) -> np.ndarray:
        """Map class indices back to the scheme's label values (uint8 when they fit)."""
        dtype = np.uint8 if max(self.values) < 256 else np.int16
        return np.asarray(self.values, dtype=dtype)[classes]

    def region_mask(self, labels: np.ndarray, region: str) -> np.ndarray:
        """Boolean mask of ``region`` in a label-value array."""
        return np.isin(labels, self.regions[region])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "values": list(self.values),
            "class_names": list(self.class_names),
            "regions": {k: list(v) for k, v in self.regions.items()},
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "LabelScheme":
        return cls(
            name=obj["name"],
            values=tuple(int(v) for v in obj["values"]),
            class_names=tuple(obj["class_names"]),
            regions={k: tuple(int(x) for x in v) for k, v in obj["regions"].items()},
        )


BRATS2021 = LabelScheme(
    name="brats2021",
    values=(0, 1, 2, 4),
    class_names=("background", "necrotic core", "oedema", "enhancing tumour"),
    regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
)

BRATS2023 = LabelScheme(
    name="brats2023",
    values=(0, 1, 2, 3),
    class_names=("background", "necrotic core", "oedema", "enhancing tumour"),
    regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
)

BINARY = LabelScheme(
    name="binary",
    values=(0, 1),
    class_names=("background", "foreground"),
    regions={"foreground": (1,)},
)

SCHEMES = {s.name: s for s in (BRATS2021, BRATS2023, BINARY)}


def scheme_from_dataset_json(labels: dict[str, Any], source: str = "dataset.json") -> LabelScheme:
    """Build a scheme from nnU-Net's ``labels`` entry.

    Integer entries are classes and each is also evaluated as a region; list entries (nnU-Net's
    region-based training, e.g. ``"whole tumour": [1, 2, 3]``) are regions only.
    """
    classes: dict[int, str] = {}
    regions: dict[str, tuple[int, ...]] = {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, (int, list)):
            raise SemisegInputError(source, f"label {name!r} has value {value!r}; expected an integer or a list")
        if isinstance(value, int):
            classes[value] = name
        else:
            regions[name] = tuple(int(v) for v in value)
    if 0 not in classes:
        raise SemisegInputError(source, "labels must include a background class with value 0")
    values = tuple(sorted(classes))
    if not regions:
        regions = {classes[v]: (v,) for v in values if v != 0}
    unknown = sorted({v for r in regions.values() for v in r} - set(values))
    if unknown:
        raise SemisegInputError(source, f"regions use label values {unknown} that are not classes")
    if values == BINARY.values and set(regions) == {classes[1]}:
        return LabelScheme("binary", values, tuple(classes[v] for v in values), regions)
    return LabelScheme("dataset", values, tuple(classes[v] for v in values), regions)


def get_scheme(name: str) -> LabelScheme:
    """Return a built-in scheme by name (``brats2021``, ``brats2023``, ``binary``)."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise SemisegInputError(None, f"unknown label scheme {name!r}; choose one of {sorted(SCHEMES)}") from None
