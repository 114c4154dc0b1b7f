"""``python -m fbs_debitor.sandbox …``: the demo's and the tests' tools, outside the runtime CLI.

The synthetic municipality (``generate``), the debtor-system emulator (``emulator``) and its payments
(``emulator-payments``: SF1590_B_01A calls to the inbound service with ``--inbound``, or files into
the inbox), changes and cut-off moves in the synthetic FBS, ``reconcile`` against what the emulator
holds, throwaway certificates (``pki``) and a local STS (``sts``). Nothing here is needed to run the
integration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

from sqlalchemy import text

from fbs_debitor import cli
from fbs_debitor.claims import fingerprints
from fbs_debitor.core import settings
from fbs_debitor.core.db import safe_url
from fbs_debitor.core.stores import Stores, init_stores, open_stores
from fbs_debitor.payments.inbound import FBS_ENTITY_ID
from fbs_debitor.sandbox import access_plan, emulator, emulator_payments, mailbox, pki, sts
from fbs_debitor.sandbox.change_simulator import simulate
from fbs_debitor.sandbox.cut_off_simulator import simulate_move
from fbs_debitor.sandbox.generator import MAX_MUNICIPALITIES, MIN_PATRONS_PER_MUNICIPALITY, generate
from fbs_debitor.sandbox.inbound_caller import InboundCaller, InboundRefused, InboundUnavailable
from fbs_debitor.tokens.sts import StsClient, StsError, StsSettings, TokenCache

EMULATOR_CREATED_BY = "the sandbox's emulator creates it: emulator --db URL"
whole, number = settings.whole, settings.number


def _stores() -> Stores:
    return open_stores(settings.database_urls())


def cmd_generate(args) -> int:
    stores = _stores()
    init_stores(stores)
    if args.if_empty:
        with stores.fbs.connect() as conn:
            existing = conn.execute(text("SELECT COUNT(*) FROM liability")).scalar()
        if existing:
            print(f"FBS extract already holds {existing} liabilities; not regenerating (drop --if-empty to regenerate)")
            return 0
    as_of = args.as_of or dt.date.today()
    if args.municipalities is not None and args.patrons < MIN_PATRONS_PER_MUNICIPALITY * args.municipalities:
        print(f"not generated: --municipalities {args.municipalities} needs --patrons of at least "
              f"{MIN_PATRONS_PER_MUNICIPALITY * args.municipalities} ({MIN_PATRONS_PER_MUNICIPALITY} per "
              "municipality)", file=sys.stderr)
        return cli.EXIT_REFUSED
    summary = generate(stores.fbs, patrons=args.patrons, seed=args.seed, as_of=as_of,
                       liabilities_per_patron=args.liabilities_per_patron, backlog_years=args.backlog_years,
                       cut_off_days=args.cut_off_days, municipalities=args.municipalities)
    counts = summary.as_dict()
    what = ("a synthetic municipality" if args.municipalities is None else
            f"{args.municipalities} synthetic municipalities")
    print(f"generated {what} (seed {args.seed}, as of {as_of}) into {safe_url(stores.fbs)}: "
          f"{counts['agency']} agencies, {counts['patron']} patrons, {counts['liability']} liabilities")
    if args.verbose:
        for key, value in counts.items():
            print(f"  {key}: {value}")
    return 0


def _inbound_sink(args) -> emulator_payments.InboundSink:
    """The call route: Serviceplatformen's certificate from --pki; tokens from --sts for --token-cvr."""
    certs = pki.paths(args.pki)
    token_source = None
    if args.token_cvr:
        cache = TokenCache(StsClient(StsSettings(endpoint=args.sts, client_cert=certs["serviceplatformen_cert"],
                                                 client_key=certs["serviceplatformen_key"],
                                                 ca_bundle=certs["ca_cert"])))

        def token_source(cvr: str) -> bytes:
            return cache.get(cvr, FBS_ENTITY_ID).assertion
    caller = InboundCaller(args.inbound, certs["serviceplatformen_cert"], certs["serviceplatformen_key"],
                           certs["ca_cert"], token_source, tuple(args.token_cvr))
    return emulator_payments.InboundSink(caller)


