"""Impostors at an SPU party's address, and at its port: each is refused in one line naming the peer and why.

The victim is a real `aero-compile ... --spu-party 1 --tls DIR` process (the client); the impostor sits at
the model owner's address. Whatever the impostor presents (nothing, a self-signed certificate, a valid
one for another role, an expired one, one from another CA) or does (dies mid-handshake), the client
exits 2 with one line, sends nothing but a TLS handshake, and leaves no process behind.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings

import pytest

from aero_compile.targets.private.keys import (issue_role, load_authority, make_ca, self_signed_role, write_keys,
                                               write_role)
from aero_compile.targets.spu.party import free_addresses

pytestmark = [pytest.mark.spu, pytest.mark.slow]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return write_keys(tmp_path_factory.mktemp("tls") / "keys")


class Impostor:
    """A TLS (or plain) server at ``address`` that records what it is sent; ``behaviour`` picks its trick."""

    def __init__(self, address: str, behaviour: str, cert_folder=None):
        host, _, port = address.rpartition(":")
        self.listener = socket.create_server((host, int(port)))
        self.behaviour, self.received, self.context = behaviour, bytearray(), None
        if cert_folder is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(cert_folder / "cert.pem", cert_folder / "key.pem")
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.listener.settimeout(120)
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(connection,), daemon=True).start()

    def handle(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30)
            try:
                if self.behaviour == "plain":  # no certificate at all: answers as a plaintext server
                    self.received += connection.recv(65536)
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                elif self.behaviour == "dies-mid-handshake":  # reads the ClientHello, then is gone
                    self.received += connection.recv(65536)
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                else:
                    with self.context.wrap_socket(connection, server_side=True) as tls:
                        while chunk := tls.recv(65536):
                            self.received += chunk
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.listener.close()


def _client_party(addresses: list[str], keys) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aero_compile", "gpt2-tiny{n_layer=1}", "--passes", "none", "--no-cost",
         "--run-private", "--engine", "spu", "--spu-protocol", "semi2k", "--spu-party", "1",
         "--spu-addresses", ",".join(addresses), "--private-seq-len", "4", "--seq-len", "4",
         "--party-timeout", "30", "--tls", str(keys)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _processes_naming(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"):
                    found.append(int(pid))
            except OSError:
                pass
    return found


def _impostor_files(kind: str, keys, folder):
    """The certificate folder an impostor at the owner's address presents."""
    if kind == "self-signed":
        credentials = self_signed_role("owner")
    elif kind == "wrong-role":
        return keys / "dealer"  # a genuine certificate from our CA, for another role
    elif kind == "expired":
        start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3)
        credentials = issue_role(load_authority(keys), "owner", days=1, start=start)
    elif kind == "other-ca":
        credentials = issue_role(make_ca(), "owner")
    else:
        return None
    write_role(folder / kind, credentials)
    return folder / kind


@pytest.mark.parametrize("kind, reason", [
    ("plain", "it does not speak TLS (no certificate)"),
    ("self-signed", "its certificate is not signed by our CA"),
    ("wrong-role", "its certificate is not for the role 'owner'"),
    ("expired", "its certificate has expired"),
    ("other-ca", "its certificate is not signed by our CA"),
    ("dies-mid-handshake", "closed the connection during the TLS handshake"),
])
def test_an_impostor_at_the_owners_address_is_refused_in_one_line(keys, tmp_path, kind, reason):
    owner_address, client_address = free_addresses(2)
    behaviour = kind if kind in ("plain", "dies-mid-handshake") else "tls"
    impostor = Impostor(owner_address, behaviour, _impostor_files(kind, keys, tmp_path))
    started = time.monotonic()
    client = _client_party([owner_address, client_address], keys)
    try:
        stdout, stderr = client.communicate(timeout=240)
    finally:
        client.kill()
        impostor.close()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert client.returncode == 2, stderr[-3000:]
    assert lines == [f"aero-compile: error: refused the model owner (rank 0) at {owner_address}: {reason}"] or (
        len(lines) == 1 and reason in lines[0] and "the model owner (rank 0)" in lines[0]), stderr[-3000:]
    assert time.monotonic() - started < 120  # refused at once, not after the 30 s timeout plus retries
    # only a TLS ClientHello (and perhaps an alert) ever reached the impostor: no share, no token, no weight
    assert len(impostor.received) < 4096
    assert _processes_naming(client_address) == []  # nothing left running


