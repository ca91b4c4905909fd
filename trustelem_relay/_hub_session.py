"""The hub's record of one agent session, and of the requests on it.

Theory of operation
-------------------
A :class:`Session` is the hub's side of one agent's websocket once the
link runs: who the agent said it is (INFO), whether it is ready, draining,
and the requests waiting on it. The link's reader hands it every event in
order; it routes response events to the :class:`Pending` request they
belong to, enforcing the response size limit as data arrives, and tells the
hub through two hooks when the registry must change (the agent described
itself; a request finished; the agent is draining). When the link dies,
:meth:`Session.fail_all` gives every waiting request its one outcome,
``SessionLost``.

The records returned to library users (:class:`Response`,
:class:`ServiceInfo`, :class:`AgentInfo`) live here too.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

import attrs
import trio

from ._errors import (
    RequestError,
    ResponseTooLarge,
    SessionLost,
    StreamErrorCode,
    error_for_code,
)
from ._events import (
    DataReceived,
    Event,
    GoAwayReceived,
    HandshakeComplete,
    InfoReceived,
    ResponseHead,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from ._hubstore import ServiceKeys
from ._link import Link
from ._version import __version__

logger = logging.getLogger("trustelem_relay.hub")


@attrs.frozen
class Response:
    """What :meth:`Hub.request` returns."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    reason: str = ""
    request_id: str = ""


@attrs.frozen
class ServiceInfo:
    """A newly created or rotated service. ``service_id`` is shown once."""

    name: str
    service_id: str = attrs.field(repr=False)


@attrs.frozen
class AgentInfo:
    """One connected agent, as the hub sees it."""

    session_id: str
    agent_id: str
    version: str
    hostname: str
    targets: tuple[str, ...]
    since: datetime
    peer: str
    in_flight: int
    draining: bool


class Pending:
    """One request waiting for its answer."""

    def __init__(self, request_id: str, max_body: int) -> None:
        self.request_id = request_id
        self.head: ResponseHead | None = None
        # The body's chunks, joined once at the end: growing one buffer
        # would copy (and fault in) a large body over and over.
        self.body: list[bytes] = []
        self.size = 0
        self.max_body = max_body
        self.error: RequestError | None = None
        self.done = trio.Event()
        # Set by the hub's deadline watcher, which then sets done.
        self.deadline = math.inf
        self.timed_out = False


class Session:
    """One agent's live session inside the hub."""

    def __init__(
        self,
        link: Link,
        peer: str,
        *,
        on_change: Callable[[], None],
        on_info: Callable[[Session, dict[str, object]], None],
    ) -> None:
        # The hub's hooks: the registry changed; the agent described itself.
        self._on_change = on_change
        self._on_info = on_info
        self.link = link
        self.peer = peer
        self.session_id = secrets.token_hex(4)
        self.keys: ServiceKeys | None = None
        self.agent_id = ""
        self.version = ""
        self.hostname = ""
        self.targets: tuple[str, ...] = ()
        self.since = datetime.now(UTC)
        self.ready = False
        self.draining = False
        self.pending: dict[int, Pending] = {}

    @property
    def service_name(self) -> str:
        return self.keys.service_name if self.keys else "?"

    def info(self) -> AgentInfo:
        return AgentInfo(
            session_id=self.session_id,
            agent_id=self.agent_id,
            version=self.version,
            hostname=self.hostname,
            targets=self.targets,
            since=self.since,
            peer=self.peer,
            in_flight=len(self.pending),
            draining=self.draining,
        )

    def usable(self) -> bool:
        return self.ready and not self.draining and self.link.is_open

    # Events arrive here in order, from the link's reader task.
    def on_event(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            self._on_data(event)
        elif isinstance(event, ResponseReceived):
            pending = self.pending.get(event.stream_id)
            if pending is not None:
                pending.head = event.head
        elif isinstance(event, StreamEnded):
            pending = self.pending.pop(event.stream_id, None)
            if pending is not None:
                pending.done.set()
                self._on_change()
        elif isinstance(event, StreamReset):
            pending = self.pending.pop(event.stream_id, None)
            if pending is not None:
                pending.error = error_for_code(
                    event.code,
                    f"the agent answered: {event.message}",
                    may_have_reached_target=event.may_have_reached_target,
                    request_id=pending.request_id,
                )
                pending.done.set()
                self._on_change()
        elif isinstance(event, HandshakeComplete):
            self.link.conn.send_info({"session": self.session_id, "hub": __version__})
        elif isinstance(event, InfoReceived):
            self._on_info(self, event.info)
        elif isinstance(event, GoAwayReceived):
            self.draining = True
            logger.info("[%s] agent %s is draining", self.session_id, self.agent_id)
            self._on_change()

    def _on_data(self, event: DataReceived) -> None:
        conn = self.link.conn
        pending = self.pending.get(event.stream_id)
        if pending is None:
            conn.acknowledge_data(event.stream_id, len(event.data))
            return
        pending.body.append(event.data)
        pending.size += len(event.data)
        conn.acknowledge_data(event.stream_id, len(event.data))
        if pending.size > pending.max_body:
            conn.reset_stream(
                event.stream_id,
                StreamErrorCode.RESPONSE_TOO_LARGE,
                "response over the hub's limit",
            )
            self.pending.pop(event.stream_id, None)
            pending.body = []
            pending.error = ResponseTooLarge(
                f"the response is over {pending.max_body} bytes",
                request_id=pending.request_id,
            )
            pending.done.set()

    def fail_all(self, reason: str) -> None:
        for pending in self.pending.values():
            pending.error = SessionLost(
                f"the session to the agent was lost ({reason})",
                request_id=pending.request_id,
            )
            pending.done.set()
        self.pending.clear()
