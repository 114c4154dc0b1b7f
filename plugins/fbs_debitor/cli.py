"""``python -m fbs_debitor …``: the same operations the DAGs run, from a shell.

Every command first checks every setting (``core.settings``) and its own options against their
allowed ranges, and reads or writes nothing when one is wrong. The databases must exist; only
``init`` creates them (and the sandbox's ``generate``). Exit codes:

| code | meaning                                                                                  |
|------|------------------------------------------------------------------------------------------|
| 0    | done; for ``transfer``: everything sent was answered                                     |
| 1    | the run failed, or differences were found (``reconcile``, ``payments``, ``summary``, ...)  |
| 2    | refused: a command-line value outside its range, or a missing or wrong connection        |
|      | (``serviceplatformen``, SMTP); nothing was sent                                          |
| 3    | a setting (``FBS_DEBITOR_*``) is outside its allowed range, or a database is missing:    |
|      | nothing was read or written                                                              |
| 4    | ``transfer``: the run finished, but messages are still unconfirmed (new claims, change   |
|      | messages, or claims deferred while the debtor system did not answer): they are sent      |
|      | again under the same keys next run                                                       |
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import textwrap
from collections import Counter
from pathlib import Path

from fbs_debitor.backfill import months as backfill
from fbs_debitor.changes import reconciliation
from fbs_debitor.changes import sending as change_sending
from fbs_debitor.changes.history import format_history
from fbs_debitor.core import ledger, migrations, settings
from fbs_debitor.core.db import safe_url
from fbs_debitor.core.stores import Stores, init_stores, open_stores
from fbs_debitor.delivery import access, outbox, rejections, send_rate, serviceplatformen
from fbs_debitor.eligibility import delta
from fbs_debitor.eligibility.cut_off import waiting_backfills
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments import inbound_service, inbox
from fbs_debitor.payments import reconciliation as payment_reconciliation
from fbs_debitor.quality import checks as dq_checks
from fbs_debitor.quality import digest, mailer
from fbs_debitor.quality import report as dq_report
from fbs_debitor.status import overview as status_overview
from fbs_debitor.transfer import dry_run
from fbs_debitor.transfer.run import run_assessment, run_transfer
from fbs_debitor.transfer.summary import RUN_KINDS, format_backfill, format_backfills, format_payments_run, format_run

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_SETTINGS, EXIT_UNCONFIRMED = 0, 1, 2, settings.EXIT_CODE, 4


def _stores() -> Stores:
    return open_stores(settings.database_urls())


def _connection() -> bool:
    """The Serviceplatformen connections, checked before any work: at least the default
    (``AIRFLOW_CONN_SERVICEPLATFORMEN``) or a municipality's own (``..._<CVR>``), and the default as
    far as it goes alone (each municipality's merged settings are checked once FBS is read, and a
    municipality whose settings are wrong is held). False (said why) when wrong or missing."""
    lookup = access.env_lookup()
    try:
        if access.check_default(lookup) is None and not any(
                k.startswith(serviceplatformen.ENV_VAR + "_") for k in os.environ):
            raise serviceplatformen.ConfigError(
                f"no Serviceplatformen connection: define the Airflow Connection {serviceplatformen.CONN_ID!r} (or "
                f"{serviceplatformen.ENV_VAR} as JSON), or one per municipality ({serviceplatformen.ENV_VAR}_<CVR>)")
    except serviceplatformen.ConfigError as exc:
        print(f"not sent: {exc}", file=sys.stderr)
        return False
    return True


def _clients(stores: Stores) -> access.Clients:
    """One client per municipality of FBS, each under its own agreement (``delivery.access``); the
    municipalities whose access does not work are said and held, the others go."""
    clients = access.clients_for(stores.fbs, access.env_lookup())
    for m in clients.municipalities.values():
        if m.config is None:
            print(f"held: {m.line()}", file=sys.stderr)
    return clients


def cmd_init(args) -> int:
    stores = _stores()
    applied = init_stores(stores)
    print(f"FBS extract tables ready in {safe_url(stores.fbs)}")
    print(f"ledger at newest version in {safe_url(stores.ledger)}"
          + (f" (applied {', '.join(f'{v:04d}' for v in applied)})" if applied else " (nothing to apply)"))
    return 0


def cmd_assess(args) -> int:
    stores = _stores()
    init_stores(stores)
    run_id, counts = run_assessment(stores, kind="manual", data_docs_dir=dq_checks.data_docs_dir())
    print(format_run(ledger.get_run(stores.ledger, run_id), counts, stores.fbs))
    return 0


def format_window(window: dict, counts) -> str:
    """One line on what the run looked at (issue 19): the window, and for a sweep what the change
    markers had missed."""
    if window["mode"] == delta.SWEEP:
        missed = sum(n for (_a, c, _r), n in counts.items() if c == delta.MISSED)
        return (f"sweep: every liability looked at (FBS's mark {window['until']}); "
                f"missed by the change markers: {missed}")
    whole = f"; looked at whole: {', '.join(window['whole'])}" if window["whole"] else ""
    return (f"incremental: what FBS marked changed up to {window['until']} in {window['incremental']} "
            f"agency(ies){whole}")


def cmd_transfer(args) -> int:
    if not args.dry_run:
        if not _connection():
            return EXIT_REFUSED
    stores = _stores()
    init_stores(stores)
    if args.dry_run:
        summary = dry_run.run(stores, Path(args.out) if args.out else dry_run.default_dir("dry-run"),
                              batch_size=args.batch_size)
        print(dry_run.format_summary(summary))
        return EXIT_OK

    with _clients(stores) as client:
        run_id, _counts = run_transfer(stores, client, kind="manual", batch_size=args.batch_size,
                                       data_docs_dir=dq_checks.data_docs_dir(), sweep=args.sweep,
                                       checks_process=True)
    run = ledger.get_run(stores.ledger, run_id)
    counts = ledger.run_counts(stores.ledger, run_id)
    print(format_run(run, counts, stores.fbs))
    print(format_window(delta.open_window(stores, run_id), counts))
    if run.status != "success":
        return EXIT_FAILED
    outstanding = unconfirmed(counts, outbox.unconfirmed_total(stores.ledger))
    if outstanding:
        print(outstanding, file=sys.stderr)
        return EXIT_UNCONFIRMED
    return EXIT_OK


def unconfirmed(counts, in_outbox: int) -> str:
    """What a transfer run leaves without an answer, as one line (empty when nothing): its new
    claims and change messages still unconfirmed, the claims it deferred, and what earlier runs
    left that this one did not reach (``in_outbox``: every message still pending or sent)."""
    def total(category: str) -> int:
        return sum(n for (_a, c, _r), n in counts.items() if c == category)

    claims, changes, deferred = (total(outbox.UNCONFIRMED), total(change_sending.CHANGES_UNCONFIRMED),
                                 total("deferred"))
    earlier = max(in_outbox - claims - changes, 0)
    if not (claims or changes or deferred or earlier):
        return ""
    return (f"not everything sent was answered: {claims} new claim(s) and {changes} change message(s) unconfirmed"
            + (f", {deferred} claim(s) deferred" if deferred else "")
            + (f", {earlier} message(s) from earlier runs still unconfirmed" if earlier else "")
            + f"; they are sent again under the same keys next run (exit code {EXIT_UNCONFIRMED})")


def cmd_access(args) -> int:
    stores = _stores()
    try:
        with access.clients_for(stores.fbs, access.env_lookup()) as clients:
            held = 0
            for m in clients.municipalities.values():
                if m.config is not None and args.tokens and m.mode == "token":
                    try:
                        clients.for_agency(m.agencies[0])
                    except serviceplatformen.AccessHeld as exc:
                        print(f"municipality {m.cvr} ({', '.join(m.agencies)}): HELD: {exc}")
                        held += 1
                        continue
                print(m.line() + (" - token OK" if args.tokens and m.mode == "token" else ""))
                held += m.config is None
    finally:
        stores.dispose()
    if held:
        print(f"{held} municipality(ies) held: nothing of theirs is sent until fixed", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def cmd_report(args) -> int:
    smtp = None
    if args.email:
        try:
            smtp = mailer.settings_from_env()
        except mailer.SmtpNotConfigured as exc:
            print(f"not emailed: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    stores = _stores()
    init_stores(stores)
    day = args.date or dt.date.today()
    out = Path(args.out) if args.out else dq_report.report_dir(day)
    try:
        reports = dq_report.build_reports(stores, out, day)
    finally:
        stores.dispose()
    dq_report.write_manifest(out, reports, day)
    print(dq_report.format_reports(reports))
    print(f"agency overviews: {', '.join(sorted(str(p) for p in out.glob('*/index.html')))}")
    if smtp is None:
        return 0
    results = mailer.send_reports(reports, smtp)
    print(mailer.format_results(results))
    return 1 if any(r.status == mailer.FAILED for r in results) else 0


def cmd_status(args) -> int:
    stores = _stores()
    if _ledger_behind(stores):
        return EXIT_REFUSED
    try:
        overview = status_overview.build_overview(stores, day=args.date, reports_root=dq_report.reports_root())
    finally:
        stores.dispose()
    print(status_overview.format_overview(overview))
    return 0


def _ledger_behind(stores: Stores) -> bool:
    """A reading command refuses a ledger behind the code's migrations (and disposes the stores)."""
    behind = migrations.pending(stores.ledger)
    if behind:
        stores.dispose()
        print(f"the ledger lacks migration(s) {', '.join(map(str, behind))}: run 'python -m fbs_debitor init' "
              "(or any run) first; nothing was read", file=sys.stderr)
    return bool(behind)


