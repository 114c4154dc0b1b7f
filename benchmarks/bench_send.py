"""Benchmark: sending claims to the debtor emulator, the project's delivery path against floors.

    python benchmarks/bench_send.py [--patrons 5000] [--seed 1] [--rounds 3] [--batch-size N]
        [--ledger sqlite|postgresql]

Generates a synthetic municipality (``backfill_setup``: every cut-off date moved back, the broken
age limits repaired, so most open liabilities become claims), writes the claims the project builds
as request files (``transfer --dry-run``) for the floor, then runs, interleaved and ``--rounds``
times each, every one in its OWN process against a fresh emulator (its own process, a fresh
database each time), so that each client's CPU is measured apart from the receiver's:

* project: ``transfer.run.run_transfer`` without the GX checks on fresh copies of the FBS and the
  ledger: eligibility, build, validation, the outbox (recorded, marked sent, answered) and the
  Serviceplatformen client, in batches of ``FBS_DEBITOR_BATCH_SIZE`` (``--batch-size``);
* one-per-call: ``benchmarks/floor_send_one_per_call.py``, plain zeep, one claim per call;
* build floor: ``benchmarks/floor_build.py --json`` (when it is there), building the same claims
  without sending them.

Prints the medians: claims/s of each and the ratio project / one-per-call; the project's client
CPU seconds per claim (its whole ``run_transfer`` while it works: it reads eligibility, builds AND
sends, and runs the change step) and its ratio to the build floor's CPU per claim, the target's
measure; then, apart, the CPU of the sending step alone (``delivery.outbox.deliver_page``: write-back,
fingerprints, outbox, batches, the calls; eligibility reading and building excluded) and of the
SOAP calls, and the sending step's ratio to the build floor, printed for orientation only (the
floor reads and builds, the sending step does neither); the project client's peak RSS. CPU comes from
``resource.getrusage`` inside each child (around the work; the emulator's from ``os.wait4``) and
peak RSS from each child's own VmHWM. Not a test: figures, never assertions.

``--ledger postgresql`` puts the project's ledger on PostgreSQL, the production database (a
throwaway cluster, ``tests/pgcluster.py``, as the tests start it: loopback, fsync off; each round
its own copy of one migrated database): the outbox's index and commit work is then the server's
CPU, not the client's, while the server competes with both Python processes for the two cores. FBS
stays the SQLite file the floors read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT / "plugins"), str(HERE), str(ROOT / "tests")]

from common import own_peak_rss_mib  # noqa: E402

PYTHON = sys.executable


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the children ----------------------------------------------------------------------------------

def serve_emulator(db_url: str, fbs_url: str, port_file: Path) -> int:
    """The emulator in this process until SIGTERM; each FBS agency's vendor by its org unit."""
    from fbs_debitor.sandbox import emulator

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with emulator.Emulator("KMD_OPUS", db_url, vendor_by_org_unit=emulator.vendors_from_fbs(fbs_url)) as emu:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(emu.url)
        tmp.replace(port_file)
        while not stop:
            time.sleep(0.05)
    return 0


