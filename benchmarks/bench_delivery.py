"""Benchmark: delivering a backfill to the debtor emulator over HTTP (outbox, SOAP, receipts).

    python benchmarks/bench_delivery.py --patrons 20000 [--seed 1] [--batch-size 500]

Generates a synthetic municipality, moves every agency's cut-off date back and repairs the broken
age limits (so most open liabilities become claims, as in a backfill), starts the emulator on
loopback (in this process, a thread: it competes for the same CPUs, as it would not in
production), then runs one delivering transfer (without the GX checks) and a second one that must
send nothing. Prints claims/second, the share of time in the HTTP calls, and peak memory.
Not a test: figures go in closing notes, never into assertions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]

from backfill_setup import backfill_municipality, emulator_config
from common import peak_rss_mb

from fbs_debitor.core import ledger
from fbs_debitor.delivery import serviceplatformen
from fbs_debitor.sandbox import emulator
from fbs_debitor.transfer.run import run_transfer


class TimedClient(serviceplatformen.Client):
    seconds = 0.0

    def call(self, request, on_attempt=None):
        t = time.perf_counter()
        try:
            return super().call(request, on_attempt)
        finally:
            TimedClient.seconds += time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patrons", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--as-of", default="2026-11-20")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        stores, fbs_url = backfill_municipality(tmp, args.patrons, args.seed, args.as_of)
        emu_db = f"sqlite:///{tmp}/emulator.sqlite"
        with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=emulator.vendors_from_fbs(fbs_url)) as emu:
            config = emulator_config(emu.url)
            with TimedClient(config) as client:
                t0 = time.perf_counter()
                run_id, _ = run_transfer(stores, client, batch_size=args.batch_size, data_quality=False)
                first = time.perf_counter() - t0
                calls = TimedClient.seconds
                t1 = time.perf_counter()
                rerun_id, _ = run_transfer(stores, client, batch_size=args.batch_size, data_quality=False)
                second = time.perf_counter() - t1
        counts = ledger.run_counts(stores.ledger, run_id)
        sent = sum(n for (_a, c, _r), n in counts.items() if c in ("accepted", "rejected", "unconfirmed"))
        again = sum(n for (_a, c, _r), n in ledger.run_counts(stores.ledger, rerun_id).items()
                    if c in ("accepted", "rejected", "unconfirmed"))
        held = len(emulator.claims(emu_db))
        print(f"patrons {args.patrons}: {sent:,} claims delivered in {first:.1f} s = {sent / first:,.0f} claims/s "
              f"(batches of {args.batch_size}; {calls:.1f} s inside the SOAP calls, emulator included)")
        print(f"second run: {again} sent in {second:.1f} s; the emulator holds {held:,} claims")
        print(f"peak RSS: {peak_rss_mb():.0f} MB")
        stores.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