def cmd_digest(args) -> int:
    smtp = None
    if not args.print_only:
        try:
            smtp = mailer.settings_from_env()
        except mailer.SmtpNotConfigured as exc:
            print(f"not mailed: {exc}; '--print' shows it without sending", file=sys.stderr)
            return EXIT_REFUSED
        if not settings.alert_email():
            print("not mailed: FBS_DEBITOR_ALERT_EMAIL names no recipient; '--print' shows it without sending",
                  file=sys.stderr)
            return EXIT_REFUSED
    stores = _stores()
    if _ledger_behind(stores):
        return EXIT_REFUSED
    try:
        if args.print_only:
            made = digest.build_digest(stores.ledger)
            print(f"Subject: {made.subject()}\n\n{made.text()}")
            return 0
        result = digest.send_digest(stores.ledger, smtp, settings.alert_email())
    finally:
        stores.dispose()
    print(f"{result.digest.subject()}: mailed to {', '.join(result.recipients)}")
    return 0


def cmd_summary(args) -> int:
    stores = _stores()
    run = ledger.get_run(stores.ledger, run_id=args.run, kind=None if args.run else args.kind)
    if run is None:
        print(f"no run {args.run} in the ledger" if args.run else
              f"no {args.kind + ' ' if args.kind else ''}run recorded in the ledger yet", file=sys.stderr)
        return 1
    if args.since and run.started_at < args.since:
        print(f"no run recorded since {args.since} (the newest started {run.started_at})", file=sys.stderr)
        return 1
    backfill_id = backfill.of_run(stores.ledger, run.run_id) if run.kind == "backfill" else None
    if backfill_id:
        return _backfill_summary(stores, run, backfill_id, whole=not args.run)
    fmt = format_payments_run if run.kind == "payments" else format_run
    print(fmt(run, ledger.run_counts(stores.ledger, run.run_id), stores.fbs))
    return 0 if run.status == "success" else 1


