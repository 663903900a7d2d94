"""The signed evidence bundle: what pack writes, and every change to it that verify must catch."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import struct
import tarfile
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hil import cli
from hil.artifacts import generate_key_pair, key_id, load_private_key, load_public_key
from hil.errors import ConfigError
from hil.report import evidence
from hil.report.evidence import (
    MANIFEST,
    PUBLIC_KEY,
    SIGNATURE,
    EvidenceRejected,
    build_tar,
    gzip_bytes,
    pack,
    tar_header,
    verify,
)

RUN_ID = "20261129T124433Z-host-1234"
NOW = datetime(2026, 11, 29, 12, 50, 0, tzinfo=UTC)
MTIME = int(NOW.timestamp())
DEVICE, MODEL = "orin-nano-emu", "digits-mlp"
RAW_CSV = f"raw/{DEVICE}/{MODEL}/latency_ms-0123456789.csv"


def main(argv: list[str]) -> int:
    """`hil evidence ...` through hil's one command line."""
    return cli.main(["evidence", *argv])


def _summary(complete: bool = True) -> dict[str, object]:
    check = {"nodeid": f"suites/test_latency.py::test_p99[{DEVICE}-{MODEL}]", "device": DEVICE, "model": MODEL,
             "model_version": "1.0.0", "model_sha256": "a" * 64, "emulated": True, "fingerprint": "3f9c0a1b2c3d4e5f",
             "seed": None, "check": "latency_p99_ms", "value": 0.41, "unit": "ms", "better": "lower", "limit": 2.0,
             "comparator": "<=", "verdict": "PASS", "confidence": 0.95, "lower_bound": 0.39, "upper_bound": 0.44,
             "samples": 5, "raw": {"kind": "latency_ms", "quantile": 99.0, "file": RAW_CSV,
                                   "values": [0.40, 0.41, 0.39, 0.44, 0.42]}}
    accuracy = {**check, "check": "accuracy_top1", "value": 0.97, "unit": "", "better": "higher", "limit": 0.9,
                "comparator": ">=", "raw": None}
    return {
        "schema": "hil.summary/1", "run_id": RUN_ID, "started_at": "2026-11-29T12:44:33Z",
        "finished_at": "2026-11-29T12:47:01Z" if complete else None, "complete": complete,
        "host": {"hostname": "ci-1", "user": "ci", "hil": "0.1.0", "python": "3.11.2", "pytest": "9.2.0"},
        "exit": {"code": 0, "meaning": "passed"} if complete else None,
        "counts": {"passed": 2, "failed": 0, "infrastructure": 0, "inconclusive": 0, "skipped": 0},
        "devices": {DEVICE: {"emulated": True, "fingerprint": "3f9c0a1b2c3d4e5f",
                             "environment": {"arch": "x86_64", "cpus": "1.5", "onnxruntime": "1.20.1"},
                             "facts": {"kernel": "6.1.0"}}},
        "models": {MODEL: {"version": "1.0.0", "sha256": "a" * 64}},
        "datasets": {"digits-eval": {"path": "fixtures/data/digits-eval.npz", "sha256": "b" * 64}},
        "faults": [{"nodeid": "suites/test_faults.py::test_drop", "device": DEVICE, "kind": "network_drop",
                    "params": {"seconds": 2}, "applied_at": "2026-11-29T12:45:00Z",
                    "reverted_at": "2026-11-29T12:45:02Z", "run_id": RUN_ID}],
        "tests": [{"nodeid": check["nodeid"], "device": DEVICE, "model": MODEL, "outcome": "passed"}],
        "checks": [check, accuracy],
    }


def write_reports(directory: Path, complete: bool = True) -> Path:
    (directory / "allure-results").mkdir(parents=True)
    (directory / "summary.json").write_text(json.dumps(_summary(complete), indent=2))
    results = directory / "allure-results"
    (results / "5b1d-result.json").write_text(json.dumps({"name": "test_p99", "status": "passed"}))
    (results / "9c2e-container.json").write_text(json.dumps({"children": ["5b1d"]}))
    (results / "77aa-attachment.csv").write_text("latency_ms\n0.40\n0.41\n")
    (results / "environment.properties").write_text("device=orin-nano-emu\n")
    (directory / "junit.xml").write_text('<testsuites><testsuite name="pytest" tests="2"/></testsuites>\n')
    raw = directory / RAW_CSV
    raw.parent.mkdir(parents=True)
    raw.write_text("latency_ms\n0.40\n0.41\n0.39\n0.44\n0.42\n")
    return directory


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "evidence.pem", tmp_path / "evidence.pub"
    generate_key_pair(private, public)
    return private, public


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    return write_reports(tmp_path / "reports")


