"""The signed evidence bundle: what pack writes (a DSSE envelope over an in-toto statement, in an
ordinary .tar.gz), every change to it that verify must catch, and the README's recipe without hil."""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import random
import shutil
import subprocess
import tarfile
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hil import cli
from hil.artifacts import generate_key_pair, key_id, load_private_key, load_public_key
from hil.errors import ConfigError
from hil.report import evidence
from hil.report.evidence import ENVELOPE, PUBLIC_KEY, EvidenceRejected, pack, pae, verify

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "20261129T124433Z-host-1234"
NOW = datetime(2026, 11, 29, 12, 50, 0, tzinfo=UTC)
MTIME = int(NOW.timestamp())
DEVICE, MODEL = "orin-nano-emu", "digits-mlp"
RAW_CSV = f"raw/{DEVICE}/{MODEL}/latency_ms-0123456789.csv"
IN_TOTO = "application/vnd.in-toto+json"


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


MEMBERS = {ENVELOPE, PUBLIC_KEY, "summary.json", "environment.json", "hashes.json", "faults.json", "junit.xml",
           RAW_CSV, "allure-results/5b1d-result.json", "allure-results/9c2e-container.json",
           "allure-results/77aa-attachment.csv", "allure-results/environment.properties"}


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


def write_members(path: Path, members: dict[str, bytes] | list[tuple[str, bytes]], mtime: int = MTIME) -> Path:
    """A .tar.gz of exactly these members, written as anyone would with tarfile: what a forger would do."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in (members.items() if isinstance(members, dict) else members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tf.addfile(info, io.BytesIO(data))
    return path


def rejected(archive: Path, public: Path | None = None) -> str:
    with pytest.raises(EvidenceRejected) as info:
        verify(archive, load_public_key(public) if public else None)
    return str(info.value)


def open_envelope(members: dict[str, bytes]) -> tuple[dict[str, object], dict[str, object]]:
    """(envelope, statement) of a bundle's members, unverified."""
    env = json.loads(members[ENVELOPE])
    return env, json.loads(base64.b64decode(env["payload"]))


def seal(members: dict[str, bytes], private: Path, *, payload_type: str = IN_TOTO, keyid: str | None = None,
         rehash: bool = True, **predicate: object) -> dict[str, bytes]:
    """Re-hash every file into the statement and sign it with `private`: a bundle forged with a real key."""
    _, doc = open_envelope(members)
    if rehash:
        doc["subject"] = [{"name": n, "digest": {"sha256": hashlib.sha256(d).hexdigest()}}
                          for n, d in sorted(members.items()) if n != ENVELOPE]
    doc["predicate"].update(predicate)  # type: ignore[union-attr]
    payload = json.dumps(doc).encode()
    key = load_private_key(private)
    sig = key.sign(b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload))
    members[ENVELOPE] = json.dumps({
        "payloadType": payload_type, "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": keyid or key_id(key.public_key()), "sig": base64.b64encode(sig).decode()}]}).encode()
    return members


# -- pack -------------------------------------------------------------------------------------


def test_pack_writes_one_signed_archive_with_the_whole_run(reports: Path, keys: tuple[Path, Path]) -> None:
    packed = pack(reports, load_private_key(keys[0]), now=NOW)
    assert packed.path == reports / f"evidence-{RUN_ID}.tar.gz"
    assert [p.name for p in reports.glob("evidence-*")] == [packed.path.name]
    members = members_of(packed.path)
    assert list(members) == sorted(members) and set(members) == MEMBERS
    assert not any(name.startswith("raw/check-") for name in members)  # raw values are in summary.json and the CSVs
    assert members["summary.json"] == (reports / "summary.json").read_bytes()
    assert members["junit.xml"] == (reports / "junit.xml").read_bytes()
    assert members[RAW_CSV] == (reports / RAW_CSV).read_bytes()
    assert members[PUBLIC_KEY] == keys[1].read_bytes()
    assert json.loads(members["summary.json"])["checks"][0]["raw"]["values"] == [0.40, 0.41, 0.39, 0.44, 0.42]
    assert packed.files == len(MEMBERS) - 1 and packed.key_id == key_id(load_public_key(keys[1]))


