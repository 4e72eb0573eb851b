"""Versions behind served names: promotion with a canary, automatic rollback, and the history log.

A served name (`serve.names: {assistant: dpo}`) points to a *version*: one stage's model/ at one
fingerprint (`spec.version_of`: {"key": "dpo@1a2b3c4d5e6f", "stage", "fingerprint", "dir"}). Each
name has its own model deployment ("name-<name>") whose replicas hold one engine per loaded version.

Promotion (`llmray promote FILE --stage ppo --to assistant --canary 0.1`):
  CLI: `candidate` (completed manifest, align gate: refused naming the gate and its figures)
  --> POST <url>/admin/promote {name, stage, fingerprint, canary, who}; the ingress re-reads the stage
      manifest itself (model paths never come from a request) --> `NameRouter.promote`:
  load the candidate into the name's deployment (vLLM: in-place weight reload when the switch is
  immediate and the architecture matches; otherwise a second engine beside the live one)
      -- load fails --> rolled_back (no request ever reached it)
  --> canary: `share` of the name's requests go to the candidate; a canary request that fails is
      retried on the live version (the client never sees it) and counted against the candidate
  --> after window_s: `verdict(live stats, canary stats, thresholds)` --> completed (the candidate is
      live; the old version stays recorded as `previous`) or rolled_back (traffic fully back, reason kept).
  The CLI polls GET <url>/admin/names until the promotion settles.
`llmray rollback FILE --to assistant` moves a name back to its previous version (loaded first, then
switched). `serve.promote: auto`: after `llmray run`, `after_run` promotes each name whose stage has a
new, gate-passed version, when a server for the pipeline answers.
State in the run directory: .serve/routes.json (what each name serves; restored when the ingress
restarts) and promotions.json (history, one record per event: who/what/when/why; shown in the report).
"""

from __future__ import annotations

import getpass
import os
import sys
import time

from llmray.serve.spec import version_of
from llmray.serve.versions import PromoteError


def candidate(pipe, stage: str) -> dict:
    """The version `llmray promote --stage` would load; PromoteError when it may not be promoted."""
    from llmray.runner import sync_local
    from llmray.serve.spec import _align_stages, _guardrail, _served_model, align_gates

    if stage not in pipe.stages:
        raise PromoteError(f"--stage: no stage named {stage!r} in this pipeline")
    root = sync_local(pipe, [stage, *_align_stages(pipe)])
    gates = align_gates(pipe, root)
    guardrail = _guardrail(pipe, root)
    m = _served_model(pipe, root, stage, gates, bool(guardrail and guardrail["folder"]))
    if m["blocked"]:
        gate = ", ".join(m["align"]) or f"{stage}'s own gate (manifest metrics.gate)"
        raise PromoteError(f"cannot promote {stage!r}: the align gate ({gate}) blocked it: "
                           + ("; ".join(m["gate_reasons"]) or "no reason recorded"))
    return version_of(m)


def _default_name(pipe, to: str | None) -> str:
    names = list(pipe.serve.names)
    if to:
        if to not in names:
            raise PromoteError(f"--to: {to!r} is not one of serve.names ({', '.join(names) or 'none'})")
        return to
    if len(names) != 1:
        raise PromoteError(f"--to: name one of serve.names ({', '.join(names) or 'none: add serve.names'})")
    return names[0]


def _server(pipe) -> tuple[str, str | None]:
    from llmray.serve.launch import base_url, healthy

    url = base_url(pipe)
    if not healthy(url):
        raise PromoteError(f"no server answers at {url}; start one with `llmray serve <file> --detach`")
    return url, os.environ.get(pipe.serve.api_key_env or "", "") or None


def promote(pipe, stage: str, to: str | None = None, canary: float | None = None, wait: bool = True,
            echo=print) -> dict:
    """Promote `stage`'s current version behind a served name of the running server; the outcome."""
    from llmray.serve.launch import http_json

    if pipe.serve is None:
        raise PromoteError("this pipeline has no `serve:` section")
    name, version = _default_name(pipe, to), candidate(pipe, stage)
    url, key = _server(pipe)
    body = {"name": name, "stage": stage, "fingerprint": version["fingerprint"], "canary": canary,
            "who": getpass.getuser()}
    code, answer = http_json("POST", url.removesuffix("/v1") + "/admin/promote", body, key)
    if code != 200:
        raise PromoteError((answer.get("error") or {}).get("message") or f"HTTP {code}")
    if answer["status"] == "canary":
        echo(f"[llmray] {name}: canary {answer['to']} gets {answer['canary']:.0%} of requests for "
             f"{pipe.serve.promote.window_s:g}s")
        if not wait:
            return answer
        answer = _wait_settled(url, key, name, pipe.serve.promote.window_s * 5 + 60)
    return answer


