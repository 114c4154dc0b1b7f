"""SAML 2.0 holder-of-key assertions from KOMBIT's STS: parse one safely, read its lifetime for a
token cache, and verify it against the trusted STS signing certificate.

Verification trusts nothing in the tree it was given: every fact (issuer, audience, CVR, subject,
lifetime, holder-of-key certificate) is read from the XML that signxml returns as signed, so a
signature-wrapping trick cannot slip unsigned content past it. Refusals raise ``TokenRefused`` with
a short ``reason`` code; their text never quotes the token, a certificate or a key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from signxml import (
    CanonicalizationMethod,
    DigestAlgorithm,
    SignatureConfiguration,
    SignatureMethod,
    XMLVerifier,
)
from signxml.exceptions import InvalidCertificate, InvalidDigest, InvalidInput, SignXMLException

NS_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_DS = "http://www.w3.org/2000/09/xmldsig#"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
CVR_ATTRIBUTE = "dk:gov:saml:attribute:CvrNumberIdentifier"
HOLDER_OF_KEY = "urn:oasis:names:tc:SAML:2.0:cm:holder-of-key"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"

REASONS = frozenset({
    "malformed", "unsigned", "bad_signature", "untrusted_signer", "issuer", "audience", "cvr",
    "not_yet_valid", "expired", "no_holder_key", "message_unsigned", "message_signature",
    "message_not_covered", "timestamp",
})

# What a token or a message signature may use: RSA-SHA256 over SHA-256 digests, nothing weaker.
SIGNATURE_METHODS = frozenset({SignatureMethod.RSA_SHA256})
DIGEST_ALGORITHMS = frozenset({DigestAlgorithm.SHA256})

_NS = {"saml": NS_SAML, "ds": NS_DS}
MAX_SKEW = dt.timedelta(minutes=30)


class TokenRefused(ValueError):
    """A token or a token-signed message was refused. ``reason`` is one of ``REASONS``; the text is a
    plain sentence starting with that code and never quotes the token, a certificate or a key."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"TokenRefused reason must be one of {sorted(REASONS)}")
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class Facts:
    """What a verified assertion says, read from the signed XML only."""

    assertion_id: str
    issuer: str
    audience: str
    cvr: str
    subject: str
    not_before: dt.datetime
    not_on_or_after: dt.datetime
    holder_cert_pem: bytes = field(repr=False)


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_blank_text=False)


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML bytes: no DTD, no entities, no network, no huge trees. Anything else is
    refused as ``malformed``."""
    if not isinstance(data, (bytes, bytearray)):
        raise TokenRefused("malformed", "the XML must be given as bytes")
    try:
        root = etree.fromstring(bytes(data), parser=_safe_parser())
    except etree.XMLSyntaxError:
        raise TokenRefused("malformed", "the XML could not be parsed") from None
    refuse_doctype(root)
    return root


def refuse_doctype(element: etree._Element) -> None:
    """Refuse a tree that came with a DOCTYPE or holds entity references (``malformed``)."""
    docinfo = element.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise TokenRefused("malformed", "the XML carries a DOCTYPE, which is not allowed")
    for _ in element.iter(etree.Entity):
        raise TokenRefused("malformed", "the XML carries an entity reference, which is not allowed")


def parse_assertion(data: bytes) -> etree._Element:
    """Parse a serialized SAML 2.0 assertion safely; the root must be ``saml:Assertion``."""
    root = parse_xml(data)
    if root.tag != f"{{{NS_SAML}}}Assertion":
        raise TokenRefused("malformed", "the token is not a SAML 2.0 Assertion")
    return root


def parse_time(text: str | None, what: str) -> dt.datetime:
    """An xs:dateTime with an explicit UTC offset (``...Z``), as an aware UTC datetime."""
    if not text:
        raise TokenRefused("malformed", f"the {what} time is missing")
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise TokenRefused("malformed", f"the {what} time is not an ISO 8601 date-time") from None
    if value.tzinfo is None:
        raise TokenRefused("malformed", f"the {what} time has no time zone")
    return value.astimezone(dt.UTC)


def _conditions(assertion: etree._Element) -> etree._Element:
    found = assertion.findall("saml:Conditions", _NS)
    if len(found) != 1:
        raise TokenRefused("malformed", "the assertion must hold exactly one Conditions element")
    return found[0]


def lifetime(assertion: etree._Element) -> tuple[dt.datetime, dt.datetime]:
    """The assertion's NotBefore and NotOnOrAfter, NOT verified: for a token cache only."""
    conditions = _conditions(assertion)
    return (parse_time(conditions.get("NotBefore"), "NotBefore"),
            parse_time(conditions.get("NotOnOrAfter"), "NotOnOrAfter"))


