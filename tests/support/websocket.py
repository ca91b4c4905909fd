"""A small websocket server standing in for the hub in connection tests.

Built on ``trio_websocket.serve_websocket`` on 127.0.0.1, plain or TLS. It
records the path of every upgrade request it receives,
echoes every message back, and can be told to refuse upgrades with a given
HTTP status. It knows nothing of the relay protocol: it proves that bytes
reach the hub and come back, nothing more.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio
import trio_websocket

from .ports import LOOPBACK


@dataclass(frozen=True)
class UpgradeRecord:
    """One websocket upgrade request the server received."""

    path: str


class EchoWebsocketServer:
    """Echoes messages; start with ``port = await nursery.start(server.serve)``."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        #: When set, upgrades are refused with this HTTP status.
        self.reject_with: int | None = None
        self.upgrades: list[UpgradeRecord] = []
        self.port: int | None = None

    def url(self, host: str = LOOPBACK, path: str = "/v1/connect") -> str:
        """The URL of the server under ``host`` (which must map to 127.0.0.1)."""
        scheme = "ws" if self.ssl_context is None else "wss"
        return f"{scheme}://{host}:{self.port}{path}"

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; report the port to ``start``."""
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket,
                self._handle,
                LOOPBACK,
                0,
                self.ssl_context,
            )
            self.port = server.port
            task_status.started(server.port)

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        self.upgrades.append(UpgradeRecord(request.path))
        if self.reject_with is not None:
            await request.reject(self.reject_with, body=b"no websocket for you")
            return
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            pass
