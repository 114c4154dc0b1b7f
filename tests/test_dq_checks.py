"""Data-quality checks (Great Expectations, in-process) on hand-built rows: each check positive and
negative, on SQLite and PostgreSQL. Findings land in the ledger with the catalog's severity."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import fbs_rows as fr
import pytest
from leaks import full_cpr_numbers
from sqlalchemy import text

from fbs_debitor.core import ledger
from fbs_debitor.eligibility.rules import ELIGIBLE
from fbs_debitor.quality import catalog as dq_catalog
from fbs_debitor.quality import checks as dq_checks
from fbs_debitor.transfer.run import run_assessment

TODAY = dt.date(2026, 11, 20)
CHILD_CPR = "0303154124"


def check(stores, tmp_path=None):
    run_id = ledger.start_run(stores.ledger, "manual")
    result = dq_checks.run_checks(stores, run_id, today=TODAY,
                                  data_docs_dir=(tmp_path / "docs") if tmp_path else None)
    found = {(f.check_code, f.liability_id): f for f in ledger.open_findings(stores.ledger)}
    return result, found


def codes_for(found, liability_id) -> set[str]:
    return {code for code, lid in found if lid == liability_id}


@pytest.fixture
def agencies(fbs):
    """715100: KMD OPUS, replacement CPR on (from the fbs fixture); 726300: Prisme, replacement off."""
    fr.agency(fbs, agency_id="726300", debtor_vendor="PRISME", replacement_cpr_enabled=False)
    return fbs


def add(fbs, agency_id="715100", liability=None, **patron):
    p = fr.patron(fbs, agency_id=agency_id, **patron)
    return fr.liability(fbs, p["patron_id"], agency_id=agency_id, **(liability or {}))["liability_id"]


def test_T4_group_without_responsible_patron(stores, agencies):
    adult = fr.patron(agencies)
    bad = add(agencies, kind="group", responsible_patron_id=None)
    good = add(agencies, kind="group", responsible_patron_id=adult["patron_id"])
    agencies.commit()
    _, found = check(stores)
    assert "T4_group_without_responsible_patron" in codes_for(found, bad)
    assert codes_for(found, good) == set()
    assert found[("T4_group_without_responsible_patron", bad)].severity == dq_catalog.BLOCKS_LIABILITY


def test_T5_company_cvr_missing_or_invalid_blocks_missing_ean_and_p_is_a_warning(stores, agencies):
    no_cvr = add(agencies, kind="company", cvr=None, ean="5790000123452")
    bad_cvr = add(agencies, kind="company", cvr=fr.INVALID_CVR, p_number="1003388394")
    bare = add(agencies, kind="company", cvr=fr.VALID_CVR)
    full = add(agencies, kind="company", cvr=fr.VALID_CVR, ean="5790000123452")
    agencies.commit()
    _, found = check(stores)
    assert codes_for(found, no_cvr) == {"T5_company_without_valid_cvr"}
    assert codes_for(found, bad_cvr) == {"T5_company_without_valid_cvr"}
    assert codes_for(found, bare) == {"T5_company_without_ean_or_p_number"}
    assert found[("T5_company_without_ean_or_p_number", bare)].severity == dq_catalog.WARNING
    assert codes_for(found, full) == set()


def test_T6_and_I1_person_without_cpr(stores, agencies):
    off = add(agencies, agency_id="726300", cpr=None)                              # replacement off: blocks
    on_no_birth = add(agencies, cpr=None, birth_date=None)                         # replacement on, no birth date
    on_birth = add(agencies, cpr=None, birth_date=dt.date(1990, 5, 5))             # fine
    agencies.commit()
    _, found = check(stores)
    assert codes_for(found, off) == {"T6_person_without_usable_cpr"}   # no I1/I3 noise where T6 blocks
    assert codes_for(found, on_no_birth) == {"I1_person_without_cpr_or_birth_date"}
    assert found[("I1_person_without_cpr_or_birth_date", on_no_birth)].severity == dq_catalog.WARNING
    assert codes_for(found, on_birth) == set()


def test_I4_malformed_cpr_blocks_modulus_11_failure_is_only_a_warning(stores, agencies):
    malformed = add(agencies, cpr="3102901234")
    mod11 = add(agencies, cpr=fr.MOD11_FAIL_CPR)
    good = add(agencies)
    agencies.commit()
    _, found = check(stores)
    assert codes_for(found, malformed) == {"T6_person_without_usable_cpr"}
    assert codes_for(found, mod11) == {"I4_cpr_fails_modulus_11"}
    assert found[("I4_cpr_fails_modulus_11", mod11)].severity == dq_catalog.WARNING
    assert "070781-****" in found[("I4_cpr_fails_modulus_11", mod11)].message
    assert codes_for(found, good) == set()


def test_I3_replacement_cpr_at_a_prisme_agency_debtor_or_guardian(stores, agencies):
    fr.agency(agencies, agency_id="726400", debtor_vendor="PRISME", replacement_cpr_enabled=True)
    debtor = add(agencies, agency_id="726400", cpr=None, birth_date=dt.date(1981, 7, 7))
    kid = fr.patron(agencies, agency_id="726400", cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3))
    guardian = fr.patron(agencies, agency_id="726400", cpr=None, birth_date=dt.date(1980, 1, 1))
    fr.insert(agencies, "guardianship", child_patron_id=kid["patron_id"], guardian_patron_id=guardian["patron_id"],
              valid_from=dt.date(2016, 1, 1), valid_to=None)
    via_guardian = fr.liability(agencies, kid["patron_id"], agency_id="726400")["liability_id"]
    kmd = add(agencies, cpr=None, birth_date=dt.date(1981, 8, 8))                   # KMD OPUS accepts them
    switched_off = add(agencies, agency_id="726300", cpr=None, replacement_cpr="6707811230")  # T6 instead
    agencies.commit()
    _, found = check(stores)
    assert codes_for(found, debtor) == {"I3_replacement_cpr_at_prisme"}
    assert codes_for(found, via_guardian) == {"I3_replacement_cpr_at_prisme"}
    assert codes_for(found, kmd) == set()
    assert codes_for(found, switched_off) == {"T6_person_without_usable_cpr"}


def test_C5_child_known_only_by_a_replacement_cpr_is_a_minor(stores, agencies):
    lid = add(agencies, cpr=None, birth_date=None, replacement_cpr="6303154128")   # born 3 Mar 2015
    agencies.commit()
    _, found = check(stores)
    assert codes_for(found, lid) == {"C5_minor_without_guardian"}


def test_C4_C5_minor_at_creation_without_guardian(stores, agencies):
    alone = add(agencies, cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3))
    guarded_child = fr.patron(agencies, cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3))
    guardian = fr.patron(agencies, cpr=fr.ADULT2_CPR)
    fr.insert(agencies, "guardianship", child_patron_id=guarded_child["patron_id"],
              guardian_patron_id=guardian["patron_id"], valid_from=dt.date(2016, 1, 1), valid_to=None)
    guarded = fr.liability(agencies, guarded_child["patron_id"])["liability_id"]
    # 17 when the fee was created (C5: age at creation), adult today, no guardian: still a finding.
    was_minor = add(agencies, cpr=None, birth_date=dt.date(2008, 12, 1))
    adult = add(agencies)
    agencies.commit()
    _, found = check(stores)
    assert codes_for(found, alone) == {"C5_minor_without_guardian"}
    assert codes_for(found, was_minor) == {"C5_minor_without_guardian"}
    assert codes_for(found, guarded) == set() and codes_for(found, adult) == set()


def test_C3_age_limit_0_blocks_the_agency_and_skips_age_checks_there(stores, agencies):
    fr.agency(agencies, agency_id="799900", age_limit=0)
    child_there = add(agencies, agency_id="799900", cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3))
    agencies.commit()
    result, found = check(stores)
    assert list(result.blocked_agencies) == ["799900"] and "0" in result.blocked_agencies["799900"]
    agency_finding = found[("C3_agency_age_limit_out_of_range", None)]
    assert agency_finding.severity == dq_catalog.BLOCKS_AGENCY and agency_finding.agency_id == "799900"
    assert codes_for(found, child_there) == set()       # no C5 noise where every age is wrong anyway


def test_F2_amounts_and_F3_dates_out_of_order(stores, agencies):
    zero = add(agencies, liability={"amount": Decimal("0.00")})
    negative = add(agencies, liability={"amount": Decimal("-5.00")})
    reloaned_late = add(agencies, liability={"kind": "compensation", "number": "E1"})
    before_loan = add(agencies, liability={"created_at": dt.datetime(2026, 2, 1, 10, 0)})   # loan is 2026-03-01
    fine = add(agencies)
    agencies.commit()
    agencies.execute(text("UPDATE loan SET reloan_date = :r WHERE loan_id = "
                          "(SELECT loan_id FROM liability WHERE liability_id = :l)"),
                     {"r": dt.date(2026, 4, 15), "l": reloaned_late})
    agencies.commit()
    _, found = check(stores)
    assert codes_for(found, zero) == {"F2_amount_not_positive"} == codes_for(found, negative)
    assert codes_for(found, reloaned_late) == {"F3_dates_out_of_order"}     # founded after it fell due
    assert codes_for(found, before_loan) == {"F3_dates_out_of_order"}
    assert codes_for(found, fine) == set()


def test_already_sent_liabilities_are_not_checked_again(stores, agencies):
    lid = add(agencies, kind="company", cvr=None)
    agencies.commit()
    with stores.ledger.begin() as conn:
        t = dt.datetime(2026, 4, 1)
        conn.execute(text("INSERT INTO claim (liability_id, agency_id, fordring_id, state, current_version, "
                          "created_at, updated_at) VALUES (:l, '715100', :f, 'accepted', 1, :t, :t)"),
                     {"l": lid, "f": f"FBS-715100-{lid}", "t": t})
    _, found = check(stores)
    assert codes_for(found, lid) == set()


def test_fixed_patron_finding_is_resolved_and_its_liability_becomes_eligible(stores, agencies):
    company = fr.patron(agencies, kind="company", cvr=None, ean="5790000123452")
    lid = fr.liability(agencies, company["patron_id"])["liability_id"]
    agencies.commit()
    _, counts = run_assessment(stores)
    assert counts.get(("715100", ELIGIBLE, "-"), 0) == 0
    assert [f.check_code for f in ledger.open_findings(stores.ledger) if f.liability_id == lid] == \
        ["T5_company_without_valid_cvr"]
    agencies.execute(text("UPDATE patron SET cvr = :c WHERE patron_id = :p"),
                     {"c": fr.VALID_CVR, "p": company["patron_id"]})
    agencies.commit()
    _, counts = run_assessment(stores)
    assert counts[("715100", ELIGIBLE, "-")] == 1
    assert [f for f in ledger.open_findings(stores.ledger) if f.liability_id == lid] == []
    with stores.ledger.connect() as conn:
        assert conn.execute(text("SELECT resolved_at FROM finding WHERE liability_id = :l"),
                            {"l": lid}).scalar() is not None


def test_findings_and_data_docs_hold_no_full_cpr(stores, agencies, tmp_path):
    add(agencies, cpr=fr.MOD11_FAIL_CPR)
    add(agencies, cpr="3102901234")
    add(agencies, cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3))
    agencies.commit()
    result, found = check(stores, tmp_path)
    assert full_cpr_numbers(" ".join(f.message for f in found.values())) == []
    docs = tmp_path / "docs"
    assert result.data_docs == str(docs / "index.html") and (docs / "index.html").exists()
    pages = [p.read_text(errors="ignore") for p in docs.rglob("*.html")]
    assert len(pages) >= 2 and all(full_cpr_numbers(page) == [] for page in pages)


def resolution_of(stores, liability_id):
    with stores.ledger.connect() as conn:
        return conn.execute(text("SELECT resolved_at IS NOT NULL, resolution FROM finding WHERE liability_id = :l"),
                            {"l": liability_id}).all()


def test_lifecycle_a_data_fix_is_fixed_a_closed_liability_left_the_batch(stores, agencies, tmp_path):
    from fbs_debitor.quality import report as dq_report

    fixed_company = fr.patron(agencies, kind="company", cvr=fr.INVALID_CVR, ean="5790000123452")
    fixed = fr.liability(agencies, fixed_company["patron_id"])["liability_id"]
    closed = add(agencies, cpr=fr.MOD11_FAIL_CPR)                      # an I4 warning
    agencies.commit()
    run_assessment(stores)
    agencies.execute(text("UPDATE patron SET cvr = :c WHERE patron_id = :p"),
                     {"c": fr.VALID_CVR, "p": fixed_company["patron_id"]})
    agencies.execute(text("UPDATE liability SET status = 'closed' WHERE liability_id = :l"), {"l": closed})
    agencies.commit()
    run_assessment(stores)
    assert [tuple(r) for r in resolution_of(stores, fixed)] == [(True, "fixed")]
    assert [tuple(r) for r in resolution_of(stores, closed)] == [(True, "left_batch")]
    reports = dq_report.build_reports(stores, tmp_path, dt.date.today())
    counts = next(r for r in reports if r.branch_id == "715100-01").counts
    assert counts["T5_company_without_valid_cvr"]["resolved"] == 1   # shown as fixed
    assert counts.get("I4_cpr_fails_modulus_11", {}).get("resolved", 0) == 0   # not: nobody fixed it


def test_lifecycle_a_c3_hold_does_not_resolve_the_agencys_findings_C3(stores, agencies):
    fee = fr.liability(agencies, fr.patron(agencies)["patron_id"], with_loan=False)["liability_id"]   # F3
    agencies.commit()
    run_assessment(stores)
    with stores.ledger.connect() as conn:
        first = conn.execute(text("SELECT first_seen_at FROM finding WHERE liability_id = :l"), {"l": fee}).scalar()
    for age_limit in (0, 18):                                       # hold the agency, then release it
        agencies.execute(text("UPDATE agency SET age_limit = :a WHERE agency_id = '715100'"), {"a": age_limit})
        agencies.commit()
        run_assessment(stores)
        assert [tuple(r) for r in resolution_of(stores, fee)] == [(False, None)]
    with stores.ledger.connect() as conn:
        assert conn.execute(text("SELECT first_seen_at FROM finding WHERE liability_id = :l"), {"l": fee}).scalar() == first
        c3 = conn.execute(text("SELECT resolution FROM finding WHERE check_code = 'C3_agency_age_limit_out_of_range'"))
        assert [r[0] for r in c3] == ["fixed"]                        # the setting was corrected


def test_every_code_a_finding_can_carry_is_in_the_catalog_so_it_can_be_resolved():
    """Eligibility, claim building and the checks record findings; end-of-run resolution and the
    staff report go by the catalog, so every code must be there (with a reason for staff)."""
    import re
    from pathlib import Path

    from fbs_debitor.eligibility import rules as eligibility

    builder_rules = set(re.findall(r'_Stop\("([A-Z0-9]+)"',
                                   (Path(dq_checks.__file__).parents[1] / "claims" / "builder.py").read_text()))
    assert builder_rules <= set(eligibility.CHECK_CODES)
    codes = set(eligibility.CHECK_CODES.values()) | set(dq_checks.LIABILITY_CHECKS) | {dq_checks.AGENCY_CHECK}
    assert codes <= set(dq_catalog.CHECKS)
    assert all(dq_catalog.CHECKS[c].why for c in codes)
