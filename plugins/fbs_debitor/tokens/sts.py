"""The client of KOMBIT's STS: a SAML token per (municipality CVR, service entity id), asked for
over the STS's REST WS-Trust endpoint with mutual TLS, and a cache that keeps each token until a
few minutes before it expires.

The request is the JSON that public client code sends (domain brief, "Token access as public
client code does it"): ``TokenType`` SAML 2.0, ``RequestType`` Issue, ``KeyType`` PublicKey,
``AnvenderKontekst.Cvr`` the municipality, ``UseKey`` our system certificate (base64 DER, the
holder-of-key), ``AppliesTo.EndpointReference.Address`` the service's entity id.

Failures come in two kinds. ``StsUnavailable`` (transient) is a timeout, a connection failure,
HTTP 5xx/408/429 or an answer that is not the expected JSON: retried ``max_attempts`` times with
doubling back-off. ``StsRefused`` (not transient) is the STS saying no: HTTP 4xx or a JSON
``Fault`` (e.g. ``NoServiceAgreement``: the municipality has not approved the agreement). A TLS
handshake failure (the STS refuses our certificate, or its certificate is not trusted) is also
``StsRefused``, with code ``TLS``: asking again with the same certificates cannot help. A TLS
connection merely cut short (an EOF) counts as a connection failure. The cache remembers a refusal
for its life (one run) and never asks again for that key.

Nothing here logs or puts in an exception a token, a key or certificate content; a refusal quotes
only the STS's Fault code and reason (trimmed).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
import os
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fbs_debitor.tokens import saml

log = logging.getLogger(__name__)

TOKEN_TYPE = "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLV2.0"
REQUEST_TYPE = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue"
KEY_TYPE = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/PublicKey"
ISSUE_PATH = "/runtime/api/rest/wstrust/v1/issue"

TRANSIENT_STATUS = frozenset({408, 429})
MAX_REASON = 200
MAX_ANSWER = 2 * 1024 * 1024
_CVR = re.compile(r"\d{8}")
# What a refusal's reason must never carry: markup, PEM armour, long base64 runs.
_MARKUP = re.compile(r"<[^>]*>?")
_PEM = re.compile(r"-----[A-Z ]+-----")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{40,}")


class StsError(RuntimeError):
    """A token could not be had. ``transient`` says whether a later try may succeed."""

    transient = False

    def __init__(self, message: str, *, cvr: str = "", entity_id: str = "", code: str = ""):
        super().__init__(message)
        self.cvr, self.entity_id, self.code = cvr, entity_id, code


class StsRefused(StsError):
    """The STS refused (HTTP 4xx other than 408/429, a JSON Fault, or a TLS handshake failure with
    code ``TLS``): not retried."""

    transient = False


class StsUnavailable(StsError):
    """The STS could not be reached or answered badly, on every attempt: a later run may succeed."""

    transient = True


class StsConfigError(ValueError):
    """An STS setting outside its allowed range; the message names the field and the range."""


def _number(name: str, value, low: float, high: float, *, whole: bool = False) -> None:
    kind = "a whole number" if whole else "a number"
    ok = (isinstance(value, int) if whole else isinstance(value, int | float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low <= value <= high:
        raise StsConfigError(f"StsSettings.{name}: {value!r} is not allowed; allowed is {kind} from {low:g} to {high:g}")


def _file(name: str, value) -> None:
    if not isinstance(value, str) or not value:
        raise StsConfigError(f"StsSettings.{name}: a path to an existing PEM file is required")
    if not os.path.isfile(value):
        raise StsConfigError(f"StsSettings.{name}: {value!r} is not an existing file; allowed is a path to a PEM file")


@dataclass(frozen=True)
class StsSettings:
    """How to reach the STS. ``endpoint`` is the https URL of its REST WS-Trust issue endpoint
    (``…/runtime/api/rest/wstrust/v1/issue``); ``client_cert``/``client_key`` our system
    certificate and key (PEM files: mutual TLS and the holder-of-key); ``ca_bundle`` the CA the STS's
    certificate must chain to (None: the system's trust store)."""

    endpoint: str
    client_cert: str
    client_key: str
    ca_bundle: str | None = None
    connect_timeout: float = 10.0
    operation_timeout: float = 30.0
    max_attempts: int = 3
    backoff_seconds: float = 1.0
    renew_before_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.endpoint, str):
            raise StsConfigError("StsSettings.endpoint: allowed is an https:// URL of the STS issue endpoint")
        try:
            parts = urlsplit(self.endpoint)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise StsConfigError("StsSettings.endpoint: not a valid URL; allowed is an https:// URL of the STS "
                                 "issue endpoint") from None
        if parts.scheme != "https" or not host:
            raise StsConfigError("StsSettings.endpoint: allowed is an https:// URL with a host (the STS is mutual "
                                 "TLS), not " + (f"{parts.scheme}://" if parts.scheme else "a URL without a scheme"))
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise StsConfigError("StsSettings.endpoint: a user or password in the URL is not allowed (the STS "
                                 "authenticates the client certificate)")
        _file("client_cert", self.client_cert)
        _file("client_key", self.client_key)
        if self.ca_bundle is not None:
            _file("ca_bundle", self.ca_bundle)
        _number("connect_timeout", self.connect_timeout, 0.1, 600)
        _number("operation_timeout", self.operation_timeout, 0.1, 600)
        _number("max_attempts", self.max_attempts, 1, 10, whole=True)
        _number("backoff_seconds", self.backoff_seconds, 0, 60)
        _number("renew_before_seconds", self.renew_before_seconds, 0, 3600)


