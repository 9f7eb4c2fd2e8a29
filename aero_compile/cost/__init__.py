"""MPC cost analyzer: rounds, bytes and latency of a private forward pass, per op, before/after.

Public API (stable; the CrypTen backend compares its measurements against it)::

    from aero_compile.cost import analyze
    report = analyze(gm, profile="crypten", network="lan", seq_len=T, batch=1,
                     bandwidth_mbps=None, rtt_ms=None)      # -> CostReport
    report.rounds      # int: communication rounds of the whole forward pass
    report.bytes       # int: bytes, as the profile counts them (see below)
    report.latency_s   # float: rounds * RTT + wire bytes / bandwidth + compute, per the profile
    report.by_op       # {"softmax": OpCost(rounds, bytes, latency_s, count, elements), ...}, OpKind values
                       # (records.OpCost: the record an engine's measurement fills too, with seconds)
    report.by_layer    # the same per block index ("embed/head" for ops outside the blocks)
    report.ops         # [OpRecord(name, kind, layer, shape, features, rounds, bytes, ...)] in graph order
    report.graph       # networkx DiGraph of ops (attributes kind, name, rounds, bytes)
    report.unsupported # {kind: [op names]} costed as zero (also warned)
    report.summary()   # CostSummary: the report's "cost" section; report.to_dict() its JSON

``gm`` is a captured GraphModule (``aero_compile.capturing.capture``), input_ids [batch, seq_len] -> logits.
``profile`` is a shipped name ("crypten", "bumblebee") or a path to a profile JSON; ``network`` a
preset ("lan": 10 Gbit/s 0.2 ms, "wan": 100 Mbit/s 80 ms) overridden by ``bandwidth_mbps`` / ``rtt_ms``.

Bytes, crypten profile: CrypTen's communicator (``crypten.cfg.communicator.verbose = True``;
``comm.get().get_communication_stats()``) counts, in each party's process, the elements that party
exchanges x 8 bytes; for ``all_reduce`` (every Beaver opening, hence almost all traffic) it counts
the tensor twice, once sent and once received. With two parties both report the same figure, and it
equals the total traffic of the system (CrypTen's own note: sum over parties / 2). ``report.bytes``
is that per-party figure: compare it directly with rank 0's ``get_communication_stats()["bytes"]``.
Each party's link carries half of it in each direction (``wire_bytes_per_counted_byte`` = 0.5).
Rounds are CrypTen's ``rounds`` (one per communication call), summed: CrypTen runs ops one by one.
Weights are secret-shared (``model.encrypt()``): a linear layer is one Beaver product whose bytes are
16 x (input elements + weight elements); a LayerNorm multiplies by gamma in the secret too.

Bytes, bumblebee profile: total communication of both parties, as the AERO paper reports it.

Profiles: ``aero-compile calibrate crypten`` (measured by the CrypTen backend on its own lowerings,
``targets/crypten/calibrate.py``), ``python -m aero_compile.tools.fit_bumblebee`` (fitted to the paper's
tables). Both write JSON under ``aero_compile/cost/data``; this package only reads them and imports no
backend. An op is priced as protocol steps, each a profile entry (``features.protocol_steps``).
"""

from .analyzer import CostReport, CostSummary, OpCost, OpRecord, analyze
from .profiles import Network, Profile, load_profile, resolve_network
from .report import savings

__all__ = ["CostReport", "CostSummary", "Network", "OpCost", "OpRecord", "Profile", "analyze", "load_profile",
           "resolve_network", "savings"]
