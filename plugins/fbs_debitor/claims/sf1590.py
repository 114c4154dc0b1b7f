"""The ONE module that knows the SF1590 schema's element names and namespaces.

Everything else works with the schema-free values of ``claims``. A municipality with KOMBIT's
official integration package replaces the files in ``include/xsd/`` and this module (keeping its
functions' signatures), and nothing else. See ``include/xsd/README.md``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from lxml import etree

from fbs_debitor.claims.model import (
    CANCEL,
    CPR,
    CVR,
    IDENTITY,
    REPAYMENT,
    REPLACEMENT_CPR,
    WRITE_DOWN,
    Account,
    Change,
    Claim,
    Party,
)

NS_F = "urn:fbs-debitor:modelled:sf1590:faelles:1"
NS_DR = "urn:fbs-debitor:modelled:sf1590:DebitorRegistreringAfsend:1"
NS_DA = "urn:fbs-debitor:modelled:sf1590:DaekningAfskrivningRegistreringAfsend:1"
NS_IC = "http://serviceplatformen.dk/xml/schemas/InvocationContext/1/"

SCHEMAS = {  # root element -> schema file in include/xsd
    f"{{{NS_DR}}}OpretDebitorkontoAnmodning": "DebitorRegistreringAfsend.xsd",
    f"{{{NS_DR}}}OpretDebitorkontoSvar": "DebitorRegistreringAfsend.xsd",
    f"{{{NS_DR}}}RetFordringTilstandAnmodning": "DebitorRegistreringAfsend.xsd",
    f"{{{NS_DR}}}RetFordringTilstandSvar": "DebitorRegistreringAfsend.xsd",
    f"{{{NS_DA}}}ForetagIndbetalingAnmodning": "DaekningAfskrivningRegistreringAfsend.xsd",
    f"{{{NS_DA}}}ForetagIndbetalingSvar": "DaekningAfskrivningRegistreringAfsend.xsd",
}
CREATE_REQUEST = f"{{{NS_DR}}}OpretDebitorkontoAnmodning"
CHANGE_REQUEST = f"{{{NS_DR}}}RetFordringTilstandAnmodning"
FAGSYSTEM_UUID = "91aa26ad-cab7-4e83-8230-9bf35a076a55"   # "FBS Cicero"
CLAIM_ELEMENT = "Fordring"
CLAIM_ID_ELEMENT = "FordringID"

_ID_ELEMENT = {CPR: "CPRNummer", REPLACEMENT_CPR: "ErstatningCPRNummer", CVR: "CVRNummer"}
_NSMAP = {None: NS_DR, "f": NS_F}

# What the schema lets each value be: the facets of include/xsd/ that values from FBS must meet
# (``claims.carriage`` checks them before a claim is built, since a value is never altered to fit;
# tests/test_carriage.py reads them back from the schema files). Swapping in the official schema
# means updating these with the element names above.
TEXT_MAX = {                 # most characters, by the place a text travels in
    "name": 200,             # f:PartType/Navn and dr:MindreaarigType/Navn (f:TekstType)
    "street": 200,           # f:AdresseType/AdresseTekst (f:TekstType)
    "postal_code": 10,       # f:AdresseType/Postnummer
    "city": 200,             # f:AdresseType/By (f:TekstType)
    "specification": 500,    # dr:FordringType/SpecifikationTekst (f:LangTekstType)
    "line": 200,             # dr:FordringTekstType/Linje (f:TekstType)
    "reason": 200,           # Annullering/Aarsag (f:TekstType)
}
MAX_LINES = 10               # dr:FordringTekstType/Linje maxOccurs
AMOUNT_TOTAL_DIGITS = 12     # f:BeloebType totalDigits
AMOUNT_FRACTION_DIGITS = 2   # f:BeloebType fractionDigits (and minExclusive 0)
ID_PATTERNS = {              # XSD patterns match the whole value
    CPR: "(0[1-9]|[12][0-9]|3[01])(0[1-9]|1[0-2])[0-9]{6}",       # f:CPRNummerType
    REPLACEMENT_CPR: "(6[1-9]|[78][0-9]|9[01])(0[1-9]|1[0-2])[0-9]{6}",   # f:ErstatningCPRNummerType
    CVR: "[1-9][0-9]{7}",                                          # f:CVRNummerType
    "p_number": "[0-9]{10}",                                       # f:PNummerType
    "ean": "[0-9]{13}",                                            # f:EANNummerType
}


class InexactAmount(ValueError):
    """An amount that could only be written rounded: never written (a bug; amounts are checked
    before a claim is built, ``claims.carriage``)."""


def _f(name: str) -> str:
    return f"{{{NS_F}}}{name}"


def _dr(name: str) -> str:
    return f"{{{NS_DR}}}{name}"


def _sub(parent, tag: str, text=None):
    el = etree.SubElement(parent, tag)
    if text is not None:
        el.text = _text(text)
    return el


def _text(value) -> str:
    if isinstance(value, dt.datetime):
        return value.replace(microsecond=0).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return amount_text(value)
    return str(value)


def amount_text(value: Decimal, what: str = "an amount") -> str:
    """An amount exactly as it travels, with its two decimals (``60`` -> ``60.00``). One it could
    only write rounded (``12.345``; not a finite number) raises InexactAmount: never rounded.
    ``what`` names the claim or change in the error (never the amount's digits)."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InexactAmount(f"{what}: the amount is not a finite decimal number; not written")
    text = f"{value:.{AMOUNT_FRACTION_DIGITS}f}"
    if Decimal(text) != value:
        raise InexactAmount(f"{what}: the amount has more decimals than øre and would have to be rounded; "
                            "not written (a bug: amounts are checked before a claim is built)")
    return text


def _header(parent, transaction_id: uuid.UUID, at: dt.datetime) -> None:
    head = _sub(parent, _dr("Hovedoplysninger"))
    _sub(head, _f("TransaktionsId"), str(transaction_id))
    _sub(head, _f("TransaktionsTid"), at)


def _sender(parent, system_instance_uuid: str, org_unit_uuid: str) -> None:
    sender = _sub(parent, _dr("Afsender"))
    _sub(sender, _f("FagsystemUUID"), FAGSYSTEM_UUID)
    _sub(sender, _f("ItSystemInstansUUID"), system_instance_uuid.lower())
    _sub(sender, _f("OrganisatoriskEnhedUUID"), org_unit_uuid.lower())


def _party(parent, tag: str, party: Party) -> None:
    el = _sub(parent, tag)
    _sub(el, _f(_ID_ELEMENT[party.id_kind]), party.number)
    if party.name:
        _sub(el, _f("Navn"), party.name)
    if party.address:
        adr = _sub(el, _f("Adresse"))
        _sub(adr, _f("AdresseTekst"), party.address.street)
        if party.address.postal_code:
            _sub(adr, _f("Postnummer"), party.address.postal_code)
        if party.address.city:
            _sub(adr, _f("By"), party.address.city)


def _claim(parent, claim: Claim) -> None:
    el = _sub(parent, _dr(CLAIM_ELEMENT))
    _sub(el, _dr(CLAIM_ID_ELEMENT), claim.fordring_id)
    _sub(el, _dr("FordringKravtype"), claim.claim_type)
    _sub(el, _dr("Beloeb"), amount_text(claim.amount, f"claim {claim.fordring_id}"))
    _sub(el, _dr("OprettelsesDato"), claim.created_on)
    _sub(el, _dr("ForfaldsDato"), claim.due_date)
    _sub(el, _dr("StiftelsesDato"), claim.founding_date)
    if claim.psrm:
        psrm = _sub(el, _dr("PSRM"))
        _sub(psrm, _dr("PSRMFordringstype"), claim.psrm.claim_type)
        _sub(psrm, _dr("PeriodeFraDato"), claim.psrm.period_from)
        _sub(psrm, _dr("PeriodeTilDato"), claim.psrm.period_to)
    _sub(el, _dr("SpecifikationTekst"), claim.specification)
    text = _sub(el, _dr("FordringTekst"))
    for line in claim.text_lines:
        _sub(text, _dr("Linje"), line)
    if claim.minor:
        minor = _sub(el, _dr("Mindreaarig"))
        _sub(minor, _dr(_ID_ELEMENT[claim.minor.id_kind]), claim.minor.number)
        _sub(minor, _dr("Navn"), claim.minor.name)
        _sub(minor, _dr("Foedselsdato"), claim.minor.birth_date)


def account_element(parent, account: Account) -> None:
    el = _sub(parent, _dr("Debitorkonto"))
    _sub(el, _dr("DebitorkontoType"), account.account_type)
    _party(el, _dr("DebitorkontoIdentifikation"), account.identification)
    _party(el, _dr("JuridiskAnsvarlig"), account.responsible)
    if account.p_number:
        _sub(el, _dr("PNummer"), account.p_number)
    if account.ean:
        _sub(el, _dr("EANNummer"), account.ean)
    for claim in account.claims:
        _claim(el, claim)


def create_request(accounts: Iterable[Account], transaction_id: uuid.UUID, at: dt.datetime,
                   system_instance_uuid: str, org_unit_uuid: str) -> etree._Element:
    """OpretDebitorkonto: a batch of debtor accounts with their claims."""
    root = etree.Element(CREATE_REQUEST, nsmap=_NSMAP)
    _header(root, transaction_id, at)
    _sender(root, system_instance_uuid, org_unit_uuid)
    for account in accounts:
        account_element(root, account)
    return root


def change_request(changes: Iterable[Change], transaction_id: uuid.UUID, at: dt.datetime,
                   system_instance_uuid: str, org_unit_uuid: str) -> etree._Element:
    """RetFordringTilstand: a batch of changes to claims already sent (U1-U4), each keyed by its
    AendringID. Amounts stay positive: a cancellation or write-down is an operation."""
    root = etree.Element(CHANGE_REQUEST, nsmap=_NSMAP)
    _header(root, transaction_id, at)
    _sender(root, system_instance_uuid, org_unit_uuid)
    for change in changes:
        el = _sub(root, _dr("FordringAendring"))
        _sub(el, _dr("AendringID"), change.key)
        _sub(el, _dr(CLAIM_ID_ELEMENT), change.fordring_id)
        if change.kind == CANCEL:
            what = _sub(el, _dr("Annullering"))
            if change.reason:
                _sub(what, _dr("Aarsag"), change.reason)
        elif change.kind == WRITE_DOWN:
            _sub(_sub(el, _dr("Nedskrivning")), _dr("NytBeloeb"), amount_text(change.amount, f"change {change.key}"))
        elif change.kind == IDENTITY:
            what = _sub(el, _dr("Identifikationsaendring"))
            _party(what, _dr("DebitorkontoIdentifikation"), change.identification)
            _party(what, _dr("JuridiskAnsvarlig"), change.responsible)
        elif change.kind == REPAYMENT:
            _sub(_sub(el, _dr("Tilbagebetaling")), _dr("Beloeb"), amount_text(change.amount, f"change {change.key}"))
        else:
            raise ValueError(f"unknown change kind {change.kind!r}")
    return root


def claim_ids_in(element: etree._Element) -> list[str]:
    """The FordringIDs inside an element of a create request (to name liabilities in errors)."""
    return [el.text for el in element.iter(_dr(CLAIM_ID_ELEMENT))]


# --- calls and answers ----------------------------------------------------------------------------

OPERATIONS = {  # request root -> operation of the DebitorRegistreringAfsend service
    CREATE_REQUEST: "OpretDebitorkonto",
    CHANGE_REQUEST: "RetFordringTilstand",
}
ACCEPTED, REJECTED = "MODTAGET", "AFVIST"


@dataclass(frozen=True)
class Receipt:
    """The debtor system's answer for one key (a FordringID, or a change's AendringID)."""

    key: str
    accepted: bool
    debtor_ref: str | None
    error_code: str | None
    error_text: str | None


def operation_of(request: etree._Element) -> str:
    try:
        return OPERATIONS[request.tag]
    except KeyError:
        raise ValueError(f"not an SF1590 request: {etree.QName(request).localname}") from None


def receipts(answer) -> list[Receipt]:
    """Receipts from an answer as zeep parsed it (``...Svar`` with its ``Kvittering`` list). A
    receipt with a status other than MODTAGET/AFVIST is left out (its claim stays unconfirmed and
    is asked about again), never read as accepted; the others count."""
    return [Receipt(k.Noegle, k.StatusKode == ACCEPTED, k.DebitorReference, k.FejlKode, k.FejlTekst)
            for k in answer.Kvittering or [] if k.StatusKode in (ACCEPTED, REJECTED)]