@dataclass(frozen=True)
class Token:
    """A SAML assertion from the STS for one municipality and service; ``expires`` is the earlier of
    the STS's Lifetime.Expires and the assertion's NotOnOrAfter (aware UTC)."""

    assertion: bytes = field(repr=False)
    not_before: dt.datetime
    expires: dt.datetime
    cvr: str
    entity_id: str


def check_key(cvr: str, entity_id: str) -> None:
    """A municipality CVR (8 digits) and a non-empty entity id, else ValueError."""
    if not isinstance(cvr, str) or not _CVR.fullmatch(cvr):
        raise ValueError(f"the municipality CVR must be 8 digits, not {cvr!r}")
    if not isinstance(entity_id, str) or not entity_id.strip():
        raise ValueError("the service entity id must be non-empty")


def _clean(text, limit: int = MAX_REASON) -> str:
    """A Fault code or reason fit for a log line: no markup, no PEM armour or base64, one line, trimmed."""
    text = "" if text is None else str(text)
    text = _BASE64_RUN.sub("…", _PEM.sub("", _MARKUP.sub("", text)))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` beneath a requests/urllib3 exception, if any."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLError):
            return item
        todo.extend(item.args)
        todo.extend((getattr(item, "reason", None), item.__cause__, item.__context__))
    return None


def _tls_refusal(exc: BaseException) -> str | None:
    """For a TLS failure that repeating cannot mend, its short name; None for a connection merely cut
    (EOF, reset), which is transient."""
    found = _ssl_error(exc)
    if found is None or isinstance(found, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
        return None
    reason = getattr(found, "reason", None) or ""
    if isinstance(found, ssl.SSLCertVerificationError):
        return "the STS's certificate is not trusted"
    if "EOF" in reason:
        return None
    return f"TLS handshake refused ({_clean(reason, 80) or type(found).__name__})"


class _Transient(Exception):
    """One failed attempt that may succeed on the next one."""


def _parse_time(text, what: str) -> dt.datetime:
    if not isinstance(text, str):
        raise _Transient(f"the answer's {what} is missing")
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise _Transient(f"the answer's {what} is not an ISO 8601 date-time") from None
    if value.tzinfo is None:
        raise _Transient(f"the answer's {what} has no time zone")
    return value.astimezone(dt.UTC)


class StsClient:
    """Asks the STS for tokens over one mutual-TLS ``requests.Session``. ``issue`` retries transient
    failures (``StsUnavailable`` after the last); a refusal is raised at once (``StsRefused``)."""

    def __init__(self, settings: StsSettings, sleep: Callable[[float], None] = time.sleep):
        if not isinstance(settings, StsSettings):
            raise StsConfigError("StsClient needs StsSettings")
        self.settings = settings
        self._sleep = sleep
        try:
            with open(settings.client_cert, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError):
            raise StsConfigError(f"StsSettings.client_cert: {settings.client_cert!r} is not a readable PEM "
                                 "certificate") from None
        self._use_key = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
        self._session = requests.Session()
        self._session.trust_env = False          # no proxies or netrc from the environment
        self._session.cert = (settings.client_cert, settings.client_key)
        self._session.verify = settings.ca_bundle or True
        self._session.headers.update({"Accept": "application/json"})

    def __repr__(self) -> str:
        return f"StsClient(endpoint={self.settings.endpoint!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> StsClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request_body(self, cvr: str, entity_id: str) -> dict:
        """The WS-Trust issue request as JSON."""
        return {"TokenType": TOKEN_TYPE, "RequestType": REQUEST_TYPE, "KeyType": KEY_TYPE,
                "AnvenderKontekst": {"Cvr": cvr}, "UseKey": self._use_key,
                "AppliesTo": {"EndpointReference": {"Address": entity_id}}}

    def issue(self, cvr: str, entity_id: str) -> Token:
        """A new token for municipality ``cvr`` and service ``entity_id``."""
        check_key(cvr, entity_id)
        s = self.settings
        last = ""
        for attempt in range(1, s.max_attempts + 1):
            if attempt > 1:
                delay = s.backoff_seconds * 2 ** (attempt - 2)
                log.warning("STS attempt %d/%d for municipality %s, service %s failed (%s); retrying in %.1f s",
                            attempt - 1, s.max_attempts, cvr, entity_id, last, delay)
                if delay > 0:
                    self._sleep(delay)
            try:
                return self._attempt(cvr, entity_id)
            except _Transient as exc:
                last = str(exc)
        raise StsUnavailable(f"STS unavailable for municipality {cvr}, service {entity_id} after "
                             f"{s.max_attempts} attempt(s): {last}", cvr=cvr, entity_id=entity_id, code="UNAVAILABLE")

    def _refused(self, cvr: str, entity_id: str, code: str, reason: str) -> StsRefused:
        code, reason = _clean(code, 80) or "unknown", _clean(reason)
        return StsRefused(f"STS refused a token for municipality {cvr}, service {entity_id}: {code}"
                          + (f": {reason}" if reason else ""), cvr=cvr, entity_id=entity_id, code=code)

    def _attempt(self, cvr: str, entity_id: str) -> Token:
        s = self.settings
        try:
            answer = self._session.post(s.endpoint, json=self.request_body(cvr, entity_id),
                                        timeout=(s.connect_timeout, s.operation_timeout), allow_redirects=False)
        except requests.Timeout:
            raise _Transient("timeout") from None
        except requests.RequestException as exc:
            tls = _tls_refusal(exc)
            if tls is not None:
                raise self._refused(cvr, entity_id, "TLS", tls) from None
            raise _Transient(f"connection failed ({type(exc).__name__})") from None
        with answer:
            status = answer.status_code
            body = answer.content[:MAX_ANSWER + 1]
        data = None
        try:
            data = json.loads(body) if len(body) <= MAX_ANSWER else None
        except ValueError:
            data = None
        fault = data.get("Fault") if isinstance(data, dict) else None
        if status >= 500 or status in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {status}")
        if isinstance(fault, dict) or 400 <= status < 500:
            code = fault.get("Code") if isinstance(fault, dict) else None
            reason = fault.get("Reason") if isinstance(fault, dict) else None
            raise self._refused(cvr, entity_id, code or f"HTTP {status}", reason or "")
        if status != 200 or not isinstance(data, dict):
            raise _Transient(f"HTTP {status}" if status != 200 else "the answer is not JSON")
        return self._token(data, cvr, entity_id)

    @staticmethod
    def _token(data: dict, cvr: str, entity_id: str) -> Token:
        if data.get("TokenType") not in (None, TOKEN_TYPE):
            raise _Transient("the answer's TokenType is not SAML 2.0")
        requested = data.get("RequestedSecurityToken")
        text = requested.get("Assertion") if isinstance(requested, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise _Transient("the answer holds no RequestedSecurityToken.Assertion")
        assertion = text.encode("utf-8")
        try:
            not_before, not_on_or_after = saml.lifetime(saml.parse_assertion(assertion))
        except saml.TokenRefused as exc:
            raise _Transient(f"the answer's assertion cannot be read ({exc.reason})") from None
        lifetime = data.get("Lifetime")
        if not isinstance(lifetime, dict):
            raise _Transient("the answer holds no Lifetime")
        created = _parse_time(lifetime.get("Created"), "Lifetime.Created")
        expires = _parse_time(lifetime.get("Expires"), "Lifetime.Expires")
        token = Token(assertion=assertion, not_before=max(created, not_before), expires=min(expires, not_on_or_after),
                      cvr=cvr, entity_id=entity_id)
        if token.expires <= token.not_before:
            raise _Transient("the answer's token has no lifetime")
        return token


class TokenCache:
    """Tokens per (municipality CVR, entity id), each kept until ``renew_before`` before it expires.

    Thread-safe: one lock per key, so two threads never ask the STS for the same key at once (the
    second waits and gets the first's token). A refusal (``StsRefused``) is remembered for the
    cache's life (one run) and raised again without asking. ``requests`` counts the STS requests
    per key."""

    def __init__(self, client: StsClient, renew_before: dt.timedelta | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)):
        if renew_before is None:
            renew_before = dt.timedelta(seconds=client.settings.renew_before_seconds)
        if not isinstance(renew_before, dt.timedelta) or not dt.timedelta(0) <= renew_before <= dt.timedelta(hours=1):
            raise StsConfigError("TokenCache.renew_before: allowed is a duration from 0 to 1 hour")
        self.client, self.renew_before, self.clock = client, renew_before, clock
        self.requests: Counter[tuple[str, str]] = Counter()
        self._tokens: dict[tuple[str, str], Token] = {}
        self._refused: dict[tuple[str, str], StsRefused] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _fresh(self, token: Token | None) -> bool:
        return token is not None and self.clock() < token.expires - self.renew_before

    def get(self, cvr: str, entity_id: str) -> Token:
        """The cached token for the key, or a new one from the STS when none is fresh."""
        check_key(cvr, entity_id)
        key = (cvr, entity_id)
        with self._lock(key):
            refused = self._refused.get(key)
            if refused is not None:
                raise StsRefused(str(refused), cvr=cvr, entity_id=entity_id, code=refused.code)
            token = self._tokens.get(key)
            if self._fresh(token):
                return token
            self.requests[key] += 1
            try:
                token = self.client.issue(cvr, entity_id)
            except StsRefused as exc:
                self._refused[key] = exc
                log.warning("%s; not asked again in this run", exc)
                raise
            self._tokens[key] = token
            log.info("STS token for municipality %s, service %s, valid until %s", cvr, entity_id,
                     token.expires.isoformat())
            return token
