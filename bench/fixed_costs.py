"""Side by side: the fixed cost of the same stages in two runs (before / after a change).

    .venv/bin/python bench/fixed_costs.py BEFORE AFTER [STAGE ...]

BEFORE and AFTER are run directories (<workdir>/<pipeline name>) or folders of copied manifests
(`<stage>.json`). For each stage present in both: wall time, measured work (steps, iterations, records,
generation) and fixed cost = wall - work (from `metrics.fixed_cost`; for a training manifest without one,
`elapsed_s` minus the logged step time, i.e. sum of step_time_s x steps per metrics.jsonl record), each
phase, and the after / before fixed-cost ratio.

A stage with no split at all (no `fixed_cost`, no logged steps: curate, tokenizer, eval, align and
constitution manifests written before they measured their work) counts its whole wall as fixed cost.
Comparing such a "before" with an "after" that does split would count the after's work out of one side
only, so such rows are marked `*` and two totals are printed: **like-for-like** (a stage without a split
on either side counts whole on both sides: the figure to compare) and **as reported** (each side's own
split: the after's fixed cost as the manifests now state it), and an **estimate** that gives such a "before"
the after's measured work (valid only where the change did not touch that stage's work). How the two runs
were made (same machine, same load) is up to the caller: bench/README.md "Fixed costs" says how its figures
were taken.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PHASES = ("startup_s", "data_s", "eval_s", "checkpoint_s", "export_s", "other_s")
COLS = ("wall_s", "work_s", "fixed_s", *PHASES)


def _manifest(root: Path, stage: str) -> tuple[dict, Path | None]:
    for man, log in ((root / stage / "manifest.json", root / stage / "metrics.jsonl"),
                     (root / f"{stage}.json", root / f"{stage}.metrics.jsonl")):
        if man.exists():
            return json.loads(man.read_text()), log if log.exists() else None
    return {}, None


def stage_cost(root: Path, stage: str) -> dict | None:
    """{"wall_s", "work_s", "fixed_s", "split", phases...} of one stage, or None when it has no manifest.
    `split` is False when nothing in the manifest measures the work (then work_s = 0, fixed_s = wall_s)."""
    man, log = _manifest(root, stage)
    if not man:
        return None
    fc = (man.get("metrics") or {}).get("fixed_cost")
    if fc and fc.get("work_s") is not None:
        return {**fc, "fixed_s": fc["wall_s"] - fc["work_s"], "split": True}
    work, prev, steps = 0.0, 0, False
    for line in (log.read_text().splitlines() if log else []):
        r = json.loads(line)
        if "step_time_s" in r and "step" in r:
            work, prev, steps = work + r["step_time_s"] * (r["step"] - prev), r["step"], True
    wall = float(man.get("elapsed_s") or 0.0)
    return {"wall_s": wall, "work_s": work, "fixed_s": wall - work, "split": steps}


def like_for_like(a: dict, b: dict) -> tuple[float, float]:
    """(before, after) fixed cost of one stage counted the same way on both sides: as measured when both
    sides split their wall, else the whole wall on both sides."""
    if a["split"] and b["split"]:
        return a["fixed_s"], b["fixed_s"]
    return a["wall_s"], b["wall_s"]


def estimated(a: dict, b: dict) -> tuple[float, float]:
    """(before, after) fixed cost with an unsplit "before" given the after's measured work (an estimate that
    holds only where the change left the stage's work alone); as `like_for_like` otherwise."""
    if b["split"] and not a["split"]:
        return a["wall_s"] - b["work_s"], b["fixed_s"]
    return like_for_like(a, b)


def compare(before: Path, after: Path, stages: list[str]) -> tuple[list, dict]:
    """Per-stage (name, before, after) rows and the totals {side: {col: s}, "lfl": [before, after], "est": ...}."""
    rows, total = [], {"before": {}, "after": {}, "lfl": [0.0, 0.0], "est": [0.0, 0.0]}
    for stage in stages:
        a, b = stage_cost(before, stage), stage_cost(after, stage)
        if a is None or b is None:
            continue
        rows.append((stage, a, b))
        for side, c in (("before", a), ("after", b)):
            for k in COLS:
                total[side][k] = total[side].get(k, 0.0) + (c.get(k) or 0.0)
        for key, fn in (("lfl", like_for_like), ("est", estimated)):
            x, y = fn(a, b)
            total[key][0] += x
            total[key][1] += y
    return rows, total


def _ratio(x: float | None, y: float | None) -> str:
    return f"x{y / x:.2f}" if x else "x nan"


def main(argv: list[str]) -> None:
    before, after = Path(argv[0]), Path(argv[1])
    stages = argv[2:] or sorted({p.stem.split(".")[0] for p in before.glob("*.json")} |
                                {p.parent.name for p in before.glob("*/manifest.json")})
    rows, total = compare(before, after, stages)
    print("stage".ljust(13) + "".join(c[:-2].rjust(17) for c in COLS))
    for stage, a, b in [*rows, ("TOTAL", total["before"], total["after"])]:
        cells = []
        for c in COLS:
            x, y = a.get(c), b.get(c)
            cells.append("–".rjust(17) if x is None or y is None else f"{x:7.1f}->{y:7.1f}".rjust(17))
        mark = "*" if stage != "TOTAL" and not (a["split"] and b["split"]) else " "
        print((stage + mark).ljust(13) + "".join(cells) + f"   fixed {_ratio(a.get('fixed_s'), b.get('fixed_s'))}")
    x, y = total["lfl"]
    unsplit = [s for s, a, b in rows if not (a["split"] and b["split"])]
    print(f"\nfixed cost, like-for-like (stages marked * counted whole on both sides: {', '.join(unsplit) or 'none'}): "
          f"{x:.1f} -> {y:.1f} s ({_ratio(x, y)})")
    print(f"fixed cost, as each side reports it (not comparable where marked *): {total['before']['fixed_s']:.1f} -> "
          f"{total['after']['fixed_s']:.1f} s ({_ratio(total['before']['fixed_s'], total['after']['fixed_s'])})")
    x, y = total["est"]
    print(f"fixed cost, estimated (a * stage's before = its wall less the after's work: only where the change left "
          f"its work alone): {x:.1f} -> {y:.1f} s ({_ratio(x, y)})")


if __name__ == "__main__":
    main(sys.argv[1:])
