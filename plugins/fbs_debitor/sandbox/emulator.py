"""A local debtor system: a real SOAP 1.1 server on loopback serving the modelled SF1590
DebitorRegistreringAfsend service (OpretDebitorkonto, RetFordringTilstand).

It behaves like a careful receiver: every request is parsed safely (no DTDs, no entities, no
network), must carry Serviceplatformen's InvocationContext header (or, in token mode, a signed
WS-Security header) and the operation's SOAPAction, and is validated against the project's schema;
every answer is built with lxml and validated before it is sent. Accounts, claims and first answers live in its own tables (SQLite or
PostgreSQL, schema ``emulator``), so a repeated FordringID / AendringID is answered with its first
answer, also after a restart.

Changes (RetFordringTilstand, U1-U4) are applied to the stored claim: a cancellation, a
write-down (only to a lower amount above zero), an identification change (the claim moves to the
account of the new parties), a repayment (compensations only, at most the original amount). A
change to a cancelled or unknown claim is rejected, so tests prove the end state on this side.

Vendor behaviour: claim types outside ``accepted_claim_types`` are rejected (M3); PRISME rejects
claims on a replacement CPR (I3); KMD_OPUS and EG accept them. Like Serviceplatformen routing each
municipality to its own debtor system, ``vendor_by_org_unit`` (the sender's
OrganisatoriskEnhedUUID -> vendor; ``--vendors-from-fbs`` reads it from the FBS agencies) lets
one emulator behave as each agency's vendor; ``vendor`` is the default.

Who calls (issue 17): every call is made on behalf of one municipality, under that
municipality's own service agreement. ``municipality_by_org_unit`` (the sender's
OrganisatoriskEnhedUUID -> municipality CVR; ``--vendors-from-fbs`` reads it from the FBS agencies
too) names the municipality of each request. A call comes either in certificate mode (mutual TLS
plus the InvocationContext header; with ``agreements`` its ServiceAgreementUUID must be the
municipality's own agreement) or in STS token mode (a SAML holder-of-key assertion from the trusted
STS, ``sts_cert``, in a signed WS-Security header, for this service's entity id and the
municipality's CVR); ``token_cvrs`` names the municipalities that must call with a token. A refused
call gets HTTP 403 with a SOAP Client fault and nothing is stored; every call that got past parsing
is written to ``emu_call`` (``calls()``), accepted or refused. Access is checked after the fault
injection and the parsing, before anything is processed.

Fault injection (``fault_rate``, ``fault_kinds``, seeded): ``http500``, ``http503``, ``http400``
(the request refused), ``http403`` (access refused), ``slow``, ``drop`` and ``soapfault`` are
applied BEFORE the request is processed (nothing stored);
``drop_after_store`` processes and stores, then closes the connection without an answer (the
crash-after-processing case the client survives through idempotency).

A fair receiver (issue 19): every answer (status line, headers, body) goes in one write on a socket
with TCP_NODELAY, so no call waits on Nagle's algorithm and the client's delayed ACK; the SQL
statements are built once per process (module level) and one call reads and writes its whole
batch with a few statements (IN lists, executemany), not a few per claim.

Nothing here logs a full CPR number; payloads are logged at DEBUG only, masked.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import random
import re
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import sqlalchemy as sa
from cryptography import x509
from lxml import etree

from fbs_debitor.claims import messages
from fbs_debitor.claims import sf1590 as mapping
from fbs_debitor.claims.fingerprints import identity_print
from fbs_debitor.claims.sf1590 import NS_DR, NS_F, NS_IC
from fbs_debitor.core import settings
from fbs_debitor.core.db import as_amount, make_engine
from fbs_debitor.core.identity import mask_cpr, mask_cprs_in
from fbs_debitor.core.settings import FBS_SCHEMA, XSD_DIR, database_urls, var_dir
from fbs_debitor.sandbox.threaded import ServedInThread
from fbs_debitor.tokens import wssecurity
from fbs_debitor.tokens.saml import TokenRefused

log = logging.getLogger(__name__)

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SCHEMA_FILE = "DebitorRegistreringAfsend.xsd"
WSDL_FILE = "DebitorRegistreringAfsend.wsdl"
SERVED_FILES = frozenset({SCHEMA_FILE, "SF1590_Faelles.xsd", "InvocationContext.xsd", "AuthorityContext.xsd"})
ACTION_PREFIX = "urn:fbs-debitor:modelled:sf1590:DebitorRegistreringAfsend:1:"
OPERATIONS = {  # request root -> (operation, answer root), from the mapping's list of operations
    tag: (operation, f"{{{NS_DR}}}{operation}Svar") for tag, operation in mapping.OPERATIONS.items()}
VENDORS = ("KMD_OPUS", "PRISME", "EG")
CLAIM_TYPES = frozenset({"BIBLIOTEKSGEBYR_OVERSKREDET_LAANETID", "ERSTATNING_MED_ANERKENDELSE",
                         "ERSTATNING_UDEN_ANERKENDELSE"})
FAULT_KINDS = frozenset({"http500", "http503", "http400", "http403", "slow", "drop", "soapfault", "drop_after_store"})
MAX_BODY = 20 * 1024 * 1024
ACTIVE, CANCELLED = "ACTIVE", "CANCELLED"
MODTAGET, AFVIST = "MODTAGET", "AFVIST"
REFERENCE_NAMESPACE = uuid.UUID("6c1b0a8e-2f4d-4e51-9a55-1590e0e0d0b1")
# The entity id a token for this service is issued for (its SAML audience). MODELLED: KOMBIT's real
# entity id for SF1590_B_01 is not in the material at hand; this one follows the pattern of the
# service URIs Serviceplatformen publishes (http://entityid.kombit.dk/service/<service>/<version>).
ENTITY_ID = "http://entityid.kombit.dk/service/sf1590/DebitorRegistreringAfsend/1"
STS_ISSUER = "https://sts.sandbox.fbs-debitor.local/"
TOKEN, CERTIFICATE = "token", "certificate"
CVR_PATTERN = re.compile(r"\d{8}")

_ID_KINDS = {"CPRNummer": "CPR", "ErstatningCPRNummer": "ERSTATNING_CPR", "CVRNummer": "CVR"}

metadata = sa.MetaData()
emu_account = sa.Table(
    "emu_account", metadata,
    sa.Column("account_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_type", sa.String(60), nullable=False),
    sa.Column("ident_kind", sa.String(20), nullable=False),
    sa.Column("ident_number", sa.String(20), nullable=False),
    sa.Column("resp_kind", sa.String(20), nullable=False),
    sa.Column("resp_number", sa.String(20), nullable=False),
    sa.UniqueConstraint("account_type", "ident_kind", "ident_number", "resp_kind", "resp_number",
                        name="emu_account_key"),
)
emu_claim = sa.Table(
    "emu_claim", metadata,
    sa.Column("fordring_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("emu_account.account_id"), nullable=False),
    sa.Column("kravtype", sa.String(60), nullable=False),
    sa.Column("amount", sa.String(20), nullable=False),          # text: portable, exact
    sa.Column("original_amount", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("debitor_reference", sa.String(64), nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False),
)
emu_change = sa.Table(
    "emu_change", metadata,
    sa.Column("aendring_id", sa.String(100), primary_key=True),
    sa.Column("fordring_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("amount", sa.String(20)),
    sa.Column("applied_at", sa.DateTime, nullable=False),
)
emu_answer = sa.Table(  # the FIRST answer per key, replayed for a repeated key
    "emu_answer", metadata,
    sa.Column("operation", sa.String(40), primary_key=True),
    sa.Column("noegle", sa.String(100), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("debitor_reference", sa.String(200)),
    sa.Column("fejl_kode", sa.String(200)),
    sa.Column("fejl_tekst", sa.String(500)),
    sa.Column("answered_at", sa.DateTime, nullable=False),
)
emu_call = sa.Table(  # who called: every call that got past parsing, accepted or refused for access
    "emu_call", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("operation", sa.String(40), nullable=False),
    sa.Column("municipality_cvr", sa.String(8)),
    sa.Column("auth", sa.String(20), nullable=False),            # 'token' | 'certificate'
    sa.Column("agreement", sa.String(200)),   # the service agreement UUID, or the token's assertion id
    sa.Column("refused", sa.String(500)),     # why access was refused; NULL: accepted
)


# The statements, built once per process (SQLAlchemy compiles each once and caches it; a statement
# built per claim would be keyed and looked up again every time): one receiver call reads and
# writes its whole batch with a few statements (``IN`` lists, executemany), not a few per claim.
ACCOUNT_KEY = ("account_type", "ident_kind", "ident_number", "resp_kind", "resp_number")
IN_CHUNK = 500                     # values per IN list (far below SQLite's and PostgreSQL's limits)
_FIRST_ANSWER = sa.select(emu_answer).where(emu_answer.c.operation == sa.bindparam("op"),
                                            emu_answer.c.noegle == sa.bindparam("key"))
_FIRST_ANSWERS = sa.select(emu_answer).where(emu_answer.c.operation == sa.bindparam("op"),
                                             emu_answer.c.noegle.in_(sa.bindparam("keys", expanding=True)))
_INSERT_ANSWER = emu_answer.insert()
_INSERT_CLAIM = emu_claim.insert()
_INSERT_CHANGE = emu_change.insert()
_INSERT_CALL = emu_call.insert()
_INSERT_ACCOUNT = emu_account.insert()
_ACCOUNT_ID = sa.select(emu_account.c.account_id).where(
    *(emu_account.c[name] == sa.bindparam(name) for name in ACCOUNT_KEY))
_ACCOUNTS = sa.select(emu_account).where(   # the unique key's index, an IN list on each of its first columns
    emu_account.c.account_type.in_(sa.bindparam("types", expanding=True)),
    emu_account.c.ident_kind.in_(sa.bindparam("kinds", expanding=True)),
    emu_account.c.ident_number.in_(sa.bindparam("numbers", expanding=True)))
_ACCOUNT = sa.select(emu_account).where(emu_account.c.account_id == sa.bindparam("id"))
_CLAIM = sa.select(emu_claim).where(emu_claim.c.fordring_id == sa.bindparam("fid"))
_UPDATE_CLAIM = {  # by what a change sets
    "status": emu_claim.update().where(emu_claim.c.fordring_id == sa.bindparam("fid"))
    .values(status=sa.bindparam("new_status")),
    "amount": emu_claim.update().where(emu_claim.c.fordring_id == sa.bindparam("fid"))
    .values(amount=sa.bindparam("new_amount")),
    "account_id": emu_claim.update().where(emu_claim.c.fordring_id == sa.bindparam("fid"))
    .values(account_id=sa.bindparam("new_account_id")),
}


def _chunks(values: list, size: int = IN_CHUNK):
    for start in range(0, len(values), size):
        yield values[start:start + size]


class SoapFault(Exception):
    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code, self.text = code, text


class AccessRefused(Exception):
    """The caller may not make this call (HTTP 403, a SOAP Client fault). ``text`` names the reason
    (a reason code, a CVR or an agreement UUID: never a token or certificate)."""

    def __init__(self, text: str, access: Access):
        super().__init__(text)
        self.text, self.access = text, access


@dataclass(frozen=True)
class Access:
    """Who called: the municipality (None: not known), how ('token' | 'certificate') and under what
    (the service agreement UUID, or the token's assertion id)."""

    municipality_cvr: str | None
    auth: str
    agreement: str | None = None


@dataclass(frozen=True)
class Call:
    """A parsed request: the operation, its validated body element, the envelope it came in, and
    its InvocationContext and WS-Security headers (None when absent)."""

    operation: str
    request: etree._Element
    envelope: etree._Element
    invocation_context: etree._Element | None
    security: etree._Element | None


_SECURITY = re.compile(r"<(?P<p>[\w.-]+:)?Security\b.*?</(?P=p)?Security>", re.S)


def mask_payload(data: bytes | str) -> str:
    """The payload with every run of 10 digits (CPR, P-number) cut to DDMMYY-****, and a
    WS-Security header (token, signature, certificates) cut to its name."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return mask_cprs_in(_SECURITY.sub("<Security>(token and signature not logged)</Security>", text))


def _mask_ident(kind: str, number: str) -> str:
    return number if kind == "CVR" else mask_cpr(number)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _engine(db_url: str) -> sa.Engine:
    engine = make_engine(db_url, "emulator")
    metadata.create_all(engine)
    return engine


def claims(db_url: str) -> list[dict]:
    """Every stored claim, for tests and reconciliation; identifications masked."""
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(emu_claim, emu_account.c.account_type, emu_account.c.ident_kind,
                          emu_account.c.ident_number, emu_account.c.resp_kind, emu_account.c.resp_number)
                .join(emu_account, emu_account.c.account_id == emu_claim.c.account_id)
                .order_by(emu_claim.c.fordring_id)).mappings().all()
            changes = conn.execute(sa.select(emu_change).order_by(emu_change.c.aendring_id)).mappings().all()
    finally:
        engine.dispose()
    by_claim: dict[str, list[dict]] = {}
    for c in changes:
        by_claim.setdefault(c["fordring_id"], []).append(
            {"aendring_id": c["aendring_id"], "kind": c["kind"], "amount": as_amount(c["amount"])})
    return [{"fordring_id": r["fordring_id"], "kravtype": r["kravtype"], "amount": as_amount(r["amount"]),
             "original_amount": as_amount(r["original_amount"]), "status": r["status"],
             "debitor_reference": r["debitor_reference"], "account_type": r["account_type"],
             "identification_kind": r["ident_kind"],
             "identification": _mask_ident(r["ident_kind"], r["ident_number"]),
             "responsible_kind": r["resp_kind"], "responsible": _mask_ident(r["resp_kind"], r["resp_number"]),
             "changes": by_claim.get(r["fordring_id"], [])} for r in rows]


def calls(db_url: str) -> list[dict]:
    """Every call that got past parsing, in order: when, which operation, the municipality, how it
    authenticated ('token' | 'certificate'), under which agreement (or assertion id), and why it was
    refused (None: accepted)."""
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(emu_call).order_by(emu_call.c.id)).mappings()]
    finally:
        engine.dispose()


def holdings(db_url: str, secret: bytes) -> dict[str, dict]:
    """What the debtor side holds per FordringID, for reconciliation: status, amount, the keyed
    print of the account's parties (``fingerprints.identity_print``: no CPR leaves this function)
    and the repayments applied."""

    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(emu_claim.c.fordring_id, emu_claim.c.status, emu_claim.c.amount, emu_account.c.ident_kind,
                          emu_account.c.ident_number, emu_account.c.resp_kind, emu_account.c.resp_number)
                .join(emu_account, emu_account.c.account_id == emu_claim.c.account_id)).all()
            repaid = conn.execute(sa.select(emu_change.c.fordring_id, emu_change.c.amount)
                                  .where(emu_change.c.kind == "Tilbagebetaling")).all()
    finally:
        engine.dispose()
    out = {r.fordring_id: {"status": r.status, "amount": as_amount(r.amount), "repaid": Decimal(0),
                           "identity": identity_print(r.ident_kind, r.ident_number, r.resp_kind, r.resp_number,
                                                      secret)} for r in rows}
    for fid, amount in repaid:
        if fid in out:
            out[fid]["repaid"] += as_amount(amount)
    return out


# --- XML ---------------------------------------------------------------------------------------

def _parser() -> etree.XMLParser:
    return messages.safe_parser()


def _parse_envelope(body: bytes, soap_action: str | None) -> Call:
    """The parsed call (operation, validated request element, envelope, headers), or a SoapFault.
    The InvocationContext header is required for a call without a WS-Security header (certificate
    mode); a token call identifies itself with its token."""
    try:
        env = messages.parse_untrusted(body)
    except messages.UnsafeXml:
        raise SoapFault("Client", "DTDs and entities are not allowed") from None
    except etree.XMLSyntaxError:
        raise SoapFault("Client", "the request is not well-formed XML") from None
    if env.tag != f"{{{SOAP_NS}}}Envelope":
        raise SoapFault("VersionMismatch" if etree.QName(env).localname == "Envelope" else "Client",
                        "a SOAP 1.1 Envelope is required")
    header = env.find(f"{{{SOAP_NS}}}Header")
    context = None if header is None else header.find(f"{{{NS_IC}}}InvocationContext")
    security = wssecurity.security_header(env)
    if context is None and security is None:
        raise SoapFault("Client", "the InvocationContext header is required")
    soap_body = env.find(f"{{{SOAP_NS}}}Body")
    children = [] if soap_body is None else [c for c in soap_body if isinstance(c.tag, str)]
    if len(children) != 1 or children[0].tag not in OPERATIONS:
        raise SoapFault("Client", "the Body must hold one OpretDebitorkontoAnmodning or RetFordringTilstandAnmodning")
    request = children[0]
    operation = OPERATIONS[request.tag][0]
    if (soap_action or "").strip().strip('"') != ACTION_PREFIX + operation:
        raise SoapFault("Client", f"the SOAPAction must be {ACTION_PREFIX + operation}")
    # Validate the body element on its own document (the schema knows nothing of the envelope).
    standalone = etree.fromstring(etree.tostring(request), _parser())
    xsd = messages.schema(SCHEMA_FILE)
    if not xsd.validate(standalone):
        raise SoapFault("Client", f"schema validation failed at {messages.schema_error(xsd)}"[:500])
    return Call(operation, standalone, env, context, security)


def _uuid(text: str | None) -> str | None:
    """``text`` as a lower-case UUID, or None when it is none."""
    try:
        return str(uuid.UUID((text or "").strip()))
    except ValueError:
        return None


def _cvr(value: str, what: str) -> str:
    value = str(value).strip()
    if not CVR_PATTERN.fullmatch(value):
        raise ValueError(f"{what}: {value!r} is not a CVR number (8 digits)")
    return value


def _dr(name: str) -> str:
    return f"{{{NS_DR}}}{name}"


def _f(name: str) -> str:
    return f"{{{NS_F}}}{name}"


def _text(el: etree._Element, path: str) -> str:
    found = el.find(path)
    return (found.text or "").strip() if found is not None else ""


def _party(el: etree._Element | None) -> tuple[str, str] | None:
    if el is None:
        return None
    for child in el:
        if isinstance(child.tag, str) and etree.QName(child).localname in _ID_KINDS:
            return _ID_KINDS[etree.QName(child).localname], (child.text or "").strip()
    return None


def _envelope(payload: etree._Element) -> bytes:
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS})
    etree.SubElement(env, f"{{{SOAP_NS}}}Body").append(payload)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def fault_envelope(code: str, text: str) -> bytes:
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS})
    fault = etree.SubElement(etree.SubElement(env, f"{{{SOAP_NS}}}Body"), f"{{{SOAP_NS}}}Fault")
    etree.SubElement(fault, "faultcode").text = f"soap:{code}"
    etree.SubElement(fault, "faultstring").text = text
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _answer_element(answer_tag: str, transaction_id: str, answers: list[dict]) -> etree._Element:
    root = etree.Element(answer_tag, nsmap={None: NS_DR, "f": NS_F})
    head = etree.SubElement(root, _dr("Hovedoplysninger"))
    etree.SubElement(head, _f("TransaktionsId")).text = transaction_id
    etree.SubElement(head, _f("TransaktionsTid")).text = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    for a in answers:
        k = etree.SubElement(root, _dr("Kvittering"))
        etree.SubElement(k, _f("Noegle")).text = a["noegle"]
        etree.SubElement(k, _f("StatusKode")).text = a["status"]
        for key, tag in (("debitor_reference", "DebitorReference"), ("fejl_kode", "FejlKode"),
                         ("fejl_tekst", "FejlTekst")):
            if a.get(key):
                etree.SubElement(k, _f(tag)).text = a[key]
    if not messages.schema(SCHEMA_FILE).validate(root):
        raise SoapFault("Server", "the emulator built an invalid answer")
    return root


# --- the debtor system -------------------------------------------------------------------------

class Emulator(ServedInThread):
    """The debtor-system emulator. ``with Emulator(...) as emu: post to emu.url``.

    Access (issue 17): ``municipality_by_org_unit`` maps the sender's org unit to its
    municipality's CVR; ``sts_cert`` (path of the trusted STS signing certificate), ``sts_issuer``
    and ``entity_id`` enable token calls; ``token_cvrs`` are the municipalities that must call with a
    token ("*": all); ``agreements`` (CVR -> service agreement UUID), when given, is checked against
    the InvocationContext of every certificate-mode call."""

    def __init__(self, vendor: str, db_url: str, host: str = "127.0.0.1", port: int = 0,
                 accepted_claim_types: set[str] | None = None, fault_rate: float = 0.0,
                 fault_kinds: tuple = (), slow_seconds: float = 5.0, seed: int = 0,
                 tls: ssl.SSLContext | None = None, vendor_by_org_unit: dict[str, str] | None = None,
                 municipality_by_org_unit: dict[str, str] | None = None, sts_cert: str | Path | None = None,
                 sts_issuer: str = STS_ISSUER, entity_id: str = ENTITY_ID,
                 token_cvrs: frozenset[str] | set[str] | tuple = frozenset(),
                 agreements: dict[str, str] | None = None):
        for v in {vendor, *(vendor_by_org_unit or {}).values()}:
            if v not in VENDORS:
                raise ValueError(f"unknown vendor {v!r}: one of {', '.join(VENDORS)}")
        self.vendor_by_org_unit = {k.lower(): v for k, v in (vendor_by_org_unit or {}).items()}
        self.municipality_by_org_unit = {k.strip().lower(): _cvr(v, f"the municipality of org unit {k}")
                                         for k, v in (municipality_by_org_unit or {}).items()}
        self.token_cvrs = frozenset("*" if c.strip() == "*" else _cvr(c, "token_cvrs") for c in token_cvrs)
        self.agreements: dict[str, str] = {}
        for cvr, agreement in (agreements or {}).items():
            normalised = _uuid(agreement)
            if normalised is None:
                raise ValueError(f"the service agreement of municipality {cvr} is not a UUID: {agreement!r}")
            self.agreements[_cvr(cvr, "agreements")] = normalised
        if not sts_issuer.strip() or not entity_id.strip():
            raise ValueError("sts_issuer and entity_id may not be empty")
        self.sts_issuer, self.entity_id = sts_issuer, entity_id
        self.sts_cert_pem: bytes | None = None
        if sts_cert is not None:
            self.sts_cert_pem = _read_certificate(sts_cert, "the STS signing certificate (sts_cert)")
        elif self.token_cvrs:
            raise ValueError("token_cvrs needs sts_cert: without the STS's certificate no token can be checked")
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("the emulator binds to loopback only")
        unknown = set(fault_kinds) - FAULT_KINDS
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}: choose from {sorted(FAULT_KINDS)}")
        if fault_rate and not fault_kinds:
            raise ValueError("a fault rate needs fault kinds")
        self.vendor, self.db_url, self.host, self.port = vendor, db_url, host, port
        self.accepted_claim_types = set(CLAIM_TYPES if accepted_claim_types is None else accepted_claim_types)
        self.fault_rate, self.fault_kinds, self.slow_seconds = fault_rate, tuple(fault_kinds), slow_seconds
        self.tls = tls
        self.request_count = 0
        self.faults: dict[str, int] = {}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()           # one request processed at a time: first answer wins
        self._count_lock = threading.Lock()
        self._engine: sa.Engine | None = None

    # lifecycle
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}/service/OIR/DebitorRegistreringAfsend/1"

    @property
    def bound_port(self) -> int:
        """The port it listens on (the chosen one when started with port 0)."""
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return self._server.server_address[1]

    thread_name = "debtor-emulator"

    def make_server(self) -> ThreadingHTTPServer:
        class Handler(_Handler):
            pass

        Handler.emulator = self
        server = _Server((self.host, self.port), Handler)
        server.daemon_threads = True
        return server

    def start(self) -> Emulator:
        self._engine = _engine(self.db_url)
        super().start()
        log.info("debtor emulator (%s) listening on %s", self.vendor, self.url)
        return self

    def stop(self) -> None:
        super().stop()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # faults
    def choose_fault(self) -> str | None:
        with self._count_lock:
            self.request_count += 1
            if self.fault_rate <= 0 or self._rng.random() >= self.fault_rate:
                return None
            kind = self._rng.choice(self.fault_kinds)
            self.faults[kind] = self.faults.get(kind, 0) + 1
            return kind

    # access
    def municipality_for(self, request: etree._Element) -> str | None:
        """The CVR of the municipality whose org unit sent ``request``; None when not known."""
        org_unit = _text(request, f"{_dr('Afsender')}/{_f('OrganisatoriskEnhedUUID')}").lower()
        return self.municipality_by_org_unit.get(org_unit)

    def authorise(self, call: Call) -> Access:
        """Who makes ``call``, or AccessRefused. Nothing is stored here."""
        cvr = self.municipality_for(call.request)
        if call.security is not None:
            refused = Access(cvr, TOKEN)
            if self.sts_cert_pem is None:
                raise AccessRefused("token mode is not configured", refused)
            if cvr is None:
                raise AccessRefused("unknown sender", refused)
            try:
                facts = wssecurity.verify_envelope(call.envelope, sts_cert_pem=self.sts_cert_pem,
                                                   issuer=self.sts_issuer, audience=self.entity_id, cvr=cvr)
            except TokenRefused as exc:
                raise AccessRefused(f"token refused: {exc.reason}", refused) from None
            return Access(cvr, TOKEN, None if facts.assertion_id is None else str(facts.assertion_id)[:200])
        ic = call.invocation_context
        agreement = _uuid(None if ic is None else ic.findtext(f"{{{NS_IC}}}ServiceAgreementUUID"))
        access = Access(cvr, CERTIFICATE, agreement)
        if "*" in self.token_cvrs or (cvr is not None and cvr in self.token_cvrs):
            raise AccessRefused("token required", access)
        if self.agreements:
            if cvr is None:
                raise AccessRefused("unknown sender", access)
            if agreement is None or self.agreements.get(cvr) != agreement:
                raise AccessRefused(f"service agreement does not cover municipality {cvr}", access)
        return access

    def record_call(self, operation: str, access: Access, refused: str | None = None, conn=None) -> None:
        """One emu_call row (in ``conn``'s transaction when given)."""
        row = dict(at=_now(), operation=operation, municipality_cvr=access.municipality_cvr, auth=access.auth,
                   agreement=access.agreement, refused=None if refused is None else refused[:500])
        if conn is not None:
            conn.execute(_INSERT_CALL, row)
            return
        with self._lock, self._engine.begin() as own:
            own.execute(_INSERT_CALL, row)

    # operations
    def handle(self, operation: str, request: etree._Element, access: Access | None = None) -> bytes:
        """The answer to ``request``; with ``access`` the call is logged in the same transaction."""
        answer_tag = f"{{{NS_DR}}}{operation}Svar"
        transaction_id = _text(request, f"{_dr('Hovedoplysninger')}/{_f('TransaktionsId')}")
        with self._lock, self._engine.begin() as conn:
            if access is not None:
                self.record_call(operation, access, conn=conn)
            if operation == "OpretDebitorkonto":
                answers = self._create(conn, request)
            else:
                answers = self._change(conn, request)
        rejected = sum(a["status"] == AFVIST for a in answers)
        log.info("%s: %d answered, %d accepted, %d rejected", operation, len(answers), len(answers) - rejected,
                 rejected)
        return _envelope(_answer_element(answer_tag, transaction_id, answers))

    @staticmethod
    def _first_answer(conn, operation: str, key: str) -> dict | None:
        row = conn.execute(_FIRST_ANSWER, {"op": operation, "key": key}).mappings().first()
        return dict(row) if row else None

    @staticmethod
    def _first_answers(conn, operation: str, keys: list[str]) -> dict[str, dict]:
        """The first answers already given for any of ``keys``, by key (a few IN lists)."""
        found: dict[str, dict] = {}
        for part in _chunks(sorted(set(keys))):
            for row in conn.execute(_FIRST_ANSWERS, {"op": operation, "keys": part}).mappings():
                found[row["noegle"]] = dict(row)
        return found

    @staticmethod
    def _answer(operation: str, key: str, status: str, reference: str | None = None, code: str | None = None,
                text: str | None = None) -> dict:
        return {"operation": operation, "noegle": key, "status": status, "debitor_reference": reference,
                "fejl_kode": code, "fejl_tekst": text, "answered_at": _now()}

    @staticmethod
    def _record(conn, operation: str, key: str, status: str, reference: str | None = None,
                code: str | None = None, text: str | None = None) -> dict:
        answer = Emulator._answer(operation, key, status, reference, code, text)
        conn.execute(_INSERT_ANSWER, answer)
        return answer

    @staticmethod
    def _account_id(conn, account_type: str, ident: tuple[str, str], resp: tuple[str, str]) -> int:
        key = dict(zip(ACCOUNT_KEY, (account_type, *ident, *resp), strict=True))
        found = conn.execute(_ACCOUNT_ID, key).scalar()
        if found is not None:
            return found
        conn.execute(_INSERT_ACCOUNT, key)
        return conn.execute(_ACCOUNT_ID, key).scalar_one()

    @staticmethod
    def _account_ids(conn, keys: set[tuple[str, str, str, str, str]]) -> dict[tuple, int]:
        """The account id of each key (account type, identification kind and number, responsible
        kind and number); the missing accounts are created, all in a few statements."""
        def lookup(wanted: set[tuple]) -> dict[tuple, int]:
            found: dict[tuple, int] = {}
            types, kinds = sorted({k[0] for k in wanted}), sorted({k[1] for k in wanted})
            for part in _chunks(sorted({k[2] for k in wanted})):
                for row in conn.execute(_ACCOUNTS, {"types": types, "kinds": kinds, "numbers": part}).mappings():
                    key = tuple(row[name] for name in ACCOUNT_KEY)
                    if key in wanted:
                        found[key] = row["account_id"]
            return found

        ids = lookup(keys)
        missing = sorted(keys - set(ids))
        if missing:
            conn.execute(_INSERT_ACCOUNT, [dict(zip(ACCOUNT_KEY, key, strict=True)) for key in missing])
            ids.update(lookup(set(missing)))
        return ids

    def vendor_for(self, request: etree._Element) -> str:
        org_unit = _text(request, f"{_dr('Afsender')}/{_f('OrganisatoriskEnhedUUID')}").lower()
        return self.vendor_by_org_unit.get(org_unit, self.vendor)

    def _create(self, conn, request: etree._Element) -> list[dict]:
        """Each claim's answer, in the request's order: the first answer again for a FordringID seen
        before (also earlier in this request), else a rejection (M3, I3) or the claim stored. The
        whole batch is read and written with a few statements."""
        op = "OpretDebitorkonto"
        vendor = self.vendor_for(request)
        items = []
        for account in request.iterfind(_dr("Debitorkonto")):
            account_type = _text(account, _dr("DebitorkontoType"))
            ident = _party(account.find(_dr("DebitorkontoIdentifikation")))
            resp = _party(account.find(_dr("JuridiskAnsvarlig")))
            for claim in account.iterfind(_dr("Fordring")):
                items.append((_text(claim, _dr("FordringID")), claim, account_type, ident, resp))
        given = self._first_answers(conn, op, [fid for fid, *_ in items])
        answers, new_answers, new_claims = [], [], []
        now = _now()
        for fid, claim, account_type, ident, resp in items:
            first = given.get(fid)
            if first:
                answers.append(first)
                continue
            kravtype = _text(claim, _dr("FordringKravtype"))
            if kravtype not in self.accepted_claim_types:
                answer = self._answer(op, fid, AFVIST, code="M3_UMAPPET_KRAVTYPE",
                                      text=f"Kravtypen {kravtype} er ikke mappet i debitorsystemet / claim type "
                                           "not mapped")
            elif vendor == "PRISME" and "ERSTATNING_CPR" in (ident[0], resp[0]):
                answer = self._answer(op, fid, AFVIST, code="I3_ERSTATNINGS_CPR",
                                      text="Prisme modtager ikke fordringer på erstatningspersonnummer / "
                                           "Prisme does not accept claims on a replacement CPR")
            else:
                amount = str(as_amount(_text(claim, _dr("Beloeb"))))
                reference = f"{vendor}-{uuid.uuid5(REFERENCE_NAMESPACE, fid).hex[:12].upper()}"
                new_claims.append(((account_type, *ident, *resp), {
                    "fordring_id": fid, "kravtype": kravtype, "amount": amount, "original_amount": amount,
                    "status": ACTIVE, "debitor_reference": reference, "received_at": now}))
                answer = self._answer(op, fid, MODTAGET, reference=reference)
            given[fid] = answer           # a repeat later in this request gets this first answer
            new_answers.append(answer)
            answers.append(answer)
        if new_claims:
            ids = self._account_ids(conn, {key for key, _ in new_claims})
            conn.execute(_INSERT_CLAIM, [{**row, "account_id": ids[key]} for key, row in new_claims])
        if new_answers:
            conn.execute(_INSERT_ANSWER, new_answers)
        return answers

    def _change(self, conn, request: etree._Element) -> list[dict]:
        answers = []
        op = "RetFordringTilstand"
        for change in request.iterfind(_dr("FordringAendring")):
            aid, fid = _text(change, _dr("AendringID")), _text(change, _dr("FordringID"))
            first = self._first_answer(conn, op, aid)
            if first:
                answers.append(first)
                continue
            what = [c for c in change if isinstance(c.tag, str)][2]
            kind = etree.QName(what).localname
            claim = conn.execute(_CLAIM, {"fid": fid}).mappings().first()
            if claim is None:
                answers.append(self._record(conn, op, aid, AFVIST, code="UKENDT_FORDRING",
                                            text="Fordringen findes ikke / unknown claim"))
                continue
            reference = claim["debitor_reference"]
            if claim["status"] == CANCELLED:
                answers.append(self._record(conn, op, aid, AFVIST, reference, "FORDRING_ANNULLERET",
                                            "Fordringen er annulleret / the claim is cancelled"))
                continue
            amount = None
            update: dict = {}
            if kind == "Annullering":
                update = {"status": CANCELLED}
            elif kind == "Nedskrivning":
                try:
                    amount = as_amount(_text(what, _dr("NytBeloeb")))
                except InvalidOperation:  # pragma: no cover - the schema checked it
                    amount = Decimal(0)
                if amount <= 0:     # the schema says so too; a receiver checks anyway
                    answers.append(self._record(conn, op, aid, AFVIST, reference, "NEDSKRIVNING_UNDER_NUL",
                                                "Et beløb kan ikke nedskrives til nul eller derunder / "
                                                "a claim cannot be written down to zero or below"))
                    continue
                if amount >= as_amount(claim["amount"]):
                    answers.append(self._record(conn, op, aid, AFVIST, reference, "NEDSKRIVNING_IKKE_LAVERE",
                                                "Nyt beløb skal være lavere end det nuværende / "
                                                "the new amount must be lower than the current one"))
                    continue
                update = {"amount": str(amount)}
            elif kind == "Identifikationsaendring":
                current = conn.execute(_ACCOUNT, {"id": claim["account_id"]}).mappings().one()
                ident = _party(what.find(_dr("DebitorkontoIdentifikation"))) or (current["ident_kind"],
                                                                                 current["ident_number"])
                resp = _party(what.find(_dr("JuridiskAnsvarlig"))) or (current["resp_kind"], current["resp_number"])
                update = {"account_id": self._account_id(conn, current["account_type"], ident, resp)}
            elif kind == "Tilbagebetaling":
                amount = as_amount(_text(what, _dr("Beloeb")))
                if not claim["kravtype"].startswith("ERSTATNING"):
                    answers.append(self._record(conn, op, aid, AFVIST, reference, "U3_KUN_ERSTATNING",
                                                "Kun erstatninger kan tilbagebetales / only compensations are repaid"))
                    continue
                if amount > as_amount(claim["original_amount"]):
                    answers.append(self._record(conn, op, aid, AFVIST, reference, "TILBAGEBETALING_FOR_STOR",
                                                "Tilbagebetalingen er større end fordringen / the repayment exceeds "
                                                "the claim"))
                    continue
            for column, value in update.items():
                conn.execute(_UPDATE_CLAIM[column], {"fid": fid, f"new_{column}": value})
            conn.execute(_INSERT_CHANGE, {"aendring_id": aid, "fordring_id": fid, "kind": kind,
                                          "amount": None if amount is None else str(amount), "applied_at": _now()})
            answers.append(self._record(conn, op, aid, MODTAGET, reference))
        return answers


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # e.g. a refused TLS handshake (no or a wrong client certificate): one line, no traceback
        log.info("connection from %s failed: %s", client_address[0], sys.exc_info()[0].__name__)


class _Handler(BaseHTTPRequestHandler):
    emulator: Emulator
    protocol_version = "HTTP/1.1"
    server_version = "fbs-debitor-emulator/1"

    def setup(self) -> None:
        # No Nagle stall: an answer goes as soon as it is written (and it is written in one piece,
        # ``_send``), never held back waiting for the client's delayed ACK.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = self.emulator.tls
        if tls is not None:  # handshake in this connection's thread, never in the accept loop
            self.request.settimeout(30)
            self.request = tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("connection closed: %s", type(exc).__name__)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str = "text/xml; charset=utf-8",
              extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        # status line, headers and body in ONE write (end_headers would send the headers on their own)
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(2)
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        """``<url>?wsdl`` gives the project's WSDL with this emulator's address; the schema files it
        imports are served next to it by name. Nothing else."""
        path, _, query = self.path.partition("?")
        name = path.rsplit("/", 1)[-1]
        if query.lower() == "wsdl":
            text = (XSD_DIR / WSDL_FILE).read_text(encoding="utf-8")
            text = re.sub(r'(<soap:address location=")[^"]*(")', lambda m: m.group(1) + self.emulator.url + m.group(2),
                          text)
            self._send(200, text.encode("utf-8"))
        elif name in SERVED_FILES:
            self._send(200, (XSD_DIR / name).read_bytes())
        else:
            self._send(405, b"POST a SOAP 1.1 envelope, or GET ?wsdl\n", "text/plain", {"Allow": "GET, POST"})

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        emu = self.emulator
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._send(411, b"Content-Length required\n", "text/plain")
            return
        if length > MAX_BODY:
            self.close_connection = True
            self._send(413, b"request too large\n", "text/plain")
            return
        body = self.rfile.read(length)
        fault = emu.choose_fault()
        if fault:
            log.info("injected fault: %s", fault)
        if fault == "drop":
            self._drop()
            return
        if fault == "http500":
            self._send(500, b"Internal Server Error\n", "text/plain")
            return
        if fault == "http503":
            self._send(503, b"Service Unavailable\n", "text/plain", {"Retry-After": "1"})
            return
        if fault == "http400":
            self._send(400, b"Bad Request\n", "text/plain")
            return
        if fault == "http403":
            self._send(403, b"Forbidden\n", "text/plain")
            return
        if fault == "soapfault":
            self._send(500, fault_envelope("Server", "midlertidig fejl / temporary failure (injected)"))
            return
        if fault == "slow":
            time.sleep(emu.slow_seconds)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request payload (masked): %s", mask_payload(body))
        try:
            call = _parse_envelope(body, self.headers.get("SOAPAction"))
            try:   # who calls: after the fault injection and the parsing, before anything is stored
                access = emu.authorise(call)
            except AccessRefused as exc:
                log.info("%s refused (%s, municipality %s): %s", call.operation, exc.access.auth,
                         exc.access.municipality_cvr or "unknown", exc.text)
                emu.record_call(call.operation, exc.access, exc.text)
                self._send(403, fault_envelope("Client", exc.text))
                return
            answer = emu.handle(call.operation, call.request, access)
        except SoapFault as exc:
            log.info("SOAP fault %s: %s", exc.code, exc.text)
            self._send(500, fault_envelope(exc.code, exc.text))
            return
        except Exception:  # a bug: answer as a server fault, never with the payload
            log.exception("emulator failure")
            self._send(500, fault_envelope("Server", "internal error in the debtor emulator"))
            return
        if fault == "drop_after_store":
            self._drop()
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("answer payload (masked): %s", mask_payload(answer))
        self._send(200, answer)


# --- CLI ---------------------------------------------------------------------------------------

def default_db() -> str:
    return f"sqlite:///{var_dir() / 'emulator' / 'emulator.sqlite'}"


def vendors_from_fbs(fbs_url: str | None = None) -> dict[str, str]:
    """Each FBS agency's debtor vendor by its org-unit UUID (the sender of its requests)."""

    engine = make_engine(fbs_url or database_urls().fbs, FBS_SCHEMA)
    try:
        with engine.connect() as conn:
            return {r.org_unit_uuid.lower(): r.debtor_vendor for r in conn.execute(
                sa.text("SELECT org_unit_uuid, debtor_vendor FROM agency WHERE org_unit_uuid IS NOT NULL"))}
    finally:
        engine.dispose()


def municipalities_from_fbs(fbs_url: str | None = None) -> dict[str, str]:
    """Each FBS agency's municipality CVR by its org-unit UUID (the sender of its requests)."""

    engine = make_engine(fbs_url or database_urls().fbs, FBS_SCHEMA)
    try:
        with engine.connect() as conn:
            return {r.org_unit_uuid.lower(): r.municipality_cvr.strip() for r in conn.execute(sa.text(
                "SELECT org_unit_uuid, municipality_cvr FROM agency "
                "WHERE org_unit_uuid IS NOT NULL AND municipality_cvr IS NOT NULL"))}
    finally:
        engine.dispose()


def _read_certificate(path: str | Path, what: str) -> bytes:
    """The PEM bytes of the certificate at ``path``; ValueError when it is missing or not one."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ValueError(f"{what}: {path} holds no PEM certificate") from None
    return data


def tls_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context; with ``client_ca`` every client must present a certificate chaining to it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _existing_file(text: str) -> str:
    """An argparse type: an existing file."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: allowed is an existing file")
    return text


def _port_file(text: str) -> str:
    """An argparse type: a file path to write (not a folder)."""
    if not text.strip() or Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: allowed is a file path, not a folder")
    return text


def _nonempty(option: str):
    def parse(text: str) -> str:
        if not text.strip() or any(ord(c) < 32 for c in text) or len(text) > 500:
            raise argparse.ArgumentTypeError(f"{option}: allowed is a non-empty text of up to 500 characters")
        return text.strip()
    return parse


def _token_cvr(text: str) -> str:
    """An argparse type: an 8-digit CVR number or ``*``."""
    text = text.strip()
    if text != "*" and not CVR_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: allowed is a municipality's CVR number (8 digits) or *")
    return text


def _agreement(text: str) -> tuple[str, str]:
    """An argparse type: ``CVR=UUID``, a municipality's CVR number and its service agreement UUID."""
    cvr, sep, agreement = text.partition("=")
    cvr, normalised = cvr.strip(), _uuid(agreement)
    if not sep or not CVR_PATTERN.fullmatch(cvr) or normalised is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: allowed is CVR=UUID, a municipality's CVR number (8 digits) and its service agreement UUID")
    return cvr, normalised


def _write_port(path: Path, port: int) -> None:
    """``port`` in ``path``, written whole (a reader never sees half a number)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    tmp.replace(path)


def serve(argv: list[str] | None = None) -> int:
    """``python -m fbs_debitor.sandbox emulator --vendor KMD_OPUS ...``: run until Ctrl-C."""
    p = argparse.ArgumentParser(prog="python -m fbs_debitor.sandbox emulator", description="Local SF1590 debtor-system emulator")
    p.add_argument("--vendor", choices=VENDORS, required=True, help="the debtor system (the default vendor with "
                   "--vendors-from-fbs)")
    p.add_argument("--vendors-from-fbs", action="store_true",
                   help="behave as each FBS agency's own vendor (agency.debtor_vendor, by the sender's org unit), "
                        "reading the agencies from FBS_DEBITOR_FBS_URL")
    p.add_argument("--host", default="127.0.0.1", help="a loopback address")
    p.add_argument("--port", type=settings.whole(0, 65535), default=8590, help="0-65535 (0: any free port)")
    p.add_argument("--db", default=None, help="SQLAlchemy URL of the emulator's own database (created when missing: "
                                              "it is the debtor system's store)")
    p.add_argument("--fault-rate", type=settings.number(0, 1), default=0.0, help="0-1")
    p.add_argument("--fault-kinds", default="", help=f"comma list of {','.join(sorted(FAULT_KINDS))}")
    p.add_argument("--slow-seconds", type=settings.number(0, 600), default=5.0, help="0-600")
    p.add_argument("--seed", type=settings.whole(0), default=0,
                   help="random seed for the injected faults, a whole number from 0 (default 0)")
    p.add_argument("--accept", default=None, help="comma list of accepted claim types (default: all three)")
    p.add_argument("--tls-cert", help="server certificate (PEM); enables HTTPS")
    p.add_argument("--tls-key", help="server key (PEM)")
    p.add_argument("--tls-client-ca", "--client-ca", dest="tls_client_ca",
                   help="CA (PEM) client certificates must chain to; requires client certs (mutual TLS)")
    p.add_argument("--port-file", type=_port_file, metavar="PATH",
                   help="write the port it listens on to this file once listening (for --port 0)")
    access = p.add_argument_group("access per municipality (issue 17; needs --vendors-from-fbs for the "
                                  "municipality of each sender)")
    access.add_argument("--sts-cert", type=_existing_file, metavar="PATH",
                        help="the trusted STS signing certificate (PEM); enables token calls")
    access.add_argument("--sts-issuer", type=_nonempty("--sts-issuer"), default=STS_ISSUER,
                        help=f"the STS's issuer name in its assertions (default {STS_ISSUER})")
    access.add_argument("--entity-id", type=_nonempty("--entity-id"), default=ENTITY_ID,
                        help=f"this service's entity id, the tokens' audience (default {ENTITY_ID}, modelled)")
    access.add_argument("--token-cvr", action="append", default=[], type=_token_cvr, metavar="CVR",
                        help="a municipality (8-digit CVR) that must call with a token; repeatable; * for all")
    access.add_argument("--agreement", action="append", default=[], type=_agreement, metavar="CVR=UUID",
                        help="a municipality's service agreement; repeatable. When given, every certificate-mode "
                             "call's InvocationContext must name its municipality's agreement")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        p.error("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is HTTPS)")
    if args.token_cvr and not args.sts_cert:
        p.error("--token-cvr needs --sts-cert (the STS certificate the tokens are checked against)")
    if (args.sts_cert or args.token_cvr or args.agreement) and not args.vendors_from_fbs:
        p.error("--sts-cert, --token-cvr and --agreement need --vendors-from-fbs (the municipality of each "
                "sender is read from the FBS agencies)")
    agreements = dict(args.agreement)
    if len(agreements) != len(args.agreement):
        p.error("--agreement: one agreement per municipality")
    try:   # every setting in range, and the FBS extract there when the vendors are read from it
        settings.check(stores=("fbs",) if args.vendors_from_fbs else ())
    except settings.SettingError as exc:
        for line in exc.problems:
            print(f"setting refused: {line}", file=sys.stderr)
        return settings.EXIT_CODE
    kinds = tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip())
    accept = None if args.accept is None else {t.strip() for t in args.accept.split(",") if t.strip()}
    tls = tls_context(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    by_org_unit = vendors_from_fbs() if args.vendors_from_fbs else None
    municipalities = municipalities_from_fbs() if args.vendors_from_fbs else None
    try:
        emu = Emulator(args.vendor, args.db or default_db(), args.host, args.port, accept, args.fault_rate, kinds,
                       args.slow_seconds, args.seed, tls, by_org_unit, municipality_by_org_unit=municipalities,
                       sts_cert=args.sts_cert, sts_issuer=args.sts_issuer, entity_id=args.entity_id,
                       token_cvrs=frozenset(args.token_cvr), agreements=agreements)
    except ValueError as exc:
        print(f"emulator refused: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    def _terminate(_signum, _frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)   # a container stop ends it like Ctrl-C
    with emu:
        if args.port_file:
            _write_port(Path(args.port_file), emu.bound_port)
        modes = []
        if emu.token_cvrs:
            modes.append("tokens from " + ("every municipality" if "*" in emu.token_cvrs
                                           else ", ".join(sorted(emu.token_cvrs))))
        if emu.agreements:
            modes.append(f"agreements for {len(emu.agreements)} municipalities")
        print(f"debtor emulator ({args.vendor}) on {emu.url}" + (f" [{'; '.join(modes)}]" if modes else "")
              + "  (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0
