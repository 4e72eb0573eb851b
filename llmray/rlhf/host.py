"""The colocated hosts (`resources.colocate`): roles that start from the same model folder share one
process (a Ray actor, or the driver's process with `resources.in_process`) and one load of it.

Separate roles cost a process each (a Python worker importing torch + transformers, ~3-7 s of CPU
on a laptop core) and a load of the same model folder each; a separate engine also needs the
trained weights shipped to it every iteration. Here:

  PolicyHost  policy     the trainable model (`PolicyWorker`: logprobs, train, export_weights, save_model)
              reference  a frozen in-memory copy of the starting weights   -> ref_logprobs(batch)
              engine     (hf, one replica) `HFEngine` generating with the policy's own model ->
                         generate(...), load_weights (a version bump only: its weights are the policy's)
  ValueHost   critic     the trainable value model (`ValueWorker`: values, train), started from the
                         reward model (ppo's critic.init: reward)
              reward     a frozen copy of the same starting weights -> reward_score_responses(...)

The driver sees every role (`actors.SharedRole` views on a host), so the RL loop is the same; what
is lost is restarting an engine on its own (a dead host is a dead policy). The math is the same as
with separate actors: the same weights, seeds and batches.
"""

from __future__ import annotations

import copy

from llmray.rlhf.rollout import EngineOptions, HFEngine, RolloutWorker
from llmray.rlhf.trainer import ModelRole, PolicyWorker, ValueWorker


def _frozen_copy(worker):
    """The same methods on a frozen deep copy of `worker`'s model (no optimizer)."""
    twin = copy.copy(worker)
    twin.model = copy.deepcopy(worker.model).requires_grad_(False)
    twin.opt = twin.sched = None
    return twin


class PolicyHost(PolicyWorker):
    """PolicyWorker + a frozen reference copy (+ an hf rollout engine on the same model when
    `engine_opts` is given; a vLLM engine stays its own actor)."""

    def __init__(self, role: ModelRole, temperature: float = 1.0, algo: str = "ppo",
                 engine_opts: EngineOptions | None = None):
        super().__init__(role, temperature, algo)
        self.reference = _frozen_copy(self)
        self.kind, self.version, self.engine = "hf", 0, None
        if engine_opts is not None:
            self.engine = HFEngine(role.model_dir, engine_opts, role.seed, "", shared=(self.model, self.compute))

    def ref_logprobs(self, batch: dict) -> dict:
        return self.reference.logprobs(batch)

    # the rollout actor's interface (RolloutGroup calls these)
    info = RolloutWorker.info
    generate = RolloutWorker.generate

    def load_weights(self, blob, version: int) -> float:
        """The engine generates with the policy's model: nothing to load, only the version moves."""
        self.version = version
        return 0.0


class ValueHost(ValueWorker):
    """The critic (trainable ValueWorker) + a frozen copy of its starting weights serving as the reward
    model it started from."""

    def __init__(self, role: ModelRole, value_clip: float | None = None):
        super().__init__(role, value_clip)
        self.reward = _frozen_copy(self)

    def reward_score_responses(self, *args):
        return self.reward.score_responses(*args)
