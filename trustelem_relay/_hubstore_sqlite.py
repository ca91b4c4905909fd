"""The hub's store in an SQLite file, shared by the hub and the CLI.

Theory of operation
-------------------

:class:`SQLiteStore` keeps the records of :mod:`._hubstore` in two tables,
``services`` and ``agent_sessions``; a session's row goes with its service
(``ON DELETE CASCADE``, foreign keys switched on for every connection).

The schema version is SQLite's ``PRAGMA user_version``. Opening a file
replays the migrations it lacks, in order, inside one transaction; a file
newer than this code, or one with tables but no version, is refused rather
than guessed at. The file is created 0600 before SQLite touches it, since
it holds every service's pre-shared key.

Every write runs in ``BEGIN IMMEDIATE`` (see ``_write``), so a
read-then-write sequence takes the lock up front; WAL mode lets the CLI
read while the hub writes, and a busy timeout absorbs short locks. Times
are stored as ISO 8601 text in UTC and read back as aware datetimes;
sessions are sorted in Python with the memory store's key, so both stores
list them alike.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from ._errors import ConfigError
from ._hubstore import (
    MEMORY,
    AgentSession,
    Clock,
    RandomBytes,
    Service,
    ServiceKeys,
    _check_since,
    _Row,
    _session_order,
    _unknown,
    _utc_now,
    validate_service_name,
)
from ._keys import lookup_id, new_service_id, service_psk

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

# Each entry upgrades the schema from its index to index + 1, so that
# migrating an old file replays the later entries in order. Version 0 is an
# empty database.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE services (
            name TEXT PRIMARY KEY,
            lookup_id BLOB NOT NULL UNIQUE,
            psk BLOB NOT NULL,
            created TEXT NOT NULL,
            rotated TEXT,
            generation INTEGER NOT NULL
        )
        """,
        """
        CREATE TABLE agent_sessions (
            session_id TEXT PRIMARY KEY,
            service_name TEXT NOT NULL
                REFERENCES services (name) ON DELETE CASCADE,
            agent_id TEXT NOT NULL,
            version TEXT NOT NULL,
            hostname TEXT NOT NULL,
            targets TEXT NOT NULL,
            since TEXT NOT NULL,
            peer TEXT NOT NULL
        )
        """,
        "CREATE INDEX agent_sessions_by_service ON agent_sessions (service_name)",
    ),
)

#: The SQLite schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = len(_MIGRATIONS)

# How long a writer waits for another process's write lock, in seconds.
_BUSY_TIMEOUT = 5.0


def _create_private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only, unless it exists.

    SQLite would create it with the umask's permissions; creating it first
    makes the secret-bearing file private from its first byte. SQLite gives
    its -wal and -shm files the same permissions as the database.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot create the hub store: {exc.strerror}"
        ) from exc
    os.close(fd)


