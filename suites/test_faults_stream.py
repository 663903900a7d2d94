"""Faults while the long-running inference job streams on the device: it keeps going, hil copes, and
no result is lost or counted twice."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from hil.deploy import DeployedModel
from hil.errors import InfraError
from hil.faults.injector import FaultInjector
from hil.runner import StreamJob, start_stream
from hil.testing import EvalContract

pytestmark = [pytest.mark.faults, pytest.mark.hil_eval(without="parent")]
FPS = 100.0


@pytest.fixture
def stream_frames(deployed_model: DeployedModel, eval_contract: EvalContract) -> tuple[Path, str]:
    """The frames of a stream: the eval inputs of the artifact's contract (one input: one frame per row)."""
    if len(eval_contract.inputs) != 1:
        pytest.skip(f"a stream feeds one input per frame; {deployed_model.artifact.label} has "
                    f"{len(eval_contract.inputs)}")
    return deployed_model.artifact.directory / eval_contract.data, next(iter(eval_contract.inputs.values()))


def _job(deployed: DeployedModel, frames: tuple[Path, str]) -> StreamJob:
    return start_stream(deployed, frames[0], frames[1], fps=FPS, threads=1, max_duration_s=120, name="faults")


def _seqs(results: list[dict[str, Any]]) -> list[int]:
    return [r["seq"] for r in results]


def test_network_drop_during_streaming_loses_nothing(deployed_model: DeployedModel, stream_frames: tuple[Path, str],
                                                    faults: FaultInjector, request: pytest.FixtureRequest) -> None:
    device = deployed_model.device
    offset = device.clock_offset().offset  # device wall clock minus host wall clock
    with _job(deployed_model, stream_frames) as job:
        time.sleep(0.5)
        results = job.collect()
        with faults.network_drop(device, max_seconds=60):
            down = time.time()
            started = time.monotonic()
            with pytest.raises(InfraError):
                job.collect(timeout=1)  # hil notices within its timeout: no hang
            noticed = time.monotonic() - started
            time.sleep(2.0)
            up = time.time()
        results += job.collect()  # hil reconnects by itself
        time.sleep(0.3)
        results += job.collect()
        status = job.stop()
        results += job.collect()
    seqs = _seqs(results)
    assert seqs == list(range(len(seqs))), "a sequence number is missing or duplicated"
    # Inference went on while the device was offline (device timestamps corrected by the measured offset).
    during = [r for r in results if down + 0.3 < r["t_wall"] - offset < up - 0.3]
    request.node.user_properties += [("hil.stream.results", len(seqs)), ("hil.stream.during_outage", len(during)),
                                     ("hil.stream.noticed_s", f"{noticed:.2f}"), ("hil.stream.state", status.state)]
    assert noticed < 5.0
    assert len(during) > FPS  # over a second's worth of frames produced offline
    assert status.state == "stopped" and status.errors == 0


def test_clock_skew_result_timestamps_are_corrected(deployed_model: DeployedModel, stream_frames: tuple[Path, str],
                                                   faults: FaultInjector) -> None:
    device = deployed_model.device
    with faults.clock_step(device, -6 * 3600.0), _job(deployed_model, stream_frames) as job:
        offset = device.clock_offset().offset
        before = time.time()
        time.sleep(0.5)
        results = job.collect()
        after = time.time()
        job.stop()
    assert offset == pytest.approx(-6 * 3600.0, abs=1.0)
    stamps = [r["t_wall"] for r in results[-20:]]
    assert all(s < before - 3600 for s in stamps)  # raw device timestamps are six hours behind
    corrected = [s - offset for s in stamps]
    assert all(before - 1.0 < c < after + 1.0 for c in corrected)  # corrected, they fall in the host's window


def test_a_full_disk_does_not_corrupt_results_already_written(deployed_model: DeployedModel,
                                                              stream_frames: tuple[Path, str],
                                                              faults: FaultInjector) -> None:
    device = deployed_model.device
    with _job(deployed_model, stream_frames) as job:
        time.sleep(0.5)
        written = job.collect()
        with faults.disk_fill(device, leave_bytes=0 + 4096):
            time.sleep(2.0)
            status = job.status()
            assert status.running and status.disk_full, status  # it says so, and keeps running
        time.sleep(1.5)  # space is back: writing resumes
        later = job.collect()
        final = job.stop()
        raw = device.run(f"cat {job.directory}/results.jsonl", timeout=30).stdout
    dropped = final.dropped()
    seqs = _seqs(written + later)
    assert sorted(set(seqs) | dropped) == list(range(max(seqs + list(dropped)) + 1))  # nothing else missing
    assert not set(seqs) & dropped and seqs == sorted(seqs)
    assert [json.loads(line)["seq"] for line in raw.splitlines() if line.endswith("}")][: len(written)] == \
        _seqs(written)  # what was written before the disk filled is intact
