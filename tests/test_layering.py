"""The data flow is the import graph: lower layers never import the ones that use them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "critstep"
# layer -> packages it must never import (directly or lazily inside a function)
FORBIDDEN = {
    "distill": ("critstep.selector", "critstep.tuner", "critstep.commands", "critstep.cli"),
    "selector": ("critstep.tuner", "critstep.commands", "critstep.cli"),
    "formats": ("critstep.selector", "critstep.distill", "critstep.tuner", "critstep.commands", "critstep.cli"),
    "tuner": ("critstep.selector", "critstep.distill", "critstep.commands", "critstep.cli"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_never_imports_the_layers_above_it(layer: str) -> None:
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
           for path in sorted((PACKAGE / layer).rglob("*.py"))
           for line, name in _imports(path)
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer])]
    assert not bad, "\n".join(bad)
