"""What runs inside an emulated device: its sshd, its serial console and its clock."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hil.config import DeviceConfig, LabConfig
from hil.errors import LabError
from hil.lab import cgroup
from hil.lab.host import find_tool, host_run
from hil.lab.users import Login

log = logging.getLogger(__name__)

_DEBIAN_FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
DEVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def faketime_library() -> Path:
    """The libfaketime to preload into device sessions.

    The PyPI `libfaketime` build is preferred: Debian's 0.9.10 breaks Python 3.11's time.sleep
    when the monotonic clock is left unfaked (see LAB-FACTS.md).
    """
    try:
        import libfaketime  # the PyPI package ships the library it wraps

        vendored = Path(libfaketime.__file__).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
        if vendored.is_file():
            return vendored
    except ImportError:
        pass
    if _DEBIAN_FAKETIME.is_file():
        log.warning("using Debian's libfaketime: Python's time.sleep may fail on devices (pip install libfaketime)")
        return _DEBIAN_FAKETIME
    raise LabError("libfaketime is not installed: pip install libfaketime (or apt-get install libfaketime)")


def device_env(lab: LabConfig, device: DeviceConfig) -> dict[str, str]:
    """The environment of every session on the device: its own clock, and on a root device the lab's Python
    first on PATH (a non-root device has the system's PATH: its onnxruntime is in its venv, as on a Jetson)."""
    path = DEVICE_PATH if device.login_user != "root" else f"{lab.dir / 'bin'}:{DEVICE_PATH}"
    return {
        "LD_PRELOAD": str(device_faketime(lab)),
        "FAKETIME_TIMESTAMP_FILE": str(clock_file(lab, device.name)),
        "FAKETIME_NO_CACHE": "1",
        # Python's timeouts (sleep, locks, subprocess) need a true monotonic clock.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PATH": path,
        # A home of its own: the host's ~/.bashrc (pyenv, conda...) must not rewrite the device's PATH.
        "HOME": str(device_home(lab, device.name)),
        "LANG": "C.UTF-8",
    }


def device_faketime(lab: LabConfig) -> Path:
    """The lab's own copy of libfaketime, the one device sessions preload: hil's checkout (and so its venv)
    may lie in a directory a non-root device's login cannot enter (mktemp's 0700, a home)."""
    return lab.dir / "lib" / "libfaketime.so.1"


def device_home(lab: LabConfig, device: str) -> Path:
    return lab.dir / device / "home"


def clock_file(lab: LabConfig, device: str) -> Path:
    return lab.dir / device / "faketime"


def hosts_file(lab: LabConfig, device: str) -> Path:
    return lab.dir / device / "hosts"


def ensure_client_key(lab: LabConfig) -> None:
    """The key hil logs in with, and the device's python3 (the lab's own interpreter, with onnxruntime)."""
    lab.dir.mkdir(parents=True, exist_ok=True)
    # Enterable but not listable: a non-root device's login reads authorized_keys and its own files here;
    # what is secret (the client key, host keys, passwords) is readable by root only.
    lab.dir.chmod(0o711)
    if not lab.client_key.is_file():
        host_run([find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", f"hil-lab-{lab.name}",
                  "-f", str(lab.client_key)])
    (lab.dir / "authorized_keys").write_text(lab.client_key.with_suffix(".pub").read_text())
    preload = device_faketime(lab)
    preload.parent.mkdir(exist_ok=True)
    preload.parent.chmod(0o755)
    source = faketime_library()
    if not preload.is_file() or preload.read_bytes() != source.read_bytes():
        # A new file renamed over the old one: running sessions have the old one mapped, and truncating
        # a mapped library under them would crash them.
        draft = preload.with_suffix(".new")
        shutil.copyfile(source, draft)
        draft.chmod(0o755)
        os.replace(draft, preload)
    bindir = lab.dir / "bin"
    bindir.mkdir(exist_ok=True)
    # `reboot` on an emulated device restarts its processes; it must never reach the host's reboot.
    # PID 1 in the device is its sshd, and the device's init boots it again when asked to.
    reboot = bindir / "hil-reboot"
    reboot.write_text(f'#!/bin/sh\ntouch "{lab.dir}/$(hostname)/reboot-request" && exec kill -TERM 1\n')
    reboot.chmod(0o755)
    for name in ("python3", "python"):
        # A wrapper, not a symlink: a venv's interpreter only finds its site-packages when
        # started through its own path.
        wrapper = bindir / name
        wrapper.unlink(missing_ok=True)
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        wrapper.chmod(0o755)


def write_device_files(lab: LabConfig, device: DeviceConfig, login: Login | None) -> Path:
    """Host key, sshd_config, /etc/hosts and clock file for one device; returns the sshd_config path.

    The clock file and the home belong to the login user: the clock is their sessions' own."""
    ddir = lab.dir / device.name
    ddir.mkdir(parents=True, exist_ok=True)
    ddir.chmod(0o711)
    host_key = ddir / "host_ed25519_key"
    for old in (host_key, host_key.with_suffix(".pub")):
        old.unlink(missing_ok=True)
    host_run([find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", device.name, "-f", str(host_key)])
    clock_file(lab, device.name).write_text("+0\n")
    device_home(lab, device.name).mkdir(exist_ok=True)
    # sudo looks the hostname up; without it in /etc/hosts it complains on every call.
    hosts_file(lab, device.name).write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{device.name}\n"
                                            "::1\tlocalhost ip6-localhost ip6-loopback\n")
    if login is not None:
        for path in (clock_file(lab, device.name), device_home(lab, device.name)):
            os.chown(path, login.uid, login.gid)
        device_home(lab, device.name).chmod(0o700)
    login_rule = ("PermitRootLogin prohibit-password" if login is None
                  else f"PermitRootLogin no\nAllowUsers {login.name}")
    env = " ".join(f"{k}={v}" for k, v in device_env(lab, device).items())
    config = ddir / "sshd_config"
    config.write_text(
        f"""# written by hil lab up for {device.name}
ListenAddress {device.ssh.host}
Port 22
HostKey {host_key}
PidFile {ddir / 'sshd.pid'}
AuthorizedKeysFile {lab.dir / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
{login_rule}
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
MaxSessions 64
MaxStartups 64:30:128
ClientAliveInterval 2
ClientAliveCountMax 3
Subsystem sftp internal-sftp
SetEnv {env}
"""
    )
    return config


def write_known_hosts(lab: LabConfig, devices: list[DeviceConfig]) -> None:
    """Pin every device's host key: hil connects with strict host-key checking."""
    lines = []
    for device in devices:
        pub = lab.dir / device.name / "host_ed25519_key.pub"
        if pub.is_file():
            keytype, key = pub.read_text().split()[:2]
            lines.append(f"{device.ssh.host} {keytype} {key}\n")
    lab.known_hosts.write_text("".join(lines))


def _join_cgroup(join: Callable[[int], None] | None) -> Callable[[], None] | None:
    if join is None:
        return None
    return lambda: join(os.getpid())


def _cgroup_mounts() -> str:
    """Shell that mounts the cgroup tree into the device: `ip netns exec` remounts /sys and hides it,
    but a device (and its facts) must see its own CPU and memory limits, as on real hardware."""
    version = cgroup.cgroup_version()
    if version == 2:
        return "mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true"
    if version == 1:
        return ("mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup 2>/dev/null && "
                "for c in cpu cpuacct memory; do mkdir -p /sys/fs/cgroup/$c && "
                "mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c 2>/dev/null; done; true")
    return "true"


def reboot_flag(lab: LabConfig, device: str) -> Path:
    return lab.dir / device / "reboot-request"


def _init_config(lab: LabConfig, device: DeviceConfig, shadow: Path | None) -> Path:
    """What the device's init (device_init.py) runs: its sshd, and its console unless it has none."""
    ddir = lab.dir / device.name
    console = None
    if device.serial is not None:
        env = {**device_env(lab, device), "TERM": "vt100", "PS1": f"root@{device.name}:\\w# "}
        shell = "bash --norc --noprofile -i"
        if shadow is not None:  # a non-root device: getty and login first, then the user's shell
            login = ddir / "console-login.json"
            login.write_text(json.dumps({
                "hostname": device.name, "user": device.login_user, "shadow": str(shadow), "shell": shell,
                "env": {**env, "PS1": f"{device.login_user}@{device.name}:\\w$ "}}, indent=2))
            shell = f"{sys.executable} {Path(__file__).with_name('console_login.py')} {login}"
        console = {
            "link": str(lab.console_path(device.name)),
            "log": str(ddir / "console.log"),
            "pid_file": str(ddir / "console.pid"),
            "workdir": device.workdir,
            "shell": shell,
            "env": env,
        }
    config = {"sshd": find_tool("sshd"), "sshd_config": str(ddir / "sshd_config"), "sshd_log": str(ddir / "sshd.log"),
              "reboot_flag": str(reboot_flag(lab, device.name)), "console": console}
    path = ddir / "init.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_device(lab: LabConfig, device: DeviceConfig, netns: str, join: Callable[[int], None] | None,
                 login: Login | None, shadow: Path | None) -> int:
    """Boot the device: its disk (a size-limited tmpfs), hostname and cgroup view in private mount and UTS
    namespaces inside its netns, then its init, which runs sshd (PID 1 of the device's own PID namespace,
    so `ps` there shows the device and `kill -9 -1` cannot reach the host) and the serial console."""
    ddir = lab.dir / device.name
    assert device.resources is not None and device.workdir is not None
    Path(device.workdir).mkdir(parents=True, exist_ok=True)  # the mount point, on the host
    # Its own /dev/shm too: every device numbers its PIDs from 1, and libfaketime names its shared memory
    # after the PID (O_EXCL), so on one shared /dev/shm two devices' processes collided now and then.
    # The workdir belongs to the login user, as on a real device where hil's directory is the user's.
    owner = f",uid={login.uid},gid={login.gid}" if login is not None else ""
    script = (
        'mount -t tmpfs -o "size=$1,mode=0755$7" "hil-$2" "$3" && hostname "$2" && '
        'mount -t tmpfs -o "size=64m,mode=1777,nosuid,nodev" "hil-shm-$2" /dev/shm && '
        'mount --bind "$8" /etc/hosts && '
        f"{{ {_cgroup_mounts()} ; }} && "
        'exec "$4" "$5" "$6"'
    )
    args = [find_tool("ip"), "netns", "exec", netns,
            find_tool("unshare"), "--mount", "--uts", "--propagation", "private",
            "/bin/sh", "-c", script, "sh", str(device.resources.disk_bytes), device.name, device.workdir,
            sys.executable, str(Path(__file__).with_name("device_init.py")), str(_init_config(lab, device, shadow)),
            owner, str(hosts_file(lab, device.name))]
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    with (ddir / "boot.log").open("ab") as boot_log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=boot_log, stderr=boot_log,
                                start_new_session=True, preexec_fn=_join_cgroup(join), close_fds=True)
    (ddir / "init.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def set_clock_offset(lab: LabConfig, device: str, spec: str) -> None:
    """Move a device's clock: a libfaketime spec like '+3600', '-86400' or '+0 x1.001'."""
    clock_file(lab, device).write_text(f"{spec}\n")
