"""Floor for sending: a naive SF1590 client that sends ONE claim per SOAP call.

    python benchmarks/floor_send_one_per_call.py --url http://127.0.0.1:PORT/service/... --requests DIR [--json]

What a first client would do with zeep and nothing else: a plain ``zeep.Client`` built from the
project's WSDL (``include/xsd/DebitorRegistreringAfsend.wsdl``), the requests as normal zeep
objects, one ``OpretDebitorkonto`` call per claim (no batching), the InvocationContext header as a
zeep object, no ledger, no retries. Its input is the request files ``transfer --dry-run`` writes
(``DIR/<agency>/batch-NNNNN.xml``, found recursively): each file is read into zeep objects and cut
into one request per claim BEFORE the clock starts, so only the sending is timed (the floor gets
every advantage). It prints claims sent, wall seconds, CPU seconds of this process while sending
(``resource.getrusage``) and peak RSS (VmHWM); ``--json`` prints them as one JSON line instead.

Not a test: ``benchmarks/bench_send.py`` runs it against the emulator, interleaved with the
project's delivery path.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import uuid
from pathlib import Path

import requests
from common import own_peak_rss_mib  # benchmarks/common.py: this script's folder is on sys.path
from lxml import etree
from zeep import Client, Settings
from zeep.transports import Transport

ROOT = Path(__file__).resolve().parents[1]
WSDL = ROOT / "include" / "xsd" / "DebitorRegistreringAfsend.wsdl"
BINDING = "{urn:fbs-debitor:modelled:sf1590:DebitorRegistreringAfsend:1:wsdl}DebitorRegistreringAfsendBinding"
NS_DR = "urn:fbs-debitor:modelled:sf1590:DebitorRegistreringAfsend:1"
NS_IC = "http://serviceplatformen.dk/xml/schemas/InvocationContext/1/"
AGREEMENT = {"ServiceAgreementUUID": "11111111-1111-4111-8111-111111111111",
             "UserSystemUUID": "22222222-2222-4222-8222-222222222222",
             "UserUUID": "33333333-3333-4333-8333-333333333333",
             "ServiceUUID": "e354a6d1-500b-49c6-916a-510623e12fba"}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_claim_requests(client: Client, files: list[Path], limit: int | None) -> list[dict]:
    """Every claim of the files as the keyword arguments of its own OpretDebitorkonto call."""
    element = client.get_element(f"{{{NS_DR}}}OpretDebitorkontoAnmodning")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    calls: list[dict] = []
    for path in files:
        values = element.parse(etree.parse(str(path), parser).getroot(), client.wsdl.types)
        for account in values.Debitorkonto:
            for claim in account.Fordring:
                single = type(account)(**{**{k: account[k] for k in account}, "Fordring": [claim]})
                head = type(values.Hovedoplysninger)(**{**{k: values.Hovedoplysninger[k]
                                                            for k in values.Hovedoplysninger},
                                                         "TransaktionsId": str(uuid.uuid4())})
                calls.append({"Hovedoplysninger": head, "Afsender": values.Afsender, "Debitorkonto": [single]})
                if limit and len(calls) >= limit:
                    return calls
    return calls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the debtor emulator's SOAP address (plain http on loopback)")
    p.add_argument("--requests", required=True, type=Path, help="folder of dry-run request files (batch-*.xml)")
    p.add_argument("--limit", type=int, default=0, help="send at most this many claims (0: all)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args()

    files = sorted(args.requests.rglob("batch-*.xml"))
    if not files:
        print(f"no batch-*.xml under {args.requests}", file=sys.stderr)
        return 2
    session = requests.Session()
    session.trust_env = False
    transport = Transport(session=session, timeout=10, operation_timeout=120)
    client = Client(str(WSDL), transport=transport, settings=Settings(strict=True, forbid_dtd=True,
                                                                      forbid_entities=True, forbid_external=True))
    service = client.create_service(BINDING, args.url)
    header = client.get_element(f"{{{NS_IC}}}InvocationContext")(**AGREEMENT)
    calls = one_claim_requests(client, files, args.limit or None)

    receipts = 0
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for kwargs in calls:
        answer = service.OpretDebitorkonto(_soapheaders=[header], **kwargs)
        receipts += len(answer.Kvittering or [])
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    peak = own_peak_rss_mib()
    session.close()
    if receipts != len(calls):
        print(f"warning: {receipts} receipts for {len(calls)} claims", file=sys.stderr)
    result = {"claims": len(calls), "calls": len(calls), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
              "peak_rss_mib": round(peak, 1)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{len(calls):,} claims in {len(calls):,} calls (one claim each): {wall:.1f} s = "
              f"{len(calls) / wall:,.0f} claims/s; client CPU {cpu:.1f} s ({cpu / len(calls) * 1e3:.2f} ms per "
              f"claim); peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
