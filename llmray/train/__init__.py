"""The shared training core: every training kind (pretrain, sft, reward, dpo, ...) runs through it.

A kind writes a small *task* object and calls `fit`; the core owns everything else:

    from llmray.train.loop import fit
    result = fit(task, config.train, config.resources, ctx)   # inside the stage's run(config, ctx)
    result.metrics     # rank 0's final record: first_eval / final_eval dicts, tokens_per_s, mfu (GPU), ...
    result.model_dir   # ctx.out_dir / "model": the HF export written by task.save
    result.checkpoint_dir  # the final checkpoint (train_state.pt, meta.json, model/)
    # metrics.jsonl under ctx.out_dir: {"step": 0, **first eval}, then one record every
    # train.log_every steps (train_loss, lr, grad_norm, tokens_per_s, step_time_s, data_wait =
    # share of time waiting for input, mfu on GPU, the task's loss metrics) merged with
    # evaluations every train.eval_every steps, and {"event": "resumed", "step": s} whenever a
    # worker group restarted from a checkpoint.

Stage config blocks: `train: TrainConfig` (llmray.train.config) and `resources: Resources`
(llmray.resources; num_workers, use_gpu, strategy ddp|fsdp2, max_failures).

The task (llmray.train.task: `TrainTask` protocol, `BaseTask` defaults) is built on the driver
from plain data (paths, config dicts) and pickled to the workers:
    datasets()  -> {"train": ray Dataset, "val": ..., ...}   driver side. Names starting with
                   "train" are split across workers (fixed order: resumable, reproducible);
                   names starting with "val" go whole to every worker, which keeps the first
                   `train.eval_batches` micro-batches in memory for evaluation. Parquet folders:
                   `llmray.train.data.read_rows(path, columns, num_cpus, min_rows)`; pass
                   `min_rows=rows_needed(train_cfg, num_workers)` for train sets so a multi-epoch
                   run is one Ray Data pass (each new pass of a split dataset stalls ~1 s).
    build_model() -> nn.Module (CPU, fp32; HF PreTrainedModel so export/FLOPs work).
    collate(numpy batch) -> dict of tensors (default: input_ids -> LongTensor).
    train_stream(epochs) -> iterator of collated micro-batches with state_dict/load_state_dict;
                   default `BatchStream(epochs["train"], self.collate)`; `MixedStream` mixes two.
    loss(model, batch) -> (scalar loss, {name: value}) ; "tokens" in the dict overrides the
                   token count used for tokens/s (default: input_ids.numel()).
    evaluate(model, val_sets, compute, rank, world) -> {name: float} (a collective: every rank
                   calls; default: `<set>_loss`, `<set>_ppl` per val set using `loss`).
    save(model, out_dir) -> writes the HF folder (default: llmray.models.save_model with
                   `self.tokenizer_dir`); rank 0 only, `model` is the plain full module.

The core, per worker: seed, build, activation checkpointing/compile, DDP or FSDP2
(`fully_shard` per `_no_split_modules` block), AdamW (no decay on norms/biases/embeddings) with
warmup + cosine, resume from the latest Ray Train checkpoint (model, optimizer, scheduler,
data position, RNG), then `llmray.train.step.train_step` per step (grad accumulation, autocast,
clipping); Ray Train checkpoints every `checkpoint_every` steps under ctx.work_dir, or on the
object store (ctx.work_remote) when the run directory is a URI (a rerun of the same fingerprint
resumes; FailureConfig(max_failures) restarts dead workers from there).

`train_step(model, micro_batches, optimizer, scheduler, loss_fn, compute, grad_clip)` in
llmray.train.step imports no Ray: benchmarks and GPU checks call it on a bare model, and the RL
policy/critic trainers (llmray.rlhf.trainer) take one per minibatch, with `llmray.train.optim`'s
optimizer and schedule.

The kinds' tasks and their driver-side work live here too, one module per kind: causal.py
(pretrain), sft.py (`train_sft`), reward.py (`train_reward`), dpo.py (`train_dpo`); each stage
module (llmray/stages/) is the kind's Config and a `run` that calls into them.
Nothing in this package imports Ray or torch at module level except inside functions.
"""
