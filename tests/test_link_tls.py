"""Mutual TLS on the parties' links: impostors refused in one line naming the peer and the reason; a capture
of the traffic shows an input share without TLS and none with it."""

from __future__ import annotations

import ssl
import sys
import threading
from pathlib import Path

import pytest

from aero_compile.errors import AeroError
from aero_compile.targets.crypten.party import link_plan
from aero_compile.targets.crypten.runner import PRELOAD, free_loopback_ports
from aero_compile.targets.private import processes
from aero_compile.targets.private.link.mesh import Mesh
from aero_compile.targets.private.link.process import RelayProcess
from aero_compile.targets.private.link.spec import LinkSpec
from aero_compile.targets.private.link.tls import TlsRoles

sys.path.insert(0, str(Path(__file__).parent))
from link_certificates import issue, make_ca, make_keys, write_role  # noqa: E402
from link_capture_party import open_a_share  # noqa: E402


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The run's keys, and impostor folders with ca.pem plus one bad certificate each."""
    base = tmp_path_factory.mktemp("keys")
    ca_key, ca_cert = make_keys(base / "good")
    other_ca_key, other_ca = make_ca()
    write_role(base / "self-signed", "client", *issue("client", None, None), ca_cert)
    write_role(base / "expired", "client", *issue("client", ca_key, ca_cert, expired=True), ca_cert)
    write_role(base / "other-ca", "client", *issue("client", other_ca_key, other_ca), ca_cert)
    write_role(base / "wrong-role", "client", *issue("dealer", ca_key, ca_cert), ca_cert)  # a dealer claiming client
    write_role(base / "owner-as-client", "owner", *issue("client", ca_key, ca_cert), ca_cert)
    return base


def _meet(owner_tls, client_tls, *, client_mesh=Mesh, timeout_s=15.0):
    """Owner and client join over loopback; (owner's error, client's error) as text, None where it joined."""
    ports = free_loopback_ports(1)
    errors = {}

    def join(rank, tls, cls):
        try:
            mesh = cls.join(link_plan(rank, "tfp", ports, listen=ports.get(rank), timeout_s=timeout_s, tls=tls))
            if rank == 1:
                mesh.send(0, "main", {"kind": "ping"})
            else:
                assert mesh.receive(1, "main")[0]["kind"] == "ping"
            mesh.close()
            errors[rank] = None
        except AeroError as exc:
            errors[rank] = str(exc)

    owner = threading.Thread(target=join, args=(0, owner_tls, Mesh))
    owner.start()
    join(1, client_tls, client_mesh)
    owner.join(timeout_s + 5)
    return errors[0], errors[1]


def test_parties_with_the_runs_certificates_meet(keys):
    assert _meet(str(keys / "good"), str(keys / "good")) == (None, None)


@pytest.mark.parametrize("folder, reason", [
    ("self-signed", "is self-signed, not issued by this run's CA"),
    ("other-ca", "not issued by this run's CA"),
    ("expired", "has expired"),
    ("wrong-role", "its certificate names dealer, not the role 'client'"),
])
def test_an_impostor_client_is_refused_with_the_reason(keys, folder, reason):
    owner_error, client_error = _meet(str(keys / "good"), str(keys / folder))
    assert owner_error and owner_error.startswith("model owner (rank 0) refused") and reason in owner_error, owner_error
    assert "\n" not in owner_error
    assert client_error and "refused" in client_error and "\n" not in client_error, client_error  # not a timeout


def test_a_client_without_a_certificate_is_refused(keys):
    class NoCertificate(Mesh):
        def __init__(self, plan):
            super().__init__(plan)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            self.tls = TlsRoles(keys / "good", "client", context, self.tls.server)

    owner_error, client_error = _meet(str(keys / "good"), str(keys / "good"), client_mesh=NoCertificate)
    assert owner_error and "refused a peer at 127.0.0.1" in owner_error and "presented no certificate" in owner_error
    assert client_error and "refused" in client_error


def test_the_client_refuses_an_owner_with_another_roles_certificate(keys):
    owner_error, client_error = _meet(str(keys / "owner-as-client"), str(keys / "good"))
    assert client_error and client_error.startswith("client (rank 1) refused model owner (rank 0) at 127.0.0.1")
    assert "its certificate names client, not the role 'owner'" in client_error


def test_a_missing_certificate_folder_is_one_line(tmp_path):
    with pytest.raises(AeroError, match=r"missing .*ca\.pem.*aero-compile keys"):
        TlsRoles.load(tmp_path, "owner")


@pytest.mark.crypten
@pytest.mark.parametrize("tls", [False, True])
def test_a_capture_of_the_link_shows_an_input_share_only_without_tls(keys, tmp_path, tls):
    ports = free_loopback_ports(1)
    tap = tmp_path / "tap"
    tap.mkdir()
    with RelayProcess(LinkSpec(1000, 0.2), [ports[0]], tap_dir=str(tap)) as relay:
        dial = {0: ("127.0.0.1", relay.ports[0])}
        plans = [link_plan(rank, "tfp", dial, listen=ports.get(rank), timeout_s=60,
                           tls=str(keys / "good") if tls else None) for rank in (0, 1)]
        shares = processes.launch_parties(
            [processes.Party("model owner", open_a_share, (0, plans[0])),
             processes.Party("client", open_a_share, (1, plans[1]))], timeout_s=60, preload=PRELOAD)
    captured = b"".join(path.read_bytes() for path in sorted(tap.iterdir()))
    assert len(captured) > 2 * 16000  # both shares crossed the link, in one form or another
    windows = [share[i:i + 64] for share in shares for i in range(0, len(share) - 64, 1000)]
    found = sum(window in captured for window in windows)
    if tls:
        assert found == 0
    else:
        assert found == len(windows)
