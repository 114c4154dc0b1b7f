"""What the SF1590 schema can carry (issue 16 items 1, 3, 5, 9): the limits ``claims.sf1590``
declares are the schema files' own, ``claims.carriage`` says what cannot travel without altering
anything, amounts are written exactly or not at all, and one account that cannot be written
never holds back the rest of its batch."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from claim_rows import AGENCY, AT, TODAY, row
from fbs_rows import ADULT_CPR
from lxml import etree

from fbs_debitor.claims import carriage, messages
from fbs_debitor.claims import model as C
from fbs_debitor.claims import sf1590 as mapping
from fbs_debitor.claims.builder import build
from fbs_debitor.core.settings import XSD_DIR

XS = "{http://www.w3.org/2001/XMLSchema}"


def xsd(filename: str) -> etree._Element:
    return etree.parse(str(XSD_DIR / filename)).getroot()


def simple_type(root, name: str) -> etree._Element:
    (found,) = root.iterfind(f"{XS}simpleType[@name='{name}']")
    return found


def facet(restriction_holder, name: str) -> str:
    (found,) = restriction_holder.iter(f"{XS}{name}")
    return found.get("value")


def element(root, complex_type: str, name: str) -> etree._Element:
    (holder,) = [t for t in root.iter(f"{XS}complexType") if t.get("name") == complex_type]
    (found,) = [e for e in holder.iter(f"{XS}element") if e.get("name") == name]
    return found


# --- the limits are the schema's ------------------------------------------------------------------

def test_text_limits_are_the_facets_of_the_schema_files():
    """sf1590.TEXT_MAX, MAX_LINES, the amount's digits and the identifier patterns, read back from
    include/xsd: a schema swapped in with other limits fails here until the mapping follows."""
    faelles, dr = xsd("SF1590_Faelles.xsd"), xsd("DebitorRegistreringAfsend.xsd")
    tekst = int(facet(simple_type(faelles, "TekstType"), "maxLength"))
    lang = int(facet(simple_type(faelles, "LangTekstType"), "maxLength"))
    typed = {  # place -> (schema root, complex type, element)
        "name": [(faelles, "PartType", "Navn"), (dr, "MindreaarigType", "Navn")],
        "street": [(faelles, "AdresseType", "AdresseTekst")],
        "city": [(faelles, "AdresseType", "By")],
        "line": [(dr, "FordringTekstType", "Linje")],
        "reason": [(dr, "FordringAendringType", "Aarsag")],
        "specification": [(dr, "FordringType", "SpecifikationTekst")],
    }
    for place, where in typed.items():
        for root, ctype, name in where:
            kind = element(root, ctype, name).get("type")
            assert mapping.TEXT_MAX[place] == {"f:TekstType": tekst, "f:LangTekstType": lang}[kind], (place, name)
    assert mapping.TEXT_MAX["postal_code"] == int(facet(element(faelles, "AdresseType", "Postnummer"), "maxLength"))
    assert set(mapping.TEXT_MAX) == set(typed) | {"postal_code"}
    assert mapping.MAX_LINES == int(element(dr, "FordringTekstType", "Linje").get("maxOccurs"))
    beloeb = simple_type(faelles, "BeloebType")
    assert mapping.AMOUNT_TOTAL_DIGITS == int(facet(beloeb, "totalDigits"))
    assert mapping.AMOUNT_FRACTION_DIGITS == int(facet(beloeb, "fractionDigits"))
    assert facet(beloeb, "minExclusive") == "0"
    patterns = {C.CPR: "CPRNummerType", C.REPLACEMENT_CPR: "ErstatningCPRNummerType", C.CVR: "CVRNummerType",
                "p_number": "PNummerType", "ean": "EANNummerType"}
    assert {k: facet(simple_type(faelles, t), "pattern") for k, t in patterns.items()} == mapping.ID_PATTERNS


# --- texts ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, da, en", [
    ("ab\x07c", "styretegn U+0007 på plads 3", "control character U+0007 at position 3"),
    ("\x00", "styretegn U+0000 på plads 1", "control character U+0000 at position 1"),
    ("a\x0bb\x0c", "styretegn U+000B på plads 2", "control character U+000B at position 2"),
    ("Ø\udcc3", "byte 0xC3, som ikke er UTF-8, på plads 2", "byte 0xC3 that is not UTF-8 at position 2"),
    ("\udbff", "enligt surrogat U+DBFF på plads 1", "lone surrogate U+DBFF at position 1"),
    ("x\uffff", "ikke-tegnet U+FFFF på plads 2", "non-character U+FFFF at position 2"),
])
def test_item1_characters_xml_cannot_carry_are_named_by_code_point_and_position(value, da, en):
    assert carriage.text_fault(value, "name") == carriage.Fault(da, en)
    with pytest.raises(ValueError):      # what lxml would have raised for the whole run
        etree.SubElement(etree.Element("x"), "y").text = value


@pytest.mark.parametrize("value", ["Søren Ærø\tÅ", "linje\nlinje\r", "\x7f\x85\x9f", "😀 \U0010fffd", "\ufdd0\ufffd",
                                   " Karen "])
def test_item1_characters_xml_carries_travel_as_they_are(value):
    """XML 1.0's Char includes tab, newlines, C1 controls and every plane: they travel unaltered
    and the message holding them is schema-valid."""
    assert carriage.text_fault(value, "name") is None
    result = build(row(d_cpr=None, d_name=value), None, TODAY)
    assert result.problem is None and result.account.identification.name == value
    (batch,) = messages.build_batches([result.account], AGENCY, batch_size=10, at=AT)
    sent = etree.fromstring(batch.to_bytes())
    assert [e.text for e in sent.iter(f"{{{mapping.NS_F}}}Navn")] == [value, value]


def test_item2_length_is_counted_in_characters_against_the_place():
    assert carriage.text_fault("Æ" * 200, "name") is None
    assert carriage.text_fault("Æ" * 201, "name") == carriage.Fault("201 tegn, højst 200",
                                                                   "201 characters, at most 200")
    assert carriage.text_fault("8" * 11, "postal_code").en == "11 characters, at most 10"
    assert carriage.text_fault("x" * 5000, None) is None            # a part: characters only
    assert carriage.text_fault(8000, "postal_code").en == "is not text (int)"


# --- amounts ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (Decimal("12.340"), Decimal("12.34")), (12.34, Decimal("12.34")), (60, Decimal("60")), ("0.1", Decimal("0.1")),
    (0.30000000000000004, Decimal("0.30000000000000004")),      # a float is read as it is, not tidied
])
def test_item9_amounts_are_read_as_the_exact_number_they_are(value, expected):
    assert carriage.read_amount(value) == expected


@pytest.mark.parametrize("value", [None, "", "12,34", "NaN", "-Infinity", Decimal("sNaN"), float("nan"), True, [1]])
def test_item9_what_is_no_finite_number_is_not_carried(value):
    with pytest.raises(carriage.NotCarried) as info:
        carriage.read_amount(value)
    assert info.value.fault.en == "cannot be read as a number"


@pytest.mark.parametrize("value, fault", [
    ("12.345", "3 decimals, at most 2 (øre); never rounded"),
    ("0.30000000000000004", "17 decimals, at most 2 (øre); never rounded"),
    ("1234567890123", "13 digits before the decimal point, at most 10"),
    ("10000000000.00", "11 digits before the decimal point, at most 10"),
    ("12.340", None), ("9999999999.99", None), ("0.01", None), ("1E+3", None), ("120E-1", None),
])
def test_item9_exact_to_the_oere_and_inside_the_range_or_a_fault(value, fault):
    found = carriage.amount_fault(Decimal(value))
    assert (found.en if found else None) == fault


@pytest.mark.parametrize("value, text", [(Decimal("60"), "60.00"), (Decimal("12.340"), "12.34"),
                                         (Decimal("1E+3"), "1000.00"), (Decimal("9999999999.99"), "9999999999.99")])
def test_item3_amounts_are_written_exactly_with_their_oere(value, text):
    assert mapping.amount_text(value) == text


@pytest.mark.parametrize("value", [Decimal("12.345"), Decimal("0.001"), Decimal("NaN"), Decimal("Infinity"), 12.5])
def test_item3_an_amount_that_would_have_to_be_rounded_is_never_written(value):
    """sf1590._text wrote Decimal with :.2f, which rounds (12.345 went as 12.34)."""
    with pytest.raises(mapping.InexactAmount):
        mapping.amount_text(value)


def claim_with(amount: Decimal) -> C.Account:
    account = build(row(), None, TODAY).account
    claim = C.Claim(**{**account.claims[0].__dict__, "amount": amount})
    return C.Account(account.account_type, account.identification, account.responsible, None, None, (claim,))


def test_item3_a_creation_with_an_inexact_amount_is_never_written():
    with pytest.raises(mapping.InexactAmount, match="claim FBS-715100-501"):
        mapping.create_request([claim_with(Decimal("12.345"))], messages.BATCH_NAMESPACE, AT,
                               AGENCY["sender_system_uuid"], AGENCY["org_unit_uuid"])


@pytest.mark.parametrize("kind, element", [(C.WRITE_DOWN, "NytBeloeb"), (C.REPAYMENT, "Beloeb")])
def test_item3_change_amounts_are_written_exactly_or_not_at_all_U1_U3(kind, element):
    """RetFordringTilstand's write-down and repayment amounts: 12.30 as 12.30, 12.345 never as 12.34."""
    def request(amount):
        change = C.Change("501:2", 501, "FBS-715100-501", kind, amount=amount)
        return mapping.change_request([change], messages.BATCH_NAMESPACE, AT, AGENCY["sender_system_uuid"],
                                      AGENCY["org_unit_uuid"])

    root = request(Decimal("12.3"))
    assert [e.text for e in root.iter(f"{{{mapping.NS_DR}}}{element}")] == ["12.30"]
    messages.validate(root)
    with pytest.raises(mapping.InexactAmount, match="change 501:2"):
        request(Decimal("12.345"))


