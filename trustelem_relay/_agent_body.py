"""A request body the agent forwards while the hub is still sending it.

Theory of operation
-------------------
The hub's request head says how long the body is: ``Hub.request`` puts the
body's ``Content-Length`` in it (the agent never relays that header; the
forwarder writes its own). With that number the agent can write the head
to the target before the body is complete, and stream each DATA frame on
as it comes, so that the hub-to-agent and agent-to-target legs overlap.
Without it (a head from a hub that does not announce, or a header that is
not one plain number) the agent collects the whole body first, as it
always did.

:class:`StreamedBody` sits between the link's reader, which feeds it DATA
frames (:meth:`~StreamedBody.feed`, :meth:`~StreamedBody.end`), and the
forwarder, which pulls pieces with :meth:`~StreamedBody.receive` and writes
them to the target (a call says the previous piece is written). A body that
has all arrived before the forwarder starts (a small one comes with its
head, in the same read) is taken whole instead, with
:meth:`~StreamedBody.take_whole`, and written with the head as a collected
body is: streaming it would only add a wait and a phase per piece.

Credit goes back to the hub as frames arrive, as long as the bytes credited
but not yet written stay within :data:`AHEAD` (one stream window); past
that, only as the forwarder writes. A target that keeps up so sees the
hub's frames flow as if they were acknowledged on arrival (crediting only
after each write would make the hub wait a round trip per window), and a
slow one makes the hub wait: the agent never holds more than the hub's
window plus :data:`AHEAD` of a body, whatever its size.

The hub's promise is checked as bytes come: one byte more than announced,
or an END_STREAM before the announced count, is a
:class:`~trustelem_relay.StreamProtocolError` from the next ``receive``.
The forwarder then closes the target's connection, so a target never takes
a body cut short for a whole one (its own framing, the ``Content-Length``
the agent wrote, would stop it anyway). Whether the target may have seen
the request is the forwarder's call: it knows what it wrote.
"""

from __future__ import annotations

from collections import deque

import trio

from ._errors import StreamProtocolError
from ._events import RequestHead
from ._link import Link

__all__ = ["StreamedBody", "announced_length"]

#: Bytes credited to the hub before the forwarder has written them, at most.
AHEAD = 256 * 1024

#: Bytes joined into one write to the target at most. The frames that
#: arrived meanwhile go out together; the backlog is bounded anyway, by
#: the stream window plus AHEAD.
JOIN_LIMIT = 256 * 1024


def announced_length(head: RequestHead) -> int | None:
    """The body length the hub's head announces, or None if it does not.

    Only a single plain decimal number counts (repeated identical values
    are one); anything else means "not announced", and the body is then
    collected whole, as from a hub that never sends the header.
    """
    values = {
        value.strip(b" \t")
        for name, value in head.headers
        if name.lower() == b"content-length"
    }
    if len(values) != 1:
        return None
    (value,) = values
    # isdigit alone accepts non-ASCII digits; int() would then read them.
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        return None
    return int(value)


class StreamedBody:
    """A body of a known length, handed to the forwarder as it arrives.

    Fed by the link's reader, read by one forwarding task.
    """

    def __init__(self, link: Link, stream_id: int, length: int) -> None:
        self.link = link
        self.stream_id = stream_id
        #: The length the hub announced; the forwarder writes it as the
        #: request's ``Content-Length``.
        self.length = length
        # Frames received and not yet handed to the forwarder.
        self._pieces: deque[bytes] = deque()
        # Bytes received so far.
        self._received = 0
        # Bytes received and not yet written (held here or being written),
        # the last piece handed out, and bytes not yet credited to the hub.
        # Credited but unwritten bytes (unwritten - owed) stay within AHEAD.
        self._unwritten = 0
        self._handed = 0
        self._owed = 0
        self._ended = False
        # Why the body broke the hub's promise, once it has.
        self._error: str | None = None
        # Replaced each time it is set; the forwarder waits on it.
        self._arrived = trio.Event()

    def __repr__(self) -> str:
        return (
            f"<StreamedBody stream={self.stream_id} "
            f"{self._received}/{self.length} ended={self._ended}>"
        )

    @property
    def buffered(self) -> int:
        """Bytes received and not yet written to the target."""
        return self._unwritten

    def feed(self, data: bytes) -> None:
        """(reader) Take one DATA frame's payload."""
        self._received += len(data)
        self._owed += len(data)
        if self._error is not None:
            # Already broken: nothing more is forwarded, the credit goes
            # back at once so that the session's window does not shrink.
            self._settle()
            return
        if self._received > self.length:
            self._fail(
                f"the hub sent more than the {self.length} body bytes its "
                "Content-Length announced"
            )
            return
        self._pieces.append(data)
        self._unwritten += len(data)
        self._settle()
        self._arrived.set()

    def end(self) -> None:
        """(reader) The hub ended the stream: no more body will come."""
        self._ended = True
        if self._error is None and self._received < self.length:
            self._fail(
                f"the hub ended the body after {self._received} of the "
                f"{self.length} bytes its Content-Length announced"
            )
        self._arrived.set()

    def take_whole(self) -> bytes | None:
        """(forwarder) All of the body at once, if it has all arrived intact.

        Returns None while bytes are still due, or once the body broke
        the announced length; then :meth:`receive` goes on as usual. To be
        called before the first ``receive``: taking the body ends the
        streaming, and its credit goes back to the hub now, as for a body
        collected whole.
        """
        if not self._ended or self._error is not None:
            return None
        data = b"".join(self._pieces)
        self._pieces.clear()
        self._unwritten = 0
        self._settle()
        return data

    async def receive(self) -> bytes:
        """(forwarder) The next bytes to write; ``b""`` once all were.

        Calling it again says that what the previous call returned is
        written: that credit goes back to the hub now. Raises
        :class:`StreamProtocolError` when the body breaks the announced
        length.
        """
        if self._handed:
            self._unwritten -= self._handed
            self._handed = 0
            self._settle()
        while True:
            if self._error is not None:
                raise StreamProtocolError(self._error)
            if self._pieces:
                return self._take()
            if self._ended:
                return b""
            self._arrived = trio.Event()
            await self._arrived.wait()

    def _take(self) -> bytes:
        pieces = self._pieces
        data = pieces.popleft()
        if pieces and len(data) + len(pieces[0]) <= JOIN_LIMIT:
            # One write for all that is waiting: fewer system calls and
            # wake-ups of the target than one per frame.
            parts = [data]
            size = len(data)
            while pieces and size + len(pieces[0]) <= JOIN_LIMIT:
                parts.append(pieces.popleft())
                size += len(parts[-1])
            data = b"".join(parts)
        self._handed = len(data)
        return data

    def _fail(self, message: str) -> None:
        self._error = message
        # The pieces will never be written: their credit goes back now.
        self._unwritten -= sum(map(len, self._pieces))
        self._pieces.clear()
        self._settle()

    def _settle(self) -> None:
        """Credit what may be credited now: all that is owed once broken,
        else as much as keeps the credited but unwritten bytes in AHEAD."""
        if self._error is not None:
            size = self._owed
        else:
            size = min(self._owed, AHEAD - (self._unwritten - self._owed))
        if size > 0:
            self._owed -= size
            if self.link.is_open:
                self.link.conn.acknowledge_data(self.stream_id, size)
                self.link.flush()
