"""hil's modules sit in layers, and imports point one way: down (or within a layer), never up.

    config -> transport -> device -> operations -> verdicts -> plugin     (bottom to top)

Every hil/**/*.py must be placed in LAYERS (a module not placed fails the test, so a new one gets a
layer). Every import of a hil module counts: module level, inside functions (no lazy-import loophole:
an import deferred into a function is still a dependency), under `if TYPE_CHECKING:`, and the modules
named in a `pytest_plugins` list. An upward import fails the test unless KNOWN_UPWARD names it.

    .venv/bin/python tests/test_layers.py     prints the layer table: lines and upward imports per layer
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hil"

LAYERS = ("config", "transport", "device", "operations", "verdicts", "plugin")  # bottom to top

# Path (relative to the repository) -> layer. An entry ending in "/" covers everything under it; the longest
# matching entry wins. Entries for files that no longer exist are harmless (files move between packages).
PLACEMENT = {
    # config: what everything may use. No I/O on devices, nothing of the layers above.
    "hil/__init__.py": "config",
    "hil/config.py": "config",
    "hil/errors.py": "config",
    "hil/deadline.py": "config",
    "hil/digest.py": "config",
    "hil/checks.py": "config",
    "hil/exit_codes.py": "config",
    # Pure maths (standard library and numpy), shipped to devices as hil_stats.py: imports nothing of hil, and
    # is used by operations (bench's adaptive stop, the runner) as much as by verdicts, so it sits at the bottom.
    "hil/stats.py": "config",
    # Code that runs on the device (runner, command server, probe, stats): self-contained (SELF_CONTAINED),
    # its source read by transport, device and runner, so it sits at the bottom too.
    "hil/ondevice/": "config",
    "hil/probe.py": "config",  # the device probe's script, until it moves into hil/ondevice/
    # transport: SSH, the serial console, the wire markers.
    "hil/transport/": "transport",
    # device: the one door to a device, and the probe of its timing conditions.
    "hil/device.py": "device",
    "hil/conditions.py": "device",
    # operations: what is done to and on devices.
    "hil/artifacts.py": "operations",
    "hil/eval_contract.py": "operations",
    "hil/deploy.py": "operations",
    "hil/faults/": "operations",
    "hil/lease.py": "operations",
    "hil/pool.py": "operations",  # devices leased outside pytest, for the `hil` commands
    "hil/runner/": "operations",
    "hil/lab/": "operations",
    # verdicts and reports: judging measurements, writing reports, orchestrating runs that are judged.
    "hil/budgets.py": "verdicts",
    "hil/bench.py": "verdicts",  # `hil bench`: a latency run judged against budgets (bench.verdicts)
    "hil/evaluation.py": "verdicts",
    "hil/report/": "verdicts",
    "hil/rollout.py": "verdicts",
    "hil/xdist_scheduling.py": "verdicts",
    # plugin and CLI: the entry points.
    "hil/plugin.py": "plugin",
    "hil/testing.py": "plugin",
    "hil/testing_plugin.py": "plugin",
    "hil/cli.py": "plugin",
}

# Modules that are shipped to devices and run there alone: they may import nothing of hil at all.
SELF_CONTAINED = ("hil/ondevice/",)

# (importing file, imported module) -> why it is allowed for now. Each entry must still be needed.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def layer_of(path: str) -> str | None:
    matches = [key for key in PLACEMENT if path == key or (key.endswith("/") and path.startswith(key))]
    return PLACEMENT[max(matches, key=len)] if matches else None


def module_path(name: str) -> str | None:
    """The file of a hil module ("hil.faults.ledger" -> "hil/faults/ledger.py"), None when there is none."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return rel(candidate)
    return None


def _package_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts if parts[-1] == "__init__" else parts[:-1])


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # dotted name as imported: the deepest module the statement names


