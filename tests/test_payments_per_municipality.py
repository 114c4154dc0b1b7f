"""Issue 18, payments side: the municipality is the unit of isolation. Which municipality a
payment file belongs to (an inbound call's file by the CVR in its name, a delivered file by its
movements' claims), each municipality's files applied by its own step under its own lock, one
municipality's failure failing only its own step (named at the end), and the files of no single
municipality applied whole by the run-level rest. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from decimal import Decimal

import fbs_rows as fr
import pytest
from sqlalchemy import text
from transfers import transfer

from fbs_debitor.airflow import payment_tasks
from fbs_debitor.airflow import tasks as airflow_tasks
from fbs_debitor.core import ledger
from fbs_debitor.core.stores import open_stores
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments.files import Movement, parse, to_xml, write_atomically
from fbs_debitor.payments.inbound import file_name
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer.units import Unit

A, B = "715100", "751000"                   # two agencies ...
CVR_A, CVR_B = "29189404", "60104190"       # ... of two municipalities
UNTIL = dt.datetime(2026, 11, 20, 2, 0)


@pytest.fixture
def two(stores, tmp_path, monkeypatch) -> dict[str, list[int]]:
    """Two municipalities at KMD OPUS, each with three fees sent and accepted; the configured
    payments inbox under tmp_path. Returns the liability ids per agency."""
    ids: dict[str, list[int]] = {A: [], B: []}
    with stores.fbs.connect() as conn:
        for agency, cvr in ((A, CVR_A), (B, CVR_B)):
            fr.agency(conn, agency_id=agency, municipality_cvr=cvr, name=f"By{agency} Bibliotek")
            for _ in range(3):
                p = fr.patron(conn, agency_id=agency)
                ids[agency].append(fr.liability(conn, p["patron_id"], agency_id=agency,
                                                amount=Decimal("50.00"))["liability_id"])
        conn.commit()
    with emulator.Emulator("KMD_OPUS", f"sqlite:///{tmp_path / 'emu.sqlite'}") as emu:
        transfer(stores, emu.url)
    with stores.ledger.connect() as conn:
        accepted = conn.execute(text("SELECT COUNT(*) FROM claim WHERE state = 'accepted'")).scalar()
    assert accepted == 6
    monkeypatch.setenv("FBS_DEBITOR_PAYMENT_INBOX", str(tmp_path / "payments" / "inbox"))
    monkeypatch.delenv("FBS_DEBITOR_PAYMENT_ARCHIVE", raising=False)
    monkeypatch.delenv("FBS_DEBITOR_PAYMENT_QUARANTINE", raising=False)
    (tmp_path / "payments" / "inbox").mkdir(parents=True)
    return ids


@pytest.fixture
def task_env(db_urls, tmp_path, monkeypatch):
    """The Airflow task bodies open the test's databases (as they would from the connections);
    their reports go under tmp_path."""
    monkeypatch.setattr(airflow_tasks, "_stores", lambda: open_stores(db_urls))
    monkeypatch.setenv("FBS_DEBITOR_VAR", str(tmp_path / "var"))


def pay(mid: str, agency: str, lid: int, amount: str = "10.00") -> Movement:
    return Movement(mid, f"FBS-{agency}-{lid}", "payment", Decimal(amount), dt.date(2026, 11, 19))


def deliver(tmp_path, name: str, *movements: Movement) -> bytes:
    data = to_xml(movements, UNTIL)
    write_atomically(tmp_path / "payments" / "inbox", name, data)
    return data


def units_by_agency(stores) -> dict[str, Unit]:
    return payments.Municipalities.load(stores.fbs).by_agency


def applied(stores) -> dict[str, str]:
    with stores.ledger.connect() as conn:
        return dict(conn.execute(text("SELECT movement_id, state FROM movement")).all())


def inbox_names(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "payments" / "inbox").iterdir())


def test_issue18_the_municipality_of_a_file_by_its_claims_or_by_the_cvr_in_its_name(stores, two, tmp_path):
    """A delivered file: the one municipality whose claims its movements name (a movement on a
    claim the ledger does not know counts by the agency its FBS form names). Movements of two
    municipalities, or of none known: no single one (None: the run-level step). An inbound call's
    file: the municipality of the CVR in its name, unless it names another municipality's claim;
    one that cannot be read is its name's."""
    munis = payments.Municipalities.load(stores.fbs)
    ua, ub = munis.by_agency[A], munis.by_agency[B]
    assert (ua.cvr, ub.cvr) == (CVR_A, CVR_B) and ua.lock != ub.lock

    def owner(name, *movements):
        return payments.owner(stores.ledger, munis, name, parse(to_xml(movements, UNTIL)))

    a1, b1 = two[A][0], two[B][0]
    assert owner("DA-1.xml", pay("M1", A, a1), pay("M2", A, two[A][1])) == ua
    assert owner("DA-2.xml", pay("M3", B, b1)) == ub
    assert owner("DA-3.xml", pay("M4", A, a1), pay("M5", B, b1)) is None                   # two municipalities
    assert owner("DA-4.xml", Movement("M6", "OTHER-1", "payment", Decimal(1), dt.date(2026, 11, 19))) is None
    assert owner("DA-5.xml", pay("M7", A, 99999999)) == ua                                  # unknown claim, A's form
    call_b = file_name(CVR_B, "ab" * 32, dt.datetime(2026, 11, 20, 3, 0, tzinfo=dt.UTC))
    assert payments.named_cvr(call_b) == CVR_B
    assert owner(call_b, pay("M8", B, b1)) == ub
    assert owner(call_b, Movement("M9", "OTHER-2", "payment", Decimal(1), dt.date(2026, 11, 19))) == ub
    assert owner(call_b, pay("M10", A, a1)) is None                     # B's call naming A's claim: run-level
    assert payments.owner(stores.ledger, munis, call_b, None) == ub     # unreadable: by its name
    assert payments.owner(stores.ledger, munis, "DA-6.xml", None) is None


