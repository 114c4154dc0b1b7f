"""Issue 18: the municipality is the unit of isolation. The sending steps run once per unit (one
municipality's agencies at its debtor system), and each touches only the claims, liabilities and
messages of its unit's agencies (``claim.agency_id``): the change detection (U1-U4), the change
sending (in order per liability), the resending of unconfirmed claims and the rejected claims that
go again (M1, I3). ``agencies=None`` is every agency, as before units. Against the debtor-system
emulator over real HTTP, on SQLite and PostgreSQL, with two agencies in two municipalities."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import debtor
import fbs_rows as fr
import pytest
from sqlalchemy import text
from transfers import BATCH, once_each, outbox, tasks, transfer

from fbs_debitor.changes import detection, sending
from fbs_debitor.core import ledger
from fbs_debitor.delivery import outbox as delivery
from fbs_debitor.delivery import rejections
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer import units

A, B = "715100", "726300"                     # two agencies ...
CVR_A, CVR_B = "29189404", "19438214"         # ... in two municipalities
ORG_UNIT_B = "6a2e9b63-1d49-4b54-8a6f-3c8b2d1e0f33"
REAL_CPR_1990 = "1705901003"   # born 17 May 1990 (the replacement patrons' birth date), modulus-11 valid


# --- helpers ------------------------------------------------------------------------------------------

def two_municipalities(stores, vendor: str = "KMD_OPUS", n: int = 2, **patron) -> dict[str, list[int]]:
    """Agency A (municipality CVR_A) and agency B (CVR_B), ``n`` adults' fees each, created in turns
    so that every page of claims (by liability id) holds both. Returns liability ids by agency."""
    ids: dict[str, list[int]] = {A: [], B: []}
    with stores.fbs.connect() as conn:
        fr.agency(conn, A, municipality_cvr=CVR_A, debtor_vendor=vendor)
        fr.agency(conn, B, municipality_cvr=CVR_B, debtor_vendor=vendor, org_unit_uuid=ORG_UNIT_B,
                  name="Søvang Bibliotek")
        for _ in range(n):
            for agency in (A, B):
                p = fr.patron(conn, agency_id=agency, **patron)
                ids[agency].append(fr.liability(conn, p["patron_id"], agency_id=agency)["liability_id"])
        conn.commit()
    return ids


def unit_agencies(stores) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The two units' agencies, as the DAG gets them (``units.units``)."""
    by_cvr = {u.cvr: u.agencies for u in units.units(stores.fbs)}
    assert by_cvr == {CVR_A: (A,), CVR_B: (B,)}
    return by_cvr[CVR_A], by_cvr[CVR_B]


def fid(agency: str, liability_id: int, generation: int = 0) -> str:
    return f"FBS-{agency}-{liability_id}" + (f"-{generation}" if generation else "")


def held(emu_db: str) -> dict[str, dict]:
    return {c["fordring_id"]: c for c in emulator.claims(emu_db)}


def edit_liability(stores, liability_id: int, **values) -> None:
    sets = ", ".join(f"{col} = :{col}" for col in values)
    with stores.fbs.begin() as conn:
        conn.execute(text(f"UPDATE liability SET {sets}, updated_at = :u WHERE liability_id = :l"),  # noqa: S608 - test helper
                     {**values, "u": dt.datetime.now().replace(microsecond=0), "l": liability_id})


def changes(stores) -> dict[int, list[tuple]]:
    """Every liability's messages after its creation: (version, kind, state), oldest first."""
    out: dict[int, list[tuple]] = {}
    with stores.ledger.connect() as conn:
        for r in conn.execute(text("SELECT liability_id, version, change_kind, state FROM outbox WHERE version > 1 "
                                   "ORDER BY liability_id, version")):
            out.setdefault(r.liability_id, []).append((r.version, r.change_kind, r.state))
    return out


def claim_row(stores, liability_id: int) -> dict:
    with stores.ledger.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM claim WHERE liability_id = :l"), {"l": liability_id})
                    .mappings().one())


def task_of(stores, liability_id: int) -> dict:
    (task,) = [t for t in tasks(stores, "delivery_rejected") if t["liability_id"] == liability_id]
    return task


# --- U1-U4: the change detection --------------------------------------------------------------------

