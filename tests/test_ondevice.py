"""Everything in hil/ondevice/ runs on the device: its imports and its grammar are the device's.

The device's Python may be as old as 3.8 and has only the standard library, numpy and onnxruntime;
each file is shipped alone, as source, with no hil installed there. So for every hil/ondevice/*.py
(found by glob: a new file is covered without being listed here):
  * every import, at any depth (inside functions and `if TYPE_CHECKING:` too), is of the standard
    library (one that Python 3.8 has), numpy, onnxruntime, or a sibling hil ships next to the
    runner under its device name (hil_stats); nothing relative, nothing from hil;
  * the source parses with Python 3.8's grammar (ast's feature_version).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import hil.ondevice
from hil.runner.driver import RUNNER_SOURCE, STATS_NAME, STATS_SOURCE

ONDEVICE = Path(hil.ondevice.__file__).parent
FILES = sorted(ONDEVICE.glob("*.py"))
THIRD_PARTY = {"numpy", "onnxruntime"}
SHIPPED_SIBLINGS = {Path(STATS_NAME).stem}  # what the runner finds next to it on the device
# In this host's sys.stdlib_module_names but not in Python 3.8's standard library.
NEWER_THAN_38 = {"graphlib", "zoneinfo", "tomllib"}
STDLIB_38 = set(sys.stdlib_module_names) - NEWER_THAN_38


def imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in the tree; a relative import is "." + its module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            found.append((node.lineno, "." * node.level + module if node.level else module))
    return found


def test_the_folder_holds_what_is_shipped() -> None:
    names = {path.name for path in FILES}
    assert {"__init__.py", "runner.py", "stats.py", "cmdserver.py", "probe.py"} <= names
    assert RUNNER_SOURCE.parent == STATS_SOURCE.parent == ONDEVICE


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_imports_only_the_standard_library_numpy_and_onnxruntime(path: Path) -> None:
    allowed = STDLIB_38 | THIRD_PARTY | SHIPPED_SIBLINGS
    found = imports(ast.parse(path.read_text(), filename=str(path)))
    bad = [f"line {line}: {module}" for line, module in found if module not in allowed]
    assert not bad, f"hil/ondevice/{path.name} imports what a device does not have: {bad}"


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_parses_with_python_3_8_grammar(path: Path) -> None:
    try:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))
    except SyntaxError as exc:
        pytest.fail(f"hil/ondevice/{path.name}:{exc.lineno}: not Python 3.8 syntax: {exc.msg}")


def test_the_checks_catch_what_they_are_for() -> None:
    """The checks themselves: a nested import of hil, a relative one, a 3.9 module, and 3.10 syntax all fail."""
    source = ("import json\n"
              "def f():\n    import hil.stats\n    from . import probe\n    import zoneinfo\n"
              "    from numpy import linalg\n    import hil_stats\n")
    assert imports(ast.parse(source)) == [(1, "json"), (3, "hil"), (4, "."), (5, "zoneinfo"), (6, "numpy"),
                                          (7, "hil_stats")]
    allowed = STDLIB_38 | THIRD_PARTY | SHIPPED_SIBLINGS
    assert [m for _, m in imports(ast.parse(source)) if m not in allowed] == ["hil", ".", "zoneinfo"]
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 8))
