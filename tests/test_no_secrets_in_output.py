"""Issue 17: a scan of all output for tokens, private keys and full CPR numbers finds none.

The whole chain runs as an operator and the demo run it, each part its own process with its own
log: the sandbox STS, the debtor emulator over HTTPS with mutual TLS (one municipality in token
mode, the others in certificate mode with their own agreements), ``python -m fbs_debitor -v
transfer``, the inbound SF1590_B_01A service, the emulator calling it with payments, and
``python -m fbs_debitor -v payments``. Then every byte any of them printed or logged, and every
text file the run left under var/ (reports, logs; not the certificates' own folder or the
databases), is scanned."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from leaks import full_cpr_numbers

HOME = Path(__file__).resolve().parents[1]
TOKEN_AGENCY = "726300"
SECRET_MARKERS = re.compile(r"PRIVATE KEY|BEGIN CERTIFICATE|<saml|saml:Assertion|SignatureValue|X509Certificate"
                            r"|RequestedSecurityToken")

pytestmark = pytest.mark.slow


class Chain:
    def __init__(self, tmp_path: Path):
        self.var = tmp_path / "var"
        self.logs = tmp_path / "out"
        self.logs.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
        self.env.update(FBS_DEBITOR_VAR=str(self.var), PYTHONPATH=str(HOME / "plugins"), TZ="Europe/Copenhagen")
        self.servers: list[subprocess.Popen] = []
        self.n = 0

    def run(self, module: str, *args: str, ok: bool = True) -> str:
        self.n += 1
        done = subprocess.run([sys.executable, "-m", module, *args], env=self.env, capture_output=True, text=True,
                              timeout=600)
        (self.logs / f"{self.n:02d}-{args[0] if args[0] != '-v' else args[1]}.out").write_text(
            done.stdout + done.stderr)
        if ok:
            assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def serve(self, name: str, module: str, *args: str) -> int:
        port_file = self.logs / f"{name}.port"
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - kept open while the server runs
        proc = subprocess.Popen([sys.executable, "-m", module, *args, "--port", "0", "--port-file", str(port_file)],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.servers.append(proc)
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text())
            assert proc.poll() is None, (self.logs / f"{name}.log").read_text()
            time.sleep(0.1)
        raise AssertionError(f"{name} did not start")

    def stop(self) -> None:
        for proc in self.servers:
            proc.send_signal(signal.SIGTERM)
        for proc in self.servers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def texts(*folders: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every text file under ``folders`` (not under ``skip``), path -> content."""
    out = {}
    for folder in folders:
        for path in folder.rglob("*"):
            if not path.is_file() or any(s in path.parents for s in skip):
                continue
            if path.suffix in (".sqlite", ".db", ".lock", ".png") or path.name.endswith("-journal"):
                continue
            try:
                out[str(path)] = path.read_text("utf-8")
            except UnicodeDecodeError:
                out[str(path)] = path.read_bytes().decode("latin-1")
    return out


# A hash in hex (a landed file's key, a receipt's name) can hold ten digits in a row, as a UUID can:
# runs of 20 or more hex characters with a letter among them are not read as numbers.
# A FordringID (FBS-<agency>-<liability id>) is a liability's number, not a person's.
_HEX = re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-f]*[a-f])[0-9a-f]{20,}(?![0-9A-Za-z])|FBS-\d{6}-\d+")


def leaks_in(text: str, cert_lines: list[str]) -> list[str]:
    found = [f"CPR {m}" for m in full_cpr_numbers(_HEX.sub(" ", text))]
    found += [f"marker {m}" for m in SECRET_MARKERS.findall(text)]
    found += ["certificate material" for line in cert_lines if line in text]
    return found


