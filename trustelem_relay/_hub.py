"""The hub: accepts agents' websockets and relays requests through them.

Theory of operation
-------------------
:meth:`Hub.serve` listens for agents. Each websocket runs one
:class:`._mux.Connection` in hub role inside a :class:`._link.Link`; the
handshake resolves the agent's lookup id through the store, and once the
agent has described itself (INFO) the session joins the *registry*: the
live sessions of each service. A new session from an agent id that already
has one replaces the old one at once (the old one is a stale leftover of a
connection that died without a goodbye).

:meth:`Hub.request` picks the least busy live session of the service that is
not draining, opens a stream, sends the body as the flow-control windows
allow and waits for the answer. Every failure is a
:class:`~._errors.RequestError` that says whether the target may have seen
the request. When a session dies before the REQUEST frame left this process,
nothing reached anyone, and an idempotent request is tried once more on
another session; a POST or PATCH never is.

A watcher polls the store so that a service rotated or deleted from another
process (``hub rotate-service``) has its live sessions closed within
``rotation_poll`` seconds. Another ends the requests whose answer has not
come by their deadline: one task for all of them, not a cancel scope with
a deadline per request, which cost a tenth of the hub's CPU per small
request (see :meth:`Hub._expire_requests`).
"""

from __future__ import annotations

import functools
import logging
import math
import ssl
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

import trio

from ._errors import (
    AgentUnavailable,
    ConfigError,
    LocalProtocolError,
    Overloaded,
    RequestError,
    RequestTooLarge,
    SessionLost,
    StreamErrorCode,
    TimeoutAfterSending,
    TimeoutBeforeSending,
)
from ._events import (
    RequestHead,
)
from ._frames import MAX_FRAME_LENGTH
from ._hub_session import AgentInfo, Pending, Response, ServiceInfo, Session
from ._hubconfig import HubLimits
from ._hubstore import AgentSession, HubStore, MemoryStore, SQLiteStore
from ._keys import lookup_id, validate_service_id
from ._link import CLOSE_REPLACED, CLOSE_ROTATED, Link, LinkClosed
from ._mux import Connection, ConnectionState, Role
from ._netstream import NetStream
from ._websocket import WebSocket, accept

logger = logging.getLogger("trustelem_relay.hub")

#: Service ids whose lookup id the hub remembers (see Hub._service_name).
_MAX_LOOKUPS = 64

