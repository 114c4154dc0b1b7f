"""Issue 19: the hourly run costs what changed, not what is owed. Each run looks only at the
liabilities FBS marked changed (``updated_at`` on the liability, its patrons, their guardianships;
an agency marked changed is looked at whole) since the agency's last run that finished its work
(``eligibility.delta``), and the nightly sweep looks at everything and says what the markers
missed. Every rule and exactly-once guarantee holds as before: against the debtor-system emulator
over real HTTP, on SQLite and PostgreSQL, through ``run_transfer`` (what ``python -m fbs_debitor
transfer`` and the DAG's tasks call)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import debtor
import fbs_rows as fr
import pytest
from sqlalchemy import text
from transfers import BATCH, once_each
from transfers import successful_run as run

from fbs_debitor.core import ledger
from fbs_debitor.eligibility import delta
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer.run import run_transfer

A = "715100"
T0 = dt.datetime(2026, 4, 1, 9, 30)           # when FBS last marked the extract's rows
ASSESSED = ("eligible", "blocked", "awaiting_verification", "already_sent", "out_of_scope")


def municipality(stores, n: int = 3, **agency) -> list[int]:
    """One agency (marked at T0) with ``n`` adults' open fees (all marked at T0)."""
    ids = []
    with stores.fbs.connect() as conn:
        fr.agency(conn, A, updated_at=T0, **agency)
        for _ in range(n):
            p = fr.patron(conn, agency_id=A, updated_at=T0)
            ids.append(fr.liability(conn, p["patron_id"], agency_id=A, updated_at=T0)["liability_id"])
        conn.commit()
    return ids


def new_fee(stores, marked: dt.datetime) -> int:
    with stores.fbs.connect() as conn:
        p = fr.patron(conn, agency_id=A, updated_at=marked)
        lid = fr.liability(conn, p["patron_id"], agency_id=A, created_at=marked, updated_at=marked)["liability_id"]
        conn.commit()
    return lid


def looked_at(stores, run_id: str) -> int:
    """How many liabilities the run's assessment accounted for."""
    return sum(n for (_a, c, _r), n in ledger.run_counts(stores.ledger, run_id).items() if c in ASSESSED)


def totals(stores, run_id: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_a, c, _r), n in ledger.run_counts(stores.ledger, run_id).items():
        out[c] = out.get(c, 0) + n
    return out


def mark(stores) -> dt.datetime | None:
    found = delta.marks(stores.ledger).get(A)
    return found[0] if found else None


def messages(stores) -> dict[int, list[tuple]]:
    """Each liability's outbox messages: (version, change kind, state)."""
    out: dict[int, list[tuple]] = {}
    with stores.ledger.connect() as conn:
        for r in conn.execute(text("SELECT liability_id, version, change_kind, state FROM outbox "
                                   "ORDER BY liability_id, version")):
            out.setdefault(r.liability_id, []).append((r.version, r.change_kind, r.state))
    return out


def test_issue19_T1_the_hourly_run_looks_only_at_what_FBS_marked_changed_and_sends_each_new_claim_once(stores, emu_db):
    ids = municipality(stores)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        first = run(stores, emu.url)              # the agency's first run: everything (T1: all after the cut-off)
        assert delta.open_window(stores, first)["whole"] == [A]
        assert totals(stores, first)["accepted"] == 3 and looked_at(stores, first) == 3
        assert mark(stores) == T0                 # FBS's newest marker (its clock is later)

        quiet = run(stores, emu.url)              # nothing marked changed: nothing looked at, nothing sent
        window = delta.open_window(stores, quiet)
        assert (window["mode"], window["whole"], window["incremental"]) == ("incremental", [], 1)
        assert looked_at(stores, quiet) == 0 and "accepted" not in totals(stores, quiet)

        fresh = new_fee(stores, T0 + dt.timedelta(hours=1))
        hourly = run(stores, emu.url)             # the new fee alone is looked at, and goes once
        assert looked_at(stores, hourly) == 1 and totals(stores, hourly)["accepted"] == 1
        assert mark(stores) == T0 + dt.timedelta(hours=1)
        run(stores, emu.url)                      # and not again
    assert sorted(once_each(emu_db)) == sorted(f"FBS-{A}-{i}" for i in [*ids, fresh])
    assert {m[0][2] for m in messages(stores).values()} == {"accepted"}


