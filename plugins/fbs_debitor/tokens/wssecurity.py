"""The signed WS-Security header that carries a SAML token on a SOAP 1.1 call (OIO IDWS SOAP profile):
``sign_envelope`` adds WS-Addressing headers, a Timestamp, the assertion and a holder-of-key
signature over Body, Timestamp, Action, MessageID and To; ``verify_envelope`` checks all of it on
the receiving side and returns the verified assertion's facts; ``security_header`` tells a receiver
whether a call came in token mode at all.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import uuid
from collections import Counter

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from signxml import CanonicalizationMethod, SignatureConstructionMethod, XMLSigner

from fbs_debitor.tokens import saml
from fbs_debitor.tokens.saml import NS_DS, NS_SAML, Facts, TokenRefused

NS_SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
NS_WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
NS_WSSE11 = "http://docs.oasis-open.org/wss/oasis-wss-wssecurity-secext-1.1.xsd"
NS_WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
NS_WSA = "http://www.w3.org/2005/08/addressing"
SAML_TOKEN_TYPE = "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLV2.0"
SAML_ID_VALUE_TYPE = "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLID"

WSU_ID = f"{{{NS_WSU}}}Id"
_ADDRESSING = ("Action", "MessageID", "To")
_NS = {"soap": NS_SOAP11, "wsse": NS_WSSE, "wsse11": NS_WSSE11, "wsu": NS_WSU, "wsa": NS_WSA, "ds": NS_DS,
       "saml": NS_SAML}
_ID_NAMES = frozenset({"Id", "ID", "id"})
_XML_ID = "{http://www.w3.org/XML/1998/namespace}id"
MAX_TTL = dt.timedelta(hours=1)


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def _children(parent: etree._Element, ns: str, name: str) -> list[etree._Element]:
    return parent.findall(f"{{{ns}}}{name}")


def _header(envelope: etree._Element) -> etree._Element | None:
    headers = _children(envelope, NS_SOAP11, "Header")
    return headers[0] if len(headers) == 1 else None


def security_header(envelope: etree._Element) -> etree._Element | None:
    """The envelope's wsse:Security header element, or None when the call carries none (certificate
    mode). With several Security headers the first is returned; ``verify_envelope`` refuses that."""
    if envelope is None or envelope.tag != f"{{{NS_SOAP11}}}Envelope":
        return None
    header = _header(envelope)
    if header is None:
        return None
    found = _children(header, NS_WSSE, "Security")
    return found[0] if found else None


@functools.lru_cache(maxsize=16)
def _signing_key(key_pem: bytes, cert_pem: bytes):
    """The private key, loaded once per (key, certificate) pair, after checking they belong together."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError("key_pem is not an unencrypted PEM private key") from None
    cert = saml.load_cert(cert_pem, "cert_pem")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, spki)
            != cert.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise ValueError("key_pem and cert_pem do not belong together (their public keys differ)")
    return key


def _ensure_id(element: etree._Element, kind: str) -> str:
    value = element.get(WSU_ID)
    if not value:
        value = _new_id(kind)
        element.set(WSU_ID, value)
    return value


def _addressing(header: etree._Element, name: str, text: str) -> etree._Element:
    found = _children(header, NS_WSA, name)
    if len(found) > 1:
        raise ValueError(f"the envelope already holds more than one wsa:{name} header")
    if found:
        if name != "MessageID" and (found[0].text or "").strip() != text:
            raise ValueError(f"the envelope already holds a different wsa:{name} header")
        return found[0]
    element = etree.SubElement(header, f"{{{NS_WSA}}}{name}", nsmap={"wsa": NS_WSA, "wsu": NS_WSU})
    element.text = text
    return element


