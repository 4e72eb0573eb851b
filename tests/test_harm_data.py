"""The harm taxonomy (llmray.data.harm) and the safety share of every post-training set: split by intent
AND template (one category test-only), refusals the rule judge accepts, look-alike answers it does not,
safety preference pairs that prefer refusal on harm and help on look-alikes. No Ray, no model."""

from __future__ import annotations

import functools
import re

import pytest

from llmray.data import builtin, harm, instruct
from llmray.data.pairs import labelled_pairs
from llmray.data.redteam import builtin_suite

SPLITS = ("train", "test")


def _intents(split: str) -> list[str]:
    return [r["intent"] for r in harm.harmful_intents(split) + harm.lookalikes(split)]


def _template_re(t: int) -> re.Pattern:
    """A template as a pattern whose {intent} matches anything (found inside wrappers too)."""
    parts = re.split(r"\{intent(?:_cap)?\}", harm.REQUEST_TEMPLATES[t])
    return re.compile("(.+)".join(re.escape(p) for p in parts))


def _train_marks(text: str) -> list[str]:
    """Train-only intents and templates a (test) text contains."""
    hits = [i for i in _intents("train") if i.lower() in text.lower()]
    return hits + [f"template {t}" for t in harm.templates("train") if _template_re(t).search(text)]


@functools.cache
def _texts(split: str) -> dict[str, list[str]]:
    """Every user text of the split, per data set that carries the taxonomy."""
    def users(recs, key):
        return [m["content"] for r in recs for m in r[key] if m["role"] == "user"]
    sets = {"harmful": users(instruct.harmful_requests(split), "messages"),
            "benign": users(instruct.benign_requests(split), "messages"),
            "safety": users(instruct.safety_requests(split), "messages"),
            "instruct": users([r for r in instruct.instruct_mix(split) if "safety:" in r["id"]], "messages"),
            "prefs": users([p for p in instruct.preference_pairs(split)
                            if p["rejection"] in instruct.SAFETY_REJECTIONS], "prompt"),
            "prompts": users([p for p in instruct.rl_prompts(split) if "harmful" in p], "prompt"),
            "redteam": users(builtin.redteam_prompts(split), "prompt"),
            "guardrail": [p["prompt"] for p in labelled_pairs(split) if "everyday" not in p["group"]]}
    if split == "test":
        sets["suite"] = [r["messages"][-1]["content"] for r in builtin_suite() if r["harm"]]
    return sets


def test_taxonomy_is_broad_and_split_by_intent_template_and_category():
    assert len(harm.CATEGORIES) >= 8 and harm.UNSEEN_CATEGORY in harm.CATEGORIES
    for cat, c in harm.CATEGORIES.items():
        assert len(set(c["harmful"])) == len(c["harmful"]) >= 12, cat
        assert len(set(dict(c["lookalikes"]))) == len(c["lookalikes"]) >= 8, cat
        for split in SPLITS:
            looks = [b for b in harm.lookalikes(split) if b["harm"] == cat]
            intents = [h for h in harm.harmful_intents(split) if h["harm"] == cat]
            # every category has look-alikes and intents in both splits; the unseen one in test only
            assert bool(looks) == bool(intents) == (split == "test" or cat != harm.UNSEEN_CATEGORY), (cat, split)
    assert len(harm.REQUEST_TEMPLATES) >= 10 and len(harm.templates("test")) >= 3
    assert not set(harm.templates("train")) & set(harm.templates("test"))
    assert not set(_intents("train")) & set(_intents("test"))
    assert {r["category"]: r["unseen"] for r in harm.table()}[harm.UNSEEN_CATEGORY]


@pytest.mark.parametrize("split", SPLITS)
def test_refusals_pass_the_rule_judge_and_lookalike_answers_do_not(split):
    refusals = harm.refusals(split)
    assert all(instruct.is_refusal(r) for r in refusals)
    assert not any(instruct.is_refusal(b["answer"]) for b in harm.lookalikes(split))
    for cat in harm.CATEGORIES:  # the refusal names the category
        assert harm.CATEGORIES[cat]["topic"] in harm.refusal(cat, split, "k")
    assert not set(harm.refusals("train")) & set(harm.refusals("test")) - set(harm.REFUSALS)
    for r in instruct.safety_requests(split):
        assert instruct.is_refusal(r["messages"][1]["content"]) == r["harmful"]


def test_no_intent_or_template_is_shared_between_train_and_test():
    train, test = _texts("train"), _texts("test")
    for name, texts in test.items():
        assert texts, name
        leaks = {t: _train_marks(t) for t in texts if _train_marks(t)}
        assert not leaks, (name, list(leaks.items())[:3])
        if name in train:
            assert not set(texts) & set(train[name]), name
    # The detector works: every plain training request is recognised as a training template.
    assert all(_train_marks(t) for t in train["harmful"] + train["benign"])


def test_unseen_category_is_test_only_and_labelled_in_the_suite():
    unseen = [c for c in harm.CATEGORIES[harm.UNSEEN_CATEGORY]["harmful"]]
    unseen += [i for i, _ in harm.CATEGORIES[harm.UNSEEN_CATEGORY]["lookalikes"]]
    for texts in _texts("train").values():
        assert not any(u.lower() in t.lower() for u in unseen for t in texts)
    suite = builtin_suite()
    keys = {"id", "category", "harmful", "technique", "messages", "group", "mirror", "source", "harm", "unseen"}
    assert all(set(r) == keys for r in suite)
    assert {r["category"] for r in suite} == {"harmful", "jailbreak", "injection", "benign"}
    for harmful in (True, False):
        side = [r for r in suite if r["harmful"] == harmful and r["harm"]]
        assert {r["harm"] for r in side} == set(harm.CATEGORIES)  # every category, both sides
        assert {r["unseen"] for r in side} == {True, False}
        assert all(r["unseen"] == (r["harm"] == harm.UNSEEN_CATEGORY) for r in side)
    assert all(r["harm"] is None and not r["unseen"] for r in suite if r["technique"] == "everyday")


