"""A party for the link tests: opens a secret input of the client's, returns the share it sent (test helper)."""

from __future__ import annotations

import torch


def open_a_share(rank: int, plan) -> bytes:
    from aero_compile.targets.crypten.communicator import install
    from aero_compile.targets.crypten.compat import import_crypten

    crypten = import_crypten()
    install(plan)
    crypten.init()
    secret = torch.arange(2000, dtype=torch.float32) * 0.37 + 5 if rank == 1 else torch.zeros(2000)
    shared = crypten.cryptensor(secret, src=1)
    share = shared._tensor.share.clone()  # this party's additive share of the client's input
    opened = shared.get_plain_text()  # each party sends its share to the other: what a capture could see
    crypten.uninit()
    assert torch.allclose(opened, torch.arange(2000, dtype=torch.float32) * 0.37 + 5, atol=1e-3)
    return share.numpy().tobytes()
