"""The RL loop (single controller on the driver) shared by the `ppo` and `grpo` kinds.

Roles (`llmray.rlhf.roles`: Ray actor groups, colocated hosts, or on a laptop's local Ray the model
roles in this process): rollout engines, one reward model per reward-model stage and a pool of
reward-function workers (`llmray.rlhf.scoring`, as `reward:` asks), reference model, policy trainer,
and for PPO a critic trainer. The policy starts from the `init:` stage's model or
the `from:` folder. One iteration:

  generate  prompts --rollout engines--> responses (+ the engine's log-probs)
  score     in parallel: reward(prompt + response) (the weighted sum of `reward:`'s terms; failed
            function calls counted), reference log-probs, policy log-probs
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
scored for the init policy before training and for the final policy after it; with function
rewards also per term and, when the prompts carry `reference` answers, as an exact-match rate
with its Wilson 95% interval (`eval_exact_match_*`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llmray.chat import pad_token_id
from llmray.stages.base import StageResult

EXACT_MATCH = "llmray.rlhf.rewards:exact_match"  # the held-out rate of verifiable tasks


@dataclass
class State:
    """Everything besides model/optimizer weights that a resumed run needs."""

    iteration: int = 0
    cursor: int = 0
    kl_coef: float = 0.0
    eval_init: dict | None = None
    records: list[dict] = field(default_factory=list)
    resumed_from: int | None = None
    reward_stats: dict = field(default_factory=dict)  # RewardScorer.state_dict(): function error counts


def run_rl(config, ctx, algo: str) -> StageResult:
    import ray

    from llmray.rlhf.roles import Roles, start_roles, wait_roles
    from llmray.stages.base import FixedCost

    cost = FixedCost()
    roles = Roles(None, {})
    try:
        with cost.phase("startup"):
            if not ray.is_initialized():
                from llmray.rayutil import init_ray

                init_ray(getattr(ctx.pipeline, "ray", None))
            init_dir = start_dir(config, ctx)
            rm_dirs = {o.name: o.path("model") for o in ctx.inputs.get("reward", [])}
            roles = start_roles(config, ctx, algo, init_dir, rm_dirs)
        # the actors import torch and load their models while the driver prepares the prompts
        with cost.phase("data"):
            tok, data, sampling = _prepare(config, ctx, algo, init_dir)
        with cost.phase("startup"):
            roles = wait_roles(config, ctx, roles)
        scorer = _scorer(config, roles, tok, sampling["stop_ids"], ctx.log)
        loop = Loop(config, ctx, algo, roles, data, sampling, pad_token_id(tok), scorer, tok, cost)
        return loop.run(init_dir)
    finally:
        roles.shutdown()


def _prepare(config, ctx, algo: str, init_dir: Path):
    """The tokenizer, the prompts (train / held-out, quarantine written) and the sampling settings."""
    from transformers import AutoTokenizer

    from llmray.data.formats import write_quarantine
    from llmray.rlhf.data import load_prompts, stop_ids

    tok = AutoTokenizer.from_pretrained(str(init_dir))
    data = load_prompts(config, tok)
    write_quarantine(data.quarantined, ctx.out_dir, "prompts")
    sampling = {**config.generation.model_dump(exclude={"stop"}), "stop_ids": stop_ids(tok, config.generation.stop, init_dir)}
    ctx.log.info("%s: %d train / %d held-out prompts (%d quarantined); reward: %s", algo, len(data.train),
                 len(data.eval), len(data.quarantined),
                 " + ".join(f"{t.weight:g} * {t.name}" for t in config.reward_terms()))
    return tok, data, sampling


def start_dir(config, ctx) -> Path:
    """The starting policy's HF folder: the `init:` stage's model/, or the checked `from:` folder (a
    URI downloaded into the run's model cache)."""
    from llmray.models import model_cache, resolve_model_source

    if config.init:
        return ctx.input("init").path("model")
    return resolve_model_source(config.from_, model_cache(ctx.run_dir), f"stages.{ctx.name}.from")


def _scorer(cfg, roles, tok, stop: list[int], log):
    from llmray.rlhf.scoring import RewardScorer

    rms = {t.stage: roles.groups[f"reward-{t.stage}"] for t in cfg.reward_terms() if t.stage}
    return RewardScorer(cfg, tok, stop, rms, roles.groups.get("reward_fn"), log)


class Loop:
    """One RL run: evaluation, iterations, checkpoints, the final model."""

    def __init__(self, cfg, ctx, algo, roles, data, sampling: dict, pad_id: int, scorer, tok, cost=None):
        from llmray.rlhf.algos import KLController
        from llmray.stages.base import FixedCost

        self.cfg, self.ctx, self.algo, self.roles, self.data = cfg, ctx, algo, roles, data
        self.sampling, self.pad_id, self.scorer, self._tok = sampling, pad_id, scorer, tok
        self.group_size = getattr(cfg, "group_size", 1)
        self.kl_ctl = KLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon, cfg.kl.adaptive)
        self.ckpt = ctx.work_dir / "ckpt"
        self.metrics = ctx.metrics_writer()
        self.cost = cost or FixedCost()

    # ------------------------------------------------------------ top level

    def run(self, init_dir: Path) -> StageResult:
        with self.cost.phase("checkpoint"):
            state = self._resume() or State(kl_coef=self.kl_ctl.value)
        if state.eval_init is None:
            with self.cost.phase("eval"):
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
            if record["reward_errors"]:
                self.ctx.log.warning("iter %d: %d reward function calls failed (scored %s)", it,
                                     record["reward_errors"], self.cfg.reward_on_error)
            if (it + 1) % self.cfg.checkpoint_every == 0 and it + 1 < self.cfg.iterations:
                with self.cost.phase("checkpoint"):
                    self._save(state)
        out = self.ctx.out_dir / "model"
        # the policy writes the final model while the engines generate the final evaluation's answers
        saved = self.roles.policy.async_run("save_model", str(out), str(init_dir))
        with self.cost.phase("eval"):
            final = self._evaluate()
        self.ctx.log.info("final policy on held-out prompts: %s", _short(final))
        with self.cost.phase("export"):
            self.roles.policy.get(saved, "save_model", 600)
        return StageResult(metrics=self._final_metrics(state, final), outputs={"model": "model"})

    def _final_metrics(self, state: State, final: dict) -> dict:
        recs, init = state.records, state.eval_init
        total = {k: round(sum(r[k] for r in recs), 2) for k in
                 ("time_generate_s", "time_score_s", "time_train_s", "time_sync_s")}
        samples = [{"prompt": p["prompt"][-1]["content"], "response": a, "before": b}
                   for p, b, a in zip(self.data.eval[:4], init["texts"], final["texts"])]
        rates = _held_out_rates(init, final)
        if "eval_exact_match_final" in rates:
            self.ctx.log.info("held-out exact match (n=%d): init %.3f %s -> final %.3f %s", rates["eval_exact_match_n"],
                              rates["eval_exact_match_init"], _ci(rates["eval_exact_match_init_ci95"]),
                              rates["eval_exact_match_final"], _ci(rates["eval_exact_match_final_ci95"]))
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
            "roles": self.roles.placement.name if self.roles.placement else "separate",
            **total, "samples": samples, **self.scorer.metrics(), **rates,
            # seconds outside the iterations (this attempt's; resumed iterations are not re-run)
            "fixed_cost": self.cost.metrics(work_s=sum(r["time_iteration_s"] for r in recs[state.resumed_from or 0:])),
        }

    # ------------------------------------------------------------ one iteration

    def _iteration(self, it: int, state: State) -> dict:
        t0 = time.perf_counter()
        prompts = self.data.batch(state.cursor, self.cfg.batch_size)
        state.cursor += len(prompts)
        roll = self._rollout(prompts, seed=self.cfg.seed * 1_000_003 + it * 7919)
        t1 = time.perf_counter()
        on_policy = self._on_policy(len(roll["responses"]))
        scored = self._score(roll, policy=not on_policy)
        t2 = time.perf_counter()
        batch = self._advantages(roll, scored)
        kl_coef_used = self.kl_ctl.value
        train_stats = self._train(batch, kl_coef_used, it)
        if on_policy:  # the policy's log-probs came from its training forward, before the step
            scored.update(logprobs=train_stats.pop("logprobs"), entropy=train_stats.pop("entropy"))
        stats = self._rollout_stats(roll, scored)
        self.kl_ctl.update(stats["kl"], len(roll["responses"]))
        t3 = time.perf_counter()
        load_s = self._sync(it + 1)
        t4 = time.perf_counter()
        n_tokens = int(batch["response_mask"].sum())
        terms = {f"reward_term/{t.name}": float(np.mean(scored["terms"][t.name])) for t in self.scorer.terms}
        return {"iteration": it, "samples": len(roll["responses"]), **stats, **train_stats,
                **terms, "reward_errors": scored["reward_errors"],
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

    def _on_policy(self, samples: int) -> bool:
        """GRPO with one optimizer step per iteration (one epoch, one minibatch): the old log-probs are
        the policy's own at the step, so the separate old-log-prob pass is skipped (TRL does the
        same). PPO needs them before training, in its per-token KL reward."""
        o = self.cfg.optim
        return self.algo == "grpo" and o.epochs == 1 and o.minibatch_size >= samples

    def _sync(self, version: int) -> float:
        """The trained weights to the engines (colocated: the engine is the policy's model already)."""
        policy = self.roles.policy
        blob = None if self.roles.colocated else policy.as_object_ref(policy.async_run("export_weights")[0])
        return self.roles.rollout.sync(blob, version=version)

    def _score(self, roll: dict, extra_functions=(), policy: bool = True) -> dict:
        """Reward, reference and (unless `policy` is False) policy log-probs, and critic values, for the
        rollouts, in parallel. `extra_functions`: reward functions scored outside the reward sum
        (held-out exact match)."""
        batch = roll["batch"]
        refs = {"reference": self.roles.reference.async_run("logprobs", batch)[0]}
        if policy:
            refs["policy"] = self.roles.policy.async_run("logprobs", batch)[0]
        if "critic" in self.roles.groups:
            refs["critic"] = self.roles.critic.async_run("values", batch)[0]
        rewards = self.scorer.score(roll["prompts"], roll["responses"], extra_functions)
        got = {k: self.roles.groups[k].get([r], "score", self.cfg.rollout.generate_timeout_s)[0] for k, r in refs.items()}
        pol = got.get("policy", {})
        return {"scores": rewards["scores"], "terms": rewards["terms"], "reward_errors": rewards["errors"],
                "logprobs": pol.get("logprobs"), "entropy": pol.get("entropy"),
                "ref_logprobs": got["reference"]["logprobs"], "values": got.get("critic")}

    def _advantages(self, roll: dict, sc: dict) -> dict:
        """Rewards -> advantages (and returns for the critic): the training batch. GRPO's advantages do
        not read the policy's log-probs; without them (on-policy) the batch has no `old_logprobs`."""
        from llmray.rlhf import algos

        batch, cfg = dict(roll["batch"]), self.cfg
        mask = _t(batch["response_mask"])
        score = _t(sc["scores"]).clone()
        if getattr(cfg, "missing_eos_penalty", None):
            score -= cfg.missing_eos_penalty * (1 - _t(roll["stopped"]))
        if self.algo == "ppo":
            logp, ref = _t(sc["logprobs"]), _t(sc["ref_logprobs"])
            kl_tok = algos.kl_per_token(logp, ref, cfg.kl.estimator)
            rewards = algos.token_rewards(score, kl_tok, mask, self.kl_ctl.value)
            values = _t(sc["values"])
            adv, returns = algos.gae(rewards, values, mask, cfg.critic.gamma, cfg.critic.lam)
            if cfg.critic.whiten_advantages:
                adv = algos.masked_whiten(adv, mask)
            batch.update(old_values=values.numpy(), returns=returns.numpy())
        else:
            adv = algos.group_advantages(score, self.group_size, cfg.scale_rewards)[:, None] * mask
        batch.update(ref_logprobs=sc["ref_logprobs"], advantages=adv.numpy().astype(np.float32))
        if sc["logprobs"] is not None:
            batch["old_logprobs"] = sc["logprobs"]
        return batch

    def _rollout_stats(self, roll: dict, sc: dict) -> dict:
        """The iteration's rollout figures: reward, KL to the reference, entropy, length, mismatch."""
        from llmray.rlhf import algos

        mask, raw = _t(roll["batch"]["response_mask"]), _t(sc["scores"])
        seq_kl = algos.masked_sum(_t(sc["logprobs"]) - _t(sc["ref_logprobs"]), mask, dim=1)  # k1 per response
        return {
            "reward_mean": float(raw.mean()), "reward_std": float(raw.std()) if len(raw) > 1 else 0.0,
            "kl": float(seq_kl.mean()), "entropy": float(algos.masked_mean(_t(sc["entropy"]), mask)),
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
        extra = [EXACT_MATCH] if self._exact_match_eval() else []
        sc = self._score(roll, extra)
        mask = roll["batch"]["response_mask"]
        kl = ((sc["logprobs"] - sc["ref_logprobs"]) * mask).sum(1)
        out = {"reward": float(sc["scores"].mean()), "reward_std": float(sc["scores"].std()),
               "kl": float(kl.mean()), "length": float(mask.sum(1).mean()),
               "texts": [self._decode(r) for r in roll["responses"][:4]]}
        if self.scorer.functions:
            out["terms"] = {t.name: float(np.mean(sc["terms"][t.name])) for t in self.scorer.terms}
        if extra:
            out["exact_match"] = [int(np.sum(sc["terms"][EXACT_MATCH] >= 1.0)), len(prompts)]
        return out

    def _exact_match_eval(self) -> bool:
        """Exact-match rates are reported when the reward includes functions (a verifiable task) and
        the held-out prompts carry `reference` answers."""
        return bool(self.scorer.functions) and all("reference" in p for p in self.data.eval)

    def _rollout_n1(self, prompts, seed):
        size, self.group_size = self.group_size, 1
        try:
            return self._rollout(prompts, seed)
        finally:
            self.group_size = size

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True).strip()

    # ------------------------------------------------------------ checkpoints

    def _save(self, state: State) -> None:
        """Trainers write weights + optimizer into ckpt.tmp, then it replaces ckpt in one rename."""
        tmp, old = self.ckpt.with_name("ckpt.tmp"), self.ckpt.with_name("ckpt.old")
        shutil.rmtree(tmp, ignore_errors=True)
        names = [n for n in ("policy", "critic") if n in self.roles.groups]
        refs = [self.roles.groups[n].async_run("save_checkpoint", str(tmp), n)[0] for n in names]
        self.roles.policy.get(refs, "save_checkpoint", 600)
        state.reward_stats = self.scorer.state_dict()
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
        self.scorer.load_state_dict(state.reward_stats)
        names = [n for n in ("policy", "critic") if n in self.roles.groups]
        refs = [self.roles.groups[n].async_run("load_checkpoint", str(self.ckpt), n)[0] for n in names]
        self.roles.policy.get(refs, "load_checkpoint", 600)
        for rec in state.records:
            self.metrics.write(rec)
        state.resumed_from = state.iteration
        self._sync(state.iteration)
        self.ctx.log.info("resumed from the checkpoint at iteration %d", state.iteration)
        return state


def _t(a):
    """A torch copy of an array (arrays from Ray's object store are read-only)."""
    import torch

    return torch.tensor(np.asarray(a))


def _mismatch(engine_lps: list[list[float]], trainer_lps: np.ndarray) -> dict:
    """|engine log-prob - trainer log-prob| over response tokens (same weights, same tokens)."""
    diffs = np.concatenate([np.abs(np.asarray(e, dtype=np.float64) - trainer_lps[i, : len(e)])
                            for i, e in enumerate(engine_lps) if len(e)] or [np.zeros(1)])
    return {"logprob_mismatch": float(diffs.mean()), "logprob_mismatch_max": float(diffs.max())}


def _held_out_rates(init: dict, final: dict) -> dict:
    """Function-reward figures of the held-out evaluation: per-term means before / after and, for a
    verifiable task, the exact-match rate with its Wilson 95% interval."""
    from llmray.rlhf.rewards import wilson_interval

    out = {}
    if "terms" in final:
        out["eval_reward_terms_init"], out["eval_reward_terms_final"] = init.get("terms"), final["terms"]
    if "exact_match" in final and "exact_match" in init:
        for when, ev in (("init", init), ("final", final)):
            k, n = ev["exact_match"]
            out[f"eval_exact_match_{when}"] = k / n if n else 0.0
            out[f"eval_exact_match_{when}_ci95"] = list(wilson_interval(k, n))
        out["eval_exact_match_n"] = final["exact_match"][1]
        out["eval_exact_match_gain"] = out["eval_exact_match_final"] - out["eval_exact_match_init"]
    return out


def _ci(interval: list[float]) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _short(ev: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in ev.items() if isinstance(v, float))
