"""The sandbox STS's token maker: SAML 2.0 holder-of-key assertions shaped like KOMBIT's, signed with
the sandbox STS signing key. The tests also use it to make good and deliberately bad tokens.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from signxml import CanonicalizationMethod, SignatureConstructionMethod, XMLSigner

from fbs_debitor.tokens.saml import CVR_ATTRIBUTE, HOLDER_OF_KEY, NS_DS, NS_SAML, NS_XSI

NAMEID_X509 = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
_CVR = re.compile(r"\d{8}")


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _s(parent: etree._Element, name: str, text: str | None = None, **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, f"{{{NS_SAML}}}{name}", attrs)
    if text is not None:
        element.text = text
    return element


def issue_assertion(*, sts_key_pem: bytes, sts_cert_pem: bytes, issuer: str, audience: str, cvr: str,
                    holder_cert_pem: bytes, lifetime: dt.timedelta = dt.timedelta(hours=8),
                    now: dt.datetime | None = None, subject: str | None = None,
                    sign: bool = True) -> bytes:
    """A serialized SAML 2.0 assertion for ``cvr`` and ``audience``, bound to ``holder_cert_pem`` by a
    holder-of-key confirmation and (unless ``sign=False``) signed enveloped by the STS key."""
    if not _CVR.fullmatch(cvr or ""):
        raise ValueError("cvr must be 8 digits")
    if not issuer or not audience:
        raise ValueError("issuer and audience must be non-empty")
    if lifetime <= dt.timedelta(0) or lifetime > dt.timedelta(days=1):
        raise ValueError("lifetime must be more than 0 and at most 1 day")
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    now = now.astimezone(dt.UTC).replace(microsecond=0)
    try:
        holder = x509.load_pem_x509_certificate(bytes(holder_cert_pem))
    except ValueError:
        raise ValueError("holder_cert_pem is not a PEM X.509 certificate") from None

    assertion = etree.Element(f"{{{NS_SAML}}}Assertion", nsmap={"saml": NS_SAML, "ds": NS_DS, "xsi": NS_XSI},
                              ID=f"_{uuid.uuid4().hex}", Version="2.0", IssueInstant=_time(now))
    _s(assertion, "Issuer", issuer)
    if sign:
        etree.SubElement(assertion, f"{{{NS_DS}}}Signature", Id="placeholder")
    subject_el = _s(assertion, "Subject")
    _s(subject_el, "NameID", subject if subject is not None else holder.subject.rfc4514_string(), Format=NAMEID_X509)
    confirmation = _s(subject_el, "SubjectConfirmation", Method=HOLDER_OF_KEY)
    data = _s(confirmation, "SubjectConfirmationData")
    data.set(f"{{{NS_XSI}}}type", "saml:KeyInfoConfirmationDataType")
    key_info = etree.SubElement(data, f"{{{NS_DS}}}KeyInfo")
    x509_data = etree.SubElement(key_info, f"{{{NS_DS}}}X509Data")
    etree.SubElement(x509_data, f"{{{NS_DS}}}X509Certificate").text = base64.b64encode(
        holder.public_bytes(serialization.Encoding.DER)).decode("ascii")
    conditions = _s(assertion, "Conditions", NotBefore=_time(now), NotOnOrAfter=_time(now + lifetime))
    _s(_s(conditions, "AudienceRestriction"), "Audience", audience)
    statement = _s(assertion, "AttributeStatement")
    _s(_s(statement, "Attribute", Name=CVR_ATTRIBUTE), "AttributeValue", cvr)

    if sign:
        signer = XMLSigner(method=SignatureConstructionMethod.enveloped,
                           c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0)
        assertion = signer.sign(assertion, key=bytes(sts_key_pem), cert=bytes(sts_cert_pem))
    return etree.tostring(assertion)