CHECKS_WHERE = pytest.mark.parametrize("checks_process", [False, True], ids=["checks_in_process", "checks_process"])


@CHECKS_WHERE
def test_issue19_eligibility_is_read_once_per_run_and_the_checks_see_what_the_sending_found_I4_T6(
        stores, emu_db, monkeypatch, tmp_path, checks_process):
    """The GX checks (data_quality) do not decide eligibility again: they check the batch each
    municipality's sending step found (``check_batch``), after the sending, and find what they
    found before: a modulus-11 warning on a claim that went (I4), a blocked person (T6). The same
    with the checks in the process ``python -m fbs_debitor transfer`` starts before the sending
    (``quality.checks_process``): there the eligibility read counted is the sending's."""
    from fbs_debitor.eligibility import rules

    municipality(stores)
    seen: list[int] = []
    reads = rules.iter_verdicts

    def counted(*args, **kwargs):
        for page in reads(*args, **kwargs):
            seen.extend(v.liability_id for v in page)
            yield page

    monkeypatch.setattr(rules, "iter_verdicts", counted)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, debtor.client(emu.url) as client:
        run_transfer(stores, client, batch_size=BATCH, data_quality=True)      # the agency's first run
        seen.clear()
        later = T0 + dt.timedelta(hours=1)
        with stores.fbs.connect() as conn:
            warned = fr.liability(conn, fr.patron(conn, agency_id=A, cpr=fr.MOD11_FAIL_CPR, updated_at=later)["patron_id"],
                                  agency_id=A, created_at=later, updated_at=later)["liability_id"]
            blocked = fr.liability(conn, fr.patron(conn, agency_id=A, cpr="3102901234", updated_at=later)["patron_id"],
                                   agency_id=A, created_at=later, updated_at=later)["liability_id"]
            conn.commit()
        run_id, _ = run_transfer(stores, client, batch_size=BATCH, data_quality=True, data_docs_dir=tmp_path / "docs",
                                 checks_process=checks_process)
    assert ledger.get_run(stores.ledger, run_id).status == "success"
    assert (tmp_path / "docs" / "index.html").is_file()       # the Data Docs of the run, either way
    assert sorted(seen) == sorted({warned, blocked})          # each liability's eligibility read once
    with stores.ledger.connect() as conn:
        found = {(r.check_code, r.liability_id) for r in conn.execute(text(
            "SELECT check_code, liability_id FROM finding WHERE last_run_id = :r AND resolved_at IS NULL"), {"r": run_id})}
        staged = conn.execute(text("SELECT COUNT(*) FROM check_batch")).scalar()
    assert ("I4_cpr_fails_modulus_11", warned) in found       # by GX, on a claim that went
    assert ("T6_person_without_usable_cpr", blocked) in found
    assert f"FBS-{A}-{warned}" in once_each(emu_db) and f"FBS-{A}-{blocked}" not in once_each(emu_db)
    assert staged == 0                                         # the staged batch is used up


