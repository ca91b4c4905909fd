"""Child processes of the benchmark, and what /proc says about them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import IO

import trio

#: Where the package's CLI and the benchmark scripts are started from.
PYTHON = sys.executable


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` line of ``/proc/PID/status``, such as VmRSS or VmHWM."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"no {field} in /proc/{pid}/status")


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces; the fields after it do not.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def start_listening(
    argv: Sequence[str],
    *,
    stderr: IO[bytes] | int = subprocess.DEVNULL,
    timeout: float = 30.0,
) -> tuple[trio.Process, int]:
    """Start a process that prints ``listening on HOST:PORT``; return the port.

    The process's stdout is read until that line, then left alone (the
    programs started this way print nothing else).
    """
    process = await trio.lowlevel.open_process(
        list(argv), stdout=subprocess.PIPE, stderr=stderr
    )
    assert process.stdout is not None
    seen = b""
    try:
        with trio.fail_after(timeout):
            while b"\n" not in seen:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"{argv[1:3]} exited before listening")
                seen += chunk
    except BaseException:
        await stop(process)
        raise
    line = seen.split(b"\n", 1)[0].decode()
    if not line.startswith("listening on "):
        await stop(process)
        raise RuntimeError(f"unexpected first line from {argv[1:3]}: {line!r}")
    return process, int(line.rsplit(":", 1)[1])


async def stop(process: trio.Process, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not ended within ``grace``."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Write a file only its owner can read (connect.toml holds a secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
