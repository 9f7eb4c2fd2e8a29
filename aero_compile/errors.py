"""User-facing errors: one line that names the problem and the fix.

The CLI prints an ``AeroError`` as a single line on stderr and exits non-zero; anything else that
escapes is a bug in aero-compile and is reported as such.
"""


class AeroError(Exception):
    """A problem with the user's input or request, described in one actionable line."""


class PassError(AeroError):
    """A pass failed or broke the graph; the message names the pass (and the node, when known)."""

    def __init__(self, pass_name: str, message: str, node: str | None = None):
        where = f" at node '{node}'" if node else ""
        super().__init__(f"pass '{pass_name}' failed{where}: {message}")
        self.pass_name = pass_name
        self.node = node


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an exception's message, cut at ``limit`` characters ("" if it has none).

    Foreign errors (torch.export, onnx, gloo, unpickling) carry pages of context; a one-line AeroError
    quotes only the line that names the problem.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def describe(exc: BaseException, limit: int = 300) -> str:
    """``TypeName: first line of the message`` (just the type name when the message is empty)."""
    line = first_line(exc, limit)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
