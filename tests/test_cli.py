"""The CLI as an operator runs it (``python -m fbs_debitor``), in a subprocess, on both databases."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import subprocess
import sys

import pytest
from leaks import full_cpr_numbers

from fbs_debitor.core.settings import HOME, DatabaseUrls


def cli(db_urls, tmp_path, *args, module: str = "fbs_debitor", **env_over):
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_SERVICEPLATFORMEN"}
    env.update(FBS_DEBITOR_FBS_URL=db_urls.fbs, FBS_DEBITOR_LEDGER_URL=db_urls.ledger,
               FBS_DEBITOR_VAR=str(tmp_path / "var"), PYTHONPATH=str(HOME / "plugins"), **env_over)
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                          timeout=300)


def sandbox(db_urls, tmp_path, *args, **env_over):
    """The sandbox's command line (``python -m fbs_debitor.sandbox``): generator, emulator, simulators."""
    return cli(db_urls, tmp_path, *args, module="fbs_debitor.sandbox", **env_over)


@pytest.mark.slow
def test_cli_generate_assess_summary_and_dry_run(db_urls, tmp_path):
    gen = sandbox(db_urls, tmp_path, "generate", "--patrons", "400", "--seed", "3", "--as-of", "2026-11-20")
    assert gen.returncode == 0, gen.stderr
    assert re.search(r"5 agencies, 400 patrons, \d+ liabilities", gen.stdout)
    again = sandbox(db_urls, tmp_path, "generate", "--if-empty")
    assert again.returncode == 0 and "not regenerating" in again.stdout

    assess = cli(db_urls, tmp_path, "assess")
    assert assess.returncode == 0, assess.stderr
    total = re.search(r"eligible (\d+), blocked (\d+) \(C3 (\d+)", assess.stdout)
    assert total and int(total.group(1)) > 0 and int(total.group(3)) > 0   # the broken agencies are held (C3)

    summary = cli(db_urls, tmp_path, "summary")
    assert summary.returncode == 0 and total.group(0) in summary.stdout

    out = tmp_path / "dry"
    dry = cli(db_urls, tmp_path, "transfer", "--dry-run", "--out", str(out), "--batch-size", "100")
    assert dry.returncode == 0, dry.stderr
    data = json.loads((out / "summary.json").read_text())
    # The hourly assessment and the dry run agree: eligible means "its claim can be built".
    assert data["totals"]["claims"] == int(total.group(1))
    assert data["totals"].get("not_built:F2", 0) == int(re.search(r"F2 (\d+)", assess.stdout).group(1)) > 0
    assert len(list(out.rglob("batch-*.xml"))) == data["files"] > 0
    # Nothing the CLI printed holds a full CPR number.
    for proc in (gen, assess, summary, dry):
        assert full_cpr_numbers(proc.stdout + proc.stderr) == []


@pytest.mark.slow
def test_cli_transfer_without_a_serviceplatformen_connection_says_so_and_sends_nothing(db_urls, tmp_path):
    assert cli(db_urls, tmp_path, "init").returncode == 0
    proc = cli(db_urls, tmp_path, "transfer")
    assert proc.returncode == 2 and "serviceplatformen" in proc.stderr and "AIRFLOW_CONN_SERVICEPLATFORMEN" in proc.stderr
    assert cli(db_urls, tmp_path, "summary").returncode == 1        # refused before the run was recorded


# --- issue 16: settings and command-line values checked before any work ---------------------------

def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def sqlite_urls(folder) -> DatabaseUrls:
    """The two stores as SQLite files in ``folder`` (to see that nothing creates them)."""
    return DatabaseUrls(fbs=f"sqlite:///{folder / 'fbs.sqlite'}", ledger=f"sqlite:///{folder / 'ledger.sqlite'}")


@pytest.mark.parametrize("args", [("transfer", "--batch-size", "0"), ("transfer", "--batch-size", "-1"),
                                  ("transfer", "--dry-run", "--batch-size", "0"),
                                  ("transfer", "--dry-run", "--batch-size", "-1"),
                                  ("backfill", "--agency", "715100", "--cut-off-date", "2025-01-01", "--batch-size", "0")],
                         ids=lambda a: " ".join(a))
