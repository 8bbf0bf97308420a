"""Synthetic 4-contrast brain MRI with glioma-like tumours: semiseg's built-in dataset.

The phantom is the default data of the demo, the tests and the benchmarks, so it has to be hard
in the same ways real BraTS data is hard for a model trained on a handful of labelled slices.
A phantom in which "bright on FLAIR" means oedema and "bright on T1ce" means enhancing tumour is
solved by a threshold and cannot tell a few-label method from a many-label one. Every design
choice below therefore either adds anatomy that a network must learn to ignore or makes
intensities vary between cases.

Tissue model
    A rotated ellipsoidal head (semi-axes varying about +-10 % per case) is layered by depth
    below its surface: scalp fat, skull (varying thickness), enhancing dura, a thin CSF layer,
    then a folded cortex. Folding comes from a smooth random field G drawn on a sphere (so it is
    nearly constant along rays from the centre): its zero set gives radial sulci (thin CSF
    clefts) and the grey/white boundary is pushed deeper near them, so white matter sends fingers
    into the gyri. Inside lie a midline fissure, a pair of curved lateral
    ventricles (size varies: atrophy), a third ventricle, deep grey nuclei and, as label-0
    distractors, choroid plexus and pial vessels (bright on T1ce like enhancing tumour) and
    periventricular white-matter hyperintensities (bright on FLAIR/T2 like oedema).

Tumour model
    0 to 3 lesions per case (about 10 % without tumour), centred in white matter deep enough for
    the core to fit, mostly in the middle third of the brain's height; satellite foci are kept
    apart where possible. Each lesion has a lobulated core (ellipsoid distance times a smooth
    random field) of radius 5 to 25 mm, pushes nearby anatomy aside (a radial warp of the tissue
    map) and is one of four kinds, so that sub-region make-up varies: ring-enhancing (a rim a few
    mm thick, sometimes patchy, around necrosis), solid enhancing nodule (mostly small lesions),
    non-enhancing (necrotic/non-enhancing core only) or mixed (enhancing islands in the core).
    Oedema is a larger, finger-like region that spreads through white matter and mostly spares
    cortex and CSF; its hyperintensity fades towards its edge so its boundary is uncertain, as in
    real annotations.

Acquisition model
    Tissue means get +-15 % per-case jitter (+-10 % more per lesion; contrasts every real scan
    shows, enhancement and grey/white, keep a minimum ratio), a few % of smooth texture
    (more inside tumours), partial-volume blur, a smooth multiplicative bias field (5 to 30 %),
    a per-case gamma (0.7 to 1.4) on the normalised image, Rician noise (2 to 8 % of white
    matter) and an arbitrary scanner scale (300 to 3000), then rounding to integer units.
    Air is exactly 0 in every modality (as in background-masked data) and noise is added only
    inside the head.

Labels follow BraTS 2021 (0 background, 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing
tumour) and are painted from the same masks as the intensities, so they are exact.
:func:`synthesize_case_with_tissue` also returns the tissue map, e.g. to see which false
positives fall on vessels or white-matter hyperintensities.

Smooth random fields are cubic B-splines of coarse white noise (see :func:`smooth_field`); a
default 128x128x96 case takes about a second on one core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from semiseg.data.io import write_nifti
from semiseg.errors import SemisegInputError
from semiseg.files import atomic_dir, check_output

DEFAULT_SHAPE: tuple[int, int, int] = (128, 128, 96)
DEFAULT_SPACING: tuple[float, float, float] = (1.5, 1.5, 1.5)
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
T1, T1CE, T2, FLAIR = range(4)

# Tissue classes of the anatomical map (ED/ET/NCR only ever appear in the tumour paint step).
AIR, SCALP, SKULL, DURA, CSF, GM, WM, DEEP_GM, CHOROID, VESSEL, WMH, ED, ET, NCR = range(14)

#: mean intensity of each tissue (rows) in t1, t1ce, t2, flair (columns), before per-case jitter
BASE_CONTRAST = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # air
        [0.95, 1.00, 0.70, 0.60],  # scalp fat (enhances slightly on t1ce)
        [0.08, 0.08, 0.05, 0.05],  # skull
        [0.30, 1.05, 0.30, 0.35],  # dura: enhances, a T1ce distractor at the brain's edge
        [0.20, 0.20, 1.00, 0.12],  # CSF: suppressed on FLAIR
        [0.60, 0.62, 0.55, 0.60],  # grey matter
        [0.85, 0.85, 0.35, 0.45],  # white matter
        [0.70, 0.70, 0.45, 0.55],  # deep grey nuclei
        [0.45, 1.25, 0.60, 0.55],  # choroid plexus: enhances like tumour but is label 0
        [0.40, 1.50, 0.25, 0.30],  # vessels and sinuses: enhance, dark flow void on T2
        [0.72, 0.72, 0.75, 0.90],  # white-matter hyperintensity: oedema look-alike on FLAIR/T2
        [0.55, 0.55, 0.85, 0.95],  # oedema
        [0.60, 1.25, 0.65, 0.75],  # enhancing tumour
        [0.35, 0.30, 0.95, 0.55],  # necrotic core
    ],
    dtype=np.float64,
)

#: an adult head's semi-axes (x left-right, y posterior-anterior, z inferior-superior) in mm;
#: anatomy is laid out in this "template" frame and mm sizes scale with the head that fits the FOV
NOMINAL_HEAD_MM = np.array([66.0, 82.0, 68.0])
#: how far the head's axes vary between cases
HEAD_JITTER = 0.10

LESION_KINDS = ("ring", "solid", "nonenhancing", "mixed")
#: kind probabilities for small and for large (core radius > LARGE_LESION_MM) lesions: big
#: enhancing tumours outgrow their blood supply and necrose, so solid enhancement is a small-lesion look
LESION_KIND_P = {"small": (0.35, 0.3, 0.2, 0.15), "large": (0.6, 0.03, 0.17, 0.2)}
LARGE_LESION_MM = 14.0
#: lesions per case: 0 (no tumour) to 3
LESION_COUNT_P = (0.1, 0.6, 0.2, 0.1)


@dataclass
class PhantomCase:
    """One synthetic case: four co-registered contrasts, BraTS 2021 labels and the affine."""

    case_id: str
    images: dict[str, np.ndarray]
    label: np.ndarray
    affine: np.ndarray


# ------------------------------------------------------------------------------------------------
# smooth random fields


def _bspline_matrix(n: int, step: float) -> np.ndarray:
    """(n, knots) cubic B-spline weights mapping a coarse lattice (one knot per ``step`` voxels) to n voxels."""
    step = max(step, 1.0)
    knots = int(np.ceil((n - 1) / step)) + 4
    t = np.abs(np.arange(n)[:, None] / step + 1.5 - np.arange(knots)[None, :])
    w = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return w.astype(np.float32)


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], scale_mm: float
) -> np.ndarray:
    """A zero-mean, roughly unit-variance smooth random field (float32, ``shape``) with blobs about ``scale_mm`` across.

    White noise on a coarse lattice is interpolated with cubic B-splines, applied separably as three
    small matrix products: C2-smooth and several times faster than ``ndimage.zoom(order=3)``.
    """
    mats = [_bspline_matrix(n, scale_mm / s) for n, s in zip(shape, spacing)]
    coeffs = rng.standard_normal([m.shape[1] for m in mats], dtype=np.float32)
    f = np.tensordot(mats[0], coeffs, axes=(1, 0))
    f = np.tensordot(mats[1], f, axes=(1, 1)).transpose(1, 0, 2)
    f = np.tensordot(f, mats[2], axes=(2, 1))
    # divide by the expected std of a B-spline sum of unit noise, so fields of any size share a scale
    norm = np.prod([np.sqrt((m.astype(np.float64) ** 2).sum(1).mean()) for m in mats])
    return np.ascontiguousarray(f / np.float32(norm))


def _rotation(rng: np.random.Generator, max_deg: tuple[float, float, float]) -> np.ndarray:
    """A 3x3 rotation with angles about x, y, z drawn uniformly within +-``max_deg``."""
    ax, ay, az = np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(max_deg))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rotated(offsets: list[np.ndarray], rot: np.ndarray) -> np.ndarray:
    """(3, *shape) float32 coordinates ``rot @ p`` from three broadcastable 1D offset arrays (mm)."""
    grids = [o.astype(np.float32) for o in np.ix_(*offsets)]
    return np.stack([sum(np.float32(rot[j, k]) * grids[k] for k in range(3)) for j in range(3)])


# ------------------------------------------------------------------------------------------------
# anatomy


@dataclass
class _Head:
    """Where every voxel lies relative to the head.

    Attributes:
        u: (3, *shape) head-frame coordinates (x right, y anterior, z superior) rescaled to the nominal
            head ("template mm"), so anatomy placed in them follows each head's size and shape.
        depth: mm below the scalp surface along the ray from the head centre (negative outside).
        scale: head size relative to nominal; every mm size (layers, lesions) is multiplied by it.
    """

    u: np.ndarray
    depth: np.ndarray
    scale: float

    @property
    def mask(self) -> np.ndarray:
        return self.depth > 0


def _head_geometry(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> _Head:
    """Draw the head's size, shape, position and pose; return per-voxel head coordinates and depth."""
    half_fov = np.asarray(shape) * np.asarray(spacing) / 2
    # shrink the template only when the FOV is too small for it (tiny test volumes)
    scale = float(min(1.0, *(0.95 * half_fov[:2] / (NOMINAL_HEAD_MM[:2] * (1 + HEAD_JITTER)))))
    axes = NOMINAL_HEAD_MM * scale * rng.uniform(1 - HEAD_JITTER, 1 + HEAD_JITTER, 3)
    # the vertex sits just inside the top of the FOV and the skull base is cut, as in a brain scan
    centre = np.array([*rng.uniform(-0.03, 0.03, 2) * half_fov[:2], 0.9 * half_fov[2] - axes[2]])
    rot = _rotation(rng, (8.0, 5.0, 10.0))
    offsets = [(np.arange(n) - (n - 1) / 2) * s - c for n, s, c in zip(shape, spacing, centre)]
    q = _rotated(offsets, rot)
    r = np.sqrt(sum((q[i] / np.float32(axes[i])) ** 2 for i in range(3)))
    # a gentle low-frequency dent/bulge so heads are not perfect ellipsoids
    r *= 1 + np.float32(0.04) * smooth_field(rng, shape, spacing, 45.0 * scale)
    norm_q = np.sqrt((q**2).sum(0))
    depth = norm_q * (1 / np.maximum(r, np.float32(1e-3)) - 1)
    u = q * (NOMINAL_HEAD_MM / axes).astype(np.float32)[:, None, None, None]
    return _Head(u=u, depth=depth.astype(np.float32), scale=scale)


