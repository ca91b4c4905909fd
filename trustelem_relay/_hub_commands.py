"""The ``hub`` commands that manage services: create, list, rotate.

Theory of operation
-------------------

:func:`register` adds a ``hub`` command to the CLI's sub-parsers; each
sub-command sets ``func`` to its handler, which takes the parsed arguments
and returns the exit status. Handlers raise :class:`ConfigError` for bad
input and leave printing it to the CLI's ``main``.

The commands work on the store named by ``hub.toml`` while the hub may be
running in another process: they open the SQLite file, do one thing and
close it. A ``":memory:"`` store belongs to a single process, so these
commands refuse it rather than act on an empty store that vanishes at exit.

A service id is printed exactly once, by the command that created it, alone
on stdout so that a script can capture it; the explanation goes to stderr.
Nothing else ever prints an id, and ``hub services`` shows only the lookup
id derived from it. Agents describe themselves (agent id, hostname, ...);
that text is untrusted, so it is escaped before reaching the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ._errors import ConfigError
from ._hubconfig import HubConfig
from ._hubstore import MEMORY, AgentSession, HubStore, Service, open_store

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "cmd_create_service",
    "cmd_rotate_service",
    "cmd_services",
    "register",
]

#: The environment variable naming the hub's file when --config is absent.
CONFIG_ENV = "TRUSTELEM_HUB_CONFIG"

#: The hub's file when neither --config nor the environment names one.
DEFAULT_CONFIG = "hub.toml"

# Hex digits of the lookup id that `hub services` shows: enough to tell
# services apart and to match a hub log line, short enough for one line.
_SHORT_LOOKUP = 12


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``hub`` command and its sub-commands to ``subparsers``.

    Each leaf parser sets ``func`` (``handler(args) -> int``).
    """
    hub = subparsers.add_parser(
        "hub",
        help="run a standalone hub and manage its services",
        description="Run a standalone hub and manage its services.",
    )
    commands = hub.add_subparsers(dest="hub_command", metavar="COMMAND", required=True)

    create = commands.add_parser(
        "create-service",
        help="create a service and print its service_id (shown only once)",
        description=(
            "Create a service and print its new service_id on stdout. The id "
            "is not stored and will not be shown again: put it in the "
            "agent's connect.toml."
        ),
    )
    create.add_argument("name", metavar="NAME", help="the service's name")
    _add_config_option(create)
    create.set_defaults(func=cmd_create_service)

    listing = commands.add_parser(
        "services",
        help="list services and their connected agents",
        description="List the services and the agents connected to each.",
    )
    _add_config_option(listing)
    listing.set_defaults(func=cmd_services)

    rotate = commands.add_parser(
        "rotate-service",
        help="give a service a new service_id (the old one stops working)",
        description=(
            "Replace a service's service_id and print the new one once. The "
            "old id stops working at once; a running hub closes the sessions "
            "of agents that still use it."
        ),
    )
    rotate.add_argument("name", metavar="NAME", help="the service's name")
    _add_config_option(rotate)
    rotate.set_defaults(func=cmd_rotate_service)

    # Imported here: serving pulls in the whole Trio runtime.
    from . import _hub_serve

    _add_config_option(_hub_serve.register(commands))


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    # Its own dest: argparse copies a sub-parser's defaults over the parent's
    # values, so sharing "config" would erase a --config typed before `hub`.
    parser.add_argument(
        "--config",
        dest="hub_config",
        metavar="PATH",
        default=None,
        help=f"the hub's file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )


# --------------------------------------------------------------------------
# Handlers


def cmd_create_service(args: argparse.Namespace) -> int:
    """``hub create-service NAME``: print the new service_id once."""
    with _store(args) as store:
        service, service_id = store.create_service(args.name)
    print(service_id)
    print(
        f"Service {service.name!r} created. Its service_id (above) will not be "
        "shown again: put it in the agent's connect.toml now.",
        file=sys.stderr,
    )
    return 0


def cmd_rotate_service(args: argparse.Namespace) -> int:
    """``hub rotate-service NAME``: print the replacement service_id once."""
    with _store(args) as store:
        service, service_id = store.rotate_service(args.name)
    print(service_id)
    print(
        f"Service {service.name!r} rotated (generation {service.generation}): "
        "the old service_id no longer works and a running hub closes its "
        "sessions. The new one (above) will not be shown again: put it in "
        "each agent's connect.toml.",
        file=sys.stderr,
    )
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    """``hub services``: one line per service, then one per agent."""
    with _store(args) as store:
        services = store.services()
        sessions = store.sessions()
    if not services:
        print(
            "No services yet; create one with `hub create-service NAME`.",
            file=sys.stderr,
        )
        return 0
    by_service: dict[str, list[AgentSession]] = {}
    for session in sessions:
        by_service.setdefault(session.service_name, []).append(session)
    for service in services:
        agents = by_service.get(service.name, [])
        print(_service_line(service, len(agents)))
        for session in agents:
            print(_session_line(session))
    return 0


# --------------------------------------------------------------------------
# Helpers


def config_path(args: argparse.Namespace) -> str:
    """The hub's file: --config after the sub-command, else a --config the
    CLI took before ``hub``, else the environment, else hub.toml."""
    for given in (getattr(args, "hub_config", None), getattr(args, "config", None)):
        if given:
            return str(given)
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


@contextlib.contextmanager
def _store(args: argparse.Namespace) -> Iterator[HubStore]:
    """Open the store that the hub's file names; close it afterwards."""
    config = HubConfig.load(config_path(args))
    if config.store == MEMORY:
        raise ConfigError(
            f"{config.source}: store: is {MEMORY!r}, which only the running "
            "hub can see; set a file name to use the hub commands"
        )
    store = open_store(config.store)
    try:
        yield store
    finally:
        store.close()


def _time(value: datetime | None) -> str:
    if value is None:
        return "never"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _safe(text: str) -> str:
    """Escape what could drive a terminal (agents choose this text)."""
    escaped = "".join(
        char if char.isprintable() else ascii(char)[1:-1] for char in text
    )
    return escaped or "-"


def _service_line(service: Service, agents: int) -> str:
    return (
        f"{service.name}  lookup {service.lookup_id_hex[:_SHORT_LOOKUP]}  "
        f"created {_time(service.created)}  rotated {_time(service.rotated)}  "
        f"generation {service.generation}  agents {agents}"
    )


def _session_line(session: AgentSession) -> str:
    targets = ",".join(_safe(target) for target in session.targets) or "-"
    return (
        f"  agent {_safe(session.agent_id)}  version {_safe(session.version)}  "
        f"host {_safe(session.hostname)}  targets {targets}  "
        f"since {_time(session.since)}  from {_safe(session.peer)}"
    )
