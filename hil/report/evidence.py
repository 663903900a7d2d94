"""`hil evidence`: one signed, byte-exact archive per run that a third party can check offline.

    hil evidence pack [--reports reports] [--key PRIVATE_KEY.pem | env HIL_EVIDENCE_KEY] [--out PATH]
    hil evidence verify BUNDLE [--key PUBLIC_KEY.pub]

The bundle (default reports/evidence-<run_id>.tar.gz) holds, in sorted order:

    MANIFEST.json        every other file's path, sha256 and size; run id, created_at, hil version, key id
    MANIFEST.sig         ed25519 signature over the exact bytes of MANIFEST.json (64 raw bytes)
    allure-results/...   reports/allure-results/, every file
    environment.json     host, and each device's environment, facts and fingerprint (from summary.json)
    faults.json          the fault schedule (summary.json "faults")
    hashes.json          models (version, sha256) and datasets (path, sha256) from summary.json
    junit.xml            reports/junit.xml, when there is one
    raw/check-NNN-<device>-<model>-<check>.json   one per check with raw values (summary.json checks[].raw)
    raw/<...>            reports/raw/ as it is (the CSV files that checks[].raw.file name)
    signer.pub           the signer's public key (PEM), so a bundle can be checked without a key at hand
    summary.json         reports/summary.json, byte for byte

Byte-exactness: the archive is a pure function of (member names, member bytes, MANIFEST.json's created_at),
and verify accounts for every byte of it:

- gzip header: the fixed 10 bytes (no file name, mtime 0, XFL 0, OS 255), compared verbatim;
- deflate: the tar in stored (uncompressed) blocks of 65535 bytes but the last (final) one; every 5-byte
  block header must be exactly the canonical one, padding bits included. Compressed deflate cannot be
  made canonical: a match's distance may point at any earlier copy of the same bytes, so a changed bit
  can inflate to the very same tar, and another machine's zlib (zlib-ng...) compresses differently;
- gzip trailer: CRC32 and size of the tar; the framing leaves no room for trailing data;
- tar: ustar (as Python's tarfile writes it), sorted unique names, mode 0644, uid/gid 0, empty owner
  names, mtime = created_at. Every header is rebuilt from (name, size, mtime) and compared byte for
  byte; every data byte is covered by a sha256 in the signed manifest (the manifest by the signature,
  the signature by being valid); padding after data and the end-of-archive blocks, up to a 10240-byte
  record, must be zero.

Verify never writes to disk: it reads the archive into memory, bounded by MAX_BUNDLE_BYTES
(the file) and MAX_TAR_BYTES (the tar in it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hil import __version__
from hil.artifacts import key_id, load_private_key, load_public_key
from hil.errors import ConfigError, HilError
from hil.report.files import write_bytes_atomic
from hil.report.summary import SCHEMA as SUMMARY_SCHEMA

SCHEMA = "hil.evidence/1"
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.sig"
PUBLIC_KEY = "signer.pub"
KEY_ENV = "HIL_EVIDENCE_KEY"
MAX_TAR_BYTES = 512 << 20
MAX_BUNDLE_BYTES = MAX_TAR_BYTES + (MAX_TAR_BYTES >> 16) * 5 + (1 << 20)  # the tar plus stored-block framing
MAX_MEMBERS = 100_000
EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2

# gzip: magic, deflate, no flags, mtime 0, XFL 0, OS 255 (unknown): nothing about the packing machine or time.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_GZIP_FIELDS = ((0, 2, "magic"), (2, 3, "compression method"), (3, 4, "flags"), (4, 8, "mtime"),
                (8, 9, "extra flags"), (9, 10, "OS"))
_STORED_MAX = 0xFFFF  # bytes in a stored deflate block
_STORED_HEADER = 5  # BFINAL/BTYPE byte (padding bits zero), LEN, NLEN

_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar's default blocking factor: the archive ends on a record boundary
_TAR_FIELDS = ((0, 100, "name"), (100, 108, "mode"), (108, 116, "uid"), (116, 124, "gid"), (124, 136, "size"),
               (136, 148, "mtime"), (148, 156, "chksum"), (156, 157, "typeflag"), (157, 257, "linkname"),
               (257, 263, "magic"), (263, 265, "version"), (265, 297, "uname"), (297, 329, "gname"),
               (329, 337, "devmajor"), (337, 345, "devminor"), (345, 500, "prefix"), (500, 512, "padding"))
_TAR_TYPES = {b"1": "a hard link", b"2": "a symbolic link", b"3": "a character device", b"4": "a block device",
              b"5": "a directory", b"6": "a FIFO", b"7": "a contiguous file", b"x": "a pax header",
              b"g": "a pax global header", b"L": "a GNU long name", b"K": "a GNU long link name"}


class EvidenceRejected(HilError):
    """A bundle failed verification; the message names the file and the check that failed."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member  # the bundle file the failure is about, when it is about one