@CHECKS_WHERE
def test_issue19_a_page_the_checks_cannot_prepare_still_goes_and_the_run_fails_naming_it_I4_kept(
        stores, emu_db, monkeypatch, tmp_path, checks_process):
    """The checks' frame is derived in the sending step: when it cannot be, the page's claims go
    all the same, the run ends failed naming the gap (never a silent "no finding"), and the
    warnings the checks could not look at again are not resolved as if fixed."""
    from fbs_debitor.quality import checks

    municipality(stores, n=1, verify_compensations=True)
    with stores.fbs.connect() as conn:
        waiting = fr.liability(conn, fr.patron(conn, agency_id=A, cpr=fr.MOD11_FAIL_CPR, updated_at=T0)["patron_id"],
                               agency_id=A, kind="compensation", with_loan=False, updated_at=T0)["liability_id"]
        conn.commit()
    i4 = ("I4_cpr_fails_modulus_11", waiting)

    def open_findings() -> set[tuple[str, int]]:
        with stores.ledger.connect() as conn:
            return {(r.check_code, r.liability_id) for r in conn.execute(text(
                "SELECT check_code, liability_id FROM finding WHERE resolved_at IS NULL"))}

    with emulator.Emulator("KMD_OPUS", emu_db) as emu, debtor.client(emu.url) as client:
        first, _ = run_transfer(stores, client, batch_size=BATCH, data_quality=True)
        assert ledger.get_run(stores.ledger, first).status == "success" and i4 in open_findings()
        later = T0 + dt.timedelta(hours=1)
        with stores.fbs.begin() as conn:            # the waiting compensation is in the next delta
            conn.execute(text("UPDATE liability SET updated_at = :t WHERE liability_id = :l"), {"t": later, "l": waiting})
        fresh = new_fee(stores, later)

        def broken(rows, today):
            raise ValueError("a value the checks cannot read")

        monkeypatch.setattr(checks, "_page_data", broken)
        second, _ = run_transfer(stores, client, batch_size=BATCH, data_quality=True, checks_process=checks_process)
    run = ledger.get_run(stores.ledger, second)
    assert run.status == "failed" and "the checks could not see 1 page(s)" in run.error and "ValueError" in run.error
    assert f"FBS-{A}-{fresh}" in once_each(emu_db) and once_each(emu_db).count(f"FBS-{A}-{fresh}") == 1
    assert i4 in open_findings()                    # not seen again, but not looked at either: still open
    with stores.ledger.connect() as conn:
        kept = conn.execute(text("SELECT error FROM check_batch WHERE run_id = :r"), {"r": second}).scalars().all()
    assert len(kept) == 1 and "ValueError" in kept[0]


def test_issue19_U1_U2_changes_marked_on_a_liability_or_its_patron_reach_the_debtor_system_once(stores, emu_db):
    ids = municipality(stores)
    with stores.fbs.connect() as conn:
        patron_of = dict(conn.execute(text("SELECT liability_id, patron_id FROM liability")).all())
    later = T0 + dt.timedelta(hours=2)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        run(stores, emu.url)
        with stores.fbs.begin() as conn:         # U1: a write-down, marked; U2: a new CPR, marked on the patron
            conn.execute(text("UPDATE liability SET amount = :a, updated_at = :t WHERE liability_id = :l"),
                         {"a": Decimal("20.25"), "t": later, "l": ids[0]})
            conn.execute(text("UPDATE patron SET cpr = :c, updated_at = :t WHERE patron_id = :p"),
                         {"c": "1705901003", "t": later, "p": patron_of[ids[1]]})
        hourly = run(stores, emu.url)
        assert looked_at(stores, hourly) == 2 and "eligible" not in totals(stores, hourly)   # the two, both sent ...
        assert totals(stores, hourly)["changes_accepted"] == 2     # ... and each change went
        run(stores, emu.url)                       # nothing twice
    got = messages(stores)
    assert got[ids[0]] == [(1, "create", "accepted"), (2, "write_down", "accepted")]
    assert got[ids[1]] == [(1, "create", "accepted"), (2, "identity", "accepted")]
    assert got[ids[2]] == [(1, "create", "accepted")]


def test_issue19_the_nightly_sweep_catches_a_change_FBS_did_not_mark_and_says_so(stores, emu_db):
    ids = municipality(stores)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        run(stores, emu.url)
        with stores.fbs.begin() as conn:          # U1, but FBS did not mark it (updated_at unchanged)
            conn.execute(text("UPDATE liability SET amount = :a WHERE liability_id = :l"),
                         {"a": Decimal("20.25"), "l": ids[2]})
        hourly = run(stores, emu.url)
        assert "change_recorded" not in totals(stores, hourly)         # no marker: the hourly run cannot see it
        sweep = run(stores, emu.url, sweep=True)
        window = delta.open_window(stores, sweep)
        assert (window["mode"], window["whole"]) == ("sweep", [A])
        assert totals(stores, sweep)["changes_accepted"] == 1          # the sweep sees it and sends it ...
        assert ledger.run_counts(stores.ledger, sweep)[(A, delta.MISSED, "change")] == 1   # ... and says so
        after = run(stores, emu.url)
        assert delta.MISSED not in totals(stores, after) and "change_recorded" not in totals(stores, after)
    assert messages(stores)[ids[2]] == [(1, "create", "accepted"), (2, "write_down", "accepted")]