def test_issue17_no_token_private_key_or_full_cpr_in_any_output_of_the_whole_chain(tmp_path):
    chain = Chain(tmp_path)
    try:
        chain.run("fbs_debitor", "init")
        chain.run("fbs_debitor.sandbox", "generate", "--patrons", "400", "--seed", "17")
        pki_dir = chain.var / "pki"
        chain.run("fbs_debitor.sandbox", "pki", "--dir", str(pki_dir))
        plan = dict(line.split("=", 1) for line in chain.run(
            "fbs_debitor.sandbox", "access-plan", "plan", "--token-agency", TOKEN_AGENCY).splitlines())
        plan = {k: shlex.split(v)[0] if shlex.split(v) else "" for k, v in plan.items()}
        sts_port = chain.serve("sts", "fbs_debitor.sandbox", "sts", "--pki", str(pki_dir),
                               *shlex.split(plan["DEMO_STS_ARGS"]))
        sts_url = f"https://127.0.0.1:{sts_port}/runtime/api/rest/wstrust/v1/issue"
        emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
        emu_port = chain.serve("emulator", "fbs_debitor.sandbox", "emulator", "--vendor", "KMD_OPUS",
                               "--vendors-from-fbs", "--db", emu_db, "--tls-cert", str(pki_dir / "server.crt"),
                               "--tls-key", str(pki_dir / "server.key"), "--client-ca", str(pki_dir / "ca.crt"),
                               "--sts-cert", str(pki_dir / "sts_signing.crt"),
                               *shlex.split(plan["DEMO_EMULATOR_ACCESS_ARGS"]))
        emu_url = f"https://127.0.0.1:{emu_port}/service/OIR/DebitorRegistreringAfsend/1"
        for line in chain.run("fbs_debitor.sandbox", "access-plan", "connections", "--token-agency", TOKEN_AGENCY,
                              "--emulator-url", emu_url, "--sts-url", sts_url, "--pki", str(pki_dir)).splitlines():
            name, value = line.removeprefix("export ").split("=", 1)
            chain.env[name] = shlex.split(value)[0]

        transfer = chain.run("fbs_debitor", "-v", "transfer", ok=False)
        assert "accepted" in transfer
        calls = chain.run("fbs_debitor.sandbox", "access-plan", "calls", "--emulator-db", emu_db)
        token_cvr = plan["DEMO_TOKEN_CVRS"]
        assert re.search(rf"municipality {token_cvr}: \d+ token call\(s\) accepted", calls), calls
        assert "certificate call(s) accepted" in calls and "refused" not in calls

        inbound_port = chain.serve("inbound", "fbs_debitor", "inbound", "--tls-cert", str(pki_dir / "server.crt"),
                                   "--tls-key", str(pki_dir / "server.key"),
                                   "--serviceplatformen-cert", str(pki_dir / "serviceplatformen.crt"),
                                   "--sts-cert", str(pki_dir / "sts_signing.crt"),
                                   *shlex.split(plan["DEMO_INBOUND_ACCESS_ARGS"]))
        inbound_url = f"https://127.0.0.1:{inbound_port}/service/OIR/DaekningAfskrivningRegistreringAfsend/1"
        delivered = chain.run("fbs_debitor.sandbox", "emulator-payments", "--db", emu_db, "--inbound", inbound_url,
                              "--pki", str(pki_dir), "--sts", sts_url, *shlex.split(plan["DEMO_PAYMENTS_ACCESS_ARGS"]))
        assert "SF1590_B_01A call(s)" in delivered
        payments = chain.run("fbs_debitor", "-v", "payments")
        assert re.search(r"movements: applied [1-9]", payments), payments
    finally:
        chain.stop()

    cert_lines = [pem.read_text().splitlines()[1] for pem in pki_dir.glob("*.crt")]
    key_lines = [pem.read_text().splitlines()[1] for pem in pki_dir.glob("*.key")]
    outputs = texts(chain.logs, chain.var, skip=(pki_dir,))
    assert len(outputs) > 10 and sum(map(len, outputs.values())) > 10_000      # there was output to scan
    found = {path: leaks_in(text, cert_lines + key_lines) for path, text in outputs.items()}
    assert {p: f for p, f in found.items() if f} == {}
    # the scan itself finds what it looks for
    assert leaks_in((pki_dir / "system.key").read_text(), key_lines)
    assert leaks_in("CPR 0707811234", []) == ["CPR 070781-****"]
