"""Landing the calls of SF1590_B_01A DaekningAfskrivningRegistreringAfsend (P1): the debtor system
calls FBS's service through Serviceplatformen with payment and write-off movements; each accepted
call is landed as ONE file in the payments inbox, and the ``payments`` run applies the landed
files as it applies delivered ones (``payments.apply``), on each vendor's rhythm. This module is
the landing only: no web framework, no Airflow (the service is ``payments.inbound_service``).

**Checked like a file.** The call's ``ForetagIndbetalingAnmodning`` is serialized and read with
``files.parse``: the safe parser (no DTD, no entity, no network), the schema, the same size limit
(FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES). A bad one raises ``files.BadFile`` and nothing is written.

**Same movements, one landing.** A call's key is the SHA-256 of the municipality's CVR and its
movement ids (BevaegelseID, sorted). The first accepted call with a key lands
``inbox/b01a-<landed at, UTC>-<cvr>-<key[:32]>.xml`` (the payments run takes the oldest name first,
so calls are applied in the order they landed) and keeps its answer (the ``ForetagIndbetalingSvar``) in
``<payments>/inbound/receipts/<key>.xml``; a repeated call with the same movements (a retry after
a lost answer, with the same or a new TransaktionsId) gets the first answer byte for byte and lands
nothing. The same ids with other content (an amount, a claim, a date) is refused
(``P_CONFLICTING_REDELIVERY``): nothing is landed blindly.

**Durable before the answer.** The file is written under ``<name>.part`` (never taken by the
payments run), flushed and ``fsync``-ed, renamed, and the folder ``fsync``-ed; then the receipt the
same way; only then is the answer returned. One landing at a time (``flock`` on
``<payments>/inbound/.lock``, across threads and processes).

**A crash between the landing and the receipt** (the caller gets no answer and calls again):

* the file is still in the inbox (not applied yet): it is found by its name's key part, compared,
  not written again; the receipt is written and returned;
* the file was applied meanwhile and sits in ``archive/`` (the default layout): found there, the
  same; nothing landed again;
* the file was applied and moved elsewhere (an archive set by FBS_DEBITOR_PAYMENT_ARCHIVE): a
  second copy of the same bytes lands. The payments run recognises it (the same bytes were seen
  before: it is only moved to the archive; and every movement id is applied at most once, the
  ledger's ``movement`` table being keyed by it): nothing is applied twice.

**The folders are the project's own.** ``Landing`` takes a payments folder only when it carries
the marker ``.fbs-debitor-payments`` (as ``payments.inbox`` does), unless it is the configured
one (``own=True``), which it lays out (marker, ``inbox/``) when missing. It writes only its own
names (``b01a-…xml`` and their ``.part``) in the inbox and only under ``inbound/``; it never moves
or deletes anything.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from fbs_debitor.claims import messages
from fbs_debitor.claims.sf1590 import NS_DA, NS_F
from fbs_debitor.payments import files
from fbs_debitor.payments.files import BadFile, PaymentFile, write_atomically
from fbs_debitor.payments.inbox import MARKER, InboxLayoutError, shown

log = logging.getLogger(__name__)

FBS_ENTITY_ID = "http://cicero-fbs.com/service/DaekningAfskrivningRegistreringAfsend/2"
# the SOAP side, shared by the service and the sandbox's caller (which need not import the web stack)
PATH = "/service/OIR/DaekningAfskrivningRegistreringAfsend/1"
SOAP_ACTION = "urn:fbs-debitor:modelled:sf1590:DaekningAfskrivningRegistreringAfsend:1:ForetagIndbetaling"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
NS_AC = "http://serviceplatformen.dk/xml/schemas/AuthorityContext/1/"
SERVICE_UUID = "67275f52-f9a2-484e-a869-92cad1a5572c"      # SF1590_B_01A
ANSWER = f"{{{NS_DA}}}ForetagIndbetalingSvar"
CONFLICT = "P_CONFLICTING_REDELIVERY"
BAD_CVR = "P_MUNICIPALITY_CVR"
RECEIPTS = Path("inbound") / "receipts"
LOCK = Path("inbound") / ".lock"
NAME_PREFIX = "b01a-"
CVR = re.compile(r"[1-9][0-9]{7}")


@dataclass(frozen=True)
class Receipt:
    """The answer to an accepted call: ``answer`` is the ``ForetagIndbetalingSvar`` (schema-valid
    XML bytes, the same for every repeat); ``landed`` is True for the call that made the receipt
    (it landed the file, or found it landed by an interrupted call), False for a repeat."""
    key: str
    file_name: str
    answer: bytes
    landed: bool = False


def call_key(municipality_cvr: str, movement_ids) -> str:
    """The key of a call: the municipality and its movements (sorted BevaegelseIDs)."""
    text = "SF1590_B_01A\n" + municipality_cvr + "\n" + "\n".join(sorted(movement_ids))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_digest(payment: PaymentFile) -> str:
    """What the movements say (not the TransaktionsId): a repeat must say the same."""
    rows = sorted((m.movement_id, m.fordring_id, m.kind, f"{m.amount:.2f}", m.booked_on.isoformat(),
                   m.reference_id or "") for m in payment.movements)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode("utf-8")).hexdigest()


def file_name(municipality_cvr: str, key: str, at: dt.datetime) -> str:
    """``b01a-<landing time, UTC>-<cvr>-<key[:32]>.xml``: the payments run takes the oldest name
    first, so landed calls are applied in the order they came."""
    return f"{NAME_PREFIX}{at.astimezone(dt.UTC):%Y%m%dT%H%M%S%fZ}-{municipality_cvr}-{key[:32]}.xml"


def _name_tail(municipality_cvr: str, key: str) -> str:
    return f"-{municipality_cvr}-{key[:32]}.xml"


def answer_for(payment: PaymentFile, name: str, at: dt.datetime) -> bytes:
    """The ``ForetagIndbetalingSvar``: the request's TransaktionsId, one MODTAGET Kvittering per
    movement (Noegle = BevaegelseID), the landed file's name as the receiver's reference."""
    root = etree.Element(ANSWER, nsmap={None: NS_DA, "f": NS_F})
    head = etree.SubElement(root, f"{{{NS_DA}}}Hovedoplysninger")
    etree.SubElement(head, f"{{{NS_F}}}TransaktionsId").text = payment.transaction_id
    etree.SubElement(head, f"{{{NS_F}}}TransaktionsTid").text = at.astimezone(dt.UTC).replace(
        microsecond=0).isoformat()
    for m in payment.movements:
        k = etree.SubElement(root, f"{{{NS_DA}}}Kvittering")
        etree.SubElement(k, f"{{{NS_F}}}Noegle").text = m.movement_id
        etree.SubElement(k, f"{{{NS_F}}}StatusKode").text = "MODTAGET"
        etree.SubElement(k, f"{{{NS_F}}}DebitorReference").text = name
    xsd = messages.schema(files.SCHEMA_FILE)
    if not xsd.validate(root):
        raise ValueError(f"an answer that does not validate: {messages.schema_error(xsd)}")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


class Landing:
    """Lands accepted calls in ``<payments_dir>/inbox`` and keeps their receipts in
    ``<payments_dir>/inbound/receipts``. ``own``: the configured payments folder, laid out
    (marker, inbox) when missing; otherwise the folder must carry the marker already.
    ``crash_after_landing`` (tests): called after the file is landed, before the receipt."""

    def __init__(self, payments_dir: str | Path, *, own: bool = False,
                 crash_after_landing: Callable[[], None] | None = None):
        self.payments_dir = Path(payments_dir)
        self.inbox = self.payments_dir / "inbox"
        self.archive = self.payments_dir / "archive"
        self.receipts = self.payments_dir / RECEIPTS
        self.own = own
        self._crash_after_landing = crash_after_landing

    def check(self) -> None:
        """Refuse a folder that is not an fbs-debitor payments folder; make inbox/ and inbound/."""
        marker = self.payments_dir / MARKER
        if not marker.is_file():
            if not self.own:
                raise InboxLayoutError(
                    f"{shown(str(self.payments_dir))} is not an fbs-debitor payments folder (no {MARKER} in it): "
                    "the inbound service lands calls only in a payments folder fbs-debitor laid out (the "
                    "configured one, or one a payments run has used); nothing was written")
            self.payments_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(self.payments_dir, MARKER, b"fbs-debitor payments folder: the inbox/, archive/ and "
                          b"quarantine/ here are fbs-debitor's (files are moved from the inbox into the other two). "
                          b"Keep this file.\n")
            log.info("payments folder %s laid out for fbs-debitor (%s)", shown(str(self.payments_dir)), MARKER)
        for folder in (self.inbox, self.receipts):
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise InboxLayoutError(f"{shown(str(folder))} is not a folder; nothing was written")
            folder.mkdir(parents=True, exist_ok=True)

    def _lock(self):
        fd = os.open(self.payments_dir / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def stored(self, key: str) -> Receipt | None:
        """The receipt kept for ``key``, if any."""
        path = self.receipts / f"{key}.xml"
        if not path.is_file():
            return None
        meta = self._meta(key)
        return Receipt(key, meta.get("file_name", ""), path.read_bytes())

    def _meta(self, key: str) -> dict:
        try:
            return json.loads((self.receipts / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _landed_before(self, tail: str, digest: str) -> str | None:
        """The name of this key's file when it is still in the inbox or already in the archive (a
        crash before its receipt), with the same content (else CONFLICT); None when not found."""
        for folder in (self.inbox, self.archive):
            try:
                entries = os.scandir(folder)
            except FileNotFoundError:
                continue
            with entries:
                found = sorted(e.name for e in entries if e.name.startswith(NAME_PREFIX) and e.name.endswith(tail)
                               and e.is_file(follow_symlinks=False))
            for name in found:
                try:
                    earlier = files.parse((folder / name).read_bytes())
                except (BadFile, OSError):
                    continue
                if content_digest(earlier) != digest:
                    raise BadFile(CONFLICT, "these movement ids were received before with other content; nothing "
                                            "was landed")
                return name
        return None

    def land(self, request: etree._Element | bytes, municipality_cvr: str,
             now: dt.datetime | None = None) -> Receipt:
        """Land one call of ``municipality_cvr`` (or return the first receipt of the same
        movements). ``files.BadFile`` when the request is refused; nothing is written then."""
        if not isinstance(municipality_cvr, str) or not CVR.fullmatch(municipality_cvr):
            raise BadFile(BAD_CVR, "the municipality's CVR must be 8 digits, the first not 0")
        data = request if isinstance(request, bytes) else etree.tostring(request, xml_declaration=True,
                                                                         encoding="UTF-8")
        payment = files.parse(data)          # safe parser, schema, size: BadFile before anything is written
        key = call_key(municipality_cvr, (m.movement_id for m in payment.movements))
        digest = content_digest(payment)
        self.check()
        lock = self._lock()
        try:
            earlier = self.stored(key)
            if earlier is not None:
                if self._meta(key).get("digest", digest) != digest:
                    raise BadFile(CONFLICT, "these movement ids were received before with other content; nothing "
                                            "was landed")
                log.info("SF1590_B_01A call of municipality %s again (%d movements): answered with the first "
                         "receipt, nothing landed", municipality_cvr, len(payment.movements))
                return earlier
            now = now or dt.datetime.now(dt.UTC)
            name = self._landed_before(_name_tail(municipality_cvr, key), digest)
            if name is None:
                name = file_name(municipality_cvr, key, now)
                write_atomically(self.inbox, name, data)
                log.info("SF1590_B_01A call of municipality %s landed as %s (%d movements)", municipality_cvr,
                         name, len(payment.movements))
            if self._crash_after_landing is not None:
                self._crash_after_landing()
            answer = answer_for(payment, name, now)
            meta = {"file_name": name, "digest": digest, "municipality_cvr": municipality_cvr,
                    "movements": len(payment.movements)}
            write_atomically(self.receipts, f"{key}.json", json.dumps(meta).encode("utf-8"))
            write_atomically(self.receipts, f"{key}.xml", answer)
            return Receipt(key, name, answer, landed=True)
        finally:
            os.close(lock)        # closing the descriptor releases the flock
