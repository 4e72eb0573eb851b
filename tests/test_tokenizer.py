"""The `tokenizer` stage: config rules, training on a curate-like corpus through Ray Data, the
transformers-loadable folder, lossless round trips (hypothesis), the chat template's assistant
mask, `from:` copies, and the held-out report figures."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from test_tokenize_support import EXTRA_TEXTS, corpus_texts, make_ctx, stage_output, write_corpus

from llmray.chat import CHAT_TEMPLATE, END_TURN, EOS, SPECIAL_TOKENS, encode_chat
from llmray.stages import tokenizer as stage
from llmray.tokenization.split import val_mask

# ------------------------------------------------------------------ config (no Ray)


def test_config_needs_data_or_from():
    with pytest.raises(ValidationError, match="set `data`"):
        stage.Config()
    assert stage.Config(data="corpus").input_refs() == {"data": ["corpus"]}
    assert stage.Config.model_validate({"from": "/some/tok"}).from_ == "/some/tok"


def test_config_refuses_training_fields_with_from():
    with pytest.raises(ValidationError, match="vocab_size"):
        stage.Config.model_validate({"from": "/some/tok", "vocab_size": 4096})
    # The resolved config (defaults filled, `from` by its YAML name) loads again.
    cfg = stage.Config.model_validate({"from": "/some/tok", "data": "corpus"})
    dumped = cfg.model_dump(mode="json")
    assert dumped["from"] == "/some/tok" and "from_" not in dumped
    assert stage.Config.model_validate(dumped) == cfg


def test_config_bounds():
    with pytest.raises(ValidationError):
        stage.Config(data="c", vocab_size=100)  # smaller than the byte alphabet + specials
    with pytest.raises(ValidationError):
        stage.Config(data="c", heldout_fraction=0.9)


# ------------------------------------------------------------------ trained through the stage


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer_corpus")
    records = write_corpus(root / "corpus", corpus_texts())
    return root, records, stage_output("corpus", "curate", root / "corpus", {"data": "data"})


@pytest.fixture(scope="module")
def trained(ray_local, corpus):
    root, _, cur = corpus
    cfg = stage.Config(data="corpus", vocab_size=1024, heldout_fraction=0.1)
    ctx = make_ctx(root, "tok", "tokenizer", {"data": cur})
    result = stage.run(cfg, ctx)
    return ctx.out_dir / result.outputs["tokenizer"], result


@pytest.fixture(scope="module")
def hf_tok(trained):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(trained[0]))


def test_autotokenizer_loads_the_stage_folder(trained, hf_tok):
    folder, result = trained
    assert result.outputs == {"tokenizer": "tokenizer"}
    assert (folder / "tokenizer.json").is_file()
    assert len(hf_tok) == result.metrics["vocab_size"] == 1024
    assert hf_tok.eos_token == EOS and hf_tok.chat_template == CHAT_TEMPLATE
    ids = [hf_tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS)))  # specials first, each a single id
    assert hf_tok("hello world")["input_ids"] == hf_tok.encode("hello world", add_special_tokens=False)


def test_report_on_heldout_docs(trained, corpus):
    _, records, _ = corpus
    m = trained[1].metrics
    held = [r for r, v in zip(records, val_mask([r["id"] for r in records], 0.1)) if v]
    assert m["heldout_docs"] == len([r for r in held if r["text"]]) > 0
    assert m["heldout_bytes"] == sum(len(r["text"].encode()) for r in held)
    assert 2.0 < m["bytes_per_token"] < 8.0  # English docstrings with a 1k vocabulary
    assert 0.1 < m["words_per_token"] < 1.0
    assert 0.0 <= m["fallback_byte_share"] < 0.05
    assert m["unk_tokens"] == 0
    assert m["train_seconds"] > 0
    assert m["sample_docs"] + m["heldout_docs"] <= len(records)


def test_heldout_docs_are_never_in_the_training_sample(ray_local, corpus):
    from llmray.tokenization.train import stream_sample

    root, records, _ = corpus
    train, held, figures = stream_sample(root / "corpus" / "data", sample_bytes=10**9, sample_docs=None,
                                         heldout_fraction=0.1, eval_docs=10**6, seed=0)
    mask = val_mask([r["id"] for r in records], 0.1)
    assert held == [r["text"] for r, v in zip(records, mask) if v and r["text"]]
    assert train == [r["text"] for r, v in zip(records, mask) if not v and r["text"]]
    assert figures["corpus_docs"] == len(records)
    # the caps cut the sample exactly
    small, _, f2 = stream_sample(root / "corpus" / "data", sample_bytes=10**9, sample_docs=25,
                                 heldout_fraction=0.1, eval_docs=1, seed=0)
    assert len(small) == f2["sample_docs"] == 25 and set(small) <= set(train)


def test_read_parquet_gives_ray_s_rows_in_order_without_its_v2_reader(ray_local, corpus):
    """llmray.rayutil.read_parquet: Ray Data's V1 Parquet reader (V2 starts footer-reader actors on every read,
    seconds on 2 cores: bench/bench_parquet_read.py), the same rows in the same order as Ray's default
    reader, and the process's DataContext left as it was."""
    import contextlib
    import io

    import ray.data

    from llmray.rayutil import read_parquet

    root, records, _ = corpus
    ctx = ray.data.DataContext.get_current()
    before = (ctx.use_datasource_v2, ctx.enable_progress_bars)
    ours = read_parquet(root / "corpus" / "data")
    assert (ctx.use_datasource_v2, ctx.enable_progress_bars) == before
    theirs = ray.data.read_parquet(str(root / "corpus" / "data"))
    plans = []
    for ds in (ours, theirs):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            ds.explain()
        plans.append(out.getvalue())
    assert "ListFiles" not in plans[0] and "ReadParquet" in plans[0]
    assert ("ListFiles" in plans[1]) == before[0]  # Ray's default here: V2, a listing operator first
    rows = []
    for ds in (ours, theirs):
        ds.context.execution_options.preserve_order = True
        rows.append([(r["id"], r["text"]) for r in ds.iter_rows()])
    assert rows[0] == rows[1] == [(r["id"], r["text"]) for r in records]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
