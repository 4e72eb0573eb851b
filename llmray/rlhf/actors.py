"""Ray actor groups: N replicas of one role (rollout engine, reward, reference, policy, critic),
each group in its own placement group (one {CPU, GPU} bundle per replica), in the style of
OpenRLHF's RayActorGroup.

Methods named `async_*` return ObjectRefs (one per actor) so the driver can overlap roles
(score, reference log-probs and critic values run at the same time); `run` waits with a
timeout and turns a timeout into an error naming the role and method. Fractional CPUs / GPUs
in a role's resources let roles share a device (colocation); on a 2-CPU laptop every role
reserves a fraction of a CPU because they mostly wait on each other. `SharedRole` is a view of
another group's actors under a role's name (colocation); `LocalActorGroup` is one role object in
the driver's process behind the same interface (`resources.in_process`): its "refs" are futures,
which is why results are read through the group (`get`, `resolve`), never `ray.get` directly.
"""

from __future__ import annotations

import os
import uuid

from llmray.rayutil import WORKER_ENV, inherited_env

# Environment every RL actor gets: vLLM in-process (weight reload through collective_rpc stays
# in one process), CPU KV cache size, quiet tokenizers, offline hub.
BASE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}
# BASE_ENV's switches are read when used (vLLM's `envs` on access, tokenizers on its first parallel
# batch), never at import, so the actor may set them in its own process when its constructor starts;
# so is the CPU KV cache size (vLLM's `envs`, read when the engine sizes its cache).
LATE_ENV = frozenset(BASE_ENV) | {"VLLM_CPU_KVCACHE_SPACE"}


def actor_env(extra: dict | None = None) -> dict:
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    env.update(BASE_ENV)
    env.update(extra or {})
    return env


def split_env(env: dict) -> tuple[dict, dict]:
    """(runtime_env vars, vars the actor sets itself). Ray hands a prestarted idle worker only to an
    actor whose runtime env is the job's (llmray.rayutil), so a per-actor `env_vars` block costs a fresh
    process (~6 s importing torch + transformers on a laptop core). On a local Ray this process started,
    the workers inherit its environment: a var with the inherited value needs nothing, a late-read one
    (LATE_ENV) is set in the actor's process; the rest (PYTHONPATH, the hub switches read at import, any
    var on a cluster we joined) still goes through the runtime env."""
    inherited = inherited_env()
    if inherited is None:
        return dict(env), {}
    missing = {k: v for k, v in env.items() if inherited.get(k) != v}
    late = {k: v for k, v in missing.items() if k in LATE_ENV}
    return {k: v for k, v in missing.items() if k not in late}, late


def _with_env(actor_cls, env: dict):
    """`actor_cls` whose constructor first sets `env` in its process (a worker serves one actor, so
    nothing leaks); the class itself when there is nothing to set."""
    if not env:
        return actor_cls

    class WithEnv(actor_cls):
        def __init__(self, *args, **kwargs):
            os.environ.update(env)
            super().__init__(*args, **kwargs)

    WithEnv.__name__, WithEnv.__qualname__ = actor_cls.__name__, actor_cls.__qualname__
    return WithEnv


def threads_for(res) -> int:
    """torch threads in an actor: the role's `threads`, else its CPUs rounded (at least 1)."""
    return res.torch_threads()


class RayActorGroup:
    """`replicas` actors of `actor_cls`, each pinned to one bundle of a fresh placement group."""

    def __init__(self, role: str, actor_cls, res, replicas: int = 1, args=(), kwargs=None, *,
                 max_restarts: int = 0, env: dict | None = None, strategy: str = "PACK",
                 ready_timeout_s: float = 300.0, name_prefix: str = "llmray"):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.role, self.ready_timeout_s = role, ready_timeout_s
        bundle = {"CPU": res.num_cpus, **res.custom}
        if res.num_gpus:
            bundle["GPU"] = res.num_gpus
        self.pg = placement_group([dict(bundle) for _ in range(replicas)], strategy=strategy)
        try:
            ray.get(self.pg.ready(), timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(self.pg)
            raise RuntimeError(f"cannot place the {role} role ({replicas} x {bundle}) within {ready_timeout_s:.0f}s; "
                               f"the cluster has {ray.available_resources()} free. Lower resources.{role}."
                               "num_cpus/num_gpus or add nodes.") from None
        ray_env, late_env = split_env(actor_env(env))
        remote_cls = ray.remote(_with_env(actor_cls, late_env))
        suffix = uuid.uuid4().hex[:6]
        self.names = [f"{name_prefix}-{role}-{i}-{suffix}" for i in range(replicas)]
        self.actors = [
            remote_cls.options(
                name=self.names[i], **res.ray_options(),
                max_restarts=max_restarts, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=self.pg,
                                                                     placement_group_bundle_index=i),
                **({"runtime_env": {"env_vars": ray_env}} if ray_env else {}),
            ).remote(*args, **(kwargs or {}))
            for i in range(replicas)
        ]

    def __len__(self) -> int:
        return len(self.actors)

    def wait_ready(self) -> None:
        """Block until every actor finished its constructor (models loaded)."""
        self.run("ping", timeout=self.ready_timeout_s)

    def async_run(self, method: str, *args, **kwargs) -> list:
        """Call `method` on every actor with the same arguments; one ObjectRef per actor."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def async_run_each(self, method: str, per_actor_args: list[tuple]) -> list:
        """Call `method` on actor i with per_actor_args[i]."""
        return [getattr(a, method).remote(*args) for a, args in zip(self.actors, per_actor_args)]

    def run(self, method: str, *args, timeout: float | None = None, **kwargs) -> list:
        return self.get(self.async_run(method, *args, **kwargs), method, timeout)

    def get(self, refs, method: str, timeout: float | None = None):
        import ray

        try:
            return self.resolve(refs, timeout)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"{self.role}.{method} did not finish within {timeout:.0f}s") from None

    def resolve(self, refs, timeout: float | None = None):
        """The results behind what `async_run` returned (one or a list), as `ray.get` gives them."""
        import ray

        return ray.get(refs, timeout=timeout)

    def as_object_ref(self, ref):
        """What `async_run` returned, as a Ray ObjectRef another role's actors can take as an argument."""
        return ref

    def wait_alive(self, i: int, timeout: float) -> None:
        """Block until actor i answers (a dead actor with restarts left is being restarted by Ray)."""
        import time

        import ray

        deadline = time.time() + timeout
        while True:
            try:
                self.resolve(self.actors[i].ping.remote(), timeout=max(1.0, deadline - time.time()))
                return
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                if time.time() >= deadline:
                    raise RuntimeError(f"{self.role} actor {i} did not come back within {timeout:.0f}s "
                                       f"(restarts exhausted?): {type(e).__name__}") from None
                time.sleep(1.0)

    def call(self, i: int, method: str, *args, timeout: float, attempts: int = 1, on_restart=None,
             accept=None, log=None):
        """Call `method` on actor i; if the actor dies (or `accept(result)` is False, e.g. a restarted
        engine serving stale weights), wait for Ray to restart it, run `on_restart(i)` and retry."""
        import ray

        ref = getattr(self.actors[i], method).remote(*args)
        for attempt in range(attempts):
            try:
                result = self.resolve(ref, timeout=timeout)
                if accept is None or accept(result):
                    return result
                reason = "it was restarted and lost its state"
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"{self.role}.{method} on actor {i} did not finish within {timeout:.0f}s") from None
            except ray.exceptions.RayActorError as e:
                reason = f"it died ({type(e).__name__})"
            if attempt + 1 == attempts:
                break
            if log:
                log.warning("%s actor %d: %s during %s; waiting for the restart and retrying", self.role, i,
                            reason, method)
            self.wait_alive(i, timeout)
            if on_restart:
                on_restart(i)
            ref = getattr(self.actors[i], method).remote(*args)
        raise RuntimeError(f"{self.role}.{method} on actor {i} failed {attempts} times: {reason}")

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except ValueError:  # not an actor handle any more
                continue
        ray.util.remove_placement_group(self.pg)