def utc_now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(dt.UTC)


def check_skew(skew: dt.timedelta) -> None:
    if not dt.timedelta(0) <= skew <= MAX_SKEW:
        raise ValueError(f"skew must be between 0 and {MAX_SKEW}")


def load_cert(pem: bytes, what: str) -> x509.Certificate:
    """Load a PEM certificate; the error names ``what`` and never quotes the material."""
    try:
        return x509.load_pem_x509_certificate(bytes(pem))
    except (ValueError, TypeError):
        raise ValueError(f"{what} is not a PEM X.509 certificate") from None


def _cert_from_b64(text: str | None) -> x509.Certificate | None:
    if not text:
        return None
    try:
        return x509.load_der_x509_certificate(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, binascii.Error):
        return None


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def verification_config(now: dt.datetime, *, expect_references: int | bool, location: str) -> SignatureConfiguration:
    """The signxml settings shared by the token and the message checks."""
    return SignatureConfiguration(
        require_x509=True, location=location, expect_references=expect_references,
        signature_methods=SIGNATURE_METHODS, digest_algorithms=DIGEST_ALGORITHMS,
        ignore_ambiguous_key_info=True, verification_time=now,
        default_reference_c14n_method=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0)


def verify_signature(data, *, cert: x509.Certificate, config, signed: str, signer: str, code: str,
                     certificate_code: str, id_attribute: str | None = None):
    """signxml's verification of ``data`` with ``cert``, each of its failures as TokenRefused:
    ``certificate_code`` when the certificate is not valid now, ``code`` otherwise; the text names
    what was ``signed`` and the ``signer``, never a value."""
    try:
        return XMLVerifier().verify(data, x509_cert=cert, id_attribute=id_attribute, expect_config=config)
    except InvalidCertificate:
        raise TokenRefused(certificate_code, f"the {signer} is not valid at this time") from None
    except InvalidDigest:
        raise TokenRefused(code, f"{signed} was changed after it was signed") from None
    except InvalidInput:
        raise TokenRefused(code, f"{signed}: the signature is not a usable XML signature") from None
    except SignXMLException:
        raise TokenRefused(code, f"{signed}: the signature does not verify with the {signer}") from None


def verify_assertion(assertion: etree._Element, *, sts_cert_pem: bytes, issuer: str, audience: str, cvr: str | None,
                     now: dt.datetime | None = None, skew: dt.timedelta = dt.timedelta(minutes=2)) -> Facts:
    """Verify a SAML assertion issued by the trusted STS and return its facts.

    The assertion must carry one enveloped signature, directly under it, made by exactly the trusted STS
    certificate and referring to the assertion itself. Issuer, audience, CVR (``cvr=None`` accepts
    any; the caller checks ``Facts.cvr``), lifetime (with ``skew`` either side) and a holder-of-key
    confirmation with an X.509 certificate are then checked on the signed XML."""
    now = utc_now(now)
    check_skew(skew)
    sts_cert = load_cert(sts_cert_pem, "the STS signing certificate")
    if not isinstance(assertion, etree._Element) or assertion.tag != f"{{{NS_SAML}}}Assertion":
        raise TokenRefused("malformed", "the token is not a SAML 2.0 Assertion")
    refuse_doctype(assertion)
    assertion_id = assertion.get("ID")
    if not assertion_id:
        raise TokenRefused("malformed", "the assertion has no ID")
    signatures = assertion.findall("ds:Signature", _NS)
    if not signatures:
        raise TokenRefused("unsigned", "the assertion carries no signature")
    if len(signatures) > 1:
        raise TokenRefused("malformed", "the assertion carries more than one signature")
    embedded = signatures[0].findall("ds:KeyInfo/ds:X509Data/ds:X509Certificate", _NS)
    for element in embedded:
        cert = _cert_from_b64(element.text)
        if cert is None or _der(cert) != _der(sts_cert):
            raise TokenRefused("untrusted_signer", "the assertion is signed by a certificate other than the trusted "
                                                   "STS signing certificate")
    result = verify_signature(assertion, cert=sts_cert,
                              config=verification_config(now, expect_references=1, location="./"),
                              signed="the assertion", signer="trusted STS signing certificate",
                              code="bad_signature", certificate_code="untrusted_signer")
    references = result.signature_xml.findall("ds:SignedInfo/ds:Reference", _NS)
    signed = result.signed_xml
    if (len(references) != 1 or references[0].get("URI") != f"#{assertion_id}" or signed is None
            or signed.tag != f"{{{NS_SAML}}}Assertion" or signed.get("ID") != assertion_id):
        raise TokenRefused("bad_signature", "the assertion's signature does not cover the assertion itself")
    facts = _facts(signed, now=now, skew=skew, issuer=issuer, audience=audience, cvr=cvr)
    return facts


