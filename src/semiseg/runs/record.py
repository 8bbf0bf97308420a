"""The record of a run: ``config.json``, written once when a run starts and read by resume,
prediction and studies. :class:`RunRecord` is the typed form; reading it validates every field
with a one-line error naming the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from semiseg.config import check_settings, load_config
from semiseg.errors import SemisegInputError
from semiseg.files import read_json, write_json
from semiseg.methods.base import get_method
from semiseg.preprocess.cache import DataInfo
from semiseg.training.plan import DataPlan

CONFIG = "config.json"


@dataclass(frozen=True)
class RunRecord:
    """What a run is: its method and resolved configuration, the data it was trained on
    (``data``: what a model needs to predict new cases; ``plan``: which items), its seed."""

    method: str
    preset: str
    seed: int
    cache: str
    data: DataInfo
    plan: DataPlan
    config: dict[str, Any]
    semiseg_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return int(self.config["train"]["steps"])

    @property
    def ddpm_run(self) -> Path | None:
        """The pretrained DDPM run a diffusion method builds on."""
        ddpm = self.config.get("ddpm")
        return Path(ddpm["run"]) if isinstance(ddpm, dict) and ddpm.get("run") else None

    @property
    def ddpm_sha256(self) -> str | None:
        """The sha256 of the DDPM weights the run was started from (None for runs recorded without it)."""
        ddpm = self.config.get("ddpm")
        return ddpm.get("sha256") if isinstance(ddpm, dict) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "semiseg_version": self.semiseg_version,
            "method": self.method,
            "preset": self.preset,
            "seed": self.seed,
            "cache": self.cache,
            "data": self.data.to_json(),
            "plan": self.plan.to_json(),
            "config": self.config,
            **self.extra,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], source: str | PathLike | None = None) -> "RunRecord":
        """Validate and read a record; a missing or mistyped key is a one-line error naming ``source``."""
        types = {"method": str, "seed": int, "cache": str, "data": dict, "plan": dict, "config": dict}
        for key, kind in types.items():
            if key not in obj:
                raise SemisegInputError(source, f"run record lacks {key!r}")
            if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
                raise SemisegInputError(source, f"run record's {key!r} must be a {kind.__name__}, got {obj[key]!r:.60}")
        _check_config(obj["method"], obj["config"], source)
        try:
            data = DataInfo.from_json(obj["data"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SemisegInputError(source, f"run record's 'data' is malformed ({exc})") from None
        known = set(types) | {"preset", "semiseg_version"}
        return cls(
            method=obj["method"],
            preset=str(obj.get("preset", "default")),
            seed=obj["seed"],
            cache=obj["cache"],
            data=data,
            plan=DataPlan.from_json(obj["plan"], str(source) if source else None),
            config=obj["config"],
            semiseg_version=str(obj.get("semiseg_version", "")),
            extra={k: v for k, v in obj.items() if k not in known},
        )

    def write(self, run_dir: str | PathLike) -> None:
        write_json(Path(run_dir) / CONFIG, self.to_json())


def _check_config(method: str, config: dict[str, Any], source: str | PathLike | None) -> None:
    """The recorded settings have every block and kind of value the method's shipped presets have;
    settings added since the record was written are filled in with their shipped defaults."""
    try:
        cls = get_method(method)
    except SemisegInputError:
        raise SemisegInputError(source, f"run record names an unknown method {method!r}") from None
    settings = {k: v for k, v in config.items() if k != "ddpm"}
    config.update(check_settings(settings, load_config(cls.config_files, "default"), source, complete=True))
    if cls.needs_ddpm:
        ddpm = config.get("ddpm")
        if not isinstance(ddpm, dict) or not isinstance(ddpm.get("run"), str):
            raise SemisegInputError(source, "run record's config lacks the DDPM it builds on ('ddpm' with 'run')")
        reference = load_config(["ddpm"], "default")
        for block in ("model", "diffusion"):
            if not isinstance(ddpm.get(block), dict):
                raise SemisegInputError(source, f"run record's config lacks the DDPM's {block!r} settings")
            ddpm[block] = check_settings(ddpm[block], reference[block], source, f"ddpm.{block}.", complete=True)
        if not isinstance(ddpm.get("sha256", ""), str):
            raise SemisegInputError(source, "run record's 'ddpm.sha256' must be a text")


def read_run_record(run_dir: str | PathLike) -> RunRecord:
    """The record of a run folder; a one-line SemisegInputError if it is not one or is damaged."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SemisegInputError(run_dir, "run folder not found")
    path = run_dir / CONFIG
    if not path.exists():
        raise SemisegInputError(run_dir, f"is not a semiseg run folder (no {CONFIG})")
    return RunRecord.from_json(read_json(path, "run record"), path)
