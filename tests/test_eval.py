"""The `eval` stage on lm-eval: built-in held-out tasks, lm-eval's accuracy against an independent
computation, the stage on Ray (tables, lm-eval results, a failing model isolated), and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmray.config import ConfigError
from llmray.eval.harness import BUILTIN_DIR, TaskPlan, TaskSpecError, evaluate_model, resolve_tasks
from llmray.pipeline import parse_pipeline


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (BUILTIN_DIR / name).read_text().splitlines()]


def test_builtin_tasks_come_from_held_out_modules_only():
    from llmray.data.instruct import split_of

    docmatch, ppl, sig = _rows("docmatch.jsonl"), _rows("docppl.jsonl"), _rows("signature.jsonl")
    assert (len(docmatch), len(ppl), len(sig)) == (200, 100, 150)
    for rows in (docmatch, ppl, sig):
        assert all(split_of(r["id"].split(".")[0]) == "test" for r in rows)
        assert len({r["id"] for r in rows}) == len(rows)
    assert all(len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and 0 <= r["label"] < 4 for r in docmatch)
    assert len({r["label"] for r in docmatch}) == 4  # the right answer is not always in one place
    assert all(r["target"].startswith(f"`{r['id']}(") for r in sig)


def _independent_choice_logprobs(model_dir: Path, items: list[dict]) -> list[list[float]]:
    """Sum of each choice's token log-probs after its context: a plain transformers forward pass.
    Continuation tokens are those of `context + " " + choice` past the context's own tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    for item in items:
        ctx_ids = tok(item["query"], add_special_tokens=False)["input_ids"]
        sums = []
        for choice in item["choices"]:
            whole = tok(item["query"] + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            sums.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx_ids), len(whole))))
        out.append(sums)
    return out


@pytest.mark.integration  # an lm-eval run (~4 s): not in the fast tier
def test_lm_eval_multiple_choice_accuracy_equals_an_independent_computation(tiny_causal_dir):
    n = 30
    res = evaluate_model(str(tiny_causal_dir), TaskPlan(["llmray_docmatch"], [str(BUILTIN_DIR)]),
                         {"backend": "hf", "batch_size": 8, "limit": n, "log_samples": True, "dtype": "float32"})
    acc = res["results"]["results"]["llmray_docmatch"]["acc,none"]
    items = _rows("docmatch.jsonl")[:n]
    mine = _independent_choice_logprobs(tiny_causal_dir, items)
    my_acc = sum(max(range(4), key=lambda j: s[j]) == it["label"] for s, it in zip(mine, items)) / n
    assert acc == pytest.approx(my_acc, abs=1e-12)
    samples = sorted(res["samples"]["llmray_docmatch"], key=lambda s: s["doc_id"])
    theirs = [[r[0][0] for r in s["resps"]] for s in samples]
    assert max(abs(a - b) for x, y in zip(theirs, mine) for a, b in zip(x, y)) < 1e-3
    assert res["items"] == n and res["items_per_second"] > 0


def test_task_entries_resolve_and_bad_ones_name_the_field(tmp_path):
    plan = resolve_tasks(["llmray_docmatch", "llmray"], "stages.bench.tasks")
    assert plan.names == ["llmray_docmatch", "llmray"] and not plan.include_defaults
    mine = tmp_path / "mytasks"
    mine.mkdir()
    text = (BUILTIN_DIR / "llmray_docmatch.yaml").read_text().replace("task: llmray_docmatch", "task: my_docmatch")
    (mine / "my.yaml").write_text(text.replace("loader.load", "../loader.load"))
    assert resolve_tasks([str(mine / "my.yaml")], "f").names == ["my_docmatch"]
    assert resolve_tasks([str(mine)], "f").include_paths[-1] == str(mine.resolve())
    (tmp_path / "broken.yaml").write_text("task: x\n  bad: [indent\n")
    with pytest.raises(TaskSpecError, match=r"stages\.bench\.tasks\[1\]: .*broken\.yaml is not a valid lm-eval task YAML"):
        resolve_tasks(["llmray", str(tmp_path / "broken.yaml")], "stages.bench.tasks")
    with pytest.raises(TaskSpecError, match=r"stages\.bench\.tasks\[0\]: no such task file or folder"):
        resolve_tasks([str(tmp_path / "nope.yaml")], "stages.bench.tasks")


@pytest.mark.integration  # indexes lm-eval's whole task registry (~15k YAMLs)
def test_an_unknown_task_name_is_refused_with_suggestions():
    # Indexes lm-eval's whole registry (seconds): the one test that does.
    with pytest.raises(TaskSpecError, match=r"stages\.bench\.tasks\[1\]: unknown lm-eval task, group or tag "
                                            r"'hellaswagg'; did you mean \[.*'hellaswag'"):
        resolve_tasks(["llmray", "hellaswagg"], "stages.bench.tasks")


