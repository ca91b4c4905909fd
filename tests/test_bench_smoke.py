"""The benchmark still runs: ``benchmarks/relay_bench.py --quick`` end to end.

It starts real processes (the origin, the hub side, the agent, a standalone
hub) on 127.0.0.1 and writes its JSON; this test only checks that the run
succeeds and that the JSON has the figures docs/performance.md relies on,
not what they are (they depend on the machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "relay_bench.py"

WORKLOADS = {"json_c1", "json_c32", "get_1mib_c1", "post_1mib_c1"}
PATHS = {"direct_keepalive", "direct_close", "relay"}
FIGURES = {"rps", "p50_ms", "p99_ms", "mb_per_s", "cpu_ms_per_request"}


def test_quick_benchmark_writes_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(output.read_text())

    assert set(results["relay"]) == {"ws", "wss"}
    for run in results["relay"].values():
        assert set(run["workloads"]) == WORKLOADS
        for paths in run["workloads"].values():
            assert set(paths) == PATHS
            for figures in paths.values():
                assert set(figures) >= FIGURES
                assert figures["rps"] > 0
        for peak in ("hub_vmhwm_kib", "agent_vmhwm_kib", "agent_vmhwm_after_probe_kib"):
            assert run[peak] > 0

    memory = results["memory"]
    assert memory["scheme"] == "wss"
    assert memory["sessions"] > 0
    assert "kib_per_session" in memory

    targets = results["comparison"]["targets"]
    assert {
        "ratio_c32_ws",
        "ratio_c32_wss",
        "added_p50_ms_c1_ws",
        "added_p50_ms_c1_wss",
        "mb_per_s_get_1mib_c1_ws",
        "mb_per_s_post_1mib_c1_wss",
        "hub_kib_per_idle_session_wss",
    } <= set(targets)
    assert all({"value", "target", "met"} <= set(t) for t in targets.values())
    assert "relay/direct" in done.stdout
