"""Mutual TLS between parties, one certificate per role: ``DIR/ca.pem`` + ``DIR/<role>/cert.pem`` + ``key.pem``.

    tls = TlsRoles.load("keys/", role="client")     # AeroError naming a missing or unreadable file
    sock = tls.client_side(sock, peer_role="owner", peer_name="model owner (rank 0)", own_role="client")

Roles: ``owner`` (rank 0), ``client`` (rank 1), ``dealer`` (the ``ttp`` trusted third party). A
certificate names its role in its subject CommonName and in a SAN DNS name (``aero-compile keys DIR``
writes exactly this layout; users may bring their own PEM files in it). Standard ``ssl`` only.

A peer is accepted only if its certificate chains to ``ca.pem``, is valid now, and names the role the
peer stands for: the dialling side checks the listener's certificate right after the handshake, before
it sends anything; the listening side checks the dialler's against the rank its hello claims (the hello
carries a rank and an address, nothing derived from the prompt or the weights). Hostname checking is
off on purpose: peers are identified by role, not by host name, and the role check is ours (so that the
refusal can say what the certificate named). Every refusal is one AeroError line naming the peer and
the reason: no certificate, not from this run's CA (self-signed or another CA), expired, not yet valid,
wrong role.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from aero_compile.errors import AeroError

ROLES = ("owner", "client", "dealer")
HANDSHAKE_TIMEOUT_S = 30.0
# OpenSSL's verify codes for the reasons a user can act on
_VERIFY_REASONS = {
    7: "its certificate is not issued by this run's CA (its signature does not verify against ca.pem)",
    9: "its certificate is not valid yet",
    10: "its certificate has expired",
    18: "its certificate is self-signed, not issued by this run's CA (ca.pem)",
    19: "its certificate chain ends in a CA other than this run's (ca.pem)",
    20: "its certificate is not issued by this run's CA (ca.pem)",
    21: "its certificate is not issued by this run's CA (ca.pem)",
}


def role_files(directory: str | Path, role: str) -> dict[str, Path]:
    base = Path(directory)
    return {"ca": base / "ca.pem", "cert": base / role / "cert.pem", "key": base / role / "key.pem"}


class TlsRoles:
    """The CA and this party's certificate and key, as client and server contexts."""

    def __init__(self, directory: str | Path, role: str, client: ssl.SSLContext, server: ssl.SSLContext):
        self.directory, self.role, self.client, self.server = Path(directory), role, client, server

    @classmethod
    def load(cls, directory: str | Path, role: str) -> "TlsRoles":
        if role not in ROLES:
            raise AeroError(f"internal: unknown TLS role '{role}': one of {', '.join(ROLES)}")
        files = role_files(directory, role)
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            raise AeroError(f"--tls {directory}: missing {', '.join(missing)} (this host needs ca.pem and its own "
                            f"role's folder, {role}/: create them with `aero-compile keys DIR`)")
        contexts = []
        for purpose in (ssl.PROTOCOL_TLS_CLIENT, ssl.PROTOCOL_TLS_SERVER):
            context = ssl.SSLContext(purpose)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.check_hostname = False  # peers are identified by role (checked in check_role), not host name
            context.verify_mode = ssl.CERT_REQUIRED  # both ways: the listener requires a client certificate
            try:
                context.load_verify_locations(cafile=str(files["ca"]))
                context.load_cert_chain(str(files["cert"]), str(files["key"]))
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise AeroError(f"--tls {directory}: cannot use the {role} certificate and key or ca.pem ({exc})"
                                ) from None
            if purpose == ssl.PROTOCOL_TLS_SERVER:
                context.num_tickets = 0  # no session tickets: nothing is ever read from a write-only connection
            contexts.append(context)
        return cls(directory, role, *contexts)

    def client_side(self, sock, *, peer_role: str, peer_name: str, own_name: str):
        """Our end of a connection we dialled to ``peer_name``, authenticated both ways and role-checked."""
        where = _address(sock)
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT_S)
            secure = self.client.wrap_socket(sock)
        except ssl.SSLCertVerificationError as exc:
            raise AeroError(f"{own_name} refused {peer_name} at {where}: {_reason(exc)}") from None
        except (ssl.SSLError, OSError) as exc:
            raise AeroError(f"{peer_name} at {where} refused the certificate of {own_name}, or the TLS handshake "
                            f"failed ({_alert(exc)})") from None
        self.check_role(secure, claimed_role=peer_role, peer_name=f"{peer_name} at {where}", own_name=own_name)
        return secure

    def server_side(self, sock, *, where: str, own_name: str):
        """Our end of a connection a peer dialled: its certificate must chain to the CA (role checked later)."""
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT_S)
            return self.server.wrap_socket(sock, server_side=True)
        except ssl.SSLCertVerificationError as exc:
            raise AeroError(f"{own_name} refused a peer at {where}: {_reason(exc)}") from None
        except (ssl.SSLError, OSError) as exc:
            text = str(exc)
            if "did not return a certificate" in text or "certificate required" in text.lower():
                raise AeroError(f"{own_name} refused a peer at {where}: it presented no certificate") from None
            raise AeroError(f"{own_name} refused a peer at {where}: TLS handshake failed ({_alert(exc)})") from None

    def check_role(self, sock, *, claimed_role: str, peer_name: str, own_name: str) -> None:
        """AeroError unless the peer's certificate names ``claimed_role`` (CommonName and a SAN DNS name)."""
        certificate = sock.getpeercert() or {}
        common = [value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"]
        dns = [value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"]
        if claimed_role not in common or claimed_role not in dns:
            named = ", ".join(sorted(set(common + dns))) or "no role"
            sock.close()
            raise AeroError(f"{own_name} refused {peer_name}: its certificate names {named}, not the role "
                            f"'{claimed_role}' it stands for")


def _reason(exc: ssl.SSLCertVerificationError) -> str:
    return _VERIFY_REASONS.get(exc.verify_code, f"its certificate failed verification ({exc.verify_message})")


def _alert(exc: BaseException) -> str:
    text = getattr(exc, "reason", None) or str(exc)
    return str(text).replace("_", " ").lower()[:120]


def _address(sock) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "an unknown address"
