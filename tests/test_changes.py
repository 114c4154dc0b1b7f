"""Keeping sent claims true (U1-U4), end to end against the debtor-system emulator over real HTTP,
on SQLite and PostgreSQL: what changes in FBS after a claim was accepted ends up in the debtor
system (its stored claim is asserted), in version order per liability, once; what is not sent on
(closed, sent to collection, a fee marked for repayment) becomes a staff task (M1); no full CPR
number is left in the ledger, the tasks or the logs."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

import fbs_rows as fr
import pytest
from leaks import full_cpr_numbers
from municipality import municipality
from sqlalchemy import text
from transfers import crash_at, tasks, transfer

from fbs_debitor.core import ledger
from fbs_debitor.sandbox import emulator

AGENCY = "715100"
REAL_CPR_1990 = "1705901003"   # born 17 May 1990 (the replacement patron's birth date), modulus-11 valid


# --- helpers ------------------------------------------------------------------------------------------

def fid(liability_id: int, generation: int = 0) -> str:
    return f"FBS-{AGENCY}-{liability_id}" + (f"-{generation}" if generation else "")


def held(emu_db: str) -> dict[str, dict]:
    """The debtor system's claims by FordringID."""
    return {c["fordring_id"]: c for c in emulator.claims(emu_db)}


def kinds(claim: dict) -> list[str]:
    return [c["kind"] for c in claim["changes"]]


def _update(stores, table: str, key: str, key_value, values: dict) -> None:
    with stores.fbs.begin() as conn:
        sets = ", ".join(f"{col} = :{col}" for col in values)
        conn.execute(text(f"UPDATE {table} SET {sets} WHERE {key} = :key_value"),  # noqa: S608 - test helper
                     {**{k: v for k, v in values.items()}, "key_value": key_value})


def edit_liability(stores, liability_id: int, **values) -> None:
    """A change in FBS as staff would make it: the liability's updated_at moves too."""
    _update(stores, "liability", "liability_id", liability_id,
            {**values, "updated_at": dt.datetime.now().replace(microsecond=0)})


def edit_patron_of(stores, liability_id: int, **values) -> None:
    with stores.fbs.connect() as conn:
        patron_id = conn.execute(text("SELECT patron_id FROM liability WHERE liability_id = :l"),
                                 {"l": liability_id}).scalar_one()
    _update(stores, "patron", "patron_id", patron_id, values)


def messages_of(stores, liability_id: int) -> list[dict]:
    """The liability's outbox messages, oldest version first."""
    with stores.ledger.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM outbox WHERE liability_id = :l ORDER BY version"),
                                              {"l": liability_id}).mappings()]


def summary(stores, liability_id: int) -> list[tuple]:
    return [(m["version"], m["change_kind"], m["state"]) for m in messages_of(stores, liability_id)]


def ledger_claim(stores, liability_id: int) -> dict:
    with stores.ledger.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM claim WHERE liability_id = :l"),
                                 {"l": liability_id}).mappings().one())


def change_tasks(stores) -> dict[str, dict]:
    """claim_change tasks by their kind and liability (the id ends with the run that raised it);
    raising the same one twice is an error here."""
    found = [(t["task_id"].rsplit("-", 1)[0], t) for t in tasks(stores, "claim_change")]
    assert len({k for k, _ in found}) == len(found), [k for k, _ in found]
    return dict(found)


def row_counts(stores) -> tuple[int, int]:
    with stores.ledger.connect() as conn:
        return (conn.execute(text("SELECT COUNT(*) FROM outbox")).scalar_one(),
                conn.execute(text("SELECT COUNT(*) FROM event")).scalar_one())


def change_totals(stores, run_id: str) -> dict[tuple[str, str], int]:
    return {(category, rule): n for (_a, category, rule), n in ledger.run_counts(stores.ledger, run_id).items()
            if category.startswith("change")}


# --- U1: cancellation, write-down, increase --------------------------------------------------------------

