"""Code that runs ON the device: shipped there as source and executed by the device's own Python.

    runner.py     the device runner (timing loop, eval, sweep, stream); shipped as device_runner.py
                  by hil/runner/driver.py, by sha256
    stats.py      latency and accuracy statistics; shipped next to the runner as hil_stats.py, and
                  imported on the host as hil.stats (a re-export of this module)
    cmdserver.py  the command server, started once per SSH connection by hil/transport/ssh.py
    probe.py      the facts probe, run on stdin by hil/device.py

Everything in this folder obeys the device's rules, whatever the host has:
  * it imports only the standard library, numpy and onnxruntime (and a sibling shipped next to it
    under its device name: the runner imports `hil_stats`); never hil, nor anything else installed
    on the host, and nothing relative: each file arrives on the device alone;
  * it parses and runs on Python 3.8 (JetPack 5's interpreter): no `match`, no `X | Y` or `list[int]`
    evaluated at run time, no standard-library names newer than 3.8;
  * this package is only a folder: hil loads these files as text (or, for stats, imports it on the
    host) and nothing here may rely on being imported as part of hil.

tests/test_ondevice.py checks the imports and the 3.8 grammar of every *.py file here, so a new
file dropped into this folder is covered without being listed anywhere.
"""
