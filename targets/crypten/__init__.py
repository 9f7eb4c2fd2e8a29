"""The CrypTen backend: lower the rewritten fx graph to CrypTensor operations and run it between parties.

    from aero_compile.targets.crypten import run_private
    measured = run_private({"before": gm, "after": rewritten}, seq_len=8, provider="tfp")
    measured["after"]["rounds"], measured["after"]["by_op"]["softmax"], measured["after"]["argmax_agreement"]

Modules: ``lowering`` (PrivateGraph: share, forward, per-op measurement), ``dispatch`` (OpKind /
operator-name tables), ``protocols`` (softmax, norms, GELU, ... as CrypTensor code), ``private.norm_scaling``
(public inv_sqrt scales), ``party`` / ``runner`` / ``multihost`` (env vars, the parties; their processes and timeouts are
``private.processes`` / ``private.party_watch``), ``store_board`` (multi-host signs of life in the store),
``cli_extension`` (``--run-private``), ``calibration_forms`` / ``calibrate`` (``aero-compile calibrate
crypten``: the backend measures its own lowerings into the crypten profile), ``compat`` (every CrypTen
0.4.1 fix, one comment each).
"""

from .runner import run_private

__all__ = ["run_private"]