def test_issue18_each_municipality_applies_its_own_files_one_failing_fails_only_its_task(
        stores, two, tmp_path, task_env, monkeypatch):
    """Through the task bodies: payment_units lists the two municipalities with their files; A's
    step fails (an error in its write-back), B's finishes; the rest applies the file of both
    municipalities whole and writes back everything; the run is closed failed and the last task
    fails naming A, not B. Run counts of the two steps stand side by side."""
    deliver(tmp_path, "DA-A.xml", pay("A1", A, two[A][0]))
    deliver(tmp_path, "DA-B.xml", pay("B1", B, two[B][0]))
    deliver(tmp_path, "DA-AB.xml", pay("AB1", A, two[A][1]), pay("AB2", B, two[B][1]))
    run_id = ledger.start_run(stores.ledger, "payments")
    plan = payment_tasks.payment_units(run_id)
    ua, ub = units_by_agency(stores)[A], units_by_agency(stores)[B]
    assert [(u["label"], u["files"]) for u in plan] == [(ua.label, ["DA-A.xml"]), (ub.label, ["DA-B.xml"])]
    assert Unit.of(plan[0]) == ua

    real = payments.write_back

    def broken_for_a(stores_, run_id_, at, batch=payments.CHUNK, agencies=None):
        if agencies is not None and A in agencies:
            raise RuntimeError("write-back of A broke")
        return real(stores_, run_id_, at, batch, agencies)

    monkeypatch.setattr(payments, "write_back", broken_for_a)
    with pytest.raises(RuntimeError, match="write-back of A broke"):
        payment_tasks.ingest_payments(run_id, plan[0])
    done_b = payment_tasks.ingest_payments(run_id, plan[1])
    assert done_b["files_applied"] == 1 and done_b["movements_applied"] == 1
    counts = ledger.run_counts(stores.ledger, run_id)
    assert counts[(B, "movements_applied", "payment")] == 1
    assert counts[(A, payments.FAILED_CATEGORY, "RuntimeError")] == 1
    assert (B, payments.FAILED_CATEGORY, payments.UNFINISHED) not in counts
    assert inbox_names(tmp_path) == ["DA-AB.xml"]              # A's own file was applied before the failure

    rest = payment_tasks.ingest_rest(run_id)
    assert rest["files_applied"] == 3 and rest["movements_applied"] == 4
    assert applied(stores) == {"A1": "applied", "B1": "applied", "AB1": "applied", "AB2": "applied"}
    assert inbox_names(tmp_path) == []
    with stores.fbs.connect() as conn:                         # the rest wrote back what A's step could not
        assert conn.execute(text("SELECT COUNT(*) FROM payment")).scalar() == 4
    result = payment_tasks.reconcile_payments(run_id)
    assert result["differences"] == 0
    run = ledger.get_run(stores.ledger, run_id)
    assert run.status == "failed" and ua.label in run.error and ub.label not in run.error
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=re.escape(f"municipality {ua.label}: RuntimeError")) as failed:
        payment_tasks.failed_municipalities(run_id)
    assert ub.label not in str(failed.value)


