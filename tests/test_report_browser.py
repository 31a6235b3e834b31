"""index.html in a real browser: headless Chromium opens the page the report stage wrote and the
test asks it, over the DevTools protocol, what it rendered: the table's rows, every image decoded
(naturalWidth > 0), every SVG laid out, no console error, no request but the page itself. The
screenshot is kept (tmp_path, and $ARCPIPE_TEST_ARTIFACTS when set).

The DevTools protocol runs over a pipe (--remote-debugging-pipe: JSON messages ending in NUL on the
browser's fds 3 and 4), so no port, no websocket library, nothing beyond the standard library.
Without Chromium the test skips, naming what to install; under CI=true it fails instead.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from arcpipe.report import build_rows, load_metrics, table_cells
from arcpipe.stages import main
from conftest import in_ci
from test_report_html import make_inputs

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL = "apt-get install -y chromium"
TIMEOUT = 30.0

# what the page rendered, read in the page after it loaded (nothing is injected into the file)
PROBE = """(async () => {
  const imgs = [...document.images];
  const decoded = await Promise.all(imgs.map(i => i.decode().then(() => true, () => false)));
  return {
    title: document.title,
    scripts: document.scripts.length,
    images: imgs.map((i, k) => ({alt: i.alt, decoded: decoded[k], complete: i.complete,
                                 width: i.naturalWidth, height: i.naturalHeight,
                                 scheme: i.currentSrc.split(':')[0]})),
    rows: [...document.querySelectorAll('#results tbody tr')].map(tr => [...tr.cells].map(td => td.textContent)),
    svgs: [...document.querySelectorAll('svg')].map(s => {
      const b = s.getBoundingClientRect();
      return {width: b.width, height: b.height, lines: s.querySelectorAll('polyline').length};
    }),
    sections: [...document.querySelectorAll('section')].map(s => s.id),
    missing: [...document.querySelectorAll('p.missing')].map(p => p.textContent),
    height: document.documentElement.scrollHeight,
  };
})()"""


def _chromium() -> str:
    exe = os.environ.get("ARCPIPE_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not exe:
        reason = f"no Chromium to open index.html in (looked for {', '.join(BROWSERS)}; {INSTALL})"
        if in_ci():
            pytest.fail(f"CI=true: the browser test must run, but {reason}")
        pytest.skip(reason)
    return exe


class DevTools:
    """A headless Chromium driven over --remote-debugging-pipe; stop() ends its process group."""

    def __init__(self, exe: str, profile: Path, log: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # fds 10+ in the child, so moving them onto 3 and 4 cannot overwrite one another
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]

        def onto_3_and_4():
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self._log = open(log, "wb")
        try:
            self.proc = subprocess.Popen(
                [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                 f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
                 "--disable-extensions", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--disable-crash-reporter", "--disable-breakpad",
                 "--hide-scrollbars", "--mute-audio", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, pass_fds=(3, 4),
                preexec_fn=onto_3_and_4, start_new_session=True)
        finally:
            for fd in (to_browser_r, from_browser_w, *high):
                os.close(fd)
        self._next = 0
        self._inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    self._inbox.put(None)
                    return
                buf += chunk
                *messages, buf = buf.split(b"\0")
                for m in messages:
                    self._inbox.put(json.loads(m))

    def _take(self, deadline: float) -> dict:
        try:
            msg = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError("Chromium did not answer in time") from None
        if msg is None:
            raise RuntimeError(f"Chromium closed the DevTools pipe (exit code {self.proc.poll()})")
        return msg

    def call(self, method: str, session: str | None = None, **params):
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._take(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> dict:
        seen = next((e for e in self.events if e.get("method") == method and e.get("sessionId") == session), None)
        deadline = time.monotonic() + TIMEOUT
        while seen is None:
            e = self._take(deadline)
            self.events.append(e)
            if e.get("method") == method and e.get("sessionId") == session:
                seen = e
        return seen

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.call("Browser.close")
                except (OSError, RuntimeError, TimeoutError):
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:  # the browser and its helpers: the process group this test started, by its pid
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(timeout=10)
            os.close(self._to_browser)
            self._log.close()


@pytest.fixture
def browser(tmp_path):
    exe = _chromium()
    b = DevTools(exe, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        yield b
    finally:
        b.stop()


def _problems(events: list[dict], session: str, page_url: str) -> list[str]:
    """Console errors, uncaught exceptions, error log entries and any request but the page and data: URIs."""
    out = []
    for e in events:
        if e.get("sessionId") != session:
            continue
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        elif m == "Runtime.exceptionThrown":
            out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log error: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if url != page_url and not url.startswith("data:"):
                out.append(f"request: {url[:120]}")
        elif m == "Network.loadingFailed":
            out.append(f"loading failed: {p.get('errorText')}")
    return out


def test_index_html_renders_in_chromium(browser, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_inputs(tmp_path)
    assert main("report", ["--params", "params.yaml"]) == 0
    page = tmp_path / "reports" / "index.html"
    url = page.as_uri()

    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable", session)
    browser.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=2000, deviceScaleFactor=1,
                 mobile=False)
    nav = browser.call("Page.navigate", session, url=url)
    assert not nav.get("errorText"), nav
    browser.wait_for("Page.loadEventFired", session)
    got = browser.call("Runtime.evaluate", session, expression=PROBE, awaitPromise=True, returnByValue=True)
    assert "exceptionDetails" not in got, got
    seen = got["result"]["value"]

    shot = browser.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": 1280, "height": min(seen["height"], 12000), "scale": 1})
    png = base64.b64decode(shot["data"])
    (tmp_path / "report.png").write_bytes(png)
    if os.environ.get("ARCPIPE_TEST_ARTIFACTS"):
        dest = Path(os.environ["ARCPIPE_TEST_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "report.png", dest / "report_index_html.png")
        shutil.copyfile(page, dest / "report_index.html")
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    metrics = load_metrics(tmp_path / "metrics")
    assert seen["title"] == "Results beside the ArcFace paper" and seen["scripts"] == 0
    assert seen["rows"] == [list(table_cells(r)) for r in build_rows(metrics)]
    assert len(seen["images"]) == 3                                   # the contact sheet, two histograms
    for img in seen["images"]:
        assert img["scheme"] == "data" and img["decoded"] and img["complete"], img
        assert img["width"] > 0 and img["height"] > 0, img
    assert len(seen["svgs"]) == 4                                     # the ROC, three training curves
    for svg in seen["svgs"]:
        assert svg["width"] > 100 and svg["height"] > 100 and svg["lines"] >= 1, svg
    assert seen["sections"] == ["benchmarks", "roc", "training", "alignment", "cleaning", "run"]
    assert any("ijbs" in line and "not produced" in line for line in seen["missing"])
    assert _problems(browser.events, session, url) == []
