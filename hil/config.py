"""devices.toml -> a typed Inventory. Every error names the file, the device and the key."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.errors import ConfigError

DEFAULT_STATE_DIR = Path("/run/hil")
DEFAULT_WORKDIR = "/var/lib/hil"
DEVICES_ENV = "HIL_DEVICES"  # the devices file when no --devices / --hil-devices is given
DEFAULT_SSH_CONFIG = Path("~/.ssh/config").expanduser()
EMULATED_HOST_OFFSET = 10  # emulated devices get subnet addresses .10, .11, ...
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_TAG = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WORKDIR = re.compile(r"~?(/[A-Za-z0-9._-]+)+")
_SYSTEM_DIRS = {"/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/mnt", "/opt", "/proc", "/root",
                "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/var",
                "/var/lib", "/var/log", "/var/tmp"}
_LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


@dataclass(frozen=True)
class Secret:
    """A value from `${ENV_VAR}` that must never reach a log or a report."""

    value: str = field(repr=False)
    source: str = ""
    # A file holding the value instead (a password the emulated lab made up), read when it is needed.
    path: Path | None = None

    def reveal(self) -> str:
        if self.path is None:
            return self.value
        try:
            return self.path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{self.source}: cannot read {self.path} ({exc.strerror}): is the lab up? "
                              "(hil lab up)") from None

    def __str__(self) -> str:
        return f"<secret from {self.source}>" if self.source else "<secret>"

    def __repr__(self) -> str:
        return f"Secret({self.source or '***'})"


@dataclass(frozen=True)
class SshConfig:
    host: str  # an address, a DNS name, or a Host alias of the ssh_config file
    port: int | None = None  # None: from ssh_config, else 22
    user: str | None = None  # None: from ssh_config, else root
    key: Path | None = None
    password: Secret | None = None
    known_hosts: Path | None = None
    strict_host_key_checking: bool = True
    connect_timeout: float = 5.0
    keepalive: float = 5.0
    # How long a dropped connection may take to come back before commands fail.
    reconnect_timeout: float = 15.0
    # Reach the device only through this host interface (SO_BINDTODEVICE), never any other route.
    bind_interface: str | None = None
    # The OpenSSH client config to honour (Host aliases, HostName, Port, User, IdentityFile, ProxyJump).
    config_file: Path | None = None
    # Jump host(s) like ProxyJump: "[user@]host[:port]" or an ssh_config alias, comma-separated.
    jump: str | None = None


@dataclass(frozen=True)
class BecomeConfig:
    """How hil becomes root on the device for the operations that need it."""

    method: str = "sudo"  # "sudo" or "none"
    password: Secret | None = None


@dataclass(frozen=True)
class SerialConfig:
    port: str
    baud: int = 115200
    login: str | None = None
    password: Secret | None = None
    prompt: str | None = None  # a regex that ends the device's shell prompt
    timeout: float = 10.0  # for syncing to the shell and logging in


@dataclass(frozen=True)
class Resources:
    """Limits of an emulated device."""

    cpus: float
    memory_bytes: int
    disk_bytes: int


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    tags: tuple[str, ...]
    ssh: SshConfig
    serial: SerialConfig | None
    workdir: str | None  # None: /var/lib/hil for root, ~/hil for another user; "~/x" is under the login's home
    emulated: bool = False
    resources: Resources | None = None
    python: str = "python3"
    become: BecomeConfig = field(default_factory=BecomeConfig)
    reboot_command: str = "reboot"
    reboot_timeout: float = 300.0
    # Clock faults may set the system clock (root) where sessions have no libfaketime; opt-in, because it
    # moves the clock for everything on the device.
    clock_set: bool = False
    # Emulated devices only: the venv the lab makes for `python` (numpy and onnxruntime in it), or None.
    venv: str | None = None

    @property
    def login_user(self) -> str:
        """The user hil logs in as (ssh_config may still change it for a real device)."""
        return self.ssh.user or "root"


@dataclass(frozen=True)
class LabConfig:
    name: str = "hil"
    subnet: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network("10.77.0.0/24"))
    state_dir: Path = DEFAULT_STATE_DIR

    @property
    def dir(self) -> Path:
        """Where the lab keeps keys, configs and pids for this lab."""
        return self.state_dir / self.name

    @property
    def bridge(self) -> str:
        """The host interface that owns the lab subnet."""
        return f"{self.name}-br"

    @property
    def host_address(self) -> ipaddress.IPv4Address:
        """The host's own address on the lab bridge."""
        return self.subnet.network_address + 1

    @property
    def client_key(self) -> Path:
        return self.dir / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def reboot_command(self) -> str:
        """What `reboot` means on an emulated device: restart its processes, never the host."""
        return str(self.dir / "bin" / "hil-reboot")

    def console_path(self, device: str) -> Path:
        return self.dir / device / "console"

    def console_password_path(self, device: str) -> Path:
        """The console password the lab made up for a non-root device devices.toml gives none for."""
        return self.dir / device / "console-password"


