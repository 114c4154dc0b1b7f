"""The debtor-system emulator over real HTTP on loopback: validation, idempotency (also across a
restart), vendor rules M3/I3, RetFordringTilstand, fault injection and mutual TLS."""

from __future__ import annotations

import copy
import http.client
import ssl
import time
import urllib.error
import urllib.request
from decimal import Decimal

import fbs_rows as fr
import pytest
from certs import certificates
from claim_rows import AGENCY, REPLACEMENT_FID, batch_root
from lxml import etree

from fbs_debitor.claims import messages
from fbs_debitor.claims.sf1590 import NS_DR, NS_F, NS_IC
from fbs_debitor.sandbox import emulator

SOAP = emulator.SOAP_NS
ACTION = emulator.ACTION_PREFIX
def envelope(payload: etree._Element, header: bool = True) -> bytes:
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP})
    if header:
        ic = etree.SubElement(etree.SubElement(env, f"{{{SOAP}}}Header"), f"{{{NS_IC}}}InvocationContext",
                              nsmap={"ic": NS_IC})
        for name, value in (("ServiceAgreementUUID", "11111111-1111-4111-8111-111111111111"),
                            ("UserSystemUUID", "22222222-2222-4222-8222-222222222222"),
                            ("UserUUID", "33333333-3333-4333-8333-333333333333"),
                            ("ServiceUUID", "e354a6d1-500b-49c6-916a-510623e12fba")):
            etree.SubElement(ic, f"{{{NS_IC}}}{name}").text = value
    etree.SubElement(env, f"{{{SOAP}}}Body").append(copy.deepcopy(payload))
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def post(url: str, body: bytes, operation: str = "OpretDebitorkonto", timeout: float = 10,
         context: ssl.SSLContext | None = None) -> tuple[int, etree._Element | bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{ACTION}{operation}"'})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310 - loopback
            status, data, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        status, data, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
    return status, etree.fromstring(data) if ctype.startswith("text/xml") else data


def receipts(root: etree._Element) -> dict[str, dict]:
    out = {}
    for k in root.iter(f"{{{NS_DR}}}Kvittering"):
        fields = {etree.QName(c).localname: c.text for c in k}
        out[fields["Noegle"]] = fields
    return out


def fault_of(root) -> tuple[str, str]:
    fault = root.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
    assert fault is not None
    return fault.findtext("faultcode"), fault.findtext("faultstring")


def change_request(*changes: tuple[str, str, str, dict]) -> etree._Element:
    """RetFordringTilstand with (AendringID, FordringID, kind, values) changes."""
    dr = lambda n: f"{{{NS_DR}}}{n}"  # noqa: E731
    f = lambda n: f"{{{NS_F}}}{n}"  # noqa: E731
    root = etree.Element(dr("RetFordringTilstandAnmodning"), nsmap={None: NS_DR, "f": NS_F})
    head = etree.SubElement(root, dr("Hovedoplysninger"))
    etree.SubElement(head, f("TransaktionsId")).text = "9e0c1d2a-3b4c-4d5e-8f60-718293a4b5c6"
    etree.SubElement(head, f("TransaktionsTid")).text = "2026-11-20T10:00:00+00:00"
    sender = etree.SubElement(root, dr("Afsender"))
    etree.SubElement(sender, f("FagsystemUUID")).text = "91aa26ad-cab7-4e83-8230-9bf35a076a55"
    etree.SubElement(sender, f("ItSystemInstansUUID")).text = AGENCY["sender_system_uuid"]
    etree.SubElement(sender, f("OrganisatoriskEnhedUUID")).text = AGENCY["org_unit_uuid"]
    for aid, fid, kind, values in changes:
        ch = etree.SubElement(root, dr("FordringAendring"))
        etree.SubElement(ch, dr("AendringID")).text = aid
        etree.SubElement(ch, dr("FordringID")).text = fid
        what = etree.SubElement(ch, dr(kind))
        for name, value in values.items():
            if name == "DebitorkontoIdentifikation":
                party = etree.SubElement(what, dr(name))
                etree.SubElement(party, f("CPRNummer")).text = value
            else:
                etree.SubElement(what, dr(name)).text = value
    assert messages.schema(emulator.SCHEMA_FILE).validate(root), messages.schema(emulator.SCHEMA_FILE).error_log
    return root


# --- OpretDebitorkonto ---------------------------------------------------------------------------

def test_valid_batch_is_accepted_and_stored(db_urls):
    with emulator.Emulator("KMD_OPUS", db_urls.ledger) as emu:
        status, answer = post(emu.url, envelope(batch_root()))
    assert status == 200
    assert messages.schema(emulator.SCHEMA_FILE).validate(answer.find(f"{{{SOAP}}}Body")[0])
    got = receipts(answer)
    assert set(got) == {"FBS-715100-1", "FBS-715100-2", "FBS-715100-4"}
    assert {r["StatusKode"] for r in got.values()} == {"MODTAGET"}
    assert all(r["DebitorReference"].startswith("KMD_OPUS-") for r in got.values())
    stored = emulator.claims(db_urls.ledger)
    assert [c["fordring_id"] for c in stored] == sorted(got)
    assert {c["fordring_id"]: c["amount"] for c in stored}["FBS-715100-4"] == Decimal("1234.50")
    assert {c["status"] for c in stored} == {"ACTIVE"}
    assert fr.ADULT_CPR not in repr(stored) and fr.ADULT2_CPR not in repr(stored)


@pytest.mark.slow
def test_repeated_batch_gets_identical_answers_and_no_duplicates_also_after_restart(db_urls):
    body = envelope(batch_root())
    with emulator.Emulator("KMD_OPUS", db_urls.ledger) as emu:
        first = receipts(post(emu.url, body)[1])
        assert receipts(post(emu.url, body)[1]) == first
    with emulator.Emulator("KMD_OPUS", db_urls.ledger, accepted_claim_types=set()) as emu:
        # another mapping now, but a known FordringID still gets its FIRST answer
        assert receipts(post(emu.url, body)[1]) == first
    assert len(emulator.claims(db_urls.ledger)) == 3


def test_invalid_body_missing_header_and_wrong_action_get_client_faults(emu_db):
    bad = batch_root()
    bad.find(f".//{{{NS_DR}}}Beloeb").text = "-5.00"
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        status, answer = post(emu.url, envelope(bad))
        assert status == 500 and fault_of(answer)[0] == "soap:Client"
        assert "-5.00" not in fault_of(answer)[1]
        status, answer = post(emu.url, envelope(batch_root(), header=False))
        assert status == 500 and "InvocationContext" in fault_of(answer)[1]
        status, answer = post(emu.url, envelope(batch_root()), operation="RetFordringTilstand")
        assert status == 500 and "SOAPAction" in fault_of(answer)[1]
        status, answer = post(emu.url, b"<not-xml")
        assert status == 500 and fault_of(answer)[0] == "soap:Client"
    assert emulator.claims(emu_db) == []


def test_doctype_and_billion_laughs_get_a_fault_without_expansion(emu_db):
    lol = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
           + b"".join(b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10 if i > 1 else b"&lol;" * 10)
                      for i in range(1, 10))
           + b']><soap:Envelope xmlns:soap="' + SOAP.encode() + b'"><soap:Body><x>&lol9;</x></soap:Body>'
           + b"</soap:Envelope>")
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        started = time.monotonic()
        status, answer = post(emu.url, lol)
        assert time.monotonic() - started < 2
        assert status == 500 and fault_of(answer)[0] == "soap:Client"
        assert len(etree.tostring(answer)) < 2000
        # also a plain DOCTYPE in front of an otherwise valid request
        doctype = b"<!DOCTYPE x>" + envelope(batch_root()).split(b"?>", 1)[1]
        status, answer = post(emu.url, doctype)
        assert status == 500 and "DTD" in fault_of(answer)[1]
    assert emulator.claims(emu_db) == []


