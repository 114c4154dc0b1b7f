"""Payments back (P1, P2) on SQLite and PostgreSQL: the emulator delivers DaekningAfskrivning files
on each vendor's rhythm into a real folder, the payments run applies each movement once to the
ledger and FBS, holds what it must not apply, quarantines bad files, survives crashes, and the
reconciliation is clean after all of it."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from leaks import full_cpr_numbers
from municipality import municipality, sendable
from sqlalchemy import text
from transfers import Crash, tasks, transfer

from fbs_debitor.core import ledger
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments import reconciliation as payment_reconciliation
from fbs_debitor.payments.files import Movement, to_xml, write_atomically
from fbs_debitor.payments.inbox import FolderInbox
from fbs_debitor.payments.rhythm import rhythm
from fbs_debitor.sandbox import emulator, emulator_payments

AGENCY = "715100"
UNTIL = dt.datetime(2026, 11, 20, 12, 0, tzinfo=ZoneInfo("Europe/Copenhagen"))


@pytest.fixture
def inbox(tmp_path) -> FolderInbox:
    """The configured inbox (the project's own: archive/ and quarantine/ are made next to it)."""
    return FolderInbox(tmp_path / "payments" / "inbox", own=True)


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def sent(stores, emu_db, vendor="KMD_OPUS", **kw) -> dict[str, list[int]]:
    ids = municipality(stores, vendor=vendor, **kw)
    with emulator.Emulator(vendor, emu_db) as emu:
        transfer(stores, emu.url)
    return ids


def fid(lid: int) -> str:
    return f"FBS-{AGENCY}-{lid}"


def amount_of(stores, lid: int) -> Decimal:
    with stores.fbs.connect() as conn:
        return Decimal(str(conn.execute(text("SELECT amount FROM liability WHERE liability_id = :l"),
                                        {"l": lid}).scalar())).quantize(Decimal("0.01"))


def deliver(inbox, name: str, *movements: Movement) -> None:
    write_atomically(inbox.inbox, name, to_xml(movements, UNTIL))


def mv(mid: str, lid_or_fid, kind: str, amount, ref: str | None = None, booked=dt.date(2026, 11, 19)) -> Movement:
    f = lid_or_fid if isinstance(lid_or_fid, str) else fid(lid_or_fid)
    return Movement(mid, f, kind, Decimal(str(amount)).quantize(Decimal("0.01")), booked, ref)


def run(stores, inbox) -> dict[str, int]:
    run_id = ledger.start_run(stores.ledger, "payments")
    payments.ingest(stores, inbox, run_id)
    counts = payments.record_run_counts(stores.ledger, run_id)
    ledger.finish_run(stores.ledger, run_id, "success")
    return payments.totals(counts)


def claim(stores, lid: int) -> dict:
    with stores.ledger.connect() as conn:
        row = conn.execute(text("SELECT * FROM claim WHERE liability_id = :l"), {"l": lid}).mappings().one()
    return {**row, "balance": Decimal(str(row["balance"])).quantize(Decimal("0.01"))
            if row["balance"] is not None else None}


def fbs_payments(stores, lid: int | None = None) -> list[dict]:
    with stores.fbs.connect() as conn:
        rows = conn.execute(text("SELECT * FROM payment ORDER BY payment_id")).mappings().all()
    return [dict(r) for r in rows if lid is None or r["liability_id"] == lid]


def fbs_status(stores, lid: int) -> str:
    with stores.fbs.connect() as conn:
        return conn.execute(text("SELECT status FROM liability WHERE liability_id = :l"), {"l": lid}).scalar()


def movement_states(stores) -> dict[str, tuple[str, str | None]]:
    with stores.ledger.connect() as conn:
        return {r.movement_id: (r.state, r.hold_reason) for r in conn.execute(text("SELECT * FROM movement"))}


def clean(stores, emu_db=None) -> payment_reconciliation.PaymentReport:
    report = payment_reconciliation.reconcile_payments(
        stores, emulator_payments.movements(emu_db) if emu_db else None, page_size=3)
    assert report.ok, report.differences
    return report


# --- each vendor's rhythm (P1) -------------------------------------------------------------------

@pytest.mark.parametrize("vendor, prisme, expect", [
    ("KMD_OPUS", None, "nightly"), ("PRISME", "hourly", "hourly"), ("PRISME", "nightly", "nightly"),
    ("EG", None, "every 15 minutes")])
def test_P1_each_vendor_delivers_on_its_rhythm_and_every_file_is_applied(stores, emu_db, inbox, monkeypatch, vendor,
                                                                          prisme, expect):
    if prisme:
        monkeypatch.setenv("FBS_DEBITOR_PRISME_PAYMENT_RHYTHM", prisme)
    sent(stores, emu_db, vendor=vendor, adults=20)
    assert rhythm(vendor).name == expect
    files = emulator_payments.deliver(emu_db, inbox.inbox, UNTIL, {AGENCY: vendor}, seed=3,
                                      mix=emulator_payments.Mix(rate=4.0))
    times = [dt.datetime.strptime(f.name.split("-")[2][:13], "%Y%m%dT%H%M") for f in files]
    if expect == "nightly":                  # one file, the night's delivery at 02:00
        assert [(t.hour, t.minute) for t in times] == [(2, 0)]
    elif expect == "hourly":
        assert len(files) > 2 and all(t.minute == 0 for t in times) and len(set(times)) == len(times)
    else:                                    # EG: frequent small files
        assert len(files) > 4 and all(t.minute % 15 == 0 for t in times)
        assert len(emulator_payments.movements(emu_db)) / len(files) < 5      # a few movements each
    totals = run(stores, inbox)
    assert totals["files_applied"] == len(files) and inbox.waiting() == []
    assert listing(inbox.archive_dir) == sorted(f.name for f in files)
    delivered = emulator_payments.movements(emu_db)
    states = movement_states(stores)
    assert set(states) == set(delivered)                          # every movement arrived, once
    unknown = {m for m, d in delivered.items() if emulator_payments.is_unknown_claim(d["fordring_id"])}
    assert len(unknown) == 2 and {states[m] for m in unknown} == {("held", payments.UNKNOWN_CLAIM)}
    assert all(s == ("applied", None) for m, s in states.items() if m not in unknown)
    assert len(fbs_payments(stores)) == len(delivered) - len(unknown)
    # a second call delivers only what fell due since (nothing for a nightly rhythm within the hour)
    later = emulator_payments.deliver(emu_db, inbox.inbox, UNTIL + dt.timedelta(minutes=59), {AGENCY: vendor},
                                      seed=4, mix=emulator_payments.Mix(rate=4.0))
    assert (later == []) if expect == "nightly" else len(later) <= 4
    run(stores, inbox)
    clean(stores, emu_db)


# --- partial, full and over-payments, write-offs (P2) --------------------------------------------

@pytest.mark.slow
def test_P2_partial_full_and_over_payments_and_write_offs(stores, emu_db, inbox):
    ids = sent(stores, emu_db, adults=3)
    a, b, c = ids["adult"]
    x, y = amount_of(stores, a), amount_of(stores, b)
    deliver(inbox, "DA_KMD_OPUS_1.xml", mv("M1", a, "payment", 10), mv("M2", b, "payment", y + Decimal("5.00")),
            mv("M3", c, "write_off", amount_of(stores, c)))
    totals = run(stores, inbox)
    assert (totals["movements_applied"], totals["movements_held"]) == (2, 1)
    first = claim(stores, a)
    assert (first["settlement"], first["balance"]) == ("partly_paid", x - 10) and fbs_status(stores, a) == "open"
    over = claim(stores, b)
    assert (over["settlement"], over["balance"], over["paid_amount"]) == ("unpaid", None, 0)   # held, not applied
    assert movement_states(stores)["M2"] == ("held", payments.OVERPAYMENT)
    held_task = [t for t in tasks(stores, payments.TASK_KIND_MOVEMENT) if t["liability_id"] == b]
    assert len(held_task) == 1 and "P_OVERPAYMENT" in held_task[0]["message"] and "M2" in held_task[0]["message"]
    assert (claim(stores, c)["settlement"], fbs_status(stores, c)) == ("written_off", "closed")
    assert fbs_payments(stores, b) == []

    deliver(inbox, "DA_KMD_OPUS_2.xml", mv("M4", a, "payment", x - 10))
    run(stores, inbox)
    paid = claim(stores, a)
    assert (paid["settlement"], paid["balance"], fbs_status(stores, a)) == ("paid", Decimal("0.00"), "closed")
    assert [(p["kind"], Decimal(str(p["amount"]))) for p in fbs_payments(stores, a)] == [
        ("payment", Decimal("10.00")), ("payment", x - 10)]
    assert all(p["source_ref"].startswith(f"SF1590_B_01A {fid(a)}") for p in fbs_payments(stores, a))
    # a paid claim closed in FBS is not a "closed without payment" task for the change detection
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
    assert not [t for t in tasks(stores) if t["liability_id"] == a and t["kind"] != payments.TASK_KIND_MOVEMENT]
    clean(stores)


# --- a reversal ------------------------------------------------------------------------------------

def test_reversal_undoes_a_payment_and_opens_the_liability_again(stores, emu_db, inbox):
    ids = sent(stores, emu_db, adults=2)
    a, b = ids["adult"]
    x = amount_of(stores, a)
    deliver(inbox, "f1.xml", mv("P1", a, "payment", x))
    run(stores, inbox)
    assert fbs_status(stores, a) == "closed"
    deliver(inbox, "f2.xml", mv("R1", a, "reversal", x, ref="P1"), mv("R2", a, "reversal", x, ref="P1"),
            mv("R3", b, "reversal", 1, ref="P-not-yet"))
    run(stores, inbox)
    states = movement_states(stores)
    assert states["R1"] == ("applied", None)
    assert states["R2"] == ("held", payments.REVERSAL_MISMATCH)          # already reversed
    assert states["R3"] == ("held", payments.REVERSAL_UNKNOWN)
    back = claim(stores, a)
    assert (back["settlement"], back["balance"], fbs_status(stores, a)) == ("unpaid", x, "open")
    assert sorted(p["kind"] for p in fbs_payments(stores, a)) == ["payment", "reversal"]
    # the reversed payment arrives later: both applied in the same run, the hold task resolved
    deliver(inbox, "f3.xml", mv("P-not-yet", b, "payment", 1))
    run(stores, inbox)
    assert movement_states(stores)["R3"][0] == "applied" and claim(stores, b)["paid_amount"] in (0, Decimal(0))
    resolved = [t for t in tasks(stores, payments.TASK_KIND_MOVEMENT) if "R3" in t["message"]]
    assert resolved and all(t["resolved_at"] is not None for t in resolved)
    clean(stores)


# --- delivered again -------------------------------------------------------------------------------

def test_same_file_twice_and_a_movement_again_are_applied_once(stores, emu_db, inbox):
    ids = sent(stores, emu_db, adults=3)
    a, b, c = ids["adult"]
    deliver(inbox, "DA_1.xml", mv("M1", a, "payment", 5), mv("M2", b, "payment", 6))
    run(stores, inbox)
    (inbox.inbox / "DA_1_again.xml").write_bytes((inbox.archive_dir / "DA_1.xml").read_bytes())
    totals = run(stores, inbox)
    assert totals.get("files_applied", 0) == 0 and inbox.waiting() == []
    deliver(inbox, "DA_2.xml", mv("M2", b, "payment", 6), mv("M3", c, "payment", 7))
    totals = run(stores, inbox)
    assert (totals["movements_applied"], totals["movements_again"]) == (1, 1)
    deliver(inbox, "DA_3.xml", mv("M4", c, "payment", 1), mv("M1", a, "payment", 50))   # M1 with another amount
    totals = run(stores, inbox)
    assert totals["files_quarantined"] == 1 and "M4" not in movement_states(stores)
    assert [len(fbs_payments(stores, lid)) for lid in (a, b, c)] == [1, 1, 1]
    assert claim(stores, a)["paid_amount"] in (5, Decimal("5.00"))
    with stores.ledger.connect() as conn:
        reason = conn.execute(text("SELECT reason FROM payment_file WHERE name = 'DA_3.xml'")).scalar()
    assert reason.startswith(payments.CONFLICT) and "M1" in reason
    clean(stores)


# --- bad files ------------------------------------------------------------------------------------

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<da:ForetagIndbetalingAnmodning xmlns:da="urn:fbs-debitor:modelled:sf1590:DaekningAfskrivningRegistreringAfsend:1">&x;
</da:ForetagIndbetalingAnmodning>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<lolz>&lol9;</lolz>"""


def test_bad_files_are_quarantined_and_a_good_file_in_the_same_run_is_applied(stores, emu_db, inbox):
    ids = sent(stores, emu_db, adults=2)
    a, b = ids["adult"]
    good = to_xml([mv("G1", a, "payment", 3)], UNTIL)
    wrong = to_xml([mv("W1", b, "payment", 4)], UNTIL).replace(b"DAEKNING", b"GAVE")
    inbox.inbox.mkdir(parents=True, exist_ok=True)
    (inbox.inbox / "a_truncated.xml").write_bytes(to_xml([mv("T1", b, "payment", 2)], UNTIL)[:300])
    (inbox.inbox / "b_wrong_schema.xml").write_bytes(wrong)
    (inbox.inbox / "c_other_document.xml").write_bytes(b"<OpretDebitorkontoAnmodning/>")
    (inbox.inbox / "d_xxe.xml").write_bytes(XXE)
    (inbox.inbox / "e_laughs.xml").write_bytes(LAUGHS)
    (inbox.inbox / "f_good.xml").write_bytes(good)
    (inbox.inbox / "h_date_with_zone.xml").write_bytes(            # xs:date allows it; fbs-debitor does not
        to_xml([mv("Z1", b, "payment", 1)], UNTIL).replace(b"2026-11-19<", b"2026-11-19+01:00<"))
    (inbox.inbox / "i_amount_too_large.xml").write_bytes(
        to_xml([mv("Z2", b, "payment", 1)], UNTIL).replace(b">1.00<", b">123456789012<"))
    (inbox.inbox / "j_xxe_utf16.xml").write_bytes(XXE.decode().replace('version="1.0"', 'version="1.0" '
                                                                       'encoding="UTF-16"').encode("utf-16"))
    (inbox.inbox / "g_half_written.xml.part").write_bytes(good[:100])       # still being written: not read
    totals = run(stores, inbox)
    assert totals["files_applied"] == 1 and totals["files_quarantined"] == 8
    assert movement_states(stores) == {"G1": ("applied", None)} and len(fbs_payments(stores)) == 1
    with stores.ledger.connect() as conn:
        reasons = dict(conn.execute(text("SELECT name, reason FROM payment_file WHERE state = 'quarantined'")).all())
    assert {n: r.split(":")[0] for n, r in reasons.items()} == {
        "a_truncated.xml": "P_MALFORMED", "b_wrong_schema.xml": "P_SCHEMA_INVALID",
        "c_other_document.xml": "P_WRONG_DOCUMENT", "d_xxe.xml": "P_UNSAFE_XML", "e_laughs.xml": "P_UNSAFE_XML",
        "h_date_with_zone.xml": "P_SCHEMA_INVALID", "i_amount_too_large.xml": "P_SCHEMA_INVALID",
        "j_xxe_utf16.xml": "P_UNSAFE_XML"}
    quarantined = listing(inbox.quarantine_dir)
    assert quarantined == sorted([*reasons, *(n + ".reason.txt" for n in reasons)])
    assert inbox.waiting() == [] and (inbox.inbox / "g_half_written.xml.part").exists()
    file_tasks = tasks(stores, payments.TASK_KIND_FILE)
    assert {t["agency_id"] for t in file_tasks} == {AGENCY} and len(file_tasks) == 8
    assert all("root:" not in t["message"] for t in file_tasks)          # nothing of /etc/passwd read
    # the same bad file again: recognised, quarantined again, no second task
    (inbox.inbox / "d_xxe_again.xml").write_bytes(XXE)
    run(stores, inbox)
    assert len(tasks(stores, payments.TASK_KIND_FILE)) == 8
    report = clean(stores)
    assert report.files["quarantined"] == 8 and "d_xxe.xml" in report.summary()


# --- crashes -----------------------------------------------------------------------------------------

def test_crash_in_the_middle_of_a_file_leaves_nothing_applied_and_the_rerun_applies_it_once(stores, emu_db, inbox,
                                                                                             monkeypatch):
    ids = sent(stores, emu_db, adults=3)
    a, b, c = ids["adult"]
    deliver(inbox, "DA_1.xml", mv("M1", a, "payment", 5), mv("M2", b, "write_off", amount_of(stores, b)),
            mv("M3", c, "payment", 1))

    def crash(*_a, **_k):
        raise Crash("killed after the movements were inserted, before the claims were updated")

    with monkeypatch.context() as m:
        m.setattr(payments, "_save_claims", crash)
        with pytest.raises(Crash):
            run(stores, inbox)
    assert movement_states(stores) == {} and fbs_payments(stores) == []
    with stores.ledger.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM payment_file")).scalar() == 0
    assert inbox.waiting() == ["DA_1.xml"] and claim(stores, a)["paid_amount"] in (0, Decimal(0))

    # the next run applies it; then dies after FBS was written, before the ledger marked it
    with monkeypatch.context() as m:
        m.setattr(payments, "_mark_written_back", crash)
        with pytest.raises(Crash):
            run(stores, inbox)
    assert len(fbs_payments(stores)) == 3 and inbox.waiting() == []
    run(stores, inbox)                                   # finishes the write-back: nothing doubled
    assert len(fbs_payments(stores)) == 3
    assert (claim(stores, a)["settlement"], claim(stores, b)["settlement"]) == ("partly_paid", "written_off")
    assert fbs_status(stores, b) == "closed" and claim(stores, b)["fbs_closed_by_payment"]
    clean(stores)
    # the write-off reversed: the liability the interrupted run closed is opened again (P2)
    deliver(inbox, "DA_2.xml", mv("R2", b, "reversal", amount_of(stores, b), ref="M2"))
    run(stores, inbox)
    assert (fbs_status(stores, b), claim(stores, b)["settlement"]) == ("open", "unpaid")
    clean(stores)


# --- held for review --------------------------------------------------------------------------------

@pytest.mark.slow
def test_movements_on_unknown_or_cancelled_claims_are_held_with_a_task_and_can_be_dismissed(stores, emu_db, inbox):
    ids = sent(stores, emu_db, adults=2)
    a, b = ids["adult"]
    with stores.fbs.connect() as conn:
        conn.execute(text("UPDATE liability SET status = 'cancelled' WHERE liability_id = :l"), {"l": b})
        conn.commit()
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)                              # the cancellation goes (U1)
    assert claim(stores, b)["debtor_status"] == "cancelled"
    deliver(inbox, "f.xml", mv("U1", f"FBS-{AGENCY}-987654321", "payment", 40), mv("C1", b, "payment", 5),
            mv("X1", "OTHER-SYSTEM-1", "write_off", 2), mv("A1", a, "payment", 1))
    run(stores, inbox)
    states = movement_states(stores)
    assert states == {"U1": ("held", payments.UNKNOWN_CLAIM), "C1": ("held", payments.CANCELLED),
                      "X1": ("held", payments.UNKNOWN_CLAIM), "A1": ("applied", None)}
    held = tasks(stores, payments.TASK_KIND_MOVEMENT)
    assert {t["liability_id"] for t in held} == {None, b} and len(held) == 3
    assert all("bevægelse" in t["message"] and "movement" in t["message"] for t in held)
    assert payments.dismiss(stores.ledger, stores.fbs, "U1", "checked with the debtor system: a test posting")
    assert movement_states(stores)["U1"] == ("dismissed", payments.UNKNOWN_CLAIM)
    assert [t["resolved_at"] is not None for t in tasks(stores, payments.TASK_KIND_MOVEMENT) if "U1" in t["message"]] \
        == [True]
    assert not payments.dismiss(stores.ledger, stores.fbs, "A1", "applied movements cannot be dismissed")
    report = clean(stores)
    assert report.movements["held"] == 2 and report.held == {payments.UNKNOWN_CLAIM: 1, payments.CANCELLED: 1}


def test_U3_repayment_of_what_was_paid(stores, emu_db, inbox):
    ids = sent(stores, emu_db, adults=1)
    comp = ids["company"][0]
    x = amount_of(stores, comp)
    deliver(inbox, "f1.xml", mv("P", comp, "payment", x), mv("TB-too-much", comp, "repayment", x + 1),
            mv("TB", comp, "repayment", x))
    run(stores, inbox)
    states = movement_states(stores)
    assert states["TB-too-much"] == ("held", payments.REPAY_TOO_MUCH) and states["TB"] == ("applied", None)
    assert claim(stores, comp)["settlement"] == "repaid"
    assert sorted(p["kind"] for p in fbs_payments(stores, comp)) == ["payment", "repayment"]
    deliver(inbox, "f2.xml", mv("R", comp, "reversal", x, ref="P"))       # the repaid payment bounces
    run(stores, inbox)
    assert movement_states(stores)["R"] == ("held", payments.REVERSAL_MISMATCH)
    clean(stores)


# --- reconciliation ----------------------------------------------------------------------------------

def test_reconciliation_is_clean_after_everything_and_finds_a_payment_missing_in_FBS(stores, emu_db, inbox, caplog):
    caplog.set_level(logging.DEBUG)
    sent(stores, emu_db, adults=12)
    vendors = {AGENCY: "EG"}
    mix = emulator_payments.Mix(rate=3.0, overpayments=1, reversals=2)
    emulator_payments.deliver(emu_db, inbox.inbox, UNTIL, vendors, seed=5, mix=mix)
    run(stores, inbox)
    for step in (1, 2):        # more deliveries, one of them delivered twice
        files = emulator_payments.deliver(emu_db, inbox.inbox, UNTIL + dt.timedelta(hours=step), vendors, seed=5 + step,
                                          mix=mix)
        if files:
            files[0].with_name("again_" + files[0].name).write_bytes(files[0].read_bytes())
        run(stores, inbox)
    report = clean(stores, emu_db)
    assert report.debtor_movements == len(emulator_payments.movements(emu_db)) > 10
    assert report.held.get(payments.OVERPAYMENT, 0) >= 1 and report.movements["applied"] > 5
    assert full_cpr_numbers(caplog.text) == [] and full_cpr_numbers(str(tasks(stores))) == []

    victim = fbs_payments(stores)[0]
    with stores.fbs.connect() as conn:
        conn.execute(text("DELETE FROM payment WHERE payment_id = :p"), {"p": victim["payment_id"]})
        conn.commit()
    broken = payment_reconciliation.reconcile_payments(stores, emulator_payments.movements(emu_db))
    assert [d.what for d in broken.differences] == ["applied, not in FBS"]
    assert broken.differences[0].liability_id == victim["liability_id"]
    # issue 20: the operator alarm for a difference names the agency whose claim it concerns
    assert payment_reconciliation.differences_per_agency(stores, broken) == {AGENCY: 1}


def test_P2_the_reconciliation_finds_a_debtor_payment_in_FBS_the_ledger_never_applied_and_one_FBS_changed(
        stores, emu_db, inbox):
    """P2, FBS's side: a payment in FBS that says it came from the debtor system (source_ref
    ``SF1590_B_01A <FordringID> <movement>``) but names no applied movement is a difference, and so is
    an applied movement FBS holds with another amount. The pass over FBS's payments is skipped only
    when every such payment was found under the applied movement it names: a payment whose source_ref
    was edited to name another movement, or no longer says it came from the debtor system, does not
    hide one that lacks its movement."""
    ids = sent(stores, emu_db, adults=3)
    a, b, c = ids["adult"]
    deliver(inbox, "f1.xml", mv("M-A", a, "payment", 5), mv("M-B", b, "payment", 6), mv("M-C", c, "payment", 7))
    run(stores, inbox)
    clean(stores)

    def edit(sql: str, **params) -> list[str]:
        with stores.fbs.begin() as conn:
            conn.execute(text(sql), params)
        return sorted(d.what for d in payment_reconciliation.reconcile_payments(stores, page_size=2).differences)

    row = fbs_payments(stores, a)[0]
    foreign = {**row, "payment_id": "FOREIGN-1", "source_ref": f"SF1590_B_01A {fid(a)} M-NEVER"}
    cols = ", ".join(foreign)
    assert edit(f"INSERT INTO payment ({cols}) VALUES ({', '.join(':' + k for k in foreign)})",  # noqa: S608
                **foreign) == ["in FBS, not applied in the ledger"]
    # M-C's own payment no longer says it came from the debtor system (though it still names M-C),
    # and M-A's now names M-B (found under M-A, it is no longer M-A's): the foreign one is still found
    assert edit("UPDATE payment SET source_ref = 'hand-booked M-C' WHERE payment_id = 'M-C'") == [
        "in FBS, not applied in the ledger"]
    assert edit("UPDATE payment SET source_ref = :s WHERE payment_id = 'M-A'",
                s=f"SF1590_B_01A {fid(a)} M-B") == ["in FBS, not applied in the ledger"]
    assert edit("DELETE FROM payment WHERE payment_id = 'FOREIGN-1'") == []
    # every payment in FBS is an applied movement's own, but M-A's names a movement never applied
    assert edit("UPDATE payment SET source_ref = :s WHERE payment_id = 'M-A'",
                s=f"SF1590_B_01A {fid(a)} M-NEVER") == ["in FBS, not applied in the ledger"]
    assert edit("UPDATE payment SET source_ref = :s WHERE payment_id = 'M-A'", s=f"SF1590_B_01A {fid(a)} M-A") == []
    assert edit("UPDATE payment SET amount = 6.5 WHERE payment_id = 'M-B'") == ["applied, different in FBS"]



# --- payments and changes to the claim (U1) ------------------------------------------------------------

@pytest.mark.slow
def test_U1_increase_starts_the_new_claim_unpaid_and_a_write_down_to_what_was_paid_settles_it(stores, emu_db, inbox):
    ids = sent(stores, emu_db, adults=2)
    a, b = ids["adult"]
    deliver(inbox, "f1.xml", mv("A1", a, "payment", 10), mv("B1", b, "payment", 10))
    run(stores, inbox)
    with stores.fbs.connect() as conn:                 # a raised to 75 (cancel + new claim), b lowered to 10
        conn.execute(text("UPDATE liability SET amount = 75 WHERE liability_id = :l"), {"l": a})
        conn.execute(text("UPDATE liability SET amount = 10 WHERE liability_id = :l"), {"l": b})
        conn.commit()
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
    new = claim(stores, a)
    assert new["fordring_id"] == f"{fid(a)}-1" and (new["paid_amount"], new["balance"]) in (
        (0, Decimal("75.00")), (Decimal(0), Decimal("75.00")))
    deliver(inbox, "f2.xml", mv("A2", f"{fid(a)}-1", "payment", 75), mv("A3", a, "payment", 1))
    run(stores, inbox)
    assert movement_states(stores)["A2"] == ("applied", None)
    assert movement_states(stores)["A3"] == ("held", payments.REPLACED)        # on the cancelled first claim
    assert (claim(stores, a)["settlement"], fbs_status(stores, a)) == ("paid", "closed")
    # b: written down to what was paid, so settled without a new movement; FBS shows it (P2)
    assert (claim(stores, b)["settlement"], fbs_status(stores, b)) == ("paid", "closed")
    clean(stores)


def test_U1_P2_the_sandbox_write_down_never_lowers_a_claim_below_what_was_paid_and_everything_reconciles(
        stores, emu_db, inbox):
    """The sandbox's ``simulate-changes`` (the demo and the Celery test run it after payments) writes
    a claim down by half of what is still owed: a claim paid but for 1.00 is not lowered at all, one
    paid 1.00 is lowered but not below it, so no claim ends overpaid and the reconciliation is clean
    (it once halved the amount, which left a partly paid claim overpaid: the CI flake in
    test_celery)."""
    from fbs_debitor.sandbox import change_simulator

    ids = sent(stores, emu_db, adults=12)
    mostly, lightly = ids["adult"][:9], ids["adult"][9:]
    everything = sorted(sendable(ids))
    before = {lid: amount_of(stores, lid) for lid in everything}
    deliver(inbox, "f1.xml", *[mv(f"P{lid}", lid, "payment", before[lid] - 1) for lid in mostly],
            *[mv(f"L{lid}", lid, "payment", 1) for lid in lightly])
    run(stores, inbox)
    done = change_simulator.simulate(stores, per_kind=3)
    lowered = {lid for lid in everything if amount_of(stores, lid) < before[lid]}
    assert done["write_down"] == len(lowered) >= 1 and lowered & set(lightly), (done, lowered)
    assert not lowered & set(mostly)                  # what was paid but for 1.00 has nothing to write down
    for lid in lowered:
        paid = Decimal(str(claim(stores, lid)["paid_amount"]))
        assert paid < amount_of(stores, lid) < before[lid]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
    assert not [lid for lid in everything if claim(stores, lid)["settlement"] == "overpaid"]
    clean(stores)


@pytest.mark.slow
def test_a_payment_on_a_liability_gone_from_FBS_is_held_and_does_not_stop_the_others(stores, emu_db, inbox):
    ids = sent(stores, emu_db, adults=2)
    a, b = ids["adult"]
    with stores.fbs.connect() as conn:
        conn.execute(text("DELETE FROM liability WHERE liability_id = :l"), {"l": a})
        conn.commit()
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)                       # the change detection notes it missing
    deliver(inbox, "f.xml", mv("GONE", a, "payment", 5), mv("OK", b, "payment", 5))
    run(stores, inbox)
    assert movement_states(stores) == {"GONE": ("held", payments.LIABILITY_MISSING), "OK": ("applied", None)}
    assert [p["payment_id"] for p in fbs_payments(stores)] == ["OK"]
    held = [t for t in tasks(stores, payments.TASK_KIND_MOVEMENT) if "GONE" in t["message"]]
    assert len(held) == 1 and held[0]["liability_id"] is None and held[0]["agency_id"] == AGENCY
    clean(stores)


# --- set-based: a file costs the same few statements whatever it holds (issue 19) -------------------

def _statements(engine, work) -> int:
    """How many statements ``work`` sends to ``engine`` (an executemany counts once)."""
    from sqlalchemy import event

    seen: list[str] = []

    def count(_conn, _cursor, statement, *_rest):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        work()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(seen)


def _mixed_file(a: int, b: int, n: int, tag: str) -> list[Movement]:
    """``n`` of each: a payment and a write-off of 0.01 on a, a payment on b reversed in the same
    file, a payment on a claim the ledger does not know."""
    out = []
    for i in range(n):
        out += [mv(f"{tag}-P{i}", a, "payment", "0.01"), mv(f"{tag}-W{i}", a, "write_off", "0.01"),
                mv(f"{tag}-Q{i}", b, "payment", "0.01"), mv(f"{tag}-R{i}", b, "reversal", "0.01", ref=f"{tag}-Q{i}"),
                mv(f"{tag}-U{i}", f"FBS-{AGENCY}-9{i:09d}", "payment", "1.00")]
    return out


def test_P1_P2_a_file_is_applied_and_written_back_with_the_same_statements_whatever_its_size(stores, emu_db, inbox):
    """Each movement is decided by the same rules, but the file's movements are inserted and
    settled, and written back to FBS, with a few statements per file, not per movement: a file of
    5 movements and one of 1,000 cost the same number of statements, in the ledger and in FBS."""
    a, b = sent(stores, emu_db, adults=2)["adult"]
    counted = []
    for tag, n in (("small", 1), ("large", 200)):
        movements = _mixed_file(a, b, n, tag)
        parsed = payments.PaymentFile(f"tx-{tag}", movements)
        run_id = ledger.start_run(stores.ledger, "payments")
        at = ledger.now()
        applied = _statements(stores.ledger, lambda p=parsed, t=tag, r=run_id, at=at: payments.apply_file(
            stores.ledger, f"{t}.xml", t * 8, p, r, at))
        fbs = _statements(stores.fbs, lambda r=run_id, at=at: payments.write_back(stores, r, at))
        ledger.finish_run(stores.ledger, run_id, "success")
        counted.append((applied, fbs))
        states = movement_states(stores)
        assert sum(1 for m in movements if states[m.movement_id] == ("applied", None)) == 4 * n
        assert sum(1 for m in movements if states[m.movement_id] == ("held", payments.UNKNOWN_CLAIM)) == n
    assert counted[0] == counted[1] and min(counted[0]) > 0, counted
    paid = claim(stores, a)
    assert (paid["paid_amount"], paid["written_off_amount"]) in ((Decimal("2.01"), Decimal("2.01")), (2.01, 2.01))
    assert claim(stores, b)["paid_amount"] in (0, Decimal(0))
    assert len(fbs_payments(stores)) == 4 * 201
    clean(stores)


def test_P2_reconciliation_compares_the_sums_per_claim_in_the_database_and_finds_each_difference(stores, emu_db,
                                                                                                  inbox):
    """The reconciliation's sums per claim come from the database page by page; a claim whose
    ledger sums were changed behind its movements' back, and a settled claim opened again in FBS
    by hand, are each found, with what each side says (FBS's status asked for them too)."""
    a, b, c = sent(stores, emu_db, adults=3)["adult"]
    deliver(inbox, "DA_1.xml", mv("M1", a, "payment", 5), mv("M2", b, "payment", amount_of(stores, b)),
            mv("M3", c, "payment", 2), mv("M4", c, "reversal", 2, ref="M3"))
    run(stores, inbox)
    assert clean(stores).claims == 3
    with stores.ledger.begin() as conn:
        conn.execute(text("UPDATE claim SET paid_amount = 6 WHERE liability_id = :l"), {"l": a})
    with stores.fbs.begin() as conn:
        conn.execute(text("UPDATE liability SET status = 'open' WHERE liability_id = :l"), {"l": b})
    for page_size in (1, 2, 5000):
        report = payment_reconciliation.reconcile_payments(stores, page_size=page_size)
        found = sorted((d.liability_id, d.what, d.fbs) for d in report.differences)
        assert found == sorted([(a, "ledger sums differ from the movements", "open"),
                                (a, "balance is not the amount less paid and written off", "open"),
                                (b, "settled, but open in FBS", "open")]), found
        sums = next(d for d in report.differences if d.what.startswith("ledger sums"))
        assert "paid 6.00" in sums.ledger and sums.reported.startswith("paid 5.00 ")


# --- the audit trail (M2) --------------------------------------------------------------------------

def test_M2_history_shows_each_payment_movement_once_as_it_arrived_from_its_own_row(stores, emu_db, inbox):
    """Since ledger 0018 a movement's row is its arrival in the audit trail (``core.trail``): the
    history shows every movement of the liability (applied, or held with its reason), then what
    happened later (its release), each once; the payments run writes no event beside the row. A
    movement from before 0018 (no ``arrival_seq``) keeps its own event and is not shown twice."""
    from fbs_debitor.changes.history import format_history
    from fbs_debitor.core.trail import movement_text

    ids = sent(stores, emu_db, adults=2)
    a, b = ids["adult"]
    deliver(inbox, "f1.xml", mv("P1", a, "payment", 1), mv("R3", b, "reversal", 1, ref="P-later"))
    run(stores, inbox)
    deliver(inbox, "f2.xml", mv("P-later", b, "payment", 1))
    run(stores, inbox)
    assert movement_states(stores)["R3"] == ("applied", payments.REVERSAL_UNKNOWN)    # held, then released
    with stores.ledger.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM event WHERE kind IN ('payment_applied', 'payment_held')")
                            ).scalar() == 0
    lines = format_history(stores, b, width=400).splitlines()

    def at(*parts: str) -> list[int]:
        return [i for i, line in enumerate(lines) if all(p in line for p in parts)]

    held = at("payment_held", "reversal 1.00 booked 2026-11-19 (movement R3", "reverses P-later", "file f1.xml)",
              "held for review, P_REVERSAL_UNKNOWN")
    paid = at("payment_applied", "payment 1.00 booked 2026-11-19 (movement P-later", "file f2.xml)")
    released = at("payment_released", "movement R3")
    assert len(held) == len(paid) == len(released) == 1, "\n".join(lines)
    assert held[0] < paid[0] < released[0]
    assert at("movement P1") == []                      # another liability's movement is not in this one's trail
    assert full_cpr_numbers("\n".join(lines)) == []

    # a movement that arrived before ledger 0018: its arrival is the event it was written with
    with stores.ledger.begin() as conn:
        conn.execute(text("UPDATE movement SET arrival_seq = NULL WHERE movement_id = 'P1'"))
        ledger.add_events(conn, [(a, "payment_applied", None, movement_text(mv("P1", a, "payment", 1), "f1.xml", None))],
                          "old-run", dt.datetime(2026, 11, 20, 2, 0))
    assert len([line for line in format_history(stores, a, width=400).splitlines()
                if "payment_applied" in line and "movement P1" in line]) == 1
    clean(stores)


