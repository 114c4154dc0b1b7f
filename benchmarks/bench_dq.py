"""Benchmark: the data-quality checks (GX, in-process) over a large batch.

    python benchmarks/bench_dq.py --patrons 100000 [--seed 7] [--backlog] [--runs 2] [--no-docs]

Generates a synthetic municipality (100k patrons = about 1M liabilities), optionally moves every
cut-off date back so the whole backlog is the batch (as a backfill would), runs the checks
``--runs`` times in this process and prints, per run, rows checked, seconds and the phases, then
the peak memory. The first run pays for importing GX and loading its context (include/gx); the
next ones reuse the context, as a backfill's months do. ``--no-docs`` leaves the Data Docs out (a
backfill month). GX writes under a temporary FBS_DEBITOR_VAR. Not a test: figures go in closing
notes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from sqlalchemy import text

from fbs_debitor.core import ledger
from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.core.stores import init_stores, open_stores
from fbs_debitor.quality import checks as dq_checks
from fbs_debitor.sandbox.generator import generate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patrons", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backlog", action="store_true", help="move every cut-off back: the whole backlog is checked")
    parser.add_argument("--runs", type=int, default=1, help="runs in this process (the first one loads GX)")
    parser.add_argument("--no-docs", action="store_true", help="no Data Docs (as a backfill month)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FBS_DEBITOR_VAR"] = str(Path(tmp) / "var")
        stores = open_stores(DatabaseUrls(fbs=f"sqlite:///{tmp}/fbs.sqlite", ledger=f"sqlite:///{tmp}/ledger.sqlite"))
        init_stores(stores)
        summary = generate(stores.fbs, patrons=args.patrons, seed=args.seed, as_of=dt.date(2026, 11, 20))
        if args.backlog:
            with stores.fbs.begin() as conn:
                conn.execute(text("UPDATE agency SET cut_off_date = '1990-01-01'"))
        print(f"{summary.as_dict()['liability']} liabilities")
        for n in range(1, args.runs + 1):
            run_id = ledger.start_run(stores.ledger, "manual")
            t0 = time.perf_counter()
            result = dq_checks.run_checks(stores, run_id, today=dt.date(2026, 11, 20),
                                          data_docs_dir=None if args.no_docs else Path(tmp) / "docs")
            elapsed = time.perf_counter() - t0
            print(f"run {n}: batch of {result.rows_checked} rows checked in {elapsed:.1f} s "
                  f"({result.rows_checked / elapsed:,.0f} rows/s), {result.findings} findings, "
                  f"{'no Data Docs' if args.no_docs else 'Data Docs built'}; phases {result.seconds}")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        stores.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
