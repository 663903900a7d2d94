"""The emulated lab as a whole: `up` (idempotent, repairs what is stale), `down` (leaves nothing), `status`."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hil.config import DeviceConfig, Inventory, LabConfig
from hil.deadline import Deadline
from hil.errors import LabError
from hil.lab import cgroup, network, services, users, venv
from hil.lab.host import pid_alive, pid_namespace_depth, read_pid, require_lab_host
from hil.transport.ssh import open_socket

log = logging.getLogger(__name__)

SSHD_START_TIMEOUT = 5.0
# A device built by another version of this package is rebuilt, not trusted.
_LAB_SOURCES = sorted(Path(__file__).parent.glob("*.py"))
_LAB_CODE_HASH = hashlib.sha256(b"".join(p.read_bytes() for p in _LAB_SOURCES)).hexdigest()


@dataclass(frozen=True)
class DeviceStatus:
    name: str
    address: str
    netns: bool
    sshd: bool
    console: bool
    current: bool  # built from the devices.toml entry as it is now
    limits: dict[str, str] = field(default_factory=dict)
    clock: str = ""

    @property
    def up(self) -> bool:
        return self.netns and self.sshd and self.console and self.current


class EmulatedLab:
    """The emulated devices of one inventory, built on this host."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.config: LabConfig = inventory.lab
        self.devices: list[DeviceConfig] = inventory.emulated

    # -- public -----------------------------------------------------------------------------

    def up(self) -> list[DeviceStatus]:
        """Build every emulated device that is not up as described; reuse the ones that are."""
        require_lab_host()
        with self._locked():
            wanted = {network.netns_name(self.config.name, d.name) for d in self.devices}
            for stale in set(network.list_netns(self.config.name)) - wanted:
                log.info("removing stale device namespace %s", stale)
                self._teardown_namespace(stale)
            for gone in users.stale_devices(self.config, {d.name for d in self.devices}):
                log.info("removing the login of device %s, no longer in %s", gone, self.inventory.path)
                users.remove_login(self.config, gone)
            if not self.devices:
                return []
            network.ensure_bridge(self.config.name, self.config.subnet)
            services.ensure_client_key(self.config)
            for device in self.devices:
                if not self._device_status(device).up:
                    self._rebuild(device)
            services.write_known_hosts(self.config, self.devices)
            return self.status()

    def down(self) -> None:
        """Remove every trace of this lab: processes, namespaces, links, cgroups, state files."""
        require_lab_host()
        with self._locked():
            for ns in network.list_netns(self.config.name):
                self._teardown_namespace(ns)
            for group in cgroup.find(f"{self.config.name}-"):
                cgroup.remove(group)
            for link in network.list_links(self.config.name):
                network.delete_link(link)
            users.remove_all(self.config)
            venv.remove_all(self.config)
            shutil.rmtree(self.config.dir, ignore_errors=True)

    def status(self) -> list[DeviceStatus]:
        return [self._device_status(d) for d in self.devices]

    def is_up(self, names: list[str] | None = None) -> bool:
        chosen = [d for d in self.devices if not names or d.name in names]
        return all(self._device_status(d).up for d in chosen)

    def ensure_up(self, names: list[str] | None = None) -> None:
        """Bring the lab up unless the chosen devices already run as described."""
        if not self.is_up(names):
            self.up()

    def set_link(self, device: str, up: bool) -> None:
        """Pull or plug the device's network cable (its veth on the host side)."""
        config = self.inventory.get(device)
        network.set_link(self.config.name, ipaddress.IPv4Address(config.ssh.host), up)

    def set_clock(self, device: str, spec: str) -> None:
        services.set_clock_offset(self.config, device, spec)

    # -- building ---------------------------------------------------------------------------

    def _rebuild(self, device: DeviceConfig) -> None:
        started = time.monotonic()
        self._teardown_device(device)
        try:
            self._build(device)
        except BaseException:
            # Ctrl-C or a failure half-way: take the device apart again, so nothing half-built stays.
            with contextlib.suppress(Exception):
                self._teardown_device(device)
            raise
        log.info("device %s up in %.0f ms", device.name, (time.monotonic() - started) * 1000)

    def _build(self, device: DeviceConfig) -> None:
        assert device.resources is not None
        lab = self.config
        address = ipaddress.IPv4Address(device.ssh.host)
        login = users.ensure_login(lab, device, services.device_home(lab, device.name))
        if device.venv is not None:
            venv.ensure_venv(lab, device.name, Path(device.venv))
        services.write_device_files(lab, device, login)
        shadow = users.ensure_console_password(lab, device) if login is not None else None
        group = cgroup.create(self._cgroup_name(device), device.resources.cpus, device.resources.memory_bytes)
        join = group.add if group else None
        network.create_device_net(lab.name, device.name, address, lab.subnet)
        init_pid = services.start_device(lab, device, network.netns_name(lab.name, device.name), join, login,
                                         shadow)
        self._wait_for_sshd(device, init_pid)
        if device.serial is not None:
            self._wait_for_console(device)
        (lab.dir / device.name / "fingerprint").write_text(self._fingerprint(device))

    def _wait_for_sshd(self, device: DeviceConfig, pid: int) -> None:
        deadline = Deadline.after(SSHD_START_TIMEOUT)
        while not deadline.expired:
            if not pid_alive(pid):
                break
            with contextlib.suppress(OSError), open_socket(device.ssh.host, 22, 0.5, self.config.bridge):
                return
            time.sleep(0.01)
        logs = self._tail(device, "boot.log") + self._tail(device, "sshd.log")
        raise LabError(f"sshd of emulated device '{device.name}' did not start within {SSHD_START_TIMEOUT:g} s"
                       f"{': ' + logs if logs else ''}")

    def _wait_for_console(self, device: DeviceConfig) -> None:
        deadline = Deadline.after(SSHD_START_TIMEOUT)
        link = self.config.console_path(device.name)
        while not deadline.expired:
            if link.exists():
                return
            time.sleep(0.01)
        raise LabError(f"serial console of emulated device '{device.name}' did not appear at {link}: "
                       f"{self._tail(device, 'console.log')}")

    def _tail(self, device: DeviceConfig, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.config.dir / device.name / name).read_text(errors="replace")[-400:].strip()
        return ""

    # -- tearing down -----------------------------------------------------------------------

    def _teardown_device(self, device: DeviceConfig) -> None:
        self._teardown_namespace(network.netns_name(self.config.name, device.name))
        for group in cgroup.find(self._cgroup_name(device)):
            if group.name == self._cgroup_name(device):
                cgroup.remove(group)
        address = ipaddress.IPv4Address(device.ssh.host)
        network.delete_link(network.host_veth_name(self.config.name, address))
        shutil.rmtree(self.config.dir / device.name, ignore_errors=True)

    def _teardown_namespace(self, ns: str) -> None:
        """Kill everything living in the namespace (sshd, sessions, console), then delete it."""
        device = ns.removeprefix(f"{self.config.name}-")
        services.reboot_flag(self.config, device).unlink(missing_ok=True)  # or its init would boot it again
        recorded = [read_pid(self.config.dir / device / f) for f in ("init.pid", "console.pid")]
        victims = network.netns_pids(ns) | {p for p in recorded if p and pid_alive(p, device)}
        # Leaves first, then the device's PID 1, then what is outside: a process inside the device
        # whose parent is outside (the console under nsenter) would otherwise be left for the host's
        # init to reap, and the device's PID 1 cannot finish dying until it is.
        ids = {pid: pid_namespace_depth(pid) for pid in victims}
        inside = {p for p, nspid in ids.items() if len(nspid) > 1 and nspid[-1] != 1}
        device_init = {p for p, nspid in ids.items() if len(nspid) > 1 and nspid[-1] == 1}
        for group in (inside, device_init, victims - inside - device_init):
            self._kill_and_wait(group)
        self._kill_and_wait(network.netns_pids(ns))  # anything started meanwhile
        network.delete_netns(ns)

    @staticmethod
    def _kill_and_wait(pids: set[int], timeout: float = 2.0) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = Deadline.after(timeout)
        while any(pid_alive(p) for p in pids) and not deadline.expired:
            time.sleep(0.005)

    # -- inspecting -------------------------------------------------------------------------

    def _device_status(self, device: DeviceConfig) -> DeviceStatus:
        lab = self.config
        ddir = lab.dir / device.name
        ns = network.netns_name(lab.name, device.name)
        has_ns = ns in network.list_netns(lab.name)
        init_pid = read_pid(ddir / "init.pid")
        console_pid = read_pid(ddir / "console.pid")
        sshd_ok = bool(init_pid and pid_alive(init_pid, str(ddir / "init.json")))
        console_ok = device.serial is None or bool(
            console_pid and pid_alive(console_pid, "socat") and lab.console_path(device.name).exists())
        current = has_ns and self._stored_fingerprint(device) == self._fingerprint(device)
        group = next((g for g in cgroup.find(self._cgroup_name(device)) if g.name == self._cgroup_name(device)), None)
        clock = ""
        with contextlib.suppress(OSError):
            clock = services.clock_file(lab, device.name).read_text().strip()
        return DeviceStatus(
            name=device.name, address=device.ssh.host, netns=has_ns, sshd=sshd_ok, console=console_ok,
            current=current, limits=group.limits() if group else {}, clock=clock)

    def _fingerprint(self, device: DeviceConfig) -> str:
        """What the device was built from; a change (or a vanished interpreter) means rebuild."""
        data = {"device": repr(device), "lab": repr(self.config), "python": sys.executable,
                "python_exists": Path(sys.executable).exists(), "faketime": str(services.faketime_library()),
                "code": _LAB_CODE_HASH, "passwords": users.passwords_digest(self.config, device)}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def _stored_fingerprint(self, device: DeviceConfig) -> str:
        with contextlib.suppress(OSError):
            return (self.config.dir / device.name / "fingerprint").read_text()
        return ""

    def _cgroup_name(self, device: DeviceConfig) -> str:
        return f"{self.config.name}-{device.name}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up`/`down` at a time per lab, also across pytest-xdist workers and CI runners."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.config.state_dir / f"{self.config.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
