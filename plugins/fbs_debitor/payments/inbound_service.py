"""The inbound SF1590_B_01A DaekningAfskrivningRegistreringAfsend service (P1): a small ASGI app
(FastAPI, served by uvicorn over mutual TLS) that the debtor system calls through Serviceplatformen
with payments and write-offs. Each accepted call is landed as one file in the payments inbox
(``payments.inbound``) and applied by the ``payments`` run like a delivered file.

    python -m fbs_debitor inbound --tls-cert server.crt --tls-key server.key \\
        --serviceplatformen-cert serviceplatformen.crt --certificate-cvr 29189404 [--port-file F]
        [--sts-cert sts_signing.crt --token-cvr CVR ...] [--certificate-cvrs-from-fbs]

| path                                                     | what                                   |
|----------------------------------------------------------|----------------------------------------|
| ``POST /service/OIR/DaekningAfskrivningRegistreringAfsend/1`` | SOAP 1.1 ``ForetagIndbetaling`` (SOAPAction as in the WSDL) |
| ``GET  …/1?wsdl``                                          | the modelled WSDL (``include/xsd``)     |
| ``GET  …/1?xsd=<name>``                                    | one of the schemas it imports, only those |

**Who may call.** TLS admits exactly ONE client certificate, Serviceplatformen's
(``serviceplatformen_cert``): it is the only trust anchor (``VERIFY_X509_PARTIAL_CHAIN``), so
another certificate of the same CA, or none, is refused in the handshake. Then per municipality
(its CVR), as configured:

* token mode (``token_cvrs``): a signed wsse:Security header with a SAML holder-of-key token from
  KOMBIT's STS; checked with ``tokens.wssecurity.verify_envelope`` (signature by the STS
  certificate ``sts_cert``, issuer, audience = ``entity_id``, lifetime, the message signature by
  the holder) and the holder must be Serviceplatformen's certificate; the token's CVR must be a
  token-mode municipality;
* certificate mode (``certificate_cvrs``): no token; Serviceplatformen's ``AuthorityContext`` header
  names the municipality (``MunicipalityCVR``), which must be a certificate-mode municipality.

A refusal is HTTP 403 with a SOAP Client fault naming its reason code; nothing is written.

**What is read.** The body is refused above FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES + ``ENVELOPE_MARGIN``
(the SOAP envelope and a token) by its Content-Length and while it is read (never more is read):
HTTP 413. It is parsed with the project's safe parser (a DTD or entity is refused before parsing:
XXE, billion laughs), must be a SOAP 1.1 Envelope with the operation's SOAPAction and one
``ForetagIndbetalingAnmodning`` in its Body, which is then checked exactly as a delivered file
(``files.parse``: schema, size). Content problems are HTTP 500 SOAP Client faults (SOAP 1.1),
with the reason code (``P_UNSAFE_XML``, ``P_SCHEMA_INVALID``, …); a failure on this side (the
payments folder) is a Server fault: the caller may call again, a repeat being safe.

**The answer** (HTTP 200) is the receipt: ``ForetagIndbetalingSvar`` with one MODTAGET Kvittering per
movement, sent only once the landed file and the receipt are on disk; the same movements again get
the same answer, byte for byte, and land nothing.

Nothing here logs a body, a token, a key or a certificate: refusals are logged with their code
and the municipality (a CVR is no personal number).

Settings (``InboundSettings``, checked before the service starts; a wrong one ends ``main`` with
exit 2 and a message naming it): host, port 0-65535, the TLS files (readable PEM), at least one
municipality, 8-digit CVRs with a valid modulus-11 check, the token and certificate lists
disjoint, ``sts_cert`` required with any token-mode municipality.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from sqlalchemy import text

from fbs_debitor.claims import messages
from fbs_debitor.claims.sf1590 import NS_DA
from fbs_debitor.core import settings as core_settings
from fbs_debitor.core.db import make_engine
from fbs_debitor.core.identity import check_cvr
from fbs_debitor.core.settings import XSD_DIR
from fbs_debitor.payments import files, inbound
from fbs_debitor.payments.files import BadFile
from fbs_debitor.payments.inbound import FBS_ENTITY_ID, NS_AC, PATH, SOAP_ACTION, SOAP_NS, Landing
from fbs_debitor.payments.inbox import InboxLayoutError, default_inbox_dir
from fbs_debitor.tokens import wssecurity
from fbs_debitor.tokens.saml import TokenRefused

# The web framework is imported where the service is made (below): every other command of the CLI
# (the hourly run among them) starts without it.
if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response

log = logging.getLogger(__name__)

REQUEST = f"{{{NS_DA}}}ForetagIndbetalingAnmodning"
WSDL_FILE = "DaekningAfskrivningRegistreringAfsend.wsdl"
SCHEMA_FILES = frozenset({"DaekningAfskrivningRegistreringAfsend.xsd", "SF1590_Faelles.xsd", "InvocationContext.xsd",
                          "AuthorityContext.xsd"})
DEFAULT_STS_ISSUER = "https://sts.sandbox.fbs-debitor.local/"
DEFAULT_PORT = 8592
ENVELOPE_MARGIN = 64 * 1024      # bytes beyond a file's limit for the SOAP envelope and a token
XML_TYPES = ("text/xml", "application/xml", "application/soap+xml")

# reason codes of the refusals this module makes (besides files.* and the token's TokenRefused.reason)
TOO_LARGE, ENVELOPE, ACTION, CONTENT_TYPE = "P_TOO_LARGE", "SOAP_ENVELOPE", "SOAP_ACTION", "CONTENT_TYPE"
NOT_ADMITTED, NO_AUTHORITY, TOKEN_REQUIRED, TOKEN_NOT_CONFIGURED, CVR_MISMATCH, HOLDER = (
    "MUNICIPALITY_NOT_ADMITTED", "AUTHORITY_CONTEXT_MISSING", "TOKEN_REQUIRED", "TOKEN_MODE_NOT_CONFIGURED",
    "CVR_MISMATCH", "HOLDER_NOT_SERVICEPLATFORMEN")


class InboundSettingError(ValueError):
    """A setting of the inbound service outside its allowed range; the text names it."""


def _cvr_ok(value: str) -> bool:
    """A CVR number exactly as written: 8 digits, first not 0, modulus-11 (``identity.check_cvr``)."""
    return isinstance(value, str) and check_cvr(value).value == value


def _pem_certificate(name: str, path: str | None) -> bytes:
    if not path or not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise InboundSettingError(f"{name}: {path!r} is not a readable file (a PEM certificate)")
    data = Path(path).read_bytes()
    if b"PRIVATE KEY" in data:
        raise InboundSettingError(f"{name}: {path} holds a private key; give the certificate alone")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if len(certs) != 1:
        raise InboundSettingError(f"{name}: {path} must hold exactly one PEM certificate")
    return data


@dataclass(frozen=True)
class InboundSettings:
    """The inbound service's settings, each checked here (errors name the field and its range)."""
    tls_cert: str
    tls_key: str
    serviceplatformen_cert: str       # the ONE client certificate admitted (Serviceplatformen's)
    payments_dir: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    sts_cert: str | None = None       # the STS signing certificate; required with token_cvrs
    sts_issuer: str = DEFAULT_STS_ISSUER
    entity_id: str = FBS_ENTITY_ID    # the audience a token must name
    token_cvrs: tuple[str, ...] = ()
    certificate_cvrs: tuple[str, ...] = ()
    own_payments_dir: bool = False    # the configured payments folder: laid out when missing
    sts_cert_pem: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "token_cvrs", tuple(self.token_cvrs))
        object.__setattr__(self, "certificate_cvrs", tuple(self.certificate_cvrs))
        if not isinstance(self.host, str) or not self.host.strip():
            raise InboundSettingError("host: allowed is an address to listen on (e.g. 127.0.0.1)")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InboundSettingError(f"port: {self.port!r}; allowed is a whole number from 0 to 65535 (0: any free)")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if not path or not os.path.isfile(path) or not os.access(path, os.R_OK):
                raise InboundSettingError(f"{name}: {path!r} is not a readable file (PEM)")
        _pem_certificate("serviceplatformen_cert", self.serviceplatformen_cert)
        if not self.payments_dir or not str(self.payments_dir).strip():
            raise InboundSettingError("payments_dir: allowed is the payments folder (its inbox/ is where calls land)")
        if Path(self.payments_dir).exists() and not Path(self.payments_dir).is_dir():
            raise InboundSettingError(f"payments_dir: {self.payments_dir} is a file; allowed is a folder")
        for name in ("token_cvrs", "certificate_cvrs"):
            bad = [c for c in getattr(self, name) if not _cvr_ok(c)]
            if bad:
                raise InboundSettingError(f"{name}: {bad[0]!r}; allowed are CVR numbers, 8 digits, the first not 0, "
                                          "with a valid modulus-11 check")
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise InboundSettingError(f"{name}: a CVR is given twice")
        both = sorted(set(self.token_cvrs) & set(self.certificate_cvrs))
        if both:
            raise InboundSettingError(f"token_cvrs and certificate_cvrs: {both[0]} is in both; a municipality calls "
                                      "either with a token or with the certificate")
        if not self.token_cvrs and not self.certificate_cvrs:
            raise InboundSettingError("token_cvrs / certificate_cvrs: no municipality given; allowed is at least one "
                                      "CVR (--token-cvr or --certificate-cvr)")
        if self.token_cvrs:
            if not self.sts_cert:
                raise InboundSettingError("sts_cert: required when any municipality calls with a token (token_cvrs)")
            object.__setattr__(self, "sts_cert_pem", _pem_certificate("sts_cert", self.sts_cert))
        elif self.sts_cert:
            object.__setattr__(self, "sts_cert_pem", _pem_certificate("sts_cert", self.sts_cert))
        for name in ("sts_issuer", "entity_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or len(value) > 1000 or not value.isascii():
                raise InboundSettingError(f"{name}: allowed is a non-empty ASCII URI of at most 1000 characters")
        try:
            files.max_file_bytes()
        except ValueError as exc:
            raise InboundSettingError(str(exc)) from None


# --- SOAP ------------------------------------------------------------------------------------------

class Refused(Exception):
    def __init__(self, status: int, code: str, text: str, fault: str = "Client"):
        super().__init__(f"{code}: {text}")
        self.status, self.code, self.text, self.fault = status, code, text, fault


def fault_envelope(code: str, text: str, fault: str = "Client") -> bytes:
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS})
    body = etree.SubElement(env, f"{{{SOAP_NS}}}Body")
    node = etree.SubElement(body, f"{{{SOAP_NS}}}Fault")
    etree.SubElement(node, "faultcode").text = f"soap:{fault}"
    etree.SubElement(node, "faultstring").text = f"{code}: {text}"[:1000]
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def answer_envelope(answer: bytes) -> bytes:
    """The receipt (our own bytes) in a SOAP 1.1 envelope: the same receipt, the same bytes."""
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS})
    etree.SubElement(env, f"{{{SOAP_NS}}}Body").append(etree.fromstring(answer, messages.safe_parser()))
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _elements(parent: etree._Element | None) -> list[etree._Element]:
    return [] if parent is None else [c for c in parent if isinstance(c.tag, str)]


