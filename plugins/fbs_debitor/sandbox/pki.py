"""Throwaway certificates for the sandbox: a test CA made on the fly, and what Serviceplatformen's
parties hold in real life, issued by it. Nothing here is used outside the sandbox and its tests.

| name               | what                                                                  |
|--------------------|-----------------------------------------------------------------------|
| ``ca``             | the test CA every other certificate below is issued by               |
| ``server``         | TLS server certificate for 127.0.0.1 / localhost (STS, emulator, inbound) |
| ``system``         | FBS's IT-system certificate: mutual TLS to the STS and Serviceplatformen, and the holder-of-key that signs token calls |
| ``sts_signing``    | the STS's signing certificate (signs the SAML assertions it issues)  |
| ``serviceplatformen`` | Serviceplatformen's client certificate: what calls the inbound SF1590_B_01A service |
| ``rogue``          | a client certificate from a stranger CA (``stranger_ca``), for refusals |

``ensure(folder)`` writes ``<name>.crt`` (PEM) and ``<name>.key`` (PEM, PKCS#8, mode 0600) and
returns their paths; it makes a new set when a file is missing or a certificate ends within a day.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NAMES = ("ca", "server", "system", "sts_signing", "serviceplatformen", "stranger_ca", "rogue")
VALID_DAYS = 30


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DK"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fbs-debitor sandbox"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _usage(**on) -> x509.KeyUsage:
    flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                 encipher_only=False, decipher_only=False)
    flags.update(on)
    return x509.KeyUsage(**flags)


def _ca(cn: str, now: dt.datetime):
    key = _key()
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(cn: str, issuer: x509.Certificate, issuer_key, now: dt.datetime, *, server: bool = False,
          client: bool = False):
    key = _key()
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_usage(digital_signature=True, key_encipherment=True), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def paths(folder: str | Path) -> dict[str, str]:
    """``{"<name>_cert": path, "<name>_key": path}`` for every certificate of the set."""
    folder = Path(folder)
    out = {}
    for name in NAMES:
        out[f"{name}_cert"] = str(folder / f"{name}.crt")
        out[f"{name}_key"] = str(folder / f"{name}.key")
    return out


def _fresh(folder: Path) -> bool:
    found = paths(folder)
    if not all(os.path.isfile(p) for p in found.values()):
        return False
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    for name in NAMES:
        cert = x509.load_pem_x509_certificate(Path(found[f"{name}_cert"]).read_bytes())
        if cert.not_valid_after_utc < soon:
            return False
    return True


def make(folder: str | Path) -> dict[str, str]:
    """A new set in ``folder`` (made if missing), replacing any old one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_cert, ca_key = _ca("fbs-debitor sandbox test CA", now)
    stranger_cert, stranger_key = _ca("stranger CA", now)
    made = {
        "ca": (ca_cert, ca_key),
        "server": _leaf("localhost", ca_cert, ca_key, now, server=True),
        "system": _leaf("FBS Cicero IT-system (sandbox)", ca_cert, ca_key, now, client=True),
        "sts_signing": _leaf("KOMBIT STS signing (sandbox)", ca_cert, ca_key, now),
        "serviceplatformen": _leaf("Serviceplatformen (sandbox)", ca_cert, ca_key, now, client=True),
        "stranger_ca": (stranger_cert, stranger_key),
        "rogue": _leaf("rogue client", stranger_cert, stranger_key, now, client=True),
    }
    for name, (cert, key) in made.items():
        (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = folder / f"{name}.key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return paths(folder)


def ensure(folder: str | Path) -> dict[str, str]:
    """The set in ``folder``, made first when missing or ending within a day."""
    return paths(folder) if _fresh(Path(folder)) else make(folder)
