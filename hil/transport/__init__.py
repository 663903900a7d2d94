"""Ways to reach a device: SSH (the main door) and a serial console (the side door)."""

from hil.transport.base import ProgressCallback, Result, Transport

__all__ = ["ProgressCallback", "Result", "Transport"]
