"""The agent: one websocket to the hub, requests forwarded to declared targets.

Theory of operation
-------------------
:meth:`Agent.run` loops for ever: dial the hub (through the proxy if one is
configured), open the websocket, run one session, and when the session ends
wait a full-jitter exponential backoff (1 s doubling to 60 s, reset once a
session stayed up for a minute) and start again. A refusal that retrying
cannot fix (unknown service_id, proxy credentials refused, hub certificate
rejected) is logged once and retried slowly, every 5 minutes.

Inside a session every request the hub sends becomes one task in the
session's nursery. Before anything else, the task asks the target policy
(:func:`._policy.decide`) whether the request may go, and the agent's
concurrency limits whether it may go now; a refusal is a typed RESET sent at
once, and nothing is dialled. When the head announces the body's length
(``Hub.request`` always does), :func:`._forward.forward` dials at once and
writes the body to the target as its frames arrive, crediting the hub no
further ahead of its writes than a bound (:mod:`._agent_body`); a body that
is all there when the task starts (a small one usually is) is written with
the head instead. Without that announcement the body is collected first (it
is bounded at 1 MiB). Either way the answer streams back chunk by chunk as
the hub's flow-control windows allow. Each session keeps a
:class:`._forward_pool.ConnectionPool`, so that requests to a target reuse
kept-alive connections instead of dialling every time.

:meth:`Agent.drain` stops taking requests (GOAWAY to the hub), lets the ones
in flight finish within the grace period, then closes the session and makes
:meth:`Agent.run` return.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import attrs
import trio

from ._agent_body import StreamedBody, announced_length
from ._config import AgentConfig, ensure_state_dir, redact_url
from ._dial import HubConnectError, hub_ssl_context, open_hub_stream, open_hub_websocket
from ._errors import (
    AuthenticationFailed,
    Draining,
    HandshakeError,
    Overloaded,
    RequestError,
    RequestTooLarge,
    StreamErrorCode,
    TimeoutBeforeSending,
)
from ._events import (
    DataReceived,
    Event,
    GoAwayReceived,
    HandshakeComplete,
    InfoReceived,
    RequestHead,
    RequestReceived,
    ResponseHead,
    StreamEnded,
    StreamReset,
)
from ._forward import CHUNK_SIZE, ConnectionPool, ForwardLimits, forward
from ._frames import MAX_FRAME_LENGTH
from ._link import CLOSE_GOING_AWAY, Link, LinkClosed
from ._mux import Connection, ConnectionState, Role
from ._policy import Refusal, Target, decide
from ._version import __version__
from ._websocket import WebSocket

logger = logging.getLogger("trustelem_relay.agent")

#: Bytes read from the websocket at once; the 4 KiB default is slow.
RECEIVE_BUFFER = 256 * 1024


@attrs.frozen
class AgentSettings:
    """Timings and limits of the agent; the defaults are DESIGN §8's."""

    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 10.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    #: A session that lasted this long resets the backoff.
    backoff_reset_after: float = 60.0
    #: Delay between attempts after a refusal retrying cannot fix.
    permanent_failure_delay: float = 300.0
    handshake_timeout: float = 15.0
    max_in_flight: int = 64
    drain_grace: float = 30.0
    #: How often the status file is refreshed while requests come and go.
    status_interval: float = 1.0
    forward: ForwardLimits = attrs.field(factory=ForwardLimits)


