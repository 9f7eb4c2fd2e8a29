"""Private runs through the emulated link: same counters as on loopback, seconds that grow with the RTT."""

from __future__ import annotations

import pytest

from aero_compile.targets.crypten.runner import run_private as crypten_run_private
from aero_compile.targets.private.link.selection import requested_link
from aero_compile.targets.private.link.spec import LinkSpec
from aero_compile.errors import AeroError


def test_requested_link_follows_the_network_options():
    assert requested_link(None, None, None) is None and requested_link("lan", None, None) is None
    assert requested_link("wan", None, None) == LinkSpec(100, 80)
    assert requested_link("lan", 200, None).bandwidth_mbps == 200  # an explicit figure over the preset's other
    assert requested_link("wan", None, 40) == LinkSpec(100, 40)
    with pytest.raises(AeroError, match="give --bandwidth-mbps with --rtt-ms"):
        requested_link(None, None, 40)  # lan's 10 Gbit/s cannot be emulated
    with pytest.raises(AeroError, match="more than the emulated link can hold"):
        requested_link("lan", 50000, 1)
    with pytest.raises(AeroError):
        requested_link("wan", 0, None)


@pytest.mark.crypten
@pytest.mark.slow
def test_crypten_ttp_with_tls_through_the_link_counts_as_on_loopback(captured, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from link_certificates import make_keys

    make_keys(tmp_path / "keys")
    gm = captured("gpt2-tiny")
    bare = crypten_run_private({"g": gm}, seq_len=4, provider="ttp", timeout_s=120)["g"]
    linked = crypten_run_private({"g": gm}, seq_len=4, provider="ttp", timeout_s=120, link=LinkSpec(1000, 4),
                                 tls=str(tmp_path / "keys"))["g"]
    for key in ("rounds", "bytes", "owner_rounds", "owner_bytes", "offline"):
        assert linked[key] == bare[key], key
    assert linked["argmax_agreement"] == 1.0 and linked["max_abs_error"] < 0.01
    assert linked["link"] == {"bandwidth_mbps": 1000, "rtt_ms": 4, "emulated": True} and linked["tls"] is True
    assert bare["link"]["emulated"] is False and bare["relay_cpu_seconds"] is None
    assert linked["relay_cpu_seconds"] > 0
    # every round waits at least one RTT more than on loopback (the owner-dealer requests add more)
    assert linked["seconds"] - bare["seconds"] > 0.5 * linked["rounds"] * 0.004


@pytest.mark.spu
@pytest.mark.slow
def test_spu_parties_through_the_link_send_the_same_bytes(rewritten_all):
    from aero_compile.targets.spu.runner import run_private as spu_run_private

    after = rewritten_all("gpt2-tiny")
    bare = spu_run_private({"after": after}, seq_len=4, protocol="semi2k", mode="processes", timeout_s=120)["after"]
    linked = spu_run_private({"after": after}, seq_len=4, protocol="semi2k", mode="processes", timeout_s=120,
                             link=LinkSpec(1000, 20))["after"]
    assert linked["bytes"] == pytest.approx(bare["bytes"], rel=0.02)
    assert linked["argmax_agreement"] == 1.0
    assert linked["link"]["emulated"] and linked["relay_cpu_seconds"] > 0
    # the protocol waits for tens of round trips in sequence (its messages number hundreds): at 20 ms each, the
    # forward pass takes well over 10 round trips longer than on loopback, far beyond the machine's noise
    assert linked["seconds"] - bare["seconds"] > 10 * 0.020, (linked["seconds"], bare["seconds"], linked["rounds"])
