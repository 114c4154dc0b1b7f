"""The SOAP client for KOMBIT's Serviceplatformen (SF1590_B_01 DebitorRegistreringAfsend).

Everything about where and as whom to call comes from the Airflow Connection ``serviceplatformen``
(outside Airflow: the same JSON in the environment variable ``AIRFLOW_CONN_SERVICEPLATFORMEN``),
never from code:

    {"conn_type": "http",
     "host": "https://prod.serviceplatformen.dk/service/OIR/DebitorRegistreringAfsend/1",
     "extra": {"service_agreement_uuid": "…", "user_system_uuid": "…", "user_uuid": "…",
               "service_uuid": "e354a6d1-500b-49c6-916a-510623e12fba",
               "client_cert": "/secrets/foces.crt", "client_key": "/secrets/foces.key",
               "ca_bundle": "/secrets/serviceplatformen-ca.pem",
               "connect_timeout": 10, "operation_timeout": 120, "max_attempts": 4, "backoff_seconds": 2,
               "auth": "invocation_context"}}

Transport: a ``requests`` session (zeep's transport) with the client certificate (mutual TLS) and
explicit connect and read timeouts (zeep's own default is no timeout at all). What goes on the wire
is the request element that was built and validated, serialized once into a SOAP 1.1 envelope this
module writes around it as the WSDL's binding says (envelope namespace, SOAPAction, Content-Type),
with the Auth's header blocks; zeep reads the WSDL and the binding and reads answers that are not
plain (faults, HTTP errors), but never parses and renders a request again. Plain HTTP is refused except
to a loopback address (the local emulator), and so is https without the client certificate:
Serviceplatformen is mutual TLS (a loopback address is the emulator, or a local TLS proxy that
holds the certificate). The WSDL is the project's file in ``include/xsd/``; nothing is
fetched from the network to build the client.

Allowed ranges (a value outside is a ConfigError naming the field and its range):

| field               | default | allowed                                                          |
|---------------------|---------|------------------------------------------------------------------|
| ``connect_timeout``   | 10      | 0.1-600 seconds                                                  |
| ``operation_timeout`` | 120     | 0.1-600 seconds                                                  |
| ``max_attempts``      | 4       | 1-10 (whole)                                                     |
| ``backoff_seconds``   | 2       | 0-300 seconds, and the waits of all retries together (backoff x  |
|                     |         | (2^(max_attempts-1) - 1)) at most 600 seconds                    |

Credentials: the endpoint URL may not carry a user name or password (``user:password@``), and the
Connection's login and password are not used: either is refused, without echoing it. Any URL in a
log line or a DeliveryError text (which the outbox stores as ``last_error``) has its user part
removed.

Authentication (``auth``) is a seam (``Auth``):

* ``invocation_context`` (certificate mode): the client certificate (mutual TLS) and
  Serviceplatformen's InvocationContext header block naming the service agreement, user system,
  user and service UUIDs;
* ``saml`` (token mode): a SAML holder-of-key token from KOMBIT's STS (``sts_endpoint``), asked for
  the municipality (``municipality_cvr``) and the service's entity id (``entity_id``) with the same
  system certificate, cached until ``token_renew_before`` seconds before it expires
  (``tokens.sts.TokenCache``), and carried in a WS-Security header signed with the certificate's key
  over the Body, the Timestamp and the WS-Addressing headers (``tokens.wssecurity``). The UUIDs are
  not sent in this mode.

Each municipality calls under its own agreement: ``delivery.access`` merges the default connection
with the municipality's own (``serviceplatformen_<cvr>``) into one Config per municipality. A
municipality whose access does not work (its settings are wrong, the STS refuses its agreement or
does not answer) raises ``AccessHeld``: its agencies are held for the run, the others go on.

Retries: a call is repeated after a transient failure (timeout, dropped connection, HTTP 5xx,
408 or 429, SOAP Server fault) with exponential backoff, ONLY for operations whose every item
carries its own idempotency key that the receiver answers repeats of with its first answer
(``IDEMPOTENT``): a repeat can then never create a second claim. Client faults, other HTTP 4xx and
TLS failures are not retried: repeating them cannot help.

Rejections: a SOAP Client fault, or an HTTP 4xx answer other than 408 and 429 and those that say
the call did not reach the service as configured (401, 403, 404, 405, 407, 421: fix the
connection, then the same messages go again), means the receiver refused this message's content:
``DeliveryError.rejected`` is True, so the outbox records a rejection with a staff task instead of
sending it again every hour. TLS and configuration failures are never rejections.

Payloads are never logged: zeep's transport logs whole envelopes at DEBUG, so this module's
transport leaves that out; the requests and answers hold CPR numbers.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from functools import cache
from typing import Protocol
from urllib.parse import urlsplit

from lxml import etree

from fbs_debitor.claims import messages
from fbs_debitor.claims import sf1590 as mapping
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.core.settings import XSD_DIR
from fbs_debitor.tokens import sts as sts_client
from fbs_debitor.tokens import wssecurity

log = logging.getLogger(__name__)

CONN_ID = "serviceplatformen"
ENV_VAR = "AIRFLOW_CONN_SERVICEPLATFORMEN"
SERVICE_UUID = "e354a6d1-500b-49c6-916a-510623e12fba"       # SF1590_B_01 DebitorRegistreringAfsend
DEFAULT_PATH = "service/OIR/DebitorRegistreringAfsend/1"
WSDL_FILE = "DebitorRegistreringAfsend.wsdl"
BINDING = "{urn:fbs-debitor:modelled:sf1590:DebitorRegistreringAfsend:1:wsdl}DebitorRegistreringAfsendBinding"
IDEMPOTENT = frozenset({"OpretDebitorkonto", "RetFordringTilstand"})  # keyed per FordringID / AendringID
AUTH_MODES = ("invocation_context", "saml")
# What certificate mode's InvocationContext names; token mode sends none of them.
AGREEMENT_FIELDS = ("service_agreement_uuid", "user_system_uuid", "user_uuid")
# The modelled entity id of SF1590_B_01 (the audience of its tokens): the official one comes with
# KOMBIT's integration package; a connection sets its own in ``entity_id``.
ENTITY_ID = "http://entityid.kombit.dk/service/sf1590/DebitorRegistreringAfsend/1"


class ConfigError(ValueError):
    """The ``serviceplatformen`` connection is missing or wrong; says which field."""


class AccessHeld(RuntimeError):
    """A municipality's calls cannot go under its agreement this run: its settings are wrong
    (``config``), the STS refused its agreement (``sts_refused``) or did not answer after every
    retry (``sts_unavailable``). Its agencies are held; the other municipalities go on. The text
    names the municipality and the reason, never a token or key."""

    def __init__(self, cvr: str | None, code: str, message: str):
        super().__init__(redact_urls(message))
        self.cvr, self.code = cvr, code


class DeliveryError(RuntimeError):
    """A call that did not get an answer. ``transient``: a later attempt may succeed.
    ``rejected``: the receiver refused the message's content (a SOAP Client fault, an HTTP 4xx
    about the request): sending it again cannot help, staff must look at it."""

    def __init__(self, message: str, transient: bool, attempts: int, *, rejected: bool = False):
        super().__init__(redact_urls(message))
        self.transient, self.attempts, self.rejected = transient, attempts, rejected


# The ranges of the numeric fields: (low, high) and the unit said in errors.
LIMITS = {"connect_timeout": (0.1, 600.0), "operation_timeout": (0.1, 600.0), "backoff_seconds": (0.0, 300.0),
          "max_attempts": (1, 10)}
MAX_TOTAL_BACKOFF = 600.0      # seconds: all waits between the attempts of one call together
# 4xx answers that say the call did not reach the service as configured (not the message's fault)
NOT_REACHED = frozenset({401, 403, 404, 405, 407, 421})
TRANSIENT_4XX = frozenset({408, 429})

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s]*@")


def redact_urls(text: str) -> str:
    """``text`` with the user part (``user:password@``) of every URL in it removed."""
    return _USERINFO.sub(r"\1***@", text)


# --- configuration ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    endpoint: str
    service_agreement_uuid: str = ""
    user_system_uuid: str = ""
    user_uuid: str = ""
    service_uuid: str = SERVICE_UUID
    client_cert: str | None = None
    client_key: str | None = None
    ca_bundle: str | None = None
    connect_timeout: float = 10.0
    operation_timeout: float = 120.0
    max_attempts: int = 4
    backoff_seconds: float = 2.0
    auth: str = "invocation_context"
    on_behalf_of: str | None = field(default=None, repr=False)
    entity_id: str = ENTITY_ID
    sts_endpoint: str | None = None
    token_renew_before: float = 300.0
    municipality_cvr: str | None = None
    conn_id: str = field(default=CONN_ID, compare=False)

    def __post_init__(self):
        for name in (*AGREEMENT_FIELDS, "service_uuid"):
            value = getattr(self, name)
            if not value and self.auth == "saml" and name != "service_uuid":
                continue     # token mode: the token names the agreement; these are not sent
            try:   # kept in the one form the InvocationContext schema accepts: 8-4-4-4-12, lower case
                object.__setattr__(self, name, str(uuid.UUID(str(value))))
            except ValueError:
                raise ConfigError(f"connection {self.conn_id!r}: {name} must be a UUID") from None
        try:
            parts = urlsplit(self.endpoint)
            parts.port  # noqa: B018 - a port that is not a number raises here
        except ValueError:
            raise ConfigError(f"connection {self.conn_id!r}: the endpoint must be an https:// URL") from None
        if "@" in parts.netloc or "@" in parts.path:
            raise ConfigError(f"connection {self.conn_id!r}: the endpoint {redact_urls(self.endpoint)} carries a user "
                              "name or password (user:password@): not allowed; Serviceplatformen authenticates the "
                              "client certificate, so remove it from the URL")
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"connection {self.conn_id!r}: the endpoint must be an https:// URL")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ConfigError(f"connection {self.conn_id!r}: plain http is only allowed to a loopback address "
                              "(the local emulator); Serviceplatformen needs https with the client certificate")
        if bool(self.client_cert) != bool(self.client_key):
            raise ConfigError(f"connection {self.conn_id!r}: client_cert and client_key go together")
        for name in ("client_cert", "client_key", "ca_bundle"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(f"connection {self.conn_id!r}: {name} {path!r} is not a readable file")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value <= high):
                unit = "" if name == "max_attempts" else " seconds"
                raise ConfigError(f"connection {self.conn_id!r}: {name} {value:g} is outside its allowed range "
                                  f"{low:g}-{high:g}{unit}")
        waits = self.backoff_seconds * (2 ** (self.max_attempts - 1) - 1)
        if waits > MAX_TOTAL_BACKOFF:
            raise ConfigError(f"connection {self.conn_id!r}: max_attempts {self.max_attempts} with backoff_seconds "
                              f"{self.backoff_seconds:g} wait {waits:g} seconds between attempts in all; allowed is "
                              f"at most {MAX_TOTAL_BACKOFF:g} (backoff x (2^(max_attempts-1) - 1))")
        if self.auth not in AUTH_MODES:
            raise ConfigError(f"connection {self.conn_id!r}: auth must be one of {', '.join(AUTH_MODES)}")
        if parts.scheme == "https" and not self.client_cert and not _is_loopback(parts.hostname):
            raise ConfigError(f"connection {self.conn_id!r}: https needs the client certificate (client_cert and "
                              "client_key): Serviceplatformen is mutual TLS")
        if self.municipality_cvr is not None and not re.fullmatch(r"\d{8}", str(self.municipality_cvr)):
            raise ConfigError(f"connection {self.conn_id!r}: municipality_cvr must be 8 digits")
        if not (math.isfinite(self.token_renew_before) and 0 <= self.token_renew_before <= 3600):
            raise ConfigError(f"connection {self.conn_id!r}: token_renew_before {self.token_renew_before:g} is outside "
                              "its allowed range 0-3600 seconds")
        if not str(self.entity_id or "").strip():
            raise ConfigError(f"connection {self.conn_id!r}: entity_id must name the service's entity id")
        if self.auth == "saml":
            if not self.sts_endpoint:
                raise ConfigError(f"connection {self.conn_id!r}: auth 'saml' needs sts_endpoint (the STS's issue URL)")
            if not self.client_cert:
                raise ConfigError(f"connection {self.conn_id!r}: auth 'saml' needs the system certificate (client_cert "
                                  "and client_key): it asks the STS and signs every call")
            try:
                self.sts_settings()
            except sts_client.StsConfigError as exc:
                raise ConfigError(f"connection {self.conn_id!r}: {exc}") from None
        elif self.sts_endpoint:
            raise ConfigError(f"connection {self.conn_id!r}: sts_endpoint is only used with auth 'saml'")

    def sts_settings(self) -> sts_client.StsSettings:
        """The STS client's settings: the same system certificate, CA and timeouts as the calls."""
        return sts_client.StsSettings(
            endpoint=self.sts_endpoint, client_cert=self.client_cert, client_key=self.client_key,
            ca_bundle=self.ca_bundle, connect_timeout=self.connect_timeout,
            operation_timeout=self.operation_timeout, max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds, renew_before_seconds=self.token_renew_before)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_FLOATS = ("connect_timeout", "operation_timeout", "backoff_seconds", "token_renew_before")


