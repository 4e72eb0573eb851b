"""The `llmray run` console: stage lines with step, loss, throughput and ETA; Ray's chatter kept off the
screen and in the stage's log.txt. Units without Ray, then the real CLI under a pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmray.tracking.console import ChatterFilter, Console, StageLine, is_chatter

# Lines of the kind the issue lists, as Ray 2.60 prints them into the driver's console.
CHATTER = [
    "\x1b[36m(TrainController pid=4242)\x1b[0m Failed to query Ray Train Controller actor state. State API may be "
    "temporarily unavailable. Continuing to monitor.",
    "(RayTrainWorker pid=77, ip=127.0.0.1) step 5 done [repeated 4x across cluster] (Ray deduplicates logs by "
    "default. Set RAY_DEDUP_LOGS=0 to disable log deduplication)",
    "(raylet) [2026-12-06 08:00:00,000 I 1 1] worker_pool.cc:500: Starting worker",
    "2026-12-06 08:00:00,123\tINFO worker.py:1918 -- Started a local Ray instance.",
    "2026-12-06 08:28:54,105\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled for "
    "this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    "[2026-12-06 08:29:18,677 E 20150 20150] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches("
    "ToxicityUDF))' and ID: 'b96' has constructor arguments in the object store and max_restarts > 0.",
    "/x/llmray/train/loop.py:95: RayDeprecationWarning: This API is deprecated and may be removed in future Ray "
    "releases.",
]
REAL = [
    "[llmray] ▶ base (pretrain) started",
    "(RayTrainWorker pid=77) Traceback (most recent call last):",
    "2026-12-06 08:00:00,123\tERROR worker.py:1 -- Something broke",
    "WARNING llmray.stage.base: 3 reward function calls failed",
]


def test_chatter_is_recognised_and_real_lines_are_not():
    assert all(is_chatter(line) for line in CHATTER)
    assert not any(is_chatter(line) for line in REAL)


def test_filter_routes_lines_and_warning_source_lines():
    shown, diverted = [], []
    f = ChatterFilter(io.StringIO(), shown.append, diverted.append)
    f.write(CHATTER[-1] + "\n  warnings.warn(\n" + REAL[0] + "\n" + CHATTER[0][:20])
    f.write(CHATTER[0][20:] + "\npartial")
    f.flush()
    assert shown == [REAL[0] + "\n", "partial"]
    assert diverted == [CHATTER[-1] + "\n", "  warnings.warn(\n", CHATTER[0] + "\n"]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_stage_line_step_loss_throughput_eta():
    line = StageLine("base", "pretrain", 30, started=0.0)
    line.update({"step": 0, "val_loss": 6.9}, now=2.0)
    line.update({"step": 10, "train_loss": 6.3, "tokens_per_s": 7624.4}, now=12.0)
    text = line.render(now=12.0)
    assert text.startswith("base (pretrain) · step 10/30 · val 6.9 · loss 6.3 · tok/s 7.62k")
    assert "elapsed 00:12" in text and "ETA 00:20" in text  # 10 steps in 10 s, 20 to go
    rl = StageLine("ppo", "ppo", 4, started=0.0)
    rl.update({"iteration": 0, "reward_mean": -0.07, "kl": 0.01}, now=5.0)
    rl.update({"iteration": 1, "reward_mean": 0.1, "kl": 0.02}, now=10.0)
    assert rl.render(10.0).startswith("ppo (ppo) · iter 2/4 · reward 0.1 · KL 0.02") and "ETA 00:10" in rl.render(10.0)


def test_curate_line_shows_docs_in_and_kept_so_far():
    line = StageLine("corpus", "curate", None, started=0.0)
    line.update({"event": "progress", "step": 12300, "docs_in": 12300, "docs_kept": 4100, "docs_removed": 8000,
                 "quarantined": 0, "docs_per_s": 1230.0}, now=5.0)
    assert line.render(10.0) == "corpus (curate) · 12.3k docs in → 4.10k kept · 1.23k docs/s · elapsed 00:10"
    line.update({"event": "progress", "step": 12500, "docs_in": 12500, "docs_kept": 4200, "quarantined": 7,
                 "docs_per_s": 1250.0}, now=6.0)
    assert "12.5k docs in → 4.20k kept · 7 quarantined" in line.render(11.0)
    assert line.step is None  # a progress record's step counts documents: no step/total on the line


def test_plain_console_prints_at_a_steady_interval():
    out, clock = io.StringIO(), Clock()
    c = Console(out, tty=False, interval_s=30, clock=clock)
    c.stage_started("base", "pretrain", 30, False)
    c.record("base", {"step": 5, "train_loss": 6.8})
    for _ in range(60):  # a minute of ticks, one a second
        clock.t += 1
        c.tick()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(x.startswith("[llmray]   base (pretrain) · step 5/30") for x in lines)
    assert "\r" not in out.getvalue()
    c.stage_finished("base", {"metrics": {}})
    clock.t += 60
    c.tick()
    assert len(out.getvalue().splitlines()) == 2  # nothing running, nothing printed


def test_tty_console_redraws_one_line_and_prints_messages_above():
    out, clock = io.StringIO(), Clock()
    c = Console(out, tty=True, clock=clock)
    c.stage_started("base", "pretrain", 30, False)
    c.record("base", {"step": 5, "train_loss": 6.8})
    c.tick()
    c.echo("[llmray] hello")
    text = out.getvalue()
    assert "\r\x1b[2K[llmray] hello\nbase (pretrain) · step 5/30" in text
    assert text.count("\n") == 1  # the live line never scrolls


TMETRICS_PIPE = """
name: con
workdir: {workdir}
ray: {{num_cpus: 1, object_store_mb: 128}}
tracking: {{mlflow: false, console_interval_s: 1}}
stages:
  a: {{kind: tmetrics, steps: 6, pause_s: 0.5}}
