r"""`hil evidence`: one signed archive per run that a third party can check offline, with or without hil.

    hil evidence pack [--reports reports] [--key PRIVATE_KEY.pem | env HIL_EVIDENCE_KEY] [--out PATH]
    hil evidence verify BUNDLE [--key PUBLIC_KEY.pub]

The bundle (default reports/evidence-<run_id>.tar.gz) is an ordinary gzipped tar of regular files:

    attestation.dsse.json  a DSSE envelope (github.com/secure-systems-lab/dsse) signed with ed25519, whose
                           payload is an in-toto Statement v1 naming every other file and its sha256
    allure-results/...     reports/allure-results/, every file
    environment.json       host, and each device's environment, facts and fingerprint (from summary.json)
    faults.json            the fault schedule (summary.json "faults")
    hashes.json            models (version, sha256) and datasets (path, sha256) from summary.json
    junit.xml              reports/junit.xml, when there is one
    raw/<...>              reports/raw/ as it is (the CSV files that summary.json checks[].raw.file name)
    signer.pub             the signer's public key (PEM), so a bundle can be checked without a key at hand
    summary.json           reports/summary.json, byte for byte (raw values inline, as the run wrote it)

The envelope: {"payloadType": "application/vnd.in-toto+json", "payload": base64(STATEMENT),
"signatures": [{"keyid": KEY_ID, "sig": base64(ed25519(PAE))}]}, where KEY_ID is hil.artifacts.key_id
(the first 16 hex digits of the sha256 of the raw public key) and PAE, DSSE's pre-authentication
encoding, is b"DSSEv1 <len(payloadType)> <payloadType> <len(STATEMENT)> " + STATEMENT (lengths as ASCII
decimal, in bytes). STATEMENT is {"_type": "https://in-toto.io/Statement/v1", "subject": [{"name":
PATH_IN_ARCHIVE, "digest": {"sha256": HEX}}, ... every member but the envelope, sorted by name],
"predicateType": PREDICATE_TYPE, "predicate": {...}}. The predicate type
https://hil.dev/evidence/v1 means: predicate = {"run_id", "created_at" (ISO 8601 UTC, when it was
packed), "hil" (version), "key_id" (the signer's), "summary_schema" (of summary.json), "complete"
(the run finished), "counts", "started_at", "finished_at", "exit" (from summary.json), "warnings"}.

Integrity comes from the signature, not from the bytes of the container: the archive is written
deterministically where that is cheap (sorted names, mtime = created_at, uid/gid 0, no owner names,
mode 0644, gzip mtime = created_at) but is not canonical; repacking the same files still verifies.
Verify demands regular files with safe, unique names, a complete gzip stream with nothing after it,
the envelope's signature, and a subject that lists exactly the other members with their sha256.
It never writes to disk: the archive is read into memory, bounded by MAX_BUNDLE_BYTES (the file),
MAX_TAR_BYTES (the tar in it) and MAX_MEMBERS.

Checking a bundle without hil (GNU tar, coreutils, jq, openssl 3; the same recipe is in README.md,
and tests/test_evidence.py runs it):

    BUNDLE=reports/evidence-RUN_ID.tar.gz PUB=evidence.pub        # the bundle, and the signer's public key
    mkdir ev && tar xzf "$BUNDLE" -C ev                            # into an empty directory
    jq -r .payload ev/attestation.dsse.json | base64 -d > statement.json
    jq -r '.signatures[0].sig' ev/attestation.dsse.json | base64 -d > sig.bin
    t=application/vnd.in-toto+json                                 # the signature covers the type too
    { printf 'DSSEv1 %s %s %s ' ${#t} $t $(wc -c < statement.json); cat statement.json; } > pae.bin
    openssl pkeyutl -verify -pubin -inkey "$PUB" -rawin -in pae.bin -sigfile sig.bin
    jq -r '.subject[] | "\(.digest.sha256)  \(.name)"' statement.json > SHA256SUMS
    (cd ev && sha256sum --strict -c ../SHA256SUMS)                 # every file, as signed
    diff <(jq -r '.subject[].name' statement.json | sort) \
         <(cd ev && find . -type f ! -path ./attestation.dsse.json | sed 's|^\./||' | sort)   # and no other
    jq .predicate statement.json                                   # run id, created_at, complete, counts

openssl prints "Signature Verified Successfully"; any step that fails exits non-zero. With
PUB=ev/signer.pub instead of the signer's key, the recipe proves integrity only, not who signed.
Without jq: python3 -c 'import json,sys; print(json.load(sys.stdin)["payload"])' < ev/attestation.dsse.json
and likewise for the other fields.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gzip
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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

ENVELOPE = "attestation.dsse.json"
PUBLIC_KEY = "signer.pub"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://hil.dev/evidence/v1"
KEY_ENV = "HIL_EVIDENCE_KEY"
MAX_TAR_BYTES = 512 << 20
MAX_BUNDLE_BYTES = MAX_TAR_BYTES + (1 << 20)  # deflate never grows data by more than a few bytes per 16 KiB
MAX_MEMBERS = 100_000
MAX_SIGNATURES = 16
EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2

_TAR_TYPES = {tarfile.LNKTYPE: "a hard link", tarfile.SYMTYPE: "a symbolic link", tarfile.CHRTYPE: "a character device",
              tarfile.BLKTYPE: "a block device", tarfile.DIRTYPE: "a directory", tarfile.FIFOTYPE: "a FIFO",
              tarfile.CONTTYPE: "a contiguous file", tarfile.GNUTYPE_SPARSE: "a sparse file"}


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
    files: int  # members in the statement's subject (all but the envelope)
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


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature is over (type and payload, length-prefixed)."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


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


def collect(reports: Path) -> tuple[dict[str, Any], dict[str, bytes], list[str]]:
    """(summary, {bundle name: bytes}, warnings) of a report directory; the envelope and key not included."""
    summary_bytes, summary = load_summary(reports / "summary.json")
    files = {"summary.json": summary_bytes, "environment.json": _json_bytes(_environment(summary)),
             "hashes.json": _json_bytes(_hashes(summary)),
             "faults.json": _json_bytes({"run_id": summary["run_id"], "faults": summary.get("faults") or []}),
             **_tree(reports / "raw", "raw"), **_tree(reports / "allure-results", "allure-results")}
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


def statement(summary: Mapping[str, Any], files: Mapping[str, bytes], created_at: str, signer: str,
              warnings: Sequence[str]) -> dict[str, Any]:
    """The in-toto Statement v1 of a run: every file's sha256 as the subject, the run as the predicate."""
    predicate = {"run_id": summary["run_id"], "created_at": created_at, "hil": __version__, "key_id": signer,
                 "summary_schema": summary.get("schema"), "complete": summary.get("complete") is True,
                 "counts": summary.get("counts"), "warnings": list(warnings),
                 **{k: summary.get(k) for k in ("started_at", "finished_at", "exit")}}
    subject = [{"name": name, "digest": {"sha256": hashlib.sha256(data).hexdigest()}}
               for name, data in sorted(files.items())]
    return {"_type": STATEMENT_TYPE, "subject": subject, "predicateType": PREDICATE_TYPE, "predicate": predicate}


