"""Model artifacts: a model file and its signed manifest (TOML), hashing, signing and verification.

The signature covers the canonical form of the manifest (every field but the signature, as
sorted compact JSON); the manifest carries the model's sha256 and size, so one signature binds
the model bytes too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hil.checks import budget_keys
from hil.digest import sha256_file
from hil.errors import ArtifactRejected, ConfigError
from hil.eval_contract import EvalContract, parse_contract, verify_files

MANIFEST = "manifest.toml"
MODEL = "model.onnx"
SIGNATURE_ALGORITHM = "ed25519"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,62}")
# The first onnxruntime release that runs each ONNX opset (from onnxruntime's compatibility table).
OPSET_MIN_ORT = {17: "1.13", 18: "1.14", 19: "1.16", 20: "1.17", 21: "1.20", 22: "1.20", 23: "1.22"}
BUDGET_KEYS = set(budget_keys())  # the keys a [budgets.TAG] table may set: the registry's (hil.checks)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # a string is a symbolic dimension, e.g. "batch"


@dataclass(frozen=True)
class Signature:
    key_id: str
    value: str  # base64
    algorithm: str = SIGNATURE_ALGORITHM


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    sha256: str
    size: int
    opset: int
    min_onnxruntime: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    providers: tuple[str, ...] = ()
    budgets: dict[str, dict[str, float]] = field(default_factory=dict)
    eval: EvalContract | None = None  # how to judge the model: eval data, task, reference (hil.eval_contract)
    signature: Signature | None = None

    def canonical(self) -> bytes:
        """What the signature covers: everything but the signature, as sorted compact JSON."""
        data = asdict(self)
        data.pop("signature")
        if data["eval"] is None:  # manifests signed before [eval] existed keep their signature
            data.pop("eval")
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @property
    def dim_names(self) -> set[str]:
        return _dim_names(self.inputs)

    def to_toml(self) -> str:
        data: dict[str, Any] = {
            "name": self.name, "version": self.version, "sha256": self.sha256, "size": self.size,
            "opset": self.opset, "min_onnxruntime": self.min_onnxruntime, "providers": list(self.providers),
            "inputs": [_tensor_table(t) for t in self.inputs], "outputs": [_tensor_table(t) for t in self.outputs],
            "budgets": self.budgets,
        }
        if self.eval is not None:
            data["eval"] = self.eval.to_table()
        if self.signature is not None:
            data["signature"] = asdict(self.signature)
        return tomli_w.dumps(data)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class Artifact:
    """A directory with model.onnx and manifest.toml."""

    directory: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL

    @property
    def label(self) -> str:
        return f"artifact '{self.manifest.name}' {self.manifest.version} ({self.directory})"


def _dim_names(inputs: tuple[TensorSpec, ...]) -> set[str]:
    """The named (symbolic) dimensions of the model's inputs, e.g. {"batch", "seq"}."""
    return {d for t in inputs for d in t.shape if isinstance(d, str)}


def _tensor_table(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}


# -- reading ----------------------------------------------------------------------------------


def _reject(where: Path, message: str) -> ArtifactRejected:
    return ArtifactRejected(f"{where}: {message}")


def _tensors(where: Path, raw: Any, key: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise _reject(where, f"manifest key '{key}' must be a non-empty array of tables")
    specs = []
    for i, t in enumerate(raw):
        if not (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)
                and isinstance(t.get("shape"), list)
                and all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool)) for d in t["shape"])):
            raise _reject(where, f"manifest {key}[{i}] needs name (string), dtype (string), shape (array of "
                                 "integers and dimension names)")
        specs.append(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])))
    return tuple(specs)


def _budgets(where: Path, raw: Any) -> dict[str, dict[str, float]]:
    if not isinstance(raw, dict):
        raise _reject(where, "manifest key 'budgets' must be a table of device tags")
    budgets: dict[str, dict[str, float]] = {}
    for tag, table in raw.items():
        if not isinstance(table, dict):
            raise _reject(where, f"manifest budgets.{tag} must be a table")
        for key, value in table.items():
            if key not in BUDGET_KEYS:
                raise _reject(where, f"manifest budgets.{tag}: unknown budget '{key}' "
                                     f"(known: {', '.join(sorted(BUDGET_KEYS))})")
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise _reject(where, f"manifest budgets.{tag}.{key} must be a positive number, got {value!r}")
        budgets[tag] = {k: float(v) for k, v in table.items()}
    return budgets


