"""The Ray-free parts of the training core: schedule, decay groups, train_step, checkpoints, streams, FLOPs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from llmray.device import compute_init
from llmray.train import checkpoint as ckpt
from llmray.train.config import TrainConfig
from llmray.train.data import BatchStream, MixedStream, take_batches, token_collate
from llmray.train.flops import flops_per_token, matmul_params, mfu
from llmray.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from llmray.train.step import causal_lm_loss, train_step

CPU = compute_init(in_ray_train=False)


def _model(tok_dir, seed=0):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from llmray.models import ModelConfig, llama_config

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(ModelConfig(preset="tiny"), AutoTokenizer.from_pretrained(str(tok_dir))))


def _batch(n=8, seq=32, seed=1, vocab=1024):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, vocab, (n, seq), generator=g)}


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(f[:10]))  # warmup rises
    assert all(a >= b for a, b in itertools.pairwise(f[9:]))  # then never rises
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_train_config_rejects_warmup_longer_than_training():
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(steps=5, warmup_steps=10)


def test_no_decay_on_norms_biases_embeddings(tiny_tokenizer_dir):
    model = _model(tiny_tokenizer_dir)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in no_decay["params"]} >= {"model.embed_tokens.weight", "model.norm.weight"}
    assert all("norm" in names[id(p)] or "embed" in names[id(p)] for p in no_decay["params"])
    assert all(p.ndim == 2 and "embed" not in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_grad_accumulation_matches_one_big_batch(tiny_tokenizer_dir):
    cfg = TrainConfig(steps=10, warmup_steps=0, lr=1e-3)
    batch = _batch(8)
    results = []
    for micro in ([batch], [{"input_ids": batch["input_ids"][:4]}, {"input_ids": batch["input_ids"][4:]}]):
        model = _model(tiny_tokenizer_dir)
        opt = build_optimizer(model, cfg)
        stats = train_step(model, micro, opt, build_scheduler(opt, cfg), causal_lm_loss, CPU, grad_clip=1.0)
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
    (s1, p1), (s2, p2) = results
    assert s1["tokens"] == s2["tokens"] == 8 * 32
    assert float(s1["loss"]) == pytest.approx(float(s2["loss"]), rel=1e-5)
    assert float(s1["grad_norm"]) == pytest.approx(float(s2["grad_norm"]), rel=1e-4)
    # Adam's first step moves every weight by about lr * sign(grad): where a gradient is ~0, float noise
    # between the two summation orders shows as a few-1e-6 difference in a handful of weights; a wrong
    # accumulation (e.g. unscaled micro-batch losses) would differ by ~lr = 1e-3 almost everywhere.
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(p1, p2))


def test_train_step_learns_and_follows_schedule(tiny_tokenizer_dir):
    cfg = TrainConfig(steps=20, warmup_steps=2, lr=3e-3)
    model = _model(tiny_tokenizer_dir)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    batch = _batch(4, 16)
    stats = [train_step(model, [batch], opt, sched, causal_lm_loss, CPU, cfg.grad_clip) for _ in range(20)]
    assert float(stats[-1]["loss"]) < float(stats[0]["loss"]) - 1.0  # memorises one batch
    assert stats[0]["lr"] == pytest.approx(cfg.lr * 0.5) and stats[1]["lr"] == pytest.approx(cfg.lr)
    assert float(stats[0]["grad_norm"]) > 0


def test_checkpoint_roundtrip_resumes_identically(tmp_path, tiny_tokenizer_dir):
    """Train 3 steps, checkpoint, train 2 more; a fresh model restored from the checkpoint
    then trained 2 steps ends with the same weights and losses."""
    cfg = TrainConfig(steps=10, warmup_steps=2, lr=1e-3)
    batches = [_batch(4, 16, seed=s) for s in range(5)]

    def setup():
        m = _model(tiny_tokenizer_dir, seed=0)
        o = build_optimizer(m, cfg)
        return m, o, build_scheduler(o, cfg)

    m, o, s = setup()
    for b in batches[:3]:
        train_step(m, [b], o, s, causal_lm_loss, CPU)
    ckpt.save(tmp_path, m, o, s, {"step": 3, "data": {"epoch": 0, "index": 3}}, rank=0)
    ref = [float(train_step(m, [b], o, s, causal_lm_loss, CPU)["loss"]) for b in batches[3:]]

    m2, o2, s2 = setup()
    meta = ckpt.load(tmp_path, m2, o2, s2, rank=0)
    assert meta["step"] == 3 and meta["data"] == {"epoch": 0, "index": 3}
    got = [float(train_step(m2, [b], o2, s2, causal_lm_loss, CPU)["loss"]) for b in batches[3:]]
    assert got == pytest.approx(ref, rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))


def _epochs(n_batches, bs=2):
    def epoch():
        return iter({"input_ids": [[i] * 3] * bs} for i in range(n_batches))

    return epoch


def _collate(b):
    return b["input_ids"][0][0]


def test_batch_stream_cycles_epochs_and_resumes_mid_epoch():
    s = BatchStream(_epochs(3), _collate)
    first = [next(s) for _ in range(7)]
    assert first == [0, 1, 2, 0, 1, 2, 0] and s.state_dict() == {"epoch": 2, "index": 1}
    state = s.state_dict()
    rest = [next(s) for _ in range(4)]
    s2 = BatchStream(_epochs(3), _collate)
    s2.load_state_dict(state)
    assert [next(s2) for _ in range(4)] == rest == [1, 2, 0, 1]
    with pytest.raises(RuntimeError, match="no full micro-batch"):
        next(BatchStream(_epochs(0), _collate))


def test_mixed_stream_exact_fraction_and_resume():
    def mixed():
        return MixedStream(BatchStream(_epochs(50), _collate), BatchStream(lambda: iter(
            {"input_ids": [[-1] * 3]} for _ in range(50)), _collate), 0.25)

    m = mixed()
    seq = [next(m) for _ in range(40)]
    assert sum(x == -1 for x in seq) == 10  # exactly a quarter, spread evenly
    assert all(sum(x == -1 for x in seq[i:i + 4]) == 1 for i in range(0, 40, 4))
    m2 = mixed()
    for _ in range(13):
        next(m2)
    m3 = mixed()
    m3.load_state_dict(m2.state_dict())
    assert [next(m3) for _ in range(10)] == [next(m2) for _ in range(10)]


def test_token_collate_and_take_batches():
    import numpy as np

    raw = {"input_ids": np.array([np.arange(4, dtype=np.uint16), np.arange(4, 8, dtype=np.uint16)], dtype=object)}
    out = token_collate(raw)
    assert out["input_ids"].dtype == torch.int64 and out["input_ids"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(take_batches(lambda: iter([raw] * 5), 3)) == 3
    assert len(take_batches(lambda: iter([raw] * 2), 3)) == 2


def test_flops_per_token_counts_matmuls(tiny_tokenizer_dir):
    model = _model(tiny_tokenizer_dir)
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    assert c.tie_word_embeddings and matmul_params(model) == n  # tied: the table is counted once, as the head
    assert flops_per_token(model, 128) == 6 * n + 12 * c.num_hidden_layers * c.hidden_size * 128
    assert mfu(1000.0, 1e9, 2, 1e12) == pytest.approx(0.5)
    assert mfu(1000.0, 1e9, 2, None) is None


def test_a_forced_attention_kernel_is_used_and_a_missing_one_fails_loudly(tiny_tokenizer_dir):
    """train_step(attention=...): the math kernel computes the same step as torch's pick; cuDNN's,
    which a CPU lacks, raises instead of quietly running another kernel."""
    losses = {}
    for kernel in ("auto", "math"):
        model = _model(tiny_tokenizer_dir)
        cfg = TrainConfig(steps=10, warmup_steps=1, attention=kernel)
        opt = build_optimizer(model, cfg)
        stats = [train_step(model, [_batch()], opt, build_scheduler(opt, cfg), causal_lm_loss, CPU, 1.0,
                            cfg.attention) for _ in range(2)]
        losses[kernel] = [float(s["loss"]) for s in stats]
    assert losses["math"] == pytest.approx(losses["auto"], rel=1e-4)
    model = _model(tiny_tokenizer_dir)
    opt = build_optimizer(model, TrainConfig(steps=10, warmup_steps=1))
    with pytest.raises(RuntimeError, match="No viable backend|No available kernel"):
        train_step(model, [_batch()], opt, None, causal_lm_loss, CPU, 1.0, "cudnn")
    with pytest.raises(ValueError, match="attention"):
        TrainConfig(attention="flash3")


@pytest.mark.integration  # runs bench/gpu_check.py in a subprocess
def test_gpu_check_script_runs_on_cpu_and_compares_attention_kernels_in_one_run(tmp_path):
    """bench/gpu_check.py (no Ray) in its fast CPU mode: the same train_step, a JSON report in $OUT;
    --attention auto,math,cudnn on a CPU: two measured runs, cuDNN's failure recorded, not fatal.
    (One subprocess for both claims: each start costs seconds on 2 cores.)"""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--preset", "tiny", "--steps", "2", "--device",
                           "cpu", "--seq", "64", "--micro-batch", "2", "--warmup", "1", "--vocab", "1024",
                           "--attention", "auto,math,cudnn"],
                          check=False, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["timed_steps"] == 2 and report["tokens_per_s"] > 0 and report["mfu"] is None
    assert report["flops_per_token"] > 6 * 1_000_000 and len(report["losses"]) == 2
    assert "ray" not in proc.stdout
    assert [r["attention"] for r in report["runs"]] == ["auto", "math"]
    assert report["attention"] in ("auto", "math")
    assert [f["attention"] for f in report["attempts_failed"]] == ["cudnn"]
    assert "No viable backend" in report["attempts_failed"][0]["error"]


def test_gpu_check_presets_without_pydantic_match_the_module():
    """The AST fallback (GPU boxes without pydantic) reads the same presets as llmray.models."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu_check

    from llmray.models import PRESETS

    assert gpu_check.presets_from_source() == PRESETS


