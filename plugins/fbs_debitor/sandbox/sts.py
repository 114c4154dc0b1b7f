"""A local STS for the sandbox and the tests: KOMBIT's REST WS-Trust issue endpoint
(``/runtime/api/rest/wstrust/v1/issue``) over mutual TLS on loopback, issuing signed SAML 2.0
holder-of-key assertions (``saml_issuer``) for the service agreements it is given.

It checks a request as the real STS would: JSON with the fixed TokenType, RequestType and KeyType;
a municipality CVR of 8 digits; a non-empty entity id; a ``UseKey`` that is the very certificate
the client presented in the TLS handshake (the holder-of-key must hold its key); and a known
agreement (holder certificate fingerprint, CVR, entity id). A malformed request gets HTTP 400
``InvalidRequest``; a refusal HTTP 403 with a JSON ``Fault`` (``NoServiceAgreement``,
``UseKeyMismatch``). Faults a test appends to ``faults`` are consumed one per request:
``timeout`` (sleeps ``slow_seconds`` before answering), ``http503``, ``drop`` (closes without an
answer).

It logs one line per request (CVR, entity id, outcome), never the token.
``python -m fbs_debitor.sandbox.sts --pki DIR --agreement system:CVR:ENTITY_ID`` runs one.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fbs_debitor.core import settings
from fbs_debitor.sandbox import pki, saml_issuer
from fbs_debitor.sandbox.threaded import ServedInThread
from fbs_debitor.tokens.sts import ISSUE_PATH, KEY_TYPE, REQUEST_TYPE, TOKEN_TYPE

log = logging.getLogger(__name__)

DEFAULT_ISSUER = "https://sts.sandbox.fbs-debitor.local/"
FAULT_KINDS = frozenset({"timeout", "http503", "drop"})
MAX_BODY = 256 * 1024
_CVR = re.compile(r"\d{8}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def fingerprint(cert_pem: bytes | str | os.PathLike) -> str:
    """SHA-256 (hex) of a certificate's DER; ``cert_pem`` is PEM bytes or the path of a PEM file."""
    data = cert_pem if isinstance(cert_pem, bytes) else Path(cert_pem).read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ValueError("not a PEM X.509 certificate") from None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class _Refusal(Exception):
    def __init__(self, status: int, code: str, reason: str):
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


