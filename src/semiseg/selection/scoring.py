"""What the selection strategies rank by: the candidates, and per candidate an uncertainty score and
an embedding, from a trained run or, before any run exists, from the images alone.

Candidates are the not-yet-labelled items of the cache's training patients: every slice of each
that shows anatomy (2D; at least a tenth of its pixels off the background, so no slice of air above
the head), or with ``candidates="central"`` those in the middle half of each patient's anatomy
along the slice axis, or only the paper's central-slice pool (chosen with the labels) with
``candidates="pool"``; or the patients themselves (3D). A test patient's item is never a candidate.

``central`` is the 2D default: the edges of the anatomy hold the structure least. Share of the
candidate slices showing the structure, all / central: MSD hippocampus (real T1 MRI, 208 training
patients) 0.72 / 1.00, the phantom 0.53 / 0.81. A model-free pick from every slice took a slice
without the structure in both, and a trained run's uncertainty x distance ranked the edges' false
positives first; on the hippocampus, guided chains over the central half beat chains over every
slice from the second round on (README, "Which slices should I annotate next?").

From a trained segmentation run:

* the per-voxel uncertainty is the predictive entropy of the mean softmax over ``passes`` Monte
  Carlo dropout passes (Gal et al. 2017) for networks with dropout (the U-Net methods); otherwise
  the method's own map (softmax entropy, or ddpm-pixel's ensemble disagreement). Entropies are
  divided by ln C, so they lie in [0, 1];
* an item's uncertainty score is that map's mean over the predicted foreground (voxels whose
  probability of any foreground class is at least 0.5); an item with no predicted foreground scores
  0: the model is confident there is nothing to segment there;
* an item's embedding is the mean over the item of :meth:`Method.embed` (the features the head
  reads), without dropout.

Before a run (the first batch): intensity features (each slice or volume average-pooled to a small
grid) or, given a DDPM run, its decoder features at a small noise level, averaged over the slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semiseg.errors import SemisegInputError
from semiseg.inference.predict import predict_slices, predict_volume
from semiseg.methods.base import Method
from semiseg.models.unet import dropout_layers, enable_mc_dropout
from semiseg.preprocess.cache import Cache
from semiseg.training.losses import entropy
from semiseg.training.plan import case_slices, format_slice, labelled_pool, parse_slice

CANDIDATES = ("all", "central", "pool")
#: side of the grid slices (2D) or volumes (3D) are pooled to for intensity features
INTENSITY_GRID = {2: 16, 3: 8}
#: noise level of the DDPM features, as a fraction of the schedule (braintumor-ddpm's t = 200 of 4,000)
DDPM_FEATURE_T = 0.05


@dataclass(frozen=True)
class ItemScores:
    """Per-candidate numbers: ``uncertainty`` (n,) or None before a run, ``embeddings`` (n, d), the
    ``labelled`` items' embeddings (m, d), and which ``features`` they come from."""

    items: list[str]
    uncertainty: np.ndarray | None
    embeddings: np.ndarray | None
    labelled: np.ndarray | None
    features: str


@dataclass(frozen=True)
class ItemMaps:
    """What the preview shows of one item: an axial ``image`` slice (FLAIR, else the first channel), the
    predicted class map and uncertainty map on it (None before a run), and the slice's number."""

    image: np.ndarray
    prediction: np.ndarray | None
    uncertainty: np.ndarray | None
    z: int


def default_candidates(dims: int) -> str:
    """The candidates when none are given: ``central`` slices in 2D (a first batch and later
    rounds alike, as measured on hippocampus MRI), the training patients in 3D."""
    return "central" if dims == 2 else "all"


def candidate_items(cache: Cache, dims: int, labelled: Sequence[str], which: str = "all") -> list[str]:
    """The items that may be suggested: not in ``labelled`` (which also lists a run's lesion-free
    negatives), of the training patients only."""
    if which not in CANDIDATES:
        raise SemisegInputError(None, f"candidates must be one of {', '.join(CANDIDATES)}, got {which!r}")
    if which == "pool" or dims == 3:
        items = labelled_pool(cache, dims)
    else:  # "all" candidates are the slices that show anatomy, never slices of air
        slices = "central" if which == "central" else "anatomy"
        items = [format_slice(cid, z) for cid in cache.ids("train") for z in case_slices(cache, cid, slices)]
    taken = set(labelled)
    return [i for i in items if i not in taken]