@dataclass
class _Layers:
    """Depths (mm below the scalp surface) of the boundaries between the head's layers."""

    skull: float  # scalp/skull boundary
    dura: np.ndarray  # skull/dura (the skull's thickness varies, and the layers below follow it)
    csf: np.ndarray  # dura/CSF
    pial: np.ndarray  # CSF/brain surface
    gm: float  # cortical thickness
    sulcus: float  # sulcal depth


def _draw_layers(rng: np.random.Generator, head: _Head, shape: tuple[int, ...], spacing: tuple[float, ...]) -> _Layers:
    """Draw layer thicknesses (scaled to the head); the skull's thickness varies smoothly over the head."""
    s = head.scale
    scalp = rng.uniform(3.5, 6.0) * s
    skull = rng.uniform(4.0, 7.0) * s * (1 + 0.25 * smooth_field(rng, shape, spacing, 40.0 * s))
    dura = scalp + skull
    csf = dura + rng.uniform(1.2, 2.0) * s
    pial = csf + rng.uniform(1.5, 3.5) * s  # a thicker CSF layer reads as atrophy
    gm, sulcus = rng.uniform(2.5, 3.8) * s, rng.uniform(8.0, 15.0) * s
    return _Layers(skull=scalp, dura=dura, csf=csf, pial=pial, gm=gm, sulcus=sulcus)