def hil_imports(path: Path) -> list[Import]:
    """Every hil module `path` imports, at any depth of the file (functions, TYPE_CHECKING, pytest_plugins)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[Import] = []

    def add(line: int, name: str) -> None:
        if (name == "hil" or name.startswith("hil.")) and Import(line, name) not in found:
            found.append(Import(line, name))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this file's package
                package = _package_of(path).split(".")
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                # `from hil import checks` imports the module hil.checks; `from hil.checks import x` imports hil.checks
                add(node.lineno, submodule if module_path(submodule) else base)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytest_plugins"
                                                  for t in node.targets):
            for value in ast.walk(node.value):
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    add(node.lineno, value.value)
    return found


@dataclass
class Analysis:
    files: dict[str, str | None]  # file -> layer
    lines: dict[str, int]
    upward: list[tuple[str, int, str, str, str]]  # (file, line, module, its layer, module's layer)
    problems: list[str]


def analyse() -> Analysis:
    files: dict[str, str | None] = {}
    lines: dict[str, int] = {}
    upward = []
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = rel(path)
        files[name] = layer = layer_of(name)
        lines[name] = len(path.read_text().splitlines())
        if layer is None:
            problems.append(f"{name} is in no layer: place it in PLACEMENT (tests/test_layers.py)")
            continue
        for imp in hil_imports(path):
            target = module_path(imp.module)
            if target is None:
                problems.append(f"{name}:{imp.line} imports {imp.module}, which is no module of hil")
                continue
            if any(name.startswith(prefix) for prefix in SELF_CONTAINED):
                problems.append(f"{name}:{imp.line} imports {imp.module}: code that runs on devices imports "
                                "nothing of hil")
            target_layer = layer_of(target)
            if target_layer is None:
                continue  # reported as the target's own problem
            if LAYERS.index(target_layer) > LAYERS.index(layer):
                upward.append((name, imp.line, imp.module, layer, target_layer))
    return Analysis(files, lines, upward, problems)


def figures(analysis: Analysis) -> str:
    """Per layer: modules, lines, upward import statements, and the distinct modules above it imported."""
    rows = [f"{'layer':<11} {'modules':>7} {'lines':>6} {'upward imports':>14} {'modules above imported':>22}"]
    for layer in LAYERS:
        members = [f for f, lay in analysis.files.items() if lay == layer]
        ups = [u for u in analysis.upward if u[3] == layer]
        rows.append(f"{layer:<11} {len(members):>7} {sum(analysis.lines[f] for f in members):>6} {len(ups):>14} "
                    f"{len({u[2] for u in ups}):>22}")
    return "\n".join(rows)


def test_every_module_has_a_layer_and_imports_only_downward() -> None:
    analysis = analyse()
    unexpected = [u for u in analysis.upward if (u[0], u[2]) not in KNOWN_UPWARD]
    seen = {(u[0], u[2]) for u in analysis.upward}
    stale = [f"KNOWN_UPWARD lists {f} importing {m}, which it no longer does: remove the entry"
             for f, m in KNOWN_UPWARD if (f, m) not in seen]
    messages = [*analysis.problems,
                *(f"{f} (layer {lay}) imports {m} (layer {above} above it), line {line}"
                  for f, line, m, lay, above in unexpected),
                *stale]
    print("\n" + figures(analysis))
    assert not messages, "\n".join([*messages, "", figures(analysis)])


def test_the_walk_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The walk itself: function-level, TYPE_CHECKING, `from hil import module` and pytest_plugins all count."""
    sample = tmp_path / "sample.py"  # absolute imports only: relative ones resolve against a file under ROOT
    sample.write_text("from typing import TYPE_CHECKING\nimport hil\nfrom hil import checks\n"
                      "if TYPE_CHECKING:\n    from hil.device import Device\n"
                      "def f():\n    from hil.faults.ledger import run_id\n"
                      "pytest_plugins = ['hil.report.pytest_plugin']\n")
    modules = {i.module for i in hil_imports(sample)}
    assert modules == {"hil", "hil.checks", "hil.device", "hil.faults.ledger", "hil.report.pytest_plugin"}


if __name__ == "__main__":
    result = analyse()
    print(figures(result))
    for f, line, m, lay, above in result.upward:
        print(f"  {f}:{line} (layer {lay}) imports {m} (layer {above} above it)")
    for problem in result.problems:
        print("  " + problem)
