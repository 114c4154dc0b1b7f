"""Issue 19: a run's change detection does not compare again the claims that same run created and
sent (built from FBS as the run read it, seconds earlier), and nothing is lost by it (U1-U4): a
change FBS makes after the run read a liability is marked after the run's window, so the next run
looks at it and sends it, once. Claims sent by earlier runs are compared as before, in the hourly
run and in the nightly sweep. Against the debtor-system emulator over real HTTP, on SQLite and
PostgreSQL, through ``run_transfer`` (what ``python -m fbs_debitor transfer`` and the DAG's tasks
call)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import fbs_rows as fr
import pytest
from sqlalchemy import text
from transfers import once_each
from transfers import successful_run as run

from fbs_debitor.changes import detection
from fbs_debitor.core import ledger
from fbs_debitor.core.db import as_datetime
from fbs_debitor.eligibility import delta
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer import run as transfer

A = "715100"
T0 = dt.datetime(2026, 4, 1, 9, 30)           # when FBS last marked the extract's rows


def municipality(stores, n: int = 3) -> list[int]:
    """One agency (marked at T0) with ``n`` adults' open fees (all marked at T0)."""
    ids = []
    with stores.fbs.connect() as conn:
        fr.agency(conn, A, updated_at=T0)
        for _ in range(n):
            p = fr.patron(conn, agency_id=A, updated_at=T0)
            ids.append(fr.liability(conn, p["patron_id"], agency_id=A, updated_at=T0)["liability_id"])
        conn.commit()
    return ids


def new_liability(stores, marked: dt.datetime, **over) -> int:
    with stores.fbs.connect() as conn:
        p = fr.patron(conn, agency_id=A, updated_at=marked)
        lid = fr.liability(conn, p["patron_id"], agency_id=A, created_at=marked, updated_at=marked,
                           **over)["liability_id"]
        conn.commit()
    return lid


def totals(stores, run_id: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_a, c, _r), n in ledger.run_counts(stores.ledger, run_id).items():
        out[c] = out.get(c, 0) + n
    return out


def messages(stores) -> dict[int, list[tuple]]:
    """Each liability's outbox messages: (version, change kind, state, run)."""
    out: dict[int, list[tuple]] = {}
    with stores.ledger.connect() as conn:
        for r in conn.execute(text("SELECT liability_id, version, change_kind, state, run_id FROM outbox "
                                   "ORDER BY liability_id, version")):
            out.setdefault(r.liability_id, []).append((r.version, r.change_kind, r.state, r.run_id))
    return out


@pytest.fixture
def compared(monkeypatch) -> list[int]:
    """The liabilities the change detection read from FBS and fingerprinted (``_read_state``, the
    first thing it does with a sent liability's FBS state), in order."""
    seen: list[int] = []
    read_state = detection._read_state

    def spy(st, secret):
        seen.append(int(st.liability_id))
        return read_state(st, secret)

    monkeypatch.setattr(detection, "_read_state", spy)
    return seen


def test_issue19_U1_a_run_does_not_compare_the_claims_it_sent_itself_but_still_those_of_earlier_runs(
        stores, emu_db, compared):
    ids = municipality(stores)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        first = run(stores, emu.url)                  # the agency's first run: all three go ...
        assert totals(stores, first)["accepted"] == 3
        assert compared == []                         # ... and none of them is read from FBS again

        later = T0 + dt.timedelta(hours=1)
        fresh = new_liability(stores, later)          # a new fee, and a write-down of an earlier run's claim
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE liability SET amount = :a, updated_at = :t WHERE liability_id = :l"),
                         {"a": Decimal("20.25"), "t": later, "l": ids[0]})
        hourly = run(stores, emu.url)
        assert totals(stores, hourly)["accepted"] == 1 and totals(stores, hourly)["changes_accepted"] == 1
        assert compared == [ids[0]]                   # the earlier run's claim is compared (U1), the new one not

        compared.clear()
        night = new_liability(stores, T0 + dt.timedelta(hours=2))
        sweep = run(stores, emu.url, sweep=True)      # the sweep compares every claim of earlier runs ...
        assert totals(stores, sweep)["accepted"] == 1 and "change_recorded" not in totals(stores, sweep)
        assert sorted(compared) == sorted([*ids, fresh])     # ... but not the one it sent itself
        assert night not in compared

        compared.clear()
        with stores.fbs.begin() as conn:              # the next hour: the sweep's claim changed, marked
            conn.execute(text("UPDATE liability SET amount = :a, updated_at = :t WHERE liability_id = :l"),
                         {"a": Decimal("30.00"), "t": T0 + dt.timedelta(hours=3), "l": night})
        after = run(stores, emu.url)
        assert compared == [night] and totals(stores, after)["changes_accepted"] == 1
    got = messages(stores)
    assert [m[:3] for m in got[ids[0]]] == [(1, "create", "accepted"), (2, "write_down", "accepted")]
    assert got[ids[0]][1][3] == hourly
    assert [m[:3] for m in got[night]] == [(1, "create", "accepted"), (2, "write_down", "accepted")]
    assert [m[:3] for m in got[fresh]] == [(1, "create", "accepted")]
    assert sorted(once_each(emu_db)) == sorted(f"FBS-{A}-{i}" for i in [*ids, fresh, night])


