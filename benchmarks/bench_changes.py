"""Benchmark: keeping sent claims true (U1-U4) over a large municipality's sent claims.

    python benchmarks/bench_changes.py --patrons 20000 [--per-kind 200] [--seed 1]

Generates a synthetic municipality, moves every cut-off back and repairs the age limits (so most
open liabilities are sent), delivers them to the emulator on loopback, then measures what the
hourly run adds for changes:

1. the change detection over every sent claim when nothing changed (the steady-state hourly cost:
   one narrow query per page, keyed prints compared, nothing rebuilt),
2. detection + sending after ``simulate-changes`` changed ``--per-kind`` liabilities of each kind
   (cancellations, write-downs, increases, new CPRs (each touches all of a patron's claims),
   repayments, closed, sent to collection),
3. the reconciliation of every claim against FBS.
Prints seconds, claims/second and peak memory. Not a test: figures go in closing notes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]
os.environ.setdefault("FBS_DEBITOR_FINGERPRINT_KEY", "benchmark-fingerprint-key-000001")

from backfill_setup import backfill_municipality, emulator_config
from common import peak_rss_mb
from sqlalchemy import text

from fbs_debitor.changes import detection as change_detection
from fbs_debitor.changes import sending as change_delivery
from fbs_debitor.changes.reconciliation import reconcile
from fbs_debitor.claims import fingerprints
from fbs_debitor.core import ledger
from fbs_debitor.delivery import serviceplatformen
from fbs_debitor.sandbox import emulator
from fbs_debitor.sandbox.change_simulator import simulate
from fbs_debitor.transfer.run import run_transfer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patrons", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-kind", type=int, default=200)
    parser.add_argument("--as-of", default="2026-11-20")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        stores, fbs_url = backfill_municipality(tmp, args.patrons, args.seed, args.as_of)
        emu_db = f"sqlite:///{tmp}/emulator.sqlite"
        with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=emulator.vendors_from_fbs(fbs_url)) as emu:
            config = emulator_config(emu.url)
            with serviceplatformen.Client(config) as client:
                t = time.perf_counter()
                run_transfer(stores, client, data_quality=False)
                delivered = time.perf_counter() - t
                with stores.ledger.connect() as conn:
                    sent = conn.execute(text("SELECT COUNT(*) FROM claim WHERE state = 'accepted'")).scalar_one()
                run_id = ledger.start_run(stores.ledger, "manual")
                t = time.perf_counter()
                idle = change_detection.detect_changes(stores, run_id)
                steady = time.perf_counter() - t
                changed = simulate(stores, seed=args.seed, per_kind=args.per_kind)
                t = time.perf_counter()
                recorded = change_detection.detect_changes(stores, run_id)
                detect = time.perf_counter() - t
                t = time.perf_counter()
                n = change_delivery.send_changes(stores, client, run_id, 500)
                send = time.perf_counter() - t
                ledger.finish_run(stores.ledger, run_id, "success")
        t = time.perf_counter()
        report = reconcile(stores, emulator.holdings(emu_db, fingerprints.verify_key(stores.ledger)))
        check = time.perf_counter() - t
        print(f"patrons {args.patrons}: {sent:,} claims sent and accepted (in {delivered:.1f} s)")
        print(f"change detection, nothing changed: {sum(idle.values())} recorded in {steady:.1f} s = "
              f"{sent / steady:,.0f} claims/s")
        print(f"after simulate-changes ({sum(changed.values())} liabilities/patrons changed): "
              f"{sum(recorded.values()):,} change messages recorded in {detect:.1f} s, {n:,} sent in {send:.1f} s")
        print(f"reconciliation of {report.checked:,} liabilities in {check:.1f} s: "
              + ("OK" if report.ok else f"{len(report.differences)} differences"))
        print(f"peak RSS: {peak_rss_mb():.0f} MB")
        stores.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
