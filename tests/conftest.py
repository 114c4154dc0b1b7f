"""Shared fixtures: the two stores on SQLite and on a real PostgreSQL, the emulator's database, the
project's DAGs parsed by Airflow, and a real SMTP server on loopback.

PostgreSQL comes from FBS_DEBITOR_TEST_PG_URL (an admin URL) or a throwaway cluster started for the
session. When neither is possible the PostgreSQL cases are skipped locally but FAIL under CI=true:
a CI run that skips them proves nothing.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import pytest
from aiosmtpd.controller import Controller
from database_urls import make_urls

from fbs_debitor.core.settings import HOME, DatabaseUrls
from fbs_debitor.core.stores import init_stores, open_stores

# ./run test spreads the test files over several pytest-xdist workers (FBS_DEBITOR_TEST_WORKERS).
# Each worker has its own PostgreSQL cluster, ports, temporary folders and Airflow homes already; a
# test that leaves FBS_DEBITOR_VAR unset writes its reports, Data Docs and mail under the default,
# so each worker gets a default of its own instead of sharing <home>/var with the others.
if os.environ.get("PYTEST_XDIST_WORKER") and "FBS_DEBITOR_VAR" not in os.environ:
    os.environ["FBS_DEBITOR_VAR"] = tempfile.mkdtemp(prefix=f"fbs-debitor-var-{os.environ['PYTEST_XDIST_WORKER']}-")

# One fingerprint key for the whole session (subprocesses and Airflow tasks inherit it), so a
# test's ledger is never compared under a key other than the one it was written with.
os.environ.setdefault("FBS_DEBITOR_FINGERPRINT_KEY", "fbs-debitor-test-fingerprint-key-0001")


@pytest.fixture(scope="session")
def pg_admin_url():
    url = os.environ.get("FBS_DEBITOR_TEST_PG_URL")
    if url:
        yield url
        return
    from pgcluster import PostgresUnavailable, ThrowawayCluster

    try:
        cluster = ThrowawayCluster()
        url = cluster.start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is required in CI and could not be started: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    try:
        yield url
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def db_urls(request, tmp_path) -> DatabaseUrls:
    return make_urls(request.param, tmp_path, lambda: request.getfixturevalue("pg_admin_url"))


@pytest.fixture
def stores(db_urls):
    s = open_stores(db_urls)
    init_stores(s)
    yield s
    s.dispose()


@pytest.fixture
def fbs(stores):
    """A connection to the FBS extract with one healthy KMD OPUS agency (715100, cut-off 2026-01-01)."""
    import fbs_rows

    with stores.fbs.connect() as conn:
        fbs_rows.agency(conn)
        yield conn
        conn.rollback()


@pytest.fixture
def emu_db(tmp_path) -> str:
    """The debtor-system emulator's own database (the claims it holds), in the test's folder."""
    return f"sqlite:///{tmp_path / 'emulator.sqlite'}"


@pytest.fixture(scope="session")
def dagbag():
    """The project's DAG files as Airflow parses them (once per session: parsing takes seconds)."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(HOME / "dags"))


# --- a real SMTP server on loopback (aiosmtpd) ------------------------------------------------------

class Collector:
    """An SMTP handler keeping what it receives; addresses in ``refuse`` get a 550."""

    def __init__(self):
        self.received: list[tuple[str, list[str], bytes]] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 Mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server():
    from pgcluster import free_port

    handler = Collector()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="smtp.test",
                            loop=asyncio.new_event_loop())
    controller.start()
    try:
        from fbs_debitor.quality import mailer

        yield handler, mailer.SmtpSettings(host="127.0.0.1", port=port, from_email="fbs-debitor@kommune.example",
                                           timeout=10)
    finally:
        controller.stop()


# --- spreading the suite over pytest-xdist workers (./run test: --dist loadfile) ------------------

# The files that take minutes, with the seconds their slowest tests took in a whole run on two
# workers (`./run test --durations=80`, 2026-12-02). Only the order in which files are handed to
# the workers depends on it: a file missing here, or a figure gone stale, costs balance, never a test.
HEAVY_FILES = {
    "tests/test_dags.py": 916, "tests/test_cli.py": 516, "tests/test_properties_fbs_rows.py": 318,
    "tests/test_celery.py": 317, "tests/test_backfill.py": 151, "tests/test_alerts.py": 94,
    "tests/test_grid_browser.py": 86, "tests/test_staff_report_browser.py": 71,
    "tests/test_properties_payment_files.py": 61, "tests/test_dq_checks.py": 55,
    "tests/test_no_secrets_in_output.py": 42, "tests/test_incremental.py": 42,
    "tests/test_properties_builder.py": 37,
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """On a pytest-xdist worker (``--dist loadfile --no-loadscope-reorder``: each file is one unit of
    work, so a module's fixtures, such as the Celery cluster, are set up once): the files that take
    minutes first, the longest first, then the others as collected, so the suite does not end with
    one worker running a long file while the other waits. The order within a file is kept; the
    serial run (FBS_DEBITOR_TEST_WORKERS=1) is not reordered."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    ranked = sorted(files, key=lambda path: -HEAVY_FILES.get(path, 0))   # stable: the rest as collected
    items[:] = [i for path in ranked for i in files[path]]


# --- CI guard: a PostgreSQL test that did not run is a failure under CI=true -----------------------

_pg_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and "postgresql" in report.keywords:
        _pg_skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _pg_skipped and os.environ.get("CI", "").lower() == "true":
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _pg_skipped:
        verdict = "FAILED (CI=true)" if os.environ.get("CI", "").lower() == "true" else "skipped locally"
        terminalreporter.write_line(f"{len(_pg_skipped)} PostgreSQL test(s) did not run: {verdict}", red=True)
