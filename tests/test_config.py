"""Unit tests for hil/config.py: the devices.toml loader."""

from __future__ import annotations

import ipaddress
import math
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hil.config import (
    _DEVICE_KEYS,
    _SERIAL_KEYS,
    _SSH_KEYS,
    Inventory,
    Secret,
    load_inventory,
    parse_size,
)
from hil.errors import ConfigError, HilError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOML = REPO / "devices.toml"
SECRET_VALUE = "hunter2-Sup3r-s3cret"
MiB = 1024**2
GiB = 1024**3


# ---------------------------------------------------------------------------------------------
# Helpers


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Inventory:
    return load_inventory(write(tmp_path, text))


def error(tmp_path: Path, text: str) -> str:
    """The message of the one ConfigError that loading `text` raises."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


def assert_names(message: str, device: str | None, key: str | None) -> None:
    if device is not None:
        assert f"device '{device}'" in message, message
    if key is not None:
        assert f"key '{key}'" in message, message


@pytest.fixture
def lab_files(tmp_path: Path) -> Path:
    """A key and a known_hosts file next to devices.toml, for real devices."""
    (tmp_path / "id_ed25519").write_text("not really a key\n")
    (tmp_path / "known_hosts").write_text("orin-01.lab ssh-ed25519 AAAA\n")
    (tmp_path / "ttyUSB0").write_text("")  # stands in for a serial device node
    return tmp_path


EMULATED = """
[[devices]]
name = "emu"
emulated = true
"""

REAL = """
[[devices]]
name = "orin-01"
tags = ["jetson"]
[devices.ssh]
host = "orin-01.lab"
known_hosts = "known_hosts"
"""


def real(ssh: str = "", serial: str | None = None, device: str = "") -> str:
    """A real device with extra lines in its table, its [devices.ssh] and (if given) [devices.serial]."""
    text = f"""