BACKFILL_SETTLED = ("complete", "stopped", "superseded")   # a backfill in one of these has nothing left to do


def _backfill_summary(stores: Stores, run: ledger.RunInfo, backfill_id: str, whole: bool) -> int:
    """A backfill month's run belongs to a backfill: ``whole`` shows the backfill with every month
    (``--kind backfill``), otherwise the one month (``--run``), headed as a backfill's."""
    b = backfill.status(stores.ledger, backfill_id=backfill_id, limit=1)[0]
    months = backfill.months_of(stores.ledger, backfill_id)
    if whole:
        counts = sum((ledger.run_counts(stores.ledger, m["run_id"]) for m in months if m["run_id"]), Counter())
        print(format_backfill(b, months, counts, stores.fbs))
        return 0 if b["status"] in BACKFILL_SETTLED else 1
    month = next(m["from"][:7] for m in months if m["run_id"] == run.run_id)
    title = (f"fbs-debitor backfill {backfill_id} of agency {b['agency']}, month {month} (ledger run {run.run_id}): "
             f"{run.status}" + (f" - {run.error}" if run.error else ""))
    print(format_run(run, ledger.run_counts(stores.ledger, run.run_id), stores.fbs, title=title))
    return 0 if run.status == "success" else 1


def reconcile(stores: Stores, held: dict | None = None, debtor=None, show: int = 20, out: str | None = None,
              payments_out: str | None = None) -> bool:
    """Claims against what the debtor side holds (``held``: exactly once, and FBS's current truth,
    U1-U4), and payments (what was sent, what the debtor system reported paid or written off
    (``debtor``), what FBS shows); every difference printed (the first ``show``) and written to a
    CSV. True when there is none."""
    stamp = f"{dt.datetime.now():%Y%m%dT%H%M%S-%f}"   # (two in the same second write two reports)
    ok = True
    if held is not None:
        report = reconciliation.reconcile(stores, held)
        print(report.summary())
        if not report.ok:
            ok = False
            _print_differences(report.differences, show, lambda d: f"FBS {d.fbs}; debtor side {d.debtor}; "
                                                                   f"ledger {d.ledger}")
            print(f"every difference: {report.write_csv(Path(out) if out else claims_report_path(stamp))}")
    payments = payment_reconciliation.reconcile_payments(stores, debtor)
    print(payments.summary())
    path = payments.write_csv(Path(payments_out) if payments_out else payment_reconciliation.report_path(stamp))
    if not payments.ok:
        ok = False
        _print_differences(payments.differences, show, lambda d: f"sent {d.sent}; debtor reported {d.reported}; "
                                                                 f"ledger {d.ledger}; FBS {d.fbs}")
    print(f"payments report (every difference): {path}")
    return ok