@pytest.mark.parametrize("vendor, expected", [("PRISME", "AFVIST"), ("KMD_OPUS", "MODTAGET"), ("EG", "MODTAGET")])
def test_I3_prisme_rejects_replacement_cpr_claims(emu_db, vendor, expected):
    with emulator.Emulator(vendor, emu_db) as emu:
        got = receipts(post(emu.url, envelope(batch_root()))[1])
    assert got[REPLACEMENT_FID]["StatusKode"] == expected
    if expected == "AFVIST":
        assert got[REPLACEMENT_FID]["FejlKode"] == "I3_ERSTATNINGS_CPR"
        assert "DebitorReference" not in got[REPLACEMENT_FID]
    assert got["FBS-715100-1"]["StatusKode"] == "MODTAGET"
    stored = {c["fordring_id"] for c in emulator.claims(emu_db)}
    assert (REPLACEMENT_FID in stored) == (expected == "MODTAGET")


def test_M3_unmapped_claim_type_is_rejected(emu_db):
    with emulator.Emulator("EG", emu_db, accepted_claim_types={"BIBLIOTEKSGEBYR_OVERSKREDET_LAANETID"}) as emu:
        got = receipts(post(emu.url, envelope(batch_root()))[1])
    assert got[REPLACEMENT_FID]["StatusKode"] == "AFVIST"          # a compensation: not mapped
    assert got[REPLACEMENT_FID]["FejlKode"] == "M3_UMAPPET_KRAVTYPE"
    assert got["FBS-715100-1"]["StatusKode"] == "MODTAGET"
    assert {c["fordring_id"] for c in emulator.claims(emu_db)} == {"FBS-715100-1", "FBS-715100-4"}


