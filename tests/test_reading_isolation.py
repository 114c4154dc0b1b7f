"""Issue 16, the reading side: one bad record never stops the rest, and nothing is changed silently.

Each bad value of one liability in the FBS extract is a finding for that liability alone, naming
its rule and check code, while every other liability of the page goes on (item 9): an amount that
is text or has a third decimal (F2_amount_not_exact), a creation time or loan date that is not a
date or lies beyond what a claim can carry (F2_date_unreadable), a borrower missing from FBS
(F1_patron_missing, never a silent skip). ``history`` with an id no database holds is one line, not
a traceback. Text that is not UTF-8 (item 7) is read as it is and refused by the checks: a CPR
number that is not one is a T6 finding, and no full CPR number reaches stderr, a log or run.error.

SQLite keeps any type in any column, so text amounts and text dates are SQLite-only cases;
PostgreSQL's typed columns refuse them at insert. A missing patron and a date beyond year 9999 are
covered on both."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from decimal import Decimal

import fbs_rows as fr
import pytest
from leaks import full_cpr_numbers
from municipality import municipality
from sqlalchemy import text
from transfers import tasks, transfer

from fbs_debitor.changes import history
from fbs_debitor.core import ledger
from fbs_debitor.core.settings import HOME
from fbs_debitor.eligibility import rules as eligibility
from fbs_debitor.eligibility.rules import BLOCKED, ELIGIBLE
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer import dry_run
from fbs_debitor.transfer.run import run_assessment

AGENCY = "715100"
TODAY = dt.date(2026, 11, 20)
BAD_BYTE_CPR = "0707811234"      # a CPR-shaped value: a leak of it would be visible


@pytest.fixture(autouse=True)
def var(monkeypatch, tmp_path):
    """GX writes its validation results under FBS_DEBITOR_VAR: the test's own folder."""
    monkeypatch.setenv("FBS_DEBITOR_VAR", str(tmp_path / "var"))
    return tmp_path / "var"


# PostgreSQL's typed columns refuse these values at insert, so these cases exist on SQLite only
# (they are not generated for PostgreSQL rather than skipped there).
SQLITE_ONLY = pytest.mark.parametrize("db_urls", ["sqlite"], indirect=True)


def sqlite_only(stores):
    if stores.fbs.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's typed columns refuse this value at insert")


def assess(stores):
    """A whole recorded run (GX checks, eligibility, building); its status, counts and findings."""
    run_id, counts = run_assessment(stores)
    run = ledger.get_run(stores.ledger, run_id)
    with stores.ledger.connect() as conn:
        rows = conn.execute(text("SELECT liability_id, check_code, rule, patron_id, message FROM finding "
                                 "WHERE last_run_id = :r AND resolved_at IS NULL"), {"r": run_id}).all()
        error = conn.execute(text("SELECT error FROM run WHERE run_id = :r"), {"r": run_id}).scalar()
    found: dict[int, list] = {}
    for r in rows:
        found.setdefault(r.liability_id, []).append(r)
    return run, counts, found, error


def codes(found, liability_id) -> set[tuple[str, str]]:
    return {(f.rule, f.check_code) for f in found.get(liability_id, [])}


def healthy(fbs) -> int:
    return fr.liability(fbs, fr.patron(fbs)["patron_id"])["liability_id"]


def built(stores, tmp_path) -> dict:
    """The dry run's files: the problems by liability and the number of claims written."""
    import csv

    summary = dry_run.run(stores, tmp_path / "dry", today=TODAY)
    with (tmp_path / "dry" / "problems.csv").open(encoding="utf-8") as f:
        problems = {int(r["liability_id"]): r for r in csv.DictReader(f)}
    return {"claims": summary["totals"].get("claims", 0), "problems": problems}


@contextmanager
def foreign_keys_off(stores):
    """A connection to FBS that may insert a liability whose patron does not exist (an extract
    loaded without its constraints): SQLite's pragma, PostgreSQL's replica role (no FK triggers)."""
    with stores.fbs.connect() as conn:
        if stores.fbs.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
        else:
            conn.exec_driver_sql("SET session_replication_role = replica")
        try:
            yield conn
            conn.commit()
        finally:
            if stores.fbs.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA foreign_keys = ON")
            else:
                conn.exec_driver_sql("SET session_replication_role = DEFAULT")
                conn.commit()