@pytest.fixture
def bundle(reports: Path, keys: tuple[Path, Path]) -> Path:
    return pack(reports, load_private_key(keys[0]), now=NOW).path


def members_of(archive: Path) -> dict[str, bytes]:
    """Read in memory (never extracted), in archive order."""
    with tarfile.open(archive) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]


def write_members(path: Path, members: dict[str, bytes]) -> Path:
    """A canonical archive of exactly these members: what a careful forger would write."""
    path.write_bytes(gzip_bytes(build_tar(sorted(members.items()), MTIME)))
    return path


def rejected(archive: Path, public: Path | None = None) -> str:
    with pytest.raises(EvidenceRejected) as info:
        verify(archive, load_public_key(public) if public else None)
    return str(info.value)


# -- pack -------------------------------------------------------------------------------------


def test_pack_writes_one_signed_archive_with_the_whole_run(reports: Path, keys: tuple[Path, Path]) -> None:
    packed = pack(reports, load_private_key(keys[0]), now=NOW)
    assert packed.path == reports / f"evidence-{RUN_ID}.tar.gz"
    assert [p.name for p in reports.glob("evidence-*")] == [packed.path.name]
    members = members_of(packed.path)
    assert list(members) == sorted(members)
    assert set(members) == {
        MANIFEST, SIGNATURE, PUBLIC_KEY, "summary.json", "environment.json", "hashes.json", "faults.json",
        "junit.xml", RAW_CSV, "raw/check-000-orin-nano-emu-digits-mlp-latency_p99_ms.json",
        "allure-results/5b1d-result.json", "allure-results/9c2e-container.json",
        "allure-results/77aa-attachment.csv", "allure-results/environment.properties"}
    assert members["summary.json"] == (reports / "summary.json").read_bytes()
    assert members["junit.xml"] == (reports / "junit.xml").read_bytes()

    manifest = json.loads(members[MANIFEST])
    public = load_public_key(keys[1])
    public.verify(members[SIGNATURE], members[MANIFEST])  # over the exact bytes of MANIFEST.json
    assert (manifest["run_id"], manifest["created_at"], manifest["hil"]) == (RUN_ID, "2026-11-29T12:50:00Z", "0.1.0")
    assert manifest["key_id"] == key_id(public) == packed.key_id
    assert manifest["complete"] is True and manifest["warnings"] == []
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == set(members) - {MANIFEST, SIGNATURE}
    for path, entry in listed.items():
        assert entry == {"path": path, "sha256": hashlib.sha256(members[path]).hexdigest(),
                         "size": len(members[path])}


def test_pack_derives_environment_hashes_faults_and_raw_values(bundle: Path) -> None:
    members = members_of(bundle)
    environment = json.loads(members["environment.json"])
    assert environment["host"]["hostname"] == "ci-1"
    assert environment["devices"][DEVICE]["fingerprint"] == "3f9c0a1b2c3d4e5f"
    assert environment["devices"][DEVICE]["environment"]["onnxruntime"] == "1.20.1"
    assert environment["devices"][DEVICE]["facts"] == {"kernel": "6.1.0"}
    hashes = json.loads(members["hashes.json"])
    assert hashes["models"] == {MODEL: {"version": "1.0.0", "sha256": "a" * 64}}
    assert hashes["datasets"] == {"digits-eval": {"path": "fixtures/data/digits-eval.npz", "sha256": "b" * 64}}
    assert json.loads(members["faults.json"])["faults"][0]["kind"] == "network_drop"
    raw = json.loads(members["raw/check-000-orin-nano-emu-digits-mlp-latency_p99_ms.json"])
    assert (raw["check"], raw["device"], raw["model"]) == ("latency_p99_ms", DEVICE, MODEL)
    assert raw["raw"]["values"] == [0.40, 0.41, 0.39, 0.44, 0.42]
    assert not any("accuracy_top1" in name for name in members)  # no raw values, no file


