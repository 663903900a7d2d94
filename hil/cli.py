"""`hil`: the library from a shell. Exit codes: 0 ok, 1 a command failed, 2 bad input, 3 infrastructure."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence

from hil.config import Inventory, load_inventory
from hil.device import Device
from hil.errors import ConfigError, HilError, InfraError

EXIT_FAILED, EXIT_USAGE, EXIT_INFRA = 1, 2, 3


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _lab(inventory: Inventory):  # type: ignore[no-untyped-def]
    from hil.lab import EmulatedLab

    return EmulatedLab(inventory)


def cmd_lab_up(args: argparse.Namespace, inventory: Inventory) -> int:
    started = time.monotonic()
    statuses = _lab(inventory).up()
    print(f"lab '{inventory.lab.name}' up in {time.monotonic() - started:.2f} s")
    return _print_status(statuses)


def cmd_lab_down(args: argparse.Namespace, inventory: Inventory) -> int:
    started = time.monotonic()
    _lab(inventory).down()
    print(f"lab '{inventory.lab.name}' down in {time.monotonic() - started:.2f} s")
    return 0


def cmd_lab_status(args: argparse.Namespace, inventory: Inventory) -> int:
    return _print_status(_lab(inventory).status())


def _print_status(statuses) -> int:  # type: ignore[no-untyped-def]
    rows = [[s.name, s.address, "up" if s.up else "DOWN", "yes" if s.sshd else "no", "yes" if s.console else "no",
             " ".join(f"{k}={v}" for k, v in s.limits.items()) or "-", s.clock or "-"] for s in statuses]
    print(_table(rows, ["DEVICE", "ADDRESS", "STATE", "SSHD", "CONSOLE", "LIMITS", "CLOCK"]))
    return 0 if all(s.up for s in statuses) else EXIT_INFRA


def cmd_devices_list(args: argparse.Namespace, inventory: Inventory) -> int:
    rows = [[d.name, ",".join(d.tags), f"{d.ssh.user}@{d.ssh.host}:{d.ssh.port}", d.serial.port if d.serial else "-",
             d.workdir] for d in inventory.devices]
    print(_table(rows, ["DEVICE", "TAGS", "SSH", "SERIAL", "WORKDIR"]))
    return 0


def cmd_devices_check(args: argparse.Namespace, inventory: Inventory) -> int:
    chosen = inventory.select(args.names)
    if any(d.emulated for d in chosen):
        _lab(inventory).ensure_up([d.name for d in chosen if d.emulated])
    rows = []
    for config in chosen:
        device = Device(config)
        health = device.health()
        device.close()
        facts = health.details.get("facts", {})
        rows.append([config.name, "ok" if health.ok else "UNHEALTHY", f"{health.seconds:.2f}s",
                     facts.get("onnxruntime", "-"), facts.get("clock_offset", "-"),
                     "; ".join(health.problems + health.warnings) or "-"])
    print(_table(rows, ["DEVICE", "HEALTH", "TIME", "ONNXRUNTIME", "CLOCK", "PROBLEMS"]))
    return 0 if all(r[1] == "ok" for r in rows) else EXIT_INFRA


def _device(inventory: Inventory, name: str) -> Device:
    config = inventory.get(name)
    if config.emulated:
        _lab(inventory).ensure_up([name])
    return Device(config)


def cmd_facts(args: argparse.Namespace, inventory: Inventory) -> int:
    device = _device(inventory, args.name)
    print(json.dumps(device.facts().summary(), indent=2))
    device.close()
    return 0


def cmd_run(args: argparse.Namespace, inventory: Inventory) -> int:
    device = _device(inventory, args.name)
    command = " ".join(args.command)
    result = device.console(command, timeout=args.timeout) if args.serial else device.run(command, timeout=args.timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    device.close()
    return result.exit_status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hil", description="hardware-in-the-loop validation for edge AI")
    parser.add_argument("--devices", default="devices.toml", help="devices.toml of the lab (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what hil does")
    sub = parser.add_subparsers(dest="command", required=True)

    lab = sub.add_parser("lab", help="the emulated lab").add_subparsers(dest="lab_command", required=True)
    lab.add_parser("up", help="build the emulated devices (idempotent; repairs a stale lab)").set_defaults(
        func=cmd_lab_up)
    lab.add_parser("down", help="remove every trace of the emulated lab").set_defaults(func=cmd_lab_down)
    lab.add_parser("status", help="what runs now").set_defaults(func=cmd_lab_status)

    devices = sub.add_parser("devices", help="the devices of devices.toml").add_subparsers(
        dest="devices_command", required=True)
    devices.add_parser("list", help="list devices").set_defaults(func=cmd_devices_list)
    check = devices.add_parser("check", help="health-check devices")
    check.add_argument("names", nargs="*", metavar="NAME")
    check.set_defaults(func=cmd_devices_check)

    facts = sub.add_parser("facts", help="what a device is (JSON)")
    facts.add_argument("name", metavar="DEVICE")
    facts.set_defaults(func=cmd_facts)

    run = sub.add_parser("run", help="run a command on a device: hil run DEVICE -- CMD...")
    run.add_argument("name", metavar="DEVICE")
    run.add_argument("command", nargs="+", metavar="CMD")
    run.add_argument("--timeout", type=float, default=60.0)
    run.add_argument("--serial", action="store_true", help="over the serial console instead of SSH")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace, Inventory], int] = args.func
    try:
        return func(args, load_inventory(args.devices))
    except ConfigError as exc:
        print(f"hil: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InfraError as exc:
        print(f"hil: infrastructure error: {exc}", file=sys.stderr)
        return EXIT_INFRA
    except HilError as exc:
        print(f"hil: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("hil: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
