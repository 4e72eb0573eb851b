"""Scoring rollouts with `reward:`: reward-model stages and Python reward functions, weighted and summed.

Roles: one frozen reward-model actor per reward stage (`trainer.ValueWorker`) and, when `reward:`
names functions, a pool of `reward_workers` `RewardFnWorker` actors. The driver never runs a
user function.

Data flow of `RewardScorer.score(prompts, responses)`:
  function jobs   response ids --tokenizer.decode (stop token cut)--> completion text; with the
                  prompt's last turn and the record's other fields (e.g. `reference`) -> split evenly
                  over the pool -> each worker calls every function on its share -> per sample a
                  float, or None and the error message (it raised, or returned None / NaN / a string)
  model terms     prompt messages + response ids -> each reward-model actor (in parallel with the pool)
  combine         score = sum(weight * term score); a failed function score counts as
                  `reward_on_error`; failures are counted (`errors`, the first few messages kept), and
                  once more than `max_reward_error_rate` of all function calls so far failed, the stage
                  fails with a RewardErrorRate naming the function and its first errors.
"""

from __future__ import annotations

import math
import os

import numpy as np

MAX_ERROR_EXAMPLES = 5


class RewardErrorRate(RuntimeError):
    """Too many reward-function calls failed: the stage stops."""


class RewardFnWorker:
    """A Ray actor that imports reward functions by reference and calls them on batches of samples."""

    def __init__(self, refs: list[str]):
        self.fns, self.fields = {}, {}
        for ref in refs:  # import now: a module that fails here fails the actor's start, loudly
            self._load(ref)

    def _load(self, ref: str) -> None:
        from llmray.rlhf.rewards import accepted_fields, resolve_callable

        if ref not in self.fns:
            self.fns[ref] = resolve_callable(ref)
            self.fields[ref] = accepted_fields(self.fns[ref])

    def ping(self) -> int:
        return os.getpid()

    def score(self, refs: list[str], jobs: list[dict]) -> dict[str, list[tuple[float | None, str | None]]]:
        """For each ref, per job {"prompt", "completion", "fields"}: (score, None) or (None, error)."""
        for ref in refs:
            self._load(ref)
        return {ref: [self._call(ref, job) for job in jobs] for ref in refs}

    def _call(self, ref: str, job: dict) -> tuple[float | None, str | None]:
        keep = self.fields[ref]
        kwargs = job["fields"] if keep is None else {k: v for k, v in job["fields"].items() if k in keep}
        try:
            value = self.fns[ref](job["prompt"], job["completion"], **kwargs)
        except Exception as e:  # noqa: BLE001 - a user function's failure is data, counted by the driver
            return None, f"{type(e).__name__}: {e}"[:300]
        if isinstance(value, (bool, np.bool_)):
            value = float(value)
        if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
            return None, f"returned {type(value).__name__} {value!r:.60}, not a finite number"
        return float(value), None


def function_jobs(tok, prompts: list[dict], responses: list[list[int]], stop_ids: list[int]) -> list[dict]:
    """The arguments of a reward function per sample (see the module docstring)."""
    jobs = []
    for rec, resp in zip(prompts, responses):
        body = resp[:-1] if resp and resp[-1] in stop_ids else resp
        fields = {k: v for k, v in rec.items() if k not in ("id", "prompt", "ids")}
        jobs.append({"prompt": rec["prompt"][-1]["content"],
                     "completion": tok.decode(body, skip_special_tokens=True).strip(), "fields": fields})
    return jobs


def worker_env(refs: list[str]) -> dict:
    """PYTHONPATH for the pool: the folders the driver imported the functions' modules from (a test
    folder, a user's project) on top of the inherited one; Ray's workers start elsewhere."""
    from llmray.rlhf.rewards import module_search_root

    roots = [r for r in dict.fromkeys(module_search_root(ref) for ref in refs) if r]
    if not roots:
        return {}
    return {"PYTHONPATH": os.pathsep.join(roots + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                   if p])}


