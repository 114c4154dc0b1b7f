"""Claims built from the FBS extract through the real SQL, on SQLite and PostgreSQL: guardianship and
age at creation (C5), write-backs (I1, M1), the dry run, golden XML and invalid-message reporting."""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import fbs_rows as fr
import pytest
from claim_rows import AGENCY, TODAY, representative_rows, row
from lxml import etree
from sqlalchemy import text

from fbs_debitor.claims import messages
from fbs_debitor.claims import model as C
from fbs_debitor.claims import stream as claim_stream
from fbs_debitor.claims.builder import build
from fbs_debitor.claims.writeback import persist_replacement_cprs, raise_tasks
from fbs_debitor.core.identity import ReplacementCprRegistry
from fbs_debitor.transfer import dry_run

GOLDEN = Path(__file__).parent / "golden"
CHILD_CPR = "0303154124"


def built_by_liability(stores) -> dict[int, C.Built]:
    return {row.liability_id: b for page in claim_stream.iter_pages(stores.fbs, stores.ledger, today=TODAY)
            for row, b in page.built}


def guardian_rows(fbs, child_id, *periods):
    for guardian_id, start, end in periods:
        fr.insert(fbs, "guardianship", child_patron_id=child_id, guardian_patron_id=guardian_id,
                  valid_from=start, valid_to=end)


def test_C5_guardian_changed_after_creation_old_liability_stays_with_the_old_guardian(stores, fbs):
    kid = fr.patron(fbs, cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3))
    old = fr.patron(fbs, cpr=fr.ADULT_CPR)
    new = fr.patron(fbs, cpr=fr.ADULT2_CPR, birth_date=dt.date(1972, 8, 12))
    guardian_rows(fbs, kid["patron_id"], (old["patron_id"], dt.date(2016, 1, 1), dt.date(2026, 5, 1)),
                  (new["patron_id"], dt.date(2026, 5, 1), None))
    before = fr.liability(fbs, kid["patron_id"], created_at=dt.datetime(2026, 4, 30, 16, 0))
    on_change = fr.liability(fbs, kid["patron_id"], created_at=dt.datetime(2026, 5, 1, 9, 0))
    fbs.commit()
    b = built_by_liability(stores)
    assert b[before["liability_id"]].account.responsible.patron_id == old["patron_id"]
    assert b[on_change["liability_id"]].account.responsible.patron_id == new["patron_id"]


def test_C5_guardian_set_after_creation_does_not_take_over_older_liabilities_and_no_task(stores, fbs):
    kid = fr.patron(fbs, cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3))
    guardian = fr.patron(fbs, cpr=fr.ADULT2_CPR)
    guardian_rows(fbs, kid["patron_id"], (guardian["patron_id"], dt.date(2026, 7, 1), None))
    older = fr.liability(fbs, kid["patron_id"], created_at=dt.datetime(2026, 4, 1, 9, 0))
    newer = fr.liability(fbs, kid["patron_id"], created_at=dt.datetime(2026, 7, 2, 9, 0))
    fbs.commit()
    b = built_by_liability(stores)
    assert b[older["liability_id"]].account.account_type == C.ACCOUNT_MINOR_WITHOUT_GUARDIAN
    assert b[older["liability_id"]].tasks == []        # a guardian exists when it is sent (C5, Q&A)
    assert b[newer["liability_id"]].account.account_type == C.ACCOUNT_MINOR_WITH_GUARDIAN


def test_C5_task_when_no_guardian_at_sending(stores, fbs):
    kid = fr.patron(fbs, cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3))
    guardian = fr.patron(fbs, cpr=fr.ADULT2_CPR)
    guardian_rows(fbs, kid["patron_id"], (guardian["patron_id"], dt.date(2016, 1, 1), dt.date(2026, 2, 1)))
    orphaned = fr.liability(fbs, kid["patron_id"], created_at=dt.datetime(2026, 4, 1, 9, 0))
    fbs.commit()
    b = built_by_liability(stores)[orphaned["liability_id"]]
    assert b.account.account_type == C.ACCOUNT_MINOR_WITHOUT_GUARDIAN
    assert [t.kind for t in b.tasks] == ["C5_minor_without_guardian"]


def test_F6_material_number_comes_from_the_loan_when_the_liability_has_none(stores, fbs):
    p = fr.patron(fbs)
    lia = fr.liability(fbs, p["patron_id"], item_number=None)
    fbs.commit()
    lines = built_by_liability(stores)[lia["liability_id"]].account.claims[0].text_lines
    assert lines[2].startswith(f"Gebyr-nr. {lia['number']} Materiale-nr. 5")


