"""What gets served: a validated pipeline + its run directory -> a plain, picklable serve spec.

pipe.serve.models --(URI workdir: downloaded from the store into the mirror)--> for each stage:
<run>/<stage>/manifest.json must be `completed` and declare outputs.model--> model id
`<pipeline>/<stage>` + the absolute model folder (paths only ever come from manifests, never from
requests) --align gate--> which model may be the default.
An external model `{name, from}` --llmray.models.resolve_model_source (a URI downloaded once into
<run>/.models/; the folder checked as a causal LM)--> model id `<pipeline>/<name>`, kind `external`;
its "stage" key holds its name (the short alias requests may use). An align stage that evaluated it
under the same label (`from: {<name>: ...}`) gates it like a stage model.

The align gate: a served model is blocked when either
  - an align stage of the pipeline blocked it: `llmray.safety.gate.gate_status(run, pipe)`, which
    reads every align stage's `metrics.gate = {stage: {"status", "reasons"}}` and distrusts align
    stages that have not completed or are stale; or
  - its own manifest says so: manifest["metrics"]["gate"] = {"status": "passed" | "blocked",
    "reasons": [...]}, or a top-level `"blocked": true`.
A blocked model is still served under its own id, for side-by-side comparison, but never as the
default unless `--allow-blocked`.

The guardrail: `serve.guardrail` (on by default) screens with the trained guardrail of the last
completed, current align stage (`llmray.safety.gate.guardrail_dir`), or of the align stage it
names, plus any `blocklist` rules and `function`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path


class ServeError(Exception):
    """A reason `llmray serve` cannot start (printed without a traceback, exit 2)."""


def gate_of(manifest: dict) -> tuple[bool, list[str]]:
    """(blocked, reasons) from a stage manifest; no gate recorded = not blocked."""
    gate = (manifest.get("metrics") or {}).get("gate") or manifest.get("gate") or {}
    blocked = bool(manifest.get("blocked")) or (isinstance(gate, dict) and gate.get("status") == "blocked")
    reasons = list(gate.get("reasons") or []) if isinstance(gate, dict) else []
    return blocked, reasons


def _align_stages(pipe) -> list[str]:
    return [n for n, c in pipe.stages.items() if getattr(c, "kind", None) == "align"]


def align_gates(pipe, root: Path) -> dict[str, dict]:
    """{stage: {"status", "reasons", "align"}} from the pipeline's align stages ({} when none)."""
    if not _align_stages(pipe):
        return {}
    from llmray.safety.gate import gate_status

    return gate_status(root, pipe)


def _created(manifest: dict) -> int:
    try:
        return int(dt.datetime.fromisoformat(manifest["finished"]).timestamp())
    except (KeyError, TypeError, ValueError):
        return 0


def _align_verdict(blocked: bool, reasons: list[str], align: dict | None, screened: bool) -> tuple[bool, list]:
    """(blocked, reasons) once the align stages' verdict on a served model is added."""
    if align and align["status"] != "passed":
        return True, reasons + list(align["reasons"])
    if align and align.get("needs_guardrail") and not screened:
        # The gate passed the model only with the align guardrail in front of it.
        return True, reasons + [f"{', '.join(align['align'])}: passed with the guardrail in front (gate.guarded), "
                                "but serve.guardrail does not screen with the align stage's guardrail"]
    return blocked, reasons


def _served_model(pipe, root: Path, stage: str, gates: dict, screened: bool) -> dict:
    from llmray.runner import read_manifest

    man = read_manifest(root / stage)
    state = (man or {}).get("status", "not run")
    if state != "completed":
        raise ServeError(f"serve.models: stage {stage!r} has not completed (state: {state}); "
                         f"run `llmray run <file> --stages {stage}` first")
    rel = (man.get("outputs") or {}).get("model")
    if not rel:
        raise ServeError(f"serve.models: stage {stage!r} ({man.get('kind')}) has no `model` output to serve")
    folder = (root / stage / rel).resolve()
    if not (folder / "config.json").exists():
        raise ServeError(f"serve.models: {folder} is not an HF model folder (no config.json)")
    align = gates.get(stage)
    blocked, reasons = _align_verdict(*gate_of(man), align, screened)
    gate = "blocked" if blocked else ("passed" if align or (man.get("metrics") or {}).get("gate") else None)
    return {"id": f"{pipe.name}/{stage}", "stage": stage, "kind": man.get("kind"), "dir": str(folder),
            "created": _created(man), "blocked": blocked, "gate": gate, "gate_reasons": reasons,
            "fingerprint": man.get("fingerprint") or "", "align": list((align or {}).get("align") or [])}


def version_of(model: dict) -> dict:
    """A served stage model as a *version* behind a name: what `llmray promote` moves names between."""
    fp = model.get("fingerprint") or ""
    return {"key": f"{model['stage']}@{fp[:12] or 'unversioned'}", "stage": model["stage"], "fingerprint": fp,
            "dir": model["dir"], "kind": model.get("kind")}


