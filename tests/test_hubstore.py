"""The hub's store (trustelem_relay._hubstore), both implementations."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest

from trustelem_relay._errors import ConfigError
from trustelem_relay._hubstore import (
    SCHEMA_VERSION,
    AgentSession,
    HubStore,
    MemoryStore,
    SQLiteStore,
    open_store,
    validate_service_name,
)
from trustelem_relay._keys import lookup_id, service_psk, validate_service_id

START = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[HubStore]:
    opened: HubStore
    if request.param == "memory":
        opened = MemoryStore(clock=clock)
    else:
        opened = SQLiteStore(tmp_path / "hub.db", clock=clock)
    yield opened
    opened.close()


def session(
    session_id: str = "s1",
    service_name: str = "acme",
    *,
    since: datetime = START,
    agent_id: str = "agent-1",
) -> AgentSession:
    return AgentSession(
        session_id=session_id,
        service_name=service_name,
        agent_id=agent_id,
        version="0.1.0",
        hostname="connector.corp",
        targets=("scim-server", "ldap"),
        since=since,
        peer="192.0.2.7:51234",
    )


# --------------------------------------------------------------------------
# Services


def test_create_service_returns_record_and_a_valid_new_id(store: HubStore) -> None:
    service, service_id = store.create_service("acme")

    assert validate_service_id(service_id) == service_id
    assert service.name == "acme"
    assert service.lookup_id_hex == lookup_id(service_id).hex()
    assert service.created == START
    assert service.rotated is None
    assert service.generation == 1
    assert store.get_service("acme") == service


def test_created_service_resolves_by_its_lookup_id(store: HubStore) -> None:
    _, service_id = store.create_service("acme")

    keys = store.resolve_lookup(lookup_id(service_id))

    assert keys is not None
    assert keys.service_name == "acme"
    assert keys.lookup_id == lookup_id(service_id)
    assert keys.psk == service_psk(service_id)
    assert keys.generation == 1


@pytest.mark.parametrize("probe", [b"", b"\0" * 16, b"\0" * 32, bytes(range(16))])
def test_unknown_lookup_id_resolves_to_none(store: HubStore, probe: bytes) -> None:
    store.create_service("acme")
    assert store.resolve_lookup(probe) is None


def test_each_service_gets_its_own_id(store: HubStore) -> None:
    _, first = store.create_service("one")
    _, second = store.create_service("two")

    assert first != second
    one = store.resolve_lookup(lookup_id(first))
    two = store.resolve_lookup(lookup_id(second))
    assert one is not None
    assert two is not None
    assert (one.service_name, two.service_name) == ("one", "two")


def test_duplicate_name_is_refused(store: HubStore) -> None:
    store.create_service("acme")
    with pytest.raises(ConfigError, match="already exists"):
        store.create_service("acme")
    assert len(store.services()) == 1


@pytest.mark.parametrize(
    "name",
    ["", "A", "Acme", "-acme", ".acme", "_acme", "a" * 64, "a b", "a/b", "é", "a\n"],
)
def test_invalid_names_are_refused(store: HubStore, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid service name"):
        store.create_service(name)
    assert store.services() == []


@pytest.mark.parametrize("name", ["a", "0", "a" * 63, "acme.prod_eu-1", "9-x"])
def test_valid_names_are_accepted(store: HubStore, name: str) -> None:
    service, _ = store.create_service(name)
    assert service.name == name


def test_a_long_bad_name_is_cut_short_in_the_error() -> None:
    with pytest.raises(ConfigError) as info:
        validate_service_name("X" * 10_000)
    assert len(str(info.value)) < 200


def test_times_are_kept_in_utc(tmp_path: Path) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 1, 2, 5, 4, 5, tzinfo=plus_two)
    for opened in (
        MemoryStore(clock=lambda: local),
        SQLiteStore(tmp_path / "hub.db", clock=lambda: local),
    ):
        with opened as store:
            created, _ = store.create_service("acme")
            rotated, _ = store.rotate_service("acme")
        assert created.created == local
        assert created.created.utcoffset() == timedelta(0)
        assert rotated.rotated is not None
        assert rotated.rotated.utcoffset() == timedelta(0)


def test_validate_service_name_refuses_non_strings() -> None:
    with pytest.raises(ConfigError):
        validate_service_name(None)


def test_services_are_listed_by_name(store: HubStore, clock: FakeClock) -> None:
    for name in ("zeta", "alpha", "mid"):
        store.create_service(name)
        clock.advance(1)

    assert [service.name for service in store.services()] == ["alpha", "mid", "zeta"]


@pytest.mark.parametrize(
    "operation", ["get_service", "rotate_service", "delete_service"]
)
def test_unknown_service_is_a_config_error(store: HubStore, operation: str) -> None:
    with pytest.raises(ConfigError, match="no service named 'ghost'"):
        getattr(store, operation)("ghost")


def test_rotation_replaces_the_id(store: HubStore, clock: FakeClock) -> None:
    created, old_id = store.create_service("acme")
    clock.advance(60)

    rotated, new_id = store.rotate_service("acme")

    assert new_id != old_id
    assert validate_service_id(new_id) == new_id
    assert store.resolve_lookup(lookup_id(old_id)) is None
    keys = store.resolve_lookup(lookup_id(new_id))
    assert keys is not None
    assert keys.psk == service_psk(new_id)
    assert keys.generation == 2
    assert rotated.generation == 2
    assert rotated.created == created.created
    assert rotated.rotated == START + timedelta(seconds=60)
    assert rotated.lookup_id_hex == lookup_id(new_id).hex() != created.lookup_id_hex
    assert store.get_service("acme") == rotated


def test_each_rotation_bumps_the_generation(store: HubStore) -> None:
    store.create_service("acme")
    ids = [store.rotate_service("acme")[1] for _ in range(3)]

    assert store.get_service("acme").generation == 4
    assert len(set(ids)) == 3
    assert [store.resolve_lookup(lookup_id(i)) is None for i in ids] == [
        True,
        True,
        False,
    ]


def test_rotation_leaves_other_services_alone(store: HubStore) -> None:
    _, other_id = store.create_service("other")
    store.create_service("acme")
    store.rotate_service("acme")

    other = store.resolve_lookup(lookup_id(other_id))
    assert other is not None
    assert other.generation == 1


def test_delete_removes_service_keys_and_sessions(store: HubStore) -> None:
    _, service_id = store.create_service("acme")
    store.create_service("other")
    store.record_session(session("s1", "acme"))
    store.record_session(session("s2", "other"))

    store.delete_service("acme")

    assert [service.name for service in store.services()] == ["other"]
    assert store.resolve_lookup(lookup_id(service_id)) is None
    assert [s.session_id for s in store.sessions()] == ["s2"]
    # The name is free again, with a new id.
    _, again = store.create_service("acme")
    assert again != service_id


# --------------------------------------------------------------------------
# Sessions


def test_sessions_are_recorded_and_listed(store: HubStore) -> None:
    store.create_service("acme")
    recorded = session()

    store.record_session(recorded)

    assert store.sessions() == [recorded]
    assert store.sessions("acme") == [recorded]
    assert store.sessions("other") == []


def test_sessions_are_listed_by_service_then_time(store: HubStore) -> None:
    store.create_service("b-service")
    store.create_service("a-service")
    later = START + timedelta(minutes=5)
    store.record_session(session("s3", "b-service", since=START))
    store.record_session(session("s2", "a-service", since=later))
    store.record_session(session("s1", "a-service", since=START))

    assert [s.session_id for s in store.sessions()] == ["s1", "s2", "s3"]
    assert [s.session_id for s in store.sessions("a-service")] == ["s1", "s2"]


def test_recording_a_session_again_replaces_it(store: HubStore) -> None:
    store.create_service("acme")
    store.record_session(session(agent_id="old"))
    store.record_session(session(agent_id="new"))

    assert [s.agent_id for s in store.sessions()] == ["new"]


def test_sessions_are_removed_one_by_one_or_all(store: HubStore) -> None:
    store.create_service("acme")
    for session_id in ("s1", "s2", "s3"):
        store.record_session(session(session_id))

    store.remove_session("s2")
    store.remove_session("never-recorded")
    assert [s.session_id for s in store.sessions()] == ["s1", "s3"]

    store.clear_sessions()
    assert store.sessions() == []
    assert len(store.services()) == 1


def test_session_of_an_unknown_service_is_refused(store: HubStore) -> None:
    with pytest.raises(ConfigError, match="no service named 'acme'"):
        store.record_session(session())
    assert store.sessions() == []


def test_session_times_come_back_in_utc(store: HubStore) -> None:
    store.create_service("acme")
    paris = timezone(timedelta(hours=1))
    store.record_session(session(since=datetime(2026, 1, 2, 4, 4, 5, tzinfo=paris)))

    (recorded,) = store.sessions()
    assert recorded.since == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert recorded.since.utcoffset() == timedelta(0)


def test_naive_session_time_is_refused(store: HubStore) -> None:
    store.create_service("acme")
    with pytest.raises(ValueError, match="aware"):
        store.record_session(session(since=datetime(2026, 1, 2, 3, 4, 5)))


def test_session_with_no_targets_round_trips(store: HubStore) -> None:
    store.create_service("acme")
    empty = attrs.evolve(session(), targets=())
    store.record_session(empty)
    assert store.sessions() == [empty]


# --------------------------------------------------------------------------
# Secrets stay secret


def test_no_secret_in_any_repr(store: HubStore) -> None:
    service, service_id = store.create_service("acme")
    keys = store.resolve_lookup(lookup_id(service_id))
    assert keys is not None
    psk = service_psk(service_id)

    for text in (repr(service), repr(keys), repr(store), str(keys), str(service)):
        assert service_id not in text
        assert psk.hex() not in text
        assert repr(psk) not in text
        assert "psk=" not in text


def test_errors_never_carry_the_id(store: HubStore) -> None:
    _, service_id = store.create_service("acme")
    with pytest.raises(ConfigError) as info:
        store.create_service("acme")
    assert service_id not in str(info.value)


# --------------------------------------------------------------------------
# SQLite specifics


def test_sqlite_store_persists_across_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "hub.db"
    with SQLiteStore(path, clock=clock) as first:
        created, service_id = first.create_service("acme")
        first.record_session(session())

    with SQLiteStore(path) as second:
        assert second.services() == [created]
        keys = second.resolve_lookup(lookup_id(service_id))
        assert keys is not None
        assert keys.psk == service_psk(service_id)
        assert second.sessions() == [session()]


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    old_umask = os.umask(0)
    try:
        with SQLiteStore(path) as store:
            store.create_service("acme")
            # WAL mode keeps two companion files while the store is open.
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            for file in files:
                assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    finally:
        os.umask(old_umask)


def test_sqlite_store_keeps_an_existing_files_mode(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    with SQLiteStore(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_sqlite_store_uses_wal_and_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    SQLiteStore(path).close()

    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_sqlite_file_never_holds_the_service_id(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    with SQLiteStore(path) as store:
        _, first = store.create_service("acme")
        _, second = store.rotate_service("acme")
        contents = b"".join(
            file.read_bytes() for file in tmp_path.iterdir() if file.is_file()
        )

    for service_id in (first, second):
        assert service_id.encode() not in contents
        assert service_id.upper().encode() not in contents
    assert lookup_id(second) in contents


def test_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    # The CLI and the running hub are two processes on one file.
    path = tmp_path / "hub.db"
    with SQLiteStore(path) as hub, SQLiteStore(path) as cli:
        _, service_id = cli.create_service("acme")
        assert hub.resolve_lookup(lookup_id(service_id)) is not None

        hub.record_session(session())
        assert cli.sessions() == [session()]

        _, new_id = cli.rotate_service("acme")
        assert hub.get_service("acme").generation == 2
        assert hub.resolve_lookup(lookup_id(service_id)) is None
        assert hub.resolve_lookup(lookup_id(new_id)) is not None


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    try:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.commit()
    finally:
        db.close()

    with pytest.raises(ConfigError, match="newer than this program"):
        SQLiteStore(path)


def test_sqlite_refuses_another_programs_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE TABLE unrelated (x)")
        db.commit()
    finally:
        db.close()

    with pytest.raises(ConfigError, match="not a hub store"):
        SQLiteStore(path)


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    path.write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(ConfigError, match="not a usable hub store"):
        SQLiteStore(path)


def test_sqlite_reports_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "hub.db"
    with pytest.raises(ConfigError, match="cannot create the hub store"):
        SQLiteStore(path)


def test_sqlite_store_in_memory_works(clock: FakeClock) -> None:
    with SQLiteStore(":memory:", clock=clock) as store:
        _, service_id = store.create_service("acme")
        assert store.resolve_lookup(lookup_id(service_id)) is not None


def test_open_store_picks_the_implementation(tmp_path: Path) -> None:
    memory = open_store(":memory:")
    on_disk = open_store(tmp_path / "hub.db")
    try:
        assert isinstance(memory, MemoryStore)
        assert isinstance(on_disk, SQLiteStore)
    finally:
        memory.close()
        on_disk.close()
