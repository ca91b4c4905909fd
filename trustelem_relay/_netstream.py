"""One TCP connection, plain or TLS, whose bytes can also be sent at once.

Theory of operation
-------------------
trio's streams write only asynchronously: ``send_all`` hands the bytes to
the kernel, then yields to the scheduler. The relay seals its frames in many
tasks and used to write them from the link's writer task alone, so every
frame waited for the writer's next turn, which comes after every other
runnable task. At concurrency 32 the hub built all 32 requests before the
first one left, in one write, while the agent sat idle; then the agent
answered all 32 while the hub sat idle (docs/performance.md has the
figures). A :class:`NetStream` adds :meth:`NetStream.send_nowait`: it
hands bytes to the kernel at once, from whatever task is running, as long
as no :meth:`NetStream.send_all` is under way.

Order on the wire
~~~~~~~~~~~~~~~~~
Bytes the kernel does not take at once wait in one buffer, ``_pending``,
in the order they were handed over. :meth:`NetStream.send_all` appends to
it and waits until it is empty; :meth:`NetStream.send_nowait` refuses
(returns False) while a ``send_all`` holds the send lock, and otherwise
writes what the kernel takes and leaves the rest in ``_pending``. Whoever
calls ``send_nowait`` must make sure a ``send_all`` follows while
:attr:`NetStream.needs_flush` is true; the link's writer does.

TLS
~~~
TLS is the standard library's :class:`ssl.SSLObject` over two memory BIOs,
as in trio's ``SSLStream``: the context verifies the peer, and records go
through ``_pending`` in the order the ssl module produced them. Reading can
produce records too (TLS 1.3 post-handshake messages); they join the same
buffer and leave with the next write. A write never waits for input: if
the ssl module asks for input to finish one (a TLS 1.2 renegotiation, which
the relay's peers do not start), the stream counts as broken. The handshake
runs on first use, or explicitly with :meth:`NetStream.do_handshake`. As
with ``https_compatible=True`` in trio, a peer that closes without a
close_notify ends the stream like one that sends it: the relay's frames
carry their own end markers and authentication.

Errors are trio's: :class:`trio.BrokenResourceError` chained to the
``OSError`` or ``ssl.SSLError`` behind it, :class:`trio.ClosedResourceError`
after :meth:`NetStream.aclose`. A failure inside ``send_nowait`` cannot be
raised to whichever task called it; it is kept, :attr:`needs_flush` turns
true, and the next ``send_all`` raises it.

Reading
~~~~~~~
:func:`receive_from` reads a TCP socket the way trio's
``SocketStream.receive_some`` does (a read attempted at once, a wait for
readability only if it finds nothing, a yield after a read that did not
wait, trio's errors), without the layers trio puts around each read: a
context manager to translate errors, the socket's method wrapper, an async
context manager for the attempt and an exception when nothing is there.
Those cost about 5 µs per read, and every relayed request makes at least
one read on each side of the link and one from the target. Plain streams
and TLS input use it; so does the forwarder, for its plain connections to
targets.

Deliberately not done: a stream over anything but a TCP socket (proxies
with TLS of their own keep trio's ``SSLStream``), and TLS renegotiation
during a write.
"""

from __future__ import annotations

import errno
import os
import ssl

import trio

__all__ = ["NetStream", "receive_from"]

#: Bytes asked of the socket per read while TLS needs more input.
_TLS_READ_SIZE = 256 * 1024

#: What ``receive_some`` returns at most when the caller gives no bound.
_DEFAULT_MAX = 256 * 1024

#: What reading a socket that was closed under us fails with (a closed
#: trio socket's descriptor is -1), as trio tells them apart.
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


