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


# ---------------------------------------------------------------- stock model families (bring your own)

# Chat templates as the vendors ship them (no `{% generation %}` markers), and their special tokens.
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                  "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
                  "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
                  "user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}"
                  "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
                  "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
                  "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

# family -> (architecture, template, special tokens, bos, eos, pad). Pad None: the tokenizer has none
# (Qwen2 base and Llama 3 ship without one), which llmray must handle without resizing embeddings.
FAMILIES = {
    "qwen2": ("Qwen2ForCausalLM", CHATML_TEMPLATE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              None, "<|im_end|>", None),
    "llama": ("LlamaForCausalLM", LLAMA3_TEMPLATE,
              ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
              "<|begin_of_text|>", "<|end_of_text|>", None),
    "gemma": ("GemmaForCausalLM", GEMMA_TEMPLATE, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
              "<bos>", "<eos>", "<pad>"),
}


def family_tokenizer(family: str, vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on stdlib docstrings with a model family's special tokens and
    stock chat template (no markers), as a transformers PreTrainedTokenizerFast."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmray.tok import build_bpe_model

    _, template, specials, bos, eos, pad = FAMILIES[family]
    tok = build_bpe_model()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(stdlib_texts(), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                 clean_up_tokenization_spaces=False, model_max_length=4096)
    hf.chat_template = template
    return hf


def tiny_family_dir(out_dir: Path, family: str = "qwen2", seed: int = 0) -> Path:
    """A random tiny causal LM of a real architecture (Qwen2, Llama, Gemma) with its family's stock chat
    template, saved the way the hub ships such folders: safetensors, config, tokenizer, generation config.
    Heads of 32 dims (vLLM's CPU backend refuses smaller ones)."""
    import torch
    import transformers
    from transformers import GenerationConfig

    arch, *_ = FAMILIES[family]
    out_dir = Path(out_dir)
    tok = family_tokenizer(family)
    config_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    kwargs = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  tie_word_embeddings=True)
    if family == "gemma":
        kwargs["head_dim"] = 32
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config_cls(**kwargs))
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(str(out_dir))
    return out_dir


# ---------------------------------------------------------------- user data layouts


def write_save_to_disk(folder: Path, records: list[dict]) -> Path:
    """A folder laid out as `datasets.Dataset.save_to_disk` writes it (Arrow IPC stream + state.json +
    dataset_info.json), written with pyarrow: `datasets` itself is not a dependency."""
    import json

    import pyarrow as pa

    folder = Path(folder)
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(records)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0123456789abcdef",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": None}))
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": {}}))
    return folder


def write_dataset_dict(folder: Path, splits: dict[str, list[dict]]) -> Path:
    """A `datasets.DatasetDict.save_to_disk` folder: one subfolder per split + dataset_dict.json."""
    import json

    folder = Path(folder)
    for name, recs in splits.items():
        write_save_to_disk(folder / name, recs)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return folder


def write_byo_assets(folder: Path, n_chats: int = 256, n_pairs: int = 256) -> Path:
    """What `examples/bring-your-own.yaml` reads, made offline: a tiny random Qwen2 folder with a stock
    ChatML template and no pad token (`qwen-tiny/`), ShareGPT-style chats in Parquet (`chats.parquet`,
    from the built-in instruct set) and preference pairs as a `datasets` save_to_disk folder (`prefs/`,
    from the built-in preference set): the layouts users bring, not llmray's own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmray.data.instruct import load_builtin

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_family_dir(folder / "qwen-tiny", "qwen2")
    roles = {"user": "human", "assistant": "gpt", "system": "system"}
    chats = [{"id": r["id"], "conversations": [{"from": roles[m["role"]], "value": m["content"]}
                                               for m in r["messages"]]}
             for r in load_builtin("instruct", "train")[:n_chats]]
    pq.write_table(pa.Table.from_pylist(chats), folder / "chats.parquet", row_group_size=64)
    pairs = [{"id": r["id"], "prompt": r["prompt"][-1]["content"], "chosen": r["chosen"],
              "rejected": r["rejected"]} for r in load_builtin("prefs", "train")[:n_pairs]]
    write_save_to_disk(folder / "prefs", pairs)
    return folder


def write_rlvr_assets(folder: Path, n_sft: int = 2000) -> Path:
    """What `examples/rlvr-arithmetic.yaml` reads: a random quickstart-sized model (the `tiny` Llama
    preset, llmray's tokenizer) in `init/`, and `arith_sft.jsonl`: the first `n_sft` train problems of
    `builtin:arithmetic` answered in the asked format, a warm start that GRPO then improves on."""
    from llmray.data.formats import write_jsonl
    from llmray.data.verifiable import arithmetic_prompts

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_model_dir(folder / "init", "causal")
    chats = [{"id": r["id"], "messages": [*r["prompt"], {"role": "assistant", "content": f"Answer: {r['reference']}"}]}
             for r in arithmetic_prompts("train")[:n_sft]]
    write_jsonl(folder / "arith_sft.jsonl", chats)
    return folder


if __name__ == "__main__":  # python -m llmray.testing {byo|rlvr} <folder>: an example's offline inputs
    import sys

    makers = {"byo": write_byo_assets, "rlvr": write_rlvr_assets}
    if len(sys.argv) != 3 or sys.argv[1] not in makers:
        sys.exit("usage: python -m llmray.testing {byo|rlvr} <folder>")
    print(makers[sys.argv[1]](Path(sys.argv[2])))
