"""The hub's store: services, their derived keys, and connected agents.

Theory of operation
-------------------

A service's secret ``service_id`` exists only for the moment it is created
(or rotated): :meth:`HubStore.create_service` returns it once, and the store
keeps only what is derived from it (see :mod:`._keys`) — the lookup id that
agents send, and the pre-shared key the handshake needs. The id cannot be
recovered from either, but whoever reads the pre-shared key can act as
either end for that service; docs/hub.md says so to operators.

``Service.generation`` starts at 1 and grows by one on every rotation. A
running hub polls it to notice that a service was rotated by another
process (``hub rotate-service``) and closes the sessions of the old id.

Agent sessions are written by the running hub and read by the CLI process
(``hub services``), so the SQLite store is shared between processes: WAL
mode lets one write while the other reads, and a busy timeout absorbs the
short write locks. The hub calls :meth:`HubStore.clear_sessions` when it
starts, since sessions from a previous run are gone.

Two implementations follow one :class:`HubStore` protocol:
:class:`MemoryStore` (a library hub's default; lost at exit) and
:class:`SQLiteStore` (the standalone hub's). Both are synchronous, fast and
local; they are not safe to share between threads. :class:`SQLiteStore`
lives in :mod:`._hubstore_sqlite` and is re-exported here, loaded on first
use, since that module builds on this one's records and helpers.

Errors an operator can cause (a bad or duplicate name, an unknown service)
are :class:`ConfigError`. Neither a service id nor a pre-shared key ever
appears in a repr, an error message or a log line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._errors import ConfigError
from ._keys import lookup_id, new_service_id, service_psk

if TYPE_CHECKING:
    from ._hubstore_sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
    "MEMORY",
    "SCHEMA_VERSION",
    "AgentSession",
    "HubStore",
    "MemoryStore",
    "SQLiteStore",
    "Service",
    "ServiceKeys",
    "open_store",
    "validate_service_name",
]

#: The store path that means "keep everything in memory".
MEMORY = ":memory:"

# DNS-label-like so that a name is safe in URLs, file names and log lines.
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")

Clock = Callable[[], datetime]
RandomBytes = Callable[[int], bytes]


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------
# Records


@attrs.frozen
class Service:
    """A service as operators see it. Holds nothing secret.

    ``lookup_id_hex`` is the current lookup id in hex; ``rotated`` is None
    until the first rotation; ``generation`` is 1 at creation and grows by
    one on each rotation. Times are aware datetimes in UTC.
    """

    name: str
    lookup_id_hex: str
    created: datetime
    rotated: datetime | None
    generation: int


@attrs.frozen
class ServiceKeys:
    """What the hub needs to accept an agent: found by lookup id.

    ``psk`` is the service's pre-shared key: a secret, left out of the repr.
    """

    service_name: str
    lookup_id: bytes
    psk: bytes = attrs.field(repr=False)
    generation: int


@attrs.frozen
class AgentSession:
    """One agent's live connection, as ``hub services`` shows it.

    ``session_id`` is chosen by the hub and unique among live sessions;
    ``agent_id``, ``version``, ``hostname`` and ``targets`` are what the
    agent said about itself (untrusted text: escape before printing);
    ``since`` is an aware datetime; ``peer`` is the remote address.
    """

    session_id: str
    service_name: str
    agent_id: str
    version: str
    hostname: str
    targets: tuple[str, ...]
    since: datetime
    peer: str


# --------------------------------------------------------------------------
# The interface


class HubStore(Protocol):
    """What the hub and its commands need from a store.

    Every method is synchronous and quick. Methods that name a service
    raise :class:`ConfigError` when no service has that name.
    """

    def create_service(self, name: str) -> tuple[Service, str]:
        """Create a service; return it and its new service_id.

        This is the only time the id exists: show it to the operator once.
        Raises :class:`ConfigError` if the name is invalid or taken.
        """
        ...

    def rotate_service(self, name: str) -> tuple[Service, str]:
        """Give the service a new id; return the record and the new id.

        The old lookup id stops resolving at once and ``generation`` grows
        by one. Recorded sessions are left for the hub to close.
        """
        ...

    def get_service(self, name: str) -> Service:
        """Return the named service."""
        ...

    def services(self) -> list[Service]:
        """Return every service, sorted by name."""
        ...

    def delete_service(self, name: str) -> None:
        """Delete the service and its recorded sessions."""
        ...

    def resolve_lookup(self, lookup_id: bytes) -> ServiceKeys | None:
        """Return the keys of the service whose current lookup id this is.

        None for an unknown (or rotated-away) lookup id, whatever its length.
        """
        ...

    def record_session(self, session: AgentSession) -> None:
        """Record a live session, replacing any with the same session_id.

        Raises :class:`ConfigError` if its service does not exist (it may
        have been deleted by another process) and :exc:`ValueError` if
        ``since`` is a naive datetime.
        """
        ...

    def remove_session(self, session_id: str) -> None:
        """Forget a session; an unknown session_id is not an error."""
        ...

    def sessions(self, service_name: str | None = None) -> list[AgentSession]:
        """Return recorded sessions, of one service or all, sorted by
        service name, then start time, then session_id."""
        ...

    def clear_sessions(self) -> None:
        """Forget every session (the hub calls this when it starts)."""
        ...

    def close(self) -> None:
        """Release the store's resources; it must not be used afterwards."""
        ...


# --------------------------------------------------------------------------
# Helpers shared by both stores


