"""The Serviceplatformen SOAP client (SF1590 DebitorRegistreringAfsend) against the debtor-system
emulator over real HTTP(S) on loopback: configuration from the Airflow connection, the
InvocationContext header, receipts, explicit timeouts, retries with backoff only where they are
safe, idempotent retries, mutual TLS, and no payload in the logs."""

from __future__ import annotations

import json
import logging
import threading
from urllib.parse import urlsplit

import fbs_rows as fr
import pytest
import requests
from certs import certificates
from claim_rows import REPLACEMENT_FID, batch_root
from debtor import UUIDS, connection_extra, connection_json
from leaks import full_cpr_numbers
from lxml import etree
from zeep.exceptions import Fault, TransportError

from fbs_debitor.claims import messages
from fbs_debitor.claims import sf1590 as mapping
from fbs_debitor.claims.sf1590 import NS_IC
from fbs_debitor.delivery import serviceplatformen
from fbs_debitor.sandbox import emulator

FIDS = {"FBS-715100-1", REPLACEMENT_FID, "FBS-715100-4"}
PROD = "https://prod.serviceplatformen.dk/service/OIR/DebitorRegistreringAfsend/1"


class Recorder:
    """Stands in for time.sleep: keeps the delays, waits for nothing."""

    def __init__(self):
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def certs(tmp_path) -> dict[str, str]:
    """Client certificate and key files for configurations that are only built, never connected
    (https needs them: Serviceplatformen is mutual TLS)."""
    paths = {"client_cert": tmp_path / "client.crt", "client_key": tmp_path / "client.key"}
    for path in paths.values():
        path.write_text("not read when only the configuration is built")
    return {k: str(v) for k, v in paths.items()}


def make_client(url: str, sleep=None, auth=None, **over) -> serviceplatformen.Client:
    config = serviceplatformen.config_from_connection(url, None, None, connection_extra(**over))
    return serviceplatformen.Client(config, auth=auth, sleep=sleep or Recorder())


def by_key(answer: serviceplatformen.Answer) -> dict[str, mapping.Receipt]:
    return {r.key: r for r in answer.receipts}


def wait_for_emulator_threads() -> None:
    """Let request threads still working (a slow fault outlives the client's timeout) finish, so
    they neither touch a stopped emulator nor log into a later test."""
    for t in threading.enumerate():
        if "process_request_thread" in t.name:
            t.join(timeout=15)


# --- 1. configuration from the Airflow connection -------------------------------------------------

def test_config_from_connection_host_as_full_url_gives_typed_values(certs):
    config = serviceplatformen.config_from_connection(PROD, None, None, connection_extra(
        connect_timeout=2, operation_timeout="7.5", max_attempts="3", backoff_seconds=1, **certs))
    assert config.endpoint == PROD
    assert config.service_agreement_uuid == UUIDS["service_agreement_uuid"]
    assert config.service_uuid == serviceplatformen.SERVICE_UUID       # SF1590_B_01 by default
    assert config.auth == "invocation_context"
    # timeouts and backoff are floats, attempts an int, whatever JSON type the connection used
    assert (config.connect_timeout, config.operation_timeout, config.backoff_seconds) == (2.0, 7.5, 1.0)
    assert all(isinstance(v, float) for v in (config.connect_timeout, config.operation_timeout,
                                              config.backoff_seconds))
    assert config.max_attempts == 3 and isinstance(config.max_attempts, int)


def test_config_from_connection_builds_https_endpoint_from_host_port_schema(certs):
    config = serviceplatformen.config_from_connection(
        "prod.serviceplatformen.dk", 443, "/service/OIR/DebitorRegistreringAfsend/1", connection_extra(**certs), "http")
    # conn_type http to a non-loopback host still gives https: plain http is for the emulator only
    assert config.endpoint == "https://prod.serviceplatformen.dk:443/service/OIR/DebitorRegistreringAfsend/1"
    config = serviceplatformen.config_from_connection("prod.serviceplatformen.dk", None, "service/x",
                                                      connection_extra(**certs))
    assert config.endpoint == "https://prod.serviceplatformen.dk/service/x"
    # extra.endpoint wins over host
    config = serviceplatformen.config_from_connection("ignored.example", 1, "x", connection_extra(endpoint=PROD,
                                                                                                   **certs))
    assert config.endpoint == PROD


def test_config_from_host_port_schema_reaches_the_loopback_emulator_over_plain_http(emu_db):
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        parts = urlsplit(emu.url)
        config = serviceplatformen.config_from_connection(parts.hostname, parts.port, parts.path,
                                                          connection_extra(), "http")
        assert config.endpoint == emu.url
        with serviceplatformen.Client(config, sleep=Recorder()) as client:
            answer = client.call(batch_root())
    assert set(by_key(answer)) == FIDS


