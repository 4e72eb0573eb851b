"""Two shared schema rules: where a model-loading kind starts (`init` xor `from`, llmray.models.check_start)
and what a serving replica reserves (llmray.resources.ReplicaResources, flat in the `serve:` section)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmray.resources import ActorResources, ReplicaResources
from llmray.serve.replica import replica_resources
from llmray.serve_config import ServeConfig
from llmray.stages import get_stage

NEEDS = {"ppo": {"reward": "rm"}, "grpo": {"reward": "rm"}, "pretrain": {"data": "tokens"}}


@pytest.mark.parametrize("kind", ["sft", "reward", "dpo", "ppo", "grpo", "constitution", "pretrain"])
def test_every_kind_starts_from_init_or_from_never_both(kind, tiny_causal_dir):
    config = get_stage(kind).Config
    base = {"kind": kind, **NEEDS.get(kind, {})}
    assert config.model_validate({**base, "init": "chat"}).init == "chat"
    assert config.model_validate({**base, "from": str(tiny_causal_dir)}).from_ == str(tiny_causal_dir)
    with pytest.raises(ValidationError, match="one of init .* and from .*, not both"):
        config.model_validate({**base, "init": "chat", "from": str(tiny_causal_dir)})
    if kind == "pretrain":  # may start from scratch
        assert config.model_validate(base).init is None
    else:
        with pytest.raises(ValidationError, match="set exactly one of init"):
            config.model_validate(base)


def test_serve_replica_resources_are_the_actor_resources_family():
    cfg = ServeConfig.model_validate({"models": ["chat"], "num_cpus": 0.25, "num_gpus": 0.5,
                                      "custom": {"gpu_node": 0.01}})
    assert isinstance(cfg, ReplicaResources) and isinstance(cfg, ActorResources)
    settings = cfg.model_dump(mode="json")  # what the Serve spec carries to the replicas
    assert replica_resources(settings).ray_options() == {"num_cpus": 0.25, "num_gpus": 0.5,
                                                         "resources": {"gpu_node": 0.01}}
    plain = ServeConfig.model_validate({"models": ["chat"]})
    assert replica_resources(plain.model_dump(mode="json")).ray_options() == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert ServeConfig.model_validate({"models": ["chat"], "num_cpus": 0}).num_cpus == 0  # as before: ge 0
    with pytest.raises(ValidationError, match="threads"):
        ServeConfig.model_validate({"models": ["chat"], "threads": 0})
