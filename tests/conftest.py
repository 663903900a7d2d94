"""Fixtures for hil's own tests: a private emulated lab, apart from the user's default one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.config import Inventory, load_inventory
from hil.device import Device
from hil.lab import EmulatedLab

# Its own name and subnet, so the tests never disturb a lab brought up by `make run`.
TEST_LAB_TOML = """
[lab]
name = "hiltest"
subnet = "10.77.1.0/24"

[[devices]]
name = "emu-a"
tags = ["jetson"]
emulated = true
cpus = 1.0
memory = "512MiB"
disk = "64MiB"
workdir = "/var/lib/hil"

[[devices]]
name = "emu-b"
tags = ["rpi"]
emulated = true
cpus = 0.5
memory = "256MiB"
disk = "32MiB"
workdir = "/var/lib/hil"
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the emulated lab needs root")


def write_devices(directory: Path, text: str = TEST_LAB_TOML) -> Path:
    path = directory / "devices.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def lab_inventory(tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    return load_inventory(write_devices(tmp_path_factory.mktemp("lab")))


@pytest.fixture(scope="session")
def lab(lab_inventory: Inventory) -> Iterator[EmulatedLab]:
    """The test lab, up for the whole session and taken down at the end."""
    emulated = EmulatedLab(lab_inventory)
    emulated.up()
    yield emulated
    emulated.down()


@pytest.fixture
def device_a(lab: EmulatedLab) -> Iterator[Device]:
    device = Device(lab.inventory.get("emu-a"))
    yield device
    device.close()


@pytest.fixture
def device_b(lab: EmulatedLab) -> Iterator[Device]:
    device = Device(lab.inventory.get("emu-b"))
    yield device
    device.close()


# -- artifacts ---------------------------------------------------------------------------------

DEMO_KEY = Path(__file__).resolve().parents[1] / "fixtures" / "keys" / "demo-ed25519.pem"


def make_model(path: Path, padding_floats: int = 0, bias: float = 1.0) -> None:
    """A real ONNX model: y = x + bias (float32 [batch, 4]); `padding_floats` adds a large unused-free
    initializer so the file has the size a transfer test needs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    inits = [numpy_helper.from_array(np.full([4], bias, dtype=np.float32), "bias")]
    nodes = [helper.make_node("Add", ["x", "bias"], ["y"])]
    if padding_floats:
        rng = np.random.default_rng(7)
        inits.append(numpy_helper.from_array(rng.random(padding_floats, dtype=np.float32), "padding"))
        z = helper.make_tensor_value_info("padding_sum", TensorProto.FLOAT, [])
        nodes.append(helper.make_node("ReduceSum", ["padding"], ["padding_sum"], keepdims=0))
        outputs = [y, z]
    else:
        outputs = [y]
    graph = helper.make_graph(nodes, "hil_test", [x], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def make_artifact(directory: Path, name: str = "tiny", version: str = "1.0.0", *, padding_floats: int = 0,
                  bias: float = 1.0, sign_with: Path | None = DEMO_KEY) -> Path:
    """A signed artifact directory (model.onnx + manifest.toml) made from scratch."""
    from hil.artifacts import init_manifest, load_private_key, sign

    make_model(directory / "model.onnx", padding_floats, bias)
    init_manifest(directory, name, version)
    if sign_with is not None:
        sign(directory, load_private_key(sign_with))
    return directory
