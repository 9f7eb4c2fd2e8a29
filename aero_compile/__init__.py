"""aero-compile: rewrite decoder-only language models so they are cheap under private inference.

    import aero_compile as ac
    gm = ac.capture(ac.load_model("gpt2-tiny"))
    result = ac.PassManager.from_pipeline("all").run(gm)
    result.graph_module, result.report
"""

import os as _os

# In a source checkout, passes/ and targets/ sit beside this package; an install maps them inside it
# (pyproject's package-dir). Let the checkout resolve aero_compile.passes the same way.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "passes")) and _os.path.isfile(
    _os.path.join(_checkout, "passes", "__init__.py")
):
    __path__.append(_checkout)

from .capture import capture  # noqa: E402
from .errors import AeroError, PassError  # noqa: E402
from .loader import load_model  # noqa: E402
from .ops import OpKind, classify_graph  # noqa: E402
from .pass_manager import PassManager, PassResult, Phase, PipelineResult, register_pass  # noqa: E402

__all__ = [
    "AeroError", "OpKind", "PassError", "PassManager", "PassResult", "Phase", "PipelineResult", "capture",
    "classify_graph",
    "load_model", "register_pass",
]
__version__ = "0.1.0"
