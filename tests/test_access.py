"""Issue 17: Serviceplatformen access per municipality. Each municipality's settings are the
default connection with its own laid over it; each batch goes under its own municipality's
agreement (certificate mode) or token (token mode, from the STS, cached); a municipality without
working access is held, with an operator alarm, while the others are delivered."""

from __future__ import annotations

import json
import logging
import re

import fbs_rows as fr
import pytest
from sqlalchemy import text

from fbs_debitor import cli
from fbs_debitor.airflow import notifications
from fbs_debitor.core import alarms, ledger
from fbs_debitor.delivery import access, serviceplatformen
from fbs_debitor.delivery import outbox as delivery
from fbs_debitor.sandbox import emulator, pki
from fbs_debitor.sandbox.sts import Sts, fingerprint
from fbs_debitor.transfer.run import access_held, run_transfer

CVR_A, CVR_B = "29189404", "19438214"              # two municipalities
ORG_A, ORG_B = "5f1d8a52-0c38-4a43-9f5e-2b7a1c0d9e11", "7a2e9b63-1d49-4b54-8a6f-3c8b2d1e0f22"
AGREEMENT_A = "aaaaaaaa-1111-4111-8111-111111111111"
AGREEMENT_B = "bbbbbbbb-2222-4222-8222-222222222222"
UUIDS = {"user_system_uuid": "22222222-2222-4222-8222-222222222222",
         "user_uuid": "33333333-3333-4333-8333-333333333333"}
