"""Issue 19: what was validated is what is sent, and the emulator is a fair receiver.

* The request element built and validated against the schema goes on the wire as it is: the bytes
  the receiver gets hold its serialization unchanged, in certificate mode (InvocationContext
  header) and in token mode (signed WS-Security header); zeep neither parses nor renders it again.
* Answers are read into the same receipts as zeep's reading of the binding gives.
* The emulator answers in one write on a socket without Nagle's algorithm (TCP_NODELAY), and
  builds its SQL statements once per process: a call of many claims runs a few statements, and a
  second call compiles nothing new.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from claim_rows import AGENCY, TODAY, batch_root, row
from debtor import connection_extra
from lxml import etree

from fbs_debitor.claims import messages
from fbs_debitor.claims import sf1590 as mapping
from fbs_debitor.claims.builder import build
from fbs_debitor.claims.sf1590 import NS_IC
from fbs_debitor.core.identity import ReplacementCprRegistry
from fbs_debitor.delivery import serviceplatformen
from fbs_debitor.sandbox import emulator, pki
from fbs_debitor.sandbox.sts import Sts, fingerprint
from fbs_debitor.tokens import wssecurity

CVR = "29189404"
ORG = AGENCY["org_unit_uuid"]          # the sender of batch_root's requests


@pytest.fixture
def received(monkeypatch) -> list[tuple[bytes, str]]:
    """The raw bodies (and SOAPActions) the emulator parses, in order."""
    bodies: list[tuple[bytes, str]] = []
    parse = emulator._parse_envelope

    def spy(body, soap_action):
        bodies.append((body, soap_action))
        return parse(body, soap_action)

    monkeypatch.setattr(emulator, "_parse_envelope", spy)
    return bodies


@pytest.fixture
def no_zeep_request_handling(monkeypatch) -> dict[str, int]:
    """Counts zeep's parsing and rendering of XML values and its serializing of SOAP messages."""
    from zeep.wsdl.messages.soap import SoapMessage
    from zeep.xsd.elements.element import Element

    counts = {"parse": 0, "render": 0, "serialize": 0}

    def counting(cls, name):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            counts["parse" if name == "parse" else name] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    counting(Element, "parse")
    counting(Element, "render")
    counting(SoapMessage, "serialize")
    return counts


def client_for(url: str, **over) -> serviceplatformen.Client:
    config = serviceplatformen.config_from_connection(url, None, None, connection_extra(**over))
    return serviceplatformen.Client(config, sleep=lambda _s: None)


def validated_request() -> tuple[etree._Element, bytes]:
    request = batch_root()
    messages.validate(request)            # what the outbox sends has passed this
    return request, etree.tostring(request, encoding="UTF-8")


def test_M1_certificate_mode_sends_the_validated_request_element_unchanged(emu_db, received,
                                                                             no_zeep_request_handling):
    request, serialized = validated_request()
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, client_for(emu.url) as client:
        answer = client.call(request)
    assert len(answer.receipts) == 3 and all(r.accepted for r in answer.receipts)
    ((body, action),) = received
    assert serialized in body                     # byte for byte the element that was validated
    assert action.strip('"') == emulator.ACTION_PREFIX + "OpretDebitorkonto"
    envelope = etree.fromstring(body)
    assert envelope.tag == f"{{{wssecurity.NS_SOAP11}}}Envelope"
    (header_block,) = envelope.find(f"{{{wssecurity.NS_SOAP11}}}Header")
    assert header_block.tag == f"{{{NS_IC}}}InvocationContext"
    assert messages.schema("InvocationContext.xsd").validate(header_block)
    # the caller's element is left as it was: not moved into an envelope, not changed
    assert request.getparent() is None and etree.tostring(request, encoding="UTF-8") == serialized
    # zeep never parsed the request into objects, rendered it, or serialized a message
    assert no_zeep_request_handling == {"parse": 0, "render": 0, "serialize": 0}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return pki.ensure(tmp_path_factory.mktemp("pki"))


def test_M1_token_mode_sends_the_validated_request_element_unchanged_under_a_signed_header(
        emu_db, certs, received, no_zeep_request_handling):
    request, serialized = validated_request()
    sts = Sts(sts_signing_cert=certs["sts_signing_cert"], sts_signing_key=certs["sts_signing_key"],
              server_cert=certs["server_cert"], server_key=certs["server_key"], client_ca=certs["ca_cert"],
              agreements=[(fingerprint(certs["system_cert"]), CVR, emulator.ENTITY_ID)])
    emu = emulator.Emulator("KMD_OPUS", emu_db, tls=emulator.tls_context(certs["server_cert"], certs["server_key"],
                                                                       certs["ca_cert"]),
                            municipality_by_org_unit={ORG: CVR}, sts_cert=certs["sts_signing_cert"],
                            token_cvrs=frozenset({CVR}))
    with sts, emu:
        config = serviceplatformen.config_from_connection(emu.url, None, None, {
            "auth": "saml", "sts_endpoint": sts.url, "municipality_cvr": CVR, "client_cert": certs["system_cert"],
            "client_key": certs["system_key"], "ca_bundle": certs["ca_cert"], "max_attempts": 1})
        with serviceplatformen.Client(config) as client:
            answer = client.call(request)
        (call,) = emulator.calls(emu_db)
    assert call["auth"] == emulator.TOKEN and call["refused"] is None and call["municipality_cvr"] == CVR
    assert len(answer.receipts) == 3
    ((body, _action),) = received
    assert serialized in body
    envelope = etree.fromstring(body)
    assert wssecurity.security_header(envelope) is not None
    assert envelope.find(f".//{{{NS_IC}}}InvocationContext") is None      # token mode names no UUIDs
    assert request.getparent() is None and etree.tostring(request, encoding="UTF-8") == serialized
    assert no_zeep_request_handling == {"parse": 0, "render": 0, "serialize": 0}