def test_cancelled_in_fbs_after_sending_cancels_the_claim_and_a_cancelled_compensation_too_U1_U4(stores, emu_db):
    ids = municipality(stores, adults=2)
    fee, compensation = ids["adult"][0], ids["company"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, fee, status="cancelled")
        edit_liability(stores, compensation, status="cancelled")
        run_id, _ = transfer(stores, emu.url)
    claims = held(emu_db)
    for lid in (fee, compensation):
        assert claims[fid(lid)]["status"] == "CANCELLED" and kinds(claims[fid(lid)]) == ["Annullering"]
        assert summary(stores, lid) == [(1, "create", "accepted"), (2, "cancel", "accepted")]
        assert ledger_claim(stores, lid)["debtor_status"] == "cancelled"
    assert claims[fid(compensation)]["kravtype"].startswith("ERSTATNING")
    untouched = [c for f, c in claims.items() if f not in (fid(fee), fid(compensation))]
    assert untouched and all(c["status"] == "ACTIVE" and c["changes"] == [] for c in untouched)
    assert change_totals(stores, run_id) == {("change_recorded", "cancel"): 2, ("changes_accepted", "cancel"): 2}


def test_lowered_amount_after_sending_writes_the_claim_down_to_the_new_amount_U1(stores, emu_db):
    ids = municipality(stores, adults=2)
    fee = ids["adult"][1]                                   # 31.50
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, fee, amount=Decimal("20.25"))
        transfer(stores, emu.url)
    claim = held(emu_db)[fid(fee)]
    assert (claim["status"], claim["amount"], claim["original_amount"]) == ("ACTIVE", Decimal("20.25"),
                                                                             Decimal("31.50"))
    assert [(c["aendring_id"], c["kind"], c["amount"]) for c in claim["changes"]] == [
        (f"{fee}:2", "Nedskrivning", Decimal("20.25"))]
    assert summary(stores, fee) == [(1, "create", "accepted"), (2, "write_down", "accepted")]
    assert messages_of(stores, fee)[1]["amount"] == Decimal("20.25")
    assert ledger_claim(stores, fee)["debtor_amount"] == Decimal("20.25")


def test_raised_amount_cancels_the_claim_and_sends_one_new_live_claim_under_a_new_fordring_id_U1(stores, emu_db):
    ids = municipality(stores, adults=2)
    fee = ids["adult"][0]                                   # 30.50
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, fee, amount=Decimal("75.00"))
        transfer(stores, emu.url)
    claims = held(emu_db)
    of_fee = {f: c for f, c in claims.items() if f == fid(fee) or f.startswith(fid(fee) + "-")}
    live = [f for f, c in of_fee.items() if c["status"] == "ACTIVE"]
    assert live == [fid(fee, 1)] and claims[fid(fee, 1)]["amount"] == Decimal("75.00")
    assert claims[fid(fee)]["status"] == "CANCELLED" and kinds(claims[fid(fee)]) == ["Annullering"]
    assert claims[fid(fee, 1)]["identification"] == claims[fid(fee)]["identification"]
    box = messages_of(stores, fee)
    assert [(m["version"], m["change_kind"], m["operation"], m["fordring_id"], m["state"]) for m in box] == [
        (1, "create", "OpretDebitorkonto", fid(fee), "accepted"),
        (2, "increase_cancel", "RetFordringTilstand", fid(fee), "accepted"),
        (3, "increase_create", "OpretDebitorkonto", fid(fee, 1), "accepted")]
    assert box[2]["depends_on"] == box[1]["message_key"] == f"{fee}:2" and box[1]["depends_on"] is None
    assert box[2]["amount"] == Decimal("75.00")
    claim = ledger_claim(stores, fee)
    assert (claim["fordring_id"], claim["generation"], claim["debtor_amount"]) == (fid(fee, 1), 1, Decimal("75.00"))


# --- U2: identity --------------------------------------------------------------------------------------

