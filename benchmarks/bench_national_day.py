"""Benchmark: one simulated day for every municipality in Denmark, on PostgreSQL (issue 18, item 5).

    python benchmarks/bench_national_day.py [--municipalities 98] [--patrons 5000] [--hours 24]
        [--fees-per-hour 200] [--changes-per-kind 1] [--token-municipalities 3] [--rate 0.05] [--no-dq]
        [--pg-url URL]

Sets up (timed, outside the day):

1. a throwaway PostgreSQL cluster (tests/pgcluster.py; or ``--pg-url``/FBS_DEBITOR_BENCH_PG_URL, a
   server where databases ``natday_fbs``, ``natday_ledger`` and ``natday_emulator`` are dropped and
   made again) holding FBS, the ledger and the emulator's store;
2. ``generate --municipalities N``: N synthetic municipalities sharing ``--patrons`` (the largest
   about ten times the median, all three debtor vendors), the extract taken at the start of the
   simulated day (yesterday);
3. the sandbox STS and the debtor emulator as their own processes (HTTPS, mutual TLS), each
   municipality with its own service agreement, ``--token-municipalities`` of them (one per vendor
   first) in token mode, the Serviceplatformen connections pointing at them (as ``./run main``);
4. the initial hand-over: one transfer run sending everything due after the cut-off dates.

Then the day, in steps of 15 simulated minutes: every hour FBS gets ``--fees-per-hour`` new fees
and ``--changes-per-kind`` changes of each kind on sent claims (``sandbox.change_simulator``), and a
transfer run goes (``transfer.run.run_transfer``, as ``python -m fbs_debitor transfer``, with the
GX checks unless ``--no-dq``); every 15 minutes the emulator delivers what fell due on each
vendor's rhythm (``payments.rhythm``: EG every 15 minutes, Prisme hourly, KMD OPUS at 02:00) into the
payments inbox (the file route, ``sandbox emulator-payments --until``: a simulated clock), and when
anything landed a payments run applies it and reconciles (as DAG debitor_payments). After the day:
the nightly staff reports, one build per municipality (as DAG debitor_dq_report's mapped tasks),
and the reconciliation of every claim and payment against the emulator.

Prints the command line, wall time per phase, per-municipality figures (largest first: patrons,
claims accepted at the hand-over, new fees, claims and changes sent in the day, payments applied,
debtor calls and the seconds spent in them, report seconds), totals, and peak RSS of this process
(which runs every step) and of the emulator and the STS. Figures, not assertions; a municipality
whose work fails is reported and the day goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests"), str(ROOT / "benchmarks")]
os.environ.setdefault("FBS_DEBITOR_FINGERPRINT_KEY", "benchmark-fingerprint-key-000001")
os.environ.setdefault("TZ", "Europe/Copenhagen")     # the simulated day is the municipalities' day, as in ./run main
time.tzset()

from common import peak_rss_mb, vm_hwm_mb  # noqa: E402
from sqlalchemy import text  # noqa: E402

from fbs_debitor.core import ledger  # noqa: E402
from fbs_debitor.core.settings import DatabaseUrls  # noqa: E402
from fbs_debitor.core.stores import init_stores, open_stores  # noqa: E402
from fbs_debitor.delivery import access, serviceplatformen  # noqa: E402
from fbs_debitor.payments import apply as payments  # noqa: E402
from fbs_debitor.payments import reconciliation as payment_reconciliation  # noqa: E402
from fbs_debitor.payments.inbox import FolderInbox  # noqa: E402
from fbs_debitor.quality import report as dq_report  # noqa: E402
from fbs_debitor.sandbox import access_plan, emulator, emulator_payments, pki  # noqa: E402
from fbs_debitor.sandbox.change_simulator import new_fees, simulate  # noqa: E402
from fbs_debitor.sandbox.generator import generate  # noqa: E402
from fbs_debitor.transfer.run import run_transfer  # noqa: E402
from fbs_debitor.transfer.units import units  # noqa: E402

PY = sys.executable
MAX_CONNECTIONS = 100        # the throwaway cluster's: a default PostgreSQL's


def start_cluster():
    """tests/pgcluster.py's throwaway cluster, allowing MAX_CONNECTIONS (the tests' allows 60)."""
    from pgcluster import PostgresUnavailable, ThrowawayCluster

    cluster = ThrowawayCluster()
    if cluster.as_postgres:
        import shutil
        shutil.chown(cluster.root, "postgres", "postgres")
    cluster._run(cluster.initdb, "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--locale=C.UTF-8", "--no-sync")
    opts = (f"-c listen_addresses=127.0.0.1 -c port={cluster.port} -c unix_socket_directories={cluster.root} "
            f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections={MAX_CONNECTIONS}")
    cluster._run(cluster.pg_ctl, "-D", str(cluster.data), "-o", opts, "-l", str(cluster.root / "server.log"), "-w",
                 "-t", "60", "start")
    import socket
    for _ in range(150):
        try:
            with socket.create_connection(("127.0.0.1", cluster.port), timeout=1):
                return cluster, f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/postgres"
        except OSError:
            time.sleep(0.2)
    raise PostgresUnavailable("PostgreSQL did not start listening")
QUARTER = dt.timedelta(minutes=15)


class Phases:
    """Wall time per phase, in the order first seen."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.count: Counter = Counter()

    def timed(self, name: str):
        phases = self

        class _T:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                phases.seconds[name] = phases.seconds.get(name, 0.0) + time.perf_counter() - self.t
                phases.count[name] += 1

        return _T()


