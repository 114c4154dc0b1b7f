"""Issue 17: SAML holder-of-key tokens from the STS and the signed WS-Security header that carries
them (fbs_debitor.tokens.saml / .wssecurity), with tokens made by the sandbox STS's issuer."""

from __future__ import annotations

import copy
import datetime as dt
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from signxml import CanonicalizationMethod, XMLSigner

from fbs_debitor.sandbox import pki
from fbs_debitor.sandbox.saml_issuer import issue_assertion
from fbs_debitor.tokens import saml, wssecurity
from fbs_debitor.tokens.saml import NS_SAML, TokenRefused
from fbs_debitor.tokens.wssecurity import NS_SOAP11, NS_WSA, NS_WSSE, NS_WSU

ISSUER = "https://sts.sandbox.serviceplatformen.invalid"
AUDIENCE = "http://entityid.kombit.dk/service/sf1590_b_01/1"
CVR = "29189846"
ACTION = "http://serviceplatformen.dk/service/sf1590_b_01/1/Opret"
TO = "https://127.0.0.1/service/SF1590_B_01/1"
WSU_ID = f"{{{NS_WSU}}}Id"
NS = {"soap": NS_SOAP11, "wsse": NS_WSSE, "wsu": NS_WSU, "wsa": NS_WSA, "saml": NS_SAML,
      "ds": "http://www.w3.org/2000/09/xmldsig#"}

BODY = (b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
        b'<soap:Body><f:Fordring xmlns:f="urn:test:fordring"><f:Beloeb>125.50</f:Beloeb>'
        b'<f:Laaner>0101</f:Laaner></f:Fordring></soap:Body></soap:Envelope>')


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    paths = pki.ensure(tmp_path_factory.mktemp("pki"))
    return {name: open(path, "rb").read() for name, path in paths.items()}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _token(pem, *, key="sts_signing_key", cert="sts_signing_cert", holder="system_cert", **overrides) -> bytes:
    args = dict(sts_key_pem=pem[key], sts_cert_pem=pem[cert], issuer=ISSUER, audience=AUDIENCE, cvr=CVR,
                holder_cert_pem=pem[holder])
    args.update(overrides)
    return issue_assertion(**args)


def _verify_token(pem, token, **overrides):
    args = dict(sts_cert_pem=pem["sts_signing_cert"], issuer=ISSUER, audience=AUDIENCE, cvr=CVR)
    args.update(overrides)
    element = token if isinstance(token, etree._Element) else saml.parse_assertion(token)
    return saml.verify_assertion(element, **args)


def _envelope(pem, token=None, *, key="system_key", cert="system_cert", **kwargs) -> etree._Element:
    envelope = etree.fromstring(BODY)
    return wssecurity.sign_envelope(envelope, token if token is not None else _token(pem), key_pem=pem[key],
                                    cert_pem=pem[cert], action=ACTION, to=TO, **kwargs)


def _verify_envelope(pem, envelope, **overrides):
    args = dict(sts_cert_pem=pem["sts_signing_cert"], issuer=ISSUER, audience=AUDIENCE, cvr=CVR)
    args.update(overrides)
    return wssecurity.verify_envelope(envelope, **args)


def _secret_fragments(pem) -> list[str]:
    """Lines of every certificate and key in the set: none may appear in a refusal's text."""
    lines = []
    for blob in pem.values():
        lines += [line for line in blob.decode().splitlines() if line and not line.startswith("-----")]
    return lines


def _refused(pem, reason: str, call, *args, **kwargs) -> TokenRefused:
    with pytest.raises(TokenRefused) as caught:
        call(*args, **kwargs)
    exc = caught.value
    text = str(exc)
    assert exc.reason == reason, text
    assert text.startswith(f"{reason}: ")
    assert "<" not in text and "PRIVATE KEY" not in text and "BEGIN" not in text
    assert not any(fragment in text for fragment in _secret_fragments(pem))
    assert exc.__cause__ is None
    return exc


def _der(pem_bytes: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem_bytes).public_bytes(serialization.Encoding.DER)


# --- round trip --------------------------------------------------------------------------------------------------

def test_issue17_sign_and_verify_round_trip(pem):
    token = _token(pem)
    start, end = saml.lifetime(saml.parse_assertion(token))
    assert end - start == dt.timedelta(hours=8)
    envelope = _envelope(pem, token)

    header = wssecurity.security_header(envelope)
    assert header is not None and header.get(f"{{{NS_SOAP11}}}mustUnderstand") == "1"
    # The SAMLID KeyIdentifier names the assertion, and the signature covers five parts.
    assertion_id = saml.parse_assertion(token).get("ID")
    identifier = header.find("ds:Signature/ds:KeyInfo/wsse:SecurityTokenReference/wsse:KeyIdentifier", NS)
    assert identifier.text == assertion_id
    assert len(header.findall("ds:Signature/ds:SignedInfo/ds:Reference", NS)) == 5

    for form in (envelope, etree.tostring(envelope)):
        facts = _verify_envelope(pem, form)
        assert facts.cvr == CVR and facts.audience == AUDIENCE and facts.issuer == ISSUER
        assert facts.assertion_id == assertion_id
        assert _der(facts.holder_cert_pem) == _der(pem["system_cert"])
        assert facts.not_on_or_after - facts.not_before == dt.timedelta(hours=8)
        assert "holder_cert_pem" not in repr(facts)
    # cvr=None accepts any CVR; the caller checks Facts.cvr.
    assert _verify_envelope(pem, envelope, cvr=None).cvr == CVR


