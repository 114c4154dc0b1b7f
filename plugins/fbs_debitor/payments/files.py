"""The file the debtor system delivers (SF1590_B_01A DaekningAfskrivningRegistreringAfsend, P1):
one ``ForetagIndbetalingAnmodning`` per file, one ``Bevaegelse`` per movement.

Reading is for files from outside: the bytes are parsed with the safe parser (no DTD, no entity,
no network, no huge tree: XXE and entity-expansion attempts are refused before parsing), checked
against the project's schema, and only then turned into movements. Anything wrong raises
``BadFile`` with a reason code and a plain reason that quotes no value from the file.

Writing is what the emulator (the debtor side) uses; the file is built with lxml, validated, and
written under a temporary name first (``<name>.part``, or a dot-file where that would pass 255
bytes), then renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from lxml import etree

from fbs_debitor.claims import messages
from fbs_debitor.claims.sf1590 import NS_DA, NS_F
from fbs_debitor.core.storage import PARTIAL_SUFFIX, write_atomically  # noqa: F401 - one atomic write, shared

ROOT = f"{{{NS_DA}}}ForetagIndbetalingAnmodning"
SCHEMA_FILE = "DaekningAfskrivningRegistreringAfsend.xsd"
KINDS = {"DAEKNING": "payment", "AFSKRIVNING": "write_off", "TILBAGEBETALING": "repayment",
         "TILBAGEFOERSEL": "reversal"}
TYPES = {kind: code for code, kind in KINDS.items()}
MAX_AMOUNT = Decimal("10000000000")   # NUMERIC(12,2) in the ledger and FBS


def max_file_bytes() -> int:
    raw = os.environ.get("FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES", str(50 * 1024 * 1024))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES must be a positive whole number of bytes, not {raw!r}")
    return value


def preflight() -> None:
    """What every file needs, checked once before the first file of a run: a setting or the
    schema missing is the run's error, never a quarantined file."""
    max_file_bytes()
    messages.schema(SCHEMA_FILE)


@dataclass(frozen=True)
class Movement:
    movement_id: str          # BevaegelseID: unique at the debtor system
    fordring_id: str
    kind: str                 # payment | write_off | repayment | reversal
    amount: Decimal
    booked_on: dt.date
    reference_id: str | None = None    # the movement a reversal undoes

    def same_as(self, other) -> bool:
        """The same movement (a delivery again), compared field by field with a ledger row."""
        return (self.fordring_id == other.fordring_id and self.kind == other.kind
                and Decimal(str(self.amount)) == Decimal(str(other.amount))
                and self.booked_on == other.booked_on and (self.reference_id or None) == (other.reference_id or None))


@dataclass(frozen=True)
class PaymentFile:
    transaction_id: str
    movements: list[Movement]