# --- RetFordringTilstand -------------------------------------------------------------------------

def test_ret_fordring_tilstand_applies_the_four_changes_and_guards_them_U1_U2_U3(db_urls):
    fee, company = "FBS-715100-1", "FBS-715100-4"
    with emulator.Emulator("KMD_OPUS", db_urls.ledger) as emu:
        post(emu.url, envelope(batch_root()))
        req = change_request(
            ("1:2", fee, "Nedskrivning", {"NytBeloeb": "80.00"}),             # above 60.00: rejected
            ("1:3", fee, "Nedskrivning", {"NytBeloeb": "40.00"}),
            ("1:4", fee, "Identifikationsaendring", {"DebitorkontoIdentifikation": fr.ADULT2_CPR}),
            ("4:2", company, "Tilbagebetaling", {"Beloeb": "100.00"}),          # a fee: rejected (U3)
            ("2:2", "FBS-715100-2", "Tilbagebetaling", {"Beloeb": "99999.00"}),  # above the claim: rejected
            ("2:3", "FBS-715100-2", "Tilbagebetaling", {"Beloeb": "10.00"}),
            ("4:3", company, "Annullering", {"Aarsag": "betalt i skranken"}),
            ("4:4", company, "Nedskrivning", {"NytBeloeb": "10.00"}),          # cancelled: rejected
            ("4:5", company, "Annullering", {}),                               # cancelled: rejected
            ("9:2", "FBS-715100-9", "Annullering", {}),                        # unknown: rejected
        )
        status, answer = post(emu.url, envelope(req), operation="RetFordringTilstand")
        assert status == 200
        got = receipts(answer)
        assert {k: v["StatusKode"] for k, v in got.items()} == {
            "1:2": "AFVIST", "1:3": "MODTAGET", "1:4": "MODTAGET", "4:2": "AFVIST", "2:2": "AFVIST",
            "2:3": "MODTAGET", "4:3": "MODTAGET", "4:4": "AFVIST", "4:5": "AFVIST", "9:2": "AFVIST"}
        assert got["4:2"]["FejlKode"] == "U3_KUN_ERSTATNING"
        assert got["2:2"]["FejlKode"] == "TILBAGEBETALING_FOR_STOR"
        assert got["1:2"]["FejlKode"] == "NEDSKRIVNING_IKKE_LAVERE"
        assert got["4:4"]["FejlKode"] == got["4:5"]["FejlKode"] == "FORDRING_ANNULLERET"
        assert got["9:2"]["FejlKode"] == "UKENDT_FORDRING"
        # repeated AendringIDs get their first answers, nothing is applied twice
        assert receipts(post(emu.url, envelope(req), operation="RetFordringTilstand")[1]) == got
    stored = {c["fordring_id"]: c for c in emulator.claims(db_urls.ledger)}
    assert stored[fee]["amount"] == Decimal("40.00") and stored[fee]["status"] == "ACTIVE"
    assert stored[fee]["identification"] == fr.ADULT2_CPR[:6] + "-****"
    assert stored[company]["status"] == "CANCELLED" and stored[company]["amount"] == Decimal("1234.50")
    assert [(c["kind"], c["amount"]) for c in stored[company]["changes"]] == [("Annullering", None)]
    assert [(c["kind"], c["amount"]) for c in stored["FBS-715100-2"]["changes"]] == [
        ("Tilbagebetaling", Decimal("10.00"))]
    assert [c["aendring_id"] for c in stored[fee]["changes"]] == ["1:3", "1:4"]