def test_the_archive_is_canonical_and_standard(reports: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    key = load_private_key(keys[0])
    first = pack(reports, key, tmp_path / "a.tar.gz", now=NOW).path.read_bytes()
    second = pack(reports, key, tmp_path / "b.tar.gz", now=NOW).path.read_bytes()
    assert first == second  # a pure function of the files and the time
    assert first[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0, OS unknown
    assert gzip.decompress(first).startswith(tar_header(MANIFEST, len(members_of(tmp_path / "a.tar.gz")[MANIFEST]),
                                                        MTIME))
    with tarfile.open(tmp_path / "a.tar.gz") as tf:
        assert {(m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime, m.isreg()) for m in tf.getmembers()} == {
            (0o644, 0, 0, "", "", MTIME, True)}


def test_tar_headers_are_what_tarfile_writes_in_ustar_format() -> None:
    members = [("a/b.json", b"x" * 700), ("d" * 60 + "/" + "e" * 90, b"long name, split into prefix"), ("f", b"")]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            tf.addfile(info, io.BytesIO(data))
    assert build_tar(members, MTIME) == buffer.getvalue()


def test_missing_summary_says_run_the_suites_first(tmp_path: Path, keys: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "reports"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"summary\.json: no summary\.json: run the suites first"):
        pack(empty, load_private_key(keys[0]))
    assert main(["pack", "--reports", str(empty), "--key", str(keys[0])]) == 2
    err = capsys.readouterr().err
    assert str(empty / "summary.json") in err and "run the suites first" in err
    assert list(empty.iterdir()) == []


def test_an_incomplete_run_is_packed_flagged_and_warned(tmp_path: Path, keys: tuple[Path, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    reports = write_reports(tmp_path / "reports", complete=False)
    assert main(["pack", "--reports", str(reports), "--key", str(keys[0])]) == 0
    out, err = capsys.readouterr()
    assert "INCOMPLETE" in out and "warning: the run did not complete" in err
    archive = reports / f"evidence-{RUN_ID}.tar.gz"
    manifest = json.loads(members_of(archive)[MANIFEST])
    assert manifest["complete"] is False and "did not complete" in manifest["warnings"][0]
    assert main(["verify", str(archive), "--key", str(keys[1])]) == 0
    out, err = capsys.readouterr()
    assert "INCOMPLETE run" in out and "did not complete" in err


def test_key_errors_name_the_key_file(reports: Path, tmp_path: Path, keys: tuple[Path, Path],
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(evidence.KEY_ENV, raising=False)
    assert main(["pack", "--reports", str(reports)]) == 2
    assert "no signing key" in capsys.readouterr().err
    missing = tmp_path / "nope.pem"
    assert main(["pack", "--reports", str(reports), "--key", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["pack", "--reports", str(reports), "--key", str(keys[1])]) == 2  # a public key is no signing key
    assert str(keys[1]) in capsys.readouterr().err
    monkeypatch.setenv(evidence.KEY_ENV, str(keys[0]))
    assert main(["pack", "--reports", str(reports), "--out", str(tmp_path / "out.tar.gz")]) == 0
    assert "signed with key" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "out.tar.gz"), "--key", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_links_in_the_reports_are_refused(reports: Path, keys: tuple[Path, Path]) -> None:
    (reports / "allure-results" / "sneaky.json").symlink_to("/etc/hostname")
    with pytest.raises(ConfigError, match=r"sneaky\.json: not a regular file"):
        pack(reports, load_private_key(keys[0]))


# -- verify -----------------------------------------------------------------------------------


def test_verify_with_the_signers_key(bundle: Path, keys: tuple[Path, Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    result = verify(bundle, load_public_key(keys[1]))
    assert (result.run_id, result.created_at, result.files, result.embedded_key) == (
        RUN_ID, "2026-11-29T12:50:00Z", 12, False)
    assert main(["verify", str(bundle), "--key", str(keys[1])]) == 0
    out = capsys.readouterr().out
    assert f"{bundle}: OK" in out and RUN_ID in out and "2026-11-29T12:50:00Z" in out
    assert key_id(load_public_key(keys[1])) in out and "12" in out and "integrity only" not in out


def test_verify_without_a_key_says_it_proves_integrity_only(bundle: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert ": OK" in out and "integrity only, not who signed it" in out and "--key" in out


def test_another_public_key_fails(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    assert "not signed by this key" in rejected(bundle, tmp_path / "other.pub")
    assert main(["verify", str(bundle), "--key", str(tmp_path / "other.pub")]) == 1
    assert "REJECTED" in capsys.readouterr().err


def test_a_bundle_re_signed_by_someone_else_passes_integrity_but_not_the_signer(
        reports: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    generate_key_pair(tmp_path / "forger.pem", tmp_path / "forger.pub")
    forged = pack(reports, load_private_key(tmp_path / "forger.pem"), tmp_path / "forged.tar.gz", now=NOW).path
    assert verify(forged).embedded_key  # consistent in itself: that is all an embedded key can show
    assert "not signed by this key" in rejected(forged, keys[1])


def _tar_offset(position: int, archive_size: int) -> int | None:
    """Which tar byte an archive byte is, or None for the gzip header, a stored-block header or the trailer."""
    if position < 10 or position >= archive_size - 8:
        return None
    block, within = divmod(position - 10, 0xFFFF + 5)
    return None if within < 5 else block * 0xFFFF + within - 5


def _flip_positions(archive: bytes, tar: bytes) -> tuple[set[int], set[int]]:
    """(framing positions, tar positions) to change: the gzip header, every stored-block header and the
    trailer; every tar header field, the first and last data byte and padding of every member, the
    end-of-archive zeros, and evenly spread positions in between."""
    framing = set(range(10)) | set(range(len(archive) - 8, len(archive)))
    framing |= {10 + k * (0xFFFF + 5) + i for k in range(-(-len(tar) // 0xFFFF)) for i in range(5)}
    offsets, offset = set(), 0
    while tar[offset:offset + 512] != bytes(512):
        size = int(tar[offset + 124:offset + 135], 8)
        offsets |= set(range(offset, offset + 512, 3))  # a byte of every header field, and the first of each
        offsets |= {offset + i for i in (100, 108, 116, 136, 148, 155, 156, 257, 263, 265, 297, 345, 511)}
        end = offset + 512 + size
        offsets |= {offset + 512, end - 1} if size else set()
        offsets |= {end, end + (-size % 512) - 1} if size % 512 else set()  # padding after the data
        offset = end + (-size % 512)
    offsets |= set(range(offset, len(tar), 97)) | {len(tar) - 1}  # the end-of-archive zeros
    offsets |= set(range(0, len(tar), max(1, len(tar) // 400)))
    at = {10 + 5 * (o // 0xFFFF + 1) + o for o in offsets}
    return framing, {p for p in at if _tar_offset(p, len(archive)) is not None}


def _tampered(archive: bytes, tar: bytes, position: int, mask: int) -> bytes:
    """Change one byte; when it is a tar byte, also rewrite the gzip CRC32 and size as a forger would,
    so that every other check has to catch it on its own."""
    data = bytearray(archive)
    data[position] ^= mask
    offset = _tar_offset(position, len(archive))
    if offset is not None:
        changed = bytearray(tar)
        changed[offset] ^= mask
        data[-8:] = struct.pack("<II", zlib.crc32(changed), len(changed))
    return bytes(data)


def test_one_changed_byte_anywhere_in_the_archive_is_caught(bundle: Path, tmp_path: Path) -> None:
    original = bundle.read_bytes()
    tar = gzip.decompress(original)
    framing, inside = _flip_positions(original, tar)
    assert len(framing) >= 23 and len(inside) > 1500
    trials = [(p, 1 << bit) for p in framing for bit in range(8)] + [(p, 0xFF) for p in framing]
    trials += [(p, 0xFF if p % 2 else 1 << (p // 2 % 8)) for p in inside]  # one bit, or the whole byte
    tampered = tmp_path / "tampered.tar.gz"
    for position, mask in trials:
        tampered.write_bytes(_tampered(original, tar, position, mask))
        try:
            verify(tampered)
        except EvidenceRejected:
            continue
        except ConfigError as exc:  # not even gzip any more: only the two magic bytes can do that
            assert position < 2, f"byte {position}: {exc}"
            continue
        pytest.fail(f"changing archive byte {position} (xor {mask:#04x}) was not caught")
    assert verify(bundle).run_id == RUN_ID


@pytest.mark.parametrize(("offset", "field"), [(4, "mtime"), (9, "OS"), (3, "flags")])
def test_gzip_header_fields_are_named(bundle: Path, offset: int, field: str) -> None:
    data = bytearray(bundle.read_bytes())
    data[offset] ^= 0x01
    bundle.write_bytes(bytes(data))
    assert f"gzip header: field '{field}'" in rejected(bundle)


@pytest.mark.parametrize(("tar_offset", "field"), [(100, "mode"), (108, "uid"), (136, "mtime"), (265, "uname"),
                                                   (500, "padding")])
def test_tar_header_fields_are_named(bundle: Path, tar_offset: int, field: str) -> None:
    data = bytearray(bundle.read_bytes())
    data[15 + tar_offset] ^= 0x01  # the first member, MANIFEST.json, right after the first stored-block header
    bundle.write_bytes(bytes(data))
    assert f"tar: member 'MANIFEST.json': header field '{field}' is not canonical" in rejected(bundle)


def test_a_changed_member_names_the_file(bundle: Path) -> None:
    tar = gzip.decompress(bundle.read_bytes())
    at = tar.rindex(b'"hostname": "ci-1"') + len(b'"hostname": "ci-')  # summary.json is the last member
    data = bytearray(bundle.read_bytes())
    data[15 + at] = ord("2")
    bundle.write_bytes(bytes(data))
    assert "'summary.json': sha256 is" in rejected(bundle)


def test_appended_and_truncated_archives_fail(bundle: Path, tmp_path: Path) -> None:
    data = bundle.read_bytes()
    (tmp_path / "longer.tar.gz").write_bytes(data + b"\0")
    assert "1 bytes of trailing data" in rejected(tmp_path / "longer.tar.gz")
    (tmp_path / "shorter.tar.gz").write_bytes(data[:-100])
    assert "truncated" in rejected(tmp_path / "shorter.tar.gz")


def test_an_added_member_fails(bundle: Path, tmp_path: Path) -> None:
    members = members_of(bundle)
    members["allure-results/zz-extra-result.json"] = b'{"status": "passed"}'
    forged = write_members(tmp_path / "extra.tar.gz", members)
    assert "'allure-results/zz-extra-result.json': in the bundle but not in MANIFEST.json" in rejected(forged)


def test_a_removed_member_fails(bundle: Path, tmp_path: Path) -> None:
    members = members_of(bundle)
    del members["junit.xml"]
    forged = write_members(tmp_path / "fewer.tar.gz", members)
    assert "'junit.xml': listed in MANIFEST.json but missing" in rejected(forged)


def test_a_changed_member_with_a_rehashed_manifest_fails_the_signature(bundle: Path, keys: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    members = members_of(bundle)
    summary = json.loads(members["summary.json"])
    summary["checks"][0]["value"] = 0.21  # a better p99 than was measured
    members["summary.json"] = json.dumps(summary).encode()
    manifest = json.loads(members[MANIFEST])
    for entry in manifest["files"]:
        if entry["path"] == "summary.json":
            entry["sha256"] = hashlib.sha256(members["summary.json"]).hexdigest()
            entry["size"] = len(members["summary.json"])
    members[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    forged = write_members(tmp_path / "rehashed.tar.gz", members)
    for key in (None, keys[1]):
        assert "the signature does not match MANIFEST.json" in rejected(forged, key)


def _resigned(members: dict[str, bytes], private: Path, **changes: object) -> dict[str, bytes]:
    """Re-hash every file into the manifest and sign it with `private`: a bundle forged with a real key."""
    manifest = json.loads(members[MANIFEST])
    manifest["files"] = [{"path": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                         for n, d in sorted(members.items()) if n not in (MANIFEST, SIGNATURE)]
    manifest.update(changes)
    members[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    members[SIGNATURE] = load_private_key(private).sign(members[MANIFEST])
    return members


def test_the_manifest_and_signer_pub_must_name_the_signing_key(bundle: Path, keys: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    forged = write_members(tmp_path / "key-id.tar.gz", _resigned(members_of(bundle), keys[0], key_id="0" * 16))
    assert "MANIFEST.json: names key 0000000000000000, but the signature is by" in rejected(forged, keys[1])
    generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    members = members_of(bundle)
    members[PUBLIC_KEY] = (tmp_path / "other.pub").read_bytes()
    forged = write_members(tmp_path / "signer.tar.gz", _resigned(members, keys[0]))
    assert "signer.pub: key" in rejected(forged, keys[1]) and "is not the signer" in rejected(forged, keys[1])


def test_members_out_of_order_or_twice_fail(bundle: Path, tmp_path: Path) -> None:
    members = list(members_of(bundle).items())
    forged = tmp_path / "order.tar.gz"
    forged.write_bytes(gzip_bytes(build_tar([members[1], members[0], *members[2:]], MTIME)))
    assert "not in canonical (sorted) order" in rejected(forged)
    forged.write_bytes(gzip_bytes(build_tar([members[0], *members], MTIME)))
    assert f"tar: member '{members[0][0]}' appears twice" in rejected(forged)


@pytest.mark.parametrize(("name", "why"), [("../evil.sh", "unsafe path"), ("/etc/cron.d/evil", "unsafe path"),
                                           ("raw/./x.csv", "unsafe path")])
def test_unsafe_member_names_fail(bundle: Path, tmp_path: Path, name: str, why: str) -> None:
    members = members_of(bundle)
    members[name] = b"echo owned\n"
    forged = write_members(tmp_path / "unsafe.tar.gz", members)
    assert f"tar: member '{name}': {why}" in rejected(forged)


def test_links_and_devices_in_the_archive_fail(bundle: Path, tmp_path: Path) -> None:
    body = b"".join(tar_header(n, len(d), MTIME) + d + bytes(-len(d) % 512) for n, d in members_of(bundle).items())
    for flag, what in ((b"2", "a symbolic link"), (b"1", "a hard link"), (b"3", "a character device")):
        header = bytearray(tar_header("zz-link", 0, MTIME))  # sorts last, so it goes right after the others
        header[156:157] = flag
        header[148:156] = b" " * 8
        header[148:155] = b"%06o\0" % sum(header)
        stream = body + bytes(header)
        stream += bytes(1024 + -(len(stream) + 1024) % 10240)  # the canonical end-of-archive zeros
        forged = tmp_path / "link.tar.gz"
        forged.write_bytes(gzip_bytes(stream))
        assert f"tar: member 'zz-link' (tar byte {len(body)}) is {what}" in rejected(forged)


def test_verify_never_writes_to_disk(bundle: Path) -> None:
    before = sorted(p.name for p in bundle.parent.rglob("*"))
    verify(bundle)
    assert sorted(p.name for p in bundle.parent.rglob("*")) == before


def test_no_bundle_or_not_an_archive_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "missing.tar.gz")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not an archive\n")
    assert main(["verify", str(tmp_path / "notes.txt")]) == 2
    assert "not a gzip archive" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 2


def test_add_arguments_wires_evidence_into_a_cli() -> None:
    parser = argparse.ArgumentParser(prog="hil")
    add = parser.add_subparsers(dest="command", required=True)
    evidence.add_arguments(add)
    args = parser.parse_args(["evidence", "verify", "b.tar.gz", "--key", "k.pub"])
    assert (args.func, args.bundle, args.key, args.needs_inventory) == (evidence.cmd_verify, "b.tar.gz", "k.pub",
                                                                        False)
    args = parser.parse_args(["evidence", "pack", "--reports", "r", "--out", "o.tar.gz"])
    assert (args.func, args.reports, args.key, args.out) == (evidence.cmd_pack, "r", None, "o.tar.gz")