[[devices]]
name = "orin-01"
tags = ["jetson"]
{device}
[devices.ssh]
host = "orin-01.lab"
known_hosts = "known_hosts"
{ssh}
"""
    if serial is not None:
        text += f"[devices.serial]\n{serial}\n"
    return text


def emulated(extra: str = "", name: str = "emu") -> str:
    return f'\n[[devices]]\nname = "{name}"\nemulated = true\n{extra}\n'


# ---------------------------------------------------------------------------------------------
# The default devices.toml


def test_default_inventory_loads() -> None:
    inventory = load_inventory(DEFAULT_TOML)
    assert inventory.path == DEFAULT_TOML
    assert len(inventory.devices) == 2
    assert all(d.emulated for d in inventory.devices)
    assert inventory.emulated == list(inventory.devices)

    jetson = [d for d in inventory.devices if "jetson" in d.tags]
    rpi = [d for d in inventory.devices if "rpi" in d.tags]
    assert len(jetson) == 1 and len(rpi) == 1
    assert jetson[0] is not rpi[0]
    for device in inventory.devices:
        assert "emulated" in device.tags
        assert device.tags.count("emulated") == 1
    assert inventory.tags == sorted({"emulated", "jetson", "rpi"})

    lab = inventory.lab
    addresses = [ipaddress.IPv4Address(d.ssh.host) for d in inventory.devices]
    assert len(set(addresses)) == 2
    for address in addresses:
        assert address in lab.subnet
        assert address not in (lab.subnet.network_address, lab.subnet.broadcast_address, lab.host_address)
    assert lab.subnet.is_private

    profiles = [d.resources for d in inventory.devices]
    assert all(p is not None for p in profiles)
    assert profiles[0] != profiles[1]
    for profile in profiles:
        assert profile.cpus > 0
        assert profile.memory_bytes >= MiB
        assert profile.disk_bytes >= MiB


def test_default_inventory_emulated_wiring() -> None:
    inventory = load_inventory(DEFAULT_TOML)
    lab = inventory.lab
    for device in inventory.devices:
        assert device.ssh.key == lab.client_key
        assert device.ssh.known_hosts == lab.known_hosts
        assert device.ssh.password is None
        assert device.serial is not None
        assert device.serial.port == str(lab.console_path(device.name))
        assert device.workdir.startswith("/")
    by_name = {d.name: d for d in inventory.devices}
    assert by_name["orin-nano-emu"].resources.memory_bytes == GiB
    assert by_name["orin-nano-emu"].resources.cpus == 1.5
    assert by_name["rpi4-emu"].resources.memory_bytes == 512 * MiB
    assert by_name["rpi4-emu"].resources.disk_bytes == 256 * MiB
    # One root device, and one set up as real boards are: non-root with sudo, a console that wants a
    # login, onnxruntime in a venv the lab makes.
    root, board = by_name["orin-nano-emu"], by_name["rpi4-emu"]
    assert root.ssh.user == "root" and root.venv is None and root.serial.login is None
    assert board.ssh.user == "hilpi" and board.become.method == "sudo" and board.become.password is None
    assert board.serial.login == "hilpi" and board.serial.password.path == lab.dir / "rpi4-emu" / "console-password"
    assert board.python == f"{board.venv}/bin/python" and board.python.startswith("/var/lib/hil-lab/")


# ---------------------------------------------------------------------------------------------
# The non-root emulated profile


def test_emulated_non_root_defaults(tmp_path: Path) -> None:
    device = load(tmp_path, emulated('[devices.ssh]\nuser = "edge"')).get("emu")
    assert device.login_user == "edge"
    assert device.venv == "/var/lib/hil-lab/hil/emu/venv" and device.python == device.venv + "/bin/python"
    assert device.serial.login == "edge"
    assert device.serial.password.path is not None and "lab made" in str(device.serial.password)
    assert device.become.method == "sudo" and device.become.password is None  # passwordless sudo


def test_emulated_sudo_password_is_the_console_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIL_CFG_PW", "pw-123")
    device = load(tmp_path, emulated('python = "/opt/ort/bin/python3"\n[devices.ssh]\nuser = "edge"\n'
                                     '[devices.become]\npassword = "${HIL_CFG_PW}"')).get("emu")
    assert device.venv == "/opt/ort" and device.python == "/opt/ort/bin/python3"
    assert device.serial.password.reveal() == "pw-123" and "pw-123" not in repr(device)


@pytest.mark.parametrize(("extra", "key", "message"), [
    ('[devices.ssh]\nuser = "Bad User"', "ssh.user", "login name the lab can create"),
    ('python = "python3.11"\n[devices.ssh]\nuser = "edge"', "python", "interpreter of a venv the lab makes"),
    ('python = "/usr/bin/python3"', "python", "not in a system directory"),
    ('[devices.serial]\nlogin = "other"\n[devices.ssh]\nuser = "edge"', "serial.login", "must be the device's"),
    ('[devices.serial]\nlogin = "root"', "serial.login", "non-root emulated device"),
])
def test_emulated_profile_errors(tmp_path: Path, extra: str, key: str, message: str) -> None:
    text = error(tmp_path, emulated(extra))
    assert f"device 'emu': key '{key}'" in text and message in text


def test_two_emulated_devices_cannot_share_a_login(tmp_path: Path) -> None:
    user = '[devices.ssh]\nuser = "edge"'
    text = error(tmp_path, emulated(user, "a") + emulated(user, "b"))
    assert "device 'b': key 'ssh.user'" in text and "emulated device 'a'" in text


# ---------------------------------------------------------------------------------------------
# Valid files


@pytest.mark.parametrize("text", ["", '[lab]\nname = "hil"\n', "devices = []\n",
                                  '[deploy]\ntrusted_keys = []\n'])
def test_an_inventory_without_devices_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    # It would validate nothing: a run on it must not look like success (it gave "6 skipped", exit 0).
    message = error(tmp_path, text)
    assert str(tmp_path / "devices.toml") in message and "no devices" in message and "[[devices]]" in message


def test_an_inventory_without_devices_is_read_where_only_deploy_keys_matter(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, ""), require_devices=False)
    assert inventory.devices == ()
    assert inventory.lab.name == "hil"
    assert inventory.lab.subnet == ipaddress.IPv4Network("10.77.0.0/24")
    assert inventory.select(None) == []


def test_emulated_defaults(tmp_path: Path) -> None:
    device = load(tmp_path, EMULATED).get("emu")
    assert device.emulated
    assert device.tags == ("emulated",)
    assert device.resources.cpus == 1.0
    assert device.resources.memory_bytes == 512 * MiB
    assert device.resources.disk_bytes == 256 * MiB
    assert device.workdir == "/var/lib/hil"
    assert device.python == "python3"
    assert device.ssh.host == "10.77.0.10"


def test_emulated_addresses_skip_real_devices(tmp_path: Path, lab_files: Path) -> None:
    text = "[lab]\nsubnet = \"10.99.0.0/24\"\n" + emulated(name="e1") + REAL + emulated(name="e2")
    inventory = load(tmp_path, text)
    assert inventory.get("e1").ssh.host == "10.99.0.10"
    assert inventory.get("e2").ssh.host == "10.99.0.11"
    assert inventory.get("orin-01").ssh.host == "orin-01.lab"
    assert [d.name for d in inventory.emulated] == ["e1", "e2"]


def test_emulated_tag_not_duplicated(tmp_path: Path) -> None:
    device = load(tmp_path, emulated('tags = ["emulated", "rpi"]')).get("emu")
    assert device.tags == ("emulated", "rpi")


def test_emulated_serial_false_means_no_console(tmp_path: Path) -> None:
    assert load(tmp_path, emulated("serial = false")).get("emu").serial is None


def test_emulated_allowed_ssh_keys(tmp_path: Path) -> None:
    text = emulated("[devices.ssh]\nconnect_timeout = 2\nkeepalive = 1.5\nreconnect_timeout = 30")
    ssh = load(tmp_path, text).get("emu").ssh
    assert (ssh.connect_timeout, ssh.keepalive, ssh.reconnect_timeout) == (2.0, 1.5, 30.0)


def test_lab_settings(tmp_path: Path) -> None:
    text = '[lab]\nname = "ci7"\nsubnet = "192.168.50.0/28"\nstate_dir = "/srv/hil"\n' + emulated()
    inventory = load(tmp_path, text)
    assert inventory.lab.name == "ci7"
    assert inventory.lab.dir == Path("/srv/hil/ci7")
    assert inventory.lab.host_address == ipaddress.IPv4Address("192.168.50.1")
    assert inventory.get("emu").ssh.host == "192.168.50.10"


def test_real_device(tmp_path: Path, lab_files: Path) -> None:
    text = real(
        ssh='port = 2222\nuser = "admin"\nkey = "id_ed25519"\nconnect_timeout = 3',
        serial=f'port = "{tmp_path / "ttyUSB0"}"\nbaud = 921600\nlogin = "root"\nprompt = "# $"',
        device='workdir = "/opt/hil/"\npython = "/usr/bin/python3.11"',
    )
    device = load(tmp_path, text).get("orin-01")
    assert not device.emulated
    assert device.tags == ("jetson",)
    assert device.resources is None
    assert device.workdir == "/opt/hil"
    assert device.python == "/usr/bin/python3.11"
    assert device.ssh.host == "orin-01.lab"
    assert device.ssh.port == 2222
    assert device.ssh.user == "admin"
    assert device.ssh.key == tmp_path / "id_ed25519"
    assert device.ssh.known_hosts == tmp_path / "known_hosts"
    assert device.ssh.strict_host_key_checking is True
    assert device.ssh.connect_timeout == 3.0
    assert device.serial.port == str(tmp_path / "ttyUSB0")
    assert device.serial.baud == 921600
    assert device.serial.login == "root"
    assert device.serial.prompt == "# $"


def test_real_device_network_serial_port_need_not_exist(tmp_path: Path, lab_files: Path) -> None:
    device = load(tmp_path, real(serial='port = "rfc2217://serial-hub:4001"')).get("orin-01")
    assert device.serial.port == "rfc2217://serial-hub:4001"


def test_absolute_and_home_paths(tmp_path: Path, lab_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "hil_key").write_text("k")
    monkeypatch.setenv("HOME", str(home))
    text = real(ssh='key = "~/.ssh/hil_key"').replace('known_hosts = "known_hosts"',
                                                     f'known_hosts = "{tmp_path / "known_hosts"}"')
    ssh = load(tmp_path, text).get("orin-01").ssh
    assert ssh.key == home / ".ssh" / "hil_key"
    assert ssh.known_hosts == tmp_path / "known_hosts"


def test_known_hosts_defaults_to_users_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text("")
    monkeypatch.setenv("HOME", str(home))
    text = '[[devices]]\nname = "orin-01"\n[devices.ssh]\nhost = "orin-01.lab"\n'
    assert load(tmp_path, text).get("orin-01").ssh.known_hosts == home / ".ssh" / "known_hosts"


def test_known_hosts_not_needed_without_strict_checking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    text = '[[devices]]\nname = "orin-01"\n[devices.ssh]\nhost = "orin-01.lab"\nstrict_host_key_checking = false\n'
    ssh = load(tmp_path, text).get("orin-01").ssh
    assert ssh.known_hosts is None
    assert ssh.strict_host_key_checking is False


# ---------------------------------------------------------------------------------------------
# Errors: each names the file, the device and the key


UNKNOWN_KEYS = [
    pytest.param('colour = "red"\n' + EMULATED, None, "colour", id="top-level"),
    pytest.param('[lab]\nflavour = "x"\n', None, "lab.flavour", id="lab"),
    pytest.param(emulated("colour = 1"), "emu", "colour", id="device"),
    pytest.param(real(ssh="colour = 1"), "orin-01", "ssh.colour", id="ssh"),
    pytest.param(real(serial='port = "socket://hub:4000"\ncolour = 1'), "orin-01", "serial.colour", id="serial"),
    pytest.param(emulated("[devices.serial]\ncolour = 1"), "emu", "serial.colour", id="emulated-serial"),
]


@pytest.mark.parametrize(("text", "device_name", "key"), UNKNOWN_KEYS)
def test_unknown_key(tmp_path: Path, lab_files: Path, text: str, device_name: str | None, key: str) -> None:
    message = error(tmp_path, text)
    assert_names(message, device_name, key)
    assert "unknown key" in message
    assert "allowed:" in message


WRONG_TYPES = [
    pytest.param(real(ssh='port = "22a"'), "orin-01", "ssh.port", "22a", id="port-string"),
    pytest.param(real(ssh="port = 22.5"), "orin-01", "ssh.port", "22.5", id="port-float"),
    pytest.param(real(ssh="port = 0"), "orin-01", "ssh.port", "between", id="port-zero"),
    pytest.param(real(ssh="port = 70000"), "orin-01", "ssh.port", "70000", id="port-too-big"),
    pytest.param(real(ssh="port = true"), "orin-01", "ssh.port", "boolean", id="port-bool"),
    pytest.param(real().replace('"orin-01.lab"', "10"), "orin-01", "ssh.host", "string", id="host-int"),
    pytest.param(real(ssh='strict_host_key_checking = "no"'), "orin-01", "ssh.strict_host_key_checking",
                 "true or false", id="strict-string"),
    pytest.param(real(ssh="connect_timeout = 0"), "orin-01", "ssh.connect_timeout", "greater than 0",
                 id="timeout-zero"),
    pytest.param(real(ssh='keepalive = "5s"'), "orin-01", "ssh.keepalive", "number", id="keepalive-string"),
    pytest.param(real(serial='port = "socket://hub:4000"\nbaud = "fast"'), "orin-01", "serial.baud", "fast",
                 id="baud-string"),
    pytest.param(real(serial='port = "socket://hub:4000"\nprompt = "(["'), "orin-01", "serial.prompt",
                 "regular expression", id="prompt-bad-regex"),
    pytest.param(real(serial='port = "socket://hub:4000"\nprompt = "a{99999999999}"'), "orin-01", "serial.prompt",
                 "regular expression", id="prompt-huge-repeat"),
    pytest.param(real(serial='port = "socket://hub:4000"\nprompt = "' + "(" * 3000 + ")" * 3000 + '"'), "orin-01",
                 "serial.prompt", "regular expression", id="prompt-deeply-nested"),
    pytest.param(emulated('cpus = "two"'), "emu", "cpus", "two", id="cpus-string"),
    pytest.param(emulated("cpus = true"), "emu", "cpus", "boolean", id="cpus-bool"),
    pytest.param(emulated("cpus = 0"), "emu", "cpus", "greater than 0", id="cpus-zero"),
    pytest.param(emulated("cpus = -1.5"), "emu", "cpus", "greater than 0", id="cpus-negative"),
    pytest.param(emulated("cpus = inf"), "emu", "cpus", "finite", id="cpus-inf"),
    pytest.param(emulated("cpus = nan"), "emu", "cpus", "", id="cpus-nan"),
    pytest.param(emulated("cpus = 1e400"), "emu", "cpus", "finite", id="cpus-overflowing-float"),
    pytest.param(emulated("cpus = " + "9" * 400), "emu", "cpus", "finite", id="cpus-huge-int"),
    pytest.param(emulated('tags = "jetson"'), "emu", "tags", "array of strings", id="tags-not-list"),
    pytest.param(emulated("tags = [1, 2]"), "emu", "tags", "array of strings", id="tags-not-strings"),
    pytest.param(emulated('tags = ["jet-son"]'), "emu", "tags", "jet-son", id="tag-with-dash"),
    pytest.param(emulated('tags = ["1st"]'), "emu", "tags", "marker", id="tag-leading-digit"),
    pytest.param(emulated('tags = ["two words"]'), "emu", "tags", "marker", id="tag-with-space"),
    pytest.param(emulated('tags = [""]'), "emu", "tags", "marker", id="tag-empty"),
    pytest.param(emulated('tags = ["rpi\\n"]'), "emu", "tags", "marker", id="tag-trailing-newline"),
    pytest.param(emulated('emulated = "yes"').replace("emulated = true\n", ""), "emu", "emulated",
                 "true or false", id="emulated-string"),
    pytest.param(emulated('workdir = "var/lib/hil"'), "emu", "workdir", "absolute", id="workdir-relative"),
    pytest.param(emulated('workdir = "/tmp/"'), "emu", "workdir", "absolute", id="workdir-tmp"),
    pytest.param(emulated('workdir = "/"'), "emu", "workdir", "absolute", id="workdir-root"),
    pytest.param(emulated("python = 3"), "emu", "python", "string", id="python-int"),
    pytest.param(emulated('ssh = "10.0.0.1"'), "emu", "ssh", "table", id="ssh-not-table"),
    pytest.param(emulated('serial = "yes"'), "emu", "serial", "table or false", id="emulated-serial-string"),
    pytest.param(real(device='serial = "ttyUSB0"'), "orin-01", "serial", "table", id="real-serial-string"),
    pytest.param(emulated("[devices.serial]\nport = \"/dev/ttyUSB0\""), "emu", "serial.port", "emulated lab",
                 id="emulated-serial-port"),
    pytest.param(real(device="cpus = 2"), "orin-01", "cpus", "emulated = true", id="real-cpus"),
    pytest.param(real(device='memory = "1GiB"'), "orin-01", "memory", "emulated = true", id="real-memory"),
]


@pytest.mark.parametrize(("text", "device_name", "key", "fragment"), WRONG_TYPES)
def test_wrong_value(tmp_path: Path, lab_files: Path, text: str, device_name: str, key: str, fragment: str) -> None:
    message = error(tmp_path, text)
    assert_names(message, device_name, key)
    assert fragment in message


def test_duplicate_device_names(tmp_path: Path) -> None:
    message = error(tmp_path, emulated(name="twin") + emulated(name="other") + emulated(name="twin"))
    assert_names(message, "twin", "name")
    assert "unique" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param('[[devices]]\nemulated = true\n', "devices[0].name", id="first-missing"),
        pytest.param(EMULATED + '[[devices]]\nemulated = true\n', "devices[1].name", id="second-missing"),
        pytest.param('[[devices]]\nname = ""\nemulated = true\n', "devices[0].name", id="empty"),
        pytest.param('[[devices]]\nname = "bad name"\nemulated = true\n', "devices[0].name", id="space"),
        pytest.param('[[devices]]\nname = "emu\\n"\nemulated = true\n', "devices[0].name", id="newline"),
        pytest.param('[[devices]]\nname = 7\nemulated = true\n', "devices[0].name", id="int"),
        pytest.param('[[devices]]\nname = "' + "a" * 64 + '"\nemulated = true\n', "devices[0].name", id="long"),
    ],
)
def test_device_name_required_and_valid(tmp_path: Path, text: str, key: str) -> None:
    assert_names(error(tmp_path, text), None, key)


def test_real_device_without_ssh(tmp_path: Path) -> None:
    message = error(tmp_path, '[[devices]]\nname = "orin-01"\ntags = ["jetson"]\n')
    assert_names(message, "orin-01", "ssh")
    assert "required" in message


def test_real_device_without_ssh_host(tmp_path: Path, lab_files: Path) -> None:
    text = '[[devices]]\nname = "orin-01"\n[devices.ssh]\nuser = "root"\nknown_hosts = "known_hosts"\n'
    message = error(tmp_path, text)
    assert_names(message, "orin-01", "ssh.host")
    assert "required" in message


def test_real_serial_without_port(tmp_path: Path, lab_files: Path) -> None:
    assert_names(error(tmp_path, real(serial="baud = 9600")), "orin-01", "serial.port")


def test_missing_ssh_key_file(tmp_path: Path, lab_files: Path) -> None:
    message = error(tmp_path, real(ssh='key = "keys/nope_ed25519"'))
    assert_names(message, "orin-01", "ssh.key")
    assert str(tmp_path / "keys" / "nope_ed25519") in message
    assert "does not exist" in message


def test_ssh_key_is_a_directory(tmp_path: Path, lab_files: Path) -> None:
    (tmp_path / "keys").mkdir()
    assert_names(error(tmp_path, real(ssh='key = "keys"')), "orin-01", "ssh.key")


def test_ssh_key_with_nul_byte(tmp_path: Path, lab_files: Path) -> None:
    assert_names(error(tmp_path, real(ssh='key = "~\\u0000x"')), "orin-01", "ssh.key")


def test_missing_serial_port(tmp_path: Path, lab_files: Path) -> None:
    message = error(tmp_path, real(serial='port = "/dev/serial/by-id/usb-nothing-here"'))
    assert_names(message, "orin-01", "serial.port")
    assert "/dev/serial/by-id/usb-nothing-here" in message
    assert "does not exist" in message


def test_missing_known_hosts_file(tmp_path: Path, lab_files: Path) -> None:
    message = error(tmp_path, real().replace('known_hosts = "known_hosts"', 'known_hosts = "pinned_hosts"'))
    assert_names(message, "orin-01", "ssh.known_hosts")
    assert str(tmp_path / "pinned_hosts") in message


def test_known_hosts_unset_and_no_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    message = error(tmp_path, '[[devices]]\nname = "orin-01"\n[devices.ssh]\nhost = "orin-01.lab"\n')
    assert_names(message, "orin-01", "ssh.known_hosts")
    assert "ssh-keyscan" in message


@pytest.mark.parametrize("key", ["memory", "disk"])
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('"lots"', "lots"),
        ('"12 parsecs"', "12 parsecs"),
        ('"512KiB"', "at least 1MiB"),
        ('"0.5MiB"', "at least 1MiB"),
        ('"0"', "at least 1MiB"),
        ('"-1GiB"', "-1GiB"),
        ("512", "size string"),
        ("[]", "size string"),
        ('"' + "9" * 400 + 'GiB"', "size like"),
    ],
)
def test_bad_size(tmp_path: Path, key: str, value: str, fragment: str) -> None:
    message = error(tmp_path, emulated(f"{key} = {value}"))
    assert_names(message, "emu", key)
    assert fragment in message


@pytest.mark.parametrize(
    ("subnet", "fragment"),
    [
        ("not-a-network", "IPv4 network"),
        ("10.77.0.1/24", "IPv4 network"),
        ("10.77.0.0/33", "IPv4 network"),
        ("fd00::/64", "IPv4 network"),
        ("", "must not be empty"),
        ("8.8.8.0/24", "private"),
        ("1.0.0.0/8", "private"),
        ("127.0.0.0/24", "private"),
        ("10.77.0.0/30", "too small"),
        ("10.77.0.0/29", "too small"),
        ("10.77.0.0/32", "too small"),
    ],
)
def test_bad_subnet(tmp_path: Path, subnet: str, fragment: str) -> None:
    message = error(tmp_path, f'[lab]\nsubnet = "{subnet}"\n' + EMULATED)
    assert_names(message, None, "lab.subnet")
    assert fragment in message


def test_subnet_not_a_string(tmp_path: Path) -> None:
    assert_names(error(tmp_path, "[lab]\nsubnet = 24\n"), None, "lab.subnet")


@pytest.mark.parametrize("name", ["HIL", "9lab", "toolongname", "h-l", "hil\\n", " hil"])
def test_bad_lab_name(tmp_path: Path, name: str) -> None:
    assert_names(error(tmp_path, f'[lab]\nname = "{name}"\n'), None, "lab.name")


def test_relative_state_dir(tmp_path: Path) -> None:
    assert_names(error(tmp_path, '[lab]\nstate_dir = "run/hil"\n'), None, "lab.state_dir")


def test_lab_not_a_table(tmp_path: Path) -> None:
    assert "[lab] must be a table" in error(tmp_path, 'lab = "hil"\n')


def test_devices_not_an_array(tmp_path: Path) -> None:
    assert_names(error(tmp_path, '[devices]\nname = "emu"\n'), None, "devices")
    assert_names(error(tmp_path, 'devices = "emu"\n'), None, "devices")


def test_device_entry_not_a_table(tmp_path: Path) -> None:
    assert "entry 2 must be a table" in error(tmp_path, 'devices = [{name = "emu", emulated = true}, 3]\n')


def test_too_many_emulated_devices_for_subnet(tmp_path: Path) -> None:
    # A /28 has 16 addresses; emulated devices start at .10 and the last one is the broadcast.
    text = '[lab]\nsubnet = "10.77.0.0/28"\n' + "".join(emulated(name=f"e{i}") for i in range(6))
    message = error(tmp_path, text)
    assert "device 'e5'" in message
    assert "too many emulated devices" in message
    assert len(load(tmp_path, text.replace(emulated(name="e5"), "")).devices) == 5


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('host = "10.0.0.5"', "ssh.host"),
        ("port = 2222", "ssh.port"),
        ('key = "id_ed25519"', "ssh.key"),
        ('password = "${HIL_TEST_PW}"', "ssh.password"),
        ('known_hosts = "known_hosts"', "ssh.known_hosts"),
        ("strict_host_key_checking = false", "ssh.strict_host_key_checking"),
        ("colour = 1", "ssh.colour"),
    ],
)
def test_ssh_keys_on_emulated_device(tmp_path: Path, lab_files: Path, line: str, key: str) -> None:
    message = error(tmp_path, emulated(f"[devices.ssh]\nconnect_timeout = 2\n{line}"))
    assert_names(message, "emu", key)
    assert "emulated" in message
    assert "connect_timeout, keepalive, reconnect_timeout" in message


# ---------------------------------------------------------------------------------------------
# Unreadable files


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    message = error(tmp_path, '[lab]\nname = "hil"\n\n[[devices]]\nname = "emu"\nemulated = tru\n')
    assert "line 6" in message
    assert "not valid TOML" in message


def test_malformed_toml_unclosed_table(tmp_path: Path) -> None:
    message = error(tmp_path, '[[devices]]\nname = "emu"\n[devices.ssh\n')
    assert "line 3" in message


def test_duplicate_toml_key(tmp_path: Path) -> None:
    message = error(tmp_path, '[[devices]]\nname = "a"\nname = "b"\n')
    assert "line 3" in message


def test_integer_too_long_for_python(tmp_path: Path) -> None:
    assert "not valid TOML" in error(tmp_path, emulated("cpus = 1" + "0" * 5000))


def test_arrays_nested_too_deep(tmp_path: Path) -> None:
    assert "not valid TOML" in error(tmp_path, "x = " + "[" * 50_000)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "devices.toml"
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    message = str(info.value)
    assert str(path) in message
    assert "no such file" in message
    assert "--hil-devices" in message


def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_inventory(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    path.write_bytes(b'[lab]\nname = "h\xffl"\n')
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert str(path) in str(info.value)


def test_config_error_is_a_hil_error() -> None:
    assert issubclass(ConfigError, HilError)


# ---------------------------------------------------------------------------------------------
# Secrets and environment variables


def secret_text(where: str = "ssh") -> str:
    if where == "ssh":
        return real(ssh='password = "${HIL_TEST_PW}"')
    return real(serial='port = "socket://hub:4000"\nlogin = "root"\npassword = "${HIL_TEST_PW}"')


@pytest.mark.parametrize("where", ["ssh", "serial"])
def test_password_from_environment(tmp_path: Path, lab_files: Path, monkeypatch: pytest.MonkeyPatch,
                                   where: str) -> None:
    monkeypatch.setenv("HIL_TEST_PW", SECRET_VALUE)
    inventory = load(tmp_path, secret_text(where))
    device = inventory.get("orin-01")
    secret = device.ssh.password if where == "ssh" else device.serial.password
    assert isinstance(secret, Secret)
    assert secret.reveal() == SECRET_VALUE
    assert secret.source == "${HIL_TEST_PW}"
    for text in (str(secret), repr(secret), f"{secret}", f"{secret!r}", str(device), repr(device),
                 repr(device.ssh), repr(device.serial), repr(inventory), str(inventory)):
        assert SECRET_VALUE not in text
    assert "HIL_TEST_PW" in str(secret)
    assert "HIL_TEST_PW" in repr(secret)


def test_secret_without_source() -> None:
    secret = Secret(SECRET_VALUE)
    assert SECRET_VALUE not in str(secret)
    assert SECRET_VALUE not in repr(secret)
    assert secret.reveal() == SECRET_VALUE


@pytest.mark.parametrize(("where", "key"), [("ssh", "ssh.password"), ("serial", "serial.password")])
def test_unset_password_variable(tmp_path: Path, lab_files: Path, monkeypatch: pytest.MonkeyPatch,
                                 where: str, key: str) -> None:
    monkeypatch.delenv("HIL_TEST_PW", raising=False)
    message = error(tmp_path, secret_text(where))
    assert_names(message, "orin-01", key)
    assert "HIL_TEST_PW" in message
    assert "not set" in message


@pytest.mark.parametrize(
    "value",
    [f'"{SECRET_VALUE}"', f'"{SECRET_VALUE}${{HIL_TEST_PW}}"', '"$HIL_TEST_PW"', '"${HIL_TEST_PW}x"', "12345678",
     "true"],
)
@pytest.mark.parametrize("where", ["ssh", "serial"])
def test_literal_password_refused(tmp_path: Path, lab_files: Path, monkeypatch: pytest.MonkeyPatch,
                                  value: str, where: str) -> None:
    monkeypatch.setenv("HIL_TEST_PW", "from-the-env")
    text = secret_text(where).replace('"${HIL_TEST_PW}"', value)
    message = error(tmp_path, text)
    assert_names(message, "orin-01", f"{where}.password")
    assert "environment variable" in message
    assert SECRET_VALUE not in message
    assert "12345678" not in message
    assert "from-the-env" not in message


def test_env_expanded_in_ordinary_strings(tmp_path: Path, lab_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIL_TEST_HOST", "orin-07")
    monkeypatch.setenv("HIL_TEST_DOMAIN", "lab.example")
    monkeypatch.setenv("HIL_TEST_USER", "ci")
    monkeypatch.setenv("HIL_TEST_KEYDIR", str(tmp_path))
    text = real(ssh='user = "${HIL_TEST_USER}"\nkey = "${HIL_TEST_KEYDIR}/id_ed25519"',
                serial='port = "socket://hub:4000"\nlogin = "${HIL_TEST_USER}"').replace(
        'host = "orin-01.lab"', 'host = "${HIL_TEST_HOST}.${HIL_TEST_DOMAIN}"')
    device = load(tmp_path, text).get("orin-01")
    assert device.ssh.host == "orin-07.lab.example"
    assert device.ssh.user == "ci"
    assert device.ssh.key == tmp_path / "id_ed25519"
    assert device.serial.login == "ci"


def test_dollar_without_braces_is_literal(tmp_path: Path, lab_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIL_TEST_USER", "ci")
    device = load(tmp_path, real(ssh='user = "$HIL_TEST_USER"')).get("orin-01")
    assert device.ssh.user == "$HIL_TEST_USER"


def test_env_expansion_is_not_recursive(tmp_path: Path, lab_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIL_TEST_USER", "${HIL_TEST_OTHER}")
    monkeypatch.delenv("HIL_TEST_OTHER", raising=False)
    device = load(tmp_path, real(ssh='user = "${HIL_TEST_USER}"')).get("orin-01")
    assert device.ssh.user == "${HIL_TEST_OTHER}"


@pytest.mark.parametrize(
    ("ssh", "key"),
    [('user = "${HIL_TEST_UNSET}"', "ssh.user"), ('key = "${HIL_TEST_UNSET}/id"', "ssh.key")],
)
def test_unset_variable_in_ordinary_string(tmp_path: Path, lab_files: Path, monkeypatch: pytest.MonkeyPatch,
                                           ssh: str, key: str) -> None:
    monkeypatch.delenv("HIL_TEST_UNSET", raising=False)
    message = error(tmp_path, real(ssh=ssh))
    assert_names(message, "orin-01", key)
    assert "${HIL_TEST_UNSET}" in message


def test_unset_variable_in_host(tmp_path: Path, lab_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIL_TEST_UNSET", raising=False)
    message = error(tmp_path, real().replace('"orin-01.lab"', '"${HIL_TEST_UNSET}"'))
    assert_names(message, "orin-01", "ssh.host")
    assert "HIL_TEST_UNSET" in message


# ---------------------------------------------------------------------------------------------
# parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * MiB),
        ("1GiB", GiB),
        ("1.5GiB", GiB * 3 // 2),
        ("64M", 64 * MiB),
        ("1024KiB", MiB),
        ("2TiB", 2 * 1024**4),
        ("512mib", 512 * MiB),
        ("64MB", 64 * MiB),
        (" 8 GiB ", 8 * GiB),
        ("4096", 4096),
        ("4096B", 4096),
        ("0", 0),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "lots", "12 parsecs", "MiB", "-5MiB", "1.2.3MiB", "1e3", "0x10", "5 PiB", "5iB", "5 GiBB",
     "1,5GiB", "9" * 400 + "GiB", "1" + "0" * 400],
)
def test_parse_size_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "B", "K", "KiB", "M", "MiB", "G", "GiB"]))
@settings(max_examples=200, deadline=None)
def test_parse_size_integers(number: int, unit: str) -> None:
    factor = {"": 1, "B": 1, "K": 1024, "M": MiB, "G": GiB}[unit.removesuffix("iB").removesuffix("B") or ""]
    assert parse_size(f"{number}{unit}") == number * factor


@given(st.text(max_size=30))
@settings(max_examples=200, deadline=None)
def test_parse_size_only_raises_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert isinstance(size, int)
    assert size >= 0


# ---------------------------------------------------------------------------------------------
# Inventory.select / get


@pytest.fixture
def three(tmp_path: Path) -> Inventory:
    text = (emulated('tags = ["jetson"]', name="a") + emulated('tags = ["rpi"]', name="b")
            + emulated('tags = ["jetson", "orin"]', name="c"))
    return load(tmp_path, text)


def test_names_and_tags(three: Inventory) -> None:
    assert three.names == ["a", "b", "c"]
    assert three.tags == ["emulated", "jetson", "orin", "rpi"]


def test_select_keeps_given_order(three: Inventory) -> None:
    assert [d.name for d in three.select(["c", "a"])] == ["c", "a"]
    assert [d.name for d in three.select(["b"])] == ["b"]


@pytest.mark.parametrize("names", [None, []])
def test_select_all(three: Inventory, names: list[str] | None) -> None:
    assert three.select(names) == list(three.devices)


def test_get(three: Inventory) -> None:
    assert three.get("b").name == "b"
    assert three.get("b") is three.devices[1]


def test_unknown_name_lists_known_names(three: Inventory) -> None:
    with pytest.raises(ConfigError) as info:
        three.select(["a", "zz-missing"])
    message = str(info.value)
    assert "zz-missing" in message
    assert "a, b, c" in message
    assert str(three.path) in message
    with pytest.raises(ConfigError, match="known: a, b, c"):
        three.get("nope")


def test_unknown_name_in_empty_inventory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="known: none"):
        load_inventory(write(tmp_path, ""), require_devices=False).get("anything")


def test_inventory_is_immutable(three: Inventory) -> None:
    with pytest.raises(AttributeError):
        three.devices[0].name = "other"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Property tests: whatever the file holds, the loader returns an Inventory or raises ConfigError


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def load_or_config_error(path: Path) -> Inventory | None:
    try:
        inventory = load_inventory(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
        return None
    assert isinstance(inventory, Inventory)
    return inventory


@given(data=st.binary(max_size=400))
@FUZZ
def test_fuzz_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "devices.toml"
    path.write_bytes(data)
    load_or_config_error(path)


TOMLISH = st.text(alphabet=st.sampled_from([*'[]{}="\'.,#\n \t\\abcdeflmnrstuy0123456789-_:+${}', "\x00", "é"]),
                  max_size=200)


@given(text=st.one_of(st.text(max_size=300), TOMLISH))
@FUZZ
def test_fuzz_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "devices.toml"
    path.write_text(text, encoding="utf-8")
    load_or_config_error(path)


# A small TOML serialiser (inline tables and arrays only) for the structured fuzz test.


def toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in data.items())


def no_nan(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isnan(value)
    if isinstance(value, list):
        return all(no_nan(v) for v in value)
    if isinstance(value, dict):
        return all(no_nan(v) for v in value.values())
    return True


REAL_KEYS = sorted(_DEVICE_KEYS | _SSH_KEYS | _SERIAL_KEYS | {"lab", "devices", "subnet", "state_dir"})
KEYS = st.one_of(st.sampled_from(REAL_KEYS), st.text(max_size=8))
PLAUSIBLE = st.sampled_from([
    "", "/", "hil", "emu", "jetson", "512MiB", "lots", "10.77.0.0/24", "8.8.8.0/24", "/var/lib/hil", "run/hil",
    "${HIL_FUZZ_SET}", "${HIL_FUZZ_UNSET}", "x${HIL_FUZZ_SET}", "~/nothing", "~nosuchuser/x", "~\x00x", "a\n",
    "known_hosts", "id_ed25519", "socket://hub:4000", "/dev/null", "(", "a{99999999999}", "22a",
])
LEAVES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    PLAUSIBLE,
)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)),
    max_leaves=12,
)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, chosen with the given weights (st.one_of does not take weights).

    Hypothesis leans towards the first choice (its "simplest"), so put the usual case first.
    """
    slots = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(slots))).flatmap(lambda i: slots[i])