def test_item3_batch_size_zero_or_negative_is_refused_before_any_work(tmp_path, args):
    """Issue 16 item 3: a batch size of 0 or -1 looped for ever in build_batches; it is refused,
    naming the option and its range, before anything is read or written."""
    stores_dir = tmp_path / "stores"
    proc = cli(sqlite_urls(stores_dir), tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    assert "--batch-size" in proc.stderr and "allowed is a whole number from 1 to 5000" in proc.stderr
    assert files_under(stores_dir) == [] and files_under(tmp_path / "var") == []


def test_item3_FBS_DEBITOR_BATCH_SIZE_zero_is_refused_before_any_work(tmp_path):
    """Issue 16 item 3: FBS_DEBITOR_BATCH_SIZE=0 is refused with the variable, its value and its
    range (exit 3), before a database is opened."""
    stores_dir = tmp_path / "stores"
    stores_dir.mkdir()
    for args in (("init",), ("transfer",), ("transfer", "--dry-run")):
        proc = cli(sqlite_urls(stores_dir), tmp_path, *args, FBS_DEBITOR_BATCH_SIZE="0")
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "FBS_DEBITOR_BATCH_SIZE='0'" in proc.stderr and "from 1 to 5000" in proc.stderr
        assert "nothing was read or written" in proc.stderr
        assert files_under(stores_dir) == [] and files_under(tmp_path / "var") == []


@pytest.mark.slow
def test_item3_FBS_DEBITOR_CHUNK_SIZE_zero_is_refused_and_no_finding_is_resolved(db_urls, tmp_path):
    """Issue 16 item 3: with FBS_DEBITOR_CHUNK_SIZE=0 a run read no rows, ended 'success' and
    resolved every open finding as fixed. Now it is refused (exit 3) before the run starts: the
    ledger's open findings (T6, C3, ... as the last real run left them) stay open."""
    from fbs_debitor.core import ledger
    from fbs_debitor.core.stores import open_stores

    assert sandbox(db_urls, tmp_path, "generate", "--patrons", "150", "--seed", "5").returncode == 0
    assert cli(db_urls, tmp_path, "assess").returncode == 0
    stores = open_stores(db_urls)
    try:
        before = ledger.open_findings(stores.ledger)
        runs = ledger.get_run(stores.ledger).run_id
        assert len(before) > 0
        for args in (("assess",), ("transfer", "--dry-run"), ("reconcile",)):
            proc = cli(db_urls, tmp_path, *args, FBS_DEBITOR_CHUNK_SIZE="0")
            assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
            assert "FBS_DEBITOR_CHUNK_SIZE='0'" in proc.stderr and "from 100 to 500000" in proc.stderr
        assert ledger.open_findings(stores.ledger) == before
        assert ledger.get_run(stores.ledger).run_id == runs          # no run was recorded
    finally:
        stores.dispose()


@pytest.mark.parametrize("args", [("summary",), ("assess",), ("history", "1"), ("reconcile",), ("payments",),
                                  ("transfer", "--dry-run")], ids=lambda a: " ".join(a))
def test_item4_a_database_file_that_does_not_exist_is_refused_and_not_created(tmp_path, args):
    """Issue 16, what to build: a database URL that does not exist is an error (exit 3, the
    variable and the path named) unless creating it is asked for; only init creates the stores."""
    stores_dir = tmp_path / "stores"
    proc = cli(sqlite_urls(stores_dir), tmp_path, *args)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "FBS_DEBITOR_FBS_URL" in proc.stderr and "FBS_DEBITOR_LEDGER_URL" in proc.stderr
    assert f"the database file {stores_dir / 'ledger.sqlite'} does not exist" in proc.stderr
    assert files_under(stores_dir) == []
    created = cli(sqlite_urls(stores_dir), tmp_path, "init")
    assert created.returncode == 0 and files_under(stores_dir)[:2] == ["fbs.sqlite", "ledger.sqlite"]


def test_item4_sandbox_reconcile_on_a_missing_emulator_db_is_refused_and_creates_nothing(tmp_path):
    """Issue 16 item 4: ``reconcile --emulator-db URL`` created a database at any missing path."""
    urls = sqlite_urls(tmp_path / "stores")
    assert cli(urls, tmp_path, "init").returncode == 0
    missing = tmp_path / "nowhere" / "emulator.sqlite"
    for args in (("reconcile", "--emulator-db", f"sqlite:///{missing}"),
                 ("emulator-payments", "--db", f"sqlite:///{missing}")):
        proc = sandbox(urls, tmp_path, *args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"the database file {missing} does not exist" in proc.stderr and "emulator --db URL" in proc.stderr
        assert not missing.parent.exists()


@pytest.mark.slow
def test_item5_emulator_payments_with_the_default_seed_runs_again_any_time_later(db_urls, tmp_path):
    """Issue 16 item 5: a second ``emulator-payments`` with the default seed failed with an
    IntegrityError on emu_movement.movement_id (so ``./run main`` failed when run again 20 minutes
    or more later). Each later call delivers what fell due since, under new movement ids, and the
    payments run applies every file."""
    from debtor import connection_json

    from fbs_debitor.sandbox import emulator, emulator_payments

    assert sandbox(db_urls, tmp_path, "generate", "--patrons", "150", "--seed", "5").returncode == 0
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=emulator.vendors_from_fbs(db_urls.fbs)) as emu:
        assert cli(db_urls, tmp_path, "transfer", AIRFLOW_CONN_SERVICEPLATFORMEN=connection_json(emu.url)).returncode == 0
    counts = []
    for until in ("2026-11-20T12:00:00+01:00", "2026-11-20T12:20:00+01:00", "2026-11-20T13:20:00+01:00",
                  "2026-11-21T13:20:00+01:00"):
        files = sandbox(db_urls, tmp_path, "emulator-payments", "--db", emu_db, "--until", until)
        assert files.returncode == 0, files.stderr[-2000:]
        counts.append(len(emulator_payments.movements(emu_db)))
    assert counts == sorted(counts) and counts[-1] > counts[0] > 0
    pay = cli(db_urls, tmp_path, "payments")
    assert pay.returncode == 0, pay.stdout[-2000:] + pay.stderr[-2000:]
    applied = re.search(r"^movements: applied (\d+)", pay.stdout, re.M)
    assert applied and int(applied.group(1)) > 0
    check = sandbox(db_urls, tmp_path, "reconcile", "--emulator-db", emu_db)
    assert "every movement reported reached FBS exactly once or is held for review: OK" in check.stdout, check.stdout


@pytest.mark.slow
def test_item6_transfer_exits_4_while_change_messages_are_unconfirmed_and_0_once_answered(db_urls, tmp_path):
    """Issue 16 item 6: the CLI transfer exited 0 while change messages (U1-U4) were still
    unconfirmed. It exits 4 (documented), saying how many new claims and change messages are
    left; 0 only when everything sent was answered."""
    from debtor import connection_json

    from fbs_debitor.sandbox import emulator

    assert sandbox(db_urls, tmp_path, "generate", "--patrons", "150", "--seed", "5").returncode == 0
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    by_org_unit = emulator.vendors_from_fbs(db_urls.fbs)
    with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=by_org_unit) as emu:
        first = cli(db_urls, tmp_path, "transfer", AIRFLOW_CONN_SERVICEPLATFORMEN=connection_json(emu.url))
    assert first.returncode == 0, first.stderr[-2000:]
    assert sandbox(db_urls, tmp_path, "simulate-changes", "--per-kind", "3").returncode == 0
    # the debtor system answers nothing but 503 now: the change messages go out and stay unconfirmed
    with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=by_org_unit, fault_rate=1.0,
                           fault_kinds=("http503",)) as emu:
        down = cli(db_urls, tmp_path, "transfer", AIRFLOW_CONN_SERVICEPLATFORMEN=connection_json(emu.url))
    assert down.returncode == 4, down.stdout[-2000:] + down.stderr[-2000:]
    left = re.search(r"(\d+) new claim\(s\) and (\d+) change message\(s\) unconfirmed", down.stderr)
    assert left and int(left.group(1)) == 0 and int(left.group(2)) > 0
    with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=by_org_unit) as emu:
        back = cli(db_urls, tmp_path, "transfer", AIRFLOW_CONN_SERVICEPLATFORMEN=connection_json(emu.url))
    assert back.returncode == 0, back.stdout[-2000:] + back.stderr[-2000:]
    assert "unconfirmed" not in back.stderr
    assert re.search(r"changes to claims already sent \(U1-U4\): recorded 0, accepted (\d+)", back.stdout)


