"""Issue 19, sending: the next batch is fingerprinted and put together while the batch before it is
on its way (``serviceplatformen.Client.call(while_waiting=...)``, ``outbox._Ahead``), and the
outbox's state changes go to SQLite's driver with their IN lists written once (``db.execute_in``).
None of it may change what the ledger sees or in which order: on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import debtor
import pytest
from municipality import fordring_ids, municipality, sendable
from sqlalchemy import text
from transfers import BATCH, Crash, delivery_totals, once_each, outbox

from fbs_debitor.core import db
from fbs_debitor.delivery import outbox as delivery
from fbs_debitor.delivery import serviceplatformen
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer.run import run_transfer


def _run(stores, url, client_type=None):
    with debtor.client(url) as client:
        if client_type is not None:
            client.__class__ = client_type
        return run_transfer(stores, client, batch_size=BATCH, data_quality=False)


def test_the_next_batch_is_taken_while_one_is_on_its_way_and_the_ledger_order_is_unchanged(stores, emu_db,
                                                                                            monkeypatch):
    """Every batch after the first is put together during the call before it (the post on the
    client's thread), yet each batch is recorded only after the one before it was answered and
    recorded: recorded, sent, answered, batch after batch."""
    ids = municipality(stores, adults=4)
    steps: list[tuple[str, tuple[int, ...]]] = []
    real_record, real_answers = delivery.record_batch, delivery.record_answers

    def record_batch(ledger_engine, run_id, batch, prints):
        steps.append(("recorded", tuple(batch.liability_ids)))
        return real_record(ledger_engine, run_id, batch, prints)

    def record_answers(ledger_engine, run_id, keys, receipts, rejected_prints=None):
        steps.append(("answered", tuple(sorted(lid for _k, lid in keys.values()))))
        return real_answers(ledger_engine, run_id, keys, receipts, rejected_prints)

    overlapped = []

    class Watching(serviceplatformen.Client):
        def call(self, request, on_attempt=None, while_waiting=None):
            if while_waiting is not None:
                def aside():
                    overlapped.append(len(steps))
                    while_waiting()
                return super().call(request, on_attempt, aside)
            return super().call(request, on_attempt)

    monkeypatch.setattr(delivery, "record_batch", record_batch)
    monkeypatch.setattr(delivery, "record_answers", record_answers)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        run_id, _ = _run(stores, emu.url, Watching)
    want = sendable(ids)
    assert sorted(once_each(emu_db)) == sorted(fordring_ids(want))
    assert delivery_totals(stores, run_id) == {"accepted": len(want)}
    assert len(want) > BATCH and overlapped                  # several batches, and the work overlapped
    kinds = [k for k, _ in steps]
    assert kinds == ["recorded", "answered"] * (len(kinds) // 2)     # strictly alternating
    assert all(sorted(r) == list(a) for (_, r), (_, a) in zip(steps[::2], steps[1::2], strict=True))
    assert {r["state"] for r in outbox(stores).values()} == {"accepted"}
    assert all(r["attempts"] == 1 for r in outbox(stores).values())


def test_an_error_taking_the_next_batch_early_is_raised_after_the_batch_on_its_way_was_answered(stores, emu_db,
                                                                                                monkeypatch):
    """A crash while the next batch is being fingerprinted (during the call before it) ends the run
    where it would have ended without the overlap: the batch on its way is answered and recorded
    first, nothing of the next batch is recorded; the next run sends the rest exactly once."""
    ids = municipality(stores, adults=4)
    real_tracked = delivery.tracked
    calls = {"n": 0}

    def tracked(account, row, secret, written=None):
        calls["n"] += 1
        if calls["n"] == BATCH + 1:       # the first claim of the second batch
            raise Crash("killed while fingerprinting")
        return real_tracked(account, row, secret, written)

    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        with monkeypatch.context() as m:
            m.setattr(delivery, "tracked", tracked)
            with pytest.raises(Crash):
                _run(stores, emu.url)
        box = outbox(stores)
        assert len(box) == BATCH and {r["state"] for r in box.values()} == {"accepted"}
        assert len(once_each(emu_db)) == BATCH
        run_id, _ = _run(stores, emu.url)
    want = sendable(ids)
    assert sorted(once_each(emu_db)) == sorted(fordring_ids(want))
    assert {r["state"] for r in outbox(stores).values()} == {"accepted"}
    assert delivery_totals(stores, run_id) == {"accepted": len(want) - BATCH}


def test_execute_in_is_the_expanding_statement_it_replaces(stores):
    """``db.execute_in`` changes the same rows as SQLAlchemy's expanding IN and counts them, a
    timestamp bound as the database binds it; a parameter named like the list's prefix is its own."""
    with stores.ledger.begin() as conn:
        conn.execute(text("CREATE TABLE speed_probe (k VARCHAR(20) PRIMARY KEY, n INTEGER, at_ TIMESTAMP, "
                          "keysx VARCHAR(5))"))
        conn.execute(text("INSERT INTO speed_probe (k, n, keysx) VALUES (:k, 0, 'x')"),
                     [{"k": f"{i}:1"} for i in range(30)])
    at = dt.datetime(2026, 12, 1, 13, 0, 5)
    with stores.ledger.begin() as conn:
        changed = db.execute_in(conn, "UPDATE speed_probe SET n = n + 1, at_ = :t, keysx = :keysx WHERE k IN :keys",
                                {"t": at, "keysx": "y"}, "keys", [f"{i}:1" for i in range(0, 30, 3)] + ["none"])
    assert changed == 10
    with stores.ledger.connect() as conn:
        rows = {r.k: r for r in conn.execute(text("SELECT k, n, at_, keysx FROM speed_probe"))}
    assert {k for k, r in rows.items() if r.n == 1} == {f"{i}:1" for i in range(0, 30, 3)}
    assert all(db.as_datetime(r.at_) == at and r.keysx == "y" for r in rows.values() if r.n == 1)
    with pytest.raises(ValueError):
        with stores.ledger.begin() as conn:
            db.execute_in(conn, "UPDATE speed_probe SET n = 2 WHERE k IN :keys", {}, "keys", [])
    # db.select_in reads what the expanding IN reads (the payments reconciliation's pages of keys)
    keys = [f"{i}:1" for i in range(0, 30, 7)] + ["none", 5]
    with stores.ledger.connect() as conn:
        expanding = conn.execute(db.in_query("SELECT k, n FROM speed_probe WHERE k IN :keys ORDER BY k", "keys"),
                                 {"keys": [str(k) for k in keys]}).all()
        assert [tuple(r) for r in db.select_in(conn, "SELECT k, n FROM speed_probe WHERE k IN :keys ORDER BY k",
                                               "keys", [str(k) for k in keys])] == [tuple(r) for r in expanding]
        assert len(expanding) == 5
        assert db.select_in(conn, "SELECT k FROM speed_probe WHERE k IN :keys", "keys", []) == []

