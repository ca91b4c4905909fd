"""Idle keep-alive connections to targets, for :func:`forward` to reuse.

Theory of operation
-------------------
Without a pool every forwarded request opens its own connection and asks
for ``Connection: close``. Opening costs a round trip, and for ``https`` a
full TLS handshake, which on a LAN is most of the time a small SCIM request
takes. A :class:`ConnectionPool` keeps the connections whose exchange ended
cleanly (both sides willing to keep the connection, nothing left unread) and
hands them to later requests for the same destination.

A destination is the whole :class:`~trustelem_relay._policy.Target` (so a
changed declaration never reuses an old connection), the scheme, the server
name the certificate was verified for and the SSL context used: a connection
checked for one name is never used for a request to another.

The newest idle connection is reused first, as it is the least likely to
have been closed by the target. The pool holds at most ``max_idle``
connections in all, dropping the oldest, and drops any that has been idle
for ``idle_timeout`` seconds. That default (4 s) is below the shortest
keep-alive timeout common servers use (5 s), so the target rarely closes a
connection just as we reuse it. Before reuse, a connection that has become
readable is dropped: an idle HTTP/1.1 connection only becomes readable when
the server closed it or misbehaves.

That check is one ``poll(2)`` per reuse, about half a microsecond, made
every time. Skipping it for a connection returned a moment ago would save
little and be wrong: a server may close right after its answer (at its own
limit of requests per connection, say) without announcing it, and a request
sent on that connection fails without retry. ``recv`` with ``MSG_PEEK``
would cost the same system call and an exception besides.

What is not done: no background task prunes expired connections (they are
dropped on the next use of the pool, or by :meth:`ConnectionPool.aclose`),
and a request whose reused connection the target closes at the same instant
is not retried: it fails like any request whose connection broke after it
was sent, because nobody can tell whether the target had started on it.
"""

from __future__ import annotations

import select
from collections.abc import Hashable
from types import TracebackType

import attrs
import trio

__all__ = ["ConnectionPool"]

#: How long closing a dropped connection may take.
_CLOSE_GRACE = 1.0

_HAVE_POLL = hasattr(select, "poll")


@attrs.define
class _Idle:
    key: Hashable
    stream: trio.abc.Stream
    #: trio.current_time() when the connection became idle.
    since: float


class ConnectionPool:
    """Keep-alive connections to targets, shared by concurrent requests.

    Pass the same pool to every :func:`forward` call of an agent, and close
    it (``await pool.aclose()`` or ``async with``) when the agent stops; the
    pool must be used from one trio run.
    """

    def __init__(self, *, max_idle: int = 32, idle_timeout: float = 4.0) -> None:
        if max_idle < 0 or idle_timeout < 0:
            raise ValueError("max_idle and idle_timeout must not be negative")
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        # Oldest first: appended when a connection becomes idle.
        self._idle: list[_Idle] = []
        self._closed = False

    def __len__(self) -> int:
        """The number of idle connections held."""
        return len(self._idle)

    async def take(self, key: Hashable) -> trio.abc.Stream | None:
        """An idle connection to *key*'s destination, or None to dial anew.

        The caller owns the connection: it either gives it back with
        :meth:`put` or closes it.
        """
        dropped = self._expire(trio.current_time())
        found: trio.abc.Stream | None = None
        for index in range(len(self._idle) - 1, -1, -1):
            entry = self._idle[index]
            if entry.key != key:
                continue
            del self._idle[index]
            if _looks_closed(entry.stream):
                dropped.append(entry.stream)
                continue
            found = entry.stream
            break
        await _close_all(dropped)
        return found

    async def put(self, key: Hashable, stream: trio.abc.Stream) -> None:
        """Keep *stream*, ready for its next request; or close it if full."""
        if self._closed or self.max_idle == 0:
            await _close_all([stream])
            return
        now = trio.current_time()
        self._idle.append(_Idle(key, stream, now))
        dropped = self._expire(now)
        excess = len(self._idle) - self.max_idle
        if excess > 0:
            dropped += [entry.stream for entry in self._idle[:excess]]
            del self._idle[:excess]
        await _close_all(dropped)

    async def aclose(self) -> None:
        """Close every idle connection; later :meth:`put` calls close theirs."""
        self._closed = True
        dropped = [entry.stream for entry in self._idle]
        self._idle.clear()
        await _close_all(dropped)

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _expire(self, now: float) -> list[trio.abc.Stream]:
        """Remove the connections idle for too long; the caller closes them."""
        limit = now - self.idle_timeout
        count = 0
        while count < len(self._idle) and self._idle[count].since <= limit:
            count += 1
        expired = [entry.stream for entry in self._idle[:count]]
        del self._idle[:count]
        return expired


def _looks_closed(stream: trio.abc.Stream) -> bool:
    """Whether the idle connection's socket has something to read.

    Between requests the server has nothing to say, so readable means it
    closed the connection (or sent what it should not have): either way the
    connection is not fit for another request.
    """
    # Exact types first: trio's streams derive from ABCs, whose isinstance
    # checks are slow, and the pool only ever holds these two.
    transport: trio.abc.Stream
    if type(stream) is trio.SocketStream:
        transport = stream
    elif isinstance(stream, trio.SSLStream):
        if stream.pending():
            return True
        transport = stream.transport_stream
    else:
        return True
    if not isinstance(transport, trio.SocketStream):
        return True
    fileno = transport.socket.fileno()
    if fileno < 0:
        return True
    # One poll(2) of the descriptor, the cheapest question the kernel
    # answers; select() where there is no poll, though it cannot watch
    # descriptors past 1023.
    if _HAVE_POLL:
        poller = select.poll()
        poller.register(fileno, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fileno], [], [], 0)
    return bool(readable)


async def _close_all(streams: list[trio.abc.Stream]) -> None:
    """Close dropped connections, even if our caller is being cancelled."""
    if not streams:
        return
    with trio.move_on_after(_CLOSE_GRACE, shield=True):
        for stream in streams:
            await stream.aclose()
