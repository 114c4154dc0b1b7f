"""The STS client and its token cache (issue 17), against the sandbox STS: a real HTTPS server on
loopback with mutual TLS, issuing signed SAML assertions per (municipality, entity id) for the
service agreements it knows."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fbs_debitor.sandbox import pki
from fbs_debitor.sandbox import sts as sandbox_sts
from fbs_debitor.sandbox.sts import Sts, fingerprint
from fbs_debitor.tokens import saml
from fbs_debitor.tokens.sts import (
    KEY_TYPE,
    REQUEST_TYPE,
    TOKEN_TYPE,
    StsClient,
    StsConfigError,
    StsError,
    StsRefused,
    StsSettings,
    StsUnavailable,
    TokenCache,
)

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
ISSUER = "https://sts.sandbox.fbs-debitor.local/"
B01 = "http://entityid.kombit.dk/service/sf1590_b_01/1"
B01A = "http://entityid.kombit.dk/service/sf1590_b_01a/1"
# One municipality per test where the STS's counters are read, so no test sees another's requests.
AARHUS, ODENSE, AALBORG, VEJLE, HORSENS, KOLDING, RANDERS, VIBORG = (
    "55133018", "35209115", "29189420", "29189889", "29189617", "29189781", "29189668", "29189846")
UNKNOWN = "12345678"
FORBIDDEN = ("PRIVATE KEY", "BEGIN CERTIFICATE", "<saml")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return pki.ensure(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def sts(certs):
    system = fingerprint(certs["system_cert"])
    agreements = [(system, cvr, entity) for cvr in (AARHUS, ODENSE, AALBORG, VEJLE, HORSENS, KOLDING, RANDERS, VIBORG)
                  for entity in (B01, B01A)]
    agreements.append((fingerprint(Path(certs["serviceplatformen_cert"]).read_bytes()), AARHUS, B01))
    with Sts(sts_signing_cert=certs["sts_signing_cert"], sts_signing_key=certs["sts_signing_key"],
             server_cert=certs["server_cert"], server_key=certs["server_key"], client_ca=certs["ca_cert"],
             agreements=agreements, issuer=ISSUER, slow_seconds=1.5) as server:
        yield server


@pytest.fixture
def settings_for(sts, certs):
    def make(**over) -> StsSettings:
        values = dict(endpoint=sts.url, client_cert=certs["system_cert"], client_key=certs["system_key"],
                      ca_bundle=certs["ca_cert"], connect_timeout=5, operation_timeout=5, backoff_seconds=0)
        values.update(over)
        return StsSettings(**values)
    return make


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _verify(token, certs, cvr: str | None, audience: str) -> saml.Facts:
    return saml.verify_assertion(saml.parse_assertion(token.assertion),
                                 sts_cert_pem=Path(certs["sts_signing_cert"]).read_bytes(), issuer=ISSUER,
                                 audience=audience, cvr=cvr)


def _debug(caplog) -> None:
    """DEBUG for this project and urllib3. (signxml logs canonicalized XML, the whole assertion, at
    DEBUG: it stays at INFO here, as a deployment's logging must keep it.)"""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="fbs_debitor")
    caplog.set_level(logging.DEBUG, logger="urllib3")


def _clean(text: str) -> None:
    for bad in FORBIDDEN:
        assert bad not in text, f"{bad!r} leaked"


def test_issue17_a_token_over_mutual_tls_verifies_and_is_held_by_the_system_certificate(sts, certs, settings_for,
                                                                                          caplog):
    _debug(caplog)
    with StsClient(settings_for()) as client:
        token = TokenCache(client).get(AARHUS, B01)
    facts = _verify(token, certs, AARHUS, B01)
    assert (facts.cvr, facts.audience, token.cvr, token.entity_id) == (AARHUS, B01, AARHUS, B01)
    assert _der(facts.holder_cert_pem) == _der(Path(certs["system_cert"]).read_bytes())
    assert token.expires == min(token.expires, facts.not_on_or_after)
    assert token.not_before < dt.datetime.now(dt.UTC) < token.expires
    assert dt.timedelta(hours=7, minutes=59) < token.expires - token.not_before <= dt.timedelta(hours=8)
    assert sts.issued[(AARHUS, B01)] == 1
    assert f"STS token for municipality {AARHUS}, service {B01}, valid until" in caplog.text
    _clean(caplog.text)
    _clean(repr(token))


def test_issue17_no_service_agreement_is_refused_once_and_remembered_for_the_run(sts, settings_for, caplog):
    _debug(caplog)
    cache = TokenCache(StsClient(settings_for()))
    with pytest.raises(StsRefused) as first:
        cache.get(UNKNOWN, B01)
    assert first.value.transient is False and first.value.code == "NoServiceAgreement"
    assert "NoServiceAgreement" in str(first.value) and UNKNOWN in str(first.value) and B01 in str(first.value)
    received = sts.received
    with pytest.raises(StsRefused, match="NoServiceAgreement"):
        cache.get(UNKNOWN, B01)
    assert sts.received == received                   # not asked again
    assert cache.requests[(UNKNOWN, B01)] == 1 and sts.issued[(UNKNOWN, B01)] == 0
    _clean(caplog.text)
    _clean(str(first.value))


def test_issue17_a_caller_without_a_client_certificate_fails_the_tls_handshake(sts, certs):
    received = sts.received
    with pytest.raises(requests.exceptions.ConnectionError):   # SSLError is one
        requests.post(sts.url, json={"TokenType": TOKEN_TYPE}, verify=certs["ca_cert"], timeout=5)
    assert sts.received == received


def test_issue17_a_certificate_from_a_stranger_ca_is_a_tls_refusal_not_retried(sts, settings_for, certs):
    sleeps: list[float] = []
    settings = settings_for(client_cert=certs["rogue_cert"], client_key=certs["rogue_key"], backoff_seconds=1)
    received = sts.received
    with pytest.raises(StsRefused) as refused:
        StsClient(settings, sleep=sleeps.append).issue(ODENSE, B01)
    assert refused.value.code == "TLS" and sleeps == [] and sts.received == received
    _clean(str(refused.value))


def test_issue17_the_sts_certificate_must_chain_to_the_configured_ca(settings_for, certs):
    with pytest.raises(StsRefused) as refused:
        StsClient(settings_for(ca_bundle=certs["stranger_ca_cert"])).issue(ODENSE, B01)
    assert refused.value.code == "TLS" and "not trusted" in str(refused.value)


def test_issue17_use_key_must_be_the_tls_client_certificate(sts, certs, settings_for):
    other = base64.b64encode(_der(Path(certs["serviceplatformen_cert"]).read_bytes())).decode()
    body = {"TokenType": TOKEN_TYPE, "RequestType": REQUEST_TYPE, "KeyType": KEY_TYPE,
            "AnvenderKontekst": {"Cvr": AARHUS}, "UseKey": other,
            "AppliesTo": {"EndpointReference": {"Address": B01}}}
    answer = requests.post(sts.url, json=body, cert=(certs["system_cert"], certs["system_key"]),
                           verify=certs["ca_cert"], timeout=5)
    assert answer.status_code == 403 and answer.json()["Fault"]["Code"] == "UseKeyMismatch"

    client = StsClient(settings_for())
    client._use_key = other                          # a client claiming another system's key
    with pytest.raises(StsRefused, match="UseKeyMismatch"):
        client.issue(AARHUS, B01)


def test_issue17_a_malformed_request_is_invalid(sts, certs):
    answer = requests.post(sts.url, json={"TokenType": "nonsense"}, cert=(certs["system_cert"], certs["system_key"]),
                           verify=certs["ca_cert"], timeout=5)
    assert answer.status_code == 400 and answer.json()["Fault"]["Code"] == "InvalidRequest"
    assert requests.get(sts.url.replace("/issue", "/other"), cert=(certs["system_cert"], certs["system_key"]),
                        verify=certs["ca_cert"], timeout=5).status_code == 404


def test_issue17_one_timeout_then_a_token_after_one_retry(sts, settings_for, certs):
    sleeps: list[float] = []
    sts.faults.append("timeout")
    settings = settings_for(operation_timeout=0.5, backoff_seconds=0.25)
    with StsClient(settings, sleep=sleeps.append) as client:
        token = client.issue(AALBORG, B01)
    assert sleeps == [0.25] and not sts.faults
    assert _verify(token, certs, AALBORG, B01).cvr == AALBORG


def test_issue17_http503_on_every_attempt_is_unavailable_after_max_attempts(sts, settings_for, caplog):
    _debug(caplog)
    sts.faults.extend(["http503"] * 3)
    received = sts.received
    with pytest.raises(StsUnavailable) as failed:
        StsClient(settings_for(max_attempts=3)).issue(VEJLE, B01)
    assert failed.value.transient is True and "HTTP 503" in str(failed.value) and "3 attempt" in str(failed.value)
    assert sts.received == received + 3 and not sts.faults and sts.issued[(VEJLE, B01)] == 0
    _clean(caplog.text)


def test_issue17_a_dropped_connection_is_retried(sts, settings_for):
    sts.faults.append("drop")
    token = StsClient(settings_for()).issue(VEJLE, B01A)
    assert token.cvr == VEJLE and sts.issued[(VEJLE, B01A)] == 1


def test_issue17_a_hundred_gets_from_ten_threads_make_one_sts_request(sts, settings_for):
    cache = TokenCache(StsClient(settings_for()))
    got: list = []

    def worker():
        for _ in range(10):
            got.append(cache.get(HORSENS, B01))

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 100 and len({id(t) for t in got}) == 1
    assert cache.requests[(HORSENS, B01)] == 1 and sts.issued[(HORSENS, B01)] == 1


def test_issue17_a_token_is_renewed_at_expires_minus_renew_before_not_earlier(sts, settings_for):
    now = [dt.datetime.now(dt.UTC)]
    cache = TokenCache(StsClient(settings_for(renew_before_seconds=300)), clock=lambda: now[0])
    first = cache.get(KOLDING, B01)
    now[0] = first.expires - dt.timedelta(seconds=301)
    assert cache.get(KOLDING, B01) is first and cache.requests[(KOLDING, B01)] == 1
    now[0] = first.expires - dt.timedelta(seconds=300)
    second = cache.get(KOLDING, B01)
    assert second is not first and cache.requests[(KOLDING, B01)] == 2 and sts.issued[(KOLDING, B01)] == 2
    now[0] = second.expires - dt.timedelta(seconds=301)   # the new token is kept in its turn
    assert cache.get(KOLDING, B01) is second and cache.requests[(KOLDING, B01)] == 2


def test_issue17_two_municipalities_get_two_tokens_each_with_its_own_cvr(sts, settings_for, certs):
    cache = TokenCache(StsClient(settings_for()))
    randers, viborg = cache.get(RANDERS, B01), cache.get(VIBORG, B01)
    assert _verify(randers, certs, None, B01).cvr == RANDERS
    assert _verify(viborg, certs, None, B01).cvr == VIBORG
    assert cache.requests == {(RANDERS, B01): 1, (VIBORG, B01): 1}
    with pytest.raises(saml.TokenRefused):            # a token is for its own municipality only
        _verify(randers, certs, VIBORG, B01)


def test_issue17_a_bad_cvr_or_entity_id_is_refused_before_any_request(sts, settings_for):
    client, received = StsClient(settings_for()), sts.received
    for cvr, entity in (("1234567", B01), ("1234567a", B01), (AARHUS, ""), (AARHUS, "  ")):
        with pytest.raises(ValueError):
            client.issue(cvr, entity)
        with pytest.raises(ValueError):
            TokenCache(client).get(cvr, entity)
    assert sts.received == received


@pytest.mark.parametrize(("change", "field", "allowed"), [
    ({"max_attempts": 0}, "max_attempts", "1 to 10"),
    ({"max_attempts": 2.5}, "max_attempts", "1 to 10"),
    ({"connect_timeout": float("nan")}, "connect_timeout", "0.1 to 600"),
    ({"operation_timeout": 0.05}, "operation_timeout", "0.1 to 600"),
    ({"backoff_seconds": 61}, "backoff_seconds", "0 to 60"),
    ({"renew_before_seconds": -1}, "renew_before_seconds", "0 to 3600"),
    ({"endpoint": "http://127.0.0.1:1/runtime/api/rest/wstrust/v1/issue"}, "endpoint", "https://"),
    ({"endpoint": "https://user:secret@127.0.0.1/issue"}, "endpoint", "user or password"),
    ({"client_cert": "/nonexistent/system.crt"}, "client_cert", "existing file"),
    ({"client_key": "/nonexistent/system.key"}, "client_key", "existing file"),
    ({"ca_bundle": "/nonexistent/ca.crt"}, "ca_bundle", "existing file"),
])
def test_issue17_sts_settings_outside_their_range_name_the_field(certs, change, field, allowed):
    values = dict(endpoint="https://127.0.0.1:8443/runtime/api/rest/wstrust/v1/issue",
                  client_cert=certs["system_cert"], client_key=certs["system_key"])
    values.update(change)
    with pytest.raises(StsConfigError) as refused:
        StsSettings(**values)
    assert f"StsSettings.{field}" in str(refused.value) and allowed in str(refused.value)
    assert "secret" not in str(refused.value)


def test_issue17_nothing_secret_in_logs_reprs_or_errors(sts, settings_for, certs, caplog):
    _debug(caplog)
    settings = settings_for()
    client = StsClient(settings)
    cache = TokenCache(client)
    token = cache.get(AARHUS, B01A)
    texts = [caplog.text, repr(token), str(token), repr(settings), repr(client)]
    for cvr, faults in ((UNKNOWN, []), (ODENSE, ["http503"] * 3)):
        sts.faults.extend(faults)
        with pytest.raises(StsError) as failed:
            cache.get(cvr, B01A)
        texts += [str(failed.value), repr(failed.value)]
    texts.append(caplog.text)
    for text in texts:
        _clean(text)
    assert Path(certs["system_key"]).read_text().splitlines()[1] not in caplog.text


def test_issue17_serve_runs_the_sts_from_the_command_line(tmp_path, certs, settings_for):
    port_file = tmp_path / "sts.port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fbs_debitor.sandbox.sts", "--pki", str(Path(certs["ca_cert"]).parent),
         "--agreement", f"system:{AARHUS}:{B01}", "--lifetime-minutes", "10", "--port-file", str(port_file)],
        env={**os.environ, "PYTHONPATH": str(PLUGINS)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_file.exists(), proc.stdout.read().decode() if proc.poll() is not None else "no port file"
        port = int(port_file.read_text())
        url = f"https://127.0.0.1:{port}/runtime/api/rest/wstrust/v1/issue"
        token = StsClient(settings_for(endpoint=url)).issue(AARHUS, B01)
        assert _verify(token, certs, AARHUS, B01).cvr == AARHUS
        assert dt.timedelta(minutes=9) < token.expires - token.not_before <= dt.timedelta(minutes=10)
        with pytest.raises(StsRefused, match="NoServiceAgreement"):
            StsClient(settings_for(endpoint=url)).issue(AARHUS, B01A)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out.decode()
    _clean(out.decode())


@pytest.mark.parametrize(("argv", "message"), [
    (["--agreement", "nobody:29189846:x"], "HOLDER:CVR:ENTITY_ID"),
    (["--agreement", "system:123:x"], "HOLDER:CVR:ENTITY_ID"),
    (["--port", "70000"], "0 to 65535"),
    (["--lifetime-minutes", "0"], "1 to 1440"),
    (["--host", "10.0.0.1"], "loopback"),
])
def test_issue17_serve_refuses_invalid_options_with_exit_2(certs, capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        sandbox_sts.serve(["--pki", str(Path(certs["ca_cert"]).parent), *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_issue17_serve_names_missing_certificates(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        sandbox_sts.serve(["--pki", str(tmp_path / "none")])
    assert stopped.value.code == 2 and "sts_signing.crt" in capsys.readouterr().err
