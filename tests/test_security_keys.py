"""`aero-compile keys DIR`: a CA and per-role certificates, keys 0600, written atomically; the layout loader."""

from __future__ import annotations

import datetime
import ssl
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from aero_compile.cli import main
from aero_compile.errors import AeroError
from aero_compile.targets.private.keys import ROLES, issue_role, load_role, make_ca, write_keys


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return write_keys(tmp_path_factory.mktemp("k") / "keys", days=30)


def _certificates(path):
    return x509.load_pem_x509_certificates(path.read_bytes())


def test_layout_and_permissions(keys):
    assert sorted(p.name for p in keys.iterdir()) == sorted(["ca.pem", "ca-key.pem", "trust", *ROLES])
    assert stat.S_IMODE((keys / "ca-key.pem").stat().st_mode) == 0o600
    for role in ROLES:
        assert stat.S_IMODE((keys / role / "key.pem").stat().st_mode) == 0o600
        assert (keys / "trust" / f"{role}.pem").is_file()


@pytest.mark.parametrize("role", ROLES)
def test_each_role_certificate_names_its_role_in_cn_and_san(keys, role):
    leaf, intermediate = _certificates(keys / role / "cert.pem")
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == role
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [role]
    (ca,) = _certificates(keys / "ca.pem")
    assert intermediate.issuer == ca.subject and leaf.issuer == intermediate.subject
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(ca)
    days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() / 86400
    assert 29.99 < days < 30.01


def test_python_ssl_verifies_a_role_against_the_ca_by_its_name(keys):
    # what a Python TLS link does: cafile=ca.pem, server_hostname=<role>
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(keys / "client" / "cert.pem", keys / "client" / "key.pem")
    for expected, accepted in (("client", True), ("owner", False)):
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(keys / "ca.pem")
        outcome = _handshake(client, server, expected)
        assert (outcome is None) == accepted, outcome


def _handshake(client_context, server_context, hostname):
    import socket
    import threading

    left, right = socket.socketpair()
    errors = []

    def serve():
        try:
            with server_context.wrap_socket(right, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_context.wrap_socket(left, server_hostname=hostname):
            pass
    except ssl.SSLError as exc:
        errors.append(exc)
    finally:
        left.close()
        thread.join(10)
        right.close()
    return errors[0] if errors else None


def test_the_directory_appears_complete_or_not_at_all(tmp_path, monkeypatch):
    import aero_compile.targets.private.keys as keys_module

    original, calls = keys_module.issue_role, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return original(*args, **kwargs)

    monkeypatch.setattr(keys_module, "issue_role", failing)
    with pytest.raises(RuntimeError):
        write_keys(tmp_path / "keys")
    assert list(tmp_path.iterdir()) == []  # no keys/ and no staging folder left behind


def test_an_existing_directory_is_refused_unless_forced(keys, tmp_path, capsys):
    target = tmp_path / "k"
    assert main(["keys", str(target), "--days", "2"]) == 0
    out = capsys.readouterr().out
    assert "ca-key.pem" in out and "BEGIN" not in out  # a key is never printed
    before = (target / "ca.pem").read_bytes()
    assert main(["keys", str(target)]) == 2
    assert "exists" in capsys.readouterr().err and (target / "ca.pem").read_bytes() == before
    assert main(["keys", str(target), "--force"]) == 0
    assert (target / "ca.pem").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_keys_subcommand_refuses_a_nonpositive_validity(tmp_path, capsys):
    assert main(["keys", str(tmp_path / "k"), "--days", "0"]) == 2
    assert "--days must be positive" in capsys.readouterr().err and not (tmp_path / "k").exists()


def test_load_role_says_what_is_missing_in_one_line(keys, tmp_path):
    files = load_role(keys, "owner")
    assert files.certificate == keys / "owner" / "cert.pem" and set(files.trust) == set(ROLES)
    partial = tmp_path / "mine"
    (partial / "owner").mkdir(parents=True)
    (partial / "owner" / "cert.pem").write_bytes((keys / "owner" / "cert.pem").read_bytes())
    with pytest.raises(AeroError, match=r"missing ca.pem, owner/key.pem") as error:
        load_role(partial, "owner")
    assert "\n" not in str(error.value)
    with pytest.raises(AeroError, match="no such folder"):
        load_role(tmp_path / "absent", "owner")


def test_load_role_refuses_a_readable_key_and_garbage(keys, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(keys, copy)
    (copy / "client" / "key.pem").chmod(0o644)
    with pytest.raises(AeroError, match="readable by other users: chmod 600"):
        load_role(copy, "client")
    (copy / "client" / "key.pem").chmod(0o600)
    (copy / "ca.pem").write_text("not a certificate")
    with pytest.raises(AeroError, match="ca.pem is not PEM certificates"):
        load_role(copy, "client")


def test_an_expired_certificate_can_be_made_for_tests():
    ca = make_ca()
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3)
    expired = issue_role(ca, "client", days=1, start=start)
    assert expired.certificate.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc)


def test_keys_help_runs_as_a_subcommand():
    result = subprocess.run([sys.executable, "-m", "aero_compile", "keys", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--days" in result.stdout and "off the party hosts" in " ".join(result.stdout.split())
