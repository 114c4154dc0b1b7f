"""SF1590 messages: built claims grouped into batches, and every message validated against the
schema before anything leaves the process. An invalid message is a bug in fbs-debitor, reported
with the liability and the failing element (never with the identifiers' values).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import cache

from lxml import etree

from fbs_debitor.claims import sf1590 as mapping
from fbs_debitor.claims.model import Account
from fbs_debitor.core.settings import XSD_DIR

BATCH_NAMESPACE = uuid.UUID("0f1f6d0c-6a52-4d57-9d0e-5a3f2f3c1590")


class InvalidMessage(RuntimeError):
    """A built message does not validate: a bug, never sent."""

    def __init__(self, liability_ids: list[int], element: str, reason: str):
        super().__init__(f"invalid SF1590 message for liabilities {liability_ids}: element {element}: {reason}")
        self.liability_ids, self.element, self.reason = liability_ids, element, reason


@cache
def schema(filename: str) -> etree.XMLSchema:
    # The schemas are the project's own files; the parser reads nothing from the network.
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(XSD_DIR / filename), parser))


def schema_for(root: etree._Element) -> etree.XMLSchema:
    return schema(mapping.SCHEMAS[root.tag])


class UnsafeXml(ValueError):
    """A document type declaration or an entity: never parsed (XXE, entity expansion)."""


_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def safe_parser() -> etree.XMLParser:
    """For XML from outside: no DTD loaded, no entity resolved, nothing read from the network,
    no huge trees."""
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
                           dtd_validation=False, remove_comments=True, remove_pis=True)


def parse_untrusted(data: bytes) -> etree._Element:
    """Parse XML received from outside. A DTD or entity declaration raises UnsafeXml before the
    parser sees it (and again if the parser finds one the pattern missed, e.g. in UTF-16); not
    well-formed XML raises lxml's XMLSyntaxError."""
    if _DTD.search(data):
        raise UnsafeXml("DTDs and entities are not allowed")
    doc = etree.fromstring(data, safe_parser()).getroottree()
    if doc.docinfo.doctype or doc.docinfo.internalDTD is not None:
        raise UnsafeXml("DTDs and entities are not allowed")
    return doc.getroot()


def schema_error(xsd: etree.XMLSchema) -> str:
    """The schema's last error, line and reason, with quoted values dropped (never an identifier)."""
    error = xsd.error_log.last_error
    return f"line {error.line}: " + re.sub(r"'[^']*'", "'…'", error.message)


@dataclass
class Batch:
    """One OpretDebitorkonto message: its transaction id is derived from the claims it holds, so
    the same batch built again has the same id."""

    number: int
    agency_id: str
    accounts: list[Account]
    root: etree._Element
    transaction_id: uuid.UUID

    @property
    def liability_ids(self) -> list[int]:
        return [c.liability_id for a in self.accounts for c in a.claims]

    def to_bytes(self, pretty: bool = False) -> bytes:
        return etree.tostring(self.root, xml_declaration=True, encoding="UTF-8", pretty_print=pretty)


def agency_of(row) -> dict:
    """What ``build_batches`` needs of an agency, from a claim row (``claim_rows.sql``)."""
    return {"agency_id": row.agency_id, "sender_system_uuid": row.sender_system_uuid,
            "org_unit_uuid": row.org_unit_uuid}


def merge_accounts(accounts: Iterable[Account]) -> list[Account]:
    """Claims of the same debtor account (same type, identification, responsible party) travel
    under one Debitorkonto (in the order the accounts first came, their claims in the order given)."""
    groups: dict[tuple, list[Account]] = {}
    for account in accounts:
        group = groups.get(account.key)
        if group is None:
            groups[account.key] = [account]
        else:
            group.append(account)
    return [group[0] if len(group) == 1 else
            Account(group[0].account_type, group[0].identification, group[0].responsible, group[0].p_number,
                    group[0].ean, tuple(c for a in group for c in a.claims))
            for group in groups.values()]


