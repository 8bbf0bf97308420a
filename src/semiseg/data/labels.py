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


#: BraTS region names as nnU-Net's BraTS conversion writes them -> the short names BraTS reports use
REGION_ABBREVIATIONS = {
    "whole tumor": "WT", "whole tumour": "WT", "tumor core": "TC", "tumour core": "TC",
    "enhancing tumor": "ET", "enhancing tumour": "ET",
}


def _label_value(name: str, value: Any, source: str) -> int | tuple[int, ...]:
    def bad() -> SemisegInputError:
        return SemisegInputError(source, f"label {name!r} has value {value!r}; expected an integer or a list of integers")

    if isinstance(value, bool):
        raise bad()
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise bad()


def scheme_from_dataset_json(
    labels: dict[str, Any], source: str = "dataset.json", regions_class_order: list[int] | None = None
) -> LabelScheme:
    """Build a scheme from nnU-Net's ``labels`` entry (and ``regions_class_order``).

    As in nnU-Net, a dataset is region-based when some label lists several values: then every
    entry but background is a region (e.g. nnU-Net's BraTS conversion: ``"whole tumor": [1, 2, 3]``,
    ``"tumor core": [2, 3]``, ``"enhancing tumor": [3]``), the classes are the values the regions are
    made of, and each class is named after the region ``regions_class_order`` paints it with (else
    the smallest region holding it). Otherwise every entry is one class, evaluated as a region.
    BraTS region names are shortened to WT, TC and ET.
    """
    entries = {name: _label_value(name, value, source) for name, value in labels.items()}
    background = [name for name, v in entries.items() if v in (0, (0,))]
    if not background:
        raise SemisegInputError(source, "labels must include a background class with value 0")
    foreground = {name: ((v,) if isinstance(v, int) else v) for name, v in entries.items() if name not in background}
    if not any(len(v) > 1 for v in foreground.values()):
        classes: dict[int, str] = {0: background[0]}
        for name, (v,) in foreground.items():
            if v in classes:
                raise SemisegInputError(source, f"labels {classes[v]!r} and {name!r} both have value {v}")
            classes[v] = name
        values = tuple(sorted(classes))
        regions = {classes[v]: (v,) for v in values if v != 0}
        name = "binary" if values == BINARY.values else "dataset"
        return LabelScheme(name, values, tuple(classes[v] for v in values), regions)
    values = (0, *sorted({v for r in foreground.values() for v in r} - {0}))
    names = list(foreground)
    if regions_class_order is not None:
        order = list(regions_class_order)
        if len(order) != len(names) or not all(isinstance(v, int) and v in values for v in order):
            raise SemisegInputError(
                source, f"regions_class_order {order} must give one label value of {list(values)} for each of the {len(names)} regions"
            )
        painted = {v: names[i] for i, v in enumerate(order)}  # later regions overwrite earlier ones, as in nnU-Net
    else:
        painted = {v: min((n for n in names if v in foreground[n]), key=lambda n: len(foreground[n])) for v in values[1:]}
    class_names = (background[0], *(painted.get(v, f"label {v}") for v in values[1:]))
    regions = {REGION_ABBREVIATIONS.get(n.strip().lower(), n): r for n, r in foreground.items()}
    return LabelScheme("dataset-regions", values, class_names, regions)


def get_scheme(name: str) -> LabelScheme:
    """Return a built-in scheme by name (``brats2021``, ``brats2023``, ``binary``)."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise SemisegInputError(None, f"unknown label scheme {name!r}; choose one of {sorted(SCHEMES)}") from None