def project_child(work: Path, url: str, batch_size: int, ledger_url: str | None = None) -> int:
    """One delivering transfer run (the project's path) on the copies in ``work`` (the ledger at
    ``ledger_url`` when given); one JSON line."""
    from backfill_setup import emulator_config

    from fbs_debitor.core import ledger
    from fbs_debitor.core.settings import DatabaseUrls
    from fbs_debitor.core.stores import open_stores
    from fbs_debitor.delivery import outbox, serviceplatformen
    from fbs_debitor.transfer.run import run_transfer

    calls = {"n": 0, "wall": 0.0, "cpu": 0.0}
    delivering = {"cpu": 0.0}
    deliver_page = outbox.deliver_page

    def timed_deliver_page(*args, **kwargs):
        # the sending step of each eligibility page (write-back, fingerprints, outbox, batches, calls)
        c = _cpu()
        try:
            return deliver_page(*args, **kwargs)
        finally:
            delivering["cpu"] += _cpu() - c

    outbox.deliver_page = timed_deliver_page

    class Timed(serviceplatformen.Client):
        def call(self, request, on_attempt=None, while_waiting=None):
            # the caller's own work done while the call is on its way (the next batch's fingerprints,
            # ``outbox._deliver_agency``) is not the call's: its CPU and wall are taken out
            aside = {"wall": 0.0, "cpu": 0.0}

            def timed_aside():
                t_, c_ = time.perf_counter(), _cpu()
                try:
                    while_waiting()
                finally:
                    aside["wall"] += time.perf_counter() - t_
                    aside["cpu"] += _cpu() - c_

            t, c = time.perf_counter(), _cpu()
            try:
                return super().call(request, on_attempt, timed_aside if while_waiting is not None else None)
            finally:
                calls["n"] += 1
                calls["wall"] += time.perf_counter() - t - aside["wall"]
                calls["cpu"] += _cpu() - c - aside["cpu"]

    stores = open_stores(DatabaseUrls(fbs=f"sqlite:///{work}/fbs.sqlite",
                                      ledger=ledger_url or f"sqlite:///{work}/ledger.sqlite"))
    with Timed(emulator_config(url)) as client:
        cpu0, t0 = _cpu(), time.perf_counter()
        run_id, _ = run_transfer(stores, client, batch_size=batch_size, data_quality=False)
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    counts = ledger.run_counts(stores.ledger, run_id)
    sent = sum(n for (_a, c, _r), n in counts.items() if c in ("accepted", "rejected", "unconfirmed"))
    stores.dispose()
    print(json.dumps({"claims": sent, "calls": calls["n"], "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                      "call_wall_s": round(calls["wall"], 3), "call_cpu_s": round(calls["cpu"], 3),
                      "deliver_cpu_s": round(delivering["cpu"], 3),
                      # the GX checks are left out (data_quality=False): GX is then never imported
                      "gx_imported": any(m == "great_expectations" for m in sys.modules),
                      "peak_rss_mib": round(own_peak_rss_mib(), 1)}))
    return 0


# --- measuring -------------------------------------------------------------------------------------

