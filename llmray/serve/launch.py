"""`llmray serve` and `llmray compare`: start Serve for a pipeline's models, print the URL, query them.

serve:   pipeline --resolve_spec (completed stages and external `from:` models, align gate, API-key
         hash)--> init_ray
         --resource check--> serve.start(host, port) --> run the application (app.build_application)
         --> wait until Serve says RUNNING and GET /health answers --> (a local Ray of our own, vLLM on
         CPU) move Ray's processes off the model worker's cores --> print http://host:port/v1
         then block until Ctrl-C / SIGTERM (default), or return at once (--detach).
--detach: with a Ray cluster to join (`ray.address` or $RAY_ADDRESS) the application is
         deployed there and stays after this command exits; without one, a background
         `llmray serve` process owns a local Ray and the server (its pid, URL and log in
         <run>/.serve/). `llmray serve FILE --stop` ends either.
compare: POST /v1/compare on the running server (or, when none answers, a temporary one
         started in-process) and print each model's answer under its id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from llmray.serve.replica import single_deployment
from llmray.serve.spec import ServeError, resolve_spec

# Ray Serve's documented high-throughput mode (Ray >= 2.55): HAProxy as the HTTP proxy, the ingress
# replica answering HTTP itself, gRPC between replicas. Given to the Serve controller when we start
# it; replicas inherit the controller's environment, so the whole instance uses one mode. The
# ingress drain period (30 s by default, for external load balancers) is cut to 2 s: Serve's own
# HAProxy is reconfigured by the controller, and 30 s made every shutdown and redeploy slow.
HIGH_THROUGHPUT_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                       "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def serve_ray_env(cpus: int | None = None, environ=os.environ) -> dict[str, str]:
    """Environment for a Ray that `llmray serve` starts itself (every Ray process inherits it: GCS, raylet,
    the Serve controller, HAProxy, the replicas and their engine processes); a variable already set in
    `environ` is left to its value. Never given to a cluster we join. Each entry changes speed only:
    the same answers (tests/test_serve_*.py), measured in bench/README.md "Against `vllm serve`".

    - RAY_worker_niceness=0: Ray starts its workers at nice 15 so that batch work never starves its own
      daemons. A server is the foreground job: at nice 15 every other busy process on the machine
      preempts its replicas and engine processes (`vllm serve` runs at nice 0).
    - RAY_SERVE_HAPROXY_NBTHREAD: Serve's HAProxy runs 4 threads by default; on a small machine they
      compete with the replica and the engine for the same cores. Sized to the node: min(4, CPUs).
    The rest cut what Ray's own processes spend per second whatever the traffic (on 2 cores, ~0.13 of a
    core idle: GCS, raylet, the Serve controller, the metrics agent), CPU the engine then has:
    - RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5: the controller reconciles every 0.1 s by default; a
      deployment change or a failed replica is then noticed up to 0.5 s later.
    - RAY_enable_metrics_collection=0: no Prometheus metrics export from Ray and Serve (this Ray has no
      dashboard to show them); the metrics agent stops sampling every process.
    - RAY_task_events_report_interval_ms=0: no task events to the GCS (`ray list tasks`, `ray timeline`
      stay empty for this Ray); the controller's health checks and polls are actor tasks too.
    """
    cpus = max(1, int(cpus or os.cpu_count() or 1))
    env = {"RAY_worker_niceness": "0", "RAY_SERVE_HAPROXY_NBTHREAD": str(min(4, cpus)),
           "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_enable_metrics_collection": "0",
           "RAY_task_events_report_interval_ms": "0"}
    return {k: v for k, v in env.items() if k not in environ}


def _proc_tree(root: int) -> list[tuple[int, str]]:
    """(pid, name) of every descendant of `root` (name: the base name of the process title's first word,
    which Ray and vLLM set: `raylet`, `ray::IDLE`, `ray::ServeReplica:...`, `VLLM::Worker`, ...; psutil's
    own `name()` is the kernel's 15-character `comm`, which cuts these titles short)."""
    out = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            cmd = proc.cmdline()
            name = os.path.basename(cmd[0].split(" ")[0]) if cmd and cmd[0] else proc.name()
        except psutil.Error:  # it exited (or is a zombie) since the listing
            continue
        out.append((proc.pid, name))
    return out


def model_core_plan(procs: list[tuple[int, str, set[int]]], allowed: set[int]) -> tuple[set[int], list[int]]:
    """Which CPUs Ray's processes should keep to, and which processes to move there, given (pid, name,
    CPU affinity) of the processes under this one. vLLM on CPU binds its model worker's threads to some
    cores (`VLLM_CPU_OMP_THREADS_BIND=auto`: all but the last core of the node, reserved "for the rest")
    and leaves every other process free to run there too. Nothing to do (empty plan) without a bound
    worker (GPU, or another engine) or without a core left over. The raylet (it forks new workers, which
    must see the whole machine so that a restarted replica's vLLM binds as before) and idle workers (Ray
    reuses them for new actors) keep their CPUs."""
    model: set[int] = set()
    for _, name, cpus in procs:
        if name.startswith("VLLM::Worker"):
            model |= cpus
    spare = allowed - model
    if not model or not spare or model >= allowed:
        return set(), []
    keep = ("VLLM::Worker", "raylet", "ray::IDLE")
    return spare, [pid for pid, name, _ in procs if not name.startswith(keep)]


_MOVED: list[int] = []  # processes keep_off_model_cores moved, given the whole machine back by stop_serving


def _set_affinity(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        try:
            tids = [t.id for t in psutil.Process(pid).threads()]
        except psutil.Error:
            continue  # a process that ended meanwhile
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except (OSError, ValueError):
                pass  # a thread that ended meanwhile


def keep_off_model_cores() -> set[int]:
    """Move the processes of the local Ray this process started (GCS, Ray's agents, the Serve controller,
    proxy and HAProxy, the replicas and their vLLM engine-core processes) off the cores vLLM bound its
    model worker to, every thread of each, so that the model's forward passes are not preempted by them
    (bench/README.md "Against `vllm serve`", session 13). Returns the CPUs they now keep to (empty: nothing
    moved). A replica started later (after a failure, by autoscaling) runs where the raylet lets it."""
    procs = []
    for pid, name in _proc_tree(os.getpid()):
        try:
            procs.append((pid, name, os.sched_getaffinity(pid)))
        except OSError:
            pass
    spare, pids = model_core_plan(procs, os.sched_getaffinity(0))
    _set_affinity(pids, spare)
    _MOVED.extend(pids)
    return spare


def app_name(pipe) -> str:
    return f"llmray-{pipe.name}"


def base_url(pipe) -> str:
    host = pipe.serve.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{pipe.serve.port}{pipe.serve.route_prefix.rstrip('/')}/v1"


def state_dir(pipe) -> Path:
    from llmray.runner import run_dir

    return run_dir(pipe) / ".serve"


# ---------------------------------------------------------------- HTTP helpers (stdlib only)


def http_json(method: str, url: str, body: dict | None = None, api_key: str | None = None,
              timeout: float = 300) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except json.JSONDecodeError:
            return e.code, {}


def healthy(url: str, timeout: float = 3) -> bool:
    try:
        code, _ = http_json("GET", url.removesuffix("/v1") + "/health", timeout=timeout)
    except (OSError, ValueError):
        return False
    return code == 200


# ---------------------------------------------------------------- starting Serve


def _check_resources(spec: dict) -> None:
    """Refuse early instead of leaving replicas pending forever (a 2-CPU laptop fills fast)."""
    import ray

    s = spec["settings"]
    replicas = s["autoscaling"]["min_replicas"] if s.get("autoscaling") else s["replicas"]
    n = (len(spec["models"]) + len(spec.get("names", []))) * max(1, replicas)
    ingresses = n if single_deployment(spec) else 1  # one model: each replica is its own ingress too
    need_cpu, need_gpu = ingresses * s["ingress_num_cpus"] + n * s["num_cpus"], n * s["num_gpus"]
    have = ray.cluster_resources()
    if need_cpu > have.get("CPU", 0) + 1e-9 or need_gpu > have.get("GPU", 0) + 1e-9:
        raise ServeError(
            f"serving {len(spec['models'])} model(s) x {replicas} replica(s) needs {need_cpu:g} CPU / "
            f"{need_gpu:g} GPU; "
            f"the Ray cluster has {have.get('CPU', 0):g} CPU / {have.get('GPU', 0):g} GPU. "
            "Lower serve.num_cpus (fractions are fine: replicas mostly wait) or serve fewer models.")


def _wait_running(name: str, timeout: float, echo) -> None:
    from ray import serve

    t0, last = time.time(), None
    while time.time() - t0 < timeout:
        app = serve.status().applications.get(name)
        state = app.status if app else "NOT_STARTED"
        if state == "RUNNING":
            return
        if state in ("DEPLOY_FAILED", "UNHEALTHY"):
            details = "; ".join(f"{d}: {s.message}" for d, s in app.deployments.items() if s.message)
            raise ServeError(f"Serve application {name} {state}: {app.message or details}")
        if state != last:
            echo(f"[llmray] serve: {name} {state.lower()} ...")
            last = state
        time.sleep(1)
    raise ServeError(f"Serve application {name} not running after {timeout:.0f}s (serve.deploy_timeout_s)")


def _init_ray_for_serving(ray_cfg) -> None:
    """init_ray, with `serve_ray_env` in the environment while a local Ray may be started (then restored;
    a cluster we join never sees it: init_ray passes it only WORKER_ENV)."""
    from llmray.rayutil import init_ray

    added = serve_ray_env(getattr(ray_cfg, "num_cpus", None))
    os.environ.update(added)
    try:
        init_ray(ray_cfg)
    finally:
        for k in added:
            os.environ.pop(k, None)


def start_serving(pipe, allow_blocked: bool = False, engine: str | None = None, echo=print) -> dict:
    """Deploy the pipeline's models on Ray Serve; returns {"url", "app", "default", "models"} once healthy."""
    from ray import serve

    from llmray.rayutil import started_here
    from llmray.serve.app import build_application

    spec = resolve_spec(pipe, allow_blocked, engine)
    cfg = pipe.serve
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key_env:
        echo(f"[llmray] WARNING: serving on {cfg.host} without an API key (serve.api_key_env): anyone who can "
             "reach this port can use the models")
    _init_ray_for_serving(pipe.ray)
    _check_resources(spec)
    controller_env = dict(HIGH_THROUGHPUT_ENV) if cfg.high_throughput else {}
    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s},
                proxy_location="HeadOnly", controller_options={"runtime_env": {"env_vars": controller_env}})
    name = app_name(pipe)
    for m in spec["models"]:
        flag = "  [BLOCKED by the align gate]" if m["blocked"] else ""
        source = f"{m['from']} ({m['dir']})" if m.get("from") and m["from"] != m["dir"] else m["dir"]
        echo(f"[llmray] serve: {m['id']} <- {source}{flag}")
    for n in spec.get("names", []):
        echo(f"[llmray] serve: {n['id']} <- {n['version']['key']} (promote with `llmray promote`)")
    logging_config = {"enable_access_log": cfg.access_log}
    serve.run_many([serve.RunTarget(build_application(spec), name=name, route_prefix=cfg.route_prefix,
                                    logging_config=logging_config)], wait_for_applications_running=False)
    _wait_running(name, cfg.deploy_timeout_s, echo)
    url = base_url(pipe)
    t0 = time.time()
    while not healthy(url):
        if time.time() - t0 > 60:
            raise ServeError(f"Serve says {name} is running but {url.removesuffix('/v1')}/health does not answer; "
                             "is another Serve instance on this Ray cluster bound to a different port?")
        time.sleep(0.5)
    if hasattr(os, "sched_setaffinity") and started_here():  # Linux, and a Ray of our own: its processes are ours
        spare = keep_off_model_cores()
        if spare:
            echo(f"[llmray] serve: Ray's processes keep to CPUs {sorted(spare)}, the vLLM model's cores left to it")
    return {"url": url, "app": name, "default": spec["default"], "models": [m["id"] for m in spec["models"]]}


