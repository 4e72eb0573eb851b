"""Constitutional AI (Bai et al., 2022): AI feedback guided by written principles.

Two products, as in the paper:
- SL-CAI: the policy answers a red-team prompt; the feedback model critiques the answer against a
  principle, then rewrites it (critique -> revision). (prompt, revision) conversations are SFT data.
- RL-CAI (RLAIF): two answers to one prompt (two samples, or an answer and its revision) are judged
  by the feedback model under a principle, read from its log-probabilities (never sampled):
  pairwise: the paper's multiple-choice question ("Which response is less harmful? (A) ... (B) ..."),
    asked in both orders so a position bias cancels: p(first) = (p_A[first, second] + p_B[second, first]) / 2;
  pointwise: a yes/no question per answer; p(first) = sigmoid(log-odds(first) - log-odds(second)).
  The pairs, with p as a soft label, are preference data for the reward / dpo kinds (`ai_feedback:`).

Data flow (`feedback_task`, one Ray task on the stage's CPU/GPU):
  prompts --policy engine (vLLM or transformers; llmray.rlhf.rollout), `samples` each--> answers
  answers --feedback engine: critique, then revision, under a principle drawn per prompt--> revisions
  pairs + the calibration set --feedback model forward (transformers), `judge` mode--> p(first better)
The calibration set is labelled comparisons the rule judge can settle (built-in held-out split: a
harmful request refused vs complied with; a harmless request answered vs refused): the feedback
model's agreement with those labels is reported, so a user sees how far its AI feedback can be
trusted before training on it.
"""

from __future__ import annotations

from llmray.chat import pad_token_id, prompt_ids, stop_token_ids
from llmray.data.feedback import (  # noqa: F401  (PRINCIPLES, principle_for: this module's API too)
    OPTIONS,
    PRINCIPLES,
    VERDICTS,
    assessment_conversation,
    calibration_pairs,
    comparison_conversation,
    critique_conversation,
    principle_for,
    revision_conversation,
    user_text,
)
from llmray.generate import pick_engine

# ---------------------------------------------------------------- in the Ray task


class Chat:
    """A rollout engine (llmray.rlhf.rollout: vLLM or transformers) behind chat in, text out."""

    def __init__(self, model_dir: str, engine: str, opts: dict, seed: int, tmp_dir: str):
        from transformers import AutoTokenizer

        from llmray.rlhf.rollout import HFEngine, VLLMEngine

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.engine_name = pick_engine(engine, "engine.engine")
        cls = VLLMEngine if self.engine_name == "vllm" else HFEngine
        self.engine = cls(model_dir, opts, seed, tmp_dir)
        self.stop = stop_token_ids(self.tok, model_dir)
        self.max_prompt = opts["max_model_len"] - opts["max_new_tokens"]

    def ids(self, conversation: list[dict]) -> list[int]:
        ids = prompt_ids(self.tok, conversation)
        return ids[-self.max_prompt:]  # keep the end: the request and the generation prompt

    def hf_model(self):
        """The engine's transformers model (fp32, eval, on the device) when it has one, else None."""
        return getattr(self.engine, "model", None)

    def generate(self, conversations: list[list[dict]], n: int, sampling: dict, seed: int) -> list[list[str]]:
        out = self.engine.generate([self.ids(c) for c in conversations], n,
                                   {**sampling, "stop_ids": self.stop}, seed)
        return [[self.tok.decode(s["ids"], skip_special_tokens=True).strip() for s in row] for row in out]


