"""Host side of the long-running inference job: the device runner's "stream" mode, started detached.

    job = start_stream(deployed, EVAL, "x_image", fps=30, frames=None, loop=True, name="soak")
    job.collect()   # only the results not collected before, whole lines only
    job.status()    # StreamStatus(state="running", last_seq=..., disk_full=False, ...)
    job.stop(); job.collect(); job.remove()

The job runs under `setsid nohup ... &` in its own session, with no tie to hil's SSH connection:
it keeps inferring while the network is down or hil is gone, and hil picks up where it left off.
Files on the device, under <workdir>/streams/<id>/:
    config.json      what the runner was asked to do
    results.jsonl    one JSON line per inference, appended and never rewritten (a partial last line
                     can exist for a moment, or while the disk is full: collect() leaves it for later)
    status.json      rewritten atomically every ~0.5 s and on exit (see StreamStatus)
    runner.out/.err  the runner's final report and diagnostics
    killed           left by stop() when SIGTERM was not enough and it used SIGKILL

On a full disk the job keeps inferring; results wait in a small in-memory backlog and are retried,
beyond it they are dropped and their seqs listed (StreamStatus.dropped_seqs). Seqs never repeat and
never go back: the results collected plus the dropped seqs are exactly 0..last_seq.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.deadline import Deadline
from hil.deploy import DeployedModel
from hil.device import Device
from hil.errors import InfraError
from hil.runner.driver import (
    STARTUP_S,
    SessionSettings,
    raise_for_report,
    runner_context,
    session_config,
    ship_inputs,
    ship_runner,
)
from hil.runner.errors import RunnerCrashed, RunnerTimeout

log = logging.getLogger(__name__)

STATUS_TIMEOUT = 15.0  # one status read: a cat and a look at /proc
COLLECT_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0  # SIGTERM to final status; then SIGKILL
KILL_WAIT_S = 5.0
REMOVE_TIMEOUT = 30.0
POLL_S = 0.1
COLLECT_CHUNK = 4 << 20  # bytes per read: a long soak is fetched in several commands, never one huge answer
LIVE_STATES = ("starting", "running")
_SECTION = re.compile(r"^@@hil-(\w+)@@$", re.MULTILINE)


class StreamGone(InfraError):
    """The job's directory is gone from the device (removed, or the disk was wiped)."""


@dataclass(frozen=True)
class StreamStatus:
    """What the job last said about itself, checked against whether its process still lives.

    state: starting | running | finished (all frames, or max_duration_s) | stopped (SIGTERM, or
    SIGKILL by stop()) | failed (the job reported an error) | crashed (its process is gone without a
    final status: SIGKILL by someone else, the OOM killer, a reboot).
    """

    job: str
    state: str
    running: bool  # state is starting or running
    alive: bool  # the job's process still exists (it lingers a moment after writing its final status)
    pid: int | None
    last_seq: int | None  # the last result produced (written or dropped)
    results_written: int  # complete lines in results.jsonl
    errors: int  # failed writes (a full disk counts once per attempt)
    disk_full: bool  # the last write attempt found no space; results wait or are dropped
    dropped_seqs: tuple[tuple[int, int], ...]  # inclusive ranges of seqs never written (the first 64)
    dropped_count: int
    late_frames: int  # frames started over one period behind the frame rate
    message: str
    updated_wall: float | None  # the device's clock when the status was written
    error: dict[str, str] | None = field(default=None, compare=False)  # the runner's {category, message, detail}
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def dropped(self) -> set[int]:
        return {seq for first, last in self.dropped_seqs for seq in range(first, last + 1)}