def cmd_emulator_payments(args) -> int:
    """The debtor emulator delivers its payments, each vendor on its rhythm (P1): one SF1590_B_01A call
    per municipality and delivery to the inbound service (--inbound), or files into the inbox."""
    db = args.db or emulator.default_db()       # --db was checked by its type; the default is checked here
    missing = None if args.db else settings.missing_database(db, "the emulator's database", EMULATOR_CREATED_BY)
    if missing:
        print(f"not delivered: {missing}", file=sys.stderr)
        return cli.EXIT_SETTINGS
    if args.inbound is None and (args.pki or args.sts or args.token_cvr):
        print("not delivered: --pki, --sts and --token-cvr go with --inbound URL (the call route)", file=sys.stderr)
        return cli.EXIT_REFUSED
    if args.inbound is not None:
        if args.inbox is not None:
            print("not delivered: --inbox (the file route) and --inbound (the call route) exclude each other",
                  file=sys.stderr)
            return cli.EXIT_REFUSED
        if not args.pki:
            print("not delivered: --inbound needs --pki DIR (Serviceplatformen's certificate and the CA; make it "
                  "with 'pki --dir DIR')", file=sys.stderr)
            return cli.EXIT_REFUSED
        absent = [p for k, p in pki.paths(args.pki).items()
                  if k in ("serviceplatformen_cert", "serviceplatformen_key", "ca_cert") and not Path(p).is_file()]
        if absent:
            print(f"not delivered: --pki {args.pki}: missing {', '.join(absent)} (make the set with 'pki --dir "
                  f"{args.pki}')", file=sys.stderr)
            return cli.EXIT_REFUSED
        if args.token_cvr and not args.sts:
            print("not delivered: --token-cvr needs --sts URL (where the tokens come from)", file=sys.stderr)
            return cli.EXIT_REFUSED
    stores = _stores()
    with stores.fbs.connect() as conn:
        agencies = conn.execute(text("SELECT agency_id, debtor_vendor, municipality_cvr FROM agency")).all()
    vendors = {a: v for a, v, _c in agencies}
    municipalities = {a: c for a, _v, c in agencies}
    until = args.until.astimezone() if args.until else dt.datetime.now().astimezone()
    since = args.since.astimezone() if args.since else None
    mix = emulator_payments.Mix(rate=args.rate, overpayments=args.overpayments, on_cancelled=args.on_cancelled)
    if args.inbound is None:
        folder = settings.payment_folders().path if args.inbox is None else Path(args.inbox)
        files = emulator_payments.deliver(db, folder, until, vendors, args.seed, mix, since, municipalities)
        per_vendor: dict[str, int] = {}
        for f in files:
            vendor = f.name.split("-")[1]
            per_vendor[vendor] = per_vendor.get(vendor, 0) + 1
        print(f"debtor emulator delivered {len(files)} payment file(s) into {folder}"
              + (f": {', '.join(f'{v} {n}' for v, n in sorted(per_vendor.items()))}" if files else
                 " (no delivery due since the last one, or nothing to pay)"))
        return 0
    try:
        sink = _inbound_sink(args)
    except (ValueError, OSError, StsError) as exc:
        print(f"not delivered: {exc}", file=sys.stderr)
        return cli.EXIT_REFUSED
    try:
        emulator_payments.deliver(db, sink, until, vendors, args.seed, mix, since, municipalities)
    except (InboundRefused, InboundUnavailable, StsError) as exc:
        print(f"debtor emulator: {len(sink.sent)} call(s) answered, then stopped: {exc} (what was answered is "
              "recorded; run it again to go on)", file=sys.stderr)
        return cli.EXIT_FAILED
    finally:
        sink.caller.close()
    per_vendor = {}
    for name, _landed in sink.sent:
        vendor = name.split("-")[1]
        per_vendor[vendor] = per_vendor.get(vendor, 0) + 1
    print(f"debtor emulator made {len(sink.sent)} SF1590_B_01A call(s) to {args.inbound}"
          + (f": {', '.join(f'{v} {n}' for v, n in sorted(per_vendor.items()))}" if sink.sent else
             " (no delivery due since the last one, or nothing to pay)"))
    return 0


