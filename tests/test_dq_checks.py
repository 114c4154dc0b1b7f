"""Data-quality checks (Great Expectations, in-process) on hand-built rows: each check positive and
negative, on SQLite and PostgreSQL. Findings land in the ledger with the catalog's severity.

The checks are the versioned GX project in include/gx/ (suites, validation definitions,
checkpoints): the tests below also hold it to the catalog, show that it is what runs, that GX
never sees an identifier, and where GX writes (under FBS_DEBITOR_VAR, never under include/)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

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


@pytest.fixture(autouse=True)
def gx_var(monkeypatch, tmp_path) -> Path:
    """GX writes its validation results under FBS_DEBITOR_VAR: the test's own folder."""
    monkeypatch.setenv("FBS_DEBITOR_VAR", str(tmp_path / "var"))
    return tmp_path / "var"


def check(stores, tmp_path=None):
    run_id = ledger.start_run(stores.ledger, "manual")
    result = dq_checks.run_checks(stores, run_id, today=TODAY,
                                  data_docs_dir=(tmp_path / "docs") if tmp_path else None)
    found = {(f.check_code, f.liability_id): f for f in ledger.open_findings(stores.ledger)}
    return result, found


def check_run(stores) -> tuple[dq_checks.DQResult, set[tuple[str, int | None]]]:
    """One run's result and the (check, liability) pairs it saw (earlier runs' findings stay open
    in the ledger until the end of a whole run resolves them)."""
    run_id = ledger.start_run(stores.ledger, "manual")
    result = dq_checks.run_checks(stores, run_id, today=TODAY)
    with stores.ledger.connect() as conn:
        seen = conn.execute(text("SELECT check_code, liability_id FROM finding WHERE last_run_id = :r"), {"r": run_id})
        return result, {tuple(row) for row in seen}


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
    """Issue 16, T4 as corrected on 2026-11-30 (the check keeps its code): every liability on a
    patron group is a blocking T4 finding, named responsible patron or not, recorded on the group;
    the responsible patron's own data is not checked as if it were the debtor's."""
    no_cpr = fr.patron(agencies, agency_id="726300", cpr=None)    # would be T6 if it were the debtor
    bad = add(agencies, kind="group", responsible_patron_id=None)
    led = add(agencies, kind="group", responsible_patron_id=fr.patron(agencies)["patron_id"])
    led_by_no_cpr = add(agencies, agency_id="726300", kind="group", responsible_patron_id=no_cpr["patron_id"])
    own = add(agencies)
    agencies.commit()
    _, found = check(stores)
    for lid in (bad, led, led_by_no_cpr):
        assert codes_for(found, lid) == {"T4_group_without_responsible_patron"}
        assert found[("T4_group_without_responsible_patron", lid)].severity == dq_catalog.BLOCKS_LIABILITY
    groups = {f.liability_id: f.patron_id for f in ledger.open_findings(stores.ledger)}
    with stores.fbs.connect() as conn:
        owners = dict(conn.execute(text("SELECT liability_id, patron_id FROM liability")).all())
    assert all(groups[lid] == owners[lid] for lid in (bad, led, led_by_no_cpr))
    assert codes_for(found, own) == set()


def test_T4_T5_findings_do_not_depend_on_how_the_batch_is_paged(stores, agencies):
    """One liability per page (a group without a responsible patron has no debtor kind at all):
    the pages join into one frame for GX with the same findings as one page."""
    adult = fr.patron(agencies)
    bad = add(agencies, kind="group", responsible_patron_id=None)
    led = add(agencies, kind="group", responsible_patron_id=adult["patron_id"])
    company = add(agencies, kind="company", cvr=None)
    agencies.commit()
    seen = []
    for page_size in (1, 100):
        run_id = ledger.start_run(stores.ledger, "manual")
        result = dq_checks.run_checks(stores, run_id, today=TODAY, page_size=page_size)
        seen.append((result.rows_checked, dict(result.per_check)))
    assert seen[0] == seen[1] == (3, {"T4_group_without_responsible_patron": 2, "T5_company_without_valid_cvr": 1,
                                      "T5_company_without_ean_or_p_number": 1})
    found = {(f.check_code, f.liability_id) for f in ledger.open_findings(stores.ledger)}
    assert found == {("T4_group_without_responsible_patron", bad), ("T4_group_without_responsible_patron", led),
                     ("T5_company_without_valid_cvr", company), ("T5_company_without_ean_or_p_number", company)}


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