@pytest.mark.slow
def test_item8_a_password_in_the_endpoint_url_is_refused_and_neither_logged_nor_stored(db_urls, tmp_path):
    """Issue 16 item 8: a password in the endpoint URL was logged at WARNING and stored in
    outbox.last_error. The connection is refused (exit 2) with an error that does not echo it."""
    from debtor import connection_json
    from sqlalchemy import text

    from fbs_debitor.core.stores import open_stores
    from fbs_debitor.sandbox import emulator

    assert sandbox(db_urls, tmp_path, "generate", "--patrons", "60", "--seed", "5").returncode == 0
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=1.0, fault_kinds=("http503",)) as emu:
        url = emu.url.replace("http://", "http://fbs:S3cret-pw@")
        proc = cli(db_urls, tmp_path, "-v", "transfer", AIRFLOW_CONN_SERVICEPLATFORMEN=connection_json(url))
        assert emu.request_count == 0
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "user:password@" in proc.stderr and "S3cret-pw" not in proc.stdout + proc.stderr
    stores = open_stores(db_urls)
    try:
        with stores.ledger.connect() as conn:
            stored = conn.execute(text("SELECT COUNT(*) FROM outbox WHERE last_error LIKE '%S3cret%'")).scalar()
    finally:
        stores.dispose()
    assert stored == 0