def test_changed_cpr_after_sending_moves_the_claim_to_the_new_cpr_U2(stores, emu_db):
    ids = municipality(stores, adults=2)
    fee = ids["adult"][0]                                   # a patron on ADULT2_CPR
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        assert held(emu_db)[fid(fee)]["identification"] == fr.ADULT2_CPR[:6] + "-****"
        edit_patron_of(stores, fee, cpr=fr.ADULT_CPR)
        transfer(stores, emu.url)
        requests = emu.request_count
        transfer(stores, emu.url)                           # told once: the rerun sends nothing
        assert emu.request_count == requests
    claim = held(emu_db)[fid(fee)]
    assert (claim["status"], claim["identification_kind"], claim["identification"], claim["responsible"]) == (
        "ACTIVE", "CPR", fr.ADULT_CPR[:6] + "-****", fr.ADULT_CPR[:6] + "-****")
    assert kinds(claim) == ["Identifikationsaendring"]
    assert summary(stores, fee) == [(1, "create", "accepted"), (2, "identity", "accepted")]


def test_replacement_cpr_replaced_by_a_real_cpr_is_sent_as_an_identity_change_U2(stores, emu_db):
    ids = municipality(stores, adults=1)
    lid = ids["replacement"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        assert held(emu_db)[fid(lid)]["identification_kind"] == "ERSTATNING_CPR"
        edit_patron_of(stores, lid, cpr=REAL_CPR_1990)     # the replacement number stays in FBS (I1)
        transfer(stores, emu.url)
    claim = held(emu_db)[fid(lid)]
    assert (claim["identification_kind"], claim["identification"]) == ("CPR", REAL_CPR_1990[:6] + "-****")
    assert (claim["responsible_kind"], claim["status"]) == ("CPR", "ACTIVE")
    assert kinds(claim) == ["Identifikationsaendring"]
    assert summary(stores, lid)[-1] == (2, "identity", "accepted")


# --- U3: repayment -------------------------------------------------------------------------------------

def test_compensation_marked_for_repayment_is_repaid_and_a_fee_is_not_but_gets_a_task_U3(stores, emu_db):
    ids = municipality(stores, adults=2)
    compensation, fee = ids["company"][0], ids["adult"][0]
    marked = dt.datetime(2026, 11, 19, 10, 15)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, compensation, refund_requested_at=marked)
        edit_liability(stores, fee, refund_requested_at=marked)
        transfer(stores, emu.url)
    claims = held(emu_db)
    repaid = claims[fid(compensation)]
    assert [(c["kind"], c["amount"]) for c in repaid["changes"]] == [("Tilbagebetaling", Decimal("349.00"))]
    assert repaid["status"] == "ACTIVE"
    assert summary(stores, compensation) == [(1, "create", "accepted"), (2, "repayment", "accepted")]
    # a fee: nothing sent, a task for staff (M1)
    assert claims[fid(fee)]["changes"] == [] and summary(stores, fee) == [(1, "create", "accepted")]
    (task,) = tasks(stores, "claim_change")
    assert (task["task_id"].rsplit("-", 1)[0], task["liability_id"]) == (f"CHG-refund-{fee}", fee)
    assert "tilbagebetaling" in task["message"] and "repayment" in task["message"]


# --- order: two changes to one liability ---------------------------------------------------------------

def test_two_changes_in_two_runs_arrive_in_the_order_they_were_made_U1(stores, emu_db):
    ids = municipality(stores, adults=2)
    fee = ids["adult"][1]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, fee, amount=Decimal("12.00"))
        transfer(stores, emu.url)
        edit_liability(stores, fee, status="cancelled")
        transfer(stores, emu.url)
    claim = held(emu_db)[fid(fee)]
    assert [(c["aendring_id"], c["kind"]) for c in claim["changes"]] == [
        (f"{fee}:2", "Nedskrivning"), (f"{fee}:3", "Annullering")]
    assert (claim["status"], claim["amount"]) == ("CANCELLED", Decimal("12.00"))
    assert summary(stores, fee) == [(1, "create", "accepted"), (2, "write_down", "accepted"),
                                    (3, "cancel", "accepted")]
    box = messages_of(stores, fee)
    assert box[1]["answered_at"] <= box[2]["sent_at"]