@attrs.define
class AgentStatus:
    """What ``trustelem-relay status`` shows, kept in ``state_dir``."""

    connected: bool = False
    since: str | None = None
    hub: str = ""
    last_error: str | None = None
    in_flight: int = 0
    pid: int = attrs.field(factory=os.getpid)
    draining: bool = False
    updated: str = ""


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Exchange:
    """One request being forwarded; also the forwarder's response sink."""

    def __init__(
        self, link: Link, stream_id: int, request_id: str, target: Target
    ) -> None:
        self.link = link
        self.stream_id = stream_id
        self.request_id = request_id
        self.target = target
        # The request body's chunks, joined once when complete; unused when
        # the body is streamed instead.
        self.body: list[bytes] = []
        self.streamed: StreamedBody | None = None
        self.size = 0
        self.body_complete = trio.Event()
        self.scope = trio.CancelScope()
        self.too_large = False
        # The last chunk of the answer's body so far, sent when more comes
        # or with the end, so that the last frame carries END_STREAM.
        self.held = b""

    async def send_head(self, head: ResponseHead) -> None:
        # Not flushed: the head leaves with the first DATA frame (or any
        # other frame flushed meanwhile), in one write. The hub hands its
        # caller whole answers, so an earlier head would gain nothing.
        self.link.conn.send_response(self.stream_id, head)

    async def send_data(self, data: bytes) -> None:
        # One read of the target's answer, cut into chunks of a frame: all
        # but the last are sealed now, with the chunk held before, and
        # leave in one write from this task (a hop through the link's
        # writer cost a wake-up and two lock checkpoints per read). When
        # nothing is sealed, nothing is flushed: a small answer's head
        # waits to leave with its one DATA frame, in one write.
        if len(data) <= CHUNK_SIZE:
            chunks = [data]
        else:
            view = memoryview(data)
            chunks = [
                bytes(view[start : start + CHUNK_SIZE])
                for start in range(0, len(data), CHUNK_SIZE)
            ]
        sealing = bool(self.held) or len(chunks) > 1
        if self.held:
            await self._send(self.held, end=False)
        for chunk in chunks[:-1]:
            await self._send(chunk, end=False)
        self.held = chunks[-1]
        if sealing:
            self.link.flush(whole=True)

    async def finish(self) -> None:
        """End the answer: what is held goes out with END_STREAM."""
        held, self.held = self.held, b""
        await self._send(held, end=True)
        self.link.flush(whole=True)

    async def _send(self, data: bytes, *, end: bool) -> None:
        """Seal ``data`` in DATA frames as credit allows; the caller flushes.

        Frames sealed before a wait for credit leave before it.
        """
        view = memoryview(data)
        while view or end:
            if view and not self.link.conn.send_window(self.stream_id):
                self.link.flush(whole=True)
            window = await self.link.wait_send_window(self.stream_id) if view else 0
            # The data as it is when it fits whole; a copy of a slice if not.
            whole = len(view) == len(data) <= window
            chunk = data if whole else bytes(view[:window])
            view = view[len(chunk) :]
            last = end and not view
            self.link.conn.send_data(self.stream_id, chunk, end_stream=last)
            if last:
                return