@dataclass(frozen=True)
class Packed:
    path: Path
    run_id: str
    key_id: str
    files: int  # members listed in MANIFEST.json
    complete: bool
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Verified:
    path: Path
    run_id: str
    created_at: str
    key_id: str
    files: int
    complete: bool
    warnings: tuple[str, ...]
    embedded_key: bool  # checked against signer.pub inside the bundle: integrity only, not who signed


@dataclass(frozen=True)
class _Member:
    name: str
    offset: int  # of its header in the tar stream
    data: memoryview


# -- the canonical archive --------------------------------------------------------------------


def _split_name(name: str) -> tuple[bytes, bytes]:
    """ustar (prefix, name) for a path: the shortest prefix that fits, as Python's tarfile does."""
    raw = name.encode()
    if len(raw) <= 100:
        return b"", raw
    parts = raw.split(b"/")
    for i in range(1, len(parts)):
        prefix, rest = b"/".join(parts[:i]), b"/".join(parts[i:])
        if len(prefix) <= 155 and len(rest) <= 100:
            return prefix, rest
    raise ValueError(f"{name}: path too long for a ustar archive (at most 255 bytes, split at a '/')")


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """The one canonical ustar header of a regular file (equal to what tarfile.USTAR_FORMAT writes)."""
    prefix, base = _split_name(name)
    header = bytearray(_BLOCK)
    for offset, value in ((0, base), (100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"),
                          (124, b"%011o\0" % size), (136, b"%011o\0" % mtime), (148, b" " * 8), (156, b"0"),
                          (257, b"ustar\x0000"), (345, prefix)):
        header[offset:offset + len(value)] = value
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


def _tar_end(length: int) -> int:
    """Length of the end-of-archive zeros after `length` bytes of members: two blocks, then up to a record."""
    return 2 * _BLOCK + (-(length + 2 * _BLOCK) % _RECORD)


def build_tar(members: Iterable[tuple[str, bytes]], mtime: int) -> bytes:
    """The canonical tar stream of (name, data) members, in the order given."""
    out = bytearray()
    for name, data in members:
        out += tar_header(name, len(data), mtime)
        out += data
        out += bytes(-len(data) % _BLOCK)
    out += bytes(_tar_end(len(out)))
    return bytes(out)


def _stored_block_header(length: int, final: bool) -> bytes:
    return struct.pack("<BHH", 1 if final else 0, length, length ^ 0xFFFF)


def gzip_bytes(tar: bytes) -> bytes:
    """One gzip member: the fixed header, the tar in stored deflate blocks (all full but the last), CRC32, size.

    Stored, not compressed: a compressed deflate stream has many encodings of the same bytes (a match's
    distance can point at any earlier copy), so one changed bit can inflate to the very same tar; and
    no verifier can rebuild another machine's compressor output. Stored blocks have exactly one encoding.
    """
    chunks = [tar[i:i + _STORED_MAX] for i in range(0, len(tar), _STORED_MAX)] or [b""]
    deflate = b"".join(_stored_block_header(len(c), i == len(chunks) - 1) + c for i, c in enumerate(chunks))
    return GZIP_HEADER + deflate + struct.pack("<II", zlib.crc32(tar), len(tar) & 0xFFFFFFFF)


# -- pack -------------------------------------------------------------------------------------


def unsafe_name(name: str) -> str | None:
    """Why a member name may not be in a bundle, or None: relative, '/'-separated, no '.', '..' or empty parts."""
    if not name or name.startswith("/"):
        return "an absolute or empty path"
    if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a backslash or control character in the path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "a '.', '..' or empty path component"
    return None


def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _slug(text: Any, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))[:limit].strip("._") or "_"