def _sections(text: str) -> dict[str, str]:
    parts = _SECTION.split(text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def _alive(stat: str, cmdline: str, marker: str) -> bool:
    """The pid runs (not a zombie nobody reaped) and is still our job, not a reused pid."""
    if not stat or marker not in cmdline:
        return False
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return bool(state) and state[0] not in ("Z", "X", "x")


class StreamJob:
    """A streaming job on a device. Thread-safe; collect() remembers how far it has read."""

    def __init__(self, deployed: DeployedModel, job_id: str, directory: str, pid: int | None) -> None:
        self.deployed = deployed
        self.device: Device = deployed.device
        self.job_id = job_id
        self.directory = directory
        self.pid = pid
        self.collected_bytes = 0  # results.jsonl bytes already turned into results
        self.collected = 0
        self.bad_lines = 0  # complete lines that did not parse: never expected, so counted and logged
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StreamJob({self.device.name!r}, {self.job_id!r}, pid={self.pid})"

    def __enter__(self) -> StreamJob:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.remove()
        except InfraError as error:  # the device is unreachable: say so, do not mask the test's own error
            log.warning("%s: could not remove stream %s: %s", self.device.name, self.job_id, error)

    @property
    def results_path(self) -> str:
        return f"{self.directory}/results.jsonl"

    @property
    def _marker(self) -> str:
        return f"{self.directory}/config.json"  # in the job's command line: tells our pid from a reused one

    # -- status ----------------------------------------------------------------------------------

    def status(self, timeout: float = STATUS_TIMEOUT) -> StreamStatus:
        d, pid = shlex.quote(self.directory), int(self.pid or 0)
        script = (f"test -d {d} && echo yes; echo @@hil-status@@; cat {d}/status.json 2>/dev/null; "
                  f"echo; echo @@hil-stat@@; cat /proc/{pid}/stat 2>/dev/null; "
                  f"echo; echo @@hil-cmdline@@; tr '\\0' ' ' </proc/{pid}/cmdline 2>/dev/null; "
                  f"echo; echo @@hil-killed@@; test -e {d}/killed && echo yes; echo @@hil-end@@")
        out = self.device.run(script, timeout=timeout).stdout
        if not out.startswith("yes"):
            raise StreamGone(f"device '{self.device.name}': stream {self.job_id}: {self.directory} is gone")
        parts = _sections(out)
        doc = _parse_status(parts.get("status", ""))
        alive = _alive(parts.get("stat", ""), parts.get("cmdline", ""), self._marker)
        if doc is not None and doc.get("pid"):
            self.pid = int(doc["pid"])  # the job's own word beats the shell's $!
        return self._judge(doc, alive, parts.get("killed") == "yes", timeout)

    def _judge(self, doc: dict[str, Any] | None, alive: bool, killed: bool, timeout: float) -> StreamStatus:
        doc = dict(doc or {"state": "starting"})
        state = str(doc.get("state", "starting"))
        if state in LIVE_STATES and not alive:
            if killed:
                state, doc["message"] = "stopped", "killed with SIGKILL by stop(): it did not end on SIGTERM"
            else:
                report, words = self._last_words(timeout)
                state, doc["runner_report"] = "crashed", report
                doc["message"] = f"the job's process is gone without a final status: {words}"
        return StreamStatus(
            job=self.job_id, state=state, running=state in LIVE_STATES, alive=alive, pid=doc.get("pid", self.pid),
            last_seq=doc.get("last_seq"), results_written=int(doc.get("results_written", 0)),
            errors=int(doc.get("errors", 0)), disk_full=bool(doc.get("disk_full", False)),
            dropped_seqs=tuple((int(a), int(b)) for a, b in doc.get("dropped") or ()),
            dropped_count=int(doc.get("dropped_count", 0)), late_frames=int(doc.get("late_frames", 0)),
            message=str(doc.get("message") or ""), error=doc.get("error"), updated_wall=doc.get("updated_wall"),
            raw=doc)

    def _last_words(self, timeout: float) -> tuple[dict[str, Any] | None, str]:
        """The runner's report (parsed) and what it said, for a job that ended without a final status."""
        d = shlex.quote(self.directory)
        out = self.device.run(f"cat {d}/runner.out 2>/dev/null; echo @@hil-err@@; tail -c 800 {d}/runner.err "
                              "2>/dev/null", timeout=timeout).stdout
        text, _, err = out.partition("@@hil-err@@")
        report = _parse_status(text.strip())
        return report, (text.strip() or err.strip() or "no report, no stderr (SIGKILL? the OOM killer?)")[-800:]

    def wait(self, timeout: float, *, poll: float = 0.2) -> StreamStatus:
        """Poll until the job has ended (finished, stopped, failed, crashed) and its process is gone.

        Raises RunnerTimeout at the deadline. Waiting for the process too means the device is quiet
        again when this returns: no exiting job still holds a CPU under the next measurement.
        """
        deadline = Deadline.after(timeout)
        while True:
            status = self.status(timeout=max(deadline.remaining_or(STATUS_TIMEOUT), 1.0))
            if not status.running and not status.alive:
                return status
            if deadline.expired:
                still = status.state if status.running else f"{status.state} but its process is still there"
                raise RunnerTimeout(f"stream {self.job_id} still {still} after {deadline.elapsed():.1f} s "
                                    f"(timeout {timeout:g} s)",
                                    detail=status.message, **runner_context(self.deployed))
            deadline.sleep(poll)

    # -- control ---------------------------------------------------------------------------------

    def _signal(self, sig: str, timeout: float) -> None:
        """Signal the job, checking first that its pid is still the job (a reused pid is left alone)."""
        pid, marker = int(self.pid or 0), shlex.quote(self._marker)
        touch = f"touch {shlex.quote(self.directory)}/killed && " if sig == "KILL" else ""
        self.device.run(f"if tr '\\0' ' ' </proc/{pid}/cmdline 2>/dev/null | grep -qF -- {marker}; then "
                        f"{touch}kill -{sig} {pid}; fi; true", timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> StreamStatus:
        """SIGTERM, wait for the final status; after `timeout`, SIGKILL. Returns the last status."""
        status = self.status()
        if not status.running:
            return self.wait(timeout, poll=POLL_S) if status.alive else status
        log.info("%s: stopping stream %s (pid %s)", self.device.name, self.job_id, self.pid)
        self._signal("TERM", STATUS_TIMEOUT)
        try:
            return self.wait(timeout, poll=POLL_S)
        except RunnerTimeout:
            log.warning("%s: stream %s did not end within %g s of SIGTERM; SIGKILL", self.device.name,
                        self.job_id, timeout)
        self._signal("KILL", STATUS_TIMEOUT)
        return self.wait(KILL_WAIT_S, poll=POLL_S)

    def remove(self, timeout: float = REMOVE_TIMEOUT) -> None:
        """Stop the job if it still runs, then delete its directory on the device."""
        try:
            if self.status(timeout=timeout).running:
                self.stop()
        except StreamGone:
            return
        self.device.run(f"rm -rf {shlex.quote(self.directory)}", timeout=timeout, check=True)
        log.info("%s: removed stream %s", self.device.name, self.job_id)

    # -- results ---------------------------------------------------------------------------------

    def collect(self, timeout: float = COLLECT_TIMEOUT, *, chunk_bytes: int = COLLECT_CHUNK) -> list[dict[str, Any]]:
        """The results written since the last collect(), in seq order; whole lines only.

        The byte offset moves only once an answer is in hand, so a command lost with the connection
        is simply read again: no result is skipped or returned twice.
        """
        with self._lock:
            results: list[dict[str, Any]] = []
            deadline = Deadline.after(timeout)
            while True:
                data = self._read(self.collected_bytes, chunk_bytes, deadline.remaining_or(timeout) or 1.0)
                cut = data.rfind(b"\n") + 1  # a partial last line stays for next time
                results.extend(self._parse(data[:cut]))
                self.collected_bytes += cut
                if len(data) < chunk_bytes or cut == 0 or deadline.expired:
                    break
            self.collected += len(results)
            return results

    def _read(self, offset: int, size: int, timeout: float) -> bytes:
        path = shlex.quote(self.results_path)
        out = self.device.run(f"tail -c +{offset + 1} {path} 2>/dev/null | head -c {size}", timeout=timeout)
        return out.stdout.encode()  # the runner writes ASCII JSON, so characters are bytes

    def _parse(self, data: bytes) -> Iterator[dict[str, Any]]:
        for line in data.splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                self.bad_lines += 1
                log.error("%s: stream %s: unreadable result line %r", self.device.name, self.job_id, line[:200])


def _parse_status(text: str) -> dict[str, Any] | None:
    """A JSON object, or None (an unreadable status would be a torn read, which the atomic rename rules out)."""
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        log.warning("unreadable stream status or report %r", text[:200])
        return None
    return doc if isinstance(doc, dict) else None


def _job_id(name: str | None) -> str:
    suffix = uuid.uuid4().hex[:8]
    if not name:
        return suffix
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40]
    return f"{slug}-{suffix}" if slug else suffix


def start_stream(deployed: DeployedModel, inputs_npz: Path, input_key: str | None, *, fps: float | None = None,
                 frames: int | None = None, loop: bool = True, name: str | None = None, threads: int | None = None,
                 offset: int = 0, max_duration_s: float | None = None, fsync_every: int = 100,
                 backlog_bytes: int = 64 * 1024, status_interval_s: float = 0.5, scores_output: str | None = None,
                 session: SessionSettings | None = None, timeout: float = STARTUP_S) -> StreamJob:
    """Start the long-running inference job on the device, detached; returns once it reports running.

    Frames are rows of `inputs_npz[input_key]` from `offset` on, one at a time, at `fps` (None: as
    fast as it goes). `loop` wraps around the input set until `frames` results (None: until stopped
    or `max_duration_s`); without it the job ends at the end of the set. top1 and score come from
    `scores_output` (default: "probabilities", else the first float output). Configuration and model
    errors raise the runner's categorized errors here, as run_latency would.
    """
    device = deployed.device
    runner = ship_runner(device)
    job_id = _job_id(name)
    directory = f"{device.workdir}/streams/{job_id}"
    spec = {"dir": directory, "job": job_id, "npz": ship_inputs(device, Path(inputs_npz)), "key": input_key,
            "fps": fps, "frames": frames, "loop": loop, "offset": offset, "max_duration_s": max_duration_s,
            "fsync_every": fsync_every, "backlog_bytes": backlog_bytes, "status_interval_s": status_interval_s,
            "scores_output": scores_output}
    config = {"mode": "stream", **session_config(deployed, threads, session or SessionSettings()), "stream": spec}
    d = shlex.quote(directory)
    # setsid: a session of its own, so neither hil's command server nor sshd can take it down with
    # them; nohup and </dev/null >file: no terminal, no pipe back to us. The shell returns at once.
    command = (f"mkdir -p {shlex.quote(device.workdir)}/streams && mkdir {d} && cat > {d}/config.json && cd {d} && "
               f"{{ setsid nohup {shlex.quote(device.config.python)} {shlex.quote(runner)} {d}/config.json "
               f"</dev/null >{d}/runner.out 2>{d}/runner.err & }} && echo $!")
    out = device.run(command, timeout=30, stdin=json.dumps(config).encode(), check=True).stdout
    job = StreamJob(deployed, job_id, directory, int(out.split()[-1]))
    log.info("%s: started stream %s (pid %s, %s fps, %s frames)", device.name, job_id, job.pid, fps or "max",
             frames if frames is not None else "endless")
    try:
        _wait_started(job, timeout)
    except BaseException:
        _discard(job)
        raise
    return job


def _wait_started(job: StreamJob, timeout: float) -> None:
    """Until the job says running (or already ended well); its failure raises the runner's error."""
    deadline = Deadline.after(timeout)
    while True:
        status = job.status(timeout=max(deadline.remaining_or(STATUS_TIMEOUT), 1.0))
        if status.state == "failed":
            raise_for_report(job.deployed, {"error": status.error or {"message": status.message}})
        if status.state == "crashed":
            report = status.raw.get("runner_report")
            if report is not None and not report.get("ok"):
                raise_for_report(job.deployed, report)  # it failed before it could write a status: imports, config
            raise RunnerCrashed(f"stream {job.job_id} ended before it started", detail=status.message,
                                **runner_context(job.deployed))
        if status.state != "starting":
            return
        if deadline.expired:
            raise RunnerTimeout(f"stream {job.job_id} still starting after {deadline.elapsed():.1f} s "
                                f"(timeout {timeout:g} s)", **runner_context(job.deployed))
        deadline.sleep(POLL_S)


def _discard(job: StreamJob) -> None:
    """A job that did not start properly: kill whatever is left and remove its directory, best effort."""
    try:
        job._signal("KILL", STATUS_TIMEOUT)
        job.device.run(f"rm -rf {shlex.quote(job.directory)}", timeout=REMOVE_TIMEOUT)
    except InfraError as exc:
        log.warning("%s: could not clean up stream %s: %s", job.device.name, job.job_id, exc)
