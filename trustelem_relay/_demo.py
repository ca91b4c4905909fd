"""``trustelem-relay demo``: the whole path on one machine, on defaults.

It starts a real SCIM server (``scim2-server``, the "application on the
private network"), a hub and an agent on 127.0.0.1, then provisions a user
through the relay exactly as the hub's SCIM engine would: create, look up,
deactivate, delete. Finally it asks for a target the agent never declared,
to show the refusal. Everything runs in one process except the SCIM server;
nothing is left behind (the agent's state lives in a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from ._agent import Agent
from ._config import AgentConfig
from ._errors import ConfigError, RequestError
from ._hub import Hub
from ._transport import RelayTransport

SCIM_JSON = "application/scim+json"


def _scim_command() -> list[str]:
    beside = Path(sys.executable).with_name("scim2-server")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("scim2-server")
    if found is None:
        raise ConfigError(
            "the demo needs scim2-server: pip install scim2-server==0.8.3 "
            "(or run it with: python3 -m nox -s demo)"
        )
    return [found]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    with trio.fail_after(30):
        while True:
            if process.poll() is not None:
                raise ConfigError("scim2-server exited at start; is the port taken?")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


def _line(method: str, what: str, outcome: str, started: float) -> None:
    elapsed = (time.perf_counter() - started) * 1000
    print(f"  {method:<7}{what:<34}{outcome:<34}{elapsed:6.1f} ms")


async def _provision(client: httpx.AsyncClient) -> None:
    user = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "ada.lovelace",
        "externalId": "u-1815",
        "name": {"givenName": "Ada", "familyName": "Lovelace"},
        "active": True,
    }
    started = time.perf_counter()
    created = await client.post("/Users", content=json.dumps(user))
    created.raise_for_status()
    user_id = created.json()["id"]
    _line("POST", "/Users", f"{created.status_code} created id {user_id[:8]}…", started)

    started = time.perf_counter()
    found = await client.get(
        "/Users", params={"filter": 'userName eq "ada.lovelace"', "count": "10"}
    )
    found.raise_for_status()
    total = found.json().get("totalResults")
    _line(
        "GET",
        "/Users?filter=userName eq …",
        f"{found.status_code} {total} match",
        started,
    )

    patch: dict[str, Any] = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": False}],
    }
    started = time.perf_counter()
    patched = await client.patch(f"/Users/{user_id}", content=json.dumps(patch))
    patched.raise_for_status()
    _line("PATCH", "/Users/{id}", f"{patched.status_code} active=false", started)

    started = time.perf_counter()
    deleted = await client.delete(f"/Users/{user_id}")
    deleted.raise_for_status()
    _line("DELETE", "/Users/{id}", f"{deleted.status_code} deleted", started)


async def run_demo(
    workdir: Path, scim_port: int, process: subprocess.Popen[bytes]
) -> int:
    """Wait for the SCIM server, then relay requests to it."""
    await _wait_listening(scim_port, process)
    return await _relay_demo(workdir, scim_port)


async def _relay_demo(workdir: Path, scim_port: int) -> int:
    print("trustelem-relay demo: a hub, an agent and a real SCIM server on 127.0.0.1\n")
    hub = Hub()
    service = hub.create_service("demo")
    async with trio.open_nursery() as nursery:
        hub_port = await nursery.start(hub.serve, "127.0.0.1", 0)
        hub_url = f"ws://127.0.0.1:{hub_port}/v1/connect"
        print(f"  scim2-server  http://127.0.0.1:{scim_port}/v2  (the private app)")
        print(f"  hub          {hub_url}  (service 'demo')")

        config_path = workdir / "connect.toml"
        config_path.write_text(
            f'service_id = "{service.service_id}"\n'
            'state_dir = "run"\n'
            f'hub = "{hub_url}"\n\n'
            "[target.scim-server]\n"
            f'addr = "127.0.0.1:{scim_port}"\n'
        )
        os.chmod(config_path, 0o600)
        agent = Agent(AgentConfig.load(config_path))
        started = time.perf_counter()
        await nursery.start(agent.run)
        await hub.wait_agent(service.service_id)
        elapsed = (time.perf_counter() - started) * 1000
        print(
            f"  agent        target scim-server -> 127.0.0.1:{scim_port}, "
            f"connected in {elapsed:.0f} ms\n"
        )

        # The URL's host is only a name: the agent dials the declared address.
        transport = RelayTransport(hub, service.service_id, "scim-server")
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://scim.corp.example/v2",
            headers={"content-type": SCIM_JSON, "accept": SCIM_JSON},
        ) as client:
            await _provision(client)

        started = time.perf_counter()
        try:
            await hub.request(
                service.service_id, "database", "GET", "http://db.corp.example/"
            )
            outcome = "answered (unexpected!)"
        except RequestError as exc:
            reached = "maybe" if exc.may_have_reached_target else "no"
            outcome = f"{type(exc).__name__}, reached: {reached}"
        _line("GET", "target 'database' (undeclared)", outcome, started)

        await agent.drain()
        nursery.cancel_scope.cancel()
    print("\ndone: every request above crossed the relay, sealed end to end.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: provision a user through a local hub and agent."""
    command = _scim_command()
    scim_port = _free_port()
    with tempfile.TemporaryDirectory(prefix="trustelem-demo-") as workdir:
        process = subprocess.Popen(
            [*command, "--hostname", "127.0.0.1", "--port", str(scim_port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return trio.run(run_demo, Path(workdir), scim_port, process)
        finally:
            process.terminate()
            process.wait(timeout=10)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``demo`` to the command line."""
    demo = subparsers.add_parser(
        "demo",
        help="provision a user through a local hub and agent (needs scim2-server)",
        description=(
            "Start a real SCIM server, a hub and an agent on 127.0.0.1 and"
            " provision a user through the relay: create, look up, deactivate,"
            " delete; then show the refusal of an undeclared target."
        ),
    )
    demo.set_defaults(func=cmd_demo)