class Service:
    """What one call goes through, without the web framework (so it can be tested and reused)."""

    def __init__(self, settings: InboundSettings, landing: Landing | None = None):
        self.settings = settings
        self.landing = landing or Landing(settings.payments_dir, own=settings.own_payments_dir)
        self.serviceplatformen_der = x509.load_pem_x509_certificate(
            Path(settings.serviceplatformen_cert).read_bytes()).public_bytes(Encoding.DER)

    def limit(self) -> int:
        return files.max_file_bytes() + ENVELOPE_MARGIN

    def _municipality(self, body: bytes, env: etree._Element, header: etree._Element | None) -> str:
        """The calling municipality's CVR, or Refused (403)."""
        authority = [c for c in _elements(header) if c.tag == f"{{{NS_AC}}}AuthorityContext"]
        if len(authority) > 1:
            raise Refused(403, NO_AUTHORITY, "the call carries more than one AuthorityContext header")
        named = None
        if authority:
            if not messages.schema("AuthorityContext.xsd").validate(
                    etree.fromstring(etree.tostring(authority[0]), messages.safe_parser())):
                raise Refused(403, NO_AUTHORITY, "the AuthorityContext header must name the municipality's CVR "
                                                 "(MunicipalityCVR, 8 digits)")
            named = authority[0].findtext(f"{{{NS_AC}}}MunicipalityCVR")
        if wssecurity.security_header(env) is not None:
            if not self.settings.token_cvrs:
                raise Refused(403, TOKEN_NOT_CONFIGURED, "this service admits no municipality in token mode")
            try:
                facts = wssecurity.verify_envelope(body, sts_cert_pem=self.settings.sts_cert_pem,
                                                   issuer=self.settings.sts_issuer, audience=self.settings.entity_id,
                                                   cvr=None)
            except TokenRefused as exc:
                raise Refused(403, exc.reason, "the token or the message signature was refused") from None
            holder = x509.load_pem_x509_certificate(facts.holder_cert_pem)
            if holder.public_bytes(Encoding.DER) != self.serviceplatformen_der:
                raise Refused(403, HOLDER, "the token's holder-of-key is not Serviceplatformen's certificate")
            action = [c for c in _elements(header) if c.tag == f"{{{wssecurity.NS_WSA}}}Action"]
            if action and (action[0].text or "").strip() != SOAP_ACTION:
                raise Refused(500, ACTION, f"the signed wsa:Action must be {SOAP_ACTION}")
            if named is not None and named != facts.cvr:
                raise Refused(403, CVR_MISMATCH, "the AuthorityContext names another municipality than the token")
            if facts.cvr not in self.settings.token_cvrs:
                raise Refused(403, NOT_ADMITTED, f"municipality {facts.cvr} is not admitted in token mode")
            return facts.cvr
        if named is None:
            raise Refused(403, NO_AUTHORITY, "a call without a token must carry the AuthorityContext header naming "
                                             "the municipality")
        if named in self.settings.token_cvrs:
            raise Refused(403, TOKEN_REQUIRED, f"municipality {named} calls with a token (token mode)")
        if named not in self.settings.certificate_cvrs:
            raise Refused(403, NOT_ADMITTED, f"municipality {named} is not admitted")
        return named

    def handle(self, body: bytes, soap_action: str | None, content_type: str | None) -> tuple[int, bytes]:
        """(HTTP status, SOAP envelope) for one POSTed body."""
        try:
            receipt = self._handle(body, soap_action, content_type)
        except Refused as exc:
            log.warning("SF1590_B_01A call refused: %s (HTTP %d)", exc.code, exc.status)
            return exc.status, fault_envelope(exc.code, exc.text, exc.fault)
        except Exception as exc:       # a bug or an input nobody foresaw: a fault, never a traceback out
            log.error("SF1590_B_01A call failed on this side: %s; nothing was answered as received",
                      type(exc).__name__)
            return 500, fault_envelope("P_FAILED", "the call could not be handled on this side; call again later "
                                                   "(a repeat is safe)", "Server")
        return 200, answer_envelope(receipt.answer)

    def _handle(self, body: bytes, soap_action: str | None, content_type: str | None) -> inbound.Receipt:
        if len(body) > self.limit():
            raise Refused(413, TOO_LARGE, f"the call has more than the {self.limit()} bytes accepted")
        kind = (content_type or "").split(";")[0].strip().lower()
        if kind not in XML_TYPES:
            raise Refused(500, CONTENT_TYPE, "the Content-Type must be text/xml (SOAP 1.1)")
        try:
            env = messages.parse_untrusted(body)
        except messages.UnsafeXml:
            raise Refused(500, files.UNSAFE, "the call declares a DTD or entities; they are refused (XXE / entity "
                                             "expansion)") from None
        except etree.XMLSyntaxError:
            raise Refused(500, files.MALFORMED, "the call is not well-formed XML") from None
        if env.tag != f"{{{SOAP_NS}}}Envelope":
            raise Refused(500, ENVELOPE, "a SOAP 1.1 Envelope is required",
                          "VersionMismatch" if etree.QName(env).localname == "Envelope" else "Client")
        if (soap_action or "").strip().strip('"') != SOAP_ACTION:
            raise Refused(500, ACTION, f"the SOAPAction must be {SOAP_ACTION}")
        parts = _elements(env)
        headers = [p for p in parts if p.tag == f"{{{SOAP_NS}}}Header"]
        bodies = [p for p in parts if p.tag == f"{{{SOAP_NS}}}Body"]
        if len(bodies) != 1 or len(headers) > 1 or len(parts) != len(headers) + len(bodies):
            raise Refused(500, ENVELOPE, "the Envelope must hold at most one Header and exactly one Body")
        content = _elements(bodies[0])
        if len(content) != 1 or content[0].tag != REQUEST:
            raise Refused(500, ENVELOPE, "the Body must hold one ForetagIndbetalingAnmodning")
        cvr = self._municipality(body, env, headers[0] if headers else None)
        request = etree.tostring(content[0], xml_declaration=True, encoding="UTF-8")
        try:
            receipt = self.landing.land(request, cvr)
        except BadFile as exc:
            raise Refused(500, exc.code, exc.reason) from None
        except (InboxLayoutError, OSError) as exc:
            log.error("SF1590_B_01A call of municipality %s not landed: %s", cvr, type(exc).__name__)
            raise Refused(500, "P_NOT_LANDED", "the call could not be landed on this side; call again later "
                                               "(a repeat is safe)", "Server") from None
        return receipt


