"""Streams: the state each one is in and the credit it holds.

A stream is one request and its answer. This module keeps what the
connection knows about each stream; :mod:`._mux` decides when things happen
to it. Nothing here does I/O or reads a clock.

The state table
---------------
A stream starts OPEN, both ways. Sending our END_STREAM moves it to
HALF_CLOSED_LOCAL (we may only receive now); receiving the peer's moves it
to HALF_CLOSED_REMOTE (we may only send); once both ends have finished it
is CLOSED. :data:`_TRANSITIONS` maps each legal (state, input) pair to the
next state, and a pair it does not list is illegal: CLOSED has no entries
at all. The inputs are about direction only. A REQUEST or RESPONSE head
counts as data for the table; whether a head came first is kept apart, in
``local_head`` and ``remote_head``. A RESET is not an input either: it
drops the stream whatever its state.

What happens on an illegal pair is the connection's choice, not the
table's: a call of our own raises :class:`LocalProtocolError` and changes
nothing; a frame from the peer resets just that stream.

Flow-control credit
-------------------
Each :class:`_Stream` starts with ``Settings.stream_window`` bytes of
credit in each direction, and its fields say where those bytes are:

``send_credit``
    DATA bytes we may still send. :meth:`Connection.send_data` spends it;
    a WINDOW from the peer adds to it, and growing past
    :data:`MAX_WINDOW` is a :class:`FlowControlError`.
``recv_credit``
    DATA bytes the peer may still send. Each DATA frame spends it; a frame
    larger than what is left is a :class:`FlowControlError`, which ends
    the session. It grows again only when we send a WINDOW.
``unacked``
    Bytes that arrived and that the user has not yet acknowledged as
    consumed. A stream that finished both ways stays in the connection's
    table until this is zero, so that a late acknowledgement still frees
    session credit; a reset stream gives these bytes back at once.
``pending_ack``
    Bytes acknowledged but not yet handed back in a WINDOW frame. They are
    sent in batches, once they reach a quarter of the window.

While the peer may still send, ``recv_credit + unacked + pending_ack``
equals the stream window: a byte is either still allowed, or arrived and
unconsumed, or consumed and waiting to be returned. The connection keeps
the same three counters for the whole session (``_send_credit``,
``_recv_credit``, ``_pending_ack``), bounded by ``Settings.session_window``.
"""

from __future__ import annotations

import enum

import attrs

from ._errors import RemoteProtocolError
from ._frames import MAX_PAYLOAD
from ._version import PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN

__all__ = [
    "MAX_WINDOW",
    "_TRANSITIONS",
    "FlowControlError",
    "Settings",
    "StreamState",
    "_Input",
    "_Stream",
]

#: Largest window either side may reach; keeps counters in 31 bits.
MAX_WINDOW = (1 << 31) - 1


class FlowControlError(RemoteProtocolError):
    """The peer sent more DATA than the credit it was given."""


class StreamState(enum.Enum):
    # Members are singletons, so hashing by identity is exact; Enum's own
    # __hash__ is Python code, and every lookup in _TRANSITIONS runs it twice.
    __hash__ = object.__hash__

    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"
    HALF_CLOSED_REMOTE = "half-closed (remote)"
    CLOSED = "closed"


class _Input(enum.Enum):
    __hash__ = object.__hash__  # as in StreamState

    SEND_DATA = "send data"
    SEND_END = "send end"
    RECV_DATA = "receive data"
    RECV_END = "receive end"


_S = StreamState
_I = _Input
_TRANSITIONS: dict[tuple[StreamState, _Input], StreamState] = {
    (_S.OPEN, _I.SEND_DATA): _S.OPEN,
    (_S.OPEN, _I.RECV_DATA): _S.OPEN,
    (_S.OPEN, _I.SEND_END): _S.HALF_CLOSED_LOCAL,
    (_S.OPEN, _I.RECV_END): _S.HALF_CLOSED_REMOTE,
    (_S.HALF_CLOSED_LOCAL, _I.RECV_DATA): _S.HALF_CLOSED_LOCAL,
    (_S.HALF_CLOSED_LOCAL, _I.RECV_END): _S.CLOSED,
    (_S.HALF_CLOSED_REMOTE, _I.SEND_DATA): _S.HALF_CLOSED_REMOTE,
    (_S.HALF_CLOSED_REMOTE, _I.SEND_END): _S.CLOSED,
}


@attrs.frozen
class Settings:
    """Tunables of one connection; both ends should use the same windows."""

    #: Credit each stream starts with, in each direction.
    stream_window: int = attrs.field(default=256 * 1024)
    #: Credit the whole session starts with, in each direction.
    session_window: int = attrs.field(default=4 * 1024 * 1024)
    #: (agent) Streams open at once before new ones are refused OVERLOADED.
    max_open_streams: int = 1024
    #: Protocol versions spoken, lowest and highest.
    versions: tuple[int, int] = (PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX)

    def __attrs_post_init__(self) -> None:
        for name in ("stream_window", "session_window"):
            value = getattr(self, name)
            if not MAX_PAYLOAD <= value <= MAX_WINDOW:
                raise ValueError(f"{name} must be {MAX_PAYLOAD}-{MAX_WINDOW}")


class _Stream:
    """Book-keeping for one stream. ``recv_credit`` is what the peer may
    still send; ``unacked`` what arrived and was not acknowledged yet;
    ``pending_ack`` what was acknowledged but not yet returned as credit."""

    __slots__ = (
        "id",
        "local_head",
        "pending_ack",
        "recv_credit",
        "remote_head",
        "send_credit",
        "state",
        "unacked",
    )

    def __init__(self, stream_id: int, window: int) -> None:
        self.id = stream_id
        self.state = StreamState.OPEN
        self.local_head = False
        self.remote_head = False
        self.send_credit = window
        self.recv_credit = window
        self.unacked = 0
        self.pending_ack = 0
