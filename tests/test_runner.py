"""The device runner and its driver, on the emulated test lab with the real demo models."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fixtures.synthetic import DEMO_SIGNING_KEY
from hil.artifacts import Artifact, init_manifest, load_artifact, load_private_key, load_public_key, sign
from hil.deploy import DeployedModel, deploy
from hil.device import Device
from hil.errors import InfraError, ProductFailure
from hil.runner import (
    BadInput,
    ModelLoadFailed,
    OutOfMemory,
    ProviderMissing,
    RunnerConfigError,
    SessionSettings,
    StopWhen,
    run_eval,
    run_latency,
    run_sweep,
    ship_runner,
)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"
EVAL = ROOT / "fixtures" / "data" / "digits-eval.npz"
REFERENCE = ROOT / "fixtures" / "data" / "reference"
TRUSTED = [load_public_key(DEMO_SIGNING_KEY.with_suffix(".pub"))]
CPU = "CPUExecutionProvider"

pytestmark = pytest.mark.usefixtures("lab")


def _deployed(device: Device, directory: Path, **kwargs: bool) -> DeployedModel:
    artifact = load_artifact(directory)
    return DeployedModel(device, artifact, deploy(device, artifact, TRUSTED, **kwargs))


def _info(name: str) -> dict:
    return json.loads((MODELS / name / "info.json").read_text())


def _resigned(source: Path, target: Path, *, name: str, model: bytes | None = None,
              providers: tuple[str, ...] | None = None) -> Artifact:
    """A copy of a demo artifact under another name, with other model bytes or providers, signed again."""
    shutil.copytree(source, target)
    if model is not None:
        (target / "model.onnx").write_bytes(model)
    manifest = load_artifact(target).manifest
    manifest = replace(manifest, name=name, providers=providers or manifest.providers, signature=None)
    (target / "manifest.toml").write_text(manifest.to_toml())
    sign(target, load_private_key(DEMO_SIGNING_KEY))  # re-hashes the model bytes, then signs
    return load_artifact(target)


def _expand_model(path: Path, elements: int) -> None:
    """y = sum(expand(x, [elements])): one float32 intermediate of `elements` values, built at run time."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    shape = numpy_helper.from_array(np.array([elements], dtype=np.int64), "shape")
    nodes = [helper.make_node("Expand", ["x", "shape"], ["big"]),
             helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "oom", [x], [y], [shape]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture
def cnn_a(device_a: Device) -> DeployedModel:
    return _deployed(device_a, MODELS / "digits-cnn")


def test_latency_run_reports_raw_latencies_and_runner_facts(cnn_a: DeployedModel) -> None:
    run = run_latency(cnn_a, batch=8, warmup=20, min_iterations=300, min_duration_s=0.5, threads=1,
                      telemetry_interval_s=0.1)
    assert run.count >= 300 and run.latencies_ms.dtype == np.float64 and not run.latencies_ms.flags.writeable
    assert run.cpu.wall_s >= 0.5 and run.stop.reason == "minimums_met" and not run.stop.stopped_early
    summary = run.summary()
    assert 0 < summary["min_ms"] <= summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert summary["p50_ms"] < 50 and run.items_per_s > 0
    assert run.session.create_ms > 0 and run.first_inference_ms > 0
    assert run.cold_start_ms == run.session.create_ms + run.first_inference_ms and run.warmup_iterations == 20
    assert run.session.providers == (CPU,) and run.session.fallback is None
    assert run.session.op_providers["Conv"] == CPU and run.session.op_providers["Gemm"] == CPU
    assert run.memory.peak_rss_bytes > (run.memory.baseline_rss_bytes or 0) > 0
    assert run.cpu.user_s + run.cpu.system_s > 0
    assert len(run.telemetry) >= 3 and run.telemetry[0].loadavg is not None  # sysfs parts may be None: VM
    assert run.inputs[0]["shape"] == [8, 1, 8, 8] and run.seed == 0
    assert run.loop_overhead_ns is not None and run.loop_overhead_ns < 20_000
    assert run.context.device == "emu-a" and run.context.emulated and run.context.model == "digits-cnn"


def test_a_tighter_cpu_quota_is_measurably_slower(device_a: Device, device_b: Device) -> None:
    # CFS bandwidth control gives emu-b its 0.5 CPU as 50 ms of full speed per 100 ms period: an
    # inference far shorter than that mostly runs unthrottled, so the *median* barely moves (we
    # measured 0.075 vs 0.074 ms here, and 16.9 vs 16.6 ms even at 16 ms per batch). The quota
    # shows in throughput (mean latency, items/s) and in the tail, and in the cgroup's counters.
    runs = {}
    for device in (device_a, device_b):
        deployed = _deployed(device, MODELS / "digits-cnn")
        runs[device.name] = run_latency(deployed, batch=64, warmup=20, min_iterations=200, min_duration_s=1.5,
                                        threads=1)
    a, b = runs["emu-a"], runs["emu-b"]
    assert b.mean_ms > 1.3 * a.mean_ms, (a.summary(), b.summary())
    assert a.items_per_s > 1.3 * b.items_per_s
    assert b.p99_ms > a.p99_ms
    assert b.throttling is not None and b.throttling["nr_throttled"] >= 5


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp", "digits-mlp-int8"])
def test_eval_outputs_match_the_host_reference(device_a: Device, name: str) -> None:
    deployed = _deployed(device_a, MODELS / name)
    run = run_eval(deployed, EVAL, _info(name)["input"]["eval_key"], batch=64)  # 360 rows: last batch has 40
    reference = np.load(REFERENCE / f"{name}.npz")
    assert run.count == 360 and run.batch == 64 and len(run.batch_ms) == 6 and run.total_ms > 0
    for key in reference.files:
        got, want = run.outputs[key], reference[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        if np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=key)
        else:
            assert np.array_equal(got, want), key
    assert device_a.run(f"ls {device_a.workdir}/runner/runs", timeout=10).stdout == ""  # outputs cleaned up


def test_sweep_finds_a_best_batch(cnn_a: DeployedModel) -> None:
    run = run_sweep(cnn_a, batches=(1, 8, 64), threads=1, min_iterations=20, min_duration_s=0.2)
    assert [p.batch for p in run.points] == [1, 8, 64] and all(p.error is None for p in run.points)
    assert run.best_batch in (1, 8, 64) and run.best.items_per_s == max(p.items_per_s for p in run.points)
    for p in run.points:
        assert p.items_per_s == pytest.approx(p.batch * p.runs_per_s)


def test_latency_inputs_can_come_from_an_npz(cnn_a: DeployedModel) -> None:
    run = run_latency(cnn_a, batch=4, warmup=5, min_iterations=50, min_duration_s=0.0, inputs_npz=EVAL,
                      input_key="x_image")
    assert run.inputs[0]["shape"] == [4, 1, 8, 8] and run.count >= 50


def test_a_run_longer_than_its_timeout_wraps_up_with_what_it_measured(cnn_a: DeployedModel) -> None:
    started = time.monotonic()
    run = run_latency(cnn_a, warmup=0, min_iterations=10**8, min_duration_s=0.0, timeout=7.0)
    assert run.stop.reason == "deadline" and 1000 < run.count < 10**8
    assert time.monotonic() - started < 7.0


def test_adaptive_run_stops_once_the_verdict_is_clear(cnn_a: DeployedModel) -> None:
    run = run_latency(cnn_a, warmup=20, min_iterations=50, min_duration_s=0.0, max_iterations=20_000, threads=1,
                      stop_when=StopWhen(quantile=99, limit_ms=1000.0, confidence=0.99))
    assert run.stop.stopped_early and run.stop.verdict == "PASS" and run.stop.reason == "decided"
    assert 459 <= run.count < 5_000  # p99 at 99% needs at least 459 samples before the max can bound it


def test_an_impossible_adaptive_setting_is_a_config_error(cnn_a: DeployedModel) -> None:
    with pytest.raises(RunnerConfigError, match=r"emu-a.*digits-cnn.*config: stop_when cannot be decided"):
        run_latency(cnn_a, min_iterations=10, min_duration_s=0, max_iterations=100, stop_when=StopWhen(99, 5.0))


def test_out_of_memory_is_categorized_and_fast(device_b: Device, tmp_path: Path) -> None:
    directory = tmp_path / "oom"
    _expand_model(directory / "model.onnx", 120_000_000)  # 480 MB of float32 at run time; emu-b has 256 MiB
    init_manifest(directory, "oom", "1.0.0")
    sign(directory, load_private_key(DEMO_SIGNING_KEY))
    deployed = _deployed(device_b, directory)
    started = time.monotonic()
    with pytest.raises(OutOfMemory) as caught:
        run_latency(deployed, warmup=0, min_iterations=5, min_duration_s=0.0)
    assert time.monotonic() - started < 20
    error = caught.value
    assert isinstance(error, ProductFailure) and error.category == "out_of_memory"
    assert error.device == "emu-b" and error.model == "oom" and error.version == "1.0.0"
    assert "device 'emu-b': model 'oom' 1.0.0: out_of_memory" in str(error)
    device_b.run(f"rm -rf {device_b.workdir}/models/oom", timeout=30, check=True)


def test_a_missing_provider_without_fallback_is_categorized(device_a: Device, tmp_path: Path) -> None:
    artifact = _resigned(MODELS / "digits-cnn", tmp_path / "trt", name="digits-cnn-trt",
                         providers=("TensorrtExecutionProvider",))
    # The deploy itself only goes ahead with the CPU fallback allowed; the run then asks for TensorRT.
    deployed = DeployedModel(device_a, artifact, deploy(device_a, artifact, TRUSTED, allow_provider_fallback=True))
    wanted = SessionSettings(providers=artifact.manifest.providers)
    with pytest.raises(ProviderMissing, match=r"emu-a.*digits-cnn-trt.*provider_missing.*TensorrtExecutionProvider"):
        run_latency(deployed, min_iterations=10, min_duration_s=0.0, session=wanted)
    fallback = run_latency(deployed, min_iterations=10, min_duration_s=0.0,
                           session=SessionSettings(providers=artifact.manifest.providers, allow_fallback=True))
    assert fallback.session.providers == (CPU,) and "TensorrtExecutionProvider" in (fallback.session.fallback or "")


def test_a_corrupt_model_is_a_model_load_error(device_a: Device, tmp_path: Path) -> None:
    model = (MODELS / "digits-cnn" / "model.onnx").read_bytes()
    artifact = _resigned(MODELS / "digits-cnn", tmp_path / "cut", name="digits-cnn-cut",
                         model=model[: len(model) // 2])  # truncated, then signed: deploy accepts it
    deployed = DeployedModel(device_a, artifact, deploy(device_a, artifact, TRUSTED))
    with pytest.raises(ModelLoadFailed) as caught:
        run_latency(deployed, min_iterations=10, min_duration_s=0.0)
    assert caught.value.category == "model_load" and "digits-cnn-cut" in str(caught.value)


def test_inputs_that_do_not_fit_are_bad_input(cnn_a: DeployedModel) -> None:
    with pytest.raises(BadInput, match="bad_input"):
        run_eval(cnn_a, EVAL, "x_flat")  # the MLP's [n, 64] rows into the CNN's [n, 1, 8, 8]
    with pytest.raises(BadInput, match="no array 'nope'"):
        run_eval(cnn_a, EVAL, "nope")


def test_runner_speaks_json_only_and_is_shipped_once(device_a: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = ship_runner(device_a)
    python = shlex.quote(device_a.config.python)
    result = device_a.run(f"{python} {runner} -", stdin=b'{"mode": "nope"}', timeout=30)
    assert result.exit_status == 3 and json.loads(result.stdout)["error"]["category"] == "config"
    assert "hil-runner: config" in result.stderr
    sent: list[str] = []
    monkeypatch.setattr(device_a, "put", lambda local, remote, **_: sent.append(remote))
    assert ship_runner(device_a) == runner and sent == []  # cached for this Device: no command, no upload
    fresh = Device(device_a.config)
    monkeypatch.setattr(fresh, "put", lambda local, remote, **_: sent.append(remote))
    try:
        assert ship_runner(fresh) == runner and sent == []  # a new Device checks the sha256s once, sends nothing
    finally:
        fresh.close()


def test_a_wiped_runner_is_shipped_again(cnn_a: DeployedModel) -> None:
    device = cnn_a.device
    ship_runner(device)
    device.run(f"rm -rf {device.workdir}/runner", timeout=30, check=True)
    run = run_latency(cnn_a, warmup=0, min_iterations=10, min_duration_s=0.0)
    assert run.count >= 10


def test_errors_split_product_from_infra() -> None:
    from hil.runner import RunnerCrashed, RunnerError, RunnerTimeout

    assert issubclass(RunnerError, ProductFailure) and not issubclass(RunnerError, InfraError)
    assert issubclass(RunnerCrashed, InfraError) and issubclass(RunnerTimeout, InfraError)
