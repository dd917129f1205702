"""The CI check: every threat's modules and tests exist in this checkout.

Tests are found statically (ast), not by importing them: a test id ``tests/x.py::test_y`` exists
when ``tests/x.py`` defines a function ``test_y`` at module level or in a class (parametrized
ids ``test_y[...]`` refer to ``test_y``). Modules are dotted names resolved to files.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from threat_model.model import ThreatModel


@cache
def _test_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            names.add(node.name)
    return frozenset(names)


def _module_exists(root: Path, dotted: str) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def check_model(model: ThreatModel, root: Path) -> list[str]:
    """Return one problem per missing module or test (empty list: the model holds)."""
    problems: list[str] = []
    for threat in model.threats:
        for module in threat.modules:
            if not _module_exists(root, module):
                problems.append(f"{threat.id}: module {module} does not exist")
        for test_id in threat.tests:
            file_part, _, func = test_id.partition("::")
            path = root / file_part
            if not path.is_file():
                problems.append(f"{threat.id}: test file {file_part} does not exist")
            elif func.split("[")[0] not in _test_names(path):
                problems.append(f"{threat.id}: test {test_id} does not exist")
    return problems
