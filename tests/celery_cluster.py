"""A whole fbs-debitor deployment on the CeleryExecutor, on loopback, for tests/test_celery.py.

What docker-compose.yaml runs, as processes of this machine: Airflow's metadata database and the
project's FBS extract and ledger on a real PostgreSQL server (the session's throwaway cluster), a
real ``redis-server`` as Celery's broker, the Airflow api-server (Airflow 3 tasks reach the metadata
only through its execution API), the scheduler, the dag processor and two Celery workers; and the
debtor side of the demo as ``./run main`` starts it (``python -m fbs_debitor.sandbox``): the
sandbox STS, the SF1590 debtor emulator (mutual TLS, each municipality its own agreement or token)
and the inbound payments service.

Every process is started in a session (a process group) of its own, its output in ``logs/<name>.log``
under the cluster's folder; ``stop()`` ends every group it started (SIGTERM, then SIGKILL), and
``kill(name)`` SIGKILLs one group at once, as a machine losing a worker would.

Each worker names itself through Airflow's ``[core] hostname_callable`` (``worker_hostname`` below,
reading ``CELERY_CLUSTER_NODE``): both run on this one machine, so the fully qualified host name
would not tell them apart in the task instances' ``hostname``.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fbs_debitor.core.settings import HOME

PY = sys.executable
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
TESTS = Path(__file__).resolve().parent


def worker_hostname() -> str:
    """Airflow's ``hostname_callable`` in the cluster: the worker's own name, else the machine's."""
    return os.environ.get("CELERY_CLUSTER_NODE") or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parallelism(cores: int | None = None) -> int:
    """Task slots as ./run's ``parallelism()`` sizes them: two per core, at least 4, at most 32."""
    cores = cores or os.cpu_count() or 2
    return max(4, min(32, cores * 2))


