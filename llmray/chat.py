"""How a conversation becomes token ids, an assistant loss mask, stop ids and a pad id: one home.

Every stage, RL role, evaluator and server encodes chats through this module, with the chat
template of the model folder it works on (llmray's own `CHAT_TEMPLATE` below, or the stock
template of a user's model: ChatML/Qwen, Llama-3 headers, Mistral `[INST]`, Gemma, ...).

Data flow of `encode_chat(tokenizer, messages)`:
  template with `{% generation %}` markers --apply_chat_template(return_assistant_tokens_mask)--> ids, mask
  stock template (no markers) --render messages[:i] + generation prompt, and messages[:i+1], for each
  assistant turn i--> character span of the turn inside the full rendering (the text after the
  generation prompt up to the end of the turn: its content and end-of-turn token, minus the
  whitespace the template adds around it) --offset mapping of the full rendering, tokenized as
  apply_chat_template tokenizes (add_special_tokens=False)--> ids, mask
The two paths give the same mask on a template that exists in both forms (tests/test_chat_templates.py).
A template whose later renderings rewrite earlier text (e.g. dropping past reasoning) has no
well-defined prefix: it is refused with a ValueError rather than masked wrongly.

`stop_token_ids` = the template's end-of-turn token (the first special token after the assistant's
content in a one-turn rendering) + the tokenizer's eos + the folder's generation_config eos.
`pad_token_id` never adds tokens or resizes embeddings: it falls back to an existing id.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

BOS = "<|begin|>"
EOS = "<|endoftext|>"  # document separator in pretraining; also a stop token
PAD = "<|pad|>"
END_TURN = "<|end|>"  # closes every chat turn; a stop token when generating
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, END_TURN, *ROLE_TOKENS]

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown chat role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|assistant|>\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

_GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")
_PROBE = "llmray probe reply"  # assistant content used to find a template's end-of-turn token


def has_generation_markers(tokenizer) -> bool:
    """Whether the tokenizer's chat template wraps assistant text in `{% generation %}` blocks."""
    return bool(_GENERATION_MARKER.search(_template(tokenizer)))


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text, through the tokenizer's chat template."""
    _template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a conversation, exactly as `apply_chat_template(tokenize=True)` gives them (the
    template writes BOS etc. itself, so no special tokens are added)."""
    text = render_chat(tokenizer, messages, add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation plus the generation prompt: what a model continues from."""
    return chat_ids(tokenizer, messages, add_generation_prompt=True)


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and the assistant mask (1 = a token the assistant wrote, incl. its end-of-turn).

    Works with any HF chat template (see the module docstring); needs a fast tokenizer.
    """
    if has_generation_markers(tokenizer):
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt,
        )
        return list(out["input_ids"]), list(out["assistant_masks"])
    text, spans = assistant_spans(tokenizer, messages, add_generation_prompt)
    enc = _encode_offsets(tokenizer, text)
    mask = [int(b > a and any(a < e and b > s for s, e in spans)) for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def assistant_spans(tokenizer, messages: list[dict],
                    add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the [start, end) character span of each assistant turn in it,
    found by rendering the conversation prefix by prefix (templates without generation markers)."""
    full = render_chat(tokenizer, messages, add_generation_prompt)
    spans = []
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            continue
        if i == 0:
            raise ValueError("messages[0] is an assistant turn: a template without {% generation %} markers "
                             "needs an earlier message to find where the assistant's text starts")
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        if not full.startswith(before):
            raise ValueError(f"the chat template is not prefix-stable: the conversation up to message {i} "
                             "with the generation prompt is not a prefix of the whole conversation (the "
                             "template rewrites earlier turns or its generation prompt differs from how it "
                             "renders an assistant turn); add {% generation %} markers to it")
        upto = render_chat(tokenizer, messages[: i + 1])
        end = _common_prefix(upto, full)
        turn = full[len(before):end]
        start = len(before) + len(turn) - len(turn.lstrip())
        stop = len(before) + len(turn.rstrip())
        content = msg.get("content")
        if isinstance(content, str) and content.strip() and content.strip() not in full[start:stop]:
            raise ValueError(f"the chat template is not prefix-stable: assistant message {i}'s content does "
                             "not appear unchanged in the rendering of the whole conversation (the template "
                             "rewrites earlier turns, e.g. drops past reasoning); add {% generation %} "
                             "markers to it")
        spans.append((start, stop))
    return full, spans


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token the template writes right after an assistant's content (e.g. <|im_end|>,
    <|eot_id|>, <end_of_turn>, </s>, llmray's <|end|>), as a list of 0 or 1 ids."""
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = render_chat(tokenizer, convo)
    except Exception:  # noqa: BLE001 - a template that cannot render this probe has no detectable end-of-turn
        return []
    at = text.find(_PROBE)
    if at < 0:
        return []
    after = at + len(_PROBE)
    special = _special_ids(tokenizer)
    enc = _encode_offsets(tokenizer, text)
    for tid, (a, _b) in zip(enc["input_ids"], enc["offset_mapping"]):
        if a >= after and tid in special:
            return [tid]
    return []


def stop_token_ids(tokenizer, model_dir: str | Path | None = None) -> list[int]:
    """Token ids that end a generation: the template's end-of-turn token, the tokenizer's eos and,
    when `model_dir` is given, its generation_config.json `eos_token_id` (int or list)."""
    ids = end_of_turn_ids(tokenizer) if tokenizer.chat_template else []
    ids += _as_list(tokenizer.eos_token_id)
    if model_dir is not None:
        path = Path(model_dir) / "generation_config.json"
        if path.is_file():
            ids += _as_list(json.loads(path.read_text()).get("eos_token_id"))
    out: list[int] = []
    for i in ids:
        if i is not None and i not in out:
            out.append(int(i))
    return out


def pad_token_id(tokenizer) -> int:
    """The id used to pad batches: the tokenizer's pad token, else (for batching only; padded positions
    are masked out of attention and loss) its eos, else unk, else 0. Adds no token to the vocabulary."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        ids = _as_list(tid)
        if ids:
            return int(ids[0])
    return 0


# ---------------------------------------------------------------- helpers


def _template(tokenizer) -> str:
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default", "")
    if not template:
        raise ValueError(f"{getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'}: has no chat template "
                         "(set `chat_template` in its tokenizer_config.json or chat_template.jinja)")
    return template


def _encode_offsets(tokenizer, text: str):
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{getattr(tokenizer, 'name_or_path', '')}: assistant masks from a chat template "
                         "without {% generation %} markers need a fast (tokenizers-backed) tokenizer")
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special)
    return ids


def _common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
