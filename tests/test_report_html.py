"""`hil report` end to end: real Allure results from allure-pytest, Allure 3's single-file report, and a look at
the page in headless chromium (nothing skipped: `make setup` installs node, the Allure CLI and chromium)."""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil import cli
from hil.report import browser
from hil.report.html import ReportError, ToolMissing, build_report, find_allure, find_node, tracking_tags

DEVICES = ("orin-alpha", "pi-bravo")  # made up: no lab, no device
CATEGORY = "Latency budget exceeded"
FAILED_TEST = "test_latency_budget[pi-bravo]"
IMAGE_TEST = "test_camera_frame[orin-alpha]"


def make_png(width: int = 48, height: int = 32) -> bytes:
    """A small valid RGB PNG (a gradient), without any imaging library."""
    rows = b"".join(b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PNG = make_png()

SAMPLE_MODULE = textwrap.dedent(f'''
    import base64

    import allure
    import pytest

    DEVICES = {DEVICES!r}
    PNG = base64.b64decode({base64.b64encode(PNG).decode()!r})


    @pytest.mark.parametrize("device", DEVICES)
    def test_latency_budget(device):
        allure.dynamic.parent_suite(device)
        allure.dynamic.suite("latency")
        allure.dynamic.sub_suite("resnet-tiny")
        measured = 2.0 if device == "pi-bravo" else 0.4
        if measured > 1.0:
            pytest.fail(f"latency_p99_ms <= 1.0: measured {{measured}} ms over 200 runs: FAIL", pytrace=False)


    @pytest.mark.parametrize("device", DEVICES)
    def test_camera_frame(device):
        allure.dynamic.parent_suite(device)
        allure.dynamic.suite("vision")
        allure.attach(PNG, name="camera frame", attachment_type=allure.attachment_type.PNG)
''')

CATEGORIES = [
    {"name": CATEGORY, "matchedStatuses": ["failed"],
     "messageRegex": r".*latency_p\d+_ms <= [0-9.]+: measured .*: FAIL.*"},
]


@dataclass
class Built:
    results: Path
    html: Path
    by_name: dict[str, str]  # test name -> uid in the report


def _text(dom: str) -> str:
    """What a reader sees: the DOM without scripts, styles and tags, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    try:  # a fresh machine without them fails here, by name: `make setup` installs all three
        find_node(), find_allure(), browser.find_chromium()
    except ToolMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    root = tmp_path_factory.mktemp("report")
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "test_sample.py").write_text(SAMPLE_MODULE)
    results = root / "allure-results"
    # Only allure-pytest: hil's own plugin and any other installed one stay out of the sample run.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTEST_ADDOPTS": ""}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "allure_pytest.plugin", "-p", "no:cacheprovider",
                           f"--alluredir={results}", "test_sample.py"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # exactly the one budget failure
    assert "1 failed, 3 passed" in proc.stdout, proc.stdout
    (results / "categories.json").write_text(json.dumps(CATEGORIES))
    html = build_report(results, root / "allure-report", timeout=120)
    by_name = {data["name"]: uid for uid, data in browser.results_by_uid(html).items()}
    return Built(results, html, by_name)


def test_report_is_one_offline_file_without_tracking(built: Built) -> None:
    assert built.html.name == "index.html"
    assert [p.name for p in built.html.parent.iterdir()] == ["index.html"]
    page = built.html.read_text(encoding="utf-8")
    assert tracking_tags(page) == []
    for marker in ("googletagmanager", "google-analytics", "gtag("):
        assert marker not in page
    # Everything is inlined: nothing is loaded from anywhere else.
    assert not re.findall(r"""<(?:script|link|img)\b[^>]*\b(?:src|href)=["'](?!data:)[^"']+""", page)
    assert sorted(built.by_name) == sorted(f"{t}[{d}]" for t in ("test_latency_budget", "test_camera_frame")
                                           for d in DEVICES)


def test_suites_page_shows_both_devices(built: Built) -> None:
    dom = browser.render_dom(built.html, "suites")
    names = re.findall(r'class="node__name">([^<]*)<', dom)
    for device in DEVICES:
        assert device in names, names


def test_failed_test_is_listed_under_its_category(built: Built) -> None:
    overview = browser.render_dom(built.html, "categories")
    assert CATEGORY in re.findall(r'class="node__name">([^<]*)<', overview)

    uid = built.by_name[FAILED_TEST]
    fragment = browser.tree_route(built.html, "categories", uid)
    assert fragment.startswith("categories/") and fragment.endswith("/" + uid)
    text = _text(browser.render_dom(built.html, fragment))
    # The tree: category > message > test; then the test's own pane, naming its category.
    tree = text[text.index(CATEGORY):]
    assert "latency_p99_ms &lt;= 1.0: measured 2.0 ms over 200 runs: FAIL" in tree
    assert FAILED_TEST in tree[tree.index("FAIL"):]
    assert f"Categories: {CATEGORY}" in text
    assert "test_latency_budget[orin-alpha]" not in text  # the passing twin is in no category


def test_result_page_shows_the_png_attachment(built: Built, tmp_path: Path) -> None:
    uid = built.by_name[IMAGE_TEST]
    attachments = browser.results_by_uid(built.html)[uid]["testStage"]["attachments"]
    assert [(a["name"], a["type"]) for a in attachments] == [("camera frame", "image/png")]
    fragment = f"testresult/{uid}?attachment={attachments[0]['uid']}"

    dom = browser.render_dom(built.html, fragment)
    assert IMAGE_TEST in _text(dom)
    sources = re.findall(r'<img\b[^>]*\bsrc="((?:data|blob):[^"]+)"', dom)
    assert sources, "no <img> with a data: or blob: URL on the test result page"
    data_urls = [s for s in sources if s.startswith("data:image/png;base64,")]
    if data_urls:  # the picture is the very PNG the test attached
        assert PNG in [base64.b64decode(s.split(",", 1)[1]) for s in data_urls]

    png = browser.screenshot(built.html, fragment, tmp_path / "attachment.png")
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1400, 900)


def test_cli_main_prints_the_path(built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "again"
    assert cli.main(["report", "--results", str(built.results), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    assert (out / "index.html").stat().st_size > 100_000

    assert cli.main(["report", "--results", str(tmp_path / "nothing"), "--out", str(out)]) == 1
    assert "--alluredir" in capsys.readouterr().err


def test_tracking_tags_are_found_even_inlined() -> None:
    snippet = '<script async src="https://www.googletagmanager.com/gtag/js?id=G-X"></script>'
    assert "googletagmanager.com" in tracking_tags(f"<html>{snippet}</html>")
    inlined = base64.b64encode(b"window.dataLayer=[];function gtag(){dataLayer.push(arguments)}").decode()
    assert tracking_tags(f'<script src="data:text/javascript;base64,{inlined}"></script>')
    assert tracking_tags('<script src="data:text/javascript;base64,' + base64.b64encode(b"1+1").decode() + '">') == []


def test_missing_allure_cli_names_make_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hil.report.html.repo_roots", lambda: [tmp_path])
    (tmp_path / "allure-results").mkdir()
    (tmp_path / "allure-results" / "x-result.json").write_text("{}")
    with pytest.raises(ToolMissing, match="make setup"):
        build_report(tmp_path / "allure-results", tmp_path / "out")
    assert isinstance(ToolMissing("x"), ReportError)
