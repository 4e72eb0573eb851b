"""Serving benchmark: what the Ray Serve layer adds, and requests/s at several concurrencies.

  direct : ModelRunner.generate(...) in this process (the same engine, no Ray, no HTTP)
  handle : Ray DeploymentHandle -> ModelServer (Serve's actor hop, no HTTP; with --handle only: one model
           runs inside the ingress replica, so --handle also serves a name to get a model deployment)
  http   : POST /v1/chat/completions through the Serve proxy + ingress (keep-alive http.client)
Serve-layer overhead = p50(http) - p50(direct), with max_tokens small so the engine's own time
stays small and equal on both sides. Throughput: closed-loop clients (each sends its next
request when the previous answer arrives) at concurrency 1, 8, 32 over HTTP.

--vs-vllm-serve: the same client against `llmray serve` (vLLM engine) and then against vLLM's own
OpenAI server (`vllm serve`, run as `python -m vllm.entrypoints.openai.api_server`) on the same
model folder with the same engine settings (max_model_len = the model's context, eager mode):
p50 at max_tokens=1 (sequential) and requests/s at 8 and 32 closed-loop clients, side by side.
With --rounds N, both servers stay up and N rounds alternate between them (medians; a shared machine's
load drifts over minutes, which the one-after-the-other runs take in full), and each closed-loop phase also
reports the CPU-seconds per request of each server's whole process tree, per process kind (llmray: GCS,
raylet, Serve controller, HAProxy, the replica, its vLLM engine-core and worker processes; vllm serve: its
API process and engine processes), from /proc before and after the phase: on a CPU-bound machine
req/s ~ cores / CPU-s per request. Caveat (py-spy, session 13): ~90 % of the vLLM engine core's CPU and
~20 % of the worker's is vLLM's spin-wait on its shared-memory queue (sched_yield for 1 s after each
read), which soaks up any idle core: on a saturated box the per-request totals then track 1 / req/s
rather than the work done (llmray's own vLLM engine on CPU runs the model inside the engine core, without
that queue: llmray/serve/vllm_engine.py; --vllm-serve-env VLLM_ENABLE_V1_MULTIPROCESSING=0 gives `vllm serve`
the same executor). With --handle, llmray is also measured with the model in its own deployment
(a served name: the graph used for several models), i.e. with the ingress -> model actor hop.

--promote: latency while `llmray promote` swaps the version behind a served name under a closed
loop of clients (before / during / after; canary 0 = in-place weight reload, and a 0.25 canary).

Run (starts Ray + Serve; take the shared lock on shared machines):
  flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_serve.py [--engine hf|vllm] [--json out.json]
  flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_serve.py --promote [--engine hf|vllm]
  flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_serve.py --vs-vllm-serve [--handle]
The model is the random tiny Llama of `llmray.testing` unless --model names an HF folder.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def fake_run(model_dir: Path, workdir: Path) -> None:
    """A run directory with one completed stage, `bench`, whose model/ is the given folder."""
    stage = workdir / "bench" / "bench"
    stage.mkdir(parents=True)
    shutil.copytree(model_dir, stage / "model")
    (stage / "manifest.json").write_text(json.dumps(
        {"name": "bench", "kind": "sft", "status": "completed", "outputs": {"model": "model"}, "metrics": {}}))


def chat_body(max_tokens: int) -> dict:
    return {"model": "bench/bench", "messages": [{"role": "user", "content": "Say something."}],
            "max_tokens": max_tokens, "temperature": 0}


def bench_direct(model_dir: str, engine: str, n: int, max_tokens: int) -> list[float]:
    from llmray.serve.engines import ModelRunner
    from llmray.serve.protocol import Limits, parse_chat

    async def run():
        runner = ModelRunner("bench/bench", model_dir, engine)
        await runner.start()
        lat = []
        for _ in range(n + 5):
            t0 = time.perf_counter()
            req = parse_chat(chat_body(max_tokens), Limits())  # parsing is part of both paths
            out = await runner.generate({"messages": req.messages, "params": req.params})
            assert out["choices"][0]["finish_reason"], out
            lat.append(time.perf_counter() - t0)
        await runner.engine.close()
        return lat[5:]

    return asyncio.run(run())


def bench_handle(n: int, max_tokens: int) -> list[float]:
    from ray import serve

    from llmray.serve.protocol import Limits, parse_chat

    handle = serve.get_deployment_handle("model-bench", app_name="llmray-bench")
    lat = []
    for _ in range(n + 5):
        t0 = time.perf_counter()
        req = parse_chat(chat_body(max_tokens), Limits())
        handle.generate.remote({"messages": req.messages, "params": req.params}).result()
        lat.append(time.perf_counter() - t0)
    return lat[5:]


def http_client(port: int, body: bytes, count: int, lat: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(count):
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            errors.append(f"{r.status} {data[:200]!r}")
        lat.append(time.perf_counter() - t0)
    conn.close()


def bench_http(port: int, concurrency: int, per_client: int, max_tokens: int) -> dict:
    body = json.dumps(chat_body(max_tokens)).encode()
    lat: list[float] = []
    errors: list[str] = []
    threads = [threading.Thread(target=http_client, args=(port, body, per_client, lat, errors))
               for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": len(lat), "errors": len(errors), "rps": len(lat) / wall,
            "p50_ms": 1000 * pct(lat, 50), "p95_ms": 1000 * pct(lat, 95), "first_error": errors[:1]}


def bench_promote(engine: str, tmp: Path, model: Path, clients: int = 4, phase_s: float = 6) -> int:
    """p50/p95 before, during and after promotions behind a served name, under closed-loop load."""
    from llmray.config import RayConfig
    from llmray.serve.launch import start_serving, stop_serving
    from llmray.serve.promote import promote
    from llmray.serve_config import ServeConfig
    from llmray.testing import free_port, tiny_model_dir

    fake_run(model, tmp / "runs")
    other = tiny_model_dir(tmp / "other", "causal", seed=1, tokenizer_dir=model)
    for stage, folder, fp in (("bench", None, "a" * 64), ("next", other, "b" * 64)):
        d = tmp / "runs" / "bench" / stage
        if folder is not None:
            shutil.copytree(folder, d / "model")
        (d / "manifest.json").write_text(json.dumps({"name": stage, "kind": "sft", "status": "completed",
                                                     "fingerprint": fp, "outputs": {"model": "model"}}))
    port = free_port()
    pipe = types.SimpleNamespace(
        name="bench", workdir=str(tmp / "runs"), stages={"bench": None, "next": None}, ray=RayConfig(num_cpus=2),
        serve=ServeConfig(models=["bench"], names={"assistant": "bench"}, port=port, engine=engine, num_cpus=0.5,
                          promote={"window_s": phase_s, "min_requests": 3}))
    start_serving(pipe, echo=lambda m: None)
    body = json.dumps(chat_body(4) | {"model": "assistant"}).encode()
    records: list[tuple[float, float, bool]] = []
    stop = threading.Event()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while not stop.is_set():
            t0 = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            records.append((t0, time.perf_counter() - t0, r.status == 200))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    rows = []
    for stage, canary in (("next", 0.0), ("bench", 0.25)):
        time.sleep(phase_s)
        t_swap = time.perf_counter()
        out = promote(pipe, stage, "assistant", canary=canary, echo=lambda m: None)
        t_done = time.perf_counter()
        rows.append((canary, out, t_swap, t_done))
    time.sleep(phase_s)
    stop.set()
    for t in threads:
        t.join(60)
    stop_serving(pipe)
    failed = sum(not ok for *_, ok in records)
    print(f"promotion under load: engine {engine}, {clients} closed-loop clients, max_tokens=4, "
          f"{len(records)} requests, {failed} failed")
    for canary, out, t_swap, t_done in rows:
        before = [lat for t, lat, _ in records if t_swap - phase_s <= t < t_swap]
        during = [lat for t, lat, _ in records if t_swap <= t < t_done]
        mode = (out.get("load") or {}).get("mode", "?")
        print(f"  canary {canary:4.2f} ({mode}, {out['status']}, {t_done - t_swap:.1f} s): p50 "
              f"{1000 * pct(before, 50):6.1f} -> {1000 * pct(during, 50):6.1f} ms "
              f"(x{pct(during, 50) / pct(before, 50):.2f}), p95 {1000 * pct(before, 95):6.1f} -> "
              f"{1000 * pct(during, 95):6.1f} ms (x{pct(during, 95) / pct(before, 95):.2f})")
    return 0 if failed == 0 else 1


def wait_healthy(port: int, proc, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"vllm serve not healthy after {timeout_s} s")


def process_kind(p) -> str:
    """Which part of a server a process is, from its name / process title (Ray workers retitle themselves
    `ray::<actor class>`, vLLM's engine process `VLLM::EngineCore`)."""
    import psutil

    try:
        name, cmd = p.name(), " ".join(p.cmdline())
    except psutil.Error:
        return "gone"
    for key, kind in (("EngineCore", "vLLM engine core"), ("VLLM::Worker", "vLLM worker (the model)"),
                      ("haproxy", "HAProxy"), ("ServeReplica", "Serve replica"), ("ServeController", "Serve controller"),
                      ("ProxyActor", "Serve proxy actor"), ("gcs_server", "Ray GCS"), ("raylet", "raylet"),
                      ("ray::IDLE", "Ray idle workers"), ("agent", "Ray agents"), ("log_monitor", "Ray log monitor")):
        if key in name or key in cmd:
            return kind
    if "api_server" in cmd:
        return "vllm serve API"
    return "Ray other" if "ray" in cmd else "other"


def cpu_snapshot(roots) -> dict[int, tuple[str, float]]:
    """pid -> (kind, user+system CPU seconds so far) for each root process and all its descendants
    (psutil reads /proc/<pid>/stat)."""
    import psutil

    out = {}
    for root in roots:
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                out[p.pid] = (process_kind(p), t.user + t.system)
            except psutil.Error:
                pass
    return out


def cpu_delta(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds spent per process kind between two snapshots (a process born in between: all of it)."""
    kinds: dict[str, float] = {}
    for pid, (kind, t) in after.items():
        kinds[kind] = kinds.get(kind, 0.0) + t - before.get(pid, (kind, 0.0))[1]
    return kinds


def side_by_side(port: int, args, roots=None) -> dict:
    """The figures the comparison uses, through one server on `port`: sequential p50 and 8/32 clients.
    With `roots` (the server's processes), also its CPU-seconds per request in each closed-loop phase, per
    process kind (`cpu_ms_<c>`: kind -> ms of CPU per request): load-independent where req/s is not."""
    bench_http(port, 1, 10, args.latency_tokens)  # warm-up
    seq = bench_http(port, 1, args.requests, args.latency_tokens)
    runs, cpu = {}, {}
    for c in (8, 32):
        before = cpu_snapshot(roots or [])
        runs[c] = bench_http(port, c, args.per_client or max(8, 256 // c), args.throughput_tokens)
        cpu[c] = {k: 1000 * v / runs[c]["requests"] for k, v in cpu_delta(before, cpu_snapshot(roots or [])).items()}
    return {"p50_ms": seq["p50_ms"], "p95_ms": seq["p95_ms"], "errors": seq["errors"] + sum(r["errors"] for r in runs.values()),
            **{f"rps_{c}": r["rps"] for c, r in runs.items()},
            **({f"cpu_ms_{c}": v for c, v in cpu.items()} if roots else {})}


def llmray_roots(vllm_proc=None) -> list:
    """The processes of the Ray this bench started (GCS, raylet and, below it, every worker: the Serve
    controller, the replica and its vLLM engine process, the proxy actor and its HAProxy), not this
    driver process and not `vllm serve`'s tree."""
    import psutil

    me = psutil.Process()
    skip = {vllm_proc.pid} if vllm_proc is not None else set()
    return [c for c in me.children() if c.pid not in skip]


def _start_vllm_serve(model_dir: str, env: list[str] | None = None):
    """vLLM's own OpenAI server on the folder, with llmray's engine settings and `env` (KEY=VALUE strings)
    added to its environment; returns (process, port)."""
    import subprocess

    from transformers import AutoConfig

    from llmray.testing import free_port

    context = int(AutoConfig.from_pretrained(model_dir).max_position_embeddings)
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", "bench/bench", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", str(context), "--enforce-eager", "--disable-log-stats"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
                                 **dict(e.split("=", 1) for e in env or [])})
    try:
        wait_healthy(port, proc)
    except BaseException:
        proc.terminate()
        raise
    return proc, port


def bench_interleaved(model_dir: str, runs_dir: Path, args) -> int:
    """Both servers up at once; `--rounds` rounds, each measuring one then the other (the order alternates),
    so a machine whose load drifts weighs on both sides alike. Medians over the rounds."""
    import ray
    from ray import serve

    from llmray.config import RayConfig
    from llmray.serve.launch import start_serving
    from llmray.serve_config import ServeConfig
    from llmray.testing import free_port

    port = free_port()
    pipe = types.SimpleNamespace(
        name="bench", workdir=str(runs_dir), stages={"bench": None}, ray=RayConfig(num_cpus=2),
        serve=ServeConfig(models=["bench"], port=port, engine="vllm", num_cpus=0.5, batch_size=32,
                          high_throughput=not args.standard_proxy))
    start_serving(pipe, echo=lambda m: None)
    import psutil

    proc, vport = _start_vllm_serve(model_dir, args.vllm_serve_env)
    ports = {"llmray": port, "vllm serve": vport}
    roots = {"llmray": llmray_roots(proc), "vllm serve": [psutil.Process(proc.pid)]}
    rounds: dict[str, list[dict]] = {k: [] for k in ports}
    try:
        for r in range(args.rounds):
            for side in (list(ports) if r % 2 == 0 else list(ports)[::-1]):
                rounds[side].append(side_by_side(ports[side], args, roots[side]))
    finally:
        proc.terminate()
        proc.wait(60)
        serve.shutdown()
        ray.shutdown()
    keys = ("p50_ms", "rps_8", "rps_32")
    med = {side: {k: statistics.median(x[k] for x in rs) for k in keys} | {"errors": sum(x["errors"] for x in rs)}
           for side, rs in rounds.items()}
    print(f"llmray serve (vLLM engine) vs vllm serve, both up, {args.rounds} interleaved rounds; p50 sequential at "
          f"max_tokens={args.latency_tokens}, req/s at max_tokens={args.throughput_tokens}; medians; ratio: llmray / vllm")
    print(f"  {'':12s} {'llmray':>9s} {'vllm serve':>11s} {'ratio':>6s}  per round")
    for k, label in zip(keys, ("p50 ms", "req/s @ 8", "req/s @ 32")):
        per = " ".join(f"{a[k] / b[k]:.2f}" for a, b in zip(rounds["llmray"], rounds["vllm serve"]))
        print(f"  {label:12s} {med['llmray'][k]:9.2f} {med['vllm serve'][k]:11.2f} "
              f"{med['llmray'][k] / med['vllm serve'][k]:6.2f}  {per}")
    print_cpu_table(rounds)
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": med, "rounds": rounds}, indent=2))
    return 0 if all(m["errors"] == 0 for m in med.values()) else 1


def print_cpu_table(rounds: dict[str, list[dict]]) -> None:
    """Median over rounds of CPU ms per request, per process kind, each side's whole process tree; on a
    CPU-bound machine req/s ~ cores / CPU-s per request, and this figure does not move with other load."""
    for c in (8, 32):
        print(f"CPU ms per request at {c} clients (user+system, whole process tree; median over rounds):")
        for side, rs in rounds.items():
            kinds = sorted({k for x in rs for k in x[f"cpu_ms_{c}"]},
                           key=lambda k: -statistics.median(x[f"cpu_ms_{c}"].get(k, 0) for x in rs))
            total = statistics.median(sum(x[f"cpu_ms_{c}"].values()) for x in rs)
            parts = ", ".join(f"{k} {statistics.median(x[f'cpu_ms_{c}'].get(k, 0) for x in rs):.2f}" for k in kinds)
            print(f"  {side:11s} {total:6.2f}  = {parts}")
        ratio = [sum(a[f"cpu_ms_{c}"].values()) / sum(b[f"cpu_ms_{c}"].values())
                 for a, b in zip(rounds["llmray"], rounds["vllm serve"])]
        print(f"  ratio llmray / vllm serve: {statistics.median(ratio):.2f} (per round "
              + " ".join(f"{x:.2f}" for x in ratio) + ")")


def _llmray_side(runs_dir: Path, args, names: dict) -> dict:
    """`side_by_side` through llmray serve (vLLM engine); Ray is shut down afterwards. With `names`, the model
    has its own deployment behind the ingress (as with several models): one more actor hop per request."""
    import ray
    from ray import serve

    from llmray.config import RayConfig
    from llmray.serve.launch import start_serving
    from llmray.serve_config import ServeConfig
    from llmray.testing import free_port

    port = free_port()
    pipe = types.SimpleNamespace(
        name="bench", workdir=str(runs_dir), stages={"bench": None}, ray=RayConfig(num_cpus=2),
        serve=ServeConfig(models=["bench"], names=names, port=port, engine="vllm", num_cpus=0.5, batch_size=32,
                          high_throughput=not args.standard_proxy))
    start_serving(pipe, echo=lambda m: None)
    try:
        return side_by_side(port, args)
    finally:
        serve.shutdown()
        ray.shutdown()


def bench_vs_vllm_serve(model_dir: str, runs_dir: Path, args) -> int:
    """llmray serve (vLLM engine) first, shut down, then vLLM's own server on the same folder."""
    if args.rounds > 1:
        return bench_interleaved(model_dir, runs_dir, args)
    sides = {"llmray": _llmray_side(runs_dir, args, {})}
    if args.handle:
        sides["llmray 2 hops"] = _llmray_side(runs_dir, args, {"assistant": "bench"})
    proc, port = _start_vllm_serve(model_dir, args.vllm_serve_env)
    try:
        theirs = side_by_side(port, args)
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"llmray serve (vLLM engine) vs vllm serve, same model and client; p50 sequential at "
          f"max_tokens={args.latency_tokens}, req/s at max_tokens={args.throughput_tokens}; ratio: llmray / vllm serve")
    head = "".join(f" {k:>14s}" for k in sides)
    print(f"  {'':14s}{head} {'vllm serve':>11s} {'ratio':>7s}  goal")
    for key, label, goal in [("p50_ms", "p50 ms", "<= 1.15")] + [(f"rps_{c}", f"req/s @ {c}", ">= 1.0") for c in (8, 32)]:
        ours = "".join(f" {v[key]:14.2f}" for v in sides.values())
        print(f"  {label:14s}{ours} {theirs[key]:11.2f} {sides['llmray'][key] / theirs[key]:7.2f}  {goal}")
    if args.json:
        Path(args.json).write_text(json.dumps({**sides, "vllm_serve": theirs}, indent=2))
    return 0 if sum(v["errors"] for v in sides.values()) == theirs["errors"] == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--model", default=None, help="HF model folder (default: the tiny random Llama)")
    ap.add_argument("--requests", type=int, default=200, help="sequential requests for the latency figures")
    ap.add_argument("--latency-tokens", type=int, default=1, help="max_tokens for the latency comparison")
    ap.add_argument("--throughput-tokens", type=int, default=16, help="max_tokens for the throughput runs")
    ap.add_argument("--per-client", type=int, default=0, help="requests per client (default: max(8, 256/c))")
    ap.add_argument("--standard-proxy", action="store_true",
                    help="Serve's default Python proxy instead of the high-throughput mode (HAProxy + gRPC)")
    ap.add_argument("--handle", action="store_true",
                    help="also serve a name (so the model runs in its own deployment, as with several models) "
                         "and time a DeploymentHandle call to it")
    ap.add_argument("--rounds", type=int, default=1,
                    help="--vs-vllm-serve: keep both servers up and alternate N rounds between them (medians)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--promote", action="store_true", help="measure latency during promotions instead")
    ap.add_argument("--vs-vllm-serve", action="store_true",
                    help="compare llmray serve (vLLM engine) with vLLM's own OpenAI server instead")
    ap.add_argument("--vllm-serve-env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra environment for `vllm serve` (e.g. VLLM_ENABLE_V1_MULTIPROCESSING=0, llmray's CPU "
                         "executor setting)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llmray-bench-serve-"))
    model = Path(args.model) if args.model else None
    if model is None:
        from llmray.testing import tiny_model_dir

        model = tiny_model_dir(tmp / "model", "causal")
    if args.promote:
        return bench_promote(args.engine, tmp, model)
    fake_run(model, tmp / "runs")
    model_dir = str(tmp / "runs" / "bench" / "bench" / "model")
    if args.vs_vllm_serve:
        return bench_vs_vllm_serve(model_dir, tmp / "runs", args)

    direct = bench_direct(model_dir, args.engine, args.requests, args.latency_tokens)

    from llmray.config import RayConfig
    from llmray.serve.launch import start_serving
    from llmray.serve_config import ServeConfig
    from llmray.testing import free_port

    port = free_port()
    pipe = types.SimpleNamespace(
        name="bench", workdir=str(tmp / "runs"), stages={"bench": None}, ray=RayConfig(num_cpus=2),
        serve=ServeConfig(models=["bench"], names={"assistant": "bench"} if args.handle else {}, port=port,
                          engine=args.engine, num_cpus=0.5, batch_size=32, high_throughput=not args.standard_proxy))
    t0 = time.time()
    start_serving(pipe, echo=lambda m: None)
    deploy_s = time.time() - t0
    # One model: it runs in the ingress replica (no model deployment, no handle hop to measure).
    handle = bench_handle(args.requests, args.latency_tokens) if args.handle else None
    http1 = bench_http(port, 1, args.requests, args.latency_tokens)
    runs = [bench_http(port, c, args.per_client or max(8, 256 // c), args.throughput_tokens) for c in (1, 8, 32)]

    res = {
        "engine": args.engine, "proxy": "ray" if args.standard_proxy else "haproxy", "deploy_s": round(deploy_s, 1), "latency_max_tokens": args.latency_tokens,
        "direct_p50_ms": 1000 * statistics.median(direct),
        "http_p50_ms": http1["p50_ms"], "http_p95_ms": http1["p95_ms"],
        "serve_overhead_p50_ms": http1["p50_ms"] - 1000 * statistics.median(direct),
        "throughput_max_tokens": args.throughput_tokens, "throughput": runs,
    }
    print(f"engine {args.engine}; proxy {res['proxy']}; deploy {res['deploy_s']} s; latency runs: {args.requests} requests, "
          f"max_tokens={args.latency_tokens}")
    print(f"  p50 direct in-process  {res['direct_p50_ms']:7.2f} ms")
    if handle:
        res["handle_p50_ms"] = 1000 * statistics.median(handle)
        res["handle_overhead_p50_ms"] = res["handle_p50_ms"] - res["direct_p50_ms"]
        print(f"  p50 Serve handle       {res['handle_p50_ms']:7.2f} ms  (+{res['handle_overhead_p50_ms']:.2f})")
    print(f"  p50 HTTP via Serve     {res['http_p50_ms']:7.2f} ms  (+{res['serve_overhead_p50_ms']:.2f} "
          f"added by the Serve layer; goal <= 5 ms)")
    print(f"throughput over HTTP, max_tokens={args.throughput_tokens}:")
    for r in runs:
        print(f"  concurrency {r['concurrency']:3d}: {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
              f"p95 {r['p95_ms']:7.1f} ms  errors {r['errors']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(r["errors"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
