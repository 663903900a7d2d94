"""hil's exit codes: one table for the `hil` commands, `hil rollout` and a pytest run with hil's plugin.

A CI job reads them as: 0 ship, 1 block the release, 4 measure longer, 75 retry the lab, anything else
fix the job. 75 is sysexits' EX_TEMPFAIL ("try again later"). A pytest run keeps pytest's own codes for
what pytest itself decides (2 interrupted, 3 internal error, 4 usage error, 5 nothing collected), so there
an inconclusive measurement exits 1 with summary.json's `exit.meaning` "inconclusive".
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0  # passed; or the command did what it was asked
    FAILED = 1  # a budget, check or command failed: a verdict on the product (block the release)
    USAGE = 2  # bad input: options, devices.toml, a manifest; nothing was measured
    INCONCLUSIVE = 4  # neither PASS nor FAIL on these samples: measure longer; not a verdict on the model
    NO_DEVICES = 5  # nothing selected to run on (pytest's own "no tests collected" is 5 too)
    INFRASTRUCTURE = 75  # only the lab failed (unreachable, busy, a fault not undone): retry
    INTERRUPTED = 130  # Ctrl-C / SIGINT


MEANINGS: dict[Exit, str] = {
    Exit.OK: "passed",
    Exit.FAILED: "product_failure",
    Exit.USAGE: "usage",
    Exit.INCONCLUSIVE: "inconclusive",
    Exit.NO_DEVICES: "no_devices",
    Exit.INFRASTRUCTURE: "infrastructure",
    Exit.INTERRUPTED: "interrupted",
}


def table() -> str:
    """The table as `hil --help` and the docs show it."""
    return "\n".join(f"  {int(code):>3}  {MEANINGS[code]}: {_HELP[code]}" for code in Exit)


_HELP: dict[Exit, str] = {
    Exit.OK: "every budget and check passed (or the command did what was asked)",
    Exit.FAILED: "a budget, check or command failed: block the release",
    Exit.USAGE: "bad input (options, devices.toml, manifest): nothing was measured",
    Exit.INCONCLUSIVE: "a measurement could be neither passed nor failed: measure longer (a pytest run: 1)",
    Exit.NO_DEVICES: "no device was selected to run on",
    Exit.INFRASTRUCTURE: "only the lab failed (device unreachable, busy, unhealthy): retry",
    Exit.INTERRUPTED: "interrupted",
}