def validate(root: etree._Element, liability_of: dict[str, int] | None = None) -> None:
    """Raise InvalidMessage naming the liabilities and the failing element when ``root`` is invalid.
    ``liability_of`` maps FordringID to liability id for the message's claims."""
    xsd = schema_for(root)
    if xsd.validate(root):
        return
    error = xsd.error_log.last_error
    try:
        namespaces = {prefix: uri for prefix, uri in root.nsmap.items() if prefix}
        nodes = root.getroottree().xpath(error.path, namespaces=namespaces) if error.path else []
    except etree.XPathError:
        nodes = []
    failing = nodes[0] if nodes and isinstance(nodes[0], etree._Element) else None
    element, liability_ids = "?", sorted(set((liability_of or {}).values()))
    if failing is not None:
        chain = [failing, *failing.iterancestors()]
        element = "/".join(etree.QName(e).localname for e in reversed(chain))
        scope = next((e for e in chain if etree.QName(e).localname in (mapping.CLAIM_ELEMENT, "Debitorkonto")), None)
        if scope is not None:
            liability_ids = [liability_of[f] for f in mapping.claim_ids_in(scope) if f in (liability_of or {})]
    # libxml2 quotes the offending value; identifiers must not reach a log, so drop quoted values.
    reason = re.sub(r"'[^']*'", "'…'", error.message)
    raise InvalidMessage(liability_ids, element, reason)


def _unwritable(accounts: list[Account], exc: ValueError) -> InvalidMessage:
    """The claims of a batch that cannot be written as XML at all (lxml refuses a control
    character, ``sf1590`` an amount it would have to round), as an InvalidMessage naming their
    liabilities; the error's text without quoted values (lxml's is generic; a UnicodeEncodeError
    names only the character)."""
    bad = []
    for account in accounts:
        for claim in account.claims:       # one claim at a time: its account's parties and itself
            try:
                mapping.account_element(etree.Element("x"), replace(account, claims=(claim,)))
            except ValueError:
                bad.append(claim.liability_id)
    reason = re.sub(r"'[^']*'", "'…'", f"{type(exc).__name__}: {exc}")
    return InvalidMessage(sorted(bad), "Debitorkonto", reason)


def build_batches(accounts: Iterable[Account], agency: dict, batch_size: int, at: dt.datetime | None = None,
                  first_number: int = 1, rejected: list[InvalidMessage] | None = None,
                  written: dict[int, etree._Element] | None = None,
                  prepare: Callable[[list[int]], None] | None = None) -> Iterator[Batch]:
    """Group one agency's accounts (one page of them: merging is per call) into validated batches
    of at most ``batch_size`` claims.

    An invalid message is a bug. Without ``rejected`` it raises InvalidMessage; with a list, the
    claims the error points to are taken out of the batch and the error is appended to the list,
    so one bad record cannot hold back the rest (nothing else is lost, nothing invalid is sent).
    The same holds for an account that cannot even be written as XML (a text with a control
    character, an amount that would have to be rounded: the builder stops those first).

    ``batch_size`` is at least 1: anything else raises ValueError at once (a batch of 0 claims
    would never fill).

    ``written`` (liability id -> element): the Debitorkonto element ``sf1590.account_element``
    already wrote for each claim's own one-claim account (its fingerprint was taken from it,
    ``delivery.outbox``). A batch is then put together from those elements, taken into it (no
    longer usable elsewhere), instead of writing every account again: the same message, byte for
    byte, as ``sf1590.create_request`` writes (a merged account is the first claim's element with
    the other claims' elements appended). Where that cannot be the same (a merged account whose
    parties differ from its first claim's own, an element missing) the batch is written anew.
    ``prepare`` (with ``written``): called with a batch's liability ids just before the batch is put
    together, to write their elements into ``written`` only then (``delivery.outbox`` takes a batch's
    fingerprints while the batch before it is on its way); an error it raises is raised as it is."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1 (claims per message), not {batch_size!r}")
    if written is not None:
        accounts = list(accounts)
    return _batches(accounts, agency, batch_size, at or dt.datetime.now().astimezone(), first_number, rejected,
                    written, prepare)


def _parties(account: Account) -> tuple:
    return (account.account_type, account.identification, account.responsible, account.p_number, account.ean)


def _assembled(accounts_in_batch: list[Account], tid: uuid.UUID, at: dt.datetime, agency: dict,
               written: dict[int, etree._Element], own: dict[int, tuple]) -> etree._Element | None:
    """The request put together from the claims' own elements (see ``build_batches``), or None
    when it could differ from ``create_request``'s (then nothing was taken)."""
    for account in accounts_in_batch:
        first = account.claims[0].liability_id
        if own.get(first) != _parties(account) or any(c.liability_id not in written for c in account.claims):
            return None
    root = mapping.create_request((), tid, at, agency["sender_system_uuid"], agency["org_unit_uuid"])
    claim_tag = f"{{{mapping.NS_DR}}}{mapping.CLAIM_ELEMENT}"
    for account in accounts_in_batch:
        element = written.pop(account.claims[0].liability_id)
        for claim in account.claims[1:]:
            element.extend(list(written.pop(claim.liability_id).iterchildren(claim_tag)))
        root.append(element)
    # each element came with its own namespace declarations (ns0, ns1, ...): the request's instead
    etree.cleanup_namespaces(root, top_nsmap=root.nsmap)
    return root


