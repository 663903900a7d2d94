"""Look at a built report as a person would: Debian's chromium, headless, renders it from file://.

Chromium gets a throw-away profile and HOME, and flags that keep it off every network: host names resolve
to nothing, every request (loopback included) goes to a "proxy" on a loopback port that this process holds
bound but never listens on (so connecting is refused at once), and background services (component
updates, safe browsing, metrics, sync, translate, media router...) are off. Debian's /usr/bin/chromium
wrapper is bypassed, so its Google API keys and extra flags are not used. Under strace the only socket call
towards a non-local address is chromium's IPv6 reachability probe: a UDP connect(), which sends no packet.

The allure2 single-file report routes by URL fragment:
  ""                         overview (widgets)
  "categories", "suites", "behaviors", "packages", "graph", "timeline", "run"
  "<tab>/<group uid>/<test result uid>"   a tree with one test result opened beside it
  "testresult/<test result uid>"          one test result on its own page ("/<tab>" appended picks a tab)
  "testresult/<uid>?attachment=<attachment uid>"   the same with an attachment opened (an <img> for a picture)
Those uids are in the report's embedded data: results_by_uid() and tree_route() find them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hil.report.html import ReportError, ToolMissing

_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")
DEFAULT_BUDGET_MS = 15_000
_EMBEDDED = re.compile(r'\bd\("([^"]+\.json)","([A-Za-z0-9+/=]*)"\)')


def find_chromium() -> str:
    for name in _CANDIDATES:
        path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if path:
            return path
    raise ToolMissing("chromium is not installed (no /usr/lib/chromium/chromium or `chromium` on PATH): "
                      "run `make setup` (it installs Debian's chromium)")


def report_data(html: Path) -> dict[str, Any]:
    """The JSON files a single-file allure2 report embeds by name ("data/suites.json", "data/test-cases/<uid>.json")."""
    text = Path(html).read_text(encoding="utf-8")
    return {name: json.loads(base64.b64decode(value)) for name, value in _EMBEDDED.findall(text)}


def results_by_uid(html: Path) -> dict[str, dict[str, Any]]:
    """The report's test results by uid (the <uid> of #testresult/<uid>): name, status, testStage.attachments..."""
    prefix = "data/test-cases/"
    return {name[len(prefix):-len(".json")]: data for name, data in report_data(html).items()
            if name.startswith(prefix)}


def tree_route(html: Path, tab: str, uid: str) -> str:
    """The fragment that opens tree `tab` ("categories", "suites", "behaviors") on test result `uid`."""
    def walk(node: dict[str, Any]) -> str | None:
        for child in node.get("children", []):
            if child.get("uid") == uid and "children" not in child:
                return f"{tab}/{child.get('parentUid') or node['uid']}/{uid}"
            found = walk(child)
            if found:
                return found
        return None

    tree = report_data(html).get(f"data/{tab}.json")
    route = walk(tree) if tree else None
    if route is None:
        raise ReportError(f"test result {uid} is not in the {tab} tree of {html}")
    return route


def url_of(html: Path, fragment: str = "") -> str:
    url = Path(html).resolve().as_uri()
    fragment = fragment.lstrip("#")
    return f"{url}#{fragment}" if fragment else url


def _offline_flags(profile: Path, proxy_port: int, budget_ms: int) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--hide-scrollbars",
        "--mute-audio",
        # No network: no name resolves, everything (loopback too) goes to a proxy port that refuses.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--proxy-server=http://127.0.0.1:{proxy_port}",
        "--proxy-bypass-list=<-loopback>",
        "--dns-prefetch-disable",
        "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        "--webrtc-ip-handling-policy=disable_non_proxied_udp",
        # No background services that would try to talk to anyone.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-client-side-phishing-detection",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-extensions",
        "--disable-sync",
        "--disable-breakpad",
        "--disable-crash-reporter",
        "--metrics-recording-only",
        "--no-pings",
        "--no-first-run",
        "--no-default-browser-check",
        "--safebrowsing-disable-auto-update",
        "--media-router=0",
        "--disable-features=MediaRouter,DialMediaRouteProvider,Translate,OptimizationHints,"
        "CertificateTransparencyComponentUpdater,AutofillServerCommunication,InterestFeedContentSuggestions,"
        "NetworkTimeServiceQuerying,SafeBrowsing,PrivacySandboxSettings4,AcceptCHFrame",
    ]


def _run(extra: list[str], html: Path, fragment: str, timeout: float, budget_ms: int) -> subprocess.CompletedProcess:
    html = Path(html)
    if not html.is_file():
        raise ReportError(f"no report at {html}")
    chromium = find_chromium()
    # Bound, never listening: the proxy address stays ours for the run and every connection is refused.
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        blackhole.bind(("127.0.0.1", 0))
        port = blackhole.getsockname()[1]
        with tempfile.TemporaryDirectory(prefix="hil-chromium-") as tmp:
            home = Path(tmp)
            env = {k: v for k, v in os.environ.items() if not k.startswith("GOOGLE_")}
            env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"),
                       TMPDIR=str(home))
            cmd = [chromium, *_offline_flags(home / "profile", port, budget_ms), *extra, url_of(html, fragment)]
            proc = subprocess.Popen(cmd, env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                os.killpg(proc.pid, signal.SIGKILL)  # chromium's own process group: its zygote and renderers
                proc.communicate()
                raise ReportError(f"chromium ran past {timeout:g} s on {url_of(html, fragment)}") from exc
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    finally:
        blackhole.close()
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise ReportError(f"chromium exited {proc.returncode} on {url_of(html, fragment)}:\n{tail}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def render_dom(html: Path, fragment: str = "", timeout: float = 60, *, budget_ms: int = DEFAULT_BUDGET_MS) -> str:
    """The DOM of `html` (at #fragment) after its scripts ran, as chromium --dump-dom serializes it."""
    return _run(["--dump-dom"], html, fragment, timeout, budget_ms).stdout


def screenshot(html: Path, fragment: str, out_png: Path, timeout: float = 60, *, size: tuple[int, int] = (1400, 900),
               budget_ms: int = DEFAULT_BUDGET_MS) -> Path:
    """A PNG of `html` at #fragment, as a window of `size` pixels shows it."""
    out_png = Path(out_png).resolve()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    out_png.unlink(missing_ok=True)
    _run([f"--screenshot={out_png}", f"--window-size={size[0]},{size[1]}"], html, fragment, timeout, budget_ms)
    if not out_png.is_file() or out_png.stat().st_size == 0:
        raise ReportError(f"chromium wrote no screenshot to {out_png}")
    return out_png
