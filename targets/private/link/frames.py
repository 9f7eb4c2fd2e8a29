"""One typed message over a stream socket, framed as ``wire.write_frame`` / ``wire.read_frame`` frame it.

The same 8-byte length prefix, written with the payload in one system call where the socket allows
(plain TCP: ``sendmsg``, no copy) and read into a writable buffer that the decoded arrays then share
(no copy on the receiving side either). ``mesh`` uses these on its hot path.
"""

from __future__ import annotations

import socket
import ssl
import struct

from aero_compile.targets.private.wire import DEFAULT_MAX_MESSAGE_BYTES, WireError

LENGTH = struct.Struct(">Q")  # the frame length prefix of ``wire.write_frame`` / ``wire.read_frame``
COALESCE_BYTES = 64 << 10  # over TLS, a payload up to this size goes out in one record with its prefix
READ_CHUNK = 4 << 20


def write_frame(sock: socket.socket, payload: bytes) -> None:
    """One message: its length, then its bytes."""
    prefix = LENGTH.pack(len(payload))
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg over TLS
        if len(payload) <= COALESCE_BYTES:
            sock.sendall(prefix + payload)
        else:
            sock.sendall(prefix)
            sock.sendall(payload)
        return
    sent = sock.sendmsg([prefix, payload])
    if sent < len(prefix):
        sock.sendall(prefix[sent:])
        sock.sendall(payload)
    elif sent < len(prefix) + len(payload):
        sock.sendall(memoryview(payload)[sent - len(prefix):])


def read_frame(sock: socket.socket, peer: str, limit: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytearray:
    """One message's bytes; the announced length is checked against ``limit`` before anything is buffered."""
    (length,) = LENGTH.unpack(bytes(_read_into(sock, bytearray(LENGTH.size), peer)))
    if length > limit:
        raise WireError(f"{peer} announced a message of {length:,} bytes, over the limit of {limit:,}")
    return _read_into(sock, bytearray(length), peer)


def _read_into(sock: socket.socket, buffer: bytearray, peer: str) -> bytearray:
    view, received = memoryview(buffer), 0
    while received < len(buffer):
        got = sock.recv_into(view[received:], min(len(buffer) - received, READ_CHUNK))
        if got == 0:
            raise WireError(f"{peer} closed the connection in the middle of a message")
        received += got
    return buffer
