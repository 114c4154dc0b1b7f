"""Benchmark: the project's build path (``transfer --dry-run``) against the bare floor.

    python benchmarks/bench_build.py --patrons 10000     # about 100k liabilities
    python benchmarks/bench_build.py --patrons 100000 --rounds 1   # about 1M liabilities

Sets up the synthetic municipality exactly as ``bench_claims.py`` does (the sandbox generator,
every cut-off date moved back, the broken age limits repaired: most open liabilities become
claims; in a process of its own, so this one stays small), then runs, interleaved (project,
floor, project, floor, ...), each in its own subprocess so that peak RSS is each process's own:

  project  ``fbs_debitor.transfer.dry_run.run``, the function ``python -m fbs_debitor transfer
           --dry-run`` calls: eligibility, extract, build, XML, schema validation, files
  floor    ``benchmarks/floor_build.py``: one SELECT, bare lxml, the same messages, validated
           against the same XSD and written (``--in-memory-floor`` adds its second floor, with the
           rows read before the clock starts)

on the same FBS, and prints per round and as medians: claims, seconds (wall and CPU), claims per
second, peak RSS, and the ratio project / floor (the target is at most 1.5; peak RSS at most
512 MiB and flat from 100k to 1M liabilities). The machine may be shared: compare the ratios of
one run, not seconds across runs. Not a test: figures, never assertions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "plugins"))
sys.path.insert(0, str(HERE))


def child_project(args) -> int:
    """The project's dry run in this process; one JSON line like floor_build.py's."""
    from fbs_debitor.core.settings import DatabaseUrls
    from fbs_debitor.core.stores import open_stores
    from fbs_debitor.transfer import dry_run

    stores = open_stores(DatabaseUrls(fbs=args.fbs_url, ledger=args.ledger_url))
    wall, cpu = time.perf_counter(), time.process_time()
    summary = dry_run.run(stores, Path(args.out), batch_size=args.batch_size,
                          today=dt.date.fromisoformat(args.as_of))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stores.dispose()
    print(json.dumps({"claims": summary["totals"].get("claims", 0), "wall_s": round(wall, 3),
                      "cpu_s": round(cpu, 3),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
    return 0


def child_generate(args) -> int:
    """The synthetic municipality, made in a process of its own: the parent stays small, so the
    peak RSS each contender reports is its own (Linux carries a process's peak over into the
    program it executes)."""
    from backfill_setup import backfill_municipality

    stores, fbs_url = backfill_municipality(args.out, args.patrons, args.seed, args.as_of)
    stores.dispose()
    print(json.dumps({"fbs_url": fbs_url}))
    return 0


def run_child(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patrons", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--as-of", default="2026-11-20")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="project/floor pairs (default 3)")
    parser.add_argument("--in-memory-floor", action="store_true", help="also the floor with its rows read first")
    parser.add_argument("--child", choices=("project", "generate"), help=argparse.SUPPRESS)
    parser.add_argument("--fbs-url", help=argparse.SUPPRESS)
    parser.add_argument("--ledger-url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "project":
        return child_project(args)
    if args.child == "generate":
        return child_generate(args)

    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        t0 = time.perf_counter()
        fbs_url = run_child([sys.executable, __file__, "--child", "generate", "--out", tmp, "--patrons",
                             str(args.patrons), "--seed", str(args.seed), "--as-of", args.as_of])["fbs_url"]
        print(f"patrons {args.patrons}: synthetic municipality generated in {time.perf_counter() - t0:.1f} s "
              "(cut-offs moved back, age limits repaired, as bench_claims.py)", flush=True)
        ledger_url = f"sqlite:///{tmp}/ledger.sqlite"
        out = Path(tmp) / "out"
        python = sys.executable
        contenders = {
            "project": [python, __file__, "--child", "project", "--fbs-url", fbs_url, "--ledger-url", ledger_url,
                        "--out", str(out), "--batch-size", str(args.batch_size), "--as-of", args.as_of],
            "floor": [python, str(HERE / "floor_build.py"), "--fbs-url", fbs_url, "--out", str(out), "--json",
                      "--today", args.as_of],
        }
        if args.in_memory_floor:
            contenders["floor_in_memory"] = [*contenders["floor"], "--in-memory"]
        results: dict[str, list[dict]] = {name: [] for name in contenders}
        for i in range(args.rounds):
            for name, command in contenders.items():
                shutil.rmtree(out, ignore_errors=True)
                r = run_child(command)
                results[name].append(r)
                print(f"  round {i + 1} {name:16} {r['claims']:>9,} claims {r['wall_s']:8.2f} s wall "
                      f"{r['cpu_s']:8.2f} s CPU {r['claims'] / r['wall_s']:>9,.0f} claims/s "
                      f"peak RSS {r['peak_rss_mib']:6.0f} MiB", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("claims", "wall_s", "cpu_s", "peak_rss_mib")}
           for name, rs in results.items()}
    print(f"medians of {args.rounds} round(s), interleaved:")
    for name, m in med.items():
        print(f"  {name:16} {m['claims']:>9,.0f} claims {m['wall_s']:8.2f} s wall {m['cpu_s']:8.2f} s CPU "
              f"{m['claims'] / m['wall_s']:>9,.0f} claims/s peak RSS {m['peak_rss_mib']:6.0f} MiB")
    for name in med:
        if name != "project":
            print(f"ratio project/{name}: wall {med['project']['wall_s'] / med[name]['wall_s']:.2f}, "
                  f"CPU {med['project']['cpu_s'] / med[name]['cpu_s']:.2f} (target <= 1.5)")
    per_round = [p["wall_s"] / f["wall_s"] for p, f in zip(results["project"], results["floor"], strict=True)]
    print(f"ratio project/floor per round (wall): {', '.join(f'{r:.2f}' for r in per_round)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
