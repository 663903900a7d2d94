"""hil.testing is the one surface a suite needs for verdicts: the shipped suites use it and nothing behind it."""

from __future__ import annotations

import ast
from pathlib import Path

import hil.testing

SUITES = Path(__file__).resolve().parents[1] / "suites"
# The verdict machinery lives behind hil.testing: a suite reaching past it is not what a user's suite can do.
BEHIND_THE_SURFACE = ("conftest", "hil.budgets", "hil.conditions", "hil.stats", "hil.report", "hil.eval_contract",
                      "hil.evaluation", "hil.testing_plugin")


def test_every_public_name_resolves() -> None:
    missing = [name for name in hil.testing.__all__ if not hasattr(hil.testing, name)]
    assert not missing, f"hil.testing.__all__ names what it does not have: {missing}"
    assert {"Judge", "Latency", "Evaluation", "Releases", "accuracy_checks", "check_percentile"} <= set(
        hil.testing.__all__)


def test_the_shipped_suites_import_only_the_surface_for_verdicts() -> None:
    offenders = []
    for path in sorted(SUITES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {m}" for m in modules if m.startswith(BEHIND_THE_SURFACE)]
    assert not offenders, f"suites reach behind hil.testing: {offenders}"


def test_the_suites_have_no_wiring_of_their_own() -> None:
    conftest = SUITES / "conftest.py"
    tree = ast.parse(conftest.read_text())
    assert not [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)], \
        "suites/conftest.py defines fixtures or hooks again: they belong in hil.testing_plugin"
