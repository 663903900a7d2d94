"""`hil`: the library from a shell. Exit codes: 0 ok, 1 a command failed, 2 bad input, 3 infrastructure."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hil.config import DeviceConfig, Inventory, load_inventory
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
    def ssh(d: DeviceConfig) -> str:
        user = f"{d.ssh.user}@" if d.ssh.user else ""
        port = f":{d.ssh.port}" if d.ssh.port else ""
        jump = f" via {d.ssh.jump}" if d.ssh.jump else ""
        return f"{user}{d.ssh.host}{port}{jump}"

    rows = [[d.name, ",".join(d.tags), ssh(d), d.serial.port if d.serial else "-",
             d.workdir or "(default)"] for d in inventory.devices]
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


def _progress_printer(label: str) -> Callable[[int, int], None]:
    """A one-line progress display on stderr for transfers worth watching (over 4 MiB)."""
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if total < 4 * 2**20 or (now - last[0] < 0.2 and done < total):
            return
        last[0] = now
        end = "\n" if done >= total else ""
        print(f"\r{label}: {done / 2**20:.1f} / {total / 2**20:.1f} MiB ({100 * done / total:.0f}%)", end=end,
              file=sys.stderr, flush=True)

    return show


def cmd_artifact_init(args: argparse.Namespace, inventory: Inventory | None) -> int:
    from hil.artifacts import init_manifest

    manifest = init_manifest(Path(args.dir), args.name, args.version, tuple(args.provider))
    print(f"wrote {Path(args.dir) / 'manifest.toml'} for {manifest.label} (opset {manifest.opset}); sign it next")
    return 0


def cmd_artifact_keygen(args: argparse.Namespace, inventory: Inventory | None) -> int:
    from hil.artifacts import generate_key_pair

    generate_key_pair(Path(args.private), Path(args.public))
    print(f"wrote {args.private} (keep it secret) and {args.public} (list it under [deploy] trusted_keys)")
    return 0


def cmd_artifact_sign(args: argparse.Namespace, inventory: Inventory | None) -> int:
    from hil.artifacts import load_private_key, sign

    manifest = sign(Path(args.dir), load_private_key(Path(args.key)))
    assert manifest.signature is not None
    print(f"signed {manifest.label} (sha256 {manifest.sha256[:16]}...) with key {manifest.signature.key_id}")
    return 0


def cmd_artifact_verify(args: argparse.Namespace, inventory: Inventory | None) -> int:
    from hil.artifacts import load_artifact, load_public_key, verify

    if args.key:
        keys = [load_public_key(Path(k)) for k in args.key]
    else:
        keys = [load_public_key(p) for p in _inventory(args).deploy.trusted_keys]
    artifact = load_artifact(Path(args.dir))
    signer = verify(artifact, keys)
    print(f"{artifact.label}: OK (signed by {signer}, sha256 and size match)")
    return 0


def cmd_deploy(args: argparse.Namespace, inventory: Inventory | None) -> int:
    from hil.artifacts import load_artifact
    from hil.deploy import deploy, trusted_keys

    inventory = _inventory(args)
    device = _device(inventory, args.name)
    artifact = load_artifact(Path(args.dir))
    result = deploy(device, artifact, trusted_keys(inventory.deploy), keep=inventory.deploy.keep_versions,
                    margin_bytes=inventory.deploy.free_space_margin_bytes,
                    allow_provider_fallback=args.allow_cpu_fallback, progress=_progress_printer(artifact.label))
    device.close()
    if result.fallback:
        print(f"note: {result.fallback}", file=sys.stderr)
    state = "already active, nothing sent" if result.already_active else \
        f"activated, {result.transferred_bytes} bytes sent (resumed from {result.resumed_from})"
    print(f"{args.name}: {artifact.manifest.label}: {state} in {result.seconds:.2f} s -> {result.model_path}")
    return 0


def cmd_rollback(args: argparse.Namespace, inventory: Inventory | None) -> int:
    from hil.deploy import rollback

    device = _device(_inventory(args), args.name)
    record = rollback(device, args.model)
    device.close()
    print(f"{args.name}: {args.model} rolled back to {record.version} ({record.activated})")
    return 0


def cmd_status(args: argparse.Namespace, inventory: Inventory | None) -> int:
    from hil.deploy import status

    device = _device(_inventory(args), args.name)
    models = status(device)
    device.close()
    if args.json:
        print(json.dumps([m.as_dict() for m in models], indent=2))
        return 0
    rows = [[m.name, m.active or "-", str(len(m.versions)),
             f"{m.last.action} {m.last.time} by {m.last.by}" if m.last else "-"] for m in models]
    print(_table(rows, ["MODEL", "ACTIVE", "KEPT", "LAST"]))
    return 0


def cmd_reboot(args: argparse.Namespace, inventory: Inventory) -> int:
    device = _device(inventory, args.name)
    result = device.reboot(timeout=args.timeout)
    device.close()
    down = f"down after {result.down_after:.1f} s, " if result.down_after is not None else ""
    print(f"{args.name}: rebooted: {down}back (SSH answering, facts re-read) after {result.seconds:.1f} s")
    return 0


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
    reboot = sub.add_parser("reboot", help="reboot a device and wait until it is back")
    reboot.add_argument("name", metavar="DEVICE")
    reboot.add_argument("--timeout", type=float, default=None, help="default: the device's reboot_timeout")
    reboot.set_defaults(func=cmd_reboot)

    artifact = sub.add_parser("artifact", help="model artifacts: manifests and signatures").add_subparsers(
        dest="artifact_command", required=True)
    init = artifact.add_parser("init", help="write an unsigned manifest for DIR/model.onnx")
    init.add_argument("dir")
    init.add_argument("--name", required=True)
    init.add_argument("--version", required=True)
    init.add_argument("--provider", action="append", default=[], help="preferred execution provider, in order")
    init.set_defaults(func=cmd_artifact_init, needs_inventory=False)
    keygen = artifact.add_parser("keygen", help="make an ed25519 signing key pair")
    keygen.add_argument("private")
    keygen.add_argument("public")
    keygen.set_defaults(func=cmd_artifact_keygen, needs_inventory=False)
    sign = artifact.add_parser("sign", help="hash the model and sign the manifest")
    sign.add_argument("dir")
    sign.add_argument("--key", required=True, help="ed25519 private key (PEM)")
    sign.set_defaults(func=cmd_artifact_sign, needs_inventory=False)
    verify = artifact.add_parser("verify", help="check signature, sha256 and size")
    verify.add_argument("dir")
    verify.add_argument("--key", action="append", default=[],
                        help="trusted public key (default: [deploy] trusted_keys of devices.toml)")
    verify.set_defaults(func=cmd_artifact_verify, needs_inventory=False)

    dep = sub.add_parser("deploy", help="deploy an artifact: hil deploy DEVICE ARTIFACT_DIR")
    dep.add_argument("name", metavar="DEVICE")
    dep.add_argument("dir", metavar="ARTIFACT_DIR")
    dep.add_argument("--allow-cpu-fallback", action="store_true",
                     help="run on CPU when none of the manifest's execution providers is available")
    dep.set_defaults(func=cmd_deploy, needs_inventory=False)
    back = sub.add_parser("rollback", help="re-activate the previous version: hil rollback DEVICE MODEL")
    back.add_argument("name", metavar="DEVICE")
    back.add_argument("model", metavar="MODEL")
    back.set_defaults(func=cmd_rollback, needs_inventory=False)
    stat = sub.add_parser("status", help="what is deployed on a device")
    stat.add_argument("name", metavar="DEVICE")
    stat.add_argument("--json", action="store_true")
    stat.set_defaults(func=cmd_status, needs_inventory=False)
    return parser


def _inventory(args: argparse.Namespace) -> Inventory:
    return load_inventory(args.devices)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace, Inventory | None], int] = args.func
    try:
        # Artifact commands work without a devices.toml; the rest read it up front.
        return func(args, load_inventory(args.devices) if getattr(args, "needs_inventory", True) else None)
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
