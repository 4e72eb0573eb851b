"""Ray Data's two Parquet readers on a curated corpus: the tokenizer stage's sample read, side by side.

    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_parquet_read.py                 # ~30 s
    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_parquet_read.py --data runs/quickstart/corpus/data

Data flow: a curated-corpus folder (`--data`; default: `--files` parquet files of (id, text) rows made here
from stdlib docstrings, `--docs` rows in all) -> `llmray.tokenization.train.stream_sample` (read_parquet
+ the sampling map + ordered iteration on the driver, what the `tokenizer` stage does before training)
on one local Ray, `--rounds` rounds, each timing Ray's default reader (V2 in Ray 2.60: a listing task with
a pool of footer-reader actors) and then the V1 datasource (`llmray.rayutil.read_parquet`'s choice),
alternating which goes first. Prints one JSON object: seconds per round for each, the medians and their
ratio, and whether both returned the same training and held-out texts in the same order.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_corpus(folder: Path, docs: int, files: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmray.testing import stdlib_texts

    base = stdlib_texts(limit=docs)
    texts = [base[i % len(base)] + f" ({i})" for i in range(docs)]  # distinct ids and texts
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-docs // files)
    for f in range(files):
        rows = range(f * per, min(docs, (f + 1) * per))
        pq.write_table(pa.table({"id": [f"doc-{i:06d}" for i in rows], "text": [texts[i] for i in rows]}),
                       folder / f"part-{f:05d}.parquet")
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="a folder of (id, text) parquet files (default: generated)")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if "RAY_DATA_USE_DATASOURCE_V2" in os.environ:
        sys.exit("unset RAY_DATA_USE_DATASOURCE_V2: this bench sets the reader itself")

    import ray.data

    from llmray.rayutil import init_ray
    from llmray.tokenization.train import stream_sample

    data = Path(args.data) if args.data else make_corpus(Path(tempfile.mkdtemp(prefix="llmray-pq-")), args.docs,
                                                          args.files)
    init_ray()
    ctx = ray.data.DataContext.get_current()
    default_v2 = ctx.use_datasource_v2
    kw = {"sample_bytes": 10**9, "sample_docs": None, "heldout_fraction": 0.01, "eval_docs": 200, "seed": 0}
    times: dict[str, list[float]] = {"ray_default": [], "v1": []}
    outputs: dict[str, list] = {"ray_default": [], "v1": []}
    for r in range(args.rounds):
        for side in (["ray_default", "v1"] if r % 2 == 0 else ["v1", "ray_default"]):
            t = time.perf_counter()
            if side == "v1":
                out = stream_sample(data, **kw)  # llmray.rayutil.read_parquet picks V1
            else:
                os.environ["RAY_DATA_USE_DATASOURCE_V2"] = "1" if default_v2 else "0"  # Ray's own choice
                try:
                    out = stream_sample(data, **kw)
                finally:
                    os.environ.pop("RAY_DATA_USE_DATASOURCE_V2")
            times[side].append(round(time.perf_counter() - t, 3))
            outputs[side].append(out[:2])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"data": str(data), "docs": sum(len(o[0]) + len(o[1]) for o in outputs["v1"][:1]),
                      "ray_default_is_v2": default_v2, "seconds": times, "median_s": med,
                      "v1_speedup": round(med["ray_default"] / med["v1"], 2),
                      "same_texts_in_order": all(o == outputs["v1"][0] for v in outputs.values() for o in v)},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
