"""Round trip of one trivial command to a device, hil against the usual ways of doing it.

Run as root on the lab host (the emulated lab is brought up if needed):

    .venv/bin/python benchmarks/roundtrip.py [--devices devices.toml] [--device NAME] [-n 100]

Every method runs `/bin/true` on the same device in the same run. The methods take turns, one
call each per round, so a burst of load from something else on the machine hits them all alike
and the ratios stay fair on a noisy machine. Prints a table; timings are reported, never asserted.
Exits 0 unless a method could not be measured.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from hil.config import DeviceConfig, Inventory, load_inventory
from hil.device import Device
from hil.errors import HilError
from hil.lab import EmulatedLab
from hil.transport.ssh import open_socket

log = logging.getLogger("benchmarks.roundtrip")

RUN_TARGET_MS = 3.0
SERIAL_TARGET_MS = 20.0
WARMUP = 3
CONNECT_SAMPLES = 5
PUT_BYTES = 1 << 20
PUT_SAMPLES = 5
FRESH_SSH_EVERY = 10  # fresh ssh is slow: one call every this many rounds
COMMAND = "/bin/true"
SUBPROCESS_TIMEOUT = 30.0


@dataclass
class Method:
    """One way of running the command, and what it measured."""

    name: str
    call: Callable[[], object]
    every: int = 1  # take part in every `every`-th round only
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    def fail(self, exc: BaseException) -> None:
        log.error("%s failed: %s: %s", self.name, type(exc).__name__, exc)
        self.error = f"{type(exc).__name__}: {exc}"

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1000

    @property
    def p90_ms(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0] * 1000
        return statistics.quantiles(self.samples, n=10, method="inclusive")[8] * 1000

    @property
    def min_ms(self) -> float:
        return min(self.samples) * 1000


# -- helpers ------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def sample(method: Method, count: int, warmup: int = WARMUP) -> Method:
    """Time `count` calls of one method on its own (after `warmup` untimed ones)."""
    log.info("measuring: %s", method.name)
    try:
        for _ in range(warmup):
            method.call()
        method.samples.extend(timed(method.call) for _ in range(count))
    except Exception as exc:
        method.fail(exc)
    return method


def take_turns(methods: list[Method], rounds: int) -> None:
    """Each round, every method still working runs once; a method that raises leaves the rotation."""
    log.info("measuring %d rounds of: %s", rounds, ", ".join(m.name for m in methods))
    for method in methods:  # warm up: first channel, first sync of the console, page cache
        try:
            for _ in range(min(WARMUP, rounds)):
                method.call()
        except Exception as exc:
            method.fail(exc)
    for index in range(rounds):
        for method in methods:
            if method.error is not None or index % method.every:
                continue
            try:
                method.samples.append(timed(method.call))
            except Exception as exc:
                method.fail(exc)


def ssh_options(config: DeviceConfig, port_flag: str = "-p") -> list[str]:
    """Options that make the OpenSSH client behave like hil: the lab key, pinned host key, no prompts.

    `-F /dev/null` keeps the user's ~/.ssh/config (a ControlMaster there, say) out of the measurement.
    """
    ssh = config.ssh
    options = ["-F", "/dev/null", port_flag, str(ssh.port), "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
               "-o", f"StrictHostKeyChecking={'yes' if ssh.strict_host_key_checking else 'no'}"]
    if ssh.key is not None:
        options += ["-i", str(ssh.key), "-o", "IdentitiesOnly=yes"]
    if ssh.known_hosts is not None:
        options += ["-o", f"UserKnownHostsFile={ssh.known_hosts}"]
    if ssh.bind_interface is not None:
        # Same network safety as hil: lab traffic may only use the lab bridge.
        options += ["-o", f"BindInterface={ssh.bind_interface}"]
    return options


def target(config: DeviceConfig) -> str:
    return f"{config.ssh.user}@{config.ssh.host}"


def run_checked(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")


def paramiko_client(config: DeviceConfig) -> paramiko.SSHClient:
    """A plain paramiko connection with the device's key and pinned host key."""
    ssh = config.ssh
    client = paramiko.SSHClient()
    if ssh.known_hosts is not None:
        client.load_host_keys(str(ssh.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    sock = open_socket(ssh.host, ssh.port, ssh.connect_timeout, ssh.bind_interface)
    client.connect(ssh.host, port=ssh.port, username=ssh.user, key_filename=str(ssh.key) if ssh.key else None,
                   look_for_keys=ssh.key is None, allow_agent=False, timeout=ssh.connect_timeout, sock=sock)
    return client


@contextlib.contextmanager
def control_master(config: DeviceConfig, directory: Path) -> Iterator[Path]:
    """An OpenSSH ControlMaster for the device, stopped on exit."""
    socket_path = directory / "ctl"
    base = ["ssh", *ssh_options(config), "-S", str(socket_path)]
    run_checked([*base, "-M", "-o", "ControlPersist=60", "-fN", target(config)])
    try:
        yield socket_path
    finally:
        try:
            run_checked([*base, "-O", "exit", target(config)])
        except Exception as exc:
            log.warning("could not stop the ControlMaster at %s: %s", socket_path, exc)


# -- the methods --------------------------------------------------------------------------------


def fresh_ssh(config: DeviceConfig) -> Callable[[], None]:
    args = ["ssh", *ssh_options(config), target(config), COMMAND]
    return lambda: run_checked(args)


def via_control_master(config: DeviceConfig, ctl: Path) -> Callable[[], None]:
    args = ["ssh", *ssh_options(config), "-S", str(ctl), target(config), COMMAND]
    return lambda: run_checked(args)


def paramiko_exec(client: paramiko.SSHClient) -> Callable[[], None]:
    def once() -> None:
        _, stdout, _ = client.exec_command(COMMAND)
        status = stdout.channel.recv_exit_status()
        stdout.channel.close()
        if status != 0:
            raise RuntimeError(f"paramiko exec_command({COMMAND!r}) exited {status}")

    return once


def device_run(device: Device) -> Callable[[], None]:
    return lambda: device.run(COMMAND, check=True)


def device_console(device: Device) -> Callable[[], None]:
    def once() -> None:
        result = device.console("true")
        if result.exit_status != 0:
            raise RuntimeError(f"console 'true' exited {result.exit_status}: {result.stdout!r}")

    return once


def hil_connect(config: DeviceConfig) -> Callable[[], None]:
    """A new Device's first run: paramiko connect + command server start + the command."""

    def once() -> None:
        device = Device(config)
        try:
            device.run(COMMAND, check=True)
        finally:
            device.close()

    return once


def paramiko_connect(config: DeviceConfig) -> Callable[[], None]:
    return lambda: paramiko_client(config).close()


def scp_put(config: DeviceConfig, local: Path, remote: str, extra: list[str]) -> Callable[[], None]:
    args = ["scp", *ssh_options(config, port_flag="-P"), *extra, "-q", str(local), f"{target(config)}:{remote}"]
    return lambda: run_checked(args)


# -- the measurements ---------------------------------------------------------------------------


def opened(name: str, opener: Callable[[], Callable[[], object]]) -> Method:
    """A method whose set-up (a connection, a master) may itself fail: then it is reported failed."""
    try:
        return Method(name, opener())
    except Exception as exc:
        method = Method(name, lambda: None)
        method.fail(exc)
        return method


def latency(config: DeviceConfig, device: Device, rounds: int, tmp: Path) -> list[Method]:
    with contextlib.ExitStack() as stack:

        def open_master() -> Callable[[], None]:
            return via_control_master(config, stack.enter_context(control_master(config, tmp)))

        def open_paramiko() -> Callable[[], None]:
            client = paramiko_client(config)
            stack.callback(client.close)
            return paramiko_exec(client)

        def open_device() -> Callable[[], None]:
            device.run(COMMAND, check=True)  # connect and start the command server, untimed
            return device_run(device)

        methods = [
            Method("fresh ssh per command", fresh_ssh(config), every=FRESH_SSH_EVERY),
            opened("OpenSSH ControlMaster (ssh -S ctl)", open_master),
            opened("paramiko exec_command, open transport", open_paramiko),
            opened("hil Device.run (warm)", open_device),
            Method("hil Device.console (serial pty)", device_console(device)),
        ]
        take_turns([m for m in methods if m.error is None], rounds)
        return methods


def connects(config: DeviceConfig) -> list[Method]:
    methods = [Method("connect: hil, first Device.run", hil_connect(config)),
               Method("connect: paramiko SSHClient.connect", paramiko_connect(config))]
    take_turns(methods, CONNECT_SAMPLES)
    return methods


def transfers(config: DeviceConfig, device: Device, tmp: Path) -> list[Method]:
    local = tmp / "payload.bin"
    local.write_bytes(os.urandom(PUT_BYTES))
    remote = f"{config.workdir}/hil-bench-payload.bin"
    try:
        device.run(f"mkdir -p {shlex.quote(config.workdir)}", check=True)
        with contextlib.ExitStack() as stack:

            def open_master_scp() -> Callable[[], None]:
                ctl = stack.enter_context(control_master(config, tmp))
                return scp_put(config, local, remote, ["-o", f"ControlPath={ctl}"])

            methods = [
                Method("Device.put (SFTP, open connection)", lambda: device.put(local, remote)),
                Method("scp (new connection each)", scp_put(config, local, remote, [])),
                opened("scp over the ControlMaster", open_master_scp),
            ]
            take_turns([m for m in methods if m.error is None], PUT_SAMPLES)
            return methods
    finally:
        with contextlib.suppress(Exception):
            device.run(f"rm -f {shlex.quote(remote)}")


# -- reporting ----------------------------------------------------------------------------------


def print_latency_table(methods: list[Method], reference: Method) -> None:
    print(f"{'method':<40} {'n':>4} {'median ms':>10} {'p90 ms':>9} {'min ms':>8} {'x slower than hil':>18}")
    for m in methods:
        if not m.ok:
            print(f"{m.name:<40} {len(m.samples):>4} {'FAILED':>10}  {m.error}")
            continue
        ratio = f"{m.median_ms / reference.median_ms:.1f}x" if reference.ok else "n/a"
        print(f"{m.name:<40} {len(m.samples):>4} {m.median_ms:>10.2f} {m.p90_ms:>9.2f} {m.min_ms:>8.2f} {ratio:>18}")


def verdict(label: str, method: Method, limit_ms: float) -> str:
    if not method.ok:
        return f"{label}: not measured ({method.error}): target < {limit_ms:g} ms MISSED"
    met = "MET" if method.median_ms < limit_ms else "MISSED"
    return f"{label} median {method.median_ms:.2f} ms: target < {limit_ms:g} ms {met}"


def print_transfers(methods: list[Method]) -> None:
    put = methods[0]
    print(f"{'1 MiB upload':<40} {'n':>4} {'MB/s':>8} {'median ms':>10}  Device.put is ... x faster")
    for m in methods:
        if not m.ok:
            print(f"{m.name:<40} {len(m.samples):>4} {'FAILED':>8}  {m.error}")
            continue
        mbps = PUT_BYTES / 1e6 / (m.median_ms / 1000)
        ratio = f"{m.median_ms / put.median_ms:.1f}x" if put.ok and m is not put else ""
        print(f"{m.name:<40} {len(m.samples):>4} {mbps:>8.1f} {m.median_ms:>10.1f}  {ratio}")


def report(config: DeviceConfig, lat: list[Method], conn: list[Method], xfer: list[Method], load: str) -> None:
    run = lat[3]
    print(f"\nround trip of {COMMAND!r} on {config.name} ({config.ssh.host}); methods take turns; {load}\n")
    print_latency_table(lat, run)
    print()
    print_latency_table(conn, run)
    hil_c, pm_c = conn
    if hil_c.ok and pm_c.ok:
        print(f"hil connect = paramiko connect {hil_c.median_ms - pm_c.median_ms:+.1f} ms "
              f"({hil_c.median_ms / pm_c.median_ms:.2f}x): command server start + first command")
    print()
    print(verdict("Device.run", run, RUN_TARGET_MS))
    print(verdict("Device.console", lat[4], SERIAL_TARGET_MS))
    print()
    print_transfers(xfer)
    sys.stdout.flush()


# -- main ---------------------------------------------------------------------------------------


def choose_device(inventory: Inventory, name: str | None) -> DeviceConfig:
    if name is not None:
        return inventory.get(name)
    if not inventory.emulated:
        raise HilError(f"{inventory.path}: no emulated device; pick one with --device NAME")
    return inventory.emulated[0]


def bench_device(devices: Path, name: str | None) -> tuple[Inventory, DeviceConfig]:
    """The device a benchmark measures, with the emulated lab brought up for it when needed."""
    inventory = load_inventory(devices)
    config = choose_device(inventory, name)
    if config.emulated:
        EmulatedLab(inventory).ensure_up([config.name])
    return inventory, config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=Path, default=Path("devices.toml"), help="inventory (default: %(default)s)")
    parser.add_argument("--device", help="device name (default: the first emulated device)")
    parser.add_argument("-n", type=int, default=100,
                        help=f"round trips per method (default: %(default)s; fresh ssh runs n/{FRESH_SSH_EVERY})")
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("-n must be at least 2")
    return args


def load_text() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    args = parse_args(argv)
    try:
        _, config = bench_device(args.devices, args.device)
    except HilError as exc:
        log.error("%s", exc)
        return 2
    device = Device(config)
    try:
        with tempfile.TemporaryDirectory(prefix="hil-bench-") as tmp:
            lat = latency(config, device, args.n, Path(tmp))
            conn = connects(config)
            xfer = transfers(config, device, Path(tmp))
    finally:
        device.close()
    report(config, lat, conn, xfer, load_text())
    failed = [m.name for m in (*lat, *conn, *xfer) if not m.ok]
    if failed:
        log.error("not measured: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