class BadFile(ValueError):
    """A delivered file that is not applied at all; ``code`` is the reason's rule-like code."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


UNSAFE, MALFORMED, WRONG_DOCUMENT, SCHEMA_INVALID, TOO_LARGE, DUPLICATE_IN_FILE = (
    "P_UNSAFE_XML", "P_MALFORMED", "P_WRONG_DOCUMENT", "P_SCHEMA_INVALID", "P_TOO_LARGE", "P_DUPLICATE_IN_FILE")


def _da(name: str) -> str:
    return f"{{{NS_DA}}}{name}"


_BEVAEGELSE, _ID, _FORDRING, _TYPE, _AMOUNT, _BOOKED, _REFERENCE = (
    _da(n) for n in ("Bevaegelse", "BevaegelseID", "FordringID", "BevaegelseType", "Beloeb", "BogfoeringsDato",
                     "ReferenceBevaegelseID"))


def _root(data: bytes):
    """The document's root, parsed safely, or BadFile (too large, unsafe, not well-formed, not
    this document)."""
    if len(data) > max_file_bytes():
        raise BadFile(TOO_LARGE, f"the file has {len(data)} bytes, more than the {max_file_bytes()} accepted "
                                 "(FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES)")
    try:
        root = messages.parse_untrusted(data)
    except messages.UnsafeXml:
        raise BadFile(UNSAFE, "the file declares a DTD or entities; they are refused (XXE / entity expansion)") \
            from None
    except etree.XMLSyntaxError as exc:
        line = getattr(exc, "lineno", None)
        raise BadFile(MALFORMED, f"not well-formed XML (truncated or damaged) near line {line}") from None
    if root.tag != ROOT:
        raise BadFile(WRONG_DOCUMENT, f"the document is {etree.QName(root).localname} in "
                                      f"{etree.QName(root).namespace or 'no namespace'}, not "
                                      "ForetagIndbetalingAnmodning of DaekningAfskrivningRegistreringAfsend")
    return root


def fordring_ids(data: bytes) -> list[str]:
    """The FordringIDs a file names, read and checked against the schema as ``parse`` does, without
    the movements made: enough to sort the file to its municipality (the step that applies it
    parses it in full and decides again). BadFile as ``parse`` (but for the checks of each
    movement's values, which ``parse`` alone makes)."""
    return [el.text or "" for el in _valid_root(data).iterfind(f"{_BEVAEGELSE}/{_FORDRING}")]


# The SHA-256 of the files this process found valid against the schema (bounded, oldest out first):
# a run reads each file twice, once to sort it to its municipality (``fordring_ids``) and once to
# apply it (``parse``); the same bytes are the same document, so the second reading does not
# validate it again. Bytes that failed are not remembered: they fail again, the same way.
_VALIDATED: dict[tuple, None] = {}
_VALIDATED_MAX = 4096


def _valid_root(data: bytes):
    root = _root(data)
    xsd = messages.schema(SCHEMA_FILE)
    key = (xsd, hashlib.sha256(data).digest())      # (a schema swapped in counts as another)
    if key in _VALIDATED:
        return root
    if not xsd.validate(root):
        raise BadFile(SCHEMA_INVALID, f"does not follow the DaekningAfskrivningRegistreringAfsend schema at "
                                      f"{messages.schema_error(xsd)}"[:500])
    if len(_VALIDATED) >= _VALIDATED_MAX:
        del _VALIDATED[next(iter(_VALIDATED))]
    _VALIDATED[key] = None
    return root


def _new_movement(movement_id: str, fordring_id: str, kind: str, amount: Decimal, booked_on: dt.date,
                  reference_id: str | None, _new=object.__new__) -> Movement:
    """``Movement(...)`` of these values, made without the frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` per field: most of the cost of reading a movement); the same object."""
    m = _new(Movement)
    m.__dict__.update(movement_id=movement_id, fordring_id=fordring_id, kind=kind, amount=amount,
                      booked_on=booked_on, reference_id=reference_id)
    return m


def parse(data: bytes) -> PaymentFile:
    """The movements of a delivered file, or BadFile.

    Each movement's values are read by their place: the schema (checked first) fixes a
    ``Bevaegelse``'s elements as BevaegelseID, FordringID, BevaegelseType, Beloeb,
    BogfoeringsDato and an optional ReferenceBevaegelseID, in that order; comments and processing
    instructions between them are passed over (only elements are read). A present but empty
    element reads as "", as ``findtext`` reads it."""
    root = _valid_root(data)
    movements = []
    seen: set[str] = set()
    append = movements.append
    element = etree.Element
    kinds = KINDS
    for number, el in enumerate(root.iterchildren(_BEVAEGELSE), start=1):
        v = [c.text for c in el.iterchildren(element)]
        mid = v[0] or ""
        if mid in seen:
            raise BadFile(DUPLICATE_IN_FILE, f"movement number {number} repeats a BevaegelseID used earlier in "
                                             "the same file")
        seen.add(mid)
        try:   # what xs:date / xs:decimal allow beyond a plain date and an amount the ledger can hold
            amount = Decimal(v[3] or "")
            booked = dt.date.fromisoformat(v[4] or "")
            if amount >= MAX_AMOUNT:
                raise ValueError("amount")
        except (ValueError, ArithmeticError, TypeError):
            raise BadFile(SCHEMA_INVALID, f"movement number {number}: the booking date must be a plain date "
                                          f"(YYYY-MM-DD) and the amount below {MAX_AMOUNT}") from None
        append(_new_movement(mid, v[1] or "", kinds[v[2] or ""], amount, booked,
                             (v[5] or "") if len(v) > 5 else None))
    header = root.find(_da("Hovedoplysninger"))
    return PaymentFile(header.findtext(f"{{{NS_F}}}TransaktionsId"), movements)


def to_xml(movements: Iterable[Movement], at: dt.datetime, transaction_id: uuid.UUID | None = None) -> bytes:
    """A schema-valid file of these movements."""
    root = etree.Element(ROOT, nsmap={"da": NS_DA, "f": NS_F})
    head = etree.SubElement(root, _da("Hovedoplysninger"))
    etree.SubElement(head, f"{{{NS_F}}}TransaktionsId").text = str(transaction_id or uuid.uuid4())
    etree.SubElement(head, f"{{{NS_F}}}TransaktionsTid").text = at.isoformat(timespec="seconds")
    for m in movements:
        el = etree.SubElement(root, _da("Bevaegelse"))
        etree.SubElement(el, _da("BevaegelseID")).text = m.movement_id
        etree.SubElement(el, _da("FordringID")).text = m.fordring_id
        etree.SubElement(el, _da("BevaegelseType")).text = TYPES[m.kind]
        etree.SubElement(el, _da("Beloeb")).text = f"{Decimal(m.amount):.2f}"
        etree.SubElement(el, _da("BogfoeringsDato")).text = m.booked_on.isoformat()
        if m.reference_id:
            etree.SubElement(el, _da("ReferenceBevaegelseID")).text = m.reference_id
    xsd = messages.schema(SCHEMA_FILE)
    if not xsd.validate(root):
        raise ValueError(f"a payment file that does not validate: {messages.schema_error(xsd)}")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


