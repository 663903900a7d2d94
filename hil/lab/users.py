"""The login of a non-root emulated device: a user of this machine, its sudo rule and its password.

An emulated device shares this machine's /etc/passwd (it has its own network, mount, UTS and PID
namespaces, not its own users), so its login is a real user here. The lab only ever changes or
removes users whose comment says this lab made them, and sudoers files named after this lab.
"""

from __future__ import annotations

import hmac
import os
import pwd
import secrets
from dataclasses import dataclass
from pathlib import Path

from hil.config import DeviceConfig, LabConfig
from hil.errors import LabError
from hil.lab.console_login import password_hash
from hil.lab.host import find_tool, host_run

SUDOERS_DIR = Path("/etc/sudoers.d")


@dataclass(frozen=True)
class Login:
    name: str
    uid: int
    gid: int


def _prefix(lab: LabConfig) -> str:
    return f"hil lab {lab.name} device "


def comment(lab: LabConfig, device: str) -> str:
    return _prefix(lab) + device


def sudoers_file(lab: LabConfig, device: str) -> Path:
    # sudo skips files in sudoers.d whose names contain a '.', so the device name is made safe.
    return SUDOERS_DIR / f"hil-lab-{lab.name}-{device.replace('.', '_')}"


def _ours(entry: pwd.struct_passwd, lab: LabConfig) -> bool:
    return entry.pw_gecos.startswith(_prefix(lab))


def ensure_login(lab: LabConfig, device: DeviceConfig, home: Path) -> Login | None:
    """The device's login user, made (or brought up to date) with its sudo rule; None for a root device."""
    user = device.login_user
    if user == "root":
        return None
    try:
        entry: pwd.struct_passwd | None = pwd.getpwnam(user)
    except KeyError:
        entry = None
    if entry is not None and not _ours(entry, lab):
        raise LabError(f"device '{device.name}': ssh.user {user!r} already exists on this machine and hil lab "
                       f"'{lab.name}' did not make it: pick another name in devices.toml")
    if entry is None:
        host_run([find_tool("useradd"), "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash",
                  "--comment", comment(lab, device.name), "--user-group", user])
        entry = pwd.getpwnam(user)
    else:
        host_run([find_tool("usermod"), "--home", str(home), "--comment", comment(lab, device.name), user])
    _set_password(device, user)
    _write_sudoers(lab, device, user)
    return Login(user, entry.pw_uid, entry.pw_gid)


def _set_password(device: DeviceConfig, user: str) -> None:
    """The sudo password where devices.toml gives one; else a password nobody knows.

    `*` and not `!`: sshd without PAM refuses a key login to an account whose password is locked.
    """
    password = device.become.password
    if password is not None:
        host_run([find_tool("chpasswd")], input=f"{user}:{password.reveal()}\n")
    else:
        host_run([find_tool("usermod"), "--password", "*", user])


def _write_sudoers(lab: LabConfig, device: DeviceConfig, user: str) -> None:
    path = sudoers_file(lab, device.name)
    if device.become.method == "none":
        path.unlink(missing_ok=True)
        return
    rule = "ALL=(ALL:ALL) ALL" if device.become.password is not None else "ALL=(ALL:ALL) NOPASSWD: ALL"
    text = f"# written by hil lab {lab.name} for emulated device {device.name}\n{user} {rule}\n"
    draft = path.with_name(f".{path.name}.new")  # sudo ignores names with a dot: safe while unchecked
    SUDOERS_DIR.mkdir(mode=0o750, parents=True, exist_ok=True)
    draft.write_text(text)
    draft.chmod(0o440)
    try:
        host_run([find_tool("visudo"), "-cqf", str(draft)])
    except LabError:
        draft.unlink(missing_ok=True)
        raise
    os.replace(draft, path)


def ensure_console_password(lab: LabConfig, device: DeviceConfig) -> Path | None:
    """What the console's login checks: a salted hash of its password (root only), as /etc/shadow holds.

    A password the lab made up itself (devices.toml gives none) is kept beside it, readable by root
    only, for hil to log in with. Returns the hash file, or None for a console without a login.
    """
    if device.serial is None or device.serial.password is None:
        return None
    secret = device.serial.password
    made_up = lab.console_password_path(device.name)
    if secret.path is not None:
        if not made_up.is_file():
            _write_private(made_up, "hil-" + secrets.token_urlsafe(12))
        value = made_up.read_text().strip()
    else:
        value = secret.reveal()
    salt = secrets.token_hex(16)
    shadow = lab.dir / device.name / "console-shadow"
    _write_private(shadow, f"{salt}${password_hash(salt, value)}")
    return shadow


def passwords_digest(lab: LabConfig, device: DeviceConfig) -> str:
    """Changes when the sudo or console password devices.toml gives changes (repr() hides secrets), so the
    device is rebuilt with the new one; keyed with the lab's own secret, so the digest tells nothing."""
    given = [s.reveal() for s in (device.become.password, device.serial.password if device.serial else None)
             if s is not None and s.path is None]
    if not given or not lab.client_key.is_file():
        return ""
    return hmac.new(lab.client_key.read_bytes(), "\0".join(given).encode(), "sha256").hexdigest()


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text + "\n")


def remove_login(lab: LabConfig, device: str) -> None:
    """The user and sudo rule of one device, if this lab made them."""
    sudoers_file(lab, device).unlink(missing_ok=True)
    for entry in pwd.getpwall():
        if entry.pw_gecos == comment(lab, device):
            host_run([find_tool("userdel"), "--force", entry.pw_name], check=False)


def remove_all(lab: LabConfig) -> None:
    """Every user and sudo rule this lab made, for devices that are gone from devices.toml too."""
    for path in SUDOERS_DIR.glob(f"hil-lab-{lab.name}-*"):
        path.unlink(missing_ok=True)
    for entry in pwd.getpwall():
        if _ours(entry, lab):
            host_run([find_tool("userdel"), "--force", entry.pw_name], check=False)


def stale_devices(lab: LabConfig, wanted: set[str]) -> list[str]:
    """Devices this lab made users for that the inventory no longer has."""
    return sorted({e.pw_gecos.removeprefix(_prefix(lab)) for e in pwd.getpwall() if _ours(e, lab)} - wanted)