def test_two_changes_found_in_one_run_are_sent_in_version_order_U3_U4(stores, emu_db):
    ids = municipality(stores, adults=1)
    compensation = ids["company"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        # repaid and then cancelled: a repayment arriving after the cancellation would be refused
        edit_liability(stores, compensation, refund_requested_at=dt.datetime(2026, 11, 19, 9, 0), status="cancelled")
        transfer(stores, emu.url)
    claim = held(emu_db)[fid(compensation)]
    assert [(c["aendring_id"], c["kind"]) for c in claim["changes"]] == [
        (f"{compensation}:2", "Tilbagebetaling"), (f"{compensation}:3", "Annullering")]
    assert claim["status"] == "CANCELLED"
    assert summary(stores, compensation) == [(1, "create", "accepted"), (2, "repayment", "accepted"),
                                             (3, "cancel", "accepted")]
    box = messages_of(stores, compensation)
    assert box[1]["run_id"] == box[2]["run_id"] and box[1]["answered_at"] <= box[2]["sent_at"]


# --- reruns ----------------------------------------------------------------------------------------------

def test_rerun_without_changes_in_fbs_records_and_sends_nothing_new(stores, emu_db):
    ids = municipality(stores, adults=4)
    a = ids["adult"]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, a[0], amount=Decimal("10.00"))                      # write-down
        edit_liability(stores, a[1], amount=Decimal("99.00"))                      # increase
        edit_liability(stores, a[2], status="cancelled")                           # cancel
        edit_liability(stores, a[3], status="closed")                              # a task, nothing sent
        edit_liability(stores, ids["company"][0], refund_requested_at=dt.datetime(2026, 11, 19, 9, 0))
        transfer(stores, emu.url)
        before = (row_counts(stores), held(emu_db), len(tasks(stores)), emu.request_count)
        assert before[1][fid(a[1], 1)]["amount"] == Decimal("99.00")              # the changes went
        for _ in range(2):
            run_id, _ = transfer(stores, emu.url)
            assert (row_counts(stores), held(emu_db), len(tasks(stores)), emu.request_count) == before
    assert change_totals(stores, run_id) == {}


# --- not sent on: closed, sent to collection (with U4) ---------------------------------------------------

def test_closed_or_sent_to_collection_after_sending_sends_nothing_but_gives_staff_a_task_M1_U4(stores, emu_db):
    ids = municipality(stores, adults=2)
    closed, collected = ids["adult"]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, closed, status="closed")
        edit_liability(stores, collected, status="sent_to_collection")
        requests = emu.request_count
        transfer(stores, emu.url)
        transfer(stores, emu.url)
        assert emu.request_count == requests                                       # nothing went
        found = change_tasks(stores)
        assert sorted(found) == sorted([f"CHG-closed-{closed}", f"CHG-collection-{collected}"])
        assert found[f"CHG-closed-{closed}"]["liability_id"] == closed and "P2" in found[f"CHG-closed-{closed}"]["message"]
        assert "PSRM" in found[f"CHG-collection-{collected}"]["message"]
        # U4: the debtor system passes a write-down on to collection, so it still goes
        edit_liability(stores, collected, amount=Decimal("15.00"))
        transfer(stores, emu.url)
    claims = held(emu_db)
    assert claims[fid(closed)]["status"] == "ACTIVE" and claims[fid(closed)]["changes"] == []
    assert summary(stores, closed) == [(1, "create", "accepted")]
    assert (claims[fid(collected)]["amount"], kinds(claims[fid(collected)])) == (Decimal("15.00"), ["Nedskrivning"])
    assert summary(stores, collected) == [(1, "create", "accepted"), (2, "write_down", "accepted")]
    assert len(tasks(stores, "claim_change")) == 2


