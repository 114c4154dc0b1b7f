"""Issue 19: ``python -m fbs_debitor transfer`` runs the data-quality checks in a process it starts
before the sending (``quality.checks_process``), so that importing Great Expectations overlaps the
sending. What the checks find is the same as in one process (tests/test_incremental.py runs its
checks tests both ways); here: what happens when that process is not needed, or fails."""

from __future__ import annotations

import logging
import sys

import debtor
import fbs_rows as fr
from sqlalchemy import text
from transfers import BATCH, once_each

from fbs_debitor.core import ledger
from fbs_debitor.quality import checks_process
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer.run import run_transfer

A = "715100"


def test_issue19_a_checks_process_not_asked_to_check_ends_and_writes_nothing(stores):
    """Leaving the block without asking (the run ended first, or crashed) ends the child at once,
    even while it still imports GX: it never touches a database (no finding written)."""
    with checks_process.ChecksProcess(None) as ahead:
        child = ahead._child
    assert child.poll() is not None
    with stores.ledger.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM finding")).scalar() == 0


def test_issue19_I4_a_checks_process_that_dies_fails_the_run_naming_it_and_what_went_stands(
        stores, emu_db, monkeypatch):
    """A checks process that cannot start or ends without an answer: the claims the sending sent
    stand (each once), and the run ends failed naming the checks, never a silent "no finding"."""
    with stores.fbs.connect() as conn:
        fr.agency(conn, A)
        lid = fr.liability(conn, fr.patron(conn, agency_id=A, cpr=fr.MOD11_FAIL_CPR)["patron_id"],
                           agency_id=A)["liability_id"]
        conn.commit()
    monkeypatch.setattr(sys, "executable", "/bin/false")        # a child that ends at once, silent
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, debtor.client(emu.url) as client:
        run_id, _ = run_transfer(stores, client, batch_size=BATCH, data_quality=True, checks_process=True)
    run = ledger.get_run(stores.ledger, run_id)
    assert run.status == "failed"
    assert "data quality checks: the checks process ended with exit code 1 without an answer" in run.error
    assert once_each(emu_db) == [f"FBS-{A}-{lid}"]


def test_issue19_python_m_fbs_debitor_transfer_starts_the_checks_process_first_and_the_run_takes_it_over(
        monkeypatch):
    """``__main__`` starts the worker before the command's imports, only for a transfer that will
    check (not a dry run, not help, no other command); the run takes that one over instead of
    starting a second; one never taken over is ended at exit."""
    monkeypatch.setattr(checks_process, "_early", None)
    for argv in (["transfer", "--dry-run"], ["assess"], ["transfer", "--help"], ["payments"]):
        assert not checks_process.start_early(argv) and checks_process._early is None
    assert checks_process.start_early(["-v", "transfer", "--batch-size", "50"])
    early = checks_process._early
    with checks_process.ChecksProcess(None) as ahead:
        assert ahead.pid == early.pid and checks_process._early is None
    assert early.poll() is not None
    assert checks_process.start_early(["transfer"])
    left = checks_process._early
    checks_process._end_early()                 # what atexit does with one the run never took over
    assert left.poll() is not None and checks_process._early is None


def test_issue19_the_checks_process_answers_ends_at_once_and_its_log_lines_all_arrive(stores, emu_db, capfd, caplog):
    """Having answered, the worker ends without Python's teardown (``checks_worker._exit_now``):
    with exit code 0, and with every line it logged on the run's standard error (flushed first);
    what it found is in the ledger (I4: a CPR failing modulus-11 is a finding)."""
    caplog.set_level(logging.INFO)               # the worker logs at the run's level
    with stores.fbs.connect() as conn:
        fr.agency(conn, A)
        fr.liability(conn, fr.patron(conn, agency_id=A, cpr=fr.MOD11_FAIL_CPR)["patron_id"], agency_id=A)
        conn.commit()
    ended: list = []
    close = checks_process.ChecksProcess.close

    def closing(self):
        ended.append(self._child.poll())         # (after run(): the worker has been waited for)
        close(self)

    with emulator.Emulator("KMD_OPUS", emu_db) as emu, debtor.client(emu.url) as client:
        checks_process.ChecksProcess.close = closing
        try:
            run_id, _ = run_transfer(stores, client, batch_size=BATCH, data_quality=True, checks_process=True)
        finally:
            checks_process.ChecksProcess.close = close
    assert ledger.get_run(stores.ledger, run_id).status == "success"
    assert ended == [0]
    with stores.ledger.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM finding WHERE last_run_id = :r AND rule = 'I4'"),
                            {"r": run_id}).scalar() == 1
    assert "data quality: 1 rows checked, 1 findings {'I4_cpr_fails_modulus_11': 1}" in capfd.readouterr().err