class SharedRole(RayActorGroup):
    """A role served by another group's actors (colocation, `resources.colocate`): the same actors
    under this role's name, with method names mapped (e.g. the reference's `logprobs` is the policy
    host's `ref_logprobs`). It owns nothing: shutting the owner down ends it."""

    def __init__(self, role: str, owner: RayActorGroup, methods: dict[str, str] | None = None):
        self.role, self.ready_timeout_s, self.owner = role, owner.ready_timeout_s, owner
        self.actors, self.names, self.pg = owner.actors, owner.names, None
        self.methods = methods or {}

    def resolve(self, refs, timeout: float | None = None):
        return self.owner.resolve(refs, timeout)

    def as_object_ref(self, ref):
        return self.owner.as_object_ref(ref)

    def async_run(self, method: str, *args, **kwargs) -> list:
        return super().async_run(self.methods.get(method, method), *args, **kwargs)

    def async_run_each(self, method: str, per_actor_args: list[tuple]) -> list:
        return super().async_run_each(self.methods.get(method, method), per_actor_args)

    def call(self, i: int, method: str, *args, **kwargs):
        return super().call(i, self.methods.get(method, method), *args, **kwargs)

    def shutdown(self) -> None:
        return None


class _LocalHandle:
    """An object in this process behind an actor-handle face: `handle.method.remote(*args)` runs the
    method at once, on the caller's thread, and returns a finished `concurrent.futures.Future` (its
    exception, if it raised, comes out where the result is read, as with Ray)."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, method: str):
        from concurrent.futures import Future

        fn = getattr(self._obj, method)

        class _Remote:
            @staticmethod
            def remote(*args, **kwargs):
                fut = Future()
                try:
                    fut.set_result(fn(*args, **kwargs))
                except Exception as e:  # noqa: BLE001 - handed to whoever reads the result
                    fut.set_exception(e)
                return fut

        return _Remote


class LocalActorGroup(RayActorGroup):
    """One role object in the driver's process with a `RayActorGroup`'s interface (`resources.in_process`
    of the RL kinds): no process to start, no torch to import, no object store between it and the
    driver. Its methods run when called, on the driver's own thread, so they run one at a time in call
    order as on an actor, and in-process roles never overlap each other: on a few cores their torch
    ops would only contend for the cores and the GIL (bench/README.md "RL roles in the driver's
    process"). Ray actors (a vLLM engine, reward-function workers) still overlap with them. No restarts: an exception in a method is the driver's."""

    def __init__(self, role: str, cls, args=(), kwargs=None, *, ready_timeout_s: float = 300.0):
        self.role, self.ready_timeout_s, self.pg = role, ready_timeout_s, None
        self.names = [f"in-process-{role}"]
        self.actors = [_LocalHandle(cls(*args, **(kwargs or {})))]

    def resolve(self, refs, timeout: float | None = None):
        import concurrent.futures

        import ray

        try:
            if isinstance(refs, list):
                return [f.result(timeout) for f in refs]
            return refs.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ray.exceptions.GetTimeoutError(f"{self.role} did not answer within {timeout}s") from None

    def as_object_ref(self, ref):
        import ray

        return ray.put(self.resolve(ref))

    def wait_alive(self, i: int, timeout: float) -> None:
        return None  # it lives as long as the driver

    def shutdown(self) -> None:
        self.actors = []  # the object goes with its last reference