def test_C5_child_turned_adult_keeps_old_fees_with_the_guardian_of_the_time(stores, fbs):
    teen = fr.patron(fbs, cpr=None, birth_date=dt.date(2008, 4, 2))  # no CPR: a replacement CPR (I1)
    guardian = fr.patron(fbs, cpr=fr.ADULT2_CPR)
    guardian_rows(fbs, teen["patron_id"], (guardian["patron_id"], dt.date(2010, 1, 1), dt.date(2026, 4, 2)))
    as_minor = fr.liability(fbs, teen["patron_id"], created_at=dt.datetime(2026, 4, 1, 12, 0))
    as_adult = fr.liability(fbs, teen["patron_id"], created_at=dt.datetime(2026, 6, 1, 12, 0))
    fbs.commit()
    b = built_by_liability(stores)
    minor_claim = b[as_minor["liability_id"]].account
    assert minor_claim.account_type == C.ACCOUNT_MINOR_WITH_GUARDIAN
    assert minor_claim.responsible.patron_id == guardian["patron_id"]
    adult_claim = b[as_adult["liability_id"]].account
    assert adult_claim.account_type == C.ACCOUNT_ADULT and adult_claim.responsible.patron_id == teen["patron_id"]
    # The same replacement CPR for both claims of the same patron (I1: one number per patron).
    assert minor_claim.identification.number == adult_claim.identification.number


def test_I1_new_replacement_cprs_are_unique_across_patrons_in_one_run(stores, fbs):
    twins = [fr.patron(fbs, cpr=None, birth_date=dt.date(1990, 1, 1)) for _ in range(30)]
    for p in twins:
        fr.liability(fbs, p["patron_id"])
    fbs.commit()
    numbers = [b.account.identification.number for b in built_by_liability(stores).values()]
    assert len(numbers) == 30 and len(set(numbers)) == 30
    assert all(n.startswith("610190") for n in numbers)


def test_I1_persisted_replacement_cpr_never_changes(stores, fbs):
    p = fr.patron(fbs, cpr=None, birth_date=dt.date(1981, 7, 7))
    q = fr.patron(fbs, cpr=None, birth_date=dt.date(1981, 7, 7), replacement_cpr="6707811230")
    fbs.commit()
    stored = persist_replacement_cprs(fbs, {p["patron_id"]: "6707810005", q["patron_id"]: "6707819999"})
    fbs.commit()
    assert stored == {p["patron_id"]: "6707810005", q["patron_id"]: "6707811230"}   # existing one kept
    again = persist_replacement_cprs(fbs, {p["patron_id"]: "6707814444"})
    assert again == {p["patron_id"]: "6707810005"}


def test_M1_staff_tasks_are_raised_once(stores, fbs):
    kid = fr.patron(fbs, cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3))
    lia = fr.liability(fbs, kid["patron_id"])
    fbs.commit()
    tasks = built_by_liability(stores)[lia["liability_id"]].tasks
    assert raise_tasks(fbs, tasks) == 1
    assert raise_tasks(fbs, tasks) == 0
    fbs.commit()
    rows = fbs.execute(text("SELECT task_id, kind, message, branch_id FROM task")).all()
    assert [(r.task_id, r.kind, r.branch_id) for r in rows] == [(f"C5-{lia['liability_id']}",
                                                                "C5_minor_without_guardian", "715100-01")]
    assert CHILD_CPR not in rows[0].message


def test_dry_run_writes_valid_batches_and_touches_neither_ledger_nor_fbs(stores, fbs, tmp_path):
    fr.agency(fbs, agency_id="715200", debtor_vendor="EG")
    for i in range(7):
        p = fr.patron(fbs, cpr=None if i % 2 else fr.ADULT_CPR, birth_date=dt.date(1980 + i, 1, 2))
        fr.liability(fbs, p["patron_id"], kind="compensation" if i % 3 else "fee",
                     number=f"{'E' if i % 3 else 'G'}{900 + i}")
        q = fr.patron(fbs, agency_id="715200")
        fr.liability(fbs, q["patron_id"], agency_id="715200")
    blocked = fr.patron(fbs, kind="company", cvr=None)
    fr.liability(fbs, blocked["patron_id"])
    zero = fr.liability(fbs, fr.patron(fbs)["patron_id"], amount=Decimal("0.00"))   # cannot be a claim (F2)
    fbs.commit()
    summary = dry_run.run(stores, tmp_path / "out", batch_size=3, today=TODAY)
    files = sorted((tmp_path / "out").rglob("batch-*.xml"))
    assert summary["totals"]["claims"] == 14 and summary["totals"]["blocked:T5"] == 1
    assert summary["agencies"]["715100"]["batches"] == 3 and summary["agencies"]["715200"]["batches"] == 3
    assert len(files) == summary["files"] == 6
    xsd = messages.schema("DebitorRegistreringAfsend.xsd")
    fordring_ids = []
    for f in files:
        doc = etree.parse(str(f))
        assert xsd.validate(doc), xsd.error_log
        fordring_ids += [e.text for e in doc.iter("{*}FordringID")]
    assert len(fordring_ids) == len(set(fordring_ids)) == 14
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["totals"]["claims"] == 14
    problems = list(csv.DictReader((tmp_path / "out" / "problems.csv").open(encoding="utf-8")))
    assert [(int(p["liability_id"]), p["rule"]) for p in problems] == [(zero["liability_id"], "F2")]
    assert summary["totals"]["not_built:F2"] == 1
    with stores.ledger.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM run")).scalar() == 0
        assert conn.execute(text("SELECT COUNT(*) FROM claim")).scalar() == 0
    assert fbs.execute(text("SELECT COUNT(*) FROM patron WHERE replacement_cpr IS NOT NULL")).scalar() == 0
    assert fbs.execute(text("SELECT COUNT(*) FROM task")).scalar() == 0