# --- batches ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, -1, True, 2.5, None])
def test_item5_batch_size_below_one_is_refused_at_once(size):
    """build_batches looped forever with batch_size 0 or -1; now it refuses when called."""
    with pytest.raises(ValueError, match=r"batch_size must be a whole number >= 1"):
        messages.build_batches([build(row(), None, TODAY).account], AGENCY, size)


def test_item1_one_row_with_a_control_character_does_not_stop_the_others_in_its_batch():
    """Issue 16 item 1: rows of one page, one with a NUL in the author and one with U+000B in a
    replacement-CPR patron's street: those two are their own findings; the others go in one
    schema-valid batch (before, the first raised ValueError in the builder's lxml call and the
    whole transfer failed)."""
    rows = [row(liability_id=1, number="G1"),
            row(liability_id=2, number="G2", author="Ander\x00sen"),
            row(liability_id=3, number="G3", d_patron_id=13, b_patron_id=13, d_cpr=None, d_street="Vej\x0b1"),
            row(liability_id=4, number="G4", d_patron_id=14, b_patron_id=14, d_cpr=None)]
    results = [build(r, None, TODAY) for r in rows]
    assert [(r.problem.liability_id, r.problem.code) for r in results if r.problem] == [
        (2, "F6_text_cannot_be_sent"), (3, "F1_text_cannot_be_sent")]
    (batch,) = messages.build_batches([r.account for r in results if r.account], AGENCY, batch_size=10, at=AT)
    assert batch.liability_ids == [1, 4]
    messages.validate(etree.fromstring(batch.to_bytes()))