def test_issue18_U1_detect_changes_records_the_changes_of_one_municipality_only_and_none_twice(stores, emu_db):
    ids = two_municipalities(stores)
    unit_a, unit_b = unit_agencies(stores)
    a, b = ids[A][0], ids[B][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
    assert {r["state"] for r in outbox(stores).values()} == {"accepted"} and len(outbox(stores)) == 4
    edit_liability(stores, a, amount=Decimal("20.25"))       # a write-down at A
    edit_liability(stores, b, status="cancelled")             # a cancellation at B
    run_id = ledger.start_run(stores.ledger, "manual")

    assert detection.detect_changes(stores, run_id, agencies=()) == {}          # a unit without agencies
    assert detection.detect_changes(stores, run_id, page_size=1, agencies=unit_a) == {
        (A, detection.RECORDED, "write_down"): 1}
    assert changes(stores) == {a: [(2, "write_down", "pending")]}
    untouched = claim_row(stores, b)                         # B's claim row was not even looked at
    assert (untouched["debtor_status"], untouched["current_version"]) == ("live", 1)

    assert detection.detect_changes(stores, run_id, page_size=1, agencies=set(unit_b)) == {
        (B, detection.RECORDED, "cancel"): 1}
    assert changes(stores) == {a: [(2, "write_down", "pending")], b: [(2, "cancel", "pending")]}
    assert claim_row(stores, b)["debtor_status"] == "cancelled"

    # every agency (as before units) and each unit again: nothing new, nothing twice
    assert detection.detect_changes(stores, run_id) == {}
    assert detection.detect_changes(stores, run_id, agencies=[*unit_a, *unit_b]) == {}
    assert changes(stores) == {a: [(2, "write_down", "pending")], b: [(2, "cancel", "pending")]}


def test_issue18_a_unit_is_a_collection_of_agency_ids_never_one_string(stores):
    with stores.fbs.connect() as conn:
        fr.agency(conn, A)
        conn.commit()
    run_id = ledger.start_run(stores.ledger, "manual")
    with pytest.raises(TypeError, match="collection of agency ids"):
        detection.detect_changes(stores, run_id, agencies=A)       # would be read as '7', '1', '5', ...
    with pytest.raises(TypeError, match="collection of agency ids"):
        rejections.requeue_changed(stores, run_id, agencies=A)


# --- U1: the change sending, in order per liability ------------------------------------------------------

def test_issue18_U1_send_changes_sends_one_municipalitys_changes_only_and_in_order_per_liability(stores, emu_db):
    ids = two_municipalities(stores)
    unit_a, unit_b = unit_agencies(stores)
    a, b = ids[A][0], ids[B][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        run_id = ledger.start_run(stores.ledger, "manual")
        edit_liability(stores, a, amount=Decimal("40.00"))
        edit_liability(stores, b, status="cancelled")
        detection.detect_changes(stores, run_id)              # both units' changes recorded
        edit_liability(stores, a, amount=Decimal("25.00"))
        detection.detect_changes(stores, run_id)              # A's liability changed again: version 3
        assert changes(stores) == {a: [(2, "write_down", "pending"), (3, "write_down", "pending")],
                                   b: [(2, "cancel", "pending")]}
        with debtor.client(emu.url) as client:
            before = emu.request_count
            assert sending.send_changes(stores, client, run_id, BATCH, page_size=1, agencies=unit_b) == 1
            assert emu.request_count == before + 1
            claims = held(emu_db)
            assert claims[fid(B, b)]["status"] == "CANCELLED"
            assert claims[fid(A, a)]["changes"] == [] and claims[fid(A, a)]["amount"] == Decimal("60.00")
            assert changes(stores) == {a: [(2, "write_down", "pending"), (3, "write_down", "pending")],
                                       b: [(2, "cancel", "accepted")]}
            assert sending.send_changes(stores, client, run_id, BATCH, agencies=unit_b) == 0   # nothing left of B

            before = emu.request_count
            assert sending.send_changes(stores, client, run_id, BATCH, agencies=unit_a) == 2
            # a change never overtakes the change before it: version 3 went in a round of its own,
            # after version 2 was answered
            assert emu.request_count == before + 2
    claim = held(emu_db)[fid(A, a)]
    assert [(c["aendring_id"], c["kind"], c["amount"]) for c in claim["changes"]] == [
        (f"{a}:2", "Nedskrivning", Decimal("40.00")), (f"{a}:3", "Nedskrivning", Decimal("25.00"))]
    assert claim["amount"] == Decimal("25.00")
    assert changes(stores) == {a: [(2, "write_down", "accepted"), (3, "write_down", "accepted")],
                               b: [(2, "cancel", "accepted")]}


# --- M1: unconfirmed claims sent again ---------------------------------------------------------------

def test_issue18_M1_resend_unconfirmed_sends_one_municipalitys_claims_only_and_a_moved_one_stays_its_own(
        stores, emu_db, monkeypatch):
    ids = two_municipalities(stores)
    unit_a, unit_b = unit_agencies(stores)
    moved = ids[A][1]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        with monkeypatch.context() as m:      # every claim recorded, none sent (as after a crash)
            m.setattr(delivery, "send_batch", lambda *_a, **_k: None)
            transfer(stores, emu.url)
        box = outbox(stores)
        assert set(box) == set(ids[A]) | set(ids[B]) and {r["state"] for r in box.values()} == {"pending"}
        # a claim recorded for A whose liability moved to B since: still A's unit's to resolve
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE liability SET agency_id = :b WHERE liability_id = :l"), {"b": B, "l": moved})
        run_id = ledger.start_run(stores.ledger, "manual")
        with debtor.client(emu.url) as client:
            assert delivery.resend_unconfirmed(stores, client, run_id, BATCH, page_size=1, agencies=unit_b) == 2
            assert sorted(once_each(emu_db)) == sorted(fid(B, lid) for lid in ids[B])
            box = outbox(stores)
            assert {box[lid]["state"] for lid in ids[B]} == {"accepted"}
            assert {(box[lid]["state"], box[lid]["attempts"], box[lid]["error_code"]) for lid in ids[A]} == {
                ("pending", 0, None)}                       # A's, the moved one too, as they were
            assert delivery.resend_unconfirmed(stores, client, run_id, BATCH, agencies=unit_b) == 0

            assert delivery.resend_unconfirmed(stores, client, run_id, BATCH, agencies=unit_a) == 1
    assert sorted(once_each(emu_db)) == sorted([fid(A, ids[A][0])] + [fid(B, lid) for lid in ids[B]])
    box = outbox(stores)
    assert moved not in box                        # never sent: withdrawn by its own unit, not sent as B's
    assert {r["state"] for r in box.values()} == {"accepted"}


# --- M1, I3: rejected claims whose data changed go again ----------------------------------------------

def test_issue18_M1_I3_requeue_changed_records_one_municipalitys_rejected_claims_again_only(stores, emu_db):
    ids = two_municipalities(stores, vendor="PRISME", n=1, cpr=None, birth_date=dt.date(1990, 5, 17))
    unit_a, unit_b = unit_agencies(stores)
    a, b = ids[A][0], ids[B][0]
    with emulator.Emulator("PRISME", emu_db) as emu:
        transfer(stores, emu.url)                 # replacement CPR numbers: Prisme rejects both (I3)
        box = outbox(stores)
        assert {(box[lid]["state"], box[lid]["error_code"]) for lid in (a, b)} == {("rejected", "I3_ERSTATNINGS_CPR")}
        assert task_of(stores, a)["resolved_at"] is None and task_of(stores, b)["resolved_at"] is None
        with stores.fbs.begin() as conn:          # staff register real CPR numbers in both municipalities
            conn.execute(text("UPDATE patron SET cpr = :c WHERE patron_id IN (SELECT patron_id FROM liability "
                              "WHERE liability_id IN (:a, :b))"), {"c": REAL_CPR_1990, "a": a, "b": b})
        run_id = ledger.start_run(stores.ledger, "manual")

        assert rejections.requeue_changed(stores, run_id, page_size=1, agencies=unit_a) == {
            (A, rejections.SENT_AGAIN, "I3"): 1}
        assert changes(stores) == {a: [(2, rejections.RECREATE, "pending")]}
        assert claim_row(stores, b)["state"] == "rejected" and outbox(stores)[b]["superseded_by"] is None
        assert task_of(stores, a)["resolved_at"] is not None and task_of(stores, b)["resolved_at"] is None

        assert rejections.requeue_changed(stores, run_id, agencies=unit_b) == {(B, rejections.SENT_AGAIN, "I3"): 1}
        assert changes(stores) == {a: [(2, rejections.RECREATE, "pending")], b: [(2, rejections.RECREATE, "pending")]}
        assert task_of(stores, b)["resolved_at"] is not None
        assert rejections.requeue_changed(stores, run_id) == {}              # every agency: nothing twice

        # a crash left B's superseded rejection with its task open: only B's unit finishes it
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE task SET resolved_at = NULL WHERE liability_id = :b"), {"b": b})
        with stores.ledger.begin() as conn:
            conn.execute(text("UPDATE outbox SET task_resolved_at = NULL WHERE liability_id = :b"), {"b": b})
        assert rejections.requeue_changed(stores, run_id, agencies=unit_a) == {}
        assert task_of(stores, b)["resolved_at"] is None
        assert rejections.requeue_changed(stores, run_id, agencies=unit_b) == {}
        assert task_of(stores, b)["resolved_at"] is not None

        with debtor.client(emu.url) as client:    # the new claims go with their own unit's changes
            assert sending.send_changes(stores, client, run_id, BATCH, agencies=unit_b) == 1
            assert fid(B, b, 1) in once_each(emu_db) and fid(A, a, 1) not in once_each(emu_db)
            assert sending.send_changes(stores, client, run_id, BATCH, agencies=unit_a) == 1
    assert {fid(A, a, 1), fid(B, b, 1)} <= set(once_each(emu_db))
    assert changes(stores) == {a: [(2, rejections.RECREATE, "accepted")], b: [(2, rejections.RECREATE, "accepted")]}
