"""Eval throughput: lm-eval items/s with the hf (HFLM) and vllm (VLLM) backends on the same model and
task, and the quickstart-sized eval stage's wall time.

    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_eval.py [--model DIR] [--limit 200] [--json out.json]

Part 1 (no Ray): one model folder (default: a random tiny Llama from llmray.testing) on `llmray_docmatch`
(4 log-likelihood requests per item) and `llmray_docppl` (rolling), each backend in this process; prints
items/s, load seconds, and the largest per-request log-likelihood difference between the backends.
Part 2 (`--stage`): the quickstart's eval stage shape (five models, `limit: 40`, the built-in tasks,
0.5 CPU per model) through the real runner on a local 2-CPU Ray; prints the stage's wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def backends(model: str, tasks: list[str], limit: int) -> dict:
    from llmray.eval.harness import BUILTIN_DIR, TaskPlan, evaluate_model

    plan = TaskPlan(tasks, [str(BUILTIN_DIR)])
    out, resps = {}, {}
    for backend in ("hf", "vllm"):
        r = evaluate_model(model, plan, {"backend": backend, "batch_size": 32, "limit": limit, "log_samples": True,
                                         "dtype": "float32", "threads": os.cpu_count(), "bootstrap_iters": 0})
        out[backend] = {"items": r["items"], "items_per_second": r["items_per_second"],
                        "load_seconds": r["load_seconds"], "eval_seconds": r["eval_seconds"],
                        "scores": {t: {k: v for k, v in res.items() if "," in k and "stderr" not in k}
                                   for t, res in r["results"]["results"].items()}}
        resps[backend] = {(t, s["doc_id"], i): float(x[0] if isinstance(x[0], float) else x[0][0])
                          for t, ss in r["samples"].items() for s in ss for i, x in enumerate(s["resps"])}
    common = set(resps["hf"]) & set(resps["vllm"])
    out["max_abs_loglik_diff"] = max(abs(resps["hf"][k] - resps["vllm"][k]) for k in common)
    out["speedup_vllm_over_hf"] = round(out["vllm"]["items_per_second"] / out["hf"]["items_per_second"], 3)
    return out


def stage_wall(model: str, work: Path) -> dict:
    import ray

    from llmray.pipeline import parse_pipeline
    from llmray.runner import read_manifest, run_dir, run_pipeline

    ray.init(num_cpus=2, object_store_memory=512 * 2**20, include_dashboard=False)
    labels = ["base", "domain", "chat", "dpo", "ppo"]
    raw = {"name": "b", "workdir": str(work / "runs"), "stages": {"bench": {
        "kind": "eval", "from": {lb: model for lb in labels}, "limit": 40, "chat_template": "auto",
        "resources": {"num_cpus": 0.5}}}}
    t = time.perf_counter()
    status = run_pipeline(parse_pipeline(raw), echo=lambda m: None)
    wall = time.perf_counter() - t
    m = read_manifest(run_dir(parse_pipeline(raw)) / "bench")["metrics"]
    return {"status": status, "wall_seconds": round(wall, 1), "table_md": m.get("table_md"),
            "per_model_load_s": {k: v["load_seconds"] for k, v in m.get("throughput", {}).items()},
            "per_model_eval_s": {k: v["eval_seconds"] for k, v in m.get("throughput", {}).items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="HF model folder (default: a random tiny Llama)")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--stage", action="store_true", help="also time the quickstart-shaped eval stage on Ray")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        model = args.model
        if model is None:
            from llmray.testing import tiny_model_dir

            model = str(tiny_model_dir(work / "tiny"))
        res = {"model": model, "limit": args.limit}
        for task in ("llmray_docmatch", "llmray_docppl"):
            res[task] = backends(model, [task], args.limit)
            r = res[task]
            print(f"{task}: hf {r['hf']['items_per_second']:.1f} items/s (load {r['hf']['load_seconds']:.1f} s) | "
                  f"vllm {r['vllm']['items_per_second']:.1f} items/s (load {r['vllm']['load_seconds']:.1f} s) | "
                  f"vllm/hf {r['speedup_vllm_over_hf']:.2f}x | max |loglik diff| {r['max_abs_loglik_diff']:.2e}")
        if args.stage:
            res["stage"] = stage_wall(model, work)
            print(f"quickstart-shaped eval stage (5 models, limit 40, 2 CPUs): {res['stage']['wall_seconds']} s")
            print(res["stage"]["table_md"])
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