def option_logprobs(model, tok, conversations: list[list[dict]], device, batch_size: int = 16,
                    max_len: int = 2048, options: tuple[str, str] = OPTIONS) -> list[list[float]]:
    """log p(options[0] | conversation) and log p(options[1] | ...) under a causal LM, per conversation.
    Continuations are tokenized on their own and appended to the prompt (no BPE merge across the
    boundary; the prompt ends with the template's generation marker); long prompts keep their end."""
    import torch

    conts = [tok.encode(o, add_special_tokens=False) for o in options]
    rows = []
    for c in conversations:
        ctx = prompt_ids(tok, c)
        for cont in conts:
            keep = max_len - len(cont)
            rows.append((ctx[-keep:], cont))
    scores: list[float] = []
    pad = pad_token_id(tok)
    for s in range(0, len(rows), batch_size):
        batch = rows[s:s + batch_size]
        width = max(len(a) + len(b) for a, b in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, (a, b) in enumerate(batch):
            ids[i, :len(a) + len(b)] = torch.tensor(a + b)
            att[i, :len(a) + len(b)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
        logp = torch.log_softmax(logits, -1).cpu()
        for i, (a, b) in enumerate(batch):
            pos = torch.arange(len(a) - 1, len(a) + len(b) - 1)
            scores.append(float(logp[i, pos, torch.tensor(b)].sum()))
    return [scores[i:i + 2] for i in range(0, len(scores), 2)]


def _sigmoid(x: float) -> float:
    import math

    return 1.0 / (1.0 + math.exp(-x)) if x > -60 else 0.0


def preference(lp_forward: list[float], lp_swapped: list[float]) -> tuple[float, bool]:
    """p(first response better) from both orders, and whether the two orders agree."""
    forward = _sigmoid(lp_forward[0] - lp_forward[1])  # p("(A)") when the first response is option A
    swapped = 1.0 - _sigmoid(lp_swapped[0] - lp_swapped[1])  # in the swapped order "first" is option B
    return (forward + swapped) / 2, (forward > 0.5) == (swapped > 0.5)


def judge(model, tok, device, items: list[dict], principles, batch_size: int, mode: str = "pairwise") -> list[dict]:
    """items: {"id", "request", "first", "second"} -> + {"p_first", "consistent", "principle"}.
    pairwise: the multiple-choice question in both orders; pointwise: each response's log-odds of
    "(Yes)" over "(No)", and p_first = sigmoid(odds_first - odds_second) (Bradley-Terry; no order)."""
    convs = []
    for it in items:
        pr = principle_for(it["id"], principles)
        if mode == "pairwise":
            convs += [comparison_conversation(it["request"], it["first"], it["second"], pr),
                      comparison_conversation(it["request"], it["second"], it["first"], pr)]
        else:
            convs += [assessment_conversation(it["request"], it["first"], pr),
                      assessment_conversation(it["request"], it["second"], pr)]
    lps = option_logprobs(model, tok, convs, device, batch_size, options=OPTIONS if mode == "pairwise" else VERDICTS)
    out = []
    for k, it in enumerate(items):
        if mode == "pairwise":
            p, consistent = preference(lps[2 * k], lps[2 * k + 1])
        else:
            first, second = (lp[0] - lp[1] for lp in (lps[2 * k], lps[2 * k + 1]))
            p, consistent = _sigmoid(first - second), None
        out.append({**it, "p_first": round(p, 4), "consistent": consistent,
                    "principle": principle_for(it["id"], principles)["name"]})
    return out


def _release() -> None:
    """Give back the memory of engines the caller has dropped (before the next model loads)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _pairs(prompts, answers, revisions, revise: bool) -> list[dict]:
    """What the feedback model compares: sample 0 vs each other sample, and revision vs sample 0."""
    items = []
    for p, a, rev in zip(prompts, answers, revisions):
        request = user_text(p["prompt"])
        items += [{"id": f"{p['id']}:s{k}", "prompt_id": p["id"], "source": "samples", "request": request,
                   "first": a[0], "second": a[k]} for k in range(1, len(a))]
        if revise:
            items.append({"id": f"{p['id']}:rev", "prompt_id": p["id"], "source": "revision", "request": request,
                          "first": rev, "second": a[0]})
    return items


def _critique_and_revise(critic: Chat, prompts, answers, cfg: dict) -> tuple[list[str], list[str]]:
    rules = [principle_for(p["id"], cfg["principles"]) for p in prompts]
    convs = [critique_conversation(p["prompt"], a[0], r) for p, a, r in zip(prompts, answers, rules)]
    critiques = [c[0] for c in critic.generate(convs, 1, cfg["feedback_sampling"], cfg["seed"] + 1)]
    convs = [revision_conversation(p["prompt"], a[0], r, c) for p, a, r, c in zip(prompts, answers, rules, critiques)]
    return critiques, [c[0] for c in critic.generate(convs, 1, cfg["feedback_sampling"], cfg["seed"] + 2)]


def feedback_task(policy_dir: str, feedback_dir: str, prompts: list[dict], cfg: dict, tmp_dir: str) -> dict:
    """The whole AI-feedback pass in one Ray task (see the module docstring). `cfg`: plain values
    (principles, samples, revise, sampling, feedback_sampling, engine, engine_opts, seed, ...)."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmray.device import compute_init

    torch.set_num_threads(cfg["threads"])
    t0, opts = time.time(), cfg["engine_opts"]
    policy = Chat(policy_dir, cfg["engine"], {**opts, "max_new_tokens": cfg["sampling"]["max_new_tokens"]},
                  cfg["seed"], f"{tmp_dir}/policy")
    engine = policy.engine_name
    answers = policy.generate([p["prompt"] for p in prompts], cfg["samples"], cfg["sampling"], cfg["seed"])
    timings = {"answer_s": round(time.time() - t0, 2)}
    critic = policy if feedback_dir == policy_dir else None  # self-critique, as in the paper: one engine
    policy = None
    critiques = revisions = [""] * len(prompts)
    if cfg["revise"]:
        t1 = time.time()
        if critic is None:
            _release()
            critic = Chat(feedback_dir, cfg["engine"],
                          {**opts, "max_new_tokens": cfg["feedback_sampling"]["max_new_tokens"]},
                          cfg["seed"], f"{tmp_dir}/feedback")
        critiques, revisions = _critique_and_revise(critic, prompts, answers, cfg)
        timings["revise_s"] = round(time.time() - t1, 2)
    # The transformers engine already holds the feedback model as the judge needs it: no second load.
    model = critic.hf_model() if critic is not None else None
    tok = critic.tok if model is not None else AutoTokenizer.from_pretrained(feedback_dir)
    critic = None
    _release()
    items = _pairs(prompts, answers, revisions, cfg["revise"])
    calib = [{"id": c["id"], "request": c["request"], "first": c["better"], "second": c["worse"], "kind": c["kind"]}
             for c in calibration_pairs(cfg["calibration_pairs"], cfg["seed"])] if cfg["calibration_pairs"] else []
    t2 = time.time()
    compute = compute_init(in_ray_train=False)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(feedback_dir, dtype=torch.float32).to(compute.device).eval()
    judged = judge(model, tok, compute.device, items + calib, cfg["principles"], cfg["judge_batch_size"],
                   cfg["judge"])
    timings["judge_s"] = round(time.time() - t2, 2)
    return {"answers": answers, "critiques": critiques, "revisions": revisions, "pairs": judged[:len(items)],
            "calibration": judged[len(items):], "timings": timings, "engine": engine}