def _names(pipe, root: Path, gates: dict, screened: bool, allow_blocked: bool) -> list[dict]:
    """serve.names -> [{"name", "id", "version"}]: each name's first version (a gate-blocked stage only with
    --allow-blocked)."""
    out = []
    for name, stage in pipe.serve.names.items():
        if stage not in pipe.stages:
            raise ServeError(f"serve.names.{name}: no stage named {stage!r} in this pipeline")
        if name in [m if isinstance(m, str) else m.name for m in pipe.serve.models]:
            raise ServeError(f"serve.names.{name}: {name!r} is already a served model; pick another name")
        m = _served_model(pipe, root, stage, gates, screened)
        if m["blocked"] and not allow_blocked:
            raise ServeError(f"serve.names.{name}: the align gate blocked {stage!r} "
                             f"({'; '.join(m['gate_reasons']) or 'no reason recorded'}); pass --allow-blocked")
        out.append({"name": name, "id": f"{pipe.name}/{name}", "version": version_of(m)})
    return out


def _external_model(pipe, root: Path, i: int, item, gates: dict, screened: bool) -> dict:
    """A served model from outside the pipeline: its folder resolved (downloaded) and checked."""
    from llmray.models import ModelSourceError, model_cache, resolve_model_source, shown_uri

    try:
        folder = resolve_model_source(item.from_, model_cache(root), f"serve.models.{i}.from")
    except ModelSourceError as e:
        raise ServeError(str(e)) from None
    align = gates.get(item.name)
    blocked, reasons = _align_verdict(False, [], align, screened)
    return {"id": f"{pipe.name}/{item.name}", "stage": item.name, "kind": "external", "dir": str(folder.resolve()),
            "created": int((folder / "config.json").stat().st_mtime), "blocked": blocked,
            "gate": ("blocked" if blocked else "passed") if align else None, "gate_reasons": reasons,
            "from": shown_uri(item.from_)}


def _default(cfg, models: list[dict], allow_blocked: bool) -> str | None:
    by_stage = {m["stage"]: m for m in models}
    if cfg.default:
        m = by_stage[cfg.default]
        if m["blocked"] and not allow_blocked:
            why = "; ".join(m["gate_reasons"]) or "no reason recorded"
            raise ServeError(f"serve.default: the align gate blocked {cfg.default!r} ({why}); "
                             "fix it, pick another default, or pass --allow-blocked")
        return m["id"]
    usable = [m for m in models if allow_blocked or not m["blocked"]]
    return usable[-1]["id"] if usable else None


def _guardrail_folder(pipe, root: Path) -> str | None:
    """The align guardrail folder to screen with (None: no align screening)."""
    from llmray.runner import read_manifest

    g = pipe.serve.guardrail
    if g.stage:
        if getattr(pipe.stages.get(g.stage), "kind", None) != "align":
            raise ServeError(f"serve.guardrail.stage: {g.stage!r} is not an align stage of this pipeline")
        man = read_manifest(root / g.stage) or {}
        rel = (man.get("outputs") or {}).get("guardrail")
        if man.get("status") == "completed" and rel and (root / g.stage / rel).is_dir():
            return str((root / g.stage / rel).resolve())
        if g.required:
            raise ServeError(f"serve.guardrail.stage: align stage {g.stage!r} has no completed guardrail/; "
                             f"run it, or set serve.guardrail.required: false")
        return None
    if g.use_align and _align_stages(pipe):
        from llmray.safety.gate import guardrail_dir

        found = guardrail_dir(root, pipe)
        return str(found.resolve()) if found else None
    return None


def _guardrail(pipe, root: Path) -> dict | None:
    g = pipe.serve.guardrail
    spec = {"blocklist": list(g.blocklist), "function": g.function, "folder": _guardrail_folder(pipe, root),
            "message": g.message}
    return spec if (spec["blocklist"] or spec["function"] or spec["folder"]) else None


def api_key_hash(env_name: str | None) -> str | None:
    """sha256 of the key named by `api_key_env`: only the hash travels to the replicas."""
    if not env_name:
        return None
    key = os.environ.get(env_name, "")
    if not key:
        raise ServeError(f"serve.api_key_env: environment variable {env_name} is not set (or empty); "
                         "set it, or remove api_key_env to serve without a key")
    return hashlib.sha256(key.encode()).hexdigest()


def resolve_spec(pipe, allow_blocked: bool = False, engine: str | None = None) -> dict:
    """The serve spec: everything the Serve application needs, as plain data."""
    from llmray.runner import sync_local

    if pipe.serve is None:
        raise ServeError("this pipeline has no `serve:` section (add serve.models: [<stage>, ...])")
    cfg = pipe.serve
    # A URI workdir: the served models and the align stages (gate, guardrail) come down from the store.
    # The report page the app shows needs every stage's manifest and metrics.
    from llmray.storage import report_files

    sync_local(pipe, only=report_files)
    stages = [m for m in cfg.models if isinstance(m, str)]
    root = sync_local(pipe, [*stages, *cfg.names.values(), *_align_stages(pipe)])
    gates = align_gates(pipe, root)
    guardrail = _guardrail(pipe, root)
    screened = bool(guardrail and guardrail["folder"])
    models = [_served_model(pipe, root, m, gates, screened) if isinstance(m, str)
              else _external_model(pipe, root, i, m, gates, screened) for i, m in enumerate(cfg.models)]
    return {
        "pipeline": pipe.name,
        "run_dir": str(root.resolve()),
        "models": models,
        "default": _default(cfg, models, allow_blocked),
        "names": _names(pipe, root, gates, screened, allow_blocked),
        "engine": engine or cfg.engine,
        "settings": cfg.model_dump(mode="json", exclude={"guardrail"}),
        "api_key_sha256": api_key_hash(cfg.api_key_env),
        "guardrail": guardrail,
    }