class TimedClient:
    """A Serviceplatformen client whose calls are timed per municipality (``spent[cvr]``)."""

    def __init__(self, inner, cvr: str, spent: dict, calls: Counter):
        self._inner, self._cvr, self._spent, self._calls = inner, cvr, spent, calls

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def call(self, request, on_attempt=None):
        t = time.perf_counter()
        try:
            return self._inner.call(request, on_attempt)
        finally:
            self._spent[self._cvr] += time.perf_counter() - t
            self._calls[self._cvr] += 1

    def for_agency(self, agency_id: str):
        return self

    def close(self) -> None:
        self._inner.close()


def clients(stores, spent: dict, calls: Counter):
    """The run's clients (as the CLI's ``access.clients_for``), each municipality's calls timed."""
    try:
        return access.Clients(access.municipalities_from_fbs(stores.fbs), access.env_lookup(),
                              make_client=lambda cfg: TimedClient(serviceplatformen.Client(cfg),
                                                                  cfg.municipality_cvr or "-", spent, calls))
    except TypeError:            # the interface moved: untimed, as the CLI does it
        return access.clients_for(stores.fbs, access.env_lookup())


def start_service(name: str, argv: list[str], logs: Path, env: dict) -> tuple[subprocess.Popen, int]:
    port_file = logs / f"{name}.port"
    log = open(logs / f"{name}.log", "ab")
    proc = subprocess.Popen([*argv, "--port", "0", "--port-file", str(port_file)], stdout=log, stderr=log, env=env)
    for _ in range(600):
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the {name} did not start: see {logs / (name + '.log')}")


@contextlib.contextmanager
def quiet(logs: Path):
    """GX's progress bars (stderr, once per check run) go to logs/stderr.log instead of the output."""
    with open(logs / "stderr.log", "a") as err, contextlib.redirect_stderr(err):
        yield


