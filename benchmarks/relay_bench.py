"""The relay against the direct path, and the hub's memory per idle agent.

Run ``python benchmarks/relay_bench.py`` (or ``nox -s bench``); ``--quick``
runs a smoke version in a few seconds. Everything listens on 127.0.0.1.

Processes: the origin (``origin.py``, a trio + h11 server), a measuring
process (``hub_side.py``) that runs the Hub in-process and drives the load,
and the agent, started by it as ``python -m trustelem_relay run``. The
measuring process runs once with the agents' endpoint on plain ws, once on
wss. In each run, every workload goes through three paths that take turns
round by round, so that the machine's load touches them alike:

* **direct, keep-alive**: a trio + h11 client straight to the origin, one
  kept-alive connection per worker;
* **direct, close**: the same client with one connection per request;
* **relay**: ``hub.request`` → agent → the same origin.

Each path runs one warm-up round, then ``--rounds`` rounds of
``--duration`` seconds; the figures are the medians over the rounds. The
headline relay/direct ratios divide the relay's requests/s by the direct
path's with keep-alive, the fairer baseline once the agent keeps its own
connections to targets alive; ratios against one connection per request are
in the JSON too.

The memory mode starts a standalone hub (``hub serve`` over wss with a
trustme certificate), opens ``--sessions`` idle agent sessions from this
process (``idle_sessions.py``) and reports (hub RSS with N sessions - hub
RSS with none) / N.

All the figures go to a JSON file (``--output``, default
``bench-results.json``) and a summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio
import trustme
from idle_sessions import IdleSessions
from load import WORKLOADS
from procs import PYTHON, proc_status_kib, start_listening, stop

HERE = Path(__file__).resolve().parent

#: The issue's targets.
TARGET_RATIO_WS = 0.50
TARGET_RATIO_WSS = 0.45
TARGET_ADDED_P50_MS = 0.4
TARGET_MB_PER_S = 250.0
TARGET_SESSION_KIB = 48.0


def make_certificates(directory: Path) -> None:
    """A trustme CA and a certificate for the hub at 127.0.0.1."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(directory / "hub-key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "hub.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(directory / "hub.pem"), append=True)


# --------------------------------------------------------------------------
# The relay path


async def measure_relay(
    args: argparse.Namespace,
    origin_port: int,
    origin_pid: int,
    scheme: str,
    workdir: Path,
) -> dict[str, Any]:
    """Run ``hub_side.py`` (which starts the agent) and read its figures."""
    directory = workdir / scheme
    directory.mkdir()
    output = directory / "results.json"
    await trio.run_process(
        [
            PYTHON,
            str(HERE / "hub_side.py"),
            f"--scheme={scheme}",
            f"--origin-port={origin_port}",
            f"--origin-pid={origin_pid}",
            f"--workdir={directory}",
            f"--output={output}",
            f"--rounds={args.rounds}",
            f"--duration={args.duration}",
            f"--warmup={args.warmup}",
            f"--probe-mib={args.probe_mib}",
        ]
    )
    result: dict[str, Any] = json.loads(output.read_text())
    return result


# --------------------------------------------------------------------------
# Hub memory per idle session


HUB_TOML = """\
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
tls_cert = "../hub.pem"
tls_key = "../hub-key.pem"
store = "hub.db"
"""


