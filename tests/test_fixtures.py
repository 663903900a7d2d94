"""The committed demo models in fixtures/ (built by fixtures/build.py), checked with onnxruntime on the host.

Needs only the runtime dependencies (onnxruntime, numpy): no scikit-learn, skl2onnx or onnx. The ops inside a
model are read from an onnxruntime profile, which names the op type of every node it ran.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODELS = ["digits-mlp", "digits-cnn", "digits-mlp-int8", "digits-cnn-int8"]
FLOORS = {"fp32": 0.95, "int8": 0.93}
# onnxruntime's type strings for the dtypes info.json uses.
ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
INTEGER_KERNELS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat"}


def info_of(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "models" / name / "info.json").read_text())


def model_path(name: str) -> Path:
    return FIXTURES / "models" / name / "model.onnx"


def session(name: str, *, optimized: bool = True, profile_to: Path | None = None) -> ort.InferenceSession:
    """One thread, as fixtures/build.py ran it, so float results repeat bit for bit on this host."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not optimized:
        # Nothing fused or folded: the nodes that run are the nodes in the file.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile_to is not None:
        profile_to.mkdir(parents=True, exist_ok=True)
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_to / "profile")
    return ort.InferenceSession(str(model_path(name)), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def eval_data() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "data" / "digits-eval.npz") as data:
        return {key: data[key] for key in data.files}


def run(name: str, eval_data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(name)
    x = eval_data[info_of(name)["input"]["eval_key"]]
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x}), strict=True))


def ops_run(name: str, tmp_path: Path, *, optimized: bool) -> set[str]:
    """Op types of the nodes onnxruntime executed for one batch of the eval data, from its profile."""
    sess = session(name, optimized=optimized, profile_to=tmp_path)
    shape = [1 if isinstance(d, str) else d for d in sess.get_inputs()[0].shape]
    sess.run(None, {sess.get_inputs()[0].name: np.zeros(shape, np.float32)})
    events = json.loads(Path(sess.end_profiling()).read_text())
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}


def test_every_model_is_committed() -> None:
    built = sorted(p.parent.name for p in (FIXTURES / "models").glob("*/info.json"))
    assert set(MODELS) <= set(built), f"missing from fixtures/models: {set(MODELS) - set(built)}"


def test_eval_data_layouts_agree(eval_data: dict[str, np.ndarray]) -> None:
    x_flat, x_image, labels = eval_data["x_flat"], eval_data["x_image"], eval_data["labels"]
    assert x_flat.dtype == np.float32 and x_flat.shape[1:] == (64,)
    assert x_image.dtype == np.float32 and x_image.shape == (len(x_flat), 1, 8, 8)
    assert labels.dtype == np.int64 and labels.shape == (len(x_flat),)
    np.testing.assert_array_equal(x_image.reshape(-1, 64), x_flat)
    assert x_flat.min() >= 0.0 and x_flat.max() <= 1.0
    assert set(np.unique(labels)) == set(range(10))


@pytest.mark.parametrize("name", MODELS)
def test_info_records_split_seed_and_file(name: str, eval_data: dict[str, np.ndarray]) -> None:
    info = info_of(name)
    assert info["name"] == name
    assert info["data"]["seed"] == int(eval_data["seed"])
    assert info["accuracy"]["samples"] == info["data"]["sizes"]["held_out"] == len(eval_data["labels"])
    blob = model_path(name).read_bytes()
    assert info["size_bytes"] == len(blob)
    assert info["sha256"] == hashlib.sha256(blob).hexdigest(), f"{name}: model.onnx changed since info.json"


@pytest.mark.parametrize("name", MODELS)
def test_io_matches_info(name: str) -> None:
    info, sess = info_of(name), session(name)
    (model_input,) = sess.get_inputs()
    assert {"name": model_input.name, "dtype": ORT_TYPES[model_input.type], "shape": model_input.shape} == {
        key: info["input"][key] for key in ("name", "dtype", "shape")
    }
    outputs = [{"name": o.name, "dtype": ORT_TYPES[o.type], "shape": o.shape} for o in sess.get_outputs()]
    assert outputs == info["outputs"]
    assert info["input"]["shape"][0] == "batch"
    assert all(o["shape"][0] == "batch" for o in info["outputs"])


@pytest.mark.parametrize("name", MODELS)
def test_accuracy_on_held_out(name: str, eval_data: dict[str, np.ndarray]) -> None:
    info = info_of(name)
    scores = run(name, eval_data)[info["scores_output"]]
    accuracy = float(np.mean(scores.argmax(axis=1) == eval_data["labels"]))
    assert accuracy >= FLOORS[info["kind"]]
    assert accuracy == pytest.approx(info["accuracy"]["top1"], abs=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_outputs_equal_committed_reference(name: str, eval_data: dict[str, np.ndarray]) -> None:
    outputs = run(name, eval_data)
    with np.load(FIXTURES / info_of(name)["reference"]) as reference:
        assert sorted(reference.files) == sorted(outputs)
        for key, got in outputs.items():
            expected = reference[key]
            assert got.dtype == expected.dtype and got.shape == expected.shape, key
            if np.issubdtype(got.dtype, np.integer):
                np.testing.assert_array_equal(got, expected, err_msg=f"{name}: {key}")
            else:
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {key}")


@pytest.mark.parametrize("name", [m for m in MODELS if m.endswith("-int8")])
def test_int8_models_are_quantized(name: str, tmp_path: Path) -> None:
    # In the file: QDQ pairs around the layers. At run time: onnxruntime fuses them into integer kernels.
    assert ops_run(name, tmp_path / "raw", optimized=False) >= QDQ_OPS
    assert ops_run(name, tmp_path / "optimized", optimized=True) & INTEGER_KERNELS


@pytest.mark.parametrize("name", [m for m in MODELS if not m.endswith("-int8")])
def test_fp32_models_are_not_quantized(name: str, tmp_path: Path) -> None:
    assert not ops_run(name, tmp_path, optimized=False) & (QDQ_OPS | INTEGER_KERNELS)
