"""The link between parties: shape it (bandwidth, one-way delay) and, for CrypTen, secure it (mutual TLS).

* ``spec``: ``LinkSpec`` (bandwidth per direction, round-trip time), checked before anything starts;
* ``relay``: the user-space relay that emulates a link between TCP endpoints (one process);
* ``process``: ``RelayProcess``, that relay started and stopped from a run, with its CPU seconds;
* ``check``: ``aero-compile link-check``, the relay measured by a ping-pong and a bulk transfer;
* ``selection``: which link a run uses, from ``--network`` / ``--bandwidth-mbps`` / ``--rtt-ms``;
* ``mesh`` + ``frames``: explicit links between the ranks of a run (typed frames), with ``tls``: mutual TLS.
"""
