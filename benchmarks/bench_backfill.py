"""Benchmark: a cut-off date moved back over a large backlog, sent by the backfill month by month.

    python benchmarks/bench_backfill.py --patrons 20000 [--years 10] [--rate 0] [--dq]

Generates a synthetic municipality whose liabilities span ``--years`` with the cut-off about a
year back (so most of them are the pre-cut-off backlog, in every status), repairs the two broken
age limits (C3) so every agency can be backfilled, runs a first transfer (it records the cut-off
dates), moves every cut-off back to the oldest liability's month, runs a second transfer (it
detects the move and must send nothing of the range) and then the backfill of each agency: plan,
every month, finish - the functions debitor_backfill's tasks call - against the emulator on
loopback (a thread in this process, competing for the same CPUs). ``--rate`` is the send-rate
ceiling in claims per second (0: none); ``--dq`` runs the GX checks per month as the DAG does.
Prints liabilities in range, claims sent, time, and peak memory after the first agency's first
months and at the end (flat memory: the second is not much above the first).
Not a test: figures go in closing notes, never into assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]

from backfill_setup import emulator_config
from common import peak_rss_mb
from sqlalchemy import text

from fbs_debitor.backfill import months as backfill
from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.core.stores import init_stores, open_stores
from fbs_debitor.delivery import serviceplatformen
from fbs_debitor.delivery.send_rate import Pacer
from fbs_debitor.eligibility import cut_off
from fbs_debitor.sandbox import emulator
from fbs_debitor.sandbox.generator import generate
from fbs_debitor.transfer.run import run_transfer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patrons", type=int, default=20000)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--as-of", default="2026-11-20")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rate", type=float, default=0, help="claims per second ceiling (0: none)")
    parser.add_argument("--dq", action="store_true", help="run the GX checks per month, as the DAG does")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        fbs_url = f"sqlite:///{tmp}/fbs.sqlite"
        stores = open_stores(DatabaseUrls(fbs=fbs_url, ledger=f"sqlite:///{tmp}/ledger.sqlite"))
        init_stores(stores)
        t = time.perf_counter()
        summary = generate(stores.fbs, patrons=args.patrons, seed=args.seed, as_of=dt.date.fromisoformat(args.as_of),
                           backlog_years=args.years)
        print(f"generated {summary.liability:,} liabilities over {args.years} years in {time.perf_counter() - t:.0f} s; "
              f"{summary.population['before_cut_off']:,} before the cut-off dates")
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE agency SET age_limit = 18"))
        emu_db = f"sqlite:///{tmp}/emulator.sqlite"
        with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=emulator.vendors_from_fbs(fbs_url)) as emu, \
                serviceplatformen.Client(emulator_config(emu.url)) as client:
            t = time.perf_counter()
            run_transfer(stores, client, batch_size=args.batch_size, data_quality=False)
            print(f"first transfer (from the cut-off dates): {len(emulator.claims(emu_db)):,} claims in "
                  f"{time.perf_counter() - t:.0f} s; peak {peak_rss_mb():.0f} MB")
            moved = cut_off.simulate_move(stores)
            to = next(iter(moved.values()))[1]
            t = time.perf_counter()
            held_before = len(emulator.claims(emu_db))
            run_transfer(stores, client, batch_size=args.batch_size, data_quality=False)
            print(f"cut-off moved back to {to} for {len(moved)} agencies; the next transfer sent "
                  f"{len(emulator.claims(emu_db)) - held_before} (must be 0) in {time.perf_counter() - t:.0f} s")
            dq = mock.patch("fbs_debitor.quality.checks.run_checks") if not args.dq else contextlib.nullcontext()
            in_range = claims = months = 0
            early_peak = None
            t0 = time.perf_counter()
            with dq:
                for agency_id in sorted(moved):
                    plan = backfill.plan(stores, backfill.Request(agency_id, to, batch_size=args.batch_size))
                    pacer = Pacer(args.rate) if args.rate else None
                    for i, chunk in enumerate(plan.chunks):
                        backfill.run_chunk(stores, chunk["backfill_id"], chunk["chunk_from"], client=client,
                                           pacer=pacer)
                        months += 1
                        if early_peak is None and i == 5:
                            early_peak = peak_rss_mb()
                    result = backfill.finish(stores, plan.backfill_id)
                    in_range += result["in_range"]
                    claims += result["claims"]
                    print(f"  agency {agency_id}: {result['in_range']:,} liabilities in range, {result['claims']:,} "
                          f"claims sent in {len(plan.chunks)} months; {time.perf_counter() - t0:.0f} s so far")
            seconds = time.perf_counter() - t0
        print(f"backfill: {in_range:,} liabilities in range, {claims:,} claims sent in {months} months in "
              f"{seconds:.0f} s = {claims / seconds:,.0f} claims/s (GX checks {'on' if args.dq else 'off'}, "
              f"rate ceiling {args.rate or 'none'})")
        print(f"peak RSS after the first 6 months: {early_peak:.0f} MB; at the end: {peak_rss_mb():.0f} MB")
        stores.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