def test_issue17_envelope_without_security_header_is_message_unsigned(pem):
    envelope = etree.fromstring(BODY)
    assert wssecurity.security_header(envelope) is None
    _refused(pem, "message_unsigned", _verify_envelope, pem, envelope)


def test_issue17_sign_refuses_key_and_certificate_that_do_not_belong_together(pem):
    with pytest.raises(ValueError) as caught:
        _envelope(pem, key="rogue_key", cert="system_cert")
    assert "PRIVATE KEY" not in str(caught.value) and "key_pem" in str(caught.value)


# --- the token -----------------------------------------------------------------------------------------------------

def test_issue17_expired_token_refused(pem):
    token = _token(pem, now=_utcnow() - dt.timedelta(hours=9))
    _refused(pem, "expired", _verify_token, pem, token)
    _refused(pem, "expired", _verify_envelope, pem, _envelope(pem, token))


def test_issue17_token_not_yet_valid_refused(pem):
    token = _token(pem, now=_utcnow() + dt.timedelta(hours=1))
    _refused(pem, "not_yet_valid", _verify_token, pem, token)
    # within the allowed clock skew it is fine
    _verify_token(pem, _token(pem, now=_utcnow() + dt.timedelta(seconds=60)))


def test_issue17_wrong_audience_refused(pem):
    token = _token(pem, audience="http://entityid.kombit.dk/service/other/1")
    _refused(pem, "audience", _verify_token, pem, token)


def test_issue17_wrong_cvr_refused(pem):
    token = _token(pem, cvr="11111111")
    _refused(pem, "cvr", _verify_token, pem, token)
    assert _verify_token(pem, token, cvr=None).cvr == "11111111"


def test_issue17_wrong_issuer_refused(pem):
    _refused(pem, "issuer", _verify_token, pem, _token(pem, issuer="https://sts.elsewhere.invalid"))


def test_issue17_unsigned_assertion_refused(pem):
    token = _token(pem, sign=False)
    _refused(pem, "unsigned", _verify_token, pem, token)
    _refused(pem, "unsigned", _verify_envelope, pem, _envelope(pem, token))


def test_issue17_assertion_signed_by_stranger_key_refused(pem):
    # a stranger signs and names its own certificate
    _refused(pem, "untrusted_signer", _verify_token, pem, _token(pem, key="rogue_key", cert="rogue_cert"))
    # a stranger signs but names the real STS certificate
    _refused(pem, "bad_signature", _verify_token, pem, _token(pem, key="rogue_key", cert="sts_signing_cert"))


def test_issue17_assertion_tampered_after_signing_refused(pem):
    assertion = saml.parse_assertion(_token(pem))
    value = assertion.find("saml:AttributeStatement/saml:Attribute/saml:AttributeValue", NS)
    value.text = "11111111"
    _refused(pem, "bad_signature", _verify_token, pem, assertion, cvr=None)
    _refused(pem, "bad_signature", _verify_envelope, pem, _envelope(pem, assertion), cvr=None)


def test_issue17_assertion_wrapping_refused(pem):
    # An attacker's assertion (other ID, other CVR) wraps the genuine signed one and borrows its signature.
    genuine = saml.parse_assertion(_token(pem))
    forged = copy.deepcopy(genuine)
    forged.set("ID", "_forged")
    forged.find("saml:AttributeStatement/saml:Attribute/saml:AttributeValue", NS).text = "11111111"
    signature = genuine.find("ds:Signature", NS)
    forged.remove(forged.find("ds:Signature", NS))
    forged.insert(1, signature)
    forged.find("saml:Subject", NS).append(genuine)
    _refused(pem, "bad_signature", _verify_token, pem, forged, cvr=None)


def test_issue17_holder_of_key_missing_refused(pem):
    # The STS signs whatever it is given; an assertion without a holder-of-key confirmation is refused.
    assertion = saml.parse_assertion(_token(pem, sign=False))
    subject = assertion.find("saml:Subject", NS)
    subject.remove(subject.find("saml:SubjectConfirmation", NS))
    etree.SubElement(assertion, "{http://www.w3.org/2000/09/xmldsig#}Signature", Id="placeholder")
    assertion.insert(1, assertion[-1])
    signed = XMLSigner(c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0).sign(
        assertion, key=pem["sts_signing_key"], cert=pem["sts_signing_cert"])
    _refused(pem, "no_holder_key", _verify_token, pem, signed)


# --- the message ---------------------------------------------------------------------------------------------------

