"""Faults injected on the device: network, clock, disk (context managers that always undo), and sensor
noise on input data (pure functions, hil.faults.sensor)."""

from hil.faults.base import Fault, FaultEvent
from hil.faults.clock import clock_drift, clock_step
from hil.faults.disk import disk_fill
from hil.faults.ledger import FaultRecord, pending, sweep, unrecorded
from hil.faults.network import bandwidth_cap, delay, flapping, network_drop, packet_loss, partition

__all__ = ["Fault", "FaultEvent", "FaultRecord", "bandwidth_cap", "clock_drift", "clock_step", "delay", "disk_fill",
           "flapping", "network_drop", "packet_loss", "partition", "pending", "sweep", "unrecorded"]
