"""The transformers engine: batched incremental decoding with per-row sampling settings.

Batching happens twice:
  1. `@serve.batch` on the model deployment groups requests that arrive together (a group);
  2. the engine's dispatcher: whenever the decode loop is free, it takes EVERY group waiting
     (up to `max_batch_size` requests) and decodes them as one batch. So a request that arrives
     while a batch is running joins the next batch instead of queueing alone behind it
     (`@serve.batch` alone forms batches at arrival time: with no wait, lone requests under
     load; with a wait, added latency for every lone request).
One batch:
  prompts (token ids) --left-pad--> one prefill forward (KV cache) --> loop:
    sample one token per row (each row its own settings, applied with transformers' logits processors:
    repetition penalty, no-repeat n-grams, temperature, top_k, top_p; and its own seed generator)
    --> append, detokenize incrementally, check stop tokens / stop strings / max_tokens
    --> one list of `Delta`s per request (StopIteration once a request is finished), routed
        back to each group --> one forward of the new tokens against the cache.
A request with `n` choices is `n` rows. Forwards run in a worker thread so the replica's
event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from llmray.chat import pad_token_id
from llmray.generate import Delta, EngineRequest, logits_processors


@dataclass
class _Row:
    """One choice being generated."""

    req: int  # index of its request in the batch
    choice: int
    req_obj: EngineRequest
    generator: object  # torch.Generator (per-row seed -> reproducible sampling)
    procs: object  # transformers LogitsProcessorList of the row's settings (llmray.generate.logits_processors)
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the decoded text already emitted
    finish: str | None = None


def _processors(req: EngineRequest):
    """transformers' logits processors for one request's settings (empty: plain argmax / softmax)."""
    return logits_processors(req.repetition_penalty, req.no_repeat_ngram_size, req.temperature, req.top_k, req.top_p)


class HFEngine:
    """A causal LM from an HF folder, decoded with our own batched loop (see module doc)."""

    name = "hf"

    def __init__(self, model_dir: str, tokenizer, stop_ids: list[int], max_batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM

        from llmray.device import compute_init

        self.compute = compute_init(in_ray_train=False)
        dtype = self.compute.dtype or torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.compute.device).eval()
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.pad_id = pad_token_id(tokenizer)
        # Set by the Serve deployment to its `@serve.batch` method; None -> each request alone.
        self.submit = None
        self.max_batch_size = max_batch_size
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0}
        self._waiting: list[tuple[list[EngineRequest], asyncio.Queue]] = []
        self._worker: asyncio.Task | None = None
        self._batch_lock = asyncio.Lock()  # held by each batch; `reload` takes it between batches
        # generate_ids: request ids whose finished rows' token ids are kept, and those ids by (request, choice).
        self._keep_ids: set[str] = set()
        self._kept: dict[tuple[str, int], list[int]] = {}

    async def start(self) -> None:
        """Nothing to start: the model is loaded in __init__."""

    async def close(self) -> None:
        """Nothing to release beyond what garbage collection frees."""

    async def reload(self, model_dir: str) -> None:
        """Another folder's weights (same architecture) into this model, between two batches: requests
        arriving meanwhile wait in the queue, none fails. Refused (model untouched) when the names differ."""
        from pathlib import Path

        from safetensors.torch import load_file

        files = sorted(Path(model_dir).glob("*.safetensors"))
        state = {}
        for f in files:
            state.update(await asyncio.to_thread(load_file, str(f)))
        own = self.model.state_dict()
        tied = {k for k in own if k.endswith("lm_head.weight")} if self.model.config.tie_word_embeddings else set()
        missing, unexpected = set(own) - set(state) - tied, set(state) - set(own)
        if not files or missing or unexpected:
            raise ValueError(f"{model_dir}: weights do not fit this model (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]})")
        async with self._batch_lock:
            await asyncio.to_thread(self.model.load_state_dict, state, strict=False)

    def stream(self, req: EngineRequest) -> AsyncIterator[list[Delta]]:
        """Deltas for one request, through the batcher when one is installed."""
        return self.submit(req) if self.submit is not None else self._alone(req)

    async def _alone(self, req: EngineRequest) -> AsyncIterator[list[Delta]]:
        async for step in self.stream_batch([req]):
            if step[0] is StopIteration:
                return
            yield step[0]

    # ------------------------------------------------------------ log-probs (llmray.serve.scoring)

    async def generate_ids(self, req: EngineRequest) -> list[dict]:
        """The whole generation with each choice's token ids: [{"index", "ids", "text", "finish_reason"}]."""
        self._keep_ids.add(req.request_id)
        out = {j: {"index": j, "ids": [], "text": "", "finish_reason": None} for j in range(req.n)}
        try:
            async for deltas in self.stream(req):
                for d in deltas:
                    out[d.index]["text"] += d.text
                    out[d.index]["finish_reason"] = d.finish_reason or out[d.index]["finish_reason"]
        finally:
            self._keep_ids.discard(req.request_id)
            for j in out:
                out[j]["ids"] = self._kept.pop((req.request_id, j), [])
        return list(out.values())

    async def score(self, seqs: list[list[int]], top: int) -> list[list]:
        """Per sequence, per position: None at 0, else (log-prob of that token, {id: log-prob} of the `top`
        most likely tokens and the token itself). One forward of the batch, between two decode batches."""
        async with self._batch_lock:
            return await asyncio.to_thread(self._score, seqs, top)

    def _score(self, seqs: list[list[int]], top: int) -> list[list]:
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, s in enumerate(seqs):  # right-padded: positions count from 0 in every row
            ids[k, :len(s)] = torch.tensor(s)
            mask[k, :len(s)] = 1
        dev = self.compute.device
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            best_v, best_i = logp.topk(top, dim=-1) if top else (None, None)
        if top:  # to Python once: per-position .tolist() on a GPU tensor would sync each time
            best_v, best_i = best_v.cpu().tolist(), best_i.cpu().tolist()
        out = []
        for k, s in enumerate(seqs):
            target = torch.tensor(s[1:], device=dev)
            chosen = logp[k, :len(s) - 1].gather(-1, target[:, None])[:, 0].tolist()
            rows: list = [None]
            for i in range(1, len(s)):
                alts = dict(zip(best_i[k][i - 1], best_v[k][i - 1])) if top else {}
                alts[s[i]] = chosen[i - 1]
                rows.append((chosen[i - 1], alts))
            out.append(rows)
        return out

    # ------------------------------------------------------------ the dispatcher

    async def stream_batch(self, reqs: list[EngineRequest]):
        """Async generator: per decoding step, one item per request (a list of Deltas, or
        StopIteration once that request is done), as `@serve.batch` generators require.
        The group waits for the decode loop and may share its batch with other groups."""
        queue: asyncio.Queue = asyncio.Queue()
        self._waiting.append((reqs, queue))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._dispatch())
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                return
            yield item

    async def _dispatch(self) -> None:
        """While groups wait: take as many as fit in one batch, decode them, route the steps."""
        while self._waiting:
            groups, size = [], 0
            while self._waiting and (not groups or size + len(self._waiting[0][0]) <= self.max_batch_size):
                groups.append(self._waiting.pop(0))
                size += len(groups[-1][0])
            reqs = [r for g, _ in groups for r in g]
            try:
                async with self._batch_lock:
                    async for step in self._decode(reqs):
                        at = 0
                        for g, queue in groups:
                            queue.put_nowait(step[at:at + len(g)])
                            at += len(g)
            except Exception as e:  # noqa: BLE001 - every waiting caller must hear of it
                for _, queue in groups:
                    queue.put_nowait(e)
                continue
            for _, queue in groups:
                queue.put_nowait(None)

    # ------------------------------------------------------------ the batched loop

    async def _decode(self, reqs: list[EngineRequest]):
        """One batch, step by step: a list with one item per request (see stream_batch)."""
        import torch

        rows = [_Row(i, j, r, self._generator(r, j), _processors(r)) for i, r in enumerate(reqs) for j in range(r.n)]
        self.stats["batches"] += 1
        self.stats["requests"] += len(reqs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(reqs))
        cache, mask, pos, logits = await asyncio.to_thread(self._prefill, [r.prompt_ids for r in reqs], rows)
        done = [False] * len(reqs)
        while True:
            tokens = [self._sample(logits[k], row) for k, row in enumerate(rows)]
            out: list = [[] for _ in reqs]
            for row, tok in zip(rows, tokens):
                if row.finish is None:
                    delta = self._advance(row, tok)
                    if delta is not None:
                        out[row.req].append(delta)
                    if row.finish is not None and row.req_obj.request_id in self._keep_ids:
                        stop = [tok] if tok in self.stop_ids else []  # scored too, as vLLM reports it
                        self._kept[(row.req_obj.request_id, row.choice)] = row.ids + stop
            for i in range(len(reqs)):
                if done[i]:
                    out[i] = StopIteration
                elif all(r.finish for r in rows if r.req == i):
                    done[i] = True  # this step's deltas go out now; StopIteration next step
            yield out
            if all(done):
                yield [StopIteration] * len(reqs)
                return
            step = torch.tensor([[t if r.finish is None else self.pad_id] for t, r in zip(tokens, rows)])
            cache, mask, pos, logits = await asyncio.to_thread(self._forward, step, cache, mask, pos)

    def _generator(self, req: EngineRequest, choice: int):
        import torch

        g = torch.Generator()
        g.manual_seed(req.seed + choice if req.seed is not None else random.getrandbits(62))
        return g

    def _prefill(self, prompts: list[list[int]], rows: list[_Row]):
        """Left-padded prompts, one per row -> (cache, attention mask, last positions, last logits)."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            p = prompts[row.req]
            ids[k, width - len(p):] = torch.tensor(p)
            mask[k, width - len(p):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(self.compute.device), attention_mask=mask.to(self.compute.device),
                             position_ids=pos.to(self.compute.device), use_cache=True)
        return out.past_key_values, mask, pos[:, -1:], out.logits[:, -1, :].float().cpu()

    def _forward(self, step, cache, mask, pos):
        """One new token per row against the cache."""
        import torch

        mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype)], dim=1)
        pos = pos + 1
        dev = self.compute.device
        with torch.inference_mode():
            out = self.model(input_ids=step.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                             past_key_values=cache, use_cache=True)
        return out.past_key_values, mask, pos, out.logits[:, -1, :].float().cpu()

    @staticmethod
    def _sample(logits, row: _Row) -> int:
        """The row's processors (penalties, then temperature / top_k / top_p as transformers' `generate`
        applies them), then the argmax at temperature 0, else a draw with the row's generator. The
        penalties see the prompt and the tokens generated so far, unpadded (as vLLM's do)."""
        import torch

        if row.finish is not None:
            return 0
        if row.procs:
            seen = torch.tensor([row.req_obj.prompt_ids + row.ids], dtype=torch.long)
            logits = row.procs(seen, logits[None, :].clone())[0]
        if row.req_obj.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _advance(self, row: _Row, token: int) -> Delta | None:
        """Add one sampled token; return the text that may leave now (None if nothing)."""
        req = row.req_obj
        if token in self.stop_ids:
            row.finish = "stop"
            return self._flush(row, self._text(row), tokens=0)
        row.ids.append(token)
        text = self._text(row)
        for s in req.stop:  # stop strings: cut the text where the first one starts
            at = text.find(s, max(0, row.sent - len(s)))
            if at >= 0:
                row.finish = "stop"
                return self._flush(row, text[:at], tokens=1)
        if len(row.ids) >= req.max_tokens:
            row.finish = "length"
            return self._flush(row, text, tokens=1)
        # Hold back what could be the start of a stop string, or half a UTF-8 character.
        safe = len(text) - max((len(s) - 1 for s in req.stop), default=0)
        while safe > row.sent and text[safe - 1] == "\ufffd":
            safe -= 1
        piece = text[row.sent:safe] if safe > row.sent else ""
        row.sent += len(piece)
        return Delta(row.choice, piece, None, 1)

    def _text(self, row: _Row) -> str:
        return self.tokenizer.decode(row.ids, skip_special_tokens=True)

    @staticmethod
    def _flush(row: _Row, final: str, tokens: int) -> Delta:
        piece = final[row.sent:] if len(final) > row.sent else ""
        row.sent = max(row.sent, len(final))
        return Delta(row.choice, piece, row.finish, tokens)
