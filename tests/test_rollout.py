"""Canary rollout: phase planning (no devices), then whole rollouts on a private 4-device emulated lab."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pytest

from hil.artifacts import Artifact, init_manifest, load_artifact, load_private_key, sign
from hil.cli import cmd_rollout as run_from_args
from hil.cli import rollout_arguments as add_arguments
from hil.config import Inventory, load_inventory
from hil.deploy import deploy, status, trusted_keys
from hil.device import Device
from hil.errors import DeviceBusy
from hil.lab import EmulatedLab
from hil.lease import SHARED_RUN_ENV, Lease, holder_of
from hil.rollout import (
    Options,
    RolloutUsageError,
    acceptance_command,
    parse_phases,
    plan_phases,
    select_targets,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "fixtures" / "models" / "digits-mlp"
DEMO_KEY = ROOT / "fixtures" / "keys" / "demo-ed25519.pem"
EVAL_DATA = ROOT / "fixtures" / "data" / "digits-eval.npz"
NAMES = ["roll-a", "roll-b", "roll-c", "roll-d"]

# Its own lab name and subnet: never the "hil" or "hiltest" labs others use.
ROLL_LAB_TOML = """
[lab]
name = "hilroll"
subnet = "10.77.7.0/24"

[deploy]
trusted_keys = ["{key}"]
""".format(key=ROOT / "fixtures" / "keys" / "demo-ed25519.pub") + "".join(f"""
[[devices]]
name = "{name}"
tags = ["jetson"]
emulated = true
cpus = 0.5
memory = "256MiB"
disk = "64MiB"
workdir = "/var/lib/hil"
""" for name in reversed(NAMES))  # listed out of order: the rollout sorts by name

# Top-1 of the model's `label` output on the held-out digits, computed on the device.
ACCEPTANCE_TEST = f"""
import numpy as np

from hil.runner import run_eval

EVAL = {str(EVAL_DATA)!r}


def test_top1_on_the_device(deployed_model):
    run = run_eval(deployed_model, EVAL, "x_flat", batch=120)
    with np.load(EVAL) as data:
        labels = data["labels"]
    top1 = float(np.mean(np.asarray(run.outputs["label"]) == labels))
    assert top1 >= 0.95, f"{{deployed_model.device.name}}: top-1 {{top1:.3f}} is under 0.95"
