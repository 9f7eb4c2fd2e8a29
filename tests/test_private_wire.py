"""The typed wire format between parties: what it carries, and what it refuses without unpickling."""

import pickle
import socket

import numpy as np
import pytest

from aero_compile.targets.private.wire import WireError, decode, encode, read_frame, write_frame

PEER = "the owner (rank 0)"


def test_round_trip_keeps_header_dtypes_and_shapes():
    arrays = [np.arange(12, dtype=np.int64).reshape(3, 4), np.ones((2, 0, 5), np.float32), np.array(7, np.uint8)]
    header, back = decode(encode({"kind": "shares", "count": 3}, arrays), peer=PEER)
    assert header == {"kind": "shares", "count": 3}
    for sent, received in zip(arrays, back, strict=True):
        assert sent.dtype == received.dtype and sent.shape == received.shape
        np.testing.assert_array_equal(sent, received)


def test_a_pickle_is_refused_naming_the_peer_and_never_loaded():
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    with pytest.raises(WireError, match=r"the owner \(rank 0\).*pickle.*refused"):
        decode(pickle.dumps(Boom()), peer=PEER)


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: m[:-1], "shorter than the arrays"),
    (lambda m: m + b"x", "beyond the arrays"),
    (lambda m: m[:4] + bytes([9]) + m[5:], "wire version 9"),
    (lambda m: m.replace(b'"<i8"', b'"|O8"'), "dtype"),
    (lambda m: m.replace(b"[3]", b"\"3\""), "invalid shape"),
    (lambda m: m[:5] + (10 ** 9).to_bytes(4, "big") + m[9:], "header length"),
])
def test_malformed_messages_are_refused_in_one_line(mutate, reason):
    message = encode({"n": 1}, [np.arange(3, dtype=np.int64)])
    with pytest.raises(WireError, match=reason) as error:
        decode(mutate(message), peer=PEER)
    assert "\n" not in str(error.value) and PEER in str(error.value)


def test_object_arrays_are_not_sent():
    with pytest.raises(WireError, match="dtype object"):
        encode({}, [np.array([object()])])


def test_frames_over_a_socket_and_an_oversized_announcement():
    left, right = socket.socketpair()
    with left, right:
        write_frame(left, encode({"step": 1}, [np.zeros(4, np.float32)]))
        header, (zeros,) = decode(read_frame(right, peer=PEER), peer=PEER)
        assert header == {"step": 1} and zeros.tolist() == [0.0] * 4
        left.sendall((1 << 40).to_bytes(8, "big"))
        with pytest.raises(WireError, match="announced a message of 1,099,511,627,776 bytes"):
            read_frame(right, peer=PEER, max_bytes=1 << 20)
        left.sendall((10).to_bytes(8, "big") + b"abc")
        left.close()
        with pytest.raises(WireError, match="closed the connection"):
            read_frame(right, peer=PEER)