def config_from_connection(host: str | None, port: int | None, schema: str | None, extra: dict,
                           conn_type: str | None = None, *, login: str | None = None,
                           password: str | None = None, conn_id: str = CONN_ID) -> Config:
    """A Config from an Airflow Connection's fields. The endpoint is ``extra.endpoint``, or ``host``
    when it is a whole URL, or ``https://host[:port]/<path>`` where the path is ``schema`` (Airflow's
    URI form puts it there), or the service's standard path. A ``schema`` of ``http``/``https`` is
    read as the scheme, as Airflow's HTTP connections use it; plain http only to loopback. A
    ``login`` or ``password`` is refused (never echoed): the client certificate authenticates."""
    if login or password:
        raise ConfigError(f"connection {conn_id!r}: login and password are not used (Serviceplatformen "
                          "authenticates the client certificate): remove them from the connection")
    if not isinstance(extra or {}, dict):
        raise ConfigError(f"connection {conn_id!r}: extra must be a JSON object")
    extra = dict(extra or {})
    endpoint = extra.pop("endpoint", None)
    if not endpoint:
        if not host:
            raise ConfigError(f"connection {conn_id!r}: no endpoint (set host to the service URL)")
        if "://" in host:
            endpoint = host
        else:
            path = (schema or "").strip("/")
            scheme = "https"
            if path.lower() in ("http", "https"):
                scheme, path = path.lower(), ""
            elif (conn_type or "").lower() == "http" and _is_loopback(host):
                scheme = "http"
            name = f"[{host}]" if ":" in host and not host.startswith("[") else host
            endpoint = f"{scheme}://{name}{f':{port}' if port else ''}/{path or DEFAULT_PATH}"
    known = set(Config.__dataclass_fields__) - {"endpoint", "conn_id"}
    unknown = set(extra) - known
    if unknown:
        raise ConfigError(f"connection {conn_id!r}: unknown extra field(s) {sorted(unknown)}")
    needed = () if extra.get("auth") == "saml" else AGREEMENT_FIELDS
    missing = [k for k in needed if not extra.get(k)]
    if missing:
        raise ConfigError(f"connection {conn_id!r}: extra is missing {', '.join(missing)}")
    return Config(endpoint=endpoint, conn_id=conn_id, **{k: _convert(k, v, conn_id) for k, v in extra.items()})


