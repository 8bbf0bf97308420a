"""Patient-level splits and labelled subsets.

Splits are always by patient: every slice of a patient is on the same side, so no patient leaks
between training and test. Labelled subsets are drawn from the training patients only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from semiseg.errors import SemisegInputError

#: the paper's slice pool: 7 axial slices per patient spread over the central part of the brain
#: (BraTS slices 70..100 of 155), expressed as fractions of the patient's foreground z-extent
POOL_SLICES = 7
POOL_RANGE = (0.40, 0.70)


def patient_split(labelled_ids: Sequence[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split labelled patients into (train, test); test gets ``round(test_fraction * n)`` patients,
    at least one when ``test_fraction`` > 0 and there are two or more patients."""
    if not 0.0 <= test_fraction < 1.0:
        raise SemisegInputError(None, f"test fraction must be in [0, 1), got {test_fraction}")
    ids = sorted(labelled_ids)
    n_test = int(round(test_fraction * len(ids)))
    if test_fraction > 0 and len(ids) >= 2:
        n_test = min(max(n_test, 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    test = sorted(ids[i] for i in order[:n_test])
    train = sorted(ids[i] for i in order[n_test:])
    return train, test


def slice_pool(n_slices: int, count: int = POOL_SLICES, span: tuple[float, float] = POOL_RANGE) -> list[int]:
    """Indices of ``count`` evenly spaced slices between fractions ``span`` of ``n_slices``."""
    lo, hi = span
    idx = np.linspace(lo * (n_slices - 1), hi * (n_slices - 1), count)
    return sorted(set(int(round(i)) for i in idx))


def choose_subset(items: Sequence, n: int, seed: int, what: str = "labelled items") -> list:
    """``n`` items drawn without replacement with ``seed`` (nested: the first n of a larger draw)."""
    if n < 1:
        raise SemisegInputError(None, f"the number of {what} must be at least 1, got {n}")
    if n > len(items):
        raise SemisegInputError(None, f"asked for {n} {what} but only {len(items)} are available")
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in sorted(order[:n])]