def validate_service_name(name: object) -> str:
    """Return ``name`` if it is a valid service name, else raise ConfigError.

    A name is 1 to 63 characters of ``a-z 0-9 . _ -`` starting with a
    letter or digit.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        # Cut a long value short: an error is one line, not a paste buffer.
        shown = repr(name) if len(repr(name)) <= 70 else repr(name)[:60] + "..."
        raise ConfigError(
            f"invalid service name {shown}: use 1 to 63 characters among "
            "a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"no service named {name!r}; see `hub services`")


def _check_since(session: AgentSession) -> datetime:
    # A naive time would be read back as UTC by one store and as local time
    # by a reader elsewhere; refuse it instead of guessing.
    if session.since.tzinfo is None or session.since.utcoffset() is None:
        raise ValueError("AgentSession.since must be an aware datetime")
    return session.since.astimezone(UTC)


def _session_order(session: AgentSession) -> tuple[str, datetime, str]:
    return (session.service_name, session.since, session.session_id)


@attrs.define
class _Row:
    """A service as a store keeps it (the memory store's unit)."""

    name: str
    lookup_id: bytes
    psk: bytes = attrs.field(repr=False)
    created: datetime
    rotated: datetime | None
    generation: int

    def service(self) -> Service:
        return Service(
            name=self.name,
            lookup_id_hex=self.lookup_id.hex(),
            created=self.created,
            rotated=self.rotated,
            generation=self.generation,
        )

    def keys(self) -> ServiceKeys:
        return ServiceKeys(
            service_name=self.name,
            lookup_id=self.lookup_id,
            psk=self.psk,
            generation=self.generation,
        )


# --------------------------------------------------------------------------
# In memory


class MemoryStore:
    """A :class:`HubStore` kept in dictionaries; everything is lost at exit.

    ``clock`` returns the current aware UTC time; ``random_bytes`` is the
    source of new service ids. Both are injectable for tests.
    """

    def __init__(
        self,
        *,
        clock: Clock = _utc_now,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._clock = clock
        self._random_bytes = random_bytes
        # name -> row, and lookup id -> name for the current ids only.
        self._rows: dict[str, _Row] = {}
        self._by_lookup: dict[bytes, str] = {}
        self._sessions: dict[str, AgentSession] = {}

    def __repr__(self) -> str:
        return f"<MemoryStore services={len(self._rows)}>"

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def create_service(self, name: str) -> tuple[Service, str]:
        validate_service_name(name)
        if name in self._rows:
            raise ConfigError(f"a service named {name!r} already exists")
        service_id = new_service_id(self._random_bytes)
        row = _Row(
            name=name,
            lookup_id=lookup_id(service_id),
            psk=service_psk(service_id),
            created=self._clock().astimezone(UTC),
            rotated=None,
            generation=1,
        )
        self._rows[name] = row
        self._by_lookup[row.lookup_id] = name
        return row.service(), service_id

    def rotate_service(self, name: str) -> tuple[Service, str]:
        row = self._row(name)
        service_id = new_service_id(self._random_bytes)
        del self._by_lookup[row.lookup_id]
        row.lookup_id = lookup_id(service_id)
        row.psk = service_psk(service_id)
        row.rotated = self._clock().astimezone(UTC)
        row.generation += 1
        self._by_lookup[row.lookup_id] = name
        return row.service(), service_id

    def get_service(self, name: str) -> Service:
        return self._row(name).service()

    def services(self) -> list[Service]:
        return [self._rows[name].service() for name in sorted(self._rows)]

    def delete_service(self, name: str) -> None:
        row = self._row(name)
        del self._rows[name]
        del self._by_lookup[row.lookup_id]
        for session in self.sessions(name):
            del self._sessions[session.session_id]

    def resolve_lookup(self, lookup_id: bytes) -> ServiceKeys | None:
        name = self._by_lookup.get(lookup_id)
        return None if name is None else self._rows[name].keys()

    def record_session(self, session: AgentSession) -> None:
        since = _check_since(session)
        self._row(session.service_name)
        self._sessions[session.session_id] = attrs.evolve(session, since=since)

    def remove_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def sessions(self, service_name: str | None = None) -> list[AgentSession]:
        found = [
            session
            for session in self._sessions.values()
            if service_name is None or session.service_name == service_name
        ]
        return sorted(found, key=_session_order)

    def clear_sessions(self) -> None:
        self._sessions.clear()

    def close(self) -> None:
        """Nothing to release; present so both stores are used alike."""

    def _row(self, name: str) -> _Row:
        try:
            return self._rows[name]
        except KeyError:
            raise _unknown(name) from None


def open_store(
    path: str | os.PathLike[str],
    *,
    clock: Clock = _utc_now,
    random_bytes: RandomBytes = os.urandom,
) -> HubStore:
    """Open the store a hub.toml names: ``":memory:"`` gives a
    :class:`MemoryStore`, anything else an :class:`SQLiteStore` at that path.
    """
    if os.fspath(path) == MEMORY:
        return MemoryStore(clock=clock, random_bytes=random_bytes)
    from ._hubstore_sqlite import SQLiteStore

    return SQLiteStore(path, clock=clock, random_bytes=random_bytes)


def __getattr__(name: str) -> Any:
    # The SQLite names come from ._hubstore_sqlite, which imports this
    # module; loading it on first use keeps the import graph one-way.
    if name in ("SCHEMA_VERSION", "SQLiteStore"):
        from . import _hubstore_sqlite

        return getattr(_hubstore_sqlite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
