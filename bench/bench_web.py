"""Benchmarks of web collection in the curate stage (CPU): WARC throughput and extraction speed.

    .venv/bin/python bench/bench_web.py --only extract                       # no Ray needed
    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_web.py --mb 200  # everything, 3 rounds

1. Extraction: docs/s of each extractor (trafilatura, resiliparse) on the test pages of
   `llmray.testing.web_pages` (stdlib documentation and seven languages in boilerplate), one process,
   with their word F1 and boilerplate kept, so speed and quality are read side by side.
2. WARC: records/s per core through the curate stage (Ray Data: read tasks with fastwarc, the
   `extract` operator with resiliparse, accounting and parquet output; the other operators off) with
   workers=1 and workers=2, against a plain loop over the same library calls in one process
   (fastwarc ArchiveIterator -> charset decode -> resiliparse extract_plain_text) on the same files.
   The ratio is (stage records/s / workers) / (loop records/s); the stage time includes Ray Data's
   start-up and writing the output. On a shared machine wall time also counts other jobs, so the
   bench reports CPU time too: the CPU seconds of this process and every process it started (Ray's
   raylet, GCS, workers...) during each run, per process kind, and records per CPU-second vs the
   loop's (the per-core ratio when each used core were the stage's alone), and CPU-microseconds per
   record of the Ray workers and of all processes beside the loop's (`worker_cpu_vs_loop`: the
   load-independent view of the gap). Loop and stage runs alternate for `--repeat` rounds; the
   median ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def bench_extract(repeat: int = 3) -> list[dict]:
    from llmray.curate.extract import boilerplate_kept, make_extractor, word_f1
    from llmray.testing import BOILERPLATE, web_pages

    pages = web_pages()
    boiler = " ".join(BOILERPLATE.values())
    rows = []
    for name in ("trafilatura", "resiliparse"):
        run = make_extractor(name, {})
        outs = [run(p["html"]) for p in pages]  # warm-up (imports, caches)
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            for _ in range(5):
                outs = [run(p["html"]) for p in pages]
            best = min(best, time.perf_counter() - t)
        n = len(pages)
        rows.append({"extractor": name, "docs_per_s": round(5 * n / best, 1),
                     "word_f1": round(sum(word_f1(o, p["main"]) for o, p in zip(outs, pages)) / n, 3),
                     "boilerplate_kept": round(sum(boilerplate_kept(o, boiler, p["main"])
                                                   for o, p in zip(outs, pages)) / n, 3)})
    return rows


def write_crawl(folder: Path, mb: int, files: int = 8) -> int:
    """`files` .warc.gz files of about `mb` MB of HTML in total; returns the response records."""
    from llmray.testing import web_pages, write_warc

    base = web_pages(near_duplicates=False)
    size = sum(len(p["html"]) for p in base)
    copies = max(1, mb * 1_000_000 // size // files)
    total = 0
    for f in range(files):
        pages = [{**p, "url": f"{p['url']}?copy={f}-{c}"} for c in range(copies) for p in base]
        write_warc(folder / f"part-{f}.warc.gz", pages, broken=False)
        total += len(pages)
    return total


def plain_loop(folder: Path) -> tuple[int, float]:
    """The same library calls as the stage, one process: fastwarc -> decode -> resiliparse."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    from llmray.curate.extract import make_extractor
    from llmray.curate.warc import decode_body

    run = make_extractor("resiliparse", {})
    n, chars = 0, 0
    t = time.perf_counter()
    for path in sorted(folder.glob("*.warc.gz")):
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True, fsspec_args=False):
                text, _, _ = decode_body(rec.reader.read(), rec.http_charset, 0.05)
                chars += len(run(text))
                n += 1
    return n, time.perf_counter() - t


def _tree_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of this process and its descendants, by process kind."""
    import psutil

    out: dict[str, float] = {}
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            cmd = " ".join(p.cmdline()[:3])
        except psutil.Error:  # exited meanwhile
            continue
        kind = ("driver" if p.pid == me.pid else  # Ray renames its workers' processes "ray::<task>"
                "ray worker" if cmd.startswith("ray::") or "default_worker.py" in cmd else
                "raylet" if "raylet" in cmd else "gcs_server" if "gcs_server" in cmd else "ray other")
        out[kind] = out.get(kind, 0.0) + t.user + t.system
    return out


def bench_stage(workdir: Path, folder: Path, workers: int, tag: str) -> dict:
    """One curate run (warc source, resiliparse extract, other operators off) on `folder`'s crawl."""
    from llmray.pipeline import parse_pipeline
    from llmray.runner import run_pipeline

    off = {"enabled": False}
    stage = {"kind": "curate", "workers": workers,
             "sources": [{"type": "warc", "path": str(folder / "*.warc.gz")}],
             "extract": {"extractor": "resiliparse", "min_chars": 0},
             **{op: off for op in ("clean", "boilerplate", "gopher_quality", "gopher_repetition", "fineweb",
                                   "toxicity", "quality", "exact_dedup", "near_dedup")}}
    pipe = parse_pipeline({"name": tag, "workdir": str(workdir), "stages": {"pages": stage}})
    cpu0 = _tree_cpu()
    t = time.perf_counter()
    run_pipeline(pipe, force=["pages"], echo=lambda *_: None)
    wall = time.perf_counter() - t
    cpu = {k: round(v - cpu0.get(k, 0.0), 2) for k, v in _tree_cpu().items()}
    m = json.loads((workdir / tag / "pages" / "manifest.json").read_text())["metrics"]
    n = m["docs_in"]
    return {"workers": workers, "records": n, "kept": m["docs_out"], "seconds": round(wall, 2),
            "records_per_s": round(n / wall, 1), "records_per_s_per_core": round(n / wall / workers, 1),
            "cpu_s": cpu, "records_per_cpu_s": round(n / sum(cpu.values()), 1),
            # CPU per record of the Ray workers (the read tasks with their extraction, the summary and
            # write tasks, the progress actor) and of every process: load-independent, unlike wall time
            "worker_cpu_us_per_record": round(1e6 * cpu.get("ray worker", 0.0) / n, 1),
            "all_cpu_us_per_record": round(1e6 * sum(cpu.values()) / n, 1)}


