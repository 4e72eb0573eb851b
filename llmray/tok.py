"""Byte-level BPE training with HF `tokenizers`, saved as a transformers tokenizer folder.

texts --(GPT-4 style regex split: letters, 1-3 digit groups, punctuation, whitespace)-->
byte-level pieces --BpeTrainer--> vocab + merges --> PreTrainedTokenizerFast with the
special tokens and chat template of `llmray.chat`. Byte-level with no normaliser, so
`decode(encode(x)) == x` for any Unicode string.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from llmray.chat import BOS, CHAT_TEMPLATE, EOS, PAD, SPECIAL_TOKENS

# The GPT-4 (cl100k) split pattern; Llama 3 uses the same.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)


def build_bpe_model():
    """An untrained byte-level BPE tokenizer with the modern pre-tokenizer split."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Train on an iterator of strings; returns a transformers PreTrainedTokenizerFast."""
    from tokenizers import pre_tokenizers, trainers

    tok = build_bpe_model()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok):
    """A `tokenizers.Tokenizer` -> transformers tokenizer with our special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (BOS, EOS, PAD)],
        clean_up_tokenization_spaces=False, model_max_length=1_000_000,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def save_tokenizer(hf_tokenizer, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.save_pretrained(str(out_dir))
    return out_dir