@pytest.mark.slow
def test_cli_transfer_delivers_to_the_emulator_once_and_reconcile_agrees(db_urls, tmp_path):
    from debtor import connection_json

    from fbs_debitor.sandbox import emulator

    assert sandbox(db_urls, tmp_path, "generate", "--patrons", "150", "--seed", "5").returncode == 0
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=emulator.vendors_from_fbs(db_urls.fbs)) as emu:
        conn = connection_json(emu.url)
        first = cli(db_urls, tmp_path, "transfer", AIRFLOW_CONN_SERVICEPLATFORMEN=conn)
        second = cli(db_urls, tmp_path, "transfer", AIRFLOW_CONN_SERVICEPLATFORMEN=conn)
    assert first.returncode == 0, first.stderr[-2000:]
    sent = re.search(r"^sent (\d+): accepted (\d+), rejected (\d+)", first.stdout, re.M)
    assert sent and int(sent.group(1)) > 0 and int(sent.group(1)) == int(sent.group(2)) + int(sent.group(3))
    assert re.search(r"^sent 0: accepted 0, rejected 0, unconfirmed 0", second.stdout, re.M)
    held = len(emulator.claims(emu_db))
    assert held == int(sent.group(2))
    check = sandbox(db_urls, tmp_path, "reconcile", "--emulator-db", emu_db)
    assert check.returncode == 0 and f"holds {held} claim(s)" in check.stdout
    assert "held exactly once and holds FBS's current truth: OK" in check.stdout
    assert full_cpr_numbers(first.stdout + first.stderr + second.stdout + second.stderr) == []

    # P1/P2: the emulator delivers the day's files (each agency's vendor on its rhythm), the payments
    # run applies them, reconciliation covers payments too; a second payments run finds nothing new.
    inbox = tmp_path / "var" / "payments" / "inbox"
    files = sandbox(db_urls, tmp_path, "emulator-payments", "--db", emu_db, "--until", "2026-11-20T12:00:00+01:00",
                "--rate", "0.5")
    assert files.returncode == 0, files.stderr[-2000:]
    delivered = re.search(r"delivered (\d+) payment file\(s\)", files.stdout)
    assert delivered and int(delivered.group(1)) == len(list(inbox.iterdir())) > 0
    pay = cli(db_urls, tmp_path, "payments")
    assert pay.returncode == 0, pay.stdout[-2000:] + pay.stderr[-2000:]
    applied = re.search(r"^movements: applied (\d+)", pay.stdout, re.M)
    assert applied and int(applied.group(1)) > 0 and list(inbox.iterdir()) == []
    again = cli(db_urls, tmp_path, "payments")
    assert again.returncode == 0 and re.search(r"^movements: applied 0,", again.stdout, re.M)
    check = sandbox(db_urls, tmp_path, "reconcile", "--emulator-db", emu_db)
    assert check.returncode == 0, check.stdout[-3000:]
    assert "every movement reported reached FBS exactly once or is held for review: OK" in check.stdout
    assert full_cpr_numbers(files.stdout + pay.stdout + pay.stderr + check.stdout) == []