def sign_envelope(envelope: etree._Element, assertion: etree._Element | bytes, *, key_pem: bytes, cert_pem: bytes,
                  action: str, to: str, now: dt.datetime | None = None,
                  ttl: dt.timedelta = dt.timedelta(minutes=5)) -> etree._Element:
    """Sign a SOAP 1.1 envelope in place with a SAML holder-of-key token and return it.

    Adds wsa:Action, wsa:MessageID and wsa:To (reused when already there with the same value), and a
    wsse:Security header (mustUnderstand) with a Timestamp (now .. now+ttl), a copy of the assertion and
    an RSA-SHA256 exclusive-c14n signature over Body, Timestamp, Action, MessageID and To, made with
    ``key_pem`` (the holder-of-key; ``cert_pem`` is its certificate) and pointing at the assertion by a
    SecurityTokenReference with its SAML ID."""
    if not isinstance(envelope, etree._Element) or envelope.tag != f"{{{NS_SOAP11}}}Envelope":
        raise ValueError("envelope must be a SOAP 1.1 Envelope element")
    if not action or not to:
        raise ValueError("action and to must be non-empty")
    if not dt.timedelta(seconds=1) <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be between 1 second and {MAX_TTL}")
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    key = _signing_key(bytes(key_pem), bytes(cert_pem))
    if isinstance(assertion, (bytes, bytearray)):
        token = saml.parse_assertion(bytes(assertion))
    elif isinstance(assertion, etree._Element) and assertion.tag == f"{{{NS_SAML}}}Assertion":
        token = copy.deepcopy(assertion)
    else:
        raise ValueError("assertion must be a saml:Assertion element or its serialized bytes")
    token_id = token.get("ID")
    if not token_id:
        raise ValueError("the assertion has no ID")

    bodies = _children(envelope, NS_SOAP11, "Body")
    if len(bodies) != 1:
        raise ValueError("the envelope must hold exactly one soap:Body")
    headers = _children(envelope, NS_SOAP11, "Header")
    if len(headers) > 1:
        raise ValueError("the envelope must hold at most one soap:Header")
    if headers:
        header = headers[0]
    else:
        header = etree.Element(f"{{{NS_SOAP11}}}Header", nsmap={"wsa": NS_WSA, "wsu": NS_WSU})
        envelope.insert(0, header)
    if _children(header, NS_WSSE, "Security"):
        raise ValueError("the envelope already holds a wsse:Security header")

    ids = [_ensure_id(bodies[0], "body")]
    for name, text in zip(_ADDRESSING, (action, f"urn:uuid:{uuid.uuid4()}", to), strict=True):
        ids.append(_ensure_id(_addressing(header, name, text), name.lower()))

    security = etree.SubElement(header, f"{{{NS_WSSE}}}Security", nsmap={"wsse": NS_WSSE, "wsu": NS_WSU})
    security.set(f"{{{NS_SOAP11}}}mustUnderstand", "1")
    timestamp = etree.SubElement(security, f"{{{NS_WSU}}}Timestamp")
    timestamp.set(WSU_ID, _new_id("ts"))
    etree.SubElement(timestamp, f"{{{NS_WSU}}}Created").text = _time(now)
    etree.SubElement(timestamp, f"{{{NS_WSU}}}Expires").text = _time(now + ttl)
    ids.insert(1, timestamp.get(WSU_ID))
    security.append(token)

    key_info = etree.Element(f"{{{NS_DS}}}KeyInfo", nsmap={"ds": NS_DS})
    reference = etree.SubElement(key_info, f"{{{NS_WSSE}}}SecurityTokenReference",
                                 nsmap={"wsse": NS_WSSE, "wsse11": NS_WSSE11})
    reference.set(f"{{{NS_WSSE11}}}TokenType", SAML_TOKEN_TYPE)
    identifier = etree.SubElement(reference, f"{{{NS_WSSE}}}KeyIdentifier", ValueType=SAML_ID_VALUE_TYPE)
    identifier.text = token_id

    signer = XMLSigner(method=SignatureConstructionMethod.detached,
                       c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0)
    signature = signer.sign(envelope, key=key, reference_uri=[f"#{i}" for i in ids], key_info=key_info,
                            id_attribute="Id")
    security.append(signature)
    return envelope


def _refuse_comments(envelope: etree._Element) -> None:
    # Exclusive c14n without comments ignores comments and processing instructions, so one inside signed
    # content could change what a reader sees (text cut at a comment) without breaking the signature.
    for _ in envelope.iter(etree.Comment, etree.ProcessingInstruction):
        raise TokenRefused("malformed", "the envelope carries comments or processing instructions")


def _refuse_duplicate_ids(envelope: etree._Element) -> None:
    values: Counter[str] = Counter()
    for element in envelope.iter(etree.Element):
        for name, value in element.attrib.items():
            if name == _XML_ID or etree.QName(name).localname in _ID_NAMES:
                values[value] += 1
    if any(count > 1 for count in values.values()):
        raise TokenRefused("message_not_covered", "the envelope holds two elements with the same id")


def _one(parent: etree._Element, ns: str, name: str, reason: str, what: str) -> etree._Element:
    found = _children(parent, ns, name)
    if len(found) != 1:
        raise TokenRefused(reason, f"the envelope must hold exactly one {what}")
    return found[0]


