"""Throwaway certificates for mutual-TLS tests: made in process with ``cryptography``, never stored."""

from __future__ import annotations

import datetime as dt


def certificates(tmp_path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1, a client certificate from the CA and one from a
    stranger CA, all made in process with ``cryptography``; returns PEM file paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    paths: dict[str, str] = {}

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(label, cert, key=None):
        (tmp_path / f"{label}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{label}_cert"] = str(tmp_path / f"{label}.crt")
        if key is not None:
            (tmp_path / f"{label}.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            paths[f"{label}_key"] = str(tmp_path / f"{label}.key")

    def ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return cert, key

    def leaf(cn, issuer, issuer_key, server: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                  critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256()), key

    ca_cert, ca_key = ca("fbs-debitor test CA")
    stranger_cert, stranger_key = ca("stranger CA")
    write("ca", ca_cert)
    write("server", *leaf("127.0.0.1", ca_cert, ca_key, server=True))
    write("client", *leaf("fbs-debitor client", ca_cert, ca_key, server=False))
    write("rogue", *leaf("rogue client", stranger_cert, stranger_key, server=False))
    return paths