def _wait_settled(url: str, key: str | None, name: str, timeout: float) -> dict:
    from llmray.serve.launch import http_json

    t0 = time.time()
    while time.time() - t0 < timeout:
        _, names = http_json("GET", url.removesuffix("/v1") + "/admin/names", api_key=key)
        route = next(r for r in names["data"] if r["name"] == name)
        if route["state"] == "live":
            return {"status": route["last"]["outcome"], **route["last"], "name": name}
        time.sleep(1)
    raise PromoteError(f"{name}: the promotion did not settle within {timeout:.0f}s")


def add_arguments_promote(p) -> None:
    p.add_argument("--stage", required=True, help="the stage whose model goes live")
    p.add_argument("--to", default=None, help="the served name (one of serve.names; default: the only one)")
    p.add_argument("--canary", type=float, default=None, help="share of traffic for the canary "
                                                              "(default serve.promote.canary; 0 = switch at once)")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="return once the canary is live")


def cmd_promote(pipe, args) -> int:
    if args.canary is not None and not 0 <= args.canary <= 1:
        print("[llmray] --canary must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        out = promote(pipe, args.stage, args.to, args.canary, args.wait, echo=lambda m: print(m, flush=True))
    except PromoteError as e:
        print(f"[llmray] {e}", file=sys.stderr)
        return 2
    print(f"[llmray] {out['name']}: {out['status']} ({out.get('to')}): {out.get('why', '')}", flush=True)
    return 0 if out["status"] in ("completed", "canary") else 1


def add_arguments_rollback(p) -> None:
    p.add_argument("--to", default=None, help="the served name (default: the only one of serve.names)")


def cmd_rollback(pipe, args) -> int:
    from llmray.serve.launch import http_json

    try:
        if pipe.serve is None:
            raise PromoteError("this pipeline has no `serve:` section")
        name = _default_name(pipe, args.to)
        url, key = _server(pipe)
    except PromoteError as e:
        print(f"[llmray] {e}", file=sys.stderr)
        return 2
    code, answer = http_json("POST", url.removesuffix("/v1") + "/admin/rollback",
                             {"name": name, "who": getpass.getuser()}, key)
    if code != 200:
        print(f"[llmray] {(answer.get('error') or {}).get('message') or f'HTTP {code}'}", file=sys.stderr)
        return 2
    print(f"[llmray] {name}: back to {answer['to']}", flush=True)
    return 0


def after_run(pipe, echo=print) -> None:
    """`serve.promote: auto`: promote each served name's stage when it has a new, gate-passed version."""
    from llmray.serve.launch import base_url, healthy, http_json

    if pipe.serve is None or pipe.serve.promote.mode != "auto" or not pipe.serve.names:
        return
    url = base_url(pipe)
    if not healthy(url):
        echo(f"[llmray] serve.promote: auto: no server at {url}; nothing promoted")
        return
    key = os.environ.get(pipe.serve.api_key_env or "", "") or None
    _, names = http_json("GET", url.removesuffix("/v1") + "/admin/names", api_key=key)
    live = {r["name"]: r for r in names.get("data", [])}
    for name, stage in pipe.serve.names.items():
        # The stage the name serves now (a manual promotion may have moved it): its newer run goes live.
        stage = (live.get(name, {}).get("current") or {}).get("stage") or stage
        try:
            version = candidate(pipe, stage)
        except PromoteError as e:
            echo(f"[llmray] serve.promote: auto: {name} stays: {e}")
            continue
        if (live.get(name, {}).get("current") or {}).get("key") == version["key"]:
            continue
        try:
            out = promote(pipe, stage, name, None, wait=False, echo=echo)
            echo(f"[llmray] serve.promote: auto: {name} -> {version['key']}: {out['status']}")
        except PromoteError as e:
            echo(f"[llmray] serve.promote: auto: {name}: {e}")