class Agent:
    """The connector. Build it from an :class:`AgentConfig`, then
    ``await nursery.start(agent.run)``: that returns once the first session
    is up, and the agent keeps (re)connecting until drained or cancelled."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        settings: AgentSettings | None = None,
    ) -> None:
        self.config = config
        self.settings = settings or AgentSettings()
        self.state_dir = ensure_state_dir(config.state_dir)
        self.agent_id = self._load_agent_id()
        self.status = AgentStatus(hub=redact_url(config.hub))
        self._hub_ssl = (
            hub_ssl_context(config.hub_ca_file)
            if config.hub.startswith("wss://")
            else None
        )
        self._link: Link | None = None
        self._exchanges: dict[int, _Exchange] = {}
        self._per_target: dict[str, int] = {}
        self._draining = False
        self._drained = trio.Event()
        self._status_dirty = trio.Event()
        self._session_nursery: trio.Nursery | None = None
        # Kept-alive connections to targets, one pool per session.
        self._pool: ConnectionPool | None = None
        self._session_tag = "-"
        self._first_up: trio.TaskStatus[None] | None = None

    def __repr__(self) -> str:
        return f"<Agent {self.agent_id} hub={self.status.hub}>"

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` was called."""
        return self._draining

    @property
    def in_flight(self) -> int:
        """Requests being forwarded now."""
        return len(self._exchanges)

    # ------------------------------------------------------------------
    # State directory

    def _load_agent_id(self) -> str:
        # A stable id lets the hub replace this agent's stale session at once
        # when it reconnects. It is not a secret.
        path = self.state_dir / "agent_id"
        try:
            text = path.read_text().strip()
            if text:
                return text
        except FileNotFoundError:
            pass
        agent_id = secrets.token_hex(8)
        self._write_file(path, agent_id + "\n")
        return agent_id

    def _write_file(self, path: Path, text: str) -> None:
        fd, temp = tempfile.mkstemp(dir=self.state_dir, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def _write_status(self) -> None:
        self.status.in_flight = len(self._exchanges)
        self.status.draining = self._draining
        self.status.updated = _now_text()
        try:
            self._write_file(
                self.state_dir / "status.json", json.dumps(attrs.asdict(self.status))
            )
        except OSError as exc:
            logger.warning("cannot write the status file: %s", exc)

    def _status_changed(self) -> None:
        self._status_dirty.set()

    async def _status_writer(self) -> None:
        while True:
            await self._status_dirty.wait()
            self._status_dirty = trio.Event()
            self._write_status()
            await trio.sleep(self.settings.status_interval)

    # ------------------------------------------------------------------
    # The reconnect loop

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep a session to the hub until :meth:`drain` finishes."""
        self._first_up = task_status
        settings = self.settings
        attempt = 0
        logger.info(
            "agent %s starting: hub %s, %d target(s)",
            self.agent_id,
            self.status.hub,
            len(self.config.targets),
        )
        self._write_status()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._status_writer)
            # Checked again after each backoff: drain() may come during it.
            while not self._drained.is_set():
                started = trio.current_time()
                permanent = await self._one_session()
                self.status.connected = False
                self._status_changed()
                if self._draining:
                    break
                if trio.current_time() - started >= settings.backoff_reset_after:
                    attempt = 0
                if permanent:
                    delay = settings.permanent_failure_delay
                else:
                    ceiling = min(
                        settings.backoff_max, settings.backoff_initial * 2**attempt
                    )
                    delay = random.uniform(0, ceiling)
                    attempt += 1
                logger.info("reconnecting in %.1f s", delay)
                with trio.move_on_after(delay):
                    await self._drained.wait()
            self._write_status()
            nursery.cancel_scope.cancel()
        logger.info("agent %s stopped", self.agent_id)

    def _fail(self, message: str, *, permanent: bool) -> bool:
        # A permanent failure is said once, not on every slow retry.
        if permanent and self.status.last_error == message:
            logger.debug("still failing: %s", message)
        else:
            log = logger.error if permanent else logger.warning
            log("%s", message)
        self.status.last_error = message
        self._status_changed()
        return permanent

    async def _one_session(self) -> bool:
        """Run one session; return True if the failure is permanent."""
        config = self.config
        try:
            stream = await open_hub_stream(
                config.hub,
                proxy=config.proxy,
                ssl_context=self._hub_ssl,
                pin_sha256=config.hub_pin_sha256,
            )
        except HubConnectError as exc:
            return self._fail(f"cannot reach the hub: {exc}", permanent=exc.permanent)

        try:
            ws = await open_hub_websocket(
                None,
                stream,
                config.hub,
                max_message_size=MAX_FRAME_LENGTH + 4,
                receive_buffer_size=RECEIVE_BUFFER,
            )
        except HubConnectError as exc:
            return self._fail(
                f"the hub refused the websocket: {exc}", permanent=exc.permanent
            )
        try:
            return await self._run_link(ws)
        finally:
            # The link closes the websocket; this covers a failure before.
            await trio.aclose_forcefully(stream)

    async def _run_link(self, ws: WebSocket) -> bool:
        conn = Connection(
            Role.AGENT, service_id=self.config.service_id, clock=trio.current_time
        )
        link = Link(
            conn,
            ws,
            on_event=self._on_event,
            log=logging.LoggerAdapter(logger, {}),
        )
        self._link = link
        self._session_tag = "-"
        settings = self.settings
        link.flush()
        if self._draining:
            # drain() came while the websocket was opening: no new session.
            link.close("agent drained", CLOSE_GOING_AWAY)

        async with ConnectionPool() as pool, trio.open_nursery() as session:
            self._session_nursery = session
            self._pool = pool

            async def handshake_deadline() -> None:
                await trio.sleep(settings.handshake_timeout)
                if conn.state is ConnectionState.HANDSHAKE:
                    link.close("the hub did not finish the handshake in time")

            session.start_soon(handshake_deadline)
            reason = await link.run(
                heartbeat=(settings.heartbeat_interval, settings.heartbeat_timeout)
            )
            session.cancel_scope.cancel()
        self._link = None
        self._session_nursery = None
        self._pool = None
        for exchange in self._exchanges.values():
            exchange.scope.cancel()

        if isinstance(link.error, HandshakeError):
            permanent = isinstance(link.error, AuthenticationFailed)
            return self._fail(f"handshake failed: {link.error}", permanent=permanent)
        if not self._draining:
            self._fail(f"session ended: {reason}", permanent=False)
        return False

    # ------------------------------------------------------------------
    # Events

    def _on_event(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            self._on_data(event)
        elif isinstance(event, StreamEnded):
            exchange = self._exchanges.get(event.stream_id)
            if exchange is not None and exchange.streamed is not None:
                exchange.streamed.end()
            elif exchange is not None:
                exchange.body_complete.set()
        elif isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, StreamReset):
            exchange = self._exchanges.get(event.stream_id)
            if exchange is not None:
                logger.info("[%s] cancelled by the hub", exchange.request_id)
                exchange.scope.cancel()
        elif isinstance(event, HandshakeComplete):
            self._on_handshake(event)
        elif isinstance(event, InfoReceived):
            session = event.info.get("session")
            if isinstance(session, str) and session.isalnum() and len(session) <= 16:
                self._session_tag = session
        elif isinstance(event, GoAwayReceived):
            logger.info("the hub is going away: %s", event.reason or "no reason")

    def _on_handshake(self, event: HandshakeComplete) -> None:
        link = self._link
        assert link is not None
        link.conn.send_info(
            {
                "agent_id": self.agent_id,
                "version": __version__,
                "hostname": socket.gethostname(),
                "targets": list(self.config.targets),
            }
        )
        link.flush()
        self.status.connected = True
        self.status.since = _now_text()
        self.status.last_error = None
        self._status_changed()
        logger.info(
            "connected to %s (protocol %d, service %s)",
            self.status.hub,
            event.version,
            event.lookup_id[:8],
        )
        if self._first_up is not None:
            self._first_up.started()
            self._first_up = None

    def _refuse(self, stream_id: int, error: RequestError | Refusal) -> None:
        link = self._link
        assert link is not None
        if isinstance(error, Refusal):
            code, message, reached = error.code, error.message, False
        else:
            code, message = error.code, str(error)
            reached = error.may_have_reached_target
        link.conn.reset_stream(
            stream_id, code, message, may_have_reached_target=reached
        )

    def _on_request(self, event: RequestReceived) -> None:
        link = self._link
        assert link is not None
        assert self._session_nursery is not None
        stream_id = event.stream_id
        request_id = f"{self._session_tag}.{stream_id}"

        # The policy first: an undeclared name is refused before any lookup.
        decision = decide(self.config.targets, event.target, event.head)
        if isinstance(decision, Refusal):
            logger.warning(
                "[%s] refused %s %r: %s",
                request_id,
                event.head.method,
                event.target,
                decision.message,
            )
            self._refuse(stream_id, decision)
            return
        target = decision
        refusal: RequestError | None = None
        if self._draining:
            refusal = Draining("the agent is draining")
        elif len(self._exchanges) >= self.settings.max_in_flight:
            refusal = Overloaded(
                f"{self.settings.max_in_flight} requests already in flight"
            )
        elif self._per_target.get(target.name, 0) >= target.max_concurrent:
            refusal = Overloaded(
                f"target {target.name} already has {target.max_concurrent} "
                "requests in flight"
            )
        if refusal is not None:
            logger.warning("[%s] refused: %s", request_id, refusal)
            self._refuse(stream_id, refusal)
            return

        exchange = _Exchange(link, stream_id, request_id, target)
        self._exchanges[stream_id] = exchange
        self._per_target[target.name] = self._per_target.get(target.name, 0) + 1
        if event.end_stream:
            exchange.body_complete.set()
        else:
            length = announced_length(event.head)
            if length is not None:
                exchange.streamed = StreamedBody(link, stream_id, length)
        self._status_changed()
        self._session_nursery.start_soon(self._serve, exchange, event.head)

    def _on_data(self, event: DataReceived) -> None:
        exchange = self._exchanges.get(event.stream_id)
        if exchange is not None and exchange.streamed is not None:
            # The body credits it when its bound allows, maybe not now.
            exchange.streamed.feed(event.data)
            return
        link = self._link
        assert link is not None
        link.conn.acknowledge_data(event.stream_id, len(event.data))
        if exchange is None or exchange.too_large:
            return
        exchange.body.append(event.data)
        exchange.size += len(event.data)
        if exchange.size > self.settings.forward.max_request_body:
            exchange.too_large = True
            exchange.body = []
            exchange.body_complete.set()

    # ------------------------------------------------------------------
    # Forwarding one request

    async def _serve(self, exchange: _Exchange, head: RequestHead) -> None:
        link = exchange.link
        conn = link.conn
        stream_id = exchange.stream_id
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "[%s] %s %s to target %s",
                exchange.request_id,
                head.method,
                head.path.split("?", 1)[0],
                exchange.target.name,
            )
        try:
            with exchange.scope:
                # One deadline for the whole request, body wait included.
                timeout = exchange.target.timeout
                if head.timeout is not None:
                    timeout = min(timeout, head.timeout)
                body: bytes | StreamedBody
                if exchange.streamed is not None:
                    # An announced length over the limit is refused by
                    # forward, which checks it before dialling. A body
                    # that is all here already goes whole, with the head.
                    whole = exchange.streamed.take_whole()
                    body = exchange.streamed if whole is None else whole
                    remaining = max(0.001, timeout)
                else:
                    body, remaining = await self._collect_body(exchange, timeout)
                if remaining != timeout:
                    # forward takes the smaller of the head's and the
                    # target's timeouts itself; only the body's wait (or
                    # the 1 ms floor) needs a new head.
                    head = attrs.evolve(head, timeout=remaining)
                await forward(
                    exchange.target,
                    head,
                    body,
                    exchange,
                    limits=self.settings.forward,
                    request_id=exchange.request_id,
                    pool=self._pool,
                )
                if conn.stream_state(stream_id) is not None:
                    await exchange.finish()
            if exchange.scope.cancelled_caught and not link.is_closed:
                # Cancelled by the hub, or the session is going away.
                logger.debug("[%s] abandoned", exchange.request_id)
        except RequestError as exc:
            if not exc.request_id:
                exc.request_id = exchange.request_id
            logger.info("[%s] failed: %s", exchange.request_id, exc)
            if link.is_open and conn.stream_state(stream_id) is not None:
                conn.reset_stream(
                    stream_id,
                    exc.code,
                    str(exc),
                    may_have_reached_target=exc.may_have_reached_target,
                )
        except LinkClosed:
            logger.info("[%s] lost with the session", exchange.request_id)
        except Exception:
            logger.exception("[%s] failed unexpectedly", exchange.request_id)
            if link.is_open and conn.stream_state(stream_id) is not None:
                conn.reset_stream(
                    stream_id,
                    StreamErrorCode.INTERNAL_ERROR,
                    "the agent failed unexpectedly",
                )
        finally:
            self._exchanges.pop(stream_id, None)
            name = exchange.target.name
            self._per_target[name] -= 1
            link.flush()
            self._status_changed()
            if self._draining and not self._exchanges:
                self._drained.set()

    async def _collect_body(
        self, exchange: _Exchange, timeout: float
    ) -> tuple[bytes, float]:
        """Wait for the whole of a body whose length was not announced;
        return it and the seconds left of *timeout*."""
        remaining = max(0.001, timeout)
        if not exchange.body_complete.is_set():
            deadline = trio.current_time() + timeout
            with trio.move_on_at(deadline) as body_wait:
                await exchange.body_complete.wait()
            if body_wait.cancelled_caught:
                raise TimeoutBeforeSending("the request body did not arrive in time")
            remaining = max(0.001, deadline - trio.current_time())
        if exchange.too_large:
            raise RequestTooLarge(
                "the request body is over "
                f"{self.settings.forward.max_request_body} bytes"
            )
        body, exchange.body = b"".join(exchange.body), []
        return body, remaining

    # ------------------------------------------------------------------
    # Draining

    async def drain(self) -> None:
        """Take no new requests, finish those in flight, then stop.

        Returns when :meth:`run` is about to return, or after the grace
        period, when the requests still running are cancelled.
        """
        if self._draining:
            return
        self._draining = True
        self._status_changed()
        link = self._link
        logger.info(
            "draining: %d request(s) in flight, %g s grace",
            len(self._exchanges),
            self.settings.drain_grace,
        )
        if link is not None and link.is_open:
            link.conn.go_away("agent draining")
            link.flush()
        if not self._exchanges:
            self._drained.set()
        with trio.move_on_after(self.settings.drain_grace):
            await self._drained.wait()
        for exchange in list(self._exchanges.values()):
            exchange.scope.cancel()
        self._drained.set()
        if link is not None:
            # The last answers (and GOAWAY) may still be queued: closing
            # stops the writer, so let them out first, within a deadline.
            with trio.move_on_after(self.settings.heartbeat_timeout):
                await link.wait_written()
            link.close("agent drained", CLOSE_GOING_AWAY)