def stop_serving(pipe) -> None:
    from ray import serve

    serve.delete(app_name(pipe))
    # Ray's processes outlive the application (a notebook or test session trains on after serving): they get
    # this process's CPUs back, as before serving.
    if _MOVED:
        _set_affinity(_MOVED, os.sched_getaffinity(0))
        _MOVED.clear()


# ---------------------------------------------------------------- the commands


def add_arguments_serve(p) -> None:
    p.add_argument("--allow-blocked", action="store_true",
                   help="serve a model the align gate blocked as the default anyway")
    p.add_argument("--engine", choices=["auto", "vllm", "hf"], default=None, help="override serve.engine")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--blocking", dest="detach", action="store_false", default=False,
                      help="serve until Ctrl-C (the default)")
    mode.add_argument("--detach", dest="detach", action="store_true",
                      help="return once the models answer; the server keeps running")
    mode.add_argument("--stop", action="store_true", help="stop a server started with --detach")


def _has_cluster(pipe) -> bool:
    return bool(pipe.ray.address or os.environ.get("RAY_ADDRESS"))


def cmd_serve(pipe, args) -> int:
    if pipe.serve is None:
        print("[llmray] this pipeline has no `serve:` section", file=sys.stderr)
        return 2
    if getattr(args, "stop", False):
        return _stop(pipe)
    if args.detach and not _has_cluster(pipe):
        return _spawn_detached(pipe, args)
    try:
        info = start_serving(pipe, args.allow_blocked, args.engine, echo=lambda m: print(m, flush=True))
    except ServeError as e:
        print(f"[llmray] {e}", file=sys.stderr)
        return 2
    default = f" (default: {info['default']})" if info["default"] else " (no default model: name one)"
    print(f"[llmray] serving {', '.join(info['models'])}{default}", flush=True)
    print(f"[llmray] OpenAI-compatible endpoint: {info['url']}", flush=True)
    print(info["url"], flush=True)
    if args.detach:
        print(f"[llmray] detached; stop with: llmray serve {args.file} --stop", flush=True)
        return 0
    return _block(pipe, info)


