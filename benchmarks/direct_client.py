"""The direct path: a trio + h11 client talking straight to the origin.

Each worker owns one connection. With ``keep_alive`` the connection carries
request after request, as a client with a connection pool would; without it
every request dials a new TCP connection and asks for ``Connection: close``,
which is what the relay's agent does when it forwards without a pool. The
benchmark measures both and compares the relay with the one that matches
how the agent talks to the target.

The client does the least work a careful trio + h11 client can: the body
goes to the socket without being joined to the head, and the answer is
counted, not kept.
"""

from __future__ import annotations

import h11
import trio
from load import Workload

RECEIVE_SIZE = 256 * 1024


class _Slot:
    """One worker's connection, if it has one open."""

    def __init__(self) -> None:
        self.stream: trio.SocketStream | None = None
        self.conn = h11.Connection(h11.CLIENT)


class DirectClient:
    """Requests to ``127.0.0.1:port``; call :meth:`aclose` when done."""

    def __init__(self, port: int, *, keep_alive: bool) -> None:
        self.port = port
        self.keep_alive = keep_alive
        self.authority = f"127.0.0.1:{port}".encode("ascii")
        self._slots: dict[int, _Slot] = {}

    async def request(self, index: int, workload: Workload) -> int:
        """One request of ``workload`` on worker ``index``'s connection."""
        slot = self._slots.get(index)
        if slot is None:
            slot = self._slots[index] = _Slot()
        if slot.stream is None:
            slot.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            slot.conn = h11.Connection(h11.CLIENT)
        stream, conn = slot.stream, slot.conn

        # Send the request: the head, then the body as it is.
        body = workload.body
        headers = [
            (b"host", self.authority),
            (b"content-type", b"application/json"),
        ]
        if body or workload.method == "POST":
            headers.append((b"content-length", b"%d" % len(body)))
        if not self.keep_alive:
            headers.append((b"connection", b"close"))
        request = h11.Request(
            method=workload.method, target=workload.path, headers=headers
        )
        await stream.send_all(conn.send(request) or b"")
        if body:
            for part in conn.send_with_data_passthrough(h11.Data(data=body)) or ():
                await stream.send_all(part)
        conn.send(h11.EndOfMessage())

        # Receive the answer, counting its body.
        received = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
            elif isinstance(event, h11.Data):
                received += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.Response):
                if event.status_code != 200:
                    raise RuntimeError(f"the origin answered {event.status_code}")
            else:
                raise RuntimeError(f"the origin broke the exchange: {event!r}")

        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            slot.stream = None
            await stream.aclose()
        return received

    async def aclose(self) -> None:
        for slot in self._slots.values():
            if slot.stream is not None:
                await slot.stream.aclose()
                slot.stream = None
