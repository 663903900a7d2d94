"""A device built by hand on this machine, the way a real lab device looks to hil, and without hil's lab code.

`hil lab` builds its devices for hil: root logins, the lab's own key and known_hosts, a bare console
shell. A real device is none of that. This fixture builds one that is:

- the target `edge-01` (netns `hil5-edge`, 10.77.5.3, sshd on port 2200) is reachable only through a
  bastion `edge-bastion` (netns `hil5-bastion`, 10.77.5.2, sshd on port 2222): its iptables drop TCP
  from the host, so only a ProxyJump gets there;
- the login is a non-root user `hiledge`, with a home made by `useradd -m`, who runs anything with
  sudo after giving a password (not NOPASSWD);
- its Python is a venv at /opt/hil-edge-venv (numpy, onnxruntime), not the `python3` on its PATH;
- the client finds it through a hand-written ssh_config (Host aliases, ProxyJump) and a known_hosts
  with non-default ports (`[10.77.5.3]:2200 ssh-ed25519 ...`);
- its serial console asks for a login and a password like getty + login, then gives a bash with a
  noisy prompt (colours, an OSC window title, an erase-line code, bracketed paste), and a kernel
  message lands on it about 2 s after each login.

Everything is taken down at the end of the session, also when a test fails; leftovers of a crashed
run are taken down before building. Only names of its own are touched: netns `hil5-*`, links
`hil5-*`, the user `hiledge` (and only if its comment says it is ours), /etc/sudoers.d/hil-edge,
/opt/hil-edge-venv, and processes inside those namespaces, owned by that user, or whose pids it
recorded itself.

Use it from a test module with `from tests.handbuilt import handbuilt_device  # noqa: F401` and a
test argument named `handbuilt`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST_ADDRESS = "10.77.5.1"
BASTION_ADDRESS = "10.77.5.2"
TARGET_ADDRESS = "10.77.5.3"
PREFIX = 24
BRIDGE = "hil5-br"
BASTION_NS = "hil5-bastion"
EDGE_NS = "hil5-edge"
HOST_VETHS = {BASTION_NS: "hil5-vb", EDGE_NS: "hil5-ve"}
BASTION_PORT = 2222
TARGET_PORT = 2200
HOSTNAME = "edge-01"
BASTION_HOSTNAME = "edge-bastion"
USER = "hiledge"
USER_COMMENT = "hil handbuilt edge device"  # only a user with this comment is ever removed
HOME = Path("/home") / USER
HOME_MARKER = ".hil-handbuilt"
WORKDIR_SIZE = "64m"  # the tmpfs at ~/hil on the target
PASSWORD_ENV = "HIL_EDGE_SUDO_PASSWORD"
VENV = Path("/opt/hil-edge-venv")
SUDOERS = Path("/etc/sudoers.d/hil-edge")
STATE_DIR = Path("/run/hil5-handbuilt")  # the pids a build started, for the next one if it crashes
REPO = Path(__file__).resolve().parents[1]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KERNEL_MESSAGE = "[   12.345678] usb 1-1: new high-speed USB device number 2 using ehci-pci"
KERNEL_MESSAGE_DELAY = 2.0

# tool -> the Debian package that provides it
TOOLS = {
    "ip": "iproute2", "iptables-restore": "iptables", "sshd": "openssh-server", "ssh": "openssh-client",
    "ssh-keygen": "openssh-client", "socat": "socat", "nsenter": "util-linux", "unshare": "util-linux",
    "runuser": "util-linux", "useradd": "passwd", "userdel": "passwd", "chpasswd": "passwd", "sudo": "sudo",
    "visudo": "sudo",
}


class HandBuiltError(RuntimeError):
    pass


@dataclass(frozen=True)
class HandBuilt:
    directory: Path  # a temp dir holding everything below
    devices_toml: Path  # a hand-written devices.toml pointing at the device
    ssh_config: Path  # an OpenSSH client config with Host aliases "edge-bastion" and "edge-01"
    known_hosts: Path  # host keys of the bastion and of the target, pinned
    key: Path  # client private key (ed25519, no passphrase) accepted by both hosts
    user: str  # the non-root login user on the target
    sudo_password_env: str  # name of the env var holding the user's sudo (and console) password
    python: str  # the venv python on the target
    console: Path  # serial console pty of the target
    target_address: str
    bastion_address: str
    target_host: str = HOSTNAME  # the ssh_config alias of the target
    bastion_host: str = BASTION_HOSTNAME  # the ssh_config alias of the bastion
    target_port: int = TARGET_PORT
    bastion_port: int = BASTION_PORT
    workdir: str = "~/hil"  # a 64 MiB tmpfs on the target, private to it

    @property
    def password(self) -> str:
        return os.environ[self.sudo_password_env]


# --- the console's login program -------------------------------------------------------------------------

# getty + login, as far as a test can tell: a banner, `edge-01 login: `, `Password: ` without echo,
# `Login incorrect` and a delay on a wrong password. After a logout it starts over, as a respawned getty
# does. Runs as root inside the target's namespaces. Arguments: password file, user, hostname.
LOGIN_PROGRAM = r"""#!/bin/bash
pwfile=$1 user=$2 host=$3
trap 'printf "\n"' INT QUIT   # a handler, not SIG_IGN: the user's shell gets default signals back
while :; do
  stty sane 2>/dev/null
  printf '\nDebian GNU/Linux 12 %s ttyS0\n\n' "$host"
  while :; do
    printf '%s login: ' "$host"
    IFS= read -r name; rc=$?
    if [ $rc -gt 128 ]; then continue; elif [ $rc -ne 0 ]; then exit 0; fi
    name=${name%$'\r'}
    [ -n "$name" ] || continue
    stty -echo
    printf 'Password: '
    IFS= read -r pass; rc=$?
    stty echo
    printf '\n'
    if [ $rc -gt 128 ]; then continue; elif [ $rc -ne 0 ]; then exit 0; fi
    pass=${pass%$'\r'}
    if [ "$name" = "$user" ] && [ "$pass" = "$(cat "$pwfile")" ]; then break; fi
    sleep 1
    printf '\nLogin incorrect\n'
  done
  # The kernel writes to the console whenever it likes, prompt or not, as printk does: the line
  # as it is, wherever the cursor happens to be (no newline of its own in front).
  ( sleep __DELAY__; printf '%s\n' '__KERNEL_MESSAGE__' ) </dev/null &
  runuser -l "$user"