def test_the_envelope_is_dsse_over_an_in_toto_statement(bundle: Path, keys: tuple[Path, Path]) -> None:
    members = members_of(bundle)
    env, doc = open_envelope(members)
    public = load_public_key(keys[1])
    assert set(env) == {"payloadType", "payload", "signatures"} and env["payloadType"] == IN_TOTO
    [signature] = env["signatures"]  # type: ignore[misc]
    assert signature["keyid"] == key_id(public)
    payload = base64.b64decode(env["payload"], validate=True)  # type: ignore[arg-type]
    # DSSE v1: the signature is over the pre-authentication encoding, built here by hand from the spec.
    public.verify(base64.b64decode(signature["sig"]), b"DSSEv1 28 " + IN_TOTO.encode() + b" %d " % len(payload)
                  + payload)
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["predicateType"] == "https://hil.dev/evidence/v1" == evidence.PREDICATE_TYPE
    subject = doc["subject"]
    assert [s["name"] for s in subject] == sorted(MEMBERS - {ENVELOPE})  # type: ignore[index]
    for entry in subject:  # type: ignore[attr-defined]
        assert entry["digest"] == {"sha256": hashlib.sha256(members[entry["name"]]).hexdigest()}
    assert doc["predicate"] == {
        "run_id": RUN_ID, "created_at": "2026-11-29T12:50:00Z", "hil": "0.1.0", "key_id": key_id(public),
        "summary_schema": "hil.summary/1", "complete": True, "warnings": [],
        "counts": {"passed": 2, "failed": 0, "infrastructure": 0, "inconclusive": 0, "skipped": 0},
        "started_at": "2026-11-29T12:44:33Z", "finished_at": "2026-11-29T12:47:01Z",
        "exit": {"code": 0, "meaning": "passed"}}


def test_pae_is_dsses_encoding() -> None:
    # The example in the DSSE protocol (github.com/secure-systems-lab/dsse, protocol.md).
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")
    assert pae("t", b"") == b"DSSEv1 1 t 0 "
    assert pae("é", b"x") == b"DSSEv1 2 \xc3\xa9 1 x"  # lengths in bytes, not characters


def test_pack_derives_environment_hashes_and_faults(bundle: Path) -> None:
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


