"""The measuring process: a Hub in-process, its agent as a child.

This is how the relay is used: the identity service runs the hub inside its
own process and calls :meth:`Hub.request`; the agent runs elsewhere as
``python -m trustelem_relay run``. So this process serves the agents'
endpoint (ws or wss on 127.0.0.1), creates a service, writes the agent's
connect.toml (one target, the origin), starts the agent, and drives each
workload through three paths that take turns round by round: the direct
client with keep-alive, the direct client with one connection per request,
and ``hub.request``. It writes the figures as JSON, with the peak memory
(VmHWM) of the hub process and of the agent.

After the workloads it sends a few responses much larger than the flow-control
windows through the relay and reports the agent's peak memory again: if the
agent streams as it should, its peak grows by about the windows, not by the
body size.

Started by ``relay_bench.py``; not meant to be run by hand, though it can be.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from functools import partial
from pathlib import Path
from typing import IO

import trio
from direct_client import DirectClient
from load import MIB, WORKLOADS, Workload, measure
from procs import PYTHON, cpu_seconds, proc_status_kib, stop, write_private
from profiled import run_profiled

import trustelem_relay
from trustelem_relay._allocator import keep_large_buffers

CONNECT_TOML = """\
service_id = "{service_id}"
state_dir = "state"
hub = "{scheme}://127.0.0.1:{hub_port}/v1/connect"
{ca_line}
[target.origin]
addr = "127.0.0.1:{origin_port}"
"""


def write_connect_toml(
    workdir: Path, service_id: str, scheme: str, hub_port: int, origin_port: int
) -> Path:
    """The agent's configuration; the service_id inline needs mode 0600."""
    ca_line = 'hub_ca_file = "../ca.pem"\n' if scheme == "wss" else ""
    path = workdir / "connect.toml"
    write_private(
        path,
        CONNECT_TOML.format(
            service_id=service_id,
            scheme=scheme,
            hub_port=hub_port,
            origin_port=origin_port,
            ca_line=ca_line,
        ),
    )
    return path


def server_context(certdir: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certdir / "hub.pem", certdir / "hub-key.pem")
    return context


async def drive(args: argparse.Namespace, agent_log: IO[bytes]) -> dict[str, object]:
    workdir = Path(args.workdir)
    context = server_context(workdir.parent) if args.scheme == "wss" else None
    hub = trustelem_relay.Hub()
    results: dict[str, object] = {"scheme": args.scheme}

    async with trio.open_nursery() as nursery:
        hub_port = await nursery.start(
            partial(hub.serve, "127.0.0.1", 0, ssl_context=context)
        )
        service = hub.create_service("bench")
        service_id = service.service_id
        config = write_connect_toml(
            workdir, service_id, args.scheme, hub_port, args.origin_port
        )
        profiler = []
        if args.profile:
            out = Path(args.profile) / f"agent-{args.scheme}.prof"
            profiler = [str(Path(__file__).with_name("profiled.py")), str(out)]
        agent = await trio.lowlevel.open_process(
            [
                PYTHON,
                *profiler,
                *("-m", "trustelem_relay", "--log-level", "WARNING"),
                *("--config", str(config), "run"),
            ],
            stderr=agent_log,
        )
        base = f"http://127.0.0.1:{args.origin_port}"

        async def request(index: int, workload: Workload) -> int:
            response = await hub.request(
                service_id,
                "origin",
                workload.method,
                base + workload.path,
                headers=[("content-type", "application/json")],
                body=workload.body,
                timeout=60,
            )
            if response.status != 200:
                raise RuntimeError(f"the relay answered {response.status}")
            return len(response.body)

        keep_alive = DirectClient(args.origin_port, keep_alive=True)
        one_per_request = DirectClient(args.origin_port, keep_alive=False)
        paths = {
            "direct_keepalive": keep_alive.request,
            "direct_close": one_per_request.request,
            "relay": request,
        }
        if args.relay_only:
            paths = {"relay": request}
        me = os.getpid()

        def probe() -> dict[str, float]:
            return {
                "hub_or_client": cpu_seconds(me),
                "agent": cpu_seconds(agent.pid),
                "origin": cpu_seconds(args.origin_pid),
            }

        try:
            await hub.wait_agent(service_id, timeout=30)
            workloads: dict[str, object] = {}
            for workload in WORKLOADS:
                if args.only and workload.name not in args.only:
                    continue
                workloads[workload.name] = await measure(
                    paths,
                    workload,
                    rounds=args.rounds,
                    duration=args.duration,
                    warmup=args.warmup,
                    probe=probe,
                )
            results["workloads"] = workloads
            await keep_alive.aclose()
            await one_per_request.aclose()
            results["hub_vmhwm_kib"] = proc_status_kib(os.getpid(), "VmHWM")
            results["agent_vmhwm_kib"] = proc_status_kib(agent.pid, "VmHWM")

            # Bodies far larger than the windows: the agent's peak must not
            # follow them.
            size = args.probe_mib * MIB
            large = Workload("large", "GET", f"/bytes/{size}", b"", 1, size)
            for _ in range(3):
                await request(0, large)
            results["agent_vmhwm_after_probe_kib"] = proc_status_kib(agent.pid, "VmHWM")
            results["probe_body_mib"] = args.probe_mib
        finally:
            await stop(agent)
        nursery.cancel_scope.cancel()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scheme", choices=("ws", "wss"), required=True)
    parser.add_argument("--origin-port", type=int, required=True)
    parser.add_argument("--origin-pid", type=int, required=True)
    parser.add_argument("--workdir", required=True, help="an empty directory")
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--probe-mib", type=int, default=12)
    # For profiling one workload of the relay alone.
    parser.add_argument("--only", action="append", help="a workload's name")
    parser.add_argument("--relay-only", action="store_true")
    parser.add_argument(
        "--profile", metavar="DIR", help="profile both processes (CPU time)"
    )
    args = parser.parse_args(argv)
    # The agent (``run``) and the origin set it too: every process of the
    # benchmark allocates the same way, the direct client's included.
    keep_large_buffers()
    with open(Path(args.workdir) / "agent.log", "wb") as agent_log:
        if args.profile:
            out = str(Path(args.profile) / f"hub-{args.scheme}.prof")
            results = run_profiled(out, lambda: trio.run(drive, args, agent_log))
        else:
            results = trio.run(drive, args, agent_log)
    Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
