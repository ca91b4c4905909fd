"""Run a module under cProfile, timing CPU rather than wall-clock time.

``python benchmarks/profiled.py OUT -m MODULE ARGS...`` runs ``MODULE`` as
``python -m`` would and writes the profile to ``OUT`` when it exits, even on
SIGTERM (which is turned into a normal exit). The clock is the process's CPU
time: on a busy machine a process is often runnable but not running, and a
wall-clock profile would charge that wait to whatever call happened to be
under way (a socket send that woke the peer, typically).

``hub_side.py --profile DIR`` uses it for the agent and profiles itself the
same way; read the results with ``python -m pstats DIR/agent.prof``.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
import time
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


def run_profiled(out: str, function: Callable[[], _T]) -> _T:
    """Call ``function`` under a CPU-time profiler; write the stats to ``out``."""
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        return function()
    finally:
        profiler.disable()
        profiler.dump_stats(out)


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        print("usage: profiled.py OUT -m MODULE [ARGS...]", file=sys.stderr)
        return 2
    out, module = sys.argv[1], sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]

    def run() -> None:
        runpy.run_module(module, run_name="__main__", alter_sys=True)

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run_profiled(out, run)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