@pytest.mark.slow
def test_cli_changes_after_sending_reach_the_emulator_and_reconcile_proves_it_U1_U2_U3_M2(db_urls, tmp_path):
    from debtor import connection_json
    from sqlalchemy import text

    from fbs_debitor.core.stores import open_stores
    from fbs_debitor.sandbox import emulator

    assert sandbox(db_urls, tmp_path, "generate", "--patrons", "150", "--seed", "5").returncode == 0
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=emulator.vendors_from_fbs(db_urls.fbs)) as emu:
        conn = connection_json(emu.url)
        assert cli(db_urls, tmp_path, "transfer", AIRFLOW_CONN_SERVICEPLATFORMEN=conn).returncode == 0
        changed = sandbox(db_urls, tmp_path, "simulate-changes", "--per-kind", "3")
        # FBS changed, the debtor side not yet: the reconciliation lists the differences and fails
        stale = sandbox(db_urls, tmp_path, "reconcile", "--emulator-db", emu_db, "--out", str(tmp_path / "diff.csv"))
        run = cli(db_urls, tmp_path, "transfer", AIRFLOW_CONN_SERVICEPLATFORMEN=conn)
        again = cli(db_urls, tmp_path, "transfer", AIRFLOW_CONN_SERVICEPLATFORMEN=conn)
    assert changed.returncode == 0 and "increase 3" in changed.stdout and "write_down 3" in changed.stdout
    assert stale.returncode == 1 and "MISMATCH" in stale.stdout and "amount" in stale.stdout
    assert "not cancelled" in (tmp_path / "diff.csv").read_text()
    assert run.returncode == 0, run.stderr[-2000:]
    recorded = re.search(r"changes to claims already sent \(U1-U4\): recorded (\d+) \(([^)]*)\), accepted (\d+)",
                         run.stdout)
    assert recorded and int(recorded.group(1)) == int(recorded.group(3)) > 0
    assert "increase_create 3" in recorded.group(2) and "write_down 3" in recorded.group(2)
    assert re.search(r"changes to claims already sent \(U1-U4\): recorded 0, accepted 0", again.stdout)
    check = sandbox(db_urls, tmp_path, "reconcile", "--emulator-db", emu_db)
    assert check.returncode == 0 and "holds FBS's current truth: OK" in check.stdout, check.stdout
    # M2: one command shows the whole trail of an increased liability, CPR masked
    stores = open_stores(db_urls)
    try:
        with stores.ledger.connect() as c:
            lid = c.execute(text("SELECT liability_id FROM outbox WHERE change_kind = 'increase_create'")).scalar()
    finally:
        stores.dispose()
    history = cli(db_urls, tmp_path, "history", str(lid))
    assert history.returncode == 0
    for step in (f"{lid}:1", f"{lid}:2", f"{lid}:3", "increase_cancel", "increase_create", "accepted",
                 "change_recorded"):
        assert step in history.stdout
    assert re.search(rf"FBS-\d+-{lid}-1 ", history.stdout)     # the new claim's own FordringID, unmasked
    assert full_cpr_numbers(history.stdout + run.stdout + stale.stdout + changed.stdout) == []
    assert cli(db_urls, tmp_path, "history", "999999999").returncode == 1


def test_leak_detector_finds_cpr_numbers_and_ignores_uuids_and_timestamps():
    assert full_cpr_numbers("cpr=0707811234; other 070781-1234") == ["070781-****", "070781-****"]
    assert full_cpr_numbers("replacement 6707811230") == ["670781-****"]
    assert full_cpr_numbers("run b6eba218-4506-4a08-b1b7-0024260185d0 at 2026-11-21 1763712345.5") == []
    # a payment file's SHA-256 prefix in a hold task's id, a hex movement id: digests, not CPR numbers
    # (the id 'PAYHELD-a7210821234bcdef-P_OVERPAYMENT-L1021' made CI's leak check fail once)
    assert full_cpr_numbers("'task_id': 'PAYHELD-a7210821234bcdef-P_OVERPAYMENT-L1021', "
                            "movement EG-1f50ed0707811234dbd7dd8532812aa") == []
    # ...but a number glued to a short word or in a long run of digits alone is still looked at
    assert full_cpr_numbers("cpr0707811234 / 0707811234abc / id 12345678901234567 0707811234") == [
        "070781-****", "070781-****", "070781-****"]