def cmd_pki(args) -> int:
    made = pki.ensure(args.dir)
    print(f"sandbox certificates in {Path(made['ca_cert']).parent} ({', '.join(pki.NAMES)}; .crt and .key each)")
    return 0


def cmd_simulate_changes(args) -> int:
    done = simulate(_stores(), seed=args.seed, per_kind=args.per_kind)
    print("changed in FBS after the transfer: " + (", ".join(f"{k} {n}" for k, n in sorted(done.items())) or "nothing "
          "(no accepted claims yet: run the transfer first)"))
    return 0


def cmd_simulate_cut_off(args) -> int:
    moved = simulate_move(_stores(), args.to, args.agency or None)
    for agency_id, (old, new) in moved.items():
        print(f"agency {agency_id}: cut-off date {old} -> {new} in the synthetic FBS")
    if not moved:
        print("no agency's cut-off date changed")
    return 0


def cmd_reconcile(args) -> int:
    """Claims against what the emulator holds (exactly once, and FBS's current truth, U1-U4), and
    payments against what it delivered."""
    stores = _stores()
    init_stores(stores)
    held = emulator.holdings(args.emulator_db, fingerprints.verify_key(stores.ledger))
    ok = cli.reconcile(stores, held, emulator_payments.movements(args.emulator_db), show=args.show, out=args.out,
                       payments_out=args.payments_out)
    return 0 if ok else 1


def _https_url(text_: str) -> str:
    if not text_.startswith("https://") or len(text_) <= len("https://"):
        raise argparse.ArgumentTypeError(f"{text_!r}: allowed is an https:// URL (mutual TLS)")
    return text_


def _cvr(text_: str) -> str:
    if not (len(text_) == 8 and text_.isdigit() and text_[0] != "0"):
        raise argparse.ArgumentTypeError(f"{text_!r}: allowed is a municipality's CVR number, 8 digits, the first not 0")
    return text_


def agency_id(text_: str) -> str:
    """An FBS agency id as typed: six digits (the ISIL number without DK-)."""
    if not (len(text_) == 6 and text_.isdigit()):
        raise argparse.ArgumentTypeError(f"{text_!r}: allowed is an FBS agency, six digits (e.g. 715100)")
    return text_