def test_item1_an_account_that_cannot_be_written_is_rejected_alone_by_build_batches():
    """Defence in depth: an account that reaches build_batches with a control character (a bug:
    the builder stops these) is an InvalidMessage naming its liability, never a ValueError for
    the whole batch; with a rejected list the others still go."""
    good = build(row(liability_id=7, number="G7"), None, TODAY).account
    other = build(row(liability_id=8, number="G8", d_patron_id=18, b_patron_id=18), None, TODAY).account
    odd = build(row(liability_id=9, number="G9", d_patron_id=19, b_patron_id=19, d_cpr=None), None, TODAY).account
    party = C.Party(C.REPLACEMENT_CPR, odd.identification.number, 19, name=f"X\x07{ADULT_CPR}")
    broken = C.Account(odd.account_type, party, party, None, None, odd.claims)
    with pytest.raises(messages.InvalidMessage) as info:
        list(messages.build_batches([good, broken, other], AGENCY, batch_size=10, at=AT))
    assert info.value.liability_ids == [9] and ADULT_CPR not in str(info.value)
    rejected: list = []
    batches = list(messages.build_batches([good, broken, other], AGENCY, batch_size=10, at=AT, rejected=rejected))
    assert [b.liability_ids for b in batches] == [[7, 8]]
    assert [(e.liability_ids, e.element) for e in rejected] == [([9], "Debitorkonto")]


def test_item3_an_inexact_amount_in_build_batches_is_rejected_alone():
    rejected: list = []
    good = build(row(liability_id=7, number="G7"), None, TODAY).account
    inexact = claim_with(Decimal("12.345"))
    batches = list(messages.build_batches([good, inexact], AGENCY, batch_size=10, at=AT, rejected=rejected))
    assert [b.liability_ids for b in batches] == [[7]] and [e.liability_ids for e in rejected] == [[501]]
    assert "InexactAmount" in rejected[0].reason


def test_far_dates_render_as_xs_date():
    """Year 1 and 9999 are written as xs:date takes them (four-digit years)."""
    result = build(row(kind="compensation", number="E1", loan_date=dt.date(1, 1, 1), due_date=dt.date(1, 2, 1),
                       created_at=dt.datetime(9999, 12, 31, 12, 0)), None, TODAY)
    (batch,) = messages.build_batches([result.account], AGENCY, batch_size=1, at=AT)
    dates = {etree.QName(e).localname: e.text for e in batch.root.iter() if etree.QName(e).localname.endswith("Dato")}
    assert dates["StiftelsesDato"] == "0001-01-01" and dates["OprettelsesDato"] == "9999-12-31"
