"""Deploy speed: a 64 MiB artifact's upload against scp of the same file, and a redeploy that sends nothing.

Run from the repository root: `.venv/bin/python benchmarks/deploy_speed.py [--devices devices.toml]`.
Prints medians and ratios measured in this one run; asserts nothing (the machines are shared).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for fixtures.synthetic

from roundtrip import bench_device, load_text, run_checked, ssh_options, target

from fixtures.synthetic import make_artifact
from hil.artifacts import load_artifact, load_public_key
from hil.deploy import deploy
from hil.device import Device
from hil.errors import HilError

log = logging.getLogger("benchmarks.deploy_speed")
MIB = 2**20
UPLOAD_TARGET = 0.9  # hil's upload throughput / scp's
REDEPLOY_TARGET_MS = 50.0


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=Path, default=Path("devices.toml"))
    parser.add_argument("--device", help="device name (default: the first emulated device)")
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("-n", type=int, default=3, help="uploads per method (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        inventory, config = bench_device(args.devices, args.device)
    except HilError as exc:
        log.error("%s", exc)
        return 2
    trusted = [load_public_key(p) for p in inventory.deploy.trusted_keys]
    device = Device(config)
    models = f"{config.workdir}/models/bench-upload"
    try:
        with tempfile.TemporaryDirectory(prefix="hil-bench-") as tmp:
            artifact = load_artifact(make_artifact(Path(tmp) / "big", name="bench-upload",
                                                   padding_floats=args.size_mib * MIB // 4))
            size = artifact.manifest.size
            scp_s, upload_s, deploy_s = [], [], []
            for _ in range(args.n):  # take turns, so load bursts hit both alike
                device.run(f"rm -rf {shlex.quote(models)} /var/tmp/hil-scp-bench.bin", timeout=60, check=True)
                started = time.perf_counter()
                run_checked(["scp", *ssh_options(config, port_flag="-P"), "-q", str(artifact.model_path),
                             f"{target(config)}:/var/tmp/hil-scp-bench.bin"])
                scp_s.append(time.perf_counter() - started)
                device.run("rm -f /var/tmp/hil-scp-bench.bin", timeout=60, check=True)
                result = deploy(device, artifact, trusted)
                upload_s.append(result.upload_seconds)
                deploy_s.append(result.seconds)
            redeploy_ms = [deploy(device, artifact, trusted).seconds * 1000 for _ in range(20)]
            small = load_artifact(make_artifact(Path(tmp) / "small", name="bench-small", padding_floats=MIB // 4))
            deploy(device, small, trusted)
            redeploy_small_ms = [deploy(device, small, trusted).seconds * 1000 for _ in range(20)]
            device.run(f"rm -rf {shlex.quote(models)} {shlex.quote(config.workdir)}/models/bench-small",
                       timeout=60, check=True)
    finally:
        device.close()

    def mbps(seconds: float) -> float:
        return size / seconds / 1e6

    ratio = _median(scp_s) / _median(upload_s)
    print(f"\n{size / MIB:.1f} MiB artifact to {config.name} ({config.ssh.host}), {args.n} rounds taking turns; "
          f"{load_text()}\n")
    print(f"{'method':44} {'median s':>9} {'MB/s':>8}")
    print(f"{'scp (fresh connection, same file, same link)':44} {_median(scp_s):9.3f} {mbps(_median(scp_s)):8.1f}")
    print(f"{'hil deploy: upload phase (open connection)':44} {_median(upload_s):9.3f} {mbps(_median(upload_s)):8.1f}")
    print(f"{'hil deploy: whole (+ verify on both ends)':44} {_median(deploy_s):9.3f} {mbps(_median(deploy_s)):8.1f}")
    print(f"\nhil upload throughput / scp throughput: {ratio:.2f}x: target >= {UPLOAD_TARGET}x "
          f"{'MET' if ratio >= UPLOAD_TARGET else 'MISSED'}")
    print(f"whole deploy / scp: {_median(scp_s) / _median(deploy_s):.2f}x throughput "
          "(hil also hashes on the host and the device, and activates)")
    for label, samples in ((f"{size / MIB:.0f} MiB", redeploy_ms), ("1 MiB", redeploy_small_ms)):
        med = _median(samples)
        print(f"redeploy of the unchanged {label} artifact (sha256 of the active model on the device): median "
              f"{med:.1f} ms (min {min(samples):.1f}, max {max(samples):.1f}, n=20): target < "
              f"{REDEPLOY_TARGET_MS:g} ms {'MET' if med < REDEPLOY_TARGET_MS else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
