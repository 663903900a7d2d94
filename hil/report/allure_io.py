"""hil's side of Allure: labels from the device and model, attachments, environment.properties.

Every call here is harmless without `--alluredir`: allure-pytest then has no listener and allure's
calls do nothing, so suites attach unconditionally.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import allure
import pytest
from allure_commons.types import AttachmentType, LabelType, Severity

# Suite kind (the test module without test_) -> epic: what a release manager asks about.
_EPICS = {"smoke": "Device health", "deploy": "Deployment", "latency": "Performance", "throughput": "Performance",
          "accuracy": "Accuracy"}
_SEVERITY = {"smoke": Severity.BLOCKER, "deploy": Severity.CRITICAL, "latency": Severity.CRITICAL,
             "throughput": Severity.CRITICAL, "accuracy": Severity.CRITICAL}


def suite_kind(item: pytest.Item) -> str:
    """suites/test_faults_network.py -> 'faults_network'."""
    return item.path.stem.removeprefix("test_").removesuffix("_test")


@functools.lru_cache(maxsize=256)
def _manifest_name_version(directory: str) -> tuple[str, str] | None:
    """name and version from an artifact's manifest, read cheaply at collection (verified later)."""
    try:
        raw = tomllib.loads((Path(directory) / "manifest.toml").read_text())
        return str(raw["name"]), str(raw["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None


def collection_labels(item: pytest.Item, device: str) -> None:
    """Suite hierarchy device > suite kind > model, epic/feature/story, severity and the model's link."""
    kind = suite_kind(item)
    marks = [allure.label(LabelType.PARENT_SUITE, device), allure.label(LabelType.SUITE, kind)]
    epic = "Resilience" if kind.startswith("faults") else _EPICS.get(kind, "Validation")
    marks += [allure.label(LabelType.EPIC, epic), allure.label(LabelType.FEATURE, kind.replace("_", " ")),
              allure.label(LabelType.STORY, getattr(item, "originalname", item.name).removeprefix("test_")
                           .replace("_", " ")),
              allure.label(LabelType.SEVERITY, _SEVERITY.get(kind, Severity.NORMAL).value)]
    # Device tags need no label of ours: they are pytest marks, which allure-pytest turns into tags.
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "artifact" in params:
        directory = Path(params["artifact"]).resolve()
        found = _manifest_name_version(str(directory))
        if found is not None:
            name, ver = found
            marks.append(allure.label(LabelType.SUB_SUITE, name))
            marks.append(allure.link((directory / "manifest.toml").as_uri(), name=f"artifact {name} {ver}"))
    for mark in marks:
        if mark is not None:  # None when allure-pytest is not loaded at all
            item.add_marker(mark)


def attach_json(name: str, doc: Any) -> None:
    allure.attach(json.dumps(doc, indent=2, sort_keys=True, default=str), name=name,
                  attachment_type=AttachmentType.JSON)


def attach_text(name: str, text: str) -> None:
    allure.attach(text, name=name, attachment_type=AttachmentType.TEXT)


def attach_png(name: str, png: bytes) -> None:
    allure.attach(png, name=name, attachment_type=AttachmentType.PNG)


def attach_csv(name: str, text: str) -> None:
    allure.attach(text, name=name, attachment_type=AttachmentType.CSV)


def budget_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """A plain-text table of measurements (name, measured, limit, bound, n, verdict) for a report reader."""
    header = ["check", "measured", "limit", "bound", "n", "verdict"]
    lines = [header]
    for m in rows:
        unit = f" {m['unit']}" if m.get("unit") else ""
        bound = m.get("upper_bound") if m.get("verdict") != "FAIL" else m.get("lower_bound")
        lines.append([m["name"], f"{m['value']:.4g}{unit}", f"{m.get('comparator', '')} {m['limit']:g}{unit}",
                      "" if bound is None else f"{bound:.4g}{unit}", "" if m.get("samples") is None
                      else str(m["samples"]), str(m.get("verdict", ""))])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in lines) + "\n"


def samples_csv(column: str, values: Iterable[float]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([column])
    writer.writerows([f"{v:.6f}"] for v in values)
    return out.getvalue()


def _property_key(key: str) -> str:
    return key.replace(" ", "\\ ")  # a space ends a key in Java properties


def _property_value(value: object) -> str:
    # Java properties: one line per key; a backslash or newline would break the file.
    return str(value).replace("\\", "/").replace("\n", " ")


def write_environment(results_dir: Path, summary: Mapping[str, Any]) -> Path:
    """environment.properties: versions, each device's facts summary, each model's version and sha256, seeds."""
    host = summary.get("host", {})
    entries: dict[str, object] = {"hil": host.get("hil"), "python": host.get("python"),
                                  "onnxruntime (host)": host.get("onnxruntime"), "pytest": host.get("pytest"),
                                  "run id": summary.get("run_id")}
    for name, device in sorted(summary.get("devices", {}).items()):
        facts = device.get("facts", {})
        entries[f"device {name}"] = (f"{'emulated' if device.get('emulated') else 'real'}, {facts.get('arch', '?')}, "
                                     f"cpus {facts.get('cpu_quota') or facts.get('cpu_count', '?')}, "
                                     f"memory limit {facts.get('memory_limit_bytes') or '?'} B, "
                                     f"onnxruntime {facts.get('onnxruntime', '?')}, python {facts.get('python', '?')}, "
                                     f"fingerprint {device.get('fingerprint')}")
    for name, model in sorted(summary.get("models", {}).items()):
        entries[f"model {name}"] = f"{model.get('version')} sha256 {model.get('sha256')}"
    seeds = sorted({str(c["seed"]) for c in summary.get("checks", []) if c.get("seed") is not None}
                   | {str(f["seed"]) for f in summary.get("faults", []) if f.get("seed") is not None})
    if seeds:
        entries["seeds"] = ", ".join(seeds)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "environment.properties"
    lines = [f"{_property_key(key)}={_property_value(value)}\n" for key, value in entries.items() if value is not None]
    path.write_text("".join(lines))
    return path
