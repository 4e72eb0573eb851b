"""The colocated policy actor (`resources.colocate: true`): policy trainer, frozen reference and
transformers rollout engine in one Ray actor, each model loaded once.

Separate roles cost a process each (a Python worker importing torch + transformers, ~3-7 s of CPU
on a laptop core) and a load of the same model folder each; the engine also needs the trained
weights shipped to it every iteration. Here one process loads the starting model once:

  policy     the trainable model (`PolicyWorker`: logprobs, train, export_weights, save_model)
  reference  a frozen in-memory copy of the starting weights  -> ref_logprobs(batch)
  engine     `HFEngine` generating with the policy's own model -> generate(...), load_weights (a
             version bump only: the engine's weights are the policy's)

The driver sees three roles (`actors.SharedRole` views on this actor), so the RL loop is the same;
what is lost is restarting an engine on its own (a dead host is a dead policy). The math is the
same as with separate actors: the same weights, seeds and batches.
"""

from __future__ import annotations

import copy

from llmray.rlhf.rollout import EngineOptions, HFEngine, RolloutWorker
from llmray.rlhf.trainer import ModelRole, PolicyWorker


class PolicyHost(PolicyWorker):
    """PolicyWorker + a frozen reference copy + an hf rollout engine on the same model."""

    def __init__(self, role: ModelRole, temperature: float = 1.0, algo: str = "ppo",
                 engine_opts: EngineOptions | None = None):
        super().__init__(role, temperature, algo)
        self.reference = copy.copy(self)  # the same methods on a frozen deep copy of the model
        self.reference.model = copy.deepcopy(self.model).requires_grad_(False)
        self.reference.opt = self.reference.sched = None
        self.kind, self.version = "hf", 0
        opts = engine_opts or EngineOptions(max_model_len=0)  # the hf engine reads only hf_batch_size
        self.engine = HFEngine(role.model_dir, opts, role.seed, "", shared=(self.model, self.compute))

    def ref_logprobs(self, batch: dict) -> dict:
        return self.reference.logprobs(batch)

    # the rollout actor's interface (RolloutGroup calls these)
    info = RolloutWorker.info
    generate = RolloutWorker.generate

    def load_weights(self, blob, version: int) -> float:
        """The engine generates with the policy's model: nothing to load, only the version moves."""
        self.version = version
        return 0.0
