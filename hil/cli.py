"""`hil`: the library from a shell. Exit codes: hil.exit_codes (0 ok, 1 a command or budget failed, 2 bad input,
4 a measurement too inconclusive to judge, 75 infrastructure)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hil
from hil import rollout
from hil.budgets import temper
from hil.config import DEVICES_ENV, DeviceConfig, Inventory, load_inventory
from hil.device import Device
from hil.errors import ConfigError, HilError, InfraError
from hil.exit_codes import Exit
from hil.exit_codes import table as exit_table
from hil.lease import LeaseInfo, holder_of
from hil.pool import DEFAULT_LEASE_TIMEOUT
from hil.report import evidence, gate, html

EXIT_FAILED, EXIT_USAGE, EXIT_INFRA = Exit.FAILED, Exit.USAGE, Exit.INFRASTRUCTURE


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


def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True, default=str))


def cmd_lab_status(args: argparse.Namespace, inventory: Inventory) -> int:
    return _print_status(_lab(inventory).status(), getattr(args, "json", False))


def _print_status(statuses, as_json: bool = False) -> int:  # type: ignore[no-untyped-def]
    if as_json:
        _print_json([{**dataclasses.asdict(s), "up": s.up} for s in statuses])
    else:
        rows = [[s.name, s.address, "up" if s.up else "DOWN", "yes" if s.sshd else "no",
                 "yes" if s.console else "no", " ".join(f"{k}={v}" for k, v in s.limits.items()) or "-",
                 s.clock or "-"] for s in statuses]
        print(_table(rows, ["DEVICE", "ADDRESS", "STATE", "SSHD", "CONSOLE", "LIMITS", "CLOCK"]))
    return 0 if all(s.up for s in statuses) else EXIT_INFRA


def cmd_devices_list(args: argparse.Namespace, inventory: Inventory) -> int:
    def ssh(d: DeviceConfig) -> str:
        user = f"{d.ssh.user}@" if d.ssh.user else ""
        port = f":{d.ssh.port}" if d.ssh.port else ""
        jump = f" via {d.ssh.jump}" if d.ssh.jump else ""
        return f"{user}{d.ssh.host}{port}{jump}"

    holders = {d.name: _lease_holder(inventory, d) for d in inventory.devices} if args.leases else {}
    if args.json:
        docs = [{"name": d.name, "tags": list(d.tags), "emulated": d.emulated, "ssh": ssh(d),
                 "serial": d.serial.port if d.serial else None, "workdir": d.workdir} for d in inventory.devices]
        for doc in docs if args.leases else ():
            holder = holders[doc["name"]]
            # Free: null; held: who, which run, since when; unknown: why it could not be read.
            doc["lease"] = dataclasses.asdict(holder) if isinstance(holder, LeaseInfo) else \
                None if holder is None else {"unknown": holder}
        _print_json(docs)
        return 0
    rows = [[d.name, ",".join(d.tags), ssh(d), d.serial.port if d.serial else "-",
             d.workdir or "(default)"] for d in inventory.devices]
    header = ["DEVICE", "TAGS", "SSH", "SERIAL", "WORKDIR"]
    if args.leases:
        header.append("LEASED BY")
        for row, config in zip(rows, inventory.devices, strict=True):
            holder = holders[config.name]
            row.append(str(holder) if isinstance(holder, LeaseInfo) else "free" if holder is None else holder)
    print(_table(rows, header))
    return 0


def _lease_holder(inventory: Inventory, config: DeviceConfig) -> LeaseInfo | str | None:
    """Who holds the device's lease (None: free), or why that could not be read."""
    try:
        device = _device(inventory, config.name)
        try:
            return holder_of(device)
        finally:
            device.close()
    except HilError as exc:
        return f"? ({type(exc).__name__}: {exc})"


def _holder_or_none(device: Device) -> LeaseInfo | None:
    try:
        return holder_of(device)
    except HilError:
        return None  # unreachable: the health check says so


