"""Safe deployment: preflight, resumable upload to staging, verify on the device, atomic activation.

Layout under <workdir>/models/<name>/ on the device:
    staging/<sha256>.part      an upload in progress (resumed from its size after a broken link)
    versions/<version>-<sha12>/model.onnx + manifest.toml   complete, verified versions
    current -> versions/...    the active version; swapped with one rename, so it is always whole
    deploy-log.jsonl           who activated what, when (deploy and rollback records)
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from packaging.version import InvalidVersion, Version

from hil.artifacts import MANIFEST, MODEL, Artifact, load_public_key, parse_manifest, verify
from hil.config import DeployConfig
from hil.deadline import Deadline
from hil.device import Device
from hil.errors import ArtifactRejected, DeployError, RollbackUnavailable, RuntimeIncompatible, TransportError

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = 300.0
CPU = "CPUExecutionProvider"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DeployResult:
    device: str
    name: str
    version: str
    sha256: str
    model_path: str  # the active model on the device
    already_active: bool
    transferred_bytes: int
    resumed_from: int  # bytes that were already on the device when this deploy started uploading
    attempts: int
    seconds: float
    upload_seconds: float  # the transfer alone (0 when nothing was sent)
    providers: tuple[str, ...]  # the execution providers the model should run with there, in order
    fallback: str | None  # set when a preferred provider is missing and a fallback was taken

    def summary(self) -> dict[str, str]:
        return {k: "" if v is None else str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DeployedModel:
    """An artifact active on a device: what the `deployed_model` fixture gives a test."""

    device: Device
    artifact: Artifact
    result: DeployResult

    @property
    def path(self) -> str:
        """The active model file on the device."""
        return self.result.model_path


@dataclass(frozen=True)
class DeployRecord:
    action: str  # "deploy" or "rollback"
    name: str
    version: str
    sha256: str
    activated: str  # version directory
    previous: str | None
    time: str
    by: str


def trusted_keys(config: DeployConfig) -> list[Ed25519PublicKey]:
    return [load_public_key(p) for p in config.trusted_keys]


def deploy_as_configured(config: DeployConfig, device: Device, artifact: Artifact, *,
                         trusted: list[Ed25519PublicKey] | None = None, **options: Any) -> DeployResult:
    """deploy() as devices.toml's [deploy] says: its trusted keys (unless `trusted` is given), its
    keep_versions and free-space margin; `options` go to deploy() as they are."""
    return deploy(device, artifact, trusted_keys(config) if trusted is None else trusted,
                  **{"keep": config.keep_versions, "margin_bytes": config.free_space_margin_bytes, **options})


def _version_dir(artifact: Artifact) -> str:
    return f"{artifact.manifest.version}-{artifact.manifest.sha256[:12]}"


def runtime_version(text: str) -> Version:
    """An onnxruntime version as PEP 440 orders it ("1.17rc1" < "1.22", "1.16.3+cu118" is 1.16.3); a
    vendor string that is not PEP 440 counts by its leading release number ("1.18.0-jetpack6" -> 1.18.0)."""
    try:
        return Version(text)
    except InvalidVersion:
        release = re.match(r"\d+(\.\d+)*", text.strip())
        return Version(release.group(0) if release else "0")


class _Remote:
    """Paths and small shell steps for one model on one device."""

    def __init__(self, device: Device, name: str) -> None:
        self.device = device
        self.base = f"{device.workdir}/models/{name}"

    def sh(self, script: str, *, timeout: float = 30.0, stdin: bytes | None = None, check: bool = True) -> str:
        return self.device.run(script, timeout=timeout, stdin=stdin, check=check).stdout

    def q(self, *parts: str) -> str:
        return shlex.quote("/".join([self.base, *parts]))

    def current(self) -> str | None:
        out = self.sh(f"readlink {self.q('current')} || true").strip()
        return out.rsplit("/", 1)[-1] if out else None

    def sha256(self, *parts: str) -> str | None:
        out = self.sh(f"sha256sum {self.q(*parts)} 2>/dev/null || true").split()
        return out[0] if out else None

    def records(self) -> list[DeployRecord]:
        out = self.sh(f"cat {self.q('deploy-log.jsonl')} 2>/dev/null || true")
        records = []
        for line in out.splitlines():
            try:
                records.append(DeployRecord(**json.loads(line)))
            except (ValueError, TypeError):
                log.warning("%s: skipping a damaged deploy record: %r", self.device.name, line[:200])
        return records


# -- preflight --------------------------------------------------------------------------------


def _free_bytes(remote: _Remote) -> int:
    out = remote.sh(f"mkdir -p {remote.q('staging')} {remote.q('versions')} && stat -f -c '%a %S' {remote.q()}")
    available, block = out.split()
    return int(available) * int(block)


def _choose_providers(device: Device, artifact: Artifact, allow_fallback: bool) -> tuple[tuple[str, ...], str | None]:
    available = device.facts().providers
    preferred = artifact.manifest.providers or (CPU,)
    usable = tuple(p for p in preferred if p in available)
    if usable and usable[0] == preferred[0]:
        return usable, None
    if usable:
        return usable, (f"{preferred[0]} is not available on device '{device.name}' "
                        f"(it offers {', '.join(available)}); falling back to {usable[0]} as the manifest allows")
    if allow_fallback and CPU in available:
        return (CPU,), (f"none of {', '.join(preferred)} is available on device '{device.name}'; "
                        f"running on {CPU} (explicit fallback)")
    raise RuntimeIncompatible(
        f"device '{device.name}': {artifact.label} needs one of {', '.join(preferred)}, the device's "
        f"onnxruntime offers {', '.join(available) or 'none'}; allow the CPU fallback explicitly to run anyway")


def preflight(device: Device, artifact: Artifact, remote: _Remote, needed_bytes: int, margin: int,
              allow_fallback: bool) -> tuple[tuple[str, ...], str | None]:
    facts = device.facts()
    manifest = artifact.manifest
    if facts.onnxruntime is None:
        raise RuntimeIncompatible(f"device '{device.name}': onnxruntime does not import with "
                                  f"{device.config.python} ({facts.onnxruntime_error}); {artifact.label} cannot run")
    if runtime_version(facts.onnxruntime) < runtime_version(manifest.min_onnxruntime):
        raise RuntimeIncompatible(
            f"device '{device.name}' has onnxruntime {facts.onnxruntime}; {artifact.label} (opset "
            f"{manifest.opset}) needs onnxruntime >= {manifest.min_onnxruntime}")
    providers = _choose_providers(device, artifact, allow_fallback)
    free = _free_bytes(remote)
    if free < needed_bytes + margin:
        raise DeployError(
            f"device '{device.name}': not enough space for {artifact.label} in {device.workdir}: needs "
            f"{(needed_bytes + margin) / 2**20:.1f} MiB ({needed_bytes / 2**20:.1f} MiB + "
            f"{margin / 2**20:.1f} MiB margin), {free / 2**20:.1f} MiB free")
    return providers


# -- upload -----------------------------------------------------------------------------------


def _upload(device: Device, artifact: Artifact, staged: str, deadline: Deadline,
            progress: Progress | None) -> tuple[int, int, int]:
    """Upload with resume and retries; returns (bytes sent now, bytes found already there, attempts)."""
    size = artifact.manifest.size
    sent_total = 0
    resumed_from: int | None = None
    attempts = 0
    delay = 0.2
    reached = [0]  # how far the current attempt got, also when it breaks

    def track(done: int, total: int) -> None:
        reached[0] = done
        if progress is not None:
            progress(done, total)

    while True:
        attempts += 1
        have = reached[0] = 0
        try:
            device.connect(within=deadline.remaining())
            have = device.remote_size(staged) or 0
            if have > size:  # not ours or damaged: start over
                device.run(f"rm -f {shlex.quote(staged)}", timeout=30, check=True)
                have = 0
            if resumed_from is None:
                resumed_from = have
            reached[0] = have
            if have < size:
                device.append_from(artifact.model_path, staged, have, progress=track)
            return sent_total + reached[0] - have, resumed_from, attempts
        except TransportError as exc:
            sent_total += max(0, reached[0] - have)
            if deadline.expired:
                raise DeployError(f"device '{device.name}': upload of {artifact.label} did not complete after "
                                  f"{deadline.elapsed():.1f} s and {attempts} attempts "
                                  f"(timeout {deadline.seconds:g} s): {exc}") from None
            log.warning("%s: upload interrupted (%s); resuming in %.1f s", device.name, exc, delay)
            deadline.sleep(delay)
            delay = min(delay * 2, 5.0)


# -- deploy, rollback, status -----------------------------------------------------------------


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _append_record(remote: _Remote, record: DeployRecord) -> None:
    line = json.dumps(asdict(record), sort_keys=True) + "\n"
    remote.sh(f"cat >> {remote.q('deploy-log.jsonl')}", stdin=line.encode())


def _activate(remote: _Remote, version_dir: str) -> None:
    """One rename swaps `current`: readers see the old version or the new one, never a mix."""
    remote.sh(
        f"set -e; cd {remote.q()}; touch versions/{shlex.quote(version_dir)}; "
        f"ln -sfn versions/{shlex.quote(version_dir)} current.new; mv -T current.new current")


def _prune(remote: _Remote, keep: int) -> None:
    """Keep the newest `keep` versions (by activation), never the active one."""
    remote.sh(
        f"cd {remote.q('versions')} && cur=$(basename \"$(readlink ../current)\") && "
        f"ls -1t | tail -n +{keep + 1} | while read -r v; do [ \"$v\" = \"$cur\" ] || rm -rf -- \"$v\"; done")


def deploy(device: Device, artifact: Artifact, trusted: list[Ed25519PublicKey], *, keep: int = 3,
           margin_bytes: int = 8 * 2**20, allow_provider_fallback: bool = False,
           timeout: float = DEFAULT_DEADLINE, progress: Progress | None = None) -> DeployResult:
    """Deploy `artifact` to `device`. On any failure the previously active version stays active."""
    started = time.monotonic()
    deadline = Deadline.after(timeout)
    verify(artifact, trusted)  # signature and local bytes, before anything touches the device
    manifest = artifact.manifest
    remote = _Remote(device, manifest.name)
    version_dir = _version_dir(artifact)
    active_model = f"{remote.base}/current/{MODEL}"

    def result(already: bool, sent: int = 0, resumed: int = 0, attempts: int = 0, upload: float = 0.0,
               providers: tuple[str, ...] = (), fallback: str | None = None) -> DeployResult:
        return DeployResult(device.name, manifest.name, manifest.version, manifest.sha256, active_model, already,
                            sent, resumed, attempts, time.monotonic() - started, upload, providers, fallback)

    if remote.sha256("current", MODEL) == manifest.sha256:
        providers, fallback = _choose_providers(device, artifact, allow_provider_fallback)
        log.info("%s: %s already active, nothing to transfer", device.name, artifact.label)
        return result(True, providers=providers, fallback=fallback)

    previous = remote.current()
    kept = remote.sha256("versions", version_dir, MODEL) == manifest.sha256
    staged = f"{remote.base}/staging/{manifest.sha256}.part"
    staged_bytes = 0 if kept else (device.remote_size(staged) or 0)
    needed = 0 if kept else manifest.size - min(staged_bytes, manifest.size)
    providers, fallback = preflight(device, artifact, remote, needed, margin_bytes, allow_provider_fallback)

    sent = resumed = attempts = 0
    upload_seconds = 0.0
    if not kept:
        for _ in range(2):  # a staged file that fails its hash is thrown away and sent once more
            upload_started = time.monotonic()
            sent_now, found, tries = _upload(device, artifact, staged, deadline, progress)
            upload_seconds += time.monotonic() - upload_started
            sent += sent_now
            attempts += tries
            resumed = max(resumed, found)
            if remote.sha256("staging", f"{manifest.sha256}.part") == manifest.sha256:
                break
            log.warning("%s: staged copy of %s fails its sha256; uploading again", device.name, artifact.label)
            device.run(f"rm -f {shlex.quote(staged)}", timeout=30, check=True)
        else:
            raise ArtifactRejected(f"device '{device.name}': {artifact.label}: the uploaded model's sha256 "
                                   "computed on the device does not match the manifest, twice; nothing activated")
        remote.sh(f"set -e; cd {remote.q()}; rm -rf versions/{shlex.quote(version_dir)}.tmp; "
                  f"mkdir -p versions/{shlex.quote(version_dir)}.tmp; "
                  f"cat > versions/{shlex.quote(version_dir)}.tmp/{MANIFEST}; "
                  f"mv staging/{manifest.sha256}.part versions/{shlex.quote(version_dir)}.tmp/{MODEL}; "
                  f"rm -rf versions/{shlex.quote(version_dir)}; "
                  f"mv versions/{shlex.quote(version_dir)}.tmp versions/{shlex.quote(version_dir)}",
                  stdin=(artifact.directory / MANIFEST).read_bytes())
    _activate(remote, version_dir)
    _append_record(remote, DeployRecord("deploy", manifest.name, manifest.version, manifest.sha256, version_dir,
                                        previous, datetime.now(UTC).isoformat(timespec="seconds"), _who()))
    _prune(remote, keep)
    log.info("%s: %s active (%d bytes sent)", device.name, artifact.label, sent)
    return result(False, sent, resumed, attempts, upload_seconds, providers, fallback)


def rollback(device: Device, name: str) -> DeployRecord:
    """Re-activate the version that was active before the current one."""
    remote = _Remote(device, name)
    current = remote.current()
    if current is None:
        raise RollbackUnavailable(f"device '{device.name}': model '{name}' is not deployed; nothing to roll back")
    records = remote.records()
    activation = next((r for r in reversed(records) if r.activated == current), None)
    target = activation.previous if activation else None
    if target is None:
        raise RollbackUnavailable(f"device '{device.name}': model '{name}' has no earlier version to roll back to "
                                  "(rollback walks back through the versions that were active before)")
    manifest_text = remote.sh(f"cat {remote.q('versions', target, MANIFEST)} 2>/dev/null || true")
    if not manifest_text:
        raise RollbackUnavailable(f"device '{device.name}': the previous version {target} of '{name}' is no longer "
                                  "kept (see [deploy] keep_versions)")
    manifest = parse_manifest(manifest_text, Path(f"{device.name}:{remote.base}/versions/{target}/{MANIFEST}"))
    if remote.sha256("versions", target, MODEL) != manifest.sha256:
        raise ArtifactRejected(f"device '{device.name}': kept version {target} of '{name}' fails its sha256; "
                               "not activating it")
    _activate(remote, target)
    # The rolled-back-to version's own predecessor becomes the next rollback target.
    before = next((r.previous for r in reversed(records) if r.activated == target), None)
    record = DeployRecord("rollback", name, manifest.version, manifest.sha256, target, before,
                          datetime.now(UTC).isoformat(timespec="seconds"), _who())
    _append_record(remote, record)
    return record


@dataclass(frozen=True)
class ModelStatus:
    name: str
    active: str | None
    versions: tuple[str, ...]
    last: DeployRecord | None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "active": self.active, "versions": list(self.versions),
                "last": asdict(self.last) if self.last else None}


def status(device: Device) -> list[ModelStatus]:
    """What is deployed on the device: per model, the active version, the kept ones, the last record."""
    models = device.run(f"ls -1 {shlex.quote(device.workdir)}/models 2>/dev/null || true", timeout=30).stdout.split()
    out = []
    for name in models:
        remote = _Remote(device, name)
        versions = remote.sh(f"ls -1t {remote.q('versions')} 2>/dev/null || true").split()
        records = remote.records()
        out.append(ModelStatus(name, remote.current(), tuple(v for v in versions if not v.endswith(".tmp")),
                               records[-1] if records else None))
    return out
