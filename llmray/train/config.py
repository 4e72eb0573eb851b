"""The `train:` block shared by every training kind (pretrain, sft, reward, dpo, ...).

A stage Config embeds it as `train: TrainConfig = Field(default_factory=TrainConfig, ...)`;
`llmray.train.loop.fit` reads it on the driver and, pickled, on every Ray Train worker.
Counts are in optimizer steps; one optimizer step consumes, per worker,
`grad_accum` micro-batches of `micro_batch_size` rows, so a step sees
`num_workers * grad_accum * micro_batch_size` rows in all.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmray.config import EXECUTION_ONLY, StrictModel


class TrainConfig(StrictModel):
    """Optimisation, schedule, logging and checkpoint cadence of one training run."""

    steps: int = Field(100, ge=1, description="Optimizer steps to train for.")
    micro_batch_size: int = Field(8, ge=1, description="Rows per worker per forward/backward pass.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated into one optimizer step.")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate (reached after warmup).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of `lr` (cosine).")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps from 0 to `lr`.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decay on matrices; norms, biases and "
                                                       "embeddings are never decayed.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0: no clipping).")
    seed: int = Field(0, description="Seed for initialisation and anything random in training.")
    # Cadences of logging, evaluation and checkpoints never change the trained weights: execution-only.
    log_every: int = Field(10, ge=1, json_schema_extra=EXECUTION_ONLY,
                           description="Write a metrics.jsonl record every this many steps.")
    eval_every: int = Field(50, ge=1, json_schema_extra=EXECUTION_ONLY,
                            description="Evaluate on the validation data every this many steps (also before the "
                                        "first step and after the last).")
    eval_batches: int = Field(8, ge=1, description="Micro-batches per validation set per evaluation "
                                                   "(in all, split across workers).")
    checkpoint_every: int = Field(50, ge=1, json_schema_extra=EXECUTION_ONLY,
                                  description="Save a resumable Ray Train checkpoint every this many steps.")
    keep_checkpoints: int = Field(2, ge=1, json_schema_extra=EXECUTION_ONLY,
                                  description="Checkpoints kept on storage (the latest ones).")
    activation_checkpointing: bool = Field(False, json_schema_extra=EXECUTION_ONLY, description="Recompute activations in backward to save "
                                                              "memory (gradient checkpointing).")
    compile: bool = Field(False, description="torch.compile the model (worth it on GPU; slow to start on CPU).")
    attention: Literal["auto", "flash", "cudnn", "efficient", "math"] = Field(
        "auto", description="SDPA kernel for training steps: auto (torch picks; FlashAttention-2 in bf16 on "
                            "GPU) or one forced (cudnn: cuDNN fused attention for Hopper GPUs). A kernel the "
                            "device lacks fails the first step.")
    data_cpus: float = Field(0.0, ge=0, json_schema_extra=EXECUTION_ONLY,
                             description="CPUs each Ray Data read task reserves. 0 lets reads run beside Train "
                                         "workers that hold every CPU (2-core laptop); raise it on clusters with "
                                         "spare CPUs.")

    @model_validator(mode="after")
    def _check(self):
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed steps ({self.steps})")
        return self