def cmd_devices_check(args: argparse.Namespace, inventory: Inventory) -> int:
    chosen = inventory.select(args.names)
    if any(d.emulated for d in chosen):
        _lab(inventory).ensure_up([d.name for d in chosen if d.emulated])
    from hil.faults import pending, sweep

    rows: list[list[str]] = []
    docs: list[dict[str, Any]] = []
    for config in chosen:
        device = Device(config)
        # A console is exclusive: a run holding the device may have it open, so it is not ours to check.
        holder = _holder_or_none(device)
        cleared: list[str] = []
        if holder is None:
            # Nobody holds it: what an earlier run left (in the ledger or only in the kernel) is cleared
            # first, as a run start does, and said; faults of a live run on this host are spared.
            try:
                cleared = [f"cleared a leftover: {r.describe()}" for r in sweep(device)]
            except HilError as exc:
                cleared = [f"leftover faults could not be cleared: {exc}"]
        health = device.health(console=holder is None)
        # Read-only on a leased device: its holder may have applied them; `hil faults clear` undoes them.
        left = [f"fault {r.kind} left applied (run {r.run_id or '?'}): `hil faults clear {config.name}`"
                for r in pending(device)] if health.ok else []
        if any(c.startswith("leftover faults could not") for c in cleared):
            health = dataclasses.replace(health, ok=False, problems=(*health.problems, *cleared))
            cleared = []
        device.close()
        facts = health.details.get("facts", {})
        busy = [f"leased by {holder}: serial console not checked"] if holder is not None else []
        # Faults on a leased device may be the holder's test at work: not a reason to call it unhealthy.
        healthy = health.ok and (not left or holder is not None)
        rows.append([config.name, "ok" if healthy else "UNHEALTHY", f"{health.seconds:.2f}s",
                     facts.get("onnxruntime", "-"), facts.get("clock_offset", "-"),
                     "; ".join([*health.problems, *left, *cleared, *health.warnings, *busy]) or "-"])
        docs.append({"name": config.name, "healthy": healthy, "seconds": round(health.seconds, 3),
                     "onnxruntime": facts.get("onnxruntime"), "clock_offset": facts.get("clock_offset"),
                     "problems": [*health.problems, *left], "cleared": cleared, "warnings": list(health.warnings),
                     "leased_by": dataclasses.asdict(holder) if holder is not None else None})
    if args.json:
        _print_json(docs)
    else:
        print(_table(rows, ["DEVICE", "HEALTH", "TIME", "ONNXRUNTIME", "CLOCK", "PROBLEMS / WARNINGS"]))
    return 0 if all(r[1] == "ok" for r in rows) else EXIT_INFRA


def _device(inventory: Inventory, name: str) -> Device:
    """The device, connected on first use, without a lease: for commands that only read it."""
    config = inventory.get(name)
    if config.emulated:
        _lab(inventory).ensure_up([name])
    return Device(config)


@contextlib.contextmanager
def _held(args: argparse.Namespace, inventory: Inventory, name: str) -> Iterator[Device]:
    """The device under this command's lease (hil.pool): a command that changes a device or measures on
    it never works under a run that holds it; it waits up to --lease-timeout, then says who holds it."""
    from hil.pool import DevicePool

    if inventory.get(name).emulated:
        _lab(inventory).ensure_up([name])
    with DevicePool(inventory, lease_timeout=args.lease_timeout).held(name) as device:
        yield device


def cmd_facts(args: argparse.Namespace, inventory: Inventory) -> int:
    device = _device(inventory, args.name)
    print(json.dumps(device.facts().summary(), indent=2))
    device.close()
    return 0


