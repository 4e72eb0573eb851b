"""Model presets and HF-format save: every trained stage's `model/` comes out of `save_model`.

A preset is a LlamaConfig recipe; vocab size and special-token ids come from the
tokenizer. Head size stays >= 32 in every preset because vLLM's CPU backend refuses less.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from llmray.config import StrictModel

PRESETS: dict[str, dict] = {
    # ~1.3M non-embedding parameters: tests and the 2-core quickstart.
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=1024),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=4, max_position_embeddings=2048),
    "125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12, max_position_embeddings=2048),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=4096, rope_theta=500000.0),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0),
}


class ModelConfig(StrictModel):
    """Architecture of a model trained from scratch (ignored when a stage starts from `init`/`from`)."""

    preset: Literal["tiny", "small", "125m", "1b", "8b"] = Field("tiny", description="Size recipe (LlamaConfig).")
    hidden_size: int | None = Field(None, ge=32, description="Override the preset's hidden size.")
    num_hidden_layers: int | None = Field(None, ge=1, description="Override the preset's layer count.")
    num_attention_heads: int | None = Field(None, ge=1, description="Override the preset's head count.")
    intermediate_size: int | None = Field(None, ge=1, description="Override the preset's MLP width.")
    max_position_embeddings: int | None = Field(None, ge=16, description="Override the context length.")
    tie_word_embeddings: bool = Field(True, description="Share input and output embeddings.")


def llama_config(cfg: ModelConfig, tokenizer):
    """ModelConfig + tokenizer -> transformers LlamaConfig."""
    from transformers import LlamaConfig

    arch = dict(PRESETS[cfg.preset])
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings"):
        if getattr(cfg, key) is not None:
            arch[key] = getattr(cfg, key)
    if cfg.num_attention_heads is not None:
        arch["num_key_value_heads"] = cfg.num_attention_heads
    head = arch["hidden_size"] // arch["num_attention_heads"]
    if arch["hidden_size"] % arch["num_attention_heads"] or head < 32:
        raise ValueError(f"hidden_size/num_attention_heads must divide evenly into heads of >= 32 (got {head}); "
                         "vLLM's CPU backend refuses smaller heads")
    return LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=cfg.tie_word_embeddings,
        attn_implementation="sdpa", **arch,
    )


def save_model(model, tokenizer, out_dir: Path) -> Path:
    """Save a model (safetensors), its tokenizer and a generation config that stops on end-of-turn."""
    from transformers import GenerationConfig

    from llmray.chat import stop_token_ids

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    if hasattr(model, "generation_config") and getattr(model.config, "architectures", [""])[0].endswith("CausalLM"):
        gen = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_token_ids(tokenizer),
                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
        gen.save_pretrained(str(out_dir))
    return out_dir
