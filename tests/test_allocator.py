"""The allocator setting of the relay's processes (``_allocator``).

The churn is the agent's when it relays a large answer: 256 KiB read from a
socket, cut into 64 KiB pieces, a few hundred KiB live at once, all freed
before the next read. It runs in a child process, so that this one's
allocator is left as it was and the page faults counted are the churn's.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from trustelem_relay._allocator import keep_large_buffers

CHURN = """
import ctypes, json, os, resource
from trustelem_relay._allocator import (
    _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, keep_large_buffers
)
fd = os.open("/dev/zero", os.O_RDONLY)
def churn(reads):
    for _ in range(reads):
        data = os.read(fd, 256 * 1024)
        view = memoryview(data)
        pieces = [bytes(view[i : i + 65536]) for i in range(0, len(data), 65536)]
        del view, data
        joined = b"".join(pieces)
        del pieces, joined
def faults(reads):
    churn(20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn(reads)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# glibc's first thresholds (128 KiB both), fixed: what a process has before
# any large block is freed, whatever this one ran before.
mallopt = ctypes.CDLL(None).mallopt
first = all(
    mallopt(name, 128 * 1024) == 1 for name in (_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD)
)
result = {"first": first, "faults_first": faults(400)}
result["kept"] = keep_large_buffers()
result["faults_kept"] = faults(400)
print(json.dumps(result))
"""

#: 400 reads of 256 KiB touch 25,600 pages; a warm heap needs none anew.
READS_PAGES = 400 * 64


def _churn(**environ: str) -> dict[str, object]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MALLOC_") and name != "GLIBC_TUNABLES"
    }
    done = subprocess.run(
        [sys.executable, "-c", CHURN],
        capture_output=True,
        text=True,
        check=True,
        env=env | environ,
        timeout=60,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_large_buffers_come_back_without_page_faults() -> None:
    # Linux with glibc, where the package is tested; a tunable of another
    # part of glibc does not count as the operator's choice.
    assert platform.libc_ver()[0] == "glibc"
    result = _churn(GLIBC_TUNABLES="glibc.pthread.rseq=0")
    assert result["first"] is True
    assert result["kept"] is True
    # Below the buffers' size, glibc maps each one anew, or gives the heap
    # back, and faults it in on every read; with the setting, never.
    faults_first, faults_kept = result["faults_first"], result["faults_kept"]
    assert isinstance(faults_first, int)
    assert isinstance(faults_kept, int)
    assert faults_first > READS_PAGES // 4
    assert faults_kept < READS_PAGES // 100


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
        {"GLIBC_TUNABLES": "glibc.pthread.rseq=0:glibc.malloc.arena_max=2"},
    ],
)
def test_an_operators_setting_is_left_alone(environ: dict[str, str]) -> None:
    assert keep_large_buffers(environ) is False
