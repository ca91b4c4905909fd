"""Many idle agent sessions from one process, to weigh the hub's memory.

A full :class:`trustelem_relay.Agent` per session would cost this process a
lot for nothing: an idle session only needs to finish the handshake,
describe itself and answer the hub's heartbeats. So each session here is the
sans-IO :class:`trustelem_relay.Connection` in agent role over the
package's own websocket client (on TLS for wss), exactly the bytes a real
agent sends. Each session describes itself with its own agent id (the hub
would otherwise replace one by the next), then sends a PING: the PONG comes
after the hub has handled the description, so once every session has its
PONG, every session is registered in the hub.
"""

from __future__ import annotations

import ssl

import trio

import trustelem_relay
from trustelem_relay import HandshakeComplete, PongReceived, Role
from trustelem_relay._websocket import connect

#: The hub's limit, plus the length prefix the agent also allows.
MAX_MESSAGE = 65_900

READY = b"bench-ready"


class IdleSessions:
    """Open sessions in the background; close them all with the nursery."""

    def __init__(
        self,
        nursery: trio.Nursery,
        port: int,
        service_id: str,
        ca: ssl.SSLContext | None,
    ) -> None:
        """Sessions to the hub at 127.0.0.1:``port``: wss verified with
        ``ca``, or plain ws when ``ca`` is None."""
        self._nursery = nursery
        self._port = port
        self._service_id = service_id
        self._ca = ca
        self._opened = 0
        self._ready = 0
        self._changed = trio.Event()

    @property
    def ready(self) -> int:
        return self._ready

    async def open(self, count: int, *, parallel: int = 32) -> None:
        """Open ``count`` more sessions; return once all are registered."""
        target = self._ready + count
        limiter = trio.CapacityLimiter(parallel)
        for _ in range(count):
            await limiter.acquire_on_behalf_of(self._opened)
            self._nursery.start_soon(self._session, self._opened, limiter)
            self._opened += 1
        while self._ready < target:
            await self._changed.wait()

    async def _session(self, number: int, limiter: trio.CapacityLimiter) -> None:
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
        stream = await trio.open_tcp_stream("127.0.0.1", self._port)
        if self._ca is not None:
            stream = trio.SSLStream(stream, self._ca, server_hostname="127.0.0.1")
        ws = await connect(
            stream, "127.0.0.1", "/v1/connect", max_message_size=MAX_MESSAGE, timeout=60
        )
        try:
            conn = trustelem_relay.Connection(
                Role.AGENT, service_id=self._service_id, clock=trio.current_time
            )
            await ws.send_messages(conn.data_to_send())
            while True:
                for message in await ws.receive_messages():
                    for event in conn.receive_data(message):
                        if isinstance(event, HandshakeComplete):
                            conn.send_info(
                                {
                                    "agent_id": f"bench{number:06d}",
                                    "version": "bench",
                                    "hostname": "bench",
                                    "targets": ["origin"],
                                }
                            )
                            conn.ping(READY)
                        elif isinstance(event, PongReceived) and event.payload == READY:
                            self._ready += 1
                            limiter.release_on_behalf_of(number)
                            self._changed.set()
                            self._changed = trio.Event()
                frames = conn.data_to_send()
                if frames:
                    await ws.send_messages(frames)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
