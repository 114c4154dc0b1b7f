"""Why a finding went away (issue 16 item 12): fixed in FBS, resolved by the integration, or no
longer in scope, end to end through two transfer runs (data-quality checks included) against the
debtor-system emulator, on SQLite and PostgreSQL, and as the staff report then shows it.

Agency 715100 and 726300 (KMD OPUS, replacement CPR on, compensations wait for verification, T2).
Run 1 finds: patrons without CPR and birth date (the I1 warning) and patrons whose CPR fails
modulus-11 (the I4 warning). It sends the fees, and for a patron without CPR it gives them a
replacement CPR and writes it to FBS (I1). Between the runs staff add a birth date to one patron
and close one compensation. Run 2 no longer sees any of those findings, and says why each went.
"""

from __future__ import annotations

import datetime as dt
import re

import debtor
import fbs_rows as fr
import pytest
from leaks import full_cpr_numbers
from lxml import html as lxml_html
from sqlalchemy import text

from fbs_debitor.core import ledger
from fbs_debitor.quality import catalog as dq_catalog
from fbs_debitor.quality import report as dq_report
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer.run import run_transfer

A1, A2 = "715100", "726300"
I1 = "I1_person_without_cpr_or_birth_date"
I4 = "I4_cpr_fails_modulus_11"


@pytest.fixture(autouse=True)
def _var(tmp_path, monkeypatch):
    """GX writes its validation results under FBS_DEBITOR_VAR: the test's own folder."""
    monkeypatch.setenv("FBS_DEBITOR_VAR", str(tmp_path / "var"))


def no_cpr(conn, agency_id: str) -> int:
    """A person without CPR number and without birth date (the I1 warning, where replacement CPR is on)."""
    return fr.patron(conn, agency_id=agency_id, cpr=None, birth_date=None)["patron_id"]


def fee(conn, patron_id: int, agency_id: str = A1) -> int:
    return fr.liability(conn, patron_id, agency_id=agency_id)["liability_id"]


def unverified_compensation(conn, patron_id: int, agency_id: str = A1) -> int:
    """Waits for verification (T2): not sent, so its findings stay the run's to decide."""
    return fr.liability(conn, patron_id, agency_id=agency_id, kind="compensation", with_loan=False)["liability_id"]


def transfer(stores, url: str) -> str:
    with debtor.client(url) as client:
        run_id, _ = run_transfer(stores, client, data_quality=True)
    assert ledger.get_run(stores.ledger, run_id).status == "success"
    return run_id


def findings(stores) -> dict[tuple[str, int], tuple[bool, str | None]]:
    """(check, liability) -> (resolved, resolution)."""
    with stores.ledger.connect() as conn:
        rows = conn.execute(text("SELECT check_code, liability_id, resolved_at, resolution FROM finding")).all()
    return {(r.check_code, int(r.liability_id)): (r.resolved_at is not None, r.resolution) for r in rows}


