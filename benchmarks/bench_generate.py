"""Benchmark the synthetic FBS generator: wall time, rows per second and peak memory.

    python benchmarks/bench_generate.py --patrons 100000 --seed 1
    python benchmarks/bench_generate.py --patrons 100000 --url postgresql://user@host/db
    python benchmarks/bench_generate.py --patrons 100000 --throwaway-postgres
    python benchmarks/bench_generate.py --patrons 100000 --twice   # second run also wipes a full population

Without --url the population goes into a temporary SQLite file that is deleted afterwards. With
--url the FBS tables are created where missing and THEIR CONTENT IS REPLACED. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]

from common import peak_rss_mb

from fbs_debitor.core.db import make_engine, safe_url
from fbs_debitor.core.settings import FBS_SCHEMA
from fbs_debitor.core.stores import create_fbs_schema
from fbs_debitor.sandbox.generator import generate


def run(url: str, args: argparse.Namespace) -> None:
    engine = make_engine(url, FBS_SCHEMA)
    create_fbs_schema(engine)
    print(f"database: {safe_url(engine)}")
    for attempt in range(2 if args.twice else 1):
        started = time.perf_counter()
        summary = generate(engine, args.patrons, args.seed, args.as_of, args.liabilities_per_patron,
                           args.backlog_years)
        wall = time.perf_counter() - started
        label = "first run" if attempt == 0 else "second run (wipes the first)"
        print(f"{label}: {summary.rows:,} rows ({summary.liability:,} liabilities, {summary.loan:,} loans, "
              f"{summary.patron:,} patrons) in {wall:.1f} s = {summary.rows / wall:,.0f} rows/s, "
              f"{summary.liability / wall:,.0f} liabilities/s; peak RSS {peak_rss_mb():,.0f} MB")
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2, ensure_ascii=False))
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patrons", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date(2025, 6, 1),
                        help="extract date (default 2025-06-01, fixed so runs compare)")
    parser.add_argument("--liabilities-per-patron", type=float, default=10.0)
    parser.add_argument("--backlog-years", type=int, default=6)
    parser.add_argument("--url", help="FBS database URL (default: a temporary SQLite file)")
    parser.add_argument("--throwaway-postgres", action="store_true",
                        help="start a temporary PostgreSQL cluster (tests/pgcluster.py) and use it")
    parser.add_argument("--twice", action="store_true", help="generate twice; the second run wipes the first")
    parser.add_argument("--json", action="store_true", help="print the generation summary")
    args = parser.parse_args(argv)

    if args.throwaway_postgres:
        from pgcluster import ThrowawayCluster, create_database

        cluster = ThrowawayCluster()
        try:
            run(create_database(cluster.start(), "fbs_bench"), args)
        finally:
            cluster.stop()
    elif args.url:
        run(args.url, args)
    else:
        with tempfile.TemporaryDirectory(prefix="fbs-bench-") as tmp:
            run(f"sqlite:///{Path(tmp) / 'fbs.sqlite'}", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