def test_findings_and_data_docs_hold_no_full_cpr(stores, agencies, tmp_path, gx_var):
    """Nothing GX writes holds a full CPR: not the Data Docs, not its validation results (the whole
    of <var>/gx), not a file name."""
    add(agencies, cpr=fr.MOD11_FAIL_CPR)
    add(agencies, cpr="3102901234")
    add(agencies, cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3))
    add(agencies, cpr=None, replacement_cpr="6707811230")
    agencies.commit()
    result, found = check(stores, tmp_path)
    assert full_cpr_numbers(" ".join(f.message for f in found.values())) == []
    docs = tmp_path / "docs"
    assert result.data_docs == str(docs / "index.html") and (docs / "index.html").exists()
    pages = [p.read_text(errors="ignore") for p in docs.rglob("*.html")]
    assert len(pages) >= 2 and all(full_cpr_numbers(page) == [] for page in pages)
    written = [p for p in [*docs.rglob("*"), *(gx_var / "gx").rglob("*")] if p.is_file() and "static" not in p.parts]
    assert len([p for p in written if p.suffix == ".json"]) == 2        # the run's two validation results
    assert all(full_cpr_numbers(p.read_text(errors="ignore")) == [] for p in written)
    assert full_cpr_numbers(" ".join(str(p) for p in written)) == []


def frames_gx_sees(monkeypatch) -> list:
    """Every frame handed to GX during the test."""
    seen = []
    validate = dq_checks._validate

    def spy(liabilities, agencies, *args, **kwargs):
        seen.extend([liabilities.copy(), agencies.copy()])
        return validate(liabilities, agencies, *args, **kwargs)

    monkeypatch.setattr(dq_checks, "_validate", spy)
    return seen


def test_T5_T6_I3_I4_gx_sees_verdicts_never_a_cpr_cvr_name_or_address(stores, agencies, monkeypatch):
    """The numbers are checked in Python (core.identity) and GX gets booleans: no column of a
    frame GX sees is an identifier, and no value in it is one."""
    fr.agency(agencies, agency_id="726400", debtor_vendor="PRISME", replacement_cpr_enabled=True)
    company = add(agencies, kind="company", cvr=fr.INVALID_CVR, p_number="1003388394", ean="5790000123452")
    mod11 = add(agencies, cpr=fr.MOD11_FAIL_CPR)
    prisme = add(agencies, agency_id="726400", cpr=None, replacement_cpr="6707811230", birth_date=dt.date(1981, 7, 7))
    agencies.commit()
    frames = frames_gx_sees(monkeypatch)
    _, found = check(stores)
    assert {("T5_company_without_valid_cvr", company), ("I4_cpr_fails_modulus_11", mod11),
            ("I3_replacement_cpr_at_prisme", prisme)} <= set(found)
    liabilities, agency_frame = frames
    assert tuple(liabilities.columns) == dq_checks.LIABILITY_COLUMNS
    assert tuple(agency_frame.columns) == dq_checks.AGENCY_COLUMNS
    assert not any(word in column for column in liabilities.columns
                   for word in ("name", "street", "postal", "city", "address"))
    assert not {"cpr", "cvr", "replacement_cpr", "ean", "p_number", "birth_date"} & set(liabilities.columns)
    everything = liabilities.to_csv() + agency_frame.to_csv()
    assert full_cpr_numbers(everything) == []
    for value in (fr.INVALID_CVR, fr.VALID_CVR, "1003388394", "5790000123452", "Testperson", "Bibliotekvej"):
        assert value not in everything


def suite(name: str, gx_dir: Path | None = None) -> dict:
    return json.loads(((gx_dir or dq_checks.GX_DIR) / "expectations" / f"{name}.json").read_text())


