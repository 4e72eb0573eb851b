"""The RL loop (single controller on the driver) shared by the `ppo` and `grpo` kinds.

Roles (Ray actor groups, `llmray.rlhf.actors`): rollout engines, reward model, reference model,
policy trainer, and for PPO a critic trainer. One iteration:

  generate  prompts --rollout engines--> responses (+ the engine's log-probs)
  score     in parallel: reward(prompt + response), reference log-probs, policy log-probs
            (the "old" log-probs; compared with the engine's to measure the mismatch),
            critic values (PPO)
  advantage PPO: score - beta * KL per token -> GAE -> whitened advantages;
            GRPO: group-relative scores (no critic), beta * KL in the policy loss
  train     policy (and critic) minibatch epochs, in parallel
  sync      policy weights (safetensors bytes, one object) -> every engine; version checked
Then beta adapts to the measured KL, one metrics.jsonl record is written, and every
`checkpoint_every` iterations the trainers' weights, optimizers, beta and the prompt cursor
go to `ctx.work_dir/ckpt` (and, with a URI workdir, to the store: `storage.push_checkpoint`) so a
rerun after a driver crash resumes there, on this machine or another. Held-out prompts are
scored for the init policy before training and for the final policy after it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llmray.stages.base import StageResult


@dataclass
class State:
    """Everything besides model/optimizer weights that a resumed run needs."""

    iteration: int = 0
    cursor: int = 0
    kl_coef: float = 0.0
    eval_init: dict | None = None
    records: list[dict] = field(default_factory=list)
    resumed_from: int | None = None


@dataclass
class Roles:
    rollout: object  # RolloutGroup
    groups: dict  # role name -> RayActorGroup

    def __getattr__(self, name):
        try:
            return self.__dict__["groups"][name]
        except KeyError:
            raise AttributeError(name) from None

    def shutdown(self) -> None:
        for g in self.groups.values():
            g.shutdown()


def run_rl(config, ctx, algo: str) -> StageResult:
    import ray
    from transformers import AutoTokenizer

    from llmray.data.formats import write_quarantine
    from llmray.rlhf.data import load_prompts, stop_ids

    if not ray.is_initialized():
        from llmray.rayutil import init_ray

        init_ray(getattr(ctx.pipeline, "ray", None))
    init_dir, rm_dir = ctx.input("init").path("model"), ctx.input("reward").path("model")
    tok = AutoTokenizer.from_pretrained(str(init_dir))
    data = load_prompts(config, tok)
    write_quarantine(data.quarantined, ctx.out_dir, "prompts")
    sampling = {**config.generation.model_dump(exclude={"stop"}), "stop_ids": stop_ids(tok, config.generation.stop)}
    ctx.log.info("%s: %d train / %d held-out prompts (%d quarantined)", algo, len(data.train), len(data.eval),
                 len(data.quarantined))
    roles = _build_roles(config, ctx, algo, init_dir, rm_dir)
    try:
        loop = Loop(config, ctx, algo, roles, data, sampling, tok.pad_token_id)
        return loop.run(init_dir)
    finally:
        roles.shutdown()


def _build_roles(cfg, ctx, algo: str, init_dir: Path, rm_dir: Path) -> Roles:
    """Start every role's actors at once (they load in parallel), then wait for all of them."""
    from llmray.rlhf.actors import RayActorGroup, threads_for
    from llmray.rlhf.rollout import RolloutGroup, RolloutWorker
    from llmray.rlhf.trainer import PolicyWorker, ValueWorker

    res, opts = cfg.resources, cfg.optim.model_dump()
    common = {"strategy": res.strategy, "ready_timeout_s": res.ready_timeout_s, "name_prefix": f"llmray-{ctx.name}"}
    engine_opts = {**cfg.rollout.model_dump(), "max_model_len": cfg.max_prompt_tokens + cfg.generation.max_new_tokens}
    env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(cfg.rollout.kv_cache_gb)))}
    temp = cfg.generation.temperature
    groups = {
        "rollout": RayActorGroup(
            "rollout", RolloutWorker, res.rollout, cfg.rollout.replicas, max_restarts=cfg.rollout.max_restarts,
            args=(str(init_dir), cfg.rollout.engine, engine_opts, cfg.seed, str(ctx.work_dir / "rollout-tmp"),
                  threads_for(res.rollout)), env=env, **common),
        "reward": RayActorGroup("reward", ValueWorker, res.reward, max_restarts=cfg.rollout.max_restarts,
                                args=(str(rm_dir), False, opts, threads_for(res.reward), cfg.seed), **common),
        "reference": RayActorGroup("reference", PolicyWorker, res.reference, max_restarts=cfg.rollout.max_restarts,
                                   args=(str(init_dir), temp, False, opts, algo, None, threads_for(res.reference),
                                         cfg.seed), **common),
        "policy": RayActorGroup("policy", PolicyWorker, res.policy,
                                args=(str(init_dir), temp, True, opts, algo, cfg.kl.model_dump(),
                                      threads_for(res.policy), cfg.seed), **common),
    }
    if algo == "ppo":
        critic_dir = rm_dir if cfg.critic.init == "reward" else init_dir
        groups["critic"] = RayActorGroup("critic", ValueWorker, res.critic,
                                         args=(str(critic_dir), True, opts, threads_for(res.critic), cfg.seed,
                                               cfg.critic.value_clip), **common)
    t0 = time.time()
    for g in groups.values():
        g.wait_ready()
    ctx.log.info("roles ready in %.1fs: %s", time.time() - t0, {k: len(g) for k, g in groups.items()})
    return Roles(RolloutGroup(groups["rollout"], cfg.rollout, ctx.log), groups)


