"""One-worker training in the driver's process (`resources.in_process`, Ray Train's local mode) against the
worker-group path, on a real local Ray and a tiny model: the same loss curve and exported weights, no
process start, checkpoints on storage that a rerun resumes from, exceptions retried from the latest one,
and the driver's torch threads and memory as they were.
"""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmray.stages.base import StageContext
from llmray.train.causal import CausalLMTask

SEQ = 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_tokenizer_dir):
    from test_pretrain_support import stdlib_shards

    # One file of each split (~700 train rows): a read task per file, and each can cost a fresh Ray worker
    # process; a run reads only the first ~200 rows anyway.
    return stdlib_shards(tmp_path_factory, tiny_tokenizer_dir, 300, SEQ, rows_per_shard=1000)


_CALLS: list = []  # training loss calls, across the copies of a task each in-process attempt trains
_MODELS: list = []  # weak references to every model an in-process run built


@dataclass
class _Task(CausalLMTask):
    """CausalLMTask that remembers its models (weakly) and can raise once at a given training loss call."""

    fail_at: int = 0  # the n-th training loss call since the test reset _CALLS raises (0: never)

    def build_model(self):
        model = super().build_model()
        _MODELS.append(weakref.ref(model))
        return model

    def loss(self, model, batch):
        import torch

        if torch.is_grad_enabled():  # a training step (held-out evaluation runs under no_grad)
            _CALLS.append(1)
            if len(_CALLS) == self.fail_at:
                raise RuntimeError("injected failure")
        return super().loss(model, batch)


def _task(shards, **kw) -> _Task:
    return _Task(train_dir=shards / "train", val_dir=shards / "val", tokenizer_dir=shards / "tokenizer",
                 model={"preset": "tiny"}, **kw)


def _ctx(root: Path) -> StageContext:
    (root / "out").mkdir(parents=True, exist_ok=True)
    return StageContext(name="t", kind="pretrain", fingerprint="test", run_dir=root, out_dir=root / "out",
                        work_dir=root / "work", inputs={}, pipeline=None, log=logging.getLogger("test"))


def _cfg(**kw):
    from llmray.train.config import TrainConfig

    base = {"steps": 24, "micro_batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 2, "eval_every": 12,
            "checkpoint_every": 8, "eval_batches": 2, "keep_checkpoints": 2, "seed": 7}
    return TrainConfig(**{**base, **kw})


def _losses(path: Path) -> dict[int, dict]:
    """step -> the loss figures logged for it (last record of a step wins: a redone step overwrites)."""
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "step" in r and "event" not in r:
            out.setdefault(r["step"], {}).update({k: v for k, v in r.items() if k.endswith("_loss")})
    return out


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _fit(task, root: Path, cfg=None, **res):
    from llmray.resources import Resources
    from llmray.stages.base import FixedCost
    from llmray.train.loop import fit

    cost = FixedCost()
    result = fit(task, cfg or _cfg(), Resources(**res), _ctx(root), cost=cost)
    return result, cost.parts