def test_M4_the_versioned_suites_are_the_catalogs_checks_one_to_one():
    """Every check of the catalog that the GX run reports has its expectation(s) in the versioned
    suites, under its code, rule and severity (GX critical = the catalog blocks), on a column the
    frame has; and nothing else is in the suites."""
    gx_severity = {dq_catalog.BLOCKS_LIABILITY: "critical", dq_catalog.BLOCKS_AGENCY: "critical",
                   dq_catalog.WARNING: "warning"}
    for name, codes, columns in ((dq_checks.LIABILITY_SUITE, dq_checks.LIABILITY_CHECKS, dq_checks.LIABILITY_COLUMNS),
                                 (dq_checks.AGENCY_SUITE, (dq_checks.AGENCY_CHECK,), dq_checks.AGENCY_COLUMNS)):
        expectations = suite(name)["expectations"]
        assert {e["meta"]["check"] for e in expectations} == set(codes)
        for e in expectations:
            entry = dq_catalog.check(e["meta"]["check"])
            assert (e["meta"]["rule"], e["severity"]) == (entry.rule, gx_severity[entry.severity]), e["meta"]
            named = [e["kwargs"][k] for k in ("column", "column_A", "column_B") if k in e["kwargs"]]
            named += json.dumps(e["kwargs"].get("row_condition") or {}).split('"name": "')[1:]
            assert named and all(n.split('"')[0] in columns for n in named), e


def test_M4_checkpoints_name_unexpected_rows_by_liability_and_agency_id():
    for name, id_column in ((dq_checks.LIABILITY_SUITE, "liability_id"), (dq_checks.AGENCY_SUITE, "agency_id")):
        checkpoint = json.loads((dq_checks.GX_DIR / "checkpoints" / f"{name}.json").read_text())
        assert checkpoint["result_format"]["result_format"] == "COMPLETE"
        assert checkpoint["result_format"]["unexpected_index_column_names"] == [id_column]
        assert [v["name"] for v in checkpoint["validation_definitions"]] == [name]