def claims_report_path(stamp: str) -> Path:
    """The one place the claims reconciliation report is written (only on differences):
    ``reports/claims/reconciliation-<time>.csv`` in the shared store (``FBS_DEBITOR_STORAGE_URL``,
    default ``var/``), next to the payments' in ``reports/payments/``."""
    return dq_report.reports_root() / "claims" / f"reconciliation-{stamp}.csv"


def _print_differences(differences, show: int, values) -> None:
    """The first ``show`` differences, one line each (``values(d)`` says what each side holds)."""
    for d in differences[:show]:
        print(f"  liability {d.liability_id or '-'} {d.fordring_id}: {d.what}: {values(d)}")
    if len(differences) > show:
        print(f"  ... and {len(differences) - show} more")


def cmd_reconcile(args) -> int:
    """Payments: what was sent, what the debtor system reported, what FBS shows (the sandbox's
    ``reconcile --emulator-db`` also compares the claims the emulator holds)."""
    stores = _stores()
    init_stores(stores)
    return 0 if reconcile(stores, show=args.show, payments_out=args.payments_out) else 1


def cmd_payments(args) -> int:
    """Apply the debtor system's waiting payment files now (what the debitor_payments DAG runs)."""
    if args.dismiss and not args.note:
        print("--dismiss needs --note (who reviewed it and why)", file=sys.stderr)
        return EXIT_REFUSED
    try:
        folders = settings.payment_folders(args.inbox, inbox_name="--inbox" if args.inbox else
                                           "FBS_DEBITOR_PAYMENT_INBOX")
    except settings.SettingError as exc:
        return _refused(exc)
    stores = _stores()
    init_stores(stores)
    if args.dismiss:
        found = payments.dismiss(stores.ledger, stores.fbs, args.dismiss, args.note)
        print(f"movement {args.dismiss} dismissed after review" if found else
              f"no held movement {args.dismiss}", file=sys.stdout if found else sys.stderr)
        return 0 if found else 1
    box = inbox.open_inbox(folders.inbox)
    try:
        box.check()
    except inbox.InboxLayoutError as exc:
        print(f"payments refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    run_id = ledger.start_run(stores.ledger, "payments")
    left = None
    try:
        try:
            payments.ingest(stores, box, run_id)
        except payments.FilesLeft as exc:   # every other file was done; these wait for the next run
            left = str(exc)
        counts = payments.record_run_counts(stores.ledger, run_id)
    except BaseException as exc:
        ledger.finish_run(stores.ledger, run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    ledger.finish_run(stores.ledger, run_id, "failed" if left else "success", left)
    print(format_payments_run(ledger.get_run(stores.ledger, run_id), counts, stores.fbs))
    if left:
        print(f"payments: {left}", file=sys.stderr)
    report = payment_reconciliation.reconcile_payments(stores)
    print(report.summary())
    print(f"payments report (every difference): {report.write_csv(payment_reconciliation.report_path(run_id))}")
    return EXIT_OK if report.ok and not left else EXIT_FAILED


def cmd_requeue(args) -> int:
    """An operator sends a rejected claim again under its next FordringID generation (next run)."""
    stores = _stores()
    init_stores(stores)
    try:
        print(rejections.requeue(stores, args.liability_id, args.note))
    except (LookupError, ValueError) as exc:
        print(f"requeue: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_history(args) -> int:
    text_ = format_history(_stores(), args.liability_id)
    if text_ is None:
        print(f"liability {args.liability_id} is known neither in FBS nor in the ledger", file=sys.stderr)
        return 1
    print(text_)
    return 0


def cmd_backfill(args) -> int:
    listing = args.waiting or args.status
    request = None
    if not listing:   # the request and the connection are checked before anything is read or written
        try:
            request = backfill.parse_request(args.agency, args.cut_off_date, args.dry_run, args.batch_size)
        except backfill.BackfillError as exc:
            print(f"not started: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if not args.dry_run:
            if not _connection():
                return EXIT_REFUSED
    stores = _stores()
    init_stores(stores)
    if args.waiting:     # for scripts: one line per backfill detection handed over, not yet taken up
        for b in waiting_backfills(stores.ledger):
            print(b["backfill_id"], b["agency"], b["cut_off_date"], b["batch_size"])
        return 0
    if args.status:
        print(format_backfills(backfill.status(stores.ledger, args.agency, args.limit)))
        return 0
    try:
        plan = backfill.plan(stores, request)
    except backfill.BackfillError as exc:
        print(f"not started: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(plan.note)
    if not plan.backfill_id:
        return 0
    client = None
    if not plan.dry_run:
        client = _clients(stores)

    pacer = None if plan.dry_run else send_rate.pacer_for_backfill()
    failed = 0
    try:
        for chunk in plan.chunks:
            try:
                result = backfill.run_chunk(stores, chunk["backfill_id"], chunk["chunk_from"], client=client,
                                            pacer=pacer)
            except Exception as exc:  # the chunk is recorded as failed; the others still run
                failed += 1
                print(f"  {chunk['chunk_from'][:7]}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            print(f"  {chunk['chunk_from'][:7]}: {result['status']}, {result.get('claims', 0)} claim(s)"
                  + (" (done earlier)" if result.get("earlier") else ""))
    finally:
        if client is not None:
            client.close()
    try:
        result = backfill.finish(stores, plan.backfill_id)
    except backfill.ChunkIncomplete as exc:
        print(f"not complete: {exc}", file=sys.stderr)
        return 1
    print(f"backfill {plan.backfill_id} {result['status']}: {result['claims']} claim(s) "
          f"{'written' if plan.dry_run else 'sent'}, {result['in_range']} liabilities in range"
          + (f"; summary {result['summary']}" if result.get("summary") else "")
          + (f"; the hourly run now transfers from {result['hourly_from']}" if result.get("hourly_from") else ""))
    return 1 if failed else 0


def cmd_settings(args) -> int:
    """Every setting with its value (secrets not shown) and allowed range; exit 3 when one is wrong."""
    for name, shown, allowed in settings.describe():
        print(f"{name} = {shown}\n    allowed: {allowed}")
    problems = settings.validate(stores=())
    _warn_unknown()
    if problems:
        return _refused(settings.SettingError(problems), read_nothing=False)
    print("every setting is within its allowed range")
    return EXIT_OK


def _warn_unknown() -> None:
    for name in settings.unknown():
        print(f"warning: {name} is not a setting of fbs-debitor (a typo?): ignored", file=sys.stderr)


def _refused(exc: settings.SettingError, read_nothing: bool = True) -> int:
    for line in exc.problems:
        print(f"setting refused: {line}", file=sys.stderr)
    if read_nothing:
        print("nothing was read or written: correct the setting and run again", file=sys.stderr)
    return EXIT_SETTINGS


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def new_parser(prog: str, description: str | None) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A command line with ``-v`` and one subcommand required (this one's and the sandbox's)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    return parser, parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                         help="one of the commands below; 'COMMAND --help' describes it")


def add_command(sub: argparse._SubParsersAction, name: str, summary: str, details: str = "",
                **kwargs) -> argparse.ArgumentParser:
    """A subcommand: ``summary`` is its line in the list of commands and, with ``details`` (blank
    lines between paragraphs), the description its ``--help`` opens with."""
    paragraphs = [summary, *[p for p in details.split("\n\n") if p.strip()]]
    description = "\n\n".join(textwrap.fill(" ".join(p.split()), 100) for p in paragraphs)
    return sub.add_parser(name, help=summary, description=description,
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def run_command(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Parse (each value in its range), check every setting and that the databases the command uses
    exist (``stores``, unless it ``creates`` them): all before any work. Then run it."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format=LOG_FORMAT)
    if args.func is not cmd_settings:
        try:
            settings.check(stores=getattr(args, "stores", settings.STORES), create=getattr(args, "creates", ()))
        except settings.SettingError as exc:
            return _refused(exc)
        _warn_unknown()
    return args.func(args)


LIABILITY_ID = settings.whole(1, 2 ** 63 - 1)
PAYMENTS_REPORT = "var/reports/payments/reconciliation-<time>.csv"


def build_parser() -> argparse.ArgumentParser:
    parser, sub = new_parser("python -m fbs_debitor", __doc__)

    p = add_command(sub, "init", "create the FBS extract tables (demo) and migrate the ledger; the one command "
                                 "that creates missing databases",
                    "Uses FBS_DEBITOR_FBS_URL and FBS_DEBITOR_LEDGER_URL (default: SQLite files under var/). "
                    "Running it again applies only the ledger migrations not applied yet.")
    p.set_defaults(func=cmd_init, creates=settings.STORES)

    p = add_command(sub, "settings", "print every FBS_DEBITOR_* setting, its value and allowed range; exit 3 "
                                     "when one is outside it",
                    "Secrets are not shown. An FBS_DEBITOR_* variable that is not a setting is named as a "
                    "probable typo.")
    p.set_defaults(func=cmd_settings)

    p = add_command(sub, "assess", "data-quality checks and eligibility now (T1-T6), record the run, "
                                   "print the summary",
                    "Sends nothing. The run is recorded in the ledger (kind manual) and its findings go to "
                    "the staff reports and var/data_docs/.")
    p.set_defaults(func=cmd_assess)

    batch = settings.whole(1, settings.MAX_BATCH_SIZE)
    batch_help = f"claims per message, 1-{settings.MAX_BATCH_SIZE} (default FBS_DEBITOR_BATCH_SIZE, 500)"
    p = add_command(sub, "transfer", "build the SF1590 claims due now and send them through Serviceplatformen; "
                                     "--dry-run writes them as XML files instead",
                    "The connection is AIRFLOW_CONN_SERVICEPLATFORMEN. What DAG debitor_transfer does, as one "
                    f"run of kind manual. Exit {EXIT_UNCONFIRMED} when messages are left unconfirmed: they are "
                    "sent again under the same keys next run.")
    p.add_argument("--dry-run", action="store_true", help="write the batches and a summary, send nothing")
    p.add_argument("--out", type=settings.folder, default=None, help="output folder (default var/dry-run)")
    p.add_argument("--batch-size", type=batch, default=None, help=batch_help)
    p.add_argument("--sweep", action="store_true", help="look at every liability, not only what FBS marked changed "
                   "since the last run (the nightly sweep of DAG debitor_sweep), and say what the markers missed")
    p.set_defaults(func=cmd_transfer)

    p = add_command(sub, "report", "write the staff data-quality reports (HTML + CSV per branch); "
                                   "--email sends them",
                    "One folder per day (var/reports/<date>/<agency>/<branch>/), an overview per agency and a "
                    "manifest.json, as DAG debitor_dq_report writes them.")
    p.add_argument("--out", type=settings.folder, help="output folder (default var/reports/<date>)")
    p.add_argument("--date", type=settings.iso_date, help="the report's day, YYYY-MM-DD (default today)")
    p.add_argument("--email", action="store_true", help="email each branch its report (FBS_DEBITOR_SMTP_* settings)")
    p.set_defaults(func=cmd_report)

    p = add_command(sub, "reconcile", "compare, per claim with payments, what was sent, what the debtor system "
                                      "reported and what FBS shows now; list every difference",
                    f"Every difference goes to a CSV, by default {PAYMENTS_REPORT} (each payments run writes "
                    "var/reports/payments/reconciliation-<run>.csv). Exit 1 when there is any. The sandbox's "
                    "'reconcile --emulator-db' also compares the claims the debtor emulator holds.")
    p.add_argument("--show", type=settings.whole(0, 100_000), default=20,
                   help="differences to print, 0-100000 (all go to the CSV)")
    p.add_argument("--payments-out", help=f"CSV of the payments report (default {PAYMENTS_REPORT})")
    p.set_defaults(func=cmd_reconcile)

    p = add_command(sub, "payments", "apply the debtor system's waiting payment files (P1, P2) and write them to "
                                     "FBS; --dismiss a held movement after review",
                    "What DAG debitor_payments does, as one run of kind payments; its reconciliation report "
                    "goes to var/reports/payments/reconciliation-<run>.csv.")
    p.add_argument("--inbox", type=settings.folder,
                   help="the inbox folder (default FBS_DEBITOR_PAYMENT_INBOX or var/payments/inbox); named inbox "
                        "unless FBS_DEBITOR_PAYMENT_ARCHIVE and _QUARANTINE are set")
    p.add_argument("--dismiss", metavar="BEVAEGELSE_ID", help="a held movement reviewed and not to be applied")
    p.add_argument("--note", help="who reviewed it and why (with --dismiss)")
    p.set_defaults(func=cmd_payments)

    p = add_command(sub, "requeue", "send a claim the debtor system rejected again, under the next generation "
                                    "of its FordringID, in the next transfer run",
                    "For a cause outside FBS's data: a claim type mapped since (M3), a manual process agreed "
                    "(I3). A rejection whose data staff corrected in FBS goes again by itself.")
    p.add_argument("liability_id", type=LIABILITY_ID, help="the rejected claim's FBS liability id (a whole number)")
    p.add_argument("--note", help="who decided and why (kept in the audit trail, CPR masked)")
    p.set_defaults(func=cmd_requeue)

    p = add_command(sub, "history", "the audit trail of one liability (M2): every message, answer, change, "
                                    "task and payment, oldest first (CPR masked)")
    p.add_argument("liability_id", type=LIABILITY_ID, help="the FBS liability id (a whole number)")
    p.set_defaults(func=cmd_history)

    p = add_command(sub, "backfill", "send an agency's older liabilities month by month after its cut-off date "
                                     "moved back (T3), as DAG debitor_backfill does; --dry-run sends nothing",
                    "With --agency and --cut-off-date: plan the backfill (or resume an unfinished one with the "
                    "same request) and run its months. --status lists the backfills as a table; 'summary --kind "
                    "backfill' shows the newest one whole, month by month.")
    p.add_argument("--agency", help="FBS agency: six digits, the ISIL number without DK- (e.g. 715100)")
    p.add_argument("--cut-off-date", help="the new cut-off date, YYYY-MM-DD, from 2000-01-01 up to today")
    p.add_argument("--dry-run", action="store_true", help="write what would be sent under var/backfill/<id>/")
    p.add_argument("--batch-size", type=batch, default=None, help=batch_help)
    p.add_argument("--status", action="store_true", help="list the newest backfills (of --agency, when given): "
                                                         "months done, claims sent, the debtor system's answers")
    p.add_argument("--limit", type=settings.whole(1, 1000), default=10, help="with --status: how many, 1-1000")
    p.add_argument("--waiting", action="store_true", help="list the backfills the transfer run handed over that "
                                                          "no backfill run has taken up yet")
    p.set_defaults(func=cmd_backfill)

    p = add_command(sub, "summary", "print the counts of a recorded run (default: the newest)",
                    "A transfer run per agency and rule; a payments run per agency and kind of movement; for "
                    "--kind backfill the newest backfill whole: each of its months and all its months' counts "
                    "added up. Exit 1 when the run did not succeed (a backfill: not complete).")
    p.add_argument("--run", help="a run id from the ledger (a backfill month's run shows that month)")
    p.add_argument("--kind", choices=RUN_KINDS, default=None, help="the newest run of this kind")
    p.add_argument("--since", type=settings.iso_time,
                   help="fail unless that run started at or after this local time (YYYY-MM-DDTHH:MM:SS)")
    p.set_defaults(func=cmd_summary)

    p = add_command(sub, "access", "check each municipality's Serviceplatformen access: mode, endpoint, agreement; "
                                   "exit 2 when one is held",
                    "Reads the connections AIRFLOW_CONN_SERVICEPLATFORMEN (the default) and "
                    "AIRFLOW_CONN_SERVICEPLATFORMEN_<CVR> (a municipality's own, laid over the default) as the "
                    "DAGs read the Airflow Connections, for every municipality of FBS (agency.municipality_cvr), "
                    "and validates each municipality's settings. With --tokens, a token is asked of the STS for "
                    "each municipality in token mode. No secret is printed: modes, endpoints, agreement UUIDs "
                    "and entity ids only.")
    p.add_argument("--tokens", action="store_true",
                   help="also ask the STS for each token-mode municipality's token (its agreement is checked)")
    p.set_defaults(func=cmd_access, stores=("fbs",))

    add_command(sub, "inbound", "run the inbound SF1590_B_01A service: the debtor systems' payment calls, landed as "
                                "files in the payments inbox ('inbound --help' for its options)",
                "HTTPS admitting only Serviceplatformen's certificate; per municipality a token (--token-cvr) or "
                "an AuthorityContext (--certificate-cvr); each accepted call is written to the inbox and flushed "
                "to disk before its receipt is returned, and a repeated call gets the first receipt. "
                "docs/deployment.md, 'The inbound payments service'.", add_help=False)

    p = add_command(sub, "status", "print, per municipality, what went today: the status page as text",
                    "The same overview as the status page in the Airflow UI (docs/status-page.md): the newest "
                    "run of each kind, claims sent / accepted / rejected / held, changes, payments received and "
                    "applied, the reconciliation result and the open alarms, per municipality. Counts and ids "
                    "only.")
    p.add_argument("--date", type=settings.iso_date, help="the day, YYYY-MM-DD (default today in Copenhagen)")
    p.set_defaults(func=cmd_status)

    p = add_command(sub, "digest", "mail the integration team the daily digest of open alarms (or print it)",
                    "What debitor_dq_report's email_digest task sends: the open alarms (the integration's own "
                    "first), held agencies (C3), other conditions staff must fix, blocked liabilities per agency "
                    "and alarms resolved since the last digest; an alarm not said before is marked NEW. Sent "
                    "through FBS_DEBITOR_SMTP_* to FBS_DEBITOR_ALERT_EMAIL, after which its alarms count as "
                    "said. Exit 2 when no SMTP server or no recipient is set.")
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the digest instead; send nothing and mark nothing as said")
    p.set_defaults(func=cmd_digest)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["inbound"]:
        # The inbound service has its own parser and settings (payments.inbound_service.main).
        return inbound_service.main(argv[1:])
    return run_command(build_parser(), argv)
