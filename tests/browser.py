"""Pages as a person sees them: Debian's headless Chromium, with the network cut off.

Every host name resolves to nothing except loopback, so a page that still needs a CDN shows it
here exactly as it would on a municipality's server without internet access. Chromium is
required under CI=true (``./run test`` installs Debian's package where it is missing and it runs
as root); locally a missing browser skips the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

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