def test_cancelled_claim_gets_a_new_claim_only_when_reopened_not_when_closed_or_collected_U1_P2(stores, emu_db):
    ids = municipality(stores, adults=3)
    reopened, closed, collected = ids["adult"]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        for lid in ids["adult"]:
            edit_liability(stores, lid, status="cancelled")
        transfer(stores, emu.url)
        edit_liability(stores, reopened, status="open")           # open again: a new claim (U1)
        edit_liability(stores, closed, status="closed")           # nothing is owed: nothing goes (P2)
        edit_liability(stores, collected, status="sent_to_collection")
        transfer(stores, emu.url)
    claims = held(emu_db)
    assert claims[fid(reopened, 1)]["status"] == "ACTIVE" and summary(stores, reopened)[-1] == (
        3, "increase_create", "accepted")
    for lid in (closed, collected):
        assert fid(lid, 1) not in claims, f"{fid(lid, 1)}: a new live claim after the cancellation"
        assert summary(stores, lid) == [(1, "create", "accepted"), (2, "cancel", "accepted")]


# --- a change never overtakes its creation -----------------------------------------------------------

@pytest.mark.slow
def test_write_down_of_an_unconfirmed_creation_waits_until_the_creation_is_answered_U1(stores, emu_db, monkeypatch):
    municipality(stores, adults=2)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        crash_at("record_answers", stores, emu.url, monkeypatch)       # the debtor holds it; we have no answer
    victim = min(m["liability_id"] for m in _all_messages(stores) if m["state"] == "sent")
    original = held(emu_db)[fid(victim)]["amount"]
    edit_liability(stores, victim, amount=original - Decimal("10.00"))
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=1.0, fault_kinds=("http503",)) as emu:
        transfer(stores, emu.url, max_attempts=2)                      # the debtor system is down
    box = messages_of(stores, victim)
    assert box[0]["state"] == "sent" and [m for m in box[1:] if m["attempts"]] == []   # nothing sent ahead of it
    assert held(emu_db)[fid(victim)]["changes"] == []
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
    claim = held(emu_db)[fid(victim)]
    assert (claim["status"], claim["amount"], kinds(claim)) == ("ACTIVE", original - Decimal("10.00"), ["Nedskrivning"])
    assert summary(stores, victim) == [(1, "create", "accepted"), (2, "write_down", "accepted")]
    with stores.ledger.connect() as conn:
        trail = [(r.kind, r.message_key) for r in conn.execute(text(
            "SELECT kind, message_key FROM event WHERE liability_id = :l ORDER BY seq"), {"l": victim})]
    assert trail.index(("accepted", f"{victim}:1")) < trail.index(("sent", f"{victim}:2"))


def _all_messages(stores) -> list[dict]:
    with stores.ledger.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM outbox")).mappings()]


# --- no CPR leaks ------------------------------------------------------------------------------------

def test_no_full_cpr_in_ledger_outbox_tasks_or_logs_of_the_change_flows(stores, emu_db, caplog):
    ids = municipality(stores, adults=6)
    a = ids["adult"]
    caplog.set_level(logging.DEBUG)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_patron_of(stores, a[0], cpr=fr.ADULT_CPR)                   # U2
        edit_patron_of(stores, a[1], cpr="3102811234")                   # U2 that no longer builds: a task
        edit_patron_of(stores, ids["replacement"][0], cpr=REAL_CPR_1990)  # U2: replacement -> real
        edit_liability(stores, a[2], amount=Decimal("99.00"))            # U1 increase
        edit_liability(stores, a[3], refund_requested_at=dt.datetime(2026, 11, 19, 9, 0))   # a fee: task
        edit_liability(stores, a[4], status="closed")
        edit_liability(stores, a[5], status="sent_to_collection", amount=Decimal("5.00"))
        edit_liability(stores, ids["minor"][0], status="cancelled")
        transfer(stores, emu.url)
        transfer(stores, emu.url)
    assert summary(stores, a[0])[-1] == (2, "identity", "accepted")
    assert set(change_tasks(stores)) == {
        f"CHG-identity-{a[1]}", f"CHG-refund-{a[3]}", f"CHG-closed-{a[4]}", f"CHG-collection-{a[5]}"}
    with stores.ledger.connect() as conn:
        # every text column the change flows write; not outbox.fingerprint (a hex digest) nor
        # debtor_ref (the receiver's own opaque reference)
        stored = " ".join(str(v) for row in conn.execute(text(
            "SELECT detail FROM event UNION ALL SELECT message_key FROM outbox UNION ALL SELECT fordring_id FROM outbox "
            "UNION ALL SELECT last_error FROM outbox UNION ALL SELECT error_code FROM outbox "
            "UNION ALL SELECT change_kind FROM outbox UNION ALL SELECT depends_on FROM outbox "
            "UNION ALL SELECT task_id FROM outbox UNION ALL SELECT error FROM run")) for v in row)
    assert "identity" in stored and full_cpr_numbers(stored) == []
    assert full_cpr_numbers(" ".join(t["message"] for t in tasks(stores))) == []
    assert caplog.records and full_cpr_numbers(caplog.text) == []