def _batches(accounts: Iterable[Account], agency: dict, batch_size: int, at: dt.datetime, first_number: int,
             rejected: list[InvalidMessage] | None, written: dict[int, etree._Element] | None,
             prepare: Callable[[list[int]], None] | None = None) -> Iterator[Batch]:
    number = first_number
    pending: list[Account] = []
    count = 0
    own = ({c.liability_id: _parties(a) for a in accounts for c in a.claims} if written is not None else {})

    def flush(accounts_in_batch: list[Account]) -> Batch | None:
        reuse = written is not None
        if reuse and prepare is not None:
            prepare([c.liability_id for a in accounts_in_batch for c in a.claims])
        while accounts_in_batch:
            fordring_ids = sorted(c.fordring_id for a in accounts_in_batch for c in a.claims)
            tid = uuid.uuid5(BATCH_NAMESPACE, "|".join(fordring_ids))
            try:
                root = _assembled(accounts_in_batch, tid, at, agency, written, own) if reuse else None
                reuse = False      # a batch written again (an invalid claim taken out) is written anew
                if root is None:
                    root = mapping.create_request(accounts_in_batch, tid, at, agency["sender_system_uuid"],
                                                  agency["org_unit_uuid"])
                validate(root, {c.fordring_id: c.liability_id for a in accounts_in_batch for c in a.claims})
            except (InvalidMessage, ValueError) as exc:
                error = exc if isinstance(exc, InvalidMessage) else _unwritable(accounts_in_batch, exc)
                if rejected is None:
                    raise error from None
                rejected.append(error)
                bad = set(error.liability_ids) or {c.liability_id for a in accounts_in_batch for c in a.claims}
                accounts_in_batch = [replace(a, claims=tuple(c for c in a.claims if c.liability_id not in bad))
                                     for a in accounts_in_batch]
                accounts_in_batch = [a for a in accounts_in_batch if a.claims]
                continue
            return Batch(number, agency["agency_id"], accounts_in_batch, root, tid)
        return None

    for account in merge_accounts(accounts):
        claims = list(account.claims)
        while claims:
            room = batch_size - count
            if room <= 0:
                batch = flush(pending)
                if batch:
                    yield batch
                    number += 1
                pending, count = [], 0
                room = batch_size
            part, claims = claims[:room], claims[room:]
            pending.append(account if len(part) == len(account.claims) else replace(account, claims=tuple(part)))
            count += len(part)
    if pending:
        batch = flush(pending)
        if batch:
            yield batch
