"""`hil report`: one self-contained HTML file (reports/allure-report/index.html) from a run's Allure results.

It runs the Allure 3 CLI that `make setup` installs with npm (package.json pins it) into node_modules/, with
only its allure2 report plugin ("Allure Classic") in single-file mode: styles, scripts, test data and
attachments are all inlined, so the file opens offline from file:// and can be archived or mailed as is.

The Allure config is written to a temporary directory that is also Allure's working directory, so an
allurerc.* in the caller's cwd is never read and nothing is left there. categories.json in the results
directory is honoured (Allure's reader takes it from there); note that Allure evaluates messageRegex as a
JavaScript regular expression (with the `s` flag) that must match somewhere in the status message.

ALLURE_NO_ANALYTICS=true keeps the report template from embedding Google Analytics; the generated file is
checked anyway, and a report that would phone home is refused.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from hil.errors import HilError
from hil.report.files import write_bytes_atomic

DEFAULT_RESULTS = Path("reports/allure-results")
DEFAULT_OUT = Path("reports/allure-report")
DEFAULT_TIMEOUT_S = 300.0
REPORT_NAME = "HIL validation report"

# What an analytics or tracking tag looks like, in the page or in a script inlined as a data: URL.
TRACKING = re.compile(
    r"googletagmanager\.com|google-analytics\.com|googleanalytics|\bgtag\s*\(|\bdataLayer\.push\s*\(|"
    r"doubleclick\.net|\bga\s*\(\s*['\"](?:create|send)|plausible\.io|cdn\.segment\.com|api\.segment\.io|"
    r"static\.hotjar\.com|cdn\.mxpnl\.com|api-js\.mixpanel\.com|matomo\.js|piwik\.js",
    re.IGNORECASE,
)
_INLINE_CODE = re.compile(r"data:(?:text|application)/(?:javascript|css|html)[^;,\"']*;base64,([A-Za-z0-9+/=]+)")


class ReportError(HilError):
    """The HTML report could not be built, or the built file is not fit to publish."""


class ToolMissing(ReportError):
    """A program the report needs (node, the Allure CLI, chromium) is not installed: `make setup` installs it."""


def repo_roots() -> list[Path]:
    """Where node_modules/ may be: the checkout hil is imported from (an editable install), then cwd and up."""
    here = Path(__file__).resolve().parents[2]
    cwd = Path.cwd().resolve()
    roots = [here, cwd, *cwd.parents]
    return list(dict.fromkeys(roots))


def find_allure() -> Path:
    """node_modules/.bin/allure of the repo (see repo_roots), resolved to the CLI's script."""
    for root in repo_roots():
        candidate = root / "node_modules" / ".bin" / "allure"
        if candidate.exists():
            return candidate.resolve()
    raise ToolMissing(f"the Allure 3 CLI is not installed (no node_modules/.bin/allure under {repo_roots()[0]} "
                      f"or {Path.cwd()}): run `make setup` in the hil checkout (it runs `npm ci`)")


def find_node() -> str:
    for name in ("node", "nodejs"):
        path = shutil.which(name)
        if path:
            return path
    raise ToolMissing("Node.js is not installed (no `node` on PATH): run `make setup` "
                      "(it installs Debian's nodejs and npm)")


def tracking_tags(html: str) -> list[str]:
    """Analytics/tracking markers in a page, including inside scripts and styles inlined as base64 data: URLs."""
    found = [m.group(0) for m in TRACKING.finditer(html)]
    for m in _INLINE_CODE.finditer(html):
        try:
            code = base64.b64decode(m.group(1), validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            continue
        found += [m2.group(0) for m2 in TRACKING.finditer(code)]
    return sorted(set(found))


def _check_results(results: Path) -> None:
    if not results.is_dir():
        raise ReportError(f"no Allure results at {results}: run pytest with --alluredir {results} first")
    if not any(results.glob("*-result.json")):
        raise ReportError(f"{results} holds no *-result.json: run pytest with --alluredir {results} first")
    categories = results / "categories.json"
    if categories.exists():
        try:
            data = json.loads(categories.read_text())
        except (OSError, ValueError) as exc:
            raise ReportError(f"{categories} is not valid JSON: {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(c, dict) and c.get("name") for c in data):
            raise ReportError(f"{categories} must be a JSON list of objects, each with a name")


def allure_config(output: Path, name: str = REPORT_NAME) -> dict[str, object]:
    """The allurerc.json given to `allure generate --config`: only the allure2 plugin, single file."""
    return {
        "name": name,
        "output": str(output),
        "plugins": {"allure2": {"options": {"singleFile": True, "reportName": name, "reportLanguage": "en"}}},
    }


def build_report(results: Path, out: Path, *, timeout: float = DEFAULT_TIMEOUT_S, name: str = REPORT_NAME) -> Path:
    """Build out/index.html, a single-file offline Allure report of `results`; return its path.

    Raises ToolMissing if node or the Allure CLI is not installed, ReportError if Allure fails, runs past
    `timeout` seconds, writes no index.html, or the page carries an analytics/tracking tag.
    """
    results, out = Path(results).resolve(), Path(out).resolve()
    _check_results(results)
    node, allure = find_node(), find_allure()
    env = {**os.environ, "ALLURE_NO_ANALYTICS": "true", "NO_COLOR": "1", "FORCE_COLOR": "0"}
    with tempfile.TemporaryDirectory(prefix="hil-report-") as tmp:
        work, generated = Path(tmp), Path(tmp) / "report"
        config = work / "allurerc.json"
        config.write_text(json.dumps(allure_config(generated, name), indent=2))
        cmd = [node, str(allure), "generate", "--config", str(config), "--cwd", str(work), str(results)]
        try:
            proc = subprocess.run(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ReportError(f"allure generate ran past {timeout:g} s on {results}") from exc
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-20:])
            raise ReportError(f"allure generate failed (exit {proc.returncode}) on {results}:\n{tail}")
        index = generated / "index.html"
        if not index.is_file():
            written = sorted(p.name for p in generated.glob("*"))
            raise ReportError(f"allure generate wrote no index.html (it wrote: {written})")
        html = index.read_text(encoding="utf-8")
        if "<script" not in html or "reportData" not in html:
            raise ReportError(f"{index} is not a single-file Allure report (no inlined report data)")
        tags = tracking_tags(html)
        if tags:
            raise ReportError(f"the generated report carries analytics/tracking tags {tags}: refusing to publish it "
                              "(is ALLURE_NO_ANALYTICS still honoured by this Allure version?)")
        target = out / "index.html"
        write_bytes_atomic(target, index.read_bytes())
    return target


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `hil report`, for a subcommand parser of hil's CLI or a stand-alone one."""
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help=f"the Allure results directory (default: {DEFAULT_RESULTS})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where index.html goes (default: {DEFAULT_OUT})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"give up on Allure after S seconds (default: {DEFAULT_TIMEOUT_S:g})")
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the report from parsed arguments and print the path of index.html; errors are raised (HilError)."""
    print(build_report(args.results, args.out, timeout=args.timeout))
    return 0