def create_app(settings: InboundSettings, landing: Landing | None = None) -> FastAPI:
    """The ASGI app (no docs or OpenAPI routes)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    service = Service(settings, landing)
    service.landing.check()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, title="SF1590_B_01A")
    app.state.service = service

    async def foretag_indbetaling(request: Request) -> Response:
        limit = service.limit()
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            log.warning("SF1590_B_01A call refused: %s (HTTP 413, declared %s bytes)", TOO_LARGE, declared[:20])
            return _soap(413, fault_envelope(TOO_LARGE, f"the call has more than the {limit} bytes accepted"))
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:       # never read more than the limit
                log.warning("SF1590_B_01A call refused: %s (HTTP 413, read past the limit)", TOO_LARGE)
                return _soap(413, fault_envelope(TOO_LARGE, f"the call has more than the {limit} bytes accepted"))
            chunks.append(chunk)
        status, body = await run_in_threadpool(service.handle, b"".join(chunks), request.headers.get("soapaction"),
                                               request.headers.get("content-type"))
        return _soap(status, body)

    async def wsdl(request: Request) -> Response:
        query = request.query_params
        if "wsdl" in query and len(query) == 1:
            return Response((XSD_DIR / WSDL_FILE).read_bytes(), media_type="text/xml; charset=utf-8")
        name = query.get("xsd")
        if name in SCHEMA_FILES and len(query) == 1:
            return Response((XSD_DIR / name).read_bytes(), media_type="text/xml; charset=utf-8")
        return Response("ask for ?wsdl, or ?xsd=<one of the schemas the WSDL imports>\n", status_code=404,
                        media_type="text/plain; charset=utf-8")

    # (the module's annotations are text, which FastAPI resolves in the module's globals, where
    # the framework is not: the routes get the classes themselves)
    for route in (foretag_indbetaling, wsdl):
        route.__annotations__ = {"request": Request, "return": Response}
    app.post(PATH)(foretag_indbetaling)
    app.get(PATH)(wsdl)
    return app


def _soap(status: int, body: bytes) -> Response:
    from fastapi.responses import Response

    return Response(body, status_code=status, media_type="text/xml; charset=utf-8")


# --- serving ------------------------------------------------------------------------------------------

def _pinned_context(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's context, with Serviceplatformen's certificate as the ONLY trust anchor: partial
    chains accepted, so the pinned leaf itself is trusted and nothing else (not its CA)."""
    ctx = default()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def _server_class() -> type:
    """uvicorn's server that calls ``on_started`` once it listens and knows its port."""
    import uvicorn

    class _Server(uvicorn.Server):
        def __init__(self, config: uvicorn.Config, on_started: Callable[[_Server], None] | None = None):
            super().__init__(config)
            self.on_started = on_started

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started and self.on_started is not None:
                self.on_started(self)

        @property
        def port(self) -> int:
            return self.servers[0].sockets[0].getsockname()[1]

    return _Server