class Loop:
    """One RL run: evaluation, iterations, checkpoints, the final model."""

    def __init__(self, cfg, ctx, algo, roles: Roles, data, sampling: dict, pad_id: int):
        from llmray.rlhf.algos import KLController

        self.cfg, self.ctx, self.algo, self.roles, self.data = cfg, ctx, algo, roles, data
        self.sampling, self.pad_id = sampling, pad_id
        self.group_size = getattr(cfg, "group_size", 1)
        self.kl_ctl = KLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon, cfg.kl.adaptive)
        self.ckpt = ctx.work_dir / "ckpt"
        self.metrics = ctx.metrics_writer()

    # ------------------------------------------------------------ top level

    def run(self, init_dir: Path) -> StageResult:
        state = self._resume() or State(kl_coef=self.kl_ctl.value)
        if state.eval_init is None:
            state.eval_init = self._evaluate()
            self.ctx.log.info("init policy on held-out prompts: %s", _short(state.eval_init))
        for it in range(state.iteration, self.cfg.iterations):
            record = self._iteration(it, state)
            state.records.append(record)
            self.metrics.write(record)
            state.iteration, state.kl_coef = it + 1, self.kl_ctl.value
            self.ctx.log.info("iter %d: reward %.3f kl %.3f beta %.4f len %.1f clip %.3f | gen %.1fs score %.1fs "
                              "train %.1fs sync %.2fs", it, record["reward_mean"], record["kl"], record["kl_coef"],
                              record["response_length"], record["clip_frac"], record["time_generate_s"],
                              record["time_score_s"], record["time_train_s"], record["time_sync_s"])
            if (it + 1) % self.cfg.checkpoint_every == 0 and it + 1 < self.cfg.iterations:
                self._save(state)
        final = self._evaluate()
        self.ctx.log.info("final policy on held-out prompts: %s", _short(final))
        out = self.ctx.out_dir / "model"
        self.roles.policy.run("save_model", str(out), str(init_dir), timeout=600)
        return StageResult(metrics=self._final_metrics(state, final), outputs={"model": "model"})

    def _final_metrics(self, state: State, final: dict) -> dict:
        recs, init = state.records, state.eval_init
        total = {k: round(sum(r[k] for r in recs), 2) for k in
                 ("time_generate_s", "time_score_s", "time_train_s", "time_sync_s")}
        samples = [{"prompt": p["prompt"][-1]["content"], "response": a, "before": b}
                   for p, b, a in zip(self.data.eval[:4], init["texts"], final["texts"])]
        return {
            "algo": self.algo, "engine": self.roles.rollout.engine, "iterations": len(recs),
            "samples_trained": int(sum(r["samples"] for r in recs)),
            # reward_mean / kl: the final policy's held-out figures, the keys the run report shows
            "reward_mean": final["reward"], "kl": final["kl"],
            "eval_reward_init": init["reward"], "eval_reward_final": final["reward"],
            "eval_reward_gain": final["reward"] - init["reward"], "eval_kl_final": final["kl"],
            "eval_length_init": init["length"], "eval_length_final": final["length"],
            "kl_target": self.cfg.kl.target, "kl_mean": float(np.mean([r["kl"] for r in recs])),
            "kl_below_target": bool(final["kl"] < self.cfg.kl.target), "kl_coef_final": self.kl_ctl.value,
            "reward_mean_first": recs[0]["reward_mean"], "reward_mean_last": recs[-1]["reward_mean"],
            "logprob_mismatch_mean": float(np.mean([r["logprob_mismatch"] for r in recs])),
            "rollout_tokens_per_s": float(np.mean([r["rollout_tokens_per_s"] for r in recs])),
            "rollout_restarts": self.roles.rollout.restarts, "resumed_from": state.resumed_from,
            **total, "samples": samples,
        }

    # ------------------------------------------------------------ one iteration

    def _iteration(self, it: int, state: State) -> dict:
        t0 = time.perf_counter()
        prompts = self.data.batch(state.cursor, self.cfg.batch_size)
        state.cursor += len(prompts)
        roll = self._rollout(prompts, seed=self.cfg.seed * 1_000_003 + it * 7919)
        t1 = time.perf_counter()
        scored = self._score(roll)
        t2 = time.perf_counter()
        batch, stats = self._advantages(roll, scored)
        kl_coef_used = self.kl_ctl.value
        self.kl_ctl.update(stats["kl"], len(roll["responses"]))
        train_stats = self._train(batch, kl_coef_used, it)
        t3 = time.perf_counter()
        blob = self.roles.policy.async_run("export_weights")[0]
        load_s = self.roles.rollout.sync(blob, version=it + 1)
        t4 = time.perf_counter()
        n_tokens = int(batch["response_mask"].sum())
        return {"iteration": it, "samples": len(roll["responses"]), **stats, **train_stats,
                "kl_coef": kl_coef_used, "rollout_tokens": n_tokens,
                "rollout_tokens_per_s": n_tokens / max(t1 - t0, 1e-9),
                "time_generate_s": t1 - t0, "time_score_s": t2 - t1, "time_train_s": t3 - t2,
                "time_sync_s": t4 - t3, "time_engine_load_s": load_s, "time_iteration_s": t4 - t0,
                "rollout_restarts": self.roles.rollout.restarts}

    def _rollout(self, prompts: list[dict], seed: int) -> dict:
        """Generate group_size responses per prompt; flatten to one row per sample."""
        from llmray.rlhf.batch import pack

        out = self.roles.rollout.generate([p["ids"] for p in prompts], self.group_size, self.sampling, seed)
        rows = [(p, s) for p, samples in zip(prompts, out) for s in samples]
        resp = [s["ids"] for _, s in rows]
        return {"prompts": [p for p, _ in rows], "responses": resp,
                "engine_logprobs": [s["logprobs"] for _, s in rows],
                "stopped": np.array([s["finish"] == "stop" for _, s in rows], dtype=np.float32),
                "batch": pack([p["ids"] for p, _ in rows], resp, self.pad_id)}

    def _score(self, roll: dict) -> dict:
        """Reward, reference and policy log-probs (and critic values) for the rollouts, in parallel."""
        batch = roll["batch"]
        refs = {"policy": self.roles.policy.async_run("logprobs", batch)[0],
                "reference": self.roles.reference.async_run("logprobs", batch)[0]}
        if "critic" in self.roles.groups:
            refs["critic"] = self.roles.critic.async_run("values", batch)[0]
        scores = self.roles.reward.call(
            0, "score_responses", [p["prompt"] for p in roll["prompts"]], roll["responses"],
            self.sampling["stop_ids"], self.cfg.optim.micro_batch_size, timeout=self.cfg.rollout.generate_timeout_s,
            attempts=self.cfg.rollout.max_restarts + 1, log=self.ctx.log)
        got = {k: self.roles.groups[k].get([r], "score", self.cfg.rollout.generate_timeout_s)[0] for k, r in refs.items()}
        return {"scores": np.asarray(scores, dtype=np.float32), "logprobs": got["policy"]["logprobs"],
                "entropy": got["policy"]["entropy"], "ref_logprobs": got["reference"]["logprobs"],
                "values": got.get("critic")}

    def _advantages(self, roll: dict, sc: dict) -> tuple[dict, dict]:
        """Rewards -> advantages (and returns for the critic); the iteration's rollout figures."""
        import torch

        from llmray.rlhf import algos

        def t(a):  # arrays from Ray's object store are read-only: copy
            return torch.tensor(np.asarray(a))

        batch, cfg = dict(roll["batch"]), self.cfg
        mask = t(batch["response_mask"])
        logp, ref, raw = t(sc["logprobs"]), t(sc["ref_logprobs"]), t(sc["scores"])
        score = raw.clone()
        if getattr(cfg, "missing_eos_penalty", None):
            score -= cfg.missing_eos_penalty * (1 - t(roll["stopped"]))
        seq_kl = algos.masked_sum(logp - ref, mask, dim=1)  # k1 summed per response: the reported KL
        if self.algo == "ppo":
            kl_tok = algos.kl_per_token(logp, ref, cfg.kl.estimator)
            rewards = algos.token_rewards(score, kl_tok, mask, self.kl_ctl.value)
            values = t(sc["values"])
            adv, returns = algos.gae(rewards, values, mask, cfg.critic.gamma, cfg.critic.lam)
            if cfg.critic.whiten_advantages:
                adv = algos.masked_whiten(adv, mask)
            batch.update(old_values=values.numpy(), returns=returns.numpy())
        else:
            adv = algos.group_advantages(score, self.group_size, cfg.scale_rewards)[:, None] * mask
        batch.update(old_logprobs=sc["logprobs"], ref_logprobs=sc["ref_logprobs"],
                     advantages=adv.numpy().astype(np.float32))
        return batch, {
            "reward_mean": float(raw.mean()), "reward_std": float(raw.std()) if len(raw) > 1 else 0.0,
            "kl": float(seq_kl.mean()), "entropy": float(algos.masked_mean(t(sc["entropy"]), mask)),
            "response_length": float(mask.sum(1).mean()), "stop_rate": float(np.mean(roll["stopped"])),
            **_mismatch(roll["engine_logprobs"], sc["logprobs"]),
        }

    def _train(self, batch: dict, kl_coef: float, it: int) -> dict:
        refs = {"policy": self.roles.policy.async_run("train", batch, kl_coef, it)[0]}
        if "critic" in self.roles.groups:
            refs["critic"] = self.roles.critic.async_run("train", batch, it)[0]
        out = {}
        for k, r in refs.items():
            out.update(self.roles.groups[k].get([r], "train", 3600)[0])
        out.setdefault("value_loss", 0.0)
        return out

    # ------------------------------------------------------------ evaluation

    def _evaluate(self) -> dict:
        """Mean reward, KL to the reference and length of the current policy on the held-out prompts
        (sampled with the training settings and a fixed seed, so init and final are paired)."""
        prompts = self.data.eval
        roll = self._rollout_n1(prompts, seed=self.cfg.seed + 424242)
        sc = self._score(roll)
        mask = roll["batch"]["response_mask"]
        kl = ((sc["logprobs"] - sc["ref_logprobs"]) * mask).sum(1)
        return {"reward": float(sc["scores"].mean()), "reward_std": float(sc["scores"].std()),
                "kl": float(kl.mean()), "length": float(mask.sum(1).mean()),
                "texts": [self._decode(r) for r in roll["responses"][:4]]}

    def _rollout_n1(self, prompts, seed):
        size, self.group_size = self.group_size, 1
        try:
            return self._rollout(prompts, seed)
        finally:
            self.group_size = size

    def _decode(self, ids: list[int]) -> str:
        if not hasattr(self, "_tok"):
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(str(self.ctx.input("init").path("model")))
        return self._tok.decode(ids, skip_special_tokens=True).strip()

    # ------------------------------------------------------------ checkpoints

    def _save(self, state: State) -> None:
        """Trainers write weights + optimizer into ckpt.tmp, then it replaces ckpt in one rename."""
        tmp, old = self.ckpt.with_name("ckpt.tmp"), self.ckpt.with_name("ckpt.old")
        shutil.rmtree(tmp, ignore_errors=True)
        names = [n for n in ("policy", "critic") if n in self.roles.groups]
        refs = [self.roles.groups[n].async_run("save_checkpoint", str(tmp), n)[0] for n in names]
        self.roles.policy.get(refs, "save_checkpoint", 600)
        (tmp / "state.json").write_text(json.dumps({**asdict(state), "kl_ctl": self.kl_ctl.state_dict()}))
        if self.ckpt.exists():
            self.ckpt.rename(old)
        tmp.rename(self.ckpt)
        shutil.rmtree(old, ignore_errors=True)
        self.ctx.log.info("checkpoint at iteration %d -> %s", state.iteration, self.ckpt)
        remote = getattr(self.ctx, "work_remote", None)
        if remote is not None:  # a URI workdir: the checkpoint must outlive this machine
            from llmray.storage import push_checkpoint

            sent = push_checkpoint(remote, self.ckpt, f"{state.iteration:06d}")
            self.ctx.log.info("checkpoint at iteration %d uploaded (%d bytes)", state.iteration, sent)

    def _resume(self) -> State | None:
        """Load ckpt/ if a previous attempt left one: trainers, beta, cursor, metrics so far."""
        path = self.ckpt / "state.json"
        remote = getattr(self.ctx, "work_remote", None)
        if not path.exists() and remote is not None:  # another machine's attempt left it on the store
            from llmray.storage import pull_checkpoint

            shutil.rmtree(self.ckpt, ignore_errors=True)
            if pull_checkpoint(remote, self.ckpt):
                self.ctx.log.info("checkpoint downloaded from the store")
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        self.kl_ctl.load_state_dict(raw.pop("kl_ctl"))
        state = State(**raw)
        names = [n for n in ("policy", "critic") if n in self.roles.groups]
        refs = [self.roles.groups[n].async_run("load_checkpoint", str(self.ckpt), n)[0] for n in names]
        self.roles.policy.get(refs, "load_checkpoint", 600)
        for rec in state.records:
            self.metrics.write(rec)
        state.resumed_from = state.iteration
        blob = self.roles.policy.async_run("export_weights")[0]
        self.roles.rollout.sync(blob, version=state.iteration)
        self.ctx.log.info("resumed from the checkpoint at iteration %d", state.iteration)
        return state


def _mismatch(engine_lps: list[list[float]], trainer_lps: np.ndarray) -> dict:
    """|engine log-prob - trainer log-prob| over response tokens (same weights, same tokens)."""
    diffs = np.concatenate([np.abs(np.asarray(e, dtype=np.float64) - trainer_lps[i, : len(e)])
                            for i, e in enumerate(engine_lps) if len(e)] or [np.zeros(1)])
    return {"logprob_mismatch": float(diffs.mean()), "logprob_mismatch_max": float(diffs.max())}


def _short(ev: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in ev.items() if isinstance(v, float))
