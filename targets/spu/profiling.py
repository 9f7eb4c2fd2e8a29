"""SPU's own counters: its profiler's log lines, captured from the native output and parsed.

SPU 0.9.5 has no Python API for link statistics; with ``enable_pphlo_profile`` the runtime logs, per
execution, every pphlo op's send/recv bytes and actions and the link's totals::

    [api.cc:223] - pphlo.dot, executed 1 times, duration 0.99s, send bytes 10626872 recv bytes 10624287, send actions 934, recv actions 934
    [api.cc:233] Link details: total send bytes 17413520, recv bytes 18602789, send actions 2470, recv actions 2470

Figures are one party's (the one profiled). In a two-party run its send + recv bytes are all the
traffic between the parties; ``rounds`` is its send actions (messages; SPU batches a round's data into
one message per peer, so it is an upper bound on the rounds).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import tempfile

_OP_LINE = re.compile(r"- pphlo\.(\w+), executed (\d+) times, duration ([\d.e+-]+)s, send bytes (\d+) recv bytes (\d+), "
                      r"send actions (\d+), recv actions (\d+)")
_LINK_LINE = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), recv actions (\d+)")
_EXECUTION_LINE = re.compile(r"SPU execution (\S+) completed.*execution took ([\d.e+-]+)s")


def parse_executions(log: str) -> list[dict]:
    """One record per execution in the log, in order: totals and ``by_op`` (pphlo op -> figures)."""
    executions, ops, seconds = [], {}, None
    for line in log.splitlines():
        if match := _EXECUTION_LINE.search(line):
            seconds = float(match.group(2))
        elif match := _OP_LINE.search(line):
            name, count, duration, sent, received, send_actions, _ = match.groups()
            if int(sent) or int(received):
                ops[name] = {"rounds": int(send_actions), "bytes": int(sent) + int(received),
                             "sent_bytes": int(sent), "count": int(count), "seconds": float(duration)}
        elif match := _LINK_LINE.search(line):
            sent, received, send_actions, receive_actions = map(int, match.groups())
            executions.append({"rounds": send_actions, "bytes": sent + received, "sent_bytes": sent,
                               "received_bytes": received, "receive_actions": receive_actions,
                               "seconds": seconds, "by_op": ops})
            ops, seconds = {}, None
    return executions


@contextlib.contextmanager
def native_output_to(path: str):
    """Send this process's fd 1 and 2 (where SPU's spdlog writes) to ``path`` while the block runs."""
    libc = ctypes.CDLL(None)
    libc.fflush(None)
    saved = [os.dup(1), os.dup(2)]
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


@contextlib.contextmanager
def captured_native_output():
    """``with captured_native_output() as captured: ...``; then ``captured["log"]`` is the block's native log."""
    captured = {"log": ""}
    with tempfile.NamedTemporaryFile(prefix="aero-spu-", suffix=".log") as handle:
        try:
            with native_output_to(handle.name):
                yield captured
        finally:
            captured["log"] = open(handle.name, errors="replace").read()