@pytest.mark.parametrize("sweep", [False, True], ids=["hourly", "sweep"])
def test_issue19_U1_U4_a_change_FBS_makes_after_the_run_read_the_claim_goes_with_the_next_run_exactly_once(
        stores, emu_db, compared, monkeypatch, sweep):
    """FBS changes a liability after the run read and sent it, before the run's change detection
    (its marker is FBS's clock then: after the run's window). The run does not see it; the next
    run's window holds it, and the change goes then, once. The same when the sending run is the
    nightly sweep."""
    ids = municipality(stores, n=1)
    detect = detection.detect_changes
    changed_in_between: dict[str, int] = {}

    def change_first(stores_, run_id, *args, **kwargs):
        # between the build and the change detection: a write-down (U1) of the claim just sent and a
        # cancellation (U1, U4) of another, each marked with FBS's clock now, as FBS marks a change
        if not changed_in_between:
            now = delta.fbs_clock(stores_.fbs)
            with stores_.fbs.begin() as conn:
                conn.execute(text("UPDATE liability SET amount = :a, updated_at = :t WHERE liability_id = :l"),
                             {"a": Decimal("20.25"), "t": now, "l": fresh_down})
                conn.execute(text("UPDATE liability SET status = 'cancelled', updated_at = :t WHERE liability_id = :l"),
                             {"t": now, "l": fresh_cancel})
            changed_in_between[run_id] = 2
        return detect(stores_, run_id, *args, **kwargs)

    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        run(stores, emu.url)
        fresh_down = new_liability(stores, T0 + dt.timedelta(hours=1))
        fresh_cancel = new_liability(stores, T0 + dt.timedelta(hours=1), kind="compensation", with_loan=False)
        with monkeypatch.context() as m:
            m.setattr(transfer.change_detection, "detect_changes", change_first)
            sending = run(stores, emu.url, sweep=sweep)
        assert list(changed_in_between) == [sending]
        assert totals(stores, sending)["accepted"] == 2
        assert "change_recorded" not in totals(stores, sending)     # the run did not compare them ...
        assert fresh_down not in compared and fresh_cancel not in compared
        with stores.ledger.connect() as conn:                        # ... and their markers are after its window
            until = as_datetime(conn.execute(text("SELECT MAX(until) FROM run_window WHERE run_id = :r"),
                                             {"r": sending}).scalar())
        with stores.fbs.connect() as conn:
            marked = as_datetime(conn.execute(text("SELECT MIN(updated_at) FROM liability WHERE liability_id IN "
                                                   "(:a, :b)"), {"a": fresh_down, "b": fresh_cancel}).scalar())
        assert marked > until

        compared.clear()
        nxt = run(stores, emu.url)                                   # the next run sends both changes
        assert sorted(compared) == sorted([fresh_down, fresh_cancel])
        assert totals(stores, nxt)["changes_accepted"] == 2
        again = run(stores, emu.url)                                 # and never again
        assert "change_recorded" not in totals(stores, again) and "changes_accepted" not in totals(stores, again)
    got = messages(stores)
    assert got[fresh_down] == [(1, "create", "accepted", sending), (2, "write_down", "accepted", nxt)]
    assert got[fresh_cancel] == [(1, "create", "accepted", sending), (2, "cancel", "accepted", nxt)]
    assert [m[:3] for m in got[ids[0]]] == [(1, "create", "accepted")]
    changes = {c["fordring_id"]: c for c in emulator.claims(emu_db)}
    assert len(changes) == 3


def test_issue19_U3_a_compensation_marked_for_repayment_before_it_was_sent_is_still_compared_in_the_same_run(
        stores, emu_db, compared):
    """The creation does not keep FBS's repayment mark, so a liability that carries one when it is
    sent is compared by the same run, as before (one narrow look-up, not a skip)."""
    municipality(stores, n=1)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        run(stores, emu.url)
        marked = new_liability(stores, T0 + dt.timedelta(hours=1), kind="compensation", with_loan=False,
                               refund_requested_at=T0 + dt.timedelta(minutes=30))
        plain = new_liability(stores, T0 + dt.timedelta(hours=1), kind="compensation", with_loan=False)
        sending = run(stores, emu.url)
        assert totals(stores, sending)["accepted"] == 2
        assert compared == [marked]                  # the marked one is compared, the plain one is not
        run(stores, emu.url)
    got = messages(stores)
    assert [m[:3] for m in got[marked]] == [(1, "create", "accepted"), (2, "repayment", "accepted")]
    assert got[marked][1][3] == sending
    assert [m[:3] for m in got[plain]] == [(1, "create", "accepted")]
