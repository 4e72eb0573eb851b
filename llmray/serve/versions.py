"""Versions behind served names, inside the server: routing, canary watch, rollback, history.

`NameRouter` lives in the ingress replica (llmray.serve.app): per served name, the live version, the
canary under watch (with its share of requests) and the previous version. A promotion loads the
candidate through the name's deployment, routes `share` of the requests to it, counts both versions'
latency / errors / guardrail refusals for `window_s`, and `verdict` decides: completed or rolled back.
Every event goes to <run>/promotions.json (who/what/when/why; `read_history`); what each name serves
goes to <run>/.serve/routes.json and is restored when the ingress restarts. The command-line side
(`llmray promote` / `rollback`) is llmray.serve.promote. No Ray import here.

Each name has a route generation, `gen`, raised whenever what is live changes or a load begins;
requests carry it with their `live` list, so the model deployment can tell a stale list (routed
before a promotion) from a current one and never retires a version on the word of an older request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import time
from pathlib import Path

from llmray.serve.spec import ServeError, version_of

HISTORY = "promotions.json"
ROUTES = ".serve/routes.json"


class PromoteError(ServeError):
    """A promotion or rollback that cannot happen (printed without a traceback)."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_history(run_dir: Path) -> list[dict]:
    """The promotion history of a run directory (oldest first; [] when there is none)."""
    try:
        return json.loads((Path(run_dir) / HISTORY).read_text())
    except (OSError, ValueError):
        return []


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)  # readers never see half a file


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]


class Stats:
    """Requests one version answered during a watch window."""

    def __init__(self):
        self.latencies: list[float] = []
        self.errors = 0
        self.blocked = 0

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors

    def summary(self) -> dict:
        n = self.requests
        return {"requests": n, "errors": self.errors, "error_rate": round(self.errors / n, 4) if n else 0.0,
                "block_rate": round(self.blocked / len(self.latencies), 4) if self.latencies else 0.0,
                "p95_ms": round(1000 * p95(self.latencies), 1) if self.latencies else None}


def verdict(live: Stats, canary: Stats, cfg: dict) -> str | None:
    """None when the canary may go live, else the reason to roll it back."""
    c, lv = canary.summary(), live.summary()
    if c["requests"] < cfg["min_requests"]:
        return f"only {c['requests']} canary requests in the window (min_requests {cfg['min_requests']})"
    if c["error_rate"] > cfg["max_error_rate"]:
        return f"error rate {c['error_rate']:.3f} > max_error_rate {cfg['max_error_rate']}"
    if c["block_rate"] > cfg["max_block_rate"]:
        return f"guardrail block rate {c['block_rate']:.3f} > max_block_rate {cfg['max_block_rate']}"
    if c["p95_ms"] and lv["p95_ms"] and c["p95_ms"] > cfg["max_latency_ratio"] * lv["p95_ms"]:
        return (f"p95 latency {c['p95_ms']} ms > max_latency_ratio {cfg['max_latency_ratio']} x live "
                f"p95 {lv['p95_ms']} ms")
    return None


