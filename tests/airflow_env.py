"""Running the project's DAGs through Airflow itself, in a subprocess with its own AIRFLOW_HOME.

A subprocess keeps Airflow's import-time configuration away from the test process, and is how an
operator runs it (``airflow dags test``). The metadata database is SQLite next to the FBS/ledger
files, or a fresh PostgreSQL database when the stores are on PostgreSQL.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fbs_debitor.core.settings import HOME, DatabaseUrls

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def airflow_env(tmp_path: Path, urls: DatabaseUrls, metadata_url: str | None = None) -> dict[str, str]:
    home = tmp_path / "airflow"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(HOME / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(HOME / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=metadata_url or f"sqlite:///{home / 'airflow.db'}",
        FBS_DEBITOR_HOME=str(HOME),
        FBS_DEBITOR_FBS_URL=urls.fbs,
        FBS_DEBITOR_LEDGER_URL=urls.ledger,
        PYTHONPATH=str(HOME / "plugins"),
    )
    return env


def run_airflow(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)


# The metadata databases this process has migrated, and one migrated SQLite metadata file it keeps
# to copy: Airflow's schema is its own and the same for every test, ``airflow db migrate`` costs
# 5-7 s of CPU on a new database and 3-4 s on one already migrated, a copy a few milliseconds. A
# test's first ``dags test`` on SQLite starts from the copy, its later ones migrate nothing.
_MIGRATED: set[str] = set()
_SQLITE_TEMPLATE: list[Path] = []


def migrate(env: dict[str, str]) -> None:
    """``airflow db migrate`` on ``env``'s metadata database, once per database in this process; a
    new SQLite metadata file is a copy of the first one this process migrated."""
    url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    if url in _MIGRATED:
        return
    target = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if target is not None and _SQLITE_TEMPLATE and not target.exists():
        shutil.copyfile(_SQLITE_TEMPLATE[0], target)
    else:
        proc = run_airflow(env, "db", "migrate")
        assert proc.returncode == 0, proc.stderr[-3000:]
        if target is not None and not _SQLITE_TEMPLATE and not any(
                target.with_name(target.name + side).exists() for side in ("-wal", "-journal")):
            folder = tempfile.mkdtemp(prefix="airflow-metadata-template-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            _SQLITE_TEMPLATE.append(Path(shutil.copyfile(target, Path(folder) / "airflow.db")))
    _MIGRATED.add(url)


def dags_test(env: dict[str, str], dag_id: str, *extra: str) -> tuple[str, str]:
    """Migrate the metadata DB (``migrate``), run ``airflow dags test``; returns (final dag-run
    state, output)."""
    migrate(env)
    proc = run_airflow(env, "dags", "test", dag_id, *extra)
    output = proc.stdout + proc.stderr
    states = re.findall(rf"DagRun Finished: dag_id={dag_id},.*?state=(\w+)", output)
    return (states[-1] if states else "unknown"), output


@contextmanager
def api_server(env: dict[str, str], work: Path, port: int, timeout: float = 180) -> Iterator[str]:
    """A real ``airflow api-server`` on loopback with ``env`` (its own process group, its output in
    ``work/api-server.log``), once healthy; yields its base URL; stopped (SIGTERM, then SIGKILL)
    however the block ends."""
    import signal
    import time
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{port}"
    log_path = work / "api-server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert proc.poll() is None, log_path.read_text()[-4000:]
                try:
                    with urllib.request.urlopen(base + "/api/v2/monitor/health", timeout=5):   # noqa: S310
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                    time.sleep(0.5)
            yield base
        finally:
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue


def api_token(base: str, password_file: Path, user: str) -> str:
    """A JWT for one of the simple auth manager's users, as the UI's login gets it (POST /auth/token)."""
    import json
    import urllib.request

    passwords = json.loads(password_file.read_text())
    request = urllib.request.Request(base + "/auth/token", method="POST",
                                     data=json.dumps({"username": user, "password": passwords[user]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:   # noqa: S310 - loopback only
        return json.loads(r.read())["access_token"]
