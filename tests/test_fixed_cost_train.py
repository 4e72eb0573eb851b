"""Fixed costs of the training kinds (pretrain, sft, reward, dpo): timers and cuts that change no results.

Without Ray: DPO's held-out evaluation with the reference's log-probs computed once per held-out batch
(and, at the first evaluation, the policy's taken from the reference when their weights are equal)
gives exactly the figures of the evaluation that runs both forwards every time, before and after an
optimizer step; rank 0's phase timers land in the stage's `fixed_cost` with every key. The manifests
of real runs carry `fixed_cost` (tests/test_dpo_stages.py checks sft, reward and dpo through the runner).
"""

from __future__ import annotations

import numpy as np
import pytest

PHASES = ("startup_s", "data_s", "eval_s", "checkpoint_s", "export_s")


def _pairs(tok, n: int, seed: int):
    """Numpy batches as Ray Data hands them to DpoTask.collate: n pairs per batch."""
    from llmray.train.reward import encode_pair_rows

    rng = np.random.default_rng(seed)
    words = "the list of items returns a new sorted copy without changing the original value".split()
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(words, 6 + i % 4))
        rec = {"prompt": [{"role": "user", "content": f"What does f{i} do?"}], "chosen": text,
               "rejected": " ".join(reversed(text.split()))}
        rows.append(encode_pair_rows(tok, rec, with_masks=True))
    cols = ("chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask", "group")
    return {c: np.array([r[c] for r in rows], dtype=object if c != "group" else np.int64) for c in cols}


def _uncached_eval(task, model, batches, compute) -> dict:
    """The evaluation as it was: policy and reference forwards on every batch, every time."""
    import torch

    from llmray.posttrain import eval_sums

    def sums(batch):
        losses, cr, rr, pc, pr = task.pair_stats(model, batch)
        return {"loss": losses.sum(), "margin": (cr - rr).sum(), "reward_accuracy": (cr > rr).sum().double(),
                "logp_accuracy": (pc > pr).sum().double(), "chosen_reward": cr.sum(),
                "pairs": torch.tensor(float(cr.shape[0]))}

    s = eval_sums(model, batches, sums, compute, 0, 1)
    n = s.pop("pairs")
    return {f"val_{k}": v / n for k, v in s.items()}


def test_dpo_eval_with_cached_reference_equals_the_full_evaluation(tiny_causal_dir):
    import torch
    from transformers import AutoTokenizer

    from llmray.chat import pad_token_id
    from llmray.device import compute_init
    from llmray.train.dpo import DpoTask

    tok = AutoTokenizer.from_pretrained(str(tiny_causal_dir))
    task = DpoTask(tiny_causal_dir, "unused", "unused", pad_token_id(tok), beta=0.5, loss_type="sigmoid",
                   label_smoothing=0.0)
    compute = compute_init(in_ray_train=False)
    torch.manual_seed(0)
    model = task.build_model()
    batches = [task.collate(_pairs(tok, 3, seed)) for seed in range(3)]
    keys = ("val_loss", "val_margin", "val_reward_accuracy", "val_logp_accuracy", "val_chosen_reward")

    assert task._policy_is_ref(model)
    first = task.evaluate(model, {"val": batches}, compute, 0, 1)
    assert len(task._ref_eval) == 3  # one reference forward per held-out batch
    expected = _uncached_eval(task, model, batches, compute)
    assert {k: first[k] for k in keys} == expected  # exactly: the same numbers, fewer forwards
    assert first["val_margin"] == 0.0 and first["val_pairs"] == 9

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss, _ = task.loss(model, batches[0])
    loss.backward()
    opt.step()
    assert not task._policy_is_ref(model)  # trained: the policy's own forward is needed again
    later = task.evaluate(model, {"val": batches}, compute, 0, 1)
    expected = _uncached_eval(task, model, batches, compute)
    assert {k: later[k] for k in keys} == expected
    assert later["val_margin"] != 0.0


