"""What a stage's `run` receives (StageContext) and returns (StageResult).

The runner builds the context: a fresh staging folder for outputs (renamed into place
only after success), a work folder that survives a failed attempt of the same
fingerprint (checkpoints, so a rerun resumes; on the object store when `workdir` is a URI:
`work_remote`), the completed input stages, and a logger that writes to the console and to
`<stage>/log.txt`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmray.tracking import notify


@dataclass
class StageOutput:
    """A completed input stage, as seen by the stage that reads it."""

    name: str
    kind: str
    dir: Path
    manifest: dict

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    @property
    def outputs(self) -> dict:
        return self.manifest.get("outputs", {})

    def path(self, key: str) -> Path:
        """The absolute path of one of the stage's declared outputs (`outputs[key]`)."""
        if key not in self.outputs:
            raise KeyError(f"stage {self.name!r} ({self.kind}) has no output {key!r}; it has {sorted(self.outputs)}")
        return self.dir / self.outputs[key]


@dataclass
class StageContext:
    name: str
    kind: str
    fingerprint: str
    run_dir: Path
    out_dir: Path
    work_dir: Path
    inputs: dict[str, list[StageOutput]]
    pipeline: Any
    log: logging.Logger
    extra: dict = field(default_factory=dict)
    # With an object-store workdir: the work folder on the store (llmray.storage.Remote: fs + path),
    # where Ray Train keeps checkpoints so any machine can resume them. None: work_dir is the place.
    work_remote: Any = None

    def input(self, field_name: str) -> StageOutput:
        """The single stage referenced by a config field."""
        refs = self.inputs.get(field_name) or []
        if len(refs) != 1:
            raise KeyError(f"stage {self.name!r}: field {field_name!r} references {len(refs)} stages, expected 1")
        return refs[0]

    def has_input(self, field_name: str) -> bool:
        return bool(self.inputs.get(field_name))

    def metrics_writer(self, filename: str = "metrics.jsonl") -> MetricsWriter:
        return MetricsWriter(self.out_dir / filename)


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # key -> path relative to the stage folder


class MetricsWriter:
    """Appends one JSON object per logged step to a metrics.jsonl file: the one place stages log metrics.

    The file is what experiment tracking and the console read (llmray.tracking tails it from the
    runner's process), so a writer never talks to a tracking server; in the runner's own process a
    write also wakes the tracker, so the record is forwarded at once rather than at the next poll."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
        notify()


class FixedCost:
    """Seconds a stage spends outside its measured work: start-up (processes, actors, model loads),
    evaluation, export, checkpoints. Stages return `metrics()` as the `fixed_cost` entry of their
    manifest metrics, so a regression in any of them shows in the run report.

        cost = FixedCost()              # the clock starts: wall = now - this
        with cost.phase("startup"): ...
        metrics["fixed_cost"] = cost.metrics(work_s=seconds of the measured steps)

    Work that runs beside other work (one Ray task per model, a guardrail trained on the driver
    meanwhile) is given as wall-clock spans instead, `cost.work(start, end)` with `time.time()` values
    from any process of the node; `metrics()` then counts the time at least one span covers, once.
    """

    def __init__(self):
        import time

        self.t0, self.parts, self.spans = time.perf_counter(), {}, []
        self.t0_wall = time.time()  # the same instant on the wall clock, for `work` spans

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    def phase(self, name: str):
        """A context manager adding its duration to `name`."""
        import contextlib
        import time

        @contextlib.contextmanager
        def timed():
            t = time.perf_counter()
            try:
                yield
            finally:
                self.add(name, time.perf_counter() - t)

        return timed()

    def work(self, start: float, end: float) -> None:
        """A span of measured work, in wall-clock seconds (`time.time()`), possibly overlapping others."""
        if end > start:
            self.spans.append((float(start), float(end)))

    def work_s(self, until: float | None = None) -> float:
        """Seconds covered by at least one `work` span (overlaps once) from the start (to `until`, wall clock)."""
        total, reach = 0.0, self.t0_wall
        for start, end in sorted(self.spans):
            start, end = max(start, reach), end if until is None else min(end, until)
            if end > start:
                total, reach = total + end - start, end
        return total

    def uncovered(self, until: float | None = None) -> float:
        """Seconds from the start to `until` (wall clock; default: the first `work` span) that no span covers:
        e.g. waiting for models to load, less what other work (a guardrail trained meanwhile) hid of it."""
        if until is None:  # spans that ended before this stage started (a reused result) are not its work
            until = min((max(s, self.t0_wall) for s, e in self.spans if e > self.t0_wall), default=self.t0_wall)
        return max(0.0, until - self.t0_wall - self.work_s(until))

    def metrics(self, work_s: float | None = None) -> dict:
        """{`<phase>_s`, `wall_s`, and with `work_s` (or `work` spans) also `work_s` and `other_s` = wall -
        work - phases}."""
        import time

        if work_s is None and self.spans:
            work_s = self.work_s()
        wall = time.perf_counter() - self.t0
        out = {f"{k}_s": round(v, 3) for k, v in self.parts.items()}
        out["wall_s"] = round(wall, 3)
        if work_s is not None:
            out["work_s"] = round(work_s, 3)
            out["other_s"] = round(wall - work_s - sum(self.parts.values()), 3)
        return out