def test_increase_whose_cancellation_is_rejected_sends_no_second_live_claim_U1_M1(stores, emu_db):
    """The debtor office cancelled the claim by hand, so the increase's cancellation is rejected:
    the new claim must not go (two live claims would bill twice); staff get tasks for both."""
    ids = municipality(stores, adults=2)
    fee = ids["adult"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        engine = emulator._engine(emu_db)
        with engine.begin() as conn:
            conn.execute(text("UPDATE emu_claim SET status = 'CANCELLED' WHERE fordring_id = :f"), {"f": fid(fee)})
        engine.dispose()
        edit_liability(stores, fee, amount=Decimal("75.00"))
        transfer(stores, emu.url)
        transfer(stores, emu.url)
    assert fid(fee, 1) not in held(emu_db)
    box = messages_of(stores, fee)
    assert [(m["change_kind"], m["state"], m["error_code"]) for m in box] == [
        ("create", "accepted", None), ("increase_cancel", "rejected", "FORDRING_ANNULLERET"),
        ("increase_create", "rejected", "U1_ANNULLERING_AFVIST")]
    assert box[2]["attempts"] == 0                                       # it never left
    rejected = {t["task_id"]: t["message"] for t in tasks(stores, "delivery_rejected")}
    assert set(rejected) == {f"REJ-{fee}:2", f"REJ-{fee}:3"}
    assert "Ændringen af mellemværende" in rejected[f"REJ-{fee}:3"]


def test_raised_amount_of_a_closed_liability_sends_no_new_claim_but_a_task_U1_P2(stores, emu_db):
    ids = municipality(stores, adults=2)
    fee = ids["adult"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, fee, status="closed", amount=Decimal("75.00"))
        requests = emu.request_count
        transfer(stores, emu.url)
        assert emu.request_count == requests
    assert summary(stores, fee) == [(1, "create", "accepted")]
    assert set(change_tasks(stores)) == {f"CHG-closed-{fee}", f"CHG-increase-{fee}"}


def test_another_fingerprint_key_stops_the_change_detection_instead_of_sending_every_claim_U2(stores, emu_db,
                                                                                             monkeypatch):
    from fbs_debitor.changes import detection as change_detection
    from fbs_debitor.claims import fingerprints

    ids = municipality(stores, adults=2)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        before = row_counts(stores)
        monkeypatch.setenv("FBS_DEBITOR_FINGERPRINT_KEY", "another-key-entirely-0123456789")
        run_id = ledger.start_run(stores.ledger, "manual")
        with pytest.raises(fingerprints.KeyMismatch, match="not the one"):
            change_detection.detect_changes(stores, run_id)
    assert row_counts(stores) == before and len(ids["adult"]) == 2


def test_history_shows_every_step_of_a_liability_in_order_with_cpr_masked_M2(stores, emu_db):
    from fbs_debitor.changes.history import format_history

    ids = municipality(stores, adults=2)
    fee = ids["adult"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, fee, amount=Decimal("20.00"))
        transfer(stores, emu.url)
        edit_patron_of(stores, fee, cpr=fr.ADULT_CPR)                   # was ADULT2_CPR (U2)
        edit_liability(stores, fee, status="closed")
        transfer(stores, emu.url)
    with stores.fbs.begin() as conn:   # a payment written back by the payments flow (P2)
        conn.execute(text("INSERT INTO payment (payment_id, liability_id, kind, amount, booked_on, source_ref) "
                          "VALUES ('KMD-1', :l, 'payment', 5, :d, 'nightly file')"),
                     {"l": fee, "d": dt.date.today()})
    out = format_history(stores, fee)
    lines = out.splitlines()
    for step in (f"{fee}:1", f"{fee}:2", "write_down", "20.00 DKK", f"{fee}:3", "identity",
                 f"identification {fr.ADULT_CPR[:6]}-****", "status closed", "task claim_change",
                 f"CHG-closed-{fee}", "payment payment", "5.00 DKK (KMD-1, nightly file)"):
        assert step in out, step
    timeline = lines[lines.index("Timeline:") + 1:]
    order = [next(i for i, line in enumerate(timeline) if marker in line)
             for marker in (f"recorded                       [{fee}:1]", f"accepted                       [{fee}:1]",
                            f"change_recorded                [{fee}:2]", f"accepted                       [{fee}:2]")]
    assert order == sorted(order)
    assert full_cpr_numbers(out) == []
    assert format_history(stores, 987654321) is None


# --- found in review: rejections, repeats and blocked changes ------------------------------------------

def _reject_cancellations(monkeypatch, code="FORDRING_I_INDDRIVELSE"):
    """A debtor system that refuses cancellations (the claim is at PSRM, ...) and keeps the claim live."""
    import copy

    from fbs_debitor.sandbox.emulator import _dr, _text

    original = emulator.Emulator._change

    def change(self, conn, request):
        out = []
        for ch in request.iterfind(_dr("FordringAendring")):
            what = [c for c in ch if isinstance(c.tag, str)][2]
            aid = _text(ch, _dr("AendringID"))
            if what.tag.endswith("Annullering"):
                first = self._first_answer(conn, "RetFordringTilstand", aid)
                out.append(first or self._record(conn, "RetFordringTilstand", aid, "AFVIST", None, code, "nej"))
                continue
            one = copy.deepcopy(request)
            for other in list(one.iterfind(_dr("FordringAendring"))):
                if _text(other, _dr("AendringID")) != aid:
                    one.remove(other)
            out += original(self, conn, one)
        return out

    monkeypatch.setattr(emulator.Emulator, "_change", change)


def live_claims(emu_db: str, liability_id: int) -> list[str]:
    return sorted(f for f, c in held(emu_db).items()
                  if (f == fid(liability_id) or f.startswith(fid(liability_id) + "-")) and c["status"] == "ACTIVE")


def test_reopened_after_a_rejected_cancellation_keeps_one_live_claim_U1(stores, emu_db, monkeypatch):
    fee = municipality(stores, adults=1)["adult"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, fee, status="cancelled")
        with monkeypatch.context() as m:
            _reject_cancellations(m)
            transfer(stores, emu.url)
        edit_liability(stores, fee, status="open")
        transfer(stores, emu.url)
    assert live_claims(emu_db, fee) == [fid(fee)]              # never a second live claim
    assert [(k, s) for _, k, s in summary(stores, fee)] == [
        ("create", "accepted"), ("cancel", "rejected"), ("increase_create", "rejected")]
    claim = ledger_claim(stores, fee)
    assert (claim["fordring_id"], claim["debtor_status"]) == (fid(fee), "live")


@pytest.mark.slow
def test_after_a_rejected_increase_a_later_cancellation_reaches_the_claim_still_live_U1(stores, emu_db, monkeypatch):
    fee = municipality(stores, adults=1)["adult"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, fee, amount=Decimal("75.00"))
        with monkeypatch.context() as m:
            _reject_cancellations(m)
            transfer(stores, emu.url)
        assert live_claims(emu_db, fee) == [fid(fee)] and ledger_claim(stores, fee)["fordring_id"] == fid(fee)
        edit_liability(stores, fee, status="cancelled")
        transfer(stores, emu.url)
    assert held(emu_db)[fid(fee)]["status"] == "CANCELLED" and fid(fee, 1) not in held(emu_db)
    assert messages_of(stores, fee)[-1]["fordring_id"] == fid(fee)


def test_claim_from_before_the_change_tracking_at_amount_zero_is_cancelled_once_U1(stores, emu_db):
    fee = municipality(stores, adults=1)["adult"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        with stores.ledger.begin() as conn:   # as recorded before ledger 0004
            conn.execute(text("UPDATE claim SET debtor_amount = NULL, debtor_status = NULL, identity_print = NULL, "
                              "source_print = NULL, fbs_status = NULL WHERE liability_id = :l"), {"l": fee})
        edit_liability(stores, fee, amount=Decimal("0.00"))
        for _ in range(3):
            transfer(stores, emu.url)
    assert held(emu_db)[fid(fee)]["status"] == "CANCELLED"
    with stores.ledger.connect() as conn:
        baselines = conn.execute(text("SELECT COUNT(*) FROM event WHERE liability_id = :l AND kind = 'change_baseline'"),
                                 {"l": fee}).scalar_one()
    assert baselines == 1 and [k for _, k, _ in summary(stores, fee)] == ["create", "cancel"]


def test_closed_again_after_reopening_is_a_new_task_and_a_negative_amount_is_told_once_M1(stores, emu_db):
    a, b = municipality(stores, adults=2)["adult"]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, a, status="closed")
        edit_liability(stores, b, amount=Decimal("-5.00"))
        transfer(stores, emu.url)
        with stores.fbs.begin() as conn:   # staff handle the first one
            conn.execute(text("UPDATE task SET resolved_at = created_at WHERE kind = 'claim_change'"))
        edit_liability(stores, a, status="open")
        transfer(stores, emu.url)
        edit_liability(stores, a, status="closed")
        transfer(stores, emu.url)
    closed = [t for t in tasks(stores, "claim_change") if t["task_id"].startswith(f"CHG-closed-{a}-")]
    assert len(closed) == 2 and [t["resolved_at"] is None for t in closed].count(True) == 1
    negative = [t for t in tasks(stores, "claim_change") if t["task_id"].startswith(f"CHG-negative-{b}-")]
    with stores.ledger.connect() as conn:
        told = conn.execute(text("SELECT COUNT(*) FROM event WHERE liability_id = :l AND kind = 'change_not_sent'"),
                            {"l": b}).scalar_one()
    assert len(negative) == 1 and told == 1                     # not every hour
    assert summary(stores, b) == [(1, "create", "accepted")]


def test_repayment_marked_again_is_not_paid_out_twice_U3(stores, emu_db):
    comp = municipality(stores, adults=1)["company"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_liability(stores, comp, refund_requested_at=dt.datetime(2026, 11, 19, 9, 0))
        transfer(stores, emu.url)
        edit_liability(stores, comp, refund_requested_at=dt.datetime(2026, 11, 19, 9, 5))
        transfer(stores, emu.url)
    assert kinds(held(emu_db)[fid(comp)]) == ["Tilbagebetaling"]
    assert set(change_tasks(stores)) == {f"CHG-refund-{comp}"}


@pytest.mark.slow
def test_identity_change_that_no_longer_builds_does_not_hold_back_a_cancellation_U1_U2(stores, emu_db):
    fee = municipality(stores, adults=1)["adult"][0]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        edit_patron_of(stores, fee, cpr=fr.ADULT_CPR)
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=1.0, fault_kinds=("http503",)) as emu:
        transfer(stores, emu.url, max_attempts=1)               # an outage: the identity change waits
    edit_patron_of(stores, fee, cpr="3102811234")                # then the CPR becomes impossible
    edit_liability(stores, fee, status="cancelled")
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
    assert held(emu_db)[fid(fee)]["status"] == "CANCELLED"
    box = {m["change_kind"]: m for m in messages_of(stores, fee)}
    assert box["identity"]["error_code"] == "NOT_REBUILDABLE" and box["cancel"]["state"] == "accepted"
    assert f"BLK-{fee}:2" in {t["task_id"] for t in tasks(stores, "delivery_blocked")}
