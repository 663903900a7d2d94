"""Latency and accuracy statistics, as the host imports them: `from hil.stats import percentile_bounds`.

The code lives in hil/ondevice/stats.py, because it is also shipped to devices (as `hil_stats.py`, next
to the runner); this module re-exports its `__all__` so host-side imports keep one path. Read the
methods (nearest-rank percentiles, order-statistic confidence bounds, verdicts) there.
"""

from hil.ondevice.stats import *  # noqa: F403
from hil.ondevice.stats import __all__ as __all__
