"""Tiny real artefacts for tests and benchmarks: a BPE tokenizer trained on stdlib docstrings and
randomly initialised Llama models saved in HF format (no hub downloads)."""

from __future__ import annotations

import pydoc
import socket
from pathlib import Path


def stdlib_texts(limit: int = 400) -> list[str]:
    """Docstrings of a fixed list of stdlib modules' public members (deterministic, offline)."""
    import importlib

    texts: list[str] = []
    for modname in ("json", "os", "re", "pathlib", "collections", "itertools", "functools", "string",
                    "textwrap", "random", "statistics", "heapq", "bisect", "csv", "argparse", "logging"):
        mod = importlib.import_module(modname)
        for name in sorted(dir(mod)):
            if name.startswith("_"):
                continue
            doc = pydoc.getdoc(getattr(mod, name, None))
            if doc and len(doc) > 40:
                texts.append(doc)
            if len(texts) >= limit:
                return texts
    return texts


def tiny_tokenizer(out_dir: Path, vocab_size: int = 1024):
    from llmray.tok import save_tokenizer, train_bpe

    tok = train_bpe(stdlib_texts(), vocab_size=vocab_size)
    save_tokenizer(tok, Path(out_dir))
    return tok


def tiny_model_dir(out_dir: Path, kind: str = "causal", vocab_size: int = 1024, seed: int = 0,
                   tokenizer_dir: Path | None = None) -> Path:
    """A random tiny Llama (`causal` or `reward` = 1-label sequence classifier) saved in HF format."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

    from llmray.models import ModelConfig, llama_config, save_model

    out_dir = Path(out_dir)
    if tokenizer_dir is None:
        tok = tiny_tokenizer(out_dir / "_tok", vocab_size)
    else:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = llama_config(ModelConfig(preset="tiny"), tok)
    torch.manual_seed(seed)
    if kind == "causal":
        model = LlamaForCausalLM(cfg)
    else:
        cfg.num_labels = 1
        model = LlamaForSequenceClassification(cfg)
    save_model(model, tok, out_dir)
    return out_dir


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (for test servers on loopback)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