def make_server(settings: InboundSettings, landing: Landing | None = None,
                on_started: Callable[[uvicorn.Server], None] | None = None) -> uvicorn.Server:
    """The service's uvicorn server (not yet serving); it has ``port`` once started."""
    import uvicorn

    config = uvicorn.Config(create_app(settings, landing), host=settings.host, port=settings.port,
                            ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
                            ssl_cert_reqs=ssl.CERT_REQUIRED, ssl_ca_certs=settings.serviceplatformen_cert,
                            ssl_context_factory=_pinned_context, log_level="warning", access_log=False,
                            lifespan="off", server_header=False, timeout_graceful_shutdown=10)
    config.load()          # the TLS files are read now: a bad one is refused before serving
    return _server_class()(config, on_started)


class InboundServer:
    """The service in a background thread (tests, the sandbox): ``start()``, ``url``, ``stop()``."""

    def __init__(self, settings: InboundSettings, landing: Landing | None = None):
        self.server = make_server(settings, landing)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.server.config.host
        return f"https://{'localhost' if host in ('127.0.0.1', 'localhost') else host}:{self.server.port}{PATH}"

    def start(self, timeout: float = 20.0) -> InboundServer:
        self.thread = threading.Thread(target=self.server.run, name="sf1590-b01a-inbound", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the inbound service did not start")
            time.sleep(0.02)
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving: calls in flight get ``grace`` seconds, then every connection is closed
        (an idle TLS keep-alive connection would otherwise hold the shutdown for its close_notify)."""
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=grace)
            if self.thread.is_alive():
                self.server.force_exit = True
                self.thread.join(timeout=10)

    def __enter__(self) -> InboundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _write_port(path: Path, port: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    part.write_text(f"{port}\n", encoding="ascii")
    os.replace(part, path)


def default_payments_dir() -> Path:
    """The configured payments folder (the inbox's parent). The service lands calls on this
    machine's disk (fsync, rename, flock), so a payments inbox on an object store is refused here:
    serve it on a folder every worker mounts (FBS_DEBITOR_STORAGE_URL=file:///shared/...)."""
    inbox = default_inbox_dir()
    if not isinstance(inbox, Path):
        raise InboundSettingError(f"the payments inbox {inbox} is not on this machine's disk; the inbound service "
                                  "lands calls in a local or mounted folder only (--payments-dir, or a file:// "
                                  "FBS_DEBITOR_STORAGE_URL / FBS_DEBITOR_PAYMENT_INBOX)")
    return inbox.parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fbs_debitor inbound", description=(
        "Serve the inbound SF1590_B_01A DaekningAfskrivningRegistreringAfsend service (the debtor system calls it "
        "through Serviceplatformen with payments and write-offs) over mutual TLS; each accepted call is landed in "
        "the payments inbox for the payments run. Runs until stopped."))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=core_settings.whole(0, 65535), default=DEFAULT_PORT, help=f"0-65535 (0: any free port; default {DEFAULT_PORT})")
    p.add_argument("--tls-cert", required=True, help="the service's TLS server certificate (PEM)")
    p.add_argument("--tls-key", required=True, help="its private key (PEM)")
    p.add_argument("--serviceplatformen-cert", required=True,
                   help="Serviceplatformen's client certificate (PEM): the ONE certificate admitted")
    p.add_argument("--payments-dir", default=None,
                   help="the payments folder whose inbox/ calls land in (default: the parent of "
                        "FBS_DEBITOR_PAYMENT_INBOX, i.e. var/payments)")
    p.add_argument("--sts-cert", help="the STS signing certificate (PEM); required with --token-cvr")
    p.add_argument("--sts-issuer", default=DEFAULT_STS_ISSUER, help=f"the STS's issuer (default {DEFAULT_STS_ISSUER})")
    p.add_argument("--entity-id", default=FBS_ENTITY_ID, help=f"the audience a token must name (default {FBS_ENTITY_ID})")
    p.add_argument("--token-cvr", action="append", default=[],
                   help="CVR of a municipality calling with a token (repeatable)")
    p.add_argument("--certificate-cvr", action="append", default=[],
                   help="CVR of a municipality calling in certificate mode, with the AuthorityContext header "
                        "(repeatable)")
    p.add_argument("--certificate-cvrs-from-fbs", action="store_true",
                   help="also admit in certificate mode every municipality of the FBS agencies "
                        "(agency.municipality_cvr, read from FBS_DEBITOR_FBS_URL) not given with --token-cvr")
    p.add_argument("--port-file", help="write the bound port to this file (atomically) once listening")
    return p


