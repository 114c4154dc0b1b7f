"""Benchmark: payments back (P1, P2) over a large municipality's sent claims.

    python benchmarks/bench_payments.py --patrons 20000 [--days 7] [--rate 0.05] [--seed 1]

Generates a synthetic municipality, moves every cut-off back and repairs the age limits (so most
open liabilities are sent), delivers them to the emulator on loopback, then lets the emulator
deliver ``--days`` days of payment files on each agency's vendor rhythm (KMD OPUS nightly, Prisme
hourly, EG every 15 minutes; ``--rate`` of the open claims paid or written off per day) and
measures:

1. the payments run over all those files (parse + schema, one transaction per file, write-back
   to FBS),
2. a second run over the same files delivered again (recognised, nothing applied),
3. the payments reconciliation against the emulator's movements.
Prints seconds, movements/second and peak memory. Not a test: figures go in closing notes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]
os.environ.setdefault("FBS_DEBITOR_FINGERPRINT_KEY", "benchmark-fingerprint-key-000001")

from backfill_setup import backfill_municipality, emulator_config
from sqlalchemy import text

from fbs_debitor.core import ledger
from fbs_debitor.delivery import serviceplatformen
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments import reconciliation as payment_reconciliation
from fbs_debitor.payments.inbox import FolderInbox
from fbs_debitor.sandbox import emulator, emulator_payments
from fbs_debitor.transfer.run import run_transfer


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patrons", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--as-of", default="2026-11-20")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        stores, fbs_url = backfill_municipality(tmp, args.patrons, args.seed, args.as_of)
        emu_db = f"sqlite:///{tmp}/emulator.sqlite"
        with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=emulator.vendors_from_fbs(fbs_url)) as emu, \
                serviceplatformen.Client(emulator_config(emu.url)) as client:
            run_transfer(stores, client, data_quality=False)
        with stores.ledger.connect() as conn:
            sent = conn.execute(text("SELECT COUNT(*) FROM claim WHERE state = 'accepted'")).scalar_one()
        with stores.fbs.connect() as conn:
            vendors = dict(conn.execute(text("SELECT agency_id, debtor_vendor FROM agency")).all())
        box = FolderInbox(Path(tmp) / "payments" / "inbox", own=True)
        until = dt.datetime.fromisoformat(args.as_of + "T12:00:00").astimezone()
        t = time.perf_counter()
        files = emulator_payments.deliver(emu_db, box.inbox, until, vendors, args.seed,
                                          emulator_payments.Mix(rate=args.rate),
                                          since=until - dt.timedelta(days=args.days))
        produced = time.perf_counter() - t
        delivered = len(emulator_payments.movements(emu_db))

        run_id = ledger.start_run(stores.ledger, "payments")
        t = time.perf_counter()
        done = payments.ingest(stores, box, run_id)
        ingest = time.perf_counter() - t
        ledger.finish_run(stores.ledger, run_id, "success")

        for f in box.archive_dir.iterdir():           # the vendor delivers everything again
            shutil.copy(f, box.inbox / ("again-" + f.name))
        run_id = ledger.start_run(stores.ledger, "payments")
        t = time.perf_counter()
        again = payments.ingest(stores, box, run_id)
        rerun = time.perf_counter() - t
        ledger.finish_run(stores.ledger, run_id, "success")

        t = time.perf_counter()
        report = payment_reconciliation.reconcile_payments(stores, emulator_payments.movements(emu_db))
        check = time.perf_counter() - t
        print(f"patrons {args.patrons}: {sent:,} claims sent and accepted")
        print(f"emulator: {len(files):,} files with {delivered:,} movements over {args.days} day(s) in {produced:.1f} s")
        print(f"payments run: {done['files_applied']:,} files, {done['applied']:,} movements applied, "
              f"{done['held']:,} held, {done['written_back']:,} written to FBS in {ingest:.1f} s = "
              f"{delivered / ingest:,.0f} movements/s")
        print(f"the same files again: {again['files_again']:,} recognised, "
              f"{again.get('applied', 0)} applied, in {rerun:.1f} s")
        print(f"reconciliation of {report.claims:,} claims with payments and {report.debtor_movements:,} movements "
              f"in {check:.1f} s: " + ("OK" if report.ok else f"{len(report.differences)} differences"))
        print(f"peak RSS: {peak_rss_mb():.0f} MB")
        stores.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
