"""A user's own model, not the demo's: 30 float features in, an int64 label and [N, 2] probabilities out
(a logistic "anomaly" classifier), with its eval set, labels and host reference outputs.

Built in the test with onnx and numpy only, so the tests of a user project outside this repository do
not lean on hil's fixtures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

FEATURES = 30
SEED = 20261207


def build_model(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    weights = rng.normal(size=(FEATURES, 2)).astype(np.float32)
    bias = np.zeros(2, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
         helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)],
        "anomaly",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", FEATURES])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.flatten()),
         helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_eval_set(model: Path, directory: Path, rows: int = 400, label_noise: float = 0.1) -> None:
    """eval/data.npz (x, y) and eval/reference.npz (the host's outputs). `label_noise` of the labels are
    flipped, so accuracy is about 1 - label_noise: a budget above it fails, one below it passes."""
    rng = np.random.default_rng(SEED + 1)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], {"features": x})
    flip = rng.random(rows) < label_noise
    y = np.where(flip, 1 - label, label).astype(np.int64)
    (directory / "eval").mkdir(parents=True, exist_ok=True)
    np.savez(directory / "eval" / "data.npz", x=x, y=y)
    np.savez(directory / "eval" / "reference.npz", label=label, probabilities=probabilities)


def build_artifact(directory: Path) -> Path:
    """model.onnx and its eval files in `directory` (no manifest yet)."""
    directory.mkdir(parents=True, exist_ok=True)
    build_model(directory / "model.onnx")
    build_eval_set(directory / "model.onnx", directory)
    return directory


def build_sequence_artifact(directory: Path, seq: int = 16, rows: int = 64) -> Path:
    """A sequence model (tokens [batch, seq, 8] -> the mean over seq, [batch, 8]) and eval rows of length `seq`:
    timed at sequence length 1 it would be a different model."""
    directory.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["tokens"], ["pooled"], axes=[1], keepdims=0)], "pool",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(directory / "model.onnx"))
    x = np.random.default_rng(SEED).normal(size=(rows, seq, 8)).astype(np.float32)
    (directory / "eval").mkdir(exist_ok=True)
    np.savez(directory / "eval" / "data.npz", tokens=x)
    np.savez(directory / "eval" / "reference.npz", pooled=x.mean(axis=1))
    return directory
