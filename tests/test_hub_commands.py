"""The `hub` service commands (trustelem_relay._hub_commands).

The handlers are driven through a parser built here, as the CLI builds it;
when the package's CLI exists, the same flows also run as real processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest

from trustelem_relay._errors import ConfigError
from trustelem_relay._hub_commands import CONFIG_ENV, register
from trustelem_relay._hubstore import AgentSession, SQLiteStore
from trustelem_relay._keys import lookup_id, validate_service_id

SINCE = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding an empty hub.toml (all defaults)."""
    (tmp_path / "hub.toml").write_text("", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return tmp_path


def parser() -> argparse.ArgumentParser:
    # Shaped like the package's CLI, global --config included.
    built = argparse.ArgumentParser(prog="trustelem-relay")
    built.add_argument("--config", default=None)
    register(built.add_subparsers(dest="command", required=True))
    return built


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, before: tuple[str, ...] = ()
) -> Result:
    args = parser().parse_args([*before, "hub", *argv])
    code = args.func(args)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def agent(
    session_id: str,
    service: str,
    *,
    agent_id: str | None = None,
    version: str = "0.1.0",
    hostname: str = "connector.corp",
    targets: tuple[str, ...] = ("scim-server", "ldap"),
) -> AgentSession:
    return AgentSession(
        session_id=session_id,
        service_name=service,
        agent_id=agent_id or f"agent-{session_id}",
        version=version,
        hostname=hostname,
        targets=targets,
        since=SINCE,
        peer="192.0.2.7:51234",
    )


# --------------------------------------------------------------------------
# create-service


