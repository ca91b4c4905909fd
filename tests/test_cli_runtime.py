"""The operator's commands as separate processes: hub serve, run, status, demo.

Each command starts as an operator would start it, ``python -m
trustelem_relay ...`` in a working directory holding its files, on real
sockets on 127.0.0.1. Processes that keep running write their output to
files (a pipe nobody reads could fill and block them); every wait polls
against a deadline, and every child is killed and reaped in a ``finally``.

Where a request must cross the relay, the hub runs in the test process
(it has no request API over the network yet) and only the agent is a
separate process; that proves ``run`` end to end.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import pytest
import trio
from support.ports import LOOPBACK, free_port
from support.scim import ScimServer

from trustelem_relay import Hub, RequestError

COMMAND = [sys.executable, "-m", "trustelem_relay"]

# Seconds allowed for a process to get where a test waits for it. Starting
# Python and importing the package alone takes over a second on a busy host.
STARTUP = 20.0
# Seconds allowed for a signalled process to exit.
EXIT = 10.0


def child_env() -> dict[str, str]:
    """The test's environment without variables that would pick files."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TRUSTELEM_")}


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def cli(cwd: pathlib.Path, *args: str, timeout: float = 60) -> Result:
    """Run one command to completion, as an operator would in ``cwd``."""
    done = subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def wait_until(
    condition: Callable[[], bool], timeout: float, explain: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s:\n{explain()}")
        time.sleep(0.05)


class Logs:
    """The files a background process writes its stdout and stderr to."""

    def __init__(self, directory: pathlib.Path, name: str) -> None:
        self.out_path = directory / f"{name}.stdout"
        self.err_path = directory / f"{name}.stderr"

    @contextmanager
    def open(self) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            yield out, err

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def both(self) -> str:
        return f"--- stdout\n{self.out()}--- stderr\n{self.err()}"


class Child:
    """A command left running in the background."""

    def __init__(self, popen: subprocess.Popen[bytes], logs: Logs) -> None:
        self.popen = popen
        self.logs = logs

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for_output(self, text: str, timeout: float = STARTUP) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"exited with {self.popen.returncode} before printing "
                    f"{text!r}:\n{self.logs.both()}"
                )
            return text in self.logs.out() + self.logs.err()

        wait_until(seen, timeout, self.logs.both)

    def signal(self, signum: signal.Signals) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = EXIT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {timeout:g} s later:\n{self.logs.both()}"
            ) from None