"""

RUNNER = ("import sys; from llmray.stages import STAGES; STAGES['tmetrics'] = 'test_tracking'; "
          "from llmray.cli import main; sys.exit(main(sys.argv[1:]))")


def _cli(tmp_path: Path, tty: bool, extra: tuple = ()) -> tuple[int, str]:
    """Run `llmray run` on the tmetrics pipeline; stdout+stderr on a pseudo-terminal or a pipe."""
    pipe = tmp_path / "p.yaml"
    pipe.write_text(TMETRICS_PIPE.format(workdir=tmp_path / "runs"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "COLUMNS": "200"}
    cmd = [sys.executable, "-c", RUNNER, "run", str(pipe), *extra]
    if not tty:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        return p.returncode, p.stdout + p.stderr
    primary, secondary = pty.openpty()
    p = subprocess.Popen(cmd, env=env, stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL)
    os.close(secondary)
    chunks, deadline = [], time.time() + 240
    while time.time() < deadline:
        ready, _, _ = select.select([primary], [], [], 1)
        if ready:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif p.poll() is not None:
            break
    os.close(primary)
    return p.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.integration  # runs `llmray run` (the runner starts Ray)
def test_cli_console_under_a_pseudo_terminal(tmp_path):
    rc, out = _cli(tmp_path, tty=True)
    assert rc == 0, out
    assert "\r\x1b[2K" in out  # the live line is redrawn in place
    live = [seg for seg in re.split(r"[\r\n]", out) if seg.startswith("\x1b[2Ka (tmetrics) · step")]
    assert live and any(re.search(r"step \d/6 · loss [\d.]+ · tok/s [\d.]+ · elapsed 00:0\d · ETA 00:0\d", s)
                        for s in live), out
    assert "[llmray] ✓ a (tmetrics) completed" in out
    shown = [line for line in re.split(r"[\r\n]", out) if is_chatter(line.replace("\x1b[2K", ""))]
    assert not shown, shown  # Ray's chatter went to the logs
    log = (tmp_path / "runs" / "con" / "ray.log")
    assert log.exists() and "Started a local Ray instance" in log.read_text()


@pytest.mark.slow
def test_cli_console_plain_and_verbose(tmp_path):
    rc, out = _cli(tmp_path, tty=False)
    assert rc == 0 and "\r" not in out, out
    assert re.search(r"^\[llmray\]   a \(tmetrics\) · step \d/6 .* ETA", out, re.M), out
    assert not [line for line in out.splitlines() if is_chatter(line)]
    rc, out = _cli(tmp_path, tty=False, extra=("--verbose", "--force", "a"))
    assert rc == 0 and "Started a local Ray instance" in out
