"""The agent's runtime commands: ``run`` and ``status``.

``run`` starts an :class:`~._agent.Agent` in the foreground. The first
SIGINT or SIGTERM drains it (no new requests, those in flight finish within
the grace period) and the command exits 0; a second signal stops at once
and exits 130.

``status`` reads the small record the running agent keeps in its state
directory (``status.json``) and says whether the agent runs, whether it is
connected and since when, the hub, the last error and the requests in
flight. It exits 0 when the agent runs and is connected, 1 otherwise, so a
monitoring script can use it directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from typing import Any

import trio

from ._agent import Agent
from ._allocator import keep_large_buffers
from ._config import AgentConfig
from ._errors import ConfigError

logger = logging.getLogger("trustelem_relay.cli")

#: Exit status after a second signal cut the drain short.
EXIT_FORCED = 130


async def run_until_signalled(agent: Agent) -> int:
    """Run ``agent`` until drained by a signal; return the exit status."""
    forced = False
    async with trio.open_nursery() as nursery:

        async def supervise() -> None:
            await agent.run()
            nursery.cancel_scope.cancel()

        nursery.start_soon(supervise)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not agent.draining:
                    logger.info("%s received: draining (again to stop now)", name)
                    nursery.start_soon(agent.drain)
                    continue
                logger.warning("%s received again: stopping now", name)
                forced = True
                nursery.cancel_scope.cancel()
                break
    return EXIT_FORCED if forced else 0


def _load(args: argparse.Namespace) -> AgentConfig:
    # Imported here: _cli imports this module to register its commands.
    from ._cli import agent_config_path

    return AgentConfig.load(agent_config_path(args))


def cmd_run(args: argparse.Namespace) -> int:
    """``run``: the agent in the foreground until SIGINT/SIGTERM."""
    config = _load(args)
    agent = Agent(config)
    keep_large_buffers()
    return trio.run(run_until_signalled, agent)


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(config: AgentConfig) -> dict[str, Any] | None:
    """The running agent's last record, or None if it never wrote one."""
    path = config.state_dir / "status.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the status record: {exc}") from None
    return data if isinstance(data, dict) else None


def cmd_status(args: argparse.Namespace) -> int:
    """``status``: what the running agent last reported."""
    config = _load(args)
    record = read_status(config)
    if record is None:
        print("agent: never ran with this state directory")
        return 1
    running = _pid_alive(record.get("pid"))
    connected = bool(record.get("connected")) and running
    if running:
        state = "draining" if record.get("draining") else "running"
        print(f"agent: {state} (pid {record.get('pid')})")
    else:
        print(f"agent: not running (last record {record.get('updated')})")
    if connected:
        print(f"connected: yes, since {record.get('since')}")
    else:
        print("connected: no")
    print(f"hub: {record.get('hub')}")
    print(f"last error: {record.get('last_error') or 'none'}")
    print(f"in flight: {record.get('in_flight', 0) if running else 0}")
    return 0 if connected else 1


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``run`` and ``status`` to the command line."""
    from ._cli import add_config_option

    run = subparsers.add_parser(
        "run",
        help="run the agent in the foreground",
        description=(
            "Connect to the hub and forward its requests to the declared"
            " targets until SIGINT or SIGTERM. The first signal drains:"
            " no new requests, those in flight finish within 30 s, exit 0."
            " A second signal stops at once (exit 130)."
        ),
    )
    add_config_option(run)
    run.set_defaults(func=cmd_run)
    status = subparsers.add_parser(
        "status",
        help="show what the running agent last reported",
        description=(
            "Read the running agent's status record from its state directory:"
            " running or not, connected or not and since when, the hub, the"
            " last error and the requests in flight. Exits 0 only when the"
            " agent runs and is connected."
        ),
    )
    add_config_option(status)
    status.set_defaults(func=cmd_status)
