"""Configuration: presets shipped as YAML files in ``semiseg/configs``, a user's copy, and
``--set key=value`` overrides, merged into one plain dict that is stored with every run."""

from __future__ import annotations

import copy
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any

import yaml

from semiseg.errors import SemisegInputError


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path | str, text: str | None = None) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text if text is not None else Path(path).read_text())
    except OSError as exc:
        raise SemisegInputError(path, f"cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SemisegInputError(path, f"is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SemisegInputError(path, "must hold a mapping of preset names to settings")
    return data


def builtin_file(name: str) -> dict[str, Any]:
    """Read a shipped preset file (``ddpm``, ``segmentation``, ``supervised``, ...)."""
    res = resources.files("semiseg.configs").joinpath(f"{name}.yaml")
    return _read_yaml(f"semiseg/configs/{name}.yaml", res.read_text())


def builtin_text(name: str) -> str:
    """The text of a shipped preset file, comments included (for users to copy)."""
    return resources.files("semiseg.configs").joinpath(f"{name}.yaml").read_text()


def resolve_preset(presets: dict[str, Any], preset: str, source: str) -> dict[str, Any]:
    """The first preset of a file is complete; a later preset is merged over it."""
    if not presets:
        return {}
    if preset not in presets:
        first = next(iter(presets))
        if preset in ("default", "paper"):
            preset = first
        else:
            raise SemisegInputError(source, f"has no preset {preset!r}; it has {', '.join(presets)}")
    first = next(iter(presets))
    base = presets[first] or {}
    return base if preset == first else merge(base, presets[preset] or {})


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.steps=200", "blocks=[1,2]"]`` into a nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise SemisegInputError(None, f"--set {item!r}: expected key=value, e.g. train.steps=200")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(
    files: list[str],
    preset: str,
    user_file: str | PathLike | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Resolve a configuration.

    Args:
        files: shipped preset files layered in order (e.g. ``["segmentation", "supervised"]``).
        preset: preset name, e.g. ``small``.
        user_file: a user's YAML: either settings (as ``semiseg config`` prints them) or a copy of
            a presets file holding ``preset``; layered over the shipped presets.
        overrides: ``key=value`` strings applied at the very end.

    Returns:
        the merged configuration dict.
    """
    cfg: dict[str, Any] = {}
    for name in files:
        cfg = merge(cfg, resolve_preset(builtin_file(name), preset, f"semiseg/configs/{name}.yaml"))
    shipped = cfg
    if user_file is not None:
        user = _read_yaml(user_file)
        # a copy of a shipped presets file (preset names at top level), or one preset's settings
        layer = resolve_preset(user, preset, str(user_file)) if preset in user else user
        check_keys(layer, shipped, str(user_file))
        cfg = merge(cfg, layer)
    layer = parse_overrides(overrides)
    check_keys(layer, shipped, "--set")
    return merge(cfg, layer)


def check_keys(cfg: dict[str, Any], reference: dict[str, Any], source: str, prefix: str = "") -> None:
    """Raise SemisegInputError for a key in ``cfg`` that ``reference`` lacks (a typo in a config)."""
    for key, value in cfg.items():
        if key not in reference:
            known = ", ".join(sorted(reference))
            raise SemisegInputError(source, f"unknown setting {prefix + key!r}; known here: {known}")
        if isinstance(value, dict) and isinstance(reference[key], dict) and reference[key]:
            check_keys(value, reference[key], source, prefix + key + ".")