# --- item 9: amounts -----------------------------------------------------------------------------------

@SQLITE_ONLY
@pytest.mark.parametrize("amount", ["12,50", "abc", Decimal("12.345"), "1e999"])
def test_item9_text_amount_is_a_finding_for_that_liability_only_F2(stores, fbs, tmp_path, amount):
    """An amount FBS holds as text (or with a third decimal, which was rounded silently) is
    F2_amount_not_exact for that liability; the run completes and the healthy liability goes."""
    sqlite_only(stores)
    good = healthy(fbs)
    bad = fr.liability(fbs, fr.patron(fbs)["patron_id"], amount=amount)["liability_id"]
    fbs.commit()
    run, counts, found, error = assess(stores)
    assert run.status == "success" and error is None
    assert codes(found, bad) == {("F2", "F2_amount_not_exact")}
    assert "kan ikke læses" in found[bad][0].message
    assert counts[(AGENCY, BLOCKED, "F2")] == 1 and counts[(AGENCY, ELIGIBLE, "-")] == 1
    assert good not in found
    files = built(stores, tmp_path)
    assert files["claims"] == 1 and files["problems"][bad]["rule"] == "F2"


# --- item 9: dates -------------------------------------------------------------------------------------

BAD_DATES = [
    pytest.param({"created_at": "not a date"}, id="created_text"),
    pytest.param({"created_at": "99999-01-01"}, id="created_five_digit_year"),
    pytest.param({"created_at": "12.04.2026"}, id="created_danish_format"),
    pytest.param({"created_at": 20260401}, id="created_number"),
    pytest.param({"created_at": "2026-04-01garbage"}, id="created_trailing_text"),
    pytest.param({"created_at": "2026-04-01 09:30:00+02:00"}, id="created_with_utc_offset"),
    pytest.param({"loan": {"loan_date": "garbage"}}, id="loan_date_text"),
    pytest.param({"loan": {"due_date": "2026-02-30"}}, id="due_date_no_such_day"),
    pytest.param({"loan": {"reloan_date": "soon"}}, id="reloan_date_text"),
]


@SQLITE_ONLY
@pytest.mark.parametrize("bad", BAD_DATES)
def test_item9_bad_timestamp_is_a_finding_for_that_liability_only_F2(stores, fbs, tmp_path, bad):
    """A creation time or loan date that is not a date is F2_date_unreadable for that liability;
    it is not taken for older than the cut-off (T1) either. The run completes, the rest goes."""
    sqlite_only(stores)
    good = healthy(fbs)
    p = fr.patron(fbs)
    if "loan" in bad:
        loan = fr.loan(fbs, p["patron_id"], **bad["loan"])
        lia = fr.liability(fbs, p["patron_id"], with_loan=False, loan_id=loan["loan_id"],
                           item_number=loan["item_number"])
    else:
        lia = fr.liability(fbs, p["patron_id"], **bad)
    fbs.commit()
    run, counts, found, error = assess(stores)
    assert run.status == "success" and error is None
    assert codes(found, lia["liability_id"]) == {("F2", "F2_date_unreadable")}
    assert counts[(AGENCY, BLOCKED, "F2")] == 1 and counts[(AGENCY, ELIGIBLE, "-")] == 1
    assert good not in found
    files = built(stores, tmp_path)
    assert files["claims"] == 1 and files["problems"][lia["liability_id"]]["rule"] == "F2"


