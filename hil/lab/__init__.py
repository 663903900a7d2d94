"""The emulated lab: real Linux hosts in network namespaces, built on this machine."""

from hil.lab.lab import DeviceStatus, EmulatedLab

__all__ = ["DeviceStatus", "EmulatedLab"]
