"""Mutual TLS between parties with per-role certificates (``keys``): contexts, and a check of a peer's role.

A peer is accepted only with a certificate from the CA whose SubjectAlternativeName names the role it
plays. ``ssl`` checks the name for us: a client context is opened with ``server_hostname=<peer role>``
and ``check_hostname`` on, so the role is the "host name" the certificate must carry.

``check_peer`` opens one TLS connection to a peer's listening port (SPU's brpc server, which speaks TLS
on the same port), checks the certificate it presents and closes again, so that an impostor at a
party's address is refused with one line naming the peer and the reason, before anything is sent to it;
brpc itself only logs such refusals, and the party would otherwise see a timeout.
"""

from __future__ import annotations

import socket
import ssl
import time

from aero_compile.errors import AeroError

from .keys import RoleFiles


class LinkRefused(AeroError):
    """A peer failed authentication: one line naming it and why."""


def client_context(files: RoleFiles) -> ssl.SSLContext:
    """A context that presents ``files``' certificate and accepts a server only with a CA certificate of the
    role passed as ``server_hostname``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(files.ca))
    context.load_cert_chain(str(files.certificate), str(files.key))
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(files: RoleFiles) -> ssl.SSLContext:
    """A context that presents ``files``' certificate and requires a client certificate from the CA (the
    caller checks its role with ``peer_role_of``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(files.ca))
    context.load_cert_chain(str(files.certificate), str(files.key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_role_of(connection: ssl.SSLSocket) -> str | None:
    """The role a verified peer's certificate names (its SAN DNS entry), or None."""
    names = [value for kind, value in (connection.getpeercert() or {}).get("subjectAltName", ()) if kind == "DNS"]
    return names[0] if len(names) == 1 else None


def describe_refusal(exc: BaseException, expected_role: str) -> str:
    """Why a TLS handshake failed, in words (an SSLError's reason, not its repr)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or str(exc)
        if "Hostname mismatch" in message or "IP address mismatch" in message:
            return f"its certificate is not for the role '{expected_role}'"
        if "expired" in message:
            return "its certificate has expired"
        if "not yet valid" in message:
            return "its certificate is not valid yet"
        if "self-signed" in message or "self signed" in message or "local issuer" in message:
            return "its certificate is not signed by our CA (self-signed or from another CA)"
        return f"its certificate was refused ({message})"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).lower()
        if "wrong_version_number" in reason or "record layer" in reason or "http_request" in reason:
            return "it does not speak TLS (no certificate)"
        if "certificate" in reason or "alert" in reason:
            return f"it refused our certificate ({exc.reason})"
        return f"the TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, EOFError)):
        return "it closed the connection during the TLS handshake (no certificate, or it refused ours)"
    return f"the TLS handshake failed ({exc})"


def check_peer(address: str, expected_role: str, files: RoleFiles, *, peer: str, timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for ``address`` to listen, then require a CA certificate for ``expected_role``
    there; LinkRefused (one line naming ``peer`` and the reason) if it presents anything else."""
    host, _, port = address.rpartition(":")
    context = client_context(files)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            raw = socket.create_connection((host, int(port)), timeout=max(1.0, min(10.0, timeout_s)))
        except (ConnectionRefusedError, socket.timeout, OSError) as exc:
            if time.monotonic() >= deadline:
                raise AeroError(f"could not reach {peer} at {address} within {timeout_s:.0f} s ({exc})") from None
            time.sleep(0.2)
            continue
        break
    try:
        with context.wrap_socket(raw, server_hostname=expected_role) as connection:
            connection.settimeout(max(1.0, min(10.0, timeout_s)))
            # TLS 1.3: a server that refuses our certificate says so after the handshake; read to hear it
            _await_alert(connection)
    except (ssl.SSLError, ConnectionError, EOFError, socket.timeout) as exc:
        raise LinkRefused(f"refused {peer} at {address}: {describe_refusal(exc, expected_role)}") from None
    finally:
        raw.close()


def _await_alert(connection: ssl.SSLSocket) -> None:
    connection.setblocking(False)
    time.sleep(0.05)
    try:
        connection.recv(1)
    except (ssl.SSLWantReadError, BlockingIOError):
        pass  # nothing to read: the server accepted us
    finally:
        connection.setblocking(True)
