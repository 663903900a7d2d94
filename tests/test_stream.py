"""The long-running inference job (runner "stream" mode) on the emulated test lab, with the real demo models."""

from __future__ import annotations

import itertools
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures.synthetic import DEMO_SIGNING_KEY
from hil.artifacts import load_artifact, load_public_key
from hil.deadline import Deadline
from hil.deploy import DeployedModel, deploy
from hil.device import Device
from hil.errors import InfraError
from hil.lab import EmulatedLab
from hil.runner import BadInput, RunnerConfigError, StreamGone, StreamJob, StreamStatus, start_stream
from hil.transport.ssh import ANSWER_GRACE

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"
EVAL = ROOT / "fixtures" / "data" / "digits-eval.npz"
REFERENCE = ROOT / "fixtures" / "data" / "reference"
TRUSTED = [load_public_key(DEMO_SIGNING_KEY.with_suffix(".pub"))]

pytestmark = pytest.mark.usefixtures("lab")


def _deployed(device: Device, name: str = "digits-cnn") -> DeployedModel:
    artifact = load_artifact(MODELS / name)
    return DeployedModel(device, artifact, deploy(device, artifact, TRUSTED))


@pytest.fixture
def jobs() -> Iterator[list[StreamJob]]:
    """Jobs a test started: removed afterwards even when the test failed half-way."""
    started: list[StreamJob] = []
    yield started
    for job in started:
        with job:  # StreamJob.__exit__: stop if running, remove its directory
            pass


def _until(job: StreamJob, check: Callable[[StreamStatus], bool], timeout: float, what: str) -> StreamStatus:
    deadline = Deadline.after(timeout)
    while True:
        status = job.status(timeout=5)
        if check(status):
            return status
        assert not deadline.expired, f"{what} not within {timeout:g} s: {status}"
        deadline.sleep(0.1)


def _seqs(results: list[dict[str, Any]]) -> list[int]:
    return [r["seq"] for r in results]


def test_a_one_pass_stream_infers_every_frame_like_the_reference(device_a: Device, jobs: list[StreamJob]) -> None:
    job = start_stream(_deployed(device_a), EVAL, "x_image", fps=None, frames=None, loop=False, name="one pass",
                       offset=20)
    jobs.append(job)
    assert job.job_id.startswith("one-pass-") and job.directory == f"{device_a.workdir}/streams/{job.job_id}"
    status = job.wait(timeout=30)
    assert status.state == "finished" and not status.running and status.message == "all 340 frames done"
    assert status.last_seq == 339 and status.results_written == 340 and status.errors == 0 and not status.disk_full
    results = job.collect()
    assert _seqs(results) == list(range(340)) and [r["frame"] for r in results] == list(range(20, 360))
    reference = np.load(REFERENCE / "digits-cnn.npz")["probabilities"]
    assert [r["top1"] for r in results] == reference[20:].argmax(axis=1).tolist()
    np.testing.assert_allclose([r["score"] for r in results], reference[20:].max(axis=1), atol=1e-4)
    assert all(r["latency_ms"] > 0 for r in results)
    assert all(a["t_mono_ns"] < b["t_mono_ns"] for a, b in itertools.pairwise(results))
    assert job.collect() == [] and job.bad_lines == 0

    # A line being written is left for the next collect, which returns it once it is whole.
    path = shlex.quote(job.results_path)
    device_a.run(f"printf '%s' '{{\"seq\": 340, \"fra' >> {path}", timeout=10, check=True)
    assert job.collect() == []
    device_a.run(f"printf '%s\\n' 'me\": 0}}' >> {path}", timeout=10, check=True)
    assert job.collect() == [{"seq": 340, "frame": 0}]

    job.remove()
    assert device_a.run(f"test -e {shlex.quote(job.directory)}", timeout=10).exit_status == 1
    with pytest.raises(StreamGone):
        job.status()


def test_a_paced_stream_runs_detached_collects_incrementally_and_stops(device_a: Device,
                                                                      jobs: list[StreamJob]) -> None:
    started = time.monotonic()
    job = start_stream(_deployed(device_a), EVAL, "x_image", fps=100, frames=None, loop=True)
    jobs.append(job)
    assert time.monotonic() - started < 10
    sid = device_a.run(f"ps -o sid= -p {job.pid}", timeout=10, check=True).stdout.strip()
    assert sid == str(job.pid)  # a session of its own: hil's connection can come and go
    collected: list[dict[str, Any]] = []
    for _ in range(4):
        time.sleep(0.3)
        part = job.collect()
        assert part and _seqs(part) == list(range(len(collected), len(collected) + len(part)))
        collected += part
    status = job.status()
    assert status.state == "running" and status.running and status.pid == job.pid
    stopped = job.stop()
    assert stopped.state == "stopped" and not stopped.running and not stopped.alive and "signal 15" in stopped.message
    collected += job.collect()
    n = len(collected)
    assert _seqs(collected) == list(range(n)) and stopped.last_seq == n - 1 and stopped.results_written == n
    assert [r["frame"] for r in collected] == [seq % 360 for seq in range(n)]  # loops over the 360 frames
    period_ms = (collected[-1]["t_mono_ns"] - collected[0]["t_mono_ns"]) / (n - 1) / 1e6
    assert 9.0 < period_ms < 11.5, period_ms  # 100 fps
    # Gone, or a zombie: the lab's PID 1 is sshd, which does not reap orphans as a real init does.
    assert device_a.run(f"ps -o stat= -p {job.pid}", timeout=10).stdout.strip() in ("", "Z", "Z+")