def test_create_service_prints_only_the_id_on_stdout(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(capsys, "create-service", "acme")

    assert result.code == 0
    service_id = result.out.removesuffix("\n")
    assert result.out == service_id + "\n"
    assert validate_service_id(service_id) == service_id
    assert "will not be shown again" in result.err
    assert result.err.count("\n") == 1
    assert service_id not in result.err
    with SQLiteStore(hub_dir / "hub.db") as store:
        keys = store.resolve_lookup(lookup_id(service_id))
    assert keys is not None
    assert keys.service_name == "acme"


@pytest.mark.parametrize("name", ["Acme", ".x", "a b", "", "a" * 64])
def test_create_service_refuses_a_bad_name(
    hub_dir: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    with pytest.raises(ConfigError, match="invalid service name"):
        run(capsys, "create-service", name)
    assert capsys.readouterr().out == ""


def test_create_service_refuses_a_duplicate_without_showing_the_id(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service_id = run(capsys, "create-service", "acme").out.strip()

    with pytest.raises(ConfigError, match="already exists") as info:
        run(capsys, "create-service", "acme")

    assert service_id not in str(info.value)
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------
# services


def test_services_lists_services_and_agents_but_never_an_id(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acme_id = run(capsys, "create-service", "acme").out.strip()
    beta_id = run(capsys, "create-service", "beta").out.strip()
    with SQLiteStore(hub_dir / "hub.db") as store:
        store.record_session(agent("s1", "acme"))
        store.record_session(agent("s2", "acme", hostname="second.corp"))

    result = run(capsys, "services")

    assert result.code == 0
    lines = result.out.splitlines()
    assert len(lines) == 4
    acme, first, second, beta = lines
    assert acme.startswith(f"acme  lookup {lookup_id(acme_id).hex()[:12]}  ")
    assert "created 20" in acme
    assert "rotated never" in acme
    assert "agents 2" in acme
    assert first == (
        "  agent agent-s1  version 0.1.0  host connector.corp  "
        "targets scim-server,ldap  since 2026-01-02T03:04:05Z  "
        "from 192.0.2.7:51234"
    )
    assert "host second.corp" in second
    assert beta.startswith("beta  lookup ")
    assert beta.endswith("agents 0")
    for service_id in (acme_id, beta_id):
        assert service_id not in result.out + result.err


def test_services_with_none_says_how_to_create_one(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(capsys, "services")

    assert result.code == 0
    assert result.out == ""
    assert "hub create-service NAME" in result.err


def test_services_escapes_what_agents_say_about_themselves(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "create-service", "acme")
    hostile = agent(
        "s1",
        "acme",
        agent_id="\x1b]0;owned\x07",
        hostname="evil\nacme  lookup 000000000000",
        version="",
        targets=("a\u202eb",),
    )
    with SQLiteStore(hub_dir / "hub.db") as store:
        store.record_session(hostile)

    lines = run(capsys, "services").out.splitlines()

    assert len(lines) == 2
    agent_line = lines[1]
    assert "\x1b" not in agent_line
    assert "\x07" not in agent_line
    assert "\u202e" not in agent_line
    assert "agent \\x1b]0;owned\\x07" in agent_line
    assert "host evil\\nacme" in agent_line
    assert "version -" in agent_line
    assert "targets a\\u202eb" in agent_line


# --------------------------------------------------------------------------
# rotate-service


def test_rotate_service_prints_a_new_id_and_retires_the_old(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_id = run(capsys, "create-service", "acme").out.strip()

    result = run(capsys, "rotate-service", "acme")

    assert result.code == 0
    new_id = result.out.strip()
    assert result.out == new_id + "\n"
    assert validate_service_id(new_id) == new_id
    assert new_id != old_id
    assert "generation 2" in result.err
    assert "will not be shown again" in result.err
    with SQLiteStore(hub_dir / "hub.db") as store:
        assert store.resolve_lookup(lookup_id(old_id)) is None
        assert store.resolve_lookup(lookup_id(new_id)) is not None
        assert store.get_service("acme").generation == 2

    listing = run(capsys, "services")
    assert "generation 2" in listing.out
    assert "rotated never" not in listing.out
    for service_id in (old_id, new_id):
        assert service_id not in listing.out + listing.err


def test_rotate_unknown_service_is_a_config_error(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="no service named 'ghost'"):
        run(capsys, "rotate-service", "ghost")
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------
# Finding the hub's file


def test_config_option_wins_and_paths_follow_the_file(
    hub_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = hub_dir / "etc"
    other.mkdir()
    (other / "elsewhere.toml").write_text('store = "state.db"\n', encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(hub_dir / "absent.toml"))

    run(capsys, "create-service", "acme", "--config", "etc/elsewhere.toml")

    assert (other / "state.db").exists()
    assert not (hub_dir / "hub.db").exists()


def test_config_before_the_hub_command_is_honoured(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (hub_dir / "global.toml").write_text('store = "global.db"\n', encoding="utf-8")
    (hub_dir / "local.toml").write_text('store = "local.db"\n', encoding="utf-8")

    run(capsys, "create-service", "one", before=("--config", "global.toml"))
    assert (hub_dir / "global.db").exists()

    # After the sub-command it wins over the one before.
    argv = ("create-service", "two", "--config", "local.toml")
    run(capsys, *argv, before=("--config", "global.toml"))
    assert (hub_dir / "local.db").exists()
    assert not (hub_dir / "hub.db").exists()


def test_environment_names_the_file_when_the_option_is_absent(
    hub_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (hub_dir / "env.toml").write_text('store = "env.db"\n', encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(hub_dir / "env.toml"))

    run(capsys, "create-service", "acme")

    assert (hub_dir / "env.db").exists()
    assert not (hub_dir / "hub.db").exists()


def test_missing_file_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"^hub\.toml: no such file"):
        run(capsys, "services")


def test_memory_store_is_refused(
    hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (hub_dir / "hub.toml").write_text('store = ":memory:"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="store: is ':memory:'"):
        run(capsys, "create-service", "acme")
    assert capsys.readouterr().out == ""


def test_hub_needs_a_sub_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["hub"])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_serve_is_registered_with_its_own_config_option() -> None:
    from trustelem_relay._hub_serve import cmd_serve

    args = parser().parse_args(["hub", "serve", "--config", "etc/hub.toml"])
    assert args.func is cmd_serve
    assert args.hub_config == "etc/hub.toml"


# --------------------------------------------------------------------------
# As real processes, through the package's CLI


def cli(
    cwd: Path, *argv: str, before: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != CONFIG_ENV}
    return subprocess.run(
        [sys.executable, "-m", "trustelem_relay", *before, "hub", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_create_list_rotate(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text("", encoding="utf-8")

    created = cli(tmp_path, "create-service", "acme")
    assert created.returncode == 0, created.stderr
    service_id = created.stdout.strip()
    assert created.stdout == service_id + "\n"
    assert validate_service_id(service_id) == service_id
    assert "will not be shown again" in created.stderr

    listed = cli(tmp_path, "services")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("acme  lookup ")
    assert service_id not in listed.stdout + listed.stderr

    rotated = cli(tmp_path, "rotate-service", "acme")
    assert rotated.returncode == 0, rotated.stderr
    new_id = rotated.stdout.strip()
    assert validate_service_id(new_id) == new_id != service_id

    listed = cli(tmp_path, "services")
    assert "generation 2" in listed.stdout
    assert service_id not in listed.stdout + listed.stderr
    assert new_id not in listed.stdout + listed.stderr


def test_cli_takes_config_before_or_after_the_command(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hub.toml").write_text('store = "state.db"\n', encoding="utf-8")

    created = cli(tmp_path, "create-service", "acme", "--config", "etc/hub.toml")
    assert created.returncode == 0, created.stderr
    assert (etc / "state.db").exists()

    listed = cli(tmp_path, "services", before=("--config", "etc/hub.toml"))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("acme  lookup ")


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text("", encoding="utf-8")

    result = cli(tmp_path, "create-service", "Not Valid")

    assert result.returncode == 2
    assert result.stdout == ""
    assert "invalid service name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
