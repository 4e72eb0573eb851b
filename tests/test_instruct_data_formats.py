"""User data formats (chat messages, Alpaca, preference pairs) and the quarantine of bad records."""

from __future__ import annotations

import json

import pytest

from llmray.data.formats import check_spec, load_data, write_quarantine


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_chat_alpaca_and_prompt_completion(tmp_path):
    f = _write(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}]},
        {"instruction": "Add.", "input": "1 + 2", "output": "3"},
        {"instruction": "Say yes.", "output": "yes", "id": "mine"},
        {"prompt": "2 + 2?", "completion": "4"},
        "{not json",
        [1, 2],
        {"messages": [{"role": "robot", "content": "beep"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"instruction": "no output"},
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
    ])
    got = load_data(str(f), "chat")
    assert [r["messages"][-1]["content"] for r in got.records] == ["Hello.", "3", "yes", "4"]
    assert got.records[1]["messages"][0]["content"] == "Add.\n\n1 + 2"
    assert got.records[2]["id"] == "mine" and got.records[0]["id"] == "sft.jsonl:1"
    lines = [q["line"] for q in got.quarantined]
    assert lines == [5, 6, 7, 8, 9, 10]
    reasons = " | ".join(q["reason"] for q in got.quarantined)
    for word in ("invalid JSON", "JSON object", "unknown role", "assistant turn", "not a chat record", "string"):
        assert word in reasons
    assert all(q["source"] == str(f) for q in got.quarantined)
    path = write_quarantine(got.quarantined, tmp_path / "stage", "records")
    assert path == tmp_path / "stage" / "quarantine" / "records.jsonl"
    assert len(path.read_text().splitlines()) == 6


def test_preference_strings_and_message_lists(tmp_path):
    conv = [{"role": "user", "content": "Q?"}]
    f = _write(tmp_path / "prefs.jsonl", [
        {"prompt": "Q?", "chosen": "good", "rejected": "bad"},
        # TRL / UltraFeedback: full conversations that repeat the prompt
        {"prompt": conv, "chosen": conv + [{"role": "assistant", "content": "good"}],
         "rejected": conv + [{"role": "assistant", "content": "bad"}]},
        # implicit prompt: chosen/rejected are whole conversations
        {"chosen": conv + [{"role": "assistant", "content": "good"}],
         "rejected": conv + [{"role": "assistant", "content": "bad"}]},
        {"prompt": "Q?", "chosen": "same", "rejected": "same"},
        {"prompt": "Q?", "chosen": "good"},
        {"prompt": "Q?", "chosen": [{"role": "user", "content": "x"}], "rejected": "bad"},
        {"prompt": [{"role": "assistant", "content": "A"}], "chosen": "good", "rejected": "bad"},
    ])
    got = load_data(str(f), "pref")
    assert len(got.records) == 3
    for r in got.records:
        assert r["prompt"] == conv and (r["chosen"], r["rejected"]) == ("good", "bad")
    assert [q["line"] for q in got.quarantined] == [4, 5, 6, 7]
    assert "identical" in got.quarantined[0]["reason"] and "missing" in got.quarantined[1]["reason"]


def test_glob_and_builtin_specs(tmp_path):
    _write(tmp_path / "a.jsonl", [{"prompt": "x", "completion": "y"}])
    _write(tmp_path / "b.jsonl", [{"prompt": "z"}])
    got = load_data(str(tmp_path / "*.jsonl"), "prompt")
    assert [r["prompt"][0]["content"] for r in got.records] == ["x", "z"]
    assert got.records[0]["reference"] == "y"
    assert len(load_data("builtin:prefs", "pref", "test").records) > 100
    with pytest.raises(FileNotFoundError):
        load_data(str(tmp_path / "missing.jsonl"), "chat")
    with pytest.raises(ValueError, match="needs pref data"):
        check_spec("builtin:instruct", "pref")
    with pytest.raises(ValueError, match="unknown built-in"):
        check_spec("builtin:nope")