def test_config_from_env_reads_the_airflow_connection_json_with_extra_as_dict_or_string(certs):
    environ = {serviceplatformen.ENV_VAR: connection_json(PROD, max_attempts=2, **certs)}
    config = serviceplatformen.config_from_env(environ)
    assert config.endpoint == PROD and config.max_attempts == 2 and config.connect_timeout == 2.0
    # Airflow also writes extra as a JSON string inside the JSON
    as_string = {"conn_type": "http", "host": PROD, "extra": json.dumps(connection_extra(operation_timeout=9, **certs))}
    config = serviceplatformen.config_from_env({serviceplatformen.ENV_VAR: json.dumps(as_string)})
    assert config.endpoint == PROD and config.operation_timeout == 9.0
    # host + port + schema in the JSON form too
    split = {"conn_type": "http", "host": "sp.example", "port": 8443, "schema": "service/y",
             "extra": connection_extra(**certs)}
    config = serviceplatformen.config_from_env({serviceplatformen.ENV_VAR: json.dumps(split)})
    assert config.endpoint == "https://sp.example:8443/service/y"


def test_config_from_env_without_or_with_broken_connection_says_so():
    with pytest.raises(serviceplatformen.ConfigError, match=serviceplatformen.ENV_VAR):
        serviceplatformen.config_from_env({})
    with pytest.raises(serviceplatformen.ConfigError, match="JSON"):
        serviceplatformen.config_from_env({serviceplatformen.ENV_VAR: "{not json"})


def _without(key: str) -> dict:
    extra = connection_extra()
    del extra[key]
    return extra


@pytest.mark.parametrize("host, extra, names", [
    pytest.param(PROD, _without("user_uuid"), "user_uuid", id="missing-user-uuid"),
    pytest.param(PROD, _without("service_agreement_uuid"), "service_agreement_uuid", id="missing-agreement-uuid"),
    pytest.param(PROD, connection_extra(user_system_uuid="not-a-uuid"), "user_system_uuid must be a UUID",
                 id="non-uuid"),
    pytest.param(PROD, connection_extra(service_uuid="e354a6d1"), "service_uuid must be a UUID",
                 id="non-uuid-service"),
    pytest.param(PROD, connection_extra(proxy="http://proxy.example"), "unknown extra field(s) ['proxy']",
                 id="unknown-extra"),
    pytest.param("http://debitor.kommune.example/service", connection_extra(), "plain http",
                 id="plain-http-non-loopback"),
    pytest.param("ftp://sp.example/x", connection_extra(), "https:// URL", id="not-http"),
    pytest.param(None, connection_extra(), "no endpoint", id="no-host"),
    pytest.param(PROD, connection_extra(auth="basic"), "auth must be one of invocation_context, saml",
                 id="unknown-auth"),
    pytest.param(PROD, connection_extra(connect_timeout=0), "connect_timeout 0 is outside its allowed range "
                 "0.1-600 seconds", id="zero-connect-timeout"),
    pytest.param(PROD, connection_extra(operation_timeout=-1), "operation_timeout -1 is outside its allowed range "
                 "0.1-600 seconds", id="negative-operation-timeout"),
    pytest.param(PROD, connection_extra(operation_timeout="nan"), "operation_timeout nan is outside its allowed "
                 "range 0.1-600 seconds", id="nan-operation-timeout"),
    pytest.param(PROD, connection_extra(connect_timeout="inf"), "connect_timeout inf is outside its allowed range "
                 "0.1-600 seconds", id="infinite-connect-timeout"),
    pytest.param(PROD, connection_extra(connect_timeout="abc"), "connect_timeout must be a number of seconds",
                 id="text-connect-timeout"),
    pytest.param(PROD, connection_extra(backoff_seconds=-1), "backoff_seconds -1 is outside its allowed range "
                 "0-300 seconds", id="negative-backoff"),
    pytest.param(PROD, connection_extra(max_attempts=0), "max_attempts 0 is outside its allowed range 1-10",
                 id="no-attempts"),
    pytest.param(PROD, connection_extra(max_attempts=2.5), "max_attempts must be a whole number",
                 id="fractional-attempts"),
])
def test_config_errors_name_the_field(host, extra, names):
    with pytest.raises(serviceplatformen.ConfigError) as err:
        serviceplatformen.config_from_connection(host, None, None, extra)
    assert names in str(err.value)
    assert "'serviceplatformen'" in str(err.value)          # and the connection


def test_uuids_in_other_spellings_are_kept_in_the_form_the_InvocationContext_schema_accepts(certs):
    extra = connection_extra(user_uuid="33333333333341118111333333333333",
                             service_agreement_uuid="{11111111-1111-4111-8111-111111111111}",
                             user_system_uuid="urn:uuid:22222222-2222-4222-8222-222222222222", **certs)
    config = serviceplatformen.config_from_connection(PROD, None, None, extra)
    assert config.user_uuid == "33333333-3333-4111-8111-333333333333"
    assert config.service_agreement_uuid == "11111111-1111-4111-8111-111111111111"
    assert messages.schema("InvocationContext.xsd").validate(serviceplatformen.invocation_context(config))


def test_broken_connection_json_shapes_are_config_errors():
    for raw in ('[1]', json.dumps({"host": PROD, "extra": "{broken"}), json.dumps({"host": PROD, "extra": [1]})):
        with pytest.raises(serviceplatformen.ConfigError):
            serviceplatformen.config_from_env({serviceplatformen.ENV_VAR: raw})


