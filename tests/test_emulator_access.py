"""Issue 17: the debtor-system emulator checks who calls, per municipality. Each municipality calls
under its own service agreement, in certificate mode (mutual TLS + InvocationContext naming the
agreement) or in STS token mode (a SAML holder-of-key assertion in a signed WS-Security header).
A real Emulator over HTTPS with mutual TLS on loopback, the sandbox's throwaway certificates, tokens
made by the sandbox's SAML issuer (no STS needed)."""

from __future__ import annotations

import copy
import datetime as dt
import threading
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from claim_rows import AGENCY, batch_root
from lxml import etree

from fbs_debitor.claims.sf1590 import NS_DR, NS_F, NS_IC
from fbs_debitor.sandbox import emulator, pki, saml_issuer
from fbs_debitor.tokens import wssecurity

SOAP = emulator.SOAP_NS
ACTION = emulator.ACTION_PREFIX + "OpretDebitorkonto"
UNIT_A, CVR_A = AGENCY["org_unit_uuid"], "29189404"            # calls with a token (token_cvrs)
UNIT_B, CVR_B = "7d3c2b1a-0f9e-4d8c-8b7a-6a5f4e3d2c1b", "29188505"  # calls with its certificate
UNIT_UNKNOWN = "0a0b0c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
AGREEMENT_A = "aaaaaaaa-1111-4111-8111-111111111111"
AGREEMENT_B = "bbbbbbbb-2222-4222-8222-222222222222"
ISSUER = emulator.STS_ISSUER
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"


@pytest.fixture(scope="module")
def pems(tmp_path_factory) -> dict[str, str]:
    return pki.ensure(tmp_path_factory.mktemp("pki"))


def read(pems, name: str) -> bytes:
    return Path(pems[name]).read_bytes()


@pytest.fixture
def emu(pems, tmp_path):
    """Municipality A must call with a token; B calls with its certificate under its agreement."""
    tls = emulator.tls_context(pems["server_cert"], pems["server_key"], client_ca=pems["ca_cert"])
    with emulator.Emulator("KMD_OPUS", f"sqlite:///{tmp_path / 'emulator.sqlite'}", tls=tls,
                           municipality_by_org_unit={UNIT_A: CVR_A, UNIT_B: CVR_B},
                           sts_cert=pems["sts_signing_cert"], token_cvrs=frozenset({CVR_A}),
                           agreements={CVR_A: AGREEMENT_A, CVR_B: AGREEMENT_B}) as e:
        yield e


def payload(org_unit: str = UNIT_A) -> etree._Element:
    root = batch_root()
    root.find(f"{{{NS_DR}}}Afsender/{{{NS_F}}}OrganisatoriskEnhedUUID").text = org_unit
    return root


def envelope(body: etree._Element, agreement: str | None = None) -> etree._Element:
    """A SOAP 1.1 envelope; with ``agreement`` an InvocationContext naming it (certificate mode)."""
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP})
    if agreement:
        ic = etree.SubElement(etree.SubElement(env, f"{{{SOAP}}}Header"), f"{{{NS_IC}}}InvocationContext",
                              nsmap={"ic": NS_IC})
        for name, value in (("ServiceAgreementUUID", agreement),
                            ("UserSystemUUID", "22222222-2222-4222-8222-222222222222"),
                            ("UserUUID", "33333333-3333-4333-8333-333333333333"),
                            ("ServiceUUID", "e354a6d1-500b-49c6-916a-510623e12fba")):
            etree.SubElement(ic, f"{{{NS_IC}}}{name}").text = value
    etree.SubElement(env, f"{{{SOAP}}}Body").append(copy.deepcopy(body))
    return env


def token(pems, cvr: str = CVR_A, **over) -> bytes:
    args = dict(sts_key_pem=read(pems, "sts_signing_key"), sts_cert_pem=read(pems, "sts_signing_cert"),
                issuer=ISSUER, audience=emulator.ENTITY_ID, cvr=cvr, holder_cert_pem=read(pems, "system_cert"))
    args.update(over)
    return saml_issuer.issue_assertion(**args)


def signed(pems, url: str, assertion: bytes, org_unit: str = UNIT_A) -> etree._Element:
    return wssecurity.sign_envelope(envelope(payload(org_unit)), assertion, key_pem=read(pems, "system_key"),
                                    cert_pem=read(pems, "system_cert"), action=ACTION, to=url)