def test_issue17_body_tampered_after_signing_refused(pem):
    envelope = _envelope(pem)
    envelope.find("soap:Body//{urn:test:fordring}Beloeb", NS).text = "1.00"
    _refused(pem, "message_signature", _verify_envelope, pem, envelope)


def test_issue17_message_signed_by_key_other_than_holder_refused(pem):
    envelope = _envelope(pem, key="rogue_key", cert="rogue_cert")
    _refused(pem, "message_signature", _verify_envelope, pem, envelope)


def test_issue17_signature_must_name_the_assertion(pem):
    envelope = _envelope(pem)
    identifier = envelope.find(".//wsse:KeyIdentifier", NS)
    identifier.text = "_another"
    _refused(pem, "message_signature", _verify_envelope, pem, envelope)


def test_issue17_wrapping_attack_on_body_refused(pem):
    envelope = _envelope(pem)
    header = envelope.find("soap:Header", NS)
    body = envelope.find("soap:Body", NS)
    # The signed Body moves into a header element; a different Body takes its place, keeping the id.
    wrapper = etree.SubElement(header, "{urn:attacker}Wrapper")
    envelope.remove(body)
    wrapper.append(body)
    forged = etree.fromstring(etree.tostring(body))
    forged.find("{urn:test:fordring}Fordring/{urn:test:fordring}Beloeb").text = "99999.00"
    envelope.append(forged)
    _refused(pem, "message_not_covered", _verify_envelope, pem, envelope)
    _refused(pem, "message_not_covered", _verify_envelope, pem, etree.tostring(envelope))
    # ... and the forged Body without an id is simply not signed.
    del forged.attrib[WSU_ID]
    _refused(pem, "message_not_covered", _verify_envelope, pem, envelope)


def test_issue17_duplicate_ids_refused(pem):
    envelope = _envelope(pem)
    timestamp = envelope.find(".//wsu:Timestamp", NS)
    decoy = etree.SubElement(envelope.find("soap:Header", NS), "{urn:attacker}Decoy")
    decoy.set("ID", timestamp.get(WSU_ID))
    _refused(pem, "message_not_covered", _verify_envelope, pem, envelope)


def test_issue17_unsigned_addressing_header_refused(pem):
    envelope = _envelope(pem)
    to = envelope.find("soap:Header/wsa:To", NS)
    to.set(WSU_ID, "to-unsigned")
    to.text = "https://elsewhere.invalid/"
    _refused(pem, "message_not_covered", _verify_envelope, pem, envelope)


def test_issue17_timestamp_missing_or_expired_refused(pem):
    envelope = _envelope(pem)
    security = envelope.find("soap:Header/wsse:Security", NS)
    security.remove(security.find("wsu:Timestamp", NS))
    _refused(pem, "timestamp", _verify_envelope, pem, envelope)

    stale = _envelope(pem, now=_utcnow() - dt.timedelta(minutes=20), ttl=dt.timedelta(minutes=5))
    _refused(pem, "timestamp", _verify_envelope, pem, stale)
    early = _envelope(pem, now=_utcnow() + dt.timedelta(minutes=10))
    _refused(pem, "timestamp", _verify_envelope, pem, early)


def test_issue17_doctype_entity_and_comments_refused_as_malformed(pem):
    data = etree.tostring(_envelope(pem))
    with_entity = (b'<?xml version="1.0"?><!DOCTYPE soap:Envelope [<!ENTITY x "1.00">]>'
                   + data.replace(b"125.50", b"&x;"))
    _refused(pem, "malformed", _verify_envelope, pem, with_entity)
    external = b'<!DOCTYPE e SYSTEM "http://127.0.0.1:9/e.dtd">' + data
    _refused(pem, "malformed", _verify_envelope, pem, external)
    _refused(pem, "malformed", saml.parse_assertion, b'<!DOCTYPE a [<!ENTITY x "y">]>' + _token(pem))
    _refused(pem, "malformed", _verify_envelope, pem, b"<not-xml")
    _refused(pem, "malformed", saml.parse_assertion, BODY)
    # A comment splits signed text without breaking exclusive c14n: refused outright.
    commented = data.replace(b"125.50", b"1<!-- -->25.50")
    _refused(pem, "malformed", _verify_envelope, pem, commented)


def test_issue17_refusal_texts_never_quote_token_or_key_material(pem):
    token = _token(pem)
    assertion_id = saml.parse_assertion(token).get("ID")
    texts = []
    for call in (lambda: _verify_token(pem, _token(pem, cvr="11111111")),
                 lambda: _verify_token(pem, _token(pem, key="rogue_key", cert="rogue_cert")),
                 lambda: _verify_envelope(pem, _envelope(pem, key="rogue_key", cert="rogue_cert")),
                 lambda: _verify_envelope(pem, re.sub(rb"125\.50", b"1.00", etree.tostring(_envelope(pem))))):
        with pytest.raises(TokenRefused) as caught:
            call()
        texts.append(str(caught.value))
    for text in texts:
        assert assertion_id not in text and "<" not in text and "PRIVATE KEY" not in text
        assert not any(fragment in text for fragment in _secret_fragments(pem))
