"""Benchmark: Ray Data tokenize throughput per core vs raw `tokenizers` encode_batch, and bytes/token.

Corpus: the built-in python-docs corpus (`llmray.data.pydocs.iter_docs(include_source=True)`,
~3.5 MB), repeated `--repeat` times with distinct ids (default two sizes, 4x and 32x: 14 MB and
113 MB), written as parquet like a curate stage's `data/`. Steps, per size on the same corpus:
  1. the `tokenizer` stage trains our BPE (vocab --vocab) and reports bytes/token on its held-out docs;
  2. raw baseline: one process, one thread (TOKENIZERS_PARALLELISM=false), `Tokenizer.encode_batch`
     over every document (chunks of 8,192 docs, best of --raw-runs), before Ray starts so nothing competes for the cores;
  3. ours: `llmray.tokenization.shards.tokenize_corpus` (read parquet -> tokenize -> packed
     shards on disk) on a fresh local Ray with --cpus CPUs, timed end to end, --runs times, per
     --modes: `pool` (the Ray Data actor pool, one actor per CPU, automatic batch size) and
     `default` (the stage's defaults: a corpus of <= 64 MB of text in-process, one thread per CPU).
Ratios to the raw tokens per second (goal >= 0.85), best run of each:
  end_to_end: corpus tokens / wall seconds / cpus -- includes Ray Data's fixed start-up
              (`startup_s`: planning, actor processes, first read; ~3 s on 2 cores, whatever the size);
  steady:     corpus tokens / (first actor call start .. last call end) / actors -- the pipeline
              once running: reading, scheduling, packing and writing compete for the same cores;
  in_actor:   corpus tokens / summed busy seconds of the actor calls -- the per-batch work only
              (in-process: "actors" are the threads).

    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_tokenize.py            # ~5 min
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_corpus(stage_dir: Path, records: list[dict], files: int) -> None:
    """`<stage_dir>/data/part-*.parquet` (id, text), like a curate stage's output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = stage_dir / "data"
    data.mkdir(parents=True)
    per = -(-len(records) // files)
    for f in range(files):
        pq.write_table(pa.Table.from_pylist(records[f * per:(f + 1) * per]), data / f"part-{f:03d}.parquet")


def train(root: Path, vocab: int) -> tuple[Path, dict]:
    """Our tokenizer, trained by the tokenizer stage itself on the corpus without repeats (so its
    held-out documents have no copies in the training sample)."""
    from llmray.stages import tokenizer as stage
    from llmray.stages.base import StageContext, StageOutput

    corpus = StageOutput("corpus", "curate", root / "base", {"outputs": {"data": "data"}})
    out = root / "tok"
    out.mkdir()
    ctx = StageContext(name="tok", kind="tokenizer", fingerprint="bench", run_dir=root, out_dir=out,
                       work_dir=root / "work", inputs={"data": [corpus]}, pipeline=None,
                       log=logging.getLogger("bench"))
    res = stage.run(stage.Config(data="corpus", vocab_size=vocab, heldout_fraction=0.05), ctx)
    return out / "tokenizer", res.metrics


def raw_baseline(tok_dir: Path, texts: list[str], runs: int, chunk: int = 8192) -> dict:
    """Best of `runs`; encode_batch over chunks of `chunk` docs (the Encodings of a whole 300 MB
    corpus at once would take GBs; chunking does not change the per-token cost)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.encode_special_tokens = True
    out = {}
    for name, fn in (("encode_batch", tok.encode_batch), ("encode_batch_fast", tok.encode_batch_fast)):
        best, cpu = float("inf"), 0.0
        for _ in range(runs):
            w, c = time.perf_counter(), time.process_time()
            n = len(texts)  # one EOS per doc
            for i in range(0, len(texts), chunk):
                n += sum(len(e.ids) for e in fn(texts[i:i + chunk], add_special_tokens=False))
            dt = time.perf_counter() - w
            if dt < best:
                best, cpu = dt, time.process_time() - c
        out[name] = {"tokens": n, "seconds": round(best, 3), "tokens_per_s": round(n / best),
                     "cpu_per_wall": round(cpu / best, 2)}
    return out


# The two ways the stage tokenizes: the Ray Data actor pool (one actor per CPU), and its default, which
# takes a corpus of <= 64 MB of text in-process with one thread per CPU (no pool start-up).
MODES = {"pool": {"actors": "cpus", "in_process_max_mb": 0.0}, "default": {"actors": None, "in_process_max_mb": 64.0}}


def ours(corpus: Path, root: Path, tok_dir: Path, cpus: int, runs: int, seq_len: int,
         batch_size: int | None, mode: str = "pool") -> list[dict]:
    from llmray.tokenization.shards import tokenize_corpus

    opts = dict(MODES[mode], actors=cpus if MODES[mode]["actors"] == "cpus" else None)
    results = []
    for i in range(runs):
        out = root / f"shards{i}"
        t0 = time.perf_counter()
        res = tokenize_corpus(corpus, tok_dir, out, seq_len=seq_len, val_fraction=0.01, seed=0,
                              batch_size=batch_size, rows_per_shard=8192, log=logging.getLogger("bench"), **opts)
        wall = time.perf_counter() - t0
        tokens = sum(sp["tokens"] for sp in res["splits"].values())
        results.append({"run": i, "mode": mode, "in_process": res["in_process"], "wall_s": round(wall, 3),
                        "tokens": tokens, "actors": res["actors"],
                        "batch_size": res["batch_size"], "startup_s": res["startup_s"],
                        "actor_window_s": res["actor_window_s"], "actor_busy_s": res["actor_busy_s"],
                        "end_to_end_tokens_per_s_per_core": round(tokens / wall / cpus),
                        "steady_tokens_per_s_per_core": round(tokens / res["actor_window_s"] / res["actors"]),
                        "in_actor_tokens_per_s": round(tokens / res["actor_busy_s"])})
        shutil.rmtree(out)
    return results


def measure(root: Path, base_records: list[dict], repeat: int, tok_dir: Path, args) -> dict:
    """One corpus size: the raw baseline (before Ray starts), then ours on a fresh local Ray."""
    import ray

    records = [{"id": f"{r['id']}#{k}", "text": r["text"]} for k in range(repeat) for r in base_records]
    corpus = root / f"corpus{repeat}"
    write_corpus(corpus, records, args.files)
    texts = [r["text"] for r in records]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    raw = raw_baseline(tok_dir, texts, args.raw_runs)
    del texts, records
    ray.init(num_cpus=args.cpus, object_store_memory=1024 * 2**20, include_dashboard=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    try:
        mine = {m: ours(corpus / "data", root, tok_dir, args.cpus, args.runs, args.seq_len, args.batch_size, m)
                for m in args.modes.split(",")}
    finally:
        ray.shutdown()
    shutil.rmtree(corpus)
    out = {"repeat": repeat, "docs": len(base_records) * repeat, "mb": round(mb, 2), "raw_one_process": raw,
           "runs": mine}
    base = raw["encode_batch"]["tokens_per_s"]
    for mode, runs in mine.items():
        best = {k: max(r[k] for r in runs) for k in ("end_to_end_tokens_per_s_per_core",
                                                      "steady_tokens_per_s_per_core", "in_actor_tokens_per_s")}
        out[mode] = {"in_process": runs[0]["in_process"], "startup_s_min": min(r["startup_s"] for r in runs),
                     "ratio_per_core_end_to_end": round(best["end_to_end_tokens_per_s_per_core"] / base, 3),
                     "ratio_per_core_steady": round(best["steady_tokens_per_s_per_core"] / base, 3),
                     "ratio_in_actor": round(best["in_actor_tokens_per_s"] / base, 3),
                     # The stricter baseline: encode_batch_fast (no offsets) is what the actors call.
                     "ratio_per_core_end_to_end_vs_fast": round(
                         best["end_to_end_tokens_per_s_per_core"] / raw["encode_batch_fast"]["tokens_per_s"], 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", default="4,32",
                    help="corpus sizes, comma-separated copies of the python-docs corpus (distinct ids)")
    ap.add_argument("--files", type=int, default=8, help="parquet files the corpus is written as")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=None, help="documents per Ray Data batch (default: automatic)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--modes", default="pool,default", help=f"comma-separated, of {sorted(MODES)}")
    ap.add_argument("--raw-runs", type=int, default=2, help="runs of the raw baseline (best taken)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_tokenize_"))
    try:
        import ray

        from llmray.data.pydocs import iter_docs

        base = [{"id": d["id"], "text": d["text"]} for d in iter_docs(include_source=True)]
        write_corpus(root / "base", base, args.files)
        ray.init(num_cpus=args.cpus, include_dashboard=False)  # the tokenizer stage streams through Ray Data
        tok_dir, tok_metrics = train(root, args.vocab)
        ray.shutdown()
        sizes = [measure(root, base, int(r), tok_dir, args) for r in args.repeat.split(",")]
        report = {
            "machine": {"cpus": args.cpus, "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
            "tokenizer": {k: tok_metrics.get(k) for k in ("vocab_size", "bytes_per_token", "words_per_token",
                                                          "fallback_byte_share", "heldout_docs", "train_seconds")},
            "sizes": sizes,
            "summary": [{"mb": s["mb"], **{m: s[m] for m in args.modes.split(",")}} for s in sizes],
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
