"""The `llmray run` console: a live line per running stage, and Ray's chatter kept off the screen.

Data flow. The Tracker (tracking/tracker.py) tells the Console when a stage starts, each record a
stage writes to metrics.jsonl, when it ends, and ticks about once a second. The Console keeps a
`StageLine` per running stage (step/total, loss, throughput, RL reward and KL, curate's docs in and
kept so far) and
- on a terminal redraws one line per running stage in place (`\\r` + erase line), printing the
  runner's own messages above it;
- otherwise (job logs, CI, a pipe) prints a plain progress line per running stage every
  `tracking.console_interval_s` seconds.

`chatter_filtered()` swaps sys.stdout/sys.stderr for `ChatterFilter`s while the pipeline runs: Ray's
log monitor prints worker output into this process through them (ray._private.worker looks the
streams up at each print). Lines recognised as chatter (worker and raylet output, Ray's INFO log
lines, its dedup hints, deprecation warnings) go to the running stage's log.txt (or <run>/ray.log
between stages) instead of the screen; errors and everything else still show. `--verbose` skips
the filter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

# A line Ray's log monitor forwards: "(RayTrainWorker pid=123, ip=1.2.3.4) ...", "(raylet) ...",
# possibly wrapped in colour codes.
_FORWARDED = re.compile(r"^(?:\x1b\[[0-9;]*m)*\((?:raylet|autoscaler|gcs_server|[^)]*\bpid=\d+[^)]*)\)")
# Ray's own Python logger at INFO, and its C++ core's log lines ("[2026-12-06 08:29:18,677 I 20150 20150] x.cc:1: ...").
_RAY_LOG = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(?:INFO|DEBUG)\s|"
                      r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWD] \d+ \d+\])")
_WARNING = re.compile(r"\b(?:Deprecation|PendingDeprecation|Future|RayDeprecation|SADeprecation)Warning\b")
_NOISE = re.compile(
    r"Failed to query Ray Train Controller actor state|Ray deduplicates logs by default|"
    r"\[repeated \d+x across cluster\]|RAY_DEDUP_LOGS|Started a local Ray instance|"
    r"Connecting to existing Ray cluster|Tip: To disable|View detailed results here|"
    r"To visualize your results with TensorBoard|`ray\.train\.report`|ray\.train\.|RAY_TRAIN_V2_ENABLED|"
    r"Token authentication is enabled for this Ray cluster|Progress bars disabled\. To enable|"
    r"has constructor arguments in the object store and max_restarts > 0")
# Kept on screen even when forwarded by Ray: a failure is never chatter.
_REAL = re.compile(r"\b(?:ERROR|CRITICAL|Traceback|Error|Exception)\b")


def is_chatter(line: str) -> bool:
    """Whether a console line is Ray noise (kept in the log, off the screen)."""
    if _FORWARDED.match(line) or _NOISE.search(line):
        return not (_REAL.search(line) and not _NOISE.search(line))
    return bool(_RAY_LOG.match(line) or _WARNING.search(line))


class ChatterFilter:
    """A text stream that passes lines to `show` and diverts chatter to `divert`, line by line."""

    def __init__(self, real, show, divert):
        self.real, self.show, self.divert = real, show, divert
        self.buf = ""
        self._after_warning = False
        self.lock = threading.Lock()

    def write(self, s: str) -> int:
        with self.lock:
            self.buf += s
            *lines, self.buf = self.buf.split("\n")
            for line in lines:
                self._route(line + "\n")
        return len(s)

    def _route(self, line: str) -> None:
        # A warnings.warn() report is two lines: "file:line: XWarning: msg" and the indented source line.
        follow = self._after_warning and line.startswith("  ")
        self._after_warning = bool(_WARNING.search(line))
        (self.divert if follow or is_chatter(line) else self.show)(line)

    def flush(self) -> None:
        with self.lock:
            if self.buf:  # a prompt or a progress bar without a newline: not chatter we recognise
                self.show(self.buf)
                self.buf = ""
        self.real.flush()

    def isatty(self) -> bool:
        return self.real.isatty()

    def fileno(self) -> int:
        return self.real.fileno()

    def __getattr__(self, name):  # encoding, errors, buffer...: as the real stream
        return getattr(self.real, name)


def _interval(seconds: float | None) -> str:
    return "-" if seconds is None else tqdm.format_interval(max(0, seconds))


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1000 else tqdm.format_sizeof(x, divisor=1000).strip()


@dataclass
class StageLine:
    """What the console shows of one running stage."""

    name: str
    kind: str
    total: int | None
    started: float
    step: int | None = None
    first: tuple[int, float] | None = None  # (step, time) of the first record seen: the rate's origin
    figures: dict = field(default_factory=dict)
    docs: dict = field(default_factory=dict)  # curate's latest progress record (curate/progress.py)

    def update(self, record: dict, now: float) -> None:
        if record.get("event") == "progress":  # its `step` counts documents, not steps
            self.docs = record
            return
        step = record.get("step", record.get("iteration"))
        if isinstance(step, (int, float)) and not isinstance(step, bool):
            self.step = int(step) + (1 if "iteration" in record and "step" not in record else 0)
            if self.first is None:
                self.first = (self.step, now)
        for key, label in (("train_loss", "loss"), ("loss", "loss"), ("val_loss", "val"),
                           ("tokens_per_s", "tok/s"), ("rollout_tokens_per_s", "tok/s"),
                           ("reward_mean", "reward"), ("kl", "KL"), ("docs_in", "docs in"), ("docs_out", "docs out")):
            if isinstance(record.get(key), (int, float)):
                self.figures[label] = record[key]

    def eta(self, now: float) -> float | None:
        if not (self.total and self.first and self.step is not None and self.step > self.first[0]):
            return None
        rate = (self.step - self.first[0]) / max(now - self.first[1], 1e-9)
        return (self.total - self.step) / rate

    def render(self, now: float) -> str:
        unit = "iter" if self.kind in ("ppo", "grpo") else "step"
        parts = [f"{self.name} ({self.kind})"]
        if self.docs:
            d = self.docs
            parts.append(f"{_num(d.get('docs_in', 0))} docs in → {_num(d.get('docs_kept', 0))} kept")
            if d.get("quarantined"):
                parts.append(f"{_num(d['quarantined'])} quarantined")
            parts.append(f"{_num(d.get('docs_per_s', 0))} docs/s")
        if self.step is not None:
            parts.append(f"{unit} {self.step}/{self.total}" if self.total else f"{unit} {self.step}")
        parts += [f"{label} {_num(v)}" for label, v in self.figures.items()]
        parts.append(f"elapsed {_interval(now - self.started)}")
        if self.total:
            parts.append(f"ETA {_interval(self.eta(now))}")
        return " · ".join(parts)


class Console:
    """Live stage lines on a terminal, steady plain progress lines elsewhere (a Tracker listener)."""

    def __init__(self, stream=None, tty: bool | None = None, interval_s: float = 30.0, clock=time.monotonic):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s, self.clock = interval_s, clock
        self.lines: dict[str, StageLine] = {}
        self.drawn = 0  # live lines currently on screen (terminal mode)
        self.last_plain = 0.0
        self.lock = threading.RLock()

    # ------------------------------------------------------------ output

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[2K" + "\x1b[1A\x1b[2K" * (self.drawn - 1))
            self.drawn = 0

    def _draw(self) -> None:
        now = self.clock()
        rendered = [line.render(now) for line in self.lines.values()]
        if rendered:
            self.stream.write("\n".join(rendered))
        self.drawn = len(rendered)
        self.stream.flush()

    def write(self, text: str) -> None:
        """Print text (whole lines) above the live lines."""
        with self.lock:
            if self.tty:
                self._clear()
            self.stream.write(text)
            if self.tty:
                self._draw()
            self.stream.flush()

    def echo(self, msg: str) -> None:
        self.write(msg + "\n")

    # ------------------------------------------------------------ tracker events

    def stage_started(self, name: str, kind: str, total: int | None, resumed: bool) -> None:
        with self.lock:
            self.lines[name] = StageLine(name, kind, total, self.clock())
            self.refresh()

    def record(self, name: str, record: dict) -> None:
        with self.lock:
            if name in self.lines:
                self.lines[name].update(record, self.clock())

    def stage_finished(self, name: str, manifest: dict) -> None:
        with self.lock:
            line = self.lines.pop(name, None)
            m = manifest.get("metrics") or {}
            if line is not None and "docs_in" in m:  # curate reports its funnel at the end
                self.echo(f"[llmray]   {name}: docs in {m['docs_in']} -> out {m.get('docs_out')}")
            elif self.tty:
                self._clear()
                self._draw()

    def tick(self) -> None:
        with self.lock:
            now = self.clock()
            if self.tty:
                self._clear()
                self._draw()
            elif self.lines and now - self.last_plain >= self.interval_s:
                self.last_plain = now
                for line in self.lines.values():
                    self.stream.write(f"[llmray]   {line.render(now)}\n")
                self.stream.flush()

    def refresh(self) -> None:
        if self.tty:
            self._clear()
            self._draw()

    def close(self) -> None:
        with self.lock:
            if self.tty:
                self._clear()
                self.stream.flush()


class Diverter:
    """Where chatter goes: the running stage's log.txt (its logger's file), else <run>/ray.log."""

    def __init__(self, root: Path, console: Console):
        self.root, self.console = root, console
        self.count = 0

    def __call__(self, line: str) -> None:
        self.count += 1
        for name in list(self.console.lines)[-1:]:
            for h in logging.getLogger(f"llmray.stage.{name}").handlers:
                if isinstance(h, logging.FileHandler) and h.stream is not None:
                    with contextlib.suppress(ValueError):  # closed between the check and the write
                        h.acquire()
                        try:
                            h.stream.write(line)
                        finally:
                            h.release()
                        return
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "ray.log").open("a", encoding="utf-8") as f:
            f.write(line)


@contextlib.contextmanager
def chatter_filtered(console: Console, root: Path, verbose: bool = False):
    """While the block runs, Ray's chatter on stdout/stderr goes to the logs, the rest to the console."""
    if verbose:
        yield None
        return
    # Ray Data's progress bars would fight the live lines; the stage lines say where a stage is.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    divert = Diverter(root, console)
    real_out, real_err = sys.stdout, sys.stderr

    def to_err(text: str) -> None:
        with console.lock:
            if console.tty:
                console._clear()
            real_err.write(text)
            real_err.flush()
            if console.tty:
                console._draw()

    sys.stdout = ChatterFilter(real_out, console.write, divert)
    sys.stderr = ChatterFilter(real_err, to_err, divert)
    # The root logger's handler holds the stream it was made with: point it at the filter too.
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    handlers = [h for lg in loggers for h in lg.handlers if type(h) is logging.StreamHandler
                and h.stream in (real_out, real_err)]
    old = [h.setStream(sys.stderr if h.stream is real_err else sys.stdout) for h in handlers]
    try:
        yield divert
    finally:
        for h, stream in zip(handlers, old, strict=True):
            h.setStream(stream)
        for f in (sys.stdout, sys.stderr):
            f.flush()
        sys.stdout, sys.stderr = real_out, real_err