def build_parser() -> argparse.ArgumentParser:
    parser, sub = cli.new_parser("python -m fbs_debitor.sandbox", __doc__)
    add = cli.add_command

    p = add(sub, "generate", "fill the FBS extract with a synthetic municipality (creates the FBS extract and the "
                             "ledger when missing)",
            "Five agencies (two with a broken age limit, held under C3), their branches, patrons and "
            "liabilities over --backlog-years, with the data-quality problems the checks look for. The same "
            "--seed and --as-of give the same municipality.\n\n"
            f"With --municipalities N (1-{MAX_MUNICIPALITIES}): N synthetic municipalities instead, sharing "
            "--patrons with a skewed spread of sizes (the largest about ten times the median), each with its own "
            "CVR, 1-3 agencies and one of the three debtor systems (all three present from N=3), with the same "
            "data-quality problems; at least 20 patrons per municipality.")
    p.add_argument("--patrons", type=whole(1, 1_000_000), default=5000, help="patrons to create, 1-1000000")
    p.add_argument("--seed", type=whole(0), default=42, help="random seed, a whole number from 0 (default 42)")
    p.add_argument("--as-of", type=settings.iso_date, help="the generator's 'today' (YYYY-MM-DD); default today")
    p.add_argument("--liabilities-per-patron", type=number(0, 100), default=10.0,
                   help="liabilities per patron on average, 0-100")
    p.add_argument("--backlog-years", type=whole(1, 50), default=6,
                   help="liabilities are created over this many years, 1-50")
    p.add_argument("--cut-off-days", type=whole(0, 36_500), default=365,
                   help="each agency's cut-off date lies about this many days back; all before it is the "
                        "pre-cut-off backlog (e.g. --backlog-years 10 for a large one)")
    p.add_argument("--municipalities", type=whole(1, MAX_MUNICIPALITIES), default=None,
                   help=f"national scale: this many municipalities, 1-{MAX_MUNICIPALITIES} (default: the five fixed "
                        "agencies)")
    p.add_argument("--if-empty", action="store_true", help="only when the extract has no liabilities yet")
    p.set_defaults(func=cmd_generate, creates=settings.STORES)

    # The emulator parses its own options (emulator.serve); this entry only lists it.
    add(sub, "emulator", "run the local SF1590 debtor-system emulator on loopback (--vendor KMD_OPUS|PRISME|EG; "
                         "'emulator --help' for its options); it creates its own database (--db) when missing",
        add_help=False)

    p = add(sub, "mailbox", "demo: a real SMTP server on loopback that keeps every message as an .eml file",
            "What './run main' points Airflow's smtp_default connection at: alerts, the integration team's "
            "digest and the staff reports land in --dir instead of leaving the machine. Runs until stopped.")
    mailbox.build_parser(p)
    p.set_defaults(func=cmd_mailbox, stores=())

    emulator_db = settings.existing_database("--emulator-db", EMULATOR_CREATED_BY)
    p = add(sub, "reconcile", "compare, per claim, what was sent, what the debtor emulator holds and what FBS "
                              "shows now; list every difference",
            "Claims: each accepted claim held exactly once, holding FBS's current truth (U1-U4); payments: what "
            "the emulator delivered against the ledger and FBS. Differences are printed and written to "
            "var/reports/claims/reconciliation-<time>.csv and var/reports/payments/reconciliation-<time>.csv. "
            "Exit 1 when there is any.")
    p.add_argument("--emulator-db", type=emulator_db, required=True,
                   help="SQLAlchemy URL of the emulator's database (must exist)")
    p.add_argument("--show", type=whole(0, 100_000), default=20,
                   help="differences to print, 0-100000 (all go to the CSV)")
    p.add_argument("--out", help="CSV of every claim difference (default var/reports/claims/reconciliation-<time>.csv)")
    p.add_argument("--payments-out", help=f"CSV of the payments report (default {cli.PAYMENTS_REPORT})")
    p.set_defaults(func=cmd_reconcile)

    p = add(sub, "emulator-payments", "demo: the debtor emulator delivers its payments, each vendor on its rhythm "
                                      "(KMD OPUS nightly, Prisme hourly, EG every 15 minutes): SF1590_B_01A calls to "
                                      "the inbound service (--inbound) or files into the inbox",
            "Only what fell due since the last delivery (kept in the emulator's database) up to --until. Each "
            "delivery holds one municipality's movements (agency.municipality_cvr). With --inbound URL each is one "
            "call to the inbound SF1590_B_01A service, made as Serviceplatformen (its certificate from --pki): "
            "certificate mode with the AuthorityContext header, or token mode (--token-cvr, tokens from --sts). "
            "Without --inbound each is a file written into the inbox (the route for vendors who deliver files).")
    p.add_argument("--db", type=settings.existing_database("--db", EMULATOR_CREATED_BY),
                   help="the emulator's database (default var/emulator/emulator.sqlite; must exist)")
    p.add_argument("--inbox", type=settings.folder, help="default FBS_DEBITOR_PAYMENT_INBOX or var/payments/inbox")
    p.add_argument("--until", type=settings.iso_time, help="deliver what is due up to this time (default now)")
    p.add_argument("--since", type=settings.iso_time,
                   help="on the first call: from this time (default one day before --until)")
    p.add_argument("--seed", type=whole(0), default=11, help="random seed, a whole number from 0 (default 11)")
    p.add_argument("--rate", type=number(0, 100), default=0.05,
                   help="share of open claims paid or written off per day, 0-100")
    p.add_argument("--overpayments", type=whole(0, 1000), default=0,
                   help="payments above the balance, per vendor, 0-1000")
    p.add_argument("--on-cancelled", type=whole(0, 1000), default=0,
                   help="payments on cancelled claims, per vendor, 0-1000")
    p.add_argument("--inbound", type=_https_url, metavar="URL",
                   help="call the inbound SF1590_B_01A service at this https URL instead of writing files (e.g. "
                        "https://localhost:8592/service/OIR/DaekningAfskrivningRegistreringAfsend/1)")
    p.add_argument("--pki", type=settings.folder, metavar="DIR",
                   help="with --inbound: the sandbox certificates ('pki --dir DIR'); calls as serviceplatformen.crt "
                        "and trusts ca.crt")
    p.add_argument("--sts", type=_https_url, metavar="URL",
                   help="with --token-cvr: the STS issue endpoint the tokens come from (the sandbox's 'sts')")
    p.add_argument("--token-cvr", type=_cvr, action="append", default=[], metavar="CVR",
                   help="a municipality that calls in token mode (repeatable); the others call in certificate mode")
    p.set_defaults(func=cmd_emulator_payments)

    p = add(sub, "pki", "demo: make the sandbox's throwaway certificates (CA, server, IT-system, STS signing, "
                        "Serviceplatformen, rogue) in a folder",
            "Writes <name>.crt and <name>.key (mode 0600) for each; an existing set is kept unless a file is missing "
            "or a certificate ends within a day. Prints the folder.")
    p.add_argument("--dir", type=settings.folder, required=True, help="the folder to write them into (made if missing)")
    p.set_defaults(func=cmd_pki, stores=())

    # The STS parses its own options (sts.serve); this entry only lists it.
    add(sub, "sts", "demo: run the sandbox's STS (KOMBIT's REST WS-Trust issue endpoint) over mutual TLS on loopback "
                    "('sts --help' for its options)",
        "Issues signed SAML holder-of-key tokens for the service agreements it is given (--agreement "
        "HOLDER:CVR:ENTITY_ID), with the certificates of --pki DIR.", add_help=False)

    add(sub, "access-plan", "demo: which municipality calls in token mode and which in certificate mode; the "
                            "STS's, emulator's and inbound service's options and the demo's connections "
                            "('access-plan --help')", add_help=False)

    p = add(sub, "simulate-changes", "demo: change transferred liabilities in the synthetic FBS (cancel, write "
                                     "down, increase, new CPR, repayment, close, ...)",
            "The next transfer run sends the changes (U1-U4); 'reconcile' shows them as differences until then.")
    p.add_argument("--seed", type=whole(0), default=7, help="random seed, a whole number from 0 (default 7)")
    p.add_argument("--per-kind", type=whole(0, 10_000), default=10,
                   help="liabilities changed per kind of change, 0-10000")
    p.set_defaults(func=cmd_simulate_changes)

    p = add(sub, "simulate-cut-off", "demo: move agencies' cut-off dates in the synthetic FBS (the next transfer "
                                     "run notices and hands the range to the backfill)")
    p.add_argument("--to", type=settings.iso_date,
                   help="the new cut-off date (default: the first of the month of the oldest liability)")
    p.add_argument("--agency", type=agency_id, action="append",
                   help="agency to move, six digits (repeatable; default every agency whose age limit is sane, C3)")
    p.set_defaults(func=cmd_simulate_cut_off)
    return parser


def cmd_mailbox(args) -> int:
    logging.getLogger("fbs_debitor").setLevel(logging.INFO)
    mailbox.serve(args.port, args.dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["emulator"]:
        # The emulator has its own parser (argparse cannot hand "--vendor ..." on from a subparser).
        logging.basicConfig(level=logging.INFO, format=cli.LOG_FORMAT)
        return emulator.serve(argv[1:])
    if argv[:1] == ["sts"]:
        # The STS has its own parser (sts.serve), as the emulator has.
        return sts.serve(argv[1:])
    if argv[:1] == ["access-plan"]:
        return access_plan.main(argv[1:])
    return cli.run_command(build_parser(), argv)