def test_M2_a_movement_held_again_for_another_reason_shows_its_first_reason_at_arrival_then_the_change(
        stores, emu_db, inbox):
    """M2 (ledger 0019): a held movement looked at again and held for another reason keeps, in the
    history, the reason it arrived with, and the new reason is an event of its own
    (``payment_reheld``, naming both) after what caused it; the row's ``hold_reason`` is the
    current one (what the staff task and the next look are about). A movement from before 0019 (no
    ``arrival_reason``) is shown with its current reason, as before."""
    from fbs_debitor.changes.history import format_history

    (b,) = sent(stores, emu_db, adults=1)["adult"]
    deliver(inbox, "f1.xml", mv("R3", b, "reversal", 1, ref="P-later"))
    run(stores, inbox)
    assert movement_states(stores)["R3"] == ("held", payments.REVERSAL_UNKNOWN)
    deliver(inbox, "f2.xml", mv("P-later", b, "payment", 2))     # it arrives, with another amount
    run(stores, inbox)
    run(stores, inbox)                                           # a run with nothing new changes nothing
    assert movement_states(stores)["R3"] == ("held", payments.REVERSAL_MISMATCH)

    def lines() -> list[str]:
        return format_history(stores, b, width=400).splitlines()

    def at(history: list[str], *parts: str) -> list[int]:
        return [i for i, line in enumerate(history) if all(p in line for p in parts)]

    history = lines()
    arrived = at(history, "payment_held", "movement R3", "held for review, P_REVERSAL_UNKNOWN")
    paid = at(history, "payment_applied", "movement P-later", "file f2.xml)")
    reheld = at(history, "payment_reheld", "movement R3",
                "held again for review, now P_REVERSAL_MISMATCH, was P_REVERSAL_UNKNOWN")
    assert len(arrived) == len(paid) == len(reheld) == 1, "\n".join(history)
    assert arrived[0] < paid[0] < reheld[0]
    assert at(history, "payment_held", "movement R3", "P_REVERSAL_MISMATCH") == []
    assert full_cpr_numbers("\n".join(history)) == []

    # a movement held before ledger 0019: no reason of its arrival kept, its current one is shown
    with stores.ledger.begin() as conn:
        conn.execute(text("UPDATE movement SET arrival_reason = NULL WHERE movement_id = 'R3'"))
    assert len(at(lines(), "payment_held", "movement R3", "held for review, P_REVERSAL_MISMATCH")) == 1
    clean(stores)