def _block(pipe, info: dict) -> int:
    """Serve until Ctrl-C or SIGTERM; the state file lets `--stop` and `compare` find this server."""
    sd = state_dir(pipe)
    sd.mkdir(parents=True, exist_ok=True)
    state = sd / "server.json"
    state.write_text(json.dumps({"pid": os.getpid(), "url": info["url"], "app": info["app"]}))

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("[llmray] stopping the server", flush=True)
    finally:
        if state.exists() and json.loads(state.read_text()).get("pid") == os.getpid():
            state.unlink()
        try:
            stop_serving(pipe)
        except Exception as e:  # noqa: BLE001 - best effort while exiting
            print(f"[llmray] serve.delete failed: {e}", file=sys.stderr)
    return 0


def _serve_argv(args) -> list[str]:
    argv = [sys.executable, "-m", "llmray.cli", "serve", args.file, *args.overrides]
    if args.allow_blocked:
        argv.append("--allow-blocked")
    if args.engine:
        argv += ["--engine", args.engine]
    return argv


def _spawn_detached(pipe, args) -> int:
    """No cluster to keep the app alive: run the blocking server in the background, wait until healthy."""
    sd = state_dir(pipe)
    sd.mkdir(parents=True, exist_ok=True)
    url = base_url(pipe)
    if healthy(url):
        print(f"[llmray] something already answers at {url}; stop it first (llmray serve {args.file} --stop)",
              file=sys.stderr)
        return 1
    logf = sd / "server.log"
    with open(logf, "w") as out:
        proc = subprocess.Popen(_serve_argv(args), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    t0, limit = time.time(), pipe.serve.deploy_timeout_s + 120
    while not healthy(url):
        if proc.poll() is not None:
            print(f"[llmray] the server exited ({proc.returncode}); its log, {logf}:\n"
                  + "".join(logf.read_text().splitlines(keepends=True)[-30:]), file=sys.stderr)
            return proc.returncode or 1
        if time.time() - t0 > limit:
            os.kill(proc.pid, signal.SIGTERM)
            print(f"[llmray] no healthy server after {limit:.0f}s; see {logf}", file=sys.stderr)
            return 1
        time.sleep(1)
    print(f"[llmray] serving in the background (pid {proc.pid}, log {logf})", flush=True)
    print(f"[llmray] OpenAI-compatible endpoint: {url}", flush=True)
    print(url, flush=True)
    print(f"[llmray] stop with: llmray serve {args.file} --stop", flush=True)
    return 0


def _our_process(pid: int) -> bool:
    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return "llmray.cli" in cmd and "serve" in cmd


def _stop(pipe) -> int:
    state = state_dir(pipe) / "server.json"
    if state.exists():
        pid = json.loads(state.read_text()).get("pid")
        if pid and _our_process(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(120):
                if not _our_process(pid):
                    break
                time.sleep(0.5)
            print(f"[llmray] stopped the server (pid {pid})")
            return 0
        state.unlink()
    if _has_cluster(pipe):
        from llmray.rayutil import init_ray

        init_ray(pipe.ray)
        stop_serving(pipe)
        print(f"[llmray] deleted Serve application {app_name(pipe)}")
        return 0
    print("[llmray] no running server found for this pipeline", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- compare


def add_arguments_compare(p) -> None:
    p.add_argument("prompt", help="the prompt (sent as one user message, or raw with --completion)")
    p.add_argument("--models", default="", help="comma-separated stage or external model names, or model ids "
                                           "(default: serve.models)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens per answer")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--completion", action="store_true", help="send a raw completion prompt, not a chat message")
    p.add_argument("--url", default=None, help="server base URL (default: the running server for this pipeline)")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")


def compare_body(args) -> dict:
    body = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    if args.seed is not None:
        body["seed"] = args.seed
    if args.models:
        body["models"] = [m for m in args.models.split(",") if m]
    if args.completion:
        body["prompt"] = args.prompt
    else:
        body["messages"] = [{"role": "user", "content": args.prompt}]
    return body


def cmd_compare(pipe, args) -> int:
    if pipe.serve is None:
        print("[llmray] this pipeline has no `serve:` section", file=sys.stderr)
        return 2
    key = os.environ.get(pipe.serve.api_key_env or "", "") or None
    url = args.url or base_url(pipe)
    started = False
    if not healthy(url):
        if args.url:
            print(f"[llmray] no server answers at {url}", file=sys.stderr)
            return 1
        print(f"[llmray] no server at {url}; starting one for this comparison", file=sys.stderr, flush=True)
        try:
            url = start_serving(pipe, engine=None, echo=lambda m: print(m, file=sys.stderr, flush=True))["url"]
        except ServeError as e:
            print(f"[llmray] {e}", file=sys.stderr)
            return 2
        started = True
    try:
        code, answer = http_json("POST", url + "/compare", compare_body(args), key)
    finally:
        if started:
            stop_serving(pipe)
    if code != 200:
        print(f"[llmray] compare failed ({code}): {answer.get('error', answer)}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else render_compare(answer))
    return 0


def render_compare(answer: dict) -> str:
    """Each model's answer under a header line: id, latency, finish reason."""
    out = []
    for r in answer["results"]:
        if "error" in r:
            out.append(f"── {r['model']}  ERROR {r.get('status')}: {r['error']['message']}")
            continue
        out.append(f"── {r['model']}  ({r['latency_ms']:.0f} ms, {r['usage']['completion_tokens']} tokens, "
                   f"{r['finish_reason']})")
        out.append(r["text"].rstrip() or "(empty)")
        out.append("")
    return "\n".join(out).rstrip()