# --- faults --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["http500", "http503", "soapfault", "drop", pytest.param("slow", marks=pytest.mark.slow)])
def test_each_fault_kind_at_rate_one(emu_db, kind):
    with emulator.Emulator("KMD_OPUS", emu_db, fault_rate=1.0, fault_kinds=(kind,), slow_seconds=0.6) as emu:
        started = time.monotonic()
        if kind == "drop":
            with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
                post(emu.url, envelope(batch_root()))
        elif kind == "slow":
            with pytest.raises((TimeoutError, urllib.error.URLError)):
                post(emu.url, envelope(batch_root()), timeout=0.2)
            started = time.monotonic()
            status, answer = post(emu.url, envelope(batch_root()), timeout=5)
            assert status == 200 and time.monotonic() - started >= 0.6
        else:
            status, answer = post(emu.url, envelope(batch_root()))
            assert status == {"http500": 500, "http503": 503, "soapfault": 500}[kind]
            if kind == "soapfault":
                assert fault_of(answer)[0] == "soap:Server"
            else:
                assert isinstance(answer, bytes)
        assert emu.faults[kind] == emu.request_count >= 1
    # faults other than "slow" strike before the request is processed
    assert len(emulator.claims(emu_db)) == (3 if kind == "slow" else 0)


@pytest.mark.slow
def test_drop_after_store_stores_although_the_client_saw_no_answer(emu_db):
    body = envelope(batch_root())
    with emulator.Emulator("PRISME", emu_db, fault_rate=1.0, fault_kinds=("drop_after_store",)) as emu:
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
            post(emu.url, body)
    assert {c["fordring_id"] for c in emulator.claims(emu_db)} == {"FBS-715100-1", "FBS-715100-4"}
    with emulator.Emulator("PRISME", emu_db) as emu:   # the client's retry: the first answers
        got = receipts(post(emu.url, body)[1])
    assert got["FBS-715100-1"]["StatusKode"] == "MODTAGET"
    assert got[REPLACEMENT_FID]["FejlKode"] == "I3_ERSTATNINGS_CPR"
    assert len(emulator.claims(emu_db)) == 2


def test_fault_choice_is_seeded_and_follows_the_rate(emu_db):
    def pattern(seed):
        e = emulator.Emulator("EG", emu_db, fault_rate=0.3, fault_kinds=("http500", "drop"), seed=seed)
        return [e.choose_fault() for _ in range(200)]

    assert pattern(1) == pattern(1) != pattern(2)
    assert 30 <= sum(f is not None for f in pattern(1)) <= 90