SECRETS = re.compile(r"PRIVATE KEY|BEGIN CERTIFICATE|<saml|Assertion ID|MII[A-Za-z0-9+/]{20}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return pki.ensure(tmp_path_factory.mktemp("pki"))


def lookup_of(conns: dict[str, dict]) -> access.Lookup:
    """A lookup over connections given as Airflow's JSON (what AIRFLOW_CONN_<ID> holds)."""
    env = {f"AIRFLOW_CONN_{cid.upper()}": json.dumps(c) for cid, c in conns.items()}
    return access.env_lookup(env)


def default_conn(url: str, certs: dict, **extra) -> dict:
    return {"conn_type": "http", "host": url,
            "extra": {**UUIDS, "service_agreement_uuid": AGREEMENT_A, "client_cert": certs["system_cert"],
                      "client_key": certs["system_key"], "ca_bundle": certs["ca_cert"], "connect_timeout": 2,
                      "operation_timeout": 5, "max_attempts": 2, "backoff_seconds": 0.01, **extra}}


# --- the settings -----------------------------------------------------------------------------------

def test_issue17_a_municipality_gets_the_default_with_its_own_connection_laid_over_it(certs):
    url = "https://127.0.0.1:9/service/OIR/DebitorRegistreringAfsend/1"
    lookup = lookup_of({"serviceplatformen": default_conn(url, certs),
                        f"serviceplatformen_{CVR_B}": {"extra": {"service_agreement_uuid": AGREEMENT_B}}})
    a, b = access.config_for(CVR_A, lookup), access.config_for(CVR_B, lookup)
    assert (a.service_agreement_uuid, a.conn_id, a.municipality_cvr) == (AGREEMENT_A, "serviceplatformen", CVR_A)
    assert (b.service_agreement_uuid, b.conn_id, b.municipality_cvr) == (AGREEMENT_B, f"serviceplatformen_{CVR_B}",
                                                                         CVR_B)
    assert b.endpoint == a.endpoint and b.client_cert == a.client_cert      # the rest from the default
    only_own = lookup_of({f"serviceplatformen_{CVR_B}": default_conn(url, certs, service_agreement_uuid=AGREEMENT_B)})
    assert access.config_for(CVR_B, only_own).service_agreement_uuid == AGREEMENT_B


def test_issue17_a_municipality_without_working_settings_is_named_and_held_not_the_others(certs):
    url = "https://127.0.0.1:9/service/OIR/DebitorRegistreringAfsend/1"
    lookup = lookup_of({f"serviceplatformen_{CVR_A}": default_conn(url, certs),
                        f"serviceplatformen_{CVR_B}": default_conn(url, certs, max_attempts=0)})
    found = access.check({"715100": CVR_A, "726300": CVR_B, "737500": "11111111"}, lookup)
    assert found[CVR_A].mode == "certificate" and found[CVR_A].config is not None
    assert found[CVR_B].mode == "held" and "serviceplatformen_19438214" in found[CVR_B].problem
    assert "max_attempts 0 is outside its allowed range 1-10" in found[CVR_B].problem
    assert "no Serviceplatformen access" in found["11111111"].problem
    clients = access.Clients({"715100": CVR_A, "726300": CVR_B}, lookup)
    with pytest.raises(serviceplatformen.AccessHeld) as held:
        clients.for_agency("726300")
    assert (held.value.cvr, held.value.code) == (CVR_B, "config")
    assert clients.for_agency("715100").config.municipality_cvr == CVR_A
    clients.close()


def test_issue17_credentials_in_a_municipality_connection_are_refused_without_being_echoed(certs):
    url = "https://127.0.0.1:9/service/OIR/DebitorRegistreringAfsend/1"
    lookup = lookup_of({"serviceplatformen": default_conn(url, certs),
                        f"serviceplatformen_{CVR_B}": {"password": "hemmelig-s3cret", "extra": {}}})
    with pytest.raises(serviceplatformen.ConfigError) as exc:
        access.config_for(CVR_B, lookup)
    assert "login and password are not used" in str(exc.value) and "s3cret" not in str(exc.value)
    wrong = lookup_of({"serviceplatformen": default_conn(url, certs),
                       f"serviceplatformen_{CVR_B}": {"extra": {"municipality_cvr": CVR_A}}})
    with pytest.raises(serviceplatformen.ConfigError, match="municipality_cvr must be 19438214"):
        access.config_for(CVR_B, wrong)


# --- two municipalities, one run, over HTTPS ----------------------------------------------------------

def two_municipalities(stores) -> dict[str, list[int]]:
    """Agency 715100 in municipality A, 726300 in B; four adults' fees each."""
    ids: dict[str, list[int]] = {"715100": [], "726300": []}
    with stores.fbs.connect() as conn:
        for agency, cvr, org in (("715100", CVR_A, ORG_A), ("726300", CVR_B, ORG_B)):
            fr.agency(conn, agency, municipality_cvr=cvr, org_unit_uuid=org)
            for i in range(4):
                p = fr.patron(conn, agency, cpr=fr.ADULT_CPR if i % 2 else fr.ADULT2_CPR)
                ids[agency].append(fr.liability(conn, p["patron_id"], agency)["liability_id"])
        conn.commit()
    return ids


@pytest.fixture
def sandbox(certs, emu_db, tmp_path):
    """An STS that knows the system's agreement for municipality A's SF1590_B_01 only, and an
    emulator over HTTPS with mutual TLS that wants a token from A and A's/B's own agreements."""
    sts = Sts(sts_signing_cert=certs["sts_signing_cert"], sts_signing_key=certs["sts_signing_key"],
              server_cert=certs["server_cert"], server_key=certs["server_key"], client_ca=certs["ca_cert"],
              agreements=[(fingerprint(certs["system_cert"]), CVR_A, emulator.ENTITY_ID)])
    emu = emulator.Emulator("KMD_OPUS", emu_db, tls=emulator.tls_context(certs["server_cert"], certs["server_key"],
                                                                       certs["ca_cert"]),
                            municipality_by_org_unit={ORG_A: CVR_A, ORG_B: CVR_B},
                            sts_cert=certs["sts_signing_cert"], token_cvrs=frozenset({CVR_A}),
                            agreements={CVR_B: AGREEMENT_B})
    with sts, emu:
        yield sts, emu


def run_with(stores, lookup) -> tuple[str, access.Clients]:
    with access.clients_for(stores.fbs, lookup) as clients:
        run_id, _ = run_transfer(stores, clients, batch_size=2, data_quality=False)
    return run_id, clients


def test_issue17_two_municipalities_in_one_run_each_call_under_its_own_token_or_agreement(
        stores, sandbox, certs, emu_db, caplog):
    sts, emu = sandbox
    ids = two_municipalities(stores)
    lookup = lookup_of({
        "serviceplatformen": default_conn(emu.url, certs),
        f"serviceplatformen_{CVR_A}": {"extra": {"auth": "saml", "sts_endpoint": sts.url}},
        f"serviceplatformen_{CVR_B}": {"extra": {"service_agreement_uuid": AGREEMENT_B}}})
    caplog.set_level(logging.DEBUG)
    run_id, _ = run_with(stores, lookup)

    assert ledger.get_run(stores.ledger, run_id).status == "success"
    held = {c["fordring_id"] for c in emulator.claims(emu_db)}
    assert held == {f"FBS-{a}-{i}" for a, lids in ids.items() for i in lids}     # every claim, once
    calls = emulator.calls(emu_db)
    by_cvr = {cvr: [c for c in calls if c["municipality_cvr"] == cvr] for cvr in (CVR_A, CVR_B)}
    assert len(by_cvr[CVR_A]) >= 2 and len(by_cvr[CVR_B]) >= 2                   # batches of 2: several calls each
    assert {(c["auth"], c["refused"]) for c in by_cvr[CVR_A]} == {("token", None)}
    assert {(c["auth"], c["agreement"], c["refused"]) for c in by_cvr[CVR_B]} == {("certificate", AGREEMENT_B, None)}
    # one token for A's calls, asked for once (cached until shortly before it expires), never per call
    assert sts.issued[(CVR_A, emulator.ENTITY_ID)] == 1
    assert len({c["agreement"] for c in by_cvr[CVR_A]}) == 1
    assert not SECRETS.search(caplog.text)


def test_issue17_a_municipality_whose_agreement_the_sts_refuses_is_held_while_the_other_is_delivered(
        stores, sandbox, certs, emu_db):
    sts, emu = sandbox
    ids = two_municipalities(stores)
    # B in token mode too, but the STS knows no agreement of B's: refused, held, A delivered
    lookup = lookup_of({
        "serviceplatformen": default_conn(emu.url, certs, auth="saml", sts_endpoint=sts.url),
        f"serviceplatformen_{CVR_B}": {"extra": {}}})
    run_id, clients = run_with(stores, lookup)

    run = ledger.get_run(stores.ledger, run_id)
    assert run.status == "failed" and f"municipality {CVR_B} (sts_refused" in run.error
    assert {c["fordring_id"] for c in emulator.claims(emu_db)} == {f"FBS-715100-{i}" for i in ids["715100"]}
    counts = ledger.run_counts(stores.ledger, run_id)
    assert access_held(counts) == {CVR_B: {"reasons": ["sts_refused"], "agencies": ["726300"], "messages": 4}}
    with stores.ledger.connect() as conn:     # nothing of B recorded: built again by the next run
        recorded = {r[0] for r in conn.execute(text("SELECT liability_id FROM outbox"))}
    assert recorded == set(ids["715100"])
    assert sts.issued[(CVR_B, emulator.ENTITY_ID)] == 0       # refused, asked once, never retried in the run

    # the operator alarm names the municipality; the run that delivers B resolves it
    notifications.access_held(stores.ledger, run_id, access_held(counts))
    (alarm,) = [a for a in alarms.open_alarms(stores.ledger) if a.kind == alarms.ACCESS]
    assert alarm.agency_id == "726300" and f"municipality {CVR_B} held" in alarm.message
    assert alarm.audience == alarms.OPERATOR

    fixed = lookup_of({"serviceplatformen": default_conn(emu.url, certs),
                       f"serviceplatformen_{CVR_B}": {"extra": {"service_agreement_uuid": AGREEMENT_B}}})
    emu.token_cvrs = frozenset()
    run2, _ = run_with(stores, fixed)
    assert ledger.get_run(stores.ledger, run2).status == "success"
    held = [c["fordring_id"] for c in emulator.claims(emu_db)]
    assert sorted(held) == sorted(f"FBS-{a}-{i}" for a, lids in ids.items() for i in lids)   # exactly once
    notifications.access_held(stores.ledger, run2, access_held(ledger.run_counts(stores.ledger, run2)))
    assert not [a for a in alarms.open_alarms(stores.ledger) if a.kind == alarms.ACCESS]
    assert delivery.unconfirmed_total(stores.ledger) == 0


def test_issue17_the_default_alone_is_checked_before_any_work_without_the_agreement_each_municipality_sets(certs):
    """The CLI checks the default connection before it reads FBS: every field it sets, no
    credentials; the agreement UUIDs may be each municipality's own."""
    url = "https://127.0.0.1:9/service/OIR/DebitorRegistreringAfsend/1"
    bare = default_conn(url, certs)
    for name in ("service_agreement_uuid", *UUIDS):
        bare["extra"].pop(name)
    assert access.check_default(lookup_of({"serviceplatformen": bare})).endpoint == url
    assert access.check_default(lookup_of({})) is None
    bad = default_conn(url, certs, operation_timeout=601)
    with pytest.raises(serviceplatformen.ConfigError, match="operation_timeout 601 is outside"):
        access.check_default(lookup_of({"serviceplatformen": bad}))
    with pytest.raises(serviceplatformen.ConfigError, match="not in the default"):
        access.check_default(lookup_of({"serviceplatformen": default_conn(url, certs, municipality_cvr=CVR_A)}))
    leaky = {**default_conn(url, certs), "login": "sp", "password": "hemmelig-s3cret"}
    with pytest.raises(serviceplatformen.ConfigError) as exc:
        access.check_default(lookup_of({"serviceplatformen": leaky}))
    assert "s3cret" not in str(exc.value)


def test_issue17_the_access_command_lists_each_municipality_and_asks_the_sts_for_its_token(
        stores, db_urls, sandbox, certs, monkeypatch, capsys):
    sts, emu = sandbox
    two_municipalities(stores)
    conns = {"serviceplatformen": default_conn(emu.url, certs, service_agreement_uuid=AGREEMENT_B),
             f"serviceplatformen_{CVR_A}": {"extra": {"auth": "saml", "sts_endpoint": sts.url}}}
    for conn_id, conn in conns.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    monkeypatch.setenv("FBS_DEBITOR_FBS_URL", db_urls.fbs)
    monkeypatch.setenv("FBS_DEBITOR_LEDGER_URL", db_urls.ledger)
    assert cli.main(["access", "--tokens"]) == 0
    out = capsys.readouterr().out
    assert f"municipality {CVR_A} (715100): token mode" in out and "token OK" in out
    assert f"municipality {CVR_B} (726300): certificate mode" in out and AGREEMENT_B in out
    assert sts.issued[(CVR_A, emulator.ENTITY_ID)] == 1 and not SECRETS.search(out)
    # a municipality whose token the STS refuses: held, named, exit 2
    monkeypatch.setenv(f"AIRFLOW_CONN_SERVICEPLATFORMEN_{CVR_B}",
                       json.dumps({"extra": {"auth": "saml", "sts_endpoint": sts.url}}))
    assert cli.main(["access", "--tokens"]) == 2
    captured = capsys.readouterr()
    assert f"municipality {CVR_B} (726300): HELD" in captured.out and "NoServiceAgreement" in captured.out