def test_training_phase_timers_fill_every_fixed_cost_key():
    from llmray.stages.base import FixedCost
    from llmray.train.loop import _Clock, add_timing

    clock = _Clock()
    with clock.phase("eval_s"), clock.phase("eval_before_s"):
        pass
    clock.first_step()
    timing = clock.as_dict()
    cost = FixedCost()
    with cost.phase("data"):
        pass
    add_timing(cost, {**timing, "eval_s": 2.0, "eval_before_s": 0.5, "checkpoint_s": 1.0, "restore_s": 0.25,
                      "export_s": 0.75}, t_fit=timing["at_first_step"] - 3.0)
    m = cost.metrics(work_s=0.0)
    assert set(PHASES) | {"wall_s", "work_s", "other_s"} == set(m)
    # startup: fit() -> first step (3 s) less the evaluation and restore before it
    assert m["startup_s"] == pytest.approx(2.25) and m["eval_s"] == 2.0 and m["checkpoint_s"] == 1.25
    # a run that was already complete (restored final record): no first step, no start-up figure
    cost = FixedCost()
    add_timing(cost, {}, t_fit=0.0)
    assert cost.metrics()["startup_s"] == 0.0


def test_report_shows_every_stage_fixed_cost_and_the_total(tmp_path):
    import json

    from llmray.report.build import collect
    from llmray.report.html import render_page

    costs = {"base": {"startup_s": 9.0, "data_s": 1.0, "eval_s": 4.0, "checkpoint_s": 2.0, "export_s": 0.5,
                      "other_s": 1.5, "work_s": 100.0, "wall_s": 118.0},
             "ppo": {"startup_s": 20.0, "data_s": 0.5, "eval_s": 5.0, "checkpoint_s": 0.0, "export_s": 0.0,
                     "other_s": 0.5, "work_s": 40.0, "wall_s": 66.0}}
    for name, kind in (("base", "pretrain"), ("ppo", "ppo"), ("bpe", "tokenizer")):
        (tmp_path / name).mkdir()
        metrics = {"fixed_cost": costs[name]} if name in costs else {"vocab_size": 10}
        (tmp_path / name / "manifest.json").write_text(json.dumps({"name": name, "kind": kind,
                                                                   "status": "completed", "metrics": metrics}))
    import re

    from llmray.report.costs import fixed_cost_rows

    run = collect(tmp_path)
    rows = dict(fixed_cost_rows(run))
    assert set(rows) == {"base", "ppo"}  # stages without a fixed cost are left out
    assert rows["base"]["fixed_s"] == 18.0 and rows["ppo"]["startup_s"] == 20.0
    page = render_page(run)
    total = re.search(r'<tr data-stage="total">(.*?)</tr>', page).group(1)
    cells = dict(re.findall(r'data-col="(\w+)" data-value="([^"]*)"', total))
    assert float(cells["fixed_s"]) == 44.0 and float(cells["wall_s"]) == 184.0
    assert 'id="fixed-costs"' in page and '<tr data-stage="base">' in page


def test_one_worker_reads_the_same_batches_without_a_split(ray_local, tmp_path):
    """fit() no longer splits the train set when there is one worker (no SplitCoordinator actor): the
    worker's unsplit iterator yields exactly the micro-batches the one-way split gave, in the same order."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.train import DataConfig

    from llmray.train.data import data_config, read_rows

    for j in range(3):
        pq.write_table(pa.table({"input_ids": [[j * 100 + i] * 4 for i in range(37)]}), tmp_path / f"part-{j}.parquet",
                       row_group_size=10)
    options = DataConfig.default_ingest_options()
    options.preserve_order = True

    def batches(it):
        return [[int(row[0]) for row in b["input_ids"]]
                for b in it.iter_batches(batch_size=8, batch_format="numpy", drop_last=True)]

    split_ds = read_rows(tmp_path, min_rows=200)
    split_ds.context.execution_options = options
    whole_ds = read_rows(tmp_path, min_rows=200)
    whole_ds.context.execution_options = options
    split = batches(split_ds.streaming_split(1, equal=True)[0])
    whole = batches(whole_ds.iterator())
    assert len(whole) == 222 // 8  # 3 files x 37 rows, listed twice (min_rows), full batches only
    assert whole == split
    assert data_config(["train", "val"], 1)._datasets_to_split == []
    assert data_config(["train", "val"], 2)._datasets_to_split == ["train"]
