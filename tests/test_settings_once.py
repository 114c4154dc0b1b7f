"""Issue 19 item 2: the settings the build and eligibility need are read once per run, never per
row, and checked at the start with their allowed range (``core.settings.build_settings``); a
setting changed between runs takes effect in the next run. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import fbs_rows as fr
import pytest
from lxml import etree

from fbs_debitor.claims import stream as claim_stream
from fbs_debitor.core import settings
from fbs_debitor.transfer import dry_run

TODAY = fr.TODAY
LOAN_DUE = dt.date(2026, 3, 31)          # fbs_rows' loans are due then


@pytest.fixture
def reads(monkeypatch) -> Counter:
    """Every ``settings.value`` call of the test, by variable (the one place settings are parsed)."""
    counted: Counter = Counter()
    real = settings.value

    def value(name, environ=None):
        counted[name] += 1
        return real(name, environ)

    monkeypatch.setattr(settings, "value", value)
    return counted


def fees(fbs, n: int) -> None:
    for _ in range(n):
        fr.liability(fbs, fr.patron(fbs)["patron_id"])
    fbs.commit()


def due_dates(out) -> set[str]:
    return {el.text for f in out.rglob("batch-*.xml") for el in etree.parse(str(f)).iter("{*}ForfaldsDato")}


def test_item2_a_dry_run_reads_the_settings_a_constant_number_of_times_not_once_per_row(stores, fbs, tmp_path,
                                                                                         reads):
    """F2/C3 settings per run: a dry run of 3 claims and one of 30 read each setting equally often."""
    fees(fbs, 3)
    small = dry_run.run(stores, tmp_path / "small", batch_size=500, today=TODAY)
    few = Counter(reads)
    reads.clear()
    fees(fbs, 27)
    large = dry_run.run(stores, tmp_path / "large", batch_size=500, today=TODAY)
    assert (small["totals"]["claims"], large["totals"]["claims"]) == (3, 30)
    assert reads == few
    assert reads["FBS_DEBITOR_AGE_LIMIT_RANGE"] <= 2 and reads["FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS"] <= 2


def test_item2_the_build_reads_no_setting_per_row_when_the_run_passes_its_snapshot(stores, fbs, reads):
    """The stream reads its snapshot once at the start; pages of many rows add no reads."""
    fees(fbs, 12)
    snapshot = settings.build_settings()
    reads.clear()
    pages = list(claim_stream.iter_pages(stores.fbs, stores.ledger, page_size=100, today=TODAY, settings=snapshot))
    assert sum(1 for page in pages for _, built in page.built if built.account) == 12
    assert reads["FBS_DEBITOR_AGE_LIMIT_RANGE"] == 0 and reads["FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS"] == 0


def test_item2_F2_a_changed_fee_payment_term_takes_effect_in_the_next_run(stores, fbs, tmp_path, monkeypatch):
    fees(fbs, 2)
    dry_run.run(stores, tmp_path / "first", batch_size=500, today=TODAY)
    monkeypatch.setenv("FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS", "14")
    dry_run.run(stores, tmp_path / "next", batch_size=500, today=TODAY)
    assert due_dates(tmp_path / "first") == {(LOAN_DUE + dt.timedelta(days=1 + 30)).isoformat()}
    assert due_dates(tmp_path / "next") == {(LOAN_DUE + dt.timedelta(days=1 + 14)).isoformat()}


def test_item2_C3_a_changed_age_limit_range_takes_effect_in_the_next_run(stores, fbs, tmp_path, monkeypatch):
    """The agency's age limit is 18: inside the default 15-21, outside 19-21 (held, C3)."""
    fees(fbs, 2)
    first = dry_run.run(stores, tmp_path / "first", batch_size=500, today=TODAY)
    monkeypatch.setenv("FBS_DEBITOR_AGE_LIMIT_RANGE", "19-21")
    held = dry_run.run(stores, tmp_path / "next", batch_size=500, today=TODAY)
    assert first["totals"]["claims"] == 2 and "blocked:C3" not in first["totals"]
    assert held["totals"].get("claims", 0) == 0 and held["totals"]["blocked:C3"] == 2


def test_item2_a_snapshot_holds_for_its_whole_run_even_if_the_environment_changes_meanwhile(stores, fbs,
                                                                                             monkeypatch):
    """One run, one set of values: pages built after a change in the environment still use the
    snapshot read at the start (the change is for the next run)."""
    fees(fbs, 3)
    snapshot = settings.build_settings()
    monkeypatch.setenv("FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS", "7")
    pages = claim_stream.iter_pages(stores.fbs, stores.ledger, page_size=100, today=TODAY, settings=snapshot)
    dues = {built.account.claims[0].due_date for page in pages for _, built in page.built}
    assert dues == {LOAN_DUE + dt.timedelta(days=1 + 30)}


@pytest.mark.parametrize("name, raw, allowed", [
    ("FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS", "366", "a whole number from 0 to 365"),
    ("FBS_DEBITOR_AGE_LIMIT_RANGE", "0-100", "LOW-HIGH, whole numbers with 12 <= LOW <= HIGH <= 25"),
])
def test_item2_a_bad_setting_stops_the_run_at_its_start_naming_the_variable_and_the_range(stores, fbs, tmp_path,
                                                                                          monkeypatch, name, raw,
                                                                                          allowed):
    """Checked once, at the start, with the allowed range: nothing is written (no per-row M1)."""
    fees(fbs, 1)
    monkeypatch.setenv(name, raw)
    with pytest.raises(settings.SettingError, match=f"{name}='{raw}'.*allowed is {allowed}"):
        dry_run.run(stores, tmp_path / "out", batch_size=500, today=TODAY)
    assert not (tmp_path / "out").exists()
    with pytest.raises(settings.SettingError):
        settings.build_settings()