def test_the_archive_is_plain_and_deterministic(reports: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    key = load_private_key(keys[0])
    first = pack(reports, key, tmp_path / "a.tar.gz", now=NOW).path.read_bytes()
    second = pack(reports, key, tmp_path / "b.tar.gz", now=NOW).path.read_bytes()
    assert first == second  # ed25519 is deterministic, and nothing of the clock or the machine goes in
    assert first[:2] == b"\x1f\x8b" and first[3] == 0 and int.from_bytes(first[4:8], "little") == MTIME
    with tarfile.open(tmp_path / "a.tar.gz") as tf:
        assert {(m.type, m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime) for m in tf.getmembers()} == {
            (tarfile.REGTYPE, 0o644, 0, 0, "", "", MTIME)}


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
    predicate = open_envelope(members_of(archive))[1]["predicate"]
    assert predicate["complete"] is False and "did not complete" in predicate["warnings"][0]  # type: ignore[index]
    assert main(["verify", str(archive), "--key", str(keys[1])]) == 0
    out, err = capsys.readouterr()
    assert "INCOMPLETE run" in out and "did not complete" in err


def test_no_allure_results_is_a_warning(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    reports = write_reports(tmp_path / "reports")
    shutil.rmtree(reports / "allure-results")
    packed = pack(reports, load_private_key(keys[0]), now=NOW)
    assert any("no Allure results" in w for w in packed.warnings)
    assert not any(n.startswith("allure-results/") for n in members_of(packed.path))


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
    assert (result.run_id, result.created_at, result.files, result.embedded_key, result.complete) == (
        RUN_ID, "2026-11-29T12:50:00Z", 11, False, True)
    assert main(["verify", str(bundle), "--key", str(keys[1])]) == 0
    out = capsys.readouterr().out
    assert f"{bundle}: OK" in out and RUN_ID in out and "2026-11-29T12:50:00Z" in out
    assert key_id(load_public_key(keys[1])) in out and "files     11" in out and "integrity only" not in out


def test_verify_without_a_key_says_it_proves_integrity_only(bundle: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert verify(bundle).embedded_key
    assert main(["verify", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert ": OK" in out and "integrity only, not who signed it" in out and "--key" in out


def test_another_public_key_fails(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    assert f"{ENVELOPE}: the envelope says key" in (why := rejected(bundle, tmp_path / "other.pub"))
    assert "not signed by this key" in why
    assert main(["verify", str(bundle), "--key", str(tmp_path / "other.pub")]) == 1
    assert "REJECTED" in capsys.readouterr().err


def test_a_bundle_re_signed_by_someone_else_passes_integrity_but_not_the_signer(
        reports: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    generate_key_pair(tmp_path / "forger.pem", tmp_path / "forger.pub")
    forged = pack(reports, load_private_key(tmp_path / "forger.pem"), tmp_path / "forged.tar.gz", now=NOW).path
    assert verify(forged).embedded_key  # consistent in itself: that is all an embedded key can show
    assert "not signed by this key" in rejected(forged, keys[1])


def test_a_repacked_bundle_with_the_same_files_still_verifies(bundle: Path, keys: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    # Not byte-canonical: another tar, order, time or compression of the same files is the same evidence.
    members = list(members_of(bundle).items())[::-1]
    repacked = write_members(tmp_path / "repacked.tar.gz", members, mtime=0)
    assert repacked.read_bytes() != bundle.read_bytes()
    assert verify(repacked, load_public_key(keys[1])).files == 11


def test_no_changed_byte_of_the_archive_changes_what_verifies(bundle: Path, tmp_path: Path) -> None:
    original = bundle.read_bytes()
    content = members_of(bundle)
    rng = random.Random(7)
    positions = sorted(set(range(0, len(original), max(1, len(original) // 250))) | set(range(len(original) - 8,
                                                                                        len(original))))
    tampered, caught = tmp_path / "tampered.tar.gz", 0
    for position in positions:
        data = bytearray(original)
        data[position] ^= 1 << rng.randrange(8)
        tampered.write_bytes(bytes(data))
        try:
            verify(tampered)
        except (EvidenceRejected, ConfigError):
            caught += 1
            continue
        # Only the container may differ (say the gzip header's mtime): never a file's name or bytes.
        assert members_of(tampered) == content, f"archive byte {position}"
    assert caught > len(positions) * 0.9


def test_a_changed_member_names_the_file(bundle: Path, tmp_path: Path) -> None:
    members = members_of(bundle)
    members["summary.json"] = members["summary.json"].replace(b'"hostname": "ci-1"', b'"hostname": "ci-2"')
    forged = write_members(tmp_path / "changed.tar.gz", members)
    why = rejected(forged)
    assert why.startswith("'summary.json': sha256 is ") and "changed after signing" in why
    assert "'summary.json'" in rejected(forged, tmp_path / "evidence.pub")


def test_appended_and_truncated_archives_fail(bundle: Path, tmp_path: Path) -> None:
    data = bundle.read_bytes()
    (tmp_path / "longer.tar.gz").write_bytes(data + b"\0")
    assert "gzip: 1 bytes of trailing data" in rejected(tmp_path / "longer.tar.gz")
    (tmp_path / "twice.tar.gz").write_bytes(data + data)  # a second gzip member is trailing data too
    assert f"gzip: {len(data)} bytes of trailing data" in rejected(tmp_path / "twice.tar.gz")
    for cut in (4, 100, len(data) // 2):
        (tmp_path / "shorter.tar.gz").write_bytes(data[:-cut])
        assert "gzip: the archive is truncated" in rejected(tmp_path / "shorter.tar.gz")


def test_data_after_the_end_of_the_tar_fails(bundle: Path, tmp_path: Path) -> None:
    tar = gzip.decompress(bundle.read_bytes())
    (tmp_path / "inside.tar.gz").write_bytes(gzip.compress(tar + b"hidden payload".ljust(512, b"\0")))
    assert "tar: data after the end of the archive" in rejected(tmp_path / "inside.tar.gz")
    (tmp_path / "garbage.tar.gz").write_bytes(gzip.compress(b"not a tar at all" * 100))
    assert "tar: not a readable tar archive" in rejected(tmp_path / "garbage.tar.gz")


def test_an_added_member_fails(bundle: Path, tmp_path: Path) -> None:
    members = members_of(bundle)
    members["allure-results/zz-extra-result.json"] = b'{"status": "passed"}'
    forged = write_members(tmp_path / "extra.tar.gz", members)
    assert (f"'allure-results/zz-extra-result.json': in the bundle but not in the subject of {ENVELOPE}"
            in rejected(forged))


def test_a_removed_member_fails(bundle: Path, tmp_path: Path) -> None:
    members = members_of(bundle)
    del members["junit.xml"]
    forged = write_members(tmp_path / "fewer.tar.gz", members)
    assert f"'junit.xml': in the subject of {ENVELOPE} but missing from the bundle" in rejected(forged)


def test_a_missing_or_broken_envelope_fails(bundle: Path, tmp_path: Path) -> None:
    members = members_of(bundle)
    envelope = members.pop(ENVELOPE)
    assert f"{ENVELOPE} is missing from the bundle" in rejected(write_members(tmp_path / "none.tar.gz", members))
    members[ENVELOPE] = envelope[:-10]
    assert f"{ENVELOPE}: not valid JSON" in rejected(write_members(tmp_path / "cut.tar.gz", members))
    doc = json.loads(envelope)
    doc["payload"] = doc["payload"][:-3] + "!!!"
    members[ENVELOPE] = json.dumps(doc).encode()
    assert f"{ENVELOPE}: payload is not base64" in rejected(write_members(tmp_path / "b64.tar.gz", members))
    doc = json.loads(envelope)
    doc["signatures"] = []
    members[ENVELOPE] = json.dumps(doc).encode()
    assert f"{ENVELOPE}: 'signatures' must list" in rejected(write_members(tmp_path / "nosig.tar.gz", members))


def test_a_changed_member_with_a_rehashed_statement_fails_the_signature(bundle: Path, keys: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    members = members_of(bundle)
    summary = json.loads(members["summary.json"])
    summary["checks"][0]["value"] = 0.21  # a better p99 than was measured
    members["summary.json"] = json.dumps(summary).encode()
    env, doc = open_envelope(members)
    for entry in doc["subject"]:  # type: ignore[attr-defined]
        if entry["name"] == "summary.json":
            entry["digest"]["sha256"] = hashlib.sha256(members["summary.json"]).hexdigest()
    env["payload"] = base64.b64encode(json.dumps(doc).encode()).decode()
    members[ENVELOPE] = json.dumps(env).encode()
    forged = write_members(tmp_path / "rehashed.tar.gz", members)
    for key in (None, keys[1]):
        assert f"{ENVELOPE}: the signature does not match the payload" in rejected(forged, key)


def test_a_changed_signer_pub_is_named_without_a_key(bundle: Path, tmp_path: Path) -> None:
    members = members_of(bundle)
    generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    members[PUBLIC_KEY] = (tmp_path / "other.pub").read_bytes()
    assert rejected(write_members(tmp_path / "swapped.tar.gz", members)).startswith("'signer.pub': sha256 is")
    members[PUBLIC_KEY] = b"not a key\n"
    assert rejected(write_members(tmp_path / "junk.tar.gz", members)).startswith("'signer.pub': sha256 is")
    del members[PUBLIC_KEY]
    gone = write_members(tmp_path / "gone.tar.gz", members)
    assert rejected(gone).startswith("'signer.pub': in the subject of attestation.dsse.json but missing")
    other = key_id(load_public_key(tmp_path / "other.pub"))
    members = seal(members, tmp_path / "other.pem", key_id=other)  # signed without a signer.pub: nothing to check with
    assert "signer.pub is missing, so there is no key" in rejected(write_members(tmp_path / "nokey.tar.gz", members))
    assert verify(tmp_path / "nokey.tar.gz", load_public_key(tmp_path / "other.pub")).files == 10


def test_the_statement_and_signer_pub_must_name_the_signing_key(bundle: Path, keys: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    forged = write_members(tmp_path / "key-id.tar.gz", seal(members_of(bundle), keys[0], key_id="0" * 16))
    assert "the statement names key 0000000000000000, but the signature is by" in rejected(forged, keys[1])
    forged = write_members(tmp_path / "keyid.tar.gz", seal(members_of(bundle), keys[0], keyid="f" * 16))
    assert f"{ENVELOPE}: the signature's keyid is ffffffffffffffff, but it was made by key" in rejected(forged)
    generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    members = members_of(bundle)
    members[PUBLIC_KEY] = (tmp_path / "other.pub").read_bytes()
    forged = write_members(tmp_path / "signer.tar.gz", seal(members, keys[0]))
    assert "signer.pub: key" in (why := rejected(forged, keys[1])) and "is not the signer" in why
    assert write_members(tmp_path / "resealed.tar.gz", seal(members_of(bundle), keys[0])).exists()
    assert verify(tmp_path / "resealed.tar.gz", load_public_key(keys[1])).run_id == RUN_ID  # seal() itself is sound


def test_the_types_must_be_dsse_in_toto_and_hil(bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    forged = write_members(tmp_path / "type.tar.gz", seal(members_of(bundle), keys[0], payload_type="text/plain"))
    assert f"{ENVELOPE}: payloadType is 'text/plain'" in rejected(forged, keys[1])
    members = members_of(bundle)
    env, doc = open_envelope(members)
    for field, value, message in (("predicateType", "https://example.com/other", "predicateType is"),
                                  ("_type", "https://in-toto.io/Statement/v0.1", "not an in-toto statement")):
        changed = {**doc, field: value}
        payload = json.dumps(changed).encode()
        sig = load_private_key(keys[0]).sign(pae(IN_TOTO, payload))
        env = {**env, "payload": base64.b64encode(payload).decode(),
               "signatures": [{"keyid": key_id(load_public_key(keys[1])), "sig": base64.b64encode(sig).decode()}]}
        forged = write_members(tmp_path / "statement.tar.gz", {**members, ENVELOPE: json.dumps(env).encode()})
        assert message in rejected(forged, keys[1])


def test_a_url_safe_base64_envelope_verifies(bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    members = members_of(bundle)
    env = json.loads(members[ENVELOPE])
    env["payload"] = base64.urlsafe_b64encode(base64.b64decode(env["payload"])).decode()  # DSSE allows either
    env["signatures"][0]["sig"] = base64.urlsafe_b64encode(base64.b64decode(env["signatures"][0]["sig"])).decode()
    members[ENVELOPE] = json.dumps(env).encode()
    assert verify(write_members(tmp_path / "urlsafe.tar.gz", members), load_public_key(keys[1])).files == 11


def test_a_member_twice_fails(bundle: Path, tmp_path: Path) -> None:
    members = list(members_of(bundle).items())
    forged = write_members(tmp_path / "twice.tar.gz", [*members, ("summary.json", b"{}")])
    assert "tar: member 'summary.json' appears twice" in rejected(forged)


@pytest.mark.parametrize("name", ["../evil.sh", "/etc/cron.d/evil", "raw/./x.csv", "raw//x.csv", "a\\b"])
def test_unsafe_member_names_fail(bundle: Path, tmp_path: Path, name: str) -> None:
    members = members_of(bundle)
    members[name] = b"echo owned\n"
    forged = write_members(tmp_path / "unsafe.tar.gz", members)
    assert f"tar: member '{name}': unsafe path" in rejected(forged)


def test_links_devices_and_directories_in_the_archive_fail(bundle: Path, tmp_path: Path) -> None:
    members = members_of(bundle)
    for kind, what in ((tarfile.SYMTYPE, "a symbolic link"), (tarfile.LNKTYPE, "a hard link"),
                       (tarfile.CHRTYPE, "a character device"), (tarfile.DIRTYPE, "a directory"),
                       (tarfile.FIFOTYPE, "a FIFO")):
        forged = write_members(tmp_path / "link.tar.gz", members)
        with tarfile.open(forged, "w:gz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            special = tarfile.TarInfo("zz-link")
            special.type, special.linkname = kind, "/etc/shadow"
            tf.addfile(special)
        assert "tar: member 'zz-link' (tar byte " in (why := rejected(forged)) and f") is {what};" in why


def test_the_bounds_are_enforced(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evidence, "MAX_MEMBERS", 5)
    assert "tar: more than 5 members" in rejected(bundle)
    monkeypatch.setattr(evidence, "MAX_MEMBERS", 100_000)
    monkeypatch.setattr(evidence, "MAX_TAR_BYTES", 4096)
    assert "gzip: the tar inside is more than" in rejected(bundle)
    monkeypatch.setattr(evidence, "MAX_BUNDLE_BYTES", 1024)
    assert "a bundle may be" in rejected(bundle)


def test_verify_never_writes_to_disk(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = sorted(p.name for p in bundle.parent.rglob("*"))
    opened: list[str] = []
    real_open = io.open

    def watching_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        opened.append(f"{file} {mode}")
        return real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", watching_open)
    monkeypatch.setattr(io, "open", watching_open)
    verify(bundle)
    assert not [o for o in opened if any(c in o.rsplit(" ", 1)[1] for c in "wax+")]
    assert sorted(p.name for p in bundle.parent.rglob("*")) == before


def test_no_bundle_or_not_an_archive_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "missing.tar.gz")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not an archive\n")
    assert main(["verify", str(tmp_path / "notes.txt")]) == 2
    assert "not a gzip archive" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 2
    assert "not a file" in capsys.readouterr().err


def test_a_rejected_bundle_exits_1_naming_the_file(bundle: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    members = members_of(bundle)
    members["junit.xml"] += b"<!-- edited -->\n"
    forged = write_members(tmp_path / "edited.tar.gz", members)
    assert main(["verify", str(forged)]) == 1
    err = capsys.readouterr().err
    assert f"hil: evidence REJECTED: {forged}: 'junit.xml': sha256 is" in err


def test_add_arguments_wires_evidence_into_a_cli() -> None:
    parser = argparse.ArgumentParser(prog="hil")
    add = parser.add_subparsers(dest="command", required=True)
    evidence.add_arguments(add)
    args = parser.parse_args(["evidence", "verify", "b.tar.gz", "--key", "k.pub"])
    assert (args.func, args.bundle, args.key, args.needs_inventory) == (evidence.cmd_verify, "b.tar.gz", "k.pub",
                                                                        False)
    args = parser.parse_args(["evidence", "pack", "--reports", "r", "--out", "o.tar.gz"])
    assert (args.func, args.reports, args.key, args.out) == (evidence.cmd_pack, "r", None, "o.tar.gz")


# -- without hil: the README's recipe ---------------------------------------------------------


def readme_recipe() -> str:
    """The ```bash block of README.md that checks a bundle with standard tools."""
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```bash\n")[1:]]
    [recipe] = [b for b in blocks if "openssl pkeyutl" in b]
    return recipe


def run_recipe(workdir: Path, archive: Path, public: Path) -> subprocess.CompletedProcess[str]:
    """The recipe verbatim, in a fresh directory holding the files its first line names."""
    workdir.mkdir()
    (workdir / "reports").mkdir()
    shutil.copy(archive, workdir / "reports" / "evidence-RUN_ID.tar.gz")
    shutil.copy(public, workdir / "evidence.pub")
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", readme_recipe()], cwd=workdir, text=True,
                          capture_output=True, timeout=60, check=False)


def test_readme_and_module_document_the_same_recipe() -> None:
    recipe = readme_recipe()
    assert recipe.startswith("BUNDLE=reports/evidence-RUN_ID.tar.gz PUB=evidence.pub")
    assert textwrap.indent(recipe, "    ") in (evidence.__doc__ or "")


@pytest.mark.skipif(not all(shutil.which(t) for t in ("bash", "tar", "jq", "openssl", "sha256sum", "base64")),
                    reason="the recipe needs bash, GNU tar, jq, openssl and coreutils")
def test_the_readme_recipe_verifies_a_bundle_without_hil(bundle: Path, keys: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    good = run_recipe(tmp_path / "good", bundle, keys[1])
    assert good.returncode == 0, good.stderr
    assert "Signature Verified Successfully" in good.stdout
    assert "summary.json: OK" in good.stdout and f"{RAW_CSV}: OK" in good.stdout
    assert json.loads(good.stdout[good.stdout.index("{"):])["run_id"] == RUN_ID

    generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    other = run_recipe(tmp_path / "other", bundle, tmp_path / "other.pub")
    assert other.returncode != 0 and "Signature Verified Successfully" not in other.stdout

    members = members_of(bundle)
    members["summary.json"] = members["summary.json"].replace(b'"PASS"', b'"FAIL"')
    changed = run_recipe(tmp_path / "changed", write_members(tmp_path / "changed.tar.gz", members), keys[1])
    assert changed.returncode != 0 and "summary.json: FAILED" in changed.stdout

    members = members_of(bundle)
    members["allure-results/zz-extra.json"] = b"{}"
    added = run_recipe(tmp_path / "added", write_members(tmp_path / "added.tar.gz", members), keys[1])
    assert added.returncode != 0 and "allure-results/zz-extra.json" in added.stdout