def _regular_file(path: Path) -> bytes:
    """A file's bytes, refusing links and devices: a bundle holds only what the run wrote."""
    if path.is_symlink() or not path.is_file():
        raise ConfigError(f"{path}: not a regular file (a link, directory or device); the evidence bundle holds "
                          "regular files only")
    return path.read_bytes()


def _tree(root: Path, prefix: str) -> dict[str, bytes]:
    """Every file under root (if it exists), named prefix/<relative path>."""
    if not root.exists() and not root.is_symlink():
        return {}
    if root.is_symlink() or not root.is_dir():
        raise ConfigError(f"{root}: expected a directory")
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        files[f"{prefix}/{path.relative_to(root).as_posix()}"] = _regular_file(path)
    return files


def load_summary(path: Path) -> tuple[bytes, dict[str, Any]]:
    """summary.json's exact bytes and its parsed form; a clear error when the suites have not run."""
    if not path.exists():
        raise ConfigError(f"{path}: no summary.json: run the suites first (pytest writes it), or pass "
                          "--reports DIR of a finished run")
    data = _regular_file(path)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SUMMARY_SCHEMA:
        raise ConfigError(f"{path}: not a hil run summary (schema {SUMMARY_SCHEMA} expected)")
    if not isinstance(doc.get("run_id"), str) or not doc["run_id"]:
        raise ConfigError(f"{path}: no run_id")
    return data, doc