def parse_manifest(text: str, where: Path) -> Manifest:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _reject(where, f"manifest is not valid TOML: {exc}") from None
    allowed = {"name", "version", "sha256", "size", "opset", "min_onnxruntime", "providers", "inputs", "outputs",
               "budgets", "eval", "signature"}
    for key in raw:
        if key not in allowed:
            raise _reject(where, f"unknown manifest key '{key}'")
    for key, kind in (("name", str), ("version", str), ("sha256", str), ("size", int), ("opset", int),
                      ("min_onnxruntime", str)):
        if not isinstance(raw.get(key), kind) or isinstance(raw.get(key), bool):
            raise _reject(where, f"manifest key '{key}' is missing or not {kind.__name__}")
    if not _NAME.fullmatch(raw["name"]) or not _VERSION.fullmatch(raw["version"]):
        raise _reject(where, "manifest name/version may only hold letters, digits and '._-+'")
    if not re.fullmatch(r"[0-9a-f]{64}", raw["sha256"]):
        raise _reject(where, "manifest sha256 must be 64 lowercase hex digits")
    providers = raw.get("providers", [])
    if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
        raise _reject(where, "manifest key 'providers' must be an array of execution provider names")
    signature = None
    if "signature" in raw:
        sig = raw["signature"]
        if not (isinstance(sig, dict) and set(sig) == {"key_id", "value", "algorithm"}
                and all(isinstance(v, str) for v in sig.values())):
            raise _reject(where, "manifest signature must have key_id, value and algorithm")
        signature = Signature(sig["key_id"], sig["value"], sig["algorithm"])
    inputs, outputs = _tensors(where, raw.get("inputs"), "inputs"), _tensors(where, raw.get("outputs"), "outputs")
    contract = None
    if "eval" in raw:
        contract = parse_contract(where, raw["eval"], tuple(t.name for t in inputs), tuple(t.name for t in outputs),
                                  _dim_names(inputs))
    return Manifest(
        name=raw["name"], version=raw["version"], sha256=raw["sha256"], size=raw["size"], opset=raw["opset"],
        min_onnxruntime=raw["min_onnxruntime"], inputs=inputs, outputs=outputs, providers=tuple(providers),
        budgets=_budgets(where, raw.get("budgets", {})), eval=contract, signature=signature)


def load_artifact(directory: Path | str) -> Artifact:
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise _reject(directory, f"no {MANIFEST}: not an artifact directory (create one with `hil artifact init`)")
    if not (directory / MODEL).is_file():
        raise _reject(directory, f"no {MODEL} next to the manifest")
    return Artifact(directory, parse_manifest(manifest_path.read_text(encoding="utf-8"), manifest_path))


# -- keys and signatures ----------------------------------------------------------------------


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an ed25519 public key")
    return key


def generate_key_pair(private_path: Path, public_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    private_path.chmod(0o600)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))


def sign(directory: Path, private_key: Ed25519PrivateKey) -> Manifest:
    """Sign the artifact's manifest in place (re-hashing the model and the eval files first, so the
    signature binds them)."""
    artifact = load_artifact(directory)
    model = artifact.model_path
    contract = artifact.manifest.eval.hashed(directory) if artifact.manifest.eval else None
    manifest = Manifest(**{**artifact.manifest.__dict__, "sha256": sha256_file(model),
                           "size": model.stat().st_size, "eval": contract, "signature": None})
    value = base64.b64encode(private_key.sign(manifest.canonical())).decode()
    signed = Manifest(**{**manifest.__dict__, "signature": Signature(key_id(private_key.public_key()), value)})
    (directory / MANIFEST).write_text(signed.to_toml(), encoding="utf-8")
    return signed


def verify_signature(artifact: Artifact, trusted: list[Ed25519PublicKey]) -> str:
    """Check the manifest's signature against the trusted keys; returns the key id that signed it."""
    manifest = artifact.manifest
    if manifest.signature is None:
        raise ArtifactRejected(f"{artifact.label}: rejected: the manifest is unsigned (sign it with "
                               "`hil artifact sign`)")
    if manifest.signature.algorithm != SIGNATURE_ALGORITHM:
        raise ArtifactRejected(f"{artifact.label}: rejected: unsupported signature algorithm "
                               f"'{manifest.signature.algorithm}'")
    if not trusted:
        raise ArtifactRejected(f"{artifact.label}: rejected: no trusted keys configured ([deploy] trusted_keys "
                               "in devices.toml)")
    by_id = {key_id(k): k for k in trusted}
    key = by_id.get(manifest.signature.key_id)
    if key is None:
        raise ArtifactRejected(f"{artifact.label}: rejected: signed by key {manifest.signature.key_id}, which "
                               f"is not trusted (trusted: {', '.join(sorted(by_id))})")
    try:
        key.verify(base64.b64decode(manifest.signature.value, validate=True), manifest.canonical())
    except (InvalidSignature, ValueError):
        raise ArtifactRejected(f"{artifact.label}: rejected: the signature does not match the manifest "
                               f"(key {manifest.signature.key_id}): the manifest was changed after signing") from None
    return manifest.signature.key_id


