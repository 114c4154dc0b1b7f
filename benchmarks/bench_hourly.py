"""Benchmark: the hourly run at 100k and at 1M liabilities, each with 5,000 new (issue 19, item 6).

    python benchmarks/bench_hourly.py [--sizes 100000,1000000] [--new 5000] [--repeats 3]
        [--changes-per-kind 1] [--seed 1] [--profile] [--back-to-back] [--markers-as-generated]
        [--keep DIR] [--reuse DIR] [--code DIR]

    # the baseline of a commit, while the checkout changes (read-only git):
    mkdir /tmp/code && git archive <commit> plugins include | tar -x -C /tmp/code
    python benchmarks/bench_hourly.py --code /tmp/code --keep /tmp/run1 --profile
    python benchmarks/bench_hourly.py --code /tmp/code --reuse /tmp/run1    # more hours, no new setup

What is timed is one whole hourly run as an operator starts it outside Airflow,
``python -m fbs_debitor transfer`` (eligibility, the GX checks with their Data Docs, building,
sending, change detection and sending: what DAG debitor_transfer does), as its own process: wall
time, CPU time (the rusage ``os.wait4`` returns for that child) and its own peak RSS (what
``/usr/bin/time -f %M`` reports for it: ``common.run_measured``).

Per size (liabilities; the generator gives about 10 per patron, so ``--patrons`` = size/10), in a
temporary folder:

1. setup, not timed, in this process: ``sandbox.generator.generate`` into SQLite files (FBS and
   ledger), the extract as of yesterday, every agency's cut-off about a year back (the generator's
   normal shape: the hourly case, not a backfill; the two agencies with a broken age limit stay
   held, C3); the debtor emulator as its own process on loopback over plain HTTP
   (``python -m fbs_debitor.sandbox emulator --vendors-from-fbs``), the CLI pointed at FBS, ledger,
   emulator and a var folder through its environment (FBS_DEBITOR_*, AIRFLOW_CONN_SERVICEPLATFORMEN);
   then the initial hand-over: one ``transfer`` sending everything due (timed too, not the figure).
   Where the code's extract contract has change markers (``updated_at`` on agency, patron,
   guardianship) and the generator leaves them empty, they are set to the extract's day first, as a
   real FBS has them (an empty marker counts as changed); ``--markers-as-generated`` leaves them;
2. ``--new`` new fees in FBS as the sandbox books them (``change_simulator.new_fees``: late returns,
   patrons drawn at random from every agency) and ``--changes-per-kind`` changes of each of the nine
   kinds on sent claims (``change_simulator.simulate``), as an hour in FBS brings them;
3. one timed ``transfer``; then one more with nothing new (the steady-state cost). After each run
   an hour passes: FBS's change markers of the last hour move one hour back, so the next run, seconds
   later, sees what it would see an hour later (without it the run window's overlap,
   FBS_DEBITOR_CHANGE_OVERLAP_MINUTES, would show it the previous run's changes again);
   ``--back-to-back`` leaves the markers;
4. 2-3 ``--repeats`` times; medians.

The code measured (``plugins/`` and ``include/`` of ``--code DIR``, default this checkout) is
copied once at the start, so edits made meanwhile change nothing in a run. ``--reuse DIR`` takes
the sizes a ``--keep DIR`` left (no generation, no initial hand-over: more hours on top).

Prints a table (size, liabilities, sent claims, new, seconds with 5,000 new, seconds with nothing new,
peak RSS MiB), then the 1M/100k ratio of the 5,000-new run (target <= 1.3), whether the largest size's
run is <= 10 s and whether every run's peak RSS is <= 512 MiB. ``--profile``: afterwards one more
5,000-new run at the largest size under cProfile (not in the table), its top 15 cumulative entries
printed. Figures, not assertions. ``--keep DIR``: the databases and logs stay in DIR.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pstats
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TZ", "Europe/Copenhagen")    # FBS local time is the municipality's, as in ./run main
time.tzset()


def _snapshot_code(argv: list[str]) -> tuple[Path, Path, Path]:
    """(base folder, code snapshot, the tree it was copied from). The code measured (``plugins/``
    and ``include/`` of ``--code DIR``, default this checkout) is copied once, before anything is
    imported, so that edits made in the tree while the benchmark runs change nothing in it; this
    process and every CLI run use the copy (FBS_DEBITOR_HOME, PYTHONPATH)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--code", default=str(ROOT))
    pre.add_argument("--keep")
    known, _ = pre.parse_known_args(argv)
    source = Path(known.code).resolve()
    if not (source / "plugins" / "fbs_debitor").is_dir() or not (source / "include" / "sql").is_dir():
        sys.exit(f"bench_hourly: --code {source}: no plugins/fbs_debitor and include/sql there")
    if known.keep:
        base = Path(known.keep).resolve()
        if base.exists():
            sys.exit(f"bench_hourly: --keep {base}: exists")
        base.mkdir(parents=True)
    else:
        base = Path(tempfile.mkdtemp(prefix="bench-hourly-"))
    code = base / "code"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(source / "plugins", code / "plugins", ignore=ignore)
    shutil.copytree(source / "include", code / "include", ignore=ignore)
    return base, code, source