@pytest.mark.slow
def test_item12_each_finding_is_resolved_as_fixed_in_fbs_by_the_integration_or_no_longer_in_scope(
        stores, emu_db, tmp_path):
    """Issue 16 item 12: a patron the run gave a replacement CPR: their I1 findings are resolved by
    the integration (the fee it sent and the compensation still waiting alike), not fixed; a birth
    date staff added in FBS: fixed; a sent or a closed liability: no longer in scope. Per agency:
    726300's patron counts in 726300's report only. The staff report shows the three groups."""
    with stores.fbs.connect() as conn:
        for agency_id, org_unit in ((A1, "5f1d8a52-0c38-4a43-9f5e-2b7a1c0d9e11"),
                                    (A2, "6a2e9b63-1d49-4b54-8a6f-3c8b2d1e0f33")):
            fr.agency(conn, agency_id=agency_id, verify_compensations=True, org_unit_uuid=org_unit)
        given = no_cpr(conn, A1)                               # gets a replacement CPR in run 1
        given_fee, given_waiting = fee(conn, given), unverified_compensation(conn, given)
        staff = no_cpr(conn, A1)                               # staff add the birth date between the runs
        staff_waiting = unverified_compensation(conn, staff)
        mod11 = fr.patron(conn, cpr=fr.MOD11_FAIL_CPR)["patron_id"]
        sent = fee(conn, mod11)                                # sent in run 1: no longer in scope
        closed = unverified_compensation(conn, mod11)          # closed by staff: no longer in scope
        other = no_cpr(conn, A2)                               # 726300: replacement CPR in run 1
        other_fee = fee(conn, other, A2)
        still = no_cpr(conn, A2)                               # 726300: nothing happens, stays open
        still_waiting = unverified_compensation(conn, still, A2)
        conn.commit()

    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        first = transfer(stores, emu.url)
        before = findings(stores)
        assert {k for k, (resolved, _) in before.items() if not resolved} == {
            (I1, given_fee), (I1, given_waiting), (I1, staff_waiting), (I4, sent), (I4, closed),
            (I1, other_fee), (I1, still_waiting)}
        with stores.fbs.begin() as conn:
            assigned = {r.patron_id for r in conn.execute(text(
                "SELECT patron_id FROM patron WHERE replacement_cpr IS NOT NULL"))}
            assert assigned == {given, other}                  # the fees went, with replacement CPRs (I1)
            conn.execute(text("UPDATE patron SET birth_date = :d WHERE patron_id = :p"),
                         {"d": dt.date(1980, 5, 17), "p": staff})
            conn.execute(text("UPDATE liability SET status = 'closed' WHERE liability_id = :l"), {"l": closed})
        transfer(stores, emu.url)
    assert sorted(c["fordring_id"] for c in emulator.claims(emu_db)) == sorted(
        f"FBS-{a}-{lid}" for a, lid in ((A1, given_fee), (A1, sent), (A2, other_fee)))

    after = findings(stores)
    assert after == {
        (I1, given_fee): (True, "integration"), (I1, given_waiting): (True, "integration"),
        (I1, other_fee): (True, "integration"),
        (I1, staff_waiting): (True, "fixed"),
        (I4, sent): (True, "left_batch"), (I4, closed): (True, "left_batch"),
        (I1, still_waiting): (False, None)}
    # The ledger knows what the integration did, and the liability's trail says so (M2), no number.
    with stores.ledger.connect() as conn:
        rows = conn.execute(text("SELECT patron_id, agency_id, liability_id, run_id FROM replacement_cpr_assigned "
                                 "ORDER BY patron_id")).all()
        trail = conn.execute(text("SELECT liability_id, detail FROM event WHERE kind = 'replacement_cpr_assigned' "
                                  "ORDER BY liability_id")).all()
    assert [tuple(r) for r in rows] == [(given, A1, given_fee, first), (other, A2, other_fee, first)]
    assert [r.liability_id for r in trail] == sorted([given_fee, other_fee])
    assert all(f"patron {p}" in r.detail for p, r in zip((given, other), trail, strict=True))
    assert full_cpr_numbers(" ".join(r.detail for r in trail)) == []

    reports = {r.branch_id: r for r in dq_report.build_reports(stores, tmp_path / "reports", dt.date.today())}
    b1, b2 = reports[f"{A1}-01"], reports[f"{A2}-01"]
    assert (b1.resolved_count, b1.integration_count, b1.out_of_scope_count, b1.open_count) == (1, 2, 2, 0)
    assert (b2.resolved_count, b2.integration_count, b2.out_of_scope_count, b2.open_count) == (0, 1, 0, 1)
    assert b1.counts[I1] == {"open": 0, "new": 0, "resolved": 1, "integration": 2, "out_of_scope": 0}
    assert b1.counts[I4] == {"open": 0, "new": 0, "resolved": 0, "integration": 0, "out_of_scope": 2}
    doc = lxml_html.fromstring(b1.html_path.read_text(encoding="utf-8"))
    listed = {ul: sorted(doc.xpath(f'//ul[@id="{ul}"]/li/@data-key'))
              for ul in ("rettet-liste", "integration-liste", "udenfor-liste")}
    assert listed == {"rettet-liste": [f"{I1}:L{staff_waiting}"],
                      "integration-liste": sorted([f"{I1}:L{given_fee}", f"{I1}:L{given_waiting}"]),
                      "udenfor-liste": sorted([f"{I4}:L{sent}", f"{I4}:L{closed}"])}
    assert "1 rettet i FBS, 2 løst af integrationen, 2 ikke længere med i overførslen" in \
        doc.xpath('//p[@class="totals"]')[0].text_content()
    # Issue 20: as staff read it after real runs: Danish dates; and the open I1 finding in B2, whose
    # message (from the data-quality checks) says no more than the check's title, still has a detail
    # line (the liability and its amount, Danish) and its explanation.
    assert all(re.match(r"\d{2}\.\d{2}\.\d{4}: ", li.text_content()) for li in doc.xpath("//section//ul/li"))
    page2 = lxml_html.fromstring(b2.html_path.read_text(encoding="utf-8"))
    (open_row,) = page2.xpath('//table[@id="aabne"]//tr[@data-key]')
    assert re.fullmatch(r"Gælder mellemværende E\d+ på 60,00 kr\.",
                        open_row.xpath('.//div[@class="detalje"]')[0].text_content())
    assert open_row.xpath('.//div[@class="why"]')[0].text_content() == dq_catalog.check(I1).why
    index = lxml_html.fromstring((tmp_path / "reports" / A2 / "index.html").read_text(encoding="utf-8"))
    (row,) = [[td.text_content() for td in tr.xpath("td")] for tr in index.xpath('//table[@id="filialer"]/tbody/tr')]
    assert row[2:9] == ["1", "0", "1", "1", "0", "1", "0"]   # open, blocking, warnings, new, fixed, integration, out


@pytest.mark.slow
def test_item12_a_patron_given_a_replacement_cpr_whose_cpr_staff_then_add_is_fixed_not_the_integrations(
        stores, emu_db):
    """Issue 16 item 12, the other way round: the run gave the patron a replacement CPR, and staff
    then entered the real CPR number in FBS before the next run. Staff did act: the compensation's
    finding is fixed; the fee, sent meanwhile, is no longer in scope."""
    with stores.fbs.connect() as conn:
        fr.agency(conn, verify_compensations=True)
        p = no_cpr(conn, A1)
        sent, waiting = fee(conn, p), unverified_compensation(conn, p)
        conn.commit()
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE patron SET cpr = :c WHERE patron_id = :p"), {"c": fr.ADULT_CPR, "p": p})
        transfer(stores, emu.url)
    assert findings(stores) == {(I1, sent): (True, "left_batch"), (I1, waiting): (True, "fixed")}


def test_item12_ledger_knows_three_resolutions_and_refuses_any_other(stores):
    assert ledger.RESOLUTIONS == ("fixed", "integration", "left_batch")
    with pytest.raises(ValueError, match="resolution 'solved': one of fixed, integration, left_batch"):
        ledger.resolve_findings(stores.ledger, ["x"], "solved", ledger.now())