def verify_model_bytes(artifact: Artifact) -> None:
    """The local model file must be the one the manifest describes."""
    model = artifact.model_path
    size = model.stat().st_size
    if size != artifact.manifest.size:
        raise ArtifactRejected(f"{artifact.label}: rejected: {MODEL} is {size} bytes, the manifest says "
                               f"{artifact.manifest.size}")
    digest = sha256_file(model)
    if digest != artifact.manifest.sha256:
        raise ArtifactRejected(f"{artifact.label}: rejected: {MODEL} sha256 is {digest}, the manifest says "
                               f"{artifact.manifest.sha256}: the model was changed after signing")


def verify(artifact: Artifact, trusted: list[Ed25519PublicKey]) -> str:
    """Signature, then model bytes, then the eval files. Raises ArtifactRejected naming what failed."""
    signer = verify_signature(artifact, trusted)
    verify_model_bytes(artifact)
    if artifact.manifest.eval is not None:
        verify_files(artifact.directory, artifact.manifest.eval, artifact.label)
    return signer


# -- creating a manifest from a model -----------------------------------------------------------


def min_onnxruntime_for(opset: int) -> str:
    if opset in OPSET_MIN_ORT:
        return OPSET_MIN_ORT[opset]
    if opset < min(OPSET_MIN_ORT):
        return "1.10"
    return OPSET_MIN_ORT[max(OPSET_MIN_ORT)]


def describe_model(model: Path) -> tuple[int, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(default-domain opset, inputs, outputs) of an ONNX model, read with the onnx package."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(model), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in tensor.shape.dim)
        return TensorSpec(value.name, helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, dims)  # "float32"

    initializers = {i.name for i in proto.graph.initializer}
    inputs = tuple(spec(v) for v in proto.graph.input if v.name not in initializers)
    return opset, inputs, tuple(spec(v) for v in proto.graph.output)


def init_manifest(directory: Path, name: str | None = None, version: str | None = None,
                  providers: tuple[str, ...] | None = None, budgets: dict[str, dict[str, float]] | None = None,
                  eval: dict[str, Any] | None = None) -> Manifest:
    """Write an unsigned manifest for directory/model.onnx.

    Over an existing manifest, what is not given is kept: name, version, providers, every budget not
    named in `budgets` (a value of 0 removes that budget), every [eval] key not in `eval` (None removes
    it). The model's description (opset, inputs, outputs) is always read again from the model.
    """
    model = directory / MODEL
    opset, inputs, outputs = describe_model(model)
    old = parse_manifest((directory / MANIFEST).read_text(encoding="utf-8"), directory / MANIFEST) \
        if (directory / MANIFEST).is_file() else None
    name = name or (old.name if old else None)
    version = version or (old.version if old else None)
    if not name or not version:
        raise ConfigError(f"{directory}: no manifest yet, so --name and --version are needed")
    merged = {tag: dict(limits) for tag, limits in (old.budgets if old else {}).items()}
    for tag, limits in (budgets or {}).items():
        for key, value in limits.items():
            if value:
                merged.setdefault(tag, {})[key] = value
            else:
                merged.get(tag, {}).pop(key, None)
    merged = {tag: limits for tag, limits in merged.items() if limits}
    contract = None
    table = {**(old.eval.to_table() if old and old.eval else {}), **(eval or {})}
    # The hashes are written by sign, never carried over from a manifest of other files.
    table = {k: v for k, v in table.items() if v is not None and k not in ("files", "parent_sha256")}
    draft = Manifest(name=name, version=version, sha256=sha256_file(model), size=model.stat().st_size,
                     opset=opset, min_onnxruntime=min_onnxruntime_for(opset), inputs=inputs, outputs=outputs,
                     providers=providers if providers is not None else (old.providers if old else ()),
                     budgets=merged)
    if table:
        contract = parse_contract(directory / MANIFEST, table, tuple(t.name for t in inputs),
                                  tuple(t.name for t in outputs), draft.dim_names)
        contract.located(directory)  # the files it names must exist inside the artifact now, not at deploy
    manifest = Manifest(**{**draft.__dict__, "eval": contract})
    _budgets(directory / MANIFEST, manifest.budgets)  # the same check as reading it back
    (directory / MANIFEST).write_text(manifest.to_toml(), encoding="utf-8")
    return manifest
