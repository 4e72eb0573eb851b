"""Side by side: the fixed cost of the same stages in two runs (before / after a change).

    .venv/bin/python bench/fixed_costs.py BEFORE AFTER [STAGE ...]

BEFORE and AFTER are run directories (<workdir>/<pipeline name>) or folders of copied manifests
(`<stage>.json`). For each stage present in both: wall time, measured work (steps / iterations) and
fixed cost = wall - work (from `metrics.fixed_cost`; for a manifest without one, `elapsed_s` minus the
logged step time, i.e. sum of step_time_s x steps per metrics.jsonl record), each phase, and the
after / before ratio; then the totals. How the two runs were made (same machine, same load) is up to
the caller: bench/README.md "Fixed costs" says how its figures were taken.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PHASES = ("startup_s", "data_s", "eval_s", "checkpoint_s", "export_s", "other_s")


def _manifest(root: Path, stage: str) -> tuple[dict, Path | None]:
    for man, log in ((root / stage / "manifest.json", root / stage / "metrics.jsonl"),
                     (root / f"{stage}.json", root / f"{stage}.metrics.jsonl")):
        if man.exists():
            return json.loads(man.read_text()), log if log.exists() else None
    return {}, None


def stage_cost(root: Path, stage: str) -> dict | None:
    """{"wall_s", "work_s", "fixed_s", phases...} of one stage, or None when it has no manifest."""
    man, log = _manifest(root, stage)
    if not man:
        return None
    fc = (man.get("metrics") or {}).get("fixed_cost")
    if fc and fc.get("work_s") is not None:
        return {**fc, "fixed_s": fc["wall_s"] - fc["work_s"]}
    work, prev = 0.0, 0
    for line in (log.read_text().splitlines() if log else []):
        r = json.loads(line)
        if "step_time_s" in r and "step" in r:
            work, prev = work + r["step_time_s"] * (r["step"] - prev), r["step"]
    wall = float(man.get("elapsed_s") or 0.0)
    return {"wall_s": wall, "work_s": work, "fixed_s": wall - work}


def main(argv: list[str]) -> None:
    before, after = Path(argv[0]), Path(argv[1])
    stages = argv[2:] or sorted({p.stem.split(".")[0] for p in before.glob("*.json")} |
                                {p.parent.name for p in before.glob("*/manifest.json")})
    rows, total = [], {"before": {}, "after": {}}
    for stage in stages:
        a, b = stage_cost(before, stage), stage_cost(after, stage)
        if a is None or b is None:
            continue
        rows.append((stage, a, b))
        for side, c in (("before", a), ("after", b)):
            for k in ("wall_s", "work_s", "fixed_s", *PHASES):
                total[side][k] = total[side].get(k, 0.0) + (c.get(k) or 0.0)
    cols = ("wall_s", "work_s", "fixed_s", *PHASES)
    print("stage".ljust(10) + "".join(c[:-2].rjust(17) for c in cols))
    for stage, a, b in [*rows, ("TOTAL", total["before"], total["after"])]:
        cells = []
        for c in cols:
            x, y = a.get(c), b.get(c)
            cells.append("–".rjust(17) if x is None or y is None else f"{x:7.1f}->{y:7.1f}".rjust(17))
        ratio = b["fixed_s"] / a["fixed_s"] if a.get("fixed_s") else float("nan")
        print(stage.ljust(10) + "".join(cells) + f"   fixed x{ratio:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