def test_config_errors_name_the_field(tmp_path, tiny_causal_dir):
    def stage(**kw):
        return {"name": "p", "workdir": str(tmp_path), "stages": {"bench": {"kind": "eval", **kw}}}

    with pytest.raises(ConfigError, match="stages.bench: .*name at least one model"):
        parse_pipeline(stage())
    with pytest.raises(ConfigError, match=r"stages\.bench\.from\.x: .*no such folder"):
        parse_pipeline(stage(**{"from": {"x": str(tmp_path / "missing")}}))
    with pytest.raises(ConfigError, match=r"stages\.bench\.resources\.num_workers"):  # a task, not a worker group
        parse_pipeline(stage(**{"from": {"x": str(tiny_causal_dir)}, "resources": {"num_workers": 2}}))
    with pytest.raises(ConfigError, match=r"stages\.bench\.backend"):
        parse_pipeline(stage(**{"from": {"x": str(tiny_causal_dir)}, "backend": "tgi"}))
    pipe = parse_pipeline(stage(**{"from": {"x": str(tiny_causal_dir)}}))
    assert pipe.stages["bench"].tasks == ["llmray"] and pipe.stages["bench"].backend == "auto"


def _broken_copy(src: Path, dst: Path) -> Path:
    """A folder every config check accepts whose weights do not fit its config: loading fails."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] * 2
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _planted_corpus(path: Path, planted: list[int]) -> None:
    """Filler documents plus copies of some docmatch items (query + right answer) inside longer text."""
    import random

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    items = _rows("docmatch.jsonl")
    docs = [" ".join(rng.choice(vocab) for _ in range(120)) for _ in range(30)]
    for i in planted:
        docs[i] = f"{docs[i]} {items[i]['query']} {items[i]['choices'][items[i]['label']]} {docs[i + 10]}"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))


def test_eval_stage_end_to_end(tmp_path, ray_local, tiny_causal_dir, capsys):
    """Two models (one broken), two curated corpora (one decontaminated by the eval stage's tasks): the
    failing model loses nothing, the tables and lm-eval results are written, contamination is flagged."""
    from llmray.report.build import collect
    from llmray.report.html import render_page
    from llmray.runner import StageFailed, read_manifest, run_dir, run_pipeline

    broken = _broken_copy(tiny_causal_dir, tmp_path / "broken")
    _planted_corpus(tmp_path / "docs.jsonl", planted=[1, 2, 3])  # item 0 has 11 words: under a 13-gram
    off = {op: {"enabled": False} for op in ("clean", "boilerplate", "gopher_quality", "gopher_repetition",
                                             "fineweb", "toxicity", "quality", "exact_dedup", "near_dedup")}
    curate = {"kind": "curate", "sources": [{"type": "jsonl", "path": str(tmp_path / "docs.jsonl")}], **off}
    bench = {"kind": "eval", "from": {"tiny": str(tiny_causal_dir), "broken": str(broken)}, "limit": 6,
             "tasks": ["llmray_docmatch", "llmray_docppl"], "corpora": ["dirty", "clean"], "batch_size": 8,
             "bootstrap_iters": 0, "resources": {"num_cpus": 1},
             "gate": {"min_scores": {"llmray_docmatch": 2.0}}}  # accuracy cannot reach 2: blocked
    raw = {"name": "p", "workdir": str(tmp_path / "runs"), "stages": {
        "dirty": curate, "clean": {**curate, "decontaminate": {"eval_stages": ["bench"]}}, "bench": bench}}
    pipe = parse_pipeline(raw)
    with pytest.raises(StageFailed, match="stage 'bench' failed"):
        run_pipeline(pipe, echo=lambda m: None)
    root = run_dir(pipe)
    man = read_manifest(root / "bench")
    assert "stages.bench: 1 model(s) failed" in man["error"] and "broken: " in man["error"]

    # Decontamination by the eval stage's own task documents: the three planted copies are gone.
    clean = read_manifest(root / "clean")["metrics"]
    assert clean["docs_out"] == 27 and clean["removed"]["decontaminate"] == 3
    assert clean["decontamination"]["bench/llmray_docmatch"]["items"] == 200
    assert read_manifest(root / "dirty")["metrics"]["docs_out"] == 30

    # The good model's results were kept: with skip_failed (execution-only) the rerun reuses them.
    raw["stages"]["bench"]["skip_failed"] = True
    pipe = parse_pipeline(raw)
    assert run_pipeline(pipe, echo=lambda m: None)["bench"] == "completed"
    m = read_manifest(root / "bench")["metrics"]
    assert "reusing results of ['tiny']" in (root / "bench" / "log.txt").read_text()
    assert m["models"] == ["tiny", "broken"] and list(m["failed"]) == ["broken"]
    assert m["headline"] == {"llmray_docmatch": "acc,none", "llmray_docppl": "bits_per_byte,none"}
    assert 0 <= m["scores"]["tiny"]["llmray_docmatch"] <= 1 and m["scores"]["tiny"]["llmray_docppl"] > 0
    out = json.loads((root / "bench" / "results" / "tiny" / "results.json").read_text())
    assert {"results", "configs", "versions", "n-shot", "n-samples"} <= set(out)  # lm-eval's own format
    assert out["n-samples"]["llmray_docmatch"]["effective"] == 6
    csv_lines = (root / "bench" / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,task,metric,filter,value,stderr") and len(csv_lines) - 1 == len(m["table"])
    md = (root / "bench" / "table.md").read_text()
    assert "| tiny | " in md and "| broken | failed | failed |" in md
    assert m["throughput"]["tiny"]["items"] == 12 and m["throughput"]["tiny"]["backend"] == "hf"

    # Contamination: the evaluated docmatch items 1-3 are in `dirty`, not in `clean`; the table marks it.
    c = m["contamination"]["llmray_docmatch"]
    assert c["items"] == 6 and c["matched"] == 3 and c["by_corpus"] == {"dirty": 3}
    # docppl holds whole held-out docstrings, so a planted summary can match one of its items too.
    assert set(m["contamination"]["llmray_docppl"]["by_corpus"]) <= {"dirty"}
    assert "llmray_docmatch (acc) †" in md
    assert all(r["contaminated"] == (m["contamination"][r["task"]]["matched"] > 0) for r in m["table"])

    from llmray.cli import cmd_status

    cmd_status(pipe, None)
    assert "bench (eval):\n| model | llmray_docmatch (acc) †" in capsys.readouterr().out
    html = render_page(collect(root, pipe))
    assert 'id="benchmarks"' in html and 'id="bench-bench"' in html and 'data-task="llmray_docmatch"' in html

    # The capability gate, as serving reads it (gate_status): blocked by the scores, then passed once they
    # clear it; a changed gate is stale (blocked) until the stage runs again.
    from llmray.safety.gate import gate_status

    st = gate_status(root, pipe)
    assert st["tiny"]["status"] == "blocked" and st["tiny"]["align"] == ["bench"]
    assert any("llmray_docmatch" in r and "< min_scores 2.0" in r for r in st["tiny"]["reasons"])
    assert st["broken"]["status"] == "blocked" and "evaluation failed" in " ".join(st["broken"]["reasons"])
    raw["stages"]["bench"]["gate"] = {"min_scores": {"llmray_docmatch": 0.0}}
    pipe = parse_pipeline(raw)
    assert "stale" in " ".join(gate_status(root, pipe)["tiny"]["reasons"])
    assert run_pipeline(pipe, echo=lambda m: None)["bench"] == "completed"
    assert gate_status(root, pipe)["tiny"] == {"status": "passed", "reasons": [], "align": ["bench"],
                                               "needs_guardrail": False}


def test_capability_gate_blocks_with_the_numbers_in_the_reasons(tmp_path, tiny_causal_dir):
    from llmray.safety.gate import decide_scores

    up = {"docmatch": True, "ppl": False}
    res = decide_scores({"docmatch": 0.2, "ppl": 4.0}, up, {"docmatch": 0.25, "ppl": 5.0}, {"ppl": 0.5},
                        {"docmatch": 0.3, "ppl": 3.0}, "chat")
    assert res["status"] == "blocked"
    assert res["reasons"] == ["docmatch 0.2000 < min_scores 0.25",
                              "ppl 4.0000 vs baseline chat 3.0000: drop 1.0000 > max_drop 0.5"]
    ok = decide_scores({"docmatch": 0.3, "ppl": 3.2}, up, {"docmatch": 0.25}, {"ppl": 0.5},
                       {"docmatch": 0.3, "ppl": 3.0}, "chat")
    assert ok == {"status": "passed", "reasons": [], "basis": "capability scores (baseline chat)"}
    assert decide_scores({}, up, {"docmatch": 0.1}, {}, None, None)["reasons"] == [
        "docmatch: no score; min_scores 0.1 unchecked"]
    raw = {"name": "p", "workdir": str(tmp_path), "stages": {"bench": {
        "kind": "eval", "from": {"x": str(tiny_causal_dir)}, "gate": {"max_drop": {"llmray_docmatch": 0.05}}}}}
    with pytest.raises(ConfigError, match="gate.max_drop needs gate.baseline"):
        parse_pipeline(raw)
    raw["stages"]["bench"]["gate"]["baseline"] = "y"
    with pytest.raises(ConfigError, match="gate.baseline 'y' is not one of the evaluated models"):
        parse_pipeline(raw)


def test_tables_mark_contaminated_and_failed():
    from llmray.eval.tables import headline, markdown, score_rows, scores

    out = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25,
                             "acc_norm_stderr,none": "N/A"}},
           "configs": {"t": {"metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}},
           "higher_is_better": {"t": {"acc": True, "acc_norm": True}}, "n-samples": {"t": {"effective": 4}}}
    rows = score_rows("m", out, {"t": True})
    assert [(r["metric"], r["value"], r["stderr"], r["n"], r["contaminated"]) for r in rows] == [
        ("acc", 0.5, 0.1, 4, True), ("acc_norm", 0.25, None, 4, True)]
    heads = headline(out)
    assert heads == {"t": "acc,none"} and scores(rows, heads) == {"m": {"t": 0.5}}
    md = markdown(rows, heads, ["m", "bad"], {"bad": "boom"}, {"t": True})
    assert "| t (acc) † |" in md and "| m | 0.5000 ± 0.1000 |" in md and "| bad | failed |" in md


def _logliks(samples: list[dict]) -> dict:
    """(doc, request) -> log-likelihood; multiple-choice responses are (ll, is_greedy), rolling ones floats."""
    return {(s["doc_id"], i): (r[0] if isinstance(r[0], float) else r[0][0]) for s in samples
            for i, r in enumerate(s["resps"])}


@pytest.mark.slow
@pytest.mark.vllm
def test_hf_and_vllm_backends_agree_on_log_likelihoods(tiny_causal_dir):
    """lm-eval's HFLM and VLLM on the same model and items: same accuracy, per-request log-likelihoods within
    1e-3 (measured: 7e-5 on CPU, float32). ~40 s on 2 cores (vLLM start-up)."""
    pytest.importorskip("vllm")
    plan = TaskPlan(["llmray_docmatch", "llmray_docppl"], [str(BUILTIN_DIR)])
    res = {b: evaluate_model(str(tiny_causal_dir), plan, {"backend": b, "batch_size": 16, "limit": 20,
                                                          "log_samples": True, "dtype": "float32",
                                                          "bootstrap_iters": 0})
           for b in ("hf", "vllm")}
    for task in plan.names:
        hf, vl = (res[b]["results"]["results"][task] for b in ("hf", "vllm"))
        key = "acc,none" if task == "llmray_docmatch" else "bits_per_byte,none"
        assert vl[key] == pytest.approx(hf[key], abs=1e-4)
        lh, lv = (_logliks(res[b]["samples"][task]) for b in ("hf", "vllm"))
        assert lh.keys() == lv.keys() and max(abs(lh[k] - lv[k]) for k in lh) < 1e-3


def test_curate_fingerprint_follows_the_eval_stages_it_decontaminates_with(tmp_path, tiny_causal_dir, monkeypatch):
    """`decontaminate: {eval_stages: [bench]}`: bench's tasks (names, task files' content) are in the curate
    stage's fingerprint; its execution-only batch_size and its limit (curate reads every item) are not."""
    from llmray.runner import fingerprints

    mine = tmp_path / "mytask.yaml"
    mine.write_text((BUILTIN_DIR / "llmray_docmatch.yaml").read_text().replace("task: llmray_docmatch", "task: mine"))
    raw = {"name": "p", "workdir": str(tmp_path / "runs"), "stages": {
        "corpus": {"kind": "curate", "sources": [{"type": "python-docs"}],
                   "decontaminate": {"eval_stages": ["bench"]}},
        "bench": {"kind": "eval", "from": {"x": str(tiny_causal_dir)}, "tasks": ["llmray"], "limit": 5}}}

    def fps(**bench):
        r = json.loads(json.dumps(raw))
        r["stages"]["bench"].update(bench)
        return fingerprints(parse_pipeline(r))

    base = fps()
    assert fps(batch_size=2)["corpus"] == base["corpus"] and fps(batch_size=2)["bench"] == base["bench"]
    assert fps(limit=7)["corpus"] == base["corpus"] and fps(limit=7)["bench"] != base["bench"]
    assert fps(tasks=["llmray_docmatch"])["corpus"] != base["corpus"]
    with_file = fps(tasks=[str(mine)])
    assert with_file["corpus"] != base["corpus"]
    mine.write_text(mine.read_text().replace("{{query}}", "Q: {{query}}"))  # the task file's content
    assert fps(tasks=[str(mine)])["corpus"] != with_file["corpus"]
    # A bare name is a task even where a folder of that name exists (`llmray` in a checkout).
    (tmp_path / "llmray").mkdir()
    (tmp_path / "llmray" / "x.txt").write_text("a")
    monkeypatch.chdir(tmp_path)
    before = fps()
    (tmp_path / "llmray" / "x.txt").write_text("b")
    assert fps() == before == base