def warm_up(workdir: Path) -> float:
    """Start Ray and warm its workers with a run on a 1 MB crawl (imports of Ray Data, pyarrow, the
    extractor: several seconds on this box), as the loop's imports happen before its clock starts."""
    from llmray.rayutil import init_ray

    init_ray()
    warm = workdir / "warm-crawl"
    warm.mkdir(parents=True)
    write_crawl(warm, 1, files=2)
    return bench_stage(workdir, warm, 2, "warm")["seconds"]


def bench_warc(tmp: Path, mb: int, repeat: int) -> dict:
    """The loop and the stage (workers=1, 2) `repeat` times, alternating; ratios within each round,
    then the median round by round (the box is shared: identical runs vary by tens of percent)."""
    import statistics

    folder = tmp / "crawl"
    folder.mkdir()
    n = write_crawl(folder, mb)
    gz_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    print(f"warc: {n} records, {mb} MB of HTML ({gz_mb:.0f} MB gzipped), 8 files")
    print(f"warm-up run (1 MB, workers=2, Ray start-up): {warm_up(tmp / 'runs'):.1f} s")
    rounds = []
    for r in range(repeat):
        cpu = time.process_time()
        loop_n, loop_s = plain_loop(folder)
        loop_cpu = time.process_time() - cpu
        assert loop_n == n
        loop_rate, loop_cpu_rate = loop_n / loop_s, loop_n / loop_cpu
        loop_us = 1e6 * loop_cpu / loop_n
        print(f"[{r + 1}] plain loop (1 process): {loop_rate:8.1f} records/s, {loop_cpu_rate:8.1f} records/CPU-s, "
              f"{loop_us:.1f} CPU-us/record")
        stages = [bench_stage(tmp / "runs", folder, w, f"w{w}-{r}") for w in (1, 2)]
        for s in stages:
            s["ratio_vs_loop_per_core"] = round(s["records_per_s_per_core"] / loop_rate, 3)
            s["ratio_vs_loop_per_cpu_s"] = round(s["records_per_cpu_s"] / loop_cpu_rate, 3)
            s["worker_cpu_vs_loop"] = round(s["worker_cpu_us_per_record"] / loop_us, 3)
            print(f"[{r + 1}] stage workers={s['workers']}: {s['records_per_s']:8.1f} records/s, "
                  f"{s['records_per_s_per_core']:8.1f} per core, {s['ratio_vs_loop_per_core']:.3f} of the loop "
                  f"per core ({s['seconds']} s); {s['records_per_cpu_s']:8.1f} records/CPU-s, "
                  f"{s['ratio_vs_loop_per_cpu_s']:.3f} of the loop's; CPU-us/record: Ray workers "
                  f"{s['worker_cpu_us_per_record']} ({s['worker_cpu_vs_loop']:.3f}x the loop's), all processes "
                  f"{s['all_cpu_us_per_record']}; CPU s {s['cpu_s']}")
        rounds.append({"loop_records_per_s": round(loop_rate, 1), "loop_records_per_cpu_s": round(loop_cpu_rate, 1),
                       "loop_cpu_us_per_record": round(loop_us, 1), "stage": stages})
    median = {f"workers={w}": {k: statistics.median(rd["stage"][i][k] for rd in rounds)
                               for k in ("ratio_vs_loop_per_core", "ratio_vs_loop_per_cpu_s", "worker_cpu_vs_loop")}
              for i, w in enumerate((1, 2))}
    print(f"median of {repeat} rounds: {median}")
    return {"records": n, "html_mb": mb, "gzip_mb": round(gz_mb, 1), "rounds": rounds, "median": median}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["extract", "warc"], help="run one part")
    ap.add_argument("--mb", type=int, default=200, help="MB of HTML in the WARC benchmark")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of loop + stage runs (the median is reported)")
    args = ap.parse_args(argv)
    results: dict = {}
    if args.only in (None, "extract"):
        results["extract"] = bench_extract()
        for r in results["extract"]:
            print(f"extract {r['extractor']:12s} {r['docs_per_s']:8.1f} docs/s  word F1 {r['word_f1']:.3f}  "
                  f"boilerplate kept {r['boilerplate_kept']:.3f}")
    if args.only in (None, "warc"):
        with tempfile.TemporaryDirectory() as tmp:
            results["warc"] = bench_warc(Path(tmp), args.mb, args.repeat)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
