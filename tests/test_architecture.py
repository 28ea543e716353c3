"""The layers of the `hyv` package and who may import whom (docs/architecture.md, "Code layers"):

    kernels < models < engine < service, training < cli

A layer imports only itself and the layers below it (service and training are siblings: neither
imports the other). Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hyv

PACKAGE = Path(hyv.__file__).resolve().parent
BELOW = {
    "kernels": set(),
    "models": {"kernels"},
    "engine": {"kernels", "models"},
    "service": {"kernels", "models", "engine"},
    "training": {"kernels", "models", "engine"},
}


def imported_hyv_layers(path: Path) -> list[tuple[int, str]]:
    """(line, layer) of every `hyv.<layer>` this file imports, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "hyv":  # from hyv import kernels
                modules = [f"hyv.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "hyv" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_every_layer_is_known() -> None:
    layers = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert layers == set(BELOW), "a new subpackage needs its place in BELOW and docs/architecture.md"


def test_no_layer_imports_a_higher_one() -> None:
    violations = []
    for layer, allowed in BELOW.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for line, imported in imported_hyv_layers(path):
                if imported != layer and imported not in allowed:
                    violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports hyv.{imported}")
    assert not violations, "\n".join(violations)


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from hyv.service.jobs import JobStore\n\nfrom hyv import engine\n")
    assert sorted(imported_hyv_layers(sample)) == [(2, "service"), (4, "engine")]
