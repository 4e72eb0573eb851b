"""Where the suite's CPU goes: per test, its wall time and the CPU time the whole machine spent meanwhile.

A test's own process is not enough on this project: its work runs in Ray workers, Serve replicas, vLLM
engines and CLI subprocesses. So the figure is the machine's busy time from /proc/stat (all processes,
user + system), read before setup and after teardown. Run the suite alone (nothing else on the machine),
serially:

    LLMRAY_CPU_PROFILE=/tmp/cpu.jsonl make test        # tests/conftest.py installs the hook
    .venv/bin/python tests/support/cpu_profile.py /tmp/cpu.jsonl

One JSON line per test {"id", "wall", "busy_cpu_s", "cores"}; the report gives the totals and the floor
packed on N cores, the files with the most CPU, and the tests with the most idle core-seconds (wall x
cores - busy: waiting, or one busy core of two). Linux only (/proc/stat).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict

import pytest


def _busy_and_total() -> tuple[int, int]:
    """Machine-wide busy and total CPU ticks since boot (the first line of /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    t0, (b0, _) = time.time(), _busy_and_total()
    yield
    wall, busy = time.time() - t0, (_busy_and_total()[0] - b0) / os.sysconf("SC_CLK_TCK")
    with open(os.environ["LLMRAY_CPU_PROFILE"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": item.nodeid, "wall": round(wall, 2), "busy_cpu_s": round(busy, 2),
                            "cores": round(busy / max(wall, 1e-6), 2)}) + "\n")


def report(path: str, cores: int | None = None, top: int = 20) -> str:
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    cores = cores or os.cpu_count() or 1
    wall, busy = sum(r["wall"] for r in rows), sum(r["busy_cpu_s"] for r in rows)
    out = [f"{len(rows)} tests: wall {wall:.0f} s, busy {busy:.0f} CPU-s = {busy / max(wall, 1e-9):.2f} of "
           f"{cores} cores on average; perfectly packed on {cores} cores: >= {busy / cores:.0f} s"]
    files: dict = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        f = files[r["id"].split("::")[0]]
        f[0], f[1] = f[0] + r["wall"], f[1] + r["busy_cpu_s"]
    out.append("\nfiles by CPU (wall s, CPU-s, cores):")
    out += [f"  {w:7.1f} {b:7.1f} {b / max(w, 1e-9):5.2f}  {name}"
            for name, (w, b) in sorted(files.items(), key=lambda kv: -kv[1][1])[:top]]
    out.append("\ntests by idle core-seconds (wall s, cores, idle core-s):")
    out += [f"  {r['wall']:7.1f} {r['cores']:5.2f} {cores * r['wall'] - r['busy_cpu_s']:7.1f}  {r['id']}"
            for r in sorted(rows, key=lambda r: r["busy_cpu_s"] - cores * r["wall"])[:top]]
    return "\n".join(out)


if __name__ == "__main__":
    print(report(sys.argv[1]))