@contextmanager
def background(cwd: pathlib.Path, name: str, *args: str) -> Iterator[Child]:
    """Start a command; kill and reap it on the way out if it still runs."""
    logs = Logs(cwd, name)
    with logs.open() as (out, err):
        popen = subprocess.Popen(
            [*COMMAND, *args],
            cwd=cwd,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:
        yield Child(popen, logs)
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait()


# --------------------------------------------------------------------------
# Files an operator writes


def write_hub_toml(directory: pathlib.Path, port: int) -> None:
    (directory / "hub.toml").write_text(
        f'listen = "{LOOPBACK}:{port}"\nstore = "hub.db"\n'
    )


def write_connect_toml(
    directory: pathlib.Path, service_id: str, hub_port: int, targets: dict[str, str]
) -> pathlib.Path:
    lines = [
        f'service_id = "{service_id}"',
        'state_dir = "run"',
        f'hub = "ws://{LOOPBACK}:{hub_port}/v1/connect"',
    ]
    for name, addr in targets.items():
        lines += ["", f"[target.{name}]", f'addr = "{addr}"']
    path = directory / "connect.toml"
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def agent_record(directory: pathlib.Path) -> dict[str, Any]:
    """What the agent last wrote to its status file, or {} if nothing yet."""
    try:
        data = json.loads((directory / "run" / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class HubProcess:
    child: Child
    port: int
    service_id: str


@pytest.fixture
def hub_process(tmp_path: pathlib.Path) -> Iterator[HubProcess]:
    """``hub create-service acme``, then ``hub serve`` in the background."""
    port = free_port()
    write_hub_toml(tmp_path, port)
    created = cli(tmp_path, "hub", "create-service", "acme", "--config", "hub.toml")
    assert created.code == 0, created.err
    service_id = created.out.strip()
    assert len(service_id.splitlines()) == 1
    with background(tmp_path, "hub", "hub", "serve", "--config", "hub.toml") as hub:
        hub.wait_for_output(f"listening on {LOOPBACK}:{port}")
        yield HubProcess(hub, port, service_id)


# --------------------------------------------------------------------------
# A hub process and an agent process


def test_agent_process_connects_to_a_hub_process_and_reports_it(
    tmp_path: pathlib.Path, hub_process: HubProcess, scim_server: ScimServer
) -> None:
    write_connect_toml(
        tmp_path,
        hub_process.service_id,
        hub_process.port,
        {"scim-server": scim_server.address},
    )

    with background(tmp_path, "agent", "run", "--config", "connect.toml") as agent:
        wait_until(
            lambda: agent_record(tmp_path).get("connected") is True,
            STARTUP,
            agent.logs.both,
        )

        # The hub, in another process, lists the agent by what it said.
        services = cli(tmp_path, "hub", "services", "--config", "hub.toml")
        assert services.code == 0, services.err
        service_line, agent_line = services.out.splitlines()
        assert service_line.startswith("acme  ")
        assert service_line.endswith("agents 1")
        assert "  version 0.1.0  " in agent_line
        assert f"  host {socket.gethostname()}  " in agent_line
        assert "  targets scim-server  " in agent_line
        assert scim_server.address not in services.out
        assert str(scim_server.port) not in services.out
        assert hub_process.service_id not in services.out + services.err

        status = cli(tmp_path, "status", "--config", "connect.toml")
        assert status.code == 0, status.out + status.err
        assert f"agent: running (pid {agent.pid})" in status.out
        assert "connected: yes, since " in status.out
        assert f"hub: ws://{LOOPBACK}:{hub_process.port}/v1/connect" in status.out
        assert "last error: none" in status.out
        assert hub_process.service_id not in status.out + status.err

        # SIGTERM while idle drains at once and exits 0.
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0, agent.logs.both()
        log = agent.logs.err()
        assert "SIGTERM received: draining" in log
        assert "Traceback" not in log
        assert hub_process.service_id not in log

    stopped = cli(tmp_path, "status", "--config", "connect.toml")
    assert stopped.code == 1
    assert stopped.out.startswith("agent: not running")
    assert "connected: no" in stopped.out

    hub_process.child.signal(signal.SIGTERM)
    assert hub_process.child.wait() == 0, hub_process.child.logs.both()
    assert "Traceback" not in hub_process.child.logs.err()


def test_rotating_the_service_ends_the_running_agent_session(
    tmp_path: pathlib.Path, hub_process: HubProcess
) -> None:
    write_connect_toml(tmp_path, hub_process.service_id, hub_process.port, {})

    with background(tmp_path, "agent", "run", "--config", "connect.toml") as agent:
        wait_until(
            lambda: agent_record(tmp_path).get("connected") is True,
            STARTUP,
            agent.logs.both,
        )

        rotated = cli(tmp_path, "hub", "rotate-service", "acme", "--config", "hub.toml")
        assert rotated.code == 0, rotated.err
        assert rotated.out.strip() != hub_process.service_id

        # The running hub polls its store every 2 s and closes the session;
        # the agent reconnects with the old id and is refused.
        wait_until(
            lambda: "handshake failed" in str(agent_record(tmp_path).get("last_error")),
            15,
            agent.logs.both,
        )
        status = cli(tmp_path, "status", "--config", "connect.toml")
        assert status.code == 1
        assert f"agent: running (pid {agent.pid})" in status.out
        assert "connected: no" in status.out
        assert (
            "last error: handshake failed: the hub does not know this service_id"
            in (status.out)
        )

        services = cli(tmp_path, "hub", "services", "--config", "hub.toml")
        assert services.out.splitlines()[0].endswith("agents 0")
        assert "closing" in hub_process.child.logs.err()


# --------------------------------------------------------------------------
# A hub in the test, the agent in its own process


@dataclass
class AsyncChild:
    process: trio.Process
    logs: Logs

    async def wait_for_log(self, text: str, timeout: float = STARTUP) -> None:
        with trio.move_on_after(timeout):
            while text not in self.logs.err():
                if self.process.poll() is not None:
                    break
                await trio.sleep(0.05)
            else:
                return
        raise AssertionError(f"{text!r} never came:\n{self.logs.both()}")

    async def wait(self, timeout: float = EXIT) -> int:
        with trio.move_on_after(timeout):
            return await self.process.wait()
        raise AssertionError(f"still running {timeout:g} s later:\n{self.logs.both()}")


def open_logs(logs: Logs) -> tuple[IO[bytes], IO[bytes]]:
    return logs.out_path.open("wb"), logs.err_path.open("wb")


@contextmanager
def closing_all(*files: IO[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for file in files:
            file.close()


async def start_agent(directory: pathlib.Path) -> AsyncChild:
    logs = Logs(directory, "agent")
    out, err = open_logs(logs)
    with closing_all(out, err):
        process = await trio.lowlevel.open_process(
            [*COMMAND, "run", "--config", "connect.toml"],
            cwd=directory,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    return AsyncChild(process, logs)


async def reap(child: AsyncChild) -> None:
    if child.process.returncode is None:
        child.process.kill()
    with trio.CancelScope(shield=True):
        await child.process.wait()


@pytest.fixture
async def hub(nursery: trio.Nursery) -> tuple[Hub, int, str]:
    served = Hub()
    service = served.create_service("acme")
    port = await nursery.start(served.serve, LOOPBACK, 0)
    return served, port, service.service_id


SCIM = [("content-type", "application/scim+json")]


async def test_run_relays_requests_from_the_hub_to_a_scim_server(
    tmp_path: pathlib.Path, hub: tuple[Hub, int, str], scim_server: ScimServer
) -> None:
    served, port, service_id = hub
    write_connect_toml(tmp_path, service_id, port, {"scim-server": scim_server.address})
    base = "http://scim.corp.example/v2"
    user = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "grace.hopper",
    }

    agent = await start_agent(tmp_path)
    try:
        await served.wait_agent(service_id, timeout=STARTUP)
        created = await served.request(
            service_id,
            "scim-server",
            "POST",
            f"{base}/Users",
            headers=SCIM,
            body=json.dumps(user).encode(),
            timeout=10,
        )
        assert created.status == 201, created.body
        user_id = json.loads(created.body)["id"]
        found = await served.request(
            service_id, "scim-server", "GET", f"{base}/Users/{user_id}", timeout=10
        )
        assert found.status == 200
        assert json.loads(found.body)["userName"] == "grace.hopper"

        agent.process.send_signal(signal.SIGTERM)
        assert await agent.wait() == 0, agent.logs.both()
        assert "draining" in agent.logs.err()
    finally:
        await reap(agent)


async def test_a_second_signal_stops_a_draining_agent_at_once(
    tmp_path: pathlib.Path, hub: tuple[Hub, int, str], nursery: trio.Nursery
) -> None:
    served, port, service_id = hub

    # A target that takes the request and never answers keeps it in flight.
    reached = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        reached.set()
        await trio.sleep_forever()

    serve = functools.partial(trio.serve_tcp, silent, 0, host=LOOPBACK)
    listeners = await nursery.start(serve)
    silent_port = listeners[0].socket.getsockname()[1]
    write_connect_toml(tmp_path, service_id, port, {"slow": f"127.0.0.1:{silent_port}"})
    outcome: list[RequestError] = []
    settled = trio.Event()

    async def request() -> None:
        try:
            await served.request(service_id, "slow", "GET", "http://slow/", timeout=60)
        except RequestError as exc:
            outcome.append(exc)
        finally:
            settled.set()

    agent = await start_agent(tmp_path)
    try:
        await served.wait_agent(service_id, timeout=STARTUP)
        nursery.start_soon(request)
        with trio.fail_after(10):
            await reached.wait()

        agent.process.send_signal(signal.SIGINT)
        await agent.wait_for_log("SIGINT received: draining")
        started = trio.current_time()
        agent.process.send_signal(signal.SIGINT)
        assert await agent.wait() == 130, agent.logs.both()
        assert trio.current_time() - started < 5
        assert "received again: stopping now" in agent.logs.err()
        assert "Traceback" not in agent.logs.err()

        # The hub learns that its request may or may not have been served.
        with trio.fail_after(10):
            await settled.wait()
        assert outcome[0].may_have_reached_target
    finally:
        await reap(agent)


# --------------------------------------------------------------------------
# The demo, and bad input


def test_demo_provisions_a_user_and_exits_0(tmp_path: pathlib.Path) -> None:
    demo = cli(tmp_path, "demo", timeout=120)

    assert demo.code == 0, demo.out + demo.err
    for step in (
        "POST   /Users",
        "201 created",
        "GET    /Users?filter=userName eq",
        "PATCH  /Users/{id}",
        "204 active=false",
        "DELETE /Users/{id}",
        "UndeclaredTarget, reached: no",
        "done: every request above crossed the relay",
    ):
        assert step in demo.out, demo.out
    assert "Traceback" not in demo.err


def test_bad_input_gives_one_line_and_the_right_exit_status(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "broken.toml").write_text("service_id = \n")
    os.chmod(tmp_path / "broken.toml", 0o600)
    service_id = Hub().create_service("acme").service_id
    write_connect_toml(tmp_path, service_id, free_port(), {})
    cases = {
        "missing": ("run", "--config", "missing.toml"),
        "invalid": ("run", "--config", "broken.toml"),
        "status without state": ("status", "--config", "connect.toml"),
        "unknown option": ("run", "--frobnicate"),
    }

    # Started together: each one pays the interpreter's start-up.
    logs = {name: Logs(tmp_path, name.replace(" ", "-")) for name in cases}
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, args in cases.items():
            with logs[name].open() as (out, err):
                children[name] = subprocess.Popen(
                    [*COMMAND, *args],
                    cwd=tmp_path,
                    env=child_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                )
        codes = {name: child.wait(timeout=60) for name, child in children.items()}
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
            child.wait()

    for name in ("missing", "invalid", "unknown option"):
        assert codes[name] == 2, logs[name].both()
        errors = logs[name].err().splitlines()
        assert len(errors) == 1, logs[name].both()
        assert errors[0].startswith("trustelem-relay: error: ")
        assert logs[name].out() == ""
    assert "missing.toml: no such config file" in logs["missing"].err()
    assert "broken.toml: not valid TOML" in logs["invalid"].err()

    assert codes["status without state"] == 1
    assert logs["status without state"].out() == (
        "agent: never ran with this state directory\n"
    )
    assert logs["status without state"].err() == ""
    assert all(service_id not in log.both() for log in logs.values())