def _surface_field(rng: np.random.Generator, head: _Head, where: np.ndarray, scale_mm: float) -> np.ndarray:
    """A smooth random field that is constant along rays from the head centre, at the voxels ``where`` (1D float32).

    It is drawn on a sphere (in template mm) and read back along each voxel's direction, so its
    zero set consists of sheets running perpendicular to the brain surface: sulci, not random folds.
    """
    radius, step = 70.0, scale_mm / 3
    n = int(np.ceil(2 * radius / step)) + 3
    sphere = smooth_field(rng, (n, n, n), (step, step, step), scale_mm)
    u = head.u[:, where]
    on_sphere = u * (np.float32(radius) / np.maximum(np.sqrt((u**2).sum(0)), np.float32(1e-3)))
    return ndi.map_coordinates(sphere, (on_sphere + np.float32(radius)) / np.float32(step) + 1, order=1)


def _cortex(rng: np.random.Generator, head: _Head, layers: _Layers, tissue: np.ndarray,
            shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    """Fill the brain with folded cortex over white matter, in place.

    The zero set of a field G (constant along rays) gives radial sheets; within the cortex these
    become sulci (CSF clefts lined by grey matter), and the grey/white boundary drops by the sulcal
    depth near them, so white matter reaches up into the gyri between sulci.
    """
    d = head.depth
    brain = d >= layers.pial
    tissue[brain] = WM
    band = brain & (d < layers.pial + layers.gm + 1.3 * layers.sulcus)
    # mostly radial, plus a 3D part so that sulci bend and branch with depth
    g = _surface_field(rng, head, band, 5.5)
    g = np.abs(g + np.float32(0.4) * smooth_field(rng, shape, spacing, 6.0 * head.scale)[band])
    # sulcal depth varies smoothly over the brain, as real sulci do
    variation = smooth_field(rng, shape, spacing, 30.0 * head.scale)[band]
    sulcus = np.float32(layers.sulcus) * np.clip(1 + 0.3 * variation, 0.4, 1.6)
    # a smooth step in |G|: deep grey matter next to a sulcus, a thin ribbon on the gyral crowns
    wm_depth = layers.gm + sulcus / (1 + np.exp((g - np.float32(0.8)) / np.float32(0.12)))
    wm_depth += layers.pial[band]
    db = d[band]
    sub = np.where(db < wm_depth, GM, WM).astype(np.uint8)
    sub[(g < 0.18) & (db < wm_depth - layers.gm - 0.1 * sulcus)] = CSF
    tissue[band] = sub


def _fissure(head: _Head, layers: _Layers, tissue: np.ndarray) -> None:
    """Cut the interhemispheric fissure (CSF lined by grey matter) in place, interrupted by the corpus callosum."""
    ux, uy, uz = head.u
    callosum = (ux / 30) ** 2 + ((uy + 3) / 36) ** 2 + ((uz - 2) / 22) ** 2 < 1
    near = ~callosum & (head.depth >= layers.pial)
    tissue[near & (np.abs(ux) < 1.2 + layers.gm) & (tissue == WM)] = GM
    tissue[near & (np.abs(ux) < 1.2)] = CSF


def _ventricles(rng: np.random.Generator, head: _Head, tissue: np.ndarray,
                shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """Paint the lateral ventricles, third ventricle and choroid plexus in place.

    Each lateral ventricle is an ellipsoid bent along a curved centre line (diverging posteriorly,
    arching downwards at both ends) so that axial slices show the familiar butterfly shape.
    Returns the ventricles' normalised ellipsoid distance (< 1 inside) for placing
    periventricular lesions.
    """
    ux, uy, uz = head.u
    atrophy = rng.uniform(0.8, 1.6)
    ax, ay, az = 4.5 * atrophy, rng.uniform(24.0, 30.0), rng.uniform(7.0, 10.0) * np.sqrt(atrophy)
    y0, z0 = rng.uniform(-6.0, 2.0), rng.uniform(9.0, 15.0)
    x0 = ax + rng.uniform(1.5, 3.0)  # leaves a septum between the two
    wobble = np.float32(0.12) * smooth_field(rng, shape, spacing, 8.0 * head.scale)
    dy = uy - np.float32(y0)
    xc = np.float32(x0) + np.float32(0.008) * np.minimum(dy + 8, 0) ** 2
    zc = np.float32(z0) - np.float32(0.006) * dy**2
    dist = np.full(uy.shape, np.inf, dtype=np.float32)
    for side in (-1.0, 1.0):
        e = np.sqrt(((ux - side * xc) / ax) ** 2 + (dy / ay) ** 2 + ((uz - zc) / az) ** 2) * (1 + wobble)
        np.minimum(dist, e, out=dist)
    brain = tissue >= CSF
    tissue[brain & (dist < 1)] = CSF
    third = (np.abs(ux) < 1.5 * np.sqrt(atrophy)) & (np.abs(uy + 6) < 12) & (np.abs(uz - 2) < 9)
    tissue[brain & third] = CSF
    plexus = smooth_field(rng, shape, spacing, 4.0 * head.scale)
    tissue[(dist < 0.9) & (dy < -0.35 * ay) & (plexus > 0.3)] = CHOROID
    return dist


def _deep_nuclei(rng: np.random.Generator, head: _Head, tissue: np.ndarray) -> None:
    """Paint thalami, lentiform and caudate nuclei (grey matter inside the white matter) in place."""
    ux, uy, uz = head.u
    for side in (-1.0, 1.0):
        for centre, axes in (((11, -12, 2), (8, 13, 9)), ((23, 3, 2), (6, 14, 10)), ((10, 16, 10), (4, 8, 7))):
            c = np.asarray(centre, float) * (side, 1, 1) + rng.uniform(-1.5, 1.5, 3)
            a = np.asarray(axes, float) * rng.uniform(0.85, 1.15, 3)
            inside = ((ux - c[0]) / a[0]) ** 2 + ((uy - c[1]) / a[1]) ** 2 + ((uz - c[2]) / a[2]) ** 2 < 1
            tissue[inside & (tissue == WM)] = DEEP_GM


def _box(centre: np.ndarray, radius_mm: float, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[slice, ...]:
    """Voxel slices of the box of half-size ``radius_mm`` around voxel ``centre``, clipped to the volume."""
    half = [int(np.ceil(radius_mm / s)) + 1 for s in spacing]
    return tuple(slice(max(0, int(c) - h), min(n, int(c) + h + 1)) for c, h, n in zip(centre, half, shape))


def _box_offsets(box: tuple[slice, ...], centre: np.ndarray, spacing: tuple[float, ...]) -> list[np.ndarray]:
    """1D mm offsets from voxel ``centre`` along each axis of ``box``."""
    return [(np.arange(b.start, b.stop) - c) * s for b, c, s in zip(box, centre, spacing)]


def _random_voxel(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray | None:
    """Index (3,) of a uniformly chosen True voxel of ``mask``, or None if it is empty."""
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return None
    return np.array(np.unravel_index(flat[rng.integers(flat.size)], mask.shape))


def _blobs(rng: np.random.Generator, tissue: np.ndarray, candidates: np.ndarray, count: int,
           radius_mm: tuple[float, float], value: int, paint_over: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    """Paint ``count`` small irregular ellipsoids of class ``value`` centred in ``candidates``, in place."""
    for _ in range(count):
        centre = _random_voxel(rng, candidates)
        if centre is None:
            return
        radius = rng.uniform(*radius_mm)
        axes = radius * rng.uniform(0.6, 1.4, 3)
        box = _box(centre, float(axes.max()), tissue.shape, spacing)
        w = _rotated(_box_offsets(box, centre, spacing), _rotation(rng, (90, 90, 90)))
        inside = ((w / axes[:, None, None, None].astype(np.float32)) ** 2).sum(0) < 1
        sub = tissue[box]
        sub[inside & np.isin(sub, paint_over)] = value


def _distractors(rng: np.random.Generator, head: _Head, layers: _Layers, tissue: np.ndarray, ventricle_dist: np.ndarray,
                 shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    """Paint label-0 structures that mimic tumour in one contrast, in place.

    Pial vessels are the intersection of two random surfaces (zero sets of two fields), which gives
    thin branching tubes for free; the superior sagittal sinus and a few vessel cross-sections add
    T1ce-bright blobs. Periventricular caps and white-matter hyperintensities are FLAIR-bright like
    oedema. Without these, "bright on T1ce" alone would mean enhancing tumour.
    """
    s = head.scale
    fa = smooth_field(rng, shape, spacing, 7.0 * s)
    fb = smooth_field(rng, shape, spacing, 7.0 * s)
    d = head.depth
    superficial = (d >= layers.csf) & (d < layers.pial + layers.sulcus)
    tubes = (np.abs(fa) < 0.2) & (np.abs(fb) < 0.2)
    tissue[tubes & superficial & np.isin(tissue, (CSF, GM))] = VESSEL
    # sparser deep medullary veins in the white matter: sharper tubes of the same fields
    tissue[(np.abs(fa) < 0.1) & (np.abs(fb) < 0.1) & (d >= layers.pial + layers.sulcus) & (tissue == WM)] = VESSEL
    sinus = (np.abs(head.u[0]) < 3.5) & (d >= layers.dura - 1.0 * s) & (d < layers.pial) & (head.u[2] > -15)
    tissue[sinus] = VESSEL
    brain = d >= layers.pial
    _blobs(rng, tissue, brain & np.isin(tissue, (GM, WM, CSF)), int(rng.integers(2, 7)), (1.5 * s, 3.0 * s),
           VESSEL, (GM, WM, CSF, DEEP_GM), spacing)
    if rng.random() < 0.6:  # periventricular caps at the horns, common in older patients
        tissue[(ventricle_dist >= 1) & (ventricle_dist < 1.18) & (tissue == WM) & (np.abs(head.u[1]) > 18)] = WMH
    periventricular = (ventricle_dist > 1.1) & (ventricle_dist < 2.2) & (tissue == WM)
    _blobs(rng, tissue, periventricular, int(rng.integers(1, 6)), (1.5 * s, 5.0 * s), WMH, (WM,), spacing)
    _blobs(rng, tissue, brain & (tissue == WM), int(rng.integers(0, 4)), (1.5 * s, 4.0 * s), WMH, (WM,), spacing)


def build_anatomy(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float]
                  ) -> tuple[np.ndarray, _Head, _Layers]:
    """Draw a head; return its uint8 tissue map (classes AIR..WMH), geometry and layer depths."""
    head = _head_geometry(rng, shape, spacing)
    layers = _draw_layers(rng, head, shape, spacing)
    d = head.depth
    tissue = np.zeros(shape, np.uint8)
    tissue[d > 0] = SCALP
    tissue[d >= layers.skull] = SKULL
    tissue[d >= layers.dura] = DURA
    tissue[d >= layers.csf] = CSF
    _cortex(rng, head, layers, tissue, shape, spacing)
    _fissure(head, layers, tissue)
    _deep_nuclei(rng, head, tissue)
    ventricle_dist = _ventricles(rng, head, tissue, shape, spacing)
    _distractors(rng, head, layers, tissue, ventricle_dist, shape, spacing)
    return tissue, head, layers


# ------------------------------------------------------------------------------------------------
# tumours


@dataclass
class _Lesion:
    """One lesion's sub-regions inside its box (boolean masks of the box's shape)."""

    box: tuple[slice, ...]
    centre: np.ndarray  # voxel index
    extent: float  # mm, the oedema's nominal radius
    kind: str
    oedema: np.ndarray
    oedema_weight: np.ndarray  # 1 near the core fading to ~0.5 at the edge: how oedematous
    enhancing: np.ndarray
    necrotic: np.ndarray


def _sample_lesion_centre(rng: np.random.Generator, candidates: np.ndarray) -> np.ndarray | None:
    """Voxel index of a True voxel of ``candidates``, usually in the middle third of their height."""
    z_any = np.flatnonzero(candidates.any(axis=(0, 1)))
    if z_any.size == 0:
        return None
    if rng.random() < 0.75:
        lo, hi = z_any[0], z_any[-1]
        third = (hi - lo) / 3
        slab = np.zeros_like(candidates)
        slab[:, :, int(lo + third): int(np.ceil(hi - third)) + 1] = True
        centre = _random_voxel(rng, candidates & slab)
        if centre is not None:
            return centre
    return _random_voxel(rng, candidates)


def _mass_effect(tissue: np.ndarray, brain: np.ndarray, centre: np.ndarray, radius: float, strength: float,
                 spacing: tuple[float, ...]) -> None:
    """Push brain anatomy radially away from ``centre`` in place (tissue at r is fetched from r*(1-k*exp(-(r/L)^2)))."""
    length = 1.3 * radius
    box = _box(centre, 3 * length, tissue.shape, spacing)
    offsets = _box_offsets(box, centre, spacing)
    r2 = sum(o.astype(np.float32) ** 2 for o in np.ix_(*offsets))
    shrink = 1 - np.float32(strength) * np.exp(-r2 / np.float32(length**2))
    idx = np.ix_(*[np.arange(b.start, b.stop) for b in box])
    src = [c + (i - c) * shrink for i, c in zip(idx, centre)]
    warped = ndi.map_coordinates(tissue, src, order=0, mode="nearest", output=np.uint8)
    # the skull does not move: only voxels inside the pial surface are replaced
    sub = tissue[box]
    sub[brain[box]] = warped[brain[box]]


def _lesion_masks(rng: np.random.Generator, tissue: np.ndarray, brain: np.ndarray, centre: np.ndarray, radius: float,
                  scale: float, spacing: tuple[float, ...]) -> _Lesion:
    """Draw one lesion's kind, shape and sub-regions around voxel ``centre`` (core radius ``radius`` mm).

    Every sub-region stays inside ``brain`` (the pial surface): a lesion near the cortex is cut by
    the dura rather than growing into the skull.
    """
    size = "large" if radius > LARGE_LESION_MM * scale else "small"
    kind = str(rng.choice(LESION_KINDS, p=LESION_KIND_P[size]))
    oedema_radius = min(radius * rng.uniform(1.15, 2.0) + rng.uniform(2.0, 10.0) * scale, 45.0 * scale)
    core_axes = rng.uniform(0.75, 1.3, 3)
    oedema_axes = core_axes * rng.uniform(0.8, 1.25, 3)
    # the box holds the furthest the perturbed core (factor >= 0.6) and oedema (>= 0.7) can reach
    reach = max(radius * float(core_axes.max()) / 0.6, oedema_radius * float(oedema_axes.max()) / 0.7)
    box = _box(centre, reach, tissue.shape, spacing)
    w = _rotated(_box_offsets(box, centre, spacing), _rotation(rng, (90, 90, 90)))
    shape = w.shape[1:]

    def field(scale_mm: float) -> np.ndarray:
        return smooth_field(rng, shape, spacing, max(scale_mm, 1.5 * scale))

    def ellipsoid(axes: np.ndarray, r: float) -> np.ndarray:
        return np.sqrt(((w / axes[:, None, None, None].astype(np.float32)) ** 2).sum(0)) / np.float32(r)

    # lobulated core: the boundary radius is modulated by a field of about half the lesion's size
    lobulation = rng.uniform(0.1, 0.3)
    dc = ellipsoid(core_axes, radius) * np.clip(1 + lobulation * field(0.6 * radius), 0.6, 1.6)
    core = (dc < 1) & brain[box]
    # a rim of a few mm (varying along it) measured from the core's actual edge, including where the
    # brain surface cuts the core, so a lesion that reaches the dura still shows its enhancing wall
    inner_depth = ndi.distance_transform_edt(core, sampling=spacing).astype(np.float32)
    rim_mm = np.float32(rng.uniform(2.5, 7.0) * scale) * np.clip(1 + 0.6 * field(0.5 * radius), 0.3, 2.0)
    in_rim = core & (inner_depth <= rim_mm)
    patches = field(0.45 * radius)
    if kind == "ring":
        enhancing = in_rim
        if rng.random() < 0.4:  # incomplete rim
            enhancing &= patches > rng.uniform(-0.6, 0.2)
    elif kind == "solid":
        enhancing = core.copy()
    elif kind == "nonenhancing":
        enhancing = np.zeros_like(core)
    else:  # mixed: enhancing islands and a broken rim around non-enhancing tissue
        enhancing = core & ((patches > 0.5) | (in_rim & (patches > -0.3)))
    necrotic = core & ~enhancing

    # finger-like oedema: a finer field modulates the extent, and it stays (mostly) in white matter
    de = ellipsoid(oedema_axes, oedema_radius) * np.clip(1 + 0.4 * field(6.0 * scale), 0.7, 1.6)
    sub = tissue[box]
    spreads = np.isin(sub, (WM, DEEP_GM, WMH)) | ((sub == GM) & (de < 0.6))
    oedema = (de < 1) & spreads & ~core
    # drop islands that the field cut off: oedema surrounds its own core
    pieces, _ = ndi.label(oedema | core)
    oedema &= np.isin(pieces, np.unique(pieces[core]))
    weight = np.clip(0.5 + 0.5 * (1 - de) / 0.6, 0.5, 1.0).astype(np.float32)
    return _Lesion(box=box, centre=centre, extent=oedema_radius, kind=kind, oedema=oedema, oedema_weight=weight,
                   enhancing=enhancing, necrotic=necrotic)


def _far_enough(centre: np.ndarray, extent: float, lesions: list[_Lesion], spacing: tuple[float, ...]) -> bool:
    """Whether a lesion of rough extent ``extent`` mm at ``centre`` stays clear of the earlier lesions' oedema."""
    return all(
        np.linalg.norm((centre - other.centre) * np.asarray(spacing)) > other.extent + extent for other in lesions
    )


def place_tumours(rng: np.random.Generator, tissue: np.ndarray, head: _Head, layers: _Layers,
                  spacing: tuple[float, ...]) -> list[_Lesion]:
    """Draw 0-3 lesions, deform ``tissue`` around them in place, and return their masks."""
    count = int(rng.choice(len(LESION_COUNT_P), p=LESION_COUNT_P))
    below_pial = head.depth - layers.pial
    brain = below_pial >= 0
    lesions: list[_Lesion] = []
    for i in range(count):
        # log-uniform core radius; satellite lesions are smaller than the first
        radius = float(np.exp(rng.uniform(np.log(5.0), np.log(25.0 if i == 0 else 12.0)))) * head.scale
        # in white matter deep enough that the core mostly fits inside the brain
        white = np.isin(tissue, (WM, DEEP_GM))
        candidates = white & (below_pial >= max(10.0 * head.scale, 0.8 * radius))
        if not candidates.any():  # a small FOV's head: settle for shallower
            candidates = white & (below_pial >= 10.0 * head.scale)
        # multifocal disease: try to keep foci apart, though they may still touch, as they can in vivo
        for _ in range(10):
            centre = _sample_lesion_centre(rng, candidates)
            if centre is None or _far_enough(centre, 1.5 * radius, lesions, spacing):
                break
        if centre is None:
            break
        # bigger lesions push harder
        strength = rng.uniform(0.1, 0.45) * min(1.0, radius / (15 * head.scale))
        _mass_effect(tissue, brain, centre, radius, strength, spacing)
        lesions.append(_lesion_masks(rng, tissue, brain, centre, radius, head.scale, spacing))
    return lesions


def _paint_labels(shape: tuple[int, ...], lesions: list[_Lesion]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the BraTS label map, the per-voxel lesion number (1-based, 0 outside) and oedema weight.

    All oedema is painted before any core so that one lesion's oedema never covers another's core.
    """
    label = np.zeros(shape, np.uint8)
    owner = np.zeros(shape, np.uint8)
    weight = np.zeros(shape, np.float32)
    for n, lesion in enumerate(lesions, start=1):
        sub, own, wt = label[lesion.box], owner[lesion.box], weight[lesion.box]
        new = lesion.oedema & (sub == 0)
        sub[new], own[new], wt[new] = 2, n, lesion.oedema_weight[new]
    for n, lesion in enumerate(lesions, start=1):
        sub, own = label[lesion.box], owner[lesion.box]
        sub[lesion.necrotic], own[lesion.necrotic] = 1, n
        sub[lesion.enhancing], own[lesion.enhancing] = 4, n
    return label, owner, weight


# ------------------------------------------------------------------------------------------------
# contrasts


#: contrasts that hold in every real scan, kept after jitter: (brighter, darker, modality, min ratio)
ORDERINGS = (
    (ET, WM, T1CE, 1.45), (ET, GM, T1CE, 1.45),  # enhancement is what defines ET
    (WM, GM, T1, 1.12), (GM, WM, T2, 1.12), (GM, WM, FLAIR, 1.08),  # grey/white contrast
)


def _enforce_orderings(lut: np.ndarray) -> None:
    """Raise the brighter tissue of each of ORDERINGS in place where jitter has eroded the contrast."""
    for bright, dark, m, ratio in ORDERINGS:
        lut[bright, m] = max(lut[bright, m], ratio * lut[dark, m])


def case_contrast(rng: np.random.Generator) -> np.ndarray:
    """(tissue, modality) mean intensities of one case: the base table with +-15 % jitter on every entry."""
    lut = BASE_CONTRAST * rng.uniform(0.85, 1.15, BASE_CONTRAST.shape)
    lut[ET, T1CE] = rng.uniform(1.1, 1.4) * rng.uniform(0.85, 1.15)
    _enforce_orderings(lut)
    return lut


def _lesion_contrast(rng: np.random.Generator, lut: np.ndarray) -> np.ndarray:
    """A copy of ``lut`` whose tumour rows vary by another +-10 % (lesions differ within a patient)."""
    out = lut.copy()
    out[[ED, ET, NCR]] *= rng.uniform(0.9, 1.1, (3, 4))
    if rng.random() < 0.4:  # cystic necrosis: fluid-like, very bright T2 and dark FLAIR
        out[NCR, T2], out[NCR, FLAIR] = lut[CSF, T2] * rng.uniform(0.9, 1.05), rng.uniform(0.25, 0.45)
    _enforce_orderings(out)
    return out


def paint_intensities(tissue: np.ndarray, label: np.ndarray, owner: np.ndarray, weight: np.ndarray,
                      luts: list[np.ndarray]) -> np.ndarray:
    """(4, *shape) float32 noise-free images: tissue means, then tumour sub-regions from each lesion's table.

    Oedema is blended with the tissue it infiltrates (by ``weight``), so its edge fades into
    white matter; enhancing and necrotic voxels take the lesion's own values. ``luts[0]`` is the
    case's table and ``luts[n]`` lesion n's.
    """
    images = np.ascontiguousarray(luts[0][tissue].astype(np.float32).transpose(3, 0, 1, 2))
    tumour = label > 0
    if not tumour.any():
        return images
    stack = np.stack(luts).astype(np.float32)  # (lesions + 1, tissue, modality)
    own, lab, tis, wt = owner[tumour], label[tumour], tissue[tumour], weight[tumour]
    region = np.select([lab == 2, lab == 4], [ED, ET], NCR)
    target = stack[own, region]  # (voxels, modality)
    base = stack[0, tis]
    blend = np.where(lab == 2, wt, 1.0)[:, None]
    images[:, tumour] = (base + blend * (target - base)).T
    return images


# ------------------------------------------------------------------------------------------------
# acquisition


def _texture(rng: np.random.Generator, images: np.ndarray, tumour: np.ndarray, scale: float,
             spacing: tuple[float, ...]) -> None:
    """Multiply in place by smooth within-tissue texture (a few %), stronger inside tumours."""
    shape = images.shape[1:]
    fine = [smooth_field(rng, shape, spacing, 2.5 * scale) for _ in range(2)]
    tumour_tex = smooth_field(rng, shape, spacing, 3.5 * scale) * tumour.astype(np.float32)
    for m in range(len(images)):
        angle = rng.uniform(0, 2 * np.pi)
        tex = np.float32(np.cos(angle)) * fine[0] + np.float32(np.sin(angle)) * fine[1]
        images[m] *= 1 + np.float32(rng.uniform(0.02, 0.05)) * tex + np.float32(rng.uniform(0.05, 0.12)) * tumour_tex


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """A smooth multiplicative field whose peak-to-peak amplitude over the head is 5 % to 30 %."""
    fov = max(n * s for n, s in zip(shape, spacing))
    amplitude = rng.uniform(0.05, 0.30)
    return np.exp(np.float32(amplitude / 2) * np.tanh(smooth_field(rng, shape, spacing, fov / 2) / 1.5))


def acquire(rng: np.random.Generator, images: np.ndarray, head: np.ndarray, wm_levels: np.ndarray,
            spacing: tuple[float, ...]) -> np.ndarray:
    """Turn noise-free tissue images into scanner images (float32, integer-valued, air exactly 0).

    Per modality: partial-volume blur, bias field, gamma on the image normalised by its brightest
    tissue, Rician noise inside the head and an arbitrary scanner scale. ``wm_levels`` holds each
    modality's white-matter mean, which sets the noise level.
    """
    blur = rng.uniform(0.5, 1.0)
    out = np.empty_like(images)
    shape = images.shape[1:]
    n_head = int(head.sum())
    for m in range(len(images)):
        img = ndi.gaussian_filter(images[m], blur)
        img *= _bias_field(rng, shape, spacing)
        ref = np.float32(BASE_CONTRAST[:, m].max())
        gamma = rng.uniform(0.7, 1.4)
        img = np.power(np.maximum(img / ref, 0), np.float32(gamma))
        sigma = np.float32(rng.uniform(0.02, 0.08) * (wm_levels[m] / ref) ** gamma)
        inside = img[head]
        real = inside + sigma * rng.standard_normal(n_head, dtype=np.float32)
        imag = sigma * rng.standard_normal(n_head, dtype=np.float32)
        scanner = np.float32(np.exp(rng.uniform(np.log(300), np.log(3000))))
        values = np.rint(np.sqrt(real**2 + imag**2) * scanner)
        out[m] = 0
        # at least 1 inside the head so that "non-zero" is exactly the head, as downstream cropping assumes
        out[m][head] = np.maximum(values, 1)
    return out


# ------------------------------------------------------------------------------------------------
# public API


def _affine(shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """RAS+ affine: diag(spacing) with the volume's centre at the origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * np.asarray(spacing, float)
    return affine


def _check_geometry(
    shape: tuple[int, ...], spacing: tuple[float, ...]
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Return ``shape`` and ``spacing`` as int/float triples; raise SemisegInputError if they are unusable."""
    shape_t = tuple(int(s) for s in shape)
    spacing_t = tuple(float(s) for s in spacing)
    if len(shape_t) != 3 or min(shape_t) < 8:
        raise SemisegInputError(None, f"phantom shape {shape_t}: expected three sizes of at least 8 voxels")
    if len(spacing_t) != 3 or not all(np.isfinite(spacing_t)) or min(spacing_t) <= 0:
        raise SemisegInputError(None, f"phantom spacing {spacing_t}: expected three positive sizes in mm")
    return shape_t, spacing_t  # type: ignore[return-value]


def synthesize_case(
    seed: int,
    case_id: str = "Phantom_00000",
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> PhantomCase:
    """Generate one case from ``seed`` (same seed, same arrays) at ``shape`` voxels of ``spacing`` mm."""
    return synthesize_case_with_tissue(seed, case_id, shape, spacing)[0]


def synthesize_case_with_tissue(
    seed: int,
    case_id: str = "Phantom_00000",
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> tuple[PhantomCase, np.ndarray]:
    """:func:`synthesize_case` plus the uint8 tissue map (classes AIR..WMH, after the tumours' mass effect).

    The tissue map says what lies under every label-0 voxel (e.g. which false positives fall on
    vessels or white-matter hyperintensities), and lets tests measure contrasts per tissue.
    """
    shape, spacing = _check_geometry(shape, spacing)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    tissue, head, layers = build_anatomy(rng, shape, spacing)
    lesions = place_tumours(rng, tissue, head, layers, spacing)
    label, owner, weight = _paint_labels(shape, lesions)
    lut = case_contrast(rng)
    luts = [lut] + [_lesion_contrast(rng, lut) for _ in lesions]
    images = paint_intensities(tissue, label, owner, weight, luts)
    _texture(rng, images, label > 0, head.scale, spacing)
    images = acquire(rng, images, head.mask, lut[WM], spacing)
    case = PhantomCase(
        case_id=case_id,
        images={name: images[m] for m, name in enumerate(MODALITIES)},
        label=label,
        affine=_affine(shape, spacing),
    )
    return case, tissue


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a dataset drawn with ``seed`` (independent of the number of cases)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def _write_case(folder: Path, case: PhantomCase, labelled: bool) -> None:
    """Write one case in BraTS 2021 layout: images as int16 scanner units (they are integers), seg as uint8."""
    folder.mkdir()
    for name, image in case.images.items():
        # int16 halves the files (as in BraTS); float32 only if a freak case would overflow it
        fits = image.max() <= np.iinfo(np.int16).max
        write_nifti(folder / f"{case.case_id}_{name}.nii.gz", image.astype(np.int16) if fits else image, case.affine)
    if labelled:
        write_nifti(folder / f"{case.case_id}_seg.nii.gz", case.label, case.affine)


def write_phantom_dataset(
    out: str | PathLike,
    cases: int,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    unlabelled: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Write ``cases`` phantom cases to the new folder ``out`` (BraTS 2021 layout); return their ids.

    The last ``unlabelled`` cases get no seg file. Case i depends only on (seed, i). The folder
    appears only once complete; ``progress(done, total)`` is called after each case.
    """
    out = Path(out)
    if cases < 1:
        raise SemisegInputError(None, f"the number of phantom cases must be at least 1, got {cases}")
    if not 0 <= unlabelled <= cases:
        raise SemisegInputError(
            None, f"unlabelled must be between 0 and the number of cases ({cases}), got {unlabelled}"
        )
    if seed < 0:
        raise SemisegInputError(None, f"the seed must be a non-negative integer, got {seed}")
    shape, spacing = _check_geometry(shape, spacing)
    check_output(out, "folder")
    if out.is_dir() and any(out.iterdir()):
        raise SemisegInputError(out, "already exists and is not empty")
    ids = [f"Phantom_{i:05d}" for i in range(cases)]
    # an existing empty folder is replaced by the rename at the end, so overwrite is not needed
    with atomic_dir(out) as tmp:
        for i, case_id in enumerate(ids):
            case = synthesize_case(case_seed(seed, i), case_id, shape, spacing)
            _write_case(tmp / case_id, case, labelled=i < cases - unlabelled)
            if progress is not None:
                progress(i + 1, cases)
    return ids