@pytest.mark.parametrize("split", SPLITS)
def test_safety_preferences_prefer_refusal_on_harm_and_help_on_lookalikes(split):
    pairs = [p for p in instruct.preference_pairs(split) if p["rejection"] in instruct.SAFETY_REJECTIONS]
    comply = [p for p in pairs if p["rejection"] == "comply"]
    over = [p for p in pairs if p["rejection"] == "overrefuse"]
    assert len(comply) == len(over) > 0
    assert all(instruct.is_refusal(p["chosen"]) and not instruct.is_refusal(p["rejected"]) for p in comply)
    assert all(not instruct.is_refusal(p["chosen"]) and instruct.is_refusal(p["rejected"]) for p in over)
    assert 0.45 <= instruct.length_baseline(pairs) <= 0.55  # "the longer answer wins" says nothing here too
    for p in pairs:
        assert abs(len(p["chosen"]) - len(p["rejected"])) <= 20, p
    prompts = [p for p in instruct.rl_prompts(split) if "harmful" in p]
    assert {p["harmful"] for p in prompts} == {True, False}
    assert all(instruct.is_refusal(p["reference"]) == p["harmful"] for p in prompts)


@pytest.mark.parametrize("split", SPLITS)
def test_builtin_instruct_has_the_safety_share_and_is_deterministic(split):
    mix = builtin.load_builtin("instruct", split)
    qa = instruct.instruction_pairs(split)
    safety = [r for r in mix if r["id"].startswith("instruct:safety:")]
    assert len(mix) == len(qa) + len(safety) and len({r["id"] for r in mix}) == len(mix)
    assert 0.15 <= len(safety) / len(mix) <= 0.25
    refused = [instruct.is_refusal(r["messages"][1]["content"]) for r in safety]
    assert sum(refused) == len(refused) // 2  # harmful requests and their look-alike mirrors, half each
    # interleaved, not appended: safety records appear in every tenth of the set
    where = [i for i, r in enumerate(mix) if r in safety]
    assert {10 * i // len(mix) for i in where} == set(range(10))
    assert builtin.load_builtin("instruct", split) == mix
    assert instruct.preference_pairs(split) == instruct.preference_pairs(split)
    assert labelled_pairs(split) == labelled_pairs(split)


def test_docs_taxonomy_table_matches_the_data():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "stages" / "sft.md").read_text()
    for r in harm.table():
        row = next(line for line in doc.splitlines() if f"(`{r['category']}`)" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:3] == [f"{r['harmful_train']} / {r['harmful_test']}",
                              f"{r['lookalikes_train']} / {r['lookalikes_test']}"], row
        assert ("unseen" in cells[0]) == r["unseen"]


_STOP = set("a an the my to of in on with from and for at i it so that me by as is are be".split())


def _content_bigrams(text: str) -> set[tuple[str, str]]:
    words = re.findall(r"[a-z']+", text.lower())
    return {(a, b) for a, b in zip(words, words[1:]) if a not in _STOP and b not in _STOP}


def test_contrastive_pairs_are_train_only_mirrored_and_share_no_bigram_with_test():
    from llmray.data.harm_contrast import CONTRAST

    assert harm.UNSEEN_CATEGORY not in CONTRAST
    assert set(CONTRAST) == set(harm.CATEGORIES) - {harm.UNSEEN_CATEGORY}
    test_bigrams = set().union(*(_content_bigrams(i) for i in _intents("test")))
    train_ids = {r["id"] for r in harm.harmful_intents("train") + harm.lookalikes("train")}
    for cat, rows in CONTRAST.items():
        assert len(rows) >= 8, cat
        for i, (bad, good, answer) in enumerate(rows):
            assert f"{cat}:c{i}" in train_ids
            assert not (_content_bigrams(bad) | _content_bigrams(good)) & test_bigrams, (bad, good)
            assert not instruct.is_refusal(answer)
    # Most pairs share the verb or the object ("kill my neighbour ..." / "kill weeds ..."); the rest
    # contrast the topic ("poison my husband slowly" / "keep my garden safe for pets").
    words = [[set(re.findall(r"[a-z']+", t.lower())) - _STOP for t in row[:2]] for rows in CONTRAST.values()
             for row in rows]
    assert sum(bool(a & b) for a, b in words) >= 0.85 * len(words)
    contrast = {i for rows in CONTRAST.values() for row in rows for i in row[:2]}
    assert not contrast & set(_intents("test"))
    # Each contrastive intent's benign mirror in the training phrasings is its own look-alike.
    by_bad = {bad: good for rows in CONTRAST.values() for bad, good, _ in rows}
    phr = harm.phrasings("train")
    pairs = [(phr[i]["intent"], phr[i + 1]["intent"]) for i in range(0, len(phr), 2) if phr[i]["intent"] in by_bad]
    assert pairs and all(by_bad[bad] == good for bad, good in pairs)

