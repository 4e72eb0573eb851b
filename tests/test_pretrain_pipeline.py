"""`pretrain` through the runner: config checks, domain fine-tuning with replay, resume after a failed run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from llmray.config import ConfigError
from llmray.pipeline import parse_pipeline
from llmray.runner import read_manifest, run_dir, run_pipeline
from llmray.stages import STAGES


@pytest.fixture(autouse=True)
def tokshards_kind(monkeypatch):
    from llmray.stages import pretrain

    monkeypatch.setitem(STAGES, "tokshards", "test_pretrain_support")
    monkeypatch.setitem(pretrain.Config.INPUTS, "data", ("tokenize", "tokshards"))
    monkeypatch.setitem(pretrain.Config.INPUTS, "replay", ("tokenize", "tokshards"))


TRAIN = {"micro_batch_size": 8, "lr": 3e-3, "warmup_steps": 3, "log_every": 5, "eval_every": 100,
         "checkpoint_every": 10, "eval_batches": 4}


def _pipe(tmp_path, tok_dir, stages: dict):
    base = {"general": {"kind": "tokshards", "tokenizer_dir": str(tok_dir), "docs": 1500}}
    return parse_pipeline({"name": "pt", "workdir": str(tmp_path / "runs"), "stages": {**base, **stages}})


def _records(stage_dir):
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def test_config_errors(tmp_path, tiny_tokenizer_dir, tiny_causal_dir):
    ok = {"kind": "pretrain", "data": "general", "train": {"steps": 5, "warmup_steps": 1}}
    _pipe(tmp_path, tiny_tokenizer_dir, {"base": ok})
    bad = [
        ({**ok, "init": "base2", "from": str(tiny_causal_dir)}, "at most one"),
        ({**ok, "data": "nope"}, "no stage named"),
        ({**ok, "train": {"steps": 5, "warmup_steps": 9}}, "warmup_steps"),
        ({**ok, "replay": {"data": "general", "fraction": 1.0}}, "fraction"),
        ({**ok, "resources": {"num_workers": 2, "strategy": "fsdp2"}}, "fsdp2"),
        ({**ok, "train": {"steps": 5, "warmup_steps": 1, "lr_max": 1}}, "lr_max"),
    ]
    for cfg, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            _pipe(tmp_path, tiny_tokenizer_dir, {"base": cfg, "base2": ok})
    with pytest.raises(ConfigError, match="from scratch"):
        _pipe(tmp_path, tiny_tokenizer_dir, {"base": ok, "dom": {**ok, "init": "base", "model": {"preset": "small"}}})


@pytest.mark.slow
def test_domain_finetune_with_replay_reports_forgetting(tmp_path, tiny_tokenizer_dir, ray_local):
    """init: a pretrain stage; domain data; replay of general data. The domain val loss falls, the
    general val loss before equals the base model's own final val loss, forgetting is reported."""
    stages = {
        "domain": {"kind": "tokshards", "tokenizer_dir": str(tiny_tokenizer_dir),
                   "modules": ["tarfile", "zipfile", "socket", "ssl", "sqlite3", "subprocess", "shutil",
                               "tempfile"]},  # not among the general set's first 1500 documents
        "base": {"kind": "pretrain", "data": "general", "train": {**TRAIN, "steps": 30},
                 "resources": {"num_workers": 2}},
        "dom": {"kind": "pretrain", "data": "domain", "init": "base",
                "replay": {"data": "general", "fraction": 0.25},
                "train": {**TRAIN, "steps": 20, "lr": 1e-3}, "resources": {"num_workers": 2}},
    }
    pipe = _pipe(tmp_path, tiny_tokenizer_dir, stages)
    run_pipeline(pipe, echo=lambda *_: None)
    root = run_dir(pipe)
    base, dom = read_manifest(root / "base")["metrics"], read_manifest(root / "dom")["metrics"]
    assert dom["val_loss_after"] < dom["val_loss_before"]
    assert dom["val_general_loss_before"] == pytest.approx(base["val_loss"], rel=1e-4)
    assert dom["forgetting"] == pytest.approx(dom["val_general_loss_after"] - dom["val_general_loss_before"])
    assert base["beats_unigram_by"] == pytest.approx(base["unigram_entropy"] - base["val_loss"])
    first = _records(root / "dom")[1]  # [0] is the data record
    assert first["step"] == 0 and {"val_loss", "val_general_loss"} <= set(first)


@pytest.mark.slow
def test_llmray_run_resumes_an_interrupted_pretrain(tmp_path, tiny_tokenizer_dir, ray_local, monkeypatch):
    """A worker dies with no restarts left: the stage fails. Running the pipeline again resumes
    from the latest checkpoint (the work folder of the same fingerprint) instead of restarting."""
    from llmray.runner import StageFailed, fingerprints

    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # see test_pretrain.py: tiny steps

    stages = {"base": {"kind": "pretrain", "data": "general", "train": {**TRAIN, "steps": 60},
                       "resources": {"num_workers": 2, "max_failures": 0}}}
    pipe = _pipe(tmp_path, tiny_tokenizer_dir, stages)
    root = run_dir(pipe)
    work = root / ".work" / f"base-{fingerprints(pipe)['base'][:12]}"
    metrics = root / ".staging" / "base" / "metrics.jsonl"
    fired = []

    def kill_after_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline:
            pid_file = work / "worker_pids" / "rank1.pid"
            if metrics.exists() and pid_file.exists():
                steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines()]
                if max(steps, default=0) >= 25:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                    fired.append(max(steps))
                    return
            time.sleep(0.05)

    threading.Thread(target=kill_after_checkpoint, daemon=True).start()
    with pytest.raises(StageFailed):
        run_pipeline(pipe, echo=lambda *_: None)
    assert fired and read_manifest(root / "base")["status"] == "failed"
    assert any(work.joinpath("ray_train").rglob("train_state.pt"))
    run_pipeline(pipe, echo=lambda *_: None)
    man = read_manifest(root / "base")
    assert man["status"] == "completed" and man["metrics"]["steps"] == 60
    recs = _records(root / "base")
    resumed = [r for r in recs if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 20  # not from scratch
    assert not any(r.get("step") == 0 for r in recs if "event" not in r)  # no step-0 evaluation again
    assert not work.exists()  # removed once the stage completed
