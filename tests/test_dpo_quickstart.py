"""The quickstart's post-training figures (issue "Must show"), on the real chain of pipeline.yaml.

Runs every sft, reward and dpo stage of the repository's pipeline.yaml and whatever they need
(curate -> tokenizer -> tokenize -> pretrain -> sft -> reward / dpo) in a temporary workdir, then
checks the held-out figures: SFT lowers the assistant-token loss, the reward model's preference
accuracy is >= 0.85, DPO's implicit-reward accuracy is above 0.5 and above the SFT model's own."""

from __future__ import annotations

from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline.yaml"


@pytest.mark.slow
def test_quickstart_post_training_figures(tmp_path, ray_local):
    from llmray.pipeline import load_pipeline
    from llmray.runner import read_manifest, run_dir, run_pipeline

    pipe = load_pipeline(PIPELINE, [f"workdir={tmp_path}"])
    by_kind: dict[str, list[str]] = {}
    for name, cfg in pipe.stages.items():
        by_kind.setdefault(cfg.kind, []).append(name)
    wanted = [n for k in ("sft", "reward", "dpo") for n in by_kind.get(k, [])]
    assert by_kind.get("sft") and by_kind.get("reward") and by_kind.get("dpo"), by_kind
    run_pipeline(pipe, stages=wanted)
    root = run_dir(pipe)
    for name in by_kind.get("sft", []):
        m = read_manifest(root / name)["metrics"]
        assert m["heldout_loss_after"] < m["heldout_loss_before"], (name, m)
    for name in by_kind.get("reward", []):
        m = read_manifest(root / name)["metrics"]
        assert m["heldout_accuracy"] >= 0.85 and m["heldout_margin"] > 0, (name, m)
    for name in by_kind.get("dpo", []):
        m = read_manifest(root / name)["metrics"]
        assert m["heldout_reward_accuracy"] > 0.5, (name, m)
        assert m["heldout_reward_accuracy"] > m["init_heldout_accuracy"], (name, m)
