"""The init of an emulated device: keeps its sshd and serial console running, and "reboots" them.

Started by the lab inside the device's network, mount and UTS namespaces (after its disk is
mounted), with the lab's Python. Each boot starts sshd as PID 1 of a fresh PID namespace and a
console shell inside that namespace. When sshd ends, the device is down; if a reboot was asked
for (the device's `hil-reboot` touched the request file and signalled its PID 1), the init waits
a moment and boots again, keeping the disk, the address and the clock, as a real reboot would.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD_WAIT = 5.0

# PID 1 of the device: runs sshd as its child and reaps every orphan (a detached job that ends, say),
# as a real init does; SIGTERM (the device's `hil-reboot`) takes sshd and so the device down.
PID1 = """
import os, signal, subprocess, sys
sshd = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGTERM, lambda *_: sshd.terminate())
while True:
    try:
        pid, _ = os.wait()
    except ChildProcessError:
        break
    if pid == sshd.pid:
        break
"""


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait_for_child(pid: int) -> int | None:
    """The process `unshare --fork` started (sshd, PID 1 of the new namespace)."""
    end = time.monotonic() + CHILD_WAIT
    while time.monotonic() < end:
        children = _children(pid)
        if children:
            return children[0]
        time.sleep(0.005)
    return None


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)


def boot(config: dict[str, object]) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes] | None]:
    sshd = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-c", PID1,
         str(config["sshd"]), "-D", "-f", str(config["sshd_config"]), "-E", str(config["sshd_log"])],
        stdin=subprocess.DEVNULL)
    console = None
    spec = config.get("console")
    inner = _wait_for_child(sshd.pid)
    if isinstance(spec, dict) and inner is not None:
        Path(spec["link"]).unlink(missing_ok=True)
        with open(spec["log"], "ab") as log:
            console = subprocess.Popen(
                ["nsenter", "-t", str(inner), "-p", "-m", f"--wd={spec['workdir']}",
                 "socat", "-d", f"pty,link={spec['link']},raw,echo=0",
                 f"exec:{spec['shell']},pty,stderr,setsid,sigint,sane,ctty"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=spec["env"])
        Path(spec["pid_file"]).write_text(f"{console.pid}\n")
    return sshd, console


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    flag = Path(str(config["reboot_flag"]))
    running: list[subprocess.Popen[bytes] | None] = []

    def shut_down(signum: int, _frame: object) -> None:
        for proc in running:
            _stop(proc)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, shut_down)
    while True:
        sshd, console = boot(config)
        running[:] = [sshd, console]
        sshd.wait()
        _stop(console)
        if not flag.exists():
            return 0
        flag.unlink(missing_ok=True)
        time.sleep(float(config.get("boot_delay", 0.5)))  # the device is down for a moment, as real ones are


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