def test_fsdp2_path_trains_checkpoints_and_exports(tmp_path, tiny_tokenizer_dir):
    """The FSDP2 branch (fully_shard per decoder block, DTensor grads and clipping, full-state
    checkpoints, export through a rebuilt unsharded module) on a 1-process gloo group."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from llmray.train.causal import CausalLMTask
    from llmray.train.loop import export_model, prepare_model, seed_all

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        task = CausalLMTask(train_dir=None, val_dir=None, tokenizer_dir=tiny_tokenizer_dir, model={"preset": "tiny"})
        cfg = TrainConfig(steps=10, warmup_steps=1, lr=1e-3)
        seed_all(0)
        model = prepare_model(task.build_model(), cfg, CPU, "fsdp2", world=1)
        assert type(next(model.parameters())).__name__ == "DTensor"
        opt = build_optimizer(model, cfg)
        sched = build_scheduler(opt, cfg)
        batch = _batch(4, 16)
        losses = [float(train_step(model, [batch, batch], opt, sched, causal_lm_loss, CPU)["loss"])
                  for _ in range(3)]
        assert losses[-1] < losses[0]
        ckpt.save(tmp_path / "ck", model, opt, sched, {"step": 3, "data": {}}, rank=0)
        assert ckpt.load(tmp_path / "ck", model, opt, sched, rank=0)["step"] == 3
        export_model(model, task, tmp_path / "model", rank=0)
        loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
        with torch.no_grad():
            diff = (model(input_ids=batch["input_ids"]).logits - loaded(input_ids=batch["input_ids"]).logits)
        assert diff.abs().max() < 1e-5
    finally:
        dist.destroy_process_group()


def test_rows_needed_covers_every_worker_and_micro_batch():
    from llmray.train.data import rows_needed

    cfg = TrainConfig(steps=10, warmup_steps=0, micro_batch_size=4, grad_accum=3)
    assert rows_needed(cfg, 2) == 11 * 3 * 4 * 2
