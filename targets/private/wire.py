"""Typed messages between parties: a small JSON header and raw arrays, never pickle.

Unpickling runs code, so nothing a peer sends is ever unpickled. A message is

    b"AERO" | version (1 byte) | header length (4 bytes, big endian) | header (UTF-8 JSON) | array bytes

where the header is a JSON object whose ``"arrays"`` entry lists each array's dtype (from a fixed set of
plain numeric types) and shape; the array bytes follow, concatenated, C order, little endian. The
receiver checks the magic, the version, the header's size and form, every dtype and shape, and that the
byte count matches exactly before it touches the data; anything else is refused with a ``WireError``
naming the peer. ``read_frame`` / ``write_frame`` carry one message over a stream socket with an 8-byte
length prefix and a size limit checked before anything is read into memory.

    payload = encode({"kind": "shares", "count": 2}, [a, b])
    header, (a, b) = decode(payload, peer="the owner (rank 0)")
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np

from aero_compile.errors import AeroError

MAGIC = b"AERO"
VERSION = 1
_PREFIX = struct.Struct(">4sBI")  # magic, version, header length
_FRAME_LENGTH = struct.Struct(">Q")
MAX_HEADER_BYTES = 1 << 16
# A party's largest single message today is an SPU input share or a CrypTen share of GPT-2 small's
# embedding (tens of MB); 2 GiB leaves room for larger models while refusing absurd lengths at once.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 31
MAX_ARRAYS = 4096
MAX_DIMS = 16

# The only element types a message may carry (little-endian numpy dtype strings).
DTYPES = frozenset({"|b1", "|u1", "|i1", "<i2", "<i4", "<i8", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8"})


class WireError(AeroError):
    """A peer's message is malformed, oversized or of a type we do not accept."""


def _dtype_name(array: np.ndarray) -> str:
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    name = dtype.str
    if name not in DTYPES:
        raise WireError(f"cannot send an array of dtype {array.dtype}: the wire carries {', '.join(sorted(DTYPES))}")
    return name


def encode(header: dict | None = None, arrays: Sequence[np.ndarray] = ()) -> bytes:
    """One message: ``header`` (JSON-serializable, without an ``"arrays"`` key) and ``arrays``."""
    header = dict(header or {})
    if "arrays" in header:
        raise ValueError("'arrays' is the wire's own header key")
    # np.ascontiguousarray would turn a 0-d array into 1-d
    contiguous = [a if a.flags.c_contiguous else a.copy(order="C") for a in map(np.asarray, arrays)]
    specs = []
    for array in contiguous:
        dtype = _dtype_name(array)
        specs.append({"dtype": dtype, "shape": list(array.shape)})
    header["arrays"] = specs
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(text) > MAX_HEADER_BYTES:
        raise WireError(f"message header of {len(text)} bytes exceeds the wire's {MAX_HEADER_BYTES}")
    body = [a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in contiguous]
    return b"".join([_PREFIX.pack(MAGIC, VERSION, len(text)), text, *body])


def decode(data: bytes | bytearray | memoryview, *, peer: str,
           max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[dict, list[np.ndarray]]:
    """The header and arrays of a message from ``peer``; a ``WireError`` naming the peer if it is not one."""
    view = memoryview(data).cast("B")
    if len(view) > max_bytes:
        raise WireError(f"{peer} sent a message of {len(view):,} bytes, over the limit of {max_bytes:,}")
    if len(view) < _PREFIX.size:
        raise WireError(f"{peer} sent {len(view)} bytes, too short for a message")
    magic, version, header_length = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        kind = " (a Python pickle)" if bytes(view[:1]) == b"\x80" else ""
        raise WireError(f"{peer} sent something that is not an aero-compile message{kind}: refused")
    if version != VERSION:
        raise WireError(f"{peer} speaks wire version {version}, this party {VERSION}: run the same aero-compile")
    if header_length > MAX_HEADER_BYTES or _PREFIX.size + header_length > len(view):
        raise WireError(f"{peer} sent a message whose header length ({header_length:,}) is out of bounds")
    try:
        header = json.loads(bytes(view[_PREFIX.size:_PREFIX.size + header_length]).decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"{peer} sent a message whose header is not JSON ({exc})") from None
    specs = header.pop("arrays", None) if isinstance(header, dict) else None
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise WireError(f"{peer} sent a message without a valid array list")
    arrays, offset = [], _PREFIX.size + header_length
    for spec in specs:
        dtype, shape = _check_spec(spec, peer)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        size = count * np.dtype(dtype).itemsize
        if size < 0 or offset + size > len(view):
            raise WireError(f"{peer} sent a message shorter than the arrays its header declares")
        arrays.append(np.frombuffer(view[offset:offset + size], dtype=dtype).reshape(shape))
        offset += size
    if offset != len(view):
        raise WireError(f"{peer} sent {len(view) - offset:,} bytes beyond the arrays its header declares")
    return header, arrays


def _check_spec(spec, peer: str) -> tuple[str, tuple[int, ...]]:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape"}:
        raise WireError(f"{peer} sent a malformed array description: {str(spec)[:80]}")
    dtype, shape = spec["dtype"], spec["shape"]
    if dtype not in DTYPES:
        raise WireError(f"{peer} sent an array of dtype {str(dtype)[:20]!r}, which the wire does not carry")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape)):
        raise WireError(f"{peer} sent an array with an invalid shape: {str(shape)[:80]}")
    return dtype, tuple(shape)


def write_frame(sock, payload: bytes) -> None:
    """Send one message over a stream socket (or an ``ssl.SSLSocket``): its length, then its bytes."""
    sock.sendall(_FRAME_LENGTH.pack(len(payload)))
    sock.sendall(payload)


def read_frame(sock, *, peer: str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """One message's bytes from a stream socket; the length is checked before anything is buffered."""
    (length,) = _FRAME_LENGTH.unpack(_read_exactly(sock, _FRAME_LENGTH.size, peer))
    if length > max_bytes:
        raise WireError(f"{peer} announced a message of {length:,} bytes, over the limit of {max_bytes:,}")
    return _read_exactly(sock, length, peer)


def _read_exactly(sock, count: int, peer: str) -> bytes:
    buffer = bytearray(count)
    view, received = memoryview(buffer), 0
    while received < count:
        got = sock.recv_into(view[received:], min(count - received, 1 << 20))
        if got == 0:
            raise WireError(f"{peer} closed the connection in the middle of a message")
        received += got
    return bytes(buffer)
