"""The debtor side's SOAP client for SF1590_B_01A DaekningAfskrivningRegistreringAfsend (sandbox): it
calls FBS's inbound service (``payments.inbound_service``) as Serviceplatformen does, over mutual
TLS with Serviceplatformen's client certificate, with one ``ForetagIndbetalingAnmodning`` per
call, on behalf of one municipality:

* token mode (the municipality's CVR in ``token_cvrs``): the call carries a SAML holder-of-key
  token (``token_source(cvr)``, e.g. from ``tokens.sts.TokenCache`` for FBS's entity id) in a
  WS-Security header signed with the caller's key (``tokens.wssecurity.sign_envelope``);
* certificate mode: Serviceplatformen's ``AuthorityContext`` header names the municipality.

Transient failures (no connection, a timeout, HTTP 502/503/504/408/429, a SOAP Server fault) are
retried a few times with backoff: a repeat is safe, the service answers the same movements with
its first receipt and lands nothing twice. A Client fault or another 4xx is ``InboundRefused``
(its reason code), never retried; a TLS refusal likewise. Nothing here logs a body or a token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from lxml import etree

from fbs_debitor.claims import messages
from fbs_debitor.claims.sf1590 import NS_DA, NS_F
from fbs_debitor.payments import files
from fbs_debitor.payments.inbound import NS_AC, SOAP_ACTION, SOAP_NS
from fbs_debitor.tokens import wssecurity

log = logging.getLogger(__name__)

ANSWER = f"{{{NS_DA}}}ForetagIndbetalingSvar"
TRANSIENT_STATUS = frozenset({408, 429, 502, 503, 504})


class InboundRefused(RuntimeError):
    """The service refused the call (``code``: its reason code); calling again cannot help."""

    def __init__(self, code: str, text: str, status: int | None = None):
        super().__init__(f"{code}: {text}")
        self.code, self.text, self.status = code, text, status


class InboundUnavailable(RuntimeError):
    """No answer after every attempt (the movements may or may not have landed: call again)."""


@dataclass(frozen=True)
class CallReceipt:
    file_name: str                 # the file the call landed as (the receipt's DebitorReference)
    transaction_id: str            # the receipt's TransaktionsId (the first call's)
    received: tuple[str, ...]      # the movement ids the receipt says MODTAGET
    answer: bytes                  # the ForetagIndbetalingSvar as sent


class InboundCaller:
    def __init__(self, url: str, client_cert: str, client_key: str, ca_bundle: str | None = None,
                 token_source: Callable[[str], bytes] | None = None, token_cvrs=(), *,
                 connect_timeout: float = 10.0, read_timeout: float = 120.0, max_attempts: int = 3,
                 backoff_seconds: float = 0.5, sleep: Callable[[float], None] = time.sleep):
        if not url.startswith("https://"):
            raise ValueError("url: allowed is the https:// address of the SF1590_B_01A service (mutual TLS)")
        if not 1 <= max_attempts <= 10:
            raise ValueError("max_attempts: allowed is 1-10")
        if token_cvrs and token_source is None:
            raise ValueError("token_source: required when municipalities call with a token (token_cvrs)")
        self.url, self.token_source, self.token_cvrs = url, token_source, frozenset(token_cvrs)
        self.cert_pem, self.key_pem = Path(client_cert).read_bytes(), Path(client_key).read_bytes()
        self.timeouts = (connect_timeout, read_timeout)
        self.max_attempts, self.backoff_seconds, self.sleep = max_attempts, backoff_seconds, sleep
        self.session = requests.Session()
        self.session.trust_env = False      # REQUESTS_CA_BUNDLE would override the CA given (requests' merge order)
        self.cert, self.verify = (client_cert, client_key), (ca_bundle if ca_bundle else True)
        self.calls = 0

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> InboundCaller:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def envelope(self, request: etree._Element, cvr: str) -> bytes:
        env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS})
        header = etree.SubElement(env, f"{{{SOAP_NS}}}Header")
        etree.SubElement(env, f"{{{SOAP_NS}}}Body").append(request)
        if cvr in self.token_cvrs:
            wssecurity.sign_envelope(env, self.token_source(cvr), key_pem=self.key_pem, cert_pem=self.cert_pem,
                                     action=SOAP_ACTION, to=self.url)
        else:
            context = etree.SubElement(header, f"{{{NS_AC}}}AuthorityContext", nsmap={"ac": NS_AC})
            etree.SubElement(context, f"{{{NS_AC}}}MunicipalityCVR").text = cvr
        return etree.tostring(env, xml_declaration=True, encoding="UTF-8")

    def call(self, request_xml: bytes, cvr: str) -> CallReceipt:
        """Send one ForetagIndbetalingAnmodning for municipality ``cvr``; its receipt."""
        ids = {m.movement_id for m in files.parse(request_xml).movements}    # what we send is a valid file
        last = "no attempt"
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self.sleep(self.backoff_seconds * 2 ** (attempt - 2))
            body = self.envelope(messages.parse_untrusted(request_xml), cvr)   # fresh timestamp and token
            self.calls += 1
            try:
                answer = self.session.post(self.url, data=body, timeout=self.timeouts, cert=self.cert,
                                           verify=self.verify, headers={
                    "Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{SOAP_ACTION}"'})
            except requests.exceptions.SSLError as exc:
                raise InboundRefused("TLS", f"the TLS handshake failed ({type(exc).__name__})") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = type(exc).__name__
                log.warning("SF1590_B_01A call for municipality %s, attempt %d: %s", cvr, attempt, last)
                continue
            fault = _fault(answer.content) if answer.status_code != 200 else None
            if answer.status_code == 200:
                return _receipt(answer.content, ids)
            if answer.status_code in TRANSIENT_STATUS or (fault and fault[0] == "Server") or (
                    answer.status_code >= 500 and fault is None):
                last = f"HTTP {answer.status_code}" + (f" {fault[1].split(':')[0]}" if fault else "")
                log.warning("SF1590_B_01A call for municipality %s, attempt %d: %s", cvr, attempt, last)
                continue
            code, _, text = (fault[1] if fault else f"HTTP_{answer.status_code}: refused").partition(": ")
            raise InboundRefused(code, text.strip() or "refused", answer.status_code)
        raise InboundUnavailable(f"SF1590_B_01A call for municipality {cvr}: no answer after {self.max_attempts} "
                                 f"attempt(s) ({last}); calling again is safe")


def _fault(data: bytes) -> tuple[str, str] | None:
    """(faultcode without prefix, faultstring) of a SOAP 1.1 fault, or None."""
    try:
        env = messages.parse_untrusted(data)
    except (messages.UnsafeXml, etree.XMLSyntaxError):
        return None
    node = env.find(f"{{{SOAP_NS}}}Body/{{{SOAP_NS}}}Fault")
    if node is None:
        return None
    return (node.findtext("faultcode") or "").split(":")[-1], (node.findtext("faultstring") or "").strip()


def _receipt(data: bytes, ids: set[str]) -> CallReceipt:
    try:
        env = messages.parse_untrusted(data)
    except (messages.UnsafeXml, etree.XMLSyntaxError):
        raise InboundRefused("ANSWER", "the answer is not well-formed, safe XML") from None
    content = env.find(f"{{{SOAP_NS}}}Body/{ANSWER}")
    if content is None:
        raise InboundRefused("ANSWER", "the answer holds no ForetagIndbetalingSvar")
    standalone = etree.fromstring(etree.tostring(content), messages.safe_parser())
    xsd = messages.schema(files.SCHEMA_FILE)
    if not xsd.validate(standalone):
        raise InboundRefused("ANSWER", f"the answer does not follow the schema at {messages.schema_error(xsd)}")
    receipts = standalone.findall(f"{{{NS_DA}}}Kvittering")
    received = tuple(k.findtext(f"{{{NS_F}}}Noegle") for k in receipts
                     if k.findtext(f"{{{NS_F}}}StatusKode") == "MODTAGET")
    if set(received) != ids:
        raise InboundRefused("ANSWER", "the receipt does not acknowledge exactly the movements sent")
    names = {k.findtext(f"{{{NS_F}}}DebitorReference") for k in receipts}
    if len(names) != 1 or not next(iter(names)):
        raise InboundRefused("ANSWER", "the receipt does not name the one file the call landed as")
    return CallReceipt(next(iter(names)), standalone.findtext(f"{{{NS_DA}}}Hovedoplysninger/{{{NS_F}}}TransaktionsId"),
                       received, etree.tostring(standalone, xml_declaration=True, encoding="UTF-8"))