"""


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


# -- planning ------------------------------------------------------------------------------------


def _plan(total: int, canary: int, phases: str) -> list[tuple[str, list[str]]]:
    targets = [f"d{i:02d}" for i in range(total)]
    return [(p.label, list(p.devices)) for p in plan_phases(targets, canary, parse_phases(phases))]


def test_plan_canary_then_percentages_of_all_targets() -> None:
    assert _plan(4, 1, "50%,100%") == [("canary", ["d00"]), ("50%", ["d01"]), ("100%", ["d02", "d03"])]
    # ceil(25% of 10) = 3, ceil(50%) = 5: "at least that many updated by the end of the phase"
    assert [len(d) for _, d in _plan(10, 1, "25%,50%,100%")] == [1, 2, 2, 5]
    assert _plan(3, 2, "100%") == [("canary", ["d00", "d01"]), ("100%", ["d02"])]


def test_plan_drops_a_phase_the_earlier_ones_already_cover() -> None:
    assert _plan(4, 1, "25%,100%") == [("canary", ["d00"]), ("100%", ["d01", "d02", "d03"])]
    assert _plan(4, 2, "10%,50%,75%,100%") == [("canary", ["d00", "d01"]), ("75%", ["d02"]), ("100%", ["d03"])]


def test_plan_one_target_is_the_canary_alone() -> None:
    assert _plan(1, 1, "100%") == [("canary", ["d00"])]


def test_phase_percentages() -> None:
    assert parse_phases("25%, 100") == [25, 100]
    assert parse_phases("12.5%,100%") == [Fraction(25, 2), 100]


@pytest.mark.parametrize(("phases", "message"), [
    ("50%,25%,100%", "must increase"),
    ("50%,50%,100%", "must increase"),
    ("25%,50%", "last phase must be 100%"),
    ("0%,100%", "outside 1%..100%"),
    ("150%", "outside 1%..100%"),
    ("half,100%", "not a percentage"),
    ("", "not a percentage"),
])
def test_bad_phases_are_named(phases: str, message: str) -> None:
    with pytest.raises(RolloutUsageError, match=rf"^--phases: .*{message}"):
        parse_phases(phases)


@pytest.mark.parametrize(("total", "canary", "message"), [
    (4, 0, "at least 1"),
    (4, 4, "smaller than the number of targets"),
    (4, 9, "smaller than the number of targets"),
    (1, 2, "one target"),
])
def test_bad_canary_is_named(total: int, canary: int, message: str) -> None:
    with pytest.raises(RolloutUsageError, match=rf"^--canary: .*{message}"):
        _plan(total, canary, "100%")


TAGGED_TOML = """
[lab]
name = "hilroll"
subnet = "10.77.7.0/24"
""" + "".join(f"""
[[devices]]
name = "{name}"
tags = {tags}
emulated = true
""" for name, tags in [("z-jet", '["jetson", "orin"]'), ("a-pi", '["rpi"]'), ("m-jet", '["jetson"]')])


@pytest.fixture
def tagged(tmp_path: Path) -> Inventory:
    (tmp_path / "devices.toml").write_text(TAGGED_TOML)
    return load_inventory(tmp_path / "devices.toml")


def test_targets_by_tags_and_names_sorted(tagged: Inventory) -> None:
    names = lambda ds: [d.name for d in ds]  # noqa: E731
    assert names(select_targets(tagged, ["jetson"], [])) == ["m-jet", "z-jet"]
    assert names(select_targets(tagged, ["jetson", "orin"], [])) == ["z-jet"]
    assert names(select_targets(tagged, [], [])) == ["a-pi", "m-jet", "z-jet"]
    assert names(select_targets(tagged, [], ["z-jet", "a-pi", "z-jet"])) == ["a-pi", "z-jet"]
    with pytest.raises(RolloutUsageError, match=r"^--tags: no device .* has all of jetson,rpi"):
        select_targets(tagged, ["jetson", "rpi"], [])
    with pytest.raises(RolloutUsageError, match=r"^--device: a-pi lack"):
        select_targets(tagged, ["jetson"], ["a-pi", "m-jet"])
    with pytest.raises(RolloutUsageError, match=r"^--device: .*no device named 'nope'"):
        select_targets(tagged, [], ["nope"])


def test_acceptance_command_runs_the_phase_devices_under_the_plugin(tmp_path: Path) -> None:
    options = Options(MODEL, ["-q", "-k", "smoke and not slow", "suite/"], 30.0, 60.0, False, tmp_path)
    command = acceptance_command(options, tmp_path / "devices.toml", ["roll-b", "roll-c"], tmp_path / "p.xml")
    assert command[1:3] == ["-m", "pytest"]
    tail = command[command.index("suite/") + 1:]
    assert tail == ["--hil-devices", str(tmp_path / "devices.toml"), "--hil-device", "roll-b", "--hil-device",
                    "roll-c", "--hil-artifact", str(MODEL), "--hil-lease-timeout", "30",
                    "--hil-report-dir", str(tmp_path / "p"), "-p", "no:cacheprovider"]
    assert "smoke and not slow" in command


def test_dry_run_and_bad_input_never_touch_a_device(tagged: Inventory, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    # TAGGED_TOML trusts no key: even a good artifact is refused on the host, before any device is contacted.
    assert run_from_args(_args(str(MODEL), "--tags", "jetson", "--canary", "1", "--dry-run"), tagged) == 2
    assert "rejected: no trusted keys" in capsys.readouterr().err
    assert run_from_args(_args(str(MODEL), "--canary", "3"), tagged) == 2
    assert "--canary" in capsys.readouterr().err
    # With the demo key trusted: the plan of a good artifact, and a tampered one refused (exit 2).
    (tmp_path / "roll.toml").write_text(ROLL_LAB_TOML)
    trusting = load_inventory(tmp_path / "roll.toml")
    assert run_from_args(_args(str(MODEL), "--canary", "1", "--phases", "50%,100%", "--dry-run"), trusting) == 0
    plan = capsys.readouterr().out
    assert "digits-mlp 1.0.0" in plan and "signature verified" in plan
    assert [line.split()[:2] for line in plan.splitlines()[-3:]] == [["1", "canary"], ["2", "50%"], ["3", "100%"]]
    assert plan.splitlines()[-1].endswith("roll-c, roll-d")
    tampered = tmp_path / "tampered"
    shutil.copytree(MODEL, tampered)
    manifest = tampered / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "1.0.1"'))
    assert run_from_args(_args(str(tampered), "--canary", "1"), trusting) == 2
    assert "the signature does not match" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()  # stopped before anything, even a report directory


# -- on the emulated lab -------------------------------------------------------------------------


@dataclass(frozen=True)
class Releases:
    v1: Artifact
    good: Artifact
    bad: Artifact


def _release(directory: Path, version: str, *, off_by_one: bool = False) -> Artifact:
    """digits-mlp as another signed release; `off_by_one` maps every class to the next label (a real bug that
    loads, runs and matches the manifest, but fails accuracy)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    shutil.copytree(MODEL, directory)
    (directory / "info.json").unlink()  # it describes the original bytes
    model = onnx.load(str(directory / "model.onnx"))
    onnx.helper.set_model_props(model, {"hil.release": version})
    if off_by_one:
        classes = next(i for i in model.graph.initializer if i.name == "classes")
        classes.CopyFrom(numpy_helper.from_array(np.roll(numpy_helper.to_array(classes), 1), "classes"))
    onnx.save(model, str(directory / "model.onnx"))
    manifest = load_artifact(MODEL).manifest
    init_manifest(directory, manifest.name, version, manifest.providers, manifest.budgets)
    sign(directory, load_private_key(DEMO_KEY))
    return load_artifact(directory)


