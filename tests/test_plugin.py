"""The pytest plugin (hil/plugin.py), driven through pytest's own `pytester`."""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.lab import EmulatedLab
from tests.conftest import GHOST_ADDRESS, TEST_LAB_TOML, ghost_device_toml, needs_root, write_devices

pytest_plugins = ["pytester"]

USAGE_ERROR = 4

DEVICE_TESTS = """
def test_one(device):
    pass

def test_two(device):
    pass
"""



def collected(result: pytest.RunResult) -> list[str]:
    """Node ids printed by `--collect-only -q`."""
    return [line.strip() for line in result.outlines if "::" in line and not line.startswith(" ")]


@pytest.fixture
def lab_dir(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory with the test lab's devices.toml and two tests on `device`."""
    write_devices(pytester.path)
    pytester.makepyfile(test_sel=DEVICE_TESTS)
    return pytester


# -- selection (collection only: no device is contacted) ------------------------------------------


def test_every_test_runs_once_per_device_named_by_the_device(lab_dir: pytest.Pytester) -> None:
    result = lab_dir.runpytest("--collect-only", "-q")
    assert result.ret == 0
    assert collected(result) == [
        "test_sel.py::test_one[emu-a]", "test_sel.py::test_one[emu-b]",
        "test_sel.py::test_two[emu-a]", "test_sel.py::test_two[emu-b]",
    ]


@pytest.mark.parametrize(("args", "devices"), [
    (["-m", "jetson"], ["emu-a"]),
    (["-m", "rpi and emulated"], ["emu-b"]),
    (["-m", "jetson and not emulated"], []),
    (["-m", "emulated"], ["emu-a", "emu-b"]),
    (["--hil-device", "emu-b"], ["emu-b"]),
    (["--hil-device", "emu-b", "--hil-device", "emu-a"], ["emu-b", "emu-a"]),
    (["--strict-markers", "-m", "jetson"], ["emu-a"]),
], ids=["tag", "tag-and-emulated", "tag-and-not-emulated", "emulated", "by-name", "by-two-names", "strict-markers"])
def test_selection(lab_dir: pytest.Pytester, args: list[str], devices: list[str]) -> None:
    result = lab_dir.runpytest("--collect-only", "-q", *args)
    assert result.ret == (0 if devices else pytest.ExitCode.NO_TESTS_COLLECTED), result.stdout.str()
    assert collected(result) == [f"test_sel.py::{test}[{d}]" for test in ("test_one", "test_two") for d in devices]
    assert "PytestUnknownMarkWarning" not in result.stdout.str()


def test_unknown_device_is_a_usage_error_listing_the_known_ones(lab_dir: pytest.Pytester) -> None:
    result = lab_dir.runpytest("--collect-only", "-q", "--hil-device", "nope")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == USAGE_ERROR
    assert "'nope'" in output
    assert "emu-a" in output and "emu-b" in output
    assert "Traceback" not in output


def test_device_tags_are_registered_markers(lab_dir: pytest.Pytester) -> None:
    result = lab_dir.runpytest("--markers")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["@pytest.mark.emulated:*", "@pytest.mark.jetson:*", "@pytest.mark.rpi:*"],
                                consecutive=False)


# -- a bad devices.toml ----------------------------------------------------------------------------


def test_malformed_toml_is_one_clean_usage_error(pytester: pytest.Pytester) -> None:
    path = pytester.path / "broken.toml"
    path.write_text('[lab]\nname = "hiltest"\nsubnet = 10.77.1.0/24\n')
    pytester.makepyfile(test_x=DEVICE_TESTS)
    result = pytester.runpytest("--hil-devices", str(path), "--collect-only", "-q")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == USAGE_ERROR
    assert str(path) in output
    assert "line 3" in output
    assert "Traceback" not in output
    assert output.count("not valid TOML") == 1


def test_unknown_key_names_the_device_and_the_key(pytester: pytest.Pytester) -> None:
    path = pytester.path / "typo.toml"
    path.write_text(TEST_LAB_TOML.replace('tags = ["rpi"]', 'tags = ["rpi"]\ncpu = 2'))
    pytester.makepyfile(test_x=DEVICE_TESTS)
    result = pytester.runpytest("--hil-devices", str(path), "--collect-only", "-q")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == USAGE_ERROR
    assert f"{path}: device 'emu-b': key 'cpu': unknown key" in output
    assert "Traceback" not in output


# -- no devices.toml -------------------------------------------------------------------------------


def test_without_devices_toml_the_plugin_stays_out_of_the_way(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="""
        import pytest

        @pytest.mark.parametrize("x", [1, 2])
        def test_plain(x):
            assert x in (1, 2)

        def test_other(tmp_path):
            assert tmp_path.is_dir()

        def test_hil_is_loaded_all_the_same(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("hil")
    """)
    result = pytester.runpytest("-q")
    result.assert_outcomes(passed=4)
    assert result.ret == 0
    assert "devices out of this run" not in result.stdout.str()


def test_without_devices_toml_the_device_fixture_says_what_is_missing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_needs=DEVICE_TESTS)
    result = pytester.runpytest("-q")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*needs a devices.toml: pass --hil-devices PATH*"])


# -- real runs against the test lab ----------------------------------------------------------------