def test_issue19_C3_an_agency_marked_changed_is_looked_at_whole(stores, emu_db):
    ids = municipality(stores, age_limit=0)     # C3: the agency is held, nothing of it goes
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        held = run(stores, emu.url)
        assert "accepted" not in totals(stores, held) and totals(stores, held)["blocked"] == 3
        quiet = run(stores, emu.url)
        assert looked_at(stores, quiet) == 0
        with stores.fbs.begin() as conn:       # staff fix the age limit in FBS, which marks the agency
            conn.execute(text("UPDATE agency SET age_limit = 18, updated_at = :t WHERE agency_id = :a"),
                         {"t": T0 + dt.timedelta(hours=1), "a": A})
        fixed = run(stores, emu.url)           # none of its liabilities was marked: the agency is looked at whole
        assert delta.open_window(stores, fixed)["whole"] == [A]
        assert totals(stores, fixed)["accepted"] == 3
    assert sorted(once_each(emu_db)) == sorted(f"FBS-{A}-{i}" for i in ids)


def test_issue19_the_marks_stay_when_a_municipality_is_not_done_so_nothing_is_lost(stores, emu_db):
    municipality(stores, n=0)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        run(stores, emu.url)
        marked = mark(stores)
        fresh = [new_fee(stores, T0 + dt.timedelta(hours=1)) for _ in range(BATCH + 1)]
        url = emu.url
    # the debtor system is down: the first batch gets no answer, the rest waits (deferred)
    with debtor.client(url, max_attempts=1) as client:
        down, _ = run_transfer(stores, client, batch_size=BATCH, data_quality=False)
    counts = totals(stores, down)
    assert counts.get("deferred") == 1 and ledger.get_run(stores.ledger, down).status == "success"
    assert mark(stores) == marked                 # not moved: the next run looks at the same changes
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        run(stores, emu.url)
    assert sorted(once_each(emu_db)) == sorted(f"FBS-{A}-{i}" for i in fresh)
    assert mark(stores) == T0 + dt.timedelta(hours=1)


def test_issue19_a_change_marked_within_the_overlap_is_seen_again_and_still_sent_once(stores, emu_db, monkeypatch):
    municipality(stores)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        run(stores, emu.url)
        now = delta.fbs_clock(stores.fbs)
        fresh = new_fee(stores, now)              # marked by FBS's clock this minute: perhaps not all committed yet
        first = run(stores, emu.url)
        assert totals(stores, first)["accepted"] == 1
        after = delta.fbs_clock(stores.fbs)       # the run read FBS's clock between `now` and `after`
        # the mark stays FBS_DEBITOR_CHANGE_OVERLAP_MINUTES behind FBS's clock as the run read it, so
        # before the fee's own marker: the next run looks again
        assert mark(stores) <= after - dt.timedelta(minutes=15)
        assert mark(stores) < now
        again = run(stores, emu.url)
        assert looked_at(stores, again) == 1 and "accepted" not in totals(stores, again)
    assert once_each(emu_db).count(f"FBS-{A}-{fresh}") == 1


def test_issue19_a_delta_larger_than_the_limit_makes_the_agency_looked_at_whole(stores, emu_db, monkeypatch):
    municipality(stores)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        run(stores, emu.url)
        for _ in range(3):
            new_fee(stores, T0 + dt.timedelta(hours=1))
        monkeypatch.setattr(delta, "change_delta_max", lambda: 2)
        opened = ledger.start_run(stores.ledger, "manual")
        delta.open_window(stores, opened)
        assert delta.changes(stores, opened, [A]) == delta.Delta((), (A,))
        monkeypatch.setattr(delta, "change_delta_max", lambda: 3)
        assert len(delta._changes(stores, opened, [A]).liability_ids) == 3   # (changes keeps a run's answer)


@pytest.mark.parametrize("value", ["-1", "1441", "soon"])
def test_issue19_the_overlap_setting_is_refused_outside_its_range(value, monkeypatch):
    from fbs_debitor.core.settings import SettingError, change_overlap_minutes

    monkeypatch.setenv("FBS_DEBITOR_CHANGE_OVERLAP_MINUTES", value)
    with pytest.raises(SettingError, match="from 0 to 1440"):
        change_overlap_minutes()
