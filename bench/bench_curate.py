"""Benchmarks of the curate stage (CPU): MinHash signature speed, and whole-stage throughput.

    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_curate.py            # everything
    .venv/bin/python bench/bench_curate.py --only minhash                         # no Ray needed
    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_curate.py --only stage --synthetic 20000

1. MinHash: signatures/s on the same documents and word 5-gram shingles, one process:
   a plain per-document datasketch loop (`MinHash.update` per shingle, shingles prepared beforehand,
   so the baseline does not pay for shingling), datasketch `update_batch` and `MinHash.bulk`, against
   llmray's vectorized path end to end from raw text (shingling included), in its "fast" mode and its
   "datasketch" mode (sha1 shingle hashes; bit-identical signatures, checked here).
2. Stage: the curate stage on the built-in python-docs corpus (docstrings; and with source code),
   and optionally on a synthetic web-like corpus, with workers=1 and workers=2: docs/s end to end
   (Ray Data start-up, every operator, the dedup barriers and writing included).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _docs_1kb(n: int, seed: int = 0) -> list[str]:
    """~1 KB English-like documents: sentences of words drawn from stdlib docstrings, a few lines each."""
    from llmray.data.pydocs import iter_docs

    vocab = " ".join(d["doc"] for d in iter_docs(modules=["collections", "json", "os", "re", "typing"])).split()
    vocab = [w.strip(".,:;()[]'\"`") for w in vocab]
    vocab = [w for w in vocab if w.isalpha()]
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        lines, words = [], 0
        while words < 170:
            sents = []
            for _ in range(rng.randint(1, 3)):
                k = rng.randint(8, 20)
                words += k
                sents.append(" ".join(rng.choice(vocab) for _ in range(k)).capitalize() + ".")
            lines.append(" ".join(sents))
        docs.append("\n".join(lines))
    return docs


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_minhash(n_docs: int, perms: list[int]) -> list[dict]:
    from datasketch import MinHash

    from llmray.curate import minhash as mh

    texts = _docs_1kb(n_docs)
    shingles = [[s.encode("utf-8") for s in mh.word_shingles(t, 5)] for t in texts]
    mh.signatures(texts[:8])  # warm caches (permutations, word hashes are per process anyway)
    rows = []
    for p in perms:
        def loop(p=p):
            for sh in shingles:
                m = MinHash(num_perm=p, seed=1)
                for s in sh:
                    m.update(s)

        def batch(p=p):
            for sh in shingles:
                MinHash(num_perm=p, seed=1).update_batch(sh)

        def bulk(p=p):
            MinHash.bulk(shingles, num_perm=p, seed=1)

        base = _best(loop, 1)
        res = {"num_perm": p, "docs": n_docs, "datasketch_loop": n_docs / base,
               "datasketch_update_batch": n_docs / _best(batch, 2), "datasketch_bulk": n_docs / _best(bulk, 2)}
        for kind in ("fast", "datasketch"):
            res[f"llmray_{kind}"] = n_docs / _best(lambda p=p, kind=kind: mh.signatures(texts, p, 5, 1, kind))
        ref = MinHash(num_perm=p, seed=1)
        ref.update_batch(shingles[0])
        sig, _ = mh.signatures(texts[:1], p, 5, 1, "datasketch")
        res["bit_identical"] = bool(np.array_equal(ref.hashvalues.astype(np.uint32), sig[0]))
        res["speedup_fast"] = res["llmray_fast"] / res["datasketch_loop"]
        res["speedup_datasketch_mode"] = res["llmray_datasketch"] / res["datasketch_loop"]
        rows.append(res)
    return rows


def _synthetic_corpus(folder: Path, n: int, files: int = 8, seed: int = 0) -> None:
    """Web-like JSONL in `files` files: 1 KB prose-like documents, 10% near-duplicates, 1% broken lines."""
    texts = _docs_1kb(n, seed)
    rng = random.Random(seed)
    outs = [(folder / f"part{k}.jsonl").open("w") for k in range(files)]
    for i, t in enumerate(texts):
        if i and rng.random() < 0.1:
            w = texts[rng.randrange(i)].split(" ")
            w[rng.randrange(len(w))] = "changed"
            t = " ".join(w)
        f = outs[i % files]
        f.write(json.dumps({"id": f"s{i}", "text": t}) + "\n")
        if rng.random() < 0.01:
            f.write("{broken json\n")
    for f in outs:
        f.close()


def bench_stage(workdir: Path, synthetic: int) -> list[dict]:
    from llmray.pipeline import parse_pipeline
    from llmray.rayutil import init_ray
    from llmray.runner import run_pipeline

    init_ray()
    corpora = {"python-docs": [{"type": "python-docs"}],
               "python-docs+source": [{"type": "python-docs", "include_source": True}]}
    if synthetic:
        p = workdir / "synthetic"
        p.mkdir()
        _synthetic_corpus(p, synthetic)
        corpora[f"synthetic-{synthetic}"] = [{"type": "jsonl", "path": str(p / "*.jsonl")}]
    rows = []
    for name, sources in corpora.items():
        for workers in (1, 2):
            stage = {"kind": "curate", "sources": sources, "workers": workers,
                     "gopher_quality": {"min_words": 5, "min_stop_words": 1}}
            if name.startswith("synthetic"):  # shuffled-word prose: scored, but kept for the later operators
                stage["quality"] = {"threshold": 0.0}
            pipe = parse_pipeline({"name": f"b-{workers}", "workdir": str(workdir), "stages": {"corpus": stage}})
            t = time.perf_counter()
            run_pipeline(pipe, force=["corpus"], echo=lambda *_: None)
            wall = time.perf_counter() - t
            m = json.loads((workdir / f"b-{workers}" / "corpus" / "manifest.json").read_text())["metrics"]
            rows.append({"corpus": name, "workers": workers, "docs_in": m["docs_in"], "docs_out": m["docs_out"],
                         "seconds": round(wall, 2), "docs_per_s": round(m["docs_in"] / wall, 1),
                         "near_dedup_s": m.get("near_dedup", {}).get("seconds")})
    return rows


def _pairs_corpus(path: Path, n_pairs: int, seed: int = 0) -> list[tuple[str, str, float]]:
    """Base documents with one edited copy each, true word-5-gram Jaccard spread over 0.3-1.0."""
    from llmray.curate.minhash import word_shingles

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(50_000)]
    pairs, lines = [], []
    for k in range(n_pairs):
        base = [rng.choice(vocab) for _ in range(200)]
        var = list(base)
        for _ in range(rng.randint(0, 30)):
            i = rng.randrange(0, 198)
            var[i:i + rng.randint(1, 3)] = [rng.choice(vocab) for _ in range(rng.randint(1, 3))]
        sa, sb = set(word_shingles(" ".join(base), 5)), set(word_shingles(" ".join(var), 5))
        pairs.append((f"b{k}", f"v{k}", len(sa & sb) / len(sa | sb)))
        lines += [json.dumps({"id": f"b{k}", "text": " ".join(base)}), json.dumps({"id": f"v{k}", "text": " ".join(var)})]
    path.write_text("\n".join(lines) + "\n")
    return pairs


def bench_dedup_curve(workdir: Path, n_pairs: int) -> dict:
    """Share of planted pairs removed per true-Jaccard bin (threshold 0.8, default banding, verification on)."""
    import pyarrow.parquet as pq

    from llmray.pipeline import parse_pipeline
    from llmray.rayutil import init_ray
    from llmray.runner import run_pipeline

    init_ray()
    pairs = _pairs_corpus(workdir / "pairs.jsonl", n_pairs)
    off = {op: {"enabled": False} for op in ("clean", "boilerplate", "gopher_quality", "gopher_repetition",
                                             "fineweb", "toxicity", "quality", "exact_dedup")}
    stage = {"kind": "curate", "sources": [{"type": "jsonl", "path": str(workdir / "pairs.jsonl")}], **off}
    pipe = parse_pipeline({"name": "curve", "workdir": str(workdir), "stages": {"corpus": stage}})
    run_pipeline(pipe, force=["corpus"], echo=lambda *_: None)
    kept = set(pq.read_table(workdir / "curve" / "corpus" / "data").column("id").to_pylist())
    edges = [0.3, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0001]
    rows = []
    for lo, hi in itertools.pairwise(edges):
        sel = [p for p in pairs if lo <= p[2] < hi]
        if sel:
            removed = sum(p[1] not in kept for p in sel)
            rows.append({"jaccard": f"[{lo:.2f}, {min(hi, 1):.2f}{']' if hi > 1 else ')'}", "pairs": len(sel),
                         "removed": removed, "rate": removed / len(sel)})
    gone = [p for p in pairs if p[1] not in kept]
    high = [p for p in pairs if p[2] >= 0.85]
    return {"bins": rows, "recall_j085": sum(p[1] not in kept for p in high) / max(len(high), 1),
            "precision_j080": sum(p[2] >= 0.8 for p in gone) / max(len(gone), 1),
            "precision_j070": sum(p[2] >= 0.7 for p in gone) / max(len(gone), 1),
            "base_docs_removed": sum(p[0] not in kept for p in pairs)}


def _table(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = [lambda v: f"{v:,.0f}" if isinstance(v, float) and v > 100 else
           (f"{v:.2f}" if isinstance(v, float) else str(v))] * len(cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f(r[c]) for f, c in zip(fmt, cols)) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["minhash", "dedup", "stage"], help="run one benchmark")
    ap.add_argument("--pairs", type=int, default=2000, help="planted pairs for the dedup quality curve")
    ap.add_argument("--docs", type=int, default=2000, help="documents for the MinHash benchmark")
    ap.add_argument("--perms", default="128,256", help="num_perm values for the MinHash benchmark")
    ap.add_argument("--synthetic", type=int, default=0, help="also run the stage on N synthetic 1 KB documents")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    results = {}
    if args.only in (None, "minhash"):
        results["minhash"] = bench_minhash(args.docs, [int(p) for p in args.perms.split(",")])
        print("\nMinHash signatures/s (one process, ~1 KB docs, word 5-gram shingles)\n")
        print(_table(results["minhash"]))
    if args.only in (None, "dedup"):
        with tempfile.TemporaryDirectory() as d:
            results["dedup"] = curve = bench_dedup_curve(Path(d), args.pairs)
        print("\nNear-dedup quality: planted pairs removed per true Jaccard bin (threshold 0.8)\n")
        print(_table(curve["bins"]))
        print({k: v for k, v in curve.items() if k != "bins"})
    if args.only in (None, "stage"):
        with tempfile.TemporaryDirectory() as d:
            results["stage"] = bench_stage(Path(d), args.synthetic)
        print("\nWhole curate stage (defaults + gopher min_words 5, min_stop_words 1)\n")
        print(_table(results["stage"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
