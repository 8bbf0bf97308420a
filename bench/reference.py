"""braintumor-ddpm, the reference code of the diffusion papers, for side-by-side benchmarks.

Nothing of it is in this repository (it has no licence file): fetch it once and point ``REF_SRC``
at the extracted tree, the folder that holds ``braintumor_ddpm/`` (``../shared/refbench/README.md``
says how). Without it the side-by-side benchmarks are skipped and say why.

The reference's modules import packages its model code never calls (MPI, blobfile, plotting,
scikit-learn, ...). Those that are not installed get stand-ins here: permissive dummies, a
one-rank MPI and a blobfile that opens local files. The model is built by the reference's own
``load_model`` from its ``brats_128x128_config``; its weights are its own random initialisation.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import os
import sys
import types
from dataclasses import dataclass
from typing import Any

ENV = "REF_SRC"
#: modules the reference imports at module level that its model and feature code do not use
UNUSED = ["tifffile", "matplotlib", "matplotlib.pyplot", "PIL", "PIL.Image", "sklearn", "sklearn.cluster", "SimpleITK",
          "medpy", "medpy.metric", "torchvision", "torchvision.transforms", "torchvision.transforms.functional", "tqdm"]


def missing_reason() -> str | None:
    """Why the reference cannot be loaded, or None when it can."""
    src = os.environ.get(ENV)
    if not src:
        return f"{ENV} is not set: fetch braintumor-ddpm and set {ENV} to its extracted tree (see ../shared/refbench/README.md)"
    if not os.path.isdir(os.path.join(src, "braintumor_ddpm")):
        return f"{ENV}={src} holds no braintumor_ddpm/ folder"
    return None


class _Anything:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Anything":
        return _Anything()

    def __getattr__(self, name: str) -> "_Anything":
        return _Anything()


class _AnyModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything


class _OneRank:
    rank, size = 0, 1

    def Get_rank(self) -> int:  # noqa: N802 (mpi4py's names)
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def bcast(self, value: Any, root: int = 0) -> Any:
        return value

    def allreduce(self, value: Any, op: Any = None) -> Any:
        return value


def _module(name: str, cls: type = types.ModuleType, package: bool = False) -> types.ModuleType:
    mod = cls(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        mod.__path__ = []
    sys.modules[name] = mod
    return mod


def _install_stand_ins() -> None:
    for name in UNUSED:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            _module(name, _AnyModule, package=True)
    for parent, child in (("matplotlib", "pyplot"), ("PIL", "Image"), ("torchvision", "transforms"), ("medpy", "metric"),
                          ("sklearn", "cluster"), ("torchvision.transforms", "functional")):
        if isinstance(sys.modules[parent], _AnyModule):
            setattr(sys.modules[parent], child, sys.modules[f"{parent}.{child}"])
    try:
        importlib.import_module("blobfile")
    except ImportError:
        bf = _module("blobfile")
        bf.BlobFile = lambda path, mode="r": builtins.open(path, mode)
        bf.exists, bf.join, bf.listdir, bf.isdir = os.path.exists, os.path.join, os.listdir, os.path.isdir
    try:
        importlib.import_module("mpi4py.MPI")
    except ImportError:
        mpi = _module("mpi4py", package=True)
        mpi.MPI = _module("mpi4py.MPI")
        mpi.MPI.COMM_WORLD = _OneRank()


@dataclass
class Reference:
    """The reference's pieces a benchmark uses."""

    model: Any  # improved-diffusion UNetModel
    diffusion: Any  # GaussianDiffusion
    uniform_sampler: Any  # resample.UniformSampler class
    pixel_classifier: Any  # core.networks.pixel_classifier.PixelClassifier class
    config: dict[str, Any]  # brats_128x128_config()


def load_reference(seed: int = 0) -> Reference:
    """Import the reference from ``REF_SRC`` and build its paper DDPM (seeded random weights)."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    _install_stand_ins()
    sys.path.insert(0, os.environ[ENV])
    import torch
    from braintumor_ddpm.core.networks.pixel_classifier import PixelClassifier
    from braintumor_ddpm.diffusion.config import brats_128x128_config
    from braintumor_ddpm.diffusion.improved_ddpm import dist_util
    from braintumor_ddpm.diffusion.improved_ddpm.resample import UniformSampler
    from braintumor_ddpm.scripts import script_utils

    # the reference's load_model builds the model from the config with its own argument mapping and
    # then reads weights from a file; hand it its own fresh weights instead of a file
    built: dict[str, Any] = {}
    create = script_utils.create_model_and_diffusion

    def create_and_keep(**kwargs: Any) -> Any:
        torch.manual_seed(seed)
        built["pair"] = create(**kwargs)
        return built["pair"]

    script_utils.create_model_and_diffusion = create_and_keep
    dist_util.load_state_dict = lambda path, **kwargs: built["pair"][0].state_dict()
    config = brats_128x128_config()
    model, diffusion = script_utils.load_model("fresh", config=config)
    return Reference(model, diffusion, UniformSampler, PixelClassifier, config)