def pick(good: list[Any] | st.SearchStrategy[Any], bad: list[Any] | None = None) -> st.SearchStrategy[Any]:
    """Usually a valid value, sometimes a near miss, now and then anything at all."""
    good_strategy = good if isinstance(good, st.SearchStrategy) else st.sampled_from(good)
    return weighted((24, good_strategy), (4 if bad else 0, st.sampled_from(bad or [None])), (1, VALUES))


def table(optional: dict[str, st.SearchStrategy[Any]],
          required: dict[str, st.SearchStrategy[Any]] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """A table of real keys with picked values, now and then with a junk key or without a required one."""
    junk = weighted((15, st.just({})), (1, st.dictionaries(KEYS, VALUES, min_size=1, max_size=2)))
    required = required or {}
    return st.builds(
        lambda known, must, maybe_drop, extra: {**{k: v for k, v in must.items() if k != maybe_drop}, **known,
                                                **extra},
        st.fixed_dictionaries({}, optional=optional),
        st.fixed_dictionaries(required),
        weighted((15, st.none()), (1, st.sampled_from(sorted(required) or [None]))),
        junk,
    )


TIMEOUTS = {key: pick(st.floats(0.1, 60) | st.integers(1, 60), [0, -1, math.inf, math.nan, "5s", True])
            for key in ("connect_timeout", "keepalive", "reconnect_timeout")}
EMULATED_SSH = table(TIMEOUTS)
REAL_SSH = table(
    {
        **TIMEOUTS,
        "port": pick(st.integers(1, 65535), [0, 70000, "22a", 22.5]),
        "user": pick(["root", "ci", "${HIL_FUZZ_SET}"], ["${HIL_FUZZ_UNSET}", 1]),
        "key": pick(["id_ed25519"], ["nope", "~/nothing", "~nosuchuser/x", "~\x00x", "\x00"]),
        "password": pick(["${HIL_FUZZ_SET}"], ["${HIL_FUZZ_UNSET}", "literal", 1234]),
        "strict_host_key_checking": pick(st.booleans(), ["no"]),
    },
    {
        "host": pick(["orin.lab", "10.0.0.5", "${HIL_FUZZ_SET}.lab"], ["${HIL_FUZZ_UNSET}", 5]),
        "known_hosts": pick(["known_hosts"], ["nope", ""]),
    },
)
SERIAL_COMMON = {
    "baud": pick([9600, 115200, 921600], [0, 10**9, "fast"]),
    "login": pick(["root"], ["${HIL_FUZZ_UNSET}"]),
    "password": pick(["${HIL_FUZZ_SET}"], ["${HIL_FUZZ_UNSET}", "literal"]),
    "prompt": pick(["# $", r"\$ $"], ["(", "a{99999999999}", "(" * 2000]),
    "timeout": pick([1, 10.5], [0, math.inf]),
}
EMULATED_SERIAL = pick(table(SERIAL_COMMON), [False, True, "pty"])
REAL_SERIAL = table(SERIAL_COMMON, {"port": pick(["socket://hub:4000", "/dev/null"], ["ttyUSB9", "/dev/nope"])})
DEVICE_COMMON = {
    "tags": pick(st.lists(st.sampled_from(["jetson", "rpi", "orin", "emulated"]), max_size=3),
                 [["x-y"], ["1a"], [""], ["a\n"], "jetson", [1]]),
    "workdir": pick(["/var/lib/hil", "/opt/hil/"], ["/tmp", "rel", "", "/"]),
    "python": pick(["python3", "/usr/bin/python3"], [3]),
}
NAME = pick(["a", "b", "c", "emu", "orin-01"], ["", "bad name", "a\n", "x" * 64])
EMULATED_DEVICE = table(
    {
        **DEVICE_COMMON,
        "ssh": pick(EMULATED_SSH, [{"host": "x"}]),
        "serial": EMULATED_SERIAL,
        "cpus": pick(st.floats(0.1, 8) | st.integers(1, 8), [0, -1, math.inf, math.nan, 10**400, "two"]),
        "memory": pick(["512MiB", "1GiB", "64M", "1.5GiB"], ["0.5MiB", "lots", "9" * 400 + "GiB", 512]),
        "disk": pick(["256MiB", "2GiB"], ["12 parsecs", "1KiB"]),
    },
    {"name": NAME, "emulated": pick([True], [False, "yes"])},
)
REAL_DEVICE = table(
    {**DEVICE_COMMON, "serial": pick(REAL_SERIAL, [False]), "emulated": pick([False], ["no"])},
    {"name": NAME, "ssh": pick(REAL_SSH, ["orin.lab"])},
)
LAB = table({
    "name": pick(["hil", "ci7"], ["HIL", "hil\n", "toolongname"]),
    "subnet": pick(["10.77.0.0/24", "192.168.9.0/28"], ["8.8.8.0/24", "10.0.0.0/30", "x", "10.0.0.1/24"]),
    "state_dir": pick(["/run/hil", "/srv/hil"], ["run/hil", "\x00"]),
})
ANY_DEVICE = st.booleans().flatmap(lambda emulated: EMULATED_DEVICE if emulated else REAL_DEVICE)
DEVICES = weighted(  # the first choice is the one hypothesis favours
    (6, st.lists(ANY_DEVICE, min_size=1, max_size=5, unique_by=lambda device: str(device.get("name")))),
    (1, st.lists(ANY_DEVICE, min_size=2, max_size=5)),  # names may repeat
    (1, st.just([])),
)
DOCUMENT = table({"lab": pick(LAB)}, {"devices": pick(DEVICES)})


def test_serialiser_round_trips() -> None:
    document = {"lab": {"name": "hil", "w\"eird\n": [1, 2.5, -0.0, True, "\x00\x7f\\"]},
                "devices": [{"name": "a", "x": {}, "y": [[], [{}]], "big": 2**70}]}
    assert tomllib.loads(toml_document(document)) == document


@given(document=DOCUMENT)
@FUZZ
def test_fuzz_structures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, document: dict[str, Any]) -> None:
    monkeypatch.setenv("HIL_FUZZ_SET", "value")
    monkeypatch.delenv("HIL_FUZZ_UNSET", raising=False)
    for name in ("known_hosts", "id_ed25519"):
        (tmp_path / name).write_text("")
    text = toml_document(document)
    if no_nan(document):  # the serialiser itself must be right, or this test proves nothing
        assert tomllib.loads(text) == document
    path = tmp_path / "devices.toml"
    path.write_text(text, encoding="utf-8")
    inventory = load_or_config_error(path)
    event("loaded" if inventory is not None else "ConfigError")
    if inventory is not None:
        event(f"{len(inventory.devices)} devices")
        if any(not device.emulated for device in inventory.devices):
            event("with a real device")
        assert len(set(inventory.names)) == len(inventory.devices)
        for device in inventory.devices:
            assert ("emulated" in device.tags) >= device.emulated
            assert (device.resources is not None) == device.emulated