class RewardScorer:
    """Driver side: send samples to the reward models and the function pool, combine, count errors.

    `rm_groups`: reward stage name -> RayActorGroup of ValueWorker; `pool`: RayActorGroup of
    RewardFnWorker or None."""

    def __init__(self, cfg, tok, stop_ids: list[int], rm_groups: dict, pool, log):
        self.cfg, self.tok, self.stop_ids, self.log = cfg, tok, stop_ids, log
        self.terms = cfg.reward_terms()
        self.rm_groups, self.pool = rm_groups, pool
        self.calls, self.errors, self.examples = 0, 0, []
        self.timeout = cfg.rollout.generate_timeout_s

    @property
    def functions(self) -> list[str]:
        return list(dict.fromkeys(t.function for t in self.terms if t.function))

    def state_dict(self) -> dict:
        return {"calls": self.calls, "errors": self.errors, "examples": list(self.examples)}

    def load_state_dict(self, state: dict) -> None:
        self.calls, self.errors = state.get("calls", 0), state.get("errors", 0)
        self.examples = list(state.get("examples", []))

    def score(self, prompts: list[dict], responses: list[list[int]], extra_functions=()) -> dict:
        """{"scores": weighted sum per sample, "terms": {term name: scores}, "errors": failed calls}.
        `extra_functions` (e.g. exact_match for the held-out report) are scored too and returned in
        `terms`, outside the sum."""
        refs = list(dict.fromkeys([*self.functions, *extra_functions]))
        pending = self._submit(refs, prompts, responses) if refs else []
        term_scores = {stage: np.asarray(g.call(
            0, "score_responses", [p["prompt"] for p in prompts], responses, self.stop_ids,
            self.cfg.optim.micro_batch_size, timeout=self.timeout, attempts=self.cfg.rollout.max_restarts + 1,
            log=self.log), dtype=np.float64) for stage, g in self.rm_groups.items()}
        errors_before = self.errors
        term_scores.update(self._collect(refs, pending))
        total = np.zeros(len(responses), dtype=np.float64)
        for t in self.terms:
            total += t.weight * term_scores[t.name]
        self._check_rate()
        return {"scores": total.astype(np.float32), "terms": term_scores, "errors": self.errors - errors_before}

    def _submit(self, refs, prompts, responses) -> list:
        """Split the samples evenly over the pool; (worker, sample indices, ObjectRef, jobs) per share."""
        from llmray.rlhf.batch import split_even

        jobs = function_jobs(self.tok, prompts, responses, self.stop_ids)
        pending = []
        for i, part in enumerate(split_even(len(jobs), len(self.pool))):
            share = [jobs[j] for j in part]
            if share:
                pending.append((i, list(part), self.pool.actors[i].score.remote(refs, share), share))
        return pending

    def _collect(self, refs, pending) -> dict[str, np.ndarray]:
        import ray

        n = sum(len(part) for _, part, _, _ in pending)
        out = {ref: np.full(n, self.cfg.reward_on_error, dtype=np.float64) for ref in refs}
        for i, part, ref_obj, jobs in pending:
            try:
                got = ray.get(ref_obj, timeout=self.timeout)
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"reward functions on worker {i} did not finish within {self.timeout:.0f}s "
                                   "(rollout.generate_timeout_s)") from None
            except ray.exceptions.RayActorError:  # the worker died (a function crashed the process): retry
                got = self.pool.call(i, "score", refs, jobs, timeout=self.timeout,
                                     attempts=self.cfg.rollout.max_restarts + 1, log=self.log)
            for ref in refs:
                for j, (value, err) in zip(part, got[ref]):
                    self.calls += 1
                    if err is None:
                        out[ref][j] = value
                        continue
                    self.errors += 1
                    if len(self.examples) < MAX_ERROR_EXAMPLES:
                        self.examples.append(f"{ref}: {err}")
                        self.log.warning("reward function %s failed on a sample (scored %s): %s", ref,
                                         self.cfg.reward_on_error, err)
        return out

    def _check_rate(self) -> None:
        if not self.calls:
            return
        rate = self.errors / self.calls
        if rate > self.cfg.max_reward_error_rate:
            raise RewardErrorRate(
                f"reward functions failed on {self.errors} of {self.calls} calls ({rate:.1%}), above "
                f"max_reward_error_rate {self.cfg.max_reward_error_rate}; first errors: "
                + "; ".join(self.examples))

    def metrics(self) -> dict:
        return {"reward_errors": self.errors, "reward_function_calls": self.calls,
                "reward_error_rate": self.errors / self.calls if self.calls else 0.0,
                "reward_error_examples": list(self.examples)}

