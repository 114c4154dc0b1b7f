"""Pages as a person sees them: Debian's headless Chromium, with the network cut off.

Every host name resolves to nothing except loopback, so a page that still needs a CDN shows it
here exactly as it would on a municipality's server without internet access. Chromium is
required under CI=true (``./run test`` installs Debian's package where it is missing and it runs
as root); locally a missing browser skips the test.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

OFFLINE = "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--host-resolver-rules={OFFLINE}"]


def chromium() -> str:
    """The browser's path; skips (fails under CI=true) when there is none."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("headless Chromium is required in CI (apt-get install chromium)")
    pytest.skip("headless Chromium not installed (apt-get install chromium)")


def _url(page: str | Path) -> str:
    return page if str(page).startswith(("http://", "https://", "file://")) else Path(page).resolve().as_uri()


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
                              capture_output=True, text=True, timeout=timeout)


def rendered_dom(page: str | Path, timeout: int = 90) -> str:
    """The page's DOM after its scripts ran, offline."""
    proc = _run(["--dump-dom", _url(page)], timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def screenshot(page: str | Path, out: Path, size: tuple[int, int] = (1280, 1600), timeout: int = 90) -> Path:
    """A PNG of the page as rendered offline (for a person to look at, and for its size)."""
    proc = _run([f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", _url(page)], timeout)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-2000:]
    return out


ARTIFACTS_ENV = "FBS_DEBITOR_TEST_ARTIFACTS"


def artifact(name: str) -> Path:
    """Where a test keeps a file for a person to look at after the run (screenshots): the folder in
    FBS_DEBITOR_TEST_ARTIFACTS, default ``var/test-artifacts/`` in the checkout; CI keeps it."""
    folder = Path(os.environ.get(ARTIFACTS_ENV) or Path(__file__).resolve().parents[1] / "var" / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


DOCUMENT = "document.documentElement.outerHTML"


def logged_in_page(url: str, token: str, shot: Path, size: tuple[int, int] = (1600, 1100), timeout: float = 90,
                   dom: str = DOCUMENT) -> str:
    """``url`` in headless Chromium (offline, as the functions above run it) with the UI's session
    cookie ``_token`` set, as Airflow's login leaves it; returns the DOM the script ``dom`` gives
    (the page's own, by default) once it gives one, and writes a PNG to ``shot``. Driven over the
    DevTools protocol on a pipe (``--remote-debugging-pipe``): the command line alone cannot hand
    the browser a cookie."""
    with tempfile.TemporaryDirectory() as profile:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # the protocol's pipe is the browser's fd 3 (commands in) and fd 4 (answers out); bash, not sh: the
        # pipe's own descriptors may have two digits
        proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', chromium(), *FLAGS,
             f"--user-data-dir={profile}", "--remote-debugging-pipe", f"--window-size={size[0]},{size[1]}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        out, incoming = os.fdopen(to_browser_w, "wb"), os.fdopen(from_browser_r, "rb")
        ids = iter(range(1, 10_000))
        pending: list[dict] = []
        deadline = time.monotonic() + timeout

        unread = bytearray()   # what came after the last complete message: kept for the next read

        def read() -> dict:
            while not pending:
                assert time.monotonic() < deadline, "the browser did not answer in time"
                chunk = incoming.read1(65536)
                assert chunk, "the browser closed the pipe"
                unread.extend(chunk)
                *complete, rest = bytes(unread).split(b"\0")
                pending.extend(json.loads(part) for part in complete)
                unread[:] = rest
            return pending.pop(0)

        def call(method: str, session: str | None = None, **params) -> dict:
            n = next(ids)
            message = {"id": n, "method": method, "params": params, **({"sessionId": session} if session else {})}
            out.write(json.dumps(message).encode() + b"\0")
            out.flush()
            while True:
                m = read()
                if m.get("id") == n:
                    assert "error" not in m, (method, m["error"])
                    return m.get("result", {})
                if m.get("method") == "Page.loadEventFired":
                    loaded.append(m)

        loaded: list[dict] = []
        try:
            target = call("Target.createTarget", url="about:blank")["targetId"]
            session = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            host = urlsplit(url)
            call("Storage.setCookies", cookies=[{"name": "_token", "value": token, "domain": host.hostname,
                                                 "path": "/", "httpOnly": True, "sameSite": "Lax"}])
            call("Page.enable", session)
            call("Emulation.setDeviceMetricsOverride", session, width=size[0], height=size[1],
                 deviceScaleFactor=1, mobile=False)
            loaded.clear()
            call("Page.navigate", session, url=url)
            while not loaded:
                m = read()
                if m.get("method") == "Page.loadEventFired":
                    loaded.append(m)
            while True:     # a page built by its scripts (the Airflow UI) has it a little later
                html = call("Runtime.evaluate", session, expression=f"(() => {{ try {{ return {dom}; }} "
                            "catch (e) { return null; } })()", returnByValue=True)["result"].get("value")
                if html:
                    break
                assert time.monotonic() < deadline, f"{url}: {dom} gave nothing"
                time.sleep(0.25)
            png = call("Page.captureScreenshot", session, format="png")["data"]
            shot.write_bytes(base64.b64decode(png))
            call("Browser.close")
        finally:
            out.close()
            incoming.close()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return html