BASE, CODE, CODE_SOURCE = _snapshot_code(sys.argv[1:])
os.environ["FBS_DEBITOR_HOME"] = str(CODE)
sys.path[:0] = [str(CODE / "plugins"), str(ROOT / "benchmarks")]

from common import Measured, mask_cpr, peak_rss_mb, run_measured, start_service, stop_process, tail, vm_hwm_mb  # noqa: E402
from sqlalchemy import inspect as sa_inspect  # noqa: E402
from sqlalchemy import text  # noqa: E402

from fbs_debitor.core import ledger  # noqa: E402
from fbs_debitor.core.settings import DatabaseUrls  # noqa: E402
from fbs_debitor.core.stores import init_stores, open_stores  # noqa: E402
from fbs_debitor.sandbox.change_simulator import new_fees, simulate  # noqa: E402
from fbs_debitor.sandbox.generator import generate  # noqa: E402

PY = sys.executable
FINGERPRINT_KEY = "benchmark-fingerprint-key-000001"
AGREEMENT = {"service_agreement_uuid": "11111111-1111-4111-8111-111111111111",
             "user_system_uuid": "22222222-2222-4222-8222-222222222222",
             "user_uuid": "33333333-3333-4333-8333-333333333333", "operation_timeout": 120}
MARKERS = {"agency": "UPDATE agency SET updated_at = :t WHERE updated_at IS NULL",
           "patron": "UPDATE patron SET updated_at = :t WHERE updated_at IS NULL",
           "guardianship": "UPDATE guardianship SET updated_at = :t WHERE updated_at IS NULL"}
# An hour passes (Municipality.an_hour_passes): markers of the last hour one hour back (SQLite date
# arithmetic on the text timestamps SQLAlchemy writes, 'YYYY-MM-DD HH:MM:SS[.ffffff]').
SHIFT_LIABILITY_CREATED = ("UPDATE liability SET created_at = strftime('%Y-%m-%d %H:%M:%S', created_at, '-1 hour') "
                           "WHERE created_at > :c AND updated_at > :c")
SHIFT_LIABILITY = "UPDATE liability SET updated_at = strftime('%Y-%m-%d %H:%M:%S', updated_at, '-1 hour') WHERE updated_at > :c"
SHIFT_MARKERS = {
    "agency": "UPDATE agency SET updated_at = strftime('%Y-%m-%d %H:%M:%S', updated_at, '-1 hour') WHERE updated_at > :c",
    "patron": "UPDATE patron SET updated_at = strftime('%Y-%m-%d %H:%M:%S', updated_at, '-1 hour') WHERE updated_at > :c",
    "guardianship": "UPDATE guardianship SET updated_at = strftime('%Y-%m-%d %H:%M:%S', updated_at, '-1 hour') "
                    "WHERE updated_at > :c"}
