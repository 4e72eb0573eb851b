"""bench/probe_copy_share.py on a small run folder: copy rows are spans and their repeats with the loss
on the repeats only, and the probe's figures are read every `--every` steps while the model learns."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import probe_copy_share  # noqa: E402


def test_a_copy_row_is_spans_then_their_repeats_with_the_loss_on_the_repeats():
    ids, labels = probe_copy_share.copy_row(np.random.default_rng(0), vocab=50, length=200)
    assert len(ids) == len(labels) == 200 and min(ids) >= 3
    i = 0
    while i < 200:
        n = next(j for j in range(i, 200 + 1) if j == 200 or labels[j] != -100) - i  # the first copy
        assert probe_copy_share.SPAN[0] <= n <= probe_copy_share.SPAN[1] or i + n == 200
        assert labels[i + n:i + 2 * n] == ids[i + n:i + 2 * n] == ids[i:i + n][:len(ids[i + n:i + 2 * n])]
        i += 2 * n


def _run_dir(tmp_path: Path, tokenizer_dir: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from llmray.testing import stdlib_texts

    tokens = tmp_path / "run" / "tokens"
    shutil.copytree(tokenizer_dir, tokens / "tokenizer")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    flat = [t for text in stdlib_texts()[:300] for t in tok.encode(text, add_special_tokens=False)]
    rows = [flat[i:i + 256] for i in range(0, len(flat) - 256, 256)][:80]
    for split, part in (("train", rows[:64]), ("val", rows[64:])):
        (tokens / split).mkdir(parents=True)
        pq.write_table(pa.table({"input_ids": part}), tokens / split / "part-00000.parquet")
    return tmp_path / "run"


@pytest.mark.integration  # trains a tiny model (~7 s): not in the fast tier
def test_the_probe_reports_every_few_steps_and_the_model_learns(capsys, tmp_path, tiny_tokenizer_dir):
    run = _run_dir(tmp_path, tiny_tokenizer_dir)
    assert probe_copy_share.main([str(run), "--steps", "4", "--every", "2", "--micro-batch", "2",
                                  "--lr", "0.01", "--warmup", "1", "--names", "8",
                                  "--share", "0.5", "--out", str(tmp_path / "model")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["step"] for r in lines] == [0, 2, 4] and lines[0]["train_rows"] == 64
    for r in lines:
        assert r["val_loss"] > 0 and r["copy_loss"] > 0 and 0 <= r["name_copy"] <= 1
    assert lines[-1]["val_loss"] < lines[0]["val_loss"] - 0.1  # it trains on the run's rows
    assert (tmp_path / "model" / "model.safetensors").exists()
