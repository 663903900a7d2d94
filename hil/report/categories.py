"""Failure categories: one list that both Allure (categories.json) and summary.json use.

A QA reader triages by cause: the lab, the artifact's integrity, the runtime, or one of the
budgets. Each category matches the exception line of a non-passing test (`Type: message`, as
allure-pytest records it) and its Allure status: product failures are "failed" (hil.errors.
ProductFailure is an AssertionError), infrastructure and inconclusive measurements are "broken".
The first match wins, so the order below matters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# The modules that define infrastructure errors of their own: imported so the taxonomy below is whole.
import hil.faults.ledger
import hil.runner.errors
import hil.runner.stream
import hil.transport.serial  # noqa: F401
from hil import checks
from hil.errors import InfraError

INFRASTRUCTURE = "Device unreachable / lab infrastructure"
DEPLOY_REJECTED = "Deploy rejected (integrity)"
RUNTIME_INCOMPATIBLE = "Runtime incompatibility (provider or opset)"
LATENCY = "Latency budget exceeded"
MEMORY = "Memory budget exceeded"
ACCURACY = "Accuracy regression"
INCONCLUSIVE = "Inconclusive measurement"

_ANY = r"[\s\S]*"  # the message may span lines; no regex flag is portable across Allure versions


def _subclasses(cls: type) -> set[type]:
    return {cls}.union(*(_subclasses(sub) for sub in cls.__subclasses__()))


# Every infrastructure error, from the one taxonomy (hil.errors.InfraError and what derives from it), so
# a new one is categorised the moment it exists: the plugin's isinstance check and this list agree.
INFRA_TYPES = tuple(sorted({c.__name__ for c in _subclasses(InfraError)}))
# The timing-sensitive checks of the registry (latency, cold start, throughput), as one alternation.
_LATENCY_CHECKS = "(" + "|".join(c.regex for c in checks.CHECKS if c.timing) + ")"
_ACCURACY_CHECKS = (r"(accuracy_\w+|relative_accuracy\w*|max_abs_error|min_cosine_similarity|top1_agreement"
                    r"|int8_vs_fp32\w*)")


@dataclass(frozen=True)
class Category:
    name: str
    statuses: tuple[str, ...]  # Allure statuses: failed, broken
    pattern: str
    description: str

    def matches(self, status: str, message: str) -> bool:
        return status in self.statuses and re.fullmatch(self.pattern, message) is not None

    def to_allure(self) -> dict[str, object]:
        return {"name": self.name, "matchedStatuses": list(self.statuses), "messageRegex": self.pattern,
                "description": self.description}


CATEGORIES: tuple[Category, ...] = (
    Category(INFRASTRUCTURE, ("broken",), _ANY + r"\b(" + "|".join(INFRA_TYPES) + r"):" + _ANY,
             "The lab, not the model: retry the run or fix the device (the exit code is 75)."),
    Category(DEPLOY_REJECTED, ("failed", "broken"), _ANY + r"\bArtifactRejected:" + _ANY,
             "The artifact failed its signature, sha256 or manifest checks; nothing was activated."),
    Category(RUNTIME_INCOMPATIBLE, ("failed", "broken"),
             _ANY + r"\b(RuntimeIncompatible|ProviderMissing|ModelLoadFailed):" + _ANY,
             "The device's onnxruntime cannot run the model (execution provider or opset)."),
    Category(MEMORY, ("failed",), _ANY + r"(budget exceeded: memory_mib\b|\bOutOfMemory:)" + _ANY,
             "Peak memory above the budget, or the model was killed for memory."),
    Category(LATENCY, ("failed",), _ANY + r"budget exceeded: " + _LATENCY_CHECKS + r"\b" + _ANY,
             "A latency, cold-start or throughput budget missed with confidence."),
    Category(ACCURACY, ("failed",), _ANY + r"budget exceeded: " + _ACCURACY_CHECKS + r"\b" + _ANY,
             "Outputs or accuracy worse than the budget or the reference."),
    Category(INCONCLUSIVE, ("broken",), _ANY + r"\bInconclusiveMeasurement:" + _ANY,
             "Neither PASS nor FAIL: too few or too noisy samples. Not a verdict on the model."),
)


def categorize(status: str, message: str) -> str | None:
    """The first category matching an Allure status and exception line, else None."""
    return next((c.name for c in CATEGORIES if c.matches(status, message)), None)


def write_categories(results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "categories.json"
    path.write_text(json.dumps([c.to_allure() for c in CATEGORIES], indent=2) + "\n")
    return path
