"""Certificates for the link tests: a CA, one certificate per role, and the impostors' (test helper)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROLES = ("owner", "client", "dealer")


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca():
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("aero test CA")).issuer_name(_name("aero test CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(role: str, ca_key, ca_cert, *, expired: bool = False):
    """A certificate naming ``role`` (CommonName and SAN DNS); self-signed when ``ca_key`` is None."""
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = (now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)) if expired else \
        (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    issuer_key, issuer = (key, _name(role)) if ca_key is None else (ca_key, ca_cert.subject)
    cert = (x509.CertificateBuilder().subject_name(_name(role)).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(role)]), critical=False)
            .sign(issuer_key, hashes.SHA256()))
    return key, cert


def write_role(directory: Path, role: str, key, cert, ca_cert) -> Path:
    (directory / role).mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (directory / role / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / role / "key.pem").write_bytes(_pem_key(key))
    return directory


def make_keys(directory: Path):
    """DIR/ca.pem and DIR/<role>/{cert,key}.pem for every role; returns (ca_key, ca_cert)."""
    ca_key, ca_cert = make_ca()
    for role in ROLES:
        write_role(directory, role, *issue(role, ca_key, ca_cert), ca_cert)
    return ca_key, ca_cert
