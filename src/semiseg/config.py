"""Configuration: presets shipped as YAML files in ``semiseg/configs``, a user's copy, and
``--set key=value`` overrides, merged into one plain dict that is stored with every run.

Every YAML semiseg reads (presets, users' configs, study files) goes through :func:`load_yaml`,
which refuses a mapping that holds the same key twice: PyYAML would silently keep the last one, so
an edit made to the first would be lost without a word.
"""

from __future__ import annotations

import copy
import functools
import math
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any

import yaml

from semiseg.errors import SemisegInputError
from semiseg.files import read_text

#: kinds of value a setting may have beyond those the presets show: one null in every preset, an
#: angle the presets happen to give in whole degrees, and a count the presets leave at "auto"
EXTRA_KINDS = {"unlabelled_batch_size": {"int"}, "augment.rotate_degrees": {"float"}, "train.workers": {"int"}}
#: a value of the kind on the left is accepted where the presets have the kind on the right
WIDER = {"int": {"float"}, "list[int]": {"list[float]"}, "list[]": {"list[int]", "list[float]", "list[str]", "list"}}
KIND_NAMES = {
    "null": "null", "bool": "true or false", "int": "an integer", "float": "a number", "str": "a text",
    "dict": "a mapping of settings", "list[int]": "a list of integers", "list[float]": "a list of numbers",
    "list[str]": "a list of texts", "list": "a list",
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} appears twice (lines {first} and {second}); YAML would keep only the last")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a mapping may not hold one key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys brought in by "<<: *anchor" may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:
                pass  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str | PathLike | None) -> Any:
    """Parse YAML ``text`` (from ``source``, named in errors); a syntax error or a key given twice
    in one mapping is a one-line SemisegInputError."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as exc:
        raise SemisegInputError(source, str(exc)) from None
    except yaml.YAMLError as exc:
        raise SemisegInputError(source, f"is not valid YAML ({str(exc).splitlines()[0]})") from None


def read_yaml_file(path: str | PathLike, what: str = "file") -> Any:
    """Read and parse a YAML file; a missing or unreadable file is a one-line error naming it."""
    return load_yaml(read_text(path, what), path)


def _read_yaml(path: Path | str, text: str | None = None) -> dict[str, Any]:
    data = load_yaml(text, path) if text is not None else read_yaml_file(path, "config file")
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


def parse_overrides(items: list[str] | None, source: str | None = None) -> dict[str, Any]:
    """Turn ``["train.steps=200", "blocks=[1,2]"]`` into a nested dict (values parsed as YAML);
    ``source`` names where the items come from in errors (default: the --set option)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if not isinstance(item, str) or "=" not in item:
            raise SemisegInputError(source, f"{'' if source else '--set '}{item!r}: expected key=value, e.g. train.steps=200")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw, f"--set {item}")
        except SemisegInputError as exc:
            if "appears twice" in exc.problem:
                raise
            value = raw
        node = out
        parts = key.strip().split(".")
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SemisegInputError(source or "--set", f"{'.'.join(parts[: i + 1])!r} is set both as a value and as a mapping")
        node[parts[-1]] = value
    return out


def load_config(
    files: list[str],
    preset: str,
    user_file: str | PathLike | None = None,
    overrides: list[str] | None = None,
    overrides_source: str = "--set",
) -> dict[str, Any]:
    """Resolve a configuration.

    Args:
        files: shipped preset files layered in order (e.g. ``["segmentation", "supervised"]``).
        preset: preset name, e.g. ``small``.
        user_file: a user's YAML: either settings (as ``semiseg config`` prints them) or a copy of
            a presets file holding ``preset``; layered over the shipped presets.
        overrides: ``key=value`` strings applied at the very end.
        overrides_source: what to name as the overrides' source in errors (a study file's
            ``settings`` rather than ``--set``).

    Returns:
        the merged configuration dict. Unknown keys and values of the wrong kind (a number
        setting given a word) are one-line errors naming their source.
    """
    cfg: dict[str, Any] = {}
    for name in files:
        cfg = merge(cfg, resolve_preset(builtin_file(name), preset, f"semiseg/configs/{name}.yaml"))
    shipped = cfg
    if user_file is not None:
        user = _read_yaml(user_file)
        # presets (as `semiseg config` prints them, or a copy of a shipped file), or one preset's settings
        names = preset_names(files)
        if user and set(user) <= set(names):
            # "default" and "paper" name a file's first preset (the published settings)
            name = names[0] if preset not in user and preset in ("default", "paper") else preset
            if name not in user:
                raise SemisegInputError(user_file, f"holds the presets {', '.join(user)} but not {preset!r}; choose one with --preset")
            layer = user[name] or {}
        else:
            layer = user
        if not isinstance(layer, dict):
            raise SemisegInputError(user_file, f"preset {preset!r} must be a mapping of settings")
        cfg = merge(cfg, check_settings(layer, shipped, str(user_file)))
    layer = parse_overrides(overrides, None if overrides_source == "--set" else overrides_source)
    return merge(cfg, check_settings(layer, shipped, overrides_source))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float, str, dict)):
        return type(value).__name__
    if isinstance(value, list):
        kinds = {_kind(v) for v in value}
        if not kinds:
            return "list[]"
        if kinds <= {"int", "float"}:
            return "list[float]" if "float" in kinds else "list[int]"
        return "list[str]" if kinds == {"str"} else "list"
    return type(value).__name__


