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

from .errors import AeroError, PassError  # noqa: E402

# The rest imports torch: loaded on first use, so that `aero-compile` (aero_compile.cli) starts, and
# installs its Ctrl-C handling, before any heavy import.
_LAZY = {
    "capture": "capturing", "load_model": "loader", "OpKind": "ops", "classify_graph": "ops",
    "PassManager": "pass_manager", "PassResult": "pass_registry", "Phase": "pass_registry",
    "PipelineResult": "pass_manager", "register_pass": "pass_registry",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AeroError", "OpKind", "PassError", "PassManager", "PassResult", "Phase", "PipelineResult", "capture",
    "classify_graph",
    "load_model", "register_pass",
]
__version__ = "0.1.0"
