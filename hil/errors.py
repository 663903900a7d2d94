"""The exception tree: it mirrors the layers, so a caller catches exactly what it can handle.

InfraError means the lab, a device or the path to it is broken: reported as infrastructure,
never as a model regression. ProductFailure means the thing under test fell short.
"""


class HilError(Exception):
    """Base of every error hil raises on purpose."""


class ConfigError(HilError):
    """devices.toml (or another input file) is malformed or inconsistent."""


class InfraError(HilError):
    """The lab, a device or the way to it is broken; not a verdict on the model."""


class LabError(InfraError):
    """The emulated lab cannot be built, inspected or torn down."""


class TransportError(InfraError):
    """Talking to a device failed."""


class ConnectError(TransportError):
    """No session could be opened: unreachable host, refused connection, timeout."""


class SlowLinkError(ConnectError):
    """The device's sshd answered, but the SSH handshake did not finish in time: a live device on a lossy
    or slow link (a fault a killed run left applied, say), not a dead one."""


class AuthError(ConnectError):
    """The device refused our credentials."""


class HostKeyError(ConnectError):
    """The device's host key is unknown or does not match the pinned one."""


class ConnectionLost(TransportError):
    """An open session died while a command was in flight."""


class CommandTimeout(TransportError):
    """A command ran past its timeout; it was killed on the device."""

    def __init__(self, message: str, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


class DeviceUnhealthy(InfraError):
    """A device failed its health check and is out of rotation for this run."""


class ProductFailure(HilError, AssertionError):
    """The model or artifact under test failed a check (budget, integrity).

    An AssertionError too: a verdict against the product is a failed check, which pytest and Allure
    report as "failed"; every other error (the lab, the test itself) is "broken".
    """


class CommandFailed(HilError):
    """A command asked to succeed (check=True) exited non-zero."""

    def __init__(self, message: str, exit_status: int, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr


class ArtifactRejected(ProductFailure):
    """An artifact failed an integrity check (signature, hash, size, manifest); nothing was activated."""


class RuntimeIncompatible(ProductFailure):
    """The device's runtime cannot run the artifact (onnxruntime too old, execution provider missing)."""


class DeployError(InfraError):
    """A deploy could not complete for a reason of the device or the path to it (space, transfer)."""


class RollbackUnavailable(HilError):
    """There is no earlier version of the model on the device to go back to."""


class CapabilityMissing(HilError):
    """The device cannot take this operation (no root, no iptables, no clock control...): reported as a
    skip with the reason, never attempted half-way."""


class PrivilegeUnavailable(CapabilityMissing):
    """The operation needs root on the device and hil cannot become root there (reported as a skip)."""


class DeviceBusy(InfraError):
    """The device is leased by another run and did not become free in time."""


class LeaseUnavailable(InfraError):
    """The lease lock cannot be created on the device at all (its directory or file cannot be made or opened):
    not busy, so waiting would not help; the message names the path, the login user and the errno."""