def test_in_process_matches_the_worker_group_resumes_and_retries(tmp_path, shards, ray_local):
    """auto picks in-process for one CPU worker on this (test-started, one-node) Ray. In-process, an
    exception after the step-16 checkpoint is retried from it (max_failures: 1), and the run still ends
    exactly as the worker group's on the same seed: the same losses at every logged step and the same
    exported weights. The driver's torch threads are restored and the models are freed. With no retries
    left fit raises; a rerun resumes from the checkpoint on storage (keep_checkpoints kept), with far less
    start-up than the worker group."""
    import torch

    from llmray.resources import Resources, in_process

    assert in_process(Resources()) and not in_process(Resources(in_process=False))
    assert not in_process(Resources(num_workers=2))

    # The worker group gets the plain task (its worker process cannot import this test module).
    plain = CausalLMTask(train_dir=shards / "train", val_dir=shards / "val", tokenizer_dir=shards / "tokenizer",
                         model={"preset": "tiny"})
    group, group_cost = _fit(plain, tmp_path / "group", in_process=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads != 2 else 3)  # a driver setting the worker's 1 thread must not keep
    driver_threads = torch.get_num_threads()
    _CALLS.clear()
    local, _ = _fit(_task(shards, fail_at=20), tmp_path / "local", max_failures=1)
    assert torch.get_num_threads() == driver_threads
    torch.set_num_threads(threads)
    assert len(_MODELS) == 2 and all(ref() is None for ref in _MODELS), "an in-process model was not freed"
    assert local.metrics["torch_threads"] == group.metrics["torch_threads"] == 1
    events = [json.loads(x) for x in local.metrics_path.read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "resumed"] == [16]
    assert not (tmp_path / "local" / "work" / "worker_pids").exists()  # the driver is no worker to kill

    # Same results: every logged loss (train and held-out; a redone step's last record) and every exported
    # tensor, exactly.
    curve = _losses(group.metrics_path)
    assert sorted(curve) == [0, *range(2, 25, 2)] and _losses(local.metrics_path) == curve
    a, b = _weights(local.model_dir), _weights(group.model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert local.metrics["final_eval"] == group.metrics["final_eval"]

    # No retries left: fit raises; the rerun (same work folder) resumes from step 16 on storage.
    crashed = tmp_path / "crash"
    _CALLS.clear()
    with pytest.raises(RuntimeError, match="injected failure"):
        _fit(_task(shards, fail_at=20), crashed, max_failures=0)
    stored = sorted(p.name for p in (crashed / "work" / "ray_train" / "train").iterdir())
    assert stored == ["checkpoint_step000000008", "checkpoint_step000000016"]
    res, cost = _fit(_task(shards), crashed, max_failures=0)
    events = [json.loads(x) for x in res.metrics_path.read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "resumed"] == [16]
    assert all(torch.equal(v, b[k]) for k, v in _weights(res.model_dir).items())
    stored = sorted(p.name for p in (crashed / "work" / "ray_train" / "train").iterdir())
    assert stored == ["checkpoint_step000000016", "checkpoint_step000000024"]  # keep_checkpoints: 2
    # No controller or worker process to start: most of the worker group's start-up is gone.
    assert cost["startup"] < group_cost["startup"] / 2, (cost, group_cost)


def test_in_process_true_where_it_cannot_hold_names_the_field():
    from pydantic import ValidationError

    from llmray.resources import Resources

    for bad in ({"num_workers": 2}, {"use_gpu": True}, {"custom": {"gpu_node": 0.01}}):
        with pytest.raises(ValidationError, match="in_process"):
            Resources(in_process=True, **bad)
    assert Resources(in_process=False, num_workers=2).in_process is False
    assert Resources().in_process == "auto"


def test_checkpoint_store_keeps_the_latest_and_reads_back_from_a_store(tmp_path):
    """Without Ray: persisted folders (nested model/ included) complete only with meta.json, our oldest
    beyond `keep` deleted, the newest read back (downloaded when the filesystem is not local disk)."""
    import pyarrow.fs as pafs

    from llmray.train.checkpoint import CheckpointStore

    src, root = tmp_path / "src", tmp_path / "store"
    (src / "model").mkdir(parents=True)
    (src / "model" / "weights.bin").write_bytes(b"w")
    (src / "train_state.pt").write_bytes(b"s")
    for step in (5, 10, 15):
        (src / "meta.json").write_text(json.dumps({"step": step, "done": step == 15}))
        CheckpointStore(str(root / "train"), keep=2).persist(src, step)
    (root / "train" / "checkpoint_step000000020").mkdir()  # an interrupted copy: no meta.json
    remote = CheckpointStore("train", pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem()), keep=2)
    assert [(s, done) for s, done, _ in remote.checkpoints()] == [(10, False), (15, True)]
    with remote.latest() as folder:
        assert folder != root / "train" / "checkpoint_step000000015"  # a downloaded copy
        assert (folder / "model" / "weights.bin").read_bytes() == b"w"
        assert json.loads((folder / "meta.json").read_text())["step"] == 15
    with CheckpointStore(str(tmp_path / "empty")).latest() as folder:
        assert folder is None