def golden_batch():
    """A few representative claims: adult CPR fee, minor with guardian on a replacement CPR,
    minor without guardian, company with P-number and EAN, compensation with acknowledgement."""
    registry = ReplacementCprRegistry()
    accounts = [build(r, registry, TODAY).account for r in representative_rows().values()]
    at = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)
    return list(messages.build_batches(accounts, AGENCY, batch_size=500, at=at))


def test_golden_xml_for_representative_claims():
    batches = golden_batch()
    assert len(batches) == 1
    produced = batches[0].to_bytes(pretty=True).decode()
    golden = (GOLDEN / "opret_debitorkonto.xml").read_text(encoding="utf-8")
    assert produced == golden
    assert messages.schema("DebitorRegistreringAfsend.xsd").validate(etree.fromstring(golden.encode()))


def test_invalid_identifier_element_names_the_liability_and_the_rest_still_goes():
    """An invalid element in the shared namespace (the identifiers live there): the claim is named,
    the value is not, and with a rejected list the other claims are still batched."""
    good = build(row(liability_id=7, number="G7"), None, TODAY).account
    odd = build(row(liability_id=9, number="G9", d_patron_id=19, d_cpr=None), None, TODAY).account
    broken = C.Account(odd.account_type, C.Party(C.REPLACEMENT_CPR, "0000000000", 19, name="X"),
                       C.Party(C.REPLACEMENT_CPR, "0000000000", 19, name="X"), None, None, odd.claims)
    with pytest.raises(messages.InvalidMessage) as info:
        list(messages.build_batches([good, broken], AGENCY, batch_size=10))
    assert info.value.liability_ids == [9] and info.value.element.endswith("ErstatningCPRNummer")
    assert "0000000000" not in str(info.value)
    rejected: list = []
    batches = list(messages.build_batches([good, broken], AGENCY, batch_size=10, rejected=rejected))
    assert [b.liability_ids for b in batches] == [[7]]
    assert [e.liability_ids for e in rejected] == [[9]]


def test_invalid_message_names_the_liability_and_element_never_the_value():
    good = build(row(liability_id=7, number="G7"), None, TODAY).account
    bad_claim = C.Claim(**{**good.claims[0].__dict__, "liability_id": 8, "fordring_id": "FBS-715100-8",
                           "text_lines": ("x" * 250,)})
    bad = C.Account(good.account_type, C.Party(C.CPR, fr.ADULT2_CPR, 12), C.Party(C.CPR, fr.ADULT2_CPR, 12),
                    None, None, (bad_claim,))
    agency = {"agency_id": "715100", "sender_system_uuid": "0b7f7a8e-3c1b-4f0e-8a4a-6d2f0e9c1a22",
              "org_unit_uuid": "5f1d8a52-0c38-4a43-9f5e-2b7a1c0d9e11"}
    with pytest.raises(messages.InvalidMessage) as info:
        list(messages.build_batches([good, bad], agency, batch_size=10))
    assert info.value.liability_ids == [8]
    assert info.value.element.endswith("Linje")
    assert "x" * 250 not in str(info.value) and fr.ADULT2_CPR not in str(info.value)


def test_issue19_the_stream_builds_from_plain_rows_with_every_value_of_claim_rows(stores, fbs):
    """A page's rows are plain named tuples holding exactly claim_rows.sql's columns and values."""
    lia = fr.liability(fbs, fr.patron(fbs)["patron_id"])
    fbs.commit()
    (sql_row,) = claim_stream.claim_rows(stores.fbs, [lia["liability_id"]], TODAY)
    (page,) = list(claim_stream.iter_pages(stores.fbs, stores.ledger, today=TODAY))
    ((plain, built),) = page.built
    assert plain._fields == tuple(sql_row._fields) and tuple(plain) == tuple(sql_row)
    assert built.account.claims[0].liability_id == lia["liability_id"]


def test_issue19_the_collector_is_paused_only_while_a_page_is_built_never_in_the_callers_code(stores, fbs):
    """The cyclic garbage collector is paused while a page is read and built, and runs again
    whenever the caller has the page (and after the last one); a caller that paused it keeps it so."""
    import gc

    for _ in range(3):
        fr.liability(fbs, fr.patron(fbs)["patron_id"])
    fbs.commit()
    seen = [gc.isenabled() for _page in claim_stream.iter_pages(stores.fbs, stores.ledger, page_size=100,
                                                                 today=TODAY)]
    assert seen and all(seen) and gc.isenabled()
    gc.disable()
    try:
        assert [gc.isenabled() for _ in claim_stream.iter_pages(stores.fbs, stores.ledger, today=TODAY)] == [False]
        assert not gc.isenabled()
    finally:
        gc.enable()
