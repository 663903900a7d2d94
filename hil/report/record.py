"""Recording measurements for summary.json from inside a test (any process, xdist worker included).

A check travels as a JSON user property ("hil.check"), which pytest-xdist carries to the process
that writes the summary; raw samples are too big for that and go to a CSV file under the report
directory, which the property names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hil.budgets import Measurement
from hil.report.allure_io import samples_csv


@dataclass(frozen=True)
class RawSamples:
    """Where a measurement's raw samples are (relative to the report directory), and what they are."""

    file: str
    kind: str  # e.g. "latency_ms"

    def for_quantile(self, quantile: float | None) -> dict[str, Any]:
        return {"file": self.file, "kind": self.kind, "quantile": quantile}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80] or "_"


def write_raw(report_dir: Path, device: str, model: str, kind: str, values: Iterable[float], key: str) -> RawSamples:
    """Write samples to raw/<device>/<model>/<kind>-<key hash>.csv under report_dir (key: what was measured)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    relative = Path("raw") / _safe(device) / _safe(model) / f"{_safe(kind)}-{digest}.csv"
    path = report_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(samples_csv(kind, values))
    return RawSamples(relative.as_posix(), kind)


def record_check(node: pytest.Item, measurement: Measurement, raw: dict[str, Any] | None = None) -> None:
    """Put one measurement (and where its raw samples are) into the test's report for summary.json."""
    doc = measurement.to_dict()
    doc.pop("text", None)
    doc["raw"] = raw
    node.user_properties.append(("hil.check", json.dumps(doc, sort_keys=True)))


def record_metric(node: pytest.Item, name: str, value: float, unit: str = "", raw: dict[str, Any] | None = None,
                  samples: int | None = None) -> None:
    """A measured value without a budget (no verdict): still compared run to run by `hil gate`."""
    doc = {"name": name, "value": float(value), "unit": unit, "limit": None, "comparator": None, "verdict": None,
           "confidence": None, "lower_bound": None, "upper_bound": None, "samples": samples, "raw": raw}
    node.user_properties.append(("hil.check", json.dumps(doc, sort_keys=True)))