def _convert(name: str, value, conn_id: str = CONN_ID):
    try:
        if name in _FLOATS:
            return float(value)
        if name == "max_attempts":
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
    except (TypeError, ValueError):
        kind = "a whole number" if name == "max_attempts" else "a number of seconds"
        raise ConfigError(f"connection {conn_id!r}: {name} must be {kind}") from None
    return value


def connection_from_json(raw: str, conn_id: str = CONN_ID) -> dict:
    """Airflow's JSON form of a connection (``AIRFLOW_CONN_<ID>``) as a dict whose ``extra`` is a
    dict; ConfigError names the variable."""
    env_var = f"AIRFLOW_CONN_{conn_id.upper()}"
    try:
        data = json.loads(raw)
        extra = data.get("extra") or {} if isinstance(data, dict) else None
        if isinstance(extra, str):
            extra = json.loads(extra)
    except json.JSONDecodeError:
        raise ConfigError(f"{env_var} must be the connection as JSON") from None
    if not isinstance(data, dict) or not isinstance(extra, dict):
        raise ConfigError(f"{env_var} must be a JSON object with 'host' and an 'extra' object")
    return {**data, "extra": extra}


def config_from_env(environ: dict | None = None) -> Config:
    """The connection as JSON in ``AIRFLOW_CONN_SERVICEPLATFORMEN`` (Airflow's own format), for the
    CLI outside Airflow."""
    raw = (environ if environ is not None else os.environ).get(ENV_VAR)
    if not raw:
        raise ConfigError(f"no Serviceplatformen connection: define the Airflow Connection {CONN_ID!r} "
                          f"(or {ENV_VAR} as JSON)")
    data = connection_from_json(raw)
    return config_from_connection(data.get("host"), data.get("port"), data.get("schema"), data["extra"],
                                  data.get("conn_type"), login=data.get("login"), password=data.get("password"))