def _time_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _time_value(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


class SQLiteStore:
    """A :class:`HubStore` in an SQLite file shared by the hub and the CLI.

    ``path`` is the database file, created with mode 0600 if missing (an
    existing file keeps its permissions), or ``":memory:"``. The file must
    be empty or a store written by this or an older version; opening it
    upgrades the schema. Call :meth:`close` (or use ``with``) when done.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = _utc_now,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._clock = clock
        self._random_bytes = random_bytes
        self._label = os.fspath(path)
        if self._label != MEMORY:
            _create_private_file(Path(path))
        try:
            # Transactions are explicit (see _write), hence isolation_level.
            self._db = sqlite3.connect(
                self._label, timeout=_BUSY_TIMEOUT, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise ConfigError(
                f"{self._label}: cannot open the hub store: {exc}"
            ) from exc
        # Rows by column name, so that queries can stay literal SQL.
        self._db.row_factory = sqlite3.Row
        try:
            self._prepare()
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"<SQLiteStore {self._label!r}>"

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # ---- opening

    def _prepare(self) -> None:
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            if self._label != MEMORY:
                # WAL lets `hub services` read while the hub writes.
                self._db.execute("PRAGMA journal_mode = WAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{self._label}: not a usable hub store ({exc})") from exc

    def _migrate(self) -> None:
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self._label}: the hub store has schema version {version}, "
                    f"newer than this program's {SCHEMA_VERSION}; upgrade "
                    "trustelem_relay"
                )
            if version == 0:
                tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                if tables[0]:
                    raise ConfigError(
                        f"{self._label}: this SQLite file is not a hub store "
                        "(it has tables but no schema version)"
                    )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    db.execute(statement)
            if version != SCHEMA_VERSION:
                # PRAGMA takes no parameters; the value is our own constant.
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a read-then-write
        # sequence cannot fail half-way on another process's lock.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- services

    def create_service(self, name: str) -> tuple[Service, str]:
        validate_service_name(name)
        service_id = new_service_id(self._random_bytes)
        created = self._clock()
        with self._write() as db:
            if self._find(db, name) is not None:
                raise ConfigError(f"a service named {name!r} already exists")
            db.execute(
                "INSERT INTO services (name, lookup_id, psk, created, generation) "
                "VALUES (?, ?, ?, ?, 1)",
                (
                    name,
                    lookup_id(service_id),
                    service_psk(service_id),
                    _time_text(created),
                ),
            )
            row = self._get(db, name)
        return row.service(), service_id

    def rotate_service(self, name: str) -> tuple[Service, str]:
        service_id = new_service_id(self._random_bytes)
        rotated = self._clock()
        with self._write() as db:
            cursor = db.execute(
                "UPDATE services SET lookup_id = ?, psk = ?, rotated = ?, "
                "generation = generation + 1 WHERE name = ?",
                (
                    lookup_id(service_id),
                    service_psk(service_id),
                    _time_text(rotated),
                    name,
                ),
            )
            if cursor.rowcount == 0:
                raise _unknown(name)
            row = self._get(db, name)
        return row.service(), service_id

    def get_service(self, name: str) -> Service:
        return self._get(self._db, name).service()

    def services(self) -> list[Service]:
        cursor = self._db.execute("SELECT * FROM services ORDER BY name")
        return [self._row(values).service() for values in cursor]

    def delete_service(self, name: str) -> None:
        with self._write() as db:
            # The foreign key's ON DELETE CASCADE removes its sessions.
            cursor = db.execute("DELETE FROM services WHERE name = ?", (name,))
            if cursor.rowcount == 0:
                raise _unknown(name)

    def resolve_lookup(self, lookup_id: bytes) -> ServiceKeys | None:
        values = self._db.execute(
            "SELECT * FROM services WHERE lookup_id = ?",
            (bytes(lookup_id),),
        ).fetchone()
        return None if values is None else self._row(values).keys()

    def _find(self, db: sqlite3.Connection, name: str) -> _Row | None:
        values = db.execute(
            "SELECT * FROM services WHERE name = ?",
            (name,),
        ).fetchone()
        return None if values is None else self._row(values)

    def _get(self, db: sqlite3.Connection, name: str) -> _Row:
        row = self._find(db, name)
        if row is None:
            raise _unknown(name)
        return row

    @staticmethod
    def _row(values: sqlite3.Row) -> _Row:
        rotated = values["rotated"]
        return _Row(
            name=values["name"],
            lookup_id=values["lookup_id"],
            psk=values["psk"],
            created=_time_value(values["created"]),
            rotated=None if rotated is None else _time_value(rotated),
            generation=values["generation"],
        )

    # ---- sessions

    def record_session(self, session: AgentSession) -> None:
        since = _check_since(session)
        with self._write() as db:
            self._get(db, session.service_name)
            db.execute(
                "INSERT OR REPLACE INTO agent_sessions (session_id, service_name, "
                "agent_id, version, hostname, targets, since, peer) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.session_id,
                    session.service_name,
                    session.agent_id,
                    session.version,
                    session.hostname,
                    json.dumps(list(session.targets)),
                    _time_text(since),
                    session.peer,
                ),
            )

    def remove_session(self, session_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM agent_sessions WHERE session_id = ?", (session_id,))

    def sessions(self, service_name: str | None = None) -> list[AgentSession]:
        if service_name is None:
            cursor = self._db.execute("SELECT * FROM agent_sessions")
        else:
            cursor = self._db.execute(
                "SELECT * FROM agent_sessions WHERE service_name = ?",
                (service_name,),
            )
        found = [self._session(values) for values in cursor]
        # Sorted in Python with the memory store's key so both agree.
        return sorted(found, key=_session_order)

    def clear_sessions(self) -> None:
        with self._write() as db:
            db.execute("DELETE FROM agent_sessions")

    @staticmethod
    def _session(values: sqlite3.Row) -> AgentSession:
        return AgentSession(
            session_id=values["session_id"],
            service_name=values["service_name"],
            agent_id=values["agent_id"],
            version=values["version"],
            hostname=values["hostname"],
            targets=tuple(json.loads(values["targets"])),
            since=_time_value(values["since"]),
            peer=values["peer"],
        )