def test_host_port_and_scheme_forms_of_the_connection(certs):
    https = serviceplatformen.config_from_connection("exttest.serviceplatformen.dk", 443, "https",
                                                     connection_extra(**certs))
    assert https.endpoint == "https://exttest.serviceplatformen.dk:443/service/OIR/DebitorRegistreringAfsend/1"
    v6 = serviceplatformen.config_from_connection("::1", 8590, None, connection_extra(), conn_type="http")
    assert v6.endpoint == "http://[::1]:8590/service/OIR/DebitorRegistreringAfsend/1"


def test_config_errors_for_certificate_files_name_the_field(tmp_path):
    key = tmp_path / "client.key"
    key.write_text("not checked here")
    with pytest.raises(serviceplatformen.ConfigError, match="client_cert and client_key go together"):
        serviceplatformen.config_from_connection(PROD, None, None, connection_extra(client_cert=str(key)))
    missing = str(tmp_path / "nowhere.crt")
    with pytest.raises(serviceplatformen.ConfigError, match="client_cert .*nowhere.crt.* is not a readable file"):
        serviceplatformen.config_from_connection(PROD, None, None, connection_extra(
            client_cert=missing, client_key=str(key)))
    with pytest.raises(serviceplatformen.ConfigError, match="ca_bundle .* is not a readable file"):
        serviceplatformen.config_from_connection(PROD, None, None, connection_extra(ca_bundle=str(tmp_path)))


def test_issue17_token_mode_needs_its_sts_and_municipality_and_not_the_uuids(certs):
    """Token mode (auth 'saml'): the STS endpoint is required and checked like the endpoint, the
    InvocationContext UUIDs are not needed, and a token is asked for one municipality only."""
    with pytest.raises(serviceplatformen.ConfigError, match="auth 'saml' needs sts_endpoint"):
        serviceplatformen.config_from_connection(PROD, None, None, connection_extra(auth="saml", **certs))
    with pytest.raises(serviceplatformen.ConfigError, match="endpoint.*https"):
        serviceplatformen.config_from_connection(PROD, None, None, connection_extra(
            auth="saml", sts_endpoint="http://sts.example/issue", **certs))
    with pytest.raises(serviceplatformen.ConfigError, match="token_renew_before 4000 is outside"):
        serviceplatformen.config_from_connection(PROD, None, None, connection_extra(
            auth="saml", sts_endpoint="https://sts.example/issue", token_renew_before=4000, **certs))
    config = serviceplatformen.config_from_connection(PROD, None, None, {
        "auth": "saml", "sts_endpoint": "https://sts.example/runtime/api/rest/wstrust/v1/issue", **certs})
    assert config.auth == "saml" and config.service_agreement_uuid == ""
    with pytest.raises(serviceplatformen.ConfigError, match="municipality_cvr"):
        serviceplatformen.make_auth(config)               # a token is always asked for one municipality
    default = serviceplatformen.make_auth(serviceplatformen.config_from_connection(PROD, None, None,
                                                                                   connection_extra(**certs)))
    assert isinstance(default, serviceplatformen.InvocationContextAuth) and default.name == "invocation_context"


# --- 2. the InvocationContext header --------------------------------------------------------------

def test_invocation_context_is_schema_valid_and_carries_the_four_uuids_lower_cased(certs):
    upper = {k: v.upper() for k, v in {**UUIDS, "user_uuid": "abcdef12-3456-4abc-8def-abcdef123456"}.items()}
    config = serviceplatformen.config_from_connection(PROD, None, None, connection_extra(
        **upper, service_uuid=serviceplatformen.SERVICE_UUID.upper(), **certs))
    header = serviceplatformen.invocation_context(config)
    xsd = messages.schema("InvocationContext.xsd")
    assert xsd.validate(header), xsd.error_log
    assert header.tag == f"{{{NS_IC}}}InvocationContext"
    values = {etree.QName(c).localname: c.text for c in header}
    assert values == {"ServiceAgreementUUID": UUIDS["service_agreement_uuid"],
                      "UserSystemUUID": UUIDS["user_system_uuid"],
                      "UserUUID": "abcdef12-3456-4abc-8def-abcdef123456",
                      "ServiceUUID": serviceplatformen.SERVICE_UUID}
    # the schema really checks: a header without ServiceUUID is not valid
    header.remove(header.find(f"{{{NS_IC}}}ServiceUUID"))
    assert not xsd.validate(header)


def test_invocation_context_with_on_behalf_of_stays_schema_valid(certs):
    config = serviceplatformen.Config(endpoint=PROD, on_behalf_of="CN=Sagsbehandler", **UUIDS, **certs)
    header = serviceplatformen.invocation_context(config)
    assert messages.schema("InvocationContext.xsd").validate(header)
    assert header.findtext(f"{{{NS_IC}}}OnBehalfOfUser") == "CN=Sagsbehandler"


