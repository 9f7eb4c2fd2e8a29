"""What the fork server of CrypTen's parties imports once, so that no party pays for it again.

``runner.launch_parties`` starts its parties with multiprocessing's forkserver: a clean interpreter
(started once per process, never a fork of it, so it holds none of its threads) that imports this
module and then forks one child per party. Imported here: the runner (torch), CrypTen with our
compatibility fixes (``compat.import_crypten``) and our communicator over it, and torch._dynamo, which
the parties' shape propagation pulls in (about 2 s on its own).
"""

import torch._dynamo  # noqa: F401

from aero_compile.errors import AeroError

from . import runner  # noqa: F401
from .compat import import_crypten

try:
    import_crypten()
    from . import communicator  # noqa: F401  (the parties' links: imports CrypTen's communicator base)
except AeroError:  # not installed: each party then says so in its own one-line error
    pass
