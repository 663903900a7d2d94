"""An artifact's evaluation contract: what to feed the model to judge it, and how to judge what comes out.

It lives in the manifest's `[eval]` table, so the artifact's signature binds it, and every file it names
lies inside the artifact directory with its sha256 in `[eval.files]` (written by `hil artifact sign`):
swapped eval data is refused like a swapped model.

    [eval]
    task = "classification"          # or "regression", or "agreement" (outputs vs the reference only)
    data = "eval/inputs.npz"         # the eval inputs (and labels), inside the artifact directory
    inputs = { input = "x" }         # model input name -> array key in `data`
    labels = "y"                     # array key of the labels in `data` (classification, regression)
    output = "probabilities"         # the model output that is judged
    top_k = 1                        # classification: also judge top-k accuracy when > 1
    tolerance = 0.05                 # regression: the largest acceptable mean absolute error
    reference = "eval/reference.npz" # host reference outputs: output name -> array, same rows as `data`
    agreement = "close"              # "close" (max abs error, cosine) or "exact"; only with `reference`
    parent = "../my-model-fp32"      # an int8 model's fp32 parent artifact (its top-1 must be kept)
    dims = { seq = 128 }             # values of named dimensions (latency inputs of that size)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from hil.digest import sha256_file
from hil.errors import ArtifactRejected

TASKS = ("classification", "regression", "agreement")
AGREEMENTS = ("close", "exact")
_KEYS = {"task", "data", "inputs", "labels", "output", "top_k", "tolerance", "reference", "agreement", "parent",
         "parent_sha256", "dims", "files"}
_DIM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class EvalContract:
    task: str
    data: str  # relative to the artifact directory
    inputs: dict[str, str]  # model input name -> array key in data
    output: str
    labels: str | None = None
    top_k: int = 1
    tolerance: float | None = None
    reference: str | None = None
    agreement: str = "close"
    parent: str | None = None  # relative to the artifact directory
    parent_sha256: str | None = None  # the parent's model.onnx, bound by this artifact's signature
    dims: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256, bound by the signature

    def paths(self) -> list[str]:
        """Every file of the contract inside the artifact directory (the parent is an artifact of its own)."""
        return [p for p in (self.data, self.reference) if p is not None]

    def to_table(self) -> dict[str, Any]:
        table: dict[str, Any] = {"task": self.task, "data": self.data, "inputs": dict(self.inputs),
                                 "output": self.output}
        optional = {"labels": self.labels, "tolerance": self.tolerance, "reference": self.reference,
                    "parent": self.parent, "parent_sha256": self.parent_sha256}
        table.update({k: v for k, v in optional.items() if v is not None})
        if self.top_k != 1:
            table["top_k"] = self.top_k
        if self.reference is not None:
            table["agreement"] = self.agreement
        if self.dims:
            table["dims"] = dict(self.dims)
        if self.files:
            table["files"] = dict(self.files)
        return table

    def located(self, directory: Path) -> tuple[dict[str, Path], Path | None]:
        """Each file of the contract inside `directory`, and the parent's model.onnx; raises ArtifactRejected
        naming the first that is not there (or lies outside the artifact)."""
        files = {p: _inside(directory, p, "eval file") for p in self.paths()}
        if self.parent is None:
            return files, None
        model = self.parent_dir(directory) / "model.onnx"
        if not model.is_file():
            raise ArtifactRejected(f"{directory}: [eval] parent '{self.parent}' has no model.onnx at {model}")
        return files, model

    def hashed(self, directory: Path) -> EvalContract:
        """The same contract with each file's sha256 now, and the parent model's (what signing binds)."""
        files, parent_model = self.located(directory)
        return replace(self, files={p: sha256_file(path) for p, path in files.items()},
                       parent_sha256=sha256_file(parent_model) if parent_model is not None else None)

    def parent_dir(self, directory: Path) -> Path:
        assert self.parent is not None
        return (directory / self.parent).resolve()


def _inside(directory: Path, relative: str, what: str) -> Path:
    """directory/relative, refusing a path that leaves the artifact directory or names no file."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        raise ArtifactRejected(f"{directory}: {what} '{relative}' must be a path inside the artifact directory")
    path = directory / pure
    if not path.is_file():
        raise ArtifactRejected(f"{directory}: {what} '{relative}' does not exist (copy it into the artifact)")
    return path


def _reject(where: Path, message: str) -> ArtifactRejected:
    return ArtifactRejected(f"{where}: manifest [eval]: {message}")


def _string(where: Path, raw: Mapping[str, Any], key: str, required: bool = False) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _reject(where, f"'{key}' must be a non-empty string" + (" and is required" if required else ""))
    return value


def _string_table(where: Path, raw: Any, key: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in raw.items()):
        raise _reject(where, f"'{key}' must be a table of strings")
    return dict(raw)


