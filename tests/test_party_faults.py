"""Faults of a private run: who died is named (rank, role, real time); waiting is bounded, work is not."""

import multiprocessing
import time

import pytest

from aero_compile.errors import AeroError
from aero_compile.targets.crypten.runner import run_private

pytestmark = [pytest.mark.crypten, pytest.mark.slow]  # parties that die or wait on purpose

SEQ_LEN = 4


def _fails(graph, provider, fault, timeout_s=30):
    started = time.monotonic()
    with pytest.raises(AeroError) as error:
        run_private({"before": graph}, seq_len=SEQ_LEN, provider=provider, timeout_s=timeout_s, fault=fault)
    assert multiprocessing.active_children() == []  # no party left behind
    return str(error.value), time.monotonic() - started


@pytest.mark.parametrize("provider, rank, role", [("tfp", 0, "model owner"), ("tfp", 1, "client"),
                                                  ("ttp", 2, "trusted third party")])
def test_the_party_that_died_is_named_first_with_the_real_time(captured, provider, rank, role):
    message, elapsed = _fails(captured("gpt2-tiny"), provider, {rank: "exit-after-setup"})
    died = rf"private run failed: {role} \(rank {rank}\) died after ([\d.]+) s \(exit code 3\)"
    match = pytest.importorskip("re").match(died, message)
    assert match, message  # root cause first; the survivors' errors follow it
    assert 0 < float(match.group(1)) <= elapsed and "\n" not in message, (message, elapsed)


def test_a_slow_but_healthy_run_outlives_the_timeout(captured):
    # the owner works 3 s longer than --party-timeout (2 s) while the client waits for it: not a hang
    started = time.monotonic()
    m = run_private({"before": captured("gpt2-tiny")}, seq_len=SEQ_LEN, timeout_s=2,
                    fault={0: "sleep-after-setup:3"}, repetitions=1)["before"]  # one pass: the sleep is the point
    assert time.monotonic() - started > 3 and m["rounds"] > 0 and m["argmax_agreement_resolvable"] >= 0.99


def test_parties_that_all_wait_for_each_other_end_the_run_after_the_timeout(captured):
    message, elapsed = _fails(captured("gpt2-tiny"), "tfp", {0: "wait-forever-after-setup"}, timeout_s=2)
    assert message.startswith("private run stuck after"), message
    assert "model owner (rank 0) for" in message and "client (rank 1) for" in message
    assert elapsed < 20


def test_a_peer_that_stops_publishing_is_named_gone(tmp_path):
    import torch.distributed as dist

    from aero_compile.targets.crypten.store_board import StoreBoard
    from aero_compile.targets.private.party_watch import GONE_AFTER_S, SelfWatch

    roles = {0: "model owner", 1: "client", 2: "trusted third party"}
    store = dist.FileStore(str(tmp_path / "store"), 3)
    StoreBoard(store, 0).publish(0.0)  # the owner: alive, working
    store.set("aero-party/2", f"{time.time() - 2 * GONE_AFTER_S} 0.0")  # the dealer: silent for a while
    watch = SelfWatch(1, roles, timeout_s=5, where="file://x")
    watch.board = StoreBoard(store, 1)
    gone = watch.peers_gone()
    assert len(gone) == 1 and gone[0].startswith("trusted third party (rank 2) is gone (last sign of life"), gone
    assert watch._a_peer_is_working()  # the owner is working: the client keeps waiting