def test_emulator_refuses_non_loopback_and_unknown_settings(emu_db):
    with pytest.raises(ValueError):
        emulator.Emulator("KMD_OPUS", emu_db, host="0.0.0.0")  # noqa: S104 - that is the point
    with pytest.raises(ValueError):
        emulator.Emulator("NAVISION", emu_db)
    with pytest.raises(ValueError):
        emulator.Emulator("EG", emu_db, fault_rate=0.5, fault_kinds=("meteor",))


def test_masking_and_logs_never_show_a_full_cpr(emu_db, caplog):
    assert fr.ADULT_CPR not in emulator.mask_payload(envelope(batch_root()))
    caplog.set_level("DEBUG", logger="fbs_debitor.sandbox.emulator")
    with emulator.Emulator("PRISME", emu_db) as emu:
        post(emu.url, envelope(batch_root()))
    assert caplog.records
    assert fr.ADULT_CPR not in caplog.text and fr.ADULT2_CPR not in caplog.text
    assert all(r.levelname != "INFO" or "Debitorkonto>" not in r.getMessage() for r in caplog.records)


# --- mutual TLS with throwaway certificates ------------------------------------------------------

def test_mutual_tls_accepts_the_right_client_certificate_and_refuses_others(emu_db, tmp_path):
    p = certificates(tmp_path)
    server = emulator.tls_context(p["server_cert"], p["server_key"], client_ca=p["ca_cert"])

    def client(label: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=p["ca_cert"])
        if label:
            ctx.load_cert_chain(p[f"{label}_cert"], p[f"{label}_key"])
        return ctx

    with emulator.Emulator("EG", emu_db, tls=server) as emu:
        assert emu.url.startswith("https://127.0.0.1:")
        status, answer = post(emu.url, envelope(batch_root()), context=client("client"))
        assert status == 200 and receipts(answer)["FBS-715100-1"]["StatusKode"] == "MODTAGET"
        for label in (None, "rogue"):
            with pytest.raises(OSError):     # SSLError, reset or disconnect, depending on the TLS version
                post(emu.url, envelope(change_request(("1:9", "FBS-715100-1", "Annullering", {}))),
                     operation="RetFordringTilstand", context=client(label))
        # a client that does not trust the server's CA refuses the server
        with pytest.raises(OSError):
            post(emu.url, envelope(batch_root()), context=ssl.create_default_context())
    assert {c["status"] for c in emulator.claims(emu_db)} == {"ACTIVE"}


