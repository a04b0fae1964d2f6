"""Netlink by hand: attributes, message framing and a socket that sends batches and collects
their acknowledgements. The messages minidock sends (links, addresses, routes, nf_tables batches)
are encoded here with ``struct`` in microseconds, and the few fields it reads back from dumps
(links, addresses, routes) are decoded with ``attributes``; pyroute2 costs 0.05-1.4 ms per
message and 50-300 ms to import, so the library no longer imports it (the tests use it as the
reference decoder the hand-made one must agree with).

Nothing here is privileged by itself: the kernel checks CAP_NET_ADMIN when a request arrives.
"""

from __future__ import annotations

import _socket
import errno
import itertools
import os
import select
import struct

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from typing import Final

__all__ = [
    "NLM_F_ACK",
    "NLM_F_APPEND",
    "NLM_F_CREATE",
    "NLM_F_EXCL",
    "NLM_F_REPLACE",
    "NLM_F_REQUEST",
    "Socket",
    "attr",
    "attr_be32",
    "attr_str",
    "attr_u32",
    "attributes",
    "chunks",
    "error_of",
    "message",
    "nested",
]

NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_REPLACE: Final = 0x100
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
NLM_F_APPEND: Final = 0x800
NLA_F_NESTED: Final = 0x8000
_NLA_TYPE_MASK: Final = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
_SOL_NETLINK: Final = 270
_NETLINK_CAP_ACK: Final = 10  # acknowledgements without a copy of the request
_HEADER: Final = struct.Struct("=IHHII")
_ATTR: Final = struct.Struct("=HH")
_RECV: Final = 1 << 18


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute (type-length-value, padded to 4 bytes)."""
    return _pad(struct.pack("=HH", len(payload) + 4, kind) + payload)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def attr_be32(kind: int, value: int) -> bytes:
    """A big-endian 32-bit attribute (nf_tables numbers), negative values as two's complement."""
    return attr(kind, struct.pack(">I", value & 0xFFFFFFFF))


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HEADER.pack(16 + len(body), mtype, flags, seq, 0) + _pad(body)


def attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """The attributes in ``data`` (one message) from ``offset`` on, as {type: payload}; the
    flag bits are cleared from the types, and of a type that repeats the first one is kept."""
    out: dict[int, bytes] = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            break
        out.setdefault(kind & _NLA_TYPE_MASK, data[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return out


def chunks(buf: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence number, message) of each netlink message in ``buf``."""
    off = 0
    while off + 16 <= len(buf):
        length, mtype, _flags, seq, _pid = _HEADER.unpack_from(buf, off)
        if length < 16:
            return
        yield mtype, seq, buf[off : off + length]
        off += (length + 3) & ~3


def error_of(chunk: bytes) -> int:
    """The errno an ``NLMSG_ERROR`` message carries (0: an acknowledgement)."""
    return -int(struct.unpack_from("=i", chunk, 16)[0])


class Socket:
    """A netlink socket of ``protocol`` in the network namespace it was opened in.

    ``transact`` sends messages built by the caller (each with ``NLM_F_ACK``) in one ``send`` and
    waits for the acknowledgement of each; the kernel handles a request while it is being sent,
    so the answers are queued by the time ``send`` returns.
    """

    def __init__(self, protocol: int, groups: int = 0) -> None:
        # the C module's socket: ``socket``'s import (selectors, enum classes; ~3-6 ms) would
        # cost every process that attaches a container, for nothing used here
        self.sock = _socket.socket(
            _socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, protocol
        )
        try:
            self.sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            self.sock.bind((0, groups))
        except BaseException:
            self.sock.close()
            raise
        self.pid = os.getpid()
        self._seq = itertools.count(int.from_bytes(os.urandom(2), "little") + 1)

    def seq(self) -> int:
        return next(self._seq)

    def seqs(self, count: int) -> int:
        """The first of ``count`` consecutive sequence numbers, reserved for one batch."""
        first = next(self._seq)
        for _ in range(count - 1):
            next(self._seq)
        return first

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def recv(self, timeout: float = 30) -> bytes:
        """What the kernel sent next (``OSError`` ETIMEDOUT after ``timeout`` seconds)."""
        while True:
            try:
                return self.sock.recv(_RECV, _socket.MSG_DONTWAIT)
            except BlockingIOError:
                ready, _, _ = select.select([self.sock], [], [], timeout)
                if not ready:
                    raise OSError(errno.ETIMEDOUT, "netlink: no answer from the kernel") from None

    def transact(
        self, data: bytes, seqs: Iterable[int], others: Iterable[int] = ()
    ) -> dict[int, int]:
        """Send ``data``; wait for an answer to each of ``seqs``: {seq: errno} of the errors
        (``others``: messages that are answered only with an error, such as a batch's start).

        When the kernel refuses a batch as a whole (no permission) only its first message is
        answered: waiting stops once the answers queued so far include an error."""
        waiting = set(seqs)
        known = waiting | set(others)
        errors: dict[int, int] = {}
        self.sock.send(data)
        while waiting:
            try:
                buf = self.sock.recv(_RECV, _socket.MSG_DONTWAIT)
            except BlockingIOError:
                if errors:
                    break
                ready, _, _ = select.select([self.sock], [], [], 30)  # never hang a test run
                if not ready:
                    raise OSError(errno.ETIMEDOUT, "netlink: no answer from the kernel") from None
                continue
            for mtype, seq, chunk in chunks(buf):
                if mtype == NLMSG_ERROR and seq in known:
                    waiting.discard(seq)
                    if code := error_of(chunk):
                        errors[seq] = code
        return errors

    def request(self, what: str, messages: Sequence[tuple[int, int, bytes]]) -> None:
        """Send ``(type, flags, body)`` requests in one batch; raise the first error as OSError."""
        data = []
        seqs = []
        for mtype, flags, body in messages:
            seq = self.seq()
            seqs.append(seq)
            data.append(message(mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq, body))
        errors = self.transact(b"".join(data), seqs)
        for seq in seqs:
            if seq in errors:
                code = errors[seq]
                raise OSError(code, f"{os.strerror(code)} ({what})")