async def measure_sessions(
    args: argparse.Namespace, workdir: Path, log: Any
) -> dict[str, Any]:
    directory = workdir / "sessions"
    directory.mkdir()
    config = directory / "hub.toml"
    config.write_text(HUB_TOML)
    cli = [PYTHON, "-m", "trustelem_relay", "--log-level", "WARNING", "hub"]
    created = await trio.run_process(
        [*cli, "create-service", "bench", "--config", str(config)],
        capture_stdout=True,
        stderr=log,
    )
    service_id = created.stdout.decode().strip()
    hub, port = await start_listening(
        [*cli, "serve", "--config", str(config)], stderr=log
    )
    ca = ssl.create_default_context(cafile=str(workdir / "ca.pem"))
    count = args.sessions
    try:
        # One short-lived session first, so that what any first session
        # loads (code, the TLS and SQLite machinery) counts as the baseline.
        async with trio.open_nursery() as warmup:
            await IdleSessions(warmup, port, service_id, ca).open(1)
            warmup.cancel_scope.cancel()
        await trio.sleep(0.5)
        base = proc_status_kib(hub.pid, "VmRSS")

        async with trio.open_nursery() as nursery:
            sessions = IdleSessions(nursery, port, service_id, ca)
            started = trio.current_time()
            await sessions.open(count // 2)
            await trio.sleep(0.5)
            half = proc_status_kib(hub.pid, "VmRSS")
            await sessions.open(count - count // 2)
            elapsed = trio.current_time() - started
            await trio.sleep(0.5)
            full = proc_status_kib(hub.pid, "VmRSS")
            nursery.cancel_scope.cancel()
    finally:
        await stop(hub)
    return {
        "sessions": count,
        "scheme": "wss",
        "hub_rss_base_kib": base,
        "hub_rss_half_kib": half,
        "hub_rss_full_kib": full,
        "kib_per_session": (full - base) / count,
        "kib_per_session_second_half": (full - half) / (count - count // 2),
        "open_seconds": elapsed,
    }


# --------------------------------------------------------------------------
# Putting it together


async def run_all(args: argparse.Namespace, workdir: Path, log: Any) -> dict[str, Any]:
    origin, origin_port = await start_listening(
        [PYTHON, str(HERE / "origin.py")], stderr=log
    )
    load_before = os.getloadavg()
    try:
        relay = {
            scheme: await measure_relay(args, origin_port, origin.pid, scheme, workdir)
            for scheme in args.schemes
        }
    finally:
        await stop(origin)
    memory = await measure_sessions(args, workdir, log) if args.sessions else None
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "settings": {
            "quick": args.quick,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "sessions": args.sessions,
            "probe_mib": args.probe_mib,
            "schemes": args.schemes,
        },
        "relay": relay,
        "memory": memory,
        "comparison": compare(relay, memory),
    }


def _check(value: float, target: float, *, at_most: bool = False) -> dict[str, Any]:
    met = value <= target if at_most else value >= target
    return {"value": round(value, 3), "target": target, "met": met}


def compare(relay: dict[str, Any], memory: dict[str, Any] | None) -> dict[str, Any]:
    """Relay/direct ratios and each of the issue's targets, met or not.

    Each scheme's run measured its own direct figures, in alternate rounds
    with the relay's; each ratio uses the figures of the same run.
    """
    ratios: dict[str, Any] = {}
    for scheme, run in relay.items():
        for baseline in ("keepalive", "close"):
            for workload in WORKLOADS:
                figures = run["workloads"][workload.name]
                ours, theirs = figures["relay"], figures[f"direct_{baseline}"]
                ratios[f"{scheme}/{baseline}/{workload.name}"] = {
                    "rps": ours["rps"] / theirs["rps"],
                    "added_p50_ms": ours["p50_ms"] - theirs["p50_ms"],
                }

    targets: dict[str, Any] = {}
    for scheme, target in (("ws", TARGET_RATIO_WS), ("wss", TARGET_RATIO_WSS)):
        if scheme not in relay:
            continue
        ratio = ratios[f"{scheme}/keepalive/json_c32"]["rps"]
        targets[f"ratio_c32_{scheme}"] = _check(ratio, target)
        added = ratios[f"{scheme}/keepalive/json_c1"]["added_p50_ms"]
        targets[f"added_p50_ms_c1_{scheme}"] = _check(
            added, TARGET_ADDED_P50_MS, at_most=True
        )
        for name in ("get_1mib_c1", "post_1mib_c1"):
            rate = relay[scheme]["workloads"][name]["relay"]["mb_per_s"]
            targets[f"mb_per_s_{name}_{scheme}"] = _check(rate, TARGET_MB_PER_S)
    if memory is not None:
        targets["hub_kib_per_idle_session_wss"] = _check(
            memory["kib_per_session"], TARGET_SESSION_KIB, at_most=True
        )
    return {"baseline": "keepalive", "ratios": ratios, "targets": targets}


def report(results: dict[str, Any]) -> None:
    """The figures as a few readable tables on stdout."""
    print(
        f"{'workload':<14}{'path':<22}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'MB/s':>8}   CPU ms/request: hub|client, agent, origin"
    )
    for workload in WORKLOADS:
        for scheme, run in results["relay"].items():
            for path, row in run["workloads"][workload.name].items():
                cpu = " ".join(
                    f"{value:6.3f}" for value in row["cpu_ms_per_request"].values()
                )
                print(
                    f"{workload.name:<14}{f'{scheme}: {path}':<22}{row['rps']:>8.0f}"
                    f"{row['p50_ms']:>8.3f}{row['p99_ms']:>8.2f}"
                    f"{row['mb_per_s']:>8.1f}   {cpu}"
                )
    print()
    for scheme, figures in results["relay"].items():
        print(
            f"relay {scheme}: hub VmHWM {figures['hub_vmhwm_kib'] / 1024:.1f} MiB,"
            f" agent VmHWM {figures['agent_vmhwm_kib'] / 1024:.1f} MiB"
            f" ({figures['agent_vmhwm_after_probe_kib'] / 1024:.1f} MiB after"
            f" {figures['probe_body_mib']} MiB responses)"
        )
    memory = results["memory"]
    if memory is not None:
        print(
            f"hub over wss: {memory['kib_per_session']:.1f} KiB per idle session"
            f" with {memory['sessions']} sessions (second half:"
            f" {memory['kib_per_session_second_half']:.1f} KiB)"
        )
    print()
    for key, value in results["comparison"]["ratios"].items():
        if "/keepalive/" in key:
            print(
                f"{key:<32} relay/direct {value['rps']:.2f}"
                f"  added p50 {value['added_p50_ms']:+.3f} ms"
            )
    print()
    for key, check in results["comparison"]["targets"].items():
        verdict = "met" if check["met"] else "NOT met"
        print(f"{key:<36} {check['value']:>10} (target {check['target']}) {verdict}")


def _schemes(text: str) -> list[str]:
    """``ws``, ``wss``, ``ws,wss`` or ``none`` as the list of relay runs."""
    schemes = [scheme for scheme in text.split(",") if scheme and scheme != "none"]
    unknown = set(schemes) - {"ws", "wss"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scheme {sorted(unknown)[0]!r}")
    return schemes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--output", default="bench-results.json")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=1.0, help="s per round")
    parser.add_argument("--warmup", type=float, default=0.5, help="s, not counted")
    parser.add_argument("--sessions", type=int, default=1000, help="0 to skip")
    parser.add_argument("--probe-mib", type=int, default=12)
    parser.add_argument(
        "--schemes",
        type=_schemes,
        default=["ws", "wss"],
        help="the relay runs to make: ws, wss, ws,wss (the default) or none",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 0.1, 0.0
        args.sessions, args.probe_mib = 10, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as temp:
        workdir = Path(temp)
        make_certificates(workdir)
        with open(workdir / "children.log", "wb") as log:
            try:
                results = trio.run(run_all, args, workdir, log)
            except BaseException:
                log.flush()
                sys.stderr.write((workdir / "children.log").read_text())
                raise
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