def _environment(summary: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("emulated", "fingerprint", "environment", "facts")
    devices = {name: {k: dev.get(k) for k in keep} for name, dev in (summary.get("devices") or {}).items()
               if isinstance(dev, dict)}
    return {"run_id": summary["run_id"], "host": summary.get("host"), "devices": devices}


def _hashes(summary: Mapping[str, Any]) -> dict[str, Any]:
    models = {name: {"version": m.get("version"), "sha256": m.get("sha256")}
              for name, m in (summary.get("models") or {}).items() if isinstance(m, dict)}
    datasets = {name: {"path": d.get("path"), "sha256": d.get("sha256")}
                for name, d in (summary.get("datasets") or {}).items() if isinstance(d, dict)}
    return {"run_id": summary["run_id"], "models": models, "datasets": datasets}


def _check_raw_files(summary: Mapping[str, Any]) -> dict[str, bytes]:
    """One JSON per check that carries raw values, with what identifies the check across runs."""
    keep = ("nodeid", "device", "model", "model_version", "model_sha256", "emulated", "fingerprint", "seed",
            "check", "value", "unit", "verdict", "samples", "raw")
    files = {}
    for i, check in enumerate(summary.get("checks") or []):
        if not isinstance(check, dict) or check.get("raw") is None:
            continue
        name = "-".join(_slug(check.get(k)) for k in ("device", "model", "check"))
        doc = {"run_id": summary["run_id"], **{k: check.get(k) for k in keep}}
        files[f"raw/check-{i:03d}-{name}.json"] = _json_bytes(doc)
    return files


def collect(reports: Path) -> tuple[dict[str, Any], dict[str, bytes], list[str]]:
    """(summary, {bundle name: bytes}, warnings) of a report directory; MANIFEST and key not included."""
    summary_bytes, summary = load_summary(reports / "summary.json")
    files = {"summary.json": summary_bytes, "environment.json": _json_bytes(_environment(summary)),
             "hashes.json": _json_bytes(_hashes(summary)),
             "faults.json": _json_bytes({"run_id": summary["run_id"], "faults": summary.get("faults") or []})}
    for extra in (_check_raw_files(summary), _tree(reports / "raw", "raw"),
                  _tree(reports / "allure-results", "allure-results")):
        for name, data in extra.items():
            if name in files:
                raise ConfigError(f"{reports / name}: collides with a file the bundle derives from summary.json")
            files[name] = data
    junit = reports / "junit.xml"
    if junit.exists() or junit.is_symlink():
        files["junit.xml"] = _regular_file(junit)
    for name in files:
        if (why := unsafe_name(name)) is not None:
            raise ConfigError(f"{reports / name}: cannot go into the bundle: {why}")
    return summary, files, _pack_warnings(reports, summary)


def _pack_warnings(reports: Path, summary: Mapping[str, Any]) -> list[str]:
    warnings = []
    if summary.get("complete") is not True:
        warnings.append("the run did not complete (summary.json complete=false): the evidence covers only the "
                        "tests that finished")
    if not (reports / "allure-results").is_dir():
        warnings.append(f"no {reports / 'allure-results'}: the bundle has no Allure results")
    return warnings


def _manifest(summary: Mapping[str, Any], files: Mapping[str, bytes], created_at: str, signer: str,
              warnings: Sequence[str]) -> bytes:
    doc = {
        "schema": SCHEMA, "run_id": summary["run_id"], "created_at": created_at, "hil": __version__,
        "algorithm": "ed25519", "key_id": signer, "complete": summary.get("complete") is True,
        "warnings": list(warnings),
        "run": {k: summary.get(k) for k in ("started_at", "finished_at", "exit", "counts")},
        "files": [{"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                  for name, data in sorted(files.items())],
    }
    return _json_bytes(doc)


def pack(reports: Path, private_key: Ed25519PrivateKey, out: Path | None = None, *,
         now: datetime | None = None) -> Packed:
    """Write the signed bundle of the run in `reports`; returns where and what."""
    summary, files, warnings = collect(reports)
    created = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    created_at = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    public = private_key.public_key()
    files[PUBLIC_KEY] = public.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    if sum(len(d) + 2 * _BLOCK for d in files.values()) > MAX_TAR_BYTES:
        raise ConfigError(f"{reports}: more than {MAX_TAR_BYTES >> 20} MiB of evidence; verify would refuse it")
    manifest = _manifest(summary, files, created_at, key_id(public), warnings)
    listed = len(files)
    files[MANIFEST] = manifest
    files[SIGNATURE] = private_key.sign(manifest)
    try:
        tar = build_tar(sorted(files.items()), int(created.timestamp()))
    except ValueError as exc:
        raise ConfigError(f"{reports}/{exc}") from None
    out = out or reports / f"evidence-{_slug(summary['run_id'], 120)}.tar.gz"
    write_bytes_atomic(out, gzip_bytes(tar))
    return Packed(out, summary["run_id"], key_id(public), listed, summary.get("complete") is True, tuple(warnings))


# -- verify: the gzip layer -------------------------------------------------------------------


def _read_bundle(path: Path) -> bytes:
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    size = path.stat().st_size
    if size > MAX_BUNDLE_BYTES:
        raise EvidenceRejected(f"{path}: {size} bytes, more than the {MAX_BUNDLE_BYTES >> 20} MiB a bundle may be")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def _check_gzip_header(path: Path, data: bytes) -> None:
    if data[:2] != GZIP_HEADER[:2]:
        raise ConfigError(f"{path}: not a gzip archive (an evidence bundle is the .tar.gz `hil evidence pack` "
                          "writes)")
    if len(data) < len(GZIP_HEADER) + _STORED_HEADER + 8:
        raise EvidenceRejected(f"gzip: the archive is truncated ({len(data)} bytes)")
    for start, end, field in _GZIP_FIELDS:
        if data[start:end] != GZIP_HEADER[start:end]:
            raise EvidenceRejected(f"gzip header: field '{field}' (archive bytes {start}-{end - 1}) is "
                                   f"{data[start:end].hex()}, the canonical bundle has {GZIP_HEADER[start:end].hex()}")


def _unstore(data: bytes) -> tuple[bytes, int]:
    """The tar inside a canonical gzip: every stored-block header must be the one gzip_bytes writes there.

    With canonical framing every other byte is either the tar's own (checked member by member) or the
    CRC32/size trailer (checked last), so nothing in the archive escapes verification. Returns the tar
    and where the trailer starts.
    """
    view, pos, chunks = memoryview(data), len(GZIP_HEADER), []
    while True:
        remaining = len(data) - pos - _STORED_HEADER - 8
        if remaining < 0:
            raise EvidenceRejected(f"gzip: the archive is truncated (archive byte {pos})")
        final = remaining <= _STORED_MAX
        expected = _stored_block_header(remaining if final else _STORED_MAX, final)
        actual = data[pos:pos + _STORED_HEADER]
        if actual != expected:
            _explain_framing(actual, remaining, pos)
            raise EvidenceRejected(f"gzip: deflate block {len(chunks)} header (archive bytes {pos}-"
                                   f"{pos + _STORED_HEADER - 1}) is {actual.hex()}, the canonical bundle has "
                                   f"{expected.hex()} (bundles hold the tar in stored blocks of {_STORED_MAX} bytes)")
        pos += _STORED_HEADER
        size = remaining if final else _STORED_MAX
        chunks.append(view[pos:pos + size])
        pos += size
        if final:
            break
    return b"".join(chunks), pos


def _explain_framing(header: bytes, remaining: int, offset: int) -> None:
    """A well-formed block header that does not fit the file: say 'appended' or 'truncated', not 'bad header'."""
    kind, length, check = struct.unpack("<BHH", header)
    if kind in (0, 1) and check == length ^ 0xFFFF:
        if kind == 1 and length < remaining:
            raise EvidenceRejected(f"gzip: {remaining - length} bytes of trailing data after the archive (from "
                                   f"archive byte {offset + _STORED_HEADER + length + 8})")
        if length > remaining:
            raise EvidenceRejected(f"gzip: the archive is truncated: the block at archive byte {offset} holds "
                                   f"{length} bytes, {remaining} follow before the trailer")


def _check_trailer(trailer: bytes, tar: bytes, offset: int) -> None:
    crc, size = struct.unpack("<II", trailer)
    if crc != zlib.crc32(tar):
        raise EvidenceRejected(f"gzip: CRC32 in the trailer (archive bytes {offset}-{offset + 3}) is {crc:08x}, the "
                               f"data's is {zlib.crc32(tar):08x}")
    if size != len(tar) & 0xFFFFFFFF:
        raise EvidenceRejected(f"gzip: the size in the trailer (archive bytes {offset + 4}-{offset + 7}) is {size}, "
                               f"the data is {len(tar)} bytes")


# -- verify: the tar layer --------------------------------------------------------------------


def _field(offset: int) -> str:
    return next(name for start, end, name in _TAR_FIELDS if start <= offset < end)


def _member_name(header: bytes, offset: int) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0]
    try:
        return (prefix + b"/" + name if prefix else name).decode()
    except UnicodeDecodeError:
        raise EvidenceRejected(f"tar: the member at tar byte {offset} has a name that is not UTF-8") from None


def _member_size(header: bytes, name: str) -> int:
    field = header[124:136]
    if not re.fullmatch(rb"[0-7]{11}\0", field):
        raise EvidenceRejected(f"tar: member '{name}': header field 'size' is not canonical ({field!r})")
    return int(field[:11], 8)


def _check_member_header(header: bytes, name: str, offset: int) -> None:
    """What verify demands before it trusts a header enough to read the member's data."""
    kind = header[156:157]
    if kind not in (b"0", b"\0"):
        what = _TAR_TYPES.get(kind, f"of type {kind!r}")
        raise EvidenceRejected(f"tar: member '{name}' (tar byte {offset}) is {what}; a bundle holds regular files "
                               "only")
    if (why := unsafe_name(name)) is not None:
        raise EvidenceRejected(f"tar: member '{name}': unsafe path ({why})")


def parse_tar(tar: bytes) -> list[_Member]:
    """The members of a tar stream, in memory: only regular files with safe names, zero padding, canonical end."""
    view = memoryview(tar)
    members: list[_Member] = []
    offset = 0
    while True:
        header = bytes(view[offset:offset + _BLOCK])
        if len(header) < _BLOCK:
            raise EvidenceRejected(f"tar: the stream ends inside a header (tar byte {offset})")
        if header == bytes(_BLOCK):
            break
        name = _member_name(header, offset)
        _check_member_header(header, name, offset)
        size = _member_size(header, name)
        start, end = offset + _BLOCK, offset + _BLOCK + size
        padded = end + (-size % _BLOCK)
        if padded > len(tar):
            raise EvidenceRejected(f"tar: member '{name}': {size} bytes of data, but the stream ends first")
        if any(view[end:padded]):
            raise EvidenceRejected(f"tar: member '{name}': non-zero padding after its data (tar bytes {end}-"
                                   f"{padded - 1})")
        members.append(_Member(name, offset, view[start:end]))
        if len(members) > MAX_MEMBERS:
            raise EvidenceRejected(f"tar: more than {MAX_MEMBERS} members")
        offset = padded
    _check_tar_end(tar, offset)
    _check_order(members)
    return members


def _check_tar_end(tar: bytes, offset: int) -> None:
    expected = _tar_end(offset)
    tail = memoryview(tar)[offset:]
    if len(tail) != expected or any(tail):
        raise EvidenceRejected(f"tar: the end of the archive (from tar byte {offset}) is not {expected} zero bytes: "
                               "data was added or changed after the last member")


def _check_order(members: Sequence[_Member]) -> None:
    for before, after in pairwise(members):
        if before.name == after.name:
            raise EvidenceRejected(f"tar: member '{after.name}' appears twice")
        if before.name.encode() > after.name.encode():
            raise EvidenceRejected(f"tar: member '{after.name}' comes after '{before.name}': not in canonical "
                                   "(sorted) order")


def _check_canonical_headers(tar: bytes, members: Sequence[_Member], mtime: int) -> None:
    """Every header must be the canonical one: catches a changed mode, uid, mtime, owner name, checksum..."""
    for member in members:
        actual = tar[member.offset:member.offset + _BLOCK]
        expected = tar_header(member.name, len(member.data), mtime)
        if actual != expected:
            at = next(i for i in range(_BLOCK) if actual[i] != expected[i])
            raise EvidenceRejected(f"tar: member '{member.name}': header field '{_field(at)}' is not canonical "
                                   f"(tar byte {member.offset + at})")


# -- verify: signature and manifest -----------------------------------------------------------


def _embedded_key(members: Mapping[str, _Member]) -> Ed25519PublicKey:
    """signer.pub from the bundle, parsed in memory (load_public_key reads files; verify writes none)."""
    if PUBLIC_KEY not in members:
        raise EvidenceRejected(f"{PUBLIC_KEY} is missing, so there is no key to check the signature with (pass "
                               "--key PUBLIC_KEY.pub)", PUBLIC_KEY)
    try:
        key = serialization.load_pem_public_key(bytes(members[PUBLIC_KEY].data))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise EvidenceRejected(f"{PUBLIC_KEY}: not a readable PEM public key", PUBLIC_KEY) from None
    if not isinstance(key, Ed25519PublicKey):
        raise EvidenceRejected(f"{PUBLIC_KEY}: not an ed25519 public key", PUBLIC_KEY)
    return key


def _check_signature(members: Mapping[str, _Member], key: Ed25519PublicKey) -> bytes:
    for name in (MANIFEST, SIGNATURE):
        if name not in members:
            raise EvidenceRejected(f"{name} is missing from the bundle")
    manifest, signature = bytes(members[MANIFEST].data), bytes(members[SIGNATURE].data)
    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        claimed = _claimed_key_id(manifest)
        if claimed is not None and claimed != key_id(key):
            raise EvidenceRejected(f"{SIGNATURE}: {MANIFEST} says key {claimed} signed it, and the signature does "
                                   f"not verify with key {key_id(key)}: not signed by this key") from None
        raise EvidenceRejected(f"{SIGNATURE}: the signature does not match {MANIFEST} (key {key_id(key)}): the "
                               "manifest was changed after signing") from None
    return manifest


def _claimed_key_id(manifest: bytes) -> str | None:
    """The key id an unverified manifest names: only to say 'another key' rather than 'changed'."""
    try:
        claimed = json.loads(manifest).get("key_id")
    except (ValueError, AttributeError):
        return None
    return claimed if isinstance(claimed, str) else None


def _hex64(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def _parse_manifest(data: bytes) -> dict[str, Any]:
    """The signed manifest, checked for shape (it is trusted by now, but may still come from an odd packer)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvidenceRejected(f"{MANIFEST}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise EvidenceRejected(f"{MANIFEST}: not an evidence manifest (schema {SCHEMA} expected)")
    for key in ("run_id", "created_at", "key_id"):
        if not isinstance(doc.get(key), str):
            raise EvidenceRejected(f"{MANIFEST}: '{key}' is missing or not a string")
    files = doc.get("files")
    if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and _hex64(f.get("sha256"))
            and isinstance(f.get("size"), int) and not isinstance(f.get("size"), bool) for f in files):
        raise EvidenceRejected(f"{MANIFEST}: 'files' must list path, sha256 and size of every file")
    return doc


def _mtime(manifest: Mapping[str, Any]) -> int:
    """The members' mtime: the manifest's created_at, so the archive needs no other clock."""
    try:
        created = datetime.fromisoformat(manifest["created_at"])
    except ValueError:
        raise EvidenceRejected(f"{MANIFEST}: created_at {manifest['created_at']!r} is not an ISO 8601 time") from None
    if created.tzinfo is None:
        raise EvidenceRejected(f"{MANIFEST}: created_at {manifest['created_at']!r} has no time zone")
    return int(created.timestamp())


def _check_files(manifest: Mapping[str, Any], members: Mapping[str, _Member]) -> int:
    """Every listed file present with its size and sha256, and nothing else in the bundle."""
    listed = {f["path"]: f for f in manifest["files"]}
    if len(listed) != len(manifest["files"]):
        raise EvidenceRejected(f"{MANIFEST}: a path is listed twice")
    for name in (MANIFEST, SIGNATURE):
        if name in listed:
            raise EvidenceRejected(f"{MANIFEST}: lists {name}, which cannot carry its own hash")
    extra = sorted(set(members) - set(listed) - {MANIFEST, SIGNATURE})
    if extra:
        raise EvidenceRejected(f"'{extra[0]}': in the bundle but not in {MANIFEST} (added after signing)")
    for path, entry in sorted(listed.items()):
        member = members.get(path)
        if member is None:
            raise EvidenceRejected(f"'{path}': listed in {MANIFEST} but missing from the bundle", path)
        if len(member.data) != entry["size"]:
            raise EvidenceRejected(f"'{path}': {len(member.data)} bytes, {MANIFEST} says {entry['size']}", path)
        digest = hashlib.sha256(member.data).hexdigest()
        if digest != entry["sha256"]:
            raise EvidenceRejected(f"'{path}': sha256 is {digest}, {MANIFEST} says {entry['sha256']}: the file "
                                   "was changed after signing", path)
    return len(listed)


# -- verify -----------------------------------------------------------------------------------


def _content_problem(tar: bytes, members_list: Sequence[_Member], members: Mapping[str, _Member],
                     manifest_bytes: bytes | None) -> EvidenceRejected | None:
    """The first thing wrong with the files and tar headers, measured against the manifest as it stands.

    Not raised at once: a manifest that was itself changed makes every such finding moot, and only
    the signature check can tell, so the caller decides which failure is the reason.
    """
    try:
        if manifest_bytes is None:
            raise EvidenceRejected(f"{MANIFEST} is missing from the bundle", MANIFEST)
        manifest = _parse_manifest(manifest_bytes)
        _check_files(manifest, members)
        _check_canonical_headers(tar, members_list, _mtime(manifest))
    except EvidenceRejected as exc:
        return exc
    return None


def _check_signer(manifest: Mapping[str, Any], members: Mapping[str, _Member], key: Ed25519PublicKey) -> None:
    """The manifest's key id and the bundle's signer.pub must both name the key that signed."""
    if manifest["key_id"] != key_id(key):
        raise EvidenceRejected(f"{MANIFEST}: names key {manifest['key_id']}, but the signature is by {key_id(key)}")
    if PUBLIC_KEY in members and key_id(embedded := _embedded_key(members)) != key_id(key):
        raise EvidenceRejected(f"{PUBLIC_KEY}: key {key_id(embedded)} is not the signer {key_id(key)}", PUBLIC_KEY)


def _member_bytes(members: Mapping[str, _Member], name: str) -> bytes | None:
    return bytes(members[name].data) if name in members else None


def verify(bundle: Path, public_key: Ed25519PublicKey | None = None) -> Verified:
    """Check a bundle offline; raises EvidenceRejected naming the file and the check, ConfigError if no bundle.

    Order: framing and tar structure; then the files and headers against the manifest, and the
    signature over the manifest (a bad signature is the reason whenever the manifest itself changed);
    the gzip trailer last, since every other byte has been accounted for by then.
    """
    data = _read_bundle(bundle)
    _check_gzip_header(bundle, data)
    tar, trailer_at = _unstore(data)
    if len(tar) > MAX_TAR_BYTES:
        raise EvidenceRejected(f"tar: more than {MAX_TAR_BYTES >> 20} MiB")
    members_list = parse_tar(tar)
    members = {m.name: m for m in members_list}
    manifest_bytes = _member_bytes(members, MANIFEST)
    problem = _content_problem(tar, members_list, members, manifest_bytes)
    try:
        key = public_key or _embedded_key(members)
        _check_signature(members, key)
    except EvidenceRejected as bad_signature:
        # A changed signer.pub breaks the signature check too; the changed file is the better reason.
        raise (problem if problem and problem.member == PUBLIC_KEY and public_key is None else bad_signature) from None
    if problem is not None:
        raise problem
    assert manifest_bytes is not None
    manifest = _parse_manifest(manifest_bytes)
    _check_signer(manifest, members, key)
    _check_trailer(data[trailer_at:], tar, trailer_at)
    warnings = tuple(str(w) for w in manifest.get("warnings") or [])
    return Verified(bundle, manifest["run_id"], manifest["created_at"], manifest["key_id"], len(manifest["files"]),
                    manifest.get("complete") is True, warnings, public_key is None)


# -- command line -----------------------------------------------------------------------------


def _private_key_path(option: str | None) -> Path:
    value = option or os.environ.get(KEY_ENV)
    if not value:
        raise ConfigError(f"no signing key: pass --key PRIVATE_KEY.pem or set {KEY_ENV} to its path (make one with "
                          "`hil artifact keygen`)")
    return Path(value)


def cmd_pack(args: argparse.Namespace, inventory: object = None) -> int:
    key = load_private_key(_private_key_path(args.key))
    packed = pack(Path(args.reports), key, Path(args.out) if args.out else None)
    for warning in packed.warnings:
        print(f"hil: warning: {warning}", file=sys.stderr)
    state = "complete" if packed.complete else "INCOMPLETE"
    print(f"wrote {packed.path}: run {packed.run_id} ({state}), {packed.files} files, signed with key {packed.key_id}")
    return EXIT_OK


def _report(result: Verified) -> str:
    signer = "the signer.pub inside the bundle" if result.embedded_key else "--key"
    lines = [f"{result.path}: OK", f"  run       {result.run_id}{'' if result.complete else ' (INCOMPLETE run)'}",
             f"  created   {result.created_at}", f"  key id    {result.key_id} (signature checked with {signer})",
             f"  files     {result.files} (sha256 and size match; archive canonical byte for byte)"]
    if result.embedded_key:
        lines.append("  NOTE      the key came from the bundle itself: this proves integrity only, not who signed it; "
                     "pass --key PUBLIC_KEY.pub to check the signer")
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace, inventory: object = None) -> int:
    key = load_public_key(Path(args.key)) if args.key else None
    try:
        result = verify(Path(args.bundle), key)
    except EvidenceRejected as exc:
        print(f"hil: evidence REJECTED: {args.bundle}: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    print(_report(result))
    for warning in result.warnings:
        print(f"hil: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def add_commands(parser: argparse.ArgumentParser) -> None:
    """`pack` and `verify` under parser (as in `hil evidence`)."""
    sub = parser.add_subparsers(dest="evidence_command", required=True)
    pack_cmd = sub.add_parser("pack", help="write the signed evidence bundle of a run",
                              description="Pack reports/ into one signed, canonical .tar.gz.")
    pack_cmd.add_argument("--reports", default="reports", help="the run's report directory (default: %(default)s)")
    pack_cmd.add_argument("--key", default=None, metavar="PRIVATE_KEY.pem",
                          help=f"ed25519 private key (PEM) to sign with (default: the path in ${KEY_ENV})")
    pack_cmd.add_argument("--out", default=None, metavar="PATH",
                          help="where to write (default: REPORTS/evidence-<run_id>.tar.gz)")
    pack_cmd.set_defaults(func=cmd_pack, needs_inventory=False)
    verify_cmd = sub.add_parser("verify", help="check a bundle offline: signature, hashes, canonical bytes",
                                description="Exit status: 0 OK, 1 rejected (the reason is printed), 2 no bundle.")
    verify_cmd.add_argument("bundle", metavar="BUNDLE")
    verify_cmd.add_argument("--key", default=None, metavar="PUBLIC_KEY.pub",
                            help="the signer's public key (PEM); without it only integrity is checked")
    verify_cmd.set_defaults(func=cmd_verify, needs_inventory=False)


def add_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Add `evidence` to a parser's subcommands (the action add_subparsers() returned)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "evidence", help="the signed evidence bundle of a run: pack, verify",
        description="Pack a run's reports into one signed archive, or verify one offline.")
    add_commands(parser)
    return parser