class NetStream(trio.abc.Stream):
    """A trio stream over one TCP socket, optionally secured with TLS.

    Give ``ssl_context`` for TLS: the client side needs ``server_hostname``
    (verified by the context's rules), the server side ``server_side=True``.
    ``received`` is input already read from the socket by someone else (a
    proxy's tunnel answer), handed out before anything the socket gives.
    """

    def __init__(
        self,
        transport: trio.SocketStream,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        server_side: bool = False,
        received: bytes = b"",
    ) -> None:
        #: The TCP stream underneath; this object owns it.
        self.transport = transport
        self._fd = transport.socket.fileno()
        # Bytes handed over but not yet taken by the kernel, oldest first.
        self._pending = bytearray()
        # Held by send_all (and the handshake) for as long as it writes.
        self._send_lock = trio.StrictFIFOLock()
        # The failure of a write that nobody could be told about yet.
        self._error: trio.BrokenResourceError | None = None
        self._closed = False
        # Input read from the socket but not yet handed out (plain only).
        self._received = received

        self._ssl: ssl.SSLObject | None = None
        self._handshake_done = ssl_context is None
        self._handshake_lock = trio.Lock()
        if ssl_context is not None:
            self._incoming = ssl.MemoryBIO()
            self._outgoing = ssl.MemoryBIO()
            if received:
                self._incoming.write(received)
                self._received = b""
            self._ssl = ssl_context.wrap_bio(
                self._incoming,
                self._outgoing,
                server_side=server_side,
                server_hostname=server_hostname,
            )

    # ------------------------------------------------------------------
    # Sending

    @property
    def needs_flush(self) -> bool:
        """Whether bytes (or an error) wait for the next :meth:`send_all`."""
        return bool(self._pending) or self._error is not None

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Hand ``data`` over now, without waiting; False if that cannot be.

        It cannot while a :meth:`send_all` is writing, before the TLS
        handshake, or once the stream is closed or broken; the caller then
        sends the data with :meth:`send_all` instead. True means the data is
        on its way: in the kernel, or in order in the buffer that the next
        ``send_all`` writes first (see :attr:`needs_flush`).
        """
        if (
            self._send_lock.locked()
            or not self._handshake_done
            or self._closed
            or self._error is not None
        ):
            return False
        self._queue(data)
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` after everything handed over before it.

        Returns once the kernel has taken all of it. With empty ``data`` it
        writes what :meth:`send_nowait` left behind.
        """
        async with self._send_lock:
            self._check_usable()
            if not self._handshake_done:
                await self._handshake()
            if data:
                self._queue(data)
            await self._drain()

    async def wait_send_all_might_not_block(self) -> None:
        async with self._send_lock:
            self._check_usable()
            await trio.lowlevel.wait_writable(self._fd)

    def _queue(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt if needed, then write what the kernel takes now."""
        if self._ssl is not None:
            try:
                self._ssl.write(data)
            except ssl.SSLError as exc:
                self._fail(exc)
                return
            data = self._outgoing.read()
        self._write_now(data)

    def _write_now(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending:
            pending += data
            data = pending
        try:
            sent = os.write(self._fd, data) if data else 0
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return
        if data is pending:
            del pending[:sent]
        elif sent < len(data):
            pending += memoryview(data)[sent:]

    async def _drain(self) -> None:
        """Wait until the kernel has taken every pending byte."""
        while self._pending:
            self._check_usable()
            await trio.lowlevel.wait_writable(self._fd)
            self._write_now(b"")
        self._check_usable()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = trio.BrokenResourceError(f"connection broken: {exc}")
            self._error.__cause__ = exc
        self._pending.clear()

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------------
    # Receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Return what arrived, at most ``max_bytes``; empty at the end."""
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._ssl is None:
            if self._received:
                # Checkpoint before taking the bytes, so a cancel loses none.
                await trio.lowlevel.checkpoint()
                size = len(self._received) if max_bytes is None else max_bytes
                chunk = self._received[:size]
                self._received = self._received[size:]
                return chunk
            size = _DEFAULT_MAX if max_bytes is None else max_bytes
            return await receive_from(self.transport, size)
        if not self._handshake_done:
            await self.do_handshake()
        return await self._receive_tls(max_bytes or _DEFAULT_MAX)

    async def _receive_tls(self, max_bytes: int) -> bytes:
        assert self._ssl is not None
        while True:
            try:
                data = self._ssl.read(max_bytes)
            except ssl.SSLWantReadError:
                data = None
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # A close_notify, or the end of the socket without one.
                data = b""
            except ssl.SSLError as exc:
                raise _broken(exc) from exc
            if data is not None:
                if not data:
                    self._take_records()
                    # Still a checkpoint, like every trio receive.
                    await trio.lowlevel.checkpoint()
                    return data
                return self._read_more(data, max_bytes)
            self._take_records()
            await self._read_socket()

    def _read_more(self, data: bytes, max_bytes: int) -> bytes:
        """Add to ``data`` what the records already received still hold.

        The ssl module returns at most one record (16 KiB) per read; the
        socket read behind it took up to 256 KiB. Handing all of it over at
        once spares the caller a round per record: a 64 KiB frame was four.
        Whatever stops the loop (no whole record left, the end, an error)
        is met again, and reported, by the next call.
        """
        assert self._ssl is not None
        pieces = [data]
        size = len(data)
        while size < max_bytes:
            try:
                more = self._ssl.read(max_bytes - size)
            except ssl.SSLError:
                break
            if not more:
                break
            pieces.append(more)
            size += len(more)
        self._take_records()
        return data if len(pieces) == 1 else b"".join(pieces)

    async def _read_socket(self) -> None:
        """Feed the next piece of socket input to TLS (its end included)."""
        try:
            raw = await receive_from(self.transport, _TLS_READ_SIZE)
        except trio.BrokenResourceError:
            raw = b""
        if raw:
            self._incoming.write(raw)
        else:
            self._incoming.write_eof()

    def _take_records(self) -> None:
        """Send what the ssl module produced while reading, in order."""
        if self._outgoing.pending:
            records = self._outgoing.read()
            if self._send_lock.locked():
                # The writer's drain loop takes them after its own bytes.
                self._pending += records
            else:
                self._write_now(records)

    # ------------------------------------------------------------------
    # The TLS handshake

    async def do_handshake(self) -> None:
        """Run the TLS handshake if it has not run; nothing for plain TCP.

        Raises :class:`trio.BrokenResourceError` caused by the
        ``ssl.SSLError`` (a certificate that fails verification, for one)
        or by the end of the connection.
        """
        async with self._handshake_lock:
            if self._handshake_done:
                return
            async with self._send_lock:
                self._check_usable()
                if not self._handshake_done:
                    await self._handshake()

    async def _handshake(self) -> None:
        # Called with the send lock held; one handshake at a time.
        assert self._ssl is not None
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush_records()
                await self._read_socket()
            except ssl.SSLError as exc:
                # The alert that says why, if the peer still listens.
                self._write_now(self._outgoing.read())
                raise _broken(exc) from exc
        await self._flush_records()
        self._handshake_done = True

    async def _flush_records(self) -> None:
        self._write_now(self._outgoing.read())
        await self._drain()

    def getpeercert(self, binary_form: bool = True) -> bytes | None:
        """The peer's certificate in DER, or None (plain TCP, or none sent)."""
        if self._ssl is None or not binary_form:
            return None
        return self._ssl.getpeercert(binary_form=True)

    # ------------------------------------------------------------------
    # Closing

    async def aclose(self) -> None:
        """Close the connection; a TLS stream first says close_notify.

        The close_notify is written only if the kernel takes it at once:
        closing never waits for the peer.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            if (
                self._ssl is not None
                and self._handshake_done
                and self._error is None
                and not self._send_lock.locked()
            ):
                try:
                    self._ssl.unwrap()
                except ssl.SSLError:
                    pass
                self._write_now(self._outgoing.read())
        finally:
            self._closed = True
            self._pending.clear()
            await self.transport.aclose()


async def receive_from(transport: trio.SocketStream, max_bytes: int) -> bytes:
    """Read at most ``max_bytes`` from ``transport``'s socket; empty at the end.

    The same checkpoints and errors as ``transport.receive_some``: a
    cancelled caller reads nothing, a read that finds bytes at once still
    yields, a broken socket is :class:`trio.BrokenResourceError` and a
    closed one :class:`trio.ClosedResourceError`. Not guarded against two
    tasks reading at once, which trio would refuse: each socket here has
    one reader.
    """
    if max_bytes < 1:
        raise ValueError("max_bytes must be >= 1")
    await trio.lowlevel.checkpoint_if_cancelled()
    socket = transport.socket
    waited = False
    while True:
        fd = socket.fileno()
        try:
            data = os.read(fd, max_bytes)
        except BlockingIOError:
            # Waiting is the checkpoint; a close by another task ends it
            # with trio.ClosedResourceError.
            await trio.lowlevel.wait_readable(fd)
            waited = True
            continue
        except OSError as exc:
            if exc.errno in _CLOSED_ERRNOS:
                raise trio.ClosedResourceError("the socket was closed") from None
            raise trio.BrokenResourceError(f"connection broken: {exc}") from exc
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data


def _broken(exc: BaseException) -> trio.BrokenResourceError:
    return trio.BrokenResourceError(f"TLS failed: {exc}")
