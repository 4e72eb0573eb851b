"""`llmray.chat` on the stock chat templates of the common model families (no Ray, no downloads).

Each family gets a byte-level BPE tokenizer trained on stdlib docstrings with the family's special
tokens, and its chat template twice: as the vendor ships it (no `{% generation %}` markers, so
`encode_chat` renders the conversation prefix by prefix) and the same template with markers around
what the assistant writes (transformers' own assistant mask). The two masks must agree token by
token, and the masked tokens must decode to exactly the assistant contents plus end-of-turn.
"""

from __future__ import annotations

import functools
import json
import re

import pytest

from llmray import chat

# ---------------------------------------------------------------- stock templates (vendor text)

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")
CHATML_MARKED = ("{% for message in messages %}{% if message['role'] == 'assistant' %}"
                 "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
                 "{% endgeneration %}{{ '\n' }}{% else %}{{'<|im_start|>' + message['role'] + '\n' + "
                 "message['content'] + '<|im_end|>' + '\n'}}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Qwen2-Instruct: ChatML with a default system prompt when the conversation has none.
QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
         "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN2_MARKED = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
                "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
                "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                "{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Qwen2.5-Instruct, verbatim (tools branch included): default system prompt "You are Qwen, ...".
QWEN25 = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
_QWEN25_TURN = ("        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
                "'\\n' }}\n")
QWEN25_MARKED = QWEN25.replace(
    _QWEN25_TURN,
    "        {%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}{% generation %}"
    "{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}{%- else %}\n"
    + _QWEN25_TURN + "        {%- endif %}\n")

# Llama-3-Instruct headers.
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA3_MARKED = ("{% for message in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
                 "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
                 "{% if message['role'] == 'assistant' %}{% generation %}"
                 "{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
                 "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
                 "{% endif %}")

# Mistral-7B-Instruct-v0.1 (eos then a space after every reply; no generation prompt).
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
           "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
           "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
           "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
           "{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant "
           "roles are supported!') }}{% endif %}{% endfor %}")
MISTRAL_MARKED = MISTRAL.replace("{{ message['content'] + eos_token + ' ' }}",
                                 "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
                                 "{{ ' ' }}")

# Gemma-7b-it (no system role; the assistant is `model`).
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
         "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
         "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
         "user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}"
         "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
         "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
GEMMA_MARKED = GEMMA.replace(
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}",
    "{{ '<start_of_turn>' + role + '\n' }}{% if role == 'model' %}{% generation %}"
    "{{ message['content'] | trim + '<end_of_turn>' }}{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ message['content'] | trim + '<end_of_turn>\n' }}{% endif %}")

# name: (stock, marked, special tokens, end-of-turn token, system turns supported)
FAMILIES = {
    "chatml": (CHATML, CHATML_MARKED, dict(eos_token="<|endoftext|>", extra=["<|im_start|>", "<|im_end|>"]),
               "<|im_end|>", True),
    "qwen2": (QWEN2, QWEN2_MARKED, dict(eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        extra=["<|im_start|>"]), "<|im_end|>", True),
    "qwen2.5": (QWEN25, QWEN25_MARKED, dict(eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                            extra=["<|im_start|>"]), "<|im_end|>", True),
    "llama3": (LLAMA3, LLAMA3_MARKED, dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                           extra=["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
               "<|eot_id|>", True),
    "mistral": (MISTRAL, MISTRAL_MARKED, dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"), "</s>",
                False),
    "gemma": (GEMMA, GEMMA_MARKED, dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                        unk_token="<unk>", extra=["<start_of_turn>", "<end_of_turn>"]),
              "<end_of_turn>", False),
}

TURNS = [
    {"role": "user", "content": "What does json.dumps return?"},
    {"role": "assistant", "content": "A string holding the JSON text of the object."},
    {"role": "user", "content": "And with indent=2?\nShow me."},
    {"role": "assistant", "content": "The same text, pretty-printed:\nnested values are indented by 2 spaces."},
]
SYSTEM = {"role": "system", "content": "You answer questions about the Python standard library."}


