"""The lab's wiring: one bridge on the host, and per device a network namespace joined by a veth.

Names are derived from the lab name, so `down` finds everything a crashed `up` left behind.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path

from hil.lab.host import find_tool, host_run

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")


def netns_name(lab: str, device: str) -> str:
    return f"{lab}-{device}"


def bridge_name(lab: str) -> str:
    return f"{lab}-br"  # LabConfig.bridge: emulated devices' SSH is bound to it


def host_veth_name(lab: str, address: ipaddress.IPv4Address) -> str:
    # Interface names are limited to 15 characters; the last octet keeps them unique per lab.
    return f"{lab}-v{int(address) & 0xFF}"


def list_netns(lab: str) -> list[str]:
    prefix = f"{lab}-"
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def list_links(lab: str) -> list[str]:
    """Host links that belong to this lab (bridge and veth ends)."""
    out = host_run([find_tool("ip"), "-j", "link", "show"])
    return sorted(link["ifname"] for link in json.loads(out or "[]") if link["ifname"].startswith(f"{lab}-"))


def ensure_bridge(lab: str, subnet: ipaddress.IPv4Network) -> None:
    """The host's side of the lab subnet; owning the route keeps lab traffic on this machine."""
    ip = find_tool("ip")
    name = bridge_name(lab)
    host_cidr = f"{subnet.network_address + 1}/{subnet.prefixlen}"
    if name not in list_links(lab):
        host_run([ip, "link", "add", name, "type", "bridge"])
    addresses = json.loads(host_run([ip, "-j", "addr", "show", "dev", name]) or "[]")
    present = {f"{a['local']}/{a['prefixlen']}" for link in addresses for a in link.get("addr_info", [])
               if a.get("family") == "inet"}
    for stale in present - {host_cidr}:
        host_run([ip, "addr", "del", stale, "dev", name])
    if host_cidr not in present:
        host_run([ip, "addr", "add", host_cidr, "dev", name])
    host_run([ip, "link", "set", name, "up"])


def create_device_net(lab: str, device: str, address: ipaddress.IPv4Address, subnet: ipaddress.IPv4Network) -> None:
    """A fresh namespace whose eth0 has the device address; only the lab subnet is routed, no default route."""
    ip = find_tool("ip")
    ns = netns_name(lab, device)
    veth = host_veth_name(lab, address)
    host_run([ip, "netns", "add", ns])
    host_run([ip, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
    host_run([ip, "link", "set", veth, "master", bridge_name(lab), "up"])
    # The host may remember the MAC of an earlier incarnation of this device: forget it, or
    # the first seconds of traffic go nowhere.
    host_run([ip, "neigh", "flush", "to", str(address), "dev", bridge_name(lab)], check=False)
    batch = (
        "link set lo up\n"
        f"addr add {address}/{subnet.prefixlen} dev eth0\n"
        "link set eth0 up\n"
    )
    host_run([ip, "-n", ns, "-batch", "-"], input=batch)


def device_address(lab: str, device: str) -> str | None:
    """The IPv4 address on eth0 inside the device namespace, or None."""
    out = host_run([find_tool("ip"), "-n", netns_name(lab, device), "-j", "addr", "show", "dev", "eth0"], check=False)
    try:
        links = json.loads(out or "[]")
    except json.JSONDecodeError:
        return None
    for link in links:
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                return str(a["local"])
    return None


def netns_pids(ns: str) -> set[int]:
    out = host_run([find_tool("ip"), "netns", "pids", ns], check=False)
    return {int(p) for p in out.split() if p.isdigit()}


def delete_netns(ns: str) -> None:
    host_run([find_tool("ip"), "netns", "delete", ns], check=False)


def delete_link(name: str) -> None:
    host_run([find_tool("ip"), "link", "delete", name], check=False)


def set_link(lab: str, address: ipaddress.IPv4Address, up: bool) -> None:
    """Take a device's cable out or put it back (host end of its veth)."""
    host_run([find_tool("ip"), "link", "set", host_veth_name(lab, address), "up" if up else "down"])
