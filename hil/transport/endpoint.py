"""Where and how to connect: devices.toml's [devices.ssh] merged with the user's ssh_config, as `ssh` would.

Precedence: what devices.toml says explicitly, then the ssh_config entry of the host (or alias),
then defaults (port 22, user root). Jump hosts (`jump` in devices.toml or ProxyJump in
ssh_config) resolve the same way, hop by hop, each with strict host-key checking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import paramiko

from hil.config import SshConfig
from hil.errors import ConfigError

DEFAULT_PORT = 22
DEFAULT_USER = "root"
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts").expanduser()
_HOP = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:\s]+)(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class Endpoint:
    """One SSH hop, fully resolved."""

    alias: str  # as the user wrote it, for messages
    hostname: str
    port: int
    user: str
    key_files: tuple[Path, ...]
    known_hosts: tuple[Path, ...]
    strict: bool
    bind_interface: str | None
    jump: Endpoint | None
    proxy_command: str | None = None  # ssh_config ProxyCommand, tokens (%h, %p, %r) already expanded

    def __str__(self) -> str:
        via = f" via {self.jump}" if self.jump else f" via ProxyCommand {self.proxy_command!r}" \
            if self.proxy_command else ""
        return f"{self.user}@{self.hostname}:{self.port}{via}"


def _lookup(config_file: Path | None, host: str) -> dict[str, object]:
    if config_file is None:
        return {}
    try:
        return dict(paramiko.SSHConfig.from_path(str(config_file)).lookup(host))
    except (OSError, ValueError, paramiko.SSHException) as exc:
        raise ConfigError(f"{config_file}: cannot read this ssh config: {exc}") from None


def _first(*values: object) -> object:
    return next((v for v in values if v is not None), None)


def _hop(text: str, config_file: Path | None, cfg: SshConfig, jump: Endpoint | None) -> Endpoint:
    """A jump hop: '[user@]host[:port]' or an ssh_config alias."""
    match = _HOP.match(text.strip())
    if not match:
        raise ConfigError(f"jump host {text!r} is not of the form [user@]host[:port]")
    host = match.group("host").strip("[]")
    entry = _lookup(config_file, host)
    return _endpoint(
        alias=host, entry=entry, config_file=config_file, jump=jump, strict=cfg.strict_host_key_checking,
        port=int(match.group("port")) if match.group("port") else None, user=match.group("user"),
        # The hop's own IdentityFile if ssh_config names one, else the device's key (labs often share one).
        key=None if entry.get("identityfile") else cfg.key,
        known_hosts=cfg.known_hosts, bind_interface=cfg.bind_interface)


def _endpoint(*, alias: str, entry: dict[str, object], config_file: Path | None, jump: Endpoint | None, strict: bool,
              port: int | None, user: str | None, key: Path | None, known_hosts: Path | None,
              bind_interface: str | None) -> Endpoint:
    identity_files = entry.get("identityfile") or []
    keys = [key] if key else [Path(str(k)).expanduser() for k in identity_files]  # type: ignore[union-attr]
    listed = str(entry.get("userknownhostsfile", "")).split()
    files = [known_hosts] if known_hosts else [Path(p).expanduser() for p in listed]
    strict_entry = str(entry.get("stricthostkeychecking", "")).lower()
    proxy = str(entry["proxycommand"]) if "proxycommand" in entry else None
    if proxy is not None and jump is not None:
        raise ConfigError(f"{config_file}: host {alias} has both ProxyJump and ProxyCommand; OpenSSH uses only "
                          "one of them: keep the one you mean")
    return Endpoint(
        alias=alias,
        hostname=str(entry.get("hostname", alias)),
        port=int(str(_first(port, entry.get("port"), DEFAULT_PORT))),
        user=str(_first(user, entry.get("user"), DEFAULT_USER)),
        key_files=tuple(keys),
        known_hosts=tuple(files) or (DEFAULT_KNOWN_HOSTS,),
        strict=strict and strict_entry not in ("no", "off", "accept-new"),
        bind_interface=bind_interface or (str(entry["bindinterface"]) if "bindinterface" in entry else None),
        jump=jump,
        proxy_command=None if proxy is None or proxy.lower() == "none" else proxy,
    )


def resolve(cfg: SshConfig) -> Endpoint:
    """The device's endpoint, with its chain of jump hosts (first hop innermost in `.jump`)."""
    entry = _lookup(cfg.config_file, cfg.host)
    hops_text = cfg.jump or (str(entry["proxyjump"]) if "proxyjump" in entry else None)
    jump: Endpoint | None = None
    if hops_text and hops_text.lower() != "none":
        for hop in hops_text.split(","):
            jump = _hop(hop, cfg.config_file, cfg, jump)
    return _endpoint(alias=cfg.host, entry=entry, config_file=cfg.config_file, jump=jump,
                     strict=cfg.strict_host_key_checking, port=cfg.port, user=cfg.user, key=cfg.key,
                     known_hosts=cfg.known_hosts, bind_interface=cfg.bind_interface)