def _utc(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Sts(ServedInThread):
    """The sandbox STS. ``with Sts(...) as sts: StsSettings(endpoint=sts.url, ...)``."""

    def __init__(self, *, sts_signing_cert: str, sts_signing_key: str, server_cert: str, server_key: str,
                 client_ca: str, agreements: Iterable[tuple[str, str, str]], issuer: str = DEFAULT_ISSUER,
                 lifetime: dt.timedelta = dt.timedelta(hours=8), host: str = "127.0.0.1", port: int = 0,
                 slow_seconds: float = 3.0):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("the sandbox STS binds to loopback only")
        if not dt.timedelta(minutes=1) <= lifetime <= dt.timedelta(days=1):
            raise ValueError("lifetime: allowed is 1 minute to 1 day")
        if not 0 <= slow_seconds <= 600:
            raise ValueError("slow_seconds: allowed is 0-600")
        known = set()
        for holder, cvr, entity_id in agreements:
            if not _FINGERPRINT.fullmatch(str(holder).lower()):
                raise ValueError("an agreement's holder must be a SHA-256 certificate fingerprint (64 hex digits)")
            if not _CVR.fullmatch(str(cvr)):
                raise ValueError(f"an agreement's CVR must be 8 digits, not {cvr!r}")
            if not entity_id:
                raise ValueError("an agreement's entity id must be non-empty")
            known.add((str(holder).lower(), str(cvr), str(entity_id)))
        self.agreements = frozenset(known)
        self._sts_cert = Path(sts_signing_cert).read_bytes()
        self._sts_key = Path(sts_signing_key).read_bytes()
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self.tls.load_cert_chain(server_cert, server_key)
        self.tls.load_verify_locations(client_ca)
        self.tls.verify_mode = ssl.CERT_REQUIRED
        self.issuer, self.lifetime, self.host, self.port = issuer, lifetime, host, port
        self.slow_seconds = slow_seconds
        self.issued: Counter[tuple[str, str]] = Counter()
        self.faults: list[str] = []
        self.received = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Sts(issuer={self.issuer!r}, port={self.port})"

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox STS is not running")
        host, port = self._server.server_address[:2]
        return f"https://{host}:{port}{ISSUE_PATH}"

    thread_name = "sandbox-sts"

    def make_server(self) -> ThreadingHTTPServer:
        class Handler(_Handler):
            pass

        Handler.sts = self
        return _Server((self.host, self.port), Handler)

    def start(self) -> Sts:
        super().start()
        log.info("sandbox STS listening on %s (%d agreement(s))", self.url, len(self.agreements))
        return self

    def next_fault(self) -> str | None:
        with self._lock:
            self.received += 1
            return self.faults.pop(0) if self.faults else None

    def issue(self, body: bytes, peer_der: bytes | None) -> tuple[dict, str, str]:
        """The 200 answer for a request, with its CVR and entity id, or a ``_Refusal``."""
        try:
            request = json.loads(body)
        except ValueError:
            raise _Refusal(400, "InvalidRequest", "the request is not JSON") from None
        if not isinstance(request, dict):
            raise _Refusal(400, "InvalidRequest", "the request must be a JSON object")
        for name, expected in (("TokenType", TOKEN_TYPE), ("RequestType", REQUEST_TYPE), ("KeyType", KEY_TYPE)):
            if request.get(name) != expected:
                raise _Refusal(400, "InvalidRequest", f"{name} must be {expected}")
        context = request.get("AnvenderKontekst")
        cvr = context.get("Cvr") if isinstance(context, dict) else None
        if not isinstance(cvr, str) or not _CVR.fullmatch(cvr):
            raise _Refusal(400, "InvalidRequest", "AnvenderKontekst.Cvr must be a CVR number of 8 digits")
        applies = request.get("AppliesTo")
        reference = applies.get("EndpointReference") if isinstance(applies, dict) else None
        entity_id = reference.get("Address") if isinstance(reference, dict) else None
        if not isinstance(entity_id, str) or not entity_id.strip():
            raise _Refusal(400, "InvalidRequest", "AppliesTo.EndpointReference.Address must name the service")
        try:
            use_key = base64.b64decode("".join(str(request.get("UseKey") or "").split()), validate=True)
            holder = x509.load_der_x509_certificate(use_key)
        except (ValueError, binascii.Error):
            raise _Refusal(400, "InvalidRequest", "UseKey must be a certificate, base64 DER") from None
        holder_der = holder.public_bytes(serialization.Encoding.DER)
        if peer_der is None or holder_der != peer_der:
            raise _Refusal(403, "UseKeyMismatch", "UseKey is not the certificate the client presented in TLS")
        if (hashlib.sha256(holder_der).hexdigest(), cvr, entity_id) not in self.agreements:
            raise _Refusal(403, "NoServiceAgreement", "no service agreement for this IT system, municipality and "
                                                      "service")
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        assertion = saml_issuer.issue_assertion(
            sts_key_pem=self._sts_key, sts_cert_pem=self._sts_cert, issuer=self.issuer, audience=entity_id,
            cvr=cvr, holder_cert_pem=holder.public_bytes(serialization.Encoding.PEM), lifetime=self.lifetime,
            now=now)
        with self._lock:
            self.issued[(cvr, entity_id)] += 1
        return ({"TokenType": TOKEN_TYPE, "RequestedSecurityToken": {"Assertion": assertion.decode("utf-8")},
                 "Lifetime": {"Created": _utc(now), "Expires": _utc(now + self.lifetime)}}, cvr, entity_id)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        kind = sys.exc_info()[0]
        if kind is not None and issubclass(kind, OSError):   # a refused handshake: logged by the handler
            return
        log.info("sandbox STS: connection from %s failed: %s", client_address[0], getattr(kind, "__name__", kind))


class _Handler(BaseHTTPRequestHandler):
    sts: Sts
    protocol_version = "HTTP/1.1"
    server_version = "fbs-debitor-sandbox-sts/1"

    def setup(self) -> None:
        # The handshake in this connection's thread, never in the accept loop.
        self.request.settimeout(30)
        raw = self.request
        tls = self.sts.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            log.info("sandbox STS: TLS handshake from %s refused: %s", self.client_address[0],
                     getattr(exc, "reason", None) or type(exc).__name__)
            _linger_close(tls)
            raise
        self.request = tls
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("sandbox STS: connection closed: %s", type(exc).__name__)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        log.debug("%s " + format, self.address_string(), *args)

    def _json(self, status: int, data: dict) -> None:
        body = json.dumps(data).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _fault(self, status: int, code: str, reason: str) -> None:
        self._json(status, {"Fault": {"Code": code, "Reason": reason}})

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        found = self.path.split("?")[0] == ISSUE_PATH
        self._fault(405 if found else 404, "MethodNotAllowed" if found else "NotFound",
                    f"POST a token request to {ISSUE_PATH}")

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        if self.path.split("?")[0] != ISSUE_PATH:
            self._fault(404, "NotFound", f"POST a token request to {ISSUE_PATH}")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._fault(411, "InvalidRequest", "Content-Length required")
            return
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._fault(413, "InvalidRequest", "request too large")
            return
        body = self.rfile.read(length)
        sts = self.sts
        fault = sts.next_fault()
        if fault:
            log.info("sandbox STS: injected fault %s", fault)
        if fault == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            return
        if fault == "http503":
            self._fault(503, "ServiceUnavailable", "the STS is unavailable (injected)")
            return
        if fault == "timeout":
            time.sleep(sts.slow_seconds)
        try:
            answer, cvr, entity_id = sts.issue(body, self.connection.getpeercert(binary_form=True))
        except _Refusal as exc:
            log.info("sandbox STS: refused %s (HTTP %d)", exc.code, exc.status)
            self._fault(exc.status, exc.code, exc.reason)
            return
        except Exception:  # a bug: answer as a server fault, never with the request
            log.exception("sandbox STS failure")
            self._fault(500, "InternalError", "internal error in the sandbox STS")
            return
        log.info("sandbox STS: issued a token for municipality %s, service %s, valid %s", cvr, entity_id,
                 answer["Lifetime"]["Expires"])
        self._json(200, answer)


def _linger_close(tls: ssl.SSLSocket) -> None:
    """Close a refused connection without a TCP reset: stop sending, read (and drop) what the client
    already sent, then close, so the client reads the TLS alert rather than a bare reset."""
    try:
        tls.shutdown(socket.SHUT_WR)      # leaves TLS: recv below reads the plain socket
        tls.settimeout(1)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline and tls.recv(65536):
            pass
    except OSError:
        pass
    finally:
        tls.close()


# --- command line ------------------------------------------------------------------------------

def _agreement(text: str) -> tuple[str, str, str]:
    holder, sep, rest = text.partition(":")
    cvr, sep2, entity_id = rest.partition(":")
    if not (sep and sep2) or holder not in pki.NAMES or not _CVR.fullmatch(cvr) or not entity_id.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r}: allowed is HOLDER:CVR:ENTITY_ID with HOLDER one of {', '.join(pki.NAMES)}, CVR 8 digits "
            "and a non-empty entity id")
    return holder, cvr, entity_id