def verify_envelope(envelope: etree._Element | bytes, *, sts_cert_pem: bytes, issuer: str, audience: str,
                    cvr: str | None, now: dt.datetime | None = None,
                    skew: dt.timedelta = dt.timedelta(minutes=2)) -> Facts:
    """Verify a token-signed SOAP 1.1 envelope and return its assertion's facts.

    The assertion must verify against the trusted STS (see ``saml.verify_assertion``); the Timestamp must
    hold ``now`` (with ``skew``); the message signature must verify with the holder-of-key certificate
    named by the verified assertion and cover this envelope's Body, Timestamp, Action, MessageID and To.
    Duplicate ids, comments and DOCTYPEs are refused."""
    if isinstance(envelope, (bytes, bytearray)):
        envelope = saml.parse_xml(bytes(envelope))
    if not isinstance(envelope, etree._Element) or envelope.tag != f"{{{NS_SOAP11}}}Envelope":
        raise TokenRefused("malformed", "the message is not a SOAP 1.1 Envelope")
    saml.refuse_doctype(envelope)
    now = saml.utc_now(now)
    saml.check_skew(skew)
    _refuse_comments(envelope)

    headers = _children(envelope, NS_SOAP11, "Header")
    if len(headers) > 1:
        raise TokenRefused("malformed", "the envelope holds more than one soap:Header")
    securities = _children(headers[0], NS_WSSE, "Security") if headers else []
    if not securities:
        raise TokenRefused("message_unsigned", "the envelope carries no WS-Security header")
    if len(securities) > 1:
        raise TokenRefused("malformed", "the envelope holds more than one WS-Security header")
    header, security = headers[0], securities[0]
    signatures = _children(security, NS_DS, "Signature")
    if not signatures:
        raise TokenRefused("message_unsigned", "the WS-Security header carries no signature")
    if len(signatures) > 1:
        raise TokenRefused("malformed", "the WS-Security header carries more than one signature")
    assertion = _one(security, NS_SAML, "Assertion", "malformed", "SAML assertion in the WS-Security header")

    facts = saml.verify_assertion(assertion, sts_cert_pem=sts_cert_pem, issuer=issuer, audience=audience, cvr=cvr,
                                  now=now, skew=skew)

    timestamp = _one(security, NS_WSU, "Timestamp", "timestamp", "wsu:Timestamp in the WS-Security header")
    try:
        created = saml.parse_time(_one(timestamp, NS_WSU, "Created", "timestamp", "wsu:Created").text, "Created")
        expires = saml.parse_time(_one(timestamp, NS_WSU, "Expires", "timestamp", "wsu:Expires").text, "Expires")
    except TokenRefused as exc:
        if exc.reason == "timestamp":
            raise
        raise TokenRefused("timestamp", "the message Timestamp's times cannot be read") from None
    if expires < created:
        raise TokenRefused("timestamp", "the message Timestamp expires before it was created")
    if not created - skew <= now <= expires + skew:
        raise TokenRefused("timestamp", f"the message is only valid from {created.isoformat()} "
                                        f"to {expires.isoformat()}")

    identifiers = [
        (element.text or "").strip()
        for element in signatures[0].findall("ds:KeyInfo/wsse:SecurityTokenReference/wsse:KeyIdentifier", _NS)
        if element.get("ValueType") == SAML_ID_VALUE_TYPE]
    if identifiers != [facts.assertion_id]:
        raise TokenRefused("message_signature", "the message signature does not refer to the assertion by its SAML ID")

    _refuse_duplicate_ids(envelope)
    required = {"Body": _one(envelope, NS_SOAP11, "Body", "message_not_covered", "soap:Body"),
                "Timestamp": timestamp}
    for name in _ADDRESSING:
        required[name] = _one(header, NS_WSA, name, "message_not_covered", f"wsa:{name} header")
    required_ids = {}
    for name, element in required.items():
        value = element.get(WSU_ID)
        if not value:
            raise TokenRefused("message_not_covered", f"the message's {name} has no wsu:Id, so it is not signed")
        required_ids[name] = value

    # First on the signature as sent (so a reference to a part that is not there reads as "not covered"),
    # then again on the SignedInfo that signxml verified.
    _check_coverage(signatures[0], required_ids)
    holder = x509.load_pem_x509_certificate(facts.holder_cert_pem)
    location = f"{{{NS_SOAP11}}}Header/{{{NS_WSSE}}}Security/"
    results = saml.verify_signature(
        envelope, cert=holder, id_attribute="Id",
        config=saml.verification_config(now, expect_references=True, location=location), signed="the message",
        signer="assertion's holder-of-key certificate", code="message_signature",
        certificate_code="message_signature")
    if not isinstance(results, list):
        results = [results]
    _check_coverage(results[0].signature_xml, required_ids)
    return facts


def _check_coverage(signature: etree._Element, required_ids: dict[str, str]) -> None:
    uris = {r.get("URI") for r in signature.findall("ds:SignedInfo/ds:Reference", _NS)}
    missing = [name for name, value in required_ids.items() if f"#{value}" not in uris]
    if missing:
        raise TokenRefused("message_not_covered", f"the message signature does not cover {', '.join(missing)}")
