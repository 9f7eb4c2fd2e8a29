"""Certificates for links between parties: `aero-compile keys DIR` makes a CA and one certificate per role.

    aero-compile keys keys/            # keys/ca.pem, keys/ca-key.pem, keys/{owner,client,dealer}/{cert,key}.pem
    # copy keys/ca.pem, keys/trust/ and keys/<role>/ to the host of each role; keep keys/ca-key.pem elsewhere

Layout (users may bring their own files in it; ``load_role`` checks it):

- ``ca.pem``: the CA certificate every party trusts; ``ca-key.pem``: its key (never needed on a party host).
- ``<role>/cert.pem``: the role's certificate (subject CommonName = the role, SubjectAlternativeName DNS =
  the role), followed by the role's intermediate CA certificate (signed by the CA); ``<role>/key.pem``.
- ``trust/<role>.pem`` (optional): the role's intermediate CA as a self-signed trust anchor. A TLS stack
  that cannot check a peer's name (SPU's brpc) trusts ``trust/<peer role>.pem`` instead of ``ca.pem``, so
  that only a certificate of that role verifies: the role is bound without a name check. A stack that
  checks names (Python ``ssl``) trusts ``ca.pem`` and requires the SAN to be the role.

Keys are EC P-256, written 0600; the folder appears complete or not at all; nothing here logs a key.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aero_compile.errors import AeroError

ROLES = ("owner", "client", "dealer")
DEFAULT_DAYS = 365


def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise AeroError("making certificates needs the 'cryptography' package: pip install cryptography") from None
    return x509, hashes, serialization, ec, NameOID


@dataclass
class Authority:
    """A certificate and the key that signs with it."""
    certificate: object
    key: object


def _name(common_name: str):
    x509, _, _, _, NameOID = _crypto()
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aero-compile"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(days: float, start: datetime.datetime | None) -> tuple[datetime.datetime, datetime.datetime]:
    begin = start or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)  # clock skew
    return begin, begin + datetime.timedelta(days=days)


def _certificate(subject: str, public_key, issuer: Authority | None, signing_key, *, ca: bool, days: float,
                 start: datetime.datetime | None = None, san: str | None = None):
    x509, hashes, _, _, _ = _crypto()
    begin, end = _validity(days, start)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(issuer.certificate.subject if issuer else _name(subject))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(begin).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=(1 if issuer is None else 0) if ca else None),
                              critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=not ca, encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.certificate.public_key()), critical=False)
    if san is not None:
        from cryptography.x509.oid import ExtendedKeyUsageOID

        builder = (builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    return builder.sign(signing_key, hashes.SHA256())


def _new_key():
    _, _, _, ec, _ = _crypto()
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(days: float = DEFAULT_DAYS, name: str = "aero-compile CA") -> Authority:
    """A self-signed CA."""
    key = _new_key()
    return Authority(_certificate(name, key.public_key(), None, key, ca=True, days=days), key)


@dataclass
class RoleCredentials:
    """What one role's host holds: its certificate chain, its key, and its intermediate's trust anchor."""
    role: str
    certificate: object
    intermediate: object
    anchor: object
    key: object


def issue_role(ca: Authority, role: str, *, days: float = DEFAULT_DAYS,
               start: datetime.datetime | None = None) -> RoleCredentials:
    """A certificate for ``role`` (CN and SAN DNS = role) under a per-role intermediate signed by ``ca``.

    ``start`` and ``days`` let a test make an expired certificate (start two days ago, one day long).
    """
    intermediate_key = _new_key()
    subject = f"aero-compile {role} CA"
    intermediate = _certificate(subject, intermediate_key.public_key(), ca, ca.key, ca=True, days=days, start=start)
    # the same subject and key, self-signed: a trust anchor that verifies this role's certificates only
    anchor = _certificate(subject, intermediate_key.public_key(), None, intermediate_key, ca=True, days=days,
                          start=start)
    key = _new_key()
    certificate = _certificate(role, key.public_key(), Authority(intermediate, intermediate_key), intermediate_key,
                               ca=False, days=days, start=start, san=role)
    return RoleCredentials(role, certificate, intermediate, anchor, key)


def load_authority(directory: str | os.PathLike) -> Authority:
    """The CA of a ``keys`` folder (ca.pem + ca-key.pem), to issue more certificates (tests: an expired one)."""
    x509, _, serialization, _, _ = _crypto()
    folder = Path(directory)
    return Authority(x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes()),
                     serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), password=None))


def self_signed_role(role: str, days: float = DEFAULT_DAYS) -> RoleCredentials:
    """A certificate naming ``role`` that no CA signed (what an impostor can make)."""
    key = _new_key()
    certificate = _certificate(role, key.public_key(), None, key, ca=False, days=days, san=role)
    return RoleCredentials(role, certificate, certificate, certificate, key)


def _pem(obj) -> bytes:
    _, _, serialization, _, _ = _crypto()
    if hasattr(obj, "public_bytes"):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # a key is never world-readable
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def write_role(folder: Path, credentials: RoleCredentials) -> None:
    """``folder/cert.pem`` (the role's certificate, then its intermediate) and ``folder/key.pem`` (0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    chain = _pem(credentials.certificate) + (b"" if credentials.intermediate is credentials.certificate
                                             else _pem(credentials.intermediate))
    _write(folder / "cert.pem", chain, 0o644)
    _write(folder / "key.pem", _pem(credentials.key), 0o600)