def test_serve_cli_starts_and_stops_on_ctrl_c(tmp_path, monkeypatch, capsys):
    def interrupt(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(emulator.time, "sleep", interrupt)
    assert emulator.serve(["--vendor", "PRISME", "--port", "0", "--db", f"sqlite:///{tmp_path / 'e.sqlite'}",
                           "--fault-rate", "0.2", "--fault-kinds", "http503,drop", "--accept",
                           "BIBLIOTEKSGEBYR_OVERSKREDET_LAANETID"]) == 0
    out = capsys.readouterr().out
    assert "debtor emulator (PRISME) on http://127.0.0.1:" in out and "stopped" in out
    with pytest.raises(SystemExit):
        emulator.serve(["--vendor", "NAVISION"])


def test_wsdl_and_its_schemas_are_served_with_the_emulators_address(emu_db):
    with emulator.Emulator("KMD_OPUS", emu_db) as emu:
        with urllib.request.urlopen(emu.url + "?wsdl", timeout=5) as resp:  # noqa: S310 - loopback
            wsdl = etree.fromstring(resp.read())
        address = wsdl.find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
        assert address.get("location") == emu.url
        base = emu.url.rsplit("/", 1)[0]
        with urllib.request.urlopen(f"{base}/SF1590_Faelles.xsd", timeout=5) as resp:  # noqa: S310 - loopback
            assert b"CPRNummerType" in resp.read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/..%2F..%2Fpyproject.toml", timeout=5)  # noqa: S310 - loopback


def test_a_zeep_client_built_from_the_served_wsdl_gets_answers(emu_db):
    zeep = pytest.importorskip("zeep")
    with emulator.Emulator("PRISME", emu_db) as emu:
        client = zeep.Client(emu.url + "?wsdl")
        service = client.create_service(
            "{urn:fbs-debitor:modelled:sf1590:DebitorRegistreringAfsend:1:wsdl}DebitorRegistreringAfsendBinding",
            emu.url)
        header = etree.fromstring(envelope(batch_root())).find(f".//{{{NS_IC}}}InvocationContext")
        request = client.get_element(f"{{{NS_DR}}}OpretDebitorkontoAnmodning").parse(batch_root(), client.wsdl.types)
        answer = service.OpretDebitorkonto(_soapheaders=[header], **{k: request[k] for k in request})
    assert {k.Noegle: (k.StatusKode, k.FejlKode) for k in answer.Kvittering} == {
        "FBS-715100-1": ("MODTAGET", None), REPLACEMENT_FID: ("AFVIST", "I3_ERSTATNINGS_CPR"),
        "FBS-715100-4": ("MODTAGET", None)}


# --- payment files: a later delivery with the same seed (issue 16 item 5) ----------------------------

def test_item5_a_second_payment_delivery_with_the_default_seed_twenty_minutes_later_works(emu_db, tmp_path):
    """Issue 16 item 5: a second ``emulator-payments`` with the default seed (11) failed with an
    IntegrityError on emu_movement.movement_id, so ``./run main`` failed when run again 20 minutes
    or more later. Each delivery draws new, unique movement ids; a repeat of the same call
    delivers nothing twice. (Without reversals the old code's draws lined up exactly, as they did
    for the demo's thousands of claims: the later call drew the earlier call's ids again.)"""
    import datetime as dt

    from fbs_debitor.sandbox import emulator_payments

    with emulator.Emulator("EG", emu_db) as emu:
        assert post(emu.url, envelope(batch_root()))[0] == 200
    vendors, seed = {AGENCY["agency_id"]: "EG"}, 11           # EG delivers every 15 minutes
    mix = emulator_payments.Mix(reversals=0)
    until = dt.datetime(2026, 11, 20, 12, 0).astimezone()
    first = emulator_payments.deliver(emu_db, tmp_path / "inbox", until, vendors, seed, mix)
    after_first = emulator_payments.movements(emu_db)
    assert first and after_first
    again = emulator_payments.deliver(emu_db, tmp_path / "inbox", until, vendors, seed, mix)
    assert again == [] and emulator_payments.movements(emu_db) == after_first
    later = emulator_payments.deliver(emu_db, tmp_path / "inbox", until + dt.timedelta(minutes=20), vendors, seed,
                                      mix)
    assert later and not set(later) & set(first)
    delivered = emulator_payments.movements(emu_db)
    new = set(delivered) - set(after_first)
    assert new and {delivered[m]["file_name"] for m in new} == {f.name for f in later}


def test_a_fordring_id_repeated_within_one_request_gets_its_first_answer_and_is_stored_once(db_urls):
    """Issue 19: the emulator reads and writes a whole batch at once; a key that comes twice in one
    request is still answered with its first answer, and one debtor account holds the claims of
    the same parties."""
    root = batch_root()
    first_account = root.find(f"{{{NS_DR}}}Debitorkonto")
    root.append(copy.deepcopy(first_account))                   # FBS-715100-1 a second time, same account
    with emulator.Emulator("KMD_OPUS", db_urls.ledger) as emu:
        status, answer = post(emu.url, envelope(root))
    assert status == 200
    kvitteringer = [{etree.QName(c).localname: c.text for c in k} for k in answer.iter(f"{{{NS_DR}}}Kvittering")]
    assert [k["Noegle"] for k in kvitteringer] == ["FBS-715100-1", "FBS-715100-2", "FBS-715100-4", "FBS-715100-1"]
    assert kvitteringer[3] == kvitteringer[0] and kvitteringer[0]["StatusKode"] == "MODTAGET"
    stored = emulator.claims(db_urls.ledger)
    assert sorted(c["fordring_id"] for c in stored) == ["FBS-715100-1", "FBS-715100-2", "FBS-715100-4"]