def run_child_wait4(argv: list[str], env: dict | None = None) -> tuple[dict | None, dict, str]:
    """Run a child to its end: (its last JSON line or None, its CPU from ``os.wait4``'s rusage, its
    stderr tail). Its peak RSS is what it reports itself (``common.own_peak_rss_mib``, VmHWM)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        figures = {"rc": proc.returncode, "process_cpu_s": usage.ru_utime + usage.ru_stime}
        got = _last_json(out.read())
        if got is not None:
            figures["peak_rss_mib"] = got.get("peak_rss_mib", float("nan"))
        return got, figures, err.read().decode("utf-8", "replace")[-2000:]


def _last_json(data: bytes) -> dict | None:
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


class EmulatorProcess:
    """The emulator in its own process on a fresh database; CPU and peak RSS from ``os.wait4``."""

    def __init__(self, tmp: Path, fbs_url: str, name: str):
        self.dir = tmp / name
        self.dir.mkdir()
        port_file = self.dir / "url"
        self.proc = subprocess.Popen(
            [PYTHON, __file__, "--serve-emulator", "--db", f"sqlite:///{self.dir}/emulator.sqlite",
             "--fbs-url", fbs_url, "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "emulator.log", "wb"))
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start: {(self.dir / 'emulator.log').read_text()[-1000:]}")
            time.sleep(0.05)
        self.url = port_file.read_text().strip()
        self.usage = None

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        _pid, _status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        return {"cpu_s": usage.ru_utime + usage.ru_stime}


class PostgresLedgers:
    """``--ledger postgresql``: a throwaway cluster; one migrated database, copied for each round
    (``CREATE DATABASE ... TEMPLATE``). A database server's ledger needs the fingerprint key from the
    environment, not a key file: the children get a fixed benchmark key."""

    TEMPLATE = "ledger_template"

    def __init__(self):
        from pgcluster import ThrowawayCluster

        self.cluster = ThrowawayCluster()
        self.admin_url = self.cluster.start()
        os.environ.setdefault("FBS_DEBITOR_FINGERPRINT_KEY", "benchmark-fingerprint-key-000001")

    def migrate_template(self, fbs_url: str) -> None:
        from pgcluster import create_database

        from fbs_debitor.core.settings import DatabaseUrls
        from fbs_debitor.core.stores import init_stores, open_stores

        stores = open_stores(DatabaseUrls(fbs=fbs_url, ledger=create_database(self.admin_url, self.TEMPLATE)))
        try:
            init_stores(stores)
        finally:
            stores.dispose()

    def copy(self, name: str) -> str:
        from pgcluster import create_database

        return create_database(self.admin_url, name, template=self.TEMPLATE)

    def stop(self) -> None:
        self.cluster.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patrons", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--as-of", default="2026-11-20")
    p.add_argument("--batch-size", type=int, default=None, help="claims per message (default FBS_DEBITOR_BATCH_SIZE, "
                                                               "500)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved (medians printed)")
    p.add_argument("--floor-limit", type=int, default=0,
                   help="the one-per-call floor sends at most this many claims (0: all; its claims/s is a rate)")
    p.add_argument("--no-floor", action="store_true", help="leave out the one-per-call floor")
    p.add_argument("--ledger", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the project's ledger: the SQLite file (default) or a throwaway PostgreSQL cluster")
    # child modes
    p.add_argument("--serve-emulator", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-project", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--fbs-url", help=argparse.SUPPRESS)
    p.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--ledger-url", help=argparse.SUPPRESS)
    args = p.parse_args()

    from fbs_debitor.core.settings import batch_size_default

    batch_size = args.batch_size or batch_size_default()
    if args.serve_emulator:
        return serve_emulator(args.db, args.fbs_url, args.port_file)
    if args.child_project:
        return project_child(args.work, args.url, batch_size, args.ledger_url)

    from backfill_setup import backfill_municipality

    from fbs_debitor.transfer import dry_run

    with tempfile.TemporaryDirectory(prefix="bench_send_") as name, contextlib.ExitStack() as on_exit:
        tmp = Path(name)
        server = None
        if args.ledger == "postgresql":
            server = PostgresLedgers()
            on_exit.callback(server.stop)
        t = time.perf_counter()
        stores, fbs_url = backfill_municipality(name, args.patrons, args.seed, args.as_of)
        summary = dry_run.run(stores, tmp / "requests", batch_size=batch_size)
        stores.dispose()
        pristine = tmp / "pristine"
        pristine.mkdir()
        for f in ("fbs.sqlite", "ledger.sqlite"):
            shutil.copy(tmp / f, pristine / f)
        if server is not None:
            server.migrate_template(f"sqlite:///{tmp}/fbs.sqlite")
        print(f"setup: {args.patrons} patrons, seed {args.seed}; request files written "
              f"({sum(1 for _ in (tmp / 'requests').rglob('batch-*.xml'))} batches of up to {batch_size}) "
              f"in {time.perf_counter() - t:.1f} s", flush=True)
        del summary
        floor_build = HERE / "floor_build.py"
        results: dict[str, list[dict]] = {"project": [], "one_per_call": [], "build": []}
        for r in range(1, args.rounds + 1):
            # project: fresh copies of FBS and the ledger (it writes replacement CPRs to FBS, I1)
            work = tmp / f"project-{r}"
            work.mkdir()
            for f in ("fbs.sqlite", "ledger.sqlite"):
                shutil.copy(pristine / f, work / f)
            emu = EmulatorProcess(tmp, fbs_url, f"emu-project-{r}")
            argv = [PYTHON, __file__, "--child-project", "--work", str(work), "--url", emu.url,
                    "--batch-size", str(batch_size)]
            if server is not None:
                argv += ["--ledger-url", server.copy(f"project_{r}")]
            got, figures, err = run_child_wait4(argv)
            emu_figures = emu.stop()
            if got is None:
                print(f"project run {r} failed (rc {figures['rc']}):\n{err}", file=sys.stderr)
                return 1
            results["project"].append({**got, **figures, "emulator_cpu_s": emu_figures["cpu_s"]})
            print(f"round {r} project:      {got['claims']:,} claims in {got['calls']} calls, {got['wall_s']:.1f} s = "
                  f"{got['claims'] / got['wall_s']:,.0f} claims/s; CPU {got['cpu_s']:.1f} s "
                  f"(in calls {got['call_cpu_s']:.1f} s); peak RSS {figures['peak_rss_mib']:.0f} MiB; "
                  f"emulator CPU {emu_figures['cpu_s']:.1f} s", flush=True)
            shutil.rmtree(work)
            if not args.no_floor:
                emu = EmulatorProcess(tmp, fbs_url, f"emu-floor-{r}")
                argv = [PYTHON, str(HERE / "floor_send_one_per_call.py"), "--url", emu.url, "--requests",
                        str(tmp / "requests"), "--json"]
                if args.floor_limit:
                    argv += ["--limit", str(args.floor_limit)]
                got, figures, err = run_child_wait4(argv)
                emu_figures = emu.stop()
                if got is None:
                    print(f"one-per-call run {r} failed (rc {figures['rc']}):\n{err}", file=sys.stderr)
                    return 1
                results["one_per_call"].append({**got, **figures, "emulator_cpu_s": emu_figures["cpu_s"]})
                print(f"round {r} one-per-call: {got['claims']:,} claims in {got['calls']} calls, "
                      f"{got['wall_s']:.1f} s = {got['claims'] / got['wall_s']:,.0f} claims/s; CPU "
                      f"{got['cpu_s']:.1f} s; peak RSS {figures['peak_rss_mib']:.0f} MiB; emulator CPU "
                      f"{emu_figures['cpu_s']:.1f} s", flush=True)
            if floor_build.exists():
                out = tmp / f"build-{r}"
                got, figures, err = run_child_wait4([PYTHON, str(floor_build), "--fbs-url",
                                                     f"sqlite:///{pristine}/fbs.sqlite", "--out", str(out), "--json"])
                shutil.rmtree(out, ignore_errors=True)
                if got is None:
                    print(f"floor_build.py run {r} failed (rc {figures['rc']}):\n{err}", file=sys.stderr)
                else:
                    results["build"].append({**got, **figures})
                    print(f"round {r} build floor:  {got['claims']:,} claims built in {got['wall_s']:.1f} s; CPU "
                          f"{got['cpu_s']:.1f} s", flush=True)
            elif r == 1:
                print("floor_build.py not found", flush=True)

        project = results["project"]
        rate = median([x["claims"] / x["wall_s"] for x in project])
        cpu_per_claim = median([x["cpu_s"] / x["claims"] for x in project])
        send_cpu_per_claim = median([x["call_cpu_s"] / x["claims"] for x in project])
        deliver_cpu_per_claim = median([x["deliver_cpu_s"] / x["claims"] for x in project])
        print()
        print(f"medians of {args.rounds} interleaved rounds (patrons {args.patrons}, batches of {batch_size}, "
              f"the project's ledger on {'PostgreSQL' if server else 'SQLite'}):")
        print(f"  project:       {rate:,.0f} claims/s ({project[0]['claims']:,} claims)")
        if results["one_per_call"]:
            floor_rate = median([x["claims"] / x["wall_s"] for x in results["one_per_call"]])
            print(f"  one-per-call:  {floor_rate:,.0f} claims/s ({results['one_per_call'][0]['claims']:,} claims)")
            print(f"  ratio project / one-per-call: {rate / floor_rate:.1f}x (target >= 10x)")
        print(f"  project client CPU per claim: {cpu_per_claim * 1e3:.3f} ms (the whole run_transfer: eligibility, "
              f"building, sending, the change step; of it the sending step {deliver_cpu_per_claim * 1e3:.3f} ms, "
              f"inside the SOAP calls {send_cpu_per_claim * 1e3:.3f} ms)")
        if results["build"]:
            build = median([x["cpu_s"] / x["claims"] for x in results["build"]])
            print(f"  build floor CPU per claim:    {build * 1e3:.3f} ms; ratio project / build floor: "
                  f"{cpu_per_claim / build:.2f}x (target <= 2x; the whole process, as before)")
            print(f"  (the sending step alone / build floor: {deliver_cpu_per_claim / build:.2f}x; not the target's "
                  f"measure: the floor reads and builds, the sending step neither)")
        else:
            print("  build floor: floor_build.py not found")
        print(f"  timed: run_transfer only (imports before it; Great Expectations imported: "
              f"{any(x.get('gx_imported') for x in project)})")
        print(f"  project client peak RSS: {max(x['peak_rss_mib'] for x in project):.0f} MiB; emulator CPU per "
              f"claim {median([x['emulator_cpu_s'] / x['claims'] for x in project]) * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