# ---------------------------------------------------------------------------------------------
# Values that type-check but cannot be right


@pytest.mark.parametrize("workdir", ["/etc", "/usr/", "/var/lib", "/var/lib/hil/../..", "relative/dir", "/a b",
                                     "/opt/$(reboot)"])
def test_workdir_must_be_a_dir_hil_owns(tmp_path: Path, workdir: str) -> None:
    message = error(tmp_path, emulated(f'workdir = "{workdir}"'))
    assert_names(message, "emu", "workdir")


@pytest.mark.parametrize("key", ["host", "user"])
def test_empty_strings_are_refused(tmp_path: Path, lab_files: Path, key: str) -> None:
    text = real().replace('host = "orin-01.lab"', "") + f'{key} = ""\n'
    if key == "user":
        text += 'host = "orin-01.lab"\n'
    message = error(tmp_path, text)
    assert_names(message, "orin-01", f"ssh.{key}")
    assert "must not be empty" in message


def test_a_real_device_cannot_pass_for_emulated(tmp_path: Path, lab_files: Path) -> None:
    message = error(tmp_path, real().replace('tags = ["jetson"]', 'tags = ["jetson", "emulated"]'))
    assert_names(message, "orin-01", "tags")
    assert "reserved" in message


def test_serial_port_is_relative_to_devices_toml(tmp_path: Path, lab_files: Path) -> None:
    inventory = load(tmp_path, real(serial='port = "ttyUSB0"'))
    serial = inventory.get("orin-01").serial
    assert serial is not None and serial.port == str(tmp_path / "ttyUSB0")


def test_artifact_globs_may_be_absolute(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for name in ("b", "a"):
        (models / name).mkdir(parents=True)
        (models / name / "manifest.toml").write_text("")
    (models / "not-an-artifact").mkdir()
    path = tmp_path / "lab" / "devices.toml"
    path.parent.mkdir()
    path.write_text(f'[deploy]\nartifacts = ["{models}/*", "../models/a"]\n\n'
                    '[[devices]]\nname = "emu"\nemulated = true\n')
    assert load_inventory(path).artifact_dirs() == [models / "a", models / "b"]  # resolved, each once


@pytest.mark.parametrize("command", [["devices", "check"], ["devices", "list"], ["faults", "list", "x"],
                                     ["lab", "status"], ["run", "x", "--", "true"]])
def test_hil_commands_refuse_an_inventory_without_devices(tmp_path: Path, command: list[str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from hil.cli import main as cli_main

    path = write(tmp_path, '[lab]\nname = "hil"\n')
    assert cli_main(["--devices", str(path), *command]) == 2  # a usage error, never 0
    err = capsys.readouterr().err
    assert str(path) in err and "no devices" in err