def parse_contract(where: Path, raw: Any, input_names: tuple[str, ...], output_names: tuple[str, ...],
                   dim_names: set[str]) -> EvalContract:
    """The [eval] table, checked against the model's own inputs, outputs and named dimensions."""
    if not isinstance(raw, dict):
        raise _reject(where, "must be a table")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise _reject(where, f"unknown key '{unknown[0]}' (known: {', '.join(sorted(_KEYS))})")
    task = _string(where, raw, "task", required=True)
    if task not in TASKS:
        raise _reject(where, f"task '{task}' is not one of {', '.join(TASKS)}")
    data = _string(where, raw, "data", required=True)
    output = _string(where, raw, "output", required=True)
    assert task is not None and data is not None and output is not None
    if output not in output_names:
        raise _reject(where, f"output '{output}' is not an output of the model ({', '.join(output_names)})")
    inputs = _string_table(where, raw.get("inputs", {}), "inputs")
    if set(inputs) != set(input_names):
        raise _reject(where, f"'inputs' must map every model input ({', '.join(input_names)}) to an array key "
                             f"of '{data}', got {', '.join(sorted(inputs)) or 'none'}")
    labels = _string(where, raw, "labels")
    if task in ("classification", "regression") and labels is None:
        raise _reject(where, f"task '{task}' needs 'labels', the array key of the labels in '{data}'")
    top_k = raw.get("top_k", 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise _reject(where, f"'top_k' must be a positive integer, got {top_k!r}")
    tolerance = raw.get("tolerance")
    if task == "regression":
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance <= 0:
            raise _reject(where, "task 'regression' needs 'tolerance', the largest acceptable mean absolute "
                                 f"error (a positive number), got {tolerance!r}")
        tolerance = float(tolerance)
    elif tolerance is not None:
        raise _reject(where, f"'tolerance' is for task 'regression', not '{task}'")
    reference = _string(where, raw, "reference")
    if task == "agreement" and reference is None:
        raise _reject(where, "task 'agreement' needs 'reference', the npz of the host's reference outputs")
    agreement = _string(where, raw, "agreement") or "close"
    if agreement not in AGREEMENTS:
        raise _reject(where, f"agreement '{agreement}' is not one of {', '.join(AGREEMENTS)}")
    dims_raw = raw.get("dims", {})
    if not isinstance(dims_raw, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims_raw.values()):
        raise _reject(where, "'dims' must be a table of positive integers, e.g. dims = { seq = 128 }")
    for name in dims_raw:
        if name not in dim_names:
            raise _reject(where, f"dims: '{name}' is not a named dimension of the model's inputs "
                                 f"({', '.join(sorted(dim_names)) or 'it has none'})")
    files = _string_table(where, raw.get("files", {}), "files")
    for path, digest in files.items():
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _reject(where, f"files.'{path}' must be a sha256 (64 lowercase hex digits)")
    return EvalContract(task=task, data=data, inputs=inputs, output=output, labels=labels, top_k=top_k,
                        tolerance=tolerance, reference=reference, agreement=agreement,
                        parent=_string(where, raw, "parent"), parent_sha256=_string(where, raw, "parent_sha256"),
                        dims=dict(dims_raw), files=files)


def verify_files(directory: Path, contract: EvalContract, label: str) -> None:
    """Every file of the contract is there, inside the artifact, with the sha256 the signature binds."""
    for relative in contract.paths():
        expected = contract.files.get(relative)
        if expected is None:
            raise ArtifactRejected(f"{label}: rejected: eval file '{relative}' has no sha256 in [eval.files]: "
                                   "sign the artifact again (`hil artifact sign`)")
        path = _inside(directory, relative, "eval file")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactRejected(f"{label}: rejected: eval file {path} has sha256 {actual}, the manifest says "
                                   f"{expected}: the eval data was changed after signing")
    if contract.parent is not None and contract.parent_sha256 is None:
        raise ArtifactRejected(f"{label}: rejected: [eval] parent '{contract.parent}' has no parent_sha256: "
                               "sign the artifact again (`hil artifact sign`)")


def parse_dims(items: list[str], where: str) -> dict[str, int]:
    """['seq=128', 'batch=4'] (command line) -> {'seq': 128, 'batch': 4}."""
    dims: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _DIM.fullmatch(name) or not value.isdigit() or int(value) < 1:
            raise ArtifactRejected(f"{where}: '{item}' is not NAME=POSITIVE_INTEGER (e.g. seq=128)")
        dims[name] = int(value)
    return dims


# -- the data a contract names --------------------------------------------------------------------


@dataclass(frozen=True)
class EvalData:
    """The arrays of a contract, read from the artifact directory."""

    contract: EvalContract
    inputs_path: Path
    labels: np.ndarray | None
    reference: dict[str, np.ndarray] | None
    rows: int

    @property
    def reference_output(self) -> np.ndarray | None:
        return None if self.reference is None else self.reference[self.contract.output]


def load_eval_data(directory: Path, contract: EvalContract) -> EvalData:
    """Open the contract's npz files and check they agree with it (keys present, one row per sample)."""
    inputs_path = _inside(directory, contract.data, "eval data")
    with np.load(inputs_path, allow_pickle=False) as data:
        missing = [key for key in [*contract.inputs.values(), *([contract.labels] if contract.labels else [])]
                   if key not in data.files]
        if missing:
            raise ArtifactRejected(f"{inputs_path}: no array '{missing[0]}' (it has {', '.join(data.files)}); "
                                   "fix [eval] inputs/labels in the manifest")
        rows = {int(data[key].shape[0]) for key in contract.inputs.values()}
        labels = np.asarray(data[contract.labels]) if contract.labels else None
    if len(rows) != 1 or (labels is not None and labels.shape[0] not in rows):
        raise ArtifactRejected(f"{inputs_path}: the eval arrays differ in their number of rows")
    reference = None
    if contract.reference is not None:
        path = _inside(directory, contract.reference, "eval reference")
        with np.load(path, allow_pickle=False) as ref:
            if contract.output not in ref.files:
                raise ArtifactRejected(f"{path}: no array '{contract.output}' (it has {', '.join(ref.files)}): "
                                       "the reference must hold the judged output")
            reference = {name: np.asarray(ref[name]) for name in ref.files}
        if reference[contract.output].shape[0] not in rows:
            raise ArtifactRejected(f"{path}: '{contract.output}' has {reference[contract.output].shape[0]} rows, "
                                   f"the eval inputs {rows.pop()}")
    return EvalData(contract, inputs_path, labels, reference, rows.pop())