TARGET_RATIO, TARGET_SECONDS, TARGET_RSS_MB = 1.3, 10.0, 512.0


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and where its log is."""


@dataclass
class SizeResult:
    size: int
    patrons: int
    liabilities: int = 0
    sent: int = 0
    setup: dict = field(default_factory=dict)           # phase -> seconds
    initial: Measured | None = None
    initial_accepted: int = 0
    busy: list[Measured] = field(default_factory=list)      # the runs with --new new fees
    idle: list[Measured] = field(default_factory=list)      # the runs with nothing new
    busy_accepted: list[int] = field(default_factory=list)
    busy_changes: list[int] = field(default_factory=list)
    idle_sent: list[int] = field(default_factory=list)
    emulator_rss: float = 0.0
    profile: str | None = None


def sent_counts(stores, run_id: str) -> tuple[int, int]:
    """(claims accepted, change messages accepted) by one run."""
    counts = ledger.run_counts(stores.ledger, run_id)
    claims = sum(n for (_a, c, _r), n in counts.items() if c == "accepted")
    changes = sum(n for (_a, c, _r), n in counts.items() if c == "changes_accepted")
    return claims, changes


def claims_held(stores) -> int:
    with stores.ledger.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM claim WHERE state = 'accepted'")).scalar_one()


def liabilities(stores) -> int:
    with stores.fbs.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM liability")).scalar_one()


class Municipality:
    """One size's synthetic municipality, its emulator process and the CLI's environment."""

    def __init__(self, folder: Path, size: int, seed: int, reuse: bool = False):
        self.folder, self.size, self.seed = folder, size, seed
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=reuse)
        (folder / "var").mkdir(exist_ok=reuse)
        self.fbs_url = f"sqlite:///{folder}/fbs.sqlite"
        self.ledger_url = f"sqlite:///{folder}/ledger.sqlite"
        self.stores = open_stores(DatabaseUrls(fbs=self.fbs_url, ledger=self.ledger_url))
        self.emulator = None
        self.env = {**os.environ, "PYTHONPATH": str(CODE / "plugins"), "FBS_DEBITOR_HOME": str(CODE),
                    "FBS_DEBITOR_VAR": str(folder / "var"), "FBS_DEBITOR_FBS_URL": self.fbs_url,
                    "FBS_DEBITOR_LEDGER_URL": self.ledger_url, "FBS_DEBITOR_FINGERPRINT_KEY": FINGERPRINT_KEY,
                    "TZ": os.environ["TZ"]}
        for name in [k for k in self.env if k.startswith("AIRFLOW_CONN_SERVICEPLATFORMEN")]:
            del self.env[name]        # only the emulator of this benchmark
        self.runs = len(list(self.logs.glob("transfer-*.log")))

    def generate(self, patrons: int):
        init_stores(self.stores)
        as_of = dt.date.today() - dt.timedelta(days=1)
        return generate(self.stores.fbs, patrons=patrons, seed=self.seed, as_of=as_of), as_of

    def mark_unchanged(self, as_of: dt.date) -> dict[str, int]:
        """FBS's change markers (``updated_at`` on agency, patron, guardianship, where the extract
        contract has them) set to the extract's day where the generator left them empty, as a real
        FBS has them: an empty marker counts as changed, so every hourly run would look at every
        liability. Returns the rows set per table (empty when the code has no such markers)."""
        done = {}
        at = dt.datetime.combine(as_of, dt.time(0, 0))
        with self.stores.fbs.begin() as conn:
            for table, sql in MARKERS.items():
                if "updated_at" in {c["name"] for c in sa_inspect(conn).get_columns(table)}:
                    done[table] = conn.execute(text(sql), {"t": at}).rowcount
        return done

    def start_emulator(self) -> None:
        self.emulator, port = start_service("emulator", [
            PY, "-m", "fbs_debitor.sandbox", "emulator", "--vendor", "KMD_OPUS", "--vendors-from-fbs",
            "--db", f"sqlite:///{self.folder}/emulator.sqlite"], self.logs, self.env)
        url = f"http://127.0.0.1:{port}/service/OIR/DebitorRegistreringAfsend/1"
        self.env["AIRFLOW_CONN_SERVICEPLATFORMEN"] = json.dumps({"conn_type": "http", "host": url, "extra": AGREEMENT})

    def transfer(self, what: str, profile: Path | None = None) -> tuple[Measured, str]:
        """One ``python -m fbs_debitor transfer`` as its own process; (measured, ledger run id)."""
        self.runs += 1
        log = self.logs / f"transfer-{self.runs:02d}-{what}.log"
        argv = [PY, "-m", "fbs_debitor", "transfer"]
        if profile is not None:
            argv = [PY, "-m", "cProfile", "-o", str(profile), "-m", "fbs_debitor", "transfer"]
        before = ledger.get_run(self.stores.ledger)
        m = run_measured(argv, env=self.env, log=log, cwd=self.folder, timeout=4 * 3600)
        run = ledger.get_run(self.stores.ledger)
        if run is None or (before is not None and run.run_id == before.run_id):
            raise BenchError(f"transfer ({what}) recorded no run (exit code {m.returncode}); {log}:\n{tail(log)}")
        if m.returncode not in (0, 4) or run.status != "success":
            raise BenchError(f"transfer ({what}) ended with exit code {m.returncode}, run {run.status}: "
                             f"{mask_cpr(run.error or '')}; {log}:\n{tail(log)}")
        if m.returncode == 4:
            print(f"  note: transfer ({what}) left messages unconfirmed (exit code 4); see {log}", flush=True)
        return m, run.run_id

    def an_hour_passes(self) -> int:
        """Every FBS change marker (``updated_at``; a liability's ``created_at`` with it) set in the last
        hour is moved one hour back, as if the next run came an hour after the last one, as the hourly
        schedule has it. Everything moved was marked before the last run started (nothing writes FBS
        meanwhile), so that run looked at it; without the move, the next run, seconds later, would look
        at it again through the run window's overlap (FBS_DEBITOR_CHANGE_OVERLAP_MINUTES). Returns the
        rows moved (0 on code without change markers on patrons)."""
        cut = dt.datetime.now().replace(microsecond=0) - dt.timedelta(hours=1)
        moved = 0
        with self.stores.fbs.begin() as conn:
            moved += conn.execute(text(SHIFT_LIABILITY_CREATED), {"c": cut}).rowcount
            moved += conn.execute(text(SHIFT_LIABILITY), {"c": cut}).rowcount
            for table, sql in SHIFT_MARKERS.items():
                if "updated_at" in {c["name"] for c in sa_inspect(conn).get_columns(table)}:
                    moved += conn.execute(text(sql), {"c": cut}).rowcount
        return moved

    def hour_in_fbs(self, new: int, changes_per_kind: int, k: int) -> tuple[int, int]:
        """``new`` new fees and ``changes_per_kind`` changes of each kind on sent claims, now."""
        at = dt.datetime.now().replace(microsecond=0)
        fees = new_fees(self.stores, new, at, seed=self.seed + k)
        changed = simulate(self.stores, seed=self.seed + 1000 + k, per_kind=changes_per_kind, at=at) \
            if changes_per_kind else {}
        return sum(fees.values()), sum(changed.values())

    def close(self) -> None:
        if self.emulator is not None:
            stop_process(self.emulator)
        self.stores.dispose()


def bench_size(folder: Path, size: int, args) -> SizeResult:
    patrons = max(size // 10, 50)
    res = SizeResult(size, patrons)
    reuse = args.reuse is not None and (folder / "fbs.sqlite").exists() and (folder / "ledger.sqlite").exists()
    muni = Municipality(folder, size, args.seed, reuse)
    try:
        if reuse:
            res.liabilities = liabilities(muni.stores)
            print(f"[{size:,}] reusing {folder} ({res.liabilities:,} liabilities, {claims_held(muni.stores):,} claims "
                  f"sent): no generation, no initial hand-over", flush=True)
        else:
            t = time.perf_counter()
            summary, as_of = muni.generate(patrons)
            res.setup["generate"] = time.perf_counter() - t
            res.liabilities = summary.liability
            print(f"[{size:,}] generated {summary.patron:,} patrons, {summary.liability:,} liabilities in "
                  f"{res.setup['generate']:.1f} s", flush=True)
        if not reuse and not args.markers_as_generated:
            marked = muni.mark_unchanged(as_of)
            if any(marked.values()):
                print(f"[{size:,}] FBS change markers left empty by the generator set to {as_of} (an empty one "
                      f"counts as changed): " + ", ".join(f"{t} {n:,}" for t, n in marked.items()), flush=True)
        t = time.perf_counter()
        muni.start_emulator()
        res.setup["emulator"] = time.perf_counter() - t
        if not reuse:
            res.initial, run_id = muni.transfer("initial")
            res.initial_accepted, _ = sent_counts(muni.stores, run_id)
            print(f"[{size:,}] initial hand-over: {res.initial_accepted:,} claims accepted in {res.initial.seconds:.1f} s "
                  f"(CPU {res.initial.cpu_seconds:.1f} s, peak RSS {res.initial.peak_rss_mb:.0f} MiB)", flush=True)
        hourly = not args.back_to_back
        offset = muni.runs          # other seeds for the new fees and changes of a reused folder

        def next_hour() -> None:
            if hourly:
                muni.an_hour_passes()

        next_hour()
        for k in range(args.repeats):
            t = time.perf_counter()
            fees, changes = muni.hour_in_fbs(args.new, args.changes_per_kind, offset + k)
            fbs_seconds = time.perf_counter() - t
            m, run_id = muni.transfer(f"new{k + 1}")
            next_hour()
            accepted, change_msgs = sent_counts(muni.stores, run_id)
            res.busy.append(m)
            res.busy_accepted.append(accepted)
            res.busy_changes.append(change_msgs)
            m2, run_id2 = muni.transfer(f"idle{k + 1}")
            next_hour()
            idle_claims, idle_changes = sent_counts(muni.stores, run_id2)
            res.idle.append(m2)
            res.idle_sent.append(idle_claims + idle_changes)
            print(f"[{size:,}] repeat {k + 1}: {fees:,} new fees + {changes} changes booked in FBS ({fbs_seconds:.1f} s); "
                  f"run: {accepted:,} claims + {change_msgs} change messages accepted in {m.seconds:.1f} s "
                  f"(CPU {m.cpu_seconds:.1f} s, {m.peak_rss_mb:.0f} MiB); nothing new: {idle_claims + idle_changes} "
                  f"sent in {m2.seconds:.1f} s (CPU {m2.cpu_seconds:.1f} s, {m2.peak_rss_mb:.0f} MiB)", flush=True)
        res.liabilities = liabilities(muni.stores)
        res.sent = claims_held(muni.stores)
        if args.profile and size == max(args.size_list):
            muni.hour_in_fbs(args.new, args.changes_per_kind, offset + args.repeats)
            prof = folder / "transfer.prof"
            m, _ = muni.transfer("profile", profile=prof)
            out = folder / "profile.txt"
            with open(out, "w") as f:
                stats = pstats.Stats(str(prof), stream=f).sort_stats("cumulative")
                stats.print_stats(15)
                print("the project's own functions (fbs_debitor), top 25 cumulative:", file=f)
                stats.print_stats(r"fbs_debitor[/\\]", 25)
            res.profile = (f"cProfile of one {args.new:,}-new run at {size:,} ({m.seconds:.1f} s under the profiler; "
                           f"kept as {prof} when --keep), top 15 cumulative:\n" + mask_cpr(out.read_text()))
        if muni.emulator is not None:
            res.emulator_rss = vm_hwm_mb(muni.emulator.pid)
        return res
    finally:
        muni.close()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: list[SizeResult], args) -> None:
    print()
    print(f"{'size':>9} {'liabilities':>11} {'sent claims':>11} {'new':>6} {'s (new)':>8} {'s (none new)':>12} "
          f"{'peak RSS MiB':>12}   {'CPU s (new/none)':>16} {'accepted':>8} {'initial s':>9}")
    for r in results:
        rss = max([m.peak_rss_mb for m in r.busy + r.idle] or [0])
        print(f"{r.size:>9,} {r.liabilities:>11,} {r.sent:>11,} {args.new:>6,} {median([m.seconds for m in r.busy]):>8.1f} "
              f"{median([m.seconds for m in r.idle]):>12.1f} {rss:>12.0f}   "
              f"{median([m.cpu_seconds for m in r.busy]):>7.1f}/{median([m.cpu_seconds for m in r.idle]):<8.1f} "
              f"{int(median(r.busy_accepted)) if r.busy_accepted else 0:>8,} "
              + (f"{r.initial.seconds:>9.1f}" if r.initial else f"{'reused':>9}"))
    print(f"(medians of {args.repeats} repeat(s); each run is `python -m fbs_debitor transfer` as its own process, GX "
          f"checks included; " + ("runs back to back, seconds apart; " if args.back_to_back else
                                  "FBS's change markers moved an hour back after each run, as if runs were an hour apart; ")
          + f"'new' = new fees per hour (+{args.changes_per_kind} change(s) of each of 9 kinds on sent "
          f"claims); 'accepted' = new claims the 5,000-new run sent; 'initial s' = the first hand-over)")
    for r in results:
        print(f"  {r.size:,}: {args.new:,}-new runs {', '.join(f'{m.seconds:.1f}' for m in r.busy)} s; nothing-new runs "
              f"{', '.join(f'{m.seconds:.1f}' for m in r.idle)} s; peak RSS of the runs "
              f"{', '.join(f'{m.peak_rss_mb:.0f}' for m in r.busy + r.idle)} MiB; emulator {r.emulator_rss:.0f} MiB; "
              f"setup: generate {r.setup.get('generate', 0):.1f} s")
    print()
    by_size = {r.size: r for r in results}
    small, large = min(by_size), max(by_size)
    if len(by_size) >= 2:
        ratio = median([m.seconds for m in by_size[large].busy]) / median([m.seconds for m in by_size[small].busy])
        print(f"ratio {large:,}/{small:,} of the {args.new:,}-new run: {ratio:.2f} (target <= {TARGET_RATIO}): "
              + ("met" if ratio <= TARGET_RATIO else "NOT met"))
    secs = median([m.seconds for m in by_size[large].busy])
    print(f"the {large:,} run with {args.new:,} new: {secs:.1f} s on this machine (target <= {TARGET_SECONDS:.0f} s): "
          + ("met" if secs <= TARGET_SECONDS else "NOT met"))
    rss = max(m.peak_rss_mb for r in results for m in r.busy + r.idle)
    print(f"peak RSS of the hourly runs: {rss:.0f} MiB (target <= {TARGET_RSS_MB:.0f} MiB): "
          + ("met" if rss <= TARGET_RSS_MB else "NOT met"))
    print(f"(this process, setup included: peak RSS {peak_rss_mb():.0f} MiB; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores)")
    for r in results:
        if r.profile:
            print()
            print(r.profile)


def main() -> int:
    try:
        return _main()
    finally:     # the folder made at import (the code snapshot) goes, however main ended
        if "--keep" not in " ".join(sys.argv[1:]):
            shutil.rmtree(BASE, ignore_errors=True)


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000",
                        help="liabilities per synthetic municipality, comma-separated (patrons = size/10)")
    parser.add_argument("--new", type=int, default=5000, help="new fees booked in FBS before each timed run")
    parser.add_argument("--changes-per-kind", type=int, default=1,
                        help="changes of each of the 9 kinds on sent claims before each timed run (0: none)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="one more run at the largest size under cProfile; print the top 15 cumulative")
    parser.add_argument("--markers-as-generated", action="store_true",
                        help="leave FBS's change markers (updated_at on agency, patron, guardianship) as the "
                             "generator leaves them (empty: every row counts as changed) instead of setting them "
                             "to the extract's day")
    parser.add_argument("--back-to-back", action="store_true",
                        help="run the transfers seconds apart as they are, instead of moving FBS's change markers "
                             "of the last hour one hour back after each run (as if the next run came an hour later)")
    parser.add_argument("--reuse", metavar="DIR",
                        help="a folder kept by --keep: each size whose size-N/ holds fbs.sqlite and ledger.sqlite is "
                             "used as it is (no generation, no initial hand-over; more hours on top); changed in place")
    parser.add_argument("--keep", metavar="DIR", help="keep databases and logs in DIR (must not exist)")
    parser.add_argument("--code", metavar="DIR", default=str(ROOT),
                        help="the tree whose plugins/ and include/ are measured (default this checkout; e.g. a "
                             "`git archive` of a commit); copied once at the start")
    args = parser.parse_args()
    try:
        args.size_list = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes: whole numbers, comma-separated")
    if not args.size_list or any(s < 500 for s in args.size_list):
        parser.error("--sizes: at least 500 liabilities each")
    if args.repeats < 1 or args.new < 0 or args.changes_per_kind < 0:
        parser.error("--repeats at least 1; --new and --changes-per-kind not negative")
    print("$ " + shlex.join([Path(PY).name, *sys.argv]), flush=True)
    print(f"code measured: {CODE_SOURCE} (plugins/ and include/ copied to {CODE} at the start)", flush=True)

    def stop(_signum, _frame):     # SIGTERM ends it like Ctrl-C: the emulator is stopped, the folder removed
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    base = BASE
    results = []
    try:
        for size in args.size_list:
            folder = (Path(args.reuse) if args.reuse else base) / f"size-{size}"
            results.append(bench_size(folder, size, args))
            if not args.keep and not args.reuse:
                shutil.rmtree(folder, ignore_errors=True)
        report(results, args)
        return 0
    except BenchError as exc:
        print(f"bench_hourly: {exc}", file=sys.stderr)
        if results:
            report(results, args)
        return 1
    except KeyboardInterrupt:
        print("bench_hourly: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"(databases and logs kept in {base})")


if __name__ == "__main__":
    sys.exit(main())
