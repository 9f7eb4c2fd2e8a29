"""MPC cost analyzer: rounds, bytes and latency of a private forward pass, per op, before/after.

Public API (stable; the CrypTen backend compares its measurements against it)::

    from aero_compile.cost import analyze
    report = analyze(gm, profile="crypten", network="lan", seq_len=T, batch=1,
                     bandwidth_mbps=None, rtt_ms=None)      # -> CostReport
    report.rounds      # int: communication rounds of the whole forward pass
    report.bytes       # int: bytes sent, as the profile counts them (see below)
    report.latency_s   # float: rounds * RTT + bytes / bandwidth (+ compute), per the profile
    report.by_op       # {"softmax": OpCost(rounds, bytes, latency_s), ...} keyed by OpKind value
    report.ops         # [OpRecord(name, kind, layer, shape, numel, rounds, bytes, ...)] in graph order
    report.to_dict()   # the JSON "cost" object of the report

``gm`` is a captured GraphModule (``aero_compile.capture``), input_ids [batch, seq_len] -> logits.
``profile`` is a shipped name ("crypten", "bumblebee") or a path to a profile JSON; ``network`` a
preset ("lan", "wan") overridden by ``bandwidth_mbps`` / ``rtt_ms``.

Bytes, crypten profile: CrypTen's communicator (``crypten.cfg.communicator.verbose = True``;
``comm.get().get_communication_stats()``) counts, in each party's process, the bytes *that party*
sends and the rounds it takes part in. With two parties the protocols are symmetric, so both parties
report the same figures. The profile (and ``report.bytes``) uses that per-party figure, so it can be
compared directly with ``get_communication_stats()["bytes"]`` of rank 0. Total traffic on the wire
is twice that. The bumblebee profile counts total communication as the AERO paper reports it.
"""