def envelope(payload: bytes, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """A DSSE envelope of payload, signed over PAE(PAYLOAD_TYPE, payload)."""
    signature = private_key.sign(pae(PAYLOAD_TYPE, payload))
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": key_id(private_key.public_key()), "sig": base64.b64encode(signature).decode()}]}


def write_archive(members: Mapping[str, bytes], mtime: int) -> bytes:
    """A .tar.gz of regular files, sorted, with nothing of the packing machine (owners, times) in it."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=mtime) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def pack(reports: Path, private_key: Ed25519PrivateKey, out: Path | None = None, *,
         now: datetime | None = None) -> Packed:
    """Write the signed bundle of the run in `reports`; returns where and what."""
    summary, files, warnings = collect(reports)
    created = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    created_at = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    public = private_key.public_key()
    files[PUBLIC_KEY] = public.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    payload = _json_bytes(statement(summary, files, created_at, key_id(public), warnings))
    listed = len(files)
    files[ENVELOPE] = _json_bytes(envelope(payload, private_key))
    if len(files) > MAX_MEMBERS or sum(len(d) + 1536 for d in files.values()) > MAX_TAR_BYTES:  # data, headers
        raise ConfigError(f"{reports}: more than {MAX_MEMBERS} files or {MAX_TAR_BYTES >> 20} MiB of evidence; "
                          "verify would refuse it")
    out = out or reports / f"evidence-{_slug(summary['run_id'], 120)}.tar.gz"
    write_bytes_atomic(out, write_archive(files, int(created.timestamp())))
    return Packed(out, summary["run_id"], key_id(public), listed, summary.get("complete") is True, tuple(warnings))


# -- verify: the archive ----------------------------------------------------------------------


def _read_bundle(path: Path) -> bytes:
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    size = path.stat().st_size
    if size > MAX_BUNDLE_BYTES:
        raise EvidenceRejected(f"{path}: {size} bytes, more than the {MAX_BUNDLE_BYTES >> 20} MiB a bundle may be")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if data[:2] != b"\x1f\x8b":
        raise ConfigError(f"{path}: not a gzip archive (an evidence bundle is the .tar.gz `hil evidence pack` "
                          "writes)")
    return data


def gunzip(data: bytes) -> bytes:
    """The tar in one gzip member, at most MAX_TAR_BYTES of it; CRC32 and size checked, nothing after it."""
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        tar = inflate.decompress(data, MAX_TAR_BYTES + 1)
    except zlib.error as exc:
        raise EvidenceRejected(f"gzip: the archive is corrupt ({exc})") from None
    if len(tar) > MAX_TAR_BYTES:
        raise EvidenceRejected(f"gzip: the tar inside is more than {MAX_TAR_BYTES >> 20} MiB")
    if not inflate.eof:
        raise EvidenceRejected(f"gzip: the archive is truncated (its {len(data)} bytes end inside the compressed "
                               "stream or its CRC32/size trailer)")
    if inflate.unused_data:
        raise EvidenceRejected(f"gzip: {len(inflate.unused_data)} bytes of trailing data after the archive (from "
                               f"archive byte {len(data) - len(inflate.unused_data)})")
    return tar


def _check_member(info: tarfile.TarInfo, seen: Mapping[str, object]) -> None:
    """What verify demands of a member before it reads its data."""
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        what = _TAR_TYPES.get(info.type, f"of type {info.type!r}")
        raise EvidenceRejected(f"tar: member '{info.name}' (tar byte {info.offset}) is {what}; a bundle holds "
                               "regular files only", info.name)
    if (why := unsafe_name(info.name)) is not None:
        raise EvidenceRejected(f"tar: member '{info.name}': unsafe path ({why})", info.name)
    if info.name in seen:
        raise EvidenceRejected(f"tar: member '{info.name}' appears twice", info.name)
    if len(seen) >= MAX_MEMBERS:
        raise EvidenceRejected(f"tar: more than {MAX_MEMBERS} members")


def read_members(tar: bytes) -> dict[str, memoryview]:
    """{name: data} of a tar in memory: regular files with safe, unique names; only zeros after the end."""
    view, members = memoryview(tar), {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
            while (info := tf.next()) is not None:
                _check_member(info, members)
                data = view[info.offset_data:info.offset_data + info.size]
                if len(data) != info.size:
                    raise EvidenceRejected(f"tar: member '{info.name}': {info.size} bytes of data, but the archive "
                                           "ends first", info.name)
                members[info.name] = data
            end = tf.offset
    except tarfile.TarError as exc:
        raise EvidenceRejected(f"tar: not a readable tar archive ({exc})") from None
    if any(view[end:]):
        raise EvidenceRejected(f"tar: data after the end of the archive (tar byte {end} on is not all zeros): a "
                               "damaged header, or something appended inside the gzip stream")
    return members


# -- verify: the envelope and the statement ---------------------------------------------------


def _b64(value: Any, what: str) -> bytes:
    """Standard or URL-safe base64 (DSSE allows either), strictly: no stray characters."""
    if not isinstance(value, str):
        raise EvidenceRejected(f"{ENVELOPE}: {what} is missing or not a string", ENVELOPE)
    try:
        return base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceRejected(f"{ENVELOPE}: {what} is not base64", ENVELOPE) from None


def _parse_envelope(data: bytes | memoryview | None) -> tuple[bytes, list[tuple[str | None, bytes]]]:
    """(payload, [(keyid, signature)]) of a DSSE envelope with the in-toto payload type."""
    if data is None:
        raise EvidenceRejected(f"{ENVELOPE} is missing from the bundle", ENVELOPE)
    try:
        doc = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvidenceRejected(f"{ENVELOPE}: not valid JSON: {exc}", ENVELOPE) from None
    if not isinstance(doc, dict):
        raise EvidenceRejected(f"{ENVELOPE}: not a DSSE envelope (a JSON object expected)", ENVELOPE)
    if doc.get("payloadType") != PAYLOAD_TYPE:
        raise EvidenceRejected(f"{ENVELOPE}: payloadType is {doc.get('payloadType')!r}, an evidence bundle's is "
                               f"{PAYLOAD_TYPE!r}", ENVELOPE)
    payload = _b64(doc.get("payload"), "payload")
    signatures = doc.get("signatures")
    if not isinstance(signatures, list) or not signatures or len(signatures) > MAX_SIGNATURES or not all(
            isinstance(s, dict) and isinstance(s.get("keyid", ""), str) for s in signatures):
        raise EvidenceRejected(f"{ENVELOPE}: 'signatures' must list 1 to {MAX_SIGNATURES} signatures, each a sig and "
                               "a keyid", ENVELOPE)
    return payload, [(s.get("keyid") or None, _b64(s.get("sig"), "a signature's sig")) for s in signatures]


def _embedded_key(members: Mapping[str, memoryview]) -> Ed25519PublicKey:
    """signer.pub from the bundle, parsed in memory (load_public_key reads files; verify writes none)."""
    if PUBLIC_KEY not in members:
        raise EvidenceRejected(f"{PUBLIC_KEY} is missing, so there is no key to check the signature with (pass "
                               "--key PUBLIC_KEY.pub)", PUBLIC_KEY)
    try:
        key = serialization.load_pem_public_key(bytes(members[PUBLIC_KEY]))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise EvidenceRejected(f"{PUBLIC_KEY}: not a readable PEM public key", PUBLIC_KEY) from None
    if not isinstance(key, Ed25519PublicKey):
        raise EvidenceRejected(f"{PUBLIC_KEY}: not an ed25519 public key", PUBLIC_KEY)
    return key


def _claimed_key_ids(payload: bytes, signatures: Sequence[tuple[str | None, bytes]]) -> set[str]:
    """The key ids an unverified envelope names: only to say 'another key' rather than 'changed'."""
    claimed = {keyid for keyid, _ in signatures if keyid}
    try:
        predicate_key = json.loads(payload)["predicate"]["key_id"]
    except (ValueError, KeyError, TypeError):
        return claimed
    return claimed | ({predicate_key} if isinstance(predicate_key, str) else set())


def _check_signature(payload: bytes, signatures: Sequence[tuple[str | None, bytes]], key: Ed25519PublicKey) -> None:
    """One signature must verify over PAE(payloadType, payload); its keyid, if any, must be the key's."""
    signed = pae(PAYLOAD_TYPE, payload)
    for keyid, signature in signatures:
        try:
            key.verify(signature, signed)
        except InvalidSignature:
            continue
        if keyid is not None and keyid != key_id(key):
            raise EvidenceRejected(f"{ENVELOPE}: the signature's keyid is {keyid}, but it was made by key "
                                   f"{key_id(key)}", ENVELOPE)
        return
    claimed = _claimed_key_ids(payload, signatures)
    if claimed and key_id(key) not in claimed:
        raise EvidenceRejected(f"{ENVELOPE}: the envelope says key {', '.join(sorted(claimed))} signed it, and the "
                               f"signature does not verify with key {key_id(key)}: not signed by this key", ENVELOPE)
    raise EvidenceRejected(f"{ENVELOPE}: the signature does not match the payload (key {key_id(key)}): the statement "
                           "was changed after signing", ENVELOPE)


def _hex64(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def _parse_statement(payload: bytes) -> dict[str, Any]:
    """The in-toto statement, checked for shape: the hil predicate, a subject of names and sha256 digests."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvidenceRejected(f"{ENVELOPE}: the payload is not valid JSON: {exc}", ENVELOPE) from None
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE:
        raise EvidenceRejected(f"{ENVELOPE}: the payload is not an in-toto statement (_type {STATEMENT_TYPE} "
                               "expected)", ENVELOPE)
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise EvidenceRejected(f"{ENVELOPE}: predicateType is {doc.get('predicateType')!r}, an evidence bundle's is "
                               f"{PREDICATE_TYPE!r}", ENVELOPE)
    predicate = doc.get("predicate")
    if not isinstance(predicate, dict):
        raise EvidenceRejected(f"{ENVELOPE}: the statement has no predicate", ENVELOPE)
    for key in ("run_id", "created_at", "key_id"):
        if not isinstance(predicate.get(key), str):
            raise EvidenceRejected(f"{ENVELOPE}: the predicate's '{key}' is missing or not a string", ENVELOPE)
    subject = doc.get("subject")
    if not isinstance(subject, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("digest"), dict)
            and _hex64(s["digest"].get("sha256")) for s in subject):
        raise EvidenceRejected(f"{ENVELOPE}: the statement's subject must give every file's name and sha256",
                               ENVELOPE)
    return doc


def _check_subject(doc: Mapping[str, Any], members: Mapping[str, memoryview]) -> int:
    """The subject lists exactly the members but the envelope, each with its sha256."""
    listed = {s["name"]: s["digest"]["sha256"] for s in doc["subject"]}
    if len(listed) != len(doc["subject"]):
        raise EvidenceRejected(f"{ENVELOPE}: the subject lists a file twice", ENVELOPE)
    if ENVELOPE in listed:
        raise EvidenceRejected(f"{ENVELOPE}: the subject lists {ENVELOPE}, which cannot carry its own hash", ENVELOPE)
    extra = sorted(set(members) - set(listed) - {ENVELOPE})
    if extra:
        raise EvidenceRejected(f"'{extra[0]}': in the bundle but not in the subject of {ENVELOPE} (added after "
                               "signing)", extra[0])
    for name, expected in sorted(listed.items()):
        if name not in members:
            raise EvidenceRejected(f"'{name}': in the subject of {ENVELOPE} but missing from the bundle (removed "
                                   "after signing)", name)
        digest = hashlib.sha256(members[name]).hexdigest()
        if digest != expected:
            raise EvidenceRejected(f"'{name}': sha256 is {digest}, the statement in {ENVELOPE} says {expected}: the "
                                   "file was changed after signing", name)
    return len(listed)


def _subject_problem(payload: bytes, members: Mapping[str, memoryview]) -> EvidenceRejected | None:
    """What is wrong with the files, measured against the statement as it stands (not yet trusted).

    Not raised at once: a changed statement makes every such finding moot, and only the signature
    can tell, so the caller decides which failure is the reason.
    """
    try:
        _check_subject(_parse_statement(payload), members)
    except EvidenceRejected as exc:
        return exc
    return None


def _check_signer(predicate: Mapping[str, Any], members: Mapping[str, memoryview], key: Ed25519PublicKey) -> None:
    """The statement's key id and the bundle's signer.pub must both name the key that signed."""
    if predicate["key_id"] != key_id(key):
        raise EvidenceRejected(f"{ENVELOPE}: the statement names key {predicate['key_id']}, but the signature is by "
                               f"{key_id(key)}", ENVELOPE)
    if PUBLIC_KEY in members and key_id(embedded := _embedded_key(members)) != key_id(key):
        raise EvidenceRejected(f"{PUBLIC_KEY}: key {key_id(embedded)} is not the signer {key_id(key)}", PUBLIC_KEY)


def verify(bundle: Path, public_key: Ed25519PublicKey | None = None) -> Verified:
    """Check a bundle offline; raises EvidenceRejected naming the file and the check, ConfigError if no bundle.

    Order: gzip and tar structure; the envelope's shape; then the files against the (unverified)
    statement and the signature over it: a bad signature is the reason whenever the statement itself
    changed, except that a changed signer.pub (which then breaks the signature too) is named as such.
    """
    members = read_members(gunzip(_read_bundle(bundle)))
    payload, signatures = _parse_envelope(members.get(ENVELOPE))
    problem = _subject_problem(payload, members)
    try:
        key = public_key or _embedded_key(members)
        _check_signature(payload, signatures, key)
    except EvidenceRejected as bad_signature:
        raise (problem if problem and problem.member == PUBLIC_KEY and public_key is None else bad_signature) from None
    if problem is not None:
        raise problem
    doc = _parse_statement(payload)
    files = _check_subject(doc, members)
    predicate = doc["predicate"]
    _check_signer(predicate, members, key)
    warnings = tuple(str(w) for w in predicate.get("warnings") or [])
    return Verified(bundle, predicate["run_id"], predicate["created_at"], predicate["key_id"], files,
                    predicate.get("complete") is True, warnings, public_key is None)


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
             f"  created   {result.created_at}", f"  key id    {result.key_id} (DSSE signature checked with {signer})",
             f"  files     {result.files} (each sha256 as in the signed in-toto statement; no file more or less)"]
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
                              description="Pack reports/ into one .tar.gz with a signed DSSE/in-toto attestation.")
    pack_cmd.add_argument("--reports", default="reports", help="the run's report directory (default: %(default)s)")
    pack_cmd.add_argument("--key", default=None, metavar="PRIVATE_KEY.pem",
                          help=f"ed25519 private key (PEM) to sign with (default: the path in ${KEY_ENV})")
    pack_cmd.add_argument("--out", default=None, metavar="PATH",
                          help="where to write (default: REPORTS/evidence-<run_id>.tar.gz)")
    pack_cmd.set_defaults(func=cmd_pack, needs_inventory=False)
    verify_cmd = sub.add_parser("verify", help="check a bundle offline: signature, and every file's sha256",
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
