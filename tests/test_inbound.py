"""Issue 17, item 5: the inbound SF1590_B_01A DaekningAfskrivningRegistreringAfsend service. The real
service (uvicorn, HTTPS with mutual TLS on loopback, port 0) is called with ``requests`` and the
sandbox's caller, with throwaway certificates (``sandbox.pki``): only Serviceplatformen's certificate
gets through TLS, a municipality is admitted by its CVR in certificate or token mode, hostile bodies
are refused before anything touches the disk, each accepted call lands one file, a repeat lands
nothing, a crash between landing and receipt lands nothing twice, and the payments run applies
every movement delivered through the service exactly once."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import fbs_rows as fr
import pytest
import requests
from database_urls import make_urls
from folder_tree import tree
from leaks import full_cpr_numbers
from lxml import etree
from municipality import municipality
from sqlalchemy import text
from transfers import transfer

from fbs_debitor.core import ledger
from fbs_debitor.core.settings import HOME
from fbs_debitor.core.stores import init_stores, open_stores
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments import files
from fbs_debitor.payments import reconciliation as payment_reconciliation
from fbs_debitor.payments.files import Movement, to_xml
from fbs_debitor.payments.inbound import FBS_ENTITY_ID, SOAP_ACTION, Landing
from fbs_debitor.payments.inbound_service import InboundServer, InboundSettingError, InboundSettings
from fbs_debitor.payments.inbox import FolderInbox, InboxLayoutError
from fbs_debitor.sandbox import emulator, emulator_payments, pki
from fbs_debitor.sandbox.inbound_caller import InboundCaller, InboundRefused, InboundUnavailable
from fbs_debitor.sandbox.saml_issuer import issue_assertion
from fbs_debitor.sandbox.sts import Sts, fingerprint

CERT_CVR = "29189404"          # the municipality of fbs_rows' agency: certificate mode
TOKEN_CVR = "29189846"         # a municipality calling with a token
STRANGER_CVR = "12345674"      # a valid CVR nobody configured
ISSUER = "https://sts.sandbox.fbs-debitor.local/"
AGENCY = "715100"
UNTIL = dt.datetime(2026, 11, 20, 12, 0).astimezone()
TID = "6f1c2a44-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    return pki.ensure(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def payments_dir(tmp_path) -> Path:
    """A payments folder laid out by the project (marker, inbox, archive, quarantine)."""
    (tmp_path / "payments" / "inbox").mkdir(parents=True)
    FolderInbox(tmp_path / "payments" / "inbox", own=True).check()
    return tmp_path / "payments"


def settings_for(certs, payments_dir, **over) -> InboundSettings:
    args = dict(tls_cert=certs["server_cert"], tls_key=certs["server_key"],
                serviceplatformen_cert=certs["serviceplatformen_cert"], payments_dir=str(payments_dir), port=0,
                certificate_cvrs=(CERT_CVR,), token_cvrs=(TOKEN_CVR,), sts_cert=certs["sts_signing_cert"],
                sts_issuer=ISSUER)
    args.update(over)
    return InboundSettings(**args)


@pytest.fixture
def service(certs, payments_dir):
    with InboundServer(settings_for(certs, payments_dir)) as server:
        yield server


def mv(mid: str, fid: str = f"FBS-{AGENCY}-1", kind: str = "payment", amount="10.00") -> Movement:
    return Movement(mid, fid, kind, Decimal(amount), dt.date(2026, 11, 19))


def request_xml(*movements: Movement, tid: str = TID) -> bytes:
    return to_xml(movements or (mv("M1"), mv("M2", kind="write_off", amount="5.50")), UNTIL, uuid.UUID(tid))


def caller(certs, url, tokens: dict[str, bytes] | None = None, cert="serviceplatformen") -> InboundCaller:
    return InboundCaller(url, certs[f"{cert}_cert"], certs[f"{cert}_key"], certs["ca_cert"],
                         (lambda cvr: tokens[cvr]) if tokens else None, tuple(tokens or ()), max_attempts=1)


def post(certs, url, body: bytes, cert="serviceplatformen", action=SOAP_ACTION, **headers):
    return requests.post(url, data=body, cert=None if cert is None else (certs[f"{cert}_cert"], certs[f"{cert}_key"]),
                         verify=certs["ca_cert"], timeout=10,
                         headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{action}"', **headers})


def fault_code(response) -> str:
    root = etree.fromstring(response.content)
    return root.findtext(".//faultstring").split(":")[0]


def landed(payments_dir) -> list[str]:
    return sorted(p.name for p in (payments_dir / "inbox").iterdir())


def token(certs, *, cvr=TOKEN_CVR, audience=FBS_ENTITY_ID, holder="serviceplatformen") -> bytes:
    return issue_assertion(sts_key_pem=Path(certs["sts_signing_key"]).read_bytes(),
                           sts_cert_pem=Path(certs["sts_signing_cert"]).read_bytes(), issuer=ISSUER,
                           audience=audience, cvr=cvr, holder_cert_pem=Path(certs[f"{holder}_cert"]).read_bytes())


# --- accepted calls ------------------------------------------------------------------------------------

def test_issue17_P1_a_certificate_mode_call_lands_one_file_and_a_repeat_gets_the_first_receipt(certs, payments_dir,
                                                                                          service):
    c = caller(certs, service.url)
    body = c.envelope(etree.fromstring(request_xml()), CERT_CVR)
    first = post(certs, service.url, body)
    assert first.status_code == 200, first.text
    (name,) = landed(payments_dir)
    assert re.fullmatch(rf"b01a-\d{{8}}T\d{{12}}Z-{CERT_CVR}-[0-9a-f]{{32}}\.xml", name)
    assert [m.movement_id for m in files.parse((payments_dir / "inbox" / name).read_bytes()).movements] == ["M1", "M2"]
    receipt = c.call(request_xml(), CERT_CVR)
    assert receipt.file_name == name and set(receipt.received) == {"M1", "M2"} and receipt.transaction_id == TID
    # the same movements again, also under a new TransaktionsId: the first receipt, byte for byte; nothing new
    again = post(certs, service.url, c.envelope(etree.fromstring(request_xml(tid=TID[:-1] + "2")), CERT_CVR))
    assert again.status_code == 200 and again.content == first.content
    assert landed(payments_dir) == [name]
    # the same ids with other content: refused, nothing landed blindly
    other = post(certs, service.url, c.envelope(etree.fromstring(request_xml(mv("M1", amount="99.00"),
                                                                               mv("M2", kind="write_off",
                                                                                  amount="5.50"))), CERT_CVR))
    assert other.status_code == 500 and fault_code(other) == "P_CONFLICTING_REDELIVERY"
    assert landed(payments_dir) == [name]
    # the WSDL and the schemas it imports, and nothing else from the folder
    wsdl = requests.get(service.url + "?wsdl", cert=(certs["serviceplatformen_cert"], certs["serviceplatformen_key"]),
                        verify=certs["ca_cert"], timeout=10)
    assert wsdl.status_code == 200 and b"ForetagIndbetaling" in wsdl.content
    for name_, status in (("SF1590_Faelles.xsd", 200), ("README.md", 404), ("../../pyproject.toml", 404)):
        got = requests.get(service.url, params={"xsd": name_}, verify=certs["ca_cert"], timeout=10,
                           cert=(certs["serviceplatformen_cert"], certs["serviceplatformen_key"]))
        assert got.status_code == status, name_


def test_issue17_P1_only_serviceplatformens_certificate_gets_through_tls(certs, payments_dir, service):
    body = caller(certs, service.url).envelope(etree.fromstring(request_xml()), CERT_CVR)
    before = tree(payments_dir)
    for cert in ("system", "rogue", None):      # same CA but not the pinned one; a stranger CA; none
        with pytest.raises(requests.exceptions.ConnectionError):
            post(certs, service.url, body, cert=cert)
        if cert is not None:
            with pytest.raises((InboundRefused, InboundUnavailable)):
                caller(certs, service.url, cert=cert).call(request_xml(), CERT_CVR)
    assert tree(payments_dir) == before
    assert post(certs, service.url, body).status_code == 200          # Serviceplatformen still gets through


# --- refusals, before the disk ----------------------------------------------------------------------------

XXE = (b'<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
       b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>&xxe;</soap:Body>'
       b'</soap:Envelope>')
LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                     for i in range(1, 10))
          + b']><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>&lol9;'
          b'</soap:Body></soap:Envelope>')


def test_issue17_P1_hostile_and_wrong_bodies_are_refused_before_anything_touches_the_disk(certs, payments_dir, service,
                                                                                     monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    c = caller(certs, service.url)
    good = c.envelope(etree.fromstring(request_xml()), CERT_CVR)
    utf16 = XXE.decode().replace('encoding="UTF-8"', "").encode("utf-16")
    before = tree(payments_dir)
    cases = [(XXE, 500, "P_UNSAFE_XML"), (LAUGHS, 500, "P_UNSAFE_XML"), (utf16, 500, "P_UNSAFE_XML"),
             (good[:len(good) // 2], 500, "P_MALFORMED"), (b"<a/>", 500, "SOAP_ENVELOPE"),
             (good.replace(b"<da:Beloeb>10.00</da:Beloeb>", b"<da:Beloeb>-1</da:Beloeb>", 1), 500, "P_SCHEMA_INVALID")]
    for body, status, code in cases:
        got = post(certs, service.url, body)
        assert (got.status_code, fault_code(got)) == (status, code), body[:80]
    wrong_action = post(certs, service.url, good, action="urn:other")
    assert (wrong_action.status_code, fault_code(wrong_action)) == (500, "SOAP_ACTION")
    # oversize: by Content-Length, while streaming (chunked, no length), and a body over the file limit
    monkeypatch.setenv("FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES", "1500")
    monkeypatch.setattr("fbs_debitor.payments.inbound_service.ENVELOPE_MARGIN", 1000)
    big = request_xml(*(mv(f"M{i}") for i in range(1, 60)))
    big_call = c.envelope(etree.fromstring(big), CERT_CVR)
    assert len(big_call) > 2500
    got = post(certs, service.url, big_call)
    assert (got.status_code, fault_code(got)) == (413, "P_TOO_LARGE")
    got = requests.post(service.url, data=(big_call[i:i + 500] for i in range(0, len(big_call), 500)),
                        cert=(certs["serviceplatformen_cert"], certs["serviceplatformen_key"]), verify=certs["ca_cert"],
                        headers={"Content-Type": "text/xml", "SOAPAction": SOAP_ACTION}, timeout=10)
    assert (got.status_code, fault_code(got)) == (413, "P_TOO_LARGE")
    monkeypatch.setattr("fbs_debitor.payments.inbound_service.ENVELOPE_MARGIN", 64 * 1024)
    got = post(certs, service.url, big_call)                  # the envelope fits, the file in it does not
    assert (got.status_code, fault_code(got)) == (500, "P_TOO_LARGE")
    assert tree(payments_dir) == before
    monkeypatch.delenv("FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES")
    assert post(certs, service.url, good).status_code == 200       # and the service is still serving
    assert "passwd" not in caplog.text and "lol9" not in caplog.text


def test_issue17_P1_a_municipality_not_admitted_is_refused(certs, payments_dir, service):
    c = caller(certs, service.url)
    before = tree(payments_dir)
    stranger = post(certs, service.url, c.envelope(etree.fromstring(request_xml()), STRANGER_CVR))
    assert (stranger.status_code, fault_code(stranger)) == (403, "MUNICIPALITY_NOT_ADMITTED")
    no_context = c.envelope(etree.fromstring(request_xml()), CERT_CVR).replace(CERT_CVR.encode(), b"")
    got = post(certs, service.url, no_context)
    assert (got.status_code, fault_code(got)) == (403, "AUTHORITY_CONTEXT_MISSING")
    untokened = post(certs, service.url, c.envelope(etree.fromstring(request_xml()), TOKEN_CVR))
    assert (untokened.status_code, fault_code(untokened)) == (403, "TOKEN_REQUIRED")
    with pytest.raises(InboundRefused) as refused:
        c.call(request_xml(), STRANGER_CVR)
    assert refused.value.code == "MUNICIPALITY_NOT_ADMITTED"
    assert tree(payments_dir) == before


def test_issue17_P1_token_mode_admits_a_valid_token_and_refuses_a_wrong_audience_cvr_or_holder(certs, payments_dir,
                                                                                          service, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    before = tree(payments_dir)
    refused = {
        "audience": token(certs, audience="http://entityid.kombit.dk/service/other/1"),
        "MUNICIPALITY_NOT_ADMITTED": token(certs, cvr=STRANGER_CVR),
    }
    for code, assertion in refused.items():
        cvr = STRANGER_CVR if code == "MUNICIPALITY_NOT_ADMITTED" else TOKEN_CVR
        c = InboundCaller(service.url, certs["serviceplatformen_cert"], certs["serviceplatformen_key"], certs["ca_cert"],
                          lambda _cvr, a=assertion: a, (cvr,), max_attempts=1)
        with pytest.raises(InboundRefused) as exc:
            c.call(request_xml(), cvr)
        assert (exc.value.code, exc.value.status) == (code, 403)
    # a token for a certificate-mode municipality is refused too (it calls with the certificate)
    c = caller(certs, service.url, {CERT_CVR: token(certs, cvr=CERT_CVR)})
    with pytest.raises(InboundRefused) as exc:
        c.call(request_xml(), CERT_CVR)
    assert exc.value.code == "MUNICIPALITY_NOT_ADMITTED"
    # a token held by another certificate (signed with that one's key): not Serviceplatformen's
    c = InboundCaller(service.url, certs["serviceplatformen_cert"], certs["serviceplatformen_key"], certs["ca_cert"],
                      lambda _cvr: token(certs, holder="system"), (TOKEN_CVR,), max_attempts=1)
    c.cert_pem, c.key_pem = Path(certs["system_cert"]).read_bytes(), Path(certs["system_key"]).read_bytes()
    with pytest.raises(InboundRefused) as exc:
        c.call(request_xml(), TOKEN_CVR)
    assert exc.value.code == "HOLDER_NOT_SERVICEPLATFORMEN"
    assert tree(payments_dir) == before

    good = token(certs)
    receipt = caller(certs, service.url, {TOKEN_CVR: good}).call(request_xml(), TOKEN_CVR)
    assert landed(payments_dir) == [receipt.file_name] and f"-{TOKEN_CVR}-" in receipt.file_name
    out = capsys.readouterr()
    text_ = caplog.text + out.out + out.err
    assert "PRIVATE KEY" not in text_ and "Assertion" not in text_ and "BEGIN CERTIFICATE" not in text_
    assert good.split(b'ID="')[1].split(b'"')[0].decode() not in text_           # not even the token's id
    assert full_cpr_numbers(text_) == []


# --- a crash between landing and receipt -------------------------------------------------------------------

class Crash(BaseException):
    pass


def test_issue17_P1_a_crash_after_landing_before_the_receipt_lands_nothing_twice(payments_dir, tmp_path):
    def crash():
        raise Crash("killed after landing, before the receipt")

    with pytest.raises(Crash):
        Landing(payments_dir, crash_after_landing=crash).land(request_xml(), CERT_CVR)
    (name,) = landed(payments_dir)
    assert list((payments_dir / "inbound" / "receipts").iterdir()) == []
    first_bytes = (payments_dir / "inbox" / name).read_bytes()
    receipt = Landing(payments_dir).land(request_xml(), CERT_CVR)            # the caller calls again
    assert receipt.file_name == name and landed(payments_dir) == [name]
    assert (payments_dir / "inbox" / name).read_bytes() == first_bytes
    again = Landing(payments_dir).land(request_xml(tid=TID[:-1] + "3"), CERT_CVR)
    assert (again.answer, again.landed) == (receipt.answer, False) and landed(payments_dir) == [name]
    assert not [p for p in (payments_dir / "inbox").iterdir() if p.name.endswith(".part")]

    # the crash again, and the file applied (archived) before the repeat: found in the archive
    with pytest.raises(Crash):
        Landing(payments_dir, crash_after_landing=crash).land(request_xml(mv("M9")), CERT_CVR)
    (second,) = set(landed(payments_dir)) - {name}
    os.replace(payments_dir / "inbox" / second, payments_dir / "archive" / second)
    Landing(payments_dir).land(request_xml(mv("M9")), CERT_CVR)
    assert landed(payments_dir) == [name]

    # a folder that is not a laid-out payments folder is refused, nothing written
    stranger = tmp_path / "elsewhere"
    stranger.mkdir()
    with pytest.raises(InboxLayoutError):
        Landing(stranger).land(request_xml(), CERT_CVR)
    assert list(stranger.iterdir()) == []


# --- end to end: the debtor emulator calls, the payments run applies ------------------------------------------

def _run_payments(stores, box) -> dict[str, int]:
    run_id = ledger.start_run(stores.ledger, "payments")
    payments.ingest(stores, box, run_id)
    counts = payments.record_run_counts(stores.ledger, run_id)
    ledger.finish_run(stores.ledger, run_id, "success")
    return payments.totals(counts)


def test_issue17_P1_payments_delivered_through_the_service_are_applied_exactly_once(certs, payments_dir, service,
                                                                                tmp_path, caplog):
    caplog.set_level(logging.INFO)
    stores = open_stores(make_urls("sqlite", tmp_path, None))
    init_stores(stores)
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    try:
        municipality(stores, vendor="EG", adults=10)
        with emulator.Emulator("EG", emu_db) as emu:
            transfer(stores, emu.url)
        sink = emulator_payments.InboundSink(caller(certs, service.url))
        delivered = emulator_payments.deliver(emu_db, sink, UNTIL, {AGENCY: "EG"}, seed=3,
                                              mix=emulator_payments.Mix(rate=4.0),
                                              municipality_of_agency={AGENCY: CERT_CVR})
        assert len(delivered) > 4                              # EG: every 15 minutes, one call each
        assert landed(payments_dir) == sorted(p.name for p in delivered)
        moved = emulator_payments.movements(emu_db)
        assert {m["file_name"] for m in moved.values()} == {p.name for p in delivered}
        box = FolderInbox(payments_dir / "inbox", own=True)
        totals = _run_payments(stores, box)
        assert totals["files_applied"] == len(delivered) and box.waiting() == []
        with stores.ledger.connect() as conn:
            states = dict(conn.execute(text("SELECT movement_id, state FROM movement")).all())
        assert set(states) == set(moved)
        unknown = {m for m, d in moved.items() if emulator_payments.is_unknown_claim(d["fordring_id"])}
        assert unknown and all(s == "applied" for m, s in states.items() if m not in unknown)
        with stores.fbs.connect() as conn:
            written = conn.execute(text("SELECT COUNT(*) FROM payment")).scalar()
        assert written == len(moved) - len(unknown)

        # the debtor side calls again with the same movements (a lost answer): first receipts, nothing lands
        for path in sorted((payments_dir / "archive").iterdir()):
            receipt = sink.caller.call(path.read_bytes(), CERT_CVR)
            assert receipt.file_name == path.name
        assert landed(payments_dir) == []
        # a second copy that did land (archive moved elsewhere, receipt lost) is applied to nothing
        first = sorted((payments_dir / "archive").iterdir())[0]
        (payments_dir / "inbox" / first.name).write_bytes(first.read_bytes())
        again = _run_payments(stores, box)
        assert again.get("movements_applied", 0) == 0
        with stores.fbs.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM payment")).scalar() == written
        report = payment_reconciliation.reconcile_payments(stores, emulator_payments.movements(emu_db))
        assert report.ok, report.differences
        assert full_cpr_numbers(caplog.text) == []
    finally:
        stores.dispose()


# --- settings and the command line -------------------------------------------------------------------------

def test_issue17_P1_settings_are_checked_and_named(certs, payments_dir):
    for over, named in (({"port": 70000}, "port"), ({"certificate_cvrs": ("29189405",)}, "certificate_cvrs"),
                        ({"token_cvrs": (CERT_CVR,)}, "in both"), ({"sts_cert": None}, "sts_cert"),
                        ({"serviceplatformen_cert": certs["serviceplatformen_key"]}, "serviceplatformen_cert"),
                        ({"token_cvrs": (), "certificate_cvrs": ()}, "no municipality"),
                        ({"tls_key": str(payments_dir / "missing.key")}, "tls_key")):
        with pytest.raises(InboundSettingError, match=named) as exc:
            settings_for(certs, payments_dir, **over)
        assert "PRIVATE KEY" not in str(exc.value)


def _inbound(*args, env=None, **kw) -> subprocess.Popen:
    environ = {**os.environ, "PYTHONPATH": str(HOME / "plugins"), **(env or {})}
    code = "import sys; from fbs_debitor.payments.inbound_service import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_issue17_P1_the_command_line_serves_on_port_0_with_a_port_file_and_refuses_bad_settings(certs, payments_dir,
                                                                                            tmp_path):
    common = ["--tls-cert", certs["server_cert"], "--tls-key", certs["server_key"], "--serviceplatformen-cert",
              certs["serviceplatformen_cert"], "--payments-dir", str(payments_dir)]
    bad = _inbound(*common, "--certificate-cvr", "29189405")
    out, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "certificate_cvrs" in err and "29189405" in err
    port_file = tmp_path / "run" / "inbound.port"
    urls = make_urls("sqlite", tmp_path, None)          # the municipalities admitted: those of the FBS agencies
    stores = open_stores(urls)
    init_stores(stores)
    with stores.fbs.connect() as conn:
        fr.agency(conn)
        conn.commit()
    stores.dispose()
    proc = _inbound(*common, "--port", "0", "--certificate-cvrs-from-fbs", "--port-file", str(port_file),
                    env={"FBS_DEBITOR_VAR": str(tmp_path / "var"), "FBS_DEBITOR_FBS_URL": urls.fbs,
                         "FBS_DEBITOR_LEDGER_URL": urls.ledger})
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        url = f"https://localhost:{int(port_file.read_text())}/service/OIR/DaekningAfskrivningRegistreringAfsend/1"
        receipt = caller(certs, url).call(request_xml(), CERT_CVR)
        assert landed(payments_dir) == [receipt.file_name]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "PRIVATE KEY" not in out + err and full_cpr_numbers(out + err) == []


def test_issue17_P1_emulator_payments_calls_the_service_per_municipality_in_token_and_certificate_mode(
        certs, payments_dir, tmp_path):
    """``sandbox emulator-payments --inbound``: one call per municipality and delivery, the token-mode
    municipality's with a token from the sandbox STS, the other's with the AuthorityContext header."""
    urls = make_urls("sqlite", tmp_path, None)
    stores = open_stores(urls)
    init_stores(stores)
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    try:
        municipality(stores, vendor="EG", adults=6, municipality_cvr=TOKEN_CVR)
        with stores.fbs.connect() as conn:
            fr.agency(conn, "715200", municipality_cvr=CERT_CVR, debtor_vendor="EG",
                      org_unit_uuid="5f1d8a52-0c38-4a43-9f5e-2b7a1c0d9e12",
                      sender_system_uuid="0b7f7a8e-3c1b-4f0e-8a4a-6d2f0e9c1a23")
            for _ in range(6):
                fr.liability(conn, fr.patron(conn, "715200")["patron_id"], "715200")
            conn.commit()
        with emulator.Emulator("EG", emu_db) as emu:
            transfer(stores, emu.url)
        sts = Sts(sts_signing_cert=certs["sts_signing_cert"], sts_signing_key=certs["sts_signing_key"],
                  server_cert=certs["server_cert"], server_key=certs["server_key"], client_ca=certs["ca_cert"],
                  agreements=[(fingerprint(certs["serviceplatformen_cert"]), TOKEN_CVR, FBS_ENTITY_ID)])
        with sts, InboundServer(settings_for(certs, payments_dir)) as service:
            env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_SERVICEPLATFORMEN"}
            env.update(FBS_DEBITOR_FBS_URL=urls.fbs, FBS_DEBITOR_LEDGER_URL=urls.ledger,
                       FBS_DEBITOR_VAR=str(tmp_path / "var"), PYTHONPATH=str(HOME / "plugins"))
            proc = subprocess.run([sys.executable, "-m", "fbs_debitor.sandbox", "emulator-payments", "--db", emu_db,
                                   "--until", UNTIL.isoformat(), "--rate", "4", "--inbound", service.url,
                                   "--pki", str(Path(certs["ca_cert"]).parent), "--sts", sts.url,
                                   "--token-cvr", TOKEN_CVR], env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            assert re.search(r"made (\d+) SF1590_B_01A call\(s\)", proc.stdout)
            assert sts.issued[(TOKEN_CVR, FBS_ENTITY_ID)] == 1           # one token, cached for every call
        names = landed(payments_dir)
        moved = emulator_payments.movements(emu_db)
        assert {m["file_name"] for m in moved.values()} == set(names)
        for cvr, agency in ((TOKEN_CVR, AGENCY), (CERT_CVR, "715200")):
            mine = [n for n in names if f"-{cvr}-" in n]
            assert mine, cvr
            for n in mine:          # each call holds one municipality's movements
                fids = {m.fordring_id for m in files.parse((payments_dir / "inbox" / n).read_bytes()).movements}
                assert {f.split("-")[1] for f in fids} == {agency}
        totals = _run_payments(stores, FolderInbox(payments_dir / "inbox", own=True))
        assert totals["files_applied"] == len(names)
        report = payment_reconciliation.reconcile_payments(stores, moved)
        assert report.ok, report.differences
        out = proc.stdout + proc.stderr
        assert "PRIVATE KEY" not in out and "Assertion" not in out and full_cpr_numbers(out) == []
    finally:
        stores.dispose()


def test_issue19_every_other_command_of_the_cli_starts_without_the_web_framework():
    """The hourly run is ``python -m fbs_debitor transfer``: the service's web framework (FastAPI,
    uvicorn, about half a second to import) is imported only where the service is made."""
    code = ("import sys, fbs_debitor.cli; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(HOME / "plugins")})
    assert out.stdout.strip() == "[]"