# --- issue 20: every command described, wrong values named, each report in one place, a backfill whole ---

def _parser_of(serve, argv: list[str]):
    """The parser a command-line entry point builds inside itself (caught as it parses ``argv``)."""
    import argparse

    class Caught(Exception):
        pass

    def catch(parser, *_a, **_k):
        raise Caught(parser)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = catch
    try:
        serve(argv)
    except Caught as caught:
        return caught.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{serve} parsed nothing")


def _commands():
    """(command line, subcommand, its parser) for every subcommand of both command lines; the
    sandbox's emulator has a parser of its own (``emulator.serve``)."""
    from fbs_debitor import cli as runtime
    from fbs_debitor.sandbox import cli as sandbox_cli
    from fbs_debitor.sandbox import emulator

    out = []
    for prog, parser in (("fbs_debitor", runtime.build_parser()), ("fbs_debitor.sandbox", sandbox_cli.build_parser())):
        (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        for name, subparser in sub.choices.items():
            if prog == "fbs_debitor.sandbox" and name == "emulator":
                subparser = _parser_of(emulator.serve, [])
            out.append((prog, name, subparser))
    return out


def _undocumented(parser) -> list[str]:
    return [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
            if not (a.help or "").strip() or a.help == "==SUPPRESS=="]


COMMANDS = [(prog, name) for prog, name, _p in _commands()]
@pytest.mark.parametrize("prog,name", COMMANDS)
def test_issue20_every_subcommand_has_a_description_and_help_on_every_argument(prog, name):
    (parser,) = [p for pr, n, p in _commands() if (pr, n) == (prog, name)]
    assert (parser.description or "").strip(), f"python -m {prog} {name} --help has no description"
    assert _undocumented(parser) == [], f"python -m {prog} {name}: arguments without help"


def test_issue20_the_walk_covers_every_command_and_the_top_level_options():
    from fbs_debitor import cli as runtime
    from fbs_debitor.sandbox import cli as sandbox_cli

    names = {p: sorted(n for pr, n in COMMANDS if pr == p) for p in ("fbs_debitor", "fbs_debitor.sandbox")}
    assert {"summary", "backfill", "reconcile", "payments", "history", "settings"} <= set(names["fbs_debitor"])
    assert {"generate", "emulator", "reconcile", "simulate-cut-off"} <= set(names["fbs_debitor.sandbox"])
    for parser in (runtime.build_parser(), sandbox_cli.build_parser()):
        assert parser.description and [a for a in _undocumented(parser) if a != "command"] == []


def test_issue20_a_subcommands_help_opens_with_its_description(tmp_path):
    urls = sqlite_urls(tmp_path)
    proc = cli(urls, tmp_path, "summary", "--help")
    assert proc.returncode == 0
    assert "print the counts of a recorded run" in proc.stdout and "--kind {transfer,backfill," in proc.stdout


@pytest.mark.parametrize("args,named", [
    (("summary", "--kind", "bogus"), ["'bogus'", "transfer", "backfill", "payments", "dq_report", "manual"]),
    (("backfill", "--status", "--limit", "0"), ["'0'", "1 to 1000"]),
    (("history", "abc"), ["'abc'"]),
    (("summary", "--since", "yesterday"), ["'yesterday'", "YYYY-MM-DDTHH:MM:SS"]),
    (("reconcile", "--show", "-1"), ["'-1'"]),
])
def test_issue20_a_wrong_value_is_refused_with_a_message_naming_it_and_what_is_allowed(tmp_path, args, named):
    urls = sqlite_urls(tmp_path)
    proc = cli(urls, tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    for word in named:
        assert word in proc.stderr, proc.stderr
    assert files_under(tmp_path) == []                    # refused before anything was created


def test_issue20_sandbox_names_a_wrong_agency(tmp_path):
    proc = sandbox(sqlite_urls(tmp_path), tmp_path, "simulate-cut-off", "--agency", "DK-715100")
    assert proc.returncode == 2 and "'DK-715100'" in proc.stderr and "six digits" in proc.stderr


def test_issue20_each_reconciliation_report_is_written_in_one_folder_under_one_name(db_urls, tmp_path, monkeypatch):
    """The payments report: var/reports/payments/reconciliation-<id>.csv, whoever writes it (the
    payments run: its ledger run id, as the DAG; reconcile: its time); the claims report likewise
    in var/reports/claims/. Nothing anywhere else."""
    from fbs_debitor import cli as runtime
    from fbs_debitor.core import ledger
    from fbs_debitor.core.stores import open_stores

    assert cli(db_urls, tmp_path, "init").returncode == 0
    (tmp_path / "var" / "payments" / "inbox").mkdir(parents=True)
    pay = cli(db_urls, tmp_path, "payments")
    rec = cli(db_urls, tmp_path, "reconcile")
    assert pay.returncode == 0 and rec.returncode == 0, pay.stderr + rec.stderr
    stores = open_stores(db_urls)
    try:
        payments_run = ledger.get_run(stores.ledger, kind="payments").run_id
        monkeypatch.setenv("FBS_DEBITOR_VAR", str(tmp_path / "var"))
        # a claim the debtor side holds that was never accepted: the claims report has a difference
        assert not runtime.reconcile(stores, held={"FBS-715100-1": {}}, debtor={})
    finally:
        stores.dispose()
    reports = tmp_path / "var" / "reports"
    written = sorted(p.relative_to(reports).as_posix() for p in reports.rglob("*") if p.is_file())
    assert f"payments/reconciliation-{payments_run}.csv" in written
    assert len(written) == 4, written                  # payments run, reconcile, and the in-process call's two
    assert all(re.fullmatch(r"(payments|claims)/reconciliation-[0-9a-fT-]+\.csv", w) for w in written), written
    assert sum(w.startswith("claims/") for w in written) == 1
    assert f"var/reports/payments/reconciliation-{payments_run}.csv" in pay.stdout
    assert re.search(r"var/reports/payments/reconciliation-\d{8}T\d{6}-\d{6}\.csv", rec.stdout)


@pytest.mark.slow
def test_issue20_summary_of_a_backfill_is_headed_as_a_backfill_and_shows_every_month(db_urls, stores, tmp_path):
    import datetime as dt
    from decimal import Decimal

    import debtor
    import fbs_rows as fr
    from sqlalchemy import text

    from fbs_debitor.backfill import months as backfill
    from fbs_debitor.eligibility import cut_off
    from fbs_debitor.sandbox import emulator

    old_cut, new_cut = dt.date(2025, 4, 1), dt.date(2025, 1, 1)
    with stores.fbs.connect() as conn:
        fr.agency(conn, cut_off_date=old_cut)
        patron = fr.patron(conn)["patron_id"]
        for month in (1, 2, 3):                                             # 1 in January, 2 in Feb., 3 in March
            for day in range(month):
                fr.liability(conn, patron, kind="compensation", with_loan=False, acknowledged=True,
                             created_at=dt.datetime(2025, month, 10 + day, 9, 30), amount=Decimal("249.00"))
        conn.commit()
    assert cut_off.detect(stores) == []                                     # the cut-off date as first seen
    with stores.fbs.begin() as conn:
        conn.execute(text("UPDATE agency SET cut_off_date = :d"), {"d": new_cut})
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, debtor.client(emu.url) as client:
        plan = backfill.plan(stores, backfill.Request("715100", new_cut, batch_size=2))
        for chunk in plan.chunks:
            backfill.run_chunk(stores, plan.backfill_id, chunk["chunk_from"], client=client)
    assert backfill.finish(stores, plan.backfill_id)["status"] == "complete"

    whole = cli(db_urls, tmp_path, "summary", "--kind", "backfill")
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.splitlines()[0].startswith(f"fbs-debitor backfill {plan.backfill_id} of agency 715100")
    assert "transfer run" not in whole.stdout
    months = re.findall(r"^(2025-\d\d)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", whole.stdout, re.M)
    assert months == [(f"2025-0{m}", "done", str(m), str(m), str(m), "0") for m in (1, 2, 3)]
    assert re.search(r"^sent 6: accepted 6, rejected 0, unconfirmed 0", whole.stdout, re.M)   # all months added up

    march = backfill.chunk_run_id(plan.backfill_id, dt.date(2025, 3, 1))
    one = cli(db_urls, tmp_path, "summary", "--run", march)
    assert one.returncode == 0 and "month 2025-03" in one.stdout.splitlines()[0]
    assert re.search(r"^sent 3: accepted 3,", one.stdout, re.M)

    listing = cli(db_urls, tmp_path, "backfill", "--status")
    assert listing.returncode == 0
    (row,) = [line.split() for line in listing.stdout.splitlines() if line.startswith(plan.backfill_id)
              and "complete" in line]
    assert row[1:] == ["715100", "2025-01-01", "-", "2025-04-01", "real", "detected", "complete", "3/3", "6", "6",
                       "6", "0", "0", row[-1]]
    assert "{'" not in listing.stdout + whole.stdout                        # no raw Python dict
    assert full_cpr_numbers(whole.stdout + one.stdout + listing.stdout) == []


# --- issue 20: status and digest on the command line ------------------------------------------------

def _with_alarms(db_urls):
    from fbs_debitor.core import alarms
    from fbs_debitor.core.stores import init_stores, open_stores

    stores = open_stores(db_urls)
    try:
        init_stores(stores)
        alarms.raise_alarms(stores.ledger, "run-1", [
            alarms.Alarm(kind=alarms.HELD, audience=alarms.STAFF, agency_id="715100",
                         message="agency 715100 held until the setting is fixed in FBS (C3): age limit 0-21"),
            alarms.Alarm(kind=alarms.UNCONFIRMED, audience=alarms.OPERATOR,
                         message="3 claim(s) got no answer from the debtor system after every retry")])
    finally:
        stores.dispose()


def test_issue20_status_prints_the_overview_and_refuses_a_ledger_behind_the_code(db_urls, tmp_path):
    from sqlalchemy import text

    from fbs_debitor.core.stores import open_stores

    _with_alarms(db_urls)
    stores = open_stores(db_urls)
    with stores.ledger.begin() as conn:                 # a ledger from before migration 10 (the alarms)
        conn.execute(text("DROP TABLE alarm"))
        conn.execute(text("DELETE FROM schema_migration WHERE version = 10"))
    stores.dispose()
    behind = cli(db_urls, tmp_path, "status")
    assert behind.returncode == 2 and "lacks migration(s) 10" in behind.stderr and "Traceback" not in behind.stderr
    _with_alarms(db_urls)                               # migrates again, raises the alarms again
    out = cli(db_urls, tmp_path, "status")
    assert out.returncode == 0, out.stderr
    assert "Europe/Copenhagen" in out.stdout and "held_agency 715100" in out.stdout and "unconfirmed" in out.stdout
    wrong = cli(db_urls, tmp_path, "status", "--date", "30-11-2026")
    assert wrong.returncode == 2 and "30-11-2026" in wrong.stderr


def test_issue20_digest_prints_mails_once_as_new_then_as_still_open(db_urls, tmp_path, smtp_server):
    handler, smtp = smtp_server
    _with_alarms(db_urls)
    env = {"FBS_DEBITOR_SMTP_HOST": smtp.host, "FBS_DEBITOR_SMTP_PORT": str(smtp.port),
           "FBS_DEBITOR_SMTP_FROM": smtp.from_email, "FBS_DEBITOR_SMTP_STARTTLS": "0"}
    refused = cli(db_urls, tmp_path, "digest", **env)                 # no recipient set
    assert refused.returncode == 2 and "FBS_DEBITOR_ALERT_EMAIL" in refused.stderr and handler.received == []
    printed = cli(db_urls, tmp_path, "digest", "--print")
    assert printed.returncode == 0 and "[NEW]" in printed.stdout and "715100" in printed.stdout
    env["FBS_DEBITOR_ALERT_EMAIL"] = "drift@kommune.example"
    first = cli(db_urls, tmp_path, "digest", **env)
    assert first.returncode == 0, first.stderr
    second = cli(db_urls, tmp_path, "digest", **env)
    assert second.returncode == 0, second.stderr
    assert [rcpt for _f, rcpt, _b in handler.received] == [["drift@kommune.example"]] * 2
    bodies = [email.message_from_bytes(body, policy=email.policy.default).get_body().get_content()
              for _f, _r, body in handler.received]
    assert "[NEW]" in bodies[0] and "[NEW]" not in bodies[1] and "still open since" in bodies[1]
    assert full_cpr_numbers("".join(bodies)) == []
