"""One relay session over one websocket, in Trio.

Theory of operation
-------------------
A :class:`Link` drives a sans-IO :class:`~._mux.Connection` over a
:class:`~._websocket.WebSocket`. It owns two loops that run in the
session's nursery:

* the *reader* reads the websocket itself (no task in between), feeds each
  message to the connection and hands every event to the role's handler
  (agent or hub), synchronously, so events of one stream keep their order;
* the *writer* is the only task that sends. Code anywhere calls
  :meth:`Link.flush` after touching the connection; the writer then sends
  the queued frames, in the order they were sealed (their counters demand
  it), several per wake-up and in one write to the socket: each frame is
  still one websocket message.

A third loop sends heartbeats: a PING every ``interval`` seconds; when no
frame at all arrives within ``deadline`` seconds after it, the link is
declared dead and closed. Any frame counts as a sign of life, so a busy link
never times out behind its own traffic.

Tasks that want to send a body wait in :meth:`Link.wait_send_window` until
the peer's WINDOW frames give them credit.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import trio

from ._errors import HandshakeError, RemoteProtocolError
from ._events import Event, PongReceived, WindowUpdated
from ._mux import Connection, ConnectionState
from ._websocket import ConnectionClosed, WebSocket

#: Websocket close codes used by the runtime (4000-4999 are private use).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_REPLACED = 4001
CLOSE_ROTATED = 4002
CLOSE_DEAD = 4008

#: Bytes of queued frames the writer joins into one write to the socket.
WRITE_BATCH = 256 * 1024

#: Largest set of frames :meth:`Link.flush` sends at once, from the calling
#: task. Larger ones (body chunks) go through the writer, which joins them:
#: sending each 64 KiB chunk on its own woke the peer once per chunk and
#: cost a quarter of the 1 MiB throughput (docs/performance.md).
SEND_NOW_LIMIT = 16 * 1024


def _first_cause(exc: BaseException) -> BaseException:
    """The first exception in *exc* (a group or not) that is not a
    cancellation; a cancellation only when there is nothing else."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = [_first_cause(inner) for inner in exc.exceptions]
    return next((e for e in leaves if not isinstance(e, trio.Cancelled)), leaves[0])