def _dir_of(artifact: Artifact) -> str:
    return f"{artifact.manifest.version}-{artifact.manifest.sha256[:12]}"


def _active(inventory: Inventory) -> dict[str, str | None]:
    """deploy.status of every device: its active digits-mlp version directory."""
    out = {}
    for config in inventory.devices:
        device = Device(config)
        try:
            out[config.name] = next((m.active for m in status(device) if m.name == "digits-mlp"), None)
        finally:
            device.close()
    return dict(sorted(out.items()))


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    base = tmp_path_factory.mktemp("releases")
    return Releases(load_artifact(MODEL), _release(base / "v2", "2.0.0"),
                    _release(base / "v3", "3.0.0", off_by_one=True))


@pytest.fixture(scope="module")
def roll_lab(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[Inventory]:
    """The private lab "hilroll", v1 of digits-mlp active on all four devices; down at the end."""
    if os.geteuid() != 0:
        pytest.skip("the emulated lab needs root")
    path = tmp_path_factory.mktemp("hilroll") / "devices.toml"
    path.write_text(ROLL_LAB_TOML)
    inventory = load_inventory(path)
    lab = EmulatedLab(inventory)
    try:
        lab.up()
        for config in inventory.devices:
            device = Device(config)
            try:
                deploy(device, releases.v1, trusted_keys(inventory.deploy))
            finally:
                device.close()
        yield inventory
    finally:
        lab.down()


@pytest.fixture
def acceptance(tmp_path: Path) -> str:
    (tmp_path / "test_accept.py").write_text(ACCEPTANCE_TEST)
    return f"-q {tmp_path / 'test_accept.py'}"


def _rollout(inventory: Inventory, artifact: Artifact, acceptance: str, report_dir: Path,
             lease_timeout: float = 20) -> int:
    return run_from_args(_args(str(artifact.directory), "--tags", "jetson", "--canary", "1", "--phases", "50%,100%",
                               "--acceptance", acceptance, "--lease-timeout", f"{lease_timeout:g}",
                               "--acceptance-timeout", "120", "--report-dir", str(report_dir)), inventory)


def _leases_free(inventory: Inventory) -> bool:
    devices = [Device(c) for c in inventory.devices]
    try:
        return all(holder_of(d) is None for d in devices)
    finally:
        for d in devices:
            d.close()


def test_a_child_of_the_holding_run_works_under_its_lease(roll_lab: Inventory,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    holder, child = Device(roll_lab.get("roll-d")), Device(roll_lab.get("roll-d"))
    try:
        with Lease(holder, "rollout-x", timeout=5):
            monkeypatch.setenv(SHARED_RUN_ENV, "rollout-x")
            joined = Lease(child, "child-run", timeout=1).acquire()
            assert joined.channel is None  # holds nothing of its own
            joined.release()
            holding = holder_of(child)
            assert holding is not None and holding.run_id == "rollout-x"
            monkeypatch.setenv(SHARED_RUN_ENV, "another-run")
            with pytest.raises(DeviceBusy):
                Lease(child, "child-run", timeout=1).acquire()
        assert holder_of(child) is None
    finally:
        holder.close()
        child.close()


def test_a_good_release_reaches_every_device_phase_by_phase(roll_lab: Inventory, releases: Releases, acceptance: str,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    before = _active(roll_lab)
    assert _rollout(roll_lab, releases.good, acceptance, tmp_path / "report") == 0
    out = capsys.readouterr().out
    assert _active(roll_lab) == dict.fromkeys(NAMES, _dir_of(releases.good))
    record = json.loads((tmp_path / "report" / "rollout.json").read_text())
    assert record["exit_code"] == 0 and record["outcome"] == "success"
    assert [(p["label"], p["devices"], p["result"]) for p in record["phases"]] == [
        ("canary", ["roll-a"], "passed"), ("50%", ["roll-b"], "passed"), ("100%", ["roll-c", "roll-d"], "passed")]
    for p in record["phases"]:  # each phase's acceptance ran on its own devices, under the rollout's leases
        log = Path(p["log"]).read_text()
        assert "1 passed" in log if p["label"] != "100%" else "2 passed" in log, log
    for d in record["devices"]:
        assert (d["before"], d["now"], d["result"]) == (before[d["name"]], _dir_of(releases.good), "updated")
    assert "rollout succeeded" in out and out.index("PHASE") < out.index("phase 1 (canary)")  # the plan first
    assert _leases_free(roll_lab)


def test_a_bad_canary_is_rolled_back_and_nothing_else_is_touched(roll_lab: Inventory, releases: Releases,
                                                                 acceptance: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    before = _active(roll_lab)
    assert _rollout(roll_lab, releases.bad, acceptance, tmp_path / "report") == 1
    out = capsys.readouterr().out
    assert _active(roll_lab) == before  # the canary is back on its version, the others never moved
    record = json.loads((tmp_path / "report" / "rollout.json").read_text())
    assert record["exit_code"] == 1 and "phase 1 (canary): acceptance failed" in record["reason"]
    assert [p["result"] for p in record["phases"]] == ["failed", "not reached", "not reached"]
    results = {d["name"]: (d["before"], d["now"], d["result"]) for d in record["devices"]}
    assert results["roll-a"] == (before["roll-a"], before["roll-a"], "rolled back")
    for name in NAMES[1:]:
        assert results[name] == (None, before[name], "not reached")
    assert "is under 0.95" in out  # the tail of the failing acceptance log
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("roll-")}
    assert rows["roll-a"][1:5] == ["1", before["roll-a"], before["roll-a"], "rolled"]
    assert rows["roll-d"][1:5] == ["3", "-", before["roll-d"], "not"]
    # Touched: the canary got 3.0.0 and went back. Untouched: no trace of 3.0.0 on the others.
    for config in roll_lab.devices:
        device = Device(config)
        try:
            model = next(m for m in status(device) if m.name == "digits-mlp")
        finally:
            device.close()
        has_bad = _dir_of(releases.bad) in model.versions
        assert has_bad == (config.name == "roll-a")
        assert model.last is not None and model.last.action == ("rollback" if has_bad else "deploy")
    assert _leases_free(roll_lab)


def test_a_busy_device_stops_the_rollout_and_earlier_phases_are_rolled_back(
        roll_lab: Inventory, releases: Releases, acceptance: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    before = _active(roll_lab)
    # Any release other than the active one: the canary passes, then phase 2 finds roll-b held by another run.
    target = releases.v1 if before["roll-a"] != _dir_of(releases.v1) else releases.good
    other = Device(roll_lab.get("roll-b"))
    try:
        with Lease(other, "someone-else", timeout=5):
            code = _rollout(roll_lab, target, acceptance, tmp_path / "report", lease_timeout=1)
    finally:
        other.close()
    capsys.readouterr()
    assert code == 75  # infrastructure (hil.exit_codes), as a pytest run says it
    assert _active(roll_lab) == before  # the canary, updated and accepted in phase 1, is back too
    record = json.loads((tmp_path / "report" / "rollout.json").read_text())
    assert [p["result"] for p in record["phases"]] == ["passed", "stopped", "not reached"]
    results = {d["name"]: d["result"] for d in record["devices"]}
    assert results["roll-a"] == "rolled back"
    assert results["roll-b"].startswith("failed: device 'roll-b' is leased by") and "someone-else" in results["roll-b"]
    assert results["roll-c"] == results["roll-d"] == "not reached"
    assert _leases_free(roll_lab)