#: Methods that may be retried when nothing left the hub.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class Hub:
    """The identity service's side of the relay; see the module docstring.

    ``store`` is a :class:`HubStore`, a path to a SQLite file, or None for
    an in-memory store.
    """

    def __init__(
        self,
        store: HubStore | str | Path | None = None,
        *,
        limits: HubLimits | None = None,
        path: str = "/v1/connect",
        handshake_timeout: float = 15.0,
        rotation_poll: float = 2.0,
    ) -> None:
        if store is None:
            store = MemoryStore()
        elif isinstance(store, str | Path):
            store = MemoryStore() if str(store) == ":memory:" else SQLiteStore(store)
        self.store: HubStore = store
        self.limits = limits or HubLimits()
        self.path = path
        self.handshake_timeout = handshake_timeout
        self.rotation_poll = rotation_poll
        self._registry: dict[str, list[Session]] = {}
        # service_id -> lookup id: a keyed hash, computed once per id. The
        # store is still asked on every request (rotations must show).
        self._lookups: dict[str, bytes] = {}
        # Set on every change of the registry (or of a session's requests),
        # then dropped; made only when a task waits, since most changes are
        # requests starting and finishing with nobody waiting.
        self._changed_event: trio.Event | None = None
        # Requests waiting for their answer under the deadline watcher
        # (see _expire_requests), and the earliest time it will look at
        # them; _expiry_wake is None while no watcher runs.
        self._waiting: set[Pending] = set()
        self._next_expiry = math.inf
        self._expiry_wake: trio.Event | None = None

    def __repr__(self) -> str:
        live = sum(len(s) for s in self._registry.values())
        return f"<Hub {live} agent session(s)>"

    # ------------------------------------------------------------------
    # Services

    def create_service(self, name: str) -> ServiceInfo:
        """Create a service; the returned ``service_id`` is shown only now."""
        service, service_id = self.store.create_service(name)
        return ServiceInfo(service.name, service_id)

    def rotate_service(self, name: str) -> ServiceInfo:
        """Issue a new service_id and close the sessions of the old one."""
        service, service_id = self.store.rotate_service(name)
        self._close_service(name, "service_id rotated", CLOSE_ROTATED)
        return ServiceInfo(service.name, service_id)

    def agents(self, service_id: str) -> list[AgentInfo]:
        """The agents connected for a service, ready or not."""
        name = self._service_name(service_id)
        return [s.info() for s in self._registry.get(name, []) if s.ready]

    def _service_name(self, service_id: str) -> str:
        lookup = self._lookups.get(service_id)
        if lookup is None:
            validate_service_id(service_id)
            lookup = lookup_id(service_id)
            if len(self._lookups) >= _MAX_LOOKUPS:
                self._lookups.clear()
            self._lookups[service_id] = lookup
        keys = self.store.resolve_lookup(lookup)
        if keys is None:
            raise ConfigError("no service has this service_id (rotated or deleted?)")
        return keys.service_name

    def _close_service(self, name: str, reason: str, code: int) -> None:
        for session in list(self._registry.get(name, [])):
            logger.info("[%s] closing: %s", session.session_id, reason)
            session.link.close(reason, code)

    def _changed(self) -> None:
        event = self._changed_event
        if event is not None:
            self._changed_event = None
            event.set()

    async def _wait_changed(self) -> None:
        """Wait for the next change of the registry or of a session's
        requests; the caller re-checks what it waits for."""
        if self._changed_event is None:
            self._changed_event = trio.Event()
        await self._changed_event.wait()

    # ------------------------------------------------------------------
    # The registry

    def _register(self, session: Session, info: dict[str, object]) -> None:
        if session.ready or session.keys is None:
            return
        session.agent_id = _text(info.get("agent_id"), 32) or session.session_id
        session.version = _text(info.get("version"), 32)
        session.hostname = _text(info.get("hostname"), 255)
        targets = info.get("targets")
        if isinstance(targets, list):
            session.targets = tuple(_text(t, 63) for t in targets[:256])
        name = session.keys.service_name

        # A new session of the same agent replaces its stale one at once.
        sessions = self._registry.setdefault(name, [])
        for old in list(sessions):
            if old.agent_id == session.agent_id:
                logger.info(
                    "[%s] replaced by session %s of the same agent",
                    old.session_id,
                    session.session_id,
                )
                sessions.remove(old)
                old.link.close("replaced by a new session", CLOSE_REPLACED)
        sessions.append(session)
        session.ready = True
        self.store.record_session(
            AgentSession(
                session_id=session.session_id,
                service_name=name,
                agent_id=session.agent_id,
                version=session.version,
                hostname=session.hostname,
                targets=session.targets,
                since=session.since,
                peer=session.peer,
            )
        )
        logger.info(
            "[%s] agent %s (%s, version %s) connected for service %s from %s",
            session.session_id,
            session.agent_id,
            session.hostname,
            session.version,
            name,
            session.peer,
        )
        self._changed()

    def _unregister(self, session: Session, reason: str) -> None:
        sessions = self._registry.get(session.service_name, [])
        if session in sessions:
            sessions.remove(session)
        if session.ready:
            self.store.remove_session(session.session_id)
            logger.info(
                "[%s] agent %s disconnected: %s",
                session.session_id,
                session.agent_id,
                reason,
            )
        session.fail_all(reason)
        self._changed()

    async def wait_agent(self, service_id: str, timeout: float = 10) -> AgentInfo:
        """Wait until an agent of the service is connected and ready."""
        name = self._service_name(service_id)
        with trio.move_on_after(timeout):
            while True:
                for session in self._registry.get(name, []):
                    if session.usable():
                        return session.info()
                await self._wait_changed()
        raise AgentUnavailable(
            f"no agent of service {name} connected within {timeout:g} s"
        )

    # ------------------------------------------------------------------
    # Serving agents

    async def serve(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen for agents on ``host:port``; report the bound port."""
        self.store.clear_sessions()
        async with trio.open_nursery() as nursery:
            # TLS is the session's own NetStream, not an SSLListener, so
            # that frames can leave at once (see _netstream).
            listeners: list[trio.SocketListener] = await nursery.start(
                functools.partial(
                    trio.serve_tcp,
                    functools.partial(self._handle, ssl_context=ssl_context),
                    port,
                    host=host,
                )
            )
            bound = _listener_port(listeners[0])
            nursery.start_soon(self._watch_rotation)
            if self._expiry_wake is None:
                # Set now, so that a second serve starts no second watcher.
                self._expiry_wake = trio.Event()
                nursery.start_soon(self._expire_requests)
            logger.info(
                "hub listening for agents on %s:%d%s (%s)",
                host,
                bound,
                self.path,
                "wss" if ssl_context else "ws",
            )
            task_status.started(bound)

    async def _handle(
        self, tcp: trio.SocketStream, *, ssl_context: ssl.SSLContext | None
    ) -> None:
        # The TLS handshake runs on the first read, inside accept's timeout.
        stream = NetStream(tcp, ssl_context=ssl_context, server_side=True)
        try:
            ws = await accept(
                stream,
                path=self.path,
                max_message_size=MAX_FRAME_LENGTH + 4,
                timeout=self.handshake_timeout,
            )
            if ws is not None:
                try:
                    await self._run_session(ws, ws.remote)
                finally:
                    await ws.aclose()
        finally:
            await trio.aclose_forcefully(stream)

    async def _run_session(self, ws: WebSocket, peer: str) -> None:
        session: Session

        def resolve(lookup: bytes) -> bytes | None:
            keys = self.store.resolve_lookup(lookup)
            session.keys = keys
            return None if keys is None else keys.psk

        conn = Connection(Role.HUB, resolve=resolve, clock=trio.current_time)
        link = Link(
            conn,
            ws,
            on_event=lambda event: session.on_event(event),
            log=logging.LoggerAdapter(logger, {}),
        )
        session = Session(link, peer, on_change=self._changed, on_info=self._register)
        limits = self.limits

        async with trio.open_nursery() as nursery:

            async def handshake_deadline() -> None:
                await trio.sleep(self.handshake_timeout)
                if not session.ready:
                    link.close("the agent did not finish the handshake in time")

            nursery.start_soon(handshake_deadline)
            try:
                reason = await link.run(
                    heartbeat=(limits.heartbeat_interval, limits.heartbeat_timeout)
                )
            finally:
                self._unregister(session, link.closed_reason or "closed")
            nursery.cancel_scope.cancel()
        if link.error is not None and conn.state is ConnectionState.CLOSED:
            logger.info("[%s] from %s refused: %s", session.session_id, peer, reason)

    async def _watch_rotation(self) -> None:
        while True:
            await trio.sleep(self.rotation_poll)
            for name, sessions in list(self._registry.items()):
                for session in list(sessions):
                    keys = session.keys
                    if keys is None:
                        continue
                    current = self.store.resolve_lookup(keys.lookup_id)
                    if current is None or current.generation != keys.generation:
                        logger.info(
                            "[%s] service %s was rotated or deleted; closing",
                            session.session_id,
                            name,
                        )
                        session.link.close("service_id rotated", CLOSE_ROTATED)

    async def _expire_requests(self) -> None:
        """Time out the requests waiting for an answer past their deadline.

        A cancel scope with a deadline per request cost the hub about a
        tenth of its CPU per small request (trio registers and retires
        each deadline, and builds a cancel status for it); one task
        watches them all instead. It sleeps until the earliest deadline it
        was told of, then marks every request past its deadline as timed
        out and wakes it; a request that ended before is simply no longer
        among them. Each request tells it only of a deadline earlier than
        the one it sleeps towards, so with a common timeout it wakes about
        once per timeout, not once per request.
        """
        try:
            while True:
                wake = self._expiry_wake = trio.Event()
                with trio.move_on_at(self._next_expiry):
                    await wake.wait()
                now = trio.current_time()
                earliest = math.inf
                for pending in self._waiting:
                    if pending.done.is_set():
                        # Answered in time (or already timed out), its
                        # task not yet resumed.
                        continue
                    if pending.deadline <= now:
                        pending.timed_out = True
                        pending.done.set()
                    else:
                        earliest = min(earliest, pending.deadline)
                self._next_expiry = earliest
        finally:
            self._expiry_wake = None
            self._next_expiry = math.inf

    async def _wait_for_answer(self, pending: Pending, deadline: float) -> None:
        """Wait until ``pending`` is done; TooSlowError at ``deadline``.

        Under the deadline watcher when it runs (see _expire_requests),
        under a deadline scope of its own otherwise.
        """
        wake = self._expiry_wake
        if wake is None:
            with trio.fail_at(deadline):
                await pending.done.wait()
            return
        pending.deadline = deadline
        if deadline < self._next_expiry:
            self._next_expiry = deadline
            wake.set()
        self._waiting.add(pending)
        try:
            await pending.done.wait()
        finally:
            self._waiting.discard(pending)
        if pending.timed_out:
            raise trio.TooSlowError

    # ------------------------------------------------------------------
    # Relaying requests

    def _pick(self, name: str, exclude: Iterable[Session]) -> Session | None:
        candidates = [
            s
            for s in self._registry.get(name, [])
            if s.usable()
            and s not in exclude
            and len(s.pending) < self.limits.max_in_flight
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda s: len(s.pending))

    async def request(
        self,
        service_id: str,
        target: str,
        method: str,
        url: str,
        *,
        headers: Iterable[tuple[str | bytes, str | bytes]] = (),
        body: bytes = b"",
        timeout: float | None = None,
    ) -> Response:
        """Relay one request to ``target`` through an agent of the service.

        ``url`` is the application's URL (its host is used for the Host
        header and TLS verification; the agent dials the target's declared
        address). Raises a :class:`RequestError` subclass on any failure.
        """
        name = self._service_name(service_id)
        if timeout is None:
            timeout = self.limits.request_timeout
        deadline = trio.current_time() + timeout
        if len(body) > self.limits.max_request_body:
            raise RequestTooLarge(
                f"request body of {len(body)} bytes is over the limit of "
                f"{self.limits.max_request_body}"
            )
        head = _request_head(method, url, headers, len(body))
        tried: list[Session] = []

        while True:
            session = self._pick(name, tried)
            if session is None:
                if tried:
                    raise SessionLost(
                        "the agent's session was lost before the request was sent "
                        "and no other agent is available",
                        may_have_reached_target=False,
                    )
                if any(s.usable() for s in self._registry.get(name, [])):
                    raise Overloaded(
                        f"every agent of service {name} already has "
                        f"{self.limits.max_in_flight} requests in flight"
                    )
                raise AgentUnavailable(f"no agent of service {name} is available")
            tried.append(session)
            try:
                return await self._request_on(session, target, head, body, deadline)
            except SessionLost as exc:
                if exc.may_have_reached_target or head.method not in IDEMPOTENT:
                    raise
                logger.info("%s; trying another agent", exc)

    async def _request_on(
        self,
        session: Session,
        target: str,
        head: RequestHead,
        body: bytes,
        deadline: float,
    ) -> Response:
        link = session.link
        conn = link.conn
        # Built directly: attrs.evolve looks the fields up on every call.
        head = RequestHead(
            head.method,
            head.scheme,
            head.authority,
            head.path,
            head.headers,
            max(0.001, deadline - trio.current_time()),
        )
        try:
            stream_id = conn.open_stream(target, head, end_stream=not body)
        except LocalProtocolError as exc:
            if session.draining or not link.is_open:
                raise SessionLost(
                    "the agent's session is going away",
                    may_have_reached_target=False,
                ) from exc
            raise RequestError(str(exc), may_have_reached_target=False) from exc
        request_id = f"{session.session_id}.{stream_id}"
        pending = Pending(request_id, self.limits.max_response_body)
        session.pending[stream_id] = pending
        # The body goes in the same write as the head as far as the window
        # allows (a fresh stream's always does for small bodies).
        rest, chunks = _queue_body_start(conn, stream_id, body)
        # The REQUEST frame's number: only those chunks follow it.
        sequence = link.flush(whole=True) - chunks
        self._changed()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "[%s] %s %s to target %s",
                request_id,
                head.method,
                head.path.split("?", 1)[0],
                target,
            )

        try:
            if rest:
                # Waits for credit: under a deadline scope of its own.
                with trio.fail_at(deadline):
                    await self._send_body(link, stream_id, rest)
            await self._wait_for_answer(pending, deadline)
        except trio.TooSlowError:
            session.pending.pop(stream_id, None)
            if link.is_open:
                conn.reset_stream(stream_id, StreamErrorCode.CANCELLED, "deadline")
                link.flush()
            if link.was_sent(sequence):
                raise TimeoutAfterSending(
                    "no complete answer before the deadline",
                    request_id=request_id,
                ) from None
            raise TimeoutBeforeSending(
                "the request could not be sent before the deadline",
                request_id=request_id,
            ) from None
        except LinkClosed:
            pending.error = pending.error or SessionLost(
                f"the session to the agent was lost ({link.closed_reason})",
                request_id=request_id,
            )
        except BaseException:
            # Cancelled by our caller: tell the agent to stop.
            session.pending.pop(stream_id, None)
            if link.is_open and conn.stream_state(stream_id) is not None:
                conn.reset_stream(stream_id, StreamErrorCode.CANCELLED, "cancelled")
                link.flush()
            raise
        finally:
            self._changed()

        if pending.error is not None:
            error = pending.error
            if isinstance(error, SessionLost) and not link.was_sent(sequence):
                error.may_have_reached_target = False
            raise error
        assert pending.head is not None
        response_head = pending.head
        return Response(
            status=response_head.status,
            headers=[
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in response_head.headers
            ],
            body=b"".join(pending.body),
            reason=response_head.reason.decode("latin-1"),
            request_id=request_id,
        )

    async def _send_body(self, link: Link, stream_id: int, view: memoryview) -> None:
        """Send the rest of a body as the stream's window allows."""
        while view:
            await link.wait_send_window(stream_id)
            view, _ = _queue_body(link.conn, stream_id, view)
            # Straight from this task: a hop through the writer delayed
            # each batch by a task switch, while the agent waited for it.
            link.flush(whole=True)