@dataclass(frozen=True)
class DeployConfig:
    """How artifacts are trusted and kept, for every device of this devices.toml."""

    trusted_keys: tuple[Path, ...] = ()
    keep_versions: int = 3
    free_space_margin_bytes: int = 8 * 1024 * 1024
    artifacts: tuple[str, ...] = ()  # globs of artifact directories, relative to devices.toml


def _glob(base: Path, pattern: str) -> list[Path]:
    """`pattern` relative to `base`, or as it is when absolute (Path.glob takes relative patterns only)."""
    path = Path(pattern)
    if path.is_absolute():
        return list(Path(path.anchor).glob(str(path.relative_to(path.anchor))))
    return list(base.glob(pattern))


@dataclass(frozen=True)
class Inventory:
    path: Path
    lab: LabConfig
    devices: tuple[DeviceConfig, ...]
    deploy: DeployConfig = field(default_factory=DeployConfig)

    def artifact_dirs(self) -> list[Path]:
        """The artifact directories named by [deploy] artifacts, in a stable order."""
        base = self.path.parent
        found: dict[Path, None] = {}
        for pattern in self.deploy.artifacts:
            for match in sorted(_glob(base, pattern)):
                if (match / "manifest.toml").is_file():
                    found[match.resolve()] = None  # one artifact named by two patterns is one
        return list(found)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.devices]

    @property
    def tags(self) -> list[str]:
        return sorted({t for d in self.devices for t in d.tags})

    def get(self, name: str) -> DeviceConfig:
        for device in self.devices:
            if device.name == name:
                return device
        raise ConfigError(f"{self.path}: no device named '{name}' (known: {', '.join(self.names) or 'none'})")

    def select(self, names: list[str] | None) -> list[DeviceConfig]:
        """The devices named (in the order given), or all when `names` is empty."""
        return [self.get(n) for n in names] if names else list(self.devices)

    @property
    def emulated(self) -> list[DeviceConfig]:
        return [d for d in self.devices if d.emulated]


# ---------------------------------------------------------------------------------------------
# Loading and validation


class _Ctx:
    """Where a value came from, so every error can name the file, the device and the key."""

    def __init__(self, path: Path, device: str | None = None, table: str | None = None) -> None:
        self.path = path
        self.device = device
        self.table = table

    def at(self, table: str) -> _Ctx:
        return _Ctx(self.path, self.device, table)

    def key(self, key: str) -> str:
        return f"{self.table}.{key}" if self.table else key

    def error(self, key: str | None, message: str) -> ConfigError:
        where = str(self.path)
        if self.device is not None:
            where += f": device '{self.device}'"
        if key is not None:
            where += f": key '{self.key(key)}'"
        return ConfigError(f"{where}: {message}")


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _check_keys(ctx: _Ctx, table: dict[str, Any], allowed: set[str], required: set[str] = frozenset()) -> None:
    for key in table:
        if key not in allowed:
            hint = f"allowed: {', '.join(sorted(allowed))}"
            raise ctx.error(key, f"unknown key ({hint})")
    for key in sorted(required):
        if key not in table:
            raise ctx.error(key, "is required")