def gx_copy(tmp_path) -> Path:
    copy = tmp_path / "gx"
    shutil.copytree(dq_checks.GX_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def edit_expectation(gx_dir: Path, name: str, check_code: str, **kwargs) -> None:
    """Change the given arguments of the check's expectations that have them (C3 has a range and a
    not-null expectation: a new range is the range's)."""
    path = gx_dir / "expectations" / f"{name}.json"
    data = json.loads(path.read_text())
    for e in data["expectations"]:
        if e["meta"]["check"] == check_code and set(kwargs) <= set(e["kwargs"]):
            e["kwargs"].update(kwargs)
    path.write_text(json.dumps(data, indent=2))


def test_C3_F2_the_versioned_suite_is_what_runs(stores, agencies, tmp_path, monkeypatch):
    """A copy of include/gx with C3's range fixed at 0-100 and F2's bound at -10: the agency with
    age limit 100 is no longer held and -5.00 is no longer a finding; the original suite holds and
    finds both. Nothing in the code restates the suite."""
    fr.agency(agencies, agency_id="799900", age_limit=100)
    negative = add(agencies, liability={"amount": Decimal("-5.00")})
    too_negative = add(agencies, liability={"amount": Decimal("-20.00")})
    agencies.commit()
    result, seen = check_run(stores)
    assert list(result.blocked_agencies) == ["799900"]
    assert {("F2_amount_not_positive", negative), ("F2_amount_not_positive", too_negative)} <= seen

    changed = gx_copy(tmp_path)
    edit_expectation(changed, dq_checks.AGENCY_SUITE, "C3_agency_age_limit_out_of_range", min_value=0, max_value=100)
    edit_expectation(changed, dq_checks.LIABILITY_SUITE, "F2_amount_not_positive", min_value=-10)
    monkeypatch.setattr(dq_checks, "GX_DIR", changed)
    result, seen = check_run(stores)
    assert result.blocked_agencies == {}
    assert ("F2_amount_not_positive", too_negative) in seen and ("F2_amount_not_positive", negative) not in seen


def test_C3_the_age_limit_range_setting_reaches_the_suite(stores, agencies, monkeypatch):
    """The suite's C3 bounds are parameters: FBS_DEBITOR_AGE_LIMIT_RANGE decides them per run."""
    fr.agency(agencies, agency_id="799900", age_limit=12)
    agencies.commit()
    result, _ = check_run(stores)
    assert list(result.blocked_agencies) == ["799900"]
    monkeypatch.setenv("FBS_DEBITOR_AGE_LIMIT_RANGE", "12-21")
    result, seen = check_run(stores)
    assert result.blocked_agencies == {} and ("C3_agency_age_limit_out_of_range", None) not in seen


def test_M4_a_check_gx_cannot_evaluate_fails_the_run_instead_of_finding_nothing(stores, agencies, tmp_path,
                                                                                monkeypatch):
    """A suite naming a column the frame lacks: GX catches the error per expectation; the run
    must not take that for "no finding" (T5 blocks liabilities)."""
    lid = add(agencies, kind="company", cvr=None)
    agencies.commit()
    broken = gx_copy(tmp_path)
    edit_expectation(broken, dq_checks.LIABILITY_SUITE, "T5_company_without_valid_cvr", column="cvr_checked")
    monkeypatch.setattr(dq_checks, "GX_DIR", broken)
    with pytest.raises(RuntimeError, match="T5_company_without_valid_cvr"):
        check(stores)
    assert codes_for({(f.check_code, f.liability_id): f for f in ledger.open_findings(stores.ledger)}, lid) == set()


def test_M4_unexpected_rows_are_named_by_liability_and_agency_id(stores, agencies, tmp_path, gx_var):
    """GX's results (and so the Data Docs) name the failing rows by liability id and agency id, not
    by a position in a frame."""
    fr.agency(agencies, agency_id="799900", age_limit=0)
    company = add(agencies, kind="company", cvr=None)
    agencies.commit()
    check(stores, tmp_path)
    results = {p.parent.parent.parent.name: json.loads(p.read_text()) for p in (gx_var / "gx").rglob("*.json")}
    by_check: dict[str, list[dict]] = {}
    for suite_result in results.values():
        for r in suite_result["results"]:
            by_check.setdefault(r["expectation_config"]["meta"]["check"], []).append(r["result"])
    [t5] = by_check["T5_company_without_valid_cvr"]
    assert t5["unexpected_index_column_names"] == ["liability_id"]
    assert [row["liability_id"] for row in t5["partial_unexpected_index_list"]] == [company]
    c3 = by_check["C3_agency_age_limit_out_of_range"]      # the range, and "a number at all"
    assert all(r["unexpected_index_column_names"] == ["agency_id"] for r in c3)
    assert [row["agency_id"] for r in c3 for row in r["partial_unexpected_index_list"]] == ["799900"]
    page = next((tmp_path / "docs" / "validations" / dq_checks.LIABILITY_SUITE).rglob("*.html")).read_text()
    assert "liability_id" in page and f">{company}<" in page


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_M4_a_run_writes_nothing_under_include_gx(stores, agencies, tmp_path, gx_var):
    """include/ is read-only in the image: GX only reads the project; results and Data Docs go
    under var/ and the caller's data_docs_dir."""
    add(agencies, kind="company", cvr=None)
    agencies.commit()
    before = snapshot(dq_checks.GX_DIR)
    check(stores, tmp_path)                       # with Data Docs
    check(stores)                                 # without (a backfill month)
    assert snapshot(dq_checks.GX_DIR) == before
    assert list((gx_var / "gx" / "validations").rglob("*.json")) and (tmp_path / "docs" / "index.html").exists()


def test_M4_a_run_without_data_docs_keeps_no_validation_results(stores, agencies, gx_var):
    """A backfill month has no Data Docs: its results are removed with their run folders."""
    add(agencies, kind="company", cvr=None)
    agencies.commit()
    _, found = check(stores)
    assert found
    assert [p for p in (gx_var / "gx" / "validations").rglob("*") if p.is_file() or p.parent.name != "validations"] \
        == []


def test_M4_data_docs_accumulate_runs_and_keep_the_newest(stores, agencies, tmp_path, gx_var, monkeypatch):
    """Each run adds its pages; past DATA_DOCS_RUNS runs the oldest run's results and pages go
    (with their folders)."""
    monkeypatch.setattr(dq_checks, "DATA_DOCS_RUNS", 2)
    add(agencies, kind="company", cvr=None)
    agencies.commit()
    docs = tmp_path / "docs"
    runs = []
    for _ in range(3):
        run_id = ledger.start_run(stores.ledger, "manual")
        dq_checks.run_checks(stores, run_id, today=TODAY, data_docs_dir=docs)
        runs.append(run_id)
    pages = {p.parent.parent.name for p in (docs / "validations").rglob("*.html")}
    assert pages == set(runs[1:])
    assert {p.parent.parent.name for p in (gx_var / "gx" / "validations").rglob("*.json")} == set(runs[1:])
    index = (docs / "index.html").read_text()
    assert runs[0] not in index and all(run in index for run in runs[1:])
    assert not [p for p in [*(docs / "validations").rglob("*"), *(gx_var / "gx").rglob("*")]
                if p.is_dir() and not any(p.iterdir())]


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


RACER = """
import datetime as dt, sys
from pathlib import Path
from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.core.stores import open_stores
from fbs_debitor.quality import checks
stores = open_stores(DatabaseUrls(fbs=sys.argv[1], ledger=sys.argv[2]))
docs = Path(sys.argv[4]) if sys.argv[4] != "-" else None
print(checks.run_checks(stores, sys.argv[3], today=dt.date(2026, 11, 20), data_docs_dir=docs).findings)
"""


@pytest.mark.slow
def test_M4_runs_at_the_same_time_keep_their_own_results_and_pages(stores, agencies, tmp_path, gx_var):
    """The hourly transfer, a backfill month and a manual run validate at once, in three
    processes: each succeeds with the same findings, the two with Data Docs both reach the index
    and keep their results, the backfill month keeps none."""
    add(agencies, kind="company", cvr=None)
    add(agencies, liability={"amount": Decimal("0.00")})
    agencies.commit()
    docs = tmp_path / "docs"
    runs = {kind: ledger.start_run(stores.ledger, kind) for kind in ("transfer", "backfill", "manual")}
    urls = [engine.url.render_as_string(hide_password=False) for engine in (stores.fbs, stores.ledger)]
    env = {**os.environ, "FBS_DEBITOR_VAR": str(gx_var), "PYTHONPATH": str(Path(dq_checks.__file__).parents[2])}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, *urls, run_id, "-" if kind == "backfill" else str(docs)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for kind, run_id in runs.items()]
    outcomes = [racer.communicate(timeout=300) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0, 0], [err[-2000:] for _, err in outcomes]
    assert len({out.strip() for out, _ in outcomes}) == 1
    published = {runs["transfer"], runs["manual"]}
    assert {p.parent.parent.name for p in (gx_var / "gx" / "validations").rglob("*.json")} == published
    assert {p.parent.parent.name for p in (docs / "validations").rglob("*.html")} == published
    index = (docs / "index.html").read_text()
    assert all(run in index for run in published) and runs["backfill"] not in index


