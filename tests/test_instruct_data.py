"""The built-in post-training data sets: deterministic, split by module, no length leakage.
(The harm taxonomy's safety share of these sets: tests/test_harm_data.py.)"""

from __future__ import annotations

from llmray.data import harm
from llmray.data import instruct as I


def _modules(records, key="id"):
    by_name = {e["name"]: e["module"] for e in I.entries()}
    return {by_name[r[key].split(":", 1)[1]] for r in records}


def test_split_by_module_is_disjoint_and_deterministic():
    train, test = I.instruction_pairs("train"), I.instruction_pairs("test")
    assert len(test) >= 150 and len(train) >= 5 * len(test) // 2
    assert not _modules(train) & _modules(test)
    assert I.instruction_pairs("test") == test  # deterministic
    # ... across processes too: no default printed by its memory address ("<object object at 0x7f...>")
    assert not any(" at 0x" in m["content"] for r in train + test for m in r["messages"])
    assert {I.split_of(m) for m in _modules(test)} == {"test"}


def test_instruction_answer_is_the_real_docstring():
    by_name = {e["name"]: e for e in I.entries()}
    rec = I.instruction_pairs("train")[0]
    user, assistant = rec["messages"]
    name = rec["id"].split(":", 1)[1]
    assert user["role"] == "user" and f"`{name}`" in user["content"]
    assert assistant["role"] == "assistant" and by_name[name]["summary"] in assistant["content"]


def test_preference_pairs_have_matched_lengths():
    by_summary = {e["summary"]: e for e in I.entries()}
    for split in ("train", "test"):
        pairs = I.preference_pairs(split)
        stdlib = [p for p in pairs if p["rejection"] in I.STDLIB_REJECTIONS]
        # one stdlib pair per question, plus the safety share (SAFETY_SHARE of the set)
        assert len(stdlib) == len(I.instruction_pairs(split))
        assert abs((len(pairs) - len(stdlib)) / len(pairs) - I.SAFETY_SHARE) < 0.01
        assert all(p["chosen"] != p["rejected"] for p in pairs)
        assert 0.45 < I.length_baseline(pairs) < 0.55, split  # "longer wins" says nothing
        assert 0.45 < I.length_baseline(stdlib) < 0.55, split
        assert {p["rejection"] for p in pairs} == set(I.REJECTIONS)
        for p in stdlib:
            head, body = p["chosen"].split("`: ", 1)
            wrong_head, wrong_body = p["rejected"].split("`: ", 1)
            if p["rejection"] == "scramble":  # the right object, the right words, wrong order
                assert wrong_head == head and sorted(wrong_body.split()) == sorted(body.split())
            elif p["rejection"] == "typos":  # same length, some words misspelt
                assert wrong_head == head and len(wrong_body) == len(body)
                assert sorted(wrong_body) == sorted(body) and wrong_body.split() != body.split()
            elif p["rejection"] == "repeat":  # the right object, its opening words looped
                assert wrong_head == head and wrong_body.split()[0] == body.split()[0]
                assert len(set(wrong_body.split())) < len(wrong_body.split())
            else:  # the answer about another object from another module of the same split
                other = by_summary[wrong_body]
                assert wrong_head != head and I.split_of(other["module"]) == split
                assert other["module"] != by_summary[body]["module"]


def test_rl_prompts_are_user_turns_with_references():
    prompts = I.rl_prompts("test")
    stdlib = [p for p in prompts if "harmful" not in p]
    assert len(stdlib) == len(I.instruction_pairs("test"))
    assert abs((len(prompts) - len(stdlib)) / len(prompts) - I.SAFETY_SHARE) < 0.01
    assert all(p["prompt"][-1]["role"] == "user" and p["reference"] for p in prompts)


def test_harmful_and_benign_sets():
    for split in ("train", "test"):
        harmful, benign = I.harmful_requests(split), I.benign_requests(split)
        # every intent / look-alike of the split in every template of the split
        n_tmpl = len(harm.templates(split))
        assert len(harmful) == n_tmpl * len(harm.harmful_intents(split)) > 0
        assert len(benign) == n_tmpl * len(harm.lookalikes(split)) > 0
        assert all(I.is_refusal(r["messages"][1]["content"]) for r in harmful)
        assert not any(I.is_refusal(r["messages"][1]["content"]) for r in benign)
        assert all(r["harmful"] for r in harmful) and not any(r["harmful"] for r in benign)
    seen = {r["messages"][0]["content"] for r in I.harmful_requests("train")}
    held = {r["messages"][0]["content"] for r in I.harmful_requests("test")}
    assert not seen & held
    # benign answers are the look-alikes' written answers, not placeholders
    answers = {b["answer"] for b in harm.lookalikes("train")}
    assert all(r["messages"][1]["content"] in answers for r in I.benign_requests("train"))
    # safety_requests: each harmful phrasing (plain, jailbreak, injection) followed by its benign mirror
    safety = I.safety_requests("test")
    assert len(safety) == 2 * len([p for p in harm.phrasings("test") if p["harmful"]])
    assert [r["harmful"] for r in safety[:4]] == [True, False, True, False]


def test_load_builtin_names():
    from llmray.data import builtin

    assert set(builtin.BUILTINS) >= {"instruct", "qa", "prefs", "prompts", "harmful", "benign", "safety"}
    assert builtin.load_builtin("prompts", "test") == I.rl_prompts("test")
    assert builtin.load_builtin("qa", "test") == I.instruction_pairs("test")
    assert builtin.load_builtin("instruct", "test") == I.instruct_mix("test")