def per_agency(counts: Counter, categories: tuple[str, ...]) -> Counter:
    out: Counter = Counter()
    for (agency, category, _rule), n in counts.items():
        if category in categories:
            out[agency] += n
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--municipalities", type=int, default=98)
    parser.add_argument("--patrons", type=int, default=5000,
                        help="shared by the municipalities (at least 20 each; 5000: about 15 minutes on 2 busy cores)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hours", type=int, default=24, help="hours of the simulated day, 1-24")
    parser.add_argument("--fees-per-hour", type=int, default=None, help="default patrons/100")
    parser.add_argument("--changes-per-kind", type=int, default=1, help="per hour, each of 9 kinds")
    parser.add_argument("--token-municipalities", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.05, help="share of open claims paid per day")
    parser.add_argument("--no-dq", action="store_true", help="transfer runs without the GX checks")
    parser.add_argument("--pg-url", default=os.environ.get("FBS_DEBITOR_BENCH_PG_URL"),
                        help="a PostgreSQL server (admin URL) instead of a throwaway cluster")
    parser.add_argument("--show", type=int, default=98, help="per-municipality lines to print (largest first)")
    args = parser.parse_args()
    if not 1 <= args.hours <= 24:
        parser.error("--hours: 1-24")
    fees_per_hour = args.patrons // 100 if args.fees_per_hour is None else args.fees_per_hour
    print("$ " + shlex.join([Path(PY).name, *sys.argv]), flush=True)

    def stop(_signum, _frame):          # SIGTERM ends it like Ctrl-C: the services and the cluster are stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)

    phases = Phases()
    cluster = None
    procs: dict[str, subprocess.Popen] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="natday-") as tmp_:
        tmp = Path(tmp_)
        logs = tmp / "logs"
        logs.mkdir()
        try:
            from pgcluster import create_database

            with phases.timed("setup: PostgreSQL"):
                admin = args.pg_url
                if not admin:
                    cluster, admin = start_cluster()
                fbs_url = create_database(admin, "natday_fbs")
                ledger_url = create_database(admin, "natday_ledger")
                emu_url = create_database(admin, "natday_emulator")
            os.environ.update(FBS_DEBITOR_FBS_URL=fbs_url, FBS_DEBITOR_LEDGER_URL=ledger_url,
                              FBS_DEBITOR_VAR=str(tmp / "var"))
            (tmp / "var").mkdir()
            stores = open_stores(DatabaseUrls(fbs=fbs_url, ledger=ledger_url))
            init_stores(stores)
            day = dt.date.today() - dt.timedelta(days=1)         # the simulated day: yesterday, all in the past
            with phases.timed("setup: generate"):
                summary = generate(stores.fbs, patrons=args.patrons, seed=args.seed, as_of=day,
                                   municipalities=args.municipalities)
            all_units = units(stores.fbs)
            with stores.fbs.connect() as conn:
                patrons_of = dict(conn.execute(text("SELECT agency_id, COUNT(*) FROM patron GROUP BY agency_id")).all())
                vendors = dict(conn.execute(text("SELECT agency_id, debtor_vendor FROM agency")).all())
                municipality_of = dict(conn.execute(text("SELECT agency_id, municipality_cvr FROM agency")).all())
            print(f"generated {len(all_units)} municipalities ({Counter(u.vendor for u in all_units)}), "
                  f"{summary.agency} agencies, {summary.patron:,} patrons, {summary.liability:,} liabilities "
                  f"as of {day}", flush=True)

            # The debtor side: STS and emulator, each municipality under its own agreement.
            with phases.timed("setup: STS, emulator"):
                pki_dir = str(tmp / "pki")
                pki.ensure(pki_dir)
                firsts = {}
                for u in all_units:
                    firsts.setdefault(u.vendor, u)
                chosen = list(firsts.values()) + [u for u in all_units if u not in firsts.values()]
                token = sorted(u.cvr for u in chosen[:args.token_municipalities])
                certificate = sorted({u.cvr for u in all_units} - set(token))
                env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
                sts_args = [a for cvr in token for a in ("--agreement", f"system:{cvr}:{emulator.ENTITY_ID}")]
                procs["sts"], sts_port = start_service(
                    "sts", [PY, "-m", "fbs_debitor.sandbox", "sts", "--pki", pki_dir, *sts_args], logs, env)
                sts_url = f"https://127.0.0.1:{sts_port}/runtime/api/rest/wstrust/v1/issue"
                certs = pki.paths(pki_dir)
                emu_args = [a for cvr in token for a in ("--token-cvr", cvr)]
                emu_args += [a for cvr in certificate for a in ("--agreement", f"{cvr}={access_plan.agreement_uuid(cvr)}")]
                procs["emulator"], emu_port = start_service("emulator", [
                    PY, "-m", "fbs_debitor.sandbox", "emulator", "--vendor", "KMD_OPUS", "--vendors-from-fbs",
                    "--db", emu_url, "--tls-cert", certs["server_cert"], "--tls-key", certs["server_key"],
                    "--client-ca", certs["ca_cert"], "--sts-cert", certs["sts_signing_cert"], *emu_args], logs, env)
                emu_endpoint = f"https://127.0.0.1:{emu_port}/service/OIR/DebitorRegistreringAfsend/1"
                for conn_id, conn in access_plan.connections(token, certificate, emu_endpoint, sts_url,
                                                             pki_dir).items():
                    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
            print(f"STS and emulator up: {len(certificate)} municipalities in certificate mode (own agreement), "
                  f"{len(token)} in token mode", flush=True)

            spent_initial: dict = defaultdict(float)
            calls_initial: Counter = Counter()
            spent: dict = defaultdict(float)
            calls: Counter = Counter()
            data_docs = tmp / "var" / "data_docs"
            with phases.timed("initial hand-over (one transfer run)"):
                with clients(stores, spent_initial, calls_initial) as c, quiet(logs):
                    first_run, _ = run_transfer(stores, c, kind="transfer", data_docs_dir=data_docs,
                                                data_quality=not args.no_dq)
            initial = ledger.run_counts(stores.ledger, first_run)
            initial_accepted = per_agency(initial, ("accepted",))
            run = ledger.get_run(stores.ledger, first_run)
            if run.status != "success":
                problems.append(f"initial hand-over: {run.status}: {run.error}")
            print(f"initial hand-over: {sum(initial_accepted.values()):,} claims accepted in "
                  f"{phases.seconds['initial hand-over (one transfer run)']:.1f} s ({run.status})", flush=True)

            # The day.
            (tmp / "payments" / "inbox").mkdir(parents=True)
            box = FolderInbox(tmp / "payments" / "inbox", own=True)
            box.check()
            # The first delivery of the day with the emulator's extras (per vendor a reversal and two
            # movements on claims it does not hold from FBS: held for review); afterwards payments and
            # write-offs only, or 96 EG calls would make 192 unknown movements.
            first_mix = emulator_payments.Mix(rate=args.rate)
            mix = emulator_payments.Mix(rate=args.rate, reversals=0, unknown=0)
            start = dt.datetime.combine(day, dt.time()).astimezone()
            fees: Counter = Counter()
            changes: Counter = Counter()
            day_runs: list[str] = []
            pay_runs: list[str] = []
            files_landed = 0
            differences = []
            for q in range(args.hours * 4):
                t = start + QUARTER * (q + 1)
                naive = t.replace(tzinfo=None)
                if q % 4 == 3:                       # on the hour: FBS changes, then the hourly transfer
                    with phases.timed("FBS: new fees and changes (hourly)"):
                        fees.update(new_fees(stores, fees_per_hour, naive - dt.timedelta(minutes=20), seed=args.seed))
                        changes.update(simulate(stores, seed=args.seed + q, per_kind=args.changes_per_kind,
                                                at=naive - dt.timedelta(minutes=10)))
                    try:
                        with phases.timed("transfer runs (hourly)"), clients(stores, spent, calls) as c, \
                                quiet(logs):
                            run_id, _ = run_transfer(stores, c, kind="transfer", data_docs_dir=data_docs,
                                                     data_quality=not args.no_dq)
                        day_runs.append(run_id)
                        r = ledger.get_run(stores.ledger, run_id)
                        if r.status != "success":
                            problems.append(f"transfer {naive:%H:%M}: {r.status}: {r.error}")
                    except Exception as exc:   # reported; the day goes on
                        problems.append(f"transfer {naive:%H:%M}: {type(exc).__name__}: {exc}")
                        traceback.print_exc()
                with phases.timed("emulator delivers payments (every 15 min)"):
                    landed = emulator_payments.deliver(emu_url, box.inbox, t, vendors, args.seed,
                                                       first_mix if q == 0 else mix,
                                                       since=start, municipality_of_agency=municipality_of)
                files_landed += len(landed)
                if landed:
                    run_id = ledger.start_run(stores.ledger, "payments")
                    try:
                        with phases.timed("payments runs: apply"):
                            try:
                                payments.ingest(stores, box, run_id)
                            except payments.FilesLeft as exc:
                                problems.append(f"payments {naive:%H:%M}: {exc}")
                            payments.record_run_counts(stores.ledger, run_id)
                        with phases.timed("payments runs: reconcile"):
                            report = payment_reconciliation.reconcile_payments(stores)
                            report.write_csv(payment_reconciliation.report_path(run_id))
                        ledger.finish_run(stores.ledger, run_id, "success")
                        pay_runs.append(run_id)
                        if not report.ok:
                            differences = report.differences
                    except Exception as exc:
                        ledger.finish_run(stores.ledger, run_id, "failed", f"{type(exc).__name__}: {exc}")
                        problems.append(f"payments {naive:%H:%M}: {type(exc).__name__}: {exc}")
                        traceback.print_exc()
                if q % 8 == 7:
                    print(f"  {naive:%H:%M} simulated; {time.perf_counter() - t0:.0f} s so far; transfer runs "
                          f"{phases.seconds.get('transfer runs (hourly)', 0):.0f} s, payments runs "
                          f"{phases.seconds.get('payments runs: apply', 0):.0f} s; problems {len(problems)}", flush=True)

            # The night: staff reports per municipality, then the reconciliation against the emulator.
            report_seconds: dict = defaultdict(float)
            reports_out = tmp / "var" / "reports" / day.isoformat()
            with phases.timed("nightly staff reports (one build per municipality)"):
                for u in all_units:
                    t = time.perf_counter()
                    try:
                        dq_report.build_reports(stores, reports_out, day, agencies=u.agencies)
                    except Exception as exc:
                        problems.append(f"report {u.cvr}: {type(exc).__name__}: {exc}")
                    report_seconds[u.cvr] += time.perf_counter() - t
            from fbs_debitor import cli
            from fbs_debitor.claims import fingerprints
            with phases.timed("reconciliation: claims and payments against the emulator"):
                held = emulator.holdings(emu_url, fingerprints.verify_key(stores.ledger))
                ok = cli.reconcile(stores, held, emulator_payments.movements(emu_url), show=5,
                                   out=str(tmp / "claims.csv"), payments_out=str(tmp / "payments.csv"))

            # Figures.
            day_counts: Counter = Counter()
            for run_id in day_runs:
                day_counts.update(ledger.run_counts(stores.ledger, run_id))
            pay_counts: Counter = Counter()
            for run_id in pay_runs:
                pay_counts.update(ledger.run_counts(stores.ledger, run_id))
            accepted = per_agency(day_counts, ("accepted",))
            rejected = per_agency(day_counts, ("rejected",))
            unconfirmed = per_agency(day_counts, ("unconfirmed", "failed", "held_access"))
            changes_sent = per_agency(day_counts, ("changes_accepted",))
            applied = per_agency(pay_counts, ("movements_applied",))
            held_mv = per_agency(pay_counts, ("movements_held",))
            if os.environ.get("NATDAY_CATEGORIES"):
                print(sorted({c for (_a, c, _r) in day_counts}), sorted({c for (_a, c, _r) in pay_counts}))
            emu_calls = Counter(c["municipality_cvr"] for c in emulator.calls(emu_url) if not c["refused"])

            def total(counter: Counter, u) -> int:
                return sum(counter.get(a, 0) for a in u.agencies)

            rows = []
            for u in all_units:
                rows.append((total(patrons_of, u), u, total(initial_accepted, u), total(fees, u), total(accepted, u),
                             total(rejected, u), total(unconfirmed, u), total(changes_sent, u), total(applied, u),
                             total(held_mv, u), emu_calls.get(u.cvr, 0), spent[u.cvr] + spent_initial[u.cvr],
                             report_seconds[u.cvr]))
            rows.sort(key=lambda r: (-r[0], r[1].cvr))
            print()
            print(f"per municipality, largest first ({min(args.show, len(rows))} of {len(rows)}): patrons; claims "
                  "accepted at the hand-over; in the day: new fees in FBS, claims accepted / rejected / unconfirmed, "
                  "changes accepted, payments applied / held; debtor calls (hand-over and day), seconds in them; "
                  "report seconds")
            print(f"  {'cvr':8} {'name':13} {'vendor':8} ag {'patrons':>7} {'handover':>8} {'fees':>5} {'acc':>5} "
                  f"{'rej':>4} {'unc':>4} {'chg':>4} {'paid':>5} {'held':>4} {'calls':>5} {'call s':>6} {'rep s':>5}")
            for r in rows[:args.show]:
                u = r[1]
                print(f"  {u.cvr:8} {u.name[:13]:13} {u.vendor:8} {len(u.agencies):2} {r[0]:7,} {r[2]:8,} {r[3]:5,} "
                      f"{r[4]:5,} {r[5]:4,} {r[6]:4,} {r[7]:4,} {r[8]:5,} {r[9]:4,} {r[10]:5,} {r[11]:6.1f} {r[12]:5.1f}")
            sizes = sorted(r[0] for r in rows)
            median = sizes[len(sizes) // 2] if len(sizes) % 2 else (sizes[len(sizes) // 2 - 1] + sizes[len(sizes) // 2]) / 2
            print()
            print(f"municipalities: {len(rows)} ({', '.join(f'{v} {n}' for v, n in sorted(Counter(u.vendor for u in all_units).items()))}); "
                  f"patrons per municipality: smallest {sizes[0]:,}, median {median:,.0f}, largest {sizes[-1]:,} "
                  f"({sizes[-1] / median:.1f}x the median)")
            print(f"totals: hand-over {sum(initial_accepted.values()):,} claims accepted; day: {sum(fees.values()):,} new "
                  f"fees, {sum(changes.values())} changes in FBS; {len(day_runs)} transfer runs: "
                  f"{sum(accepted.values()):,} claims accepted, {sum(rejected.values()):,} rejected, "
                  f"{sum(unconfirmed.values()):,} unconfirmed/held, {sum(changes_sent.values()):,} change messages accepted; "
                  f"{files_landed:,} payment files in {len(pay_runs)} payments runs: {sum(applied.values()):,} "
                  f"movements applied, {sum(held_mv.values()):,} held; {sum(emu_calls.values()):,} debtor calls "
                  f"({sum(spent_initial.values()) + sum(spent.values()):.0f} s in them)")
            print(f"reconciliation at the end: {'OK' if ok else 'differences (see above)'}; the last payments run's "
                  f"reconciliation: {len(differences)} difference(s)")
            print()
            print("wall time per phase:")
            for name, secs in phases.seconds.items():
                n = phases.count[name]
                print(f"  {name}: {secs:.1f} s" + (f" ({n} times, {secs / n:.2f} s each)" if n > 1 else ""))
            print(f"  the simulated day ({args.hours} h) in all: "
                  f"{sum(s for k, s in phases.seconds.items() if not k.startswith(('setup', 'initial'))):.1f} s")
            peaks = {name: vm_hwm_mb(p.pid) for name, p in procs.items()}
            print(f"peak RSS: this process (every step) {peak_rss_mb():.0f} MB; emulator {peaks.get('emulator', 0):.0f} MB; "
                  f"STS {peaks.get('sts', 0):.0f} MB (VmHWM; PostgreSQL's own processes not counted)")
            if problems:
                print(f"problems ({len(problems)}):")
                for p in problems[:30]:
                    print(f"  {p}")
            stores.dispose()
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
            if cluster is not None:
                cluster.stop()
    print(f"wall time in all: {time.perf_counter() - t0:.0f} s")
    return 0


t0 = time.perf_counter()

if __name__ == "__main__":
    sys.exit(main())
