"""Spilling stress: the curate stage on a corpus several times larger than the Ray object store.

    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_spill.py                  # 320 MB vs 75 MiB
    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_spill.py --mb 120 --store-mb 75 --all-ops

Data flow: a generated web-like JSONL corpus (`--mb` MB in 16 files; ~2 KB documents of random words
from a stdlib-docstring vocabulary, every document unique, 3% exact copies so exact dedup has work)
-> a local Ray started here with `object_store_memory = --store-mb` MiB and its own temp dir
-> `llmray.runner.run_pipeline` with one curate stage (workers=2). The curate plan materializes the
whole corpus at its barriers (exact dedup, final), so the object store must spill to disk to finish.
By default the scorers and near-dedup are off (the figure is about memory, not operator speed);
`--all-ops` keeps the stage's defaults.

Prints one JSON object: corpus MB, object store MB, spilled MB and objects and restored MB (Ray's
own counters, from `ray._private.internal_api.memory_summary`), wall seconds, docs in/out, peak
used memory of the machine during the run, and the stage status.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_corpus(folder: Path, mb: int, files: int = 16, seed: int = 0) -> dict:
    """~`mb` MB of JSONL: ~2 KB documents of vocabulary words, 3% exact duplicates of earlier ones."""
    from llmray.data.pydocs import iter_docs

    words = " ".join(d["doc"] for d in iter_docs(modules=["collections", "json", "os", "re", "typing"])).split()
    vocab = np.array(sorted({w.strip(".,:;()[]'\"`") for w in words if w.strip(".,:;()[]'\"`").isalpha()}))
    rng = np.random.default_rng(seed)
    outs = [(folder / f"part{k:02d}.jsonl").open("w") for k in range(files)]
    written, n, kept = 0, 0, []
    while written < mb * 1_000_000:
        if kept and rng.random() < 0.03:
            text = kept[rng.integers(len(kept))]
        else:
            idx = rng.integers(len(vocab), size=320)
            # Sentences of 8-20 words, a few lines: enough prose shape for the line/word rules.
            cuts = np.cumsum(rng.integers(8, 21, size=40))
            sents = [" ".join(vocab[idx[a:b]]).capitalize() + "." for a, b in
                     zip(np.r_[0, cuts[:-1]], cuts) if b <= len(idx)]
            text = "\n".join(" ".join(sents[i:i + 3]) for i in range(0, len(sents), 3))
            if len(kept) < 2000:
                kept.append(text)
        line = json.dumps({"id": f"d{n}", "text": text}) + "\n"
        outs[n % files].write(line)
        written += len(line)
        n += 1
    for f in outs:
        f.close()
    return {"docs": n, "bytes": written}


def spill_stats(gcs_address: str) -> dict:
    """Ray's cumulative spill/restore counters (MiB, objects) from the memory summary text."""
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=gcs_address, stats_only=True)
    out = {}
    for key, pat in (("spilled", r"Spilled (\d+) MiB, (\d+) objects"), ("restored", r"Restored (\d+) MiB, (\d+) objects")):
        m = re.search(pat, text)
        out[f"{key}_mb"], out[f"{key}_objects"] = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return out


class PeakMemory(threading.Thread):
    """Samples the machine's used memory every 0.5 s (the run must not approach an OOM)."""

    def __init__(self):
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.start_used, self.peak, self.stop = psutil, psutil.virtual_memory().used, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.psutil.virtual_memory().used)
            time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=320, help="corpus size in MB (JSONL bytes)")
    ap.add_argument("--store-mb", type=int, default=75, help="Ray object store size in MiB")
    ap.add_argument("--all-ops", action="store_true", help="keep every curate operator at its default")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from llmray.pipeline import parse_pipeline
    from llmray.runner import read_manifest, run_pipeline

    with tempfile.TemporaryDirectory(prefix="spill-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        (tmp / "corpus").mkdir()
        t = time.time()
        corpus = make_corpus(tmp / "corpus", args.mb)
        gen_s = time.time() - t
        ray.init(num_cpus=2, object_store_memory=args.store_mb * 2**20, include_dashboard=False,
                 _temp_dir=str(tmp / "ray"), runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
        stage = {"kind": "curate", "workers": 2, "sources": [{"type": "jsonl", "path": str(tmp / "corpus" / "*.jsonl")}],
                 "gopher_quality": {"min_words": 5, "min_stop_words": 0}}
        if not args.all_ops:
            stage.update({op: {"enabled": False} for op in ("toxicity", "quality", "near_dedup", "decontaminate")})
        pipe = parse_pipeline({"name": "spill", "workdir": str(tmp / "runs"), "stages": {"corpus": stage}})
        mem = PeakMemory()
        mem.start()
        t = time.time()
        try:
            run_pipeline(pipe, echo=lambda m: print(m, file=sys.stderr, flush=True))
        finally:
            wall = time.time() - t
            mem.stop.set()
            man = read_manifest(tmp / "runs" / "spill" / "corpus") or {}
            stats = spill_stats(ray.get_runtime_context().gcs_address)
            ray.shutdown()
        m = man.get("metrics", {})
        print(json.dumps({
            "corpus_mb": round(corpus["bytes"] / 1e6, 1), "corpus_docs": corpus["docs"],
            "object_store_mb": args.store_mb, "ratio": round(corpus["bytes"] / (args.store_mb * 2**20), 2),
            **stats, "wall_s": round(wall, 1), "generate_s": round(gen_s, 1),
            "docs_in": m.get("docs_in"), "docs_out": m.get("docs_out"), "quarantined": m.get("quarantined"),
            "funnel": [(f["op"], f["out"]) for f in m.get("funnel", [])],
            "peak_used_gb": round(mem.peak / 2**30, 2), "used_before_gb": round(mem.start_used / 2**30, 2),
            "status": man.get("status"), "all_ops": args.all_ops}, indent=1))
    return 0 if man.get("status") == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