# --- authentication seam ------------------------------------------------------------------------

class Auth(Protocol):
    """How a call proves who it is: set up the HTTP session, and the SOAP header blocks per call."""

    name: str

    def prepare(self, session) -> None: ...

    def soap_headers(self) -> list[etree._Element]: ...


class InvocationContextAuth:
    """Client certificate (mutual TLS) plus the InvocationContext header block."""

    name = "invocation_context"

    def __init__(self, config: Config):
        self.config = config

    def prepare(self, session) -> None:
        if self.config.client_cert:
            session.cert = (self.config.client_cert, self.config.client_key)

    def soap_headers(self) -> list[etree._Element]:
        return [invocation_context(self.config)]


class SamlTokenAuth:
    """KOMBIT STS mode: a SAML holder-of-key token for (municipality, entity id) from the token
    cache, carried in a WS-Security header that the system certificate's key signs over the Body,
    the Timestamp and the WS-Addressing headers (``apply``, zeep's ``wsse`` interface: ``Client`` runs it on the
    finished envelope of every call). The token is asked for before the call (``ready``), so an STS
    that refuses or does not answer is ``AccessHeld`` for this municipality, never a delivery
    failure of the claims."""

    name = "saml"

    def __init__(self, config: Config, tokens: sts_client.TokenCache | None = None):
        if not config.municipality_cvr:
            raise ConfigError(f"connection {config.conn_id!r}: auth 'saml' is asked for per municipality: set "
                              "municipality_cvr (the access settings per municipality do)")
        self.config = config
        self.tokens = tokens or token_cache(config.sts_settings())
        with open(config.client_key, "rb") as key, open(config.client_cert, "rb") as cert:
            self._key_pem, self._cert_pem = key.read(), cert.read()

    def prepare(self, session) -> None:
        session.cert = (self.config.client_cert, self.config.client_key)

    def soap_headers(self) -> list[etree._Element]:
        return []

    def ready(self) -> sts_client.Token:
        """The municipality's token, from the cache (asked for when missing or about to expire)."""
        cvr = self.config.municipality_cvr
        try:
            return self.tokens.get(cvr, self.config.entity_id)
        except sts_client.StsRefused as exc:
            raise AccessHeld(cvr, "sts_refused", f"municipality {cvr}: the STS refused a token for "
                                                 f"{self.config.entity_id}: {exc}") from None
        except sts_client.StsError as exc:
            raise AccessHeld(cvr, "sts_unavailable", f"municipality {cvr}: no token from the STS for "
                                                     f"{self.config.entity_id}: {exc}") from None

    # zeep's WS-Security plugin interface; ``Client._message`` calls it on each attempt's envelope
    def apply(self, envelope, headers):
        action = str(headers.get("SOAPAction", "")).strip('"')
        token = self.ready()
        wssecurity.sign_envelope(envelope, token.assertion, key_pem=self._key_pem, cert_pem=self._cert_pem,
                                 action=action, to=self.config.endpoint)
        return envelope, headers

    def verify(self, envelope):
        return envelope


