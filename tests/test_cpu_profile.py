"""tests/support/cpu_profile.py: the hook records a test's wall time and the machine's CPU time meanwhile,
and the report sums them per file and gives the packed-on-N-cores floor."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import cpu_profile


def _profiled(nodeid: str, seconds: float, busy: bool) -> None:
    hook = cpu_profile.pytest_runtest_protocol(SimpleNamespace(nodeid=nodeid), None)
    next(hook)
    end = time.time() + seconds
    while time.time() < end:
        if not busy:
            time.sleep(0.01)
    try:
        next(hook)
    except StopIteration:
        pass


def test_the_hook_sees_a_busy_test_and_the_report_sums_it(tmp_path, monkeypatch):
    path = tmp_path / "cpu.jsonl"
    monkeypatch.setenv("LLMRAY_CPU_PROFILE", str(path))
    _profiled("tests/test_a.py::test_spins", 0.6, busy=True)
    _profiled("tests/test_a.py::test_sleeps", 0.3, busy=False)
    spin, nap = (json.loads(line) for line in path.read_text().splitlines())
    assert spin["id"] == "tests/test_a.py::test_spins" and spin["wall"] >= 0.6
    # The machine's CPU time includes this process spinning (and whatever else ran meanwhile).
    assert spin["busy_cpu_s"] >= 0.4 and abs(spin["cores"] - spin["busy_cpu_s"] / spin["wall"]) <= 0.02
    assert nap["wall"] >= 0.3
    text = cpu_profile.report(str(path), cores=2)
    wall, busy = spin["wall"] + nap["wall"], spin["busy_cpu_s"] + nap["busy_cpu_s"]
    assert text.startswith(f"2 tests: wall {wall:.0f} s, busy {busy:.0f} CPU-s")
    assert f">= {busy / 2:.0f} s" in text.splitlines()[0]
    assert f"{wall:7.1f} {busy:7.1f}" in text and "tests/test_a.py::test_sleeps" in text
