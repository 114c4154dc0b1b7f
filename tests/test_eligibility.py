"""Eligibility per rule T1–T6 on hand-built FBS rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal

import fbs_rows as fr
import pytest
from sqlalchemy import text
from transfers import transfer

from fbs_debitor.core import ledger
from fbs_debitor.eligibility import rules as eligibility
from fbs_debitor.eligibility.rules import ALREADY_SENT, AWAITING, BLOCKED, ELIGIBLE, OUT_OF_SCOPE
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer.run import run_assessment


def verdicts(stores, page_size=None) -> dict[int, tuple[str, str]]:
    return {v.liability_id: (v.category, v.rule)
            for page in eligibility.iter_verdicts(stores.fbs, stores.ledger, page_size) for v in page}


def out_of_scope(stores) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_a, _c, rule), n in eligibility.out_of_scope_counts(stores.fbs).items():
        out[rule] = out.get(rule, 0) + n
    return out


def commit(fbs):
    fbs.commit()


def test_T1_created_on_or_after_cut_off_is_transferred_before_is_not(stores, fbs):
    p = fr.patron(fbs)
    before = fr.liability(fbs, p["patron_id"], created_at=dt.datetime(2025, 12, 31, 23, 59))
    on_day = fr.liability(fbs, p["patron_id"], created_at=dt.datetime(2026, 1, 1, 0, 0))
    after = fr.liability(fbs, p["patron_id"], created_at=dt.datetime(2026, 6, 1, 12, 0))
    commit(fbs)
    v = verdicts(stores)
    assert before["liability_id"] not in v
    assert v[on_day["liability_id"]] == (ELIGIBLE, "-")
    assert v[after["liability_id"]] == (ELIGIBLE, "-")
    assert out_of_scope(stores) == {"T1": 1}


def test_T1_no_minimum_amount(stores, fbs):
    p = fr.patron(fbs)
    tiny = fr.liability(fbs, p["patron_id"], amount=Decimal("0.01"))
    commit(fbs)
    assert verdicts(stores)[tiny["liability_id"]] == (ELIGIBLE, "-")


def test_T2_fee_goes_at_once_compensation_waits_for_verification(stores, fbs):
    fr.agency(fbs, agency_id="715200", verify_compensations=True)
    p = fr.patron(fbs, agency_id="715200")
    fee = fr.liability(fbs, p["patron_id"], agency_id="715200", kind="fee")
    unverified = fr.liability(fbs, p["patron_id"], agency_id="715200", kind="compensation", amount=Decimal("249.00"))
    verified = fr.liability(fbs, p["patron_id"], agency_id="715200", kind="compensation",
                            verified_at=dt.datetime(2026, 4, 3, 10, 0))
    commit(fbs)
    v = verdicts(stores)
    assert v[fee["liability_id"]] == (ELIGIBLE, "-")
    assert v[unverified["liability_id"]] == (AWAITING, "T2")
    assert v[verified["liability_id"]] == (ELIGIBLE, "-")


def test_T2_without_verification_compensation_goes_on_creation(stores, fbs):
    p = fr.patron(fbs)  # agency 715100 does not verify compensations
    comp = fr.liability(fbs, p["patron_id"], kind="compensation", verified_at=None)
    commit(fbs)
    assert verdicts(stores)[comp["liability_id"]] == (ELIGIBLE, "-")


def test_T3_closed_and_sent_to_collection_are_never_transferred(stores, fbs):
    p = fr.patron(fbs)
    closed = fr.liability(fbs, p["patron_id"], status="closed")
    collection = fr.liability(fbs, p["patron_id"], status="sent_to_collection")
    cancelled = fr.liability(fbs, p["patron_id"], status="cancelled")
    commit(fbs)
    v = verdicts(stores)
    assert not {closed["liability_id"], collection["liability_id"], cancelled["liability_id"]} & set(v)
    assert out_of_scope(stores) == {"T3-closed": 1, "T3-collection": 1, "cancelled": 1}


def test_T3_moving_cut_off_back_transfers_older_open_ones_only(stores, fbs):
    p = fr.patron(fbs)
    old_open = fr.liability(fbs, p["patron_id"], created_at=dt.datetime(2024, 5, 2, 10, 0))
    old_closed = fr.liability(fbs, p["patron_id"], created_at=dt.datetime(2024, 5, 2, 10, 0), status="closed")
    old_coll = fr.liability(fbs, p["patron_id"], created_at=dt.datetime(2024, 6, 2, 10, 0),
                            status="sent_to_collection")
    commit(fbs)
    assert old_open["liability_id"] not in verdicts(stores)
    fbs.execute(text("UPDATE agency SET cut_off_date = :d"), {"d": dt.date(2024, 1, 1)})
    commit(fbs)
    v = verdicts(stores)
    assert v[old_open["liability_id"]] == (ELIGIBLE, "-")
    assert old_closed["liability_id"] not in v and old_coll["liability_id"] not in v
    assert out_of_scope(stores) == {"T3-closed": 1, "T3-collection": 1}


def test_T4_group_liabilities_are_never_transferred_with_or_without_a_responsible_patron(stores, fbs):
    """Issue 16, T4 as corrected on 2026-11-30: a patron
    group's liabilities are never transferred, whether the group names a responsible patron or not;
    both are blocked under T4, and the reason tells staff to create it on a named patron."""
    adult = fr.patron(fbs)
    orphan_group = fr.patron(fbs, kind="group", responsible_patron_id=None)
    led_group = fr.patron(fbs, kind="group", responsible_patron_id=adult["patron_id"])
    orphan = fr.liability(fbs, orphan_group["patron_id"], kind="compensation")
    led = fr.liability(fbs, led_group["patron_id"], kind="compensation")
    own = fr.liability(fbs, adult["patron_id"], kind="compensation")
    commit(fbs)
    v = verdicts(stores)
    assert v[orphan["liability_id"]] == (BLOCKED, "T4")
    assert v[led["liability_id"]] == (BLOCKED, "T4")
    assert v[own["liability_id"]] == (ELIGIBLE, "-")      # the named patron's own liability goes
    run_id, counts = run_assessment(stores)
    assert counts[("715100", BLOCKED, "T4")] == 2 and counts[("715100", ELIGIBLE, "-")] == 1
    found = {f.liability_id: f for f in ledger.open_findings(stores.ledger)}
    for lia, group in ((orphan, orphan_group), (led, led_group)):
        f = found[lia["liability_id"]]
        assert (f.check_code, f.rule, f.severity) == ("T4_group_without_responsible_patron", "T4", "blocks_liability")
        assert f.patron_id == group["patron_id"]                  # the group is the record staff look at
        assert "navngiven låner i gruppen" in f.message and "named patron of the group" in f.message


def test_T4_group_liabilities_are_blocked_before_waiting_for_verification_T2(stores, fbs):
    """Issue 16, T4 (corrected): an unverified compensation on a group would never go after
    verification either, so it is blocked under T4 at once instead of waiting under T2."""
    fr.agency(fbs, agency_id="715300", verify_compensations=True)
    adult = fr.patron(fbs, agency_id="715300")
    group = fr.patron(fbs, agency_id="715300", kind="group", responsible_patron_id=adult["patron_id"])
    lia = fr.liability(fbs, group["patron_id"], agency_id="715300", kind="compensation")
    commit(fbs)
    assert verdicts(stores)[lia["liability_id"]] == (BLOCKED, "T4")


def test_T5_company_needs_a_valid_cvr_p_number_and_ean_optional(stores, fbs):
    no_cvr = fr.patron(fbs, kind="company", cvr=None)
    bad_cvr = fr.patron(fbs, kind="company", cvr=fr.INVALID_CVR)
    good = fr.patron(fbs, kind="company", cvr=fr.VALID_CVR, p_number=None, ean=None)
    full = fr.patron(fbs, kind="company", cvr=fr.VALID_CVR, p_number="1003388394", ean="5790000123452")
    lias = {name: fr.liability(fbs, p["patron_id"])["liability_id"]
            for name, p in dict(no_cvr=no_cvr, bad_cvr=bad_cvr, good=good, full=full).items()}
    commit(fbs)
    v = verdicts(stores)
    assert v[lias["no_cvr"]] == (BLOCKED, "T5")
    assert v[lias["bad_cvr"]] == (BLOCKED, "T5")
    assert v[lias["good"]] == (ELIGIBLE, "-")
    assert v[lias["full"]] == (ELIGIBLE, "-")


def test_T5_internal_municipal_borrower_is_transferred_like_anyone_else(stores, fbs):
    # The municipality's own institution, with the municipality's CVR: no exception is made.
    school = fr.patron(fbs, kind="company", cvr="29189404", name="Byens Skole")
    lia = fr.liability(fbs, school["patron_id"])
    commit(fbs)
    assert verdicts(stores)[lia["liability_id"]] == (ELIGIBLE, "-")


def test_T6_person_without_cpr_needs_replacement_cpr_enabled(stores, fbs):
    fr.agency(fbs, agency_id="715400", replacement_cpr_enabled=False, debtor_vendor="PRISME")
    off_no_cpr = fr.patron(fbs, agency_id="715400", cpr=None)
    off_with_repl = fr.patron(fbs, agency_id="715400", cpr=None, replacement_cpr="6707811230")
    on_no_cpr_no_birth = fr.patron(fbs, cpr=None, birth_date=None)   # 715100: replacement CPR enabled (I1)
    lias = {
        "off": fr.liability(fbs, off_no_cpr["patron_id"], agency_id="715400")["liability_id"],
        "off_repl": fr.liability(fbs, off_with_repl["patron_id"], agency_id="715400")["liability_id"],
        "on": fr.liability(fbs, on_no_cpr_no_birth["patron_id"])["liability_id"],
    }
    commit(fbs)
    v = verdicts(stores)
    assert v[lias["off"]] == (BLOCKED, "T6")
    assert v[lias["off_repl"]] == (BLOCKED, "T6")
    assert v[lias["on"]] == (ELIGIBLE, "-")


def test_T6_malformed_cpr_blocks_but_modulus_11_failure_does_not_I4(stores, fbs):
    malformed = fr.patron(fbs, cpr="3102901234")          # 31 February: no such birth date
    short = fr.patron(fbs, cpr="070781123")
    mod11 = fr.patron(fbs, cpr=fr.MOD11_FAIL_CPR)
    lias = {k: fr.liability(fbs, p["patron_id"])["liability_id"]
            for k, p in dict(malformed=malformed, short=short, mod11=mod11).items()}
    commit(fbs)
    v = verdicts(stores)
    assert v[lias["malformed"]] == (BLOCKED, "T6")
    assert v[lias["short"]] == (BLOCKED, "T6")
    assert v[lias["mod11"]] == (ELIGIBLE, "-")


def test_already_in_ledger_is_never_eligible_again(stores, fbs):
    p = fr.patron(fbs)
    sent = fr.liability(fbs, p["patron_id"])
    new = fr.liability(fbs, p["patron_id"])
    commit(fbs)
    with stores.ledger.begin() as conn:
        t = dt.datetime(2026, 4, 1, 10, 0)
        conn.execute(text("INSERT INTO claim (liability_id, agency_id, fordring_id, state, current_version, "
                          "created_at, updated_at) VALUES (:l, '715100', :f, 'accepted', 1, :t, :t)"),
                     {"l": sent["liability_id"], "f": f"FBS-{sent['liability_id']}", "t": t})
    v = verdicts(stores)
    assert v[sent["liability_id"]] == (ALREADY_SENT, "-")
    assert v[new["liability_id"]] == (ELIGIBLE, "-")


def test_paging_gives_the_same_verdicts_as_one_page(stores, fbs):
    fr.agency(fbs, agency_id="715500", replacement_cpr_enabled=False, verify_compensations=True)
    ids = []
    for i in range(7):
        p = fr.patron(fbs, agency_id="715500", cpr=None if i % 3 == 0 else fr.ADULT_CPR)
        ids.append(fr.liability(fbs, p["patron_id"], agency_id="715500", kind="compensation" if i % 2 else "fee",
                                verified_at=dt.datetime(2026, 4, 2) if i % 4 == 1 else None)["liability_id"])
    commit(fbs)
    with stores.ledger.begin() as conn:   # some already sent, spread over the pages
        t = dt.datetime(2026, 4, 1, 10, 0)
        for lid in ids[1::3]:
            conn.execute(text("INSERT INTO claim (liability_id, agency_id, fordring_id, state, current_version, "
                              "created_at, updated_at) VALUES (:l, '715500', :f, 'accepted', 1, :t, :t)"),
                         {"l": lid, "f": f"FBS-715500-{lid}", "t": t})
    paged = verdicts(stores, page_size=2)
    assert paged == verdicts(stores, page_size=1000)
    assert [lid for lid, (cat, _) in paged.items() if cat == ALREADY_SENT] == ids[1::3]


def test_blocked_liabilities_are_recorded_as_findings_and_resolved_when_fixed_M4(stores, fbs):
    group = fr.patron(fbs, kind="group", responsible_patron_id=None)
    company = fr.patron(fbs, kind="company", cvr=None)
    fine = fr.patron(fbs)
    g = fr.liability(fbs, group["patron_id"])
    c = fr.liability(fbs, company["patron_id"])
    fr.liability(fbs, fine["patron_id"])
    fr.liability(fbs, fine["patron_id"], created_at=dt.datetime(2025, 6, 1))  # before cut-off
    commit(fbs)

    run1, counts = run_assessment(stores)
    # Every liability lands in exactly one category (nothing silently dropped).
    assert sum(counts.values()) == 4
    assert counts[("715100", BLOCKED, "T4")] == 1 and counts[("715100", BLOCKED, "T5")] == 1
    assert counts[("715100", ELIGIBLE, "-")] == 1 and counts[("715100", OUT_OF_SCOPE, "T1")] == 1
    assert ledger.run_counts(stores.ledger, run1) == counts
    findings = {f.liability_id: f for f in ledger.open_findings(stores.ledger) if f.severity != "warning"}
    assert set(findings) == {g["liability_id"], c["liability_id"]}
    assert findings[g["liability_id"]].rule == "T4" and findings[g["liability_id"]].patron_id == group["patron_id"]
    assert findings[c["liability_id"]].severity == "blocks_liability"
    assert "CVR" in findings[c["liability_id"]].message

    # Staff fix the company: its finding resolves, the group's stays open with the same first_seen.
    fbs.execute(text("UPDATE patron SET cvr = :c WHERE patron_id = :p"), {"c": fr.VALID_CVR, "p": company["patron_id"]})
    commit(fbs)
    run2, counts2 = run_assessment(stores)
    assert counts2[("715100", ELIGIBLE, "-")] == 2
    still_open = [f for f in ledger.open_findings(stores.ledger) if f.severity != "warning"]
    assert [f.liability_id for f in still_open] == [g["liability_id"]]
    with stores.ledger.connect() as conn:
        resolved = conn.execute(text("SELECT resolved_at, last_run_id FROM finding WHERE liability_id = :l "
                                     "AND check_code = 'T5_company_without_valid_cvr'"),
                                {"l": c["liability_id"]}).one()
        assert resolved.resolved_at is not None and resolved.last_run_id == run1
        assert conn.execute(text("SELECT status FROM run WHERE run_id = :r"), {"r": run2}).scalar() == "success"


def test_finding_messages_never_hold_a_full_cpr(stores, fbs):
    fr.agency(fbs, agency_id="715600", replacement_cpr_enabled=False)
    p = fr.patron(fbs, agency_id="715600", cpr="3102901234")
    q = fr.patron(fbs, agency_id="715600", cpr=None, replacement_cpr="6707811230")
    fr.liability(fbs, p["patron_id"], agency_id="715600")
    fr.liability(fbs, q["patron_id"], agency_id="715600")
    commit(fbs)
    run_assessment(stores)
    messages = " ".join(f.message for f in ledger.open_findings(stores.ledger))
    assert "310290-****" in messages and "670781-****" in messages
    assert "3102901234" not in messages and "6707811230" not in messages


@pytest.mark.parametrize("age_limit", [0, 100])
def test_C3_agency_with_broken_age_limit_is_held_whole_other_agencies_still_go(stores, fbs, age_limit):
    fr.agency(fbs, agency_id="715700", age_limit=age_limit)
    held = fr.patron(fbs, agency_id="715700")
    fine = fr.patron(fbs)
    lias = [fr.liability(fbs, held["patron_id"], agency_id="715700")["liability_id"] for _ in range(3)]
    ok = fr.liability(fbs, fine["patron_id"])["liability_id"]
    commit(fbs)
    v = verdicts(stores)
    assert all(v[lid] == (BLOCKED, "C3") for lid in lias)
    assert v[ok] == (ELIGIBLE, "-")
    run_assessment(stores)
    agency_findings = [f for f in ledger.open_findings(stores.ledger) if f.rule == "C3"]
    assert len(agency_findings) == 1  # one finding for the agency, not one per liability
    assert agency_findings[0].severity == "blocks_agency" and agency_findings[0].agency_id == "715700"
    assert str(age_limit) in agency_findings[0].message


def test_problems_only_the_builder_sees_count_as_blocked_and_become_findings_F2_T6(stores, fbs):
    fr.agency(fbs, agency_id="715800", replacement_cpr_enabled=False)
    zero = fr.liability(fbs, fr.patron(fbs)["patron_id"], amount=Decimal("0.00"))
    kid = fr.patron(fbs, agency_id="715800", cpr="0303154124", birth_date=dt.date(2015, 3, 3))
    guardian = fr.patron(fbs, agency_id="715800", cpr=None)
    fr.insert(fbs, "guardianship", child_patron_id=kid["patron_id"], guardian_patron_id=guardian["patron_id"],
              valid_from=dt.date(2016, 1, 1), valid_to=None)
    kids_fee = fr.liability(fbs, kid["patron_id"], agency_id="715800")
    commit(fbs)
    assert verdicts(stores)[zero["liability_id"]] == (ELIGIBLE, "-")   # eligibility alone cannot see it
    _, counts = run_assessment(stores)
    assert counts[("715100", BLOCKED, "F2")] == 1 and counts[("715800", BLOCKED, "T6")] == 1
    assert counts[("715100", ELIGIBLE, "-")] == 0 and counts[("715800", ELIGIBLE, "-")] == 0
    found = {f.liability_id: f for f in ledger.open_findings(stores.ledger)}
    assert found[zero["liability_id"]].rule == "F2"
    assert found[kids_fee["liability_id"]].rule == "T6"
    assert found[kids_fee["liability_id"]].patron_id == guardian["patron_id"]   # the record to fix


def test_T4_group_claims_sent_under_the_earlier_reading_stay_and_their_changes_still_go_U1(stores, fbs, emu_db,
                                                                                          monkeypatch):
    """Issue 16, T4 (corrected): a group's liability sent under the earlier reading (on its named
    responsible patron) is a valid claim on a named patron. It stays at the debtor system: nothing
    cancels it, it is never blocked or reported under T4 (it is already sent), and a change made
    in FBS afterwards still goes (here a cancellation, U1)."""
    adult = fr.patron(fbs)
    group = fr.patron(fbs, kind="group", responsible_patron_id=adult["patron_id"])
    lia = fr.liability(fbs, group["patron_id"])["liability_id"]
    commit(fbs)
    earlier = eligibility._verdict

    def earlier_reading(row, sent):            # the group's liability went to its responsible patron
        v = earlier(row, sent)
        return replace(v, category=ELIGIBLE, rule="-", reason=None) if v.rule == "T4" else v

    fordring = f"FBS-715100-{lia}"
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        with monkeypatch.context() as m:
            m.setattr(eligibility, "_verdict", earlier_reading)
            transfer(stores, emu.url)
        assert {c["fordring_id"]: c["status"] for c in emulator.claims(emu_db)} == {fordring: "ACTIVE"}
        run_id, counts = transfer(stores, emu.url)             # the corrected reading: nothing new, nothing undone
        assert verdicts(stores)[lia] == (ALREADY_SENT, "-")
        assert counts[("715100", BLOCKED, "T4")] == 0
        assert [f for f in ledger.open_findings(stores.ledger) if f.liability_id == lia] == []
        assert [c["status"] for c in emulator.claims(emu_db)] == ["ACTIVE"]
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE liability SET status = 'cancelled', updated_at = :t WHERE liability_id = :l"),
                         {"t": dt.datetime(2026, 11, 21, 9, 0), "l": lia})
        transfer(stores, emu.url)
    [claim] = emulator.claims(emu_db)
    assert (claim["fordring_id"], claim["status"]) == (fordring, "CANCELLED")
