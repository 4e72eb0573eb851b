"""Starting the RL roles of a `ppo` / `grpo` run, and where each runs.

Roles: rollout engines, one frozen reward model per reward stage, a pool of reward-function workers
(when `reward:` names functions), the frozen reference, the policy trainer and (ppo) the critic.
`placement()` reads `resources.colocate` / `resources.in_process` and the Ray this process is on:

  separate     every role its own Ray actor(s) (restartable engines, roles score in parallel)
  colocated    roles that start from the same folder share a host (`llmray.rlhf.host`): reference
               (+ an hf engine with one replica) inside the policy's, the critic inside its reward
               model's; each host a Ray actor
  in_process   the same hosts and the other model roles in the driver's own process, run on its
               thread when called (`actors.LocalActorGroup`): on a laptop's local Ray nothing
               imports torch twice

auto (the default for both) picks in_process on a one-node, GPU-less Ray this process started
(`llmray run` on a laptop: the case `resources.in_process: auto` of the training kinds also
covers) and separate elsewhere. A vLLM engine and the reward-function workers are always Ray
actors. `start_roles` starts every Ray actor first (they load in parallel, while the driver
builds its in-process roles and prepares the prompts); `wait_roles` waits for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from llmray.generate import pick_engine
from llmray.resources import local_ray_for
from llmray.rlhf.actors import LocalActorGroup, RayActorGroup, SharedRole, threads_for
from llmray.rlhf.rollout import EngineOptions, RolloutGroup, RolloutWorker


@dataclass(frozen=True)
class Placement:
    colocate: bool  # shared hosts (`llmray.rlhf.host`)
    in_process: bool  # model roles in the driver's process
    engine_in_policy: bool  # the hf engine generates with the policy's own model
    critic_with: str | None  # the reward stage whose host the critic shares

    @property
    def name(self) -> str:
        return "in_process" if self.in_process else "colocated" if self.colocate else "separate"


def placement(cfg, algo: str, rm_stages: list[str]) -> Placement:
    """Where the roles run (module docstring). `in_process: true` where it cannot hold is an error naming
    the field (the config validator refuses it with `colocate: false`, GPUs or custom resources)."""
    res = cfg.resources
    local = local_ray_for(res.in_process) if (res.colocate == "auto" or res.in_process is not False) else False
    colocate = res.colocate is True or (res.colocate == "auto" and local)
    plain = not any(r.num_gpus or r.custom for r in (res.policy, res.reward, res.critic))
    in_process = colocate and res.in_process is not False and local and plain
    engine_in_policy = colocate and pick_engine(cfg.rollout.engine, "rollout.engine") == "hf" \
        and cfg.rollout.replicas == 1
    critic_init = getattr(getattr(cfg, "critic", None), "init", None)
    critic_with = rm_stages[0] if colocate and algo == "ppo" and critic_init == "reward" and rm_stages else None
    return Placement(colocate, in_process, engine_in_policy, critic_with)


@dataclass
class Roles:
    rollout: object  # RolloutGroup
    groups: dict  # role name -> RayActorGroup (or a LocalActorGroup / SharedRole view)
    placement: Placement | None = None
    driver_threads: int | None = None  # the driver's torch threads before in-process roles set theirs

    @property
    def colocated(self) -> bool:
        """The engine is the policy's own model: no weights to sync."""
        return isinstance(self.groups.get("rollout"), SharedRole)

    def __getattr__(self, name):
        try:
            return self.__dict__["groups"][name]
        except KeyError:
            raise AttributeError(name) from None

    def shutdown(self) -> None:
        for g in self.groups.values():
            g.shutdown()
        if self.driver_threads:
            import torch

            torch.set_num_threads(self.driver_threads)


def role_spec(cfg, model_dir: Path, resources, trainable: bool = False, threads: int | None = None):
    """The typed spec a model-holding role is built from (`trainer.ModelRole`)."""
    from llmray.rlhf.trainer import ModelRole

    return ModelRole(model_dir=str(model_dir), trainable=trainable, optim=cfg.optim, steps=cfg.optimizer_steps(),
                     threads=threads or threads_for(resources), seed=cfg.seed)


def start_roles(cfg, ctx, algo: str, init_dir: Path, rm_dirs: dict[str, Path]) -> Roles:
    """Start every role (Ray actors first: they load while the driver builds its own); `wait_roles`
    waits for the actors. One frozen reward model per reward stage; a pool of function workers when
    `reward:` names functions."""
    res, place = cfg.resources, placement(cfg, algo, list(rm_dirs))
    common = {"strategy": res.strategy, "ready_timeout_s": res.ready_timeout_s, "name_prefix": f"llmray-{ctx.name}"}
    roles = Roles(None, {}, place)
    if place.in_process:
        import torch  # the driver of a pipeline has it already (its tokenizer and training stages)

        roles.driver_threads = torch.get_num_threads()  # in-process roles set theirs; restored after
    try:
        _start(cfg, ctx, algo, init_dir, rm_dirs, place, roles.groups, common)
    except BaseException:
        roles.shutdown()  # what started before the failure
        raise
    ctx.log.info("%s roles: %s (resources.colocate: %s, in_process: %s)", algo, place.name, res.colocate,
                 res.in_process)
    return roles


