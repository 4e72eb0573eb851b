"""Safety: red-team suites, a trained output guardrail, evaluation of stage models, and the gate.

- `redteam`: prompt sets (built-in, derived from `llmray.data.instruct` held-out intents; user JSONL).
- `pairs`: labelled (prompt, response) conversations that train and test the guardrail.
- `guardrail`: hashed n-gram logistic-regression classifier; `load_guardrail(dir).screen(prompt, response)`.
- `evaluate`: engines (transformers `generate` in Ray tasks, or fixed responses) and scoring.
- `gate`: thresholds -> passed/blocked per stage; `gate_status(run_dir, pipe)` for the serve app.
- `align`: the `align` stage's run (`run_align`); `constitution`: AI feedback (the feedback Ray task
  and the `constitution` stage's run, `run_constitution`).

Only light imports here: the serve app and `llmray validate` import this package.
"""
