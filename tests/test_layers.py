"""The package's floors: imports only go down. A lower package never imports a higher one, so the
pipeline reads from the folder tree (data -> preprocess -> models -> training -> methods -> runs
-> inference -> evaluation -> selection -> studies -> cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import semiseg

#: lowest first; modules at the package root that everything may use form the ground floor
FLOORS = [
    {"errors", "files", "config", "progress", "__init__"},
    {"data"},
    {"preprocess"},
    {"models"},
    {"training"},
    {"methods"},
    {"runs"},
    {"inference"},
    {"evaluation"},
    {"selection"},
    {"studies"},
    {"cli", "__main__"},
]
#: packages that must stay narrower than their floor allows
ONLY = {"evaluation": {"errors", "files", "config", "progress", "__init__", "data", "evaluation"}}
PACKAGE = Path(semiseg.__file__).parent


def floor_of(part: str) -> int:
    for i, names in enumerate(FLOORS):
        if part in names:
            return i
    raise AssertionError(f"semiseg.{part} is on no floor: add it to FLOORS in {__file__}")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported semiseg part) of every import in a file, lazy ones inside functions included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "semiseg"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "semiseg" and len(parts) > 1:
                out.append((node.lineno, parts[1]))
    return out


def test_imports_only_go_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        part = rel.parts[0].removesuffix(".py")
        here = floor_of(part)
        for line, target in imports(path):
            if target == "__version__":
                continue
            if floor_of(target) > here or (part in ONLY and target not in ONLY[part]):
                upward.append(f"{rel}:{line} imports semiseg.{target}")
    assert not upward, "imports that go up a floor:\n" + "\n".join(upward)


def test_floor_check_sees_an_upward_import(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from semiseg.studies.sweep import run_sweep\n")
    assert imports(bad) == [(2, "studies")] and floor_of("studies") > floor_of("training")
