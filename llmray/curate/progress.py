"""Live progress of a curate run: documents read, kept, removed and quarantined so far.

Data flow. Two count taps join the Ray Data plan (`tap`, a map_batches over whole Arrow blocks that
passes each block on unchanged, with no conversion and no re-batching, so it can fuse with its
neighbours, the read included): one right after the read (documents in, quarantined at
read), one before the final barrier (rows out of the last operator: kept or removed). Each batch's
counts go, fire-and-forget, to one `ProgressCounter` actor (no CPU reserved). A driver thread
(`CurateProgress`) reads the actor every `INTERVAL_S` and, when the counts moved, appends a record
to the stage's metrics.jsonl:

  {"event": "progress", "step": docs_in, "docs_in", "docs_kept", "docs_removed", "quarantined",
   "docs_per_s", "elapsed_s"}

The runner's tracker tails that file (llmray.tracking): the console shows the counts while the stage
runs, and the tracking backends get them as metrics, indexed by documents read. The last record is
written from the stage's exact accounting (the taps' last calls may still be in flight).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pyarrow.compute as pc

from llmray.curate.dedup import make_actors

INTERVAL_S = 1.0  # how often the driver reads the counter (a record only when the counts moved)


class ProgressCounter:
    """Sums the counts the taps send (a Ray actor, made by dedup.make_actors)."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.first_in: float | None = None  # wall clock of the first block read: the plan's work starts

    def add(self, counts: dict, at: float | None = None) -> None:
        self.counts.update(counts)
        if at is not None:
            self.first_in = at if self.first_in is None else min(self.first_in, at)

    def get(self) -> dict:
        return dict(self.counts)

    def first_read(self) -> float | None:
        return self.first_in


def _count(drop, value: str) -> int:
    return pc.sum(pc.equal(drop, value)).as_py() or 0  # None for an empty block


def tap(batch, counter, where: str):
    """Count the block's rows (an Arrow table) for the progress line; the block goes on unchanged."""
    drop = batch.column("_drop")
    quarantined = _count(drop, "quarantine")
    if where == "in":
        counts = {"docs_in": len(drop), "quarantined": quarantined}
    else:
        kept = _count(drop, "")
        counts = {"docs_kept": kept, "docs_removed": len(drop) - kept - quarantined}
    # fire-and-forget: a batch never waits on the driver's bookkeeping
    counter.add.remote(counts, time.time() if where == "in" else None)
    return batch


class CurateProgress:
    """Taps a curate plan and writes progress records from a driver thread while it runs."""

    def __init__(self, curator, writer):
        self.cur, self.writer = curator, writer
        (self.counter,) = make_actors(ProgressCounter, 1)
        curator.actors.append(self.counter)  # killed with the dedup shards in Curator.close
        self.t0 = time.time()
        self.last: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="llmray-curate-progress", daemon=True)

    def tap_in(self, ds):
        return self.cur._map(ds, tap, arrow_blocks=True, counter=self.counter, where="in")

    def tap_out(self, ds):
        return self.cur._map(ds, tap, arrow_blocks=True, counter=self.counter, where="out")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _record(self, counts: dict) -> dict:
        elapsed = time.time() - self.t0
        rec = {"event": "progress", "step": int(counts.get("docs_in", 0))}
        for key in ("docs_in", "docs_kept", "docs_removed", "quarantined"):
            rec[key] = int(counts.get(key, 0))
        rec["docs_per_s"] = round(rec["docs_in"] / max(elapsed, 1e-9), 1)
        rec["elapsed_s"] = round(elapsed, 2)
        return rec

    def _poll(self) -> None:
        import ray

        while not self._stop.wait(INTERVAL_S):
            try:
                counts = ray.get(self.counter.get.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - progress is best effort; the stage's accounting is exact
                continue
            if counts and counts != self.last:
                self.last = counts
                self.writer.write(self._record(counts))

    def first_read_at(self) -> float | None:
        """When the first block of records was read (wall clock; None if none was): the end of start-up."""
        import ray

        return ray.get(self.counter.first_read.remote(), timeout=30)

    def finish(self, metrics: dict) -> None:
        """The last record, from the stage's exact figures (manifest metrics)."""
        self.__exit__()
        docs_in, out, quarantined = metrics["docs_in"], metrics["docs_out"], metrics.get("quarantined", 0)
        removed = sum((metrics.get("removed") or {}).values())
        self.writer.write(self._record({"docs_in": docs_in, "docs_kept": out, "quarantined": quarantined,
                                        "docs_removed": removed}))