def test_item9_dates_beyond_what_a_claim_can_carry_are_findings_on_both_databases_F2(stores, fbs, tmp_path):
    """Year 10000 is a valid PostgreSQL timestamp that Python cannot hold (psycopg failed the whole
    page); 9999-12-31 is one Python holds but a fee's due date (a day later plus the payment term)
    cannot. Each is F2_date_unreadable for its own liability; the healthy one goes."""
    good = healthy(fbs)
    far = fr.liability(fbs, fr.patron(fbs)["patron_id"], with_loan=False, kind="compensation")
    p = fr.patron(fbs)
    loan = fr.loan(fbs, p["patron_id"], due_date=dt.date(9999, 12, 31))
    late_fee = fr.liability(fbs, p["patron_id"], with_loan=False, loan_id=loan["loan_id"],
                            item_number=loan["item_number"])
    fbs.execute(text("UPDATE liability SET created_at = :t WHERE liability_id = :l"),
                {"t": "10000-01-01 00:00:00", "l": far["liability_id"]})
    fbs.commit()
    run, counts, found, error = assess(stores)
    assert run.status == "success" and error is None
    assert codes(found, far["liability_id"]) == {("F2", "F2_date_unreadable")}
    assert codes(found, late_fee["liability_id"]) == {("F2", "F2_date_unreadable")}
    assert counts[(AGENCY, BLOCKED, "F2")] == 2 and counts[(AGENCY, ELIGIBLE, "-")] == 1
    assert good not in found
    assert built(stores, tmp_path)["claims"] == 1


# --- item 9: a missing patron --------------------------------------------------------------------------

def test_item9_missing_patron_is_a_finding_not_a_silent_skip_F1(stores, fbs, tmp_path):
    """A liability whose borrower is not in FBS was dropped from the run by an inner join: now it
    is blocked with F1_patron_missing (rule F1, naming the missing patron id), counted, and the
    rest goes; fixing the data resolves the finding."""
    good = healthy(fbs)
    fbs.commit()
    with foreign_keys_off(stores) as conn:
        orphan = fr.liability(conn, 987654321, with_loan=False, kind="compensation")["liability_id"]
    verdicts = {v.liability_id: v for page in eligibility.iter_verdicts(stores.fbs, stores.ledger) for v in page}
    assert (verdicts[orphan].category, verdicts[orphan].rule, verdicts[orphan].check_code) == \
        (BLOCKED, "F1", "F1_patron_missing")
    run, counts, found, error = assess(stores)
    assert run.status == "success" and error is None
    assert codes(found, orphan) == {("F1", "F1_patron_missing")}
    assert found[orphan][0].patron_id == 987654321 and "987654321" in found[orphan][0].message
    assert counts[(AGENCY, BLOCKED, "F1")] == 1 and counts[(AGENCY, ELIGIBLE, "-")] == 1
    assert good not in found
    assert built(stores, tmp_path)["claims"] == 1

    fr.patron(fbs, patron_id=987654321)          # the patron turns up in the extract
    fbs.commit()
    run, counts, found, _ = assess(stores)
    assert orphan not in found and counts[(AGENCY, ELIGIBLE, "-")] == 2


# --- item 9: history -----------------------------------------------------------------------------------