def test_issue18_no_municipality_with_files_maps_nothing_and_the_run_still_closes(stores, two, tmp_path, task_env):
    """An empty inbox, or only a file of no single municipality: payment_units is empty (the
    mapped task is skipped), the rest applies that file, and the run closes green."""
    deliver(tmp_path, "DA-AB.xml", pay("AB1", A, two[A][1]), pay("AB2", B, two[B][1]))
    run_id = ledger.start_run(stores.ledger, "payments")
    assert payment_tasks.payment_units(run_id) == []
    assert payment_tasks.ingest_rest(run_id)["movements_applied"] == 2
    payment_tasks.reconcile_payments(run_id)
    assert ledger.get_run(stores.ledger, run_id).status == "success"
    assert payment_tasks.failed_municipalities(run_id) == []
    again = ledger.start_run(stores.ledger, "payments")         # nothing waiting at all
    assert payment_tasks.payment_units(again) == []
    assert payment_tasks.ingest_rest(again).get("files_applied", 0) == 0
    payment_tasks.reconcile_payments(again)
    assert ledger.get_run(stores.ledger, again).status == "success"


def test_issue18_a_killed_municipality_step_is_named_as_unfinished(stores, two, tmp_path, task_env, monkeypatch):
    """A task killed outright (no handler runs: a BaseException here stands for SIGKILL) leaves its
    mark ``unfinished``; the last task names the municipality; a retry that finishes clears it."""
    class Killed(BaseException):
        pass

    deliver(tmp_path, "DA-A.xml", pay("A1", A, two[A][0]))
    run_id = ledger.start_run(stores.ledger, "payments")
    plan = payment_tasks.payment_units(run_id)
    real_unit = payments.ingest_unit

    def killed(*a, **k):
        raise Killed()

    monkeypatch.setattr(payments, "ingest_unit", killed)
    real_mark = payments.mark_failed

    def mark_only_start(ledger_engine, run_id_, step, why=payments.UNFINISHED):
        if why == payments.UNFINISHED:
            real_mark(ledger_engine, run_id_, step, why)
        else:
            raise Killed()                      # the process is gone before it records why

    monkeypatch.setattr(payments, "mark_failed", mark_only_start)
    with pytest.raises(Killed):
        payment_tasks.ingest_payments(run_id, plan[0])
    label = units_by_agency(stores)[A].label
    assert payments.failed_units(stores.ledger, stores.fbs, run_id) == [f"municipality {label}: unfinished"]
    monkeypatch.setattr(payments, "ingest_unit", real_unit)
    assert payment_tasks.ingest_payments(run_id, plan[0])["movements_applied"] == 1     # the retry
    assert payments.failed_units(stores.ledger, stores.fbs, run_id) == []


