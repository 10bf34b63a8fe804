"""The benchmarks are not run by the suite, but what they import from the library must exist:
a rename in the library that forgets a benchmark fails here, not weeks later on a GPU box."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def library_imports(path: Path) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        library = isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
        if library and node.module.split(".")[0] in ("retrieval", "index"):
            found += [(node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_every_name_a_benchmark_imports_from_the_library_exists(path: Path) -> None:
    missing = []
    for module_name, name in library_imports(path):
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"{module_name}.{name}")
    assert missing == []