def _by_case(items: Sequence[str], dims: int) -> dict[str, list[int]]:
    """Case -> slice numbers (2D) or [] (3D), cases in first-seen order."""
    out: dict[str, list[int]] = {}
    for item in items:
        case, z = parse_slice(item) if dims == 2 else (item, None)
        out.setdefault(case, [])
        if z is not None:
            out[case].append(z)
    return out


def case_maps(method: Method, cache: Cache, case_id: str, zs: list[int], passes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean class probabilities and per-voxel uncertainty of one case: (N, K, S, S) and (N, S, S)
    for its slices ``zs`` (2D), (K, X, Y, Z) and (X, Y, Z) for its volume (3D). Deterministic
    for a given ``seed``, so the preview shows exactly what was scored."""
    if method.dims == 2:
        images = np.asarray(cache.slices(case_id)[zs])

        def run() -> tuple[np.ndarray, np.ndarray]:
            return predict_slices(method, images)
    else:
        images = np.asarray(cache.volume(case_id))

        def run() -> tuple[np.ndarray, np.ndarray]:
            return predict_volume(method, images)

    if passes <= 1 or not dropout_layers(method):
        method.eval()
        return run()
    torch.manual_seed(seed)
    enable_mc_dropout(method)
    try:
        total = None
        for _ in range(passes):
            p, _ = run()
            total = p if total is None else total + p
    finally:
        method.eval()
    mean = total / passes
    batched = torch.from_numpy(mean if method.dims == 2 else mean[None])
    u = entropy(batched).numpy()
    return mean, u if method.dims == 2 else u[0]


def foreground_mean(probs: np.ndarray, uncertainty: np.ndarray) -> float:
    """Mean of ``uncertainty`` over the predicted foreground (1 - P(background) >= 0.5); 0 if none."""
    fg = probs[0] <= 0.5
    return float(uncertainty[fg].mean()) if fg.any() else 0.0


def _embeddings(method: Method, cache: Cache, case_id: str, zs: list[int]) -> np.ndarray:
    """Mean embedding per slice (len(zs), D) or of the volume (1, D)."""
    method.eval()
    if method.dims == 2:
        pooled, _ = predict_slices(method, np.asarray(cache.slices(case_id)[zs]), head=lambda x: (method.embed(x).float().mean((2, 3), keepdim=True), None))
        return pooled[:, :, 0, 0]
    emb, _ = predict_volume(method, np.asarray(cache.volume(case_id)), head=lambda x: (method.embed(x).float(), None))
    return emb.reshape(emb.shape[0], -1).mean(1)[None]


def score_with_run(method: Method, cache: Cache, items: Sequence[str], labelled: Sequence[str], passes: int = 8, seed: int = 0,
                   on_case=None) -> ItemScores:
    """Uncertainty scores and embeddings of ``items`` and the embeddings of the ``labelled`` items
    from a trained segmentation method (see the module docstring)."""
    dims = method.dims
    unc: dict[str, float] = {}
    emb: dict[str, np.ndarray] = {}
    for cid, zs in _by_case(items, dims).items():
        probs, u = case_maps(method, cache, cid, zs, passes, seed)
        vectors = _embeddings(method, cache, cid, zs)
        if dims == 2:
            for i, z in enumerate(zs):
                key = format_slice(cid, z)
                unc[key], emb[key] = foreground_mean(probs[i], u[i]), vectors[i]
        else:
            unc[cid], emb[cid] = foreground_mean(probs, u), vectors[0]
        if on_case:
            on_case()
    lab = []
    for cid, zs in _by_case(labelled, dims).items():
        lab.append(_embeddings(method, cache, cid, zs))
    mc = passes > 1 and bool(dropout_layers(method))
    return ItemScores(
        list(items), np.array([unc[i] for i in items]), np.stack([emb[i] for i in items]),
        np.concatenate(lab) if lab else np.zeros((0, len(emb[items[0]]))),
        f"{method.name}: {'MC-dropout predictive entropy, ' + str(passes) + ' passes' if mc else 'its uncertainty map'}; decoder embeddings",
    )


def item_maps(method: Method | None, cache: Cache, items: Sequence[str], dims: int, scored: Sequence[str], passes: int = 8, seed: int = 0) -> list[ItemMaps]:
    """Preview maps of ``items``; ``scored`` are all the items scored with them, so each case is
    recomputed exactly as it was scored."""
    zs_of = _by_case(scored, dims)
    channel = cache.modalities.index("flair") if "flair" in cache.modalities else 0  # as the report's overlays
    out = []
    for item in items:
        cid, z = parse_slice(item) if dims == 2 else (item, None)
        if method is not None:
            probs, u = case_maps(method, cache, cid, zs_of[cid], passes, seed)
            if dims == 2:
                i = zs_of[cid].index(z)
                probs, u = probs[i], u[i]
            else:
                z = int(np.argmax((probs[0] <= 0.5).sum((0, 1)))) if (probs[0] <= 0.5).any() else probs.shape[-1] // 2
                probs, u = probs[..., z], u[..., z]
            pred = probs.argmax(0).astype(np.uint8)
        else:
            pred = u = None
            if dims == 3:
                z = cache.volume(cid).shape[-1] // 2
        image = np.asarray(cache.slices(cid)[z, channel] if dims == 2 else cache.volume(cid)[channel, :, :, z], np.float32)
        out.append(ItemMaps(image, pred, u, int(z)))
    return out


def intensity_features(cache: Cache, items: Sequence[str], dims: int) -> np.ndarray:
    """Each slice (2D) or volume (3D) average-pooled to a small grid per channel, flattened."""
    side = INTENSITY_GRID[dims]
    rows = []
    for cid, zs in _by_case(items, dims).items():
        if dims == 2:
            x = torch.from_numpy(np.asarray(cache.slices(cid)[zs], np.float32))
            rows.append(F.adaptive_avg_pool2d(x, side).flatten(1).numpy())
        else:
            x = torch.from_numpy(np.asarray(cache.volume(cid), np.float32))[None]
            rows.append(F.adaptive_avg_pool3d(x, side).flatten(1).numpy())
    return _in_order(rows, items, dims)


def _in_order(rows: list[np.ndarray], items: Sequence[str], dims: int) -> np.ndarray:
    """Rows computed case by case (in :func:`_by_case` order) -> rows in ``items`` order."""
    keys = [format_slice(c, z) for c, zs in _by_case(items, dims).items() for z in zs] if dims == 2 else list(_by_case(items, dims))
    at = {k: i for i, k in enumerate(keys)}
    table = np.concatenate(rows) if rows else np.zeros((0, 0))
    return table[[at[i] for i in items]]


@torch.no_grad()
def ddpm_features(ddpm_run: Path, cache: Cache, items: Sequence[str], device: str | torch.device = "cpu") -> np.ndarray:
    """Decoder features of a pretrained DDPM (every decoder block, at noise level
    :data:`DDPM_FEATURE_T`, one fixed noise draw) averaged over each slice: (n, F)."""
    from semiseg.models.diffusion import DecoderFeatures, decoder_blocks
    from semiseg.runs.train import check_ddpm_run, load_trained

    check_ddpm_run(ddpm_run, cache)
    ddpm, _ = load_trained(ddpm_run, device)
    unet = ddpm.denoiser().eval()
    extractor = DecoderFeatures(unet, range(len(decoder_blocks(unet))))
    t_index = int(round(DDPM_FEATURE_T * ddpm.scheduler.num_train_timesteps))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((cache.channels, cache.slice_size, cache.slice_size), generator=g).to(device)
    rows = []
    try:
        for cid, zs in _by_case(items, 2).items():
            images = np.asarray(cache.slices(cid)[zs], np.float32)
            for s in range(0, len(images), 8):
                x = torch.from_numpy(images[s : s + 8]).to(device) / ddpm.scale
                t = torch.full((len(x),), t_index, device=device, dtype=torch.long)
                noisy = ddpm.scheduler.add_noise(original_samples=x, noise=noise.expand_as(x), timesteps=t)
                rows.append(extractor.pooled(noisy, t).cpu().numpy())
    finally:
        extractor.remove()
    return _in_order(rows, items, 2)