def is_count(value: Any, least: int = 0) -> bool:
    """Whether a setting is an integer (not a bool) of at least ``least``: a step, batch or item count."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@functools.cache
def shipped_kinds() -> dict[str, frozenset[str]]:
    """Every setting of every shipped preset file (dotted path) -> the kinds of value it has there."""
    kinds: dict[str, set[str]] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            kinds.setdefault(prefix + key, set()).add(_kind(value))
            if isinstance(value, dict):
                walk(value, prefix + key + ".")

    for res in resources.files("semiseg.configs").iterdir():
        if res.name.endswith(".yaml"):
            for preset in _read_yaml(res.name, res.read_text()).values():
                walk(preset or {}, "")
    for key, extra in EXTRA_KINDS.items():
        kinds.setdefault(key, set()).update(extra)
    return {k: frozenset(v) for k, v in kinds.items()}


def _accepts(kinds: frozenset[str], value: Any) -> tuple[bool, Any]:
    """Whether a setting that has ``kinds`` in the presets may be ``value``; and the value to use
    (a number typed as YAML text, like ``1e-3``, becomes a float)."""
    kind = _kind(value)
    if kind in kinds or WIDER.get(kind, set()) & kinds:
        return True, value
    if kind == "str" and "float" in kinds:
        try:
            number = float(value)
        except ValueError:
            return False, value
        return math.isfinite(number), number
    return False, value


#: settings added after run records were first written, and the value that reproduces what the code
#: did before each existed (speed paths off, fp32, batches built in the training process): a record
#: lacking one of these loads with this value; lacking any other setting it is refused
BEFORE_SETTING: dict[str, Any] = {
    "train.fused": False,
    "train.precision": "fp32",
    "train.workers": 0,
    "train.prefetch": 2,
    "model.fast_attention": False,
    "model.channels_last": False,
    "diffusion.prediction": "epsilon",
    "diffusion.loss_weighting": "uniform",
    "diffusion.min_snr_gamma": 5.0,
    "unlabelled_ratio": 1.0,
    "unlabelled.slices": "all",
    "contrast": {"weight": 0.0, "dim": 64, "temperature": 0.1, "per_class": 256},
}


def check_settings(
    cfg: dict[str, Any], reference: dict[str, Any], source: str | PathLike | None, prefix: str = "", complete: bool = False
) -> dict[str, Any]:
    """Check settings against the shipped presets: every key must be one ``reference`` has, and
    every value of a kind the presets use for it (an integer setting cannot be "abc"); with
    ``complete``, every key of ``reference`` must be present too. Returns ``cfg`` with numbers
    given as text converted; raises a one-line SemisegInputError naming ``source`` and the key."""
    out = dict(cfg)
    for key, value in cfg.items():
        path = prefix + key
        if key not in reference:
            known = ", ".join(sorted(reference))
            raise SemisegInputError(source, f"unknown setting {path!r}; known here: {known}")
        ref = reference[key]
        if isinstance(ref, dict):
            if not isinstance(value, dict):
                raise SemisegInputError(source, f"setting {path!r} must be a mapping of settings, got {value!r:.60}")
            if ref:
                out[key] = check_settings(value, ref, source, path + ".", complete)
            continue
        kinds = shipped_kinds().get(path, frozenset({_kind(ref)}))
        if kinds == {"null"}:
            continue  # nothing to check against
        ok, out[key] = _accepts(kinds, value)
        if not ok:
            wanted = " or ".join(KIND_NAMES.get(k, k) for k in sorted(kinds))
            raise SemisegInputError(source, f"setting {path!r} must be {wanted}, got {value!r:.60}")
    if complete:
        for key in reference:
            if key in cfg:
                continue
            # a setting added after the record was written: records of earlier versions keep loading
            # only where the value the code had before the setting existed is known; any other
            # default could change what a resumed or reloaded run does
            path = (prefix + key).removeprefix("ddpm.")
            if path not in BEFORE_SETTING:
                raise SemisegInputError(source, f"lacks the setting {prefix + key!r}")
            out[key] = copy.deepcopy(BEFORE_SETTING[path])
    return out


def preset_names(files: list[str]) -> list[str]:
    """The presets every one of ``files`` resolves (in the order the files name them)."""
    contents = [builtin_file(name) for name in files]
    names: list[str] = []
    for presets in contents:
        names += [n for n in presets if n not in names]
    aliases = ("default", "paper")  # resolve_preset maps these onto a file's first preset
    return [n for n in names if all(n in p or n in aliases for p in contents)]


Comments = dict[tuple[str, ...], tuple[list[str], list[str]]]


def _comments(text: str) -> dict[str, Comments]:
    """Comments of a shipped presets file, per preset and setting path: the full-line comments
    above a key and its trailing comment with any continuation lines.

    The shipped files are plain block YAML indented by two spaces, which is all this reads;
    PyYAML drops comments, and a round-trip YAML library would not merge layered files.
    """
    out: dict[str, Comments] = {}
    stack: list[str] = []
    above: list[str] = []
    last: tuple[str, ...] | None = None
    last_col = -1
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            col = line.index("#")
            if last is not None and col == last_col:
                out[stack[0]][last][1].append(stripped[1:].strip())  # continuation of a trailing comment
            elif stack:  # comments before the first preset describe the file, not a setting
                above.append(stripped[1:].strip())
            continue
        if not stripped or ":" not in stripped:
            continue
        indent = (len(line) - len(line.lstrip())) // 2
        key, value = (part.strip() for part in stripped.split(":", 1))
        stack = stack[:indent] + [key]
        trailing = value.split("#", 1)[1].strip() if value.startswith("#") or " #" in value else ""
        path = tuple(stack[1:])
        last, last_col = None, -1
        if path:
            before, after = out.setdefault(stack[0], {}).setdefault(path, ([], []))
            before.extend(above)
            if trailing:
                after.append(trailing)
                last, last_col = path, line.index("#", line.index(":"))
        above = []
    return out


class _Dumper(yaml.SafeDumper):
    """Block mappings, but short lists of scalars on one line (``features: [16, 32]``), as the shipped files write them."""


_Dumper.add_representer(
    list,
    lambda dumper, data: dumper.represent_sequence(
        "tag:yaml.org,2002:seq", data, flow_style=all(not isinstance(v, (dict, list)) for v in data)
    ),
)


def resolved_presets_text(files: list[str], command: str, only: str | None = None) -> str:
    """Every preset of ``files`` fully resolved, as one YAML mapping of preset name -> settings,
    commented with the shipped files' comments. It loads back unchanged with ``--config`` (pick a
    preset with ``--preset``): each preset is complete, so an edit applies to that preset only.
    ``only`` prints one preset."""
    sections = [(_comments(builtin_text(name)), next(iter(builtin_file(name)), None)) for name in files]
    lines = [
        f"# `{command}`: {'the preset ' + repr(only) if only else 'every preset'} of "
        f"{', '.join(f'semiseg/configs/{f}.yaml' for f in files)}, fully resolved.",
        "# Save it, edit values and pass it back with `--config FILE --preset NAME`; each preset is complete,",
        "# so an edit applies to the preset it is made in. Unknown keys and a key given twice are errors.",
    ]
    for preset in [only] if only else preset_names(files):
        body = yaml.dump({preset: load_config(files, preset)}, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
        comments: Comments = {}
        for per_preset, first in sections:  # a method's own file is more specific than the shared one
            own = per_preset.get(preset if preset in per_preset or preset not in ("default", "paper") else first, {})
            for path, (before, after) in own.items():
                old = comments.get(path, ([], []))
                comments[path] = (before or old[0], after or old[1])
        stack: list[str] = []
        for line in body.splitlines():
            stripped = line.strip()
            if ":" not in stripped or stripped.startswith("- "):
                lines.append(line)
                continue
            indent = (len(line) - len(line.lstrip())) // 2
            stack = stack[:indent] + [stripped.split(":", 1)[0]]
            before, after = comments.get(tuple(stack[1:]), ([], []))
            pad = " " * (2 * indent)
            lines += [f"{pad}# {c}" for c in before]
            if after:
                col = max(len(line) + 2, 40)
                lines.append(line.ljust(col) + f"# {after[0]}")
                lines += [" " * col + f"# {c}" for c in after[1:]]
            else:
                lines.append(line)
        lines.append("")
    return "\n".join(lines) + "\n"
