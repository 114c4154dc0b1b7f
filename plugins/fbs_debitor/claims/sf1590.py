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


# The tags of a claim's elements, made once (Clark notation), and the element factory: a batch of
# 500 claims is some 10,000 elements, made with as little Python per element as possible.
_SubElement = etree.SubElement
_T_ID = {kind: _f(name) for kind, name in _ID_ELEMENT.items()}
_T_MINOR_ID = {kind: _dr(name) for kind, name in _ID_ELEMENT.items()}
(_T_NAME, _T_ADDRESS, _T_STREET, _T_POSTAL, _T_CITY) = (_f("Navn"), _f("Adresse"), _f("AdresseTekst"),
                                                         _f("Postnummer"), _f("By"))
(_T_ACCOUNT, _T_ACCOUNT_TYPE, _T_IDENTIFICATION, _T_RESPONSIBLE, _T_P, _T_EAN) = (
    _dr("Debitorkonto"), _dr("DebitorkontoType"), _dr("DebitorkontoIdentifikation"), _dr("JuridiskAnsvarlig"),
    _dr("PNummer"), _dr("EANNummer"))
(_T_CLAIM, _T_CLAIM_ID, _T_CLAIM_TYPE, _T_AMOUNT, _T_CREATED, _T_DUE, _T_FOUNDED, _T_PSRM, _T_PSRM_TYPE,
 _T_FROM, _T_TO, _T_SPECIFICATION, _T_TEXT, _T_LINE, _T_MINOR, _T_MINOR_NAME, _T_BIRTH) = (
    _dr(CLAIM_ELEMENT), _dr(CLAIM_ID_ELEMENT), _dr("FordringKravtype"), _dr("Beloeb"), _dr("OprettelsesDato"),
    _dr("ForfaldsDato"), _dr("StiftelsesDato"), _dr("PSRM"), _dr("PSRMFordringstype"), _dr("PeriodeFraDato"),
    _dr("PeriodeTilDato"), _dr("SpecifikationTekst"), _dr("FordringTekst"), _dr("Linje"), _dr("Mindreaarig"),
    _dr("Navn"), _dr("Foedselsdato"))
_DATE = dt.date


def _t(value) -> str:
    """``_text`` without its tests for the common case: text as it is, a plain date as ISO."""
    kind = type(value)
    if kind is str:
        return value
    if kind is _DATE:
        return value.isoformat()
    return None if value is None else _text(value)     # None: no text, as ``_sub`` leaves it


def _party(parent, tag: str, party: Party) -> None:
    sub = _SubElement
    el = sub(parent, tag)
    sub(el, _T_ID[party.id_kind]).text = _t(party.number)
    if party.name:
        sub(el, _T_NAME).text = _t(party.name)
    address = party.address
    if address:
        adr = sub(el, _T_ADDRESS)
        sub(adr, _T_STREET).text = _t(address.street)
        if address.postal_code:
            sub(adr, _T_POSTAL).text = _t(address.postal_code)
        if address.city:
            sub(adr, _T_CITY).text = _t(address.city)


def _claim(parent, claim: Claim) -> None:
    sub = _SubElement
    el = sub(parent, _T_CLAIM)
    sub(el, _T_CLAIM_ID).text = _t(claim.fordring_id)
    sub(el, _T_CLAIM_TYPE).text = _t(claim.claim_type)
    sub(el, _T_AMOUNT).text = amount_text(claim.amount, f"claim {claim.fordring_id}")
    sub(el, _T_CREATED).text = _t(claim.created_on)
    sub(el, _T_DUE).text = _t(claim.due_date)
    sub(el, _T_FOUNDED).text = _t(claim.founding_date)
    psrm = claim.psrm
    if psrm:
        p = sub(el, _T_PSRM)
        sub(p, _T_PSRM_TYPE).text = _t(psrm.claim_type)
        sub(p, _T_FROM).text = _t(psrm.period_from)
        sub(p, _T_TO).text = _t(psrm.period_to)
    sub(el, _T_SPECIFICATION).text = _t(claim.specification)
    text = sub(el, _T_TEXT)
    for line in claim.text_lines:
        sub(text, _T_LINE).text = _t(line)
    minor = claim.minor
    if minor:
        m = sub(el, _T_MINOR)
        sub(m, _T_MINOR_ID[minor.id_kind]).text = _t(minor.number)
        sub(m, _T_MINOR_NAME).text = _t(minor.name)
        sub(m, _T_BIRTH).text = _t(minor.birth_date)


def account_element(parent, account: Account) -> None:
    sub = _SubElement
    el = sub(parent, _T_ACCOUNT)
    sub(el, _T_ACCOUNT_TYPE).text = _t(account.account_type)
    _party(el, _T_IDENTIFICATION, account.identification)
    _party(el, _T_RESPONSIBLE, account.responsible)
    if account.p_number:
        sub(el, _T_P).text = _t(account.p_number)
    if account.ean:
        sub(el, _T_EAN).text = _t(account.ean)
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