_TOKEN_CACHES: dict[sts_client.StsSettings, sts_client.TokenCache] = {}


def token_cache(settings: sts_client.StsSettings) -> sts_client.TokenCache:
    """One token cache per STS and system certificate in this process, shared by every municipality
    that asks it: a token is asked for once and renewed shortly before it expires, never per call."""
    cache = _TOKEN_CACHES.get(settings)
    if cache is None:
        cache = _TOKEN_CACHES[settings] = sts_client.TokenCache(sts_client.StsClient(settings))
    return cache


def make_auth(config: Config) -> Auth:
    return {"invocation_context": InvocationContextAuth, "saml": SamlTokenAuth}[config.auth](config)


def invocation_context(config: Config) -> etree._Element:
    ns = mapping.NS_IC
    root = etree.Element(f"{{{ns}}}InvocationContext", nsmap={"ic": ns})
    for name, value in (("ServiceAgreementUUID", config.service_agreement_uuid),
                        ("UserSystemUUID", config.user_system_uuid), ("UserUUID", config.user_uuid),
                        ("OnBehalfOfUser", config.on_behalf_of), ("ServiceUUID", config.service_uuid)):
        if value:
            etree.SubElement(root, f"{{{ns}}}{name}").text = str(value).lower() if "UUID" in name else value
    return root