def _queue_body_start(
    conn: Connection, stream_id: int, body: bytes
) -> tuple[memoryview, int]:
    """Queue as much of ``body`` as the window takes now; return the rest
    and the number of DATA frames queued."""
    if not body:
        return memoryview(body), 0
    if len(body) <= conn.send_window(stream_id):
        # A small body: one frame, no copy.
        conn.send_data(stream_id, body, end_stream=True)
        return memoryview(body)[len(body) :], 1
    return _queue_body(conn, stream_id, memoryview(body))


def _queue_body(
    conn: Connection, stream_id: int, view: memoryview
) -> tuple[memoryview, int]:
    """Queue DATA frames from ``view`` while the window lasts; return the
    rest and the number of frames queued."""
    frames = 0
    window = conn.send_window(stream_id)
    while window and view:
        chunk, view = view[:window], view[window:]
        conn.send_data(stream_id, bytes(chunk), end_stream=not view)
        frames += 1
        window = conn.send_window(stream_id)
    return view, frames


def _listener_port(listener: trio.SocketListener) -> int:
    """The port a trio TCP listener is bound to."""
    port: int = listener.socket.getsockname()[1]
    return port


def _text(value: object, limit: int) -> str:
    """Untrusted text from an agent, made safe for logs and listings."""
    if not isinstance(value, str):
        return ""
    return "".join(c if c.isprintable() else "?" for c in value[:limit])


def _request_head(
    method: str,
    url: str,
    headers: Iterable[tuple[str | bytes, str | bytes]],
    body_length: int = 0,
) -> RequestHead:
    """The head to send for a request; a body's length is announced.

    With a body, the caller's ``Content-Length`` (if any) is replaced by
    the body's real length: the agent streams the body to the target as
    it arrives and checks it against that number. Without one there is
    nothing to announce and the head goes as given (the agent writes the
    framing headers itself either way).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RequestError(
            f"the URL must be http:// or https:// with a host, got {parts.scheme}://",
            may_have_reached_target=False,
        )
    if parts.username or parts.password:
        raise RequestError(
            "credentials in the URL are not supported; send a header",
            may_have_reached_target=False,
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    wire = tuple(
        (
            (n.encode("latin-1") if isinstance(n, str) else n).lower(),
            v.encode("latin-1") if isinstance(v, str) else v,
        )
        for n, v in headers
    )
    if body_length:
        wire = (
            *(field for field in wire if field[0] != b"content-length"),
            (b"content-length", b"%d" % body_length),
        )
    return RequestHead(
        method=method.upper(),
        scheme=parts.scheme,
        authority=parts.netloc,
        path=path,
        headers=wire,
    )