def _str(ctx: _Ctx, table: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = table.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ctx.error(key, f"must be a string, got {_type_name(value)} {value!r}")
    if not value.strip():
        raise ctx.error(key, "must not be empty (leave the key out to get the default)")
    expanded = _expand_env(ctx, key, value)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in expanded):
        raise ctx.error(key, "must not contain control characters (newline, tab, NUL...)")
    return expanded


def _secret(ctx: _Ctx, table: dict[str, Any], key: str) -> Secret | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not _ENV_REF.fullmatch(value):
        # Refuse literal secrets: devices.toml is committed and read by everyone.
        raise ctx.error(key, 'must be a reference to an environment variable like "${HIL_PASSWORD}", '
                             "never the secret itself")
    var = _ENV_REF.fullmatch(value).group(1)  # type: ignore[union-attr]
    return Secret(_expand_env(ctx, key, value), source=f"${{{var}}}")


def _expand_env(ctx: _Ctx, key: str, value: str) -> str:
    def replace(match: re.Match[str]) -> str:
        var = match.group(1)
        if var not in os.environ:
            raise ctx.error(key, f"refers to ${{{var}}}, which is not set: export {var} before running hil")
        return os.environ[var]

    return _ENV_REF.sub(replace, value)


def _number(ctx: _Ctx, table: dict[str, Any], key: str, default: float, *, positive: bool = True) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.error(key, f"must be a number, got {_type_name(value)} {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ctx.error(key, f"must be a finite number, got {value}")
    if positive and not number > 0:
        raise ctx.error(key, f"must be greater than 0, got {value}")
    return number


def _int(ctx: _Ctx, table: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.error(key, f"must be an integer, got {_type_name(value)} {value!r}")
    if not lo <= value <= hi:
        raise ctx.error(key, f"must be between {lo} and {hi}, got {value}")
    return value


def _bool(ctx: _Ctx, table: dict[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ctx.error(key, f"must be true or false, got {_type_name(value)} {value!r}")
    return value


def _table(ctx: _Ctx, table: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ctx.error(key, f"must be a table, got {_type_name(value)} {value!r}")
    return value


def parse_size(text: str) -> int:
    """'512MiB' -> bytes. Raises ValueError on anything else."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(text)
    unit = (match.group(2) or "").upper().rstrip("B").rstrip("I")
    size = float(match.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(size):
        raise ValueError(text)
    return int(size)


def _size(ctx: _Ctx, table: dict[str, Any], key: str) -> int:
    value = table.get(key)
    if not isinstance(value, str):
        raise ctx.error(key, f'must be a size string like "512MiB", got {_type_name(value)} {value!r}')
    try:
        size = parse_size(value)
    except ValueError:
        raise ctx.error(key, f'must be a size like "512MiB" or "1GiB", got {value!r}') from None
    if size < 1024 * 1024:
        raise ctx.error(key, f"must be at least 1MiB, got {value!r}")
    return size


def _file(ctx: _Ctx, table: dict[str, Any], key: str, base: Path) -> Path | None:
    value = _str(ctx, table, key)
    if value is None:
        return None
    try:
        path = Path(value).expanduser()
    except (ValueError, RuntimeError) as exc:  # a NUL byte in "~user", no home directory
        raise ctx.error(key, f"is not a usable path: {exc}") from None
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise ctx.error(key, f"file {path} does not exist")
    return path


def _load_lab(ctx: _Ctx, raw: Any) -> LabConfig:
    if raw is None:
        return LabConfig()
    ctx = ctx.at("lab")
    if not isinstance(raw, dict):
        raise ctx.error(None, f"[lab] must be a table, got {_type_name(raw)}")
    _check_keys(ctx, raw, {"name", "subnet", "state_dir"})
    name = _str(ctx, raw, "name", "hil") or "hil"
    if not _LAB_NAME.fullmatch(name):
        raise ctx.error("name", f"must be 1-8 lowercase letters or digits starting with a letter, got {name!r}")
    subnet_text = _str(ctx, raw, "subnet", "10.77.0.0/24") or ""
    try:
        subnet = ipaddress.IPv4Network(subnet_text)
    except ValueError as exc:
        raise ctx.error("subnet", f"is not an IPv4 network like 10.77.0.0/24: {exc}") from None
    if subnet.prefixlen > 28:
        raise ctx.error("subnet", f"is too small for a lab: {subnet} (use /28 or larger)")
    if not subnet.is_private or subnet.is_loopback:
        raise ctx.error("subnet", f"must be a private range that nothing else uses, got {subnet}")
    state_dir = Path(_str(ctx, raw, "state_dir", str(DEFAULT_STATE_DIR)) or DEFAULT_STATE_DIR)
    if not state_dir.is_absolute():
        raise ctx.error("state_dir", f"must be an absolute path, got {state_dir}")
    return LabConfig(name=name, subnet=subnet, state_dir=state_dir)


def _load_deploy(ctx: _Ctx, raw: Any) -> DeployConfig:
    if raw is None:
        return DeployConfig()
    ctx = ctx.at("deploy")
    if not isinstance(raw, dict):
        raise ctx.error(None, f"[deploy] must be a table, got {_type_name(raw)}")
    _check_keys(ctx, raw, {"trusted_keys", "keep_versions", "free_space_margin", "artifacts"})
    lists: dict[str, list[str]] = {}
    for key in ("trusted_keys", "artifacts"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ctx.error(key, f"must be an array of strings, got {value!r}")
        lists[key] = value
    keys = tuple(p for p in (_file(ctx, {"trusted_keys": v}, "trusted_keys", ctx.path.parent)
                             for v in lists["trusted_keys"]) if p is not None)
    margin = _size(ctx, {"free_space_margin": raw.get("free_space_margin", "8MiB")}, "free_space_margin")
    return DeployConfig(trusted_keys=keys, keep_versions=_int(ctx, raw, "keep_versions", 3, 2, 100),
                        free_space_margin_bytes=margin, artifacts=tuple(lists["artifacts"]))


_DEVICE_KEYS = {"name", "tags", "emulated", "workdir", "python", "ssh", "serial", "cpus", "memory", "disk",
                "become", "reboot_command", "reboot_timeout", "clock_set"}
_SSH_KEYS = {"host", "port", "user", "key", "password", "known_hosts", "strict_host_key_checking",
             "connect_timeout", "keepalive", "reconnect_timeout", "bind_interface", "config_file", "jump"}
_BECOME_KEYS = {"method", "password"}
_EMULATED_SSH_KEYS = {"user", "connect_timeout", "keepalive", "reconnect_timeout"}
# A login the lab creates on this machine for a non-root emulated device (useradd's rules, kept short).
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
_VENV_PYTHON = re.compile(r"^(/[A-Za-z0-9._-]+)+/bin/python(3(\.\d+)?)?$")
LAB_VENV_ROOT = Path("/var/lib/hil-lab")  # where a non-root emulated device's venv goes by default
_SERIAL_KEYS = {"port", "baud", "login", "password", "prompt", "timeout"}


def _load_ssh(ctx: _Ctx, raw: dict[str, Any], base: Path, emulated_host: str | None, lab: LabConfig) -> SshConfig:
    ctx = ctx.at("ssh")
    timeouts = {
        "connect_timeout": _number(ctx, raw, "connect_timeout", 5.0),
        "keepalive": _number(ctx, raw, "keepalive", 5.0),
        "reconnect_timeout": _number(ctx, raw, "reconnect_timeout", 15.0),
    }
    if emulated_host is not None:
        allowed = ", ".join(sorted(_EMULATED_SSH_KEYS))
        for key in raw:
            if key not in _SSH_KEYS:
                raise ctx.error(key, f"unknown key (an emulated device allows: {allowed})")
            if key not in _EMULATED_SSH_KEYS:
                raise ctx.error(key, f"is set by the emulated lab; only {allowed} may be given for an emulated device")
        user = _str(ctx, raw, "user", "root") or "root"
        if not _USER.fullmatch(user):
            raise ctx.error("user", "must be a login name the lab can create (lowercase letters, digits, '_', '-', "
                                    f"at most 31, starting with a letter or '_'), got {user!r}")
        # Bound to the lab bridge: if the lab is down, traffic fails here instead of taking the default route.
        return SshConfig(host=emulated_host, port=22, user=user, key=lab.client_key, known_hosts=lab.known_hosts,
                         bind_interface=lab.bridge, **timeouts)
    _check_keys(ctx, raw, _SSH_KEYS, {"host"})
    strict = _bool(ctx, raw, "strict_host_key_checking", True)
    known_hosts = _file(ctx, raw, "known_hosts", base)
    config_file = _file(ctx, raw, "config_file", base)
    if config_file is None and "config_file" not in raw and DEFAULT_SSH_CONFIG.is_file():
        config_file = DEFAULT_SSH_CONFIG  # honour the user's ssh config, as `ssh` does
    if known_hosts is None and strict and config_file is None:
        default = Path("~/.ssh/known_hosts").expanduser()
        if not default.is_file():
            raise ctx.error("known_hosts", f"is not set and {default} does not exist: pin the device's host key "
                                           "(ssh-keyscan HOST >> known_hosts) and point known_hosts at it")
        known_hosts = default
    return SshConfig(
        host=_str(ctx, raw, "host") or "",
        port=_int(ctx, raw, "port", 22, 1, 65535) if "port" in raw else None,
        user=_str(ctx, raw, "user"),
        key=_file(ctx, raw, "key", base),
        password=_secret(ctx, raw, "password"),
        known_hosts=known_hosts,
        strict_host_key_checking=strict,
        bind_interface=_str(ctx, raw, "bind_interface"),
        config_file=config_file,
        jump=_str(ctx, raw, "jump"),
        **timeouts,
    )


def _load_become(ctx: _Ctx, raw: dict[str, Any]) -> BecomeConfig:
    ctx = ctx.at("become")
    _check_keys(ctx, raw, _BECOME_KEYS)
    method = _str(ctx, raw, "method", "sudo") or "sudo"
    if method not in ("sudo", "none"):
        raise ctx.error("method", f'must be "sudo" or "none", got {method!r}')
    return BecomeConfig(method=method, password=_secret(ctx, raw, "password"))


def _load_serial(ctx: _Ctx, raw: dict[str, Any], base: Path, emulated_port: Path | None) -> SerialConfig:
    ctx = ctx.at("serial")
    _check_keys(ctx, raw, _SERIAL_KEYS, set() if emulated_port else {"port"})
    if emulated_port is not None and "port" in raw:
        raise ctx.error("port", "is set by the emulated lab (its console pty); remove it")
    prompt = _str(ctx, raw, "prompt")
    if prompt is not None:
        try:
            re.compile(prompt)
        except (re.error, RecursionError, OverflowError) as exc:
            raise ctx.error("prompt", f"is not a valid regular expression: {exc}") from None
    port = str(emulated_port) if emulated_port is not None else _str(ctx, raw, "port") or ""
    if emulated_port is None and "://" not in port and not port.startswith("/"):
        port = str(base / port)  # relative to devices.toml, like ssh.key
    if emulated_port is None and not (port.startswith(("rfc2217://", "socket://")) or Path(port).exists()):
        raise ctx.error("port", f"serial port {port} does not exist: check the cable and the device path "
                                "(ls /dev/serial/by-id/)")
    return SerialConfig(
        port=port,
        baud=_int(ctx, raw, "baud", 115200, 50, 4_000_000),
        login=_str(ctx, raw, "login"),
        password=_secret(ctx, raw, "password"),
        prompt=prompt,
        timeout=_number(ctx, raw, "timeout", 10.0),
    )


def _emulated_console(ctx: _Ctx, serial: SerialConfig, ssh: SshConfig, become: BecomeConfig, lab: LabConfig,
                      name: str) -> SerialConfig:
    """A non-root emulated device's console asks `login:` and `Password:`, as a getty does, and logs in as
    its ssh user; a root one is a bare root shell. Without a password of the user's, the lab makes one up."""
    if ssh.user == "root":
        for key in ("login", "password"):
            if getattr(serial, key) is not None:
                raise ctx.at("serial").error(key, "is for a non-root emulated device (set ssh.user); a root "
                                                  "device's console is a root shell without a login")
        return serial
    if serial.login not in (None, ssh.user):
        raise ctx.at("serial").error("login", f"must be the device's ssh.user {ssh.user!r} (the one login the "
                                              f"lab makes), got {serial.login!r}")
    password = serial.password or become.password or Secret(
        "", source=f"the password the lab made for '{name}'", path=lab.console_password_path(name))
    return SerialConfig(port=serial.port, baud=serial.baud, login=ssh.user, password=password,
                        prompt=serial.prompt, timeout=serial.timeout)


def _emulated_venv(ctx: _Ctx, python: str | None, ssh: SshConfig, lab: LabConfig,
                   name: str) -> tuple[str | None, str]:
    """(the venv the lab makes, the interpreter) of an emulated device: the venv `python` names, or for a
    non-root device one of its own (the lab's interpreter may sit where that user cannot go)."""
    if python is not None:
        venv = python.rsplit("/bin/", 1)[0]
        if not _VENV_PYTHON.fullmatch(python) or venv in _SYSTEM_DIRS:
            raise ctx.error("python", "of an emulated device must be the interpreter of a venv the lab makes, "
                                      f"like \"/opt/venvs/ort/bin/python\" (not in a system directory), got {python!r}")
        return venv, python
    if ssh.user == "root":
        return None, "python3"  # the lab's own interpreter, through a wrapper on the device's PATH
    venv = str(LAB_VENV_ROOT / lab.name / name / "venv")
    return venv, f"{venv}/bin/python"


def _load_device(ctx: _Ctx, raw: Any, index: int, emulated_index: int, lab: LabConfig) -> DeviceConfig:
    if not isinstance(raw, dict):
        raise ctx.error(None, f"[[devices]] entry {index + 1} must be a table, got {_type_name(raw)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _Ctx(ctx.path).error(
            f"devices[{index}].name",
            f"every device needs a name of letters, digits, '.', '_' or '-' (max 63), got {name!r}")
    ctx = _Ctx(ctx.path, name)
    _check_keys(ctx, raw, _DEVICE_KEYS)
    tags_raw = raw.get("tags", [])
    if not isinstance(tags_raw, list) or not all(isinstance(t, str) for t in tags_raw):
        raise ctx.error("tags", f"must be an array of strings, got {tags_raw!r}")
    for tag in tags_raw:
        if not _TAG.fullmatch(tag):
            raise ctx.error("tags", f"tag {tag!r} is not usable as a pytest marker (letters, digits, '_')")
    emulated = _bool(ctx, raw, "emulated", False)
    if "emulated" in tags_raw and not emulated:
        # Results from emulated devices must never pass for real-hardware results.
        raise ctx.error("tags", "the tag 'emulated' is reserved for emulated devices (emulated = true)")
    tags = tuple(dict.fromkeys([*tags_raw, *(["emulated"] if emulated else [])]))
    base = ctx.path.parent

    resources = None
    if emulated:
        host_index = EMULATED_HOST_OFFSET + emulated_index
        if host_index >= lab.subnet.num_addresses - 1:
            raise ctx.error(None, f"too many emulated devices for lab subnet {lab.subnet}")
        emulated_host = str(lab.subnet.network_address + host_index)
        resources = Resources(
            cpus=_number(ctx, raw, "cpus", 1.0),
            memory_bytes=_size(ctx, {"memory": raw.get("memory", "512MiB")}, "memory"),
            disk_bytes=_size(ctx, {"disk": raw.get("disk", "256MiB")}, "disk"),
        )
    else:
        emulated_host = None
        for key in ("cpus", "memory", "disk"):
            if key in raw:
                raise ctx.error(key, "is a resource limit of emulated devices; set emulated = true or remove it")
        if "ssh" not in raw:
            raise ctx.error("ssh", "is required for a real device ([devices.ssh] with at least host)")

    ssh = _load_ssh(ctx, _table(ctx, raw, "ssh") or {}, base, emulated_host, lab)
    become = _load_become(ctx, _table(ctx, raw, "become") or {})
    serial_raw = raw.get("serial")
    serial = None
    if emulated and serial_raw is not False:
        if serial_raw is not None and not isinstance(serial_raw, dict):
            raise ctx.error("serial", f"must be a table or false for an emulated device, got {serial_raw!r}")
        serial = _emulated_console(ctx, _load_serial(ctx, serial_raw or {}, base, lab.console_path(name)), ssh,
                                   become, lab, name)
    elif not emulated and serial_raw is not None:
        serial = _load_serial(ctx, _table(ctx, raw, "serial") or {}, base, None)
    python = _str(ctx, raw, "python")
    venv, python = _emulated_venv(ctx, python, ssh, lab, name) if emulated else (None, python or "python3")

    workdir = _str(ctx, raw, "workdir", DEFAULT_WORKDIR if emulated else None)
    if workdir is not None:
        workdir = workdir.rstrip("/")
        if (not _WORKDIR.fullmatch(workdir) or ".." in workdir.split("/") or workdir in _SYSTEM_DIRS
                or (emulated and workdir.startswith("~"))):
            raise ctx.error("workdir", "must be an absolute path (or ~/path on a real device) of a directory "
                                       "hil owns (letters, digits, '._-/'; not a system directory), "
                                       f"got {workdir or '/'!r}")
    reboot_default = lab.reboot_command if emulated else "reboot"
    return DeviceConfig(
        name=name,
        tags=tags,
        ssh=ssh,
        serial=serial,
        workdir=workdir,
        emulated=emulated,
        resources=resources,
        python=python,
        become=become,
        venv=venv,
        reboot_command=_str(ctx, raw, "reboot_command", reboot_default) or reboot_default,
        reboot_timeout=_number(ctx, raw, "reboot_timeout", 300.0),
        clock_set=_bool(ctx, raw, "clock_set", False),
    )


def load_inventory(path: Path | str, *, require_devices: bool = True) -> Inventory:
    """Read and validate devices.toml. Raises ConfigError with a message a user can act on.

    A file without a device is refused (a run on it would validate nothing and look like success), unless
    `require_devices` is False: for what reads only [deploy] (`hil artifact verify`'s trusted keys).
    """
    path = Path(path)
    ctx = _Ctx(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file: create it, or point hil at yours "
                          f"(pytest --hil-devices PATH, hil --devices PATH, or ${DEVICES_ENV} for both)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib puts "(at line L, column C)" into the message; keep it, it is the useful part.
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits, arrays nested too deep
        raise ConfigError(f"{path}: not valid TOML: {type(exc).__name__}: {str(exc)[:200]}") from None
    _check_keys(ctx, data, {"lab", "devices", "deploy"})
    lab = _load_lab(ctx, data.get("lab"))
    deploy = _load_deploy(ctx, data.get("deploy"))
    raw_devices = data.get("devices", [])
    if not isinstance(raw_devices, list):
        raise ctx.error("devices", "must be an array of tables ([[devices]])")
    devices: list[DeviceConfig] = []
    emulated_count = 0
    for index, raw in enumerate(raw_devices):
        device = _load_device(ctx, raw, index, emulated_count, lab)
        if any(d.name == device.name for d in devices):
            raise _Ctx(path, device.name).error("name", "is used by two devices; names must be unique")
        if device.emulated and device.ssh.user != "root":
            twin = next((d.name for d in devices if d.emulated and d.ssh.user == device.ssh.user), None)
            if twin is not None:
                raise _Ctx(path, device.name).error("ssh.user", f"{device.ssh.user!r} is already the login of "
                                                    f"emulated device '{twin}'; each needs a user of its own")
        emulated_count += device.emulated
        devices.append(device)
    if require_devices and not devices:
        raise ConfigError(f"{path}: no devices: add at least one [[devices]] table (see docs/devices-toml.md); "
                          "a run on an inventory without devices would validate nothing")
    return Inventory(path=path, lab=lab, devices=tuple(devices), deploy=deploy)