def test_the_emulator_receives_the_invocation_context_header(emu_db, caplog):
    caplog.set_level(logging.DEBUG, logger="fbs_debitor.sandbox.emulator")
    upper = {k: v.upper() for k, v in {**UUIDS, "user_uuid": "abcdef12-3456-4abc-8def-abcdef123456"}.items()}
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, make_client(emu.url, **upper) as client:
        answer = client.call(batch_root())
    assert set(by_key(answer)) == FIDS     # the emulator answers only requests carrying the header
    # what went over the wire, as the emulator logged it (masked)
    (payload,) = [r.getMessage().split(": ", 1)[1] for r in caplog.records
                  if r.getMessage().startswith("request payload (masked)")]
    ic = etree.fromstring(payload.encode("utf-8")).find(f".//{{{NS_IC}}}InvocationContext")
    assert ic is not None
    assert {etree.QName(c).localname: c.text for c in ic} == {
        "ServiceAgreementUUID": UUIDS["service_agreement_uuid"], "UserSystemUUID": UUIDS["user_system_uuid"],
        "UserUUID": "abcdef12-3456-4abc-8def-abcdef123456", "ServiceUUID": serviceplatformen.SERVICE_UUID}
    assert messages.schema("InvocationContext.xsd").validate(ic)


class NoHeaderAuth:
    """An Auth that sends no header blocks: the receiver must refuse it as a Client fault."""

    name = "none"

    def prepare(self, session) -> None:
        pass

    def soap_headers(self) -> list:
        return []


def test_without_invocation_context_the_call_gets_a_client_fault_that_is_not_retried(emu_db):
    attempts, sleep = [], Recorder()
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, \
            make_client(emu.url, sleep=sleep, auth=NoHeaderAuth(), max_attempts=4) as client:
        with pytest.raises(serviceplatformen.DeliveryError) as err:
            client.call(batch_root(), on_attempt=attempts.append)
        assert emu.request_count == 1
    assert err.value.transient is False and err.value.attempts == 1
    assert "SOAP fault Client" in str(err.value) and "InvocationContext" in str(err.value)
    assert attempts == [1] and sleep.delays == []
    assert emulator.claims(emu_db) == []


# --- 3. a normal call -----------------------------------------------------------------------------

def test_a_call_to_prisme_returns_receipts_per_fordring_id(emu_db):
    attempts = []
    with emulator.Emulator("PRISME", emu_db) as emu, make_client(emu.url) as client:
        answer = client.call(batch_root(), on_attempt=attempts.append)
    assert isinstance(answer, serviceplatformen.Answer)
    assert all(isinstance(r, mapping.Receipt) for r in answer.receipts)
    got = by_key(answer)
    assert set(got) == FIDS
    assert got["FBS-715100-1"].accepted and got["FBS-715100-1"].debtor_ref.startswith("PRISME-")
    assert got["FBS-715100-1"].error_code is None
    # I3: PRISME rejects a claim on a replacement CPR
    assert not got[REPLACEMENT_FID].accepted and got[REPLACEMENT_FID].debtor_ref is None
    assert got[REPLACEMENT_FID].error_code == "I3_ERSTATNINGS_CPR" and got[REPLACEMENT_FID].error_text
    assert answer.attempts == 1 and attempts == [1]
    stored = {c["fordring_id"]: c["debitor_reference"] for c in emulator.claims(emu_db)}
    assert stored == {"FBS-715100-1": got["FBS-715100-1"].debtor_ref,
                      "FBS-715100-4": got["FBS-715100-4"].debtor_ref}


def test_call_refuses_an_element_that_is_not_an_sf1590_request(emu_db):
    with emulator.Emulator("PRISME", emu_db) as emu, make_client(emu.url) as client:
        with pytest.raises(ValueError, match="not an SF1590 request"):
            client.call(etree.Element("{urn:x}Noget"))
        assert emu.request_count == 0


# --- 4. explicit timeouts -------------------------------------------------------------------------

@pytest.mark.slow
def test_operation_timeout_is_explicit_and_a_timeout_is_transient(emu_db):
    attempts, sleep = [], Recorder()
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=1.0, fault_kinds=("slow",), slow_seconds=2) as emu:
        with make_client(emu.url, sleep=sleep, operation_timeout=0.5, max_attempts=2,
                         backoff_seconds=0.25) as client:
            with pytest.raises(serviceplatformen.DeliveryError) as err:
                client.call(batch_root(), on_attempt=attempts.append)
        assert emu.faults == {"slow": 2}
        wait_for_emulator_threads()
    assert err.value.transient is True and err.value.attempts == 2
    assert "timeout" in str(err.value) and "attempt 2 of 2" in str(err.value)
    assert attempts == [1, 2] and sleep.delays == [0.25]
    # the receiver may still process a request the client gave up on: why retries must be idempotent
    assert {c["fordring_id"] for c in emulator.claims(emu_db)} == FIDS


# --- 5. retries -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, reason", [("http503", "HTTP 503"), ("http500", "HTTP 500"),
                                          ("soapfault", "SOAP fault Server"),
                                          ("drop", "connection failed or dropped")])