def write_keys(directory: str | os.PathLike, *, days: float = DEFAULT_DAYS, force: bool = False,
               roles: tuple[str, ...] = ROLES) -> Path:
    """Make a CA and each role's certificate in ``directory``, which appears complete or not at all."""
    target = Path(directory)
    if days <= 0:
        raise AeroError(f"--days must be positive, got {days}")
    if target.exists() and not force:
        raise AeroError(f"{target} exists: choose a new folder, or pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))  # 0700
    try:
        ca = make_ca(days)
        _write(staging / "ca.pem", _pem(ca.certificate), 0o644)
        _write(staging / "ca-key.pem", _pem(ca.key), 0o600)
        (staging / "trust").mkdir()
        for role in roles:
            credentials = issue_role(ca, role, days=days)
            write_role(staging / role, credentials)
            _write(staging / "trust" / f"{role}.pem", _pem(credentials.anchor), 0o644)
        os.chmod(staging, 0o755)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, retired / "keys")
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


@dataclass(frozen=True)
class RoleFiles:
    """The paths one party needs for ``role``: the CA, its own certificate and key, and the trust anchors found."""
    role: str
    ca: Path
    certificate: Path
    key: Path
    trust: dict[str, Path]


def load_role(directory: str | os.PathLike, role: str) -> RoleFiles:
    """The files ``role`` uses from ``directory``; AeroError saying in one line what is missing."""
    if role not in ROLES:
        raise AeroError(f"unknown role '{role}': use one of {', '.join(ROLES)}")
    folder = Path(directory)
    if not folder.is_dir():
        raise AeroError(f"--tls {folder}: no such folder (make one with `aero-compile keys {folder}`)")
    needed = {"ca.pem": folder / "ca.pem", f"{role}/cert.pem": folder / role / "cert.pem",
              f"{role}/key.pem": folder / role / "key.pem"}
    missing = [name for name, path in needed.items() if not path.is_file()]
    if missing:
        raise AeroError(f"--tls {folder}: missing {', '.join(missing)} (the layout `aero-compile keys` writes: "
                        f"ca.pem and <role>/cert.pem + key.pem)")
    key_path = needed[f"{role}/key.pem"]
    if key_path.stat().st_mode & 0o077:
        raise AeroError(f"--tls {folder}: {role}/key.pem is readable by other users: chmod 600 {key_path}")
    _check_pem(needed, folder)
    trust = {r: folder / "trust" / f"{r}.pem" for r in ROLES if (folder / "trust" / f"{r}.pem").is_file()}
    return RoleFiles(role, needed["ca.pem"], needed[f"{role}/cert.pem"], key_path, trust)


def _check_pem(files: dict[str, Path], folder: Path) -> None:
    x509, _, serialization, _, _ = _crypto()
    for name, path in files.items():
        data = path.read_bytes()
        try:
            if name.endswith("key.pem"):
                serialization.load_pem_private_key(data, password=None)
            else:
                x509.load_pem_x509_certificates(data)
        except (ValueError, TypeError) as exc:
            kind = "an unencrypted PEM private key" if name.endswith("key.pem") else "PEM certificates"
            raise AeroError(f"--tls {folder}: {name} is not {kind} ({str(exc).splitlines()[0][:80]})") from None


def build_parser():
    """The parser of `aero-compile keys DIR [--days N] [--force]`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="aero-compile keys",
        description="Make a CA and one certificate per role (owner, client, dealer) for links between hosts. "
                    "Copy ca.pem, trust/ and <role>/ to each role's host; keep ca-key.pem off the party hosts.")
    parser.add_argument("directory", help="folder to create (refused if it exists, unless --force)")
    parser.add_argument("--days", type=float, default=DEFAULT_DAYS, help=f"validity in days (default {DEFAULT_DAYS})")
    parser.add_argument("--force", action="store_true", help="replace an existing folder")
    return parser


def keys_command(argv: list[str]) -> int:
    """`aero-compile keys DIR [--days N] [--force]`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    target = write_keys(args.directory, days=args.days, force=args.force)
    print(f"wrote {target}/ca.pem, ca-key.pem, trust/ and {', '.join(ROLES)}/cert.pem + key.pem "
          f"(valid {args.days:g} days). Keep ca-key.pem off the party hosts.")
    return 0
