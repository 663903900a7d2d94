"""One exit-code table (hil.exit_codes) for the hil commands, hil rollout and a pytest run, shown in --help."""

from __future__ import annotations

import pytest

from hil import cli, rollout
from hil.exit_codes import MEANINGS, Exit
from hil.report import summary


def test_every_entry_point_uses_the_one_table() -> None:
    assert (cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_INFRA, cli.EXIT_INCONCLUSIVE) == (
        Exit.FAILED, Exit.USAGE, Exit.INFRASTRUCTURE, Exit.INCONCLUSIVE)
    assert (rollout.EXIT_FAILED, rollout.EXIT_USAGE, rollout.EXIT_INFRA, rollout.EXIT_INTERRUPTED) == (
        Exit.FAILED, Exit.USAGE, Exit.INFRASTRUCTURE, Exit.INTERRUPTED)
    assert rollout.CHILD_INFRA_EXIT == summary.EXIT_INFRASTRUCTURE == Exit.INFRASTRUCTURE == 75
    assert summary.EXIT_NO_DEVICES == Exit.NO_DEVICES and set(MEANINGS) == set(Exit)


def test_hil_help_shows_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for code in Exit:
        assert f"{int(code):>3}  {MEANINGS[code]}:" in out, out


def test_a_dead_device_is_infrastructure_75_for_a_cli_command(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    devices = tmp_path / "devices.toml"
    (tmp_path / "known_hosts").write_text("")
    # Loopback port 1: nothing listens, so the connection is refused at once (no traffic leaves the host).
    devices.write_text(f'[[devices]]\nname = "gone"\n[devices.ssh]\nhost = "127.0.0.1"\nport = 1\n'
                       f'connect_timeout = 1\nknown_hosts = "{tmp_path / "known_hosts"}"\n')
    assert cli.main(["--devices", str(devices), "run", "gone", "--", "true"]) == 75
    assert "infrastructure error" in capsys.readouterr().err


def test_version_and_the_devices_file_from_the_environment(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import hil

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"hil {hil.__version__}"
    missing = tmp_path / "lab" / "devices.toml"
    monkeypatch.setenv("HIL_DEVICES", str(missing))
    assert cli.main(["devices", "list"]) == 2  # $HIL_DEVICES is the default devices file: it names it
    err = capsys.readouterr().err
    assert str(missing) in err and "$HIL_DEVICES" in err
