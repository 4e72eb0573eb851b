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

On the driver (`run_constitution`, called by `llmray.stages.constitution.run`): the policy and feedback
model folders, the prompts (quarantine written), the Ray task below, then the confidence rules, the
train/test split by a hash of the prompt id, the records and the figures (calibration, on-policy
agreement, refusal rates) -> data/prefs.jsonl, data/sft.jsonl, trace.jsonl, calibration.jsonl.

Data flow (`feedback_task`, one Ray task on the stage's CPU/GPU, given the stage's typed Config; on a
laptop's local Ray with the transformers engine it runs in the driver instead, `resources.in_process`):
  prompts --policy engine (vLLM or transformers; llmray.rlhf.rollout), `samples` each--> answers
  answers --feedback engine: critique, then revision, under a principle drawn per prompt--> revisions
  pairs + the calibration set --feedback model forward (transformers), `judge` mode--> p(first better)
The calibration set is labelled comparisons the rule judge can settle (built-in held-out split: a
harmful request refused vs complied with; a harmless request answered vs refused): the feedback
model's agreement with those labels is reported, so a user sees how far its AI feedback can be
trusted before training on it.
"""

from __future__ import annotations

from pathlib import Path

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
from llmray.data.formats import held_out, load_data, write_jsonl, write_quarantine
from llmray.generate import pick_engine
from llmray.models import model_cache, resolve_model_source
from llmray.resources import task_in_process
from llmray.rlhf.rollout import EngineOptions, HFEngine, VLLMEngine
from llmray.stages.base import FixedCost, StageResult

# ---------------------------------------------------------------- in the Ray task


class Chat:
    """A rollout engine (llmray.rlhf.rollout: vLLM or transformers) behind chat in, text out."""

    def __init__(self, model_dir: str, engine: str, opts: EngineOptions, seed: int, tmp_dir: str,
                 max_new_tokens: int):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.engine_name = pick_engine(engine, "engine.engine")
        cls = VLLMEngine if self.engine_name == "vllm" else HFEngine
        self.engine = cls(model_dir, opts, seed, tmp_dir)
        self.stop = stop_token_ids(self.tok, model_dir)
        self.max_prompt = opts.max_model_len - max_new_tokens

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


def _critique_and_revise(critic: Chat, prompts, answers, principles: list[dict], sampling: dict,
                         seed: int) -> tuple[list[str], list[str]]:
    rules = [principle_for(p["id"], principles) for p in prompts]
    convs = [critique_conversation(p["prompt"], a[0], r) for p, a, r in zip(prompts, answers, rules)]
    critiques = [c[0] for c in critic.generate(convs, 1, sampling, seed + 1)]
    convs = [revision_conversation(p["prompt"], a[0], r, c) for p, a, r, c in zip(prompts, answers, rules, critiques)]
    return critiques, [c[0] for c in critic.generate(convs, 1, sampling, seed + 2)]


def feedback_task(policy_dir: str, feedback_dir: str, prompts: list[dict], config, tmp_dir: str) -> dict:
    """The whole AI-feedback pass in one Ray task (see the module docstring). `config`: the stage's
    typed Config (llmray.stages.constitution.Config, pickled to the task)."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmray.device import compute_init

    torch.set_num_threads(config.resources.torch_threads())
    principles = [p.model_dump() for p in config.principles]
    sampling, feedback_sampling = config.generation.model_dump(), config.feedback_generation.model_dump()
    t0, opts, seed = time.time(), EngineOptions.of(config.engine, config.engine.max_model_len), config.seed
    policy = Chat(policy_dir, config.engine.engine, opts, seed, f"{tmp_dir}/policy", sampling["max_new_tokens"])
    engine, spans = policy.engine_name, [[time.time(), 0.0]]  # wall clock: the stage's work (FixedCost.work)
    answers = policy.generate([p["prompt"] for p in prompts], config.samples, sampling, seed)
    spans[-1][1] = time.time()
    timings = {"answer_s": round(time.time() - t0, 2)}
    critic = policy if feedback_dir == policy_dir else None  # self-critique, as in the paper: one engine
    policy = None
    critiques = revisions = [""] * len(prompts)
    if config.revise:
        t1 = time.time()
        if critic is None:
            _release()
            critic = Chat(feedback_dir, config.engine.engine, opts, seed, f"{tmp_dir}/feedback",
                          feedback_sampling["max_new_tokens"])
        spans.append([time.time(), 0.0])
        critiques, revisions = _critique_and_revise(critic, prompts, answers, principles, feedback_sampling, seed)
        spans[-1][1] = time.time()
        timings["revise_s"] = round(time.time() - t1, 2)
    # The transformers engine already holds the feedback model as the judge needs it: no second load.
    model = critic.hf_model() if critic is not None else None
    tok = critic.tok if model is not None else AutoTokenizer.from_pretrained(feedback_dir)
    critic = None
    _release()
    items = _pairs(prompts, answers, revisions, config.revise)
    calib = [{"id": c["id"], "request": c["request"], "first": c["better"], "second": c["worse"], "kind": c["kind"]}
             for c in calibration_pairs(config.calibration_pairs, seed)] if config.calibration_pairs else []
    t2 = time.time()
    compute = compute_init(in_ray_train=False)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(feedback_dir, dtype=torch.float32).to(compute.device).eval()
    spans.append([time.time(), 0.0])
    judged = judge(model, tok, compute.device, items + calib, principles, config.judge_batch_size, config.judge)
    spans[-1][1] = time.time()
    timings["judge_s"] = round(time.time() - t2, 2)
    return {"answers": answers, "critiques": critiques, "revisions": revisions, "pairs": judged[:len(items)],
            "calibration": judged[len(items):], "timings": timings, "engine": engine, "work_spans": spans}


# ---------------------------------------------------------------- on the driver


def _model_dirs(config, ctx) -> tuple[Path, Path]:
    """(policy folder, feedback folder): stage model/ folders, or `from:` / `feedback_from:` folders
    resolved (URIs downloaded into the run's model cache) and checked as causal LMs."""
    cache = model_cache(ctx.run_dir)
    if config.init:
        policy = ctx.input("init").path("model")
    else:
        policy = resolve_model_source(config.from_, cache, f"stages.{ctx.name}.from")
    if config.feedback:
        return policy, ctx.input("feedback").path("model")
    if config.feedback_from:
        return policy, resolve_model_source(config.feedback_from, cache, f"stages.{ctx.name}.feedback_from")
    return policy, policy


def _prompts(config, ctx) -> tuple[list[dict], int]:
    loaded = load_data(config.prompts, "prompt", "train", config.fields, what="prompts")
    write_quarantine(loaded.quarantined, ctx.out_dir, "prompts")
    recs = loaded.records
    if not recs:
        raise ValueError(f"prompts: no usable records in {config.prompts!r} (see quarantine/prompts.jsonl)")
    if config.max_prompts and len(recs) > config.max_prompts:
        step = len(recs) / config.max_prompts  # an even spread keeps the harmful/benign mix
        recs = [recs[int(i * step)] for i in range(config.max_prompts)]
    return [{"id": r["id"], "prompt": r["prompt"], **({"harmful": r["harmful"]} if "harmful" in r else {})}
            for r in recs], len(loaded.quarantined)


def _records(config, prompts: list[dict], res: dict) -> tuple[list[dict], list[dict], int]:
    """Preference and SFT records (with their split); how many pairs the confidence rules dropped."""
    by_id = {p["id"]: p for p in prompts}
    prefs, dropped = [], 0
    for pair in res["pairs"]:
        p = pair["p_first"]
        if abs(p - 0.5) < config.min_confidence or (config.require_consistent and pair["consistent"] is False) \
                or pair["first"] == pair["second"]:
            dropped += 1
            continue
        chosen, rejected = (pair["first"], pair["second"]) if p >= 0.5 else (pair["second"], pair["first"])
        prefs.append({"id": pair["id"], "prompt": by_id[pair["prompt_id"]]["prompt"], "chosen": chosen,
                      "rejected": rejected, "p_chosen": round(max(p, 1 - p), 4), "principle": pair["principle"],
                      "source": pair["source"], "consistent": pair["consistent"],
                      "split": "test" if held_out(pair["prompt_id"], config.eval_fraction) else "train"})
    sft = []
    if config.revise:
        principles = [p.model_dump() for p in config.principles]
        for p, rev in zip(prompts, res["revisions"]):
            if rev:
                sft.append({"id": f"{p['id']}:rev", "messages": [*p["prompt"], {"role": "assistant", "content": rev}],
                            "principle": principle_for(p["id"], principles)["name"],
                            "split": "test" if held_out(p["id"], config.eval_fraction) else "train"})
    return prefs, sft, dropped


def _rate(values) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def _on_policy(prompts: list[dict], prefs: list[dict]) -> dict:
    """The judge on the policy's own answers, where the rule judge can settle it: prompts flagged
    `harmful` true/false (built-in red-team prompts are), pairs with exactly one refusal. Agreement =
    the refusal chosen for a harmful prompt, the other answer for a harmless one. Calibration pairs are
    clean templates; this is the figure on the answers the pairs are actually made of."""
    from llmray.data.instruct import is_refusal

    flag = {p["id"]: p["harmful"] for p in prompts if "harmful" in p}
    out = {}
    for kind, want in (("harmful", True), ("benign", False)):
        sel = [r for r in prefs if flag.get(r["id"].rsplit(":", 1)[0]) is want
               and is_refusal(r["chosen"]) != is_refusal(r["rejected"])]
        out[f"pairs_{kind}"] = len(sel)
        out[f"agreement_{kind}"] = _rate(is_refusal(r["chosen"]) == want for r in sel)
    return out


def _calibration(calib: list[dict]) -> dict:
    """The feedback model on the held-out comparisons with known answers (the better one is first)."""
    return {"pairs": len(calib), "agreement": _rate(c["p_first"] >= 0.5 for c in calib),
            "agreement_harmful": _rate(c["p_first"] >= 0.5 for c in calib if c["kind"] == "harmful"),
            "agreement_benign": _rate(c["p_first"] >= 0.5 for c in calib if c["kind"] == "benign"),
            "position_consistency": _rate(c["consistent"] for c in calib if c["consistent"] is not None)}


def _metrics(prompts, res: dict, prefs: list[dict], sft: list[dict], dropped: int) -> dict:
    from llmray.data.instruct import is_refusal

    return {
        "prompts": len(prompts), "answers": sum(len(a) for a in res["answers"]),
        "revisions": sum(1 for r in res["revisions"] if r), "pairs": len(res["pairs"]), "pairs_kept": len(prefs),
        "pairs_dropped": dropped, "sft_records": len(sft),
        "train_pairs": sum(r["split"] == "train" for r in prefs), "test_pairs": sum(r["split"] == "test" for r in prefs),
        "position_consistency": _rate(p["consistent"] for p in res["pairs"] if p["consistent"] is not None),
        "mean_confidence": _rate(r["p_chosen"] for r in prefs),
        "answer_refusal_rate": _rate(is_refusal(a) for row in res["answers"] for a in row),
        "revision_refusal_rate": _rate(is_refusal(r) for r in res["revisions"] if r),
        # Where the AI feedback pushes a model trained on it: refusals among chosen vs rejected answers.
        "chosen_refusal_rate": _rate(is_refusal(r["chosen"]) for r in prefs),
        "rejected_refusal_rate": _rate(is_refusal(r["rejected"]) for r in prefs),
        # How often the feedback model prefers its own revision to the answer it revised.
        "revision_preferred": _rate(p["p_first"] >= 0.5 for p in res["pairs"] if p["source"] == "revision"),
        "on_policy": _on_policy(prompts, prefs),
        "calibration": _calibration(res["calibration"]),
        "engine": res["engine"], "timings": res["timings"], "in_process": res["in_process"],
    }


def _in_driver(fn, *args):
    """`fn(*args)` in this process, as the Ray task would run it; the task sets torch's thread count,
    which is the driver's again afterwards (the stages after this one keep theirs)."""
    import torch

    threads = torch.get_num_threads()
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def run_constitution(config, ctx) -> StageResult:
    """The `constitution` stage (`config`: llmray.stages.constitution.Config): prompts, the feedback
    pass (a Ray task, or this process: `resources.in_process`), confidence rules, records and figures."""
    import ray

    # Fixed cost: work = the task's generation (answers, critiques and revisions) and judging; startup = the
    # start -> the first answer (prompts, the Ray task, its imports, the engine load); export = the records.
    cost = FixedCost()
    policy_dir, feedback_dir = _model_dirs(config, ctx)
    prompts, quarantined = _prompts(config, ctx)
    local = task_in_process(config.resources, pick_engine(config.engine.engine, "engine.engine"))
    ctx.log.info("constitution: %d prompts x %d answers from %s; feedback model %s (%s)", len(prompts),
                 config.samples, policy_dir, feedback_dir, "in-process" if local else "Ray task")
    args = (str(policy_dir), str(feedback_dir), prompts, config, str(ctx.work_dir / "engine-tmp"))
    if local:
        res = _in_driver(feedback_task, *args)
    else:
        task = ray.remote(feedback_task).options(**config.resources.ray_options(), max_retries=1)
        res = ray.get(task.remote(*args))
    res["in_process"] = local
    for span in res["work_spans"]:
        cost.work(*span)
    cost.add("startup", cost.uncovered())
    agreement = _calibration(res["calibration"])["agreement"]
    if config.min_calibration is not None and (agreement is None or agreement < config.min_calibration):
        raise ValueError(f"min_calibration: the feedback model {feedback_dir} agrees with {agreement} of "
                         f"{len(res['calibration'])} held-out calibration pairs, below {config.min_calibration}; "
                         "its preferences would be noise (use a stronger feedback model)")
    with cost.phase("export"):
        prefs, sft, dropped = _records(config, prompts, res)
        write_jsonl(ctx.out_dir / "data" / "prefs.jsonl", prefs)
        write_jsonl(ctx.out_dir / "data" / "sft.jsonl", sft)
        write_jsonl(ctx.out_dir / "trace.jsonl", [
            {"id": p["id"], "prompt": p["prompt"], "answers": a, "critique": c, "revision": r}
            for p, a, c, r in zip(prompts, res["answers"], res["critiques"], res["revisions"])])
        write_jsonl(ctx.out_dir / "calibration.jsonl", res["calibration"])
    metrics = {**_metrics(prompts, res, prefs, sft, dropped), "quarantined": quarantined,
               "calibration_agreement": agreement,  # top level too: the report's tile
               "feedback_model": "policy" if feedback_dir == policy_dir else (config.feedback or "folder"),
               "fixed_cost": cost.metrics(work_s=cost.work_s())}
    cal = metrics["calibration"]
    ctx.log.info("constitution: %d pairs kept of %d; calibration agreement %s (harmful %s, benign %s); "
                 "position consistency %s", len(prefs), len(res["pairs"]), cal["agreement"],
                 cal["agreement_harmful"], cal["agreement_benign"], metrics["position_consistency"])
    return StageResult(metrics=metrics, outputs={"prefs": "data/prefs.jsonl", "sft": "data/sft.jsonl",
                                                 "trace": "trace.jsonl", "calibration": "calibration.jsonl"})
