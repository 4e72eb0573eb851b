"""The `pretrain` kind on a real local Ray (2 Train workers): learning, export, resume, fault tolerance.

Token shards come from `test_pretrain_support` (the tokenize contract, built-in stdlib corpus).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from llmray.stages.base import StageContext

SEQ = 64


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_tokenizer_dir):
    from test_pretrain_support import stdlib_shards

    # 2,600 documents: ~3,800 training sequences, more than the 60 steps x 2 workers x 16 read, so the run
    # stays in one epoch. With 1,500 (68 steps an epoch) the second epoch's start of the Ray Data streams
    # cost ~20 s of the test's ~130 s; epochs are not what this test checks.
    # 1,000 rows a file (4 train files, not 19): every rank reads every file in a task of its own, and on a
    # cold worker pool a task can cost a fresh Ray worker process (38 reads started ~19 processes during the
    # first steps: steps 1-5 took 31 s, not ~4 s). The row stream, hence every batch and loss, is the same.
    return stdlib_shards(tmp_path_factory, tiny_tokenizer_dir, 2600, SEQ, rows_per_shard=1000)


def _ctx(root: Path) -> StageContext:
    (root / "out").mkdir(parents=True, exist_ok=True)
    return StageContext(name="pt", kind="pretrain", fingerprint="test", run_dir=root, out_dir=root / "out",
                        work_dir=root / "work", inputs={}, pipeline=None, log=logging.getLogger("test"))


def _task(shards, **kw):
    from llmray.train.causal import CausalLMTask

    return CausalLMTask(train_dir=shards / "train", val_dir=shards / "val", tokenizer_dir=shards / "tokenizer",
                        model={"preset": "tiny"}, **kw)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cfg(**kw):
    from llmray.train.config import TrainConfig

    base = {"steps": 60, "micro_batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "log_every": 5,
            "eval_every": 30, "checkpoint_every": 10, "eval_batches": 4}
    return TrainConfig(**{**base, **kw})


def _kill_rank_when(root: Path, rank: int, min_step: int, fired: list) -> threading.Thread:
    """Kill the Ray Train worker process of `rank` (SIGKILL, as an OOM killer would) once the
    metrics show a step >= min_step."""
    pid_file = root / "work" / "worker_pids" / f"rank{rank}.pid"
    metrics = root / "out" / "metrics.jsonl"

    def watch():
        deadline = time.time() + 240
        while time.time() < deadline and not fired:
            if metrics.exists() and pid_file.exists():
                steps = [r.get("step", 0) for r in _records(metrics) if "train_loss" in r]
                if steps and max(steps) >= min_step:
                    pid = int(pid_file.read_text())
                    os.kill(pid, signal.SIGKILL)
                    fired.append((pid, max(steps)))
                    return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_two_workers_learn_survive_a_killed_worker_and_export_the_training_weights(tmp_path, shards, ray_local,
                                                                                   monkeypatch):
    """One 2-worker run (one worker group start for every claim):
    - SIGKILL one worker mid-run: Ray Train restarts the group from the latest checkpoint, at most one
      checkpoint interval is redone, and the redone steps reproduce the same losses (same weights, same
      data position, same RNG);
    - the workers learn (val loss falls well below its start and below the unigram entropy);
    - the exported HF folder gives the same logits as the training code's model with the final weights."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    from llmray.resources import Resources
    from llmray.train.causal import unigram_entropy
    from llmray.train.data import token_collate
    from llmray.train.loop import fit

    # Ray Train's controller collects reported checkpoints when it polls the workers (every 2 s by
    # default); a checkpoint reported just before a crash is lost if no poll came in between. Real
    # checkpoint intervals are minutes; this tiny model does 10 steps in under a second, so poll faster.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

    fired: list = []
    watcher = _kill_rank_when(tmp_path, rank=1, min_step=25, fired=fired)
    task = _task(shards)
    cfg = _cfg(steps=60, lr=3e-3, log_every=5, eval_every=30, checkpoint_every=10)
    res = fit(task, cfg, Resources(num_workers=2, max_failures=1), _ctx(tmp_path))
    watcher.join(timeout=1)
    assert fired, "the worker was never killed"
    m = res.metrics
    recs = _records(res.metrics_path)
    assert recs[0]["step"] == 0 and "val_loss" in recs[0]

    # Fault tolerance: one restart, from a checkpoint, continuous to the end, redone steps identical.
    resumed = [i for i, r in enumerate(recs) if r.get("event") == "resumed"]
    assert len(resumed) == 1
    before, after = recs[:resumed[0]], recs[resumed[0] + 1:]
    restart_step = recs[resumed[0]]["step"]
    last_before = max(r["step"] for r in before if "train_loss" in r)
    assert restart_step % cfg.checkpoint_every == 0 and restart_step >= 20
    assert 0 <= last_before - restart_step <= cfg.checkpoint_every  # lost at most one interval
    assert [r["step"] for r in before if "train_loss" in r] == list(range(5, last_before + 1, 5))
    steps_after = [r["step"] for r in after if "train_loss" in r]
    assert steps_after == list(range(restart_step + 5, 61, 5))  # continuous to the end
    loss_before = {r["step"]: r["train_loss"] for r in before if "train_loss" in r}
    redone = [s for s in steps_after if s in loss_before]
    assert redone, "no step was redone"
    for s in redone:
        got = next(r["train_loss"] for r in after if r.get("step") == s and "train_loss" in r)
        assert got == pytest.approx(loss_before[s], rel=1e-4), s

    # Learning.
    assert [r["step"] for r in recs if "val_loss" in r] == [0, 30, 60]
    assert m["workers"] == 2 and m["steps"] == 60 and m["tokens_per_s"] > 0
    assert m["final_eval"]["val_loss"] < m["first_eval"]["val_loss"] - 1.0
    assert m["final_eval"]["val_loss"] < unigram_entropy(shards / "train")["unigram_entropy"]
    assert all(r["grad_norm"] > 0 and r["lr"] > 0 for r in recs if "train_loss" in r)

    # The training code's model class with the final training state vs the exported HF folder.
    state = torch.load(res.checkpoint_dir / "train_state.pt", map_location="cpu", weights_only=True)
    trained = task.build_model()
    trained.load_state_dict(state["model"])
    loaded = AutoModelForCausalLM.from_pretrained(str(res.model_dir))
    rows = pq.read_table(min((shards / "val").glob("*.parquet"))).slice(0, 8).to_pydict()
    batch = token_collate({"input_ids": np.array(rows["input_ids"])})
    with torch.no_grad():
        a = trained.eval()(input_ids=batch["input_ids"]).logits
        b = loaded.eval()(input_ids=batch["input_ids"]).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert (res.model_dir / "model.safetensors").exists() and (res.model_dir / "tokenizer.json").exists()
    assert (res.model_dir / "config.json").exists()