def municipalities_in_fbs() -> list[str]:
    """The municipalities of the FBS agencies (each agency calls for its municipality)."""
    engine = make_engine(core_settings.database_urls().fbs, core_settings.FBS_SCHEMA)
    try:
        with engine.connect() as conn:
            return sorted({r[0] for r in conn.execute(text("SELECT DISTINCT municipality_cvr FROM agency")) if r[0]})
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """``python -m fbs_debitor inbound ...``: serve until stopped; exit 2 on a setting refused."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        core_settings.check(stores=("fbs",) if args.certificate_cvrs_from_fbs else ())
    except core_settings.SettingError as exc:
        for line in exc.problems:
            print(f"inbound service refused: setting {line}", file=sys.stderr)
        return 2
    try:
        configured = default_payments_dir()
        payments_dir = Path(args.payments_dir).expanduser().absolute() if args.payments_dir else configured
        settings = InboundSettings(
            tls_cert=args.tls_cert, tls_key=args.tls_key, serviceplatformen_cert=args.serviceplatformen_cert,
            payments_dir=str(payments_dir), host=args.host, port=args.port, sts_cert=args.sts_cert,
            sts_issuer=args.sts_issuer, entity_id=args.entity_id, token_cvrs=tuple(args.token_cvr),
            certificate_cvrs=tuple(args.certificate_cvr) + tuple(
                c for c in (municipalities_in_fbs() if args.certificate_cvrs_from_fbs else ())
                if c not in args.token_cvr and c not in args.certificate_cvr),
            own_payments_dir=payments_dir.resolve() == configured.resolve())
        port_file = Path(args.port_file) if args.port_file else None

        def started(server: uvicorn.Server) -> None:
            if port_file is not None:
                _write_port(port_file, server.port)
            print(f"SF1590_B_01A inbound service on https://{settings.host}:{server.port}{PATH} landing in "
                  f"{payments_dir / 'inbox'}  (Ctrl-C stops)", flush=True)

        server = make_server(settings, on_started=started)
    except (InboundSettingError, InboxLayoutError, ValueError) as exc:
        print(f"inbound service refused: {exc}", file=sys.stderr)
        return 2
    except ssl.SSLError as exc:
        print(f"inbound service refused: the TLS files could not be loaded ({type(exc).__name__}: "
              f"{exc.reason or 'unreadable'})", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server.run()
    return 0