class NameRouter:
    """Which version answers each served name; promotions, canary watch and rollback (see module doc).

    Lives in the ingress replica. `load(name, version, replace)` loads a version into the name's
    deployment (replace: the key of a version it may overwrite in place); it is given by the ingress.
    """

    def __init__(self, spec: dict, load):
        self.run_dir = Path(spec["run_dir"])
        self.cfg = spec["settings"]["promote"]
        self.load = load
        self.routes: dict[str, dict] = {}
        self.stats: dict[str, Stats] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.rng = random.Random()
        saved = self._saved()
        for n in spec.get("names", []):
            prev = saved.get(n["name"], {})
            current = prev.get("current") if Path((prev.get("current") or {}).get("dir", "/nonexistent")).is_dir() \
                else n["version"]
            self.routes[n["name"]] = {"id": n["id"], "current": current, "previous": prev.get("previous"),
                                      "canary": None, "share": 0.0, "state": "live", "last": prev.get("last"),
                                      "gen": 0}

    def _saved(self) -> dict:
        try:
            return json.loads((self.run_dir / ROUTES).read_text())
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        _write_json(self.run_dir / ROUTES, {n: {k: r[k] for k in ("current", "previous", "last")}
                                            for n, r in self.routes.items()})

    def _log(self, **event) -> dict:
        event = {"time": _now(), **event}
        history = read_history(self.run_dir)
        history.append(event)
        _write_json(self.run_dir / HISTORY, history)
        return event

    # ------------------------------------------------------------ the request path

    def pick(self, name: str) -> tuple[dict, bool]:
        """(the version to answer this request, whether it is the canary)."""
        r = self.routes[name]
        if r["canary"] is not None and self.rng.random() < r["share"]:
            return r["canary"], True
        return r["current"], False

    def live_keys(self, name: str) -> list[str]:
        r = self.routes[name]
        return [v["key"] for v in (r["current"], r["canary"]) if v]

    def record(self, key: str, latency: float | None, error: bool = False, blocked: bool = False) -> None:
        s = self.stats.get(key)
        if s is None:
            return  # only versions under watch are counted
        if error:
            s.errors += 1
        else:
            s.latencies.append(latency or 0.0)
            s.blocked += bool(blocked)

    def describe(self, name: str) -> dict:
        r = self.routes[name]

        def short(v):
            return v and {"stage": v["stage"], "fingerprint": v["fingerprint"], "key": v["key"]}

        return {"name": name, "id": r["id"], "state": r["state"], "current": short(r["current"]),
                "canary": short(r["canary"]), "canary_share": r["share"], "previous": short(r["previous"]),
                "last": r["last"]}

    # ------------------------------------------------------------ promotion and rollback

    async def promote(self, name: str, version: dict, canary: float | None, who: str) -> dict:
        r = self.routes[name]
        if r["state"] != "live":
            raise PromoteError(f"{name}: a promotion is already under way ({r['canary']['key']})")
        if version["key"] == r["current"]["key"]:
            raise PromoteError(f"{name} already serves {version['key']}")
        share = self.cfg["canary"] if canary is None else canary
        what = {"name": name, "from": r["current"]["key"], "to": version["key"], "stage": version["stage"],
                "fingerprint": version["fingerprint"], "who": who, "canary": share}
        r["state"], r["gen"] = "loading", r["gen"] + 1  # a new generation: see ModelServer._runner_for
        try:
            info = await self.load(name, version, r["current"]["key"] if share == 0 else None)
        except Exception as e:  # noqa: BLE001 - any load failure means the candidate never goes live
            r["state"] = "live"
            return self._settle(name, what, "rolled_back", f"load failed: {type(e).__name__}: {e}"[:500])
        what["load"] = info
        if share == 0:
            r["previous"], r["current"], r["state"] = r["current"], version, "live"
            return self._settle(name, what, "completed", "canary 0: switched at once")
        self.stats = {r["current"]["key"]: Stats(), version["key"]: Stats()}
        r["canary"], r["share"], r["state"], r["gen"] = version, share, "canary", r["gen"] + 1
        self._log(event="canary", **what)
        self.tasks[name] = asyncio.create_task(self._watch(name, what))
        return {"status": "canary", **what}

    async def _watch(self, name: str, what: dict) -> None:
        r, cfg = self.routes[name], self.cfg
        t0 = time.monotonic()
        await asyncio.sleep(cfg["window_s"])
        canary = self.stats[r["canary"]["key"]]
        while canary.requests < cfg["min_requests"] and time.monotonic() - t0 < 4 * cfg["window_s"]:
            await asyncio.sleep(min(1.0, cfg["window_s"]))
        why = verdict(self.stats[r["current"]["key"]], canary, cfg)
        what["figures"] = {"live": self.stats[r["current"]["key"]].summary(), "canary": canary.summary()}
        if why is None:
            r["previous"], r["current"] = r["current"], r["canary"]
            self._settle(name, what, "completed", "canary within thresholds")
        else:
            self._settle(name, what, "rolled_back", why)

    def _settle(self, name: str, what: dict, outcome: str, why: str, event: str = "promote") -> dict:
        r = self.routes[name]
        r["canary"], r["share"], r["state"], r["gen"] = None, 0.0, "live", r["gen"] + 1
        self.stats = {}
        event = self._log(event=event, outcome=outcome, why=why, **what)
        r["last"] = {"outcome": outcome, "why": why, "to": what["to"], "time": event["time"], "load": what.get("load")}
        self._save()
        return {"status": outcome, **event}

    async def rollback(self, name: str, who: str, why: str = "requested") -> dict:
        r = self.routes[name]
        if r["state"] != "live":
            raise PromoteError(f"{name}: a promotion is under way; wait for it to settle")
        if not r["previous"]:
            raise PromoteError(f"{name} has no previous version to roll back to")
        target = r["previous"]
        r["gen"] += 1
        info = await self.load(name, target, r["current"]["key"])
        what = {"name": name, "from": r["current"]["key"], "to": target["key"], "stage": target["stage"],
                "fingerprint": target["fingerprint"], "who": who, "load": info}
        r["previous"], r["current"] = r["current"], target
        return self._settle(name, what, "rolled_back", why, event="rollback")


def candidate_version(run_dir: str, stage: str, fingerprint: str | None) -> dict:
    """Server side of a promotion: the version from the stage's own manifest (paths never come from the
    request), refused when it has not completed, was rerun since the CLI looked, or its gate blocked it."""
    from llmray.runner import read_manifest
    from llmray.serve.spec import gate_of

    root = Path(run_dir)
    if not stage or "/" in stage or stage.startswith("."):
        raise PromoteError(f"stage {stage!r}: not a stage name")
    man = read_manifest(root / stage) or {}
    rel = (man.get("outputs") or {}).get("model")
    if man.get("status") != "completed" or not rel:
        raise PromoteError(f"stage {stage!r} has no completed model in {root}")
    if fingerprint is not None and man.get("fingerprint", "") != fingerprint:
        raise PromoteError(f"stage {stage!r} changed since it was checked (fingerprint "
                           f"{str(man.get('fingerprint'))[:12]}, asked for {fingerprint[:12]}); try again")
    blocked, reasons = gate_of(man)
    if blocked:
        raise PromoteError(f"cannot promote {stage!r}: its gate blocked it: {'; '.join(reasons)}")
    model = {"stage": stage, "fingerprint": man.get("fingerprint", ""), "dir": str((root / stage / rel).resolve()),
             "kind": man.get("kind")}
    return version_of(model)


