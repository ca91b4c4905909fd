"""The hub leg of ``trustelem-relay doctor``: proxy, TCP, TLS, websocket,
relay handshake.

Theory of operation
-------------------

:meth:`HubChecks.check_hub` opens the leg the way the agent does, one step
at a time, and stops at the first failure, since each step rides on the one
before: the proxy's TCP port and its ``CONNECT`` tunnel when a proxy is set,
else TCP to the hub; TLS on its own for a ``wss://`` hub (the stream is
opened for the same URL with ``ws://`` so that TLS can be checked apart);
the websocket upgrade; then HELLO, WELCOME, CONFIRM with an agent-role
:class:`~._mux.Connection`, and a PING whose PONG proves the hub accepted
the CONFIRM. The websocket is closed with code 1000; the doctor never sends
INFO, so the hub never lists it as an agent.
"""

from __future__ import annotations

import time
import urllib.parse

import trio

from ._config import AgentConfig, redact_url
from ._dial import HubConnectError, hub_ssl_context, open_hub_stream, open_hub_websocket
from ._doctor_report import (
    _READ_SIZE,
    _authority,
    _bounded,
    _certificate,
    _connect_reason,
    _Failed,
    _ms,
    _Report,
    _tls_handshake,
)
from ._errors import (
    AuthenticationFailed,
    ConfigError,
    HandshakeError,
    RemoteProtocolError,
    VersionMismatch,
)
from ._events import HandshakeComplete, PongReceived
from ._frames import MAX_FRAME_LENGTH
from ._link import CLOSE_NORMAL
from ._mux import Connection, Role
from ._websocket import ConnectionClosed, WebSocket

__all__ = ["HubChecks"]

_PING = b"doctor"
_DEFAULT_PORTS = {"ws": 80, "wss": 443}


class HubChecks:
    """The checks of the hub leg, in the order the agent meets them."""

    def __init__(self, report: _Report, *, timeout: float) -> None:
        self.report = report
        self.timeout = timeout

    async def check_hub(self, config: AgentConfig) -> None:
        parts = urllib.parse.urlsplit(config.hub)
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 443)
        authority = _authority(host, port)
        resource = parts.path or "/"
        if parts.query:
            resource += f"?{parts.query}"
        # The same URL without TLS: open_hub_stream then stops at the raw
        # connection (or the proxy's tunnel), and TLS is checked on its own.
        plain_url = f"ws://{authority}{resource}"

        try:
            stream = await self._hub_stream(config, plain_url, authority)
        except _Failed:
            return
        if parts.scheme == "wss":
            check = "hub TLS"
            try:
                with _bounded(self.timeout, f"during the TLS handshake with {host}"):
                    stream = await _tls_handshake(
                        stream, hub_ssl_context(config.hub_ca_file), host
                    )
                outcome, detail = _certificate(
                    stream, config.hub_pin_sha256, verified=True
                )
            except (_Failed, ConfigError) as exc:
                await trio.aclose_forcefully(stream)
                self.report.fail(check, str(exc))
                return
            self.report.line(outcome, check, detail)

        try:
            ws = await open_hub_websocket(
                None,
                stream,
                config.hub,
                max_message_size=MAX_FRAME_LENGTH + 4,
                receive_buffer_size=_READ_SIZE,
                handshake_timeout=self.timeout,
            )
        except HubConnectError as exc:
            self.report.fail("hub websocket", str(exc))
            return
        self.report.ok("hub websocket", f"upgrade of {resource} accepted")
        try:
            await self._handshake(ws, config.service_id)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await ws.aclose(CLOSE_NORMAL, "doctor finished")

    async def _hub_stream(
        self, config: AgentConfig, plain_url: str, authority: str
    ) -> trio.abc.Stream:
        """TCP to the hub, or the tunnel through the proxy; report each."""
        proxy = config.proxy
        if proxy is None:
            check = "hub TCP"
        else:
            check = "proxy CONNECT"
            await self._check_proxy_tcp(proxy)
        started = time.perf_counter()
        try:
            stream = await open_hub_stream(
                plain_url,
                proxy=proxy,
                proxy_ssl_context=hub_ssl_context(config.hub_ca_file),
                connect_timeout=self.timeout,
            )
        except (HubConnectError, ConfigError) as exc:
            self.report.fail(check, str(exc))
            raise _Failed(str(exc)) from None
        if proxy is None:
            self.report.ok(check, f"connected to {authority} in {_ms(started)}")
        else:
            self.report.ok(check, f"tunnel to {authority} open in {_ms(started)}")
        return stream

    async def _check_proxy_tcp(self, proxy: str) -> None:
        check, shown = "proxy", redact_url(proxy)
        parts = urllib.parse.urlsplit(proxy)
        started = time.perf_counter()
        try:
            with _bounded(self.timeout, f"connecting to the proxy {shown}"):
                stream = await trio.open_tcp_stream(
                    parts.hostname or "", parts.port or 0
                )
        except (_Failed, OSError, ValueError) as exc:
            detail = str(exc) if isinstance(exc, _Failed) else _connect_reason(exc)
            self.report.fail(check, f"cannot connect to {shown}: {detail}")
            raise _Failed(detail) from None
        await stream.aclose()
        self.report.ok(check, f"{shown} reachable in {_ms(started)}")

    async def _handshake(self, ws: WebSocket, service_id: str) -> None:
        """HELLO, WELCOME, CONFIRM, then a PING the hub must answer."""
        check = "hub handshake"
        conn = Connection(Role.AGENT, service_id=service_id, clock=trio.current_time)
        complete: HandshakeComplete | None = None
        answered = False
        started = time.perf_counter()
        try:
            with _bounded(self.timeout, "from the hub during the relay handshake"):
                while not answered:
                    frames = conn.data_to_send()
                    if frames:
                        await ws.send_messages(frames)
                    for message in await ws.receive_messages():
                        for event in conn.receive_message(message):
                            if isinstance(event, HandshakeComplete):
                                # Only a hub that accepted CONFIRM answers this.
                                complete = event
                                conn.ping(_PING)
                            elif isinstance(event, PongReceived):
                                answered = complete is not None
        except _Failed as exc:
            self.report.fail(check, str(exc))
            return
        except AuthenticationFailed as exc:
            self.report.fail(check, f"authentication failed: {exc}")
            return
        except VersionMismatch as exc:
            self.report.fail(check, f"protocol version mismatch: {exc}")
            return
        except (HandshakeError, RemoteProtocolError) as exc:
            self.report.fail(check, f"{type(exc).__name__}: {exc}")
            return
        except ConnectionClosed as exc:
            said = f" ({exc.code} {exc.reason})".replace(" )", ")")
            stage = "after CONFIRM" if complete is not None else "before WELCOME"
            self.report.fail(
                check,
                f"the hub closed the websocket {stage}{said}: the service_id may be"
                " wrong or rotated, or the hub refused this agent",
            )
            return
        assert complete is not None
        self.report.ok(
            check,
            f"HELLO, WELCOME, CONFIRM in {_ms(started)}: protocol {complete.version},"
            f" service lookup {complete.lookup_id[:12]}; the hub and this agent"
            " hold the same service_id",
        )