def test_decode_encode_roundtrip_any_unicode(hf_tok, text):
    ids = hf_tok.encode(text, add_special_tokens=False)
    assert hf_tok.decode(ids) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.one_of(st.sampled_from(SPECIAL_TOKENS), st.text(max_size=20)), max_size=8))
def test_roundtrip_with_special_token_strings(hf_tok, parts):
    text = "".join(parts)
    assert hf_tok.decode(hf_tok.encode(text, add_special_tokens=False)) == text


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And in words, with ünïcödé?"},
    {"role": "assistant", "content": "Four — vier, 四."},
]


def test_chat_template_renders_a_conversation(hf_tok):
    text = hf_tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == ("<|begin|><|system|>\nYou are terse.<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n"
                    "<|assistant|>\n4.<|end|>\n<|user|>\nAnd in words, with ünïcödé?<|end|>\n"
                    "<|assistant|>\nFour — vier, 四.<|end|>\n")
    prompt = hf_tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n")


def test_encode_chat_marks_exactly_the_assistant_tokens(hf_tok):
    ids, mask = encode_chat(hf_tok, CONVERSATION)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    # The masked tokens form one run per assistant turn: its content and its end-of-turn token.
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert [hf_tok.decode(r) for r in runs] == [c + END_TURN for c in replies]
    # Everything else is prompt: role headers, system and user turns, the newline after each turn.
    prompt = hf_tok.decode([i for i, m in zip(ids, mask) if not m])
    assert "What is 2+2?" in prompt and "4." not in prompt and "<|assistant|>" in prompt
    assert ids == hf_tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]


def test_from_copies_a_tokenizer_folder_unchanged(ray_local, tiny_tokenizer_dir, corpus, tmp_path):
    cur = corpus[2]
    cfg = stage.Config.model_validate({"from": str(tiny_tokenizer_dir), "data": "corpus"})
    ctx = make_ctx(tmp_path, "copied", "tokenizer", {"data": cur})
    result = stage.run(cfg, ctx)
    out = ctx.out_dir / "tokenizer"
    names = sorted(p.name for p in Path(tiny_tokenizer_dir).iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    _, mismatch, errors = filecmp.cmpfiles(tiny_tokenizer_dir, out, names, shallow=False)
    assert not mismatch and not errors
    assert result.metrics["vocab_size"] == 1024 and result.metrics["heldout_docs"] > 0
    assert result.metrics["bytes_per_token"] > 1.0 and "train_seconds" not in result.metrics


def test_from_without_tokenizer_json_is_refused(ray_local, tmp_path):
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "vocab.txt").write_text("a\n")
    cfg = stage.Config.model_validate({"from": str(tmp_path / "slow")})
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        stage.run(cfg, make_ctx(tmp_path, "bad", "tokenizer", {}))


# ------------------------------------------------------------------ report figures (no Ray)


def test_compression_report_counts_fallback_bytes(tiny_tokenizer_dir):
    from tokenizers import Tokenizer

    from llmray.tokenization.quality import compression_report

    tok = Tokenizer.from_file(str(Path(tiny_tokenizer_dir) / "tokenizer.json"))
    ascii_report = compression_report(tok, ["Return a new list containing all items from the iterable."])
    assert ascii_report["fallback_byte_share"] == 0.0 and ascii_report["bytes_per_token"] > 2
    # CJK and emoji never occur in the stdlib docstrings: their bytes fall back to single-byte tokens.
    cjk = compression_report(tok, ["日本語のテキスト🎉"])
    assert cjk["fallback_byte_share"] > 0.9 and cjk["bytes_per_token"] <= 1.5
    # A literal special-token string in a document is read as text, not as one control token.
    lit = compression_report(tok, [EXTRA_TEXTS[1]])
    assert lit["heldout_tokens"] > len(tok.encode(EXTRA_TEXTS[1]).ids)
    empty = compression_report(tok, [])
    assert empty["bytes_per_token"] is None and empty["heldout_docs"] == 0