def test_transient_failures_are_retried_with_exponential_backoff(emu_db, kind, reason):
    attempts, sleep = [], Recorder()
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=1.0, fault_kinds=(kind,)) as emu:
        with make_client(emu.url, sleep=sleep, max_attempts=4, backoff_seconds=0.5) as client:
            with pytest.raises(serviceplatformen.DeliveryError) as err:
                client.call(batch_root(), on_attempt=attempts.append)
        assert emu.request_count == 4 and emu.faults == {kind: 4}
    assert err.value.transient is True and err.value.attempts == 4
    assert reason in str(err.value) and "attempt 4 of 4" in str(err.value)
    assert attempts == [1, 2, 3, 4]
    assert sleep.delays == [0.5, 1.0, 2.0]             # backoff * 1, * 2, * 4; none after the last attempt
    assert emulator.claims(emu_db) == []


def test_a_retry_that_succeeds_returns_the_attempt_count(emu_db):
    attempts, sleep = [], Recorder()
    # seed 1 at rate 0.5: the first two requests fail, the third is answered (checked below)
    with emulator.Emulator("EG", emu_db, fault_rate=0.5, fault_kinds=("http503",), seed=1) as emu:
        with make_client(emu.url, sleep=sleep, max_attempts=4, backoff_seconds=0.5) as client:
            answer = client.call(batch_root(), on_attempt=attempts.append)
        faults = emu.faults.get("http503", 0)
    assert faults >= 1, "the seed must make at least one attempt fail"
    assert answer.attempts == faults + 1 and attempts == list(range(1, faults + 2))
    assert sleep.delays == [0.5 * 2 ** i for i in range(faults)]
    assert set(by_key(answer)) == FIDS


def test_only_idempotent_operations_are_retried(emu_db, monkeypatch):
    monkeypatch.setattr(serviceplatformen, "IDEMPOTENT", frozenset())
    attempts, sleep = [], Recorder()
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=1.0, fault_kinds=("http503",)) as emu:
        with make_client(emu.url, sleep=sleep, max_attempts=4) as client:
            with pytest.raises(serviceplatformen.DeliveryError) as err:
                client.call(batch_root(), on_attempt=attempts.append)
        assert emu.request_count == 1
    assert err.value.transient is True and err.value.attempts == 1 and "attempt 1 of 1" in str(err.value)
    assert attempts == [1] and sleep.delays == []


