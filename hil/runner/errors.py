"""What can go wrong with a run on the device, split the way the rest of hil splits failures.

The model's own problems (it does not load, needs a provider the device lacks, does not fit in
memory, rejects its inputs, fails while running) are product failures: `RunnerError` and its kinds.
A device that cannot run the runner at all (crash without a report, a run that hangs) is
infrastructure. Every error names the device, the model and version, and a category.
"""

from __future__ import annotations

from hil.errors import CommandTimeout, ConfigError, InfraError, ProductFailure

MODEL_LOAD = "model_load"
PROVIDER_MISSING = "provider_missing"
OUT_OF_MEMORY = "out_of_memory"
BAD_INPUT = "bad_input"
RUNTIME = "runtime"
CONFIG = "config"
CRASH = "crash"
TIMEOUT = "timeout"


class _Located:
    """Where a run failed: device, model, version, category, and the runner's detail."""

    category: str = ""
    device: str = ""
    model: str = ""
    version: str = ""
    detail: str = ""

    def _locate(self, category: str, device: str, model: str, version: str, detail: str) -> None:
        self.category, self.device, self.model, self.version, self.detail = category, device, model, version, detail


def _message(category: str, device: str, model: str, version: str, message: str, detail: str) -> str:
    text = f"device '{device}': model '{model}' {version}: {category}: {message}"
    return f"{text} ({detail})" if detail else text


class RunnerError(ProductFailure, _Located):
    """The model failed on the device; `category` says how (one of the subclasses)."""

    def __init__(self, message: str, *, category: str, device: str, model: str, version: str,
                 detail: str = "") -> None:
        super().__init__(_message(category, device, model, version, message, detail))
        self._locate(category, device, model, version, detail)


class ModelLoadFailed(RunnerError):
    """onnxruntime cannot load the model (missing or corrupt file, invalid graph)."""


class ProviderMissing(RunnerError):
    """An execution provider the run asked for is not available (and fallback was not allowed)."""


class OutOfMemory(RunnerError):
    """The model does not fit in the device's memory (allocation failure, or killed by the OOM killer)."""


class BadInput(RunnerError):
    """The inputs do not fit the model (shape, dtype, missing array)."""


class InferenceFailed(RunnerError):
    """onnxruntime failed while running the model."""


class RunnerConfigError(ConfigError, _Located):
    """The run settings are invalid: the caller's mistake, not the model's nor the device's."""

    def __init__(self, message: str, *, device: str, model: str, version: str, detail: str = "") -> None:
        super().__init__(_message(CONFIG, device, model, version, message, detail))
        self._locate(CONFIG, device, model, version, detail)


class RunnerCrashed(InfraError, _Located):
    """The runner ended without a report and not by the OOM killer: the device, not the model, is suspect."""

    def __init__(self, message: str, *, device: str, model: str, version: str, detail: str = "",
                 exit_status: int | None = None) -> None:
        super().__init__(_message(CRASH, device, model, version, message, detail))
        self._locate(CRASH, device, model, version, detail)
        self.exit_status = exit_status


class RunnerTimeout(CommandTimeout, _Located):
    """The runner did not finish within its timeout and was killed on the device."""

    def __init__(self, message: str, *, device: str, model: str, version: str, detail: str = "") -> None:
        super().__init__(_message(TIMEOUT, device, model, version, message, detail))
        self._locate(TIMEOUT, device, model, version, detail)


BY_CATEGORY: dict[str, type[RunnerError]] = {
    MODEL_LOAD: ModelLoadFailed, PROVIDER_MISSING: ProviderMissing, OUT_OF_MEMORY: OutOfMemory,
    BAD_INPUT: BadInput, RUNTIME: InferenceFailed,
}
