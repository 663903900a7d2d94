"""Running commands on the lab host itself, with the checks that give a newcomer a clear error."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hil.errors import LabError

log = logging.getLogger(__name__)

# The tool the lab needs -> the Debian package that provides it.
REQUIRED_TOOLS = {
    "ip": "iproute2",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "socat": "socat",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "iptables": "iptables",
    # the login, sudo rule and password of a non-root emulated device
    "useradd": "passwd",
    "usermod": "passwd",
    "userdel": "passwd",
    "chpasswd": "passwd",
    "sudo": "sudo",
    "visudo": "sudo",
}
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_tool(name: str) -> str:
    """Absolute path of a host tool, looking in sbin too (sshd is not on a normal user's PATH)."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))
    if path is None:
        package = REQUIRED_TOOLS.get(name, name)
        raise LabError(f"the emulated lab needs '{name}', which is not installed: apt-get install {package}")
    return path


def require_lab_host() -> None:
    """Root and every tool the lab uses, checked up front so nothing is half-built."""
    if os.geteuid() != 0:
        raise LabError("the emulated lab needs root (network namespaces, mounts, cgroups): run as root or via sudo")
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if _which(tool) is None})
    if missing:
        raise LabError(f"the emulated lab needs packages that are not installed: apt-get install {' '.join(missing)}")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def host_run(args: Sequence[str], *, timeout: float = 10.0, check: bool = True, input: str | None = None) -> str:
    """Run a host command; a failure becomes a LabError that shows the command and its stderr."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise LabError(f"lab command timed out after {timeout:g} s: {' '.join(args)}") from None
    except FileNotFoundError:
        raise LabError(f"lab command not found: {args[0]}") from None
    if check and proc.returncode != 0:
        raise LabError(f"lab command failed ({proc.returncode}): {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def pid_alive(pid: int, cmdline_contains: str = "") -> bool:
    """True when `pid` runs (not a zombie) and, to guard against pid reuse, its command line mentions the text."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and cmdline_contains in cmdline


def read_pid(path: os.PathLike[str] | str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def pid_namespace_depth(pid: int) -> tuple[int, ...]:
    """The pid as each nested PID namespace sees it (NSpid), outermost first; () when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return tuple(int(p) for p in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()