# --- the client ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    receipts: list[mapping.Receipt]
    attempts: int


def _quiet_transport_class():
    from zeep.transports import Transport

    class QuietTransport(Transport):
        """zeep's transport without its DEBUG log of whole envelopes (they hold CPR numbers)."""

        def post(self, address, message, headers):
            return self.session.post(address, data=message, headers=headers, timeout=self.operation_timeout)

    return QuietTransport


def _settings():
    from zeep import Settings

    return Settings(strict=True, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True, forbid_external=True)


@cache
def _wsdl_document():
    """The project's WSDL and schemas, read once per process from include/xsd/."""
    from zeep.wsdl import Document

    return Document(str(XSD_DIR / WSDL_FILE), _quiet_transport_class()(timeout=10), settings=_settings())


class Client:
    """``with Client(config) as c: c.call(request_root)``.

    What goes on the wire is the request element that was built and validated, serialized once
    (``etree.tostring``) into a SOAP envelope this client writes itself, as the WSDL's binding says
    (its SOAP version, the operation's SOAPAction): zeep reads the WSDL and the binding and parses
    the answer (faults included), but never parses and renders the request again. Certificate mode
    puts the Auth's header blocks (the InvocationContext) in the envelope's Header; token mode signs
    the envelope (``SamlTokenAuth.apply``, the WS-Security header) on each attempt."""

    def __init__(self, config: Config, auth: Auth | None = None, sleep: Callable[[float], None] = time.sleep):
        import requests
        from zeep import Client as ZeepClient

        self.config = config
        self.auth = auth or make_auth(config)
        self._sleep = sleep
        session = requests.Session()
        session.verify = config.ca_bundle or True
        session.trust_env = False        # no proxy or CA bundle from the environment by surprise
        self.auth.prepare(session)
        transport = _quiet_transport_class()(session=session, timeout=config.connect_timeout,
                                             operation_timeout=(config.connect_timeout, config.operation_timeout))
        self._wsse = self.auth if isinstance(self.auth, SamlTokenAuth) else None
        self._zeep = ZeepClient(_wsdl_document(), transport=transport, settings=_settings(), wsse=self._wsse)
        self._service = self._zeep.create_service(BINDING, config.endpoint)
        self._binding = self._service._binding
        self._soap = _binding_form(self._binding)
        self._session = session
        self._poster: ThreadPoolExecutor | None = None     # ``call(while_waiting=...)``: the post on its own thread

    def close(self) -> None:
        if self._poster is not None:
            self._poster.shutdown(wait=True)
            self._poster = None
        self._session.close()

    def for_agency(self, agency_id: str) -> Client:
        """This client calls for every agency (one connection); ``access.Clients`` picks one per
        municipality."""
        return self

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, request: etree._Element, on_attempt: Callable[[int], None] | None = None,
             while_waiting: Callable[[], None] | None = None) -> Answer:
        """Send one request (a validated SF1590 request element) and return the debtor system's
        receipts. ``on_attempt(n)`` runs before each transmission (the outbox counts attempts).
        Raises DeliveryError when no answer came.

        ``while_waiting``: work of the caller's that touches neither the request nor the line (the
        next batch's fingerprints and assembly: ``delivery.outbox``), done once while the first
        transmission is on its way: the post then runs on a thread of this client's own, this
        thread does ``while_waiting`` and then waits for the answer; everything else (the attempts,
        their order, the classification, the retries) is as without it. It must not raise (the
        outbox keeps its errors for later); if it does, the error is raised once the post is back."""
        operation = mapping.operation_of(request)
        body = etree.tostring(request, encoding="UTF-8", with_tail=False)     # the validated element, as it goes
        retry = operation in IDEMPOTENT
        attempts = self.config.max_attempts if retry else 1
        if self._wsse is not None:
            self.auth.ready()     # AccessHeld, before anything is sent, when there is no token
        for attempt in range(1, attempts + 1):
            if on_attempt:
                on_attempt(attempt)
            try:
                message, headers = self._message(operation, request, body)
                work, while_waiting = while_waiting, None        # once, with the first transmission
                response = self._post(message, headers, work)
                return Answer(self._receipts(operation, response), attempt)
            except AccessHeld:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
                transient, rejected, reason = _classify(exc)
                if not transient or attempt == attempts:
                    raise DeliveryError(f"{operation} to {self.config.endpoint}: {reason} "
                                        f"(attempt {attempt} of {attempts})", transient, attempt,
                                        rejected=rejected) from None
                delay = self.config.backoff_seconds * 2 ** (attempt - 1)
                log.warning("%s: %s; attempt %d of %d, retrying in %.1f s", operation, reason, attempt, attempts,
                            delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _post(self, message: bytes, headers: dict[str, str], while_waiting: Callable[[], None] | None):
        """The transport's post; with ``while_waiting``, the post on this client's own thread while
        this one does that work (see ``call``)."""
        if while_waiting is None:
            return self._zeep.transport.post(self.config.endpoint, message, headers)
        if self._poster is None:
            self._poster = ThreadPoolExecutor(1, "fbs-debitor-post")
        future = self._poster.submit(self._zeep.transport.post, self.config.endpoint, message, headers)
        try:
            while_waiting()
        except BaseException:
            wait_for([future])       # nothing on its way when the error goes up
            raise
        return future.result()

    def _receipts(self, operation: str, response) -> list[mapping.Receipt]:
        """The receipts of an answer. A plain, schema-valid answer (HTTP 200, one ``...Svar`` in the
        Body, no fault) is read with lxml; anything else (a fault, an HTTP error, XML that is not
        well-formed or not valid) goes through zeep's reading of the binding's reply, so it raises
        exactly what the classification expects (``Fault``, ``TransportError``, ...)."""
        fast = plain_answer(operation, response)
        if fast is not None:
            return mapping.receipts(fast)
        answer = self._binding.process_reply(self._zeep, self._binding.get(operation), response)
        return mapping.receipts(answer)

    def _message(self, operation: str, request: etree._Element, body: bytes) -> tuple[bytes, dict[str, str]]:
        """The envelope's bytes and the HTTP headers for one attempt. Without a WS-Security hook the
        envelope is written around the request's bytes (``body``) as they are; with one (token mode)
        it is an lxml envelope around a copy of the request, signed, then serialized."""
        soap = self._soap
        headers = {"SOAPAction": soap.actions[operation], "Content-Type": soap.content_type}
        blocks = self.auth.soap_headers()
        if self._wsse is None:
            return soap.envelope(body, [etree.tostring(b, encoding="UTF-8", with_tail=False) for b in blocks]), headers
        envelope = etree.Element(f"{{{soap.ns}}}Envelope", nsmap={soap.prefix: soap.ns})
        if blocks:
            header = etree.SubElement(envelope, f"{{{soap.ns}}}Header")
            header.extend(copy.deepcopy(b) for b in blocks)
        etree.SubElement(envelope, f"{{{soap.ns}}}Body").append(copy.deepcopy(request))
        envelope, headers = self._wsse.apply(envelope, headers)
        return etree.tostring(envelope, xml_declaration=True, encoding="utf-8"), headers


@dataclass(frozen=True)
class _SoapForm:
    """What the WSDL's binding says a request looks like on the wire: the envelope namespace (SOAP
    1.1), the Content-Type and each operation's SOAPAction header, as zeep sends them."""

    ns: str
    prefix: str
    content_type: str
    actions: dict[str, str]

    def envelope(self, body: bytes, header_blocks: list[bytes]) -> bytes:
        p = self.prefix.encode("ascii")
        head = (b"<%s:Header>%s</%s:Header>" % (p, b"".join(header_blocks), p)) if header_blocks else b""
        return b"".join((b"<?xml version='1.0' encoding='utf-8'?>\n<%s:Envelope xmlns:%s=\"%s\">" % (
            p, p, self.ns.encode("ascii")), head, b"<%s:Body>" % p, body, b"</%s:Body></%s:Envelope>" % (p, p)))


@dataclass(frozen=True)
class _Receipt:
    """One Kvittering as read from the answer (the attributes ``mapping.receipts`` reads)."""

    Noegle: str | None
    StatusKode: str | None
    DebitorReference: str | None
    FejlKode: str | None
    FejlTekst: str | None


@dataclass(frozen=True)
class _Svar:
    Kvittering: list[_Receipt]


_SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
_RECEIPT_FIELDS = tuple(_Receipt.__dataclass_fields__)


def plain_answer(operation: str, response) -> _Svar | None:
    """The answer's ``...Svar`` as ``mapping.receipts`` reads it, when the answer is plain: HTTP 200,
    an XML Content-Type, a well-formed SOAP 1.1 envelope (no DTD, no entities) whose Body holds
    exactly the operation's ``...Svar`` element, valid against the schema. None otherwise (the
    caller lets zeep read it, and raise)."""
    if response.status_code != 200 or "xml" not in str(response.headers.get("Content-Type", "text/xml")).lower():
        return None
    try:
        envelope = messages.parse_untrusted(response.content)
    except (messages.UnsafeXml, etree.XMLSyntaxError, ValueError):
        return None
    body = envelope.find(f"{{{_SOAP11_ENV}}}Body") if envelope.tag == f"{{{_SOAP11_ENV}}}Envelope" else None
    children = [] if body is None else [c for c in body if isinstance(c.tag, str)]
    if len(children) != 1 or children[0].tag != f"{{{mapping.NS_DR}}}{operation}Svar":
        return None
    svar = children[0]
    if not messages.schema(mapping.SCHEMAS[svar.tag]).validate(svar):
        return None
    fields = {f"{{{mapping.NS_F}}}{name}": name for name in _RECEIPT_FIELDS}
    receipts = []
    for item in svar.iterchildren(f"{{{mapping.NS_DR}}}Kvittering"):
        values = dict.fromkeys(_RECEIPT_FIELDS)
        for child in item.iterchildren(tag=etree.Element):
            name = fields.get(child.tag)
            if name is not None:
                values[name] = child.text
        receipts.append(_Receipt(**values))
    return _Svar(receipts)


def _binding_form(binding) -> _SoapForm:
    from zeep.wsdl.bindings.soap import Soap11Binding

    ns = binding.nsmap["soap-env"]
    actions = {name: f'"{op.soapaction or ""}"' for name, op in binding._operations.items()}
    if isinstance(binding, Soap11Binding):
        return _SoapForm(ns, "soap-env", "text/xml; charset=utf-8", actions)
    raise ConfigError(f"the WSDL binding {binding.name} is not SOAP 1.1, which this client writes")


def classify(exc: BaseException) -> tuple[bool, str]:
    """(transient?, a one-line reason without payload) for an exception from a call."""
    transient, _rejected, reason = _classify(exc)
    return transient, reason


def is_rejection(exc: BaseException) -> bool:
    """The receiver refused the message's content: a SOAP Client fault, or an HTTP 4xx other than
    408/429 and those that say the service was not reached as configured (``NOT_REACHED``)."""
    return _classify(exc)[1]


def _classify(exc: BaseException) -> tuple[bool, bool, str]:
    """(transient?, rejected?, reason)."""
    import requests
    from zeep.exceptions import Fault, TransportError, XMLSyntaxError

    if isinstance(exc, requests.exceptions.SSLError):
        return False, False, f"TLS failure ({_first_line(exc)})"
    if isinstance(exc, requests.exceptions.Timeout):
        return True, False, f"timeout ({type(exc).__name__})"
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return True, False, "connection failed or dropped"
    if isinstance(exc, Fault):
        code = (exc.code or "").rsplit(":", 1)[-1]
        # A Server fault (also a dotted SOAP 1.1 subcode, Server.Busy) is the receiver's trouble
        # (retry); a Client fault (SOAP 1.2: Sender) is the message's: refused.
        kind = code.split(".", 1)[0]
        return (kind == "Server", kind in ("Client", "Sender"),
                f"SOAP fault {code or '?'}: {_first_line(exc.message)[:200]}")
    if isinstance(exc, TransportError):
        status = getattr(exc, "status_code", 0) or 0
        if status == 200:   # an answer that is not SOAP (cut off, or a proxy's page): ask again, by key
            return True, False, "HTTP 200 without a SOAP answer"
        transient = status >= 500 or status in TRANSIENT_4XX
        rejected = 400 <= status < 500 and status not in TRANSIENT_4XX | NOT_REACHED
        return (transient, rejected, f"HTTP {status}"
                + (" (the request was refused)" if rejected else "")
                + (" (the service was not reached as configured: check the connection)" if status in NOT_REACHED
                   else ""))
    if isinstance(exc, XMLSyntaxError):
        return True, False, "the answer was not well-formed XML"
    return False, False, f"{type(exc).__name__}: {_first_line(exc)[:200]}"


def _first_line(value) -> str:
    """The first line of a receiver's or library's text, safe for a log: quoted values dropped (a
    schema-validation fault quotes the offending value), any CPR number masked and any URL's user
    part removed."""
    line = str(value).strip().splitlines()[0] if str(value).strip() else ""
    return mask_cprs_in(redact_urls(re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", line)))
