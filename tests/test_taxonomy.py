"""One error taxonomy: every infrastructure error hil defines, wherever it lives, is reported as the lab's
fault (category and exit code 75), and no product failure is."""

from __future__ import annotations

import importlib
import pkgutil

import hil
from hil.errors import InfraError, ProductFailure
from hil.report.categories import INFRASTRUCTURE, categorize


def _all_hil_classes() -> list[type]:
    for module in pkgutil.walk_packages(hil.__path__, "hil."):
        if not module.name.startswith("hil.ondevice"):  # runs on the device: imports nothing of hil
            importlib.import_module(module.name)
    seen: list[type] = []
    stack: list[type] = [Exception]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                stack.append(sub)
    return [c for c in seen if c.__module__.startswith("hil.")]


def test_every_infrastructure_error_is_categorised_as_the_labs() -> None:
    infra = [c for c in _all_hil_classes() if issubclass(c, InfraError)]
    assert {"RunnerTimeout", "StreamGone", "SerialConnectError", "SerialAuthError", "UndoUnproven"} <= {
        c.__name__ for c in infra}
    missed = [c.__name__ for c in infra if categorize("broken", f"{c.__module__}.{c.__name__}: it broke")
              != INFRASTRUCTURE]
    assert not missed, f"infrastructure errors not in the Infrastructure category: {missed}"


def test_no_product_failure_is_categorised_as_the_labs() -> None:
    product = [c for c in _all_hil_classes() if issubclass(c, ProductFailure) and not issubclass(c, InfraError)]
    assert product
    wrong = [c.__name__ for c in product if categorize("failed", f"{c.__name__}: x") == INFRASTRUCTURE
             or categorize("broken", f"{c.__name__}: x") == INFRASTRUCTURE]
    assert not wrong, wrong
