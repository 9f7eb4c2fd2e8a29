"""What every private-inference engine shares: the graph under the secrecy rule, tokens, masks, the
measured record, and party processes.

An engine (``targets/crypten``, ``targets/spu``) adds only its dispatch table (how a secret node
becomes its operations) and its runner (how its parties talk). Modules:

* ``graph``: the secrecy split of a graph (``SecretGraph``: which nodes run under MPC, their
  public/owner values computed in plaintext, the token ids and the views of them that become a one-hot
  matrix, what the owner shares at setup, the output node);
* ``engines``: ``ENGINES[name]``, each engine registered once (runner, dispatch table, calibrator, CLI
  module, the cost profiles its runs are priced by); its docstring says what a new engine touches;
* ``options``: the private-run options every engine shares (``--run-private``, ``--engine``,
  ``--party``, ``--party-timeout``, ``--private-seq-len``, ``--private-logits-out``), checked before
  anything runs, then dispatched to the chosen engine (the CLI extension of this layer);
* ``dispatch``: the one walk from a secret node to an engine's operations (``DispatchTable``: the
  token-id views, the engine's OpKind table, then its operator-name table, the refusal naming the node);
* ``masks``: attention-mask constants an engine's fixed point can compute with;
* ``measured``: the logits error every engine reports (argmax agreement on resolvable positions) and
  the measured table (``measured_table``) each engine prints with its own column names;
* ``processes``: one process per party (forkserver, spawn or fork), one-line errors naming the party
  (role, rank, real time), waiting bounded by ``party_watch``'s clock, never work;
* ``party_watch``: that wait clock, and the watchdog of a party started alone (multi-host), which
  reads its peers' signs of life from a board the engine provides.
"""
