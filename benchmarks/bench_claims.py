"""Benchmark: building and validating SF1590 claims (the hot path of a backfill).

    python benchmarks/bench_claims.py --patrons 20000 [--seed 1] [--url sqlite:///...]

Generates a synthetic municipality, moves every agency's cut-off date back to the oldest liability
and repairs the broken age limits (so that most open liabilities become claims), then streams
eligibility -> extract -> build -> batch -> validate exactly as ``transfer --dry-run`` does (files
written to a temporary folder) and prints claims/second and peak memory. Not a test: figures go
in closing notes, never into assertions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from common import peak_rss_mb
from sqlalchemy import text

from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.core.stores import init_stores, open_stores
from fbs_debitor.sandbox.generator import generate
from fbs_debitor.transfer import dry_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patrons", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--as-of", default="2026-11-20")
    parser.add_argument("--url", help="FBS database URL (default: a temporary SQLite file)")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        fbs_url = args.url or f"sqlite:///{tmp}/fbs.sqlite"
        stores = open_stores(DatabaseUrls(fbs=fbs_url, ledger=f"sqlite:///{tmp}/ledger.sqlite"))
        init_stores(stores)
        t0 = time.perf_counter()
        generate(stores.fbs, patrons=args.patrons, seed=args.seed, as_of=dt.date.fromisoformat(args.as_of))
        t_gen = time.perf_counter() - t0
        with stores.fbs.begin() as conn:
            conn.execute(text("UPDATE agency SET cut_off_date = '1990-01-01', age_limit = 18"))
        rss_before = peak_rss_mb()
        t1 = time.perf_counter()
        summary = dry_run.run(stores, Path(tmp) / "out", batch_size=args.batch_size,
                              today=dt.date.fromisoformat(args.as_of))
        elapsed = time.perf_counter() - t1
        claims = summary["totals"].get("claims", 0)
        print(f"patrons {args.patrons}: generated in {t_gen:.1f} s")
        print(f"claims built and schema-validated: {claims} in {summary['files']} batches "
              f"({args.batch_size} claims each) in {elapsed:.1f} s = {claims / elapsed:,.0f} claims/s "
              f"(eligibility, extract, build, XML, validation and writing the files)")
        print(f"not built: { {k: v for k, v in summary['totals'].items() if k.startswith('not_built')} }")
        print(f"peak RSS: {peak_rss_mb():.0f} MB (after generation: {rss_before:.0f} MB)")
        stores.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