@needs_root
def test_run_on_the_lab_records_device_and_facts_in_junit(pytester: pytest.Pytester, lab: EmulatedLab,
                                                           tmp_path: Path) -> None:
    pytester.makepyfile(test_hostname="""
        def test_hostname(device):
            assert device.run("hostname", timeout=10).stdout.strip() == device.name
    """)
    junit = tmp_path / "j.xml"
    result = pytester.runpytest("--hil-devices", str(lab.inventory.path), f"--junitxml={junit}")
    result.assert_outcomes(passed=2)
    cases = ET.parse(junit).getroot().iter("testcase")
    seen = []
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        name = case.get("name", "").partition("[")[2].rstrip("]")
        seen.append(name)
        assert props["hil.device"] == name
        assert props["hil.facts.onnxruntime"]
        assert props["hil.facts.emulated"] == "True"
    assert seen == ["emu-a", "emu-b"]


@needs_root
def test_unreachable_device_is_quarantined_after_one_error(pytester: pytest.Pytester, lab: EmulatedLab) -> None:
    known_hosts = pytester.path / "known_hosts"
    known_hosts.write_text("")
    write_devices(pytester.path, TEST_LAB_TOML + ghost_device_toml(lab, known_hosts))
    pytester.makepyfile(test_three="""
        def test_one(device):
            assert device.run("true").ok

        def test_two(device):
            assert device.run("true").ok

        def test_three(device):
            assert device.run("true").ok
    """)
    junit = pytester.path / "j.xml"
    started = time.monotonic()
    result = pytester.runpytest("-rA", f"--junitxml={junit}")
    elapsed = time.monotonic() - started
    result.assert_outcomes(passed=6, errors=1, skipped=2)
    waited = re.search(r"no answer within (\d+\.\d) s", result.stdout.str())
    assert waited and 0.9 <= float(waited.group(1)) < 2.5, result.stdout.str()  # the time really waited
    unreachable = f"device 'ghost' (root@{GHOST_ADDRESS}:22): no answer within {waited.group(1)} s"
    reason = f"device 'ghost' is out of this run (infrastructure): {unreachable}"
    setups = {r.nodeid.partition("::")[2]: r for r in result.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
              if r.when == "setup" and "ghost" in r.nodeid}
    assert setups["test_one[ghost]"].failed
    assert reason in setups["test_one[ghost]"].longreprtext
    for test in ("test_two[ghost]", "test_three[ghost]"):
        assert setups[test].skipped
        assert reason in setups[test].longrepr[2]
        assert setups[test].duration < 0.5, f"{test} tried the unreachable device again"
    result.stdout.fnmatch_lines([f"DeviceUnhealthy: {reason}*"])
    assert "Traceback" not in result.stdout.str() and "hil/plugin.py" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*hil: devices out of this run*", f"ghost: {unreachable}*"])
    assert "\nemu-a:" not in result.stdout.str()
    labels = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
              for case in ET.parse(junit).getroot().iter("testcase")}
    assert reason in labels["test_one[ghost]"]["hil.infrastructure"]
    assert "hil.infrastructure" not in labels["test_one[emu-a]"]
    assert elapsed < 20, f"quarantine took {elapsed:.1f} s: the unreachable device was retried"


def test_an_operation_needing_root_is_skipped_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_root="""
        from hil.errors import PrivilegeUnavailable

        def test_needs_root():
            raise PrivilegeUnavailable("device 'edge-01': clock step needs root, and hil cannot become root there")
    """)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*clock step needs root*"])


# -- a run that validated nothing must not look like success (README "Exit codes") ----------------------


def _summary_exit(pytester: pytest.Pytester) -> dict[str, object]:
    return json.loads((pytester.path / "reports" / "summary.json").read_text())["exit"]


@pytest.mark.parametrize("args", [["-m", "jetson and not emulated"], ["-k", "no_such_test"]])
def test_a_selection_that_leaves_no_device_test_is_not_success(lab_dir: pytest.Pytester, args: list[str]) -> None:
    # A test that needs no device still passes: the run is not empty, but nothing ran on a device.
    lab_dir.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = lab_dir.runpytest(*args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout.str()
    result.stdout.fnmatch_lines(["*exit code 5: no_devices*none of the 4 tests on devices*nothing was validated*"])
    assert _summary_exit(lab_dir) == {"code": 5, "meaning": "no_devices"}  # no stale summary passes a gate


def test_without_device_tests_pytest_keeps_its_own_exit_code(lab_dir: pytest.Pytester) -> None:
    # hil's own unit tests, say: a devices.toml is there, but no test asks for a device.
    lab_dir.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = lab_dir.runpytest("-p", "no:cacheprovider", "test_plain.py")
    assert result.ret == 0
    assert not (lab_dir.path / "reports" / "summary.json").exists()


@needs_root
def test_a_run_whose_every_device_is_out_exits_75(pytester: pytest.Pytester, lab: EmulatedLab) -> None:
    known_hosts = pytester.path / "known_hosts"
    known_hosts.write_text("")
    write_devices(pytester.path, ghost_device_toml(lab, known_hosts))  # the only device never answers
    pytester.makepyfile(test_out=DEVICE_TESTS + "\ndef test_plain():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1, skipped=1)
    assert result.ret == 75, result.stdout.str()
    assert _summary_exit(pytester) == {"code": 75, "meaning": "infrastructure"}
    result.stdout.fnmatch_lines(["*exit code 75: infrastructure*only the lab failed*"])