@functools.lru_cache(maxsize=1)
def _bpe_json() -> str:
    from tokenizers import pre_tokenizers, trainers

    from llmray.testing import stdlib_texts
    from llmray.tok import build_bpe_model

    tok = build_bpe_model()
    trainer = trainers.BpeTrainer(vocab_size=800, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(stdlib_texts(300), trainer=trainer)
    return tok.to_str()


def make_tokenizer(template: str, bos_token=None, eos_token=None, pad_token=None, unk_token=None, extra=()):
    """A fast HF tokenizer with one family's special tokens (no pad unless given) and chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    specials = dict(bos_token=bos_token, eos_token=eos_token, pad_token=pad_token, unk_token=unk_token)
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_bpe_json()),
                                 **{k: v for k, v in specials.items() if v},
                                 additional_special_tokens=list(extra), clean_up_tokenization_spaces=False)
    hf.chat_template = template
    return hf


@functools.lru_cache(maxsize=None)
def family(name: str, marked: bool):
    stock, mark, specials, _, _ = FAMILIES[name]
    return make_tokenizer(mark if marked else stock, **specials)


def conversations(name: str) -> list[list[dict]]:
    out = [TURNS, TURNS[:2]]
    if FAMILIES[name][4]:
        out += [[SYSTEM, *TURNS]]
    return out


def runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """The masked tokens, one list per contiguous run."""
    out, prev = [], 0
    for tid, m in zip(ids, mask):
        if m and not prev:
            out.append([])
        if m:
            out[-1].append(tid)
        prev = m
    return out


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_stock_template_mask_equals_the_marker_mask(name):
    stock, marked = family(name, False), family(name, True)
    assert not chat.has_generation_markers(stock) and chat.has_generation_markers(marked)
    eot = FAMILIES[name][3]
    for convo in conversations(name):
        ids, mask = chat.encode_chat(stock, convo)
        ref_ids, ref_mask = chat.encode_chat(marked, convo)
        assert ids == ref_ids == stock.apply_chat_template(convo, tokenize=True, return_dict=False)
        assert mask == ref_mask, (name, [(stock.decode([t]), m, r) for t, m, r in zip(ids, mask, ref_mask)])
        replies = [m["content"].strip() + eot for m in convo if m["role"] == "assistant"]
        assert [stock.decode(r, skip_special_tokens=False) for r in runs(ids, mask)] == replies


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_generation_prompt_ids_and_mask_with_a_pending_user_turn(name):
    stock, marked = family(name, False), family(name, True)
    convo = TURNS[:3]
    expected = stock.apply_chat_template(convo, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert chat.prompt_ids(stock, convo) == list(expected)
    ids, mask = chat.encode_chat(stock, convo, add_generation_prompt=True)
    assert (ids, mask) == tuple(chat.encode_chat(marked, convo, add_generation_prompt=True))
    assert ids == list(expected) and sum(mask) > 0 and mask[-1] == 0  # the open turn's header is not masked


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_stop_ids_include_the_family_end_of_turn_and_eos(name):
    tok = family(name, False)
    eot = tok.convert_tokens_to_ids(FAMILIES[name][3])
    stops = chat.stop_token_ids(tok)
    assert stops[0] == eot and tok.eos_token_id in stops
    assert chat.end_of_turn_ids(tok) == [eot]


def test_stop_ids_add_the_generation_config_eos(tmp_path):
    tok = family("llama3", False)
    extra = tok.convert_tokens_to_ids("<|end_header_id|>")  # any id, to see it come from the file
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.eos_token_id, extra]}))
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert chat.stop_token_ids(tok, tmp_path) == [eot, tok.eos_token_id, extra]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert chat.stop_token_ids(tok, tmp_path) == [eot, tok.eos_token_id, 7]
    assert chat.stop_token_ids(tok, tmp_path / "missing") == [eot, tok.eos_token_id]


def test_llmray_own_tokenizer_keeps_its_stop_ids_and_mask(tmp_path):
    from llmray.testing import tiny_tokenizer

    tok = tiny_tokenizer(tmp_path / "tok", vocab_size=600)
    end, eos = tok.convert_tokens_to_ids(chat.END_TURN), tok.convert_tokens_to_ids(chat.EOS)
    assert chat.stop_token_ids(tok) == [end, eos]
    marked_ids, marked_mask = chat.encode_chat(tok, [SYSTEM, *TURNS])
    tok.chat_template = re.sub(r"{%-?\s*(end)?generation\s*-?%}", "", chat.CHAT_TEMPLATE)
    assert not chat.has_generation_markers(tok)
    assert chat.encode_chat(tok, [SYSTEM, *TURNS]) == (marked_ids, marked_mask)


def test_pad_fallback_never_adds_tokens():
    with_pad = family("gemma", False)
    assert chat.pad_token_id(with_pad) == with_pad.pad_token_id
    no_pad = family("llama3", False)
    size = len(no_pad)
    assert no_pad.pad_token_id is None and chat.pad_token_id(no_pad) == no_pad.eos_token_id
    assert len(no_pad) == size and no_pad.pad_token_id is None
    only_unk = make_tokenizer(CHATML, unk_token="<unk>")
    assert chat.pad_token_id(only_unk) == only_unk.unk_token_id
    bare = make_tokenizer(CHATML)
    assert chat.pad_token_id(bare) == 0


# Qwen3-style: earlier assistant turns lose their reasoning once a later user turn exists.
DROPS_REASONING = (
    "{% for message in messages %}{% if message['role'] == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\n' + message['content'].split('</think>')[-1] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# The generation prompt opens a think block that rendered assistant turns do not have.
THINKING_PROMPT = CHATML.replace("'<|im_start|>assistant\n' }}", "'<|im_start|>assistant\n<think>\n' }}")


@pytest.mark.parametrize("template", [DROPS_REASONING, THINKING_PROMPT], ids=["drops-reasoning", "think-prompt"])
def test_a_template_that_is_not_prefix_stable_is_refused(template):
    tok = make_tokenizer(template, eos_token="<|im_end|>", extra=["<|im_start|>"])
    convo = [TURNS[0], {"role": "assistant", "content": "<think>json</think>A string."}, *TURNS[2:]]
    with pytest.raises(ValueError, match="not prefix-stable"):
        chat.encode_chat(tok, convo)


def test_no_chat_template_is_a_clear_error():
    tok = make_tokenizer(CHATML, eos_token="<|im_end|>")
    tok.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        chat.encode_chat(tok, TURNS)


def test_load_tokenizer_takes_a_stock_template_without_pad(tmp_path):
    from llmray.posttrain import load_tokenizer

    family("qwen2.5", False).save_pretrained(str(tmp_path / "qwen"))
    no_pad = make_tokenizer(QWEN25, eos_token="<|im_end|>", extra=["<|im_start|>"])
    no_pad.save_pretrained(str(tmp_path / "nopad"))
    tok = load_tokenizer(tmp_path / "nopad")
    assert tok.pad_token_id is None and sum(chat.encode_chat(tok, TURNS)[1]) > 0
    assert load_tokenizer(tmp_path / "qwen").chat_template == QWEN25
    bare = make_tokenizer(CHATML, eos_token="<|im_end|>")
    bare.chat_template = None
    bare.save_pretrained(str(tmp_path / "bare"))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "bare")) + ".*no chat template"):
        load_tokenizer(tmp_path / "bare")


def test_rl_stop_default_comes_from_the_tokenizer_and_template(tmp_path):
    from llmray.rlhf.config import Generation
    from llmray.rlhf.data import stop_ids

    assert Generation().stop is None
    with pytest.raises(ValueError, match="leave `stop` unset"):
        Generation(stop=[])
    tok = family("qwen2.5", False)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.pad_token_id]}))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_ids(tok, None, tmp_path) == [im_end, tok.pad_token_id]
    assert stop_ids(tok, ["<|endoftext|>"]) == [tok.pad_token_id]  # set explicitly: exactly these
