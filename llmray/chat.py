"""One tokenizer vocabulary of special tokens and one chat template, used end to end.

The tokenizer stage bakes these into the tokenizer folder; SFT loss masking, DPO/RM
formatting, rollouts and serving all call `tokenizer.apply_chat_template` on that
folder, so there is a single template and no silent mismatch between stages.
The template wraps assistant turns in `{% generation %}` so transformers can return the
assistant-token mask (`return_assistant_tokens_mask=True`) used for SFT loss masking.
"""

from __future__ import annotations

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


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a generation: end-of-turn and end-of-text."""
    ids = []
    for tok in (END_TURN, EOS):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.append(tid)
    return ids


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and the assistant mask (1 = a token the assistant wrote, incl. its end-of-turn)."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt,
    )
    return list(out["input_ids"]), list(out["assistant_masks"])
