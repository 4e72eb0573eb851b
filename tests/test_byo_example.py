"""examples/bring-your-own.yaml as a user runs it: a tiny random Qwen2 folder (stock ChatML template, no
pad token), SFT on ShareGPT chats in Parquet read from an S3-compatible server (moto, 127.0.0.1),
a reward model and DPO on a `datasets` save_to_disk folder, GRPO with vLLM rollouts scored by the
user's Python reward function plus the reward model, then served next to its `from:` model and
queried with the openai client. Then an edit of the preference folder reruns exactly its readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import llmray

from llmray.testing import free_port, write_byo_assets

pytestmark = pytest.mark.integration  # runs `llmray` in a subprocess, which starts its own Ray

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = "examples/bring-your-own.yaml"


def _overrides(tmp_path: Path, model: Path, chats, prefs: Path, base_name: str, port: int) -> list[str]:
    """The example, pointed at these inputs, with CI-sized training and a served base model."""
    return [
        f"workdir={tmp_path / 'runs'}", f"stages.chat.from={model}", f"stages.rm.from={model}",
        f"stages.chat.data={chats}", f"stages.rm.data={prefs}", f"stages.prefs.data={prefs}",
        "stages.chat.train.steps=10", "stages.rm.train.steps=10", "stages.prefs.train.steps=6",
        "stages.rl.iterations=2",
        f"serve.models=[rl, {{name: {base_name}, from: {model}}}]", "serve.engine=hf", f"serve.port={port}",
    ]


def _manifest(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


@pytest.mark.slow  # ~3.5 min on 2 cores; its parts are unit-tested in test_data_readers, test_chat_templates,
@pytest.mark.vllm  # test_model_sources and test_rewards, which CI runs
def test_bring_your_own_model_data_and_reward_end_to_end(tmp_path, s3_endpoint):
    import openai

    from llmray.serve.launch import healthy

    assets = write_byo_assets(tmp_path / "byo", n_chats=128, n_pairs=128)  # few held-out rows
    endpoint, fs = s3_endpoint
    fs.create_dir("byo-data")
    with fs.open_output_stream("byo-data/chats/part-0.parquet") as out:
        out.write((assets / "chats.parquet").read_bytes())
    port = free_port()
    model = assets / "qwen-tiny"
    overrides = _overrides(tmp_path, model, f"s3://byo-data/chats/?endpoint_override={endpoint}&scheme=http",
                           assets / "prefs", "qwen-base", port)
    proc = llmray("run", EXAMPLE, *overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "byo"
    chat, rm, dpo, rl = (_manifest(run, s) for s in ("chat", "rm", "prefs", "rl"))
    assert all(m["status"] == "completed" for m in (chat, rm, dpo, rl))
    # Every record of each user file was read (held-out share included), none quarantined.
    assert chat["metrics"]["train_records"] + chat["metrics"]["val_records"] == 128
    assert rm["metrics"]["train_records"] + rm["metrics"]["val_records"] == 128
    assert chat["metrics"]["quarantined"] == rm["metrics"]["quarantined"] == dpo["metrics"]["quarantined"] == 0
    assert chat["metrics"]["heldout_loss_after"] < chat["metrics"]["heldout_loss_before"]
    # GRPO: vLLM rollouts, the user's function called in the reward workers without an error, and both
    # reward terms reported; its inputs are the dpo stage and the reward model.
    assert rl["metrics"]["engine"] == "vllm"
    assert rl["metrics"]["reward_function_calls"] > 0 and rl["metrics"]["reward_errors"] == 0
    assert set(rl["inputs"]) == {"prefs", "rm"}
    curve = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward_term/examples.byo_rewards:answer_with_format" in r for r in curve)
    # The saved models load as the user's architecture, with the user's template untouched.
    saved = json.loads((run / "rl" / "model" / "config.json").read_text())
    assert saved["architectures"] == ["Qwen2ForCausalLM"]
    tok_cfg = json.loads((run / "rl" / "model" / "tokenizer_config.json").read_text())
    assert "{% generation %}" not in (tok_cfg.get("chat_template") or "")

    up = llmray("serve", EXAMPLE, *overrides, "--detach", timeout=400)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        assert sorted(m.id for m in client.models.list()) == ["byo/qwen-base", "byo/rl"]
        for name in ("byo/rl", "byo/qwen-base"):
            r = client.chat.completions.create(model=name, max_tokens=6,
                                               messages=[{"role": "user", "content": "What is 2 + 3?"}])
            assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    finally:
        stop = llmray("serve", EXAMPLE, *overrides, "--stop", timeout=120)
    assert stop.returncode == 0, stop.stderr[-2000:]
    assert not healthy(url)

    # Edit the preference folder in place (append a pair): exactly its readers and what follows rerun.
    before = {s: _manifest(run, s)["fingerprint"] for s in ("chat", "rm", "prefs", "rl")}
    plan = llmray("plan", EXAMPLE, *overrides, timeout=120)
    assert plan.returncode == 0 and plan.stdout.count(" cached ") == 4, plan.stdout
    import pyarrow as pa

    arrow = next((assets / "prefs").glob("*.arrow"))
    with pa.ipc.open_stream(pa.py_buffer(arrow.read_bytes())) as reader:  # in memory: the file is rewritten
        table = reader.read_all()
    extra = table.slice(0, 1).to_pylist()[0] | {"id": "user-edit", "chosen": "An edited reply."}
    table = pa.concat_tables([table, pa.Table.from_pylist([extra], schema=table.schema)])
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    plan = llmray("plan", EXAMPLE, *overrides, timeout=120)
    assert plan.returncode == 0, plan.stderr
    states = {line.split()[1]: line.split()[3] for line in plan.stdout.splitlines() if line[:4].strip().endswith(".")}
    assert states == {"chat": "cached", "rm": "stale", "prefs": "stale", "rl": "stale"}, plan.stdout
    assert before == {s: _manifest(run, s)["fingerprint"] for s in before}


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_the_same_chain_on_other_architectures(tmp_path, family):
    """Llama (Llama-3 header template, no pad token) and Gemma (`<start_of_turn>`, outside the Llama
    family): SFT -> reward -> DPO -> GRPO with vLLM rollouts and weight sync -> served next to the
    checkpoint it started from, with the stock template's assistant-only masks."""
    import openai

    from llmray.testing import tiny_family_dir

    assets = write_byo_assets(tmp_path / "byo", n_chats=128, n_pairs=128)
    model = tiny_family_dir(tmp_path / family, family)
    port = free_port()
    overrides = _overrides(tmp_path, model, assets / "chats.parquet", assets / "prefs", "base", port)
    proc = llmray("run", EXAMPLE, *overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "byo"
    rl = _manifest(run, "rl")
    assert rl["metrics"]["engine"] == "vllm" and rl["metrics"]["reward_errors"] == 0
    arch = json.loads((model / "config.json").read_text())["architectures"]
    assert json.loads((run / "rl" / "model" / "config.json").read_text())["architectures"] == arch
    up = llmray("serve", EXAMPLE, *overrides, "--detach", timeout=400)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        for name in ("byo/rl", "byo/base"):
            r = client.chat.completions.create(model=name, max_tokens=6,
                                               messages=[{"role": "user", "content": "What is 2 + 3?"}])
            assert r.usage.completion_tokens >= 1
    finally:
        stop = llmray("serve", EXAMPLE, *overrides, "--stop", timeout=120)
    assert stop.returncode == 0, stop.stderr[-2000:]