def test_issue18_each_municipality_under_its_own_lock_and_the_rest_under_all(stores, two, tmp_path, monkeypatch):
    """The CLI's run (``ingest``): each municipality's step takes the ``payments`` lock of its own
    unit only; the rest takes the run-level lock and every unit's; an error in one municipality's
    step does not stop the other's, and the run then fails naming it."""
    taken: list[tuple[str, str | None]] = []
    real = payments.exclusive

    def recording(engine, name, part=None):
        taken.append((name, part))
        return real(engine, name, part=part)

    monkeypatch.setattr(payments, "exclusive", recording)
    rest_locked: list[list[str]] = []
    real_all = payments.all_units_locked

    def recording_all(engine, munis):
        rest_locked.append(sorted(u.lock for u in munis.units))
        return real_all(engine, munis)

    monkeypatch.setattr(payments, "all_units_locked", recording_all)
    deliver(tmp_path, "DA-A.xml", pay("A1", A, two[A][0]))
    deliver(tmp_path, "DA-B.xml", pay("B1", B, two[B][0]))
    ua, ub = units_by_agency(stores)[A], units_by_agency(stores)[B]
    real_look = payments.look_again

    def broken_for_b(stores_, run_id_, at, agencies=None):
        if agencies is not None and B in agencies:
            raise ValueError("B's held movements broke")
        return real_look(stores_, run_id_, at, agencies)

    monkeypatch.setattr(payments, "look_again", broken_for_b)
    from fbs_debitor.payments.inbox import open_inbox

    run_id = ledger.start_run(stores.ledger, "payments")
    with pytest.raises(payments.MunicipalitiesFailed, match=re.escape(f"{ub.label}: ValueError")) as failed:
        payments.ingest(stores, open_inbox(), run_id)
    assert ua.label not in str(failed.value)
    assert isinstance(failed.value, payments.FilesLeft)              # the CLI's handling of a failed run
    assert taken[0] == ("payments", None)                             # the sorting's report, run-level
    assert sorted(taken[1:3]) == sorted([("payments", ua.lock), ("payments", ub.lock)])   # each its own
    assert rest_locked == [sorted([ua.lock, ub.lock])]                # the rest: all of them
    assert applied(stores) == {"A1": "applied", "B1": "applied"}      # B's file itself went through
    counts = payments.record_run_counts(stores.ledger, run_id)
    assert Counter({k: n for k, n in counts.items() if k[1] == "movements_applied"}) == Counter(
        {(A, "movements_applied", "payment"): 1, (B, "movements_applied", "payment"): 1})


def test_issue18_the_rest_waits_for_a_municipality_step_in_progress_and_takes_one_session(stores, two):
    """While one municipality's step holds its ``payments`` lock (another worker), the run-level
    rest waits; it goes on once that step is done (it takes its locks in one order, run-level
    first), and releases every one."""
    import threading

    from fbs_debitor.core.db import exclusive

    munis = payments.Municipalities.load(stores.fbs)
    ua = munis.by_agency[A]
    release, entered = threading.Event(), threading.Event()
    holding = threading.Event()

    def unit_step():
        with exclusive(stores.ledger, "payments", part=ua.lock):
            holding.set()
            release.wait(20)

    def rest():
        with payments.all_units_locked(stores.ledger, munis):
            entered.set()

    worker = threading.Thread(target=unit_step)
    worker.start()
    assert holding.wait(10)
    waiting = threading.Thread(target=rest)
    waiting.start()
    assert not entered.wait(1.0)                   # blocked by the municipality's step
    release.set()
    assert entered.wait(20)                        # and goes on after it
    worker.join(10)
    waiting.join(10)
    if stores.ledger.dialect.name == "postgresql":
        with stores.ledger.connect() as conn:      # nothing left held
            assert conn.execute(text("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'")).scalar() == 0