def _start(cfg, ctx, algo, init_dir, rm_dirs, place: Placement, groups: dict, common: dict) -> None:
    from llmray.rlhf.scoring import RewardFnWorker, worker_env

    res = cfg.resources
    if not place.engine_in_policy:
        env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(cfg.rollout.kv_cache_gb)))}
        groups["rollout"] = RayActorGroup(
            "rollout", RolloutWorker, res.rollout, cfg.rollout.replicas, max_restarts=cfg.rollout.max_restarts,
            kwargs={"model_dir": str(init_dir), "engine": cfg.rollout.engine, "opts": _engine_opts(cfg),
                    "seed": cfg.seed, "tmp_dir": str(ctx.work_dir / "rollout-tmp"), "threads": threads_for(res.rollout)},
            env=env, **common)
    fns = cfg.reward_functions()
    if fns:
        fn_res = type(res.reward)(num_cpus=cfg.reward_worker_cpus)
        groups["reward_fn"] = RayActorGroup("reward_fn", RewardFnWorker, fn_res, cfg.reward_workers,
                                            max_restarts=cfg.rollout.max_restarts, args=(fns,),
                                            env=worker_env(fns), **common)
    # in the driver's process every model role runs on the policy's torch threads (a process-wide setting)
    threads = threads_for(res.policy) if place.in_process else None
    _model_roles(cfg, algo, init_dir, rm_dirs, place, groups, common, threads)


def _engine_opts(cfg) -> EngineOptions:
    return EngineOptions.of(cfg.rollout, cfg.max_prompt_tokens + cfg.generation.max_new_tokens)


def _model_roles(cfg, algo, init_dir, rm_dirs, place: Placement, groups: dict, common: dict, threads) -> None:
    """Policy, reference (and the hf engine), reward models and critic, as `place` says."""
    from llmray.rlhf.host import PolicyHost, ValueHost
    from llmray.rlhf.trainer import PolicyWorker, ValueWorker

    res = cfg.resources

    def group(role, cls, role_res, kwargs, restarts=0):
        if place.in_process:
            return LocalActorGroup(role, cls, kwargs=kwargs, ready_timeout_s=res.ready_timeout_s)
        return RayActorGroup(role, cls, role_res, kwargs=kwargs, max_restarts=restarts, **common)

    policy_kw = {"role": role_spec(cfg, init_dir, res.policy, trainable=True, threads=threads),
                 "temperature": cfg.generation.temperature, "algo": algo}
    if place.colocate:
        engine = {"engine_opts": _engine_opts(cfg)} if place.engine_in_policy else {}
        groups["policy"] = group("policy", PolicyHost, res.policy, {**policy_kw, **engine})
        groups["reference"] = SharedRole("reference", groups["policy"], {"logprobs": "ref_logprobs"})
        if place.engine_in_policy:
            groups["rollout"] = SharedRole("rollout", groups["policy"])
    else:
        groups["reference"] = group("reference", PolicyWorker, res.reference,
                                    {**policy_kw, "role": role_spec(cfg, init_dir, res.reference)},
                                    cfg.rollout.max_restarts)
        groups["policy"] = group("policy", PolicyWorker, res.policy, policy_kw)
    critic_kw = {"value_clip": getattr(getattr(cfg, "critic", None), "value_clip", None)}
    for stage, rm_dir in rm_dirs.items():
        if stage == place.critic_with:  # the critic starts from this reward model: one host for both
            host = group("critic", ValueHost, res.critic,
                         {"role": role_spec(cfg, rm_dir, res.critic, trainable=True, threads=threads), **critic_kw})
            groups["critic"] = host
            groups[f"reward-{stage}"] = SharedRole(f"reward-{stage}", host,
                                                   {"score_responses": "reward_score_responses"})
            continue
        groups[f"reward-{stage}"] = group(f"reward-{stage}", ValueWorker, res.reward,
                                          {"role": role_spec(cfg, rm_dir, res.reward, threads=threads)},
                                          cfg.rollout.max_restarts)
    if algo == "ppo" and "critic" not in groups:
        # the critic starts from the first reward model; with function rewards only, from the policy
        critic_dir = next(iter(rm_dirs.values())) if cfg.critic.init == "reward" and rm_dirs else init_dir
        groups["critic"] = group("critic", ValueWorker, res.critic,
                                 {"role": role_spec(cfg, critic_dir, res.critic, trainable=True, threads=threads),
                                  **critic_kw})


def wait_roles(cfg, ctx, roles: Roles) -> Roles:
    t0 = time.time()
    for g in roles.groups.values():
        g.wait_ready()
    ctx.log.info("roles ready in %.1fs: %s", time.time() - t0, {k: len(g) for k, g in roles.groups.items()})
    roles.rollout = RolloutGroup(roles.groups["rollout"], cfg.rollout, ctx.log)
    return roles
