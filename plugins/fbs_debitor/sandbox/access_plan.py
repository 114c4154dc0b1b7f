"""The demo's Serviceplatformen access: which municipality calls in token mode and which in
certificate mode, the agreements the sandbox STS knows, the emulator's and the inbound service's
access options, and the Airflow Connections that point the integration at them.

In real life each municipality approves its own agreements in KOMBIT's STS Administration and the
integration team writes one connection per municipality (docs/deployment.md). Here the synthetic
municipality's agencies are each a municipality (``agency.municipality_cvr``); the agencies named
with ``--token-agency`` call with STS tokens, every other one with its certificate and its own
service agreement UUID (made up, stable per CVR).

``plan`` prints shell assignments (for ``eval`` in ./run) of the options for the STS, the emulator
and the inbound service; ``connections`` prints the ``AIRFLOW_CONN_SERVICEPLATFORMEN[_<CVR>]``
exports once the emulator's and the STS's addresses are known; ``calls`` prints, per
municipality, how its calls arrived at the emulator (mode, agreement, accepted or refused).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import uuid
from collections import Counter

import sqlalchemy as sa

from fbs_debitor.core.db import make_engine
from fbs_debitor.core.settings import FBS_SCHEMA, database_urls
from fbs_debitor.payments.inbound import FBS_ENTITY_ID
from fbs_debitor.sandbox import emulator, pki

AGREEMENTS = uuid.UUID("a9d3f1e2-5b7c-4d8e-9f01-1590a6ee0017")     # namespace of the demo's agreement UUIDs
DEMO_UUIDS = {"user_system_uuid": "0b7f7a8e-3c1b-4f0e-8a4a-6d2f0e9c1a22",
              "user_uuid": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"}


def agreement_uuid(cvr: str, service: str = "SF1590_B_01") -> str:
    """The demo's (made-up, stable) service agreement UUID of one municipality and service."""
    return str(uuid.uuid5(AGREEMENTS, f"{service}:{cvr}"))


def municipalities(fbs_url: str | None = None) -> dict[str, str]:
    """agency -> municipality CVR, from the synthetic FBS."""
    engine = make_engine(fbs_url or database_urls().fbs, FBS_SCHEMA)
    try:
        with engine.connect() as conn:
            return {a: c for a, c in conn.execute(sa.text("SELECT agency_id, municipality_cvr FROM agency"))}
    finally:
        engine.dispose()


def split(token_agencies: list[str], fbs_url: str | None = None) -> tuple[list[str], list[str]]:
    """(token-mode CVRs, certificate-mode CVRs), each sorted."""
    of = municipalities(fbs_url)
    unknown = sorted(set(token_agencies) - set(of))
    if unknown:
        raise SystemExit(f"access-plan: --token-agency {', '.join(unknown)}: no such agency in FBS")
    token = sorted({of[a] for a in token_agencies})
    certificate = sorted(set(of.values()) - set(token))
    return token, certificate


def plan_lines(token: list[str], certificate: list[str]) -> list[str]:
    sts = []
    for cvr in token:       # the system asks for SF1590_B_01 tokens; Serviceplatformen for B_01A calls to FBS
        sts += ["--agreement", f"system:{cvr}:{emulator.ENTITY_ID}",
                "--agreement", f"serviceplatformen:{cvr}:{FBS_ENTITY_ID}"]
    emu = [a for cvr in token for a in ("--token-cvr", cvr)]
    emu += [a for cvr in certificate for a in ("--agreement", f"{cvr}={agreement_uuid(cvr)}")]
    inbound = [a for cvr in token for a in ("--token-cvr", cvr)]
    inbound += [a for cvr in certificate for a in ("--certificate-cvr", cvr)]
    payments = [a for cvr in token for a in ("--token-cvr", cvr)]
    return [f"DEMO_TOKEN_CVRS={shlex.quote(' '.join(token))}",
            f"DEMO_CERTIFICATE_CVRS={shlex.quote(' '.join(certificate))}",
            f"DEMO_STS_ARGS={shlex.quote(shlex.join(sts))}",
            f"DEMO_EMULATOR_ACCESS_ARGS={shlex.quote(shlex.join(emu))}",
            f"DEMO_INBOUND_ACCESS_ARGS={shlex.quote(shlex.join(inbound))}",
            f"DEMO_PAYMENTS_ACCESS_ARGS={shlex.quote(shlex.join(payments))}"]


def connections(token: list[str], certificate: list[str], emulator_url: str, sts_url: str,
                pki_dir: str) -> dict[str, dict]:
    """The connections: a certificate-mode default, each certificate municipality's own agreement
    UUID, and each token municipality switched to token mode with the STS."""
    certs = pki.paths(pki_dir)
    default = {"conn_type": "http", "host": emulator_url,
               "extra": {"client_cert": certs["system_cert"], "client_key": certs["system_key"],
                         "ca_bundle": certs["ca_cert"], "connect_timeout": 10, "operation_timeout": 120,
                         "max_attempts": 4, "backoff_seconds": 2, "auth": "invocation_context", **DEMO_UUIDS}}
    out = {"serviceplatformen": default}
    for cvr in certificate:
        out[f"serviceplatformen_{cvr}"] = {"extra": {"service_agreement_uuid": agreement_uuid(cvr)}}
    for cvr in token:
        out[f"serviceplatformen_{cvr}"] = {"extra": {"auth": "saml", "sts_endpoint": sts_url}}
    return out


def call_lines(emu_db: str) -> list[str]:
    """Per municipality: its calls at the emulator by mode, accepted or refused."""
    per: Counter = Counter()
    for c in emulator.calls(emu_db):
        per[(c["municipality_cvr"] or "?", c["auth"], "refused" if c["refused"] else "accepted")] += 1
    lines = []
    for cvr in sorted({k[0] for k in per}):
        parts = [f"{n} {auth} call(s) {outcome}" for (c, auth, outcome), n in sorted(per.items()) if c == cvr]
        lines.append(f"  municipality {cvr}: {', '.join(parts)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="access-plan", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("plan", help="shell assignments of the STS's, emulator's and inbound service's options")
    p.add_argument("--token-agency", action="append", default=[],
                   help="an agency whose municipality calls in token mode (repeatable)")
    p = sub.add_parser("connections", help="export lines of the demo's AIRFLOW_CONN_SERVICEPLATFORMEN[_<CVR>]")
    p.add_argument("--token-agency", action="append", default=[],
                   help="an agency whose municipality calls in token mode (repeatable)")
    p.add_argument("--emulator-url", required=True, help="the emulator's SF1590_B_01 endpoint (https)")
    p.add_argument("--sts-url", required=True, help="the sandbox STS's issue endpoint (https)")
    p.add_argument("--pki", required=True, help="the folder of the sandbox's certificates")
    p = sub.add_parser("calls", help="per municipality, how its calls arrived at the emulator")
    p.add_argument("--emulator-db", required=True, help="the emulator's database URL")
    args = parser.parse_args(argv)
    if args.what == "calls":
        print("\n".join(call_lines(args.emulator_db)))
        return 0
    token, certificate = split(args.token_agency)
    if args.what == "plan":
        print("\n".join(plan_lines(token, certificate)))
        return 0
    for conn_id, conn in connections(token, certificate, args.emulator_url, args.sts_url, args.pki).items():
        print(f"export AIRFLOW_CONN_{conn_id.upper()}={shlex.quote(json.dumps(conn))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