def _handshake_as(address: str, cert_folder, ca) -> str | None:
    """Connect to a party's port as a client presenting ``cert_folder``; the error, or None if accepted."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(ca)
    context.load_cert_chain(cert_folder / "cert.pem", cert_folder / "key.pem")
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.settimeout(3)
            return "closed" if tls.recv(1) == b"" else None  # TLS 1.3: a refusal arrives as an alert here
    except (ssl.SSLError, ConnectionError) as exc:
        return str(exc)
    except socket.timeout:
        return None


def test_a_party_port_accepts_only_the_peer_role(keys, tmp_path):
    """The client's brpc server trusts only the owner's anchor (trust/owner.pem): a dealer certificate from the
    same CA is refused at the handshake, the owner's is accepted."""
    owner_address, client_address = free_addresses(2)
    client = _client_party([owner_address, client_address], keys)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for the client's brpc server to listen
            try:
                host, _, port = client_address.rpartition(":")
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        refused = _handshake_as(client_address, keys / "dealer", keys / "ca.pem")
        accepted = _handshake_as(client_address, keys / "owner", keys / "ca.pem")
    finally:
        client.kill()
        client.communicate()
    assert refused is not None and ("unknown ca" in refused.lower() or "closed" in refused or "alert" in refused.lower())
    assert accepted is None


class Tap:
    """A TCP forwarder at ``listen`` to ``target`` that records every byte in both directions."""

    def __init__(self, listen: str, target: str):
        host, _, port = listen.rpartition(":")
        self.listener = socket.create_server((host, int(port)))
        self.target, self.seen = target, bytearray()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            host, _, port = self.target.rpartition(":")
            try:
                outbound = socket.create_connection((host, int(port)))
            except OSError:
                inbound.close()
                continue
            for source, sink in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self.pump, args=(source, sink), daemon=True).start()

    def pump(self, source: socket.socket, sink: socket.socket) -> None:
        # When one direction ends (the sender finished, or its socket failed), only that direction is ended at the
        # far side (SHUT_WR), as TCP between the two ends would: the other direction's pump still delivers what it
        # holds. Shutting both directions here could cut the owner's connection before the client's last reply
        # reached it: in two full-suite runs the owner ended with exit code 255 and nothing on stderr, its native
        # log showing SPU 0.9.5's brpc failing a CHECK (controller.cpp:457, "error_code is 0") on a read that
        # found the connection closed.
        try:
            while chunk := source.recv(65536):
                self.seen += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def _wait_until_listening(address: str, process: subprocess.Popen, timeout_s: float = 180.0) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the client never listened at {address} (exit code {process.poll()})")


def _tapped_run(keys, tmp_path, link: list[str]) -> bytes | RunFailed:
    """One owner + client run whose owner -> client traffic goes through a tap; what the tap saw."""
    owner_address, client_address, tapped = free_addresses(3)
    tap = Tap(tapped, client_address)
    command = [sys.executable, "-m", "aero_compile", "gpt2-tiny{n_layer=1}", "--passes", "none", "--no-cost",
               "--run-private", "--engine", "spu", "--spu-protocol", "semi2k", "--private-seq-len", "4",
               "--seq-len", "4", "--party-timeout", "60", "--private-repetitions", "1", *link]  # bytes, not time
    # the owner reaches the client through the tap; the client listens at its real address. The tap accepts
    # at once and closes when the client is not up yet, which the owner's certificate check rightly takes
    # for a peer dying mid-handshake: so the owner starts once the client listens.
    client = subprocess.Popen(command + ["--spu-party", "1", "--spu-addresses", f"{owner_address},{client_address}",
                                         "--report-json", str(tmp_path / "client.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until_listening(client_address, client)
    owner = subprocess.Popen(command + ["--spu-party", "0", "--spu-addresses", f"{owner_address},{tapped}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for name, process in (("owner", owner), ("client", client)):
            stdout, stderr = process.communicate(timeout=300)
            if process.returncode != 0:
                return RunFailed(f"{name} exited {process.returncode}: stderr {stderr[-1500:]!r}; "
                                 f"stdout {stdout[-1500:]!r}")
    finally:
        for process in (owner, client):
            process.kill()
        tap.close()
    return bytes(tap.seen)


class RunFailed(str):
    """Why a tapped run did not finish: what both of its processes printed."""


def _tapped_bytes(keys, tmp_path, link: list[str]) -> bytes:
    """What the tap saw on a finished run. In two full-suite runs the owner of the TLS run exited 255 with nothing
    on stderr (brpc's CHECK at controller.cpp:457 on a closed connection: see ``pump``): a second run is allowed,
    and the first one's output is reported as a warning, so a failure of the setup is seen without hiding one of
    the check."""
    seen = _tapped_run(keys, tmp_path, link)
    if isinstance(seen, RunFailed):
        warnings.warn(f"a tapped run failed and was run again: {seen}")
        seen = _tapped_run(keys, tmp_path, link)
        assert not isinstance(seen, RunFailed), seen
    return seen


def test_a_tap_on_the_link_reads_the_shares_without_tls_and_nothing_with_it(keys, tmp_path):
    """The control (--insecure-link): the owner's share messages cross the wire in the clear, their header and
    the wire's magic readable. With --tls the same run's bytes hold neither."""
    known = (b'"kind":"spu-shares"', b"AERO\x01")
    plain = _tapped_bytes(keys, tmp_path, ["--insecure-link"])
    assert all(marker in plain for marker in known) and len(plain) > 100_000
    secured = _tapped_bytes(keys, tmp_path, ["--tls", str(keys)])
    assert len(secured) > 100_000  # the same protocol's traffic went through the tap
    assert not any(marker in secured for marker in known)