done
"""

BASHRC_ADDITION = r"""
# --- hil handbuilt: the noisy prompt of a real device's console ---
# (window title by OSC, colours, an erase-line code; bash 5.2 adds bracketed paste around it)
PS1='\[\e]0;\u@\h: \w\a\]\[\e[01;32m\]\u@\h\[\e[00m\]:\[\e[01;34m\]\w\[\e[00m\]\[\e[K\]\$ '
"""


# --- small helpers ---------------------------------------------------------------------------------------

def _tool(name: str) -> str:
    found = shutil.which(name, path=PATH)
    if found is None:
        raise HandBuiltError(f"{name} not found (Debian package {TOOLS.get(name, '?')})")
    return found


def _run(args: list[str], *, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": PATH, "LANG": "C.UTF-8"})
    if check and proc.returncode != 0:
        raise HandBuiltError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def ensure_tools() -> list[str]:
    """Installs (apt-get) what is missing; returns the packages it installed. scripts/setup.sh normally did it."""
    missing = sorted({pkg for name, pkg in TOOLS.items() if shutil.which(name, path=PATH) is None})
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True,
                       env=env, capture_output=True)
    return missing


def _our_user() -> pwd.struct_passwd | None:
    """The user, if it exists and is ours; an error if it exists and is not."""
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        return None
    if entry.pw_gecos.split(",")[0] != USER_COMMENT:
        raise HandBuiltError(f"a user {USER!r} exists that this fixture did not create (comment {entry.pw_gecos!r})")
    return entry


def _netns_exists(ns: str) -> bool:
    return Path("/run/netns", ns).exists()


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _netns_pids(ns: str) -> set[int]:
    if not _netns_exists(ns):
        return set()
    return {int(p) for p in _run([_tool("ip"), "netns", "pids", ns], check=False).split() if p.isdigit()}


def _user_pids(uid: int) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if str(uid) in line.split()[1:]:
                    pids.add(int(entry.name))
                break
    return pids


def _recorded_pids() -> set[int]:
    """Pids a run recorded, still alive and still running what it started (pids get reused)."""
    pids = set()
    with contextlib.suppress(FileNotFoundError):
        for line in (STATE_DIR / "pids").read_text().splitlines():
            pid, _, marker = line.partition(" ")
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker and marker in cmdline:
                pids.add(int(pid))
    return pids


def _record_pid(pid: int, marker: str) -> None:
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    with (STATE_DIR / "pids").open("a") as f:
        f.write(f"{pid} {marker}\n")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill(pids: set[int], timeout: float = 5.0) -> None:
    pids.discard(os.getpid())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def teardown(procs: list[subprocess.Popen] | None = None) -> list[str]:
    """Takes down everything a build makes (or a crashed build left); returns what could not be removed."""
    problems: list[str] = []
    procs = procs or []
    user = _our_user()
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    pids = _recorded_pids() | _netns_pids(BASTION_NS) | _netns_pids(EDGE_NS)
    if user is not None:
        pids |= _user_pids(user.pw_uid)
    _kill(pids | {p.pid for p in procs if p.poll() is None})
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            problems.append(f"pid {proc.pid} ({proc.args[0]}) did not exit")
    for ns in (BASTION_NS, EDGE_NS):
        if _netns_exists(ns):
            _run([_tool("ip"), "netns", "delete", ns], check=False)
    for link in (*HOST_VETHS.values(), BRIDGE):
        if _link_exists(link):
            _run([_tool("ip"), "link", "delete", link], check=False)
    if user is not None:
        _run([_tool("userdel"), "--force", "--remove", USER], check=False)
    if (HOME / HOME_MARKER).exists() and not _user_exists():
        shutil.rmtree(HOME, ignore_errors=True)
    SUDOERS.unlink(missing_ok=True)
    shutil.rmtree(VENV, ignore_errors=True)
    (STATE_DIR / "pids").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        STATE_DIR.rmdir()
    for ns in (BASTION_NS, EDGE_NS):
        if _netns_exists(ns):
            problems.append(f"netns {ns} still exists")
    problems += [f"link {link} still exists" for link in (*HOST_VETHS.values(), BRIDGE) if _link_exists(link)]
    if _user_exists():
        problems.append(f"user {USER} still exists")
    if VENV.exists():
        problems.append(f"{VENV} still exists")
    return problems


def _user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True


_building = False  # one build per process: a second one would wait for the lock forever


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One hand-built device at a time on this machine (pytest-xdist workers, two pytest runs).

    The lock is on this source file: a path that is always there, so nothing is left behind for it.
    """
    global _building
    if _building:
        raise HandBuiltError("the hand-built device is already up in this process")
    with open(__file__, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        _building = True
        try:
            yield
        finally:
            _building = False
            fcntl.flock(f, fcntl.LOCK_UN)


def _listening(pid: int, address: str, port: int) -> bool:
    """Whether the network namespace of `pid` has a TCP listener on address:port (read from /proc, no tools)."""
    want = f"{struct.unpack('=I', socket.inet_aton(address))[0]:08X}:{port:04X}"
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f[1] == want and f[3] == "0A" for f in (line.split() for line in lines))


