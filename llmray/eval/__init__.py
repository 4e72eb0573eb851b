"""Benchmarks on EleutherAI's lm-eval harness: the `eval` stage's implementation.

- `harness`: `tasks:` entries -> lm-eval task names and include paths (checked by lm-eval's TaskManager);
  one model on every task in a Ray task (lm-eval's HFLM or VLLM + simple_evaluate).
- `tables`: lm-eval results -> long rows, table.csv, the model x task markdown table, headline scores.
- `contamination`: task documents as n-gram decontamination sets (eval stage check; curate `eval_stages`).
- `stage`: the stage run (models in parallel, failures isolated, outputs).
- `builtin` + `tasks/`: the offline built-in tasks (`llmray` tag) made from the held-out stdlib split.
"""