def cmd_run(args: argparse.Namespace, inventory: Inventory) -> int:
    command = " ".join(args.command)
    with (contextlib.closing(_device(inventory, args.name)) if args.no_lease
          else _held(args, inventory, args.name)) as device:
        result = device.console(command, timeout=args.timeout) if args.serial else \
            device.run(command, timeout=args.timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
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


def _budget_options(items: list[str]) -> dict[str, dict[str, float]]:
    """['rpi.latency_p99_ms=20', 'rpi.memory_mib='] -> {'rpi': {'latency_p99_ms': 20.0, 'memory_mib': 0.0}}
    (0 or nothing after '=' removes that budget)."""
    budgets: dict[str, dict[str, float]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        tag, dot, key = target.partition(".")
        try:
            number = float(value) if value else 0.0
        except ValueError:
            number = -1.0
        if not sep or not dot or not tag or not key or number < 0:
            raise ConfigError(f"--budget '{item}' is not TAG.KEY=NUMBER (e.g. rpi.latency_p99_ms=20; "
                              "TAG.KEY= removes it); the keys are listed in docs/checks.md")
        budgets.setdefault(tag, {})[key] = number
    return budgets


def _eval_options(args: argparse.Namespace) -> dict[str, Any]:
    """The [eval] keys given on the command line (the others are kept from the manifest)."""
    from hil.eval_contract import parse_dims

    given: dict[str, Any] = {"data": args.eval_data, "task": args.task, "labels": args.labels,
                             "output": args.output, "top_k": args.top_k, "tolerance": args.tolerance,
                             "reference": args.reference, "agreement": args.agreement, "parent": args.parent}
    if args.input_key:
        given["inputs"] = _input_keys(args)
    if args.dim:
        given["dims"] = parse_dims(args.dim, "--dim")
    return {k: v for k, v in given.items() if v is not None}


def _input_keys(args: argparse.Namespace) -> dict[str, str]:
    from hil.artifacts import describe_model

    keys: dict[str, str] = {}
    for item in args.input_key:
        name, sep, key = item.partition("=")
        if not sep:  # KEY alone: the model's only input
            inputs = describe_model(Path(args.dir) / "model.onnx")[1]
            if len(inputs) != 1:
                raise ConfigError(f"--input-key {item}: the model has {len(inputs)} inputs "
                                  f"({', '.join(t.name for t in inputs)}); give INPUT=KEY for each")
            name, key = inputs[0].name, item
        keys[name] = key
    return keys


def cmd_artifact_init(args: argparse.Namespace, inventory: Inventory | None) -> int:
    from hil.artifacts import init_manifest
    from hil.errors import ArtifactRejected

    try:
        manifest = init_manifest(Path(args.dir), args.name, args.version,
                                 tuple(args.provider) if args.provider else None, _budget_options(args.budget),
                                 _eval_options(args))
    except ArtifactRejected as exc:  # bad input on the command line, not a rejected release
        raise ConfigError(str(exc)) from None
    contract = f", eval: {manifest.eval.task} on {manifest.eval.data}" if manifest.eval else ", no [eval]"
    budgets = sum(len(v) for v in manifest.budgets.values())
    print(f"wrote {Path(args.dir) / 'manifest.toml'} for {manifest.label} (opset {manifest.opset}, "
          f"{budgets} budget(s){contract}); sign it next")
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
        keys = [load_public_key(p) for p in load_inventory(args.devices, require_devices=False).deploy.trusted_keys]
    artifact = load_artifact(Path(args.dir))
    signer = verify(artifact, keys)
    print(f"{artifact.label}: OK (signed by {signer}, sha256 and size match)")
    return 0


def cmd_deploy(args: argparse.Namespace, inventory: Inventory | None) -> int:
    from hil.artifacts import load_artifact
    from hil.deploy import deploy_as_configured

    inventory = _inventory(args)
    artifact = load_artifact(Path(args.dir))
    with _held(args, inventory, args.name) as device:
        result = deploy_as_configured(inventory.deploy, device, artifact,
                                      allow_provider_fallback=args.allow_cpu_fallback,
                                      progress=_progress_printer(artifact.label))
    if result.fallback:
        print(f"note: {result.fallback}", file=sys.stderr)
    if args.json:
        _print_json(dataclasses.asdict(result))
        return 0
    state = "already active, nothing sent" if result.already_active else \
        f"activated, {result.transferred_bytes} bytes sent (resumed from {result.resumed_from})"
    print(f"{args.name}: {artifact.manifest.label}: {state} in {result.seconds:.2f} s -> {result.model_path}")
    return 0


def cmd_rollback(args: argparse.Namespace, inventory: Inventory | None) -> int:
    from hil.deploy import rollback

    with _held(args, _inventory(args), args.name) as device:
        record = rollback(device, args.model)
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


def cmd_faults(args: argparse.Namespace, inventory: Inventory) -> int:
    from hil.faults import pending, sweep, unrecorded

    # Both look at the kernel's state too: a rule, qdisc or fill file of hil's with no ledger entry.
    if args.faults_command == "clear":  # under the lease: never the faults of a run that holds the device
        with _held(args, inventory, args.name) as device:
            records = sweep(device, spare_live_runs=False)
    else:
        with contextlib.closing(_device(inventory, args.name)) as device:
            records = pending(device) + unrecorded(device)
    verb = "undone" if args.faults_command == "clear" else "applied"
    if args.json:
        _print_json([{"id": r.id, "kind": r.kind, "params": r.params, "applied_at": r.applied_at, "run_id": r.run_id,
                      "found_in_kernel_only": r.extra.get("found")} for r in records])
        return 0
    if not records:
        print(f"{args.name}: no faults {verb}")
    for r in records:
        if r.extra.get("found"):
            print(f"{args.name}: {verb}: {r.id} {r.kind} (found in the kernel, no ledger entry: "
                  f"{'; '.join(r.extra['found'])})")
        else:
            print(f"{args.name}: {verb}: {r.id} {r.kind} {json.dumps(r.params)} (applied {r.applied_at}, "
                  f"run {r.run_id or '?'})")
    return 0


def cmd_lease(args: argparse.Namespace, inventory: Inventory) -> int:
    """Hold the device's lease around a local command (manual work that no test run may disturb)."""
    import subprocess

    from hil.faults.ledger import run_id
    from hil.lease import SHARED_RUN_ENV, Lease

    device = _device(inventory, args.name)
    try:
        with Lease(device, f"manual-{run_id()}", timeout=args.timeout) as lease:
            print(f"{args.name}: leased to {lease.info}", file=sys.stderr)
            # The command (a pytest run, a hil command) works under this lease instead of waiting for it.
            return subprocess.call(args.command, env={**os.environ, SHARED_RUN_ENV: lease.info.run_id})
    finally:
        device.close()


def cmd_reboot(args: argparse.Namespace, inventory: Inventory) -> int:
    with _held(args, inventory, args.name) as device:
        result = device.reboot(timeout=args.timeout)
    down = f"down after {result.down_after:.1f} s, " if result.down_after is not None else ""
    print(f"{args.name}: rebooted: {down}back (SSH answering, facts re-read) after {result.seconds:.1f} s")
    return 0


# -- hil bench: the latency suite's measurement for one device and artifact, from a shell ---------

EXIT_INCONCLUSIVE = Exit.INCONCLUSIVE  # bench, eval: a budget neither passed nor failed on these samples


def _bench_print(doc: dict[str, Any]) -> None:
    lat = doc["latency"]
    where = f"{doc['device']} (emulated)" if doc["emulated"] else doc["device"]
    print(f"{where}: {doc['model']} {doc['version']} (sha256 {doc['sha256']}), onnxruntime {doc['onnxruntime']}")
    print(f"providers {','.join(doc['providers'])}, batch {doc['batch']}, {doc['threads']} intra-op thread(s), "
          f"stop: {doc['stop']['reason']}{' (adaptive)' if doc['stop']['adaptive'] else ''}\n")
    ms = [[k, f"{lat[f'{k}_ms']:.4f} ms"] for k in ("min", "mean", "p50", "p90", "p95", "p99", "max")]
    rows = [["count", str(lat["count"])], *ms, ["throughput", f"{lat['throughput_ips']:.1f} items/s"],
            ["cv", f"{100 * lat['cv']:.1f}%"],
            ["cold start", f"{doc['cold_start_ms']:.2f} ms (session creation + first inference)"],
            ["session creation", f"{doc['session_create_ms']:.2f} ms"],
            ["first inference", f"{doc['first_inference_ms']:.2f} ms"], ["peak RSS", f"{doc['peak_rss_mib']:.1f} MiB"]]
    print(_table(rows, ["METRIC", "VALUE"]))
    if doc["verdicts"]:
        print()
        print(_table([[v["verdict"], v["source"], v["text"]] for v in doc["verdicts"]],
                     ["VERDICT", "SOURCE", "MEASUREMENT"]))
    else:
        print("\nno budgets for this device's tags (and no --limit-ms): nothing judged")


def cmd_bench(args: argparse.Namespace, inventory: Inventory) -> int:
    """Deploy, then measure latency like suites/test_latency.py; exit 0 all PASS (or none), 1 FAIL, 4 INCONCLUSIVE."""
    from hil import bench
    from hil.artifacts import load_artifact
    from hil.budgets import Context, budgets_for_tags
    from hil.deploy import DeployedModel, deploy_as_configured
    from hil.eval_contract import parse_dims
    from hil.evaluation import latency_inputs
    from hil.runner import StopWhen, run_latency
    from hil.stats import summarize

    if not 0 < args.quantile < 100:
        raise ConfigError(f"--quantile must be between 0 and 100 (exclusive), got {args.quantile:g}")
    artifact = load_artifact(Path(args.dir))
    inputs = latency_inputs(artifact, parse_dims(args.dim, "--dim") or None)
    with _held(args, inventory, args.name) as device:
        result = deploy_as_configured(inventory.deploy, device, artifact)
        spec = budgets_for_tags(artifact.manifest.budgets, device.config.tags)
        extra = (args.quantile, args.limit_ms) if args.limit_ms is not None else None
        limits = bench.percentile_limits(spec, extra)
        threads = args.threads or bench.threads_for(device)
        stop = bench.adaptive_stop(limits, args.max_iterations)
        run = run_latency(DeployedModel(device, artifact, result), batch=args.batch, warmup=args.warmup,
                          min_iterations=args.min_iterations, min_duration_s=args.min_duration,
                          max_iterations=args.max_iterations if stop else None,
                          max_duration_s=args.max_duration if stop else None, threads=threads,
                          stop_when=StopWhen(stop.q, stop.limit_ms, bench.CONFIDENCE) if stop else None, **inputs)
        warnings = device.timing_warnings()
    m = artifact.manifest
    context = Context(device.name, m.name, m.version, m.sha256,
                      str(run.context.runner_env.get("onnxruntime", "unknown")), device.config.emulated)
    # Throughput over the loop's wall time: the loop's own overhead counts, as it would for a service.
    summary = summarize(run.latencies_ms, run.batch, run.cpu.wall_s or None)
    # A governor or a hot device voids a timing FAIL: INCONCLUSIVE, with the reason in the note.
    verdicts = [(temper(m, warnings), source) for m, source in bench.verdicts(run, summary, spec, limits, stop)]
    doc = bench.document(run, summary, context, threads, verdicts, stop)
    doc["timing_warnings"] = warnings
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _bench_print(doc)
    for message in doc["messages"]:
        print(f"hil: {message}", file=sys.stderr)
    return {"FAIL": EXIT_FAILED, "INCONCLUSIVE": EXIT_INCONCLUSIVE}.get(str(doc["verdict"]), 0)


def cmd_eval(args: argparse.Namespace, inventory: Inventory) -> int:
    """Deploy, run the artifact's eval contract on the device, judge it; exit 0 PASS, 1 FAIL, 4 INCONCLUSIVE."""
    from hil.artifacts import load_artifact
    from hil.budgets import Verdict, budgets_for_tags
    from hil.deploy import DeployedModel, deploy_as_configured
    from hil.evaluation import (
        NoEvalContract,
        accuracy_checks,
        contract_of,
        evaluate,
        parent_of,
        relative_accuracy_check,
    )

    artifact = load_artifact(Path(args.dir))
    try:
        contract = contract_of(artifact)
    except NoEvalContract as exc:
        raise ConfigError(str(exc)) from None
    with _held(args, inventory, args.name) as device:
        def deployed(what: Any) -> DeployedModel:
            return DeployedModel(device, what, deploy_as_configured(inventory.deploy, device, what))

        evaluation = evaluate(deployed(artifact))
        judged = accuracy_checks(evaluation, budgets_for_tags(artifact.manifest.budgets, device.config.tags))
        if contract.parent is not None:
            parent = parent_of(artifact)
            judged.checks.append(relative_accuracy_check(evaluation, evaluate(deployed(parent))))
            deployed(artifact)  # leave the model under test active
    verdicts = {m.verdict for m in judged.checks}
    verdict = Verdict.FAIL if Verdict.FAIL in verdicts else \
        Verdict.INCONCLUSIVE if Verdict.INCONCLUSIVE in verdicts else Verdict.PASS if verdicts else None
    m = artifact.manifest
    doc = {"device": device.name, "emulated": device.config.emulated, "model": m.name, "version": m.version,
           "sha256": m.sha256, "task": contract.task, "data": contract.data, "samples": judged.samples,
           "checks": [c.to_dict() for c in judged.checks], "metrics": judged.metrics,
           "verdict": verdict.value if verdict else None}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{device.name}: {m.name} {m.version} (sha256 {m.sha256}), {contract.task} on {contract.data}, "
              f"{judged.samples} samples\n")
        rows = [[c.verdict.value, str(c)] for c in judged.checks]
        rows += [["-", f"{name} = {value:.6g} (no budget)"] for name, value in judged.metrics.items()]
        print(_table(rows, ["VERDICT", "MEASUREMENT"]))
    return {Verdict.FAIL: EXIT_FAILED, Verdict.INCONCLUSIVE: EXIT_INCONCLUSIVE}.get(verdict, 0) if verdict else 0


def rollout_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `hil rollout` (the top-level --devices gives devices.toml)."""
    parser.add_argument("artifact_dir", metavar="ARTIFACT_DIR", help="the signed artifact to roll out")
    parser.add_argument("--tags", default=None, metavar="TAG[,TAG]", help="targets: devices having all these tags")
    parser.add_argument("--device", dest="names", action="append", default=[], metavar="NAME",
                        help="targets: this device (repeatable; with --tags it must have them too)")
    parser.add_argument("--canary", type=int, required=True, metavar="N", help="devices in the first phase")
    parser.add_argument("--phases", default="100%", metavar="P%,...,100%",
                        help="after the canary: at least ceil(P%% of targets) updated by the end of each phase "
                             "(default: %(default)s)")
    parser.add_argument("--acceptance", default=None, metavar='"PYTEST ARGS"',
                        help="the acceptance suite, run per phase on its devices (use --acceptance=-x... for args "
                             "starting with '-'); default: none, the deploy alone gates")
    parser.add_argument("--lease-timeout", type=float, default=DEFAULT_LEASE_TIMEOUT, metavar="S",
                        help="wait this long for a device another run holds (default: %(default)g)")
    parser.add_argument("--acceptance-timeout", type=float, default=3600.0, metavar="S",
                        help="a phase's acceptance run is failed after this long (default: %(default)s)")
    parser.add_argument("--report-dir", default=None, metavar="DIR",
                        help="for phase-N.log and rollout.json (default: reports/rollout-<UTC timestamp>)")
    parser.add_argument("--allow-cpu-fallback", action="store_true",
                        help="deploy even when the manifest's execution providers are missing, running on CPU")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")


def cmd_rollout(args: argparse.Namespace, inventory: Inventory) -> int:
    """Plan, then (unless --dry-run) run the rollout engine (hil.rollout), printing its progress."""
    try:
        tags = rollout.parse_tags(args.tags)
        state = rollout.prepare(
            inventory, Path(args.artifact_dir), tags=tags, names=args.names, canary=args.canary, phases=args.phases,
            acceptance=args.acceptance, lease_timeout=args.lease_timeout, acceptance_timeout=args.acceptance_timeout,
            allow_cpu_fallback=args.allow_cpu_fallback,
            report_dir=Path(args.report_dir) if args.report_dir else rollout.default_report_dir(),
            say=lambda text: print(text, flush=True))
    except HilError as exc:
        print(f"hil rollout: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(rollout.plan_text(state, tags), flush=True)
    if args.dry_run:
        return Exit.OK
    try:
        state.options.report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"hil rollout: error: --report-dir: {exc}", file=sys.stderr)
        return EXIT_USAGE
    code = rollout.execute(state)
    print(rollout.summary_text(state, code), flush=True)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hil", description="hardware-in-the-loop validation for edge AI",
                                     epilog="exit codes (every command):\n" + exit_table(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default=os.environ.get(DEVICES_ENV, "devices.toml"),
                        help=f"devices.toml of the lab (default: ${DEVICES_ENV}, else ./devices.toml; "
                             "now: %(default)s)")
    parser.add_argument("--version", action="version", version=f"hil {hil.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what hil does")
    parser.add_argument("--lease-timeout", type=float, default=DEFAULT_LEASE_TIMEOUT, metavar="S",
                        help="a command that changes or measures a device first takes its lease: wait this long "
                             "for a run that holds it (default: %(default)g s)")
    sub = parser.add_subparsers(dest="command", required=True)

    lab = sub.add_parser("lab", help="the emulated lab").add_subparsers(dest="lab_command", required=True)
    lab.add_parser("up", help="build the emulated devices (idempotent; repairs a stale lab)").set_defaults(
        func=cmd_lab_up)
    lab.add_parser("down", help="remove every trace of the emulated lab").set_defaults(func=cmd_lab_down,
                                                                                         needs_devices=False)
    lab_status = lab.add_parser("status", help="what runs now")
    lab_status.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    lab_status.set_defaults(func=cmd_lab_status)

    devices = sub.add_parser("devices", help="the devices of devices.toml").add_subparsers(
        dest="devices_command", required=True)
    listing = devices.add_parser("list", help="list devices")
    listing.add_argument("--leases", action="store_true", help="also ask each device who holds its lease")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    listing.set_defaults(func=cmd_devices_list)
    check = devices.add_parser("check", help="health-check devices")
    check.add_argument("names", nargs="*", metavar="NAME")
    check.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    check.set_defaults(func=cmd_devices_check)

    facts = sub.add_parser("facts", help="what a device is (JSON)")
    facts.add_argument("name", metavar="DEVICE")
    facts.set_defaults(func=cmd_facts)

    run = sub.add_parser("run", help="run a command on a device: hil run DEVICE -- CMD...")
    run.add_argument("name", metavar="DEVICE")
    run.add_argument("command", nargs="+", metavar="CMD")
    run.add_argument("--timeout", type=float, default=60.0)
    run.add_argument("--serial", action="store_true", help="over the serial console instead of SSH")
    run.add_argument("--no-lease", action="store_true",
                     help="do not take the device's lease (a look at a device a run holds: it may disturb that run)")
    run.set_defaults(func=cmd_run)
    faults = sub.add_parser("faults", help="the fault ledger of a device").add_subparsers(
        dest="faults_command", required=True)
    for name, text in (("list", "faults still applied"), ("clear", "undo every fault left applied")):
        cmd = faults.add_parser(name, help=text)
        cmd.add_argument("name", metavar="DEVICE")
        cmd.add_argument("--json", action="store_true", help="one JSON document instead of lines")
        cmd.set_defaults(func=cmd_faults)

    lease = sub.add_parser("lease", help="hold a device's lease around a command: hil lease DEVICE -- CMD...")
    lease.add_argument("name", metavar="DEVICE")
    lease.add_argument("command", nargs="+", metavar="CMD")
    lease.add_argument("--timeout", type=float, default=300.0, help="wait this long for the device to be free")
    lease.set_defaults(func=cmd_lease)

    reboot = sub.add_parser("reboot", help="reboot a device and wait until it is back")
    reboot.add_argument("name", metavar="DEVICE")
    reboot.add_argument("--timeout", type=float, default=None, help="default: the device's reboot_timeout")
    reboot.set_defaults(func=cmd_reboot)

    artifact = sub.add_parser("artifact", help="model artifacts: manifests and signatures").add_subparsers(
        dest="artifact_command", required=True)
    init = artifact.add_parser(
        "init", help="write an unsigned manifest for DIR/model.onnx (again: keeps what it is not told)",
        description="Write DIR/manifest.toml. Run again to change it: what is not given is kept. "
                    "Budget keys: docs/checks.md. The [eval] contract: docs/writing-suites.md.")
    init.add_argument("dir")
    init.add_argument("--name", help="required the first time")
    init.add_argument("--version", help="required the first time")
    init.add_argument("--provider", action="append", default=[], help="preferred execution provider, in order")
    init.add_argument("--budget", action="append", default=[], metavar="TAG.KEY=NUMBER",
                      help="a budget for devices tagged TAG, e.g. rpi.latency_p99_ms=20 (TAG.KEY= removes it)")
    contract = init.add_argument_group("evaluation contract ([eval]; files must lie inside DIR)")
    contract.add_argument("--eval-data", metavar="FILE.npz", help="eval inputs and labels, relative to DIR")
    contract.add_argument("--input-key", action="append", default=[], metavar="INPUT=KEY",
                          help="array of --eval-data for a model input (KEY alone for a one-input model)")
    contract.add_argument("--task", choices=("classification", "regression", "agreement"))
    contract.add_argument("--labels", metavar="KEY", help="array of the labels in --eval-data")
    contract.add_argument("--output", metavar="NAME", help="the model output that is judged")
    contract.add_argument("--top-k", type=int, help="classification: also measure top-k accuracy")
    contract.add_argument("--tolerance", type=float, help="regression: largest acceptable mean absolute error")
    contract.add_argument("--reference", metavar="FILE.npz", help="host reference outputs (output name -> array)")
    contract.add_argument("--agreement", choices=("close", "exact"), help="how closely to match --reference")
    contract.add_argument("--parent", metavar="DIR", help="an int8 model's fp32 parent artifact, relative to DIR")
    contract.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                          help="named dimension size for latency inputs, e.g. seq=128")
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
    dep.add_argument("--json", action="store_true", help="the deploy's result as one JSON document")
    dep.set_defaults(func=cmd_deploy, needs_inventory=False)
    back = sub.add_parser("rollback", help="re-activate the previous version: hil rollback DEVICE MODEL")
    back.add_argument("name", metavar="DEVICE")
    back.add_argument("model", metavar="MODEL")
    back.set_defaults(func=cmd_rollback, needs_inventory=False)
    stat = sub.add_parser("status", help="what is deployed on a device")
    stat.add_argument("name", metavar="DEVICE")
    stat.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    stat.set_defaults(func=cmd_status, needs_inventory=False)
    bench = sub.add_parser("bench", help="deploy, measure latency, judge the budgets: hil bench DEVICE ARTIFACT_DIR",
                           description="Exit status: 0 every budget PASS (or none), 1 a budget FAILED, "
                                       "4 INCONCLUSIVE (measure longer), 75 infrastructure.")
    bench.add_argument("name", metavar="DEVICE")
    bench.add_argument("dir", metavar="ARTIFACT_DIR")
    bench.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    bench.add_argument("--batch", type=int, default=1)
    bench.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the device's CPUs)")
    bench.add_argument("--warmup", type=int, default=50)
    bench.add_argument("--min-iterations", type=int, default=300)
    bench.add_argument("--min-duration", type=float, default=1.0, metavar="S")
    bench.add_argument("--max-iterations", type=int, default=50_000, help="an adaptive run's last look")
    bench.add_argument("--max-duration", type=float, default=30.0, metavar="S", help="an adaptive run's time cap")
    bench.add_argument("--quantile", type=float, default=99.0, help="percentile for --limit-ms (default: 99)")
    bench.add_argument("--limit-ms", type=float, default=None, help="a latency budget of your own, judged too")
    bench.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                       help="time random inputs with this named dimension size (e.g. seq=128) instead of rows "
                            "of the artifact's eval inputs")
    bench.set_defaults(func=cmd_bench)

    ev = sub.add_parser("eval", help="accuracy on the device against the artifact's eval contract: "
                                     "hil eval DEVICE ARTIFACT_DIR",
                        description="Deploy, run the artifact's [eval] inputs on the device, judge the outputs "
                                    "against its labels, reference and budgets. Exit status: 0 PASS, 1 FAIL, "
                                    "4 INCONCLUSIVE, 2 bad input (e.g. no [eval]), 75 infrastructure.")
    ev.add_argument("name", metavar="DEVICE")
    ev.add_argument("dir", metavar="ARTIFACT_DIR")
    ev.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    ev.set_defaults(func=cmd_eval)

    report = sub.add_parser("report", help="build the single-file HTML report from Allure results (Allure 3)")
    html.add_arguments(report)
    report.set_defaults(func=lambda a, _inventory: html.run(a), needs_inventory=False)
    gating = sub.add_parser("gate", help="compare this run's summary.json with the last good run's",
                            description="Exit status: 0 no regression, 1 a regression or a missing check, "
                                        "2 unusable input.")
    gate.add_arguments(gating)
    gating.set_defaults(func=lambda a, _inventory: gate.run(a), needs_inventory=False)
    evidence.add_arguments(sub)
    canary = sub.add_parser("rollout", help="deploy a model version phase by phase, canary first, with an "
                                            "acceptance suite; roll back on failure",
                            description="Exit status: 0 rolled out, 1 a phase failed (rolled back), 2 bad input, "
                                        "75 infrastructure stopped it (rolled back).")
    rollout_arguments(canary)
    canary.set_defaults(func=cmd_rollout)
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
        # `lab down` must work on a devices.toml whose devices are all gone: the rest refuse one (nothing to do).
        return func(args, load_inventory(args.devices, require_devices=getattr(args, "needs_devices", True))
                    if getattr(args, "needs_inventory", True) else None)
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