def test_issue19_M4_a_staged_page_gives_the_checks_exactly_the_frame_they_would_derive(stores, agencies):
    """Eligibility is read once per run: the sending step keeps each page's frame for the run's
    checks (``stage_page``) as plain data, without pandas (``_page_data``). What comes back is the
    frame ``_page_frame`` derives, value for value and dtype for dtype: missing dates and ids,
    kinds, booleans, amounts; and no full CPR."""
    from fbs_debitor.claims.stream import claim_rows, plain_rows

    ids = [add(agencies), add(agencies, cpr=fr.MOD11_FAIL_CPR), add(agencies, cpr=None, birth_date=None),
           add(agencies, agency_id="726300", cpr="3102901234"), add(agencies, kind="company", cvr="12345678"),
           add(agencies, kind="group", responsible_patron_id=None),
           add(agencies, cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3)),
           add(agencies, liability={"amount": Decimal("0.00")}),
           add(agencies, liability={"kind": "compensation", "with_loan": False})]
    agencies.commit()
    rows = plain_rows(claim_rows(stores.fbs, ids, TODAY))
    frame, details = dq_checks._page_frame(rows, TODAY)
    payload = dq_checks._payload(dq_checks._page_data(rows, TODAY))
    back, back_details = dq_checks._unframe(payload)
    import pandas as pd

    pd.testing.assert_frame_equal(back, frame)
    assert back_details.astype(object).where(back_details.notna(), None).values.tolist() == \
        details[list(back_details.columns)].astype(object).where(details.notna(), None).values.tolist()
    assert frame["founding_date"].isna().any() and frame["debtor_patron_id"].isna().any()   # gaps kept
    import base64
    import zlib

    assert not full_cpr_numbers(zlib.decompress(base64.b64decode(payload)).decode())
