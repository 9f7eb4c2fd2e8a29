"""SPU parties exchange input shares, output shares and norm scales as typed messages; a pickle is refused."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from aero_compile.targets.private.wire import WireError, encode

pytestmark = pytest.mark.spu
PEER = "the model owner (rank 0)"


def _shares():
    from spu import api, libspu

    from aero_compile.targets.spu.config import runtime_config

    io = api.Io(2, runtime_config("semi2k"))
    return [io.make_shares(np.arange(6, dtype=np.float32).reshape(2, 3) * k, libspu.Visibility.VIS_SECRET)
            for k in (1, -2)]


def test_shares_round_trip_byte_for_byte():
    from aero_compile.targets.spu.party import pack_shares, unpack_shares

    shares = _shares()
    mine = [s[1] for s in shares]
    back = unpack_shares(pack_shares(mine), PEER, count=2)
    for sent, received in zip(mine, back, strict=True):
        assert received.meta == sent.meta and list(received.share_chunks) == list(sent.share_chunks)


@pytest.mark.parametrize("message, reason", [
    (lambda: pickle.dumps([b"meta", [b"chunk"]]), "pickle.*refused"),
    (lambda: encode({"kind": "spu-shares", "chunks": [1]}, [np.zeros(3, np.uint8)]), "not a list of SPU shares"),
    (lambda: encode({"kind": "spu-shares", "chunks": [0]}, [np.zeros(3, np.float32)]), "not a list of SPU shares"),
    (lambda: encode({"kind": "other", "chunks": [0]}, [np.zeros(3, np.uint8)]), "not a list of SPU shares"),
    (lambda: encode({"kind": "spu-shares", "chunks": [0, 0]}, [np.zeros(3, np.uint8)] * 2), "sent 2 input shares, expected 1"),
])
def test_anything_but_shares_is_refused_naming_the_peer(message, reason):
    from aero_compile.targets.spu.party import unpack_shares

    with pytest.raises(WireError, match=reason) as error:
        unpack_shares(message(), PEER, count=1)
    assert str(error.value).startswith(PEER) and "\n" not in str(error.value)


def test_norm_scales_are_checked():
    from aero_compile.targets.spu.multihost import receive_scales

    good = {"before": {"h_0_ln_1": 4.0}, "after": {}}
    assert receive_scales(encode({"kind": "spu-scales", "scales": good}), ["before", "after"]) == good
    for bad in [pickle.dumps(good), encode({"kind": "spu-scales", "scales": {"before": {}}}),
                encode({"kind": "spu-scales", "scales": {"before": {"x": "4"}, "after": {}}})]:
        with pytest.raises(WireError, match=r"the model owner \(rank 0\)"):
            receive_scales(bad, ["before", "after"])


_FAKE_OWNER = textwrap.dedent("""
    import pickle, sys, time
    from aero_compile.targets.spu.party import connect

    class Boom:
        def __reduce__(self):
            return (print, ("unpickled!",))

    link = connect(0, sys.argv[1].split(","), 60)
    link.send(1, pickle.dumps({"before": Boom()}))
    time.sleep(30)
""")


@pytest.mark.slow
def test_a_client_refuses_an_owner_that_sends_a_pickle_in_one_line_exit_2(tmp_path):
    from aero_compile.targets.spu.party import free_addresses

    addresses = free_addresses(2)
    owner = subprocess.Popen([sys.executable, "-c", _FAKE_OWNER, ",".join(addresses)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = subprocess.run(
            [sys.executable, "-m", "aero_compile", "gpt2-tiny", "--passes", "all", "--run-private", "--engine", "spu",
             "--spu-protocol", "semi2k", "--spu-party", "1", "--spu-addresses", ",".join(addresses),
             "--private-seq-len", "8", "--seq-len", "8", "--no-cost", "--party-timeout", "60",
             "--report-json", str(tmp_path / "client.json"), "--insecure-link"],
            capture_output=True, text=True, timeout=300)
    finally:
        owner.kill()
        owner.communicate()
    assert client.returncode == 2, client.stderr[-2000:]
    lines = [line for line in client.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "the model owner (rank 0)" in lines[0] and "pickle" in lines[0], client.stderr
    assert "unpickled!" not in client.stdout + client.stderr
    assert not (tmp_path / "client.json").exists()