def _write_port(path: str, port: int) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".port-", dir=folder)
    with os.fdopen(fd, "w") as out:
        out.write(f"{port}\n")
    os.replace(tmp, path)


def serve(argv: list[str]) -> int:
    """``sts --pki DIR --agreement system:29189846:http://entityid.kombit.dk/service/sf1590_b_01/1``:
    run the sandbox STS until SIGTERM or Ctrl-C."""
    p = argparse.ArgumentParser(prog="sts", description="The sandbox's STS: KOMBIT's REST WS-Trust issue endpoint "
                                                        "over mutual TLS on loopback")
    p.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    p.add_argument("--port", type=settings.whole(0, 65535), default=0, help="0-65535 (default 0: any free port)")
    p.add_argument("--pki", required=True, metavar="DIR",
                   help="folder of the sandbox certificates (fbs_debitor.sandbox.pki): sts_signing, server, ca")
    p.add_argument("--agreement", type=_agreement, action="append", default=[], metavar="HOLDER:CVR:ENTITY_ID",
                   help="a service agreement (repeatable); HOLDER is a certificate of --pki, e.g. system")
    p.add_argument("--lifetime-minutes", type=settings.whole(1, 1440), default=480,
                   help="token lifetime, 1-1440 minutes (default 480)")
    p.add_argument("--port-file", metavar="PATH", help="write the chosen port here once listening")
    p.add_argument("--slow-seconds", type=settings.number(0, 600), default=3.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            p.error(f"--host {args.host!r}: allowed is a loopback address")
    except ValueError:
        p.error(f"--host {args.host!r}: allowed is a loopback IP address")
    files = pki.paths(args.pki)
    missing = [files[k] for k in ("sts_signing_cert", "sts_signing_key", "server_cert", "server_key", "ca_cert")
               if not os.path.isfile(files[k])]
    missing += [files[f"{h}_cert"] for h, _, _ in args.agreement if not os.path.isfile(files[f"{h}_cert"])]
    if missing:
        p.error(f"--pki {args.pki}: missing {', '.join(sorted(set(missing)))} (make the set with "
                "fbs_debitor.sandbox.pki.ensure(DIR))")
    if args.port_file and not os.path.isdir(os.path.dirname(os.path.abspath(args.port_file))):
        p.error(f"--port-file {args.port_file}: its folder does not exist")
    agreements = [(fingerprint(files[f"{h}_cert"]), cvr, entity_id) for h, cvr, entity_id in args.agreement]
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sts = Sts(sts_signing_cert=files["sts_signing_cert"], sts_signing_key=files["sts_signing_key"],
              server_cert=files["server_cert"], server_key=files["server_key"], client_ca=files["ca_cert"],
              agreements=agreements, lifetime=dt.timedelta(minutes=args.lifetime_minutes), host=args.host,
              port=args.port, slow_seconds=args.slow_seconds)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _signum, _frame: stop.set())
    with sts:
        port = sts._server.server_address[1]
        if args.port_file:
            _write_port(args.port_file, port)
        print(f"sandbox STS on {sts.url} with {len(agreements)} agreement(s)  (Ctrl-C stops)", flush=True)
        for holder, cvr, entity_id in args.agreement:
            print(f"  agreement: {holder} for municipality {cvr}, service {entity_id}", flush=True)
        while not stop.wait(0.2):
            pass
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