def test_a_killed_job_is_crashed_and_a_hung_one_is_killed_by_stop(device_a: Device, jobs: list[StreamJob]) -> None:
    deployed = _deployed(device_a)
    killed = start_stream(deployed, EVAL, "x_image", fps=50, name="killed")
    hung = start_stream(deployed, EVAL, "x_image", fps=50, name="hung")
    jobs += [killed, hung]
    device_a.run(f"kill -KILL {killed.pid}; kill -STOP {hung.pid}", timeout=10, check=True)
    status = _until(killed, lambda s: not s.running, 5, "the killed job seen dead")
    assert status.state == "crashed" and "without a final status" in status.message
    status = hung.stop(timeout=1.0)  # SIGTERM waits while it is stopped; SIGKILL does not
    assert status.state == "stopped" and "SIGKILL" in status.message


def test_bad_settings_fail_at_start_with_the_runners_category(device_a: Device) -> None:
    deployed = _deployed(device_a)
    with pytest.raises(BadInput, match="no array 'nope'"):
        start_stream(deployed, EVAL, "nope", fps=10)  # reported in the job's status
    with pytest.raises(RunnerConfigError, match=r"stream\.fps must be > 0"):
        start_stream(deployed, EVAL, "x_image", fps=0)
    with pytest.raises(RunnerConfigError, match="backlog_bytes"):
        start_stream(deployed, EVAL, "x_image", backlog_bytes=-1)  # before any status: from the runner's report
    assert device_a.run(f"ls {device_a.workdir}/streams", timeout=10).stdout == ""  # nothing left behind


def test_a_full_disk_keeps_what_was_written_and_results_resume(device_b: Device, jobs: list[StreamJob]) -> None:
    job = start_stream(_deployed(device_b), EVAL, "x_image", fps=100, loop=True, backlog_bytes=4096,
                       status_interval_s=0.2)
    jobs.append(job)
    workdir = shlex.quote(device_b.workdir)
    fill = f"{workdir}/fill-{job.job_id}"
    _until(job, lambda s: s.results_written >= 30, 10, "first results")
    results = job.collect()
    try:
        # Fill the 32 MiB disk: most of it at once, the last pages by writing until ENOSPC.
        device_b.run(f"avail=$(df -B1 --output=avail {workdir} | tail -1); "
                     f"fallocate -l $((avail - 262144)) {fill}.0 && head -c 1048576 /dev/zero > {fill}.1; true",
                     timeout=30)
        assert int(device_b.run(f"df -B1 --output=avail {workdir} | tail -1", timeout=10).stdout) < 4096
        full = _until(job, lambda s: s.disk_full and s.dropped_count > 0, 10, "disk full with drops")
        assert full.running and full.errors > 0
        during = job.collect()  # everything written before the disk filled: whole lines, all readable
        results += during
        assert job.bad_lines == 0 and _seqs(results) == list(range(len(results)))
    finally:
        device_b.run(f"rm -f {fill}.0 {fill}.1", timeout=30, check=True)
    resumed = _until(job, lambda s: not s.disk_full and s.results_written > len(results) + 20, 10,
                     "results resumed")
    assert resumed.running and resumed.dropped_count > 0
    status = job.stop()
    results += job.collect()
    seqs = _seqs(results)
    dropped = status.dropped()
    assert len(dropped) == status.dropped_count and status.state == "stopped"
    assert seqs == sorted(set(seqs)) and not dropped & set(seqs)  # in order, no duplicates, none both ways
    assert set(seqs) | dropped == set(range(status.last_seq + 1))  # every seq accounted for
    assert seqs[-1] > max(dropped)  # written again after the gap, seqs continuing
    assert status.results_written == len(seqs) and job.bad_lines == 0


def test_the_job_runs_on_through_a_network_drop(lab: EmulatedLab, device_a: Device, jobs: list[StreamJob]) -> None:
    job = start_stream(_deployed(device_a), EVAL, "x_image", fps=200, loop=True)
    jobs.append(job)
    offset = device_a.clock_offset().offset  # device wall clock - host wall clock
    time.sleep(0.5)
    results = job.collect()
    assert results
    down = time.time()
    lab.set_link("emu-a", up=False)
    try:
        started = time.monotonic()
        with pytest.raises(InfraError):
            job.collect(timeout=1)  # lost with the link: its offset must not move
        assert time.monotonic() - started < 1 + ANSWER_GRACE + 0.5  # the timeout and the transport's grace: no hang
        time.sleep(max(0.0, 3.0 - (time.time() - down)))
    finally:
        lab.set_link("emu-a", up=True)
    up = time.time()
    results += job.collect()  # hil reconnects by itself and reads on from where it was
    assert device_a.ssh.connects >= 2
    time.sleep(0.3)
    status = job.stop()
    results += job.collect()
    n = len(results)
    assert _seqs(results) == list(range(n)) and status.last_seq == n - 1 and status.state == "stopped"
    outage = [r for r in results if down + offset + 0.5 < r["t_wall"] < up + offset - 0.5]
    assert len(outage) > 0.8 * 200 * (up - down - 1.0), (len(outage), up - down)  # inferring all along