class LinkClosed(Exception):
    """The link is gone; ``reason`` says why, for logs and errors."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Link:
    """A running session. Create it once the websocket is open."""

    def __init__(
        self,
        conn: Connection,
        ws: WebSocket,
        *,
        on_event: Callable[[Event], None],
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.conn = conn
        self.ws = ws
        self.log = log
        self._on_event = on_event
        # Frames taken from the connection and not yet written.
        self._outgoing: deque[bytes] = deque()
        self._wake_writer = trio.Event()
        # Set by the writer after each write; see wait_written.
        self._written = trio.Event()
        # Replaced each time credit arrives; waiters re-check their window.
        self._window_changed = trio.Event()
        self._pong = trio.Event()
        #: Frames taken from the connection / written to the websocket.
        self.frames_queued = 0
        self.frames_sent = 0
        #: Why the link ended, once it has.
        self.closed_reason: str | None = None
        self._closed = trio.Event()
        self._close_code = CLOSE_NORMAL
        # How long closing waits for the peer's answer to our close frame.
        self._close_grace = 2.0
        #: The protocol error that ended the link, if one did.
        self.error: RemoteProtocolError | None = None
        self._scope = trio.CancelScope()

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # ------------------------------------------------------------------
    # Sending

    def flush(self, *, whole: bool = False) -> int:
        """Send the connection's queued frames, or hand them to the writer.

        Small frames leave at once, from the calling task, when nothing is
        queued ahead of them, no write is under way and the link is not
        closing; the rest wait for the writer. ``whole=True`` says that
        the frames are a whole batch (say, all the body chunks a window
        allows), which nothing sealed soon after would join: they then
        leave at once whatever their size, under the same conditions.
        Returns the sequence number of the last frame queued, so a caller
        can later ask :meth:`was_sent` whether it left this process.
        """
        frames = self.conn.data_to_send()
        if not frames:
            return self.frames_queued
        self.frames_queued += len(frames)
        if (
            not self._outgoing
            and self.closed_reason is None
            and (whole or sum(map(len, frames)) <= SEND_NOW_LIMIT)
            and self.ws.send_messages_nowait(frames)
        ):
            self.frames_sent += len(frames)
            if not self.ws.needs_flush:
                return self.frames_queued
        else:
            self._outgoing.extend(frames)
        self._wake_writer.set()
        return self.frames_queued

    def was_sent(self, sequence: int) -> bool:
        """Whether frame number ``sequence`` was written to the websocket."""
        return self.frames_sent >= sequence

    async def _writer(self) -> None:
        outgoing = self._outgoing
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            while outgoing or self.ws.needs_flush:
                # Take what is queued, up to a bound, for one write; an
                # empty one writes what flush's sends left behind.
                batch: list[bytes] = []
                size = 0
                while outgoing and size < WRITE_BATCH:
                    batch.append(outgoing.popleft())
                    size += len(batch[-1])
                await self._send_frames(batch)
                self._written.set()

    async def _send_frames(self, frames: list[bytes]) -> None:
        """Send each frame as one websocket message, all in one write."""
        closed = self.ws.closed
        if closed is not None:
            raise ConnectionClosed(closed.code, closed.reason)
        before = self.ws.messages_sent
        try:
            await self.ws.send_messages(frames)
        finally:
            # Once the write began, any frame of it may have reached the
            # peer: count them all, so "not sent" stays a certainty; none
            # count when it never began (closed or cancelled before).
            self.frames_sent += self.ws.messages_sent - before

    async def wait_send_window(self, stream_id: int) -> int:
        """Wait until the stream may send; return how many bytes.

        Raises :class:`LinkClosed` if the link ends, or if the stream is
        gone (reset by the peer) while waiting.
        """
        while True:
            if self.is_closed:
                raise LinkClosed(self.closed_reason or "closed")
            if self.conn.stream_state(stream_id) is None:
                raise LinkClosed(f"stream {stream_id} was reset")
            window = self.conn.send_window(stream_id)
            if window > 0:
                return window
            await self._window_changed.wait()

    def wake_senders(self) -> None:
        """Make every task in :meth:`wait_send_window` look again."""
        self._window_changed.set()
        self._window_changed = trio.Event()

    # ------------------------------------------------------------------
    # Receiving

    async def _reader(self) -> None:
        conn = self.conn
        receive_messages = self.ws.receive_messages
        while True:
            # Everything one read completed is handled without yielding, so
            # the writer sends the answers to all of it in one write.
            for message in await receive_messages():
                for event in conn.receive_message(message):
                    if isinstance(event, WindowUpdated):
                        self.wake_senders()
                    elif isinstance(event, PongReceived):
                        self._pong.set()
                    self._on_event(event)
                # Queue answers in the order their causes arrived; the
                # writer still sends everything queued in one write.
                self.flush()

    async def _heartbeat(self, interval: float, deadline: float) -> None:
        sequence = 0
        while True:
            await trio.sleep(interval)
            sequence += 1
            self._pong = trio.Event()
            sent_at = trio.current_time()
            self.conn.ping(sequence.to_bytes(8, "big"))
            self.flush()
            with trio.move_on_after(deadline):
                await self._pong.wait()
            if not self._pong.is_set() and self.conn.last_received < sent_at:
                raise LinkClosed(f"no answer to a heartbeat within {deadline:g} s")

    # ------------------------------------------------------------------
    # Running

    async def run(
        self,
        *,
        heartbeat: tuple[float, float] | None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> str:
        """Run the loops until the link ends; return why it ended.

        Protocol errors close the websocket with the error's close code;
        the error is logged, not raised: for the caller a dead link is a
        normal outcome. :meth:`close` ends it from outside.
        """
        reason = "closed"
        try:
            with self._scope:
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._writer)
                        if heartbeat is not None:
                            nursery.start_soon(self._heartbeat, *heartbeat)
                        task_status.started()
                        await self._reader()
                except BaseExceptionGroup as group:
                    # trio wraps even the body's exception in a group; the
                    # clauses below want the one that ended the loops.
                    raise _first_cause(group) from None
        except ConnectionClosed as exc:
            said = f"{exc.code} {exc.reason}".strip()
            reason = f"websocket closed by the peer ({said})"
        except RemoteProtocolError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.error = exc
            self._close_code = exc.close_code
            # A failed handshake is reported by the caller, which knows
            # whether it is worth saying again on every retry.
            level = (
                logging.DEBUG if isinstance(exc, HandshakeError) else logging.WARNING
            )
            self.log.log(level, "session ended by a protocol error: %s", reason)
        except LinkClosed as exc:
            reason = exc.reason
            self._close_code = CLOSE_DEAD
        except trio.Cancelled:
            # Cancelled from outside: no time to wait for the peer's reply
            # to our close frame.
            reason = "shut down"
            self._close_grace = 0.1
            raise
        finally:
            self.closed_reason = self.closed_reason or reason
            self._closed.set()
            self.wake_senders()
            self._written.set()
            await self._close_websocket()
        return self.closed_reason

    async def wait_written(self) -> None:
        """Wait until every frame flushed so far has been written.

        Call it before :meth:`close` to let the last frames out: close
        stops the writer at once. Returns early if the link ends.
        """
        queued = self.frames_queued
        while self.frames_sent < queued and not self.is_closed:
            self._written = trio.Event()
            await self._written.wait()

    def close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        """End the link from outside: the websocket closes with ``code``."""
        if self.closed_reason is None:
            self.closed_reason = reason
            self._close_code = code
        self._scope.cancel()

    async def _close_websocket(self) -> None:
        # A last frame (a REJECT) may still be queued for the peer.
        with trio.CancelScope(shield=True), trio.move_on_after(self._close_grace):
            last = self.conn.data_to_send()
            if last:
                try:
                    await self.ws.send_messages(last)
                except ConnectionClosed:
                    pass
            self.conn.close()
            self.ws.close_timeout = self._close_grace
            await self.ws.aclose(self._close_code, (self.closed_reason or "")[:100])

    @property
    def is_open(self) -> bool:
        return not self.is_closed and self.conn.state is ConnectionState.OPEN