def _wait(what: str, ready, procs: list[subprocess.Popen], logs: list[Path], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            detail = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-2000:]}" for log in logs if log.exists())
            reason = f"{dead[0].args[:3]} exited with {dead[0].returncode}" if dead else "timed out"
            raise HandBuiltError(f"{what}: {reason}\n{detail}")
        time.sleep(0.01)


# --- the pieces ------------------------------------------------------------------------------------------

def _keygen(path: Path, comment: str) -> str:
    _run([_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_suffix(".pub").read_text().strip()


def _make_user(password: str, client_pub: str) -> pwd.struct_passwd:
    _run([_tool("useradd"), "-m", "-s", "/bin/bash", "-c", USER_COMMENT, USER])
    _run([_tool("chpasswd")], input=f"{USER}:{password}\n")
    user = pwd.getpwnam(USER)
    (HOME / HOME_MARKER).touch()
    ssh_dir = HOME / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(client_pub + "\n")
    (ssh_dir / "authorized_keys").chmod(0o600)
    (HOME / "hil").mkdir(mode=0o755)  # the mount point of the target's tmpfs workdir
    with (HOME / ".bashrc").open("a") as f:
        f.write(BASHRC_ADDITION)
    for path in (HOME / HOME_MARKER, ssh_dir, ssh_dir / "authorized_keys", HOME / "hil"):
        os.chown(path, user.pw_uid, user.pw_gid)
    return user


def _write_sudoers(directory: Path) -> None:
    draft = directory / "sudoers-hil-edge"
    draft.write_text(f"# hil handbuilt edge device: everything, with a password\n{USER} ALL=(ALL:ALL) ALL\n")
    draft.chmod(0o440)
    _run([_tool("visudo"), "-cf", str(draft)])
    shutil.copyfile(draft, SUDOERS)
    SUDOERS.chmod(0o440)


def _start_venv() -> subprocess.Popen:
    """The device's own Python: a venv of the system python3 holding copies of numpy and onnxruntime from
    hil's venv (no download; a copy, because the device user cannot read hil's checkout, which may sit in
    a private directory). Started in the background: the slowest part."""
    return subprocess.Popen(["/usr/bin/python3", "-m", "venv", "--without-pip", str(VENV)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={"PATH": PATH, "LANG": "C.UTF-8"})


def _finish_venv(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise HandBuiltError(f"python3 -m venv {VENV}: {out.decode(errors='replace')}")
    host_python = REPO / ".venv" / "bin" / "python"
    packages = Path(_run([str(host_python), "-c", "import site; print(site.getsitepackages()[0])"]).strip())
    site_dirs = sorted(VENV.glob("lib/python3*/site-packages"))
    if not site_dirs:
        raise HandBuiltError(f"no site-packages in {VENV}")
    for name in ("numpy", "numpy.libs", "onnxruntime"):  # all that `import onnxruntime` needs
        if (packages / name).is_dir():
            shutil.copytree(packages / name, site_dirs[0] / name, symlinks=True)
    _run(["chmod", "-R", "a+rX", str(VENV)])


def _make_network() -> None:
    ip = _tool("ip")
    _run([ip, "link", "add", BRIDGE, "type", "bridge"])
    _run([ip, "addr", "add", f"{HOST_ADDRESS}/{PREFIX}", "dev", BRIDGE])
    _run([ip, "link", "set", BRIDGE, "up"])
    for ns, address in ((BASTION_NS, BASTION_ADDRESS), (EDGE_NS, TARGET_ADDRESS)):
        veth = HOST_VETHS[ns]
        _run([ip, "netns", "add", ns])
        _run([ip, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _run([ip, "link", "set", veth, "master", BRIDGE, "up"])
        _run([ip, "neigh", "flush", "to", address, "dev", BRIDGE], check=False)
        # Only the lab subnet is routed: no default route, nothing leaves this machine.
        _run([ip, "-n", ns, "-batch", "-"],
             input=f"link set lo up\naddr add {address}/{PREFIX} dev eth0\nlink set eth0 up\n")
    # The target takes TCP from its bastion only: the host gets there by ProxyJump or not at all.
    rules = (
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A INPUT -i lo -j ACCEPT\n"
        f"-A INPUT -p tcp -s {BASTION_ADDRESS} -j ACCEPT\n"
        f"-A INPUT -p tcp -s {HOST_ADDRESS} -j DROP\n"
        "COMMIT\n"
    )
    _run([ip, "netns", "exec", EDGE_NS, _tool("iptables-restore"), "-w"], input=rules)


def _sshd_config(directory: Path, name: str, address: str, port: int, host_key: Path, extra: str) -> Path:
    config = directory / f"hil5-{name}-sshd_config"
    config.write_text(
        f"""# {name}: written by tests/handbuilt.py
ListenAddress {address}
Port {port}
HostKey {host_key}
PidFile none
AuthorizedKeysFile {HOME}/.ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers {USER}
UsePAM no
StrictModes no
UseDNS no
Subsystem sftp internal-sftp
{extra}"""
    )
    return config


def _start(args: list[str], log: Path, marker: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                close_fds=True, env=env or {"PATH": PATH, "LANG": "C.UTF-8"})
    _record_pid(proc.pid, marker)
    return proc


def _toml(value: str) -> str:
    return json.dumps(value)  # a TOML basic string, for the paths and names written here


def _write_client_files(directory: Path, key: Path, bastion_pub: str, edge_pub: str, console: Path
                        ) -> tuple[Path, Path, Path]:
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(
        f"[{BASTION_ADDRESS}]:{BASTION_PORT} {' '.join(bastion_pub.split()[:2])}\n"
        f"[{TARGET_ADDRESS}]:{TARGET_PORT} {' '.join(edge_pub.split()[:2])}\n"
    )
    ssh_config = directory / "ssh_config"
    ssh_config.write_text(
        f"""# Hand-written, as on a developer's machine: edge-01 sits behind a bastion.
Host {BASTION_HOSTNAME}
    HostName {BASTION_ADDRESS}
    Port {BASTION_PORT}
    User {USER}
    IdentityFile {key}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    StrictHostKeyChecking yes
    # for safety: never leave this machine through another interface
    BindInterface {BRIDGE}

Host {HOSTNAME}
    HostName {TARGET_ADDRESS}
    Port {TARGET_PORT}
    User {USER}
    IdentityFile {key}
    IdentitiesOnly yes
    ProxyJump {BASTION_HOSTNAME}
    UserKnownHostsFile {known_hosts}
    StrictHostKeyChecking yes
"""
    )
    devices_toml = directory / "devices.toml"
    devices_toml.write_text(
        f"""# A real device, written by hand: hil lab did not make it.
[[devices]]
name = "{HOSTNAME}"
tags = ["jetson", "handbuilt"]
workdir = "~/hil"
python = {_toml(str(VENV / "bin" / "python"))}
reboot_command = "true"

[devices.ssh]
host = "{HOSTNAME}"
config_file = {_toml(str(ssh_config))}
known_hosts = {_toml(str(known_hosts))}
connect_timeout = 5

[devices.become]
method = "sudo"
password = "${{{PASSWORD_ENV}}}"

[devices.serial]
port = {_toml(str(console))}
login = "{USER}"
password = "${{{PASSWORD_ENV}}}"
"""
    )
    return devices_toml, ssh_config, known_hosts


def _build(directory: Path, procs: list[subprocess.Popen]) -> HandBuilt:
    ip, unshare = _tool("ip"), _tool("unshare")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    venv_proc = _start_venv()
    procs.append(venv_proc)

    key = directory / "id_ed25519"
    client_pub = _keygen(key, "hil-handbuilt-client")
    bastion_key, edge_key = directory / "bastion_host_ed25519_key", directory / "edge_host_ed25519_key"
    bastion_pub, edge_pub = _keygen(bastion_key, BASTION_HOSTNAME), _keygen(edge_key, HOSTNAME)

    password = "edge-" + secrets.token_urlsafe(12)
    password_file = directory / "console-password"
    password_file.touch(mode=0o600)
    password_file.write_text(password)
    user = _make_user(password, client_pub)
    _write_sudoers(directory)
    _make_network()

    hosts = directory / "edge-hosts"
    hosts.write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n{BASTION_ADDRESS}\t{BASTION_HOSTNAME}\n"
                     "::1\tlocalhost ip6-localhost ip6-loopback\n")
    hosts.chmod(0o644)
    bastion_config = _sshd_config(directory, "bastion", BASTION_ADDRESS, BASTION_PORT, bastion_key,
                                  "AllowTcpForwarding yes\nPermitTTY yes\n")
    edge_config = _sshd_config(directory, "edge", TARGET_ADDRESS, TARGET_PORT, edge_key, "")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    sshd = _tool("sshd")
    bastion_log, edge_log = directory / "hil5-bastion-sshd.log", directory / "hil5-edge-sshd.log"
    # `ip netns exec`, `unshare` and `sh -c 'exec'` all exec: the pid Popen sees is sshd's.
    bastion = _start(
        [ip, "netns", "exec", BASTION_NS, unshare, "--uts", "/bin/sh", "-c",
         'hostname "$1" && exec "$2" -D -f "$3" -E "$4"', "sh", BASTION_HOSTNAME, sshd, str(bastion_config),
         str(bastion_log)],
        directory / "hil5-bastion-boot.log", str(bastion_config))
    procs.append(bastion)
    # The target: its own hostname, its own /etc/hosts (sudo resolves the hostname), a tmpfs ~/hil.
    edge = _start(
        [ip, "netns", "exec", EDGE_NS, unshare, "--mount", "--uts", "--propagation", "private", "/bin/sh", "-c",
         'hostname "$1" && mount --bind "$2" /etc/hosts && '
         'mount -t tmpfs -o "size=$3,mode=0755,uid=$4,gid=$5" hil-edge-01 "$6" && '
         'exec "$7" -D -f "$8" -E "$9"',
         "sh", HOSTNAME, str(hosts), WORKDIR_SIZE, str(user.pw_uid), str(user.pw_gid), str(HOME / "hil"),
         sshd, str(edge_config), str(edge_log)],
        directory / "hil5-edge-boot.log", str(edge_config))
    procs.append(edge)

    console = directory / "console"
    login_program = directory / "hil5-login"
    login_program.write_text(LOGIN_PROGRAM.replace("__DELAY__", f"{KERNEL_MESSAGE_DELAY:g}")
                             .replace("__KERNEL_MESSAGE__", KERNEL_MESSAGE))
    login_program.chmod(0o700)
    devices_toml, ssh_config, known_hosts = _write_client_files(directory, key, bastion_pub, edge_pub, console)

    _wait("the bastion's sshd", lambda: _listening(bastion.pid, BASTION_ADDRESS, BASTION_PORT), [bastion],
          [directory / "hil5-bastion-boot.log", bastion_log])
    _wait("the target's sshd", lambda: _listening(edge.pid, TARGET_ADDRESS, TARGET_PORT), [edge],
          [directory / "hil5-edge-boot.log", edge_log])
    # The serial console, in the target's network, mount and UTS namespaces (entered through its sshd).
    console_log = directory / "hil5-console.log"
    socat = _start(
        [_tool("nsenter"), "-t", str(edge.pid), "-n", "-m", "-u", _tool("socat"), "-d",
         f"pty,link={console},raw,echo=0",
         f"exec:{login_program} {password_file} {USER} {HOSTNAME},pty,stderr,setsid,sigint,sane,ctty"],
        console_log, str(login_program), env={"PATH": PATH, "TERM": "vt220", "LANG": "C.UTF-8"})
    procs.append(socat)
    _wait("the serial console", console.exists, [socat], [console_log])

    _finish_venv(venv_proc)
    os.environ[PASSWORD_ENV] = password
    return HandBuilt(
        directory=directory, devices_toml=devices_toml, ssh_config=ssh_config, known_hosts=known_hosts, key=key,
        user=USER, sudo_password_env=PASSWORD_ENV, python=str(VENV / "bin" / "python"), console=console,
        target_address=TARGET_ADDRESS, bastion_address=BASTION_ADDRESS,
    )


def check_ssh(device: HandBuilt) -> None:
    """One login on the target through the bastion with the real OpenSSH client, or an error saying why."""
    proc = subprocess.run([_tool("ssh"), "-F", str(device.ssh_config), "-o", "BatchMode=yes",
                           "-o", "ConnectTimeout=5", HOSTNAME, "hostname"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or proc.stdout.strip() != HOSTNAME:
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(device.directory.glob("hil5-*.log")))
        raise HandBuiltError(f"ssh {HOSTNAME} hostname: exit {proc.returncode}: {proc.stderr.strip()}\n{logs}")


@contextlib.contextmanager
def build(directory: Path, *, check: bool = True) -> Iterator[HandBuilt]:
    """The hand-built device, up for the `with` block, down after it (also on errors)."""
    if os.geteuid() != 0:
        raise HandBuiltError("building the hand-built device needs root")
    ensure_tools()
    previous = os.environ.get(PASSWORD_ENV)
    with _lock():
        teardown()  # what a crashed run left behind
        procs: list[subprocess.Popen] = []
        try:
            device = _build(directory, procs)
            if check:
                check_ssh(device)
            yield device
        finally:
            problems = teardown(procs)
            if previous is None:
                os.environ.pop(PASSWORD_ENV, None)
            else:
                os.environ[PASSWORD_ENV] = previous
        # Reached only without an error in flight: that one says more than what teardown left.
        if problems:
            raise HandBuiltError("teardown left: " + "; ".join(problems))


@pytest.fixture(scope="session", name="handbuilt")
def handbuilt_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandBuilt]:
    """A real-looking device behind a jump host, for the whole session (see the module docstring)."""
    if os.geteuid() != 0:
        pytest.skip("the hand-built device needs root")
    with build(tmp_path_factory.mktemp("handbuilt")) as device:
        yield device


if __name__ == "__main__":  # a quick look by hand: python tests/handbuilt.py
    import tempfile

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hil5-") as tmp, build(Path(tmp) / "handbuilt") as device:
        print(f"up in {time.monotonic() - started:.2f} s")
        for field, value in vars(device).items():
            print(f"{field:18} {value}")
        print(f"{PASSWORD_ENV:18} {device.password}")
        print(f"try: ssh -F {device.ssh_config} {HOSTNAME}    (Enter here takes it down)")
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            input()
