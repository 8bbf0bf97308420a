"""Distributed set-up with PyTorch's own stack: ``torchrun`` sets the environment, we call
``init_process_group`` (NCCL on GPUs, Gloo on CPU) and wrap trainable modules in DDP."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from semiseg.errors import SemisegInputError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def check_device(requested: str) -> torch.device:
    """The device a user asked for, if this machine has it; else a one-line error."""
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise SemisegInputError(None, f"--device {requested!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SemisegInputError(None, f"--device {requested}: CUDA is not available (this PyTorch {torch.__version__} sees no GPU)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SemisegInputError(None, f"--device {requested}: there are only {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps":
        if not _mps_available():
            raise SemisegInputError(None, f"--device {requested}: Apple MPS is not available here")
    elif device.type != "cpu":
        raise SemisegInputError(None, f"--device {requested!r}: semiseg runs on cpu, cuda or mps")
    return device


def pick_device(local_rank: int = 0, requested: str | None = None) -> torch.device:
    """The device to train on: ``requested`` if given (and present), else CUDA, then Apple MPS, then CPU."""
    if requested and requested != "auto":
        return check_device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def init_distributed() -> DistInfo:
    """Join the process group if launched by ``torchrun`` (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_mean(info: DistInfo, values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar logs over ranks so rank 0 reports the whole job's numbers."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / info.world for k, v in zip(keys, t.tolist())}

