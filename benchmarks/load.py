"""Workloads, timed rounds and their statistics, whatever the path measured.

A *path* is anything that can perform one request: an async callable taking
the worker's index and the workload, returning the number of response body
bytes it received. :func:`measure` runs a workload over paths: a warm-up
round that is thrown away, then ``rounds`` rounds of ``duration`` seconds in
which ``concurrency`` workers send requests back to back. Each round gives
requests/s, MB/s (request and response bodies, 10^6 bytes) and the p50/p99
of its latencies; the figures reported are the medians of those over the
rounds. The paths take turns round by round, so that a change in the load
of the machine touches them alike.

A *probe*, when given, reads the CPU time each process of interest has used
so far; around every round it gives the CPU milliseconds per request of each
process, a figure that depends far less than latency on what else the
machine is doing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import trio
from origin import JSON_BODY

MIB = 1024 * 1024


@dataclass(frozen=True)
class Workload:
    """One kind of request, sent by ``concurrency`` workers at once."""

    name: str
    method: str
    path: str
    body: bytes
    concurrency: int
    #: The response body's size, checked on every request.
    response_size: int


WORKLOADS = (
    Workload("json_c1", "POST", "/json", JSON_BODY, 1, len(JSON_BODY)),
    Workload("json_c32", "POST", "/json", JSON_BODY, 32, len(JSON_BODY)),
    Workload("get_1mib_c1", "GET", f"/bytes/{MIB}", b"", 1, MIB),
    Workload(
        "post_1mib_c1", "POST", "/sink", bytes(MIB), 1, len(b'{"received":%d}' % MIB)
    ),
)

#: Performs one request for worker ``index``; returns the body size received.
Requester = Callable[[int, Workload], Awaitable[int]]

#: CPU seconds used so far, by process name.
Probe = Callable[[], dict[str, float]]


@dataclass(frozen=True)
class Round:
    requests: int
    seconds: float
    latencies: list[float]
    bytes_moved: int
    #: CPU seconds each probed process used during the round.
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes_moved / self.seconds / 1e6


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of the sorted values lie."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def run_round(
    request: Requester, workload: Workload, duration: float, probe: Probe | None
) -> Round:
    """Send requests back to back from every worker for ``duration`` s."""
    latencies: list[float] = []
    moved = 0
    clock = time.perf_counter
    cpu_before = probe() if probe is not None else {}
    started = clock()
    deadline = started + duration
    finished = started

    async def worker(index: int) -> None:
        nonlocal moved, finished
        sent = len(workload.body)
        while clock() < deadline:
            begin = clock()
            received = await request(index, workload)
            end = clock()
            if received != workload.response_size:
                raise RuntimeError(
                    f"{workload.name}: {received} body bytes where "
                    f"{workload.response_size} were expected"
                )
            latencies.append(end - begin)
            moved += sent + received
            finished = max(finished, end)

    async with trio.open_nursery() as nursery:
        for index in range(workload.concurrency):
            nursery.start_soon(worker, index)
    cpu: dict[str, float] = {}
    if probe is not None:
        cpu_after = probe()
        cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
    return Round(len(latencies), finished - started, latencies, moved, cpu)


async def measure(
    paths: Mapping[str, Requester],
    workload: Workload,
    *,
    rounds: int,
    duration: float,
    warmup: float,
    probe: Probe | None = None,
) -> dict[str, dict[str, object]]:
    """The summary of each path over ``rounds`` rounds, taking turns."""
    if warmup > 0:
        for request in paths.values():
            await run_round(request, workload, warmup, None)
    results: dict[str, list[Round]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, request in paths.items():
            results[name].append(await run_round(request, workload, duration, probe))
    return {name: summarise(rounds_) for name, rounds_ in results.items()}


def summarise(results: list[Round]) -> dict[str, object]:
    """The medians over rounds of each round's figures (latencies in ms),
    and the CPU milliseconds per request of each probed process."""
    med = statistics.median
    requests = sum(r.requests for r in results)
    cpu = {
        name: 1e3 * sum(r.cpu[name] for r in results) / requests
        for name in results[0].cpu
    }
    return {
        "rps": med(r.rps for r in results),
        "p50_ms": med(percentile(r.latencies, 0.50) for r in results) * 1e3,
        "p99_ms": med(percentile(r.latencies, 0.99) for r in results) * 1e3,
        "mb_per_s": med(r.mb_per_s for r in results),
        "cpu_ms_per_request": cpu,
        "requests": requests,
        "rounds": len(results),
    }
