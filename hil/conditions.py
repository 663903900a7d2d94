"""Device conditions that make timings unreliable: the CPU frequency governor and thermal headroom.

The health check records them as warnings. They do not take a device out of the run, but a latency
verdict measured under them cannot fail the model: a FAIL becomes INCONCLUSIVE (hil.budgets.temper,
a verdict rule, lives with the verdicts; this module is only the device-side probe and its reading).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Governors that pin the clock at its top: timings then reflect the model, not the power policy.
STEADY_GOVERNORS = frozenset({"performance"})
MIN_HEADROOM_C = 10.0  # closer than this to a throttling trip point, the next minute may be slower
THROTTLING_TRIPS = ("passive", "hot", "critical")  # "active" only starts a fan

# One shell command: "gov NAME" per governor, "zone TYPE TEMP_mC [TRIP_TYPE TRIP_mC]..." per thermal zone.
PROBE = r"""
for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do
  [ -r "$f" ] && echo "gov $(cat "$f")"
done
for z in /sys/class/thermal/thermal_zone*; do
  [ -r "$z/temp" ] || continue
  line="zone $(cat "$z/type" 2>/dev/null | tr -d ' ' || echo ?) $(cat "$z/temp" 2>/dev/null)"
  for t in "$z"/trip_point_*_type; do
    [ -r "$t" ] || continue
    line="$line $(cat "$t") $(cat "${t%_type}_temp" 2>/dev/null)"
  done
  echo "$line"
done
true
"""


@dataclass(frozen=True)
class Zone:
    name: str
    temp_c: float
    trips_c: tuple[tuple[str, float], ...]  # (type, temperature)

    @property
    def headroom_c(self) -> float | None:
        limits = [t for kind, t in self.trips_c if kind in THROTTLING_TRIPS and t > 0]
        return min(limits) - self.temp_c if limits else None


def parse_probe(output: str) -> tuple[set[str], list[Zone]]:
    governors: set[str] = set()
    zones: list[Zone] = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "gov":
            governors.add(parts[1])
        elif len(parts) >= 3 and parts[0] == "zone":
            try:
                temp = int(parts[2]) / 1000.0
                pairs = parts[3:]
                trips = tuple((pairs[i], int(pairs[i + 1]) / 1000.0) for i in range(0, len(pairs) - 1, 2))
            except ValueError:
                continue  # a zone that cannot be read right now (some report EINVAL or "N/A")
            zones.append(Zone(parts[1], temp, trips))
    return governors, zones


def timing_warnings(governors: set[str], zones: Sequence[Zone]) -> list[str]:
    """What makes timings on this device unreliable now; empty when nothing (or nothing readable) does."""
    warnings = []
    unsteady = sorted(governors - STEADY_GOVERNORS)
    if unsteady:
        warnings.append(f"CPU frequency governor {', '.join(unsteady)} (not performance): the clock follows the "
                        "load, so latency figures vary with it")
    for zone in zones:
        headroom = zone.headroom_c
        if headroom is not None and headroom < MIN_HEADROOM_C:
            warnings.append(f"thermal zone {zone.name} at {zone.temp_c:.1f} °C, {headroom:.1f} °C below throttling "
                            f"(less than {MIN_HEADROOM_C:g} °C of headroom)")
    return warnings