# --- answers ---------------------------------------------------------------------------------------

def _reply(kvitteringer: list[str], status: int = 200) -> SimpleNamespace:
    dr, f = mapping.NS_DR, mapping.NS_F
    items = "".join(f"<Kvittering>{k}</Kvittering>" for k in kvitteringer)
    body = (f"<?xml version='1.0' encoding='UTF-8'?><soap:Envelope xmlns:soap='{wssecurity.NS_SOAP11}'><soap:Body>"
            f"<OpretDebitorkontoSvar xmlns='{dr}' xmlns:f='{f}'><Hovedoplysninger>"
            "<f:TransaktionsId>b8f9c55d-1122-5c94-8b4c-4ff78813ac3d</f:TransaktionsId>"
            f"<f:TransaktionsTid>2026-11-20T10:00:00+00:00</f:TransaktionsTid></Hovedoplysninger>{items}"
            "</OpretDebitorkontoSvar></soap:Body></soap:Envelope>").encode()
    return SimpleNamespace(status_code=status, headers={"Content-Type": "text/xml; charset=utf-8"}, content=body,
                           encoding="utf-8")


@pytest.mark.parametrize("kvitteringer", [
    ["<f:Noegle>FBS-1-1</f:Noegle><f:StatusKode>MODTAGET</f:StatusKode><f:DebitorReference>R1</f:DebitorReference>",
     "<f:Noegle>FBS-1-2</f:Noegle><f:StatusKode>AFVIST</f:StatusKode><f:FejlKode>I3_X</f:FejlKode>"
     "<f:FejlTekst>Prisme modtager ikke æøå</f:FejlTekst>"],
    ["<f:Noegle>FBS-1-1</f:Noegle><f:StatusKode>MODTAGET</f:StatusKode><f:DebitorReference> R 1 </f:DebitorReference>"],
    ["<f:Noegle>FBS-1-1</f:Noegle><f:StatusKode>UNDER_BEHANDLING</f:StatusKode>"],       # not schema-valid
    ["<f:Noegle>FBS-1-1</f:Noegle><f:StatusKode>MODTAGET</f:StatusKode><f:DebitorReference/>"],   # ditto
], ids=["accepted-and-rejected", "spaces-kept", "unknown-status", "empty-reference"])
def test_M1_receipts_read_from_an_answer_are_those_zeep_reads_from_it(kvitteringer):
    client = client_for("http://127.0.0.1:9/service/OIR/DebitorRegistreringAfsend/1")
    try:
        by_zeep = mapping.receipts(client._binding.process_reply(client._zeep, client._binding.get("OpretDebitorkonto"),
                                                                 _reply(kvitteringer)))
        assert client._receipts("OpretDebitorkonto", _reply(kvitteringer)) == by_zeep
    finally:
        client.close()


# --- the emulator as a fair receiver ---------------------------------------------------------------

def test_emulator_answers_in_one_write_on_a_socket_without_nagle(emu_db, monkeypatch):
    nodelay: list[int] = []
    writes: list[int] = []
    setup = emulator._Handler.setup

    class CountingWriter:
        def __init__(self, inner):
            self.inner = inner

        def write(self, data):
            writes.append(len(data))
            return self.inner.write(data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    def spying_setup(self):
        setup(self)
        nodelay.append(self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        self.wfile = CountingWriter(self.wfile)

    monkeypatch.setattr(emulator._Handler, "setup", spying_setup)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, client_for(emu.url) as client:
        for _ in range(3):
            client.call(batch_root())
    assert nodelay and all(nodelay)
    assert len(writes) == 3            # each answer, status line to body, in a single write


def _many_claims_request(first: int, n: int) -> etree._Element:
    registry = ReplacementCprRegistry()
    accounts = [build(row(liability_id=i, number=f"G{i}"), registry, TODAY).account for i in range(first, first + n)]
    (batch,) = messages.build_batches(accounts, AGENCY, batch_size=500)
    return batch.root


def test_emulator_builds_its_statements_once_and_runs_a_few_per_call_not_per_claim(emu_db, monkeypatch):
    executed: list[str] = []
    engine_of = emulator._engine

    def engine(url):
        made = engine_of(url)
        sa.event.listen(made, "after_cursor_execute",
                        lambda conn, cursor, statement, params, context, many: executed.append(
                            str(getattr(context, "cache_hit", ""))))
        return made

    monkeypatch.setattr(emulator, "_engine", engine)
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, client_for(emu.url) as client:
        client.call(_many_claims_request(1000, 40))          # warms the statement cache
        executed.clear()
        answer = client.call(_many_claims_request(2000, 60))  # 60 new claims: stored, answered
        during = list(executed)
    assert len(answer.receipts) == 60 and all(r.accepted for r in answer.receipts)
    assert len(emulator.claims(emu_db)) == 100
    assert during and "CacheStats.CACHE_MISS" not in during, during     # nothing compiled again
    assert len(during) <= 8, during                                      # a few statements for 60 claims