@pytest.mark.parametrize("exc, transient, reason", [
    (Fault(message="x", code="soap:Client"), False, "SOAP fault Client: x"),
    (Fault(message="midlertidig fejl", code="soap:Server"), True, "SOAP fault Server: midlertidig fejl"),
    (Fault(message="y", code="SOAP-ENV:Server"), True, "SOAP fault Server"),
    (Fault(message="z", code=None), False, "SOAP fault ?"),
    (Fault(message="busy", code="soap:Server.Busy"), True, "SOAP fault Server.Busy"),
    (TransportError("not soap", status_code=200), True, "HTTP 200 without a SOAP answer"),
    (TransportError("unavailable", status_code=503), True, "HTTP 503"),
    (TransportError("boom", status_code=500), True, "HTTP 500"),
    (TransportError("throttled", status_code=429), True, "HTTP 429"),
    (TransportError("bad request", status_code=400), False, "HTTP 400"),
    (TransportError("forbidden", status_code=403), False, "HTTP 403"),
    (requests.exceptions.SSLError("certificate verify failed"), False, "TLS failure"),
    (requests.exceptions.ReadTimeout("read timed out"), True, "timeout (ReadTimeout)"),
    (requests.exceptions.ConnectTimeout("connect timed out"), True, "timeout (ConnectTimeout)"),
    (requests.exceptions.ConnectionError("reset"), True, "connection failed or dropped"),
    (ValueError("unknown StatusKode"), False, "ValueError: unknown StatusKode"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_classify_retries_only_what_a_repeat_can_fix(exc, transient, reason):
    got = serviceplatformen.classify(exc)
    assert got[0] is transient
    assert reason in got[1]


def test_classify_never_puts_a_payload_into_the_reason():
    cpr_fault = Fault(message=f"line one\nrequest held {fr.ADULT_CPR}", code="soap:Server")
    assert fr.ADULT_CPR not in serviceplatformen.classify(cpr_fault)[1]
    body = f"<soap:Envelope>{fr.ADULT_CPR}</soap:Envelope>".encode()
    transport = TransportError(f"Server returned invalid XML. Content: {body!r}", status_code=502, content=body)
    assert serviceplatformen.classify(transport) == (True, "HTTP 502")
    # a receiver's schema fault on its first line quotes the value: masked, quoted values dropped
    quoting = Fault(message=f"cvc-pattern-valid: Value '{fr.ADULT_CPR}' is not facet-valid; cpr {fr.ADULT_CPR}",
                    code="soap:Server")
    reason = serviceplatformen.classify(quoting)[1]
    assert fr.ADULT_CPR not in reason and full_cpr_numbers(reason) == [] and "070781-****" in reason


def test_a_receipt_with_an_unknown_status_is_left_unconfirmed_the_others_count():
    from types import SimpleNamespace as K

    answer = K(Kvittering=[K(Noegle="FBS-1-1", StatusKode="MODTAGET", DebitorReference="R1", FejlKode=None,
                             FejlTekst=None),
                           K(Noegle="FBS-1-2", StatusKode="UNDER_BEHANDLING", DebitorReference=None, FejlKode=None,
                             FejlTekst=None),
                           K(Noegle="FBS-1-3", StatusKode="AFVIST", DebitorReference=None, FejlKode="M3_X",
                             FejlTekst="nej")])
    got = mapping.receipts(answer)
    assert [(r.key, r.accepted) for r in got] == [("FBS-1-1", True), ("FBS-1-3", False)]


# --- 6. idempotent retries cannot duplicate claims ------------------------------------------------

@pytest.mark.slow
def test_seeded_faults_with_retries_end_in_receipts_and_each_claim_once(emu_db):
    answers = []
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=0.5, fault_kinds=("http500", "drop", "soapfault"),
                           seed=3) as emu:
        with make_client(emu.url, max_attempts=8) as client:
            for _ in range(13):
                answers.append(client.call(batch_root()))
        faults = dict(emu.faults)
    # seed 3 injects each kind within these calls; otherwise this would prove little
    assert set(faults) == {"http500", "drop", "soapfault"}, faults
    assert sum(a.attempts for a in answers) == 13 + sum(faults.values())   # every fault cost one retry
    assert any(a.attempts > 1 for a in answers)
    first = by_key(answers[0])
    assert set(first) == FIDS and all(r.accepted for r in first.values())
    assert all(by_key(a) == first for a in answers)          # repeats get the first answers
    stored = [c["fordring_id"] for c in emulator.claims(emu_db)]
    assert sorted(stored) == sorted(FIDS) and len(stored) == len(set(stored))


@pytest.mark.slow
def test_a_retry_after_a_lost_answer_gets_the_first_answer(emu_db):
    """drop_after_store: the receiver stored the claims but the answer was lost; the retry must
    not create them again."""
    with emulator.Emulator("PRISME", emu_db, fault_rate=1.0, fault_kinds=("drop_after_store",)) as emu:
        with make_client(emu.url, max_attempts=2) as client:
            with pytest.raises(serviceplatformen.DeliveryError) as err:
                client.call(batch_root())
    assert err.value.transient and err.value.attempts == 2
    assert sorted(c["fordring_id"] for c in emulator.claims(emu_db)) == ["FBS-715100-1", "FBS-715100-4"]
    with emulator.Emulator("PRISME", emu_db) as emu, make_client(emu.url) as client:
        got = by_key(client.call(batch_root()))
    assert got["FBS-715100-1"].accepted and got[REPLACEMENT_FID].error_code == "I3_ERSTATNINGS_CPR"
    assert len(emulator.claims(emu_db)) == 2


# --- 7. mutual TLS --------------------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path):
    return certificates(tmp_path)


def test_mutual_tls_with_the_right_client_certificate_gets_receipts(emu_db, pki):
    server = emulator.tls_context(pki["server_cert"], pki["server_key"], client_ca=pki["ca_cert"])
    with emulator.Emulator("EG", emu_db, tls=server) as emu:
        assert emu.url.startswith("https://127.0.0.1:")
        with make_client(emu.url, client_cert=pki["client_cert"], client_key=pki["client_key"],
                         ca_bundle=pki["ca_cert"]) as client:
            answer = client.call(batch_root())
    got = by_key(answer)
    assert set(got) == FIDS and all(r.accepted and r.debtor_ref.startswith("EG-") for r in got.values())
    assert answer.attempts == 1


@pytest.mark.parametrize("label", [None, "rogue"], ids=["no-client-cert", "rogue-client-cert"])
def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(emu_db, pki, label):
    server = emulator.tls_context(pki["server_cert"], pki["server_key"], client_ca=pki["ca_cert"])
    certs = {"client_cert": pki[f"{label}_cert"], "client_key": pki[f"{label}_key"]} if label else {}
    with emulator.Emulator("EG", emu_db, tls=server) as emu:
        with make_client(emu.url, ca_bundle=pki["ca_cert"], max_attempts=2, **certs) as client:
            with pytest.raises(serviceplatformen.DeliveryError) as err:
                client.call(batch_root())
    assert 1 <= err.value.attempts <= 2
    assert emulator.claims(emu_db) == []            # nothing reached the debtor system


def test_a_client_refuses_a_server_its_ca_bundle_does_not_trust(emu_db, pki):
    server = emulator.tls_context(pki["server_cert"], pki["server_key"], client_ca=pki["ca_cert"])
    attempts = []
    with emulator.Emulator("EG", emu_db, tls=server) as emu:
        # no ca_bundle: the system CAs, which do not know the test CA
        with make_client(emu.url, client_cert=pki["client_cert"], client_key=pki["client_key"],
                         max_attempts=4) as client:
            with pytest.raises(serviceplatformen.DeliveryError) as err:
                client.call(batch_root(), on_attempt=attempts.append)
        assert emu.request_count == 0
    assert err.value.transient is False and err.value.attempts == 1 and attempts == [1]
    assert "TLS" in str(err.value)
    assert emulator.claims(emu_db) == []


# --- 8. no payload in the logs --------------------------------------------------------------------

def test_a_call_logs_no_payload_and_no_full_cpr_at_debug(emu_db, caplog):
    caplog.set_level(logging.DEBUG)
    # seed 1: two Server faults first, so the retry warnings are in the log too
    with emulator.Emulator("PRISME", emu_db, fault_rate=0.5, fault_kinds=("soapfault",), seed=1) as emu:
        with make_client(emu.url, max_attempts=8) as client:
            answer = client.call(batch_root())
    assert set(by_key(answer)) == FIDS and answer.attempts > 1
    assert any(r.levelno == logging.WARNING and r.name == serviceplatformen.__name__ for r in caplog.records)
    # DEBUG really reached the libraries under the client (urllib3 logs each request at DEBUG)
    assert any(r.name.startswith("urllib3") and r.levelno == logging.DEBUG for r in caplog.records)
    assert full_cpr_numbers(caplog.text) == []
    assert fr.ADULT_CPR not in caplog.text and fr.ADULT2_CPR not in caplog.text
    # the emulator logs its (masked) payload by design; nothing on the client's side logs any envelope
    client_side = [r for r in caplog.records if not r.name.startswith("fbs_debitor.sandbox.emulator")]
    assert client_side
    for record in client_side:
        text = record.getMessage()
        assert "<soap" not in text and "Envelope" not in text and "Debitorkonto>" not in text, record.name
    assert not [r for r in caplog.records if r.name == "zeep.transports" and "HTTP Post" in r.getMessage()]


# --- 9. issue 16: credentials, mutual TLS, bounds, rejections --------------------------------------

SECRET = "S3cret-pw"


@pytest.mark.parametrize("host", [f"https://fbs:{SECRET}@prod.serviceplatformen.dk/service/x",
                                  f"http://fbs:{SECRET}@127.0.0.1:8590/service/x", f"https://{SECRET}@sp.example/"])
def test_item8_a_password_in_the_endpoint_url_is_refused_without_echoing_it(host, certs, caplog):
    """Issue 16 item 8: a password in the endpoint URL was accepted (and then logged at WARNING and
    stored in outbox.last_error). It is refused at configuration; the error does not echo it."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(serviceplatformen.ConfigError) as err:
        serviceplatformen.config_from_connection(host, None, None, connection_extra(**certs))
    assert "user:password@" in str(err.value) and "'serviceplatformen'" in str(err.value)
    with pytest.raises(serviceplatformen.ConfigError) as from_env:
        serviceplatformen.config_from_env({serviceplatformen.ENV_VAR: connection_json(host, **certs)})
    assert SECRET not in str(err.value) + str(from_env.value) + caplog.text


def test_item8_a_login_or_password_on_the_connection_is_refused_without_echoing_it(certs):
    """Issue 16 item 8: Serviceplatformen authenticates the client certificate; a password on the
    connection (Airflow's login/password fields) is refused, not silently ignored."""
    for fields in ({"login": "fbs", "password": SECRET}, {"password": SECRET}):
        with pytest.raises(serviceplatformen.ConfigError, match="login and password are not used") as err:
            serviceplatformen.config_from_connection(PROD, None, None, connection_extra(**certs), **fields)
        assert SECRET not in str(err.value)
        raw = json.dumps({"conn_type": "http", "host": PROD, "extra": connection_extra(**certs), **fields})
        with pytest.raises(serviceplatformen.ConfigError) as err:
            serviceplatformen.config_from_env({serviceplatformen.ENV_VAR: raw})
        assert SECRET not in str(err.value)


def test_item8_urls_in_delivery_errors_and_reasons_lose_their_user_part():
    """Issue 16 item 8: outbox.last_error stores the DeliveryError text and the outbox logs it at
    WARNING: no URL in either keeps its user:password@."""
    error = serviceplatformen.DeliveryError(f"OpretDebitorkonto to https://fbs:{SECRET}@sp.example/x: HTTP 503",
                                            True, 1)
    assert SECRET not in str(error) and "https://***@sp.example/x" in str(error)
    reason = serviceplatformen.classify(requests.exceptions.InvalidURL(
        f"Failed to parse: http://fbs:{SECRET}@sp.example:port/x"))[1]
    assert SECRET not in reason and "http://***@sp.example" in reason


def test_item8_https_without_a_client_certificate_is_refused(certs):
    """Issue 16 item 8: https without a client certificate was accepted; Serviceplatformen is
    mutual TLS. Like plain http, it stays allowed to a loopback address only (the local emulator, a
    local TLS proxy holding the certificate)."""
    for host in (PROD, "https://exttest.serviceplatformen.dk/service/x", "https://10.0.0.8/service/x"):
        with pytest.raises(serviceplatformen.ConfigError, match="https needs the client certificate.*mutual TLS"):
            serviceplatformen.config_from_connection(host, None, None, connection_extra())
    assert serviceplatformen.config_from_connection(PROD, None, None, connection_extra(**certs)).client_cert
    for loopback in ("https://127.0.0.1:8590/x", "https://localhost:8590/x", "http://[::1]:8590/x"):
        assert serviceplatformen.config_from_connection(loopback, None, None, connection_extra()).endpoint


@pytest.mark.parametrize("field, value, message", [
    ("max_attempts", 1e9, "max_attempts 1e+09 is outside its allowed range 1-10"),
    ("max_attempts", 11, "max_attempts 11 is outside its allowed range 1-10"),
    ("backoff_seconds", 1e9, "backoff_seconds 1e+09 is outside its allowed range 0-300 seconds"),
    ("connect_timeout", 1e9, "connect_timeout 1e+09 is outside its allowed range 0.1-600 seconds"),
    ("operation_timeout", 601, "operation_timeout 601 is outside its allowed range 0.1-600 seconds"),
    ("operation_timeout", 0.05, "operation_timeout 0.05 is outside its allowed range 0.1-600 seconds"),
])
def test_item8_attempts_backoff_and_timeouts_have_upper_bounds(field, value, message, certs):
    """Issue 16 item 8: max_attempts and backoff_seconds of 1e9 were accepted (a call that waits for
    ever); each field has a range, and the error names the field and the range."""
    with pytest.raises(serviceplatformen.ConfigError) as err:
        serviceplatformen.config_from_connection(PROD, None, None, connection_extra(**{field: value}, **certs))
    assert message in str(err.value)


def test_item8_the_retries_waits_together_are_bounded(certs):
    """Issue 16 item 8: ten attempts with a 300 s backoff would wait 153,300 s in one call: the waits
    between the attempts of a call may add up to 600 s at most (both fields named)."""
    with pytest.raises(serviceplatformen.ConfigError, match=r"max_attempts 10 with backoff_seconds 2 wait 1022 "
                                                            r"seconds.*at most 600"):
        serviceplatformen.config_from_connection(PROD, None, None, connection_extra(max_attempts=10,
                                                                                    backoff_seconds=2, **certs))
    ok = serviceplatformen.config_from_connection(PROD, None, None, connection_extra(max_attempts=10,
                                                                                     backoff_seconds=1, **certs))
    assert (ok.max_attempts, ok.backoff_seconds) == (10, 1.0)


@pytest.mark.parametrize("kind, rejected, transient, attempts", [
    ("http400", True, False, 1),          # the receiver refused this request: a rejection, not retried
    ("http403", False, False, 1),         # access refused: the connection, not the message; sent again later
    ("http503", False, True, 3),          # the receiver's trouble: retried, then left unconfirmed
])
def test_item8_an_http_4xx_from_a_real_server_is_a_rejection_and_a_503_is_not(emu_db, kind, rejected, transient,
                                                                               attempts):
    """Issue 16, what to build: an HTTP 4xx answer is a rejection with a task, not an unconfirmed
    claim resent every hour (except 408/429, and 401/403/404/405/407/421: the service was not
    reached as configured). DeliveryError.rejected says which."""
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=1.0, fault_kinds=(kind,)) as emu:
        with make_client(emu.url, max_attempts=3) as client:
            with pytest.raises(serviceplatformen.DeliveryError) as err:
                client.call(batch_root())
        assert emu.request_count == attempts
    assert (err.value.rejected, err.value.transient, err.value.attempts) == (rejected, transient, attempts)
    assert emulator.claims(emu_db) == []


def test_item8_a_soap_client_fault_is_a_rejection_and_tls_failures_are_not(emu_db, pki):
    with emulator.Emulator("KMD_OPUS", emu_db) as emu, make_client(emu.url, auth=NoHeaderAuth()) as client:
        with pytest.raises(serviceplatformen.DeliveryError) as fault:
            client.call(batch_root())
    assert fault.value.rejected is True and "SOAP fault Client" in str(fault.value)
    server = emulator.tls_context(pki["server_cert"], pki["server_key"], client_ca=pki["ca_cert"])
    with emulator.Emulator("EG", emu_db, tls=server) as emu:
        with make_client(emu.url, client_cert=pki["client_cert"], client_key=pki["client_key"]) as client:
            with pytest.raises(serviceplatformen.DeliveryError) as tls:
                client.call(batch_root())          # the system CAs do not know the test CA
    assert tls.value.rejected is False and "TLS" in str(tls.value)


@pytest.mark.parametrize("exc, rejected", [
    (TransportError("bad request", status_code=400), True), (TransportError("conflict", status_code=409), True),
    (TransportError("too large", status_code=413), True), (TransportError("unprocessable", status_code=422), True),
    (TransportError("timeout", status_code=408), False), (TransportError("throttled", status_code=429), False),
    (TransportError("unauthorised", status_code=401), False), (TransportError("forbidden", status_code=403), False),
    (TransportError("not found", status_code=404), False), (TransportError("boom", status_code=500), False),
    (Fault(message="x", code="soap:Client"), True), (Fault(message="x", code="soap:Client.Schema"), True),
    (Fault(message="x", code="env:Sender"), True), (Fault(message="x", code="soap:Server"), False),
    (requests.exceptions.SSLError("certificate verify failed"), False), (ValueError("unknown"), False),
], ids=lambda v: v if isinstance(v, bool) else None)
def test_item8_is_rejection_only_for_the_messages_own_refusals(exc, rejected):
    assert serviceplatformen.is_rejection(exc) is rejected
