"""Issue 19: a step's payment files are applied several to one ledger transaction (``_file_batch``),
each file in a savepoint of its own. What each file was promised holds as when each had its own
transaction (P1): all or nothing per file, a bad file never undoes the others, the same bytes are
applied once, and a crash anywhere leaves nothing half done, so the next run applies each file
exactly once. Timing is not tested here (``benchmarks/bench_payments_million.py``)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from pathlib import Path

import fbs_rows
import pytest
from sqlalchemy import text
from transfers import Crash

from fbs_debitor.core import ledger
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments.files import Movement, to_xml
from fbs_debitor.payments.inbox import open_inbox

AGENCY = "715100"
UNTIL = dt.datetime(2026, 11, 20, 2, 0)


@pytest.fixture
def payments_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "payments"
    (root / "inbox").mkdir(parents=True)
    monkeypatch.setenv("FBS_DEBITOR_PAYMENT_INBOX", str(root / "inbox"))
    monkeypatch.delenv("FBS_DEBITOR_PAYMENT_ARCHIVE", raising=False)
    monkeypatch.delenv("FBS_DEBITOR_PAYMENT_QUARANTINE", raising=False)
    return root


@pytest.fixture
def agency(stores) -> str:
    with stores.fbs.connect() as conn:
        fbs_rows.agency(conn)
        conn.commit()
    return AGENCY


def unknown(mid: str, n: int = 1) -> Movement:
    """A payment on a claim fbs-debitor never sent: held as P_UNKNOWN_CLAIM (the file is applied)."""
    return Movement(mid, f"FBS-{AGENCY}-9{n:08d}", "payment", Decimal("10.00"), dt.date(2026, 11, 19))


def payment_file(*mids: str) -> bytes:
    return to_xml([unknown(m, i) for i, m in enumerate(mids, start=1)], UNTIL)


def run(stores) -> Counter:
    run_id = ledger.start_run(stores.ledger, "payments")
    payments.ingest(stores, open_inbox(None), run_id)
    counts = payments.record_run_counts(stores.ledger, run_id)
    ledger.finish_run(stores.ledger, run_id, "success")
    return counts


def total(counts: Counter, category: str, rule: str | None = None) -> int:
    return sum(n for (_a, c, r), n in counts.items() if c == category and rule in (None, r))


def payment_files(stores) -> dict[str, str]:
    with stores.ledger.connect() as conn:
        return dict(conn.execute(text("SELECT name, state FROM payment_file")).all())


def movement_ids(stores) -> list[str]:
    with stores.ledger.connect() as conn:
        return sorted(conn.execute(text("SELECT movement_id FROM movement")).scalars())


def test_a_file_that_fails_in_a_batch_undoes_only_itself_and_is_quarantined_P1(stores, agency, payments_dir):
    """DA-2 repeats a BevaegelseID of DA-1 (in the same batch, not yet committed) with other content:
    DA-2 is quarantined as before, DA-1 before it and DA-3 after it are applied, each once."""
    inbox = payments_dir / "inbox"
    (inbox / "DA-1.xml").write_bytes(payment_file("B1", "B2"))
    changed = Movement("B2", "FBS-715100-900000002", "payment", Decimal("99.00"), dt.date(2026, 11, 19))
    (inbox / "DA-2.xml").write_bytes(to_xml([unknown("B3"), changed], UNTIL))
    (inbox / "DA-3.xml").write_bytes(payment_file("B4"))
    counts = run(stores)
    assert total(counts, "files_applied") == 2 and total(counts, "files_quarantined", payments.CONFLICT) == 1
    assert payment_files(stores) == {"DA-1.xml": "applied", "DA-2.xml": "quarantined", "DA-3.xml": "applied"}
    assert movement_ids(stores) == ["B1", "B2", "B4"]                  # nothing of DA-2, not even B3
    assert list(inbox.iterdir()) == []


def test_the_same_bytes_twice_in_one_batch_are_applied_once_P1(stores, agency, payments_dir):
    inbox = payments_dir / "inbox"
    data = payment_file("S1", "S2")
    (inbox / "DA-1.xml").write_bytes(data)
    (inbox / "DA-1-again.xml").write_bytes(data)
    counts = run(stores)
    assert total(counts, "files_applied") == 1 and movement_ids(stores) == ["S1", "S2"]
    assert list(payment_files(stores).values()) == ["applied"] and list(inbox.iterdir()) == []
    assert sorted(p.name for p in (payments_dir / "archive").iterdir()) == ["DA-1-again.xml", "DA-1.xml"]


def test_a_crash_in_a_batch_leaves_all_its_files_unapplied_and_the_rerun_applies_each_once_P1(
        stores, agency, payments_dir, monkeypatch):
    """Killed while the second file of a batch is written: the first file (already in the batch's
    transaction) is not applied either, every file stays in the inbox; the next run applies each
    once."""
    inbox = payments_dir / "inbox"
    for n in (1, 2, 3):
        (inbox / f"DA-{n}.xml").write_bytes(payment_file(f"C{n}a", f"C{n}b"))
    real, calls = payments._save_claims, []

    def crash_second(book):
        calls.append(1)
        if len(calls) == 2:
            raise Crash("killed in the middle of the batch's second file")
        return real(book)

    with monkeypatch.context() as m:
        m.setattr(payments, "_save_claims", crash_second)
        with pytest.raises(Crash):
            run(stores)
    assert payment_files(stores) == {} and movement_ids(stores) == []
    assert sorted(p.name for p in inbox.iterdir()) == ["DA-1.xml", "DA-2.xml", "DA-3.xml"]
    counts = run(stores)
    assert total(counts, "files_applied") == 3 and len(movement_ids(stores)) == 6
    assert total(run(stores), "files_applied") == 0 and len(movement_ids(stores)) == 6


def test_batches_cut_at_their_size_apply_every_file_once_P1(stores, agency, payments_dir, monkeypatch):
    monkeypatch.setattr(payments, "BATCH_MOVEMENTS", 3)                  # a new batch after every second file
    inbox = payments_dir / "inbox"
    for n in range(1, 6):
        (inbox / f"DA-{n}.xml").write_bytes(payment_file(f"Z{n}a", f"Z{n}b"))
    counts = run(stores)
    assert total(counts, "files_applied") == 5 and len(movement_ids(stores)) == 10
    assert list(inbox.iterdir()) == []