def post(pems, url: str, env: etree._Element | bytes, client_cert: bool = True) -> tuple[int, etree._Element]:
    data = env if isinstance(env, bytes) else etree.tostring(env, xml_declaration=True, encoding="UTF-8")
    resp = requests.post(url, data=data, timeout=10, verify=pems["ca_cert"],
                         cert=(pems["system_cert"], pems["system_key"]) if client_cert else None,
                         headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{ACTION}"'})
    return resp.status_code, etree.fromstring(resp.content)


def fault_text(answer: etree._Element) -> str:
    fault = answer.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
    assert fault is not None and fault.findtext("faultcode") == "soap:Client"
    return fault.findtext("faultstring")


def accepted(answer: etree._Element) -> set[str]:
    return {k.findtext(f"{{{NS_F}}}StatusKode") for k in answer.iter(f"{{{NS_DR}}}Kvittering")}


def stored(db_url: str) -> tuple[int, int]:
    """(claims, first answers) the emulator holds."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return (conn.execute(sa.select(sa.func.count()).select_from(emulator.emu_claim)).scalar_one(),
                    conn.execute(sa.select(sa.func.count()).select_from(emulator.emu_answer)).scalar_one())
    finally:
        engine.dispose()


def assert_refused(pems, emu, env, reason: str, cvr: str | None = CVR_A, auth: str = "token") -> None:
    status, answer = post(pems, emu.url, env)
    assert status == 403 and fault_text(answer) == reason
    assert stored(emu.db_url) == (0, 0)
    (call,) = emulator.calls(emu.db_url)
    assert (call["operation"], call["municipality_cvr"], call["auth"], call["refused"]) == (
        "OpretDebitorkonto", cvr, auth, reason)


# --- token mode ----------------------------------------------------------------------------------

def test_issue17_a_valid_token_for_the_callers_municipality_is_accepted_and_logged(pems, emu):
    assertion = token(pems)
    status, answer = post(pems, emu.url, signed(pems, emu.url, assertion))
    assert status == 200 and accepted(answer) == {"MODTAGET"}
    assert stored(emu.db_url) == (3, 3)
    (call,) = emulator.calls(emu.db_url)
    assertion_id = etree.fromstring(assertion).get("ID")
    assert (call["municipality_cvr"], call["auth"], call["agreement"], call["refused"]) == (
        CVR_A, "token", assertion_id, None)
    assert isinstance(call["at"], dt.datetime) and call["id"] >= 1
    # a municipality outside token_cvrs may call with a token as well
    status, answer = post(pems, emu.url, signed(pems, emu.url, token(pems, CVR_B), org_unit=UNIT_B))
    assert status == 200 and [c["auth"] for c in emulator.calls(emu.db_url)] == ["token", "token"]


def _expired(pems, url):
    return signed(pems, url, token(pems, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=9)))


def _wrong_audience(pems, url):
    return signed(pems, url, token(pems, audience="http://entityid.kombit.dk/service/sf1590/Andet/1"))


def _other_municipality(pems, url):
    return signed(pems, url, token(pems, cvr=CVR_B))           # A's request, B's token


def _unsigned(pems, url):
    return signed(pems, url, token(pems, sign=False))


def _assertion_tampered(pems, url):
    env = signed(pems, url, token(pems))
    values = [v for v in wssecurity.security_header(env).iter(f"{{{SAML}}}AttributeValue") if v.text == CVR_A]
    assert len(values) == 1
    values[0].text = CVR_B             # the token now claims the other municipality
    return wssecurity.security_header(env).getparent().getparent()


def _body_tampered(pems, url):
    env = signed(pems, url, token(pems))
    env.find(f".//{{{NS_DR}}}Beloeb").text = "1.00"             # still valid by the schema
    return env


@pytest.mark.parametrize(("make", "reasons"), [
    (_expired, {"expired"}),
    (_wrong_audience, {"audience"}),
    (_other_municipality, {"cvr"}),
    (_unsigned, {"unsigned"}),
    (_assertion_tampered, {"bad_signature"}),
    (_body_tampered, {"message_signature"}),
], ids=["expired", "wrong_audience", "other_municipality", "unsigned", "assertion_tampered", "body_tampered"])
def test_issue17_a_refused_token_gets_403_nothing_is_stored_and_the_call_is_logged(pems, emu, make, reasons):
    env = make(pems, emu.url)
    status, answer = post(pems, emu.url, env)
    text = fault_text(answer)
    assert status == 403 and text.startswith("token refused: ")
    assert text.removeprefix("token refused: ") in reasons
    assert "Assertion" not in text and "BEGIN" not in text and len(text) < 60   # never the token
    assert stored(emu.db_url) == (0, 0)
    (call,) = emulator.calls(emu.db_url)
    assert (call["municipality_cvr"], call["auth"], call["refused"]) == (CVR_A, "token", text)


def test_issue17_a_token_from_an_unknown_sender_or_without_token_mode_is_refused(pems, emu, tmp_path):
    assert_refused(pems, emu, signed(pems, emu.url, token(pems), org_unit=UNIT_UNKNOWN), "unknown sender", cvr=None)
    tls = emulator.tls_context(pems["server_cert"], pems["server_key"], client_ca=pems["ca_cert"])
    with emulator.Emulator("EG", f"sqlite:///{tmp_path / 'plain.sqlite'}", tls=tls,
                           municipality_by_org_unit={UNIT_A: CVR_A}) as plain:
        assert_refused(pems, plain, signed(pems, plain.url, token(pems)), "token mode is not configured")
        # without the InvocationContext and without a token: a fault as before (nothing logged)
        status, answer = post(pems, plain.url, envelope(payload()))
        assert status == 500 and "InvocationContext" in fault_text(answer)
        assert len(emulator.calls(plain.db_url)) == 1


# --- certificate mode ------------------------------------------------------------------------------

def test_issue17_certificate_mode_checks_the_municipalitys_own_agreement(pems, emu):
    status, answer = post(pems, emu.url, envelope(payload(UNIT_B), AGREEMENT_B.upper()))
    assert status == 200 and "MODTAGET" in accepted(answer)
    (call,) = emulator.calls(emu.db_url)
    assert (call["municipality_cvr"], call["auth"], call["agreement"], call["refused"]) == (
        CVR_B, "certificate", AGREEMENT_B, None)
    before = stored(emu.db_url)
    status, answer = post(pems, emu.url, envelope(change_of(UNIT_B), AGREEMENT_A))
    assert status == 403 and fault_text(answer) == f"service agreement does not cover municipality {CVR_B}"
    assert stored(emu.db_url) == before
    assert emulator.calls(emu.db_url)[-1]["refused"] == f"service agreement does not cover municipality {CVR_B}"
    assert emulator.calls(emu.db_url)[-1]["agreement"] == AGREEMENT_A


def change_of(org_unit: str) -> etree._Element:
    """An OpretDebitorkonto batch with claims the emulator has not seen, from ``org_unit``."""
    root = payload(org_unit)
    for i, fid in enumerate(root.iter(f"{{{NS_DR}}}FordringID")):
        fid.text = f"FBS-715100-9{i}"
    return root


def test_issue17_a_token_municipality_calling_without_a_token_is_refused(pems, emu):
    assert_refused(pems, emu, envelope(payload(UNIT_A), AGREEMENT_A), "token required", auth="certificate")


def test_issue17_star_requires_tokens_from_everyone_and_an_unknown_sender_is_refused(pems, tmp_path):
    tls = emulator.tls_context(pems["server_cert"], pems["server_key"], client_ca=pems["ca_cert"])
    with emulator.Emulator("EG", f"sqlite:///{tmp_path / 'all.sqlite'}", tls=tls,
                           municipality_by_org_unit={UNIT_A: CVR_A, UNIT_B: CVR_B},
                           sts_cert=pems["sts_signing_cert"], token_cvrs=frozenset({"*"})) as emu:
        assert_refused(pems, emu, envelope(payload(UNIT_B), AGREEMENT_B), "token required", cvr=CVR_B,
                       auth="certificate")
    with emulator.Emulator("EG", f"sqlite:///{tmp_path / 'agreements.sqlite'}", tls=tls,
                           municipality_by_org_unit={UNIT_A: CVR_A},
                           agreements={CVR_A: AGREEMENT_A}) as emu:
        assert_refused(pems, emu, envelope(payload(UNIT_UNKNOWN), AGREEMENT_A), "unknown sender", cvr=None,
                       auth="certificate")


def test_issue17_a_client_without_a_client_certificate_fails_the_tls_handshake(pems, emu):
    with pytest.raises(requests.exceptions.ConnectionError):
        post(pems, emu.url, envelope(payload(UNIT_B), AGREEMENT_B), client_cert=False)
    assert emulator.calls(emu.db_url) == [] and stored(emu.db_url) == (0, 0)


def test_issue17_settings_are_checked(pems, tmp_path):
    db = f"sqlite:///{tmp_path / 'e.sqlite'}"
    for bad in ({"token_cvrs": frozenset({"123"}), "sts_cert": pems["sts_signing_cert"]},
                {"token_cvrs": frozenset({CVR_A})},                         # tokens without the STS cert
                {"agreements": {CVR_A: "not-a-uuid"}}, {"agreements": {"2918940": AGREEMENT_A}},
                {"municipality_by_org_unit": {UNIT_A: "abc"}}, {"sts_cert": pems["ca_key"]},
                {"sts_cert": str(tmp_path / "missing.crt")}):
        with pytest.raises(ValueError, match=r"CVR|UUID|sts_cert|STS"):
            emulator.Emulator("EG", db, **bad)


# --- the CLI ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--agreement", "2918940=" + AGREEMENT_A], ["--agreement", CVR_A + "=x"],
                                  ["--agreement", CVR_A], ["--token-cvr", "12345"], ["--token-cvr", CVR_A],
                                  ["--agreement", f"{CVR_A}={AGREEMENT_A}"]])
def test_issue17_cli_refuses_bad_access_options_with_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        emulator.serve(["--vendor", "EG", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "CVR" in err or "--sts-cert" in err or "--vendors-from-fbs" in err


def test_issue17_cli_runs_https_with_mtls_tokens_and_agreements(pems, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(emulator, "vendors_from_fbs", lambda: {UNIT_A: "KMD_OPUS", UNIT_B: "EG"})
    monkeypatch.setattr(emulator, "municipalities_from_fbs", lambda: {UNIT_A: CVR_A, UNIT_B: CVR_B})
    monkeypatch.setattr(emulator.settings, "check", lambda stores=(): None)   # no FBS extract here
    stop, real_sleep = threading.Event(), time.sleep

    def sleep(seconds):
        if threading.current_thread().name == "serve":
            if stop.wait(seconds):
                raise KeyboardInterrupt
        else:
            real_sleep(seconds)

    monkeypatch.setattr(emulator.time, "sleep", sleep)
    port_file, db = tmp_path / "run" / "emulator.port", f"sqlite:///{tmp_path / 'cli.sqlite'}"
    argv = ["--vendor", "KMD_OPUS", "--vendors-from-fbs", "--port", "0", "--port-file", str(port_file), "--db", db,
            "--tls-cert", pems["server_cert"], "--tls-key", pems["server_key"], "--tls-client-ca", pems["ca_cert"],
            "--sts-cert", pems["sts_signing_cert"], "--token-cvr", CVR_A, "--agreement", f"{CVR_B}={AGREEMENT_B}"]
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", emulator.serve(argv)), name="serve")
    thread.start()
    try:
        for _ in range(200):
            if port_file.exists():
                break
            real_sleep(0.05)
        url = f"https://localhost:{int(port_file.read_text())}/service/OIR/DebitorRegistreringAfsend/1"
        status, answer = post(pems, url, signed(pems, url, token(pems)))
        assert status == 200
        status, answer = post(pems, url, envelope(change_of(UNIT_B), AGREEMENT_B))
        assert status == 200
        status, answer = post(pems, url, envelope(payload(UNIT_A), AGREEMENT_A))
        assert status == 403 and fault_text(answer) == "token required"
    finally:
        stop.set()
        thread.join(timeout=10)
    assert result == {"rc": 0}
    assert [(c["municipality_cvr"], c["auth"], c["refused"]) for c in emulator.calls(db)] == [
        (CVR_A, "token", None), (CVR_B, "certificate", None), (CVR_A, "certificate", "token required")]
    out = capsys.readouterr().out
    assert "on https://127.0.0.1:" in out and f"tokens from {CVR_A}" in out and "stopped" in out
