"""Issue 19: the payments run's bulk writes (``ledger.insert_rows`` / ``execute_many``, the audit
trail's ids made in one go, a movement's audit text, the file transaction's SQLite settings) write exactly what the
row-by-row code wrote, and fail as it failed."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from fbs_debitor.core import ledger
from fbs_debitor.core.trail import movement_text
from fbs_debitor.payments.apply import file_transaction
from fbs_debitor.payments.files import Movement

UUID8 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_M2_a_movements_audit_text_masks_cpr_shaped_values_and_keeps_the_rest():
    """The text the history shows for a movement's arrival (``core.trail.movement_text``): a
    CPR-shaped movement id, reference or file name is masked, the other values are as they came."""
    cpr = Movement("0101901234", "FBS-715100-7208", "payment", Decimal("1234567890.12"), dt.date(2026, 11, 19),
                   "010190-1234")
    detail = movement_text(cpr, "betaling-0101901234.xml", "P_OVERPAYMENT")
    assert "0101901234" not in detail and "010190-1234" not in detail
    assert "010190-****" in detail and "715100-****" in detail
    assert detail.startswith("payment 123456-****.12 booked 2026-11-19 (movement 010190-****")   # ten digits: masked too
    assert detail.endswith("file betaling-010190-****.xml): held for review, P_OVERPAYMENT")
    plain = movement_text(Movement("M-7", "FBS-1-2", "write_off", Decimal("5.50"), dt.date(2026, 1, 2)), "f.xml", None)
    assert plain == "write_off 5.50 booked 2026-01-02 (movement M-7, FBS-1-2, file f.xml)"


def test_ordered_ids_have_ordered_ids_layout():
    ns = 1_764_000_000_123_456_789
    ids = ledger.ordered_ids(ns, 5000)
    assert len(set(ids)) == 5000
    assert all(UUID8.fullmatch(i) for i in ids)
    assert ids[0][:18] == ledger.ordered_id(ns, 0)[:18] and ids[4097][:18] == ledger.ordered_id(ns, 4097)[:18]
    assert ids[:4096] == sorted(ids[:4096])


def test_bulk_rows_are_stored_as_row_by_row_and_a_conflict_is_an_integrity_error(stores):
    at = dt.datetime(2026, 11, 20, 2, 0, 1, 5)
    rows = [(5, "kind_a", None, "detail 1"), (6, "kind_b", "key", None)]
    with stores.ledger.begin() as conn:
        ledger.add_events(conn, rows, "run-bulk", at)
    with stores.ledger.begin() as conn:
        conn.execute(text("INSERT INTO event (event_id, liability_id, occurred_at, kind, message_key, run_id, detail, "
                          "seq) VALUES ('x', 7, :t, 'kind_c', NULL, 'run-bulk', NULL, 1)"), {"t": at})
    with stores.ledger.connect() as conn:
        got = conn.execute(text("SELECT liability_id, occurred_at, kind, message_key, detail FROM event "
                                "WHERE run_id = 'run-bulk' ORDER BY liability_id")).all()
    assert [(r[0], r[2], r[3], r[4]) for r in got] == [(5, "kind_a", None, "detail 1"), (6, "kind_b", "key", None),
                                                      (7, "kind_c", None, None)]
    assert len({str(r[1]) for r in got}) == 1           # the same representation as a bound value's
    with pytest.raises(IntegrityError), stores.ledger.begin() as conn:
        ledger.insert_rows(conn, "event", ("event_id", "liability_id", "occurred_at", "kind"), [("x", 8, at, "dup")])
    with pytest.raises(IntegrityError), stores.ledger.begin() as conn:
        ledger.execute_many(conn, "INSERT INTO event (event_id, liability_id, occurred_at, kind) VALUES (:e, 8, :t, 'd')",
                            [{"e": "y", "t": at}, {"e": "y", "t": at}])
    with stores.ledger.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM event WHERE event_id = 'y' OR kind = 'dup'")).scalar() == 0


def test_a_file_transaction_commits_or_rolls_back_and_sets_its_checkpoint_back(stores):
    """On SQLite the file's transaction runs with its own checkpoint interval, set back afterwards,
    and never with another ``synchronous``; on either database it is one transaction."""
    with stores.ledger.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        before = (conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar(),
                  conn.exec_driver_sql("PRAGMA synchronous").scalar()) if sqlite else None
    for fail in (False, True):
        with pytest.raises(RuntimeError) if fail else _nothing(), file_transaction(stores.ledger) as conn:
            if sqlite:
                assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 16384
            ledger.add_events(conn, [(1, "k", None, None)], f"run-{fail}", dt.datetime(2026, 1, 1))
            if fail:
                raise RuntimeError("rolled back")
        with stores.ledger.connect() as conn:
            if sqlite:
                assert (conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar(),
                        conn.exec_driver_sql("PRAGMA synchronous").scalar()) == before
            assert conn.execute(text("SELECT run_id FROM event WHERE run_id LIKE 'run-%'")).scalars().all() == [
                "run-False"]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
