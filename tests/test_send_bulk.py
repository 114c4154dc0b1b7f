"""Issue 19, sending in bulk: the cheaper sending path says and writes exactly what it said before.

* A batch put together from the elements the fingerprints were taken from (``outbox.printed``,
  ``messages.build_batches(written=...)``) is byte for byte the message ``sf1590.create_request``
  writes: merged accounts, accounts split over two batches, parties that differ within one debtor
  account (the merged account keeps the first's), an invalid claim taken out.
* The fingerprint is the one it always was (SHA-256 of the canonical XML of the claim's own
  account), and the keyed prints are HMAC-SHA256 as before.
* SQLite's parameter conversion leaves plain values alone and converts the rest as before.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import replace
from decimal import Decimal

from lxml import etree

from fbs_debitor.claims import fingerprints, messages
from fbs_debitor.claims import sf1590 as mapping
from fbs_debitor.claims.model import PSRM, Account, Address, Claim, Party
from fbs_debitor.core import db
from fbs_debitor.delivery import outbox

AGENCY = {"agency_id": "715100", "sender_system_uuid": "5D1A9D1F-2C7E-4F4B-9C55-2B0C4F6B1A10",
          "org_unit_uuid": "7A9E0E4C-3B1F-4C7D-8E2A-6F5D4C3B2A19"}
AT = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)


def account(lid: int, cpr: str, name: str | None = None, street: str = "Vej 1") -> Account:
    party = Party("ERSTATNING_CPR" if name else "CPR", cpr, lid, name, Address(street, "1234", "By") if name else None)
    claim = Claim(lid, AGENCY["agency_id"], f"715100-{lid}-1", "BIBLIOTEKSGEBYR_OVERSKREDET_LAANETID",
                  Decimal("60.00") + lid, dt.date(2026, 1, 1), dt.date(2026, 2, 1), dt.date(2026, 1, 2),
                  PSRM("BIBLIOTEKSGEBYR", dt.date(2026, 1, 1), dt.date(2026, 1, 2)), f"Gebyr {lid} & <x>",
                  ("linje 1", "Æblegrød ø å"))
    return Account("GEBYR_ERSTATNING", party, party, None, None, (claim,))


def accounts() -> list[Account]:
    out = []
    for i in range(1, 41):
        if i % 5 == 0:
            out.append(account(i, "0101011234"))                      # one debtor, many claims: merged
        elif i % 7 == 0:
            out.append(account(i, "6101019876", "Ann Andersen", street=f"Gade {i}"))   # same key, other address
        else:
            out.append(account(i, f"{(i % 28) + 1:02d}0190{1000 + i:04d}"))
    return out


def both(items: list[Account], batch_size: int) -> tuple[list[bytes], list[bytes]]:
    plain = [b.to_bytes() for b in messages.build_batches(items, AGENCY, batch_size, at=AT)]
    written = {a.claims[0].liability_id: outbox.printed(a)[1] for a in items}
    reused = [b.to_bytes() for b in messages.build_batches(items, AGENCY, batch_size, at=AT, written=written)]
    return plain, reused


def test_a_batch_put_together_from_the_fingerprinted_elements_is_the_same_message_byte_for_byte():
    for size in (1, 3, 7, 16, 500):
        plain, reused = both(accounts(), size)
        assert plain == reused, size
        assert plain


def test_a_merged_account_keeps_its_first_claims_parties_either_way():
    items = [account(1, "6101019876", "Ann", "Gade 1"), account(2, "6101019876", "Ann", "Gade 2"),
             account(3, "6101019876", "Ann", "Gade 3")]
    for size in (1, 2, 3):
        plain, reused = both(items, size)
        assert plain == reused, size
    assert b"Gade 2" not in b"".join(both(items, 3)[0])


def test_an_invalid_claim_is_taken_out_and_the_rest_written_as_before():
    bad = account(3, "0101011234")
    bad = replace(bad, claims=(replace(bad.claims[0], claim_type="NOT_A_TYPE"),))
    items = [account(1, "0201011234"), account(2, "0301011234"), bad, account(4, "0401011234")]
    errors_plain: list = []
    plain = [b.to_bytes() for b in messages.build_batches(items, AGENCY, 10, at=AT, rejected=errors_plain)]
    written = {a.claims[0].liability_id: outbox.printed(a)[1] for a in items}
    errors_reused: list = []
    reused = [b.to_bytes() for b in messages.build_batches(items, AGENCY, 10, at=AT, rejected=errors_reused,
                                                           written=written)]
    assert plain == reused and len(plain) == 1
    assert [e.liability_ids for e in errors_plain] == [e.liability_ids for e in errors_reused] == [[3]]


def test_the_fingerprint_is_the_canonical_xml_of_the_claims_own_account_as_always():
    a = account(7, "6101019876", "Ann & Bo <x>")
    holder = etree.Element("x")
    mapping.account_element(holder, a)
    want = hashlib.sha256(etree.tostring(holder[0], method="c14n")).hexdigest()
    assert outbox.fingerprint(a) == outbox.printed(a)[0] == want


def test_keyed_prints_are_hmac_sha256_as_before():
    secret = b"s" * 32
    parts = ("identity", "CPR", "0101011234", None, "\udcff")
    message = "\x1f".join("" if p is None else str(p) for p in parts).encode("utf-8", "surrogatepass")
    assert fingerprints.keyed(*parts, secret=secret) == hmac.new(secret, message, hashlib.sha256).hexdigest()


def test_sqlite_parameters_convert_only_what_sqlite_cannot_bind_as_it_is():
    plain = {"a": 1, "b": "x", "c": None, "d": 1.5, "e": b"\x00"}
    assert db._sqlite_one(plain) is plain
    at = dt.datetime(2026, 1, 2, 3, 4, 5)
    assert db._sqlite_one({"t": at, "m": Decimal("1.10"), "b": True, "d": dt.date(2026, 1, 2), "s": "x"}) == {
        "t": "2026-01-02 03:04:05", "m": "1.10", "b": 1, "d": "2026-01-02", "s": "x"}
    assert db._sqlite_one((at, 1)) == ("2026-01-02 03:04:05", 1)
    assert db._sqlite_one([1, "x"]) == [1, "x"]
    _, many = db._sqlite_parameters(None, None, "", [{"t": at}, {"t": None}], None, True)
    assert many == [{"t": "2026-01-02 03:04:05"}, {"t": None}]
    assert db._decode_text(b"ok \xff") == "ok \udcff"