def cli(stores, db_urls, tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_SERVICEPLATFORMEN"}
    env.update(FBS_DEBITOR_FBS_URL=db_urls.fbs, FBS_DEBITOR_LEDGER_URL=db_urls.ledger,
               FBS_DEBITOR_VAR=str(tmp_path / "var"), PYTHONPATH=str(HOME / "plugins"))
    return subprocess.run([sys.executable, "-m", "fbs_debitor", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_item9_history_with_an_id_beyond_int64_or_not_a_number_is_one_line_not_a_traceback(stores, db_urls,
                                                                                            tmp_path):
    """``history 99999999999999999999`` raised OverflowError (SQLite) with a traceback. An id no
    BIGINT holds is known nowhere: ``format_history`` says so without asking a database, and the
    command ends with one line on stderr (whether the argument parsing refuses it first or the
    history finds nothing), never a traceback. A word is refused by the argument parsing."""
    for arg in ("99999999999999999999", str(2 ** 63), "abc"):
        proc = cli(stores, db_urls, tmp_path, "history", arg)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert arg in last and ("liability" in last or "known neither" in last), proc.stderr
        assert len([line for line in proc.stderr.splitlines() if not line.startswith("usage:")]) == 1
    assert history.format_history(stores, 2 ** 63) is None and history.format_history(stores, -(2 ** 63) - 1) is None
    assert history.format_history(stores, 10 ** 30) is None


@SQLITE_ONLY
def test_item9_history_shows_unreadable_fbs_values_as_fbs_holds_them(stores, fbs):
    """The audit trail (M2) of a liability whose amount and creation time cannot be read shows
    them quoted instead of failing."""
    sqlite_only(stores)
    lia = fr.liability(fbs, fr.patron(fbs)["patron_id"], amount="12,50", created_at="yesterday")
    fbs.commit()
    out = history.format_history(stores, lia["liability_id"])
    assert "'12,50' (unreadable) DKK" in out and "created 'yesterday' (unreadable)" in out


# --- item 7: text that is not UTF-8 --------------------------------------------------------------------

def non_utf8(conn, patron_id: int, column: str, hex_bytes: str) -> None:
    conn.execute(text(f"UPDATE patron SET {column} = CAST(X'{hex_bytes}' AS TEXT) "  # noqa: S608 - test values
                      "WHERE patron_id = :p"), {"p": patron_id})


@SQLITE_ONLY
def test_item7_non_utf8_cpr_is_a_T6_finding_and_no_full_cpr_reaches_stderr_or_run_error(stores, db_urls, fbs,
                                                                                        tmp_path, caplog):
    """A CPR number with a byte that is not UTF-8 failed the whole run with the full number in the
    traceback on stderr. Now it is read as it is, refused under T6 with the number masked, and the
    run completes with the healthy liability eligible; nothing printed, logged or recorded holds
    the full number."""
    sqlite_only(stores)
    good = healthy(fbs)
    p = fr.patron(fbs, cpr=None)
    non_utf8(fbs, p["patron_id"], "cpr", BAD_BYTE_CPR.encode().hex() + "ff")
    bad = fr.liability(fbs, p["patron_id"])["liability_id"]
    fbs.commit()
    proc = cli(stores, db_urls, tmp_path, "assess")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and BAD_BYTE_CPR not in proc.stdout + proc.stderr
    assert full_cpr_numbers(proc.stdout + proc.stderr) == []
    with caplog.at_level(logging.DEBUG):
        run, counts, found, error = assess(stores)
    assert run.status == "success" and error is None
    assert ("T6", "T6_person_without_usable_cpr") in codes(found, bad)
    assert counts[(AGENCY, BLOCKED, "T6")] == 1 and counts[(AGENCY, ELIGIBLE, "-")] == 1
    assert good not in found
    with stores.ledger.connect() as conn:
        recorded = " ".join(str(v) for row in conn.execute(text("SELECT message, error FROM finding, run")) for v in row)
    assert BAD_BYTE_CPR not in recorded + caplog.text and full_cpr_numbers(recorded + caplog.text) == []


@SQLITE_ONLY
def test_item7_non_utf8_name_no_longer_fails_the_run_or_lands_in_run_error(stores, fbs):
    """A name with a byte that is not UTF-8 failed the whole run (the text in run.error); now it is
    read as it is and the run completes with every other liability assessed."""
    sqlite_only(stores)
    good = healthy(fbs)
    p = fr.patron(fbs, cpr=None)                   # replacement CPR: the name travels (I2)
    non_utf8(fbs, p["patron_id"], "name", "4a6fff6e")
    fr.liability(fbs, p["patron_id"])
    fbs.commit()
    run, counts, found, error = assess(stores)
    assert run.status == "success" and error is None
    assert good not in found and counts[(AGENCY, ELIGIBLE, "-")] >= 1


@SQLITE_ONLY
def test_item7_non_utf8_name_is_an_F1_finding(stores, fbs):
    sqlite_only(stores)
    good = healthy(fbs)
    p = fr.patron(fbs, cpr=None)
    non_utf8(fbs, p["patron_id"], "name", "4a6fff6e")
    bad = fr.liability(fbs, p["patron_id"])["liability_id"]
    fbs.commit()
    run, counts, found, error = assess(stores)
    assert run.status == "success" and error is None
    assert ("F1", "F1_text_cannot_be_sent") in codes(found, bad)
    assert counts[(AGENCY, ELIGIBLE, "-")] == 1 and good not in found


@SQLITE_ONLY
def test_item7_staff_report_with_a_non_utf8_name_is_written_with_the_byte_shown_escaped_M4(stores, fbs, tmp_path):
    """The run recorded the F1 finding; the staff report over it must not fail on the name either
    (it did: lone surrogates cannot be written as UTF-8): the byte is shown escaped."""
    from fbs_debitor.quality import report as dq_report

    sqlite_only(stores)
    p = fr.patron(fbs, cpr=None)
    non_utf8(fbs, p["patron_id"], "name", "4a6fff6e")
    fr.liability(fbs, p["patron_id"])
    fbs.commit()
    assess(stores)
    reports = dq_report.build_reports(stores, tmp_path / "reports", dt.date.today())
    page = "".join(r.html_path.read_text(encoding="utf-8") for r in reports)
    assert "Jo\\udcffn" in page and "Navn eller adresse kan ikke sendes" in page


@pytest.mark.parametrize("number", ["０７０７８１１２３４", "٠٧٠٧٨١١٢٣٤", "07078112³4"])
def test_item9_a_cpr_in_digits_other_than_0_9_is_not_usable_T6(number):
    """str.isdigit takes other scripts' digits; no CPR has them and the schema refuses them, so
    eligibility and the checks must not call such a number usable."""
    from fbs_debitor.core.identity import check_cpr, is_replacement_cpr

    assert not check_cpr(number, TODAY).ok and not is_replacement_cpr(number)


# --- item 9: change detection and cut-off detection read one record at a time ----------------------------

@SQLITE_ONLY
def test_item9_unreadable_amount_of_a_sent_claim_is_a_task_never_a_rounded_write_down_U1(stores, emu_db):
    """After sending, FBS's amount of one claim becomes text and of another a third decimal: change
    detection failed the run on the text and would have written the other down to a rounded 12.34.
    Now each is one staff task and nothing is sent about it; a plain write-down in the same page
    still goes (U1)."""
    sqlite_only(stores)
    ids = municipality(stores, adults=3)
    text_amount, third_decimal, lowered = ids["adult"]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        with stores.fbs.begin() as conn:
            for lid, amount in ((text_amount, "12,50"), (third_decimal, Decimal("12.345")),
                                (lowered, Decimal("20.25"))):
                conn.execute(text("UPDATE liability SET amount = :a WHERE liability_id = :l"), {"a": amount, "l": lid})
        run_id, _ = transfer(stores, emu.url)
        again, _ = transfer(stores, emu.url)
    assert ledger.get_run(stores.ledger, run_id).status == "success"
    claims = {c["fordring_id"]: c for c in emulator.claims(emu_db)}
    assert [c["kind"] for c in claims[f"FBS-{AGENCY}-{lowered}"]["changes"]] == ["Nedskrivning"]
    for lid in (text_amount, third_decimal):
        assert claims[f"FBS-{AGENCY}-{lid}"]["changes"] == []
    raised = [t for t in tasks(stores, "claim_change") if "-unreadable-" in t["task_id"]]
    assert sorted(t["liability_id"] for t in raised) == sorted([text_amount, third_decimal])   # once, not per run
    assert all("kan ikke læses" in t["message"] for t in raised)
    assert ledger.get_run(stores.ledger, again).status == "success"


@SQLITE_ONLY
def test_item9_an_agency_whose_cut_off_date_cannot_be_read_does_not_stop_the_others_T1(stores, fbs, caplog):
    """Cut-off detection read every agency's date in one go and failed the run on one that is not
    a date; now that agency is left out (logged) and the others are detected and assessed."""
    sqlite_only(stores)
    fr.agency(fbs, agency_id="715900")
    fbs.execute(text("UPDATE agency SET cut_off_date = 'sidste år' WHERE agency_id = '715900'"))
    good = healthy(fbs)
    fbs.commit()
    with caplog.at_level(logging.ERROR):
        run, counts, found, error = assess(stores)
    assert run.status == "success" and error is None
    assert counts[(AGENCY, ELIGIBLE, "-")] == 1 and good not in found
    assert "715900" in caplog.text and "cannot be read" in caplog.text


def test_item9_a_sent_claim_whose_patron_is_gone_is_a_task_not_a_liability_gone_from_fbs(stores, emu_db):
    """Change detection read a sent liability whose patron is no longer in FBS as if the liability
    itself were gone (an inner join): now it is one staff task naming the patron, nothing is sent,
    and the other claims are compared as usual (a write-down still goes, U1)."""
    ids = municipality(stores, adults=2)
    orphan, lowered = ids["adult"]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        with foreign_keys_off(stores) as conn:
            patron_id = conn.execute(text("SELECT patron_id FROM liability WHERE liability_id = :l"),
                                     {"l": orphan}).scalar_one()
            conn.execute(text("DELETE FROM patron WHERE patron_id = :p"), {"p": patron_id})
            conn.execute(text("UPDATE liability SET amount = :a WHERE liability_id = :l"),
                         {"a": Decimal("20.25"), "l": lowered})
        run_id, _ = transfer(stores, emu.url)
        transfer(stores, emu.url)
    assert ledger.get_run(stores.ledger, run_id).status == "success"
    claims = {c["fordring_id"]: c for c in emulator.claims(emu_db)}
    assert [c["kind"] for c in claims[f"FBS-{AGENCY}-{lowered}"]["changes"]] == ["Nedskrivning"]
    assert claims[f"FBS-{AGENCY}-{orphan}"]["changes"] == []
    raised = [t for t in tasks(stores, "claim_change") if "-orphaned-" in t["task_id"]]
    assert [t["liability_id"] for t in raised] == [orphan] and str(patron_id) in raised[0]["message"]
    with stores.ledger.connect() as conn:
        kinds = {r[0] for r in conn.execute(text("SELECT kind FROM event WHERE liability_id = :l"), {"l": orphan})}
    assert "fbs_liability_missing" not in kinds


@SQLITE_ONLY
def test_item9_a_sent_claim_rebuilt_for_an_identity_change_with_an_unreadable_loan_date_is_a_task_U2(stores, emu_db):
    """A sent claim whose debtor's CPR changed (U2) is rebuilt to compare its parties; its loan's due
    date had meanwhile become text, and the rebuild failed the whole detection. Now the rebuild
    reads the row like a new claim's: the identity change cannot be sent, staff get one task naming
    the date (F2), and the other claims' changes go."""
    sqlite_only(stores)
    ids = municipality(stores, adults=2)
    changed, lowered = ids["adult"]
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        transfer(stores, emu.url)
        with stores.fbs.begin() as conn:
            patron_id, loan_id = conn.execute(text("SELECT patron_id, loan_id FROM liability WHERE liability_id = :l"),
                                              {"l": changed}).one()
            conn.execute(text("UPDATE patron SET cpr = :c WHERE patron_id = :p"), {"c": "1705901003", "p": patron_id})
            conn.execute(text("UPDATE loan SET due_date = 'efter ferien' WHERE loan_id = :l"), {"l": loan_id})
            conn.execute(text("UPDATE liability SET amount = :a WHERE liability_id = :l"),
                         {"a": Decimal("20.25"), "l": lowered})
        run_id, _ = transfer(stores, emu.url)
    assert ledger.get_run(stores.ledger, run_id).status == "success"
    claims = {c["fordring_id"]: c for c in emulator.claims(emu_db)}
    assert [c["kind"] for c in claims[f"FBS-{AGENCY}-{lowered}"]["changes"]] == ["Nedskrivning"]
    assert claims[f"FBS-{AGENCY}-{changed}"]["changes"] == []
    raised = [t for t in tasks(stores, "claim_change") if "-identity-" in t["task_id"]]
    assert [t["liability_id"] for t in raised] == [changed] and "F2" in raised[0]["message"]