def shell_assignments(text: str) -> dict[str, str]:
    """``NAME=value`` and ``export NAME=value`` lines (shell quoting) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            words = words[1:]
        for word in words:
            name, sep, value = word.partition("=")
            if sep:
                out[name] = value
    return out


class ClusterError(RuntimeError):
    pass


@dataclass
class Cluster:
    root: Path
    pg_admin_url: str
    patrons: int = 1500
    workers: tuple[str, ...] = ("worker1", "worker2")
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    # --- processes --------------------------------------------------------------------------------

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.log(name), "ab") as out:
            proc = subprocess.Popen(argv, env=env or self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.root, start_new_session=True)
        self.procs[name] = proc
        return proc

    def run(self, name: str, *argv: str, timeout: int = 180, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)
        with open(self.log(name), "a") as out:
            out.write(proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            raise ClusterError(f"{name} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}")
        return proc

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def tree(self, name: str) -> list:
        """``name``'s process and every descendant (psutil), also those in process groups of their
        own: Airflow's supervisor puts each task's process in a group of its own."""
        import psutil

        try:
            root = psutil.Process(self.procs[name].pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _signal_tree(self, members: list, sig: int) -> None:
        import psutil

        for pgid in {self.procs_pgid(p) for p in members} - {None}:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        for p in members:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    @staticmethod
    def procs_pgid(p) -> int | None:
        try:
            return os.getpgid(p.pid)
        except ProcessLookupError:
            return None

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` as a machine losing it would: its process group (the worker and its pool)
        and every process it started (the tasks it runs), at once."""
        import psutil

        members = self.tree(name)
        self._signal_tree(members, signal.SIGKILL)
        self.procs[name].wait(timeout=30)
        _gone, alive = psutil.wait_procs(members, timeout=30)
        if alive:
            raise ClusterError(f"{name}: processes still alive after SIGKILL: {[p.pid for p in alive]}")

    def group_alive(self, name: str) -> bool:
        try:
            os.killpg(self.procs[name].pid, 0)
            return True
        except ProcessLookupError:
            return False

    def stop(self) -> list[int]:
        """End every process started and all their descendants, newest first: SIGTERM, then SIGKILL
        after 15 s. Returns the pids still alive after that (none expected)."""
        import psutil

        members = {name: self.tree(name) for name in reversed(list(self.procs))}
        for tree in members.values():
            self._signal_tree(tree, signal.SIGTERM)
        everyone = [p for tree in members.values() for p in tree]
        _gone, alive = psutil.wait_procs(everyone, timeout=15)
        if alive:
            self._signal_tree(alive, signal.SIGKILL)
            _gone, alive = psutil.wait_procs(alive, timeout=10)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return [p.pid for p in alive]

    def in_call(self, port: int) -> dict[str, int]:
        """Workers with a process in the middle of a call to the loopback ``port`` (an established
        TCP connection to it): worker name -> that process's pid."""
        import psutil

        found: dict[str, int] = {}
        for name in self.workers:
            if not self.alive(name):
                continue
            for p in self.tree(name):
                try:
                    conns = p.net_connections(kind="tcp")
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                if any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in conns):
                    found[name] = p.pid
        return found

    def tail(self, name: str, lines: int = 40) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for(self, what: str, check, timeout: float, watch: tuple[str, ...] = (), every: float = 0.5):
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            for name in watch:
                if not self.alive(name):
                    raise ClusterError(f"{name} stopped while waiting for {what}:\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{what}: not after {timeout:.0f} s")
            time.sleep(every)

    def service(self, name: str, argv: list[str], port: int = 0) -> int:
        """Start a sandbox service given ``--port PORT --port-file F`` (0: any free port); its port
        once it listens."""
        port_file = self.root / "run" / f"{name}.port"
        port_file.unlink(missing_ok=True)
        self.start(name, [*argv, "--port", str(port), "--port-file", str(port_file)])
        return int(self.wait_for(f"the {name}'s port", lambda: port_file.exists() and port_file.read_text().strip(),
                                 60, watch=(name,), every=0.1))

    # --- set-up -----------------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        from pgcluster import create_database

        for sub in ("logs", "run", "var", "airflow", "pki"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.urls = {name: create_database(self.pg_admin_url, f"celery_{name}_{tag}")
                     for name in ("airflow", "fbs", "ledger")}
        metadata = self.urls["airflow"].replace("postgresql+psycopg://", "postgresql+psycopg2://", 1)
        self.redis_port, self.api_port = free_port(), free_port()
        slots = parallelism()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FBS_DEBITOR_"))}
        env.update(
            PYTHONPATH=os.pathsep.join([str(HOME / "plugins"), str(TESTS)]),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            FBS_DEBITOR_HOME=str(HOME),
            FBS_DEBITOR_VAR=str(self.root / "var"),
            FBS_DEBITOR_FBS_URL=self.urls["fbs"],
            FBS_DEBITOR_LEDGER_URL=self.urls["ledger"],
            FBS_DEBITOR_FINGERPRINT_KEY=os.environ.get("FBS_DEBITOR_FINGERPRINT_KEY",
                                                       "fbs-debitor-test-fingerprint-key-0001"),
            AIRFLOW_HOME=str(self.root / "airflow"),
            AIRFLOW__CORE__DAGS_FOLDER=str(HOME / "dags"),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(HOME / "plugins"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DEFAULT_TIMEZONE="Europe/Copenhagen",
            # Triggered runs only: no scheduled run of any DAG gets in the way, none starts paused.
            AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=metadata,
            AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE="2",
            AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW="4",
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__CORE__PARALLELISM=str(slots),
            AIRFLOW__CELERY__WORKER_CONCURRENCY=str(max(1, slots // len(self.workers))),
            AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            AIRFLOW__CELERY__RESULT_BACKEND="db+" + metadata.replace("postgresql+psycopg2://", "postgresql://", 1),
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{self.api_port}/execution/",
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.api_port),
            AIRFLOW__API__WORKERS="1",
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
            AIRFLOW__API__SECRET_KEY=secrets.token_hex(16),
            AIRFLOW__CORE__FERNET_KEY="",
            AIRFLOW__CORE__HOSTNAME_CALLABLE="celery_cluster.worker_hostname",
            # A task whose worker died is retried after 5 s (./run and docker-compose: 120 s) ...
            AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="5",
            # ... once noticed, after 20 s without a heartbeat (default 300 s).
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="20",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="2",
            AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="0.5",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10",
            # The alerts of a failed try are logged only (no FBS_DEBITOR_ALERT_EMAIL).
            TZ="Europe/Copenhagen",
        )
        self.env = env
        return env

    def prepare_demo(self) -> None:
        """The synthetic municipality, certificates, STS, debtor emulator and inbound service, as
        ./run's start_emulator / start_inbound set them up (FBS_DEBITOR_DEMO_TOKEN_AGENCIES default)."""
        sandbox = [PY, "-m", "fbs_debitor.sandbox"]
        self.run("init", PY, "-m", "fbs_debitor", "init")
        self.run("generate", *sandbox, "generate", "--patrons", str(self.patrons), "--seed", "42")
        pki = str(self.root / "pki")
        self.run("pki", *sandbox, "pki", "--dir", pki)
        token = ["--token-agency", "726300"]
        plan = shell_assignments(self.run("access-plan", *sandbox, "access-plan", "plan", *token).stdout)
        self.token_cvrs = plan.get("DEMO_TOKEN_CVRS", "").split()
        self.certificate_cvrs = plan.get("DEMO_CERTIFICATE_CVRS", "").split()
        sts_port = self.service("sts", [*sandbox, "sts", "--pki", pki, *shlex.split(plan["DEMO_STS_ARGS"])])
        self.sts_url = f"https://127.0.0.1:{sts_port}/runtime/api/rest/wstrust/v1/issue"
        self.emulator_db = f"sqlite:///{self.root / 'var' / 'emulator.sqlite'}"
        self.emulator_argv = [
            *sandbox, "emulator", "--vendor", "KMD_OPUS", "--vendors-from-fbs", "--db", self.emulator_db,
            "--tls-cert", f"{pki}/server.crt", "--tls-key", f"{pki}/server.key", "--client-ca", f"{pki}/ca.crt",
            "--sts-cert", f"{pki}/sts_signing.crt", *shlex.split(plan["DEMO_EMULATOR_ACCESS_ARGS"])]
        emu_port = self.emulator_port = self.service("emulator", self.emulator_argv)
        emulator_url = f"https://127.0.0.1:{emu_port}/service/OIR/DebitorRegistreringAfsend/1"
        conns = self.run("access-plan", *sandbox, "access-plan", "connections", *token, "--emulator-url",
                         emulator_url, "--sts-url", self.sts_url, "--pki", pki).stdout
        self.env.update({k: v for k, v in shell_assignments(conns).items() if k.startswith("AIRFLOW_CONN_")})
        inbound_port = self.service("inbound", [
            PY, "-m", "fbs_debitor", "inbound", "--tls-cert", f"{pki}/server.crt", "--tls-key", f"{pki}/server.key",
            "--serviceplatformen-cert", f"{pki}/serviceplatformen.crt", "--sts-cert", f"{pki}/sts_signing.crt",
            *shlex.split(plan["DEMO_INBOUND_ACCESS_ARGS"])])
        self.inbound_url = f"https://127.0.0.1:{inbound_port}/service/OIR/DaekningAfskrivningRegistreringAfsend/1"
        self.payments_access_args = shlex.split(plan.get("DEMO_PAYMENTS_ACCESS_ARGS", ""))

    def restart_emulator(self, *options: str) -> None:
        """The debtor emulator again on its port (the Connections keep pointing at it), with more
        options (e.g. ``--fault-kinds slow --fault-rate 1 --slow-seconds 3``: every call takes that long)."""
        self.kill("emulator")
        del self.procs["emulator"]
        self.service("emulator", [*self.emulator_argv, *options], port=self.emulator_port)

    def start_redis(self) -> None:
        redis = self.redis_binary()
        self.start("redis", [redis, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(self.root / "run"), "--protected-mode", "yes"])

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        self.wait_for("redis-server answering PING", pong, 30, watch=("redis",), every=0.1)

    @staticmethod
    def redis_binary() -> str:
        import shutil

        found = shutil.which("redis-server")
        if not found:
            raise ClusterError("redis-server not found (apt-get install redis-server; ./run test installs it as root)")
        return found

    def start_airflow(self) -> None:
        self.run("airflow-init", AIRFLOW, "db", "migrate", timeout=300)
        self.run("airflow-init", AIRFLOW, "pools", "import", str(HOME / "include/airflow/pools.json"))
        self.start("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.api_port)])
        self.start("scheduler", [AIRFLOW, "scheduler"])
        self.start("dag-processor", [AIRFLOW, "dag-processor"])
        for name in self.workers:
            env = dict(self.env, CELERY_CLUSTER_NODE=name)
            self.start(name, [AIRFLOW, "celery", "worker", "--celery-hostname", f"{name}@%h", "--queues", "default",
                              "--concurrency", self.env["AIRFLOW__CELERY__WORKER_CONCURRENCY"], "--skip-serve-logs",
                              "--without-gossip"], env=env)
        self.wait_for("the api-server's health endpoint", self.api_healthy, 180,
                      watch=("api-server", "scheduler", "dag-processor", *self.workers), every=1)

    def api_healthy(self) -> bool:
        import json
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health", timeout=2) as r:
                health = json.load(r)
        except (OSError, ValueError):
            return False
        return health.get("metadatabase", {}).get("status") == "healthy"

    # --- the metadata database --------------------------------------------------------------------

    def sql(self, url_name: str, query: str, *params) -> list[tuple]:
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(self.urls[url_name])
        with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database,
                             password=u.password or None) as conn:
            return conn.execute(query, params).fetchall()

    def dags_parsed(self, *dag_ids: str) -> bool:
        rows = self.sql("airflow", "SELECT dag_id FROM serialized_dag WHERE dag_id = ANY(%s)", list(dag_ids))
        return {r[0] for r in rows} >= set(dag_ids)

    def trigger(self, dag_id: str, run_id: str) -> None:
        self.run("trigger", AIRFLOW, "dags", "trigger", dag_id, "--run-id", run_id)

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.sql("airflow", "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
        return rows[0][0] if rows else None

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        return self.wait_for(f"{dag_id} run {run_id} to finish",
                             lambda: (s := self.run_state(dag_id, run_id)) in ("success", "failed") and s,
                             timeout, watch=("scheduler", "api-server", "redis"), every=1)

    def task_instances(self, dag_id: str, run_id: str) -> list[tuple]:
        """(task_id, map_index, state, hostname, try_number) of the run's task instances."""
        return self.sql("airflow", "SELECT task_id, map_index, state, hostname, try_number FROM task_instance "
                                   "WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index", dag_id, run_id)

    def tries(self, dag_id: str, run_id: str) -> list[tuple]:
        """(task_id, map_index, try_number, state, hostname) of every try, earlier ones included."""
        now = self.sql("airflow", "SELECT task_id, map_index, try_number, state, hostname FROM task_instance "
                                  "WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
        before = self.sql("airflow", "SELECT task_id, map_index, try_number, state, hostname FROM "
                                     "task_instance_history WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
        return sorted(set(now) | set(before), key=lambda r: (r[0], r[1], r[2]))
