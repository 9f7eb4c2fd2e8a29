"""The multi-host client's echo: its tokens printed as it picks them, per graph (before/after the passes).

    echo = TextEcho(client_tokenizer(args))   # decoded text where the model has a tokenizer, else the ids
    echo("before", step, token)               # CrypTen's per-token callback: (graph name, step, token)
    on_token = echo.side("after")             # engines whose callback is (step, token)
    echo.end()

Each graph's tokens go on one line, ``NAME: ...``. With a tokenizer the whole run so far is decoded again
at each token, so a token that completes a character the previous one began prints correctly.
"""

from __future__ import annotations

import os
import sys

from ..errors import AeroError


def terminal(stream):
    """``stream``, or a copy of its file descriptor where it is fd 1 or 2: an engine may send those to its
    own log during a session (SPU's profiler does), and the tokens must reach the user as they come."""
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream  # not a file (captured, as in a test): written to as it is
    if descriptor not in (1, 2):
        return stream
    stream.flush()
    return os.fdopen(os.dup(descriptor), "w", buffering=1)


def client_tokenizer(args):
    """The client's tokenizer for printing (the model's, or ``--tokenizer``), or None: the ids are printed."""
    from .prompt import tokenizer_for

    try:
        return tokenizer_for(args.model, getattr(args, "tokenizer", None))
    except AeroError:
        return None


class TextEcho:
    """Prints each graph's tokens as they come: decoded text where a tokenizer is known, else the ids."""

    def __init__(self, tokenizer=None, stream=None):
        self.tokenizer, self.stream = tokenizer, stream or terminal(sys.stdout)
        self.tokens: dict[str, list[int]] = {}
        self.printed: dict[str, str] = {}

    def __call__(self, name: str, step: int, token: int) -> None:
        if name not in self.tokens:
            self.stream.write(("\n" if self.tokens else "") + f"{name}: ")
        tokens = self.tokens.setdefault(name, [])
        tokens.append(token)
        if self.tokenizer is None:
            self.stream.write(f"{token} ")
        else:
            text = self.tokenizer.decode(tokens)
            done = self.printed.get(name, "")
            self.stream.write(text[len(done):] if text.startswith(done) else f" {text}")
            self.printed[name] = text
        self.stream.flush()

    def side(self, name: str):
        """The callback ``(step, token)`` of graph ``name``."""
        return lambda step, token: self(name, step, token)

    def end(self) -> None:
        if self.tokens:
            self.stream.write("\n")
            self.stream.flush()