def _one_text(parent: etree._Element, path: str, reason: str, what: str) -> str:
    found = parent.findall(path, _NS)
    if len(found) != 1 or not (found[0].text or "").strip():
        raise TokenRefused(reason, f"the assertion must hold exactly one non-empty {what}")
    return found[0].text.strip()


def _facts(signed: etree._Element, *, now: dt.datetime, skew: dt.timedelta, issuer: str, audience: str,
           cvr: str | None) -> Facts:
    if signed.get("Version") != "2.0":
        raise TokenRefused("malformed", "the assertion is not SAML version 2.0")
    found_issuer = _one_text(signed, "saml:Issuer", "issuer", "Issuer")
    if found_issuer != issuer:
        raise TokenRefused("issuer", f"the assertion was not issued by the expected STS ({issuer})")

    conditions = _conditions(signed)
    restrictions = conditions.findall("saml:AudienceRestriction", _NS)
    if not restrictions or not all(
            any((a.text or "").strip() == audience for a in r.findall("saml:Audience", _NS)) for r in restrictions):
        raise TokenRefused("audience", f"the assertion is not meant for this service ({audience})")

    values = [a for a in signed.findall("saml:AttributeStatement/saml:Attribute", _NS) if a.get("Name") == CVR_ATTRIBUTE]
    texts = [(v.text or "").strip() for a in values for v in a.findall("saml:AttributeValue", _NS)]
    if len(texts) != 1 or not texts[0]:
        raise TokenRefused("cvr", "the assertion must name exactly one CVR number")
    found_cvr = texts[0]
    if cvr is not None and found_cvr != cvr:
        raise TokenRefused("cvr", f"the assertion is for another organisation than CVR {cvr}")

    not_before = parse_time(conditions.get("NotBefore"), "NotBefore")
    not_on_or_after = parse_time(conditions.get("NotOnOrAfter"), "NotOnOrAfter")
    if now < not_before - skew:
        raise TokenRefused("not_yet_valid", f"the assertion is not valid before {not_before.isoformat()}")
    if now >= not_on_or_after + skew:
        raise TokenRefused("expired", f"the assertion expired at {not_on_or_after.isoformat()}")

    subject = _one_text(signed, "saml:Subject/saml:NameID", "malformed", "Subject NameID")
    holder_texts = [
        element.text
        for confirmation in signed.findall("saml:Subject/saml:SubjectConfirmation", _NS)
        if confirmation.get("Method") == HOLDER_OF_KEY
        for element in confirmation.findall(
            "saml:SubjectConfirmationData/ds:KeyInfo/ds:X509Data/ds:X509Certificate", _NS)]
    if len(holder_texts) != 1:
        raise TokenRefused("no_holder_key", "the assertion must name exactly one holder-of-key certificate")
    holder = _cert_from_b64(holder_texts[0])
    if holder is None:
        raise TokenRefused("no_holder_key", "the assertion's holder-of-key certificate cannot be read")
    return Facts(assertion_id=signed.get("ID"), issuer=found_issuer, audience=audience, cvr=found_cvr,
                 subject=subject, not_before=not_before, not_on_or_after=not_on_or_after,
                 holder_cert_pem=holder.public_bytes(serialization.Encoding.PEM))
